//! The memory budget between a sink and its sources: lines held, in events and bytes.

use std::ops::{AddAssign, SubAssign};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

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

    /// Whether `self` has room for `other` in both counts.
    pub fn covers(&self, other: Cost) -> bool {
        self.events >= other.events && self.bytes >= other.bytes
    }
}

impl AddAssign for Cost {
    fn add_assign(&mut self, other: Cost) {
        self.events += other.events;
        self.bytes += other.bytes;
    }
}

impl SubAssign for Cost {
    fn sub_assign(&mut self, other: Cost) {
        self.events -= other.events;
        self.bytes -= other.bytes;
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

/// One count of a [`Budget`].
///
/// Invariant: free permits + `in_use` + reserved = `cap` + `overdraft`, and `overdraft` <=
/// `in_use` + reserved: what is held past the cap (at shutdown) is paid back first, so
/// permits never exceed the cap. Reserved permits (see [`Budget::reserve_free`]) are taken
/// but hold nothing yet.
#[derive(Debug)]
struct Pool {
    permits: Semaphore,
    cap: usize,
    in_use: AtomicUsize,
    /// Taken past the cap (see [`Budget::acquire_or_overdraw`]) and not yet released.
    overdraft: AtomicUsize,
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
            overdraft: AtomicUsize::new(0),
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

    /// Takes `n` permits, past the cap when they are not free.
    fn take_or_overdraw(&self, n: usize) {
        match self.permits.try_acquire_many(n as u32) {
            Ok(permits) => permits.forget(),
            Err(_) => {
                self.overdraft.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn hold(&self, n: usize) {
        let now = self.in_use.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn unhold(&self, n: usize) {
        self.in_use.fetch_sub(n, Ordering::Relaxed);
    }

    /// Returns `n` permits taken (held or reserved), paying back any overdraft first.
    fn give_back(&self, n: usize) {
        if n > 0 {
            let owed = self
                .overdraft
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d - d.min(n)))
                .expect("the closure always returns Some");
            self.permits.add_permits(n - owed.min(n));
        }
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

    /// Like [`Budget::acquire`], but once `stop` is cancelled it no longer waits: what is
    /// not free is held past the cap, and the next releases pay it back first.
    pub async fn acquire_or_overdraw(
        &self,
        cost: Cost,
        stop: &CancellationToken,
    ) -> Result<(), Closed> {
        tokio::select! {
            biased;
            acquired = self.acquire(cost) => return acquired,
            _ = stop.cancelled() => {
                self.events.take_or_overdraw(cost.events);
                self.bytes.take_or_overdraw(cost.bytes);
            }
        }
        self.hold(cost);
        Ok(())
    }

    /// Takes every free permit without holding anything yet: for the sink's own use (its
    /// spill file, see `sink::spill`), before any source may take them.
    pub fn reserve_free(&self) -> Cost {
        Cost {
            events: self.events.permits.forget_permits(usize::MAX),
            bytes: self.bytes.permits.forget_permits(usize::MAX),
        }
    }

    /// `cost`, taken with [`Budget::reserve_free`], now holds lines.
    pub fn hold(&self, cost: Cost) {
        self.events.hold(cost.events);
        self.bytes.hold(cost.bytes);
    }

    /// `cost` left memory but stays reserved (see [`Budget::reserve_free`]).
    pub fn unhold(&self, cost: Cost) {
        self.events.unhold(cost.events);
        self.bytes.unhold(cost.bytes);
    }

    /// Returns reserved permits.
    pub fn give_back(&self, cost: Cost) {
        self.events.give_back(cost.events);
        self.bytes.give_back(cost.bytes);
    }

    /// The sink that gives permits back has stopped: waiting sources give up.
    pub fn close(&self) {
        self.events.permits.close();
        self.bytes.permits.close();
    }

    /// `cost` left memory (delivered, dead-lettered, spilled or dropped).
    pub fn release(&self, cost: Cost) {
        self.unhold(cost);
        self.give_back(cost);
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
    async fn lines_held_past_the_cap_are_paid_back_before_permits_return() {
        let budget = Budget::new(10, 1000);
        let stop = CancellationToken::new();
        budget.acquire(cost(8, 800)).await.unwrap();
        stop.cancel();
        // The last 2 events and 200 bytes: no overdraft.
        budget
            .acquire_or_overdraw(cost(2, 200), &stop)
            .await
            .unwrap();
        // None left: 5 events and 500 bytes past the cap.
        budget
            .acquire_or_overdraw(cost(5, 500), &stop)
            .await
            .unwrap();
        assert_eq!(budget.peak(), cost(15, 1500));
        assert_eq!(free(&budget), cost(0, 0));
        budget.release(cost(4, 400));
        assert_eq!(free(&budget), cost(0, 0), "4 of the 5 owed");
        budget.release(cost(3, 300));
        assert_eq!(free(&budget), cost(2, 200));
        budget.release(cost(8, 800));
        assert_eq!(free(&budget), cost(10, 1000), "never above the cap");
        assert_eq!(budget.events.in_use.load(Ordering::Relaxed), 0);
        assert_eq!(budget.bytes.in_use.load(Ordering::Relaxed), 0);
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
            bytes: bytes::Bytes::from(vec![b'x'; 1000]),
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

    #[tokio::test]
    async fn reserved_permits_count_as_held_only_while_they_hold_lines() {
        let budget = Budget::new(10, 1000);
        budget.acquire(cost(2, 200)).await.unwrap();
        let reserved = budget.reserve_free();
        assert_eq!(reserved, cost(8, 800));
        assert_eq!(free(&budget), cost(0, 0));
        budget.hold(cost(3, 300));
        budget.unhold(cost(3, 300));
        assert_eq!(budget.peak(), cost(5, 500));
        budget.give_back(reserved);
        budget.release(cost(2, 200));
        assert_eq!(free(&budget), cost(10, 1000));
        assert_eq!(budget.events.in_use.load(Ordering::Relaxed), 0);
    }
}
