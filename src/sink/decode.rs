//! A sink's decode stage: the sources' blocks become [`Item`]s, in a task of its own so
//! that decoding runs beside posting. Bad lines are counted, logged and dead-lettered
//! here.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::deadletter::{DeadLetterWriter, Record};
use super::retry::Grace;
use super::{count_events, Stats};
use crate::event::{
    self, Ack, Block, Decoded, Decoder, FromLine, Invalid, Item, Items, LineKind, Piece,
};
use crate::source::{Budget, Cost};
use crate::telemetry::{RejectClass, SkipClass};

/// Starts decoding `input`; returns the items, in order and by block, and the task.
pub(crate) fn spawn(
    d: Decode,
    input: mpsc::Receiver<Block>,
) -> (impl Stream<Item = Items> + Unpin, JoinHandle<()>) {
    // Decoded blocks waiting for the batcher: as with the blocks waiting for this task
    // (see `crate::topology`), a couple keep it busy, and more only hold memory.
    let (tx, rx) = mpsc::channel(2);
    let task = tokio::spawn(decode_blocks(d, input, tx));
    (ReceiverStream::new(rx), task)
}

/// What the decode task needs besides its input and output.
pub(crate) struct Decode {
    pub(crate) name: String,
    pub(crate) decoder: Decoder,
    pub(crate) budget: Arc<Budget>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) writer: DeadLetterWriter,
    pub(crate) grace: Grace,
}

/// Decodes blocks into items; bad lines are counted, logged and dead-lettered here.
///
/// A block's dead letters are on the disk before its items go on, so that no position
/// past a bad line is acknowledged before its dead letter is written. While they cannot
/// be written, the block waits (holding its budget). When the write is given up, the
/// block's lines from the first bad one on, and every later line of that file, are left
/// in the file for the next run.
async fn decode_blocks(
    mut d: Decode,
    mut input: mpsc::Receiver<Block>,
    output: mpsc::Sender<Items>,
) {
    let mut log = BadLineLog::new();
    let mut left_in_files: HashSet<(usize, u64)> = HashSet::new();
    let mut unreported_before = false;
    while let Some(mut block) = input.recv().await {
        let file = block.file.map(|f| (block.input, f));
        let left_in_file = file.is_some_and(|f| left_in_files.contains(&f));
        let mut classes = BadLines::default();
        let (mut items, records, first_bad) =
            decode_block(&mut d, &mut block, &mut log, left_in_file, &mut classes);
        let bad = records.len() as u64;
        // Items from `keep` on are left in their file; `bad` of them are bad lines.
        let keep = if left_in_file {
            0
        } else if records.is_empty() || d.writer.write(records, &mut d.grace).await {
            classes.count(&d.stats);
            items.len()
        } else if let (Some(file), Some(at)) = (file, first_bad) {
            left_in_files.insert(file);
            tracing::warn!(sink = %d.name, file = %block.origin, "the dead letters of bad lines were not written: from the first of them on, the file's lines stay in it for the next run");
            at
        } else {
            // A place that could not be read (no file to leave lines in): it is found and
            // reported again at the next start.
            d.stats.not_delivered(bad);
            if !std::mem::replace(&mut unreported_before, true) {
                tracing::error!(sink = %d.name, origin = %block.origin, "the dead letter of an unreadable path was not written; it is reported again at the next start (later ones are counted in events_not_delivered)");
            }
            items.len()
        };
        if keep < items.len() {
            let left = items.split_off(keep);
            let events = count_events(&left) as u64;
            d.stats.not_delivered(events + bad);
            d.budget.release(Cost::of(&left));
        }
        // The events that are their lines as they are lie in the block's buffer: it goes
        // with them, once for the block; when none does (envelopes, `schema = "any"`: each
        // event encoded anew), it is let go here.
        let in_block = |i: &Item| matches!(i.event(), Some(Piece::InBlock { .. }));
        let buffer = match items.iter().any(in_block) {
            true => std::mem::take(&mut block.buffer),
            false => Bytes::new(),
        };
        if !items.is_empty() && output.send(Items { buffer, items }).await.is_err() {
            return;
        }
    }
}

/// A block's items, the dead letters of its bad lines, and the index in the items of the
/// first bad line from a file. Lines that become no item leave the budget here. The
/// block's lines are taken: a line that is its own event becomes the item's, a range of
/// the block's buffer when the line is.
fn decode_block(
    d: &mut Decode,
    block: &mut Block,
    log: &mut BadLineLog,
    quiet: bool,
    classes: &mut BadLines,
) -> (Vec<Item>, Vec<Record>, Option<usize>) {
    let lines = std::mem::take(&mut block.lines);
    let mut items = Vec::with_capacity(lines.len());
    let mut records = Vec::new();
    let mut first_bad = None;
    let (mut blank, mut filtered) = (0, 0);
    for line in lines {
        let ack = block.file.zip(line.end()).map(|(file, offset)| Ack {
            input: block.input,
            file,
            offset,
        });
        let text = line.bytes.of(&block.buffer);
        let bytes = d.budget.line_bytes(text.len());
        let decoded = match &line.kind {
            LineKind::Text { .. } => d.decoder.decode_line(text, &block.envelope),
            LineKind::Oversized { len, .. } => Err(event::explain(
                text,
                Invalid(format!("line of {len} bytes is longer than max_line_bytes")),
            )),
            LineKind::Torn { .. } => Err(Invalid(TORN.to_owned())),
            LineKind::Unreadable { reason } | LineKind::Bad { reason, .. } => {
                Err(Invalid(reason.clone()))
            }
        };
        let event = match decoded {
            Ok(FromLine::Itself(len)) => Some(line.bytes.truncated(len)),
            Ok(FromLine::Decoded(Decoded::Event(event))) => Some(Piece::Own(event)),
            Ok(FromLine::Decoded(Decoded::Filtered)) => {
                filtered += 1;
                None
            }
            Ok(FromLine::Decoded(Decoded::Empty)) => {
                blank += 1;
                None
            }
            Err(invalid) => {
                classes.add(&line.kind);
                let location = location(block, &line.kind);
                if !quiet {
                    log.log(&d.name, &location, &invalid.0);
                }
                let mut record = Record::new(&d.name, invalid.0, text);
                record.source = Some(block.source_name.to_string());
                record.location = Some(location);
                match line.kind {
                    LineKind::Oversized { len, .. } => record.truncated_from_bytes = Some(len),
                    LineKind::Bad { len, .. } if len > text.len() as u64 => {
                        record.truncated_from_bytes = Some(len)
                    }
                    _ => {}
                }
                records.push(record);
                if ack.is_some() {
                    first_bad.get_or_insert(items.len());
                }
                None
            }
        };
        // A line without an event holds no bytes; with an acknowledgement to make, it
        // still holds its place (and its event permit) in line.
        match (event, ack) {
            (Some(event), Some(ack)) => items.push(Item::Event {
                event,
                ack,
                held: bytes,
            }),
            (None, Some(ack)) => {
                items.push(Item::Position(ack));
                d.budget.release(Cost { events: 0, bytes });
            }
            // Only a place that could not be read has no position, and it is no event.
            (_, None) => d.budget.release(Cost { events: 1, bytes }),
        }
    }
    d.stats.skipped(SkipClass::Blank, blank);
    d.stats.skipped(SkipClass::Filtered, filtered);
    (items, records, first_bad)
}

/// A block's bad lines by reason class, counted once their dead letters are written.
#[derive(Default)]
struct BadLines {
    invalid: u64,
    oversized: u64,
    unreadable: u64,
}

impl BadLines {
    fn add(&mut self, kind: &LineKind) {
        match kind {
            // A torn line is no event either: a crash cut it short; nor is a record that
            // JSON cannot hold.
            LineKind::Text { .. } | LineKind::Torn { .. } | LineKind::Bad { .. } => {
                self.invalid += 1
            }
            LineKind::Oversized { .. } => self.oversized += 1,
            LineKind::Unreadable { .. } => self.unreadable += 1,
        }
    }

    fn count(&self, stats: &Stats) {
        for (class, n) in [
            (RejectClass::Invalid, self.invalid),
            (RejectClass::Oversized, self.oversized),
            (RejectClass::Unreadable, self.unreadable),
        ] {
            if n > 0 {
                stats.rejected(class, n);
            }
        }
    }
}

/// Logs bad lines without flooding: the first few of every minute, then a count.
struct BadLineLog {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl BadLineLog {
    const PER_MINUTE: u32 = 10;

    fn new() -> Self {
        BadLineLog {
            window_start: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    fn log(&mut self, sink: &str, location: &str, reason: &str) {
        if self.window_start.elapsed() >= Duration::from_secs(60) {
            if self.suppressed > 0 {
                tracing::warn!(
                    sink,
                    suppressed = self.suppressed,
                    "more bad lines were rejected than logged (all are in the dead-letter file)"
                );
            }
            *self = BadLineLog::new();
        }
        if self.logged < Self::PER_MINUTE {
            self.logged += 1;
            tracing::warn!(sink, location, "bad line rejected: {reason}");
        } else {
            self.suppressed += 1;
        }
    }
}

/// Why a torn line (see [`LineKind::Torn`]) is dead-lettered.
const TORN: &str = "the last line of a journal segment has no newline: a crash cut its write short, so it is not delivered as an event";

fn location(block: &Block, kind: &LineKind) -> String {
    match *kind {
        LineKind::Unreadable { .. } => block.origin.to_string(),
        LineKind::Text { number, end }
        | LineKind::Oversized { number, end, .. }
        | LineKind::Torn { number, end }
        | LineKind::Bad { number, end, .. } => {
            format!("{} line {number} (ends at byte {end})", block.origin)
        }
    }
}
