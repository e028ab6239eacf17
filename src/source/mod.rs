//! Sources read lines and hand them to every sink that reads them.
//!
//! The contract is small: a source gets an [`Output`] and a shutdown token, reads until
//! its input ends or shutdown is asked, and returns. Back-pressure is the [`Budget`]:
//! before a block of lines enters a sink, the source takes one permit per line from that
//! sink's budget; the sink gives them back once the lines are delivered or dead-lettered.
//! So a sink that cannot deliver stops its sources instead of growing without bound.

pub mod file;
pub mod lines;
pub mod stdin;
pub mod tcp;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use crate::event::Block;
use file::checkpoint::AckHandle;

/// A cap on the lines a sink holds in memory: read but not yet delivered or dead-lettered,
/// including failed batches waiting for their retry.
#[derive(Debug)]
pub struct Budget {
    permits: Semaphore,
    cap: usize,
    in_use: AtomicUsize,
    peak: AtomicUsize,
}

impl Budget {
    pub fn new(cap: usize) -> Self {
        Budget {
            permits: Semaphore::new(cap),
            cap,
            in_use: AtomicUsize::new(0),
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
        let now = self.in_use.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Ok(())
    }

    /// The sink that gives permits back has stopped: waiting sources give up.
    pub fn close(&self) {
        self.permits.close();
    }

    /// `n` lines left memory (delivered, dead-lettered, spilled or dropped).
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.in_use.fetch_sub(n, Ordering::Relaxed);
            self.permits.add_permits(n);
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
    pub async fn send(&self, mut block: Block) -> Result<(), Closed> {
        while !block.lines.is_empty() {
            let rest = block.lines.split_off(block.lines.len().min(self.max_block));
            let part = Block {
                lines: std::mem::replace(&mut block.lines, rest),
                ..block.clone()
            };
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn send_part(&self, block: Block) -> Result<(), Closed> {
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
            if sink.budget.acquire(n).await.is_err() {
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

/// Reads `reader` to its end (or until shutdown), sending its lines in blocks. Used by the
/// sources whose input cannot be re-read (TCP, stdin): nothing carries an acknowledgement.
pub async fn pump<R>(
    mut reader: R,
    max_line_bytes: usize,
    template: Block,
    output: &Output,
    shutdown: &tokio_util::sync::CancellationToken,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    const READ_SIZE: usize = 128 * 1024;
    let mut splitter = lines::LineSplitter::new(max_line_bytes, 0);
    loop {
        splitter.buffer().reserve(READ_SIZE);
        let n = tokio::select! {
            biased;
            _ = shutdown.cancelled() => 0,
            n = reader.read_buf(splitter.buffer()) => n?,
        };
        let mut lines = Vec::new();
        if n == 0 {
            splitter.finish(&mut lines);
        } else {
            splitter.split(&mut lines);
        }
        if !lines.is_empty()
            && output
                .send(Block {
                    lines,
                    ..template.clone()
                })
                .await
                .is_err()
        {
            return Ok(());
        }
        if n == 0 {
            return Ok(());
        }
    }
}
