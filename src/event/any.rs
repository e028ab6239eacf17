//! A fast path for `schema = "any"`: a line that is one compact JSON object (what GO
//! Feature Flag and most shippers write) is the event as it is, once checked; the general
//! path parses it with serde and compacts it into a copy.
//!
//! [`is_compact_object`] says `true` only where the general path would send the line's own
//! bytes: an object with no whitespace between tokens, no key with escapes, and not a
//! shipper's envelope (one of the envelope fields without `kind`: the general path
//! unwraps those). Anything else, or anything deeper than the scanner follows, goes the
//! general way. It is property-tested against the general path.

use super::canonical::Scanner;

/// Whether `line` (valid UTF-8) is a compact JSON object that is not an envelope.
pub(super) fn is_compact_object(line: &[u8], envelope_fields: &[String]) -> bool {
    let mut s = Scanner::new(line);
    let mut kind = false;
    let mut envelope = false;
    if s.expect(b"{").is_none() {
        return false;
    }
    if !s.eat(b"}") {
        loop {
            let Some(key) = s.plain_key() else {
                return false;
            };
            if s.expect(b":").is_none() || s.value(1).is_none() {
                return false;
            }
            kind |= key == b"kind";
            envelope |= envelope_fields.iter().any(|f| f.as_bytes() == key);
            if s.eat(b"}") {
                break;
            }
            if s.expect(b",").is_none() {
                return false;
            }
        }
    }
    s.at == line.len() && (kind || !envelope)
}

#[cfg(test)]
mod tests {
    use super::is_compact_object;
    use crate::event::fixtures::*;
    use crate::event::{envelope_fields, Decoded, Decoder, FromLine, Schema};

    /// What the general path sends for `line` with `schema = "any"`, bypassing the fast path.
    fn general(line: &str) -> Result<String, String> {
        let mut d = Decoder::new(Schema::Any, &[]);
        match d.decode_general(line, &envelope_fields(None)) {
            Ok(FromLine::Decoded(Decoded::Event(b))) => Ok(String::from_utf8(b.to_vec()).unwrap()),
            Ok(FromLine::Itself(len)) => Ok(line[..len].to_owned()),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn takes_compact_objects_and_leaves_the_rest() {
        let fields = envelope_fields(None);
        for line in [
            E1,
            TRACK,
            "{}",
            r#"{"a":[1,{"b":null}],"c":"\u00e9\"","kind":"x","message":"m"}"#,
        ] {
            assert!(is_compact_object(line.as_bytes(), &fields), "{line}");
        }
        for line in [
            r#"{"message":"{}"}"#,
            r#"{"log":"x","a":1}"#,
            r#"{ "a":1}"#,
            r#"{"a":1} "#,
            r#"{"\u0061":1}"#,
            r#"{"a":"\ud800"}"#,
            "[1]",
            r#"{"a":01}"#,
        ] {
            assert!(!is_compact_object(line.as_bytes(), &fields), "{line}");
        }
    }

    fn object_strategy() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            (-1e30f64..1e30).prop_map(|n| serde_json::to_string(&n).unwrap()),
            "[a-z\"\\\\/\u{e9}\u{1f600}\\x01\n]{0,6}"
                .prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        let value = leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec(("[a-z]{1,3}|kind|message|log", inner), 0..4).prop_map(
                    |v| {
                        let fields: Vec<_> =
                            v.iter().map(|(k, v)| format!(r#""{k}":{v}"#)).collect();
                        format!("{{{}}}", fields.join(","))
                    }
                ),
            ]
        });
        proptest::collection::vec(("[a-z]{1,3}|kind|message|log", value), 0..5).prop_map(|v| {
            let fields: Vec<_> = v.iter().map(|(k, v)| format!(r#""{k}":{v}"#)).collect();
            format!("{{{}}}", fields.join(","))
        })
    }

    proptest::proptest! {
        /// Whatever the fast path takes as it is, the general path sends as it is too:
        /// objects, and random edits of them near the JSON syntax.
        #[test]
        fn fast_path_takes_only_what_the_general_path_sends_as_it_is(
            line in object_strategy(),
            edits in proptest::collection::vec((0usize..300, 0usize..40, 0usize..3), 0..3),
        ) {
            let line = edited(line.as_bytes(), &edits);
            // The decoder checks UTF-8 before any path.
            if let Ok(text) = std::str::from_utf8(&line) {
                if is_compact_object(&line, &envelope_fields(None)) {
                    let sent = general(text);
                    proptest::prop_assert_eq!(sent.as_deref(), Ok(text));
                }
            }
        }
    }
}
