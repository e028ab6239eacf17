//! The request on the wire: GO Feature Flag's exact webhook format, signature, headers, meta,
//! and how events are re-encoded per schema.

use crate::harness::*;
use serde_json::json;

/// The known-answer vector from GO Feature Flag's own test: byte-identical body and signature.
#[test]
fn known_answer_vector_body_and_signature() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&[KAT_EVENT_1, KAT_EVENT_2]),
        &server.url(),
        r#"secret = "secret"
meta = { hostname = "hostname" }"#,
    );
    let out = run_once(&config);
    out.assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "expected exactly one request:\n{out}");
    let req = &reqs[0];
    assert_eq!(req.body_str(), kat_body(), "body must be byte-identical");
    assert_eq!(
        req.header_values("x-hub-signature-256"),
        vec![KAT_SIGNATURE]
    );
    // The helper agrees with GO Feature Flag, so the other tests' checks mean something.
    assert_eq!(signature(KAT_SECRET, kat_body().as_bytes()), KAT_SIGNATURE);
}

#[test]
fn request_is_post_to_the_configured_path_and_query() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let url = format!("http://{}/collector/v1?token=abc", server.addr());
    let config = ws.file_pipeline(jsonl(&[feature_event(0)]), &url, "");
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/collector/v1?token=abc");
}

#[test]
fn signature_covers_exact_body_bytes_with_any_secret() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let secret = "s3cr\u{e9}t with spaces & symbols";
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 4)),
        &server.url(),
        &format!("secret = {}", toml_str(secret)),
    );
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].header_values("x-hub-signature-256"),
        vec![signature(secret, &reqs[0].body)]
    );
    assert_eq!(reqs[0].events(), feature_events(0, 4));
}

#[test]
fn no_signature_header_without_secret() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(jsonl(&[feature_event(0)]), &server.url(), "");
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert!(
        reqs[0].header("x-hub-signature-256").is_none(),
        "unexpected signature header: {:?}",
        reqs[0].headers
    );
    assert_eq!(reqs[0].events(), vec![feature_event(0)]);
}

#[test]
fn body_is_compact_meta_first_without_trailing_newline() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let events = feature_events(0, 2);
    let config = ws.file_pipeline(
        jsonl(&events),
        &server.url(),
        r#"meta = { hostname = "h" }"#,
    );
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let expected = format!(
        r#"{{"meta":{{"hostname":"h"}},"events":[{},{}]}}"#,
        events[0], events[1]
    );
    assert_eq!(reqs[0].body_str(), expected);
}

#[test]
fn user_headers_are_sent_with_every_value() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&[feature_event(0)]),
        &server.url(),
        r#"headers = { Authorization = ["Bearer token"], X-Multi = ["one", "two"], X-Single = "solo" }"#,
    );
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.header_values("authorization"), vec!["Bearer token"]);
    assert_eq!(req.header_list("x-multi"), vec!["one", "two"]);
    assert_eq!(req.header_values("x-single"), vec!["solo"]);
}

#[test]
fn content_type_is_json_and_not_overridable() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&[feature_event(0)]),
        &server.url(),
        r#"headers = { Content-Type = "text/plain", X-Other = "kept" }"#,
    );
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].header_values("content-type"),
        vec!["application/json"]
    );
    assert_eq!(reqs[0].header_values("x-other"), vec!["kept"]);
}

#[test]
fn user_agent_is_flaghook_version() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(jsonl(&[feature_event(0)]), &server.url(), "");
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].header_values("user-agent"),
        vec![format!("flaghook/{}", env!("CARGO_PKG_VERSION"))]
    );
}

#[test]
fn hostname_meta_is_added_when_unset() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&[feature_event(0)]),
        &server.url(),
        r#"meta = { extraInfo = "info" }"#,
    );
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].meta(),
        json!({"hostname": hostname(), "extraInfo": "info"})
    );
}

#[test]
fn hostname_meta_is_added_without_any_meta() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(jsonl(&[feature_event(0)]), &server.url(), "");
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].meta(), json!({ "hostname": hostname() }));
}

#[test]
fn hostname_meta_is_kept_when_set() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&[feature_event(0)]),
        &server.url(),
        r#"meta = { hostname = "custom-host", env = "prod" }"#,
    );
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].meta(),
        json!({"hostname": "custom-host", "env": "prod"})
    );
}

/// Events already in GO Feature Flag's compact encoding come out byte-identical, including
/// nested values, metadata, and tracking events.
#[test]
fn goff_compact_events_are_byte_identical() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let events = vec![
        r#"{"kind":"feature","contextKind":"anonymousUser","userKey":"ABCD","creationDate":1617970547,"key":"random-key","variation":"Default","value":{"bool":true,"float":1.23,"int":1,"string":"string"},"default":false,"version":"","source":"","metadata":{"metadata1":"metadata1","metadata2":24,"metadata3":true}}"#.to_string(),
        r#"{"kind":"tracking","contextKind":"anonymousUser","userKey":"ABCD","creationDate":1617970547,"key":"random-key","evaluationContext":{"targetingKey":"ABCD","toto":123},"trackingEventDetails":{"event":"123"}}"#.to_string(),
        r#"{"kind":"feature","userKey":"no-context-kind","creationDate":1617970548,"key":"k","variation":"SdkDefault","value":null,"default":true,"version":"3","source":"PROVIDER_CACHE"}"#.to_string(),
        r#"{"kind":"feature","contextKind":"user","userKey":"unicode \u00e9 \"quoted\"","creationDate":1617970549,"key":"k","variation":"v","value":["a",1,{"z":0,"a":1}],"default":false,"version":"","source":"SERVER"}"#.to_string(),
        KAT_EVENT_1.to_string(),
    ];
    let config = ws.file_pipeline(jsonl(&events), &server.url(), "");
    run_once(&config).assert_code(0);

    assert_eq!(server.delivered(), events);
}

/// GO Feature Flag writes a tracking event's nil `evaluationContext` / `trackingEventDetails`
/// as `null` (its struct has no `omitempty` there): such lines, and `{}` ones, are sent as
/// they came, byte for byte in the request body.
#[test]
fn tracking_events_with_null_maps_are_byte_identical() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let events = [
        r#"{"kind":"tracking","contextKind":"user","userKey":"u1","creationDate":1700000000,"key":"checkout","evaluationContext":null,"trackingEventDetails":null}"#,
        r#"{"kind":"tracking","userKey":"u2","creationDate":1700000001,"key":"checkout","evaluationContext":{"targetingKey":"u2"},"trackingEventDetails":null}"#,
        r#"{"kind":"tracking","userKey":"u3","creationDate":1700000002,"key":"checkout","evaluationContext":{},"trackingEventDetails":{}}"#,
    ];
    let config = ws.file_pipeline(
        jsonl(&events),
        &server.url(),
        r#"meta = { hostname = "h" }"#,
    );
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].body_str(),
        format!(
            r#"{{"meta":{{"hostname":"h"}},"events":[{}]}}"#,
            events.join(",")
        )
    );
}

/// A shipper's fields beside the event (Vector's host/timestamp/source_type) are dropped.
#[test]
fn extra_shipper_fields_are_dropped_with_schema_goff() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let input = r#"{"host":"web-1","kind":"feature","contextKind":"user","userKey":"u1","creationDate":1700000000,"key":"flag","variation":"on","value":true,"default":false,"version":"v1","source":"SERVER","source_type":"socket","timestamp":"2024-01-01T00:00:00Z","extra":{"x":1}}"#;
    let expected = r#"{"kind":"feature","contextKind":"user","userKey":"u1","creationDate":1700000000,"key":"flag","variation":"on","value":true,"default":false,"version":"v1","source":"SERVER"}"#;
    let config = ws.file_pipeline(format!("{input}\n"), &server.url(), r#"schema = "goff""#);
    run_once(&config).assert_code(0);

    assert_eq!(server.delivered(), vec![expected]);
}

/// Fields given in another order and with whitespace come out in GO Feature Flag's order,
/// compact; nested values are kept as they came (key order included), compacted.
#[test]
fn out_of_order_fields_are_reordered_and_compacted() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let feature_in = r#"{ "source": "SERVER", "version": "2", "default": false, "value": { "z": 1, "a": [1, 2, {"m" : null}] }, "variation": "on", "key": "flag", "creationDate": 1700000001, "userKey": "u1", "contextKind": "user", "kind": "feature", "metadata": { "b": "x", "a": 2 } }"#;
    let feature_out = r#"{"kind":"feature","contextKind":"user","userKey":"u1","creationDate":1700000001,"key":"flag","variation":"on","value":{"z":1,"a":[1,2,{"m":null}]},"default":false,"version":"2","source":"SERVER","metadata":{"b":"x","a":2}}"#;
    let tracking_in = r#"{"trackingEventDetails": {"y": 2, "x": 1}, "evaluationContext": {"targetingKey": "u2"}, "key": "checkout", "creationDate": 1700000002, "userKey": "u2", "kind": "tracking"}"#;
    let tracking_out = r#"{"kind":"tracking","userKey":"u2","creationDate":1700000002,"key":"checkout","evaluationContext":{"targetingKey":"u2"},"trackingEventDetails":{"y":2,"x":1}}"#;
    let config = ws.file_pipeline(jsonl(&[feature_in, tracking_in]), &server.url(), "");
    run_once(&config).assert_code(0);

    assert_eq!(server.delivered(), vec![feature_out, tracking_out]);
}

/// `contextKind` and `metadata` are omitted when empty, as GO Feature Flag's omitempty does.
#[test]
fn empty_context_kind_and_metadata_are_omitted() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let input = r#"{"kind":"feature","contextKind":"","userKey":"u","creationDate":1700000000,"key":"k","variation":"on","value":1,"default":false,"version":"","source":"SERVER","metadata":{}}"#;
    let expected = r#"{"kind":"feature","userKey":"u","creationDate":1700000000,"key":"k","variation":"on","value":1,"default":false,"version":"","source":"SERVER"}"#;
    let config = ws.file_pipeline(format!("{input}\n"), &server.url(), "");
    run_once(&config).assert_code(0);

    assert_eq!(server.delivered(), vec![expected]);
}

/// Tracking events pass by default; `event_types` selects which kinds a sink sends, and
/// several sinks reading one source each get every event they select.
#[test]
fn tracking_events_and_event_types_filtering() {
    let features_srv = Endpoint::start();
    let tracking_srv = Endpoint::start();
    let all_srv = Endpoint::start();
    let ws = Workspace::new();
    let mut events = Vec::new();
    let mut features = Vec::new();
    let mut trackings = Vec::new();
    for i in 0..6 {
        let f = feature_event(i);
        let t = tracking_event(100 + i);
        events.push(f.clone());
        events.push(t.clone());
        features.push(f);
        trackings.push(t);
    }
    let input = ws.write("events.json", jsonl(&events));
    let config = ws.config(&format!(
        r#"[sources.in]
type = "file"
include = [{input}]

[sinks.features]
type = "webhook"
inputs = ["in"]
endpoint_url = {f}
event_types = ["feature"]

[sinks.tracking]
type = "webhook"
inputs = ["in"]
endpoint_url = {t}
event_types = ["tracking"]

[sinks.all]
type = "webhook"
inputs = ["in"]
endpoint_url = {a}
"#,
        input = toml_str(&input),
        f = toml_str(features_srv.url()),
        t = toml_str(tracking_srv.url()),
        a = toml_str(all_srv.url()),
    ));
    let out = run_once(&config);
    out.assert_code(0);

    assert_eq!(features_srv.delivered(), features);
    assert_eq!(tracking_srv.delivered(), trackings);
    assert_eq!(all_srv.delivered(), events);
    let s = out.summary();
    assert_eq!(s.events_delivered, 24, "summed across sinks:\n{out}");
    assert_eq!(s.events_rejected, 0, "{out}");
    assert_eq!(s.events_not_delivered, 0, "{out}");
}

#[test]
fn several_sinks_reading_one_source_each_get_every_event() {
    let a = Endpoint::start();
    let b = Endpoint::start();
    let ws = Workspace::new();
    let events = feature_events(0, 5);
    let input = ws.write("events.json", jsonl(&events));
    let config = ws.config(&format!(
        r#"[sources.in]
type = "file"
include = [{input}]

[sinks.a]
type = "webhook"
inputs = ["in"]
endpoint_url = {a}
secret = "aaa"

[sinks.b]
type = "webhook"
inputs = ["in"]
endpoint_url = {b}
max_event_in_memory = 2
"#,
        input = toml_str(&input),
        a = toml_str(a.url()),
        b = toml_str(b.url()),
    ));
    let out = run_once(&config);
    out.assert_code(0);

    assert_eq!(a.delivered(), events);
    assert_eq!(b.delivered(), events);
    let a_reqs = a.requests();
    assert_eq!(a_reqs.len(), 1);
    assert_eq!(
        a_reqs[0].header("x-hub-signature-256"),
        Some(signature("aaa", &a_reqs[0].body).as_str())
    );
    let b_sizes: Vec<usize> = b.requests().iter().map(|r| r.events().len()).collect();
    assert_eq!(b_sizes, vec![2, 2, 1]);
    assert!(b.requests()[0].header("x-hub-signature-256").is_none());
}

/// `schema = "any"`: any JSON object is sent as it came, compacted (key order kept).
#[test]
fn schema_any_passes_arbitrary_objects_compacted() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let lines = [
        r#"{ "msg": "hello", "level": "info", "n": 1 }"#,
        r#"{"zeta":{"b":2,"a":[1, 2, 3]},"alpha":null}"#,
        r#"{"kind":"not-goff","anything":true}"#,
        KAT_EVENT_1,
    ];
    let expected = vec![
        r#"{"msg":"hello","level":"info","n":1}"#,
        r#"{"zeta":{"b":2,"a":[1,2,3]},"alpha":null}"#,
        r#"{"kind":"not-goff","anything":true}"#,
        KAT_EVENT_1,
    ];
    let config = ws.file_pipeline(
        jsonl(&lines),
        &server.url(),
        r#"schema = "any"
secret = "k""#,
    );
    let out = run_once(&config);
    out.assert_code(0);

    assert_eq!(server.delivered(), expected);
    let req = &server.requests()[0];
    assert_eq!(
        req.header("x-hub-signature-256"),
        Some(signature("k", &req.body).as_str())
    );
    assert_eq!(out.summary().events_delivered, 4);
}

/// Requests of one sink reuse a keep-alive connection instead of one connection each.
#[test]
fn requests_reuse_keep_alive_connections() {
    let server = Endpoint::start();
    let ws = Workspace::new();
    let config = ws.file_pipeline(
        jsonl(&feature_events(0, 12)),
        &server.url(),
        "max_event_in_memory = 2",
    );
    run_once(&config).assert_code(0);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 6);
    let mut conns: Vec<usize> = reqs.iter().map(|r| r.connection).collect();
    conns.sort();
    conns.dedup();
    assert!(
        conns.len() < reqs.len(),
        "every request opened its own connection: {conns:?}"
    );
    assert_eq!(server.delivered(), feature_events(0, 12));
}
