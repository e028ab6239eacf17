//! GO Feature Flag's encoding: the fields flaghook reads from a line (one pass of a serde
//! visitor, borrowing each field's exact text) and the event written back compactly in GO
//! Feature Flag's field order, with only its fields.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, BytesMut};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::json::{compact, excerpt, json_error};
use super::{invalid, EventType, Invalid};

/// The fields flaghook looks at, borrowed from the line (`RawValue` keeps their exact text).
#[derive(Default)]
pub(super) struct Fields<'a> {
    pub(super) kind: Option<&'a RawValue>,
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
    pub(super) envelope: Option<&'a RawValue>,
}

/// Whether `name` is one of the event's fields, which [`Fields::parse`] reads as such: an
/// envelope field of that name is never unwrapped.
pub(super) fn is_event_field(name: &str) -> bool {
    Fields::default().slot(name).is_some()
}

impl<'a> Fields<'a> {
    /// Where the event's field `name` goes; `None` for a name that is not one of them.
    fn slot(&mut self, name: &str) -> Option<&mut Option<&'a RawValue>> {
        Some(match name {
            "kind" => &mut self.kind,
            "contextKind" => &mut self.context_kind,
            "userKey" => &mut self.user_key,
            "creationDate" => &mut self.creation_date,
            "key" => &mut self.key,
            "variation" => &mut self.variation,
            "value" => &mut self.value,
            "default" => &mut self.default,
            "version" => &mut self.version,
            "source" => &mut self.source,
            "metadata" => &mut self.metadata,
            "evaluationContext" => &mut self.evaluation_context,
            "trackingEventDetails" => &mut self.tracking_event_details,
            _ => return None,
        })
    }

    pub(super) fn parse(text: &'a str, envelope_fields: &[String]) -> Result<Self, Invalid> {
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

    pub(super) fn kind(&self) -> Result<EventType, Invalid> {
        let raw = self.kind.ok_or_else(|| invalid("missing field `kind`"))?;
        match raw.get() {
            r#""feature""# => Ok(EventType::Feature),
            r#""tracking""# => Ok(EventType::Tracking),
            other => Err(invalid(format!(
                "field `kind` is {}; expected \"feature\" or \"tracking\"",
                excerpt(other)
            ))),
        }
    }

    /// Writes the event compactly in GO Feature Flag's field order, with only its fields.
    pub(super) fn encode_goff(&self, kind: EventType, out: &mut BytesMut) -> Result<(), Invalid> {
        let user_key = required_string(self.user_key, "userKey")?;
        let key = required_string(self.key, "key")?;
        let creation_date = self
            .creation_date
            .ok_or_else(|| invalid("missing field `creationDate`"))?;
        if creation_date.get().parse::<i64>().is_err() {
            return Err(invalid(format!(
                "field `creationDate` must be an integer (Unix seconds), got {}",
                excerpt(creation_date.get())
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
                    "field `default` must be a boolean, got {}",
                    excerpt(other)
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
            let slot = match fields.slot(&name) {
                Some(slot) => slot,
                None => match self.envelope_fields.iter().position(|f| *f == name) {
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

#[cfg(test)]
mod tests {
    use crate::event::fixtures::*;

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
}
