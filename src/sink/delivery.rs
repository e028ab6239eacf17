//! What every sink's delivery loop needs from its config (see `super::pipeline`).

use std::time::Duration;

/// A sink's settings that the delivery loop needs: its batches, retries and shutdown.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) max_events: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) retry_initial_backoff: Duration,
    pub(crate) retry_max_backoff: Duration,
    pub(crate) retry_max_duration: Option<Duration>,
    pub(crate) shutdown_timeout: Duration,
    /// Requests in flight at once.
    pub(crate) request_concurrency: usize,
}

use anyhow::{bail, Result};
use serde::Deserialize;

use crate::config::{check_count, check_duration, ByteSize, HumanDuration};
use crate::event::{EventType, Schema};

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
fn default_dead_letter_max_bytes() -> ByteSize {
    ByteSize(1 << 30)
}

/// The largest batch: each batch reserves room for this many events, and one request
/// carries them all.
const MAX_BATCH_EVENTS: usize = 1_000_000;
/// The largest `buffer_max_events`: about 1 KB of memory each, and a semaphore permit each
/// (a semaphore takes at most `u32::MAX` at once).
const MAX_BUFFER_EVENTS: usize = 10_000_000;
/// The longest `flush_interval`, backoffs and `shutdown_timeout`.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The longest request `timeout`.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The most requests in flight at once: each holds a connection and a batch.
const MAX_REQUEST_CONCURRENCY: usize = 64;
/// Events a sink holds by default beyond its batches (see `buffer_max_events`): the sources
/// read on while the batch being gathered is full, so that the one after it has begun when
/// a request returns. A fixed number rather than a batch more: the memory a batch costs grows
/// with the batch size, what reading ahead needs does not.
const READ_AHEAD_EVENTS: usize = 10_000;

/// The default `buffer_max_events`: room for a batch in each request slot, the next one
/// gathering, and [`READ_AHEAD_EVENTS`] (at most a batch) read ahead of it.
fn default_buffer_max_events(batch: usize, request_concurrency: usize) -> usize {
    let batches = request_concurrency.max(1) + 1;
    let read_ahead = batch.min(READ_AHEAD_EVENTS);
    (batches * batch + read_ahead).min(MAX_BUFFER_EVENTS.max(2 * batch))
}

/// The keys every sink has (the webhook's and the nats sink's), read from the sink's
/// table beside its own (see `super::split_table`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Send at least this often while events are pending. Default: the sink's ("60s" for
    /// a webhook, GO Feature Flag's FlushInterval; "1s" for nats).
    #[serde(default)]
    pub flush_interval: Option<HumanDuration>,
    /// Requests in flight at once. Default: the sink's (1 for a webhook, batches going out
    /// in order; 16 for nats). With more, acknowledgements still follow the input's order.
    #[serde(default)]
    pub request_concurrency: Option<usize>,
    /// How long a request waits for its answer (a status, a PubAck). Default "10s".
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// "goff" (GO Feature Flag events, default) or "any" (any JSON object).
    #[serde(default = "default_schema")]
    pub schema: Schema,
    /// With schema "goff": which kinds to send. Default ["feature", "tracking"].
    #[serde(default = "default_event_types")]
    pub event_types: Vec<EventType>,
    /// Most events held in memory (read, not yet delivered). Default
    /// (request_concurrency + 1) x the batch size.
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
    /// At shutdown, how long to keep trying to deliver. Default "30s".
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
    /// Once the dead-letter file holds this many bytes, records keep only the first KiB of
    /// their line. Default 1 GiB.
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: ByteSize,
}

impl Default for DeliveryConfig {
    /// Every key at its default.
    fn default() -> Self {
        DeliveryConfig::deserialize(toml::Value::Table(toml::Table::new()))
            .expect("every key has a default")
    }
}

impl DeliveryConfig {
    /// The keys this struct reads from a sink's table.
    pub(crate) const KEYS: [&'static str; 12] = [
        "flush_interval",
        "request_concurrency",
        "timeout",
        "schema",
        "event_types",
        "buffer_max_events",
        "buffer_max_bytes",
        "retry_initial_backoff",
        "retry_max_backoff",
        "retry_max_duration",
        "shutdown_timeout",
        "dead_letter_max_bytes",
    ];
}

/// A sink's own defaults for the shared keys, and its batch size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SinkDefaults {
    /// The key of the batch size (`max_event_in_memory`, `max_events`), for messages.
    pub(crate) batch_key: &'static str,
    /// A correct value of it, for messages.
    pub(crate) batch_example: usize,
    pub(crate) max_events: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) request_concurrency: usize,
}

/// The shared keys, checked: made once by [`DeliveryConfig::build`].
#[derive(Debug, Clone)]
pub(crate) struct DeliverySpec {
    pub(crate) delivery: Delivery,
    pub(crate) timeout: Duration,
    pub(crate) schema: Schema,
    pub(crate) event_types: Vec<EventType>,
    pub(crate) buffer_max_events: usize,
    pub(crate) buffer_max_bytes: usize,
    pub(crate) dead_letter_max_bytes: u64,
}

impl DeliveryConfig {
    /// Checks every key (at `key`, the sink's) with the sink's batch size and defaults.
    pub(crate) fn build(&self, key: &str, sink: SinkDefaults) -> Result<DeliverySpec> {
        let flush_interval = self.flush_interval.map_or(sink.flush_interval, |d| d.0);
        let request_concurrency = self.request_concurrency.unwrap_or(sink.request_concurrency);
        self.check_sizes(key, sink, request_concurrency)?;
        self.check_durations(key, flush_interval)?;
        if self.schema == Schema::Goff && self.event_types.is_empty() {
            bail!("`{key}.event_types` is empty: nothing would be sent (example: event_types = [\"feature\"])");
        }
        let buffer_max_events = self
            .buffer_max_events
            .unwrap_or_else(|| default_buffer_max_events(sink.max_events, request_concurrency));
        Ok(DeliverySpec {
            delivery: Delivery {
                max_events: sink.max_events,
                flush_interval,
                retry_initial_backoff: self.retry_initial_backoff.0,
                retry_max_backoff: self.retry_max_backoff.0,
                retry_max_duration: self.retry_max_duration.map(|d| d.0),
                shutdown_timeout: self.shutdown_timeout.0,
                request_concurrency,
            },
            timeout: self.timeout.0,
            schema: self.schema,
            event_types: self.event_types.clone(),
            buffer_max_events,
            buffer_max_bytes: usize::try_from(self.buffer_max_bytes.0).unwrap_or(usize::MAX),
            dead_letter_max_bytes: self.dead_letter_max_bytes.0,
        })
    }

    /// Batch and buffer sizes: at least 1 event, and at most what fits memory and a
    /// semaphore's permits.
    fn check_sizes(&self, key: &str, sink: SinkDefaults, concurrency: usize) -> Result<()> {
        let batch_key = sink.batch_key;
        check_count(
            &format!("{key}.{batch_key}"),
            sink.max_events,
            1..=MAX_BATCH_EVENTS,
            &format!("{batch_key} = {}", sink.batch_example),
        )?;
        check_count(
            &format!("{key}.request_concurrency"),
            concurrency,
            1..=MAX_REQUEST_CONCURRENCY,
            "request_concurrency = 4",
        )?;
        let Some(buffer) = self.buffer_max_events else {
            return Ok(());
        };
        if buffer < sink.max_events {
            bail!("`{key}.buffer_max_events` must be at least `{batch_key}` (example: buffer_max_events = {})", 2 * sink.max_events);
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
    fn check_durations(&self, key: &str, flush_interval: Duration) -> Result<()> {
        let durations = [
            ("flush_interval", flush_interval, MAX_INTERVAL, "\"60s\""),
            ("timeout", self.timeout.0, MAX_TIMEOUT, "\"10s\""),
            (
                "retry_initial_backoff",
                self.retry_initial_backoff.0,
                MAX_INTERVAL,
                "\"1s\"",
            ),
            (
                "retry_max_backoff",
                self.retry_max_backoff.0,
                MAX_INTERVAL,
                "\"60s\"",
            ),
        ];
        for (name, value, max, example) in durations {
            check_duration(
                &format!("{key}.{name}"),
                value,
                max,
                &format!("{name} = {example}"),
            )?;
        }
        if let Some(max) = self.retry_max_duration {
            check_duration(
                &format!("{key}.retry_max_duration"),
                max.0,
                HumanDuration::MAX,
                "retry_max_duration = \"24h\"",
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
}

#[cfg(test)]
mod tests {
    use super::default_buffer_max_events;

    /// The default budget: a batch per request slot, the next one, and a read-ahead of at
    /// most 10 000 events (a whole batch for small batches).
    #[test]
    fn the_default_budget_reads_ahead_at_most_ten_thousand_events() {
        assert_eq!(default_buffer_max_events(1000, 1), 3000);
        assert_eq!(default_buffer_max_events(10_000, 1), 30_000);
        assert_eq!(default_buffer_max_events(100_000, 1), 210_000);
        assert_eq!(default_buffer_max_events(100_000, 4), 510_000);
    }
}
