//! Sinks take decoded, batched events and deliver them.

pub mod deadletter;
pub mod delivery;
pub mod replay;
pub mod spill;
pub mod webhook;

use std::sync::atomic::{AtomicU64, Ordering};

/// What a sink did, for the `--once` summary and the logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events the endpoint accepted (2xx).
    pub delivered: AtomicU64,
    /// Requests that got a 2xx.
    pub requests: AtomicU64,
    /// Requests that failed (status or transport) and were retried.
    pub failed_requests: AtomicU64,
    /// Bad input lines and events the endpoint rejected, all dead-lettered.
    pub rejected: AtomicU64,
    /// Events and bad lines neither delivered nor dead-lettered when the sink stopped
    /// (they stay in their files, or were spilled to `data_dir/spill`; a bad line from TCP
    /// or stdin whose dead letter could not be written is lost).
    pub not_delivered: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
