//! Progress: an `info` line per sink every `progress_interval`, and `run --once`'s live
//! line on a terminal.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Telemetry;

/// Logs, every `every`, a line per sink that delivered, holds events or fails:
/// `sink=webhook delivered=12000 (200/s) in_memory=350 ...`. Quiet when nothing happened.
pub(crate) async fn log_every(telemetry: Arc<Telemetry>, every: Duration, stop: CancellationToken) {
    let mut before: HashMap<String, u64> = HashMap::new();
    for (name, counters) in telemetry.sinks() {
        before.insert(name, counters.delivered_total());
    }
    let mut last = Instant::now();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let elapsed = last.elapsed().as_secs_f64().max(0.001);
        last = Instant::now();
        for (name, counters) in telemetry.sinks() {
            let total = counters.delivered_total();
            let delivered = total - before.insert(name.clone(), total).unwrap_or(0);
            let (events, bytes) = counters.in_memory();
            let state = counters.snapshot();
            if delivered == 0 && events == 0 && state.failing_since.is_none() {
                continue;
            }
            let mut line = format!(
                "sink={name} delivered={delivered} ({:.0}/s) in_memory={events} in_memory_bytes={bytes}",
                delivered as f64 / elapsed
            );
            if let Some(since) = state.oldest_unsettled {
                line.push_str(&format!(" oldest_undelivered={}", seconds(since.elapsed())));
            }
            if let Some((since, _)) = state.failing_since {
                line.push_str(&format!(" failing_for={}", seconds(since.elapsed())));
                if let Some(failure) = &state.last_failure {
                    line.push_str(&format!(" last_failure={failure:?}"));
                }
            }
            tracing::info!(target: "flaghook::progress", "{line}");
        }
    }
}

/// A duration in whole seconds, as humantime writes it (`1m 5s`).
fn seconds(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Set while the live line is on the terminal: each log line first clears it
/// (see [`clear_line`]).
static LIVE: AtomicBool = AtomicBool::new(false);

/// Before a log line goes to stderr: clears the live line, which the next tick redraws.
pub fn clear_line(stderr: &mut impl Write) {
    if LIVE.load(Ordering::Relaxed) {
        let _ = stderr.write_all(b"\r\x1b[K");
    }
}

/// Shows `read N, delivered N (R/s)` on stderr, redrawn four times a second, until `stop`;
/// then clears it. Only for a terminal: the caller checks.
pub(crate) async fn live_line(telemetry: Arc<Telemetry>, stop: CancellationToken) {
    LIVE.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let read: u64 = telemetry
            .sources()
            .iter()
            .map(|(_, c)| c.read_total())
            .sum();
        let delivered: u64 = telemetry
            .sinks()
            .iter()
            .map(|(_, c)| c.delivered_total())
            .sum();
        let rate = delivered as f64 / started.elapsed().as_secs_f64().max(0.001);
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r\x1b[Kread {read}, delivered {delivered} ({rate:.0}/s)"
        );
        let _ = stderr.flush();
    }
    LIVE.store(false, Ordering::Relaxed);
    let _ = std::io::stderr().write_all(b"\r\x1b[K");
}
