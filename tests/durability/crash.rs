//! Crash loop: the real binary tailing a file of 200 000 events is killed with SIGKILL at
//! random moments and restarted on the same data_dir, while the endpoint sometimes answers
//! 500 and sometimes answers slowly. Every event must arrive at least once, and a kill may
//! cost at most the batch in flight in duplicates (README, "Delivery guarantees").
//!
//! The random choices come from one seed, printed at the start; set `FLAGHOOK_TEST_SEED`
//! to replay a run.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::*;

const EVENTS: u64 = 200_000;
const MAX_EVENT_IN_MEMORY: u64 = 1_000;
const KILLS: u64 = 6;

fn seed() -> u64 {
    std::env::var("FLAGHOOK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// An endpoint that fails one request in eight with a 500 and answers one in six slowly.
fn flaky_endpoint(seed: u64) -> Endpoint {
    let mut rng = StdRng::seed_from_u64(seed);
    Endpoint::with_responder(move |_| {
        let roll: f64 = rng.gen();
        if roll < 0.125 {
            Reply::status(500)
        } else if roll < 0.29 {
            Reply::ok().delay(Duration::from_millis(rng.gen_range(100..400)))
        } else {
            Reply::ok()
        }
    })
    .count_only()
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_resends_at_most_a_batch_per_kill() {
    let seed = seed();
    println!("seed {seed} (FLAGHOOK_TEST_SEED={seed} replays this run)");
    let mut rng = StdRng::seed_from_u64(seed);
    let hook = flaky_endpoint(seed.wrapping_add(1));
    let ws = Workspace::new();
    let input = ws.path("flag-variation-0.json");
    write_small_events(&input, 0..EVENTS);
    let config = ws.config(&format!(
        r#"[sources.goff]
type = "file"
include = [{input}]
poll_interval = "20ms"

[sinks.webhook]
type = "webhook"
inputs = ["goff"]
endpoint_url = {url}
flush_interval = "100ms"
max_event_in_memory = {MAX_EVENT_IN_MEMORY}
timeout = "5s"
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms"
shutdown_timeout = "2s"
"#,
        input = toml_str(&input),
        url = toml_str(hook.url()),
    ));

    for kill in 1..=KILLS {
        let proc = Proc::spawn(run_cmd(&config));
        let after = Duration::from_millis(rng.gen_range(200..2500));
        std::thread::sleep(after);
        proc.sigkill();
        let out = proc.wait_timeout(Duration::from_secs(10));
        assert_eq!(
            out.code, None,
            "flaghook exited by itself before kill {kill}:\n{out}"
        );
        let (distinct, delivered) = hook.with(|t| (t.distinct(), t.delivered));
        println!("kill {kill} after {after:?}: {distinct} distinct events arrived, {delivered} with duplicates");
    }

    let proc = Proc::spawn(run_cmd(&config));
    let complete = hook.wait_until(Duration::from_secs(90), |t| t.has_all(EVENTS));
    let stalled = hook.with(|t| t.missing(EVENTS));
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    assert!(
        out.stdout.contains("summary "),
        "no summary line after SIGTERM:\n{out}"
    );

    assert!(
        complete,
        "{} events had not arrived 90 s into the final run (ids {:?}..={:?}); seed {seed}\n{out}",
        stalled.len(),
        stalled.first(),
        stalled.last()
    );
    hook.with(|t| {
        let missing = t.missing(EVENTS);
        assert!(
            missing.is_empty(),
            "{} events never arrived (first: {:?}); seed {seed}\n{out}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        assert_eq!(t.foreign_delivered, 0, "events that were never written arrived");
        assert_eq!(
            t.counts.len() as u64,
            EVENTS,
            "ids beyond the input arrived"
        );
        let duplicates = t.duplicates();
        println!(
            "{KILLS} kills: {duplicates} duplicate deliveries ({} ids), bound {}; {} requests answered 2xx, {} failed",
            t.duplicated_ids().len(),
            KILLS * MAX_EVENT_IN_MEMORY,
            t.ok_requests,
            t.failed_requests
        );
        assert!(
            duplicates <= KILLS * MAX_EVENT_IN_MEMORY,
            "{duplicates} duplicates after {KILLS} kills: more than one batch of {MAX_EVENT_IN_MEMORY} per kill; seed {seed}"
        );
    });
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert!(dead.is_empty(), "dead letters after a crash loop: {dead:?}");
}
