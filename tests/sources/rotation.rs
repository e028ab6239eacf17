//! Rotation: a property test of random sequences of writes, rename-rotation, copytruncate,
//! truncation, deletion, new files and restarts, checked against a model: every event
//! written is delivered, and exactly once (restarts here are graceful, not crashes).
//!
//! The pipeline runs in-process (`flaghook::topology::run` with a cancellation token; a
//! restart is cancel, await, start again on the same data_dir) against a real endpoint
//! on loopback.
//!
//! What a tailer cannot promise sets the model's waits:
//! - events written but never read before the file is truncated or deleted are gone, so
//!   destructive operations first wait until everything written so far has arrived;
//! - a truncation is noticed on the next read, by the size or the first bytes; new content
//!   that repeats the old file's first KiB would look like an append (README). So after
//!   truncating, the model waits until the checkpoint shows the file restarted at 0 before
//!   writing again;
//! - a file renamed to a name no glob matches is followed while flaghook runs, but not
//!   found again after a restart (README, "Not promised"): a restart first waits until
//!   such files were delivered.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::Config;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

/// Files the writer appends to: `f0.log`, `f1.log`.
const LIVE: usize = 2;
const WAIT_DELIVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Op {
    /// Append `n` events to live file `file` (created if missing).
    Write {
        file: usize,
        n: u8,
    },
    /// Append one event in two writes, the line's end a moment later.
    WriteSplit {
        file: usize,
    },
    /// logrotate's default: rename to a name the glob still matches; the next write
    /// creates a fresh file.
    RenameRotate {
        file: usize,
    },
    /// Append a few events and at once rename the file to a name no glob matches: the
    /// renamed file must still be read to its end.
    RenameAway {
        file: usize,
    },
    /// logrotate's copytruncate: copy elsewhere, truncate in place.
    CopyTruncate {
        file: usize,
    },
    Truncate {
        file: usize,
    },
    Delete {
        file: usize,
    },
    /// A new file matching the glob, with a few events.
    NewFile {
        n: u8,
    },
    /// Stop the pipeline gracefully and start it again.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let file = 0..LIVE;
    prop_oneof![
        6 => (file.clone(), 1u8..20).prop_map(|(file, n)| Op::Write { file, n }),
        1 => file.clone().prop_map(|file| Op::WriteSplit { file }),
        2 => file.clone().prop_map(|file| Op::RenameRotate { file }),
        1 => file.clone().prop_map(|file| Op::RenameAway { file }),
        1 => file.clone().prop_map(|file| Op::CopyTruncate { file }),
        1 => file.clone().prop_map(|file| Op::Truncate { file }),
        1 => file.prop_map(|file| Op::Delete { file }),
        1 => (1u8..10).prop_map(|n| Op::NewFile { n }),
        2 => Just(Op::Restart),
    ]
}

/// The pipeline, its endpoint and the model (every id below `next_id` was written).
/// Fields drop in order: the runtime (and the pipeline) before the endpoint and the files.
struct Rig {
    rt: tokio::runtime::Runtime,
    hook: Endpoint,
    ws: Workspace,
    config: PathBuf,
    running: Option<(
        CancellationToken,
        JoinHandle<anyhow::Result<flaghook::topology::Summary>>,
    )>,
    next_id: u64,
    /// Names handed out so far (rotated files, new files).
    generation: u64,
    /// Events sit in a file no glob matches; a restart must wait for them.
    renamed_away: bool,
}

impl Rig {
    fn new() -> Self {
        let mut rig = Rig::stopped("100ms");
        rig.start();
        rig
    }

    /// The rig with the pipeline not started yet, globbing every `glob_interval`.
    fn stopped(glob_interval: &str) -> Self {
        // RUST_LOG=flaghook=debug shows where an event went (files opened at which offset).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let ws = Workspace::new();
        std::fs::create_dir_all(ws.path("logs/away")).unwrap();
        let hook = Endpoint::start();
        let config = ws.config(&format!(
            r#"[sources.logs]
type = "file"
include = [{glob}]
poll_interval = "20ms"
glob_interval = "{glob_interval}"

[sinks.webhook]
type = "webhook"
inputs = ["logs"]
endpoint_url = {url}
flush_interval = "50ms"
max_event_in_memory = 50
retry_initial_backoff = "50ms"
retry_max_backoff = "100ms"
# In-process, the test's own environment is flaghook's: no proxy in it may carry this.
proxy = "none"
"#,
            glob = toml_str(ws.path("logs/*.log")),
            url = toml_str(hook.url()),
        ));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Rig {
            ws,
            hook,
            config,
            rt,
            running: None,
            next_id: 0,
            generation: 0,
            renamed_away: false,
        }
    }

    fn start(&mut self) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let validated = flaghook::config::parse(&text, &self.config)
            .and_then(flaghook::topology::Plan::build)
            .expect("valid config");
        let token = CancellationToken::new();
        let handle = self
            .rt
            .spawn(flaghook::topology::run(validated, false, token.clone()));
        self.running = Some((token, handle));
    }

    fn stop(&mut self) {
        let (token, handle) = self.running.take().expect("running");
        token.cancel();
        let summary = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), handle).await })
            .expect("the pipeline did not stop within 20s of shutdown")
            .expect("the pipeline task panicked")
            .expect("the pipeline failed");
        assert_eq!(summary.events_rejected, 0, "{summary:?}");
    }

    fn live(&self, file: usize) -> PathBuf {
        self.ws.path(&format!("logs/f{file}.log"))
    }

    fn fresh_name(&mut self, pattern: &str) -> PathBuf {
        self.generation += 1;
        self.ws
            .path(&pattern.replace("{}", &self.generation.to_string()))
    }

    /// Appends `n` new events to `path`.
    fn write(&mut self, path: &Path, n: u64) {
        append(path, small_lines(self.next_id..self.next_id + n));
        self.next_id += n;
    }

    /// Waits until every event written so far has arrived.
    fn settle(&self) {
        let n = self.next_id;
        if !self.hook.wait_until(WAIT_DELIVERY, |t| t.has_all(n)) {
            let missing = self.hook.with(|t| t.missing(n));
            let ended = self.running.as_ref().is_some_and(|(_, h)| h.is_finished());
            panic!(
                "{} of {n} events never arrived: {:?}{}; checkpoint: {:?}",
                missing.len(),
                &missing[..missing.len().min(20)],
                if ended {
                    " (the pipeline has ended)"
                } else {
                    ""
                },
                checkpoint_files(&self.ws.data_dir(), "logs"),
            );
        }
    }

    /// The saved offset of the file with `path`'s inode, per the checkpoint file.
    fn saved_offset(&self, path: &Path) -> Option<u64> {
        let ino = std::fs::metadata(path).ok()?.ino();
        checkpoint_files(&self.ws.data_dir(), "logs")?
            .iter()
            .find(|f| f["ino"].as_u64() == Some(ino))
            .and_then(|f| f["offset"].as_u64())
    }

    /// Waits until the checkpoint holds `offset` for `path`'s inode.
    fn wait_saved(&self, path: &Path, offset: u64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.saved_offset(path) != Some(offset) {
            assert!(
                Instant::now() < deadline,
                "{what}: checkpoint of {} stays at {:?}, expected {offset}",
                path.display(),
                self.saved_offset(path)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Truncates `path` once everything in it was delivered and saved, then waits until
    /// flaghook restarted the file at 0 (see the module doc).
    fn truncate(&self, path: &Path) {
        self.settle();
        let size = std::fs::metadata(path).unwrap().len();
        self.wait_saved(path, size, "before truncating");
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(0)
            .unwrap();
        self.wait_saved(path, 0, "after truncating");
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write { file, n } => {
                let path = self.live(file);
                self.write(&path, u64::from(n));
            }
            Op::WriteSplit { file } => {
                let line = format!("{}\n", small_event(self.next_id));
                self.next_id += 1;
                let (a, b) = line.split_at(line.len() / 2);
                append(&self.live(file), a);
                std::thread::sleep(Duration::from_millis(60));
                append(&self.live(file), b);
            }
            Op::RenameRotate { file } => {
                let from = self.live(file);
                if from.exists() {
                    let to = self.fresh_name(&format!("logs/f{file}.r{{}}.log"));
                    std::fs::rename(from, to).unwrap();
                }
            }
            Op::RenameAway { file } => {
                let from = self.live(file);
                if from.exists() {
                    // Once an event written now has arrived, this run of the pipeline has
                    // the file open (right after a restart it may not have looked yet).
                    self.write(&from, 1);
                    self.settle();
                    self.write(&from, 3);
                    let to = self.fresh_name(&format!("logs/away/f{file}.{{}}"));
                    std::fs::rename(from, to).unwrap();
                    self.renamed_away = true;
                }
            }
            Op::CopyTruncate { file } => {
                let path = self.live(file);
                if path.exists() {
                    self.settle();
                    let copy = self.fresh_name(&format!("logs/away/f{file}.copy{{}}"));
                    std::fs::copy(&path, copy).unwrap();
                    self.truncate(&path);
                }
            }
            Op::Truncate { file } => {
                let path = self.live(file);
                if path.exists() {
                    self.truncate(&path);
                }
            }
            Op::Delete { file } => {
                let path = self.live(file);
                if path.exists() {
                    self.settle();
                    std::fs::remove_file(path).unwrap();
                }
            }
            Op::NewFile { n } => {
                let path = self.fresh_name("logs/n{}.log");
                self.write(&path, u64::from(n));
            }
            Op::Restart => {
                if self.renamed_away {
                    self.settle();
                    self.renamed_away = false;
                }
                self.stop();
                self.start();
            }
        }
    }

    /// Everything arrived, exactly once, and a last restart sends nothing again.
    fn check(&mut self) {
        self.settle();
        self.stop();
        self.start();
        std::thread::sleep(Duration::from_millis(400));
        self.stop();
        let n = self.next_id;
        self.hook.with(|t| {
            assert!(t.missing(n).is_empty());
            assert_eq!(
                t.duplicated_ids(),
                Vec::<u64>::new(),
                "events delivered twice without a crash"
            );
            assert_eq!(
                t.counts.len() as u64,
                n,
                "events that were never written arrived"
            );
            assert_eq!(t.foreign_delivered, 0);
        });
        let dead = dead_letters(&self.ws.data_dir(), "webhook");
        assert!(dead.is_empty(), "dead letters: {dead:?}");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some((token, _)) = &self.running {
            token.cancel();
        }
    }
}

/// The cases are spread over [`PARTS`] tests, which run in parallel: a case spends its time
/// waiting on the pipeline (flush interval, checkpoint ticks, restarts), not computing. Each
/// part draws its own random cases.
const PARTS: u32 = 4;

fn config() -> Config {
    // FLAGHOOK_ROTATION_CASES=100 for a longer hunt (over all the parts).
    let cases: u32 = std::env::var("FLAGHOOK_ROTATION_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(16);
    Config {
        cases: cases.div_ceil(PARTS),
        // Each shrink step of a failing case may wait out a timeout: keep it short.
        max_shrink_iters: 6,
        failure_persistence: None,
        ..Config::default()
    }
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 4..22)
}

fn tailing_matches_the_model(ops: &[Op]) {
    let mut rig = Rig::new();
    for op in ops {
        rig.apply(op);
    }
    rig.check();
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tailing_matches_the_model_1(ops in ops()) {
        tailing_matches_the_model(&ops);
    }

    #[test]
    fn tailing_matches_the_model_2(ops in ops()) {
        tailing_matches_the_model(&ops);
    }

    #[test]
    fn tailing_matches_the_model_3(ops in ops()) {
        tailing_matches_the_model(&ops);
    }

    #[test]
    fn tailing_matches_the_model_4(ops in ops()) {
        tailing_matches_the_model(&ops);
    }
}

/// A case the property test found ("1 of 54 events never arrived: [38]"), replayed as is.
/// f0's second generation starts with half a line (a `WriteSplit`) and is saved at the
/// restart with a fingerprint over those few bytes, the same in every event; later files
/// created after deletions may get its inode back (ext4 reuses them), start with the same
/// bytes, and were resumed at its saved offset. Timing-dependent: it failed about once in
/// N runs before the fix; [`a_fingerprint_covers_every_byte_its_checkpoint_skips`] is the
/// deterministic form.
#[test]
fn replay_event_skipped_in_a_file_that_reused_an_inode() {
    use Op::*;
    tailing_matches_the_model(&[
        Write { file: 0, n: 3 },
        Delete { file: 0 },
        Write { file: 1, n: 8 },
        WriteSplit { file: 0 },
        Write { file: 1, n: 8 },
        WriteSplit { file: 0 },
        Restart,
        NewFile { n: 1 },
        RenameRotate { file: 1 },
        Write { file: 0, n: 2 },
        Delete { file: 0 },
        Write { file: 1, n: 13 },
        WriteSplit { file: 1 },
        Delete { file: 1 },
        Write { file: 0, n: 16 },
    ]);
}

/// A file first seen holding half a line is fingerprinted over those bytes (the start of
/// every event); the checkpoint of its acknowledged lines must not be kept with that short
/// fingerprint, or other content at the same inode (rewritten while flaghook is stopped,
/// or a new file reusing the inode) would match it and its first lines be skipped.
#[test]
fn a_fingerprint_covers_every_byte_its_checkpoint_skips() {
    // No glob pass after the one at start-up: only reading may grow the fingerprint.
    let mut rig = Rig::stopped("1h");
    let path = rig.live(0);
    let first = format!("{}\n", small_event(0));
    let (a, b) = first.split_at(first.len() / 2);
    append(&path, a);
    rig.next_id = 1;
    rig.start();
    rig.wait_saved(&path, 0, "the file was found at start-up");
    append(&path, b);
    rig.write(&path, 2);
    rig.settle();
    let size = std::fs::metadata(&path).unwrap().len();
    rig.wait_saved(&path, size, "delivered");
    rig.stop();

    // Same inode, new events of the same length: the first bytes differ from the saved
    // ones only past the middle of the first line.
    let ino = std::fs::metadata(&path).unwrap().ino();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    rig.write(&path, 4);
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    rig.start();
    rig.check();
}

/// Regression: a file truncated (copytruncate) and written past its old read position
/// before the tail looked again was read on from that position, as if appended to: the new
/// content's first lines were skipped and the line cut in the middle dead-lettered (until a
/// glob pass noticed the new first bytes, which then sent the rest again). flaghook is
/// frozen (SIGSTOP) while the file is rotated, so the growth is all there when it reads
/// again; no glob pass after the one at start-up.
#[test]
fn a_file_truncated_and_written_past_its_offset_before_a_read_is_read_from_the_start() {
    let hook = Endpoint::start().count_only();
    let ws = Workspace::new();
    let path = ws.write("logs/a.log", small_lines(0..100));
    let config = ws.glob_pipeline(
        "logs/*.log",
        "glob_interval = \"1h\"",
        &hook.url(),
        "flush_interval = \"50ms\"\nmax_event_in_memory = 50",
    );
    let proc = Proc::spawn(run_cmd(&config));
    assert!(
        hook.wait_until(WAIT, |t| t.has_all(100)),
        "{}",
        proc.stderr_now()
    );

    let pid = proc.pid() as libc::pid_t;
    // SAFETY: signals to the child this test started and still owns.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let old_size = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(0).unwrap();
    drop(file);
    append(&path, small_lines(100..400));
    assert!(std::fs::metadata(&path).unwrap().len() > old_size);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };

    let all = hook.wait_until(WAIT, |t| t.has_all(400));
    proc.sigterm();
    let out = proc.wait();
    hook.with(|t| {
        assert!(
            all,
            "{} of the rotated file's events never arrived (first: {:?}):\n{out}",
            t.missing(400).len(),
            t.missing(400).first()
        );
        assert_eq!(t.duplicates(), 0, "each event once:\n{out}");
    });
    let letters = dead_letters(&ws.data_dir(), "webhook");
    assert!(letters.is_empty(), "no line was cut: {letters:?}");
}
