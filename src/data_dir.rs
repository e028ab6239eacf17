//! `data_dir`: its layout, and the one way its files are opened.
//!
//! Everything flaghook keeps (checkpoints, dead letters, journals) lives here, and may
//! hold user keys and event payloads. So:
//! - folders are created `0700` and files `0600`, whatever the umask;
//! - files are opened with `O_NOFOLLOW`: a symlink planted in `data_dir` is an error, never
//!   a way to make flaghook read or overwrite another file; new files are created with
//!   `O_EXCL` where they must be new (temp files);
//! - a component of the `data_dir` path that is a symlink owned by another user (not root)
//!   is refused at start: that user could point flaghook's files anywhere.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Mode of every folder flaghook creates in `data_dir`.
const DIR_MODE: u32 = 0o700;
/// Mode of every file flaghook creates in `data_dir`.
const FILE_MODE: u32 = 0o600;

/// A prepared `data_dir`: it exists, is writable, and every path in it is built here.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Checks the path, creates the folders, and proves it writable before anything runs.
    pub fn prepare(root: &Path) -> Result<DataDir> {
        refuse_foreign_symlinks(root)?;
        let unwritable = || {
            format!(
                "data_dir {} is not writable (set `data_dir` to a folder flaghook may write)",
                root.display()
            )
        };
        let dir = DataDir {
            root: root.to_owned(),
        };
        for sub in ["checkpoints", "dead-letter", "journal"] {
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(root.join(sub))
                .with_context(unwritable)?;
        }
        let probe = root.join(format!(".write-test.{}", std::process::id()));
        let _ = fs::remove_file(&probe);
        create_new(&probe).with_context(unwritable)?;
        let _ = fs::remove_file(probe);
        Ok(dir)
    }

    /// A `DataDir` at `root` without preparing it (for commands that only read it).
    pub fn at(root: &Path) -> DataDir {
        DataDir {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `checkpoints/<source>.json`: a source's saved positions (and beside it
    /// `<source>.positions`, the log of the positions saved since; see
    /// `crate::source::file::checkpoint`).
    pub fn checkpoint(&self, source: &str) -> PathBuf {
        self.root.join("checkpoints").join(format!("{source}.json"))
    }

    /// `dead-letter/<sink>.jsonl`: what a sink rejected, with the reasons.
    pub fn dead_letter(&self, sink: &str) -> PathBuf {
        self.root.join("dead-letter").join(format!("{sink}.jsonl"))
    }

    /// `journal/<source>/`: the segments of a source that cannot be read again (see
    /// `crate::journal`).
    pub fn journal(&self, source: &str) -> PathBuf {
        self.root.join("journal").join(source)
    }
}

/// Creates the folder `path` (and its parents) `0700`, if missing.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Opens `path` for reading; a symlink is an error (`ELOOP`).
pub fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| explain_symlink(e, path))
}

/// Reads the whole file at `path`, refusing a symlink.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut open_read(path)?, &mut bytes)?;
    Ok(bytes)
}

/// Opens `path` for appending, creating it `0600`; a symlink is an error.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| explain_symlink(e, path))
}

/// Opens `path` for writing at given offsets (`pwrite`), creating it `0600`; a symlink is
/// an error.
pub fn open_write(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| explain_symlink(e, path))
}

/// Creates `path`, which must not exist (not even as a dangling symlink), `0600`.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Replaces `path` with `bytes` atomically: a new temp file, fsync, rename over `path`,
/// fsync of the folder. A crash leaves the old content or the new, never a mix; a symlink
/// at `path` is replaced, not followed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomically_with(path, |w| w.write_all(bytes))
}

/// [`write_atomically`], with the content written by `write` (buffered).
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    // A temp file left by a crash (or planted: unlink does not follow links).
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = io::BufWriter::with_capacity(64 * 1024, create_new(&tmp)?);
    write(&mut file)?;
    let file = file.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn explain_symlink(e: io::Error, path: &Path) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(
            e.kind(),
            format!(
                "{} is a symlink; flaghook does not follow links in data_dir (remove it)",
                path.display()
            ),
        )
    } else {
        e
    }
}

/// Refuses a `data_dir` whose path goes through a symlink that someone other than this user
/// or root owns.
fn refuse_foreign_symlinks(root: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let absolute = if root.is_absolute() {
        root.to_owned()
    } else {
        std::env::current_dir()
            .context("cannot read the current folder")?
            .join(root)
    };
    let mut at = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                at.pop();
                continue;
            }
            Component::CurDir => continue,
            other => at.push(other),
        }
        let Ok(meta) = fs::symlink_metadata(&at) else {
            break; // the rest does not exist yet: it is created below
        };
        if meta.file_type().is_symlink() && meta.uid() != me && meta.uid() != 0 {
            bail!(
                "data_dir {}: {} is a symlink owned by uid {}, not by this user (uid {me}) or root; \
                 flaghook refuses to follow it, since its owner could redirect flaghook's files. \
                 Set `data_dir` to a path without it",
                root.display(),
                at.display(),
                meta.uid()
            );
        }
        if meta.file_type().is_symlink() {
            // Follow it as the kernel would, to check the components it leads to.
            at = fs::canonicalize(&at).with_context(|| {
                format!(
                    "data_dir {}: cannot resolve {}",
                    root.display(),
                    at.display()
                )
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn folders_0700_and_files_0600_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        // SAFETY: umask only changes this process's file-creation mask.
        let old = unsafe { libc::umask(0) };
        let made = DataDir::prepare(&tmp.path().join("data")).map(|d| {
            let appended = open_append(&d.dead_letter("hook")).map(drop);
            let replaced = write_atomically(&d.checkpoint("files"), b"{}");
            (d, appended, replaced)
        });
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let (dir, appended, replaced) = made.unwrap();
        appended.unwrap();
        replaced.unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.root()), 0o700);
        assert_eq!(mode(&dir.root().join("journal")), 0o700);
        assert_eq!(mode(&dir.dead_letter("hook")), 0o600);
        assert_eq!(mode(&dir.checkpoint("files")), 0o600);
    }

    #[test]
    fn symlinks_in_data_dir_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::prepare(&tmp.path().join("data")).unwrap();
        let target = tmp.path().join("precious");
        fs::write(&target, b"keep me\n").unwrap();
        std::os::unix::fs::symlink(&target, dir.dead_letter("hook")).unwrap();
        let segment = dir.journal("tcp").join("00000000000000000001.ndjson");
        create_dir(&dir.journal("tcp")).unwrap();
        std::os::unix::fs::symlink(&target, &segment).unwrap();
        let err = open_append(&dir.dead_letter("hook")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(read(&segment).is_err());
        // Replacing a checkpoint that is a link replaces the link, not its target.
        std::os::unix::fs::symlink(&target, dir.checkpoint("files")).unwrap();
        std::os::unix::fs::symlink(&target, dir.checkpoint("files").with_extension("tmp")).unwrap();
        write_atomically(&dir.checkpoint("files"), b"{}").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"keep me\n");
        assert_eq!(fs::read(dir.checkpoint("files")).unwrap(), b"{}");
    }

    /// A symlink in the data_dir path owned by another user (not root) is refused; one of
    /// this user's own is followed. Needs root to give a link away (skipped otherwise).
    #[test]
    fn a_foreign_symlink_in_the_path_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        DataDir::prepare(&link.join("data")).unwrap();
        if std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).is_err() {
            eprintln!("skipped the foreign-owner half: giving a symlink away needs root");
            return;
        }
        let err = DataDir::prepare(&link.join("data"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
    }
}
