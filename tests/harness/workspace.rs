//! [`Workspace`]: a temporary directory holding the config, the input files and `data_dir`;
//! readers of what flaghook leaves in `data_dir`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    pub fn new() -> Self {
        Workspace {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path("data")
    }

    /// Writes `contents` to `name` inside the workspace and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// Appends `contents` to `name`.
    pub fn append(&self, name: &str, contents: impl AsRef<[u8]>) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.path(name))
            .unwrap();
        f.write_all(contents.as_ref()).unwrap();
        f.flush().unwrap();
    }

    /// Writes `flaghook.toml`: `data_dir` inside the workspace, then `body` (tables).
    pub fn config(&self, body: &str) -> PathBuf {
        let text = format!("data_dir = {}\n\n{body}", toml_str(self.data_dir()));
        self.write("flaghook.toml", text)
    }

    /// A one-source, one-sink pipeline: file source `in` over `events.json` (written with
    /// `events`), webhook sink `webhook` to `url` with `sink_extra` lines added.
    pub fn file_pipeline(&self, events: impl AsRef<[u8]>, url: &str, sink_extra: &str) -> PathBuf {
        let input = self.write("events.json", events);
        self.config(&format!(
            r#"[sources.in]
type = "file"
include = [{input}]

[sinks.webhook]
type = "webhook"
inputs = ["in"]
endpoint_url = {url}
{sink_extra}
"#,
            input = toml_str(&input),
            url = toml_str(url),
        ))
    }

    /// A file source `files` over the glob `pattern` (a path in the workspace), with
    /// `source_extra` lines, feeding webhook sink `webhook` to `url` with `sink_extra` lines.
    pub fn glob_pipeline(
        &self,
        pattern: &str,
        source_extra: &str,
        url: &str,
        sink_extra: &str,
    ) -> PathBuf {
        self.config(&format!(
            r#"[sources.files]
type = "file"
include = [{glob}]
{source_extra}

[sinks.webhook]
type = "webhook"
inputs = ["files"]
endpoint_url = {url}
{sink_extra}
"#,
            glob = toml_str(self.path(pattern)),
            url = toml_str(url),
        ))
    }

    /// A TCP source `tcp` (with `source_extra`) on a free loopback port feeding webhook
    /// sink `webhook` to `url` (with `sink_extra`); returns the config and the address.
    pub fn tcp_pipeline(
        &self,
        url: &str,
        source_extra: &str,
        sink_extra: &str,
    ) -> (PathBuf, String) {
        let addr = format!("127.0.0.1:{}", super::free_port());
        let config = self.config(&format!(
            r#"[sources.tcp]
type = "tcp"
address = {addr}
{source_extra}

[sinks.webhook]
type = "webhook"
inputs = ["tcp"]
endpoint_url = {url}
{sink_extra}
"#,
            addr = toml_str(&addr),
            url = toml_str(url),
        ));
        (config, addr)
    }
}

/// A TOML basic string holding `s` (path or text), quoted and escaped.
pub fn toml_str(s: impl AsRef<std::ffi::OsStr>) -> String {
    toml::Value::String(s.as_ref().to_string_lossy().into_owned()).to_string()
}

/// The package directory (where `pipelines/` lives).
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// data_dir contents.

/// `data_dir/checkpoints/<source>.json`
pub fn checkpoint_path(data_dir: &Path, source: &str) -> PathBuf {
    data_dir.join("checkpoints").join(format!("{source}.json"))
}

/// The saved entries of a checkpoint file (`files`), or None when it does not exist.
#[track_caller]
pub fn checkpoint_files(data_dir: &Path, source: &str) -> Option<Vec<Value>> {
    let path = checkpoint_path(data_dir, source);
    let text = std::fs::read(&path).ok()?;
    let v: Value = serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!(
            "checkpoint {} is not JSON ({e}): {}",
            path.display(),
            String::from_utf8_lossy(&text)
        )
    });
    assert_eq!(v["version"], 1, "checkpoint version: {v}");
    Some(v["files"].as_array().expect("files is an array").clone())
}

/// `data_dir/dead-letter/<sink>.jsonl`
pub fn dead_letter_path(data_dir: &Path, sink: &str) -> PathBuf {
    data_dir.join("dead-letter").join(format!("{sink}.jsonl"))
}

/// Every record of a sink's dead-letter file (none when the file is absent).
#[track_caller]
pub fn dead_letters(data_dir: &Path, sink: &str) -> Vec<Value> {
    let path = dead_letter_path(data_dir, sink);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("dead letter is not JSON ({e}): {l}"))
        })
        .collect()
}

/// `data_dir/spill/<sink>.jsonl`: where an older flaghook spilled a sink's events.
pub fn spill_path(data_dir: &Path, sink: &str) -> PathBuf {
    data_dir.join("spill").join(format!("{sink}.jsonl"))
}

/// `data_dir/journal/<source>/`: the journal of a TCP or stdin source.
pub fn journal_dir(data_dir: &Path, source: &str) -> PathBuf {
    data_dir.join("journal").join(source)
}

/// The segments of a journal, oldest first (none when it does not exist).
pub fn journal_segments(data_dir: &Path, source: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(journal_dir(data_dir, source)) else {
        return Vec::new();
    };
    let mut segments: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    segments.sort();
    segments
}

/// The bytes of every segment of a journal, oldest first.
pub fn journal_text(data_dir: &Path, source: &str) -> Vec<u8> {
    let mut text = Vec::new();
    for segment in journal_segments(data_dir, source) {
        text.extend(std::fs::read(segment).unwrap());
    }
    text
}

/// The bytes a journal holds on the disk.
pub fn journal_size(data_dir: &Path, source: &str) -> u64 {
    journal_segments(data_dir, source)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}
