//! What survives: SIGKILL at random moments, a long outage with a million events waiting,
//! restarts and checkpoints, the journal of TCP and stdin, the acknowledged sources (fluent,
//! http) under SIGKILL, memory bounds, data_dir's privacy; edge and central flaghooks
//! through NATS JetStream, with instances and the server killed.

#[path = "../harness/mod.rs"]
mod harness;

mod acked;
mod concurrency;
mod crash;
mod data_dir;
mod disk_full;
mod jetstream;
mod journal;
mod memory;
mod outage;
mod reload;
mod restart;
