//! Shared helpers for flaghook's black-box integration tests.
//!
//! Every test talks to the real `flaghook` binary over real loopback sockets:
//! - [`TestServer`] is a real hyper HTTP/1 server on `127.0.0.1:0` that records every request
//!   (method, path, every header value, exact body bytes, arrival time, connection) and answers
//!   from a script of [`Reply`]s, falling back to a default reply (200 unless told otherwise).
//! - [`Workspace`] is a temporary directory holding the config, the input files and `data_dir`.
//! - [`Proc`] runs the binary with piped output and a hard timeout, so no test can hang.
//! - event generators, the known-answer vector, HMAC signing and summary parsing.
//!
//! The server runs on its own thread and runtime, so tests stay plain synchronous `#[test]`s
//! and run in parallel with each other.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::Sha256;

/// How long any child process may run before it is killed and the test fails.
pub const PROC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a test waits for requests to show up at the server.
pub const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Known-answer vector (GO Feature Flag's own webhook exporter test, see goff-webhook.md).

pub const KAT_EVENT_1: &str = r#"{"kind":"feature","contextKind":"anonymousUser","userKey":"ABCD","creationDate":1617970547,"key":"random-key","variation":"Default","value":"YO","default":false,"version":"","source":"SERVER"}"#;
pub const KAT_EVENT_2: &str = r#"{"kind":"feature","contextKind":"anonymousUser","userKey":"EFGH","creationDate":1617970701,"key":"random-key","variation":"Default","value":"YO2","default":false,"version":"127","source":"SERVER"}"#;
pub const KAT_SECRET: &str = "secret";
pub const KAT_SIGNATURE: &str =
    "sha256=f1f9766836d4e513035986c035ee9f091b895709be47a802b5840467007e1ec0";

/// The exact body GO Feature Flag sends for the known-answer vector.
pub fn kat_body() -> String {
    format!(r#"{{"meta":{{"hostname":"hostname"}},"events":[{KAT_EVENT_1},{KAT_EVENT_2}]}}"#)
}

// ---------------------------------------------------------------------------------------------
// The recording HTTP server.

/// One scripted answer of the [`TestServer`].
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    pub fn ok() -> Self {
        Self::status(200)
    }

    /// Wait this long before answering (the request is recorded on arrival).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query, e.g. `/hook?x=1`.
    pub path: String,
    /// Every header value in arrival order; names are lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// When the request head arrived.
    pub at: Instant,
    /// The status the server answered with.
    pub status: u16,
    /// Which accepted TCP connection carried the request (0, 1, ...).
    pub connection: usize,
}

/// The decoded webhook body: `meta` as JSON, each event as its exact raw text.
#[derive(Clone, Debug)]
pub struct Payload {
    pub meta: Value,
    pub events: Vec<String>,
}

#[derive(Deserialize)]
struct RawPayload {
    meta: Box<RawValue>,
    events: Vec<Box<RawValue>>,
}

impl Recorded {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }

    /// Every value of a header, in order, one entry per header line.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Every value of a header, with comma-joined lines split (HTTP treats both the same).
    pub fn header_list(&self, name: &str) -> Vec<String> {
        self.header_values(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    }

    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("request body is not UTF-8")
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Parses the body as `{"meta":{...},"events":[...]}`; panics with the body otherwise.
    pub fn payload(&self) -> Payload {
        let raw: RawPayload = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "request body is not a webhook payload ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        });
        Payload {
            meta: serde_json::from_str(raw.meta.get()).unwrap(),
            events: raw.events.iter().map(|e| e.get().to_string()).collect(),
        }
    }

    pub fn events(&self) -> Vec<String> {
        self.payload().events
    }

    pub fn meta(&self) -> Value {
        self.payload().meta
    }
}

/// Chooses a reply from the request (method, path, headers, body); set with
/// [`TestServer::with_responder`]. Takes precedence over the script.
pub type Responder = Box<dyn Fn(&Recorded) -> Reply + Send>;

struct State {
    requests: Vec<Recorded>,
    script: VecDeque<Reply>,
    default: Reply,
    responder: Option<Responder>,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// A real HTTP/1 server on `127.0.0.1:0` that records every request.
pub struct TestServer {
    addr: SocketAddr,
    shared: Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server that answers 200 to everything.
    pub fn start() -> Self {
        Self::scripted(Vec::new(), Reply::ok())
    }

    /// A server that answers with `script` in order, then with `default` forever.
    pub fn scripted(script: Vec<Reply>, default: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared: Shared = Arc::new((
            Mutex::new(State {
                requests: Vec::new(),
                script: script.into(),
                default,
                responder: None,
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
        TestServer {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// A server whose every reply is chosen by `responder` from the request.
    pub fn with_responder(responder: impl Fn(&Recorded) -> Reply + Send + 'static) -> Self {
        let server = Self::start();
        server.shared.0.lock().unwrap().responder = Some(Box::new(responder));
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/hook`
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Adds replies to the end of the script.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.0.lock().unwrap().script.extend(replies);
    }

    pub fn set_default(&self, reply: Reply) {
        self.shared.0.lock().unwrap().default = reply;
    }

    /// A snapshot of every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.0.lock().unwrap().requests.clone()
    }

    /// Waits until `pred` holds over the requests (or `timeout` passes) and returns them.
    pub fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.shared;
        let mut state = lock.lock().unwrap();
        loop {
            if pred(&state.requests) {
                return state.requests.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                return state.requests.clone();
            }
            state = cvar.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// Waits for at least `n` requests.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait_until(timeout, |r| r.len() >= n)
    }

    /// Waits until 2xx-answered requests carry at least `n` events in total.
    pub fn wait_for_delivered(&self, n: usize, timeout: Duration) -> Vec<String> {
        self.wait_until(timeout, |r| delivered_events(r).len() >= n);
        self.delivered()
    }

    /// Events of every 2xx-answered request, concatenated in arrival order.
    pub fn delivered(&self) -> Vec<String> {
        delivered_events(&self.requests())
    }
}

/// Events of every 2xx-answered request, concatenated in arrival order.
pub fn delivered_events(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.is_success())
        .flat_map(|r| r.events())
        .collect()
}

impl Drop for TestServer {
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
    let connections = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = connections.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, shared.clone(), conn));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Shared,
    connection: usize,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let reply = {
        let (lock, cvar) = &*shared;
        let mut state = lock.lock().unwrap();
        let mut recorded = Recorded {
            method,
            path,
            headers,
            body,
            at,
            status: 0,
            connection,
        };
        let reply = match &state.responder {
            Some(responder) => responder(&recorded),
            None => state
                .script
                .pop_front()
                .unwrap_or_else(|| state.default.clone()),
        };
        recorded.status = reply.status;
        state.requests.push(recorded);
        cvar.notify_all();
        reply
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (k, v) in &reply.headers {
        resp.headers_mut().append(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            hyper::header::HeaderValue::from_str(v).unwrap(),
        );
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// Workspace: a temporary directory with the config, inputs and data_dir.

pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    pub fn new() -> Self {
        Workspace {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path("data")
    }

    /// Writes `contents` to `name` inside the workspace and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// Appends `contents` to `name`.
    pub fn append(&self, name: &str, contents: impl AsRef<[u8]>) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.path(name))
            .unwrap();
        f.write_all(contents.as_ref()).unwrap();
        f.flush().unwrap();
    }

    /// Writes `flaghook.toml`: `data_dir` inside the workspace, then `body` (tables).
    pub fn config(&self, body: &str) -> PathBuf {
        let text = format!("data_dir = {}\n\n{body}", toml_str(self.data_dir()));
        self.write("flaghook.toml", text)
    }

    /// A one-source, one-sink pipeline: file source `in` over `events.json` (written with
    /// `events`), webhook sink `webhook` to `url` with `sink_extra` lines added.
    pub fn file_pipeline(&self, events: impl AsRef<[u8]>, url: &str, sink_extra: &str) -> PathBuf {
        let input = self.write("events.json", events);
        self.config(&format!(
            r#"[sources.in]
type = "file"
include = [{input}]

[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = {url}
{sink_extra}
"#,
            input = toml_str(&input),
            url = toml_str(url),
        ))
    }
}

/// A TOML basic string holding `s` (path or text), quoted and escaped.
pub fn toml_str(s: impl AsRef<std::ffi::OsStr>) -> String {
    toml::Value::String(s.as_ref().to_string_lossy().into_owned()).to_string()
}

// ---------------------------------------------------------------------------------------------
// Running the binary.

/// A `flaghook` command with `args`, stdin closed and `RUST_LOG=info`.
pub fn flaghook(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flaghook"));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// `flaghook run --config PATH --once`
pub fn run_once_cmd(config: &Path) -> Command {
    let mut cmd = flaghook(&["run", "--config"]);
    cmd.arg(config).arg("--once");
    cmd
}

/// Runs `flaghook run --config PATH --once` to completion (bounded by [`PROC_TIMEOUT`]).
pub fn run_once(config: &Path) -> Output {
    Proc::spawn(run_once_cmd(config)).wait()
}

/// Runs `flaghook validate --config PATH` to completion.
pub fn validate(config: &Path) -> Output {
    let mut cmd = flaghook(&["validate", "--config"]);
    cmd.arg(config);
    Proc::spawn(cmd).wait()
}

/// Runs `flaghook ARGS` to completion.
pub fn run_args(args: &[&str]) -> Output {
    Proc::spawn(flaghook(args)).wait()
}

/// A running child process whose stdout/stderr are collected by reader threads.
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    lines: mpsc::Receiver<String>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    done: bool,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr piped. Set `cmd.stdin(Stdio::piped())` first to
    /// write to its stdin with [`Proc::stdin`].
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn flaghook");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let out_pipe = child.stdout.take().unwrap();
        let err_pipe = child.stderr.take().unwrap();
        let out_buf = stdout.clone();
        let err_buf = stderr.clone();
        let readers = vec![
            std::thread::spawn(move || {
                let mut r = BufReader::new(out_pipe);
                let mut line = Vec::new();
                while let Ok(n) = r.read_until(b'\n', &mut line) {
                    if n == 0 {
                        break;
                    }
                    out_buf.lock().unwrap().extend_from_slice(&line);
                    let _ = tx.send(String::from_utf8_lossy(&line).trim_end().to_string());
                    line.clear();
                }
            }),
            std::thread::spawn(move || {
                let mut r = err_pipe;
                let mut buf = [0u8; 8192];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    err_buf.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }),
        ];
        Proc {
            child,
            stdout,
            stderr,
            lines,
            readers,
            started: Instant::now(),
            done: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdin (only when spawned with `Stdio::piped()`); drop it to close.
    pub fn stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("stdin was not piped")
    }

    pub fn stderr_now(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn stdout_now(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// The next complete stdout line, if one arrives within `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Waits until stderr contains `needle`; returns all of stderr then, or None on timeout.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stderr_now();
            if s.contains(needle) {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends SIGINT.
    pub fn sigint(&self) {
        self.signal(libc::SIGINT);
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; the child is not reaped until we wait on it.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// Waits for exit, at most [`PROC_TIMEOUT`] from spawn; kills the child after that.
    pub fn wait(self) -> Output {
        let deadline = self.started + PROC_TIMEOUT;
        self.wait_until(deadline)
    }

    /// Waits for exit at most `timeout` from now; kills the child after that.
    pub fn wait_timeout(self, timeout: Duration) -> Output {
        self.wait_until(Instant::now() + timeout)
    }

    fn wait_until(mut self, deadline: Instant) -> Output {
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                let _ = self.child.kill();
                break self.child.wait().expect("wait after kill");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.done = true;
        // A grandchild holding the pipes open must not hang the test: wait a little, then
        // leave the reader threads behind.
        let readers_deadline = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < readers_deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for r in self.readers.drain(..) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
        Output {
            code: status.code(),
            stdout: self.stdout_now(),
            stderr: self.stderr_now(),
            timed_out,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a finished child left behind.
pub struct Output {
    /// None when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// True when the test harness had to kill the child.
    pub timed_out: bool,
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail = |s: &str| {
            let start = s.len().saturating_sub(6000);
            let mut i = start;
            while !s.is_char_boundary(i) {
                i += 1;
            }
            s[i..].to_string()
        };
        write!(
            f,
            "exit code {:?}{}\n--- stdout ---\n{}\n--- stderr (tail) ---\n{}",
            self.code,
            if self.timed_out {
                " (KILLED after timeout)"
            } else {
                ""
            },
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

impl Output {
    /// Asserts the exit code (and that the process was not killed by the harness).
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert!(!self.timed_out, "flaghook did not exit in time:\n{self}");
        assert_eq!(self.code, Some(code), "unexpected exit code:\n{self}");
        self
    }

    /// The `summary ...` line, which must be the last line of stdout.
    #[track_caller]
    pub fn summary(&self) -> Summary {
        let last = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let Some(rest) = last.strip_prefix("summary ") else {
            panic!("last stdout line is not a summary line:\n{self}");
        };
        let fields: BTreeMap<String, u64> = rest
            .split(' ')
            .map(|kv| {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad summary field {kv:?}:\n{self}"));
                let v = v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad summary value {kv:?}:\n{self}"));
                (k.to_string(), v)
            })
            .collect();
        let get = |k: &str| {
            *fields
                .get(k)
                .unwrap_or_else(|| panic!("summary lacks {k}:\n{self}"))
        };
        Summary {
            events_delivered: get("events_delivered"),
            requests: get("requests"),
            events_rejected: get("events_rejected"),
            events_not_delivered: get("events_not_delivered"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub events_delivered: u64,
    pub requests: u64,
    pub events_rejected: u64,
    pub events_not_delivered: u64,
}

// ---------------------------------------------------------------------------------------------
// TCP helpers.

/// A port that was free a moment ago (bound on 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connects to `addr`, retrying while flaghook is still starting its listener.
/// Panics with the process's stderr if it never listens.
pub fn connect(addr: &str, proc: &Proc) -> TcpStream {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => {
                s.set_nodelay(true).unwrap();
                // A stalled reader on flaghook's side fails the test instead of hanging it.
                s.set_write_timeout(Some(WAIT)).unwrap();
                return s;
            }
            Err(e) => {
                if Instant::now() >= deadline {
                    panic!(
                        "flaghook never listened on {addr}: {e}\nstderr:\n{}",
                        proc.stderr_now()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Events.

/// A feature event in GO Feature Flag's compact encoding, unique per `i`.
pub fn feature_event(i: usize) -> String {
    format!(
        r#"{{"kind":"feature","contextKind":"user","userKey":"user-{i}","creationDate":{},"key":"flag-{i}","variation":"on","value":true,"default":false,"version":"v1","source":"SERVER"}}"#,
        1_700_000_000 + i
    )
}

/// A tracking event in GO Feature Flag's compact encoding, unique per `i`.
pub fn tracking_event(i: usize) -> String {
    format!(
        r#"{{"kind":"tracking","contextKind":"user","userKey":"user-{i}","creationDate":{},"key":"event-{i}","evaluationContext":{{"targetingKey":"user-{i}","plan":"pro"}},"trackingEventDetails":{{"amount":{i}}}}}"#,
        1_700_000_000 + i
    )
}

/// `n` distinct feature events, numbered from `start`.
pub fn feature_events(start: usize, n: usize) -> Vec<String> {
    (start..start + n).map(feature_event).collect()
}

/// One event per line, each ending in `\n`.
pub fn jsonl<S: AsRef<str>>(events: &[S]) -> String {
    events.iter().map(|e| format!("{}\n", e.as_ref())).collect()
}

/// A JSON string literal holding `s` (for shipper envelopes).
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Signatures and host name.

/// `sha256=<hex HMAC-SHA256(secret, body)>`
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The machine's host name, as gethostname(2) gives it (GO Feature Flag's os.Hostname()).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    assert_eq!(rc, 0, "gethostname failed");
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The package directory (where `pipelines/` lives).
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
