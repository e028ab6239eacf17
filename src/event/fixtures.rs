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
