//! The Forward protocol (v1) as a pure decoder: bytes in, records out, no I/O, so that the
//! unit tests and the fuzz target drive it with bytes.
//!
//! A connection carries msgpack values one after another. [`Frames`] finds where the next
//! one ends in a buffer that grows with each read, resuming where it stopped: an entry may
//! span many reads and is still scanned once. [`decode`] then reads a whole value: `nil` (a
//! heartbeat) or an entry in one of the four event modes, told apart by its second element:
//!
//! | mode | shape |
//! |---|---|
//! | Message | `[tag, time, record, option?]` |
//! | Forward | `[tag, [[time, record], ...], option?]` |
//! | PackedForward | `[tag, bin, option?]`: the bin holds `[time, record]` entries back to back |
//! | CompressedPackedForward | the same, with `option.compressed = "gzip"` (gzip members, concatenated) |
//!
//! `time` is an integer, EventTime (ext type 0: seconds and nanoseconds, 4 bytes each), or
//! `[time, metadata]` as Fluent Bit 2.1 and later may send it. The option's `chunk` is kept,
//! as its exact bytes, for the acknowledgement `{"ack": chunk}`.
//!
//! Each record becomes one compact JSON object, written straight from the msgpack bytes
//! rather than through a tree of values (a 16 MiB entry of one-byte values would take twenty
//! times that as a tree). The conversion is exact for what JSON holds: strings, integers
//! (all 64 bits), floats (the shortest text that reads back as the same float; an `f32` as
//! an `f32`), booleans, nil, maps with string keys, arrays; a bin that is UTF-8 text becomes
//! a string. Anything else (an ext value, a NaN, a key that is not text, a string that is
//! not UTF-8, a record that is not a map) makes that record [`Record::Bad`] with a reason
//! naming the field, and the entry goes on. Problems with the stream itself (not a msgpack
//! array, larger than `max_entry_bytes`) are [`Broken`]: the source closes the connection.

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};
use rmp::Marker;

use crate::event::excerpt;
use crate::source::lines::OVERSIZED_EXCERPT;

/// Containers nested deeper than this in one entry break the stream. Far beyond any real
/// record (the records themselves stop at [`MAX_RECORD_DEPTH`]); it bounds the scanner's
/// stack.
const MAX_FRAME_DEPTH: usize = 1024;

/// A record nested deeper than this is bad: serde_json, which the sinks read lines with,
/// stops at 128 levels.
const MAX_RECORD_DEPTH: usize = 127;

/// The stream cannot be read on: the source closes the connection, saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken(pub String);

/// What limits a decoder.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A record whose JSON is longer is [`Record::Oversized`].
    pub max_line_bytes: usize,
    /// A msgpack value (an entry) longer than this breaks the stream; so do PackedForward
    /// entries that decompress to more.
    pub max_entry_bytes: usize,
}

// ---------------------------------------------------------------------------------------
// Framing.

/// Finds the end of the msgpack value at the start of a buffer that grows between calls.
///
/// Invariant: `pos` is the length of the buffer's prefix already read as whole headers
/// (with their scalar payloads), and `pending` holds, for each container open at `pos`,
/// how many values it still holds (the bottom one is the top-level value). So a call
/// resumes at `pos` and reads each header once, whatever the number of reads.
#[derive(Debug)]
pub struct Frames {
    pos: usize,
    pending: Vec<u64>,
    max: usize,
}

/// One msgpack header: its length, the length of the bytes that follow it (a string's, a
/// number's), and how many values it contains (an array's or a map's).
struct Head {
    len: usize,
    payload: u64,
    children: u64,
}

impl Frames {
    /// A scanner for values of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Frames {
            pos: 0,
            pending: vec![1],
            max,
        }
    }

    /// The length of the value at the start of `buf` once all of it is there, `None` while
    /// it is not. Until it returns a length, `buf` must only grow between calls.
    pub fn next(&mut self, buf: &[u8]) -> Result<Option<usize>, Broken> {
        loop {
            while self.pending.last() == Some(&0) {
                self.pending.pop();
            }
            if self.pending.is_empty() {
                let len = self.pos;
                *self = Frames::new(self.max);
                return Ok(Some(len));
            }
            let Some(head) = head(&buf[self.pos..])? else {
                return Ok(None);
            };
            let end = (self.pos + head.len) as u64 + head.payload;
            if end > self.max as u64 {
                return Err(Broken(format!(
                    "an entry larger than max_entry_bytes ({} bytes)",
                    self.max
                )));
            }
            if end > buf.len() as u64 {
                return Ok(None);
            }
            self.pos = end as usize;
            *self.pending.last_mut().expect("not empty") -= 1;
            if head.children > 0 {
                if self.pending.len() >= MAX_FRAME_DEPTH {
                    return Err(Broken(format!(
                        "an entry nested deeper than {MAX_FRAME_DEPTH} levels"
                    )));
                }
                self.pending.push(head.children);
            }
        }
    }
}

/// The length of the whole value at the start of `bytes`, when it is all there.
fn value_len(bytes: &[u8]) -> Result<Option<usize>, Broken> {
    Frames::new(usize::MAX).next(bytes)
}

/// Reads the header at the start of `b`; `None` when `b` holds only part of it.
fn head(b: &[u8]) -> Result<Option<Head>, Broken> {
    let Some(&first) = b.first() else {
        return Ok(None);
    };
    // A header of `n` bytes in all whose last `n - 1` bytes are a big-endian length.
    let sized = |n: usize| -> Option<u64> {
        let len = b.get(1..n)?;
        Some(len.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    };
    let fixed = |payload: u64| Some((1, payload, 0));
    let parts: Option<(usize, u64, u64)> = match Marker::from_u8(first) {
        Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
            fixed(0)
        }
        Marker::U8 | Marker::I8 => fixed(1),
        Marker::U16 | Marker::I16 => fixed(2),
        Marker::U32 | Marker::I32 | Marker::F32 => fixed(4),
        Marker::U64 | Marker::I64 | Marker::F64 => fixed(8),
        Marker::FixStr(n) => fixed(u64::from(n)),
        Marker::Str8 | Marker::Bin8 => sized(2).map(|n| (2, n, 0)),
        Marker::Str16 | Marker::Bin16 => sized(3).map(|n| (3, n, 0)),
        Marker::Str32 | Marker::Bin32 => sized(5).map(|n| (5, n, 0)),
        Marker::FixArray(n) => Some((1, 0, u64::from(n))),
        Marker::Array16 => sized(3).map(|n| (3, 0, n)),
        Marker::Array32 => sized(5).map(|n| (5, 0, n)),
        Marker::FixMap(n) => Some((1, 0, 2 * u64::from(n))),
        Marker::Map16 => sized(3).map(|n| (3, 0, 2 * n)),
        Marker::Map32 => sized(5).map(|n| (5, 0, 2 * n)),
        // An ext value: its type byte, then its data.
        Marker::FixExt1 => fixed(2),
        Marker::FixExt2 => fixed(3),
        Marker::FixExt4 => fixed(5),
        Marker::FixExt8 => fixed(9),
        Marker::FixExt16 => fixed(17),
        Marker::Ext8 => sized(2).map(|n| (2, n + 1, 0)),
        Marker::Ext16 => sized(3).map(|n| (3, n + 1, 0)),
        Marker::Ext32 => sized(5).map(|n| (5, n + 1, 0)),
        Marker::Reserved => {
            return Err(Broken(
                "not msgpack (byte 0xc1, which msgpack never uses)".to_owned(),
            ))
        }
    };
    Ok(parts.map(|(len, payload, children)| Head {
        len,
        payload,
        children,
    }))
}

// ---------------------------------------------------------------------------------------
// Entries.

/// One value read from a connection.
#[derive(Debug)]
pub enum Message {
    /// `nil`: a client's heartbeat.
    Heartbeat,
    Entry(Entry),
}

/// An entry: its records, in order, and the chunk id to acknowledge.
#[derive(Debug)]
pub struct Entry {
    pub tag: String,
    pub records: Vec<Record>,
    /// `option.chunk`, as its msgpack bytes: the acknowledgement echoes it exactly.
    pub chunk: Option<Bytes>,
}

/// One record of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The record as one compact JSON object.
    Json(Bytes),
    /// The event in GO Feature Flag's encoding that the record carries in its envelope
    /// field, as it is (see `event_in`).
    Event(Bytes),
    /// Its JSON is longer than `max_line_bytes`: the start of it, and its whole length.
    Oversized { excerpt: Bytes, len: u64 },
    /// Not a record JSON can hold: its msgpack bytes (their start when longer than
    /// `max_line_bytes`), their whole length, and why.
    Bad {
        raw: Bytes,
        len: u64,
        reason: String,
    },
}

impl Record {
    fn bad(raw: &[u8], limits: &Limits, reason: String) -> Record {
        let keep = if raw.len() <= limits.max_line_bytes {
            raw.len()
        } else {
            raw.len().min(OVERSIZED_EXCERPT)
        };
        Record::Bad {
            raw: Bytes::copy_from_slice(&raw[..keep]),
            len: raw.len() as u64,
            reason,
        }
    }
}

/// The acknowledgement of `chunk` (its exact msgpack bytes): `{"ack": chunk}`.
pub fn ack(chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + 5);
    out.push(0x81); // a map of one pair
    out.extend_from_slice(&[0xa3, b'a', b'c', b'k']);
    out.extend_from_slice(chunk);
    out
}

/// Reads one whole msgpack value (as [`Frames`] cut it) from a connection.
pub fn decode(frame: &[u8], limits: &Limits, envelope: &[String]) -> Result<Message, Broken> {
    let mut r = Reader::new(frame);
    let marker = r.marker().map_err(|e| Broken(e.0))?;
    let len = match marker {
        Marker::Null => return Ok(Message::Heartbeat),
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
            r.container_len(marker).map_err(|e| Broken(e.0))?
        }
        other => {
            return Err(Broken(format!(
                "not a Forward protocol entry: {} where an array [tag, ...] was expected (the fluent source reads msgpack from Fluent Bit's `forward` output or a fluent-logger)",
                kind(other)
            )))
        }
    };
    if !(2..=4).contains(&len) {
        return Err(Broken(format!(
            "an entry of {len} elements: the Forward protocol's entries have 2 to 4 ([tag, time, record, option?], [tag, entries, option?])"
        )));
    }
    let tag = r
        .string()
        .map_err(|e| Broken(format!("the tag is {}", e.0)))?;
    let second = r.peek().map_err(|e| Broken(e.0))?;
    let mut entry = Entry {
        tag: tag.to_owned(),
        records: Vec::new(),
        chunk: None,
    };
    match second {
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
            check_len(len, 2..=3, "Forward", "[tag, entries, option?]")?;
            let entries = r.value().map_err(|e| Broken(e.0))?;
            let option = Options::read(&mut r, len == 3)?;
            entry.records = forward_entries(entries, limits, envelope);
            entry.chunk = option.chunk;
        }
        Marker::FixStr(_)
        | Marker::Str8
        | Marker::Str16
        | Marker::Str32
        | Marker::Bin8
        | Marker::Bin16
        | Marker::Bin32 => {
            check_len(len, 2..=3, "PackedForward", "[tag, entries, option?]")?;
            let marker = r.marker().map_err(|e| Broken(e.0))?;
            let n = r.container_len(marker).map_err(|e| Broken(e.0))?;
            let packed = r.take(n).map_err(|e| Broken(e.0))?;
            let option = Options::read(&mut r, len == 3)?;
            entry.records = packed_entries(packed, option.compressed.as_deref(), limits, envelope)?;
            entry.chunk = option.chunk;
        }
        m if is_time(m) => {
            check_len(len, 3..=4, "Message", "[tag, time, record, option?]")?;
            let start = r.pos;
            let time = r.value().map_err(|e| Broken(e.0))?;
            let record = r.value().map_err(|e| Broken(e.0))?;
            let raw = &frame[start..r.pos];
            let option = Options::read(&mut r, len == 4)?;
            entry.records = vec![record_of(time, record, raw, limits, envelope)];
            entry.chunk = option.chunk;
        }
        other => {
            return Err(Broken(format!(
                "an entry whose second element is {}: the Forward protocol's is a time (Message), an array (Forward) or a bin (PackedForward)",
                kind(other)
            )))
        }
    }
    Ok(Message::Entry(entry))
}

fn check_len(
    len: usize,
    range: std::ops::RangeInclusive<usize>,
    mode: &str,
    shape: &str,
) -> Result<(), Broken> {
    if range.contains(&len) {
        Ok(())
    } else {
        Err(Broken(format!(
            "a {mode} entry of {len} elements: its shape is {shape}"
        )))
    }
}

/// Whether `m` starts an array, in any of msgpack's three forms: an encoder may write a
/// short array as `array 16` or `array 32` (a fixed-size header), and such an array is the
/// same value as a `fixarray`.
fn is_array(m: Marker) -> bool {
    matches!(m, Marker::FixArray(_) | Marker::Array16 | Marker::Array32)
}

fn is_time(m: Marker) -> bool {
    matches!(
        m,
        Marker::FixPos(_)
            | Marker::FixNeg(_)
            | Marker::U8
            | Marker::U16
            | Marker::U32
            | Marker::U64
            | Marker::I8
            | Marker::I16
            | Marker::I32
            | Marker::I64
            | Marker::F32
            | Marker::F64
            | Marker::FixExt8
            | Marker::Ext8
    )
}

/// The entry's options that flaghook reads.
#[derive(Debug, Default)]
struct Options {
    chunk: Option<Bytes>,
    compressed: Option<String>,
}

impl Options {
    /// Reads the option map, when the entry has one (`nil` stands for none).
    fn read(r: &mut Reader<'_>, present: bool) -> Result<Options, Broken> {
        let mut options = Options::default();
        if !present {
            return Ok(options);
        }
        let marker = r.marker().map_err(|e| Broken(e.0))?;
        let pairs = match marker {
            Marker::Null => return Ok(options),
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
                r.container_len(marker).map_err(|e| Broken(e.0))?
            }
            other => {
                return Err(Broken(format!(
                    "the entry's option is {}, not a map",
                    kind(other)
                )))
            }
        };
        for _ in 0..pairs {
            let key = r.value().map_err(|e| Broken(e.0))?;
            let value = r.value().map_err(|e| Broken(e.0))?;
            match key_text(key) {
                Some("chunk") => options.chunk = Some(Bytes::copy_from_slice(value)),
                Some("compressed") => {
                    let text = Reader::new(value)
                        .string()
                        .map_err(|e| Broken(format!("the option `compressed` is {}", e.0)))?;
                    options.compressed = Some(text.to_owned());
                }
                _ => {}
            }
        }
        Ok(options)
    }
}

/// The text of a msgpack string (or UTF-8 bin) value, if it is one.
fn key_text(value: &[u8]) -> Option<&str> {
    Reader::new(value).string().ok()
}

/// Forward mode: each element of `entries` (a whole array value) is `[time, record]`.
fn forward_entries(entries: &[u8], limits: &Limits, envelope: &[String]) -> Vec<Record> {
    let mut r = Reader::new(entries);
    let n = match r.marker().and_then(|m| r.container_len(m)) {
        Ok(n) => n,
        Err(e) => return vec![Record::bad(entries, limits, e.0)],
    };
    let mut records = Records::new(n.min(entries.len()), limits);
    for _ in 0..n {
        match r.value() {
            Ok(element) => records.push(pair(element, limits, envelope)),
            Err(e) => {
                records.push(Record::bad(&entries[r.pos..], limits, e.0));
                break;
            }
        }
    }
    records.finish()
}

/// Bad records an entry gives one by one; the ones after are dead-lettered as one record.
/// Garbage in a PackedForward stream is cut into a "record" per byte or so (a positive
/// fixint is a whole msgpack value), and each would cost a reason and a dead-letter line
/// of some 300 bytes, in memory and on the disk: a 1 MB entry of such bytes took 300 MB.
/// Past this many, an entry costs about its own size, whatever it holds.
const MAX_BAD_RECORDS: usize = 100;

/// An entry's records, in order, with bad ones past [`MAX_BAD_RECORDS`] folded into one.
struct Records {
    out: Vec<Record>,
    bad: usize,
    /// The bad records past the cap, folded into one.
    more: Option<Folded>,
    /// The most bytes of the folded records kept: as many as one record keeps.
    keep: usize,
}

/// Bad records folded into one: their bytes back to back (their start, up to
/// `max_line_bytes`), how many, their whole length, and the first one's reason.
struct Folded {
    raw: BytesMut,
    records: u64,
    len: u64,
    reason: String,
}

impl Records {
    fn new(n: usize, limits: &Limits) -> Self {
        Records {
            out: Vec::with_capacity(n.min(1 << 16)),
            bad: 0,
            more: None,
            keep: limits.max_line_bytes,
        }
    }

    fn push(&mut self, record: Record) {
        let Record::Bad { raw, len, reason } = record else {
            self.out.push(record);
            return;
        };
        if self.bad < MAX_BAD_RECORDS {
            self.bad += 1;
            self.out.push(Record::Bad { raw, len, reason });
            return;
        }
        let folded = self.more.get_or_insert_with(|| Folded {
            raw: BytesMut::new(),
            records: 0,
            len: 0,
            reason,
        });
        folded.records += 1;
        folded.len += len;
        let room = self.keep.saturating_sub(folded.raw.len());
        folded.raw.extend_from_slice(&raw[..raw.len().min(room)]);
    }

    fn finish(mut self) -> Vec<Record> {
        if let Some(Folded {
            raw,
            records,
            len,
            reason,
        }) = self.more
        {
            let kept = if raw.len() as u64 == len {
                "all kept".to_owned()
            } else {
                format!("the first {} kept", raw.len())
            };
            self.out.push(Record::Bad {
                raw: raw.freeze(),
                len,
                reason: format!(
                    "{records} more bad records in this entry after {MAX_BAD_RECORDS}, dead-lettered as one (their {len} bytes back to back, {kept}); the first: {reason}"
                ),
            });
        }
        self.out
    }
}

/// (Compressed)PackedForward: `[time, record]` values back to back.
fn packed_entries(
    packed: &[u8],
    compressed: Option<&str>,
    limits: &Limits,
    envelope: &[String],
) -> Result<Vec<Record>, Broken> {
    let inflated;
    let stream = match compressed {
        None | Some("text") => packed,
        Some("gzip") => match gunzip(packed, limits.max_entry_bytes) {
            Ok(bytes) => {
                inflated = bytes;
                &inflated[..]
            }
            Err(Gunzip::TooLarge) => {
                return Err(Broken(format!(
                    "a CompressedPackedForward entry that decompresses to more than max_entry_bytes ({} bytes)",
                    limits.max_entry_bytes
                )))
            }
            Err(Gunzip::Invalid(e)) => {
                let reason = format!("CompressedPackedForward entries that are not valid gzip: {e}");
                return Ok(vec![Record::bad(packed, limits, reason)]);
            }
        },
        Some(other) => {
            let reason = format!(
                "the entry's option compressed = {:?} is not one the Forward protocol defines (\"gzip\" or \"text\")",
                excerpt(other)
            );
            return Ok(vec![Record::bad(packed, limits, reason)]);
        }
    };
    let mut records = Records::new(0, limits);
    let mut rest = stream;
    while !rest.is_empty() {
        match value_len(rest) {
            Ok(Some(n)) => {
                records.push(pair(&rest[..n], limits, envelope));
                rest = &rest[n..];
            }
            Ok(None) => {
                let reason = format!(
                    "PackedForward entries that end in the middle of an entry ({} bytes left over)",
                    rest.len()
                );
                records.push(Record::bad(rest, limits, reason));
                break;
            }
            Err(Broken(e)) => {
                records.push(Record::bad(
                    rest,
                    limits,
                    format!("PackedForward entries: {e}"),
                ));
                break;
            }
        }
    }
    Ok(records.finish())
}

enum Gunzip {
    TooLarge,
    Invalid(std::io::Error),
}

/// Decompresses gzip members (concatenated, as the protocol allows), to at most `max` bytes.
fn gunzip(compressed: &[u8], max: usize) -> Result<Vec<u8>, Gunzip> {
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::MultiGzDecoder::new(compressed)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(Gunzip::Invalid)?;
    if out.len() > max {
        return Err(Gunzip::TooLarge);
    }
    Ok(out)
}

/// One `[time, record]` element of a Forward or PackedForward entry.
fn pair(element: &[u8], limits: &Limits, envelope: &[String]) -> Record {
    let mut r = Reader::new(element);
    let parts = r
        .marker()
        .and_then(|m| match m {
            m if is_array(m) && r.container_len(m)? == 2 => Ok(()),
            other => Err(Malformed(format!(
                "{} where an entry [time, record] was expected",
                kind(other)
            ))),
        })
        .and_then(|()| Ok((r.value()?, r.value()?)));
    match parts {
        Ok((time, record)) => record_of(time, record, element, limits, envelope),
        Err(e) => Record::bad(element, limits, e.0),
    }
}

/// The record (a whole value) as a JSON line, once its time is checked, or the event it
/// carries in `envelope` (see [`event_in`]); `raw` is what is dead-lettered when it is bad.
fn record_of(
    time: &[u8],
    record: &[u8],
    raw: &[u8],
    limits: &Limits,
    envelope: &[String],
) -> Record {
    if let Err(reason) = check_time(time) {
        return Record::bad(raw, limits, reason);
    }
    if let Some(event) = event_in(record, envelope, limits) {
        return Record::Event(Bytes::copy_from_slice(event));
    }
    let mut out = JsonOut::new(limits.max_line_bytes, record.len());
    let mut r = Reader::new(record);
    let written = r.marker().map_err(Unfit::from).and_then(|m| match m {
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
            r.pos = 0;
            json_value(&mut r, &mut out, 0)
        }
        other => Err(Unfit::new(format!(
            "the record is {}, not a map",
            kind(other)
        ))),
    });
    match written {
        Err(unfit) => Record::bad(raw, limits, unfit.reason()),
        Ok(()) if out.len > limits.max_line_bytes as u64 => Record::Oversized {
            excerpt: out
                .buf
                .split_to(out.buf.len().min(OVERSIZED_EXCERPT))
                .freeze(),
            len: out.len,
        },
        Ok(()) => Record::Json(out.buf.freeze()),
    }
}

/// One record (a whole msgpack value, without its time) as [`decode`] turns it into a line:
/// for the fuzz target's differential check (`fuzz/fuzz_targets/forward_stream.rs`). Not
/// part of flaghook's API.
#[doc(hidden)]
pub fn record_line(record: &[u8], limits: &Limits) -> Record {
    record_of(&[0x00], record, record, limits, &[])
}

/// The event a record carries in GO Feature Flag's encoding, to go as its line as it is:
/// the text of its preferred envelope field (the first of `envelope` it has), when the GO
/// Feature Flag scanner accepts that text as an event. The sinks decode that line as they
/// would the record's JSON (they unwrap the same field and check the same text: see
/// `crate::event::envelope`), but the event is not escaped here to be unescaped there.
/// `None`, and the record goes as JSON, for anything else: a record JSON cannot hold (its
/// reason is found there), one with a `kind` (the record is the event itself), the
/// preferred field twice, or a record whose JSON could be longer than `max_line_bytes`;
/// and for every record when an envelope field is named as one of the event's fields
/// (`field = "value"`): the sinks' general path reads that field as the event's, not as
/// an envelope.
fn event_in<'a>(record: &'a [u8], envelope: &[String], limits: &Limits) -> Option<&'a [u8]> {
    if envelope.is_empty() || envelope.iter().any(|f| crate::event::is_event_field(f)) {
        return None;
    }
    let mut r = Reader::new(record);
    let marker = r.marker().ok()?;
    if !matches!(marker, Marker::FixMap(_) | Marker::Map16 | Marker::Map32) {
        return None;
    }
    let n = r.container_len(marker).ok()?;
    // What the record's JSON holds besides the event's value, written to be checked (as
    // the JSON path would) and measured.
    let mut rest = JsonOut::new(limits.max_line_bytes, 0);
    let mut fields: Vec<(usize, &[u8])> = Vec::new();
    for _ in 0..n {
        let key = key_text(r.value().ok()?)?;
        if key == "kind" {
            return None;
        }
        string(&mut rest, key);
        match envelope.iter().position(|f| f == key) {
            Some(rank) => fields.push((rank, r.value().ok()?)),
            None => json_value(&mut r, &mut rest, 1).ok()?,
        }
    }
    let best = fields.iter().map(|&(rank, _)| rank).min()?;
    let mut event = None;
    for (rank, value) in fields {
        if rank == best {
            if event.replace(value).is_some() {
                return None;
            }
        } else {
            json_value(&mut Reader::new(value), &mut rest, 1).ok()?;
        }
    }
    let text = match Reader::new(event?).string() {
        Ok(text) if crate::event::is_goff_event(text) => text,
        _ => return None,
    };
    // Escaped, an event in GO Feature Flag's encoding is at most twice as long (its only
    // escapes are of quotes and backslashes), in quotes; and braces, colons and commas.
    let longest = rest.len + 2 * text.len() as u64 + 2 + 2 * n as u64 + 1;
    (longest <= limits.max_line_bytes as u64).then_some(text.as_bytes())
}

/// An entry's time: an integer or float, EventTime (ext type 0, 8 bytes), or
/// `[time, metadata]` (Fluent Bit 2.1 and later).
fn check_time(time: &[u8]) -> Result<(), String> {
    let mut r = Reader::new(time);
    let marker = r.marker().map_err(|e| e.0)?;
    match marker {
        m if is_time(m) && !matches!(m, Marker::FixExt8 | Marker::Ext8) => Ok(()),
        Marker::FixExt8 | Marker::Ext8 => {
            let (ty, data) = r.ext(marker).map_err(|e| e.0)?;
            if ty == 0 && data.len() == 8 {
                Ok(())
            } else {
                Err(format!(
                    "the time is an ext value of type {ty} and {} bytes, not EventTime (type 0, 8 bytes)",
                    data.len()
                ))
            }
        }
        m if is_array(m) && r.container_len(m).map_err(|e| e.0)? == 2 => {
            let inner = r.value().map_err(|e| e.0)?;
            let inner_marker = Reader::new(inner).marker().map_err(|e| e.0)?;
            if is_array(inner_marker) {
                return Err("the time is an array inside an array".to_owned());
            }
            check_time(inner)
        }
        other => Err(format!(
            "the time is {}, not an integer or EventTime",
            kind(other)
        )),
    }
}

// ---------------------------------------------------------------------------------------
// msgpack -> JSON.

/// Why a value has no JSON form, and where it sits in the record (innermost first).
#[derive(Debug)]
struct Unfit {
    what: String,
    path: Vec<String>,
}

impl Unfit {
    fn new(what: String) -> Self {
        Unfit {
            what,
            path: Vec::new(),
        }
    }

    fn at(mut self, step: String) -> Self {
        self.path.push(step);
        self
    }

    fn reason(&self) -> String {
        if self.path.is_empty() {
            return self.what.clone();
        }
        let mut path = String::new();
        for step in self.path.iter().rev() {
            if !step.starts_with('[') && !path.is_empty() {
                path.push('.');
            }
            path.push_str(step);
        }
        format!("record field `{path}`: {}", self.what)
    }
}

impl From<Malformed> for Unfit {
    fn from(e: Malformed) -> Self {
        Unfit::new(e.0)
    }
}

/// Where a record's JSON goes: its first `cap + 1` bytes are kept (at least an excerpt's
/// worth), all are counted, so an oversized record costs no more memory than its limit.
struct JsonOut {
    buf: BytesMut,
    len: u64,
    cap: usize,
}

impl JsonOut {
    /// For the JSON of a msgpack value of `value_len` bytes: room for it and its strings'
    /// escapes is reserved at once, so that the line is not copied as it grows (one
    /// allocation per record, not one per doubling).
    fn new(cap: usize, value_len: usize) -> Self {
        let guess = value_len + value_len / 4 + 32;
        JsonOut {
            buf: BytesMut::with_capacity(guess.min(Self::keep(cap))),
            len: 0,
            cap,
        }
    }

    /// The most bytes kept: one more than the longest line, and an excerpt at least.
    fn keep(cap: usize) -> usize {
        (cap + 1).max(OVERSIZED_EXCERPT)
    }

    fn put(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        let room = Self::keep(self.cap).saturating_sub(self.buf.len());
        self.buf.put_slice(&bytes[..bytes.len().min(room)]);
    }
}

impl Write for JsonOut {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.put(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes the value at `r` as JSON.
fn json_value(r: &mut Reader<'_>, out: &mut JsonOut, depth: usize) -> Result<(), Unfit> {
    let marker = r.marker()?;
    match marker {
        Marker::Null => out.put(b"null"),
        Marker::True => out.put(b"true"),
        Marker::False => out.put(b"false"),
        Marker::FixPos(n) => number(out, n),
        Marker::FixNeg(n) => number(out, n),
        Marker::U8 => number(out, r.take(1)?[0]),
        Marker::U16 => number(out, u16::from_be_bytes(r.array()?)),
        Marker::U32 => number(out, u32::from_be_bytes(r.array()?)),
        Marker::U64 => number(out, u64::from_be_bytes(r.array()?)),
        Marker::I8 => number(out, r.take(1)?[0] as i8),
        Marker::I16 => number(out, i16::from_be_bytes(r.array()?)),
        Marker::I32 => number(out, i32::from_be_bytes(r.array()?)),
        Marker::I64 => number(out, i64::from_be_bytes(r.array()?)),
        Marker::F32 => float(out, f32::from_be_bytes(r.array()?))?,
        Marker::F64 => float(out, f64::from_be_bytes(r.array()?))?,
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
            let n = r.container_len(marker)?;
            let text = std::str::from_utf8(r.take(n)?).map_err(|e| {
                Unfit::new(format!(
                    "a string that is not valid UTF-8 (at byte {})",
                    e.valid_up_to()
                ))
            })?;
            string(out, text);
        }
        Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
            let n = r.container_len(marker)?;
            let text = std::str::from_utf8(r.take(n)?).map_err(|e| {
                Unfit::new(format!(
                    "a bin value that is not UTF-8 text (at byte {}): JSON has no bytes",
                    e.valid_up_to()
                ))
            })?;
            string(out, text);
        }
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
            let n = r.container_len(marker)?;
            nested(depth)?;
            out.put(b"[");
            for i in 0..n {
                if i > 0 {
                    out.put(b",");
                }
                json_value(r, out, depth + 1).map_err(|e| e.at(format!("[{i}]")))?;
            }
            out.put(b"]");
        }
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
            let n = r.container_len(marker)?;
            nested(depth)?;
            out.put(b"{");
            for i in 0..n {
                if i > 0 {
                    out.put(b",");
                }
                let key_bytes = r.value()?;
                let Some(key) = key_text(key_bytes) else {
                    let what = Reader::new(key_bytes)
                        .marker()
                        .map(kind)
                        .unwrap_or("cut short");
                    return Err(Unfit::new(format!(
                        "a map key that is {what}: JSON keys are strings"
                    )));
                };
                string(out, key);
                out.put(b":");
                json_value(r, out, depth + 1).map_err(|e| e.at(excerpt(key)))?;
            }
            out.put(b"}");
        }
        Marker::FixExt1
        | Marker::FixExt2
        | Marker::FixExt4
        | Marker::FixExt8
        | Marker::FixExt16
        | Marker::Ext8
        | Marker::Ext16
        | Marker::Ext32 => {
            let (ty, _) = r.ext(marker)?;
            return Err(Unfit::new(format!(
                "an ext value (type {ty}), which has no JSON form"
            )));
        }
        Marker::Reserved => return Err(Unfit::new("byte 0xc1, which msgpack never uses".into())),
    }
    Ok(())
}

fn nested(depth: usize) -> Result<(), Unfit> {
    if depth >= MAX_RECORD_DEPTH {
        return Err(Unfit::new(format!(
            "nested deeper than {MAX_RECORD_DEPTH} levels"
        )));
    }
    Ok(())
}

fn number(out: &mut JsonOut, n: impl std::fmt::Display) {
    write!(out, "{n}").expect("JsonOut never fails");
}

/// A finite float, as the shortest text that reads back as the same float of its width.
fn float<F: serde::Serialize + Into<f64> + Copy>(out: &mut JsonOut, f: F) -> Result<(), Unfit> {
    if !f.into().is_finite() {
        return Err(Unfit::new(format!(
            "a float JSON cannot hold ({})",
            f.into()
        )));
    }
    serde_json::to_writer(out, &f).expect("a finite float serializes");
    Ok(())
}

fn string(out: &mut JsonOut, text: &str) {
    serde_json::to_writer(out, text).expect("a str serializes");
}

/// What a marker stands for, in words, for reasons.
fn kind(m: Marker) -> &'static str {
    match m {
        Marker::Null => "nil",
        Marker::True | Marker::False => "a boolean",
        Marker::FixPos(_)
        | Marker::FixNeg(_)
        | Marker::U8
        | Marker::U16
        | Marker::U32
        | Marker::U64
        | Marker::I8
        | Marker::I16
        | Marker::I32
        | Marker::I64 => "an integer",
        Marker::F32 | Marker::F64 => "a float",
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => "a string",
        Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => "a bin",
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => "an array",
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => "a map",
        Marker::FixExt1
        | Marker::FixExt2
        | Marker::FixExt4
        | Marker::FixExt8
        | Marker::FixExt16
        | Marker::Ext8
        | Marker::Ext16
        | Marker::Ext32 => "an ext value",
        Marker::Reserved => "byte 0xc1 (never used by msgpack)",
    }
}

// ---------------------------------------------------------------------------------------
// Reading msgpack.

/// The bytes end before the value does.
#[derive(Debug)]
struct Malformed(String);

fn cut_short() -> Malformed {
    Malformed("msgpack cut short".to_owned())
}

/// A cursor over msgpack bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn peek(&self) -> Result<Marker, Malformed> {
        self.buf
            .get(self.pos)
            .map(|&b| Marker::from_u8(b))
            .ok_or_else(cut_short)
    }

    fn marker(&mut self) -> Result<Marker, Malformed> {
        let m = self.peek()?;
        self.pos += 1;
        Ok(m)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.pos.checked_add(n).ok_or_else(cut_short)?;
        let bytes = self.buf.get(self.pos..end).ok_or_else(cut_short)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn big_endian(&mut self, n: usize) -> Result<usize, Malformed> {
        let bytes = self.take(n)?;
        let value = bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        usize::try_from(value).map_err(|_| cut_short())
    }

    /// The length that follows a string, bin, array or map marker (pairs for a map).
    fn container_len(&mut self, m: Marker) -> Result<usize, Malformed> {
        match m {
            Marker::FixStr(n) | Marker::FixArray(n) | Marker::FixMap(n) => Ok(usize::from(n)),
            Marker::Str8 | Marker::Bin8 => self.big_endian(1),
            Marker::Str16 | Marker::Bin16 | Marker::Array16 | Marker::Map16 => self.big_endian(2),
            Marker::Str32 | Marker::Bin32 | Marker::Array32 | Marker::Map32 => self.big_endian(4),
            other => Err(Malformed(format!(
                "{} where a length was expected",
                kind(other)
            ))),
        }
    }

    /// An ext value's type and data.
    fn ext(&mut self, m: Marker) -> Result<(i8, &'a [u8]), Malformed> {
        let len = match m {
            Marker::FixExt1 => 1,
            Marker::FixExt2 => 2,
            Marker::FixExt4 => 4,
            Marker::FixExt8 => 8,
            Marker::FixExt16 => 16,
            Marker::Ext8 => self.big_endian(1)?,
            Marker::Ext16 => self.big_endian(2)?,
            Marker::Ext32 => self.big_endian(4)?,
            other => return Err(Malformed(format!("{} is not an ext value", kind(other)))),
        };
        let ty = self.take(1)?[0] as i8;
        Ok((ty, self.take(len)?))
    }

    /// A string (or a bin holding UTF-8 text).
    fn string(&mut self) -> Result<&'a str, Malformed> {
        let m = self.marker()?;
        match m {
            Marker::FixStr(_)
            | Marker::Str8
            | Marker::Str16
            | Marker::Str32
            | Marker::Bin8
            | Marker::Bin16
            | Marker::Bin32 => {
                let n = self.container_len(m)?;
                std::str::from_utf8(self.take(n)?)
                    .map_err(|_| Malformed("a string that is not valid UTF-8".to_owned()))
            }
            other => Err(Malformed(format!("{}, not a string", kind(other)))),
        }
    }

    /// The bytes of the next whole value.
    fn value(&mut self) -> Result<&'a [u8], Malformed> {
        let rest = &self.buf[self.pos..];
        match value_len(rest) {
            Ok(Some(n)) => self.take(n),
            Ok(None) => Err(cut_short()),
            Err(Broken(e)) => Err(Malformed(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    const LIMITS: Limits = Limits {
        max_line_bytes: 1000,
        max_entry_bytes: 1 << 20,
    };

    fn mp(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, value).unwrap();
        out
    }

    fn map(pairs: Vec<(&str, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    fn event_time(secs: u32, nanos: u32) -> Value {
        let mut data = secs.to_be_bytes().to_vec();
        data.extend_from_slice(&nanos.to_be_bytes());
        Value::Ext(0, data)
    }

    fn entry(frame: &[u8]) -> Entry {
        match decode(frame, &LIMITS, &[]).unwrap() {
            Message::Entry(e) => e,
            Message::Heartbeat => panic!("a heartbeat"),
        }
    }

    fn json(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| match r {
                Record::Json(b) => String::from_utf8(b.to_vec()).unwrap(),
                other => panic!("not JSON: {other:?}"),
            })
            .collect()
    }

    fn bad_reason(record: &Record) -> &str {
        match record {
            Record::Bad { reason, .. } => reason,
            other => panic!("not bad: {other:?}"),
        }
    }

    #[test]
    fn values_are_framed_however_the_reads_split_them() {
        let values = [
            mp(&Value::Array(vec![
                "t".into(),
                1.into(),
                map(vec![("a", "x".repeat(300).into())]),
            ])),
            mp(&Value::Nil),
            mp(&Value::Array(vec![
                "t".into(),
                Value::Binary(vec![7; 70_000]),
            ])),
        ];
        let stream: Vec<u8> = values.concat();
        let mut frames = Frames::new(1 << 20);
        let mut buf = Vec::new();
        let mut found = Vec::new();
        for &byte in &stream {
            buf.push(byte);
            while let Some(n) = frames.next(&buf).unwrap() {
                found.push(buf.drain(..n).collect::<Vec<u8>>());
            }
        }
        assert!(buf.is_empty());
        assert_eq!(found, values);
    }

    #[test]
    fn an_entry_larger_than_the_limit_breaks_the_stream_before_it_is_read() {
        let mut frames = Frames::new(1000);
        // A bin that declares 4 GiB: refused from its header.
        let header = [0x92, 0xa1, b't', 0xc6, 0xff, 0xff, 0xff, 0xff];
        let err = frames.next(&header).unwrap_err();
        assert!(err.0.contains("max_entry_bytes (1000 bytes)"), "{err:?}");
        // Many small values: refused once they pass the limit.
        let mut frames = Frames::new(1000);
        let mut buf = vec![0xdd, 0x00, 0x01, 0x00, 0x00]; // an array of 65536
        buf.extend(std::iter::repeat_n(0xc0, 999));
        assert!(frames.next(&buf).is_err());
    }

    #[test]
    fn message_mode_with_integer_time_eventtime_and_chunk() {
        let chunk = Value::from("p8n9gmxTQVC8/nh2wlKKeQ==");
        for time in [Value::from(1_700_000_000), event_time(1_700_000_000, 123)] {
            let frame = mp(&Value::Array(vec![
                "goff".into(),
                time,
                map(vec![("kind", "feature".into()), ("key", "k".into())]),
                map(vec![("chunk", chunk.clone()), ("size", 1.into())]),
            ]));
            let e = entry(&frame);
            assert_eq!(e.tag, "goff");
            assert_eq!(json(&e.records), [r#"{"kind":"feature","key":"k"}"#]);
            assert_eq!(e.chunk.as_deref(), Some(&mp(&chunk)[..]));
            let ack = rmpv::decode::read_value(&mut &super::ack(&mp(&chunk))[..]).unwrap();
            assert_eq!(ack, map(vec![("ack", chunk.clone())]));
        }
    }

    #[test]
    fn forward_mode_and_fluent_bit_metadata_time() {
        let frame = mp(&Value::Array(vec![
            "t".into(),
            Value::Array(vec![
                Value::Array(vec![1.into(), map(vec![("n", 1.into())])]),
                Value::Array(vec![
                    Value::Array(vec![event_time(5, 6), map(vec![])]),
                    map(vec![("n", 2.into())]),
                ]),
            ]),
        ]));
        let e = entry(&frame);
        assert_eq!(json(&e.records), [r#"{"n":1}"#, r#"{"n":2}"#]);
        assert_eq!(e.chunk, None);
    }

    fn packed(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| {
                mp(&Value::Array(vec![
                    event_time(1, 2),
                    map(vec![("i", i.into())]),
                ]))
            })
            .collect::<Vec<_>>()
            .concat()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn packed_forward_as_bin_or_str() {
        let stream: Vec<u8> = (0..3)
            .map(|i| mp(&Value::Array(vec![1.into(), map(vec![("i", i.into())])])))
            .collect::<Vec<_>>()
            .concat();
        let as_bin = mp(&Value::Array(vec![
            "t".into(),
            Value::Binary(stream.clone()),
        ]));
        // Older clients send the entries as a str (msgpack's "raw"), bytes that need not be
        // UTF-8: a str8 header, then the bytes.
        let mut as_str = vec![0x92, 0xa1, b't', 0xd9, stream.len() as u8];
        as_str.extend_from_slice(&stream);
        for frame in [as_bin, as_str] {
            let e = entry(&frame);
            assert_eq!(json(&e.records), [r#"{"i":0}"#, r#"{"i":1}"#, r#"{"i":2}"#]);
        }
    }

    #[test]
    fn compressed_packed_forward_with_concatenated_gzip_members() {
        let first = packed(2);
        let second = mp(&Value::Array(vec![3.into(), map(vec![("i", 2.into())])]));
        let compressed = [gzip(&first), gzip(&second)].concat();
        let frame = mp(&Value::Array(vec![
            "t".into(),
            Value::Binary(compressed),
            map(vec![("compressed", "gzip".into()), ("chunk", "c".into())]),
        ]));
        let e = entry(&frame);
        assert_eq!(json(&e.records), [r#"{"i":0}"#, r#"{"i":1}"#, r#"{"i":2}"#]);
    }

    #[test]
    fn a_gzip_bomb_breaks_the_stream() {
        let compressed = gzip(&vec![0xc0; 2 << 20]);
        let frame = mp(&Value::Array(vec![
            "t".into(),
            Value::Binary(compressed),
            map(vec![("compressed", "gzip".into())]),
        ]));
        let err = decode(&frame, &LIMITS, &[]).unwrap_err();
        assert!(
            err.0.contains("decompresses to more than max_entry_bytes"),
            "{err:?}"
        );
    }

    #[test]
    fn values_convert_to_json_exactly() {
        let record = map(vec![
            ("u64", Value::from(u64::MAX)),
            ("i64", Value::from(i64::MIN)),
            ("f64", Value::F64(0.1)),
            ("f32", Value::F32(1.1)),
            ("big", Value::F64(1e21)),
            ("whole", Value::F64(2.0)),
            ("t", true.into()),
            ("nil", Value::Nil),
            ("text", "a\"b\\c\n\u{1}é😀".into()),
            ("bin", Value::Binary(b"utf-8 text".to_vec())),
            (
                "arr",
                Value::Array(vec![1.into(), map(vec![("x", Value::Array(vec![]))])]),
            ),
        ]);
        let frame = mp(&Value::Array(vec!["t".into(), 0.into(), record]));
        let got = json(&entry(&frame).records).remove(0);
        assert_eq!(
            got,
            r#"{"u64":18446744073709551615,"i64":-9223372036854775808,"f64":0.1,"f32":1.1,"big":1e+21,"whole":2.0,"t":true,"nil":null,"text":"a\"b\\c\n\u0001é😀","bin":"utf-8 text","arr":[1,{"x":[]}]}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(parsed["u64"].as_u64(), Some(u64::MAX));
        assert_eq!(parsed["f32"].as_f64().map(|f| f as f32), Some(1.1f32));
    }

    #[test]
    fn records_json_cannot_hold_are_bad_and_the_entry_goes_on() {
        let good = map(vec![("ok", 1.into())]);
        let cases: Vec<(Value, &str)> = vec![
            (
                map(vec![("a", Value::Ext(5, vec![1, 2]))]),
                "record field `a`: an ext value (type 5)",
            ),
            (
                map(vec![("a", map(vec![("b", Value::F64(f64::NAN))]))]),
                "record field `a.b`: a float JSON cannot hold (NaN)",
            ),
            (
                Value::Map(vec![(1.into(), 2.into())]),
                "a map key that is an integer",
            ),
            (
                map(vec![(
                    "l",
                    Value::Array(vec![1.into(), Value::Binary(vec![0xff])]),
                )]),
                "record field `l[1]`: a bin value that is not UTF-8 text",
            ),
            (Value::from("a string"), "the record is a string, not a map"),
        ];
        for (bad, want) in cases {
            let frame = mp(&Value::Array(vec![
                "t".into(),
                Value::Array(vec![
                    Value::Array(vec![1.into(), bad]),
                    Value::Array(vec![1.into(), good.clone()]),
                ]),
            ]));
            let e = entry(&frame);
            assert!(
                bad_reason(&e.records[0]).contains(want),
                "{:?} lacks {want:?}",
                e.records[0]
            );
            assert_eq!(json(&e.records[1..]), [r#"{"ok":1}"#]);
        }
    }

    #[test]
    fn a_string_that_is_not_utf8_and_a_bad_time_are_bad_records() {
        // fixmap 1, "s": a fixstr of 1 byte 0xff.
        let record = [0x81, 0xa1, b's', 0xa1, 0xff];
        let mut frame = vec![0x93, 0xa1, b't', 0x01];
        frame.extend_from_slice(&record);
        let e = entry(&frame);
        assert!(bad_reason(&e.records[0]).contains("not valid UTF-8"));
        let frame = mp(&Value::Array(vec![
            "t".into(),
            Value::Array(vec![Value::Array(vec!["noon".into(), map(vec![])])]),
        ]));
        assert!(bad_reason(&entry(&frame).records[0]).contains("the time is a string"));
        let frame = mp(&Value::Array(vec![
            "t".into(),
            Value::Ext(1, vec![0; 8]),
            map(vec![]),
        ]));
        assert!(bad_reason(&entry(&frame).records[0]).contains("not EventTime"));
    }

    #[test]
    fn packed_entries_cut_short_leave_a_bad_record_for_the_rest() {
        let mut stream = packed(2);
        let whole = stream.len();
        stream.extend_from_slice(&packed(1)[..4]);
        let frame = mp(&Value::Array(vec![
            "t".into(),
            Value::Binary(stream.clone()),
        ]));
        let e = entry(&frame);
        assert_eq!(json(&e.records[..2]), [r#"{"i":0}"#, r#"{"i":1}"#]);
        match &e.records[2] {
            Record::Bad { raw, len, reason } => {
                assert_eq!(&raw[..], &stream[whole..]);
                assert_eq!(*len, 4);
                assert!(reason.contains("middle of an entry"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_record_longer_than_max_line_bytes_is_oversized() {
        let frame = mp(&Value::Array(vec![
            "t".into(),
            1.into(),
            map(vec![("a", "x".repeat(5000).into())]),
        ]));
        match &entry(&frame).records[0] {
            Record::Oversized { excerpt, len } => {
                assert_eq!(*len, 5000 + 8);
                assert_eq!(excerpt.len(), OVERSIZED_EXCERPT);
                assert!(excerpt.starts_with(b"{\"a\":\"xxx"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_is_not_a_forward_entry_breaks_the_stream() {
        assert!(matches!(
            decode(&[0xc0], &LIMITS, &[]),
            Ok(Message::Heartbeat)
        ));
        // A JSON line sent to the Forward port: `{` is the integer 123.
        let err = decode(b"{", &LIMITS, &[]).unwrap_err();
        assert!(
            err.0.contains("not a Forward protocol entry: an integer"),
            "{err:?}"
        );
        let err = decode(&mp(&Value::Array(vec![1.into(), 2.into()])), &LIMITS, &[]).unwrap_err();
        assert!(err.0.contains("the tag is an integer"), "{err:?}");
        let err = decode(
            &mp(&Value::Array(vec!["t".into(), true.into()])),
            &LIMITS,
            &[],
        )
        .unwrap_err();
        assert!(err.0.contains("second element is a boolean"), "{err:?}");
    }

    /// A record whose envelope field holds an event in GO Feature Flag's encoding goes as
    /// that event; the sinks decode the line exactly as they decode the record's JSON, for
    /// records of every shape around it (other fields, `kind`, the field twice, both
    /// envelope fields, bin text, values JSON cannot hold, JSON about `max_line_bytes`).
    #[test]
    fn an_event_in_its_envelope_goes_as_it_is_and_decodes_as_its_json_would() {
        use crate::event::{envelope_fields, Decoded, Decoder, EventType, FromLine, Schema};
        use rand::{Rng, SeedableRng};
        let long = format!(
            r#"{{"kind":"feature","contextKind":"user","userKey":"u","creationDate":1,"key":"k","variation":"v","value":"{}","default":false,"version":"1","source":"SERVER"}}"#,
            "\\\"x".repeat(40)
        );
        let texts = [
            r#"{"kind":"feature","contextKind":"user","userKey":"u1","creationDate":1717000000,"key":"dark-mode","variation":"on","value":true,"default":false,"version":"1","source":"SERVER"}"#,
            r#"{"kind":"feature","contextKind":"anonymousUser","userKey":"u2","creationDate":1717000001,"key":"welcome","variation":"fr","value":"Bienvenue \"VIP\" à bord \\ \u00e9","default":false,"version":"","source":"SERVER"}"#,
            r#"{"kind":"tracking","contextKind":"anonymousUser","userKey":"ABCD","creationDate":1617970547,"key":"random-key","evaluationContext":{"targetingKey":"ABCD","toto":123},"trackingEventDetails":{"event":"123"}}"#,
            &long,
            // Not in GO Feature Flag's encoding: the record goes as JSON.
            r#"{"kind": "feature", "key": "k"}"#,
            r#"{"key":"k","kind":"feature","contextKind":"user","userKey":"u","creationDate":1,"variation":"v","value":1,"default":false,"version":"1","source":"SERVER"}"#,
            "plain text",
            "",
        ];
        let limits = Limits {
            max_line_bytes: 700,
            max_entry_bytes: 1 << 20,
        };
        let outcome =
            |d: &mut Decoder, line: &[u8], fields: &[String]| match d.decode_line(line, fields) {
                Ok(FromLine::Itself(len)) => Ok(line[..len].to_vec()),
                Ok(FromLine::Decoded(Decoded::Event(event))) => Ok(event.to_vec()),
                Ok(FromLine::Decoded(other)) => Err(format!("{other:?}")),
                Err(e) => Err(e.0),
            };
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        // The source's `field`: none (`message`, then `log`), a name of its own, a name
        // GO Feature Flag's events have, a name JSON escapes.
        for field in [None, Some("payload"), Some("value"), Some("a\"b")] {
            let fields = envelope_fields(field);
            let mut went_as_event = 0;
            for _ in 0..20_000 {
                let pairs = (0..rng.gen_range(0..5))
                    .map(|_| {
                        let keys = [
                            "log", "message", "stream", "log", "message", "kind", "payload",
                            "value", "a\"b",
                        ];
                        let key = keys[rng.gen_range(0..keys.len())];
                        let text = texts[rng.gen_range(0..texts.len())];
                        let value = match rng.gen_range(0..24) {
                            0..=17 => Value::from(text),
                            18 => Value::Binary(text.as_bytes().to_vec()),
                            19 => Value::from(42),
                            20 => Value::Ext(5, vec![1]),
                            21 => Value::Binary(vec![0xff, 0xfe]),
                            _ => map(vec![("a", Value::from(1.5))]),
                        };
                        (Value::from(key), value)
                    })
                    .collect();
                let record = mp(&Value::Map(pairs));
                let json = record_of(&[0x00], &record, &record, &limits, &[]);
                let direct = record_of(&[0x00], &record, &record, &limits, &fields);
                match (&direct, &json) {
                    (Record::Event(event), Record::Json(line)) => {
                        went_as_event += 1;
                        for schema in [Schema::Goff, Schema::Any] {
                            let mut d =
                                Decoder::new(schema, &[EventType::Feature, EventType::Tracking]);
                            let (a, b) = (
                                outcome(&mut d, event, &fields),
                                outcome(&mut d, line, &fields),
                            );
                            assert_eq!(
                            a,
                            b,
                            "{field:?} {schema:?}: the event decodes unlike its record's JSON {}",
                            String::from_utf8_lossy(line)
                        );
                            assert!(a.is_ok(), "{a:?}");
                        }
                    }
                    (Record::Event(_), other) => {
                        panic!("went as its event, but its JSON is {other:?}")
                    }
                    _ => assert_eq!(direct, json),
                }
            }
            if field == Some("value") {
                // The sinks read `value` as the event's own field, never as an envelope.
                assert_eq!(went_as_event, 0);
            } else {
                assert!(went_as_event > 300, "{field:?}: {went_as_event}");
            }
        }
    }
}
