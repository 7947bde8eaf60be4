//! The one policy for where a data dir may be copied to, shared by `migrate` preflight and
//! `datadir copy`: free space (data + 10 %, and an inode per entry), how an existing
//! non-directory target is described (a symlink says where it points), a parent that is not
//! a directory, and — for a migration — the target's filesystem: not volatile (tmpfs, ramfs,
//! overlay: empty after a reboot, and kubelet's `DirectoryOrCreate` then starts an empty
//! member) and not the source's own filesystem (the usual cause is a new disk that is not
//! mounted: mounting it later hides the data and etcd starts empty).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Free space the target filesystem must have beyond the data: 10 %.
pub const SPACE_MARGIN_PERCENT: u64 = 10;

/// ramfs' magic number (linux/magic.h); nix names tmpfs and overlay but not ramfs.
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// What a migration accepts about the target's filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsPolicy {
    /// `--allow-volatile-target`: tmpfs, ramfs and overlay are accepted.
    pub allow_volatile: bool,
    /// `--same-filesystem`: a target on the source's filesystem is accepted.
    pub same_filesystem: bool,
}

/// The nearest existing ancestor of `path` (itself if it exists): whose filesystem a new
/// directory there would be on.
pub fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while std::fs::symlink_metadata(&p).is_err() {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent.to_path_buf(),
            _ => return PathBuf::from("."),
        }
    }
    p
}

/// Refuse (exit 4) unless the filesystem holding `dir` has room for `data` bytes + 10 %
/// and, when `entries` is given, an inode per entry. `target` names the target in messages.
pub fn check_space(target: &Path, dir: &Path, data: u64, entries: Option<u64>) -> Result<String> {
    check_space_beyond(target, dir, data, 0, entries)
}

/// As [`check_space`], when `staged` bytes of the data are already on the target's
/// filesystem (a pre-copy in the staging dir): only the rest must still fit.
pub fn check_space_beyond(
    target: &Path,
    dir: &Path,
    data: u64,
    staged: u64,
    entries: Option<u64>,
) -> Result<String> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| Error::io("statvfs", dir, std::io::Error::from(e)))?;
    let available = st.blocks_available() as u128 * st.fragment_size() as u128;
    let data = data as u128;
    let needed = (data + data * SPACE_MARGIN_PERCENT as u128 / 100).saturating_sub(staged as u128);
    if available < needed {
        return Err(Error::refused(
            target.display().to_string(),
            format!(
                "not enough free space on the filesystem of {}: need {} (data {} + {} %), {} \
                 free",
                dir.display(),
                crate::output::bytes(needed as u64),
                crate::output::bytes(data as u64),
                SPACE_MARGIN_PERCENT,
                crate::output::bytes(available as u64)
            ),
        ));
    }
    if let Some(entries) = entries {
        // Filesystems without an inode limit (btrfs, some FUSE) report zero inodes.
        if st.files() > 0 && (st.files_available() as u64) < entries {
            return Err(Error::refused(
                target.display().to_string(),
                format!(
                    "not enough free inodes on the filesystem of {}: need {entries}, {} available",
                    dir.display(),
                    st.files_available()
                ),
            ));
        }
    }
    Ok(format!(
        "{} free, {} needed",
        crate::output::bytes(available.min(u64::MAX as u128) as u64),
        crate::output::bytes(needed as u64)
    ))
}

/// Where a target stands, judged once for `migrate` preflight and `datadir copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Nothing there: it will be created.
    Absent,
    /// An empty directory (not a mount point): the copy replaces it.
    EmptyDir,
}

/// Why a target cannot take the data; each caller words it for its own flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// It is the source itself.
    Source,
    /// It lies inside the source.
    InsideSource,
    /// It contains the source.
    ContainsSource,
    /// A directory with entries.
    NotEmpty,
    /// A file, a symlink, anything but a directory (see [`not_a_directory`]).
    NotADirectory,
    /// An empty directory that is a mount point: the staging dir beside it would be on the
    /// parent's filesystem, and a mount point cannot be renamed over.
    MountPoint,
}

/// Judge a target `dst` against the source `src` (both resolved as the kernel would, the
/// target's parent `parent` existing). The one rule for both callers.
pub fn judge(src: &Path, dst: &Path, parent: &Path) -> Result<std::result::Result<Place, Unfit>> {
    if dst == src {
        return Ok(Err(Unfit::Source));
    }
    if dst.starts_with(src) {
        return Ok(Err(Unfit::InsideSource));
    }
    if src.starts_with(dst) {
        return Ok(Err(Unfit::ContainsSource));
    }
    match std::fs::symlink_metadata(dst) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ok(Place::Absent)),
        Err(e) => Err(Error::io("stat", dst, e)),
        Ok(m) if m.file_type().is_dir() => {
            let mut rd = std::fs::read_dir(dst).map_err(|e| Error::io("read dir", dst, e))?;
            if rd.next().is_some() {
                return Ok(Err(Unfit::NotEmpty));
            }
            let parent_dev = std::fs::metadata(parent)
                .map_err(|e| Error::io("stat", parent, e))?
                .dev();
            if m.dev() != parent_dev {
                return Ok(Err(Unfit::MountPoint));
            }
            Ok(Ok(Place::EmptyDir))
        }
        Ok(_) => Ok(Err(Unfit::NotADirectory)),
    }
}

/// A target as the copy will create it: the canonical parent joined with the last name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub path: PathBuf,
    pub parent: PathBuf,
    pub name: std::ffi::OsString,
    pub place: Place,
}

/// Resolve the target `dst` of a copy of the data dir `src` (canonical) and judge it: the one
/// place where a target is accepted or refused, for `migrate` preflight and for the copy
/// that follows it (and `datadir copy`), so that nothing passes the first and fails the
/// second after etcd was stopped. Input errors exit 2; a target that cannot take the data as
/// it stands (a parent missing or a file, not empty, not a directory) is refused, exit 4.
pub fn locate(src: &Path, dst: &Path) -> Result<Located> {
    use std::path::Component;
    let name = match dst.components().next_back() {
        Some(Component::Normal(n)) => n.to_os_string(),
        _ => {
            return Err(Error::input(
                dst,
                "name the directory to create, e.g. /mnt/etcd-disk/etcd (not /, . or ..)",
            ));
        }
    };
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = match std::fs::canonicalize(&parent) {
        Ok(p) if p.is_dir() => p,
        Ok(_) => {
            return Err(Error::refused(
                dst.display().to_string(),
                bad_parent(&parent),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::refused(
                dst.display().to_string(),
                bad_parent(&parent),
            ));
        }
        Err(e) => return Err(Error::io("resolve", &parent, e)),
    };
    let path = parent.join(&name);
    let place = match judge(src, &path, &parent)? {
        Ok(place) => place,
        Err(Unfit::Source | Unfit::InsideSource) => {
            return Err(Error::input(
                &path,
                format!(
                    "is inside the source {}: choose a target outside it",
                    src.display()
                ),
            ));
        }
        Err(Unfit::ContainsSource) => {
            return Err(Error::input(
                &path,
                format!(
                    "contains the source {}: choose a target outside it",
                    src.display()
                ),
            ));
        }
        Err(Unfit::NotEmpty) => {
            return Err(Error::refused(
                path.display().to_string(),
                "exists and is not empty: copy into a new or empty directory",
            ));
        }
        // The copy could not rename its staging dir over a mount point.
        Err(Unfit::MountPoint) => {
            return Err(Error::input(
                &path,
                format!(
                    "is a mount point: copy into a directory below it, e.g. {}",
                    path.join("etcd").display()
                ),
            ));
        }
        Err(Unfit::NotADirectory) => {
            return Err(Error::refused(
                path.display().to_string(),
                not_a_directory(&path),
            ));
        }
    };
    Ok(Located {
        path,
        parent,
        name,
        place,
    })
}

/// Why an existing `path` that is not a directory cannot be the target: a symlink says
/// where it points (a link to a directory on the new disk is a common half-done setup).
pub fn not_a_directory(path: &Path) -> String {
    match std::fs::read_link(path) {
        Ok(to) => format!(
            "exists and is a symlink to {}: give the real directory, not a link",
            to.display()
        ),
        Err(_) => "exists and is not a directory".into(),
    }
}

/// The reason a missing parent cannot hold the target: it does not exist, or it is a file.
pub fn bad_parent(parent: &Path) -> String {
    match std::fs::metadata(parent) {
        Ok(m) if !m.is_dir() => format!("parent {} is a file, not a directory", parent.display()),
        _ => format!(
            "parent {} does not exist (mount the new disk and create it first)",
            parent.display()
        ),
    }
}

/// The migration's filesystem rule for `to` (which need not exist) given the source `src`.
pub fn check_filesystem(src: &Path, to: &Path, policy: FsPolicy) -> Result<String> {
    let at = nearest_existing(to);
    let fs = nix::sys::statfs::statfs(&at)
        .map_err(|e| Error::io("statfs", &at, std::io::Error::from(e)))?;
    let kind = fs.filesystem_type();
    let volatile = [
        (nix::sys::statfs::TMPFS_MAGIC, "tmpfs"),
        (nix::sys::statfs::FsType(RAMFS_MAGIC as _), "ramfs"),
        (nix::sys::statfs::OVERLAYFS_SUPER_MAGIC, "overlay"),
    ]
    .into_iter()
    .find(|(magic, _)| *magic == kind)
    .map(|(_, name)| name);
    let mut notes = Vec::new();
    if let Some(name) = volatile {
        if !policy.allow_volatile {
            return Err(Error::refused(
                to.display().to_string(),
                format!(
                    "is on {name} ({}), which is empty after a reboot: kubelet would then start \
                     an empty member there; choose a disk, or pass --allow-volatile-target for \
                     a lab",
                    at.display()
                ),
            ));
        }
        notes.push(format!("on {name}, allowed by --allow-volatile-target"));
    }
    let src_dev = std::fs::metadata(src)
        .map_err(|e| Error::io("stat", src, e))?
        .dev();
    let to_dev = std::fs::metadata(&at)
        .map_err(|e| Error::io("stat", &at, e))?
        .dev();
    if src_dev == to_dev {
        if !policy.same_filesystem {
            return Err(Error::refused(
                to.display().to_string(),
                format!(
                    "is on the same filesystem as the data dir {}: is the new disk mounted? \
                     (mounting it later would hide the data); pass --same-filesystem to move \
                     the data dir on this disk anyway",
                    src.display()
                ),
            ));
        }
        notes.push("on the source's filesystem, allowed by --same-filesystem".into());
    }
    Ok(if notes.is_empty() {
        "another filesystem, not volatile".into()
    } else {
        notes.join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_filesystem_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let to = dir.path().join("new/etcd");
        let e = check_filesystem(&src, &to, FsPolicy::default()).unwrap_err();
        // /tmp may itself be a tmpfs: either refusal is exit 4 and names the target.
        assert_eq!(e.exit_code(), 4);
        assert!(e.one_line().contains(&to.display().to_string()));
        let ok = check_filesystem(
            &src,
            &to,
            FsPolicy {
                allow_volatile: true,
                same_filesystem: true,
            },
        )
        .unwrap();
        assert!(ok.contains("--same-filesystem"), "{ok}");
    }

    #[test]
    fn a_symlink_says_where_it_points_and_a_file_parent_says_file() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/mnt/disk2/etcd", &link).unwrap();
        assert!(not_a_directory(&link).contains("symlink to /mnt/disk2/etcd"));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(bad_parent(&file).contains("is a file"));
        assert!(bad_parent(&dir.path().join("nope")).contains("does not exist"));
    }
}
