//! Whether an etcd still runs on a data dir, proved with etcd's own locks rather than with
//! process lists (etcd may run in a container, under another PID namespace, on an NFS client):
//! a running etcd holds `flock(LOCK_EX)` on `member/snap/db` (bbolt) and OFD `fcntl` write
//! locks on the newest WAL segment and `wal/*.tmp`. `flock` on a WAL file succeeds while etcd
//! runs, so WAL files must be probed with OFD locks. Verified on etcd 3.4 and 3.5.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, Flock, FlockArg, fcntl};
use nix::libc;
use serde::Serialize;

use super::{Layout, Tree, open_read};
use crate::error::{Error, Result};

/// `datadir check`: the layout, its sizes, and whether it is quiesced.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub path: PathBuf,
    /// No etcd holds any of its locks: safe to copy.
    pub quiesced: bool,
    /// The files whose lock is held, relative to the data dir.
    pub in_use: Vec<String>,
    pub db_size: u64,
    pub wal_files: usize,
    pub wal_bytes: u64,
    /// Regular files in the whole data dir and their total size.
    pub files: usize,
    pub bytes: u64,
    /// Entries `datadir copy` would refuse (FIFOs, symlinks, ...): `path: why`.
    pub uncopyable: Vec<String>,
}

/// Validate the layout of `dir`, measure it and probe etcd's locks. Not being quiesced is a
/// finding, not an error: the caller decides (the command exits 4 after printing).
pub fn check(dir: &Path) -> Result<CheckReport> {
    let layout = Layout::open(dir)?;
    let in_use = locked_files(&layout)?;
    let tree = Tree::walk(&layout.root)?;
    let size_of = |p: &Path| {
        tree.files()
            .find(|e| e.path == p)
            .map_or(0, |e| e.meta.size)
    };
    let uncopyable = super::copy::uncopyable(&tree)
        .into_iter()
        .map(|(p, why)| format!("{}: {why}", p.display()))
        .collect();
    Ok(CheckReport {
        uncopyable,
        quiesced: in_use.is_empty(),
        in_use: in_use.iter().map(|p| rel(&layout.root, p)).collect(),
        db_size: size_of(&layout.db),
        wal_files: layout.wal_files.len(),
        wal_bytes: layout.wal_files.iter().map(|p| size_of(p)).sum(),
        files: tree.files().count(),
        bytes: tree.file_bytes(),
        path: layout.root,
    })
}

/// The db flock, held for as long as this value lives: an etcd started on the data dir
/// meanwhile blocks opening its backend (bbolt waits for the flock) before it touches
/// anything, so the data cannot change under a copy.
#[derive(Debug)]
pub struct DbLock {
    _db: Flock<File>,
    pub layout: Layout,
}

/// Take the db flock and prove that no WAL file is locked, or refuse (exit 4) naming the
/// locked files and what the operator must do.
pub fn lock(layout: &Layout) -> Result<DbLock> {
    let refuse = |files: &[PathBuf]| {
        let names: Vec<String> = files.iter().map(|p| rel(&layout.root, p)).collect();
        Error::refused(
            layout.root.display().to_string(),
            format!(
                "etcd is running on this data dir ({} locked); stop etcd first (move its manifest \
                 out of the manifests dir and wait until it exits), then check with \
                 `etcdops datadir check {}`",
                names.join(", "),
                layout.root.display()
            ),
        )
    };
    let db = match try_flock(&layout.db)? {
        Some(lock) => lock,
        None => return Err(refuse(std::slice::from_ref(&layout.db))),
    };
    let mut locked = Vec::new();
    for wal in &layout.wal_files {
        if ofd_locked(wal)? {
            locked.push(wal.clone());
        }
    }
    if !locked.is_empty() {
        return Err(refuse(&locked));
    }
    Ok(DbLock {
        _db: db,
        layout: layout.clone(),
    })
}

/// Every lock-holding file of the layout whose lock is taken by someone else.
fn locked_files(layout: &Layout) -> Result<Vec<PathBuf>> {
    let mut locked = Vec::new();
    // Keep our db flock while probing the WAL so that an etcd starting meanwhile cannot
    // get past its backend and take a WAL lock between our probes.
    let db = try_flock(&layout.db)?;
    if db.is_none() {
        locked.push(layout.db.clone());
    }
    for wal in &layout.wal_files {
        if ofd_locked(wal)? {
            locked.push(wal.clone());
        }
    }
    drop(db);
    Ok(locked)
}

/// `flock(LOCK_EX|LOCK_NB)` on a read-only descriptor: `None` when someone holds it.
fn try_flock(path: &Path) -> Result<Option<Flock<File>>> {
    let file = open_read(path)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::io("flock", path, e.into())),
    }
}

/// Whether an OFD write lock on the whole file is refused. The probe lock is released when
/// the descriptor closes; opening for writing changes nothing (no read, no truncation, so
/// neither atime nor mtime moves). On a read-only filesystem no etcd can be writing, but a read lock
/// still conflicts with etcd's write lock, so probe with one.
fn ofd_locked(path: &Path) -> Result<bool> {
    let rw = OpenOptions::new().read(true).write(true).open(path);
    let (file, kind) = match rw {
        Ok(f) => (f, libc::F_WRLCK),
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => (open_read(path)?, libc::F_RDLCK),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    // SAFETY: `flock` is a plain C struct; all-zero is valid (and l_pid must be 0 for OFD).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0; // the whole file
    match fcntl(&file, FcntlArg::F_OFD_SETLK(&fl)) {
        Ok(_) => Ok(false),
        Err(Errno::EAGAIN | Errno::EACCES) => Ok(true),
        Err(e) => Err(Error::io("lock", path, e.into())),
    }
}

fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}
