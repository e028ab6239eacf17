//! The HTTP source's body parser (`flaghook::source::http::body`): decompression, then the
//! cut into lines, for any bytes.
//!
//! The first byte picks the `Content-Encoding` (none, gzip, zstd) and the next two
//! `max_line_bytes`; the rest is the body. Besides "no panic", it checks:
//! - decompression stays within its limit;
//! - no line holds a newline; a line within `max_line_bytes` is whole, a longer one is
//!   oversized with an excerpt of at most 1 KiB;
//! - `accepted` is exactly the number of lines that are JSON objects (whole, within the
//!   limit, by JSON's grammar), and `rejected` the others, so the response's counts are true;
//! - a body refused as not JSON has no line that is JSON, and is not one JSON value.
#![no_main]

use bytes::Bytes;
use flaghook::event::LineKind;
use flaghook::source::http::body::{self, Encoding};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;

const MAX_BODY: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let encoding = [Encoding::Identity, Encoding::Gzip, Encoding::Zstd][data[0] as usize % 3];
    let max_line_bytes = 1 + usize::from(u16::from_le_bytes([data[1], data[2]])) % 4096;
    let raw = Bytes::copy_from_slice(&data[3..]);
    let Ok(decoded) = body::decompress(raw, encoding, MAX_BODY) else {
        return;
    };
    assert!(decoded.len() <= MAX_BODY);
    match body::parse(&decoded, max_line_bytes) {
        Ok(parsed) => {
            let mut objects = 0;
            // Lines that came in one piece, each ending in a newline: the body itself (with
            // a newline added when its last line had none), or a JSON value's elements.
            let whole: Vec<(&[u8], LineKind)> = match &parsed.text {
                Some(text) => {
                    assert!(parsed.lines.is_empty());
                    let one_value = serde_json::from_slice::<&RawValue>(&decoded).is_ok();
                    let as_came = text.bytes[..] == decoded[..]
                        || (text.bytes.len() == decoded.len() + 1
                            && text.bytes.starts_with(&decoded));
                    assert!(as_came || one_value, "the lines are not the body");
                    let lines: Vec<&[u8]> = text
                        .bytes
                        .strip_suffix(b"\n")
                        .expect("ends in a newline")
                        .split(|&b| b == b'\n')
                        .collect();
                    assert_eq!(lines.len(), text.count);
                    lines
                        .into_iter()
                        .map(|l| (l, LineKind::Text { number: 0, end: 0 }))
                        .collect()
                }
                None => Vec::new(),
            };
            let cut = parsed
                .lines
                .iter()
                .map(|l| (l.bytes.of(&[]), l.kind.clone()));
            for (bytes, kind) in whole.into_iter().chain(cut) {
                // A body's lines hold their own bytes.
                assert!(!bytes.contains(&b'\n'), "a line holds a newline");
                match kind {
                    LineKind::Text { .. } => {
                        assert!(bytes.len() <= max_line_bytes);
                        // JSON's grammar (a number like 1e99999 is JSON, though no f64
                        // holds it): what the sinks read the line with.
                        let object = std::str::from_utf8(bytes)
                            .ok()
                            .and_then(|t| serde_json::from_str::<&RawValue>(t).ok())
                            .is_some_and(|raw| raw.get().starts_with('{'));
                        objects += usize::from(object);
                    }
                    LineKind::Oversized { len, .. } => {
                        assert!(len > max_line_bytes as u64);
                        assert!(bytes.len() <= 1024);
                    }
                    _ => panic!("a body line of another kind"),
                }
            }
            assert_eq!(
                parsed.accepted(),
                objects,
                "accepted is not the count of objects"
            );
            assert_eq!(parsed.rejected, parsed.len() - objects);
            assert_eq!(parsed.first_rejected.is_some(), parsed.rejected > 0);
        }
        Err(_) => {
            assert!(serde_json::from_slice::<Value>(&decoded).is_err());
            for line in decoded.split(|&b| b == b'\n') {
                assert!(serde_json::from_slice::<Value>(line).is_err());
            }
        }
    }
});
