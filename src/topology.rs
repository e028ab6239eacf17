//! Wires sources -> decode/batch -> sinks, and owns the shutdown order.
//!
//! A [`Plan`] is the config made ready to run: each stage's table turned into its spec,
//! and the checks between stages (inputs exist, each named once, every source read).
//!
//! Order at the end: sources stop (input ends, or shutdown) -> each sink flushes its last
//! partial batch and drains its retries (within its grace period at shutdown) -> the
//! checkpoints are written last, so they hold every acknowledgement.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{self, EnvValues, Loaded};
use crate::data_dir::DataDir;
use crate::event::Decoder;
use crate::lock::lock_data_dir;
use crate::sink::deadletter::DeadLetters;
use crate::sink::spill::Spill;
use crate::sink::webhook::{self, Poster, SinkParts};
use crate::sink::SinkSpec;
use crate::sink::Stats;
use crate::source::file::checkpoint::{CheckpointWriter, Checkpointer};
use crate::source::file::FileSource;
use crate::source::{self, Budget, Output, SinkInput, SourceSpec, Subscriptions};

/// A config ready to run: every stage's spec, checked against the others.
#[derive(Debug)]
pub struct Plan {
    pub path: PathBuf,
    pub data_dir: PathBuf,
    pub sources: BTreeMap<String, SourceSpec>,
    pub sinks: BTreeMap<String, SinkSpec>,
    /// What came from the environment, to hide from later errors.
    pub env: EnvValues,
}

impl Plan {
    /// Reads the config at `path` and builds its plan.
    pub fn load(path: &Path) -> Result<Plan> {
        Plan::build(config::load(path)?)
    }

    /// Turns each table into its stage's spec, then checks the wiring; an error names
    /// the key and shows an example.
    pub fn build(loaded: Loaded) -> Result<Plan> {
        let checked = Plan::checked(&loaded);
        let (sources, sinks) = checked.map_err(|e| loaded.explain(e))?;
        Ok(Plan {
            path: loaded.path,
            data_dir: loaded.data_dir,
            sources,
            sinks,
            env: loaded.env,
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
            let sink = SinkSpec::from_table(&key, table.clone())?;
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

    /// A short description of the topology, for `flaghook validate`.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "config {} is valid\ndata_dir: {}\n",
            self.path.display(),
            self.data_dir.display()
        );
        for (name, source) in &self.sources {
            out.push_str(&format!("source {name}: {}\n", source.describe()));
        }
        for (name, sink) in &self.sinks {
            out.push_str(&format!("sink {name}: {}\n", sink.describe()));
        }
        out
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
}

impl Summary {
    /// The one-line summary printed at the end of `run --once`.
    pub fn line(&self) -> String {
        format!(
            "summary events_delivered={} requests={} events_rejected={} events_not_delivered={} peak_events_in_memory={}",
            self.events_delivered, self.requests, self.events_rejected, self.events_not_delivered, self.peak_events_in_memory
        )
    }

    /// 0: everything delivered; 2: some input rejected (dead-lettered); 3: some events not delivered.
    pub fn exit_code(&self) -> i32 {
        if self.events_not_delivered > 0 {
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
    let data_dir = DataDir::prepare(&config.data_dir)?;
    let _lock = lock_data_dir(
        data_dir.root(),
        "one flaghook runs per data_dir (stop that one, or give this config its own `data_dir`)",
    )?;
    let stop = shutdown.child_token();

    // Each file source's checkpointer; every sink that reads the source subscribes to it.
    let checkpointers: BTreeMap<&str, Arc<Checkpointer>> = config
        .sources
        .iter()
        .filter(|(_, source)| matches!(source, SourceSpec::File(_)))
        .map(|(name, _)| {
            let path = data_dir.checkpoint(name);
            (name.as_str(), Arc::new(Checkpointer::load(path)))
        })
        .collect();
    let (checkpoint_writer, persist) =
        CheckpointWriter::spawn(checkpointers.values().cloned().collect())?;

    let mut outputs: BTreeMap<&str, Vec<SinkInput>> = BTreeMap::new();
    let mut tasks = Tasks::default();
    let mut all_stats = Vec::new();
    for (name, sink) in &config.sinks {
        let SinkSpec::Webhook(c) = sink;
        let budget = Arc::new(Budget::new(c.buffer_max_events, c.buffer_max_bytes));
        // Before any source may take from the budget: the spilled events go first.
        let spill_path = data_dir.spill(name);
        let spill = Spill::open(name, &spill_path, &budget);
        let (tx, rx) = mpsc::channel(16);
        let mut subscriptions = Subscriptions::new(tx, budget.clone(), c.max_events());
        for input in &c.inputs {
            let ack = checkpointers.get(input.as_str()).map(|cp| cp.subscribe());
            outputs
                .entry(input.as_str())
                .or_default()
                .push(subscriptions.subscribe(ack));
        }
        let stats = Arc::new(Stats::default());
        all_stats.push((stats.clone(), budget.clone()));
        let parts = SinkParts {
            name: name.clone(),
            poster: Arc::new(Poster::new(name, c)?),
            delivery: c.delivery.clone(),
            decoder: Decoder::new(c.schema, &c.event_types),
            budget: budget.clone(),
            stats,
            dead_letters: Arc::new(DeadLetters::new(
                data_dir.dead_letter(name),
                c.dead_letter_max_bytes,
            )),
            acks: subscriptions.into_acks(),
            checkpoints: persist.clone(),
            spill_path,
            spill,
            once,
        };
        let stop = stop.clone();
        let task = tasks.sinks.spawn(async move {
            // Closed however the sink ends, a panic included, so no source waits on it.
            let _closed = CloseOnDrop(budget);
            webhook::run(parts, rx, stop).await
        });
        tasks.names.insert(task.id(), format!("sink `{name}`"));
    }

    for (name, source) in &config.sources {
        let output = Output::new(outputs.remove(name.as_str()).unwrap_or_default());
        let stop = stop.clone();
        let name = name.clone();
        match source {
            SourceSpec::File(c) => {
                let cp = checkpointers[name.as_str()].clone();
                let file = FileSource::new(&name, c, cp);
                tasks.sources.spawn(file.run(output, stop, once));
            }
            SourceSpec::Tcp(c) => {
                let listener = source::tcp::bind(&name, c).await?;
                tracing::info!(source = %name, address = %listener.local_addr()?, "listening");
                let c = c.clone();
                tasks.sources.spawn(async move {
                    source::tcp::run(&name, &c, listener, output, stop, once).await
                });
            }
            SourceSpec::Fluent(c) => {
                let listener = source::fluent::bind(&name, c).await?;
                tracing::info!(source = %name, address = %listener.local_addr()?, "listening (Forward protocol)");
                let c = c.clone();
                tasks.sources.spawn(async move {
                    source::fluent::run(&name, &c, listener, output, stop, once).await
                });
            }
            SourceSpec::Http(c) => {
                let listener = source::http::bind(&name, c).await?;
                tracing::info!(source = %name, address = %listener.local_addr()?, path = %c.path, "listening (HTTP)");
                let c = c.clone();
                tasks.sources.spawn(async move {
                    source::http::run(&name, &c, listener, output, stop, once).await
                });
            }
            SourceSpec::Stdin(c) => {
                let c = c.clone();
                tasks
                    .sources
                    .spawn(async move { source::stdin::run(&name, &c, output, stop).await });
            }
        }
    }

    // The checkpoint writer's last write comes once every sink has finished.
    drop(persist);
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
    if !failures.is_empty() {
        bail!(
            "stopped because a task failed (this is a bug in flaghook; please report it): {}",
            failures.join("; ")
        );
    }

    let mut summary = Summary::default();
    for (stats, budget) in &all_stats {
        summary.events_delivered += Stats::get(&stats.delivered);
        summary.requests += Stats::get(&stats.requests);
        summary.events_rejected += Stats::get(&stats.rejected);
        summary.events_not_delivered += Stats::get(&stats.not_delivered);
        summary.peak_events_in_memory = summary.peak_events_in_memory.max(budget.peak().events);
    }
    Ok(summary)
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
