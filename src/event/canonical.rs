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
pub fn check(line: &[u8]) -> Option<EventType> {
    let mut s = Scanner { b: line, at: 0 };
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
    (s.at == line.len()).then_some(kind)
}

/// serde_json's default nesting limit; deeper lines go the general way (and fail there).
const MAX_DEPTH: usize = 100;

struct Scanner<'a> {
    b: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn eat(&mut self, token: &[u8]) -> bool {
        let found = self.b[self.at..].starts_with(token);
        if found {
            self.at += token.len();
        }
        found
    }

    fn expect(&mut self, token: &[u8]) -> Option<()> {
        self.eat(token).then_some(())
    }

    /// A string token. Bytes >= 0x80 were checked as UTF-8 by the caller.
    fn string(&mut self) -> Option<()> {
        self.expect(b"\"")?;
        loop {
            let rest = &self.b[self.at..];
            let stop = rest
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
            self.at += stop;
            match rest[stop] {
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
        self.at += 1; // the backslash
        match self.peek()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
            b'u' => {
                let hex = self.b.get(self.at + 1..self.at + 5)?;
                let text = std::str::from_utf8(hex).ok()?;
                let unit = u16::from_str_radix(text, 16).ok()?;
                if !hex.iter().all(u8::is_ascii_hexdigit) || (0xD800..=0xDFFF).contains(&unit) {
                    return None; // surrogates: left to the general path
                }
                self.at += 5;
            }
            _ => return None,
        }
        Some(())
    }

    /// `-?(0|[1-9][0-9]*)` that fits an i64.
    fn integer(&mut self) -> Option<()> {
        let start = self.at;
        self.eat(b"-");
        self.digits_without_leading_zero()?;
        let text = std::str::from_utf8(&self.b[start..self.at]).ok()?;
        text.parse::<i64>().ok().map(|_| ())
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
    fn value(&mut self, depth: usize) -> Option<()> {
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
