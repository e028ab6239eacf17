//! Live reload (SIGHUP, `run --watch-config`): while events flow, the config is reloaded 20
//! times, each time restarting one pipeline and adding or removing another, with a refused
//! invalid config among them; every event arrives exactly once, and the pipeline that never
//! changed is never interrupted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

const RELOADS: usize = 20;

/// A file source `NAME` over `file` and a sink `NAME_hook` to `url`, with `extra` lines.
fn pipeline(name: &str, file: &Path, url: &str, extra: &str) -> String {
    format!(
        r#"[sources.{name}]
type = "file"
include = [{file}]

[sinks.{name}_hook]
type = "webhook"
inputs = ["{name}"]
endpoint_url = {url}
flush_interval = "50ms"
max_event_in_memory = 100
{extra}
"#,
        file = toml_str(file),
        url = toml_str(url),
    )
}

/// Appends `small_event`s to `path` in bursts until `stop`; returns how many it wrote.
fn writer(
    path: PathBuf,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        // Bounded: at most 2000 bursts.
        for _ in 0..2000 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let from = written.load(Ordering::SeqCst);
            file.write_all(small_lines(from..from + 25).as_bytes())
                .unwrap();
            written.store(from + 25, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// Waits until stderr holds `needle` `n` times.
fn wait_count(proc: &Proc, needle: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    while proc.stderr_now().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not seen {n} times:\n{}",
            proc.stderr_now()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sighup(proc: &Proc) {
    // SAFETY: kill(2) on our own child's pid, not yet reaped.
    unsafe {
        libc::kill(proc.pid() as libc::pid_t, libc::SIGHUP);
    }
}

#[track_caller]
fn assert_exactly_once(endpoint: &Endpoint, n: u64, what: &str, proc: &Proc) {
    assert!(
        endpoint.wait_until(WAIT, |t| t.has_all(n)),
        "{what}: missing {:?}\n{}",
        endpoint.with(|t| t.missing(n)),
        proc.stderr_now()
    );
    endpoint.with(|t| {
        let duplicated = t.duplicated_ids();
        assert!(
            duplicated.is_empty(),
            "{what}: {} ids arrived more than once, first {:?}",
            duplicated.len(),
            &duplicated[..duplicated.len().min(10)]
        );
        assert_eq!(t.distinct(), n, "{what}: more than written");
    });
}

#[test]
fn twenty_reloads_while_events_flow_deliver_every_event_exactly_once() {
    let (flow_hook, steady_hook, extra_hook) = (
        Endpoint::start().count_only(),
        Endpoint::start().count_only(),
        Endpoint::start().count_only(),
    );
    let ws = Workspace::new();
    let (flow, steady, extra) = (
        ws.path("flow.json"),
        ws.path("steady.json"),
        ws.path("extra.json"),
    );
    write_small_events(&steady, 0..500);
    // `flow` restarts at every reload (its meta changes); `extra` comes and goes; `steady`
    // never changes.
    let config_for = |round: usize| {
        let mut text = pipeline(
            "flow",
            &flow,
            &flow_hook.url(),
            &format!("meta = {{ round = \"{round}\" }}"),
        );
        text.push_str(&pipeline("steady", &steady, &steady_hook.url(), ""));
        if round % 2 == 1 {
            text.push_str(&pipeline("extra", &extra, &extra_hook.url(), ""));
        }
        text
    };
    let config = ws.config(&config_for(0));
    let proc = Proc::spawn(run_cmd(&config));
    let (stop, flow_written) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let flow_writer = writer(flow.clone(), stop.clone(), flow_written.clone());
    let extra_written = Arc::new(AtomicU64::new(0));
    let extra_writer = writer(extra.clone(), stop.clone(), extra_written.clone());
    assert!(
        steady_hook.wait_until(WAIT, |t| t.has_all(500)),
        "{}",
        proc.stderr_now()
    );

    for round in 1..=RELOADS {
        // Some of the flow delivered before each reload.
        let before = flow_hook.with(|t| t.distinct());
        assert!(
            flow_hook.wait_until(WAIT, |t| t.distinct() > before),
            "{}",
            proc.stderr_now()
        );
        std::fs::write(
            &config,
            format!(
                "data_dir = {}\n\n{}",
                toml_str(ws.data_dir()),
                config_for(round)
            ),
        )
        .unwrap();
        sighup(&proc);
        wait_count(&proc, "config reloaded", round);
        if round == RELOADS / 2 {
            // A config that does not check: logged as `validate` says it, nothing changes.
            let bad = config_for(round).replace(&flow_hook.url(), "ftp://nowhere/hook");
            std::fs::write(
                &config,
                format!("data_dir = {}\n\n{bad}", toml_str(ws.data_dir())),
            )
            .unwrap();
            sighup(&proc);
            wait_count(&proc, "config reload refused", 1);
            let stderr = proc.stderr_now();
            assert!(
                stderr.contains("`sinks.flow_hook.endpoint_url`")
                    && stderr.contains("A correct example"),
                "{stderr}"
            );
            let before = flow_hook.with(|t| t.distinct());
            assert!(
                flow_hook.wait_until(WAIT, |t| t.distinct() > before),
                "the flow stopped after a refused reload"
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    flow_writer.join().unwrap();
    extra_writer.join().unwrap();
    // The last round (20, even) removed `extra`: add it back once to deliver its tail.
    std::fs::write(
        &config,
        format!(
            "data_dir = {}\n\n{}",
            toml_str(ws.data_dir()),
            config_for(RELOADS + 1)
        ),
    )
    .unwrap();
    sighup(&proc);
    wait_count(&proc, "config reloaded", RELOADS + 1);

    let flow_n = flow_written.load(Ordering::SeqCst);
    assert!(flow_n > 500, "the writer wrote only {flow_n} events");
    assert_exactly_once(&flow_hook, flow_n, "flow", &proc);
    assert_exactly_once(
        &extra_hook,
        extra_written.load(Ordering::SeqCst),
        "extra",
        &proc,
    );
    assert_exactly_once(&steady_hook, 500, "steady", &proc);
    let stderr = proc.stderr_now();
    // Restarted at each reload, from its checkpoint; `steady` opened its file once.
    assert!(
        stderr.matches("tailing file source=flow").count() > RELOADS,
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("tailing file source=steady").count(),
        1,
        "{stderr}"
    );
    proc.sigterm();
    let out = proc.wait();
    out.assert_code(0);
}

#[test]
fn watch_config_applies_a_changed_file_and_starts_a_new_pipeline() {
    let (first, second) = (Endpoint::start(), Endpoint::start());
    let ws = Workspace::new();
    let (a, b) = (ws.path("a.json"), ws.path("b.json"));
    write_small_events(&a, 0..50);
    write_small_events(&b, 0..70);
    let config = ws.config(&pipeline("a", &a, &first.url(), ""));
    let mut cmd = run_cmd(&config);
    cmd.arg("--watch-config");
    let proc = Proc::spawn(cmd);
    assert!(
        first.wait_until(WAIT, |t| t.has_all(50)),
        "{}",
        proc.stderr_now()
    );

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n{}", pipeline("b", &b, &second.url(), "")),
    )
    .unwrap();
    assert!(
        second.wait_until(WAIT, |t| t.has_all(70)),
        "{}",
        proc.stderr_now()
    );
    wait_count(&proc, "config reloaded", 1);
    // `a` was not touched: its file was opened once and nothing was sent again.
    let stderr = proc.stderr_now();
    assert_eq!(
        stderr.matches("tailing file source=a").count(),
        1,
        "{stderr}"
    );
    assert_eq!(first.with(|t| t.duplicates()), 0);

    // Removing `a` stops it; its endpoint gets nothing more.
    std::fs::write(
        &config,
        format!(
            "data_dir = {}\n\n{}",
            toml_str(ws.data_dir()),
            pipeline("b", &b, &second.url(), "")
        ),
    )
    .unwrap();
    wait_count(&proc, "config reloaded", 2);
    ws.append("a.json", small_lines(50..60));
    ws.append("b.json", small_lines(70..80));
    assert!(second.wait_until(WAIT, |t| t.has_all(80)));
    assert!(!first.wait_until(Duration::from_millis(300), |t| t.distinct() > 50));
    proc.sigterm();
    proc.wait().assert_code(0);
}

/// Regression: a reload adding a TCP source on an address another process holds stopped
/// every pipeline and flaghook exited 1 (under systemd, `Restart=on-failure` then failed on
/// the same config again and again), and one adding `[api]` on such an address left the
/// API off; both messages showed the address, which came from the environment. Such a
/// reload is refused now, as an invalid config is: logged naming the key, and the pipelines
/// go on as they were.
#[test]
fn a_reload_whose_new_listener_cannot_listen_is_refused_and_the_pipelines_go_on() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let a = ws.path("a.json");
    write_small_events(&a, 0..10);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let base = pipeline("a", &a, &hook.url(), "");
    let config = ws.config(&base);
    let mut cmd = run_cmd(&config);
    cmd.env("TAKEN_ADDR", &taken_addr);
    let proc = Proc::spawn(cmd);
    assert!(
        hook.wait_until(WAIT, |t| t.has_all(10)),
        "{}",
        proc.stderr_now()
    );

    let tcp = format!(
        "[sources.t]\ntype = \"tcp\"\naddress = \"${{TAKEN_ADDR}}\"\n\n[sinks.t_hook]\ntype = \"webhook\"\ninputs = [\"t\"]\nendpoint_url = {}\n",
        toml_str(hook.url())
    );
    let api = "[api]\naddress = \"${TAKEN_ADDR}\"\n".to_owned();
    for (n, (extra, key)) in [(tcp, "`sources.t.address`"), (api, "`api.address`")]
        .into_iter()
        .enumerate()
    {
        let text = format!("data_dir = {}\n\n{base}\n{extra}", toml_str(ws.data_dir()));
        std::fs::write(&config, text).unwrap();
        proc.sighup();
        wait_count(&proc, "config reload refused", n + 1);
        let stderr = proc.stderr_now();
        let refused = stderr.lines().rfind(|l| l.contains("refused"));
        assert!(
            refused.is_some_and(|l| l.contains(key) && l.contains("${TAKEN_ADDR}")),
            "{stderr}"
        );
        // The running pipeline was not touched.
        let from = 10 + 10 * n as u64;
        append(&a, small_lines(from..from + 10));
        assert!(
            hook.wait_until(WAIT, |t| t.has_all(from + 10)),
            "{}",
            proc.stderr_now()
        );
    }
    let stderr = proc.stderr_now();
    assert!(!stderr.contains(&taken_addr), "{stderr}");
    assert_eq!(
        stderr.matches("tailing file source=a").count(),
        1,
        "{stderr}"
    );
    proc.sigterm();
    proc.wait().assert_code(0);
    drop(taken);
}

/// A changed sink restarts its TCP source on the same address: the reload is not refused
/// for an address its own stopping pipeline frees, and the source listens again.
#[test]
fn a_reload_restarts_a_tcp_pipeline_on_the_address_it_frees() {
    let hook = Endpoint::start();
    let ws = Workspace::new();
    let sink = "flush_interval = \"50ms\"";
    let (config, addr) = ws.tcp_pipeline(&hook.url(), "", sink);
    let proc = Proc::spawn(run_cmd(&config));
    let mut conn = connect(&addr, &proc);
    conn.write_all(small_lines(0..10).as_bytes()).unwrap();
    drop(conn);
    assert!(hook.wait_until(WAIT, |t| t.has_all(10)));

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(sink, "flush_interval = \"60ms\"")).unwrap();
    proc.sighup();
    wait_count(&proc, "config reloaded", 1);
    let mut conn = connect(&addr, &proc);
    conn.write_all(small_lines(10..20).as_bytes()).unwrap();
    drop(conn);
    assert!(
        hook.wait_until(WAIT, |t| t.has_all(20)),
        "{}",
        proc.stderr_now()
    );
    assert!(!proc.stderr_now().contains("refused"));
    proc.sigterm();
    proc.wait().assert_code(0);
}
