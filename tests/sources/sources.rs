//! Sources: TCP (shipper envelopes, split writes, concurrent connections), stdin and files
//! (globs, tailing, partial lines, read_from).

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::harness::*;

/// A TCP source `tcp` on a free port feeding sink `webhook`; returns (config, address).
fn tcp_pipeline(
    ws: &Workspace,
    url: &str,
    source_extra: &str,
    sink_extra: &str,
) -> (PathBuf, String) {
    ws.tcp_pipeline(
        url,
        source_extra,
        &format!("flush_interval = \"200ms\"\n{sink_extra}"),
    )
}

/// Runs `--once` over a TCP source, sends `data` on one connection, closes it, and returns
/// the output after exit.
fn send_once_over_tcp(config: &Path, addr: &str, data: &[u8]) -> Output {
    let proc = Proc::spawn(run_once_cmd(config));
    let mut conn = connect(addr, &proc);
    conn.write_all(data).unwrap();
    drop(conn);
    proc.wait()
}

/// Vector's socket sink with JSON encoding: the event is a JSON string in `message`, beside
/// Vector's own fields (keys sorted, as Vector writes them).
#[test]
fn vector_envelope_over_tcp() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = tcp_pipeline(&ws, &server.url(), "", "");
    let events = vec![feature_event(0), tracking_event(1), KAT_EVENT_2.to_string()];
    let lines: Vec<String> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                r#"{{"host":"web-1","message":{},"source_type":"socket","timestamp":"2024-05-01T12:00:0{i}.123456Z"}}"#,
                json_string(e)
            )
        })
        .collect();
    let out = send_once_over_tcp(&config, &addr, jsonl(&lines).as_bytes());
    out.assert_code(0);

    assert_eq!(server.delivered(), events);
    assert_eq!(out.summary().events_delivered, 3);
}

/// Fluent Bit's tcp output with json_lines: the event is a JSON string in `log`, with `date`
/// as a float.
#[test]
fn fluent_bit_envelope_over_tcp() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = tcp_pipeline(&ws, &server.url(), "", "");
    let events = vec![feature_event(0), feature_event(1), tracking_event(2)];
    let lines: Vec<String> = events
        .iter()
        .map(|e| format!(r#"{{"date":1714564800.123456,"log":{}}}"#, json_string(e)))
        .collect();
    let out = send_once_over_tcp(&config, &addr, jsonl(&lines).as_bytes());
    out.assert_code(0);

    assert_eq!(server.delivered(), events);
}

/// Envelopes and bare events may be mixed on one connection.
#[test]
fn envelopes_and_bare_events_mix_on_one_connection() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = tcp_pipeline(&ws, &server.url(), "", "");
    let events = feature_events(0, 3);
    let lines = vec![
        events[0].clone(),
        format!(r#"{{"log":{},"date":1.7e9}}"#, json_string(&events[1])),
        format!(
            r#"{{"host":"h","message":{},"source_type":"socket","timestamp":"t"}}"#,
            json_string(&events[2])
        ),
    ];
    let out = send_once_over_tcp(&config, &addr, jsonl(&lines).as_bytes());
    out.assert_code(0);
    assert_eq!(server.delivered(), events);
}

/// A source may name the envelope field explicitly with `field = "payload"`.
#[test]
fn source_field_names_the_envelope_field() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let events = feature_events(0, 3);
    let lines: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                r#"{{"payload":{},"shipper":"custom","ts":1714564800}}"#,
                json_string(e)
            )
        })
        .collect();
    let input = ws.write("events.json", jsonl(&lines));
    let config = ws.config(&format!(
        r#"[sources.in]
type = "file"
include = [{input}]
field = "payload"

[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = {url}
"#,
        input = toml_str(&input),
        url = toml_str(server.url()),
    ));
    let out = run_once(&config);
    out.assert_code(0);
    assert_eq!(server.delivered(), events);
}

/// A line split across TCP writes (even inside a multi-byte UTF-8 character) is one event.
#[test]
fn lines_split_across_tcp_writes() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = tcp_pipeline(&ws, &server.url(), "", "");
    let unicode = r#"{"kind":"feature","contextKind":"user","userKey":"h\u00e9llo-✓-ユーザー","creationDate":1700000000,"key":"flag-é","variation":"on","value":"✓✓✓","default":false,"version":"","source":"SERVER"}"#;
    let events = vec![feature_event(0), unicode.to_string(), feature_event(2)];
    let data = jsonl(&events).into_bytes();

    let proc = Proc::spawn(run_once_cmd(&config));
    let mut conn = connect(&addr, &proc);
    // Cut points: the middle of event 0, the middle of "✓" (3 bytes) in event 1, just before
    // and just after a newline.
    let first_nl = data.iter().position(|&b| b == b'\n').unwrap();
    let check = first_nl + 1 + unicode.find('✓').unwrap() + 1;
    let mut cuts = vec![first_nl / 2, first_nl, first_nl + 1, check, data.len() - 1];
    cuts.sort();
    cuts.dedup();
    let mut start = 0;
    for cut in cuts.into_iter().chain(std::iter::once(data.len())) {
        conn.write_all(&data[start..cut]).unwrap();
        conn.flush().unwrap();
        start = cut;
        std::thread::sleep(Duration::from_millis(150));
    }
    drop(conn);
    let out = proc.wait();
    out.assert_code(0);

    assert_eq!(server.delivered(), events);
    assert_eq!(out.summary().events_rejected, 0, "{out}");
}

/// Two connections at once: every event arrives, each connection's events in its order.
#[test]
fn two_concurrent_connections() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = tcp_pipeline(&ws, &server.url(), "", "");
    let a_events = feature_events(0, 20);
    let b_events = feature_events(1000, 20);

    let proc = Proc::spawn(run_once_cmd(&config));
    let mut a = connect(&addr, &proc);
    let mut b = connect(&addr, &proc);
    for i in 0..20 {
        a.write_all(format!("{}\n", a_events[i]).as_bytes())
            .unwrap();
        b.write_all(format!("{}\n", b_events[i]).as_bytes())
            .unwrap();
        if i % 5 == 4 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Keep both open until everything is delivered, so --once cannot end between them.
    let delivered = server.wait_for_delivered(40, WAIT);
    drop(a);
    drop(b);
    let out = proc.wait();
    out.assert_code(0);

    assert_eq!(delivered.len(), 40, "{out}");
    let from_a: Vec<String> = delivered
        .iter()
        .filter(|e| a_events.contains(e))
        .cloned()
        .collect();
    let from_b: Vec<String> = delivered
        .iter()
        .filter(|e| b_events.contains(e))
        .cloned()
        .collect();
    assert_eq!(from_a, a_events);
    assert_eq!(from_b, b_events);
    assert_eq!(out.summary().events_delivered, 40);
}

/// Connections opened one after another while running are all read.
#[test]
fn tcp_source_accepts_sequential_connections() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = tcp_pipeline(&ws, &server.url(), "", "");
    let mut cmd = flaghook(&["run", "--config"]);
    cmd.arg(&config);
    let proc = Proc::spawn(cmd);
    for i in 0..3 {
        let mut c = connect(&addr, &proc);
        c.write_all(jsonl(&[feature_event(i)]).as_bytes()).unwrap();
        drop(c);
        server.wait_for_delivered(i + 1, WAIT);
    }
    proc.sigterm();
    let out = proc.wait();
    assert!(!out.timed_out, "{out}");
    assert_eq!(server.delivered(), feature_events(0, 3), "{out}");
}

/// A stdin source reads to EOF with --once.
#[test]
fn stdin_source() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.config(&format!(
        r#"[sources.piped]
type = "stdin"

[sinks.webhook]
type = "webhook"
inputs = ["piped"]
endpoint_url = {url}
max_event_in_memory = 4
"#,
        url = toml_str(server.url()),
    ));
    let events = feature_events(0, 9);
    let mut cmd = run_once_cmd(&config);
    cmd.stdin(Stdio::piped());
    let mut proc = Proc::spawn(cmd);
    let mut stdin = proc.stdin();
    let data = jsonl(&events);
    let (first, rest) = data.split_at(data.len() / 2);
    stdin.write_all(first.as_bytes()).unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stdin.write_all(rest.as_bytes()).unwrap();
    drop(stdin);
    let out = proc.wait();
    out.assert_code(0);

    assert_eq!(server.delivered(), events);
    let sizes: Vec<usize> = server.requests().iter().map(|r| r.events().len()).collect();
    assert_eq!(sizes, vec![4, 4, 1]);
    let s = out.summary();
    assert_eq!(s.events_delivered, 9, "{out}");
    assert_eq!(s.requests, 3, "{out}");
}

/// Include globs pick files, exclude globs drop some; each file's events keep their order.
#[test]
fn file_source_include_and_exclude_globs() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let a = feature_events(0, 3);
    let b = feature_events(10, 3);
    let skipped = feature_events(20, 3);
    let other = feature_events(30, 3);
    ws.write("logs/flag-variation-host-1.json", jsonl(&a));
    ws.write("logs/flag-variation-host-2.json", jsonl(&b));
    ws.write("logs/flag-variation-host-3-skip.json", jsonl(&skipped));
    ws.write("logs/other.json", jsonl(&other));
    let config = ws.config(&format!(
        r#"[sources.goff_files]
type = "file"
include = [{inc}]
exclude = [{exc}]
read_from = "beginning"

[sinks.webhook]
type = "webhook"
inputs = ["goff_files"]
endpoint_url = {url}
"#,
        inc = toml_str(ws.path("logs/flag-variation-*.json")),
        exc = toml_str(ws.path("logs/*-skip.json")),
        url = toml_str(server.url()),
    ));
    let out = run_once(&config);
    out.assert_code(0);

    let delivered = server.delivered();
    assert_eq!(delivered.len(), 6, "{out}");
    let of = |set: &[String]| -> Vec<String> {
        delivered
            .iter()
            .filter(|e| set.contains(e))
            .cloned()
            .collect()
    };
    assert_eq!(of(&a), a);
    assert_eq!(of(&b), b);
    assert_eq!(out.summary().events_delivered, 6);
}

/// Without --once a file is tailed: appended lines are delivered, and a partial line is not an
/// event until its newline arrives.
#[test]
fn file_source_tails_appended_lines_and_waits_for_newline() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 2)),
        &server.url(),
        r#"flush_interval = "100ms""#,
    );
    let mut cmd = flaghook(&["run", "--config"]);
    cmd.arg(&config);
    let proc = Proc::spawn(cmd);
    let got = server.wait_for_delivered(2, WAIT);
    assert_eq!(got, feature_events(0, 2), "{}", proc.stderr_now());

    ws.append("events.json", jsonl(&[feature_event(2)]));
    let half = feature_event(3);
    let (h1, h2) = half.split_at(half.len() / 2);
    ws.append("events.json", h1);
    // Longer than flush_interval: a half line sent now would be a broken event.
    std::thread::sleep(Duration::from_millis(600));
    ws.append("events.json", format!("{h2}\n"));
    ws.append("events.json", jsonl(&[feature_event(4)]));

    let got = server.wait_for_delivered(5, WAIT);
    proc.sigterm();
    let out = proc.wait();
    assert!(!out.timed_out, "{out}");
    assert_eq!(got, feature_events(0, 5), "{out}");
}

/// `read_from = "end"` skips what the file held at start and delivers what is appended.
#[test]
fn file_source_read_from_end_skips_existing_lines() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let input = ws.write("events.json", jsonl(&feature_events(0, 3)));
    let config = ws.config(&format!(
        r#"[sources.in]
type = "file"
include = [{input}]
read_from = "end"

[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = {url}
flush_interval = "100ms"
"#,
        input = toml_str(&input),
        url = toml_str(server.url()),
    ));
    let mut cmd = flaghook(&["run", "--config"]);
    cmd.arg(&config);
    let proc = Proc::spawn(cmd);
    // The source logs the file with its offset once it has it open at its end.
    assert!(
        proc.wait_stderr("tailing file", WAIT).is_some(),
        "the source never opened the file:\n{}",
        proc.stderr_now()
    );
    ws.append("events.json", jsonl(&feature_events(3, 2)));
    let got = server.wait_for_delivered(2, WAIT);
    std::thread::sleep(Duration::from_millis(300));
    proc.sigterm();
    let out = proc.wait();
    assert!(!out.timed_out, "{out}");
    assert_eq!(got, feature_events(3, 2), "{out}");
    assert_eq!(server.delivered(), feature_events(3, 2), "{out}");
}

/// A file source and a TCP source feeding one sink: everything from both arrives.
#[test]
fn sink_reads_several_sources() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let file_events = feature_events(0, 3);
    let tcp_events = feature_events(100, 3);
    let input = ws.write("events.json", jsonl(&file_events));
    let addr = format!("127.0.0.1:{}", free_port());
    let config = ws.config(&format!(
        r#"[sources.files]
type = "file"
include = [{input}]

[sources.tcp]
type = "tcp"
address = {addr}

[sinks.webhook]
type = "webhook"
inputs = ["files", "tcp"]
endpoint_url = {url}
flush_interval = "100ms"
"#,
        input = toml_str(&input),
        addr = toml_str(&addr),
        url = toml_str(server.url()),
    ));
    let proc = Proc::spawn(run_once_cmd(&config));
    let mut conn: TcpStream = connect(&addr, &proc);
    conn.write_all(jsonl(&tcp_events).as_bytes()).unwrap();
    let delivered = server.wait_for_delivered(6, WAIT);
    drop(conn);
    let out = proc.wait();
    out.assert_code(0);

    assert_eq!(delivered.len(), 6, "{out}");
    let of = |set: &[String]| -> Vec<String> {
        delivered
            .iter()
            .filter(|e| set.contains(e))
            .cloned()
            .collect()
    };
    assert_eq!(of(&file_events), file_events);
    assert_eq!(of(&tcp_events), tcp_events);
}

/// A file matched twice, by its name and through a symlink (`latest.json` pointing at the
/// current file is common), is read once: every event is delivered once.
#[test]
fn a_file_matched_through_a_symlink_too_is_read_once() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let events = feature_events(0, 5);
    let file = ws.write("logs/a.json", jsonl(&events));
    std::os::unix::fs::symlink(&file, ws.path("logs/latest.json")).unwrap();
    let config = ws.glob_pipeline(
        "logs/*.json",
        "",
        &server.url(),
        "flush_interval = \"50ms\"",
    );
    run_once(&config).assert_code(0);
    let mut got = server.delivered();
    got.sort();
    assert_eq!(got, events, "each event once");
}
