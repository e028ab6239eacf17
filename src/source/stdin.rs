//! `type = "stdin"`: newline-delimited JSON on standard input, read to its end.
//!
//! At shutdown, what a shipper already wrote into the pipe is read too (see
//! [`super::pump`]): the writer was told it was written, and it would be dropped unread.

use std::sync::Arc;

use anyhow::Result;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{pump, Output};
use crate::config::check_max_line_bytes;
use crate::event::{envelope_fields, Block};

fn default_max_line_bytes() -> usize {
    102_400
}

/// `[sources.NAME] type = "stdin"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinConfig {
    /// Lines longer than this are rejected as bad input. Default 102400.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// The envelope field that holds the event, when a shipper wraps it.
    /// Default: `message` (Vector), then `log` (Fluent Bit).
    #[serde(default)]
    pub field: Option<String>,
}

impl StdinConfig {
    pub fn validate(&self, key: &str) -> Result<()> {
        check_max_line_bytes(key, self.max_line_bytes)
    }
}

/// Reads stdin to EOF (or until shutdown, then what was already written).
pub async fn run(name: &str, config: &StdinConfig, output: Output, shutdown: CancellationToken) {
    let template = Block {
        source_name: Arc::from(name),
        origin: Arc::from("stdin"),
        file: None,
        input: 0,
        envelope: envelope_fields(config.field.as_deref()),
        lines: Vec::new(),
    };
    let stdin = tokio::io::stdin();
    match pump(stdin, config.max_line_bytes, template, &output, &shutdown).await {
        Ok(()) => tracing::info!(source = name, "stdin source stopped"),
        Err(e) => tracing::error!(source = name, error = %e, "cannot read stdin"),
    }
}
