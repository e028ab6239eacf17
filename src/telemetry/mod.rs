//! What a running flaghook tells about itself: counters per component, its health, the
//! Prometheus exposition (`/metrics`), and progress lines.
//!
//! The stages count into `SinkCounters` and `SourceCounters`: plain atomics, added to
//! once per block or request, never per line. They live in the [`Telemetry`] by component
//! name, so a component restarted by a reload counts on. The Prometheus series are set from
//! them when `/metrics` is read ([`Telemetry::render`]); only the request duration histogram
//! is recorded as requests end.
//!
//! # Layout
//! - this module: [`Telemetry`] and the counters.
//! - `names`: every metric's name, kind and help text.
//! - `health`: the `/health` answer.
//! - `progress`: the `progress_interval` lines, and `run --once`'s live line on a terminal.

mod health;
pub(crate) mod names;
pub mod progress;

pub use health::Health;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::journal::Segments;
use crate::source::file::checkpoint::Checkpointer;
use crate::source::Budget;
use names::{Kind, Metric};

/// Why a line or event was rejected (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectClass {
    /// Not an event: not UTF-8, not JSON, not an object, missing fields.
    Invalid,
    /// Longer than `max_line_bytes`.
    Oversized,
    /// A matched path that cannot be read (a directory, a FIFO, permissions).
    Unreadable,
    /// The endpoint refused the event (a permanent 4xx).
    Endpoint,
    /// Requests kept failing for `retry_max_duration`.
    Expired,
}

impl RejectClass {
    const ALL: [RejectClass; 5] = [
        RejectClass::Invalid,
        RejectClass::Oversized,
        RejectClass::Unreadable,
        RejectClass::Endpoint,
        RejectClass::Expired,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RejectClass::Invalid => "invalid",
            RejectClass::Oversized => "oversized",
            RejectClass::Unreadable => "unreadable",
            RejectClass::Endpoint => "endpoint",
            RejectClass::Expired => "expired",
        }
    }
}

/// Why a line read holds no event to send (the `reason` label of the skipped counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SkipClass {
    /// Empty, or only white space.
    Blank,
    /// An event of a type the sink's `event_types` leaves out.
    Filtered,
}

impl SkipClass {
    const ALL: [SkipClass; 2] = [SkipClass::Blank, SkipClass::Filtered];

    fn as_str(self) -> &'static str {
        match self {
            SkipClass::Blank => "blank",
            SkipClass::Filtered => "filtered",
        }
    }
}

/// The `status` label of a request: its response's class, or `error` without one.
const STATUS_CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "error"];

fn status_class(status: Option<u16>) -> usize {
    match status {
        Some(200..=299) => 0,
        Some(300..=399) => 1,
        Some(400..=499) => 2,
        Some(500..=599) => 3,
        _ => 4,
    }
}

/// What one sink did, over every run of it in this process.
#[derive(Debug)]
pub(crate) struct SinkCounters {
    delivered: AtomicU64,
    rejected: [AtomicU64; 5],
    skipped: [AtomicU64; 2],
    dead_lettered: AtomicU64,
    not_delivered: AtomicU64,
    requests: [AtomicU64; 5],
    retries: AtomicU64,
    duration: metrics::Histogram,
    /// The budget of the sink's running instance, for what it holds in memory.
    budget: Mutex<Option<Arc<Budget>>>,
    state: Mutex<SinkState>,
}

/// A sink's delivery state, for `/health` and the progress lines.
#[derive(Debug, Default, Clone)]
pub(crate) struct SinkState {
    /// Since when every request failed (none since delivered).
    pub(crate) failing_since: Option<(Instant, SystemTime)>,
    /// The last failure: the status and the start of the body, or the error.
    pub(crate) last_failure: Option<String>,
    pub(crate) last_delivery: Option<SystemTime>,
    /// Since when the oldest batch taken for sending is not settled.
    pub(crate) oldest_unsettled: Option<Instant>,
}

impl SinkCounters {
    fn new(duration: metrics::Histogram) -> Self {
        SinkCounters {
            delivered: AtomicU64::new(0),
            rejected: Default::default(),
            skipped: Default::default(),
            dead_lettered: AtomicU64::new(0),
            not_delivered: AtomicU64::new(0),
            requests: Default::default(),
            retries: AtomicU64::new(0),
            duration,
            budget: Mutex::new(None),
            state: Mutex::default(),
        }
    }

    /// One request ended after `elapsed`: `status` is its response's, `None` without one.
    pub(crate) fn request(&self, status: Option<u16>, elapsed: Duration) {
        add(&self.requests[status_class(status)], 1);
        self.duration.record(elapsed.as_secs_f64());
    }

    /// `events` were delivered: the endpoint answers again.
    pub(crate) fn delivered(&self, events: u64) {
        add(&self.delivered, events);
        let mut state = self.state();
        state.failing_since = None;
        state.last_delivery = Some(SystemTime::now());
    }

    /// A request failed (none of its events delivered).
    pub(crate) fn failed(&self, detail: &str) {
        let mut state = self.state();
        state
            .failing_since
            .get_or_insert_with(|| (Instant::now(), SystemTime::now()));
        state.last_failure = Some(short(detail));
    }

    /// A failed batch was put back to be sent again.
    pub(crate) fn retried(&self) {
        add(&self.retries, 1);
    }

    pub(crate) fn rejected(&self, class: RejectClass, n: u64) {
        add(&self.rejected[class as usize], n);
    }

    pub(crate) fn dead_lettered(&self, n: u64) {
        add(&self.dead_lettered, n);
    }

    pub(crate) fn skipped(&self, class: SkipClass, n: u64) {
        add(&self.skipped[class as usize], n);
    }

    pub(crate) fn not_delivered(&self, n: u64) {
        add(&self.not_delivered, n);
    }

    /// When the oldest batch taken and not settled yet (delivered, dead-lettered or left
    /// for the next run) was first sent; `None` when there is none.
    pub(crate) fn oldest_unsettled(&self, since: Option<Instant>) {
        self.state().oldest_unsettled = since;
    }

    pub(crate) fn delivered_total(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub(crate) fn snapshot(&self) -> SinkState {
        self.state().clone()
    }

    /// Events and bytes held in memory now.
    pub(crate) fn in_memory(&self) -> (usize, usize) {
        match &*self.budget.lock().expect("telemetry lock") {
            Some(budget) => {
                let held = budget.held();
                (held.events, held.bytes)
            }
            None => (0, 0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().expect("telemetry lock")
    }
}

/// What one source did, over every run of it in this process.
#[derive(Debug, Default)]
pub(crate) struct SourceCounters {
    read: AtomicU64,
    /// The source's positions (in its files or journal segments), for its lag.
    checkpointer: Mutex<Option<Arc<Checkpointer>>>,
    /// A TCP or stdin source's journal.
    journal: Mutex<Option<Segments>>,
    /// Lines journaled by the journals this source had before (a reload restarts it with
    /// a new one), so that the counter counts on.
    journaled_before: AtomicU64,
}

impl SourceCounters {
    pub(crate) fn detached() -> Arc<Self> {
        Arc::default()
    }

    /// `lines` more were read.
    pub(crate) fn read(&self, lines: usize) {
        add(&self.read, lines as u64);
    }

    pub(crate) fn read_total(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// The source's journal from now on (none: it stopped).
    fn set_journal(&self, journal: Option<&Segments>) {
        let mut current = self.journal.lock().expect("telemetry lock");
        if let Some(old) = current.take() {
            add(&self.journaled_before, old.counts().0);
        }
        *current = journal.cloned();
    }

    /// Lines journaled, and bytes of the journal on the disk: for a TCP or stdin source
    /// (`None` for others, and once it stopped).
    fn journal_counts(&self) -> Option<(u64, u64)> {
        let journal = self.journal.lock().expect("telemetry lock");
        let before = self.journaled_before.load(Ordering::Relaxed);
        let (now, on_disk) = journal.as_ref()?.counts();
        Some((before + now, on_disk))
    }

    /// Bytes of its files (or journal segments) not yet delivered: each tracked file's
    /// size past its saved offset. A file that cannot be looked at (deleted while read) counts nothing.
    /// Blocking: file-system calls.
    fn lag_bytes(&self) -> Option<u64> {
        let checkpointer = self.checkpointer.lock().expect("telemetry lock").clone()?;
        let lag = checkpointer
            .positions()
            .into_iter()
            .filter_map(|(path, offset): (PathBuf, u64)| {
                let size = std::fs::metadata(&path).ok()?.len();
                Some(size.saturating_sub(offset))
            })
            .sum();
        Some(lag)
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A failure's detail, cut for `/health` and the progress lines.
fn short(detail: &str) -> String {
    const MAX: usize = 200;
    match detail.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &detail[..at]),
        None => detail.to_owned(),
    }
}

/// Where a run is, for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Starting,
    Running,
    Stopping,
}

/// The counters of the components of one kind, by name: those in the config, and those a
/// reload removed. A removed component's counters are kept, so that one added back by a
/// later reload counts on: a Prometheus counter never goes down, and the progress lines
/// count what was delivered since the last one.
struct Components<T> {
    active: BTreeMap<String, Arc<T>>,
    removed: BTreeMap<String, Arc<T>>,
}

impl<T> Default for Components<T> {
    fn default() -> Self {
        Components {
            active: BTreeMap::new(),
            removed: BTreeMap::new(),
        }
    }
}

impl<T> Components<T> {
    /// The counters of `name`, active from now on: its own if it ran before, else new ones.
    fn activate(&mut self, name: &str, new: impl FnOnce() -> T) -> Arc<T> {
        let counters = match self.removed.remove(name) {
            Some(counters) => counters,
            None => self
                .active
                .get(name)
                .cloned()
                .unwrap_or_else(|| Arc::new(new())),
        };
        self.active.insert(name.to_owned(), counters.clone());
        counters
    }

    /// `name` left the config: its counters are kept aside.
    fn remove(&mut self, name: &str) -> Option<Arc<T>> {
        let counters = self.active.remove(name)?;
        self.removed.insert(name.to_owned(), counters.clone());
        Some(counters)
    }

    fn active(&self) -> Vec<(String, Arc<T>)> {
        (self.active.iter())
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect()
    }
}

/// The counters of every component, by name, and the Prometheus registry they are shown in.
pub struct Telemetry {
    recorder: PrometheusRecorder,
    sinks: Mutex<Components<SinkCounters>>,
    sources: Mutex<Components<SourceCounters>>,
    /// Pipelines being started; the run is `Starting` while any is.
    starting: AtomicUsize,
    stopping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(names::SINK_REQUEST_DURATION.name.to_owned()),
                names::DURATION_BUCKETS,
            )
            .expect("the buckets are not empty")
            .build_recorder();
        for metric in names::ALL {
            let (name, help) = (metric.name.into(), metric.help.into());
            match metric.kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        let version = [Label::new("version", env!("CARGO_PKG_VERSION"))];
        gauge(&recorder, &names::BUILD_INFO, version.to_vec()).set(1.0);
        Telemetry {
            recorder,
            sinks: Mutex::default(),
            sources: Mutex::default(),
            starting: AtomicUsize::new(0),
            stopping: Default::default(),
        }
    }

    /// The counters of sink `name` (the same for each run of it); `budget` is its running
    /// instance's.
    pub(crate) fn sink(&self, name: &str, budget: &Arc<Budget>) -> Arc<SinkCounters> {
        let mut sinks = self.sinks.lock().expect("telemetry lock");
        let counters = sinks.activate(name, || {
            let labels = vec![Label::new("sink", name.to_owned())];
            let key = Key::from_parts(names::SINK_REQUEST_DURATION.name, labels);
            SinkCounters::new(self.recorder.register_histogram(&key, &metadata()))
        });
        *counters.budget.lock().expect("telemetry lock") = Some(budget.clone());
        counters
    }

    /// The counters of source `name`; `checkpointer` is a file source's.
    pub(crate) fn source(
        &self,
        name: &str,
        checkpointer: Option<&Arc<Checkpointer>>,
        journal: Option<&Segments>,
    ) -> Arc<SourceCounters> {
        let mut sources = self.sources.lock().expect("telemetry lock");
        let counters = sources.activate(name, SourceCounters::default);
        *counters.checkpointer.lock().expect("telemetry lock") = checkpointer.cloned();
        counters.set_journal(journal);
        counters
    }

    /// A sink or source left the config (a reload): it no longer counts in `/health` or
    /// the progress lines, what it held is gone, and its series keep their last values
    /// (its counters count on if a later reload adds it back).
    pub(crate) fn remove(&self, sinks: &[String], sources: &[String]) {
        for name in sinks {
            let removed = self.sinks.lock().expect("telemetry lock").remove(name);
            if let Some(c) = removed {
                *c.budget.lock().expect("telemetry lock") = None;
                let mut state = c.state();
                (state.failing_since, state.oldest_unsettled) = (None, None);
                drop(state);
                self.sync_sink(name, &c);
            }
        }
        for name in sources {
            let removed = self.sources.lock().expect("telemetry lock").remove(name);
            if let Some(c) = removed {
                let file_source = c.checkpointer.lock().expect("telemetry lock").take();
                self.sync_source(name, &c);
                c.set_journal(None);
                let labels = || vec![Label::new("source", name.clone())];
                if file_source.is_some() {
                    gauge(&self.recorder, &names::SOURCE_LAG_BYTES, labels()).set(0.0);
                }
                gauge(&self.recorder, &names::SOURCE_JOURNAL_BYTES, labels()).set(0.0);
            }
        }
    }

    /// Marks a pipeline as starting until the guard is dropped.
    pub(crate) fn starting(self: &Arc<Self>) -> Starting {
        self.starting.fetch_add(1, Ordering::SeqCst);
        Starting(self.clone())
    }

    /// Shutdown was asked.
    pub fn stopping(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            service_manager(sd_notify::NotifyState::Stopping);
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        if self.stopping.load(Ordering::SeqCst) {
            Phase::Stopping
        } else if self.starting.load(Ordering::SeqCst) > 0 {
            Phase::Starting
        } else {
            Phase::Running
        }
    }

    /// The sinks of the running config.
    pub(crate) fn sinks(&self) -> Vec<(String, Arc<SinkCounters>)> {
        self.sinks.lock().expect("telemetry lock").active()
    }

    /// The sources of the running config.
    pub(crate) fn sources(&self) -> Vec<(String, Arc<SourceCounters>)> {
        self.sources.lock().expect("telemetry lock").active()
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric, as of now.
    /// Blocking: a file source's lag looks at its files.
    pub fn render(&self) -> String {
        for (name, counters) in self.sinks() {
            self.sync_sink(&name, &counters);
        }
        for (name, counters) in self.sources() {
            self.sync_source(&name, &counters);
        }
        self.recorder.handle().render()
    }

    /// Sets a source's series from its counters. Blocking: a file source's lag looks at
    /// its files.
    fn sync_source(&self, name: &str, c: &SourceCounters) {
        let labels = || vec![Label::new("source", name.to_owned())];
        counter(&self.recorder, &names::SOURCE_EVENTS_READ, labels()).absolute(c.read_total());
        if let Some(lag) = c.lag_bytes() {
            gauge(&self.recorder, &names::SOURCE_LAG_BYTES, labels()).set(lag as f64);
        }
        if let Some((journaled, on_disk)) = c.journal_counts() {
            counter(&self.recorder, &names::SOURCE_EVENTS_JOURNALED, labels()).absolute(journaled);
            gauge(&self.recorder, &names::SOURCE_JOURNAL_BYTES, labels()).set(on_disk as f64);
        }
    }

    /// Sets a sink's series from its counters.
    fn sync_sink(&self, name: &str, c: &SinkCounters) {
        let r = &self.recorder;
        let labels = || vec![Label::new("sink", name.to_owned())];
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(r, &names::SINK_EVENTS_DELIVERED, labels()).absolute(load(&c.delivered));
        counter(r, &names::SINK_EVENTS_DEAD_LETTERED, labels()).absolute(load(&c.dead_lettered));
        counter(r, &names::SINK_EVENTS_NOT_DELIVERED, labels()).absolute(load(&c.not_delivered));
        counter(r, &names::SINK_RETRIES, labels()).absolute(load(&c.retries));
        for class in RejectClass::ALL {
            let mut l = labels();
            l.push(Label::new("reason", class.as_str()));
            counter(r, &names::SINK_EVENTS_REJECTED, l).absolute(load(&c.rejected[class as usize]));
        }
        for class in SkipClass::ALL {
            let mut l = labels();
            l.push(Label::new("reason", class.as_str()));
            counter(r, &names::SINK_EVENTS_SKIPPED, l).absolute(load(&c.skipped[class as usize]));
        }
        for (i, class) in STATUS_CLASSES.iter().enumerate() {
            let mut l = labels();
            l.push(Label::new("status", *class));
            counter(r, &names::SINK_REQUESTS, l).absolute(load(&c.requests[i]));
        }
        let (events, bytes) = c.in_memory();
        gauge(r, &names::SINK_EVENTS_IN_MEMORY, labels()).set(events as f64);
        gauge(r, &names::SINK_BYTES_IN_MEMORY, labels()).set(bytes as f64);
        let last = c.snapshot().last_delivery.map_or(0.0, |t| {
            t.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64()
        });
        gauge(r, &names::SINK_LAST_DELIVERY, labels()).set(last);
    }
}

/// While held, a pipeline is starting (see [`Telemetry::starting`]).
pub(crate) struct Starting(Arc<Telemetry>);

impl Drop for Starting {
    /// The last pipeline started: a service manager that waits for it (systemd's
    /// `Type=notify`) is told the service is ready, again after a reload restarted some.
    fn drop(&mut self) {
        let left = self.0.starting.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 && !self.0.stopping.load(Ordering::SeqCst) {
            service_manager(sd_notify::NotifyState::Ready);
        }
    }
}

/// Tells systemd (through `NOTIFY_SOCKET`, when it set one) the service's `state`.
fn service_manager(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!("could not tell the service manager the service's state: {e}");
    }
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

fn counter(r: &PrometheusRecorder, metric: &Metric, labels: Vec<Label>) -> metrics::Counter {
    debug_assert_eq!(metric.kind, Kind::Counter);
    r.register_counter(&Key::from_parts(metric.name, labels), &metadata())
}

fn gauge(r: &PrometheusRecorder, metric: &Metric, labels: Vec<Label>) -> metrics::Gauge {
    debug_assert_eq!(metric.kind, Kind::Gauge);
    r.register_gauge(&Key::from_parts(metric.name, labels), &metadata())
}
