//! Proxies: flaghook's requests through a real HTTP proxy, Debian's tinyproxy
//! (`tinyproxy-bin`, installed by `.ci/run`), started by each test on a loopback port with
//! a config it writes. A plain http endpoint gets the request through the proxy (which adds
//! its `Via` header); an https one through a `CONNECT` tunnel (the proxy's log has the
//! CONNECT, the TLS server the body). The proxy comes from the environment (set on the
//! child's command only: the harness removes the test process's own proxy variables) or
//! from the sink's `proxy` key, with Basic credentials that are sent and never shown.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::tls::{Ca, TlsServer};

/// A tinyproxy on a loopback port; killed when dropped.
struct Tinyproxy {
    port: u16,
    child: Child,
    log: PathBuf,
}

impl Tinyproxy {
    /// Starts one with `extra` config lines (None: tinyproxy is not installed, and the test
    /// is skipped outside CI).
    fn start(ws: &Workspace, extra: &str) -> Option<Tinyproxy> {
        let binary = peer("tinyproxy", "tinyproxy-bin")?;
        let port = free_port();
        let log = ws.path("tinyproxy.log");
        let conf = ws.write(
            "tinyproxy.conf",
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 50\nLogLevel Connect\nLogFile {log:?}\n{extra}\n",
            ),
        );
        let child = Command::new(binary)
            .args(["-d", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy");
        let mut proxy = Tinyproxy { port, child, log };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = proxy.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "tinyproxy did not listen on {port} ({exited:?}):\n{}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(proxy)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The proxy's log: one `Request (file descriptor N): METHOD TARGET HTTP/1.1` line for
    /// each request it took.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The requests it took (`METHOD TARGET`), from its log.
    fn requests(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("): ").filter(|_| l.contains("Request (")))
            .map(|(_, request)| request.trim_end_matches(" HTTP/1.1").to_owned())
            .collect()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SINK: &str = r#"flush_interval = "100ms"
retry_initial_backoff = "50ms"
retry_max_backoff = "200ms"
timeout = "5s""#;

/// A `--once` run over two events to `url`, with `sink_extra` and `env` on the command.
fn run_through(ws: &Workspace, url: &str, sink_extra: &str, env: &[(&str, String)]) -> Output {
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 2)),
        url,
        &format!("{SINK}\n{sink_extra}"),
    );
    let mut cmd = run_once_cmd(&config);
    for (name, value) in env {
        cmd.env(name, value);
    }
    Proc::spawn(cmd).wait()
}

/// Whether the endpoint got every request through tinyproxy (its `Via` header).
fn via_tinyproxy(hook: &Endpoint) -> Vec<bool> {
    hook.requests()
        .iter()
        .map(|r| r.header("via").is_some_and(|v| v.contains("tinyproxy")))
        .collect()
}

/// `HTTP_PROXY` carries an http endpoint's requests, loopback included (GO Feature
/// Flag's Go client would skip the proxy for 127.0.0.1; flaghook, like curl, does not);
/// NO_PROXY naming the host, or `proxy = "none"`, sends them straight again.
#[test]
fn http_proxy_carries_an_http_endpoint_unless_no_proxy_names_it() {
    let ws = Workspace::new();
    let Some(proxy) = Tinyproxy::start(&ws, "") else {
        return;
    };
    let hook = Endpoint::start();
    let out = run_through(&ws, &hook.url(), "", &[("HTTP_PROXY", proxy.url())]);
    out.assert_code(0);
    assert_eq!(out.summary().events_delivered, 2, "{out}");
    assert_eq!(via_tinyproxy(&hook), [true], "{out}");
    let target = format!("POST {}", hook.url());
    assert_eq!(
        proxy.requests(),
        std::slice::from_ref(&target),
        "{}",
        proxy.log()
    );

    for (no_proxy, setting) in [
        ("127.0.0.1", ""),
        ("example.com, 127.0.0.0/8", ""),
        ("", "proxy = \"none\""),
    ] {
        let hook = Endpoint::start();
        let ws = Workspace::new();
        let env = [
            ("http_proxy", proxy.url()),
            ("no_proxy", no_proxy.to_owned()),
        ];
        let out = run_through(&ws, &hook.url(), setting, &env);
        out.assert_code(0);
        assert_eq!(via_tinyproxy(&hook), [false], "{no_proxy} {setting}: {out}");
    }
    assert_eq!(proxy.requests(), [target], "{}", proxy.log());
}

/// `https_proxy` carries an https endpoint's requests in a CONNECT tunnel; TLS runs end
/// to end inside it (verified against `tls.ca_file`), so the proxy sees only the CONNECT.
#[test]
fn https_proxy_tunnels_an_https_endpoint_with_connect() {
    let ws = Workspace::new();
    let Some(proxy) = Tinyproxy::start(&ws, "") else {
        return;
    };
    let ca = Ca::new("proxied CA");
    let server = TlsServer::serving(&ca.server(&["127.0.0.1"]));
    let ca_file = ws.write("ca.pem", &ca.pem);
    let url = format!("https://127.0.0.1:{}/hook", server.port);
    let out = run_through(
        &ws,
        &url,
        &format!("tls.ca_file = {}", toml_str(&ca_file)),
        &[
            ("https_proxy", proxy.url()),
            ("HTTP_PROXY", "http://127.0.0.1:1".into()),
        ],
    );
    out.assert_code(0);
    assert_eq!(server.bodies().len(), 1, "{out}");
    assert_eq!(
        proxy.requests(),
        [format!("CONNECT 127.0.0.1:{}", server.port)],
        "{}",
        proxy.log()
    );
}

/// The sink's `proxy` key, with the user and password of a proxy that asks for them
/// (tinyproxy's `BasicAuth`): sent as `Proxy-Authorization` for an http endpoint and in
/// the CONNECT for an https one, and never shown, even at trace level.
#[test]
fn proxy_key_with_basic_auth() {
    let ws = Workspace::new();
    let Some(proxy) = Tinyproxy::start(&ws, "BasicAuth flag s3cr3t-pw") else {
        return;
    };
    let with_credentials = format!("http://flag:s3cr3t-pw@127.0.0.1:{}", proxy.port);
    let setting = format!("proxy = {}", toml_str(&with_credentials));
    let trace = [("RUST_LOG", "trace".to_owned())];
    let hidden = ["s3cr3t-pw", "ZmxhZzpzM2NyM3QtcHc="]; // the password, base64("flag:s3cr3t-pw")

    let hook = Endpoint::start();
    let out = run_through(&ws, &hook.url(), &setting, &trace);
    out.assert_code(0);
    assert_eq!(via_tinyproxy(&hook), [true], "{out}");

    let ca = Ca::new("auth CA");
    let server = TlsServer::serving(&ca.server(&["127.0.0.1"]));
    let ws_tls = Workspace::new();
    let ca_file = ws_tls.write("ca.pem", &ca.pem);
    let url = format!("https://127.0.0.1:{}/hook", server.port);
    let extra = format!("{setting}\ntls.ca_file = {}", toml_str(&ca_file));
    let out_tls = run_through(&ws_tls, &url, &extra, &trace);
    out_tls.assert_code(0);
    assert_eq!(server.bodies().len(), 1, "{out_tls}");
    for output in [&out, &out_tls] {
        for secret in hidden {
            assert!(!output.stderr.contains(secret), "{secret} shows:\n{output}");
            assert!(!output.stdout.contains(secret), "{secret} shows:\n{output}");
        }
    }
    let validated = validate(&ws_tls.path("flaghook.toml"));
    validated.assert_code(0);
    assert!(
        validated
            .stdout
            .contains("through the proxy set by `sinks.webhook.proxy`")
            && !hidden.iter().any(|h| validated.stdout.contains(h)),
        "{validated}"
    );
}

/// A proxy that asks for credentials (407) or refuses them (tinyproxy answers 401) holds
/// the events for a retry: nothing is dead-lettered, and the warning says what the proxy
/// answered, without the credentials.
#[test]
fn proxy_asking_for_credentials_is_retried() {
    let ws = Workspace::new();
    let Some(proxy) = Tinyproxy::start(&ws, "BasicAuth flag s3cr3t-pw") else {
        return;
    };
    let port = proxy.port;
    for (url, answer) in [
        (format!("http://127.0.0.1:{port}"), "status 407"),
        (
            format!("http://flag:wr0ng-pw@127.0.0.1:{port}"),
            "status 401",
        ),
    ] {
        let ws = Workspace::new();
        let hook = Endpoint::start();
        let config = ws.file_pipeline(
            jsonl(&feature_events(0, 2)),
            &hook.url(),
            &format!("{SINK}\nproxy = {}", toml_str(&url)),
        );
        let before = proxy.requests().len();
        let run = Proc::spawn(run_cmd(&config));
        let deadline = Instant::now() + WAIT;
        while proxy.requests().len() < before + 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        run.sigterm();
        let out = run.wait();
        assert!(proxy.requests().len() >= before + 3, "not retried:\n{out}");
        assert!(out.stderr.contains(answer), "{out}");
        assert!(hook.requests().is_empty(), "{out}");
        assert!(dead_letters(&ws.data_dir(), "webhook").is_empty(), "{out}");
        assert!(!out.stderr.contains("wr0ng-pw"), "{out}");
    }
}

/// A proxy variable that does not parse is an error at start that names the variable and
/// never shows its value (which may hold a password).
#[test]
fn a_bad_proxy_variable_is_named_not_shown() {
    let ws = Workspace::new();
    let config = ws.file_pipeline("", "https://127.0.0.1:1/hook", "");
    let mut cmd = flaghook(&["validate", "--config"]);
    cmd.arg(&config)
        .env("HTTPS_PROXY", "https://user:pa55word@corp-gw.example:3128");
    let out = Proc::spawn(cmd).wait();
    out.assert_code(1);
    assert!(
        out.stderr.contains("HTTPS_PROXY") && out.stderr.contains("https:// proxy"),
        "{out}"
    );
    assert!(
        !out.stderr.contains("pa55word") && !out.stderr.contains("corp-gw"),
        "{out}"
    );
}

/// Regression: a config line that does not parse was quoted in the error, a proxy's (or
/// `endpoint_url`'s) password with it. A parse error names the line's key, not its value.
#[test]
fn a_line_with_url_credentials_that_does_not_parse_is_not_quoted() {
    for line in [
        r#"proxy = "http://flag:s3cr3t-pw@127.0.0.1:3128"#,
        r#"endpoint_url = "https://flag:s3cr3t-pw@collector.example/hook"#,
    ] {
        let ws = Workspace::new();
        let config = ws.config(&format!(
            "[sources.in]\ntype = \"stdin\"\n\n[sinks.webhook]\ntype = \"webhook\"\ninputs = [\"in\"]\n{line}\n"
        ));
        let out = validate(&config);
        out.assert_code(1);
        // The key is named, never its value.
        assert!(out.stderr.contains("= … (value not shown)"), "{out}");
        assert!(!out.stderr.contains("s3cr3t-pw"), "{out}");
    }
}
