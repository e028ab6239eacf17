//! Dead letters: `data_dir/dead-letter/<sink>.jsonl`, one JSON line per rejected event or
//! bad input line, with the time, where it came from, why, and the event or raw line
//! (in base64 when it is not valid UTF-8, or when base64 is shorter than JSON's escapes,
//! so nothing is lost in the record and control characters do not grow it sixfold).
//!
//! A dead letter counts as a delivery only once it is on the disk: [`DeadLetters::append`]
//! writes whole records in one `write` and fsyncs them before it returns, and the sink
//! acknowledges the lines' positions only after that. When the write fails (a full disk, a
//! directory in the way), the file is cut back to its last whole record and the error
//! returned, for the sink to retry ([`DeadLetterWriter`]). A tail torn by a crash in the middle of a write is cut
//! off when the file is opened, so that records are never glued to a torn one.
//!
//! Once the file holds `dead_letter_max_bytes`, records keep only the first KiB of their
//! line ([`KEPT_PAST_CAP`]) and say how many bytes they left out.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::delivery::Delivery;
use super::retry::Grace;
use crate::data_dir::write_atomically;

/// How much of a line a record keeps once the file holds `dead_letter_max_bytes`.
pub(crate) const KEPT_PAST_CAP: usize = 1024;

/// One dead letter, as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Record {
    /// RFC 3339 time of writing.
    pub(crate) time: String,
    pub(crate) sink: String,
    /// The source's name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<String>,
    /// A file path, `tcp <peer>` or `stdin`, with the line number and end offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) location: Option<String>,
    pub(crate) reason: String,
    /// The line or encoded event, when it is valid UTF-8 (and not mostly control
    /// characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) line: Option<String>,
    /// The line in base64, when it is not valid UTF-8, or when that is shorter than `line`
    /// would be with its escapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) line_base64: Option<String>,
    /// The whole line's length, set when only its start is kept (it was longer than
    /// `max_line_bytes`, or the file had reached `dead_letter_max_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) truncated_from_bytes: Option<u64>,
    /// Set when the file had reached `dead_letter_max_bytes`: how many bytes of the line
    /// this record leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) dropped_bytes: Option<u64>,
    /// Whether `line` is an event a webhook rejected (and `replay` may send again).
    #[serde(default)]
    pub(crate) replayable: bool,
}

impl Record {
    pub(crate) fn new(sink: &str, reason: String, raw: &[u8]) -> Self {
        let (line, line_base64) = match std::str::from_utf8(raw) {
            Ok(text) if escaped_len(text) <= base64_len(raw.len()) => (Some(text.to_owned()), None),
            _ => (None, Some(base64_engine().encode(raw))),
        };
        Record {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            sink: sink.to_owned(),
            source: None,
            location: None,
            reason,
            line,
            line_base64,
            truncated_from_bytes: None,
            dropped_bytes: None,
            replayable: false,
        }
    }

    /// Keeps only the first `keep` bytes of the line (cut at a character boundary in
    /// `line`), noting the whole length and what was left out.
    fn keep_start(&mut self, keep: usize) {
        let (full, kept) = match (&mut self.line, &mut self.line_base64) {
            (Some(text), _) => {
                let cut = (0..=keep.min(text.len()))
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                let full = text.len();
                text.truncate(cut);
                (full, cut)
            }
            (None, Some(b64)) => {
                let Ok(mut raw) = base64_engine().decode(b64.as_bytes()) else {
                    return; // written by hand: left as it is
                };
                let full = raw.len();
                raw.truncate(keep);
                *b64 = base64_engine().encode(&raw);
                (full, raw.len())
            }
            (None, None) => return,
        };
        if kept < full {
            let whole = self.truncated_from_bytes.unwrap_or(full as u64);
            self.truncated_from_bytes = Some(whole);
            self.dropped_bytes = Some(whole - kept as u64);
        }
    }
}

fn base64_engine() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

/// The length of `text` as a JSON string's content: `"`, `\` and control characters are
/// escaped (`\u0001` for most control characters: six bytes for one).
fn escaped_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// A sink's dead-letter file, opened on first use.
#[derive(Debug)]
pub(crate) struct DeadLetters {
    path: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    file: Option<File>,
    /// The file's length up to its last durable record, once opened: what a failed write
    /// is cut back to.
    durable_len: Option<u64>,
    /// The cap was reached and said so (once).
    cap_logged: bool,
}

impl DeadLetters {
    /// The dead letters at `path`; records past `max_bytes` keep only the start of their
    /// line.
    pub(crate) fn new(path: PathBuf, max_bytes: u64) -> Self {
        DeadLetters {
            path,
            max_bytes,
            state: Mutex::default(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `records` and fsyncs them: when this returns Ok, they are on the disk.
    ///
    /// They go out in one `write`, each record whole with its newline. On an error, what
    /// part of them reached the file is cut off again (best effort; the next open cuts it
    /// otherwise), so that a retry writes them whole, once. Blocks: call it from a
    /// blocking thread.
    pub(crate) fn append(&self, records: &mut [Record]) -> io::Result<()> {
        let mut state = self.state.lock().expect("dead letter lock");
        if state.file.is_none() {
            let (file, len) = self.open(state.durable_len)?;
            state.file = Some(file);
            state.durable_len = Some(len);
        }
        let len = state.durable_len.expect("set when opened");
        let mut text = Vec::new();
        for record in records.iter_mut() {
            if len + text.len() as u64 >= self.max_bytes {
                if !state.cap_logged {
                    state.cap_logged = true;
                    tracing::warn!(path = %self.path.display(), max_bytes = self.max_bytes, "the dead-letter file reached dead_letter_max_bytes: from now on records keep only the first {KEPT_PAST_CAP} bytes of their line (`dropped_bytes` says how many were left out)");
                }
                record.keep_start(KEPT_PAST_CAP);
            }
            serde_json::to_writer(&mut text, record)?;
            text.push(b'\n');
        }
        let file = state.file.as_mut().expect("opened above");
        match file.write_all(&text).and_then(|()| file.sync_data()) {
            Ok(()) => {
                state.durable_len = Some(len + text.len() as u64);
                Ok(())
            }
            Err(e) => {
                if let Some(file) = state.file.take() {
                    let _ = file.set_len(len);
                }
                Err(e)
            }
        }
    }

    /// Opens the file for appending and makes it end with a whole record: past
    /// `durable_len` (what an earlier failed write left), or past its last newline (a
    /// tail torn by a crash), it is cut. Returns the file and its length.
    fn open(&self, durable_len: Option<u64>) -> io::Result<(File, u64)> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if !meta.file_type().is_file() && !meta.file_type().is_symlink() => {
                return Err(io::Error::other(format!(
                    "{} is not a regular file (move it away)",
                    self.path.display()
                )))
            }
            _ => {}
        }
        let file = crate::data_dir::open_append(&self.path)?;
        let len = file.metadata()?.len();
        let whole = match durable_len {
            Some(durable) if durable <= len => durable,
            _ => len_to_last_newline(&self.path, len)?,
        };
        if whole < len {
            file.set_len(whole)?;
            tracing::warn!(path = %self.path.display(), bytes = len - whole, "cut a torn record off the end of the dead-letter file (its line was not acknowledged, so it is dead-lettered again)");
        }
        file.sync_all()?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok((file, whole))
    }
}

/// The length of the file at `path` (`len` bytes) up to its last newline; 0 without one.
fn len_to_last_newline(path: &Path, len: u64) -> io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let file = crate::data_dir::open_read(path)?;
    let mut buf = vec![0; 64 * 1024];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(at) = memchr::memrchr(b'\n', chunk) {
            return Ok(start + at as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// One non-blank line of a dead-letter file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Line {
    Record(Record),
    /// Not a record: torn by a crash while it was written, or broken by an edit. Kept as
    /// it is, for someone to look at.
    Corrupt {
        bytes: Vec<u8>,
        error: String,
    },
}

/// Reads every non-blank line of a dead-letter file, with its line number (from 1); none
/// when the file does not exist.
pub(crate) fn read_lines(path: &Path) -> io::Result<Vec<(usize, Line)>> {
    let bytes = match crate::data_dir::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let lines = bytes.split(|b| *b == b'\n').enumerate();
    Ok(lines
        .filter(|(_, l)| !l.trim_ascii().is_empty())
        .map(|(i, l)| {
            let line = match serde_json::from_slice(l) {
                Ok(record) => Line::Record(record),
                Err(e) => Line::Corrupt {
                    bytes: l.to_vec(),
                    error: e.to_string(),
                },
            };
            (i + 1, line)
        })
        .collect())
}

/// Replaces the file by `lines`, atomically: a crash leaves either the old file or the
/// new one.
pub(crate) fn rewrite<'a>(path: &Path, lines: impl Iterator<Item = &'a Line>) -> io::Result<()> {
    let mut text = Vec::new();
    for line in lines {
        match line {
            Line::Record(record) => serde_json::to_writer(&mut text, record)?,
            Line::Corrupt { bytes, .. } => text.extend_from_slice(bytes),
        }
        text.push(b'\n');
    }
    write_atomically(path, &text)
}

/// Writes a sink's dead letters, retrying while that fails.
#[derive(Debug)]
pub(crate) struct DeadLetterWriter {
    sink: String,
    file: Arc<DeadLetters>,
    initial_backoff: Duration,
    max_backoff: Duration,
    /// With `--once`: how long a failing write is retried before it is given up.
    once_limit: Option<Duration>,
    /// A write was given up and none has succeeded since: the next failure gives up at once
    /// (each waiting `once_limit` would make `--once` last that long per block).
    broken: bool,
}

impl DeadLetterWriter {
    pub(crate) fn new(sink: &str, file: Arc<DeadLetters>, delivery: &Delivery, once: bool) -> Self {
        DeadLetterWriter {
            sink: sink.to_owned(),
            file,
            initial_backoff: delivery.retry_initial_backoff,
            max_backoff: delivery.retry_max_backoff,
            once_limit: once.then_some(delivery.shutdown_timeout),
            broken: false,
        }
    }

    /// Another writer to the same file, for the decode task.
    pub(crate) fn clone_for_decode(&self) -> Self {
        DeadLetterWriter {
            sink: self.sink.clone(),
            file: self.file.clone(),
            broken: false,
            ..*self
        }
    }

    /// Puts `records` on the disk; true once they are. While that fails, logs why and
    /// retries with backoff (`retry_initial_backoff` doubling up to `retry_max_backoff`).
    /// Gives up (false) after the grace period at shutdown, or with `--once` after
    /// `shutdown_timeout`.
    pub(crate) async fn write(&mut self, mut records: Vec<Record>, grace: &mut Grace) -> bool {
        let started = Instant::now();
        let mut delay = self.initial_backoff;
        let mut log = FailureLog::default();
        loop {
            let file = self.file.clone();
            let (back, written) = tokio::task::spawn_blocking(move || {
                let written = file.append(&mut records);
                (records, written)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            records = back;
            let error = match written {
                Ok(()) => {
                    self.broken = false;
                    log.recovered(&self.sink);
                    return true;
                }
                Err(e) => e,
            };
            let out_of_time = self.once_limit.is_some_and(|l| started.elapsed() >= l);
            if self.broken || out_of_time || grace.expired() {
                if !self.broken {
                    tracing::error!(sink = %self.sink, path = %self.file.path().display(), error = %error, "cannot write dead letters; giving up until one can be written: their lines are not delivered");
                }
                self.broken = true;
                return false;
            }
            log.failed(&self.sink, self.file.path(), &error, delay);
            grace.sleep(delay).await;
            delay = (delay * 2).min(self.max_backoff);
        }
    }
}

/// Logs failed dead-letter writes without flooding: the first, then one a minute.
#[derive(Default)]
struct FailureLog {
    failures: u64,
    last: Option<Instant>,
}

impl FailureLog {
    const EVERY: Duration = Duration::from_secs(60);

    fn failed(
        &mut self,
        sink: &str,
        path: &std::path::Path,
        error: &std::io::Error,
        delay: Duration,
    ) {
        self.failures += 1;
        if self.last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        tracing::error!(
            sink,
            path = %path.display(),
            error = %error,
            failures = self.failures,
            retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
            "cannot write dead letters; will retry (their lines' positions do not move, and reading stops once the memory budget is full)"
        );
    }

    fn recovered(&self, sink: &str) {
        if self.failures > 0 {
            tracing::info!(
                sink,
                failures = self.failures,
                "dead letters written after failed attempts"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_a_line_keeps_its_first_kib_cut_at_a_character() {
        let text = format!("a{}", "é".repeat(1000)); // 2001 bytes; 'é' is two
        let mut record = Record::new("w", "why".into(), text.as_bytes());
        record.keep_start(KEPT_PAST_CAP);
        let kept = record.line.as_deref().unwrap();
        assert_eq!(kept.len(), 1023, "cut inside a character");
        assert!(text.starts_with(kept));
        assert_eq!(record.truncated_from_bytes, Some(2001));
        assert_eq!(record.dropped_bytes, Some(2001 - 1023));

        let raw = [0xff_u8; 3000];
        let mut record = Record::new("w", "why".into(), &raw);
        record.keep_start(KEPT_PAST_CAP);
        let kept = base64_engine().decode(record.line_base64.unwrap()).unwrap();
        assert_eq!(kept, &raw[..1024]);
        assert_eq!(record.dropped_bytes, Some(3000 - 1024));
    }

    #[test]
    fn text_is_kept_as_text_unless_its_escapes_outgrow_base64() {
        let quoted = Record::new("w", "why".into(), br#"{"a":"b\n"}"#);
        assert!(quoted.line.is_some() && quoted.line_base64.is_none());
        let control = Record::new("w", "why".into(), &[1; 30]);
        assert!(control.line.is_none() && control.line_base64.is_some());
    }

    #[test]
    fn a_torn_tail_is_cut_before_records_are_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        let whole = serde_json::to_string(&Record::new("w", "old".into(), b"x")).unwrap() + "\n";
        std::fs::write(&path, format!("{whole}{{\"time\":\"2026-")).unwrap();
        let letters = DeadLetters::new(path.clone(), u64::MAX);
        let mut new = [Record::new("w", "new".into(), b"y")];
        letters.append(&mut new).unwrap();
        let expected = whole + &serde_json::to_string(&new[0]).unwrap() + "\n";
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    }

    #[test]
    fn corrupt_lines_are_kept_byte_for_byte_among_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        let record = Record::new("w", "why".into(), b"{}");
        let good = serde_json::to_string(&record).unwrap();
        let torn = b"{\"time\":\"2026-\xff";
        let mut text = format!("{good}\n\n").into_bytes();
        text.extend_from_slice(torn);
        text.extend_from_slice(format!("\n{good}\n").as_bytes());
        std::fs::write(&path, &text).unwrap();

        let lines = read_lines(&path).unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0], (1, Line::Record(record.clone())));
        assert!(
            matches!(&lines[1], (3, Line::Corrupt { bytes, .. }) if bytes == torn),
            "{lines:?}"
        );
        rewrite(&path, lines.iter().map(|(_, l)| l)).unwrap();
        let again = std::fs::read(&path).unwrap();
        let blank_dropped: Vec<u8> = text
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| *i != good.len() + 1)
            .map(|(_, b)| b)
            .collect();
        assert_eq!(again, blank_dropped);
    }
}
