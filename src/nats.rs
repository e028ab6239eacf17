//! The connection settings the nats sink and the nats source share: the servers (`url`),
//! the credentials (`credentials_file`, `user` and `password`, or `token`) and `tls`, read
//! once into a [`ConnectSpec`], which opens a client that reconnects by itself.
//!
//! Secrets never show: the password, the token and the credentials file's content are
//! [`Secret`]s, and a user and password in a URL are hidden wherever the URL is shown.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use async_nats::{ConnectOptions, ServerAddr};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::config::{without_credentials, Secret};
use crate::tls::{TlsConfig, TlsSpec};

/// `url`: one string, servers separated by commas, or a list of them.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum NatsUrls {
    One(String),
    Many(Vec<String>),
}

impl NatsUrls {
    fn each(&self) -> Vec<&str> {
        let all: Vec<&str> = match self {
            NatsUrls::One(text) => text.split(',').collect(),
            NatsUrls::Many(list) => list.iter().map(String::as_str).collect(),
        };
        all.into_iter().map(str::trim).collect()
    }
}

impl fmt::Debug for NatsUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<_> = self.each().into_iter().map(without_credentials).collect();
        write!(f, "{shown:?}")
    }
}

/// The connection keys of a `type = "nats"` sink or source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// The servers: `nats://host:4222` (or `tls://`), one string with commas or a list.
    /// Required.
    pub url: NatsUrls,
    /// A NATS credentials file (a user JWT and its NKEY seed), relative to the config
    /// file's folder.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// A user name, with `password`.
    #[serde(default)]
    pub user: Option<String>,
    /// The user's password.
    #[serde(default, deserialize_with = "secret")]
    pub password: Option<Secret>,
    /// A token, instead of a user and password.
    #[serde(default, deserialize_with = "secret")]
    pub token: Option<Secret>,
    /// The CA certificates the servers' are verified against, a client certificate (see
    /// `crate::tls`). Setting it requires TLS.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

impl ConnectConfig {
    /// The keys this struct reads from a sink's or source's table.
    pub(crate) const KEYS: [&'static str; 6] = [
        "url",
        "credentials_file",
        "user",
        "password",
        "token",
        "tls",
    ];
}

/// A sink's or source's table as its own keys and the connection keys, read strictly.
pub(crate) fn split_table(key: &str, table: toml::Table) -> Result<(toml::Table, ConnectConfig)> {
    let (connect, own): (toml::Table, toml::Table) = table
        .into_iter()
        .partition(|(name, _)| ConnectConfig::KEYS.contains(&name.as_str()));
    Ok((own, crate::config::typed(key, connect)?))
}

/// A password or token: read as any TOML value first, so that no message of serde's can
/// quote it.
fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(text) => Ok(Some(Secret::new(text))),
        _ => Err(D::Error::custom(
            "must be a string (example: password = \"${NATS_PASSWORD}\")",
        )),
    }
}

/// How a client proves who it is.
#[derive(Clone)]
enum Auth {
    None,
    /// A credentials file's content.
    Credentials(Secret),
    UserPassword(String, Secret),
    Token(Secret),
}

/// The connection settings, checked: made once by [`ConnectConfig::build`].
#[derive(Clone)]
pub struct ConnectSpec {
    servers: Vec<ServerAddr>,
    /// The servers as they may be shown: without users and passwords.
    pub shown: String,
    auth: Auth,
    tls: Option<TlsSpec>,
}

impl fmt::Debug for ConnectSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match self.auth {
            Auth::None => "none",
            Auth::Credentials(_) => "credentials file",
            Auth::UserPassword(..) => "user and password",
            Auth::Token(_) => "token",
        };
        f.debug_struct("ConnectSpec")
            .field("servers", &self.shown)
            .field("auth", &auth)
            .field("tls", &self.tls)
            .finish()
    }
}

impl ConnectSpec {
    /// A digest of the TLS files read at start (see `TlsSpec::files_read`).
    pub(crate) fn files_read(&self) -> Option<u64> {
        self.tls.as_ref().map(|tls| tls.files_read)
    }
}

const URL_EXAMPLE: &str = "url = \"nats://nats-1.internal:4222,nats://nats-2.internal:4222\"";

impl ConnectConfig {
    /// Checks every key (at `key`, the sink's or source's); reads the files, relative to
    /// `base`.
    pub fn build(&self, key: &str, base: &Path) -> Result<ConnectSpec> {
        let urls = self.url.each();
        if urls.iter().all(|u| u.is_empty()) {
            bail!("`{key}.url` is empty: name one NATS server or more (example: {URL_EXAMPLE})");
        }
        let mut servers = Vec::new();
        for url in &urls {
            servers.push(server(key, url)?);
        }
        let shown = urls
            .iter()
            .map(|u| without_credentials(u).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        let wants_tls = self.tls.is_some() || servers.iter().any(|s| s.tls_required());
        let tls = match (&self.tls, wants_tls) {
            (_, false) => None,
            (Some(tls), true) => Some(tls),
            (None, true) => Some(&TlsConfig::default()),
        };
        let tls = tls.map(|t| t.build(key, base)).transpose()?;
        if let Some(TlsConfig {
            server_name: Some(_),
            ..
        }) = &self.tls
        {
            bail!("`{key}.tls.server_name` is not supported for NATS: the servers' certificates are verified against the host names in `{key}.url` (example: {URL_EXAMPLE})");
        }
        Ok(ConnectSpec {
            servers,
            shown,
            auth: self.auth(key, base)?,
            tls,
        })
    }

    /// At most one way to log in.
    fn auth(&self, key: &str, base: &Path) -> Result<Auth> {
        const EXAMPLE: &str = "credentials_file = \"/etc/flaghook/nats.creds\", or user = \"flaghook\" with password = \"${NATS_PASSWORD}\", or token = \"${NATS_TOKEN}\"";
        let set: Vec<&str> = [
            ("credentials_file", self.credentials_file.is_some()),
            ("user", self.user.is_some() || self.password.is_some()),
            ("token", self.token.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if let [first, second, ..] = set.as_slice() {
            bail!("`{key}.{first}` and `{key}.{second}` are both set: log in one way (example: {EXAMPLE})");
        }
        match (
            &self.credentials_file,
            &self.user,
            &self.password,
            &self.token,
        ) {
            (Some(path), ..) => credentials(key, &base.join(path)),
            (None, Some(user), Some(password), None) => {
                Ok(Auth::UserPassword(user.clone(), password.clone()))
            }
            (None, Some(_), None, None) => {
                bail!("`{key}.user` is set without `{key}.password` (example: {EXAMPLE})")
            }
            (None, None, Some(_), None) => {
                bail!("`{key}.password` is set without `{key}.user` (example: {EXAMPLE})")
            }
            (None, None, None, Some(token)) => Ok(Auth::Token(token.clone())),
            _ => Ok(Auth::None),
        }
    }
}

/// One server's address, checked.
fn server(key: &str, url: &str) -> Result<ServerAddr> {
    let shown = match without_credentials(url) {
        std::borrow::Cow::Borrowed(as_written) => format!(" {as_written:?}"),
        std::borrow::Cow::Owned(_) => " (not shown: it has a user or password)".to_owned(),
    };
    let problem =
        |why: &str| anyhow!("`{key}.url` has{shown}, which {why} (example: {URL_EXAMPLE})");
    if url.is_empty() {
        return Err(problem("is empty"));
    }
    let addr: ServerAddr = url
        .parse()
        .map_err(|_| problem("is not a NATS server URL: nats://host:port or tls://host:port"))?;
    if addr.is_websocket() {
        return Err(problem("is a websocket URL: use nats:// or tls://"));
    }
    Ok(addr)
}

/// Reads and checks a credentials file; no error shows its content.
fn credentials(key: &str, path: &Path) -> Result<Auth> {
    const EXAMPLE: &str = "credentials_file = \"/etc/flaghook/nats.creds\"";
    let text = std::fs::read_to_string(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "the file is missing".to_owned(),
            std::io::ErrorKind::InvalidData => "the file is not text".to_owned(),
            _ => format!("the file cannot be read ({})", e.kind()),
        };
        anyhow!("`{key}.credentials_file` = {path:?}: {why} (example: {EXAMPLE})")
    })?;
    if ConnectOptions::with_credentials(&text).is_err() {
        bail!("`{key}.credentials_file` = {path:?} is not a NATS credentials file (a user JWT and its NKEY seed, as `nsc` writes them) (example: {EXAMPLE})");
    }
    Ok(Auth::Credentials(Secret::new(text)))
}

impl ConnectSpec {
    /// A client for `component` (`sinks.NAME`, `sources.NAME`): it connects in the
    /// background, and reconnects for as long as it lives, to any of the servers.
    /// Connection changes are logged.
    pub(crate) async fn connect(&self, component: &str) -> Result<async_nats::Client> {
        let log = Arc::new(ConnectionLog {
            component: component.to_owned(),
            servers: self.shown.clone(),
            last_error: Mutex::new(None),
        });
        let mut options = ConnectOptions::new()
            .name(format!("flaghook {component}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .event_callback({
                let log = log.clone();
                move |event| {
                    let log = log.clone();
                    async move { log.event(event) }
                }
            })
            .reconnect_to_server_callback(move |servers, _| {
                log.attempt(&servers);
                async { None }
            });
        options = match &self.auth {
            Auth::None => options,
            Auth::Credentials(text) => {
                let text = String::from_utf8_lossy(text.expose()).into_owned();
                options.credentials(&text).map_err(|_| {
                    anyhow!("`{component}.credentials_file` is not a NATS credentials file")
                })?
            }
            Auth::UserPassword(user, password) => options.user_and_password(
                user.clone(),
                String::from_utf8_lossy(password.expose()).into_owned(),
            ),
            Auth::Token(token) => {
                options.token(String::from_utf8_lossy(token.expose()).into_owned())
            }
        };
        if let Some(tls) = &self.tls {
            options = options
                .require_tls(true)
                .tls_client_config((*tls.config).clone());
        }
        options
            .connect(self.servers.clone())
            .await
            .map_err(|e| anyhow!("cannot connect to NATS at {}: {e}", self.shown))
    }
}

/// Logs a client's connection changes. A failed attempt to connect is logged once for as
/// long as the attempts fail the same way (they repeat every few seconds).
struct ConnectionLog {
    component: String,
    servers: String,
    last_error: Mutex<Option<String>>,
}

impl ConnectionLog {
    fn event(&self, event: async_nats::Event) {
        use async_nats::Event;
        let (component, servers) = (&self.component, &self.servers);
        match event {
            Event::Connected => {
                *self.last_error.lock().expect("log lock") = None;
                tracing::info!(component, servers, "connected to NATS");
            }
            Event::Disconnected => {
                tracing::warn!(component, servers, "disconnected from NATS; reconnecting")
            }
            // Each failed attempt, without its reason: `attempt` logs that.
            Event::ClientError(e) => tracing::debug!(component, servers, "NATS: {e}"),
            other => tracing::warn!(component, servers, "NATS: {other}"),
        }
    }

    /// Before each attempt to connect: the servers' last errors, when they changed.
    fn attempt(&self, pool: &[async_nats::Server]) {
        let errors: Vec<String> = pool
            .iter()
            .filter_map(|s| {
                let error = s.last_error.as_ref()?;
                Some(format!("{}:{}: {error}", s.addr.host(), s.addr.port()))
            })
            .collect();
        if errors.is_empty() {
            return;
        }
        let text = errors.join("; ");
        let mut last = self.last_error.lock().expect("log lock");
        if last.as_deref() != Some(text.as_str()) {
            let (component, servers) = (&self.component, &self.servers);
            tracing::warn!(
                component,
                servers,
                "cannot connect to NATS ({text}); trying again"
            );
            *last = Some(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> ConnectConfig {
        let table: toml::Table = toml::from_str(extra).unwrap();
        ConnectConfig::deserialize(toml::Value::Table(table)).unwrap()
    }

    #[test]
    fn urls_are_one_string_with_commas_or_a_list_and_hide_credentials() {
        let one = config("url = \"nats://a:4222, nats://u:hunter2@b:4222\"");
        let spec = one.build("sinks.n", Path::new(".")).unwrap();
        assert_eq!(spec.servers.len(), 2);
        assert_eq!(spec.shown, "nats://a:4222,nats://***@b:4222");
        let list = config("url = [\"nats://a:4222\", \"b:4333\"]\ntoken = \"t0k3n\"");
        let spec = list.build("sinks.n", Path::new(".")).unwrap();
        assert_eq!(spec.servers.len(), 2);
        for shown in [format!("{spec:?}"), format!("{one:?}"), format!("{list:?}")] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("t0k3n"),
                "{shown}"
            );
        }
    }

    #[test]
    fn errors_name_the_key_and_never_a_secret() {
        for (extra, key) in [
            ("url = \"http://a:4222\"", "`sources.n.url`"),
            ("url = \"\"", "`sources.n.url`"),
            ("url = \"nats://a\"\nuser = \"u\"", "`sources.n.user`"),
            (
                "url = \"nats://a\"\nuser = \"u\"\npassword = \"hunter2\"\ntoken = \"t0k3n\"",
                "`sources.n.user` and `sources.n.token`",
            ),
            (
                "url = \"nats://a\"\ncredentials_file = \"/nonexistent/x.creds\"",
                "`sources.n.credentials_file`",
            ),
            (
                "url = \"nats://a\"\ntls.server_name = \"x\"",
                "`sources.n.tls.server_name`",
            ),
        ] {
            let err = format!(
                "{:#}",
                config(extra)
                    .build("sources.n", Path::new("."))
                    .unwrap_err()
            );
            assert!(err.contains(key), "{extra}: {err}");
            assert!(err.contains("example"), "{extra}: {err}");
            assert!(!err.contains("hunter2") && !err.contains("t0k3n"), "{err}");
        }
    }
}
