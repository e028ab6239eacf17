//! Durable file positions.
//!
//! Invariant: the offset saved for a file is one up to which every line was delivered (2xx)
//! or dead-lettered by **every** sink reading the source. Offsets never move on reading,
//! only on acknowledgement, so a crash at any moment re-reads at most what was in flight.
//! And the fingerprint saved with an offset covers every byte before it (up to
//! [`HEAD_BYTES`]): the tail takes it again after each read, before the lines go out.
//!
//! Two files hold them, so that saving a position after every delivered batch costs one
//! `pwrite`, not two fsyncs and a rename on the sink's path:
//! - the **position log** (`data_dir/checkpoints/<source>.positions`): after each delivered
//!   batch, the positions that changed are appended as one JSON line holding every file's
//!   position, numbered (`seq`), with one `pwrite`. Once written, it survives the
//!   process (a `kill -9`, an OOM kill): the page cache holds it.
//! - the **checkpoint** (`data_dir/checkpoints/<source>.json`): about once a second (and
//!   at shutdown) the positions are written there atomically (a temp file, fsync, rename,
//!   fsync of the folder), with the number of the last record they include, and the log is
//!   emptied. Only this write is fsynced: a power loss can lose the log's last second,
//!   whose deliveries are then sent again, never skipped.
//!
//! At start, the checkpoint is read, then the log: its last whole record numbered past the
//! checkpoint's wins (a record a crash cut short does not parse and is passed over). A
//! corrupt or empty checkpoint is reported and treated as missing, never a crash loop.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

/// The first bytes of a file that identify it, with its device and inode. Small files are
/// fingerprinted too (over the bytes they have), so a short file replaced by another is
/// noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub dev: u64,
    pub ino: u64,
    pub head_len: u64,
    pub head_hash: u64,
}

/// How many leading bytes identify a file's content.
pub const HEAD_BYTES: u64 = 1024;

impl Fingerprint {
    /// Reads the fingerprint of an open file.
    pub fn of(file: &File) -> io::Result<Self> {
        let meta = file.metadata()?;
        let head_len = meta.len().min(HEAD_BYTES);
        Ok(Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            head_len,
            head_hash: head_hash(file, head_len)?,
        })
    }

    /// Whether it covers fewer bytes than it could, with `read` bytes of the file read:
    /// fewer than [`HEAD_BYTES`], and fewer than were read.
    pub fn is_short(&self, read: u64) -> bool {
        self.head_len < HEAD_BYTES && read > self.head_len
    }

    /// Whether `file` still starts with the bytes this fingerprint was taken over.
    pub fn matches(&self, file: &File) -> io::Result<bool> {
        let meta = file.metadata()?;
        if meta.dev() != self.dev || meta.ino() != self.ino || meta.len() < self.head_len {
            return Ok(false);
        }
        Ok(head_hash(file, self.head_len)? == self.head_hash)
    }
}

fn head_hash(file: &File, len: u64) -> io::Result<u64> {
    let mut head = vec![0u8; len as usize];
    file.read_exact_at(&mut head, 0)?;
    let digest = Sha256::digest(&head);
    Ok(u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")))
}

/// One file's saved position.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    #[serde(flatten)]
    pub fingerprint: Fingerprint,
    pub offset: u64,
    /// Where the file was last seen (for people reading the checkpoint; not used to match).
    pub path: PathBuf,
}

impl Saved {
    /// Whether `file` (of `len` bytes) is the content saved, up to the offset.
    fn resumes(&self, file: &File, len: u64) -> bool {
        let covered = self.fingerprint.head_len >= self.offset.min(HEAD_BYTES);
        covered && self.fingerprint.matches(file).unwrap_or(false) && self.offset <= len
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedFile {
    version: u32,
    /// The number of the last position-log record this holds (0 in a checkpoint written
    /// before the log existed: every record is newer).
    #[serde(default)]
    seq: u64,
    files: Vec<Saved>,
}

const VERSION: u32 = 1;

/// The positions of one file source, acknowledged by the sinks that read it.
#[derive(Debug)]
pub struct Checkpointer {
    path: PathBuf,
    /// A saved position is resumed only at the same path too: set for journals, whose
    /// segment names are never reused (see `crate::journal`), so that a segment that gets
    /// the inode of a deleted one, starting with the same lines, is not taken for it.
    match_paths: bool,
    /// What was on disk at start, by (device, inode); an entry is taken by the first file
    /// opened at its inode (see [`Checkpointer::resume_offset`]).
    loaded: Mutex<HashMap<(u64, u64), Saved>>,
    state: Mutex<State>,
    /// Only the `CheckpointWriter` writes it.
    log: Mutex<PositionLog>,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<u64, Tracked>,
    /// How many sinks read the source (one [`AckHandle`] each); an offset moves when all of
    /// them acknowledged it.
    readers: usize,
    /// Something changed since the last record or checkpoint.
    dirty: bool,
    /// The number of the last record made (in the log or the checkpoint).
    seq: u64,
}

/// The position log (see the module's overview), beside the checkpoint.
#[derive(Debug)]
struct PositionLog {
    path: PathBuf,
    /// Opened at the first append, with the offset of its end.
    file: Option<(File, u64)>,
    /// Records were appended since the checkpoint was last written: it does not hold them.
    unsaved: bool,
}

/// One sink's right to acknowledge a file source's lines, given by
/// [`Checkpointer::subscribe`]. The sink holds it; nothing else needs to know its slot.
#[derive(Debug, Clone)]
pub struct AckHandle {
    checkpointer: Arc<Checkpointer>,
    slot: usize,
}

impl AckHandle {
    /// This sink delivered or dead-lettered everything of file `id` before `offset`.
    pub fn ack(&self, id: u64, offset: u64) {
        self.checkpointer.ack(id, self.slot, offset);
    }
}

#[derive(Debug)]
struct Tracked {
    fingerprint: Fingerprint,
    path: PathBuf,
    /// Acknowledged offset, per reading sink.
    acked: Vec<u64>,
}

impl Checkpointer {
    /// Loads `path` if it exists, and the position log beside it. A damaged checkpoint is
    /// reported and ignored.
    pub fn load(path: PathBuf) -> Self {
        let (mut seq, mut files) = match crate::data_dir::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<SavedFile>(&bytes) {
                Ok(saved) if saved.version == VERSION => (saved.seq, saved.files),
                Ok(saved) => {
                    tracing::warn!(path = %path.display(), version = saved.version, "checkpoint file has an unknown version; ignoring it, files are read as if new");
                    (0, Vec::new())
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "checkpoint file is damaged (empty or not valid); ignoring it, files are read as if new");
                    (0, Vec::new())
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, Vec::new()),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read checkpoint file; files are read as if new");
                (0, Vec::new())
            }
        };
        let log_path = path.with_extension(LOG_EXTENSION);
        if let Some(newer) = last_record(&log_path, seq) {
            (seq, files) = (newer.seq, newer.files);
        }
        let loaded = files
            .into_iter()
            .map(|s| ((s.fingerprint.dev, s.fingerprint.ino), s))
            .collect();
        Checkpointer {
            path,
            match_paths: false,
            loaded: Mutex::new(loaded),
            state: Mutex::new(State {
                seq,
                ..State::default()
            }),
            // Records of an earlier run stay until the first checkpoint write: every new
            // record and checkpoint is numbered past them.
            log: Mutex::new(PositionLog {
                path: log_path,
                file: None,
                unsaved: false,
            }),
        }
    }

    /// [`Checkpointer::load`], for a journal's segments: a position is resumed only in the
    /// segment of the same name.
    pub fn load_for_journal(path: PathBuf) -> Self {
        Checkpointer {
            match_paths: true,
            ..Checkpointer::load(path)
        }
    }

    /// Where the checkpoint is saved.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The paths the saved positions name (a journal numbers its new segments after them).
    pub fn saved_paths(&self) -> Vec<PathBuf> {
        let loaded = self.loaded.lock().expect("checkpoint lock");
        loaded.values().map(|s| s.path.clone()).collect()
    }

    /// Adds a reader: offsets now also wait for the acknowledgements of the returned
    /// handle's holder. Every reader subscribes before the source starts reading.
    pub fn subscribe(self: &Arc<Self>) -> AckHandle {
        let mut state = self.state.lock().expect("checkpoint lock");
        debug_assert!(state.files.is_empty(), "subscribe before reading");
        state.readers += 1;
        AckHandle {
            checkpointer: self.clone(),
            slot: state.readers - 1,
        }
    }

    /// The saved position for `file`, if one was saved for this very content.
    ///
    /// The entry is used once: the file opened at its inode either is the saved file or
    /// shows that it is gone, and a later file that gets the inode back is new. A saved
    /// fingerprint that does not cover every byte before the offset (up to [`HEAD_BYTES`])
    /// cannot tell this content from other content starting alike: the file is read from
    /// the start (again, rather than skipping lines that may be new).
    pub fn resume_offset(&self, file: &File, path: &Path) -> Option<u64> {
        let meta = file.metadata().ok()?;
        let saved = self
            .loaded
            .lock()
            .expect("checkpoint lock")
            .remove(&(meta.dev(), meta.ino()))?;
        let here = !self.match_paths || saved.path == path;
        if here && saved.resumes(file, meta.len()) {
            return Some(saved.offset);
        }
        tracing::info!(
            path = %path.display(),
            saved_offset = saved.offset,
            size = meta.len(),
            fingerprinted = saved.fingerprint.head_len,
            "file was replaced or truncated since its checkpoint, or its checkpoint cannot tell; reading it from the start"
        );
        None
    }

    /// What [`Checkpointer::resume_offset`] would answer for `file`, without using the
    /// entry or logging: for `flaghook validate`.
    pub fn peek_offset(&self, file: &File) -> Option<u64> {
        let meta = file.metadata().ok()?;
        let loaded = self.loaded.lock().expect("checkpoint lock");
        let saved = loaded.get(&(meta.dev(), meta.ino()))?;
        saved.resumes(file, meta.len()).then_some(saved.offset)
    }

    /// Starts tracking file `id`, whose lines before `offset` need no delivery.
    pub fn register(&self, id: u64, fingerprint: Fingerprint, path: &Path, offset: u64) {
        let mut state = self.state.lock().expect("checkpoint lock");
        let acked = vec![offset; state.readers.max(1)];
        state.files.insert(
            id,
            Tracked {
                fingerprint,
                path: path.to_owned(),
                acked,
            },
        );
        state.dirty = true;
    }

    /// The file grew past its short fingerprint, or moved.
    pub fn refresh(&self, id: u64, fingerprint: Fingerprint, path: &Path) {
        let mut state = self.state.lock().expect("checkpoint lock");
        if let Some(t) = state.files.get_mut(&id) {
            t.fingerprint = fingerprint;
            t.path = path.to_owned();
        }
        state.dirty = true;
    }

    /// Stops tracking `id` (drained and gone, or replaced by a new generation).
    pub fn forget(&self, id: u64) {
        let mut state = self.state.lock().expect("checkpoint lock");
        state.files.remove(&id);
        state.dirty = true;
    }

    /// The reader in `slot` delivered or dead-lettered everything of file `id` before
    /// `offset`.
    fn ack(&self, id: u64, slot: usize, offset: u64) {
        let mut state = self.state.lock().expect("checkpoint lock");
        if let Some(acked) = state.files.get_mut(&id).and_then(|t| t.acked.get_mut(slot)) {
            if offset > *acked {
                *acked = offset;
                state.dirty = true;
            }
        }
    }

    /// The offset every reader acknowledged for `id`.
    pub fn committed(&self, id: u64) -> Option<u64> {
        let state = self.state.lock().expect("checkpoint lock");
        state
            .files
            .get(&id)
            .map(|t| t.acked.iter().copied().min().unwrap_or(0))
    }

    /// Each tracked file's path and the offset every reader acknowledged (for its lag).
    pub fn positions(&self) -> Vec<(PathBuf, u64)> {
        let state = self.state.lock().expect("checkpoint lock");
        let committed = |t: &Tracked| t.acked.iter().copied().min().unwrap_or(0);
        state
            .files
            .values()
            .map(|t| (t.path.clone(), committed(t)))
            .collect()
    }

    /// The offset every reader acknowledged for the file tracked at `path`, if one is.
    pub fn acked_at(&self, path: &Path) -> Option<u64> {
        let state = self.state.lock().expect("checkpoint lock");
        let tracked = state.files.values().find(|t| t.path == path)?;
        Some(tracked.acked.iter().copied().min().unwrap_or(0))
    }

    /// Every file's position, as a record numbered past the last one.
    fn snapshot(&self) -> SavedFile {
        let mut state = self.state.lock().expect("checkpoint lock");
        state.dirty = false;
        state.seq += 1;
        let files = state.files.values().map(|t| Saved {
            fingerprint: t.fingerprint,
            offset: t.acked.iter().copied().min().unwrap_or(0),
            path: t.path.clone(),
        });
        SavedFile {
            version: VERSION,
            seq: state.seq,
            files: files.collect(),
        }
    }

    fn mark_dirty(&self) {
        self.state.lock().expect("checkpoint lock").dirty = true;
    }

    /// Appends the positions to the log if anything changed since the last record: one
    /// `pwrite` of one line. Only the `CheckpointWriter` calls it while the pipeline runs.
    pub(crate) fn append_if_dirty(&self) -> io::Result<()> {
        if !self.state.lock().expect("checkpoint lock").dirty {
            return Ok(());
        }
        let mut log = self.log.lock().expect("checkpoint log lock");
        let mut line = serde_json::to_vec(&self.snapshot()).expect("serializable");
        line.push(b'\n');
        let result = log.append(&line);
        if result.is_err() {
            self.mark_dirty();
        }
        result
    }

    /// Writes the checkpoint file (and empties the log) if anything changed since it was
    /// last written. Only the `CheckpointWriter` calls it while the pipeline runs.
    pub fn write_if_dirty(&self) -> io::Result<()> {
        let mut log = self.log.lock().expect("checkpoint log lock");
        if !self.state.lock().expect("checkpoint lock").dirty && !log.unsaved {
            return Ok(());
        }
        let saved = self.snapshot();
        let result = crate::data_dir::write_atomically(
            &self.path,
            &serde_json::to_vec(&saved).expect("serializable"),
        )
        // The checkpoint holds every record: a crash before the log is emptied leaves
        // records it numbers past.
        .and_then(|()| log.empty());
        if result.is_err() {
            self.mark_dirty();
        }
        result
    }
}

/// The position log's file name: `<source>.positions` beside `<source>.json`.
const LOG_EXTENSION: &str = "positions";

impl PositionLog {
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let (file, end) = match &mut self.file {
            Some(open) => open,
            None => {
                let file = crate::data_dir::open_write(&self.path)?;
                let end = file.metadata()?.len();
                self.file.insert((file, end))
            }
        };
        file.write_all_at(line, *end)?;
        *end += line.len() as u64;
        self.unsaved = true;
        Ok(())
    }

    /// Forgets every record: the checkpoint holds them (a log not opened in this run
    /// holds only records numbered before it).
    fn empty(&mut self) -> io::Result<()> {
        if let Some((file, end)) = &mut self.file {
            file.set_len(0)?;
            *end = 0;
        }
        self.unsaved = false;
        Ok(())
    }
}

/// The last whole record of the log at `path` numbered past `after`, if any. Records are
/// appended in order, so the last one that parses is the newest; a line a crash cut short
/// (or bytes a power loss left) does not parse and is passed over.
fn last_record(path: &Path, after: u64) -> Option<SavedFile> {
    let bytes = match crate::data_dir::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the position log; using the checkpoint alone");
            return None;
        }
    };
    bytes
        .split(|&b| b == b'\n')
        .rev()
        .filter_map(|line| serde_json::from_slice::<SavedFile>(line).ok())
        .find(|record| record.version == VERSION)
        .filter(|record| record.seq > after)
}

/// How often the checkpoint files are written (and the position logs emptied) while
/// something changed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The one writer of checkpoints and position logs: a thread that appends the positions
/// that changed to the logs when a sink asks (after it acknowledged a batch: see
/// [`Persist`]), writes every checkpoint file that changed about once a second, and a last
/// time once every [`Persist`] is gone, that is, after every sink has finished.
#[derive(Debug)]
pub(crate) struct CheckpointWriter(std::thread::JoinHandle<()>);

/// A sink's way to ask the [`CheckpointWriter`] to save what it acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct Persist(std_mpsc::Sender<oneshot::Sender<()>>);

impl Persist {
    /// Asks for every position that changed to be saved; the answer comes once they are in
    /// the position logs, where a crash of the process does not lose them (or once the
    /// write failed, which is logged and tried again later).
    pub(crate) fn request(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        // The writer outlives every `Persist`; if it panicked, `rx` tells.
        let _ = self.0.send(tx);
        rx
    }
}

impl CheckpointWriter {
    pub(crate) fn spawn(checkpointers: Vec<Arc<Checkpointer>>) -> io::Result<(Self, Persist)> {
        let (tx, rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("checkpoints".to_owned())
            .spawn(move || write_loop(&checkpointers, &rx))?;
        Ok((CheckpointWriter(thread), Persist(tx)))
    }

    /// Waits for the last write, which comes once every [`Persist`] is dropped. Err: the
    /// thread panicked, with the panic's payload.
    pub(crate) async fn finish(self) -> std::thread::Result<()> {
        tokio::task::spawn_blocking(move || self.0.join())
            .await
            .unwrap_or_else(|e| Err(Box::new(e.to_string())))
    }
}

/// Answers each request with one append per changed position log (one append answers
/// every request that came meanwhile); writes the checkpoint files every
/// [`CHECKPOINT_EVERY`], however often requests come.
fn write_loop(
    checkpointers: &[Arc<Checkpointer>],
    requests: &std_mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut next_write = Instant::now() + CHECKPOINT_EVERY;
    loop {
        let wait = next_write.saturating_duration_since(Instant::now());
        let first = match requests.recv_timeout(wait) {
            Ok(reply) => Some(reply),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let waiting: Vec<_> = first.into_iter().chain(requests.try_iter()).collect();
        if !waiting.is_empty() {
            append_all(checkpointers);
            for reply in waiting {
                let _ = reply.send(());
            }
        }
        if Instant::now() >= next_write {
            write_all(checkpointers);
            next_write = Instant::now() + CHECKPOINT_EVERY;
        }
    }
    write_all(checkpointers);
}

fn append_all(checkpointers: &[Arc<Checkpointer>]) {
    for cp in checkpointers {
        if let Err(e) = cp.append_if_dirty() {
            tracing::error!(error = %e, "cannot append to the position log; writing the checkpoint instead");
            if let Err(e) = cp.write_if_dirty() {
                tracing::error!(error = %e, "cannot write checkpoint; will try again");
            }
        }
    }
}

fn write_all(checkpointers: &[Arc<Checkpointer>]) {
    for cp in checkpointers {
        if let Err(e) = cp.write_if_dirty() {
            tracing::error!(error = %e, "cannot write checkpoint; will try again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn offsets_move_only_when_every_reader_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        fs::write(&log, b"one\ntwo\nthree\n").unwrap();
        let file = File::open(&log).unwrap();
        let cp_path = dir.path().join("cp.json");
        let cp = Arc::new(Checkpointer::load(cp_path.clone()));
        let (first, second) = (cp.subscribe(), cp.subscribe());
        cp.register(1, Fingerprint::of(&file).unwrap(), &log, 0);
        first.ack(1, 8);
        assert_eq!(cp.committed(1), Some(0));
        second.ack(1, 4);
        assert_eq!(cp.committed(1), Some(4));
        cp.write_if_dirty().unwrap();

        let again = Checkpointer::load(cp_path);
        assert_eq!(again.resume_offset(&file, &log), Some(4));
    }

    #[test]
    fn damaged_checkpoint_is_ignored_and_replaced_content_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let cp_path = dir.path().join("cp.json");
        for garbage in [&b""[..], b"{not json", b"\0\0\0"] {
            fs::write(&cp_path, garbage).unwrap();
            assert!(Checkpointer::load(cp_path.clone())
                .loaded
                .lock()
                .unwrap()
                .is_empty());
        }
        let log = dir.path().join("a.log");
        fs::write(&log, b"one\ntwo\n").unwrap();
        let cp = Arc::new(Checkpointer::load(cp_path.clone()));
        let reader = cp.subscribe();
        cp.register(
            1,
            Fingerprint::of(&File::open(&log).unwrap()).unwrap(),
            &log,
            0,
        );
        reader.ack(1, 8);
        cp.write_if_dirty().unwrap();
        // Same inode, other content (as after truncate-and-rewrite or inode reuse).
        fs::write(&log, b"uno\ndos\n").unwrap();
        let again = Checkpointer::load(cp_path);
        assert_eq!(again.resume_offset(&File::open(&log).unwrap(), &log), None);
    }

    /// A saved offset is resumed only where the saved fingerprint covers every byte before
    /// it, and only once: a later file at the same inode is new.
    #[test]
    fn an_offset_past_its_fingerprint_or_used_once_is_not_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let cp_path = dir.path().join("cp.json");
        let log = dir.path().join("a.log");
        fs::write(&log, b"{\"us").unwrap();
        let file = File::open(&log).unwrap();
        let cp = Arc::new(Checkpointer::load(cp_path.clone()));
        let reader = cp.subscribe();
        let short = Fingerprint::of(&file).unwrap();
        fs::write(&log, b"{\"user\":1}\n").unwrap();
        cp.register(1, short, &log, 0);
        reader.ack(1, 11);
        cp.write_if_dirty().unwrap();
        let again = Checkpointer::load(cp_path.clone());
        assert_eq!(
            again.resume_offset(&file, &log),
            None,
            "4 bytes cannot vouch for 11"
        );

        cp.refresh(1, Fingerprint::of(&file).unwrap(), &log);
        cp.write_if_dirty().unwrap();
        let again = Checkpointer::load(cp_path);
        assert_eq!(again.resume_offset(&file, &log), Some(11));
        assert_eq!(
            again.resume_offset(&file, &log),
            None,
            "taken by the first file"
        );
    }

    /// A sink's request costs one append to the position log, not a checkpoint write (two
    /// fsyncs and a rename): the checkpoint file waits for the writer's second. What was
    /// appended is what a restart resumes from.
    #[tokio::test]
    async fn a_request_appends_to_the_position_log_and_leaves_the_checkpoint_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        fs::write(&log, b"one\ntwo\nthree\n").unwrap();
        let file = File::open(&log).unwrap();
        let cp_path = dir.path().join("cp.json");
        let cp = Arc::new(Checkpointer::load(cp_path.clone()));
        let reader = cp.subscribe();
        cp.register(1, Fingerprint::of(&file).unwrap(), &log, 0);
        let (writer, persist) = CheckpointWriter::spawn(vec![cp.clone()]).unwrap();
        for offset in [4, 8] {
            reader.ack(1, offset);
            persist.request().await.unwrap();
            let again = Checkpointer::load(cp_path.clone());
            assert_eq!(again.resume_offset(&file, &log), Some(offset));
        }
        assert!(
            !cp_path.exists(),
            "the checkpoint file is written once a second, not per request"
        );
        drop(persist);
        writer.finish().await.unwrap();
        assert!(cp_path.exists(), "written at the end");
        let again = Checkpointer::load(cp_path.clone());
        assert_eq!(again.resume_offset(&file, &log), Some(8));
    }

    /// At start, the log's last whole record wins over the checkpoint when it is newer; a
    /// record cut short is passed over, and records older than the checkpoint are not used.
    #[test]
    fn the_last_whole_newer_record_of_the_position_log_wins() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        fs::write(&log, b"one\ntwo\nthree\n").unwrap();
        let file = File::open(&log).unwrap();
        let cp_path = dir.path().join("cp.json");
        let positions = cp_path.with_extension(LOG_EXTENSION);
        let cp = Arc::new(Checkpointer::load(cp_path.clone()));
        let reader = cp.subscribe();
        cp.register(1, Fingerprint::of(&file).unwrap(), &log, 0);
        reader.ack(1, 4);
        cp.write_if_dirty().unwrap();
        assert_eq!(fs::metadata(&positions).map(|m| m.len()).unwrap_or(0), 0);
        reader.ack(1, 8);
        cp.append_if_dirty().unwrap();
        let record = fs::read(&positions).unwrap();
        // A crash in the middle of the next append.
        reader.ack(1, 14);
        cp.append_if_dirty().unwrap();
        let whole = fs::read(&positions).unwrap();
        fs::write(&positions, &whole[..whole.len() - 9]).unwrap();
        let resumed =
            |cp_path: &Path| Checkpointer::load(cp_path.to_owned()).resume_offset(&file, &log);
        assert_eq!(
            resumed(&cp_path),
            Some(8),
            "the record cut short is passed over"
        );

        // The checkpoint is written; a crash before the log is emptied leaves its records,
        // older than the checkpoint.
        fs::write(&positions, &record).unwrap();
        cp.write_if_dirty().unwrap();
        fs::write(&positions, &record).unwrap();
        assert_eq!(resumed(&cp_path), Some(14), "the checkpoint is newer");
    }

    /// A sink's request is answered once the write is on the disk; the last write comes
    /// once every `Persist` is gone.
    #[tokio::test]
    async fn the_writer_saves_on_request_and_last_when_every_sink_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        fs::write(&log, b"one\ntwo\n").unwrap();
        let file = File::open(&log).unwrap();
        let cp_path = dir.path().join("cp.json");
        let cp = Arc::new(Checkpointer::load(cp_path.clone()));
        let reader = cp.subscribe();
        cp.register(1, Fingerprint::of(&file).unwrap(), &log, 0);
        let (writer, persist) = CheckpointWriter::spawn(vec![cp.clone()]).unwrap();
        let saved = || Checkpointer::load(cp_path.clone()).resume_offset(&file, &log);

        reader.ack(1, 4);
        persist.request().await.unwrap();
        assert_eq!(saved(), Some(4));
        reader.ack(1, 8);
        drop(persist);
        writer.finish().await.unwrap();
        assert_eq!(saved(), Some(8));
    }
}
