//! The config file's shape, `${VAR}` expansion, and the leaf value types the stages share.
//!
//! Loading has two phases, as in Vector and ripgrep: [`load`] reads the file into its
//! shape ([`Loaded`]: `data_dir` and the `[sources.NAME]` / `[sinks.NAME]` tables, with
//! `${VAR}` expanded in string values), then each stage turns its own table, once, into a
//! spec of parsed values (`crate::topology::Plan::build`). This module knows no stage: the
//! stages own their config structs and import the leaf types from here.
//!
//! Every error names its key and is shown with a correct example ([`Loaded::explain`]),
//! never with a value that came from the environment.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

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
max_event_in_memory = 100000

[api]                                    # optional: GET /health and /metrics
address = "127.0.0.1:8686""#;

/// The file as written. Each source and sink table is kept as TOML until its `type` is
/// known, then read into that kind's struct, so that an error names its full key
/// (`sinks.webhook.schema`), which serde's tagged enums cannot do. `Debug` shows the
/// tables' names only: they hold secrets.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where checkpoints, dead letters and journals live.
    /// Default: a `flaghook-data` folder next to the config file.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Named sources.
    #[serde(default)]
    pub sources: BTreeMap<String, toml::Table>,
    /// Named sinks.
    #[serde(default)]
    pub sinks: BTreeMap<String, toml::Table>,
    /// `[api]`: `/health` and `/metrics` over HTTP (`crate::api`). Off unless set.
    #[serde(default)]
    pub api: Option<toml::Table>,
    /// How often each sink logs a progress line; "0s" turns them off. Default "60s".
    #[serde(default = "default_progress_interval")]
    pub progress_interval: HumanDuration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .field("sinks", &self.sinks.keys().collect::<Vec<_>>())
            .field("api", &self.api.as_ref().map(|_| "[api]"))
            .field("progress_interval", &self.progress_interval)
            .finish()
    }
}

fn default_progress_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

/// The longest `progress_interval`.
const MAX_PROGRESS_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Takes the `type` key out of a stage's table (at `key`); `kinds` lists the valid ones.
pub(crate) fn split_type(
    key: &str,
    mut table: toml::Table,
    kinds: &str,
) -> Result<(String, toml::Table)> {
    match table.remove("type") {
        Some(toml::Value::String(kind)) => Ok((kind, table)),
        Some(other) => bail!("`{key}.type` must be a string ({kinds}), got {other}"),
        None => bail!("`{key}.type` is missing: set it to {kinds}"),
    }
}

/// Reads `table` (at `key`, `""` for the whole file) into `T`; an error names the full key.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(key: &str, table: toml::Table) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match (key, path.as_str()) {
            ("", ".") => anyhow!("{inner}"),
            ("", path) => anyhow!("`{path}`: {inner}"),
            (key, ".") => anyhow!("`{key}`: {inner}"),
            (key, path) => anyhow!("`{key}.{path}`: {inner}"),
        }
    })
}

/// [`typed`] for a table whose other keys (`beside`) are read apart, by another struct: the
/// message of an unknown key lists them too.
pub(crate) fn typed_beside<T: serde::de::DeserializeOwned>(
    key: &str,
    table: toml::Table,
    beside: &[&str],
) -> Result<T> {
    typed(key, table).map_err(|e| {
        let text = e.to_string();
        if !text.contains("unknown field") {
            return e;
        }
        let others: Vec<String> = beside.iter().map(|k| format!("`{k}`")).collect();
        anyhow!("{}, {}", text.trim_end(), others.join(", "))
    })
}

/// A duration written the human way: `"100ms"`, `"10s"`, `"1m"`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl HumanDuration {
    /// The longest duration any key takes. Each key has its own, lower bound too (see
    /// [`check_duration`]); this one keeps every deadline computed from a config value
    /// far from overflowing, whatever key a later change adds.
    pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match humantime::parse_duration(&text) {
            Ok(duration) if duration <= HumanDuration::MAX => Ok(HumanDuration(duration)),
            Ok(_) => Err(serde::de::Error::custom(format!(
                "duration {text:?} is too long: at most \"365days\"; write it like \"500ms\", \"10s\" or \"1m\""
            ))),
            Err(e) => Err(serde::de::Error::custom(format!(
                "invalid duration {text:?} ({}); write it like \"500ms\", \"10s\" or \"1m\"",
                duration_problem(&e)
            ))),
        }
    }
}

/// What is wrong with a duration, without quoting a piece of it or pointing into it
/// (humantime's own message does both): the text may hold a value from the environment,
/// which [`EnvValues::hide`] can only hide whole.
fn duration_problem(e: &humantime::DurationError) -> &'static str {
    use humantime::DurationError as E;
    match e {
        E::UnknownUnit { unit, .. } if unit.is_empty() => "a number without its unit",
        E::UnknownUnit { .. } => "an unknown unit; units: ns, us, ms, s, m, h, d",
        E::NumberExpected(_) => "a unit without its number",
        E::InvalidCharacter(_) => "a character other than a letter, a digit or a space",
        E::NumberOverflow => "too large, or finer than a nanosecond",
        E::Empty => "empty",
    }
}

/// Checks that the duration at `key` (its full name) is above zero and at most `max`.
/// `example` is the key's setting as it would be written (`flush_interval = "60s"`). The
/// value is not shown: it may have come from the environment.
pub fn check_duration(key: &str, value: Duration, max: Duration, example: &str) -> Result<()> {
    if value.is_zero() {
        bail!("`{key}` must be above zero (example: {example})");
    }
    if value > max {
        bail!(
            "`{key}` is too long: at most {} (example: {example})",
            humantime::format_duration(max)
        );
    }
    Ok(())
}

/// Checks that the count at `key` (its full name) is in `range`; see [`check_duration`].
pub fn check_count(
    key: &str,
    value: usize,
    range: std::ops::RangeInclusive<usize>,
    example: &str,
) -> Result<()> {
    if value < *range.start() {
        bail!(
            "`{key}` must be at least {} (example: {example})",
            range.start()
        );
    }
    if value > *range.end() {
        bail!(
            "`{key}` = {value} is too large: at most {} (example: {example})",
            range.end()
        );
    }
    Ok(())
}

/// The longest line a source takes (`max_line_bytes`): a line is held whole in memory
/// until its newline, so this bounds what one connection or file can make flaghook hold.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// Checks a source's `max_line_bytes` (`key` is the source's full key).
pub fn check_max_line_bytes(key: &str, value: usize) -> Result<()> {
    check_count(
        &format!("{key}.max_line_bytes"),
        value,
        1..=MAX_LINE_BYTES,
        "max_line_bytes = 102400",
    )
}

/// A byte count above zero: digits, optionally followed by B, KiB, MiB or GiB.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    match parse_bytes(text)? {
        0 => Err("must be above zero".into()),
        bytes => Ok(bytes),
    }
}

/// A byte count: digits, optionally followed by B, KiB, MiB or GiB.
fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit in {text:?}; write it like 1048576, 512KiB or 10MiB"
            ))
        }
    };
    match digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
    {
        Some(bytes) => Ok(bytes),
        None => Err(format!(
            "invalid size {text:?}; write it like 1048576, 512KiB or 10MiB"
        )),
    }
}

/// A byte count: a number of bytes, or a string with a unit (`"64MiB"`, see [`parse_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        const HOW: &str = "a number of bytes or a size like \"64MiB\" (B, KiB, MiB or GiB)";
        let written = Written::deserialize(d)
            .map_err(|_| serde::de::Error::custom(format!("must be {HOW}")))?;
        let bytes = match written {
            Written::Bytes(n) => n,
            Written::Text(text) => parse_bytes(&text)
                .map_err(|_| serde::de::Error::custom(format!("is not a size: write {HOW}")))?,
        };
        if bytes == 0 {
            return Err(serde::de::Error::custom(format!(
                "must be above zero: write {HOW}"
            )));
        }
        Ok(ByteSize(bytes))
    }
}

/// The config file as written: its shape, with `${VAR}` expanded and names checked. The
/// stages' tables are turned into specs by `crate::topology::Plan::build`. `Debug` shows
/// the tables' names only: they hold secrets.
pub struct Loaded {
    pub path: PathBuf,
    /// `data_dir`, made absolute (relative to the config file's folder).
    pub data_dir: PathBuf,
    /// `[sources.NAME]` tables.
    pub sources: BTreeMap<String, toml::Table>,
    /// `[sinks.NAME]` tables.
    pub sinks: BTreeMap<String, toml::Table>,
    /// The `[api]` table.
    pub api: Option<toml::Table>,
    /// `progress_interval`; `None` when "0s".
    pub progress_interval: Option<Duration>,
    /// What came from the environment, to hide from later errors.
    pub env: EnvValues,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("path", &self.path)
            .field("data_dir", &self.data_dir)
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .field("sinks", &self.sinks.keys().collect::<Vec<_>>())
            .field("api", &self.api.as_ref().map(|_| "[api]"))
            .field("progress_interval", &self.progress_interval)
            .field("env", &self.env)
            .finish()
    }
}

impl Loaded {
    /// The folder relative paths in the config are relative to.
    pub fn base(&self) -> PathBuf {
        config_dir(&self.path)
    }

    /// A config error as it is shown: the file, the message (values from the environment
    /// hidden), and a correct example.
    pub fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        let e = with_example(self.env.hide_error(&e));
        anyhow!("config file {}: {e:#}", self.path.display())
    }
}

/// Reads the config at `path` into its shape.
pub fn load(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse(&text, path).map_err(|e| anyhow!("config file {}: {e:#}", path.display()))
}

/// [`load`] over text already read; `path` locates the default `data_dir`.
///
/// The TOML is parsed before `${NAME}` is expanded, so an environment value is taken
/// literally whatever it holds (quotes, backslashes, newlines), and a parse error can only
/// show the file's own text. Errors after the expansion pass through [`EnvValues::hide`].
pub fn parse(text: &str, path: &Path) -> Result<Loaded> {
    parse_with_env(text, path, |name| std::env::var_os(name))
}

/// [`parse`] with `${NAME}` looked up by `lookup`, for the config fuzz target
/// (`fuzz/fuzz_targets/config.rs`), which gives it a fixed environment holding secrets.
#[doc(hidden)]
pub fn parse_with_env(
    text: &str,
    path: &Path,
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<Loaded> {
    let mut table: toml::Table = toml::from_str(text)
        .map_err(|e| anyhow!("{}\n{}", e.message(), located(text, e.span())))
        .map_err(with_example)?;
    let env = substitute_env(&mut table, lookup).map_err(with_example)?;
    let config = typed::<Config>("", table)
        .and_then(|config| config.checked())
        .map_err(|e| with_example(env.hide_error(&e)))?;
    let data_dir = match config.data_dir {
        Some(dir) if dir.is_relative() => config_dir(path).join(dir),
        Some(dir) => dir,
        None => config_dir(path).join("flaghook-data"),
    };
    Ok(Loaded {
        path: path.to_owned(),
        data_dir,
        sources: config.sources,
        sinks: config.sinks,
        api: config.api,
        progress_interval: Some(config.progress_interval.0).filter(|d| !d.is_zero()),
        env,
    })
}

fn with_example(e: anyhow::Error) -> anyhow::Error {
    anyhow!("{e:#}\n\nA correct example:\n{EXAMPLE}")
}

/// `at line N in [table]: key = …` for a parse error's span, so the key is easy to find:
/// its line number, the table it sits in, and the key its line sets, never the value (a
/// token in a header, a password in a URL, a key in a query: any value may be a secret
/// written literally). A `[table]` line is shown whole; a line that goes on a value begun
/// above (a multi-line array) is not shown. An error at a `${` says where `${NAME}` works.
fn located(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let line_no = text.get(..span.start).unwrap_or(text).matches('\n').count() + 1;
    let lines: Vec<&str> = text.lines().collect();
    let line = lines.get(line_no - 1).copied().unwrap_or("").trim();
    // The table the line sits in, so that the key is named in full (`[sinks.webhook]` and
    // `max_event_in_memory = 1e30`): the parser's message names only what it expected.
    let table = lines[..(line_no - 1).min(lines.len())]
        .iter()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .map(|l| format!(" in {}", l.split('#').next().unwrap_or("").trim()))
        .filter(|_| !line.starts_with('['))
        .unwrap_or_default();
    let inside_value = open_brackets(&lines[..(line_no - 1).min(lines.len())]) > 0;
    let shown = if line.starts_with('[') && !inside_value {
        format!(
            "at line {line_no}: {}",
            line.split('#').next().unwrap_or("").trim()
        )
    } else {
        match line.split_once('=').map(|(key, _)| key.trim()) {
            Some(key) if is_key(key) && !inside_value => {
                format!("at line {line_no}{table}: {key} = … (value not shown)")
            }
            _ => format!("at line {line_no}{table} (not shown: it may hold a value)"),
        }
    };
    let at_dollar = |i: usize| text.get(i..).is_some_and(|rest| rest.starts_with("${"));
    if at_dollar(span.start) || at_dollar(span.end) {
        format!("{shown}\n`${{NAME}}` is expanded only inside quoted string values (key = \"${{NAME}}\"), not in keys, numbers or booleans")
    } else {
        shown
    }
}

/// Whether `text` reads as a bare or dotted TOML key (`max_event_in_memory`,
/// `auth.token`): the left of a line's `=`.
fn is_key(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
}

/// How many `[` and `{` are still open after `lines`, counted outside strings and comments
/// from the last table header on: more than 0 when the next line goes on a value (a
/// multi-line array), whose text may then look like a key.
fn open_brackets(lines: &[&str]) -> usize {
    let from = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with('[') && open_in(&[l]) == 0)
        .map_or(0, |i| i + 1);
    open_in(&lines[from..])
}

fn open_in(lines: &[&str]) -> usize {
    let mut depth: usize = 0;
    for line in lines {
        let mut quote = None;
        let mut escaped = false;
        for c in line.chars() {
            match quote {
                Some(_) if escaped => escaped = false,
                Some('"') if c == '\\' => escaped = true,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '"' | '\'' => quote = Some(c),
                    '#' => break,
                    '[' | '{' => depth += 1,
                    ']' | '}' => depth = depth.saturating_sub(1),
                    _ => {}
                },
            }
        }
    }
    depth
}

// ---------------------------------------------------------------------------------------
// `${NAME}` in string values.

/// What `${NAME}` expansion put into the config, so that no error shows it: each expanded
/// string with its text as written, and each variable's value with `${NAME}`.
#[derive(Clone, Default)]
pub struct EnvValues {
    /// (a value from the environment, or a string holding one; what to show instead)
    hidden: Vec<(String, String)>,
}

impl fmt::Debug for EnvValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvValues(<{} redacted>)", self.hidden.len())
    }
}

impl EnvValues {
    /// `text` with every value from the environment replaced by how the config names it
    /// (`${NAME}`, or the string as written). Values are looked for as they are and as
    /// `{:?}` escapes them. A short value may replace unrelated text too: a message that
    /// reads oddly is better than one that shows a secret.
    pub fn hide(&self, text: &str) -> String {
        let forms = self.forms();
        // Each byte of `text` inside some occurrence gets the first (longest) form that
        // covers it, so overlapping occurrences are hidden whole.
        let bytes = text.as_bytes();
        let mut cover: Vec<Option<usize>> = vec![None; bytes.len()];
        for (i, (form, _)) in forms.iter().enumerate() {
            for start in 0..bytes.len() {
                if bytes[start..].starts_with(form.as_bytes()) {
                    for slot in &mut cover[start..start + form.len()] {
                        slot.get_or_insert(i);
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(bytes.len());
        for (at, (byte, slot)) in bytes.iter().zip(&cover).enumerate() {
            match slot {
                None => out.push(*byte),
                Some(i) if at == 0 || cover[at - 1] != *slot => {
                    out.extend_from_slice(forms[*i].1.as_bytes())
                }
                Some(_) => {}
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Each value as it is and as `{:?}` escapes it, with what to show instead; longest first.
    fn forms(&self) -> Vec<(String, &str)> {
        let mut forms = Vec::new();
        for (value, shown) in &self.hidden {
            let debug = format!("{value:?}");
            forms.push((debug[1..debug.len() - 1].to_owned(), shown.as_str()));
            forms.push((value.clone(), shown.as_str()));
        }
        forms.retain(|(form, _)| !form.is_empty());
        forms.sort_by_key(|(form, _)| std::cmp::Reverse(form.len()));
        forms
    }

    /// [`hide`](Self::hide) over an error's whole chain.
    pub fn hide_error(&self, e: &anyhow::Error) -> anyhow::Error {
        anyhow!(self.hide(&format!("{e:#}")))
    }
}

/// Expands `${NAME}` and `$$` in every string value of `table`, in arrays and inline
/// tables too. Keys, numbers and booleans are left alone, and comments are gone already.
/// An error names the key that uses the variable, never its value.
pub fn substitute_env(
    table: &mut toml::Table,
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<EnvValues> {
    let mut env = EnvValues::default();
    substitute_table(table, "", &lookup, &mut env)?;
    Ok(env)
}

fn substitute_table(
    table: &mut toml::Table,
    key: &str,
    lookup: &impl Fn(&str) -> Option<OsString>,
    env: &mut EnvValues,
) -> Result<()> {
    for (name, value) in table.iter_mut() {
        let key = if key.is_empty() {
            name.clone()
        } else {
            format!("{key}.{name}")
        };
        if name.contains("${") {
            bail!("the key `{key}` contains `${{`: `${{NAME}}` is expanded only inside string values, not in keys");
        }
        substitute_value(value, &key, lookup, env)?;
    }
    Ok(())
}

fn substitute_value(
    value: &mut toml::Value,
    key: &str,
    lookup: &impl Fn(&str) -> Option<OsString>,
    env: &mut EnvValues,
) -> Result<()> {
    match value {
        toml::Value::String(text) => {
            if let Some(expanded) = substitute_string(text, key, lookup, env)? {
                *text = expanded;
            }
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_value(item, &format!("{key}[{i}]"), lookup, env)?;
            }
        }
        toml::Value::Table(table) => substitute_table(table, key, lookup, env)?,
        _ => {}
    }
    Ok(())
}

/// `text` with `${NAME}` replaced by the variable's value and `$$` by `$`, or `None` when
/// it has neither. Any other `$` stays as it is.
fn substitute_string(
    text: &str,
    key: &str,
    lookup: &impl Fn(&str) -> Option<OsString>,
    env: &mut EnvValues,
) -> Result<Option<String>> {
    if !text.contains('$') {
        return Ok(None);
    }
    let (mut out, mut rest, mut used_env) = (String::with_capacity(text.len()), text, false);
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail.find('}').ok_or_else(|| {
                anyhow!("`{key}` has an unterminated `${{`: write `${{NAME}}`, or `$$` for a literal `$`")
            })?;
            let name = &tail[..end];
            let plain = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !plain {
                // Only the name is shown: what follows it (a default) may be a secret.
                let lead: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                bail!("`{key}` uses `${{{lead}…}}`: only `${{NAME}}` is supported, NAME of letters, digits and `_` (no defaults or other shell forms; `$$` for a literal `$`)");
            }
            let value = lookup(name)
                .ok_or_else(|| anyhow!("`{key}` uses `${{{name}}}`, which is not set"))?
                .into_string()
                .map_err(|_| anyhow!("`{key}` uses `${{{name}}}`, whose value is not valid UTF-8: config strings are text; give a binary secret hex- or base64-encoded, with `secret_hex` or `secret_base64`"))?;
            out.push_str(&value);
            env.hidden.push((value, format!("${{{name}}}")));
            used_env = true;
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if used_env {
        env.hidden.push((out.clone(), text.to_owned()));
    }
    Ok(Some(out))
}

impl Config {
    /// The checks on the file's shape: there are sources and sinks, with names that can
    /// name files.
    fn checked(self) -> Result<Config> {
        if self.sources.is_empty() {
            bail!("no sources: declare at least one `[sources.NAME]` table");
        }
        if self.sinks.is_empty() {
            bail!("no sinks: declare at least one `[sinks.NAME]` table");
        }
        for name in self.sources.keys() {
            check_name("sources", name)?;
        }
        for name in self.sinks.keys() {
            check_name("sinks", name)?;
        }
        // An empty path would be the config file's folder: most likely a variable set empty
        // (`data_dir = "${STATE_DIRECTORY}"`), and not where state belongs.
        if self
            .data_dir
            .as_ref()
            .is_some_and(|dir| dir.as_os_str().is_empty())
        {
            bail!("`data_dir` is empty: set a folder, or leave it out for `flaghook-data` next to the config file (example: data_dir = \"/var/lib/flaghook\")");
        }
        if self.progress_interval.0 > MAX_PROGRESS_INTERVAL {
            bail!("`progress_interval` is too long: at most 1day (example: progress_interval = \"60s\", or \"0s\" for none)");
        }
        Ok(self)
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

/// A secret (an HMAC key, a password, a token): bytes that never show in logs, errors or `Debug` output.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `url` with its user and password replaced by `***`. When `url` does not parse, where
/// its authority ends is not known: everything up to its last `@` is hidden.
pub(crate) fn without_credentials(url: &str) -> std::borrow::Cow<'_, str> {
    let parsed = url
        .parse::<hyper::Uri>()
        .ok()
        .filter(|uri| uri.authority().is_none_or(|a| !bad_port(a.as_str())));
    let userinfo_end = match parsed.as_ref().and_then(hyper::Uri::authority) {
        Some(authority) => authority.as_str().rfind('@').map(|at| {
            let start = url.find(authority.as_str()).unwrap_or(0);
            (start, start + at)
        }),
        None if parsed.is_some() => None,
        None => url
            .rfind('@')
            .map(|at| (url.find("://").map_or(0, |i| i + 3).min(at), at)),
    };
    match userinfo_end {
        Some((start, at)) => format!("{}***{}", &url[..start], &url[at..]).into(),
        None => url.into(),
    }
}

/// Whether `authority` ends in a port that is not a number: what a `/` left unescaped in a
/// password (`user:pa/ss@host`) makes of a URL, cut after `user:pa`. A user and password
/// before an `@` are not a port (`user:pass@host` has none).
pub(crate) fn bad_port(authority: &str) -> bool {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let after_host = host_port.rsplit(']').next().unwrap_or(host_port);
    after_host
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.parse::<u16>().is_err())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<OsString> {
        match name {
            "SECRET" => Some("s3cr3t".into()),
            "QUOTED" => Some("a\"b\\tc\\u00e9 \u{e9}\n'd'".into()),
            "BINARY" => {
                use std::os::unix::ffi::OsStringExt;
                Some(OsString::from_vec(vec![0x66, 0xff, 0x00]))
            }
            _ => None,
        }
    }

    fn substituted(text: &str) -> Result<toml::Table> {
        let mut table: toml::Table = toml::from_str(text)?;
        substitute_env(&mut table, env)?;
        Ok(table)
    }

    #[test]
    fn substitutes_variables_and_dollar_dollar() {
        let out = substituted(r#"a = "${SECRET} b=$$HOME c=$x""#).unwrap();
        assert_eq!(out["a"].as_str(), Some("s3cr3t b=$HOME c=$x"));
    }

    #[test]
    fn environment_values_are_taken_literally() {
        let out = substituted(r#"a = "${QUOTED}""#).unwrap();
        assert_eq!(out["a"].as_str(), Some("a\"b\\tc\\u00e9 \u{e9}\n'd'"));
    }

    #[test]
    fn strings_in_arrays_and_inline_tables_are_substituted() {
        let text = r#"[s.w]
include = ["/x/${SECRET}/*.json", 3]
headers = { Authorization = ["Bearer ${SECRET}"] }
n = 5
"#;
        let out = substituted(text).unwrap();
        assert_eq!(
            out["s"]["w"]["include"][0].as_str(),
            Some("/x/s3cr3t/*.json")
        );
        assert_eq!(
            out["s"]["w"]["headers"]["Authorization"][0].as_str(),
            Some("Bearer s3cr3t")
        );
    }

    #[test]
    fn comments_are_left_alone() {
        let text = "a = \"#${SECRET}\" # uses ${NOPE}\n# ${NOPE}\nb = '${SECRET}'\n";
        let out = substituted(text).unwrap();
        assert_eq!(out["a"].as_str(), Some("#s3cr3t"));
        assert_eq!(out["b"].as_str(), Some("s3cr3t"));
    }

    #[test]
    fn unset_variable_names_the_key_and_the_variable() {
        let err = substituted("[sinks.w]\nsecret = \"${NOPE}\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`sinks.w.secret` uses `${NOPE}`, which is not set"),
            "{err}"
        );
    }

    #[test]
    fn variable_that_is_not_utf8_has_its_own_error() {
        let err = substituted("[sinks.w]\nsecret = \"${BINARY}\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`sinks.w.secret` uses `${BINARY}`")
                && err.contains("not valid UTF-8")
                && err.contains("secret_hex"),
            "{err}"
        );
    }

    #[test]
    fn a_variable_in_a_key_is_an_error() {
        let err = substituted("[m]\n\"${SECRET}\" = \"v\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`m.${SECRET}`") && err.contains("keys"),
            "{err}"
        );
    }

    #[test]
    fn a_variable_outside_a_string_says_where_it_works() {
        let text = "[sinks.w]\nmax_event_in_memory = ${N}\n";
        let err = parse(text, Path::new("f.toml")).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("only inside quoted string values"),
            "{err}"
        );
    }

    #[test]
    fn a_parse_error_does_not_show_a_line_that_sets_a_secret() {
        let text = "[sinks.w]\nsecret = \"literal-secret-1234\" x\n";
        let err = parse(text, Path::new("f.toml")).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && !err.contains("literal-secret-1234"),
            "{err}"
        );
    }

    /// Found by the config fuzz target: humantime's message quoted the unit it did not know,
    /// a piece of the string that `hide` could not find whole.
    #[test]
    fn a_duration_error_shows_no_piece_of_an_environment_value() {
        let lookup = |n: &str| (n == "TWO_WORDS").then(|| OsString::from("hunter two-2"));
        for duration in ["1${TWO_WORDS}", "${TWO_WORDS}", "5 ${TWO_WORDS}"] {
            let text = format!(
                "[sources.s]\ntype = \"stdin\"\n[sinks.w]\ntype = \"webhook\"\ninputs = [\"s\"]\nendpoint_url = \"http://127.0.0.1:9/\"\nflush_interval = \"{duration}\"\n"
            );
            let err = parse_with_env(&text, Path::new("f.toml"), lookup)
                .and_then(crate::topology::Plan::build)
                .unwrap_err();
            let err = format!("{err:#}");
            assert!(
                err.contains("`sinks.w.flush_interval`: invalid duration")
                    && !err.contains("hunter")
                    && !err.contains("two"),
                "{err}"
            );
        }
    }

    #[test]
    fn hide_replaces_values_and_their_escaped_forms() {
        let mut table: toml::Table =
            toml::from_str("a = \"x-${QUOTED}-y\"\nb = \"${SHORT}\"").unwrap();
        let lookup = |n: &str| env(n).or_else(|| (n == "SHORT").then(|| "bcd".into()));
        let env_values = substitute_env(&mut table, lookup).unwrap();
        let value = table["a"].as_str().unwrap();
        let quoted = env("QUOTED").unwrap().into_string().unwrap();
        // The whole string as `{:?}` shows it, the raw value, and a value inside a word.
        let message = format!("got {value:?}; also {quoted} and abcde");
        assert_eq!(
            env_values.hide(&message),
            "got \"x-${QUOTED}-y\"; also ${QUOTED} and a${SHORT}e"
        );
    }
}
