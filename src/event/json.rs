//! JSON helpers shared by the decoder and the encoder: compaction, and short reasons.

use bytes::{BufMut, BytesMut};

use super::{invalid, Invalid};

/// The start of `text` (at most 40 bytes), to quote in a reason.
pub(crate) fn excerpt(text: &str) -> String {
    let mut end = text.len().min(40);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{}...", &text[..end])
    } else {
        text.to_owned()
    }
}

/// The reason for a line serde_json could not parse: truncated, or not valid JSON.
pub(super) fn json_error(e: serde_json::Error) -> Invalid {
    let what = match e.classify() {
        serde_json::error::Category::Eof => "truncated JSON",
        _ => "not valid JSON",
    };
    invalid(format!("{what}: {e}"))
}

/// Appends `json` (valid JSON) without the whitespace between tokens.
pub fn compact(json: &[u8], out: &mut BytesMut) {
    if !json
        .iter()
        .any(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
    {
        out.put_slice(json);
        return;
    }
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            continue;
        } else if b == b'"' {
            in_string = true;
        }
        out.put_u8(b);
    }
}
