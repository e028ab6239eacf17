//! Helpers for the delivery-guarantee tests (crashes, outages, rotation, restarts, poison
//! events, bad input files, several sinks, spill), beside the shared `tests/util`.
//!
//! - [`Hook`] is a real hyper HTTP/1 webhook endpoint on loopback that does not keep
//!   bodies (unless asked): it counts how often each event arrived in a 2xx-answered
//!   request, so tests with hundreds of thousands of events stay cheap. A [`Responder`]
//!   closure picks each answer (status, delay, headers, body) from the request.
//! - [`ClosedPort`] reserves a loopback port that refuses connections until it is opened.
//! - Small events with a numeric id, fast file generation, checkpoint and dead-letter
//!   readers, SIGKILL, and the process's resident memory.
//!
//! Files that use it declare `mod util; mod dutil;`.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::util::{Output, Proc};

// ---------------------------------------------------------------------------------------------
// Events with a numeric id.

/// A minimal valid GO Feature Flag feature event whose `userKey` is `u<id>`.
pub fn small_event(id: u64) -> String {
    format!(r#"{{"kind":"feature","key":"k","userKey":"u{id}","creationDate":1700000000}}"#)
}

/// `small_event(id)` for every id of `ids`, one per line.
pub fn small_lines(ids: std::ops::Range<u64>) -> String {
    let mut s = String::with_capacity((ids.end - ids.start) as usize * 72);
    for id in ids {
        s.push_str(&small_event(id));
        s.push('\n');
    }
    s
}

/// Writes `small_event(id)` lines for `ids` to `path` (created or replaced).
pub fn write_small_events(path: &Path, ids: std::ops::Range<u64>) {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    for id in ids {
        writeln!(w, "{}", small_event(id)).unwrap();
    }
    w.flush().unwrap();
}

/// Appends `text` to `path` (created if missing).
pub fn append(path: &Path, text: impl AsRef<[u8]>) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_ref()).unwrap();
}

/// The ids of the events in a webhook body (`"userKey":"...<digits>"`), in order, and how
/// many events had a `userKey` without a numeric tail.
pub fn event_ids(body: &[u8]) -> (Vec<u64>, usize) {
    const KEY: &[u8] = br#""userKey":""#;
    let mut ids = Vec::new();
    let mut foreign = 0;
    let mut rest = body;
    while let Some(at) = memchr::memmem::find(rest, KEY) {
        rest = &rest[at + KEY.len()..];
        let end = memchr::memchr(b'"', rest).unwrap_or(rest.len());
        let value = &rest[..end];
        let digits = value
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
        match std::str::from_utf8(&value[value.len() - digits..])
            .ok()
            .and_then(|d| d.parse().ok())
        {
            Some(id) => ids.push(id),
            None => foreign += 1,
        }
        rest = &rest[end..];
    }
    (ids, foreign)
}

// ---------------------------------------------------------------------------------------------
// The counting webhook endpoint.

/// How the [`Hook`] answers one request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    /// Wait this long before answering; the request counts as delivered on arrival when the
    /// status is 2xx (as for a real endpoint whose reply is lost in a crash).
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Answer {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn ok() -> Self {
        Self::status(200)
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// One request, as the responder sees it.
pub struct Seen<'a> {
    /// 0 for the first request the endpoint got, then 1, 2...
    pub index: usize,
    pub body: &'a [u8],
    /// Ids of the events in the body (see [`event_ids`]).
    pub ids: &'a [u64],
    /// Events in the body without a numeric id.
    pub foreign: usize,
}

impl Seen<'_> {
    pub fn events(&self) -> usize {
        self.ids.len() + self.foreign
    }

    pub fn contains(&self, needle: &str) -> bool {
        memchr::memmem::find(self.body, needle.as_bytes()).is_some()
    }
}

pub type Responder = Box<dyn FnMut(&Seen) -> Answer + Send>;

/// What the [`Hook`] saw so far.
#[derive(Default)]
pub struct Tally {
    /// `counts[id]`: how many 2xx-answered requests carried event `id`.
    pub counts: Vec<u32>,
    /// Events in 2xx-answered requests, duplicates included.
    pub delivered: u64,
    /// 2xx-answered events without a numeric id (e.g. a `userKey` of "poison").
    pub foreign_delivered: u64,
    pub ok_requests: u64,
    pub failed_requests: u64,
    /// The largest number of events in one request.
    pub max_batch: usize,
    /// Every request's status and body, when the hook keeps bodies.
    pub bodies: Vec<(u16, Bytes)>,
}

impl Tally {
    /// Ids in `0..n` that never arrived.
    pub fn missing(&self, n: u64) -> Vec<u64> {
        (0..n)
            .filter(|&id| self.counts.get(id as usize).copied().unwrap_or(0) == 0)
            .collect()
    }

    /// Distinct ids that arrived.
    pub fn distinct(&self) -> u64 {
        self.counts.iter().filter(|&&c| c > 0).count() as u64
    }

    /// Arrivals beyond the first, over all ids.
    pub fn duplicates(&self) -> u64 {
        self.counts
            .iter()
            .map(|&c| u64::from(c.saturating_sub(1)))
            .sum()
    }

    /// Ids that arrived more than once.
    pub fn duplicated_ids(&self) -> Vec<u64> {
        (0..self.counts.len() as u64)
            .filter(|&id| self.counts[id as usize] > 1)
            .collect()
    }

    /// Every id of `0..n` arrived at least once.
    pub fn has_all(&self, n: u64) -> bool {
        (0..n as usize).all(|id| self.counts.get(id).copied().unwrap_or(0) > 0)
    }

    fn record(&mut self, ids: &[u64], foreign: usize) {
        for &id in ids {
            let id = id as usize;
            if id >= self.counts.len() {
                self.counts.resize(id + 1, 0);
            }
            self.counts[id] += 1;
        }
        self.delivered += (ids.len() + foreign) as u64;
        self.foreign_delivered += foreign as u64;
    }
}

struct HookState {
    tally: Tally,
    responder: Responder,
    keep_bodies: bool,
    requests: usize,
}

type Shared = Arc<(Mutex<HookState>, Condvar)>;

/// A real webhook endpoint on loopback that counts event ids (see the module doc).
pub struct Hook {
    addr: SocketAddr,
    shared: Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Hook {
    /// An endpoint on a fresh port answering with `responder`.
    pub fn start(responder: impl FnMut(&Seen) -> Answer + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind hook");
        Self::on(listener, responder)
    }

    /// An endpoint that accepts everything.
    pub fn accepting() -> Self {
        Self::start(|_| Answer::ok())
    }

    /// An endpoint serving on `listener` (e.g. a [`ClosedPort`] just opened).
    pub fn on(
        listener: TcpListener,
        responder: impl FnMut(&Seen) -> Answer + Send + 'static,
    ) -> Self {
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared: Shared = Arc::new((
            Mutex::new(HookState {
                tally: Tally::default(),
                responder: Box::new(responder),
                keep_bodies: false,
                requests: 0,
            }),
            Condvar::new(),
        ));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(listener, thread_shared, rx));
        });
        Hook {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/hook`
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Keep every request's status and body in [`Tally::bodies`].
    pub fn keep_bodies(&self) {
        self.shared.0.lock().unwrap().keep_bodies = true;
    }

    pub fn set_responder(&self, responder: impl FnMut(&Seen) -> Answer + Send + 'static) {
        self.shared.0.lock().unwrap().responder = Box::new(responder);
    }

    /// Reads the tally under the lock.
    pub fn with<R>(&self, f: impl FnOnce(&Tally) -> R) -> R {
        f(&self.shared.0.lock().unwrap().tally)
    }

    /// Waits until `pred` holds (true) or `timeout` passes (false).
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&Tally) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.shared;
        let mut state = lock.lock().unwrap();
        loop {
            if pred(&state.tally) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = cvar.wait_timeout(state, deadline - now).unwrap().0;
        }
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: TcpListener,
    shared: Shared,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| handle(req, shared.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    req: hyper::Request<Incoming>,
    shared: Shared,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let (ids, foreign) = event_ids(&body);
    let answer = {
        let (lock, cvar) = &*shared;
        let mut state = lock.lock().unwrap();
        let seen = Seen {
            index: state.requests,
            body: &body,
            ids: &ids,
            foreign,
        };
        let answer = (state.responder)(&seen);
        state.requests += 1;
        let tally = &mut state.tally;
        tally.max_batch = tally.max_batch.max(ids.len() + foreign);
        if (200..300).contains(&answer.status) {
            tally.ok_requests += 1;
            tally.record(&ids, foreign);
        } else {
            tally.failed_requests += 1;
        }
        if state.keep_bodies {
            state.tally.bodies.push((answer.status, body.clone()));
        }
        cvar.notify_all();
        answer
    };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from(answer.body)));
    *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap();
    for (k, v) in &answer.headers {
        resp.headers_mut().append(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            hyper::header::HeaderValue::from_str(v).unwrap(),
        );
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// A port that refuses connections until it is opened.

/// A loopback port bound but not listening: connections to it are refused (RST), and no
/// other test can take it. [`ClosedPort::open`] turns it into a listener.
pub struct ClosedPort {
    socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl ClosedPort {
    pub fn reserve() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        ClosedPort { socket, addr }
    }

    /// `http://127.0.0.1:PORT/hook`
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Starts listening on the reserved port.
    pub fn open(self) -> TcpListener {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = rt.enter();
        self.socket.listen(1024).unwrap().into_std().unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// `flaghook run --config PATH` (continuous: until a signal).
pub fn run_cmd(config: &Path) -> std::process::Command {
    let mut cmd = crate::util::flaghook(&["run", "--config"]);
    cmd.arg(config);
    cmd
}

/// SIGKILL: the process dies at once, as in an OOM kill or a power cut (for the process).
pub fn sigkill(proc: &Proc) {
    // SAFETY: kill(2) on our own child's pid; the child is not reaped until we wait on it.
    unsafe {
        libc::kill(proc.pid() as libc::pid_t, libc::SIGKILL);
    }
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS:")
}

/// The most resident memory process `pid` ever had (its high-water mark), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM:")
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Whether this process runs as root (where `chmod 000` does not stop reads).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// One `key=value` field of the last summary line on stdout.
#[track_caller]
pub fn summary_value(out: &Output, key: &str) -> u64 {
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("summary "))
        .unwrap_or_else(|| panic!("no summary line on stdout:\n{out}"));
    line.split(' ')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("summary has no numeric {key}:\n{out}"))
}

// ---------------------------------------------------------------------------------------------
// data_dir contents.

/// `data_dir/checkpoints/<source>.json`
pub fn checkpoint_path(data_dir: &Path, source: &str) -> PathBuf {
    data_dir.join("checkpoints").join(format!("{source}.json"))
}

/// The saved entries of a checkpoint file (`files`), or None when it does not exist.
#[track_caller]
pub fn checkpoint_files(data_dir: &Path, source: &str) -> Option<Vec<Value>> {
    let path = checkpoint_path(data_dir, source);
    let text = std::fs::read(&path).ok()?;
    let v: Value = serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!(
            "checkpoint {} is not JSON ({e}): {}",
            path.display(),
            String::from_utf8_lossy(&text)
        )
    });
    assert_eq!(v["version"], 1, "checkpoint version: {v}");
    Some(v["files"].as_array().expect("files is an array").clone())
}

/// `data_dir/dead-letter/<sink>.jsonl`
pub fn dead_letter_path(data_dir: &Path, sink: &str) -> PathBuf {
    data_dir.join("dead-letter").join(format!("{sink}.jsonl"))
}

/// Every record of a sink's dead-letter file (none when the file is absent).
#[track_caller]
pub fn dead_letters(data_dir: &Path, sink: &str) -> Vec<Value> {
    let path = dead_letter_path(data_dir, sink);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("dead letter is not JSON ({e}): {l}"))
        })
        .collect()
}

/// `data_dir/spill/<sink>.jsonl`
pub fn spill_path(data_dir: &Path, sink: &str) -> PathBuf {
    data_dir.join("spill").join(format!("{sink}.jsonl"))
}
