//! The journal: what a TCP or stdin source reads is appended to
//! `data_dir/journal/<source>/` before the sinks see it. What a sink has not delivered at a
//! stop stays there and is sent at the next start; what shippers had already sent at a
//! stop is read into it; a kill -9 loses nothing that reached it; a torn last line is
//! dead-lettered, not delivered; a spill file an older flaghook left is moved into it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

const UNDELIVERED: u64 = 300;
const LATER: u64 = 100;

fn tcp_pipeline(ws: &Workspace, address: &str, url: &str) -> PathBuf {
    tcp_pipeline_with(ws, address, url, "")
}

/// `source_extra`: more settings of the TCP source.
fn tcp_pipeline_with(ws: &Workspace, address: &str, url: &str, source_extra: &str) -> PathBuf {
    pipeline(
        ws,
        &format!(
            "type = \"tcp\"\naddress = {}\n{source_extra}",
            toml_str(address)
        ),
        url,
    )
}

/// A pipeline from the source `shipper` (its settings) to the sink `webhook`, whose memory
/// budget is `BUDGET` events.
fn pipeline(ws: &Workspace, source: &str, url: &str) -> PathBuf {
    ws.config(&format!(
        r#"[sources.shipper]
{source}
journal_segment_bytes = "64KiB"

[sinks.webhook]
type = "webhook"
inputs = ["shipper"]
endpoint_url = {url}
flush_interval = "100ms"
max_event_in_memory = 500
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms"
buffer_max_events = {BUDGET}
shutdown_timeout = "1s"
"#,
        url = toml_str(url),
    ))
}

/// The sink's `buffer_max_events`: flaghook holds at most that many events in memory.
const BUDGET: u64 = 1000;
/// The `journal_max_bytes` of the tests that fill the journal: flaghook stops reading once
/// its journal holds that.
const JOURNAL_MAX: u64 = 1 << 20;

/// The source setting of [`JOURNAL_MAX`].
fn capped() -> String {
    format!("journal_max_bytes = {JOURNAL_MAX}")
}

fn send(address: &str, proc: &Proc, ids: std::ops::Range<u64>) {
    let mut conn = connect(address, proc);
    conn.write_all(small_lines(ids).as_bytes()).unwrap();
}

/// Ids of the events of each 2xx-answered request, in arrival order.
fn delivered_in_order(hook: &Endpoint) -> Vec<u64> {
    hook.requests()
        .iter()
        .filter(|r| r.is_success())
        .flat_map(|r| r.ids.clone())
        .collect()
}

/// The ids of the complete event lines in the journal of `source`, in order.
pub fn journaled_ids(data_dir: &std::path::Path, source: &str) -> Vec<u64> {
    let text = journal_text(data_dir, source);
    text.split(|b| *b == b'\n')
        .filter(|line| line.ends_with(b"}"))
        .flat_map(|line| event_ids(line).0)
        .collect()
}

#[test]
fn undelivered_tcp_events_stay_in_the_journal_at_shutdown_and_are_sent_at_the_next_start() {
    let ws = Workspace::new();
    let address = format!("127.0.0.1:{}", free_port());
    let down = ClosedPort::reserve();
    let config = tcp_pipeline(&ws, &address, &down.url());

    let proc = Proc::spawn(run_cmd(&config));
    send(&address, &proc, 0..UNDELIVERED);
    assert!(
        proc.wait_stderr(&format!("events={UNDELIVERED}"), WAIT)
            .is_some_and(|s| s.contains("will retry")),
        "flaghook never tried to send all {UNDELIVERED} events:\n{}",
        proc.stderr_now()
    );
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    let summary = out.summary();
    assert_eq!(summary.events_delivered, 0, "{out}");
    assert_eq!(summary.events_not_delivered, UNDELIVERED, "{out}");
    let data_dir = ws.data_dir();
    assert_eq!(
        out.summary_value("journal_bytes"),
        journal_size(&data_dir, "shipper"),
        "{out}"
    );
    assert_eq!(
        journaled_ids(&data_dir, "shipper"),
        (0..UNDELIVERED).collect::<Vec<_>>()
    );

    // Next start, the endpoint is up (same data_dir and source; the URL changed).
    let hook = Endpoint::start();
    let config = tcp_pipeline(&ws, &address, &hook.url());
    let proc = Proc::spawn(run_cmd(&config));
    send(&address, &proc, UNDELIVERED..UNDELIVERED + LATER);
    let all = UNDELIVERED + LATER;
    let complete = hook.wait_until(WAIT, |t| t.has_all(all));
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    assert!(complete, "not everything arrived:\n{out}");
    assert_eq!(
        delivered_in_order(&hook),
        (0..all).collect::<Vec<_>>(),
        "the journal's events first, then the new ones, each once"
    );
    assert_eq!(out.summary().events_delivered, all, "{out}");
    assert_eq!(out.summary_value("journal_bytes"), 0, "{out}");
    assert!(
        journal_segments(&data_dir, "shipper").is_empty(),
        "delivered segments were not deleted:\n{out}"
    );
}

/// What a shipper got into flaghook's input before it stopped being read.
struct Filled {
    /// Complete lines accepted (ids `0..lines`).
    lines: u64,
    /// The bytes of the next line accepted without its newline, if any.
    tail: String,
}

impl Filled {
    /// The tail is the whole next event, only its newline missing.
    fn tail_is_event(&self) -> bool {
        self.tail.ends_with('}')
    }

    /// Events flaghook must hand on: the complete lines, and a tail that is a whole event.
    fn events(&self) -> u64 {
        self.lines + u64::from(self.tail_is_event())
    }

    /// Bad lines flaghook must dead-letter: a tail cut inside its event.
    fn cut(&self) -> u64 {
        u64::from(!self.tail.is_empty() && !self.tail_is_event())
    }
}

/// How long writes must keep failing with `WouldBlock` for the input to count as full:
/// flaghook stopped reading (its journal is full), and every buffer on the way is full.
const FULL_FOR: Duration = Duration::from_millis(500);

/// Writes event lines (ids from 0) to `input`, which must be non-blocking, until flaghook
/// stops reading it. Counts exactly what the kernel accepted.
fn fill(input: &mut impl Write) -> Filled {
    const CHUNK: u64 = 1000;
    let deadline = Instant::now() + WAIT;
    let (mut first, mut chunk, mut at) = (0, small_lines(0..CHUNK), 0);
    let mut blocked_since = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "flaghook kept reading: the test cannot fill its input"
        );
        if at == chunk.len() {
            first += CHUNK;
            (chunk, at) = (small_lines(first..first + CHUNK), 0);
        }
        // Writes of at most 4 KiB are all-or-nothing on a pipe (PIPE_BUF).
        let end = chunk.len().min(at + 4096);
        match input.write(&chunk.as_bytes()[at..end]) {
            Ok(n) => (at, blocked_since) = (at + n, None),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if blocked_since.get_or_insert_with(Instant::now).elapsed() >= FULL_FOR {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("writing to flaghook failed: {e}"),
        }
    }
    let written = &chunk[..at];
    let complete = written.rfind('\n').map_or(0, |i| i + 1);
    Filled {
        lines: first + written.matches('\n').count() as u64,
        tail: written[complete..].to_string(),
    }
}

/// After a stop, the journal holds everything `filled` counted, in order; the line cut
/// short by the shipper is its last.
#[track_caller]
fn assert_all_journaled(ws: &Workspace, filled: &Filled, out: &Output) {
    let summary = out.summary();
    assert_eq!(summary.events_delivered, 0, "{out}");
    assert!(
        summary.events_not_delivered <= BUDGET,
        "a sink held more than its budget:\n{out}"
    );
    let journaled = journaled_ids(&ws.data_dir(), "shipper");
    let expected: Vec<u64> = (0..filled.events()).collect();
    assert!(
        journaled == expected,
        "journaled {} events, {} were sent (first missing: {:?}):\n{out}",
        journaled.len(),
        expected.len(),
        expected
            .iter()
            .find(|id| journaled.binary_search(id).is_err())
    );
    let text = journal_text(&ws.data_dir(), "shipper");
    let last = text.strip_suffix(b"\n").unwrap_or(&text);
    let last = &last[last.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)..];
    if filled.cut() == 1 {
        assert_eq!(
            last,
            filled.tail.as_bytes(),
            "the cut line is journaled as it came"
        );
    }
}

/// Starts the pipeline again with an endpoint that takes everything: every event `filled`
/// counted arrives, and the line cut short is dead-lettered.
#[track_caller]
fn assert_all_delivered_next(ws: &Workspace, config: impl Fn(&str) -> PathBuf, filled: &Filled) {
    let hook = Endpoint::start();
    let mut cmd = run_once_cmd(&config(&hook.url()));
    cmd.stdin(std::process::Stdio::null());
    let proc = Proc::spawn(cmd);
    let complete = hook.wait_until(WAIT, |t| t.has_all(filled.events()));
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    hook.with(|t| {
        let missing = t.missing(filled.events());
        assert!(
            complete && missing.is_empty(),
            "{} of {} events never arrived (first: {:?}):\n{out}",
            missing.len(),
            filled.events(),
            &missing[..missing.len().min(10)]
        );
    });
    assert_eq!(
        dead_letters(&ws.data_dir(), "webhook").len() as u64,
        filled.cut(),
        "the line cut short by the shipper is dead-lettered:\n{out}"
    );
}

/// Issue 7, defect 3: with the endpoint down and flaghook no longer reading, the events in
/// flaghook's socket receive queue (acknowledged to the shipper by the kernel) were dropped
/// at SIGTERM. They must be read into the journal, and delivered at the next start. The
/// journal's cap is what stops the reading: the sender blocks once it holds
/// `journal_max_bytes`.
#[test]
fn events_a_tcp_shipper_already_sent_are_not_dropped_at_shutdown() {
    let ws = Workspace::new();
    let address = format!("127.0.0.1:{}", free_port());
    let down = ClosedPort::reserve();
    let config = |url: &str| tcp_pipeline_with(&ws, &address, url, &capped());
    let proc = Proc::spawn(run_cmd(&config(&down.url())));
    let mut shipper = connect(&address, &proc);
    shipper.set_nonblocking(true).unwrap();
    let filled = fill(&mut shipper);
    let journal = journal_size(&ws.data_dir(), "shipper");
    // The last read waits for room: it is up to a read (128 KiB and the line it ends in)
    // short of the cap.
    assert!(
        (JOURNAL_MAX - (256 << 10)..=JOURNAL_MAX).contains(&journal),
        "the sender blocked with {journal} bytes in a journal of at most {JOURNAL_MAX}"
    );
    // The shipper stays connected (and silent) while flaghook stops.
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    drop(shipper);
    out.assert_code(0);
    assert_all_journaled(&ws, &filled, &out);
    assert_all_delivered_next(&ws, config, &filled);
}

/// The drain at shutdown is bounded: a shipper that never goes quiet does not keep flaghook
/// running. What it sent before SIGTERM is still read and journaled, in order.
#[test]
fn a_tcp_shipper_that_never_goes_quiet_does_not_keep_flaghook_from_stopping() {
    let ws = Workspace::new();
    let address = format!("127.0.0.1:{}", free_port());
    let down = ClosedPort::reserve();
    let config = tcp_pipeline(&ws, &address, &down.url());
    let proc = Proc::spawn(run_cmd(&config));
    let mut conn = connect(&address, &proc);
    // Lines fully written so far; the shipper sends 100 every 20 ms until flaghook closes.
    let written = Arc::new(AtomicU64::new(0));
    let shipper = {
        let written = written.clone();
        std::thread::spawn(move || {
            // Longer than flaghook is given to stop: only the drain's limit ends it.
            let deadline = Instant::now() + 2 * WAIT;
            let mut id = 0;
            while Instant::now() < deadline
                && conn.write_all(small_lines(id..id + 100).as_bytes()).is_ok()
            {
                id += 100;
                written.store(id, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    assert!(
        proc.wait_stderr("will retry", WAIT).is_some(),
        "flaghook never tried to deliver:\n{}",
        proc.stderr_now()
    );
    let before_stop = written.load(Ordering::Relaxed);
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    shipper.join().unwrap();
    assert!(
        out.stderr.contains("not idle after"),
        "the drain did not end at its limit:\n{out}"
    );

    let journaled = journaled_ids(&ws.data_dir(), "shipper");
    let read = journaled.len() as u64;
    assert!(
        read >= before_stop,
        "{before_stop} lines were sent before SIGTERM, only {read} were kept:\n{out}"
    );
    assert_eq!(journaled, (0..read).collect::<Vec<_>>(), "{out}");
    assert!(out.summary_value("journal_bytes") > 0, "{out}");
}

/// Connections the kernel accepted while every `max_connections` slot was taken wait in
/// the listen backlog, their data acknowledged; closing the listener at shutdown dropped
/// them. They must be read and journaled too.
#[test]
fn tcp_connections_waiting_to_be_accepted_at_shutdown_are_read() {
    let ws = Workspace::new();
    let address = format!("127.0.0.1:{}", free_port());
    let down = ClosedPort::reserve();
    let config = tcp_pipeline_with(&ws, &address, &down.url(), "max_connections = 1");
    let proc = Proc::spawn(run_cmd(&config));
    let mut served = connect(&address, &proc);
    served.write_all(small_lines(0..100).as_bytes()).unwrap();
    assert!(
        proc.wait_stderr("will retry", WAIT).is_some(),
        "flaghook never tried to send the first connection's events:\n{}",
        proc.stderr_now()
    );
    // The only slot is taken: this one waits in the backlog.
    let mut waiting = connect(&address, &proc);
    waiting.write_all(small_lines(100..200).as_bytes()).unwrap();
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    drop((served, waiting));
    out.assert_code(0);
    let filled = Filled {
        lines: 200,
        tail: String::new(),
    };
    assert_all_journaled(&ws, &filled, &out);
}

/// Stdin's counterpart of the TCP defect: what a shipper wrote into the pipe was dropped
/// at SIGTERM while flaghook was not reading.
#[test]
fn events_already_written_to_stdin_are_not_dropped_at_shutdown() {
    let ws = Workspace::new();
    let down = ClosedPort::reserve();
    let stdin = format!("type = \"stdin\"\n{}", capped());
    let config = |url: &str| pipeline(&ws, &stdin, url);
    let mut cmd = run_cmd(&config(&down.url()));
    cmd.stdin(std::process::Stdio::piped());
    let mut proc = Proc::spawn(cmd);
    let mut pipe = proc.stdin();
    set_nonblocking(&pipe);
    let filled = fill(&mut pipe);
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    drop(pipe);
    out.assert_code(0);
    assert_all_journaled(&ws, &filled, &out);
    assert_all_delivered_next(&ws, config, &filled);
}

/// `cat events | flaghook run`, killed (SIGKILL) while stdin is still being written: what
/// reached the journal is delivered by the next start on the same data_dir.
#[test]
fn stdin_killed_midway_delivers_what_was_journaled_after_a_restart() {
    let ws = Workspace::new();
    let down = ClosedPort::reserve();
    let config = pipeline(&ws, "type = \"stdin\"", &down.url());
    let mut cmd = run_cmd(&config);
    cmd.stdin(std::process::Stdio::piped());
    let mut proc = Proc::spawn(cmd);
    let mut pipe = proc.stdin();
    let writer = std::thread::spawn(move || {
        // Until the pipe breaks: flaghook is killed while this writes.
        for first in (0..).step_by(100).take(10_000) {
            if pipe
                .write_all(small_lines(first..first + 100).as_bytes())
                .is_err()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    assert!(
        proc.wait_stderr("will retry", WAIT).is_some(),
        "flaghook never tried to deliver:\n{}",
        proc.stderr_now()
    );
    proc.sigkill();
    let killed = proc.wait_timeout(Duration::from_secs(10));
    writer.join().unwrap();
    let journaled = journaled_ids(&ws.data_dir(), "shipper");
    assert!(!journaled.is_empty(), "nothing was journaled:\n{killed}");
    assert_eq!(
        journaled,
        (0..journaled.len() as u64).collect::<Vec<_>>(),
        "the journal holds what stdin gave, in order"
    );

    let hook = Endpoint::start();
    let mut cmd = run_once_cmd(&pipeline(&ws, "type = \"stdin\"", &hook.url()));
    cmd.stdin(std::process::Stdio::null());
    let out = Proc::spawn(cmd).wait();
    out.assert_code(0);
    let n = journaled.len() as u64;
    hook.with(|t| {
        let missing = t.missing(n);
        assert!(
            missing.is_empty(),
            "{} of {n} journaled events never arrived (first: {:?}):\n{out}",
            missing.len(),
            missing.first()
        );
    });
    assert_eq!(out.summary_value("journal_bytes"), 0, "{out}");
}

/// A crash in the middle of a write leaves the last segment ending in a torn line. That
/// line, here a whole event but for its newline, is reported at start and dead-lettered,
/// never delivered; the lines before it are delivered, and the segment deleted.
#[test]
fn a_torn_last_line_in_the_journal_is_dead_lettered_not_delivered() {
    let ws = Workspace::new();
    let hook = Endpoint::start();
    let config = pipeline(&ws, "type = \"stdin\"", &hook.url());
    let segment = journal_dir(&ws.data_dir(), "shipper").join("00000000000000000001.ndjson");
    let torn = small_event(3);
    ws.write(
        segment.to_str().unwrap(),
        format!("{}{torn}", small_lines(0..3)),
    );
    let mut cmd = run_once_cmd(&config);
    cmd.stdin(std::process::Stdio::null());
    let out = Proc::spawn(cmd).wait();
    out.assert_code(2);
    assert!(
        out.stderr.contains("torn line"),
        "not reported at start:\n{out}"
    );
    assert_eq!(delivered_in_order(&hook), vec![0, 1, 2], "{out}");
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["line"], torn.as_str(), "{dead:#?}");
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("crash"),
        "{dead:#?}"
    );
    assert!(
        !segment.exists(),
        "the passed segment was not deleted:\n{out}"
    );
}

/// An older flaghook spilled undelivered TCP and stdin events to `spill/<sink>.jsonl`. The
/// next start moves that file into the journal once (it is gone from `spill/` while the
/// endpoint is down), and delivers its events from there, each once.
#[test]
fn a_spill_file_left_by_an_older_flaghook_is_moved_into_the_journal_and_delivered() {
    let ws = Workspace::new();
    let spill = spill_path(&ws.data_dir(), "webhook");
    ws.write(spill.to_str().unwrap(), small_lines(0..UNDELIVERED));
    let address = format!("127.0.0.1:{}", free_port());
    let down = ClosedPort::reserve();
    let proc = Proc::spawn(run_cmd(&tcp_pipeline(&ws, &address, &down.url())));
    assert!(
        proc.wait_stderr("will retry", WAIT).is_some(),
        "the spilled events were not sent:\n{}",
        proc.stderr_now()
    );
    assert!(!spill.exists(), "the spill file is still in spill/");
    assert_eq!(
        journaled_ids(&ws.data_dir(), "spill.webhook"),
        (0..UNDELIVERED).collect::<Vec<_>>(),
        "the spill file's events are not in the journal"
    );
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    assert!(out.summary_value("journal_bytes") > 0, "{out}");

    let hook = Endpoint::start();
    let proc = Proc::spawn(run_cmd(&tcp_pipeline(&ws, &address, &hook.url())));
    let complete = hook.wait_until(WAIT, |t| t.has_all(UNDELIVERED));
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    assert!(complete, "not every spilled event arrived:\n{out}");
    hook.with(|t| assert_eq!(t.duplicates(), 0, "events arrived twice"));
    assert!(
        !journal_dir(&ws.data_dir(), "spill.webhook").exists(),
        "the spill journal was not removed once delivered:\n{out}"
    );
}

fn set_nonblocking(pipe: &std::process::ChildStdin) {
    use std::os::fd::AsRawFd;
    let fd = pipe.as_raw_fd();
    // SAFETY: fcntl on a file descriptor this process owns; only its status flags change.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        assert!(flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0);
    }
}

/// A sink reads a file and a TCP source. At shutdown, a batch of file events fails and is
/// left in its file; a later batch mixing more lines of that file with TCP events is then
/// delivered. Its acknowledgement must not move the file's offset past the failed lines:
/// the next start sends them.
#[test]
fn a_file_batch_given_up_at_shutdown_stays_in_its_file_when_a_later_batch_is_delivered() {
    // File events are users 0..15, TCP events users 200..205. The endpoint refuses any
    // request without a TCP event, so the file-only batch fails and the mixed one passes.
    let hook = Endpoint::with_responder(|r: &Recorded| {
        if r.body_str().contains("\"userKey\":\"user-20") {
            Reply::ok()
        } else {
            Reply::status(503)
        }
    });
    let ws = Workspace::new();
    let input = ws.write("events.json", jsonl(&feature_events(0, 10)));
    let address = format!("127.0.0.1:{}", free_port());
    let config = ws.config(&format!(
        r#"[sources.files]
type = "file"
include = [{input}]

[sources.tcp]
type = "tcp"
address = {address}

[sinks.webhook]
type = "webhook"
inputs = ["files", "tcp"]
endpoint_url = {url}
flush_interval = "100ms"
max_event_in_memory = 10
retry_initial_backoff = "50ms"
retry_max_backoff = "100ms"
shutdown_timeout = "2s"
"#,
        input = toml_str(&input),
        address = toml_str(&address),
        url = toml_str(hook.url()),
    ));
    let proc = Proc::spawn(run_cmd(&config));
    assert!(
        hook.wait_until(WAIT, |t| t.failed_requests > 0),
        "the file batch was never sent:\n{}",
        proc.stderr_now()
    );
    // Newer lines of the same file, and TCP events, batched behind the failing one.
    ws.append("events.json", jsonl(&feature_events(10, 5)));
    let mut conn = connect(&address, &proc);
    conn.write_all(jsonl(&feature_events(200, 5)).as_bytes())
        .unwrap();
    drop(conn);
    std::thread::sleep(Duration::from_millis(500));
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    assert!(!out.timed_out, "{out}");

    // The next start, with an endpoint that takes everything: every file event arrives.
    hook.set_responder(|_| Reply::ok());
    let proc = Proc::spawn(run_cmd(&config));
    let all_file_events =
        |delivered: &[String]| feature_events(0, 15).iter().all(|e| delivered.contains(e));
    let deadline = Instant::now() + WAIT;
    while !all_file_events(&hook.delivered()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    proc.sigterm();
    let out2 = proc.wait_timeout(Duration::from_secs(20));
    let delivered = hook.delivered();
    let missing: Vec<String> = feature_events(0, 15)
        .into_iter()
        .filter(|e| !delivered.contains(e))
        .collect();
    assert!(
        missing.is_empty(),
        "file events lost: {missing:?}\nfirst run:\n{out}\nsecond run:\n{out2}"
    );
}
