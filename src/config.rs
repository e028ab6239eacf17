//! The TOML model, in Vector's shape: `[sources.NAME]` and `[sinks.NAME]` tables.
//!
//! Loading happens in two phases, as in Vector (`validate` then `build`): [`load`] reads
//! the file, substitutes `${VAR}`, parses it strictly (`deny_unknown_fields`) and then
//! [`Config::validate`]s it into ready-to-run values. Everything a config can get wrong is
//! found here, with a message that names the key and shows a correct example; nothing on
//! the hot path fails because of config.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::sink::webhook::WebhookConfig;
use crate::source::file::FileConfig;
use crate::source::stdin::StdinConfig;
use crate::source::tcp::TcpConfig;

/// A complete, correct config, shown after every config error.
pub const EXAMPLE: &str = r#"data_dir = "/var/lib/flaghook"          # optional

[sources.goff_files]
type = "file"
include = ["/var/log/goff/flag-variation-*.json"]

[sources.from_vector]
type = "tcp"
address = "127.0.0.1:9000"

[sinks.webhook]
type = "webhook"
inputs = ["goff_files", "from_vector"]
endpoint_url = "https://collector.example/hook"
secret = "${WEBHOOK_SECRET}"
meta = { extraInfo = "info" }
headers = { Authorization = ["Bearer token"] }
flush_interval = "60s"
max_event_in_memory = 100000"#;

/// The file as written. Each source and sink table is kept as TOML until its `type` is
/// known, then read into that kind's struct, so that an error names its full key
/// (`sinks.webhook.schema`), which serde's tagged enums cannot do.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where checkpoints, dead letters and spilled events live.
    /// Default: a `flaghook-data` folder next to the config file.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Named sources.
    #[serde(default)]
    pub sources: BTreeMap<String, toml::Table>,
    /// Named sinks.
    #[serde(default)]
    pub sinks: BTreeMap<String, toml::Table>,
}

/// One `[sources.NAME]` table; `type` picks the kind.
#[derive(Debug)]
pub enum SourceConfig {
    File(FileConfig),
    Tcp(TcpConfig),
    Stdin(StdinConfig),
}

/// One `[sinks.NAME]` table; `type` picks the kind.
#[derive(Debug)]
pub enum SinkConfig {
    Webhook(WebhookConfig),
}

impl SourceConfig {
    fn from_table(key: &str, table: toml::Table) -> Result<Self> {
        let (kind, table) = split_type(key, table, "\"file\", \"tcp\" or \"stdin\"")?;
        match kind.as_str() {
            "file" => typed(key, table).map(SourceConfig::File),
            "tcp" => typed(key, table).map(SourceConfig::Tcp),
            "stdin" => typed(key, table).map(SourceConfig::Stdin),
            other => bail!(
                "`{key}.type` = {other:?} is not a source type: use \"file\", \"tcp\" or \"stdin\""
            ),
        }
    }
}

impl SinkConfig {
    fn from_table(key: &str, table: toml::Table) -> Result<Self> {
        let (kind, table) = split_type(key, table, "\"webhook\"")?;
        match kind.as_str() {
            "webhook" => typed(key, table).map(SinkConfig::Webhook),
            other => bail!("`{key}.type` = {other:?} is not a sink type: use \"webhook\""),
        }
    }
}

/// Takes the `type` key out of a table.
fn split_type(key: &str, mut table: toml::Table, kinds: &str) -> Result<(String, toml::Table)> {
    match table.remove("type") {
        Some(toml::Value::String(kind)) => Ok((kind, table)),
        Some(other) => bail!("`{key}.type` must be a string ({kinds}), got {other}"),
        None => bail!("`{key}.type` is missing: set it to {kinds}"),
    }
}

/// Reads `table` into `T`; an error names the full key.
fn typed<T: serde::de::DeserializeOwned>(key: &str, table: toml::Table) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            anyhow!("`{key}`: {inner}")
        } else {
            anyhow!("`{key}.{path}`: {inner}")
        }
    })
}

impl SinkConfig {
    pub fn inputs(&self) -> &[String] {
        match self {
            SinkConfig::Webhook(w) => &w.inputs,
        }
    }
}

/// A duration written the human way: `"100ms"`, `"10s"`, `"1m"`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?} ({e}); write it like \"500ms\", \"10s\" or \"1m\""
                ))
            })
    }
}

/// A config that passed every check, ready to run.
#[derive(Debug)]
pub struct Validated {
    pub path: PathBuf,
    pub data_dir: PathBuf,
    pub sources: BTreeMap<String, SourceConfig>,
    pub sinks: BTreeMap<String, SinkConfig>,
}

/// Reads, substitutes, parses and validates the config at `path`.
pub fn load(path: &Path) -> Result<Validated> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse(&text, path).map_err(|e| anyhow!("config file {}: {e:#}", path.display()))
}

/// [`load`] over text already read; `path` locates the default `data_dir`.
pub fn parse(text: &str, path: &Path) -> Result<Validated> {
    let text = substitute_env(text, |name| std::env::var(name).ok())?;
    let config: Config = toml::from_str(&text)
        .map_err(|e| anyhow!("{}\n{}", e.message(), located(&text, e.span())))
        .map_err(with_example)?;
    config.validate(path).map_err(with_example)
}

fn with_example(e: anyhow::Error) -> anyhow::Error {
    anyhow!("{e:#}\n\nA correct example:\n{EXAMPLE}")
}

/// "at line N: <that line>" for a parse error's span, so the key is easy to find.
fn located(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    format!("at line {line_no}: {}", line.trim())
}

/// Replaces `${NAME}` with the variable's value and `$$` with `$`. An unset variable is an
/// error that names it. Any other `$` stays as it is, and so do comments, so that a
/// commented-out `${VAR}` needs no variable.
pub fn substitute_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (code, comment) = line.split_at(comment_start(line));
        substitute_line(code, &lookup, &mut out)?;
        out.push_str(comment);
    }
    Ok(out)
}

/// Where the TOML comment of `line` starts (a `#` outside a one-line string), or its length.
fn comment_start(line: &str) -> usize {
    let (mut in_basic, mut in_literal, mut escaped) = (false, false, false);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_basic => escaped = true,
            '"' if !in_literal => in_basic = !in_basic,
            '\'' if !in_basic => in_literal = !in_literal,
            '#' if !in_basic && !in_literal => return i,
            _ => {}
        }
    }
    line.len()
}

fn substitute_line(
    mut rest: &str,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<()> {
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail.find('}').ok_or_else(|| {
                anyhow!("unterminated `${{` (write `${{NAME}}`, or `$$` for a literal `$`)")
            })?;
            let name = &tail[..end];
            let value = lookup(name).ok_or_else(|| {
                anyhow!("environment variable `{name}` is not set (the config uses `${{{name}}}`)")
            })?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(())
}

impl Config {
    /// Every cross-key check; each error names the key.
    fn validate(self, path: &Path) -> Result<Validated> {
        for name in self.sources.keys() {
            check_name("sources", name)?;
        }
        for name in self.sinks.keys() {
            check_name("sinks", name)?;
        }
        let mut sources = BTreeMap::new();
        for (name, table) in self.sources {
            let source = SourceConfig::from_table(&format!("sources.{name}"), table)?;
            sources.insert(name, source);
        }
        let mut sinks = BTreeMap::new();
        for (name, table) in self.sinks {
            let sink = SinkConfig::from_table(&format!("sinks.{name}"), table)?;
            sinks.insert(name, sink);
        }
        Checked {
            data_dir: self.data_dir,
            sources,
            sinks,
        }
        .validate(path)
    }
}

/// Source and sink names become file names in `data_dir` (checkpoints, dead letters), so
/// they are kept to `[A-Za-z0-9_-]{1,64}`: nothing can point outside `data_dir` or collide.
fn check_name(table: &str, name: &str) -> Result<()> {
    let fits = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if fits {
        return Ok(());
    }
    let shown = toml::Value::String(name.to_owned()).to_string();
    let kind = if table == "sources" { "source" } else { "sink" };
    let example = if table == "sources" {
        "goff_files"
    } else {
        "webhook"
    };
    bail!(
        "`{table}.{shown}`: a {kind} name must be 1 to 64 letters, digits, `_` or `-` (it names files in data_dir); example: [{table}.{example}]"
    )
}

/// A config whose tables were read into their kinds.
struct Checked {
    data_dir: Option<PathBuf>,
    sources: BTreeMap<String, SourceConfig>,
    sinks: BTreeMap<String, SinkConfig>,
}

impl Checked {
    fn validate(self, path: &Path) -> Result<Validated> {
        if self.sources.is_empty() {
            bail!("no sources: declare at least one `[sources.NAME]` table");
        }
        if self.sinks.is_empty() {
            bail!("no sinks: declare at least one `[sinks.NAME]` table");
        }
        for (name, source) in &self.sources {
            let key = format!("sources.{name}");
            match source {
                SourceConfig::File(c) => c.validate(&key)?,
                SourceConfig::Tcp(c) => c.validate(&key)?,
                SourceConfig::Stdin(c) => c.validate(&key)?,
            }
        }
        for (name, sink) in &self.sinks {
            let key = format!("sinks.{name}");
            match sink {
                SinkConfig::Webhook(c) => c.validate(&key)?,
            }
            for (i, input) in sink.inputs().iter().enumerate() {
                if sink.inputs()[..i].contains(input) {
                    bail!(
                        "`{key}.inputs` names `{input}` twice: each source is read once per sink (example: inputs = [\"{input}\"])"
                    );
                }
                if !self.sources.contains_key(input) {
                    bail!(
                        "`{key}.inputs` names `{input}`, which is not a declared source (declared: {})",
                        self.sources.keys().cloned().collect::<Vec<_>>().join(", ")
                    );
                }
            }
        }
        for name in self.sources.keys() {
            if !self.sinks.values().any(|s| s.inputs().contains(name)) {
                bail!("source `sources.{name}` is read by no sink: add \"{name}\" to a sink's `inputs`");
            }
        }
        let stdin_sources = self
            .sources
            .values()
            .filter(|s| matches!(s, SourceConfig::Stdin(_)));
        if stdin_sources.count() > 1 {
            bail!("more than one `type = \"stdin\"` source: stdin can be read only once");
        }
        let data_dir = match self.data_dir {
            Some(dir) if dir.is_relative() => config_dir(path).join(dir),
            Some(dir) => dir,
            None => config_dir(path).join("flaghook-data"),
        };
        Ok(Validated {
            path: path.to_owned(),
            data_dir,
            sources: self.sources,
            sinks: self.sinks,
        })
    }
}

fn config_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Resolves `address` (`host:port`) for the key `key`.
pub fn socket_addr(key: &str, address: &str) -> Result<SocketAddr> {
    address
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            anyhow!(
                "`{key}` = {address:?} is not a `host:port` address (example: \"127.0.0.1:9000\")"
            )
        })
}

impl Validated {
    /// A short description of the topology, for `flaghook validate`.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "config {} is valid\ndata_dir: {}\n",
            self.path.display(),
            self.data_dir.display()
        );
        for (name, source) in &self.sources {
            let what = match source {
                SourceConfig::File(c) => format!("file, include {:?}", c.include),
                SourceConfig::Tcp(c) => format!("tcp, listening on {}", c.address),
                SourceConfig::Stdin(_) => "stdin".to_owned(),
            };
            out.push_str(&format!("source {name}: {what}\n"));
        }
        for (name, sink) in &self.sinks {
            let SinkConfig::Webhook(c) = sink;
            out.push_str(&format!(
                "sink {name}: webhook {} <- [{}], schema {}, batches of up to {} events every {}, {}\n",
                c.endpoint_url,
                c.inputs.join(", "),
                c.schema.as_str(),
                c.max_event_in_memory,
                humantime::format_duration(c.flush_interval.0),
                if c.secret.is_some() { "signed" } else { "unsigned" },
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "s3cr3t".to_owned())
    }

    #[test]
    fn substitutes_variables_and_dollar_dollar() {
        let out = substitute_env("a=${SECRET} b=$$HOME c=$x", env).unwrap();
        assert_eq!(out, "a=s3cr3t b=$HOME c=$x");
    }

    #[test]
    fn comments_are_left_alone() {
        let text = "a = \"#${SECRET}\" # uses ${NOPE}\n# ${NOPE}\nb = '${SECRET}'\n";
        let out = substitute_env(text, env).unwrap();
        assert_eq!(
            out,
            "a = \"#s3cr3t\" # uses ${NOPE}\n# ${NOPE}\nb = 's3cr3t'\n"
        );
    }

    #[test]
    fn unset_variable_is_named() {
        let err = substitute_env("x = \"${NOPE}\"", env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("NOPE"), "{err}");
    }
}
