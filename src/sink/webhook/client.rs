//! The webhook sink's HTTP client: keep-alive connections with TCP_NODELAY, https with
//! rustls and the platform's roots, and a bounded read of every response.

use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, LOCATION, RETRY_AFTER};
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::config::{without_credentials, WebhookSpec};
use super::request::{Signed, Template};
use super::retry::{decide, parse_retry_after, Decision};

/// The result of one POST.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) decision: Decision,
    /// The response's status; `None` when there was no response.
    pub(crate) status: Option<u16>,
    /// For logs and dead letters: the status and the start of the response body, or
    /// the transport error.
    pub(crate) detail: String,
}

/// Builds and sends GO Feature Flag's request.
pub(crate) struct Poster {
    /// The sink's name, for logs.
    sink: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    template: Template,
    timeout: Duration,
    retry_on: Vec<u16>,
}

impl fmt::Debug for Poster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poster")
            .field("template", &self.template)
            .finish()
    }
}

impl Poster {
    pub(crate) fn new(name: &str, spec: &WebhookSpec) -> Result<Self> {
        let https = spec.template.is_https();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector(name, https)?);
        Ok(Poster {
            sink: name.to_owned(),
            client,
            template: spec.template.clone(),
            timeout: spec.timeout,
            retry_on: spec.retry_on.clone(),
        })
    }

    /// The exact body for `events` (already encoded JSON objects), and its signature.
    pub(crate) fn prepare<'a>(&self, events: impl Iterator<Item = &'a Bytes> + Clone) -> Signed {
        self.template.sign(events)
    }

    /// POSTs a prepared body and decides what happens to its events.
    ///
    /// A request whose connection closed before any response is sent once more at once:
    /// an endpoint that closes a kept-alive connection just as the next request goes out
    /// has not refused anything, and the next connection is a fresh one (the failed one
    /// left the pool). Any other failure is for the caller's backoff.
    pub(crate) async fn post(&self, signed: Signed) -> Outcome {
        let attempt = || self.attempt(self.template.request(&signed));
        let result = match attempt().await {
            Attempt::Closed(detail) => {
                tracing::debug!(
                    sink = %self.sink,
                    "{detail}: the endpoint closed the connection; sending again at once"
                );
                attempt().await
            }
            other => other,
        };
        match result {
            Attempt::Answered(outcome) => outcome,
            Attempt::Closed(detail) | Attempt::Failed(detail) => Outcome {
                decision: Decision::Retry { after: None },
                status: None,
                detail,
            },
        }
    }

    /// One request: its response's status decides, within `timeout`.
    async fn attempt(&self, request: Request<Full<Bytes>>) -> Attempt {
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Attempt::Answered(self.answer(response).await),
            Ok(Err(e)) if closed_before_response(&e) => {
                Attempt::Closed(format!("request failed: {}", error_chain(&e)))
            }
            Ok(Err(e)) => Attempt::Failed(format!("request failed: {}", error_chain(&e))),
            Err(_) => Attempt::Failed(format!(
                "no response within {}",
                humantime::format_duration(self.timeout)
            )),
        }
    }

    /// The decision is the status's. The body is read only to reuse the connection (a
    /// 2xx) or to quote it (anything else), and only a bounded prefix of it for a bounded
    /// time: a body that trickles or never ends is dropped with its connection, and a 2xx
    /// stays a delivery.
    async fn answer(&self, response: Response<Incoming>) -> Outcome {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let decision = decide(status, retry_after, &self.retry_on);
        let redirect = status
            .is_redirection()
            .then(|| redirect_note(response.headers().get(LOCATION)));
        let limit = if status.is_success() {
            OK_BODY_LIMIT
        } else {
            EXCERPT_LIMIT
        };
        let prefix = read_prefix(response.into_body(), limit, BODY_WAIT).await;
        let text = String::from_utf8_lossy(&prefix[..prefix.len().min(EXCERPT_LIMIT)]);
        let detail = match redirect {
            Some(note) => format!("status {status}, {note}: {text}"),
            None => format!("status {status}: {text}"),
        };
        Outcome {
            decision,
            status: Some(status.as_u16()),
            detail,
        }
    }
}

/// http and https connections. Without the platform's root certificates, only http works
/// (an https endpoint is an error at start).
fn connector(name: &str, https: bool) -> Result<hyper_rustls::HttpsConnector<HttpConnector>> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    match builder.with_native_roots() {
        Ok(b) => Ok(b.https_or_http().enable_http1().wrap_connector(http)),
        Err(e) if https => Err(anyhow!(e)).context(format!(
            "sink `{name}`: cannot load the platform's root certificates for https"
        )),
        Err(_) => {
            let tls = rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            Ok(hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http))
        }
    }
}

/// How much of a 2xx body is read (to reuse its connection); a longer one is dropped.
const OK_BODY_LIMIT: usize = 64 * 1024;
/// How much of any other body is read and quoted in logs and dead letters.
const EXCERPT_LIMIT: usize = 1024;
/// The longest wait for a body once the status is in.
const BODY_WAIT: Duration = Duration::from_secs(1);

/// How one request ended.
enum Attempt {
    /// A response (its status decides).
    Answered(Outcome),
    /// The connection closed before any response: see [`closed_before_response`].
    Closed(String),
    /// No response: the connection could not be made, or the timeout passed.
    Failed(String),
}

/// Whether a request failed on a connection that closed (or was reset) before its
/// response: what a kept-alive connection does when the endpoint closed it. hyper's own
/// retry (`retry_canceled_requests`) covers only a request not yet written when the
/// close is seen; this covers one written into a connection the endpoint just closed.
fn closed_before_response(e: &hyper_util::client::legacy::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    if e.is_connect() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), BrokenPipe | ConnectionAborted | ConnectionReset) {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// For a 3xx: where it points (without credentials), and that flaghook does not follow it.
fn redirect_note(location: Option<&HeaderValue>) -> String {
    const NOT_FOLLOWED: &str = "not followed: set endpoint_url to the endpoint's current URL";
    match location.map(|l| l.to_str()) {
        Some(Ok(url)) if url.len() <= 512 => {
            format!("redirect to {} {NOT_FOLLOWED}", without_credentials(url))
        }
        Some(_) => format!("redirect (to a Location not shown) {NOT_FOLLOWED}"),
        None => format!("redirect without a Location, {NOT_FOLLOWED}"),
    }
}

/// Up to `limit` bytes of `body`, read for at most `wait`; a read error ends it too.
async fn read_prefix(mut body: Incoming, limit: usize, wait: Duration) -> Vec<u8> {
    let mut prefix = Vec::new();
    let read = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                let room = limit - prefix.len();
                prefix.extend_from_slice(&data[..data.len().min(room)]);
                if prefix.len() >= limit {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(wait, read).await;
    prefix
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
