//! Sources read lines and hand them to every sink that reads them.
//!
//! The contract is small: a source gets an `Output` and a shutdown token, reads until
//! its input ends or shutdown is asked, and returns. Back-pressure is the `Budget`:
//! before a block of lines enters a sink, the source takes from that sink's budget one
//! permit per line and one per byte; the sink gives them back once the lines are delivered
//! or dead-lettered. So a sink that cannot deliver stops its sources instead of growing
//! without bound.
//!
//! Input that cannot be read again (TCP, stdin, fluent, http) goes to the source's journal
//! first (see `crate::journal`), whose cap is its own; the sinks read the journal back
//! through the file tail, within their budgets. At shutdown, what shippers already sent is read into
//! the journal past its cap (see `pump`) instead of being dropped.

mod budget;
pub(crate) mod connections;
pub(crate) mod file;
pub mod fluent;
pub mod http;
pub(crate) mod keep;
pub mod lines;
pub(crate) mod listener;
pub(crate) mod nats;
mod output;
mod pump;
pub(crate) mod stdin;
pub(crate) mod tcp;

pub(crate) use budget::{gathers_ahead, max_batch_bytes, Budget, Cost};
pub(crate) use output::{Closed, Output, SinkInput, SourceAck, Subscriptions};
pub(crate) use pump::pump;

/// One `[sources.NAME]` table, parsed: `type` picks the kind, whose config turns into its
/// spec once, at start-up.
#[derive(Debug)]
pub enum SourceSpec {
    File(file::FileSpec),
    Tcp(tcp::TcpSpec),
    Stdin(stdin::StdinSpec),
    Nats(nats::NatsSourceSpec),
    Fluent(fluent::FluentSpec),
    Http(http::HttpSpec),
}

impl SourceSpec {
    /// Reads the table at `key` (`sources.NAME`); relative paths are relative to `base`.
    pub fn from_table(
        key: &str,
        table: toml::Table,
        base: &std::path::Path,
    ) -> anyhow::Result<Self> {
        use crate::config::{split_type, typed, typed_beside};
        let kinds = "\"file\", \"tcp\", \"stdin\", \"fluent\", \"http\" or \"nats\"";
        let (kind, table) = split_type(key, table, kinds)?;
        Ok(match kind.as_str() {
            "file" => SourceSpec::File(typed::<file::FileConfig>(key, table)?.build(key, base)?),
            "tcp" => SourceSpec::Tcp(typed::<tcp::TcpConfig>(key, table)?.build(key)?),
            "stdin" => SourceSpec::Stdin(typed::<stdin::StdinConfig>(key, table)?.build(key)?),
            "nats" => {
                let (table, connect) = crate::nats::split_table(key, table)?;
                let beside = crate::nats::ConnectConfig::KEYS;
                let config: nats::NatsSourceConfig = typed_beside(key, table, &beside)?;
                SourceSpec::Nats(config.build(key, base, &connect)?)
            }
            "fluent" => SourceSpec::Fluent(typed::<fluent::FluentConfig>(key, table)?.build(key)?),
            "http" => SourceSpec::Http(typed::<http::HttpConfig>(key, table)?.build(key, base)?),
            other => anyhow::bail!("`{key}.type` = {other:?} is not a source type: use {kinds}"),
        })
    }

    /// The journal's settings of a source that cannot be read again (every kind but
    /// `file`): what it reads goes to its journal first.
    pub(crate) fn journal(&self) -> Option<&crate::journal::JournalSpec> {
        match self {
            SourceSpec::File(_) | SourceSpec::Nats(_) => None,
            SourceSpec::Tcp(c) => Some(&c.journal),
            SourceSpec::Stdin(c) => Some(&c.journal),
            SourceSpec::Fluent(c) => Some(&c.journal),
            SourceSpec::Http(c) => Some(&c.journal),
        }
    }

    /// One line for `flaghook validate`.
    pub fn describe(&self) -> String {
        match self {
            SourceSpec::File(f) => format!("file, include {:?}", f.include),
            SourceSpec::Tcp(t) => format!("tcp, listening on {}", t.address),
            SourceSpec::Stdin(_) => "stdin".to_owned(),
            SourceSpec::Nats(n) => n.describe(),
            SourceSpec::Fluent(f) => format!(
                "fluent (Forward protocol), listening on {}{}",
                f.address,
                if f.auth.is_some() {
                    ", shared_key handshake"
                } else {
                    ""
                }
            ),
            SourceSpec::Http(h) => format!(
                "http, listening on {}{} path {}{}{}",
                if h.tls.is_some() {
                    "https://"
                } else {
                    "http://"
                },
                h.address,
                h.path,
                if h.verify_secret.is_some() {
                    ", X-Hub-Signature-256 required"
                } else {
                    ""
                },
                if h.requires_token() {
                    ", bearer token required"
                } else {
                    ""
                },
            ),
        }
    }
}

/// The default `max_line_bytes` of every source: longer lines are rejected as bad input.
pub(crate) fn default_max_line_bytes() -> usize {
    102_400
}

/// A source's `field` (`key` is the source's key), checked: the envelope fields a line may
/// wrap its event in, by preference (see [`crate::event::envelope_fields`]). A name GO
/// Feature Flag's events use (`value`, `key`, ...) is refused: the decoder reads such a
/// field as the event's own, so it could never unwrap an envelope on every path.
pub(crate) fn envelope(key: &str, field: Option<&str>) -> anyhow::Result<std::sync::Arc<[String]>> {
    let example = "(example: field = \"message\", the field your shipper puts the line in)";
    match field {
        Some("") => anyhow::bail!("`{key}.field` is empty: name the envelope field {example}"),
        Some(name) if crate::event::is_event_field(name) => anyhow::bail!(
            "`{key}.field` = {name:?} is a field of GO Feature Flag's events, not an envelope: \
             name the field that holds the whole event {example}"
        ),
        _ => Ok(crate::event::envelope_fields(field)),
    }
}
