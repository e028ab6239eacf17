//! `fhbench`: the helper tools of flaghook's end-to-end benchmark (`benches/e2e.sh`).
//!
//! Subcommands (all traffic is on loopback; every loop is bounded):
//!   gen      --out FILE [--n N] [--seed S]          write N GO Feature Flag feature events (JSON lines)
//!   receive  --listen ADDR [--secret-env NAME] [--port-file F] [--latency]
//!                                                   webhook receiver: verifies X-Hub-Signature-256,
//!                                                   parses every body and counts its events;
//!                                                   GET /stats -> JSON counters, POST /reset zeroes them
//!   stats    --addr ADDR [--json]                   print the receiver's counters (shell `k=v` lines)
//!   reset    --addr ADDR                            zero the receiver's counters
//!   wait     --addr ADDR --events N [--timeout S] [--pid PID]
//!                                                   poll until the receiver counted N events
//!   load     --addr ADDR --input FILE [--secret-env NAME] [--batch 10000] [--requests 200] [--conns 1]
//!                                                   the receiver alone: POST pre-built signed bodies
//!   send     --addr ADDR --input FILE [--connect-timeout S] [--pid PID]
//!                                                   stream FILE over one TCP connection, then close
//!                                                   (retries connecting while PID lives)
//!   append   --out FILE [--rate R] [--duration S]   append events stamped with metadata.sentAtUs
//!   freeport                                        print a free port on 127.0.0.1

use hmac::{Hmac, Mac};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sha2::Sha256;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        eprintln!("usage: fhbench <gen|receive|stats|reset|wait|load|send|append|freeport> [options]");
        return ExitCode::from(64);
    };
    let opts = match Opts::parse(&args[1..]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fhbench {cmd}: {e}");
            return ExitCode::from(64);
        }
    };
    let res = match cmd.as_str() {
        "gen" => cmd_gen(&opts),
        "receive" => cmd_receive(&opts),
        "stats" => cmd_stats(&opts),
        "reset" => cmd_reset(&opts),
        "wait" => cmd_wait(&opts),
        "load" => cmd_load(&opts),
        "send" => cmd_send(&opts),
        "append" => cmd_append(&opts),
        "freeport" => cmd_freeport(),
        "parsebench" => cmd_parsebench(&opts),
        other => Err(format!("unknown subcommand {other:?}")),
    };
    match res {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("fhbench {cmd}: {e}");
            ExitCode::from(1)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// options: `--key value` pairs and `--flag` switches

struct Opts(HashMap<String, String>);

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut m = HashMap::new();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            let Some(k) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a:?}"));
            };
            if let Some((k, v)) = k.split_once('=') {
                m.insert(k.to_string(), v.to_string());
            } else if i + 1 < args.len() && !args[i + 1].starts_with("--") {
                m.insert(k.to_string(), args[i + 1].clone());
                i += 1;
            } else {
                m.insert(k.to_string(), String::new());
            }
            i += 1;
        }
        Ok(Opts(m))
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|s| s.as_str())
    }
    fn req(&self, k: &str) -> Result<&str, String> {
        self.get(k).ok_or_else(|| format!("--{k} is required"))
    }
    fn flag(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }
    fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> Result<T, String> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{k}: not a number: {v:?}")),
        }
    }
    fn secret(&self) -> Result<Option<Vec<u8>>, String> {
        match self.get("secret-env") {
            None => Ok(None),
            Some(name) => std::env::var(name)
                .map(|s| Some(s.into_bytes()))
                .map_err(|_| format!("environment variable {name} (--secret-env) is not set")),
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn sign_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac accepts any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

// ---------------------------------------------------------------------------------------------
// gen: realistic GO Feature Flag feature events, in GO Feature Flag's own compact encoding

/// splitmix64: small, fast, reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
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
fn write_event(out: &mut Vec<u8>, rng: &mut Rng, creation_date: u64, sent_at_us: Option<u64>) {
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

fn cmd_gen(o: &Opts) -> Result<u8, String> {
    let path = o.req("out")?;
    let n: u64 = o.num("n", 2_000_000)?;
    let mut rng = Rng(o.num("seed", 42)?);
    let f = File::create(path).map_err(|e| format!("{path}: {e}"))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut line = Vec::with_capacity(512);
    let mut bytes = 0u64;
    for i in 0..n {
        line.clear();
        // ~20 000 evaluations per second of GO Feature Flag traffic
        write_event(&mut line, &mut rng, 1_717_000_000 + i / 20_000, None);
        line.push(b'\n');
        bytes += line.len() as u64;
        w.write_all(&line).map_err(|e| format!("{path}: {e}"))?;
    }
    w.flush().map_err(|e| format!("{path}: {e}"))?;
    println!(
        "events={n} bytes={bytes} avg_bytes={:.1}",
        if n > 0 { bytes as f64 / n as f64 } else { 0.0 }
    );
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// receive: a hand-rolled HTTP/1.1 keep-alive server, one thread per connection

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    sig_verified: AtomicU64,
    sig_failed: AtomicU64,
    sig_missing: AtomicU64,
    bad_bodies: AtomicU64,
    min_batch: AtomicU64,
    max_batch: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    connections: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

impl Stats {
    fn reset(&self) {
        for a in [
            &self.requests, &self.events, &self.bytes, &self.sig_verified, &self.sig_failed,
            &self.sig_missing, &self.bad_bodies, &self.max_batch, &self.first_ns, &self.last_ns,
        ] {
            a.store(0, Relaxed);
        }
        self.min_batch.store(u64::MAX, Relaxed);
        self.latencies_us.lock().unwrap().clear();
    }

    fn to_json(&self) -> String {
        let mut lat = self.latencies_us.lock().unwrap().clone();
        lat.sort_unstable();
        let pct = |p: f64| -> u64 {
            if lat.is_empty() {
                0
            } else {
                lat[(((lat.len() as f64) * p).ceil() as usize).clamp(1, lat.len()) - 1]
            }
        };
        let min_batch = self.min_batch.load(Relaxed);
        format!(
            concat!(
                "{{\"requests\":{},\"events\":{},\"bytes\":{},\"sig_verified\":{},\"sig_failed\":{},",
                "\"sig_missing\":{},\"bad_bodies\":{},\"min_batch\":{},\"max_batch\":{},\"first_ns\":{},",
                "\"last_ns\":{},\"connections\":{},\"lat_count\":{},\"lat_p50_us\":{},\"lat_p99_us\":{},",
                "\"lat_max_us\":{}}}"
            ),
            self.requests.load(Relaxed),
            self.events.load(Relaxed),
            self.bytes.load(Relaxed),
            self.sig_verified.load(Relaxed),
            self.sig_failed.load(Relaxed),
            self.sig_missing.load(Relaxed),
            self.bad_bodies.load(Relaxed),
            if min_batch == u64::MAX { 0 } else { min_batch },
            self.max_batch.load(Relaxed),
            self.first_ns.load(Relaxed),
            self.last_ns.load(Relaxed),
            self.connections.load(Relaxed),
            lat.len(),
            pct(0.50),
            pct(0.99),
            lat.last().copied().unwrap_or(0),
        )
    }
}

struct Server {
    stats: Stats,
    secret: Option<Vec<u8>>,
    latency: bool,
}

fn cmd_receive(o: &Opts) -> Result<u8, String> {
    let listen = o.req("listen")?;
    let listener = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = Arc::new(Server { stats: Stats::default(), secret: o.secret()?, latency: o.flag("latency") });
    server.stats.reset();
    if let Some(pf) = o.get("port-file") {
        // write then rename, so that a reader never sees a partial port
        let tmp = format!("{pf}.tmp");
        std::fs::write(&tmp, format!("{}\n", addr.port())).map_err(|e| format!("{tmp}: {e}"))?;
        std::fs::rename(&tmp, pf).map_err(|e| format!("{pf}: {e}"))?;
    }
    eprintln!("listening on {addr}");
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let server = server.clone();
        server.stats.connections.fetch_add(1, Relaxed);
        thread::spawn(move || {
            let _ = serve_conn(stream, &server);
        });
    }
    Ok(0)
}

/// A growable read buffer: data lives in `buf[pos..filled]`.
struct ReadBuf {
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
}

impl ReadBuf {
    fn new(cap: usize) -> ReadBuf {
        ReadBuf { buf: vec![0; cap], pos: 0, filled: 0 }
    }
    fn data(&self) -> &[u8] {
        &self.buf[self.pos..self.filled]
    }
    /// Makes room for `n` contiguous bytes from `pos`.
    fn reserve(&mut self, n: usize) {
        if self.buf.len() - self.pos < n {
            self.buf.copy_within(self.pos..self.filled, 0);
            self.filled -= self.pos;
            self.pos = 0;
            if self.buf.len() < n {
                self.buf.resize(n.next_power_of_two(), 0);
            }
        }
    }
    /// Reads once more from `r`; Ok(false) at EOF.
    fn fill(&mut self, r: &mut impl Read) -> io::Result<bool> {
        if self.pos == self.filled {
            self.pos = 0;
            self.filled = 0;
        }
        if self.filled == self.buf.len() {
            let want = self.filled - self.pos + 64 * 1024;
            self.reserve(want);
        }
        let n = r.read(&mut self.buf[self.filled..])?;
        self.filled += n;
        Ok(n > 0)
    }
    /// Ensures at least `n` bytes are available from `pos`; Ok(false) on EOF before that.
    fn fill_to(&mut self, r: &mut impl Read, n: usize) -> io::Result<bool> {
        self.reserve(n);
        while self.filled - self.pos < n {
            if !self.fill(r)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

struct Head {
    method: String,
    path: String,
    content_length: Option<usize>,
    chunked: bool,
    expect_continue: bool,
    close: bool,
    signature: Option<String>,
}

fn parse_head(head: &[u8]) -> io::Result<Head> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let text = std::str::from_utf8(head).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().ok_or_else(|| bad("bad request line"))?.to_string();
    let version = parts.next().unwrap_or("");
    let mut h = Head {
        method,
        path,
        content_length: None,
        chunked: false,
        expect_continue: false,
        close: version == "HTTP/1.0",
        signature: None,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            h.content_length = Some(value.parse().map_err(|_| bad("bad content-length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            h.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("expect") {
            h.expect_continue = value.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                h.close = true;
            } else if v.contains("keep-alive") {
                h.close = false;
            }
        } else if name.eq_ignore_ascii_case("x-hub-signature-256") {
            h.signature = Some(value.to_string());
        }
    }
    Ok(h)
}

fn serve_conn(mut stream: TcpStream, server: &Server) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut rb = ReadBuf::new(4 << 20);
    let mut chunked_body = Vec::new();
    loop {
        // the request head
        let head_len = loop {
            if let Some(i) = memchr::memmem::find(rb.data(), b"\r\n\r\n") {
                break i + 4;
            }
            if rb.filled - rb.pos > 64 * 1024 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too long"));
            }
            if !rb.fill(&mut stream)? {
                return Ok(()); // the client closed the connection between requests
            }
        };
        let head = parse_head(&rb.data()[..head_len - 4])?;
        rb.pos += head_len;
        let body_len = head.content_length.unwrap_or(0);
        if head.expect_continue && (head.chunked || rb.filled - rb.pos < body_len) {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        // the body, contiguous in `rb` (content-length) or decoded into `chunked_body`
        // a signed body is hashed as it arrives, so that the HMAC overlaps the transfer
        let mut mac = match (&server.secret, &head.signature) {
            (Some(secret), Some(_)) if head.method == "POST" => {
                Some(HmacSha256::new_from_slice(secret).expect("any key length"))
            }
            _ => None,
        };
        let body: &[u8] = if head.chunked {
            chunked_body.clear();
            read_chunked(&mut stream, &mut rb, &mut chunked_body)?;
            if let Some(m) = mac.as_mut() {
                m.update(&chunked_body);
            }
            &chunked_body
        } else {
            rb.reserve(body_len);
            let mut hashed = 0;
            loop {
                let avail = (rb.filled - rb.pos).min(body_len);
                if let Some(m) = mac.as_mut() {
                    m.update(&rb.buf[rb.pos + hashed..rb.pos + avail]);
                }
                hashed = avail;
                if avail == body_len {
                    break;
                }
                if !rb.fill(&mut stream)? {
                    return Ok(());
                }
            }
            let start = rb.pos;
            rb.pos += body_len;
            &rb.buf[start..start + body_len]
        };
        let response: Vec<u8> = match (head.method.as_str(), head.path.as_str()) {
            ("GET", "/stats") => {
                let json = server.stats.to_json();
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                    json.len()
                )
                .into_bytes()
            }
            ("POST", "/reset") => {
                server.stats.reset();
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()
            }
            ("POST", _) => {
                handle_webhook(server, body, head.signature.as_deref(), mac);
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()
            }
            _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
        };
        // one write per response: no delayed-ACK stall even without TCP_NODELAY on the client
        stream.write_all(&response)?;
        if head.close {
            let _ = stream.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

fn read_chunked(stream: &mut TcpStream, rb: &mut ReadBuf, out: &mut Vec<u8>) -> io::Result<()> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    loop {
        let line_len = loop {
            if let Some(i) = memchr::memmem::find(rb.data(), b"\r\n") {
                break i;
            }
            if !rb.fill(stream)? {
                return Err(bad("EOF in chunked body"));
            }
        };
        let line = std::str::from_utf8(&rb.data()[..line_len]).map_err(|_| bad("bad chunk size"))?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        rb.pos += line_len + 2;
        if size == 0 {
            // trailers, up to the empty line
            loop {
                if !rb.fill_to(stream, 2)? {
                    return Err(bad("EOF in chunked trailer"));
                }
                if let Some(i) = memchr::memmem::find(rb.data(), b"\r\n") {
                    rb.pos += i + 2;
                    if i == 0 {
                        return Ok(());
                    }
                } else if !rb.fill(stream)? {
                    return Err(bad("EOF in chunked trailer"));
                }
            }
        }
        if !rb.fill_to(stream, size + 2)? {
            return Err(bad("EOF in chunk"));
        }
        out.extend_from_slice(&rb.data()[..size]);
        rb.pos += size + 2;
    }
}

/// Checks and counts one webhook body. `mac` has hashed the body when a signature came with it
/// and the receiver has a secret.
fn handle_webhook(server: &Server, body: &[u8], signature: Option<&str>, mac: Option<HmacSha256>) {
    let st = &server.stats;
    let arrival_ns = now_ns();
    let verified = match (mac, signature) {
        (Some(mac), Some(sig)) => Some(
            sig.strip_prefix("sha256=")
                .and_then(|h| hex::decode(h).ok())
                .is_some_and(|expected| mac.verify_slice(&expected).is_ok()),
        ),
        _ => None,
    };
    let mut latencies = Vec::new();
    let counted = if server.latency {
        count_events(body, Some(&mut latencies), arrival_ns / 1000).map_err(|e| e.to_string())
    } else {
        scan_body(body)
    };
    match verified {
        Some(true) => st.sig_verified.fetch_add(1, Relaxed),
        Some(false) => {
            if st.sig_failed.fetch_add(1, Relaxed) < 3 {
                eprintln!("receiver: signature mismatch: {signature:?} ({} bytes)", body.len());
            }
            0
        }
        None => st.sig_missing.fetch_add(1, Relaxed),
    };
    let n = match counted {
        Ok(n) => n,
        Err(e) => {
            st.bad_bodies.fetch_add(1, Relaxed);
            let head = String::from_utf8_lossy(&body[..body.len().min(200)]);
            eprintln!("receiver: bad body ({} bytes): {e}: {head}", body.len());
            0
        }
    };
    if !latencies.is_empty() {
        st.latencies_us.lock().unwrap().extend_from_slice(&latencies);
    }
    st.requests.fetch_add(1, Relaxed);
    st.events.fetch_add(n, Relaxed);
    st.bytes.fetch_add(body.len() as u64, Relaxed);
    st.min_batch.fetch_min(n, Relaxed);
    st.max_batch.fetch_max(n, Relaxed);
    let _ = st.first_ns.compare_exchange(0, arrival_ns, Relaxed, Relaxed);
    st.last_ns.fetch_max(now_ns(), Relaxed);
}

// --- the fast path: a validating JSON scanner (the full JSON grammar, UTF-8 inside strings, the
// only place where JSON allows non-ASCII bytes; nothing allocated) that counts the
// elements of `events` and checks that each is an object with a "kind" key. serde_json with
// IgnoredAny does the same job at ~450 MB/s; this runs at >1 GB/s, so that the receiver stays far
// from being the bottleneck on a 2-core machine where it shares the CPU with the tool measured.

/// Checks a webhook body `{"meta":{string values},"events":[objects with "kind"]}` and returns
/// its number of events.
fn scan_body(body: &[u8]) -> Result<u64, String> {
    if body.len() >= 256 * 1024 {
        return scan_body_split(body);
    }
    let mut s = Scan::new(body, 0);
    let r = s.body();
    r.map_err(|e| format!("{e} at byte {}", s.i))
}

/// The same check on two cores: a second thread starts at an event that seems to begin in the
/// middle of the body (`,{"` found there), while this thread scans from the start and stops at
/// that point only if it reaches it exactly at the start of an element of `events`; then the two
/// halves were scanned from the right state and their results add up. When this thread does not
/// stop there (the guess was inside a string or a nested value), it has scanned the whole body by
/// itself, and the second thread's result is ignored.
fn scan_body_split(body: &[u8]) -> Result<u64, String> {
    let mid = body.len() / 2;
    let Some(off) = memchr::memmem::find(&body[mid..], b",{\"") else {
        let mut s = Scan::new(body, 0);
        let r = s.body();
        return r.map_err(|e| format!("{e} at byte {}", s.i));
    };
    let split = mid + off + 1;
    thread::scope(|sc| {
        let second = sc.spawn(move || {
            let mut s = Scan::new(body, split);
            let r = s.resume_in_events();
            r.map_err(|e| format!("{e} at byte {}", s.i))
        });
        let mut first = Scan::new(body, 0);
        first.stop_at = split;
        let r = first.body().map_err(|e| format!("{e} at byte {}", first.i));
        let n1 = r?;
        if !first.stopped {
            return Ok(n1);
        }
        let (n2, meta_after) = second.join().expect("scan thread")?;
        match (first.meta_seen, meta_after) {
            (true, true) => Err("unexpected top-level key (want meta and events once each)".to_string()),
            (false, false) => Err("missing meta".to_string()),
            _ => Ok(n1 + n2),
        }
    })
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    /// stop when an element of `events` starts here (see scan_body_split)
    stop_at: usize,
    stopped: bool,
    meta_seen: bool,
}

const MAX_DEPTH: u32 = 128;

/// Bytes that end a run of plain string content: '"', '\\', the control characters, and the
/// bytes of non-ASCII characters (checked one character at a time).
static STRING_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    let mut c = 0x80;
    while c < 0x100 {
        t[c] = true;
        c += 1;
    }
    t
};

/// Skips plain string bytes from `i`, 16 at a time (SSE2, part of every x86_64 CPU): returns
/// the index of the first special byte ('"', '\\', a control character, a byte >= 0x80), or a
/// point less than 16 bytes from the end, from where the caller goes on byte by byte.
#[cfg(target_arch = "x86_64")]
#[inline]
fn skip_plain(b: &[u8], mut i: usize) -> usize {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is baseline on x86_64; every load reads b[i..i + 16], inside the slice.
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let space = _mm_set1_epi8(0x20);
        while i + 16 <= b.len() {
            let x = _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i);
            // signed compare: bytes >= 0x80 are negative, so "< 0x20" also flags them
            let special = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
                _mm_cmplt_epi8(x, space),
            );
            let mask = _mm_movemask_epi8(special) as u32;
            if mask != 0 {
                return i + mask.trailing_zeros() as usize;
            }
            i += 16;
        }
    }
    i
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn skip_plain(_b: &[u8], i: usize) -> usize {
    i
}

impl<'a> Scan<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }
    #[inline]
    fn eat(&mut self, c: u8) -> Result<(), &'static str> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(match c {
                b'{' => "expected '{'",
                b'}' => "expected '}'",
                b'[' => "expected '['",
                b']' => "expected ']'",
                b':' => "expected ':'",
                b',' => "expected ','",
                _ => "unexpected byte",
            })
        }
    }

    fn new(b: &'a [u8], i: usize) -> Scan<'a> {
        Scan { b, i, stop_at: usize::MAX, stopped: false, meta_seen: false }
    }

    /// The whole body; with `stop_at`, possibly only up to there (then `stopped` is set and the
    /// events counted so far are returned).
    fn body(&mut self) -> Result<u64, &'static str> {
        self.eat(b'{')?;
        let mut events = None;
        loop {
            self.ws();
            let key = self.string()?;
            self.eat(b':')?;
            match key {
                b"meta" if !self.meta_seen => {
                    self.meta()?;
                    self.meta_seen = true;
                }
                b"events" if events.is_none() => {
                    self.eat(b'[')?;
                    let n = self.elements()?;
                    if self.stopped {
                        return Ok(n);
                    }
                    events = Some(n);
                }
                _ => return Err("unexpected top-level key (want meta and events once each)"),
            }
            if self.end_of_member()? {
                break;
            }
        }
        self.end()?;
        if !self.meta_seen {
            return Err("missing meta");
        }
        events.ok_or("missing events")
    }

    /// From the start of an element of `events` to the end of the body; returns the events
    /// counted and whether a `meta` member came after `events`.
    fn resume_in_events(&mut self) -> Result<(u64, bool), &'static str> {
        let n = self.elements()?;
        let mut meta_after = false;
        while !self.end_of_member()? {
            self.ws();
            let key = self.string()?;
            self.eat(b':')?;
            match key {
                b"meta" if !meta_after => {
                    self.meta()?;
                    meta_after = true;
                }
                _ => return Err("unexpected top-level key (want meta and events once each)"),
            }
        }
        self.end()?;
        Ok((n, meta_after))
    }

    /// After a top-level member: Ok(true) at the closing '}', Ok(false) after a ','.
    fn end_of_member(&mut self) -> Result<bool, &'static str> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(false)
            }
            Some(b'}') => {
                self.i += 1;
                Ok(true)
            }
            _ => Err("expected ',' or '}' after a top-level member"),
        }
    }

    fn end(&mut self) -> Result<(), &'static str> {
        self.ws();
        if self.i != self.b.len() {
            return Err("trailing bytes after the body");
        }
        Ok(())
    }

    fn meta(&mut self) -> Result<(), &'static str> {
        self.eat(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.string()?;
            self.eat(b':')?;
            self.ws();
            self.string().map_err(|_| "meta values must be strings")?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err("expected ',' or '}' in meta"),
            }
        }
    }

    /// The elements of `events`, after its '[' up to and with its ']'.
    fn elements(&mut self) -> Result<u64, &'static str> {
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(0);
        }
        let mut n = 0;
        loop {
            self.ws();
            if self.i == self.stop_at {
                self.stopped = true;
                return Ok(n);
            }
            if self.peek() != Some(b'{') {
                return Err("an event is not an object");
            }
            if !self.object(1, true)? {
                return Err("an event has no \"kind\"");
            }
            n += 1;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(n);
                }
                _ => return Err("expected ',' or ']' in events"),
            }
        }
    }

    /// At '{'. Returns whether a key "kind" was seen (checked only when `want_kind`).
    fn object(&mut self, depth: u32, want_kind: bool) -> Result<bool, &'static str> {
        if depth > MAX_DEPTH {
            return Err("nested too deep");
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(false);
        }
        let mut kind = false;
        loop {
            self.ws();
            let key = self.string()?;
            if want_kind && key == b"kind" {
                kind = true;
            }
            self.eat(b':')?;
            self.value(depth)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(kind);
                }
                _ => return Err("expected ',' or '}' in an object"),
            }
        }
    }

    /// At '['.
    fn array(&mut self, depth: u32) -> Result<(), &'static str> {
        if depth > MAX_DEPTH {
            return Err("nested too deep");
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.value(depth)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err("expected ',' or ']' in an array"),
            }
        }
    }

    fn value(&mut self, depth: u32) -> Result<(), &'static str> {
        self.ws();
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{') => self.object(depth + 1, false).map(|_| ()),
            Some(b'[') => self.array(depth + 1),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err("expected a value"),
        }
    }

    fn literal(&mut self, lit: &[u8]) -> Result<(), &'static str> {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err("bad literal")
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), &'static str> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err("bad number"),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err("bad number fraction");
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err("bad number exponent");
            }
        }
        Ok(())
    }

    /// At '"' (checked). Returns the raw bytes between the quotes.
    #[inline]
    fn string(&mut self) -> Result<&'a [u8], &'static str> {
        if self.peek() != Some(b'"') {
            return Err("expected a string");
        }
        self.i += 1;
        let start = self.i;
        let b = self.b;
        loop {
            // skip plain bytes eight at a time while none is special
            let mut j = skip_plain(b, self.i);
            while j < b.len() && !STRING_SPECIAL[b[j] as usize] {
                j += 1;
            }
            self.i = j;
            match b.get(j) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(&b[start..j]);
                }
                Some(b'\\') => match b.get(j + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                    Some(b'u') => {
                        let hex = b.get(j + 2..j + 6).ok_or("bad \\u escape")?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return Err("bad \\u escape");
                        }
                        self.i += 6;
                    }
                    _ => return Err("bad escape"),
                },
                Some(&c) if c >= 0x80 => {
                    // a UTF-8 sequence: check just this character
                    let len = match c {
                        0xC2..=0xDF => 2,
                        0xE0..=0xEF => 3,
                        0xF0..=0xF4 => 4,
                        _ => return Err("invalid UTF-8 in a string"),
                    };
                    let ch = b.get(j..j + len).ok_or("truncated UTF-8 in a string")?;
                    std::str::from_utf8(ch).map_err(|_| "invalid UTF-8 in a string")?;
                    self.i += len;
                }
                Some(_) => return Err("control character in a string"),
                None => return Err("unterminated string"),
            }
        }
    }
}

// --- body parsing: `{"meta":{...},"events":[{...},...]}`, every event fully parsed (serde_json
// validates the syntax of every value it skips), no allocation per event.

/// Parses a webhook body and returns its number of events. With `lat`, pushes
/// `now_us - metadata.sentAtUs` for each event that carries that stamp.
fn count_events(body: &[u8], lat: Option<&mut Vec<u64>>, now_us: u64) -> Result<u64, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let n = de::Deserializer::deserialize_map(&mut de, BodyVisitor { lat, now_us })?;
    de.end()?;
    Ok(n)
}

/// An object key compared without allocating.
struct Key(u8);
const K_OTHER: u8 = 0;
const K_META: u8 = 1;
const K_EVENTS: u8 = 2;
const K_KIND: u8 = 3;
const K_METADATA: u8 = 4;
const K_SENT_AT: u8 = 5;

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(Key(match s {
                    "meta" => K_META,
                    "events" => K_EVENTS,
                    "kind" => K_KIND,
                    "metadata" => K_METADATA,
                    "sentAtUs" => K_SENT_AT,
                    _ => K_OTHER,
                }))
            }
        }
        d.deserialize_str(V)
    }
}

struct BodyVisitor<'a> {
    lat: Option<&'a mut Vec<u64>>,
    now_us: u64,
}

impl<'de, 'a> Visitor<'de> for BodyVisitor<'a> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"{"meta":{...},"events":[...]}"#)
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<u64, A::Error> {
        let mut events = None;
        let mut meta = false;
        while let Some(Key(k)) = map.next_key::<Key>()? {
            match k {
                K_META => {
                    map.next_value::<MetaCheck>()?;
                    meta = true;
                }
                K_EVENTS => {
                    let seed = EventsSeed { lat: self.lat.as_deref_mut(), now_us: self.now_us };
                    events = Some(map.next_value_seed(seed)?);
                }
                _ => return Err(de::Error::custom("unexpected top-level key (want meta and events only)")),
            }
        }
        if !meta {
            return Err(de::Error::missing_field("meta"));
        }
        events.ok_or_else(|| de::Error::missing_field("events"))
    }
}

/// `meta` must be an object of string values.
struct MetaCheck;
impl<'de> de::Deserialize<'de> for MetaCheck {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<MetaCheck, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetaCheck;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MetaCheck, A::Error> {
                while map.next_entry::<IgnoredAny, StrCheck>()?.is_some() {}
                Ok(MetaCheck)
            }
        }
        d.deserialize_map(V)
    }
}

struct StrCheck;
impl<'de> de::Deserialize<'de> for StrCheck {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<StrCheck, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrCheck;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<StrCheck, E> {
                Ok(StrCheck)
            }
        }
        d.deserialize_str(V)
    }
}

struct EventsSeed<'a> {
    lat: Option<&'a mut Vec<u64>>,
    now_us: u64,
}

impl<'de, 'a> DeserializeSeed<'de> for EventsSeed<'a> {
    type Value = u64;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, 'a> Visitor<'de> for EventsSeed<'a> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0u64;
        while let Some(sent) = seq.next_element_seed(EventSeed { want_stamp: self.lat.is_some() })? {
            n += 1;
            if let (Some(lat), Some(sent)) = (self.lat.as_deref_mut(), sent) {
                lat.push(self.now_us.saturating_sub(sent));
            }
        }
        Ok(n)
    }
}

/// One event: an object with a `kind`; returns `metadata.sentAtUs` when asked and present.
struct EventSeed {
    want_stamp: bool,
}

impl<'de> DeserializeSeed<'de> for EventSeed {
    type Value = Option<u64>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
        let mut kind = false;
        let mut stamp = None;
        while let Some(Key(k)) = map.next_key::<Key>()? {
            match k {
                K_KIND => {
                    map.next_value::<StrCheck>()?;
                    kind = true;
                }
                K_METADATA if self.want_stamp => stamp = map.next_value::<Stamp>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !kind {
            return Err(de::Error::missing_field("kind"));
        }
        Ok(stamp)
    }
}

/// `metadata` -> its `sentAtUs`, if any.
struct Stamp(Option<u64>);
impl<'de> de::Deserialize<'de> for Stamp {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Stamp, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Stamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a metadata object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Stamp, A::Error> {
                let mut ts = None;
                while let Some(Key(k)) = map.next_key::<Key>()? {
                    if k == K_SENT_AT {
                        ts = Some(map.next_value::<u64>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Stamp(ts))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// a minimal HTTP/1.1 client (the load check and the stats/reset/wait commands)

/// Reads one response from `s`; returns (status, body).
fn read_response(s: &mut TcpStream, rb: &mut ReadBuf) -> io::Result<(u16, Vec<u8>)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    loop {
        let head_len = loop {
            if let Some(i) = memchr::memmem::find(rb.data(), b"\r\n\r\n") {
                break i + 4;
            }
            if !rb.fill(s)? {
                return Err(bad("connection closed before the response"));
            }
        };
        let head = std::str::from_utf8(&rb.data()[..head_len]).map_err(|_| bad("bad response head"))?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let len = head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        rb.pos += head_len;
        if status == 100 {
            continue;
        }
        if !rb.fill_to(s, len)? {
            return Err(bad("connection closed in the response body"));
        }
        let body = rb.data()[..len].to_vec();
        rb.pos += len;
        return Ok((status, body));
    }
}

fn http_call(addr: &str, method: &str, path: &str) -> Result<serde_json::Value, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut rb = ReadBuf::new(64 * 1024);
    let (status, body) = read_response(&mut s, &mut rb).map_err(|e| format!("{method} {path}: {e}"))?;
    if status != 200 {
        return Err(format!("{method} {path}: status {status}"));
    }
    if body.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| format!("{method} {path}: {e}"))
}

fn print_stats(v: &serde_json::Value, json: bool) {
    if json {
        println!("{v}");
    } else if let Some(m) = v.as_object() {
        for (k, v) in m {
            println!("{k}={v}");
        }
    }
}

fn cmd_stats(o: &Opts) -> Result<u8, String> {
    print_stats(&http_call(o.req("addr")?, "GET", "/stats")?, o.flag("json"));
    Ok(0)
}

fn cmd_reset(o: &Opts) -> Result<u8, String> {
    http_call(o.req("addr")?, "POST", "/reset")?;
    Ok(0)
}

/// Exit 0 when the receiver counted `--events`; 3 on timeout; 4 when `--pid` died first.
fn cmd_wait(o: &Opts) -> Result<u8, String> {
    let addr = o.req("addr")?;
    let want: u64 = o.num("events", 0)?;
    let timeout = Duration::from_secs_f64(o.num("timeout", 300.0)?);
    let pid: Option<u32> = o.get("pid").map(|p| p.parse().map_err(|_| "--pid: not a number".to_string())).transpose()?;
    let start = Instant::now();
    loop {
        let v = http_call(addr, "GET", "/stats")?;
        let events = v["events"].as_u64().unwrap_or(0);
        if events >= want {
            print_stats(&v, o.flag("json"));
            return Ok(0);
        }
        if let Some(pid) = pid {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                print_stats(&v, o.flag("json"));
                eprintln!("fhbench wait: process {pid} exited with {events} of {want} events received");
                return Ok(4);
            }
        }
        if start.elapsed() > timeout {
            print_stats(&v, o.flag("json"));
            eprintln!("fhbench wait: timed out after {timeout:?} with {events} of {want} events received");
            return Ok(3);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// load: the receiver alone, fed pre-built signed 10 000-event bodies over keep-alive connections

fn cmd_load(o: &Opts) -> Result<u8, String> {
    let addr = o.req("addr")?.to_string();
    let input = o.req("input")?;
    let batch: usize = o.num("batch", 10_000)?;
    let requests: u64 = o.num("requests", 200)?;
    let conns: u64 = o.num("conns", 1)?;
    let secret = o.secret()?;
    let f = File::open(input).map_err(|e| format!("{input}: {e}"))?;
    let mut body = Vec::with_capacity(batch * 200 + 64);
    body.extend_from_slice(br#"{"meta":{"hostname":"loadgen"},"events":["#);
    let mut n = 0;
    for line in BufReader::new(f).lines() {
        let line = line.map_err(|e| format!("{input}: {e}"))?;
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(line.as_bytes());
        n += 1;
        if n == batch {
            break;
        }
    }
    body.extend_from_slice(b"]}");
    let mut req = format!(
        "POST /hook HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(s) = &secret {
        req.push_str(&format!("x-hub-signature-256: sha256={}\r\n", sign_hex(s, &body)));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(&body);
    let req = Arc::new(req);
    let start = Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let (req, addr) = (req.clone(), addr.clone());
            let count = requests / conns + u64::from(c < requests % conns);
            thread::spawn(move || -> Result<(), String> {
                let mut s = TcpStream::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
                s.set_nodelay(true).ok();
                s.set_read_timeout(Some(Duration::from_secs(30))).ok();
                let mut rb = ReadBuf::new(64 * 1024);
                for _ in 0..count {
                    s.write_all(&req).map_err(|e| e.to_string())?;
                    let (status, _) = read_response(&mut s, &mut rb).map_err(|e| e.to_string())?;
                    if status != 200 {
                        return Err(format!("status {status}"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "load thread panicked".to_string())??;
    }
    let secs = start.elapsed().as_secs_f64();
    let events = requests * n as u64;
    println!(
        "requests={requests} events={events} body_bytes={} secs={secs:.3} events_per_s={:.0} mb_per_s={:.0}",
        body.len(),
        events as f64 / secs,
        (requests as f64 * body.len() as f64) / secs / 1e6
    );
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// send: the TCP source's peer: stream a file over one connection, then close it

fn cmd_send(o: &Opts) -> Result<u8, String> {
    let addr = o.req("addr")?;
    let input = o.req("input")?;
    let deadline = Instant::now() + Duration::from_secs_f64(o.num("connect-timeout", 30.0)?);
    let pid = o.get("pid");
    let mut s = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) => {
                if let Some(pid) = pid.filter(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
                    return Err(format!("connect {addr}: {e}; process {pid} (flaghook) has exited"));
                }
                if Instant::now() >= deadline {
                    return Err(format!("connect {addr}: {e} (is flaghook listening?)"));
                }
                thread::sleep(Duration::from_millis(5));
            }
        }
    };
    s.set_nodelay(true).ok();
    let mut f = File::open(input).map_err(|e| format!("{input}: {e}"))?;
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("{input}: {e}"))?;
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n]).map_err(|e| format!("write to {addr}: {e}"))?;
        total += n as u64;
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    // wait for the peer to close its side too (bounded), so that nothing is reset
    s.set_read_timeout(Some(Duration::from_secs(600))).ok();
    let _ = s.read(&mut buf);
    eprintln!("sent {total} bytes in {:.3} s", start.elapsed().as_secs_f64());
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// append: the latency probe: events stamped with their write time, appended at a steady rate

fn cmd_append(o: &Opts) -> Result<u8, String> {
    let path = o.req("out")?;
    let rate: u64 = o.num("rate", 1000)?;
    let duration: f64 = o.num("duration", 10.0)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    let mut rng = Rng(7);
    let tick = Duration::from_millis(10);
    let start = Instant::now();
    let mut written = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut next = start;
    while start.elapsed().as_secs_f64() < duration {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).max(written + 1);
        buf.clear();
        let ts = now_ns() / 1000;
        for _ in written..due {
            write_event(&mut buf, &mut rng, ts / 1_000_000, Some(ts));
            buf.push(b'\n');
        }
        f.write_all(&buf).map_err(|e| format!("{path}: {e}"))?; // one write(2) per tick
        written = due;
        next += tick;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
    }
    println!("events={written}");
    Ok(0)
}

fn cmd_freeport() -> Result<u8, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    println!("{}", l.local_addr().map_err(|e| e.to_string())?.port());
    Ok(0)
}

/// Times the receiver's per-body work on one 10 000-event body: HMAC, the scanner, serde_json
/// (what the scanner replaces).
fn cmd_parsebench(o: &Opts) -> Result<u8, String> {
    let input = o.req("input")?;
    let text = std::fs::read_to_string(input).map_err(|e| format!("{input}: {e}"))?;
    let lines: Vec<&str> = text.lines().take(10_000).collect();
    let body = format!(r#"{{"meta":{{"hostname":"x"}},"events":[{}]}}"#, lines.join(","));
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
    time("hmac-sha256", &mut || sign_hex(b"secret", body).len() as u64);
    time("scan, 1 thread", &mut || Scan::new(body, 0).body().unwrap());
    time("scan, 2 threads", &mut || scan_body(body).unwrap());
    time("serde_json", &mut || count_events(body, None, 0).unwrap());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_agrees_with_serde_json() {
        let good = [
            r#"{"meta":{},"events":[]}"#,
            r#"{"meta":{"hostname":"h","a":"b\"c"},"events":[{"kind":"feature","value":{"a":[1,-2.5e3,true,null,"x\u00e9"]}}]}"#,
            r#" { "events" : [ {"kind":"x"} , {"b":0,"kind":"y"} ] , "meta" : { } } "#,
        ];
        for g in good {
            let a = scan_body(g.as_bytes()).unwrap();
            let b = count_events(g.as_bytes(), None, 0).unwrap();
            assert_eq!(a, b, "{g}");
        }
        let bad = [
            r#"{"meta":{},"events":[{"kind":1},]}"#,
            r#"{"meta":{},"events":[{"no":1}]}"#,
            r#"{"meta":{"a":1},"events":[]}"#,
            r#"{"meta":{},"events":[{"kind":01}]}"#,
            r#"{"meta":{},"events":[{"kind":"a\x"}]}"#,
            r#"{"meta":{},"events":[{"kind":tru}]}"#,
            r#"{"meta":{},"events":[{"kind":"a"}]} x"#,
            r#"{"events":[]}"#,
            r#"{"meta":{},"events":[{"kind":"a",}]}"#,
            r#"{"meta":{},"events":[{"kind":1.}]}"#,
        ];
        for b in bad {
            assert!(scan_body(b.as_bytes()).is_err(), "scanner accepted {b}");
            assert!(count_events(b.as_bytes(), None, 0).is_err(), "serde accepted {b}");
        }
    }

    fn big_body(n: usize, tricky: bool) -> Vec<u8> {
        let mut rng = Rng(3);
        let mut body = b"{\"meta\":{\"hostname\":\"h\"},\"events\":[".to_vec();
        for i in 0..n {
            if i > 0 {
                body.push(b',');
            }
            if tricky && i % 7 == 0 {
                // looks like an event boundary, inside a string and inside a nested array
                body.extend_from_slice(br#"{"kind":"feature","value":"x\"},{\"kind\":1","s":"a,{","nested":[1,{"kind":2},{"a":3}]}"#);
            } else {
                write_event(&mut body, &mut rng, 1, None);
            }
        }
        body.extend_from_slice(b"]}");
        body
    }

    #[test]
    fn split_scan_agrees_with_serde_json() {
        for tricky in [false, true] {
            let body = big_body(5000, tricky);
            assert!(body.len() > 256 * 1024);
            assert_eq!(scan_body(&body).unwrap(), 5000);
            assert_eq!(count_events(&body, None, 0).unwrap(), 5000);
            // move the middle over a few events, so that the guessed split point lands in every
            // kind of place: an event boundary, a nested array, a string ending in ",{"
            let open = body.iter().position(|&c| c == b'[').unwrap() + 1;
            for pad in (0..1200).step_by(3) {
                let mut b = body.clone();
                b.splice(open..open, std::iter::repeat(b' ').take(pad));
                assert_eq!(scan_body(&b).unwrap(), 5000, "pad {pad}");
            }
        }
        // errors in either half, meta after events, meta twice, meta missing
        let body = big_body(5000, false);
        let mid = body.len() / 2;
        for at in [mid / 2, mid + mid / 2] {
            let mut b = body.clone();
            let p = at + memchr::memmem::find(&body[at..], b"\"kind\"").unwrap();
            b[p + 1] = b'K'; // "Kind": an event without "kind"
            assert!(scan_body(&b).is_err());
            assert!(count_events(&b, None, 0).is_err());
        }
        let events = &body[body.iter().position(|&c| c == b'[').unwrap()..body.len() - 1];
        let mut after = b"{\"events\":".to_vec();
        after.extend_from_slice(events);
        after.extend_from_slice(b",\"meta\":{}}");
        assert_eq!(scan_body(&after).unwrap(), 5000);
        let mut twice = b"{\"meta\":{},\"events\":".to_vec();
        twice.extend_from_slice(events);
        twice.extend_from_slice(b",\"meta\":{}}");
        assert!(scan_body(&twice).is_err());
        let mut none = b"{\"events\":".to_vec();
        none.extend_from_slice(events);
        none.push(b'}');
        assert!(scan_body(&none).is_err());
        let mut trailing = body.clone();
        trailing.extend_from_slice(b" x");
        assert!(scan_body(&trailing).is_err());
    }

    #[test]
    fn generated_events_scan() {
        let mut rng = Rng(1);
        let mut body = b"{\"meta\":{},\"events\":[".to_vec();
        for i in 0..1000 {
            if i > 0 {
                body.push(b',');
            }
            write_event(&mut body, &mut rng, 1, if i % 2 == 0 { Some(5) } else { None });
        }
        body.extend_from_slice(b"]}");
        assert_eq!(scan_body(&body).unwrap(), 1000);
        let mut lat = Vec::new();
        assert_eq!(count_events(&body, Some(&mut lat), 10).unwrap(), 1000);
        assert_eq!(lat.len(), 500);
        assert!(lat.iter().all(|&l| l == 5));
    }
}
