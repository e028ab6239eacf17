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
//!   file tail (with its checkpoints), tcp, stdin, and the acknowledged sources
//!   ([`source::fluent`], the Forward protocol; [`source::http`]), which answer their
//!   clients only through the `Keeper`; [`source::lines`] splits lines.
//! - [`event`]: the types between stages; decoding lines into events.
//! - `batch`: `chunks_timeout` (counting bytes too) and the re-injection of failed batches.
//! - [`sink`]: [`sink::webhook`] (the pipeline, its config, request, client and retry
//!   policy), and what sinks share: decode, acknowledge, dead letters, spill, replay.
//! - [`sign`]: the `X-Hub-Signature-256` signature.
//! - [`receiver`]: a signature-checking receiver, for `receive` and `demo`.
//! - `failpoint`: fault injection for tests (debug builds only).

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
