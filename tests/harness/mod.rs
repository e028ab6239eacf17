//! The one harness of flaghook's integration tests. Every test talks to the real `flaghook`
//! binary (or its real topology, in-process) over real loopback sockets:
//!
//! - [`endpoint`]: [`Endpoint`], a real hyper HTTP/1 webhook endpoint on `127.0.0.1:0` that
//!   records every request and answers from a script of [`Reply`]s or a responder closure;
//!   it also tallies the events of 2xx-answered requests by numeric id, so tests with a
//!   million events stay cheap. [`ClosedPort`] refuses connections until it is opened.
//! - [`process`]: one way to run the binary: [`Proc`] (piped output, signals, a hard
//!   timeout so no test can hang) and the [`Output`] it leaves, with its summary line;
//!   resident memory of a running process.
//! - [`workspace`]: [`Workspace`], a temporary directory with the config, the inputs and
//!   `data_dir`, and readers of what flaghook leaves in `data_dir` (checkpoints, dead
//!   letters, journals, the spill files of older versions).
//! - [`events`]: event generators, the known-answer vector and HMAC signing.
//! - [`nats`]: [`NatsServer`], a real `nats-server -js` on a loopback port with its own
//!   store, killed (or killed and restarted) at will; publishing and reading its state.
//! - [`standard_webhooks`]: the Standard Webhooks reference libraries (PyPI and npm), to
//!   verify flaghook's requests with code nobody here wrote.
//!
//! The endpoint runs on its own thread and runtime, so tests stay plain synchronous
//! `#[test]`s and run in parallel with each other.
#![allow(dead_code, unused_imports)]

pub mod endpoint;
pub mod events;
pub mod nats;
pub mod process;
pub mod standard_webhooks;
pub mod workspace;

pub use endpoint::*;
pub use events::*;
pub use nats::*;
pub use process::*;
pub use standard_webhooks::*;
pub use workspace::*;

use std::time::Duration;

/// How long any child process may run before it is killed and the test fails.
pub const PROC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a test waits for something to happen (requests, a log line, a listener).
pub const WAIT: Duration = Duration::from_secs(15);
