//! Outage: 1 000 000 events wait in files while the endpoint first refuses connections,
//! then answers 503 with `Retry-After`, then recovers. Memory must stay bounded the whole
//! time (the `peak_events_in_memory` counter, and the process's resident memory as an
//! independent check) and everything must be delivered at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

const FILES: u64 = 4;
const PER_FILE: u64 = 250_000;
const EVENTS: u64 = FILES * PER_FILE;
const MAX_EVENT_IN_MEMORY: u64 = 10_000;
const BUFFER_MAX_EVENTS: u64 = 20_000;
/// Requests answered 503 after the endpoint comes up.
const UNAVAILABLE: usize = 3;

#[test]
fn refused_then_503_then_healthy_with_a_million_events_waiting() {
    let ws = Workspace::new();
    for f in 0..FILES {
        let path = ws.path(&format!("flag-variation-{f}.json"));
        write_small_events(&path, f * PER_FILE..(f + 1) * PER_FILE);
    }
    let port = ClosedPort::reserve();
    let config = ws.config(&format!(
        r#"[sources.goff]
type = "file"
include = [{glob}]

[sinks.webhook]
type = "webhook"
inputs = ["goff"]
endpoint_url = {url}
flush_interval = "100ms"
max_event_in_memory = {MAX_EVENT_IN_MEMORY}
buffer_max_events = {BUFFER_MAX_EVENTS}
timeout = "10s"
retry_initial_backoff = "50ms"
retry_max_backoff = "300ms"
"#,
        glob = toml_str(ws.path("flag-variation-*.json")),
        url = toml_str(port.url()),
    ));

    let proc = Proc::spawn(run_once_cmd(&config));
    let rss = sample_rss(proc.pid());

    // Phase 1: connections refused. flaghook must have tried (and read up to its cap).
    assert!(
        proc.wait_stderr("will retry", Duration::from_secs(30))
            .is_some(),
        "no failed delivery logged while the endpoint refused connections:\n{}",
        proc.stderr_now()
    );
    std::thread::sleep(Duration::from_secs(1));

    // Phase 2: the endpoint is up but unavailable, then healthy.
    let hook = Endpoint::on(port.open(), |seen| {
        if seen.index < UNAVAILABLE {
            Reply::status(503).header("Retry-After", "1")
        } else {
            Reply::ok()
        }
    })
    .count_only();
    let out = proc.wait_timeout(Duration::from_secs(120));
    let max_rss_kib = rss.stop();

    out.assert_code(0);
    let peak = out.summary_value("peak_events_in_memory");
    println!(
        "peak_events_in_memory={peak} (cap {BUFFER_MAX_EVENTS}); largest resident memory {} MiB",
        max_rss_kib / 1024
    );
    assert!(
        peak <= BUFFER_MAX_EVENTS,
        "held {peak} events in memory, above buffer_max_events = {BUFFER_MAX_EVENTS}:\n{out}"
    );
    assert!(peak > 0, "the in-memory counter never moved:\n{out}");
    // The input is 1M events (~66 MB on disk, ~135 MB once encoded); bounded, flaghook
    // holds 20 000 of them. A generous bound that unbounded buffering cannot meet.
    assert!(
        max_rss_kib < 120 * 1024,
        "resident memory reached {} MiB while the endpoint was down",
        max_rss_kib / 1024
    );
    let summary = out.summary();
    assert_eq!(summary.events_delivered, EVENTS, "{out}");
    assert_eq!(summary.events_not_delivered, 0, "{out}");
    assert_eq!(summary.events_rejected, 0, "{out}");

    hook.with(|t| {
        let missing = t.missing(EVENTS);
        assert!(
            missing.is_empty(),
            "{} events never arrived (first: {:?})",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        assert_eq!(
            t.duplicates(),
            0,
            "no crash, yet events arrived twice: {:?}",
            &t.duplicated_ids()[..t.duplicated_ids().len().min(10)]
        );
        assert_eq!(t.failed_requests, UNAVAILABLE as u64);
        assert!(t.max_batch as u64 <= MAX_EVENT_IN_MEMORY);
    });
}

/// Samples a process's resident memory every 50 ms until stopped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn sample_rss(pid: u32) -> RssSampler {
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicU64::new(0));
    let (s, m) = (stop.clone(), max.clone());
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Some(kib) = rss_kib(pid) {
                m.fetch_max(kib, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    RssSampler {
        stop,
        max,
        thread: Some(thread),
    }
}

impl RssSampler {
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
