//! This node's moving parts: kubelet control through the configured commands, stopping and
//! starting the etcd static pod by moving its manifest, and waits that take their timeout
//! from the caller and say what they waited for.
//!
//! `systemctl stop kubelet` does not stop a running static pod, so etcd is stopped by moving
//! its manifest out of the manifests dir and waiting until the data dir is quiesced and the
//! client port refuses; only then is kubelet stopped.

use std::fs;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::manifest::atomic;

/// kubelet control: three shell commands (`systemctl stop|start|is-active kubelet` by
/// default; the lab's stand-in commands in tests and the demo).
///
/// A stop or start runs in a process group of its own, recorded (pid, its start time, the
/// command) in the `inflight` file for as long as it runs. A process killed while its child
/// `systemctl stop kubelet` runs leaves that child running; the next stop or start — of any
/// later etcdops process — first waits for such an orphan to finish (bounded, saying so),
/// then kills what is left of it, so that a start cannot be undone by a stop that lands
/// after it.
#[derive(Debug, Clone)]
pub struct KubeletCommands {
    pub stop: String,
    pub start: String,
    pub status: String,
    /// Where a running stop/start is recorded (`<state-dir>/kubelet-command.inflight`).
    pub inflight: Option<PathBuf>,
}

/// How long a later command waits for an orphaned kubelet command before killing it.
pub const ORPHAN_WAIT: Duration = Duration::from_secs(30);

impl KubeletCommands {
    pub fn new(stop: &str, start: &str, status: &str, state_dir: Option<&Path>) -> Self {
        KubeletCommands {
            stop: stop.to_string(),
            start: start.to_string(),
            status: status.to_string(),
            inflight: state_dir.map(|d| d.join("kubelet-command.inflight")),
        }
    }

    pub fn stop(&self, say: &dyn Fn(&str)) -> Result<()> {
        self.run_tracked(&self.stop, say).map(|_| ())
    }

    pub fn start(&self, say: &dyn Fn(&str)) -> Result<()> {
        self.run_tracked(&self.start, say).map(|_| ())
    }

    /// Whether kubelet runs: the status command exits 0. A command that cannot be run at all
    /// is an error, not "inactive".
    pub fn is_active(&self) -> Result<bool> {
        let out = Command::new("sh")
            .args(["-c", &self.status])
            .output()
            .map_err(|e| Error::Command {
                command: self.status.clone(),
                status: "could not be started".into(),
                stderr: e.to_string(),
            })?;
        Ok(out.status.success())
    }

    fn run_tracked(&self, command: &str, say: &dyn Fn(&str)) -> Result<String> {
        let Some(inflight) = &self.inflight else {
            return run_shell(command);
        };
        settle_orphan(inflight, say)?;
        let child = Command::new("sh")
            .args(["-c", command])
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| Error::Command {
                command: command.to_string(),
                status: "could not be started".into(),
                stderr: e.to_string(),
            })?;
        let pid = child.id() as i32;
        let record = format!("{pid} {} {command}\n", start_time(pid).unwrap_or(0));
        if let Some(dir) = inflight.parent() {
            let _ = fs::create_dir_all(dir);
        }
        let written = write_atomic(inflight, record.as_bytes(), 0o600, None);
        let out = child.wait_with_output().map_err(|e| Error::Command {
            command: command.to_string(),
            status: "could not be waited for".into(),
            stderr: e.to_string(),
        });
        match written {
            Ok(()) => {
                let _ = fs::remove_file(inflight);
            }
            // Not recorded: only a later run's wait for an orphan is lost, not this command.
            Err(e) => say(&format!(
                "warning: could not record `{command}`: {}",
                e.one_line()
            )),
        }
        command_result(command, out?)
    }
}

/// Wait for (then kill) a kubelet command an earlier, killed etcdops left running.
fn settle_orphan(inflight: &Path, say: &dyn Fn(&str)) -> Result<()> {
    let Ok(text) = fs::read_to_string(inflight) else {
        return Ok(());
    };
    let mut words = text.splitn(3, ' ');
    let pid: i32 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let started: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let command = words.next().unwrap_or("").trim().to_string();
    // The same process only if its start time matches (pids are reused).
    let ours = |pid: i32| pid > 0 && start_time(pid) == Some(started);
    if ours(pid) {
        say(&format!(
            "waiting for `{command}` (pid {pid}), left running by an interrupted etcdops, to \
             finish before kubelet is touched again (at most {}s)",
            ORPHAN_WAIT.as_secs()
        ));
        let deadline = Instant::now() + ORPHAN_WAIT;
        while ours(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if ours(pid) {
            say(&format!(
                "`{command}` (pid {pid}) still runs after {}s: killing its process group",
                ORPHAN_WAIT.as_secs()
            ));
            let group = nix::unistd::Pid::from_raw(-pid);
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while ours(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
    match fs::remove_file(inflight) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", inflight, e)),
    }
}

/// A live (not zombie) process's start time in clock ticks since boot (`/proc/PID/stat`
/// field 22): with the pid, it names one process even after pids wrap.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    // `rest` starts at field 3 (state); field 22 is at index 19.
    fields.get(19)?.parse().ok()
}

/// Run a shell command; a failure keeps its stderr so the operator sees why.
pub fn run_shell(command: &str) -> Result<String> {
    let out = Command::new("sh")
        .args(["-c", command])
        .output()
        .map_err(|e| Error::Command {
            command: command.to_string(),
            status: "could not be started".into(),
            stderr: e.to_string(),
        })?;
    command_result(command, out)
}

fn command_result(command: &str, out: std::process::Output) -> Result<String> {
    if !out.status.success() {
        return Err(Error::Command {
            command: command.to_string(),
            status: match out.status.code() {
                Some(c) => format!("exited with {c}"),
                None => "was killed by a signal".into(),
            },
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Rename `from` to `to` without ever replacing an existing `to` (a file that appeared
/// while `from` was written is someone else's): `RENAME_NOREPLACE`, or on a filesystem
/// without it, a check and then a rename. `Ok(false)`: `to` exists and was left alone.
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<bool> {
    use nix::errno::Errno;
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(Errno::EINVAL) | Err(Errno::ENOSYS) => {
            if to.symlink_metadata().is_ok() {
                return Ok(false);
            }
            fs::rename(from, to).map_err(|e| Error::io("rename", from, e))?;
            Ok(true)
        }
        Err(e) => Err(Error::io("rename", from, std::io::Error::from(e))),
    }
}

/// fsync a directory so that a rename or unlink in it survives a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    atomic::fsync_dir(dir).map_err(|e| Error::io("fsync", dir, e))
}

/// Write `bytes` to `dest` atomically: a temp file beside it whose name starts with a dot
/// (kubelet ignores dotfiles, so this is safe in the manifests dir), fsync, rename, fsync
/// the dir. `mode` and `owner` are given to the file before it appears.
pub fn write_atomic(dest: &Path, bytes: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| Error::input(dest, "has no parent directory"))?;
    let name = dest
        .file_name()
        .ok_or_else(|| Error::input(dest, "has no file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.etcdops-tmp"));
    // A temp left by a run killed mid-write is ours to replace.
    let _ = fs::remove_file(&tmp);
    let result = atomic::write_temp(&tmp, bytes, mode, owner).and_then(|()| {
        fs::rename(&tmp, dest).map_err(|e| Error::io("rename into place", dest, e))?;
        fsync_dir(dir)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Move the manifest out of the manifests dir to `dest` (kubelet then stops the pod).
/// Works across filesystems: the copy at `dest` is complete and fsynced before the original
/// is unlinked. Idempotent: if the manifest is already gone and `dest` exists, nothing to do.
pub fn move_manifest_out(manifest: &Path, dest: &Path) -> Result<()> {
    if !manifest.exists() {
        if dest.is_file() {
            return Ok(());
        }
        return Err(Error::input(
            manifest,
            "manifest not found and no moved-out copy",
        ));
    }
    let bytes = fs::read(manifest).map_err(|e| Error::io("read", manifest, e))?;
    let meta = fs::metadata(manifest).map_err(|e| Error::io("stat", manifest, e))?;
    write_atomic(
        dest,
        &bytes,
        meta.permissions().mode() & 0o7777,
        Some((meta.uid(), meta.gid())),
    )?;
    fs::remove_file(manifest).map_err(|e| Error::io("remove", manifest, e))?;
    let dir = manifest.parent().unwrap_or(Path::new("/"));
    fsync_dir(dir)
}

/// Put a manifest into the manifests dir atomically (dotfile temp, rename, fsync), keeping
/// the mode and owner of `from`.
pub fn put_manifest(from: &Path, manifest: &Path) -> Result<()> {
    let bytes = fs::read(from).map_err(|e| Error::io("read", from, e))?;
    let meta = fs::metadata(from).map_err(|e| Error::io("stat", from, e))?;
    write_atomic(
        manifest,
        &bytes,
        meta.permissions().mode() & 0o7777,
        Some((meta.uid(), meta.gid())),
    )
}

/// Poll `probe` every `interval` until it returns true or `timeout` passes; the error says
/// what was waited for and how long.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    let mut last_err: Option<Error> = None;
    loop {
        match probe() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() >= timeout {
            return Err(Error::failed(
                format!("wait for {what}"),
                format!(
                    "gave up after {}{}",
                    humantime::format_duration(Duration::from_secs(timeout.as_secs().max(1))),
                    last_err.map_or(String::new(), |e| format!(" (last: {})", e.one_line()))
                ),
            ));
        }
        std::thread::sleep(interval);
    }
}

/// Whether a TCP connection to the endpoint's host:port is refused (nothing listens).
pub fn port_refuses(endpoint: &str) -> bool {
    let hostport = endpoint
        .split("://")
        .nth(1)
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let Ok(mut addrs) = hostport.to_socket_addrs() else {
        return false;
    };
    match addrs.next() {
        Some(addr) => TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        None => false,
    }
}

/// Run a future on a runtime made for this command (two cores: two workers). Here, below
/// every library module, so that a library module (doctor) never reaches up into commands.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::failed("start the async runtime", e.to_string()))
        .expect("the async runtime starts")
        .block_on(fut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_errors_keep_stderr() {
        let err = run_shell("echo boom >&2; exit 3").unwrap_err();
        let line = err.one_line();
        assert!(
            line.contains("exited with 3") && line.contains("boom"),
            "{line}"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn atomic_write_leaves_no_temp_and_keeps_mode() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("etcd.yaml");
        write_atomic(&dest, b"x", 0o640, None).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"x");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn move_out_and_back_is_byte_exact_and_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let manifests = d.path().join("manifests");
        fs::create_dir(&manifests).unwrap();
        let m = manifests.join("etcd.yaml");
        fs::write(&m, b"kind: Pod\n# comment\n").unwrap();
        fs::set_permissions(&m, fs::Permissions::from_mode(0o600)).unwrap();
        let out = d.path().join("run-etcd.yaml");
        move_manifest_out(&m, &out).unwrap();
        assert!(!m.exists());
        move_manifest_out(&m, &out).unwrap();
        assert_eq!(fs::read_dir(&manifests).unwrap().count(), 0);
        put_manifest(&out, &m).unwrap();
        assert_eq!(fs::read(&m).unwrap(), b"kind: Pod\n# comment\n");
        assert_eq!(
            fs::metadata(&m).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn waits_say_what_they_waited_for() {
        let err = wait_until(
            "the moon",
            Duration::from_millis(50),
            Duration::from_millis(10),
            || Ok(false),
        )
        .unwrap_err();
        assert!(
            err.one_line().contains("wait for the moon"),
            "{}",
            err.one_line()
        );
        assert!(port_refuses(&format!("http://127.0.0.1:{}", {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        })));
    }
}
