//! `datadir verify`: compare two trees entry by entry — type, size, mode, owner, mtime and
//! content (blake3, streamed) — and list every difference, not just the first, so that an
//! operator sees at once whether a copy is wrong in one byte or in its ownership.
//!
//! Contents are hashed by two threads, each streaming files in [`CHUNK`]s, so memory stays
//! at two chunks whatever the data size. Right after a copy, the source's sums the copy
//! computed while reading it stand in for the source's contents (unless a file changed since,
//! which its ctime tells): only the target is read.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::digest::{KnownSums, hash_file_with};
use super::{CHUNK, Entry, Kind, Meta, Tree, existing_dir};
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
    pub differences: Vec<Difference>,
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

/// Compare the trees `opts.src` and `opts.dst`. Differences are findings, not errors.
pub fn verify(opts: &VerifyOptions) -> Result<VerifyReport> {
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
    let hashes = hash_all(&jobs)?;
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

/// Hash files on two threads (the machine's two cores), biggest first so that the work
/// evens out; each thread streams through its own chunk buffer. Hashes come back in the
/// order of `files`.
fn hash_all(files: &[&Entry]) -> Result<Vec<blake3::Hash>> {
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(files[i].meta.size));
    let next = AtomicUsize::new(0);
    let worker = || -> Result<Vec<(usize, blake3::Hash)>> {
        let mut buf = vec![0u8; CHUNK];
        let mut done = Vec::new();
        while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
            done.push((i, hash_file_with(&files[i].path, &mut buf)?));
        }
        Ok(done)
    };
    let (a, b) = std::thread::scope(|s| {
        let other = s.spawn(worker);
        let mine = worker();
        (
            mine,
            other.join().expect("the hashing thread does not panic"),
        )
    });
    let mut hashes = vec![blake3::Hash::from_bytes([0; 32]); files.len()];
    for (i, h) in a?.into_iter().chain(b?) {
        hashes[i] = h;
    }
    Ok(hashes)
}

fn read_link(path: &Path) -> Result<PathBuf> {
    fs::read_link(path).map_err(|e| Error::io("read link", path, e))
}

fn short(h: &blake3::Hash) -> String {
    h.to_hex()[..16].to_string()
}
