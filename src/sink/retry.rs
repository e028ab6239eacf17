//! What happens after a request, and when the next one goes, for every sink: a sink's
//! transport maps what came back to a [`Decision`] (the webhook's statuses, see
//! `webhook::status`; the nats sink's PubAcks); [`RetryPolicy`] holds all the retry state
//! of a sink (failed attempts in a row and since when, the earliest next request, the
//! shutdown grace period) and the rules that use it; [`backoff`] gives the delays.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::delivery::Delivery;

/// What to do after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// 2xx: the events are delivered.
    Delivered,
    /// Send the same events again later (after `after`, when the endpoint said so, up to
    /// `retry_max_backoff`).
    Retry { after: Option<Duration> },
    /// 413: the batch is too large; send each half.
    Split,
    /// A 4xx that will not change: find the events the endpoint rejects (bisect) and
    /// dead-letter them; deliver the rest.
    Reject,
}

/// Exponential backoff with full jitter: attempt `n` waits a random time in
/// `[initial, min(max, initial * 2^n)]`. The floor at `initial` keeps a failing endpoint
/// from being hit in a tight loop.
pub(crate) fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let ceiling = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    if ceiling <= initial {
        return initial;
    }
    rand::thread_rng().gen_range(initial..=ceiling)
}

/// The retry state of one sink (or of one `dead-letter replay`), and its rules:
///
/// - After a retryable failure the batch waits `Retry-After` (at most
///   `retry_max_backoff`) or the [`backoff`], and at least the floor (the sink's
///   `flush_interval`): however soon it is taken again, a failing endpoint is not hammered.
/// - Requests that keep failing for `retry_max_duration` give up: the batch is
///   dead-lettered (the sink) or stays in the file (replay). A 2xx starts the count over.
/// - When shutdown is asked, every batch gets a prompt attempt within the grace period
///   (`shutdown_timeout`). Once one has failed at shutdown, batches are left in their
///   files or journals (their offsets did not move; the next start reads them again);
///   with several requests in flight, a batch that a later one overtook is retried
///   instead until the grace period ends (the sink says which may stay).
#[derive(Debug)]
pub(crate) struct RetryPolicy {
    initial: Duration,
    max: Duration,
    max_duration: Option<Duration>,
    /// The shortest wait after a failure.
    floor: Duration,
    /// Failed attempts in a row, for the backoff.
    attempt: u32,
    /// Since when requests fail, for `retry_max_duration`.
    failing_since: Option<Instant>,
    /// After a failure: no request before this.
    not_before: Option<Wait>,
    grace: Grace,
    /// A request failed after shutdown was asked.
    failed_at_shutdown: bool,
}

/// The wait after a failure.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Set while running: until this instant (the delay, and at least the floor). Dropped
    /// when shutdown is asked: every batch then gets a prompt attempt.
    Running(Instant),
    /// Set at shutdown: until this instant (the delay), cut at the end of the grace period.
    Shutdown(Instant),
}

/// Whether a batch goes out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    Send,
    /// The grace period is over, or the batch stays in its files: keep it for the next run.
    GiveUp,
}

/// What becomes of a batch whose request failed and may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Send it again, after this delay (`Retry-After` when the endpoint gave one, else the
    /// backoff; the wait is at least the floor).
    Retry(Duration),
    /// Requests have failed for longer than `retry_max_duration` (the value).
    OutOfTime(Duration),
    /// Shutdown: the batch was read from files, which keep it for the next run.
    StayInFiles,
}

impl RetryPolicy {
    /// A sink's: no batch re-sent sooner than `flush_interval` after it failed; `shutdown`
    /// starts the grace period of `shutdown_timeout`.
    pub(crate) fn for_sink(delivery: &Delivery, shutdown: CancellationToken) -> Self {
        let grace = Grace::new(shutdown, delivery.shutdown_timeout);
        Self::new(delivery, delivery.flush_interval, grace)
    }

    /// `dead-letter replay`'s: no retry sooner than `retry_initial_backoff`, even after
    /// `Retry-After: 0`; `stop` ends it at once.
    pub(crate) fn for_replay(delivery: &Delivery, stop: CancellationToken) -> Self {
        let grace = Grace::new(stop, Duration::ZERO);
        Self::new(delivery, delivery.retry_initial_backoff, grace)
    }

    fn new(delivery: &Delivery, floor: Duration, grace: Grace) -> Self {
        RetryPolicy {
            initial: delivery.retry_initial_backoff,
            max: delivery.retry_max_backoff,
            max_duration: delivery.retry_max_duration,
            floor,
            attempt: 0,
            failing_since: None,
            not_before: None,
            grace,
            failed_at_shutdown: false,
        }
    }

    /// Waits for the next request's turn (the wait after a failure; cut short when
    /// shutdown is asked), then says whether a batch (`from_files`: it may be left in its
    /// files, every event of it can be read again from there and nothing sent after it
    /// would be sent again for it) goes out or is given up.
    pub(crate) async fn turn(&mut self, from_files: bool) -> Turn {
        self.pause().await;
        self.verdict(from_files)
    }

    /// The first half of [`RetryPolicy::turn`]: the wait after a failure (one wait per
    /// failure), as a future that borrows nothing, so that a sink can go on handling the
    /// responses of other requests in flight while it runs.
    pub(crate) fn pause(&mut self) -> impl Future<Output = ()> + Send + 'static {
        let until = match self.not_before.take() {
            Some(Wait::Running(at)) if !self.grace.started() => Some(at),
            Some(Wait::Shutdown(at)) => Some(at),
            _ => None,
        };
        let sleep = until.map(|at| {
            let wait = at.saturating_duration_since(Instant::now());
            self.grace.sleep_owned(wait)
        });
        async move {
            if let Some(sleep) = sleep {
                sleep.await;
            }
        }
    }

    /// The second half of [`RetryPolicy::turn`], once the pause is over.
    pub(crate) fn verdict(&mut self, from_files: bool) -> Turn {
        if self.grace.expired() || (self.failed_at_shutdown && from_files) {
            Turn::GiveUp
        } else {
            Turn::Send
        }
    }

    /// A request got a 2xx: the next failure starts a new run of failures.
    pub(crate) fn succeeded(&mut self) {
        self.attempt = 0;
        self.failing_since = None;
    }

    /// A request failed and may be retried; `after` is its `Retry-After`, honoured up to
    /// `retry_max_backoff`: an endpoint cannot stop delivery with a huge one.
    pub(crate) fn failed(&mut self, after: Option<Duration>, from_files: bool) -> Next {
        if self.grace.started() {
            self.failed_at_shutdown = true;
            if from_files {
                return Next::StayInFiles;
            }
        }
        let now = Instant::now();
        let since = *self.failing_since.get_or_insert(now);
        if let Some(max) = self.max_duration {
            if now.saturating_duration_since(since) >= max {
                return Next::OutOfTime(max);
            }
        }
        let delay = match after {
            Some(after) => after.min(self.max),
            None => backoff(self.attempt, self.initial, self.max),
        };
        self.attempt = self.attempt.saturating_add(1);
        self.not_before = Some(if self.grace.started() {
            Wait::Shutdown(instant_after(now, delay))
        } else {
            Wait::Running(instant_after(now, delay.max(self.floor)))
        });
        Next::Retry(delay)
    }

    /// The grace period, for the other waits of the sink (dead-letter writes).
    pub(crate) fn grace(&mut self) -> &mut Grace {
        &mut self.grace
    }
}

/// `delay` after `now`. Config durations and delays are bounded (at most a year), so this
/// never saturates in practice; it only keeps a bad value from panicking the sink.
fn instant_after(now: Instant, delay: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(delay)
        .or_else(|| now.checked_add(YEAR))
        .unwrap_or(now)
}

/// The shutdown grace period: once shutdown is asked, `timeout` to deliver what is
/// pending.
#[derive(Debug)]
pub(crate) struct Grace {
    token: CancellationToken,
    timeout: Duration,
    deadline: Option<Instant>,
}

impl Grace {
    pub(crate) fn new(token: CancellationToken, timeout: Duration) -> Self {
        Grace {
            token,
            timeout,
            deadline: None,
        }
    }

    /// When delivery must stop, once shutdown was asked.
    fn deadline(&mut self) -> Option<Instant> {
        if self.deadline.is_none() && self.token.is_cancelled() {
            self.deadline = Some(instant_after(Instant::now(), self.timeout));
        }
        self.deadline
    }

    fn started(&mut self) -> bool {
        self.deadline().is_some()
    }

    pub(crate) fn expired(&mut self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Sleeps `delay`, cut short at the deadline; wakes at once when shutdown is asked
    /// (so that pending events get a prompt attempt).
    pub(crate) async fn sleep(&mut self, delay: Duration) {
        self.sleep_owned(delay).await;
    }

    /// [`Grace::sleep`] as a future that borrows nothing.
    fn sleep_owned(&mut self, delay: Duration) -> impl Future<Output = ()> + Send + 'static {
        let deadline = self.deadline();
        let token = self.token.clone();
        async move {
            // `tokio::time::sleep` takes any duration (one too long to represent is "never").
            let Some(deadline) = deadline else {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = token.cancelled() => {}
                }
                return;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(delay.min(left)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::webhook::status::parse_retry_after;

    #[test]
    fn backoff_grows_within_bounds() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..30 {
            let d = backoff(attempt, initial, max);
            assert!(d >= initial && d <= max, "{attempt}: {d:?}");
        }
        assert_eq!(backoff(0, initial, max), initial);
    }

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn delivery(max_backoff: Duration, max_duration: Option<Duration>) -> Delivery {
        Delivery {
            max_events: 1,
            flush_interval: ms(100),
            retry_initial_backoff: ms(10),
            retry_max_backoff: max_backoff,
            retry_max_duration: max_duration,
            shutdown_timeout: ms(1000),
            request_concurrency: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_give_up_after_retry_max_duration_and_start_over_after_a_success() {
        let mut policy =
            RetryPolicy::for_sink(&delivery(ms(10), Some(ms(30))), CancellationToken::new());
        assert_eq!(policy.failed(None, false), Next::Retry(ms(10)));
        // Retry-After is honoured up to retry_max_backoff.
        assert_eq!(policy.failed(Some(ms(7000)), false), Next::Retry(ms(10)));
        tokio::time::advance(ms(40)).await;
        assert_eq!(policy.failed(None, false), Next::OutOfTime(ms(30)));
        policy.succeeded();
        assert_eq!(policy.failed(None, false), Next::Retry(ms(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_capped_by_retry_max_backoff() {
        let mut policy = RetryPolicy::for_sink(&delivery(ms(500), None), CancellationToken::new());
        let huge = parse_retry_after("9223372036854775807");
        assert_eq!(policy.failed(huge, false), Next::Retry(ms(500)));
        let far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(policy.failed(far, false), Next::Retry(ms(500)));
        assert_eq!(policy.failed(Some(ms(200)), false), Next::Retry(ms(200)));
    }

    /// How long `turn` waits, and what it says.
    async fn timed_turn(policy: &mut RetryPolicy, from_files: bool) -> (Duration, Turn) {
        let start = Instant::now();
        let turn = policy.turn(from_files).await;
        (start.elapsed(), turn)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_waits_its_delay_and_never_less_than_the_floor() {
        let mut policy = RetryPolicy::for_sink(&delivery(ms(500), None), CancellationToken::new());
        assert_eq!(timed_turn(&mut policy, false).await, (ms(0), Turn::Send));
        policy.failed(Some(ms(300)), false);
        assert_eq!(timed_turn(&mut policy, false).await, (ms(300), Turn::Send));
        policy.failed(Some(ms(0)), false);
        assert_eq!(
            timed_turn(&mut policy, false).await,
            (ms(100), Turn::Send),
            "Retry-After: 0 waits the flush interval"
        );
        assert_eq!(
            timed_turn(&mut policy, false).await,
            (ms(0), Turn::Send),
            "one wait per failure"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cuts_the_wait_short_and_the_grace_period_ends_delivery() {
        let shutdown = CancellationToken::new();
        let mut policy = RetryPolicy::for_sink(&delivery(ms(500), None), shutdown.clone());
        policy.failed(Some(ms(500)), false);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ms(50)).await;
            stop.cancel();
        });
        assert_eq!(
            timed_turn(&mut policy, false).await,
            (ms(50), Turn::Send),
            "a prompt attempt when shutdown is asked"
        );
        assert_eq!(
            policy.failed(Some(ms(30)), false),
            Next::Retry(ms(30)),
            "TCP and stdin events are retried at shutdown"
        );
        assert_eq!(
            timed_turn(&mut policy, false).await,
            (ms(30), Turn::Send),
            "after their delay (not the floor): no hot loop"
        );
        policy.failed(Some(ms(500)), false);
        assert_eq!(timed_turn(&mut policy, false).await, (ms(500), Turn::Send));
        policy.failed(Some(ms(500)), false);
        assert_eq!(
            timed_turn(&mut policy, false).await,
            (ms(470), Turn::GiveUp),
            "the wait ends with the grace period (1s after shutdown)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_failure_at_shutdown_files_stay_in_files() {
        let shutdown = CancellationToken::new();
        let mut policy = RetryPolicy::for_sink(&delivery(ms(500), None), shutdown.clone());
        shutdown.cancel();
        assert_eq!(
            timed_turn(&mut policy, true).await,
            (ms(0), Turn::Send),
            "one attempt"
        );
        assert_eq!(policy.failed(None, true), Next::StayInFiles);
        assert_eq!(policy.turn(true).await, Turn::GiveUp);
        assert_eq!(policy.turn(false).await, Turn::Send);
    }

    #[tokio::test(start_paused = true)]
    async fn replay_stops_at_once() {
        let stop = CancellationToken::new();
        let mut policy = RetryPolicy::for_replay(&delivery(ms(500), None), stop.clone());
        assert_eq!(policy.failed(Some(ms(0)), false), Next::Retry(ms(0)));
        assert_eq!(
            timed_turn(&mut policy, false).await,
            (ms(10), Turn::Send),
            "no retry sooner than retry_initial_backoff"
        );
        policy.failed(Some(ms(400)), false);
        stop.cancel();
        assert_eq!(timed_turn(&mut policy, false).await, (ms(0), Turn::GiveUp));
    }
}
