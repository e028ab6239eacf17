//! The commands that talk to a server on loopback: `stats`, `reset` and `wait` (the receiver's
//! counters), `load` (the receiver alone, under pre-built signed bodies), `send` (the peer of
//! flaghook's TCP source), and `freeport`.

use crate::http::{self, ReadBuf};
use crate::sign;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub(crate) struct AddrArgs {
    /// The receiver's address (host:port)
    #[arg(long)]
    addr: String,
}

#[derive(clap::Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    receiver: AddrArgs,
    /// Print the counters as one JSON object instead of `key=value` lines
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub(crate) struct WaitArgs {
    #[command(flatten)]
    receiver: AddrArgs,
    /// Events the receiver must have counted
    #[arg(long)]
    events: u64,
    /// Seconds before giving up (exit status 3)
    #[arg(long, value_parser = crate::parse_seconds, default_value = "300")]
    timeout: Duration,
    /// Give up (exit status 4) as soon as this process has exited
    #[arg(long)]
    pid: Option<u32>,
    /// Print the counters as one JSON object instead of `key=value` lines
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub(crate) struct LoadArgs {
    #[command(flatten)]
    receiver: AddrArgs,
    /// Events file (one event a line, as `gen` writes it); the first `--batch` lines make the body
    #[arg(long)]
    input: PathBuf,
    /// Environment variable holding the webhook secret the bodies are signed with
    #[arg(long)]
    secret_env: Option<String>,
    /// Events per request
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Requests in all
    #[arg(long, default_value_t = 200)]
    requests: u64,
    /// Keep-alive connections the requests are spread over
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    conns: u64,
}

/// `send`: the file streamed to flaghook's TCP source, as it is.
#[derive(clap::Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    target: crate::feed::Target,
}

/// How `wait` ended; each has its exit status.
pub(crate) enum Waited {
    /// the receiver counted the events
    Reached,
    /// `--timeout` passed first
    TimedOut,
    /// the `--pid` process exited first
    ProcessExited,
}

impl Waited {
    pub(crate) fn exit_status(&self) -> u8 {
        match self {
            Waited::Reached => 0,
            Waited::TimedOut => 3,
            Waited::ProcessExited => 4,
        }
    }
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// One request on a fresh connection; the JSON body of a 200 response (Null when empty).
fn http_call(addr: &str, method: &str, path: &str) -> Result<serde_json::Value, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut rb = ReadBuf::new(64 * 1024);
    let (status, body) =
        http::read_response(&mut s, &mut rb).map_err(|e| format!("{method} {path}: {e}"))?;
    if status != 200 {
        return Err(format!("{method} {path}: status {status}"));
    }
    if body.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| format!("{method} {path}: {e}"))
}

/// The receiver's counters, as one JSON object or as shell `key=value` lines.
fn print_stats(v: &serde_json::Value, json: bool) {
    if json {
        println!("{v}");
    } else if let Some(m) = v.as_object() {
        for (k, v) in m {
            println!("{k}={v}");
        }
    }
}

pub(crate) fn stats(args: &StatsArgs) -> Result<(), String> {
    print_stats(&http_call(&args.receiver.addr, "GET", "/stats")?, args.json);
    Ok(())
}

pub(crate) fn reset(args: &AddrArgs) -> Result<(), String> {
    http_call(&args.addr, "POST", "/reset").map(drop)
}

/// Polls the receiver every 20 ms until it has counted `--events`; prints its counters.
pub(crate) fn wait(args: &WaitArgs) -> Result<Waited, String> {
    let start = Instant::now();
    loop {
        let v = http_call(&args.receiver.addr, "GET", "/stats")?;
        let events = v["events"].as_u64().unwrap_or(0);
        let outcome = if events >= args.events {
            Some(Waited::Reached)
        } else if let Some(pid) = args.pid.filter(|&p| !process_alive(p)) {
            eprintln!(
                "fhbench wait: process {pid} exited with {events} of {} events received",
                args.events
            );
            Some(Waited::ProcessExited)
        } else if start.elapsed() > args.timeout {
            eprintln!(
                "fhbench wait: timed out after {:?} with {events} of {} events received",
                args.timeout, args.events
            );
            Some(Waited::TimedOut)
        } else {
            None
        };
        if let Some(outcome) = outcome {
            print_stats(&v, args.json);
            return Ok(outcome);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The receiver alone: one signed body of `--batch` events, posted `--requests` times over
/// `--conns` keep-alive connections; prints the rate.
pub(crate) fn load(args: &LoadArgs) -> Result<(), String> {
    let (body, n) = load_body(&args.input, args.batch as usize)?;
    let addr = &args.receiver.addr;
    let mut req = format!(
        "POST /hook HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(secret) = sign::secret_from_env(args.secret_env.as_deref())? {
        req.push_str(&format!(
            "x-hub-signature-256: sha256={}\r\n",
            sign::sign_hex(&secret, &body)
        ));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(&body);
    let req = Arc::new(req);
    let start = Instant::now();
    let handles: Vec<_> = (0..args.conns)
        .map(|c| {
            let (req, addr) = (req.clone(), addr.clone());
            let count = args.requests / args.conns + u64::from(c < args.requests % args.conns);
            thread::spawn(move || post_repeatedly(&addr, &req, count))
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "load thread panicked".to_string())??;
    }
    let secs = start.elapsed().as_secs_f64();
    let events = args.requests * n;
    println!(
        "requests={} events={events} body_bytes={} secs={secs:.3} events_per_s={:.0} mb_per_s={:.0}",
        args.requests,
        body.len(),
        events as f64 / secs,
        (args.requests as f64 * body.len() as f64) / secs / 1e6
    );
    Ok(())
}

/// A webhook body of the first `batch` lines of `input`, and its number of events.
fn load_body(input: &Path, batch: usize) -> Result<(Vec<u8>, u64), String> {
    let in_file = |e: std::io::Error| format!("{}: {e}", input.display());
    let f = File::open(input).map_err(in_file)?;
    let mut body = Vec::with_capacity(batch * 200 + 64);
    body.extend_from_slice(br#"{"meta":{"hostname":"loadgen"},"events":["#);
    let mut n = 0;
    for line in BufReader::new(f).lines().take(batch) {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(line.map_err(in_file)?.as_bytes());
        n += 1;
    }
    body.extend_from_slice(b"]}");
    Ok((body, n))
}

/// Sends the same request `count` times on one keep-alive connection; every answer must be 200.
fn post_repeatedly(addr: &str, req: &[u8], count: u64) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut rb = ReadBuf::new(64 * 1024);
    for _ in 0..count {
        s.write_all(req).map_err(|e| e.to_string())?;
        let (status, _) = http::read_response(&mut s, &mut rb).map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("status {status}"));
        }
    }
    Ok(())
}

/// The TCP source's peer: streams `--input` over one connection, then closes it and waits for
/// flaghook to close its side.
pub(crate) fn send(args: &SendArgs) -> Result<(), String> {
    let addr = &args.target.addr;
    let mut s = connect_retrying(addr, args.target.connect_timeout, args.target.pid)?;
    s.set_nodelay(true).ok();
    let input = &args.target.input;
    let mut f = File::open(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", input.display()))?;
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n])
            .map_err(|e| format!("write to {addr}: {e}"))?;
        total += n as u64;
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    // wait for the peer to close its side too (bounded), so that nothing is reset
    s.set_read_timeout(Some(Duration::from_secs(600))).ok();
    let _ = s.read(&mut buf);
    eprintln!(
        "sent {total} bytes in {:.3} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Connects, retrying every 5 ms until `timeout` or until process `pid` has exited.
pub(crate) fn connect_retrying(
    addr: &str,
    timeout: Duration,
    pid: Option<u32>,
) -> Result<TcpStream, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return Ok(s),
            Err(e) => {
                if let Some(pid) = pid.filter(|&p| !process_alive(p)) {
                    return Err(format!(
                        "connect {addr}: {e}; process {pid} (flaghook) has exited"
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(format!("connect {addr}: {e} (is flaghook listening?)"));
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Prints a port that was free on 127.0.0.1 a moment ago.
pub(crate) fn freeport() -> Result<(), String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    println!("{}", l.local_addr().map_err(|e| e.to_string())?.port());
    Ok(())
}
