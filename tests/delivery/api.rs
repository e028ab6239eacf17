//! `[api]`: `/metrics` scraped while a pipeline runs, its counters checked against what the
//! endpoint received and its exposition against Debian's `promtool check metrics`; `/health`
//! turning 503 when the endpoint fails for longer than `unhealthy_after`, and back.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

/// `GET path` on `addr`: (status, body). None while nothing listens there.
pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: flaghook\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Waits until the API answers on `addr`, then returns `GET path`.
pub fn get_when_up(addr: &str, path: &str, proc: &Proc) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(answer) = get(addr, path) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "the API never answered on {addr}:\n{}",
            proc.stderr_now()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The samples of an exposition: `name{labels}` -> value (comments left out).
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Polls `/metrics` until `pred` holds over its samples; returns the last ones.
pub fn metrics_until(
    addr: &str,
    proc: &Proc,
    pred: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get_when_up(addr, "/metrics", proc);
        assert_eq!(status, 200, "{body}");
        let samples = samples(&body);
        if pred(&samples) || Instant::now() >= deadline {
            return samples;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in {samples:#?}"))
}

fn api_table(addr: &str, extra: &str) -> String {
    format!("[api]\naddress = {}\n{extra}\n", toml_str(addr))
}

const SINK: &str = r#"flush_interval = "100ms"
max_event_in_memory = 50
retry_initial_backoff = "50ms"
retry_max_backoff = "100ms""#;

#[test]
fn metrics_match_what_the_endpoint_received_while_the_pipeline_runs() {
    let endpoint = Endpoint::start();
    let ws = Workspace::new();
    let addr = format!("127.0.0.1:{}", free_port());
    // 300 events and 2 bad lines first; 200 more once the first are counted.
    let mut first = small_lines(0..300);
    first.push_str("not json\n{\"kind\":\"feature\"}\n");
    let config = ws.file_pipeline(&first, &endpoint.url(), SINK);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n{}", api_table(&addr, ""))).unwrap();
    let proc = Proc::spawn(run_cmd(&config));

    let delivered = "flaghook_sink_events_delivered_total{sink=\"webhook\"}";
    let invalid = "flaghook_sink_events_rejected_total{sink=\"webhook\",reason=\"invalid\"}";
    // Blocks are cut to 100 lines here (the budget of 50-event batches): the bad lines'
    // block may be decoded after the 300 events are delivered, so both are waited for.
    let at = metrics_until(&addr, &proc, |s| {
        s.get(delivered) == Some(&300.0) && s.get(invalid) == Some(&2.0)
    });
    assert_eq!(value(&at, delivered), 300.0, "{}", proc.stderr_now());
    assert_eq!(endpoint.with(|t| t.delivered), 300);
    let requests_2xx = "flaghook_sink_requests_total{sink=\"webhook\",status=\"2xx\"}";
    assert_eq!(
        value(&at, requests_2xx),
        endpoint.with(|t| t.ok_requests) as f64
    );
    assert_eq!(value(&at, invalid), 2.0);
    let read = "flaghook_source_events_read_total{source=\"in\"}";
    assert_eq!(value(&at, read), 302.0);

    ws.append("events.json", small_lines(300..500));
    let lag = "flaghook_source_lag_bytes{source=\"in\"}";
    let in_memory = "flaghook_sink_events_in_memory{sink=\"webhook\"}";
    let at = metrics_until(&addr, &proc, |s| {
        s.get(delivered) == Some(&500.0)
            && s.get(lag) == Some(&0.0)
            && s.get(in_memory) == Some(&0.0)
    });
    assert!(endpoint.wait_until(WAIT, |t| t.has_all(500)));
    assert_eq!(value(&at, delivered), endpoint.with(|t| t.delivered) as f64);
    assert_eq!(value(&at, read), 502.0);
    assert_eq!(value(&at, lag), 0.0, "every byte of the file was delivered");
    assert_eq!(value(&at, in_memory), 0.0);
    assert_eq!(
        value(&at, requests_2xx),
        endpoint.with(|t| t.ok_requests) as f64
    );
    let last = value(
        &at,
        "flaghook_sink_last_delivery_timestamp_seconds{sink=\"webhook\"}",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(last > now - 60.0 && last <= now + 1.0, "{last} vs {now}");
    let count = "flaghook_sink_request_duration_seconds_count{sink=\"webhook\"}";
    assert_eq!(value(&at, count), endpoint.with(|t| t.ok_requests) as f64);
    assert_eq!(value(&at, "flaghook_build_info{version=\"0.1.0\"}"), 1.0);
    proc.sigterm();
    proc.wait().assert_code(0);
}

/// Every line a source read is accounted for by its sink: delivered, rejected, or skipped
/// (blank, or an event of a kind `event_types` leaves out). Blank and filtered lines were
/// counted as read and nowhere else, so the counters did not add up.
#[test]
fn every_line_read_is_delivered_rejected_or_skipped() {
    let endpoint = Endpoint::start();
    let ws = Workspace::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut lines = String::new();
    for i in 0..40 {
        lines.push_str(&feature_event(i));
        lines.push('\n');
        if i % 10 == 0 {
            lines.push_str(&tracking_event(i));
            lines.push('\n');
        }
        if i % 20 == 0 {
            lines.push_str("\n   \n");
        }
    }
    lines.push_str("not json\n");
    let sink = format!("{SINK}\nevent_types = [\"feature\"]");
    let config = ws.file_pipeline(&lines, &endpoint.url(), &sink);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n{}", api_table(&addr, ""))).unwrap();
    let proc = Proc::spawn(run_cmd(&config));

    let series = |name: &str, reason: Option<&str>| match reason {
        Some(r) => format!("flaghook_sink_events_{name}_total{{sink=\"webhook\",reason=\"{r}\"}}"),
        None => format!("flaghook_sink_events_{name}_total{{sink=\"webhook\"}}"),
    };
    let (delivered, invalid) = (
        series("delivered", None),
        series("rejected", Some("invalid")),
    );
    let (blank, filtered) = (
        series("skipped", Some("blank")),
        series("skipped", Some("filtered")),
    );
    let read = "flaghook_source_events_read_total{source=\"in\"}";
    let at = metrics_until(&addr, &proc, |s| {
        s.get(&delivered) == Some(&40.0) && s.get(&invalid) == Some(&1.0)
    });
    assert!(endpoint.wait_until(WAIT, |t| t.has_all(40)));
    assert_eq!(value(&at, &blank), 4.0, "{at:#?}");
    assert_eq!(value(&at, &filtered), 4.0, "{at:#?}");
    assert_eq!(value(&at, read), 40.0 + 4.0 + 4.0 + 1.0);
    assert_eq!(
        value(&at, read),
        value(&at, &delivered) + value(&at, &invalid) + value(&at, &blank) + value(&at, &filtered)
    );
    proc.sigterm();
    proc.wait().assert_code(0);
}

/// Debian's promtool: `PROMTOOL`, else on the PATH, else where `.ci/run` unpacks it.
fn promtool() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PROMTOOL") {
        return Some(path.into());
    }
    let on_path = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        return Some("promtool".into());
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let unpacked = home.join("flaghook-ci/prometheus/usr/bin/promtool");
    unpacked.exists().then_some(unpacked)
}

#[test]
fn promtool_accepts_the_exposition() {
    let Some(promtool) = promtool() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing in CI: .ci/run unpacks Debian's `prometheus` package"
        );
        eprintln!(
            "skipped: no promtool (run .ci/run, or `apt-get download prometheus` and `dpkg -x` it)"
        );
        return;
    };
    // Every kind of series: delivered, rejected, failed requests and retries, a histogram.
    let fail_first = Arc::new(AtomicBool::new(true));
    let flag = fail_first.clone();
    let endpoint = Endpoint::with_responder(move |_| match flag.swap(false, Ordering::SeqCst) {
        true => Reply::status(503),
        false => Reply::ok(),
    });
    let ws = Workspace::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut lines = small_lines(0..100);
    lines.push_str("not json\n");
    let config = ws.file_pipeline(&lines, &endpoint.url(), SINK);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n{}", api_table(&addr, ""))).unwrap();
    let proc = Proc::spawn(run_cmd(&config));
    let delivered = "flaghook_sink_events_delivered_total{sink=\"webhook\"}";
    metrics_until(&addr, &proc, |s| s.get(delivered) == Some(&100.0));
    let (_, exposition) = get_when_up(&addr, "/metrics", &proc);
    assert!(
        exposition.contains("flaghook_sink_retries_total{sink=\"webhook\"} 1"),
        "{exposition}"
    );

    let mut check = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n{exposition}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Each metric declared once, with its HELP and TYPE.
    for line in exposition.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(exposition.contains(&format!("# HELP {name} ")), "{name}");
    }
    proc.sigterm();
    proc.wait();
}

#[test]
fn health_is_503_while_the_endpoint_fails_longer_than_unhealthy_after_and_200_again() {
    let up = Arc::new(AtomicBool::new(false));
    let endpoint = Endpoint::up_when(&up, Reply::status(503).body("overloaded, come back later"));
    let ws = Workspace::new();
    let addr = format!("127.0.0.1:{}", free_port());
    // Credentials in the URL and a secret: neither may show in /health.
    let url = endpoint
        .url()
        .replace("http://", "http://hook-user:url-pass-9f3@");
    let sink = format!("{SINK}\nsecret = \"signing-secret-51c\"");
    let config = ws.file_pipeline(small_lines(0..20), &url, &sink);
    let text = std::fs::read_to_string(&config).unwrap();
    let api = api_table(&addr, "unhealthy_after = \"1s\"");
    std::fs::write(&config, format!("{text}\n{api}")).unwrap();
    let proc = Proc::spawn(run_cmd(&config));

    // 503 while starting too: waits for the status named in the body.
    let health_until = |want: &str| {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = get_when_up(&addr, "/health", &proc);
            if body.contains(&format!("\"status\":\"{want}\"")) || Instant::now() >= deadline {
                return (status, body);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (status, body) = health_until("failing");
    assert_eq!(status, 503, "{body}\n{}", proc.stderr_now());
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "failing", "{body}");
    assert_eq!(health["failing"][0]["sink"], "webhook", "{body}");
    let last = health["failing"][0]["last_failure"].as_str().unwrap();
    assert!(
        last.contains("503") && last.contains("overloaded"),
        "{body}"
    );
    assert!(
        health["failing"][0]["failing_for_seconds"]
            .as_u64()
            .unwrap()
            >= 1
    );
    for secret in ["url-pass-9f3", "hook-user", "signing-secret-51c"] {
        assert!(!body.contains(secret), "{body}");
    }

    up.store(true, Ordering::SeqCst);
    let (status, body) = health_until("ok");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), r#"{"status":"ok"}"#);
    assert!(endpoint.wait_until(WAIT, |t| t.has_all(20)));
    proc.sigterm();
    proc.wait().assert_code(0);
}

#[test]
fn health_says_starting_until_the_file_sources_opened_their_files() {
    // Many files, so that the first scan takes a while; the endpoint refuses everything,
    // so that the lag stays every byte of them.
    let endpoint = Endpoint::with_responder(|_| Reply::status(503));
    let ws = Workspace::new();
    let mut total = 0;
    for i in 0..3000 {
        let line = small_lines(i..i + 1);
        total += line.len();
        ws.write(&format!("logs/{i}.json"), line);
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let config = ws.config(&format!(
        "[sources.in]\ntype = \"file\"\ninclude = [{}]\n\n[sinks.webhook]\ntype = \"webhook\"\ninputs = [\"in\"]\nendpoint_url = {}\n{SINK}\n\n{}",
        toml_str(ws.path("logs").join("*.json")),
        toml_str(endpoint.url()),
        api_table(&addr, "unhealthy_after = \"10m\""),
    ));
    let proc = Proc::spawn(run_cmd(&config));

    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get_when_up(&addr, "/health", &proc);
        if status == 200 {
            break;
        }
        assert!(body.contains(r#""status":"starting""#), "{body}");
        assert!(Instant::now() < deadline, "{body}\n{}", proc.stderr_now());
        std::thread::sleep(Duration::from_millis(5));
    }
    // Ok only once every matched file is tailed: all their bytes are the lag.
    let (_, body) = get_when_up(&addr, "/metrics", &proc);
    let lag = value(&samples(&body), "flaghook_source_lag_bytes{source=\"in\"}");
    assert_eq!(lag, total as f64, "{}", proc.stderr_now());
    proc.sigterm();
    proc.wait();
}

#[test]
fn a_bad_api_table_names_its_key() {
    let ws = Workspace::new();
    let config = ws.file_pipeline(small_lines(0..1), "http://127.0.0.1:9/hook", "");
    let text = std::fs::read_to_string(&config).unwrap();
    for (api, key) in [
        ("[api]\naddress = \"nowhere\"\n", "`api.address`"),
        (
            "[api]\naddress = \"127.0.0.1:0\"\nunhealthy_after = \"0s\"\n",
            "`api.unhealthy_after`",
        ),
        ("[api]\naddres = \"127.0.0.1:0\"\n", "api"),
    ] {
        std::fs::write(&config, format!("{text}\n{api}")).unwrap();
        let out = validate(&config);
        out.assert_code(1);
        assert!(
            out.stderr.contains(key) && out.stderr.contains("example"),
            "{}",
            out.stderr
        );
    }
}

/// A TCP source's journal in `/metrics`: the lines journaled, the journal's bytes on the
/// disk and its lag (bytes no sink has delivered) while the endpoint fails; the lag back to
/// 0 once the endpoint accepts them all.
#[test]
fn a_tcp_sources_journal_is_counted_while_the_endpoint_fails() {
    let endpoint = Endpoint::scripted(Vec::new(), Reply::status(503));
    let ws = Workspace::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let (config, tcp) = ws.tcp_pipeline(&endpoint.url(), "", SINK);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n{}", api_table(&addr, ""))).unwrap();
    let proc = Proc::spawn(run_cmd(&config));
    let lines = small_lines(0..200);
    let mut conn = connect(&tcp, &proc);
    conn.write_all(lines.as_bytes()).unwrap();

    let journaled = "flaghook_source_events_journaled_total{source=\"tcp\"}";
    let on_disk = "flaghook_source_journal_bytes{source=\"tcp\"}";
    let lag = "flaghook_source_lag_bytes{source=\"tcp\"}";
    let at = metrics_until(&addr, &proc, |s| {
        s.get(journaled) == Some(&200.0) && s.get(lag) == Some(&(lines.len() as f64))
    });
    assert_eq!(value(&at, journaled), 200.0, "{}", proc.stderr_now());
    assert_eq!(value(&at, on_disk), lines.len() as f64);
    assert_eq!(value(&at, lag), lines.len() as f64, "nothing is delivered");

    endpoint.set_default(Reply::ok());
    let delivered = "flaghook_sink_events_delivered_total{sink=\"webhook\"}";
    let at = metrics_until(&addr, &proc, |s| {
        s.get(delivered) == Some(&200.0) && s.get(lag) == Some(&0.0)
    });
    assert!(endpoint.wait_until(WAIT, |t| t.has_all(200)));
    assert_eq!(value(&at, lag), 0.0, "every journaled byte was delivered");
    assert_eq!(value(&at, journaled), 200.0);
    drop(conn);
    proc.sigterm();
    proc.wait().assert_code(0);
}

/// Regression: a sink and a source removed by a reload and added back by the next one
/// started counting from zero again. Prometheus kept their old values (a counter never goes
/// down), so `/metrics` stopped counting what the endpoint got, and the progress line
/// computed "delivered since the last line" below zero (a debug build panicked the
/// progress task; a release build printed 18446744073709551436).
#[test]
fn a_sink_removed_and_added_back_by_reloads_counts_on() {
    let endpoint = Endpoint::start();
    let ws = Workspace::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let (a, b) = (ws.path("a.json"), ws.path("b.json"));
    write_small_events(&a, 0..10);
    write_small_events(&b, 100..300);
    let pipeline = |name: &str, file: &std::path::Path| {
        format!(
            "[sources.{name}]\ntype = \"file\"\ninclude = [{}]\n\n[sinks.{name}_hook]\ntype = \"webhook\"\ninputs = [\"{name}\"]\nendpoint_url = {}\n{SINK}\n\n",
            toml_str(file),
            toml_str(endpoint.url())
        )
    };
    let head = format!("progress_interval = \"1s\"\n\n{}", api_table(&addr, ""));
    let with_b = format!("{head}{}{}", pipeline("a", &a), pipeline("b", &b));
    let config = ws.config(&with_b);
    let data_dir = format!("data_dir = {}\n", toml_str(ws.data_dir()));
    let proc = Proc::spawn(run_cmd(&config));
    let delivered = "flaghook_sink_events_delivered_total{sink=\"b_hook\"}";
    let read = "flaghook_source_events_read_total{source=\"b\"}";
    let at = metrics_until(&addr, &proc, |s| s.get(delivered) == Some(&200.0));
    assert_eq!(value(&at, delivered), 200.0, "{}", proc.stderr_now());
    assert!(proc
        .wait_stderr("sink=b_hook delivered=200 ", WAIT)
        .is_some());

    // Removed, then added back with 20 more events in its file.
    std::fs::write(&config, format!("{data_dir}{head}{}", pipeline("a", &a))).unwrap();
    proc.sighup();
    assert!(proc.wait_stderr("config reloaded", WAIT).is_some());
    append(&b, small_lines(300..320));
    std::fs::write(&config, format!("{data_dir}{with_b}")).unwrap();
    proc.sighup();
    // a's 10 events and b's 220, each once.
    assert!(
        endpoint.wait_until(WAIT, |t| t.distinct() == 230),
        "{}",
        proc.stderr_now()
    );
    assert_eq!(endpoint.with(|t| t.duplicates()), 0);
    let at = metrics_until(&addr, &proc, |s| s.get(delivered) == Some(&220.0));
    assert_eq!(
        value(&at, delivered),
        endpoint.with(|t| t.delivered) as f64 - 10.0,
        "b_hook's counter does not match what the endpoint got from it"
    );
    assert_eq!(value(&at, read), 220.0);
    assert!(
        proc.wait_stderr("sink=b_hook delivered=20 ", WAIT)
            .is_some(),
        "no progress line counting the 20 new events:\n{}",
        proc.stderr_now()
    );
    proc.sigterm();
    proc.wait().assert_code(0);
}

/// With several requests in flight, answered out of order, split (413) and failed (503)
/// among them, `/metrics` counts what the endpoint answered: requests by status class,
/// retries, and the events it accepted.
#[test]
fn metrics_match_the_endpoint_with_requests_in_flight_splits_and_retries() {
    use std::sync::atomic::AtomicU64;
    let (too_large, unavailable) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (t, u) = (too_large.clone(), unavailable.clone());
    let endpoint = Endpoint::with_responder(move |req| {
        let delay = Duration::from_millis(5 * (req.index % 4) as u64);
        if req.ids.len() > 5 {
            t.fetch_add(1, Ordering::SeqCst);
            Reply::status(413).delay(delay)
        } else if req.index % 3 == 0 {
            u.fetch_add(1, Ordering::SeqCst);
            Reply::status(503).delay(delay)
        } else {
            Reply::ok().delay(delay)
        }
    });
    let ws = Workspace::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let sink = "flush_interval = \"50ms\"\nmax_event_in_memory = 8\nrequest_concurrency = 4\nretry_initial_backoff = \"20ms\"\nretry_max_backoff = \"50ms\"";
    let config = ws.file_pipeline(small_lines(0..300), &endpoint.url(), sink);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n{}", api_table(&addr, ""))).unwrap();
    let proc = Proc::spawn(run_cmd(&config));
    assert!(
        endpoint.wait_until(WAIT, |t| t.has_all(300)),
        "{}",
        proc.stderr_now()
    );

    let delivered = "flaghook_sink_events_delivered_total{sink=\"webhook\"}";
    let invalid = "flaghook_sink_events_rejected_total{sink=\"webhook\",reason=\"invalid\"}";
    // Blocks are cut to 100 lines here (the budget of 50-event batches): the bad lines'
    // block may be decoded after the 300 events are delivered, so both are waited for.
    let at = metrics_until(&addr, &proc, |s| {
        s.get(delivered) == Some(&300.0) && s.get(invalid) == Some(&2.0)
    });
    let status = |class: &str| {
        value(
            &at,
            &format!("flaghook_sink_requests_total{{sink=\"webhook\",status=\"{class}\"}}"),
        )
    };
    endpoint.with(|t| {
        assert_eq!(value(&at, delivered), t.delivered as f64);
        assert_eq!(status("2xx"), t.ok_requests as f64);
    });
    assert_eq!(status("4xx"), too_large.load(Ordering::SeqCst) as f64);
    assert_eq!(status("5xx"), unavailable.load(Ordering::SeqCst) as f64);
    assert!(unavailable.load(Ordering::SeqCst) > 0 && too_large.load(Ordering::SeqCst) > 0);
    assert_eq!(
        value(&at, "flaghook_sink_retries_total{sink=\"webhook\"}"),
        unavailable.load(Ordering::SeqCst) as f64
    );
    assert_eq!(
        value(
            &at,
            "flaghook_sink_request_duration_seconds_count{sink=\"webhook\"}"
        ),
        endpoint.requests().len() as f64
    );
    proc.sigterm();
    proc.wait().assert_code(0);
}

/// The journals of a fluent and an http source in `/metrics`, as a TCP source's: the lines
/// journaled, the bytes on the disk and the lag while the endpoint fails; the lag back to 0
/// once it accepts them all.
#[test]
fn the_journals_of_fluent_and_http_sources_are_counted() {
    let endpoint = Endpoint::scripted(Vec::new(), Reply::status(503));
    let ws = Workspace::new();
    let (addr, web, fwd) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let config = ws.config(&format!(
        r#"[sources.web]
type = "http"
address = "{web}"

[sources.fwd]
type = "fluent"
address = "{fwd}"

[sinks.webhook]
type = "webhook"
inputs = ["web", "fwd"]
endpoint_url = {url}
{SINK}

{api}"#,
        url = toml_str(endpoint.url()),
        api = api_table(&addr, ""),
    ));
    let proc = Proc::spawn(run_cmd(&config));
    let body = small_lines(0..100);
    let mut conn = connect(&web, &proc);
    write!(
        conn,
        "POST / HTTP/1.1\r\nHost: f\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The same events as Forward records: their JSON is `small_event(id)`'s.
    let records = (100..150)
        .map(|id| {
            rmpv::Value::Array(vec![
                1_700_000_000.into(),
                rmpv::Value::Map(vec![
                    ("kind".into(), "feature".into()),
                    ("key".into(), "k".into()),
                    ("userKey".into(), format!("u{id}").into()),
                    ("creationDate".into(), 1_700_000_000.into()),
                ]),
            ])
        })
        .collect();
    let entry = rmpv::Value::Array(vec![
        "t".into(),
        rmpv::Value::Array(records),
        rmpv::Value::Map(vec![("chunk".into(), "c1".into())]),
    ]);
    let mut conn = connect(&fwd, &proc);
    rmpv::encode::write_value(&mut conn, &entry).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let ack = rmpv::decode::read_value(&mut conn).unwrap();
    assert_eq!(ack, rmpv::Value::Map(vec![("ack".into(), "c1".into())]));
    let forwarded = small_lines(100..150);

    let series =
        |name: &str, source: &str| format!("flaghook_source_{name}{{source=\"{source}\"}}");
    let at = metrics_until(&addr, &proc, |s| {
        s.get(&series("lag_bytes", "web")) == Some(&(body.len() as f64))
            && s.get(&series("lag_bytes", "fwd")) == Some(&(forwarded.len() as f64))
    });
    for (source, events, bytes) in [("web", 100.0, body.len()), ("fwd", 50.0, forwarded.len())] {
        assert_eq!(
            value(&at, &series("events_journaled_total", source)),
            events
        );
        assert_eq!(value(&at, &series("journal_bytes", source)), bytes as f64);
        assert_eq!(value(&at, &series("lag_bytes", source)), bytes as f64);
    }

    endpoint.set_default(Reply::ok());
    let at = metrics_until(&addr, &proc, |s| {
        s.get(&series("lag_bytes", "web")) == Some(&0.0)
            && s.get(&series("lag_bytes", "fwd")) == Some(&0.0)
    });
    assert!(endpoint.wait_until(WAIT, |t| t.has_all(150)));
    assert_eq!(value(&at, &series("events_journaled_total", "fwd")), 50.0);
    drop(conn);
    proc.sigterm();
    proc.wait().assert_code(0);
}

/// A reload that restarts a TCP pipeline opens its journal anew: the source's
/// `events_journaled_total` counts on from where it was, as a Prometheus counter must.
#[test]
fn a_journal_reopened_by_a_reload_counts_on() {
    let endpoint = Endpoint::start();
    let ws = Workspace::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let (config, tcp) = ws.tcp_pipeline(&endpoint.url(), "", SINK);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n{}", api_table(&addr, ""))).unwrap();
    let proc = Proc::spawn(run_cmd(&config));
    let journaled = "flaghook_source_events_journaled_total{source=\"tcp\"}";

    let mut conn = connect(&tcp, &proc);
    conn.write_all(small_lines(0..100).as_bytes()).unwrap();
    let at = metrics_until(&addr, &proc, |s| s.get(journaled) == Some(&100.0));
    assert_eq!(value(&at, journaled), 100.0, "{}", proc.stderr_now());
    assert!(endpoint.wait_until(WAIT, |t| t.has_all(100)));
    drop(conn);

    // A changed sink restarts the pipeline, its TCP source and its journal with it.
    let changed = text.replace("flush_interval = \"100ms\"", "flush_interval = \"150ms\"");
    assert_ne!(changed, text);
    std::fs::write(&config, format!("{changed}\n{}", api_table(&addr, ""))).unwrap();
    proc.sighup();
    assert!(proc.wait_stderr("config reloaded", WAIT).is_some());
    let mut conn = connect(&tcp, &proc);
    conn.write_all(small_lines(100..150).as_bytes()).unwrap();
    let at = metrics_until(&addr, &proc, |s| s.get(journaled) == Some(&150.0));
    assert_eq!(value(&at, journaled), 150.0, "{}", proc.stderr_now());
    assert!(endpoint.wait_until(WAIT, |t| t.has_all(150)));
    drop(conn);
    proc.sigterm();
    proc.wait().assert_code(0);
}
