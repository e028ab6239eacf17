//! `type = "tcp"`: newline-delimited JSON over TCP, as Vector's `socket` sink and Fluent
//! Bit's `tcp` output (`format json_lines`) send it.
//!
//! Back-pressure is TCP's own: a connection is read only when the sinks have room, so a
//! slow endpoint fills the kernel buffers and the shipper slows down.
//!
//! Connections hold `ConnectionSlots`: one silent for `idle_timeout` is closed, and a
//! connection that arrives while all `max_connections` are taken is served by closing the
//! one idle longest, so idle sockets cannot lock a shipper out. A connection the source is
//! not reading because of back-pressure is not idle.
//!
//! Every line read goes to the source's journal (see `crate::journal`) before the sinks
//! see it; a journal at `journal_max_bytes` stops the reading as a full sink did.
//!
//! What sits in those buffers was already acknowledged to the shipper by the kernel, so at
//! shutdown the source stops accepting and then reads it into the journal (see
//! [`super::pump()`]): from the open connections, from the one accepted that waited for a
//! slot, and from those the kernel had accepted that wait in the listen backlog. Closing
//! them unread would drop it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connections::{check_limits, CloseReason, ConnectionSlots, Slot};
use super::pump;
use crate::config::{check_max_line_bytes, socket_addr, ByteSize, HumanDuration};
use crate::journal::{self, Appender, Fsync, JournalSpec};
use crate::topology::propagate_panic;

fn default_max_connections() -> usize {
    256
}

fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

/// `[sources.NAME] type = "tcp"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// `host:port` to listen on, e.g. "127.0.0.1:9000".
    pub address: String,
    /// Lines longer than this are rejected as bad input. Default 102400.
    #[serde(default = "super::default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Connections served at once. Default 256. A new connection beyond them is served by
    /// closing the one idle longest; while all are active, it waits.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed. Default "5m".
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
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

/// A TCP source's settings, parsed: the address resolved.
#[derive(Debug, Clone)]
pub struct TcpSpec {
    pub address: SocketAddr,
    pub max_line_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub envelope: Arc<[String]>,
    pub journal: JournalSpec,
}

impl TcpConfig {
    /// Checks every key (at `key`, the source's) and resolves the address. Done at start-up,
    /// before the runtime runs anything: a name lookup blocks.
    pub fn build(self, key: &str) -> Result<TcpSpec> {
        self.validate(key)?;
        Ok(TcpSpec {
            address: socket_addr(&format!("{key}.address"), &self.address)?,
            max_line_bytes: self.max_line_bytes,
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout.0,
            envelope: super::envelope(key, self.field.as_deref())?,
            journal: JournalSpec::build(
                key,
                self.journal_segment_bytes,
                self.journal_max_bytes,
                self.journal_fsync,
            )?,
        })
    }

    fn validate(&self, key: &str) -> Result<()> {
        check_max_line_bytes(key, self.max_line_bytes)?;
        // A semaphore holds the connection slots: it takes at most `u32::MAX` at once.
        check_limits(
            key,
            self.max_connections,
            self.idle_timeout.0,
            "max_connections = 256",
        )
    }
}

/// Serves connections until shutdown, appending what they send to `journal`. With `once`,
/// stops after the first connections have all closed.
///
/// A connection is accepted, then waits for a slot (which may close an idle one); the next
/// is not accepted before it has one, so at most one accepted connection waits.
pub async fn run(
    config: &TcpSpec,
    listener: TcpListener,
    journal: Appender,
    shutdown: CancellationToken,
    once: bool,
) {
    let slots = ConnectionSlots::new(config.max_connections, config.idle_timeout);
    let mut connections = Connections {
        tasks: JoinSet::new(),
        config,
        journal: &journal,
        shutdown: &shutdown,
    };
    let mut accepted_any = false;
    let mut waiting_for_slot: Option<(TcpStream, SocketAddr)> = None;
    loop {
        if once && accepted_any && connections.tasks.is_empty() && waiting_for_slot.is_none() {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = connections.tasks.join_next(), if !connections.tasks.is_empty() => {
                propagate_panic(done);
            }
            accepted = accept(&listener), if waiting_for_slot.is_none() => {
                accepted_any |= accepted.is_some();
                waiting_for_slot = accepted;
            }
            slot = slots.acquire(), if waiting_for_slot.is_some() => {
                let (stream, peer) = waiting_for_slot.take().expect("checked by the guard");
                connections.serve(stream, peer, slot);
            }
        }
    }
    if shutdown.is_cancelled() {
        let waiting = waiting_for_slot.into_iter();
        for (stream, peer) in waiting.chain(backlog(listener, config.max_connections)) {
            connections.serve(stream, peer, slots.extra());
        }
    }
    // Connections read what their shippers already sent and hand it on.
    while let Some(done) = connections.tasks.join_next().await {
        propagate_panic(done);
    }
}

/// The source's connection tasks and what each one needs.
struct Connections<'a> {
    tasks: JoinSet<()>,
    config: &'a TcpSpec,
    journal: &'a Appender,
    shutdown: &'a CancellationToken,
}

impl Connections<'_> {
    /// Reads `stream` until it closes, is closed for idleness, or shutdown; `slot` is its
    /// place among the source's connections.
    fn serve(&mut self, stream: TcpStream, peer: SocketAddr, slot: Slot) {
        let (journal, shutdown) = (self.journal.clone(), self.shutdown.clone());
        let max = self.config.max_line_bytes;
        let limits = Limits::of(self.config);
        self.tasks.spawn(async move {
            tracing::debug!(%peer, "connection opened");
            let mut stream = slot.track(stream);
            let origin = format!("tcp {peer}");
            if let Err(e) = pump(&mut stream, max, &origin, &journal, &shutdown).await {
                tracing::warn!(%peer, error = %e, "connection failed");
            }
            limits.log_close(stream.closed(), peer);
        });
    }
}

/// What a connection task needs of the config to say why it closed a connection.
#[derive(Debug, Clone, Copy)]
struct Limits {
    idle_timeout: Duration,
    max_connections: usize,
}

impl Limits {
    fn of(config: &TcpSpec) -> Self {
        Limits {
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections,
        }
    }

    fn log_close(self, reason: Option<CloseReason>, peer: SocketAddr) {
        match reason {
            Some(CloseReason::IdleTimeout) => tracing::info!(
                %peer,
                "closed the connection: nothing received for {} (idle_timeout)",
                humantime::format_duration(self.idle_timeout)
            ),
            Some(CloseReason::Evicted) => tracing::info!(
                %peer,
                "closed the connection, idle the longest, to serve a new one: all {} (max_connections) were taken",
                self.max_connections
            ),
            None => tracing::debug!(%peer, "connection closed"),
        }
    }
}

/// At shutdown: the connections the kernel accepted that wait in the listen backlog (at
/// most `max` of them), so that what their shippers sent is read too. Closes the listener:
/// connections from now on are refused.
pub(super) fn backlog(listener: TcpListener, max: usize) -> Vec<(TcpStream, SocketAddr)> {
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(error = %e, "cannot take the connections waiting to be accepted");
            return Vec::new();
        }
    };
    let mut waiting = Vec::new();
    while waiting.len() < max {
        // The std listener is non-blocking (`into_std`): an empty backlog is `WouldBlock`.
        let accepted = listener.accept().and_then(|(stream, peer)| {
            stream.set_nonblocking(true)?;
            Ok((TcpStream::from_std(stream)?, peer))
        });
        match accepted {
            Ok(connection) => waiting.push(connection),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed at shutdown");
                break;
            }
        }
    }
    waiting
}

pub(super) async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(accepted) => Some(accepted),
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}
