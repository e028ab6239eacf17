//! `verify` and `receive` with Standard Webhooks signatures (`--scheme standard-webhooks`,
//! a timestamp tolerance that refuses replays) and compressed bodies. The signatures here
//! are made by the test itself (HMAC-SHA256 over `id.timestamp.body`); flaghook's own
//! requests are checked with the reference libraries in tests/delivery/signatures.rs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use crate::harness::*;

const WHSEC: &str = "whsec_ZmxhZ2hvb2sgc3RhbmRhcmQtd2ViaG9va3Mga2V5ISE=";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with WHSEC's key.
fn standard_signature(id: &str, timestamp: u64, body: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(WHSEC.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
}

fn verify(ws: &Workspace, secret: &str, args: &[&str]) -> Output {
    let body = ws.write("body.json", kat_body());
    let mut cmd = flaghook(&[
        "verify",
        "--secret-env",
        "FH_SWH",
        "--scheme",
        "standard-webhooks",
    ]);
    cmd.args(args).arg(&body).env("FH_SWH", secret);
    Proc::spawn(cmd).wait()
}

#[test]
fn verify_checks_a_standard_webhooks_signature_and_its_timestamp() {
    let ws = Workspace::new();
    let body = kat_body();
    let at = now();
    let sig = standard_signature("msg_1", at, body.as_bytes());
    let ts = at.to_string();
    let ok = verify(
        &ws,
        WHSEC,
        &["--id", "msg_1", "--timestamp", &ts, "--signature", &sig],
    );
    ok.assert_code(0);
    assert_eq!(ok.stdout.trim(), "ok", "{ok}");

    // The same request, captured and sent again 400 s later: outside the 5 minutes.
    let old = at - 400;
    let replayed = standard_signature("msg_1", old, body.as_bytes());
    let args = [
        "--id",
        "msg_1",
        "--timestamp",
        &old.to_string(),
        "--signature",
        &replayed,
    ];
    let out = verify(&ws, WHSEC, &args);
    out.assert_code(1);
    // 400 s old when it was signed; a second or more may pass before it is checked.
    let age = out
        .stderr
        .split("webhook-timestamp is ")
        .nth(1)
        .and_then(|rest| rest.split("s old, outside the tolerance").next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(age.is_some_and(|s| (400..430).contains(&s)), "{out}");
    let wider = [&args[..], &["--tolerance", "10m"]].concat();
    verify(&ws, WHSEC, &wider).assert_code(0);

    let out = verify(
        &ws,
        WHSEC,
        &["--id", "msg_2", "--timestamp", &ts, "--signature", &sig],
    );
    out.assert_code(1);
    assert!(out.stderr.contains("does not match"), "{out}");

    let out = verify(
        &ws,
        "hunter2",
        &["--id", "msg_1", "--timestamp", &ts, "--signature", &sig],
    );
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("`FH_SWH` (--secret-env) does not start with `whsec_`"),
        "{out}"
    );
    assert!(!out.stderr.contains("hunter2"), "{out}");

    let out = verify(&ws, WHSEC, &["--signature", &sig]);
    out.assert_code(2);
    assert!(out.stderr.contains("--id"), "{out}");
}

fn start_receiver(args: &[&str], secret: &str) -> (Proc, String) {
    let mut cmd = flaghook(&[
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--secret-env",
        "FH_RECV",
    ]);
    cmd.args(args).env("FH_RECV", secret);
    let proc = Proc::spawn(cmd);
    let line = proc
        .wait_stderr("listening on ", WAIT)
        .unwrap_or_else(|| panic!("receiver never listened:\n{}", proc.stderr_now()));
    let addr = line.split("listening on ").nth(1).unwrap();
    let addr = addr.split_whitespace().next().unwrap().to_owned();
    (proc, addr)
}

/// POSTs `body` with `headers`; returns the status line.
fn post(addr: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!(
        "POST /hook HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.lines().next().unwrap_or("").to_owned()
}

fn report(proc: &Proc) -> Value {
    let line = proc.next_line(WAIT).expect("a report line");
    serde_json::from_str(&line).unwrap()
}

#[test]
fn receive_refuses_replayed_forged_and_unsigned_standard_webhooks_requests() {
    let (proc, addr) = start_receiver(
        &["--scheme", "standard-webhooks", "--tolerance", "1m"],
        WHSEC,
    );
    let body = kat_body();
    let send = |id: &str, at: u64, sig: &str| {
        let ts = at.to_string();
        let headers = [
            ("webhook-id", id),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", sig),
        ];
        post(&addr, &headers, body.as_bytes())
    };
    let at = now();
    let sig = standard_signature("msg_a", at, body.as_bytes());
    assert!(send("msg_a", at, &sig).contains(" 200"));
    let got = report(&proc);
    assert_eq!(
        (&got["signature"], &got["webhook_id"], &got["events"]),
        (&json!("verified"), &json!("msg_a"), &json!(2)),
        "{got}"
    );

    // Captured two minutes ago and sent again: outside --tolerance 1m.
    let old = at - 120;
    let replayed = standard_signature("msg_a", old, body.as_bytes());
    assert!(send("msg_a", old, &replayed).contains(" 401"));
    let got = report(&proc);
    assert_eq!(got["status"], 401, "{got}");
    assert_eq!(got["signature"], "stale", "{got}");
    assert!(
        got["signature_error"]
            .as_str()
            .unwrap()
            .contains("outside the tolerance"),
        "{got}"
    );

    assert!(
        send("msg_b", at, &sig).contains(" 401"),
        "another id under the same signature"
    );
    assert_eq!(report(&proc)["signature"], "invalid");
    assert!(post(&addr, &[], body.as_bytes()).contains(" 401"));
    assert_eq!(report(&proc)["signature"], "missing");
}

#[test]
fn receive_decodes_gzip_and_zstd_and_refuses_other_encodings() {
    let (proc, addr) = start_receiver(&[], "plain-secret");
    let body = kat_body();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let gzip = gz.finish().unwrap();
    let zstd = zstd::encode_all(body.as_bytes(), 3).unwrap();
    for (encoding, sent) in [("gzip", &gzip), ("zstd", &zstd)] {
        let sig = signature("plain-secret", sent);
        let status = post(
            &addr,
            &[
                ("Content-Encoding", encoding),
                ("X-Hub-Signature-256", &sig),
            ],
            sent,
        );
        assert!(status.contains(" 200"), "{encoding}: {status}");
        let got = report(&proc);
        assert_eq!(got["signature"], "verified", "{got}");
        assert_eq!(got["encoding"], encoding, "{got}");
        assert_eq!(got["events"], 2, "{got}");
        assert_eq!(got["bytes"], sent.len(), "{got}");
        assert_eq!(got["decoded_bytes"], body.len(), "{got}");
    }
    // A signature over the decoded body is not the signature of what was sent.
    let sig = signature("plain-secret", body.as_bytes());
    assert!(post(
        &addr,
        &[("Content-Encoding", "gzip"), ("X-Hub-Signature-256", &sig)],
        &gzip
    )
    .contains(" 401"));
    assert_eq!(report(&proc)["signature"], "invalid");

    assert!(post(&addr, &[("Content-Encoding", "br")], b"x").contains(" 415"));
    assert!(report(&proc)["error"]
        .as_str()
        .unwrap()
        .contains("\"br\" is not supported"));
    assert!(post(&addr, &[("Content-Encoding", "gzip")], b"not gzip").contains(" 400"));
    assert!(report(&proc)["error"]
        .as_str()
        .unwrap()
        .contains("not valid gzip"));
}

/// A compressed body counts against --max-body once decoded too: a small bomb is refused.
#[test]
fn receive_refuses_a_body_that_decodes_past_max_body() {
    let (proc, addr) = start_receiver(&["--max-body", "64KiB"], "plain-secret");
    let bomb = zstd::encode_all(&vec![b' '; 10 << 20][..], 3).unwrap();
    assert!(bomb.len() < 64 << 10);
    assert!(post(&addr, &[("Content-Encoding", "zstd")], &bomb).contains(" 413"));
    assert_eq!(report(&proc)["status"], 413);
}
