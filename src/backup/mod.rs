//! Disaster-recovery archives: what a node's backup holds and where it lives.
//!
//! One archive per run, `<dir>/etcd-backup-<node>-<UTC time>.tar.zst` (default dir
//! `<state-dir>/backups`, mode 0700; the archive 0600). Inside, in this order:
//! `snapshot.db` (etcd's snapshot with its sha256 trailer, streamed straight from the member
//! into the archive), `kubernetes/pki/**`, `kubernetes/manifests/*`, `kubernetes/*.conf`, and
//! last `contents.json` (blake3 of every entry before it, the cluster's identity and data
//! fingerprint at the snapshot: revision, HashKV, key count).
//!
//! `archive` writes one, `verify` checks one (and trial-restores it), `prune` and `list` keep
//! the dir tidy, `tool` finds etcd's own restore tool. A verification leaves a stamp
//! `.<archive>.verify.json` beside the archive so that `list` can say "verified" without
//! reading every archive again; the stamp is only believed while the archive's size and
//! mtime are what the stamp recorded.
//!
//! An archive may be encrypted to age recipients (`crypt`): `….tar.zst.age`, the same tar.zst
//! inside an age stream. Its listing then comes from a sidecar written with it,
//! `.<archive>.meta.json` (time, revision, size, recipients' public keys: nothing secret), so
//! that `backup list` needs no private key.

pub mod archive;
pub mod crypt;
pub mod pipe;
pub mod prune;
pub mod tool;
pub mod verify;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::StaticPod;

/// The snapshot's name inside the archive.
pub const SNAPSHOT_ENTRY: &str = "snapshot.db";
/// The manifest of the archive, its last entry.
pub const CONTENTS_ENTRY: &str = "contents.json";
/// Prefix of the node's Kubernetes files inside the archive.
pub const KUBE_PREFIX: &str = "kubernetes";
/// `contents.json`'s format version.
pub const FORMAT: u32 = 1;

/// `contents.json`: what the archive holds and what the cluster looked like.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Contents {
    pub format: u32,
    /// The archive's id: the first 16 hex digits of the snapshot's blake3. Every node that
    /// restores this archive derives the same cluster token from it.
    pub id: String,
    /// The member name of the node that made the backup (the manifest's `--name`).
    pub node: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub etcd_version: String,
    pub cluster_id: String,
    /// The member the snapshot was streamed from.
    pub member_id: String,
    pub endpoint: String,
    pub members: Vec<MemberInfo>,
    /// The store's revision just before the snapshot: the snapshot holds at least this.
    pub revision: i64,
    /// HashKV at `revision` on the member streamed from.
    pub hash_kv: u32,
    /// The compaction revision HashKV reported.
    pub compact_revision: i64,
    /// Keys in the store at `revision`.
    pub key_count: i64,
    /// Where the Kubernetes files came from on the node (`/etc/kubernetes`).
    pub kubernetes_dir: PathBuf,
    pub manifest: PathBuf,
    /// Every entry before `contents.json`, in archive order.
    pub entries: Vec<EntryInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryInfo {
    /// Path inside the archive.
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub blake3: String,
    /// The whole snapshot file's sha256 (the snapshot entry only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Contents {
    /// The snapshot's entry.
    pub fn snapshot(&self) -> Option<&EntryInfo> {
        self.entries.iter().find(|e| e.path == SNAPSHOT_ENTRY)
    }
}

/// The node's files a backup takes, found from the manifest: the manifests dir is the
/// manifest's dir, the Kubernetes dir its parent (`/etc/kubernetes`), pki below that.
#[derive(Debug, Clone)]
pub struct Sources {
    pub manifest: PathBuf,
    pub manifests_dir: PathBuf,
    pub kubernetes_dir: PathBuf,
    pub pki_dir: PathBuf,
    /// The member name (`--name`).
    pub node: String,
}

impl Sources {
    /// Read the manifest and check that every TLS file it names lies in the pki dir that
    /// the backup takes whole (exit 2 otherwise: such a node must be backed up by hand).
    pub fn from_manifest(manifest: &Path) -> Result<Self> {
        let pod = StaticPod::load(manifest)?;
        let manifests_dir = manifest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| Error::input(manifest, "has no parent directory"))?
            .to_path_buf();
        let kubernetes_dir = manifests_dir
            .parent()
            .ok_or_else(|| Error::input(&manifests_dir, "has no parent directory"))?
            .to_path_buf();
        let pki_dir = kubernetes_dir.join("pki");
        if !pki_dir.is_dir() {
            return Err(Error::input(
                &pki_dir,
                "the pki dir beside the manifests dir does not exist (the backup takes it whole)",
            ));
        }
        let node = pod
            .etcd_flag("name")?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::input(manifest, "the etcd command has no --name"))?;
        if !valid_node_name(&node) {
            return Err(Error::input(
                manifest,
                format!("--name={node} cannot be part of a file name"),
            ));
        }
        for flag in [
            "trusted-ca-file",
            "cert-file",
            "key-file",
            "peer-trusted-ca-file",
            "peer-cert-file",
            "peer-key-file",
        ] {
            if let Some(p) = pod.etcd_flag(flag)?.filter(|p| !p.is_empty()) {
                let host = pod.host_path(&p)?;
                if !host.starts_with(&pki_dir) {
                    return Err(Error::input(
                        manifest,
                        format!(
                            "--{flag} is {} on the host, outside {}, which is all the backup takes",
                            host.display(),
                            pki_dir.display()
                        ),
                    ));
                }
            }
        }
        Ok(Sources {
            manifest: manifest.to_path_buf(),
            manifests_dir,
            kubernetes_dir,
            pki_dir,
            node,
        })
    }
}

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

/// `etcd-backup-<node>-`: every archive of this node starts so.
pub fn archive_prefix(node: &str) -> String {
    format!("etcd-backup-{node}-")
}

/// `etcd-backup-<node>-<time>.tar.zst`, with `.age` when encrypted.
pub fn archive_name(node: &str, time: &str, encrypted: bool) -> String {
    let age = if encrypted { crypt::AGE_SUFFIX } else { "" };
    format!("{}{time}.tar.zst{age}", archive_prefix(node))
}

/// The part of an archive's name before `.tar.zst` or `.tar.zst.age`.
pub fn archive_stem(name: &str) -> Option<&str> {
    name.strip_suffix(".tar.zst")
        .or_else(|| name.strip_suffix(".tar.zst.age"))
}

/// Whether a file name is one of our archives (encrypted or not).
pub fn is_archive_name(name: &str) -> bool {
    name.starts_with("etcd-backup-") && archive_stem(name).is_some()
}

/// Whether a file name is one of our encrypted archives.
pub fn is_encrypted_name(name: &str) -> bool {
    is_archive_name(name) && name.ends_with(crypt::AGE_SUFFIX)
}

/// The default archive dir: `<state-dir>/backups`.
pub fn default_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("backups")
}

/// The verification stamp beside an archive: `.<name>.verify.json`.
pub fn stamp_path(archive: &Path) -> PathBuf {
    let name = archive.file_name().unwrap_or_default().to_string_lossy();
    archive.with_file_name(format!(".{name}.verify.json"))
}

/// The sidecar beside an archive: `.<name>.meta.json`.
pub fn meta_path(archive: &Path) -> PathBuf {
    let name = archive.file_name().unwrap_or_default().to_string_lossy();
    archive.with_file_name(format!(".{name}.meta.json"))
}

/// What `backup list` shows of an archive without opening it, written with the archive. It
/// carries nothing secret: no key, no cluster data beyond ids and the revision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    pub format: u32,
    pub id: String,
    pub node: String,
    pub created: String,
    pub cluster_id: String,
    pub revision: i64,
    pub etcd_version: String,
    /// Archive bytes on disk when written.
    pub size: u64,
    pub encrypted: bool,
    /// The public keys it is encrypted to, as given (empty when not encrypted).
    pub recipients: Vec<String>,
}

/// The sidecar of an archive, if there is one that parses.
pub fn read_meta(archive: &Path) -> Option<Meta> {
    let text = std::fs::read_to_string(meta_path(archive)).ok()?;
    serde_json::from_str(&text).ok()
}

/// What the last verification of an archive found, kept beside it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stamp {
    pub ok: bool,
    pub checked: String,
    pub restore_test: bool,
    /// The archive's size and mtime when checked: a changed archive is unverified again.
    pub size: u64,
    pub mtime_ns: i128,
    pub revision: Option<i64>,
    pub created: Option<String>,
    pub problems: Vec<String>,
}

/// `(size, mtime in ns)` of a file, to tie a stamp to one version of an archive.
pub fn size_mtime(path: &Path) -> Result<(u64, i128)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    Ok((
        m.len(),
        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    ))
}

/// The stamp of an archive if it still describes the archive as it is.
pub fn current_stamp(archive: &Path) -> Option<Stamp> {
    let text = std::fs::read_to_string(stamp_path(archive)).ok()?;
    let stamp: Stamp = serde_json::from_str(&text).ok()?;
    let (size, mtime) = size_mtime(archive).ok()?;
    (stamp.size == size && stamp.mtime_ns == mtime).then_some(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_time_and_are_recognised() {
        let a = archive_name("node1", "20261130T101500Z", false);
        let b = archive_name("node1", "20261130T111500Z", false);
        let e = archive_name("node1", "20261130T111500Z", true);
        assert_eq!(e, "etcd-backup-node1-20261130T111500Z.tar.zst.age");
        assert!(is_archive_name(&e) && is_encrypted_name(&e) && !is_encrypted_name(&a));
        assert!(!is_archive_name("etcd-backup-node1-1.tar.zst.age.part"));
        assert_eq!(
            meta_path(Path::new("/b/etcd-backup-n-1.tar.zst.age")),
            PathBuf::from("/b/.etcd-backup-n-1.tar.zst.age.meta.json")
        );
        assert_eq!(a, "etcd-backup-node1-20261130T101500Z.tar.zst");
        assert!(a < b && is_archive_name(&a) && !is_archive_name("x.tar.zst"));
        assert!(a.starts_with(&archive_prefix("node1")));
        assert_eq!(
            stamp_path(Path::new("/b/etcd-backup-n-1.tar.zst")),
            PathBuf::from("/b/.etcd-backup-n-1.tar.zst.verify.json")
        );
    }

    #[test]
    fn node_names_must_be_file_name_safe() {
        assert!(valid_node_name("cp-1.example"));
        assert!(!valid_node_name("a/b"));
        assert!(!valid_node_name(".."));
        assert!(!valid_node_name(""));
    }
}
