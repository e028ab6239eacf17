//! `dead-letter replay` removes a record only when the endpoint accepted it: records it
//! skips (filtered by `event_types`, undecodable `line_base64`, corrupt lines) stay with a
//! reason, and the printed counts add up to the lines of the file. It sends as the sink
//! does (Retry-After, backoff, bisect), gives up by `retry_max_duration` or SIGINT keeping
//! the records, and refuses to run beside a pipeline on the same data_dir; nor do two
//! pipelines share one data_dir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// A dead letter as the sink writes it for an event the endpoint refused.
fn refused(event: &str) -> Value {
    json!({
        "time": "2026-01-01T00:00:00.000Z",
        "sink": "webhook",
        "reason": "endpoint rejected the event: status 400 Bad Request: no",
        "line": event,
        "replayable": true,
    })
}

/// Writes `lines` (each followed by `\n`) as the dead-letter file of sink `webhook`.
fn write_dead_letters(data_dir: &Path, lines: &[String]) -> PathBuf {
    let path = dead_letter_path(data_dir, "webhook");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    path
}

/// A pipeline whose only use here is its sink `webhook` (the input file is empty).
fn config(ws: &Workspace, url: &str, sink_extra: &str) -> PathBuf {
    ws.file_pipeline(
        "",
        url,
        &format!("retry_initial_backoff = \"50ms\"\nretry_max_backoff = \"100ms\"\n{sink_extra}"),
    )
}

fn replay_cmd(config: &Path) -> std::process::Command {
    let mut cmd = flaghook(&["dead-letter", "replay", "--sink", "webhook", "--config"]);
    cmd.arg(config);
    cmd
}

fn replay(config: &Path) -> Output {
    Proc::spawn(replay_cmd(config)).wait()
}

/// The fields of the `replay ...` line (the last line of stdout); checks that the counts
/// add up to `records`.
#[track_caller]
fn counts(out: &Output) -> BTreeMap<String, String> {
    let line = out.stdout.lines().last().unwrap_or("");
    let Some(rest) = line.strip_prefix("replay ") else {
        panic!("no replay line:\n{out}");
    };
    let fields: BTreeMap<String, String> = rest
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let n = |k: &str| -> u64 {
        fields
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in the replay line:\n{out}"))
    };
    assert_eq!(
        n("delivered") + n("rejected") + n("skipped") + n("remaining"),
        n("records"),
        "{out}"
    );
    fields
}

#[track_caller]
fn assert_counts(out: &Output, expected: &str) {
    let fields = counts(out);
    let shown: Vec<String> = ["records", "delivered", "rejected", "skipped", "remaining"]
        .iter()
        .map(|k| format!("{k}={}", fields[*k]))
        .collect();
    assert_eq!(shown.join(" "), expected, "{out}");
}

#[test]
fn replay_keeps_a_tracking_event_that_event_types_filters_out() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = config(&ws, &server.url(), "event_types = [\"feature\"]");
    let tracking = tracking_event(1);
    let feature = feature_event(2);
    write_dead_letters(
        &ws.data_dir(),
        &[
            refused(&tracking).to_string(),
            refused(&feature).to_string(),
        ],
    );

    let out = replay(&config);
    out.assert_code(2);
    assert_counts(
        &out,
        "records=2 delivered=1 rejected=0 skipped=1 remaining=0",
    );
    assert_eq!(server.delivered(), vec![feature]);
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["line"], tracking.as_str());
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("sinks.webhook.event_types") && reason.contains("[\"feature\"]"),
        "{reason}"
    );
}

#[test]
fn replay_keeps_a_record_whose_line_base64_does_not_decode() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = config(&ws, &server.url(), "");
    let mut bad = refused("");
    bad.as_object_mut().unwrap().remove("line");
    bad["line_base64"] = json!("%%% not base64 %%%");
    let feature = feature_event(3);
    write_dead_letters(
        &ws.data_dir(),
        &[bad.to_string(), refused(&feature).to_string()],
    );

    let out = replay(&config);
    out.assert_code(2);
    assert_counts(
        &out,
        "records=2 delivered=1 rejected=0 skipped=1 remaining=0",
    );
    assert_eq!(server.delivered(), vec![feature]);
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["line_base64"], "%%% not base64 %%%");
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(reason.contains("line_base64"), "{reason}");
}

#[test]
fn a_corrupt_line_is_kept_as_it_is_and_the_other_records_are_replayed() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = config(&ws, &server.url(), "");
    let torn = r#"{"time":"2026-01-01T00:00:00.000Z","sink":"webh"#;
    let events = feature_events(0, 2);
    let path = write_dead_letters(
        &ws.data_dir(),
        &[
            refused(&events[0]).to_string(),
            torn.to_owned(),
            refused(&events[1]).to_string(),
        ],
    );

    let out = replay(&config);
    out.assert_code(2);
    assert_counts(
        &out,
        "records=3 delivered=2 rejected=0 skipped=1 remaining=0",
    );
    assert!(
        out.stderr.contains("line 2") && out.stderr.contains("not a dead-letter record"),
        "no message naming the corrupt line:\n{out}"
    );
    assert_eq!(server.delivered(), events);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{torn}\n"));
}

/// `Retry-After` is honoured up to `retry_max_backoff`, as in the sink.
#[test]
fn replay_honours_retry_after_and_resends_the_batch_not_each_event() {
    let server = Endpoint::scripted(
        vec![Reply::status(503).header("Retry-After", "1")],
        Reply::ok(),
    );
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        "",
        &server.url(),
        "retry_initial_backoff = \"50ms\"\nretry_max_backoff = \"2s\"",
    );
    let events = feature_events(0, 5);
    let records: Vec<String> = events.iter().map(|e| refused(e).to_string()).collect();
    let path = write_dead_letters(&ws.data_dir(), &records);

    let out = replay(&config);
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "one failed request, one retry:\n{out}");
    assert_eq!(requests[1].events(), events);
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "re-sent {gap:?} after a 503 with Retry-After: 1"
    );
    out.assert_code(0);
    assert_counts(
        &out,
        "records=5 delivered=5 rejected=0 skipped=0 remaining=0",
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
}

#[test]
fn replay_bisects_to_the_event_the_endpoint_rejects_and_delivers_the_rest() {
    const GOOD: u64 = 16;
    let hook = Endpoint::with_responder(|seen| {
        if seen.contains("\"userKey\":\"poison\"") {
            Reply::status(400).body("poison refused")
        } else {
            Reply::ok()
        }
    });
    let ws = Workspace::new();
    let config = config(&ws, &hook.url(), "");
    let poison = r#"{"kind":"feature","key":"k","userKey":"poison","creationDate":1700000000}"#;
    let mut records: Vec<String> = (0..GOOD)
        .map(|id| refused(&small_event(id)).to_string())
        .collect();
    records.insert(11, refused(poison).to_string());
    write_dead_letters(&ws.data_dir(), &records);

    let out = replay(&config);
    hook.with(|t| {
        assert!(t.missing(GOOD).is_empty(), "missing {:?}", t.missing(GOOD));
        assert_eq!(t.duplicates(), 0, "good events sent twice");
        assert_eq!(t.foreign_delivered, 0);
        // Halving 17 events down to the poison one: at most 2 requests per level, 5 levels.
        let requests = t.ok_requests + t.failed_requests;
        assert!(
            requests <= 11,
            "{requests} requests: not a bisection\n{out}"
        );
    });
    out.assert_code(2);
    assert_counts(
        &out,
        "records=17 delivered=16 rejected=1 skipped=0 remaining=0",
    );
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["line"], poison);
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("400") && reason.contains("poison refused"),
        "{reason}"
    );
}

#[test]
fn replay_keeps_what_still_fails_after_retry_max_duration() {
    let hook = Endpoint::with_responder(|_| Reply::status(503));
    let ws = Workspace::new();
    let config = config(&ws, &hook.url(), "retry_max_duration = \"300ms\"");
    let records: Vec<String> = (0..3)
        .map(|id| refused(&small_event(id)).to_string())
        .collect();
    write_dead_letters(&ws.data_dir(), &records);

    let out = replay(&config);
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), 3, "{dead:#?}");
    for (id, record) in dead.iter().enumerate() {
        assert_eq!(record["line"], small_event(id as u64));
        let reason = record["reason"].as_str().unwrap();
        assert!(
            reason.contains("still failing after 300ms") && reason.contains("503"),
            "{reason}"
        );
    }
    out.assert_code(3);
    assert_counts(
        &out,
        "records=3 delivered=0 rejected=0 skipped=0 remaining=3",
    );
}

#[test]
fn sigint_stops_a_replay_that_keeps_failing_and_keeps_every_record() {
    let hook = Endpoint::with_responder(|_| Reply::status(503));
    let ws = Workspace::new();
    let config = config(&ws, &hook.url(), "");
    let records: Vec<String> = (0..3)
        .map(|id| refused(&small_event(id)).to_string())
        .collect();
    write_dead_letters(&ws.data_dir(), &records);

    let proc = Proc::spawn(replay_cmd(&config));
    assert!(
        proc.wait_stderr("will retry", WAIT).is_some(),
        "no retry:\n{}",
        proc.stderr_now()
    );
    proc.sigint();
    let out = proc.wait();
    out.assert_code(3);
    assert_counts(
        &out,
        "records=3 delivered=0 rejected=0 skipped=0 remaining=3",
    );
    let dead = dead_letters(&ws.data_dir(), "webhook");
    let lines: Vec<&str> = dead.iter().map(|r| r["line"].as_str().unwrap()).collect();
    assert_eq!(lines, (0..3).map(small_event).collect::<Vec<_>>());
}

/// Starts `run` (continuous) over 3 events and waits until they are delivered: by then it
/// holds the data_dir.
fn running_pipeline(ws: &Workspace, hook: &Endpoint) -> (Proc, PathBuf) {
    let config = ws.file_pipeline(small_lines(0..3), &hook.url(), "flush_interval = \"100ms\"");
    let run = Proc::spawn(run_cmd(&config));
    assert!(
        hook.wait_until(WAIT, |t| t.has_all(3)),
        "the pipeline did not deliver:\n{}",
        run.stderr_now()
    );
    (run, config)
}

#[test]
fn replay_is_refused_while_a_pipeline_uses_the_data_dir() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (run, config) = running_pipeline(&ws, &hook);
    let path = write_dead_letters(&ws.data_dir(), &[refused(&small_event(7)).to_string()]);
    let before = std::fs::read(&path).unwrap();

    let out = replay(&config);
    out.assert_code(1);
    let expected = format!(
        "data_dir {} in use by pid {}",
        ws.data_dir().display(),
        run.pid()
    );
    assert!(
        out.stderr.contains(&expected),
        "expected {expected:?}:\n{out}"
    );
    assert!(out.stderr.contains("stop the pipeline first"), "{out}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file changed");
    assert_eq!(hook.with(|t| t.counts.get(7).copied()), None);

    run.sigterm();
    run.wait().assert_code(0);
    let out = replay(&config);
    out.assert_code(0);
    assert_counts(
        &out,
        "records=1 delivered=1 rejected=0 skipped=0 remaining=0",
    );
}

#[test]
fn a_second_run_on_the_same_data_dir_exits_1_naming_the_first_pid() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (run, config) = running_pipeline(&ws, &hook);
    ws.append("events.json", small_lines(3..5));

    let second = run_once(&config);
    second.assert_code(1);
    let expected = format!(
        "data_dir {} in use by pid {}",
        ws.data_dir().display(),
        run.pid()
    );
    assert!(
        second.stderr.contains(&expected),
        "expected {expected:?}:\n{second}"
    );

    // The lock dies with its process, even killed: the next run starts.
    assert!(hook.wait_until(WAIT, |t| t.has_all(5)));
    run.sigkill();
    assert_eq!(run.wait().code, None, "not killed");
    run_once(&config).assert_code(0);
    hook.with(|t| assert!(t.has_all(5) && t.counts.len() == 5));
}

/// Hostile-input issue: a huge `Retry-After` stalled the sink; replay shares its policy, so
/// it too waits at most `retry_max_backoff` (here 100ms) and delivers.
#[test]
fn replay_waits_at_most_retry_max_backoff_after_a_huge_retry_after() {
    let server = Endpoint::scripted(
        vec![Reply::status(503).header("Retry-After", "9223372036854775807")],
        Reply::ok(),
    );
    let ws = Workspace::new();
    let config = config(&ws, &server.url(), "");
    let events = feature_events(0, 3);
    let records: Vec<String> = events.iter().map(|e| refused(e).to_string()).collect();
    write_dead_letters(&ws.data_dir(), &records);

    let out = replay(&config);
    out.assert_code(0);
    assert_counts(
        &out,
        "records=3 delivered=3 rejected=0 skipped=0 remaining=0",
    );
    assert_eq!(server.delivered(), events);
}
