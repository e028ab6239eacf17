//! A fast path for the common case: a line that is already in GO Feature Flag's own
//! compact encoding (what its file exporter writes). Such a line is the event as it is;
//! it only has to be checked, which a scanner that knows the expected shape does several
//! times faster than a general JSON parser.
//!
//! [`check`] says `Some(kind)` only for a line that the general path would accept and
//! encode to exactly the same bytes; anything else (other order, extra fields, spaces,
//! `\u` surrogates, deep nesting, ...) gets `None` and goes the general way. It is
//! property-tested against the general path.

use super::EventType;

/// The line's kind when it is a complete, valid event in GO Feature Flag's encoding.
pub(super) fn check(line: &[u8]) -> Option<EventType> {
    check_noting_ascii(line).map(|(kind, _)| kind)
}

/// [`check`], and whether the line is all ASCII (else its strings' bytes >= 0x80 are still
/// to be checked as UTF-8: [`check`] leaves that to its caller).
pub(super) fn check_noting_ascii(line: &[u8]) -> Option<(EventType, bool)> {
    let mut s = Scanner::new(line);
    let kind = if s.eat(br#"{"kind":"feature""#) {
        EventType::Feature
    } else if s.eat(br#"{"kind":"tracking""#) {
        EventType::Tracking
    } else {
        return None;
    };
    if s.eat(br#","contextKind":"#) {
        let start = s.at;
        s.string()?;
        if s.at - start == 2 {
            return None; // an empty contextKind is left out by the encoder
        }
    }
    s.expect(br#","userKey":"#)?;
    s.string()?;
    s.expect(br#","creationDate":"#)?;
    s.integer()?;
    s.expect(br#","key":"#)?;
    s.string()?;
    match kind {
        EventType::Feature => {
            s.expect(br#","variation":"#)?;
            s.string()?;
            s.expect(br#","value":"#)?;
            s.value(0)?;
            if !(s.eat(br#","default":true"#) || s.eat(br#","default":false"#)) {
                return None;
            }
            s.expect(br#","version":"#)?;
            s.string()?;
            s.expect(br#","source":"#)?;
            s.string()?;
            if s.eat(br#","metadata":"#) {
                if s.eat(b"{}") {
                    return None; // an empty metadata is left out by the encoder
                }
                s.object(0)?;
            }
        }
        EventType::Tracking => {
            // Never omitted; `null` is how GO Feature Flag writes a nil map.
            s.expect(br#","evaluationContext":"#)?;
            s.object_or_null()?;
            s.expect(br#","trackingEventDetails":"#)?;
            s.object_or_null()?;
        }
    }
    s.expect(b"}")?;
    (s.at == line.len()).then_some((kind, s.ascii))
}

/// Where the run of plain bytes at the start of a JSON string's contents ends: the first
/// `"`, `\\` or control byte of `b`; and whether the bytes before it are all ASCII (below
/// 0x80), seen in the same look at them, so that a line of ASCII strings needs no UTF-8 check
/// of its own. Sixteen bytes at a time (strings are mostly shorter than that, and a line has
/// more after them), then eight, the last few one at a time.
pub(super) fn find_stop(b: &[u8]) -> Option<(usize, bool)> {
    let mut at = 0;
    let mut ascii = true;
    while let Some(block) = b.get(at..at + BLOCK) {
        let marks = marks(block.try_into().ok()?);
        let stops = marks.quotes | marks.backslashes | marks.controls;
        if stops != 0 {
            let stop = stops.trailing_zeros();
            let before = (1u16 << stop) - 1;
            return Some((at + stop as usize, ascii && marks.high & before == 0));
        }
        ascii &= marks.high == 0;
        at += BLOCK;
    }
    if let Some(word) = b.get(at..at + 8) {
        let marks = StopMarks::of(u64::from_le_bytes(word.try_into().ok()?));
        let stops = marks.quotes | marks.backslashes | marks.controls;
        if stops != 0 {
            let stop = stops.trailing_zeros();
            // The marks below the stop's: the bytes before it.
            let before = (1u64 << stop) - 1;
            return Some((at + stop as usize / 8, ascii && marks.high & before == 0));
        }
        ascii &= marks.high == 0;
        at += 8;
    }
    let tail = b[at..].iter().position(|&c| is_stop(c))?;
    Some((at + tail, ascii && b[at..at + tail].is_ascii()))
}

/// Whether `c` ends a run of plain bytes in a JSON string: `"`, `\\` or a control byte.
#[inline]
pub(super) fn is_stop(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

/// The stops ([`is_stop`]) among a word's eight bytes (byte 0 lowest) by what they are, each
/// marked by its high bit, exactly: no borrow or carry crosses a byte (a byte's low seven
/// bits plus at most 0x7f stay below 0x100), so every mark stands, not only the lowest.
/// Bytes >= 0x80 are never marked as stops (`| x` sets their high bit before the
/// complement), so UTF-8 sequences pass; they are marked in `high`.
pub(super) struct StopMarks {
    pub(super) quotes: u64,
    pub(super) backslashes: u64,
    pub(super) controls: u64,
    /// Bytes >= 0x80.
    pub(super) high: u64,
}

impl StopMarks {
    #[inline]
    pub(super) fn of(word: u64) -> StopMarks {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const LOW: u64 = ONES * 0x7f;
        let zero = |x: u64| !(((x & LOW) + LOW) | x | LOW);
        StopMarks {
            quotes: zero(word ^ (ONES * u64::from(b'"'))),
            backslashes: zero(word ^ (ONES * u64::from(b'\\'))),
            controls: !(((word & LOW) + ONES * 0x60) | word | LOW),
            high: word & !LOW,
        }
    }
}

/// The bytes [`marks`] looks at together.
pub(super) const BLOCK: usize = 16;

/// A block's stops by what they are, one bit a byte (byte 0 lowest).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Marks {
    pub(super) quotes: u16,
    pub(super) backslashes: u16,
    pub(super) controls: u16,
    /// Bytes >= 0x80 (not stops: parts of UTF-8 sequences).
    pub(super) high: u16,
}

/// [`Marks`] of a block: with SSE2 (part of every x86-64) in three compares, else a word
/// at a time ([`marks_by_words`]).
#[inline]
pub(super) fn marks(block: &[u8; BLOCK]) -> Marks {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        // SAFETY: only compiled where SSE2 is enabled, which `marks_sse2` requires.
        unsafe { marks_sse2(block) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        marks_by_words(block)
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
fn marks_sse2(block: &[u8; BLOCK]) -> Marks {
    use std::arch::x86_64::*;
    let half = |at: usize| i64::from_le_bytes(block[at..at + 8].try_into().unwrap());
    let bytes = _mm_set_epi64x(half(8), half(0));
    let mask = |found: __m128i| _mm_movemask_epi8(found) as u16;
    let equal = |c: u8| mask(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(c as i8)));
    Marks {
        quotes: equal(b'"'),
        backslashes: equal(b'\\'),
        // Below 0x20: unchanged by the unsigned minimum with 0x1f.
        controls: mask(_mm_cmpeq_epi8(
            _mm_min_epu8(bytes, _mm_set1_epi8(0x1f)),
            bytes,
        )),
        high: mask(bytes),
    }
}

/// [`marks`] without SIMD: [`StopMarks`] of each word, one bit a byte.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
fn marks_by_words(block: &[u8; BLOCK]) -> Marks {
    let [low, high] = std::array::from_fn(|half| {
        StopMarks::of(u64::from_le_bytes(
            block[half * 8..][..8].try_into().unwrap(),
        ))
    });
    let join = |f: fn(&StopMarks) -> u64| u16::from(bits(f(&low))) | u16::from(bits(f(&high))) << 8;
    Marks {
        quotes: join(|m| m.quotes),
        backslashes: join(|m| m.backslashes),
        controls: join(|m| m.controls),
        high: join(|m| m.high),
    }
}

/// A word's marks ([`StopMarks`]), one bit a byte (byte 0 lowest): every mark is a byte's
/// high bit, and the multiplier moves byte `i`'s to bit `56 + i` without two products
/// meeting (no carry).
#[inline]
pub(super) fn bits(marks: u64) -> u8 {
    (marks.wrapping_mul(0x0002_0408_1020_4081) >> 56) as u8
}

/// The escape after a backslash: the bytes it takes and the character it stands for.
/// `\u` surrogates (no `char`) are left to the general path, as the scanner leaves them.
pub(super) fn escape(after: &[u8]) -> Option<(usize, char)> {
    let plain = match *after.first()? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let hex = after.get(1..5)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let unit = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            return Some((5, char::from_u32(unit)?));
        }
        _ => return None,
    };
    Some((1, plain))
}

/// serde_json's default nesting limit; deeper lines go the general way (and fail there).
const MAX_DEPTH: usize = 100;

pub(super) struct Scanner<'a> {
    pub(super) b: &'a [u8],
    pub(super) at: usize,
    /// No string scanned so far holds a byte >= 0x80.
    pub(super) ascii: bool,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(b: &'a [u8]) -> Self {
        Scanner {
            b,
            at: 0,
            ascii: true,
        }
    }
}

impl<'a> Scanner<'a> {
    /// An object key without escapes, as it is (a key with escapes is left to the general
    /// path, which reads it unescaped): a string whose first stop is its closing quote.
    #[inline]
    pub(super) fn plain_key(&mut self) -> Option<&'a [u8]> {
        self.expect(b"\"")?;
        let start = self.at;
        let (len, ascii) = find_stop(&self.b[start..])?;
        self.at += len;
        self.ascii &= ascii;
        self.expect(b"\"")?;
        Some(&self.b[start..start + len])
    }
}

impl Scanner<'_> {
    pub(super) fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    /// Inlined so that each call compares against a token of known length, in a few loads
    /// rather than a call to `memcmp`.
    #[inline(always)]
    pub(super) fn eat(&mut self, token: &[u8]) -> bool {
        let found = self.b[self.at..].starts_with(token);
        if found {
            self.at += token.len();
        }
        found
    }

    #[inline(always)]
    pub(super) fn expect(&mut self, token: &[u8]) -> Option<()> {
        self.eat(token).then_some(())
    }

    /// A string token. Bytes >= 0x80 are checked as UTF-8 by the caller (see
    /// [`Scanner::ascii`]).
    pub(super) fn string(&mut self) -> Option<()> {
        self.expect(b"\"")?;
        loop {
            let (len, ascii) = find_stop(&self.b[self.at..])?;
            self.at += len;
            self.ascii &= ascii;
            match self.b[self.at] {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => self.escape()?,
                _ => return None, // a control character
            }
        }
    }

    fn escape(&mut self) -> Option<()> {
        let (len, _) = escape(self.b.get(self.at + 1..)?)?;
        self.at += 1 + len; // the backslash and what follows it
        Some(())
    }

    /// `-?(0|[1-9][0-9]*)` that fits an i64.
    fn integer(&mut self) -> Option<()> {
        let start = self.at;
        self.eat(b"-");
        self.digits_without_leading_zero()?;
        let text = &self.b[start..self.at];
        if text.len() <= 18 {
            return Some(()); // 18 digits always fit
        }
        std::str::from_utf8(text)
            .ok()?
            .parse::<i64>()
            .ok()
            .map(|_| ())
    }

    fn digits_without_leading_zero(&mut self) -> Option<()> {
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.at += 1;
                }
            }
            _ => return None,
        }
        Some(())
    }

    fn digits(&mut self) -> Option<()> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        (self.at > start).then_some(())
    }

    /// A JSON number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        self.eat(b"-");
        self.digits_without_leading_zero()?;
        if self.eat(b".") {
            self.digits()?;
        }
        if self.eat(b"e") || self.eat(b"E") {
            let _ = self.eat(b"+") || self.eat(b"-");
            self.digits()?;
        }
        Some(())
    }

    /// Any compact JSON value.
    pub(super) fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(),
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b't' => self.expect(b"true"),
            b'f' => self.expect(b"false"),
            b'n' => self.expect(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.expect(b"{")?;
        if self.eat(b"}") {
            return Some(());
        }
        loop {
            self.string()?;
            self.expect(b":")?;
            self.value(depth + 1)?;
            if self.eat(b"}") {
                return Some(());
            }
            self.expect(b",")?;
        }
    }

    fn object_or_null(&mut self) -> Option<()> {
        if self.eat(b"null") {
            return Some(());
        }
        self.object(0)
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.expect(b"[")?;
        if self.eat(b"]") {
            return Some(());
        }
        loop {
            self.value(depth + 1)?;
            if self.eat(b"]") {
                return Some(());
            }
            self.expect(b",")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::event::fixtures::*;
    use crate::event::{canonical, envelope_fields, Decoded, EventType};

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
            let line = edited(bases[base].as_bytes(), &edits);
            if canonical::check(&line).is_some() {
                let text = std::str::from_utf8(&line).unwrap();
                let general = encoded(text);
                proptest::prop_assert_eq!(general.as_deref(), Ok(text), "{}", text);
            }
        }
    }

    /// Where a string's plain run ends, one byte at a time: what `find_stop` must agree with.
    fn first_stop(b: &[u8]) -> Option<usize> {
        b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)
    }

    #[test]
    fn find_stop_finds_any_byte_at_any_place_in_a_word() {
        // Every byte value at every position of inputs shorter than a word up to two
        // blocks, a word and more, over plain ASCII and over bytes >= 0x80 (never stops,
        // but noted as not ASCII when before the stop).
        for filler in [b'a', 0xff, 0x80, b' '] {
            for len in 0..=44 {
                for at in 0..len {
                    for c in 0..=255u8 {
                        let mut b = vec![filler; len];
                        b[at] = c;
                        let expected = first_stop(&b).map(|at| (at, b[..at].is_ascii()));
                        assert_eq!(canonical::find_stop(&b), expected, "{b:?}");
                    }
                }
            }
        }
    }

    /// A block's marks one byte at a time: what [`canonical::marks`] must agree with.
    fn marks_bytewise(block: &[u8; 16]) -> canonical::Marks {
        let mask =
            |f: fn(u8) -> bool| (0..16).fold(0u16, |m, at| m | u16::from(f(block[at])) << at);
        canonical::Marks {
            quotes: mask(|c| c == b'"'),
            backslashes: mask(|c| c == b'\\'),
            controls: mask(|c| c < 0x20),
            high: mask(|c| c >= 0x80),
        }
    }

    #[test]
    fn marks_find_any_byte_at_any_place_in_a_block() {
        // Every byte value at every position, among plain ASCII, bytes >= 0x80 and stops;
        // with SSE2 and without.
        for filler in [b'a', 0xff, 0x80, b' ', b'"', b'\\', 0x1f, 0] {
            for at in 0..16 {
                for c in 0..=255u8 {
                    let mut block = [filler; 16];
                    block[at] = c;
                    let expected = marks_bytewise(&block);
                    assert_eq!(canonical::marks(&block), expected, "{block:?}");
                    assert_eq!(canonical::marks_by_words(&block), expected, "{block:?}");
                }
            }
        }
    }

    proptest::proptest! {
        /// Several stops in a word, next to bytes one above a stop (`0x01`, `#`, `]`, `!`)
        /// where a borrow from the byte below could mark a byte wrongly.
        #[test]
        fn find_stop_agrees_with_a_byte_loop(
            b in proptest::collection::vec(proptest::sample::select(
                b"\x00\x01\x1f\x20\x21\"#\\]\x7f\x80\xa2\xdc\xffaZ".to_vec()), 0..40),
        ) {
            proptest::prop_assert_eq!(
                canonical::find_stop(&b),
                first_stop(&b).map(|at| (at, b[..at].is_ascii()))
            );
            if let Ok(block) = <[u8; 16]>::try_from(b.get(..16).unwrap_or_default()) {
                proptest::prop_assert_eq!(canonical::marks(&block), marks_bytewise(&block));
                proptest::prop_assert_eq!(canonical::marks_by_words(&block), marks_bytewise(&block));
            }
        }
    }

    #[test]
    fn strings_are_scanned_alike_wherever_a_word_ends() {
        // An escape, a non-ASCII character or a control character after 0 to 17 plain
        // bytes, then 0 to 9 more, with the string at the end of the input and before more.
        let middles = [
            r#"\""#,
            r#"\\"#,
            r#"\/"#,
            r#"\n"#,
            r#"\u00e9"#,
            r#"\uABCD"#,
            "é",
            "😀",
            "\x01",
            "\x1f",
            "\x7f",
            r#"\ud800"#,
            r#"\x"#,
            r#"\u12"#,
            r#"\u+0aO"#,
            "",
        ];
        for before in 0..=17 {
            for after in 0..=9 {
                for middle in middles {
                    let text = format!("\"{}{middle}{}\"", "a".repeat(before), "b".repeat(after));
                    // serde_json takes lone surrogates' escapes too; the scanner leaves them.
                    let valid =
                        serde_json::from_str::<String>(&text).is_ok() && !middle.contains("ud8");
                    for rest in ["", r#","x":1}"#] {
                        let line = format!("{text}{rest}");
                        let mut s = canonical::Scanner::new(line.as_bytes());
                        let got = s.string().map(|()| s.at);
                        assert_eq!(got, valid.then_some(text.len()), "{line:?}");
                        if valid {
                            assert_eq!(s.ascii, text.is_ascii(), "{line:?}");
                        }
                    }
                    let open = &text[..text.len() - 1];
                    let mut s = canonical::Scanner::new(open.as_bytes());
                    assert_eq!(s.string(), None, "unterminated: {open:?}");
                }
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
}
