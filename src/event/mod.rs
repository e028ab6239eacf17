//! What flows between stages, and decoding lines into events.
//!
//! A source reads raw lines and hands them on in [`Block`]s (one read's worth of lines,
//! no copy per line). Each sink decodes a block with its own [`Decoder`] (schema, event
//! types, envelope field) into `Item`s: an encoded event, or a marker for a line that
//! carried no event (bad input, filtered out). Markers keep their file position so that
//! acknowledgements stay in order: a file offset moves past a bad line only after
//! everything before it was delivered.
//!
//! # Layout
//! - this module: the types between stages ([`Block`], [`Line`], [`LineKind`], `Item`,
//!   [`Ack`]) and what decoding says ([`Decoded`], [`Invalid`]).
//! - `decode`: the [`Decoder`], line -> event; shippers' envelopes ([`envelope_fields`]).
//! - `canonical`: the fast path, a scanner for lines already in GO Feature Flag's encoding.
//! - `envelope`: the fast path for shippers' envelopes around such lines (Vector, Fluent Bit).
//! - `any`: the fast path for `schema = "any"`, a compact object sent as it is.
//! - `goff`: the fields read from a line (a serde visitor) and GO Feature Flag's encoding.
//! - `json`: [`compact`], and the short reasons JSON errors give.
//! - `foreign`: other formats (CSV, parquet, syslog, msgpack) recognised in rejected lines,
//!   to `explain` what to change.

mod any;
mod canonical;
mod decode;
mod envelope;
/// The fast path and the general encoder, each alone, for the differential fuzz target
/// (`fuzz/fuzz_targets/decode_line.rs`). Not part of flaghook's API.
#[doc(hidden)]
pub mod fuzzing {
    use bytes::{Bytes, BytesMut};

    use super::{canonical, decode, envelope, goff, EventType, Invalid};

    /// The fast path's verdict: `Some(kind)` when `line` is taken as it is.
    pub fn canonical_kind(line: &[u8]) -> Option<EventType> {
        canonical::check(line)
    }

    /// What the general path encodes `line` (one JSON object, no envelope) to, for `goff`.
    pub fn encode_goff(line: &str) -> Result<Bytes, Invalid> {
        let fields = goff::Fields::parse(line, &[])?;
        let mut out = BytesMut::new();
        fields.encode_goff(fields.kind()?, &mut out)?;
        Ok(out.freeze())
    }

    /// The envelope fast path's event: `Some` when it takes `line` (valid UTF-8).
    pub fn envelope_event(line: &[u8], envelope_fields: &[String]) -> Option<Bytes> {
        let mut out = BytesMut::new();
        envelope::unwrap(line, envelope_fields, &mut out).map(|_| out.freeze())
    }

    /// What the general path makes of `line` as an envelope: the event it holds, encoded
    /// for `goff`, or `None` when `line` is no envelope or its event is refused.
    pub fn envelope_general(line: &str, envelope_fields: &[String]) -> Option<Bytes> {
        let outer = goff::Fields::parse(line, envelope_fields).ok()?;
        if outer.kind.is_some() {
            return None;
        }
        let inner = decode::envelope_inner(outer.envelope?).ok()?;
        encode_goff(&inner).ok()
    }
}

#[cfg(test)]
mod fixtures;
mod foreign;
mod goff;
mod json;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

pub use decode::{envelope_fields, Decoder};
pub(crate) use foreign::explain;
pub use json::compact;
pub(crate) use json::excerpt;

/// Whether `text` is an event in GO Feature Flag's encoding, by the canonical scanner: a
/// quick yes for the lines most bodies hold (it accepts only what serde_json accepts), so
/// that only the others need a full JSON parse. `false` says nothing about the text.
pub(crate) fn is_goff_event(text: &str) -> bool {
    canonical::check(text.as_bytes()).is_some()
}

/// Whether `name` is a field of GO Feature Flag's events: the decoder reads it as the
/// event's, never as an envelope field, whatever the source's `field` says.
pub(crate) fn is_event_field(name: &str) -> bool {
    goff::is_event_field(name)
}

/// A file position that is acknowledged once every sink has delivered what precedes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Which of the sink's inputs the line came through (see [`Block::input`]).
    pub input: usize,
    /// The tailed file (or journal segment), as the source numbers them.
    pub file: u64,
    /// Byte offset just past the line.
    pub offset: u64,
}

/// Lines from one file (a tailed file or a journal segment), in order.
///
/// The lines of one read lie in its buffer, `buffer`, held once for the block: a line is a
/// range of it ([`Piece::InBlock`]), not a reference-counted `Bytes` of its own, so that
/// no count is raised per line by the source's thread and dropped by the sink's. A line
/// that is not in the read buffer (an oversized line's excerpt, a line a source made on
/// its own) holds its own bytes ([`Piece::Own`]).
#[derive(Debug, Clone)]
pub struct Block {
    /// The source's name in the config.
    pub source_name: Arc<str>,
    /// Where the lines come from: the file's path.
    pub origin: Arc<str>,
    /// The file, as the source numbers them (for a nats source, the message, whose lines'
    /// offsets are in its payload), to build [`Ack`]s; none for a place that could not be
    /// read at all ([`LineKind::Unreadable`]).
    pub file: Option<u64>,
    /// Which of the receiving sink's inputs this block came through; set by
    /// `source::Output` for each sink, so the sink finds its acknowledgement handle.
    pub input: usize,
    /// Fields that may wrap an event (see [`envelope_fields`]).
    pub envelope: Arc<[String]>,
    /// The buffer the lines' [`Piece::InBlock`] ranges lie in.
    pub buffer: Bytes,
    pub lines: Vec<Line>,
}

impl Block {
    /// The bytes of `line`, one of its lines.
    pub fn bytes<'a>(&'a self, line: &'a Line) -> &'a [u8] {
        line.bytes.of(&self.buffer)
    }
}

/// The bytes of a line or an event: a range of its block's buffer, or bytes of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// `len` bytes from `start` in the buffer of the block it belongs to.
    InBlock {
        start: usize,
        len: usize,
    },
    Own(Bytes),
}

impl Piece {
    pub fn len(&self) -> usize {
        match self {
            Piece::InBlock { len, .. } => *len,
            Piece::Own(bytes) => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its bytes, given the buffer of its block.
    pub fn of<'a>(&'a self, buffer: &'a [u8]) -> &'a [u8] {
        match self {
            Piece::InBlock { start, len } => &buffer[*start..*start + *len],
            Piece::Own(bytes) => bytes,
        }
    }

    /// Its bytes from `from` on.
    pub(crate) fn slice_from(self, from: usize) -> Piece {
        match self {
            Piece::InBlock { start, len } => Piece::InBlock {
                start: start + from,
                len: len - from,
            },
            Piece::Own(bytes) => Piece::Own(bytes.slice(from..)),
        }
    }

    /// Its first `len` bytes.
    pub(crate) fn truncated(self, len: usize) -> Piece {
        match self {
            Piece::InBlock { start, .. } => Piece::InBlock { start, len },
            Piece::Own(mut bytes) => {
                bytes.truncate(len);
                Piece::Own(bytes)
            }
        }
    }
}

impl From<Bytes> for Piece {
    fn from(bytes: Bytes) -> Self {
        Piece::Own(bytes)
    }
}

/// One line without its terminator (`\n`, `\r\n`), or what stands for a place that could
/// not be read at all.
#[derive(Debug, Clone)]
pub struct Line {
    /// The line; only its start when [`LineKind::Oversized`], empty when
    /// [`LineKind::Unreadable`]. Outside a [`Block`] (a line a source made on its own,
    /// on its way to the journal), always [`Piece::Own`].
    pub bytes: Piece,
    pub kind: LineKind,
}

/// What a [`Line`] is. `number` is the line's 1-based number in its origin, `end` the byte
/// offset just past its terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineKind {
    /// A line read whole, to decode.
    Text { number: u64, end: u64 },
    /// A line of `len` bytes, longer than `max_line_bytes`: rejected before decoding.
    Oversized { number: u64, end: u64, len: u64 },
    /// The bytes after the last newline of a sealed journal segment: a line a crash cut
    /// short, rejected before decoding (see `crate::journal`).
    Torn { number: u64, end: u64 },
    /// A place that could not be read at all (a directory, an unreadable file): it has no
    /// lines, and stands as one so that it is counted and dead-lettered like a bad line.
    Unreadable { reason: String },
    /// Input the source could not turn into a line (a Forward record that JSON cannot hold,
    /// bytes that are not the Forward protocol): dead-lettered with `reason`. The line holds
    /// its raw bytes, or their start when they are longer than `max_line_bytes`; `len` is
    /// their whole length. It reaches the journal as such (see `crate::journal`), so `end`
    /// is its place there; the source that found it leaves `end` at 0.
    Bad {
        number: u64,
        end: u64,
        reason: String,
        len: u64,
    },
}

impl Line {
    /// A line of its own bytes.
    pub fn own(bytes: Bytes, kind: LineKind) -> Self {
        Line {
            bytes: Piece::Own(bytes),
            kind,
        }
    }

    /// Its bytes when they are its own (see [`Line::bytes`]); none in a block's buffer.
    pub(crate) fn own_bytes(&self) -> &[u8] {
        match &self.bytes {
            Piece::Own(bytes) => bytes,
            Piece::InBlock { .. } => panic!("a line outside a block holds its own bytes"),
        }
    }

    /// The byte offset just past the line's terminator; none for an unreadable place.
    pub(crate) fn end(&self) -> Option<u64> {
        match self.kind {
            LineKind::Text { end, .. }
            | LineKind::Oversized { end, .. }
            | LineKind::Torn { end, .. }
            | LineKind::Bad { end, .. } => Some(end),
            LineKind::Unreadable { .. } => None,
        }
    }
}

/// A block's items, as a sink's decode stage hands them to its batcher: the events that
/// are their lines as they are ([`Piece::InBlock`]) lie in `buffer`, the block's buffer,
/// which the batcher drops once for the block.
#[derive(Debug)]
pub(crate) struct Items {
    pub(crate) buffer: Bytes,
    pub(crate) items: Vec<Item>,
}

/// What a sink batches: an encoded event, or only a position to acknowledge.
///
/// Every line comes from a file that keeps it until it is acknowledged (a tailed file, or
/// the journal of a source that cannot be read again), so every item has its position.
/// Each item holds one event permit of the sink's memory budget (see
/// [`crate::source::Budget`]), so that positions keep their place in line: a file offset
/// moves past a line that carried no event only after everything before it was delivered.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Event {
        /// In the buffer of its block ([`Items::buffer`]) or, encoded anew, its own.
        event: Piece,
        /// Where the line is, found again if the event is not delivered in this run.
        ack: Ack,
        /// Bytes of the budget it holds: its line's length.
        held: usize,
    },
    /// A line that carried no event (bad, filtered out, blank): its position. It holds no
    /// bytes of the budget.
    Position(Ack),
}

impl Item {
    /// The encoded event, if the item carries one.
    pub(crate) fn event(&self) -> Option<&Piece> {
        match self {
            Item::Event { event, .. } => Some(event),
            Item::Position(_) => None,
        }
    }

    /// The file position to acknowledge once the item is delivered or dead-lettered.
    pub(crate) fn ack(&self) -> Ack {
        match self {
            Item::Event { ack, .. } | Item::Position(ack) => *ack,
        }
    }

    /// Bytes of the budget the item holds.
    pub(crate) fn held(&self) -> usize {
        match self {
            Item::Event { held, .. } => *held,
            Item::Position(_) => 0,
        }
    }
}

/// The event format a sink accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schema {
    /// GO Feature Flag feature and tracking events, re-encoded in GO Feature Flag's order.
    Goff,
    /// Any JSON object, sent as it came (compacted).
    Any,
}

impl Schema {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Schema::Goff => "goff",
            Schema::Any => "any",
        }
    }
}

/// GO Feature Flag's two event kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Feature,
    Tracking,
}

/// Why a line is not an event. Shown in logs and dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(reason: impl Into<String>) -> Invalid {
    Invalid(reason.into())
}

/// What [`Decoder::decode_line`] gives.
#[derive(Debug, PartialEq, Eq)]
pub enum FromLine {
    /// The line is the event: its first `len` bytes (a `\r` at its end left out).
    Itself(usize),
    Decoded(Decoded),
}

/// What decoding one line gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Event(Bytes),
    /// A valid event of a kind this sink does not send.
    Filtered,
    /// A blank line: nothing to send, nothing wrong.
    Empty,
}
