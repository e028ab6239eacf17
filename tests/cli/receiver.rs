//! `flaghook receive` left running against hostile or broken clients: bodies over
//! `--max-body`, headers or bodies that trickle in, more connections than it may hold,
//! and running out of file descriptors. Each test drives the real binary over loopback.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;
use serde_json::{json, Value};

/// Starts `flaghook receive` on a free port with `args`; returns it and its address.
fn start_receiver(args: &[&str]) -> (Proc, String) {
    start_receiver_with(flaghook(
        &[&["receive", "--listen", "127.0.0.1:0"], args].concat(),
    ))
}

fn start_receiver_with(cmd: std::process::Command) -> (Proc, String) {
    let proc = Proc::spawn(cmd);
    let stderr = proc
        .wait_stderr("listening on ", WAIT)
        .unwrap_or_else(|| panic!("receiver never listened:\n{}", proc.stderr_now()));
    let addr = stderr
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "bad listen line:\n{stderr}");
    (proc, addr)
}

fn next_json_line(proc: &Proc) -> Value {
    let line = proc
        .next_line(WAIT)
        .unwrap_or_else(|| panic!("receiver printed nothing:\n{}", proc.stderr_now()));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

/// Reads until the end of the response head (or EOF / error / `timeout`); returns what
/// arrived as text.
fn read_head(stream: &mut TcpStream, timeout: Duration) -> String {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A complete small POST, answered and closed.
fn post(addr: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /hook HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_head(&mut s, WAIT)
}

#[test]
fn receive_refuses_a_content_length_over_max_body_without_reading_the_body() {
    let (proc, addr) = start_receiver(&["--max-body", "1KiB"]);
    let mut s = TcpStream::connect(&addr).unwrap();
    // Headers only: the receiver must answer from Content-Length, not wait for 1 GiB.
    write!(
        s,
        "POST /hook HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1073741824\r\n\r\n"
    )
    .unwrap();
    let head = read_head(&mut s, Duration::from_secs(10));
    assert!(head.starts_with("HTTP/1.1 413"), "response: {head:?}");
    let line = next_json_line(&proc);
    assert_eq!(line["status"], json!(413), "{line}");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("1073741824") && error.contains("--max-body"),
        "{line}"
    );
}

#[test]
fn receive_answers_413_while_a_chunked_body_over_max_body_is_still_being_sent() {
    const TOTAL: u64 = 64 << 20;
    let (proc, addr) = start_receiver(&["--max-body", "1MiB"]);
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /hook HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    // A writer streams 64 MiB in 64 KiB chunks (no Content-Length, so only counting can
    // stop it) until it has sent everything or the receiver closes.
    let sent = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let mut writer = s.try_clone().unwrap();
    writer.set_write_timeout(Some(WAIT)).unwrap();
    let (w_sent, w_finished) = (sent.clone(), finished.clone());
    let writer = std::thread::spawn(move || {
        let chunk = [b'x'; 64 << 10];
        while w_sent.load(Ordering::SeqCst) < TOTAL {
            let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if writer.write_all(&frame).is_err() {
                return;
            }
            w_sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        let _ = writer.write_all(b"0\r\n\r\n");
        w_finished.store(true, Ordering::SeqCst);
    });

    let head = read_head(&mut s, WAIT);
    let finished_at_answer = finished.load(Ordering::SeqCst);
    let sent_at_answer = sent.load(Ordering::SeqCst);
    drop(s);
    let _ = writer.join();
    assert!(head.starts_with("HTTP/1.1 413"), "response: {head:?}");
    assert!(
        !finished_at_answer,
        "the receiver answered only after the whole {TOTAL}-byte body was sent"
    );
    let line = next_json_line(&proc);
    assert_eq!(line["status"], json!(413), "{line}");
    let peak = peak_rss_kib(proc.pid()).expect("VmHWM");
    assert!(
        peak < 48 << 10,
        "the receiver's peak memory is {peak} KiB after {sent_at_answer} bytes were sent"
    );
}

#[test]
fn receive_closes_a_connection_whose_headers_trickle_in_past_header_timeout() {
    let (_proc, addr) = start_receiver(&["--header-timeout", "1s"]);
    let mut s = TcpStream::connect(&addr).unwrap();
    let started = Instant::now();
    write!(s, "POST /hook HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // One header byte per 100ms, for at most 5s: the head never ends.
    let mut closed_after = None;
    for _ in 0..50 {
        let mut buf = [0u8; 256];
        let open = s.write_all(b"a").is_ok()
            && matches!(s.read(&mut buf), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
        if !open {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the trickling connection was still open after 5s");
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed after {closed_after:?}, before --header-timeout 1s"
    );
}

#[test]
fn receive_answers_408_to_a_body_that_stalls_past_body_timeout() {
    let (proc, addr) = start_receiver(&["--body-timeout", "1s"]);
    let mut s = TcpStream::connect(&addr).unwrap();
    // 10 of the 100 bytes announced, then nothing.
    write!(
        s,
        "POST /hook HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100\r\n\r\n{{\"events\":"
    )
    .unwrap();
    let head = read_head(&mut s, Duration::from_secs(6));
    assert!(head.starts_with("HTTP/1.1 408"), "response: {head:?}");
    let line = next_json_line(&proc);
    assert_eq!(line["status"], json!(408), "{line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap_or_default()
            .contains("--body-timeout"),
        "{line}"
    );
}

#[test]
fn receive_serves_at_most_max_connections_at_once() {
    let (proc, addr) = start_receiver(&["--max-connections", "2", "--header-timeout", "30s"]);
    let idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let mut third = TcpStream::connect(&addr).unwrap();
    let body = r#"{"meta":{},"events":[]}"#;
    write!(
        third,
        "POST /hook HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let early = read_head(&mut third, Duration::from_secs(1));
    assert_eq!(
        early, "",
        "served a third connection at --max-connections 2"
    );
    drop(idle);
    let head = read_head(&mut third, WAIT);
    assert!(head.starts_with("HTTP/1.1 200"), "response: {head:?}");
    assert_eq!(next_json_line(&proc)["status"], json!(200));
}

/// At 32 file descriptors, 64 connections leave the receiver unable to accept: it must
/// pause instead of retrying at once, warn once, and serve again once they close.
#[test]
fn receive_backs_off_instead_of_spinning_when_out_of_file_descriptors() {
    const FDS: u64 = 32;
    let mut cmd = flaghook(&[
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--header-timeout",
        "60s",
    ]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child being started.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: FDS,
                rlim_max: FDS,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (proc, addr) = start_receiver_with(cmd);
    let pid = proc.pid();
    let flood: Vec<TcpStream> = (0..2 * FDS)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let deadline = Instant::now() + WAIT;
    while open_fds(pid) < FDS as usize {
        assert!(
            Instant::now() < deadline,
            "the receiver never used all {FDS} descriptors ({} open)\n{}",
            open_fds(pid),
            proc.stderr_now()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let (cpu_before, wall) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let ticks = cpu_ticks(pid) - cpu_before;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let share = ticks as f64 / per_second / wall.elapsed().as_secs_f64();
    assert!(
        share < 0.3,
        "the receiver used {:.0}% of a core while out of descriptors",
        share * 100.0
    );

    drop(flood);
    let head = post(&addr, r#"{"meta":{},"events":[]}"#);
    assert!(head.starts_with("HTTP/1.1 200"), "response: {head:?}");
    assert_eq!(next_json_line(&proc)["status"], json!(200));
    let stderr = proc.stderr_now();
    assert_eq!(
        stderr.matches("cannot accept connections").count(),
        1,
        "one warning per burst of failed accepts:\n{stderr}"
    );
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3; utime
    // and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn receive_rejects_a_bad_limit_naming_the_flag_with_an_example() {
    for (flag, value, example) in [
        ("--max-body", "10XB", "10MiB"),
        ("--max-body", "0", "above zero"),
        ("--header-timeout", "soon", "10s"),
        ("--body-timeout", "0s", "above zero"),
        // Hostile-input issue: a huge timeout overflowed `Instant` on every connection.
        ("--header-timeout", "500000000000years", "at most 1h"),
        ("--body-timeout", "2h", "at most 1h"),
        ("--max-connections", "0", "1.."),
    ] {
        let out = run_args(&["receive", "--listen", "127.0.0.1:0", flag, value]);
        assert_eq!(out.code, Some(2), "{flag} {value}:\n{out}");
        assert!(
            out.stderr.contains(flag) && out.stderr.contains(example),
            "{flag} {value}:\n{out}"
        );
    }
}

/// Regression: a body that is not JSON, or JSON without `events`, was shown as
/// `"events":0` and nothing else, like an empty batch: a body with events that no JSON
/// reader takes (a number beyond a float, which flaghook passes through) looked as if the
/// receiver got no events. It now says why.
#[test]
fn receive_says_why_a_body_is_not_a_webhook_body() {
    let (proc, addr) = start_receiver(&[]);
    let event = r#"{"kind":"feature","key":"k","userKey":"u","creationDate":1,"value":1e400}"#;
    for (body, reason) in [
        (
            format!(r#"{{"meta":{{}},"events":[{event}]}}"#),
            "not JSON: number out of range",
        ),
        ("not json".to_owned(), "not JSON: expected ident"),
        (r#"{"meta":{}}"#.to_owned(), "no `events` array"),
    ] {
        assert!(post(&addr, &body).starts_with("HTTP/1.1 200"));
        let line = next_json_line(&proc);
        assert_eq!(line["events"], 0, "{line}");
        let error = line["body_error"].as_str().unwrap_or_default();
        assert!(error.starts_with(reason), "{body}: {line}");
    }
    let good =
        r#"{"meta":{},"events":[{"kind":"feature","key":"k","userKey":"u","creationDate":1}]}"#;
    post(&addr, good);
    let line = next_json_line(&proc);
    assert_eq!(line["events"], 1, "{line}");
    assert!(line.get("body_error").is_none(), "{line}");
}
