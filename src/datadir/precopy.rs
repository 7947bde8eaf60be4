//! Pre-copy: move most of a data dir while etcd still runs, so that the copy made while it
//! is stopped writes only what changed since — downtime that does not grow with the data.
//!
//! [`precopy`] copies the live data dir into the target's staging dir (the one `copy` uses,
//! `.NAME.etcdops-staging` beside the target) and records the blake3 of every 1 MiB block it
//! wrote, in a record file inside the staging dir, written last: a staging dir without it is
//! an interrupted pre-copy and is replaced like any stale staging dir. The source is only
//! read (O_NOATIME); reading a live db gives an inconsistent copy, which is fine here because
//! the pre-copy is never evidence.
//!
//! [`super::copy::finish_copy`] then, with the source quiesced and locked as for any copy,
//! re-reads the source once on both cores ([`super::blocks`]), hashes each block, and
//! rewrites only blocks whose hash differs from the record (the db changes in place, the last
//! WAL segment grows). A block's hash is its BLAKE3 chaining value at its offset, so the
//! whole file's blake3 is merged from the same hashes: each source byte is hashed once. Files that
//! appeared are written whole, unless a staged file that disappeared from the source has the
//! same size (etcd renames its preallocated `wal/0.tmp` to the next segment): that one is
//! renamed and diffed block by block. Truncated files are cut, removed files and directories
//! removed, entries that changed type replaced. Then owner, mode and mtime are set on
//! everything as in a full copy, and `verify` proves the final tree against the quiesced
//! source's sums computed during this second pass — exactly as after a full copy.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use blake3::hazmat::ChainingValue;

use super::blocks::{Block, FileJob, block_cv, hash_files};
use super::copy::{
    CopyOptions, Staging, Target, WRITEBACK, apply_meta, finish_dir, read_full, start_writeback,
};
use super::digest::Sums;
use super::{Entry, Kind, Layout, Progress, Tree, open_read};
use crate::error::{Error, Result};

pub use super::blocks::BLOCK;

/// The record's format: 2 = block hashes are BLAKE3 chaining values at the block's offset
/// ([`super::blocks::block_cv`]). A record without it (format 1: each block hashed alone)
/// is not used: the update falls back to a full copy.
pub const FORMAT: u32 = 2;

/// The record's name inside the staging dir. It is written last by `precopy` and removed
/// first by the update, so its presence means "the staged files are what it describes".
pub const RECORD: &str = ".etcdops-precopy.json";

pub struct PrecopyOptions<'a> {
    /// The live data dir.
    pub src: PathBuf,
    /// The final target (must not exist or be empty): the pre-copy fills its staging dir.
    pub dst: PathBuf,
    pub progress: &'a dyn Progress,
    /// Set to abandon the pre-copy; its staging dir is then removed.
    pub cancel: Option<&'a AtomicBool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrecopyReport {
    pub src: PathBuf,
    pub dst: PathBuf,
    /// Where the pre-copy is kept until `copy --update` (or a migration's undo removes it).
    pub staging: PathBuf,
    pub files: usize,
    pub bytes: u64,
    pub took_ms: u64,
}

/// What the pre-copy wrote: per file, its size and the blake3 of each [`BLOCK`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    #[serde(default = "format_1")]
    pub format: u32,
    pub src: PathBuf,
    pub block_size: u64,
    pub files: Vec<RecordFile>,
}

fn format_1() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordFile {
    pub rel: String,
    pub size: u64,
    /// The chaining value of each block, hex.
    pub blocks: Vec<String>,
}

impl Record {
    /// Read the record of the staging dir `staging`; the error is the reason it is unusable.
    pub(super) fn load(staging: &Path) -> std::result::Result<Record, String> {
        let path = staging.join(RECORD);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(format!(
                    "the staging dir {} holds no finished pre-copy (interrupted?)",
                    staging.display()
                ));
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let record: Record = serde_json::from_str(&text)
            .map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
        if record.format != FORMAT {
            return Err(format!(
                "{} has record format {}, not {FORMAT} (made by another etcdops version)",
                path.display(),
                record.format
            ));
        }
        if record.block_size != BLOCK as u64 {
            return Err(format!(
                "{} was written with {}-byte blocks, not {BLOCK}",
                path.display(),
                record.block_size
            ));
        }
        Ok(record)
    }

    /// Bytes the staged files hold.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Write the record durably (temp name, fsync, rename, fsync the dir): only then is the
    /// pre-copy finished.
    fn write(&self, staging: &Path) -> Result<()> {
        let part = staging.join(format!("{RECORD}.part"));
        let path = staging.join(RECORD);
        let text = serde_json::to_vec(self).expect("a record serializes");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&part)
            .map_err(|e| Error::io("create", &part, e))?;
        f.write_all(&text)
            .map_err(|e| Error::io("write", &part, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &part, e))?;
        fs::rename(&part, &path).map_err(|e| Error::io("rename", &path, e))?;
        sync_dir(staging)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync", dir, e))
}

fn block_hex(bytes: &[u8], offset: u64) -> String {
    blake3::Hash::from_bytes(block_cv(bytes, offset))
        .to_hex()
        .to_string()
}

/// A record's block hash back into a chaining value (`None` if it is not one: the block
/// is then rewritten).
fn parse_cv(hex: &str) -> Option<ChainingValue> {
    blake3::Hash::from_hex(hex).ok().map(|h| *h.as_bytes())
}

fn cancelled(cancel: Option<&AtomicBool>) -> bool {
    cancel.is_some_and(|c| c.load(SeqCst))
}

/// Copy the live data dir `opts.src` into the staging dir of `opts.dst` and record what was
/// written. The target itself is not created; a previous staging dir (an older pre-copy, a
/// killed copy) is replaced. On failure or cancel, the staging dir is removed.
pub fn precopy(opts: &PrecopyOptions) -> Result<PrecopyReport> {
    let started = Instant::now();
    let layout = Layout::open(&opts.src)?;
    let target = Target::resolve(&opts.dst, &layout.root)?;
    let tree = walk_live(&layout.root)?;
    target.check_space(&tree)?;
    let staging = Staging::acquire(&target)?;
    opts.progress.start(tree.file_bytes());
    let done = precopy_tree(&tree, &staging.path, opts);
    opts.progress.finish();
    match done {
        Ok(record) => {
            let staging_path = staging.path.clone();
            staging.disarm();
            Ok(PrecopyReport {
                src: layout.root,
                dst: target_path(&opts.dst),
                staging: staging_path,
                files: record.files.len(),
                bytes: record.bytes(),
                took_ms: started.elapsed().as_millis() as u64,
            })
        }
        Err(e) => {
            let what = format!(
                "pre-copy {} to {}",
                layout.root.display(),
                staging.path.display()
            );
            let cause = if cancelled(opts.cancel) {
                "interrupted".to_string()
            } else {
                e.one_line()
            };
            let staging_path = staging.path.clone();
            Err(match staging.remove() {
                Ok(()) => Error::failed(
                    what,
                    format!("{cause}; removed the staging dir, nothing was left behind"),
                ),
                Err(rm) => Error::failed(
                    what,
                    format!(
                        "{cause}; and removing the staging dir failed ({rm}): remove it with \
                         `rm -rf {}`",
                        staging_path.display()
                    ),
                ),
            })
        }
    }
}

fn target_path(dst: &Path) -> PathBuf {
    match (dst.parent(), dst.file_name()) {
        (Some(p), Some(n)) => fs::canonicalize(p)
            .map(|p| p.join(n))
            .unwrap_or_else(|_| dst.to_path_buf()),
        _ => dst.to_path_buf(),
    }
}

/// Walk a data dir etcd is writing to: an entry can vanish between the directory read and
/// its stat (etcd renames `0.tmp` to a new segment, purges old ones); walk again then.
fn walk_live(root: &Path) -> Result<Tree> {
    let mut last = None;
    for _ in 0..5 {
        match Tree::walk(root) {
            Ok(t) => return Ok(t),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                last = Some(source)
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::io(
        "walk (it kept changing)",
        root,
        last.expect("a retry had an error"),
    ))
}

fn precopy_tree(tree: &Tree, root: &Path, opts: &PrecopyOptions) -> Result<Record> {
    for e in tree.entries.iter().filter(|e| e.meta.kind == Kind::Dir) {
        let path = root.join(&e.rel);
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|err| Error::io("create", &path, err))?;
    }
    let mut buf = vec![0u8; BLOCK];
    let mut files = Vec::new();
    for e in tree.files() {
        if let Some(f) = precopy_file(e, &root.join(&e.rel), &mut buf, opts)? {
            files.push(f);
        }
    }
    let record = Record {
        format: FORMAT,
        src: tree.root.clone(),
        block_size: BLOCK as u64,
        files,
    };
    sync_dirs(tree, root)?;
    if cancelled(opts.cancel) {
        return Err(Error::failed("pre-copy", "interrupted"));
    }
    record.write(root)?;
    Ok(record)
}

/// fsync every staged directory (their entries become durable before the record is).
fn sync_dirs(tree: &Tree, root: &Path) -> Result<()> {
    for e in tree.entries.iter().filter(|e| e.meta.kind == Kind::Dir) {
        sync_dir(&root.join(&e.rel))?;
    }
    sync_dir(root)
}

/// Copy one live file block by block, hashing what is written. A file that vanished
/// before it was opened is skipped (the update writes it if it comes back); one that grows
/// or shrinks while read is recorded as read.
fn precopy_file(
    e: &Entry,
    dst_path: &Path,
    buf: &mut [u8],
    opts: &PrecopyOptions,
) -> Result<Option<RecordFile>> {
    let mut src = match open_read(&e.path) {
        Ok(f) => f,
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst_path)
        .map_err(|err| Error::io("create", dst_path, err))?;
    let mut blocks = Vec::new();
    let mut size = 0u64;
    let mut flushed = 0u64;
    loop {
        if cancelled(opts.cancel) {
            return Err(Error::failed("pre-copy", "interrupted"));
        }
        let n = read_full(&mut src, buf).map_err(|err| Error::io("read", &e.path, err))?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])
            .map_err(|err| Error::io("write", dst_path, err))?;
        blocks.push(block_hex(&buf[..n], size));
        size += n as u64;
        opts.progress.advance(n as u64);
        if size - flushed >= WRITEBACK {
            start_writeback(&dst, flushed, size - flushed);
            flushed = size;
        }
        if n < buf.len() {
            break;
        }
    }
    dst.sync_all()
        .map_err(|err| Error::io("fsync", dst_path, err))?;
    Ok(Some(RecordFile {
        rel: e.rel.clone(),
        size,
        blocks,
    }))
}

/// The update half of `finish_copy`: bring the staging dir `root`, described by `record`,
/// to the quiesced source `tree`. Returns the source's sums (as read now) and the bytes
/// written.
pub(super) fn update_tree(
    tree: &Tree,
    root: &Path,
    record: &Record,
    opts: &CopyOptions,
) -> Result<(Sums, u64)> {
    // From here on the staged files no longer match the record: a crash mid-update must
    // leave an unusable pre-copy (a full copy next time), not a wrong one.
    let record_path = root.join(RECORD);
    fs::remove_file(&record_path).map_err(|e| Error::io("remove", &record_path, e))?;
    sync_dir(root)?;

    let src: BTreeMap<&str, &Entry> = tree.entries.iter().map(|e| (e.rel.as_str(), e)).collect();
    let staged = Tree::walk(root)?;
    // Staged files the source no longer has: candidates for a rename, else removed.
    let mut orphans: Vec<&Entry> = Vec::new();
    let mut extra_dirs: Vec<&Entry> = Vec::new();
    for s in &staged.entries {
        match src.get(s.rel.as_str()) {
            None if s.meta.kind == Kind::File => orphans.push(s),
            None => extra_dirs.push(s),
            Some(e) if e.meta.kind != s.meta.kind => remove_entry(s)?,
            Some(_) => {}
        }
    }
    for e in tree.entries.iter().filter(|e| e.meta.kind == Kind::Dir) {
        let path = root.join(&e.rel);
        if !path.is_dir() {
            DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(|err| Error::io("create", &path, err))?;
        }
    }

    let recorded: BTreeMap<&str, &RecordFile> =
        record.files.iter().map(|f| (f.rel.as_str(), f)).collect();
    let mut renamed: BTreeSet<&str> = BTreeSet::new();
    let files: Vec<&Entry> = tree.files().collect();
    // Per source file: the staged file it updates and the recorded hashes of its blocks.
    let mut targets: Vec<(PathBuf, Vec<Option<ChainingValue>>)> = Vec::with_capacity(files.len());
    for e in &files {
        let dst_path = root.join(&e.rel);
        let mut blocks: Option<&RecordFile> = recorded.get(e.rel.as_str()).copied();
        if fs::symlink_metadata(&dst_path).is_err() {
            blocks = None;
            // etcd's preallocated `wal/0.tmp` becomes the next segment by a rename: reuse
            // a vanished staged file of the same size, in the same directory.
            let parent = e.rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
            let candidate = orphans.iter().find(|o| {
                !renamed.contains(o.rel.as_str())
                    && o.meta.size == e.meta.size
                    && o.rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("") == parent
            });
            if let Some(o) = candidate {
                fs::rename(&o.path, &dst_path).map_err(|err| Error::io("rename", &o.path, err))?;
                renamed.insert(o.rel.as_str());
                blocks = recorded.get(o.rel.as_str()).copied();
            }
        }
        // Created if new; cut or extended to the source's size (an extension reads as
        // zeros and has no recorded hashes, so every block of it is written below).
        let dst = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&dst_path)
            .map_err(|err| Error::io("open", &dst_path, err))?;
        dst.set_len(e.meta.size)
            .map_err(|err| Error::io("truncate", &dst_path, err))?;
        let hashes = blocks
            .map(|r| r.blocks.iter().map(|h| parse_cv(h)).collect())
            .unwrap_or_default();
        targets.push((dst_path, hashes));
    }

    // Both cores re-read and hash the quiesced source; a block whose hash differs from the
    // record is written to the staged file at once (each thread keeps its last target open).
    let jobs: Vec<FileJob> = files
        .iter()
        .map(|e| FileJob {
            path: &e.path,
            size: e.meta.size,
        })
        .collect();
    let written = AtomicU64::new(0);
    let write_changed = |open: &mut Option<(usize, File)>, b: &Block| -> Result<()> {
        let (dst_path, recorded) = &targets[b.file];
        if recorded.get(b.index as usize).copied().flatten() == Some(*b.cv) {
            return Ok(());
        }
        if open.as_ref().is_none_or(|(i, _)| *i != b.file) {
            let f = OpenOptions::new()
                .write(true)
                .open(dst_path)
                .map_err(|err| Error::io("open", dst_path, err))?;
            *open = Some((b.file, f));
        }
        let dst = &open.as_ref().expect("opened above").1;
        dst.write_all_at(b.data, b.offset)
            .map_err(|err| Error::io("write", dst_path, err))?;
        let before = written.fetch_add(b.data.len() as u64, SeqCst);
        if (before + b.data.len() as u64) / WRITEBACK != before / WRITEBACK {
            start_writeback(dst, 0, 0);
        }
        Ok(())
    };
    let sums = hash_files(&jobs, opts.cancel, opts.progress, &write_changed)
        .map_err(|e| rename_interrupt(e, opts))?;
    let mut hashes = Vec::with_capacity(files.len());
    for ((e, (dst_path, _)), hash) in files.iter().zip(&targets).zip(sums) {
        let dst = OpenOptions::new()
            .write(true)
            .open(dst_path)
            .map_err(|err| Error::io("open", dst_path, err))?;
        apply_meta(&dst, dst_path, &e.meta)?;
        dst.sync_all()
            .map_err(|err| Error::io("fsync", dst_path, err))?;
        hashes.push((e.rel.clone(), hash));
    }
    let written = written.into_inner();
    for o in orphans.iter().filter(|o| !renamed.contains(o.rel.as_str())) {
        remove_entry(o)?;
    }
    // Deepest first, so that a removed tree goes before its parent.
    for d in extra_dirs.iter().rev() {
        if d.path.exists() {
            remove_entry(d)?;
        }
    }
    for e in tree
        .entries
        .iter()
        .rev()
        .filter(|e| e.meta.kind == Kind::Dir)
    {
        finish_dir(&root.join(&e.rel), &e.meta)?;
    }
    finish_dir(root, &tree.root_meta)?;
    Ok((Sums::new(hashes)?, written))
}

fn remove_entry(e: &Entry) -> Result<()> {
    let removed = if e.meta.kind == Kind::Dir {
        fs::remove_dir_all(&e.path)
    } else {
        fs::remove_file(&e.path)
    };
    removed.map_err(|err| Error::io("remove", &e.path, err))
}

/// A cancel seen by the hashing threads is worded as the copy's own interrupt.
fn rename_interrupt(e: Error, opts: &CopyOptions) -> Error {
    if super::copy::cancelled(opts) {
        super::copy::interrupted()
    } else {
        e
    }
}
