//! HTTPS: rustls with certificate verification always on. A real TLS server on 127.0.0.1
//! serves a certificate from a test CA; flaghook delivers when that CA is trusted (through
//! `SSL_CERT_FILE`, which the platform root store honours) and refuses otherwise.
//!
//! The certificates (ECDSA P-256, valid until 2126) were made once with openssl: a CA, and a
//! leaf for `IP:127.0.0.1, DNS:flaghook.test` signed by it; plus an unrelated CA.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;
use base64::Engine;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

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
-----END CERTIFICATE-----";

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
-----END CERTIFICATE-----";

const LEAF_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsqXKu57gwlxQeOqQ
LCno0UjahzxfsFsuKn7buDNEl1ihRANCAAQ8QllgCPe9tFl3ehh4KRrN/tPjNV64
eNJ14Q6tp+Mype/tfKHXMEUXK8Leqteg7xAS9m3zCkufJTi1J3S5NrVZ
-----END PRIVATE KEY-----";

const OTHER_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBnzCCAUWgAwIBAgIUPONwGSiDct+4LUXaE6hMh3tIkEswCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRdW5yZWxhdGVkIHRlc3QgQ0EwIBcNMjYxMTI4MTc0MzI2WhgP
MjEyNjExMDQxNzQzMjZaMBwxGjAYBgNVBAMMEXVucmVsYXRlZCB0ZXN0IENBMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE2ipIUroL5b0M/Dczsq2LKYpYsj6Ws2zl
VSg/GFYlAl5L701TRDUf0sBkrI2kB037WDavW2m3Mq71IkOOgRfPgKNjMGEwHQYD
VR0OBBYEFIJkRJsbexeC7kVAu3qqxkquwrmmMB8GA1UdIwQYMBaAFIJkRJsbexeC
7kVAu3qqxkquwrmmMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMAoG
CCqGSM49BAMCA0gAMEUCIBDPCtSOkjrlKN0fxLGYycxR9Q9Zds9K6I2rIkZRilcY
AiEA2C1N583LMtSdOH98SdMayG+Z2MhJlMsQzVYR8/dxV3U=
-----END CERTIFICATE-----";

/// The DER bytes inside one PEM block.
fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// A minimal HTTPS/1.1 server: answers 200 to every request, records each decrypted body and
/// counts the TCP connections (handshakes attempted).
struct TlsServer {
    port: u16,
    connections: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl TlsServer {
    fn start() -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(pem_der(LEAF_PEM))],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pem_der(LEAF_KEY_PEM))),
            )
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (c, b) = (connections.clone(), bodies.clone());
        // Detached: the accept loop lives as long as the test process.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (config, b) = (config.clone(), b.clone());
                std::thread::spawn(move || serve_connection(stream, config, b));
            }
        });
        TlsServer {
            port,
            connections,
            bodies,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }

    /// Waits until `pred` holds or [`WAIT`] passes.
    fn wait(&self, pred: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !pred(self) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Serves HTTP/1.1 requests (keep-alive) over one TLS connection until it closes or fails.
fn serve_connection(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conn = rustls::ServerConnection::new(config).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        // Body.
        while buf.len() < head_end + len {
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        bodies
            .lock()
            .unwrap()
            .push(buf[head_end..head_end + len].to_vec());
        buf.drain(..head_end + len);
        if tls
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .and_then(|_| tls.flush())
            .is_err()
        {
            return;
        }
    }
}

/// A `--once` run over two events to `url`, trusting only the CA in `trusted_pem`.
fn https_run(ws: &Workspace, url: &str, trusted_pem: &str) -> (std::process::Command, Vec<String>) {
    let events = feature_events(0, 2);
    let ca = ws.write("trusted.pem", trusted_pem);
    let config = ws.file_pipeline(
        jsonl(&events),
        url,
        r#"secret = "tls-secret"
meta = { hostname = "h" }
flush_interval = "100ms"
retry_initial_backoff = "50ms"
timeout = "2s""#,
    );
    let mut cmd = run_once_cmd(&config);
    cmd.env("SSL_CERT_FILE", &ca).env_remove("SSL_CERT_DIR");
    (cmd, events)
}

#[test]
fn https_delivers_to_a_trusted_certificate() {
    let server = TlsServer::start();
    let ws = Workspace::new();
    let url = format!("https://127.0.0.1:{}/hook", server.port);
    let (cmd, events) = https_run(&ws, &url, CA_PEM);
    let out = Proc::spawn(cmd).wait();
    out.assert_code(0);

    let bodies = server.bodies();
    assert_eq!(bodies.len(), 1, "{out}");
    let expected = format!(
        r#"{{"meta":{{"hostname":"h"}},"events":[{},{}]}}"#,
        events[0], events[1]
    );
    assert_eq!(String::from_utf8_lossy(&bodies[0]), expected);
    assert_eq!(out.summary().events_delivered, 2);
}

/// A certificate from a CA the client does not trust is refused: nothing is sent.
#[test]
fn https_refuses_an_untrusted_certificate() {
    let server = TlsServer::start();
    let ws = Workspace::new();
    let url = format!("https://127.0.0.1:{}/hook", server.port);
    let (cmd, _) = https_run(&ws, &url, OTHER_CA_PEM);
    let proc = Proc::spawn(cmd);
    server.wait(|s| s.connections() >= 2);
    let stderr = proc.stderr_now();
    drop(proc);
    assert!(
        server.connections() >= 2,
        "flaghook did not try (and retry) the https endpoint:\n{stderr}"
    );
    assert!(
        server.bodies().is_empty(),
        "a request was sent over an unverified connection:\n{stderr}"
    );
}

/// A trusted certificate for another name (the URL says `localhost`, the certificate names
/// 127.0.0.1 and flaghook.test) is refused: host names are verified too.
#[test]
fn https_refuses_a_certificate_for_another_name() {
    let server = TlsServer::start();
    let ws = Workspace::new();
    let url = format!("https://localhost:{}/hook", server.port);
    let (cmd, _) = https_run(&ws, &url, CA_PEM);
    let proc = Proc::spawn(cmd);
    server.wait(|s| s.connections() >= 2);
    let stderr = proc.stderr_now();
    drop(proc);
    assert!(
        server.connections() >= 2,
        "flaghook did not try (and retry) the https endpoint:\n{stderr}"
    );
    assert!(
        server.bodies().is_empty(),
        "a request was sent to a certificate for another name:\n{stderr}"
    );
}
