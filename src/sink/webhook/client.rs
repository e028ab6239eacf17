//! The webhook sink's HTTP client: keep-alive connections with TCP_NODELAY, https with
//! rustls (verified against the roots `tls` gives, see `crate::tls`), straight or through a
//! proxy (see `proxy.rs`), and a bounded read of every response.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, LOCATION, RETRY_AFTER};
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;

use super::config::{without_credentials, WebhookSpec};
use super::proxy::{Forward, Proxy};
use super::request::{Signed, Template};
use super::status::{decide, parse_retry_after};
use crate::sink::pipeline::{MessageId, Outcome};
use crate::sink::retry::Decision;
use crate::tls::TlsSpec;

/// Builds and sends GO Feature Flag's request.
pub(crate) struct Poster {
    /// The sink's name, for logs.
    sink: String,
    transport: Transport,
    /// `" through the proxy set by NAME"`, or nothing: for messages.
    via: String,
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
    pub(crate) fn new(name: &str, spec: &WebhookSpec) -> Self {
        let via = match &spec.proxy {
            Some(proxy) => {
                tracing::info!(
                    sink = name,
                    "sending through the proxy set by {}",
                    proxy.origin
                );
                format!(" through the proxy set by {}", proxy.origin)
            }
            None => String::new(),
        };
        Poster {
            sink: name.to_owned(),
            transport: Transport::new(spec.tls.as_ref(), spec.proxy.as_ref()),
            via,
            template: spec.template.clone(),
            timeout: spec.timeout,
            retry_on: spec.retry_on.clone(),
        }
    }

    /// The exact bytes sent for `events` (already encoded JSON objects), and their
    /// signature; `id` is the batch's.
    pub(crate) fn prepare<'a>(
        &self,
        events: impl Iterator<Item = &'a [u8]> + Clone,
        id: &MessageId,
    ) -> Signed {
        self.template.sign(events, id)
    }

    /// [`Poster::prepare`] for a body already built (see `crate::batch`): it starts with
    /// [`Poster::body_prefix`].
    pub(crate) fn prepare_body(&self, body: Bytes, id: &MessageId) -> Signed {
        self.template.sign_body(body, id)
    }

    /// The start of every body: `{"meta":{...},"events":[`.
    pub(crate) fn body_prefix(&self) -> Bytes {
        self.template.prefix()
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
        let via = &self.via;
        match tokio::time::timeout(self.timeout, self.transport.request(request)).await {
            Ok(Ok(response)) => Attempt::Answered(self.answer(response).await),
            Ok(Err(e)) if closed_before_response(&e) => {
                Attempt::Closed(format!("request failed{via}: {}", error_chain(&e)))
            }
            Ok(Err(e)) => Attempt::Failed(format!("request failed{via}: {}", error_chain(&e))),
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

/// The sink's one way to its endpoint, chosen at start-up by the endpoint's scheme and
/// its proxy: each a keep-alive client over its own kind of connection.
enum Transport {
    Http(Client<HttpConnector, Full<Bytes>>),
    Https(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
    /// Plain http, each request sent whole to the proxy.
    HttpProxy(Client<Forward, Full<Bytes>>),
    /// TLS to the endpoint inside a `CONNECT` tunnel through the proxy.
    HttpsProxy(Client<HttpsConnector<Tunnel<HttpConnector>>, Full<Bytes>>),
}

type HttpsConnector<T> = hyper_rustls::HttpsConnector<T>;

impl Transport {
    /// `tls` is set for an https endpoint (see `WebhookSpec::tls`).
    fn new(tls: Option<&TlsSpec>, proxy: Option<&Proxy>) -> Self {
        let builder = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .clone();
        match (tls, proxy) {
            (None, None) => Transport::Http(builder.build(tcp())),
            (Some(tls), None) => Transport::Https(builder.build(https(tls, tcp()))),
            (None, Some(proxy)) => {
                Transport::HttpProxy(builder.build(Forward::new(proxy.uri.clone(), tcp())))
            }
            (Some(tls), Some(proxy)) => {
                let mut tunnel = Tunnel::new(proxy.uri.clone(), tcp());
                if let Some(auth) = &proxy.authorization {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Transport::HttpsProxy(builder.build(https(tls, tunnel)))
            }
        }
    }

    fn request(&self, request: Request<Full<Bytes>>) -> ResponseFuture {
        match self {
            Transport::Http(client) => client.request(request),
            Transport::Https(client) => client.request(request),
            Transport::HttpProxy(client) => client.request(request),
            Transport::HttpsProxy(client) => client.request(request),
        }
    }
}

/// TCP connections, to the endpoint or to its proxy (for any scheme: TLS is layered on
/// them for https).
fn tcp() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    http
}

/// TLS over `connector`'s connections, verified as `tls` says.
fn https<T>(tls: &TlsSpec, connector: T) -> HttpsConnector<T> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls.config).clone())
        .https_only();
    let builder = match &tls.server_name {
        Some(name) => builder
            .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name.clone())),
        None => builder,
    };
    builder.enable_http1().wrap_connector(connector)
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
