//! GO Feature Flag's webhook request, exactly: `POST`, `Content-Type: application/json`,
//! the user's headers, body `{"meta":{...},"events":[...]}` compact, and
//! `X-Hub-Signature-256: sha256=<hex>` over the exact body bytes when a secret is set.
//! Beyond GO Feature Flag: the body may be compressed (`Content-Encoding`), and signed the
//! Standard Webhooks way instead; either signature covers the bytes sent.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::Full;
use hyper::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, USER_AGENT,
};
use hyper::{Method, Request, Uri};

use super::config::{Endpoint, Secret};
use crate::compression::Compression;
use crate::sign::Scheme;
use crate::sink::pipeline::MessageId;

/// What every request of a sink shares: where it goes, its headers, the start of its body,
/// how the body is encoded and the key that signs it.
#[derive(Clone)]
pub(crate) struct Template {
    uri: Uri,
    headers: HeaderMap,
    /// `{"meta":{...},"events":[`
    prefix: Bytes,
    compression: Compression,
    signer: Option<Signer>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template")
            .field("uri", &self.uri)
            .field("compression", &self.compression)
            .field("signed", &self.signer.as_ref().map(Signer::scheme))
            .finish()
    }
}

/// The key that signs requests, and the scheme it signs with.
#[derive(Clone, Debug)]
pub(crate) enum Signer {
    /// `X-Hub-Signature-256`: HMAC-SHA256 of the body.
    Hub(Secret),
    /// Standard Webhooks: the key (decoded from `whsec_...`) signs `id.timestamp.body`.
    StandardWebhooks(Secret),
}

impl Signer {
    pub(crate) fn scheme(&self) -> Scheme {
        match self {
            Signer::Hub(_) => Scheme::Hub,
            Signer::StandardWebhooks(_) => Scheme::StandardWebhooks,
        }
    }

    /// The HMAC key.
    pub(crate) fn key(&self) -> &Secret {
        match self {
            Signer::Hub(key) | Signer::StandardWebhooks(key) => key,
        }
    }
}

/// A Standard Webhooks signature is made again when it is older than this when its request
/// goes out (a retry after its backoff, or a batch that waited for a slot): the timestamp
/// says when the request was sent, so that a receiver's tolerance never refuses a request
/// because it waited in flaghook.
const FRESH_FOR: Duration = Duration::from_secs(1);

impl Template {
    /// Requests to `endpoint`, with `meta` and the user's `headers`.
    pub(crate) fn new(
        meta: &BTreeMap<String, toml::Value>,
        headers: HeaderMap,
        endpoint: Endpoint,
        compression: Compression,
        signer: Option<Signer>,
    ) -> Self {
        let prefix = format!(r#"{{"meta":{},"events":["#, meta_json(meta));
        let mut headers = with_ours(headers, endpoint.authorization);
        if let Some(encoding) = compression.content_encoding() {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        Template {
            uri: endpoint.uri,
            headers,
            prefix: Bytes::from(prefix),
            compression,
            signer,
        }
    }

    pub(crate) fn compression(&self) -> Compression {
        self.compression
    }

    pub(crate) fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    /// The start of every body: `{"meta":{...},"events":[`.
    pub(crate) fn prefix(&self) -> Bytes {
        self.prefix.clone()
    }

    /// The exact bytes sent for `events` (already encoded JSON objects): the body,
    /// compressed when set, and their signature. `id` is the batch's `webhook-id`.
    pub(crate) fn sign<'a>(
        &self,
        events: impl Iterator<Item = &'a [u8]> + Clone,
        id: &MessageId,
    ) -> Signed {
        self.sign_body(body(&self.prefix, events), id)
    }

    /// [`Template::sign`] for a body already built: [`Template::prefix`], the events
    /// separated by commas, `]}`.
    pub(crate) fn sign_body(&self, body: Bytes, id: &MessageId) -> Signed {
        let body = self.compression.encode(body);
        let stamp = self.signer.as_ref().map(|signer| match signer {
            Signer::Hub(key) => Stamp::Hub(crate::sign::signature(key.expose(), &body)),
            Signer::StandardWebhooks(key) => standard_stamp(key, id, &body, unix_now()),
        });
        Signed {
            body,
            id: id.clone(),
            stamp,
        }
    }

    pub(crate) fn request(&self, signed: &Signed) -> Request<Full<Bytes>> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone());
        *request.headers_mut().expect("fresh builder") = self.headers.clone();
        match (&signed.stamp, &self.signer) {
            (Some(Stamp::Hub(signature)), _) => {
                request = request.header("X-Hub-Signature-256", signature);
            }
            (
                Some(Stamp::Standard {
                    timestamp,
                    signature,
                }),
                Some(signer),
            ) => {
                let now = unix_now();
                let (timestamp, signature) = if now.abs_diff(*timestamp) <= FRESH_FOR.as_secs() {
                    (*timestamp, signature.clone())
                } else {
                    let key = signer.key().expose();
                    let id = signed.id.as_str();
                    (
                        now,
                        crate::sign::standard_signature(key, id, now, &signed.body),
                    )
                };
                request = request
                    .header("webhook-id", signed.id.as_str())
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature);
            }
            _ => {}
        }
        request
            .body(Full::new(signed.body.clone()))
            .expect("valid request")
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn standard_stamp(key: &Secret, id: &MessageId, body: &[u8], timestamp: u64) -> Stamp {
    let signature = crate::sign::standard_signature(key.expose(), id.as_str(), timestamp, body);
    Stamp::Standard {
        timestamp,
        signature,
    }
}

/// A request's signature headers.
enum Stamp {
    /// `X-Hub-Signature-256`.
    Hub(String),
    /// `webhook-timestamp` and `webhook-signature` (with the request's `webhook-id`).
    Standard { timestamp: u64, signature: String },
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

/// The bytes a request sends, its batch's id and their signature (when a secret is set).
pub(crate) struct Signed {
    body: Bytes,
    id: MessageId,
    stamp: Option<Stamp>,
}

impl fmt::Debug for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signed({} bytes, id {:?}, signed: {})",
            self.body.len(),
            self.id,
            self.stamp.is_some()
        )
    }
}

/// `prefix` (`{"meta":{...},"events":[`), the events separated by commas, then `]}`.
pub fn body<E: AsRef<[u8]>>(prefix: &[u8], events: impl Iterator<Item = E> + Clone) -> Bytes {
    let len: usize = events.clone().map(|e| e.as_ref().len() + 1).sum();
    let mut body = BytesMut::with_capacity(prefix.len() + len + 2);
    body.put_slice(prefix);
    for (i, e) in events.enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(e.as_ref());
    }
    body.put_slice(crate::batch::BODY_SUFFIX);
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
