//! A sink, as one pipeline: the webhook sink and the nats sink run it, each with its own
//! [`Transport`] (the webhook's HTTP client, the nats sink's JetStream publisher), and
//! share everything else (batches, retries, dead letters, acknowledgements).
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
//! - **re-inject** (`Reinject`): a batch taken but not sent goes back into the stream
//!   ahead of everything newer. A batch
//!   whose request failed waits among the sink's retries and goes out again first, as it
//!   was (same events, same `webhook-id`).
//! - **build and sign** ([`Transport::prepare`]): while requests are in flight, the next
//!   batch is gathered, built (compressed when set) and signed, ready when a slot frees.
//! - **post** ([`Transport::send`], up to `request_concurrency` requests at once) and
//!   **decide** (the transport's [`Decision`]): on 2xx (a PubAck) the batch is
//!   acknowledged (the lines leave the memory budget; file offsets, and JetStream
//!   messages, move in the order the batches were first sent, see `super::ack::InOrder`);
//!   on 413 or a permanent 4xx (a message over `max_payload`) it is split in halves, down
//!   to the single events the endpoint rejects, which are dead-lettered; on anything
//!   retryable it waits for another attempt, and `RetryPolicy` says when it goes out
//!   again, or that it is given up (shutdown, `retry_max_duration`).
//!
//! When the input ends (`--once`, or shutdown), what is re-injected is retried until
//! delivered, or until the shutdown grace period ends. Then the events are left for the
//! next run where they are: in their files or their sources' journals (their offsets
//! never moved), or in JetStream (a nats source's messages are NAKed).
//!
//! A dead letter is a delivery only once it is on the disk (`DeadLetterWriter`): until
//! it is, the line's position is not acknowledged, and the write is retried with backoff
//! while the line holds its place in the memory budget (so a dead-letter file that stays
//! unwritable stops the sources: back-pressure, nothing lost). At shutdown after the grace
//! period, or with `--once` after `shutdown_timeout`, it is given up: the line and the
//! rest of its file stay there for the next run, counted as not delivered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, Stream};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ack::{Acknowledger, InOrder, Seq};
use super::deadletter::{DeadLetterWriter, DeadLetters, Record};
use super::decode::{self, Decode};
use super::delivery::Delivery;
use super::retry::{Decision, Grace, Next, RetryPolicy, Turn};
use super::Stats;
use crate::batch::{chunks_timeout, Batch, Limits, Reinject};
use crate::event::{Block, Decoder};
use crate::source::file::checkpoint::Persist;
use crate::source::SourceAck;
use crate::source::{gathers_ahead, max_batch_bytes, Budget};
use crate::telemetry::RejectClass;

/// How a sink sends a part of a batch and learns what came of it.
pub(crate) trait Transport: Send + Sync + 'static {
    /// A part made ready to go (built, signed), sent as it is.
    type Request: Send + 'static;

    /// The request for `events` (encoded JSON objects), under the part's `id`, which its
    /// retries keep.
    fn prepare<'a>(
        &self,
        events: impl Iterator<Item = &'a [u8]> + Clone,
        id: &MessageId,
    ) -> Self::Request;

    /// Sends `request`; the outcome's decision says what becomes of its events.
    fn send(&self, request: Self::Request) -> impl Future<Output = Outcome> + Send;

    /// The start of a request body that a batch may be gathered into as it forms (see
    /// `crate::batch`), so that an event's bytes exist once from the read to the request;
    /// `None`: batches are gathered as items and [`Transport::prepare`] builds each one.
    fn body_prefix(&self) -> Option<Bytes> {
        None
    }

    /// The request for a whole batch's body gathered after [`Transport::body_prefix`];
    /// `None` when this transport takes no such body ([`Transport::prepare`] then builds it).
    fn prepare_body(&self, _body: Bytes, _id: &MessageId) -> Option<Self::Request> {
        None
    }
}

/// What came of one request.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) decision: Decision,
    /// The response's status (a PubAck counts as 200); `None` when there was none.
    pub(crate) status: Option<u16>,
    /// For logs and dead letters: the status and the start of the response body, or
    /// the error.
    pub(crate) detail: String,
}

/// A part's id, made when it is first sent and kept by its retries: the webhook's
/// `webhook-id`, the nats sink's `Nats-Msg-Id` (so that the stream drops a re-send).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct MessageId(String);

impl MessageId {
    /// A new id: `msg_` and 128 random bits in hex.
    pub(crate) fn new() -> Self {
        MessageId(format!("msg_{:032x}", rand::random::<u128>()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything a sink needs to run.
#[derive(Debug)]
pub(crate) struct SinkParts {
    pub(crate) name: String,
    pub(crate) delivery: Delivery,
    pub(crate) decoder: Decoder,
    pub(crate) budget: Arc<Budget>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) dead_letters: Arc<DeadLetters>,
    /// Per input ([`Block::input`]): the source's acknowledgement handle (its files' or
    /// journal's checkpoints, or JetStream's acks).
    pub(crate) acks: Vec<SourceAck>,
    /// Saves the checkpoints the sink moved.
    pub(crate) checkpoints: Persist,
    /// `run --once`: a dead letter that cannot be written is given up after
    /// `shutdown_timeout` instead of being retried until it is written.
    pub(crate) once: bool,
}

/// Runs the sink until its input ends and everything is delivered, dead-lettered, or
/// (after the shutdown grace period) left for the next run.
///
/// One loop owns the sink and waits for whichever comes first: a response to one of the
/// requests in flight (up to `request_concurrency`), the next batch from the stream (taken,
/// built and signed while requests are in flight, so that it is ready when a slot frees),
/// or the end of the wait that lets that batch go out (after a failure, the backoff). A
/// failed batch waits in `Sink::retries` and goes out again, as it was and with the same
/// id, before anything newer.
pub(crate) async fn run<T: Transport>(
    parts: SinkParts,
    transport: Arc<T>,
    input: mpsc::Receiver<Block>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let limits = Limits {
        events: parts.delivery.max_events,
        bytes: max_batch_bytes(parts.budget.cap().bytes),
    };
    // Gathering the next batch while one is in flight (or failed, holding its budget) needs
    // room for both: the sources cut their blocks to fit (see `source::Output`); with a
    // smaller budget, batches are gathered one at a time.
    let ahead = gathers_ahead(parts.budget.cap().events, limits.events);
    let slots = parts.delivery.request_concurrency.max(1);
    let flush_interval = parts.delivery.flush_interval;
    let (mut sink, decode) = Sink::new(parts, transport, shutdown);

    // blocks -> decode -> chunks_timeout -> re-inject
    let (items, decoding) = decode::spawn(decode, input);
    // Each batch is gathered as its request body (see `crate::batch`).
    let body_prefix = sink.transport.body_prefix();
    let batches = chunks_timeout(items, limits, flush_interval, body_prefix);
    let mut batches = Reinject::new(batches, limits);

    // -> build and sign -> post (up to `slots` at once) -> decide -> acknowledge, or retry
    let mut in_flight = FuturesUnordered::new();
    let mut next: Option<Ready<T::Request>> = None;
    let mut pause: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    let mut input_ended = false;
    loop {
        if next.is_none() {
            next = sink.take_retry();
        }
        if next.is_none() && in_flight.is_empty() && input_ended {
            break;
        }
        let fetch = next.is_none() && !input_ended && (in_flight.is_empty() || ahead);
        let start = next.is_some() && in_flight.len() < slots;
        if start && pause.is_none() {
            pause = Some(Box::pin(sink.retry.pause()));
        }
        tokio::select! {
            Some(posted) = in_flight.next(), if !in_flight.is_empty() => {
                match sink.posted(posted).await {
                    Step::Post(job, signed) => in_flight.push(post(&sink.transport, job, signed)),
                    Step::Settled => {}
                    Step::Failed(job) => {
                        // The batch taken meanwhile entered after the failed one: it goes
                        // back behind it, and the next wait is the new failure's.
                        if let Some(ready) = next.take() {
                            input_ended &= !sink.put_back(ready, &mut batches);
                        }
                        sink.retries.insert(job.seq.expect("a job that was sent"), job);
                        pause = None;
                    }
                }
            }
            batch = batches.next(), if fetch => match batch {
                Some(batch) => next = Some(sink.ready(Job::fresh(batch))),
                None => input_ended = true,
            },
            () = async { pause.as_mut().expect("a pause before each start").await }, if start => {
                pause = None;
                let ready = next.take().expect("a batch to start");
                if let Step::Post(job, signed) = sink.start(ready).await {
                    in_flight.push(post(&sink.transport, job, signed));
                }
            }
        }
    }

    sink.finish().await;
    crate::topology::propagate_panic(decoding.await);
    Ok(())
}

/// One request of `job` (its first part's), as a future that owns what it needs.
fn post<T: Transport>(
    transport: &Arc<T>,
    job: Job,
    request: T::Request,
) -> BoxFuture<'static, Posted> {
    let transport = transport.clone();
    Box::pin(async move {
        let sent = Instant::now();
        let outcome = transport.send(request).await;
        let took = sent.elapsed();
        Posted { job, outcome, took }
    })
}

/// A batch on its way to the endpoint: sent part by part (the whole batch, or the halves
/// it was cut into after a 413 or a refusal), in order.
struct Job {
    /// Its place in the order of acknowledgements: given when it is first sent.
    seq: Option<Seq>,
    /// What is left to send; the first part is the one sent (or about to be).
    parts: VecDeque<Part>,
}

/// A part of a batch (the whole batch, or one of the halves it was cut into; its request
/// body was built while it gathered when it is a whole batch, see `crate::batch`), and its
/// `webhook-id` once it was sent: a retry sends the same events with the same id, so that
/// a receiver can tell it from a new batch.
struct Part {
    batch: Batch,
    id: Option<MessageId>,
}

impl Part {
    fn of(batch: Batch) -> Self {
        Part { batch, id: None }
    }
}

impl Job {
    fn fresh(batch: Batch) -> Self {
        Job {
            seq: None,
            parts: VecDeque::from([Part::of(batch)]),
        }
    }

    /// The job's items as one batch (with its body when it is one whole batch that has it).
    fn into_batch(self) -> Batch {
        let mut parts = self.parts.into_iter().map(|p| p.batch);
        let mut batch = parts.next().unwrap_or_else(Batch::empty);
        for part in parts {
            batch.append(part);
        }
        batch
    }
}

/// A job whose first part is built and signed (when it has events), ready to go out.
struct Ready<R> {
    job: Job,
    signed: Option<R>,
}

/// A job back from a request, with what came of it.
struct Posted {
    job: Job,
    outcome: Outcome,
    /// From sending the request to its outcome.
    took: Duration,
}

/// What to do with a job after a step.
enum Step<R> {
    /// Send its first part (signed).
    Post(Job, R),
    /// Delivered, dead-lettered, or left for the next run.
    Settled,
    /// Its request failed: it waits in `Sink::retries`, to go out again when the
    /// [`RetryPolicy`] says.
    Failed(Job),
}

/// The part of a sink past the batcher: posting, deciding, acknowledging.
struct Sink<T: Transport> {
    name: String,
    transport: Arc<T>,
    budget: Arc<Budget>,
    stats: Arc<Stats>,
    retry: RetryPolicy,
    writer: DeadLetterWriter,
    acks: InOrder,
    /// Failed jobs, by their place: the oldest goes out first.
    retries: BTreeMap<Seq, Job>,
    /// When each batch not settled yet was first sent (for the oldest one's age).
    taken: BTreeMap<Seq, Instant>,
    /// The batches with a request in flight.
    in_flight: BTreeSet<Seq>,
}

impl<T: Transport> Sink<T> {
    /// The sink, and the settings of its decode task.
    fn new(parts: SinkParts, transport: Arc<T>, shutdown: CancellationToken) -> (Self, Decode) {
        let SinkParts {
            name,
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
            transport,
            budget,
            stats,
            retry: RetryPolicy::for_sink(&delivery, shutdown),
            writer,
            acks: InOrder::new(Acknowledger::new(acks, checkpoints)),
            retries: BTreeMap::new(),
            taken: BTreeMap::new(),
            in_flight: BTreeSet::new(),
        };
        (sink, decode)
    }

    /// `job` with its first part built and signed.
    fn ready(&self, mut job: Job) -> Ready<T::Request> {
        let signed = job.parts.front_mut().and_then(|part| self.sign(part));
        Ready { job, signed }
    }

    /// The oldest failed job, ready to go out again.
    fn take_retry(&mut self) -> Option<Ready<T::Request>> {
        let (_, job) = self.retries.pop_first()?;
        Some(self.ready(job))
    }

    /// Puts back a job taken but not sent: a failed one among the retries, a new batch
    /// into the stream, ahead of what is newer. Returns whether the stream got it.
    fn put_back(
        &mut self,
        ready: Ready<T::Request>,
        batches: &mut Reinject<impl Stream<Item = Batch> + Unpin>,
    ) -> bool {
        match ready.job.seq {
            Some(seq) => {
                self.retries.insert(seq, ready.job);
                false
            }
            None => {
                batches.push_front(ready.job.into_batch());
                true
            }
        }
    }

    /// The part's body and signature, under its id (made now if the part has none yet);
    /// none when it has no event.
    fn sign(&self, part: &mut Part) -> Option<T::Request> {
        if part.batch.count_events() == 0 {
            return None;
        }
        let id = part.id.get_or_insert_with(MessageId::new);
        let whole = part.batch.body();
        let request = whole.and_then(|body| self.transport.prepare_body(body.clone(), id));
        Some(request.unwrap_or_else(|| self.transport.prepare(part.batch.events(), id)))
    }

    /// A place in the order of acknowledgements for a batch sent for the first time.
    fn open(&mut self) -> Seq {
        let seq = self.acks.open();
        self.taken.insert(seq, Instant::now());
        self.stats
            .counters
            .oldest_unsettled(self.taken.values().next().copied());
        seq
    }

    /// Batch `seq` is settled: delivered, dead-lettered, or left for the next run.
    fn settle(&mut self, seq: Seq) {
        self.acks.settle(seq);
        self.taken.remove(&seq);
        self.stats
            .counters
            .oldest_unsettled(self.taken.values().next().copied());
    }

    /// Whether batch `seq` may be left in its files (or journals) at shutdown, as the
    /// [`RetryPolicy`] does once a request failed then: every event can be read again from
    /// there, but a batch sent after it that was delivered or is in flight waits for this
    /// one's positions (see `InOrder`): were it left, they would be sent again at the next
    /// start, so it is retried within the grace period instead.
    fn may_stay_in_files(&self, seq: Seq) -> bool {
        self.in_flight.range(seq + 1..).next().is_none() && !self.acks.acknowledged_after(seq)
    }

    /// Sends `ready` now, or gives it up (the grace period is over, or it stays in its
    /// files at shutdown). Called once the retry policy's pause is over.
    async fn start(&mut self, ready: Ready<T::Request>) -> Step<T::Request> {
        crate::failpoint::hit("sink-handle");
        let Ready { mut job, signed } = ready;
        let seq = match job.seq {
            Some(seq) => seq,
            None => *job.seq.insert(self.open()),
        };
        if self.retry.verdict(self.may_stay_in_files(seq)) == Turn::GiveUp {
            self.give_up(seq, job.into_batch());
            self.settle(seq);
            return Step::Settled;
        }
        self.advance(job, signed).await
    }

    /// The job's next request: its first part with events (the parts before it, without
    /// any, are resolved), signed unless `signed` is that part's already. Settles the job
    /// when nothing is left.
    async fn advance(&mut self, mut job: Job, mut signed: Option<T::Request>) -> Step<T::Request> {
        let seq = job.seq.expect("a job that was started");
        loop {
            let Some(part) = job.parts.front_mut() else {
                self.retry.succeeded();
                self.settle(seq);
                return Step::Settled;
            };
            let Some(ready) = signed.take().or_else(|| self.sign(part)) else {
                let part = job.parts.pop_front().expect("the front part");
                self.resolve(seq, &part.batch);
                continue;
            };
            // A crash re-sends at most the batches in flight.
            self.acks.persisted().await;
            self.in_flight.insert(seq);
            return Step::Post(job, ready);
        }
    }

    /// Decides what comes of a request (post -> decide -> acknowledge, split,
    /// dead-letter), and what the job does next.
    async fn posted(&mut self, posted: Posted) -> Step<T::Request> {
        let Posted {
            mut job,
            outcome,
            took,
        } = posted;
        self.stats.counters.request(outcome.status, took);
        let seq = job.seq.expect("a job that was sent");
        self.in_flight.remove(&seq);
        let part = job.parts.front().expect("the part sent");
        let events = part.batch.count_events();
        match outcome.decision {
            Decision::Delivered => {
                self.stats.delivered(events as u64);
                let part = job.parts.pop_front().expect("the part sent");
                self.resolve(seq, &part.batch);
            }
            Decision::Retry { after } => return self.failed(job, after, outcome.detail).await,
            Decision::Split | Decision::Reject if events == 1 => {
                let reason = format!("endpoint rejected the event: {}", outcome.detail);
                tracing::warn!(sink = %self.name, "{reason}; dead-lettering it");
                let part = job.parts.pop_front().expect("the part sent");
                self.reject_all(seq, part.batch, &reason, RejectClass::Endpoint)
                    .await;
            }
            Decision::Split | Decision::Reject => {
                tracing::info!(sink = %self.name, events, "{}; sending the batch in two halves", outcome.detail);
                let part = job.parts.pop_front().expect("the part sent");
                let (a, b) = part.batch.halves();
                job.parts.push_front(Part::of(b));
                job.parts.push_front(Part::of(a));
            }
        }
        self.advance(job, None).await
    }

    /// A request of `job` failed and may be retried: the [`RetryPolicy`] says whether it
    /// waits for another attempt, stays in its files (shutdown), or is dead-lettered
    /// (`retry_max_duration`).
    async fn failed(
        &mut self,
        job: Job,
        after: Option<Duration>,
        detail: String,
    ) -> Step<T::Request> {
        let seq = job.seq.expect("a job that was sent");
        let events = job
            .parts
            .iter()
            .map(|p| p.batch.count_events())
            .sum::<usize>();
        self.stats.counters.failed(&detail);
        match self.retry.failed(after, self.may_stay_in_files(seq)) {
            Next::Retry(delay) => {
                self.stats.counters.retried();
                let retry_in = Duration::from_millis(delay.as_millis() as u64);
                tracing::warn!(sink = %self.name, events, retry_in = %humantime::format_duration(retry_in), "delivery failed ({detail}); will retry");
                return Step::Failed(job);
            }
            Next::StayInFiles => {
                tracing::warn!(sink = %self.name, events, "delivery failed at shutdown ({detail}); the events stay in their files for the next start");
                self.give_up(seq, job.into_batch());
            }
            Next::OutOfTime(max) => {
                let max = humantime::format_duration(max);
                let reason = format!("still failing after {max}: {detail}");
                tracing::error!(sink = %self.name, events, "{reason}; dead-lettering the batch");
                self.reject_all(seq, job.into_batch(), &reason, RejectClass::Expired)
                    .await;
            }
        }
        self.settle(seq);
        Step::Settled
    }

    /// Dead-letters every event of `batch` with `reason`, then acknowledges them; or,
    /// when the dead letters could not be written (given up at shutdown or with
    /// `--once`), leaves them as not delivered: they stay in their files (or journals),
    /// with the rest of those.
    async fn reject_all(&mut self, seq: Seq, batch: Batch, reason: &str, class: RejectClass) {
        let records: Vec<Record> = batch
            .events()
            .map(|event| {
                let mut record = Record::new(&self.name, reason.to_owned(), event);
                record.replayable = true;
                record
            })
            .collect();
        let n = records.len() as u64;
        if self.writer.write(records, self.retry.grace()).await {
            self.stats.rejected(class, n);
            self.resolve(seq, &batch);
            return;
        }
        self.give_up(seq, batch);
    }

    /// The items of `batch` (a part of batch `seq`) were delivered or dead-lettered (their
    /// dead letters are on the disk): move the file offsets (in the order of the batches)
    /// and free the budget.
    fn resolve(&mut self, seq: Seq, batch: &Batch) {
        self.acks.acknowledge(seq, batch.last_per_file());
        self.budget.release(batch.cost());
    }

    /// Keeps the items of `batch` for the next run: they stay in their files or journals
    /// (their offsets did not move, and no later batch of the same files moves them for
    /// the rest of the run).
    fn give_up(&mut self, seq: Seq, batch: Batch) {
        self.acks.leave_in_files(seq, batch.last_per_file());
        self.stats.not_delivered(batch.count_events() as u64);
        self.budget.release(batch.cost());
    }

    /// The input has ended and every batch is settled: waits for the last checkpoint write.
    async fn finish(mut self) {
        self.acks.persisted().await;
        let peak = self.budget.peak();
        tracing::info!(sink = %self.name, peak_events_in_memory = peak.events, peak_bytes_in_memory = peak.bytes, "most held in memory at once");
    }
}
