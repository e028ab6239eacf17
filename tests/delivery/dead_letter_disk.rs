//! A dead letter that cannot be written is not a delivery: with the dead-letter file
//! unwritable (a directory in its place, a full disk) the line's position does not move,
//! the sink retries and says why, and `--once` exits 3; once the cause is gone, the line is
//! dead-lettered and the lines after it delivered. A full disk leaves no torn or glued
//! record, a torn tail is cut at start, and past `dead_letter_max_bytes` records keep the
//! first KiB of their line.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::harness::*;
use serde_json::{json, Value};

const BAD: &str = "this is not json";

/// Fast retries, and a short wait before `--once` gives an unwritable dead letter up.
const SINK: &str = "flush_interval = \"100ms\"\nretry_initial_backoff = \"50ms\"\nretry_max_backoff = \"200ms\"\nshutdown_timeout = \"1s\"\n";

/// Good events 0..10, the bad line, good events 10..20; and where the bad line starts.
fn input_with_bad_line() -> (String, u64) {
    let head = small_lines(0..10);
    let at = head.len() as u64;
    (format!("{head}{BAD}\n{}", small_lines(10..20)), at)
}

fn offset(ws: &Workspace) -> u64 {
    let saved = checkpoint_files(&ws.data_dir(), "in").expect("a checkpoint");
    saved[0]["offset"].as_u64().unwrap()
}

/// A dead-letter record as flaghook writes them, for files that exist before a run.
fn record(line: &str) -> String {
    json!({"time": "2026-11-29T12:00:00.000Z", "sink": "webhook", "reason": "earlier",
           "line": line, "replayable": false})
    .to_string()
}

fn dead_letter_file(ws: &Workspace) -> PathBuf {
    let path = dead_letter_path(&ws.data_dir(), "webhook");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    path
}

/// After a run that could not write the dead letter: fix nothing else, run again, and the
/// bad line is dead-lettered and every event delivered.
#[track_caller]
fn rerun_delivers_everything(ws: &Workspace, config: &Path, hook: &Endpoint, input: &str) {
    let out = run_once(config);
    out.assert_code(2);
    let dead = dead_letters(&ws.data_dir(), "webhook");
    let last = dead.last().expect("the bad line's dead letter");
    assert_eq!(last["line"], BAD, "{dead:#?}");
    hook.with(|t| assert!(t.missing(20).is_empty(), "missing {:?}", t.missing(20)));
    assert_eq!(offset(ws), input.len() as u64, "{out}");
}

#[test]
fn an_unwritable_dead_letter_file_keeps_the_bad_line_in_its_file() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (input, bad_at) = input_with_bad_line();
    let config = ws.file_pipeline(&input, &hook.url(), SINK);
    let path = dead_letter_file(&ws);
    std::fs::create_dir(&path).unwrap();

    let out = run_once(&config);
    out.assert_code(3);
    assert!(out.summary().events_not_delivered >= 1, "{out}");
    assert_eq!(out.summary().events_rejected, 0, "{out}");
    assert!(
        out.stderr.contains("cannot write dead letters")
            && out.stderr.contains("is not a regular file"),
        "the reason is not logged:\n{out}"
    );
    // Events before the bad line are delivered and acknowledged; the position stops there.
    hook.with(|t| assert!(t.missing(10).is_empty(), "missing {:?}", t.missing(10)));
    assert_eq!(offset(&ws), bad_at, "{out}");

    std::fs::remove_dir(&path).unwrap();
    rerun_delivers_everything(&ws, &config, &hook, &input);
}

/// RLIMIT_FSIZE makes the kernel refuse to grow files past a size (EFBIG, with SIGXFSZ
/// ignored), as a full disk does: the write is cut short, then fails.
fn with_file_size_limit(mut cmd: std::process::Command, limit: u64) -> std::process::Command {
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions
    // (setrlimit, signal) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    cmd
}

#[test]
fn a_full_disk_leaves_no_torn_record_and_the_bad_line_in_its_file() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (input, bad_at) = input_with_bad_line();
    let config = ws.file_pipeline(&input, &hook.url(), SINK);
    let path = dead_letter_file(&ws);
    let earlier: String = (0..8).map(|i| record(&format!("old {i}")) + "\n").collect();
    std::fs::write(&path, &earlier).unwrap();

    // Room for 40 more bytes: the new record is torn, then the write fails.
    let cmd = with_file_size_limit(run_once_cmd(&config), earlier.len() as u64 + 40);
    let out = Proc::spawn(cmd).wait();
    out.assert_code(3);
    assert!(out.stderr.contains("File too large"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        earlier,
        "the failed write left part of a record"
    );
    assert_eq!(offset(&ws), bad_at, "{out}");

    rerun_delivers_everything(&ws, &config, &hook, &input);
    assert_eq!(dead_letters(&ws.data_dir(), "webhook").len(), 9);
}

#[test]
fn the_sink_retries_the_dead_letter_until_it_can_be_written() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (input, _) = input_with_bad_line();
    let config = ws.file_pipeline(&input, &hook.url(), SINK);
    let path = dead_letter_file(&ws);
    std::fs::create_dir(&path).unwrap();

    let proc = Proc::spawn(run_cmd(&config));
    let failing = proc.wait_stderr("cannot write dead letter", WAIT);
    assert!(failing.is_some(), "{}", proc.stderr_now());
    std::fs::remove_dir(&path).unwrap();
    let delivered = hook.wait_until(WAIT, |t| t.has_all(20));
    let written = !dead_letters(&ws.data_dir(), "webhook").is_empty();
    proc.sigterm();
    let out = proc.wait();
    out.assert_code(0);
    assert!(delivered, "not every event was delivered:\n{out}");
    assert!(written, "the dead letter was not written:\n{out}");
    assert_eq!(dead_letters(&ws.data_dir(), "webhook")[0]["line"], BAD);
    assert_eq!(offset(&ws), input.len() as u64, "{out}");
}

#[test]
fn an_event_the_endpoint_rejects_stays_in_its_file_when_its_dead_letter_cannot_be_written() {
    let hook = Endpoint::with_responder(|seen| {
        if seen.contains("\"userKey\":\"poison\"") {
            Reply::status(400)
        } else {
            Reply::ok()
        }
    });
    let ws = Workspace::new();
    let poison = r#"{"kind":"feature","key":"k","userKey":"poison","creationDate":1700000000}"#;
    let head = small_lines(0..10);
    let input = format!("{head}{poison}\n{}", small_lines(10..20));
    let config = ws.file_pipeline(&input, &hook.url(), SINK);
    let path = dead_letter_file(&ws);
    std::fs::create_dir(&path).unwrap();

    let out = run_once(&config);
    out.assert_code(3);
    assert_eq!(offset(&ws), head.len() as u64, "{out}");

    std::fs::remove_dir(&path).unwrap();
    let out = run_once(&config);
    out.assert_code(2);
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let line = dead[0]["line"].as_str().unwrap();
    assert!(line.contains(r#""userKey":"poison""#), "{line}");
    hook.with(|t| assert!(t.missing(20).is_empty(), "missing {:?}", t.missing(20)));
    assert_eq!(offset(&ws), input.len() as u64, "{out}");
}

#[test]
fn records_are_never_glued_to_a_torn_tail() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let input = format!(
        "{}bad one\n{}bad two\n",
        small_lines(0..5),
        small_lines(5..10)
    );
    let config = ws.file_pipeline(&input, &hook.url(), SINK);
    let path = dead_letter_file(&ws);
    // A line broken by an edit stays as it is; the tail torn by a crash is cut.
    let broken = r#"{"time":"2026-11-29T11:00:00.000Z","sink":"web"#;
    let torn = r#"{"time":"2026-11-29T12:00:00.000Z","sink":"webhook","reason":"not val"#;
    let before = format!("{}\n{broken}\n{}\n", record("old 0"), record("old 1"));
    std::fs::write(&path, format!("{before}{torn}")).unwrap();

    let out = run_once(&config);
    out.assert_code(2);
    let text = std::fs::read_to_string(&path).unwrap();
    let after = text
        .strip_prefix(&before)
        .unwrap_or_else(|| panic!("{text}"));
    let new: Vec<Value> = after
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(new.len(), 2, "{text}");
    assert_eq!(
        (&new[0]["line"], &new[1]["line"]),
        (&json!("bad one"), &json!("bad two"))
    );
    assert!(text.ends_with('\n'));
    assert!(out.stderr.contains("cut a torn record"), "{out}");
}

#[test]
fn past_dead_letter_max_bytes_records_keep_the_first_kib_of_their_line() {
    const LONG: usize = 5000;
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let long_line = |i: usize| format!("not json {i} {}", "x".repeat(LONG - 11));
    let mut input: String = (0..4).map(|i| long_line(i) + "\n").collect();
    input.push_str("short and bad\n");
    let sink = format!("{SINK}dead_letter_max_bytes = 3000\n");
    let config = ws.file_pipeline(&input, &hook.url(), &sink);

    let out = run_once(&config);
    out.assert_code(2);
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), 5, "{dead:#?}");
    // The file was empty: the first record is whole.
    assert_eq!(dead[0]["line"], long_line(0));
    assert!(dead[0].get("dropped_bytes").is_none(), "{}", dead[0]);
    for (i, record) in dead.iter().enumerate().take(4).skip(1) {
        let line = record["line"].as_str().unwrap();
        assert_eq!(line, &long_line(i)[..1024]);
        assert_eq!(record["truncated_from_bytes"], LONG, "{record}");
        assert_eq!(record["dropped_bytes"], LONG - 1024, "{record}");
    }
    // A line shorter than a KiB loses nothing.
    assert_eq!(dead[4]["line"], "short and bad");
    assert!(dead[4].get("dropped_bytes").is_none(), "{}", dead[4]);
    let said = out.stderr.matches("reached dead_letter_max_bytes").count();
    assert_eq!(said, 1, "{out}");
}

#[test]
fn a_line_of_control_characters_is_kept_in_base64_not_escaped_sixfold() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let line = "\u{1}".repeat(3000);
    let config = ws.file_pipeline(format!("{line}\n"), &hook.url(), SINK);

    run_once(&config).assert_code(2);
    let path = dead_letter_path(&ws.data_dir(), "webhook");
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 3000 * 3 / 2, "{size} bytes for a line of 3000");
    let dead = dead_letters(&ws.data_dir(), "webhook");
    let kept = dead[0]["line_base64"].as_str().expect("kept in base64");
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(kept)
        .unwrap();
    assert_eq!(raw, line.as_bytes());
}
