//! Issue 11: the acknowledged sources under SIGKILL. A client that sends again whatever
//! flaghook did not acknowledge (a Forward client waiting for `{"ack": chunk}`, as Fluent
//! Bit's `forward` output with `Require_ack_response`; an HTTP client that retries every
//! answer but a 2xx, as Vector's `http` sink) sends while flaghook is killed 5 times and
//! restarted on the same data_dir. Every event acknowledged must arrive at least once: an
//! ack means the event is in the journal, on the disk. Without the journal (lines held in
//! the sinks' memory when acknowledged), a kill loses the acknowledged events the endpoint
//! had not yet taken, which the flaky endpoint (slow and failing answers) keeps many of.
//!
//! The random choices come from one seed, printed at the start; set `FLAGHOOK_TEST_SEED`
//! to replay a run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rmpv::Value;

use crate::crash::{flaky_endpoint, seed};
use crate::harness::*;

const EVENTS: u64 = 100_000;
const KILLS: u64 = 5;
const BATCH: u64 = 1_000;
/// Events in one Forward entry, or one HTTP body: what a client sends again when it got no
/// acknowledgement.
const ENTRY: u64 = 250;
/// The client's pause after each acknowledged entry: it sends for longer than the kills take.
const PAUSE: Duration = Duration::from_millis(10);
/// The longest the client waits for an answer before it sends again.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// The client's pause before it sends again (connect refused, no answer, not a 2xx).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What a client reports: events acknowledged (entries are acknowledged in order, so these
/// are ids `0..acked`), and entries it sent again.
#[derive(Default)]
struct Progress {
    acked: AtomicU64,
    resent: AtomicU64,
}

/// How a client hands one entry over: `Ok` once flaghook acknowledged it.
type SendEntry = fn(&str, &mut Option<TcpStream>, u64) -> Result<(), String>;

/// Sends entries `0..EVENTS / ENTRY` in order, each again until it is acknowledged.
fn client(address: String, progress: Arc<Progress>, send: SendEntry) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut conn = None;
    let mut entry = 0;
    while entry < EVENTS / ENTRY {
        assert!(Instant::now() < deadline, "the client never finished");
        match send(&address, &mut conn, entry) {
            Ok(()) => {
                entry += 1;
                progress.acked.store(entry * ENTRY, Ordering::SeqCst);
                std::thread::sleep(PAUSE);
            }
            Err(_) => {
                conn = None;
                progress.resent.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
}

fn open(address: &str, conn: &mut Option<TcpStream>) -> Result<(), String> {
    if conn.is_none() {
        let stream = TcpStream::connect(address).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
        stream.set_write_timeout(Some(ANSWER_WAIT)).unwrap();
        *conn = Some(stream);
    }
    Ok(())
}

fn ids(entry: u64) -> std::ops::Range<u64> {
    entry * ENTRY..(entry + 1) * ENTRY
}

/// One Forward mode entry `["goff", [[time, record], ...], {"chunk": ...}]`, then its ack.
fn send_forward(address: &str, conn: &mut Option<TcpStream>, entry: u64) -> Result<(), String> {
    open(address, conn)?;
    let stream = conn.as_mut().expect("opened");
    let records = ids(entry)
        .map(|id| {
            let record = Value::Map(vec![
                ("kind".into(), "feature".into()),
                ("key".into(), "k".into()),
                ("userKey".into(), format!("u{id}").into()),
                ("creationDate".into(), 1_700_000_000.into()),
            ]);
            Value::Array(vec![1_700_000_000.into(), record])
        })
        .collect();
    let chunk = format!("entry-{entry}");
    let frame = Value::Array(vec![
        "goff".into(),
        Value::Array(records),
        Value::Map(vec![("chunk".into(), chunk.as_str().into())]),
    ]);
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &frame).unwrap();
    stream.write_all(&bytes).map_err(|e| e.to_string())?;
    let answer = rmpv::decode::read_value(stream).map_err(|e| e.to_string())?;
    let ack = Value::Map(vec![("ack".into(), chunk.as_str().into())]);
    if answer != ack {
        panic!("flaghook answered {answer} to {chunk}");
    }
    Ok(())
}

/// One NDJSON body, POSTed on a connection of its own; `Ok` on a 2xx.
fn send_http(address: &str, conn: &mut Option<TcpStream>, entry: u64) -> Result<(), String> {
    open(address, conn)?;
    let mut stream = conn.take().expect("opened");
    let body = small_lines(ids(entry));
    let head = format!(
        "POST / HTTP/1.1\r\nHost: flaghook\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    match answer.split(' ').nth(1) {
        Some(status) if status.starts_with('2') => Ok(()),
        _ => Err(format!("answered {answer:?}")),
    }
}

/// The kill loop around `client` on a pipeline from `source` (a `[sources.in]` table's
/// keys, `ADDRESS` standing for its address).
fn kill_loop(source: &str, send: SendEntry) {
    let seed = seed();
    println!("seed {seed} (FLAGHOOK_TEST_SEED={seed} replays this run)");
    let mut rng = StdRng::seed_from_u64(seed);
    let hook = flaky_endpoint(seed.wrapping_add(1));
    let ws = Workspace::new();
    let address = format!("127.0.0.1:{}", free_port());
    let config = ws.config(&format!(
        r#"[sources.in]
{source}

[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = {url}
flush_interval = "100ms"
max_event_in_memory = {BATCH}
timeout = "5s"
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms"
shutdown_timeout = "2s"
"#,
        source = source.replace("ADDRESS", &address),
        url = toml_str(hook.url()),
    ));
    let progress = Arc::new(Progress::default());
    let client = {
        let (address, progress) = (address.clone(), progress.clone());
        std::thread::spawn(move || client(address, progress, send))
    };
    for n in 1..=KILLS {
        let proc = Proc::spawn(run_cmd(&config));
        let after = Duration::from_millis(rng.gen_range(300..1500));
        std::thread::sleep(after);
        let acked = progress.acked.load(Ordering::SeqCst);
        proc.sigkill();
        let out = proc.wait_timeout(Duration::from_secs(10));
        assert_eq!(
            out.code, None,
            "flaghook exited by itself before kill {n}:\n{out}"
        );
        println!(
            "kill {n} after {after:?}: {acked} events acknowledged, {} distinct delivered",
            hook.with(|t| t.distinct())
        );
    }

    let proc = Proc::spawn(run_cmd(&config));
    client.join().expect("the client finished");
    let acked = progress.acked.load(Ordering::SeqCst);
    assert_eq!(
        acked, EVENTS,
        "the client finished with every event acknowledged"
    );
    let complete = hook.wait_until(Duration::from_secs(60), |t| t.has_all(EVENTS));
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    hook.with(|t| {
        let lost = t.missing(EVENTS);
        println!(
            "{KILLS} kills: {} entries sent again, {} duplicate deliveries; {} requests answered 2xx, {} failed",
            progress.resent.load(Ordering::SeqCst),
            t.duplicates(),
            t.ok_requests,
            t.failed_requests
        );
        assert!(
            complete && lost.is_empty(),
            "{} acknowledged events never arrived (first: {:?}); seed {seed}\n{out}",
            lost.len(),
            lost.first()
        );
        // A kill costs at most the batch in flight, and the entry whose ack it cut off.
        let bound = KILLS * (BATCH + ENTRY);
        assert!(
            t.duplicates() <= bound,
            "{} duplicates after {KILLS} kills: more than a batch and an entry per kill; seed {seed}",
            t.duplicates()
        );
        assert_eq!(t.foreign_delivered, 0, "events that were never sent arrived");
    });
    assert_eq!(out.summary_value("journal_bytes"), 0, "{out}");
    // A kill in the middle of a journal write may tear its last line (an entry that was
    // not acknowledged): dead-lettered, nothing else.
    for letter in dead_letters(&ws.data_dir(), "webhook") {
        assert!(
            letter["reason"].as_str().unwrap().contains("crash"),
            "{letter}"
        );
    }
}

#[test]
fn sigkill_loop_with_a_forward_client_delivers_every_acknowledged_event() {
    kill_loop("type = \"fluent\"\naddress = \"ADDRESS\"", send_forward);
}

#[test]
fn sigkill_loop_with_an_http_client_delivers_every_event_answered_200() {
    kill_loop("type = \"http\"\naddress = \"ADDRESS\"", send_http);
}
