//! The receiver's fast path: a validating JSON scanner (the full JSON grammar, UTF-8 inside
//! strings, the only place where JSON allows non-ASCII bytes; nothing allocated) that counts the
//! elements of `events` and checks that each is an object with a "kind" key. serde_json with
//! IgnoredAny does the same job at ~450 MB/s; this runs at >1 GB/s, so that the receiver stays far
//! from being the bottleneck on a 2-core machine where it shares the CPU with the tool measured.
//! `count.rs` is the serde_json reference it is tested against.

use std::thread;

/// Checks a webhook body `{"meta":{string values},"events":[objects with "kind"]}` and returns
/// its number of events.
pub(crate) fn scan_body(body: &[u8]) -> Result<u64, String> {
    if body.len() >= 256 * 1024 {
        return scan_body_split(body);
    }
    let mut s = Scan::new(body, 0);
    let r = s.body();
    r.map_err(|e| format!("{e} at byte {}", s.i))
}

/// The same check on two cores: a second thread starts at an event that seems to begin in the
/// middle of the body (`,{"` found there), while this thread scans from the start and stops at
/// that point only if it reaches it exactly at the start of an element of `events`; then the two
/// halves were scanned from the right state and their results add up. When this thread does not
/// stop there (the guess was inside a string or a nested value), it has scanned the whole body by
/// itself, and the second thread's result is ignored.
fn scan_body_split(body: &[u8]) -> Result<u64, String> {
    let mid = body.len() / 2;
    let Some(off) = memchr::memmem::find(&body[mid..], b",{\"") else {
        let mut s = Scan::new(body, 0);
        let r = s.body();
        return r.map_err(|e| format!("{e} at byte {}", s.i));
    };
    let split = mid + off + 1;
    thread::scope(|sc| {
        let second = sc.spawn(move || {
            let mut s = Scan::new(body, split);
            let r = s.resume_in_events();
            r.map_err(|e| format!("{e} at byte {}", s.i))
        });
        let mut first = Scan::new(body, 0);
        first.stop_at = split;
        let r = first.body().map_err(|e| format!("{e} at byte {}", first.i));
        let n1 = r?;
        if !first.stopped {
            return Ok(n1);
        }
        let (n2, meta_after) = second.join().expect("scan thread")?;
        match (first.meta_seen, meta_after) {
            (true, true) => {
                Err("unexpected top-level key (want meta and events once each)".to_string())
            }
            (false, false) => Err("missing meta".to_string()),
            _ => Ok(n1 + n2),
        }
    })
}

pub(crate) struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    /// stop when an element of `events` starts here (see scan_body_split)
    stop_at: usize,
    stopped: bool,
    meta_seen: bool,
}

const MAX_DEPTH: u32 = 128;

/// Bytes that end a run of plain string content: '"', '\\', the control characters, and the
/// bytes of non-ASCII characters (checked one character at a time).
static STRING_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    let mut c = 0x80;
    while c < 0x100 {
        t[c] = true;
        c += 1;
    }
    t
};

/// Skips plain string bytes from `i`, 16 at a time (SSE2, part of every x86_64 CPU): returns
/// the index of the first special byte ('"', '\\', a control character, a byte >= 0x80), or a
/// point less than 16 bytes from the end, from where the caller goes on byte by byte.
#[cfg(target_arch = "x86_64")]
#[inline]
fn skip_plain(b: &[u8], mut i: usize) -> usize {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is baseline on x86_64; every load reads b[i..i + 16], inside the slice.
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let space = _mm_set1_epi8(0x20);
        while i + 16 <= b.len() {
            let x = _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i);
            // signed compare: bytes >= 0x80 are negative, so "< 0x20" also flags them
            let special = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
                _mm_cmplt_epi8(x, space),
            );
            let mask = _mm_movemask_epi8(special) as u32;
            if mask != 0 {
                return i + mask.trailing_zeros() as usize;
            }
            i += 16;
        }
    }
    i
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn skip_plain(_b: &[u8], i: usize) -> usize {
    i
}

impl<'a> Scan<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }
    #[inline]
    fn eat(&mut self, c: u8) -> Result<(), &'static str> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(match c {
                b'{' => "expected '{'",
                b'}' => "expected '}'",
                b'[' => "expected '['",
                b']' => "expected ']'",
                b':' => "expected ':'",
                b',' => "expected ','",
                _ => "unexpected byte",
            })
        }
    }

    pub(crate) fn new(b: &'a [u8], i: usize) -> Scan<'a> {
        Scan {
            b,
            i,
            stop_at: usize::MAX,
            stopped: false,
            meta_seen: false,
        }
    }

    /// The whole body; with `stop_at`, possibly only up to there (then `stopped` is set and the
    /// events counted so far are returned).
    pub(crate) fn body(&mut self) -> Result<u64, &'static str> {
        self.eat(b'{')?;
        let mut events = None;
        loop {
            self.ws();
            let key = self.string()?;
            self.eat(b':')?;
            match key {
                b"meta" if !self.meta_seen => {
                    self.meta()?;
                    self.meta_seen = true;
                }
                b"events" if events.is_none() => {
                    self.eat(b'[')?;
                    let n = self.elements()?;
                    if self.stopped {
                        return Ok(n);
                    }
                    events = Some(n);
                }
                _ => return Err("unexpected top-level key (want meta and events once each)"),
            }
            if self.end_of_member()? {
                break;
            }
        }
        self.end()?;
        if !self.meta_seen {
            return Err("missing meta");
        }
        events.ok_or("missing events")
    }

    /// From the start of an element of `events` to the end of the body; returns the events
    /// counted and whether a `meta` member came after `events`.
    fn resume_in_events(&mut self) -> Result<(u64, bool), &'static str> {
        let n = self.elements()?;
        let mut meta_after = false;
        while !self.end_of_member()? {
            self.ws();
            let key = self.string()?;
            self.eat(b':')?;
            match key {
                b"meta" if !meta_after => {
                    self.meta()?;
                    meta_after = true;
                }
                _ => return Err("unexpected top-level key (want meta and events once each)"),
            }
        }
        self.end()?;
        Ok((n, meta_after))
    }

    /// After a top-level member: Ok(true) at the closing '}', Ok(false) after a ','.
    fn end_of_member(&mut self) -> Result<bool, &'static str> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(false)
            }
            Some(b'}') => {
                self.i += 1;
                Ok(true)
            }
            _ => Err("expected ',' or '}' after a top-level member"),
        }
    }

    fn end(&mut self) -> Result<(), &'static str> {
        self.ws();
        if self.i != self.b.len() {
            return Err("trailing bytes after the body");
        }
        Ok(())
    }

    fn meta(&mut self) -> Result<(), &'static str> {
        self.eat(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.string()?;
            self.eat(b':')?;
            self.ws();
            self.string().map_err(|_| "meta values must be strings")?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err("expected ',' or '}' in meta"),
            }
        }
    }

    /// The elements of `events`, after its '[' up to and with its ']'.
    fn elements(&mut self) -> Result<u64, &'static str> {
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(0);
        }
        let mut n = 0;
        loop {
            self.ws();
            if self.i == self.stop_at {
                self.stopped = true;
                return Ok(n);
            }
            if self.peek() != Some(b'{') {
                return Err("an event is not an object");
            }
            if !self.object(1, true)? {
                return Err("an event has no \"kind\"");
            }
            n += 1;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(n);
                }
                _ => return Err("expected ',' or ']' in events"),
            }
        }
    }

    /// At '{'. Returns whether a key "kind" was seen (checked only when `want_kind`).
    fn object(&mut self, depth: u32, want_kind: bool) -> Result<bool, &'static str> {
        if depth > MAX_DEPTH {
            return Err("nested too deep");
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(false);
        }
        let mut kind = false;
        loop {
            self.ws();
            let key = self.string()?;
            if want_kind && key == b"kind" {
                kind = true;
            }
            self.eat(b':')?;
            self.value(depth)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(kind);
                }
                _ => return Err("expected ',' or '}' in an object"),
            }
        }
    }

    /// At '['.
    fn array(&mut self, depth: u32) -> Result<(), &'static str> {
        if depth > MAX_DEPTH {
            return Err("nested too deep");
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.value(depth)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err("expected ',' or ']' in an array"),
            }
        }
    }

    fn value(&mut self, depth: u32) -> Result<(), &'static str> {
        self.ws();
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{') => self.object(depth + 1, false).map(|_| ()),
            Some(b'[') => self.array(depth + 1),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err("expected a value"),
        }
    }

    fn literal(&mut self, lit: &[u8]) -> Result<(), &'static str> {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err("bad literal")
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), &'static str> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err("bad number"),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err("bad number fraction");
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err("bad number exponent");
            }
        }
        Ok(())
    }

    /// At '"' (checked). Returns the raw bytes between the quotes.
    #[inline]
    fn string(&mut self) -> Result<&'a [u8], &'static str> {
        if self.peek() != Some(b'"') {
            return Err("expected a string");
        }
        self.i += 1;
        let start = self.i;
        let b = self.b;
        loop {
            // skip plain bytes eight at a time while none is special
            let mut j = skip_plain(b, self.i);
            while j < b.len() && !STRING_SPECIAL[b[j] as usize] {
                j += 1;
            }
            self.i = j;
            match b.get(j) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(&b[start..j]);
                }
                Some(b'\\') => match b.get(j + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                    Some(b'u') => {
                        let hex = b.get(j + 2..j + 6).ok_or("bad \\u escape")?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return Err("bad \\u escape");
                        }
                        self.i += 6;
                    }
                    _ => return Err("bad escape"),
                },
                Some(&c) if c >= 0x80 => {
                    // a UTF-8 sequence: check just this character
                    let len = match c {
                        0xC2..=0xDF => 2,
                        0xE0..=0xEF => 3,
                        0xF0..=0xF4 => 4,
                        _ => return Err("invalid UTF-8 in a string"),
                    };
                    let ch = b.get(j..j + len).ok_or("truncated UTF-8 in a string")?;
                    std::str::from_utf8(ch).map_err(|_| "invalid UTF-8 in a string")?;
                    self.i += len;
                }
                Some(_) => return Err("control character in a string"),
                None => return Err("unterminated string"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::count::count_events;
    use crate::gen::{write_event, Rng};

    #[test]
    fn scanner_agrees_with_serde_json() {
        let good = [
            r#"{"meta":{},"events":[]}"#,
            r#"{"meta":{"hostname":"h","a":"b\"c"},"events":[{"kind":"feature","value":{"a":[1,-2.5e3,true,null,"x\u00e9"]}}]}"#,
            r#" { "events" : [ {"kind":"x"} , {"b":0,"kind":"y"} ] , "meta" : { } } "#,
        ];
        for g in good {
            let a = scan_body(g.as_bytes()).unwrap();
            let b = count_events(g.as_bytes(), None, 0).unwrap();
            assert_eq!(a, b, "{g}");
        }
        let bad = [
            r#"{"meta":{},"events":[{"kind":1},]}"#,
            r#"{"meta":{},"events":[{"no":1}]}"#,
            r#"{"meta":{"a":1},"events":[]}"#,
            r#"{"meta":{},"events":[{"kind":01}]}"#,
            r#"{"meta":{},"events":[{"kind":"a\x"}]}"#,
            r#"{"meta":{},"events":[{"kind":tru}]}"#,
            r#"{"meta":{},"events":[{"kind":"a"}]} x"#,
            r#"{"events":[]}"#,
            r#"{"meta":{},"events":[{"kind":"a",}]}"#,
            r#"{"meta":{},"events":[{"kind":1.}]}"#,
        ];
        for b in bad {
            assert!(scan_body(b.as_bytes()).is_err(), "scanner accepted {b}");
            assert!(
                count_events(b.as_bytes(), None, 0).is_err(),
                "serde accepted {b}"
            );
        }
    }

    fn big_body(n: usize, tricky: bool) -> Vec<u8> {
        let mut rng = Rng(3);
        let mut body = b"{\"meta\":{\"hostname\":\"h\"},\"events\":[".to_vec();
        for i in 0..n {
            if i > 0 {
                body.push(b',');
            }
            if tricky && i % 7 == 0 {
                // looks like an event boundary, inside a string and inside a nested array
                body.extend_from_slice(br#"{"kind":"feature","value":"x\"},{\"kind\":1","s":"a,{","nested":[1,{"kind":2},{"a":3}]}"#);
            } else {
                write_event(&mut body, &mut rng, 1, None);
            }
        }
        body.extend_from_slice(b"]}");
        body
    }

    #[test]
    fn split_scan_agrees_with_serde_json() {
        for tricky in [false, true] {
            let body = big_body(5000, tricky);
            assert!(body.len() > 256 * 1024);
            assert_eq!(scan_body(&body).unwrap(), 5000);
            assert_eq!(count_events(&body, None, 0).unwrap(), 5000);
            // move the middle over a few events, so that the guessed split point lands in every
            // kind of place: an event boundary, a nested array, a string ending in ",{"
            let open = body.iter().position(|&c| c == b'[').unwrap() + 1;
            for pad in (0..1200).step_by(3) {
                let mut b = body.clone();
                b.splice(open..open, std::iter::repeat_n(b' ', pad));
                assert_eq!(scan_body(&b).unwrap(), 5000, "pad {pad}");
            }
        }
        // errors in either half, meta after events, meta twice, meta missing
        let body = big_body(5000, false);
        let mid = body.len() / 2;
        for at in [mid / 2, mid + mid / 2] {
            let mut b = body.clone();
            let p = at + memchr::memmem::find(&body[at..], b"\"kind\"").unwrap();
            b[p + 1] = b'K'; // "Kind": an event without "kind"
            assert!(scan_body(&b).is_err());
            assert!(count_events(&b, None, 0).is_err());
        }
        let events = &body[body.iter().position(|&c| c == b'[').unwrap()..body.len() - 1];
        let mut after = b"{\"events\":".to_vec();
        after.extend_from_slice(events);
        after.extend_from_slice(b",\"meta\":{}}");
        assert_eq!(scan_body(&after).unwrap(), 5000);
        let mut twice = b"{\"meta\":{},\"events\":".to_vec();
        twice.extend_from_slice(events);
        twice.extend_from_slice(b",\"meta\":{}}");
        assert!(scan_body(&twice).is_err());
        let mut none = b"{\"events\":".to_vec();
        none.extend_from_slice(events);
        none.push(b'}');
        assert!(scan_body(&none).is_err());
        let mut trailing = body.clone();
        trailing.extend_from_slice(b" x");
        assert!(scan_body(&trailing).is_err());
    }

    #[test]
    fn generated_events_scan() {
        let mut rng = Rng(1);
        let mut body = b"{\"meta\":{},\"events\":[".to_vec();
        for i in 0..1000 {
            if i > 0 {
                body.push(b',');
            }
            write_event(
                &mut body,
                &mut rng,
                1,
                if i % 2 == 0 { Some(5) } else { None },
            );
        }
        body.extend_from_slice(b"]}");
        assert_eq!(scan_body(&body).unwrap(), 1000);
        let mut lat = Vec::new();
        assert_eq!(count_events(&body, Some(&mut lat), 10).unwrap(), 1000);
        assert_eq!(lat.len(), 500);
        assert!(lat.iter().all(|&l| l == 5));
    }
}
