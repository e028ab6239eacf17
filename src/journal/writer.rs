//! The journal's writer: one thread per journal, so that no write or fsync ever runs on
//! an async worker.
//!
//! The loop, in one paragraph: wait for appends (with `interval`, at most until the
//! written bytes are 100 ms old); take every append queued meanwhile (one group); write
//! each to the active segment with one `pwrite`, starting a new segment first when it
//! would pass `journal_segment_bytes`; with `always`, or when an append of the group asks
//! for it (an acknowledging source's), fsync; then publish the segment's new length to the
//! tail and answer the group. A new segment is created `O_EXCL`, and its
//! folder fsynced, before anything is written to it; the segment it replaces is fsynced
//! first, so a sealed segment is always on the disk whole.
//!
//! A write that fails (the disk is full, or any other error) is cut back off the segment
//! and tried again, after 50 ms doubling up to 1 s, until it succeeds: the appenders wait,
//! so the source stops reading, and TCP pushes back to the shipper. The first failure is
//! logged with its reason, and so is the recovery. A full disk also seals the active
//! segment, so that once its lines are delivered it can be deleted and give the space
//! back. Only after shutdown is a write given up, 2 s after it began, its lines reported
//! lost by the source.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Fsync, JournalSpec, NotWritten, Request, Segments};

/// With `journal_fsync = "interval"`: the longest written bytes wait for their fsync.
const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// At most this many bytes of appends are written between two answers.
const GROUP_BYTES: usize = 8 << 20;
const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(1);
/// After shutdown, how long a write may keep failing before it is given up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(2);

/// The writer thread of a journal; it ends once every [`super::Appender`] is gone.
#[derive(Debug)]
pub(crate) struct Writer(JoinHandle<()>);

impl Writer {
    pub(super) fn spawn(
        segments: Segments,
        spec: &JournalSpec,
        next_seq: u64,
        stop: CancellationToken,
    ) -> std::io::Result<(Writer, Sender<Request>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let state = WriteLoop::new(segments, spec, next_seq, stop);
        let thread = std::thread::Builder::new()
            .name(format!("journal {}", state.segments.source()))
            .spawn(move || state.run(&rx))?;
        Ok((Writer(thread), tx))
    }

    /// Waits for the writer to finish: every append written and fsynced, every segment
    /// sealed. Re-raises its panic.
    pub(crate) async fn finish(self) {
        let joined = tokio::task::spawn_blocking(move || self.0.join()).await;
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(e) => crate::topology::propagate_panic(Err(e)),
        }
    }
}

/// The segment being written.
struct Active {
    seq: u64,
    file: File,
    /// Bytes written whole; a failed write is cut back to this.
    len: u64,
    /// Bytes written since the last fsync.
    unsynced: bool,
}

struct WriteLoop {
    segments: Segments,
    fsync: Fsync,
    segment_bytes: u64,
    next_seq: u64,
    active: Option<Active>,
    synced_at: Instant,
    /// Bytes written since the last [`WriteLoop::publish`]: still counted as queued.
    unpublished: u64,
    /// A write is failing (logged once until it succeeds).
    failing: bool,
    stop: CancellationToken,
}

impl WriteLoop {
    fn new(segments: Segments, spec: &JournalSpec, next_seq: u64, stop: CancellationToken) -> Self {
        WriteLoop {
            segments,
            fsync: spec.fsync,
            segment_bytes: spec.segment_bytes,
            next_seq,
            active: None,
            synced_at: Instant::now(),
            unpublished: 0,
            failing: false,
            stop,
        }
    }

    fn run(mut self, requests: &Receiver<Request>) {
        loop {
            let first = match self.next_sync() {
                Some(wait) => match requests.recv_timeout(wait) {
                    Ok(request) => request,
                    Err(RecvTimeoutError::Timeout) => {
                        let _ = self.sync(); // logged; tried again at the next interval
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match requests.recv() {
                    Ok(request) => request,
                    Err(_) => break,
                },
            };
            let mut group = vec![first];
            let mut bytes = group[0].bytes.len();
            while bytes < GROUP_BYTES {
                let Ok(request) = requests.try_recv() else {
                    break;
                };
                bytes += request.bytes.len();
                group.push(request);
            }
            self.write_group(group);
        }
        self.close();
    }

    /// How long until the written bytes must be fsynced (`interval`); `None`: nothing waits.
    fn next_sync(&self) -> Option<Duration> {
        let unsynced = self.active.as_ref().is_some_and(|a| a.unsynced);
        unsynced.then(|| SYNC_INTERVAL.saturating_sub(self.synced_at.elapsed()))
    }

    /// Writes each append of `group` (giving up only after shutdown), makes them durable
    /// as `journal_fsync` says, publishes them to the tail and answers their appenders.
    fn write_group(&mut self, group: Vec<Request>) {
        let mut results = Vec::with_capacity(group.len());
        let mut written = 0;
        for request in &group {
            let result = self.write(&request.bytes);
            if result.is_err() {
                self.segments.lock().queued -= request.bytes.len() as u64;
                tracing::error!(source = %self.segments.source(), lines = request.lines, "lines lost at shutdown: the journal could not be written");
            } else {
                written += request.lines as u64;
            }
            results.push(result);
        }
        self.segments.lock().journaled += written;
        let asked = group.iter().any(|r| r.sync);
        let synced = match self.fsync {
            _ if asked => self.sync_until_done(),
            Fsync::Always => self.sync_until_done(),
            Fsync::Interval if self.synced_at.elapsed() >= SYNC_INTERVAL => self.sync().is_ok(),
            Fsync::Interval => false,
        };
        self.publish();
        for (request, result) in group.into_iter().zip(results) {
            let Request {
                bytes, sync, done, ..
            } = request;
            // Dropped before the answer: the appender's next read reuses its buffer.
            drop(bytes);
            // An append that asked for its fsync is not answered as done without it.
            let result = if sync && !synced {
                Err(NotWritten)
            } else {
                result
            };
            let _ = done.send(result);
        }
    }

    /// Appends `bytes` to the active segment, trying again until it works (see the
    /// module's doc).
    fn write(&mut self, bytes: &[u8]) -> Result<(), NotWritten> {
        let mut wait = FIRST_RETRY;
        let mut stopped_at = None;
        loop {
            let error = match self.try_write(bytes) {
                Ok(()) => {
                    self.recovered();
                    return Ok(());
                }
                Err(e) => e,
            };
            if !std::mem::replace(&mut self.failing, true) {
                tracing::error!(source = %self.segments.source(), dir = %self.segments.dir().display(), error = %error, "cannot write the journal; the source stops reading until it can (nothing it read is lost)");
            }
            if error.raw_os_error() == Some(libc::ENOSPC) {
                self.seal_if_written();
            }
            if self.stop.is_cancelled() {
                let since = *stopped_at.get_or_insert_with(Instant::now);
                if since.elapsed() >= GIVE_UP_AFTER {
                    return Err(NotWritten);
                }
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(LAST_RETRY);
        }
    }

    fn try_write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let full = self
            .active
            .as_ref()
            .is_some_and(|a| a.len > 0 && a.len + bytes.len() as u64 > self.segment_bytes);
        if full {
            self.seal();
        }
        if self.active.is_none() {
            self.start_segment()?;
        }
        let active = self.active.as_mut().expect("started above");
        crate::failpoint::hit("journal-write");
        if let Err(e) = active.file.write_all_at(bytes, active.len) {
            // Whatever part was written goes, so that the retry (or the next append)
            // follows the last whole line.
            let _ = active.file.set_len(active.len);
            return Err(e);
        }
        active.len += bytes.len() as u64;
        active.unsynced = true;
        self.unpublished += bytes.len() as u64;
        Ok(())
    }

    fn recovered(&mut self) {
        if std::mem::replace(&mut self.failing, false) {
            tracing::info!(source = %self.segments.source(), "the journal is written again; the source reads again");
        }
    }

    /// Creates the next segment (its folder fsynced, so that it survives a power loss)
    /// and makes it the active one.
    fn start_segment(&mut self) -> std::io::Result<()> {
        let seq = self.next_seq;
        let path = self.segments.path(seq);
        let file = crate::data_dir::create_new(&path)?;
        if let Err(e) = File::open(self.segments.dir()).and_then(|dir| dir.sync_all()) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.next_seq += 1;
        let mut state = self.segments.lock();
        state.segments.insert(seq, 0);
        state.active = Some(seq);
        drop(state);
        self.active = Some(Active {
            seq,
            file,
            len: 0,
            unsynced: false,
        });
        Ok(())
    }

    /// Seals the active segment if it holds anything (after a full disk).
    fn seal_if_written(&mut self) {
        if self.active.as_ref().is_some_and(|a| a.len > 0) {
            self.seal();
        }
    }

    /// Fsyncs the active segment and seals it: the tail may read it to its end, and delete
    /// it once every sink passed it.
    fn seal(&mut self) {
        let _ = self.sync();
        self.publish();
        if let Some(active) = self.active.take() {
            let mut state = self.segments.lock();
            if state.active == Some(active.seq) {
                state.active = None;
            }
        }
        self.segments.nudge().nudge();
    }

    /// Fsyncs what was written to the active segment; a failure is logged, and the bytes
    /// stay to be fsynced again.
    fn sync(&mut self) -> std::io::Result<()> {
        self.synced_at = Instant::now();
        let Some(active) = self.active.as_mut().filter(|a| a.unsynced) else {
            return Ok(());
        };
        let synced = active.file.sync_data();
        match &synced {
            Ok(()) => active.unsynced = false,
            Err(e) => {
                tracing::error!(source = %self.segments.source(), error = %e, "cannot fsync the journal; will try again")
            }
        }
        synced
    }

    /// With `always`, or for an append that asks for it: fsyncs, trying again until it
    /// works (or, after shutdown, for [`GIVE_UP_AFTER`]): no such append is answered
    /// before its bytes are on the disk. Returns whether they are.
    fn sync_until_done(&mut self) -> bool {
        let (mut wait, started) = (FIRST_RETRY, Instant::now());
        while self.sync().is_err() {
            if self.stop.is_cancelled() && started.elapsed() >= GIVE_UP_AFTER {
                return false;
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(LAST_RETRY);
        }
        true
    }

    /// Lets the tail read what was written, and counts it on the disk.
    fn publish(&mut self) {
        if let Some(active) = &self.active {
            let mut state = self.segments.lock();
            if let Some(len) = state.segments.get_mut(&active.seq) {
                *len = active.len;
            }
            state.queued -= self.unpublished;
            state.on_disk += self.unpublished;
            self.unpublished = 0;
        }
        self.segments.nudge().nudge();
    }

    /// Every appender is gone: fsyncs and seals the last segment.
    fn close(&mut self) {
        self.seal();
        self.segments.lock().finished = true;
        self.segments.nudge().nudge();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::sync::oneshot;

    use super::*;

    /// With `journal_fsync = "interval"`, an append that asks for its fsync (what `fluent`
    /// and `http` acknowledge) is on the disk before it is answered.
    #[test]
    fn an_append_that_asks_for_it_is_fsynced_before_it_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path().join("j"), "s", 1 << 20).unwrap();
        let spec = JournalSpec {
            segment_bytes: 1 << 20,
            max_bytes: 1 << 20,
            fsync: Fsync::Interval,
        };
        let mut writer = WriteLoop::new(segments.clone(), &spec, 1, CancellationToken::new());
        let bytes = Bytes::from_static(b"{\"a\":1}\n");
        segments.lock().queued += bytes.len() as u64; // as `Appender::append` admits it
        let (done, mut answer) = oneshot::channel();
        writer.write_group(vec![Request {
            bytes,
            lines: 1,
            sync: true,
            done,
        }]);
        assert_eq!(answer.try_recv(), Ok(Ok(())), "answered");
        let active = writer.active.as_ref().expect("a segment was started");
        assert!(!active.unsynced, "answered before its fsync");
    }
}
