//! Micro-benchmarks of the hot path, each reporting bytes/s and events/s:
//! line splitting, decoding (schema goff and any), building a 10 000-event body, signing it.
//!
//!     cargo bench --bench micro

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use flaghook::event::{envelope_fields, Decoded, Decoder, EventType, Schema};
use flaghook::source::lines::LineSplitter;

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
    (0..10_000u64)
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

fn bench(c: &mut Criterion) {
    let events = events();
    let input = text(&events);
    let n = events.len() as u64;

    let mut group = c.benchmark_group("split_lines");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("10k_events", |b| {
        b.iter(|| {
            let mut splitter = LineSplitter::new(102_400, 0);
            splitter.buffer().extend_from_slice(&input);
            let mut lines = Vec::with_capacity(events.len());
            splitter.split(&mut lines);
            assert_eq!(lines.len(), events.len());
        })
    });
    group.finish();

    let mut group = c.benchmark_group("validate_json_floor");
    group.throughput(Throughput::Elements(n));
    group.bench_function("10k_events", |b| {
        b.iter(|| {
            for e in &events {
                serde_json::from_str::<serde::de::IgnoredAny>(e).unwrap();
            }
        })
    });
    group.finish();

    let envelope = envelope_fields(None);
    for (name, schema) in [("decode_goff", Schema::Goff), ("decode_any", Schema::Any)] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(n));
        let mut decoder = Decoder::new(schema, &[EventType::Feature, EventType::Tracking]);
        let lines: Vec<Bytes> = events
            .iter()
            .map(|e| Bytes::copy_from_slice(e.as_bytes()))
            .collect();
        group.bench_function("10k_events", |b| {
            b.iter(|| {
                for line in &lines {
                    let decoded = decoder.decode(line, &envelope).unwrap();
                    assert!(matches!(decoded, Decoded::Event(_)));
                }
            })
        });
        group.finish();
    }

    let encoded: Vec<Bytes> = events
        .iter()
        .map(|e| Bytes::copy_from_slice(e.as_bytes()))
        .collect();
    let body = build_body(&encoded);
    let mut group = c.benchmark_group("build_body");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("10k_events", |b| b.iter(|| build_body(&encoded)));
    group.finish();

    let mut group = c.benchmark_group("sign_body");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("10k_events", |b| {
        b.iter_batched(
            || body.clone(),
            |body| flaghook::sign::signature(b"secret", &body),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn build_body(events: &[Bytes]) -> Bytes {
    flaghook::sink::webhook::body(br#"{"meta":{"hostname":"bench"},"events":["#, events.iter())
}

criterion_group!(benches, bench);
criterion_main!(benches);
