//! `receive`: the webhook receiver the benchmark delivers to. A hand-rolled HTTP/1.1 keep-alive
//! server, one thread per connection, `TCP_NODELAY`, each response in one write. For every POST it
//! verifies `X-Hub-Signature-256` (hashing the body while it arrives, as sent: compressed when it
//! came with `Content-Encoding: gzip` or `zstd`, then decoded), checks the whole body and counts
//! its events (`scan.rs`; with `--latency`, `count.rs`, which also reads each event's
//! `metadata.sentAtUs`). With `--delay-ms`, each webhook POST is answered that long after its body
//! arrived, as a remote collector's round trip would. `GET /stats` returns the counters as JSON,
//! `POST /reset` zeroes them.

use crate::http::{self, ReadBuf};
use crate::sign::{self, HmacSha256};
use hmac::Mac;
use std::io::{self, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(clap::Args)]
pub(crate) struct ReceiveArgs {
    /// Address to listen on (port 0: any free port)
    #[arg(long)]
    listen: String,
    /// Environment variable holding the webhook secret; without it, signatures are not checked
    #[arg(long)]
    secret_env: Option<String>,
    /// File the port is written to once listening (written whole: write, then rename)
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Parse bodies with serde_json and record append -> arrival latencies (`append`'s stamps)
    #[arg(long)]
    latency: bool,
    /// Answer each webhook POST this many milliseconds after its body arrived (a collector's
    /// round trip); connections are served by threads of their own, so requests in flight on
    /// several connections wait at the same time
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

/// The receiver's counters, zeroed by `POST /reset`, read by `GET /stats`.
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
            &self.requests,
            &self.events,
            &self.bytes,
            &self.sig_verified,
            &self.sig_failed,
            &self.sig_missing,
            &self.bad_bodies,
            &self.max_batch,
            &self.first_ns,
            &self.last_ns,
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
    delay: std::time::Duration,
}

/// Serves until killed.
pub(crate) fn run(args: &ReceiveArgs) -> Result<(), String> {
    let listener =
        TcpListener::bind(&args.listen).map_err(|e| format!("bind {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = Arc::new(Server {
        stats: Stats::default(),
        secret: sign::secret_from_env(args.secret_env.as_deref())?,
        latency: args.latency,
        delay: std::time::Duration::from_millis(args.delay_ms),
    });
    server.stats.reset();
    if let Some(pf) = &args.port_file {
        write_port_file(pf, addr.port())?;
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
    Ok(())
}

/// Writes then renames, so that a reader never sees a partial port.
fn write_port_file(path: &PathBuf, port: u16) -> Result<(), String> {
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{port}\n"))
        .map_err(|e| format!("{}: {e}", tmp.to_string_lossy()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// One keep-alive connection: request after request until the client closes it.
fn serve_conn(mut stream: TcpStream, server: &Server) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut rb = ReadBuf::new(4 << 20);
    let mut chunked_body = Vec::new();
    loop {
        let Some(head_len) = http::fill_head(&mut stream, &mut rb)? else {
            return Ok(()); // the client closed the connection between requests
        };
        let head = http::parse_head(&rb.data()[..head_len - 4])?;
        rb.consume(head_len);
        let body_len = head.content_length.unwrap_or(0);
        if head.expect_continue && (head.chunked || rb.len() < body_len) {
            stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        // a signed body is hashed as it arrives, so that the HMAC overlaps the transfer
        let mut mac = match (&server.secret, &head.signature) {
            (Some(secret), Some(_)) if head.method == "POST" => Some(sign::new_mac(secret)),
            _ => None,
        };
        // the body, contiguous in `rb` (content-length) or decoded into `chunked_body`
        let body: &[u8] = if head.chunked {
            chunked_body.clear();
            http::read_chunked(&mut stream, &mut rb, &mut chunked_body)?;
            if let Some(m) = mac.as_mut() {
                m.update(&chunked_body);
            }
            &chunked_body
        } else {
            let hash = |part: &[u8]| {
                if let Some(m) = mac.as_mut() {
                    m.update(part);
                }
            };
            if !http::read_sized_body(&mut stream, &mut rb, body_len, hash)? {
                return Ok(());
            }
            rb.take(body_len)
        };
        let response = respond(server, &head, body, mac);
        // one write per response: no delayed-ACK stall even without TCP_NODELAY on the client
        stream.write_all(&response)?;
        if head.close {
            let _ = stream.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

/// Routes one request: `GET /stats`, `POST /reset`, any other POST is a webhook delivery.
fn respond(server: &Server, head: &http::Head, body: &[u8], mac: Option<HmacSha256>) -> Vec<u8> {
    const OK_EMPTY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    match (head.method.as_str(), head.path.as_str()) {
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
            OK_EMPTY.to_vec()
        }
        ("POST", _) => {
            match decode(body, head.content_encoding.as_deref()) {
                Ok(decoded) => {
                    handle_webhook(server, body, &decoded, head.signature.as_deref(), mac)
                }
                Err(e) => {
                    server.stats.bad_bodies.fetch_add(1, Relaxed);
                    eprintln!("receiver: body not decoded ({} bytes): {e}", body.len());
                }
            }
            if !server.delay.is_zero() {
                thread::sleep(server.delay);
            }
            OK_EMPTY.to_vec()
        }
        _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
    }
}

/// The body as its `Content-Encoding` says (none, gzip or zstd).
fn decode<'a>(
    body: &'a [u8],
    encoding: Option<&str>,
) -> Result<std::borrow::Cow<'a, [u8]>, String> {
    use std::io::Read;
    match encoding {
        None | Some("identity") => Ok(body.into()),
        Some("gzip") => {
            let mut out = Vec::with_capacity(body.len() * 8);
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|e| format!("gzip: {e}"))?;
            Ok(out.into())
        }
        Some("zstd") => zstd::stream::decode_all(body)
            .map(Into::into)
            .map_err(|e| format!("zstd: {e}")),
        Some(other) => Err(format!("Content-Encoding {other:?} is not supported")),
    }
}

/// Checks and counts one webhook body: `sent` as it came (the signature covers it), `body`
/// decoded. `mac` has hashed `sent` when a signature came with it and the receiver has a
/// secret. Always answered 200: a bad body or signature is counted (`bad_bodies`,
/// `sig_failed`), and the benchmark fails the run on those counters.
fn handle_webhook(
    server: &Server,
    sent: &[u8],
    body: &[u8],
    signature: Option<&str>,
    mac: Option<HmacSha256>,
) {
    let st = &server.stats;
    let arrival_ns = crate::gen::now_ns();
    let verified = match (mac, signature) {
        (Some(mac), Some(sig)) => Some(sign::verify(mac, sig)),
        _ => None,
    };
    let mut latencies = Vec::new();
    let counted = if server.latency {
        crate::count::count_events(body, Some(&mut latencies), arrival_ns / 1000)
            .map_err(|e| e.to_string())
    } else {
        crate::scan::scan_body(body)
    };
    match verified {
        Some(true) => st.sig_verified.fetch_add(1, Relaxed),
        Some(false) => {
            if st.sig_failed.fetch_add(1, Relaxed) < 3 {
                eprintln!(
                    "receiver: signature mismatch: {signature:?} ({} bytes)",
                    body.len()
                );
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
        st.latencies_us
            .lock()
            .unwrap()
            .extend_from_slice(&latencies);
    }
    st.requests.fetch_add(1, Relaxed);
    st.events.fetch_add(n, Relaxed);
    st.bytes.fetch_add(sent.len() as u64, Relaxed);
    st.min_batch.fetch_min(n, Relaxed);
    st.max_batch.fetch_max(n, Relaxed);
    let _ = st
        .first_ns
        .compare_exchange(0, arrival_ns, Relaxed, Relaxed);
    st.last_ns.fetch_max(crate::gen::now_ns(), Relaxed);
}
