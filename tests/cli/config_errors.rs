//! Config errors: each gives exit 1 and a message naming the key (and the file); `${VAR}`
//! substitution and `$$` (secrets from the environment: tests/cli/secrets.rs).

use crate::harness::*;
use serde_json::json;

const SOURCE: &str = r#"[sources.in]
type = "file"
include = ["/nonexistent/flaghook-test/*.json"]
"#;

const SINK: &str = r#"[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = "http://127.0.0.1:9/hook"
"#;

/// Validates `body` (written as flaghook.toml) and asserts exit 1 with stderr naming every
/// needle and the config file.
#[track_caller]
fn assert_config_error(body: &str, needles: &[&str]) -> Output {
    let ws = Workspace::new();
    let config = ws.config(body);
    let out = validate(&config);
    out.assert_code(1);
    let message = message_before_example(&out.stderr);
    for needle in needles {
        assert!(
            message.contains(needle),
            "the error message (before any example) does not name {needle:?}:\n{out}"
        );
    }
    assert!(
        message.contains("flaghook.toml"),
        "the error message does not name the config file:\n{out}"
    );
    out
}

/// stderr up to the first "example": the correct example shown after an error names every
/// common key, so a key must be named before it to count.
fn message_before_example(stderr: &str) -> &str {
    let cut = stderr
        .to_ascii_lowercase()
        .find("example")
        .unwrap_or(stderr.len());
    &stderr[..cut]
}

/// The base config the error tests start from is valid, so each error test fails only for the
/// one thing it changes.
#[test]
fn base_config_is_valid() {
    let ws = Workspace::new();
    let config = ws.config(&format!("{SOURCE}\n{SINK}"));
    validate(&config).assert_code(0);
}

#[test]
fn unknown_key_in_sink() {
    assert_config_error(
        &format!("{SOURCE}\n{SINK}flush_intervall = \"1s\"\n"),
        &["flush_intervall"],
    );
}

#[test]
fn unknown_key_in_source() {
    let source = SOURCE.replace("include", "includes");
    assert_config_error(&format!("{source}\n{SINK}"), &["includes"]);
}

#[test]
fn unknown_top_level_key() {
    assert_config_error(
        &format!("dta_dir = \"x\"\n\n{SOURCE}\n{SINK}"),
        &["dta_dir"],
    );
}

#[test]
fn unknown_source_type() {
    let source = SOURCE.replace(r#"type = "file""#, r#"type = "kafka""#);
    assert_config_error(&format!("{source}\n{SINK}"), &["kafka"]);
}

#[test]
fn missing_endpoint_url() {
    let sink = SINK.replace("endpoint_url = \"http://127.0.0.1:9/hook\"\n", "");
    assert_config_error(&format!("{SOURCE}\n{sink}"), &["endpoint_url"]);
}

#[test]
fn endpoint_url_with_ftp_scheme() {
    let sink = SINK.replace("http://127.0.0.1:9/hook", "ftp://x");
    assert_config_error(&format!("{SOURCE}\n{sink}"), &["endpoint_url"]);
}

#[test]
fn endpoint_url_that_is_not_a_url() {
    let sink = SINK.replace("http://127.0.0.1:9/hook", "not a url");
    assert_config_error(&format!("{SOURCE}\n{sink}"), &["endpoint_url"]);
}

#[test]
fn endpoint_url_without_host() {
    let sink = SINK.replace("http://127.0.0.1:9/hook", "http:///hook");
    assert_config_error(&format!("{SOURCE}\n{sink}"), &["endpoint_url"]);
}

#[test]
fn inputs_naming_no_source() {
    let sink = SINK.replace(r#"inputs = ["in"]"#, r#"inputs = ["in", "nope"]"#);
    assert_config_error(&format!("{SOURCE}\n{sink}"), &["inputs", "nope"]);
}

#[test]
fn source_no_sink_reads() {
    let orphan = r#"[sources.orphan]
type = "stdin"
"#;
    assert_config_error(&format!("{SOURCE}\n{orphan}\n{SINK}"), &["orphan"]);
}

#[test]
fn zero_max_event_in_memory() {
    assert_config_error(
        &format!("{SOURCE}\n{SINK}max_event_in_memory = 0\n"),
        &["max_event_in_memory"],
    );
}

#[test]
fn non_string_meta_value() {
    assert_config_error(
        &format!("{SOURCE}\n{SINK}meta = {{ count = 3 }}\n"),
        &["meta"],
    );
}

#[test]
fn missing_file_include() {
    let source = "[sources.in]\ntype = \"file\"\n";
    assert_config_error(&format!("{source}\n{SINK}"), &["include"]);
}

/// Regression: an empty `data_dir` (written so, or a variable set empty) was valid and
/// meant the config file's own folder: checkpoints, journals, dead letters and the lock were
/// written next to the config.
#[test]
fn empty_data_dir_is_refused() {
    let ws = Workspace::new();
    for value in ["\"\"", "\"${FLAGHOOK_TEST_EMPTY_DIR}\""] {
        let config = ws.write(
            "flaghook.toml",
            format!("data_dir = {value}\n{SOURCE}\n{SINK}"),
        );
        let mut cmd = flaghook(&["validate", "--config"]);
        cmd.arg(&config).env("FLAGHOOK_TEST_EMPTY_DIR", "");
        let out = Proc::spawn(cmd).wait();
        out.assert_code(1);
        let message = message_before_example(&out.stderr);
        assert!(message.contains("`data_dir` is empty"), "{value}:\n{out}");
        assert!(message.contains("flaghook.toml"), "{value}:\n{out}");
    }
    assert!(!ws.path("checkpoints").exists() && !ws.path("lock").exists());
}

#[test]
fn unset_environment_variable() {
    let ws = Workspace::new();
    let config = ws.config(&format!(
        "{SOURCE}\n{SINK}secret = \"${{FLAGHOOK_TEST_SURELY_UNSET_VAR}}\"\n"
    ));
    let mut cmd = flaghook(&["validate", "--config"]);
    cmd.arg(&config)
        .env_remove("FLAGHOOK_TEST_SURELY_UNSET_VAR");
    let out = Proc::spawn(cmd).wait();
    out.assert_code(1);
    assert!(
        message_before_example(&out.stderr).contains("FLAGHOOK_TEST_SURELY_UNSET_VAR"),
        "stderr does not name the variable:\n{out}"
    );
}

#[test]
fn missing_config_file_is_an_error() {
    let ws = Workspace::new();
    let out = validate(&ws.path("no-such-config.toml"));
    out.assert_code(1);
    assert!(out.stderr.contains("no-such-config.toml"), "{out}");
}

#[test]
fn toml_syntax_error_is_an_error() {
    assert_config_error(&format!("{SOURCE}\n{SINK}meta = {{ broken\n"), &[]);
}

/// `run` does every check `validate` does, before it starts: exit 1 and nothing sent.
#[test]
fn run_refuses_a_bad_config_before_sending() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 3)),
        &server.url(),
        "max_event_in_memory = 0",
    );
    let out = run_once(&config);
    out.assert_code(1);
    assert!(
        message_before_example(&out.stderr).contains("max_event_in_memory"),
        "{out}"
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(server.requests().is_empty());
}

/// `${VAR}` is replaced in string values; `$$` is a literal `$` (and stops substitution).
#[test]
fn env_var_substitution_and_dollar_escape() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let input = ws.write("events.json", jsonl(&[feature_event(0)]));
    let config = ws.config(&format!(
        r#"[sources.in]
type = "file"
include = [{input}]

[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = "${{FH_TEST_URL}}"
secret = "${{FH_TEST_SECRET}}"
meta = {{ hostname = "h", who = "${{FH_TEST_WHO}}", price = "$$5", literal = "$${{FH_TEST_NOT_SET}}" }}
"#,
        input = toml_str(&input),
    ));
    let mut cmd = run_once_cmd(&config);
    cmd.env("FH_TEST_URL", server.url())
        .env("FH_TEST_SECRET", "from-env")
        .env("FH_TEST_WHO", "alice")
        .env_remove("FH_TEST_NOT_SET");
    let out = Proc::spawn(cmd).wait();
    out.assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "{out}");
    assert_eq!(
        reqs[0].meta(),
        json!({"hostname": "h", "who": "alice", "price": "$5", "literal": "${FH_TEST_NOT_SET}"})
    );
    assert_eq!(
        reqs[0].header("x-hub-signature-256"),
        Some(signature("from-env", &reqs[0].body).as_str())
    );
    assert_eq!(reqs[0].events(), vec![feature_event(0)]);
}

#[test]
fn malformed_duration() {
    assert_config_error(
        &format!("{SOURCE}\n{SINK}flush_interval = \"soon\"\n"),
        &["flush_interval"],
    );
}

#[test]
fn malformed_buffer_max_bytes() {
    for value in ["\"64MB\"", "\"lots\"", "0", "-1", "true"] {
        let out = assert_config_error(
            &format!("{SOURCE}\n{SINK}buffer_max_bytes = {value}\n"),
            &["sinks.webhook.buffer_max_bytes"],
        );
        assert!(
            message_before_example(&out.stderr).contains("\"64MiB\""),
            "no example of a size for {value}:\n{out}"
        );
    }
    for value in ["\"64MiB\"", "1048576", "\"512KiB\""] {
        let ws = Workspace::new();
        let config = ws.config(&format!("{SOURCE}\n{SINK}buffer_max_bytes = {value}\n"));
        validate(&config).assert_code(0);
    }
}

#[test]
fn unknown_read_from() {
    let source = format!("{SOURCE}read_from = \"middle\"\n");
    assert_config_error(&format!("{source}\n{SINK}"), &["read_from"]);
}

#[test]
fn unknown_schema() {
    assert_config_error(&format!("{SOURCE}\n{SINK}schema = \"xml\"\n"), &["schema"]);
}

#[test]
fn unknown_event_type() {
    assert_config_error(
        &format!("{SOURCE}\n{SINK}event_types = [\"feature\", \"bogus\"]\n"),
        &["event_types"],
    );
}

#[test]
fn malformed_tcp_address() {
    let source = "[sources.in]\ntype = \"tcp\"\naddress = \"not an address\"\n";
    assert_config_error(&format!("{source}\n{SINK}"), &["address"]);
}

#[test]
fn zero_tcp_idle_timeout() {
    let source =
        "[sources.in]\ntype = \"tcp\"\naddress = \"127.0.0.1:9000\"\nidle_timeout = \"0s\"\n";
    let out = assert_config_error(&format!("{source}\n{SINK}"), &["sources.in.idle_timeout"]);
    assert!(out.stderr.contains("idle_timeout = \"5m\""), "{out}");
}

/// Names become file names in data_dir: a name that could leave it, or hold a `/`, is
/// refused before anything is written.
#[test]
fn names_that_are_not_file_names() {
    let long = "n".repeat(65);
    for name in ["../../../x", "a/b", "", "dot.ted", "é", long.as_str()] {
        let quoted = toml_str(name);
        let sink = SINK.replace("[sinks.webhook]", &format!("[sinks.{quoted}]"));
        let out = assert_config_error(&format!("{SOURCE}\n{sink}"), &["sinks.", "letters, digits"]);
        assert!(out.stderr.contains("[sinks.webhook]"), "no example:\n{out}");
        let source = SOURCE.replace("[sources.in]", &format!("[sources.{quoted}]"));
        let sink = SINK.replace("inputs = [\"in\"]", &format!("inputs = [{quoted}]"));
        assert_config_error(
            &format!("{source}\n{sink}"),
            &["sources.", "letters, digits"],
        );
    }
    let ws = Workspace::new();
    let ok = SINK.replace("[sinks.webhook]", "[sinks.Hook_2-b]");
    validate(&ws.config(&format!("{SOURCE}\n{ok}"))).assert_code(0);
}

/// Hostile-input issue: huge durations and sizes passed `validate` and then broke the run
/// (`max_event_in_memory = 2^62` panicked the sink, `flush_interval = "500000000000years"`
/// lost events). Each is now refused with its full key and an example.
/// Regression: a number beyond what TOML holds (64 bits) is refused by the parser, whose
/// message ("number too large to fit in target type", and the line) did not say which
/// table the key is in: `[sinks.webhook]` and the line name the full key now.
#[test]
fn a_number_beyond_64_bits_names_its_table() {
    for (extra, table, key) in [
        (
            "max_event_in_memory = 99999999999999999999",
            "[sinks.webhook]",
            "max_event_in_memory",
        ),
        (
            "[sinks.webhook.headers]\nX = \"a\"\n\n[sinks.other]\nmax_event_in_memory = -99999999999999999999",
            "[sinks.other]",
            "max_event_in_memory",
        ),
    ] {
        let out = assert_config_error(&format!("{SOURCE}\n{SINK}{extra}\n"), &[table, key]);
        assert!(out.stderr.contains("to fit in target type"), "{out}");
    }
}

#[test]
fn huge_durations_and_sizes_are_refused_naming_the_key() {
    let huge = "4611686018427387904"; // 2^62
    let sink_cases = [
        (
            format!("max_event_in_memory = {huge}"),
            "max_event_in_memory",
            "max_event_in_memory = 100000",
        ),
        (
            "buffer_max_events = 5000000000".to_owned(),
            "buffer_max_events",
            "buffer_max_events = ",
        ),
        (
            "flush_interval = \"500000000000years\"".to_owned(),
            "flush_interval",
            "\"60s\"",
        ),
        (
            "flush_interval = \"30days\"".to_owned(),
            "flush_interval",
            "flush_interval = \"60s\"",
        ),
        (
            "timeout = \"2h\"".to_owned(),
            "timeout",
            "timeout = \"10s\"",
        ),
        (
            "retry_initial_backoff = \"30days\"".to_owned(),
            "retry_initial_backoff",
            "retry_initial_backoff = \"1s\"",
        ),
        (
            "retry_max_backoff = \"30days\"".to_owned(),
            "retry_max_backoff",
            "retry_max_backoff = \"60s\"",
        ),
        (
            "shutdown_timeout = \"30days\"".to_owned(),
            "shutdown_timeout",
            "shutdown_timeout = \"30s\"",
        ),
        (
            "retry_max_duration = \"1000years\"".to_owned(),
            "retry_max_duration",
            "\"60s\"",
        ),
    ];
    for (line, key, example) in &sink_cases {
        let out = assert_config_error(
            &format!("{SOURCE}\n{SINK}{line}\n"),
            &[&format!("`sinks.webhook.{key}`")],
        );
        assert!(out.stderr.contains(example), "{line}: no example:\n{out}");
    }
    let tcp = "[sources.in]\ntype = \"tcp\"\naddress = \"127.0.0.1:0\"\n";
    let stdin = "[sources.in]\ntype = \"stdin\"\n";
    let source_cases = [
        (
            format!("{SOURCE}max_line_bytes = {huge}\n"),
            "max_line_bytes",
            "max_line_bytes = 102400",
        ),
        (
            format!("{SOURCE}poll_interval = \"2h\"\n"),
            "poll_interval",
            "poll_interval = \"50ms\"",
        ),
        (
            format!("{SOURCE}glob_interval = \"2h\"\n"),
            "glob_interval",
            "glob_interval = \"1s\"",
        ),
        (
            format!("{tcp}max_connections = 4294967296\n"),
            "max_connections",
            "max_connections = 256",
        ),
        (
            format!("{tcp}max_line_bytes = {huge}\n"),
            "max_line_bytes",
            "max_line_bytes = 102400",
        ),
        (
            format!("{stdin}max_line_bytes = {huge}\n"),
            "max_line_bytes",
            "max_line_bytes = 102400",
        ),
    ];
    for (source, key, example) in &source_cases {
        let out = assert_config_error(
            &format!("{source}\n{SINK}"),
            &[&format!("`sources.in.{key}`")],
        );
        assert!(out.stderr.contains(example), "{source}: no example:\n{out}");
    }
}

/// The largest values within the bounds are taken.
#[test]
fn durations_and_sizes_at_their_bounds_are_valid() {
    let ws = Workspace::new();
    let sink = "max_event_in_memory = 1000000\nbuffer_max_events = 10000000\nflush_interval = \"1day\"\ntimeout = \"1h\"\nretry_initial_backoff = \"1day\"\nretry_max_backoff = \"1day\"\nshutdown_timeout = \"1day\"\nretry_max_duration = \"365days\"\n";
    let source = format!(
        "{SOURCE}max_line_bytes = 67108864\npoll_interval = \"1h\"\nglob_interval = \"1h\"\n"
    );
    validate(&ws.config(&format!("{source}\n{SINK}{sink}"))).assert_code(0);
}

/// `retry_max_duration = "0s"` would dead-letter every event at its first failure.
#[test]
fn zero_retry_max_duration() {
    assert_config_error(
        &format!("{SOURCE}\n{SINK}retry_max_duration = \"0s\"\n"),
        &["retry_max_duration"],
    );
}

/// `dead_letter_max_bytes = 0` would cut every dead-lettered line to its first KiB; sizes
/// are written as for `buffer_max_bytes`.
#[test]
fn zero_dead_letter_max_bytes() {
    assert_config_error(
        &format!("{SOURCE}\n{SINK}dead_letter_max_bytes = 0\n"),
        &["dead_letter_max_bytes"],
    );
    let ws = Workspace::new();
    let config = ws.config(&format!(
        "{SOURCE}\n{SINK}dead_letter_max_bytes = \"1GiB\"\n"
    ));
    validate(&config).assert_code(0);
}

#[test]
fn standard_webhooks_needs_a_whsec_secret_in_secret() {
    let with = |extra: &str| format!("{SOURCE}\n{SINK}signature = \"standard-webhooks\"\n{extra}");
    for (extra, needle) in [
        ("", "`sinks.webhook.secret` is not set"),
        (
            "secret = \"hunter2hunter2\"",
            "`sinks.webhook.secret` does not start with `whsec_`",
        ),
        (
            "secret = \"whsec_%%%hunter2\"",
            "`sinks.webhook.secret` is not base64 after `whsec_`",
        ),
        (
            "secret_hex = \"00ff\"",
            "`sinks.webhook.secret_hex` cannot sign Standard Webhooks",
        ),
    ] {
        let out = assert_config_error(&with(extra), &[needle]);
        assert!(
            out.stderr.contains("whsec_"),
            "says what it should be:\n{out}"
        );
        assert!(!out.stderr.contains("hunter2"), "shows the secret:\n{out}");
    }
    let ws = Workspace::new();
    let ok = ws.config(&with("secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\""));
    let out = validate(&ok);
    out.assert_code(0);
    assert!(out.stdout.contains("signed (standard-webhooks)"), "{out}");
    assert!(!out.stdout.contains("MfKQ9r8"), "{out}");
}

#[test]
fn unknown_signature_scheme_and_compression() {
    let out = assert_config_error(
        &format!("{SOURCE}\n{SINK}signature = \"github\"\n"),
        &[
            "`sinks.webhook.signature`",
            "\"hub\" or \"standard-webhooks\"",
        ],
    );
    assert!(out.stderr.contains("example: signature ="), "{out}");
    let out = assert_config_error(
        &format!("{SOURCE}\n{SINK}compression = \"br\"\n"),
        &[
            "`sinks.webhook.compression`",
            "\"none\", \"gzip\" or \"zstd\"",
        ],
    );
    assert!(
        out.stderr.contains("example: compression = \"gzip\""),
        "{out}"
    );
}

#[test]
fn request_concurrency_out_of_range() {
    for value in ["0", "65"] {
        let out = assert_config_error(
            &format!("{SOURCE}\n{SINK}request_concurrency = {value}\n"),
            &["`sinks.webhook.request_concurrency`"],
        );
        assert!(
            out.stderr.contains("example: request_concurrency = 4"),
            "{out}"
        );
    }
    let ws = Workspace::new();
    let ok = ws.config(&format!(
        "{SOURCE}\n{SINK}request_concurrency = 8\ncompression = \"zstd\"\n"
    ));
    let out = validate(&ok);
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("compression zstd, 8 request(s) in flight"),
        "{out}"
    );
}

/// The journal keys of a TCP or stdin source: each error names the key; the ones flaghook
/// checks itself show how to write it.
#[test]
fn bad_journal_settings_name_their_key() {
    let stdin = "[sources.in]\ntype = \"stdin\"\n";
    let segment = "sources.in.journal_segment_bytes";
    let example = "journal_segment_bytes = \"64MiB\"";
    let cases = [
        (
            "journal_fsync = \"sometimes\"",
            vec!["sources.in.journal_fsync"],
        ),
        (
            "journal_max_bytes = 0",
            vec!["sources.in.journal_max_bytes"],
        ),
        ("journal_segment_bytes = \"1Mb\"", vec![segment]),
        (
            "journal_segment_bytes = 100",
            vec![segment, "4096", example],
        ),
        (
            "journal_segment_bytes = \"2GiB\"",
            vec![segment, "sources.in.journal_max_bytes", example],
        ),
    ];
    for (setting, needles) in cases {
        let out = assert_config_error(&format!("{stdin}{setting}\n\n{SINK}"), &needles[..1]);
        for needle in &needles[1..] {
            assert!(
                out.stderr.contains(needle),
                "{setting}: no {needle:?}:\n{out}"
            );
        }
    }
    let valid = format!("{stdin}journal_segment_bytes = \"1MiB\"\njournal_max_bytes = \"10GiB\"\njournal_fsync = \"always\"\n\n{SINK}");
    let ws = Workspace::new();
    validate(&ws.config(&valid)).assert_code(0);
}

const NATS_SINK: &str = r#"[sinks.central]
type = "nats"
inputs = ["in"]
url = "nats://127.0.0.1:4222"
subject = "goff.events"
"#;

const NATS_SOURCE: &str = r#"[sources.edge]
type = "nats"
url = "nats://127.0.0.1:4222"
stream = "GOFF"
consumer = "central"
subjects = ["goff.events"]
create = true
"#;

const EDGE_SINK: &str = r#"[sinks.webhook]
type = "webhook"
inputs = ["edge"]
endpoint_url = "http://127.0.0.1:9/hook"
"#;

/// A nats sink and a nats source: the base configs are valid (validate connects to
/// nothing), and each error names its full key, before a correct example, and never a
/// password or token.
#[test]
fn nats_sink_and_source_errors_name_the_key() {
    let ws = Workspace::new();
    let out = validate(&ws.config(&format!("{SOURCE}\n{NATS_SINK}")));
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("nats nats://127.0.0.1:4222 subject goff.events"),
        "{out}"
    );
    let out = validate(&ws.config(&format!("{NATS_SOURCE}\n{EDGE_SINK}")));
    out.assert_code(0);
    assert!(out.stdout.contains("stream GOFF consumer central"), "{out}");

    for (extra, key) in [
        ("max_events = 0", "`sinks.central.max_events`"),
        ("subject = \"goff.*\"", "`sinks.central.subject`"),
        ("subjects = [\"x\"]", "subjects"),
        ("user = \"flaghook\"", "`sinks.central.user`"),
        ("password = 918273645", "`sinks.central.password`"),
        (
            "token = \"918273645\"\nuser = \"u\"\npassword = \"p\"",
            "`sinks.central.user` and `sinks.central.token`",
        ),
        (
            "retry_max_backoff = \"0s\"",
            "`sinks.central.retry_max_backoff`",
        ),
        ("tls.server_name = \"x\"", "`sinks.central.tls.server_name`"),
    ] {
        let sink = NATS_SINK.replace("subject = \"goff.events\"\n", "");
        let sink = match extra.starts_with("subject =") {
            true => format!("{sink}{extra}\n"),
            false => format!("{sink}subject = \"goff.events\"\n{extra}\n"),
        };
        let out = assert_config_error(&format!("{SOURCE}\n{sink}"), &[key]);
        assert!(!out.stderr.contains("918273645"), "{out}");
    }
    for (url, why) in [
        ("http://127.0.0.1:4222", "not a NATS server URL"),
        ("", "empty"),
        ("ws://127.0.0.1:4222", "websocket"),
    ] {
        let sink = NATS_SINK.replace("nats://127.0.0.1:4222", url);
        assert_config_error(&format!("{SOURCE}\n{sink}"), &["`sinks.central.url`", why]);
    }

    for (from, to, key) in [
        (
            "stream = \"GOFF\"",
            "stream = \"GO.FF\"",
            "`sources.edge.stream`",
        ),
        (
            "consumer = \"central\"",
            "consumer = \"\"",
            "`sources.edge.consumer`",
        ),
        (
            "subjects = [\"goff.events\"]",
            "subjects = []",
            "`sources.edge.subjects`",
        ),
        (
            "create = true",
            "create = true\nack_wait = \"0s\"",
            "`sources.edge.ack_wait`",
        ),
        (
            "create = true",
            "create = true\nmax_ack_pending = 0",
            "`sources.edge.max_ack_pending`",
        ),
        (
            "create = true",
            "create = true\ncredentials_file = \"missing.creds\"",
            "`sources.edge.credentials_file`",
        ),
        (
            "create = true",
            "create = true\nack_wiat = \"1s\"",
            "ack_wiat",
        ),
    ] {
        let source = NATS_SOURCE.replace(from, to);
        assert_config_error(&format!("{source}\n{EDGE_SINK}"), &[key]);
    }
}

/// A source's `field` names the envelope field a shipper wraps the event in. A name the
/// event itself uses (`value`, `key`, ...) is read as the event's field, never as an
/// envelope, so such a `field` would unwrap an envelope on the fast path and not on the
/// general one: it is refused, for every source that has the key, naming it and a correct
/// example. An empty name is refused too.
#[test]
fn a_field_named_like_an_event_field_is_refused() {
    let sources = [
        "type = \"file\"\ninclude = [\"/nonexistent/flaghook-test/*.json\"]",
        "type = \"stdin\"",
        "type = \"tcp\"\naddress = \"127.0.0.1:9000\"",
        "type = \"fluent\"\naddress = \"127.0.0.1:24224\"",
        "type = \"http\"\naddress = \"127.0.0.1:8080\"",
        "type = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nstream = \"GOFF\"\nconsumer = \"central\"",
    ];
    for source in sources {
        for name in ["value", "kind", "userKey", "metadata", ""] {
            let body = format!("[sources.in]\n{source}\nfield = \"{name}\"\n\n{SINK}");
            let out = assert_config_error(&body, &["sources.in.field"]);
            assert!(
                out.stderr.contains("field = \"message\""),
                "{source}, field = {name:?}: no correct example:\n{out}"
            );
        }
        let ws = Workspace::new();
        let body = format!("[sources.in]\n{source}\nfield = \"payload\"\n\n{SINK}");
        validate(&ws.config(&body)).assert_code(0);
    }
}

/// Values that parsed but could never do what they say are refused, naming the key with a
/// correct example: an empty glob (it matched the config file's folder), an http `path`
/// a request's path cannot be (a space), a `retry_on_status` that is not a 4xx or 5xx
/// (a 2xx is delivered and a 1xx or 3xx always retried, whatever the list says), and a
/// `${...}` that is not a plain name (a shell default like `${A:-x}` was reported as a
/// variable that is not set).
#[test]
fn settings_that_could_never_work_are_refused() {
    let file = |globs: &str| format!("[sources.in]\ntype = \"file\"\n{globs}\n\n{SINK}");
    let http = "[sources.in]\ntype = \"http\"\naddress = \"127.0.0.1:8080\"\n";
    let cases = [
        (
            file("include = [\"\"]"),
            vec!["sources.in.include", "empty glob", "/var/log/goff/*.json"],
        ),
        (
            file("include = [\"/nonexistent/*.json\"]\nexclude = [\" \"]"),
            vec!["sources.in.exclude", "empty glob"],
        ),
        (
            format!("{http}path = \"/a b\"\n\n{SINK}"),
            vec!["sources.in.path", "path = \"/events\""],
        ),
        (
            format!("{SOURCE}\n{SINK}retry_on_status = [503, 200]\n"),
            vec![
                "sinks.webhook.retry_on_status",
                "200",
                "retry_on_status = [408, 429, 503]",
            ],
        ),
        (
            format!("{SOURCE}\n{SINK}retry_on_status = [302]\n"),
            vec!["sinks.webhook.retry_on_status", "302"],
        ),
        (
            format!("{SOURCE}\n{SINK}secret = \"${{WEBHOOK_SECRET:-dev-Sup3rS3cret}}\"\n"),
            vec![
                "sinks.webhook.secret",
                "only `${NAME}` is supported",
                "`${WEBHOOK_SECRET…}`",
            ],
        ),
    ];
    for (body, needles) in cases {
        let out = assert_config_error(&body, &needles[..1]);
        for needle in &needles[1..] {
            assert!(out.stderr.contains(needle), "no {needle:?}:\n{out}");
        }
        // A shell default may be a secret written literally: never shown.
        assert!(!out.stderr.contains("Sup3rS3cret"), "{out}");
    }
    let ws = Workspace::new();
    let valid = format!(
        "{http}path = \"/goff/events-1\"\n\n{SINK}retry_on_status = [401, 408, 429, 599]\n"
    );
    validate(&ws.config(&valid)).assert_code(0);
}
