//! Snapshots: `save` streams one member's backend to `FILE.part`, checks etcd's sha256
//! trailer (the last 32 bytes of the stream are the sha256 of everything before them),
//! fsyncs, renames into place without replacing anything, sets mode 0600 and fsyncs the dir;
//! `verify` repeats the trailer check on a file.
//!
//! A failed or interrupted save leaves no `.part` behind: the file is removed by a guard
//! when the save returns early *or when its future is dropped* (the command drops it on
//! Ctrl-C or SIGTERM). The `.part` is flocked while written, so two saves to one name cannot
//! interleave; a stale `.part` from a killed run is simply reused.
//!
//! `save` is a library function: `migrate apply` takes its snapshot through it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use ring::digest::{Context, SHA256};
use serde::Serialize;

use super::client::{Endpoint, RpcError, within};
use super::connect::Connection;
use crate::error::{Error, Result};
use crate::output::hex_id;

/// Length of etcd's sha256 trailer.
pub const TRAILER: usize = 32;

/// bbolt's magic number, at byte 16 of the first meta page.
const BOLT_MAGIC: u32 = 0xED0C_DAED;

#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// The longest wait for the stream to start or for any one chunk: a stall, not the
    /// whole download, which may take minutes for a large db.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    pub file: PathBuf,
    /// The member streamed from.
    pub endpoint: String,
    pub member_id: String,
    /// The store's revision just before streaming (the snapshot holds at least this).
    pub revision: i64,
    /// Bytes in the file, trailer included.
    pub size: u64,
    /// sha256 of the whole file, as `sha256sum FILE` prints it.
    pub sha256: String,
    /// blake3 of the whole file, as `b3sum FILE` prints it.
    pub blake3: String,
    pub took_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub file: PathBuf,
    pub ok: bool,
    pub size: u64,
    pub sha256: String,
    pub blake3: String,
    /// What is wrong, when something is.
    pub problem: Option<String>,
}

/// `FILE.part`, beside FILE.
pub fn part_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    file.with_file_name(name)
}

/// Removes the `.part` unless disarmed: on every early return, and when the save future is
/// dropped by Ctrl-C.
struct PartGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for PartGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Check what can be checked before connecting: FILE absent (exit 4), its dir present (2).
pub fn preflight(file: &Path) -> Result<()> {
    if file.as_os_str().is_empty() || file.file_name().is_none() {
        return Err(Error::input(file, "not a file name"));
    }
    if file.is_dir() {
        return Err(Error::input(
            file,
            format!(
                "is a directory: give the snapshot's file name, e.g. {}",
                file.join("etcd-snapshot.db").display()
            ),
        ));
    }
    if file.symlink_metadata().is_ok() {
        return Err(Error::refused(
            format!("snapshot save {}", file.display()),
            "the file exists; choose another name or remove it first",
        ));
    }
    let dir = parent(file);
    if !dir.is_dir() {
        return Err(Error::input(dir, "directory does not exist"));
    }
    Ok(())
}

fn parent(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Hashes of a stream: the whole (sha256, blake3), and etcd's check of the body against the
/// trailer, computed by holding back the last 32 bytes seen (one sha256 pass: the whole's
/// hash continues the body's). Public so that `backup` checks
/// the snapshot it streams into an archive, and the one it reads back, the same way.
pub struct Digests {
    whole_b3: blake3::Hasher,
    body_sha: Context,
    tail: Vec<u8>,
    size: u64,
}

impl Default for Digests {
    fn default() -> Self {
        Self::new()
    }
}

impl Digests {
    pub fn new() -> Self {
        Digests {
            whole_b3: blake3::Hasher::new(),
            body_sha: Context::new(&SHA256),
            tail: Vec::with_capacity(2 * TRAILER),
            size: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.whole_b3.update(data);
        self.size += data.len() as u64;
        if data.len() >= TRAILER {
            self.body_sha.update(&self.tail);
            let (body, tail) = data.split_at(data.len() - TRAILER);
            self.body_sha.update(body);
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > TRAILER {
                let excess = self.tail.len() - TRAILER;
                self.body_sha.update(&self.tail[..excess]);
                self.tail.drain(..excess);
            }
        }
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `(sha256, blake3, trailer problem)`; `head` is the first 64 bytes of the stream.
    pub fn finish(self, head: &[u8]) -> (String, String, Option<String>) {
        // The whole stream is the body plus the held-back tail: one sha256 pass gives both.
        let mut whole = self.body_sha.clone();
        whole.update(&self.tail);
        let sha = hex(whole.finish().as_ref());
        let b3 = self.whole_b3.finalize().to_hex().to_string();
        let problem = if self.size < (TRAILER + 4096) as u64 {
            Some(format!(
                "{} bytes is too short for a snapshot (a bbolt db and a 32-byte sha256 trailer)",
                self.size
            ))
        } else if !(self.size - TRAILER as u64).is_multiple_of(512) {
            Some(format!(
                "no sha256 trailer: the size {} is not a whole db plus 32 bytes (truncated, or not saved by etcd's snapshot API)",
                self.size
            ))
        } else if head.len() < 20
            || u32::from_le_bytes([head[16], head[17], head[18], head[19]]) != BOLT_MAGIC
        {
            Some("not a bbolt database (bad magic in the first page)".into())
        } else {
            let body = self.body_sha.finish();
            if body.as_ref() == self.tail.as_slice() {
                None
            } else {
                Some(format!(
                    "sha256 trailer mismatch: the body hashes to {}, the trailer says {}",
                    hex(body.as_ref()),
                    hex(&self.tail)
                ))
            }
        };
        (sha, b3, problem)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stream a snapshot from the first endpoint that answers into `file`.
/// `progress(done, total)` is called after every chunk (`total` is etcd's estimate).
pub async fn save(
    conn: &Connection,
    file: &Path,
    opts: &SaveOptions,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<SnapshotReport> {
    let start = Instant::now();
    preflight(file)?;
    let part = part_path(file);
    let what = format!("snapshot save {}", file.display());
    let handle = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .open(&part)
        .map_err(|e| Error::io("create", &part, e))?;
    let locked = Flock::lock(handle, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == Errno::EWOULDBLOCK {
            Error::refused(
                &what,
                format!(
                    "{} is being written by another snapshot save",
                    part.display()
                ),
            )
        } else {
            Error::io("lock", &part, std::io::Error::from(errno))
        }
    })?;
    // From here on the .part is ours: any way out but success removes it.
    let mut guard = PartGuard {
        path: part.clone(),
        armed: true,
    };
    locked
        .set_len(0)
        .map_err(|e| Error::io("truncate", &part, e))?;
    // A stale .part may have had other modes.
    std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("chmod", &part, e))?;

    let (mut ep, status) = Endpoint::first_answering(conn, opts.idle_timeout).await?;
    let url = ep.url.clone();
    let fail = |e: RpcError| Error::Etcd {
        op: "snapshot",
        endpoint: url.clone(),
        reason: e.into(),
    };
    let mut stream = within(
        opts.idle_timeout,
        "start of the snapshot stream",
        ep.snapshot(),
    )
    .await
    .map_err(fail)?;

    let mut out = BufWriter::with_capacity(1 << 20, &*locked);
    let mut digests = Digests::new();
    let mut head: Vec<u8> = Vec::with_capacity(64);
    let mut total = 0u64;
    while let Some(chunk) = within(opts.idle_timeout, "snapshot chunk", stream.next())
        .await
        .map_err(fail)?
    {
        if head.len() < 64 {
            let take = (64 - head.len()).min(chunk.blob.len());
            head.extend_from_slice(&chunk.blob[..take]);
        }
        out.write_all(&chunk.blob)
            .map_err(|e| Error::io("write", &part, e))?;
        digests.update(&chunk.blob);
        total = total.max(digests.size + chunk.remaining);
        progress(digests.size, total);
        // A fast stream is always ready and would never give a caller's select (Ctrl-C) a
        // turn: yield once per chunk.
        tokio::task::yield_now().await;
    }
    out.flush().map_err(|e| Error::io("write", &part, e))?;
    drop(out);
    let size = digests.size;
    let (sha256, blake3, problem) = digests.finish(&head);
    if let Some(p) = problem {
        return Err(Error::failed(
            &what,
            format!("the stream from {url} is not a valid snapshot: {p}"),
        ));
    }
    locked
        .sync_all()
        .map_err(|e| Error::io("fsync", &part, e))?;
    drop(locked);

    // Never replace a file that appeared while we streamed.
    if !crate::node::rename_noreplace(&part, file)? {
        return Err(Error::refused(
            &what,
            "the file appeared while the snapshot was streamed; it was left alone",
        ));
    }
    guard.armed = false;
    let dir = parent(file);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync", &dir, e))?;

    Ok(SnapshotReport {
        file: file.to_path_buf(),
        endpoint: url.clone(),
        member_id: hex_id(status.member_id),
        revision: status.revision,
        size,
        sha256,
        blake3,
        took_ms: start.elapsed().as_millis() as u64,
    })
}

/// Check a snapshot file: size, bbolt magic, and etcd's sha256 trailer.
pub fn verify(file: &Path) -> Result<VerifyReport> {
    let mut f = match File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::input(file, "no such file"));
        }
        Err(e) => return Err(Error::io("open", file, e)),
    };
    if f.metadata()
        .map_err(|e| Error::io("stat", file, e))?
        .is_dir()
    {
        return Err(Error::input(file, "is a directory, not a snapshot file"));
    }
    let mut digests = Digests::new();
    let mut head = Vec::with_capacity(64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read", file, e))?;
        if n == 0 {
            break;
        }
        if head.len() < 64 {
            let take = (64 - head.len()).min(n);
            head.extend_from_slice(&buf[..take]);
        }
        digests.update(&buf[..n]);
    }
    let size = digests.size;
    let (sha256, blake3, problem) = digests.finish(&head);
    Ok(VerifyReport {
        file: file.to_path_buf(),
        ok: problem.is_none(),
        size,
        sha256,
        blake3,
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake snapshot: a page with bbolt's magic, padding, and etcd's trailer.
    fn fake(pages: usize) -> Vec<u8> {
        let mut body = vec![0u8; 4096 * pages];
        body[16..20].copy_from_slice(&BOLT_MAGIC.to_le_bytes());
        for (i, b) in body.iter_mut().enumerate().skip(20) {
            *b = (i % 251) as u8;
        }
        let sum = ring::digest::digest(&SHA256, &body);
        body.extend_from_slice(sum.as_ref());
        body
    }

    fn check(bytes: &[u8], chunk: usize) -> Option<String> {
        let mut d = Digests::new();
        for c in bytes.chunks(chunk) {
            d.update(c);
        }
        d.finish(&bytes[..64.min(bytes.len())]).2
    }

    #[test]
    fn trailer_check_is_independent_of_chunking() {
        let good = fake(3);
        for chunk in [1, 7, 31, 32, 33, 4096, 1 << 20] {
            assert_eq!(check(&good, chunk), None, "chunk {chunk}");
        }
        let mut bad = good.clone();
        bad[5000] ^= 1;
        for chunk in [1, 33, 4096] {
            let p = check(&bad, chunk).expect("corruption detected");
            assert!(p.contains("mismatch"), "{p}");
        }
        let truncated = &good[..good.len() - 1];
        assert!(
            check(truncated, 4096)
                .unwrap()
                .contains("no sha256 trailer")
        );
        assert!(check(&good[..100], 4096).unwrap().contains("too short"));
        let mut not_bolt = fake(2);
        not_bolt[16] = 0;
        assert!(check(&not_bolt, 4096).unwrap().contains("bbolt"));
    }

    #[test]
    fn whole_file_digests_match_the_usual_tools() {
        let good = fake(2);
        // Chunks shorter than the trailer, equal to it, and longer, and a stream shorter
        // than a trailer: the whole's sha256 continues the body's in every case.
        for (bytes, chunk) in [
            (&good[..], good.len()),
            (&good[..], 7),
            (&good[..], 32),
            (&good[..], 33),
            (&good[..20], 3),
        ] {
            let mut d = Digests::new();
            for c in bytes.chunks(chunk) {
                d.update(c);
            }
            let (sha, b3, _) = d.finish(&good[..64]);
            assert_eq!(sha, hex(ring::digest::digest(&SHA256, bytes).as_ref()));
            assert_eq!(b3, blake3::hash(bytes).to_hex().to_string());
        }
    }

    #[test]
    fn verify_reads_files_and_rejects_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.db");
        std::fs::write(&f, fake(2)).unwrap();
        let r = verify(&f).unwrap();
        assert!(r.ok && r.problem.is_none() && r.size == 8192 + 32);
        let mut bytes = fake(2);
        bytes[100] ^= 0xff;
        std::fs::write(&f, bytes).unwrap();
        assert!(!verify(&f).unwrap().ok);
        assert_eq!(
            verify(&dir.path().join("absent")).unwrap_err().exit_code(),
            2
        );
        assert_eq!(verify(dir.path()).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn preflight_refuses_existing_files_and_missing_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("x.db");
        std::fs::write(&existing, b"keep me").unwrap();
        assert_eq!(preflight(&existing).unwrap_err().exit_code(), 4);
        assert_eq!(
            preflight(&dir.path().join("no/such/dir/x.db"))
                .unwrap_err()
                .exit_code(),
            2
        );
        preflight(&dir.path().join("new.db")).unwrap();
        assert_eq!(
            part_path(Path::new("/b/snap.db")),
            PathBuf::from("/b/snap.db.part")
        );
    }
}
