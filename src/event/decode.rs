//! Decoding one line into an event: the fast path for GO Feature Flag's own encoding, a
//! shipper's envelope unwrapped, then the general path (compacted for `any`, re-encoded in
//! GO Feature Flag's order for `goff`).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::value::RawValue;

use super::foreign::explain;
use super::goff::Fields;
use super::json::compact;
use super::{any, canonical, envelope, invalid, Decoded, EventType, FromLine, Invalid, Schema};

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
    /// A large event gets a chunk of about its own size (re-encoding may add a few fields):
    /// every event split off a chunk keeps all of it alive.
    fn make_room(&mut self, len: usize) {
        if self.arena.capacity() - self.arena.len() < len + 64 {
            self.arena.reserve(ARENA_CHUNK.max(len + len / 8 + 256));
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
        Ok(match self.decode_line(whole, envelope_fields)? {
            FromLine::Itself(len) => Decoded::Event(whole.slice(..len)),
            FromLine::Decoded(decoded) => decoded,
        })
    }

    /// [`Decoder::decode`], saying when the line is its own event rather than making a
    /// `Bytes` of it: the caller that owns the line keeps it as it is (a range of its
    /// block's buffer, see [`crate::event::Block`]).
    pub fn decode_line(
        &mut self,
        whole: &[u8],
        envelope_fields: &[String],
    ) -> Result<FromLine, Invalid> {
        let line: &[u8] = whole.strip_suffix(b"\r").unwrap_or(whole);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(FromLine::Decoded(Decoded::Empty));
        }
        let utf8 = || {
            std::str::from_utf8(line).map_err(|e| {
                explain(
                    line,
                    invalid(format!("not valid UTF-8 (at byte {})", e.valid_up_to())),
                )
            })
        };
        if self.schema == Schema::Goff {
            if let Some((kind, ascii)) = canonical::check_noting_ascii(line) {
                // Already in GO Feature Flag's encoding: the line is the event. The usual
                // one is ASCII text only, as the scanner saw: its UTF-8 check costs no pass.
                if !ascii {
                    utf8()?;
                }
                return Ok(if self.wants(kind) {
                    FromLine::Itself(line.len())
                } else {
                    FromLine::Decoded(Decoded::Filtered)
                });
            }
        }
        let text = utf8()?;
        if self.schema == Schema::Goff {
            self.make_room(line.len());
            if let Some(kind) = envelope::unwrap(line, envelope_fields, &mut self.arena) {
                // A shipper's envelope around an event in GO Feature Flag's encoding.
                if !self.wants(kind) {
                    self.arena.clear();
                    return Ok(FromLine::Decoded(Decoded::Filtered));
                }
                let event = self.arena.split().freeze();
                return Ok(FromLine::Decoded(Decoded::Event(event)));
            }
        } else if any::is_compact_object(line, envelope_fields) {
            return Ok(FromLine::Itself(line.len()));
        }
        self.decode_general(text, envelope_fields)
    }

    /// The general path: the line parsed by serde, a shipper's envelope unwrapped, the
    /// event compacted (`any`) or encoded in GO Feature Flag's order (`goff`). `text` is
    /// the line without its `\r`, checked as UTF-8.
    pub(super) fn decode_general(
        &mut self,
        text: &str,
        envelope_fields: &[String],
    ) -> Result<FromLine, Invalid> {
        let line = text.as_bytes();
        let outer = Fields::parse(text, envelope_fields).map_err(|e| explain(line, e))?;
        let inner_text = match (outer.kind, outer.envelope) {
            (None, Some(raw)) => Some(envelope_inner(raw)?),
            _ => None,
        };
        if let (Some(t), Schema::Goff) = (&inner_text, self.schema) {
            if let Some(kind) = canonical::check(t.as_bytes()) {
                // A shipper's envelope around an event in GO Feature Flag's encoding.
                if !self.wants(kind) {
                    return Ok(FromLine::Decoded(Decoded::Filtered));
                }
                self.make_room(t.len());
                self.arena.extend_from_slice(t.as_bytes());
                let event = self.arena.split().freeze();
                return Ok(FromLine::Decoded(Decoded::Event(event)));
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
                    return Ok(FromLine::Decoded(Decoded::Filtered));
                }
                if let Err(e) = fields.encode_goff(kind, &mut self.arena) {
                    self.arena.clear();
                    return Err(e);
                }
            }
        }
        if self.arena[..] == *line {
            self.arena.clear();
            return Ok(FromLine::Itself(line.len()));
        }
        let event = self.arena.split().freeze();
        Ok(FromLine::Decoded(Decoded::Event(event)))
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
pub(super) fn envelope_inner(raw: &RawValue) -> Result<Cow<'_, str>, Invalid> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::fixtures::*;

    /// A line in GO Feature Flag's encoding is checked as UTF-8 by the scanner's note of
    /// bytes >= 0x80 (no pass of its own when there are none): a byte that is not UTF-8, or
    /// a character that is, at every place in a string, whichever of the scanner's ways
    /// (sixteen bytes, eight, one) reads it.
    #[test]
    fn bytes_of_goff_lines_are_checked_as_utf8_wherever_they_are() {
        let mut d = goff();
        for at in 0..40 {
            for (insert, valid) in [
                (&b"\xff"[..], false),
                (b"\xc3", false),
                ("é".as_bytes(), true),
            ] {
                let mut key = vec![b'k'; 40];
                key.splice(at..at, insert.iter().copied());
                let mut line = br#"{"kind":"feature","contextKind":"user","userKey":""#.to_vec();
                let place = line.len() + at;
                line.extend_from_slice(&key);
                line.extend_from_slice(br#"","creationDate":1,"key":"k","variation":"v","value":true,"default":false,"version":"1","source":"SERVER"}"#);
                let got = d.decode_line(&line, &envelope_fields(None));
                match valid {
                    true => assert_eq!(got, Ok(FromLine::Itself(line.len())), "{at}"),
                    false => {
                        let reason = got.expect_err("not UTF-8").0;
                        let expected = format!("not valid UTF-8 (at byte {place})");
                        assert!(reason.starts_with(&expected), "{at}: {reason}");
                    }
                }
            }
        }
    }

    /// A shipper's envelope is checked as UTF-8 before it is unwrapped: a byte that is not
    /// UTF-8 anywhere in it (the message last, so that its end is read a byte at a time) is
    /// refused for that byte; a character that is, at every place of the `host` field,
    /// leaves the event as it was, and at every place of the escaped event's `userKey`, is
    /// in the event.
    #[test]
    fn envelopes_are_checked_as_utf8_wherever_their_bytes_are() {
        let mut d = goff();
        let envelope = |host: &[u8], user_key: &[u8]| {
            let mut line = br#"{"host":""#.to_vec();
            line.extend_from_slice(host);
            line.extend_from_slice(
                br#"","message":"{\"kind\":\"feature\",\"contextKind\":\"user\",\"userKey\":\""#,
            );
            line.extend_from_slice(user_key);
            line.extend_from_slice(br#"\",\"creationDate\":1,\"key\":\"k\",\"variation\":\"v\",\"value\":\"\u00e9t\\u00e9\",\"default\":false,\"version\":\"1\",\"source\":\"SERVER\"}"}"#);
            line
        };
        let run = vec![b'u'; 48];
        let line = envelope(&run, &run);
        let Ok(FromLine::Decoded(Decoded::Event(event))) =
            d.decode_line(&line, &envelope_fields(None))
        else {
            panic!("the envelope is not unwrapped");
        };
        for at in 0..=line.len() {
            for bad in [&b"\xff"[..], b"\xe2\x82"] {
                let mut bad_line = line.clone();
                bad_line.splice(at..at, bad.iter().copied());
                let reason = d
                    .decode_line(&bad_line, &envelope_fields(None))
                    .expect_err("not UTF-8")
                    .0;
                let expected = format!("not valid UTF-8 (at byte {at})");
                assert!(reason.starts_with(&expected), "{at}: {reason}");
            }
        }
        for at in 0..=run.len() {
            let mut good = run.clone();
            good.splice(at..at, "€".bytes());
            let got = d.decode_line(&envelope(&good, &run), &envelope_fields(None));
            assert_eq!(
                got,
                Ok(FromLine::Decoded(Decoded::Event(event.clone()))),
                "host {at}"
            );
            let got = d.decode_line(&envelope(&run, &good), &envelope_fields(None));
            let Ok(FromLine::Decoded(Decoded::Event(got))) = got else {
                panic!("userKey {at}: {got:?}");
            };
            let expected = String::from_utf8(event.to_vec()).unwrap().replacen(
                &"u".repeat(48),
                &String::from_utf8(good.clone()).unwrap(),
                1,
            );
            assert_eq!(got, expected.as_bytes(), "userKey {at}");
        }
    }

    /// A line in GO Feature Flag's encoding (see the first test) with a byte that is not
    /// UTF-8, or a character that is, in a key or a string value of a nested object.
    #[test]
    fn bytes_of_nested_keys_and_values_are_checked_as_utf8() {
        let mut d = goff();
        for (insert, valid) in [(&b"\xff"[..], false), ("é".as_bytes(), true)] {
            for in_key in [true, false] {
                let mut line = br#"{"kind":"feature","contextKind":"user","userKey":"u","creationDate":1,"key":"k","variation":"v","value":{"a":{"#.to_vec();
                let text = |line: &mut Vec<u8>| {
                    line.extend_from_slice(b"\"x");
                    line.extend_from_slice(insert);
                    line.extend_from_slice(b"\"");
                };
                line.extend_from_slice(b"\"k\":");
                if in_key {
                    line.truncate(line.len() - 4);
                    text(&mut line);
                    line.extend_from_slice(b":1");
                } else {
                    text(&mut line);
                }
                line.extend_from_slice(br#"}},"default":false,"version":"1","source":"SERVER"}"#);
                let got = d.decode_line(&line, &envelope_fields(None));
                match valid {
                    true => assert_eq!(got, Ok(FromLine::Itself(line.len())), "{line:?}"),
                    false => assert!(
                        got.is_err_and(|e| e.0.starts_with("not valid UTF-8")),
                        "{line:?}"
                    ),
                }
            }
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
