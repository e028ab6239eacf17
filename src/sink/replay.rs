//! `flaghook dead-letter replay`: sends a sink's dead letters again once the cause is
//! fixed (the endpoint accepts them again, or someone corrected the lines in the file).
//!
//! Each record's line is decoded with the sink's schema and posted in batches of
//! `max_event_in_memory`. Delivered records leave the file; the others stay, with the
//! new reason. Run it while the pipeline that writes this dead-letter file is stopped:
//! the file is rewritten at the end.

use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine;

use super::deadletter::{read_all, Record};
use super::webhook::{Decision, Poster, WebhookConfig};
use crate::event::{envelope_fields, Decoded, Decoder};
use crate::source::file::checkpoint::write_atomically;

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub delivered: usize,
    pub remaining: usize,
}

/// Replays `path` (the dead letters of sink `name`) to that sink's endpoint.
pub async fn replay(name: &str, config: &WebhookConfig, path: &Path) -> Result<Replayed> {
    let records =
        read_all(path).with_context(|| format!("cannot read dead letters {}", path.display()))?;
    let poster = Poster::new(name, config)?;
    let mut decoder = Decoder::new(config.schema, &config.event_types);
    let envelope = envelope_fields(None);
    let mut remaining = Vec::new();
    let mut ready = Vec::new();
    for mut record in records {
        let raw = record_bytes(&record);
        match decoder.decode(&bytes::Bytes::from(raw), &envelope) {
            Ok(Decoded::Event(event)) => ready.push((record, event)),
            Ok(Decoded::Filtered | Decoded::Empty) => {}
            Err(invalid) => {
                record.reason = format!("still not a valid event: {invalid}");
                remaining.push(record);
            }
        }
    }
    let mut outcome = Replayed::default();
    for chunk in ready.chunks(config.max_event_in_memory) {
        let result = poster
            .post(poster.prepare(chunk.iter().map(|(_, e)| e)))
            .await;
        if result.decision == Decision::Delivered {
            outcome.delivered += chunk.len();
            continue;
        }
        // One by one, so that a single bad event does not hold back the others.
        for (record, event) in chunk {
            let one = poster.post(poster.prepare(std::iter::once(event))).await;
            if one.decision == Decision::Delivered {
                outcome.delivered += 1;
            } else {
                let mut record = record.clone();
                record.reason = format!("replay failed: {}", one.detail);
                remaining.push(record);
            }
        }
    }
    outcome.remaining = remaining.len();
    let mut text = Vec::new();
    for record in &remaining {
        serde_json::to_writer(&mut text, record)?;
        text.push(b'\n');
    }
    write_atomically(path, &text).with_context(|| format!("cannot rewrite {}", path.display()))?;
    Ok(outcome)
}

fn record_bytes(record: &Record) -> Vec<u8> {
    match (&record.line, &record.line_base64) {
        (Some(line), _) => line.as_bytes().to_vec(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default(),
        (None, None) => Vec::new(),
    }
}
