//! `request_concurrency`: several batches in flight, answered out of order. A file's
//! checkpoint advances only over a contiguous prefix of delivered batches, so a kill -9
//! while an early batch keeps failing loses nothing, however many later ones were delivered.

use std::time::Duration;

use crate::harness::*;

const EVENTS: u64 = 40;

#[test]
fn a_failing_early_batch_holds_the_checkpoint_while_later_ones_are_delivered_and_a_kill_loses_nothing(
) {
    // The batch holding event 0 is answered slowly, and always with 503; the rest are
    // delivered. With one request in flight nothing after it would go out.
    let hook = Endpoint::with_responder(|req| match req.ids.contains(&0) {
        true => Reply::status(503).delay(Duration::from_millis(300)),
        false => Reply::ok(),
    });
    let ws = Workspace::new();
    let input = ws.path("flag-variation-0.json");
    write_small_events(&input, 0..EVENTS);
    let config = ws.config(&format!(
        r#"[sources.goff]
type = "file"
include = [{input}]

[sinks.webhook]
type = "webhook"
inputs = ["goff"]
endpoint_url = {url}
max_event_in_memory = 4
request_concurrency = 4
flush_interval = "50ms"
retry_initial_backoff = "100ms"
retry_max_backoff = "100ms"
"#,
        input = toml_str(&input),
        url = toml_str(hook.url()),
    ));

    let proc = Proc::spawn(run_cmd(&config));
    assert!(
        hook.wait_until(WAIT, |t| t.distinct() == EVENTS - 4),
        "every batch but the first delivered beside it:\n{}",
        proc.stderr_now()
    );
    // The first batch is retried (each attempt waits for the checkpoint writes asked
    // before it) and the writer's once-a-second pass has run: any offset acknowledged by
    // the later batches would be on the disk now.
    let first_batch = |reqs: &[Recorded]| reqs.iter().filter(|r| r.ids.contains(&0)).count();
    let retries = first_batch(&hook.requests());
    let reqs = hook.wait_requests(WAIT, |reqs| first_batch(reqs) >= retries + 2);
    assert!(
        first_batch(&reqs) >= retries + 2,
        "the first batch keeps being retried"
    );
    std::thread::sleep(Duration::from_millis(1200));
    let saved = checkpoint_files(&ws.data_dir(), "goff").expect("a checkpoint file");
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(
        saved[0]["offset"], 0,
        "the checkpoint passed the undelivered first batch: {saved:?}"
    );
    proc.sigkill();
    proc.wait();

    hook.set_responder(|_| Reply::ok());
    let out = run_once(&config);
    out.assert_code(0);
    hook.with(|t| {
        assert!(t.has_all(EVENTS), "lost: {:?}", t.missing(EVENTS));
    });
}

/// Regression: with several requests in flight, a stop (SIGTERM, or a reload restarting
/// the pipeline) whose prompt attempt of an early batch failed left that batch in its file
/// at once, although later batches of the same file had been delivered beside it: the
/// checkpoint stayed before them, so the next start sent them all again (a reload with a
/// flaky endpoint duplicated events at every reload). The early batch is now retried
/// within `shutdown_timeout` while a later one was delivered or is in flight.
#[test]
fn a_stop_retries_an_early_failing_batch_rather_than_duplicate_the_later_ones_delivered() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let stopping = Arc::new(AtomicBool::new(false));
    let after_stop = Arc::new(AtomicUsize::new(0));
    let (flag, count) = (stopping.clone(), after_stop.clone());
    // The batch holding event 0 fails until the stop, and once more then; the rest are
    // delivered.
    let hook = Endpoint::with_responder(move |req| {
        if !req.ids.contains(&0) {
            return Reply::ok();
        }
        if !flag.load(Ordering::SeqCst) || count.fetch_add(1, Ordering::SeqCst) == 0 {
            return Reply::status(503).delay(Duration::from_millis(100));
        }
        Reply::ok()
    });
    let ws = Workspace::new();
    let input = ws.path("flag-variation-0.json");
    write_small_events(&input, 0..EVENTS);
    let config = ws.config(&format!(
        r#"[sources.goff]
type = "file"
include = [{input}]

[sinks.webhook]
type = "webhook"
inputs = ["goff"]
endpoint_url = {url}
max_event_in_memory = 4
request_concurrency = 4
flush_interval = "50ms"
retry_initial_backoff = "100ms"
retry_max_backoff = "100ms"
"#,
        input = toml_str(&input),
        url = toml_str(hook.url()),
    ));

    let proc = Proc::spawn(run_cmd(&config));
    assert!(
        hook.wait_until(WAIT, |t| t.distinct() == EVENTS - 4),
        "every batch but the first delivered beside it:\n{}",
        proc.stderr_now()
    );
    stopping.store(true, Ordering::SeqCst);
    proc.sigterm();
    let out = proc.wait();
    out.assert_code(0);
    assert!(
        after_stop.load(Ordering::SeqCst) >= 2,
        "the first batch was not retried after its attempt at the stop failed:\n{}",
        out.stderr
    );

    let out = run_once(&config);
    out.assert_code(0);
    hook.with(|t| {
        assert!(t.has_all(EVENTS), "lost: {:?}", t.missing(EVENTS));
        assert_eq!(
            t.duplicates(),
            0,
            "delivered again after a clean stop: {:?}",
            t.duplicated_ids()
        );
    });
}
