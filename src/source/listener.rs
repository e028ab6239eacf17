//! The accept loop of the sources that listen for clients that answer back (`fluent`,
//! `http`): the same rules as `tcp`'s (see [`super::tcp`]). A connection is accepted, then
//! waits for one of `max_connections` slots (which may close the one idle longest); the
//! next is not accepted before it has one. At shutdown, connections already accepted by the
//! kernel (waiting in the listen backlog) are served too: their clients sent what they sent.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connections::{ConnectionSlots, Slot};
use super::tcp::{accept, backlog};
use crate::topology::propagate_panic;

/// Binds a listening source's socket (before anything runs, so that a taken port fails
/// start-up, naming the source).
pub(crate) async fn bind(name: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("source `{name}`: cannot listen on {addr}"))
}

/// Serves connections with `serve` (which spawns one task into the set) until shutdown;
/// with `once`, until the first connections have all closed. Returns once every
/// connection task has ended.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    slots: ConnectionSlots,
    max_connections: usize,
    once: bool,
    shutdown: &CancellationToken,
    mut serve: impl FnMut(&mut JoinSet<()>, TcpStream, SocketAddr, Slot),
) {
    let mut tasks = JoinSet::new();
    let mut accepted_any = false;
    let mut waiting_for_slot: Option<(TcpStream, SocketAddr)> = None;
    loop {
        if once && accepted_any && tasks.is_empty() && waiting_for_slot.is_none() {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => propagate_panic(done),
            accepted = accept(&listener), if waiting_for_slot.is_none() => {
                accepted_any |= accepted.is_some();
                waiting_for_slot = accepted;
            }
            slot = slots.acquire(), if waiting_for_slot.is_some() => {
                let (stream, peer) = waiting_for_slot.take().expect("checked by the guard");
                serve(&mut tasks, stream, peer, slot);
            }
        }
    }
    if shutdown.is_cancelled() {
        let waiting = waiting_for_slot.into_iter();
        for (stream, peer) in waiting.chain(backlog(listener, max_connections)) {
            serve(&mut tasks, stream, peer, slots.extra());
        }
    }
    while let Some(done) = tasks.join_next().await {
        propagate_panic(done);
    }
}
