//! The webhook sink, as one pipeline:
//!
//! ```text
//! blocks -> decode -> chunks_timeout -> re-inject -> build and sign -> post -> decide
//!          (a task)                        ^                                    |
//!                                          +-------- failed: retry <------------+
//!                                                    2xx: acknowledge <---------+
//!                                   413, 4xx: split, dead-letter the rejected <-+
//! ```
//!
//! - **decode** (`super::decode`, its own task, so that decoding runs beside posting):
//!   the sources' blocks become items; bad lines are dead-lettered there.
//! - **chunks_timeout** (`crate::batch`): a batch goes out when `max_event_in_memory`
//!   events are pending, when their lines reach half the byte budget, or `flush_interval`
//!   after the first.
//! - **re-inject** (`Reinject`): failed batches go back into the stream ahead of
//!   everything newer, so order is kept.
//! - **build and sign** (`request`): while one batch is in flight, the next one is
//!   gathered and signed, ready when the response comes (one request in flight at a time).
//! - **post** (`client`) and **decide** (`retry::decide`): on 2xx the batch is
//!   acknowledged (file offsets move, the lines leave the memory budget); on 413 or a
//!   permanent 4xx it is split in halves, down to the single events the endpoint
//!   rejects, which are dead-lettered; on anything retryable it is re-injected, and
//!   `RetryPolicy` says when it goes out again, or that it is given up (shutdown,
//!   `retry_max_duration`).
//!
//! When the input ends (`--once`, or shutdown), what is re-injected is retried until
//! delivered, or until the shutdown grace period ends. Then the events are left for the
//! next run where they are, in their files or their sources' journals (their offsets
//! never moved).
//!
//! A dead letter is a delivery only once it is on the disk (`DeadLetterWriter`): until
//! it is, the line's position is not acknowledged, and the write is retried with backoff
//! while the line holds its place in the memory budget (so a dead-letter file that stays
//! unwritable stops the sources: back-pressure, nothing lost). At shutdown after the grace
//! period, or with `--once` after `shutdown_timeout`, it is given up: the line and the
//! rest of its file stay there for the next run, counted as not delivered.

pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod request;
pub(crate) mod retry;

pub(crate) use client::Poster;
pub(crate) use config::Delivery;
pub use config::{EndpointUrl, HeaderValues, Secret, WebhookConfig, WebhookSpec};
pub use request::body;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ack::Acknowledger;
use super::deadletter::{DeadLetterWriter, DeadLetters, Record};
use super::decode::{self, Decode};
use super::{count_events, Stats};
use crate::batch::{chunks_timeout, Limits, Reinject};
use crate::event::{Block, Decoder, Item};
use crate::source::file::checkpoint::{AckHandle, Persist};
use crate::source::{gathers_ahead, max_batch_bytes, Budget, Cost};
use request::Signed;
use retry::{Decision, Grace, Next, RetryPolicy, Turn};

/// Everything a sink needs to run.
#[derive(Debug)]
pub(crate) struct SinkParts {
    pub(crate) name: String,
    pub(crate) poster: Arc<Poster>,
    pub(crate) delivery: Delivery,
    pub(crate) decoder: Decoder,
    pub(crate) budget: Arc<Budget>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) dead_letters: Arc<DeadLetters>,
    /// Per input ([`Block::input`]): the source's acknowledgement handle.
    pub(crate) acks: Vec<AckHandle>,
    /// Saves the checkpoints the sink moved.
    pub(crate) checkpoints: Persist,
    /// `run --once`: a dead letter that cannot be written is given up after
    /// `shutdown_timeout` instead of being retried until it is written.
    pub(crate) once: bool,
}

/// Runs the sink until its input ends and everything is delivered, dead-lettered, or
/// (after the shutdown grace period) left for the next run.
pub(crate) async fn run(
    parts: SinkParts,
    input: mpsc::Receiver<Block>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let limits = Limits {
        events: parts.delivery.max_events,
        bytes: max_batch_bytes(parts.budget.cap().bytes),
    };
    // Gathering the next batch while a failed one still holds its budget needs room for
    // both: the sources cut their blocks to fit (see `source::Output`); with a smaller
    // budget, batches are gathered one at a time.
    let ahead = gathers_ahead(parts.budget.cap().events, limits.events);
    let flush_interval = parts.delivery.flush_interval;
    let (mut sink, decode) = Sink::new(parts, shutdown);
    let poster = sink.poster.clone();
    let sign = |items: Vec<Item>| {
        let signed = poster.prepare(items.iter().filter_map(Item::event));
        Prepared { items, signed }
    };

    // blocks -> decode -> chunks_timeout -> re-inject
    let (items, decoding) = decode::spawn(decode, input);
    let mut batches = Reinject::new(chunks_timeout(items, limits, flush_interval), limits);

    // -> build and sign -> post -> decide -> acknowledge, or re-inject
    let mut next = batches.next().await.map(sign);
    while let Some(batch) = next {
        let (handled, fetched) = if ahead {
            overlap(sink.handle(batch), batches.next().map(|b| b.map(sign))).await
        } else {
            (sink.handle(batch).await, None)
        };
        // `None` also when the input had ended: something may have been re-injected since.
        let mut fetched = fetched.flatten();
        if let Handled::Retry(failed) = handled {
            // The batch taken meanwhile entered after the failed one: it goes back behind.
            if let Some(newer) = fetched.take() {
                batches.push_front(newer.items);
            }
            batches.push_front(failed);
        }
        next = match fetched {
            Some(prepared) => Some(prepared),
            None => batches.next().await.map(sign),
        };
    }

    sink.finish().await;
    crate::topology::propagate_panic(decoding.await);
    Ok(())
}

/// Runs `handle` to its end while `fetch` gathers (at most) the next batch.
async fn overlap<H: Future, F: Future>(handle: H, fetch: F) -> (H::Output, Option<F::Output>) {
    tokio::pin!(handle, fetch);
    let mut fetched = None;
    loop {
        tokio::select! {
            handled = &mut handle => return (handled, fetched),
            next = &mut fetch, if fetched.is_none() => fetched = Some(next),
        }
    }
}

/// A batch and its request body, built and signed.
struct Prepared {
    items: Vec<Item>,
    signed: Signed,
}

/// What became of a batch.
enum Handled {
    /// Delivered, dead-lettered, or left for the next run.
    Settled,
    /// Its request failed: it goes back into the stream, and out again when the
    /// [`RetryPolicy`] says.
    Retry(Vec<Item>),
}

/// A batch (what is left of it) whose request failed and may be retried.
struct Failure {
    rest: Vec<Item>,
    /// `Retry-After`.
    after: Option<Duration>,
    detail: String,
}

/// The part of a sink past the batcher: posting, deciding, acknowledging.
struct Sink {
    name: String,
    poster: Arc<Poster>,
    budget: Arc<Budget>,
    stats: Arc<Stats>,
    retry: RetryPolicy,
    writer: DeadLetterWriter,
    acks: Acknowledger,
}

impl Sink {
    /// The sink, and the settings of its decode task.
    fn new(parts: SinkParts, shutdown: CancellationToken) -> (Sink, Decode) {
        let SinkParts {
            name,
            poster,
            delivery,
            decoder,
            budget,
            stats,
            dead_letters,
            acks,
            checkpoints,
            once,
        } = parts;
        let writer = DeadLetterWriter::new(&name, dead_letters, &delivery, once);
        let decode = Decode {
            name: name.clone(),
            decoder,
            budget: budget.clone(),
            stats: stats.clone(),
            writer: writer.clone_for_decode(),
            grace: Grace::new(shutdown.clone(), delivery.shutdown_timeout),
        };
        let sink = Sink {
            name,
            poster,
            budget,
            stats,
            retry: RetryPolicy::for_sink(&delivery, shutdown),
            writer,
            acks: Acknowledger::new(acks, checkpoints),
        };
        (sink, decode)
    }

    /// Sends `batch` when the retry policy says (post -> decide -> acknowledge, split,
    /// dead-letter), or gives it up; or hands it back, failed, to be re-injected.
    async fn handle(&mut self, batch: Prepared) -> Handled {
        crate::failpoint::hit("sink-handle");
        if self.retry.turn(IN_FILES).await == Turn::GiveUp {
            self.give_up(batch.items);
            return Handled::Settled;
        }
        let Err(failure) = self.deliver(batch).await else {
            self.retry.succeeded();
            return Handled::Settled;
        };
        let events = count_events(&failure.rest);
        match self.retry.failed(failure.after, IN_FILES) {
            Next::Retry(delay) => {
                let retry_in = Duration::from_millis(delay.as_millis() as u64);
                tracing::warn!(sink = %self.name, events, retry_in = %humantime::format_duration(retry_in), "delivery failed ({}); will retry", failure.detail);
                Handled::Retry(failure.rest)
            }
            Next::StayInFiles => {
                tracing::warn!(sink = %self.name, events, "delivery failed at shutdown ({}); the events stay in their files and journals for the next start", failure.detail);
                self.give_up(failure.rest);
                Handled::Settled
            }
            Next::OutOfTime(max) => {
                let max = humantime::format_duration(max);
                let reason = format!("still failing after {max}: {}", failure.detail);
                tracing::error!(sink = %self.name, events, "{reason}; dead-lettering the batch");
                self.reject_all(failure.rest, &reason).await;
                Handled::Settled
            }
        }
    }

    /// Posts `batch`, splitting it on 413 and bisecting it on a permanent 4xx; each part
    /// delivered or dead-lettered is acknowledged at once. Returns what is left when a
    /// request fails and may be retried.
    async fn deliver(&mut self, batch: Prepared) -> Result<(), Failure> {
        // The prepared body is the whole batch's: only the first part can use it.
        let mut signed = Some(batch.signed);
        let mut parts = VecDeque::from([batch.items]);
        while let Some(part) = parts.pop_front() {
            let events = count_events(&part);
            if events == 0 {
                self.resolve(&part);
                continue;
            }
            let signed = signed
                .take()
                .unwrap_or_else(|| self.poster.prepare(part.iter().filter_map(Item::event)));
            // A crash re-sends at most the batch in flight.
            self.acks.persisted().await;
            let outcome = self.poster.post(signed).await;
            match outcome.decision {
                Decision::Delivered => {
                    Stats::add(&self.stats.delivered, events as u64);
                    Stats::add(&self.stats.requests, 1);
                    self.resolve(&part);
                }
                Decision::Retry { after } => {
                    let mut rest = part;
                    rest.extend(parts.into_iter().flatten());
                    let detail = outcome.detail;
                    return Err(Failure {
                        rest,
                        after,
                        detail,
                    });
                }
                Decision::Split | Decision::Reject if events == 1 => {
                    let reason = format!("endpoint rejected the event: {}", outcome.detail);
                    tracing::warn!(sink = %self.name, "{reason}; dead-lettering it");
                    self.reject_all(part, &reason).await;
                }
                Decision::Split | Decision::Reject => {
                    tracing::info!(sink = %self.name, events, "{}; sending the batch in two halves", outcome.detail);
                    let (a, b) = halves(part);
                    parts.push_front(b);
                    parts.push_front(a);
                }
            }
        }
        Ok(())
    }

    /// Dead-letters every event of `items` with `reason`, then acknowledges them; or,
    /// when the dead letters could not be written (given up at shutdown or with
    /// `--once`), leaves them as not delivered: they stay in their files (or journals),
    /// with the rest of those.
    async fn reject_all(&mut self, items: Vec<Item>, reason: &str) {
        let records: Vec<Record> = items
            .iter()
            .filter_map(Item::event)
            .map(|event| {
                let mut record = Record::new(&self.name, reason.to_owned(), event);
                record.replayable = true;
                record
            })
            .collect();
        let n = records.len() as u64;
        if self.writer.write(records, self.retry.grace()).await {
            Stats::add(&self.stats.rejected, n);
            self.resolve(&items);
            return;
        }
        self.give_up(items);
    }

    /// `items` were delivered or dead-lettered (their dead letters are on the disk): move
    /// the file offsets and free the budget.
    fn resolve(&mut self, items: &[Item]) {
        self.acks.acknowledge(items);
        self.release(items);
    }

    /// `items` leave memory.
    fn release(&mut self, items: &[Item]) {
        self.budget.release(Cost::of(items));
    }

    /// Keeps `items` for the next run: they stay in their files or journals (their offsets
    /// did not move, and no later batch of the same files moves them for the rest of the
    /// run).
    fn give_up(&mut self, items: Vec<Item>) {
        self.acks.leave_in_files(&items);
        Stats::add(&self.stats.not_delivered, count_events(&items) as u64);
        self.release(&items);
    }

    /// The input has ended and every batch is settled: waits for the last checkpoint write.
    async fn finish(mut self) {
        self.acks.persisted().await;
        let peak = self.budget.peak();
        tracing::info!(sink = %self.name, peak_events_in_memory = peak.events, peak_bytes_in_memory = peak.bytes, "most held in memory at once");
    }
}

/// Every event a sink holds can be read again: from its file, or from its source's
/// journal. So at shutdown, after a failure, batches are left there for the next run
/// (see [`RetryPolicy::failed`]).
const IN_FILES: bool = true;

/// Splits `items` into two halves with about the same number of events.
fn halves(mut items: Vec<Item>) -> (Vec<Item>, Vec<Item>) {
    let events = count_events(&items);
    let mut seen = 0;
    let cut = items
        .iter()
        .position(|i| {
            seen += usize::from(i.event().is_some());
            seen > events / 2
        })
        .unwrap_or(items.len());
    let second = items.split_off(cut);
    (items, second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Ack;

    #[test]
    fn halves_split_events_evenly() {
        let ack = Ack {
            input: 0,
            file: 0,
            offset: 0,
        };
        let item = |e: bool| match e {
            true => Item::Event {
                event: bytes::Bytes::from_static(b"{}"),
                ack,
                held: 0,
            },
            false => Item::Position(ack),
        };
        let (a, b) = halves(vec![
            item(true),
            item(false),
            item(true),
            item(true),
            item(true),
        ]);
        assert_eq!((a.len(), b.len()), (3, 2));
    }
}
