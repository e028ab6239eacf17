//! Sinks take the sources' lines and deliver them: [`webhook`] is the sink, as one
//! pipeline; `decode` is its first stage; `ack` moves file checkpoints once events are
//! delivered; `deadletter` and `spill` keep what is not delivered; `replay` sends
//! dead letters again.

pub(crate) mod ack;
pub(crate) mod deadletter;
pub(crate) mod decode;
pub mod replay;
pub(crate) mod spill;
pub mod webhook;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Result};

use crate::config::{split_type, typed};
use crate::event::Item;

/// One `[sinks.NAME]` table, checked: `type` picks the kind.
#[derive(Debug)]
pub enum SinkSpec {
    Webhook(webhook::WebhookSpec),
}

impl SinkSpec {
    /// Reads and checks the table at `key` (`sinks.NAME`); relative paths are relative to
    /// `base`.
    pub fn from_table(key: &str, table: toml::Table, base: &Path) -> Result<Self> {
        let (kind, table) = split_type(key, table, "\"webhook\"")?;
        match kind.as_str() {
            "webhook" => {
                let config: webhook::WebhookConfig = typed(key, table)?;
                Ok(SinkSpec::Webhook(config.build(key, base)?))
            }
            other => bail!("`{key}.type` = {other:?} is not a sink type: use \"webhook\""),
        }
    }

    /// The sources it reads.
    pub fn inputs(&self) -> &[String] {
        match self {
            SinkSpec::Webhook(w) => &w.inputs,
        }
    }

    /// One line for `flaghook validate`.
    pub fn describe(&self) -> String {
        let SinkSpec::Webhook(c) = self;
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

/// What a sink did, for the `--once` summary and the logs.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Events the endpoint accepted (2xx).
    pub(crate) delivered: AtomicU64,
    /// Requests that got a 2xx.
    pub(crate) requests: AtomicU64,
    /// Bad input lines and events the endpoint rejected, all dead-lettered.
    pub(crate) rejected: AtomicU64,
    /// Events and bad lines neither delivered nor dead-lettered when the sink stopped
    /// (they stay in their files, or were spilled to `data_dir/spill`; a bad line from TCP
    /// or stdin whose dead letter could not be written is lost).
    pub(crate) not_delivered: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The events among `items` (the rest are positions).
pub(crate) fn count_events(items: &[Item]) -> usize {
    items.iter().filter(|i| i.event().is_some()).count()
}
