//! Writing one archive. The snapshot is streamed from etcd straight into the tar/zstd
//! writer: etcd announces the db's exact size with its first chunk (`remaining_bytes` counts
//! down to the 32-byte sha256 trailer), so the tar header can be written before the data and
//! memory stays bounded by one chunk plus zstd's window whatever the db size. The trailer is
//! checked as the bytes pass (`etcd::snapshot::Digests`); a stream that is short, long or
//! fails the check aborts the archive. The small files (pki, manifests, kubeconfigs) are read
//! whole, and `contents.json` closes the archive.
//!
//! The archive is written as `NAME.part` (0600, flocked), fsynced, renamed without
//! replacing anything, and its dir fsynced; every other way out removes the `.part`, also
//! when the future is dropped on Ctrl-C. Then it is read back and verified; only a verified
//! archive lets `--keep` prune older ones.
//!
//! With recipients, the zstd stream goes through an age encryptor before the file
//! (`….tar.zst.age`; `crypt`), on the same writer thread, so memory stays bounded the same
//! way; the read-back opens it with this run's in-memory key. A sidecar `.<name>.meta.json`
//! (0600) is written beside every archive for `backup list`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use super::crypt::{self, Encrypting, Ephemeral, Recipients};
use super::pipe::PipeWriter;
use super::{
    CONTENTS_ENTRY, Contents, EntryInfo, FORMAT, KUBE_PREFIX, MemberInfo, Meta, SNAPSHOT_ENTRY,
    Sources, archive_name, meta_path,
};
use crate::error::{Error, Result};
use crate::etcd::client::{Endpoint, RpcError, within};
use crate::etcd::connect::Connection;
use crate::etcd::snapshot::{Digests, TRAILER};
use crate::output::hex_id;

/// Small files above this size are refused: pki, manifests and kubeconfigs are kilobytes, and
/// reading them whole keeps the writer simple.
const SMALL_FILE_LIMIT: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub sources: Sources,
    pub dir: PathBuf,
    /// Keep this many of the node's archives (the new one included) once it verified.
    pub keep: Option<usize>,
    /// Longest wait for the snapshot stream to start or for its next chunk.
    pub idle_timeout: Duration,
    /// zstd level.
    pub level: i32,
    /// Encrypt to these (age); `None` writes a plain `.tar.zst`.
    pub recipients: Option<Arc<Recipients>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub ok: bool,
    pub archive: PathBuf,
    pub id: String,
    pub node: String,
    /// Archive bytes on disk.
    pub size: u64,
    /// Snapshot bytes (trailer included) inside.
    pub snapshot_size: u64,
    pub entries: usize,
    pub cluster_id: String,
    pub member_id: String,
    pub endpoint: String,
    pub etcd_version: String,
    pub revision: i64,
    pub hash_kv: u32,
    pub key_count: i64,
    pub took_ms: u64,
    /// The read-back verification of the new archive.
    pub verified: bool,
    pub problems: Vec<String>,
    pub verify_ms: u64,
    /// Older archives of this node removed by `--keep`.
    pub pruned: Vec<PathBuf>,
    /// Encrypted to age recipients.
    pub encrypted: bool,
    /// The public keys it is encrypted to.
    pub recipients: Vec<String>,
    /// The sidecar `backup list` reads.
    pub meta: PathBuf,
}

/// Check everything that can be checked before contacting etcd: the dir is a dir (or can be
/// made), the small files are readable. Creates the dir (0700) when missing.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::input(dir, "exists and is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("create backup dir", dir, e)),
        Err(e) => Err(Error::io("stat", dir, e)),
    }
}

/// A small file to archive, read whole.
struct Small {
    path: String,
    mode: u32,
    bytes: Vec<u8>,
}

/// The pki dir (recursively), every non-dot file in the manifests dir (kubelet ignores
/// dotfiles, so they are not manifests), and `*.conf` in the Kubernetes dir; sorted.
fn collect(sources: &Sources) -> Result<Vec<Small>> {
    let mut out = Vec::new();
    let mut pki = Vec::new();
    walk(&sources.pki_dir, &mut pki)?;
    pki.sort();
    let mut manifests = list_files(&sources.manifests_dir, |n| !n.starts_with('.'))?;
    manifests.sort();
    let mut confs = list_files(&sources.kubernetes_dir, |n| n.ends_with(".conf"))?;
    confs.sort();
    for path in pki.into_iter().chain(manifests).chain(confs) {
        let rel = path
            .strip_prefix(&sources.kubernetes_dir)
            .map_err(|_| Error::input(&path, "is not below the Kubernetes dir"))?;
        let meta = fs::metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
        if meta.len() > SMALL_FILE_LIMIT {
            return Err(Error::input(
                &path,
                format!(
                    "{} bytes is too large for a pki file, manifest or kubeconfig",
                    meta.len()
                ),
            ));
        }
        let bytes = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        out.push(Small {
            path: format!("{KUBE_PREFIX}/{}", rel.display()),
            mode: meta.permissions().mode() & 0o7777,
            bytes,
        });
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = fs::read_dir(dir).map_err(|e| Error::io("read dir", dir, e))?;
    for e in rd {
        let e = e.map_err(|e| Error::io("read dir", dir, e))?;
        let p = e.path();
        let m = fs::metadata(&p).map_err(|e| Error::io("stat", &p, e))?;
        if m.is_dir() {
            walk(&p, out)?;
        } else if m.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

fn list_files(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| Error::io("read dir", dir, e))?;
    for e in rd {
        let e = e.map_err(|e| Error::io("read dir", dir, e))?;
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if keep(&name) && fs::metadata(&p).is_ok_and(|m| m.is_file()) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Removes the `.part` unless disarmed.
struct PartGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for PartGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The bytes under zstd: the file, or an age stream into the file.
enum Sink {
    Plain(BufWriter<File>),
    Age(Encrypting<BufWriter<File>>),
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(data),
            Sink::Age(w) => w.write(data),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Age(w) => w.flush(),
        }
    }
}

impl Sink {
    /// The age stream's last chunk, then the file's buffer.
    fn finish(self) -> std::io::Result<()> {
        match self {
            Sink::Plain(mut w) => w.flush(),
            Sink::Age(w) => w.finish()?.flush(),
        }
    }
}

fn header(path: &str, size: u64, mode: u32, mtime: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_gnu();
    h.set_path(path)
        .map_err(|e| Error::failed(format!("archive entry {path}"), e.to_string()))?;
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Write a new archive into `opts.dir`, verify it, prune on request.
pub async fn create(conn: &Connection, opts: &BackupOptions) -> Result<BackupReport> {
    let start = Instant::now();
    let now = SystemTime::now();
    let smalls = collect(&opts.sources)?;
    prepare_dir(&opts.dir)?;
    let name = archive_name(
        &opts.sources.node,
        &crate::manifest::atomic::timestamp(now),
        opts.recipients.is_some(),
    );
    let file = opts.dir.join(&name);
    let what = format!("backup {}", file.display());
    if file.symlink_metadata().is_ok() {
        return Err(Error::refused(
            &what,
            "an archive of this node with this second's name exists; run again in a second",
        ));
    }
    let part = opts.dir.join(format!("{name}.part"));
    let handle = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .open(&part)
        .map_err(|e| Error::io("create", &part, e))?;
    let locked = Flock::lock(handle, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == Errno::EWOULDBLOCK {
            Error::refused(&what, format!("{} is being written", part.display()))
        } else {
            Error::io("lock", &part, std::io::Error::from(errno))
        }
    })?;
    let mut guard = PartGuard {
        path: part.clone(),
        armed: true,
    };
    locked
        .set_len(0)
        .map_err(|e| Error::io("truncate", &part, e))?;
    fs::set_permissions(&part, fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("chmod", &part, e))?;

    // Identity and fingerprint first, from the member that will stream the snapshot: the
    // snapshot then holds at least `revision`, and HashKV/count at `revision` are what a
    // restore of it must reproduce.
    let (mut ep, status) = Endpoint::first_answering(conn, opts.idle_timeout).await?;
    let url = ep.url.clone();
    let etcd_err = |op: &'static str| {
        let url = url.clone();
        move |reason: RpcError| Error::Etcd {
            op,
            endpoint: url,
            reason: reason.into(),
        }
    };
    let t = conn.command_timeout;
    let members = within(t, "member list", ep.members())
        .await
        .map_err(etcd_err("member list"))?;
    // HashKV reads the whole key bucket: its own deadline, scaled by the db size, not the
    // command timeout (issue 26). The key count walks etcd's in-memory index, not the values.
    let target = crate::etcd::hashkv::Target {
        url: &url,
        name: None,
        db_size: status.db_size,
    };
    let (hkv, _) = crate::etcd::hashkv::hash_kv(
        conn,
        &target,
        status.revision,
        crate::etcd::hashkv::Watch::QUIET,
    )
    .await;
    let hkv = hkv.map_err(etcd_err("hash kv"))?;
    let key_count = within(t, "key count", ep.key_count(status.revision))
        .await
        .map_err(etcd_err("key count"))?;

    let mtime = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // zstd runs on a thread of its own (`pipe`), overlapping the stream and its digests.
    let out = BufWriter::with_capacity(
        1 << 20,
        locked.try_clone().map_err(|e| Error::io("dup", &part, e))?,
    );
    // Made here, dropped when this function returns: the read-back's key (`crypt`).
    let readback = opts.recipients.as_ref().map(|_| Ephemeral::new());
    let sink = match &opts.recipients {
        None => Sink::Plain(out),
        Some(r) => Sink::Age(
            crypt::encrypt(r, readback.as_ref(), out)
                .map_err(|e| Error::io("start the encryption of", &part, e))?,
        ),
    };
    let encoder = zstd::stream::write::Encoder::new(sink, opts.level)
        .map_err(|e| Error::io("start zstd", &part, e))?;
    let pipe = PipeWriter::spawn(encoder, |encoder| encoder.finish()?.finish())
        .map_err(|e| Error::io("start the writer thread for", &part, e))?;
    let mut tar = tar::Builder::new(pipe);
    let werr = |e: std::io::Error| Error::io("write", &part, e);

    // The snapshot, streamed.
    let mut stream = within(
        opts.idle_timeout,
        "start of the snapshot stream",
        ep.snapshot(),
    )
    .await
    .map_err(etcd_err("snapshot"))?;
    let mut digests = Digests::new();
    let mut head: Vec<u8> = Vec::with_capacity(64);
    let mut declared: Option<u64> = None;
    while let Some(chunk) = within(opts.idle_timeout, "snapshot chunk", stream.next())
        .await
        .map_err(etcd_err("snapshot"))?
    {
        let size = match declared {
            Some(d) => d,
            None => {
                // The first chunk: the db's size is this chunk plus what remains; the
                // trailer follows it.
                let d = chunk.blob.len() as u64 + chunk.remaining + TRAILER as u64;
                tar.get_mut()
                    .write_all(header(SNAPSHOT_ENTRY, d, 0o600, mtime)?.as_bytes())
                    .map_err(werr)?;
                declared = Some(d);
                d
            }
        };
        if digests.size() + chunk.blob.len() as u64 > size {
            return Err(Error::failed(
                &what,
                format!("{url} sent more snapshot bytes than the {size} it announced"),
            ));
        }
        if head.len() < 64 {
            let take = (64 - head.len()).min(chunk.blob.len());
            head.extend_from_slice(&chunk.blob[..take]);
        }
        tar.get_mut().write_all(&chunk.blob).map_err(werr)?;
        digests.update(&chunk.blob);
        tokio::task::yield_now().await;
    }
    let declared = declared
        .ok_or_else(|| Error::failed(&what, format!("{url} sent an empty snapshot stream")))?;
    let snapshot_size = digests.size();
    if snapshot_size != declared {
        return Err(Error::failed(
            &what,
            format!(
                "the snapshot stream from {url} ended after {snapshot_size} of the {declared} bytes it announced"
            ),
        ));
    }
    let (sha256, blake3, problem) = digests.finish(&head);
    if let Some(p) = problem {
        return Err(Error::failed(
            &what,
            format!("the stream from {url} is not a valid snapshot: {p}"),
        ));
    }
    let pad = (512 - snapshot_size % 512) % 512;
    tar.get_mut()
        .write_all(&vec![0u8; pad as usize])
        .map_err(werr)?;

    let mut entries = vec![EntryInfo {
        path: SNAPSHOT_ENTRY.into(),
        size: snapshot_size,
        mode: 0o600,
        blake3: blake3.clone(),
        sha256: Some(sha256),
    }];
    for s in &smalls {
        let mut h = header(&s.path, s.bytes.len() as u64, s.mode, mtime)?;
        tar.append_data(&mut h, &s.path, s.bytes.as_slice())
            .map_err(werr)?;
        entries.push(EntryInfo {
            path: s.path.clone(),
            size: s.bytes.len() as u64,
            mode: s.mode,
            blake3: blake3::hash(&s.bytes).to_hex().to_string(),
            sha256: None,
        });
    }
    let contents = Contents {
        format: FORMAT,
        id: blake3[..16].to_string(),
        node: opts.sources.node.clone(),
        created: humantime::format_rfc3339_seconds(now).to_string(),
        etcd_version: status.version.clone(),
        cluster_id: hex_id(status.cluster_id),
        member_id: hex_id(status.member_id),
        endpoint: url.clone(),
        members: members
            .iter()
            .map(|m| MemberInfo {
                id: hex_id(m.id),
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                client_urls: m.client_urls.clone(),
                is_learner: m.is_learner,
            })
            .collect(),
        revision: status.revision,
        hash_kv: hkv.hash,
        compact_revision: hkv.compact_revision,
        key_count,
        kubernetes_dir: opts.sources.kubernetes_dir.clone(),
        manifest: opts.sources.manifest.clone(),
        entries,
    };
    let json = serde_json::to_vec_pretty(&contents).expect("contents serialize");
    let mut h = header(CONTENTS_ENTRY, json.len() as u64, 0o600, mtime)?;
    tar.append_data(&mut h, CONTENTS_ENTRY, json.as_slice())
        .map_err(werr)?;
    tar.into_inner().map_err(werr)?.finish().map_err(werr)?;
    locked
        .sync_all()
        .map_err(|e| Error::io("fsync", &part, e))?;
    drop(locked);
    if !crate::node::rename_noreplace(&part, &file)? {
        return Err(Error::refused(
            &what,
            "the archive appeared while it was written; it was left alone",
        ));
    }
    guard.armed = false;
    let size = fs::metadata(&file)
        .map_err(|e| Error::io("stat", &file, e))?
        .len();
    let recipients = opts
        .recipients
        .as_ref()
        .map(|r| r.described.clone())
        .unwrap_or_default();
    let meta = Meta {
        format: FORMAT,
        id: blake3[..16].to_string(),
        node: opts.sources.node.clone(),
        created: humantime::format_rfc3339_seconds(now).to_string(),
        cluster_id: hex_id(status.cluster_id),
        revision: status.revision,
        etcd_version: status.version.clone(),
        size,
        encrypted: opts.recipients.is_some(),
        recipients: recipients.clone(),
    };
    let meta_file = meta_path(&file);
    crate::node::write_atomic(
        &meta_file,
        &serde_json::to_vec_pretty(&meta).expect("meta serializes"),
        0o600,
        None,
    )?;
    File::open(&opts.dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync", &opts.dir, e))?;
    let written_ms = start.elapsed().as_millis() as u64;

    // Read it back: only an archive that verifies may replace older ones.
    let verify_start = Instant::now();
    let check = {
        let file = file.clone();
        let key = readback.as_ref().map(Ephemeral::identity);
        tokio::task::spawn_blocking(move || super::verify::verify_and_stamp(&file, key.as_ref()))
            .await
            .map_err(|e| Error::failed(&what, format!("the verification task failed: {e}")))??
    };
    drop(readback);
    let verify_ms = verify_start.elapsed().as_millis() as u64;
    let mut pruned = Vec::new();
    if check.ok
        && let Some(keep) = opts.keep
    {
        pruned = super::prune::prune(&opts.dir, &opts.sources.node, keep, &file)?;
    }
    Ok(BackupReport {
        ok: check.ok,
        archive: file,
        id: contents.id,
        node: contents.node,
        size,
        snapshot_size,
        entries: contents.entries.len() + 1,
        cluster_id: contents.cluster_id,
        member_id: contents.member_id,
        endpoint: url,
        etcd_version: contents.etcd_version,
        revision: contents.revision,
        hash_kv: contents.hash_kv,
        key_count,
        took_ms: written_ms,
        verified: check.ok,
        problems: check.problems,
        verify_ms,
        pruned,
        encrypted: meta.encrypted,
        recipients,
        meta: meta_file,
    })
}
