//! `fhbench`: the helper tools of flaghook's end-to-end benchmark (`benches/e2e.sh`). All traffic
//! is on loopback; every loop is bounded. `fhbench --help` lists the commands, `fhbench CMD
//! --help` their options.
//!
//! # Layout
//! - `gen.rs`: `gen` (the events file) and `append` (the latency probe's stamped events)
//! - `receive.rs`: `receive`, the signature-verifying webhook receiver, and its counters
//! - `http.rs`: the HTTP/1.1 wire pieces the receiver and the clients share
//! - `scan.rs`: the receiver's validating JSON scanner, which counts a body's events
//! - `count.rs`: the serde_json reference parser (and latency stamps) the scanner is tested against
//! - `sign.rs`: `X-Hub-Signature-256`
//! - `client.rs`: `stats`, `reset`, `wait`, `load`, `send`, `freeport`
//! - `feed.rs`: `send-forward` and `post`, the peers of the `fluent` and `http` sources
//! - `parsebench.rs`: `parsebench`, the receiver's per-body costs

mod client;
mod count;
mod feed;
mod gen;
mod http;
mod parsebench;
mod receive;
mod scan;
mod sign;

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

/// The helper tools of flaghook's end-to-end benchmark (benches/e2e.sh)
#[derive(Parser)]
#[command(name = "fhbench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write N GO Feature Flag feature events (JSON lines)
    Gen(gen::GenArgs),
    /// Webhook receiver: verifies X-Hub-Signature-256, checks every body and counts its events;
    /// GET /stats returns the counters as JSON, POST /reset zeroes them
    Receive(receive::ReceiveArgs),
    /// Print the receiver's counters (shell `key=value` lines)
    Stats(client::StatsArgs),
    /// Zero the receiver's counters
    Reset(client::AddrArgs),
    /// Poll until the receiver has counted N events (exit status 3: timed out, 4: --pid exited)
    Wait(client::WaitArgs),
    /// The receiver alone: POST one pre-built signed body many times
    Load(client::LoadArgs),
    /// Stream a file over one TCP connection, then close it (retries connecting while --pid lives)
    Send(client::SendArgs),
    /// Stream a file as Forward protocol PackedForward entries (`{"log": line}` records) with
    /// `chunk` ids, waiting for each ack (retries connecting while --pid lives)
    SendForward(feed::ForwardArgs),
    /// POST a file as newline-delimited JSON bodies, each answered 200 with every line
    /// accepted (retries connecting while --pid lives)
    Post(feed::PostArgs),
    /// Append events stamped with metadata.sentAtUs at a steady rate
    Append(gen::AppendArgs),
    /// Print a free port on 127.0.0.1
    Freeport,
    /// Time the receiver's per-body work (HMAC, scanner, serde_json) on one 10 000-event body
    Parsebench(parsebench::ParsebenchArgs),
}

/// Exit status of a command line clap refuses (EX_USAGE, as before clap).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let done = |r: Result<(), String>| r.map(|()| 0);
    let (name, result) = match &cli.command {
        Command::Gen(a) => ("gen", done(gen::gen(a))),
        Command::Receive(a) => ("receive", done(receive::run(a))),
        Command::Stats(a) => ("stats", done(client::stats(a))),
        Command::Reset(a) => ("reset", done(client::reset(a))),
        Command::Wait(a) => ("wait", client::wait(a).map(|w| w.exit_status())),
        Command::Load(a) => ("load", done(client::load(a))),
        Command::Send(a) => ("send", done(client::send(a))),
        Command::SendForward(a) => ("send-forward", done(feed::send_forward(a))),
        Command::Post(a) => ("post", done(feed::post(a))),
        Command::Append(a) => ("append", done(gen::append(a))),
        Command::Freeport => ("freeport", done(client::freeport())),
        Command::Parsebench(a) => ("parsebench", done(parsebench::run(a))),
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("fhbench {name}: {e}");
            ExitCode::from(1)
        }
    }
}

/// Seconds, fractions allowed (`--timeout 0.5`).
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("not a number of seconds: {s:?}"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("not a number of seconds: {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The command lines benches/e2e.sh runs.
    #[test]
    fn e2e_command_lines_parse() {
        for line in [
            "gen --out /tmp/e --n 2000000",
            "gen --out /tmp/e --n 100 --seed 9",
            "gen --out /tmp/e --n 2000000 --envelope vector",
            "receive --listen 127.0.0.1:0 --secret-env S --port-file /tmp/p",
            "receive --listen 127.0.0.1:0 --secret-env S --port-file /tmp/p --latency",
            "receive --listen 127.0.0.1:0 --secret-env S --port-file /tmp/p --delay-ms 20",
            "reset --addr 127.0.0.1:1",
            "stats --addr 127.0.0.1:1",
            "load --addr 127.0.0.1:1 --input /tmp/e --secret-env S --batch 10000 --requests 200 --conns 2",
            "send --addr 127.0.0.1:1 --input /tmp/e --connect-timeout 30 --pid 12",
            "send-forward --addr 127.0.0.1:1 --input /tmp/e --records 1000 --in-flight 4 --connect-timeout 30 --pid 12",
            "post --addr 127.0.0.1:1 --input /tmp/e --lines 1000 --conns 2 --path / --connect-timeout 30 --pid 12",
            "wait --addr 127.0.0.1:1 --events 2000000 --timeout 300 --pid 12",
            "append --out /tmp/f --rate 1000 --duration 10",
            "freeport",
            "parsebench --input /tmp/e",
        ] {
            let argv = std::iter::once("fhbench").chain(line.split(' '));
            if let Err(e) = Cli::try_parse_from(argv) {
                panic!("{line}: {e}");
            }
        }
    }

    #[test]
    fn bad_seconds_are_refused() {
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("10s").is_err());
    }
}
