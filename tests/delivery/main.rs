//! The webhook sink, end to end through the real binary: the request on the wire, batching,
//! retries and their policy, hostile endpoints, TLS, poison events and dead letters, replay,
//! several sinks on shared sources.

#[path = "../harness/mod.rs"]
mod harness;

mod api;
mod batching;
mod dead_letter_disk;
mod hostile_endpoint;
mod multi_sink;
mod poison;
mod proxy;
mod replay;
mod retry_policy;
mod signatures;
mod tls;
mod wire;
mod wiring;
