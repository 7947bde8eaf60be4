//! A child process a test signals: spawned with its output in files (so a full pipe can
//! never block it while the test waits elsewhere), waited for under a deadline that names
//! what it waited for, and killed (with its process group) when the guard drops, also on a
//! panic.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How a child ended.
pub struct Exit {
    /// Exit code, or -N when a signal N ended it.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Exit {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.stdout).ok()
    }

    /// `state` of the JSON report, or "-" when stdout holds none.
    pub fn state(&self) -> String {
        self.json()
            .and_then(|d| d["state"].as_str().map(str::to_string))
            .unwrap_or_else(|| "-".into())
    }
}

pub struct Proc {
    child: Option<Child>,
    pub what: String,
    pub started: Instant,
    out: PathBuf,
    err: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    /// Spawn `cmd` in a process group of its own (so the guard can reap any grandchild it
    /// left), stdin closed, stdout and stderr to temp files.
    pub fn spawn(mut cmd: Command, what: &str) -> Proc {
        let dir = tempfile::Builder::new()
            .prefix("etcdops-proc-")
            .tempdir()
            .expect("temp dir");
        let out = dir.path().join("stdout");
        let err = dir.path().join("stderr");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).expect("stdout file"))
            .stderr(fs::File::create(&err).expect("stderr file"))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Proc {
            child: Some(child),
            what: what.to_string(),
            started: Instant::now(),
            out,
            err,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("not yet reaped").id() as i32)
    }

    /// Whether the child has exited (it stays a zombie, not reaped, until `wait_within`).
    pub fn exited(&mut self) -> bool {
        let child = self.child.as_mut().expect("not yet reaped");
        matches!(child.try_wait(), Ok(Some(_)))
    }

    /// Send `sig` to the child itself (not its group: a killed `etcdops` leaves its own
    /// children running, as on a real node).
    pub fn signal(&self, sig: Signal) {
        // ESRCH: it exited meanwhile; a zombie still takes the signal, so only a reaped
        // child could give that, and `child` is reaped only by `wait_within`.
        let _ = kill(self.pid(), sig);
    }

    /// Whether the child currently has a handler installed for `sig` (SigCgt in
    /// /proc/PID/status). etcdops installs its SIGINT/SIGTERM handler with SA_RESETHAND:
    /// once a first signal was handled the bit clears, and a second signal kills.
    pub fn catches(&self, sig: Signal) -> bool {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|mask| mask & (1u64 << (sig as i32 - 1)) != 0)
    }

    /// Wait for the child to exit, at most `timeout`; past it, kill it and return Err
    /// naming what was waited for.
    pub fn wait_within(&mut self, timeout: Duration) -> Result<Exit, String> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("not yet reaped");
        loop {
            if let Some(status) = child.try_wait().expect("wait for child") {
                use std::os::unix::process::ExitStatusExt;
                let code = status
                    .code()
                    .unwrap_or_else(|| -status.signal().unwrap_or(0));
                self.child = None;
                return Ok(Exit {
                    code,
                    stdout: fs::read_to_string(&self.out).unwrap_or_default(),
                    stderr: fs::read_to_string(&self.err).unwrap_or_default(),
                    took: self.started.elapsed(),
                });
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                return Err(format!(
                    "{} did not exit within {timeout:?}; killed it. stderr: {}",
                    self.what,
                    fs::read_to_string(&self.err).unwrap_or_default().trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Proc {
    /// What the child has written to stderr so far (it may still be running).
    pub fn stderr_so_far(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }
}
