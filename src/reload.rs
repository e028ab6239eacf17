//! Runs the pipelines of a config, beside the API server and the progress lines, and
//! applies a changed config while they run (SIGHUP, or `run --watch-config`).
//!
//! A pipeline is a set of sources and the sinks that read them, connected by `inputs`:
//! what shares a checkpoint, a memory budget or a channel. It is the unit of a reload.
//! Each runs as its own `topology::run_prepared` with its own stop token, in the one
//! `data_dir` this process locked. On a reload:
//!
//! - a config that does not load or check is logged with the message `validate` prints,
//!   and nothing changes; so is one whose new listeners (TCP sources, the API) cannot
//!   listen, found before anything stops;
//! - a pipeline whose tables (every source and sink of it, as written) and the files its
//!   sinks read (TLS certificates and keys) are all unchanged keeps running, untouched;
//! - every other running pipeline stops as at shutdown (sources stop, sinks deliver what
//!   they hold within `shutdown_timeout`, checkpoints are written last), and then the new
//!   config's pipelines that are not running start, from the checkpoints and journals
//!   the stopped ones left: a reload neither loses nor duplicates an event;
//! - the API server and the progress lines restart when their settings changed.
//!
//! `data_dir` cannot change while running: a reload that changes it is refused.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiSpec};
use crate::data_dir::DataDir;
use crate::source::SourceSpec;
use crate::telemetry::{progress, Telemetry};
use crate::topology::{self, Plan, Summary};

/// How `run` runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// `run --once`: until the input ends; no reload.
    pub once: bool,
    /// `run --watch-config`: reload when the config file changes, as on SIGHUP.
    pub watch_config: bool,
}

/// How often `--watch-config` reads the config file.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Runs `plan` until its input ends (`--once`) or `shutdown`; reloads the config on SIGHUP
/// (and, with `watch_config`, when the file changes).
pub async fn run(plan: Plan, options: Options, shutdown: CancellationToken) -> Result<Summary> {
    let (data_dir, _lock) = topology::prepare(&plan.data_dir)?;
    let telemetry = Arc::new(Telemetry::new());
    let mut beside = Beside::new(telemetry.clone());
    beside
        .apply(plan.api.clone(), plan.progress_interval)
        .await?;
    let mark_stopping = {
        let (telemetry, shutdown) = (telemetry.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            telemetry.stopping();
        })
    };
    let live = (options.once && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let stop = CancellationToken::new();
        let task = tokio::spawn(progress::live_line(telemetry.clone(), stop.clone()));
        (stop, task)
    });
    let result = if options.once {
        topology::run_prepared(plan, &data_dir, true, shutdown, &telemetry).await
    } else {
        let reloads = reload_requests(&plan.path, options.watch_config)?;
        let mut supervisor = Supervisor {
            data_dir,
            telemetry: telemetry.clone(),
            stop_all: shutdown.child_token(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
            next_id: 0,
            summary: Summary::default(),
            failures: Vec::new(),
        };
        supervisor.run(plan, reloads, &mut beside).await
    };
    if let Some((stop, task)) = live {
        stop.cancel();
        let _ = task.await;
    }
    mark_stopping.abort();
    beside.apply(None, None).await?;
    result
}

/// Sends a request for each SIGHUP and, with `watch`, each change of the config file.
fn reload_requests(path: &Path, watch: bool) -> Result<mpsc::Receiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::channel(1);
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let on_signal = tx.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            // A request already waiting covers this one.
            let _ = on_signal.try_send(());
        }
    });
    if watch {
        tokio::spawn(watch_file(path.to_owned(), tx));
    }
    Ok(rx)
}

/// Reads the config file every [`WATCH_EVERY`] and asks for a reload when its bytes
/// changed (an editor that writes a new file and renames it over the old one included).
async fn watch_file(path: PathBuf, reload: mpsc::Sender<()>) {
    let read = |path: PathBuf| async move {
        tokio::task::spawn_blocking(move || std::fs::read(path).ok())
            .await
            .ok()
            .flatten()
    };
    let mut seen = read(path.clone()).await;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let now = read(path.clone()).await;
        if now.is_some() && now != seen {
            seen = now;
            tracing::info!(path = %path.display(), "the config file changed: reloading it");
            if reload.send(()).await.is_err() {
                return;
            }
        }
    }
}

/// A running pipeline: what it was made from, the addresses its TCP sources listen on,
/// and its stop token.
struct Running {
    made_from: MadeFrom,
    listens: Vec<SocketAddr>,
    stop: CancellationToken,
}

/// What a pipeline was made from: each stage's table as written, and the files its sinks
/// read at start (TLS certificates and keys, digested). A reload restarts a pipeline when
/// either changed: renewing a certificate file in place and reloading takes it up.
#[derive(PartialEq)]
struct MadeFrom {
    written: BTreeMap<String, toml::Table>,
    files: BTreeMap<String, u64>,
}

impl MadeFrom {
    fn of(pipeline: &Plan) -> Self {
        let files = (pipeline.sinks.iter())
            .filter_map(|(name, sink)| Some((name.clone(), sink.files_read()?)))
            .collect();
        MadeFrom {
            written: pipeline.written.clone(),
            files,
        }
    }
}

/// The pipelines of a long run.
struct Supervisor {
    data_dir: DataDir,
    telemetry: Arc<Telemetry>,
    /// Stops every pipeline: shutdown, or a pipeline that failed.
    stop_all: CancellationToken,
    /// Each pipeline's task returns its number and how it ended.
    tasks: JoinSet<(u64, Result<Summary>)>,
    running: HashMap<u64, Running>,
    next_id: u64,
    /// What the pipelines that ended did.
    summary: Summary,
    failures: Vec<anyhow::Error>,
}

impl Supervisor {
    /// Starts `plan`'s pipelines and runs until they have all ended, applying reloads.
    async fn run(
        &mut self,
        plan: Plan,
        mut reloads: mpsc::Receiver<()>,
        beside: &mut Beside,
    ) -> Result<Summary> {
        let current = Current::of(&plan);
        let mut current = current;
        for pipeline in pipelines(plan) {
            self.start(pipeline);
        }
        while !self.tasks.is_empty() {
            let reloading = !self.stop_all.is_cancelled();
            tokio::select! {
                Some(done) = self.tasks.join_next() => self.ended(done),
                Some(()) = reloads.recv(), if reloading => {
                    if let Some(next) = self.reload(&current, beside).await {
                        current = next;
                    }
                }
            }
        }
        match self.failures.drain(..).next() {
            Some(failure) => Err(failure),
            None => Ok(std::mem::take(&mut self.summary)),
        }
    }

    fn start(&mut self, pipeline: Plan) {
        let id = self.next_id;
        self.next_id += 1;
        let stop = self.stop_all.child_token();
        self.running.insert(
            id,
            Running {
                made_from: MadeFrom::of(&pipeline),
                listens: listens(&pipeline).map(|(_, addr)| addr).collect(),
                stop: stop.clone(),
            },
        );
        let (data_dir, telemetry) = (self.data_dir.clone(), self.telemetry.clone());
        let env = pipeline.env.clone();
        self.tasks.spawn(async move {
            let ended = topology::run_prepared(pipeline, &data_dir, false, stop, &telemetry).await;
            // An error may name a value of the config (an address).
            (id, ended.map_err(|e| env.hide_error(&e)))
        });
    }

    /// A pipeline ended: its counts join the summary; a failure stops every pipeline.
    fn ended(&mut self, done: Result<(u64, Result<Summary>), tokio::task::JoinError>) {
        match done {
            Ok((id, Ok(summary))) => {
                self.running.remove(&id);
                self.summary.add(&summary);
            }
            Ok((id, Err(e))) => {
                self.running.remove(&id);
                self.failures.push(e);
                self.stop_all.cancel();
            }
            Err(e) => {
                let what = if e.is_panic() {
                    "panicked"
                } else {
                    "was cancelled"
                };
                self.failures.push(anyhow::anyhow!(
                    "stopped because a pipeline {what} (this is a bug in flaghook; please report it)"
                ));
                self.stop_all.cancel();
            }
        }
    }

    /// Reads the config again and applies it; returns what now runs, or `None` when the
    /// config was refused (nothing changed).
    async fn reload(&mut self, current: &Current, beside: &mut Beside) -> Option<Current> {
        let path = current.path.clone();
        let loaded = tokio::task::spawn_blocking(move || Plan::load(&path)).await;
        let plan = match loaded {
            Ok(Ok(plan)) => plan,
            Ok(Err(e)) => {
                tracing::error!("config reload refused, the pipelines go on unchanged: {e:#}");
                return None;
            }
            Err(e) => {
                tracing::error!("config reload failed, the pipelines go on unchanged: {e}");
                return None;
            }
        };
        if plan.data_dir != current.data_dir {
            tracing::error!(
                "config reload refused, the pipelines go on unchanged: `data_dir` cannot change while flaghook runs (it was {}); restart flaghook to move it",
                current.data_dir.display()
            );
            return None;
        }
        let next = Current::of(&plan);
        let (api, progress, env) = (plan.api.clone(), plan.progress_interval, plan.env.clone());
        let new: Vec<(MadeFrom, Plan)> = (pipelines(plan).into_iter())
            .map(|p| (MadeFrom::of(&p), p))
            .collect();
        let unchanged: Vec<u64> = (self.running.iter())
            .filter(|(_, r)| new.iter().any(|(m, _)| *m == r.made_from))
            .map(|(id, _)| *id)
            .collect();
        let stopping: Vec<u64> = (self.running.keys())
            .filter(|id| !unchanged.contains(id))
            .copied()
            .collect();
        let to_start: Vec<Plan> = (new.into_iter())
            .filter(|(m, _)| !unchanged.iter().any(|id| self.running[id].made_from == *m))
            .map(|(_, p)| p)
            .collect();
        if let Err(e) = self.can_listen(&to_start, &stopping, api.as_ref(), beside) {
            let e = env.hide_error(&e);
            tracing::error!("config reload refused, the pipelines go on unchanged: {e:#}");
            return None;
        }
        self.stop(&stopping).await;
        let started: Vec<String> = to_start
            .iter()
            .flat_map(|p| p.written.keys().cloned())
            .collect();
        if self.stop_all.is_cancelled() {
            return Some(next);
        }
        for pipeline in to_start {
            self.start(pipeline);
        }
        let (gone_sinks, gone_sources) = current.gone(&next);
        self.telemetry.remove(&gone_sinks, &gone_sources);
        if let Err(e) = beside.apply(api, progress).await {
            tracing::error!("config reload: {:#}", env.hide_error(&e));
        }
        tracing::info!(
            started = %started.join(", "),
            unchanged_pipelines = unchanged.len(),
            stopped_pipelines = stopping.len(),
            "config reloaded"
        );
        Some(next)
    }

    /// Whether the listeners a reload opens can listen: the TCP sources of `to_start`,
    /// but on the addresses the pipelines `stopping` free, and the API on a new address.
    /// An address another process holds (or a pipeline that keeps running) refuses the
    /// reload before anything stops, as an invalid config does: once stopped, a pipeline
    /// that cannot start again would end the run.
    fn can_listen(
        &self,
        to_start: &[Plan],
        stopping: &[u64],
        api: Option<&ApiSpec>,
        beside: &Beside,
    ) -> Result<()> {
        let freed: Vec<SocketAddr> = (stopping.iter())
            .filter_map(|id| self.running.get(id))
            .flat_map(|r| r.listens.iter().copied())
            .collect();
        for (key, addr) in to_start.iter().flat_map(listens) {
            if !freed.contains(&addr) {
                try_listen(addr).with_context(|| format!("`{key}`: cannot listen on {addr}"))?;
            }
        }
        if let Some(api) = api.filter(|a| beside.api_address() != Some(a.address)) {
            let addr = api.address;
            try_listen(addr).with_context(|| format!("`api.address`: cannot listen on {addr}"))?;
        }
        Ok(())
    }

    /// Stops the pipelines `ids` and waits until they have ended (delivered what they
    /// hold, written their checkpoints). Others that end meanwhile are handled as usual.
    async fn stop(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(r) = self.running.get(id) {
                r.stop.cancel();
            }
        }
        while ids.iter().any(|id| self.running.contains_key(id)) {
            match self.tasks.join_next().await {
                Some(done) => self.ended(done),
                None => break,
            }
        }
    }
}

/// The addresses `plan`'s TCP sources listen on, each with its key
/// (`sources.NAME.address`).
fn listens(plan: &Plan) -> impl Iterator<Item = (String, SocketAddr)> + '_ {
    plan.sources
        .iter()
        .filter_map(|(name, source)| match source {
            SourceSpec::Tcp(c) => Some((format!("sources.{name}.address"), c.address)),
            _ => None,
        })
}

/// Whether something can listen on `addr` now, as `tokio::net::TcpListener::bind` does
/// (with `SO_REUSEADDR`, so that connections of an earlier listener in `TIME_WAIT` do not
/// count); the listener is closed again at once. Within the runtime.
fn try_listen(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1).map(drop)
}

/// What the running config says beyond its pipelines.
struct Current {
    path: PathBuf,
    data_dir: PathBuf,
    sinks: BTreeSet<String>,
    sources: BTreeSet<String>,
}

impl Current {
    fn of(plan: &Plan) -> Self {
        Current {
            path: plan.path.clone(),
            data_dir: plan.data_dir.clone(),
            sinks: plan.sinks.keys().cloned().collect(),
            sources: plan.sources.keys().cloned().collect(),
        }
    }

    /// The sinks and sources of `self` that `next` no longer has.
    fn gone(&self, next: &Current) -> (Vec<String>, Vec<String>) {
        (
            self.sinks.difference(&next.sinks).cloned().collect(),
            self.sources.difference(&next.sources).cloned().collect(),
        )
    }
}

/// Splits `plan` into its pipelines: the sources and sinks connected by `inputs`.
fn pipelines(plan: Plan) -> Vec<Plan> {
    // Each sink joins the group of its first input; a sink reading two groups merges them.
    let mut group: BTreeMap<String, usize> = BTreeMap::new();
    for (i, name) in plan.sources.keys().enumerate() {
        group.insert(name.clone(), i);
    }
    for sink in plan.sinks.values() {
        let inputs = sink.inputs();
        let Some(first) = inputs.first().and_then(|i| group.get(i)).copied() else {
            continue;
        };
        for input in inputs {
            let old = group[input];
            for g in group.values_mut() {
                if *g == old {
                    *g = first;
                }
            }
        }
    }
    let Plan {
        path,
        data_dir,
        sources,
        sinks,
        env,
        written,
        ..
    } = plan;
    let mut out: BTreeMap<usize, Plan> = BTreeMap::new();
    let empty = |written| Plan {
        path: path.clone(),
        data_dir: data_dir.clone(),
        sources: BTreeMap::new(),
        sinks: BTreeMap::new(),
        api: None,
        progress_interval: None,
        env: env.clone(),
        written,
    };
    for (name, source) in sources {
        let p = out
            .entry(group[&name])
            .or_insert_with(|| empty(BTreeMap::new()));
        let key = format!("sources.{name}");
        if let Some(table) = written.get(&key) {
            p.written.insert(key, table.clone());
        }
        p.sources.insert(name, source);
    }
    for (name, sink) in sinks {
        let Some(g) = sink.inputs().first().and_then(|i| group.get(i)).copied() else {
            continue;
        };
        let p = out.entry(g).or_insert_with(|| empty(BTreeMap::new()));
        let key = format!("sinks.{name}");
        if let Some(table) = written.get(&key) {
            p.written.insert(key, table.clone());
        }
        p.sinks.insert(name, sink);
    }
    out.into_values().collect()
}

/// What runs beside the pipelines: the API server and the progress lines, each restarted
/// when its settings change.
struct Beside {
    telemetry: Arc<Telemetry>,
    api: Option<(ApiSpec, CancellationToken, JoinHandle<()>)>,
    progress: Option<(Duration, CancellationToken, JoinHandle<()>)>,
}

impl Beside {
    fn new(telemetry: Arc<Telemetry>) -> Self {
        Beside {
            telemetry,
            api: None,
            progress: None,
        }
    }

    /// The address the API server listens on, while it runs.
    fn api_address(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|(spec, _, _)| spec.address)
    }

    /// Runs the API server on `api` and the progress lines every `progress` (`None`: off).
    async fn apply(&mut self, api: Option<ApiSpec>, progress: Option<Duration>) -> Result<()> {
        if self.progress.as_ref().map(|p| p.0) != progress {
            if let Some((_, stop, task)) = self.progress.take() {
                stop.cancel();
                let _ = task.await;
            }
            if let Some(every) = progress {
                let stop = CancellationToken::new();
                let task = tokio::spawn(progress::log_every(
                    self.telemetry.clone(),
                    every,
                    stop.clone(),
                ));
                self.progress = Some((every, stop, task));
            }
        }
        if self.api.as_ref().map(|a| &a.0) != api.as_ref() {
            if let Some((_, stop, task)) = self.api.take() {
                stop.cancel();
                let _ = task.await;
            }
            if let Some(spec) = api {
                let listener = api::bind(&spec).await?;
                let address = listener.local_addr()?;
                let stop = CancellationToken::new();
                let task = tokio::spawn(api::serve(
                    listener,
                    self.telemetry.clone(),
                    spec.unhealthy_after,
                    stop.clone(),
                ));
                tracing::info!(%address, "api listening: GET /health, GET /metrics");
                self.api = Some((spec, stop, task));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Plan {
        let loaded = crate::config::parse(text, Path::new("/tmp/f.toml")).unwrap();
        Plan::build(loaded).unwrap()
    }

    fn sink(name: &str, inputs: &str) -> String {
        format!("[sinks.{name}]\ntype = \"webhook\"\ninputs = {inputs}\nendpoint_url = \"http://127.0.0.1:9/\"\n")
    }

    #[test]
    fn sources_and_sinks_joined_by_inputs_are_one_pipeline() {
        let sources = "[sources.a]\ntype = \"stdin\"\n[sources.b]\ntype = \"file\"\ninclude = [\"/x\"]\n[sources.c]\ntype = \"file\"\ninclude = [\"/y\"]\n[sources.d]\ntype = \"file\"\ninclude = [\"/z\"]\n";
        // s1 reads a; s2 reads b and c; s3 reads c (joins s2's); s4 reads d alone.
        let text = format!(
            "{sources}{}{}{}{}",
            sink("s1", "[\"a\"]"),
            sink("s2", "[\"b\", \"c\"]"),
            sink("s3", "[\"c\"]"),
            sink("s4", "[\"d\"]")
        );
        let mut groups: Vec<Vec<String>> = pipelines(plan(&text))
            .into_iter()
            .map(|p| p.written.keys().cloned().collect())
            .collect();
        groups.sort();
        assert_eq!(
            groups,
            [
                vec!["sinks.s1", "sources.a"],
                vec!["sinks.s2", "sinks.s3", "sources.b", "sources.c"],
                vec!["sinks.s4", "sources.d"],
            ]
        );
    }
}
