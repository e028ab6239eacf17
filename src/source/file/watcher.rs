//! Wake-ups for the tail loop: inotify (through the `notify` crate) on the folders the
//! include globs point into, so that an idle tail costs nothing and new lines are read as
//! soon as they are written. When a folder cannot be watched (it does not exist yet, or
//! the inotify limits are reached), the loop falls back to polling.
//!
//! The tail loop runs on a thread of its own, so it waits here without the async runtime:
//! on a [`Nudge`], which inotify's thread and the source's shutdown both give.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};

/// Ends the tail loop's current wait, or its next one if it is not waiting: a nudge given
/// while the loop reads is kept, so a change is never missed between a read and a wait.
#[derive(Debug, Clone, Default)]
pub struct Nudge(Arc<(Mutex<bool>, Condvar)>);

impl Nudge {
    pub fn nudge(&self) {
        let (nudged, wake) = &*self.0;
        *nudged.lock().expect("nudge lock") = true;
        wake.notify_one();
    }

    /// Blocks until nudged, or at most `timeout`.
    fn wait(&self, timeout: Duration) {
        let (nudged, wake) = &*self.0;
        let guard = nudged.lock().expect("nudge lock");
        let (mut nudged, _) = wake
            .wait_timeout_while(guard, timeout, |nudged| !*nudged)
            .expect("nudge lock");
        *nudged = false;
    }
}

/// Nudges the tail loop on changes in the watched folders.
pub struct Wakeup {
    nudge: Nudge,
    /// Kept alive for as long as the loop runs; `None` when nothing could be watched.
    watcher: Option<notify::RecommendedWatcher>,
}

impl Wakeup {
    /// Watches the folder of every include pattern; changes give `nudge`.
    pub fn new(source: &str, include: &[String], nudge: Nudge) -> Self {
        let waker = nudge.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            // Opening a file or listing a folder (our own reads and globs) is no news.
            if matches!(event, Ok(ref e) if !matches!(e.kind, EventKind::Access(_))) {
                waker.nudge();
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::info!(source, error = %e, "cannot watch files; polling instead");
                return Wakeup {
                    nudge,
                    watcher: None,
                };
            }
        };
        let mut watched = 0;
        for pattern in include {
            let (dir, mode) = watch_root(pattern);
            match watcher.watch(&dir, mode) {
                Ok(()) => watched += 1,
                Err(e) => {
                    tracing::info!(source, dir = %dir.display(), error = %e, "cannot watch folder; polling it instead")
                }
            }
        }
        let watcher = (watched == include.len()).then_some(watcher);
        Wakeup { nudge, watcher }
    }

    /// Woken by `nudge` alone: for a journal's tail, which the journal's writer nudges.
    pub fn nudged(nudge: Nudge) -> Self {
        Wakeup {
            nudge,
            watcher: None,
        }
    }

    /// Whether every include folder is watched (else the caller polls).
    pub fn watching(&self) -> bool {
        self.watcher.is_some()
    }

    /// Blocks until a change (or another nudge), or at most `timeout`.
    pub fn wait(&self, timeout: Duration) {
        self.nudge.wait(timeout);
    }
}

/// The folder to watch for `pattern`: its parent folder when that has no glob characters,
/// else the deepest folder before the first glob character, watched recursively.
fn watch_root(pattern: &str) -> (PathBuf, RecursiveMode) {
    let path = Path::new(pattern);
    let parent = path.parent().unwrap_or(Path::new("/"));
    let is_glob = |s: &str| s.contains(['*', '?', '[', '{']);
    if !is_glob(&parent.to_string_lossy()) {
        return (parent.to_path_buf(), RecursiveMode::NonRecursive);
    }
    let mut root = PathBuf::new();
    for part in parent.components() {
        if is_glob(&part.as_os_str().to_string_lossy()) {
            break;
        }
        root.push(part);
    }
    (root, RecursiveMode::Recursive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_the_folder_before_the_first_glob() {
        assert_eq!(
            watch_root("/var/log/goff/*.json"),
            (PathBuf::from("/var/log/goff"), RecursiveMode::NonRecursive)
        );
        assert_eq!(
            watch_root("/var/log/*/x/*.json"),
            (PathBuf::from("/var/log"), RecursiveMode::Recursive)
        );
    }
}
