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

/// Reads every record of a dead-letter file.
pub fn read_all(path: &Path) -> io::Result<Vec<Record>> {
    let text = match crate::data_dir::read(path).and_then(|bytes| {
        String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)))
        .collect()
}
