//! `type = "nats"`: events from a JetStream stream, through a durable pull consumer that
//! every central instance shares (the edge publishes them with the nats sink).
//!
//! Each message holds one event per line (or several). The source fetches messages in
//! batches bounded by the sinks' memory budgets, holds each one ([`acks::Messages`]) and
//! hands its lines on as one block whose lines carry the message's number and their byte
//! offset in it, so the sinks acknowledge them through the same path as a file's lines.
//!
//! Guarantees, per message:
//! - acked (`+ACK`) only once every sink reading the source delivered or dead-lettered
//!   every line of it;
//! - while held (a sink retries, or its budget is full), told in progress (`+WPI`) every
//!   half of the consumer's `ack_wait` (as the server reports it, looked up again every
//!   few seconds: see [`follow_ack_wait`]), so it is not handed to another instance;
//! - at a graceful stop, NAKed (`-NAK`) when the sinks did not deliver it: as a file's
//!   lines, it gets one prompt attempt within `shutdown_timeout`, and is left (to
//!   JetStream) rather than retried when that fails, so another instance takes it at
//!   once; after a crash, the server hands it out again once `ack_wait` has passed.
//!
//! When the consumer is gone while the source reads it (deleted, or its stream
//! recreated), the source looks it up again (creates it, with `create`) and reads on; the
//! messages held from the old one are delivered but not acked (see [`acks`]), and
//! JetStream hands them out again through the new one.

mod acks;

pub(crate) use acks::Messages;
pub use acks::NatsAckHandle;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lines::LineSplitter;
use super::Output;
use crate::config::{check_count, check_duration, check_max_line_bytes, HumanDuration};
use crate::event::Block;
use crate::nats::{ConnectConfig, ConnectSpec};

fn default_ack_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

fn default_max_ack_pending() -> usize {
    10_000
}

/// The most messages one fetch asks for.
const FETCH_MAX_MESSAGES: usize = 1024;
/// How long one fetch waits for messages when there are fewer than it asked for.
const FETCH_WAIT: Duration = Duration::from_secs(1);
/// How much longer than FETCH_WAIT the server may take to answer a fetch (or send its next
/// message) before the source asks whether the consumer is still there.
const FETCH_GRACE: Duration = Duration::from_secs(1);
/// The wait before trying again after the stream, the consumer or a fetch failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How often the consumer is looked up to follow its `ack_wait` (see [`follow_ack_wait`]).
const FOLLOW_EVERY: Duration = Duration::from_secs(5);
/// How long one such lookup may take before it is left to the next turn.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// `[sources.NAME] type = "nats"`: its own keys; the connection keys (`crate::nats`) are
/// read beside them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    /// The JetStream stream. Required.
    pub stream: String,
    /// The durable pull consumer every instance shares. Required.
    pub consumer: String,
    /// The stream's subjects, for a stream this source creates (`create = true`).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Create the stream (work-queue retention, on disk) and the consumer when missing.
    /// Default false: wait for them.
    #[serde(default)]
    pub create: bool,
    /// For a consumer this source creates: how long the server waits for a message's ack
    /// before handing it out again. Default "30s".
    #[serde(default = "default_ack_wait")]
    pub ack_wait: HumanDuration,
    /// For a consumer this source creates: the most messages handed out and not acked,
    /// over every instance. Default 10000 (at least instances x buffer_max_events).
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: usize,
    /// Lines longer than this are rejected as bad input. Default 102400.
    #[serde(default = "super::default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// The envelope field that holds the event, when a shipper wraps it.
    #[serde(default)]
    pub field: Option<String>,
}

const EXAMPLE: &str = r#"[sources.edge]
type = "nats"
url = "nats://nats.internal:4222"
stream = "GOFF"
consumer = "central"
subjects = ["goff.events"]
create = true"#;

/// A nats source's settings, parsed: made once by [`NatsSourceConfig::build`].
#[derive(Debug, Clone)]
pub struct NatsSourceSpec {
    pub(crate) connect: ConnectSpec,
    pub stream: String,
    pub consumer: String,
    pub subjects: Vec<String>,
    pub create: bool,
    pub ack_wait: Duration,
    pub max_ack_pending: usize,
    pub max_line_bytes: usize,
    pub envelope: Arc<[String]>,
}

impl NatsSourceConfig {
    /// Checks every key (at `key`, the source's); `connect` holds the connection keys.
    pub fn build(
        self,
        key: &str,
        base: &std::path::Path,
        connect: &ConnectConfig,
    ) -> Result<NatsSourceSpec> {
        check_name(key, "stream", &self.stream)?;
        check_name(key, "consumer", &self.consumer)?;
        if self.create && self.subjects.is_empty() {
            bail!("`{key}.subjects` is empty: a stream this source creates (`create = true`) needs the subjects the nats sinks publish to\n{EXAMPLE}");
        }
        if let Some(bad) = self
            .subjects
            .iter()
            .find(|s| s.is_empty() || s.contains(' '))
        {
            bail!("`{key}.subjects` has {bad:?}, which is not a subject (example: subjects = [\"goff.events\"])");
        }
        check_duration(
            &format!("{key}.ack_wait"),
            self.ack_wait.0,
            Duration::from_secs(24 * 3600),
            "ack_wait = \"30s\"",
        )?;
        check_count(
            &format!("{key}.max_ack_pending"),
            self.max_ack_pending,
            1..=10_000_000,
            "max_ack_pending = 10000",
        )?;
        check_max_line_bytes(key, self.max_line_bytes)?;
        Ok(NatsSourceSpec {
            connect: connect.build(key, base)?,
            stream: self.stream,
            consumer: self.consumer,
            subjects: self.subjects,
            create: self.create,
            ack_wait: self.ack_wait.0,
            max_ack_pending: self.max_ack_pending,
            max_line_bytes: self.max_line_bytes,
            envelope: super::envelope(key, self.field.as_deref())?,
        })
    }
}

/// A stream's or consumer's name: not empty, and without what NATS forbids in one.
fn check_name(key: &str, name: &str, value: &str) -> Result<()> {
    if value.is_empty()
        || value.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        })
    {
        bail!("`{key}.{name}` = {value:?} is not a JetStream name: letters, digits, `-` and `_`, without spaces, dots, `*`, `>` or slashes\n{EXAMPLE}");
    }
    Ok(())
}

impl NatsSourceSpec {
    /// One line for `flaghook validate`.
    pub fn describe(&self) -> String {
        format!(
            "nats {} stream {} consumer {}{}",
            self.connect.shown,
            self.stream,
            self.consumer,
            if self.create {
                format!(
                    " (created when missing: subjects [{}], ack_wait {}, max_ack_pending {})",
                    self.subjects.join(", "),
                    humantime::format_duration(self.ack_wait),
                    self.max_ack_pending
                )
            } else {
                String::new()
            }
        )
    }
}

/// Reads the consumer until shutdown (with `once`: until a fetch finds nothing), then
/// waits until the sinks are done and NAKs the messages they did not deliver.
pub async fn run(
    name: &str,
    spec: &NatsSourceSpec,
    messages: Arc<Messages>,
    output: Output,
    stop: CancellationToken,
    once: bool,
) {
    let component = format!("sources.{name}");
    let client = match spec.connect.connect(&component).await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(source = name, "{e:#}");
            return;
        }
    };
    let jetstream = jetstream::new(client.clone());
    let Some(mut consumer) = wait_for_consumer(name, spec, &jetstream, &stop).await else {
        return;
    };
    let (ack_wait, ack_waits) = watch::channel(consumer.cached_info().config.ack_wait);
    let acker = tokio::spawn({
        let acker = messages.acker(client.clone(), ack_waits);
        let name = name.to_owned();
        async move { acker.run(&name).await }
    });
    let reader = Reader {
        name,
        spec,
        messages,
        max_bytes: fetch_bytes(&output, &client),
    };
    loop {
        let ended = tokio::select! {
            ended = reader.read(&consumer, &output, &stop, once) => ended,
            never = follow_ack_wait(name, &consumer, &ack_wait) => match never {},
        };
        if ended != Ended::ConsumerGone {
            break;
        }
        let held = reader.messages.forget();
        tracing::warn!(source = name, stream = %spec.stream, consumer = %spec.consumer, held, "the consumer is gone (deleted, or its stream recreated): {} it again; the messages held from it are delivered but not acked, and JetStream hands them out again through the new consumer (at least once)", if spec.create { "creating" } else { "waiting for" });
        match wait_for_consumer(name, spec, &jetstream, &stop).await {
            Some(found) => {
                ack_wait.send_replace(found.cached_info().config.ack_wait);
                consumer = found;
            }
            None => break,
        }
    }
    // The sinks' input ends once every source has dropped its output; once the sinks are
    // done, so is the acker.
    drop(output);
    drop(reader);
    match acker.await {
        Ok(0) => tracing::info!(source = name, "nats source stopped"),
        Ok(naked) => tracing::info!(
            source = name,
            messages = naked,
            "nats source stopped; messages not delivered were NAKed, for another instance (or the next start) to take"
        ),
        Err(e) => crate::topology::propagate_panic(Err(e)),
    }
}

/// Looks the consumer up every [`FOLLOW_EVERY`] and sends the acker its `ack_wait` when it
/// changed: an owner may edit a consumer in place, and held messages told in progress at
/// the pace of a longer `ack_wait` than the consumer's would be handed out again. Until the
/// change is seen (at most [`FOLLOW_EVERY`]), messages held longer than the new `ack_wait`
/// may still be (at least once: delivered again, never lost). Runs
/// until dropped; a lookup that fails is tried at the next turn (a consumer that is gone
/// is the reader's to find).
async fn follow_ack_wait(
    name: &str,
    consumer: &PullConsumer,
    ack_wait: &watch::Sender<Duration>,
) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        let Ok(Ok(info)) = tokio::time::timeout(LOOKUP_TIMEOUT, consumer.get_info()).await else {
            continue;
        };
        let now = info.config.ack_wait;
        if ack_wait.send_if_modified(|was| std::mem::replace(was, now) != now) {
            tracing::info!(source = name, consumer = %info.name, ack_wait = %humantime::format_duration(now), "the consumer's ack_wait changed: the messages held are told in progress at its pace");
        }
    }
}

/// The most bytes one fetch asks for: the smallest budget of the sinks, but never less
/// than a message may hold (the server refuses a fetch that no message fits).
fn fetch_bytes(output: &Output, client: &async_nats::Client) -> usize {
    let max_payload = match client.server_info().max_payload {
        0 => 1 << 20,
        n => n,
    };
    output.budget_caps().1.max(max_payload + 64 * 1024)
}

/// Waits for the stream and the consumer (creating them with `create`), and warns of
/// settings that differ from the source's. `None`: shutdown came first.
async fn wait_for_consumer(
    name: &str,
    spec: &NatsSourceSpec,
    jetstream: &jetstream::Context,
    stop: &CancellationToken,
) -> Option<PullConsumer> {
    let mut warned = false;
    loop {
        match consumer(spec, jetstream).await {
            Ok(consumer) => {
                check_consumer(name, spec, consumer.cached_info());
                return Some(consumer);
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(source = name, stream = %spec.stream, consumer = %spec.consumer, "{e:#}; trying again every {}", humantime::format_duration(RETRY_DELAY));
            }
            Err(e) => tracing::debug!(source = name, "{e:#}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(RETRY_DELAY) => {}
        }
    }
}

async fn consumer(spec: &NatsSourceSpec, jetstream: &jetstream::Context) -> Result<PullConsumer> {
    let stream = if spec.create {
        jetstream
            .get_or_create_stream(stream::Config {
                name: spec.stream.clone(),
                subjects: spec.subjects.clone(),
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot create stream {}: {e}", spec.stream))?
    } else {
        jetstream.get_stream(&spec.stream).await.map_err(|e| {
            anyhow::anyhow!(
                "no stream {} ({e}): create it, or set create = true",
                spec.stream
            )
        })?
    };
    if let Some(missing) = spec
        .subjects
        .iter()
        .find(|s| !stream.cached_info().config.subjects.contains(s))
    {
        tracing::warn!(stream = %spec.stream, subject = %missing, subjects = ?stream.cached_info().config.subjects, "the stream exists without this subject: using it as it is");
    }
    let consumer = if spec.create {
        stream
            .get_or_create_consumer(
                &spec.consumer,
                pull::Config {
                    durable_name: Some(spec.consumer.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: spec.ack_wait,
                    max_ack_pending: i64::try_from(spec.max_ack_pending).unwrap_or(i64::MAX),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot create consumer {}: {e}", spec.consumer))?
    } else {
        stream.get_consumer(&spec.consumer).await.map_err(|e| {
            anyhow::anyhow!(
                "no consumer {} on stream {} ({e}): create it, or set create = true",
                spec.consumer,
                spec.stream
            )
        })?
    };
    Ok(consumer)
}

/// Warns of a consumer whose settings differ from the source's (it is used as it is).
fn check_consumer(name: &str, spec: &NatsSourceSpec, info: &async_nats::jetstream::consumer::Info) {
    let config = &info.config;
    if config.ack_policy != AckPolicy::Explicit {
        tracing::warn!(source = name, consumer = %spec.consumer, "the consumer's ack policy is not explicit: messages may be dropped before they are delivered; recreate it with ack_policy explicit");
    }
    if spec.create && config.ack_wait != spec.ack_wait {
        tracing::warn!(source = name, consumer = %spec.consumer, "the consumer's ack_wait is {}, not ack_wait = {}: using it as it is", humantime::format_duration(config.ack_wait), humantime::format_duration(spec.ack_wait));
    }
    let pending = usize::try_from(config.max_ack_pending).unwrap_or(usize::MAX);
    if spec.create && pending != spec.max_ack_pending {
        tracing::warn!(source = name, consumer = %spec.consumer, "the consumer's max_ack_pending is {}, not max_ack_pending = {}: using it as it is", config.max_ack_pending, spec.max_ack_pending);
    }
    tracing::info!(source = name, stream = %spec.stream, consumer = %spec.consumer, ack_wait = %humantime::format_duration(config.ack_wait), max_ack_pending = config.max_ack_pending, "reading the consumer");
}

/// Why [`Reader::read`] returned.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Shutdown, the sinks gone, or (with `once`) a fetch that found nothing.
    Done,
    /// A fetch failed or went unanswered, and the server no longer has the consumer (or
    /// its stream).
    ConsumerGone,
}

/// The fetch loop of one source.
struct Reader<'a> {
    name: &'a str,
    spec: &'a NatsSourceSpec,
    messages: Arc<Messages>,
    max_bytes: usize,
}

impl Reader<'_> {
    /// Fetches and hands on messages until shutdown (or, with `once`, a fetch that finds
    /// none), or until a fetch fails or goes unanswered because the consumer is gone. Every message of a
    /// fetch is held as soon as it arrives (so it is told in progress while it waits); then
    /// their lines go to the sinks, waiting for room.
    async fn read(
        &self,
        consumer: &PullConsumer,
        output: &Output,
        stop: &CancellationToken,
        once: bool,
    ) -> Ended {
        let (events_cap, _) = output.budget_caps();
        let limit = self.check_budget(consumer, events_cap);
        let mut warned = false;
        // After a fetch that found messages, the next one takes what is there now and
        // returns at once; after one that found none, it waits up to FETCH_WAIT for some.
        // (A fetch that always waited for a full batch made a backlog smaller than one
        // wait a second per fetch.)
        let mut wait = true;
        while !stop.is_cancelled() {
            let batch = async {
                if wait {
                    let batch = consumer.batch().max_messages(limit);
                    batch
                        .max_bytes(self.max_bytes)
                        .expires(FETCH_WAIT)
                        .messages()
                        .await
                } else {
                    // `expires` here bounds the wait for an answer: a server that lets
                    // out no more (max_ack_pending) may not answer a fetch at all.
                    let fetch = consumer.fetch().max_messages(limit);
                    fetch
                        .max_bytes(self.max_bytes)
                        .expires(FETCH_WAIT)
                        .messages()
                        .await
                }
            };
            let mut batch = tokio::select! {
                _ = stop.cancelled() => return Ended::Done,
                batch = batch => match batch {
                    Ok(batch) => batch,
                    Err(e) => {
                        if Self::gone(consumer).await {
                            return Ended::ConsumerGone;
                        }
                        self.fetch_failed(&mut warned, &e.to_string(), stop).await;
                        continue;
                    }
                },
            };
            // A fetch ends within FETCH_WAIT: read to its end even at shutdown, so that
            // every message handed to this instance is held, and NAKed if not delivered.
            let mut blocks = Vec::new();
            let mut failed = false;
            let mut ended = None;
            loop {
                match tokio::time::timeout(FETCH_WAIT + FETCH_GRACE, batch.next()).await {
                    Ok(Some(Ok(message))) => blocks.extend(self.hold(message)),
                    Ok(None) => break,
                    // No answer: the server drops a fetch for a consumer it no longer has
                    // (and one while `max_ack_pending` messages are out). A message it sends
                    // later to this fetch is not held: it comes again after `ack_wait`.
                    Err(_elapsed) => {
                        if Self::gone(consumer).await {
                            ended = Some(Ended::ConsumerGone);
                        }
                        break;
                    }
                    Ok(Some(Err(e))) => {
                        failed = true;
                        if Self::gone(consumer).await {
                            ended = Some(Ended::ConsumerGone);
                        } else {
                            self.fetch_failed(&mut warned, &e.to_string(), stop).await;
                        }
                        break;
                    }
                }
            }
            if warned && !failed {
                tracing::info!(source = self.name, consumer = %self.spec.consumer, "fetching again");
                warned = false;
            }
            if once && blocks.is_empty() && wait && ended.is_none() {
                return Ended::Done;
            }
            wait = blocks.is_empty();
            for block in blocks {
                tokio::select! {
                    _ = stop.cancelled() => return Ended::Done,
                    sent = output.send(block) => if sent.is_err() { return Ended::Done },
                }
            }
            // Only now: what the fetch brought before the consumer went is held, and goes
            // to the sinks (delivered, not acked) before the source looks it up again.
            if let Some(ended) = ended {
                return ended;
            }
        }
        Ended::Done
    }

    /// The most messages one fetch asks for; warns when the consumer's `max_ack_pending`
    /// is below what this instance may hold, which caps every instance's fetches.
    fn check_budget(&self, consumer: &PullConsumer, events_cap: usize) -> usize {
        let pending = usize::try_from(consumer.cached_info().config.max_ack_pending)
            .ok()
            .filter(|&p| p > 0)
            .unwrap_or(usize::MAX);
        if pending < events_cap {
            tracing::warn!(source = self.name, consumer = %self.spec.consumer, max_ack_pending = pending, buffer_max_events = events_cap, "the consumer's max_ack_pending is below what one instance may hold (one event per message): fetches stop there, for every instance; set max_ack_pending to at least instances x buffer_max_events");
        }
        FETCH_MAX_MESSAGES.min(pending).max(1)
    }

    /// Whether the server no longer has `consumer` (nor, perhaps, its stream): asked after
    /// a fetch failed or went unanswered, since the server answers a fetch for a consumer
    /// it no longer has with nothing at all (nats-server 2.9), and the errors a fetch does
    /// get (a 409 "Consumer Deleted") come as text.
    async fn gone(consumer: &PullConsumer) -> bool {
        // Bounded: without a connection, the fetch is retried as before, not held up here.
        match tokio::time::timeout(RETRY_DELAY, consumer.get_info()).await {
            Ok(Err(e)) => matches!(
                e.kind(),
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
            ),
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    async fn fetch_failed(&self, warned: &mut bool, error: &str, stop: &CancellationToken) {
        if !std::mem::replace(warned, true) {
            tracing::warn!(source = self.name, consumer = %self.spec.consumer, error, "fetch failed; trying again");
        } else {
            tracing::debug!(source = self.name, error, "fetch failed");
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(RETRY_DELAY) => {}
        }
    }

    /// Holds `message` and cuts it into lines; `None` when it has none (it is acked at
    /// once) or is no JetStream message (it cannot be acked: skipped).
    fn hold(&self, message: jetstream::Message) -> Option<Block> {
        let reply = message.reply.clone()?;
        let sequence = message.info().map_or(0, |info| info.stream_sequence);
        let payload = &message.payload;
        let id = self.messages.hold(reply, payload.len() as u64);
        if payload.is_empty() {
            return None;
        }
        let mut splitter = LineSplitter::new(self.spec.max_line_bytes, 0);
        splitter.buffer().extend_from_slice(payload);
        let mut lines = Vec::new();
        // The last line, if it has no newline, holds its own bytes (see `finish`).
        let buffer = splitter.split(&mut lines);
        splitter.finish(&mut lines);
        Some(Block {
            source_name: Arc::from(self.name),
            origin: Arc::from(format!(
                "nats stream {} message {sequence}",
                self.spec.stream
            )),
            file: Some(id),
            input: 0,
            envelope: self.spec.envelope.clone(),
            buffer,
            lines,
        })
    }
}
