//! HTTPS: rustls with certificate verification always on. A real TLS server on 127.0.0.1
//! serves a certificate from a test CA; flaghook delivers when that CA is trusted and
//! refuses otherwise: through `SSL_CERT_FILE` (which the platform root store honours), or
//! through the sink's `tls` keys (`ca_file` beside or instead of the platform's roots, a
//! client certificate for an endpoint that asks for one, `server_name`), and a `tls` key
//! that names a bad file is an error naming the key and the file.
//!
//! The first certificates (ECDSA P-256, valid until 2126) were made once with openssl: a CA, and a
//! leaf for `IP:127.0.0.1, DNS:flaghook.test` signed by it; plus an unrelated CA. The
//! `tls` key tests make theirs at run time with rcgen ([`Ca`]).

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

/// A test CA made at run time: its certificate, and the key that signs what it issues.
pub(crate) struct Ca {
    pub(crate) pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate issued by a [`Ca`], with its private key.
pub(crate) struct Issued {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub(crate) fn server(&self, names: &[&str]) -> Issued {
        self.issue(names, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (mTLS).
    pub(crate) fn client(&self) -> Issued {
        self.issue(
            &["flaghook-client"],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn issue(&self, names: &[&str], purpose: rcgen::ExtendedKeyUsagePurpose) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![purpose];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }
}

/// A minimal HTTPS/1.1 server: answers 200 to every request, records each decrypted body
/// (and the name the client sent in SNI) and counts the TCP connections (handshakes
/// attempted).
pub(crate) struct TlsServer {
    pub(crate) port: u16,
    connections: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    server_names: Arc<Mutex<Vec<Option<String>>>>,
}

impl TlsServer {
    fn start() -> Self {
        Self::with_config(
            server_config()
                .with_no_client_auth()
                .with_single_cert(
                    vec![CertificateDer::from(pem_der(LEAF_PEM))],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pem_der(LEAF_KEY_PEM))),
                )
                .unwrap(),
        )
    }

    /// Serves `leaf` to any client.
    pub(crate) fn serving(leaf: &Issued) -> Self {
        Self::with_config(
            server_config()
                .with_no_client_auth()
                .with_single_cert(vec![leaf.cert.clone()], leaf.key.clone_key().into())
                .unwrap(),
        )
    }

    /// Serves `leaf` only to a client with a certificate `client_ca` issued.
    fn requiring_client_certificate(leaf: &Issued, client_ca: &Ca) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(pem_der(&client_ca.pem)))
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        Self::with_config(
            server_config()
                .with_client_cert_verifier(verifier)
                .with_single_cert(vec![leaf.cert.clone()], leaf.key.clone_key().into())
                .unwrap(),
        )
    }

    fn with_config(config: rustls::ServerConfig) -> Self {
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let server_names = Arc::new(Mutex::new(Vec::new()));
        let (c, b, n) = (connections.clone(), bodies.clone(), server_names.clone());
        // Detached: the accept loop lives as long as the test process.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (config, b, n) = (config.clone(), b.clone(), n.clone());
                std::thread::spawn(move || serve_connection(stream, config, b, n));
            }
        });
        TlsServer {
            port,
            connections,
            bodies,
            server_names,
        }
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub(crate) fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }

    /// The SNI name of each request's connection, as the client sent it.
    fn server_names(&self) -> Vec<Option<String>> {
        self.server_names.lock().unwrap().clone()
    }

    /// Waits until `pred` holds or [`WAIT`] passes.
    pub(crate) fn wait(&self, pred: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !pred(self) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn server_config() -> rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
}

/// Serves HTTP/1.1 requests (keep-alive) over one TLS connection until it closes or fails.
fn serve_connection(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    server_names: Arc<Mutex<Vec<Option<String>>>>,
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
        server_names
            .lock()
            .unwrap()
            .push(tls.conn.server_name().map(str::to_owned));
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

// ---------------------------------------------------------------------------------------
// The `tls` keys, with certificates made by rcgen.

/// A `--once` run over two events to the server at `port` (the URL's host is
/// 127.0.0.1), with `sink_extra` in the sink, while the platform's roots are the
/// certificates in `platform_pem` alone (`SSL_CERT_FILE`).
fn tls_run(ws: &Workspace, port: u16, platform_pem: &str, sink_extra: &str) -> Proc {
    let platform = ws.write("platform-roots.pem", platform_pem);
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 2)),
        &format!("https://127.0.0.1:{port}/hook"),
        &format!(
            r#"flush_interval = "100ms"
retry_initial_backoff = "50ms"
timeout = "2s"
{sink_extra}"#
        ),
    );
    let mut cmd = run_once_cmd(&config);
    cmd.env("SSL_CERT_FILE", &platform)
        .env_remove("SSL_CERT_DIR");
    Proc::spawn(cmd)
}

/// The run delivered its two events to `server`, over one verified connection.
fn assert_delivered(server: &TlsServer, proc: Proc) {
    let out = proc.wait();
    out.assert_code(0);
    assert_eq!(server.bodies().len(), 1, "{out}");
    assert_eq!(out.summary().events_delivered, 2, "{out}");
}

/// The run tried the server (and tried again) but sent nothing to it (a server no other
/// run sent to).
fn assert_refused(server: &TlsServer, proc: Proc, what: &str) {
    server.wait(|s| s.connections() >= 2);
    let stderr = proc.stderr_now();
    drop(proc);
    assert!(
        server.connections() >= 2,
        "flaghook did not try (and retry) the https endpoint:\n{stderr}"
    );
    assert!(server.bodies().is_empty(), "{what}:\n{stderr}");
    assert!(stderr.contains("delivery failed"), "{stderr}");
}

/// `tls.ca_file` adds a private CA to the platform's roots: trusted with it, refused
/// without it (the platform trusts another CA only).
#[test]
fn ca_file_adds_a_private_ca_to_the_platform_roots() {
    let (ca, other) = (Ca::new("flaghook private CA"), Ca::new("platform CA"));
    let leaf = ca.server(&["127.0.0.1"]);
    let server = TlsServer::serving(&leaf);
    let ws = Workspace::new();
    ws.write("ca.pem", &ca.pem);
    // Relative to the config file's folder.
    let proc = tls_run(&ws, server.port, &other.pem, r#"tls.ca_file = "ca.pem""#);
    assert_delivered(&server, proc);

    let server = TlsServer::serving(&leaf);
    let ws = Workspace::new();
    let proc = tls_run(&ws, server.port, &other.pem, "");
    assert_refused(
        &server,
        proc,
        "a request went to a certificate of an untrusted CA",
    );
}

/// Several CAs in one `ca_file`, and `use_platform_roots = false`: the file's alone are
/// trusted, and the platform's no longer are.
#[test]
fn ca_file_replaces_the_platform_roots_when_they_are_off() {
    let (ca, other, platform) = (Ca::new("A"), Ca::new("B"), Ca::new("platform"));
    let server = TlsServer::serving(&ca.server(&["127.0.0.1"]));
    let ws = Workspace::new();
    let both = ws.write("cas.pem", format!("{}{}", other.pem, ca.pem));
    let proc = tls_run(
        &ws,
        server.port,
        &platform.pem,
        &format!(
            "tls = {{ ca_file = {}, use_platform_roots = false }}",
            toml_str(&both)
        ),
    );
    assert_delivered(&server, proc);

    let platform_server = TlsServer::serving(&platform.server(&["127.0.0.1"]));
    let ws = Workspace::new();
    let other_only = ws.write("other.pem", &other.pem);
    let proc = tls_run(
        &ws,
        platform_server.port,
        &platform.pem,
        &format!(
            "tls = {{ ca_file = {}, use_platform_roots = false }}",
            toml_str(&other_only)
        ),
    );
    assert_refused(
        &platform_server,
        proc,
        "with use_platform_roots = false, a platform root was still trusted",
    );
}

/// An endpoint that asks for a client certificate gets `tls.crt_file` / `tls.key_file`;
/// without them it refuses the connection and nothing is sent.
#[test]
fn client_certificate_for_an_endpoint_that_asks_for_one() {
    let ca = Ca::new("mTLS CA");
    let leaf = ca.server(&["127.0.0.1"]);
    let server = TlsServer::requiring_client_certificate(&leaf, &ca);
    let client = ca.client();
    let ws = Workspace::new();
    let crt = ws.write("client.crt", &client.cert_pem);
    let key = ws.write("client.key", &client.key_pem);
    let proc = tls_run(
        &ws,
        server.port,
        &ca.pem,
        &format!(
            "tls = {{ crt_file = {}, key_file = {} }}",
            toml_str(&crt),
            toml_str(&key)
        ),
    );
    assert_delivered(&server, proc);

    let server = TlsServer::requiring_client_certificate(&leaf, &ca);
    let ws = Workspace::new();
    let proc = tls_run(&ws, server.port, &ca.pem, "");
    assert_refused(
        &server,
        proc,
        "a request was accepted without a client certificate",
    );
}

/// `tls.server_name` is the name verified and sent as SNI instead of the URL's host: the
/// certificate names only `collector.internal`, the URL says 127.0.0.1.
#[test]
fn server_name_is_verified_and_sent_instead_of_the_host() {
    let ca = Ca::new("names CA");
    let leaf = ca.server(&["collector.internal"]);
    let server = TlsServer::serving(&leaf);
    let ws = Workspace::new();
    let proc = tls_run(
        &ws,
        server.port,
        &ca.pem,
        r#"tls.server_name = "collector.internal""#,
    );
    assert_delivered(&server, proc);
    assert_eq!(
        server.server_names(),
        [Some("collector.internal".to_owned())]
    );

    for wrong in ["", r#"tls.server_name = "other.internal""#] {
        let server = TlsServer::serving(&leaf);
        let ws = Workspace::new();
        let proc = tls_run(&ws, server.port, &ca.pem, wrong);
        assert_refused(
            &server,
            proc,
            &format!("`{wrong}`: a certificate for another name was accepted"),
        );
    }
}

/// Every `tls` file problem is found at start (`validate`), and the message names the key
/// and the file and says what is wrong; a key file's content never shows.
#[test]
fn tls_config_errors_name_the_key_and_the_file() {
    let ca = Ca::new("errors CA");
    let client = ca.client();
    let stranger = Ca::new("stranger").client();
    let ws = Workspace::new();
    let ca_pem = ws.write("ca.pem", &ca.pem);
    let crt = ws.write("client.crt", &client.cert_pem);
    let key = ws.write("client.key", &client.key_pem);
    let other_key = ws.write("other.key", &stranger.key_pem);
    let der = ws.write("ca.der", pem_der(&ca.pem));
    let broken = ws.write("broken.pem", "-----BEGIN CERTIFICATE-----\nMIIB!!!\n");
    let encrypted = ws.write(
        "encrypted.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let folder = ws.path("a-folder");
    std::fs::create_dir_all(&folder).unwrap();
    let missing = ws.path("missing.pem");
    let q = |p: &std::path::Path| toml_str(p);
    let key_line = client.key_pem.lines().nth(1).unwrap().to_owned();
    let pair = |crt: &std::path::Path, key: &std::path::Path| {
        format!("tls = {{ crt_file = {}, key_file = {} }}", q(crt), q(key))
    };
    // (sink lines, the key named, what is wrong, the file named)
    let cases = [
        (
            format!("tls.ca_file = {}", q(&missing)),
            "tls.ca_file",
            "the file is missing",
            Some(&missing),
        ),
        (
            format!("tls.ca_file = {}", q(&folder)),
            "tls.ca_file",
            "the file cannot be read",
            Some(&folder),
        ),
        (
            format!("tls.ca_file = {}", q(&der)),
            "tls.ca_file",
            "is not PEM",
            Some(&der),
        ),
        (
            format!("tls.ca_file = {}", q(&broken)),
            "tls.ca_file",
            "is not valid PEM",
            Some(&broken),
        ),
        (
            format!("tls.ca_file = {}", q(&key)),
            "tls.ca_file",
            "holds no certificate",
            Some(&key),
        ),
        (
            pair(&crt, &crt),
            "tls.key_file",
            "holds no private key",
            Some(&crt),
        ),
        (
            pair(&key, &key),
            "tls.crt_file",
            "holds no certificate",
            Some(&key),
        ),
        (
            pair(&crt, &encrypted),
            "tls.key_file",
            "holds an encrypted private key",
            Some(&encrypted),
        ),
        (
            pair(&crt, &other_key),
            "tls.key_file",
            "is not the key of the certificate in `sinks.webhook.tls.crt_file`",
            Some(&other_key),
        ),
        (
            format!("tls.crt_file = {}", q(&crt)),
            "tls.crt_file",
            "is set without `sinks.webhook.tls.key_file`",
            None,
        ),
        (
            format!("tls.key_file = {}", q(&key)),
            "tls.key_file",
            "is set without `sinks.webhook.tls.crt_file`",
            None,
        ),
        (
            "tls.use_platform_roots = false".into(),
            "tls.use_platform_roots",
            "no certificate would be trusted",
            None,
        ),
        (
            r#"tls.server_name = "not a name""#.into(),
            "tls.server_name",
            "is not a DNS name or an IP address",
            None,
        ),
        // Verification cannot be turned off.
        (
            "tls.verify = false".into(),
            "tls",
            "unknown field `verify`",
            None,
        ),
    ];
    for (extra, key_name, problem, file) in cases {
        let config = ws.file_pipeline("", "https://127.0.0.1:1/hook", &extra);
        let out = validate(&config);
        out.assert_code(1);
        let full_key = format!("sinks.webhook.{key_name}");
        assert!(
            out.stderr.contains(&full_key),
            "{extra}: no {full_key}:\n{out}"
        );
        assert!(
            out.stderr.contains(problem),
            "{extra}: no {problem:?}:\n{out}"
        );
        if let Some(file) = file {
            let shown = format!("{:?}", file.display().to_string());
            assert!(out.stderr.contains(&shown), "{extra}: no {shown}:\n{out}");
        }
        assert!(
            !out.stderr.contains(&key_line),
            "{extra}: the key shows:\n{out}"
        );
    }

    // `tls` belongs to an https endpoint.
    let config = ws.file_pipeline(
        "",
        "http://127.0.0.1:1/hook",
        &format!("tls.ca_file = {}", q(&ca_pem)),
    );
    let out = validate(&config);
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("`sinks.webhook.tls` is set but `sinks.webhook.endpoint_url` is http"),
        "{out}"
    );
}

/// Regression: a reload compared the sinks' tables only, so after a client certificate (or
/// a CA file) was renewed in place, `systemctl reload` kept the sink with the certificate
/// it read at start: the endpoint went on refusing it until a restart. A sink whose files
/// changed now restarts on a reload, as one whose table changed does.
#[test]
fn a_reload_reads_renewed_certificate_files() {
    let ca = Ca::new("renewal CA");
    let leaf = ca.server(&["127.0.0.1"]);
    let server = TlsServer::requiring_client_certificate(&leaf, &ca);
    let expired = Ca::new("retired CA").client();
    let ws = Workspace::new();
    let ca_pem = ws.write("ca.pem", &ca.pem);
    let crt = ws.write("client.crt", &expired.cert_pem);
    let key = ws.write("client.key", &expired.key_pem);
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 2)),
        &format!("https://127.0.0.1:{}/hook", server.port),
        &format!(
            "flush_interval = \"100ms\"\nretry_initial_backoff = \"50ms\"\nretry_max_backoff = \"100ms\"\ntimeout = \"2s\"\ntls = {{ ca_file = {}, crt_file = {}, key_file = {} }}",
            toml_str(&ca_pem),
            toml_str(&crt),
            toml_str(&key)
        ),
    );
    let proc = Proc::spawn(run_cmd(&config));
    server.wait(|s| s.connections() >= 2);
    assert!(server.bodies().is_empty(), "{}", proc.stderr_now());

    let renewed = ca.client();
    std::fs::write(&crt, &renewed.cert_pem).unwrap();
    std::fs::write(&key, &renewed.key_pem).unwrap();
    proc.sighup();
    assert!(proc.wait_stderr("config reloaded", WAIT).is_some());
    server.wait(|s| !s.bodies().is_empty());
    assert_eq!(
        server.bodies().len(),
        1,
        "the renewed certificate was not used:\n{}",
        proc.stderr_now()
    );
    proc.sigterm();
    proc.wait().assert_code(0);
}

/// NATS over TLS: a nats-server whose certificate a private CA issued, and that asks for a
/// client certificate. The edge's nats sink and the central's nats source trust the CA
/// (`tls.ca_file`) and present their own (`tls.crt_file`, `tls.key_file`): every event
/// flows from the edge's file to the central's webhook. An edge that does not trust the CA
/// publishes nothing.
#[test]
fn nats_over_tls_with_a_private_ca_and_client_certificates() {
    let ws = Workspace::new();
    let ca = Ca::new("flaghook nats test CA");
    let (server, client) = (ca.server(&["127.0.0.1"]), ca.client());
    let ca_file = ws.write("ca.pem", &ca.pem);
    let conf = format!(
        "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: true\n}}\n",
        toml_str(ws.write("server.crt", &server.cert_pem)),
        toml_str(ws.write("server.key", &server.key_pem)),
        toml_str(&ca_file),
    );
    let Some(nats) = NatsServer::start_with(&ws, Some(&conf)) else {
        return;
    };
    let tls = format!(
        "tls.ca_file = {}\ntls.crt_file = {}\ntls.key_file = {}\n",
        toml_str(&ca_file),
        toml_str(ws.write("client.crt", &client.cert_pem)),
        toml_str(ws.write("client.key", &client.key_pem)),
    );
    let hook = Endpoint::start();
    let central_ws = Workspace::new();
    let central = Proc::spawn(run_cmd(&central_ws.config(&format!(
        r#"[sources.edge]
type = "nats"
url = {url}
stream = "GOFF"
consumer = "central"
subjects = ["goff.events"]
create = true
{tls}
[sinks.webhook]
type = "webhook"
inputs = ["edge"]
endpoint_url = {hook}
flush_interval = "100ms"
"#,
        url = toml_str(nats.url()),
        hook = toml_str(hook.url()),
    ))));
    assert!(
        central.wait_stderr("reading the consumer", WAIT).is_some(),
        "{}",
        central.stderr_now()
    );
    let edge = |tls: &str| {
        let edge_ws = Workspace::new();
        let input = edge_ws.write("events.json", small_lines(0..20));
        let config = edge_ws.config(&format!(
            r#"[sources.in]
type = "file"
include = [{input}]

[sinks.central]
type = "nats"
inputs = ["in"]
url = {url}
subject = "goff.events"
timeout = "1s"
retry_initial_backoff = "100ms"
retry_max_duration = "1s"
{tls}
"#,
            input = toml_str(&input),
            url = toml_str(nats.url().replace("nats://", "tls://")),
        ));
        run_once(&config)
    };
    let untrusting = edge("");
    untrusting.assert_code(2);
    assert_eq!(
        untrusting.summary_value("events_delivered"),
        0,
        "{untrusting}"
    );
    assert!(untrusting.stderr.contains("UnknownIssuer"), "{untrusting}");

    let trusting = edge(&tls);
    trusting.assert_code(0);
    assert_eq!(trusting.summary_value("events_delivered"), 20, "{trusting}");
    let delivered = hook.wait_for_delivered(20, WAIT);
    assert_eq!(delivered.len(), 20, "{}", central.stderr_now());
}
