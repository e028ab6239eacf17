//! The webhook sink: GO Feature Flag's signed `POST`, sent by the sink pipeline
//! (`super::pipeline`) through `Poster`, its `Transport`.
//!
//! # Layout
//! - `config`: the settings, checked once into a [`WebhookSpec`].
//! - `request`: the request's body, headers and signature.
//! - `client`: the HTTP client (`Poster`), over TLS (`crate::tls`) and proxies (`proxy`).
//! - `status`: which statuses are delivered, retried, split or rejected.

pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod proxy;
pub(crate) mod request;
pub(crate) mod status;

pub(crate) use client::Poster;
pub use config::{EndpointUrl, HeaderValues, Secret, WebhookConfig, WebhookSpec};
pub use proxy::ProxyUrl;
pub use request::body;

use bytes::Bytes;

use super::pipeline::{MessageId, Outcome, Transport};
use request::Signed;

impl Transport for Poster {
    type Request = Signed;

    fn prepare<'a>(
        &self,
        events: impl Iterator<Item = &'a [u8]> + Clone,
        id: &MessageId,
    ) -> Signed {
        Poster::prepare(self, events, id)
    }

    fn send(&self, request: Signed) -> impl std::future::Future<Output = Outcome> + Send {
        self.post(request)
    }

    fn body_prefix(&self) -> Option<Bytes> {
        Some(Poster::body_prefix(self))
    }

    fn prepare_body(&self, body: Bytes, id: &MessageId) -> Option<Signed> {
        Some(Poster::prepare_body(self, body, id))
    }
}
