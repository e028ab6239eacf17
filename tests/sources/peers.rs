//! flaghook chained after real shippers installed from a registry. A missing peer skips the
//! test on a developer's machine and fails it in CI (`CI` set), where `.ci/run` installs it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// Kills the child when dropped, so a failing test leaves no daemon behind.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The configuration of `pipelines/syslog-ng-tcp.toml`'s comment, with test paths: every
/// GO Feature Flag line arrives at the webhook byte for byte.
#[test]
fn syslog_ng_network_with_msg_template() {
    let Some(syslog_ng) = peer("syslog-ng", "syslog-ng-core") else {
        return;
    };
    let server = Endpoint::start();
    let ws = Workspace::new();
    let port = free_port();
    let config = ws.config(&format!(
        r#"[sources.from_syslog_ng]
type = "tcp"
address = "127.0.0.1:{port}"

[sinks.webhook]
type = "webhook"
inputs = ["from_syslog_ng"]
endpoint_url = {url}
flush_interval = "100ms"
"#,
        url = toml_str(server.url())
    ));
    let flaghook = Proc::spawn({
        let mut cmd = flaghook(&["run", "--config"]);
        cmd.arg(&config);
        cmd
    });
    flaghook
        .wait_stderr("listening", WAIT)
        .expect("flaghook listens");

    let mut events = feature_events(0, 300);
    events.extend((300..600).map(tracking_event));
    let input = ws.write("flag-variation.json", jsonl(&events));
    let dir = ws.path("syslog-ng");
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("syslog-ng.conf");
    std::fs::write(
        &conf,
        format!(
            r#"@version: 3.38
options {{ stats-freq(0); }};
source s_goff {{
  file({input} flags(no-parse) follow-freq(0.1));
}};
destination d_flaghook {{
  network("127.0.0.1" port({port}) transport("tcp") template("$MSG\n"));
}};
log {{ source(s_goff); destination(d_flaghook); flags(flow-control); }};
"#,
            input = toml_str(&input),
        ),
    )
    .unwrap();
    let _syslog_ng = Daemon(
        Command::new(syslog_ng)
            .args(["-F", "--no-caps", "-f"])
            .arg(&conf)
            .arg("-R")
            .arg(dir.join("persist"))
            .arg("-p")
            .arg(dir.join("pid"))
            .arg("-c")
            .arg(dir.join("ctl"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start syslog-ng"),
    );

    let mut got = server.wait_for_delivered(events.len(), Duration::from_secs(30));
    got.sort();
    let mut want = events.clone();
    want.sort();
    assert_eq!(got, want, "flaghook stderr:\n{}", flaghook.stderr_now());
    flaghook.sigterm();
    let out = flaghook.wait();
    assert!(!out.stderr.contains("bad line"), "{out}");
}
