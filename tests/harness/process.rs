//! One way to run the binary: [`Proc`] (piped output, signals, a hard timeout) and the
//! [`Output`] it leaves behind, with its summary line; resident memory; TCP helpers.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{PROC_TIMEOUT, WAIT};

/// The variables that send flaghook's requests through a proxy, loopback included.
pub const PROXY_VARS: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// A `flaghook` command with `args`, stdin closed and `RUST_LOG=info`. The proxy
/// variables of the test's own environment are removed: requests to the tests' loopback
/// endpoints go straight, unless a test sets them on its command.
pub fn flaghook(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flaghook"));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for name in PROXY_VARS {
        cmd.env_remove(name);
    }
    cmd
}

/// `flaghook run --config PATH` (continuous: until a signal).
pub fn run_cmd(config: &Path) -> Command {
    let mut cmd = flaghook(&["run", "--config"]);
    cmd.arg(config);
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

    /// Sends SIGHUP: `run` reloads its config.
    pub fn sighup(&self) {
        self.signal(libc::SIGHUP);
    }

    /// Sends SIGINT.
    pub fn sigint(&self) {
        self.signal(libc::SIGINT);
    }

    /// Sends SIGKILL: the process dies at once, as in an OOM kill or a power cut (for the
    /// process).
    pub fn sigkill(&self) {
        self.signal(libc::SIGKILL);
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

    /// One `key=value` field of the last summary line on stdout (any field, e.g.
    /// `peak_events_in_memory`).
    #[track_caller]
    pub fn summary_value(&self, key: &str) -> u64 {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with("summary "))
            .unwrap_or_else(|| panic!("no summary line on stdout:\n{self}"));
        line.split(' ')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("summary has no numeric {key}:\n{self}"))
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
// Resident memory and privileges.

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

/// A real peer's binary (a Debian package's, that `.ci/run` installs), or None and a note
/// when it is not installed outside CI. In CI (`CI` set) a missing peer fails the test.
pub fn peer(binary: &str, package: &str) -> Option<String> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([Path::new("/usr/sbin").to_path_buf()])
            .map(|dir| dir.join(binary))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p.to_string_lossy().into_owned()),
        None if std::env::var_os("CI").is_some() => {
            panic!("{binary} is missing: .ci/run installs the Debian package {package}")
        }
        None => {
            eprintln!("skipped: {binary} is not installed (apt-get install {package})");
            None
        }
    }
}
