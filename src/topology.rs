//! Wires sources -> decode/batch -> sinks, and owns the shutdown order.
//!
//! Order at the end: sources stop (input ends, or shutdown) -> each sink flushes its last
//! partial batch and drains its retries (within its grace period at shutdown) -> the
//! checkpoints are written last, so they hold every acknowledgement.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{SinkConfig, SourceConfig, Validated};
use crate::event::Decoder;
use crate::lock::{lock_data_dir, DataDirLock};
use crate::sink::deadletter::{dead_letter_path, DeadLetters};
use crate::sink::delivery::{self, SinkParts};
use crate::sink::webhook::{Delivery, Poster};
use crate::sink::Stats;
use crate::source::file::checkpoint::Checkpointer;
use crate::source::file::FileSource;
use crate::source::{self, Budget, Output, SinkInput};

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

/// How often checkpoints are written while something changed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Runs every pipeline of `config` until the sources end (`once`) or `shutdown` fires.
pub async fn run(config: Validated, once: bool, shutdown: CancellationToken) -> Result<Summary> {
    let _lock = prepare_data_dir(&config.data_dir)?;
    let source_names: Vec<&String> = config.sources.keys().collect();
    let base = config
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();

    // Each file source's checkpointer counts the sinks that must acknowledge its lines.
    let mut checkpointers = Vec::new();
    for (name, source) in &config.sources {
        let readers = config
            .sinks
            .values()
            .filter(|s| s.inputs().contains(name))
            .count();
        checkpointers.push(match source {
            SourceConfig::File(_) => {
                let path = config
                    .data_dir
                    .join("checkpoints")
                    .join(format!("{name}.json"));
                Some(Arc::new(Checkpointer::load(path, readers)))
            }
            _ => None,
        });
    }

    let mut inputs: Vec<Vec<SinkInput>> = vec![Vec::new(); source_names.len()];
    let mut sinks = JoinSet::new();
    let mut all_stats = Vec::new();
    for (name, sink) in &config.sinks {
        let SinkConfig::Webhook(c) = sink;
        let budget = Arc::new(Budget::new(c.buffer_max_events()));
        let (tx, rx) = mpsc::channel(16);
        let mut acks = vec![None; source_names.len()];
        for input in &c.inputs {
            let index = source_names
                .iter()
                .position(|s| *s == input)
                .expect("validated");
            inputs[index].push(SinkInput {
                tx: tx.clone(),
                budget: budget.clone(),
                max_events: c.max_event_in_memory,
            });
            if let Some(cp) = &checkpointers[index] {
                acks[index] = Some((cp.clone(), inputs[index].len() - 1));
            }
        }
        let stats = Arc::new(Stats::default());
        all_stats.push((stats.clone(), budget.clone()));
        let parts = SinkParts {
            name: name.clone(),
            poster: Arc::new(Poster::new(name, c)?),
            delivery: Delivery::from(c),
            decoder: Decoder::new(c.schema, &c.event_types),
            budget,
            stats,
            dead_letters: Arc::new(DeadLetters::new(dead_letter_path(&config.data_dir, name))),
            acks,
            spill_path: config.data_dir.join("spill").join(format!("{name}.jsonl")),
        };
        sinks.spawn(delivery::run(parts, rx, shutdown.clone()));
    }

    let mut sources = JoinSet::new();
    for (index, ((name, source), outputs)) in config.sources.iter().zip(inputs).enumerate() {
        let output = Output::new(outputs);
        let stop = shutdown.clone();
        let name = name.clone();
        match source {
            SourceConfig::File(c) => {
                let cp = checkpointers[index].clone().expect("file sources have one");
                let file = FileSource::new(&name, index, c, &base, cp);
                sources.spawn(file.run(output, stop, once));
            }
            SourceConfig::Tcp(c) => {
                let listener = source::tcp::bind(&name, c).await?;
                tracing::info!(source = %name, address = %listener.local_addr()?, "listening");
                let c = c.clone();
                sources.spawn(async move {
                    source::tcp::run(&name, &c, listener, output, stop, once).await
                });
            }
            SourceConfig::Stdin(c) => {
                let c = c.clone();
                sources.spawn(async move { source::stdin::run(&name, &c, output, stop).await });
            }
        }
    }

    let checkpointers: Vec<Arc<Checkpointer>> = checkpointers.into_iter().flatten().collect();
    let writer = {
        let checkpointers = checkpointers.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
            loop {
                tick.tick().await;
                write_checkpoints(&checkpointers);
            }
        })
    };
    while sources.join_next().await.is_some() {}
    while sinks.join_next().await.is_some() {}
    writer.abort();
    write_checkpoints(&checkpointers);

    let mut summary = Summary::default();
    for (stats, budget) in &all_stats {
        summary.events_delivered += Stats::get(&stats.delivered);
        summary.requests += Stats::get(&stats.requests);
        summary.events_rejected += Stats::get(&stats.rejected);
        summary.events_not_delivered += Stats::get(&stats.not_delivered);
        summary.peak_events_in_memory = summary.peak_events_in_memory.max(budget.peak());
    }
    Ok(summary)
}

fn write_checkpoints(checkpointers: &[Arc<Checkpointer>]) {
    for cp in checkpointers {
        if let Err(e) = cp.write_if_dirty() {
            tracing::error!(error = %e, "cannot write checkpoint; will try again");
        }
    }
}

/// Locks `data_dir` (created when missing) for this process, creates its folders and proves
/// it writable before anything runs.
fn prepare_data_dir(dir: &Path) -> Result<DataDirLock> {
    let lock = lock_data_dir(
        dir,
        "one flaghook runs per data_dir (stop that one, or give this config its own `data_dir`)",
    )?;
    let unwritable = || {
        format!(
            "data_dir {} is not writable (set `data_dir` to a folder flaghook may write)",
            dir.display()
        )
    };
    for sub in ["checkpoints", "dead-letter", "spill"] {
        std::fs::create_dir_all(dir.join(sub)).with_context(unwritable)?;
    }
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok").with_context(unwritable)?;
    let _ = std::fs::remove_file(probe);
    Ok(lock)
}
