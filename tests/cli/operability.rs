//! Running flaghook as an operator does: progress lines, `run --once`'s live line on a
//! terminal, what `validate` says each file source will read, the systemd unit.

use std::time::{Duration, Instant};

use crate::harness::*;

/// The `delivered=N` of each progress line of sink `sink` in `stderr`.
fn progress_counts(stderr: &str, sink: &str) -> Vec<u64> {
    let prefix = format!("sink={sink} delivered=");
    stderr
        .lines()
        .filter_map(|l| l.split_once(&prefix))
        .map(|(_, rest)| rest.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn progress_lines_count_every_delivered_event_and_go_quiet_when_nothing_happens() {
    let endpoint = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        small_lines(0..300),
        &endpoint.url(),
        "flush_interval = \"50ms\"\nmax_event_in_memory = 100",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("progress_interval = \"200ms\"\n{text}")).unwrap();
    let proc = Proc::spawn(run_cmd(&config));
    assert!(endpoint.wait_until(WAIT, |t| t.has_all(300)));
    ws.append("events.json", small_lines(300..400));
    assert!(endpoint.wait_until(WAIT, |t| t.has_all(400)));

    let deadline = Instant::now() + WAIT;
    while progress_counts(&proc.stderr_now(), "webhook")
        .iter()
        .sum::<u64>()
        < 400
    {
        assert!(Instant::now() < deadline, "{}", proc.stderr_now());
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = progress_counts(&proc.stderr_now(), "webhook");
    assert_eq!(lines.iter().sum::<u64>(), 400, "{lines:?}");
    assert!(
        lines.iter().all(|&n| n > 0),
        "a line with nothing delivered: {lines:?}"
    );
    let stderr = proc.stderr_now();
    let line = stderr
        .lines()
        .find(|l| l.contains("sink=webhook delivered="))
        .unwrap();
    assert!(line.contains("/s) in_memory="), "{line}");

    // Nothing more happens: five intervals without a line.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        progress_counts(&proc.stderr_now(), "webhook").len(),
        lines.len()
    );
    proc.sigterm();
    proc.wait().assert_code(0);
}

#[test]
fn progress_lines_tell_how_long_a_sink_has_been_failing() {
    let endpoint = Endpoint::with_responder(|_| Reply::status(503).body("down for maintenance"));
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        small_lines(0..10),
        &endpoint.url(),
        "flush_interval = \"50ms\"\nretry_initial_backoff = \"50ms\"\nretry_max_backoff = \"100ms\"",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("progress_interval = \"300ms\"\n{text}")).unwrap();
    let proc = Proc::spawn(run_cmd(&config));
    let stderr = proc
        .wait_stderr("failing_for=", WAIT)
        .unwrap_or_else(|| panic!("no progress line while failing:\n{}", proc.stderr_now()));
    let line = stderr.lines().find(|l| l.contains("failing_for=")).unwrap();
    assert!(
        line.contains("sink=webhook delivered=0 (0/s) in_memory=10")
            && line.contains("oldest_undelivered=")
            && line.contains("status 503")
            && line.contains("down for maintenance"),
        "{line}"
    );
    proc.sigterm();
    proc.wait();
}

#[test]
fn progress_interval_0s_turns_the_lines_off() {
    let endpoint = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        small_lines(0..50),
        &endpoint.url(),
        "flush_interval = \"50ms\"",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("progress_interval = \"0s\"\n{text}")).unwrap();
    let out = run_once(&config);
    out.assert_code(0);
    assert!(endpoint.wait_until(WAIT, |t| t.has_all(50)));
    assert!(
        !out.stderr.contains("sink=webhook delivered="),
        "{}",
        out.stderr
    );
    // And a progress_interval that is not a duration names the key.
    std::fs::write(&config, format!("progress_interval = \"often\"\n{text}")).unwrap();
    let out = validate(&config);
    out.assert_code(1);
    assert!(out.stderr.contains("`progress_interval`"), "{}", out.stderr);
}

/// `run --once` under `script`, which gives it a terminal for stdout and stderr.
#[test]
fn run_once_shows_a_live_line_on_a_terminal_and_none_on_a_pipe() {
    let script_works = std::process::Command::new("script")
        .args(["-qec", "true", "/dev/null"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !script_works {
        assert!(
            std::env::var_os("CI").is_none(),
            "`script` (util-linux) is missing"
        );
        eprintln!("skipped: no `script` (util-linux) to give flaghook a terminal");
        return;
    }
    // Replies that take 100 ms: the run lasts long enough for the line to be redrawn.
    let endpoint = Endpoint::with_responder(|_| Reply::ok().delay(Duration::from_millis(100)));
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        small_lines(0..500),
        &endpoint.url(),
        "max_event_in_memory = 100\nflush_interval = \"50ms\"",
    );
    let command = format!(
        "{} run --once --config {}",
        env!("CARGO_BIN_EXE_flaghook"),
        config.display()
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qefc", &command, "/dev/null"]);
    cmd.env("RUST_LOG", "warn");
    let out = Proc::spawn(cmd).wait();
    out.assert_code(0);
    let drawn: Vec<u64> = (out.stdout.split("\r\x1b[Kread ").skip(1))
        .filter_map(|l| {
            l.split(", delivered ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        drawn.len() >= 2 && drawn.iter().any(|&n| n > 0),
        "{:?}",
        out.stdout
    );
    // The line is cleared before the summary.
    let summary_at = out.stdout.find("summary ").unwrap();
    assert!(
        out.stdout[..summary_at].ends_with("\r\x1b[K"),
        "{:?}",
        out.stdout
    );

    // On a pipe: no live line.
    std::fs::remove_dir_all(ws.data_dir()).unwrap();
    let out = run_once(&config);
    out.assert_code(0);
    assert!(
        !out.stderr.contains("\x1b[K") && !out.stderr.contains(", delivered "),
        "{}",
        out.stderr
    );
}

#[test]
fn validate_shows_each_matched_file_and_where_it_would_start() {
    let endpoint = Endpoint::start();
    let ws = Workspace::new();
    let a = ws.write("logs/a.json", small_lines(0..10));
    let delivered = std::fs::metadata(&a).unwrap().len();
    let source = |read_from: &str| {
        format!(
            r#"[sources.goff]
type = "file"
include = [{logs}, {none}]
read_from = "{read_from}"

[sources.elsewhere]
type = "file"
include = [{missing}]

[sinks.webhook]
type = "webhook"
inputs = ["goff", "elsewhere"]
endpoint_url = {url}
flush_interval = "50ms"
"#,
            logs = toml_str(ws.path("logs/*.json")),
            none = toml_str(ws.path("nothing/*.json")),
            missing = toml_str(ws.path("missing/*.json")),
            url = toml_str(endpoint.url()),
        )
    };
    let config = ws.config(&source("beginning"));
    run_once(&config).assert_code(0);
    ws.append("logs/a.json", small_lines(10..15));
    let size_a = std::fs::metadata(&a).unwrap().len();
    let b = ws.write("logs/b.json", small_lines(15..18));
    let size_b = std::fs::metadata(&b).unwrap().len();
    std::fs::create_dir(ws.path("logs/dir.json")).unwrap();

    let out = validate(&config);
    out.assert_code(0);
    let line = |path: &std::path::Path| {
        let prefix = format!("  {}: ", path.display());
        let found = out.stdout.lines().find(|l| l.starts_with(&prefix));
        found
            .unwrap_or_else(|| panic!("no line for {}:\n{}", path.display(), out.stdout))
            .to_owned()
    };
    assert_eq!(
        line(&a),
        format!(
            "  {}: {size_a} bytes, starts at byte {delivered} (its checkpoint): {} bytes to send",
            a.display(),
            size_a - delivered
        )
    );
    assert_eq!(
        line(&b),
        format!(
            "  {}: {size_b} bytes, starts at byte 0 (read_from = \"beginning\"): {size_b} bytes to send",
            b.display()
        )
    );
    assert!(line(&ws.path("logs/dir.json")).ends_with("not a regular file: skipped"));
    let elsewhere = out.stdout.split("source elsewhere:").nth(1).unwrap();
    assert!(
        elsewhere.lines().nth(1) == Some("  no file matches now"),
        "{}",
        out.stdout
    );

    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("beginning", "end"),
    )
    .unwrap();
    let out = validate(&config);
    out.assert_code(0);
    assert!(
        out.stdout.contains(&format!(
            "  {}: {size_b} bytes, starts at byte {size_b} (read_from = \"end\"): 0 bytes to send",
            b.display()
        )),
        "{}",
        out.stdout
    );
    assert!(out
        .stdout
        .contains(&format!("starts at byte {delivered} (its checkpoint)")));
}

#[test]
fn log_format_journald_starts_each_line_with_its_priority_and_no_time() {
    let endpoint = Endpoint::scripted(vec![Reply::status(503)], Reply::ok());
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        small_lines(0..5),
        &endpoint.url(),
        "flush_interval = \"50ms\"\nretry_initial_backoff = \"50ms\"",
    );
    let mut cmd = flaghook(&["--log-format", "journald", "run", "--once", "--config"]);
    cmd.arg(&config);
    let out = Proc::spawn(cmd).wait();
    out.assert_code(0);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("<6>")), "{}", out.stderr);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("will retry")),
        "{}",
        out.stderr
    );
    for line in &lines {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "a line without its priority: {line:?}"
        );
        assert!(!line.contains("Z  "), "a line with a time: {line:?}");
    }
    let mut cmd = flaghook(&["--log-format", "journald", "validate", "--config"]);
    cmd.arg(ws.path("missing.toml"));
    let out = Proc::spawn(cmd).wait();
    out.assert_code(1);
    assert!(
        out.stderr.starts_with("<3>error: cannot read config file"),
        "{}",
        out.stderr
    );
}

/// The unit in `dist/`: systemd accepts it (where `systemd-analyze` exists), it has what a
/// supervised service needs, and its command line is one flaghook takes.
#[test]
fn the_systemd_unit_verifies_and_its_command_runs() {
    let unit = std::fs::read_to_string(manifest_dir().join("dist/flaghook.service")).unwrap();
    for key in [
        "Restart=on-failure",
        "StateDirectory=flaghook",
        "DynamicUser=yes",
        "EnvironmentFile=",
        "ProtectSystem=strict",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "--log-format journald",
        "Type=notify",
    ] {
        assert!(unit.contains(key), "the unit lacks {key}");
    }
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args[0], "/usr/local/bin/flaghook");

    // Its arguments, with a test config and --once, run a pipeline.
    let endpoint = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        small_lines(0..3),
        &endpoint.url(),
        "flush_interval = \"50ms\"",
    );
    let mut cmd = flaghook(&[]);
    for arg in &args[1..] {
        match *arg {
            "/etc/flaghook/flaghook.toml" => cmd.arg(&config),
            other => cmd.arg(other),
        };
    }
    cmd.arg("--once");
    Proc::spawn(cmd).wait().assert_code(0);
    assert!(endpoint.wait_until(WAIT, |t| t.has_all(3)));

    let analyze = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output();
    if !analyze.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped `systemd-analyze verify`: systemd-analyze is not installed");
        return;
    }
    // `verify` checks that ExecStart exists: point it at the binary under test.
    let copy = ws.write(
        "flaghook.service",
        unit.replace("/usr/local/bin/flaghook", env!("CARGO_BIN_EXE_flaghook")),
    );
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

/// Regression: with `--log-format journald`, only the first line of a message spanning
/// several lines had its priority (a config error with its example, a warning quoting a
/// response body over several lines): journald took each other line as an entry of the
/// default priority, so `journalctl -p warning` showed the first line alone and the rest
/// showed as info.
#[test]
fn log_format_journald_gives_every_line_of_a_long_message_its_priority() {
    let body = "<html>\n<body>overloaded</body>\n</html>";
    let endpoint = Endpoint::scripted(vec![Reply::status(503).body(body)], Reply::ok());
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        small_lines(0..5),
        &endpoint.url(),
        "flush_interval = \"50ms\"\nretry_initial_backoff = \"50ms\"",
    );
    let mut cmd = flaghook(&["--log-format", "journald", "run", "--once", "--config"]);
    cmd.arg(&config);
    let run = Proc::spawn(cmd).wait();
    run.assert_code(0);
    assert!(run.stderr.contains("overloaded"), "{}", run.stderr);

    let text = std::fs::read_to_string(&config).unwrap();
    let bad = ws.write(
        "bad.toml",
        text.replace("flush_interval", "flush_intervall"),
    );
    let mut cmd = flaghook(&["--log-format", "journald", "validate", "--config"]);
    cmd.arg(&bad);
    let validate = Proc::spawn(cmd).wait();
    validate.assert_code(1);
    assert!(
        validate.stderr.contains("A correct example"),
        "{}",
        validate.stderr
    );

    for (what, stderr, priority) in [
        ("run", &run.stderr, "<4>"),
        ("validate", &validate.stderr, "<3>"),
    ] {
        let lines: Vec<&str> = stderr.lines().collect();
        // Each line of the warning, or of the error, has its priority.
        let first = lines.iter().position(|l| l.contains("<html>")).unwrap_or(0);
        assert!(lines[first].starts_with(priority), "{what}:\n{stderr}");
        for line in &lines {
            assert!(
                ["<3>", "<4>", "<6>", "<7>"]
                    .iter()
                    .any(|p| line.starts_with(p)),
                "{what}: a line without its priority: {line:?}\n{stderr}"
            );
        }
        if what == "run" {
            for part in ["<body>overloaded</body>", "</html>"] {
                let line = lines.iter().find(|l| l.contains(part)).unwrap();
                assert!(line.starts_with("<4>"), "{what}: {line:?}");
            }
        }
    }
}

/// Regression: the install steps (README and the unit's comment) installed the config
/// `-m 0640`, owned by root: the unit runs flaghook as a `DynamicUser`, neither root nor in
/// root's group, which then could not read its config and exited 1 at every restart. The
/// config holds `${NAME}` references; secrets go to `EnvironmentFile=`, which systemd reads
/// as root.
#[test]
fn the_documented_install_lets_the_service_user_read_its_config() {
    let unit = std::fs::read_to_string(manifest_dir().join("dist/flaghook.service")).unwrap();
    assert!(unit.contains("DynamicUser=yes"));
    let readme = std::fs::read_to_string(manifest_dir().join("README.md")).unwrap();
    let mut seen = 0;
    for (doc, text) in [("dist/flaghook.service", &unit), ("README.md", &readme)] {
        for line in text
            .lines()
            .filter(|l| l.contains("install ") && l.contains("/etc/flaghook/flaghook.toml"))
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            let mode = words
                .iter()
                .position(|w| *w == "-m")
                .map(|i| u32::from_str_radix(words[i + 1], 8).unwrap())
                .unwrap_or_else(|| panic!("{doc}: no -m in {line:?}"));
            assert!(
                mode & 0o004 != 0,
                "{doc}: the service's dynamic user cannot read a config installed -m {mode:o}: {line:?}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 2, "the install lines were not found");
}

/// A SIGHUP is a reload request, never a kill: `run --once` (which does not reload) goes
/// on and delivers everything, where SIGHUP's default action ended it mid-run.
#[test]
fn a_sighup_does_not_end_run_once() {
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let endpoint = Endpoint::up_when(&up, Reply::status(503));
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        small_lines(0..20),
        &endpoint.url(),
        "flush_interval = \"50ms\"\nretry_initial_backoff = \"50ms\"\nretry_max_backoff = \"100ms\"",
    );
    let proc = Proc::spawn(run_once_cmd(&config));
    let deadline = Instant::now() + WAIT;
    while endpoint.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no request:\n{}",
            proc.stderr_now()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    proc.sighup();
    std::thread::sleep(Duration::from_millis(200));
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = proc.wait();
    out.assert_code(0);
    assert!(endpoint.wait_until(WAIT, |t| t.has_all(20)), "{out}");
}

/// With `Type=notify`, systemd waits for READY=1 on `NOTIFY_SOCKET`: it comes once the
/// pipelines started and the file source opened its files, and STOPPING=1 at a SIGTERM.
#[test]
fn the_service_manager_is_told_when_flaghook_is_ready_and_when_it_stops() {
    use std::os::unix::net::UnixDatagram;

    let endpoint = Endpoint::start();
    let ws = Workspace::new();
    let socket_path = ws.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let config = ws.file_pipeline(
        small_lines(0..3),
        &endpoint.url(),
        "flush_interval = \"50ms\"",
    );
    let mut cmd = run_cmd(&config);
    cmd.env("NOTIFY_SOCKET", &socket_path);
    let proc = Proc::spawn(cmd);

    let next = || {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 256];
        loop {
            if let Ok(n) = socket.recv(&mut buf) {
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "nothing on NOTIFY_SOCKET:\n{}",
                proc.stderr_now()
            );
        }
    };
    assert_eq!(next().trim(), "READY=1");
    assert!(endpoint.wait_until(WAIT, |t| t.has_all(3)));
    proc.sigterm();
    assert_eq!(next().trim(), "STOPPING=1");
    proc.wait().assert_code(0);
}
