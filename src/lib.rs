//! flaghook delivers GO Feature Flag evaluation events from log pipelines to webhooks,
//! in GO Feature Flag's webhook format, signed, without losing any.
//!
//! The data path is the architecture: source -> decode -> batch -> sign and send ->
//! acknowledge.
//!
//! # Layout
//! - [`config`]: the file's shape, `${VAR}`, leaf value types; imports no stage.
//! - [`topology`]: the [`topology::Plan`] (every stage's spec, the wiring checked) and
//!   `run`, which wires sources to sinks and owns the shutdown order.
//! - `data_dir`, `lock`: the paths under `data_dir`, how its files are opened, one
//!   process per `data_dir`.
//! - [`source`]: the contract (`Output`, the memory `Budget`), the
//!   file tail (with its checkpoints), tcp, stdin, nats (JetStream), and the acknowledged
//!   sources ([`source::fluent`], the Forward protocol; [`source::http`]), which answer
//!   their clients only through the `Keeper`; [`source::lines`] splits lines.
//! - `journal`: what tcp, stdin, fluent and http read, on the disk before the sinks see
//!   it (and before fluent and http acknowledge it); the file tail reads it back.
//! - [`event`]: the types between stages; decoding lines into events.
//! - `batch`: `chunks_timeout` (counting bytes too) and the re-injection of failed batches.
//! - [`sink`]: the sink pipeline and what sinks share (decode, delivery keys, retry
//!   policy, acknowledge, dead letters, replay); [`sink::webhook`] (its config, request,
//!   client, proxy route and statuses) and [`sink::nats`] (JetStream publishes).
//! - `tls`, `nats`: TLS settings; the NATS connection keys, shared by the nats sink and
//!   source.
//! - [`compression`]: request bodies' `Content-Encoding` (gzip, zstd), both ways.
//! - [`sign`]: the signatures, `X-Hub-Signature-256` and Standard Webhooks'.
//! - [`telemetry`]: counters per component, health, the Prometheus exposition, progress
//!   lines; [`api`] serves `/health` and `/metrics`.
//! - `reload`: runs the pipelines and applies a changed config (SIGHUP, `--watch-config`).
//! - [`receiver`]: a signature-checking receiver, for `receive` and `demo`.
//! - `failpoint`: fault injection for tests (debug builds only).

pub mod api;
pub(crate) mod batch;
pub mod compression;
pub mod config;
pub(crate) mod data_dir;
pub mod event;
pub(crate) mod failpoint;
pub(crate) mod journal;
pub(crate) mod lock;
pub(crate) mod nats;
pub mod receiver;
pub mod reload;
pub mod sign;
pub mod sink;
pub mod source;
pub mod telemetry;
pub(crate) mod tls;
pub mod topology;
