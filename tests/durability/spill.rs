//! Spill: events from a TCP source cannot be read again, so at shutdown those not delivered
//! within `shutdown_timeout` are written to `data_dir/spill/<sink>.jsonl`, and the next
//! start sends them first, then removes the file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

const SPILLED: u64 = 300;
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

/// The sink's `buffer_max_events`: flaghook stops reading once it holds that many events.
const BUDGET: u64 = 1000;

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

fn spilled_ids(path: &Path) -> Vec<u64> {
    let text = std::fs::read(path).unwrap();
    let (ids, foreign) = event_ids(&text);
    assert_eq!(foreign, 0);
    ids
}

#[test]
fn undelivered_tcp_events_are_spilled_at_shutdown_and_sent_first_at_the_next_start() {
    let ws = Workspace::new();
    let address = format!("127.0.0.1:{}", free_port());
    let down = ClosedPort::reserve();
    let config = tcp_pipeline(&ws, &address, &down.url());

    let proc = Proc::spawn(run_cmd(&config));
    send(&address, &proc, 0..SPILLED);
    assert!(
        proc.wait_stderr(&format!("events={SPILLED}"), WAIT)
            .is_some_and(|s| s.contains("will retry")),
        "flaghook never tried to send all {SPILLED} events:\n{}",
        proc.stderr_now()
    );
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    let summary = out.summary();
    assert_eq!(summary.events_delivered, 0, "{out}");
    assert_eq!(summary.events_not_delivered, SPILLED, "{out}");

    let spill = spill_path(&ws.data_dir(), "webhook");
    assert!(spill.exists(), "no spill file:\n{out}");
    assert_eq!(spilled_ids(&spill), (0..SPILLED).collect::<Vec<_>>());

    // Next start, the endpoint is up (same data_dir and sink; the URL changed).
    let hook = Endpoint::start();
    let config = tcp_pipeline(&ws, &address, &hook.url());
    let proc = Proc::spawn(run_cmd(&config));
    send(&address, &proc, SPILLED..SPILLED + LATER);
    let all = SPILLED + LATER;
    let complete = hook.wait_until(WAIT, |t| t.has_all(all));
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    assert!(complete, "not everything arrived:\n{out}");
    assert_eq!(
        delivered_in_order(&hook),
        (0..all).collect::<Vec<_>>(),
        "spilled events first, then the new ones, each once"
    );
    assert!(!spill.exists(), "the spill file was not removed:\n{out}");
    assert_eq!(out.summary().events_delivered, all, "{out}");
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
/// flaghook stopped reading (its budget is full), and every buffer on the way is full.
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

/// The first run's summary, spill and dead letters hold everything `filled` counted.
#[track_caller]
fn assert_all_spilled(ws: &Workspace, filled: &Filled, out: &Output) {
    let summary = out.summary();
    assert_eq!(summary.events_delivered, 0, "{out}");
    assert_eq!(
        summary.events_not_delivered,
        filled.events(),
        "the summary does not count every event that was sent:\n{out}"
    );
    assert_eq!(summary.events_rejected, filled.cut(), "{out}");
    assert_eq!(
        dead_letters(&ws.data_dir(), "webhook").len() as u64,
        filled.cut(),
        "the line cut short by the shipper is dead-lettered:\n{out}"
    );
    let spill = spill_path(&ws.data_dir(), "webhook");
    let mut spilled = spilled_ids(&spill);
    spilled.sort_unstable();
    let expected: Vec<u64> = (0..filled.events()).collect();
    assert!(
        spilled == expected,
        "spilled {} events, {} were sent (first missing: {:?}):\n{out}",
        spilled.len(),
        expected.len(),
        expected
            .iter()
            .find(|id| spilled.binary_search(id).is_err())
    );
}

/// Issue 7, defect 3: with the endpoint down and the budget full, the events in flaghook's
/// socket receive queue (acknowledged to the shipper by the kernel) were dropped at
/// SIGTERM. They must be read, spilled, and delivered at the next start.
#[test]
fn events_a_tcp_shipper_already_sent_are_not_dropped_at_shutdown() {
    let ws = Workspace::new();
    let address = format!("127.0.0.1:{}", free_port());
    let down = ClosedPort::reserve();
    let proc = Proc::spawn(run_cmd(&tcp_pipeline(&ws, &address, &down.url())));
    let mut shipper = connect(&address, &proc);
    shipper.set_nonblocking(true).unwrap();
    let filled = fill(&mut shipper);
    assert!(
        filled.lines > 2 * BUDGET,
        "only {} lines fit before flaghook stopped reading; the socket buffers should hold more than its budget of {BUDGET}",
        filled.lines
    );
    // The shipper stays connected (and silent) while flaghook stops.
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    drop(shipper);
    out.assert_code(0);
    assert_all_spilled(&ws, &filled, &out);

    let hook = Endpoint::start();
    let proc = Proc::spawn(run_cmd(&tcp_pipeline(&ws, &address, &hook.url())));
    let complete = hook.wait_until(WAIT, |t| t.has_all(filled.events()));
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
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
}

/// The drain at shutdown is bounded: a shipper that never goes quiet does not keep flaghook
/// running. What it sent before SIGTERM is still read and spilled, in order.
#[test]
fn a_tcp_shipper_that_never_goes_quiet_does_not_keep_flaghook_from_stopping() {
    let ws = Workspace::new();
    let address = format!("127.0.0.1:{}", free_port());
    let down = ClosedPort::reserve();
    let proc = Proc::spawn(run_cmd(&tcp_pipeline(&ws, &address, &down.url())));
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

    let spilled = spilled_ids(&spill_path(&ws.data_dir(), "webhook"));
    let read = spilled.len() as u64;
    assert!(
        read >= before_stop,
        "{before_stop} lines were sent before SIGTERM, only {read} were kept:\n{out}"
    );
    assert_eq!(spilled, (0..read).collect::<Vec<_>>(), "{out}");
    let summary = out.summary();
    assert_eq!(summary.events_not_delivered, read, "{out}");
    assert!(
        summary.events_rejected <= 1,
        "only the line cut at the limit may be bad:\n{out}"
    );
}

/// Connections the kernel accepted while every `max_connections` slot was taken wait in
/// the listen backlog, their data acknowledged; closing the listener at shutdown dropped
/// them. They must be read and spilled too.
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
    assert_all_spilled(&ws, &filled, &out);
}

/// Stdin's counterpart of the TCP defect: what a shipper wrote into the pipe was dropped
/// at SIGTERM while the budget was full.
#[test]
fn events_already_written_to_stdin_are_not_dropped_at_shutdown() {
    let ws = Workspace::new();
    let down = ClosedPort::reserve();
    let config = pipeline(&ws, "type = \"stdin\"", &down.url());
    let mut cmd = run_cmd(&config);
    cmd.stdin(std::process::Stdio::piped());
    let mut proc = Proc::spawn(cmd);
    let mut pipe = proc.stdin();
    set_nonblocking(&pipe);
    let filled = fill(&mut pipe);
    assert!(
        filled.lines > BUDGET,
        "only {} lines fit before flaghook stopped reading; the pipe should hold more than its budget of {BUDGET}",
        filled.lines
    );
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    drop(pipe);
    out.assert_code(0);
    assert_all_spilled(&ws, &filled, &out);
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
