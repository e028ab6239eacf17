//! Dead letters: `data_dir/dead-letter/<sink>.jsonl`, one JSON line per rejected event or
//! bad input line, with the time, where it came from, why, and the event or raw line
//! (invalid UTF-8 kept as base64, so nothing is lost in the record).
//!
//! Records are appended as they come and fsynced by [`DeadLetters::sync`], which the sink
//! calls before it acknowledges the file offsets past them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::source::file::checkpoint::write_atomically;

/// One dead letter, as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// RFC 3339 time of writing.
    pub time: String,
    pub sink: String,
    /// The source's name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A file path, `tcp <peer>` or `stdin`, with the line number and end offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub reason: String,
    /// The line or encoded event, when it is valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// The line in base64, when it is not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_base64: Option<String>,
    /// Set when only the start of the line is kept (it was longer than `max_line_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated_from_bytes: Option<u64>,
    /// Whether `line` is an event a webhook rejected (and `replay` may send again).
    #[serde(default)]
    pub replayable: bool,
}

impl Record {
    pub fn new(sink: &str, reason: String, raw: &[u8]) -> Self {
        let (line, line_base64) = match std::str::from_utf8(raw) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(raw)),
            ),
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
            replayable: false,
        }
    }
}

/// A sink's dead-letter file, opened on first use.
#[derive(Debug)]
pub struct DeadLetters {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    file: Option<BufWriter<File>>,
    unsynced: bool,
}

impl DeadLetters {
    pub fn new(path: PathBuf) -> Self {
        DeadLetters {
            path,
            state: Mutex::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` (durable after the next [`DeadLetters::sync`]).
    pub fn write(&self, record: &Record) -> io::Result<()> {
        let mut state = self.state.lock().expect("dead letter lock");
        if state.file.is_none() {
            let file = crate::data_dir::open_append(&self.path)?;
            state.file = Some(BufWriter::new(file));
        }
        let file = state.file.as_mut().expect("opened above");
        serde_json::to_writer(&mut *file, record)?;
        file.write_all(b"\n")?;
        state.unsynced = true;
        Ok(())
    }

    /// Flushes and fsyncs what was written since the last call.
    pub fn sync(&self) -> io::Result<()> {
        let mut state = self.state.lock().expect("dead letter lock");
        if !state.unsynced {
            return Ok(());
        }
        let file = state.file.as_mut().expect("written before");
        file.flush()?;
        file.get_ref().sync_data()?;
        state.unsynced = false;
        Ok(())
    }
}

/// One non-blank line of a dead-letter file.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
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
pub fn read_lines(path: &Path) -> io::Result<Vec<(usize, Line)>> {
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
pub fn rewrite<'a>(path: &Path, lines: impl Iterator<Item = &'a Line>) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
