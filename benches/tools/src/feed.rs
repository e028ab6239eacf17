//! The peers of flaghook's acknowledged sources: `send-forward` (the `fluent` source, as Fluent
//! Bit's `forward` output with `Require_ack_response On` sends) and `post` (the `http` source, as
//! Vector's `http` sink with newline-delimited framing sends). Both read the events file in
//! pieces of `--records`/`--lines` lines, keep a few pieces in flight, and check every answer:
//! a piece counts as sent only once flaghook acknowledged it, which it does once the piece's
//! lines are in its journal, on the disk.

use crate::client::connect_retrying;
use crate::http::{self, ReadBuf};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long an answer may take (flaghook fsyncs before it answers; a busy disk is slow).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a sender connects and what it sends (`send`, `send-forward`, `post`).
#[derive(clap::Args)]
pub(crate) struct Target {
    /// flaghook's source (host:port)
    #[arg(long)]
    pub(crate) addr: String,
    /// The events file (one event a line, as `gen` writes it)
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// Seconds to keep retrying to connect
    #[arg(long, value_parser = crate::parse_seconds, default_value = "30")]
    pub(crate) connect_timeout: Duration,
    /// Stop retrying as soon as this process (flaghook) has exited
    #[arg(long)]
    pub(crate) pid: Option<u32>,
}

#[derive(clap::Args)]
pub(crate) struct ForwardArgs {
    #[command(flatten)]
    target: Target,
    /// Records per PackedForward entry (chunk)
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    records: u64,
    /// Entries sent and not acknowledged yet, at most
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    in_flight: u64,
    /// The entries' tag
    #[arg(long, default_value = "goff")]
    tag: String,
}

#[derive(clap::Args)]
pub(crate) struct PostArgs {
    #[command(flatten)]
    target: Target,
    /// Lines per request body (newline-delimited JSON)
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    lines: u64,
    /// Connections, each with one request in flight
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    conns: u64,
    /// The source's `path`
    #[arg(long, default_value = "/")]
    path: String,
}

/// The events file, handed out `n` lines at a time (to one or several senders).
struct Pieces {
    reader: BufReader<File>,
    path: PathBuf,
}

impl Pieces {
    fn open(path: &Path) -> Result<Pieces, String> {
        let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Pieces {
            reader: BufReader::with_capacity(1 << 20, f),
            path: path.to_owned(),
        })
    }

    /// The next (up to) `n` lines, each with its newline; empty at the end of the file.
    fn next(&mut self, n: u64, out: &mut Vec<u8>) -> Result<u64, String> {
        out.clear();
        let mut lines = 0;
        while lines < n {
            let read = self
                .reader
                .read_until(b'\n', out)
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
            if read == 0 {
                break;
            }
            if out.last() != Some(&b'\n') {
                out.push(b'\n');
            }
            lines += 1;
        }
        Ok(lines)
    }
}

// ---------------------------------------------------------------------------------------------
// send-forward

/// One PackedForward entry: `[tag, entries, {"chunk": id, "size": n}]`, `entries` a bin of
/// `[EventTime, {"log": line}]` values, as Fluent Bit's tail input without a parser makes them
/// (the line unparsed in `log`, from which flaghook takes the event).
pub(crate) fn packed_forward(tag: &str, lines: &[u8], chunk: &str, time: (u32, u32)) -> Vec<u8> {
    let mut entries = Vec::with_capacity(lines.len() + lines.len() / 8);
    let mut n = 0u32;
    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = std::str::from_utf8(line).expect("gen writes UTF-8");
        write_entry(&mut entries, line, time);
        n += 1;
    }
    let mut out = Vec::with_capacity(entries.len() + 128);
    rmp::encode::write_array_len(&mut out, 3).expect("a Vec takes every write");
    rmp::encode::write_str(&mut out, tag).expect("a Vec takes every write");
    rmp::encode::write_bin(&mut out, &entries).expect("a Vec takes every write");
    rmp::encode::write_map_len(&mut out, 2).expect("a Vec takes every write");
    rmp::encode::write_str(&mut out, "chunk").expect("a Vec takes every write");
    rmp::encode::write_str(&mut out, chunk).expect("a Vec takes every write");
    rmp::encode::write_str(&mut out, "size").expect("a Vec takes every write");
    rmp::encode::write_u32(&mut out, n).expect("a Vec takes every write");
    out
}

/// `[EventTime(secs, nanos), {"log": line}]`; EventTime is msgpack ext type 0 holding the
/// seconds and nanoseconds as two big-endian u32.
fn write_entry(out: &mut Vec<u8>, line: &str, (secs, nanos): (u32, u32)) {
    rmp::encode::write_array_len(out, 2).expect("a Vec takes every write");
    rmp::encode::write_ext_meta(out, 8, 0).expect("a Vec takes every write");
    out.extend_from_slice(&secs.to_be_bytes());
    out.extend_from_slice(&nanos.to_be_bytes());
    rmp::encode::write_map_len(out, 1).expect("a Vec takes every write");
    rmp::encode::write_str(out, "log").expect("a Vec takes every write");
    rmp::encode::write_str(out, line).expect("a Vec takes every write");
}

/// Streams the file as PackedForward entries of `--records` records over one connection,
/// each with a `chunk` id; at most `--in-flight` entries wait for their `{"ack": id}` (which
/// must come in order, with the right id). Closes once every entry is acknowledged.
pub(crate) fn send_forward(args: &ForwardArgs) -> Result<(), String> {
    let addr = &args.target.addr;
    let s = connect_retrying(addr, args.target.connect_timeout, args.target.pid)?;
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).ok();
    let mut acks = s.try_clone().map_err(|e| e.to_string())?;
    let mut out = io::BufWriter::with_capacity(1 << 20, &s);
    let mut pieces = Pieces::open(&args.target.input)?;
    let (mut lines, mut waiting) = (Vec::new(), VecDeque::new());
    let (start, time) = (Instant::now(), event_time());
    let (mut events, mut chunks) = (0u64, 0u64);
    loop {
        let n = pieces.next(args.records, &mut lines)?;
        if n > 0 {
            let chunk = format!("fhbench-{chunks}");
            out.write_all(&packed_forward(&args.tag, &lines, &chunk, time))
                .and_then(|()| out.flush())
                .map_err(|e| format!("write to {addr}: {e}"))?;
            waiting.push_back(chunk);
            (events, chunks) = (events + n, chunks + 1);
        }
        // wait for an ack when the window is full, and for every ack at the end
        while waiting.len() as u64 >= args.in_flight || (n == 0 && !waiting.is_empty()) {
            let expected = waiting.pop_front().expect("not empty");
            read_ack(&mut acks, &expected).map_err(|e| format!("{addr}: {e}"))?;
        }
        if n == 0 {
            break;
        }
    }
    close(&s);
    eprintln!(
        "sent {events} events in {chunks} acknowledged entries in {:.3} s",
        start.elapsed().as_secs_f64()
    );
    println!("events={events}");
    Ok(())
}

/// The time the records carry: now.
fn event_time() -> (u32, u32) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (now.as_secs() as u32, now.subsec_nanos())
}

/// Reads one answer and checks it is `{"ack": expected}`.
fn read_ack(conn: &mut TcpStream, expected: &str) -> Result<(), String> {
    let answer =
        rmpv::decode::read_value(conn).map_err(|e| format!("no ack for chunk {expected}: {e}"))?;
    let ack = answer.as_map().and_then(|m| {
        m.iter()
            .find(|(k, _)| k.as_str() == Some("ack"))
            .and_then(|(_, v)| v.as_str())
    });
    match ack {
        Some(id) if id == expected => Ok(()),
        _ => Err(format!("expected {{\"ack\": {expected:?}}}, got {answer}")),
    }
}

/// Closes our side, then waits (bounded) for flaghook to close its side, so that nothing is
/// reset.
fn close(s: &TcpStream) {
    let _ = s.shutdown(Shutdown::Write);
    let mut s = s;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let _ = io::Read::read(&mut s, &mut [0u8; 64]);
}

// ---------------------------------------------------------------------------------------------
// post

/// POSTs the file as newline-delimited JSON bodies of `--lines` lines over `--conns` keep-alive
/// connections (one request in flight on each); every answer must be 200 with every line
/// accepted. The connections close together once all are done: with `--once`, flaghook ends
/// when its connections have all closed, so none may close while another is still to come.
pub(crate) fn post(args: &PostArgs) -> Result<(), String> {
    let pieces = Arc::new(Mutex::new(Pieces::open(&args.target.input)?));
    let done = Arc::new(Barrier::new(args.conns as usize));
    let start = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..args.conns {
        let s = connect_retrying(
            &args.target.addr,
            args.target.connect_timeout,
            args.target.pid,
        )?;
        conns.push(s);
    }
    let handles: Vec<_> = conns
        .into_iter()
        .map(|s| {
            let (pieces, done) = (pieces.clone(), done.clone());
            let (addr, path, lines) = (args.target.addr.clone(), args.path.clone(), args.lines);
            thread::spawn(move || {
                let sent = post_pieces(&s, &addr, &path, lines, &pieces);
                done.wait();
                close(&s);
                sent
            })
        })
        .collect();
    let mut events = 0;
    let mut requests = 0;
    for h in handles {
        let (e, r) = h
            .join()
            .map_err(|_| "a post thread panicked".to_string())??;
        (events, requests) = (events + e, requests + r);
    }
    eprintln!(
        "posted {events} events in {requests} requests in {:.3} s",
        start.elapsed().as_secs_f64()
    );
    println!("events={events}");
    Ok(())
}

/// Posts pieces of the file on one connection until the file is done; (events, requests).
fn post_pieces(
    s: &TcpStream,
    addr: &str,
    path: &str,
    lines: u64,
    pieces: &Mutex<Pieces>,
) -> Result<(u64, u64), String> {
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).ok();
    let (mut body, mut rb) = (Vec::new(), ReadBuf::new(64 * 1024));
    let (mut events, mut requests) = (0, 0);
    loop {
        let n = pieces
            .lock()
            .expect("no panic holds it")
            .next(lines, &mut body)?;
        if n == 0 {
            return Ok((events, requests));
        }
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let mut w = s;
        w.write_all(head.as_bytes())
            .and_then(|()| w.write_all(&body))
            .map_err(|e| format!("write to {addr}: {e}"))?;
        let (status, answer) =
            http::read_response(&mut w, &mut rb).map_err(|e| format!("{addr}: {e}"))?;
        check_taken(status, &answer, n)?;
        (events, requests) = (events + n, requests + 1);
    }
}

/// A 200 whose `{"accepted": N, "rejected": 0}` counts every line sent.
fn check_taken(status: u16, answer: &[u8], sent: u64) -> Result<(), String> {
    let text = String::from_utf8_lossy(answer);
    if status != 200 {
        return Err(format!(
            "status {status} for a body of {sent} lines: {text}"
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(answer).map_err(|e| format!("answer {text:?}: {e}"))?;
    if v["accepted"].as_u64() != Some(sent) || v["rejected"].as_u64() != Some(0) {
        return Err(format!("sent {sent} lines, the answer is {text}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;
    use std::io::Read;
    use std::net::TcpListener;

    /// A file of `n` small events; its path.
    fn events_file(dir: &str, n: u64) -> (PathBuf, Vec<String>) {
        let dir = std::env::temp_dir().join(format!("fhbench-feed-{dir}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let lines: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"kind":"feature","key":"k","userKey":"u{i}","s":"\"é\n"}}"#))
            .collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        (path, lines)
    }

    fn target(addr: String, input: PathBuf) -> Target {
        Target {
            addr,
            input,
            connect_timeout: Duration::from_secs(5),
            pid: None,
        }
    }

    /// What `forward_server` received: each record's `log`, and each entry's record count.
    type Received = (Vec<String>, Vec<u64>);

    /// A Forward server on loopback that decodes each entry with rmpv (not the encoder under
    /// test), acks it, and returns the `log` of every record and the entries' record counts.
    fn forward_server() -> (String, thread::JoinHandle<Received>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = thread::spawn(move || {
            let (mut conn, _) = l.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let (mut logs, mut sizes) = (Vec::new(), Vec::new());
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            while !reader.fill_buf().unwrap().is_empty() {
                let entry = rmpv::decode::read_value(&mut reader).unwrap();
                let [tag, Value::Binary(packed), Value::Map(options)] =
                    entry.as_array().unwrap().as_slice()
                else {
                    panic!("not a PackedForward entry: {entry}")
                };
                assert_eq!(tag.as_str(), Some("goff"));
                let option = |k: &str| options.iter().find(|(o, _)| o.as_str() == Some(k));
                let chunk = option("chunk").unwrap().1.clone();
                let mut rest = packed.as_slice();
                let mut records = 0;
                while !rest.is_empty() {
                    let record = rmpv::decode::read_value(&mut rest).unwrap();
                    let [Value::Ext(0, time), Value::Map(fields)] =
                        record.as_array().unwrap().as_slice()
                    else {
                        panic!("not [EventTime, map]: {record}")
                    };
                    assert_eq!(time.len(), 8);
                    assert_eq!(fields.len(), 1);
                    assert_eq!(fields[0].0.as_str(), Some("log"));
                    logs.push(fields[0].1.as_str().unwrap().to_owned());
                    records += 1;
                }
                assert_eq!(option("size").unwrap().1.as_u64(), Some(records));
                sizes.push(records);
                let ack = Value::Map(vec![("ack".into(), chunk)]);
                rmpv::encode::write_value(&mut conn, &ack).unwrap();
            }
            (logs, sizes)
        });
        (addr, h)
    }

    #[test]
    fn send_forward_sends_every_line_in_acknowledged_packed_forward_entries() {
        let (input, lines) = events_file("forward", 2500);
        let (addr, server) = forward_server();
        send_forward(&ForwardArgs {
            target: target(addr, input),
            records: 1000,
            in_flight: 2,
            tag: "goff".into(),
        })
        .unwrap();
        let (logs, sizes) = server.join().unwrap();
        assert_eq!(logs, lines);
        assert_eq!(sizes, [1000, 1000, 500]);
    }

    #[test]
    fn send_forward_fails_on_a_wrong_ack() {
        let (input, _) = events_file("wrong-ack", 10);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = thread::spawn(move || {
            let (mut conn, _) = l.accept().unwrap();
            let _entry = rmpv::decode::read_value(&mut conn).unwrap();
            let ack = Value::Map(vec![("ack".into(), "another".into())]);
            rmpv::encode::write_value(&mut conn, &ack).unwrap();
        });
        let err = send_forward(&ForwardArgs {
            target: target(addr, input),
            records: 1000,
            in_flight: 4,
            tag: "goff".into(),
        })
        .unwrap_err();
        assert!(err.contains("expected {\"ack\": \"fhbench-0\"}"), "{err}");
        server.join().unwrap();
    }

    /// An HTTP server on loopback serving `conns` connections, each on a thread; answers each
    /// body with `answer(lines)`; returns every line received.
    fn http_server(
        conns: usize,
        answer: fn(usize) -> (u16, String),
    ) -> (String, thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = thread::spawn(move || {
            let serving: Vec<_> = (0..conns)
                .map(|_| {
                    let (conn, _) = l.accept().unwrap();
                    thread::spawn(move || serve(conn, answer))
                })
                .collect();
            serving
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        (addr, h)
    }

    fn serve(mut conn: TcpStream, answer: fn(usize) -> (u16, String)) -> Vec<String> {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut rb, mut got) = (ReadBuf::new(1024), Vec::new());
        while let Some(head_len) = http::fill_head(&mut conn, &mut rb).unwrap() {
            let head = http::parse_head(&rb.take(head_len)[..head_len - 4]).unwrap();
            assert_eq!((head.method.as_str(), head.path.as_str()), ("POST", "/in"));
            let len = head.content_length.unwrap();
            assert!(http::read_sized_body(&mut conn, &mut rb, len, |_| {}).unwrap());
            let body = String::from_utf8(rb.take(len).to_vec()).unwrap();
            let lines: Vec<String> = body.lines().map(str::to_owned).collect();
            let (status, text) = answer(lines.len());
            got.extend(lines);
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            );
            conn.write_all(response.as_bytes()).unwrap();
        }
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        got
    }

    #[test]
    fn post_sends_every_line_once_in_bodies_of_lines() {
        let (input, lines) = events_file("post", 2500);
        let (addr, server) = http_server(2, |n| {
            assert!(n <= 1000, "a body of {n} lines");
            (200, format!(r#"{{"accepted":{n},"rejected":0}}"#))
        });
        post(&PostArgs {
            target: target(addr, input),
            lines: 1000,
            conns: 2,
            path: "/in".into(),
        })
        .unwrap();
        let mut got = server.join().unwrap();
        let mut want = lines;
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn post_fails_when_lines_are_rejected_or_refused() {
        for (answer, want) in [
            (
                (|n| (200, format!(r#"{{"accepted":{},"rejected":1}}"#, n - 1)))
                    as fn(usize) -> (u16, String),
                "the answer is",
            ),
            (|_| (503, "full".to_owned()), "status 503"),
        ] {
            let (input, _) = events_file("post-refused", 10);
            let (addr, server) = http_server(1, answer);
            let err = post(&PostArgs {
                target: target(addr, input),
                lines: 1000,
                conns: 1,
                path: "/in".into(),
            })
            .unwrap_err();
            assert!(err.contains(want), "{err}");
            server.join().unwrap();
        }
    }
}
