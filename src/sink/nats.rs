//! `type = "nats"`: publishes events to a JetStream subject, from the edge to a central
//! tier (see the nats source, `crate::source::nats`).
//!
//! The sink is the shared pipeline (`super::pipeline`) with `Publisher` as its transport:
//! a batch of up to `max_events` events is one message, one JSON event per line, each line
//! ending in `\n`. Its events count as delivered only once JetStream answered with a
//! PubAck, that is, once the stream stored the message; only then do file checkpoints
//! move. Up to `request_concurrency` messages wait for their PubAck at once. A message
//! keeps its `Nats-Msg-Id` across retries, so that the stream's duplicate window drops a
//! re-send whose first attempt was stored after all (a PubAck lost with a connection).
//!
//! What comes of a publish: a PubAck delivers; a message over the server's `max_payload`
//! is split in halves (one event over it alone is dead-lettered); anything else (no
//! connection, no PubAck within `timeout`, no stream for the subject, a stream that is
//! full) is retried with the webhook's backoff and keys.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::{HeaderMap, Subject};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::delivery::{Delivery, DeliveryConfig, SinkDefaults};
use super::pipeline::{MessageId, Outcome, Transport};
use super::retry::Decision;
use crate::event::{EventType, Schema};
use crate::nats::{ConnectConfig, ConnectSpec};

fn default_max_events() -> usize {
    100
}

/// `[sinks.NAME] type = "nats"`: its own keys. The connection keys (`crate::nats`) and
/// those every sink has (`DeliveryConfig`) are read beside them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// Sources this sink reads. Required.
    pub inputs: Vec<String>,
    /// The subject messages are published to; a stream must take it. Required.
    pub subject: String,
    /// The most events in one message; also the batch trigger. Default 100.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
}

const EXAMPLE: &str = r#"[sinks.central]
type = "nats"
inputs = ["goff_files"]
url = "nats://nats.internal:4222"
subject = "goff.events""#;

/// A nats sink's settings, parsed: made once by [`NatsSinkConfig::build`].
#[derive(Debug)]
pub struct NatsSinkSpec {
    pub inputs: Vec<String>,
    pub subject: String,
    pub(crate) connect: ConnectSpec,
    pub(crate) delivery: Delivery,
    /// How long a publish waits for its PubAck.
    pub(crate) timeout: Duration,
    pub schema: Schema,
    pub event_types: Vec<EventType>,
    pub buffer_max_events: usize,
    pub buffer_max_bytes: usize,
    pub dead_letter_max_bytes: u64,
}

impl NatsSinkConfig {
    /// Checks every key (at `key`, the sink's); `delivery` and `connect` are the keys read
    /// beside this struct's.
    pub fn build(
        self,
        key: &str,
        base: &Path,
        delivery: &DeliveryConfig,
        connect: &ConnectConfig,
    ) -> Result<NatsSinkSpec> {
        if self.inputs.is_empty() {
            bail!("`{key}.inputs` is empty: name the sources this sink reads\n{EXAMPLE}");
        }
        check_subject(key, &self.subject)?;
        let shared = delivery.build(
            key,
            SinkDefaults {
                batch_key: "max_events",
                batch_example: default_max_events(),
                max_events: self.max_events,
                flush_interval: Duration::from_secs(1),
                request_concurrency: 16,
            },
        )?;
        Ok(NatsSinkSpec {
            connect: connect.build(key, base)?,
            inputs: self.inputs,
            subject: self.subject,
            delivery: shared.delivery,
            timeout: shared.timeout,
            schema: shared.schema,
            event_types: shared.event_types,
            buffer_max_events: shared.buffer_max_events,
            buffer_max_bytes: shared.buffer_max_bytes,
            dead_letter_max_bytes: shared.dead_letter_max_bytes,
        })
    }
}

/// A subject to publish to: tokens of printable characters between dots, no wildcard.
fn check_subject(key: &str, subject: &str) -> Result<()> {
    let problem = if subject.is_empty() {
        Some("is empty")
    } else if subject.split('.').any(|t| t == "*" || t == ">") {
        Some("has a wildcard: messages are published to one subject")
    } else if subject.split('.').any(str::is_empty) {
        Some("has an empty token (two dots in a row, or a dot at an end)")
    } else if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("has a space or a control character")
    } else {
        None
    };
    match problem {
        Some(why) => {
            bail!("`{key}.subject` = {subject:?} {why} (example: subject = \"goff.events\")")
        }
        None => Ok(()),
    }
}

impl NatsSinkSpec {
    /// `max_events`: the most events in one message.
    pub fn max_events(&self) -> usize {
        self.delivery.max_events
    }

    /// One line for `flaghook validate`.
    pub fn describe(&self) -> String {
        format!(
            "nats {} subject {} <- [{}], schema {}, messages of up to {} events every {}, {} PubAck(s) awaited at once",
            self.connect.shown,
            self.subject,
            self.inputs.join(", "),
            self.schema.as_str(),
            self.max_events(),
            humantime::format_duration(self.delivery.flush_interval),
            self.delivery.request_concurrency,
        )
    }
}

/// The nats sink's transport: publishes each part of a batch as one JetStream message and
/// waits for its PubAck. Connects at its first publish, and reconnects by itself.
#[derive(Debug)]
pub(crate) struct Publisher {
    name: String,
    subject: Subject,
    connect: ConnectSpec,
    timeout: Duration,
    jetstream: OnceCell<async_nats::jetstream::Context>,
}

/// A message ready to publish.
pub(crate) struct Message {
    payload: Bytes,
    id: MessageId,
}

impl Publisher {
    pub(crate) fn new(name: &str, spec: &NatsSinkSpec) -> Arc<Self> {
        Arc::new(Publisher {
            name: format!("sinks.{name}"),
            subject: Subject::from(spec.subject.as_str()),
            connect: spec.connect.clone(),
            timeout: spec.timeout,
            jetstream: OnceCell::new(),
        })
    }

    async fn jetstream(&self) -> Result<&async_nats::jetstream::Context> {
        self.jetstream
            .get_or_try_init(|| async {
                let client = self.connect.connect(&self.name).await?;
                let mut context = async_nats::jetstream::new(client);
                context.set_timeout(self.timeout);
                Ok(context)
            })
            .await
    }

    /// Waits up to `timeout` for a connection: until then the server's `max_payload` is not
    /// known, and a message over it would cost the connection (and its PubAck `timeout`).
    async fn connected(&self, client: &async_nats::Client) -> bool {
        let deadline = tokio::time::Instant::now() + self.timeout;
        while client.connection_state() != async_nats::connection::State::Connected {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Publishes `message` and waits for its PubAck, all within `timeout`.
    async fn publish(&self, message: Message) -> Outcome {
        let failed = |detail: String| Outcome {
            decision: Decision::Retry { after: None },
            status: None,
            detail,
        };
        let jetstream = match self.jetstream().await {
            Ok(jetstream) => jetstream,
            Err(e) => return failed(format!("{e:#}")),
        };
        let client = jetstream.client();
        if !self.connected(&client).await {
            return failed(format!(
                "not connected to NATS at {} within {}",
                self.connect.shown,
                humantime::format_duration(self.timeout),
            ));
        }
        let max_payload = client.server_info().max_payload;
        if message.payload.len() > max_payload {
            return Outcome {
                decision: Decision::Split,
                status: None,
                detail: format!(
                    "a message of {} bytes is over the server's max_payload of {max_payload} bytes",
                    message.payload.len()
                ),
            };
        }
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message.id.as_str());
        let published = tokio::time::timeout(self.timeout, async {
            let subject = self.subject.clone();
            jetstream
                .publish_with_headers(subject, headers, message.payload)
                .await?
                .await
        });
        match published.await {
            Ok(Ok(ack)) => Outcome {
                decision: Decision::Delivered,
                status: Some(200),
                detail: format!("stored in stream {} at {}", ack.stream, ack.sequence),
            },
            Ok(Err(e)) if e.kind() == PublishErrorKind::MaxPayloadExceeded => Outcome {
                decision: Decision::Split,
                status: None,
                detail: format!("the message is over the server's max_payload: {e}"),
            },
            Ok(Err(e)) => failed(format!("publish to {} failed: {e}", self.subject)),
            Err(_) => failed(format!(
                "no PubAck within {}",
                humantime::format_duration(self.timeout)
            )),
        }
    }
}

impl Transport for Publisher {
    type Request = Message;

    /// The events, one per line, each ending in `\n`.
    fn prepare<'a>(
        &self,
        events: impl Iterator<Item = &'a [u8]> + Clone,
        id: &MessageId,
    ) -> Message {
        let len = events.clone().map(|e| e.len() + 1).sum();
        let mut payload = BytesMut::with_capacity(len);
        for event in events {
            payload.put_slice(event);
            payload.put_u8(b'\n');
        }
        Message {
            payload: payload.freeze(),
            id: id.clone(),
        }
    }

    fn send(&self, message: Message) -> impl std::future::Future<Output = Outcome> + Send {
        self.publish(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked() {
        check_subject("sinks.n", "goff.events").unwrap();
        for bad in [
            "",
            "goff.*",
            "goff.>",
            "goff..events",
            "goff events",
            ".goff",
        ] {
            let err = check_subject("sinks.n", bad).unwrap_err().to_string();
            assert!(
                err.contains("`sinks.n.subject`") && err.contains("example"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_message_is_one_event_per_line() {
        let spec = NatsSinkConfig {
            inputs: vec!["a".into()],
            subject: "s".into(),
            max_events: 10,
        };
        let table: toml::Table = toml::from_str("url = \"nats://127.0.0.1:1\"").unwrap();
        let connect = ConnectConfig::deserialize(toml::Value::Table(table)).unwrap();
        let spec = spec
            .build(
                "sinks.n",
                Path::new("."),
                &DeliveryConfig::default(),
                &connect,
            )
            .unwrap();
        let publisher = Publisher::new("n", &spec);
        let events = [Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"{}")];
        let message = publisher.prepare(events.iter().map(|e| &e[..]), &MessageId::new());
        assert_eq!(&message.payload[..], b"{\"a\":1}\n{}\n");
    }
}
