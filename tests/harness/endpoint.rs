//! [`Endpoint`]: the recording webhook endpoint every test sends to, and [`ClosedPort`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Replies.

/// How the [`Endpoint`] answers one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    /// Wait this long before answering. The request is recorded (and, when the status is
    /// 2xx, counted as delivered) on arrival, as for a real endpoint whose reply is lost.
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
            body: Vec::new(),
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

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// Chooses a reply from the request (method, path, headers, body, index); set with
/// [`Endpoint::with_responder`] or [`Endpoint::set_responder`]. Takes precedence over the
/// script.
pub type Responder = Box<dyn FnMut(&Recorded) -> Reply + Send>;

// ---------------------------------------------------------------------------------------------
// What the endpoint saw.

/// One request as the endpoint received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// 0 for the first request the endpoint got, then 1, 2...
    pub index: usize,
    pub method: String,
    /// Path and query, e.g. `/hook?x=1`.
    pub path: String,
    /// Every header value in arrival order; names are lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Ids of the events in the body (see [`event_ids`]).
    pub ids: Vec<u64>,
    /// Events in the body whose `userKey` has no numeric tail.
    pub foreign: usize,
    /// When the request head arrived.
    pub at: Instant,
    /// The status the endpoint answered with (0 while the responder chooses it).
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

    /// Whether the body holds `needle` (bytes, no decoding).
    pub fn contains(&self, needle: &str) -> bool {
        memchr::memmem::find(&self.body, needle.as_bytes()).is_some()
    }

    /// Events in the body that have a `userKey` (numeric or not), without parsing it.
    pub fn event_count(&self) -> usize {
        self.ids.len() + self.foreign
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

/// Events of every 2xx-answered request, concatenated in arrival order.
pub fn delivered_events(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.is_success())
        .flat_map(|r| r.events())
        .collect()
}

/// The ids of the events in a webhook body (`"userKey":"...<digits>"`), in order, and how
/// many events had a `userKey` without a numeric tail.
pub fn event_ids(body: &[u8]) -> (Vec<u64>, usize) {
    const KEY: &[u8] = br#""userKey":""#;
    // One searcher per body: building one per event cost a sixth of the CPU time of the
    // million-event outage test.
    let finder = memchr::memmem::Finder::new(KEY);
    let mut ids = Vec::new();
    let mut foreign = 0;
    let mut rest = body;
    while let Some(at) = finder.find(rest) {
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

/// What the [`Endpoint`] counted so far, by event id (kept even when it keeps no requests).
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

    fn record(&mut self, request: &Recorded) {
        self.max_batch = self.max_batch.max(request.event_count());
        if !request.is_success() {
            self.failed_requests += 1;
            return;
        }
        self.ok_requests += 1;
        for &id in &request.ids {
            let id = id as usize;
            if id >= self.counts.len() {
                self.counts.resize(id + 1, 0);
            }
            self.counts[id] += 1;
        }
        self.delivered += request.event_count() as u64;
        self.foreign_delivered += request.foreign as u64;
    }
}

// ---------------------------------------------------------------------------------------------
// The endpoint.

struct State {
    /// Every request in arrival order, unless the endpoint only counts.
    requests: Vec<Recorded>,
    keep_requests: bool,
    tally: Tally,
    script: VecDeque<Reply>,
    default: Reply,
    responder: Option<Responder>,
    received: usize,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// A real HTTP/1 webhook endpoint on loopback (see the module doc).
pub struct Endpoint {
    addr: SocketAddr,
    shared: Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// An endpoint that answers 200 to everything.
    pub fn start() -> Self {
        Self::scripted(Vec::new(), Reply::ok())
    }

    /// An endpoint that answers with `script` in order, then with `default` forever.
    pub fn scripted(script: Vec<Reply>, default: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test endpoint");
        Self::serve(listener, script.into(), default, None)
    }

    /// An endpoint whose every reply is chosen by `responder` from the request.
    pub fn with_responder(responder: impl FnMut(&Recorded) -> Reply + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test endpoint");
        Self::on(listener, responder)
    }

    /// An endpoint that answers `failure` while `up` is false, and 200 once it is true.
    pub fn up_when(up: &Arc<AtomicBool>, failure: Reply) -> Self {
        let up = up.clone();
        Self::with_responder(move |_| match up.load(Ordering::SeqCst) {
            true => Reply::ok(),
            false => failure.clone(),
        })
    }

    /// An endpoint on `listener` (e.g. a [`ClosedPort`] just opened) answering with
    /// `responder`.
    pub fn on(
        listener: TcpListener,
        responder: impl FnMut(&Recorded) -> Reply + Send + 'static,
    ) -> Self {
        Self::serve(
            listener,
            VecDeque::new(),
            Reply::ok(),
            Some(Box::new(responder)),
        )
    }

    fn serve(
        listener: TcpListener,
        script: VecDeque<Reply>,
        default: Reply,
        responder: Option<Responder>,
    ) -> Self {
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared: Shared = Arc::new((
            Mutex::new(State {
                requests: Vec::new(),
                keep_requests: true,
                tally: Tally::default(),
                script,
                default,
                responder,
                received: 0,
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
        Endpoint {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Keeps only the [`Tally`], not the requests: for tests of hundreds of thousands of
    /// events, whose bodies would fill the test's memory.
    pub fn count_only(self) -> Self {
        self.shared.0.lock().unwrap().keep_requests = false;
        self
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

    pub fn set_responder(&self, responder: impl FnMut(&Recorded) -> Reply + Send + 'static) {
        self.shared.0.lock().unwrap().responder = Some(Box::new(responder));
    }

    /// A snapshot of every request so far, in arrival order.
    #[track_caller]
    pub fn requests(&self) -> Vec<Recorded> {
        self.assert_keeps_requests();
        self.shared.0.lock().unwrap().requests.clone()
    }

    /// Panics (without poisoning the lock) when the endpoint keeps counts only.
    #[track_caller]
    fn assert_keeps_requests(&self) {
        let keeps = self.shared.0.lock().unwrap().keep_requests;
        assert!(keeps, "this endpoint keeps counts only");
    }

    /// Reads the tally under the lock.
    pub fn with<R>(&self, f: impl FnOnce(&Tally) -> R) -> R {
        f(&self.shared.0.lock().unwrap().tally)
    }

    /// Waits until `pred` holds over the tally (true) or `timeout` passes (false).
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&Tally) -> bool) -> bool {
        self.wait(timeout, |state| pred(&state.tally)).is_some()
    }

    /// Waits until `pred` holds over the requests (or `timeout` passes) and returns them.
    #[track_caller]
    pub fn wait_requests(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        self.assert_keeps_requests();
        let _ = self.wait(timeout, |state| pred(&state.requests));
        self.requests()
    }

    /// Waits for at least `n` requests.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait_requests(timeout, |r| r.len() >= n)
    }

    /// Waits until 2xx-answered requests carry at least `n` events in total.
    pub fn wait_for_delivered(&self, n: usize, timeout: Duration) -> Vec<String> {
        self.wait_requests(timeout, |r| delivered_events(r).len() >= n);
        self.delivered()
    }

    /// Events of every 2xx-answered request, concatenated in arrival order.
    pub fn delivered(&self) -> Vec<String> {
        delivered_events(&self.requests())
    }

    /// Waits until `pred` holds over the state; None when `timeout` passed first.
    fn wait(&self, timeout: Duration, pred: impl Fn(&State) -> bool) -> Option<()> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.shared;
        let mut state = lock.lock().unwrap();
        loop {
            if pred(&state) {
                return Some(());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            state = cvar.wait_timeout(state, deadline - now).unwrap().0;
        }
    }
}

impl Drop for Endpoint {
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
    for connection in 0.. {
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
            let service = service_fn(move |req| handle(req, shared.clone(), connection));
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
    let (ids, foreign) = event_ids(&body);
    let reply = {
        let (lock, cvar) = &*shared;
        let mut state = lock.lock().unwrap();
        let mut recorded = Recorded {
            index: state.received,
            method,
            path,
            headers,
            body,
            ids,
            foreign,
            at,
            status: 0,
            connection,
        };
        state.received += 1;
        let state = &mut *state;
        let reply = match &mut state.responder {
            Some(responder) => responder(&recorded),
            None => state
                .script
                .pop_front()
                .unwrap_or_else(|| state.default.clone()),
        };
        recorded.status = reply.status;
        state.tally.record(&recorded);
        if state.keep_requests {
            state.requests.push(recorded);
        }
        cvar.notify_all();
        reply
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
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
