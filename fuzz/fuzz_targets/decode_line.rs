//! The line decoder (`flaghook::event::Decoder`), every way a sink can be set up.
//!
//! The input is split into lines as a source splits them, and each line is decoded by one
//! decoder per sink setup (schema `goff` and `any`; event types both, `feature` only,
//! `tracking` only; envelope fields default, a custom name, and a name that is also an
//! event field), one decoder per setup kept over all lines, as a sink keeps it. Besides "no
//! panic", it checks what a receiver relies on:
//! - an event is one compact JSON object; with `goff`, in GO Feature Flag's shape (its
//!   fields, in its order, with its types), of a kind the sink sends;
//! - decoding an event again gives the same bytes (the encoder is idempotent);
//! - the fast path agrees with the general encoder: a line it takes as it is, the encoder
//!   writes back byte for byte;
//! - the envelope fast path agrees with the general path: the event it unwraps from a
//!   shipper's envelope is the one the general path unwraps and encodes;
//! - the event-type filter only filters: a sink that sends one kind gets the same event
//!   as one that sends both, or `Filtered`; `any` accepts whatever `goff` accepts;
//! - a blank line, and only a blank line, is `Empty`; every refusal gives a reason.
#![no_main]

use bytes::Bytes;
use flaghook::event::fuzzing::{canonical_kind, encode_goff, envelope_event, envelope_general};
use flaghook::event::{envelope_fields, Decoded, Decoder, EventType, Schema};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const TYPES: [&[EventType]; 3] = [
    &[EventType::Feature, EventType::Tracking],
    &[EventType::Feature],
    &[EventType::Tracking],
];

/// Envelope fields: the default (`message`, `log`), a custom one, one that names an event field.
const ENVELOPES: [Option<&str>; 3] = [None, Some("payload"), Some("value")];

fuzz_target!(|data: &[u8]| {
    let whole = Bytes::copy_from_slice(data);
    let envelopes = ENVELOPES.map(envelope_fields);
    let mut decoders: Vec<(Schema, &[EventType], Decoder)> = Vec::new();
    for schema in [Schema::Goff, Schema::Any] {
        for types in TYPES {
            decoders.push((schema, types, Decoder::new(schema, types)));
        }
    }
    let mut again = Decoder::new(Schema::Goff, TYPES[0]);
    let mut again_any = Decoder::new(Schema::Any, &[]);
    let mut start = 0;
    for end in newlines(data).chain([data.len()]) {
        let line = whole.slice(start..end);
        start = end + 1;
        fast_path_agrees(&line);
        for envelope in &envelopes {
            envelope_path_agrees(&line, envelope);
            let results: Vec<_> = decoders
                .iter_mut()
                .map(|(_, _, d)| d.decode(&line, envelope))
                .collect();
            for ((schema, types, _), result) in decoders.iter().zip(&results) {
                check_one(&line, *schema, types, result, &mut again, &mut again_any);
            }
            check_across(&results);
        }
    }
});

fn newlines(data: &[u8]) -> impl Iterator<Item = usize> + '_ {
    data.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
}

/// Differential: what the fast path takes as it is, the general encoder reproduces. As in
/// `Decoder::decode`, the fast path sees only UTF-8 text without its `\r`.
fn envelope_path_agrees(line: &[u8], envelope: &[String]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(text) = std::str::from_utf8(line) else {
        return;
    };
    if let Some(event) = envelope_event(line, envelope) {
        assert_eq!(
            envelope_general(text, envelope),
            Some(event),
            "the general path (left) unwraps another event than the envelope fast path"
        );
    }
}

fn fast_path_agrees(line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(text) = std::str::from_utf8(line) else {
        return;
    };
    if canonical_kind(line).is_some() {
        let general = encode_goff(text)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| e.to_string());
        assert_eq!(
            general.as_deref(),
            Ok(text),
            "the encoder's output (left) differs from a line the fast path takes as it is"
        );
    }
}

fn check_one(
    line: &Bytes,
    schema: Schema,
    types: &[EventType],
    result: &Result<Decoded, flaghook::event::Invalid>,
    again: &mut Decoder,
    again_any: &mut Decoder,
) {
    let blank = line.iter().all(u8::is_ascii_whitespace);
    assert_eq!(
        blank,
        matches!(result, Ok(Decoded::Empty)),
        "blank line vs Empty: {result:?}"
    );
    match result {
        Err(e) => assert!(!e.0.is_empty(), "a refusal without a reason"),
        Ok(Decoded::Filtered) => assert_eq!(schema, Schema::Goff, "`any` filtered a line"),
        Ok(Decoded::Empty) => {}
        Ok(Decoded::Event(event)) => {
            assert_compact_object(event);
            match schema {
                Schema::Any => {
                    let redone = again_any.decode(event, &[]);
                    assert_eq!(
                        redone,
                        Ok(Decoded::Event(event.clone())),
                        "any: not idempotent"
                    );
                }
                Schema::Goff => {
                    let kind = assert_goff_shape(event);
                    assert!(types.contains(&kind), "sent a {kind:?} event to {types:?}");
                    let redone = again.decode(event, &[]);
                    assert_eq!(
                        redone,
                        Ok(Decoded::Event(event.clone())),
                        "goff: not idempotent"
                    );
                    let text = std::str::from_utf8(event).expect("event is not UTF-8");
                    let general = encode_goff(text).map_err(|e| e.to_string());
                    assert_eq!(general.as_deref(), Ok(&event[..]), "encoder not idempotent");
                }
            }
        }
    }
}

/// `results` in the order of `decoders`: goff both, feature, tracking; any both, feature, tracking.
fn check_across(results: &[Result<Decoded, flaghook::event::Invalid>]) {
    let (goff, any) = results.split_at(3);
    assert!(
        any.iter().all(|r| r == &any[0]),
        "`any` depends on event_types"
    );
    match &goff[0] {
        Ok(Decoded::Event(event)) => {
            let is_feature = event.starts_with(br#"{"kind":"feature""#);
            let (same, filtered) = if is_feature { (1, 2) } else { (2, 1) };
            assert_eq!(goff[same], goff[0], "one-kind sink sent something else");
            assert_eq!(
                goff[filtered],
                Ok(Decoded::Filtered),
                "other kind not filtered"
            );
            assert!(
                matches!(any[0], Ok(Decoded::Event(_))),
                "`any` refused what `goff` took: {:?}",
                any[0]
            );
        }
        Ok(Decoded::Filtered) => panic!("a sink sending both kinds filtered a line"),
        Ok(Decoded::Empty) => assert!(goff.iter().chain(any).all(|r| r == &goff[0])),
        Err(_) => {
            for r in &goff[1..] {
                assert!(
                    r == &goff[0] || r == &Ok(Decoded::Filtered),
                    "one-kind sink: {r:?}, both kinds: {:?}",
                    goff[0]
                );
            }
        }
    }
}

/// One JSON object, without whitespace between tokens.
fn assert_compact_object(event: &[u8]) {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(event) {
        panic!(
            "event is not JSON ({e}): {}",
            String::from_utf8_lossy(event)
        );
    }
    assert_eq!(event.first(), Some(&b'{'), "event is not an object");
    let mut compacted = bytes::BytesMut::new();
    flaghook::event::compact(event, &mut compacted);
    assert_eq!(&compacted[..], event, "event is not compact");
}

/// GO Feature Flag's shape: its fields, in its struct order, with its types. Returns the kind.
fn assert_goff_shape(event: &[u8]) -> EventType {
    // serde_json refuses some JSON that Go takes (a lone `\ud800`): no shape to check then.
    let Ok(map) = serde_json::from_slice::<Map<String, Value>>(event) else {
        return kind_of(event);
    };
    let shown = || String::from_utf8_lossy(event).into_owned();
    let kind = match map.get("kind").and_then(Value::as_str) {
        Some("feature") => EventType::Feature,
        Some("tracking") => EventType::Tracking,
        other => panic!("kind {other:?}: {}", shown()),
    };
    let mut expected = vec!["kind"];
    if map.contains_key("contextKind") {
        expected.push("contextKind");
    }
    expected.extend(["userKey", "creationDate", "key"]);
    match kind {
        EventType::Feature => {
            expected.extend(["variation", "value", "default", "version", "source"]);
            if map.contains_key("metadata") {
                expected.push("metadata");
            }
        }
        EventType::Tracking => expected.extend(["evaluationContext", "trackingEventDetails"]),
    }
    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
    assert_eq!(keys, expected, "fields: {}", shown());
    for (name, value) in &map {
        let fits = match name.as_str() {
            "contextKind" => value.as_str().is_some_and(|s| !s.is_empty()),
            "userKey" | "key" | "variation" | "version" | "source" | "kind" => value.is_string(),
            // Go's int64; `-0` reads as a float in serde_json and as 0 in Go.
            "creationDate" => value.is_i64() || value.as_f64() == Some(0.0),
            "default" => value.is_boolean(),
            "metadata" => value.as_object().is_some_and(|m| !m.is_empty()),
            "evaluationContext" | "trackingEventDetails" => value.is_object() || value.is_null(),
            _ => true, // value: any JSON
        };
        assert!(fits, "field {name} = {value}: {}", shown());
    }
    kind
}

fn kind_of(event: &[u8]) -> EventType {
    if event.starts_with(br#"{"kind":"feature""#) {
        EventType::Feature
    } else if event.starts_with(br#"{"kind":"tracking""#) {
        EventType::Tracking
    } else {
        panic!("no kind first: {}", String::from_utf8_lossy(event))
    }
}
