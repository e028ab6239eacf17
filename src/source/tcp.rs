//! `type = "tcp"`: newline-delimited JSON over TCP, as Vector's `socket` sink and Fluent
//! Bit's `tcp` output (`format json_lines`) send it.
//!
//! Back-pressure is TCP's own: a connection is read only when the sinks have room, so a
//! slow endpoint fills the kernel buffers and the shipper slows down.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{pump, Output};
use crate::config::socket_addr;
use crate::event::{envelope_fields, Block};

fn default_max_line_bytes() -> usize {
    102_400
}

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
        if self.max_line_bytes == 0 {
            bail!("`{key}.max_line_bytes` must be at least 1 (example: max_line_bytes = 102400)");
        }
        if self.max_connections == 0 {
            bail!("`{key}.max_connections` must be at least 1 (example: max_connections = 256)");
        }
        Ok(())
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
    let mut connections = JoinSet::new();
    let mut accepted_any = false;
    loop {
        if once && accepted_any && connections.is_empty() {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = accept(&listener, &slots) => {
                let Some((stream, peer, slot)) = accepted else { continue };
                accepted_any = true;
                let template = Block {
                    source_name: Arc::from(name),
                    origin: Arc::from(format!("tcp {peer}")),
                    file: None,
                    input: 0,
                    envelope: envelope_fields(config.field.as_deref()),
                    lines: Vec::new(),
                };
                let (output, shutdown, max) = (output.clone(), shutdown.clone(), config.max_line_bytes);
                connections.spawn(async move {
                    tracing::debug!(%peer, "connection opened");
                    if let Err(e) = pump(stream, max, template, &output, &shutdown).await {
                        tracing::warn!(%peer, error = %e, "connection failed");
                    }
                    drop(slot);
                });
            }
        }
    }
    // Connections stop reading at shutdown and hand on what they read.
    while connections.join_next().await.is_some() {}
}

async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
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
