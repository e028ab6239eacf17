//! `type = "stdin"`: newline-delimited JSON on standard input, read to its end.
//!
//! At shutdown, what a shipper already wrote into the pipe is read too (see
//! [`super::pump()`]): the writer was told it was written, and it would be dropped unread.

use std::sync::Arc;

use anyhow::Result;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{pump, Output};
use crate::config::check_max_line_bytes;
use crate::event::{envelope_fields, Block};

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
}

/// The stdin source's settings, parsed.
#[derive(Debug, Clone)]
pub struct StdinSpec {
    pub max_line_bytes: usize,
    pub envelope: Arc<[String]>,
}

impl StdinConfig {
    /// Checks every key (at `key`, the source's).
    pub fn build(self, key: &str) -> Result<StdinSpec> {
        check_max_line_bytes(key, self.max_line_bytes)?;
        Ok(StdinSpec {
            max_line_bytes: self.max_line_bytes,
            envelope: envelope_fields(self.field.as_deref()),
        })
    }
}

/// Reads stdin to EOF (or until shutdown, then what was already written).
pub async fn run(name: &str, config: &StdinSpec, output: Output, shutdown: CancellationToken) {
    let template = Block {
        source_name: Arc::from(name),
        origin: Arc::from("stdin"),
        file: None,
        input: 0,
        envelope: config.envelope.clone(),
        lines: Vec::new(),
    };
    let stdin = tokio::io::stdin();
    match pump(stdin, config.max_line_bytes, template, &output, &shutdown).await {
        Ok(()) => tracing::info!(source = name, "stdin source stopped"),
        Err(e) => tracing::error!(source = name, error = %e, "cannot read stdin"),
    }
}
