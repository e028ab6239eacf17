//! GO Feature Flag's webhook request, exactly: `POST`, `Content-Type: application/json`,
//! the user's headers, body `{"meta":{...},"events":[...]}` compact, and
//! `X-Hub-Signature-256: sha256=<hex>` over the exact body bytes when a secret is set.

use std::collections::BTreeMap;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, Uri};

use super::config::{Endpoint, Secret};

/// What every request of a sink shares: where it goes, its headers, the start of its body
/// and the key that signs it.
#[derive(Clone)]
pub(crate) struct Template {
    uri: Uri,
    headers: HeaderMap,
    /// `{"meta":{...},"events":[`
    prefix: Bytes,
    secret: Option<Secret>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template")
            .field("uri", &self.uri)
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

impl Template {
    /// Requests to `endpoint`, with `meta` and the user's `headers`.
    pub(crate) fn new(
        meta: &BTreeMap<String, toml::Value>,
        headers: HeaderMap,
        endpoint: Endpoint,
        secret: Option<Secret>,
    ) -> Self {
        let prefix = format!(r#"{{"meta":{},"events":["#, meta_json(meta));
        Template {
            uri: endpoint.uri,
            headers: with_ours(headers, endpoint.authorization),
            prefix: Bytes::from(prefix),
            secret,
        }
    }

    pub(crate) fn secret(&self) -> Option<&Secret> {
        self.secret.as_ref()
    }

    /// The exact body for `events` (already encoded JSON objects), and its signature.
    pub(crate) fn sign<'a>(&self, events: impl Iterator<Item = &'a Bytes> + Clone) -> Signed {
        let body = body(&self.prefix, events);
        let signature = self
            .secret
            .as_ref()
            .map(|s| crate::sign::signature(s.expose(), &body));
        Signed { body, signature }
    }

    pub(crate) fn request(&self, signed: &Signed) -> Request<Full<Bytes>> {
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
}

/// The user's headers, then the credentials of the URL, `Content-Type` and, unless set,
/// `User-Agent`.
fn with_ours(mut headers: HeaderMap, authorization: Option<HeaderValue>) -> HeaderMap {
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
    headers
}

/// A request body and its `X-Hub-Signature-256` value (when a secret is set).
pub(crate) struct Signed {
    body: Bytes,
    signature: Option<String>,
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

/// The `meta` object: the user's strings, plus `hostname` unless set.
fn meta_json(meta: &BTreeMap<String, toml::Value>) -> String {
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
