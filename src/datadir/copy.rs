//! `datadir copy`: copy a quiesced etcd data dir to a new place, keeping every file's and
//! directory's owner, mode and mtime, durably, and leaving nothing behind on failure.
//!
//! The copy never starts on a live data dir (a db copied under a running etcd is corrupt,
//! etcd-io/etcd#13109) and holds the db flock until it ends, so an etcd started meanwhile
//! waits instead of writing. It writes into a staging dir beside the target (same filesystem,
//! so the final rename is atomic), fsyncs every file and directory, renames into place and
//! fsyncs the parent. Any failure, or an interrupt signalled through `cancel`, removes the
//! staging dir.
//!
//! It does not use fs_extra: fs_extra keeps neither directory modes nor (with progress) file
//! modes, and copies every byte through user space. Here the bytes move in the kernel
//! (copy_file_range, or sendfile across filesystems) while a second thread hashes the source
//! on the other core (the source sums add no wall time while that core is free), a third waits on fsyncs so the
//! next file is already being copied, and writeback is started every 8 MiB so the disk works
//! while we copy instead of all at the final fsync. Memory is one hashing buffer whatever the
//! data size.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::mpsc;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, PosixFadviseAdvice, RenameFlags};
use nix::libc;
use nix::sys::stat::{Mode, fchmod, futimens};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown};
use serde::Serialize;

use super::digest::{KnownSums, Sums};
use super::{CHUNK, Entry, Kind, Layout, Meta, Progress, Tree, open_read, quiesce};
use crate::error::{Error, Result};

/// Bytes moved per copy call: the granularity of progress and of cancel checks.
const STEP: usize = 8 * 1024 * 1024;

/// Start writeback of a file every this many bytes written.
pub(super) const WRITEBACK: u64 = 8 * 1024 * 1024;

pub struct CopyOptions<'a> {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub progress: &'a dyn Progress,
    /// Set (by a SIGINT/SIGTERM handler, a migration's abort) to abandon the copy. Checked
    /// between chunks and once more just before the rename, the point of no return.
    pub cancel: Option<&'a AtomicBool>,
    /// Also write the source's sums here (b3sum lines; see `KnownSums::write`), so that a
    /// later `verify` need not read the source again. Must not exist yet.
    pub sums_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub files: usize,
    pub dirs: usize,
    pub bytes: u64,
    pub took_ms: u64,
    /// blake3 over the source's sums lines as read during the copy (see `digest`).
    pub digest: String,
    /// Bytes written into the target while the source was quiesced (etcd stopped): all of
    /// them for a full copy, only the changed blocks and files after a pre-copy.
    pub bytes_after_stop: u64,
    pub precopy: PrecopyUse,
    /// Why a pre-copy asked for was not used (none found, interrupted, another source).
    pub precopy_fallback: Option<String>,
    pub sums_file: Option<PathBuf>,
    /// The source's sums as read during the copy, for `verify` and the migration's run dir.
    #[serde(skip)]
    pub sums: KnownSums,
}

/// Where a copy to `dst` stages its files: a dotfile dir beside it, on the same filesystem.
/// A copy killed mid-way leaves it behind; the next copy or a migration's rollback removes it.
pub fn staging_path_for(dst: &Path) -> Option<PathBuf> {
    Some(staging_name(dst.parent()?, dst.file_name()?))
}

fn staging_name(parent: &Path, name: &std::ffi::OsStr) -> PathBuf {
    let mut staged = OsString::from(".");
    staged.push(name);
    staged.push(".etcdops-staging");
    parent.join(staged)
}

/// Copy the data dir `opts.src` to `opts.dst` (which must not exist, or be an empty
/// directory). See the module header for the guarantees. A staging dir left beside the
/// target (a killed copy, or a pre-copy) is discarded: every byte is copied.
pub fn copy(opts: &CopyOptions) -> Result<CopyReport> {
    copy_with(opts, false)
}

/// Like [`copy`], but when the staging dir holds a finished pre-copy of the same source
/// (`datadir precopy`, [`super::precopy::precopy`]), only the blocks and files that changed
/// since are written; otherwise (no pre-copy, an interrupted one, another source) it falls
/// back to the full copy and says why in `CopyReport::precopy_fallback`. Either way the
/// source is quiesced and locked first, re-read whole, and its sums are what `verify`
/// checks the final tree against: the pre-copy is never evidence.
pub fn finish_copy(opts: &CopyOptions) -> Result<CopyReport> {
    copy_with(opts, true)
}

fn copy_with(opts: &CopyOptions, update: bool) -> Result<CopyReport> {
    let started = Instant::now();
    let layout = Layout::open(&opts.src)?;
    let target = Target::resolve(&opts.dst, &layout.root)?;
    let sums_file = match &opts.sums_file {
        Some(f) => Some(sums_file_path(f, &layout.root, &target.path)?),
        None => None,
    };
    let lock = quiesce::lock(&layout)?;
    // Walk only once etcd is locked out: the tree cannot change any more.
    let tree = Tree::walk(&layout.root)?;
    if let Some((path, why)) = uncopyable(&tree).into_iter().next() {
        return Err(Error::input(path, why));
    }
    let (staging, record, precopy_fallback) = if update {
        match Staging::adopt(&target)? {
            Adopted::Precopy(staging, record) if record.src == layout.root => {
                (staging, Some(record), None)
            }
            Adopted::Precopy(staging, record) => {
                staging
                    .remove()
                    .map_err(|e| Error::io("remove stale staging dir", target.staging_path(), e))?;
                let reason = format!(
                    "the pre-copy in the staging dir was made from {}",
                    record.src.display()
                );
                (Staging::acquire(&target)?, None, Some(reason))
            }
            Adopted::Missing(reason) => (Staging::acquire(&target)?, None, Some(reason)),
        }
    } else {
        (Staging::acquire(&target)?, None, None)
    };
    match &record {
        Some(r) => target.check_space_beyond(&tree, r.bytes())?,
        None => target.check_space(&tree)?,
    }
    let precopy = match (&record, &precopy_fallback) {
        (Some(_), _) => PrecopyUse::Used,
        (None, Some(_)) => PrecopyUse::FellBack,
        (None, None) => PrecopyUse::NotAsked,
    };

    opts.progress.start(tree.file_bytes());
    let done = match &record {
        Some(r) => super::precopy::update_tree(&tree, &staging.path, r, opts),
        None => copy_tree(&tree, &staging.path, opts).map(|sums| (sums, tree.file_bytes())),
    };
    let mut bytes_after_stop = 0;
    let copied = done.and_then(|(sums, written)| {
        bytes_after_stop = written;
        let known = KnownSums {
            sums,
            as_of: staging.created,
        };
        if cancelled(opts) {
            return Err(interrupted());
        }
        if let Some(f) = &sums_file {
            known.write(f)?;
        }
        if let Err(e) = target.commit(&staging.path) {
            if let Some(f) = &sums_file {
                let _ = fs::remove_file(f);
            }
            return Err(e);
        }
        Ok(known)
    });
    opts.progress.finish();
    let known = match copied {
        Ok(known) => {
            staging.disarm();
            known
        }
        Err(e) => {
            let what = format!(
                "copy {} to {}",
                layout.root.display(),
                target.path.display()
            );
            let cause = if cancelled(opts) {
                "interrupted".to_string()
            } else {
                e.one_line()
            };
            let staging_path = staging.path.clone();
            return Err(match staging.remove() {
                Ok(()) => Error::failed(
                    what,
                    format!(
                        "{cause}; removed the staging dir {}, nothing was left behind",
                        staging_path.display()
                    ),
                ),
                Err(rm) => Error::failed(
                    what,
                    format!(
                        "{cause}; and removing the staging dir failed ({rm}): remove it with \
                         `rm -rf {}`",
                        staging_path.display()
                    ),
                ),
            });
        }
    };
    drop(lock);
    Ok(CopyReport {
        src: layout.root,
        dst: target.path,
        files: known.sums.len(),
        dirs: tree
            .entries
            .iter()
            .filter(|e| e.meta.kind == Kind::Dir)
            .count(),
        bytes: tree.file_bytes(),
        took_ms: started.elapsed().as_millis() as u64,
        digest: known.sums.digest().to_hex().to_string(),
        bytes_after_stop,
        precopy,
        precopy_fallback,
        sums_file,
        sums: known,
    })
}

/// Whether a copy used a pre-copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrecopyUse {
    /// A plain `copy`: no pre-copy asked for.
    NotAsked,
    /// The staging dir's pre-copy was updated in place.
    Used,
    /// A pre-copy was asked for but not usable: everything was copied.
    FellBack,
}

/// The parent directory of `path` (`.` for a bare name), resolved; it must exist and be a
/// directory (exit 2 otherwise, with `missing` as the reason when it does not exist).
fn existing_parent(path: &Path, missing: &str) -> Result<PathBuf> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match fs::canonicalize(&parent) {
        Ok(p) if p.is_dir() => Ok(p),
        Ok(_) => Err(Error::input(&parent, "is not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::input(&parent, missing)),
        Err(e) => Err(Error::io("resolve", &parent, e)),
    }
}

/// Where the sums file goes: a new file, in an existing directory, outside both trees (in
/// the source it would modify it, in the target it would be an extra file).
fn sums_file_path(file: &Path, src: &Path, dst: &Path) -> Result<PathBuf> {
    let name = match file.components().next_back() {
        Some(Component::Normal(n)) => n.to_os_string(),
        _ => return Err(Error::input(file, "is not a file name")),
    };
    let parent = existing_parent(file, "does not exist")?;
    let path = parent.join(name);
    if path.starts_with(src) || path.starts_with(dst) {
        return Err(Error::input(
            &path,
            "the sums file must be outside the source and the target",
        ));
    }
    if fs::symlink_metadata(&path).is_ok() {
        return Err(Error::refused(
            path.display().to_string(),
            "exists: the sums file must be new",
        ));
    }
    Ok(path)
}

/// The entries `copy` refuses, with why: anything but directories and regular files (FIFOs,
/// symlinks, sockets, devices), and names no b3sum line can carry. `datadir check` reports
/// the same list, so that it never calls ready what `copy` then refuses.
pub fn uncopyable(tree: &Tree) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for e in &tree.entries {
        if !matches!(e.meta.kind, Kind::Dir | Kind::File) {
            out.push((
                e.path.clone(),
                format!(
                    "is a {}: an etcd data dir holds only directories and regular files; \
                     resolve it by hand before copying",
                    e.meta.kind.name()
                ),
            ));
        } else if e.rel.contains('\r') {
            out.push((
                e.path.clone(),
                "file name contains a carriage return: no b3sum line can name it portably".into(),
            ));
        }
    }
    out
}

pub(super) fn cancelled(opts: &CopyOptions) -> bool {
    opts.cancel.is_some_and(|c| c.load(SeqCst))
}

/// Only stops the copy: `copy` words the error once it has removed the staging dir.
pub(super) fn interrupted() -> Error {
    Error::failed("copy", "interrupted")
}

/// Where the copy goes, resolved and checked before anything is written.
pub(super) struct Target {
    /// Canonical parent joined with the last component of `dst`.
    path: PathBuf,
    parent: PathBuf,
    name: OsString,
    /// `dst` exists as an empty directory, which the rename replaces.
    replace_empty: bool,
}

impl Target {
    /// Through the one target policy, `super::target::locate` (migrate's preflight calls it
    /// too).
    pub(super) fn resolve(dst: &Path, src: &Path) -> Result<Target> {
        let l = super::target::locate(src, dst)?;
        Ok(Target {
            path: l.path,
            parent: l.parent,
            name: l.name,
            replace_empty: l.place == super::target::Place::EmptyDir,
        })
    }

    pub(super) fn staging_path(&self) -> PathBuf {
        staging_name(&self.parent, &self.name)
    }

    /// Refuse (exit 4) unless the target's filesystem has room for the data + 10 % and an
    /// inode per entry: the one policy of `super::target`.
    pub(super) fn check_space(&self, tree: &Tree) -> Result<()> {
        self.check_space_beyond(tree, 0)
    }

    /// As [`Target::check_space`], when `staged` bytes of the data are already in the
    /// staging dir (a pre-copy): only the rest must still fit.
    pub(super) fn check_space_beyond(&self, tree: &Tree, staged: u64) -> Result<()> {
        super::target::check_space_beyond(
            &self.path,
            &self.parent,
            tree.file_bytes(),
            staged,
            Some(tree.entries.len() as u64 + 1),
        )
        .map(|_| ())
    }

    /// Rename the finished staging dir into place and make the rename durable. A target
    /// that did not exist must still not exist (RENAME_NOREPLACE); an empty one is replaced
    /// only if still empty (rename(2) refuses a non-empty directory).
    fn commit(&self, staging: &Path) -> Result<()> {
        let parent = File::open(&self.parent).map_err(|e| Error::io("open", &self.parent, e))?;
        let flags = if self.replace_empty {
            RenameFlags::empty()
        } else {
            RenameFlags::RENAME_NOREPLACE
        };
        let staging_name = staging.file_name().expect("staging has a name");
        nix::fcntl::renameat2(&parent, staging_name, &parent, self.name.as_os_str(), flags)
            .map_err(|e| Error::io("rename into place", &self.path, e.into()))?;
        if let Err(e) = parent.sync_all() {
            // The copy is not durable: move it back under the staging name so that the
            // caller's cleanup removes it like any failed copy. (An empty target directory
            // that the rename replaced is not recreated.)
            let _ = nix::fcntl::renameat2(
                &parent,
                self.name.as_os_str(),
                &parent,
                staging_name,
                RenameFlags::RENAME_NOREPLACE,
            );
            return Err(Error::io("fsync", &self.parent, e));
        }
        Ok(())
    }
}

/// The staging dir, locked by us (flock on the directory) while we fill it, removed when
/// dropped unless disarmed. A staging dir left by a killed run is unlocked: it is removed
/// and made again; one locked by a running copy is refused.
pub(super) struct Staging {
    pub(super) path: PathBuf,
    _lock: Flock<File>,
    armed: bool,
    /// Its ctime: a filesystem timestamp taken before any source file is read, the
    /// `as_of` of the sums.
    pub(super) created: (i64, i64),
}

impl Staging {
    pub(super) fn acquire(target: &Target) -> Result<Staging> {
        let path = target.staging_path();
        for _ in 0..3 {
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let lock = lock_dir(&path)?.ok_or_else(|| busy(target, &path))?;
                    let meta = lock.metadata().map_err(|e| Error::io("stat", &path, e))?;
                    return Ok(Staging {
                        path,
                        _lock: lock,
                        armed: true,
                        created: (meta.ctime(), meta.ctime_nsec()),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let meta =
                        fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
                    if !meta.is_dir() {
                        return Err(Error::refused(
                            path.display().to_string(),
                            "is in the way of the staging dir and is not a directory: remove it",
                        ));
                    }
                    let stale = lock_dir(&path)?.ok_or_else(|| busy(target, &path))?;
                    fs::remove_dir_all(&path)
                        .map_err(|e| Error::io("remove stale staging dir", &path, e))?;
                    drop(stale);
                }
                Err(e) => return Err(Error::io("create", &path, e)),
            }
        }
        Err(busy(target, &path))
    }

    /// Take over the staging dir a finished pre-copy left, with its record; anything else
    /// (no staging dir, no record: an interrupted pre-copy or a killed copy) is `Missing`,
    /// with the reason, and is left for [`Staging::acquire`] to replace.
    pub(super) fn adopt(target: &Target) -> Result<Adopted> {
        let path = target.staging_path();
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Ok(Adopted::Missing(format!(
                    "{} is not a directory",
                    path.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Adopted::Missing(format!(
                    "no pre-copy found (no staging dir {})",
                    path.display()
                )));
            }
            Err(e) => return Err(Error::io("stat", &path, e)),
        }
        let lock = lock_dir(&path)?.ok_or_else(|| busy(target, &path))?;
        let record = match super::precopy::Record::load(&path) {
            Ok(r) => r,
            // The lock is dropped here, so that `acquire` can take the dir over.
            Err(reason) => return Ok(Adopted::Missing(reason)),
        };
        // The sums' `as_of` must be a filesystem timestamp from before the source is read
        // again: changing the dir's mode (to what it is while we fill it) stamps its ctime.
        fchmod(&*lock, Mode::from_bits_truncate(0o700))
            .map_err(|e| Error::io("chmod", &path, e.into()))?;
        let meta = lock.metadata().map_err(|e| Error::io("stat", &path, e))?;
        Ok(Adopted::Precopy(
            Staging {
                path,
                _lock: lock,
                armed: true,
                created: (meta.ctime(), meta.ctime_nsec()),
            },
            record,
        ))
    }

    pub(super) fn disarm(mut self) {
        self.armed = false;
    }

    pub(super) fn remove(mut self) -> io::Result<()> {
        self.armed = false;
        match fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Reached armed only on a panic: still leave nothing behind.
        if self.armed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// What [`Staging::adopt`] found.
pub(super) enum Adopted {
    Precopy(Staging, super::precopy::Record),
    Missing(String),
}

fn busy(target: &Target, staging: &Path) -> Error {
    Error::refused(
        target.path.display().to_string(),
        format!(
            "another etcdops copy is writing to it (its staging dir {} is locked)",
            staging.display()
        ),
    )
}

/// flock a directory without blocking: `None` when someone else holds it.
fn lock_dir(path: &Path) -> Result<Option<Flock<File>>> {
    let dir = File::open(path).map_err(|e| Error::io("open", path, e))?;
    match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::io("flock", path, e.into())),
    }
}

/// Copy every entry of `tree` below `root` (the staging dir, which exists): directories,
/// then files through the pipeline, then directory metadata bottom-up (adding entries
/// changes a directory's mtime, so it is set last) and fsyncs. Returns the source sums.
fn copy_tree(tree: &Tree, root: &Path, opts: &CopyOptions) -> Result<Sums> {
    for e in tree.entries.iter().filter(|e| e.meta.kind == Kind::Dir) {
        let path = root.join(&e.rel);
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|err| Error::io("create", &path, err))?;
    }
    let files: Vec<&Entry> = tree.files().collect();
    let hashes = copy_files(&files, root, opts)?;
    let sums = Sums::new(
        files
            .iter()
            .zip(hashes)
            .map(|(e, h)| (e.rel.clone(), h))
            .collect(),
    )?;
    for e in tree
        .entries
        .iter()
        .rev()
        .filter(|e| e.meta.kind == Kind::Dir)
    {
        finish_dir(&root.join(&e.rel), &e.meta)?;
    }
    finish_dir(root, &tree.root_meta)?;
    Ok(sums)
}

/// Set a directory's owner, mode and times, then fsync it (its entries become durable).
pub(super) fn finish_dir(path: &Path, meta: &Meta) -> Result<()> {
    let dir = File::open(path).map_err(|e| Error::io("open", path, e))?;
    apply_meta(&dir, path, meta)?;
    dir.sync_all().map_err(|e| Error::io("fsync", path, e))
}

/// Owner first: chown clears setuid/setgid, so the mode goes after it; times last.
pub(super) fn apply_meta(file: &File, path: &Path, meta: &Meta) -> Result<()> {
    fchown(
        file,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(|e| Error::io("chown", path, e.into()))?;
    fchmod(file, Mode::from_bits_truncate(meta.mode as libc::mode_t))
        .map_err(|e| Error::io("chmod", path, e.into()))?;
    futimens(
        file,
        &TimeSpec::new(meta.atime.0, meta.atime.1),
        &TimeSpec::new(meta.mtime.0, meta.mtime.1),
    )
    .map_err(|e| Error::io("set times", path, e.into()))
}

/// Copy `files` (in order) into `root`, returning the blake3 hashes of the sources in the
/// same order.
fn copy_files(files: &[&Entry], root: &Path, opts: &CopyOptions) -> Result<Vec<blake3::Hash>> {
    // Whichever of the copy and the hashing fails first stops the other and is reported.
    let failed = AtomicU8::new(NONE_FAILED);
    std::thread::scope(|s| {
        let hasher = s.spawn(|| {
            let hashed = hash_sources(files, &failed);
            if hashed.is_err() {
                let _ = failed.compare_exchange(NONE_FAILED, HASH_FAILED, SeqCst, SeqCst);
            }
            hashed
        });
        let (sync_tx, sync_rx) = mpsc::channel::<(PathBuf, File)>();
        let syncer = s.spawn(move || -> Result<()> {
            for (path, file) in sync_rx {
                file.sync_all().map_err(|e| Error::io("fsync", &path, e))?;
            }
            Ok(())
        });
        let copied = files
            .iter()
            .try_for_each(|e| copy_file(e, &root.join(&e.rel), &sync_tx, &failed, opts));
        drop(sync_tx);
        if copied.is_err() {
            let _ = failed.compare_exchange(NONE_FAILED, COPY_FAILED, SeqCst, SeqCst);
        }
        let hashed = hasher.join().expect("the hashing thread does not panic");
        let synced = syncer.join().expect("the fsync thread does not panic");
        // A send to a stopped fsync thread fails with a vaguer error than its own.
        synced?;
        match failed.load(SeqCst) {
            HASH_FAILED => Err(hashed.expect_err("the hashing failed")),
            COPY_FAILED => Err(copied.expect_err("the copy failed")),
            _ => hashed,
        }
    })
}

const NONE_FAILED: u8 = 0;
const COPY_FAILED: u8 = 1;
const HASH_FAILED: u8 = 2;

/// What a thread returns when it stops because the other one failed (never reported).
fn stopped() -> Error {
    Error::failed("copy", "stopped")
}

/// Hash the source files, in order, on the second core while the first copies them. The
/// source is locked and quiesced, so both reads see the same bytes (the second from the
/// page cache), and `verify` compares the target with these hashes.
fn hash_sources(files: &[&Entry], failed: &AtomicU8) -> Result<Vec<blake3::Hash>> {
    let mut buf = vec![0u8; CHUNK];
    let mut hashes = Vec::with_capacity(files.len());
    for e in files {
        let mut src = open_read(&e.path)?;
        let mut h = blake3::Hasher::new();
        let mut total = 0u64;
        loop {
            if failed.load(SeqCst) != NONE_FAILED {
                return Err(stopped());
            }
            let n = read_full(&mut src, &mut buf).map_err(|err| Error::io("read", &e.path, err))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            total += n as u64;
        }
        if total != e.meta.size {
            return Err(changed_size(e, total));
        }
        hashes.push(h.finalize());
    }
    Ok(hashes)
}

pub(super) fn changed_size(e: &Entry, read: u64) -> Error {
    Error::failed(
        format!("copy {}", e.path.display()),
        format!(
            "it changed size during the copy ({} bytes before, {read} read): is something \
             writing to the data dir?",
            e.meta.size
        ),
    )
}

/// How the bytes move: in the kernel when it can (no copy through user space, which costs
/// two more memory copies per byte), else through a buffer.
enum Mover {
    /// copy_file_range(2): same filesystem (and reflinks where the filesystem has them).
    CopyRange,
    /// sendfile(2): any two filesystems.
    SendFile,
    /// read(2)/write(2), when neither is available.
    Buffer(Vec<u8>),
}

impl Mover {
    /// Move up to `len` bytes from `src`'s offset to `dst`'s; 0 at the end of `src`. On the
    /// first call for a file (`fresh`), an in-kernel method the kernel or the filesystems do
    /// not offer gives way to the next one.
    fn step(
        &mut self,
        src: &mut File,
        dst: &mut File,
        len: usize,
        fresh: bool,
    ) -> io::Result<usize> {
        loop {
            let moved = match self {
                Mover::CopyRange => {
                    // SAFETY: plain syscall on open descriptors; null offsets mean "use and
                    // advance the file offsets".
                    let n = unsafe {
                        libc::copy_file_range(
                            src.as_raw_fd(),
                            std::ptr::null_mut(),
                            dst.as_raw_fd(),
                            std::ptr::null_mut(),
                            len,
                            0,
                        )
                    };
                    Errno::result(n).map(|n| n as usize)
                }
                Mover::SendFile => {
                    // SAFETY: as above; a null offset uses and advances `src`'s offset.
                    let n = unsafe {
                        libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), std::ptr::null_mut(), len)
                    };
                    Errno::result(n).map(|n| n as usize)
                }
                Mover::Buffer(buf) => {
                    let n = read_full(src, &mut buf[..len.min(CHUNK)])?;
                    dst.write_all(&buf[..n])?;
                    return Ok(n);
                }
            };
            match moved {
                Ok(n) => return Ok(n),
                Err(Errno::EINTR) => {}
                Err(Errno::EXDEV | Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOSYS)
                    if fresh && matches!(self, Mover::CopyRange) =>
                {
                    *self = Mover::SendFile;
                }
                Err(Errno::EINVAL | Errno::ENOSYS) if fresh && matches!(self, Mover::SendFile) => {
                    *self = Mover::Buffer(vec![0u8; CHUNK]);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn copy_file(
    e: &Entry,
    dst_path: &Path,
    sync_tx: &mpsc::Sender<(PathBuf, File)>,
    failed: &AtomicU8,
    opts: &CopyOptions,
) -> Result<()> {
    let mut src = open_read(&e.path)?;
    // Readahead hint for a cold cache; harmless if ignored.
    let _ = nix::fcntl::posix_fadvise(&src, 0, 0, PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL);
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst_path)
        .map_err(|err| Error::io("create", dst_path, err))?;
    // No fallocate: on ext4 writing into preallocated (unwritten) extents while writeback
    // runs makes the kernel split and convert extents over and over, which measured about a
    // quarter slower. Delayed allocation still reserves space at write(), so a full disk
    // fails the write with ENOSPC.
    let mut mover = Mover::CopyRange;
    let mut written = 0u64;
    let mut flushed = 0u64;
    loop {
        if cancelled(opts) {
            return Err(interrupted());
        }
        if failed.load(SeqCst) != NONE_FAILED {
            return Err(stopped());
        }
        let n = mover
            .step(&mut src, &mut dst, STEP, written == 0)
            .map_err(|err| Error::io("copy to", dst_path, err))?;
        if n == 0 {
            break;
        }
        written += n as u64;
        opts.progress.advance(n as u64);
        if written - flushed >= WRITEBACK {
            start_writeback(&dst, flushed, written - flushed);
            flushed = written;
        }
    }
    if written != e.meta.size {
        return Err(changed_size(e, written));
    }
    apply_meta(&dst, dst_path, &e.meta)?;
    sync_tx
        .send((dst_path.to_path_buf(), dst))
        .map_err(|_| Error::failed("copy", "the fsync thread stopped"))
}

/// Fill `buf` from `r` unless the end comes first; returns the bytes read.
pub(super) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Ask the kernel to start writing a range back now, without waiting. Only a head start for
/// the fsync that follows, which reports any error: the result is ignored.
pub(super) fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each way of moving bytes copies them exactly, across several steps and a short tail.
    #[test]
    fn every_mover_copies_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(2 * CHUNK + 4099))
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        let src_path = dir.path().join("src");
        fs::write(&src_path, &data).unwrap();
        let movers = [
            ("copy_file_range", Mover::CopyRange),
            ("sendfile", Mover::SendFile),
            ("buffer", Mover::Buffer(vec![0u8; CHUNK])),
        ];
        for (name, mut mover) in movers {
            let mut src = File::open(&src_path).unwrap();
            let dst_path = dir.path().join(name);
            let mut dst = File::create(&dst_path).unwrap();
            let mut total = 0;
            loop {
                let n = mover
                    .step(&mut src, &mut dst, CHUNK + 1, total == 0)
                    .unwrap();
                if n == 0 {
                    break;
                }
                total += n;
            }
            assert_eq!(total, data.len(), "{name}");
            assert!(
                fs::read(&dst_path).unwrap() == data,
                "{name} copied other bytes"
            );
        }
    }
}
