//! The spill file of an older flaghook (`data_dir/spill/<sink>.jsonl`: events from TCP and
//! stdin not delivered before a shutdown, one per line), moved once into a journal of its
//! own, `journal/spill.<sink>/`, which only that sink reads. A source name cannot hold a
//! `.`, so that journal never meets a source's.
//!
//! The file is moved with one rename (data_dir is one file system): a crash leaves it in
//! one place or the other, never in both, and no byte is copied however large it grew.

use std::path::{Path, PathBuf};

use crate::data_dir::DataDir;

/// The name of the journal that holds what `sink` spilled.
pub(crate) fn spill_journal(sink: &str) -> String {
    format!("spill.{sink}")
}

/// Whether `name` is [`spill_journal`]'s.
pub(crate) fn is_spill_journal(name: &str) -> bool {
    name.starts_with("spill.")
}

/// Moves `sink`'s leftover spill file, if any, into its spill journal as a sealed segment
/// numbered after every segment there. Returns the journal's folder when it holds segments
/// to deliver (moved now, or left by an earlier run). A spill file that is a symlink or not
/// a regular file is logged and left alone: nothing in data_dir is followed.
pub(crate) fn adopt_spill_file(data_dir: &DataDir, sink: &str) -> Option<PathBuf> {
    let journal = data_dir.journal(&spill_journal(sink));
    let spill = data_dir.root().join("spill").join(format!("{sink}.jsonl"));
    match std::fs::symlink_metadata(&spill) {
        Ok(meta) if meta.file_type().is_file() => move_in(&spill, &journal, sink),
        Ok(_) => {
            tracing::error!(sink, path = %spill.display(), "the spill file of an older flaghook is a symlink or not a regular file; flaghook does not follow links in data_dir, and leaves it alone (remove it)");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::error!(sink, path = %spill.display(), error = %e, "cannot read the spill file of an older flaghook; it stays where it is");
        }
    }
    // An empty `spill` folder is a leftover too.
    let _ = std::fs::remove_dir(data_dir.root().join("spill"));
    has_segments(&journal).then_some(journal)
}

fn move_in(spill: &Path, journal: &Path, sink: &str) {
    let moved = crate::data_dir::create_dir(journal).and_then(|()| {
        let seq = last_segment(journal).map_or(1, |s| s + 1);
        let to = journal.join(super::segment_name(seq));
        std::fs::rename(spill, &to)?;
        std::fs::File::open(journal)?.sync_all()?;
        if let Some(folder) = spill.parent() {
            std::fs::File::open(folder)?.sync_all()?;
        }
        Ok(to)
    });
    match moved {
        Ok(to) => {
            tracing::info!(sink, from = %spill.display(), to = %to.display(), "moved the spill file of an older flaghook into the journal; its events are sent from there");
        }
        Err(e) => {
            tracing::error!(sink, path = %spill.display(), error = %e, "cannot move the spill file of an older flaghook into the journal; it stays where it is");
        }
    }
}

fn segments(journal: &Path) -> impl Iterator<Item = u64> {
    std::fs::read_dir(journal)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(super::segment_seq))
}

fn last_segment(journal: &Path) -> Option<u64> {
    segments(journal).max()
}

fn has_segments(journal: &Path) -> bool {
    segments(journal).next().is_some()
}

/// Once every segment of a spill journal was delivered (and deleted): removes the
/// journal's folder and its checkpoint, so that nothing of the spill file is left.
pub(crate) fn remove_if_empty(journal: &Path, checkpoint: &Path) {
    if std::fs::remove_dir(journal).is_ok() {
        let _ = std::fs::remove_file(checkpoint);
    }
}
