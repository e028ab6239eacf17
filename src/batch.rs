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
//! ([`chunks_timeout`]'s `body_prefix`), each event is copied into the body as it arrives,
//! and its own bytes (a slice of the source's read buffer, or of the decoder's) are let go
//! at once; when the batch goes out, its events become slices of the body. So between the
//! read and the request, an event's bytes exist once: read buffers are freed as their
//! lines join a batch, and no second copy is made to build the request.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::Fuse;
use futures::{Stream, StreamExt};
use tokio::time::Sleep;

use crate::event::Item;

/// A batch: its items, in order, and the request body of their events when it was built
/// while they gathered (see the module's overview).
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) items: Vec<Item>,
    /// `prefix`, the events separated by commas, `]}`: the events of `items` are slices of
    /// it. None for a batch put together again (re-injected batches joined, halves).
    pub(crate) body: Option<Bytes>,
}

impl Batch {
    /// A batch without a body built (its request builds one).
    pub(crate) fn of(items: Vec<Item>) -> Self {
        Batch { items, body: None }
    }
}

/// The most items a batch reserves room for before they come.
const MAX_RESERVED_ITEMS: usize = 1 << 20;

/// The end of every body.
pub(crate) const BODY_SUFFIX: &[u8] = b"]}";

/// The request body of the batch being gathered.
struct Body {
    prefix: Bytes,
    bytes: BytesMut,
    /// The length of each event in `bytes`, in order.
    lengths: Vec<usize>,
    /// How large the next body is reserved, so that it is not copied as it grows (a
    /// copy would hold it twice): at first, as if every event of a full batch were as
    /// long as the first one (at most the batch's bytes); then the last body's length.
    expected: Option<usize>,
    limits: Limits,
}

impl Body {
    fn new(prefix: Bytes, limits: Limits) -> Self {
        Body {
            prefix,
            bytes: BytesMut::new(),
            lengths: Vec::new(),
            expected: None,
            limits,
        }
    }

    /// Copies the event of `item` into the body; the item keeps an empty placeholder until
    /// [`Body::finish`], so that the bytes it held are let go now.
    fn add(&mut self, item: &mut Item) {
        let Item::Event { event, .. } = item else {
            return;
        };
        if self.lengths.is_empty() {
            let guess = (event.len() + 1)
                .saturating_mul(self.limits.events)
                .min(self.limits.bytes);
            let expected = self.expected.unwrap_or(guess);
            let reserve = expected + expected / 16 + self.prefix.len() + BODY_SUFFIX.len();
            self.bytes.reserve(reserve.max(4096));
            self.bytes.put_slice(&self.prefix);
        } else {
            self.bytes.put_u8(b',');
        }
        self.bytes.put_slice(event);
        self.lengths.push(event.len());
        *event = Bytes::new();
    }

    /// Ends the body of `items` (whose events were added in order) and makes their events
    /// slices of it. None when no event was added.
    fn finish(&mut self, items: &mut [Item]) -> Option<Bytes> {
        if self.lengths.is_empty() {
            return None;
        }
        self.bytes.put_slice(BODY_SUFFIX);
        // Taken whole: a body shares its allocation with no other batch's.
        let body = std::mem::take(&mut self.bytes).freeze();
        self.expected = Some(body.len());
        let mut at = self.prefix.len();
        let mut lengths = self.lengths.drain(..);
        for item in items {
            if let Item::Event { event, .. } = item {
                let len = lengths.next().expect("one length per event");
                *event = body.slice(at..at + len);
                at += len + 1;
            }
        }
        Some(body)
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

fn bytes(batch: &[Item]) -> usize {
    crate::source::Cost::of(batch).bytes
}

/// Batches `input` by size, bytes and time. The stream ends when the input ends, after
/// the last partial batch. With `body_prefix`, each batch's request body is built while it
/// gathers (see the module's overview).
pub(crate) fn chunks_timeout<S>(
    input: S,
    limits: Limits,
    flush_interval: Duration,
    body_prefix: Option<Bytes>,
) -> Batches<S>
where
    S: Stream<Item = Item> + Unpin,
{
    Batches {
        input: Some(input),
        limits,
        flush_interval,
        pending: Vec::with_capacity(limits.events.min(MAX_RESERVED_ITEMS)),
        bytes: 0,
        deadline: None,
        body: body_prefix.map(|prefix| Body::new(prefix, limits)),
    }
}

/// The stream of [`chunks_timeout`].
pub(crate) struct Batches<S> {
    /// None once the input ended.
    input: Option<S>,
    limits: Limits,
    flush_interval: Duration,
    pending: Vec<Item>,
    /// Bytes held by `pending`.
    bytes: usize,
    /// Set while items are pending: when they go out, full or not.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The body of the pending items' events, when built as they gather.
    body: Option<Body>,
}

impl<S> Batches<S> {
    fn take(&mut self) -> Batch {
        self.bytes = 0;
        self.deadline = None;
        // The next batch's items are reserved whole, so that they are not copied as they
        // come (a copy would hold them twice).
        let room = self.limits.events.min(MAX_RESERVED_ITEMS);
        let mut items = std::mem::replace(&mut self.pending, Vec::with_capacity(room));
        let body = self.body.as_mut().and_then(|b| b.finish(&mut items));
        Batch { items, body }
    }
}

impl<S: Stream<Item = Item> + Unpin> Stream for Batches<S> {
    type Item = Batch;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        let this = &mut *self;
        while let Some(input) = this.input.as_mut() {
            match Pin::new(input).poll_next(cx) {
                Poll::Ready(Some(mut item)) => {
                    if this.pending.is_empty() {
                        this.deadline = Some(Box::pin(tokio::time::sleep(this.flush_interval)));
                    }
                    this.bytes += item.held();
                    if let Some(body) = &mut this.body {
                        body.add(&mut item);
                    }
                    this.pending.push(item);
                    if this.limits.reached(this.pending.len(), this.bytes) {
                        return Poll::Ready(Some(this.take()));
                    }
                }
                Poll::Ready(None) => {
                    this.input = None;
                    if !this.pending.is_empty() {
                        return Poll::Ready(Some(this.take()));
                    }
                }
                Poll::Pending => break,
            }
        }
        if this.input.is_none() {
            return Poll::Ready(None);
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
                if batch.items.len() + front.items.len() <= self.limits.events
                    && bytes(&batch.items) + bytes(&front.items) <= self.limits.bytes =>
            {
                batch.items.append(&mut front.items);
                *front = Batch::of(batch.items);
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
            event,
            ack: Ack {
                input: 0,
                file: 0,
                offset: n,
            },
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
            .items
            .iter()
            .filter_map(Item::event)
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
        for n in 0..4 {
            tx.send(item(n)).await.unwrap();
        }
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
            tx.send(item(n)).await.unwrap();
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
            event: read.slice(at),
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
        for item in [line(0..1, 1), position, line(2..3, 4)] {
            tx.send(item).await.unwrap();
        }
        let batch = out.next().await.unwrap();
        let body = batch.body.clone().expect("a body");
        assert_eq!(&body[..], b"{\"events\":[0,1]}");
        assert_eq!(numbers(&batch), ["0", "1"]);
        let inside = |e: &Bytes| body.as_ptr_range().contains(&e.as_ptr());
        assert!(batch.items.iter().filter_map(Item::event).all(inside));
        assert_eq!(batch.items[1].ack().offset, 3, "positions keep their place");

        // A batch of positions only has no body; the next body is built anew.
        tx.send(line(4..6, 7)).await.unwrap();
        drop(tx);
        let batch = out.next().await.unwrap();
        assert_eq!(&batch.body.unwrap()[..], b"{\"events\":[22]}");
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
        for n in 0..5 {
            tx.send(item(n)).await.unwrap();
        }
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

    mod same_as_tokio_stream {
        use super::*;
        use proptest::prelude::*;

        /// When `input` comes (after a gap of tens of ms, so many items), what the stream
        /// gives and when: (ms since the start, the numbers in the batch).
        type Schedule = Vec<(u64, usize)>;
        type Given = Vec<(u128, Vec<String>)>;

        /// Runs `batch` on paused time over a channel fed along `schedule`.
        fn run<B, S>(schedule: &Schedule, batch: B) -> Given
        where
            B: FnOnce(ReceiverStream<Item>) -> S,
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
                        for _ in 0..count {
                            tx.send(item(n)).await.unwrap();
                            n += 1;
                        }
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
                    chunks_timeout(input, limits, flush, None).map(|b| b.items)
                });
                let theirs = run(&schedule, |input| {
                    tokio_stream::StreamExt::chunks_timeout(input, max_events, flush)
                });
                prop_assert_eq!(ours, theirs);
            }
        }
    }
}
