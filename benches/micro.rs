//! Micro-benchmarks of the hot path, each reporting bytes/s and events/s:
//! line splitting, decoding (schema goff and any), building a 10 000-event body, signing it.
//!
//!     cargo bench --bench micro

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use flaghook::event::{envelope_fields, Decoded, Decoder, EventType, Schema};
use flaghook::source::lines::LineSplitter;

const EVENTS: usize = 10_000;

/// 10 000 realistic GO Feature Flag feature events (~190 bytes each), one per line.
fn events() -> Vec<String> {
    let flags = [
        "new-checkout",
        "dark-mode",
        "search-v2",
        "pricing-banner",
        "beta-api",
        "welcome-msg",
    ];
    let values = [
        r#"true"#,
        r#"false"#,
        r#""blue""#,
        r#"42"#,
        r#"{"layout":"grid","columns":3}"#,
        r#""Bienvenue \"VIP\" à bord""#,
    ];
    (0..EVENTS as u64)
        .map(|i| {
            let ctx = if i % 3 == 0 { "anonymousUser" } else { "user" };
            format!(
                r#"{{"kind":"feature","contextKind":"{ctx}","userKey":"user-{:08x}","creationDate":{},"key":"{}","variation":"variant_{}","value":{},"default":{},"version":"{}","source":"SERVER"}}"#,
                i.wrapping_mul(2654435761),
                1_717_000_000 + i,
                flags[i as usize % flags.len()],
                i % 4,
                values[i as usize % values.len()],
                i % 17 == 0,
                i % 5,
            )
        })
        .collect()
}

fn text(events: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(e.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Runs `f` (one pass over the 10 000 events, `bytes` bytes in all) twice, so that
/// criterion reports both bytes/s and events/s.
fn measure(c: &mut Criterion, name: &str, bytes: usize, mut f: impl FnMut()) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("bytes", |b| b.iter(&mut f));
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("events", |b| b.iter(&mut f));
    group.finish();
}

fn bench(c: &mut Criterion) {
    let events = events();
    let input = text(&events);
    let lines: Vec<Bytes> = events
        .iter()
        .map(|e| Bytes::copy_from_slice(e.as_bytes()))
        .collect();
    // The same events as a Vector socket sink sends them: the event is a string in `message`.
    let wrapped: Vec<Bytes> = events
        .iter()
        .map(|e| {
            let message = serde_json::to_string(e).unwrap();
            Bytes::from(format!(r#"{{"host":"h1","message":{message},"source_type":"file","timestamp":"2026-11-28T17:00:00Z"}}"#))
        })
        .collect();
    let size = |lines: &[Bytes]| lines.iter().map(|l| l.len() + 1).sum::<usize>();

    measure(c, "split_lines", input.len(), || {
        let mut splitter = LineSplitter::new(102_400, 0);
        splitter.buffer().extend_from_slice(&input);
        let mut out = Vec::with_capacity(EVENTS);
        splitter.split(&mut out);
        assert_eq!(out.len(), EVENTS);
    });

    measure(c, "validate_json_floor", input.len(), || {
        for e in &events {
            serde_json::from_str::<serde::de::IgnoredAny>(e).unwrap();
        }
    });

    let envelope = envelope_fields(None);
    let cases = [
        ("decode_goff_canonical", Schema::Goff, &lines),
        ("decode_goff_vector_envelope", Schema::Goff, &wrapped),
        ("decode_any", Schema::Any, &lines),
    ];
    for (name, schema, input) in cases {
        let mut decoder = Decoder::new(schema, &[EventType::Feature, EventType::Tracking]);
        measure(c, name, size(input), || {
            for line in input.iter() {
                let decoded = decoder.decode(line, &envelope).unwrap();
                assert!(matches!(decoded, Decoded::Event(_)));
            }
        });
    }

    let body = build_body(&lines);
    measure(c, "build_body", body.len(), || {
        build_body(&lines);
    });
    measure(c, "sign_body", body.len(), || {
        flaghook::sign::signature(b"secret", &body);
    });
}

fn build_body(events: &[Bytes]) -> Bytes {
    flaghook::sink::webhook::body(br#"{"meta":{"hostname":"bench"},"events":["#, events.iter())
}

criterion_group!(benches, bench);
criterion_main!(benches);
