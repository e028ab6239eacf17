//! Wires sources -> decode/batch -> sinks, and owns the shutdown order.
//!
//! A [`Plan`] is the config made ready to run: each stage's table turned into its spec,
//! and the checks between stages (inputs exist, each named once, every source read).
//!
//! Order at the end: sources stop (input ends, or shutdown; a journal's writer fsyncs what
//! it holds) -> each sink flushes its last partial batch and drains its retries (within its
//! grace period at shutdown) -> the checkpoints are written last, so they hold every
//! acknowledgement -> the journal segments every sink passed are deleted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiConfig, ApiSpec};
use crate::config::{self, typed, EnvValues, Loaded};
use crate::data_dir::DataDir;
use crate::event::Block;
use crate::journal::{self, Journal, Segments};
use crate::lock::{lock_data_dir, DataDirLock};
use crate::sink::deadletter::DeadLetters;
use crate::sink::nats::Publisher;
use crate::sink::pipeline::{self, SinkParts, Transport};
use crate::sink::webhook::Poster;
use crate::sink::SinkSpec;
use crate::sink::Stats;
use crate::source::file::checkpoint::{CheckpointWriter, Checkpointer};
use crate::source::file::FileSource;
use crate::source::nats::Messages;
use crate::source::{self, Budget, Output, SinkInput, SourceAck, SourceSpec, Subscriptions};
use crate::telemetry::Telemetry;

/// A config ready to run: every stage's spec, checked against the others.
pub struct Plan {
    pub path: PathBuf,
    pub data_dir: PathBuf,
    pub sources: BTreeMap<String, SourceSpec>,
    pub sinks: BTreeMap<String, SinkSpec>,
    /// `[api]`, when set.
    pub api: Option<ApiSpec>,
    /// How often each sink logs its progress; `None`: never.
    pub progress_interval: Option<Duration>,
    /// What came from the environment, to hide from later errors.
    pub env: EnvValues,
    /// Each stage's table as written (`${VAR}` expanded), by its key (`sinks.NAME`): a
    /// reload compares them to find what changed.
    pub(crate) written: BTreeMap<String, toml::Table>,
}

/// The tables as written hold secrets (`${VAR}` expanded): only their keys show.
impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("path", &self.path)
            .field("data_dir", &self.data_dir)
            .field("sources", &self.sources)
            .field("sinks", &self.sinks)
            .field("api", &self.api)
            .field("progress_interval", &self.progress_interval)
            .field("env", &self.env)
            .field("written", &self.written.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Plan {
    /// Reads the config at `path` and builds its plan.
    pub fn load(path: &Path) -> Result<Plan> {
        Plan::build(config::load(path)?)
    }

    /// Turns each table into its stage's spec, then checks the wiring; an error names
    /// the key and shows an example.
    pub fn build(loaded: Loaded) -> Result<Plan> {
        let written = loaded
            .sources
            .iter()
            .map(|(name, table)| (format!("sources.{name}"), table.clone()))
            .chain(
                (loaded.sinks.iter()).map(|(name, table)| (format!("sinks.{name}"), table.clone())),
            )
            .collect();
        let checked = Plan::checked(&loaded);
        let (sources, sinks) = checked.map_err(|e| loaded.explain(e))?;
        let api = loaded
            .api
            .clone()
            .map(|table| typed::<ApiConfig>("api", table)?.build("api"));
        let api = api.transpose().map_err(|e| loaded.explain(e))?;
        Ok(Plan {
            path: loaded.path,
            data_dir: loaded.data_dir,
            sources,
            sinks,
            api,
            progress_interval: loaded.progress_interval,
            env: loaded.env,
            written,
        })
    }

    #[allow(clippy::type_complexity)]
    fn checked(
        loaded: &Loaded,
    ) -> Result<(BTreeMap<String, SourceSpec>, BTreeMap<String, SinkSpec>)> {
        let base = loaded.base();
        let mut sources = BTreeMap::new();
        for (name, table) in &loaded.sources {
            let key = format!("sources.{name}");
            sources.insert(
                name.clone(),
                SourceSpec::from_table(&key, table.clone(), &base)?,
            );
        }
        let mut sinks = BTreeMap::new();
        for (name, table) in &loaded.sinks {
            let key = format!("sinks.{name}");
            let sink = SinkSpec::from_table(&key, table.clone(), &base)?;
            for (i, input) in sink.inputs().iter().enumerate() {
                if sink.inputs()[..i].contains(input) {
                    bail!(
                        "`{key}.inputs` names `{input}` twice: each source is read once per sink (example: inputs = [\"{input}\"])"
                    );
                }
                if !sources.contains_key(input) {
                    bail!(
                        "`{key}.inputs` names `{input}`, which is not a declared source (declared: {})",
                        sources.keys().cloned().collect::<Vec<_>>().join(", ")
                    );
                }
            }
            sinks.insert(name.clone(), sink);
        }
        for name in sources.keys() {
            if !sinks.values().any(|s| s.inputs().contains(name)) {
                bail!("source `sources.{name}` is read by no sink: add \"{name}\" to a sink's `inputs`");
            }
        }
        let stdin = sources
            .values()
            .filter(|s| matches!(s, SourceSpec::Stdin(_)));
        if stdin.count() > 1 {
            bail!("more than one `type = \"stdin\"` source: stdin can be read only once");
        }
        Ok((sources, sinks))
    }

    /// A short description of the topology, for `flaghook validate`, with no value from the
    /// environment in it.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "config {} is valid\ndata_dir: {}\n",
            self.path.display(),
            self.data_dir.display()
        );
        let data_dir = DataDir::at(&self.data_dir);
        for (name, source) in &self.sources {
            out.push_str(&format!("source {name}: {}\n", source.describe()));
            if let SourceSpec::File(f) = source {
                out.push_str(&f.start_positions(&data_dir.checkpoint(name)));
            }
        }
        for (name, sink) in &self.sinks {
            out.push_str(&format!("sink {name}: {}\n", sink.describe()));
        }
        if let Some(api) = &self.api {
            let after = humantime::format_duration(api.unhealthy_after);
            out.push_str(&format!(
                "api: GET /health and /metrics on {} (unhealthy after {after} of failures)\n",
                api.address
            ));
        }
        match self.progress_interval {
            Some(every) => out.push_str(&format!(
                "progress: a line per sink every {}\n",
                humantime::format_duration(every)
            )),
            None => out.push_str("progress: no lines\n"),
        }
        // Any line may show a value from the environment: an endpoint's path or query
        // (`endpoint_url = "https://host/hook?key=${TOKEN}"`), an http source's path, a
        // folder in a glob. Each is shown as its `${NAME}`.
        self.env.hide(&out)
    }
}

/// What a run did, summed over sinks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub events_delivered: u64,
    pub requests: u64,
    pub events_rejected: u64,
    pub events_not_delivered: u64,
    /// The most events any one sink held in memory at once.
    pub peak_events_in_memory: usize,
    /// Bytes of the journals (of the sources other than files) that some sink has not yet
    /// delivered or dead-lettered: they are sent at the next start.
    pub journal_bytes: u64,
}

impl Summary {
    /// The one-line summary printed at the end of `run --once`.
    pub fn line(&self) -> String {
        format!(
            "summary events_delivered={} requests={} events_rejected={} events_not_delivered={} peak_events_in_memory={} journal_bytes={}",
            self.events_delivered, self.requests, self.events_rejected, self.events_not_delivered, self.peak_events_in_memory, self.journal_bytes
        )
    }

    /// Adds another run's (or pipeline's) summary to this one.
    pub fn add(&mut self, other: &Summary) {
        self.events_delivered += other.events_delivered;
        self.requests += other.requests;
        self.events_rejected += other.events_rejected;
        self.events_not_delivered += other.events_not_delivered;
        self.peak_events_in_memory = self.peak_events_in_memory.max(other.peak_events_in_memory);
        self.journal_bytes += other.journal_bytes;
    }

    /// 0: everything delivered; 2: some input rejected (dead-lettered); 3: some events not
    /// delivered (held by a sink, or still in a journal).
    pub fn exit_code(&self) -> i32 {
        if self.events_not_delivered > 0 || self.journal_bytes > 0 {
            3
        } else if self.events_rejected > 0 {
            2
        } else {
            0
        }
    }
}

/// Runs every pipeline of `config` until the sources end (`once`) or `shutdown` fires.
///
/// A task that panics does not go unnoticed: the other tasks are stopped as at shutdown
/// (a stopped sink releases the sources waiting on its memory budget), and the run ends
/// with an error naming the task, never with a summary.
pub async fn run(config: Plan, once: bool, shutdown: CancellationToken) -> Result<Summary> {
    run_counted(config, once, shutdown, &Arc::new(Telemetry::new())).await
}

/// [`run`], counting into `telemetry`.
pub async fn run_counted(
    config: Plan,
    once: bool,
    shutdown: CancellationToken,
    telemetry: &Arc<Telemetry>,
) -> Result<Summary> {
    let data_dir = prepare(&config.data_dir)?;
    run_prepared(config, &data_dir.0, once, shutdown, telemetry).await
}

/// Prepares `data_dir` and locks it for this process.
pub(crate) fn prepare(data_dir: &Path) -> Result<(DataDir, DataDirLock)> {
    let data_dir = DataDir::prepare(data_dir)?;
    let lock = lock_data_dir(
        data_dir.root(),
        "one flaghook runs per data_dir (stop that one, or give this config its own `data_dir`)",
    )?;
    Ok((data_dir, lock))
}

/// [`run`] in a `data_dir` this process prepared and locked: one or more pipelines (the
/// whole config, or some of its pipelines when a reload restarts them).
pub(crate) async fn run_prepared(
    config: Plan,
    data_dir: &DataDir,
    once: bool,
    shutdown: CancellationToken,
    telemetry: &Arc<Telemetry>,
) -> Result<Summary> {
    let starting = telemetry.starting();
    let stop = shutdown.child_token();

    // Each source's checkpointer (of its files, or of its journal's segments); every sink
    // that reads the source subscribes to it.
    let mut checkpointers: BTreeMap<String, Arc<Checkpointer>> = BTreeMap::new();
    for (name, source) in &config.sources {
        let path = data_dir.checkpoint(name);
        let checkpointer = match (source, source.journal()) {
            // JetStream keeps its messages until they are acknowledged.
            (SourceSpec::Nats(_), _) => continue,
            (_, None) => Checkpointer::load(path),
            (_, Some(_)) => Checkpointer::load_for_journal(path),
        };
        checkpointers.insert(name.clone(), Arc::new(checkpointer));
    }
    // The spill file an older flaghook left for a sink: moved into a journal of its own,
    // which only that sink reads, as if it were one more source.
    let mut spills: BTreeMap<&str, (String, Segments)> = BTreeMap::new();
    for sink in config.sinks.keys() {
        if let Some(dir) = journal::adopt_spill_file(data_dir, sink) {
            let name = journal::spill_journal(sink);
            let checkpointer = Checkpointer::load_for_journal(data_dir.checkpoint(&name));
            checkpointers.insert(name.clone(), Arc::new(checkpointer));
            spills.insert(sink, (name.clone(), Segments::sealed(dir, &name)?));
        }
    }
    let mut journals: BTreeMap<&str, Journal> = BTreeMap::new();
    for (name, source) in &config.sources {
        let Some(spec) = source.journal() else {
            continue;
        };
        let checkpointer = &checkpointers[name];
        let opened = Journal::open(data_dir, name, spec, checkpointer, stop.clone())?;
        journals.insert(name, opened);
    }
    // What is left to settle after the run: every journal, with its checkpointer.
    let settle: Vec<(Segments, Arc<Checkpointer>)> = journals
        .iter()
        .map(|(name, j)| (j.segments.clone(), checkpointers[*name].clone()))
        .chain(
            spills
                .values()
                .map(|(name, segments)| (segments.clone(), checkpointers[name].clone())),
        )
        .collect();
    let (checkpoint_writer, persist) =
        CheckpointWriter::spawn(checkpointers.values().cloned().collect())?;
    // Each nats source's messages, held until every sink that reads it acknowledged them.
    let mut nats_messages: BTreeMap<&str, Arc<Messages>> = config
        .sources
        .iter()
        .filter(|(_, source)| matches!(source, SourceSpec::Nats(_)))
        .map(|(name, _)| (name.as_str(), Messages::new()))
        .collect();

    let mut outputs: BTreeMap<String, Vec<SinkInput>> = BTreeMap::new();
    let mut tasks = Tasks::default();
    let mut all_stats = Vec::new();
    for (name, sink) in &config.sinks {
        let budget = Arc::new(sink.budget());
        // Blocks waiting for the sink's decode task: a few keep it busy (a block is up to
        // one read, 256 KiB of a file); each one more is held in memory with its lines
        // besides the batches (16 of them measured 6 MiB more peak RSS, and no faster).
        let (tx, rx) = mpsc::channel(4);
        let mut subscriptions = Subscriptions::new(tx, budget.clone(), sink.delivery().max_events);
        let spill = spills.get(name.as_str()).map(|(journal, _)| journal);
        for input in sink.inputs().iter().chain(spill) {
            let ack = match nats_messages.get(input.as_str()) {
                Some(messages) => SourceAck::Nats(messages.subscribe()),
                None => checkpointers[input].subscribe().into(),
            };
            outputs
                .entry(input.clone())
                .or_default()
                .push(subscriptions.subscribe(ack));
        }
        let stats = Arc::new(Stats::new(telemetry.sink(name, &budget)));
        all_stats.push((stats.clone(), budget.clone()));
        let parts = SinkParts {
            name: name.clone(),
            delivery: sink.delivery().clone(),
            decoder: sink.decoder(),
            budget: budget.clone(),
            stats,
            dead_letters: Arc::new(DeadLetters::new(
                data_dir.dead_letter(name),
                sink.dead_letter_max_bytes(),
            )),
            acks: subscriptions.into_acks(),
            checkpoints: persist.clone(),
            once,
        };
        let stop = stop.clone();
        let task = match sink {
            SinkSpec::Webhook(c) => {
                let poster = Arc::new(Poster::new(name, c));
                tasks.sinks.spawn(run_sink(parts, poster, rx, stop, budget))
            }
            SinkSpec::Nats(c) => {
                let publisher = Publisher::new(name, c);
                tasks
                    .sinks
                    .spawn(run_sink(parts, publisher, rx, stop, budget))
            }
        };
        tasks.names.insert(task.id(), format!("sink `{name}`"));
    }

    for (name, source) in &config.sources {
        let checkpointer = checkpointers.get(name).cloned();
        let journal = journals.get(name.as_str()).map(|j| &j.segments);
        let output = Output::new(outputs.remove(name).unwrap_or_default())
            .counting(telemetry.source(name, checkpointer.as_ref(), journal));
        let stop = stop.clone();
        match source {
            SourceSpec::File(c) => {
                let file = FileSource::new(name, c, checkpointers[name].clone())
                    .starting(telemetry.starting());
                tasks.sources.spawn(file.run(output, stop, once));
                continue;
            }
            SourceSpec::Nats(c) => {
                let (c, name) = (c.clone(), name.clone());
                let messages = nats_messages
                    .remove(name.as_str())
                    .expect("one per nats source");
                tasks.sources.spawn(async move {
                    source::nats::run(&name, &c, messages, output, stop, once).await
                });
                continue;
            }
            _ => {}
        }
        // Every other source appends what it reads to its journal; the journal's tail
        // hands it to the sinks. The writer finishes once the reading ended (every
        // appender dropped), and the tail once the writer finished.
        let journal = journals.remove(name.as_str()).expect("opened above");
        let (appender, writer) = (journal.appender, journal.writer);
        let (read, max_line_bytes, envelope): (BoxFuture<'static, ()>, _, _) = match source {
            SourceSpec::File(_) | SourceSpec::Nats(_) => unreachable!("handled above"),
            SourceSpec::Tcp(c) => {
                let listener = source::listener::bind(name, c.address).await?;
                tracing::info!(source = %name, address = %listener.local_addr()?, "listening");
                let (spec, stop) = (c.clone(), stop.clone());
                let read =
                    async move { source::tcp::run(&spec, listener, appender, stop, once).await };
                (Box::pin(read), c.max_line_bytes, c.envelope.clone())
            }
            SourceSpec::Fluent(c) => {
                let listener = source::listener::bind(name, c.address).await?;
                tracing::info!(source = %name, address = %listener.local_addr()?, "listening (Forward protocol)");
                let (spec, stop) = (c.clone(), stop.clone());
                let read =
                    async move { source::fluent::run(&spec, listener, appender, stop, once).await };
                (Box::pin(read), c.limits.max_line_bytes, c.envelope.clone())
            }
            SourceSpec::Http(c) => {
                let listener = source::listener::bind(name, c.address).await?;
                tracing::info!(source = %name, address = %listener.local_addr()?, path = %c.path, "listening (HTTP)");
                let (spec, stop) = (c.clone(), stop.clone());
                let read =
                    async move { source::http::run(&spec, listener, appender, stop, once).await };
                (Box::pin(read), c.max_line_bytes, c.envelope.clone())
            }
            SourceSpec::Stdin(c) => {
                let (spec, stop, name) = (c.clone(), stop.clone(), name.clone());
                let read = async move { source::stdin::run(&name, &spec, appender, stop).await };
                (Box::pin(read), c.max_line_bytes, c.envelope.clone())
            }
        };
        let tail = FileSource::journal(
            name,
            journal.segments,
            max_line_bytes,
            envelope,
            checkpointers[name].clone(),
        );
        tasks.sources.spawn(async move {
            let read = async move {
                read.await;
                writer.finish().await;
            };
            tokio::join!(read, tail.run(output, stop, once));
        });
    }
    for (name, segments) in spills.into_values() {
        let output = Output::new(outputs.remove(&name).unwrap_or_default());
        // The spilled events were decoded once already: no envelope is taken off again.
        let no_envelope = Arc::from(Vec::<String>::new());
        let tail = FileSource::journal(
            &name,
            segments,
            config::MAX_LINE_BYTES,
            no_envelope,
            checkpointers[&name].clone(),
        );
        tasks.sources.spawn(tail.run(output, stop.clone(), once));
    }

    // The checkpoint writer's last write comes once every sink has finished.
    drop(persist);
    drop(starting);
    // Sources and sinks are watched together: a sink that fails while the sources run
    // (a TCP source never ends by itself) stops the others at once.
    let mut failures = Vec::new();
    while !tasks.sources.is_empty() || !tasks.sinks.is_empty() {
        let failure = tokio::select! {
            Some(done) = tasks.sources.join_next() => match done {
                Ok(()) => continue,
                Err(e) => format!("a source task {}", panic_message(e)),
            },
            Some(done) = tasks.sinks.join_next_with_id() => match done {
                Ok((_, Ok(()))) => continue,
                Ok((id, Err(e))) => format!("{}: {e:#}", tasks.name(id)),
                Err(e) => format!("{} {}", tasks.name(e.id()), panic_message(e)),
            },
        };
        failures.push(failure);
        stop.cancel();
    }
    if let Err(payload) = checkpoint_writer.finish().await {
        failures.push(format!("the checkpoint writer {}", panic_text(payload)));
    }
    let journal_bytes = tokio::task::spawn_blocking(move || settle_journals(&settle))
        .await
        .unwrap_or_else(|e| {
            failures.push(format!("settling the journals {}", panic_message(e)));
            0
        });
    if !failures.is_empty() {
        bail!(
            "stopped because a task failed (this is a bug in flaghook; please report it): {}",
            failures.join("; ")
        );
    }

    let mut summary = Summary {
        journal_bytes,
        ..Summary::default()
    };
    for (stats, budget) in &all_stats {
        let (delivered, requests, rejected, not_delivered) = stats.totals();
        summary.add(&Summary {
            events_delivered: delivered,
            requests,
            events_rejected: rejected,
            events_not_delivered: not_delivered,
            peak_events_in_memory: budget.peak().events,
            journal_bytes: 0,
        });
    }
    Ok(summary)
}

/// After the run: deletes the journal segments every sink passed (a spill journal left
/// empty goes whole); returns the bytes left undelivered.
fn settle_journals(journals: &[(Segments, Arc<Checkpointer>)]) -> u64 {
    let mut undelivered = 0;
    for (segments, checkpointer) in journals {
        undelivered += segments.settle(checkpointer);
        if segments.is_spill() {
            journal::remove_if_empty(segments.dir(), checkpointer.path());
        }
    }
    undelivered
}

/// The running tasks, with the sinks' names for error messages.
#[derive(Default)]
struct Tasks {
    sources: JoinSet<()>,
    sinks: JoinSet<Result<()>>,
    names: HashMap<tokio::task::Id, String>,
}

impl Tasks {
    fn name(&self, id: tokio::task::Id) -> &str {
        self.names.get(&id).map_or("a sink", String::as_str)
    }
}

/// Runs a sink; its budget is closed however it ends, a panic included, so that no source
/// waits on it.
async fn run_sink<T: Transport>(
    parts: SinkParts,
    transport: Arc<T>,
    input: mpsc::Receiver<Block>,
    stop: CancellationToken,
    budget: Arc<Budget>,
) -> Result<()> {
    let _closed = CloseOnDrop(budget);
    pipeline::run(parts, transport, input, stop).await
}

/// Closes a sink's budget when dropped.
struct CloseOnDrop(Arc<Budget>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Re-raises the panic of a task a stage awaited, so that it reaches the topology (which
/// ends the run with its message) instead of being dropped with the `JoinError`.
pub(crate) fn propagate_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// `panicked: <message>` or `was cancelled`, for a task that did not return.
fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return "was cancelled".to_owned();
    }
    panic_text(e.into_panic())
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    format!("panicked: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `Plan` kept each stage's table as written (`${VAR}` expanded, for
    /// reloads to compare) and derived `Debug`, which showed them whole: the secret, the
    /// credentials in `endpoint_url` and `proxy`, header values. So did `Loaded`.
    #[test]
    fn debug_of_the_plan_and_the_loaded_config_shows_no_secret() {
        let text = r#"
[sources.in]
type = "stdin"

[sinks.hook]
type = "webhook"
inputs = ["in"]
endpoint_url = "http://url-user:url-pass-7c1@127.0.0.1:9/hook"
secret = "signing-secret-4e2"
headers = { X-Token = "header-token-9d0" }
proxy = "http://proxy-user:proxy-pass-3b8@127.0.0.1:3128"
"#;
        let file: config::Config = toml::from_str(text).unwrap();
        let shown_file = format!("{file:?}");
        let loaded = config::parse(text, Path::new("/tmp/flaghook.toml")).unwrap();
        let shown_loaded = format!("{loaded:?}");
        let plan = Plan::build(loaded).unwrap();
        let shown_plan = format!("{plan:?}");
        for secret in [
            "url-pass-7c1",
            "signing-secret-4e2",
            "header-token-9d0",
            "proxy-pass-3b8",
        ] {
            assert!(!shown_plan.contains(secret), "Plan: {shown_plan}");
            assert!(!shown_loaded.contains(secret), "Loaded: {shown_loaded}");
            assert!(!shown_file.contains(secret), "Config: {shown_file}");
        }
        assert!(shown_plan.contains("sinks.hook"), "{shown_plan}");
    }
}
