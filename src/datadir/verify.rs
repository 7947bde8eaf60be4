//! `datadir verify`: compare two trees entry by entry — type, size, mode, owner, mtime and
//! content (blake3, streamed) — and list every difference, not just the first, so that an
//! operator sees at once whether a copy is wrong in one byte or in its ownership.
//!
//! Contents are hashed by two threads sharing every file segment by segment
//! ([`super::blocks`]), each through its own 1 MiB buffer, so memory stays at two blocks
//! whatever the data size and a single big db still uses both cores. Right after a copy, the source's sums the copy
//! computed while reading it stand in for the source's contents (unless a file changed since,
//! which its ctime tells): only the target is read.
//!
//! By default the target is read back from its device, not from the page cache the copy just
//! filled: each target file is fdatasync'ed, its cached pages dropped
//! (posix_fadvise(POSIX_FADV_DONTNEED)), and mincore(2) then tells whether they really left
//! the cache — DONTNEED only drops clean pages no one else maps, and a tmpfs has no device
//! at all. Only when every page of every target file was gone before it was read does the
//! report say `verified_from: "device"`; otherwise `"page-cache"`, with the bytes still
//! resident. The source is not dropped: its bytes are the reference, wherever they come from.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use nix::fcntl::PosixFadviseAdvice;
use nix::libc;

use super::blocks::{FileJob, hash_files};
use super::digest::KnownSums;
use super::{Entry, Kind, Meta, Tree, existing_dir, open_read};
use crate::error::{Error, Result};

pub struct VerifyOptions {
    pub src: PathBuf,
    pub dst: PathBuf,
    /// The source's sums from the copy: a source file they cover and that has not changed
    /// since (ctime) is not read again, so a verify right after a copy reads only the target.
    pub src_sums: Option<KnownSums>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub identical: bool,
    /// Regular files compared by content, and their bytes (per tree).
    pub files: usize,
    pub bytes: u64,
    /// Source files read for their content (the others' hashes came from `src_sums`).
    pub src_files_read: usize,
    pub took_ms: u64,
    /// Where the target's bytes were read from: `device` only if every page of every
    /// target file had left the page cache before it was read.
    pub verified_from: VerifiedFrom,
    /// Bytes of target files in the page cache just before they were read (after dropping
    /// them unless `--verify-from-cache`): 0 for `device`.
    pub resident_bytes: u64,
    pub differences: Vec<Difference>,
}

/// How the target is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBack {
    /// Drop the target's pages first, so that the bytes come from the disk.
    Device,
    /// Read whatever the page cache holds (faster right after a copy; proves memory only).
    Cache,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifiedFrom {
    Device,
    PageCache,
}

impl VerifiedFrom {
    pub fn name(self) -> &'static str {
        match self {
            VerifiedFrom::Device => "device",
            VerifiedFrom::PageCache => "page-cache",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// Relative to both roots; `.` is the roots themselves.
    pub path: String,
    pub kind: DiffKind,
    /// Source value, then target value, in words.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffKind {
    /// In the source, not in the target.
    Missing,
    /// In the target, not in the source.
    Extra,
    Type,
    /// Regular files of different sizes (their contents are then not compared).
    Size,
    Mode,
    /// uid or gid.
    Owner,
    Mtime,
    Content,
}

impl DiffKind {
    pub fn name(self) -> &'static str {
        match self {
            DiffKind::Missing => "missing",
            DiffKind::Extra => "extra",
            DiffKind::Type => "type",
            DiffKind::Size => "size",
            DiffKind::Mode => "mode",
            DiffKind::Owner => "owner",
            DiffKind::Mtime => "mtime",
            DiffKind::Content => "content",
        }
    }
}

/// Compare the trees `opts.src` and `opts.dst`, reading the target from its device.
/// Differences are findings, not errors.
pub fn verify(opts: &VerifyOptions) -> Result<VerifyReport> {
    verify_with(opts, ReadBack::Device)
}

/// [`verify`], choosing where the target is read from.
pub fn verify_with(opts: &VerifyOptions, read_back: ReadBack) -> Result<VerifyReport> {
    let started = Instant::now();
    let src = Tree::walk(&existing_dir(&opts.src)?)?;
    let dst = Tree::walk(&existing_dir(&opts.dst)?)?;
    let mut diffs = Vec::new();
    compare_meta(".", &src.root_meta, &dst.root_meta, &mut diffs);

    let dst_by_rel: BTreeMap<&str, &Entry> =
        dst.entries.iter().map(|e| (e.rel.as_str(), e)).collect();
    let mut to_hash: Vec<(&Entry, &Entry)> = Vec::new();
    for a in &src.entries {
        let Some(b) = dst_by_rel.get(a.rel.as_str()) else {
            diffs.push(diff(
                &a.rel,
                DiffKind::Missing,
                a.meta.kind.name().to_string(),
            ));
            continue;
        };
        if a.meta.kind != b.meta.kind {
            diffs.push(diff(
                &a.rel,
                DiffKind::Type,
                format!("{} vs {}", a.meta.kind.name(), b.meta.kind.name()),
            ));
            continue;
        }
        compare_meta(&a.rel, &a.meta, &b.meta, &mut diffs);
        match a.meta.kind {
            Kind::File if a.meta.size == b.meta.size => to_hash.push((a, b)),
            Kind::Symlink => {
                let (ta, tb) = (read_link(&a.path)?, read_link(&b.path)?);
                if ta != tb {
                    diffs.push(diff(
                        &a.rel,
                        DiffKind::Content,
                        format!("-> {} vs -> {}", ta.display(), tb.display()),
                    ));
                }
            }
            _ => {}
        }
    }
    let src_rels: BTreeMap<&str, ()> = src.entries.iter().map(|e| (e.rel.as_str(), ())).collect();
    for b in &dst.entries {
        if !src_rels.contains_key(b.rel.as_str()) {
            diffs.push(diff(
                &b.rel,
                DiffKind::Extra,
                b.meta.kind.name().to_string(),
            ));
        }
    }

    let bytes = to_hash.iter().map(|(a, _)| a.meta.size).sum();
    // Every target file is read; a source file only when its sum is unknown or stale.
    let known: Vec<Option<blake3::Hash>> = to_hash
        .iter()
        .map(|(a, _)| {
            opts.src_sums
                .as_ref()
                .and_then(|k| k.fresh(&a.rel, a.meta.ctime))
        })
        .collect();
    let mut jobs: Vec<&Entry> = to_hash.iter().map(|(_, b)| *b).collect();
    jobs.extend(
        to_hash
            .iter()
            .zip(&known)
            .filter(|(_, k)| k.is_none())
            .map(|((a, _), _)| *a),
    );
    let src_files_read = jobs.len() - to_hash.len();
    let (hashes, resident) = hash_all(&jobs, to_hash.len(), read_back)?;
    let dst_bytes: u64 = to_hash.iter().map(|(_, b)| b.meta.size).sum();
    let resident_bytes = resident.min(dst_bytes);
    let verified_from = if read_back == ReadBack::Device && resident == 0 {
        VerifiedFrom::Device
    } else {
        VerifiedFrom::PageCache
    };
    let (dst_hashes, src_read) = hashes.split_at(to_hash.len());
    let mut src_read = src_read.iter();
    for (((a, _), k), hb) in to_hash.iter().zip(&known).zip(dst_hashes) {
        let ha = match k {
            Some(h) => *h,
            None => *src_read.next().expect("one hash per source file read"),
        };
        if ha != *hb {
            diffs.push(diff(
                &a.rel,
                DiffKind::Content,
                format!("blake3 {} vs {}", short(&ha), short(hb)),
            ));
        }
    }

    // Roots first, then by path; per path in the order of the kinds.
    diffs.sort_by(|x, y| {
        (x.path != ".", x.path.as_bytes(), x.kind).cmp(&(y.path != ".", y.path.as_bytes(), y.kind))
    });
    Ok(VerifyReport {
        src: src.root,
        dst: dst.root,
        identical: diffs.is_empty(),
        files: to_hash.len(),
        bytes,
        src_files_read,
        took_ms: started.elapsed().as_millis() as u64,
        verified_from,
        resident_bytes,
        differences: diffs,
    })
}

/// Mode, owner and mtime of two entries of the same type. A directory's size depends on
/// the filesystem, not on what it holds, so only regular files compare sizes.
fn compare_meta(path: &str, a: &Meta, b: &Meta, diffs: &mut Vec<Difference>) {
    if a.kind == Kind::File && a.size != b.size {
        diffs.push(diff(
            path,
            DiffKind::Size,
            format!("{} vs {} bytes", a.size, b.size),
        ));
    }
    if a.mode != b.mode {
        diffs.push(diff(
            path,
            DiffKind::Mode,
            format!("{:04o} vs {:04o}", a.mode, b.mode),
        ));
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        diffs.push(diff(
            path,
            DiffKind::Owner,
            format!("{}:{} vs {}:{}", a.uid, a.gid, b.uid, b.gid),
        ));
    }
    if a.mtime != b.mtime {
        diffs.push(diff(
            path,
            DiffKind::Mtime,
            format!(
                "{}.{:09} vs {}.{:09}",
                a.mtime.0, a.mtime.1, b.mtime.0, b.mtime.1
            ),
        ));
    }
}

fn diff(path: &str, kind: DiffKind, detail: String) -> Difference {
    Difference {
        path: path.to_string(),
        kind,
        detail,
    }
}

/// Hash files on both cores ([`super::blocks`]: a big file is shared by the two threads,
/// segment by segment, so a 2 GiB db is not left to one core). Hashes come back in the
/// order of `files`. The first `targets` files are the target's: with [`ReadBack::Device`]
/// their pages are dropped before any is read, and the bytes that stayed resident are
/// summed into the second value.
fn hash_all(
    files: &[&Entry],
    targets: usize,
    read_back: ReadBack,
) -> Result<(Vec<blake3::Hash>, u64)> {
    let mut resident = 0;
    for e in &files[..targets] {
        let file = open_read(&e.path)?;
        resident += cached_bytes(&file, &e.path, read_back)?;
    }
    let jobs: Vec<FileJob> = files
        .iter()
        .map(|e| FileJob {
            path: &e.path,
            size: e.meta.size,
        })
        .collect();
    let hashes = hash_files::<()>(&jobs, None, &super::Silent, &|_, _| Ok(()))?;
    Ok((hashes, resident))
}

/// With [`ReadBack::Device`], make the next read of `file` come from the device: write back
/// anything dirty (fdatasync), ask the kernel to drop its cached pages. Then count with
/// mincore(2) the bytes that are (still) cached — pages mapped by another process, a tmpfs,
/// a filesystem that ignores the advice. Returns those bytes: 0 means the read that follows
/// reaches the device.
pub fn cached_bytes(file: &File, path: &Path, read_back: ReadBack) -> Result<u64> {
    if read_back == ReadBack::Device {
        // fdatasync works on a read-only descriptor on Linux.
        file.sync_data()
            .map_err(|e| Error::io("fdatasync", path, e))?;
        nix::fcntl::posix_fadvise(file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
            .map_err(|e| Error::io("posix_fadvise(DONTNEED)", path, e.into()))?;
    }
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    let len = meta.len();
    if !mincore_trusted(path, &meta) {
        // Since Linux 5.0, mincore reports the page cache of a file only to its owner, a
        // capable process or one that may write it; anyone else sees "not resident".
        return Ok(len);
    }
    resident_bytes(file, len).map_err(|e| Error::io("mincore", path, e))
}

fn mincore_trusted(path: &Path, meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let euid = nix::unistd::geteuid().as_raw();
    euid == 0
        || euid == meta.uid()
        || nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// Bytes of `file` (of length `len`) in the page cache, by mincore(2) over a shared
/// read-only mapping, 64 MiB at a time (the mapping costs address space, not memory: no
/// page is touched).
fn resident_bytes(file: &File, len: u64) -> io::Result<u64> {
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    const WINDOW: u64 = 64 * 1024 * 1024;
    let mut vec = vec![0u8; (WINDOW / page) as usize];
    let mut resident = 0u64;
    let mut offset = 0u64;
    while offset < len {
        let n = (len - offset).min(WINDOW);
        // SAFETY: a fresh read-only shared mapping of an open file, at a page-aligned
        // offset, never dereferenced, unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                n as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let pages = n.div_ceil(page) as usize;
        // SAFETY: `vec` holds at least one byte per page of the `n`-byte mapping at `addr`.
        let rc = unsafe { libc::mincore(addr, n as usize, vec.as_mut_ptr()) };
        let err = io::Error::last_os_error();
        // SAFETY: unmaps exactly the mapping made above.
        unsafe { libc::munmap(addr, n as usize) };
        if rc != 0 {
            return Err(err);
        }
        let in_cache = vec[..pages].iter().filter(|b| **b & 1 != 0).count() as u64;
        resident += (in_cache * page).min(n);
        offset += n;
    }
    Ok(resident)
}

fn read_link(path: &Path) -> Result<PathBuf> {
    fs::read_link(path).map_err(|e| Error::io("read link", path, e))
}

fn short(h: &blake3::Hash) -> String {
    h.to_hex()[..16].to_string()
}
