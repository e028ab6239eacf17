//! Events to feed flaghook: GO Feature Flag's encodings, small events with a numeric id (which
//! the endpoint's [`Tally`](super::Tally) counts), the known-answer vector and HMAC signing.

use std::io::{BufWriter, Write};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

// ---------------------------------------------------------------------------------------------
// Known-answer vector (GO Feature Flag's own webhook exporter test, see goff-webhook.md).

pub const KAT_EVENT_1: &str = r#"{"kind":"feature","contextKind":"anonymousUser","userKey":"ABCD","creationDate":1617970547,"key":"random-key","variation":"Default","value":"YO","default":false,"version":"","source":"SERVER"}"#;
pub const KAT_EVENT_2: &str = r#"{"kind":"feature","contextKind":"anonymousUser","userKey":"EFGH","creationDate":1617970701,"key":"random-key","variation":"Default","value":"YO2","default":false,"version":"127","source":"SERVER"}"#;
pub const KAT_SECRET: &str = "secret";
pub const KAT_SIGNATURE: &str =
    "sha256=f1f9766836d4e513035986c035ee9f091b895709be47a802b5840467007e1ec0";

/// The exact body GO Feature Flag sends for the known-answer vector.
pub fn kat_body() -> String {
    format!(r#"{{"meta":{{"hostname":"hostname"}},"events":[{KAT_EVENT_1},{KAT_EVENT_2}]}}"#)
}

// ---------------------------------------------------------------------------------------------
// Events in GO Feature Flag's encoding.

/// A feature event in GO Feature Flag's compact encoding, unique per `i`.
pub fn feature_event(i: usize) -> String {
    format!(
        r#"{{"kind":"feature","contextKind":"user","userKey":"user-{i}","creationDate":{},"key":"flag-{i}","variation":"on","value":true,"default":false,"version":"v1","source":"SERVER"}}"#,
        1_700_000_000 + i
    )
}

/// A tracking event in GO Feature Flag's compact encoding, unique per `i`.
pub fn tracking_event(i: usize) -> String {
    format!(
        r#"{{"kind":"tracking","contextKind":"user","userKey":"user-{i}","creationDate":{},"key":"event-{i}","evaluationContext":{{"targetingKey":"user-{i}","plan":"pro"}},"trackingEventDetails":{{"amount":{i}}}}}"#,
        1_700_000_000 + i
    )
}

/// `n` distinct feature events, numbered from `start`.
pub fn feature_events(start: usize, n: usize) -> Vec<String> {
    (start..start + n).map(feature_event).collect()
}

/// One event per line, each ending in `\n`.
pub fn jsonl<S: AsRef<str>>(events: &[S]) -> String {
    events.iter().map(|e| format!("{}\n", e.as_ref())).collect()
}

/// A JSON string literal holding `s` (for shipper envelopes).
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Events with a numeric id.

/// A minimal valid GO Feature Flag feature event whose `userKey` is `u<id>`.
pub fn small_event(id: u64) -> String {
    format!(r#"{{"kind":"feature","key":"k","userKey":"u{id}","creationDate":1700000000}}"#)
}

/// `small_event(id)` for every id of `ids`, one per line.
pub fn small_lines(ids: std::ops::Range<u64>) -> String {
    let mut s = String::with_capacity((ids.end - ids.start) as usize * 72);
    for id in ids {
        s.push_str(&small_event(id));
        s.push('\n');
    }
    s
}

/// Writes `small_event(id)` lines for `ids` to `path` (created or replaced).
pub fn write_small_events(path: &Path, ids: std::ops::Range<u64>) {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    for id in ids {
        writeln!(w, "{}", small_event(id)).unwrap();
    }
    w.flush().unwrap();
}

/// Appends `text` to `path` (created if missing).
pub fn append(path: &Path, text: impl AsRef<[u8]>) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_ref()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Signatures and host name.

/// `sha256=<hex HMAC-SHA256(secret, body)>`
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The machine's host name, as gethostname(2) gives it (GO Feature Flag's os.Hostname()).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    assert_eq!(rc, 0, "gethostname failed");
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
