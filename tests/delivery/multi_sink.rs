//! Two sinks read one file source; one endpoint always answers 503. The healthy sink keeps
//! delivering everything (the failing one's buffer holds the input), but the file's
//! checkpoint waits for both: it does not move past what the failing sink delivered, so
//! once that endpoint recovers, it gets every event.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;

const EVENTS: u64 = 1_000;

/// The saved offset of the only file in the checkpoint of source `goff`.
fn saved_offset(data_dir: &Path) -> Option<u64> {
    let files = checkpoint_files(data_dir, "goff")?;
    assert!(files.len() <= 1, "{files:?}");
    files.first().and_then(|f| f["offset"].as_u64())
}

#[test]
fn a_failing_sink_does_not_stop_the_other_and_holds_the_checkpoint() {
    let good = Endpoint::start();
    let failing = Endpoint::with_responder(|_| Reply::status(503));
    let ws = Workspace::new();
    let input = ws.path("events.json");
    write_small_events(&input, 0..EVENTS);
    let size = std::fs::metadata(&input).unwrap().len();
    let sink = |name: &str, url: String| {
        format!(
            r#"[sinks.{name}]
type = "webhook"
inputs = ["goff"]
endpoint_url = {url}
flush_interval = "100ms"
max_event_in_memory = 100
buffer_max_events = 5000
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms"
shutdown_timeout = "1s"
"#,
            url = toml_str(url)
        )
    };
    let config = ws.config(&format!(
        "[sources.goff]\ntype = \"file\"\ninclude = [{input}]\n\n{}\n{}",
        sink("good", good.url()),
        sink("failing", failing.url()),
        input = toml_str(&input),
    ));

    let proc = Proc::spawn(run_cmd(&config));
    assert!(
        good.wait_until(WAIT, |t| t.has_all(EVENTS)),
        "the healthy sink stalled at {} of {EVENTS} events:\n{}",
        good.with(|t| t.distinct()),
        proc.stderr_now()
    );
    assert!(
        failing.wait_until(WAIT, |t| t.failed_requests >= 3),
        "the failing sink never retried"
    );
    // Checkpoints are written about once a second while something changed: wait for
    // one written after the healthy sink delivered everything.
    let deadline = Instant::now() + Duration::from_secs(10);
    while saved_offset(&ws.data_dir()).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        saved_offset(&ws.data_dir()),
        Some(0),
        "the offset moved past events the failing sink never delivered"
    );

    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    let summary = out.summary();
    assert_eq!(summary.events_delivered, EVENTS, "{out}");
    assert_eq!(summary.events_not_delivered, EVENTS, "{out}");
    assert_eq!(saved_offset(&ws.data_dir()), Some(0), "after shutdown");
    assert_eq!(good.with(|t| t.duplicates()), 0);
    assert_eq!(failing.with(|t| t.delivered), 0);

    // The endpoint recovers: the failing sink gets everything; the healthy one gets it
    // again (at least once, not exactly once), and only now does the offset move.
    failing.set_responder(|_| Reply::ok());
    let out = run_once(&config);
    out.assert_code(0);
    assert_eq!(out.summary().events_delivered, 2 * EVENTS, "{out}");
    failing.with(|t| {
        assert!(
            t.missing(EVENTS).is_empty(),
            "missing {:?}",
            t.missing(EVENTS)
        );
        assert_eq!(t.duplicates(), 0);
    });
    assert_eq!(saved_offset(&ws.data_dir()), Some(size));
}
