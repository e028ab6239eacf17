//! `tls` on a webhook sink with an https endpoint, or on a nats sink or source (see
//! `crate::nats`): the certificates the endpoint's (the servers') is verified against, a
//! client certificate for endpoints that ask for one (mTLS), and the name verified.
//!
//! [`TlsConfig::build`] reads every file once, at start-up, into a ready rustls
//! `ClientConfig`; an error names the key and the file and says what is wrong with it
//! (missing, unreadable, not PEM, no certificate or key in it). Certificate verification is
//! always on: no key turns it off. PEM is read by rustls' own parser (`rustls-pki-types`),
//! and no error quotes a file's content (a key file's lines are secret).

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use rustls::pki_types::pem::{self, PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

fn default_use_platform_roots() -> bool {
    true
}

const CA_EXAMPLE: &str = "tls.ca_file = \"/etc/flaghook/company-ca.pem\"";
const CLIENT_EXAMPLE: &str =
    "tls.crt_file = \"/etc/flaghook/client.crt\" with tls.key_file = \"/etc/flaghook/client.key\"";

/// `[sinks.NAME.tls]`, for an https `endpoint_url`. Paths are relative to the config
/// file's folder.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// A PEM file of one or more CA certificates trusted to sign the endpoint's
    /// certificate, besides the platform's roots (instead of them with
    /// `use_platform_roots = false`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Whether the platform's root certificates are trusted. Default true; false needs
    /// `ca_file`.
    #[serde(default = "default_use_platform_roots")]
    pub use_platform_roots: bool,
    /// The client certificate, PEM (the leaf first, then any intermediates), for an
    /// endpoint that asks for one (mTLS). Needs `key_file`.
    #[serde(default)]
    pub crt_file: Option<PathBuf>,
    /// The client certificate's private key, PEM (PKCS#8, RSA or EC; not encrypted).
    /// Needs `crt_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the endpoint's certificate must carry, also sent as SNI, instead of the
    /// host of `endpoint_url`: a DNS name or an IP address.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_file: None,
            use_platform_roots: default_use_platform_roots(),
            crt_file: None,
            key_file: None,
            server_name: None,
        }
    }
}

/// An https endpoint's TLS settings, ready: made once by [`TlsConfig::build`].
#[derive(Clone)]
pub(crate) struct TlsSpec {
    pub(crate) config: Arc<rustls::ClientConfig>,
    /// Verified and sent as SNI instead of the URL's host.
    pub(crate) server_name: Option<ServerName<'static>>,
    /// A digest of the bytes of the files read (`ca_file`, `crt_file`, `key_file`): a
    /// reload restarts the sink when they changed, as when its table did.
    pub(crate) files_read: u64,
}

impl fmt::Debug for TlsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSpec")
            .field("server_name", &self.server_name)
            .field(
                "client_certificate",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish()
    }
}

impl TlsConfig {
    /// Reads the files (relative to `base`) and makes the settings of the sink at `sink`
    /// (`sinks.NAME`).
    pub(crate) fn build(&self, sink: &str, base: &Path) -> Result<TlsSpec> {
        let key = format!("{sink}.tls");
        let mut read = DefaultHasher::new();
        let builder = rustls::ClientConfig::builder()
            .with_root_certificates(self.roots(&key, base, &mut read)?);
        let config = match (&self.crt_file, &self.key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(crt), Some(private)) => {
                let crt = base.join(crt);
                let private = base.join(private);
                let crt_key = format!("{key}.crt_file");
                let chain = example(certificates(&crt_key, &crt, &mut read), CLIENT_EXAMPLE)?;
                let private_key = example(
                    private_key(&format!("{key}.key_file"), &private, &mut read),
                    CLIENT_EXAMPLE,
                )?;
                builder.with_client_auth_cert(chain, private_key).map_err(|e| {
                    anyhow!("`{key}.key_file` = {private:?} is not the key of the certificate in `{key}.crt_file` = {crt:?}: {e} (example: {CLIENT_EXAMPLE})")
                })?
            }
            (Some(_), None) => bail!("`{key}.crt_file` is set without `{key}.key_file`: a client certificate needs its private key (example: {CLIENT_EXAMPLE})"),
            (None, Some(_)) => bail!("`{key}.key_file` is set without `{key}.crt_file`: a private key needs its client certificate (example: {CLIENT_EXAMPLE})"),
        };
        let server_name = match &self.server_name {
            None => None,
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                anyhow!("`{key}.server_name` = {name:?} is not a DNS name or an IP address (example: tls.server_name = \"collector.internal\")")
            })?),
        };
        Ok(TlsSpec {
            config: Arc::new(config),
            server_name,
            files_read: read.finish(),
        })
    }

    /// The certificates the endpoint's may chain to: the platform's (unless
    /// `use_platform_roots = false`) and `ca_file`'s. At least one.
    fn roots(
        &self,
        key: &str,
        base: &Path,
        read: &mut DefaultHasher,
    ) -> Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        if self.use_platform_roots {
            // A platform certificate that does not parse is left out, as rustls' own
            // platform loaders do; the others still serve.
            let platform = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(platform.certs);
        }
        match &self.ca_file {
            Some(path) => {
                let ca_key = format!("{key}.ca_file");
                let path = base.join(path);
                for (i, cert) in example(certificates(&ca_key, &path, read), CA_EXAMPLE)?
                    .into_iter()
                    .enumerate()
                {
                    roots.add(cert).map_err(|e| {
                        anyhow!("`{ca_key}` = {path:?}: certificate {} of the file is not a usable CA certificate: {e} (example: {CA_EXAMPLE})", i + 1)
                    })?;
                }
            }
            None if !self.use_platform_roots => bail!("`{key}.use_platform_roots` is false and `{key}.ca_file` is not set: no certificate would be trusted (example: {CA_EXAMPLE})"),
            None if roots.is_empty() => bail!("`{key}`: this machine has no root certificates to verify the https endpoint with (install the ca-certificates package, or point SSL_CERT_FILE at a PEM bundle), and `{key}.ca_file` is not set (example: {CA_EXAMPLE})"),
            None => {}
        }
        Ok(roots)
    }
}

/// `result`, its error followed by a correct example.
fn example<T>(result: Result<T>, example: &str) -> Result<T> {
    result.map_err(|e| anyhow!("{e} (example: {example})"))
}

/// Every certificate in the PEM file at `path` (`key` names the setting): at least one.
/// The file's bytes go into `read`.
fn certificates(
    key: &str,
    path: &Path,
    read: &mut DefaultHasher,
) -> Result<Vec<CertificateDer<'static>>> {
    let (_, sections) = pem_file(key, path, read)?;
    let certificates: Vec<_> = sections
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    if certificates.is_empty() {
        bail!(
            "`{key}` = {path:?} holds no certificate (a PEM block `-----BEGIN CERTIFICATE-----`)"
        );
    }
    Ok(certificates)
}

/// The first private key in the PEM file at `path` (`key` names the setting). The file's
/// bytes go into `read`.
fn private_key(key: &str, path: &Path, read: &mut DefaultHasher) -> Result<PrivateKeyDer<'static>> {
    let (text, sections) = pem_file(key, path, read)?;
    if let Some(private) = sections
        .into_iter()
        .find_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der))
    {
        return Ok(private);
    }
    if memchr::memmem::find(&text, b"-----BEGIN ENCRYPTED PRIVATE KEY-----").is_some() {
        bail!("`{key}` = {path:?} holds an encrypted private key, which flaghook cannot use: decrypt it to a file only flaghook's user can read (openssl pkey -in KEY -out client.key)");
    }
    bail!("`{key}` = {path:?} holds no private key (a PEM block `-----BEGIN PRIVATE KEY-----`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)");
}

/// The file at `path` and its PEM sections of the kinds rustls knows; its bytes go into
/// `read`. Errors say whether the file is missing, unreadable or not PEM, and never quote
/// its content.
#[allow(clippy::type_complexity)]
fn pem_file(
    key: &str,
    path: &Path,
    read: &mut DefaultHasher,
) -> Result<(Vec<u8>, Vec<(SectionKind, Vec<u8>)>)> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => {
            bytes.hash(read);
            bytes
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("`{key}` = {path:?}: the file is missing")
        }
        Err(e) => bail!("`{key}` = {path:?}: the file cannot be read: {e}"),
    };
    if memchr::memmem::find(&bytes, b"-----BEGIN ").is_none() {
        bail!("`{key}` = {path:?} is not PEM (no `-----BEGIN` line): convert a DER file with `openssl x509 -inform der -in FILE -out FILE.pem` (a key: `openssl pkey -inform der`)");
    }
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("`{key}` = {path:?} is not valid PEM: {}", pem_problem(&e)))?;
    Ok((bytes, sections))
}

/// What is wrong with a PEM file, without its content (the parser's own messages quote
/// the offending line).
fn pem_problem(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a block has no `-----END` line",
        pem::Error::IllegalSectionStart { .. } => "a `-----BEGIN` line is malformed",
        pem::Error::Base64Decode(_) => "a block is not valid base64",
        pem::Error::SectionTooLarge => "a block is larger than 256 MB",
        _ => "it does not parse",
    }
}
