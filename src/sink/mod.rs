//! Sinks take the sources' lines and deliver them: [`webhook`] is the sink, as one
//! pipeline; `decode` is its first stage; `ack` moves checkpoints (of files and journals)
//! once events are delivered; `deadletter` keeps what is rejected; `replay` sends dead
//! letters again.

pub(crate) mod ack;
pub(crate) mod deadletter;
pub(crate) mod decode;
pub mod replay;
pub mod webhook;

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
    /// Reads and checks the table at `key` (`sinks.NAME`).
    pub fn from_table(key: &str, table: toml::Table) -> Result<Self> {
        let (kind, table) = split_type(key, table, "\"webhook\"")?;
        match kind.as_str() {
            "webhook" => {
                let config: webhook::WebhookConfig = typed(key, table)?;
                Ok(SinkSpec::Webhook(config.build(key)?))
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
        format!(
            "webhook {} <- [{}], schema {}, batches of up to {} events every {}, {}",
            c.endpoint_shown,
            c.inputs.join(", "),
            c.schema.as_str(),
            c.max_events(),
            humantime::format_duration(c.flush_interval()),
            if c.signing_secret().is_some() {
                "signed"
            } else {
                "unsigned"
            },
        )
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
    /// (they stay in their files or journals for the next run).
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
