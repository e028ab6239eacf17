//! A webhook receiver for trying a setup (`flaghook receive`) and for the quick start
//! (`flaghook demo`): it verifies each request's signature (either scheme, see
//! [`crate::sign`]), decodes a gzip or zstd body, and reports what it got. A request whose
//! signature does not verify is answered 401: a sender retries it, and shows the problem.
//!
//! It is safe to leave running: [`Limits`] bound what one client can hold (a body's size,
//! the time to send headers and body) and how many clients are served at once, and the
//! accept loop backs off when the process runs out of file descriptors.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{CONNECTION, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Serialize, Serializer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::compression::{Compression, DecodeError};
use crate::sign::{Scheme, StandardHeaders};
use crate::sink::webhook::Secret;

/// How [`serve`] checks signatures.
#[derive(Debug, Clone)]
pub struct Check {
    pub scheme: Scheme,
    /// The HMAC key; for Standard Webhooks, the bytes its `whsec_` form encodes.
    pub key: Secret,
    /// Standard Webhooks: how far `webhook-timestamp` may be from now, either way.
    pub tolerance: Duration,
}

/// What one client may hold: each bound ends a request or a connection that would
/// otherwise keep memory, a file descriptor or a task forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Larger bodies get 413: refused by their Content-Length before any of it is read,
    /// or as soon as the bytes read pass it.
    pub max_body: u64,
    /// Time to send a request's headers, from the connection's start or the previous
    /// response; then the connection is closed.
    pub header_timeout: Duration,
    /// Time to send a request's body once its headers are in; then 408.
    pub body_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 10 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// What one request carried.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub events: usize,
    pub meta: serde_json::Value,
    /// "verified", "invalid", "missing" (no header), "stale" (a Standard Webhooks timestamp
    /// outside the tolerance), or "unchecked" (no secret given).
    pub signature: &'static str,
    /// Why the signature did not verify, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_error: Option<String>,
    /// `webhook-id`, when the request had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<String>,
    /// The body's `Content-Encoding`: "none", "gzip" or "zstd".
    pub encoding: &'static str,
    /// The body's bytes as received (what the signature covers).
    pub bytes: usize,
    /// The body's bytes once decoded.
    pub decoded_bytes: usize,
    pub first_event: Option<serde_json::Value>,
    /// Why the decoded body is not GO Feature Flag's webhook body (not JSON, or no `events`
    /// array), when it is not: `events` is 0 then, and this says why, so that a body no
    /// JSON reader takes (a number beyond a float, a value nested deeper than 128 levels)
    /// is not shown as an empty batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_error: Option<String>,
}

impl Received {
    /// Whether the request is accepted: its signature verified, or not checked.
    pub fn accepted(&self) -> bool {
        matches!(self.signature, "verified" | "unchecked")
    }
}

/// Why a request was answered with an error instead of being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The body is larger than [`Limits::max_body`]: `declared` by its Content-Length,
    /// or counted while reading when `None`.
    TooLarge { limit: u64, declared: Option<u64> },
    /// The body did not arrive within [`Limits::body_timeout`].
    TooSlow { limit: Duration },
    /// The body broke off (the client is usually gone and gets no answer).
    Broken(String),
    /// The body's `Content-Encoding` is not one `receive` decodes.
    Encoding(String),
    /// The body is not in its `Content-Encoding`.
    Undecodable(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::TooSlow { .. } => StatusCode::REQUEST_TIMEOUT,
            Refusal::Broken(_) | Refusal::Undecodable(_) => StatusCode::BAD_REQUEST,
            Refusal::Encoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooLarge {
                limit,
                declared: Some(declared),
            } => write!(
                f,
                "body of {declared} bytes (Content-Length) is over the {limit}-byte limit (--max-body)"
            ),
            Refusal::TooLarge {
                limit,
                declared: None,
            } => write!(f, "body passed the {limit}-byte limit (--max-body)"),
            Refusal::TooSlow { limit } => write!(
                f,
                "body not received within {} (--body-timeout)",
                humantime::format_duration(*limit)
            ),
            Refusal::Broken(e) => write!(f, "body broke off: {e}"),
            Refusal::Encoding(e) => write!(
                f,
                "Content-Encoding {e:?} is not supported: send none, gzip or zstd"
            ),
            Refusal::Undecodable(e) => write!(f, "body is {e}"),
        }
    }
}

/// One request's outcome; `receive` prints it as one JSON line that starts with the
/// status it answered: `{"status":200,"events":..}` or `{"status":413,"error":".."}`.
#[derive(Debug, Clone)]
pub enum Report {
    Received(Box<Received>),
    Refused(Refusal),
}

impl Report {
    pub fn status(&self) -> StatusCode {
        match self {
            Report::Received(r) if r.accepted() => StatusCode::OK,
            Report::Received(_) => StatusCode::UNAUTHORIZED,
            Report::Refused(refusal) => refusal.status(),
        }
    }
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Line<T> {
            status: u16,
            #[serde(flatten)]
            rest: T,
        }
        #[derive(Serialize)]
        struct Error {
            error: String,
        }
        let status = self.status().as_u16();
        match self {
            Report::Received(received) => Line {
                status,
                rest: received,
            }
            .serialize(s),
            Report::Refused(refusal) => Line {
                status,
                rest: Error {
                    error: refusal.to_string(),
                },
            }
            .serialize(s),
        }
    }
}

/// The headers that say how a request is signed and encoded.
#[derive(Debug, Clone, Default)]
pub struct Signing {
    pub hub: Option<String>,
    pub webhook_id: Option<String>,
    pub webhook_timestamp: Option<String>,
    pub webhook_signature: Option<String>,
}

impl Signing {
    fn from_headers(headers: &hyper::HeaderMap) -> Self {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Signing {
            hub: get("x-hub-signature-256"),
            webhook_id: get("webhook-id"),
            webhook_timestamp: get("webhook-timestamp"),
            webhook_signature: get("webhook-signature"),
        }
    }
}

/// Checks a request: its signature over `raw` (the bytes received), and what `decoded`
/// (the body once decoded) holds.
pub fn inspect(
    raw: &[u8],
    decoded: &[u8],
    encoding: Compression,
    signing: &Signing,
    check: Option<&Check>,
) -> Received {
    let (signature, signature_error) = match check {
        None => ("unchecked", None),
        Some(check) => verify(raw, signing, check),
    };
    let (parsed, body_error) = match serde_json::from_slice::<serde_json::Value>(decoded) {
        Ok(parsed) => (parsed, None),
        Err(e) => (serde_json::Value::Null, Some(format!("not JSON: {e}"))),
    };
    let events = parsed.get("events").and_then(|e| e.as_array());
    let body_error = body_error.or_else(|| {
        events
            .is_none()
            .then(|| "no `events` array: not GO Feature Flag's webhook body".to_owned())
    });
    Received {
        events: events.map_or(0, Vec::len),
        meta: parsed.get("meta").cloned().unwrap_or_default(),
        signature,
        signature_error,
        webhook_id: signing.webhook_id.clone(),
        encoding: encoding.as_str(),
        bytes: raw.len(),
        decoded_bytes: decoded.len(),
        first_event: events.and_then(|e| e.first().cloned()),
        body_error,
    }
}

/// The verdict on a request's signature, and why it failed.
fn verify(raw: &[u8], signing: &Signing, check: &Check) -> (&'static str, Option<String>) {
    let key = check.key.expose();
    match check.scheme {
        Scheme::Hub => match &signing.hub {
            None => ("missing", Some("no X-Hub-Signature-256 header".into())),
            Some(sig) if crate::sign::verify(key, raw, sig) => ("verified", None),
            Some(_) => (
                "invalid",
                Some("X-Hub-Signature-256 does not match this body and secret".into()),
            ),
        },
        Scheme::StandardWebhooks => {
            let (Some(id), Some(timestamp), Some(signature)) = (
                &signing.webhook_id,
                &signing.webhook_timestamp,
                &signing.webhook_signature,
            ) else {
                let why = "webhook-id, webhook-timestamp and webhook-signature are not all there";
                return ("missing", Some(why.into()));
            };
            let headers = StandardHeaders {
                id,
                timestamp,
                signature,
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match crate::sign::verify_standard(key, headers, raw, now, check.tolerance) {
                Ok(()) => ("verified", None),
                Err(rejected) => (rejected.as_str(), Some(rejected.to_string())),
            }
        }
    }
}

/// Serves until `shutdown`, calling `on_request` once per request with what it answered:
/// 200 for a body read whole within `limits`, else the [`Refusal`]'s status.
///
/// A connection needs a slot (`limits.max_connections`) before it is accepted, so a flood
/// waits in the kernel's backlog instead of taking descriptors. Should accepting still
/// fail (EMFILE and the like last until a connection closes; retrying at once would spin
/// a core), the loop pauses between attempts (see `AcceptBackoff`).
pub async fn serve(
    listener: TcpListener,
    check: Option<Check>,
    limits: Limits,
    on_request: Arc<dyn Fn(Report) + Send + Sync>,
    shutdown: CancellationToken,
) {
    let handler = Arc::new(Handler {
        check,
        limits,
        on_request,
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = AcceptBackoff::default();
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                tokio::spawn(handler.clone().serve_connection(stream, slot));
            }
            Err(e) => {
                let pause = backoff.failed(&e);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Pauses between failed accepts: 10ms doubling to 1s, back to 10ms after a success so
/// that a freed descriptor is used soon. Near the limit, accepts fail and succeed in
/// turn as connections close; the failures form one burst until none came for
/// [`AcceptBackoff::QUIET`], and each burst is logged once.
struct AcceptBackoff {
    next: Duration,
    last_failure: Option<Instant>,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            next: Self::FIRST,
            last_failure: None,
        }
    }
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);
    const QUIET: Duration = Duration::from_secs(30);

    fn failed(&mut self, error: &std::io::Error) -> Duration {
        let now = Instant::now();
        if self
            .last_failure
            .is_none_or(|last| now.duration_since(last) > Self::QUIET)
        {
            tracing::warn!(
                "cannot accept connections ({error}); retrying with pauses up to {}",
                humantime::format_duration(Self::MAX)
            );
        }
        self.last_failure = Some(now);
        let pause = self.next;
        self.next = (pause * 2).min(Self::MAX);
        pause
    }

    fn succeeded(&mut self) {
        self.next = Self::FIRST;
    }
}

/// What every connection shares.
struct Handler {
    check: Option<Check>,
    limits: Limits,
    on_request: Arc<dyn Fn(Report) + Send + Sync>,
}

impl Handler {
    /// Serves one connection; its `slot` is given back when it closes.
    async fn serve_connection(self: Arc<Self>, stream: TcpStream, _slot: OwnedSemaphorePermit) {
        let _ = stream.set_nodelay(true);
        let header_timeout = self.limits.header_timeout;
        let service = service_fn(move |request| {
            let handler = self.clone();
            async move { Ok::<_, Infallible>(handler.handle(request).await) }
        });
        let served = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .await;
        if let Err(e) = served {
            tracing::debug!("connection closed: {e}");
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let signing = Signing::from_headers(request.headers());
        let encoding = request
            .headers()
            .get(CONTENT_ENCODING)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let report = match self.read(request.into_body(), encoding.as_deref()).await {
            Ok((raw, decoded, encoding)) => Report::Received(Box::new(inspect(
                &raw,
                &decoded,
                encoding,
                &signing,
                self.check.as_ref(),
            ))),
            Err(refusal) => Report::Refused(refusal),
        };
        let response = respond(&report);
        (self.on_request)(report);
        response
    }

    /// The body as received and decoded (each at most `max_body`), and its encoding.
    async fn read(
        &self,
        body: Incoming,
        encoding: Option<&str>,
    ) -> Result<(Bytes, Vec<u8>, Compression), Refusal> {
        let compression = match encoding.map(Compression::from_header) {
            None => Compression::None,
            Some(Some(known)) => known,
            Some(None) => {
                let shown: String = encoding.unwrap_or_default().chars().take(64).collect();
                return Err(Refusal::Encoding(shown));
            }
        };
        let raw = self.read_body(body).await?;
        let limit = self.limits.max_body;
        let decoded = match compression {
            Compression::None => raw.to_vec(),
            _ => compression.decode(&raw, limit).map_err(|e| match e {
                DecodeError::TooLarge => Refusal::TooLarge {
                    limit,
                    declared: None,
                },
                DecodeError::Invalid(why) => Refusal::Undecodable(why),
            })?,
        };
        Ok((raw, decoded, compression))
    }

    /// The whole body, never more than `max_body` of it in memory.
    async fn read_body(&self, body: Incoming) -> Result<Bytes, Refusal> {
        let limit = self.limits.max_body;
        let declared = body.size_hint().lower();
        if declared > limit {
            return Err(Refusal::TooLarge {
                limit,
                declared: Some(declared),
            });
        }
        let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
        match tokio::time::timeout(self.limits.body_timeout, limited.collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<LengthLimitError>() => Err(Refusal::TooLarge {
                limit,
                declared: None,
            }),
            Ok(Err(e)) => Err(Refusal::Broken(e.to_string())),
            Err(_) => Err(Refusal::TooSlow {
                limit: self.limits.body_timeout,
            }),
        }
    }
}

/// 200 with an empty body, 401 with why the signature failed, or the refusal's status with
/// its reason; a refused request's body is left unread, so the connection cannot carry
/// another request.
fn respond(report: &Report) -> Response<Full<Bytes>> {
    let builder = Response::builder().status(report.status());
    let response = match report {
        Report::Received(r) if r.accepted() => builder.body(Full::new(Bytes::new())),
        Report::Received(r) => builder
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(format!(
                "signature {}: {}\n",
                r.signature,
                r.signature_error.as_deref().unwrap_or_default()
            )))),
        Report::Refused(refusal) => builder
            .header(CONNECTION, "close")
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(format!("{refusal}\n")))),
    };
    response.expect("a status and fixed headers make a valid response")
}
