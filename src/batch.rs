//! The batching stage: chunks by size and time over a sink's decoded input, with a retry
//! lane.
//!
//! A batch goes out when `max_event_in_memory` items are pending, when their lines reach
//! `max_bytes` (half the sink's byte budget, see [`crate::source::max_batch_bytes`]), or
//! when `flush_interval` has passed since the first pending one, whichever comes first:
//! `tokio_stream::StreamExt::chunks_timeout`, with the bytes counted too. Without the byte
//! trigger, large events would fill the byte budget before a batch filled, and every batch
//! would wait for `flush_interval`. A failed batch is put back on the [`RetryLane`], which
//! the stream drains before taking newer input, so order is kept: no event goes out after
//! one that entered later.
//!
//! The lane is filled only while the sink is not polling the batcher (between two
//! batches), or while the batcher waits for input that cannot come before the sink acts
//! (events loaded from the spill file, see `sink::delivery`), so no waker is needed.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::time::Sleep;

use crate::event::Item;

/// Failed items waiting to go out again, oldest first.
#[derive(Debug, Clone, Default)]
pub struct RetryLane(Arc<Lane>);

#[derive(Debug, Default)]
struct Lane {
    items: Mutex<VecDeque<Item>>,
    /// `items.len()`, readable without the lock: the batcher asks for every item.
    len: AtomicUsize,
}

impl RetryLane {
    /// Puts a failed batch back in front of everything still waiting.
    pub fn push_front(&self, batch: Vec<Item>) {
        let mut items = self.0.items.lock().expect("retry lane lock");
        for item in batch.into_iter().rev() {
            items.push_front(item);
        }
        self.0.len.store(items.len(), Ordering::Release);
    }

    /// Puts items after everything waiting (events loaded from the spill file).
    pub fn push_back(&self, items: Vec<Item>) {
        let mut queue = self.0.items.lock().expect("retry lane lock");
        queue.extend(items);
        self.0.len.store(queue.len(), Ordering::Release);
    }

    /// Takes a batch (one item at least), oldest first.
    pub fn take(&self, limits: Limits) -> Vec<Item> {
        let mut items = self.0.items.lock().expect("retry lane lock");
        let mut bytes = 0;
        let n = items
            .iter()
            .take(limits.events)
            .position(|i| {
                bytes += i.held;
                bytes >= limits.bytes
            })
            .map_or(items.len().min(limits.events), |last| last + 1);
        let taken = items.drain(..n).collect();
        self.0.len.store(items.len(), Ordering::Release);
        taken
    }

    pub fn len(&self) -> usize {
        self.0.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pop(&self) -> Option<Item> {
        if self.is_empty() {
            return None;
        }
        let mut items = self.0.items.lock().expect("retry lane lock");
        let item = items.pop_front();
        self.0.len.store(items.len(), Ordering::Release);
        item
    }
}

/// Items from the retry lane first, then from the input.
struct RetriesFirst<S> {
    lane: RetryLane,
    input: S,
}

impl<S: Stream<Item = Item> + Unpin> Stream for RetriesFirst<S> {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if let Some(item) = self.lane.pop() {
            return Poll::Ready(Some(item));
        }
        Pin::new(&mut self.input).poll_next(cx)
    }
}

/// Batches `input` (after the retry lane) by size and time. The stream ends when the input
/// ends; what is still on the lane then is for the caller to drain.
pub fn batches<S>(
    input: S,
    lane: RetryLane,
    limits: Limits,
    flush_interval: Duration,
) -> impl Stream<Item = Vec<Item>>
where
    S: Stream<Item = Item> + Unpin,
{
    Batches {
        input: Some(RetriesFirst { lane, input }),
        limits,
        flush_interval,
        pending: Vec::new(),
        bytes: 0,
        deadline: None,
    }
}

/// When a batch is full.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Items (`max_event_in_memory`).
    pub events: usize,
    /// Bytes held by the items ([`Item::held`]).
    pub bytes: usize,
}

/// `chunks_timeout`, counting bytes too.
struct Batches<S> {
    /// None once the input ended.
    input: Option<RetriesFirst<S>>,
    limits: Limits,
    flush_interval: Duration,
    pending: Vec<Item>,
    /// Bytes held by `pending`.
    bytes: usize,
    /// Set while items are pending: when they go out, full or not.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> Batches<S> {
    fn take(&mut self) -> Vec<Item> {
        self.bytes = 0;
        self.deadline = None;
        std::mem::take(&mut self.pending)
    }
}

impl<S: Stream<Item = Item> + Unpin> Stream for Batches<S> {
    type Item = Vec<Item>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<Item>>> {
        let this = &mut *self;
        while let Some(input) = this.input.as_mut() {
            match Pin::new(input).poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    if this.pending.is_empty() {
                        this.deadline = Some(Box::pin(tokio::time::sleep(this.flush_interval)));
                    }
                    this.bytes += item.held;
                    this.pending.push(item);
                    if this.pending.len() >= this.limits.events || this.bytes >= this.limits.bytes {
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

    /// The lower bound counts the pending batch, as `chunks_timeout`'s does: the sink asks
    /// it whether items are waiting (see `sink::delivery::send_batches`).
    fn size_hint(&self) -> (usize, Option<usize>) {
        let pending = usize::from(!self.pending.is_empty());
        let (lower, upper) = self
            .input
            .as_ref()
            .map_or((0, Some(0)), |i| i.input.size_hint());
        (
            (lower / self.limits.events).saturating_add(pending),
            upper.and_then(|u| u.checked_add(pending)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio_stream::StreamExt;

    fn item(n: u64) -> Item {
        let event = Bytes::from(n.to_string());
        Item {
            held: event.len(),
            event: Some(event),
            ack: None,
        }
    }

    fn events(n: usize) -> Limits {
        Limits {
            events: n,
            bytes: usize::MAX,
        }
    }

    fn numbers(batch: &[Item]) -> Vec<String> {
        batch
            .iter()
            .map(|i| String::from_utf8(i.event.clone().unwrap().to_vec()).unwrap())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn size_then_interval_trigger() {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut out = Box::pin(batches(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            RetryLane::default(),
            events(3),
            Duration::from_secs(60),
        ));
        for n in 0..4 {
            tx.send(item(n)).await.unwrap();
        }
        assert_eq!(numbers(&out.next().await.unwrap()), ["0", "1", "2"]);
        let start = tokio::time::Instant::now();
        assert_eq!(numbers(&out.next().await.unwrap()), ["3"]);
        assert!(start.elapsed() >= Duration::from_secs(60));
    }

    /// The sink relies on this to know whether the batcher holds newer items when a batch
    /// fails (see `sink::delivery::send_batches`).
    #[tokio::test(start_paused = true)]
    async fn size_hint_tells_whether_items_are_pending() {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let out = batches(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            RetryLane::default(),
            events(3),
            Duration::from_secs(1),
        );
        let mut out = Box::pin(out);
        assert_eq!(out.size_hint().0, 0);
        tx.send(item(0)).await.unwrap();
        let poll = futures::poll!(std::pin::pin!(out.next()));
        assert!(poll.is_pending(), "one item of three, before the interval");
        assert_eq!(
            out.size_hint().0,
            1,
            "a pending item shows in the lower bound"
        );
        assert_eq!(numbers(&out.next().await.unwrap()), ["0"]);
        assert_eq!(out.size_hint().0, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_goes_out_once_its_bytes_reach_the_limit() {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut out = Box::pin(batches(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            RetryLane::default(),
            Limits {
                events: 100,
                bytes: 5,
            },
            Duration::from_secs(60),
        ));
        for n in [1, 22, 333, 4] {
            tx.send(item(n)).await.unwrap();
        }
        let start = tokio::time::Instant::now();
        assert_eq!(numbers(&out.next().await.unwrap()), ["1", "22", "333"]);
        assert_eq!(start.elapsed(), Duration::ZERO, "not held for the interval");
        assert_eq!(numbers(&out.next().await.unwrap()), ["4"]);
        assert!(start.elapsed() >= Duration::from_secs(60));
    }

    #[test]
    fn the_lane_gives_batches_within_the_limits() {
        let lane = RetryLane::default();
        lane.push_back([1, 22, 4444, 5, 6, 7].map(item).to_vec());
        let limits = Limits {
            events: 2,
            bytes: 3,
        };
        assert_eq!(numbers(&lane.take(limits)), ["1", "22"], "3 bytes");
        assert_eq!(numbers(&lane.take(limits)), ["4444"], "one at least");
        assert_eq!(numbers(&lane.take(limits)), ["5", "6"], "2 events");
        assert_eq!(numbers(&lane.take(limits)), ["7"]);
        assert!(lane.take(limits).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn retried_items_go_out_before_newer_ones() {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let lane = RetryLane::default();
        let mut out = Box::pin(batches(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            lane.clone(),
            events(2),
            Duration::from_secs(1),
        ));
        for n in 0..4 {
            tx.send(item(n)).await.unwrap();
        }
        let failed = out.next().await.unwrap();
        assert_eq!(numbers(&failed), ["0", "1"]);
        lane.push_front(failed);
        assert_eq!(numbers(&out.next().await.unwrap()), ["0", "1"]);
        assert_eq!(numbers(&out.next().await.unwrap()), ["2", "3"]);
    }
}
