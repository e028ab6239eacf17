//! Sources read lines and hand them to every sink that reads them.
//!
//! The contract is small: a source gets an [`Output`] and a shutdown token, reads until
//! its input ends or shutdown is asked, and returns. Back-pressure is the [`Budget`]:
//! before a block of lines enters a sink, the source takes one permit per line from that
//! sink's budget; the sink gives them back once the lines are delivered or dead-lettered.
//! So a sink that cannot deliver stops its sources instead of growing without bound.
//!
//! One exception, at shutdown: input that cannot be read again (TCP, stdin) no longer
//! waits for the budget. What its shippers already sent is read (see [`pump`]) and held
//! past the cap, so that it reaches the sinks, and their spill, instead of being dropped.

pub(crate) mod connections;
pub mod file;
pub mod lines;
pub mod stdin;
pub mod tcp;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::event::{Block, Line};
use file::checkpoint::AckHandle;
use lines::LineSplitter;

/// A cap on the lines a sink holds in memory: read but not yet delivered or dead-lettered,
/// including failed batches waiting for their retry.
///
/// Invariant: free permits + `in_use` = `cap` + `overdraft`, and `overdraft` <= `in_use`:
/// lines held past the cap (at shutdown) are paid back first, so permits never exceed
/// the cap.
#[derive(Debug)]
pub struct Budget {
    permits: Semaphore,
    cap: usize,
    in_use: AtomicUsize,
    /// Lines taken past the cap (see [`Budget::acquire_or_overdraw`]) not yet released.
    overdraft: AtomicUsize,
    peak: AtomicUsize,
}

impl Budget {
    pub fn new(cap: usize) -> Self {
        Budget {
            permits: Semaphore::new(cap),
            cap,
            in_use: AtomicUsize::new(0),
            overdraft: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Waits until `n` (at most the cap) more lines may be held. Fails once the sink
    /// has stopped ([`Budget::close`]), so that no source waits for it forever.
    pub async fn acquire(&self, n: usize) -> Result<(), Closed> {
        debug_assert!(n <= self.cap);
        let permits = self
            .permits
            .acquire_many(n as u32)
            .await
            .map_err(|_| Closed)?;
        permits.forget();
        self.hold(n);
        Ok(())
    }

    /// Like [`Budget::acquire`], but once `stop` is cancelled it no longer waits: the
    /// lines are held past the cap, and the next releases pay them back first.
    pub async fn acquire_or_overdraw(
        &self,
        n: usize,
        stop: &CancellationToken,
    ) -> Result<(), Closed> {
        debug_assert!(n <= self.cap);
        tokio::select! {
            biased;
            permits = self.permits.acquire_many(n as u32) => {
                permits.map_err(|_| Closed)?.forget();
            }
            _ = stop.cancelled() => {
                self.overdraft.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.hold(n);
        Ok(())
    }

    fn hold(&self, n: usize) {
        let now = self.in_use.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// The sink that gives permits back has stopped: waiting sources give up.
    pub fn close(&self) {
        self.permits.close();
    }

    /// `n` lines left memory (delivered, dead-lettered, spilled or dropped).
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.in_use.fetch_sub(n, Ordering::Relaxed);
            let owed = self
                .overdraft
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d - d.min(n)))
                .expect("the closure always returns Some");
            self.permits.add_permits(n - owed.min(n));
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// The most lines ever held at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

/// Whether a sink with a budget of `cap` events and batches of up to `max_events` gathers
/// its next batch while one is in flight: that needs room for two full batches.
pub fn gathers_ahead(cap: usize, max_events: usize) -> bool {
    cap >= 2 * max_events
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
    /// Blocks are cut to this many lines so that one block always fits every budget.
    max_block: usize,
}

/// Every sink is gone; the source should stop.
#[derive(Debug)]
pub struct Closed;

impl Output {
    /// Blocks fit every sink's budget; for a sink that gathers its next batch while one is
    /// in flight (see [`gathers_ahead`]), a block also leaves room for that full batch.
    pub fn new(sinks: Vec<SinkInput>) -> Self {
        let max_block = sinks
            .iter()
            .map(|s| {
                let cap = s.budget.cap();
                if gathers_ahead(cap, s.max_events) {
                    cap - s.max_events
                } else {
                    cap
                }
            })
            .min()
            .unwrap_or(1)
            .clamp(1, 4096);
        Output { sinks, max_block }
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
            let rest = block.lines.split_off(block.lines.len().min(self.max_block));
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
            let n = part.lines.len();
            let acquired = match stop {
                Some(stop) => sink.budget.acquire_or_overdraw(n, stop).await,
                None => sink.budget.acquire(n).await,
            };
            if acquired.is_err() {
                continue;
            }
            match sink.tx.send(part).await {
                Ok(()) => delivered_to_one = true,
                Err(_) => sink.budget.release(n),
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

    #[tokio::test]
    async fn lines_held_past_the_cap_are_paid_back_before_permits_return() {
        let budget = Budget::new(10);
        let stop = CancellationToken::new();
        budget.acquire(8).await.unwrap();
        stop.cancel();
        budget.acquire_or_overdraw(2, &stop).await.unwrap(); // the last 2 permits: no overdraft
        budget.acquire_or_overdraw(5, &stop).await.unwrap(); // none left: 5 past the cap
        assert_eq!(budget.peak(), 15);
        assert_eq!(budget.permits.available_permits(), 0);
        budget.release(4);
        assert_eq!(budget.permits.available_permits(), 0, "4 of the 5 owed");
        budget.release(3);
        assert_eq!(budget.permits.available_permits(), 2);
        budget.release(8);
        assert_eq!(
            budget.permits.available_permits(),
            10,
            "never above the cap"
        );
        assert_eq!(budget.in_use.load(Ordering::Relaxed), 0);
    }
}
