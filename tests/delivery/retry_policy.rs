//! The rest of the delivery promise: 401/403/404 are retried (an operator can fix a token
//! or a URL without losing data), `retry_max_duration` turns endless failure into dead
//! letters, and an unusable data_dir stops flaghook at start-up with a message that says so.

use crate::harness::*;

fn pipeline(ws: &Workspace, url: &str, events: u64, extra: &str) -> std::path::PathBuf {
    ws.file_pipeline(
        small_lines(0..events),
        url,
        &format!(
            "flush_interval = \"100ms\"\nmax_event_in_memory = 10\nretry_initial_backoff = \"50ms\"\nretry_max_backoff = \"100ms\"\n{extra}"
        ),
    )
}

#[test]
fn auth_and_not_found_answers_are_retried_with_a_warning_naming_the_status() {
    let hook = Endpoint::with_responder(|seen| match seen.index {
        0 => Reply::status(401),
        1 => Reply::status(403),
        2 => Reply::status(404),
        _ => Reply::ok(),
    });
    let ws = Workspace::new();
    let config = pipeline(&ws, &hook.url(), 25, "");

    let out = run_once(&config);
    out.assert_code(0);
    assert_eq!(out.summary().events_delivered, 25, "{out}");
    for status in ["401", "403", "404"] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains("WARN") && l.contains(status)),
            "no warning naming {status}:\n{out}"
        );
    }
    hook.with(|t| {
        assert!(t.missing(25).is_empty(), "missing {:?}", t.missing(25));
        assert_eq!(t.duplicates(), 0);
        assert_eq!(t.failed_requests, 3);
    });
    assert!(dead_letters(&ws.data_dir(), "webhook").is_empty());
}

#[test]
fn retry_max_duration_dead_letters_what_keeps_failing() {
    let hook = Endpoint::with_responder(|_| Reply::status(503));
    let ws = Workspace::new();
    let config = pipeline(&ws, &hook.url(), 25, "retry_max_duration = \"300ms\"\n");

    let out = run_once(&config);
    out.assert_code(2);
    let summary = out.summary();
    assert_eq!(summary.events_delivered, 0, "{out}");
    assert_eq!(summary.events_rejected, 25, "{out}");
    assert_eq!(summary.events_not_delivered, 0, "{out}");
    let dead = dead_letters(&ws.data_dir(), "webhook");
    let (ids, _) = event_ids(
        dead.iter()
            .map(|r| r["line"].as_str().unwrap_or(""))
            .collect::<String>()
            .as_bytes(),
    );
    let mut ids = ids;
    ids.sort_unstable();
    assert_eq!(ids, (0..25).collect::<Vec<_>>(), "{dead:#?}");
    for record in &dead {
        assert!(
            record["reason"].as_str().unwrap().contains("503"),
            "{record}"
        );
        assert_eq!(record["replayable"], true, "{record}");
    }
    // Dead-lettered counts as resolved: a second run sends nothing again.
    let again = run_once(&config);
    again.assert_code(0);
    assert_eq!(again.summary(), summary_nothing(), "{again}");
}

fn summary_nothing() -> Summary {
    Summary {
        events_delivered: 0,
        requests: 0,
        events_rejected: 0,
        events_not_delivered: 0,
    }
}

#[test]
fn an_unusable_data_dir_is_a_start_up_error_that_says_so() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    ws.write("not-a-folder", "a regular file");
    let input = ws.write("events.json", small_lines(0..3));
    let data_dir = ws.path("not-a-folder/data");
    let config = ws.write(
        "flaghook.toml",
        format!(
            "data_dir = {}\n\n[sources.in]\ntype = \"file\"\ninclude = [{}]\n\n[sinks.webhook]\ntype = \"webhook\"\ninputs = [\"in\"]\nendpoint_url = {}\n",
            toml_str(&data_dir),
            toml_str(&input),
            toml_str(hook.url())
        ),
    );

    let out = run_once(&config);
    out.assert_code(1);
    assert!(
        out.stderr.contains("data_dir") && out.stderr.contains("not writable"),
        "{out}"
    );
    assert_eq!(hook.with(|t| t.ok_requests + t.failed_requests), 0);
}
