//! The TCP source's connections under hostile or careless peers: sockets that connect and
//! send nothing must not hold `max_connections` slots for ever, while a connection that
//! flaghook itself stops reading (back-pressure) is never taken for an idle one.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A TCP source `tcp` (with `source_extra`) on a free port feeding sink `webhook` (with
/// `sink_extra`); returns (config, address).
fn tcp_pipeline(
    ws: &Workspace,
    url: &str,
    source_extra: &str,
    sink_extra: &str,
) -> (PathBuf, String) {
    ws.tcp_pipeline(
        url,
        source_extra,
        &format!("flush_interval = \"100ms\"\n{sink_extra}"),
    )
}

/// Whether flaghook closed `conn`: a read returns 0 (or the connection was reset) within
/// `within`; false when it is still open.
fn closed_by_flaghook(conn: &mut TcpStream, within: Duration) -> bool {
    conn.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("flaghook never writes to a TCP shipper, got {n} bytes"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) => panic!("read failed: {e}"),
    }
}

/// Regression: four sockets that connected and sent nothing held every slot of
/// `max_connections = 4`, and a real shipper waited in the listen backlog for ever. Now
/// the one idle longest is closed to serve it (`idle_timeout` left at its 5 minutes).
#[test]
fn idle_connections_holding_every_slot_do_not_lock_out_a_shipper() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = tcp_pipeline(&ws, &hook.url(), "max_connections = 4", "");
    let proc = Proc::spawn(run_cmd(&config));
    let mut idle: Vec<TcpStream> = (0..4).map(|_| connect(&addr, &proc)).collect();

    let mut shipper = connect(&addr, &proc);
    shipper.write_all(small_lines(0..10).as_bytes()).unwrap();
    drop(shipper);
    let delivered = hook.wait_until(WAIT, |t| t.has_all(10));
    let closed: Vec<bool> = idle
        .iter_mut()
        .map(|c| closed_by_flaghook(c, Duration::from_millis(300)))
        .collect();
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    assert!(
        delivered,
        "the shipper was not served while idle sockets held every slot:\n{out}"
    );
    assert_eq!(
        closed.iter().filter(|c| **c).count(),
        1,
        "one idle connection closed for one new one: {closed:?}\n{out}"
    );
    assert!(
        out.stderr.contains("idle the longest, to serve a new one"),
        "{out}"
    );
    assert_eq!(hook.with(|t| t.duplicates()), 0);
}

#[test]
fn a_silent_connection_is_closed_after_idle_timeout_and_an_active_one_is_not() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = tcp_pipeline(&ws, &hook.url(), "idle_timeout = \"1s\"", "");
    let proc = Proc::spawn(run_cmd(&config));
    let mut silent = connect(&addr, &proc);
    let silent_peer = silent.local_addr().unwrap().to_string();
    let mut active = connect(&addr, &proc);
    // A line every 100 ms for 2.5 s, the first one split across two writes: a partial line
    // is not silence.
    let events = small_lines(0..25);
    let (head, tail) = events.split_at(30);
    active.write_all(head.as_bytes()).unwrap();
    for line in tail.split_inclusive('\n') {
        std::thread::sleep(Duration::from_millis(100));
        active.write_all(line.as_bytes()).unwrap();
    }
    let silent_closed = closed_by_flaghook(&mut silent, WAIT);
    let active_closed = closed_by_flaghook(&mut active, Duration::from_millis(200));
    drop(active);
    let delivered = hook.wait_until(WAIT, |t| t.has_all(25));
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    assert!(
        silent_closed,
        "the silent connection was not closed:\n{out}"
    );
    assert!(!active_closed, "the active connection was closed:\n{out}");
    assert!(delivered, "{out}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("nothing received for 1s") && l.contains(&silent_peer)),
        "the idle close was not logged with its peer {silent_peer}:\n{out}"
    );
}

/// flaghook stops reading a connection while its sinks are full: the shipper is not idle
/// (its bytes wait in the socket), so `idle_timeout` must not close it and drop them.
#[test]
fn a_connection_held_by_back_pressure_is_not_closed_as_idle() {
    const BURST: u64 = 5000;
    let start = Instant::now();
    let refuse_for = Duration::from_secs(3);
    let hook = Endpoint::with_responder(move |_| {
        if start.elapsed() < refuse_for {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    });
    let ws = Workspace::new();
    let (config, addr) = tcp_pipeline(
        &ws,
        &hook.url(),
        "idle_timeout = \"1s\"",
        "max_event_in_memory = 100\nbuffer_max_events = 200\nretry_initial_backoff = \"50ms\"\nretry_max_backoff = \"200ms\"",
    );
    let proc = Proc::spawn(run_cmd(&config));
    let mut shipper = connect(&addr, &proc);
    // More than flaghook reads at once (128 KiB) and far more than its sinks hold: most of
    // it waits in the socket while the endpoint refuses.
    shipper.write_all(small_lines(0..BURST).as_bytes()).unwrap();
    // Then a line every 200 ms until the burst is delivered, so that the connection is
    // never idle from the shipper's side.
    let mut sent = BURST;
    let deadline = Instant::now() + WAIT;
    while !hook.with(|t| t.has_all(BURST)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        shipper
            .write_all(small_lines(sent..sent + 1).as_bytes())
            .unwrap();
        sent += 1;
    }
    let closed = closed_by_flaghook(&mut shipper, Duration::from_millis(200));
    drop(shipper);
    let delivered = hook.wait_until(WAIT, |t| t.has_all(sent));
    proc.sigterm();
    let out = proc.wait_timeout(Duration::from_secs(20));
    out.assert_code(0);
    assert!(
        hook.with(|t| t.failed_requests > 0),
        "the endpoint never refused: no back-pressure was tested"
    );
    assert!(!closed, "the connection was closed:\n{out}");
    assert!(!out.stderr.contains("idle_timeout"), "{out}");
    assert!(
        delivered,
        "missing: {:?}\n{out}",
        hook.with(|t| t.missing(sent))
    );
}
