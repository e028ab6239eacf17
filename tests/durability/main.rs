//! What survives: SIGKILL at random moments, a long outage with a million events waiting,
//! restarts and checkpoints, the spill file at shutdown, memory bounds, data_dir's privacy;
//! edge and central flaghooks through NATS JetStream, with instances and the server killed.

#[path = "../harness/mod.rs"]
mod harness;

mod concurrency;
mod crash;
mod data_dir;
mod jetstream;
mod memory;
mod outage;
mod reload;
mod restart;
mod spill;
