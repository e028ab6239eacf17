//! Beyond GO Feature Flag's signature: Standard Webhooks requests, checked with the
//! specification's reference libraries (PyPI and npm `standardwebhooks`, which nobody here
//! wrote), including a replay outside their tolerance; a retried batch keeps its id; and
//! compressed bodies, signed as sent.

use std::io::Read;

use crate::harness::*;

/// A Standard Webhooks secret: `whsec_` and 32 bytes of key in base64.
const WHSEC: &str = "whsec_ZmxhZ2hvb2sgc3RhbmRhcmQtd2ViaG9va3Mga2V5ISE=";

fn standard_sink(extra: &str) -> String {
    format!("signature = \"standard-webhooks\"\nsecret = \"{WHSEC}\"\n{extra}")
}

/// Each library's verdict on each case.
fn verdicts(libs: &[Library], cases: &[Case], ws: &Workspace) -> Vec<(&'static str, Vec<String>)> {
    libs.iter()
        .map(|lib| (lib.name, lib.verify(WHSEC, cases, &ws.path(""))))
        .collect()
}

#[test]
fn standard_webhooks_requests_verify_with_the_reference_libraries_and_replays_do_not() {
    let Some(libs) = reference_libraries() else {
        return;
    };
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 7)),
        &server.url(),
        &standard_sink("max_event_in_memory = 3"),
    );
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 3, "7 events in batches of 3");
    assert_eq!(delivered_events(&reqs), feature_events(0, 7));
    let ids: Vec<&str> = reqs
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    for id in &ids {
        assert!(id.starts_with("msg_") && id.len() > 20, "{id}");
    }
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    for req in &reqs {
        assert!(
            req.header("x-hub-signature-256").is_none(),
            "one scheme at a time"
        );
        assert!(req.header("webhook-signature").unwrap().starts_with("v1,"));
    }

    let fresh: Vec<Case> = reqs.iter().map(Case::of).collect();
    // The same requests replayed six minutes later: outside the libraries' five minutes.
    let replayed: Vec<Case> = fresh.iter().map(|c| c.clone().shifted(360)).collect();
    // A request whose id was changed on the way (the signature covers it).
    let forged = vec![fresh[0].clone().with_header("webhook-id", "msg_forged")];
    for (lib, said) in verdicts(libs, &fresh, &ws) {
        assert_eq!(said, ["ok", "ok", "ok"], "{lib}");
    }
    for (lib, said) in verdicts(libs, &replayed, &ws) {
        for verdict in said {
            assert!(
                verdict.contains("too old"),
                "{lib} accepted a replay: {verdict}"
            );
        }
    }
    for (lib, said) in verdicts(libs, &forged, &ws) {
        assert!(said[0].contains("No matching signature"), "{lib}: {said:?}");
    }
}

/// A batch that failed goes out again with the same `webhook-id` and the same body, with
/// a new timestamp and signature (the old one would age out of a receiver's tolerance); the
/// halves of a refused batch each get their own id.
#[test]
fn a_retried_batch_keeps_its_webhook_id_and_is_signed_again() {
    let server = Endpoint::scripted(
        vec![
            Reply::status(503),
            Reply::status(400),
            Reply::ok(),
            Reply::ok(),
        ],
        Reply::ok(),
    );
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 2)),
        &server.url(),
        &standard_sink(
            r#"flush_interval = "100ms"
retry_initial_backoff = "2s"
retry_max_backoff = "2s""#,
        ),
    );
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 4, "503, then 400 (bisect), then each half");
    let id = |i: usize| reqs[i].header("webhook-id").unwrap();
    let timestamp = |i: usize| {
        reqs[i]
            .header("webhook-timestamp")
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(id(0), id(1), "a retry keeps the id");
    assert_eq!(reqs[0].body, reqs[1].body, "and the body");
    assert!(
        timestamp(1) > timestamp(0),
        "signed again when it goes out 2s later"
    );
    assert_ne!(
        reqs[0].header("webhook-signature"),
        reqs[1].header("webhook-signature")
    );
    assert!(
        id(2) != id(1) && id(3) != id(1) && id(2) != id(3),
        "each half is a new batch: {:?}",
        (id(1), id(2), id(3))
    );
    assert_eq!(reqs[2].events(), feature_events(0, 1));
    assert_eq!(reqs[3].events(), feature_events(1, 1));
    if let Some(libs) = reference_libraries() {
        let cases: Vec<Case> = reqs.iter().map(Case::of).collect();
        for (lib, said) in verdicts(libs, &cases, &ws) {
            assert_eq!(said, ["ok"; 4], "{lib}");
        }
    }
}

/// The body decoded by the test itself, with the gzip or zstd crate.
fn decoded(req: &Recorded) -> Vec<u8> {
    let mut out = Vec::new();
    match req.header("content-encoding") {
        Some("gzip") => {
            flate2::read::GzDecoder::new(&req.body[..])
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("zstd") => out = zstd::stream::decode_all(&req.body[..]).unwrap(),
        other => panic!("Content-Encoding {other:?}"),
    }
    out
}

#[test]
fn compressed_bodies_are_the_plain_body_encoded_and_signed_as_sent() {
    for compression in ["gzip", "zstd"] {
        let server = Endpoint::start();
        let ws = Workspace::new();
        let events = feature_events(0, 50);
        let config = ws.file_pipeline(
            jsonl(&events),
            &server.url(),
            &format!(
                "compression = \"{compression}\"\nsecret = \"s3cret\"\nmeta = {{ hostname = \"h\" }}"
            ),
        );
        run_once(&config).assert_code(0);

        let reqs = server.requests();
        assert_eq!(reqs.len(), 1, "{compression}");
        let req = &reqs[0];
        assert_eq!(req.header("content-encoding"), Some(compression));
        assert_eq!(req.header("content-type"), Some("application/json"));
        let plain = format!(
            r#"{{"meta":{{"hostname":"h"}},"events":[{}]}}"#,
            events.join(",")
        );
        assert_eq!(decoded(req), plain.as_bytes(), "{compression}");
        assert!(
            req.body.len() * 4 < plain.len(),
            "{compression}: {} bytes",
            req.body.len()
        );
        assert_eq!(
            req.header("x-hub-signature-256").unwrap(),
            signature("s3cret", &req.body),
            "{compression}: the signature covers the bytes sent"
        );
    }
}

/// Standard Webhooks over a compressed body: the test checks the signature itself (the
/// reference libraries take the body as text, which a compressed body is not).
#[test]
fn compressed_standard_webhooks_bodies_are_signed_as_sent() {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 5)),
        &server.url(),
        &standard_sink("compression = \"zstd\""),
    );
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    let key = base64::engine::general_purpose::STANDARD
        .decode(WHSEC.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    let id = req.header("webhook-id").unwrap();
    let timestamp = req.header("webhook-timestamp").unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&req.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(
        req.header("webhook-signature").unwrap(),
        format!("v1,{expected}")
    );
    let body: serde_json::Value = serde_json::from_slice(&decoded(req)).unwrap();
    assert_eq!(body["events"].as_array().unwrap().len(), 5);
}

/// `flaghook receive` decodes gzip and zstd bodies and checks either scheme over the bytes
/// received: flaghook's own requests, end to end.
#[test]
fn receive_decodes_and_verifies_what_run_sends() {
    for (scheme, secret, compression) in [
        ("hub", "plain-secret", "gzip"),
        ("standard-webhooks", WHSEC, "zstd"),
        ("standard-webhooks", WHSEC, "gzip"),
    ] {
        let mut cmd = flaghook(&[
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--secret-env",
            "FH_RECV",
        ]);
        cmd.args(["--scheme", scheme]).env("FH_RECV", secret);
        let receiver = Proc::spawn(cmd);
        let line = receiver
            .wait_stderr("listening on ", WAIT)
            .unwrap_or_else(|| panic!("receiver never listened:\n{}", receiver.stderr_now()));
        let addr = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        let ws = Workspace::new();
        let config = ws.file_pipeline(
            jsonl(&feature_events(0, 5)),
            &format!("http://{addr}/hook"),
            &format!(
                "signature = \"{scheme}\"\nsecret = \"{secret}\"\ncompression = \"{compression}\""
            ),
        );
        run_once(&config).assert_code(0);
        let got: serde_json::Value =
            serde_json::from_str(&receiver.next_line(WAIT).expect("a report line")).unwrap();
        let case = format!("{scheme} {compression}: {got}");
        assert_eq!(got["status"], 200, "{case}");
        assert_eq!(got["signature"], "verified", "{case}");
        assert_eq!(got["encoding"], compression, "{case}");
        assert_eq!(got["events"], 5, "{case}");
        assert!(
            got["decoded_bytes"].as_u64() > got["bytes"].as_u64(),
            "{case}"
        );
        assert!(!receiver.stdout_now().contains(secret), "{case}");
        receiver.sigterm();
    }
}
