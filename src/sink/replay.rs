//! `flaghook dead-letter replay`: sends a sink's dead letters again once the cause is
//! fixed (the endpoint accepts them again, or someone corrected the lines in the file).
//!
//! Invariant: a record leaves the file only when the endpoint accepted it (2xx). Every
//! other line stays: a record with the reason it was not delivered, a corrupt line byte
//! for byte. Each line of the file ends up in exactly one of four counts: delivered,
//! rejected (a permanent 4xx, found by bisecting as the sink does), skipped (not sent:
//! filtered out by `event_types`, not a valid event, undecodable `line_base64`, truncated,
//! corrupt) and remaining (sent, but still failing when `retry_max_duration` ran out or
//! replay was stopped, or not tried before the stop).
//!
//! Sending follows the sink's policy: batches of `max_event_in_memory`, `decide` on each
//! response, the sink's backoff and `Retry-After` through `RetryPolicy`, and a refused batch
//! cut in halves down to the events at fault. Replay holds the data_dir lock, so it never
//! runs beside the pipeline that appends to the same file; the file is rewritten once, at
//! the end (a crash before that re-sends on the next replay: at least once).
//!

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::deadletter::{read_lines, rewrite, Line, Record};
use super::pipeline::MessageId;
use super::retry::{Decision, Next, RetryPolicy, Turn};
use super::webhook::{Poster, WebhookSpec};
use crate::event::{envelope_fields, Decoded, Decoder, EventType};
use crate::lock::lock_data_dir;

/// What a replay did. `delivered + rejected + skipped + remaining` is the number of
/// (non-blank) lines the file had; all but the delivered are still in it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub delivered: usize,
    pub rejected: usize,
    pub skipped: usize,
    pub remaining: usize,
    pub file: PathBuf,
}

impl Replayed {
    /// The line `dead-letter replay` prints on stdout.
    pub fn line(&self) -> String {
        format!(
            "replay records={} delivered={} rejected={} skipped={} remaining={} file={}",
            self.delivered + self.rejected + self.skipped + self.remaining,
            self.delivered,
            self.rejected,
            self.skipped,
            self.remaining,
            self.file.display()
        )
    }

    /// 0: every record delivered (or none to send); 2: some were rejected or skipped;
    /// 3: some were not delivered (the endpoint kept failing, or replay was stopped).
    pub fn exit_code(&self) -> u8 {
        if self.remaining > 0 {
            3
        } else if self.rejected + self.skipped > 0 {
            2
        } else {
            0
        }
    }
}

/// What became of one line of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Delivered,
    Rejected,
    Skipped,
    /// Sendable and not delivered (yet).
    Remaining,
}

/// Replays the dead letters of sink `name` (in `data_dir`) to its endpoint, until each is
/// delivered or rejected, or the sink's `retry_max_duration` runs out, or `stop` fires.
pub async fn replay(
    name: &str,
    config: &WebhookSpec,
    data_dir: &Path,
    stop: CancellationToken,
) -> Result<Replayed> {
    let _lock = lock_data_dir(
        data_dir,
        "stop the pipeline first (`dead-letter replay` runs while the pipeline that uses this data_dir is stopped)",
    )?;
    let file = crate::data_dir::DataDir::at(data_dir).dead_letter(name);
    let read = file.clone();
    let numbered = tokio::task::spawn_blocking(move || read_lines(&read))
        .await?
        .with_context(|| format!("cannot read dead letters {}", file.display()))?;
    let (numbers, mut lines): (Vec<usize>, Vec<Line>) = numbered.into_iter().unzip();
    let (mut fates, events) = classify(&mut lines, &numbers, name, config, &file);

    let mut sender = Sender {
        poster: Poster::new(name, config),
        retry: RetryPolicy::for_replay(&config.delivery, stop.clone()),
        name,
        lines: &mut lines,
        fates: &mut fates,
    };
    for chunk in events.chunks(config.max_events()) {
        if stop.is_cancelled() {
            break;
        }
        sender.send(chunk.to_vec()).await;
    }

    let count = |f: Fate| fates.iter().filter(|&&x| x == f).count();
    let outcome = Replayed {
        delivered: count(Fate::Delivered),
        rejected: count(Fate::Rejected),
        skipped: count(Fate::Skipped),
        remaining: count(Fate::Remaining),
        file: file.clone(),
    };
    // An absent or blank file stays as it is.
    if !fates.is_empty() {
        let kept: Vec<Line> = lines
            .into_iter()
            .zip(fates)
            .filter(|(_, fate)| *fate != Fate::Delivered)
            .map(|(line, _)| line)
            .collect();
        tokio::task::spawn_blocking(move || rewrite(&file, kept.iter()))
            .await?
            .with_context(|| format!("cannot rewrite {}", outcome.file.display()))?;
    }
    Ok(outcome)
}

/// Each line's first fate (Remaining: to send; Skipped: not sendable, with the reason set
/// in its record and logged) and the events to send, with their line's index.
fn classify(
    lines: &mut [Line],
    numbers: &[usize],
    name: &str,
    config: &WebhookSpec,
    file: &Path,
) -> (Vec<Fate>, Vec<Pending>) {
    let mut fates = Vec::with_capacity(lines.len());
    let mut events = Vec::new();
    let mut skips = SkipLog::default();
    let mut decoder = Decoder::new(config.schema, &config.event_types);
    for (index, line) in lines.iter_mut().enumerate() {
        match sendable(line, name, config, &mut decoder) {
            Ok(event) => {
                fates.push(Fate::Remaining);
                events.push((index, event));
            }
            Err(why) => {
                skips.log(name, file, numbers[index], &why);
                if let Line::Record(record) = line {
                    record.reason = why;
                }
                fates.push(Fate::Skipped);
            }
        }
    }
    skips.finish(name);
    (fates, events)
}

/// The event to send for `line`, or why it is not sent.
fn sendable(
    line: &Line,
    name: &str,
    config: &WebhookSpec,
    decoder: &mut Decoder,
) -> Result<Bytes, String> {
    let record = match line {
        Line::Record(record) => record,
        Line::Corrupt { error, .. } => {
            return Err(format!("not a dead-letter record ({error}); kept as it is"))
        }
    };
    let raw = record_bytes(record).map_err(|why| format!("skipped by replay: {why}"))?;
    match decoder.decode(&Bytes::from(raw), &envelope_fields(None)) {
        Ok(Decoded::Event(event)) => Ok(event),
        Ok(Decoded::Filtered) => Err(format!(
            "skipped by replay: its kind is not in `sinks.{name}.event_types` ({})",
            kinds(&config.event_types)
        )),
        Ok(Decoded::Empty) => Err("skipped by replay: the line is empty".to_owned()),
        Err(invalid) => Err(format!("skipped by replay: not a valid event: {invalid}")),
    }
}

/// The line a record keeps, or why it cannot be sent.
fn record_bytes(record: &Record) -> Result<Vec<u8>, String> {
    if let Some(full) = record.truncated_from_bytes {
        return Err(format!(
            "only the start of the line was kept ({full} bytes long)"
        ));
    }
    match (&record.line, &record.line_base64) {
        (Some(line), _) => Ok(line.as_bytes().to_vec()),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("`line_base64` does not decode: {e}")),
        (None, None) => Err("the record has neither `line` nor `line_base64`".to_owned()),
    }
}

fn kinds(types: &[EventType]) -> String {
    let names: Vec<&str> = types
        .iter()
        .map(|t| match t {
            EventType::Feature => "\"feature\"",
            EventType::Tracking => "\"tracking\"",
        })
        .collect();
    format!("[{}]", names.join(", "))
}

/// Posts events of the file and records what became of each line.
struct Sender<'a> {
    poster: Poster,
    /// Replay's: `stop` ends it at once.
    retry: RetryPolicy,
    name: &'a str,
    lines: &'a mut [Line],
    fates: &'a mut [Fate],
}

/// A line's index in the file and its encoded event.
type Pending = (usize, Bytes);

impl Sender<'_> {
    /// Delivers `batch` as the sink would: retried on a retryable failure, cut in halves
    /// on 413 or a permanent 4xx down to the single events the endpoint rejects.
    ///
    /// The records are in the dead-letter file, which keeps them (as a file source's
    /// lines): for the retry policy, they are "from files".
    ///
    /// A part keeps its `webhook-id` while it is retried; each half gets its own.
    async fn send(&mut self, batch: Vec<Pending>) {
        let mut parts = VecDeque::from([(batch, MessageId::new())]);
        while let Some((part, id)) = parts.pop_front() {
            if self.retry.turn(true).await == Turn::GiveUp {
                return; // stopped
            }
            let signed = self.poster.prepare(part.iter().map(|(_, e)| &e[..]), &id);
            let outcome = self.poster.post(signed).await;
            match outcome.decision {
                Decision::Delivered => {
                    self.retry.succeeded();
                    self.settle(&part, Fate::Delivered, None);
                }
                Decision::Retry { after } => {
                    let reason = format!("replay failed: {}", outcome.detail);
                    self.settle(&part, Fate::Remaining, Some(&reason));
                    let delay = match self.retry.failed(after, true) {
                        Next::Retry(delay) => delay,
                        Next::OutOfTime(max) => {
                            self.give_up(part, parts, max, &outcome.detail);
                            return;
                        }
                        Next::StayInFiles => return, // stopped
                    };
                    tracing::warn!(
                        sink = self.name,
                        events = part.len(),
                        retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
                        "replay: delivery failed ({}); will retry (SIGINT stops; the records stay in the file)",
                        outcome.detail
                    );
                    parts.push_front((part, id));
                }
                Decision::Split | Decision::Reject if part.len() == 1 => {
                    let reason = format!("endpoint rejected the event: {}", outcome.detail);
                    tracing::warn!(sink = self.name, "replay: {reason}; it stays in the file");
                    self.settle(&part, Fate::Rejected, Some(&reason));
                }
                Decision::Split | Decision::Reject => {
                    tracing::info!(
                        sink = self.name,
                        events = part.len(),
                        "replay: {}; sending the batch in two halves",
                        outcome.detail
                    );
                    let mut first = part;
                    let second = first.split_off(first.len() / 2);
                    parts.push_front((second, MessageId::new()));
                    parts.push_front((first, MessageId::new()));
                }
            }
        }
    }

    /// `retry_max_duration` has passed: what is left of the batch stays in the file.
    fn give_up(
        &mut self,
        part: Vec<Pending>,
        rest: VecDeque<(Vec<Pending>, MessageId)>,
        max: Duration,
        detail: &str,
    ) {
        let reason = format!(
            "still failing after {} (replay): {detail}",
            humantime::format_duration(max)
        );
        tracing::error!(sink = self.name, "{reason}; the records stay in the file");
        for part in std::iter::once(part).chain(rest.into_iter().map(|(part, _)| part)) {
            self.settle(&part, Fate::Remaining, Some(&reason));
        }
    }

    fn settle(&mut self, part: &[Pending], fate: Fate, reason: Option<&str>) {
        for (index, _) in part {
            self.fates[*index] = fate;
            if let (Some(reason), Line::Record(record)) = (reason, &mut self.lines[*index]) {
                record.reason = reason.to_owned();
            }
        }
    }
}

/// Logs skipped lines without flooding: the first few, then a count.
#[derive(Default)]
struct SkipLog {
    logged: usize,
    suppressed: usize,
}

impl SkipLog {
    const MAX: usize = 10;

    fn log(&mut self, sink: &str, file: &Path, number: usize, why: &str) {
        if self.logged == Self::MAX {
            self.suppressed += 1;
            return;
        }
        self.logged += 1;
        tracing::warn!(sink, "{} line {number}: {why}", file.display());
    }

    fn finish(&self, sink: &str) {
        if self.suppressed > 0 {
            tracing::warn!(
                sink,
                "{} more lines skipped (each record keeps its reason in the file)",
                self.suppressed
            );
        }
    }
}
