//! The way to a webhook sink's endpoint: straight, or through an HTTP proxy.
//!
//! [`route`] decides once, at start-up: the sink's `proxy` key when set (`"none"`: never a
//! proxy), else `HTTPS_PROXY` / `HTTP_PROXY` (by the endpoint's scheme; upper case first,
//! then lower case) unless `NO_PROXY` / `no_proxy` names the endpoint's host. NO_PROXY is
//! matched as curl does, by hyper-util's proxy matcher; loopback hosts are not exempt
//! (Go's client exempts them, curl does not): a proxy in the environment carries
//! `127.0.0.1` too unless NO_PROXY names it.
//!
//! An https endpoint is reached through a `CONNECT` tunnel (hyper-util's `Tunnel`), inside
//! which TLS runs end to end; a plain http request goes to the proxy whole, its URI in
//! absolute form ([`Forward`]). The proxy URL's user and password are sent as
//! `Proxy-Authorization: Basic`, and never shown: messages name where the proxy was set
//! (`sinks.NAME.proxy`, or the variable), not its URL, which may come from the
//! environment.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::{anyhow, Result};
use hyper::header::HeaderValue;
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use super::config::{bad_port, basic_auth, without_credentials};

const EXAMPLE: &str = "proxy = \"http://proxy.internal:3128\"";

/// `proxy` as written: `"none"` or an `http://[user:password@]host:port` URL. `Debug`
/// shows `***` for a user and password.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct ProxyUrl(String);

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", without_credentials(&self.0))
    }
}

/// An HTTP proxy, parsed.
#[derive(Clone)]
pub(crate) struct Proxy {
    /// `http://host:port/`: where connections go.
    pub(crate) uri: Uri,
    /// `Basic base64(user:password)`, from the URL's user and password; sent as
    /// `Proxy-Authorization`.
    pub(crate) authorization: Option<HeaderValue>,
    /// Where it was set, for messages: `` `sinks.NAME.proxy` `` or the variable's name.
    pub(crate) origin: String,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("origin", &self.origin)
            .field("basic_auth", &self.authorization.is_some())
            .finish()
    }
}

/// The proxy requests to `endpoint` go through, if any (see the module's doc). `key` is
/// the sink's; `env` reads a variable (`std::env::var_os` outside tests).
pub(crate) fn route(
    key: &str,
    endpoint: &Uri,
    setting: Option<&ProxyUrl>,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Option<Proxy>> {
    if let Some(ProxyUrl(text)) = setting {
        if text == "none" {
            return Ok(None);
        }
        let origin = format!("`{key}.proxy`");
        return parse(text, false)
            .map(|proxy| Some(proxy.from(origin.clone())))
            .map_err(|why| anyhow!("{origin} {why} (example: {EXAMPLE}, or proxy = \"none\")"));
    }
    let names = match endpoint.scheme_str() {
        Some("https") => ["HTTPS_PROXY", "https_proxy"],
        _ => ["HTTP_PROXY", "http_proxy"],
    };
    let Some((name, text)) = first_set(&names, &env)? else {
        return Ok(None);
    };
    let no_proxy = first_set(&["NO_PROXY", "no_proxy"], &env)?.map_or(String::new(), |(_, v)| v);
    if exempt(endpoint, no_proxy) {
        return Ok(None);
    }
    let proxy = parse(&text, true).map_err(|why| {
        anyhow!("the environment variable {name} (not shown) {why}: fix it, or set `{key}.proxy` (example: {EXAMPLE}, or proxy = \"none\" to send straight to the endpoint)")
    })?;
    Ok(Some(proxy.from(name.to_owned())))
}

/// Whether `no_proxy` (NO_PROXY's list) names `endpoint`'s host. hyper-util's matcher is
/// asked with a stand-in proxy: only its NO_PROXY rules (curl's) are wanted here, the
/// proxy URL itself is parsed by [`parse`], whose errors can name what is wrong.
fn exempt(endpoint: &Uri, no_proxy: String) -> bool {
    const STAND_IN: &str = "http://proxy.invalid:1";
    let matcher = Matcher::builder()
        .http(STAND_IN)
        .https(STAND_IN)
        .no(no_proxy)
        .build();
    matcher.intercept(endpoint).is_none()
}

/// The first of `names` set to something (an empty value is unset, as for curl).
fn first_set(
    names: &[&'static str],
    env: &impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Option<(&'static str, String)>> {
    for &name in names {
        match env(name).map(|v| v.into_string()) {
            None => continue,
            Some(Ok(text)) if text.is_empty() => continue,
            Some(Ok(text)) => return Ok(Some((name, text))),
            Some(Err(_)) => {
                return Err(anyhow!(
                    "the environment variable {name} is not valid UTF-8"
                ))
            }
        }
    }
    Ok(None)
}

/// `http://[user:password@]host:port` (from the environment, `host:port` alone is taken as
/// http too, as curl does). The error says what is wrong without quoting the URL.
fn parse(text: &str, schemeless_ok: bool) -> Result<Proxy, &'static str> {
    let owned;
    let text = if schemeless_ok && !text.contains("://") {
        owned = format!("http://{text}");
        &owned
    } else {
        text
    };
    let uri: Uri = text.parse().map_err(|_| "is not a valid URL")?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("is an https:// proxy, which flaghook does not support: give the proxy's http:// URL (https endpoints still go through it in a CONNECT tunnel, encrypted end to end)"),
        _ => return Err("must start with http://"),
    }
    let authority = uri.authority().ok_or("has no host")?.as_str();
    if bad_port(authority) {
        return Err("has a port that is not a number (in a password, write `/` as `%2F`)");
    }
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority),
    };
    let bare: Uri = format!("http://{host_port}/")
        .parse()
        .map_err(|_| "has no valid host")?;
    if bare.host().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    if bare.port_u16().is_none() {
        return Err("has no port");
    }
    let authorization = match userinfo {
        Some(userinfo) if !userinfo.is_empty() => Some(basic_auth(userinfo).ok_or(
            "has a user or password that is not valid percent-encoding: write `%` as `%25` and `@` as `%40`",
        )?),
        _ => None,
    };
    Ok(Proxy {
        uri: bare,
        authorization,
        origin: String::new(),
    })
}

impl Proxy {
    fn from(mut self, origin: String) -> Self {
        self.origin = origin;
        self
    }
}

/// Connections for plain-http requests through a proxy: each goes to the proxy, and is
/// marked proxied so that hyper writes the request's URI whole (`POST
/// http://host/hook HTTP/1.1`), as a forwarding proxy reads it. (An https endpoint uses
/// hyper-util's `Tunnel` instead.)
#[derive(Clone)]
pub(crate) struct Forward {
    proxy: Uri,
    http: HttpConnector,
}

impl Forward {
    pub(crate) fn new(proxy: Uri, http: HttpConnector) -> Self {
        Forward { proxy, http }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Forward {
    type Response = Proxied;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Proxied, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _endpoint: Uri) -> Self::Future {
        let connecting = self.http.call(self.proxy.clone());
        Box::pin(async move { Ok(Proxied(connecting.await?)) })
    }
}

/// A connection to a forwarding proxy.
pub(crate) struct Proxied(TokioIo<TcpStream>);

impl Connection for Proxied {
    fn connected(&self) -> Connected {
        self.0.connected().proxy(true)
    }
}

impl hyper::rt::Read for Proxied {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Proxied {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn uri(text: &str) -> Uri {
        text.parse().unwrap()
    }

    fn via(endpoint: &str, setting: Option<&str>, vars: &[(&str, &str)]) -> Result<Option<Proxy>> {
        let setting = setting.map(|s| ProxyUrl(s.to_owned()));
        route("sinks.w", &uri(endpoint), setting.as_ref(), env(vars))
    }

    #[test]
    fn the_variable_follows_the_endpoints_scheme_upper_case_first() {
        let vars = [
            ("HTTPS_PROXY", "http://s:1"),
            ("https_proxy", "http://lower-s:1"),
            ("http_proxy", "lower-h:2"),
        ];
        let p = via("https://x.example/hook", None, &vars).unwrap().unwrap();
        assert_eq!(
            (p.uri.to_string().as_str(), p.origin.as_str()),
            ("http://s:1/", "HTTPS_PROXY")
        );
        let p = via("http://x.example/hook", None, &vars).unwrap().unwrap();
        assert_eq!(
            (p.uri.to_string().as_str(), p.origin.as_str()),
            ("http://lower-h:2/", "http_proxy")
        );
        assert!(
            via("http://x.example/", None, &[("HTTPS_PROXY", "http://s:1")])
                .unwrap()
                .is_none()
        );
        assert!(via("http://x.example/", None, &[("HTTP_PROXY", "")])
            .unwrap()
            .is_none());
    }

    #[test]
    fn loopback_is_proxied_unless_no_proxy_names_it() {
        let proxy = ("HTTP_PROXY", "http://p:3128");
        for endpoint in [
            "http://127.0.0.1:9/",
            "http://localhost:9/",
            "http://[::1]:9/",
        ] {
            assert!(
                via(endpoint, None, &[proxy]).unwrap().is_some(),
                "{endpoint}"
            );
        }
        for (no, endpoint) in [
            ("127.0.0.1", "http://127.0.0.1:9/"),
            ("127.0.0.0/8", "http://127.0.0.1:9/"),
            ("example.com, localhost", "http://localhost:9/"),
            (".example.com", "http://a.example.com/"),
            ("example.com", "http://a.example.com/"),
            ("*", "http://x.example/"),
            ("::1", "http://[::1]:9/"),
        ] {
            assert!(
                via(endpoint, None, &[proxy, ("no_proxy", no)])
                    .unwrap()
                    .is_none(),
                "{no} {endpoint}"
            );
        }
        assert!(via(
            "http://notexample.com/",
            None,
            &[proxy, ("NO_PROXY", "example.com")]
        )
        .unwrap()
        .is_some());
    }

    #[test]
    fn the_proxy_key_wins_over_the_environment() {
        let vars = [("HTTP_PROXY", "http://env:1"), ("NO_PROXY", "*")];
        let p = via("http://x/", Some("http://key:2"), &vars)
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.uri.to_string().as_str(), p.origin.as_str()),
            ("http://key:2/", "`sinks.w.proxy`")
        );
        assert!(via("http://x/", Some("none"), &vars).unwrap().is_none());
    }

    #[test]
    fn credentials_become_proxy_authorization_and_never_show() {
        let p = via("http://x/", Some("http://us%40er:pa55w0rd@p:3128"), &[])
            .unwrap()
            .unwrap();
        assert_eq!(p.uri.to_string(), "http://p:3128/");
        // base64("us@er:pa55w0rd")
        assert_eq!(
            p.authorization.as_ref().unwrap(),
            "Basic dXNAZXI6cGE1NXcwcmQ="
        );
        assert!(!format!("{p:?}").contains("pa55w0rd"));
        let setting = ProxyUrl("http://u:pa55w0rd@p:3128".into());
        assert_eq!(format!("{setting:?}"), "\"http://***@p:3128\"");
    }

    #[test]
    fn bad_proxies_are_errors_that_do_not_quote_them() {
        for bad in [
            "https://u:pa55w0rd@p:3128",
            "socks5://u:pa55w0rd@p:1080",
            "http://u:pa55w0rd@p",
            "http://u:pa/55w0rd@p:3128",
            "http://u:pa55w0rd%zz@p:3128",
            "http://u:pa55w0rd@:3128",
            "not a url pa55w0rd",
        ] {
            let err = format!("{:#}", via("http://x/", Some(bad), &[]).unwrap_err());
            assert!(
                err.starts_with("`sinks.w.proxy` ") && !err.contains("pa55w0rd"),
                "{bad}: {err}"
            );
            let err = format!(
                "{:#}",
                via("https://x/", None, &[("https_proxy", bad)]).unwrap_err()
            );
            assert!(
                err.contains("https_proxy") && !err.contains("pa55w0rd"),
                "{bad}: {err}"
            );
        }
        let err = via("http://x/", Some("p:3128"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("must start with http://"), "{err}");
        // From the environment, `host:port` is an http proxy, as for curl.
        let p = via("http://x/", None, &[("HTTP_PROXY", "u:pw@p:3128")])
            .unwrap()
            .unwrap();
        assert_eq!(p.uri.to_string(), "http://p:3128/");
        assert!(p.authorization.is_some());
    }
}
