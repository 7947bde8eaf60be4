//! Replacing a file in kubelet's manifests dir without kubelet ever seeing a partial or extra
//! manifest. kubelet loads every non-dot file there, so the temp file is a dotfile beside the
//! target (same filesystem, so the rename is atomic) and the backup goes to the state dir,
//! never the manifests dir. Mode and owner are kept; file and dir are fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// The regular file behind `path` (following a symlink, so that a linked manifest is updated
/// where it lives and the link stays). A missing file or a directory is `Error::Input`.
pub fn real_file(path: &Path) -> Result<PathBuf> {
    let real = fs::canonicalize(path)
        .map_err(|e| Error::input(path, format!("cannot read manifest: {e}")))?;
    let meta = fs::metadata(&real)
        .map_err(|e| Error::input(path, format!("cannot read manifest: {e}")))?;
    if !meta.is_file() {
        return Err(Error::input(path, "is not a regular file"));
    }
    Ok(real)
}

/// Refuse a backup dir in or below kubelet's manifests dir: kubelet would start a backup
/// there as a second etcd (and it logs an error every 20 s for a subdirectory).
pub fn check_outside_manifests_dir(backup_dir: &Path, kubelet_dir: &Path) -> Result<()> {
    let dir = lenient_canonical(kubelet_dir);
    if lenient_canonical(backup_dir).starts_with(&dir) {
        return Err(Error::Usage(format!(
            "backup dir {} is inside the manifests dir {}: kubelet would load the backup as a static pod; use another --state-dir",
            backup_dir.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// The canonical form of the longest existing ancestor, with the rest appended lexically:
/// comparable paths without creating anything.
fn lenient_canonical(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = fs::canonicalize(existing) {
            let mut out = real;
            for c in rest.iter().rev() {
                out.push(c);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => {
                return abs
                    .components()
                    .filter(|c| *c != Component::CurDir)
                    .collect();
            }
        }
    }
}

/// Replace `target` with `contents`. `expected` is the content the caller read and rewrote:
/// it is saved to a new file in `backup_dir` (0600, dir 0700) first, and the target must
/// still hold it just before the rename. Returns the backup's path. On failure before the
/// rename, the temp file and the backup are removed and `target` is untouched.
pub fn replace_with_backup(
    target: &Path,
    expected: &[u8],
    contents: &[u8],
    backup_dir: &Path,
) -> Result<PathBuf> {
    let meta = fs::metadata(target).map_err(|e| Error::io("stat", target, e))?;
    let dir = target.parent().unwrap_or(Path::new("/"));
    let name = target
        .file_name()
        .ok_or_else(|| Error::input(target, "has no file name"))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.etcdops-{}.tmp", std::process::id()));

    let owner = Some((meta.uid(), meta.gid()));
    write_temp(&tmp, contents, meta.mode() & 0o7777, owner).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    let backup = write_backup(backup_dir, &name, expected).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    let undo = || {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&backup);
    };

    // Someone (an editor, kubeadm) may have written the file since we read it.
    match fs::read(target) {
        Ok(now) if now == expected => {}
        Ok(_) => {
            undo();
            return Err(Error::refused(
                format!("rewrite {}", target.display()),
                "the manifest changed while etcdops was rewriting it; run the command again",
            ));
        }
        Err(e) => {
            undo();
            return Err(Error::io("read", target, e));
        }
    }
    if let Err(e) = fs::rename(&tmp, target) {
        undo();
        return Err(Error::io("rename into place", target, e));
    }
    fsync_dir(dir).map_err(|e| {
        Error::failed(
            format!("fsync {}", dir.display()),
            format!(
                "{e}; the manifest was replaced but may not be durable yet; the original is at {}",
                backup.display()
            ),
        )
    })?;
    Ok(backup)
}

/// Write `contents` to a new file `tmp` (a dotfile beside its destination) with `mode` and,
/// when given, `owner`, and fsync it: the file is complete before anyone can rename it into
/// place. Shared by the manifest rewrite and `node::write_atomic`.
pub(crate) fn write_temp(
    tmp: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| Error::io("create", tmp, e))?;
    file.write_all(contents)
        .map_err(|e| Error::io("write", tmp, e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(|e| Error::io("chown", tmp, e))?;
    }
    // After chown, which may clear set-id bits; and explicitly, since umask applied at create.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("chmod", tmp, e))?;
    file.sync_all().map_err(|e| Error::io("fsync", tmp, e))
}

/// A new backup file `<dir>/<name>.<UTC timestamp>` (`.1`, `.2`, ... if taken).
fn write_backup(dir: &Path, name: &str, contents: &[u8]) -> Result<PathBuf> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create backup dir", dir, e))?;
    // The dir may predate us with a wider mode; manifests name key files, keep it private.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("chmod", dir, e))?;
    let stamp = timestamp(SystemTime::now());
    let mut n = 0;
    loop {
        let file_name = if n == 0 {
            format!("{name}.{stamp}")
        } else {
            format!("{name}.{stamp}.{n}")
        };
        let path = dir.join(file_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut file) => {
                let written = file
                    .write_all(contents)
                    .and_then(|()| file.sync_all())
                    .and_then(|()| fsync_dir(dir));
                if let Err(e) = written {
                    let _ = fs::remove_file(&path);
                    return Err(Error::io("write backup", &path, e));
                }
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
            Err(e) => return Err(Error::io("create backup", &path, e)),
        }
    }
}

/// `20261126T213000Z`: sortable, and free of `:` which some tools mangle.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

pub(crate) fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_compact_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_728_600);
        assert_eq!(timestamp(t), "20261126T213000Z");
    }

    #[test]
    fn backup_dir_inside_manifests_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let manifests = tmp.path().join("manifests");
        fs::create_dir(&manifests).unwrap();
        let m = &manifests;
        assert!(check_outside_manifests_dir(&manifests, m).is_err());
        assert!(check_outside_manifests_dir(&manifests.join("x/backups"), m).is_err());
        // Through a symlink too.
        std::os::unix::fs::symlink(&manifests, tmp.path().join("link")).unwrap();
        assert!(check_outside_manifests_dir(&tmp.path().join("link/b"), m).is_err());
        assert!(check_outside_manifests_dir(&tmp.path().join("state/backups"), m).is_ok());
    }

    #[test]
    fn replace_keeps_mode_and_writes_a_private_backup() {
        let tmp = tempfile::tempdir().unwrap();
        let m = tmp.path().join("etcd.yaml");
        fs::write(&m, "old").unwrap();
        fs::set_permissions(&m, fs::Permissions::from_mode(0o640)).unwrap();
        let backups = tmp.path().join("state/backups");
        let b = replace_with_backup(&m, b"old", b"new", &backups).unwrap();
        assert_eq!(fs::read(&m).unwrap(), b"new");
        assert_eq!(fs::metadata(&m).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(fs::read(&b).unwrap(), b"old");
        assert_eq!(fs::metadata(&b).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&backups).unwrap().mode() & 0o777, 0o700);
        // Nothing else beside the manifest.
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A second backup in the same second gets its own name.
        let b2 = replace_with_backup(&m, b"new", b"newer", &backups).unwrap();
        assert_ne!(b, b2);
    }

    #[test]
    fn a_file_changed_meanwhile_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let m = tmp.path().join("etcd.yaml");
        fs::write(&m, "edited by someone").unwrap();
        let backups = tmp.path().join("backups");
        let err = replace_with_backup(&m, b"what we read", b"new", &backups).unwrap_err();
        assert_eq!(err.exit_code(), 4);
        assert_eq!(fs::read(&m).unwrap(), b"edited by someone");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2); // manifest + backups dir
        assert_eq!(fs::read_dir(&backups).unwrap().count(), 0);
    }
}
