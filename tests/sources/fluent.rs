//! The `fluent` source: the Forward protocol over real loopback sockets, with frames this
//! test builds from the specification (all four event modes, EventTime, gzip members), the
//! `shared_key` handshake, acknowledgements withheld while the journal is full, and streams
//! that are not the Forward protocol. Real clients nobody here wrote are in `peers_fluent.rs`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use rmpv::Value;
use sha2::{Digest, Sha512};

use crate::harness::*;

/// A `fluent` source `fwd` (with `source_extra`) on a free port feeding sink `webhook`
/// (with `sink_extra`); returns (config, address).
pub fn fluent_pipeline(
    ws: &Workspace,
    url: &str,
    source_extra: &str,
    sink_extra: &str,
) -> (PathBuf, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let config = ws.config(&format!(
        r#"[sources.fwd]
type = "fluent"
address = "{addr}"
{source_extra}

[sinks.webhook]
type = "webhook"
inputs = ["fwd"]
endpoint_url = {url}
flush_interval = "100ms"
{sink_extra}
"#,
        url = toml_str(url)
    ));
    (config, addr)
}

pub fn mp(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).unwrap();
    out
}

pub fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// EventTime: ext type 0, seconds and nanoseconds as two big-endian u32.
fn event_time(secs: u32, nanos: u32) -> Value {
    let mut data = secs.to_be_bytes().to_vec();
    data.extend_from_slice(&nanos.to_be_bytes());
    Value::Ext(0, data)
}

/// `small_event(id)` as a msgpack record (what Fluent Bit's `Parser json` makes of it).
pub fn record(id: u64) -> Value {
    map(vec![
        ("kind", "feature".into()),
        ("key", "k".into()),
        ("userKey", format!("u{id}").into()),
        ("creationDate", 1_700_000_000.into()),
    ])
}

fn entries(ids: std::ops::Range<u64>) -> Vec<u8> {
    ids.map(|id| {
        mp(&Value::Array(vec![
            event_time(1_700_000_000, 5),
            record(id),
        ]))
    })
    .collect::<Vec<_>>()
    .concat()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Reads one msgpack value from `conn` (within `WAIT`).
pub fn read_value(conn: &mut TcpStream) -> Value {
    conn.set_read_timeout(Some(WAIT)).unwrap();
    rmpv::decode::read_value(conn).expect("a msgpack value from flaghook")
}

/// Whether `conn` sends nothing and stays open for `within`.
fn silent_for(conn: &mut TcpStream, within: Duration) -> bool {
    conn.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    match conn.read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => true,
        Ok(n) => panic!("flaghook sent {n} bytes or closed"),
        Err(e) => panic!("read failed: {e}"),
    }
}

/// Whether flaghook closed `conn` within `WAIT` (after sending whatever it sent).
fn closed(conn: &mut TcpStream) -> bool {
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    match conn.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
    }
}

fn ack_of(chunk: &str) -> Value {
    map(vec![("ack", chunk.into())])
}

/// Every event mode of the specification on one connection, each entry with its own chunk
/// id, acknowledged with that id; a heartbeat between them; a record JSON cannot hold
/// dead-lettered while the rest of its entry is delivered.
#[test]
fn the_four_event_modes_are_read_and_acknowledged() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = fluent_pipeline(&ws, &hook.url(), "", "");
    let proc = Proc::spawn(run_once_cmd(&config));
    let mut conn = connect(&addr, &proc);

    let message = Value::Array(vec![
        "goff".into(),
        event_time(1_700_000_000, 1),
        record(0),
        map(vec![("chunk", "c-message".into())]),
    ]);
    let message_int_time = Value::Array(vec!["goff".into(), 1_700_000_000.into(), record(1)]);
    let forward = Value::Array(vec![
        "goff".into(),
        Value::Array(
            (2..5)
                .map(|id| Value::Array(vec![1_700_000_000.into(), record(id)]))
                .collect(),
        ),
        map(vec![("chunk", "c-forward".into())]),
    ]);
    let packed = Value::Array(vec![
        "goff".into(),
        Value::Binary(entries(5..20)),
        map(vec![("chunk", "c-packed".into()), ("size", 15.into())]),
    ]);
    // Two gzip members back to back, as the specification allows.
    let compressed = Value::Array(vec![
        "goff".into(),
        Value::Binary([gzip(&entries(20..30)), gzip(&entries(30..40))].concat()),
        map(vec![
            ("chunk", "c-gzip".into()),
            ("compressed", "gzip".into()),
        ]),
    ]);
    let with_bad_record = Value::Array(vec![
        "goff".into(),
        Value::Array(vec![
            Value::Array(vec![1.into(), record(40)]),
            Value::Array(vec![
                1.into(),
                map(vec![
                    ("kind", "feature".into()),
                    ("at", Value::Ext(7, vec![1])),
                ]),
            ]),
            Value::Array(vec![1.into(), record(41)]),
        ]),
        map(vec![("chunk", "c-bad".into())]),
    ]);

    conn.write_all(&mp(&message)).unwrap();
    assert_eq!(read_value(&mut conn), ack_of("c-message"));
    // No chunk: no acknowledgement (the next value read is the next entry's).
    conn.write_all(&mp(&message_int_time)).unwrap();
    conn.write_all(&mp(&Value::Nil)).unwrap();
    // An entry split over many writes.
    let forward = mp(&forward);
    for piece in forward.chunks(7) {
        conn.write_all(piece).unwrap();
    }
    assert_eq!(read_value(&mut conn), ack_of("c-forward"));
    conn.write_all(&mp(&packed)).unwrap();
    assert_eq!(read_value(&mut conn), ack_of("c-packed"));
    conn.write_all(&mp(&compressed)).unwrap();
    assert_eq!(read_value(&mut conn), ack_of("c-gzip"));
    conn.write_all(&mp(&with_bad_record)).unwrap();
    assert_eq!(read_value(&mut conn), ack_of("c-bad"));
    drop(conn);

    let out = proc.wait();
    out.assert_code(2);
    assert!(hook.with(|t| t.has_all(42)), "{out}");
    assert_eq!(hook.with(|t| t.duplicates()), 0);
    assert_eq!(out.summary().events_rejected, 1, "{out}");
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("record field `at`: an ext value (type 7)"),
        "{reason}"
    );
    assert_eq!(dead[0]["source"], "fwd");
    assert!(dead[0]["line_base64"].is_string(), "{:?}", dead[0]);
}

/// The PING of a client holding `key`, for the HELO flaghook sent.
fn ping(helo: &Value, hostname: &str, key: &str) -> Value {
    let nonce = helo[1]
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_str() == Some("nonce"))
        .and_then(|(_, v)| v.as_slice())
        .expect("HELO carries a nonce")
        .to_vec();
    let salt = b"0123456789abcdef";
    let mut h = Sha512::new();
    h.update(salt);
    h.update(hostname.as_bytes());
    h.update(&nonce);
    h.update(key.as_bytes());
    Value::Array(vec![
        "PING".into(),
        hostname.into(),
        Value::Binary(salt.to_vec()),
        hex::encode(h.finalize()).into(),
        "".into(),
        "".into(),
    ])
}

#[test]
fn shared_key_handshake_accepts_the_right_key_and_refuses_a_wrong_one() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = fluent_pipeline(
        &ws,
        &hook.url(),
        "shared_key = \"${FLUENT_KEY}\"\nself_hostname = \"flaghook-test\"",
        "",
    );
    let proc = Proc::spawn({
        let mut cmd = run_cmd(&config);
        cmd.env("FLUENT_KEY", "correct-horse-battery");
        cmd
    });

    let mut wrong = connect(&addr, &proc);
    let helo = read_value(&mut wrong);
    assert_eq!(helo[0].as_str(), Some("HELO"));
    // An entry sent right behind the PING, before the PONG came back.
    let mut pipelined = mp(&ping(&helo, "intruder", "wrong-staple-key"));
    pipelined.extend(mp(&Value::Array(vec!["t".into(), 1.into(), record(99)])));
    wrong.write_all(&pipelined).unwrap();
    let pong = read_value(&mut wrong);
    assert_eq!(pong[0].as_str(), Some("PONG"));
    assert_eq!(pong[1].as_bool(), Some(false));
    assert_eq!(pong[2].as_str(), Some("shared_key mismatch"));
    assert!(closed(&mut wrong), "a refused client stays connected");

    let mut right = connect(&addr, &proc);
    let helo = read_value(&mut right);
    right
        .write_all(&mp(&ping(&helo, "client-a", "correct-horse-battery")))
        .unwrap();
    let pong = read_value(&mut right);
    assert_eq!(pong[1].as_bool(), Some(true), "{pong}");
    assert_eq!(pong[3].as_str(), Some("flaghook-test"));
    let salt = b"0123456789abcdef";
    let nonce = helo[1].as_map().unwrap()[0].1.as_slice().unwrap().to_vec();
    let mut h = Sha512::new();
    h.update(salt);
    h.update(b"flaghook-test");
    h.update(&nonce);
    h.update(b"correct-horse-battery");
    assert_eq!(
        pong[4].as_str(),
        Some(hex::encode(h.finalize()).as_str()),
        "flaghook proves it holds the key"
    );
    right
        .write_all(&mp(&Value::Array(vec![
            "t".into(),
            1.into(),
            record(1),
            map(vec![("chunk", "c1".into())]),
        ])))
        .unwrap();
    assert_eq!(read_value(&mut right), ack_of("c1"));
    assert!(hook.wait_until(WAIT, |t| t.distinct() >= 1));
    proc.sigterm();
    let out = proc.wait();
    assert_eq!(hook.with(|t| (t.distinct(), t.missing(2))), (1, vec![0]));
    assert!(
        out.stderr
            .contains("refused a Forward client: shared_key mismatch")
            && out.stderr.contains("intruder"),
        "{out}"
    );
    assert!(
        !out.stderr.contains("correct-horse") && !out.stderr.contains("wrong-staple"),
        "a key reached the log:\n{out}"
    );
    // Nothing of the refused client reached the sinks, not even as a dead letter.
    assert_eq!(
        dead_letters(&ws.data_dir(), "webhook"),
        Vec::<serde_json::Value>::new()
    );
}

/// An entry is acknowledged once it is in the journal, not once the sinks took it; while
/// the journal holds `journal_max_bytes` (the endpoint down), the next entry is not
/// acknowledged, and it is once the endpoint is back and delivered segments are deleted.
#[test]
fn acks_are_withheld_while_the_journal_is_full() {
    let hook = Endpoint::scripted(vec![], Reply::status(503));
    let ws = Workspace::new();
    let (config, addr) = fluent_pipeline(
        &ws,
        &hook.url(),
        "journal_segment_bytes = \"4KiB\"\njournal_max_bytes = \"8KiB\"",
        "retry_initial_backoff = \"100ms\"\nretry_max_backoff = \"200ms\"",
    );
    let proc = Proc::spawn(run_cmd(&config));
    let mut conn = connect(&addr, &proc);
    let entry = |ids: std::ops::Range<u64>, chunk: &str| {
        mp(&Value::Array(vec![
            "t".into(),
            Value::Binary(entries(ids)),
            map(vec![("chunk", chunk.into())]),
        ]))
    };
    // About 750 bytes of journal an entry: the cap is reached within a dozen entries,
    // each acknowledged although no sink delivered anything.
    let mut sent = 0;
    let withheld = loop {
        assert!(sent < 40, "every entry acknowledged past journal_max_bytes");
        let chunk = format!("c{sent}");
        conn.write_all(&entry(sent * 10..(sent + 1) * 10, &chunk))
            .unwrap();
        sent += 1;
        conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        match rmpv::decode::read_value(&mut conn) {
            Ok(ack) => assert_eq!(ack, ack_of(&chunk)),
            Err(_) => break chunk,
        }
    };
    assert!(sent > 5, "the journal was full after {sent} entries");
    // Every entry acknowledged is in the journal; the one withheld waits for room.
    let (mut journaled, _) = event_ids(&journal_text(&ws.data_dir(), "fwd"));
    journaled.sort_unstable();
    let acked = (sent - 1) * 10;
    assert_eq!(
        journaled,
        (0..acked).collect::<Vec<_>>(),
        "acknowledged before it was journaled"
    );
    assert!(
        silent_for(&mut conn, Duration::from_secs(1)),
        "acknowledged while the journal was full"
    );
    assert_eq!(hook.with(|t| t.distinct()), 0);
    hook.set_default(Reply::ok());
    assert_eq!(read_value(&mut conn), ack_of(&withheld));
    assert!(hook.wait_until(WAIT, |t| t.has_all(sent * 10)));
    proc.sigterm();
    proc.wait().assert_code(0);
}

/// JSON lines sent to the Forward port, and an entry past `max_entry_bytes`: the
/// connection is closed with the reason logged, and what was read is dead-lettered.
#[test]
fn a_stream_that_is_not_the_forward_protocol_is_closed_with_its_reason() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = fluent_pipeline(&ws, &hook.url(), "max_entry_bytes = 2000", "");
    let proc = Proc::spawn(run_cmd(&config));

    let mut json = connect(&addr, &proc);
    json.write_all(small_lines(0..3).as_bytes()).unwrap();
    assert!(closed(&mut json));

    let mut big = connect(&addr, &proc);
    let huge = Value::Array(vec![
        "t".into(),
        1.into(),
        map(vec![("log", "x".repeat(5000).into())]),
    ]);
    let _ = big.write_all(&mp(&huge));
    assert!(closed(&mut big));

    let out = proc.wait_stderr("max_entry_bytes (2000 bytes)", WAIT);
    assert!(out.is_some(), "{}", proc.stderr_now());
    // The bytes go through the journal: wait until the sink dead-lettered both.
    let deadline = std::time::Instant::now() + WAIT;
    while dead_letters(&ws.data_dir(), "webhook").len() < 2 && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    proc.sigterm();
    let out = proc.wait();
    assert!(
        out.stderr
            .contains("closed the connection: not a Forward protocol entry: an integer"),
        "{out}"
    );
    let dead = dead_letters(&ws.data_dir(), "webhook");
    let reasons: Vec<&str> = dead.iter().filter_map(|d| d["reason"].as_str()).collect();
    assert_eq!(reasons.len(), 2, "{dead:?}");
    assert!(reasons
        .iter()
        .any(|r| r.contains("not a Forward protocol entry")));
    assert!(reasons
        .iter()
        .any(|r| r.contains("larger than max_entry_bytes")));
    assert_eq!(hook.with(|t| t.distinct()), 0);
}

/// `v` as msgpack with every array's header in its `array 32` form (`0xdd` and a 4-byte
/// length), as an encoder with fixed-size headers writes even a 2-element array: the same
/// value as its `fixarray` form.
fn mp_array32(v: &Value) -> Vec<u8> {
    match v {
        Value::Array(items) => {
            let mut out = vec![0xdd];
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            for item in items {
                out.extend(mp_array32(item));
            }
            out
        }
        other => mp(other),
    }
}

/// Regression: a Forward entry's `[time, record]` pairs (and Fluent Bit 2.1's `[time,
/// metadata]` times) were read only as `fixarray`s; written as `array 16` or `array 32`,
/// which msgpack allows for any array, every record of the chunk was dead-lettered ("an
/// array where an entry [time, record] was expected"), and the chunk acknowledged.
#[test]
fn arrays_with_32_bit_headers_are_read_as_arrays() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = fluent_pipeline(&ws, &hook.url(), "", "");
    let proc = Proc::spawn(run_once_cmd(&config));
    let mut conn = connect(&addr, &proc);

    let forward = Value::Array(vec![
        "goff".into(),
        Value::Array(vec![
            Value::Array(vec![1_700_000_000.into(), record(0)]),
            Value::Array(vec![
                Value::Array(vec![event_time(1_700_000_000, 5), map(vec![])]),
                record(1),
            ]),
        ]),
        map(vec![("chunk", "c-array32".into())]),
    ]);
    let packed = Value::Array(vec![
        "goff".into(),
        Value::Binary(
            [
                mp_array32(&Value::Array(vec![1_700_000_000.into(), record(2)])),
                mp_array32(&Value::Array(vec![1_700_000_000.into(), record(3)])),
            ]
            .concat(),
        ),
        map(vec![("chunk", "c-packed32".into())]),
    ]);
    conn.write_all(&mp_array32(&forward)).unwrap();
    assert_eq!(read_value(&mut conn), ack_of("c-array32"));
    conn.write_all(&mp_array32(&packed)).unwrap();
    assert_eq!(read_value(&mut conn), ack_of("c-packed32"));
    drop(conn);

    let out = proc.wait();
    out.assert_code(0);
    assert!(hook.with(|t| t.has_all(4)), "{out}");
    assert!(dead_letters(&ws.data_dir(), "webhook").is_empty());
}

/// Regression: garbage in a PackedForward stream is cut into a "record" per byte (a
/// positive fixint is a whole msgpack value), each dead-lettered with its reason: a 1 MB
/// entry took 300 MB of memory and made a million dead letters, so a 16 MiB one (the
/// default `max_entry_bytes`) could exhaust memory. Past 100 bad records, the rest of an
/// entry's bad records are dead-lettered as one, which says how many; good records on
/// either side are still delivered.
#[test]
fn garbage_in_a_packed_entry_is_dead_lettered_in_bounded_records() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = fluent_pipeline(&ws, &hook.url(), "", "");
    let proc = Proc::spawn(run_once_cmd(&config));
    let mut conn = connect(&addr, &proc);

    let garbage = vec![0x01u8; 20_000];
    let packed = Value::Array(vec![
        "goff".into(),
        Value::Binary([entries(0..3), garbage, entries(3..6)].concat()),
        map(vec![("chunk", "c-garbage".into())]),
    ]);
    conn.write_all(&mp(&packed)).unwrap();
    assert_eq!(read_value(&mut conn), ack_of("c-garbage"));
    drop(conn);

    let out = proc.wait();
    out.assert_code(2);
    assert!(hook.with(|t| t.has_all(6)), "{out}");
    let dead = dead_letters(&ws.data_dir(), "webhook");
    assert_eq!(dead.len(), 101, "{out}");
    assert_eq!(out.summary().events_rejected, 101, "{out}");
    let last = dead[100]["reason"].as_str().unwrap();
    assert!(
        last.starts_with(
            "19900 more bad records in this entry after 100, dead-lettered as one (their 19900 bytes back to back, all kept)"
        ),
        "{last}"
    );
    // The folded records' bytes are kept, as a record's are: one record's worth.
    use base64::Engine;
    let kept = dead[100]["line_base64"].as_str().expect("kept in base64");
    let raw = base64::engine::general_purpose::STANDARD.decode(kept);
    assert_eq!(raw.unwrap(), vec![0x01; 19_900], "{:?}", dead[100]);
}
