//! A sink's loop: decode -> batch -> post -> acknowledge.
//!
//! Overview. A decode task turns the sources' blocks into [`Item`]s (bad lines are
//! dead-lettered there, on the disk before the block goes on). The items flow through
//! [`batches`] (`chunks_timeout` behind the retry lane) into [`Sink::handle`], which posts
//! each batch and then:
//! - on 2xx, acknowledges the batch: file offsets move, the lines leave the memory budget;
//! - on 413 or a permanent 4xx, splits the batch and sends the halves, down to the single
//!   events the endpoint rejects, which are dead-lettered;
//! - on anything retryable, waits a backoff and puts the batch back on the retry lane,
//!   ahead of newer events. While it waits, nothing new is read past the budget.
//!
//! When the input ends (`--once`, or shutdown), what is left on the lane is retried until
//! delivered, or until the shutdown grace period ends. Then events from files are left
//! for the next run (their offsets never moved) and events from TCP or stdin are spilled
//! to `data_dir/spill/<sink>.jsonl`, to be sent first on the next start, within the memory
//! budget (see [`super::spill`]).
//!
//! A dead letter is a delivery only once it is on the disk ([`DeadLetterWriter`]): until
//! it is, the line's position is not acknowledged, and the write is retried with backoff
//! while the line holds its place in the memory budget (so a dead-letter file that stays
//! unwritable stops the sources: back-pressure, nothing lost). At shutdown after the grace
//! period, or with `--once` after `shutdown_timeout`, it is given up: the line and the
//! rest of its file stay there for the next run, counted as not delivered.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::deadletter::{DeadLetters, Record};
use super::spill::{self, Spill};
use super::webhook::{Decision, Delivery, NextTry, Poster, Retries, Signed};
use super::Stats;
use crate::batch::{batches, Limits, RetryLane};
use crate::event::{self, Ack, Block, Decoded, Decoder, Invalid, Item, LineKind};
use crate::source::file::checkpoint::{AckHandle, Checkpointer};
use crate::source::{gathers_ahead, max_batch_bytes, Budget, Cost};

/// Everything a sink needs to run.
#[derive(Debug)]
pub struct SinkParts {
    pub name: String,
    pub poster: Arc<Poster>,
    pub delivery: Delivery,
    pub decoder: Decoder,
    pub budget: Arc<Budget>,
    pub stats: Arc<Stats>,
    pub dead_letters: Arc<DeadLetters>,
    /// Per input ([`Block::input`]): the source's acknowledgement handle, for file sources.
    pub acks: Vec<Option<AckHandle>>,
    pub spill_path: PathBuf,
    /// `run --once`: a dead letter that cannot be written is given up after
    /// `shutdown_timeout` instead of being retried until it is written.
    pub once: bool,
    /// The spill file left by the last shutdown, and the events loaded from it: opened
    /// before the sources start (see [`Spill::open`]).
    pub spill: Option<(Spill, Vec<Item>)>,
}

/// Runs the sink until its input ends and everything is delivered, dead-lettered, or
/// (after the shutdown grace period) left for the next run.
pub async fn run(
    parts: SinkParts,
    input: mpsc::Receiver<Block>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (mut sink, decoder) = Sink::new(parts, shutdown.clone());

    let (tx, rx) = mpsc::channel(8);
    let decode = tokio::spawn(decode_blocks(
        Decode {
            name: sink.name.clone(),
            decoder,
            budget: sink.budget.clone(),
            stats: sink.stats.clone(),
            writer: sink.writer.clone_for_decode(),
            grace: Grace::new(shutdown, sink.delivery.shutdown_timeout),
        },
        input,
        tx,
    ));
    let items = ReceiverStream::new(rx).flat_map(futures::stream::iter);
    let mut batched = pin!(batches(
        items,
        sink.lane.clone(),
        sink.limits(),
        sink.delivery.flush_interval
    ));
    send_batches(&mut sink, batched.as_mut()).await;
    sink.drain_lane().await;
    sink.persisted().await;
    sink.finish();
    if let Err(e) = decode.await {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    Ok(())
}

/// Sends every batch of `batched` until the input ends.
///
/// While a batch is in flight, the next one is gathered, encoded and signed, so that it is
/// ready when the response comes. Only one request is in flight at a time, which keeps the
/// order: if the first fails, both go back on the lane, oldest first. Gathering the next
/// batch while a failed one still holds its budget needs room for both: the sources cut
/// their blocks to fit (see `source::Output`); with a smaller budget, batches are gathered
/// one at a time.
async fn send_batches<S>(sink: &mut Sink, mut batched: std::pin::Pin<&mut S>)
where
    S: futures::Stream<Item = Vec<Item>>,
{
    let prefetch = gathers_ahead(sink.budget.cap().events, sink.delivery.max_events);
    let poster = sink.poster.clone();
    let prepare = |batch: Vec<Item>| {
        let signed = poster.prepare(batch.iter().filter_map(|i| i.event.as_ref()));
        (batch, signed)
    };
    let mut ready = batched.next().await.map(prepare);
    while let Some((batch, signed)) = ready.take() {
        if !prefetch {
            if let Some(failed) = sink.handle(batch, Some(signed)).await {
                sink.lane.push_front(failed);
            }
            ready = batched.next().await.map(prepare);
            continue;
        }
        // `fetched`: None while the next batch is not gathered yet.
        let (requeue, fetched) = {
            let handled = sink.handle(batch, Some(signed));
            let fetch = batched.next();
            tokio::pin!(handled, fetch);
            let mut fetched = None;
            let requeue = loop {
                tokio::select! {
                    r = &mut handled => break r,
                    n = &mut fetch, if fetched.is_none() => fetched = Some(n.map(prepare)),
                }
            };
            (requeue, fetched)
        };
        match (requeue, fetched) {
            (None, Some(next)) => ready = next,
            (None, None) => ready = batched.next().await.map(prepare),
            (Some(failed), fetched) => {
                // Items already in the batcher are newer than the failed batch: wait for
                // them (its timer sends them within a flush interval) so that both go
                // back on the lane in order. An empty batcher is left as it is.
                // (`size_hint` counts the batcher's pending chunk.)
                let newer = match fetched {
                    Some(next) => next,
                    None if futures::Stream::size_hint(&batched).0 > 0 => {
                        batched.next().await.map(prepare)
                    }
                    None => None,
                };
                if let Some((newer, _)) = newer {
                    sink.lane.push_front(newer);
                }
                sink.lane.push_front(failed);
                ready = batched.next().await.map(prepare);
            }
        }
    }
}

struct Sink {
    name: String,
    poster: Arc<Poster>,
    delivery: Delivery,
    budget: Arc<Budget>,
    stats: Arc<Stats>,
    writer: DeadLetterWriter,
    acks: Vec<Option<AckHandle>>,
    /// Files whose offsets stay where they are for the rest of the run, by (input, file):
    /// a dead letter of theirs could not be written.
    left_in_files: HashSet<(usize, u64)>,
    spill_path: PathBuf,
    /// The spill file while it has events not resolved: they go before newer ones.
    spill: Option<Spill>,
    lane: RetryLane,
    grace: Grace,
    /// Failed attempts in a row and since when: the backoff and `retry_max_duration`.
    retries: Retries,
    /// Events from TCP and stdin given up at shutdown, for the spill file.
    abandoned: Vec<Bytes>,
    /// A delivery failed after shutdown was asked.
    failed_at_shutdown: bool,
    /// After a failure: no request before this instant.
    not_before: Option<Instant>,
    /// The checkpoint write started by the last acknowledgement.
    persisting: Option<tokio::task::JoinHandle<()>>,
}

/// A batch that could not be delivered now.
struct Failure {
    rest: Vec<Item>,
    after: Option<Duration>,
    detail: String,
}

impl Sink {
    /// The sink, with the events spilled at the last shutdown first on its lane, and the
    /// decoder for its decode task.
    fn new(parts: SinkParts, shutdown: CancellationToken) -> (Sink, Decoder) {
        let SinkParts {
            name,
            poster,
            delivery,
            decoder,
            budget,
            stats,
            dead_letters,
            acks,
            spill_path,
            once,
            spill,
        } = parts;
        let grace = Grace::new(shutdown, delivery.shutdown_timeout);
        let retries = Retries::new(&delivery);
        let writer = DeadLetterWriter::new(&name, dead_letters, &delivery, once);
        let lane = RetryLane::default();
        let spill = spill.map(|(spill, loaded)| {
            lane.push_back(loaded);
            spill
        });
        let sink = Sink {
            name,
            poster,
            delivery,
            budget,
            stats,
            writer,
            acks,
            left_in_files: HashSet::new(),
            spill_path,
            spill,
            lane,
            grace,
            retries,
            abandoned: Vec::new(),
            persisting: None,
            not_before: None,
            failed_at_shutdown: false,
        };
        (sink, decoder)
    }

    /// When a batch is full: `max_event_in_memory` events, or half the byte budget.
    fn limits(&self) -> Limits {
        Limits {
            events: self.delivery.max_events,
            bytes: max_batch_bytes(self.budget.cap().bytes),
        }
    }

    /// The input has ended: retries what is left on the lane until it is delivered, or
    /// until the shutdown grace period ends.
    async fn drain_lane(&mut self) {
        loop {
            let batch = self.lane.take(self.limits());
            if batch.is_empty() {
                break;
            }
            if let Some(failed) = self.handle(batch, None).await {
                self.lane.push_front(failed);
            }
        }
    }

    /// Delivers `batch` (`signed`: its body, when already built), or returns it to be
    /// retried after the backoff it waited.
    ///
    /// At shutdown every batch gets one prompt attempt. Once one has failed, batches read
    /// from files are left there (their offsets did not move; the next start reads them
    /// again), while TCP and stdin events are retried until the grace period ends.
    async fn handle(&mut self, batch: Vec<Item>, signed: Option<Signed>) -> Option<Vec<Item>> {
        crate::failpoint::hit("sink-handle");
        let shutting_down = self.grace.deadline().is_some();
        if let Some(at) = self.not_before.take() {
            if !shutting_down {
                self.grace
                    .sleep(at.saturating_duration_since(Instant::now()))
                    .await;
            }
        }
        let left_in_files = shutting_down && self.failed_at_shutdown && from_files(&batch);
        if self.grace.expired() || left_in_files {
            self.give_up(batch);
            return None;
        }
        let Err(failure) = self.deliver(batch, signed).await else {
            self.retries.succeeded();
            return None;
        };
        if self.grace.deadline().is_some() {
            self.failed_at_shutdown = true;
            if from_files(&failure.rest) {
                tracing::warn!(sink = %self.name, events = count_events(&failure.rest), "delivery failed at shutdown ({}); the events stay in their files for the next start", failure.detail);
                self.give_up(failure.rest);
                return None;
            }
        }
        let delay = match self.retries.failed(failure.after) {
            NextTry::After(delay) => delay,
            NextTry::GiveUp(max) => {
                let reason = format!(
                    "still failing after {}: {}",
                    humantime::format_duration(max),
                    failure.detail
                );
                tracing::error!(sink = %self.name, events = count_events(&failure.rest), "{reason}; dead-lettering the batch");
                self.reject_all(failure.rest, &reason).await;
                return None;
            }
        };
        // However soon the batch is taken again (full, or straight from the lane once the
        // input ended), it is not re-sent before a flush interval: no hot loop.
        self.not_before = Some(instant_after(delay.max(self.delivery.flush_interval)));
        tracing::warn!(
            sink = %self.name,
            events = count_events(&failure.rest),
            retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
            "delivery failed ({}); will retry",
            failure.detail
        );
        if self.grace.sleep(delay).await {
            return Some(failure.rest);
        }
        self.give_up(failure.rest);
        None
    }

    /// Posts `batch`, splitting it on 413 and bisecting it on a permanent 4xx.
    async fn deliver(
        &mut self,
        batch: Vec<Item>,
        mut signed: Option<Signed>,
    ) -> Result<(), Failure> {
        let mut parts = VecDeque::from([batch]);
        while let Some(part) = parts.pop_front() {
            let events = count_events(&part);
            if events == 0 {
                self.resolve(&part);
                continue;
            }
            // The prepared body is the whole batch's: only the first part can use it.
            let signed = signed.take().unwrap_or_else(|| {
                self.poster
                    .prepare(part.iter().filter_map(|i| i.event.as_ref()))
            });
            self.persisted().await;
            let outcome = self.poster.post(signed).await;
            match outcome.decision {
                Decision::Delivered => {
                    Stats::add(&self.stats.delivered, events as u64);
                    Stats::add(&self.stats.requests, 1);
                    self.resolve(&part);
                }
                Decision::Retry { after } => {
                    Stats::add(&self.stats.failed_requests, 1);
                    let mut rest = part;
                    rest.extend(parts.into_iter().flatten());
                    return Err(Failure {
                        rest,
                        after,
                        detail: outcome.detail,
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
    /// `--once`), leaves them as not delivered: those from files stay there, with the rest
    /// of their files, and the others are spilled.
    async fn reject_all(&mut self, items: Vec<Item>, reason: &str) {
        let records: Vec<Record> = items
            .iter()
            .filter_map(|i| i.event.as_ref())
            .map(|event| {
                let mut record = Record::new(&self.name, reason.to_owned(), event);
                record.replayable = true;
                record
            })
            .collect();
        let n = records.len() as u64;
        if self.writer.write(records, &mut self.grace).await {
            Stats::add(&self.stats.rejected, n);
            self.resolve(&items);
            return;
        }
        let files = items
            .iter()
            .filter_map(|i| i.ack)
            .map(|a| (a.input, a.file));
        self.left_in_files.extend(files);
        self.give_up(items);
    }

    /// `items` were delivered or dead-lettered (their dead letters are on the disk): move
    /// the file offsets and free the budget.
    fn resolve(&mut self, items: &[Item]) {
        self.acknowledge(items);
        self.release(items);
    }

    /// Moves offsets: within one file, offsets only grow, so the last of each run of
    /// items from the same file is enough.
    ///
    /// The checkpoints are then written in the background; the next request waits for
    /// that write, so a crash re-sends at most the one batch in flight.
    fn acknowledge(&mut self, items: &[Item]) {
        let mut touched: Vec<Arc<Checkpointer>> = Vec::new();
        let mut pending: Option<Ack> = None;
        let acks = items.iter().filter_map(|i| i.ack);
        for ack in acks.filter(|a| !self.left_in_files.contains(&(a.input, a.file))) {
            if let Some(p) = pending.filter(|p| (p.input, p.file) != (ack.input, ack.file)) {
                self.ack(p, &mut touched);
            }
            pending = Some(ack);
        }
        if let Some(p) = pending {
            self.ack(p, &mut touched);
        }
        if !touched.is_empty() {
            let previous = self.persisting.take();
            self.persisting = Some(tokio::task::spawn_blocking(move || {
                drop(previous);
                for cp in touched {
                    if let Err(e) = cp.write_if_dirty() {
                        tracing::error!(error = %e, "cannot write checkpoint; will try again");
                    }
                }
            }));
        }
    }

    fn ack(&self, ack: Ack, touched: &mut Vec<Arc<Checkpointer>>) {
        if let Some(Some(handle)) = self.acks.get(ack.input) {
            handle.ack(ack.file, ack.offset);
            let checkpointer = handle.checkpointer();
            if !touched.iter().any(|t| Arc::ptr_eq(t, checkpointer)) {
                touched.push(checkpointer.clone());
            }
        }
    }

    /// Waits for the checkpoint write of the last acknowledged batch.
    async fn persisted(&mut self) {
        if let Some(write) = self.persisting.take() {
            if let Err(e) = write.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }

    /// `items` leave memory. While the spill file has events not loaded yet, the budget
    /// they free is kept for those (see [`Spill::release`]), and they join the lane.
    fn release(&mut self, items: &[Item]) {
        let freed = Cost {
            events: items.len(),
            bytes: items.iter().map(|i| i.held).sum(),
        };
        let Some(spill) = self.spill.as_mut() else {
            self.budget.release(freed);
            return;
        };
        let load = self.grace.deadline().is_none();
        let loaded = spill.release(items.len(), freed, &self.budget, load);
        self.lane.push_back(loaded);
        if spill.done() {
            spill.remove();
            self.spill = None;
        }
    }

    /// The grace period is over: keep `items` for the next run.
    fn give_up(&mut self, items: Vec<Item>) {
        Stats::add(&self.stats.not_delivered, count_events(&items) as u64);
        let spilled = self.spill.as_mut().map_or(0, |s| s.abandon(&items));
        self.abandoned.extend(
            items[spilled..]
                .iter()
                .filter(|i| i.ack.is_none())
                .filter_map(|i| i.event.clone()),
        );
        self.release(&items);
    }

    /// Writes what TCP and stdin sources gave that could not be delivered, after what is
    /// left of the spill file.
    fn finish(&mut self) {
        let peak = self.budget.peak();
        tracing::info!(sink = %self.name, peak_events_in_memory = peak.events, peak_bytes_in_memory = peak.bytes, "most held in memory at once");
        let had_spill = self.spill.is_some();
        match spill::finish(&self.spill_path, self.spill.take(), &self.abandoned) {
            Ok(written) => {
                Stats::add(&self.stats.not_delivered, written.never_loaded as u64);
                if written.events > 0 {
                    tracing::warn!(sink = %self.name, events = written.events, path = %self.spill_path.display(), "events not delivered before shutdown were spilled; they are sent first at the next start");
                }
            }
            Err(e) if had_spill => {
                tracing::error!(sink = %self.name, events = self.abandoned.len(), error = %e, "cannot write the spill file: it is kept as it was, and these newer events are lost")
            }
            Err(e) => {
                tracing::error!(sink = %self.name, events = self.abandoned.len(), error = %e, "cannot write the spill file: these events are lost")
            }
        }
    }
}

/// Whether every item can be read again from its file.
fn from_files(items: &[Item]) -> bool {
    items.iter().all(|i| i.ack.is_some())
}

fn count_events(items: &[Item]) -> usize {
    items.iter().filter(|i| i.event.is_some()).count()
}

/// Logs bad lines without flooding: the first few of every minute, then a count.
struct BadLineLog {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl BadLineLog {
    const PER_MINUTE: u32 = 10;

    fn new() -> Self {
        BadLineLog {
            window_start: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    fn log(&mut self, sink: &str, location: &str, reason: &str) {
        if self.window_start.elapsed() >= Duration::from_secs(60) {
            if self.suppressed > 0 {
                tracing::warn!(
                    sink,
                    suppressed = self.suppressed,
                    "more bad lines were rejected than logged (all are in the dead-letter file)"
                );
            }
            *self = BadLineLog::new();
        }
        if self.logged < Self::PER_MINUTE {
            self.logged += 1;
            tracing::warn!(sink, location, "bad line rejected: {reason}");
        } else {
            self.suppressed += 1;
        }
    }
}

/// What the decode task needs besides its input and output.
struct Decode {
    name: String,
    decoder: Decoder,
    budget: Arc<Budget>,
    stats: Arc<Stats>,
    writer: DeadLetterWriter,
    grace: Grace,
}

/// Decodes blocks into items; bad lines are counted, logged and dead-lettered here.
///
/// A block's dead letters are on the disk before its items go on, so that no position
/// past a bad line is acknowledged before its dead letter is written. While they cannot
/// be written, the block waits (holding its budget). When the write is given up, the
/// block's lines from the first bad one on, and every later line of that file, are left
/// in the file for the next run.
async fn decode_blocks(
    mut d: Decode,
    mut input: mpsc::Receiver<Block>,
    output: mpsc::Sender<Vec<Item>>,
) {
    let mut log = BadLineLog::new();
    let mut left_in_files: HashSet<(usize, u64)> = HashSet::new();
    let mut lost_before = false;
    while let Some(block) = input.recv().await {
        let file = block.file.map(|f| (block.input, f));
        let left_in_file = file.is_some_and(|f| left_in_files.contains(&f));
        let (mut items, records, first_bad) = decode_block(&mut d, &block, &mut log, left_in_file);
        let bad = records.len() as u64;
        // Items from `keep` on are left in their file; `bad` of them are bad lines.
        let keep = if left_in_file {
            0
        } else if records.is_empty() || d.writer.write(records, &mut d.grace).await {
            Stats::add(&d.stats.rejected, bad);
            items.len()
        } else if let (Some(file), Some(at)) = (file, first_bad) {
            left_in_files.insert(file);
            tracing::warn!(sink = %d.name, file = %block.origin, "the dead letters of bad lines were not written: from the first of them on, the file's lines stay in it for the next run");
            at
        } else {
            Stats::add(&d.stats.not_delivered, bad);
            if !std::mem::replace(&mut lost_before, true) {
                tracing::error!(sink = %d.name, origin = %block.origin, lines = bad, "bad lines lost: their dead letters were not written and they cannot be read again (later ones are counted in events_not_delivered)");
            }
            items.len()
        };
        if keep < items.len() {
            let left = items.split_off(keep);
            let events = count_events(&left) as u64;
            Stats::add(&d.stats.not_delivered, events + bad);
            d.budget.release(Cost {
                events: left.len(),
                bytes: left.iter().map(|i| i.held).sum(),
            });
        }
        if !items.is_empty() && output.send(items).await.is_err() {
            return;
        }
    }
}

/// A block's items, the dead letters of its bad lines, and the index in the items of the
/// first bad line from a file. Lines that become no item leave the budget here.
fn decode_block(
    d: &mut Decode,
    block: &Block,
    log: &mut BadLineLog,
    quiet: bool,
) -> (Vec<Item>, Vec<Record>, Option<usize>) {
    let mut items = Vec::with_capacity(block.lines.len());
    let mut records = Vec::new();
    let mut first_bad = None;
    for line in &block.lines {
        let ack = block.file.zip(line.end()).map(|(file, offset)| Ack {
            input: block.input,
            file,
            offset,
        });
        let decoded = match &line.kind {
            LineKind::Text { .. } => d.decoder.decode(&line.bytes, &block.envelope),
            LineKind::Oversized { len, .. } => Err(event::explain(
                &line.bytes,
                Invalid(format!("line of {len} bytes is longer than max_line_bytes")),
            )),
            LineKind::Unreadable { reason } => Err(Invalid(reason.clone())),
        };
        let event = match decoded {
            Ok(Decoded::Event(bytes)) => Some(bytes),
            Ok(Decoded::Filtered | Decoded::Empty) => None,
            Err(invalid) => {
                let location = location(block, &line.kind);
                if !quiet {
                    log.log(&d.name, &location, &invalid.0);
                }
                let mut record = Record::new(&d.name, invalid.0, &line.bytes);
                record.source = Some(block.source_name.to_string());
                record.location = Some(location);
                if let LineKind::Oversized { len, .. } = line.kind {
                    record.truncated_from_bytes = Some(len);
                }
                records.push(record);
                if ack.is_some() {
                    first_bad.get_or_insert(items.len());
                }
                None
            }
        };
        // A line without an event holds no bytes; with an acknowledgement to make, it
        // still holds its place (and its event permit) in line.
        let bytes = d.budget.line_bytes(line.bytes.len());
        match (event, ack) {
            (Some(event), ack) => items.push(Item {
                event: Some(event),
                ack,
                held: bytes,
            }),
            (None, Some(ack)) => {
                items.push(Item {
                    event: None,
                    ack: Some(ack),
                    held: 0,
                });
                d.budget.release(Cost { events: 0, bytes });
            }
            (None, None) => d.budget.release(Cost { events: 1, bytes }),
        }
    }
    (items, records, first_bad)
}

/// Writes a sink's dead letters, retrying while that fails.
#[derive(Debug)]
struct DeadLetterWriter {
    sink: String,
    file: Arc<DeadLetters>,
    initial_backoff: Duration,
    max_backoff: Duration,
    /// With `--once`: how long a failing write is retried before it is given up.
    once_limit: Option<Duration>,
    /// A write was given up and none has succeeded since: the next failure gives up at once
    /// (each waiting `once_limit` would make `--once` last that long per block).
    broken: bool,
}

impl DeadLetterWriter {
    fn new(sink: &str, file: Arc<DeadLetters>, delivery: &Delivery, once: bool) -> Self {
        DeadLetterWriter {
            sink: sink.to_owned(),
            file,
            initial_backoff: delivery.retry_initial_backoff,
            max_backoff: delivery.retry_max_backoff,
            once_limit: once.then_some(delivery.shutdown_timeout),
            broken: false,
        }
    }

    /// Another writer to the same file, for the decode task.
    fn clone_for_decode(&self) -> Self {
        DeadLetterWriter {
            sink: self.sink.clone(),
            file: self.file.clone(),
            broken: false,
            ..*self
        }
    }

    /// Puts `records` on the disk; true once they are. While that fails, logs why and
    /// retries with backoff (`retry_initial_backoff` doubling up to `retry_max_backoff`).
    /// Gives up (false) after the grace period at shutdown, or with `--once` after
    /// `shutdown_timeout`.
    async fn write(&mut self, mut records: Vec<Record>, grace: &mut Grace) -> bool {
        let started = Instant::now();
        let mut delay = self.initial_backoff;
        let mut log = FailureLog::default();
        loop {
            let file = self.file.clone();
            let (back, written) = tokio::task::spawn_blocking(move || {
                let written = file.append(&mut records);
                (records, written)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            records = back;
            let error = match written {
                Ok(()) => {
                    self.broken = false;
                    log.recovered(&self.sink);
                    return true;
                }
                Err(e) => e,
            };
            let out_of_time = self.once_limit.is_some_and(|l| started.elapsed() >= l);
            if self.broken || out_of_time || grace.expired() {
                if !self.broken {
                    tracing::error!(sink = %self.sink, path = %self.file.path().display(), error = %error, "cannot write dead letters; giving up until one can be written: their lines are not delivered");
                }
                self.broken = true;
                return false;
            }
            log.failed(&self.sink, self.file.path(), &error, delay);
            grace.sleep(delay).await;
            delay = (delay * 2).min(self.max_backoff);
        }
    }
}

/// Logs failed dead-letter writes without flooding: the first, then one a minute.
#[derive(Default)]
struct FailureLog {
    failures: u64,
    last: Option<Instant>,
}

impl FailureLog {
    const EVERY: Duration = Duration::from_secs(60);

    fn failed(
        &mut self,
        sink: &str,
        path: &std::path::Path,
        error: &std::io::Error,
        delay: Duration,
    ) {
        self.failures += 1;
        if self.last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        tracing::error!(
            sink,
            path = %path.display(),
            error = %error,
            failures = self.failures,
            retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
            "cannot write dead letters; will retry (their lines' positions do not move, and reading stops once the memory budget is full)"
        );
    }

    fn recovered(&self, sink: &str) {
        if self.failures > 0 {
            tracing::info!(
                sink,
                failures = self.failures,
                "dead letters written after failed attempts"
            );
        }
    }
}

fn location(block: &Block, kind: &LineKind) -> String {
    match *kind {
        LineKind::Unreadable { .. } => block.origin.to_string(),
        LineKind::Text { number, end } | LineKind::Oversized { number, end, .. } => {
            match block.file {
                Some(_) => format!("{} line {number} (ends at byte {end})", block.origin),
                None => format!("{} line {number}", block.origin),
            }
        }
    }
}

/// `delay` from now. Config durations and delays are bounded (at most a year), so this
/// never saturates in practice; it only keeps a bad value from panicking the sink.
fn instant_after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .or_else(|| now.checked_add(crate::config::HumanDuration::MAX))
        .unwrap_or(now)
}

/// Tracks the shutdown grace period.
#[derive(Debug)]
struct Grace {
    token: CancellationToken,
    timeout: Duration,
    deadline: Option<Instant>,
}

impl Grace {
    fn new(token: CancellationToken, timeout: Duration) -> Self {
        Grace {
            token,
            timeout,
            deadline: None,
        }
    }

    /// When delivery must stop, once shutdown was asked.
    fn deadline(&mut self) -> Option<Instant> {
        if self.deadline.is_none() && self.token.is_cancelled() {
            self.deadline = Some(instant_after(self.timeout));
        }
        self.deadline
    }

    fn expired(&mut self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Sleeps `delay`, cut short at the deadline; wakes at once when shutdown is asked
    /// (so that pending events get a prompt attempt). Returns false when the deadline
    /// has passed.
    async fn sleep(&mut self, delay: Duration) -> bool {
        // `tokio::time::sleep` takes any duration (one too long to represent is "never").
        let Some(deadline) = self.deadline() else {
            tokio::select! {
                _ = tokio::time::sleep(delay) => return true,
                _ = self.token.cancelled() => return true,
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(delay.min(left)).await;
        !self.expired()
    }
}

/// Splits `items` into two halves with about the same number of events.
fn halves(mut items: Vec<Item>) -> (Vec<Item>, Vec<Item>) {
    let events = items.iter().filter(|i| i.event.is_some()).count();
    let mut seen = 0;
    let cut = items
        .iter()
        .position(|i| {
            seen += usize::from(i.event.is_some());
            seen > events / 2
        })
        .unwrap_or(items.len());
    let second = items.split_off(cut);
    (items, second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_split_events_evenly() {
        let item = |e: bool| Item {
            event: e.then(|| Bytes::from_static(b"{}")),
            ack: None,
            held: 0,
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
