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

use super::canonical::{self, escape, marks, Marks, Scanner, BLOCK};
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
    let mut s = Scanner::new(line);
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
/// first and written by index, sixteen bytes at a time ([`Block::take`]): the bytes of a
/// stored word past what it gave are overwritten by what comes next. Whole blocks follow
/// each other while they hold only plain bytes and the quick escapes (`\"` and `\\`, the
/// escapes of a JSON text held in a string; one may span two blocks), so that where the
/// next block starts does not wait on this one. Otherwise the block is taken up to what
/// needs a closer look (the closing quote, a control character, any other escape), which
/// is taken on its own, as are the last few bytes. Invariant: `w <= r - from`, so a word
/// written at `w` fits.
fn unescape_string(s: &mut Scanner<'_>, out: &mut BytesMut) -> Option<()> {
    s.expect(b"\"")?;
    let (src, from) = (s.b, s.at);
    let base = out.len();
    out.resize(base + (src.len() - from), 0);
    let dst = &mut out[base..];
    let (mut r, mut w) = (from, 0);
    // Whether the byte at `r` is the character of an escape whose backslash (at `r - 1`,
    // the last byte of the block before) was dropped.
    let mut escaped = false;
    loop {
        if let Some(block) = src.get(r..r + BLOCK) {
            let block: &[u8; BLOCK] = block.try_into().unwrap();
            let taken = Block::take(block, escaped);
            if taken.read > 0 {
                for (half, (word, wrote)) in taken.words(block).into_iter().enumerate() {
                    if half * 8 < taken.read {
                        dst[w..w + 8].copy_from_slice(&word.to_le_bytes());
                        w += wrote;
                    }
                }
                r += taken.read;
                escaped = taken.escaping;
                if taken.read == BLOCK {
                    continue;
                }
            }
        }
        if escaped {
            // Back to the backslash (never written), for the escape to be taken on its own.
            r -= 1;
            escaped = false;
        }
        match *src.get(r)? {
            b'"' => break,
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
            c if c < 0x20 => return None, // a control character
            c => {
                dst[w] = c;
                r += 1;
                w += 1;
            }
        }
    }
    s.at = r + 1;
    out.truncate(base + w);
    Some(())
}

/// How much of a block (sixteen bytes of a string's contents) its plain bytes and quick
/// escapes take: its first `read` bytes, less the backslashes `dropped` (one bit a byte,
/// byte 0 lowest).
struct Block {
    read: usize,
    dropped: u16,
    /// Whether the block's last byte is the backslash of a quick escape, dropped.
    escaping: bool,
}

impl Block {
    /// Takes the whole block when it holds nothing else (`escaped`: its first byte is the
    /// character of an escape that started in the block before). Otherwise, and only when
    /// not `escaped`, takes it up to the first byte that needs a closer look: the closing
    /// quote, a control character, or the backslash of another escape or of one whose
    /// character is in the next block (the next byte then starts outside an escape). An
    /// `escaped` block that is not taken whole is not taken at all.
    #[inline]
    fn take(block: &[u8; BLOCK], escaped: bool) -> Block {
        let Marks {
            quotes,
            backslashes,
            controls,
            ..
        } = marks(block);
        if quotes | backslashes | controls == 0 && !escaped {
            return Block {
                read: BLOCK,
                dropped: 0,
                escaping: false,
            };
        }
        let first = u16::from(escaped);
        let mut escapes = escapes(backslashes);
        if escaped && backslashes & 1 == 1 {
            // The first byte is the character of an escape, a backslash: the escapes of
            // its run start one byte later. Rare, and a branch: the block after does not
            // wait on this one's escapes.
            escapes = self::escapes(backslashes & !1);
        }
        let characters = escapes << 1 | first;
        let quick = quotes | backslashes;
        let stop = controls | (quotes & !characters) | (characters & !quick);
        if stop == 0 {
            return Block {
                read: BLOCK,
                dropped: escapes,
                escaping: escapes >> 15 == 1,
            };
        }
        // Each escape's backslash marked where its character is not quick (byte 15's: not
        // in this block), and the first byte of an `escaped` block, as it is not taken.
        let other = escapes & !(quick >> 1) | first;
        let stop = controls | (quotes & !characters) | other;
        let read = (u32::from(stop) | 1 << BLOCK).trailing_zeros() as usize;
        let dropped = escapes & ((1u32 << read) - 1) as u16;
        Block {
            read,
            dropped,
            escaping: false,
        }
    }

    /// The block's two words with their dropped bytes taken out, and how many bytes of
    /// each are text (a word past `read` gives none).
    #[inline]
    fn words(&self, block: &[u8; BLOCK]) -> [(u64, usize); 2] {
        std::array::from_fn(|half| {
            let word = u64::from_le_bytes(block[half * 8..][..8].try_into().unwrap());
            let taken = self.read.saturating_sub(half * 8).min(8);
            drop_bytes(word, (self.dropped >> (half * 8)) as u8, taken)
        })
    }
}

/// `word`'s first `taken` bytes less those marked in `dropped` (one bit a byte), moved
/// down over them: the word and how many of its bytes that leaves.
#[inline]
fn drop_bytes(mut word: u64, mut dropped: u8, mut taken: usize) -> (u64, usize) {
    while dropped != 0 {
        // The highest first, so that the bytes of those below stay where they are.
        let at = 7 - dropped.leading_zeros();
        let below = (1u64 << (8 * at)) - 1;
        word = (word & below) | ((word >> 8) & !below);
        dropped &= !(1 << at);
        taken -= 1;
    }
    (word, taken)
}

/// The backslashes that start an escape among a block's (one bit a byte), the block
/// starting outside an escape.
#[inline]
fn escapes(backslashes: u16) -> u16 {
    let low = ESCAPES[usize::from(backslashes as u8)];
    // A backslash at byte 8 is the character of an escape that starts at byte 7.
    let high = ESCAPES[usize::from((backslashes >> 8) as u8 & !(low >> 7))];
    u16::from(low) | u16::from(high) << 8
}

/// For the backslashes of a word (one bit a byte, the word starting outside an escape),
/// those that start an escape: each backslash that is not the character of the escape
/// before it.
static ESCAPES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut backslashes = 0;
    while backslashes < 256 {
        let (mut escapes, mut at) = (0u8, 0);
        while at < 8 {
            if backslashes >> at & 1 == 1 {
                escapes |= 1 << at;
                at += 2; // past the escaped character
            } else {
                at += 1;
            }
        }
        table[backslashes] = escapes;
        backslashes += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::{unescape_string, unwrap, ESCAPES};
    use crate::event::canonical::{escape, Scanner};
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

    /// A string token (opening quote at 0) as the block-wise unescape must take it, one
    /// byte or one escape at a time: its text and where the token ends. Bytes >= 0x80 are
    /// copied as they are, valid UTF-8 or not (the caller checked the line).
    fn unescaped_bytewise(b: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut out = Vec::new();
        let mut r = 1;
        loop {
            match *b.get(r)? {
                b'"' => return Some((out, r + 1)),
                b'\\' => {
                    let (read, c) = escape(&b[r + 1..])?;
                    r += 1 + read;
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                c if c < 0x20 => return None,
                c => {
                    out.push(c);
                    r += 1;
                }
            }
        }
    }

    fn unescaped(b: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut s = Scanner::new(b);
        let mut out = BytesMut::from(&b"before"[..]);
        let taken = unescape_string(&mut s, &mut out);
        let text = out.strip_prefix(b"before").expect("the bytes before kept");
        taken.map(|()| (text.to_vec(), s.at))
    }

    /// What may meet a block's edge: the quick escapes and runs of backslashes (`\\\"`
    /// is what an escaped quote in the event's own strings becomes), other escapes, whole
    /// and cut, non-ASCII and invalid UTF-8, control characters, the closing quote.
    const PIECES: [&[u8]; 20] = [
        b"a",
        br#"\""#,
        br#"\\"#,
        br#"\\\""#,
        br#"\\\\"#,
        br#"\\\\\""#,
        br#"\n"#,
        br#"\/"#,
        br#"\u00e9"#,
        br#"\u20AC"#,
        br#"\ud83d\ude00"#,
        br#"\x"#,
        br#"\u12"#,
        br#"\"#,
        "é😀".as_bytes(),
        b"\xff\x80\xc3",
        b"\x01",
        b"\x1f",
        b"\x7f",
        br#"""#,
    ];

    #[test]
    fn unescapes_alike_wherever_a_block_ends() {
        // Two pieces after 0 to 33 plain bytes (every place against a block of sixteen,
        // twice), then plain bytes and the closing quote or the line's end.
        for before in 0..=33 {
            for first in PIECES {
                for second in PIECES {
                    for after in [&b""[..], b"bbbbbbbbbbbbbbbbbbb\"", b"b\",\"t\":1}"] {
                        let mut line = b"\"".to_vec();
                        line.resize(1 + before, b'a');
                        for piece in [first, second, after] {
                            line.extend_from_slice(piece);
                        }
                        assert_eq!(
                            unescaped(&line),
                            unescaped_bytewise(&line),
                            "{}",
                            String::from_utf8_lossy(&line)
                        );
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        /// Any run of pieces, the line cut anywhere: the block-wise unescape gives what one
        /// byte or escape at a time gives, and for valid UTF-8, what serde_json reads.
        #[test]
        fn unescape_agrees_with_a_byte_loop(
            pieces in proptest::collection::vec(0..PIECES.len(), 0..40),
            before in 0usize..16,
            cut in proptest::option::of(0usize..400),
        ) {
            let mut line = b"\"".to_vec();
            line.resize(1 + before, b'a');
            for piece in pieces {
                line.extend_from_slice(PIECES[piece]);
            }
            line.extend_from_slice(br#"",\"t\":1}"#);
            if let Some(cut) = cut {
                line.truncate(cut.min(line.len()));
            }
            let got = unescaped(&line);
            proptest::prop_assert_eq!(&got, &unescaped_bytewise(&line), "{}", String::from_utf8_lossy(&line));
            if let (Some((text, end)), Ok(_)) = (&got, std::str::from_utf8(&line)) {
                let serde: String = serde_json::from_slice(&line[..*end]).unwrap();
                proptest::prop_assert_eq!(text, serde.as_bytes());
            }
        }
    }

    #[test]
    fn escapes_are_the_backslashes_outside_an_escape() {
        for backslashes in 0..=255u8 {
            // A backslash starts an escape where the backslashes just before it are even.
            let mut escapes = 0;
            for at in 0..8 {
                let run = (0..at)
                    .rev()
                    .take_while(|&b| backslashes >> b & 1 == 1)
                    .count();
                if backslashes >> at & 1 == 1 && run % 2 == 0 {
                    escapes |= 1 << at;
                }
            }
            assert_eq!(
                ESCAPES[usize::from(backslashes)],
                escapes,
                "{backslashes:08b}"
            );
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
