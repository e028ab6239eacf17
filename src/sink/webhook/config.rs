//! The webhook sink's settings, `[sinks.NAME] type = "webhook"`: read and checked at
//! start-up, with messages that name the key and show a correct example.
//!
//! [`WebhookConfig::build`] turns the table, once, into a [`WebhookSpec`] of parsed values
//! (the request's URI, headers and body prefix, the delivery settings); nothing after it
//! parses again. [`endpoint`] parses `endpoint_url` (credentials in it become Basic auth
//! and never show); `Delivery` holds what the delivery loop needs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, PROXY_AUTHORIZATION,
};
use hyper::Uri;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::proxy::{self, Proxy, ProxyUrl};
use super::request::{Signer, Template};
use crate::compression::Compression;
pub use crate::config::Secret;
pub(crate) use crate::config::{bad_port, without_credentials};
use crate::event::{EventType, Schema};
use crate::sign::Scheme;
use crate::sink::delivery::{Delivery, DeliveryConfig, SinkDefaults};
use crate::tls::{TlsConfig, TlsSpec};

fn default_max_event_in_memory() -> usize {
    100_000
}

/// The statuses retried by default: the endpoint is busy or broken (408, 429, 5xx), or
/// it or the proxy on the way is misconfigured in a way the operator can fix without
/// losing data (401, 403, 404, 407).
pub(crate) fn default_retry_on_status() -> Vec<u16> {
    let mut statuses = vec![401, 403, 404, 407, 408, 429];
    statuses.extend(500..=599);
    statuses
}

/// `secret`: the text's UTF-8 bytes.
fn secret_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Some(Secret::new(secret_string(d)?.into_bytes())))
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
    Ok(Some(Secret::new(bytes)))
}

/// `secret_base64`: bytes written in standard base64 (with `=` padding).
fn secret_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(secret_string(d)?)
        .map_err(|_| {
            D::Error::custom("is not base64: use the standard alphabet with `=` padding (example: secret_base64 = \"${WEBHOOK_SECRET_BASE64}\")")
        })?;
    Ok(Some(Secret::new(bytes)))
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

/// `signature`: `"hub"` or `"standard-webhooks"`.
fn scheme<'de, D: Deserializer<'de>>(d: D) -> Result<Scheme, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|why| {
        D::Error::custom(format!(
            "{text:?} is not a signature scheme: {why} (example: signature = \"standard-webhooks\")"
        ))
    })
}

/// `compression`: `"none"`, `"gzip"` or `"zstd"`.
fn compression<'de, D: Deserializer<'de>>(d: D) -> Result<Compression, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|why| {
        D::Error::custom(format!(
            "{text:?} is not a compression: {why} (example: compression = \"gzip\")"
        ))
    })
}

/// `endpoint_url` as written. A user and password in it (`https://user:pass@host/hook`)
/// are sent as Basic auth (see `endpoint`) and never shown: `Display` and `Debug` print
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
    /// Signs each request when set: with `signature = "hub"`, the text's UTF-8 bytes are
    /// the key; with `"standard-webhooks"`, the text is `whsec_` and the key in base64.
    #[serde(default, deserialize_with = "secret_text")]
    pub secret: Option<Secret>,
    /// The same, for a key that is not text: its bytes in hex. Excludes the other two.
    #[serde(default, deserialize_with = "secret_hex")]
    pub secret_hex: Option<Secret>,
    /// The same, for a key that is not text: its bytes in standard base64.
    #[serde(default, deserialize_with = "secret_base64")]
    pub secret_base64: Option<Secret>,
    /// How requests are signed: "hub" (`X-Hub-Signature-256`, GO Feature Flag's; default)
    /// or "standard-webhooks" (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    #[serde(default, deserialize_with = "scheme")]
    pub signature: Scheme,
    /// The body's `Content-Encoding`: "none" (default), "gzip" or "zstd". The signature
    /// covers the compressed bytes, as sent.
    #[serde(default, deserialize_with = "compression")]
    pub compression: Compression,
    /// String values sent in `meta`; `hostname` is added unless set.
    #[serde(default)]
    pub meta: BTreeMap<String, toml::Value>,
    /// Extra request headers; a value may be one string or a list.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValues>,
    /// Send as soon as this many events are pending (MaxEventInMemory); also the largest
    /// batch. Default 100000.
    #[serde(default = "default_max_event_in_memory")]
    pub max_event_in_memory: usize,
    /// Statuses that are retried. Default 401, 403, 404, 407, 408, 429 and 500-599.
    #[serde(default = "default_retry_on_status")]
    pub retry_on_status: Vec<u16>,
    /// For an https endpoint: the CA certificates trusted, a client certificate, the name
    /// verified (see `crate::tls`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// `"none"`, or the `http://[user:password@]host:port` of a proxy. Default: the
    /// `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` variables (see `proxy.rs`).
    #[serde(default)]
    pub proxy: Option<ProxyUrl>,
}

const EXAMPLE: &str = r#"[sinks.webhook]
type = "webhook"
inputs = ["goff_files"]
endpoint_url = "https://collector.example/hook""#;

/// A webhook sink's settings, parsed: made once by [`WebhookConfig::build`].
#[derive(Debug)]
pub struct WebhookSpec {
    /// The sources it reads.
    pub inputs: Vec<String>,
    /// `endpoint_url` as it may be shown: without a user and password.
    pub endpoint_shown: String,
    /// Every request's URI, headers, body prefix and signing key.
    pub(crate) template: Template,
    pub(crate) delivery: Delivery,
    /// How long a request may wait for its response's status.
    pub(crate) timeout: Duration,
    /// The statuses retried (see `status::decide`).
    pub(crate) retry_on: Vec<u16>,
    /// For an https endpoint, its TLS settings (`None`: http).
    pub(crate) tls: Option<TlsSpec>,
    /// The proxy requests go through, if any.
    pub(crate) proxy: Option<Proxy>,
    pub schema: Schema,
    pub event_types: Vec<EventType>,
    pub buffer_max_events: usize,
    pub buffer_max_bytes: usize,
    pub dead_letter_max_bytes: u64,
}

impl WebhookSpec {
    /// How requests are signed, and the HMAC key (for Standard Webhooks, decoded from its
    /// `whsec_` form), when they are.
    pub fn signing(&self) -> Option<(Scheme, &Secret)> {
        let signer = self.template.signer()?;
        Some((signer.scheme(), signer.key()))
    }

    /// `max_event_in_memory`: the batch trigger and the largest batch.
    pub fn max_events(&self) -> usize {
        self.delivery.max_events
    }

    pub fn flush_interval(&self) -> Duration {
        self.delivery.flush_interval
    }

    /// How request bodies are encoded.
    pub fn compression(&self) -> Compression {
        self.template.compression()
    }

    /// `request_concurrency`: requests in flight at once.
    pub fn request_concurrency(&self) -> usize {
        self.delivery.request_concurrency
    }

    /// A digest of the files its `tls` keys name, as read: a reload restarts the sink when
    /// they changed.
    pub(crate) fn files_read(&self) -> Option<u64> {
        self.tls.as_ref().map(|tls| tls.files_read)
    }

    /// `", through the proxy set by NAME"` when requests go through a proxy, else nothing.
    pub fn proxy_note(&self) -> String {
        self.proxy.as_ref().map_or(String::new(), |p| {
            format!(", through the proxy set by {}", p.origin)
        })
    }
}

impl WebhookConfig {
    /// Checks every key (at `key`, the sink's) and parses the settings; the files it names
    /// are read, relative to `base`.
    /// `delivery` holds the keys every sink shares (see `crate::sink::split_table`).
    pub fn build(self, key: &str, base: &Path, delivery: &DeliveryConfig) -> Result<WebhookSpec> {
        let (endpoint, mut headers) = self.validate(key)?;
        let shared = delivery.build(
            key,
            SinkDefaults {
                batch_key: "max_event_in_memory",
                batch_example: default_max_event_in_memory(),
                max_events: self.max_event_in_memory,
                flush_interval: Duration::from_secs(60),
                request_concurrency: 1,
            },
        )?;
        let tls = self.tls(key, base, &endpoint.uri)?;
        let proxy = proxy::route(key, &endpoint.uri, self.proxy.as_ref(), |name| {
            std::env::var_os(name)
        })?;
        // A plain http request goes to the proxy whole, its credentials with it; an https
        // one has them sent in its CONNECT (see `client.rs`).
        if let (
            None,
            Some(Proxy {
                authorization: Some(auth),
                ..
            }),
        ) = (&tls, &proxy)
        {
            headers.insert(PROXY_AUTHORIZATION, auth.clone());
        }
        let endpoint_shown = self.endpoint_url.to_string();
        let signer = self.signer(key)?;
        let template = Template::new(&self.meta, headers, endpoint, self.compression, signer);
        Ok(WebhookSpec {
            delivery: shared.delivery,
            buffer_max_events: shared.buffer_max_events,
            buffer_max_bytes: shared.buffer_max_bytes,
            timeout: shared.timeout,
            retry_on: self.retry_on_status,
            tls,
            proxy,
            inputs: self.inputs,
            endpoint_shown,
            template,
            schema: shared.schema,
            event_types: shared.event_types,
            dead_letter_max_bytes: shared.dead_letter_max_bytes,
        })
    }

    /// Every check; gives the parsed endpoint and the user's headers (values marked
    /// sensitive, `Content-Type` left out: it is always `application/json`).
    fn validate(&self, key: &str) -> Result<(Endpoint, HeaderMap)> {
        let endpoint = endpoint(key, &self.endpoint_url)?;
        if self.inputs.is_empty() {
            bail!("`{key}.inputs` is empty: name the sources this sink reads\n{EXAMPLE}");
        }
        for (name, value) in &self.meta {
            if !value.is_str() {
                bail!("`{key}.meta.{name}` must be a string, got a {} (example: meta = {{ {name} = \"value\" }})", value.type_str());
            }
        }
        let mut headers = HeaderMap::new();
        for (name, values) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| anyhow!("`{key}.headers` has an invalid header name {name:?} (example: headers = {{ Authorization = [\"Bearer token\"] }})"))?;
            for v in values.values() {
                let mut value = HeaderValue::from_str(v).map_err(|_| {
                    anyhow!("`{key}.headers.{name}` has a value that is not a valid header value")
                })?;
                // Sensitive: hyper's `Debug` shows no value of the user's headers.
                value.set_sensitive(true);
                if header == CONTENT_TYPE {
                    tracing::warn!(
                        key,
                        "`headers` sets Content-Type, which is always application/json; ignoring it"
                    );
                } else {
                    headers.append(header.clone(), value);
                }
            }
            if header == AUTHORIZATION && endpoint.authorization.is_some() {
                bail!("`{key}.endpoint_url` has a user and password, and `{key}.headers.{name}` is set too: give the credentials once, in the URL (sent as Basic auth) or in the header (example: endpoint_url = \"https://collector.example/hook\" with headers = {{ Authorization = \"Basic ${{WEBHOOK_BASIC}}\" }})");
            }
        }
        self.validate_secret(key)?;
        if let Some(s) = self
            .retry_on_status
            .iter()
            .find(|s| !(400..=599).contains(*s))
        {
            let why = if (100..=599).contains(s) {
                "which is never retried by this list: it holds 4xx and 5xx statuses (a 2xx is delivered, a 1xx or 3xx always retried)"
            } else {
                "which is not an HTTP status"
            };
            bail!("`{key}.retry_on_status` has {s}, {why} (example: retry_on_status = [408, 429, 503])");
        }
        Ok((endpoint, headers))
    }

    /// The TLS settings of an https endpoint (defaults when `tls` is not set); `tls` on an
    /// http endpoint is an error.
    fn tls(&self, key: &str, base: &Path, endpoint: &Uri) -> Result<Option<TlsSpec>> {
        if endpoint.scheme_str() != Some("https") {
            return match self.tls {
                Some(_) => bail!("`{key}.tls` is set but `{key}.endpoint_url` is http: TLS settings apply to an https endpoint (example: endpoint_url = \"https://collector.example/hook\" with tls.ca_file = \"/etc/flaghook/company-ca.pem\")"),
                None => Ok(None),
            };
        }
        let default = TlsConfig::default();
        Ok(Some(
            self.tls.as_ref().unwrap_or(&default).build(key, base)?,
        ))
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
            [(name, secret)] if secret.expose().is_empty() => bail!("`{key}.{name}` is empty: remove it to send unsigned, or set it (example: {name} = \"${{WEBHOOK_SECRET}}\")"),
            [_] => Ok(()),
            [(first, _), (second, _), ..] => bail!("`{key}.{first}` and `{key}.{second}` are both set: give the secret once, as text in `secret` or as bytes in `secret_hex` or `secret_base64` (example: secret = \"${{WEBHOOK_SECRET}}\")"),
        }
    }

    /// What signs requests: the secret, whichever way it was written, with the scheme of
    /// `signature`. A Standard Webhooks key comes as `whsec_<base64>` in `secret`.
    fn signer(&self, key: &str) -> Result<Option<Signer>> {
        const NEEDS: &str = "with signature = \"standard-webhooks\", `secret` is `whsec_` and the key in base64, as Standard Webhooks senders give it (example: secret = \"${WEBHOOK_SECRET}\")";
        let Some(secret) = self.signing_secret() else {
            if self.signature == Scheme::StandardWebhooks {
                bail!("`{key}.secret` is not set: {NEEDS}");
            }
            return Ok(None);
        };
        if self.signature == Scheme::Hub {
            return Ok(Some(Signer::Hub(secret.clone())));
        }
        if self.secret.is_none() {
            let name = if self.secret_hex.is_some() {
                "secret_hex"
            } else {
                "secret_base64"
            };
            bail!("`{key}.{name}` cannot sign Standard Webhooks requests: {NEEDS}");
        }
        match crate::sign::standard_key(secret.expose()) {
            Ok(bytes) => Ok(Some(Signer::StandardWebhooks(Secret::new(bytes)))),
            // The reason says what is wrong with it, never what it holds.
            Err(why) => bail!("`{key}.secret` {why}: {NEEDS}"),
        }
    }

    /// The key that signs requests, whichever way it was written.
    fn signing_secret(&self) -> Option<&Secret> {
        self.secret
            .as_ref()
            .or(self.secret_hex.as_ref())
            .or(self.secret_base64.as_ref())
    }
}

/// `endpoint_url`, parsed: where requests go, and the credentials it carried.
pub(crate) struct Endpoint {
    /// The URL without its user and password.
    pub(crate) uri: Uri,
    /// `Basic base64(user:password)`, from the URL's percent-decoded user and password.
    pub(crate) authorization: Option<HeaderValue>,
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
pub(crate) fn endpoint(key: &str, url: &EndpointUrl) -> Result<Endpoint> {
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
pub(crate) fn basic_auth(userinfo: &str) -> Option<HeaderValue> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // Regression: credentials without a port were taken for a port that is not a number.
        let e = endpoint("k", &url("https://u:pw@x.example/hook")).unwrap();
        assert_eq!(e.uri.to_string(), "https://x.example/hook");
        assert_eq!(e.authorization.unwrap().to_str().unwrap(), "Basic dTpwdw==");
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
                "{secret}\nheaders = {{ X-Token = \"Bearer tok3n\" }}\nproxy = \"http://p:pr0xy-pw@127.0.0.1:3128\""
            ))
            .unwrap();
            config.endpoint_url = url("http://u:pa55w0rd@127.0.0.1:1/");
            assert_eq!(config.signing_secret().unwrap().expose(), b"hunter2");
            let shown = format!("{config:?}");
            let spec = format!(
                "{:?}",
                config
                    .build("sinks.w", Path::new("."), &DeliveryConfig::default())
                    .unwrap()
            );
            for hidden in [
                "hunter2",
                "68756e74657232",
                "aHVudGVyMg",
                "tok3n",
                "pa55w0rd",
                "pr0xy-pw",
                "cDpwcjB4eS1wdw", // base64("p:pr0xy-pw"), as Proxy-Authorization
            ] {
                assert!(!shown.contains(hidden), "{shown}");
                assert!(!spec.contains(hidden), "{spec}");
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
