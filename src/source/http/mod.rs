//! `type = "http"`: events POSTed over HTTP/1.1 (or HTTPS), as Vector's `http` sink and GO
//! Feature Flag's webhook exporter send them.
//!
//! A request is answered only after its lines went through the `Keeper` (`source::keep`):
//! `200` means they are in the source's journal and fsynced (whatever `journal_fsync`
//! says), from which the sinks read them as a `tcp` source's; anything else means the
//! client should send the body again (Vector's `http` sink retries every status but 2xx,
//! with back-off). The answer:
//!
//! | status | when |
//! |---|---|
//! | 200 `{"accepted":N,"rejected":M}` | the body's lines are in the journal, on the disk; `M` lines were not JSON objects (or too long) and are dead-lettered by the sinks, the first one named in `first_rejected` |
//! | 400 | the body is not JSON at all, or could not be decompressed or read |
//! | 401 | `auth.token` is set and the `Authorization: Bearer` header does not carry it, or `verify_secret` is set and `X-Hub-Signature-256` is missing or wrong |
//! | 404, 405 | another path than `path`; a method other than POST or PUT |
//! | 413 | the body, or what it decompresses to, is larger than `max_body_bytes` |
//! | 415 | a `Content-Encoding` other than gzip or zstd |
//! | 503 `Retry-After: 1` | the journal holds `journal_max_bytes` (nothing of the body was kept), or flaghook is stopping and could not write it |
//!
//! Back-pressure: a full journal answers 503 at once, and the client comes back later (a
//! client that gives up on a slow answer sends the body again: at least once). Connections
//! hold `ConnectionSlots` as `tcp`'s do. At shutdown, requests being read are answered,
//! then connections close.

pub mod body;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use self::body::{Encoding, NotJson, Undecodable};
use super::connections::{check_limits, ConnectionSlots, Tracked};
use super::keep::{Keeper, NotKept};
use super::listener::accept_loop;
use crate::config::{check_max_line_bytes, socket_addr, ByteSize, HumanDuration};
use crate::journal::{self, Appender, Fsync, JournalSpec};
use crate::sink::webhook::Secret;

/// The largest `max_body_bytes`: a body is held whole while its lines are cut.
const MAX_BODY_BYTES: u64 = 1 << 30;
/// Time to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time to send a body once its headers are in.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for a client's TLS handshake.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);

fn default_path() -> String {
    "/".to_owned()
}

fn default_max_body_bytes() -> ByteSize {
    ByteSize(10 << 20)
}

fn default_max_connections() -> usize {
    64
}

fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

/// `[sources.NAME] type = "http"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to listen on, e.g. "127.0.0.1:8080".
    pub address: String,
    /// The path clients POST to. Default "/".
    #[serde(default = "default_path")]
    pub path: String,
    /// A larger body, or one that decompresses to more, gets 413. Default "10MiB".
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: ByteSize,
    /// Longer lines (array elements, events) are rejected as bad input. Default 102400.
    #[serde(default = "super::default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Connections served at once. Default 64 (each may hold a body of `max_body_bytes`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed. Default "5m".
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// The envelope field that holds the event. Default: `message`, then `log`.
    #[serde(default)]
    pub field: Option<String>,
    /// Requests must carry `Authorization: Bearer <token>`.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Requests must carry a valid `X-Hub-Signature-256` made with this secret.
    #[serde(default, deserialize_with = "optional_secret")]
    pub verify_secret: Option<Secret>,
    /// Serve HTTPS with this certificate and key.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The journal starts a new segment file once one holds this many bytes. Default "64MiB".
    #[serde(default = "journal::default_segment_bytes")]
    pub journal_segment_bytes: ByteSize,
    /// Bytes the journal holds on the disk before requests get 503. Default "1GiB".
    #[serde(default = "journal::default_max_bytes")]
    pub journal_max_bytes: ByteSize,
    /// Accepted as for `tcp`; every body is fsynced before its 200 either way.
    #[serde(default = "journal::default_fsync")]
    pub journal_fsync: Fsync,
}

/// `auth = { token = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(deserialize_with = "secret")]
    pub token: Secret,
}

/// `tls = { crt_file = "...", key_file = "..." }`: PEM files, relative to the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub crt_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    Ok(Secret::new(String::deserialize(d)?.into_bytes()))
}

fn optional_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    secret(d).map(Some)
}

/// An HTTP source's settings, parsed: the address resolved, the certificate loaded.
#[derive(Debug, Clone)]
pub struct HttpSpec {
    pub address: SocketAddr,
    pub path: String,
    pub max_body_bytes: usize,
    pub max_line_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub envelope: Arc<[String]>,
    /// SHA-256 of the bearer token: compared in constant time, whatever its length.
    token: Option<TokenDigest>,
    pub verify_secret: Option<Secret>,
    pub tls: Option<Tls>,
    pub journal: JournalSpec,
}

/// A digest of the expected bearer token.
#[derive(Clone)]
struct TokenDigest([u8; 32]);

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(<redacted>)")
    }
}

impl TokenDigest {
    fn of(token: &[u8]) -> Self {
        TokenDigest(Sha256::digest(token).into())
    }

    fn matches(&self, given: &[u8]) -> bool {
        bool::from(TokenDigest::of(given).0.ct_eq(&self.0))
    }
}

/// The listener's TLS settings, loaded.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    crt_file: PathBuf,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls(certificate {})", self.crt_file.display())
    }
}

impl HttpSpec {
    /// Whether requests must carry `auth.token`.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }
}

impl HttpConfig {
    /// Checks every key (at `key`, the source's), resolves the address and loads the
    /// certificate; relative files are relative to `base`.
    pub fn build(self, key: &str, base: &Path) -> Result<HttpSpec> {
        check_max_line_bytes(key, self.max_line_bytes)?;
        check_limits(
            key,
            self.max_connections,
            self.idle_timeout.0,
            "max_connections = 64",
        )?;
        if self.max_body_bytes.0 > MAX_BODY_BYTES {
            bail!("`{key}.max_body_bytes` is too large: at most 1GiB (example: max_body_bytes = \"10MiB\")");
        }
        let uri_path = self.path.parse::<hyper::http::uri::PathAndQuery>().is_ok();
        if !self.path.starts_with('/') || self.path.contains(['?', '#']) || !uri_path {
            bail!("`{key}.path` = {:?} must be a path starting with `/`, without a query, spaces or other characters a request's path cannot hold unescaped (example: path = \"/events\")", self.path);
        }
        if self
            .auth
            .as_ref()
            .is_some_and(|a| a.token.expose().is_empty())
        {
            bail!("`{key}.auth.token` is empty (example: auth = {{ token = \"${{FLAGHOOK_TOKEN}}\" }})");
        }
        if self
            .verify_secret
            .as_ref()
            .is_some_and(|s| s.expose().is_empty())
        {
            bail!(
                "`{key}.verify_secret` is empty (example: verify_secret = \"${{WEBHOOK_SECRET}}\")"
            );
        }
        let tls = match self.tls {
            Some(tls) => Some(load_tls(key, &tls, base)?),
            None => None,
        };
        Ok(HttpSpec {
            address: socket_addr(&format!("{key}.address"), &self.address)?,
            path: self.path,
            max_body_bytes: usize::try_from(self.max_body_bytes.0).unwrap_or(usize::MAX),
            max_line_bytes: self.max_line_bytes,
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout.0,
            envelope: super::envelope(key, self.field.as_deref())?,
            token: self.auth.map(|a| TokenDigest::of(a.token.expose())),
            verify_secret: self.verify_secret,
            tls,
            journal: JournalSpec::build(
                key,
                self.journal_segment_bytes,
                self.journal_max_bytes,
                self.journal_fsync,
            )?,
        })
    }
}

/// Reads the certificate chain and key (PEM) into an acceptor.
fn load_tls(key: &str, tls: &TlsConfig, base: &Path) -> Result<Tls> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let example = "(example: tls = { crt_file = \"/etc/flaghook/tls.crt\", key_file = \"/etc/flaghook/tls.key\" })";
    let crt_file = base.join(&tls.crt_file);
    let key_file = base.join(&tls.key_file);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt_file)
        .and_then(|certs| certs.collect())
        .map_err(|e| {
            anyhow::anyhow!(
                "`{key}.tls.crt_file`: cannot read a PEM certificate from {}: {e} {example}",
                crt_file.display()
            )
        })?;
    if chain.is_empty() {
        bail!(
            "`{key}.tls.crt_file`: {} holds no PEM certificate {example}",
            crt_file.display()
        );
    }
    // The key's own bytes never reach a message: only the path and what kind of failure.
    let private = PrivateKeyDer::from_pem_file(&key_file).map_err(|e| {
        anyhow::anyhow!(
            "`{key}.tls.key_file`: cannot read a PEM private key from {}: {} {example}",
            key_file.display(),
            pem_problem(&e)
        )
    })?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .with_context(|| {
            format!("`{key}.tls`: the certificate and the key do not make a TLS server {example}")
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        crt_file,
    })
}

fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::NoItemsFound => "no private key in it".to_owned(),
        _ => "not a valid PEM file".to_owned(),
    }
}

/// Serves requests until shutdown, appending their lines to `journal`; with `once`, until
/// the first connections have all closed.
pub(crate) async fn run(
    spec: &HttpSpec,
    listener: TcpListener,
    journal: Appender,
    shutdown: CancellationToken,
    once: bool,
) {
    let handler = Arc::new(Handler {
        spec: spec.clone(),
        keeper: Keeper::new(journal, shutdown.clone()),
        shutdown: shutdown.clone(),
        refusals: RefusalLog::default(),
    });
    let slots = ConnectionSlots::new(spec.max_connections, spec.idle_timeout);
    accept_loop(
        listener,
        slots,
        spec.max_connections,
        once,
        &shutdown,
        |tasks, stream, peer, slot| {
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            tasks.spawn(async move { handler.serve_connection(slot.track(stream), peer).await });
        },
    )
    .await;
}

/// What every connection of a source shares.
struct Handler {
    spec: HttpSpec,
    keeper: Keeper,
    shutdown: CancellationToken,
    refusals: RefusalLog,
}

impl Handler {
    async fn serve_connection(self: Arc<Self>, stream: Tracked<TcpStream>, peer: SocketAddr) {
        match self.spec.tls.clone() {
            None => self.serve_http(TokioIo::new(stream), peer).await,
            Some(tls) => match tokio::time::timeout(TLS_TIMEOUT, tls.acceptor.accept(stream)).await
            {
                Ok(Ok(stream)) => self.serve_http(TokioIo::new(stream), peer).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake not done in time"),
            },
        }
    }

    async fn serve_http<IO>(self: Arc<Self>, io: TokioIo<IO>, peer: SocketAddr)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        let service = service_fn(move |request| {
            let handler = self.clone();
            async move { Ok::<_, Infallible>(handler.handle(request, peer).await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(io, service);
        tokio::pin!(connection);
        let served = tokio::select! {
            served = connection.as_mut() => served,
            _ = shutdown.cancelled() => {
                // The request being read is answered; no other is read.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = served {
            tracing::debug!(%peer, "connection closed: {e}");
        }
    }

    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        match self.take(request).await {
            Ok(taken) => answer(
                StatusCode::OK,
                serde_json::to_value(taken).expect("plain fields"),
            ),
            Err(refusal) => {
                // Clients retry both: logged once a minute at most.
                if matches!(
                    refusal.status,
                    StatusCode::UNAUTHORIZED | StatusCode::SERVICE_UNAVAILABLE
                ) {
                    self.refusals.log(peer, refusal.status, &refusal.reason);
                } else {
                    tracing::debug!(%peer, status = %refusal.status, "request refused: {}", refusal.reason);
                }
                refusal.response()
            }
        }
    }

    /// Checks a request, reads its body and journals its lines.
    async fn take(&self, request: Request<Incoming>) -> Result<Taken, Refusal> {
        let spec = &self.spec;
        if request.uri().path() != spec.path {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("nothing here: POST events to {}", spec.path),
            ));
        }
        if request.method() != Method::POST && request.method() != Method::PUT {
            return Err(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST (or PUT) events here".into(),
            ));
        }
        self.check_token(&request)?;
        let encoding = Encoding::from_header(header(&request, CONTENT_ENCODING.as_str()))
            .map_err(|e| Refusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, e))?;
        let signature = header(&request, "x-hub-signature-256").map(str::to_owned);
        let raw = self.read_body(request.into_body()).await?;
        if let Some(secret) = &spec.verify_secret {
            let valid = signature
                .as_deref()
                .is_some_and(|s| crate::sign::verify(secret.expose(), &raw, s));
            if !valid {
                let what = if signature.is_some() {
                    "invalid"
                } else {
                    "missing"
                };
                return Err(Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    format!("X-Hub-Signature-256 {what} (verify_secret is set)"),
                ));
            }
        }
        let (max_body, max_line) = (spec.max_body_bytes, spec.max_line_bytes);
        let parsed = tokio::task::spawn_blocking(move || {
            let body = body::decompress(raw, encoding, max_body).map_err(|e| match e {
                Undecodable::TooLarge => Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body decompresses to more than max_body_bytes ({max_body} bytes)"),
                ),
                Undecodable::Invalid(e) => Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot decompress the body: {e}"),
                ),
            })?;
            body::parse(&body, max_line)
                .map_err(|NotJson(e)| Refusal::new(StatusCode::BAD_REQUEST, e))
        })
        .await
        .expect("parsing a body does not panic")?;
        let empty = parsed.is_empty();
        let taken = Taken {
            accepted: parsed.accepted(),
            rejected: parsed.rejected,
            first_rejected: parsed.first_rejected,
        };
        if empty {
            return Ok(taken);
        }
        let kept = match parsed.text {
            Some(text) => self.keeper.keep_text_or_refuse(text).await,
            None => self.keeper.keep_or_refuse(&parsed.lines).await,
        };
        kept.map_err(|e| match e {
                NotKept::Full => Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the journal holds journal_max_bytes (the endpoint is behind): send the body again later".into(),
                ),
                NotKept::NotWritten => Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "flaghook is stopping and could not write the journal: send the body again".into(),
                ),
            })?;
        Ok(taken)
    }

    fn check_token(&self, request: &Request<Incoming>) -> Result<(), Refusal> {
        let Some(expected) = &self.spec.token else {
            return Ok(());
        };
        let given = header(request, AUTHORIZATION.as_str()).and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
        match given {
            Some(token) if expected.matches(token.trim().as_bytes()) => Ok(()),
            Some(_) => Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "wrong bearer token (auth.token)".into(),
            )),
            None => Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "no `Authorization: Bearer` token (auth.token is set)".into(),
            )),
        }
    }

    /// The whole body, never more than `max_body_bytes` of it in memory.
    async fn read_body(&self, body: Incoming) -> Result<Bytes, Refusal> {
        let limit = self.spec.max_body_bytes;
        let too_large = || {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than max_body_bytes ({limit} bytes)"),
            )
        };
        if body.size_hint().lower() > limit as u64 {
            return Err(too_large());
        }
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
            Ok(Err(e)) => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("the body broke off: {e}"),
            )),
            Err(_) => Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {}",
                    humantime::format_duration(BODY_TIMEOUT)
                ),
            )),
        }
    }
}

/// What a 200 says: lines handed on that are JSON objects, and those that are not.
#[derive(Debug, serde::Serialize)]
struct Taken {
    accepted: usize,
    rejected: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_rejected: Option<String>,
}

fn header<'a>(request: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A request answered with an error: its status and why.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: String,
}

impl Refusal {
    fn new(status: StatusCode, reason: String) -> Self {
        Refusal { status, reason }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let mut response = answer(self.status, serde_json::json!({ "error": self.reason }));
        let headers = response.headers_mut();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                headers.insert("www-authenticate", HeaderValue::from_static("Bearer"));
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                headers.insert(ALLOW, HeaderValue::from_static("POST, PUT"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert("retry-after", HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(format!("{body}\n"))))
        .expect("a status and fixed headers make a valid response")
}

/// Logs refused credentials (401) and a full journal (503) at most once a minute each: a
/// client with a wrong token, or one told to come back, retries.
#[derive(Debug, Default)]
struct RefusalLog {
    unauthorized: AtomicU64,
    unavailable: AtomicU64,
}

impl RefusalLog {
    fn log(&self, peer: SocketAddr, status: StatusCode, reason: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let slot = match status {
            StatusCode::UNAUTHORIZED => &self.unauthorized,
            _ => &self.unavailable,
        };
        let last = slot.load(Ordering::Relaxed);
        if now >= last + 60
            && slot
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(%peer, "refused a request ({}): {reason}; more within a minute are not logged", status.as_u16());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::topology::Plan;

    fn error(source: &str, dir: &Path) -> String {
        let text = format!(
            "[sources.h]\ntype = \"http\"\naddress = \"127.0.0.1:0\"\n{source}\n[sinks.w]\ntype = \"webhook\"\ninputs = [\"h\"]\nendpoint_url = \"http://127.0.0.1:9/\"\n"
        );
        let err = crate::config::parse(&text, &dir.join("f.toml"))
            .and_then(Plan::build)
            .unwrap_err();
        format!("{err:#}")
    }

    #[test]
    fn bad_settings_name_their_key_and_show_an_example() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        for (source, want) in [
            (
                "path = \"events\"",
                "`sources.h.path` = \"events\" must be a path starting with `/`",
            ),
            ("auth = { token = \"\" }", "`sources.h.auth.token` is empty"),
            (
                "auth = { tokn = \"x\" }",
                "`sources.h.auth.tokn`: unknown field",
            ),
            ("verify_secret = \"\"", "`sources.h.verify_secret` is empty"),
            (
                "max_body_bytes = 0",
                "`sources.h.max_body_bytes`: must be above zero",
            ),
            (
                "tls = { crt_file = \"missing.pem\", key_file = \"key.pem\" }",
                "`sources.h.tls.crt_file`: cannot read a PEM certificate from",
            ),
            (
                "tls = { crt_file = \"empty.pem\", key_file = \"key.pem\" }",
                "`sources.h.tls.crt_file`: ",
            ),
            (
                "tls = { crt_file = \"key.pem\" }",
                "`sources.h.tls`: missing field `key_file`",
            ),
            (
                "journal_segment_bytes = \"1KiB\"",
                "`sources.h.journal_segment_bytes` must be at least 4096",
            ),
            (
                "journal_max_bytes = \"1MiB\"",
                "`sources.h.journal_segment_bytes` must not exceed `sources.h.journal_max_bytes`",
            ),
            ("journal_fsync = \"sometimes\"", "`sources.h.journal_fsync`"),
        ] {
            let err = error(source, dir.path());
            assert!(err.contains(want), "{source}: {err}");
            assert!(err.contains("example"), "{err}");
        }
    }

    #[test]
    fn a_key_file_that_is_not_a_key_is_named_without_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let crt = "-----BEGIN CERTIFICATE-----\nMIIBnjCCAUOgAwIBAgIUenueUnj6tv/emcHxHlZHq7obRWkwCgYIKoZIzj0EAwIw\n-----END CERTIFICATE-----\n";
        std::fs::write(dir.path().join("c.pem"), crt).unwrap();
        std::fs::write(dir.path().join("k.pem"), "this-is-a-private-secret\n").unwrap();
        let err = error(
            "tls = { crt_file = \"c.pem\", key_file = \"k.pem\" }",
            dir.path(),
        );
        assert!(
            err.contains("`sources.h.tls.key_file`: cannot read a PEM private key"),
            "{err}"
        );
        assert!(!err.contains("this-is-a-private-secret"), "{err}");
    }
}
