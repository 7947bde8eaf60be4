//! The etcd data dir engine: what a data dir looks like (this file), whether etcd still runs
//! on it (`quiesce`), a streaming blake3 tree digest and b3sum-compatible sums (`digest`), a
//! metadata-preserving, crash-clean copy (`copy`), a pre-copy of a live data dir that the
//! copy then only updates (`precopy`) and a full tree comparison (`verify`) that reads the
//! target back from its device.
//!
//! Everything here is plain functions taking an options struct and returning a report, so
//! that `commands/datadir.rs` and the migration steps call the same code. Nothing here
//! draws on the terminal: progress goes through the [`Progress`] trait. `blocks` hashes
//! files on both cores from 1 MiB blocks for the stopped phase (update and read-back).

pub mod blocks;
pub mod copy;
pub mod digest;
pub mod precopy;
pub mod quiesce;
pub mod target;
pub mod verify;

use std::fs::{self, File, Metadata, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use copy::{CopyOptions, CopyReport, PrecopyUse, copy, finish_copy};
pub use digest::{KnownSums, Sums, sums};
pub use precopy::{PrecopyOptions, PrecopyReport, precopy};
pub use quiesce::{CheckReport, check};
pub use verify::{
    Difference, ReadBack, VerifiedFrom, VerifyOptions, VerifyReport, verify, verify_with,
};

/// Read and write in chunks of this size: large enough for full-speed sequential I/O and
/// hashing, small enough that memory stays flat whatever the data size.
pub const CHUNK: usize = 1024 * 1024;

/// Told how far a long operation has come. The command draws a bar with it; the migration
/// may log it; the library never touches the terminal.
pub trait Progress {
    /// The operation will move `total` bytes.
    fn start(&self, _total: u64) {}
    /// `bytes` more bytes are done.
    fn advance(&self, _bytes: u64) {}
    /// The operation ended (successfully or not).
    fn finish(&self) {}
}

/// No progress reporting.
pub struct Silent;

impl Progress for Silent {}

/// The files etcd keeps in a data dir, as far as etcdops relies on them.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The data dir (canonical).
    pub root: PathBuf,
    /// `member/snap/db`: the bbolt backend, flock'ed by a running etcd.
    pub db: PathBuf,
    /// Every regular file in `member/wal/` (`*.wal` segments and `*.tmp` preallocations):
    /// a running etcd holds OFD locks on the newest segment and the `.tmp` file.
    pub wal_files: Vec<PathBuf>,
}

impl Layout {
    /// Validate that `dir` is an etcd data dir: `member/snap/db` is a regular file and
    /// `member/wal/` holds at least one `*.wal` segment. Anything else is bad input (exit 2).
    pub fn open(dir: &Path) -> Result<Layout> {
        let root = existing_dir(dir)?;
        let not_data_dir = |what: &str| {
            Error::input(
                &root,
                format!(
                    "not an etcd data dir: {what} (expected member/snap/db and member/wal/*.wal)"
                ),
            )
        };
        let db = root.join("member/snap/db");
        match fs::symlink_metadata(&db) {
            Ok(m) if m.file_type().is_file() => {}
            Ok(_) => return Err(not_data_dir("member/snap/db is not a regular file")),
            Err(_) => return Err(not_data_dir("member/snap/db is missing")),
        }
        let wal_dir = root.join("member/wal");
        let entries = match fs::read_dir(&wal_dir) {
            Ok(rd) => rd,
            Err(_) => return Err(not_data_dir("member/wal/ is missing")),
        };
        let mut wal_files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read dir", &wal_dir, e))?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
            if meta.file_type().is_file() {
                wal_files.push(path);
            }
        }
        wal_files.sort();
        if !wal_files
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "wal"))
        {
            return Err(not_data_dir("member/wal/ holds no *.wal segment"));
        }
        Ok(Layout {
            root,
            db,
            wal_files,
        })
    }
}

/// `dir` made canonical; it must exist and be a directory (else bad input).
pub(crate) fn existing_dir(dir: &Path) -> Result<PathBuf> {
    let canonical = match fs::canonicalize(dir) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::input(dir, "does not exist"));
        }
        Err(e) => return Err(Error::io("resolve", dir, e)),
    };
    if !canonical.is_dir() {
        return Err(Error::input(dir, "is not a directory"));
    }
    Ok(canonical)
}

/// What a tree entry is. Copies handle only directories and regular files; verification
/// compares symlinks too, so that a tree someone edited by hand is still described right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

impl Kind {
    fn of(meta: &Metadata) -> Kind {
        let t = meta.file_type();
        if t.is_dir() {
            Kind::Dir
        } else if t.is_file() {
            Kind::File
        } else if t.is_symlink() {
            Kind::Symlink
        } else {
            Kind::Other
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "regular file",
            Kind::Symlink => "symbolic link",
            Kind::Other => "special file",
        }
    }
}

/// What we compare and preserve of an entry: type, size, permission bits, owner, mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub size: u64,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub atime: (i64, i64),
    /// When the inode last changed (content, owner, mode, rename): no one can set it back.
    pub ctime: (i64, i64),
}

impl Meta {
    pub fn of(meta: &Metadata) -> Meta {
        Meta {
            kind: Kind::of(meta),
            size: meta.len(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            atime: (meta.atime(), meta.atime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    fn read(path: &Path) -> Result<Meta> {
        fs::symlink_metadata(path)
            .map(|m| Meta::of(&m))
            .map_err(|e| Error::io("stat", path, e))
    }
}

/// One entry below a tree's root.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path relative to the root, `/`-separated, UTF-8 (e.g. `member/snap/db`).
    pub rel: String,
    pub path: PathBuf,
    pub meta: Meta,
}

/// A tree: the root's metadata and every entry below it, sorted by `rel` (byte order, as
/// `sort` in the C locale). A parent always sorts before its descendants.
#[derive(Debug, Clone)]
pub struct Tree {
    pub root: PathBuf,
    pub root_meta: Meta,
    pub entries: Vec<Entry>,
}

impl Tree {
    /// Walk `root` without following symlinks. Names that are not UTF-8 are refused: they
    /// cannot be written as b3sum lines, and etcd never creates them.
    pub fn walk(root: &Path) -> Result<Tree> {
        let root_meta = Meta::read(root)?;
        let mut entries = Vec::new();
        let mut stack = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let rd = fs::read_dir(&dir).map_err(|e| Error::io("read dir", &dir, e))?;
            for entry in rd {
                let entry = entry.map_err(|e| Error::io("read dir", &dir, e))?;
                let path = entry.path();
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    return Err(Error::input(&path, "file name is not UTF-8"));
                };
                let rel = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}/{name}")
                };
                let meta = Meta::read(&path)?;
                if meta.kind == Kind::Dir {
                    stack.push((path.clone(), rel.clone()));
                }
                entries.push(Entry { rel, path, meta });
            }
        }
        entries.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
        Ok(Tree {
            root: root.to_path_buf(),
            root_meta,
            entries,
        })
    }

    /// Total size of the regular files.
    pub fn file_bytes(&self) -> u64 {
        self.files().map(|e| e.meta.size).sum()
    }

    pub fn files(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.meta.kind == Kind::File)
    }
}

/// Open a file for reading without touching its atime: the source of a copy is never
/// modified, not even its access times. `O_NOATIME` needs ownership or CAP_FOWNER; without
/// either, fall back to a plain open.
pub(crate) fn open_read(path: &Path) -> Result<File> {
    let noatime = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOATIME)
        .open(path);
    match noatime {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => {
            File::open(path).map_err(|e| Error::io("open", path, e))
        }
        Err(e) => Err(Error::io("open", path, e)),
    }
}
