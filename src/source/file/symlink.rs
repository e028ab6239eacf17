//! Whether a matched path that leads through symlinks may be read.
//!
//! flaghook often runs as root, and the folders it tails are often writable by a group
//! (`/var/log/goff`). Whoever can create a symlink there could have flaghook read a file
//! they cannot (`/etc/shadow`) and send it to the webhook, or to a dead-letter file. So a
//! symlink is followed only if its owner could read the file it leads to: the link is owned
//! by root or by the file's owner, or the file's mode lets the link's owner read it (others
//! may read it, or its group, with the link owner's primary group, may). Every symlink on the
//! way counts: the matched path's own, each link it leads through, and links among its
//! folders.
//!
//! The check runs after the file is opened, on the file actually opened: the path is walked
//! again and must lead to that same file, so a link swapped in between cannot slip through.

use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// What [`check`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Links {
    /// No symlink on the way, or only ones whose owners may read the file.
    Trusted,
    /// A symlink whose owner could not read the file: the reason, to log and dead-letter.
    Untrusted(String),
    /// The path no longer leads to the file opened (renamed or replaced in between): try
    /// again at the next scan.
    Moved,
}

/// As Linux's `MAXSYMLINKS`: more hops than this is a loop.
const MAX_HOPS: usize = 40;

/// Checks the symlinks between `path` and `file`, which was opened through it.
pub(crate) fn check(path: &Path, file: &File) -> io::Result<Links> {
    let opened = file.metadata()?;
    let Some((end, links)) = walk(path)? else {
        return Ok(Links::Moved);
    };
    if (end.dev(), end.ino()) != (opened.dev(), opened.ino()) {
        return Ok(Links::Moved);
    }
    match links.iter().find(|link| !may_read(link.uid, &opened)) {
        None => Ok(Links::Trusted),
        Some(link) => Ok(Links::Untrusted(untrusted(path, link, &opened))),
    }
}

fn untrusted(path: &Path, link: &Link, file: &Metadata) -> String {
    let which = if link.path == path {
        "is a symlink".to_owned()
    } else {
        format!("leads through the symlink {}", link.path.display())
    };
    format!(
        "{which} owned by uid {} to a file that user cannot read (owner uid {}, group {}, mode {:o}); not following it",
        link.uid,
        file.uid(),
        file.gid(),
        file.permissions().mode() & 0o7777,
    )
}

/// A symlink met on the way.
#[derive(Debug)]
struct Link {
    path: PathBuf,
    uid: u32,
}

/// One step of a path.
enum Step {
    Root,
    Up,
    Name(OsString),
}

fn steps(path: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
    path.components().filter_map(|c| match c {
        Component::Prefix(_) | Component::RootDir => Some(Step::Root),
        Component::CurDir => None,
        Component::ParentDir => Some(Step::Up),
        Component::Normal(name) => Some(Step::Name(name.to_owned())),
    })
}

/// Resolves `path` as the kernel does, one component at a time: returns the metadata of
/// where it ends (not a symlink) and every symlink met, or `None` if it does not end at a
/// file any more.
fn walk(path: &Path) -> io::Result<Option<(Metadata, Vec<Link>)>> {
    let mut at = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir()?
    };
    // A stack: the next step on top.
    let mut todo: Vec<Step> = steps(path).rev().collect();
    let mut links = Vec::new();
    while let Some(step) = todo.pop() {
        match step {
            Step::Root => at = PathBuf::from("/"),
            Step::Up => {
                at.pop();
            }
            Step::Name(name) => {
                let next = at.join(&name);
                let Some(meta) = lstat(&next)? else {
                    return Ok(None);
                };
                if meta.file_type().is_symlink() {
                    if links.len() == MAX_HOPS {
                        return Err(io::Error::other("too many levels of symbolic links"));
                    }
                    // A relative target starts from the link's folder, `at`.
                    todo.extend(steps(&std::fs::read_link(&next)?).rev());
                    links.push(Link {
                        path: next,
                        uid: meta.uid(),
                    });
                } else {
                    at = next;
                }
            }
        }
    }
    // `at` is not a symlink: every one on the way was replaced by where it leads.
    Ok(lstat(&at)?
        .filter(Metadata::is_file)
        .map(|end| (end, links)))
}

/// The metadata of `path` itself (not of where a symlink leads); `None` if it is gone.
fn lstat(path: &Path) -> io::Result<Option<Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the user `uid` owns a link that may lead to `file`.
fn may_read(uid: u32, file: &Metadata) -> bool {
    let mode = file.permissions().mode();
    uid == 0
        || uid == file.uid()
        || mode & 0o004 != 0
        || (mode & 0o040 != 0 && primary_group(uid) == Some(file.gid()))
}

/// The primary group of the user `uid`, from the user database.
fn primary_group(uid: u32) -> Option<u32> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: an all-zero `passwd` is a valid value (null pointers, zero ids); it is
        // only read after getpwuid_r filled it in, with its strings pointing into `buf`,
        // which outlives the read.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, and `buf.len()` is `buf`'s size.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        return (rc == 0 && !found.is_null()).then_some(entry.pw_gid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn walk_follows_relative_absolute_and_folder_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        std::fs::write(root.join("real/sub/file.json"), "x").unwrap();
        symlink("real", root.join("folder")).unwrap();
        symlink("sub/file.json", root.join("real/rel")).unwrap();
        symlink(root.join("folder/rel"), root.join("abs")).unwrap();
        symlink("../real/./sub/file.json", root.join("real/up")).unwrap();

        let file = std::fs::metadata(root.join("real/sub/file.json")).unwrap();
        for (path, hops) in [
            ("real/sub/file.json", 0),
            ("folder/sub/file.json", 1),
            ("abs", 3),
            ("folder/up", 2),
        ] {
            let (end, links) = walk(&root.join(path)).unwrap().unwrap();
            assert_eq!((end.ino(), links.len()), (file.ino(), hops), "{path}");
        }
        symlink("loop", root.join("loop")).unwrap();
        assert!(walk(&root.join("loop")).is_err());
        symlink("missing", root.join("dangling")).unwrap();
        assert!(walk(&root.join("dangling")).unwrap().is_none());
    }

    #[test]
    fn a_link_owner_may_read_what_the_mode_lets_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        let mode = |m| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
            std::fs::metadata(&path).unwrap()
        };
        let owner = mode(0o600).uid();
        assert!(may_read(owner, &mode(0o600)));
        assert!(may_read(0, &mode(0o600)));
        if owner != 0 {
            return; // a file owned by another user needs root to make
        }
        let nobody = 65534; // its primary group, where it exists, is not root's group
        assert!(!may_read(nobody, &mode(0o600)));
        assert!(!may_read(nobody, &mode(0o640)));
        assert!(may_read(nobody, &mode(0o604)));
    }
}
