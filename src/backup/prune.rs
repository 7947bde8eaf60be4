//! The archive dir: listing archives (time, revision, size, verified) and pruning one node's
//! older archives. Pruning keeps the new, verified archive whatever its name says, then the
//! newest others, and removes each pruned archive's stamp with it.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    archive_prefix, archive_stem, current_stamp, is_archive_name, meta_path, read_meta, stamp_path,
};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub archive: PathBuf,
    pub node: Option<String>,
    /// When it was made (RFC 3339), from its stamp or its contents.
    pub created: Option<String>,
    pub revision: Option<i64>,
    pub size: u64,
    /// `true` / `false` from a stamp that still matches the archive; `null` when it was never
    /// verified (or changed since).
    pub verified: Option<bool>,
    /// Encrypted to age recipients (`.tar.zst.age`).
    pub encrypted: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListReport {
    pub dir: PathBuf,
    pub archives: Vec<Listed>,
}

/// The time part of one of `node`'s archive names: `<prefix><16-char time>.tar.zst[.age]`.
fn time_of<'a>(name: &'a str, node: &str) -> Option<&'a str> {
    let rest = name.strip_prefix(&archive_prefix(node))?;
    let time = archive_stem(rest)?;
    let b = time.as_bytes();
    (b.len() == 16 && b[8] == b'T' && b[15] == b'Z').then_some(time)
}

/// List every archive in `dir`, oldest first (by name: node, then time). Time and revision
/// come from the stamp, else the sidecar; a plain archive with neither is read once for its
/// contents. An encrypted archive is never opened: listing needs no private key.
pub fn list(dir: &Path) -> Result<ListReport> {
    if !dir.is_dir() {
        return Err(Error::input(dir, "no such backup dir"));
    }
    let mut names = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| Error::io("read dir", dir, e))? {
        let e = e.map_err(|e| Error::io("read dir", dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if is_archive_name(&name) && e.file_type().is_ok_and(|t| t.is_file()) {
            names.push(name);
        }
    }
    names.sort();
    let mut archives = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let size = fs::metadata(&path)
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        let encrypted = super::is_encrypted_name(&name);
        let stamp = current_stamp(&path);
        let verified = stamp.as_ref().map(|s| s.ok);
        let (node, created, revision) = match (stamp, read_meta(&path)) {
            (_, Some(m)) => (Some(m.node), Some(m.created), Some(m.revision)),
            (Some(s), None) => (None, s.created, s.revision),
            (None, None) if !encrypted => match super::verify::read_contents(&path, None) {
                Ok(Some(c)) => (Some(c.node), Some(c.created), Some(c.revision)),
                _ => (None, None, None),
            },
            (None, None) => (None, None, None),
        };
        let node = node.or_else(|| {
            name.strip_prefix("etcd-backup-")
                .and_then(archive_stem)
                .and_then(|r| r.rsplit_once('-'))
                .map(|(n, _)| n.to_string())
        });
        archives.push(Listed {
            archive: path,
            node,
            created,
            revision,
            size,
            verified,
            encrypted,
        });
    }
    Ok(ListReport {
        dir: dir.to_path_buf(),
        archives,
    })
}

/// Keep `keep` of `node`'s archives in `dir`: `newest` (just written and verified) and the
/// `keep - 1` latest others; remove the rest with their stamps. Returns what was removed.
pub fn prune(dir: &Path, node: &str, keep: usize, newest: &Path) -> Result<Vec<PathBuf>> {
    if keep == 0 {
        return Err(Error::Usage(
            "--keep must be at least 1: the new archive is always kept".into(),
        ));
    }
    let mut others: Vec<(String, PathBuf)> = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| Error::io("read dir", dir, e))? {
        let e = e.map_err(|e| Error::io("read dir", dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if path == newest || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if let Some(t) = time_of(&name, node) {
            others.push((t.to_string(), path));
        }
    }
    others.sort();
    others.reverse();
    let mut removed = Vec::new();
    for (_, path) in others.into_iter().skip(keep - 1) {
        fs::remove_file(&path).map_err(|e| Error::io("remove old archive", &path, e))?;
        let _ = fs::remove_file(stamp_path(&path));
        let _ = fs::remove_file(meta_path(&path));
        removed.push(path);
    }
    if !removed.is_empty() {
        crate::node::fsync_dir(dir)?;
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_new_one_and_the_latest_others_of_this_node_only() {
        let d = tempfile::tempdir().unwrap();
        let mk = |name: &str| {
            let p = d.path().join(name);
            fs::write(&p, name).unwrap();
            p
        };
        let a = mk("etcd-backup-n1-20261130T100000Z.tar.zst");
        let b = mk("etcd-backup-n1-20261130T110000Z.tar.zst");
        let c = mk("etcd-backup-n1-20261130T120000Z.tar.zst");
        // Another node whose name extends ours, and a foreign file: never touched.
        let other = mk("etcd-backup-n1-x-20261130T090000Z.tar.zst");
        let foreign = mk("notes.txt");
        fs::write(stamp_path(&a), "{}").unwrap();
        // The new archive's name sorts first (clock went back): it is kept anyway.
        let new = mk("etcd-backup-n1-20261130T080000Z.tar.zst");
        let removed = prune(d.path(), "n1", 2, &new).unwrap();
        assert_eq!(removed, vec![a.clone(), b.clone()]);
        assert!(new.exists() && c.exists() && other.exists() && foreign.exists());
        assert!(!stamp_path(&a).exists());
        // Encrypted archives are the node's archives too, sidecar and all.
        let enc = mk("etcd-backup-n1-20261130T130000Z.tar.zst.age");
        fs::write(meta_path(&enc), "{}").unwrap();
        assert_eq!(prune(d.path(), "n1", 2, &new).unwrap(), vec![c.clone()]);
        assert!(enc.exists());
        assert_eq!(prune(d.path(), "n1", 1, &new).unwrap(), vec![enc.clone()]);
        assert!(!meta_path(&enc).exists());
        mk("etcd-backup-n1-20261130T120000Z.tar.zst");
        assert_eq!(prune(d.path(), "n1", 1, &new).unwrap(), vec![c]);
        assert!(new.exists());
        assert_eq!(prune(d.path(), "n1", 0, &new).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn time_of_needs_the_exact_shape() {
        assert_eq!(
            time_of("etcd-backup-n1-20261130T100000Z.tar.zst", "n1"),
            Some("20261130T100000Z")
        );
        assert_eq!(
            time_of("etcd-backup-n1-x-20261130T100000Z.tar.zst", "n1"),
            None
        );
        assert_eq!(time_of("etcd-backup-n1-junk.tar.zst", "n1"), None);
        assert_eq!(
            time_of("etcd-backup-n1-20261130T100000Z.tar.zst.age", "n1"),
            Some("20261130T100000Z")
        );
    }
}
