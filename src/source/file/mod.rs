//! `type = "file"`: tails the files that GO Feature Flag's file exporter writes.
//!
//! The tail loop, in one paragraph: every `glob_interval` the include globs are expanded
//! and each match is identified by device, inode and a fingerprint of its first bytes.
//! A new file starts at its checkpoint (when its fingerprint matches), else at its start
//! (or at its end with `read_from = "end"`, for files present at start-up). Each pass
//! reads one block from every open file, round robin, and hands the complete lines on.
//! A file whose size drops below the read position, or whose first bytes change, was
//! truncated or replaced: it is read again from 0 as a new generation. A file that no
//! glob matches any more (renamed away or deleted) is read to its end, then closed. When
//! a pass reads nothing, the loop waits for an inotify event in the watched folders (see
//! [`watcher`]), or `poll_interval` when they cannot be watched: no busy loop. A match
//! that leads through a symlink whose owner could not read the file is not read (see
//! `symlink`): it is reported like a directory or a FIFO. The loop runs on a thread of the
//! source's own, never on an async worker (see [`FileSource::run`]).
//!
//! Lines carry their end offset; the sinks acknowledge them to the [`Checkpointer`],
//! and only acknowledged offsets are saved.
//!
//! The same tail reads the journal of a source that cannot be read again (see
//! `crate::journal`; [`FileSource::journal`]). What differs is only what a journal needs:
//! its files are the journal's segments (opened `O_NOFOLLOW`, never a glob), read one
//! after the other, each only as far as the journal's writer finished writing; a sealed
//! segment read to its end hands on the bytes after its last newline as a torn line; the
//! writer's progress wakes the loop (no inotify); and a sealed segment every sink passed
//! is deleted.

pub mod checkpoint;
mod symlink;
pub mod watcher;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::lines::LineSplitter;
use super::{Closed, Output};
use crate::config::{check_duration, check_max_line_bytes, HumanDuration};
use bytes::Bytes;

use crate::event::{Block, Line, LineKind};
use crate::journal::{self, Segments};
use crate::telemetry::Starting;
use checkpoint::{Checkpointer, Fingerprint};
use symlink::Links;

/// Where to start in a file that has no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    Beginning,
    End,
}

fn default_read_from() -> ReadFrom {
    ReadFrom::Beginning
}
fn default_poll_interval() -> HumanDuration {
    HumanDuration(Duration::from_millis(50))
}
fn default_glob_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

/// The longest `poll_interval` and `glob_interval`: a file source that looks less often
/// than hourly is not tailing.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// `[sources.NAME] type = "file"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Glob patterns of files to tail; relative ones are relative to the config file. Required.
    pub include: Vec<String>,
    /// Glob patterns of files to leave alone.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Where to start in files present at start-up that have no checkpoint: "beginning"
    /// (default) or "end". Files that appear later are always read from their beginning.
    #[serde(default = "default_read_from")]
    pub read_from: ReadFrom,
    /// Lines longer than this are rejected as bad input. Default 102400.
    #[serde(default = "super::default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// The envelope field that holds the event, when a shipper wraps it.
    /// Default: `message` (Vector), then `log` (Fluent Bit).
    #[serde(default)]
    pub field: Option<String>,
    /// How long to wait before looking again when no file had new data. Default "50ms".
    #[serde(default = "default_poll_interval")]
    pub poll_interval: HumanDuration,
    /// How often the globs are expanded to find new, renamed and deleted files. Default "1s".
    #[serde(default = "default_glob_interval")]
    pub glob_interval: HumanDuration,
}

/// A file source's settings, parsed: absolute globs, compiled excludes.
#[derive(Debug)]
pub struct FileSpec {
    pub include: Vec<String>,
    pub exclude: Vec<glob::Pattern>,
    pub read_from: ReadFrom,
    pub max_line_bytes: usize,
    pub envelope: Arc<[String]>,
    pub poll_interval: Duration,
    pub glob_interval: Duration,
}

impl FileConfig {
    /// Checks every key (at `key`, the source's) and parses the settings; relative globs
    /// are made absolute against `base`, the config file's folder.
    pub fn build(self, key: &str, base: &Path) -> Result<FileSpec> {
        self.validate(key)?;
        let absolute = |p: &String| {
            if Path::new(p).is_absolute() {
                p.clone()
            } else {
                base.join(p).to_string_lossy().into_owned()
            }
        };
        let mut exclude = Vec::with_capacity(self.exclude.len());
        for p in &self.exclude {
            let pattern = glob::Pattern::new(&absolute(p)).map_err(|e| {
                anyhow::anyhow!("`{key}.exclude` has an invalid glob {p:?}: {e} (example: \"/var/log/goff/*.json\")")
            })?;
            exclude.push(pattern);
        }
        Ok(FileSpec {
            include: self.include.iter().map(absolute).collect(),
            exclude,
            read_from: self.read_from,
            max_line_bytes: self.max_line_bytes,
            envelope: super::envelope(key, self.field.as_deref())?,
            poll_interval: self.poll_interval.0,
            glob_interval: self.glob_interval.0,
        })
    }

    fn validate(&self, key: &str) -> Result<()> {
        if self.include.is_empty() {
            bail!("`{key}.include` is empty: list at least one glob (example: include = [\"/var/log/goff/flag-variation-*.json\"])");
        }
        for (what, patterns) in [("include", &self.include), ("exclude", &self.exclude)] {
            for p in patterns {
                if p.trim().is_empty() {
                    bail!("`{key}.{what}` has an empty glob, which would match the config file's folder (example: \"/var/log/goff/*.json\")");
                }
                if let Err(e) = glob::Pattern::new(p) {
                    bail!("`{key}.{what}` has an invalid glob {p:?}: {e} (example: \"/var/log/goff/*.json\")");
                }
            }
        }
        check_max_line_bytes(key, self.max_line_bytes)?;
        check_duration(
            &format!("{key}.poll_interval"),
            self.poll_interval.0,
            MAX_INTERVAL,
            "poll_interval = \"50ms\"",
        )?;
        check_duration(
            &format!("{key}.glob_interval"),
            self.glob_interval.0,
            MAX_INTERVAL,
            "glob_interval = \"1s\"",
        )
    }
}

impl FileSpec {
    /// For `flaghook validate`: each existing file the globs match now, and where it
    /// would start: its checkpoint (in `checkpoint`, the source's checkpoint file), else
    /// `read_from`. One indented line each.
    pub fn start_positions(&self, checkpoint: &Path) -> String {
        let checkpointer = Checkpointer::load(checkpoint.to_owned());
        let mut seen = HashSet::new();
        let mut out = String::new();
        let matched = matching(&self.include, &self.exclude);
        for (path, why) in &matched.problems {
            out.push_str(&format!("  {}: {why}\n", path.display()));
        }
        for path in matched.paths {
            let line = match File::open(&path) {
                Ok(file) => match file.metadata() {
                    Ok(meta) if !meta.is_file() => "not a regular file: skipped".to_owned(),
                    Ok(meta) if !seen.insert((meta.dev(), meta.ino())) => {
                        "the same file as another match: read once".to_owned()
                    }
                    Ok(meta) => self.start_of(&file, meta.len(), &checkpointer),
                    Err(e) => format!("cannot read: {e}"),
                },
                Err(e) => format!("cannot open: {e}"),
            };
            out.push_str(&format!("  {}: {line}\n", path.display()));
        }
        if out.is_empty() {
            out.push_str("  no file matches now\n");
        }
        out
    }

    /// Where a file of `len` bytes present at start-up starts, and why.
    fn start_of(&self, file: &File, len: u64, checkpointer: &Checkpointer) -> String {
        let (offset, why) = match checkpointer.peek_offset(file) {
            Some(offset) => (offset, "its checkpoint"),
            None if self.read_from == ReadFrom::End => (len, "read_from = \"end\""),
            None => (0, "read_from = \"beginning\""),
        };
        format!(
            "{len} bytes, starts at byte {offset} ({why}): {} bytes to send",
            len - offset
        )
    }
}

/// What the globs match now: the paths `include` matches, less those `exclude` matches,
/// each once; and the places they cannot tell about, each with why (see [`unmatchable`]).
#[derive(Debug, Default)]
struct Matched {
    paths: Vec<PathBuf>,
    problems: Vec<(PathBuf, String)>,
}

fn matching(include: &[String], exclude: &[glob::Pattern]) -> Matched {
    let mut out = Matched::default();
    for pattern in include {
        let Ok(paths) = glob::glob(pattern) else {
            continue;
        };
        for path in paths {
            match path {
                Ok(path) => {
                    if !exclude.iter().any(|p| p.matches_path(&path)) && !out.paths.contains(&path)
                    {
                        out.paths.push(path);
                    }
                }
                Err(e) => out.problems.push((
                    e.path().to_owned(),
                    format!(
                        "cannot be read to match `include` ({}); skipping it",
                        e.error()
                    ),
                )),
            }
        }
        out.problems.extend(unmatchable(pattern, exclude));
    }
    out
}

/// The entries a glob's last part would match whose names are not UTF-8: the glob crate
/// leaves such a name out without a word (a pattern is text), so they are looked for here,
/// their names read with U+FFFD for the bytes that are not text, and reported.
fn unmatchable(pattern: &str, exclude: &[glob::Pattern]) -> Vec<(PathBuf, String)> {
    let path = Path::new(pattern);
    let last = path.file_name().and_then(|n| n.to_str());
    let Some(Ok(last)) = last.map(glob::Pattern::new) else {
        return Vec::new();
    };
    let parent = match path.parent().and_then(Path::to_str) {
        Some("") => ".",
        Some(parent) => parent,
        None => return Vec::new(),
    };
    let Ok(dirs) = glob::glob(parent) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for dir in dirs.flatten() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_str().is_some() || !last.matches(&name.to_string_lossy()) {
                continue;
            }
            let full = entry.path();
            let shown = full.to_string_lossy();
            if !exclude.iter().any(|p| p.matches(&shown)) {
                out.push((
                    full,
                    "matches `include` but its name is not UTF-8, which glob patterns cannot match; rename it to have it read".to_owned(),
                ));
            }
        }
    }
    out
}

/// Read size per file per pass.
const READ_SIZE: usize = 256 * 1024;

/// Blocks the tail thread may have read ahead of the sinks' budgets (each at most
/// [`READ_SIZE`] bytes of lines, from one pass over one file).
const READ_AHEAD: usize = 4;

/// How often a journal's tail looks without being woken: for the acknowledgements that
/// let it delete a segment (the writer's progress wakes it at once).
const JOURNAL_POLL: Duration = Duration::from_millis(100);

/// One open file.
struct Tailed {
    /// Changes when the file is truncated or replaced (a new generation).
    id: u64,
    path: PathBuf,
    file: File,
    fingerprint: Fingerprint,
    /// Offset of the next byte to read.
    pos: u64,
    splitter: LineSplitter,
    /// Matched by the last glob expansion.
    seen: bool,
    /// The last read reached the end of the file.
    at_eof: bool,
    /// For a journal's tail: the segment's number.
    segment: Option<u64>,
    /// A sealed journal segment read to its end (its torn line, if any, handed on).
    finished: bool,
}

/// Everything a file source (or a journal's tail) needs to run.
pub struct FileSource {
    pub name: String,
    finder: Finder,
    pub max_line_bytes: usize,
    pub envelope: Arc<[String]>,
    pub poll_interval: Duration,
    pub glob_interval: Duration,
    pub checkpointer: Arc<Checkpointer>,
    /// Held until the first scan opened the matched files: while it is, `/health` says the
    /// run is starting (see [`FileSource::starting`]).
    starting: Option<Starting>,
}

/// Where a tail finds its files.
enum Finder {
    /// A file source's: what the include globs match, less the excludes.
    Globs {
        include: Vec<String>,
        exclude: Vec<glob::Pattern>,
        read_from: ReadFrom,
    },
    /// A journal's segments, read one after the other.
    Journal(Segments),
}

impl FileSource {
    pub fn new(name: &str, spec: &FileSpec, checkpointer: Arc<Checkpointer>) -> Self {
        FileSource {
            name: name.to_owned(),
            finder: Finder::Globs {
                include: spec.include.clone(),
                exclude: spec.exclude.clone(),
                read_from: spec.read_from,
            },
            max_line_bytes: spec.max_line_bytes,
            envelope: spec.envelope.clone(),
            poll_interval: spec.poll_interval,
            glob_interval: spec.glob_interval,
            checkpointer,
            starting: None,
        }
    }

    /// The tail of a journal: the lines of source `name` (whose `max_line_bytes` they were
    /// cut to, and whose envelope field they are read with), from `segments`. The lines it
    /// reads are as long as the source let them be, or are what the journal writes of
    /// longer ones: it splits at a bound above both, which only a damaged segment reaches.
    pub fn journal(
        name: &str,
        segments: Segments,
        max_line_bytes: usize,
        envelope: Arc<[String]>,
        checkpointer: Arc<Checkpointer>,
    ) -> Self {
        FileSource {
            name: name.to_owned(),
            finder: Finder::Journal(segments),
            max_line_bytes: journal::longest_line(max_line_bytes),
            envelope,
            poll_interval: JOURNAL_POLL,
            glob_interval: JOURNAL_POLL,
            checkpointer,
            starting: None,
        }
    }

    /// Keeps the run "starting" (see `crate::telemetry::Telemetry::starting`) until this
    /// source's first scan found and opened its files, so that `/health` does not say ok
    /// before the source tails them.
    pub(crate) fn starting(mut self, guard: Starting) -> Self {
        self.starting = Some(guard);
        self
    }

    /// Tails until shutdown; with `once`, until every matched file was read to its end.
    ///
    /// The tail loop runs on a blocking thread of its own, as Vector's file server does:
    /// globbing, opening, fingerprinting and reading are file-system calls that may block
    /// (a slow disk, a network mount), and an async worker they held would stall the sinks'
    /// requests. The thread hands its blocks to this task through a short queue
    /// ([`READ_AHEAD`] blocks), and this task hands them to the sinks, waiting on their
    /// budgets: the thread reads ahead while a request is in flight, and the sinks' next
    /// blocks are handed on within the runtime, without waking a thread for each one.
    pub async fn run(mut self, output: Output, shutdown: CancellationToken, once: bool) {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let link = Link {
            blocks: tx,
            stop: shutdown.child_token(),
        };
        let nudge = match &self.finder {
            Finder::Globs { .. } => watcher::Nudge::default(),
            Finder::Journal(segments) => segments.nudge(),
        };
        // Also when this task is dropped unfinished (a failed start-up aborts it).
        let stop_thread = StopThread {
            stop: link.stop.clone(),
            nudge: nudge.clone(),
        };
        let starting = self.starting.take();
        let mut thread = tokio::task::spawn_blocking({
            let nudge = nudge.clone();
            move || self.tail(&link, nudge, once, starting)
        });
        let tailed = async {
            tokio::select! {
                ended = &mut thread => ended,
                _ = shutdown.cancelled() => {
                    nudge.nudge(); // out of its wait, to see the shutdown
                    thread.await
                }
            }
        };
        let handed_on = async {
            hand_on(rx, &output, &stop_thread.stop).await;
            // Every sink is gone, or the thread ended: it stops too (out of its wait).
            stop_thread.stop.cancel();
            stop_thread.nudge.nudge();
        };
        let (ended, ()) = tokio::join!(tailed, handed_on);
        crate::topology::propagate_panic(ended);
    }

    /// The tail loop (see the module's overview); on the source's own thread.
    fn tail(&self, link: &Link, nudge: watcher::Nudge, once: bool, starting: Option<Starting>) {
        let mut tail = Tail {
            source: self,
            files: Vec::new(),
            next_id: 1,
            warned: HashSet::new(),
            problems: Vec::new(),
        };
        let wakeup = match &self.finder {
            Finder::Globs { include, .. } => watcher::Wakeup::new(&self.name, include, nudge),
            Finder::Journal(_) => watcher::Wakeup::nudged(nudge),
        };
        // With inotify, polling is only a safety net (for changes it cannot see).
        let idle_wait = if wakeup.watching() {
            self.glob_interval.max(self.poll_interval)
        } else {
            self.poll_interval
        };
        let journal = matches!(self.finder, Finder::Journal(_));
        tail.scan(true);
        drop(starting);
        let mut last_scan = Instant::now();
        while !link.stop.is_cancelled() {
            // A journal's scan costs no system call: it learns the segments from the writer.
            if journal || last_scan.elapsed() >= self.glob_interval {
                tail.scan(false);
                last_scan = Instant::now();
            }
            // Before the pass: a pass that starts after the input ended and reads nothing
            // has read everything.
            let ended = self.input_ended(once);
            let (mut blocks, read_any) = tail.read_pass();
            blocks.append(&mut tail.problems);
            if link.send(blocks).is_err() {
                return;
            }
            tail.release_drained();
            if ended && !read_any {
                if journal {
                    tracing::debug!(source = %self.name, "the journal was read to its end");
                } else if link.send(tail.finish_all()).is_ok() {
                    tracing::info!(source = %self.name, "every matched file was read to its end");
                }
                return;
            }
            if !read_any {
                let until_scan = self.glob_interval.saturating_sub(last_scan.elapsed());
                wakeup.wait(idle_wait.min(until_scan));
            }
        }
    }
}

/// The tail thread's way into the async world: the queue [`FileSource::run`] drains.
struct Link {
    blocks: mpsc::Sender<Block>,
    /// Cancelled at shutdown, or when the source's task ends.
    stop: CancellationToken,
}

impl Link {
    /// Queues `blocks`, in order, for the sinks, blocking the thread while the queue is
    /// full (a sink's budget has no room). Fails at shutdown, or once every sink is gone.
    fn send(&self, blocks: Vec<Block>) -> Result<(), Closed> {
        for block in blocks {
            if self.stop.is_cancelled() {
                return Err(Closed);
            }
            self.blocks.blocking_send(block).map_err(|_| Closed)?;
        }
        Ok(())
    }
}

/// Hands the tail thread's blocks to the sinks, in order, until the thread ends (its
/// queue is closed and empty), shutdown, or every sink is gone. Blocks left in the queue
/// were not acknowledged: their lines are read again at the next start.
async fn hand_on(mut blocks: mpsc::Receiver<Block>, output: &Output, stop: &CancellationToken) {
    while let Some(block) = blocks.recv().await {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            sent = output.send(block) => if sent.is_err() { return },
        }
    }
}

/// Stops the tail thread when dropped: out of a wait, and before its next send or pass.
struct StopThread {
    stop: CancellationToken,
    nudge: watcher::Nudge,
}

impl Drop for StopThread {
    fn drop(&mut self) {
        self.stop.cancel();
        self.nudge.nudge();
    }
}

impl FileSource {
    /// Whether the input has ended: with `once`, a file source's (every file is read to its
    /// end); a journal's once its writer has stopped, `once` or not (stdin ended, or the
    /// TCP source stopped).
    fn input_ended(&self, once: bool) -> bool {
        match &self.finder {
            Finder::Globs { .. } => once,
            Finder::Journal(segments) => segments.finished(),
        }
    }
}

/// The tail loop's state.
struct Tail<'a> {
    source: &'a FileSource,
    files: Vec<Tailed>,
    next_id: u64,
    /// Paths already reported as unusable, so each is logged once.
    warned: HashSet<PathBuf>,
    /// Unusable paths to report to the sinks (counted and dead-lettered there).
    problems: Vec<Block>,
}

impl Tail<'_> {
    /// Finds the files: new ones are opened.
    fn scan(&mut self, startup: bool) {
        let source = self.source;
        match &source.finder {
            Finder::Globs {
                include,
                exclude,
                read_from,
            } => self.scan_globs(include, exclude, *read_from, startup),
            Finder::Journal(segments) => self.scan_segments(segments),
        }
    }

    /// Expands the globs: opens new files, notices moves and disappearances, checks
    /// fingerprints for replaced content.
    fn scan_globs(
        &mut self,
        include: &[String],
        exclude: &[glob::Pattern],
        read_from: ReadFrom,
        startup: bool,
    ) {
        let mut by_inode: HashMap<(u64, u64), usize> = HashMap::new();
        for (i, f) in self.files.iter_mut().enumerate() {
            f.seen = false;
            by_inode.insert((f.fingerprint.dev, f.fingerprint.ino), i);
        }
        let matched = matching(include, exclude);
        for (path, why) in &matched.problems {
            self.report(path, why);
        }
        for path in matched.paths {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                self.report(&path, "matches `include` but is a directory; skipping it");
                continue;
            }
            if !meta.is_file() {
                // A FIFO would block open(2) until a writer appears, stalling every file
                // of the source (and shutdown); sockets and devices are not logs either.
                self.report(
                    &path,
                    "matches `include` but is not a regular file (a FIFO, socket or device); skipping it",
                );
                continue;
            }
            let key = (meta.dev(), meta.ino());
            match by_inode.get(&key) {
                Some(&i) if self.files[i].seen => {
                    // Another path to a file already matched (a symlink or hard link):
                    // the file is read once.
                    tracing::debug!(path = %path.display(), file = %self.files[i].path.display(), "matches a file already tailed; reading it once");
                }
                Some(&i) => {
                    let f = &mut self.files[i];
                    f.seen = true;
                    if f.path != path {
                        tracing::info!(from = %f.path.display(), to = %path.display(), "file was renamed; following it");
                        f.path = path;
                    }
                }
                None => {
                    let before = self.files.len();
                    let read_from = if startup {
                        read_from
                    } else {
                        ReadFrom::Beginning
                    };
                    self.open(path, read_from);
                    if self.files.len() > before {
                        by_inode.insert(key, before);
                    }
                }
            }
        }
        for i in 0..self.files.len() {
            self.check_identity(i);
        }
    }

    /// Opens the journal segments not open yet, in order.
    fn scan_segments(&mut self, segments: &Segments) {
        let mut opened = false;
        for seq in segments.list() {
            if !self.files.iter().any(|f| f.segment == Some(seq)) {
                opened |= self.open_segment(segments, seq);
            }
        }
        if opened {
            self.files.sort_by_key(|f| f.segment);
        }
    }

    /// Opens segment `seq` where its checkpoint left it (nothing in data_dir is followed
    /// through a symlink); false when it cannot be opened yet.
    fn open_segment(&mut self, segments: &Segments, seq: u64) -> bool {
        let path = segments.path(seq);
        let opened =
            crate::data_dir::open_read(&path).and_then(|file| Ok((Fingerprint::of(&file)?, file)));
        let (fingerprint, file) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                self.warn_once(
                    &path,
                    &format!("cannot read a journal segment: {e}; will try again"),
                );
                return false;
            }
        };
        let cp = &self.source.checkpointer;
        let pos = cp.resume_offset(&file, &path).unwrap_or(0);
        let id = self.next_id;
        self.next_id += 1;
        cp.register(id, fingerprint, &path, pos);
        tracing::debug!(source = %self.source.name, path = %path.display(), offset = pos, "reading journal segment");
        self.files.push(Tailed {
            id,
            path,
            file,
            fingerprint,
            pos,
            splitter: LineSplitter::new(self.source.max_line_bytes, pos),
            seen: true,
            at_eof: false,
            segment: Some(seq),
            finished: false,
        });
        true
    }

    fn open(&mut self, path: PathBuf, read_from: ReadFrom) {
        let opened = File::open(&path).and_then(|file| Ok((symlink::check(&path, &file)?, file)));
        let file = match opened {
            Ok((Links::Trusted, file)) => file,
            Ok((Links::Untrusted(why), _)) => return self.report(&path, &why),
            Ok((Links::Moved, _)) => return, // the next scan sees where it went
            Err(e) => {
                self.report(&path, &format!("cannot open: {e}; will try again"));
                return;
            }
        };
        let fingerprint = match Fingerprint::of(&file) {
            Ok(fingerprint) => fingerprint,
            Err(e) => {
                self.report(&path, &format!("cannot read: {e}; will try again"));
                return;
            }
        };
        self.warned.remove(&path);
        let cp = &self.source.checkpointer;
        let pos = match cp.resume_offset(&file, &path) {
            Some(offset) => offset,
            None if read_from == ReadFrom::End => file.metadata().map(|m| m.len()).unwrap_or(0),
            None => 0,
        };
        let id = self.next_id;
        self.next_id += 1;
        cp.register(id, fingerprint, &path, pos);
        tracing::info!(source = %self.source.name, path = %path.display(), offset = pos, "tailing file");
        self.files.push(Tailed {
            id,
            path,
            file,
            fingerprint,
            pos,
            splitter: LineSplitter::new(self.source.max_line_bytes, pos),
            seen: true,
            at_eof: false,
            segment: None,
            finished: false,
        });
    }

    /// Restarts a file whose first bytes changed; grows a short fingerprint as the file
    /// grows (see [`Tail::lengthen_fingerprint`]).
    fn check_identity(&mut self, i: usize) {
        let f = &mut self.files[i];
        let same = f.fingerprint.matches(&f.file).unwrap_or(false);
        if !same {
            tracing::warn!(path = %f.path.display(), "file content was replaced; reading it again from the start");
            self.restart(i);
            return;
        }
        self.lengthen_fingerprint(i);
    }

    /// [`Tail::lengthen_fingerprint`] for a journal segment, whose first bytes are checked
    /// here (flaghook writes segments; nothing else replaces them).
    fn grow_fingerprint(&mut self, i: usize) {
        let f = &self.files[i];
        if f.fingerprint.is_short(f.pos) && f.fingerprint.matches(&f.file).unwrap_or(false) {
            self.lengthen_fingerprint(i);
        }
    }

    /// Takes a short fingerprint again over the bytes read since (up to [`checkpoint::HEAD_BYTES`]);
    /// the file's first bytes are known to be those the fingerprint covers.
    ///
    /// Called after every read, before its lines are handed on: a checkpoint must never
    /// hold an offset past the bytes its fingerprint covers. A file first seen holding
    /// half a line is fingerprinted over bytes every event starts with; saved with that
    /// fingerprint, its offset would be resumed in other content at the same inode (a
    /// reused inode, a file rewritten while flaghook was stopped), skipping its first lines.
    fn lengthen_fingerprint(&mut self, i: usize) {
        let f = &mut self.files[i];
        if !f.fingerprint.is_short(f.pos) {
            return;
        }
        if let Ok(fp) = Fingerprint::of(&f.file) {
            f.fingerprint = fp;
            self.source.checkpointer.refresh(f.id, fp, &f.path);
        }
    }

    /// Reads the file again from 0 as a new generation (after truncation or replacement).
    fn restart(&mut self, i: usize) {
        let id = self.next_id;
        self.next_id += 1;
        let f = &mut self.files[i];
        let cp = &self.source.checkpointer;
        cp.forget(f.id);
        f.id = id;
        f.pos = 0;
        f.splitter.reset(0);
        f.at_eof = false;
        if let Ok(fp) = Fingerprint::of(&f.file) {
            f.fingerprint = fp;
        }
        cp.register(id, f.fingerprint, &f.path, 0);
    }

    /// Reads the next blocks; returns them and whether anything was read.
    fn read_pass(&mut self) -> (Vec<Block>, bool) {
        let source = self.source;
        match &source.finder {
            Finder::Globs { .. } => self.read_round_robin(),
            Finder::Journal(segments) => self.read_in_order(segments),
        }
    }

    /// Reads one block from every file.
    fn read_round_robin(&mut self) -> (Vec<Block>, bool) {
        let mut blocks = Vec::new();
        let mut read_any = false;
        for i in 0..self.files.len() {
            match self.read_one(i, u64::MAX) {
                Ok(0) => {
                    let f = &mut self.files[i];
                    f.at_eof = true;
                    let size = f.file.metadata().map(|m| m.len()).unwrap_or(f.pos);
                    if size < f.pos {
                        tracing::warn!(path = %f.path.display(), size, offset = f.pos, "file was truncated; reading it from the start");
                        self.restart(i);
                        read_any = true;
                    }
                }
                Ok(_) => {
                    read_any = true;
                    // Checked after the read: first bytes still the same then were the
                    // same before it, so what was read follows what was read before.
                    self.check_identity(i);
                }
                Err(e) => {
                    let f = &mut self.files[i];
                    f.at_eof = true;
                    let path = f.path.clone();
                    self.warn_once(&path, &format!("read failed: {e}"));
                }
            }
            let f = &mut self.files[i];
            let mut lines = Vec::new();
            let buffer = f.splitter.split(&mut lines);
            if !lines.is_empty() {
                blocks.push(self.block(i, buffer, lines));
            }
        }
        (blocks, read_any)
    }

    /// Reads one block of journal segments, in order: from the oldest segment not read to
    /// its end, as far as the writer finished writing it. A sealed segment read to its end
    /// hands on its torn last line, if any, and the next segment is read in the same pass.
    fn read_in_order(&mut self, segments: &Segments) -> (Vec<Block>, bool) {
        let mut blocks = Vec::new();
        for i in 0..self.files.len() {
            let f = &self.files[i];
            let Some(readable) = f.segment.and_then(|seq| segments.readable(seq)) else {
                continue;
            };
            if f.finished {
                continue;
            }
            let n = match self.read_one(i, readable.len) {
                Ok(n) => n,
                Err(e) => {
                    let path = self.files[i].path.clone();
                    self.warn_once(&path, &format!("read failed: {e}; will try again"));
                    return (blocks, false);
                }
            };
            if n > 0 {
                self.grow_fingerprint(i);
            }
            let f = &mut self.files[i];
            let mut lines = Vec::new();
            let buffer = f.splitter.split(&mut lines);
            let end = n == 0 && readable.sealed && f.pos >= readable.len;
            if end {
                let mut torn = Vec::new();
                f.splitter.finish(&mut torn);
                lines.extend(torn.into_iter().map(journal::torn));
                f.finished = true;
            }
            journal::decode_all(&mut lines, &buffer);
            let handed_on = !lines.is_empty();
            if handed_on {
                blocks.push(self.block(i, buffer, lines));
            }
            if n > 0 || handed_on || !end {
                return (blocks, n > 0 || handed_on);
            }
        }
        (blocks, false)
    }

    /// Reads the next block of file `i`, up to offset `limit`.
    fn read_one(&mut self, i: usize, limit: u64) -> std::io::Result<usize> {
        let f = &mut self.files[i];
        let want = READ_SIZE.min(limit.saturating_sub(f.pos).try_into().unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let buf = f.splitter.buffer();
        let start = buf.len();
        buf.resize(start + want, 0);
        let result = f.file.read_at(&mut buf[start..], f.pos);
        let n = *result.as_ref().unwrap_or(&0);
        buf.truncate(start + n);
        f.pos += n as u64;
        if n > 0 {
            f.at_eof = false;
        }
        result
    }

    fn block(&self, i: usize, buffer: Bytes, lines: Vec<Line>) -> Block {
        let f = &self.files[i];
        Block {
            source_name: Arc::from(self.source.name.as_str()),
            origin: Arc::from(f.path.to_string_lossy().as_ref()),
            file: Some(f.id),
            input: 0,
            envelope: self.source.envelope.clone(),
            buffer,
            lines,
        }
    }

    /// Closes files that are gone (see [`Tail::release_gone`]), or deletes journal segments
    /// every sink has passed (see [`Tail::delete_passed`]).
    fn release_drained(&mut self) {
        let source = self.source;
        match &source.finder {
            Finder::Globs { .. } => self.release_gone(),
            Finder::Journal(segments) => self.delete_passed(segments),
        }
    }

    /// Deletes the sealed journal segments read to their end whose every line every sink
    /// delivered or dead-lettered; a segment that cannot be deleted yet is logged once.
    fn delete_passed(&mut self, segments: &Segments) {
        let cp = &self.source.checkpointer;
        let warned = &mut self.warned;
        self.files.retain(|f| {
            let passed = f.finished && cp.committed(f.id).is_some_and(|at| at >= f.pos);
            let Some(seq) = f.segment.filter(|_| passed) else {
                return true;
            };
            match segments.delete(seq) {
                Ok(()) => {
                    tracing::debug!(path = %f.path.display(), "every sink passed the journal segment; deleted it");
                    cp.forget(f.id);
                    false
                }
                Err(e) => {
                    if warned.insert(f.path.clone()) {
                        tracing::warn!(path = %f.path.display(), error = %e, "cannot delete a delivered journal segment; will try again");
                    }
                    true
                }
            }
        });
    }

    /// Closes files that no glob matches any more and that were read to their end.
    fn release_gone(&mut self) {
        let cp = &self.source.checkpointer;
        self.files.retain(|f| {
            let keep = f.seen || !f.at_eof;
            if !keep {
                tracing::info!(path = %f.path.display(), "file is gone and was read to its end; closing it");
                cp.forget(f.id);
            }
            keep
        });
    }

    /// End of input (`--once`): partial last lines become lines.
    fn finish_all(&mut self) -> Vec<Block> {
        let mut blocks = Vec::new();
        for i in 0..self.files.len() {
            let mut lines = Vec::new();
            self.files[i].splitter.finish(&mut lines);
            if !lines.is_empty() {
                blocks.push(self.block(i, Bytes::new(), lines));
            }
        }
        blocks
    }

    fn warn_once(&mut self, path: &Path, what: &str) -> bool {
        let first = self.warned.insert(path.to_owned());
        if first {
            tracing::warn!(source = %self.source.name, path = %path.display(), "{what}");
        }
        first
    }

    /// Warns once about an unusable path and has the sinks count and dead-letter it.
    fn report(&mut self, path: &Path, what: &str) {
        if self.warn_once(path, what) {
            let line = Line::own(
                Bytes::new(),
                LineKind::Unreadable {
                    reason: what.to_owned(),
                },
            );
            self.problems.push(Block {
                source_name: Arc::from(self.source.name.as_str()),
                origin: Arc::from(path.to_string_lossy().as_ref()),
                file: None,
                input: 0,
                envelope: self.source.envelope.clone(),
                buffer: Bytes::new(),
                lines: vec![line],
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Budget, Subscriptions};
    use tokio::sync::mpsc;

    /// The runtime of `#[tokio::test]` has one thread, the test's: while the test blocks
    /// it, a tail loop on an async worker could not run at all. The file is found, opened
    /// and read meanwhile; its lines reach the sink once the runtime runs again.
    #[tokio::test]
    async fn files_are_read_while_every_async_worker_is_blocked() {
        let dir = tempfile::tempdir().unwrap();
        let config: FileConfig = toml::from_str(r#"include = ["logs/*.log"]"#).unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        let checkpointer = Arc::new(Checkpointer::load(dir.path().join("checkpoint.json")));
        let spec = config.build("sources.files", dir.path()).unwrap();
        let source = FileSource::new("files", &spec, checkpointer.clone());
        let (tx, mut rx) = mpsc::channel(16);
        let mut subscriptions = Subscriptions::new(tx, Arc::new(Budget::new(1000, 1 << 20)), 100);
        let output = Output::new(vec![
            subscriptions.subscribe(checkpointer.subscribe().into())
        ]);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(source.run(output, shutdown.clone(), false));
        // The source starts and finds nothing to read.
        tokio::task::yield_now().await;

        std::fs::write(dir.path().join("logs/a.log"), "{\"n\":1}\n").unwrap();
        // Blocks the runtime's only thread (no `.await`) until the file was opened (the
        // first file is number 1).
        let opened = (0..1000).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            checkpointer.committed(1).is_some()
        });
        assert!(opened, "the new file was not opened within 10 s");
        let block = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the new line was not read within 10 s")
            .expect("the source is running");
        assert_eq!(block.lines.len(), 1);
        assert_eq!(block.bytes(&block.lines[0]), b"{\"n\":1}");

        shutdown.cancel();
        task.await.unwrap();
    }
}
