//! The Forward protocol decoder (`flaghook::source::fluent::forward`): a connection's bytes,
//! fed in arbitrary reads, cut into values and decoded as entries.
//!
//! The input is a small header (`max_entry_bytes`, `max_line_bytes`, the read sizes) and
//! the stream. Besides "no panic", it checks:
//! - framing resumes exactly: the values cut from the stream fed in pieces are the values
//!   cut from it fed whole, they are its bytes in order, and none is over `max_entry_bytes`;
//! - every record line is one JSON object no longer than `max_line_bytes` (an oversized one
//!   is longer, with an excerpt of at most 1 KiB); a bad record has a reason;
//! - the msgpack -> JSON conversion agrees with rmpv: each value of the stream, read as a
//!   record, gives the JSON of rmpv's reading of it, or is refused exactly when rmpv's
//!   reading holds something JSON cannot (an ext value, NaN, a non-string key...);
//! - an acknowledgement reads back as `{"ack": chunk}`.
#![no_main]

use flaghook::source::fluent::forward::{self, Frames, Limits, Message, Record};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

struct Plan<'a> {
    limits: Limits,
    chunks: Vec<usize>,
    stream: &'a [u8],
}

fn plan(mut u: Unstructured<'_>) -> Result<Plan<'_>> {
    let limits = Limits {
        max_entry_bytes: u.int_in_range(1..=4096)?,
        max_line_bytes: u.int_in_range(1..=2048)?,
    };
    let n = u.int_in_range(1..=6usize)?;
    let mut chunks = Vec::with_capacity(n);
    for _ in 0..n {
        chunks.push(u.int_in_range(1..=300usize)?);
    }
    Ok(Plan {
        limits,
        chunks,
        stream: u.take_rest(),
    })
}

/// The values cut from `stream` fed in `chunks` (cycled), until the stream breaks.
fn frames(stream: &[u8], max: usize, chunks: &[usize]) -> Vec<Vec<u8>> {
    let mut scanner = Frames::new(max);
    let mut buf = Vec::new();
    let mut found = Vec::new();
    let mut fed = 0;
    for &chunk in chunks.iter().cycle() {
        if fed == stream.len() {
            break;
        }
        let take = chunk.min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + take]);
        fed += take;
        loop {
            match scanner.next(&buf) {
                Ok(Some(n)) => {
                    assert!(n <= max, "a value over max_entry_bytes");
                    found.push(buf.drain(..n).collect());
                }
                Ok(None) => break,
                Err(_) => return found,
            }
        }
    }
    found
}

fuzz_target!(|data: &[u8]| {
    let Ok(plan) = plan(Unstructured::new(data)) else {
        return;
    };
    let max = plan.limits.max_entry_bytes;
    let pieces = frames(plan.stream, max, &plan.chunks);
    let whole = frames(plan.stream, max, &[plan.stream.len().max(1)]);
    assert_eq!(
        pieces, whole,
        "framing depends on how the reads split the stream"
    );
    assert!(plan.stream.starts_with(&pieces.concat()));

    for frame in &pieces {
        let envelope = flaghook::event::envelope_fields(None);
        if let Ok(Message::Entry(entry)) = forward::decode(frame, &plan.limits, &envelope) {
            entry
                .records
                .iter()
                .for_each(|r| check_record(r, &plan.limits));
            if let Some(chunk) = &entry.chunk {
                let ack = rmpv::decode::read_value(&mut &forward::ack(chunk)[..]).unwrap();
                let chunk = rmpv::decode::read_value(&mut &chunk[..]).unwrap();
                assert_eq!(ack, rmpv::Value::Map(vec![("ack".into(), chunk)]));
            }
        }
        differential(frame, &plan.limits);
    }
});

fn check_record(record: &Record, limits: &Limits) {
    match record {
        // An event that went as it is (its envelope field's text) is a JSON object too.
        Record::Json(bytes) | Record::Event(bytes) => {
            assert!(bytes.len() <= limits.max_line_bytes);
            let value: Value = serde_json::from_slice(bytes).expect("a record line is JSON");
            assert!(value.is_object(), "a record line that is not an object");
            assert!(!bytes.contains(&b'\n'));
        }
        Record::Oversized { excerpt, len } => {
            assert!(*len > limits.max_line_bytes as u64);
            assert!(excerpt.len() <= 1024 && excerpt.len() as u64 <= *len);
        }
        Record::Bad { raw, len, reason } => {
            assert!(!reason.is_empty());
            assert!(raw.len() as u64 <= *len);
        }
    }
}

/// The value read as a record, against rmpv's reading of it. Compared as text: the floats
/// must be the exact shortest text (serde_json's own float parsing may be a unit off).
fn differential(frame: &[u8], limits: &Limits) {
    let Ok(value) = rmpv::decode::read_value(&mut &frame[..]) else {
        return;
    };
    let big = Limits {
        max_line_bytes: usize::MAX / 2,
        ..*limits
    };
    let mut expected = String::new();
    let holds = matches!(value, rmpv::Value::Map(_)) && json_of(&value, 0, &mut expected);
    match forward::record_line(frame, &big) {
        Record::Json(bytes) if holds => {
            assert_eq!(
                std::str::from_utf8(&bytes).unwrap(),
                expected,
                "the JSON differs from rmpv's reading"
            );
        }
        Record::Bad { .. } if !holds => {}
        got => panic!("record {got:?}, rmpv's reading {value:?} (JSON holds it: {holds})"),
    }
}

/// Writes what JSON holds of an rmpv value (keys in order, repeated ones kept); false when
/// JSON cannot hold it.
fn json_of(value: &rmpv::Value, depth: usize, out: &mut String) -> bool {
    use rmpv::Value as V;
    let text = |s: &str| serde_json::to_string(s).unwrap();
    match value {
        V::Nil => out.push_str("null"),
        V::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        V::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => out.push_str(&u.to_string()),
            (None, Some(s)) => out.push_str(&s.to_string()),
            _ => return false,
        },
        V::F32(f) if f.is_finite() => out.push_str(&serde_json::to_string(f).unwrap()),
        V::F64(f) if f.is_finite() => out.push_str(&serde_json::to_string(f).unwrap()),
        V::String(s) => match s.as_str() {
            Some(s) => out.push_str(&text(s)),
            None => return false,
        },
        V::Binary(b) => match std::str::from_utf8(b) {
            Ok(s) => out.push_str(&text(s)),
            Err(_) => return false,
        },
        V::Array(items) if depth < 127 => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if !json_of(v, depth + 1, out) {
                    return false;
                }
            }
            out.push(']');
        }
        V::Map(pairs) if depth < 127 => {
            out.push('{');
            for (i, (k, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let key = match k {
                    V::String(s) => s.as_str(),
                    V::Binary(b) => std::str::from_utf8(b).ok(),
                    _ => None,
                };
                let Some(key) = key else {
                    return false;
                };
                out.push_str(&text(key));
                out.push(':');
                if !json_of(v, depth + 1, out) {
                    return false;
                }
            }
            out.push('}');
        }
        _ => return false,
    }
    true
}
