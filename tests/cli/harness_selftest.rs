//! Self-tests of the test harness (no flaghook involved): the endpoint really records what
//! arrives, really answers from its script or responder and counts events by id, so the
//! other tests' checks mean something.

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
fn endpoint_counts_events_by_id_and_answers_from_its_responder() {
    let server = Endpoint::with_responder(|req| {
        if req.index == 1 || req.contains("poison") {
            Reply::status(503).body("later")
        } else {
            Reply::ok()
        }
    })
    .count_only();
    let body = |ids: std::ops::Range<u64>, extra: &str| {
        let events: Vec<String> = ids.map(small_event).collect();
        format!(r#"{{"meta":{{}},"events":[{}{extra}]}}"#, events.join(","))
    };
    let r0 = raw_request(&server, "", body(0..3, "").as_bytes());
    let r1 = raw_request(&server, "", body(3..5, "").as_bytes());
    let r2 = raw_request(&server, "", body(2..5, r#",{"userKey":"x"}"#).as_bytes());
    let r3 = raw_request(&server, "", br#"{"events":[{"userKey":"poison"}]}"#);
    assert!(r0.starts_with("HTTP/1.1 200"), "{r0}");
    assert!(
        r1.starts_with("HTTP/1.1 503") && r1.ends_with("later"),
        "{r1}"
    );
    assert!(r2.starts_with("HTTP/1.1 200"), "{r2}");
    assert!(r3.starts_with("HTTP/1.1 503"), "{r3}");
    server.with(|t| {
        // Only 2xx-answered events count: 0..3, then 2..5 and one without a numeric id.
        assert_eq!(t.counts, vec![1, 1, 2, 1, 1]);
        assert!(t.has_all(5) && !t.has_all(6));
        assert_eq!(t.missing(7), vec![5, 6]);
        assert_eq!((t.distinct(), t.duplicates()), (5, 1));
        assert_eq!(t.duplicated_ids(), vec![2]);
        assert_eq!((t.delivered, t.foreign_delivered), (7, 1));
        assert_eq!((t.ok_requests, t.failed_requests), (2, 2));
        assert_eq!(t.max_batch, 4);
    });
    // A count-only endpoint keeps no requests, and says so rather than return none.
    let kept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.requests()));
    assert!(kept.is_err());
    assert_eq!(
        server.with(|t| t.ok_requests),
        2,
        "the endpoint still works"
    );
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

/// flaghook sends through the proxies of its environment, loopback included: the test
/// process's own proxy variables (a developer's, CI's) never reach the binary, so the
/// tests' loopback endpoints are reached straight unless a test sets a proxy itself.
#[test]
fn flaghook_commands_drop_the_proxy_variables() {
    let cmd = flaghook(&["--version"]);
    let envs: Vec<_> = cmd.get_envs().collect();
    for name in PROXY_VARS {
        assert!(
            envs.contains(&(std::ffi::OsStr::new(name), None)),
            "{name} is not removed"
        );
    }
}
