//! The one lock that stops two node-changing runs at once on a node, whatever their kind:
//! `flock(LOCK_EX)` on `<state-dir>/run.lock`, held while the value lives and released by
//! the kernel when the process dies.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

pub struct RunLock {
    _lock: Flock<fs::File>,
}

impl RunLock {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("run.lock")
    }

    pub fn acquire(state_dir: &Path) -> Result<RunLock> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|e| Error::io("create state dir", state_dir, e))?;
        let path = Self::path(state_dir);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            Error::refused(
                path.display().to_string(),
                "another etcdops run (migrate, restore or rejoin) is running on this node",
            )
        })?;
        Ok(RunLock { _lock: lock })
    }

    /// Whether some process holds the lock now.
    pub fn held(state_dir: &Path) -> bool {
        let path = Self::path(state_dir);
        let Ok(file) = fs::File::open(&path) else {
            return false;
        };
        Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err()
    }
}
