//! Sinks take the sources' lines and deliver them. Every sink is one `pipeline` (decode,
//! batch, send, decide, acknowledge) around its transport: [`webhook`] POSTs signed
//! requests; `nats` publishes to JetStream. What they share: `decode` (the first stage),
//! `delivery` and `retry` (the settings and rules of retries), `ack` (moves the sources'
//! positions, in files, journals or JetStream, once events are delivered), `deadletter`
//! (keeps what is rejected); `replay` sends dead letters again.

pub(crate) mod ack;
pub(crate) mod deadletter;
pub(crate) mod decode;
pub(crate) mod delivery;
pub mod nats;
pub(crate) mod pipeline;
pub mod replay;
pub(crate) mod retry;
pub mod webhook;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::config::{split_type, typed, typed_beside};
use crate::event::Item;
use crate::telemetry::{RejectClass, SinkCounters, SkipClass};
use delivery::DeliveryConfig;

/// One `[sinks.NAME]` table, checked: `type` picks the kind.
// Made once per sink at start-up and kept by the plan: the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SinkSpec {
    Webhook(webhook::WebhookSpec),
    Nats(nats::NatsSinkSpec),
}

impl SinkSpec {
    /// Reads and checks the table at `key` (`sinks.NAME`); relative paths are relative to
    /// `base`.
    pub fn from_table(key: &str, table: toml::Table, base: &Path) -> Result<Self> {
        let (kind, table) = split_type(key, table, "\"webhook\" or \"nats\"")?;
        match kind.as_str() {
            "webhook" => {
                let (table, delivery) = split_table(key, table)?;
                let config: webhook::WebhookConfig =
                    typed_beside(key, table, &DeliveryConfig::KEYS)?;
                Ok(SinkSpec::Webhook(config.build(key, base, &delivery)?))
            }
            "nats" => {
                let (table, delivery) = split_table(key, table)?;
                let (table, connect) = crate::nats::split_table(key, table)?;
                let beside =
                    [&DeliveryConfig::KEYS[..], &crate::nats::ConnectConfig::KEYS].concat();
                let config: nats::NatsSinkConfig = typed_beside(key, table, &beside)?;
                Ok(SinkSpec::Nats(
                    config.build(key, base, &delivery, &connect)?,
                ))
            }
            other => {
                bail!("`{key}.type` = {other:?} is not a sink type: use \"webhook\" or \"nats\"")
            }
        }
    }

    /// The sources it reads.
    pub fn inputs(&self) -> &[String] {
        match self {
            SinkSpec::Webhook(w) => &w.inputs,
            SinkSpec::Nats(n) => &n.inputs,
        }
    }

    /// A digest of the TLS files the sink read at start: a reload restarts the sink when
    /// they changed.
    pub(crate) fn files_read(&self) -> Option<u64> {
        match self {
            SinkSpec::Webhook(w) => w.files_read(),
            SinkSpec::Nats(n) => n.connect.files_read(),
        }
    }

    /// What the sink holds in memory at most: events and bytes of lines.
    pub(crate) fn budget(&self) -> crate::source::Budget {
        let (events, bytes) = match self {
            SinkSpec::Webhook(w) => (w.buffer_max_events, w.buffer_max_bytes),
            SinkSpec::Nats(n) => (n.buffer_max_events, n.buffer_max_bytes),
        };
        crate::source::Budget::new(events, bytes)
    }

    /// Its batches, retries and shutdown.
    pub(crate) fn delivery(&self) -> &delivery::Delivery {
        match self {
            SinkSpec::Webhook(w) => &w.delivery,
            SinkSpec::Nats(n) => &n.delivery,
        }
    }

    /// How its lines become events.
    pub(crate) fn decoder(&self) -> crate::event::Decoder {
        match self {
            SinkSpec::Webhook(w) => crate::event::Decoder::new(w.schema, &w.event_types),
            SinkSpec::Nats(n) => crate::event::Decoder::new(n.schema, &n.event_types),
        }
    }

    /// `dead_letter_max_bytes`.
    pub(crate) fn dead_letter_max_bytes(&self) -> u64 {
        match self {
            SinkSpec::Webhook(w) => w.dead_letter_max_bytes,
            SinkSpec::Nats(n) => n.dead_letter_max_bytes,
        }
    }

    /// One line for `flaghook validate`.
    pub fn describe(&self) -> String {
        let c = match self {
            SinkSpec::Webhook(c) => c,
            SinkSpec::Nats(n) => return n.describe(),
        };
        let signed = match c.signing() {
            Some((scheme, _)) => format!("signed ({})", scheme.as_str()),
            None => "unsigned".to_owned(),
        };
        format!(
            "webhook {} <- [{}], schema {}, batches of up to {} events every {}, {}, compression {}, {} request(s) in flight",
            c.endpoint_shown,
            c.inputs.join(", "),
            c.schema.as_str(),
            c.max_events(),
            humantime::format_duration(c.flush_interval()),
            signed,
            c.compression().as_str(),
            c.request_concurrency(),
        ) + &c.proxy_note()
    }
}

/// A sink's table as its own keys and the keys every sink shares ([`DeliveryConfig`]),
/// each read strictly (an unknown key is an error that names it).
fn split_table(key: &str, table: toml::Table) -> Result<(toml::Table, DeliveryConfig)> {
    let (shared, own): (toml::Table, toml::Table) = table
        .into_iter()
        .partition(|(name, _)| DeliveryConfig::KEYS.contains(&name.as_str()));
    Ok((own, typed(key, shared)?))
}

/// What a sink did in this run, for the `--once` summary and the logs; each count also
/// goes to the sink's [`SinkCounters`], which outlive the run (metrics, health, progress).
#[derive(Debug)]
pub(crate) struct Stats {
    /// Events the endpoint accepted (2xx).
    delivered: AtomicU64,
    /// Requests that got a 2xx.
    requests: AtomicU64,
    /// Bad input lines and events the endpoint rejected, all dead-lettered.
    rejected: AtomicU64,
    /// Events and bad lines neither delivered nor dead-lettered when the sink stopped
    /// (they stay in their files or journals for the next run).
    not_delivered: AtomicU64,
    pub(crate) counters: Arc<SinkCounters>,
}

impl Stats {
    pub(crate) fn new(counters: Arc<SinkCounters>) -> Self {
        Stats {
            delivered: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            not_delivered: AtomicU64::new(0),
            counters,
        }
    }

    /// A request carrying `events` got a 2xx.
    pub(crate) fn delivered(&self, events: u64) {
        add(&self.delivered, events);
        add(&self.requests, 1);
        self.counters.delivered(events);
    }

    /// `n` lines or events were rejected for `class`, their dead letters written.
    pub(crate) fn rejected(&self, class: RejectClass, n: u64) {
        add(&self.rejected, n);
        self.counters.rejected(class, n);
        self.counters.dead_lettered(n);
    }

    /// `n` lines held no event to send (`class` says why).
    pub(crate) fn skipped(&self, class: SkipClass, n: u64) {
        self.counters.skipped(class, n);
    }

    /// `n` events or bad lines were left for the next run, or lost.
    pub(crate) fn not_delivered(&self, n: u64) {
        add(&self.not_delivered, n);
        self.counters.not_delivered(n);
    }

    /// (delivered, requests, rejected, not delivered) so far.
    pub(crate) fn totals(&self) -> (u64, u64, u64, u64) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (
            get(&self.delivered),
            get(&self.requests),
            get(&self.rejected),
            get(&self.not_delivered),
        )
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The events among `items` (the rest are positions).
pub(crate) fn count_events(items: &[Item]) -> usize {
    items.iter().filter(|i| i.event().is_some()).count()
}
