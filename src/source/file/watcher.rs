//! Wake-ups for the tail loop: inotify (through the `notify` crate) on the folders the
//! include globs point into, so that an idle tail costs nothing and new lines are read as
//! soon as they are written. When a folder cannot be watched (it does not exist yet, or
//! the inotify limits are reached), the loop falls back to polling.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// Notifies the tail loop of changes in the watched folders.
pub struct Wakeup {
    notify: Arc<Notify>,
    /// Kept alive for as long as the loop runs; `None` when nothing could be watched.
    watcher: Option<notify::RecommendedWatcher>,
}

impl Wakeup {
    /// Watches the folder of every include pattern.
    pub fn new(source: &str, include: &[String]) -> Self {
        let notify = Arc::new(Notify::new());
        let waker = notify.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            // Opening a file or listing a folder (our own reads and globs) is no news.
            if matches!(event, Ok(ref e) if !matches!(e.kind, EventKind::Access(_))) {
                waker.notify_one();
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::info!(source, error = %e, "cannot watch files; polling instead");
                return Wakeup {
                    notify,
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
        Wakeup { notify, watcher }
    }

    /// Whether every include folder is watched (else the caller polls).
    pub fn watching(&self) -> bool {
        self.watcher.is_some()
    }

    /// Waits for a change, or at most `timeout`.
    pub async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
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
