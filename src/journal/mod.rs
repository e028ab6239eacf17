//! The journal: what a source that cannot be read again (TCP, stdin) accepts is on the disk
//! before anything depends on it.
//!
//! ```text
//!  connection ─┐                                        ┌─ sink (acknowledges)
//!  connection ─┼─ lines ─ Appender ─▶ writer thread ─▶ segments ─▶ file tail ─┼─ sink
//!  stdin ──────┘  (room under            (append, fsync,     on disk      (journal mode)
//!                  journal_max_bytes)     rotate)
//! ```
//!
//! A source appends the lines it reads through an [`Appender`]; the [`Writer`], on a thread
//! of its own, appends them to `data_dir/journal/<source>/<seq>.ndjson`, one segment at a
//! time, and starts a new segment once one holds `journal_segment_bytes`. The sinks read the
//! segments through the file tail (`crate::source::file`, in journal mode: segments in
//! order, each up to what the writer finished writing) with the file sources' checkpoints
//! and acknowledgements, so a segment's read position moves only once every sink delivered
//! or dead-lettered its lines, and a segment every sink has passed is deleted. Memory stays
//! bounded by the sinks' budgets; the journal holds the backlog, up to `journal_max_bytes`
//! on the disk, then the source stops reading (TCP flow control pushes back).
//!
//! Each line is written as it came, with its newline, so a segment is newline-delimited JSON
//! wherever the input was. The exceptions are what a line longer than `max_line_bytes`
//! leaves (its first KiB and its length) and a record a `fluent` source could not turn into
//! a line (its bytes in base64, their length and why; see [`encode`]): they are marked by a
//! NUL byte first, which no JSON text starts with (a line that did start with one gets a
//! second).
//!
//! Durability (`journal_fsync`): `interval` fsyncs at most every 100 ms and before a
//! graceful stop; `always` fsyncs before an append counts as done. The sources that
//! acknowledge what they receive (`fluent`, `http`) append what they will acknowledge with
//! [`Appender::append_synced`], which is fsynced before it counts as done whatever
//! `journal_fsync` says: an acknowledgement promises the lines survive a power loss. A crash can leave the
//! last segment of a run ending in a torn line (a partial write): every run writes to
//! segments of its own, so that line is found at the end of a sealed segment, reported at
//! start, and dead-lettered when the tail reaches it, never delivered as an event.
//!
//! # Layout
//! - this module: the settings ([`JournalSpec`]), the line encoding, [`Appender`] and
//!   [`Segments`] (what the writer, the appenders and the tail share).
//! - `writer`: the writer thread (appends, fsync, rotation, a full disk).
//! - `spill`: the spill file an older flaghook left, moved into a journal of its own.

mod spill;
mod writer;

pub(crate) use spill::{adopt_spill_file, remove_if_empty, spill_journal};
pub(crate) use writer::Writer;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::ByteSize;
use crate::data_dir::DataDir;
use crate::event::{Line, LineKind};
use crate::source::file::checkpoint::Checkpointer;
use crate::source::file::watcher::Nudge;
use crate::source::lines::{TextLines, OVERSIZED_EXCERPT};

/// `journal_fsync`: when the journal's appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// At most every 100 ms, and before a graceful stop.
    Interval,
    /// Before an append counts as done.
    Always,
}

pub(crate) fn default_segment_bytes() -> ByteSize {
    ByteSize(64 << 20)
}

pub(crate) fn default_max_bytes() -> ByteSize {
    ByteSize(1 << 30)
}

pub(crate) fn default_fsync() -> Fsync {
    Fsync::Interval
}

/// The smallest `journal_segment_bytes`: a segment is a file, and fewer bytes would make
/// one per few lines.
const MIN_SEGMENT_BYTES: u64 = 4096;

/// A journal's settings, parsed from a source's `journal_*` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalSpec {
    pub segment_bytes: u64,
    pub max_bytes: u64,
    pub fsync: Fsync,
}

impl JournalSpec {
    /// Checks a source's journal keys (`key` is the source's full key).
    pub(crate) fn build(
        key: &str,
        segment_bytes: ByteSize,
        max_bytes: ByteSize,
        fsync: Fsync,
    ) -> Result<JournalSpec> {
        if segment_bytes.0 < MIN_SEGMENT_BYTES {
            bail!("`{key}.journal_segment_bytes` must be at least {MIN_SEGMENT_BYTES} (4KiB) (example: journal_segment_bytes = \"64MiB\")");
        }
        if segment_bytes.0 > max_bytes.0 {
            bail!("`{key}.journal_segment_bytes` must not exceed `{key}.journal_max_bytes`: the journal is deleted a segment at a time (example: journal_segment_bytes = \"64MiB\" with journal_max_bytes = \"1GiB\")");
        }
        Ok(JournalSpec {
            segment_bytes: segment_bytes.0,
            max_bytes: max_bytes.0,
            fsync,
        })
    }
}

/// A source's journal, opened: the appenders' handle, the writer thread, and the segments
/// for the tail.
#[derive(Debug)]
pub(crate) struct Journal {
    pub(crate) appender: Appender,
    pub(crate) writer: Writer,
    pub(crate) segments: Segments,
}

impl Journal {
    /// Opens (creating it if need be) the journal of `source` in `data_dir` and starts its
    /// writer. The segments already there (left by the last run) are sealed: this run writes
    /// to new ones, numbered after them and after every segment `checkpointer` names (so a
    /// saved position never matches a newer segment). `stop` is the run's shutdown: once it
    /// is cancelled, a write that keeps failing is given up (see `writer`).
    pub(crate) fn open(
        data_dir: &DataDir,
        source: &str,
        spec: &JournalSpec,
        checkpointer: &Checkpointer,
        stop: CancellationToken,
    ) -> Result<Journal> {
        let segments = Segments::open(data_dir.journal(source), source, spec.max_bytes)?;
        let next_seq = segments.next_seq(checkpointer);
        let (writer, requests) = Writer::spawn(segments.clone(), spec, next_seq, stop)?;
        Ok(Journal {
            appender: Appender {
                segments: segments.clone(),
                requests,
            },
            writer,
            segments,
        })
    }
}

/// The file name of segment `seq`: zero-padded, so that names sort as numbers.
fn segment_name(seq: u64) -> String {
    format!("{seq:020}.ndjson")
}

/// The segment number of a file name, if it is a segment's.
fn segment_seq(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".ndjson")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments of one journal, as the writer, the appenders and the tail share them.
#[derive(Debug, Clone)]
pub(crate) struct Segments(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    source: String,
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Wakes appenders waiting for room: a segment was deleted.
    room: Notify,
    /// Wakes the tail: something was written, a segment sealed, or the writer stopped.
    nudge: Nudge,
}

#[derive(Debug, Default)]
struct State {
    /// The segments on disk by number, each with the bytes the tail may read: what the
    /// writer finished writing (for the active segment), or the whole file.
    segments: BTreeMap<u64, u64>,
    /// Bytes of the segments on disk.
    on_disk: u64,
    /// Bytes let in by [`Appender::append`] and not yet written (or given up).
    queued: u64,
    /// Lines written to the journal in this run.
    journaled: u64,
    /// The segment the writer appends to; every other one is sealed.
    active: Option<u64>,
    /// The writer has stopped: every segment is sealed and no new one will come.
    finished: bool,
}

/// How far the tail may read a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Readable {
    pub(crate) len: u64,
    /// No byte will be added: the bytes left after its last newline are a torn line.
    pub(crate) sealed: bool,
}

impl Segments {
    /// The journal at `dir`, created `0700` if missing, with the segments a last run left.
    fn open(dir: PathBuf, source: &str, max_bytes: u64) -> Result<Segments> {
        crate::data_dir::create_dir(&dir).with_context(|| {
            format!(
                "source `{source}`: cannot create its journal {}",
                dir.display()
            )
        })?;
        let mut state = State::default();
        let entries = std::fs::read_dir(&dir).with_context(|| {
            format!(
                "source `{source}`: cannot list its journal {}",
                dir.display()
            )
        })?;
        for entry in entries {
            let entry = entry.with_context(|| {
                format!(
                    "source `{source}`: cannot list its journal {}",
                    dir.display()
                )
            })?;
            let name = entry.file_name();
            let Some(seq) = name.to_str().and_then(segment_seq) else {
                continue;
            };
            let meta = std::fs::symlink_metadata(entry.path())?;
            if !meta.file_type().is_file() {
                tracing::warn!(source, path = %entry.path().display(), "not a regular file in the journal (a symlink?); leaving it alone");
                continue;
            }
            state.segments.insert(seq, meta.len());
            state.on_disk += meta.len();
        }
        let segments = Segments(Arc::new(Shared {
            source: source.to_owned(),
            dir,
            max_bytes,
            state: Mutex::new(state),
            room: Notify::new(),
            nudge: Nudge::default(),
        }));
        segments.report_torn_tail();
        Ok(segments)
    }

    /// A journal nothing writes to any more (a spill file moved in): every segment sealed.
    pub(crate) fn sealed(dir: PathBuf, source: &str) -> Result<Segments> {
        let segments = Segments::open(dir, source, u64::MAX)?;
        segments.lock().finished = true;
        Ok(segments)
    }

    /// Reports, once at start, a last segment that ends in a torn line: a crash cut a
    /// write short. The tail dead-letters that line when it reaches it.
    fn report_torn_tail(&self) {
        let last = self
            .lock()
            .segments
            .iter()
            .next_back()
            .map(|(s, l)| (*s, *l));
        let Some((seq, len)) = last.filter(|(_, len)| *len > 0) else {
            return;
        };
        let path = self.path(seq);
        let mut byte = [0u8];
        let read = crate::data_dir::open_read(&path)
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut byte, len - 1));
        if read.is_ok() && byte[0] != b'\n' {
            tracing::warn!(source = %self.0.source, path = %path.display(), "the journal's last segment ends in a torn line (a crash cut a write short); that line is dead-lettered, not delivered");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().expect("journal lock")
    }

    /// The number of this run's first segment: after every segment on disk and every one
    /// `checkpointer` names.
    fn next_seq(&self, checkpointer: &Checkpointer) -> u64 {
        let on_disk = self.lock().segments.keys().next_back().copied();
        let saved = checkpointer
            .saved_paths()
            .into_iter()
            .filter(|p| p.parent() == Some(self.dir()))
            .filter_map(|p| p.file_name()?.to_str().and_then(segment_seq));
        on_disk.into_iter().chain(saved).max().map_or(1, |s| s + 1)
    }

    pub(crate) fn source(&self) -> &str {
        &self.0.source
    }

    /// Whether this is the journal a spill file was moved into (see `spill`).
    pub(crate) fn is_spill(&self) -> bool {
        spill::is_spill_journal(&self.0.source)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.0.dir
    }

    pub(crate) fn path(&self, seq: u64) -> PathBuf {
        self.0.dir.join(segment_name(seq))
    }

    /// What wakes the tail when the writer made progress.
    pub(crate) fn nudge(&self) -> Nudge {
        self.0.nudge.clone()
    }

    /// The segments on disk, oldest first.
    /// Lines written in this run, and bytes of the segments on the disk now (for metrics).
    pub(crate) fn counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.journaled, state.on_disk)
    }

    pub(crate) fn list(&self) -> Vec<u64> {
        self.lock().segments.keys().copied().collect()
    }

    /// How far segment `seq` may be read; `None` once it is deleted.
    pub(crate) fn readable(&self, seq: u64) -> Option<Readable> {
        let state = self.lock();
        let len = *state.segments.get(&seq)?;
        Some(Readable {
            len,
            sealed: state.active != Some(seq),
        })
    }

    /// The writer has stopped: nothing will be added to any segment.
    pub(crate) fn finished(&self) -> bool {
        self.lock().finished
    }

    /// Deletes segment `seq`, sealed and passed by every sink, and makes room for appends.
    pub(crate) fn delete(&self, seq: u64) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(seq)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut state = self.lock();
        if let Some(len) = state.segments.remove(&seq) {
            state.on_disk -= len;
        }
        drop(state);
        self.0.room.notify_waiters();
        Ok(())
    }

    /// After the run (every task ended, the checkpoints written): deletes the segments
    /// every sink passed, and returns the bytes left undelivered.
    pub(crate) fn settle(&self, checkpointer: &Checkpointer) -> u64 {
        let mut undelivered = 0;
        for seq in self.list() {
            let Some(readable) = self.readable(seq) else {
                continue;
            };
            let acked = checkpointer.acked_at(&self.path(seq)).unwrap_or(0);
            if readable.sealed && acked >= readable.len {
                if let Err(e) = self.delete(seq) {
                    tracing::warn!(source = %self.0.source, error = %e, "cannot delete a delivered journal segment");
                }
            } else {
                undelivered += readable.len.saturating_sub(acked);
            }
        }
        undelivered
    }

    /// Lets `n` more bytes in, when they fit under `journal_max_bytes` (or `past_cap`).
    /// Bytes beyond the cap are let in while no segment is sealed: only sealed segments
    /// are ever deleted, so waiting then would wait forever.
    fn admit(&self, n: u64, past_cap: bool) -> bool {
        let mut state = self.lock();
        let active = state.active.and_then(|s| state.segments.get(&s)).copied();
        let sealed = state.on_disk - active.unwrap_or(0);
        let fits = state.on_disk + state.queued + n <= self.0.max_bytes;
        if fits || sealed == 0 || past_cap {
            state.queued += n;
            return true;
        }
        false
    }
}

/// One append, as the writer gets it.
#[derive(Debug)]
struct Request {
    bytes: Bytes,
    lines: usize,
    /// Fsynced before it is answered, whatever `journal_fsync` says.
    sync: bool,
    done: oneshot::Sender<Result<(), NotWritten>>,
}

/// The lines of an append are not in the journal: the writer gave up at shutdown (the
/// disk stayed full), or stopped. For [`Appender::append_synced`]: or not known to be on
/// the disk (the fsync kept failing at shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotWritten;

/// Why [`Appender::try_append_synced`] did not append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotAppended {
    /// The journal holds `journal_max_bytes`: nothing was appended.
    Full,
    /// See [`NotWritten`].
    NotWritten,
}

/// What an append does while the journal holds `journal_max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenFull {
    /// Waits for room (the source stops reading).
    Wait,
    /// Gives up at once, appending nothing.
    Refuse,
}

/// A source's way into its journal. Cloned for each connection.
#[derive(Debug, Clone)]
pub(crate) struct Appender {
    segments: Segments,
    requests: std::sync::mpsc::Sender<Request>,
}

impl Appender {
    /// Appends `lines` (encoded now, before the future is first polled). The future waits
    /// for room under `journal_max_bytes`, or, once `stop` is cancelled, appends past it:
    /// what a shipper already sent is kept rather than dropped at shutdown. It resolves
    /// once the lines are written (`journal_fsync = "interval"`) or on the disk (`always`):
    /// a source that acknowledges what it receives acknowledges it then.
    ///
    /// Each caller awaits its append before the next one, so the writer's queue holds at
    /// most one read per connection: memory stays bounded however far behind the disk is.
    pub(crate) fn append(
        &self,
        lines: &[Line],
        stop: &CancellationToken,
    ) -> impl Future<Output = Result<(), NotWritten>> + Send + 'static {
        self.append_waiting(encode(lines), lines.len(), stop, false)
    }

    /// [`Appender::append`] for lines a reader cut off in one piece: written as they are
    /// (see [`encode_text`]), without a copy.
    pub(crate) fn append_text(
        &self,
        text: TextLines,
        stop: &CancellationToken,
    ) -> impl Future<Output = Result<(), NotWritten>> + Send + 'static {
        self.append_waiting(encode_text(text.bytes), text.count, stop, false)
    }

    /// [`Appender::append`], resolving only once the lines are fsynced, whatever
    /// `journal_fsync` says: what a source acknowledges to its client.
    pub(crate) fn append_synced(
        &self,
        lines: &[Line],
        stop: &CancellationToken,
    ) -> impl Future<Output = Result<(), NotWritten>> + Send + 'static {
        self.append_waiting(encode(lines), lines.len(), stop, true)
    }

    /// [`Appender::append_synced`], refused at once (nothing appended) when the lines do
    /// not fit under `journal_max_bytes`: for a source whose client sends again later (an
    /// HTTP 503).
    pub(crate) fn try_append_synced(
        &self,
        lines: &[Line],
        stop: &CancellationToken,
    ) -> impl Future<Output = Result<(), NotAppended>> + Send + 'static {
        self.append_as(encode(lines), lines.len(), stop, true, WhenFull::Refuse)
    }

    /// [`Appender::try_append_synced`] for lines that came in one piece (see
    /// [`Appender::append_text`]).
    pub(crate) fn try_append_synced_text(
        &self,
        text: TextLines,
        stop: &CancellationToken,
    ) -> impl Future<Output = Result<(), NotAppended>> + Send + 'static {
        self.append_as(
            encode_text(text.bytes),
            text.count,
            stop,
            true,
            WhenFull::Refuse,
        )
    }

    /// [`Appender::append_as`] waiting for room under `journal_max_bytes`: never refused,
    /// its only failure is `NotWritten`.
    fn append_waiting(
        &self,
        bytes: Bytes,
        count: usize,
        stop: &CancellationToken,
        sync: bool,
    ) -> impl Future<Output = Result<(), NotWritten>> + Send + 'static {
        let append = self.append_as(bytes, count, stop, sync, WhenFull::Wait);
        async move { append.await.map_err(|_| NotWritten) }
    }

    /// Appends `bytes`, the journal's bytes for `count` lines.
    fn append_as(
        &self,
        bytes: Bytes,
        count: usize,
        stop: &CancellationToken,
        sync: bool,
        when_full: WhenFull,
    ) -> impl Future<Output = Result<(), NotAppended>> + Send + 'static {
        let (segments, requests, stop) =
            (self.segments.clone(), self.requests.clone(), stop.clone());
        async move {
            if bytes.is_empty() {
                return Ok(());
            }
            let n = bytes.len() as u64;
            loop {
                let room = segments.0.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                if segments.admit(n, stop.is_cancelled()) {
                    break;
                }
                if when_full == WhenFull::Refuse {
                    return Err(NotAppended::Full);
                }
                tokio::select! {
                    _ = room => {}
                    _ = stop.cancelled() => {}
                }
            }
            let (done, written) = oneshot::channel();
            let request = Request {
                bytes,
                lines: count,
                sync,
                done,
            };
            if requests.send(request).is_err() {
                segments.lock().queued -= n;
                return Err(NotAppended::NotWritten);
            }
            let written = written.await.unwrap_or(Err(NotWritten));
            written.map_err(|NotWritten| NotAppended::NotWritten)
        }
    }
}

/// The first byte of a line that is not the line as it came (see the module's doc).
const MARK: u8 = 0;
const OVERSIZED: &[u8] = b"oversized ";
const BAD: &[u8] = b"bad ";
/// The most bytes of a bad record's reason the journal keeps.
const MAX_REASON_BYTES: usize = 1024;

/// The longest line a journal holds for a source that cuts its lines to `max_line_bytes`
/// (a bad record's bytes, in base64, are the longest): the tail splits at a bound above
/// it, which only a damaged segment reaches.
pub(crate) fn longest_line(max_line_bytes: usize) -> usize {
    let oversized = MARK_LEN + OVERSIZED.len() + 21 + OVERSIZED_EXCERPT;
    let bad = MARK_LEN + BAD.len() + 21 + max_line_bytes.div_ceil(3) * 4 + 1 + MAX_REASON_BYTES;
    max_line_bytes.max(oversized).max(bad) + 1
}

const MARK_LEN: usize = 1;

/// The journal's bytes for `lines`: each line and its newline; a line that starts with
/// [`MARK`] gets a second one; a line longer than `max_line_bytes`, of which only the start
/// was kept, is written `MARK "oversized " <its length> " " <its start>`; a bad record
/// (bytes a source could not make a line of, which may hold newlines) is written
/// `MARK "bad " <its length> " " <its bytes in base64> " " <why, on one line>`.
fn encode(lines: &[Line]) -> Bytes {
    let size: usize = lines.iter().map(|l| l.bytes.len() + 32).sum();
    let mut out = BytesMut::with_capacity(size);
    for line in lines {
        match &line.kind {
            LineKind::Oversized { len, .. } => {
                out.put_u8(MARK);
                out.put_slice(OVERSIZED);
                out.put_slice(len.to_string().as_bytes());
                out.put_u8(b' ');
            }
            LineKind::Bad { len, reason, .. } => {
                encode_bad(&mut out, line.own_bytes(), *len, reason);
                continue;
            }
            _ if line.own_bytes().first() == Some(&MARK) => out.put_u8(MARK),
            _ => {}
        }
        out.put_slice(line.own_bytes());
        out.put_u8(b'\n');
    }
    out.freeze()
}

/// The journal's bytes for complete lines as they came, newlines included: the same bytes,
/// unless a line starts with [`MARK`] (no JSON text holds a NUL byte, so nearly never),
/// which then gets a second one as in [`encode`].
fn encode_text(text: Bytes) -> Bytes {
    if memchr::memchr(MARK, &text).is_none() {
        return text;
    }
    let mut out = BytesMut::with_capacity(text.len() + 16);
    for line in text.split_inclusive(|b| *b == b'\n') {
        if line.first() == Some(&MARK) {
            out.put_u8(MARK);
        }
        out.put_slice(line);
    }
    out.freeze()
}

fn encode_bad(out: &mut BytesMut, raw: &[u8], len: u64, reason: &str) {
    use base64::Engine;
    let mut cut = reason.len().min(MAX_REASON_BYTES);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    out.put_u8(MARK);
    out.put_slice(BAD);
    out.put_slice(len.to_string().as_bytes());
    out.put_u8(b' ');
    out.put_slice(
        base64::engine::general_purpose::STANDARD
            .encode(raw)
            .as_bytes(),
    );
    out.put_u8(b' ');
    out.put_slice(reason[..cut].replace(['\n', '\r'], " ").as_bytes());
    out.put_u8(b'\n');
}

/// A bad record as [`encode_bad`] wrote it: its bytes, their whole length, and why.
fn decode_bad(marked: &[u8]) -> Option<(Bytes, u64, String)> {
    use base64::Engine;
    let mut fields = marked.splitn(3, |b| *b == b' ');
    let len = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(fields.next()?)
        .ok()?;
    let reason = std::str::from_utf8(fields.next()?).ok()?.to_owned();
    Some((Bytes::from(raw), len, reason))
}

/// A line read from a journal segment, as the source accepted it (the inverse of
/// [`encode`]); its bytes, when in a block's buffer, lie in `buffer`. Lines without the
/// mark (nearly all) pass unchanged, without a copy.
fn decode(line: Line, buffer: &[u8]) -> Line {
    let bytes = line.bytes.of(buffer);
    if bytes.first() != Some(&MARK) {
        return line;
    }
    let (number, end) = match line.kind {
        LineKind::Text { number, end } => (number, end),
        _ => return line,
    };
    let rest = &bytes[1..];
    if let Some((bytes, len, reason)) = rest.strip_prefix(BAD).and_then(decode_bad) {
        let kind = LineKind::Bad {
            number,
            end,
            reason,
            len,
        };
        return Line::own(bytes, kind);
    }
    if let Some(marked) = rest.strip_prefix(OVERSIZED) {
        let digits = marked.iter().position(|b| *b == b' ');
        let len = digits.and_then(|at| std::str::from_utf8(&marked[..at]).ok()?.parse().ok());
        if let (Some(at), Some(len)) = (digits, len) {
            let start = 1 + OVERSIZED.len() + at + 1;
            return Line {
                bytes: line.bytes.slice_from(start),
                kind: LineKind::Oversized { number, end, len },
            };
        }
    }
    if rest.first() == Some(&MARK) {
        return Line {
            bytes: line.bytes.slice_from(1),
            kind: line.kind,
        };
    }
    // Not written by `encode` (a damaged segment): kept as it is, to be dead-lettered.
    line
}

/// [`decode`] over the lines of a read, which lie in `buffer`, in place: those without the
/// mark (nearly all) are not touched.
pub(crate) fn decode_all(lines: &mut [Line], buffer: &[u8]) {
    for line in (lines.iter_mut()).filter(|l| l.bytes.of(buffer).first() == Some(&MARK)) {
        let placeholder = Line::own(Bytes::new(), LineKind::Text { number: 0, end: 0 });
        *line = decode(std::mem::replace(line, placeholder), buffer);
    }
}

/// The bytes left at the end of a sealed segment after its last newline: a line a crash
/// cut short, which is dead-lettered rather than delivered.
pub(crate) fn torn(line: Line) -> Line {
    match line.kind {
        LineKind::Text { number, end } => Line {
            bytes: line.bytes,
            kind: LineKind::Torn { number, end },
        },
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &'static [u8]) -> Line {
        Line::own(
            Bytes::from_static(bytes),
            LineKind::Text { number: 1, end: 9 },
        )
    }

    /// Splits `bytes` as the tail does and decodes each line; each with its own bytes.
    fn read_back(bytes: &[u8]) -> Vec<Line> {
        let mut splitter = crate::source::lines::LineSplitter::new(4096, 0);
        splitter.buffer().extend_from_slice(bytes);
        let mut lines = Vec::new();
        let buffer = splitter.split(&mut lines);
        assert_eq!(splitter.pending(), 0, "every line ends with its newline");
        decode_all(&mut lines, &buffer);
        (lines.into_iter())
            .map(|l| Line::own(Bytes::copy_from_slice(l.bytes.of(&buffer)), l.kind))
            .collect()
    }

    #[test]
    fn lines_come_back_as_they_were_accepted() {
        let oversized = Line::own(
            Bytes::from_static(b"{\"kind\":\"feat"),
            LineKind::Oversized {
                number: 2,
                end: 900,
                len: 123456,
            },
        );
        let lines = [
            text(b"{\"a\":1}"),
            text(b""),
            text(b"\0starts with NUL"),
            text(b"\0oversized 12 looks marked"),
            text(b"crlf\r"),
            oversized,
        ];
        let journal = encode(&lines);
        assert!(
            journal.starts_with(b"{\"a\":1}\n\n"),
            "JSON lines as they came"
        );
        let back = read_back(&journal);
        assert_eq!(back.len(), lines.len());
        for (got, sent) in back.iter().zip(&lines) {
            assert_eq!(got.bytes, sent.bytes);
            match (&got.kind, &sent.kind) {
                (LineKind::Oversized { len: a, .. }, LineKind::Oversized { len: b, .. }) => {
                    assert_eq!(a, b)
                }
                (LineKind::Text { .. }, LineKind::Text { .. }) => {}
                other => panic!("kinds differ: {other:?}"),
            }
        }
    }

    #[test]
    fn a_bad_record_comes_back_with_its_bytes_length_and_reason() {
        // msgpack bytes with a newline, a NUL and a CR in them, and a reason on two lines.
        let raw: &'static [u8] = b"\x92\xa1t\n\x00\r\xc1";
        let bad = Line::own(
            Bytes::from_static(raw),
            LineKind::Bad {
                number: 0,
                end: 0,
                reason: "not a record:\nits type is reserved".to_owned(),
                len: 4000,
            },
        );
        let journal = encode(&[text(b"{\"a\":1}"), bad, text(b"{\"b\":2}")]);
        assert_eq!(journal.iter().filter(|b| **b == b'\n').count(), 3);
        let back = read_back(&journal);
        assert_eq!(back.len(), 3);
        assert_eq!(back[1].own_bytes(), raw);
        match &back[1].kind {
            LineKind::Bad {
                number,
                reason,
                len,
                ..
            } => {
                assert_eq!((*number, *len), (2, 4000));
                assert_eq!(reason, "not a record: its type is reserved");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(back[2].own_bytes(), b"{\"b\":2}");
    }

    #[test]
    fn the_longest_line_holds_a_bad_record_of_max_line_bytes() {
        let bad = Line::own(
            Bytes::from(vec![0xc1; 5000]),
            LineKind::Bad {
                number: 0,
                end: 0,
                reason: "x".repeat(5000),
                len: 5000,
            },
        );
        let encoded = encode(&[bad]);
        assert!(encoded.len() <= longest_line(5000), "{}", encoded.len());
    }

    #[test]
    fn lines_cut_in_one_piece_are_written_as_encode_writes_them() {
        let lines = [
            text(b"\0first starts with NUL"),
            text(b"{\"a\":1}"),
            text(b""),
            text(b"\0\0two"),
            text(b"a NUL \0 inside"),
        ];
        let mut joined = Vec::new();
        for line in &lines {
            joined.extend_from_slice(line.own_bytes());
            joined.push(b'\n');
        }
        let encoded = encode_text(Bytes::from(joined.clone()));
        assert_eq!(encoded, encode(&lines));
        let back = read_back(&encoded);
        let back: Vec<_> = back.iter().map(Line::own_bytes).collect();
        let sent: Vec<_> = lines.iter().map(Line::own_bytes).collect();
        assert_eq!(back, sent);
        // Without a NUL byte, the same bytes: no copy.
        let plain = Bytes::from_static(b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(encode_text(plain.clone()).as_ptr(), plain.as_ptr());
    }

    #[test]
    fn a_damaged_marked_line_is_kept_whole() {
        let line = text(b"\0garbage");
        assert_eq!(decode(line.clone(), &[]).bytes, line.bytes);
        let line = text(b"\0oversized x y");
        assert_eq!(decode(line.clone(), &[]).bytes, line.bytes);
    }
}
