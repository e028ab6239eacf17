//! `type = "fluent"`: the Fluentd Forward protocol (v1), as Fluent Bit's `forward` output
//! and the fluent-logger libraries speak it, with acknowledgements.
//!
//! Each connection is read as a stream of msgpack values ([`forward::Frames`] cuts them,
//! however the reads split them); each entry's records become lines ([`forward::decode`]:
//! the record's JSON, or the GO Feature Flag event its envelope field holds, as it is) and
//! go to the source's journal in one append through the `Keeper` (`source::keep`); the
//! sinks read the journal back, as a `tcp` source's. When the entry carries the `chunk`
//! option, flaghook answers `{"ack": chunk}` only after `keep` returned, once the entry's
//! lines are in the journal and fsynced (whatever `journal_fsync` says): the client resends
//! what was not acknowledged. Without `chunk` it is like `tcp` (`journal_fsync` applies).
//!
//! Back-pressure is TCP's: while the journal holds `journal_max_bytes`, `keep` waits, no
//! ack is sent and the connection is not read. With a `shared_key`, no entry is read
//! before the handshake (`handshake.rs`) has succeeded.
//!
//! Connections hold `ConnectionSlots` as `tcp`'s do (`max_connections`, `idle_timeout`).
//! A connection is closed, with the reason logged, when its bytes are not the Forward
//! protocol or an entry passes `max_entry_bytes`; the bytes read and not taken as records
//! are journaled as a bad record with that reason (their start when long), which the sinks
//! dead-letter, so that nothing vanishes without a trace. A connection that ends in the middle of an entry is handled the same
//! way. At shutdown, as for `tcp`, what clients already sent is still read (and
//! acknowledged) until each connection is idle for a moment.

pub mod forward;
pub(crate) mod handshake;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Deserializer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::forward::{Broken, Frames, Limits, Message, Record};
use self::handshake::Handshake;
use super::connections::{check_limits, CloseReason, ConnectionSlots, Tracked};
use super::keep::Keeper;
use super::lines::OVERSIZED_EXCERPT;
use super::listener::accept_loop;
use super::pump::{DRAIN_IDLE, DRAIN_LIMIT};
use crate::config::{check_max_line_bytes, ByteSize, HumanDuration};
use crate::event::{Line, LineKind};
use crate::journal::{self, Appender, Fsync, JournalSpec};
use crate::sink::webhook::Secret;

/// The Forward protocol's port, taken when `address` names none.
pub const DEFAULT_PORT: u16 = 24224;
/// The largest `max_entry_bytes`: an entry is held whole while it is read.
const MAX_ENTRY_BYTES: u64 = 1 << 30;
const READ_SIZE: usize = 64 * 1024;

fn default_address() -> String {
    format!("127.0.0.1:{DEFAULT_PORT}")
}

fn default_max_connections() -> usize {
    256
}

fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

fn default_max_entry_bytes() -> ByteSize {
    ByteSize(16 << 20)
}

/// `[sources.NAME] type = "fluent"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FluentConfig {
    /// `host:port` to listen on; a host alone listens on port 24224.
    /// Default "127.0.0.1:24224".
    #[serde(default = "default_address")]
    pub address: String,
    /// A record whose JSON is longer is rejected as bad input. Default 102400.
    #[serde(default = "super::default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// A larger entry (or PackedForward entries that decompress to more) closes the
    /// connection. Default "16MiB".
    #[serde(default = "default_max_entry_bytes")]
    pub max_entry_bytes: ByteSize,
    /// Connections served at once. Default 256.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed. Default "5m".
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// The record field that holds the event when the record is not the event itself.
    /// Default: `message`, then `log`.
    #[serde(default)]
    pub field: Option<String>,
    /// The key clients prove they hold in the handshake (Fluent Bit's `Shared_Key`).
    #[serde(default, deserialize_with = "secret")]
    pub shared_key: Option<Secret>,
    /// The name flaghook gives itself in the handshake. Default: this machine's hostname.
    #[serde(default)]
    pub self_hostname: Option<String>,
    /// The journal starts a new segment file once one holds this many bytes. Default "64MiB".
    #[serde(default = "journal::default_segment_bytes")]
    pub journal_segment_bytes: ByteSize,
    /// Bytes the journal holds on the disk before the source stops reading (and sends no
    /// ack). Default "1GiB".
    #[serde(default = "journal::default_max_bytes")]
    pub journal_max_bytes: ByteSize,
    /// For entries without `chunk`: "interval" (default) or "always", as for `tcp`. An
    /// entry with `chunk` is fsynced before its ack either way.
    #[serde(default = "journal::default_fsync")]
    pub journal_fsync: Fsync,
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Some(Secret::new(String::deserialize(d)?.into_bytes())))
}

/// The handshake's settings: the key and the name flaghook gives.
#[derive(Debug, Clone)]
pub struct Auth {
    pub shared_key: Secret,
    pub self_hostname: String,
}

/// A fluent source's settings, parsed.
#[derive(Debug, Clone)]
pub struct FluentSpec {
    pub address: SocketAddr,
    pub limits: Limits,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub envelope: Arc<[String]>,
    pub auth: Option<Auth>,
    pub journal: JournalSpec,
}

impl FluentConfig {
    /// Checks every key (at `key`, the source's) and resolves the address.
    pub fn build(self, key: &str) -> Result<FluentSpec> {
        check_max_line_bytes(key, self.max_line_bytes)?;
        check_limits(
            key,
            self.max_connections,
            self.idle_timeout.0,
            "max_connections = 256",
        )?;
        if self.max_entry_bytes.0 > MAX_ENTRY_BYTES {
            bail!("`{key}.max_entry_bytes` is too large: at most 1GiB (example: max_entry_bytes = \"16MiB\")");
        }
        let auth = match (self.shared_key, self.self_hostname) {
            (Some(k), _) if k.expose().is_empty() => bail!(
                "`{key}.shared_key` is empty: set the key your clients share, or leave it out (example: shared_key = \"${{FLUENT_SHARED_KEY}}\")"
            ),
            (Some(shared_key), name) => Some(Auth {
                shared_key,
                self_hostname: name.unwrap_or_else(this_hostname),
            }),
            (None, Some(_)) => bail!(
                "`{key}.self_hostname` is set without `shared_key`: it is only used in the handshake (example: shared_key = \"${{FLUENT_SHARED_KEY}}\")"
            ),
            (None, None) => None,
        };
        Ok(FluentSpec {
            address: listen_addr(&format!("{key}.address"), &self.address, DEFAULT_PORT)?,
            limits: Limits {
                max_line_bytes: self.max_line_bytes,
                max_entry_bytes: usize::try_from(self.max_entry_bytes.0).unwrap_or(usize::MAX),
            },
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout.0,
            envelope: super::envelope(key, self.field.as_deref())?,
            auth,
            journal: JournalSpec::build(
                key,
                self.journal_segment_bytes,
                self.journal_max_bytes,
                self.journal_fsync,
            )?,
        })
    }
}

/// `address` as `host:port`, or `host` alone with `default_port`.
pub(crate) fn listen_addr(key: &str, address: &str, default_port: u16) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let with_port = format!("{address}:{default_port}");
    [address, with_port.as_str()]
        .iter()
        .find_map(|a| a.to_socket_addrs().ok().and_then(|mut all| all.next()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "`{key}` = {address:?} is not a `host:port` address (example: address = \"127.0.0.1:{default_port}\")"
            )
        })
}

fn this_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "flaghook".to_owned())
}

/// Serves connections until shutdown, appending what they send to `journal`; with `once`,
/// until the first ones have all closed.
pub(crate) async fn run(
    spec: &FluentSpec,
    listener: TcpListener,
    journal: Appender,
    shutdown: CancellationToken,
    once: bool,
) {
    let shared = Arc::new(Shared {
        spec: spec.clone(),
        keeper: Keeper::new(journal, shutdown.clone()),
        shutdown: shutdown.clone(),
    });
    let slots = ConnectionSlots::new(spec.max_connections, spec.idle_timeout);
    accept_loop(
        listener,
        slots,
        spec.max_connections,
        once,
        &shutdown,
        |tasks, stream, peer, slot| {
            let shared = shared.clone();
            tasks.spawn(async move {
                tracing::debug!(%peer, "connection opened");
                let mut connection = Connection::new(slot.track(stream), peer, &shared);
                connection.serve().await;
                log_close(connection.stream.closed(), peer, &shared.spec);
            });
        },
    )
    .await;
}

/// What every connection of a source shares.
struct Shared {
    spec: FluentSpec,
    keeper: Keeper,
    shutdown: CancellationToken,
}

/// One client's connection.
struct Connection<'a> {
    stream: Tracked<TcpStream>,
    peer: SocketAddr,
    shared: &'a Shared,
    buf: BytesMut,
    frames: Frames,
    /// Set at shutdown: read on until the connection is idle or this instant.
    drain_until: Option<Instant>,
}

/// Why a connection stopped being read.
enum End {
    /// The client closed it, or it was closed for idleness, or the drain at shutdown ended.
    Closed,
    /// Its bytes cannot be read on.
    Broken(Broken),
    /// A read or a write failed.
    Failed(std::io::Error),
    /// The journal could not be written (given up at shutdown): nothing more is read.
    NotKept,
}

impl<'a> Connection<'a> {
    fn new(stream: Tracked<TcpStream>, peer: SocketAddr, shared: &'a Shared) -> Self {
        Connection {
            stream,
            peer,
            shared,
            buf: BytesMut::new(),
            frames: Frames::new(shared.spec.limits.max_entry_bytes),
            drain_until: None,
        }
    }

    async fn serve(&mut self) {
        let end = match self.shared.spec.auth.clone() {
            Some(auth) => match self.handshake(&auth).await {
                Ok(true) => self.entries().await,
                refused => {
                    // Nothing from a client that did not prove it holds the key reaches
                    // the sinks, not even as a dead letter.
                    self.buf.clear();
                    match refused {
                        Err(End::Broken(Broken(reason))) => {
                            tracing::warn!(peer = %self.peer, "closed the connection before the handshake ended: {reason}");
                            return;
                        }
                        Err(end) => end,
                        Ok(_) => End::Closed,
                    }
                }
            },
            None => self.entries().await,
        };
        match end {
            End::Closed if self.buf.is_empty() => {}
            End::Closed => {
                let reason = "the connection closed in the middle of an entry".to_owned();
                tracing::warn!(peer = %self.peer, bytes = self.buf.len(), "{reason}: its bytes are dead-lettered");
                self.dead_letter_rest(reason).await;
            }
            End::Broken(Broken(reason)) => {
                tracing::warn!(peer = %self.peer, "closed the connection: {reason}");
                self.dead_letter_rest(reason).await;
            }
            End::Failed(e) => tracing::warn!(peer = %self.peer, error = %e, "connection failed"),
            End::NotKept => {}
        }
    }

    /// Reads entries until the connection ends, journaling each and acknowledging it.
    async fn entries(&mut self) -> End {
        loop {
            let frame = match self.next_frame().await {
                Ok(Some(frame)) => frame,
                Ok(None) => return End::Closed,
                Err(end) => return end,
            };
            let entry =
                match forward::decode(&frame, &self.shared.spec.limits, &self.shared.spec.envelope)
                {
                    Ok(Message::Heartbeat) => continue,
                    Ok(Message::Entry(entry)) => entry,
                    Err(broken) => {
                        // Put the frame back: it is what gets dead-lettered.
                        let mut rest = BytesMut::from(&frame[..]);
                        rest.extend_from_slice(&self.buf);
                        self.buf = rest;
                        return End::Broken(broken);
                    }
                };
            let lines = lines(entry.records);
            let Some(chunk) = entry.chunk else {
                if self.shared.keeper.hand_on(&lines).await.is_err() {
                    return End::NotKept;
                }
                continue;
            };
            // No ack before the lines are on the disk; while the journal is full, this
            // waits, and the connection is not read.
            if self.shared.keeper.keep(&lines).await.is_err() {
                return End::NotKept;
            }
            if let Err(e) = self.write(&forward::ack(&chunk)).await {
                return End::Failed(e);
            }
        }
    }

    /// The handshake: `Ok(true)` once the client proved it holds the key.
    async fn handshake(&mut self, auth: &Auth) -> Result<bool, End> {
        let hs = Handshake::new(&auth.shared_key, &auth.self_hostname);
        self.write(&hs.helo()).await.map_err(End::Failed)?;
        self.frames = Frames::new(handshake::MAX_PING_BYTES);
        let ping = match self.next_frame().await {
            Ok(Some(ping)) => ping,
            Ok(None) => return Ok(false),
            Err(end) => return Err(end),
        };
        self.frames = Frames::new(self.shared.spec.limits.max_entry_bytes);
        let answer = hs.answer(&ping).map_err(End::Broken)?;
        self.write(&answer.pong).await.map_err(End::Failed)?;
        match answer.refused {
            None => {
                tracing::debug!(peer = %self.peer, client = %answer.client, "handshake done");
                Ok(true)
            }
            Some(reason) => {
                tracing::warn!(
                    peer = %self.peer,
                    client = %answer.client,
                    "refused a Forward client: {reason} (its shared_key is not this source's); closed the connection"
                );
                Ok(false)
            }
        }
    }

    /// The next whole msgpack value; `None` when the connection ends.
    async fn next_frame(&mut self) -> Result<Option<Bytes>, End> {
        loop {
            if let Some(n) = self.frames.next(&self.buf).map_err(End::Broken)? {
                return Ok(Some(self.buf.split_to(n).freeze()));
            }
            self.buf.reserve(READ_SIZE);
            if !self.read().await.map_err(End::Failed)? {
                return Ok(None);
            }
        }
    }

    /// Reads more bytes; `false` at the end. At shutdown, reads on only until the client
    /// is idle for a moment (what it sent before was acknowledged by the kernel).
    async fn read(&mut self) -> std::io::Result<bool> {
        if self.drain_until.is_none() {
            tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => {
                    self.drain_until = Some(Instant::now() + DRAIN_LIMIT);
                }
                n = self.stream.read_buf(&mut self.buf) => return Ok(n? > 0),
            }
        }
        let deadline = self.drain_until.expect("set above");
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        match tokio::time::timeout(DRAIN_IDLE.min(left), self.stream.read_buf(&mut self.buf)).await
        {
            Ok(n) => Ok(n? > 0),
            Err(_) => Ok(false),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// The bytes read and not taken as records, journaled as one bad record (which the
    /// sinks dead-letter).
    async fn dead_letter_rest(&mut self, reason: String) {
        let rest = std::mem::take(&mut self.buf);
        if rest.is_empty() {
            return;
        }
        let keep = if rest.len() <= self.shared.spec.limits.max_line_bytes {
            rest.len()
        } else {
            rest.len().min(OVERSIZED_EXCERPT)
        };
        let line = Line {
            bytes: Bytes::copy_from_slice(&rest[..keep]).into(),
            kind: LineKind::Bad {
                number: 0,
                end: 0,
                reason,
                len: rest.len() as u64,
            },
        };
        let _ = self.shared.keeper.hand_on(&[line]).await;
    }
}

/// An entry's records as lines for the journal, which gives them their place (line
/// number and offset) in its segments.
fn lines(records: Vec<Record>) -> Vec<Line> {
    let (number, end) = (0, 0);
    records
        .into_iter()
        .map(|record| match record {
            Record::Json(bytes) | Record::Event(bytes) => Line {
                bytes: bytes.into(),
                kind: LineKind::Text { number, end },
            },
            Record::Oversized { excerpt, len } => Line {
                bytes: excerpt.into(),
                kind: LineKind::Oversized { number, end, len },
            },
            Record::Bad { raw, len, reason } => Line {
                bytes: raw.into(),
                kind: LineKind::Bad {
                    number,
                    end,
                    reason,
                    len,
                },
            },
        })
        .collect()
}

fn log_close(reason: Option<CloseReason>, peer: SocketAddr, spec: &FluentSpec) {
    match reason {
        Some(CloseReason::IdleTimeout) => tracing::info!(
            %peer,
            "closed the connection: nothing received for {} (idle_timeout)",
            humantime::format_duration(spec.idle_timeout)
        ),
        Some(CloseReason::Evicted) => tracing::info!(
            %peer,
            "closed the connection, idle the longest, to serve a new one: all {} (max_connections) were taken",
            spec.max_connections
        ),
        None => tracing::debug!(%peer, "connection closed"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::source::SourceSpec;
    use crate::topology::Plan;

    /// The plan of a config with one source table `src` read by a webhook sink.
    fn plan(source: &str) -> anyhow::Result<Plan> {
        let text = format!(
            "[sources.f]\n{source}\n[sinks.w]\ntype = \"webhook\"\ninputs = [\"f\"]\nendpoint_url = \"http://127.0.0.1:9/\"\n"
        );
        crate::config::parse(&text, Path::new("/etc/flaghook/f.toml")).and_then(Plan::build)
    }

    fn error(source: &str) -> String {
        format!("{:#}", plan(source).unwrap_err())
    }

    #[test]
    fn a_host_alone_listens_on_the_forward_port() {
        let plan = plan("type = \"fluent\"\naddress = \"127.0.0.1\"").unwrap();
        let SourceSpec::Fluent(spec) = &plan.sources["f"] else {
            panic!("not a fluent source")
        };
        assert_eq!(spec.address.to_string(), "127.0.0.1:24224");
        assert_eq!(spec.limits.max_entry_bytes, 16 << 20);
        assert!(spec.auth.is_none());
    }

    #[test]
    fn bad_settings_name_their_key_and_show_an_example() {
        for (source, want) in [
            (
                "type = \"fluent\"\nsharedkey = \"x\"",
                "`sources.f.sharedkey`: unknown field",
            ),
            (
                "type = \"fluent\"\nself_hostname = \"me\"",
                "`sources.f.self_hostname` is set without `shared_key`",
            ),
            (
                "type = \"fluent\"\nshared_key = \"\"",
                "`sources.f.shared_key` is empty",
            ),
            (
                "type = \"fluent\"\nmax_entry_bytes = \"2GiB\"",
                "`sources.f.max_entry_bytes` is too large",
            ),
            (
                "type = \"fluent\"\naddress = \"no such host:x\"",
                "`sources.f.address` = \"no such host:x\" is not a `host:port` address",
            ),
            (
                "type = \"fluent\"\nmax_connections = 0",
                "`sources.f.max_connections` must be at least 1",
            ),
            (
                "type = \"fluent\"\njournal_segment_bytes = \"1KiB\"",
                "`sources.f.journal_segment_bytes` must be at least 4096",
            ),
            (
                "type = \"fluent\"\njournal_max_bytes = \"1MiB\"",
                "`sources.f.journal_segment_bytes` must not exceed `sources.f.journal_max_bytes`",
            ),
            (
                "type = \"fluent\"\njournal_fsync = \"sometimes\"",
                "`sources.f.journal_fsync`",
            ),
        ] {
            let err = error(source);
            assert!(err.contains(want), "{err}");
            assert!(
                err.contains("example") || err.contains("A correct example"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_shared_key_is_never_shown() {
        let plan = plan("type = \"fluent\"\nshared_key = \"hunter2-key\"").unwrap();
        assert!(!format!("{plan:?}").contains("hunter2"));
        let err = error("type = \"fluent\"\nshared_key = \"hunter2-key\"\nbogus = 1");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
