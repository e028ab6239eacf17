//! Bad input lines: every kind is counted and skipped, good lines around them all arrive, and
//! nothing crashes or stalls a pipeline.

use std::io::Write;

use crate::harness::*;

/// Every kind of bad line from the issue, each between good events.
fn bad_lines() -> Vec<(&'static str, Vec<u8>)> {
    let long_event = format!(
        r#"{{"kind":"feature","userKey":"long","creationDate":1700000000,"key":"k","variation":"v","value":"{}","default":false,"version":"","source":"SERVER"}}"#,
        "x".repeat(5000)
    );
    vec![
        (
            "invalid UTF-8",
            b"{\"kind\":\"feature\",\"userKey\":\"\xff\xfe\",\"creationDate\":1,\"key\":\"k\"}".to_vec(),
        ),
        ("invalid UTF-8 garbage", vec![0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1]),
        ("not JSON", b"this is not json".to_vec()),
        ("truncated JSON", br#"{"kind":"feature","key":"#.to_vec()),
        ("JSON array", b"[1,2,3]".to_vec()),
        ("JSON number", b"42".to_vec()),
        ("JSON string", br#""a string""#.to_vec()),
        ("JSON null", b"null".to_vec()),
        (
            "missing key",
            br#"{"kind":"feature","userKey":"u","creationDate":1700000000,"variation":"v","value":1,"default":false,"version":"","source":"SERVER"}"#.to_vec(),
        ),
        (
            "missing userKey",
            br#"{"kind":"feature","key":"k","creationDate":1700000000,"variation":"v","value":1,"default":false,"version":"","source":"SERVER"}"#.to_vec(),
        ),
        (
            "missing kind",
            br#"{"userKey":"u","key":"k","creationDate":1700000000}"#.to_vec(),
        ),
        (
            "unknown kind",
            br#"{"kind":"something","userKey":"u","key":"k","creationDate":1700000000}"#.to_vec(),
        ),
        (
            "creationDate as string",
            br#"{"kind":"feature","userKey":"u","key":"k","creationDate":"1617970547","variation":"v","value":1,"default":false,"version":"","source":"SERVER"}"#.to_vec(),
        ),
        (
            "creationDate as float",
            br#"{"kind":"feature","userKey":"u","key":"k","creationDate":1617970547.5,"variation":"v","value":1,"default":false,"version":"","source":"SERVER"}"#.to_vec(),
        ),
        (
            "envelope whose message is not JSON",
            br#"{"host":"h","message":"plain text log line","source_type":"socket"}"#.to_vec(),
        ),
        ("line longer than max_line_bytes", long_event.into_bytes()),
    ]
}

/// Bad lines interleaved with good events: `good[i]` precedes `bad[i]`, one good event last.
fn mixed_input() -> (Vec<u8>, Vec<String>, usize) {
    let bad = bad_lines();
    let good = feature_events(0, bad.len() + 1);
    let mut data = Vec::new();
    for (i, (_, line)) in bad.iter().enumerate() {
        data.extend_from_slice(good[i].as_bytes());
        data.push(b'\n');
        data.extend_from_slice(line);
        data.push(b'\n');
    }
    data.extend_from_slice(good[bad.len()].as_bytes());
    data.push(b'\n');
    (data, good, bad.len())
}

#[test]
fn bad_lines_of_every_kind_are_counted_and_good_ones_delivered() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let (data, good, n_bad) = mixed_input();
    let input = ws.write("events.json", &data);
    let config = ws.config(&format!(
        r#"[sources.in]
type = "file"
include = [{input}]
max_line_bytes = 1024

[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = {url}
"#,
        input = toml_str(&input),
        url = toml_str(server.url()),
    ));
    let out = run_once(&config);
    out.assert_code(2);

    assert_eq!(server.delivered(), good, "{out}");
    let s = out.summary();
    assert_eq!(
        s,
        Summary {
            events_delivered: good.len() as u64,
            requests: 1,
            events_rejected: n_bad as u64,
            events_not_delivered: 0
        },
        "{out}"
    );
}

/// Each kind of bad line on its own is rejected (so the mixed test cannot pass by a count that
/// happens to add up).
#[test]
fn each_bad_line_kind_alone_is_rejected() {
    let server = Endpoint::start();
    for (what, line) in bad_lines() {
        let ws = Workspace::new();
        let mut data = line.clone();
        data.push(b'\n');
        data.extend_from_slice(jsonl(&[feature_event(7)]).as_bytes());
        let input = ws.write("events.json", &data);
        let config = ws.config(&format!(
            r#"[sources.in]
type = "file"
include = [{input}]
max_line_bytes = 1024

[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = {url}
"#,
            input = toml_str(&input),
            url = toml_str(server.url()),
        ));
        let before = server.delivered().len();
        let out = run_once(&config);
        assert!(!out.timed_out, "{what}: {out}");
        assert_eq!(out.code, Some(2), "{what}: expected exit 2\n{out}");
        let s = out.summary();
        assert_eq!(s.events_rejected, 1, "{what}: {out}");
        assert_eq!(s.events_delivered, 1, "{what}: {out}");
        let delivered = server.delivered();
        assert_eq!(delivered[before..], [feature_event(7)], "{what}: {out}");
    }
}

/// The same mix over TCP, with a very long line (8 MiB against max_line_bytes = 1024): the
/// connection goes on, later good lines arrive.
#[test]
fn bad_lines_over_tcp_do_not_stall_the_connection() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = ws.config(&format!(
        r#"[sources.tcp]
type = "tcp"
address = {addr}
max_line_bytes = 1024

[sinks.webhook]
type = "webhook"
inputs = ["tcp"]
endpoint_url = {url}
flush_interval = "200ms"
"#,
        addr = toml_str(&addr),
        url = toml_str(server.url()),
    ));
    let (mut data, mut good, n_bad) = mixed_input();
    // A huge line, then one more good event.
    data.extend_from_slice(b"{\"kind\":\"feature\",\"value\":\"");
    data.extend_from_slice(&vec![b'y'; 8 << 20]);
    data.extend_from_slice(b"\"}\n");
    let last = feature_event(999);
    data.extend_from_slice(format!("{last}\n").as_bytes());
    good.push(last);

    let proc = Proc::spawn(run_once_cmd(&config));
    let mut conn = connect(&addr, &proc);
    for chunk in data.chunks(64 * 1024) {
        conn.write_all(chunk).unwrap();
    }
    drop(conn);
    let out = proc.wait();
    out.assert_code(2);

    assert_eq!(server.delivered(), good, "{out}");
    let s = out.summary();
    assert_eq!(s.events_rejected, n_bad as u64 + 1, "{out}");
    assert_eq!(s.events_delivered, good.len() as u64, "{out}");
}

/// Deterministic random garbage lines between good events never crash or stall the pipeline.
#[test]
fn random_garbage_lines_never_stall_the_pipeline() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // First bytes that can never start valid JSON or be blank.
    let starts = [b'#', b'@', b'!', b'x', 0xff, 0x80, b'}', b']'];
    let good = feature_events(0, 30);
    let mut data = Vec::new();
    let mut n_bad = 0;
    for (i, g) in good.iter().enumerate() {
        data.extend_from_slice(g.as_bytes());
        data.push(b'\n');
        let lines = if i == good.len() - 1 {
            0
        } else {
            1 + next() % 4
        };
        for _ in 0..lines {
            let len = 1 + (next() % 300) as usize;
            data.push(starts[(next() % starts.len() as u64) as usize]);
            for _ in 1..len {
                let b = (next() & 0xff) as u8;
                data.push(if b == b'\n' { b' ' } else { b });
            }
            data.push(b'\n');
            n_bad += 1;
        }
    }
    let config = ws.file_pipeline(&data, &server.url(), "");
    let out = run_once(&config);
    out.assert_code(2);

    assert_eq!(server.delivered(), good, "{out}");
    assert_eq!(out.summary().events_rejected, n_bad, "{out}");
}

/// With --once a partial last line (no final newline) is a line at end of input.
#[test]
fn partial_last_line_is_an_event_at_eof_with_once() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let events = feature_events(0, 3);
    let data = format!("{}\n{}\n{}", events[0], events[1], events[2]);
    let config = ws.file_pipeline(data, &server.url(), "");
    let out = run_once(&config);
    out.assert_code(0);
    assert_eq!(server.delivered(), events);
}

/// With `schema = "any"` a line must still be a JSON object.
#[test]
fn schema_any_rejects_non_objects() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let lines = [
        r#"{"a":1}"#,
        "[1,2]",
        "not json",
        "7",
        r#"{"b":2}"#,
        r#""str""#,
    ];
    let config = ws.file_pipeline(jsonl(&lines), &server.url(), r#"schema = "any""#);
    let out = run_once(&config);
    out.assert_code(2);
    assert_eq!(server.delivered(), vec![r#"{"a":1}"#, r#"{"b":2}"#]);
    assert_eq!(out.summary().events_rejected, 4, "{out}");
}

/// Bad lines on stdin are counted too.
#[test]
fn bad_lines_on_stdin_are_counted() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.config(&format!(
        r#"[sources.piped]
type = "stdin"

[sinks.webhook]
type = "webhook"
inputs = ["piped"]
endpoint_url = {url}
"#,
        url = toml_str(server.url()),
    ));
    let mut cmd = run_once_cmd(&config);
    cmd.stdin(std::process::Stdio::piped());
    let mut proc = Proc::spawn(cmd);
    let mut stdin = proc.stdin();
    let data = format!("{}\nnope\n[]\n{}\n", feature_event(0), feature_event(1));
    stdin.write_all(data.as_bytes()).unwrap();
    drop(stdin);
    let out = proc.wait();
    out.assert_code(2);
    assert_eq!(server.delivered(), feature_events(0, 2));
    assert_eq!(out.summary().events_rejected, 2, "{out}");
}

/// Peak resident memory of a process in bytes (`VmHWM` in /proc/PID/status).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("no VmHWM");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A line longer than `max_line_bytes` is rejected without being buffered whole: a 160 MiB
/// line leaves flaghook's peak memory far below its size, and the next line still arrives.
#[test]
fn overlong_line_is_not_buffered_whole() {
    const LINE: usize = 160 << 20;
    let server = Endpoint::start();
    let ws = Workspace::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = ws.config(&format!(
        r#"[sources.tcp]
type = "tcp"
address = {addr}
max_line_bytes = 1024

[sinks.webhook]
type = "webhook"
inputs = ["tcp"]
endpoint_url = {url}
flush_interval = "100ms"
"#,
        addr = toml_str(&addr),
        url = toml_str(server.url()),
    ));
    let proc = Proc::spawn(run_once_cmd(&config));
    let mut conn = connect(&addr, &proc);
    conn.write_all(jsonl(&[feature_event(0)]).as_bytes())
        .unwrap();
    conn.write_all(br#"{"kind":"feature","value":""#).unwrap();
    let chunk = vec![b'z'; 1 << 20];
    for _ in 0..LINE / chunk.len() {
        conn.write_all(&chunk).unwrap();
    }
    conn.write_all(b"\"}\n").unwrap();
    conn.write_all(jsonl(&[feature_event(1)]).as_bytes())
        .unwrap();
    // Once the line after it is delivered, the long line has been read through.
    let delivered = server.wait_for_delivered(2, WAIT);
    let peak = peak_rss(proc.pid());
    eprintln!("flaghook peak RSS: {} MiB", peak >> 20);
    drop(conn);
    let out = proc.wait();
    out.assert_code(2);
    assert_eq!(delivered, feature_events(0, 2), "{out}");
    assert_eq!(out.summary().events_rejected, 1, "{out}");
    assert!(
        peak < (LINE as u64) / 2,
        "peak memory {} MiB for a {} MiB line: the line was buffered",
        peak >> 20,
        LINE >> 20
    );
}

/// A GO Feature Flag CSV file and a syslog-framed line are dead-lettered with a reason that
/// names the fix (also in the log line), and the good lines around them are delivered.
#[test]
fn csv_and_syslog_lines_are_dead_lettered_with_the_fix() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let csv = ws.write(
        "flag-variation-web-1.csv",
        "feature;anonymousUser;ABCD;1617970547;random-key;Default;YO;false;SERVER\n\
         feature;user;EFGH;1617970701;random-key;Default;YO2;false;SERVER\n",
    );
    let good = feature_events(0, 3);
    let syslog = format!("<14>Nov 29 12:00:00 web-1 goff: {}", feature_event(99));
    let json = ws.write(
        "events.json",
        jsonl(&[&good[0], &good[1], &syslog, &good[2]]),
    );
    let config = ws.config(&format!(
        r#"[sources.in]
type = "file"
include = [{csv}, {json}]

[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = {url}
"#,
        csv = toml_str(&csv),
        json = toml_str(&json),
        url = toml_str(server.url()),
    ));
    let out = run_once(&config);
    out.assert_code(2);

    assert_eq!(server.delivered(), good, "{out}");
    assert_eq!(out.summary().events_rejected, 3, "{out}");
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), 3, "{dead:#?}");
    let csv_fix = "looks like GO Feature Flag's CSV format";
    let syslog_fix = r#"syslog-ng `template("$MSG\n")`"#;
    for (line, fix) in [(1, csv_fix), (2, csv_fix)] {
        let at = format!("{} line {line} ", csv.display());
        let record = dead
            .iter()
            .find(|r| r["location"].as_str().unwrap().starts_with(&at))
            .unwrap_or_else(|| panic!("no dead letter for {at}: {dead:#?}"));
        let reason = record["reason"].as_str().unwrap();
        assert!(reason.contains(fix), "{record}");
        assert!(
            reason.contains("set the exporter's `format` to `json`"),
            "{record}"
        );
    }
    let record = dead
        .iter()
        .find(|r| r["line"] == syslog.as_str())
        .unwrap_or_else(|| panic!("no dead letter for the syslog line: {dead:#?}"));
    assert!(
        record["reason"].as_str().unwrap().contains(syslog_fix),
        "{record}"
    );
    assert!(out.stderr.contains(csv_fix), "{out}");
    assert!(out.stderr.contains(syslog_fix), "{out}");
}

/// Fluent Bit's `tcp` output in its default `Format msgpack`: every piece of the stream (cut
/// at 0x0a bytes, one of them longer than `max_line_bytes`) is dead-lettered with a reason
/// that names `Format json_lines`; JSON lines on another connection are delivered.
#[test]
fn fluent_bit_msgpack_over_tcp_is_dead_lettered_with_the_fix() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = ws.config(&format!(
        r#"[sources.tcp]
type = "tcp"
address = {addr}
max_line_bytes = 1024

[sinks.webhook]
type = "webhook"
inputs = ["tcp"]
endpoint_url = {url}
flush_interval = "100ms"
"#,
        addr = toml_str(&addr),
        url = toml_str(server.url()),
    ));
    // `[[EventTime, {}], {"log": event}]` records, back to back; the nanoseconds of record
    // 3 hold a 0x0a byte, which cuts the stream there. Records 4.. make a piece of about
    // 3 KiB with no 0x0a: longer than max_line_bytes.
    let mut stream = Vec::new();
    for i in 0..15u8 {
        let event = feature_event(i.into());
        let nanos = if i == 3 { 0x0a } else { 0x20 + i };
        stream.extend_from_slice(&[0x92, 0x92, 0xd7, 0x00, 0x67, 0x49, 0x2c, 0x80]);
        stream.extend_from_slice(&[0x01, 0x02, 0x03, nanos, 0x80, 0x81, 0xa3]);
        stream.extend_from_slice(b"log");
        stream.extend_from_slice(&[0xd9, event.len() as u8]);
        stream.extend_from_slice(event.as_bytes());
    }
    assert_eq!(stream.iter().filter(|&&b| b == b'\n').count(), 1);
    stream.push(b'\n');

    let proc = Proc::spawn(run_once_cmd(&config));
    // Both connected before either closes: with --once the source stops once none is open.
    let mut fluent_bit = connect(&addr, &proc);
    let mut json_lines = connect(&addr, &proc);
    fluent_bit.write_all(&stream).unwrap();
    let good = feature_events(100, 2);
    json_lines.write_all(jsonl(&good).as_bytes()).unwrap();
    drop(fluent_bit);
    drop(json_lines);
    let delivered = server.wait_for_delivered(2, WAIT);
    let out = proc.wait();
    out.assert_code(2);

    assert_eq!(delivered, good, "{out}");
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), 2, "{dead:#?}");
    assert_eq!(out.summary().events_rejected, 2, "{out}");
    for record in &dead {
        let reason = record["reason"].as_str().unwrap();
        assert!(
            reason.contains("looks like msgpack from Fluent Bit"),
            "{record}"
        );
        assert!(reason.contains("set `Format json_lines`"), "{record}");
    }
    assert!(
        dead.iter()
            .any(|r| r["truncated_from_bytes"].as_u64() > Some(1024)),
        "{dead:#?}"
    );
    assert!(out.stderr.contains("set `Format json_lines`"), "{out}");
}
