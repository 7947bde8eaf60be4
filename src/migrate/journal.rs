//! The migration's intent log: `<state-dir>/runs/<id>/journal.jsonl`, one JSON record per
//! line, fsynced per record, file 0600 in a 0700 dir. Every step is recorded before
//! (`begin`) and after (`done`/`failed`), every undo likewise; the run's state is derived
//! from the records alone, so `status`, `resume` and `rollback` work after a kill -9.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Plan;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Record {
    /// The run's plan: what moves where, recorded before anything changes.
    Start {
        ts_ms: u64,
        plan: Plan,
    },
    Begin {
        ts_ms: u64,
        step: String,
    },
    Done {
        ts_ms: u64,
        step: String,
        took_ms: u64,
        #[serde(default)]
        data: serde_json::Value,
    },
    Failed {
        ts_ms: u64,
        step: String,
        error: String,
    },
    UndoBegin {
        ts_ms: u64,
        step: String,
    },
    UndoDone {
        ts_ms: u64,
        step: String,
    },
    /// A terminal (or operator-relevant) state: completed, rolled-back, failed, finalized.
    State {
        ts_ms: u64,
        state: String,
        #[serde(default)]
        reason: Option<String>,
    },
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
        Ok(Journal { path, file })
    }

    /// Append one record and fsync it: when this returns, the record survives a crash.
    pub fn append(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record).expect("records serialize");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io("append to journal", &self.path, e))?;
        crash_point(record);
        Ok(())
    }

    /// Read every record. A torn last line (crash mid-write) is ignored.
    pub fn read(run_dir: &Path) -> Result<Vec<Record>> {
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
/// or `kill` would at that point.
fn crash_point(record: &Record) {
    for (var, signal) in [
        ("ETCDOPS_TEST_KILL_AFTER", nix::sys::signal::Signal::SIGKILL),
        ("ETCDOPS_TEST_TERM_AFTER", nix::sys::signal::Signal::SIGTERM),
    ] {
        if let Ok(spec) = std::env::var(var)
            && spec == point_name(record)
        {
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), signal);
        }
    }
}

fn point_name(record: &Record) -> String {
    match record {
        Record::Begin { step, .. } => format!("{step}:begin"),
        Record::Done { step, .. } => format!("{step}:done"),
        Record::UndoBegin { step, .. } => format!("{step}:undo-begin"),
        Record::UndoDone { step, .. } => format!("{step}:undo-done"),
        _ => String::new(),
    }
}
