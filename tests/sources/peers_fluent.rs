//! The `fluent` source with Forward clients nobody here wrote: npm `fluent-logger` (with
//! `requireAckResponse`, in its three event modes, with and without `shared_key`), PyPI
//! `fluent-logger` (Message mode with EventTime, no acknowledgements) and Go's
//! fluent-logger-golang (Message mode, one entry per chunk id, each waiting for its ack;
//! sync and async, EventTime and integer times, a new connection every few entries).
//!
//! The npm and PyPI clients are installed once into a cache under `target/peers/` with the
//! registry's own client (npm, pip); the Go one is Debian's
//! `golang-github-fluent-fluent-logger-golang-dev`, which `.ci/run` installs with
//! `golang-go`, and `tests/peers/go-fluent/main.go` is built against it offline (GOPATH
//! mode). Where that fails, the test is skipped with the reason on a developer's machine
//! and fails in CI (`CI` set), which reaches both registries and Debian's archive.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::fluent::fluent_pipeline;
use crate::harness::*;

fn peers_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target"))
        .join("peers")
}

/// Runs an installer; `Err` carries its output.
fn install(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The installed package's folder, or None (and a note) when it could not be installed
/// outside CI.
fn available(installed: &Result<PathBuf, String>) -> Option<PathBuf> {
    match installed {
        Ok(dir) => Some(dir.clone()),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("a Forward client peer is missing: {e}")
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// `node_modules` holding npm's `fluent-logger` 3.x.
fn node_fluent_logger() -> Option<PathBuf> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    available(INSTALLED.get_or_init(|| {
        let dir = peers_dir().join("npm");
        let modules = dir.join("node_modules");
        if !modules.join("fluent-logger/package.json").is_file() {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            install(
                Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund", "--prefix"])
                    .arg(&dir)
                    .arg("fluent-logger@3"),
            )?;
        }
        Ok(modules)
    }))
}

/// A folder for `PYTHONPATH` holding PyPI's `fluent-logger`.
fn python_fluent_logger() -> Option<PathBuf> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    available(INSTALLED.get_or_init(|| {
        let dir = peers_dir().join("python");
        if !dir.join("fluent/sender.py").is_file() {
            install(
                Command::new("python3")
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "--target",
                    ])
                    .arg(&dir)
                    .arg("fluent-logger>=0.10,<1"),
            )?;
        }
        Ok(dir)
    }))
}

/// Sends `small_event` ids `start..start+count` with npm's fluent-logger, each waiting for
/// its acknowledgement; prints `{"acked":N,"failed":N}` or the sender's first error.
const NODE_SENDER: &str = r#"
const logger = require('fluent-logger');
const [port, mode, start, count, key] = process.argv.slice(2);
const options = {
  host: '127.0.0.1', port: Number(port), eventMode: mode, flushInterval: 20,
  requireAckResponse: true, ackResponseTimeout: 20000, reconnectInterval: 600000,
};
if (key) options.security = { clientHostname: 'node-client', sharedKey: key };
const sender = logger.createFluentSender('goff', options);
sender.on('error', (e) => { console.log(JSON.stringify({ error: String(e.message || e) })); process.exit(3); });
let acked = 0, failed = 0;
const done = () => {
  if (acked + failed < Number(count)) return;
  console.log(JSON.stringify({ acked, failed }));
  sender.end();
  process.exit(failed ? 1 : 0);
};
for (let i = Number(start); i < Number(start) + Number(count); i++) {
  const record = { kind: 'feature', key: 'k', userKey: 'u' + i, creationDate: 1700000000 };
  sender.emit('events', record, logger.EventTime.now(), (err) => { if (err) failed++; else acked++; done(); });
}
"#;

fn node(modules: &Path, ws: &Workspace, args: &[&str]) -> Output {
    let script = ws.write("sender.js", NODE_SENDER);
    let mut cmd = Command::new("node");
    cmd.arg(script).args(args).env("NODE_PATH", modules);
    Proc::spawn(cmd).wait()
}

/// The sender's last line (fluent-logger logs its handshake on stdout before it).
fn last_line(out: &Output) -> &str {
    out.stdout.lines().last().unwrap_or("")
}

#[test]
fn npm_fluent_logger_with_acks_in_every_event_mode() {
    let Some(modules) = node_fluent_logger() else {
        return;
    };
    let hook = Endpoint::start().count_only();
    let ws = Workspace::new();
    let (config, addr) = fluent_pipeline(&ws, &hook.url(), "", "");
    let proc = Proc::spawn(run_cmd(&config));
    proc.wait_stderr("listening", WAIT)
        .expect("flaghook listens");
    let port = addr.rsplit(':').next().unwrap();
    for (i, mode) in ["Message", "PackedForward", "CompressedPackedForward"]
        .iter()
        .enumerate()
    {
        let start = (i * 300).to_string();
        let out = node(&modules, &ws, &[port, mode, &start, "300"]);
        assert_eq!(
            last_line(&out),
            r#"{"acked":300,"failed":0}"#,
            "{mode}: {out}\nflaghook: {}",
            proc.stderr_now()
        );
    }
    assert!(
        hook.wait_until(WAIT, |t| t.has_all(900)),
        "{}",
        proc.stderr_now()
    );
    proc.sigterm();
    let out = proc.wait();
    out.assert_code(0);
    assert!(!out.stderr.contains("bad line"), "{out}");
}

#[test]
fn npm_fluent_logger_with_shared_key_right_and_wrong() {
    let Some(modules) = node_fluent_logger() else {
        return;
    };
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let (config, addr) = fluent_pipeline(&ws, &hook.url(), "shared_key = \"${FLUENT_KEY}\"", "");
    let proc = Proc::spawn({
        let mut cmd = run_cmd(&config);
        cmd.env("FLUENT_KEY", "k-9a1b7c");
        cmd
    });
    proc.wait_stderr("listening", WAIT)
        .expect("flaghook listens");
    let port = addr.rsplit(':').next().unwrap();

    let wrong = node(
        &modules,
        &ws,
        &[port, "PackedForward", "0", "5", "not-the-key"],
    );
    assert!(
        wrong
            .stdout
            .contains("Authentication failed: shared_key mismatch"),
        "{wrong}"
    );
    let right = node(
        &modules,
        &ws,
        &[port, "PackedForward", "5", "5", "k-9a1b7c"],
    );
    assert_eq!(last_line(&right), r#"{"acked":5,"failed":0}"#, "{right}");
    assert!(hook.wait_until(WAIT, |t| t.distinct() == 5));
    proc.sigterm();
    let out = proc.wait();
    assert_eq!(hook.with(|t| t.missing(10)), (0..5).collect::<Vec<_>>());
    assert!(
        out.stderr
            .contains("refused a Forward client: shared_key mismatch"),
        "{out}"
    );
    assert!(
        !out.stderr.contains("k-9a1b7c") && !out.stderr.contains("not-the-key"),
        "{out}"
    );
}

/// PyPI's fluent-logger: Message mode, EventTime (`nanosecond_precision`), no acks.
const PYTHON_SENDER: &str = r#"
import sys
from fluent import sender
port, start, count = (int(a) for a in sys.argv[1:4])
s = sender.FluentSender('goff', host='127.0.0.1', port=port, nanosecond_precision=True)
for i in range(start, start + count):
    record = {'kind': 'feature', 'key': 'k', 'userKey': 'u%d' % i, 'creationDate': 1700000000}
    if not s.emit('events', record):
        print('emit failed: %r' % (s.last_error,))
        sys.exit(1)
s.close()
print('sent %d' % count)
"#;

#[test]
fn pypi_fluent_logger_message_mode_with_eventtime() {
    let Some(pythonpath) = python_fluent_logger() else {
        return;
    };
    let hook = Endpoint::start().count_only();
    let ws = Workspace::new();
    let (config, addr) = fluent_pipeline(&ws, &hook.url(), "", "");
    let proc = Proc::spawn(run_once_cmd(&config));
    proc.wait_stderr("listening", WAIT)
        .expect("flaghook listens");
    let port = addr.rsplit(':').next().unwrap();
    let script = ws.write("sender.py", PYTHON_SENDER);
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args([port, "0", "500"])
        .env("PYTHONPATH", &pythonpath);
    let sent = Proc::spawn(cmd).wait();
    assert_eq!(sent.stdout.trim(), "sent 500", "{sent}");
    let out = proc.wait();
    out.assert_code(0);
    assert!(hook.with(|t| t.has_all(500)), "{out}");
}

/// fluent-logger-golang's package, where Debian's
/// `golang-github-fluent-fluent-logger-golang-dev` puts it (GOPATH `/usr/share/gocode`).
const GO_FLUENT_LOGGER: &str =
    "/usr/share/gocode/src/github.com/fluent/fluent-logger-golang/fluent";

/// `tests/peers/go-fluent` built against Debian's fluent-logger-golang: GOPATH mode, so
/// nothing is downloaded; Go's build cache under `target/peers/` makes later builds quick.
fn go_fluent_sender() -> Option<PathBuf> {
    let go = peer("go", "golang-go")?;
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    available(BUILT.get_or_init(|| {
        if !Path::new(GO_FLUENT_LOGGER).is_dir() {
            return Err(format!(
                "{GO_FLUENT_LOGGER} is missing (apt-get install \
                 golang-github-fluent-fluent-logger-golang-dev)"
            ));
        }
        let dir = peers_dir().join("go-fluent");
        let binary = dir.join("go-fluent");
        install(
            Command::new(go)
                .args(["build", "-o"])
                .arg(&binary)
                .arg(manifest_dir().join("tests/peers/go-fluent/main.go"))
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode")
                .env("GOPROXY", "off")
                .env("GOCACHE", dir.join("cache"))
                .env("CGO_ENABLED", "0"),
        )?;
        Ok(binary)
    }))
}

/// Every request signed with `secret`, and the events delivered, once each, are
/// `feature_event(0..n)`, byte for byte (flaghook writes a record's fields in GO Feature
/// Flag's order, whatever order they came in).
fn assert_signed_feature_events_once(hook: &Endpoint, secret: &str, n: usize) {
    let mut got = Vec::new();
    for r in hook.requests().iter().filter(|r| r.is_success()) {
        assert_eq!(
            r.header_values("x-hub-signature-256"),
            vec![signature(secret, &r.body)],
            "request {}",
            r.index
        );
        got.extend(
            r.events()
                .into_iter()
                .map(|e| (event_ids(e.as_bytes()).0, e)),
        );
    }
    got.sort();
    let got: Vec<String> = got.into_iter().map(|(_, e)| e).collect();
    if got != feature_events(0, n) {
        let first = got.iter().zip(feature_events(0, n)).find(|(g, w)| *g != w);
        panic!(
            "{} events delivered for {n}; duplicated {:?}, missing {:?}; first difference \
             (got, want): {first:?}",
            got.len(),
            hook.with(|t| t.duplicated_ids()),
            hook.with(|t| t.missing(n as u64)),
        );
    }
}

/// fluent-logger-golang 1.9 sends Message mode only: `[tag, time, record, option]`, the
/// option map always there (empty without `RequestAck`), integer times as msgpack's signed
/// types, a struct's fields (here GO Feature Flag's feature event) as a map in random
/// order. With `RequestAck` each entry carries a new chunk id, and Post (async: the send
/// behind it) reads one msgpack map and fails unless its `ack` is that id: it closes the
/// connection and sends the entry again, up to 13 times, then reports the error (an answer
/// that never comes holds it forever: the program gives up after 10 s). So `"failed":0`
/// means flaghook acknowledged every chunk, and "once each" at the endpoint means no entry
/// had to be sent again.
#[test]
fn go_fluent_logger_sync_and_async_with_acks() {
    let Some(sender) = go_fluent_sender() else {
        return;
    };
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let secret = "go-peer-s3cret";
    let (config, addr) = fluent_pipeline(
        &ws,
        &hook.url(),
        "",
        &format!("secret = {}", toml_str(secret)),
    );
    let proc = Proc::spawn({
        let mut cmd = run_cmd(&config);
        cmd.env("RUST_LOG", "info,flaghook::source::fluent=debug");
        cmd
    });
    proc.wait_stderr("listening", WAIT)
        .expect("flaghook listens");
    let port = addr.rsplit(':').next().unwrap();
    let cases: [(&str, &[&str], usize); 3] = [
        ("sync, EventTime", &["-subsecond"], 300),
        // AsyncReconnectInterval: before an entry, once 1 ms passed since it connected, the
        // client closes its connection (every entry before was acked) and opens another.
        (
            "async, integer times, reconnecting",
            &["-async", "-reconnect-ms", "1"],
            300,
        ),
        ("sync, no acks (an empty option map)", &["-ack=false"], 100),
    ];
    let mut start = 0;
    for (case, flags, count) in cases {
        let mut cmd = Command::new(&sender);
        cmd.args(["-port", port, "-stuck-after", "10s", "-start"])
            .arg(start.to_string())
            .arg("-count")
            .arg(count.to_string())
            .args(flags);
        let out = Proc::spawn(cmd).wait();
        assert_eq!(
            (out.stdout.trim(), out.code),
            (
                format!(r#"{{"sent":{count},"failed":0}}"#).as_str(),
                Some(0)
            ),
            "{case}: {out}\nflaghook: {}",
            proc.stderr_now()
        );
        start += count;
    }
    assert!(
        hook.wait_until(WAIT, |t| t.has_all(start as u64)),
        "{}",
        proc.stderr_now()
    );
    proc.sigterm();
    let out = proc.wait();
    out.assert_code(0);
    assert!(
        !out.stderr.contains("bad line")
            && !out.stderr.contains("connection failed")
            && !out.stderr.contains("closed the connection"),
        "{out}"
    );
    // One connection for each sync case, more than one for the reconnecting one.
    let connections = out.stderr.matches("connection opened").count();
    assert!(
        connections > 3,
        "{connections} connections: the async client did not reconnect\n{out}"
    );
    assert_signed_feature_events_once(&hook, secret, start);
}
