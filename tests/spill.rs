//! Spill: events from a TCP source cannot be read again, so at shutdown those not delivered
//! within `shutdown_timeout` are written to `data_dir/spill/<sink>.jsonl`, and the next
//! start sends them first, then removes the file.

mod dutil;
mod util;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dutil::*;
use util::*;

const SPILLED: u64 = 300;
const LATER: u64 = 100;

fn tcp_pipeline(ws: &Workspace, address: &str, url: &str) -> PathBuf {
    ws.config(&format!(
        r#"[sources.shipper]
type = "tcp"
address = {address}

[sinks.webhook]
type = "webhook"
inputs = ["shipper"]
endpoint_url = {url}
flush_interval = "100ms"
max_event_in_memory = 500
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms"
shutdown_timeout = "1s"
"#,
        address = toml_str(address),
        url = toml_str(url),
    ))
}

fn send(address: &str, proc: &Proc, ids: std::ops::Range<u64>) {
    let mut conn = connect(address, proc);
    conn.write_all(small_lines(ids).as_bytes()).unwrap();
}

/// Ids of the events of each 2xx-answered request, in arrival order.
fn delivered_in_order(hook: &Hook) -> Vec<u64> {
    hook.with(|t| {
        t.bodies
            .iter()
            .filter(|(status, _)| (200..300).contains(status))
            .flat_map(|(_, body)| event_ids(body).0)
            .collect()
    })
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
    let hook = Hook::accepting();
    hook.keep_bodies();
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
