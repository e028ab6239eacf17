//! The webhook sink: GO Feature Flag's webhook exporter request, with delivery that
//! neither loses events nor hammers a failing endpoint.
//!
//! The request is exactly GO Feature Flag's: `POST`, `Content-Type: application/json`,
//! the user's headers, body `{"meta":{...},"events":[...]}` compact, and
//! `X-Hub-Signature-256: sha256=<hex>` over the exact body bytes when a secret is set.
//! [`decide`] is the one place that maps a response to what happens next.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::config::{ByteSize, HumanDuration};
use crate::event::{EventType, Schema};

fn default_flush_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_max_event_in_memory() -> usize {
    100_000
}
fn default_buffer_max_bytes() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_schema() -> Schema {
    Schema::Goff
}
fn default_event_types() -> Vec<EventType> {
    vec![EventType::Feature, EventType::Tracking]
}
fn default_retry_initial_backoff() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_retry_max_backoff() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// The statuses retried by default: the endpoint is busy or broken (408, 429, 5xx), or
/// misconfigured in a way the operator can fix without losing data (401, 403, 404).
pub fn default_retry_on_status() -> Vec<u16> {
    let mut statuses = vec![401, 403, 404, 408, 429];
    statuses.extend(500..=599);
    statuses
}

/// The HMAC key: bytes that never show in logs, errors or `Debug` output.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `secret`: the text's UTF-8 bytes.
fn secret_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Some(Secret(secret_string(d)?.into_bytes())))
}

/// `secret_hex`: bytes written as hex digits, for a secret that is not text.
fn secret_hex<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    // The decoder's own messages quote the offending character: say what is wrong instead.
    let bytes = hex::decode(secret_string(d)?).map_err(|e| {
        D::Error::custom(match e {
            hex::FromHexError::OddLength => "has an odd number of hex digits: write each byte as two (example: secret_hex = \"${WEBHOOK_SECRET_HEX}\")",
            _ => "is not hex: write each byte as two digits 0-9a-f (example: secret_hex = \"${WEBHOOK_SECRET_HEX}\")",
        })
    })?;
    Ok(Some(Secret(bytes)))
}

/// `secret_base64`: bytes written in standard base64 (with `=` padding).
fn secret_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(secret_string(d)?)
        .map_err(|_| {
            D::Error::custom("is not base64: use the standard alphabet with `=` padding (example: secret_base64 = \"${WEBHOOK_SECRET_BASE64}\")")
        })?;
    Ok(Some(Secret(bytes)))
}

/// A secret key's string. Read as any TOML value first, so that no message of serde's
/// (`invalid type: integer 123`) can quote a secret.
fn secret_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(text) => Ok(text),
        _ => Err(D::Error::custom(
            "must be a string (example: secret = \"${WEBHOOK_SECRET}\")",
        )),
    }
}

/// A header value may be written as one string or a list of strings.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

impl HeaderValues {
    pub fn values(&self) -> &[String] {
        match self {
            HeaderValues::One(v) => std::slice::from_ref(v),
            HeaderValues::Many(v) => v,
        }
    }
}

impl fmt::Debug for HeaderValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} value(s) redacted>", self.values().len())
    }
}

/// `[sinks.NAME] type = "webhook"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Sources this sink reads. Required.
    pub inputs: Vec<String>,
    /// Where to POST: an http or https URL. Required.
    pub endpoint_url: String,
    /// Signs each body with `X-Hub-Signature-256` when set: the text's UTF-8 bytes.
    #[serde(default, deserialize_with = "secret_text")]
    pub secret: Option<Secret>,
    /// The same, for a key that is not text: its bytes in hex. Excludes the other two.
    #[serde(default, deserialize_with = "secret_hex")]
    pub secret_hex: Option<Secret>,
    /// The same, for a key that is not text: its bytes in standard base64.
    #[serde(default, deserialize_with = "secret_base64")]
    pub secret_base64: Option<Secret>,
    /// String values sent in `meta`; `hostname` is added unless set.
    #[serde(default)]
    pub meta: BTreeMap<String, toml::Value>,
    /// Extra request headers; a value may be one string or a list.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValues>,
    /// Send at least this often while events are pending (FlushInterval). Default "60s".
    #[serde(default = "default_flush_interval")]
    pub flush_interval: HumanDuration,
    /// Send as soon as this many events are pending (MaxEventInMemory); also the largest
    /// batch. Default 100000.
    #[serde(default = "default_max_event_in_memory")]
    pub max_event_in_memory: usize,
    /// Request timeout. Default "10s".
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// "goff" (GO Feature Flag events, default) or "any" (any JSON object).
    #[serde(default = "default_schema")]
    pub schema: Schema,
    /// With schema "goff": which kinds to send. Default ["feature", "tracking"].
    #[serde(default = "default_event_types")]
    pub event_types: Vec<EventType>,
    /// Most events held in memory (read, not yet delivered). Default 2 x max_event_in_memory.
    #[serde(default)]
    pub buffer_max_events: Option<usize>,
    /// Most bytes of lines held in memory: a number or a size like "64MiB". Whichever of
    /// the two caps is reached first stops the sources. Default "64MiB".
    #[serde(default = "default_buffer_max_bytes")]
    pub buffer_max_bytes: ByteSize,
    /// First retry delay; doubles per failed attempt (full jitter). Default "1s".
    #[serde(default = "default_retry_initial_backoff")]
    pub retry_initial_backoff: HumanDuration,
    /// Longest retry delay. Default "60s".
    #[serde(default = "default_retry_max_backoff")]
    pub retry_max_backoff: HumanDuration,
    /// Dead-letter events still failing after this long. Default: retry forever.
    #[serde(default)]
    pub retry_max_duration: Option<HumanDuration>,
    /// Statuses that are retried. Default 401, 403, 404, 408, 429 and 500-599.
    #[serde(default = "default_retry_on_status")]
    pub retry_on_status: Vec<u16>,
    /// At shutdown, how long to keep trying to deliver. Default "30s".
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
}

const EXAMPLE: &str = r#"[sinks.webhook]
type = "webhook"
inputs = ["goff_files"]
endpoint_url = "https://collector.example/hook""#;

impl WebhookConfig {
    pub fn validate(&self, key: &str) -> Result<()> {
        endpoint_uri(key, &self.endpoint_url)?;
        if self.inputs.is_empty() {
            bail!("`{key}.inputs` is empty: name the sources this sink reads\n{EXAMPLE}");
        }
        if self.max_event_in_memory == 0 {
            bail!("`{key}.max_event_in_memory` must be at least 1 (example: max_event_in_memory = 100000)");
        }
        if self
            .buffer_max_events
            .is_some_and(|b| b < self.max_event_in_memory)
        {
            bail!("`{key}.buffer_max_events` must be at least `max_event_in_memory` (example: buffer_max_events = {})", 2 * self.max_event_in_memory);
        }
        if self.flush_interval.0.is_zero() || self.timeout.0.is_zero() {
            bail!("`{key}.flush_interval` and `{key}.timeout` must be above zero (example: flush_interval = \"60s\")");
        }
        if self.retry_initial_backoff.0.is_zero()
            || self.retry_max_backoff.0 < self.retry_initial_backoff.0
        {
            bail!("`{key}.retry_initial_backoff` must be above zero and at most `retry_max_backoff` (example: retry_initial_backoff = \"1s\")");
        }
        for (name, value) in &self.meta {
            if !value.is_str() {
                bail!("`{key}.meta.{name}` must be a string, got {value} (example: meta = {{ {name} = \"value\" }})");
            }
        }
        for (name, values) in &self.headers {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| anyhow!("`{key}.headers` has an invalid header name {name:?} (example: headers = {{ Authorization = [\"Bearer token\"] }})"))?;
            for v in values.values() {
                HeaderValue::from_str(v).map_err(|_| {
                    anyhow!("`{key}.headers.{name}` has a value that is not a valid header value")
                })?;
            }
        }
        self.validate_secret(key)?;
        if self.schema == Schema::Goff && self.event_types.is_empty() {
            bail!("`{key}.event_types` is empty: nothing would be sent (example: event_types = [\"feature\"])");
        }
        if let Some(s) = self
            .retry_on_status
            .iter()
            .find(|s| !(100..=599).contains(*s))
        {
            bail!("`{key}.retry_on_status` has {s}, which is not an HTTP status (example: retry_on_status = [408, 429, 503])");
        }
        Ok(())
    }

    /// At most one secret key is set, and not to nothing.
    fn validate_secret(&self, key: &str) -> Result<()> {
        let set: Vec<(&str, &Secret)> = [
            ("secret", &self.secret),
            ("secret_hex", &self.secret_hex),
            ("secret_base64", &self.secret_base64),
        ]
        .into_iter()
        .filter_map(|(name, secret)| Some((name, secret.as_ref()?)))
        .collect();
        match set.as_slice() {
            [] => Ok(()),
            [(name, secret)] if secret.0.is_empty() => bail!("`{key}.{name}` is empty: remove it to send unsigned, or set it (example: {name} = \"${{WEBHOOK_SECRET}}\")"),
            [_] => Ok(()),
            [(first, _), (second, _), ..] => bail!("`{key}.{first}` and `{key}.{second}` are both set: give the secret once, as text in `secret` or as bytes in `secret_hex` or `secret_base64` (example: secret = \"${{WEBHOOK_SECRET}}\")"),
        }
    }

    /// The key that signs requests, whichever way it was written.
    pub fn signing_secret(&self) -> Option<&Secret> {
        self.secret
            .as_ref()
            .or(self.secret_hex.as_ref())
            .or(self.secret_base64.as_ref())
    }

    pub fn buffer_max_events(&self) -> usize {
        self.buffer_max_events
            .unwrap_or(2 * self.max_event_in_memory)
    }

    pub fn buffer_max_bytes(&self) -> usize {
        usize::try_from(self.buffer_max_bytes.0).unwrap_or(usize::MAX)
    }
}

/// Parses and checks `endpoint_url`: http or https, with a host.
pub fn endpoint_uri(key: &str, url: &str) -> Result<Uri> {
    let problem = |why: &str| {
        anyhow!("`{key}.endpoint_url` = {url:?} {why} (example: endpoint_url = \"https://collector.example/hook\")")
    };
    let uri: Uri = url.parse().map_err(|_| problem("is not a valid URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(problem("must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(problem("has no host"));
    }
    Ok(uri)
}

/// What to do after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// 2xx: the events are delivered.
    Delivered,
    /// Send the same events again later (at least `after`, when the endpoint said so).
    Retry { after: Option<Duration> },
    /// 413: the batch is too large; send each half.
    Split,
    /// A 4xx that will not change: find the events the endpoint rejects (bisect) and
    /// dead-letter them; deliver the rest.
    Reject,
}

/// The retry policy, in one place.
///
/// - 2xx: delivered.
/// - A status in `retry_on` (default 401, 403, 404, 408, 429, 5xx): retry, honouring
///   `Retry-After`.
/// - 413: split the batch in two.
/// - Any other 4xx or 5xx: reject (bisect to the events at fault, dead-letter them).
/// - Anything else (1xx, 3xx: a misconfigured endpoint): retry.
///
/// Transport errors and timeouts are retried too; they never reach this function.
pub fn decide(status: StatusCode, retry_after: Option<Duration>, retry_on: &[u16]) -> Decision {
    let code = status.as_u16();
    if status.is_success() {
        Decision::Delivered
    } else if retry_on.contains(&code) {
        Decision::Retry { after: retry_after }
    } else if code == 413 {
        Decision::Split
    } else if status.is_client_error() || status.is_server_error() {
        Decision::Reject
    } else {
        Decision::Retry { after: retry_after }
    }
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Exponential backoff with full jitter: attempt `n` waits a random time in
/// `[initial, min(max, initial * 2^n)]`. The floor at `initial` keeps a failing endpoint
/// from being hit in a tight loop.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let ceiling = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    if ceiling <= initial {
        return initial;
    }
    rand::thread_rng().gen_range(initial..=ceiling)
}

/// The retry clock of one sink, shared by the delivery loop and `dead-letter replay`:
/// failed attempts in a row (for the backoff) and when they began (for
/// `retry_max_duration`).
#[derive(Debug)]
pub struct Retries {
    initial: Duration,
    max: Duration,
    max_duration: Option<Duration>,
    attempt: u32,
    failing_since: Option<std::time::Instant>,
}

/// What to do after a request that may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextTry {
    /// Send again after this delay (`Retry-After` when the endpoint gave one, else the
    /// backoff).
    After(Duration),
    /// Requests have failed for longer than `retry_max_duration` (the value): dead-letter.
    GiveUp(Duration),
}

impl Retries {
    pub fn new(delivery: &Delivery) -> Self {
        Retries {
            initial: delivery.retry_initial_backoff,
            max: delivery.retry_max_backoff,
            max_duration: delivery.retry_max_duration,
            attempt: 0,
            failing_since: None,
        }
    }

    /// A request got a 2xx: the next failure starts a new run of failures.
    pub fn succeeded(&mut self) {
        self.attempt = 0;
        self.failing_since = None;
    }

    /// A request failed and may be retried; `after` is its `Retry-After`.
    pub fn failed(&mut self, after: Option<Duration>) -> NextTry {
        let since = *self
            .failing_since
            .get_or_insert_with(std::time::Instant::now);
        if let Some(max) = self.max_duration {
            if since.elapsed() >= max {
                return NextTry::GiveUp(max);
            }
        }
        let delay = after.unwrap_or_else(|| backoff(self.attempt, self.initial, self.max));
        self.attempt = self.attempt.saturating_add(1);
        NextTry::After(delay)
    }
}

/// The result of one POST.
#[derive(Debug)]
pub struct Outcome {
    pub decision: Decision,
    /// For logs and dead letters: the status and the start of the response body, or
    /// the transport error.
    pub detail: String,
}

/// Builds and sends GO Feature Flag's request.
pub struct Poster {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    headers: HeaderMap,
    /// `{"meta":{...},"events":[`
    prefix: Bytes,
    secret: Option<Secret>,
    timeout: Duration,
    retry_on: Vec<u16>,
}

impl fmt::Debug for Poster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poster")
            .field("uri", &self.uri)
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

/// The `meta` object: the user's strings, plus `hostname` unless set.
pub fn meta_json(meta: &BTreeMap<String, toml::Value>) -> String {
    let mut map: BTreeMap<&str, String> = meta
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    if !map.contains_key("hostname") {
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        map.insert("hostname", host);
    }
    serde_json::to_string(&map).expect("strings serialize")
}

impl Poster {
    pub fn new(name: &str, config: &WebhookConfig) -> Result<Self> {
        let uri = endpoint_uri(&format!("sinks.{name}"), &config.endpoint_url)?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let connector = match builder.with_native_roots() {
            Ok(b) => b.https_or_http().enable_http1().wrap_connector(http),
            Err(e) if uri.scheme_str() == Some("https") => {
                return Err(anyhow!(e)).context(format!(
                    "sink `{name}`: cannot load the platform's root certificates for https"
                ));
            }
            Err(_) => {
                let tls = rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http)
            }
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let mut headers = HeaderMap::new();
        for (name, values) in &config.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).expect("validated");
            if header == CONTENT_TYPE {
                tracing::warn!(
                    sink = name,
                    "`headers` sets Content-Type, which is always application/json; ignoring it"
                );
                continue;
            }
            for v in values.values() {
                headers.append(header.clone(), HeaderValue::from_str(v).expect("validated"));
            }
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if !headers.contains_key(USER_AGENT) {
            headers.insert(
                USER_AGENT,
                HeaderValue::from_static(concat!("flaghook/", env!("CARGO_PKG_VERSION"))),
            );
        }
        let prefix = format!(r#"{{"meta":{},"events":["#, meta_json(&config.meta));
        Ok(Poster {
            client,
            uri,
            headers,
            prefix: Bytes::from(prefix),
            secret: config.signing_secret().cloned(),
            timeout: config.timeout.0,
            retry_on: config.retry_on_status.clone(),
        })
    }

    /// The exact body for `events` (already encoded JSON objects), and its signature.
    pub fn prepare<'a>(&self, events: impl Iterator<Item = &'a Bytes> + Clone) -> Signed {
        let body = body(&self.prefix, events);
        let signature = self
            .secret
            .as_ref()
            .map(|s| crate::sign::signature(s.expose(), &body));
        Signed { body, signature }
    }

    /// POSTs a prepared body and decides what happens to its events.
    pub async fn post(&self, signed: Signed) -> Outcome {
        let Signed { body, signature } = signed;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone());
        *request.headers_mut().expect("fresh builder") = self.headers.clone();
        if let Some(signature) = signature {
            request = request.header("X-Hub-Signature-256", signature);
        }
        let request = request.body(Full::new(body)).expect("valid request");
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Outcome {
                decision: Decision::Retry { after: None },
                detail: format!("request failed: {e:#}"),
            },
            Err(_) => Outcome {
                decision: Decision::Retry { after: None },
                detail: format!(
                    "no response within {}",
                    humantime::format_duration(self.timeout)
                ),
            },
        }
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Outcome> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| anyhow!(error_chain(&e)))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let decision = decide(status, retry_after, &self.retry_on);
        // Read (a bounded part of) the body: the connection is reused only once its body is read.
        let mut body = response.into_body();
        let mut excerpt = Vec::new();
        let limit = if status.is_success() { 64 * 1024 } else { 1024 };
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                let room = limit - excerpt.len();
                excerpt.extend_from_slice(&data[..data.len().min(room)]);
                if excerpt.len() >= limit {
                    break;
                }
            }
        }
        let text = String::from_utf8_lossy(&excerpt[..excerpt.len().min(1024)]).into_owned();
        Ok(Outcome {
            decision,
            detail: format!("status {status}: {text}"),
        })
    }
}

/// A request body and its `X-Hub-Signature-256` value (when a secret is set).
pub struct Signed {
    pub body: Bytes,
    pub signature: Option<String>,
}

impl fmt::Debug for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signed({} bytes, signed: {})",
            self.body.len(),
            self.signature.is_some()
        )
    }
}

/// `prefix` (`{"meta":{...},"events":[`), the events separated by commas, then `]}`.
pub fn body<'a>(prefix: &[u8], events: impl Iterator<Item = &'a Bytes> + Clone) -> Bytes {
    let len: usize = events.clone().map(|e| e.len() + 1).sum();
    let mut body = BytesMut::with_capacity(prefix.len() + len + 2);
    body.put_slice(prefix);
    for (i, e) in events.enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(e);
    }
    body.put_slice(b"]}");
    body.freeze()
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

/// The webhook sink's settings that the delivery loop needs.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub max_events: usize,
    pub flush_interval: Duration,
    pub retry_initial_backoff: Duration,
    pub retry_max_backoff: Duration,
    pub retry_max_duration: Option<Duration>,
    pub shutdown_timeout: Duration,
}

impl From<&WebhookConfig> for Delivery {
    fn from(c: &WebhookConfig) -> Self {
        Delivery {
            max_events: c.max_event_in_memory,
            flush_interval: c.flush_interval.0,
            retry_initial_backoff: c.retry_initial_backoff.0,
            retry_max_backoff: c.retry_max_backoff.0,
            retry_max_duration: c.retry_max_duration.map(|d| d.0),
            shutdown_timeout: c.shutdown_timeout.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy() {
        let retry_on = default_retry_on_status();
        let d = |code: u16| decide(StatusCode::from_u16(code).unwrap(), None, &retry_on);
        assert_eq!(d(200), Decision::Delivered);
        assert_eq!(d(204), Decision::Delivered);
        for code in [401, 403, 404, 408, 429, 500, 502, 503, 504] {
            assert_eq!(d(code), Decision::Retry { after: None }, "{code}");
        }
        assert_eq!(d(413), Decision::Split);
        for code in [400, 405, 409, 410, 422] {
            assert_eq!(d(code), Decision::Reject, "{code}");
        }
        assert_eq!(d(302), Decision::Retry { after: None });
        assert_eq!(
            decide(StatusCode::INTERNAL_SERVER_ERROR, None, &[503]),
            Decision::Reject
        );
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_within_bounds() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..30 {
            let d = backoff(attempt, initial, max);
            assert!(d >= initial && d <= max, "{attempt}: {d:?}");
        }
        assert_eq!(backoff(0, initial, max), initial);
    }

    #[test]
    fn retries_give_up_after_retry_max_duration_and_start_over_after_a_success() {
        let ms = Duration::from_millis;
        let mut retries = Retries::new(&Delivery {
            max_events: 1,
            flush_interval: ms(100),
            retry_initial_backoff: ms(10),
            retry_max_backoff: ms(10),
            retry_max_duration: Some(ms(30)),
            shutdown_timeout: ms(100),
        });
        assert_eq!(retries.failed(None), NextTry::After(ms(10)));
        assert_eq!(retries.failed(Some(ms(7000))), NextTry::After(ms(7000)));
        std::thread::sleep(ms(40));
        assert_eq!(retries.failed(None), NextTry::GiveUp(ms(30)));
        retries.succeeded();
        assert_eq!(retries.failed(None), NextTry::After(ms(10)));
    }

    #[test]
    fn endpoint_checks() {
        assert!(endpoint_uri("k", "https://x.example/hook").is_ok());
        assert!(endpoint_uri("k", "http://127.0.0.1:8080").is_ok());
        for bad in ["ftp://x", "not a url", "http://", "/just/a/path", ""] {
            let err = endpoint_uri("sinks.w", bad).unwrap_err().to_string();
            assert!(err.contains("sinks.w.endpoint_url"), "{bad}: {err}");
        }
    }

    /// Reads a sink table as config.rs does: parsed first, then deserialized.
    fn webhook(extra: &str) -> Result<WebhookConfig, toml::de::Error> {
        let table: toml::Table = toml::from_str(&format!(
            "inputs = [\"a\"]\nendpoint_url = \"http://127.0.0.1:1/\"\n{extra}"
        ))?;
        WebhookConfig::deserialize(toml::Value::Table(table))
    }

    #[test]
    fn secrets_and_header_values_do_not_show_in_debug() {
        for secret in [
            "secret = \"hunter2\"",
            "secret_hex = \"68756e74657232\"",
            "secret_base64 = \"aHVudGVyMg==\"",
        ] {
            let config = webhook(&format!(
                "{secret}\nheaders = {{ Authorization = \"Bearer tok3n\" }}"
            ))
            .unwrap();
            assert_eq!(config.signing_secret().unwrap().expose(), b"hunter2");
            let shown = format!("{config:?}");
            for hidden in ["hunter2", "68756e74657232", "aHVudGVyMg", "tok3n"] {
                assert!(!shown.contains(hidden), "{shown}");
            }
        }
    }

    #[test]
    fn hex_and_base64_secrets_are_bytes() {
        let config = webhook("secret_hex = \"ff00C328\"").unwrap();
        assert_eq!(
            config.signing_secret().unwrap().expose(),
            [0xff, 0, 0xc3, 0x28]
        );
        let config = webhook("secret_base64 = \"/wDDKA==\"").unwrap();
        assert_eq!(
            config.signing_secret().unwrap().expose(),
            [0xff, 0, 0xc3, 0x28]
        );
    }

    #[test]
    fn secret_errors_do_not_quote_the_secret() {
        for extra in [
            "secret = 918273645",
            "secret = [\"918273645\"]",
            "secret_hex = \"918273645\"",
            "secret_hex = \"91827364g5\"",
            "secret_base64 = \"918273645\"",
        ] {
            let err = webhook(extra).unwrap_err().to_string();
            assert!(
                !err.contains("918273645") && !err.contains("9182736"),
                "{extra}: {err}"
            );
        }
    }

    #[test]
    fn only_one_secret_key_and_not_empty() {
        let both = webhook("secret = \"a\"\nsecret_hex = \"00\"").unwrap();
        let err = both.validate("sinks.w").unwrap_err().to_string();
        assert!(
            err.contains("`sinks.w.secret` and `sinks.w.secret_hex` are both set"),
            "{err}"
        );
        let empty = webhook("secret_base64 = \"\"").unwrap();
        let err = empty.validate("sinks.w").unwrap_err().to_string();
        assert!(err.contains("`sinks.w.secret_base64` is empty"), "{err}");
    }
}
