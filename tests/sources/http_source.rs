//! The `http` source over real loopback sockets: the bodies Vector's `http` sink and GO
//! Feature Flag's webhook exporter send (NDJSON, a JSON array, the webhook body with its
//! signature), gzip and zstd, every refusal with its status and reason, and HTTPS.

use std::io::{ErrorKind, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::harness::*;

/// An `http` source `web` (with `source_extra`) on a free port feeding sink `webhook`;
/// returns (config, address).
fn http_pipeline(ws: &Workspace, url: &str, source_extra: &str) -> (PathBuf, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let config = ws.config(&format!(
        r#"[sources.web]
type = "http"
address = "{addr}"
{source_extra}

[sinks.webhook]
type = "webhook"
inputs = ["web"]
endpoint_url = {url}
flush_interval = "100ms"
"#,
        url = toml_str(url)
    ));
    (config, addr)
}

/// A response as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Sends one request (headers then `body`) on a fresh connection and reads the answer.
fn request(addr: &str, proc: &Proc, head: &str, body: &[u8]) -> Answer {
    let conn = connect(addr, proc);
    // An answer that never comes fails the test instead of hanging it.
    conn.set_read_timeout(Some(WAIT)).unwrap();
    exchange(conn, head, body)
}

fn exchange<S: Read + Write>(mut conn: S, head: &str, body: &[u8]) -> Answer {
    conn.write_all(head.as_bytes()).unwrap();
    // A refused request may be closed before its body is read.
    let _ = conn.write_all(body);
    let mut raw = Vec::new();
    if let Err(e) = conn.read_to_end(&mut raw) {
        assert!(
            matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ),
            "{e}"
        );
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn post_head(path: &str, len: usize, headers: &[(&str, &str)]) -> String {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: flaghook\r\nContent-Length: {len}\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

fn post(addr: &str, proc: &Proc, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    request(addr, proc, &post_head("/", body.len(), headers), body)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Vector's two encodings (NDJSON framing, its default JSON array) and a single object.
#[test]
fn ndjson_array_and_single_object_bodies_are_delivered() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = http_pipeline(&ws, &hook.url(), "");
    let proc = Proc::spawn(run_cmd(&config));

    let ndjson = small_lines(0..10).replace('\n', "\r\n");
    let answer = post(&addr, &proc, &[], ndjson.as_bytes());
    assert_eq!(
        (answer.status, answer.json()["accepted"].as_u64()),
        (200, Some(10)),
        "{answer:?}"
    );

    let array = format!(
        "[\n  {}\n]",
        (10..20).map(small_event).collect::<Vec<_>>().join(",\n  ")
    );
    let answer = post(
        &addr,
        &proc,
        &[("Content-Type", "application/json")],
        array.as_bytes(),
    );
    assert_eq!(
        answer.json(),
        serde_json::json!({"accepted": 10, "rejected": 0})
    );

    // A Vector event whose `message` holds the GO Feature Flag line.
    let envelope = format!(
        r#"{{"host":"h","message":{},"source_type":"file"}}"#,
        json_string(&small_event(20))
    );
    assert_eq!(post(&addr, &proc, &[], envelope.as_bytes()).status, 200);

    assert!(
        hook.wait_until(WAIT, |t| t.has_all(21)),
        "{}",
        proc.stderr_now()
    );
    proc.sigterm();
    proc.wait().assert_code(0);
    assert_eq!(hook.with(|t| t.duplicates()), 0);
}

/// GO Feature Flag's webhook exporter pointed at flaghook: its body, signed, is taken
/// event by event (byte for byte); a missing or wrong signature gets 401.
#[test]
fn goff_webhook_body_with_its_signature() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = http_pipeline(&ws, &hook.url(), "verify_secret = \"${GOFF_SECRET}\"");
    let proc = Proc::spawn({
        let mut cmd = run_cmd(&config);
        cmd.env("GOFF_SECRET", KAT_SECRET);
        cmd
    });
    let body = kat_body();

    let unsigned = post(&addr, &proc, &[], body.as_bytes());
    assert_eq!(unsigned.status, 401, "{unsigned:?}");
    assert!(
        unsigned.body.contains("X-Hub-Signature-256 missing"),
        "{unsigned:?}"
    );
    let forged = sign(b"not-the-secret", body.as_bytes());
    let wrong = post(
        &addr,
        &proc,
        &[("X-Hub-Signature-256", &forged)],
        body.as_bytes(),
    );
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert!(wrong.body.contains("X-Hub-Signature-256 invalid"));

    let signed = post(
        &addr,
        &proc,
        &[("X-Hub-Signature-256", KAT_SIGNATURE)],
        body.as_bytes(),
    );
    assert_eq!(
        signed.json(),
        serde_json::json!({"accepted": 2, "rejected": 0})
    );
    let got = hook.wait_for_delivered(2, WAIT);
    assert_eq!(got, [KAT_EVENT_1, KAT_EVENT_2]);
    proc.sigterm();
    let out = proc.wait();
    out.assert_code(0);
    assert!(out.stderr.contains("refused a request (401)"), "{out}");
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn gzip_and_zstd_bodies_and_their_limits() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = http_pipeline(&ws, &hook.url(), "max_body_bytes = \"64KiB\"");
    let proc = Proc::spawn(run_cmd(&config));

    let gz = gzip(small_lines(0..100).as_bytes());
    let answer = post(&addr, &proc, &[("Content-Encoding", "gzip")], &gz);
    assert_eq!(answer.json()["accepted"], 100, "{answer:?}");
    let zst = zstd::encode_all(small_lines(100..200).as_bytes(), 3).unwrap();
    let answer = post(&addr, &proc, &[("Content-Encoding", "zstd")], &zst);
    assert_eq!(answer.json()["accepted"], 100, "{answer:?}");

    // Small on the wire, past max_body_bytes once decompressed.
    let bomb = gzip(&vec![b' '; 1 << 20]);
    assert!(bomb.len() < 64 << 10);
    let answer = post(&addr, &proc, &[("Content-Encoding", "gzip")], &bomb);
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer
        .body
        .contains("decompresses to more than max_body_bytes"));
    let answer = post(&addr, &proc, &[("Content-Encoding", "br")], b"{}");
    assert_eq!(answer.status, 415, "{answer:?}");
    let answer = post(
        &addr,
        &proc,
        &[("Content-Encoding", "gzip")],
        b"{\"not\":\"gzip\"}",
    );
    assert_eq!(answer.status, 400, "{answer:?}");

    assert!(hook.wait_until(WAIT, |t| t.has_all(200)));
    proc.sigterm();
    proc.wait().assert_code(0);
}

#[test]
fn refusals_say_why_and_bad_lines_in_a_good_body_are_dead_lettered() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = http_pipeline(
        &ws,
        &hook.url(),
        "path = \"/events\"\nmax_body_bytes = 4096\nauth = { token = \"${INGEST_TOKEN}\" }",
    );
    let proc = Proc::spawn({
        let mut cmd = run_cmd(&config);
        cmd.env("INGEST_TOKEN", "tok-4f1c9e");
        cmd
    });
    let to = |headers: &[(&str, &str)], body: &[u8]| {
        request(
            &addr,
            &proc,
            &post_head("/events", body.len(), headers),
            body,
        )
    };
    let bearer = [("Authorization", "Bearer tok-4f1c9e")];

    let no_token = to(&[], small_lines(0..1).as_bytes());
    assert_eq!(no_token.status, 401, "{no_token:?}");
    assert!(no_token
        .head
        .to_ascii_lowercase()
        .contains("www-authenticate: bearer"));
    let wrong = to(
        &[("Authorization", "Bearer tok-4f1c9f")],
        small_lines(0..1).as_bytes(),
    );
    assert_eq!(wrong.status, 401, "{wrong:?}");

    let not_json = to(&bearer, b"hello, world\n");
    assert_eq!(not_json.status, 400, "{not_json:?}");
    assert!(not_json.json()["error"]
        .as_str()
        .unwrap()
        .starts_with("the body is not JSON: line 1"));

    // Refused by its Content-Length, before any of it is read.
    let huge = request(&addr, &proc, &post_head("/events", 1 << 30, &bearer), b"");
    assert_eq!(huge.status, 413, "{huge:?}");
    assert!(huge.body.contains("max_body_bytes (4096 bytes)"));

    let elsewhere = request(&addr, &proc, &post_head("/", 2, &bearer), b"{}");
    assert_eq!(elsewhere.status, 404, "{elsewhere:?}");
    let get = request(&addr, &proc, "GET /events HTTP/1.1\r\nHost: f\r\nConnection: close\r\nAuthorization: Bearer tok-4f1c9e\r\n\r\n", b"");
    assert_eq!(get.status, 405, "{get:?}");

    let mixed = format!("{}not json\n{}", small_event(1) + "\n", small_event(2));
    let answer = to(&bearer, mixed.as_bytes());
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["accepted"], 2);
    assert_eq!(answer.json()["rejected"], 1);
    assert!(answer.json()["first_rejected"]
        .as_str()
        .unwrap()
        .starts_with("line 2: not JSON"));

    assert!(hook.wait_until(WAIT, |t| t.distinct() == 2));
    proc.sigterm();
    let out = proc.wait();
    out.assert_code(0);
    assert_eq!(hook.with(|t| t.missing(3)), vec![0]);
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["line"], "not json");
    assert_eq!(dead[0]["source"], "web");
    assert!(
        !out.stderr.contains("tok-4f1c9e"),
        "the token reached the log:\n{out}"
    );
}

// The test certificates of tests/delivery/tls.rs: a CA, and a leaf for 127.0.0.1 it signed.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBnjCCAUOgAwIBAgIUenueUnj6tv/emcHxHlZHq7obRWkwCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQZmxhZ2hvb2sgdGVzdCBDQTAgFw0yNjExMjgxNzQzMjZaGA8y
MTI2MTEwNDE3NDMyNlowGzEZMBcGA1UEAwwQZmxhZ2hvb2sgdGVzdCBDQTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABCzW4R2ecfLl9gPr8C8AAz/P4ruhCEc5lqhi
RZS9BRSKqA8Yex3/I+WRpOBEPTfHvOIThRMZ2z/jjQbnPvJz0P2jYzBhMB0GA1Ud
DgQWBBTj6UZM4jtcMjoEFpuZ0Ziwej8ogjAfBgNVHSMEGDAWgBTj6UZM4jtcMjoE
FpuZ0Ziwej8ogjAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIBBjAKBggq
hkjOPQQDAgNJADBGAiEAm4LTb+Wr8Z2KTg+EdkkpzbgzvWrbeJNDM9LG1Y7i6QkC
IQCJEw6bSQF+SK9Uni5AmyMmCrsq7dNRhyO4RXD5VvGh9A==
-----END CERTIFICATE-----
";

const LEAF_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIByzCCAXCgAwIBAgIUc9Z2XTwTTQ2gz1vVPRDVCcSYaYMwCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQZmxhZ2hvb2sgdGVzdCBDQTAgFw0yNjExMjgxNzQzMjZaGA8y
MTI2MTEwNDE3NDMyNlowFDESMBAGA1UEAwwJMTI3LjAuMC4xMFkwEwYHKoZIzj0C
AQYIKoZIzj0DAQcDQgAEPEJZYAj3vbRZd3oYeCkazf7T4zVeuHjSdeEOrafjMqXv
7Xyh1zBFFyvC3qrXoO8QEvZt8wpLnyU4tSd0uTa1WaOBljCBkzAeBgNVHREEFzAV
hwR/AAABgg1mbGFnaG9vay50ZXN0MBMGA1UdJQQMMAoGCCsGAQUFBwMBMAwGA1Ud
EwEB/wQCMAAwDgYDVR0PAQH/BAQDAgeAMB0GA1UdDgQWBBSkxW2MgvkrH0u70kIR
rlUJgur5dDAfBgNVHSMEGDAWgBTj6UZM4jtcMjoEFpuZ0Ziwej8ogjAKBggqhkjO
PQQDAgNJADBGAiEAl4Zr5c/VxoW/GYAo5UxE+LO4B4WwnTWaULCcZQ/7fRACIQD9
hRfKQPPagvGt/dDTF5zvq95do7V/8UinpK/JpUmSTg==
-----END CERTIFICATE-----
";

const LEAF_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsqXKu57gwlxQeOqQ
LCno0UjahzxfsFsuKn7buDNEl1ihRANCAAQ8QllgCPe9tFl3ehh4KRrN/tPjNV64
eNJ14Q6tp+Mype/tfKHXMEUXK8Leqteg7xAS9m3zCkufJTi1J3S5NrVZ
-----END PRIVATE KEY-----
";

/// `tls.crt_file` / `tls.key_file`: a client that trusts the test CA posts over HTTPS.
#[test]
fn https_listener_with_tls_crt_and_key_files() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let hook = Endpoint::start();
    let ws = Workspace::new();
    ws.write("tls.crt", LEAF_PEM);
    ws.write("tls.key", LEAF_KEY_PEM);
    let (config, addr) = http_pipeline(
        &ws,
        &hook.url(),
        "tls = { crt_file = \"tls.crt\", key_file = \"tls.key\" }",
    );
    let proc = Proc::spawn(run_cmd(&config));

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(CA_PEM.as_bytes()).unwrap())
        .unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let body = small_lines(0..5);
    let tls =
        rustls::ClientConnection::new(client, ServerName::try_from("127.0.0.1").unwrap()).unwrap();
    let stream = rustls::StreamOwned::new(tls, connect(&addr, &proc));
    let answer = exchange(stream, &post_head("/", body.len(), &[]), body.as_bytes());
    assert_eq!(answer.json()["accepted"], 5, "{answer:?}");

    // Plain HTTP on the TLS port is not served.
    let mut plain = connect(&addr, &proc);
    plain.write_all(post_head("/", 2, &[]).as_bytes()).unwrap();
    let _ = plain.write_all(b"{}");
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw);
    assert!(!String::from_utf8_lossy(&raw).contains("200 OK"));

    assert!(hook.wait_until(WAIT, |t| t.has_all(5)));
    proc.sigterm();
    proc.wait().assert_code(0);
}

/// While the journal holds `journal_max_bytes` (the endpoint down), a body is answered 503
/// with `Retry-After` at once, and nothing of it is kept; once the endpoint is back and
/// delivered segments are deleted, the same body, sent again, gets 200 and is delivered.
#[test]
fn a_full_journal_answers_503_with_retry_after_and_keeps_nothing() {
    let hook = Endpoint::scripted(vec![], Reply::status(503));
    let ws = Workspace::new();
    let (config, addr) = http_pipeline(
        &ws,
        &hook.url(),
        "journal_segment_bytes = \"4KiB\"\njournal_max_bytes = \"8KiB\"",
    );
    let proc = Proc::spawn(run_cmd(&config));
    // About 720 bytes of journal a body: the cap is reached within a dozen.
    let body = |n: u64| small_lines(n * 10..(n + 1) * 10);
    let mut taken = 0;
    let refused = loop {
        assert!(taken < 40, "every body answered 200 past journal_max_bytes");
        let answer = post(&addr, &proc, &[], body(taken).as_bytes());
        if answer.status != 200 {
            break answer;
        }
        taken += 1;
    };
    assert!(taken > 5, "503 after {taken} bodies: {refused:?}");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        refused.head.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused:?}"
    );
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("journal_max_bytes"),
        "{refused:?}"
    );
    let kept = journal_size(&ws.data_dir(), "web");
    let again = post(&addr, &proc, &[], body(taken).as_bytes());
    assert_eq!(again.status, 503, "{again:?}");
    assert_eq!(
        journal_size(&ws.data_dir(), "web"),
        kept,
        "a refused body was kept"
    );
    assert_eq!(hook.with(|t| t.distinct()), 0);
    let logged = "refused a request (503): the journal holds journal_max_bytes";
    assert!(
        proc.wait_stderr(logged, WAIT).is_some(),
        "{}",
        proc.stderr_now()
    );

    hook.set_default(Reply::ok());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let answer = post(&addr, &proc, &[], body(taken).as_bytes());
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.status, 503, "{answer:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "still 503: {answer:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(hook.wait_until(WAIT, |t| t.has_all((taken + 1) * 10)));
    assert_eq!(
        hook.with(|t| t.duplicates()),
        0,
        "a body answered 503 was delivered"
    );
    proc.sigterm();
    proc.wait().assert_code(0);
}

/// Regression: each element of a JSON array, and each line of a newline-delimited body
/// without a newline at its end, became a line of its own in memory (100 to 200 bytes
/// however short the element), so a body of a million `1`s (2 MB) took 140 to 230 MB
/// before its 200, and one at the default `max_body_bytes` (10 MiB) up to a gigabyte, on
/// each of `max_connections`. Such bodies now go to the journal in one piece.
#[test]
fn a_body_of_many_tiny_elements_is_not_a_line_each_in_memory() {
    const ELEMENTS: usize = 1_000_000;
    let array = format!("[{}1]", "1,".repeat(ELEMENTS - 1));
    let ndjson = format!("{}1", "1\n".repeat(ELEMENTS - 1));
    for body in [array, ndjson] {
        let hook = Endpoint::start();
        let ws = Workspace::new();
        let (config, addr) = http_pipeline(&ws, &hook.url(), "");
        // A small sink budget, so that what the sink holds of the lines stays small.
        let config_text = std::fs::read_to_string(&config).unwrap()
            + "max_event_in_memory = 500\nbuffer_max_events = 1000\nshutdown_timeout = \"1s\"\n";
        std::fs::write(&config, config_text).unwrap();
        let proc = Proc::spawn(run_cmd(&config));
        let answer = post(&addr, &proc, &[], body.as_bytes());
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.json()["rejected"], ELEMENTS, "{answer:?}");
        let peak_kib = peak_rss_kib(proc.pid()).expect("VmHWM");
        eprintln!("flaghook peak RSS: {} MiB", peak_kib >> 10);
        proc.sigterm();
        proc.wait();
        assert!(
            peak_kib < 96 << 10,
            "peak memory {} MiB for a body of {} bytes: {}...",
            peak_kib >> 10,
            body.len(),
            &body[..10]
        );
    }
}
