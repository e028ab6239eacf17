//! flaghook delivers GO Feature Flag evaluation events from log pipelines to webhooks,
//! in GO Feature Flag's webhook format, signed, without losing any.
//!
//! The data path is the architecture: source -> decode -> batch -> sign and send ->
//! acknowledge.
//!
//! # Layout
//! - [`config`]: the TOML model, validated once into ready-to-run values.
//! - [`topology`]: wires sources to sinks; owns the shutdown order.
//! - [`data_dir`]: its layout, and how its files are opened (no symlinks, `0600`).
//! - [`source`]: [`source::file`] (tail, with [`source::file::checkpoint`]),
//!   [`source::tcp`], [`source::stdin`]; [`source::lines`] splits bytes into lines;
//!   the [`source::Budget`] bounds memory, in events and bytes; `source::connections` holds
//!   the connection slots of the sources that accept connections (idle timeout, eviction).
//! - [`event`]: the types between stages; decoding lines into events.
//! - `batch`: batches by events, bytes and time over a sink's input (`chunks_timeout`),
//!   and `Reinject`, which puts failed batches back in front.
//! - [`sink::webhook`]: the sink as one pipeline (decode -> batch -> build and sign -> post
//!   -> decide -> acknowledge or re-inject), with its rooms `config`, `request`, `client`
//!   and `retry` (`decide` and the `RetryPolicy`); `sink::decode` its decode stage,
//!   `sink::ack` its acknowledgements, `sink::deadletter` the dead-letter file,
//!   `sink::spill` the spill file, loaded within the memory budget, and [`sink::replay`]
//!   `dead-letter replay`.
//! - [`lock`]: the advisory lock that gives one process a data_dir.
//! - [`sign`]: the `X-Hub-Signature-256` signature.
//! - [`receiver`]: a signature-checking receiver, for `receive` and `demo`.
//! - [`failpoint`]: fault injection for tests (debug builds only).

pub(crate) mod batch;
pub mod config;
pub(crate) mod data_dir;
pub mod event;
pub(crate) mod failpoint;
pub(crate) mod lock;
pub mod receiver;
pub mod sign;
pub mod sink;
pub mod source;
pub mod topology;
