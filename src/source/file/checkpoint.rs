//! Durable file positions.
//!
//! Invariant: the offset saved for a file is one up to which every line was delivered (2xx)
//! or dead-lettered by **every** sink reading the source. Offsets never move on reading,
//! only on acknowledgement, so a crash at any moment re-reads at most what was in flight.
//! And the fingerprint saved with an offset covers every byte before it (up to
//! [`HEAD_BYTES`]): the tail takes it again after each read, before the lines go out.
//!
//! The file (`data_dir/checkpoints/<source>.json`) is written atomically: a temp file,
//! fsync, rename, fsync of the folder. A corrupt or empty file is reported and treated as
//! missing, never a crash loop.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

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
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<u64, Tracked>,
    /// How many sinks read the source (one [`AckHandle`] each); an offset moves when all of
    /// them acknowledged it.
    readers: usize,
    dirty: bool,
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
    /// Loads `path` if it exists. A damaged file is reported and ignored.
    pub fn load(path: PathBuf) -> Self {
        let loaded = match crate::data_dir::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<SavedFile>(&bytes) {
                Ok(saved) if saved.version == VERSION => saved.files,
                Ok(saved) => {
                    tracing::warn!(path = %path.display(), version = saved.version, "checkpoint file has an unknown version; ignoring it, files are read as if new");
                    Vec::new()
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "checkpoint file is damaged (empty or not valid); ignoring it, files are read as if new");
                    Vec::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read checkpoint file; files are read as if new");
                Vec::new()
            }
        };
        let loaded = loaded
            .into_iter()
            .map(|s| ((s.fingerprint.dev, s.fingerprint.ino), s))
            .collect();
        Checkpointer {
            path,
            match_paths: false,
            loaded: Mutex::new(loaded),
            state: Mutex::default(),
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

    /// Writes the file if anything changed since the last write. Only the
    /// `CheckpointWriter` calls it while the pipeline runs.
    pub fn write_if_dirty(&self) -> io::Result<()> {
        let saved = {
            let mut state = self.state.lock().expect("checkpoint lock");
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            let files = state.files.values().map(|t| Saved {
                fingerprint: t.fingerprint,
                offset: t.acked.iter().copied().min().unwrap_or(0),
                path: t.path.clone(),
            });
            SavedFile {
                version: VERSION,
                files: files.collect(),
            }
        };
        let result = crate::data_dir::write_atomically(
            &self.path,
            &serde_json::to_vec(&saved).expect("serializable"),
        );
        if result.is_err() {
            self.state.lock().expect("checkpoint lock").dirty = true;
        }
        result
    }
}

/// How often checkpoints are written while something changed and no sink asked.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The one writer of checkpoint files: a thread that writes every checkpoint that changed
/// when a sink asks (after it acknowledged a batch: see [`Persist`]), at least once a second
/// while something changed (files found, moved or forgotten by the sources), and a last
/// time once every [`Persist`] is gone, that is, after every sink has finished.
#[derive(Debug)]
pub(crate) struct CheckpointWriter(std::thread::JoinHandle<()>);

/// A sink's way to ask the [`CheckpointWriter`] for a write.
#[derive(Debug, Clone)]
pub(crate) struct Persist(std_mpsc::Sender<oneshot::Sender<()>>);

impl Persist {
    /// Asks for every checkpoint that changed to be written; the answer comes once they
    /// were (or the write failed, which is logged and tried again later).
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

fn write_loop(
    checkpointers: &[Arc<Checkpointer>],
    requests: &std_mpsc::Receiver<oneshot::Sender<()>>,
) {
    loop {
        let first = match requests.recv_timeout(CHECKPOINT_EVERY) {
            Ok(reply) => Some(reply),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // One write answers every request that came meanwhile.
        let waiting: Vec<_> = first.into_iter().chain(requests.try_iter()).collect();
        write_all(checkpointers);
        for reply in waiting {
            let _ = reply.send(());
        }
    }
    write_all(checkpointers);
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
