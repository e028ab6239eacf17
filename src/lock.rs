//! The advisory lock on `data_dir`: one flaghook process uses a data_dir at a time.
//!
//! Two `run`s on one data_dir would read the same files, deliver every line twice and race
//! on the checkpoint and journal files; `dead-letter replay` rewrites the dead-letter file
//! that a running pipeline appends to. Both take this lock first.
//!
//! The lock is flock(2) on `data_dir/lock`, which holds the holder's pid for the message
//! the next one prints. The kernel releases it when the process ends, however it ends, so
//! a crash never leaves a stale lock. The file itself stays: removing it on exit would let
//! a third process lock a fresh file while the second still holds the old one.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Held while this process uses a data_dir; dropping it (or exiting) releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Locks `dir` (created when missing), or fails with "data_dir DIR in use by pid N: `hint`"
/// when another process holds it.
pub fn lock_data_dir(dir: &Path, hint: &str) -> Result<DataDirLock> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "data_dir {} is not writable (set `data_dir` to a folder flaghook may write)",
                dir.display()
            )
        })?;
    let path = dir.join("lock");
    // O_NOFOLLOW: a symlink planted at `lock` must not make flaghook truncate another file.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| {
            format!(
                "cannot open the lock file {} (it must be a regular file flaghook may write)",
                path.display()
            )
        })?;
    if !file.metadata()?.is_file() {
        bail!("the lock file {} is not a regular file", path.display());
    }
    // A lock this process just released can still be held for a moment by a child it is
    // starting (between fork and exec, the child shares the lock file's descriptor): when
    // the holder is this process, the lock is tried again for a short while.
    let deadline = std::time::Instant::now() + OWN_LOCK_WAIT;
    loop {
        // SAFETY: flock(2) on a descriptor owned by `file`, alive for the call; no memory
        // passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::WouldBlock {
            return Err(error).with_context(|| format!("cannot lock {}", path.display()));
        }
        // The holder writes its pid right after it locks: rarely, it is not there yet.
        let holder = holder_pid(&mut file);
        if holder == Some(std::process::id()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        let holder = holder.map_or("another process".to_owned(), |pid| format!("pid {pid}"));
        bail!("data_dir {} in use by {holder}: {hint}", dir.display());
    }
    file.set_len(0)
        .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(DataDirLock { _file: file })
}

/// How long a lock that this process holds itself is tried again (see [`lock_data_dir`]).
const OWN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn holder_pid(file: &mut File) -> Option<u32> {
    use std::io::Seek;
    file.rewind().ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_data_dir_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let held = lock_data_dir(&data_dir, "first").unwrap();
        let err = lock_data_dir(&data_dir, "stop it first").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "data_dir {} in use by pid {}: stop it first",
                data_dir.display(),
                std::process::id()
            )
        );
        drop(held);
        lock_data_dir(&data_dir, "again").expect("released on drop");
    }

    /// Regression: a child this process was starting (between its fork and its exec)
    /// still shared the lock's descriptor, so locking again right after a release failed
    /// with "in use by pid <this process>" (seen in CI, where tests start processes while
    /// others lock and unlock). The lock is now tried again while the holder is this
    /// process.
    #[test]
    fn a_lock_released_while_a_child_still_shares_it_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_data_dir(dir.path(), "").unwrap();
        // SAFETY: the child calls only async-signal-safe functions (nanosleep, _exit).
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork");
        if child == 0 {
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 300_000_000,
            };
            // SAFETY: as above; the child ends here.
            unsafe {
                libc::nanosleep(&pause, std::ptr::null_mut());
                libc::_exit(0);
            }
        }
        drop(held);
        let again = lock_data_dir(dir.path(), "again");
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        unsafe { libc::waitpid(child, &mut status, 0) };
        again.expect("taken once the child let go");
    }

    #[test]
    fn a_symlink_at_the_lock_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("lock")).unwrap();
        let err = lock_data_dir(dir.path(), "").unwrap_err();
        assert!(format!("{err:#}").contains("lock file"), "{err:#}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }

    #[test]
    fn the_lock_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let _held = lock_data_dir(dir.path(), "").unwrap();
        let mode = std::fs::metadata(dir.path().join("lock"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
