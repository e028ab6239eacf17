//! `type = "stdin"`: newline-delimited JSON on standard input, read to its end, into the
//! source's journal (see `crate::journal`).
//!
//! At shutdown, what a shipper already wrote into the pipe is read too (see
//! [`super::pump()`]): the writer was told it was written, and it would be dropped unread.

use std::sync::Arc;

use anyhow::Result;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::pump;
use crate::config::{check_max_line_bytes, ByteSize};
use crate::journal::{self, Appender, Fsync, JournalSpec};

/// `[sources.NAME] type = "stdin"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinConfig {
    /// Lines longer than this are rejected as bad input. Default 102400.
    #[serde(default = "super::default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// The envelope field that holds the event, when a shipper wraps it.
    /// Default: `message` (Vector), then `log` (Fluent Bit).
    #[serde(default)]
    pub field: Option<String>,
    /// The journal starts a new segment file once one holds this many bytes. Default "64MiB".
    #[serde(default = "journal::default_segment_bytes")]
    pub journal_segment_bytes: ByteSize,
    /// Bytes the journal holds on the disk before the source stops reading. Default "1GiB".
    #[serde(default = "journal::default_max_bytes")]
    pub journal_max_bytes: ByteSize,
    /// "interval" (fsync at most every 100 ms and at a graceful stop; default) or "always"
    /// (fsync before a read counts as done).
    #[serde(default = "journal::default_fsync")]
    pub journal_fsync: Fsync,
}

/// The stdin source's settings, parsed.
#[derive(Debug, Clone)]
pub struct StdinSpec {
    pub max_line_bytes: usize,
    pub envelope: Arc<[String]>,
    pub journal: JournalSpec,
}

impl StdinConfig {
    /// Checks every key (at `key`, the source's).
    pub fn build(self, key: &str) -> Result<StdinSpec> {
        check_max_line_bytes(key, self.max_line_bytes)?;
        Ok(StdinSpec {
            max_line_bytes: self.max_line_bytes,
            envelope: super::envelope(key, self.field.as_deref())?,
            journal: JournalSpec::build(
                key,
                self.journal_segment_bytes,
                self.journal_max_bytes,
                self.journal_fsync,
            )?,
        })
    }
}

/// Reads stdin to EOF (or until shutdown, then what was already written) into `journal`.
pub async fn run(name: &str, config: &StdinSpec, journal: Appender, shutdown: CancellationToken) {
    let stdin = tokio::io::stdin();
    match pump(stdin, config.max_line_bytes, "stdin", &journal, &shutdown).await {
        Ok(()) => tracing::info!(source = name, "stdin source stopped"),
        Err(e) => tracing::error!(source = name, error = %e, "cannot read stdin"),
    }
}
