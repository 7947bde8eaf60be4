//! Checking an archive: one sequential read of the zstd/tar stream that hashes every entry
//! (blake3; the snapshot also through etcd's sha256-trailer check), then the comparison with
//! `contents.json`. Every difference is a named problem; any problem is exit 1.
//!
//! The trial restore (`--restore-test`) extracts the snapshot into a work dir beside the
//! archive during that same read, restores it with etcd's own tool, starts a throwaway etcd
//! on free loopback ports and compares its key count and HashKV at the recorded revision with
//! `contents.json`. The work dir and every process started (each in its own process group)
//! are removed by a guard: on success, on failure, and when the future is dropped (Ctrl-C).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::crypt::{self, Identity};
use super::tool::{EtcdBinaries, ToolKind};
use super::{CONTENTS_ENTRY, Contents, FORMAT, SNAPSHOT_ENTRY, Stamp, size_mtime, stamp_path};
use crate::error::{Error, Result};
use crate::etcd::client::{Endpoint, within};
use crate::etcd::connect::{Connection, TlsFiles};
use crate::etcd::snapshot::Digests;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub archive: PathBuf,
    pub ok: bool,
    pub size: u64,
    pub id: Option<String>,
    pub node: Option<String>,
    pub created: Option<String>,
    pub cluster_id: Option<String>,
    pub revision: Option<i64>,
    pub hash_kv: Option<u32>,
    pub key_count: Option<i64>,
    pub entries: usize,
    /// Every difference found, each naming its entry.
    pub problems: Vec<String>,
    pub restore_test: Option<RestoreTestReport>,
    /// Whether the verification stamp beside the archive was written.
    pub stamped: bool,
    pub took_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreTestReport {
    pub ok: bool,
    pub tool: PathBuf,
    pub etcd: PathBuf,
    pub etcd_version: Option<String>,
    pub endpoint: Option<String>,
    pub revision: i64,
    pub key_count: Option<i64>,
    pub hash_kv: Option<u32>,
    pub took_ms: u64,
}

/// What one read of the archive saw.
struct Read1 {
    contents: Option<Contents>,
    problems: Vec<String>,
    entries: usize,
}

/// How an archive is stored: a plain tar.zst, or that inside an age stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Plain,
    Age,
}

/// Open an archive; a missing file, a directory or a file that is neither zstd nor age is
/// bad input (exit 2), everything found inside is a verification problem (exit 1).
fn open(archive: &Path) -> Result<(File, Format)> {
    let f = match File::open(archive) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::input(archive, "no such file"));
        }
        Err(e) => return Err(Error::io("open", archive, e)),
    };
    let meta = f.metadata().map_err(|e| Error::io("stat", archive, e))?;
    if meta.is_dir() {
        return Err(Error::input(
            archive,
            "is a directory, not a backup archive",
        ));
    }
    drop(f);
    let head = crypt::head(archive).map_err(|e| Error::io("read", archive, e))?;
    let format = if head.starts_with(&ZSTD_MAGIC) {
        Format::Plain
    } else if crypt::is_age(&head) {
        Format::Age
    } else {
        return Err(Error::input(
            archive,
            "not a backup archive (neither a zstd frame nor an age header at its start)",
        ));
    };
    let f = File::open(archive).map_err(|e| Error::io("open", archive, e))?;
    Ok((f, format))
}

/// The archive's bytes as a tar.zst stream: the file itself, or its age stream decrypted
/// with `identity` (exit 2 when that cannot open it, before anything is read further).
fn plain_stream(archive: &Path, identity: Option<&Identity>) -> Result<Box<dyn Read + Send>> {
    let (file, format) = open(archive)?;
    Ok(match format {
        Format::Plain => Box::new(file),
        Format::Age => Box::new(crypt::decrypt(
            archive,
            identity,
            std::io::BufReader::with_capacity(1 << 16, file),
        )?),
    })
}

/// Refuse what is not an archive at all, and an encrypted archive that `identity` does not
/// open (exit 2), before anything else is looked up.
pub fn check_input(archive: &Path, identity: Option<&Identity>) -> Result<()> {
    plain_stream(archive, identity).map(drop)
}

/// The identity that opens `archive`, read only when the archive is encrypted: a plain
/// archive needs none, whatever `--identity` or `ETCDOPS_IDENTITY` says.
pub fn identity_for(archive: &Path, identity: Option<&Path>) -> Result<Option<Identity>> {
    match identity {
        Some(path) if is_encrypted(archive) => Identity::load(path).map(Some),
        _ => Ok(None),
    }
}

/// Whether the archive is encrypted (age).
pub fn is_encrypted(archive: &Path) -> bool {
    matches!(open(archive), Ok((_, Format::Age)))
}

/// Hash every entry; write the snapshot to `extract` on the way when asked.
fn read_archive(
    archive: &Path,
    identity: Option<&Identity>,
    extract: Option<&Path>,
) -> Result<Read1> {
    let source = plain_stream(archive, identity)?;
    let decoder =
        zstd::stream::read::Decoder::new(source).map_err(|e| Error::io("read", archive, e))?;
    // Decompression on a thread of its own, overlapping the digests below.
    let decoded = super::pipe::PipeReader::spawn(decoder)
        .map_err(|e| Error::io("start the reader thread for", archive, e))?;
    let mut tar = tar::Archive::new(decoded);
    let mut problems = Vec::new();
    // path -> (size, blake3, trailer problem)
    let mut seen: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut contents_bytes: Option<Vec<u8>> = None;
    let mut buf = vec![0u8; 1 << 20];
    let mut last = String::from("(start)");
    let result = (|| -> std::io::Result<()> {
        for entry in tar.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            last = path.clone();
            let kind = entry.header().entry_type();
            // A hand-made tar (extracted, fixed, re-packed) has directory entries: harmless.
            if kind.is_dir() {
                continue;
            }
            if !kind.is_file() {
                problems.push(format!("entry {path}: not a regular file"));
                continue;
            }
            if path == CONTENTS_ENTRY {
                let mut bytes = Vec::new();
                (&mut entry).take(64 << 20).read_to_end(&mut bytes)?;
                contents_bytes = Some(bytes);
                order.push(path);
                continue;
            }
            let is_snap = path == SNAPSHOT_ENTRY;
            let mut out = match (is_snap, extract) {
                (true, Some(p)) => Some(std::io::BufWriter::new(File::create(p)?)),
                _ => None,
            };
            let mut b3 = blake3::Hasher::new();
            let mut digests = is_snap.then(Digests::new);
            let mut head = Vec::with_capacity(64);
            let mut size = 0u64;
            loop {
                let n = entry.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                // The snapshot's Digests hash blake3 too: one pass, not two.
                if digests.is_none() {
                    b3.update(&buf[..n]);
                }
                if let Some(d) = &mut digests {
                    if head.len() < 64 {
                        let take = (64 - head.len()).min(n);
                        head.extend_from_slice(&buf[..take]);
                    }
                    d.update(&buf[..n]);
                }
                if let Some(o) = &mut out {
                    o.write_all(&buf[..n])?;
                }
            }
            if let Some(mut o) = out {
                o.flush()?;
            }
            let b3 = match digests {
                Some(d) => {
                    let (_, b3, problem) = d.finish(&head);
                    if let Some(p) = problem {
                        problems.push(format!("{SNAPSHOT_ENTRY}: {p}"));
                    }
                    b3
                }
                None => b3.finalize().to_hex().to_string(),
            };
            if seen.insert(path.clone(), (size, b3)).is_some() {
                problems.push(format!("entry {path} appears twice"));
            }
            order.push(path);
        }
        Ok(())
    })();
    if let Err(e) = result {
        problems.push(format!(
            "the archive cannot be read past entry {last}: {e} (truncated or corrupt)"
        ));
    }
    let entries = order.len();
    let contents = match contents_bytes {
        None => {
            problems.push(format!("{CONTENTS_ENTRY} is missing"));
            None
        }
        Some(bytes) => match serde_json::from_slice::<Contents>(&bytes) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(format!("{CONTENTS_ENTRY} does not parse: {e}"));
                None
            }
        },
    };
    if let Some(c) = &contents {
        if order.last().map(String::as_str) != Some(CONTENTS_ENTRY) {
            problems.push(format!("{CONTENTS_ENTRY} is not the last entry"));
        }
        if c.format != FORMAT {
            problems.push(format!(
                "{CONTENTS_ENTRY}: format {} is not {FORMAT}",
                c.format
            ));
        }
        for e in &c.entries {
            match seen.get(&e.path) {
                None => problems.push(format!("entry {} is missing", e.path)),
                Some((size, _)) if *size != e.size => problems.push(format!(
                    "entry {}: {size} bytes, {CONTENTS_ENTRY} says {}",
                    e.path, e.size
                )),
                Some((_, b3)) if *b3 != e.blake3 => problems.push(format!(
                    "entry {}: blake3 {b3}, {CONTENTS_ENTRY} says {}",
                    e.path, e.blake3
                )),
                Some(_) => {}
            }
        }
        for path in seen.keys() {
            if !c.entries.iter().any(|e| &e.path == path) {
                problems.push(format!("entry {path} is not listed in {CONTENTS_ENTRY}"));
            }
        }
        match c.snapshot() {
            None => problems.push(format!("{CONTENTS_ENTRY} lists no {SNAPSHOT_ENTRY}")),
            Some(s) if !s.blake3.starts_with(&c.id) || c.id.len() != 16 => problems.push(format!(
                "{CONTENTS_ENTRY}: id {} is not the snapshot's blake3 prefix",
                c.id
            )),
            Some(_) => {}
        }
    }
    Ok(Read1 {
        contents,
        problems,
        entries,
    })
}

/// Verify an archive without a trial restore and record the verdict beside it.
pub fn verify_and_stamp(archive: &Path, identity: Option<&Identity>) -> Result<VerifyReport> {
    let start = Instant::now();
    let read = read_archive(archive, identity, None)?;
    Ok(finish(archive, read, None, start))
}

fn finish(
    archive: &Path,
    read: Read1,
    restore: Option<RestoreTestReport>,
    start: Instant,
) -> VerifyReport {
    let ok = read.problems.is_empty() && restore.as_ref().is_none_or(|r| r.ok);
    let (size, mtime_ns) = size_mtime(archive).unwrap_or((0, 0));
    let c = read.contents.as_ref();
    let stamp = Stamp {
        ok,
        checked: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        restore_test: restore.is_some(),
        size,
        mtime_ns,
        revision: c.map(|c| c.revision),
        created: c.map(|c| c.created.clone()),
        problems: read.problems.clone(),
    };
    // A stamp is a convenience for `backup list`; a read-only archive dir only costs that.
    let stamped = crate::node::write_atomic(
        &stamp_path(archive),
        &serde_json::to_vec_pretty(&stamp).expect("stamps serialize"),
        0o600,
        None,
    )
    .is_ok();
    VerifyReport {
        archive: archive.to_path_buf(),
        ok,
        size,
        id: c.map(|c| c.id.clone()),
        node: c.map(|c| c.node.clone()),
        created: c.map(|c| c.created.clone()),
        cluster_id: c.map(|c| c.cluster_id.clone()),
        revision: c.map(|c| c.revision),
        hash_kv: c.map(|c| c.hash_kv),
        key_count: c.map(|c| c.key_count),
        entries: read.entries,
        problems: read.problems,
        restore_test: restore,
        stamped,
        took_ms: start.elapsed().as_millis() as u64,
    }
}

/// `contents.json` of an archive (one full read: it is the last entry).
pub fn read_contents(archive: &Path, identity: Option<&Identity>) -> Result<Option<Contents>> {
    Ok(read_archive(archive, identity, None)?.contents)
}

/// Check an archive without leaving a stamp (for callers that must change nothing):
/// its contents when readable, and every problem found.
pub fn check(
    archive: &Path,
    identity: Option<&Identity>,
) -> Result<(Option<Contents>, Vec<String>)> {
    let read = read_archive(archive, identity, None)?;
    Ok((read.contents, read.problems))
}

/// Write an archive's snapshot to `dest` while verifying the whole archive; refuse (exit 4)
/// when a sum or the trailer fails, and leave no `dest` behind then.
pub fn extract_snapshot(archive: &Path, identity: Option<&Identity>, dest: &Path) -> Result<()> {
    let read = read_archive(archive, identity, Some(dest))?;
    if !read.problems.is_empty() || !dest.is_file() {
        let _ = std::fs::remove_file(dest);
        return Err(Error::refused(
            format!("extract the snapshot of {}", archive.display()),
            if read.problems.is_empty() {
                "the archive has no snapshot".to_string()
            } else {
                format!("the archive does not verify: {}", read.problems.join("; "))
            },
        ));
    }
    Ok(())
}

/// Whether a file starts like an archive (a zstd frame or an age header), as opposed to a
/// bare snapshot.
pub fn looks_like_archive(path: &Path) -> bool {
    crypt::head(path).is_ok_and(|h| h.starts_with(&ZSTD_MAGIC) || crypt::is_age(&h))
}

/// Options of the trial restore.
#[derive(Debug, Clone)]
pub struct RestoreTestOptions {
    pub binaries: EtcdBinaries,
    /// Longest wait for the throwaway etcd to answer.
    pub start_timeout: Duration,
}

/// The work dir and the processes of a trial restore; all gone when this drops.
struct Scratch {
    dir: PathBuf,
    groups: Vec<i32>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for pgid in &self.groups {
            kill_group(*pgid);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn kill_group(pgid: i32) {
    use nix::sys::signal::{Signal, killpg};
    use nix::sys::wait::{WaitPidFlag, waitpid};
    use nix::unistd::Pid;
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    // Reap the leader if it is ours and still a zombie; tokio reaps it otherwise.
    let _ = waitpid(Pid::from_raw(pgid), Some(WaitPidFlag::WNOHANG));
}

/// Verify an archive and, when `restore` is given, trial-restore it; stamp the verdict.
pub async fn verify(
    archive: &Path,
    identity: Option<Arc<Identity>>,
    restore: Option<&RestoreTestOptions>,
) -> Result<VerifyReport> {
    let start = Instant::now();
    let Some(opts) = restore else {
        let archive = archive.to_path_buf();
        return tokio::task::spawn_blocking(move || {
            verify_and_stamp(&archive, identity.as_deref())
        })
        .await
        .map_err(|e| Error::failed("backup verify", e.to_string()))?;
    };
    // Check the input before making anything.
    check_input(archive, identity.as_deref())?;
    let parent = match archive.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = parent.join(format!(
        ".etcdops-restore-test-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io("create work dir", &dir, e))?;
    let mut scratch = Scratch {
        dir: dir.clone(),
        groups: Vec::new(),
    };
    let snap = dir.join(SNAPSHOT_ENTRY);
    let read = {
        let archive = archive.to_path_buf();
        let snap = snap.clone();
        tokio::task::spawn_blocking(move || {
            read_archive(&archive, identity.as_deref(), Some(&snap))
        })
        .await
        .map_err(|e| Error::failed("backup verify", e.to_string()))??
    };
    // Only an archive whose sums hold is worth restoring.
    let contents = match (&read.contents, read.problems.is_empty()) {
        (Some(c), true) => c.clone(),
        _ => {
            drop(scratch);
            return Ok(finish(archive, read, None, start));
        }
    };
    let mut report = RestoreTestReport {
        ok: false,
        tool: opts.binaries.tool.path.clone(),
        etcd: opts.binaries.etcd.clone(),
        etcd_version: None,
        endpoint: None,
        revision: contents.revision,
        key_count: None,
        hash_kv: None,
        took_ms: 0,
    };
    let restore_start = Instant::now();
    let mut read = read;
    if let Err(p) = trial(&mut scratch, &snap, &contents, opts, &mut report).await {
        read.problems.push(format!("restore test: {p}"));
    }
    report.took_ms = restore_start.elapsed().as_millis() as u64;
    report.ok = read.problems.is_empty();
    drop(scratch);
    Ok(finish(archive, read, Some(report), start))
}

/// A free TCP port on 127.0.0.1 (released before etcd binds it).
fn free_port() -> std::result::Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(2)..].join(" | ")
}

async fn trial(
    scratch: &mut Scratch,
    snap: &Path,
    contents: &Contents,
    opts: &RestoreTestOptions,
    report: &mut RestoreTestReport,
) -> std::result::Result<(), String> {
    let name = "etcdops-restore-test";
    let data = scratch.dir.join("data");
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let client = format!("http://127.0.0.1:{}", free_port()?);
    let initial = format!("{name}={peer}");

    // etcd's own restore.
    let tool = &opts.binaries.tool;
    let log = scratch.dir.join("restore.log");
    let logf = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let mut cmd = tokio::process::Command::new(&tool.path);
    cmd.args(["snapshot", "restore"])
        .arg(snap)
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--name={name}"))
        .arg(format!("--initial-cluster={initial}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster-token={name}-{}", contents.id))
        .current_dir(&scratch.dir)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().map_err(|e| e.to_string())?)
        .stderr(logf)
        .process_group(0)
        .kill_on_drop(true);
    if tool.kind == ToolKind::Etcdctl {
        cmd.env("ETCDCTL_API", "3");
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("run {}: {e}", tool.path.display()))?;
    if let Some(pid) = child.id() {
        scratch.groups.push(pid as i32);
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("wait for {}: {e}", tool.path.display()))?;
    if !status.success() {
        return Err(format!(
            "`{} snapshot restore` {status}: {}",
            tool.path.display(),
            tail(&log)
        ));
    }

    // A throwaway member on loopback.
    let log = scratch.dir.join("etcd.log");
    let logf = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let mut child = tokio::process::Command::new(&opts.binaries.etcd)
        .arg(format!("--name={name}"))
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={initial}"))
        .current_dir(&scratch.dir)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().map_err(|e| e.to_string())?)
        .stderr(logf)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("run {}: {e}", opts.binaries.etcd.display()))?;
    if let Some(pid) = child.id() {
        scratch.groups.push(pid as i32);
    }
    report.endpoint = Some(client.clone());
    let conn = Connection {
        endpoints: vec![client.clone()],
        tls: TlsFiles::default(),
        dial_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(10),
        manifest: None,
    };
    let deadline = Instant::now() + opts.start_timeout;
    let (mut ep, status) = loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!(
                "the throwaway etcd exited ({st}) before answering: {}",
                tail(&log)
            ));
        }
        let attempt = async {
            let mut ep = Endpoint::connect(&conn, &client).await?;
            let s = within(Duration::from_secs(2), "status", ep.status()).await?;
            Ok::<_, String>((ep, s))
        };
        match attempt.await {
            Ok(found) => break found,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "the throwaway etcd at {client} did not answer within {} ({e})",
                    humantime::format_duration(opts.start_timeout)
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    report.etcd_version = Some(status.version.clone());
    let t = Duration::from_secs(60);
    let count = within(t, "key count", ep.key_count(contents.revision))
        .await
        .map_err(|e| format!("key count at revision {}: {e}", contents.revision))?;
    report.key_count = Some(count);
    // Its own deadline, scaled by the restored db's size (issue 26), never under the minute
    // the other calls get.
    let conn = Connection {
        command_timeout: t,
        ..conn
    };
    let target = crate::etcd::hashkv::Target {
        url: &client,
        name: None,
        db_size: status.db_size,
    };
    let (hkv, _) = crate::etcd::hashkv::hash_kv(
        &conn,
        &target,
        contents.revision,
        crate::etcd::hashkv::Watch::QUIET,
    )
    .await;
    let hkv = hkv.map_err(|e| format!("HashKV at revision {}: {e}", contents.revision))?;
    report.hash_kv = Some(hkv.hash);
    let mut wrong = Vec::new();
    if count != contents.key_count {
        wrong.push(format!(
            "{count} keys at revision {}, {CONTENTS_ENTRY} says {}",
            contents.revision, contents.key_count
        ));
    }
    if hkv.hash != contents.hash_kv {
        wrong.push(format!(
            "HashKV {:x} at revision {}, {CONTENTS_ENTRY} says {:x}",
            hkv.hash, contents.revision, contents.hash_kv
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}
