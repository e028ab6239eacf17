//! Sources read lines and hand them to every sink that reads them.
//!
//! The contract is small: a source gets an [`Output`] and a shutdown token, reads until
//! its input ends or shutdown is asked, and returns. Back-pressure is the [`Budget`]:
//! before a block of lines enters a sink, the source takes from that sink's budget one
//! permit per line and one per byte; the sink gives them back once the lines are delivered
//! or dead-lettered. So a sink that cannot deliver stops its sources instead of growing
//! without bound.
//!
//! One exception, at shutdown: input that cannot be read again (TCP, stdin) no longer
//! waits for the budget. What its shippers already sent is read (see [`pump`]) and held
//! past the cap, so that it reaches the sinks, and their spill, instead of being dropped.

pub(crate) mod connections;
pub mod file;
pub mod lines;
pub mod stdin;
pub mod tcp;

use std::ops::{AddAssign, SubAssign};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, Semaphore, SemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::event::{Block, Line};
use file::checkpoint::AckHandle;
use lines::LineSplitter;

/// One `[sources.NAME]` table, parsed: `type` picks the kind, whose config turns into its
/// spec once, at start-up.
#[derive(Debug)]
pub enum SourceSpec {
    File(file::FileSpec),
    Tcp(tcp::TcpSpec),
    Stdin(stdin::StdinSpec),
}

impl SourceSpec {
    /// Reads the table at `key` (`sources.NAME`); relative paths are relative to `base`.
    pub fn from_table(
        key: &str,
        table: toml::Table,
        base: &std::path::Path,
    ) -> anyhow::Result<Self> {
        use crate::config::{split_type, typed};
        let kinds = "\"file\", \"tcp\" or \"stdin\"";
        let (kind, table) = split_type(key, table, kinds)?;
        Ok(match kind.as_str() {
            "file" => SourceSpec::File(typed::<file::FileConfig>(key, table)?.build(key, base)?),
            "tcp" => SourceSpec::Tcp(typed::<tcp::TcpConfig>(key, table)?.build(key)?),
            "stdin" => SourceSpec::Stdin(typed::<stdin::StdinConfig>(key, table)?.build(key)?),
            other => anyhow::bail!("`{key}.type` = {other:?} is not a source type: use {kinds}"),
        })
    }

    /// One line for `flaghook validate`.
    pub fn describe(&self) -> String {
        match self {
            SourceSpec::File(f) => format!("file, include {:?}", f.include),
            SourceSpec::Tcp(t) => format!("tcp, listening on {}", t.address),
            SourceSpec::Stdin(_) => "stdin".to_owned(),
        }
    }
}

/// The default `max_line_bytes` of every source: longer lines are rejected as bad input.
pub(crate) fn default_max_line_bytes() -> usize {
    102_400
}

/// What lines cost in a sink's [`Budget`]: one per line, and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub events: usize,
    pub bytes: usize,
}

impl Cost {
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
const MAX_REQUEST: usize = u32::MAX as usize;

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

/// One sink's input, as a source sees it: made by [`Subscriptions::subscribe`].
#[derive(Debug, Clone)]
pub struct SinkInput {
    tx: mpsc::Sender<Block>,
    budget: Arc<Budget>,
    /// The sink's largest batch (`max_event_in_memory`).
    max_events: usize,
    /// Stamped on every block sent through it ([`Block::input`]).
    input: usize,
}

/// A sink's side of the wiring: its channel and budget, and the acknowledgement handle of
/// every source it subscribed to, in subscription order. A source reaches the sink only
/// through the [`SinkInput`] a subscription returns, and the blocks it sends carry that
/// subscription's number, so a handle and the lines it acknowledges cannot disagree.
#[derive(Debug)]
pub struct Subscriptions {
    tx: mpsc::Sender<Block>,
    budget: Arc<Budget>,
    max_events: usize,
    acks: Vec<Option<AckHandle>>,
}

impl Subscriptions {
    pub fn new(tx: mpsc::Sender<Block>, budget: Arc<Budget>, max_events: usize) -> Self {
        Subscriptions {
            tx,
            budget,
            max_events,
            acks: Vec::new(),
        }
    }

    /// Subscribes the sink to a source; `ack` is the source's handle for this sink when its
    /// lines are acknowledged (file sources).
    pub fn subscribe(&mut self, ack: Option<AckHandle>) -> SinkInput {
        self.acks.push(ack);
        SinkInput {
            tx: self.tx.clone(),
            budget: self.budget.clone(),
            max_events: self.max_events,
            input: self.acks.len() - 1,
        }
    }

    /// The acknowledgement handles, indexed by [`Block::input`].
    pub fn into_acks(self) -> Vec<Option<AckHandle>> {
        self.acks
    }
}

/// Where a source sends its blocks: every sink that lists it in `inputs`.
#[derive(Debug, Clone)]
pub struct Output {
    sinks: Vec<SinkInput>,
    /// Blocks are cut to this many lines and bytes (one line at least) so that one block
    /// always fits every budget.
    max_block: Cost,
}

/// Every sink is gone; the source should stop.
#[derive(Debug)]
pub struct Closed;

impl Output {
    /// Blocks fit every sink's budget; for a sink that gathers its next batch while one is
    /// in flight (see [`gathers_ahead`]), a block also leaves room for that full batch.
    pub fn new(sinks: Vec<SinkInput>) -> Self {
        let events = sinks
            .iter()
            .map(|s| {
                let cap = s.budget.cap().events;
                if gathers_ahead(cap, s.max_events) {
                    cap - s.max_events
                } else {
                    cap
                }
            })
            .min()
            .unwrap_or(1)
            .clamp(1, 4096);
        let bytes = sinks
            .iter()
            .map(|s| {
                let cap = s.budget.cap().bytes;
                cap - max_batch_bytes(cap)
            })
            .min()
            .unwrap_or(MAX_REQUEST)
            .clamp(1, MAX_REQUEST);
        Output {
            sinks,
            max_block: Cost { events, bytes },
        }
    }

    /// How many of `lines` (one at least) go in the next block.
    fn block_len(&self, lines: &[Line]) -> usize {
        let mut bytes = 0;
        let fit = lines
            .iter()
            .take(self.max_block.events)
            .take_while(|l| {
                bytes += l.bytes.len();
                bytes <= self.max_block.bytes
            })
            .count();
        fit.max(1)
    }

    /// Hands `block` to every sink, in order, waiting for room in each one's budget.
    pub async fn send(&self, block: Block) -> Result<(), Closed> {
        self.send_within(block, None).await
    }

    /// Like [`Output::send`], but once `stop` is cancelled it no longer waits for room:
    /// the lines are held past the budgets' caps. For input that cannot be read again
    /// (TCP, stdin), whose lines would be lost if they were not handed on at shutdown.
    pub async fn send_or_overdraw(
        &self,
        block: Block,
        stop: &CancellationToken,
    ) -> Result<(), Closed> {
        self.send_within(block, Some(stop)).await
    }

    async fn send_within(
        &self,
        mut block: Block,
        stop: Option<&CancellationToken>,
    ) -> Result<(), Closed> {
        while !block.lines.is_empty() {
            let rest = block.lines.split_off(self.block_len(&block.lines));
            let part = Block {
                lines: std::mem::replace(&mut block.lines, rest),
                ..block.clone()
            };
            self.send_part(part, stop).await?;
        }
        Ok(())
    }

    async fn send_part(
        &self,
        block: Block,
        stop: Option<&CancellationToken>,
    ) -> Result<(), Closed> {
        crate::failpoint::hit("source-send");
        let mut delivered_to_one = false;
        let last = self.sinks.len() - 1;
        let mut block = Some(block);
        for (i, sink) in self.sinks.iter().enumerate() {
            let mut part = if i == last {
                block.take().expect("last")
            } else {
                block.clone().expect("set")
            };
            part.input = sink.input;
            let cost = sink.budget.cost(&part.lines);
            let acquired = match stop {
                Some(stop) => sink.budget.acquire_or_overdraw(cost, stop).await,
                None => sink.budget.acquire(cost).await,
            };
            if acquired.is_err() {
                continue;
            }
            match sink.tx.send(part).await {
                Ok(()) => delivered_to_one = true,
                Err(_) => sink.budget.release(cost),
            }
        }
        if delivered_to_one {
            Ok(())
        } else {
            Err(Closed)
        }
    }
}

/// How long a connection (or stdin) may stay silent before the drain at shutdown counts it
/// idle: everything its shipper had sent has then been read.
const DRAIN_IDLE: Duration = Duration::from_millis(150);

/// The longest the drain at shutdown reads, for a shipper that never goes idle. A
/// receive queue holds a few megabytes at most and is read in milliseconds; this bound
/// only stops a shipper that keeps sending from keeping flaghook running (and growing).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

const READ_SIZE: usize = 128 * 1024;

/// Reads `reader` to its end, sending its lines in blocks. Used by the sources whose input
/// cannot be read again (TCP, stdin): nothing carries an acknowledgement.
///
/// At shutdown, what the shipper already sent is still read: it sits in the kernel's
/// buffers, already acknowledged to the shipper, and closing unread would drop it. The
/// drain reads until the input is idle for [`DRAIN_IDLE`], ends, or [`DRAIN_LIMIT`] passes,
/// and its lines no longer wait for the budget (see [`Output::send_or_overdraw`]); the
/// sinks deliver them or spill them with the rest. A block still waiting to go out when
/// shutdown comes goes on while the drain reads, so neither waits for the other.
pub async fn pump<R>(
    mut reader: R,
    max_line_bytes: usize,
    template: Block,
    output: &Output,
    shutdown: &CancellationToken,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
{
    let mut splitter = LineSplitter::new(max_line_bytes, 0);
    loop {
        splitter.buffer().reserve(READ_SIZE);
        let n = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let nothing_pending = async { Ok(()) };
                return drain_and_hand_on(reader, splitter, &template, output, shutdown, nothing_pending).await;
            }
            n = reader.read_buf(splitter.buffer()) => n?,
        };
        let mut lines = Vec::new();
        if n == 0 {
            splitter.finish(&mut lines);
        } else {
            splitter.split(&mut lines);
        }
        let block = Block {
            lines,
            ..template.clone()
        };
        let send = output.send_or_overdraw(block, shutdown);
        tokio::pin!(send);
        let sent = tokio::select! {
            biased;
            sent = &mut send => sent,
            _ = shutdown.cancelled() => {
                return drain_and_hand_on(reader, splitter, &template, output, shutdown, send).await;
            }
        };
        if sent.is_err() || n == 0 {
            return Ok(());
        }
    }
}

/// Shutdown: drains `reader` while `pending` (the block going out, if any) finishes, then
/// hands on the drained lines after it.
async fn drain_and_hand_on<R>(
    mut reader: R,
    mut splitter: LineSplitter,
    template: &Block,
    output: &Output,
    shutdown: &CancellationToken,
    pending: impl std::future::Future<Output = Result<(), Closed>>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
{
    let (sent, (lines, end)) = tokio::join!(pending, drain(&mut reader, &mut splitter));
    let read = lines.len();
    if sent.is_ok() && read > 0 {
        let block = Block {
            lines,
            ..template.clone()
        };
        // The sinks spill what they cannot deliver; a send fails only once they are gone.
        let _ = output.send_or_overdraw(block, shutdown).await;
    }
    let end = end?;
    tracing::debug!(origin = %template.origin, lines = read, ?end, "read at shutdown what was already sent");
    if end == Drained::Limit {
        tracing::warn!(
            origin = %template.origin,
            "not idle after {} of reading at shutdown; what it sends from now on is not read",
            humantime::format_duration(DRAIN_LIMIT)
        );
    }
    Ok(())
}

/// How the drain at shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// The input ended (EOF).
    End,
    /// Nothing came for [`DRAIN_IDLE`].
    Idle,
    /// [`DRAIN_LIMIT`] passed before the input was idle.
    Limit,
}

/// Reads what is left in `reader` (see [`pump`]) into lines. The partial last line, if any,
/// becomes a line, as at the end of input: a shipper's last line without its newline is
/// still a line, and one cut short is dead-lettered as bad input, never silently lost.
/// On a read error, the lines read before it are returned with it.
async fn drain<R>(
    reader: &mut R,
    splitter: &mut LineSplitter,
) -> (Vec<Line>, std::io::Result<Drained>)
where
    R: AsyncRead + Unpin,
{
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut lines = Vec::new();
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Ok(Drained::Limit);
        }
        splitter.buffer().reserve(READ_SIZE);
        match tokio::time::timeout(DRAIN_IDLE.min(left), reader.read_buf(splitter.buffer())).await {
            Ok(Ok(0)) => break Ok(Drained::End),
            Ok(Ok(_)) => splitter.split(&mut lines),
            Ok(Err(e)) => break Err(e),
            Err(_) if left <= DRAIN_IDLE => break Ok(Drained::Limit),
            Err(_) => break Ok(Drained::Idle),
        }
    };
    splitter.finish(&mut lines);
    (lines, end)
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
