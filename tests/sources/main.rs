//! The sources: files (tailing, rotation against a model), TCP and stdin, bad input lines and
//! files, hostile TCP peers, real shippers chained in front of flaghook.

#[path = "../harness/mod.rs"]
mod harness;

mod bad_input;
mod bad_input_files;
mod fluent;
mod http_source;
mod many_files;
mod peers;
mod peers_fluent;
mod rotation;
mod sources;
mod tcp_connections;
