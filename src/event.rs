//! What flows between stages, and decoding lines into events.
//!
//! A source reads raw lines and hands them on in [`Block`]s (one read's worth of lines,
//! no copy per line). Each sink decodes a block with its own [`Decoder`] (schema, event
//! types, envelope field) into [`Item`]s: an encoded event, or a marker for a line that
//! carried no event (bad input, filtered out). Markers keep their file position so that
//! acknowledgements stay in order: a file offset moves past a bad line only after
//! everything before it was delivered.

mod canonical;
mod foreign;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A file position that is acknowledged once every sink has delivered what precedes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Which of the sink's inputs the line came through (see [`Block::input`]).
    pub input: usize,
    /// The tailed file, as the source numbers them.
    pub file: u64,
    /// Byte offset just past the line.
    pub offset: u64,
}

/// Lines from one place (a file, a connection, stdin), in order.
#[derive(Debug, Clone)]
pub struct Block {
    /// The source's name in the config.
    pub source_name: Arc<str>,
    /// Where the lines come from: a path, a peer address, `stdin`.
    pub origin: Arc<str>,
    /// For file sources: the file, as the source numbers them, to build [`Ack`]s.
    pub file: Option<u64>,
    /// Which of the receiving sink's inputs this block came through; set by
    /// [`crate::source::Output`] for each sink, so the sink finds its acknowledgement handle.
    pub input: usize,
    /// Fields that may wrap an event (see [`envelope_fields`]).
    pub envelope: Arc<[String]>,
    pub lines: Vec<Line>,
}

/// One line without its terminator (`\n`, `\r\n`).
#[derive(Debug, Clone)]
pub struct Line {
    pub bytes: Bytes,
    /// 1-based line number in its origin.
    pub number: u64,
    /// Byte offset just past the line's terminator.
    pub end: u64,
    /// Set when the line was rejected before decoding (longer than `max_line_bytes`);
    /// `bytes` then holds only its start.
    pub oversized: Option<u64>,
    /// Set for a place that could not be read at all (a directory, an unreadable file):
    /// the line stands for it, so that it is counted and dead-lettered like a bad line.
    pub problem: Option<String>,
}

/// What a sink batches: an encoded event, or only a position to acknowledge.
#[derive(Debug, Clone)]
pub struct Item {
    pub event: Option<Bytes>,
    pub ack: Option<Ack>,
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
    pub fn as_str(self) -> &'static str {
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

/// What decoding one line gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Event(Bytes),
    /// A valid event of a kind this sink does not send.
    Filtered,
    /// A blank line: nothing to send, nothing wrong.
    Empty,
}

/// Decodes lines for one sink.
#[derive(Debug)]
pub struct Decoder {
    schema: Schema,
    send_feature: bool,
    send_tracking: bool,
    /// Encoded events are split off this buffer: one allocation per many events.
    arena: BytesMut,
}

/// Below glibc's mmap threshold, so that chunks are reused rather than mapped anew.
const ARENA_CHUNK: usize = 64 * 1024;

impl Decoder {
    pub fn new(schema: Schema, event_types: &[EventType]) -> Self {
        Decoder {
            schema,
            send_feature: event_types.contains(&EventType::Feature),
            send_tracking: event_types.contains(&EventType::Tracking),
            arena: BytesMut::new(),
        }
    }

    /// Room in the scratch buffer for an event of about `len` bytes, taken a chunk at a time.
    fn make_room(&mut self, len: usize) {
        if self.arena.capacity() - self.arena.len() < len + 64 {
            self.arena.reserve(ARENA_CHUNK.max(len * 2));
        }
    }

    fn wants(&self, kind: EventType) -> bool {
        match kind {
            EventType::Feature => self.send_feature,
            EventType::Tracking => self.send_tracking,
        }
    }

    /// Decodes one line (without its terminator). `envelope_fields` name the fields that
    /// may wrap the event when it has no `kind` (see [`envelope_fields`]).
    ///
    /// An event that comes out exactly as it went in (GO Feature Flag's own encoding) is
    /// not copied: the result shares `whole`'s buffer.
    pub fn decode(
        &mut self,
        whole: &Bytes,
        envelope_fields: &[String],
    ) -> Result<Decoded, Invalid> {
        let line: &[u8] = whole.strip_suffix(b"\r").unwrap_or(whole);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(Decoded::Empty);
        }
        let text = std::str::from_utf8(line).map_err(|e| {
            explain(
                line,
                invalid(format!("not valid UTF-8 (at byte {})", e.valid_up_to())),
            )
        })?;
        if self.schema == Schema::Goff {
            if let Some(kind) = canonical::check(line) {
                // Already in GO Feature Flag's encoding: the line is the event.
                return Ok(if self.wants(kind) {
                    Decoded::Event(whole.slice(..line.len()))
                } else {
                    Decoded::Filtered
                });
            }
        }
        let outer = Fields::parse(text, envelope_fields).map_err(|e| explain(line, e))?;
        let inner_text = match (outer.kind, outer.envelope) {
            (None, Some(raw)) => Some(envelope_inner(raw)?),
            _ => None,
        };
        if let (Some(t), Schema::Goff) = (&inner_text, self.schema) {
            if let Some(kind) = canonical::check(t.as_bytes()) {
                // A shipper's envelope around an event in GO Feature Flag's encoding.
                if !self.wants(kind) {
                    return Ok(Decoded::Filtered);
                }
                self.make_room(t.len());
                self.arena.extend_from_slice(t.as_bytes());
                return Ok(Decoded::Event(self.arena.split().freeze()));
            }
        }
        let inner = match &inner_text {
            Some(t) => Some(Fields::parse(t, &[])?),
            None => None,
        };
        let (fields, json) = match (&inner, &inner_text) {
            (Some(f), Some(t)) => (f, t.as_ref()),
            _ => (&outer, text),
        };
        self.make_room(json.len());
        match self.schema {
            Schema::Any => compact(json.as_bytes(), &mut self.arena),
            Schema::Goff => {
                let kind = fields.kind()?;
                if !self.wants(kind) {
                    return Ok(Decoded::Filtered);
                }
                if let Err(e) = fields.encode_goff(kind, &mut self.arena) {
                    self.arena.clear();
                    return Err(e);
                }
            }
        }
        if self.arena[..] == *line {
            self.arena.clear();
            return Ok(Decoded::Event(whole.slice(..line.len())));
        }
        Ok(Decoded::Event(self.arena.split().freeze()))
    }
}

/// The reason a line is not an event, led by what to change when the line is clearly
/// another format (CSV, parquet, syslog, msgpack). Only for lines that failed to decode.
pub(crate) fn explain(line: &[u8], why: Invalid) -> Invalid {
    match foreign::Foreign::recognise(line) {
        Some(format) => invalid(format!("{}; {why}", format.advice())),
        None => why,
    }
}

/// The fields a shipper wraps a line in, in order of preference: the source's `field`
/// when set, else Vector's `message` and Fluent Bit's `log`.
pub fn envelope_fields(field: Option<&str>) -> Arc<[String]> {
    match field {
        Some(f) => Arc::from(vec![f.to_owned()]),
        None => Arc::from(vec!["message".to_owned(), "log".to_owned()]),
    }
}

/// The object held by an envelope field: a string holding JSON (Vector's `message`,
/// Fluent Bit's `log`), or the object itself.
fn envelope_inner(raw: &RawValue) -> Result<Cow<'_, str>, Invalid> {
    let text = raw.get();
    if text.starts_with('{') {
        return Ok(Cow::Borrowed(text));
    }
    let inner: Cow<'_, str> = serde_json::from_str(text).map_err(|_| {
        invalid("has no `kind` and its envelope field is not a string or an object")
    })?;
    if !inner.trim_start().starts_with('{') {
        return Err(invalid(
            "has no `kind` and its envelope field does not hold a JSON object",
        ));
    }
    Ok(inner)
}

/// The fields flaghook looks at, borrowed from the line (`RawValue` keeps their exact text).
#[derive(Default)]
struct Fields<'a> {
    kind: Option<&'a RawValue>,
    context_kind: Option<&'a RawValue>,
    user_key: Option<&'a RawValue>,
    creation_date: Option<&'a RawValue>,
    key: Option<&'a RawValue>,
    variation: Option<&'a RawValue>,
    value: Option<&'a RawValue>,
    default: Option<&'a RawValue>,
    version: Option<&'a RawValue>,
    source: Option<&'a RawValue>,
    metadata: Option<&'a RawValue>,
    evaluation_context: Option<&'a RawValue>,
    tracking_event_details: Option<&'a RawValue>,
    /// The first envelope field found, by preference.
    envelope: Option<&'a RawValue>,
}

impl<'a> Fields<'a> {
    fn parse(text: &'a str, envelope_fields: &[String]) -> Result<Self, Invalid> {
        if !text.trim_start().starts_with('{') {
            // Still parse, so that "not JSON" and "not an object" are told apart.
            serde_json::from_str::<IgnoredAny>(text).map_err(json_error)?;
            return Err(invalid("not a JSON object"));
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let fields = FieldsSeed { envelope_fields }
            .deserialize(&mut de)
            .map_err(json_error)?;
        de.end().map_err(json_error)?;
        Ok(fields)
    }

    fn kind(&self) -> Result<EventType, Invalid> {
        let raw = self.kind.ok_or_else(|| invalid("missing field `kind`"))?;
        match raw.get() {
            r#""feature""# => Ok(EventType::Feature),
            r#""tracking""# => Ok(EventType::Tracking),
            other => Err(invalid(format!(
                "field `kind` is {other}; expected \"feature\" or \"tracking\""
            ))),
        }
    }

    /// Writes the event compactly in GO Feature Flag's field order, with only its fields.
    fn encode_goff(&self, kind: EventType, out: &mut BytesMut) -> Result<(), Invalid> {
        let user_key = required_string(self.user_key, "userKey")?;
        let key = required_string(self.key, "key")?;
        let creation_date = self
            .creation_date
            .ok_or_else(|| invalid("missing field `creationDate`"))?;
        if creation_date.get().parse::<i64>().is_err() {
            return Err(invalid(format!(
                "field `creationDate` must be an integer (Unix seconds), got {}",
                creation_date.get()
            )));
        }
        let context_kind = optional_string(self.context_kind, "contextKind")?;
        out.put_slice(match kind {
            EventType::Feature => br#"{"kind":"feature""#,
            EventType::Tracking => br#"{"kind":"tracking""#,
        });
        if let Some(ck) = context_kind.filter(|ck| *ck != r#""""#) {
            put_field(out, "contextKind", ck.as_bytes());
        }
        put_field(out, "userKey", user_key.as_bytes());
        put_field(out, "creationDate", creation_date.get().as_bytes());
        put_field(out, "key", key.as_bytes());
        match kind {
            EventType::Feature => self.encode_feature_tail(out)?,
            EventType::Tracking => self.encode_tracking_tail(out)?,
        }
        out.put_u8(b'}');
        Ok(())
    }

    fn encode_feature_tail(&self, out: &mut BytesMut) -> Result<(), Invalid> {
        let variation = optional_string(self.variation, "variation")?.unwrap_or(r#""""#);
        let default = match self.default.map(RawValue::get) {
            None | Some("null") => "false",
            Some(b @ ("true" | "false")) => b,
            Some(other) => {
                return Err(invalid(format!(
                    "field `default` must be a boolean, got {other}"
                )))
            }
        };
        let version = optional_string(self.version, "version")?.unwrap_or(r#""""#);
        let source = optional_string(self.source, "source")?.unwrap_or(r#""""#);
        let metadata = optional_object(self.metadata, "metadata")?;
        put_field(out, "variation", variation.as_bytes());
        out.put_slice(br#","value":"#);
        match self.value {
            Some(v) => compact(v.get().as_bytes(), out),
            None => out.put_slice(b"null"),
        }
        put_field(out, "default", default.as_bytes());
        put_field(out, "version", version.as_bytes());
        put_field(out, "source", source.as_bytes());
        if let Some(m) = metadata {
            let start = out.len();
            out.put_slice(br#","metadata":"#);
            compact(m.get().as_bytes(), out);
            if &out[out.len() - 2..] == b"{}" {
                out.truncate(start); // omitted when empty, as GO Feature Flag does
            }
        }
        Ok(())
    }

    /// GO Feature Flag never omits the two maps (no `omitempty`) and writes a nil map as
    /// `null`: so `null` stays `null`, `{}` stays `{}`, and a missing map is sent as `null`.
    fn encode_tracking_tail(&self, out: &mut BytesMut) -> Result<(), Invalid> {
        let context = optional_object(self.evaluation_context, "evaluationContext")?;
        let details = optional_object(self.tracking_event_details, "trackingEventDetails")?;
        for (name, raw) in [
            ("evaluationContext", context),
            ("trackingEventDetails", details),
        ] {
            out.put_slice(b",\"");
            out.put_slice(name.as_bytes());
            out.put_slice(b"\":");
            match raw {
                Some(v) => compact(v.get().as_bytes(), out),
                None => out.put_slice(b"null"),
            }
        }
        Ok(())
    }
}

fn put_field(out: &mut BytesMut, name: &str, raw_value: &[u8]) {
    out.put_slice(b",\"");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\":");
    out.put_slice(raw_value);
}

fn required_string<'a>(raw: Option<&'a RawValue>, name: &str) -> Result<&'a str, Invalid> {
    optional_string(raw, name)?.ok_or_else(|| invalid(format!("missing field `{name}`")))
}

/// The raw text of a string field (quotes and escapes included), or `None` when absent or null.
fn optional_string<'a>(raw: Option<&'a RawValue>, name: &str) -> Result<Option<&'a str>, Invalid> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(s) if s.starts_with('"') => Ok(Some(s)),
        Some(other) => Err(invalid(format!(
            "field `{name}` must be a string, got {}",
            excerpt(other)
        ))),
    }
}

fn optional_object<'a>(
    raw: Option<&'a RawValue>,
    name: &str,
) -> Result<Option<&'a RawValue>, Invalid> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) if r.get().starts_with('{') => Ok(Some(r)),
        Some(r) => Err(invalid(format!(
            "field `{name}` must be an object, got {}",
            excerpt(r.get())
        ))),
    }
}

fn excerpt(text: &str) -> String {
    let mut end = text.len().min(40);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}...", &text[..end])
    } else {
        text.to_owned()
    }
}

fn json_error(e: serde_json::Error) -> Invalid {
    let what = match e.classify() {
        serde_json::error::Category::Eof => "truncated JSON",
        _ => "not valid JSON",
    };
    invalid(format!("{what}: {e}"))
}

/// Appends `json` (valid JSON) without the whitespace between tokens.
pub fn compact(json: &[u8], out: &mut BytesMut) {
    if !json
        .iter()
        .any(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
    {
        out.put_slice(json);
        return;
    }
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            continue;
        } else if b == b'"' {
            in_string = true;
        }
        out.put_u8(b);
    }
}

/// Fills [`Fields`] from a JSON object in one pass, keeping the first envelope field found
/// among `envelope_fields` in their order of preference.
struct FieldsSeed<'s> {
    envelope_fields: &'s [String],
}

impl<'de> DeserializeSeed<'de> for FieldsSeed<'_> {
    type Value = Fields<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed<'_> {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        let mut envelope_rank = usize::MAX;
        while let Some(name) = map.next_key_seed(KeySeed)? {
            let slot = match name.as_ref() {
                "kind" => &mut fields.kind,
                "contextKind" => &mut fields.context_kind,
                "userKey" => &mut fields.user_key,
                "creationDate" => &mut fields.creation_date,
                "key" => &mut fields.key,
                "variation" => &mut fields.variation,
                "value" => &mut fields.value,
                "default" => &mut fields.default,
                "version" => &mut fields.version,
                "source" => &mut fields.source,
                "metadata" => &mut fields.metadata,
                "evaluationContext" => &mut fields.evaluation_context,
                "trackingEventDetails" => &mut fields.tracking_event_details,
                other => match self.envelope_fields.iter().position(|f| f == other) {
                    Some(rank) if rank < envelope_rank => {
                        envelope_rank = rank;
                        &mut fields.envelope
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                },
            };
            *slot = Some(map.next_value::<&'de RawValue>()?);
        }
        Ok(fields)
    }
}

/// An object key, borrowed from the line unless it has escapes. (`Cow<str>`'s own
/// `Deserialize` always allocates.)
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// The fast path and the general encoder, each alone, for the differential fuzz target
/// (`fuzz/fuzz_targets/decode_line.rs`). Not part of flaghook's API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// The fast path's verdict: `Some(kind)` when `line` is taken as it is.
    pub fn canonical_kind(line: &[u8]) -> Option<EventType> {
        canonical::check(line)
    }

    /// What the general path encodes `line` (one JSON object, no envelope) to, for `goff`.
    pub fn encode_goff(line: &str) -> Result<Bytes, Invalid> {
        let fields = Fields::parse(line, &[])?;
        let mut out = BytesMut::new();
        fields.encode_goff(fields.kind()?, &mut out)?;
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E1: &str = r#"{"kind":"feature","contextKind":"anonymousUser","userKey":"ABCD","creationDate":1617970547,"key":"random-key","variation":"Default","value":"YO","default":false,"version":"","source":"SERVER"}"#;
    const TRACK: &str = r#"{"kind":"tracking","contextKind":"anonymousUser","userKey":"ABCD","creationDate":1617970547,"key":"random-key","evaluationContext":{"targetingKey":"ABCD","toto":123},"trackingEventDetails":{"event":"123"}}"#;

    fn goff() -> Decoder {
        Decoder::new(Schema::Goff, &[EventType::Feature, EventType::Tracking])
    }

    fn decode(d: &mut Decoder, line: &[u8]) -> Result<Decoded, Invalid> {
        d.decode(&Bytes::copy_from_slice(line), &envelope_fields(None))
    }

    fn ok(d: &mut Decoder, line: &str) -> String {
        match decode(d, line.as_bytes()) {
            Ok(Decoded::Event(b)) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn goff_compact_events_come_out_byte_identical() {
        let mut d = goff();
        assert_eq!(ok(&mut d, E1), E1);
        assert_eq!(ok(&mut d, TRACK), TRACK);
        let with_meta = r#"{"kind":"feature","contextKind":"anonymousUser","userKey":"ABCD","creationDate":1617970547,"key":"random-key","variation":"Default","value":{"bool":true,"float":1.23,"int":1,"string":"string"},"default":false,"version":"","source":"","metadata":{"metadata1":"metadata1","metadata2":24,"metadata3":true}}"#;
        assert_eq!(ok(&mut d, with_meta), with_meta);
    }

    /// GO Feature Flag writes a nil `evaluationContext` / `trackingEventDetails` as `null`
    /// (no `omitempty` on them): `null` stays `null` and `{}` stays `{}`.
    #[test]
    fn tracking_maps_keep_null_and_empty_as_they_came() {
        let mut d = goff();
        let nulls = TRACK
            .replace(r#"{"targetingKey":"ABCD","toto":123}"#, "null")
            .replace(r#"{"event":"123"}"#, "null");
        assert!(nulls.contains(r#""evaluationContext":null,"trackingEventDetails":null}"#));
        assert_eq!(ok(&mut d, &nulls), nulls);
        let empty = nulls.replace("null", "{}");
        assert_eq!(ok(&mut d, &empty), empty);
        let mixed = TRACK.replace(r#"{"event":"123"}"#, "null");
        assert_eq!(ok(&mut d, &mixed), mixed);
        // The general path (spaces, other order) gives the same bytes.
        let spaced = r#"{ "trackingEventDetails" : null, "evaluationContext": { }, "key":"random-key", "creationDate":1617970547, "userKey":"ABCD", "contextKind":"anonymousUser", "kind":"tracking" }"#;
        assert_eq!(ok(&mut d, spaced), nulls.replacen("null", "{}", 1));
        // A map left out is a nil map to GO Feature Flag: `null`.
        let missing =
            r#"{"kind":"tracking","userKey":"ABCD","creationDate":1617970547,"key":"random-key"}"#;
        assert_eq!(
            ok(&mut d, missing),
            r#"{"kind":"tracking","userKey":"ABCD","creationDate":1617970547,"key":"random-key","evaluationContext":null,"trackingEventDetails":null}"#
        );
    }

    #[test]
    fn reorders_compacts_and_drops_extra_fields() {
        let mut d = goff();
        let messy = r#"{ "source":"SERVER", "host":"h1", "version":"", "default":false, "value": "YO", "variation":"Default","key":"random-key","creationDate":1617970547,"userKey":"ABCD","contextKind":"anonymousUser","kind":"feature","timestamp":"x"}"#;
        assert_eq!(ok(&mut d, messy), E1);
        let escaped_key = E1.replacen(r#""kind""#, r#""ki\u006ed""#, 1);
        assert_eq!(ok(&mut d, &escaped_key), E1);
    }

    #[test]
    fn unwraps_vector_and_fluent_bit_envelopes() {
        let mut d = goff();
        let inner = serde_json::to_string(E1).unwrap();
        let vector =
            format!(r#"{{"host":"h","message":{inner},"source_type":"file","timestamp":"t"}}"#);
        assert_eq!(ok(&mut d, &vector), E1);
        let fluent = format!(r#"{{"date":1700000000.5,"log":{inner}}}"#);
        assert_eq!(ok(&mut d, &fluent), E1);
        let mut custom = goff();
        let line = format!(r#"{{"payload":{E1}}}"#);
        let got = custom
            .decode(&Bytes::from(line), &envelope_fields(Some("payload")))
            .unwrap();
        assert_eq!(got, Decoded::Event(Bytes::from(E1)));
    }

    #[test]
    fn rejects_bad_lines_with_a_reason() {
        let mut d = goff();
        let cases: &[(&[u8], &str)] = &[
            (b"\xff\xfe{}", "UTF-8"),
            (b"not json", "JSON"),
            (b"[1,2]", "not a JSON object"),
            (b"}{", "JSON"),
            (
                br#"{"kind":"feature","userKey":"a","creationDate":1}"#,
                "`key`",
            ),
            (
                br#"{"kind":"feature","userKey":"a","key":"k","creationDate":"1"}"#,
                "creationDate",
            ),
            (
                br#"{"kind":"other","userKey":"a","key":"k","creationDate":1}"#,
                "kind",
            ),
            (
                br#"{"kind":"feature","userKey":"a","key":"k","creationDate":1} x"#,
                "JSON",
            ),
            (b"{\"a\":\"\0\"}", "JSON"),
        ];
        for (line, needle) in cases {
            let err = decode(&mut d, line).unwrap_err();
            assert!(
                err.0.contains(needle) && !err.0.contains("looks like"),
                "{:?}: {err}",
                String::from_utf8_lossy(line)
            );
        }
        let deep = "[".repeat(100_000);
        assert!(decode(&mut d, format!("{{\"a\":{deep}").as_bytes()).is_err());
    }

    /// The reason for a line that is not an event.
    fn reason(line: &[u8]) -> String {
        decode(&mut goff(), line).unwrap_err().0
    }

    fn assert_advice(line: &[u8], looks_like: &str, fix: &str) {
        let why = reason(line);
        let shown = String::from_utf8_lossy(line);
        assert!(why.starts_with("looks like "), "{shown:?}: {why}");
        assert!(why.contains(looks_like), "{shown:?}: {why}");
        assert!(why.contains(fix), "{shown:?}: {why}");
        // The decode error itself is still there.
        assert!(why.contains("not valid "), "{shown:?}: {why}");
    }

    fn assert_no_advice(line: &[u8]) {
        let why = reason(line);
        assert!(
            !why.contains("looks like"),
            "{:?}: {why}",
            String::from_utf8_lossy(line)
        );
    }

    #[test]
    fn goff_csv_lines_are_recognised() {
        let csv = "GO Feature Flag's CSV format";
        let fix = "set the exporter's `format` to `json`";
        for line in [
            "feature;anonymousUser;ABCD;1617970547;random-key;Default;YO;false;SERVER",
            "kind;contextKind;userKey;creationDate;key;variation;value;default;source",
            "tracking;user;ABCD;1617970547;map[targetingKey:ABCD];map[event:123]",
            "feature;user;caf\u{e9};1;k\r",
        ] {
            assert_advice(line.as_bytes(), csv, fix);
        }
        assert_advice(b"feature;user;\xe9t\xe9;1;k", csv, fix); // Latin-1: not UTF-8
        for line in [
            "feature;user",
            "a;b;c",
            r#"{"kind":"feature";"userKey":"a;b;c"}"#,
            r#"  ["a;b;c;d"]x"#,
            r#""a;b;c;d""#,
        ] {
            assert_no_advice(line.as_bytes());
        }
    }

    #[test]
    fn parquet_files_are_recognised() {
        let fix = "set the GO Feature Flag exporter's `format` to `json`";
        for line in [
            &b"PAR1\x15\x04\x15\xa0\x01\x15\x9c\x01L\x15"[..],
            b"PAR1\x15\x00\x15\x1c\x15\x1c,",
            b"\x19\x1c\x00\x00\x1cPAR1", // the footer: metadata length, then the magic
            b"PAR1",
        ] {
            assert_advice(line, "a parquet file (`PAR1` magic)", fix);
        }
        for line in ["PAR1 was the first step", "step PAR1", "xPAR1\t"] {
            assert_no_advice(line.as_bytes());
        }
    }

    #[test]
    fn syslog_framed_lines_are_recognised() {
        let fix = r#"syslog-ng `template("$MSG\n")`"#;
        for line in [
            format!("<13>Nov 29 12:00:00 web-1 goff: {E1}"),
            format!("<134>Jan  5 01:02:03 web-1 goff[42]: {E1}"),
            format!("<14>1 2024-11-29T12:00:00.000Z web-1 goff - - - {E1}"),
            format!("<0>2024-11-29T12:00:00+01:00 web-1 goff: {E1}"),
            format!("312 <191>1 - - - - - - {E1}"),
            "<13>Nov 29 12:00:00 web-1 goff: feature;user;a;1;k".to_owned(),
        ] {
            assert_advice(line.as_bytes(), "a syslog-framed line", fix);
        }
        for line in [
            "<192>Nov 29 12:00:00 h t: x",
            "<013>Nov 29 12:00:00 h t: x",
            "<1a>Nov 29 12:00:00 h t: x",
            "<13>November rain",
            "<13> Nov 29",
            "<b>bold</b>",
            "12 13 <14>1 x",
        ] {
            assert_no_advice(line.as_bytes());
        }
    }

    /// A Fluent Bit record as its `tcp` output sends it with `Format msgpack`:
    /// `[time, {"log": line}]`, or `[[time, {}], {"log": line}]` since Fluent Bit 2.1.
    fn fluent_bit_record(time: &[u8], nested: bool, line: &str) -> Vec<u8> {
        let mut record = vec![0x92];
        if nested {
            record.push(0x92);
        }
        record.extend_from_slice(time);
        if nested {
            record.push(0x80);
        }
        record.extend_from_slice(&[0x81, 0xa3, b'l', b'o', b'g', 0xd9]);
        record.push(line.len() as u8);
        record.extend_from_slice(line.as_bytes());
        record
    }

    #[test]
    fn fluent_bit_msgpack_is_recognised() {
        const EVENT_TIME: &[u8] = b"\xd7\x00\x67\x49\x2c\x80\x1d\xcd\x65\x00";
        const FLOAT_TIME: &[u8] = b"\xcb\x41\xd9\xd2\x4b\x20\x07\x73\x59";
        const UINT_TIME: &[u8] = b"\xce\x67\x49\x2c\x80";
        let looks = "msgpack from Fluent Bit's `tcp` output";
        let fix = "set `Format json_lines`";
        let short = r#"{"kind":"feature"}"#;
        let one = fluent_bit_record(EVENT_TIME, false, short);
        let nested = fluent_bit_record(EVENT_TIME, true, short);
        for line in [
            one.clone(),
            nested.clone(),
            [one.clone(), nested.clone(), one.clone()].concat(),
            fluent_bit_record(FLOAT_TIME, false, short),
            fluent_bit_record(UINT_TIME, true, short),
            one[..5].to_vec(), // cut at a 0x0a byte inside the time
            // A piece of the stream that starts inside a record, after a cut.
            [&one[7..], &nested[..]].concat(),
        ] {
            assert_advice(&line, looks, fix);
        }
        let mut not_a_map = one.clone();
        not_a_map[11] = b'A';
        for line in [
            not_a_map,
            b"\x92\x41\x42".to_vec(),
            b"\x92\xd7\x01\x67\x49\x2c\x80\x1d\xcd\x65\x00\x81".to_vec(),
            // Float and integer times only count at the start of a line.
            [&b"\xff"[..], &fluent_bit_record(UINT_TIME, false, short)].concat(),
        ] {
            assert_no_advice(&line);
        }
        assert!(reason(b"\x92\x41\x42").starts_with("not valid UTF-8 (at byte 0)"));
    }

    #[test]
    fn a_rejected_event_leaves_nothing_behind() {
        let mut d = goff();
        let bad = r#"{"kind":"feature","userKey":"a","creationDate":1,"key":"k","default":"yes"}"#;
        assert!(decode(&mut d, bad.as_bytes()).is_err());
        let reordered =
            E1.replacen(r#""kind":"feature","#, "", 1)
                .replacen('{', r#"{"kind":"feature","#, 1);
        assert_eq!(ok(&mut d, &reordered), E1);
        let with_extra = format!(r#"{{"host":"h",{}"#, &E1[1..]);
        assert_eq!(ok(&mut d, &with_extra), E1);
    }

    /// The encoder's output for `line`, without the fast path.
    fn encoded(line: &str) -> Result<String, Invalid> {
        let fields = Fields::parse(line, &[])?;
        let mut out = BytesMut::new();
        fields.encode_goff(fields.kind()?, &mut out)?;
        Ok(String::from_utf8(out.to_vec()).unwrap())
    }

    proptest::proptest! {
        /// The fast path (a line already in GO Feature Flag's encoding is sent as it is)
        /// gives exactly what the encoder gives, for lines that are almost canonical too.
        #[test]
        fn fast_path_agrees_with_the_encoder(
            parts in proptest::collection::vec(0usize..12, 0..12),
            shuffle in proptest::bool::ANY,
            context in 0usize..3,
            default in 0usize..4,
            metadata in 0usize..4,
            value in 0usize..4,
            tracking in proptest::bool::ANY,
            details in 0usize..4,
        ) {
            let context = [None, Some(r#""""#), Some(r#""user""#)][context];
            let default = [r#"false"#, r#"true"#, r#"null"#, r#""no""#][default];
            let metadata = [None, Some("{}"), Some(r#"{"a":1}"#), Some(r#"{"a": 1}"#)][metadata];
            let value = [r#""Y O""#, r#"{"x":[1,2]}"#, r#"{"x": [1, 2]}"#, "null"][value];
            let mut fields: Vec<(String, String)> = vec![("kind".into(), if tracking { r#""tracking""# } else { r#""feature""# }.into())];
            if let Some(c) = context { fields.push(("contextKind".into(), c.into())); }
            fields.push(("userKey".into(), r#""ABCD""#.into()));
            fields.push(("creationDate".into(), "1617970547".into()));
            fields.push(("key".into(), r#""k""#.into()));
            if tracking {
                // Never omitted by GO Feature Flag; `null` for a nil map.
                fields.push(("evaluationContext".into(), value.replace(r#""Y O""#, "{}")));
                let details = [r#"{"e":"1"}"#, "null", "{}", r#"{ "e" : null }"#][details];
                fields.push(("trackingEventDetails".into(), details.into()));
            } else {
                fields.push(("variation".into(), r#""Default""#.into()));
                fields.push(("value".into(), value.into()));
                fields.push(("default".into(), default.into()));
                fields.push(("version".into(), r#""""#.into()));
                fields.push(("source".into(), r#""SERVER""#.into()));
                if let Some(m) = metadata { fields.push(("metadata".into(), m.into())); }
            }
            if shuffle {
                for (i, p) in parts.iter().enumerate() {
                    let (a, b) = (i % fields.len(), p % fields.len());
                    fields.swap(a, b);
                }
            }
            let line = format!("{{{}}}", fields.iter().map(|(k, v)| format!(r#""{k}":{v}"#)).collect::<Vec<_>>().join(","));
            let fast = match goff().decode(&Bytes::from(line.clone()), &envelope_fields(None)) {
                Ok(Decoded::Event(b)) => Ok(String::from_utf8(b.to_vec()).unwrap()),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            };
            proptest::prop_assert_eq!(fast, encoded(&line), "{}", line);
        }
    }

    /// A JSON value as Go holds it after `json.Unmarshal` into `interface{}`.
    #[derive(Debug, Clone)]
    enum GoValue {
        Null,
        Bool(bool),
        Number(f64),
        String(String),
        Array(Vec<GoValue>),
        Object(std::collections::BTreeMap<String, GoValue>),
    }

    /// A string as Go's `encoding/json` writes it: HTML characters, U+2028/U+2029 and control
    /// characters escaped, everything else as UTF-8.
    fn go_string(s: &str) -> String {
        let mut out = String::from('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                }
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// `json.Marshal` of a value: compact, map keys sorted.
    fn go_json(v: &GoValue) -> String {
        match v {
            GoValue::Null => "null".into(),
            GoValue::Bool(b) => b.to_string(),
            // Exponents as Go writes them too: `1e+21`, `1e-7`.
            GoValue::Number(n) if n.fract() == 0.0 && n.abs() < 1e21 => format!("{n:.0}"),
            GoValue::Number(n) => serde_json::to_string(n).unwrap(),
            GoValue::String(s) => go_string(s),
            GoValue::Array(items) => {
                let items: Vec<_> = items.iter().map(go_json).collect();
                format!("[{}]", items.join(","))
            }
            GoValue::Object(map) => go_map(map),
        }
    }

    fn go_map(map: &std::collections::BTreeMap<String, GoValue>) -> String {
        let fields: Vec<_> = map
            .iter()
            .map(|(k, v)| format!("{}:{}", go_string(k), go_json(v)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    /// A nil map is `null`, as `json.Marshal` writes it.
    fn go_nullable_map(map: &Option<std::collections::BTreeMap<String, GoValue>>) -> String {
        map.as_ref().map_or_else(|| "null".into(), go_map)
    }

    fn go_text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::prop_oneof![
            "[a-zA-Z0-9 _-]{0,8}",
            "[\"\\\\<>&/\\x00-\\x1f\u{7f}\u{e9}\u{2028}\u{2029}\u{1f600}]{0,6}",
            ".{0,6}",
        ]
    }

    fn go_value() -> impl proptest::strategy::Strategy<Value = GoValue> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(GoValue::Null),
            any::<bool>().prop_map(GoValue::Bool),
            any::<i32>().prop_map(|n| GoValue::Number(n.into())),
            (-1e30f64..1e30).prop_map(GoValue::Number),
            go_text().prop_map(GoValue::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(GoValue::Array),
                proptest::collection::btree_map(go_text(), inner, 0..4).prop_map(GoValue::Object),
            ]
        })
    }

    fn go_map_strategy(
    ) -> impl proptest::strategy::Strategy<Value = Option<std::collections::BTreeMap<String, GoValue>>>
    {
        proptest::option::of(proptest::collection::btree_map(go_text(), go_value(), 0..4))
    }

    proptest::proptest! {
        /// Events as GO Feature Flag's structs marshal them (`contextKind` and `metadata`
        /// omitted when empty, the two tracking maps never omitted and `null` when nil) take
        /// the fast path and come out exactly as they went in, as the encoder writes them.
        #[test]
        fn goff_encoded_events_come_out_as_they_went_in(
            tracking in proptest::bool::ANY,
            context_kind in proptest::prop_oneof![
                proptest::strategy::Just(String::new()),
                proptest::strategy::Just("user".to_owned()),
                proptest::strategy::Just("anonymousUser".to_owned()),
                go_text(),
            ],
            user_key in go_text(),
            creation_date in proptest::num::i64::ANY,
            key in go_text(),
            variation in go_text(),
            value in go_value(),
            default in proptest::bool::ANY,
            version in go_text(),
            source in go_text(),
            metadata in go_map_strategy(),
            evaluation_context in go_map_strategy(),
            details in go_map_strategy(),
        ) {
            let mut line = format!(r#"{{"kind":"{}""#, if tracking { "tracking" } else { "feature" });
            if !context_kind.is_empty() {
                line += &format!(r#","contextKind":{}"#, go_string(&context_kind));
            }
            line += &format!(
                r#","userKey":{},"creationDate":{creation_date},"key":{}"#,
                go_string(&user_key),
                go_string(&key)
            );
            if tracking {
                line += &format!(
                    r#","evaluationContext":{},"trackingEventDetails":{}"#,
                    go_nullable_map(&evaluation_context),
                    go_nullable_map(&details)
                );
            } else {
                line += &format!(
                    r#","variation":{},"value":{},"default":{default},"version":{},"source":{}"#,
                    go_string(&variation),
                    go_json(&value),
                    go_string(&version),
                    go_string(&source)
                );
                if let Some(m) = metadata.as_ref().filter(|m| !m.is_empty()) {
                    line += &format!(r#","metadata":{}"#, go_map(m));
                }
            }
            line.push('}');
            let kind = if tracking { EventType::Tracking } else { EventType::Feature };
            proptest::prop_assert_eq!(canonical::check(line.as_bytes()), Some(kind), "{}", line);
            let general = encoded(&line);
            proptest::prop_assert_eq!(general.as_deref(), Ok(line.as_str()));
            let got = goff().decode(&Bytes::from(line.clone()), &envelope_fields(None));
            proptest::prop_assert_eq!(got, Ok(Decoded::Event(Bytes::from(line))));
        }
    }

    proptest::proptest! {
        /// Whatever the fast path accepts, the general path accepts too and encodes to the
        /// very same bytes: random edits of canonical lines, near the JSON syntax.
        #[test]
        fn fast_path_accepts_only_what_the_encoder_reproduces(
            base in 0usize..3,
            edits in proptest::collection::vec((0usize..400, 0usize..40, 0usize..3), 1..4),
        ) {
            let bases = [E1, TRACK, r#"{"kind":"feature","userKey":"A\"B\u00e9","creationDate":-5,"key":"k","variation":"v","value":[1.5e3,{"a":null},"x"],"default":true,"version":"1","source":"S","metadata":{"m":[true,false,0]}}"#];
            let alphabet = b"{}[]\",:\\0123456789-.eE+uatrfln \t\x01ZD8";
            let mut line = bases[base].as_bytes().to_vec();
            for (at, c, op) in edits {
                let at = at % (line.len() + 1);
                let c = alphabet[c % alphabet.len()];
                match op {
                    0 if at < line.len() => line[at] = c,
                    1 => line.insert(at, c),
                    _ if at < line.len() => { line.remove(at); }
                    _ => {}
                }
            }
            if canonical::check(&line).is_some() {
                let text = std::str::from_utf8(&line).unwrap();
                let general = encoded(text);
                proptest::prop_assert_eq!(general.as_deref(), Ok(text), "{}", text);
            }
        }
    }

    #[test]
    fn canonical_lines_are_recognised() {
        let track_nulls = TRACK
            .replace(r#"{"targetingKey":"ABCD","toto":123}"#, "null")
            .replace(r#"{"event":"123"}"#, "null");
        for line in [E1, TRACK, &track_nulls] {
            assert!(canonical::check(line.as_bytes()).is_some(), "{line}");
        }
        let not = [
            E1.replace("false", "null"),
            E1.replace(r#""anonymousUser""#, r#""""#),
            E1.replace(":1617970547", ":01617970547"),
            E1.replace(r#""YO""#, r#""\ud800""#),
            E1.replace(r#""YO""#, r#""Y\u+0aO""#),
            E1.replace(r#""version":"""#, r#""version":null"#),
            E1.replace(r#""SERVER"}"#, r#""SERVER","metadata":null}"#),
            TRACK.replace(r#"{"event":"123"}"#, "nul"),
            format!("{E1} "),
        ];
        for line in not {
            assert!(canonical::check(line.as_bytes()).is_none(), "{line}");
        }
    }

    #[test]
    fn event_types_filter_and_crlf() {
        let mut d = Decoder::new(Schema::Goff, &[EventType::Feature]);
        assert_eq!(decode(&mut d, TRACK.as_bytes()), Ok(Decoded::Filtered));
        assert_eq!(ok(&mut d, &format!("{E1}\r")), E1);
        assert_eq!(decode(&mut d, b"  \r"), Ok(Decoded::Empty));
    }

    #[test]
    fn schema_any_sends_any_object_compacted() {
        let mut d = Decoder::new(Schema::Any, &[]);
        assert_eq!(
            ok(&mut d, r#"{ "a" : [1, 2], "b": "x y" }"#),
            r#"{"a":[1,2],"b":"x y"}"#
        );
        assert!(decode(&mut d, b"42").is_err());
    }
}
