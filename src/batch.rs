//! The batching stage of a sink: [`chunks_timeout`] over its decoded input, counting bytes
//! too, and [`Reinject`], which puts failed batches back into the stream ahead of newer
//! ones.
//!
//! A batch goes out when `max_event_in_memory` items are pending, when their lines reach
//! `max_bytes` (half the sink's byte budget, see [`crate::source::max_batch_bytes`]), or
//! when `flush_interval` has passed since the first pending one, whichever comes first.
//! That is `tokio_stream::StreamExt::chunks_timeout` with a byte trigger added; where the
//! byte limit does not bind, the two give the same batches at the same moments (a property
//! test below holds this). Without the byte trigger, large events would fill the byte
//! budget before a batch filled, and every batch would wait for `flush_interval`:
//! `chunks_timeout` takes no weight, so the trigger cannot be layered on top of it.
//!
//! **The batch being gathered is its request body.** Given the body's start
//! ([`chunks_timeout`]'s `body_prefix`), each event is copied into the body as it arrives
//! (from its block's read buffer, or from the decoder's buffer when it was encoded anew),
//! and a block's read buffer is let go once its last item joined a batch. So between the
//! read and the request, an event's bytes exist once: read buffers are freed as their
//! lines join a batch, and no second copy is made to build the request.
//!
//! **Besides its bytes, an item costs a batch 16 bytes**: a [`Record`] (its line's offset,
//! its event's length, the bytes of the budget it holds); the file of a run of items from
//! one file is kept once ([`Run`]). Everything done with a batch works from these: its
//! request, its halves, its dead letters, its acknowledgements. At GO Feature Flag's
//! default of 100 000 events a batch, a `Bytes` and an [`Ack`] per event (64 bytes) cost
//! 6 MiB per batch, and three batches are held at once (in flight, ready, gathering).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::Fuse;
use futures::{Stream, StreamExt};
use tokio::time::Sleep;

#[cfg(test)]
use crate::event::Piece;
use crate::event::{Ack, Item, Items};
use crate::source::Cost;

/// A batch: its items, in order, as [`Record`]s and [`Run`]s, and their events one after
/// another in one buffer (the request body, when it was gathered as one).
#[derive(Debug)]
pub(crate) struct Batch {
    /// The events, separated by commas, from `start` on. When `whole`, it is the request
    /// body: the prefix, the events, [`BODY_SUFFIX`].
    bytes: Bytes,
    /// Where the first event of `records` starts in `bytes`.
    start: usize,
    whole: bool,
    records: Vec<Record>,
    /// The files of `records`, in order: their counts add up to `records.len()`.
    runs: Vec<Run>,
}

/// One item of a [`Batch`]: 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    /// Byte offset just past the line in its file (see [`Ack::offset`]).
    offset: u64,
    /// The length of its event, or [`NO_EVENT`]: a line that carried none, only its
    /// position.
    len: u32,
    /// Bytes of the budget it holds ([`Item::held`]: at most `u32::MAX`, see
    /// [`crate::source::Budget::line_bytes`]).
    held: u32,
}

/// The `len` of a [`Record`] without an event. An event is never this long: lines are at
/// most [`crate::config::MAX_LINE_BYTES`], and an event is about its line's length.
const NO_EVENT: u32 = u32::MAX;

impl Record {
    fn of(item: &Item) -> Self {
        let (len, held) = match item {
            Item::Event { event, held, .. } => (event.len(), *held),
            Item::Position(_) => (NO_EVENT as usize, 0),
        };
        Record {
            offset: item.ack().offset,
            len: u32::try_from(len).expect("an event shorter than 4 GiB"),
            held: u32::try_from(held).expect("a line holds at most u32::MAX bytes"),
        }
    }

    fn has_event(&self) -> bool {
        self.len != NO_EVENT
    }

    /// Its event's bytes and the comma after them.
    fn span(&self) -> usize {
        match self.has_event() {
            true => self.len as usize + 1,
            false => 0,
        }
    }
}

/// Consecutive items of a [`Batch`] from one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    input: usize,
    file: u64,
    records: usize,
}

/// Adds `records` items of (`input`, `file`) after `runs`.
fn extend_runs(runs: &mut Vec<Run>, input: usize, file: u64, records: usize) {
    match runs.last_mut() {
        Some(last) if (last.input, last.file) == (input, file) => last.records += records,
        _ if records == 0 => {}
        _ => runs.push(Run {
            input,
            file,
            records,
        }),
    }
}

/// `runs` cut after their first `at` records.
fn split_runs(mut runs: Vec<Run>, at: usize) -> (Vec<Run>, Vec<Run>) {
    let mut seen = 0;
    for (i, run) in runs.iter_mut().enumerate() {
        if seen + run.records > at {
            let mut rest = vec![Run {
                records: seen + run.records - at,
                ..*run
            }];
            run.records = at - seen;
            let keep = if run.records == 0 { i } else { i + 1 };
            rest.extend(runs.drain(i + 1..));
            runs.truncate(keep);
            return (runs, rest);
        }
        seen += run.records;
    }
    (runs, Vec::new())
}

impl Batch {
    /// A batch of no items.
    pub(crate) fn empty() -> Self {
        Gather::new(
            None,
            Limits {
                events: 0,
                bytes: 0,
            },
        )
        .finish()
    }

    /// A batch of `items`, whose events hold their own bytes, without a request body.
    #[cfg(test)]
    pub(crate) fn of(items: Vec<Item>) -> Self {
        let limits = Limits {
            events: items.len(),
            bytes: usize::MAX,
        };
        let mut gather = Gather::new(None, limits);
        for item in items {
            gather.add(item, &[]);
        }
        gather.finish()
    }

    /// Its items: events and positions.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Its events, in order.
    pub(crate) fn events(&self) -> Events<'_> {
        Events {
            bytes: &self.bytes,
            at: self.start,
            records: self.records.iter(),
        }
    }

    /// How many items carry an event (the rest are positions).
    pub(crate) fn count_events(&self) -> usize {
        self.records.iter().filter(|r| r.has_event()).count()
    }

    /// What it holds in the sink's budget.
    pub(crate) fn cost(&self) -> Cost {
        Cost {
            events: self.records.len(),
            bytes: self.records.iter().map(|r| r.held as usize).sum(),
        }
    }

    /// The request body gathered with it (see the module's overview); none for a batch
    /// put together again (re-injected batches joined, halves), whose request builds one.
    pub(crate) fn body(&self) -> Option<&Bytes> {
        self.whole.then_some(&self.bytes)
    }

    /// The positions that matter: within one file offsets only grow, so the last of each
    /// run of items from the same file is enough.
    pub(crate) fn last_per_file(&self) -> Vec<Ack> {
        let mut end = 0;
        (self.runs.iter())
            .map(|run| {
                end += run.records;
                Ack {
                    input: run.input,
                    file: run.file,
                    offset: self.records[end - 1].offset,
                }
            })
            .collect()
    }

    /// Splits it into two halves with about the same number of events (the second gets the
    /// odd one). Both keep the same buffer: no event is copied.
    pub(crate) fn halves(mut self) -> (Batch, Batch) {
        let events = self.count_events();
        let mut seen = 0;
        let cut = (self.records.iter())
            .position(|r| {
                seen += usize::from(r.has_event());
                seen > events / 2
            })
            .unwrap_or(self.records.len());
        let records = self.records.split_off(cut);
        let (first, second) = split_runs(std::mem::take(&mut self.runs), cut);
        let start = self.start + self.records.iter().map(Record::span).sum::<usize>();
        let b = Batch {
            bytes: self.bytes.clone(),
            start,
            whole: false,
            records,
            runs: second,
        };
        let a = Batch {
            whole: false,
            runs: first,
            ..self
        };
        (a, b)
    }

    /// `other`'s items after its own (their events are copied into a new buffer: a rare
    /// path, for re-injected batches joined).
    pub(crate) fn append(&mut self, other: Batch) {
        let span = |b: &Batch| b.records.iter().map(Record::span).sum::<usize>();
        let mut bytes = BytesMut::with_capacity(span(self) + span(&other));
        for (i, event) in self.events().chain(other.events()).enumerate() {
            if i > 0 {
                bytes.put_u8(b',');
            }
            bytes.put_slice(event);
        }
        self.bytes = bytes.freeze();
        self.start = 0;
        self.whole = false;
        self.records.extend_from_slice(&other.records);
        for run in other.runs {
            extend_runs(&mut self.runs, run.input, run.file, run.records);
        }
    }

    /// Its items as they came (a copy of each event, of its own), for tests.
    #[cfg(test)]
    pub(crate) fn items(&self) -> Vec<Item> {
        let mut events = self.events();
        let mut records = self.records.iter();
        let mut items = Vec::new();
        for run in &self.runs {
            for record in records.by_ref().take(run.records) {
                let ack = Ack {
                    input: run.input,
                    file: run.file,
                    offset: record.offset,
                };
                items.push(match record.has_event() {
                    true => Item::Event {
                        event: Piece::Own(Bytes::copy_from_slice(events.next().expect("an event"))),
                        ack,
                        held: record.held as usize,
                    },
                    false => Item::Position(ack),
                });
            }
        }
        items
    }
}

/// The events of a [`Batch`], as slices of its buffer.
#[derive(Debug, Clone)]
pub(crate) struct Events<'a> {
    bytes: &'a [u8],
    /// Where the next event starts.
    at: usize,
    records: std::slice::Iter<'a, Record>,
}

impl<'a> Iterator for Events<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let record = self.records.find(|r| r.has_event())?;
        let event = &self.bytes[self.at..self.at + record.len as usize];
        self.at += record.span();
        Some(event)
    }
}

/// The end of every body.
pub(crate) const BODY_SUFFIX: &[u8] = b"]}";

/// The most items a batch reserves room for before they come.
const MAX_RESERVED_ITEMS: usize = 1 << 20;

/// The batch being gathered.
#[derive(Debug)]
struct Gather {
    /// The start of the request body; none: the events alone are gathered.
    prefix: Option<Bytes>,
    bytes: BytesMut,
    events: usize,
    records: Vec<Record>,
    runs: Vec<Run>,
    /// How large the next buffer is reserved, so that it is not copied as it grows (a
    /// copy would hold it twice): at first, as if every event of a full batch were as
    /// long as the first one (at most the batch's bytes); then the last buffer's length.
    expected: Option<usize>,
    limits: Limits,
}

impl Gather {
    fn new(prefix: Option<Bytes>, limits: Limits) -> Self {
        Gather {
            prefix,
            bytes: BytesMut::new(),
            events: 0,
            records: Vec::new(),
            runs: Vec::new(),
            expected: None,
            limits,
        }
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    /// Adds `item`, whose event, if in its block, lies in `buffer`: the event is copied,
    /// and the bytes it held of its own are let go now (the block's buffer, once the
    /// block is added).
    fn add(&mut self, item: Item, buffer: &[u8]) {
        if self.records.is_empty() {
            // Reserved whole, so that they are not copied as they come (a copy would hold
            // them twice), but only once the batch starts, not while the last one is in
            // flight.
            let room = self.limits.events.min(MAX_RESERVED_ITEMS);
            self.records.reserve_exact(room);
        }
        let record = Record::of(&item);
        let ack = item.ack();
        if let Item::Event { event, .. } = item {
            self.put(event.of(buffer));
        }
        self.records.push(record);
        extend_runs(&mut self.runs, ack.input, ack.file, 1);
    }

    fn put(&mut self, event: &[u8]) {
        if self.events == 0 {
            let prefix = self.prefix.as_deref().unwrap_or_default();
            let guess = (event.len() + 1)
                .saturating_mul(self.limits.events)
                .min(self.limits.bytes);
            let expected = self.expected.unwrap_or(guess);
            let reserve = expected + expected / 16 + prefix.len() + BODY_SUFFIX.len();
            self.bytes.reserve(reserve.max(4096));
            self.bytes.put_slice(prefix);
        } else {
            self.bytes.put_u8(b',');
        }
        self.bytes.put_slice(event);
        self.events += 1;
    }

    /// The batch of what was added (the request body ended, when gathered as one).
    fn finish(&mut self) -> Batch {
        let prefix = self.prefix.as_ref().map_or(0, Bytes::len);
        let whole = self.prefix.is_some() && self.events > 0;
        if whole {
            self.bytes.put_slice(BODY_SUFFIX);
        }
        // Taken whole: a buffer shares its allocation with no other batch's.
        let bytes = std::mem::take(&mut self.bytes).freeze();
        if self.events > 0 {
            self.expected = Some(bytes.len());
        }
        self.events = 0;
        Batch {
            bytes,
            start: if whole { prefix } else { 0 },
            whole,
            records: std::mem::take(&mut self.records),
            runs: std::mem::take(&mut self.runs),
        }
    }
}

/// When a batch is full.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Items (`max_event_in_memory`).
    pub(crate) events: usize,
    /// Bytes held by the items ([`Item::held`]).
    pub(crate) bytes: usize,
}

impl Limits {
    /// Whether a batch of `items` holding `bytes` goes out as it is.
    fn reached(&self, items: usize, bytes: usize) -> bool {
        items >= self.events || bytes >= self.bytes
    }
}

/// Batches `input`, blocks of items, by size, bytes and time. The stream ends when the input ends, after
/// the last partial batch. With `body_prefix`, each batch's request body is built while it
/// gathers (see the module's overview).
pub(crate) fn chunks_timeout<S>(
    input: S,
    limits: Limits,
    flush_interval: Duration,
    body_prefix: Option<Bytes>,
) -> Batches<S>
where
    S: Stream<Item = Items> + Unpin,
{
    Batches {
        input: Some(input),
        block: None,
        limits,
        flush_interval,
        bytes: 0,
        deadline: None,
        gather: Gather::new(body_prefix, limits),
    }
}

/// The stream of [`chunks_timeout`].
pub(crate) struct Batches<S> {
    /// None once the input ended.
    input: Option<S>,
    /// The block being added: its buffer, and its items not added yet (a batch filled
    /// before them).
    block: Option<(Bytes, std::vec::IntoIter<Item>)>,
    limits: Limits,
    flush_interval: Duration,
    /// Bytes held by the pending items.
    bytes: usize,
    /// Set while items are pending: when they go out, full or not.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The pending items.
    gather: Gather,
}

impl<S> Batches<S> {
    fn take(&mut self) -> Batch {
        self.bytes = 0;
        self.deadline = None;
        self.gather.finish()
    }
}

impl<S: Stream<Item = Items> + Unpin> Stream for Batches<S> {
    type Item = Batch;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        let this = &mut *self;
        loop {
            if let Some(batch) = this.add_block() {
                return Poll::Ready(Some(batch));
            }
            let Some(input) = this.input.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(input).poll_next(cx) {
                Poll::Ready(Some(block)) => {
                    this.block = Some((block.buffer, block.items.into_iter()));
                }
                Poll::Ready(None) => {
                    this.input = None;
                    if this.gather.len() > 0 {
                        return Poll::Ready(Some(this.take()));
                    }
                }
                Poll::Pending => break,
            }
        }
        let due = this
            .deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if due {
            Poll::Ready(Some(this.take()))
        } else {
            Poll::Pending
        }
    }
}

impl<S> Batches<S> {
    /// Adds the items of the block being added, until a batch is full: then that batch.
    /// The block's buffer is dropped once all its items are added.
    fn add_block(&mut self) -> Option<Batch> {
        let (buffer, items) = self.block.as_mut()?;
        for item in items.by_ref() {
            if self.gather.len() == 0 {
                self.deadline = Some(Box::pin(tokio::time::sleep(self.flush_interval)));
            }
            self.bytes += item.held();
            self.gather.add(item, buffer);
            if self.limits.reached(self.gather.len(), self.bytes) {
                return Some(self.take());
            }
        }
        self.block = None;
        None
    }
}

/// A stream of batches with failed ones put back in front.
///
/// The sink takes a batch, and (while it is in flight) at most the next one. When the
/// first fails, it re-injects both, the failed one last so that it comes out first:
/// everything still inside `input` entered later than both, so serving the re-injected
/// batches first keeps the order, and no event goes out after one that entered later.
/// The queue is filled only by the owner between two polls, so no waker is needed; once
/// `input` has ended the stream still gives what is re-injected, and ends when both are
/// empty.
pub(crate) struct Reinject<S> {
    input: Fuse<S>,
    queue: VecDeque<Batch>,
    /// Adjacent re-injected batches are joined up to these.
    limits: Limits,
}

impl<S: Stream<Item = Batch> + Unpin> Reinject<S> {
    pub(crate) fn new(input: S, limits: Limits) -> Self {
        Reinject {
            input: input.fuse(),
            queue: VecDeque::new(),
            limits,
        }
    }

    /// Puts `batch` back before everything: it is older than anything the stream holds.
    /// It joins the batch in front when both fit in one (their request is built anew).
    pub(crate) fn push_front(&mut self, mut batch: Batch) {
        match self.queue.front_mut() {
            Some(front)
                if batch.len() + front.len() <= self.limits.events
                    && batch.cost().bytes + front.cost().bytes <= self.limits.bytes =>
            {
                batch.append(std::mem::replace(front, Batch::empty()));
                *front = batch;
            }
            _ => self.queue.push_front(batch),
        }
    }
}

impl<S: Stream<Item = Batch> + Unpin> Stream for Reinject<S> {
    type Item = Batch;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        if let Some(batch) = self.queue.pop_front() {
            return Poll::Ready(Some(batch));
        }
        Pin::new(&mut self.input).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Ack;
    use bytes::Bytes;
    use tokio_stream::wrappers::ReceiverStream;

    fn item(n: u64) -> Item {
        let event = Bytes::from(n.to_string());
        Item::Event {
            held: event.len(),
            event: Piece::Own(event),
            ack: Ack {
                input: 0,
                file: 0,
                offset: n,
            },
        }
    }

    /// `items` as a decode stage hands a block's on: their events moved into one buffer,
    /// each a range of it.
    fn block_of(mut items: Vec<Item>) -> Items {
        let mut buffer = Vec::new();
        for item in &mut items {
            if let Item::Event { event, .. } = item {
                let start = buffer.len();
                buffer.extend_from_slice(event.of(&[]));
                let len = event.len();
                *event = Piece::InBlock { start, len };
            }
        }
        Items {
            buffer: Bytes::from(buffer),
            items,
        }
    }

    fn events(n: usize) -> Limits {
        Limits {
            events: n,
            bytes: usize::MAX,
        }
    }

    /// The batch's events (its positions left out).
    fn numbers(batch: &Batch) -> Vec<String> {
        batch
            .events()
            .map(|e| String::from_utf8(e.to_vec()).unwrap())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn size_then_interval_trigger() {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut out = chunks_timeout(
            ReceiverStream::new(rx),
            events(3),
            Duration::from_secs(60),
            None,
        );
        tx.send(block_of(vec![item(0), item(1)])).await.unwrap();
        tx.send(block_of(vec![item(2), item(3)])).await.unwrap();
        assert_eq!(numbers(&out.next().await.unwrap()), ["0", "1", "2"]);
        let start = tokio::time::Instant::now();
        assert_eq!(numbers(&out.next().await.unwrap()), ["3"]);
        assert!(start.elapsed() >= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_goes_out_once_its_bytes_reach_the_limit() {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let limits = Limits {
            events: 100,
            bytes: 5,
        };
        let mut out = chunks_timeout(
            ReceiverStream::new(rx),
            limits,
            Duration::from_secs(60),
            None,
        );
        for n in [1, 22, 333, 4] {
            tx.send(block_of(vec![item(n)])).await.unwrap();
        }
        let start = tokio::time::Instant::now();
        assert_eq!(numbers(&out.next().await.unwrap()), ["1", "22", "333"]);
        assert_eq!(start.elapsed(), Duration::ZERO, "not held for the interval");
        assert_eq!(numbers(&out.next().await.unwrap()), ["4"]);
        assert!(start.elapsed() >= Duration::from_secs(60));
    }

    /// With a body prefix, a batch comes with its request body, and its events are slices
    /// of it: an event's bytes exist once, and what they were read into is let go.
    #[tokio::test(start_paused = true)]
    async fn a_batch_is_its_request_body() {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let prefix = Bytes::from_static(b"{\"events\":[");
        let mut out = chunks_timeout(
            ReceiverStream::new(rx),
            events(3),
            Duration::from_secs(60),
            Some(prefix),
        );
        let read = Bytes::from_static(b"0 1 22");
        let line = |at: std::ops::Range<usize>, offset| Item::Event {
            event: Piece::InBlock {
                start: at.start,
                len: at.len(),
            },
            ack: Ack {
                input: 0,
                file: 0,
                offset,
            },
            held: 2,
        };
        let position = Item::Position(Ack {
            input: 0,
            file: 0,
            offset: 3,
        });
        let items = vec![line(0..1, 1), position, line(2..3, 4)];
        let block = Items {
            buffer: read.clone(),
            items,
        };
        tx.send(block).await.unwrap();
        let batch = out.next().await.unwrap();
        let body = batch.body().cloned().expect("a body");
        assert_eq!(&body[..], b"{\"events\":[0,1]}");
        assert_eq!(numbers(&batch), ["0", "1"]);
        let inside = |e: &[u8]| body.as_ptr_range().contains(&e.as_ptr());
        assert!(batch.events().all(inside));
        assert_eq!(
            batch.items()[1].ack().offset,
            3,
            "positions keep their place"
        );

        // A batch of positions only has no body; the next body is built anew.
        let block = Items {
            buffer: read.clone(),
            items: vec![line(4..6, 7)],
        };
        tx.send(block).await.unwrap();
        drop(tx);
        let batch = out.next().await.unwrap();
        assert_eq!(&batch.body().unwrap()[..], b"{\"events\":[22]}");
    }

    /// A block's buffer is held while items of it wait to join a batch, and let go once
    /// the last has joined one: once per block, whatever batches its items end in.
    #[tokio::test(start_paused = true)]
    async fn a_blocks_buffer_is_let_go_once_its_last_item_joins_a_batch() {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let prefix = Bytes::from_static(b"{\"events\":[");
        let mut out = chunks_timeout(
            ReceiverStream::new(rx),
            events(2),
            Duration::from_secs(60),
            Some(prefix),
        );
        let block = block_of((0..3).map(item).collect());
        let buffer = block.buffer.clone();
        tx.send(block).await.unwrap();
        assert_eq!(numbers(&out.next().await.unwrap()), ["0", "1"]);
        assert!(!buffer.is_unique(), "held: its last item waits");
        drop(tx);
        let batch = out.next().await.unwrap();
        assert_eq!(numbers(&batch), ["2"]);
        assert!(
            buffer.is_unique(),
            "let go: the batch holds a copy of its events"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reinjected_batches_go_out_before_newer_ones() {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let limits = events(2);
        let batches = chunks_timeout(
            ReceiverStream::new(rx),
            limits,
            Duration::from_secs(1),
            None,
        );
        let mut out = Reinject::new(batches, limits);
        tx.send(block_of((0..5).map(item).collect())).await.unwrap();
        let failed = out.next().await.unwrap();
        let prefetched = out.next().await.unwrap();
        assert_eq!(numbers(&failed), ["0", "1"]);
        out.push_front(prefetched);
        out.push_front(failed);
        assert_eq!(numbers(&out.next().await.unwrap()), ["0", "1"]);
        assert_eq!(numbers(&out.next().await.unwrap()), ["2", "3"]);
        drop(tx);
        assert_eq!(numbers(&out.next().await.unwrap()), ["4"]);
        assert!(out.next().await.is_none());
    }

    /// Once the input ended, what is re-injected still comes out.
    #[tokio::test(start_paused = true)]
    async fn reinjected_batches_join_up_to_the_limits_and_outlive_the_input() {
        let mut out = Reinject::new(futures::stream::empty(), events(3));
        assert!(out.next().await.is_none());
        out.push_front(Batch::of(vec![item(2)]));
        out.push_front(Batch::of(vec![item(0), item(1)]));
        out.push_front(Batch::of(vec![item(9)]));
        assert_eq!(numbers(&out.next().await.unwrap()), ["9"]);
        assert_eq!(numbers(&out.next().await.unwrap()), ["0", "1", "2"]);
        assert!(out.next().await.is_none());
    }

    /// The positions of `items` that matter, as the acknowledgements took them from
    /// items before batches were records: the last of each run from one file.
    fn last_per_file(items: &[Item]) -> Vec<Ack> {
        let mut acks: Vec<Ack> = Vec::new();
        for ack in items.iter().map(Item::ack) {
            match acks.last_mut() {
                Some(last) if (last.input, last.file) == (ack.input, ack.file) => *last = ack,
                _ => acks.push(ack),
            }
        }
        acks
    }

    /// Items of two files, an event or a position each: (input, file, event or none).
    fn items_of(spec: &[(usize, u64, Option<String>)]) -> Vec<Item> {
        let mut offset = 0;
        (spec.iter())
            .map(|(input, file, event)| {
                offset += 7;
                let ack = Ack {
                    input: *input,
                    file: *file,
                    offset,
                };
                match event {
                    Some(e) => Item::Event {
                        event: Piece::Own(Bytes::from(e.clone())),
                        ack,
                        held: e.len() + 1,
                    },
                    None => Item::Position(ack),
                }
            })
            .collect()
    }

    fn same(a: &[Item], b: &[Item]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(a, b)| (a.event(), a.ack(), a.held()) == (b.event(), b.ack(), b.held()))
    }

    /// A run of one file cut by the halves: each half acknowledges its own part of it,
    /// and a half of positions only has no event to send.
    #[test]
    fn halves_split_events_evenly_and_cut_runs_where_they_split() {
        let e = |s: &str| Some(s.to_owned());
        let items = items_of(&[
            (0, 1, e("a")),
            (0, 1, None),
            (0, 2, e("bb")),
            (0, 2, e("c")),
            (1, 2, e("dd")),
        ]);
        let (a, b) = Batch::of(items.clone()).halves();
        assert_eq!(numbers(&a), ["a", "bb"]);
        assert_eq!(numbers(&b), ["c", "dd"]);
        assert!(same(&a.items(), &items[..3]) && same(&b.items(), &items[3..]));
        assert_eq!(a.last_per_file(), last_per_file(&items[..3]));
        assert_eq!(b.last_per_file(), last_per_file(&items[3..]));
        assert_eq!(a.cost(), Cost::of(&items[..3]));
        assert!(a.body().is_none() && b.body().is_none(), "built when sent");

        let (c, d) = b.halves();
        assert_eq!(
            (numbers(&c), numbers(&d)),
            (vec!["c".to_owned()], vec!["dd".to_owned()])
        );
        assert_eq!(d.last_per_file(), last_per_file(&items[4..]));
    }

    mod records {
        use super::*;
        use proptest::prelude::*;

        fn spec() -> impl Strategy<Value = Vec<(usize, u64, Option<String>)>> {
            let event = prop::option::weighted(0.8, "[a-z0-9]{1,6}");
            prop::collection::vec((0usize..2, 0u64..3, event), 0..24)
        }

        proptest! {
            /// A batch holds what its items held: the same events, positions, files and
            /// budget, through halves and joins; its body is the one a request builds.
            #[test]
            fn a_batch_keeps_what_its_items_held(spec in spec(), other in spec()) {
                let items = items_of(&spec);
                let prefix = Bytes::from_static(b"{\"events\":[");
                let limits = Limits { events: items.len().max(1), bytes: usize::MAX };
                let mut gather = Gather::new(Some(prefix.clone()), limits);
                let block = block_of(items.clone());
                for item in block.items {
                    gather.add(item, &block.buffer);
                }
                let batch = gather.finish();
                prop_assert!(same(&batch.items(), &items));
                prop_assert_eq!(batch.last_per_file(), last_per_file(&items));
                prop_assert_eq!(batch.cost(), Cost::of(&items));
                let events: Vec<&[u8]> = (items.iter())
                    .filter_map(|i| Some(i.event()?.of(&[])))
                    .collect();
                prop_assert_eq!(batch.count_events(), events.len());
                match batch.body() {
                    Some(body) => {
                        let built = crate::sink::webhook::body(&prefix, events.iter());
                        prop_assert_eq!(body, &built);
                    }
                    None => prop_assert!(events.is_empty()),
                }

                let (a, b) = batch.halves();
                let mut joined = a.items();
                joined.extend(b.items());
                prop_assert!(same(&joined, &items));
                prop_assert!(b.count_events() >= a.count_events());
                prop_assert!(b.count_events() - a.count_events() <= 1);

                let mut a = a;
                a.append(b);
                let more = items_of(&other);
                a.append(Batch::of(more.clone()));
                let mut all = items.clone();
                all.extend(more);
                prop_assert!(same(&a.items(), &all));
                prop_assert_eq!(a.last_per_file(), last_per_file(&all));
            }
        }
    }

    mod same_as_tokio_stream {
        use super::*;
        use proptest::prelude::*;

        /// When `input` comes (after a gap of tens of ms, so many items, in one block), what
        /// the stream gives and when: (ms since the start, the numbers in the batch).
        type Schedule = Vec<(u64, usize)>;
        type Given = Vec<(u128, Vec<String>)>;

        /// Runs `batch` on paused time over a channel fed along `schedule`.
        fn run<B, S>(schedule: &Schedule, batch: B) -> Given
        where
            B: FnOnce(ReceiverStream<Items>) -> S,
            S: Stream<Item = Vec<Item>>,
        {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async {
                let (tx, rx) = tokio::sync::mpsc::channel(1024);
                let schedule = schedule.clone();
                tokio::spawn(async move {
                    let mut n = 0;
                    for (gap, count) in schedule {
                        tokio::time::sleep(Duration::from_millis(gap * 10)).await;
                        let block = (n..n + count as u64).map(item).collect();
                        tx.send(block_of(block)).await.unwrap();
                        n += count as u64;
                    }
                });
                let start = tokio::time::Instant::now();
                let out = std::pin::pin!(batch(ReceiverStream::new(rx)));
                out.map(|b| (start.elapsed().as_millis(), numbers(&Batch::of(b))))
                    .collect()
                    .await
            })
        }

        proptest! {
            /// Flush intervals end between the 10 ms steps of the input, so that no timer
            /// and no send fall on the same instant.
            #[test]
            fn when_bytes_do_not_bind(
                schedule in prop::collection::vec((0u64..8, 0usize..6), 0..12),
                max_events in 1usize..6,
                flush_steps in 0u64..6,
            ) {
                let flush = Duration::from_millis(flush_steps * 10 + 5);
                let limits = Limits { events: max_events, bytes: usize::MAX };
                let ours = run(&schedule, |input| {
                    chunks_timeout(input, limits, flush, None).map(|b| b.items())
                });
                let theirs = run(&schedule, |input| {
                    let items = input.flat_map(|block| {
                        let buffer = block.buffer;
                        let items = block.items.into_iter().map(move |item| match item {
                            Item::Event { event, ack, held } => Item::Event {
                                event: Piece::Own(Bytes::copy_from_slice(event.of(&buffer))),
                                ack,
                                held,
                            },
                            position => position,
                        });
                        futures::stream::iter(items)
                    });
                    tokio_stream::StreamExt::chunks_timeout(items, max_events, flush)
                });
                prop_assert_eq!(ours, theirs);
            }
        }
    }
}
