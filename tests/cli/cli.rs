//! The command line: --help/--version, `run --once` exit codes and summary, `validate`,
//! `demo`, `sign`/`verify`, `receive`, log format and secrecy.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::*;
use serde_json::{json, Value};

#[test]
fn version_flag_prints_the_version() {
    let out = run_args(&["--version"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version lacks the version:\n{out}"
    );
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["run", "validate", "demo", "receive", "sign", "verify"] {
        let out = run_args(&[sub, "--help"]);
        assert_eq!(out.code, Some(0), "{sub} --help:\n{out}");
        assert!(
            out.stdout.to_lowercase().contains("usage"),
            "{sub} --help prints no usage:\n{out}"
        );
    }
    let out = run_args(&["--help"]);
    out.assert_code(0);
    for sub in ["run", "validate", "demo", "receive", "sign", "verify"] {
        assert!(
            out.stdout.contains(sub),
            "--help does not list {sub}:\n{out}"
        );
    }
}

#[test]
fn unknown_subcommand_fails() {
    let out = run_args(&["frobnicate"]);
    assert!(!out.timed_out);
    assert_ne!(out.code, Some(0), "{out}");
}

#[test]
fn once_exits_0_when_every_event_is_delivered() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(jsonl(&feature_events(0, 7)), &server.url(), "");
    let out = run_once(&config);
    out.assert_code(0);
    assert_eq!(
        out.summary(),
        Summary {
            events_delivered: 7,
            requests: 1,
            events_rejected: 0,
            events_not_delivered: 0
        }
    );
    assert_eq!(server.delivered(), feature_events(0, 7));
    // The summary is exactly one line, the last one.
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("summary "))
            .count(),
        1,
        "{out}"
    );
}

#[test]
fn once_with_empty_input_exits_0_without_requests() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline("", &server.url(), "");
    let out = run_once(&config);
    out.assert_code(0);
    assert_eq!(
        out.summary(),
        Summary {
            events_delivered: 0,
            requests: 0,
            events_rejected: 0,
            events_not_delivered: 0
        }
    );
    assert!(server.requests().is_empty());
}

#[test]
fn once_exits_2_when_some_lines_are_bad() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let data = format!("{}\nnot json\n{}\n", feature_event(0), feature_event(1));
    let config = ws.file_pipeline(data, &server.url(), "");
    let out = run_once(&config);
    out.assert_code(2);
    assert_eq!(
        out.summary(),
        Summary {
            events_delivered: 2,
            requests: 1,
            events_rejected: 1,
            events_not_delivered: 0
        }
    );
    assert_eq!(server.delivered(), feature_events(0, 2));
}

/// The endpoint never accepts; SIGTERM stops the run: exit 3, events counted as not delivered.
#[test]
fn once_exits_3_when_the_endpoint_never_accepts_and_sigterm_stops_it() {
    let server = Endpoint::scripted(vec![], Reply::status(503));
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 4)),
        &server.url(),
        r#"flush_interval = "100ms"
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms"
timeout = "2s""#,
    );
    let proc = Proc::spawn(run_once_cmd(&config));
    let reqs = server.wait_for_requests(2, WAIT);
    assert!(reqs.len() >= 2, "no retries seen:\n{}", proc.stderr_now());
    proc.sigterm();
    // One last attempt, bounded by `timeout` (2s), then exit.
    let out = proc.wait_timeout(Duration::from_secs(15));
    out.assert_code(3);
    assert_eq!(
        out.summary(),
        Summary {
            events_delivered: 0,
            requests: 0,
            events_rejected: 0,
            events_not_delivered: 4
        }
    );
    for r in server.requests() {
        assert_eq!(r.events(), feature_events(0, 4));
    }
}

/// An unreachable endpoint (nothing listening) is a transport error, retried like a 5xx;
/// SIGTERM then ends the run with exit 3.
#[test]
fn once_exits_3_when_the_endpoint_is_unreachable() {
    let ws = Workspace::new();
    let url = format!("http://127.0.0.1:{}/hook", free_port());
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 2)),
        &url,
        r#"flush_interval = "100ms"
retry_initial_backoff = "50ms"
timeout = "1s""#,
    );
    let proc = Proc::spawn(run_once_cmd(&config));
    // Nothing to observe on a closed port: give the run time to read and fail (a log line
    // mentioning the refusal ends the wait early).
    let _ = proc.wait_stderr("refused", Duration::from_millis(1500));
    std::thread::sleep(Duration::from_millis(300));
    proc.sigterm();
    // One last attempt, bounded by `timeout` (1s), then exit.
    let out = proc.wait_timeout(Duration::from_secs(15));
    out.assert_code(3);
    let s = out.summary();
    assert_eq!(s.events_delivered, 0, "{out}");
    assert_eq!(s.events_not_delivered, 2, "{out}");
}

/// An endpoint that accepts TCP connections and closes them at once (a transport error on
/// every attempt): retried, then SIGTERM ends the run with exit 3.
#[test]
fn once_exits_3_when_the_endpoint_drops_every_connection() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    // Detached: lives as long as the test process.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 3)),
        &url,
        r#"flush_interval = "100ms"
retry_initial_backoff = "50ms"
timeout = "1s""#,
    );
    let proc = Proc::spawn(run_once_cmd(&config));
    let deadline = std::time::Instant::now() + WAIT;
    while accepted.load(std::sync::atomic::Ordering::SeqCst) < 2
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "no retries seen:\n{}",
        proc.stderr_now()
    );
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(15));
    out.assert_code(3);
    assert_eq!(
        out.summary(),
        Summary {
            events_delivered: 0,
            requests: 0,
            events_rejected: 0,
            events_not_delivered: 3
        }
    );
}

#[test]
fn validate_prints_the_topology() {
    let ws = Workspace::new();
    let input = ws.write("events.json", "");
    let config = ws.config(&format!(
        r#"[sources.goff_files]
type = "file"
include = [{input}]

[sources.piped]
type = "stdin"

[sinks.collector]
type = "webhook"
inputs = ["goff_files", "piped"]
endpoint_url = "https://collector.example/hook"
"#,
        input = toml_str(&input),
    ));
    let out = validate(&config);
    out.assert_code(0);
    for name in ["goff_files", "piped", "collector"] {
        assert!(
            out.stdout.contains(name),
            "topology summary lacks {name}:\n{out}"
        );
    }
}

#[test]
fn demo_exits_0_and_reports_a_verified_signature() {
    let mut cmd = flaghook(&["demo"]);
    cmd.current_dir(manifest_dir());
    let out = Proc::spawn(cmd).wait();
    out.assert_code(0);
    assert!(
        out.stdout.contains("verified"),
        "demo does not show the verified signature:\n{out}"
    );
    assert!(
        out.stdout.contains("\"kind\""),
        "demo does not show an event:\n{out}"
    );
}

#[test]
fn sign_file_and_stdin_match_the_known_answer() {
    let ws = Workspace::new();
    let body = ws.write("body.json", kat_body());

    let mut cmd = flaghook(&["sign", "--secret-env", "FH_SIGN_SECRET"]);
    cmd.arg(&body).env("FH_SIGN_SECRET", KAT_SECRET);
    let out = Proc::spawn(cmd).wait();
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), KAT_SIGNATURE, "{out}");

    let mut cmd = flaghook(&["sign", "--secret-env", "FH_SIGN_SECRET"]);
    cmd.env("FH_SIGN_SECRET", KAT_SECRET).stdin(Stdio::piped());
    let mut proc = Proc::spawn(cmd);
    let mut stdin = proc.stdin();
    stdin.write_all(kat_body().as_bytes()).unwrap();
    drop(stdin);
    let out = proc.wait();
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), KAT_SIGNATURE, "{out}");
}

#[test]
fn sign_covers_exact_bytes() {
    let ws = Workspace::new();
    // A trailing newline is part of the signed bytes.
    let bytes = b"{\"meta\":{},\"events\":[]}\n";
    let file = ws.write("body.json", bytes);
    let mut cmd = flaghook(&["sign", "--secret-env", "FH_SIGN_SECRET"]);
    cmd.arg(&file).env("FH_SIGN_SECRET", "other-secret");
    let out = Proc::spawn(cmd).wait();
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), signature("other-secret", bytes), "{out}");
}

#[test]
fn sign_and_verify_round_trip() {
    let ws = Workspace::new();
    let file = ws.write("body.json", jsonl(&feature_events(0, 3)));
    let mut cmd = flaghook(&["sign", "--secret-env", "FH_SECRET"]);
    cmd.arg(&file).env("FH_SECRET", "round-trip");
    let out = Proc::spawn(cmd).wait();
    out.assert_code(0);
    let sig = out.stdout.trim().to_string();
    assert!(sig.starts_with("sha256="), "{out}");

    let verify = |sig: &str, path: &std::path::Path| {
        let mut cmd = flaghook(&["verify", "--secret-env", "FH_SECRET", "--signature", sig]);
        cmd.arg(path).env("FH_SECRET", "round-trip");
        Proc::spawn(cmd).wait()
    };
    let ok = verify(&sig, &file);
    ok.assert_code(0);
    assert_eq!(ok.stdout.trim(), "ok", "{ok}");

    // Wrong signature: one hex digit changed.
    let mut wrong = sig.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let bad = verify(&wrong, &file);
    bad.assert_code(1);
    assert!(bad.stderr.contains("mismatch"), "{bad}");

    // Right signature, tampered body.
    let tampered = ws.write("tampered.json", jsonl(&feature_events(1, 3)));
    verify(&sig, &tampered).assert_code(1);

    // Right signature, wrong secret.
    let mut cmd = flaghook(&["verify", "--secret-env", "FH_SECRET", "--signature", &sig]);
    cmd.arg(&file).env("FH_SECRET", "another");
    Proc::spawn(cmd).wait().assert_code(1);
}

#[test]
fn verify_reads_stdin() {
    let mut cmd = flaghook(&[
        "verify",
        "--secret-env",
        "FH_SECRET",
        "--signature",
        KAT_SIGNATURE,
    ]);
    cmd.env("FH_SECRET", KAT_SECRET).stdin(Stdio::piped());
    let mut proc = Proc::spawn(cmd);
    let mut stdin = proc.stdin();
    stdin.write_all(kat_body().as_bytes()).unwrap();
    drop(stdin);
    proc.wait().assert_code(0);
}

#[test]
fn sign_with_an_unset_secret_variable_fails() {
    let ws = Workspace::new();
    let file = ws.write("body.json", "{}");
    let mut cmd = flaghook(&["sign", "--secret-env", "FH_SURELY_UNSET_SECRET"]);
    cmd.arg(&file).env_remove("FH_SURELY_UNSET_SECRET");
    let out = Proc::spawn(cmd).wait();
    out.assert_code(1);
    assert!(out.stderr.contains("FH_SURELY_UNSET_SECRET"), "{out}");
}

/// Starts `flaghook receive` on a free port; returns the process and its address.
fn start_receiver(secret: Option<&str>) -> (Proc, String) {
    let mut cmd = flaghook(&["receive", "--listen", "127.0.0.1:0"]);
    if let Some(secret) = secret {
        cmd.args(["--secret-env", "FH_RECV_SECRET"])
            .env("FH_RECV_SECRET", secret);
    }
    let proc = Proc::spawn(cmd);
    let stderr = proc
        .wait_stderr("listening on ", WAIT)
        .unwrap_or_else(|| panic!("receiver never listened:\n{}", proc.stderr_now()));
    let addr: String = stderr
        .split("listening on ")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect::<String>()
        .trim_end_matches(['.', ':'])
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "bad listen line:\n{stderr}");
    (proc, addr)
}

/// POSTs `body` with an optional signature by hand; returns the status line.
fn post(addr: &str, body: &str, sig: Option<&str>) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let sig_line = sig
        .map(|v| format!("X-Hub-Signature-256: {v}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST /hook HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{sig_line}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.lines().next().unwrap_or("").to_string()
}

fn next_json_line(proc: &Proc) -> Value {
    let line = proc
        .next_line(WAIT)
        .unwrap_or_else(|| panic!("receiver printed nothing:\n{}", proc.stderr_now()));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

#[test]
fn receive_prints_a_json_line_per_request() {
    let (proc, addr) = start_receiver(Some(KAT_SECRET));
    let body = kat_body();

    let status = post(&addr, &body, Some(KAT_SIGNATURE));
    assert!(status.contains(" 200"), "status line: {status}");
    let line = next_json_line(&proc);
    assert_eq!(line["events"], json!(2));
    assert_eq!(line["meta"], json!({"hostname": "hostname"}));
    assert_eq!(line["signature"], json!("verified"));
    assert_eq!(line["bytes"], json!(body.len()));
    assert_eq!(
        line["first_event"],
        serde_json::from_str::<Value>(KAT_EVENT_1).unwrap()
    );

    let wrong = signature("not-the-secret", body.as_bytes());
    post(&addr, &body, Some(&wrong));
    assert_eq!(next_json_line(&proc)["signature"], json!("invalid"));

    post(&addr, &body, None);
    assert_eq!(next_json_line(&proc)["signature"], json!("missing"));

    post(&addr, r#"{"meta":{},"events":[]}"#, None);
    let line = next_json_line(&proc);
    assert_eq!(line["events"], json!(0));
    assert_eq!(line["first_event"], Value::Null);
}

#[test]
fn receive_without_secret_reports_unchecked() {
    let (proc, addr) = start_receiver(None);
    post(&addr, &kat_body(), Some(KAT_SIGNATURE));
    let line = next_json_line(&proc);
    assert_eq!(line["signature"], json!("unchecked"));
    assert_eq!(line["events"], json!(2));
}

/// End to end: `run --once` with a secret into `receive` with the same secret.
#[test]
fn run_into_receive_verifies() {
    let (receiver, addr) = start_receiver(Some("shared-secret"));
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 5)),
        &format!("http://{addr}/hook"),
        r#"secret = "shared-secret"
max_event_in_memory = 3"#,
    );
    let out = run_once(&config);
    out.assert_code(0);
    let first = next_json_line(&receiver);
    let second = next_json_line(&receiver);
    assert_eq!(first["signature"], json!("verified"));
    assert_eq!(second["signature"], json!("verified"));
    assert_eq!(first["events"], json!(3));
    assert_eq!(second["events"], json!(2));
    assert_eq!(
        first["first_event"],
        serde_json::from_str::<Value>(&feature_event(0)).unwrap()
    );
    assert_eq!(first["meta"]["hostname"], json!(hostname()));
}

#[test]
fn log_format_json_writes_json_lines_to_stderr() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let data = format!("{}\nnot json\n", feature_event(0));
    let config = ws.file_pipeline(data, &server.url(), "");
    let mut cmd = flaghook(&["--log-format", "json", "run", "--config"]);
    cmd.arg(&config).arg("--once");
    let out = Proc::spawn(cmd).wait();
    out.assert_code(2);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(!lines.is_empty(), "no log lines:\n{out}");
    for l in lines {
        let v: Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {l}\n{out}"));
        assert!(v.is_object(), "{l}");
    }
    // stdout still ends with the summary.
    assert_eq!(out.summary().events_rejected, 1);
}

#[test]
fn secret_never_appears_in_logs() {
    let server = Endpoint::scripted(vec![Reply::status(500)], Reply::ok());
    let ws = Workspace::new();
    let secret = "TOPSECRET-7f3a9c-do-not-log";
    let data = format!("{}\nnot json\n", feature_event(0));
    let config = ws.file_pipeline(
        data,
        &server.url(),
        &format!(
            r#"secret = "{secret}"
flush_interval = "100ms"
retry_initial_backoff = "50ms""#
        ),
    );
    let mut cmd = flaghook(&["--log-level", "trace", "run", "--config"]);
    cmd.arg(&config).arg("--once").env("RUST_LOG", "trace");
    let out = Proc::spawn(cmd).wait();
    out.assert_code(2);
    assert!(!out.stderr.contains(secret), "secret in stderr");
    assert!(!out.stdout.contains(secret), "secret in stdout");

    // Nor in what validate prints.
    let out = validate(&config);
    out.assert_code(0);
    assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret));
}

#[test]
fn log_level_flag_is_accepted_after_the_subcommand() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(jsonl(&[feature_event(0)]), &server.url(), "");
    let mut cmd = flaghook(&["run", "--config"]);
    cmd.arg(&config)
        .args(["--once", "--log-level", "debug", "--log-format", "text"]);
    let out = Proc::spawn(cmd).wait();
    out.assert_code(0);
    assert_eq!(server.delivered(), vec![feature_event(0)]);
}

/// A `--log-level` that does not parse is an error naming the flag, not silently dropped.
#[test]
fn a_bad_log_level_is_an_error() {
    let config = manifest_dir().join("pipelines/quickstart.toml");
    let out = run_args(&[
        "--log-level",
        "foo=bar=baz",
        "validate",
        "--config",
        config.to_str().unwrap(),
    ]);
    out.assert_code(1);
    assert!(out.stderr.contains("--log-level"), "{out}");
}

/// Regression: `RUST_LOG` misspelt (`warnn`) silenced every line as `--log-level` did, and
/// one that did not parse was dropped without a word. It is often inherited (a shell, a
/// unit written for another program), so it is ignored with a warning that does not show
/// its value (it comes from the environment), and flaghook logs at info.
#[test]
fn a_misspelt_rust_log_is_ignored_with_a_warning_not_silence() {
    let config = manifest_dir().join("pipelines/quickstart.toml");
    let config = config.to_str().unwrap();
    for value in ["warnn", "foo=bar=baz", "s3cretish", "warnn,flaghook=debug"] {
        let mut cmd = flaghook(&["validate", "--config", config]);
        cmd.env("RUST_LOG", value);
        let out = Proc::spawn(cmd).wait();
        out.assert_code(0);
        assert!(
            out.stderr.contains("RUST_LOG is not a level or filter")
                && out.stderr.contains("ignored, logging at info"),
            "{value}:\n{out}"
        );
        assert!(!out.stderr.contains(value), "the value is shown:\n{out}");
    }
    for value in ["WARN", "debug", "flaghook=trace", "info,hyper=warn", ""] {
        let mut cmd = flaghook(&["validate", "--config", config]);
        cmd.env("RUST_LOG", value);
        let out = Proc::spawn(cmd).wait();
        out.assert_code(0);
        assert!(!out.stderr.contains("RUST_LOG"), "{value}:\n{out}");
    }
    // Not silenced: a bad line is still logged.
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline("not json\n", &server.url(), "");
    let mut cmd = flaghook(&["run", "--once", "--config"]);
    cmd.arg(&config).env("RUST_LOG", "warnn");
    let out = Proc::spawn(cmd).wait();
    out.assert_code(2);
    assert!(out.stderr.contains("bad line rejected"), "{out}");
    // --log-level wins over RUST_LOG, and checks each of its directives.
    let mut cmd = flaghook(&[
        "--log-level",
        "info",
        "validate",
        "--config",
        &ws.path("flaghook.toml").to_string_lossy(),
    ]);
    cmd.env("RUST_LOG", "warnn");
    let out = Proc::spawn(cmd).wait();
    out.assert_code(0);
    assert!(!out.stderr.contains("RUST_LOG"), "{out}");
    let out = run_args(&[
        "--log-level",
        "warnn,flaghook=debug",
        "validate",
        "--config",
        &ws.path("flaghook.toml").to_string_lossy(),
    ]);
    out.assert_code(1);
}

/// Regression: a misspelt level (`--log-level warnn`) was taken as a filter for a target
/// of that name, which turned every other line off, warnings and errors included: a run
/// rejecting bad lines logged nothing. A bare word must be a level; a level in any case
/// and filters with `=` still work.
#[test]
fn a_misspelt_log_level_is_an_error_not_silence() {
    let config = manifest_dir().join("pipelines/quickstart.toml");
    let config = config.to_str().unwrap();
    for level in ["warnn", "verbose", "flaghook"] {
        let out = run_args(&["--log-level", level, "validate", "--config", config]);
        out.assert_code(1);
        assert!(
            out.stderr.contains("--log-level") && out.stderr.contains("example: --log-level debug"),
            "{level}:\n{out}"
        );
    }
    for level in ["WARN", "debug", "flaghook=trace", "info,hyper=warn"] {
        let out = run_args(&["--log-level", level, "validate", "--config", config]);
        out.assert_code(0);
    }
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline("not json\n", &server.url(), "");
    let mut cmd = flaghook(&["--log-level", "Warn", "run", "--once", "--config"]);
    cmd.arg(&config);
    let out = Proc::spawn(cmd).wait();
    out.assert_code(2);
    assert!(out.stderr.contains("bad line rejected"), "{out}");
}
