//! What a user types and reads: the command line (`run`, `validate`, `demo`, `sign`/`verify`,
//! `receive`), config errors, secrets, the example pipelines; and the harness's own checks.
//! See `tests/harness/mod.rs` for the harness every test binary shares.

#[path = "../harness/mod.rs"]
mod harness;

mod cli;
mod config_errors;
mod harness_selftest;
mod operability;
mod pipelines;
mod receiver;
mod schemes;
mod secrets;
