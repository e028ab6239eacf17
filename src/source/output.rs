//! How a source reaches the sinks that read it: [`Subscriptions`] on the sink's side,
//! [`Output`] on the source's.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::budget::MAX_REQUEST;
use super::file::checkpoint::AckHandle;
use super::nats::NatsAckHandle;
use super::{gathers_ahead, max_batch_bytes, Budget, Cost};
use crate::event::{Block, Line};
use crate::telemetry::SourceCounters;

/// Whom a sink tells that it delivered (or dead-lettered) a source's lines, for sources
/// that keep them until then: a file source's checkpoints, or a nats source's JetStream
/// messages.
#[derive(Debug, Clone)]
pub enum SourceAck {
    File(AckHandle),
    Nats(NatsAckHandle),
}

impl SourceAck {
    /// Everything of `file` (a tailed file, a JetStream message) before `offset` was
    /// delivered or dead-lettered by this sink. Returns whether a checkpoint moved, to be
    /// saved.
    pub(crate) fn ack(&self, file: u64, offset: u64) -> bool {
        match self {
            SourceAck::File(handle) => {
                handle.ack(file, offset);
                true
            }
            SourceAck::Nats(handle) => {
                handle.ack(file, offset);
                false
            }
        }
    }
}

impl From<AckHandle> for SourceAck {
    fn from(handle: AckHandle) -> Self {
        SourceAck::File(handle)
    }
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
/// every source it subscribed to, in subscription order (every source has one: its lines
/// are in files or in its journal until acknowledged). A source reaches the sink only
/// through the [`SinkInput`] a subscription returns, and the blocks it sends carry that
/// subscription's number, so a handle and the lines it acknowledges cannot disagree.
#[derive(Debug)]
pub struct Subscriptions {
    tx: mpsc::Sender<Block>,
    budget: Arc<Budget>,
    max_events: usize,
    acks: Vec<SourceAck>,
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

    /// Subscribes the sink to a source; `ack` is the source's handle for this sink.
    pub fn subscribe(&mut self, ack: SourceAck) -> SinkInput {
        self.acks.push(ack);
        SinkInput {
            tx: self.tx.clone(),
            budget: self.budget.clone(),
            max_events: self.max_events,
            input: self.acks.len() - 1,
        }
    }

    /// The acknowledgement handles, indexed by [`Block::input`].
    pub fn into_acks(self) -> Vec<SourceAck> {
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
    /// The source's counters: lines read, counted per block.
    counters: Arc<SourceCounters>,
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
            counters: SourceCounters::detached(),
        }
    }

    /// Counts the lines sent into `counters`.
    pub(crate) fn counting(mut self, counters: Arc<SourceCounters>) -> Self {
        self.counters = counters;
        self
    }

    /// The largest events cap and the smallest bytes cap of the sinks' budgets.
    pub(crate) fn budget_caps(&self) -> (usize, usize) {
        let caps = self.sinks.iter().map(|s| s.budget.cap());
        let events = caps.clone().map(|c| c.events).max().unwrap_or(0);
        let bytes = caps.map(|c| c.bytes).min().unwrap_or(0);
        (events, bytes)
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
    pub async fn send(&self, mut block: Block) -> Result<(), Closed> {
        if block.lines.is_empty() {
            return Ok(());
        }
        self.counters.read(block.lines.len());
        if self.block_len(&block.lines) >= block.lines.len() {
            return self.send_part(block).await;
        }
        // Cut in parts: the header is cloned without the lines, each line moved once.
        let mut rest = std::mem::take(&mut block.lines);
        while !rest.is_empty() {
            let tail = rest.split_off(self.block_len(&rest));
            let part = Block {
                lines: std::mem::replace(&mut rest, tail),
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
            let cost = sink.budget.cost(&part.lines);
            if sink.budget.acquire(cost).await.is_err() {
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
