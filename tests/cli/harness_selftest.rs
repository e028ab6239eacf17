//! Self-tests of the test harness (no flaghook involved): the recording server really records
//! what arrives and really answers from its script, so the other tests' checks mean something.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::*;

/// Sends one raw HTTP/1.1 request and returns the whole response text.
fn raw_request(server: &Endpoint, head_extra: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /hook?q=1 HTTP/1.1\r\nHost: x\r\n{head_extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp
}

#[test]
fn server_records_requests_and_follows_its_script() {
    let server = Endpoint::scripted(
        vec![
            Reply::status(500),
            Reply::status(503).header("Retry-After", "7"),
        ],
        Reply::ok(),
    );
    let body = kat_body();
    let r1 = raw_request(
        &server,
        "X-Multi: one\r\nX-Multi: two\r\nX-Hub-Signature-256: abc\r\n",
        body.as_bytes(),
    );
    let r2 = raw_request(&server, "", b"{}");
    let r3 = raw_request(&server, "", br#"{"meta":{},"events":[]}"#);
    assert!(r1.starts_with("HTTP/1.1 500"), "{r1}");
    assert!(r2.starts_with("HTTP/1.1 503"), "{r2}");
    assert!(r2.to_ascii_lowercase().contains("retry-after: 7"), "{r2}");
    assert!(r3.starts_with("HTTP/1.1 200"), "{r3}");

    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/hook?q=1");
    assert_eq!(reqs[0].header_values("x-multi"), vec!["one", "two"]);
    assert_eq!(reqs[0].header_list("X-Multi"), vec!["one", "two"]);
    assert_eq!(reqs[0].header("x-hub-signature-256"), Some("abc"));
    assert_eq!(&reqs[0].body[..], body.as_bytes());
    assert_eq!(reqs[0].events(), vec![KAT_EVENT_1, KAT_EVENT_2]);
    assert_eq!(reqs[0].meta(), serde_json::json!({"hostname": "hostname"}));
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![500, 503, 200]
    );
    assert!(reqs[0].at <= reqs[1].at && reqs[1].at <= reqs[2].at);
    // Only the 2xx request counts as delivered.
    assert!(server.delivered().is_empty());
}

#[test]
fn signature_helper_matches_the_known_answer() {
    assert_eq!(signature(KAT_SECRET, kat_body().as_bytes()), KAT_SIGNATURE);
}

#[test]
fn summary_parser_reads_the_last_line() {
    let out = Output {
        code: Some(0),
        stdout: "something\nsummary events_delivered=3 requests=2 events_rejected=1 events_not_delivered=0\n".into(),
        stderr: String::new(),
        timed_out: false,
    };
    assert_eq!(
        out.summary(),
        Summary {
            events_delivered: 3,
            requests: 2,
            events_rejected: 1,
            events_not_delivered: 0
        }
    );
}

#[test]
fn proc_kills_a_child_that_runs_too_long() {
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("60");
    let out = Proc::spawn(cmd).wait_timeout(Duration::from_millis(200));
    assert!(out.timed_out);
}

#[test]
fn hostname_is_not_empty() {
    assert!(!hostname().is_empty());
}
