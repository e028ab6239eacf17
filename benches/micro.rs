//! Micro-benchmarks of the hot path, each reporting bytes/s and events/s:
//! line splitting, decoding (schema goff and any), building a 10 000-event body, signing it.
//!
//!     cargo bench --bench micro
//!
//! With `FLAGHOOK_FLOOR_EVENTS=FILE` set, it runs the floor of the file path instead (see
//! [`floor`]): `benches/e2e.sh` compares flaghook's CPU per event with it.

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, Criterion, Throughput};

use flaghook::event::{envelope_fields, Decoded, Decoder, EventType, FromLine, Schema};
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

/// The floor of the file path, over the events of `path` on one core: what no
/// implementation can skip, done with flaghook's own pieces. Read (`pread` into the
/// splitter's buffer, 256 KiB at a time, as the tail does), split into lines, validate and
/// encode (the decoder), build a body of `batch` events, sign it (HMAC-SHA256). No
/// threads, channels, budget, checkpoints or sockets. Prints the CPU seconds (user + sys)
/// per million events of each of `passes` passes, and their median.
fn floor(path: &str, batch: usize, passes: usize) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let envelope = envelope_fields(None);
    let prefix = br#"{"meta":{"hostname":"bench"},"events":["#;
    let mut per_million = Vec::new();
    let mut events_seen = 0;
    for _ in 0..passes {
        let start = cpu_seconds();
        let mut decoder = Decoder::new(Schema::Goff, &[EventType::Feature, EventType::Tracking]);
        let mut splitter = LineSplitter::new(102_400, 0);
        let (mut pos, mut events, mut in_body) = (0u64, 0usize, 0usize);
        let mut lines = Vec::new();
        let mut body = BytesMut::new();
        // The body is the batch, as the sink gathers it: each event copied once, from the
        // read buffer to the body, the body reserved whole at its first event.
        let mut put = |body: &mut BytesMut, event: &[u8]| {
            if in_body == 0 {
                body.reserve(prefix.len() + batch * (event.len() + 1) + 2);
                body.put_slice(prefix);
            } else {
                body.put_u8(b',');
            }
            body.put_slice(event);
            in_body += 1;
            if in_body == batch {
                body.put_slice(b"]}");
                std::hint::black_box(flaghook::sign::signature(b"bench-secret", body));
                body.clear();
                in_body = 0;
            }
        };
        loop {
            let buf = splitter.buffer();
            let at = buf.len();
            buf.resize(at + 256 * 1024, 0);
            let n = file.read_at(&mut buf[at..], pos).expect("read");
            buf.truncate(at + n);
            if n == 0 {
                break;
            }
            pos += n as u64;
            let buffer = splitter.split(&mut lines);
            for line in lines.drain(..) {
                // Lines are ranges of the read buffer, as the tail cuts them: no `Bytes`
                // (no reference count) per line.
                let text = line.bytes.of(&buffer);
                match decoder.decode_line(text, &envelope) {
                    Ok(FromLine::Itself(len)) => put(&mut body, &text[..len]),
                    Ok(FromLine::Decoded(Decoded::Event(event))) => put(&mut body, &event),
                    _ => continue,
                }
                events += 1;
            }
        }
        if in_body > 0 {
            body.put_slice(b"]}");
            std::hint::black_box(flaghook::sign::signature(b"bench-secret", &body));
        }
        events_seen = events;
        per_million.push((cpu_seconds() - start) * 1e6 / events.max(1) as f64);
    }
    let mut sorted = per_million.clone();
    sorted.sort_by(f64::total_cmp);
    let passes: Vec<String> = per_million.iter().map(|s| format!("{s:.4}")).collect();
    println!(
        "floor events={events_seen} batch={batch} cpu_s_per_million={:.4} passes={}",
        sorted[sorted.len() / 2],
        passes.join(",")
    );
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(path) = std::env::var("FLAGHOOK_FLOOR_EVENTS") {
        let number = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        floor(
            &path,
            number("FLAGHOOK_FLOOR_BATCH", 10_000),
            number("FLAGHOOK_FLOOR_PASSES", 3),
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
