//! Lines and helpers shared by the event tests.

use bytes::{Bytes, BytesMut};

use super::goff::Fields;
use super::{envelope_fields, Decoded, Decoder, EventType, Invalid, Schema};

pub(super) const E1: &str = r#"{"kind":"feature","contextKind":"anonymousUser","userKey":"ABCD","creationDate":1617970547,"key":"random-key","variation":"Default","value":"YO","default":false,"version":"","source":"SERVER"}"#;
pub(super) const TRACK: &str = r#"{"kind":"tracking","contextKind":"anonymousUser","userKey":"ABCD","creationDate":1617970547,"key":"random-key","evaluationContext":{"targetingKey":"ABCD","toto":123},"trackingEventDetails":{"event":"123"}}"#;

pub(super) fn goff() -> Decoder {
    Decoder::new(Schema::Goff, &[EventType::Feature, EventType::Tracking])
}

pub(super) fn decode(d: &mut Decoder, line: &[u8]) -> Result<Decoded, Invalid> {
    d.decode(&Bytes::copy_from_slice(line), &envelope_fields(None))
}

pub(super) fn ok(d: &mut Decoder, line: &str) -> String {
    match decode(d, line.as_bytes()) {
        Ok(Decoded::Event(b)) => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("{line}: {other:?}"),
    }
}

/// The encoder's output for `line`, without the fast path.
pub(super) fn encoded(line: &str) -> Result<String, Invalid> {
    let fields = Fields::parse(line, &[])?;
    let mut out = BytesMut::new();
    fields.encode_goff(fields.kind()?, &mut out)?;
    Ok(String::from_utf8(out.to_vec()).unwrap())
}

/// `line` after `edits` near the JSON syntax, for the fast paths' property tests: each
/// `(at, c, op)` replaces (0), inserts (1) or removes (2) a byte at `at` (modulo the
/// length), with a character from an alphabet of JSON's tokens, escapes and controls.
pub(super) fn edited(line: &[u8], edits: &[(usize, usize, usize)]) -> Vec<u8> {
    const ALPHABET: &[u8] = b"{}[]\",:\\0123456789-.eE+uatrfln \t\x01ZD8k";
    let mut line = line.to_vec();
    for &(at, c, op) in edits {
        let at = at % (line.len() + 1);
        let c = ALPHABET[c % ALPHABET.len()];
        match op {
            0 if at < line.len() => line[at] = c,
            1 => line.insert(at, c),
            _ if at < line.len() => {
                line.remove(at);
            }
            _ => {}
        }
    }
    line
}
