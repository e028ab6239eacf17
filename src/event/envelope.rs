//! A fast path for shippers' envelopes: Vector's `{"host":..,"message":"<event as a JSON
//! string>",..}` and Fluent Bit's `{"date":..,"log":".."}`, around an event in GO Feature
//! Flag's encoding.
//!
//! The general path parses the outer object with serde, unescapes the envelope field into a
//! string, and then checks it; here one pass over the outer object finds the field, its
//! value is unescaped straight into the sink's buffer, and the canonical scanner checks it
//! there. [`unwrap`] says `Some(kind)` only where the general path would take the same
//! branch and give the same bytes: keys with escapes, a `kind` in the outer object,
//! whitespace, `\u` surrogates, deep nesting and anything else unusual get `None` and go the
//! general way. It is property-tested against the general path.

use bytes::BytesMut;

use super::canonical::{self, escape, is_stop, stops, Scanner};
use super::EventType;

/// Appends the event wrapped in `line`'s envelope field (the first of `envelope_fields`
/// present, by preference) to `out` and says its kind, when that event is in GO Feature
/// Flag's encoding. On `None`, `out` is as it was.
pub(super) fn unwrap(
    line: &[u8],
    envelope_fields: &[String],
    out: &mut BytesMut,
) -> Option<EventType> {
    let start = out.len();
    let kind = unwrap_onto(line, envelope_fields, out, start);
    if kind.is_none() {
        out.truncate(start);
    }
    kind
}

/// What the preferred envelope field seen so far holds.
enum Best {
    /// A field of this rank in `envelope_fields`, its event copied to the buffer.
    Event(usize),
    /// A field of this rank that holds no string or object: no event.
    Other(usize),
}

/// One pass over a compact JSON object without `kind`: the value of the preferred envelope
/// field goes to `out[start..]` as it is scanned (unescaped if a string; a field preferred
/// to it later replaces it), then the canonical scanner checks it there.
fn unwrap_onto(
    line: &[u8],
    envelope_fields: &[String],
    out: &mut BytesMut,
    start: usize,
) -> Option<EventType> {
    let mut s = Scanner { b: line, at: 0 };
    s.expect(b"{")?;
    let mut best: Option<Best> = None;
    if !s.eat(b"}") {
        loop {
            let key = s.plain_key()?;
            s.expect(b":")?;
            if key == b"kind" {
                return None; // the object is the event itself, not an envelope
            }
            let rank = envelope_fields.iter().position(|f| f.as_bytes() == key);
            match rank.filter(|&r| best.as_ref().is_none_or(|b| r < b.rank())) {
                Some(rank) => {
                    out.truncate(start);
                    best = Some(copy_value(&mut s, out, rank)?);
                }
                None => s.value(1)?,
            }
            if s.eat(b"}") {
                break;
            }
            s.expect(b",")?;
        }
    }
    match best? {
        Best::Event(_) if s.at == line.len() => canonical::check(&out[start..]),
        _ => None,
    }
}

impl Best {
    fn rank(&self) -> usize {
        match *self {
            Best::Event(rank) | Best::Other(rank) => rank,
        }
    }
}

/// Scans the value at `s` (depth 1) and appends its event to `out`: a string's text, or an
/// object as it is.
fn copy_value(s: &mut Scanner<'_>, out: &mut BytesMut, rank: usize) -> Option<Best> {
    let from = s.at;
    match s.peek()? {
        b'"' => unescape_string(s, out)?,
        b'{' => {
            s.value(1)?;
            out.extend_from_slice(&s.b[from..s.at]);
        }
        _ => {
            s.value(1)?;
            return Some(Best::Other(rank));
        }
    }
    Some(Best::Event(rank))
}

/// Scans the string token at `s` as [`Scanner::string`] does (the same tokens refused) and
/// appends its text to `out`, in the same pass.
///
/// The text is never longer than what is left of the line from the string's contents on
/// (an escape is longer than what it stands for), so that much room is zeroed in `out`
/// first and written by index: plain bytes are copied a whole word at a time, and the
/// bytes of a word from its stop on are overwritten by what comes next. Invariant:
/// `w <= r - from`, so a word written at `w` fits.
fn unescape_string(s: &mut Scanner<'_>, out: &mut BytesMut) -> Option<()> {
    s.expect(b"\"")?;
    let (src, from) = (s.b, s.at);
    let base = out.len();
    out.resize(base + (src.len() - from), 0);
    let dst = &mut out[base..];
    let (mut r, mut w) = (from, 0);
    loop {
        let stop = match src.get(r..r + 8) {
            Some(word) => {
                dst[w..w + 8].copy_from_slice(word);
                let stops = stops(u64::from_le_bytes(word.try_into().unwrap()));
                match quick_escapes(src, dst, (r, w), stops) {
                    Ok(next) => {
                        (r, w) = next;
                        continue;
                    }
                    Err(at) => {
                        (r, w) = at;
                        src[r]
                    }
                }
            }
            None => {
                let c = *src.get(r)?;
                if !is_stop(c) {
                    dst[w] = c;
                    r += 1;
                    w += 1;
                    continue;
                }
                c
            }
        };
        match stop {
            b'"' => break,
            // The escapes of a JSON text held in a string: its quotes and backslashes.
            b'\\' if matches!(src.get(r + 1), Some(b'"' | b'\\')) => {
                dst[w] = src[r + 1];
                r += 2;
                w += 1;
            }
            b'\\' => {
                let (read, c) = escape(&src[r + 1..])?;
                r += 1 + read;
                if c.is_ascii() {
                    dst[w] = c as u8; // a store, where a slice copy would call memcpy
                    w += 1;
                } else {
                    w += c.encode_utf8(&mut dst[w..]).len();
                }
            }
            _ => return None, // a control character
        }
    }
    s.at = r + 1;
    out.truncate(base + w);
    Some(())
}

/// The word of `src` at `r`, already copied to `dst` at `w`, with its `stops`: takes its
/// escaped quotes and backslashes (the escapes of a JSON text held in a string) one after
/// the other from the mask, rather than loading the word again after each (which would put
/// a load and the search on every escape's path). `Ok` at the word's end; `Err` at a stop
/// left to the caller.
fn quick_escapes(
    src: &[u8],
    dst: &mut [u8],
    (mut r, mut w): (usize, usize),
    mut stops: u64,
) -> Result<(usize, usize), (usize, usize)> {
    let start = r;
    loop {
        if stops == 0 {
            return Ok((start + 8, w + (start + 8 - r)));
        }
        let byte = stops.trailing_zeros() as usize / 8;
        let at = start + byte;
        w += at - r;
        r = at;
        let quick = byte < 7 && src[at] == b'\\' && matches!(src[at + 1], b'"' | b'\\');
        if !quick || at + 10 > src.len() {
            return Err((r, w));
        }
        dst[w] = src[at + 1];
        (r, w) = (at + 2, w + 1);
        // What follows the escape, in its place (bytes past the word are overwritten later).
        dst[w..w + 8].copy_from_slice(&src[r..r + 8]);
        stops &= !(0xffff << (byte * 8));
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::unwrap;
    use crate::event::envelope_fields;
    use crate::event::fixtures::*;

    fn general(line: &str, fields: &[String]) -> Option<String> {
        let event = crate::event::fuzzing::envelope_general(line, fields)?;
        Some(String::from_utf8(event.to_vec()).unwrap())
    }

    fn fast(line: &[u8], fields: &[String]) -> Option<String> {
        let mut out = BytesMut::from(&b"before"[..]);
        let kind = unwrap(line, fields, &mut out);
        let Some(event) = out.strip_prefix(b"before") else {
            panic!("the bytes already in the buffer were changed")
        };
        assert_eq!(kind.is_some(), !event.is_empty(), "a miss leaves nothing");
        kind.map(|_| String::from_utf8(event.to_vec()).unwrap())
    }

    #[test]
    fn unwraps_what_vector_and_fluent_bit_send() {
        let fields = envelope_fields(None);
        let message = serde_json::to_string(E1).unwrap();
        let vector = format!(
            r#"{{"file":"/var/log/a.json","host":"h","message":{message},"source_type":"file","timestamp":"2026-11-29T12:00:00.1Z"}}"#
        );
        assert_eq!(fast(vector.as_bytes(), &fields).as_deref(), Some(E1));
        let fluent = format!(
            r#"{{"date":1700000000.5,"log":{}}}"#,
            serde_json::to_string(TRACK).unwrap()
        );
        assert_eq!(fast(fluent.as_bytes(), &fields).as_deref(), Some(TRACK));
        // `message` is preferred over `log`, wherever each is.
        let both = format!(r#"{{"log":"x","message":{message}}}"#);
        assert_eq!(fast(both.as_bytes(), &fields).as_deref(), Some(E1));
        let object = format!(r#"{{"payload":{E1}}}"#);
        let payload = envelope_fields(Some("payload"));
        assert_eq!(fast(object.as_bytes(), &payload).as_deref(), Some(E1));
    }

    #[test]
    fn leaves_the_unusual_to_the_general_path() {
        let fields = envelope_fields(None);
        let message = serde_json::to_string(E1).unwrap();
        let cases = [
            format!(r#"{{"kind":"x","message":{message}}}"#),
            format!(r#"{{"mess\u0061ge":{message}}}"#),
            format!(r#"{{ "message":{message}}}"#),
            format!(r#"{{"message":{message}}} "#),
            format!(
                r#"{{"message":{}}}"#,
                serde_json::to_string(&format!(" {E1}")).unwrap()
            ),
            format!(
                r#"{{"message":{}}}"#,
                message.replace(r#"\"YO\""#, r#"\"\\ud83d\\ude00\""#)
            ),
            r#"{"message":"{}"}"#.to_owned(),
            r#"{"message":42}"#.to_owned(),
            r#"{"host":"h"}"#.to_owned(),
        ];
        for line in cases {
            assert_eq!(fast(line.as_bytes(), &fields), None, "{line}");
        }
    }

    #[test]
    fn unescapes_alike_wherever_a_word_ends() {
        // An escape in the event's `value` (as the event writes it, escaped again in the
        // message), or an escape of the message's own (`@` stands for where it goes), or a
        // non-ASCII or control character, after 0 to 16 plain bytes; the `host` before
        // `message` shifts it against word boundaries, and `message` is last or not.
        let fields = envelope_fields(None);
        let in_event = [
            r#"\""#,
            r#"\\"#,
            r#"\/"#,
            r#"\b"#,
            r#"\f"#,
            r#"\n"#,
            r#"\r"#,
            r#"\t"#,
            r#"\u0041"#,
            r#"\u00e9"#,
            r#"\u20ac"#,
            r#"\uFFFF"#,
            r#"\ud83d\ude00"#,
            "é€😀",
            "\u{7f}",
            "",
        ];
        let in_message = [
            r#"\/"#,
            r#"\u0041"#,
            r#"\u00e9"#,
            r#"\u20AC"#,
            r#"\uffff"#,
            r#"\\\\"#,
            r#"\\n"#,
            r#"\ud83d\ude00"#,
        ];
        let messages = |before: usize| {
            let value = |text: &str| format!(r#""{}{text}""#, "v".repeat(before));
            let inner = in_event.map(|m| {
                let event = E1.replace(r#""YO""#, &value(m));
                (m, serde_json::to_string(&event).unwrap())
            });
            let outer = in_message.map(|m| {
                let event = E1.replace(r#""YO""#, &value("@"));
                (m, serde_json::to_string(&event).unwrap().replace('@', m))
            });
            inner.into_iter().chain(outer)
        };
        for before in 0..=16 {
            for (middle, message) in messages(before) {
                for host in 0..8 {
                    let host = "h".repeat(host);
                    for line in [
                        format!(r#"{{"host":"{host}","message":{message}}}"#),
                        format!(r#"{{"host":"{host}","message":{message},"t":1}}"#),
                    ] {
                        let general = general(&line, &fields);
                        assert!(general.is_some(), "{line}");
                        let got = fast(line.as_bytes(), &fields);
                        if middle.contains("ud83d") {
                            assert_eq!(got, None, "surrogates go the general way: {line}");
                        } else {
                            assert_eq!(got, general, "{line}");
                        }
                    }
                }
                // The message cut short, at every length: refused.
                let line = format!(r#"{{"message":{message}}}"#);
                for end in 0..line.len() {
                    assert_eq!(fast(&line.as_bytes()[..end], &fields), None);
                }
            }
        }
    }

    #[test]
    fn a_control_character_in_the_message_is_refused_wherever_it_is() {
        let fields = envelope_fields(None);
        let message = serde_json::to_string(E1).unwrap();
        for at in 1..message.len() - 1 {
            for c in ["\x01", "\n", "\x1f"] {
                let message = format!("{}{c}{}", &message[..at], &message[at..]);
                let line = format!(r#"{{"message":{message}}}"#);
                assert_eq!(fast(line.as_bytes(), &fields), None, "{line:?}");
            }
        }
    }

    fn envelope_strategy() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let inner = prop_oneof![
            Just(E1.to_owned()),
            Just(TRACK.to_owned()),
            Just(E1.replace(r#""YO""#, r#""a\"b\\c/\u00e9\n<>é""#)),
            Just(E1.replace(r#""YO""#, r#"{"a":[1,-2.5e3,null,true],"b":"\t"}"#)),
        ];
        let extra = prop_oneof![
            Just(r#""host":"h""#.to_owned()),
            Just(r#""file":"/var/log/\"q\".json""#.to_owned()),
            Just(r#""timestamp":"2026-11-29T12:00:00Z""#.to_owned()),
            Just(r#""date":1700000000.25"#.to_owned()),
            Just(r#""log":"not the event""#.to_owned()),
            Just(r#""nested":{"a":[{"b":null}],"c":"\u00e9"}"#.to_owned()),
        ];
        (
            inner,
            proptest::bool::ANY,
            proptest::collection::vec(extra, 0..4),
            0usize..5,
        )
            .prop_map(|(inner, as_object, mut fields, at)| {
                let value = if as_object {
                    inner
                } else {
                    serde_json::to_string(&inner).unwrap()
                };
                let at = at.min(fields.len());
                fields.insert(at, format!(r#""message":{value}"#));
                format!("{{{}}}", fields.join(","))
            })
    }

    proptest::proptest! {
        /// Envelopes as shippers write them are taken by the fast path, with exactly the
        /// bytes the general path gives.
        #[test]
        fn shippers_envelopes_agree_with_the_general_path(line in envelope_strategy()) {
            let fields = envelope_fields(None);
            let got = fast(line.as_bytes(), &fields);
            proptest::prop_assert!(got.is_some(), "{}", line);
            proptest::prop_assert_eq!(got, general(&line, &fields), "{}", line);
        }

        /// Whatever the fast path takes, the general path takes too and gives the same
        /// bytes: random edits of envelopes, near the JSON syntax.
        #[test]
        fn fast_path_takes_only_what_the_general_path_gives(
            line in envelope_strategy(),
            edits in proptest::collection::vec((0usize..600, 0usize..40, 0usize..3), 1..4),
        ) {
            let line = edited(line.as_bytes(), &edits);
            // The decoder checks UTF-8 before any path.
            let fields = envelope_fields(None);
            if let Ok(text) = std::str::from_utf8(&line) {
                if let Some(got) = fast(&line, &fields) {
                    proptest::prop_assert_eq!(Some(got), general(text, &fields), "{}", text);
                }
            }
        }
    }
}
