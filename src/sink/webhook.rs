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
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER,
    USER_AGENT,
};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::config::{check_count, check_duration, ByteSize, HumanDuration};
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

fn default_dead_letter_max_bytes() -> u64 {
    1 << 30
}

/// The largest `max_event_in_memory`: each batch reserves room for this many events, and
/// one request carries them all.
const MAX_BATCH_EVENTS: usize = 1_000_000;
/// The largest `buffer_max_events`: about 1 KB of memory each, and a semaphore permit each
/// (a semaphore takes at most `u32::MAX` at once).
const MAX_BUFFER_EVENTS: usize = 10_000_000;
/// The longest `flush_interval`, backoffs and `shutdown_timeout`.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The longest request `timeout`.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

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

/// `endpoint_url` as written. A user and password in it (`https://user:pass@host/hook`)
/// are sent as Basic auth (see [`endpoint`]) and never shown: `Display` and `Debug` print
/// `***` in their place.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct EndpointUrl(String);

impl From<String> for EndpointUrl {
    fn from(url: String) -> Self {
        EndpointUrl(url)
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&without_credentials(&self.0))
    }
}

impl fmt::Debug for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", without_credentials(&self.0))
    }
}

/// `url` with its user and password replaced by `***`. When `url` does not parse, where
/// its authority ends is not known: everything up to its last `@` is hidden.
fn without_credentials(url: &str) -> std::borrow::Cow<'_, str> {
    let parsed = url
        .parse::<Uri>()
        .ok()
        .filter(|uri| uri.authority().is_none_or(|a| !bad_port(a.as_str())));
    let userinfo_end = match parsed.as_ref().and_then(Uri::authority) {
        Some(authority) => authority.as_str().rfind('@').map(|at| {
            let start = url.find(authority.as_str()).unwrap_or(0);
            (start, start + at)
        }),
        None if parsed.is_some() => None,
        None => url
            .rfind('@')
            .map(|at| (url.find("://").map_or(0, |i| i + 3).min(at), at)),
    };
    match userinfo_end {
        Some((start, at)) => format!("{}***{}", &url[..start], &url[at..]).into(),
        None => url.into(),
    }
}

/// Whether `authority` ends in a port that is not a number: what a `/` left unescaped in a
/// password (`user:pa/ss@host`) makes of a URL, cut after `user:pa`.
fn bad_port(authority: &str) -> bool {
    let after_host = authority.rsplit(']').next().unwrap_or(authority);
    after_host
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.parse::<u16>().is_err())
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
    /// Where to POST: an http or https URL. Required. `user:password@` in it is sent as
    /// Basic auth.
    pub endpoint_url: EndpointUrl,
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
    /// Once the dead-letter file holds this many bytes, records keep only the first KiB of
    /// their line. Default 1 GiB.
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: u64,
}

const EXAMPLE: &str = r#"[sinks.webhook]
type = "webhook"
inputs = ["goff_files"]
endpoint_url = "https://collector.example/hook""#;

impl WebhookConfig {
    pub fn validate(&self, key: &str) -> Result<()> {
        let endpoint = endpoint(key, &self.endpoint_url)?;
        if self.inputs.is_empty() {
            bail!("`{key}.inputs` is empty: name the sources this sink reads\n{EXAMPLE}");
        }
        self.validate_sizes(key)?;
        self.validate_durations(key)?;
        for (name, value) in &self.meta {
            if !value.is_str() {
                bail!("`{key}.meta.{name}` must be a string, got {value} (example: meta = {{ {name} = \"value\" }})");
            }
        }
        for (name, values) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| anyhow!("`{key}.headers` has an invalid header name {name:?} (example: headers = {{ Authorization = [\"Bearer token\"] }})"))?;
            for v in values.values() {
                HeaderValue::from_str(v).map_err(|_| {
                    anyhow!("`{key}.headers.{name}` has a value that is not a valid header value")
                })?;
            }
            if header == AUTHORIZATION && endpoint.authorization.is_some() {
                bail!("`{key}.endpoint_url` has a user and password, and `{key}.headers.{name}` is set too: give the credentials once, in the URL (sent as Basic auth) or in the header (example: endpoint_url = \"https://collector.example/hook\" with headers = {{ Authorization = \"Basic ${{WEBHOOK_BASIC}}\" }})");
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

    /// Batch and buffer sizes: at least 1 event, and at most what fits memory and a
    /// semaphore's permits.
    fn validate_sizes(&self, key: &str) -> Result<()> {
        check_count(
            &format!("{key}.max_event_in_memory"),
            self.max_event_in_memory,
            1..=MAX_BATCH_EVENTS,
            "max_event_in_memory = 100000",
        )?;
        let Some(buffer) = self.buffer_max_events else {
            return Ok(());
        };
        if buffer < self.max_event_in_memory {
            bail!("`{key}.buffer_max_events` must be at least `max_event_in_memory` (example: buffer_max_events = {})", 2 * self.max_event_in_memory);
        }
        check_count(
            &format!("{key}.buffer_max_events"),
            buffer,
            1..=MAX_BUFFER_EVENTS,
            "buffer_max_events = 200000",
        )
    }

    /// Every duration is above zero (but `shutdown_timeout`, which may be) and bounded, so
    /// that no deadline computed from one can overflow.
    fn validate_durations(&self, key: &str) -> Result<()> {
        let durations = [
            (
                "flush_interval",
                self.flush_interval,
                MAX_INTERVAL,
                "\"60s\"",
            ),
            ("timeout", self.timeout, MAX_TIMEOUT, "\"10s\""),
            (
                "retry_initial_backoff",
                self.retry_initial_backoff,
                MAX_INTERVAL,
                "\"1s\"",
            ),
            (
                "retry_max_backoff",
                self.retry_max_backoff,
                MAX_INTERVAL,
                "\"60s\"",
            ),
        ];
        for (name, value, max, example) in durations {
            check_duration(
                &format!("{key}.{name}"),
                value.0,
                max,
                &format!("{name} = {example}"),
            )?;
        }
        if self.retry_max_backoff.0 < self.retry_initial_backoff.0 {
            bail!("`{key}.retry_initial_backoff` must be at most `retry_max_backoff` (example: retry_initial_backoff = \"1s\")");
        }
        if self.shutdown_timeout.0 > MAX_INTERVAL {
            bail!(
                "`{key}.shutdown_timeout` is too long: at most {} (example: shutdown_timeout = \"30s\")",
                humantime::format_duration(MAX_INTERVAL)
            );
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

/// `endpoint_url`, parsed: where requests go, and the credentials it carried.
pub struct Endpoint {
    /// The URL without its user and password.
    pub uri: Uri,
    /// `Basic base64(user:password)`, from the URL's percent-decoded user and password.
    pub authorization: Option<HeaderValue>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("uri", &self.uri)
            .field("basic_auth", &self.authorization.is_some())
            .finish()
    }
}

/// Parses and checks `endpoint_url` (at `key`, the sink's key): http or https, with a host.
/// A user and password in it become the `Authorization` header, as curl and browsers do.
pub fn endpoint(key: &str, url: &EndpointUrl) -> Result<Endpoint> {
    // A URL with credentials is not shown at all: had it come from the environment, its
    // rest would be a part of an environment value, which `EnvValues::hide` cannot find.
    let shown = match without_credentials(&url.0) {
        std::borrow::Cow::Borrowed(as_written) => format!(" = {as_written:?}"),
        std::borrow::Cow::Owned(_) => " (not shown: it has a user or password)".to_owned(),
    };
    let problem = |why: &str| {
        anyhow!("`{key}.endpoint_url`{shown} {why} (example: endpoint_url = \"https://collector.example/hook\")")
    };
    let uri: Uri = url.0.parse().map_err(|_| problem("is not a valid URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(problem("must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(problem("has no host"));
    }
    if uri.authority().is_some_and(|a| bad_port(a.as_str())) {
        return Err(problem(
            "has a port that is not a number (in a password, write `/` as `%2F`)",
        ));
    }
    let authority = uri
        .authority()
        .expect("a URL with a host")
        .as_str()
        .to_owned();
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return Ok(Endpoint {
            uri,
            authorization: None,
        });
    };
    let mut parts = uri.into_parts();
    parts.authority = Some(host.parse().map_err(|_| problem("has no host"))?);
    let uri = Uri::from_parts(parts).map_err(|_| problem("is not a valid URL"))?;
    let authorization = basic_auth(userinfo).ok_or_else(|| problem("has a user or password that is not valid percent-encoding: write `%` as `%25` and `@` as `%40`"))?;
    Ok(Endpoint {
        uri,
        authorization: (!userinfo.is_empty()).then_some(authorization),
    })
}

/// `Basic base64(user:password)` for a URL's `user:password` (percent-encoded, as URLs
/// carry them), marked sensitive; `None` when they do not decode.
fn basic_auth(userinfo: &str) -> Option<HeaderValue> {
    use base64::Engine;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let mut credentials = percent_decode(user)?;
    credentials.push(b':');
    credentials.extend(percent_decode(password)?);
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// `%XX` escapes replaced by their bytes; `None` for a `%` not followed by two hex digits.
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let escape = tail.get(..2)?;
            out.extend(hex::decode(escape).ok()?);
            rest = &tail[2..];
        } else {
            out.push(byte);
            rest = tail;
        }
    }
    Some(out)
}

/// What to do after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// 2xx: the events are delivered.
    Delivered,
    /// Send the same events again later (after `after`, when the endpoint said so, up to
    /// `retry_max_backoff`).
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
/// - Anything else: retry. A 3xx is not followed (the signed body is for the URL the
///   operator configured, and a POST must not silently move): it means `endpoint_url` is
///   out of date, which the operator fixes without losing events. The warning of each
///   failed attempt names the status and the `Location` (see [`Poster::post`]).
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

    /// A request failed and may be retried; `after` is its `Retry-After`, honoured up to
    /// `retry_max_backoff`: an endpoint cannot stop delivery with a huge one.
    pub fn failed(&mut self, after: Option<Duration>) -> NextTry {
        let since = *self
            .failing_since
            .get_or_insert_with(std::time::Instant::now);
        if let Some(max) = self.max_duration {
            if since.elapsed() >= max {
                return NextTry::GiveUp(max);
            }
        }
        let delay = match after {
            Some(after) => after.min(self.max),
            None => backoff(self.attempt, self.initial, self.max),
        };
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
    /// The sink's name, for logs.
    sink: String,
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
        let Endpoint { uri, authorization } =
            endpoint(&format!("sinks.{name}"), &config.endpoint_url)?;
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
        for (header_name, values) in &config.headers {
            let header = HeaderName::from_bytes(header_name.as_bytes()).expect("validated");
            if header == CONTENT_TYPE {
                tracing::warn!(
                    sink = name,
                    "`headers` sets Content-Type, which is always application/json; ignoring it"
                );
                continue;
            }
            for v in values.values() {
                // Sensitive: hyper's `Debug` shows no value of the user's headers.
                let mut value = HeaderValue::from_str(v).expect("validated");
                value.set_sensitive(true);
                headers.append(header.clone(), value);
            }
        }
        if let Some(authorization) = authorization {
            headers.insert(AUTHORIZATION, authorization);
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
            sink: name.to_owned(),
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
    ///
    /// A request whose connection closed before any response is sent once more at once:
    /// an endpoint that closes a kept-alive connection just as the next request goes out
    /// has not refused anything, and the next connection is a fresh one (the failed one
    /// left the pool). Any other failure is for the caller's backoff.
    pub async fn post(&self, signed: Signed) -> Outcome {
        let attempt = || self.attempt(self.request(&signed));
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
                detail,
            },
        }
    }

    fn request(&self, signed: &Signed) -> Request<Full<Bytes>> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone());
        *request.headers_mut().expect("fresh builder") = self.headers.clone();
        if let Some(signature) = &signed.signature {
            request = request.header("X-Hub-Signature-256", signature);
        }
        request
            .body(Full::new(signed.body.clone()))
            .expect("valid request")
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
        Outcome { decision, detail }
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
        // Retry-After is honoured up to retry_max_backoff.
        assert_eq!(retries.failed(Some(ms(7000))), NextTry::After(ms(10)));
        std::thread::sleep(ms(40));
        assert_eq!(retries.failed(None), NextTry::GiveUp(ms(30)));
        retries.succeeded();
        assert_eq!(retries.failed(None), NextTry::After(ms(10)));
    }

    fn url(text: &str) -> EndpointUrl {
        EndpointUrl(text.to_owned())
    }

    #[test]
    fn endpoint_checks() {
        assert!(endpoint("k", &url("https://x.example/hook")).is_ok());
        assert!(endpoint("k", &url("http://127.0.0.1:8080")).is_ok());
        for bad in ["ftp://x", "not a url", "http://", "/just/a/path", ""] {
            let err = endpoint("sinks.w", &url(bad)).unwrap_err().to_string();
            assert!(err.contains("sinks.w.endpoint_url"), "{bad}: {err}");
        }
    }

    #[test]
    fn credentials_in_the_url_become_basic_auth_and_leave_the_url() {
        let e = endpoint("k", &url("https://us%40er:p%3Ass@x.example:8443/hook?a=1")).unwrap();
        assert_eq!(e.uri.to_string(), "https://x.example:8443/hook?a=1");
        // base64("us@er:p:ss")
        assert_eq!(
            e.authorization.unwrap().to_str().unwrap(),
            "Basic dXNAZXI6cDpzcw=="
        );
        let e = endpoint("k", &url("http://user@[::1]:8080/")).unwrap();
        assert_eq!(e.uri.to_string(), "http://[::1]:8080/");
        assert_eq!(e.authorization.unwrap().to_str().unwrap(), "Basic dXNlcjo=");
        assert!(endpoint("k", &url("http://x.example/a@b"))
            .unwrap()
            .authorization
            .is_none());
        let err = endpoint("sinks.w", &url("http://u:p%zzsecret@x/"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sinks.w.endpoint_url") && !err.contains("secret"),
            "{err}"
        );
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        for (written, shown) in [
            (
                "https://u:hunter2@x.example/hook",
                "https://***@x.example/hook",
            ),
            ("http://hunter2@127.0.0.1:1/", "http://***@127.0.0.1:1/"),
            ("http://x.example/a@b", "http://x.example/a@b"),
            ("ftp://u:hunter2@x", "ftp://***@x"),
            ("http://u:hun/ter2@x/", "http://***@x/"),
            ("u:hunter2@x y", "***@x y"),
        ] {
            assert_eq!(url(written).to_string(), shown);
            assert_eq!(format!("{:?}", url(written)), format!("{shown:?}"));
            if let Err(e) = endpoint("k", &url(written)) {
                assert!(!format!("{e:#}").contains("hunter2"), "{e:#}");
            }
        }
        let err = endpoint("k", &url("ftp://u:hunter2@x"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`k.endpoint_url` (not shown: it has a user or password) must start")
                && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn retry_after_is_capped_by_retry_max_backoff() {
        let ms = Duration::from_millis;
        let mut retries = Retries::new(&Delivery {
            max_events: 1,
            flush_interval: ms(100),
            retry_initial_backoff: ms(10),
            retry_max_backoff: ms(500),
            retry_max_duration: None,
            shutdown_timeout: ms(100),
        });
        let huge = parse_retry_after("9223372036854775807");
        assert_eq!(retries.failed(huge), NextTry::After(ms(500)));
        let far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(retries.failed(far), NextTry::After(ms(500)));
        assert_eq!(retries.failed(Some(ms(200))), NextTry::After(ms(200)));
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
            let mut config = webhook(&format!(
                "{secret}\nheaders = {{ Authorization = \"Bearer tok3n\" }}"
            ))
            .unwrap();
            config.endpoint_url = url("http://u:pa55w0rd@127.0.0.1:1/");
            assert_eq!(config.signing_secret().unwrap().expose(), b"hunter2");
            let shown = format!("{config:?}");
            for hidden in [
                "hunter2",
                "68756e74657232",
                "aHVudGVyMg",
                "tok3n",
                "pa55w0rd",
            ] {
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
