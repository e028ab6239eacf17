//! Poison events and oversized batches: an endpoint that rejects one event with a 400 gets
//! every other event, and the rejected one is dead-lettered alone with the status and the
//! start of the response; a 413 splits the batch until it fits; `dead-letter replay`
//! delivers the dead letters once the endpoint accepts them.

use std::path::PathBuf;

use crate::harness::*;

const GOOD: u64 = 200;
/// Positions (after how many good events) of the events the endpoint rejects.
const POISON_AFTER: [u64; 3] = [7, 77, 150];

fn poison_event(n: usize) -> String {
    format!(r#"{{"kind":"feature","key":"k","userKey":"poison-{n}x","creationDate":1700000000}}"#)
}

/// Good events 0..GOOD with the poison events in between, and `extra` lines at the end.
fn input_with_poison(extra: &str) -> String {
    let mut text = String::new();
    for id in 0..GOOD {
        if let Some(n) = POISON_AFTER.iter().position(|&p| p == id) {
            text.push_str(&poison_event(n));
            text.push('\n');
        }
        text.push_str(&small_event(id));
        text.push('\n');
    }
    text + extra
}

/// The response to a body holding a poison event: 400 with a 3 KiB body.
fn rejection() -> Reply {
    Reply::status(400).body(format!("event refused: userKey poison{}", "x".repeat(3000)))
}

fn rejecting_poison() -> Endpoint {
    Endpoint::with_responder(|seen| {
        if seen.contains("\"userKey\":\"poison") {
            rejection()
        } else {
            Reply::ok()
        }
    })
}

fn pipeline(ws: &Workspace, url: &str, input: &str, max_event_in_memory: usize) -> PathBuf {
    ws.file_pipeline(
        input,
        url,
        &format!(
            "flush_interval = \"100ms\"\nmax_event_in_memory = {max_event_in_memory}\nretry_initial_backoff = \"50ms\"\n"
        ),
    )
}

#[test]
fn a_rejected_event_is_dead_lettered_alone_and_the_rest_delivered() {
    let hook = rejecting_poison();
    let ws = Workspace::new();
    let config = pipeline(&ws, &hook.url(), &input_with_poison(""), 50);

    let out = run_once(&config);
    out.assert_code(2);
    let summary = out.summary();
    assert_eq!(summary.events_delivered, GOOD, "{out}");
    assert_eq!(summary.events_rejected, POISON_AFTER.len() as u64, "{out}");
    assert_eq!(summary.events_not_delivered, 0, "{out}");

    hook.with(|t| {
        assert!(t.missing(GOOD).is_empty(), "missing {:?}", t.missing(GOOD));
        assert_eq!(t.duplicates(), 0, "good events sent twice");
        assert_eq!(t.foreign_delivered, 0, "a poison event was accepted?");
    });

    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), POISON_AFTER.len(), "{dead:#?}");
    for (n, record) in dead.iter().enumerate() {
        let line = record["line"].as_str().expect("the event is kept");
        assert!(line.contains(&format!("poison-{n}x")), "{record}");
        assert_eq!(record["sink"], "webhook");
        assert_eq!(record["replayable"], true, "{record}");
        let reason = record["reason"].as_str().unwrap();
        assert!(reason.contains("400"), "no status in the reason: {record}");
        assert!(
            reason.contains("event refused: userKey poison"),
            "no response excerpt in the reason: {record}"
        );
        assert!(
            reason.len() < 1024 + 200,
            "more than the first 1 KiB of the response kept: {} bytes",
            reason.len()
        );
    }
    // Dead letters count as resolved: the offset moved to the end of the file.
    let saved = checkpoint_files(&ws.data_dir(), "in").unwrap();
    let size = std::fs::metadata(ws.path("events.json")).unwrap().len();
    assert_eq!(saved[0]["offset"], size, "{saved:?}");
}

#[test]
fn payload_too_large_splits_the_batch_until_it_fits() {
    const LIMIT: usize = 10;
    let hook = Endpoint::with_responder(|seen| {
        if seen.event_count() > LIMIT {
            Reply::status(413)
        } else {
            Reply::ok()
        }
    });
    let ws = Workspace::new();
    let config = pipeline(&ws, &hook.url(), &small_lines(0..GOOD), 64);

    let out = run_once(&config);
    out.assert_code(0);
    assert_eq!(out.summary().events_delivered, GOOD, "{out}");
    hook.with(|t| {
        assert!(t.failed_requests > 0, "the endpoint never answered 413");
        assert!(t.missing(GOOD).is_empty(), "missing {:?}", t.missing(GOOD));
        assert_eq!(t.duplicates(), 0);
    });
    assert!(dead_letters(&ws.data_dir(), "webhook").is_empty());
}

#[test]
fn replay_delivers_dead_letters_once_the_endpoint_accepts_them() {
    let hook = rejecting_poison();
    let ws = Workspace::new();
    // A bad line too: its dead letter cannot be replayed and must stay.
    let config = pipeline(&ws, &hook.url(), &input_with_poison("}{\n"), 50);
    run_once(&config).assert_code(2);
    assert_eq!(
        dead_letters(&ws.data_dir(), "webhook").len(),
        POISON_AFTER.len() + 1
    );

    let replay = || {
        run_args(&[
            "dead-letter",
            "replay",
            "--config",
            config.to_str().unwrap(),
            "--sink",
            "webhook",
        ])
    };
    // Still rejected: everything stays, with the new reason.
    let out = replay();
    out.assert_code(2);
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), POISON_AFTER.len() + 1, "{dead:#?}\n{out}");
    assert_eq!(hook.with(|t| t.foreign_delivered), 0);

    // The endpoint was fixed.
    hook.set_responder(|_| Reply::ok());
    let out = replay();
    out.assert_code(2);
    assert!(
        out.stdout.contains(&format!(
            "delivered={} rejected=0 skipped=1 remaining=0",
            POISON_AFTER.len()
        )),
        "{out}"
    );
    assert_eq!(
        hook.with(|t| t.foreign_delivered),
        POISON_AFTER.len() as u64
    );
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), 1, "delivered records left the file: {dead:#?}");
    assert_eq!(dead[0]["line"], "}{", "{dead:#?}");

    // Nothing left to deliver: a second replay sends nothing again.
    let out = replay();
    assert!(
        out.stdout
            .contains("records=1 delivered=0 rejected=0 skipped=1 remaining=0"),
        "{out}"
    );
    assert_eq!(
        hook.with(|t| t.foreign_delivered),
        POISON_AFTER.len() as u64
    );
}
