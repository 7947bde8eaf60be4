//! A run's intent log on disk: `<state-dir>/runs/<id>/journal.jsonl`, one JSON record per
//! line, fsynced per record, file 0600 in a 0700 dir. The engine writes a record here
//! (durably) before it applies it to its in-memory [`super::log::RunLog`] and before the
//! effect it announces; `status`, `resume` and `rollback` of a later process rebuild the log
//! from this file alone. A torn last line (a crash mid-write) is tolerated, not fatal.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// An open journal, appending.
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    pub fn path_in(run_dir: &Path) -> PathBuf {
        run_dir.join("journal.jsonl")
    }

    /// Create the run dir (0700) and a new journal in it.
    pub fn create(run_dir: &Path) -> Result<Journal> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(run_dir)
            .map_err(|e| Error::io("create run dir", run_dir, e))?;
        Self::open_append(run_dir)
    }

    pub fn open_append(run_dir: &Path) -> Result<Journal> {
        let path = Self::path_in(run_dir);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("open journal", &path, e))?;
        // A record torn by a crash mid-write is cut off, so that the next record starts on a
        // line of its own instead of gluing onto the torn one.
        let bytes = fs::read(&path).map_err(|e| Error::io("read journal", &path, e))?;
        if !bytes.is_empty() && bytes.last() != Some(&b'\n') {
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            file.set_len(keep as u64)
                .and_then(|_| file.sync_data())
                .map_err(|e| Error::io("cut the torn last record of", &path, e))?;
        }
        Ok(Journal { path, file })
    }

    /// Append one record and fsync it: when this returns, the record survives a crash.
    pub fn append<R: Serialize>(&mut self, record: &R, point: &str) -> Result<()> {
        let mut line = serde_json::to_string(record).expect("records serialize");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io("append to journal", &self.path, e))?;
        crash_point(point);
        Ok(())
    }

    /// Read every record. A torn last line (crash mid-write) is ignored.
    pub fn read<R: DeserializeOwned>(run_dir: &Path) -> Result<Vec<R>> {
        let path = Self::path_in(run_dir);
        let file = File::open(&path).map_err(|e| Error::io("open journal", &path, e))?;
        let mut out = Vec::new();
        let lines: Vec<String> = BufReader::new(file)
            .lines()
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io("read journal", &path, e))?;
        let n = lines.len();
        for (i, line) in lines.into_iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(r) => out.push(r),
                Err(_) if i + 1 == n => break,
                Err(e) => {
                    return Err(Error::input(
                        &path,
                        format!("line {}: not a journal record: {e}", i + 1),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// Test hook for crash tests: `ETCDOPS_TEST_KILL_AFTER=<step>:<event>` makes the process
/// SIGKILL itself right after that record is durable, exactly like `kill -9` at that point.
/// `ETCDOPS_TEST_TERM_AFTER=<step>:<event>` sends SIGTERM instead, as an operator's Ctrl-C
/// or `kill` would at that point. Never set on a node.
fn crash_point(point: &str) {
    for (var, signal) in [
        ("ETCDOPS_TEST_KILL_AFTER", nix::sys::signal::Signal::SIGKILL),
        ("ETCDOPS_TEST_TERM_AFTER", nix::sys::signal::Signal::SIGTERM),
    ] {
        if let Ok(spec) = std::env::var(var)
            && spec == point
        {
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), signal);
        }
    }
}

/// The first record's `kind`, without knowing the plan's type: which saga wrote the journal.
pub fn read_kind(run_dir: &Path) -> Result<super::RunKind> {
    let path = Journal::path_in(run_dir);
    let text = fs::read_to_string(&path).map_err(|e| Error::io("read journal", &path, e))?;
    let first = text.lines().next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(first)
        .map_err(|e| Error::input(&path, format!("line 1: not a journal record: {e}")))?;
    match v.get("kind") {
        None => Ok(super::RunKind::Migrate),
        Some(k) => serde_json::from_value(k.clone())
            .map_err(|e| Error::input(&path, format!("line 1: unknown run kind: {e}"))),
    }
}
