//! An HTTP source's request body: decompressed, then cut into lines. Pure functions, for
//! the unit tests and the fuzz target.
//!
//! A body is one of:
//! - a JSON array (Vector's `http` sink with `encoding.codec = "json"`): each element is a line;
//! - GO Feature Flag's webhook body `{"meta": {...}, "events": [...]}` (an object with an
//!   `events` array and no `kind`): each event is a line, `meta` is dropped (each sink sends
//!   its own);
//! - a single JSON object: one line;
//! - newline-delimited JSON (Vector's `framing.method = "newline_delimited"`): each line.
//!
//! Elements of an array are written compact, so that a line never holds a newline. A line
//! that is not a JSON object (or longer than `max_line_bytes`) is counted as rejected and
//! still handed on, so that the sinks dead-letter it with their reason, as for every source.
//! A body none of whose lines is JSON is refused whole ([`NotJson`]): it is not what this
//! source reads, and the client should hear so.

use std::io::Read;

use bytes::{Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{compact, Line, LineKind};
use crate::source::lines::{TextLines, OVERSIZED_EXCERPT};

/// A `Content-Encoding` flaghook reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// The encoding a `Content-Encoding` header names; `Err` names what is not supported.
    pub fn from_header(value: Option<&str>) -> Result<Encoding, String> {
        let value = value.unwrap_or("").trim();
        match value.to_ascii_lowercase().as_str() {
            "" | "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "zstd" => Ok(Encoding::Zstd),
            _ => Err(format!(
                "Content-Encoding {:?} is not supported: send gzip, zstd or no encoding",
                value.chars().take(40).collect::<String>()
            )),
        }
    }
}

/// Why a body could not be decompressed.
#[derive(Debug, PartialEq, Eq)]
pub enum Undecodable {
    /// It decompresses to more than the limit.
    TooLarge,
    Invalid(String),
}

/// `body` decompressed, to at most `max` bytes.
pub fn decompress(body: Bytes, encoding: Encoding, max: usize) -> Result<Bytes, Undecodable> {
    let reader: Box<dyn Read + '_> = match encoding {
        Encoding::Identity => return Ok(body),
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
        Encoding::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(&body[..])
                .map_err(|e| Undecodable::Invalid(format!("zstd: {e}")))?,
        ),
    };
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| Undecodable::Invalid(format!("{encoding:?} body: {e}").to_lowercase()))?;
    if out.len() > max {
        return Err(Undecodable::TooLarge);
    }
    Ok(Bytes::from(out))
}

/// A body cut into lines.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Every line, the rejected ones too (the sinks dead-letter them); none when they are
    /// in `text`.
    pub lines: Vec<Line>,
    /// The lines in one piece, when they can be: a newline-delimited body as it came (with
    /// a newline added when its last line had none) when no line is blank, ends in `\r` or
    /// is longer than `max_line_bytes`; or a JSON array's elements, compact, a line each,
    /// when none is longer. They go to the journal in one piece, as a TCP read's do, not
    /// as a reference-counted slice each.
    pub text: Option<TextLines>,
    /// Lines that are not a JSON object, or longer than `max_line_bytes`.
    pub rejected: usize,
    /// Where the first rejected line is, and why.
    pub first_rejected: Option<String>,
}

impl Parsed {
    pub fn accepted(&self) -> usize {
        self.len() - self.rejected
    }

    /// How many lines the body holds.
    pub fn len(&self) -> usize {
        self.text.as_ref().map_or(self.lines.len(), |t| t.count)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn reject(&mut self, what: impl FnOnce() -> String) {
        self.rejected += 1;
        if self.first_rejected.is_none() {
            self.first_rejected = Some(what());
        }
    }
}

/// The body is not JSON at all: why, for a 400.
#[derive(Debug, PartialEq, Eq)]
pub struct NotJson(pub String);

/// Cuts `body` (decompressed) into lines of at most `max_line_bytes`.
pub fn parse(body: &Bytes, max_line_bytes: usize) -> Result<Parsed, NotJson> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    if start == body.len() {
        return Ok(Parsed::default());
    }
    if matches!(body[start], b'[' | b'{') {
        let text = std::str::from_utf8(body).ok();
        if let Some(whole) = text.and_then(|t| serde_json::from_str::<&RawValue>(t).ok()) {
            return Ok(one_value(whole, max_line_bytes));
        }
    }
    ndjson(body, max_line_bytes)
}

/// A body that is one JSON value: an array, a GO Feature Flag webhook body, an object.
fn one_value(whole: &RawValue, max_line_bytes: usize) -> Parsed {
    #[derive(Deserialize)]
    struct Webhook<'a> {
        #[serde(borrow)]
        events: Vec<&'a RawValue>,
        #[serde(default)]
        kind: Option<IgnoredAny>,
    }
    let text = whole.get();
    let elements: Vec<&RawValue> = if text.starts_with('[') {
        serde_json::from_str(text).unwrap_or_default()
    } else {
        match serde_json::from_str::<Webhook<'_>>(text) {
            Ok(webhook) if webhook.kind.is_none() => webhook.events,
            _ => vec![whole],
        }
    };
    let mut parsed = Parsed::default();
    // The elements, compact, each with its newline, in one piece (as `Parsed::text` is
    // for a newline-delimited body): a line each would cost some 200 bytes however short
    // the element, so a body of ten million `1,` would have taken two gigabytes. Only
    // when an element is longer than `max_line_bytes` are they lines one by one.
    let mut out = BytesMut::with_capacity(text.len());
    let mut ends = Vec::with_capacity(elements.len());
    let mut oversized = false;
    for (i, element) in elements.iter().enumerate() {
        let number = i as u64 + 1;
        let start = out.len();
        compact(element.get().as_bytes(), &mut out);
        let len = out.len() - start;
        if len > max_line_bytes {
            oversized = true;
            parsed.reject(|| format!("element {number}: {len} bytes, longer than max_line_bytes"));
        } else if !element.get().starts_with('{') {
            parsed.reject(|| format!("element {number}: not a JSON object"));
        }
        ends.push(out.len());
        out.extend_from_slice(b"\n");
    }
    let text = out.freeze();
    if ends.is_empty() {
        return parsed;
    }
    if !oversized {
        parsed.text = Some(TextLines {
            count: ends.len(),
            bytes: text,
        });
        return parsed;
    }
    let mut start = 0;
    for (i, end) in ends.into_iter().enumerate() {
        let number = i as u64 + 1;
        parsed
            .lines
            .push(line(text.slice(start..end), number, number, max_line_bytes));
        start = end + 1;
    }
    parsed
}

/// Newline-delimited JSON: each non-blank line (`\r\n` endings too).
fn ndjson(body: &Bytes, max_line_bytes: usize) -> Result<Parsed, NotJson> {
    let mut parsed = Parsed::default();
    let mut json_lines = 0usize;
    let mut first_error = None;
    // Each non-blank line: where its text is, its number, and where the next one starts.
    let mut cuts: Vec<(std::ops::Range<usize>, u64, usize)> = Vec::new();
    // Whether the lines are the body as it came (see `Parsed::text`). A last line without
    // its newline is given one (a copy of the body), so that such a body too goes in one
    // piece: a line each costs some 100 bytes however short it is.
    let mut whole = true;
    let mut at = 0usize;
    let mut number = 0u64;
    while at < body.len() {
        let end = memchr::memchr(b'\n', &body[at..]).map_or(body.len(), |i| at + i);
        number += 1;
        let next = (end + 1).min(body.len());
        let mut text = &body[at..end];
        if text.last() == Some(&b'\r') {
            text = &text[..text.len() - 1];
            whole = false;
        }
        let trimmed_at = text.iter().position(|b| !b.is_ascii_whitespace());
        if let Some(first) = trimmed_at {
            if text.len() > max_line_bytes {
                whole = false;
                json_lines += 1;
                let len = text.len();
                parsed.reject(|| format!("line {number}: {len} bytes, longer than max_line_bytes"));
            } else {
                // `IgnoredAny` skips strings unchecked: UTF-8 is checked first. An event in
                // GO Feature Flag's encoding, the usual line, is known to be JSON without it.
                let json = std::str::from_utf8(text)
                    .map_err(|e| format!("not UTF-8 (at byte {})", e.valid_up_to()))
                    .and_then(|t| match crate::event::is_goff_event(t) {
                        true => Ok(()),
                        false => serde_json::from_str::<IgnoredAny>(t)
                            .map(|_| ())
                            .map_err(|e| format!("not JSON ({e})")),
                    });
                match json {
                    Ok(_) => {
                        json_lines += 1;
                        if text[first] != b'{' {
                            parsed.reject(|| format!("line {number}: not a JSON object"));
                        }
                    }
                    Err(e) => {
                        let reason = format!("line {number}: {e}");
                        first_error.get_or_insert_with(|| reason.clone());
                        parsed.reject(|| reason);
                    }
                }
            }
            cuts.push((at..at + text.len(), number, next));
        } else {
            whole = false; // a blank line, not handed on
        }
        at = next;
    }
    if json_lines == 0 {
        if let Some(reason) = first_error {
            return Err(NotJson(format!(
                "the body is not JSON: {reason}; send a JSON array, an object, GO Feature Flag's webhook body or newline-delimited JSON"
            )));
        }
    }
    if whole {
        parsed.text = Some(TextLines {
            bytes: if body.last() == Some(&b'\n') {
                body.clone()
            } else {
                let mut with_newline = BytesMut::with_capacity(body.len() + 1);
                with_newline.extend_from_slice(body);
                with_newline.extend_from_slice(b"\n");
                with_newline.freeze()
            },
            count: cuts.len(),
        });
    } else {
        parsed.lines = cuts
            .into_iter()
            .map(|(text, number, next)| line(body.slice(text), number, next as u64, max_line_bytes))
            .collect();
    }
    Ok(parsed)
}

/// A line, or its start when it is longer than `max_line_bytes`.
fn line(bytes: Bytes, number: u64, end: u64, max_line_bytes: usize) -> Line {
    if bytes.len() <= max_line_bytes {
        return Line {
            bytes: bytes.into(),
            kind: LineKind::Text { number, end },
        };
    }
    let len = bytes.len() as u64;
    Line {
        bytes: Bytes::copy_from_slice(&bytes[..OVERSIZED_EXCERPT.min(bytes.len())]).into(),
        kind: LineKind::Oversized { number, end, len },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(parsed: &Parsed) -> Vec<&str> {
        if let Some(text) = &parsed.text {
            assert!(parsed.lines.is_empty());
            let text = std::str::from_utf8(&text.bytes).unwrap();
            return text.strip_suffix('\n').unwrap().split('\n').collect();
        }
        parsed
            .lines
            .iter()
            .map(|l| std::str::from_utf8(l.own_bytes()).unwrap())
            .collect()
    }

    /// A body of lines as they came, each ending in `\n`, goes to the journal in one
    /// piece, with the same lines and counts as cut one by one; anything else is cut.
    #[test]
    fn a_body_of_lines_as_they_came_goes_in_one_piece() {
        let body = "{\"a\":1}\n[1]\nnot json\n{\"b\":2}\n";
        let p = parse_str(body).unwrap();
        let text = p.text.as_ref().expect("in one piece");
        assert_eq!((&text.bytes[..], text.count), (body.as_bytes(), 4));
        assert_eq!((p.len(), p.accepted(), p.rejected), (4, 2, 2));
        assert_eq!(
            p.first_rejected.as_deref(),
            Some("line 2: not a JSON object")
        );
        // No newline at the end: one is added.
        let p = parse_str("{\"a\":1}\n{\"b\":2}").unwrap();
        let text = p.text.as_ref().expect("in one piece");
        assert_eq!(
            (&text.bytes[..], text.count),
            (&b"{\"a\":1}\n{\"b\":2}\n"[..], 2)
        );
        for cut in [
            "{\"a\":1}\r\n{\"b\":2}\n",   // CRLF
            "{\"a\":1}\n\n{\"b\":2}\n",   // a blank line
            "{\"a\":1}\n  \n{\"b\":2}\n", // a line of spaces
        ] {
            let p = parse_str(cut).unwrap();
            assert!(p.text.is_none(), "{cut:?}");
            assert_eq!(lines(&p), [r#"{"a":1}"#, r#"{"b":2}"#], "{cut:?}");
        }
        let long = format!("{{\"a\":\"{}\"}}\n{{\"b\":2}}\n", "x".repeat(1000));
        let p = parse_str(&long).unwrap();
        assert!(p.text.is_none());
        assert!(matches!(p.lines[0].kind, LineKind::Oversized { .. }));
        assert_eq!((p.accepted(), p.rejected), (1, 1));
    }

    fn parse_str(body: &str) -> Result<Parsed, NotJson> {
        parse(&Bytes::from(body.to_owned()), 1000)
    }

    #[test]
    fn ndjson_with_crlf_and_blank_lines() {
        let p = parse_str("{\"a\":1}\r\n\n  \n{\"b\":2}").unwrap();
        assert_eq!(lines(&p), [r#"{"a":1}"#, r#"{"b":2}"#]);
        assert_eq!((p.accepted(), p.rejected), (2, 0));
        assert_eq!(p.lines[1].kind, LineKind::Text { number: 4, end: 20 });
    }

    #[test]
    fn an_array_is_one_line_per_element_written_compact() {
        let p = parse_str("[\n  {\"a\": 1,\n   \"s\": \"x y\"},\n  {\"b\": [1, 2]}\n]\n").unwrap();
        assert_eq!(lines(&p), [r#"{"a":1,"s":"x y"}"#, r#"{"b":[1,2]}"#]);
        assert_eq!(p.rejected, 0);
    }

    #[test]
    fn the_goff_webhook_body_gives_its_events() {
        let body = r#"{"meta":{"hostname":"h"},"events":[{"kind":"feature","key":"k"},{"kind":"tracking","key":"t"}]}"#;
        let p = parse_str(body).unwrap();
        assert_eq!(
            lines(&p),
            [
                r#"{"kind":"feature","key":"k"}"#,
                r#"{"kind":"tracking","key":"t"}"#
            ]
        );
    }

    #[test]
    fn an_object_is_one_line_even_with_an_events_field_when_it_has_a_kind() {
        let body = r#"{"kind":"tracking","events":[1],"key":"k"}"#;
        assert_eq!(lines(&parse_str(body).unwrap()), [body]);
        let envelope = r#"{"message":"{\"kind\":\"feature\"}","host":"h"}"#;
        assert_eq!(lines(&parse_str(envelope).unwrap()), [envelope]);
    }

    #[test]
    fn bad_lines_in_a_good_body_are_counted_and_still_handed_on() {
        let p = parse_str("{\"a\":1}\nnot json\n42\n{\"b\":2}\n").unwrap();
        assert_eq!(lines(&p), [r#"{"a":1}"#, "not json", "42", r#"{"b":2}"#]);
        assert_eq!((p.accepted(), p.rejected), (2, 2));
        assert!(p
            .first_rejected
            .as_deref()
            .unwrap()
            .starts_with("line 2: not JSON"));
        let p = parse_str("[{\"a\":1}, \"s\", 3]").unwrap();
        assert_eq!((p.accepted(), p.rejected), (1, 2));
        assert_eq!(
            p.first_rejected.as_deref(),
            Some("element 2: not a JSON object")
        );
    }

    /// Found by the http_body fuzz target: a string holding bytes that are not UTF-8
    /// passed the JSON check (serde skips strings it ignores) and counted as accepted.
    #[test]
    fn a_line_that_is_not_utf8_is_rejected() {
        let mut body = b"{\"kind\":\"feat".to_vec();
        body.extend_from_slice(b"\xf5re\"}\n{\"a\":1}\n");
        let p = parse(&Bytes::from(body), 1000).unwrap();
        assert_eq!((p.accepted(), p.rejected), (1, 1));
        assert_eq!(
            p.first_rejected.as_deref(),
            Some("line 1: not UTF-8 (at byte 13)")
        );
        // JSON is UTF-8: a body that is not is not JSON at all.
        let array = Bytes::from_static(b"[{\"a\":\"\xff\"}]");
        assert!(parse(&array, 1000)
            .unwrap_err()
            .0
            .contains("line 1: not UTF-8"));
    }

    #[test]
    fn a_body_that_is_not_json_at_all_is_refused_with_the_reason() {
        for body in ["hello world", "<xml/>\n<more/>", "[{\"a\":1}, {\"b\""] {
            let err = parse_str(body).unwrap_err();
            assert!(
                err.0
                    .starts_with("the body is not JSON: line 1: not JSON ("),
                "{err:?}"
            );
        }
        assert_eq!(parse_str(" \n ").unwrap().lines.len(), 0);
    }

    #[test]
    fn long_lines_and_elements_are_oversized() {
        let long = format!("{{\"a\":\"{}\"}}", "x".repeat(2000));
        let p = parse_str(&format!("{long}\n{{\"b\":1}}")).unwrap();
        assert!(matches!(
            p.lines[0].kind,
            LineKind::Oversized { len: 2008, .. }
        ));
        assert_eq!(p.lines[0].own_bytes().len(), OVERSIZED_EXCERPT);
        assert_eq!((p.accepted(), p.rejected), (1, 1));
        let p = parse_str(&format!("[{long}]")).unwrap();
        assert!(matches!(p.lines[0].kind, LineKind::Oversized { .. }));
    }

    #[test]
    fn gzip_and_zstd_bodies_decompress_within_the_limit() {
        use std::io::Write;
        let body = b"{\"a\":1}\n".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&body).unwrap();
        let gz = Bytes::from(gz.finish().unwrap());
        let zst = Bytes::from(zstd::encode_all(&body[..], 1).unwrap());
        for (encoded, encoding) in [(gz, Encoding::Gzip), (zst, Encoding::Zstd)] {
            assert_eq!(decompress(encoded.clone(), encoding, 800).unwrap(), body);
            assert_eq!(
                decompress(encoded, encoding, 799),
                Err(Undecodable::TooLarge)
            );
        }
        assert!(matches!(
            decompress(Bytes::from_static(b"nope"), Encoding::Gzip, 100),
            Err(Undecodable::Invalid(_))
        ));
        assert_eq!(Encoding::from_header(Some("GZIP")), Ok(Encoding::Gzip));
        assert!(Encoding::from_header(Some("br"))
            .unwrap_err()
            .contains("\"br\" is not supported"));
    }
}
