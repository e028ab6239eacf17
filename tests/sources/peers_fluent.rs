//! The `fluent` source with Forward clients nobody here wrote: npm `fluent-logger` (with
//! `requireAckResponse`, in its three event modes, with and without `shared_key`) and PyPI
//! `fluent-logger` (Message mode with EventTime, no acknowledgements).
//!
//! Each is installed once into a cache under `target/peers/` with the registry's own
//! client (npm, pip). Where that fails, the test is skipped with the reason on a
//! developer's machine and fails in CI (`CI` set), which reaches both registries.

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
