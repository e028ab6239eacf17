//! `type = "tcp"`: newline-delimited JSON over TCP, as Vector's `socket` sink and Fluent
//! Bit's `tcp` output (`format json_lines`) send it.
//!
//! Back-pressure is TCP's own: a connection is read only when the sinks have room, so a
//! slow endpoint fills the kernel buffers and the shipper slows down.
//!
//! What sits in those buffers was already acknowledged to the shipper by the kernel, so at
//! shutdown the source stops accepting and then reads it (see [`super::pump`]): from the
//! open connections, and from those the kernel had accepted that wait in the listen
//! backlog. Closing them unread would drop it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{pump, Output};
use crate::config::{check_count, check_max_line_bytes, socket_addr};
use crate::event::{envelope_fields, Block};

fn default_max_line_bytes() -> usize {
    102_400
}

/// The most `max_connections`: each is a file descriptor, and far more than one process
/// serves in practice.
const MAX_CONNECTIONS: usize = 65_536;

fn default_max_connections() -> usize {
    256
}

/// `[sources.NAME] type = "tcp"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// `host:port` to listen on, e.g. "127.0.0.1:9000".
    pub address: String,
    /// Lines longer than this are rejected as bad input. Default 102400.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Connections served at once; more wait to be accepted. Default 256.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The envelope field that holds the event, when a shipper wraps it.
    /// Default: `message` (Vector), then `log` (Fluent Bit).
    #[serde(default)]
    pub field: Option<String>,
}

impl TcpConfig {
    pub fn validate(&self, key: &str) -> Result<()> {
        socket_addr(&format!("{key}.address"), &self.address)?;
        check_max_line_bytes(key, self.max_line_bytes)?;
        // A semaphore holds the connection slots: it takes at most `u32::MAX` at once.
        check_count(
            &format!("{key}.max_connections"),
            self.max_connections,
            1..=MAX_CONNECTIONS,
            "max_connections = 256",
        )
    }
}

/// Binds the listening socket (done before anything runs, so a taken port fails start-up).
pub async fn bind(name: &str, config: &TcpConfig) -> Result<TcpListener> {
    let addr = socket_addr(&format!("sources.{name}.address"), &config.address)?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("source `{name}`: cannot listen on {addr}"))
}

/// Serves connections until shutdown. With `once`, stops after the first connections have
/// all closed.
pub async fn run(
    name: &str,
    config: &TcpConfig,
    listener: TcpListener,
    output: Output,
    shutdown: CancellationToken,
    once: bool,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut connections = Connections {
        tasks: JoinSet::new(),
        name: Arc::from(name),
        config,
        output: &output,
        shutdown: &shutdown,
    };
    let mut accepted_any = false;
    loop {
        if once && accepted_any && connections.tasks.is_empty() {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = connections.tasks.join_next(), if !connections.tasks.is_empty() => {
                propagate_panic(done);
                continue;
            }
            accepted = accept(&listener, &slots) => {
                let Some((stream, peer, slot)) = accepted else { continue };
                accepted_any = true;
                connections.serve(stream, peer, Some(slot));
            }
        }
    }
    if shutdown.is_cancelled() {
        for (stream, peer) in backlog(listener, config.max_connections) {
            connections.serve(stream, peer, None);
        }
    }
    // Connections read what their shippers already sent and hand it on.
    while let Some(done) = connections.tasks.join_next().await {
        propagate_panic(done);
    }
}

/// A connection task that panicked takes the source down with it, so that the topology
/// reports it instead of the run ending as if nothing happened.
fn propagate_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// The source's connection tasks and what each one needs.
struct Connections<'a> {
    tasks: JoinSet<()>,
    name: Arc<str>,
    config: &'a TcpConfig,
    output: &'a Output,
    shutdown: &'a CancellationToken,
}

impl Connections<'_> {
    /// Reads `stream` until it closes or shutdown; `slot` counts it in `max_connections`.
    fn serve(&mut self, stream: TcpStream, peer: SocketAddr, slot: Option<OwnedSemaphorePermit>) {
        let template = Block {
            source_name: self.name.clone(),
            origin: Arc::from(format!("tcp {peer}")),
            file: None,
            input: 0,
            envelope: envelope_fields(self.config.field.as_deref()),
            lines: Vec::new(),
        };
        let (output, shutdown) = (self.output.clone(), self.shutdown.clone());
        let max = self.config.max_line_bytes;
        self.tasks.spawn(async move {
            tracing::debug!(%peer, "connection opened");
            if let Err(e) = pump(stream, max, template, &output, &shutdown).await {
                tracing::warn!(%peer, error = %e, "connection failed");
            }
            drop(slot);
        });
    }
}

/// At shutdown: the connections the kernel accepted that wait in the listen backlog (at
/// most `max` of them), so that what their shippers sent is read too. Closes the listener:
/// connections from now on are refused.
fn backlog(listener: TcpListener, max: usize) -> Vec<(TcpStream, SocketAddr)> {
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

async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let slot = slots.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, peer)) => Some((stream, peer, slot)),
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            None
        }
    }
}
