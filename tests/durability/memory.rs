//! Memory stays bounded by bytes, not only by events: hostile but ordinary input (a writer
//! that appends one event at a time, large events, a large journal, a TCP backlog while
//! the endpoint is down) must not make the resident memory of the real binary grow past
//! what its budgets allow.
//!
//! Each test reads the process's resident memory from `/proc/<pid>/status` (the high-water
//! mark `VmHWM`, which no sampling can miss). The bounds are several times what flaghook
//! needs and several times below what the unbounded behaviour reached.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;

const MIB: u64 = 1024;

/// Events appended to a file one `write` at a time.
const TRICKLED: u64 = 3000;
/// Events sent on a TCP connection one `write` at a time.
const TRICKLED_TCP: u64 = 30_000;

/// Writes `feature_event(id)` (GO Feature Flag's own encoding, which flaghook sends without
/// a copy) for every id of `ids`, one `write` per event with a pause of `pause` after each,
/// as GO Feature Flag's file exporter and slow shippers do: flaghook reads them one or a
/// few at a time.
fn trickle(out: &mut impl Write, ids: std::ops::Range<u64>, pause: Duration) {
    for id in ids {
        out.write_all(format!("{}\n", feature_event(id as usize)).as_bytes())
            .unwrap();
        out.flush().unwrap();
        std::thread::sleep(pause);
    }
}

/// A sink that gathers every trickled event in one batch: with a healthy endpoint, they are
/// all held in memory until the last one is read.
fn holding_sink(url: &str, n: u64) -> String {
    format!(
        r#"[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = {url}
flush_interval = "1h"
max_event_in_memory = {n}
"#,
        url = toml_str(url)
    )
}

/// Runs `proc` until `hook` has every event of `0..n`, then stops it; returns its peak
/// resident memory in KiB.
fn peak_once_delivered(proc: Proc, hook: &Endpoint, n: u64) -> u64 {
    let complete = hook.wait_until(WAIT, |t| t.has_all(n));
    let peak = peak_rss_kib(proc.pid()).expect("VmHWM");
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    assert!(complete, "not every event arrived:\n{out}");
    assert_eq!(out.summary().events_delivered, n, "{out}");
    peak
}

#[test]
fn a_slow_file_writer_costs_each_event_only_its_own_bytes() {
    let ws = Workspace::new();
    let hook = Endpoint::start();
    let input = ws.write("events.json", "");
    let config = ws.config(&format!(
        "[sources.in]\ntype = \"file\"\ninclude = [{}]\n\n{}",
        toml_str(&input),
        holding_sink(&hook.url(), TRICKLED)
    ));
    let proc = Proc::spawn(run_cmd(&config));
    assert!(
        proc.wait_stderr("tailing file", WAIT).is_some(),
        "{}",
        proc.stderr_now()
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap();
    trickle(&mut file, 0..TRICKLED, Duration::from_millis(1));

    let peak = peak_once_delivered(proc, &hook, TRICKLED);
    println!("peak resident memory {} MiB", peak / MIB);
    // 3 000 events of ~200 bytes. A read buffer pinned per event (256 KiB each) was about
    // 635 MiB here.
    assert!(
        peak < 100 * MIB,
        "holding {TRICKLED} trickled events took {} MiB of resident memory",
        peak / MIB
    );
}

#[test]
fn a_slow_tcp_shipper_costs_each_event_only_its_own_bytes() {
    let ws = Workspace::new();
    let hook = Endpoint::start();
    let address = format!("127.0.0.1:{}", free_port());
    let config = ws.config(&format!(
        "[sources.in]\ntype = \"tcp\"\naddress = {}\n\n{}",
        toml_str(&address),
        holding_sink(&hook.url(), TRICKLED_TCP)
    ));
    let proc = Proc::spawn(run_cmd(&config));
    let mut conn = connect(&address, &proc);
    trickle(&mut conn, 0..TRICKLED_TCP, Duration::from_micros(100));

    let peak = peak_once_delivered(proc, &hook, TRICKLED_TCP);
    println!("peak resident memory {} MiB", peak / MIB);
    // A read buffer pinned per event (128 KiB each, of which the first page is touched)
    // was about 106 MiB here.
    assert!(
        peak < 64 * MIB,
        "holding {TRICKLED_TCP} trickled events took {} MiB of resident memory",
        peak / MIB
    );
}

/// Events of [`LARGE_BYTES`] each.
const LARGE: u64 = 1000;
const LARGE_BYTES: usize = 100_000;
const BUFFER_MAX_BYTES: u64 = 8 << 20;

/// `small_event(id)` padded with a `value` to exactly `LARGE_BYTES`.
fn large_event(id: u64) -> String {
    let head = format!(
        r#"{{"kind":"feature","key":"k","userKey":"u{id}","creationDate":1700000000,"value":""#
    );
    let pad = LARGE_BYTES - head.len() - 2;
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// An endpoint that answers 503 until `up` is set.
fn down_until(up: &Arc<AtomicBool>) -> Endpoint {
    let up = up.clone();
    Endpoint::with_responder(move |_| {
        if up.load(Ordering::Relaxed) {
            Reply::ok()
        } else {
            Reply::status(503)
        }
    })
    .count_only()
}

#[test]
fn large_events_are_held_up_to_buffer_max_bytes_not_buffer_max_events() {
    let ws = Workspace::new();
    let mut text = String::with_capacity(LARGE as usize * (LARGE_BYTES + 1));
    for id in 0..LARGE {
        text.push_str(&large_event(id));
        text.push('\n');
    }
    let up = Arc::new(AtomicBool::new(false));
    let hook = down_until(&up);
    let config = ws.file_pipeline(
        text,
        &hook.url(),
        &format!(
            r#"flush_interval = "100ms"
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms"
buffer_max_bytes = {BUFFER_MAX_BYTES}"#
        ),
    );
    let proc = Proc::spawn(run_cmd(&config));
    // The endpoint is down: the sources fill the budget, then wait.
    assert!(
        hook.wait_until(WAIT, |t| t.failed_requests >= 5),
        "{}",
        proc.stderr_now()
    );
    std::thread::sleep(Duration::from_millis(500));
    up.store(true, Ordering::Relaxed);

    let peak = peak_once_delivered_with_summary(proc, &hook, LARGE);
    println!(
        "peak_events_in_memory={} peak resident memory {} MiB",
        peak.events,
        peak.rss_kib / MIB
    );
    let most = BUFFER_MAX_BYTES / LARGE_BYTES as u64;
    assert!(
        peak.events <= most,
        "held {} events of {LARGE_BYTES} bytes: more than buffer_max_bytes = {BUFFER_MAX_BYTES} allows ({most})",
        peak.events
    );
    // The 100 MB of events, held whole under the default buffer_max_events, took 234 MiB
    // of resident memory; with this cap, about 40 MiB.
    assert!(
        peak.rss_kib < 64 * MIB,
        "resident memory reached {} MiB with buffer_max_bytes = 8 MiB",
        peak.rss_kib / MIB
    );
    hook.with(|t| assert_eq!(t.duplicates(), 0, "no crash, yet events arrived twice"));
}

/// Issue 14: between the read and the request, an event's bytes exist once. With the
/// endpoint down, the sink holds `buffer_max_bytes` of events in two batches (the failed one
/// and the next); each batch is its request body, so that is about the cap, not the cap
/// for the lines read plus as much again for the bodies built from them.
#[test]
fn a_held_batch_is_its_request_body_not_a_copy_of_its_lines() {
    const CAP: u64 = 32 << 20;
    let ws = Workspace::new();
    let events = (CAP * 2) / LARGE_BYTES as u64;
    let mut text = String::with_capacity(events as usize * (LARGE_BYTES + 1));
    for id in 0..events {
        text.push_str(&large_event(id));
        text.push('\n');
    }
    let up = Arc::new(AtomicBool::new(false));
    let hook = down_until(&up);
    let config = ws.file_pipeline(
        text,
        &hook.url(),
        &format!(
            r#"flush_interval = "100ms"
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms"
buffer_max_bytes = {CAP}"#
        ),
    );
    let proc = Proc::spawn(run_cmd(&config));
    // The endpoint is down: the sources fill the budget, then wait.
    assert!(
        hook.wait_until(WAIT, |t| t.failed_requests >= 5),
        "{}",
        proc.stderr_now()
    );
    std::thread::sleep(Duration::from_millis(500));
    up.store(true, Ordering::Relaxed);

    let peak = peak_once_delivered_with_summary(proc, &hook, events);
    println!(
        "peak_events_in_memory={} peak resident memory {} MiB",
        peak.events,
        peak.rss_kib / MIB
    );
    // The lines, and beside them the bodies built from them, took 79-88 MiB here (about twice
    // the cap, plus 20 MiB); one copy of the events, the cap plus the same 20 MiB.
    assert!(
        peak.rss_kib < 70 * MIB,
        "resident memory reached {} MiB holding buffer_max_bytes = 32 MiB of events",
        peak.rss_kib / MIB
    );
}

struct Peak {
    events: u64,
    rss_kib: u64,
}

fn peak_once_delivered_with_summary(proc: Proc, hook: &Endpoint, n: u64) -> Peak {
    let complete = hook.wait_until(Duration::from_secs(60), |t| t.has_all(n));
    let rss_kib = peak_rss_kib(proc.pid()).expect("VmHWM");
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    assert!(complete, "not every event arrived:\n{out}");
    assert_eq!(out.summary().events_delivered, n, "{out}");
    Peak {
        events: out.summary_value("peak_events_in_memory"),
        rss_kib,
    }
}

/// Events in the spill file of the spill tests, of [`LARGE_BYTES`] each.
const SPILLED: u64 = 500;

/// A TCP source to a sink that holds at most 10 events; returns the config and the
/// source's address.
fn spill_pipeline(ws: &Workspace, url: &str) -> (PathBuf, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let config = ws.config(&format!(
        r#"[sources.in]
type = "tcp"
address = {address}

[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = {url}
flush_interval = "100ms"
max_event_in_memory = 10
buffer_max_events = 10
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms"
shutdown_timeout = "1s"
"#,
        address = toml_str(&address),
        url = toml_str(url),
    ));
    (config, address)
}

/// Writes a spill file of `large_event(id)` for `0..SPILLED`, as an older flaghook left it
/// at a shutdown.
fn write_spill(ws: &Workspace) -> PathBuf {
    let path = spill_path(&ws.data_dir(), "webhook");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for id in 0..SPILLED {
        writeln!(w, "{}", large_event(id)).unwrap();
    }
    w.flush().unwrap();
    path
}

/// The ids of the whole event lines in the journal of `source`, in order.
fn journaled_ids(ws: &Workspace, source: &str) -> Vec<u64> {
    let text = journal_text(&ws.data_dir(), source);
    text.split(|b| *b == b'\n')
        .filter(|line| line.ends_with(b"}"))
        .flat_map(|line| event_ids(line).0)
        .collect()
}

/// The 50 MB spill file of an older flaghook, moved into the journal, is read within the
/// sink's budget of 10 events.
#[test]
fn a_spill_file_moved_into_the_journal_is_read_within_the_memory_budget() {
    let ws = Workspace::new();
    let spill = write_spill(&ws);
    let up = Arc::new(AtomicBool::new(false));
    let hook = down_until(&up);
    let proc = Proc::spawn(run_cmd(&spill_pipeline(&ws, &hook.url()).0));
    assert!(
        hook.wait_until(WAIT, |t| t.failed_requests >= 3),
        "{}",
        proc.stderr_now()
    );
    up.store(true, Ordering::Relaxed);

    let peak = peak_once_delivered_with_summary(proc, &hook, SPILLED);
    println!(
        "peak_events_in_memory={} peak resident memory {} MiB",
        peak.events,
        peak.rss_kib / MIB
    );
    assert!(!spill.exists(), "the spill file was not moved");
    assert!(
        !journal_dir(&ws.data_dir(), "spill.webhook").exists(),
        "the spill journal was not removed once delivered"
    );
    hook.with(|t| {
        assert_eq!(t.duplicates(), 0, "events arrived twice");
        assert!(t.max_batch <= 10);
    });
    assert!(peak.events <= 10, "held {} events", peak.events);
    // The 50 MB file, loaded whole, took 111 MiB; within the budget, about 22 MiB.
    assert!(
        peak.rss_kib < 40 * MIB,
        "resident memory reached {} MiB for a sink that holds 10 events of 100 KB",
        peak.rss_kib / MIB
    );
}

/// Events a shipper sends in each run of the test below.
const NEWER: u64 = 5;

/// Restarts while the endpoint is down keep every event of the journals (the spill file
/// moved in, and what TCP brought in each run) once, and the last run delivers each once.
#[test]
fn a_journal_read_in_parts_keeps_every_event_across_restarts() {
    let ws = Workspace::new();
    write_spill(&ws);
    let down = Endpoint::with_responder(|_| Reply::status(503)).count_only();
    let mut sent = SPILLED;
    for _ in 0..3 {
        let (config, address) = spill_pipeline(&ws, &down.url());
        let proc = Proc::spawn(run_cmd(&config));
        // Newer events are journaled while the spilled ones hold the budget.
        let mut conn = connect(&address, &proc);
        for id in sent..sent + NEWER {
            writeln!(conn, "{}", large_event(id)).unwrap();
        }
        sent += NEWER;
        let before = down.with(|t| t.failed_requests);
        assert!(
            down.wait_until(WAIT, |t| t.failed_requests >= before + 2),
            "{}",
            proc.stderr_now()
        );
        proc.sigterm();
        let out = proc.wait_timeout(Duration::from_secs(20));
        out.assert_code(0);
        assert_eq!(
            journaled_ids(&ws, "spill.webhook"),
            (0..SPILLED).collect::<Vec<_>>(),
            "the spill journal holds every spilled event once, in order:\n{out}"
        );
        assert_eq!(
            journaled_ids(&ws, "in"),
            (SPILLED..sent).collect::<Vec<_>>(),
            "the source's journal holds every newer event once, in order:\n{out}"
        );
    }

    let hook = Endpoint::start();
    let proc = Proc::spawn(run_cmd(&spill_pipeline(&ws, &hook.url()).0));
    let complete = hook.wait_until(Duration::from_secs(60), |t| t.has_all(sent));
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    assert!(complete, "not every journaled event arrived:\n{out}");
    let delivered: Vec<u64> = hook.requests().iter().flat_map(|r| r.ids.clone()).collect();
    let spilled: Vec<u64> = delivered
        .iter()
        .copied()
        .filter(|id| *id < SPILLED)
        .collect();
    assert_eq!(
        spilled,
        (0..SPILLED).collect::<Vec<_>>(),
        "each once, in order"
    );
    hook.with(|t| assert_eq!(t.duplicates(), 0, "events arrived twice"));
    assert_eq!(out.summary_value("journal_bytes"), 0, "{out}");
}

/// The journal cap of the backlog test: about 230 000 small events.
const BACKLOG_JOURNAL: u64 = 16 << 20;

/// With the endpoint down, a TCP shipper sends far more than the sink may hold: the journal
/// takes the backlog up to `journal_max_bytes`, then flaghook stops reading and the shipper
/// blocks. Memory stays bounded by the sink's budget all along (the high-water mark of the
/// resident memory), and once the endpoint is up every event arrives, once.
#[test]
fn a_tcp_backlog_while_the_endpoint_is_down_waits_in_the_journal_not_in_memory() {
    let ws = Workspace::new();
    let up = Arc::new(AtomicBool::new(false));
    let hook = down_until(&up);
    let (config, address) = ws.tcp_pipeline(
        &hook.url(),
        &format!("journal_segment_bytes = \"1MiB\"\njournal_max_bytes = {BACKLOG_JOURNAL}"),
        r#"flush_interval = "100ms"
max_event_in_memory = 1000
buffer_max_events = 2000
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms""#,
    );
    let proc = Proc::spawn(run_cmd(&config));
    let mut conn = connect(&address, &proc);
    conn.set_nonblocking(true).unwrap();
    // Writes until flaghook stops reading: the journal is full, and so are the socket's
    // buffers. Whole lines only, so that every event sent is a whole one.
    let (mut sent, mut blocked_since) = (0u64, None::<std::time::Instant>);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut pending = Vec::new();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "flaghook never stopped reading"
        );
        if pending.is_empty() {
            pending = small_lines(sent..sent + 1000).into_bytes();
            sent += 1000;
        }
        match conn.write(&pending) {
            Ok(n) => {
                pending.drain(..n);
                blocked_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= Duration::from_millis(500) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("writing to flaghook failed: {e}"),
        }
    }
    let journal = journal_size(&ws.data_dir(), "tcp");
    println!("sender blocked after {sent} events; the journal holds {journal} bytes");
    assert!(
        journal > BACKLOG_JOURNAL - (1 << 20) && journal <= BACKLOG_JOURNAL,
        "the sender blocked with {journal} bytes journaled, the cap is {BACKLOG_JOURNAL}"
    );

    up.store(true, Ordering::Relaxed);
    conn.set_nonblocking(false).unwrap();
    conn.write_all(&pending).unwrap();
    drop(conn);
    let peak = peak_once_delivered_with_summary(proc, &hook, sent);
    println!(
        "peak_events_in_memory={} peak resident memory {} MiB",
        peak.events,
        peak.rss_kib / MIB
    );
    assert!(peak.events <= 2000, "held {} events", peak.events);
    // Held in memory, the backlog (about 230 000 events of 72 bytes, 1 KB each once
    // decoded and batched) would take hundreds of MiB.
    assert!(
        peak.rss_kib < 60 * MIB,
        "resident memory reached {} MiB with the backlog in the journal",
        peak.rss_kib / MIB
    );
    hook.with(|t| assert_eq!(t.duplicates(), 0, "no crash, yet events arrived twice"));
}
