//! Secrets and environment values: `${NAME}` is expanded inside parsed string values, so a
//! secret is signed with exactly its bytes whatever characters it holds; binary secrets
//! come as `secret_hex` / `secret_base64`; and no output ever shows a secret or a value
//! that came from the environment.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use crate::harness::*;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `sha256=<hex HMAC-SHA256(key, body)>`, for keys that are not text.
fn signature_of(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delivers one event with `sink_extra` in the sink and `env` set; returns the one request.
fn deliver_one(sink_extra: &str, env: &[(&str, OsString)]) -> Recorded {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(jsonl(&[feature_event(0)]), &server.url(), sink_extra);
    let mut cmd = run_once_cmd(&config);
    for (name, value) in env {
        cmd.env(name, value);
    }
    let out = Proc::spawn(cmd).wait();
    out.assert_code(0);
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{out}");
    requests.into_iter().next().unwrap()
}

/// Issue 7: `${VAR}` was pasted into the TOML text, so TOML unescaped `\t` and `\u00e9` in a
/// secret and every signature was wrong, silently.
#[test]
fn secret_with_toml_escapes_from_the_environment_signs_over_its_raw_bytes() {
    let secret = r"tab\there-\u00e9-back\\slash";
    let request = deliver_one(
        r#"secret = "${FH_SECRET}""#,
        &[("FH_SECRET", secret.into())],
    );
    assert_eq!(
        request.header("x-hub-signature-256"),
        Some(signature_of(secret.as_bytes(), &request.body).as_str())
    );
}

/// Issue 7: a `"` in a secret broke the config (and the error showed the secret).
#[test]
fn secret_with_quotes_tabs_and_unicode_from_the_environment_signs_over_its_raw_bytes() {
    let secret = "q\"uo'te\ttab \u{e9}t\u{e9} \\ ${NOT_EXPANDED} $$ end\"";
    let request = deliver_one(
        r#"secret = "${FH_SECRET}""#,
        &[("FH_SECRET", secret.into())],
    );
    assert_eq!(
        request.header("x-hub-signature-256"),
        Some(signature_of(secret.as_bytes(), &request.body).as_str())
    );
}

/// GO Feature Flag's secret is a Go string: any bytes. `secret_hex` and `secret_base64`
/// carry bytes that are not UTF-8, from the file or the environment.
#[test]
fn binary_secret_in_hex_or_base64_signs_with_its_bytes() {
    let key: &[u8] = &[0xff, 0x00, 0x80, b'"', b'\\', 0xc3, 0x28, 0x7f];
    let request = deliver_one(
        r#"secret_hex = "${FH_SECRET_HEX}""#,
        &[("FH_SECRET_HEX", hex::encode(key).into())],
    );
    assert_eq!(
        request.header("x-hub-signature-256"),
        Some(signature_of(key, &request.body).as_str())
    );
    let base64 = base64::engine::general_purpose::STANDARD.encode(key);
    let request = deliver_one(&format!("secret_base64 = {}", toml_str(&base64)), &[]);
    assert_eq!(
        request.header("x-hub-signature-256"),
        Some(signature_of(key, &request.body).as_str())
    );
}

/// Issue 7: a variable that is not UTF-8 was reported as "not set".
#[test]
fn variable_that_is_not_utf8_has_its_own_error() {
    let ws = Workspace::new();
    let config = ws.file_pipeline("", "http://127.0.0.1:9/", r#"secret = "${FH_SECRET}""#);
    let mut cmd = flaghook(&["validate", "--config"]);
    cmd.arg(&config)
        .env("FH_SECRET", OsString::from_vec(vec![b's', 0xff, b'k']));
    let out = Proc::spawn(cmd).wait();
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("`sinks.webhook.secret` uses `${FH_SECRET}`")
            && out.stderr.contains("not valid UTF-8")
            && out.stderr.contains("secret_hex")
            && !out.stderr.contains("not set"),
        "{out}"
    );
}

/// `--secret-env` takes the variable's bytes as they are; a secret that is not UTF-8 was
/// reported as "not set".
#[test]
fn sign_takes_a_secret_env_that_is_not_utf8_as_bytes() {
    let ws = Workspace::new();
    let body = br#"{"meta":{},"events":[]}"#;
    let file = ws.write("body.json", body);
    let key = vec![b'k', 0xff, 0xc3, 0x28, 0xfe];
    let mut cmd = flaghook(&["sign", "--secret-env", "FH_SIGN_SECRET"]);
    cmd.arg(&file)
        .env("FH_SIGN_SECRET", OsString::from_vec(key.clone()));
    let out = Proc::spawn(cmd).wait();
    out.assert_code(0);
    assert_eq!(out.stdout.trim(), signature_of(&key, body), "{out}");
}

#[test]
fn secret_keys_exclude_each_other() {
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        "",
        "http://127.0.0.1:9/",
        "secret = \"text\"\nsecret_base64 = \"AAEC\"",
    );
    let out = validate(&config);
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("`sinks.webhook.secret` and `sinks.webhook.secret_base64` are both set"),
        "{out}"
    );
}

#[test]
fn malformed_hex_and_base64_secrets_name_their_key() {
    for (line, key) in [
        ("secret_hex = \"abc\"", "sinks.webhook.secret_hex"),
        ("secret_hex = \"zz\"", "sinks.webhook.secret_hex"),
        ("secret_base64 = \"a*b=\"", "sinks.webhook.secret_base64"),
        ("secret_hex = \"\"", "sinks.webhook.secret_hex"),
    ] {
        let ws = Workspace::new();
        let config = ws.file_pipeline("", "http://127.0.0.1:9/", line);
        let out = validate(&config);
        out.assert_code(1);
        assert!(
            out.stderr.contains(&format!("`{key}`")) && !out.stderr.contains("unknown field"),
            "{line}: {out}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// No output shows a secret.

/// A secret that TOML would mangle, with a plain middle part to catch partial leaks.
const SECRET: &str = "Zq\"7\\t\tSECRETX9f3kW\u{e9}\\u00e9'\\";
const PLAIN_PART: &str = "SECRETX9f3kW";

/// Every form in which `SECRET` could be printed.
fn secret_forms() -> Vec<String> {
    let debug = format!("{SECRET:?}");
    let json = serde_json::to_string(SECRET).unwrap();
    let toml = toml_str(SECRET);
    vec![
        SECRET.to_owned(),
        PLAIN_PART.to_owned(),
        debug[1..debug.len() - 1].to_owned(),
        json[1..json.len() - 1].to_owned(),
        toml[1..toml.len() - 1].to_owned(),
        hex::encode(SECRET),
        base64::engine::general_purpose::STANDARD.encode(SECRET),
    ]
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for form in secret_forms() {
        assert!(
            !text.contains(&form),
            "{what} shows the secret (as {form:?}):\n{text}"
        );
    }
}

/// Runs `flaghook ARGS --config <body>` with `SECRET` in `FH_SECRET` (and `FH_SECRET_HEX`) and
/// checks that neither output nor any file under data_dir shows it; returns the output.
/// `data_dir` is the workspace's unless `body` sets it.
fn run_with_secret(args: &[&str], body: &str) -> Output {
    let ws = Workspace::new();
    let config = if body.starts_with("data_dir") {
        ws.write("flaghook.toml", body)
    } else {
        ws.config(body)
    };
    let mut cmd = flaghook(args);
    cmd.arg("--config")
        .arg(&config)
        .env("RUST_LOG", "trace")
        .env("FH_SECRET", SECRET)
        .env("FH_SECRET_HEX", hex::encode(SECRET));
    if args.contains(&"run") {
        cmd.arg("--once");
    }
    let out = Proc::spawn(cmd).wait();
    assert!(!out.timed_out, "{out}");
    let context = format!("`flaghook {}` with\n{body}\n", args.join(" "));
    assert_no_secret(&format!("stdout of {context}"), &out.stdout);
    assert_no_secret(&format!("stderr of {context}"), &out.stderr);
    for entry in walk(&ws.data_dir()) {
        let text = String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).into_owned();
        assert_no_secret(&format!("{} after {context}", entry.display()), &text);
    }
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

const SOURCE: &str = r#"[sources.in]
type = "file"
include = ["/nonexistent/flaghook-test/*.json"]
"#;

/// A sink signed with the secret from the environment, plus `extra` lines.
fn sink(extra: &str) -> String {
    format!(
        r#"[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = "http://127.0.0.1:9/hook"
secret = "${{FH_SECRET}}"
{extra}
"#
    )
}

/// Issue 7: every config error we can provoke around a secret from the environment, by
/// `validate` and by `run`, at log level trace: exit 1, and the secret is nowhere.
#[test]
fn config_errors_never_show_the_secret() {
    let bad_sinks = [
        // A bad value next to the secret, an unknown key holding it, a parse error on its line.
        sink("flush_interval = \"soon\""),
        sink("secrt = \"${FH_SECRET}\""),
        sink("").replace(
            "secret = \"${FH_SECRET}\"",
            "secret = \"${FH_SECRET}\" oops",
        ),
        // The secret in a header value, the URL, a number, an enum, a list of names.
        sink("headers = { Authorization = \"Bearer ${FH_SECRET}\\u007f\" }"),
        sink("").replace("http://127.0.0.1:9/hook", "${FH_SECRET}"),
        sink("max_event_in_memory = \"${FH_SECRET}\""),
        sink("schema = \"${FH_SECRET}\""),
        sink("signature = \"${FH_SECRET}\""),
        sink("compression = \"${FH_SECRET}\""),
        // A secret that is not a Standard Webhooks one (`whsec_` and base64).
        sink("signature = \"standard-webhooks\""),
        sink("signature = \"standard-webhooks\"")
            .replace("\"${FH_SECRET}\"", "\"whsec_${FH_SECRET}\""),
        sink("event_types = [\"feature\", \"${FH_SECRET}\"]"),
        sink("").replace("inputs = [\"in\"]", "inputs = [\"in\", \"${FH_SECRET}\"]"),
        // Two secret keys; a secret that is not hex; a secret that is not a string.
        sink("secret_hex = \"${FH_SECRET_HEX}\""),
        sink("").replace("secret = ", "secret_hex = "),
        sink("").replace("secret = ", "secret_base64 = "),
        sink("").replace("\"${FH_SECRET}\"", "[\"${FH_SECRET}\"]"),
        // A literal secret in the file, on a line that does not parse.
        sink("").replace("\"${FH_SECRET}\"", &format!("{} x = 1", toml_str(SECRET))),
        sink("").replace(
            "\"${FH_SECRET}\"",
            &format!("{} \"${{FH_SECRET}}\"", toml_str(SECRET)),
        ),
    ];
    let bad_sources = [
        "[sources.in]\ntype = \"${FH_SECRET}\"\n".to_owned(),
        "[sources.in]\ntype = \"tcp\"\naddress = \"${FH_SECRET}\"\n".to_owned(),
        "[sources.in]\ntype = \"file\"\ninclude = [\"[${FH_SECRET}\"]\n".to_owned(),
    ];
    let mut bodies: Vec<String> = bad_sinks.iter().map(|s| format!("{SOURCE}\n{s}")).collect();
    bodies.extend(bad_sources.iter().map(|s| format!("{s}\n{}", sink(""))));
    for body in &bodies {
        for args in [&["validate"][..], &["--log-level", "trace", "run"][..]] {
            let out = run_with_secret(args, body);
            assert_eq!(out.code, Some(1), "{body}\n{out}");
        }
    }
}

/// Regression: a parse error showed its line unless the line (or the one its statement
/// seemed to start on) said `secret`, so a token, password, shared key, header value or a
/// key in a URL's query written literally in the file was printed (and logged, at a reload)
/// when a typo sat on its line; a base64 value padded with `==` in a multi-line array made
/// its own line look like a statement's start. A parse error now shows its line number,
/// its table and at most the key its line sets, never a value. The value here holds no
/// word that marks a secret, so that only the rule is tested.
#[test]
fn parse_errors_never_show_a_value_on_their_line() {
    const VALUE: &str = "k9-Q2hhbmdlTWVQbGVhc2U==";
    const PART: &str = "Q2hhbmdlTWVQ";
    let literal = toml_str(VALUE);
    let http = "[sources.in]\ntype = \"http\"\naddress = \"127.0.0.1:0\"\n";
    let fluent = "[sources.in]\ntype = \"fluent\"\n";
    let nats = "[sinks.webhook]\ntype = \"nats\"\n";
    let bodies = [
        format!("{http}auth = {{ token = {literal} x }}\n"),
        format!("{fluent}shared_key = {literal} x\n"),
        format!("{nats}password = {literal} x\n"),
        format!("{nats}token = {literal} x\n"),
        format!(
            "{SOURCE}\n{}",
            sink(&format!("headers = {{ Authorization = [{literal}], }}"))
        ),
        format!(
            "{SOURCE}\n{}",
            sink(&format!("headers = {{ X-Api = [\n  {literal} x\n] }}"))
        ),
        // The reviewer's case: the line before holds `==` too.
        format!(
            "{SOURCE}\n{}",
            sink(&format!(
                "headers.X-Custom-Auth = [\n  \"k1-Zm9vYmFyYmF6==\",\n  {literal} \"oops\",\n]"
            ))
        ),
        format!(
            "{SOURCE}\n{}\n[sinks.webhook.headers]\nX-Api = {literal} x\n",
            sink("")
        ),
        format!(
            "{SOURCE}\n[sinks.webhook]\ntype = \"webhook\"\ninputs = [\"in\"]\nendpoint_url = \"https://fn.example/api/hook?code={VALUE}\" x\n"
        ),
    ];
    for body in &bodies {
        let out = run_with_secret(&["validate"], body);
        assert_eq!(out.code, Some(1), "{body}\n{out}");
        assert!(out.stderr.contains("at line "), "{body}\n{out}");
        assert!(
            !out.stderr.contains(PART),
            "a value was shown:\n{body}\n{out}"
        );
    }
}

/// Regression: `validate` printed a sink's endpoint with the environment's values in it,
/// so a token in its path or query (`endpoint_url = "https://host/hook?key=${TOKEN}"`,
/// the way many collectors take one) was printed; it shows `${NAME}` now. So do the
/// sources' lines (review: an http source's `path` and a file glob's folder were shown
/// with their values).
#[test]
fn validate_shows_values_from_the_environment_as_their_variables() {
    let ws = Workspace::new();
    let logs = ws.path("Fold3rTok9");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("a.json"), "").unwrap();
    let config = ws.config(
        "[sources.in]\ntype = \"file\"\ninclude = [\"${FH_LOG_DIR}/*.json\"]\n\n[sources.h]\ntype = \"http\"\naddress = \"127.0.0.1:0\"\npath = \"/in/${FH_INGEST_KEY}\"\n\n[sinks.webhook]\ntype = \"webhook\"\ninputs = [\"in\", \"h\"]\nendpoint_url = \"http://127.0.0.1:9/hook/${FH_PATH_TOKEN}?key=${FH_QUERY_TOKEN}\"\n",
    );
    let mut cmd = flaghook(&["--log-level", "trace", "validate", "--config"]);
    cmd.arg(&config)
        .env("FH_LOG_DIR", &logs)
        .env("FH_INGEST_KEY", "IngestK3y5d")
        .env("FH_PATH_TOKEN", "PathTok3n9f")
        .env("FH_QUERY_TOKEN", "QueryTok3n7e");
    let out = Proc::spawn(cmd).wait();
    out.assert_code(0);
    for token in ["PathTok3n9f", "QueryTok3n7e", "IngestK3y5d", "Fold3rTok9"] {
        assert!(
            !out.stdout.contains(token) && !out.stderr.contains(token),
            "{token}:\n{out}"
        );
    }
    for shown in [
        "http://127.0.0.1:9/hook/${FH_PATH_TOKEN}?key=${FH_QUERY_TOKEN}",
        "/in/${FH_INGEST_KEY}",
        "${FH_LOG_DIR}/a.json",
    ] {
        assert!(out.stdout.contains(shown), "{shown}:\n{out}");
    }
}

/// Two sinks with the secret from the environment: one to `refusing`, one to `closed`,
/// with short backoffs and `retry_max_duration`, so that `--once` ends.
fn two_sinks(input: &std::path::Path, refusing: &str, closed: &str) -> String {
    format!(
        r#"[sources.in]
type = "file"
include = [{input}]

[sinks.refusing]
type = "webhook"
inputs = ["in"]
endpoint_url = "{refusing}"
secret = "${{FH_SECRET}}"
retry_initial_backoff = "20ms"
retry_max_backoff = "40ms"
flush_interval = "50ms"

[sinks.closed]
type = "webhook"
inputs = ["in"]
endpoint_url = "{closed}"
secret_hex = "${{FH_SECRET_HEX}}"
retry_initial_backoff = "20ms"
retry_max_backoff = "40ms"
flush_interval = "50ms"
retry_max_duration = "300ms"
"#,
        input = toml_str(input),
    )
}

/// Issue 7: delivery errors (401, 500, connection refused, dead letters) and a start-up
/// error, at log level trace in both log formats: the secret is nowhere.
#[test]
fn delivery_errors_never_show_the_secret() {
    let ws = Workspace::new();
    let input = ws.write("events.json", jsonl(&feature_events(0, 3)));
    let closed = format!("http://127.0.0.1:{}/hook", free_port());
    for format in ["text", "json"] {
        let refusing =
            Endpoint::scripted(vec![Reply::status(401), Reply::status(500)], Reply::ok());
        let body = two_sinks(&input, &refusing.url(), &closed);
        let args = ["--log-level", "trace", "--log-format", format, "run"];
        let out = run_with_secret(&args, &body);
        assert_eq!(out.summary().events_delivered, 3, "{out}");
        assert_eq!(out.summary().events_rejected, 3, "{out}");
        assert!(
            out.stderr.contains("401") && out.stderr.contains("500"),
            "{out}"
        );
        let requests = refusing.requests();
        assert!(requests.len() >= 3, "{out}");
        for r in &requests {
            assert_eq!(
                r.header("x-hub-signature-256"),
                Some(signature_of(SECRET.as_bytes(), &r.body).as_str())
            );
        }
    }

    // A start-up error that names a value of the config: data_dir from the environment.
    let body = format!(
        "data_dir = \"/proc/${{FH_SECRET}}\"\n{}",
        two_sinks(&input, &closed, &closed)
    );
    let out = run_with_secret(&["run"], &body);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("/proc/${FH_SECRET}"), "{out}");
}

/// The password of the credentials test, as written in the URL (percent-encoded) and as
/// sent.
const URL_PASSWORD: &str = "pa%24%24-URLPASS-w%40rd";
const SENT_PASSWORD: &str = "pa$$-URLPASS-w@rd";

/// Hostile-input issue: `https://user:pass@host/` was neither sent as Basic auth nor kept
/// out of `validate`'s summary and the logs. Now the endpoint gets `Authorization: Basic`
/// with the percent-decoded user and password, the request line has no credentials, and
/// no output at any log level, nor any file in data_dir, shows the password in any form.
#[test]
fn credentials_in_endpoint_url_are_sent_as_basic_auth_and_never_shown() {
    let server = Endpoint::scripted(vec![Reply::status(500)], Reply::ok());
    let ws = Workspace::new();
    let with_credentials =
        |url: &str| url.replacen("://", &format!("://flag%20hook:{URL_PASSWORD}@"), 1);
    let closed = format!("http://127.0.0.1:{}/hook", free_port());
    let input = ws.write("events.json", jsonl(&feature_events(0, 3)));
    let config = ws.config(&format!(
        r#"[sources.in]
type = "file"
include = [{input}]

[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = {url}
retry_initial_backoff = "20ms"
retry_max_backoff = "40ms"
flush_interval = "50ms"

[sinks.closed]
type = "webhook"
inputs = ["in"]
endpoint_url = {closed}
retry_initial_backoff = "20ms"
retry_max_backoff = "40ms"
flush_interval = "50ms"
retry_max_duration = "300ms"
"#,
        input = toml_str(&input),
        url = toml_str(with_credentials(&server.url())),
        closed = toml_str(with_credentials(&closed)),
    ));
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("flag hook:{SENT_PASSWORD}"));
    let hidden = [
        "URLPASS".to_owned(),
        URL_PASSWORD.to_owned(),
        SENT_PASSWORD.to_owned(),
        basic.clone(),
    ];
    let assert_hidden = |what: &str, text: &str| {
        for form in &hidden {
            assert!(
                !text.contains(form),
                "{what} shows the password ({form:?}):\n{text}"
            );
        }
    };

    let checked = validate(&config);
    checked.assert_code(0);
    assert!(
        checked.stdout.contains("http://***@127.0.0.1:"),
        "{checked}"
    );
    assert_hidden("validate", &format!("{}{}", checked.stdout, checked.stderr));

    let mut cmd = run_once_cmd(&config);
    cmd.args(["--log-level", "trace"]);
    let out = Proc::spawn(cmd).wait();
    assert_eq!(out.summary().events_delivered, 3, "{out}");
    assert_hidden(
        "run --once at log level trace",
        &format!("{}{}", out.stdout, out.stderr),
    );
    for entry in walk(&ws.data_dir()) {
        let text = String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).into_owned();
        assert_hidden(&entry.display().to_string(), &text);
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{out}");
    for r in &requests {
        assert_eq!(r.path, "/hook");
        assert_eq!(
            r.header_values("authorization"),
            [format!("Basic {basic}").as_str()]
        );
    }
}

/// Credentials in the URL and an `Authorization` header are one too many: a config error
/// naming both keys, without the password.
#[test]
fn credentials_in_endpoint_url_and_an_authorization_header_conflict() {
    let ws = Workspace::new();
    let config = ws.config(&format!(
        "{SOURCE}\n[sinks.webhook]\ntype = \"webhook\"\ninputs = [\"in\"]\nendpoint_url = \"http://u:{URL_PASSWORD}@127.0.0.1:9/hook\"\nheaders = {{ authorization = \"Bearer x\" }}\n"
    ));
    let out = validate(&config);
    out.assert_code(1);
    assert!(
        out.stderr.contains("`sinks.webhook.endpoint_url`")
            && out.stderr.contains("`sinks.webhook.headers.authorization`"),
        "{out}"
    );
    assert!(!out.stderr.contains("URLPASS"), "{out}");
}
