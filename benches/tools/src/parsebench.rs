//! `parsebench`: times the receiver's per-body work on one 10 000-event body: the HMAC, the
//! scanner on one and on two threads, and serde_json (what the scanner replaces).

use crate::count::count_events;
use crate::scan::{scan_body, Scan};
use crate::sign::sign_hex;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub(crate) struct ParsebenchArgs {
    /// Events file (as `gen` writes it); its first 10 000 lines make the body
    #[arg(long)]
    input: PathBuf,
}

pub(crate) fn run(args: &ParsebenchArgs) -> Result<(), String> {
    let input = &args.input;
    let text = std::fs::read_to_string(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let lines: Vec<&str> = text.lines().take(10_000).collect();
    let body = format!(
        r#"{{"meta":{{"hostname":"x"}},"events":[{}]}}"#,
        lines.join(",")
    );
    let body = body.as_bytes();
    let reps = 100;
    let time = |name: &str, f: &mut dyn FnMut() -> u64| {
        let t = Instant::now();
        let mut x = 0;
        for _ in 0..reps {
            x += f();
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{name}: {:.0} MB/s, {:.0} events/s (check {x})",
            (reps * body.len()) as f64 / secs / 1e6,
            (reps * lines.len()) as f64 / secs
        );
    };
    time("hmac-sha256", &mut || {
        sign_hex(b"secret", body).len() as u64
    });
    time("scan, 1 thread", &mut || Scan::new(body, 0).body().unwrap());
    time("scan, 2 threads", &mut || scan_body(body).unwrap());
    time("serde_json", &mut || count_events(body, None, 0).unwrap());
    Ok(())
}
