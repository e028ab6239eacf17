//! The memory budget between a sink and its sources: lines held, in events and bytes.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

use super::Closed;
use crate::event::Line;

/// What lines cost in a sink's [`Budget`]: one per line, and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub events: usize,
    pub bytes: usize,
}

impl Cost {
    /// What `items` hold in a budget: one event permit each, and their bytes.
    pub fn of(items: &[crate::event::Item]) -> Cost {
        Cost {
            events: items.len(),
            bytes: items.iter().map(crate::event::Item::held).sum(),
        }
    }
}

/// A cap on what a sink holds in memory: lines read but not yet delivered or dead-lettered,
/// including failed batches waiting for their retry. It counts events and bytes (each
/// line's length); whichever cap is reached first stops the sources.
///
/// A line longer than the whole byte cap costs the cap (see [`Budget::line_bytes`]): it
/// still passes, alone.
#[derive(Debug)]
pub struct Budget {
    events: Pool,
    bytes: Pool,
}

/// One count of a [`Budget`]. Invariant: free permits + `in_use` = `cap`.
#[derive(Debug)]
struct Pool {
    permits: Semaphore,
    cap: usize,
    in_use: AtomicUsize,
    peak: AtomicUsize,
}

/// The most a single request may take: tokio's `acquire_many` counts in `u32`.
pub(super) const MAX_REQUEST: usize = u32::MAX as usize;

impl Pool {
    fn new(cap: usize) -> Self {
        let cap = cap.min(Semaphore::MAX_PERMITS);
        Pool {
            permits: Semaphore::new(cap),
            cap,
            in_use: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Waits for `n` permits (at most the cap and [`MAX_REQUEST`]); they return to the pool
    /// if the wait is abandoned.
    async fn acquire(&self, n: usize) -> Result<SemaphorePermit<'_>, Closed> {
        debug_assert!(n <= self.cap && n <= MAX_REQUEST);
        self.permits
            .acquire_many(n as u32)
            .await
            .map_err(|_| Closed)
    }

    fn hold(&self, n: usize) {
        let now = self.in_use.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// `n` left memory: their permits go back.
    fn release(&self, n: usize) {
        self.in_use.fetch_sub(n, Ordering::Relaxed);
        self.permits.add_permits(n);
    }
}

impl Budget {
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Budget {
            events: Pool::new(max_events),
            bytes: Pool::new(max_bytes),
        }
    }

    /// What a line of `len` bytes costs in bytes: its length, but at most the cap.
    pub fn line_bytes(&self, len: usize) -> usize {
        len.min(self.bytes.cap).min(MAX_REQUEST)
    }

    /// What `lines` cost.
    pub fn cost(&self, lines: &[Line]) -> Cost {
        Cost {
            events: lines.len(),
            bytes: lines.iter().map(|l| self.line_bytes(l.bytes.len())).sum(),
        }
    }

    /// Waits until `cost` (within the caps) more may be held. Fails once the sink has
    /// stopped ([`Budget::close`]), so that no source waits for it forever.
    pub async fn acquire(&self, cost: Cost) -> Result<(), Closed> {
        let events = self.events.acquire(cost.events).await?;
        let bytes = self.bytes.acquire(cost.bytes).await?;
        events.forget();
        bytes.forget();
        self.hold(cost);
        Ok(())
    }

    fn hold(&self, cost: Cost) {
        self.events.hold(cost.events);
        self.bytes.hold(cost.bytes);
    }

    /// The sink that gives permits back has stopped: waiting sources give up.
    pub fn close(&self) {
        self.events.permits.close();
        self.bytes.permits.close();
    }

    /// `cost` left memory (delivered, dead-lettered, or left for the next run).
    pub fn release(&self, cost: Cost) {
        self.events.release(cost.events);
        self.bytes.release(cost.bytes);
    }

    pub fn cap(&self) -> Cost {
        Cost {
            events: self.events.cap,
            bytes: self.bytes.cap,
        }
    }

    /// The events and bytes held now.
    pub fn held(&self) -> Cost {
        Cost {
            events: self.events.in_use.load(Ordering::Relaxed),
            bytes: self.bytes.in_use.load(Ordering::Relaxed),
        }
    }

    /// The most events, and the most bytes, ever held at once (not always at the same time).
    pub fn peak(&self) -> Cost {
        Cost {
            events: self.events.peak.load(Ordering::Relaxed),
            bytes: self.bytes.peak.load(Ordering::Relaxed),
        }
    }
}

/// Whether a sink with a budget of `cap` events and batches of up to `max_events` gathers
/// its next batch while one is in flight: that needs room for two full batches.
pub fn gathers_ahead(cap: usize, max_events: usize) -> bool {
    cap >= 2 * max_events
}

/// A batch goes out once its lines reach this many bytes of a budget of `cap_bytes`
/// (or `max_event_in_memory` events): half of it, so that the next batch can gather while
/// one is in flight, however large the events are.
pub fn max_batch_bytes(cap_bytes: usize) -> usize {
    (cap_bytes / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::LineKind;

    fn cost(events: usize, bytes: usize) -> Cost {
        Cost { events, bytes }
    }

    fn free(budget: &Budget) -> Cost {
        cost(
            budget.events.permits.available_permits(),
            budget.bytes.permits.available_permits(),
        )
    }

    #[tokio::test]
    async fn the_byte_cap_stops_a_source_before_the_event_cap() {
        let budget = Budget::new(100, 1000);
        budget.acquire(cost(1, 600)).await.unwrap();
        let second = budget.acquire(cost(1, 600));
        tokio::pin!(second);
        assert!(futures::poll!(second.as_mut()).is_pending());
        budget.release(cost(1, 600));
        assert!(futures::poll!(second.as_mut()).is_ready());
        assert_eq!(budget.peak(), cost(1, 600));
    }

    #[tokio::test]
    async fn a_line_larger_than_the_byte_cap_still_passes_alone() {
        let budget = Budget::new(10, 100);
        let line = Line {
            bytes: bytes::Bytes::from(vec![b'x'; 1000]).into(),
            kind: LineKind::Text {
                number: 1,
                end: 1001,
            },
        };
        let big = budget.cost(&[line]);
        assert_eq!(big, cost(1, 100));
        budget.acquire(big).await.unwrap();
        assert_eq!(free(&budget), cost(9, 0), "nothing else fits beside it");
    }
}
