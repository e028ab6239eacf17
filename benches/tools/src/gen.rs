//! `gen` and `append`: realistic GO Feature Flag feature events, in GO Feature Flag's own
//! compact encoding: 16 flags with boolean, string (some with escapes and non-ASCII), number and
//! object/array values, 30 % anonymous users, 2 % `SdkDefault` evaluations, versions, some
//! `metadata`. `append` stamps each event with its write time for the latency probe.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Args)]
pub(crate) struct GenArgs {
    /// The file written, one event a line
    #[arg(long)]
    out: PathBuf,
    /// Number of events
    #[arg(long = "n", default_value_t = 2_000_000)]
    n: u64,
    /// Seed of the generator (the same seed writes the same file)
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Wrap each event as a shipper does: `vector` (Vector's JSON codec: the event is the
    /// escaped string in `message`, beside `host`, `source_type` and `timestamp`)
    #[arg(long, value_enum, default_value_t = Envelope::None)]
    envelope: Envelope,
}

/// How `gen` writes each event.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Envelope {
    /// The event as it is
    None,
    /// Inside a Vector event: `{"host":..,"message":"<the event, escaped>",..}`
    Vector,
}

#[derive(clap::Args)]
pub(crate) struct AppendArgs {
    /// The file appended to (created when missing)
    #[arg(long)]
    out: PathBuf,
    /// Events per second
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of appending
    #[arg(long, value_parser = crate::parse_seconds, default_value = "10")]
    duration: Duration,
}

/// Wall-clock nanoseconds: what `append` stamps (in µs) and what the receiver compares the
/// stamps with on arrival (both run on the same machine).
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// splitmix64: small, fast, reproducible.
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A flag: its key, its variations (name, JSON value), its version, optional metadata.
struct Flag {
    key: &'static str,
    variations: &'static [(&'static str, &'static str)],
    version: &'static str,
    metadata: Option<&'static str>,
}

#[rustfmt::skip] // one flag a line: a table to read
const FLAGS: &[Flag] = &[
    Flag { key: "checkout-v2", variations: &[("on", "true"), ("off", "false")], version: "", metadata: None },
    Flag { key: "dark-mode", variations: &[("on", "true"), ("off", "false")], version: "3", metadata: None },
    Flag { key: "beta-search", variations: &[("Default", "false"), ("beta", "true")], version: "", metadata: Some(r#"{"team":"search"}"#) },
    Flag { key: "banner-color", variations: &[("blue", r##""#04f""##), ("green", r##""#0a4""##), ("red", r##""#d21""##)], version: "12", metadata: None },
    Flag { key: "hero", variations: &[("control", r#""classic""#), ("var_a", r#""video""#)], version: "", metadata: None },
    Flag { key: "welcome-msg", variations: &[("fr", r#""Bienvenue \"VIP\" à bord""#), ("en", r#""Welcome!""#)], version: "2", metadata: None },
    Flag { key: "page-size", variations: &[("small", "20"), ("medium", "50"), ("large", "100")], version: "", metadata: None },
    Flag { key: "discount", variations: &[("none", "0"), ("low", "0.05"), ("high", "0.25")], version: "7", metadata: None },
    Flag { key: "timeout-ms", variations: &[("Default", "1500"), ("slow", "4000")], version: "", metadata: None },
    Flag { key: "pricing", variations: &[("eu", r#"{"cur":"EUR","tiers":[10,20]}"#), ("us", r#"{"cur":"USD","tiers":[5]}"#)], version: "4", metadata: None },
    Flag { key: "reco-engine", variations: &[("v1", r#"{"k":12}"#), ("v2", r#"{"k":24,"rerank":true}"#)], version: "", metadata: None },
    Flag { key: "payments", variations: &[("all", r#"["stripe","adyen"]"#), ("stripe", r#"["stripe"]"#)], version: "9", metadata: None },
    Flag { key: "ws-push", variations: &[("true", "true"), ("false", "false")], version: "", metadata: None },
    Flag { key: "onboarding", variations: &[("short", "3"), ("long", "7")], version: "1", metadata: None },
    Flag { key: "log-level", variations: &[("quiet", r#""warn""#), ("verbose", r#""debug""#)], version: "", metadata: None },
    Flag { key: "ai-assist", variations: &[("off", "false"), ("on", "true")], version: "21", metadata: None },
];

/// Appends one event (no newline) to `out`. `sent_at_us` adds `"metadata":{"sentAtUs":..}`.
pub(crate) fn write_event(
    out: &mut Vec<u8>,
    rng: &mut Rng,
    creation_date: u64,
    sent_at_us: Option<u64>,
) {
    let flag = &FLAGS[rng.below(FLAGS.len() as u64) as usize];
    let anonymous = rng.chance(30);
    out.extend_from_slice(br#"{"kind":"feature","contextKind":""#);
    out.extend_from_slice(if anonymous { b"anonymousUser" } else { b"user" });
    out.extend_from_slice(br#"","userKey":""#);
    if anonymous {
        let _ = write!(out, "{:012x}", rng.next() >> 16);
    } else {
        let _ = write!(out, "u{}", 100_000 + rng.below(900_000));
    }
    let failed = rng.chance(2);
    let (variation, value) = if failed {
        ("SdkDefault", flag.variations[0].1)
    } else {
        flag.variations[rng.below(flag.variations.len() as u64) as usize]
    };
    let _ = write!(
        out,
        r#"","creationDate":{creation_date},"key":"{}","variation":"{variation}","value":{value},"default":{failed},"version":"{}","source":"SERVER""#,
        flag.key, flag.version
    );
    match (sent_at_us, flag.metadata) {
        (Some(ts), _) => {
            let _ = write!(out, r#","metadata":{{"sentAtUs":{ts}}}"#);
        }
        (None, Some(md)) => {
            out.extend_from_slice(br#","metadata":"#);
            out.extend_from_slice(md.as_bytes());
        }
        (None, None) => {}
    }
    out.push(b'}');
}

/// Writes `--n` events, one a line, and prints `events=N bytes=B avg_bytes=A`.
pub(crate) fn gen(args: &GenArgs) -> Result<(), String> {
    let path = args.out.as_path();
    let in_file = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).map_err(in_file)?);
    let mut rng = Rng(args.seed);
    let mut line = Vec::with_capacity(512);
    let mut bytes = 0u64;
    for i in 0..args.n {
        line.clear();
        // ~20 000 evaluations per second of GO Feature Flag traffic
        write_event(&mut line, &mut rng, 1_717_000_000 + i / 20_000, None);
        if args.envelope == Envelope::Vector {
            line = vector_envelope(&line, i);
        }
        line.push(b'\n');
        bytes += line.len() as u64;
        w.write_all(&line).map_err(in_file)?;
    }
    w.flush().map_err(in_file)?;
    let avg = if args.n > 0 {
        bytes as f64 / args.n as f64
    } else {
        0.0
    };
    println!("events={} bytes={bytes} avg_bytes={avg:.1}", args.n);
    Ok(())
}

/// `event` as Vector's socket sink sends it with `encoding.codec = "json"`: the line it read
/// is the string `message`, beside the fields Vector adds.
fn vector_envelope(event: &[u8], i: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.len() + event.len() / 8 + 96);
    out.extend_from_slice(br#"{"host":"app-1","message":""#);
    for &b in event {
        match b {
            b'"' => out.extend_from_slice(br#"\""#),
            b'\\' => out.extend_from_slice(br"\\"),
            0..=0x1f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
    let _ = write!(
        out,
        r#"","source_type":"file","timestamp":"2026-11-28T17:{:02}:{:02}.{:06}Z"}}"#,
        i / 60_000_000 % 60,
        i / 1_000_000 % 60,
        i % 1_000_000
    );
    out
}

/// The latency probe: appends events stamped with their write time (`metadata.sentAtUs`) at a
/// steady `--rate`, one write(2) every 10 ms, for `--duration`; prints `events=N`.
pub(crate) fn append(args: &AppendArgs) -> Result<(), String> {
    let path: &Path = &args.out;
    let in_file = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(in_file)?;
    let mut rng = Rng(7);
    let tick = Duration::from_millis(10);
    let start = Instant::now();
    let mut written = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut next = start;
    while start.elapsed() < args.duration {
        let due = ((start.elapsed().as_secs_f64() * args.rate as f64) as u64).max(written + 1);
        buf.clear();
        let ts = now_ns() / 1000;
        for _ in written..due {
            write_event(&mut buf, &mut rng, ts / 1_000_000, Some(ts));
            buf.push(b'\n');
        }
        f.write_all(&buf).map_err(in_file)?;
        written = due;
        next += tick;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
    }
    println!("events={written}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vector's envelope holds the event, byte for byte, as the string `message`.
    #[test]
    fn the_vector_envelope_holds_the_event_as_its_message() {
        let mut rng = Rng(5);
        for i in 0..500 {
            let mut event = Vec::new();
            write_event(&mut event, &mut rng, 1_717_000_000, None);
            let wrapped = vector_envelope(&event, i);
            let v: serde_json::Value = serde_json::from_slice(&wrapped).unwrap();
            assert_eq!(v["message"].as_str().unwrap().as_bytes(), &event[..]);
            assert_eq!(v["host"], "app-1");
        }
    }
}
