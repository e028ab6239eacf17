//! The topology's wiring: each sink reads a source once, through a handle the source gave
//! it, and no task fails unnoticed.

use std::process::Command;

use crate::harness::*;

/// Three feature events, one per line, numbered from `start`.
fn events_from(start: usize) -> String {
    jsonl(&feature_events(start, 3))
}

fn events() -> String {
    events_from(0)
}

#[test]
fn an_input_named_twice_is_a_config_error() {
    let ws = Workspace::new();
    let input = ws.write("events.json", events());
    let config = ws.config(&format!(
        r#"[sources.files]
type = "file"
include = [{input}]

[sinks.hook]
type = "webhook"
inputs = ["files", "files"]
endpoint_url = "http://127.0.0.1:9/hook"
"#,
        input = toml_str(&input),
    ));
    for out in [validate(&config), run_once(&config)] {
        out.assert_code(1);
        assert!(
            out.stderr.contains("`sinks.hook.inputs`") && out.stderr.contains("twice"),
            "the error does not name the key and the mistake:\n{out}"
        );
        assert!(
            out.stderr.contains("inputs = [\"files\"]"),
            "no example:\n{out}"
        );
        assert!(!out.stdout.contains("summary"), "{out}");
    }
}

/// Two sinks on one file source and one sink on two file sources: every sink gets every
/// event once, and each checkpoint ends at the end of its file.
#[test]
fn sinks_sharing_sources_each_get_every_event_once() {
    let a = Endpoint::start();
    let b = Endpoint::start();
    let ws = Workspace::new();
    let one = ws.write("one.json", events());
    let two = ws.write("two.json", events_from(3));
    let config = ws.config(&format!(
        r#"[sources.one]
type = "file"
include = [{one}]

[sources.two]
type = "file"
include = [{two}]

[sinks.both]
type = "webhook"
inputs = ["two", "one"]
endpoint_url = {a}
flush_interval = "50ms"

[sinks.first]
type = "webhook"
inputs = ["one"]
endpoint_url = {b}
flush_interval = "50ms"
"#,
        one = toml_str(&one),
        two = toml_str(&two),
        a = toml_str(a.url()),
        b = toml_str(b.url()),
    ));
    let out = run_once(&config);
    out.assert_code(0);
    let mut got = a.delivered();
    got.sort();
    assert_eq!(got.len(), 6, "{got:?}");
    got.dedup();
    assert_eq!(got.len(), 6, "duplicates: {got:?}");
    assert_eq!(b.delivered().len(), 3);
    for (source, file) in [("one", &one), ("two", &two)] {
        let text =
            std::fs::read_to_string(ws.data_dir().join(format!("checkpoints/{source}.json")))
                .unwrap();
        let saved: serde_json::Value = serde_json::from_str(&text).unwrap();
        let size = std::fs::metadata(file).unwrap().len();
        assert_eq!(saved["files"][0]["offset"], size, "{source}: {text}");
    }
}

/// A task that panics ends the run with exit 1 and a message naming it; there is no green
/// summary. (`FLAGHOOK_FAILPOINT` makes a debug build panic at the named point.)
#[test]
fn a_panicking_task_ends_the_run_with_an_error() {
    for (failpoint, task) in [("sink-handle", "sink `webhook`"), ("source-send", "source")] {
        let server = Endpoint::start();
        let ws = Workspace::new();
        let config = ws.file_pipeline(events(), &server.url(), "flush_interval = \"50ms\"");
        let mut cmd: Command = run_once_cmd(&config);
        cmd.env("FLAGHOOK_FAILPOINT", failpoint);
        let out = Proc::spawn(cmd).wait();
        out.assert_code(1);
        assert!(
            out.stderr.contains(task) && out.stderr.contains("panicked"),
            "{failpoint}: the error does not name the task:\n{out}"
        );
        assert!(!out.stdout.contains("summary"), "{failpoint}: {out}");
    }
}

/// A sink that fails while its source cannot end by itself (TCP, no `--once`) still ends
/// the run at once, with exit 1: the failure is seen while the sources run.
#[test]
fn a_sink_that_panics_beside_a_tcp_source_ends_the_run() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = ws.tcp_pipeline(&server.url(), "", "flush_interval = \"50ms\"");
    let mut cmd = run_cmd(&config);
    cmd.env("FLAGHOOK_FAILPOINT", "sink-handle");
    let proc = Proc::spawn(cmd);
    let mut conn = connect(&addr, &proc);
    std::io::Write::write_all(&mut conn, events().as_bytes()).unwrap();
    let out = proc.wait_timeout(std::time::Duration::from_secs(10));
    assert!(
        !out.timed_out,
        "the run did not end after the sink failed:\n{out}"
    );
    out.assert_code(1);
    assert!(
        out.stderr.contains("sink `webhook`") && out.stderr.contains("panicked"),
        "{out}"
    );
}
