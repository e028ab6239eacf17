//! Batching triggers (size, interval), retries (order, exactly once, backoff, Retry-After,
//! timeouts), permanent failures (dead letter) and the flush on shutdown.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::harness::*;

/// `max_event_in_memory = 3`, 10 events -> requests of 3, 3, 3 and 1, in order.
#[test]
fn size_trigger_splits_10_events_into_3_3_3_1() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let events = feature_events(0, 10);
    let config = ws.file_pipeline(
        jsonl(&events),
        &server.url(),
        r#"max_event_in_memory = 3
flush_interval = "60s""#,
    );
    let out = run_once(&config);
    out.assert_code(0);

    let reqs = server.requests();
    let sizes: Vec<usize> = reqs.iter().map(|r| r.events().len()).collect();
    assert_eq!(sizes, vec![3, 3, 3, 1], "{out}");
    assert_eq!(server.delivered(), events);
    let s = out.summary();
    assert_eq!(
        s,
        Summary {
            events_delivered: 10,
            requests: 4,
            events_rejected: 0,
            events_not_delivered: 0
        }
    );
}

/// Two events on an open TCP connection go out together once `flush_interval` has passed
/// since they came, without the size trigger; a later event goes in a later request.
#[test]
fn interval_trigger_sends_partial_batch_after_flush_interval() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = ws.config(&format!(
        r#"[sources.tcp]
type = "tcp"
address = {addr}

[sinks.webhook]
type = "webhook"
inputs = ["tcp"]
endpoint_url = {url}
flush_interval = "500ms"
max_event_in_memory = 100
"#,
        addr = toml_str(&addr),
        url = toml_str(server.url()),
    ));
    let proc = Proc::spawn(run_once_cmd(&config));
    let mut conn = connect(&addr, &proc);

    let sent_at = Instant::now();
    conn.write_all(jsonl(&feature_events(0, 2)).as_bytes())
        .unwrap();
    let reqs = server.wait_for_requests(1, WAIT);
    assert_eq!(
        reqs.len(),
        1,
        "no request after the interval:\n{}",
        proc.stderr_now()
    );
    assert_eq!(reqs[0].events(), feature_events(0, 2));
    let waited = reqs[0].at - sent_at;
    assert!(
        waited >= Duration::from_millis(480),
        "batch of 2 < 100 went out after {waited:?}, before flush_interval (500ms)"
    );

    conn.write_all(jsonl(&[feature_event(2)]).as_bytes())
        .unwrap();
    let reqs = server.wait_for_requests(2, WAIT);
    assert_eq!(reqs.len(), 2, "{}", proc.stderr_now());
    assert_eq!(reqs[1].events(), vec![feature_event(2)]);
    assert!(reqs[1].at > reqs[0].at);

    drop(conn);
    let out = proc.wait();
    out.assert_code(0);
    let s = out.summary();
    assert_eq!(s.events_delivered, 3, "{out}");
    assert_eq!(s.requests, 2, "{out}");
    assert_eq!(server.requests().len(), 2);
}

/// With `buffer_max_events` equal to `max_event_in_memory` there is no room to gather the
/// next batch while one is in flight: batches go one at a time, failures are retried in
/// order and nothing stalls.
#[test]
fn smallest_budget_retries_in_order_without_stalling() {
    let server = Endpoint::scripted(
        vec![Reply::status(500), Reply::ok(), Reply::status(503)],
        Reply::ok(),
    );
    let ws = Workspace::new();
    let events = feature_events(0, 10);
    let config = ws.file_pipeline(
        jsonl(&events),
        &server.url(),
        r#"max_event_in_memory = 3
buffer_max_events = 3
flush_interval = "100ms"
retry_initial_backoff = "50ms"
retry_max_backoff = "100ms""#,
    );
    let out = run_once(&config);
    out.assert_code(0);
    assert_eq!(server.delivered(), events, "{out}");
    for r in server.requests() {
        assert!(r.events().len() <= 3, "{out}");
    }
    let s = out.summary();
    assert_eq!(s.events_delivered, 10, "{out}");
    assert!(out.stdout.contains("peak_events_in_memory=3"), "{out}");
}

/// Vector's classic sink test: 500 for the first two requests, then 200: every event arrives
/// exactly once, in order.
#[test]
fn two_failures_then_success_delivers_every_event_once_in_order() {
    let server = Endpoint::scripted(vec![Reply::status(500), Reply::status(500)], Reply::ok());
    let ws = Workspace::new();
    let events = feature_events(0, 5);
    let config = ws.file_pipeline(
        jsonl(&events),
        &server.url(),
        r#"flush_interval = "100ms"
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms""#,
    );
    let out = run_once(&config);
    out.assert_code(0);

    let reqs = server.requests();
    let statuses: Vec<u16> = reqs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![500, 500, 200], "{out}");
    assert_eq!(server.delivered(), events);
    // The failed attempts carried the same events (nothing lost or invented on the way).
    assert_eq!(reqs[0].events(), events);
    assert_eq!(reqs[1].events(), events);
    let s = out.summary();
    assert_eq!(
        s,
        Summary {
            events_delivered: 5,
            requests: 1,
            events_rejected: 0,
            events_not_delivered: 0
        }
    );
}

/// Failed batches are fed back ahead of newer events: with several batches and several
/// failures, the successful requests still carry every event once, in order, and no request
/// ever carries more than `max_event_in_memory` events (GO Feature Flag's batches grow).
#[test]
fn retried_batches_keep_order_and_never_exceed_max_event_in_memory() {
    let server = Endpoint::scripted(
        vec![
            Reply::status(500),
            Reply::status(503),
            Reply::ok(),
            Reply::status(502),
        ],
        Reply::ok(),
    );
    let ws = Workspace::new();
    let events = feature_events(0, 10);
    let config = ws.file_pipeline(
        jsonl(&events),
        &server.url(),
        r#"max_event_in_memory = 3
flush_interval = "100ms"
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms""#,
    );
    let out = run_once(&config);
    out.assert_code(0);

    let reqs = server.requests();
    for r in &reqs {
        let n = r.events().len();
        assert!((1..=3).contains(&n), "request with {n} events:\n{out}");
    }
    assert_eq!(server.delivered(), events);
    let s = out.summary();
    assert_eq!(s.events_delivered, 10, "{out}");
    assert_eq!(
        s.requests as usize,
        reqs.iter().filter(|r| r.is_success()).count()
    );
}

/// A failed batch is not re-sent before `flush_interval` has passed: no hot loop. With
/// `--once` the input ends at once, so this covers the retries after the input has ended.
#[test]
fn failed_batch_is_not_resent_before_flush_interval() {
    assert_no_resend_before_flush_interval(true);
}

/// The same while the input is still open (no `--once`).
#[test]
fn failed_batch_is_not_resent_before_flush_interval_while_running() {
    assert_no_resend_before_flush_interval(false);
}

fn assert_no_resend_before_flush_interval(once: bool) {
    let server = Endpoint::scripted(vec![], Reply::status(500));
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 2)),
        &server.url(),
        r#"flush_interval = "200ms"
retry_initial_backoff = "50ms"
retry_max_backoff = "100ms"
timeout = "1s""#,
    );
    let cmd = if once {
        run_once_cmd(&config)
    } else {
        let mut cmd = flaghook(&["run", "--config"]);
        cmd.arg(&config);
        cmd
    };
    let proc = Proc::spawn(cmd);
    let reqs = server.wait_for_requests(4, WAIT);
    // Killed, not stopped: shutdown has its own tests, and its last attempt may come sooner.
    let stderr = proc.stderr_now();
    drop(proc);
    assert!(reqs.len() >= 4, "only {} requests:\n{stderr}", reqs.len());

    let gaps: Vec<Duration> = reqs.windows(2).map(|p| p[1].at - p[0].at).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(190)),
        "failed batch re-sent before flush_interval (200ms); gaps between attempts: {gaps:?}"
    );
    for r in &reqs {
        assert_eq!(r.events(), feature_events(0, 2));
    }
}

/// A `Retry-After` on a retryable answer is honoured before the batch goes out again, up
/// to `retry_max_backoff` (tests/delivery/hostile_endpoint.rs: a longer one is capped).
#[test]
fn retry_after_is_honoured() {
    let server = Endpoint::scripted(
        vec![Reply::status(503).header("Retry-After", "1")],
        Reply::ok(),
    );
    let ws = Workspace::new();
    let events = feature_events(0, 3);
    let config = ws.file_pipeline(
        jsonl(&events),
        &server.url(),
        r#"flush_interval = "100ms"
retry_initial_backoff = "50ms"
retry_max_backoff = "2s""#,
    );
    let out = run_once(&config);
    out.assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{out}");
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "re-sent {gap:?} after a 503 with Retry-After: 1"
    );
    assert_eq!(server.delivered(), events);
}

/// A request slower than `timeout` counts as failed and its batch is sent again.
#[test]
fn request_timeout_counts_as_failure_and_is_retried() {
    let server = Endpoint::scripted(vec![Reply::ok().delay(Duration::from_secs(5))], Reply::ok());
    let ws = Workspace::new();
    let events = feature_events(0, 3);
    let config = ws.file_pipeline(
        jsonl(&events),
        &server.url(),
        r#"flush_interval = "100ms"
timeout = "300ms"
retry_initial_backoff = "50ms"
retry_max_backoff = "100ms""#,
    );
    let out = run_once(&config);
    out.assert_code(0);

    let reqs = server.requests();
    assert!(
        reqs.len() >= 2,
        "a 5s answer with timeout = 300ms was not retried:\n{out}"
    );
    assert_eq!(reqs[0].events(), events);
    assert_eq!(reqs.last().unwrap().events(), events);
    let s = out.summary();
    assert_eq!(s.events_delivered, 3, "{out}");
    assert_eq!(s.events_not_delivered, 0, "{out}");
}

/// Vector's other classic sink test: a permanent 4xx is not retried and nothing is lost: the
/// events go to the dead letter file and count as rejected (exit 2 with --once). A sink may
/// bisect the batch to find the events the endpoint refuses, but never re-sends a batch as is.
#[test]
fn permanent_4xx_is_dead_lettered_not_retried() {
    let server = Endpoint::scripted(vec![], Reply::status(400));
    let ws = Workspace::new();
    let events = feature_events(0, 3);
    let config = ws.file_pipeline(
        jsonl(&events),
        &server.url(),
        r#"flush_interval = "100ms"
retry_initial_backoff = "50ms""#,
    );
    let out = run_once(&config);
    out.assert_code(2);

    let reqs = server.requests();
    assert!(!reqs.is_empty());
    assert_eq!(reqs[0].events(), events);
    let batches: Vec<Vec<String>> = reqs.iter().map(|r| r.events()).collect();
    for (i, b) in batches.iter().enumerate() {
        assert!(
            !batches[..i].contains(b),
            "a batch refused with 400 was sent again: {b:?}\n{out}"
        );
    }
    assert!(
        reqs.len() < 2 * events.len(),
        "{} requests:\n{out}",
        reqs.len()
    );
    let s = out.summary();
    assert_eq!(
        s,
        Summary {
            events_delivered: 0,
            requests: 0,
            events_rejected: 3,
            events_not_delivered: 0
        },
        "{out}"
    );
    let text = dead_letter_text(&ws, "webhook", &out);
    for i in 0..3 {
        assert!(
            text.contains(&format!("user-{i}")),
            "event {i} missing from the dead letter file:\n{text}"
        );
    }
}

/// One event the endpoint refuses (400) among good ones: the good ones are delivered once, in
/// order; the refused one is dead-lettered, never delivered; nothing is lost.
#[test]
fn poison_event_does_not_block_the_others() {
    let server = Endpoint::with_responder(|req| {
        if req.body_str().contains("\"user-2\"") {
            Reply::status(400)
        } else {
            Reply::ok()
        }
    });
    let ws = Workspace::new();
    let events = feature_events(0, 6);
    let config = ws.file_pipeline(
        jsonl(&events),
        &server.url(),
        r#"flush_interval = "100ms"
retry_initial_backoff = "50ms""#,
    );
    let out = run_once(&config);
    out.assert_code(2);

    let delivered = server.delivered();
    assert!(!delivered.contains(&events[2]), "{out}");
    let in_order: Vec<String> = events
        .iter()
        .filter(|e| delivered.contains(e))
        .cloned()
        .collect();
    assert_eq!(delivered, in_order, "delivered out of order or twice");
    let s = out.summary();
    assert_eq!(s.events_delivered as usize, delivered.len(), "{out}");
    assert_eq!(
        s.events_delivered + s.events_rejected,
        6,
        "every event is delivered or dead-lettered:\n{out}"
    );
    assert_eq!(s.events_not_delivered, 0, "{out}");
    let text = dead_letter_text(&ws, "webhook", &out);
    assert!(text.contains("user-2"), "{text}");
    for e in &delivered {
        let key = e
            .split("\"userKey\":\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(
            !text.contains(&format!("\\\"{key}\\\"")) && !text.contains(&format!("\"{key}\"")),
            "delivered event {key} is also dead-lettered:\n{text}"
        );
    }
}

/// The text of `data_dir/dead-letter/<sink>.jsonl`.
fn dead_letter_text(ws: &Workspace, sink: &str, out: &Output) -> String {
    let path = dead_letter_path(&ws.data_dir(), sink);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no dead letter file {}: {e}\n{out}", path.display()))
}

/// SIGTERM without --once: the source stops, the last partial batch is flushed and delivered
/// (long before flush_interval), and the process exits.
#[test]
fn sigterm_flushes_the_last_partial_batch() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = ws.config(&format!(
        r#"[sources.tcp]
type = "tcp"
address = {addr}

[sinks.webhook]
type = "webhook"
inputs = ["tcp"]
endpoint_url = {url}
flush_interval = "60s"
max_event_in_memory = 100
timeout = "5s"
"#,
        addr = toml_str(&addr),
        url = toml_str(server.url()),
    ));
    let cmd = run_cmd(&config);
    let proc = Proc::spawn(cmd);
    let mut conn = connect(&addr, &proc);
    conn.write_all(jsonl(&feature_events(0, 2)).as_bytes())
        .unwrap();
    // Give the source time to read the lines; nothing may go out before flush_interval.
    std::thread::sleep(Duration::from_millis(700));
    assert!(server.requests().is_empty(), "sent before flush_interval");

    proc.sigterm();
    let out = proc.wait();
    assert!(!out.timed_out, "flaghook did not stop on SIGTERM:\n{out}");
    assert_eq!(server.delivered(), feature_events(0, 2), "{out}");
    drop(conn);
}

/// SIGINT behaves as SIGTERM.
#[test]
fn sigint_flushes_the_last_partial_batch() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let input = ws.write("events.json", jsonl(&feature_events(0, 3)));
    let config = ws.config(&format!(
        r#"[sources.in]
type = "file"
include = [{input}]

[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = {url}
flush_interval = "60s"
"#,
        input = toml_str(&input),
        url = toml_str(server.url()),
    ));
    let cmd = run_cmd(&config);
    let proc = Proc::spawn(cmd);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(server.requests().is_empty(), "sent before flush_interval");
    proc.sigint();
    let out = proc.wait();
    assert!(!out.timed_out, "flaghook did not stop on SIGINT:\n{out}");
    assert_eq!(server.delivered(), feature_events(0, 3), "{out}");
}
