//! The `/health` answer: 200 while every pipeline runs and no sink has failed every
//! request for longer than `unhealthy_after`; 503 while starting or stopping, or naming
//! the sinks that fail, with their last failure.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Phase, Telemetry};

/// The health of a run, as `/health` answers it.
#[derive(Debug, Serialize)]
pub struct Health {
    /// `ok`, `starting`, `stopping` or `failing`.
    pub status: &'static str,
    /// Each sink that has failed every request for longer than `unhealthy_after`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<FailingSink>,
}

/// A sink whose requests have all failed for a while.
#[derive(Debug, Serialize)]
pub struct FailingSink {
    pub sink: String,
    /// Unix time of the first failure in a row.
    pub failing_since: u64,
    pub failing_for_seconds: u64,
    /// The status and the start of the response body, or the error; never a secret or
    /// the URL's credentials.
    pub last_failure: String,
}

impl Health {
    /// The health now; a sink is failing once it has failed for `unhealthy_after`.
    pub fn of(telemetry: &Telemetry, unhealthy_after: Duration) -> Health {
        let status = match telemetry.phase() {
            Phase::Starting => "starting",
            Phase::Stopping => "stopping",
            Phase::Running => "ok",
        };
        let mut failing = Vec::new();
        for (sink, counters) in telemetry.sinks() {
            let state = counters.snapshot();
            let Some((since, at)) = state.failing_since else {
                continue;
            };
            if since.elapsed() < unhealthy_after {
                continue;
            }
            failing.push(FailingSink {
                sink,
                failing_since: at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
                failing_for_seconds: SystemTime::now()
                    .duration_since(at)
                    .unwrap_or_default()
                    .as_secs(),
                last_failure: state.last_failure.unwrap_or_default(),
            });
        }
        let status = if status == "ok" && !failing.is_empty() {
            "failing"
        } else {
            status
        };
        Health { status, failing }
    }

    /// Whether `/health` answers 200.
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}
