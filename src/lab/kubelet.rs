//! The kubelet stand-in: behaves like kubelet where a migration depends on it, and nowhere
//! else.
//!
//! - It runs the manifest's etcd in a private mount namespace with every hostPath
//!   bind-mounted at its mountPath, so `--data-dir=/var/lib/etcd` really points into the
//!   hostPath (the mount-point directories are created on the host if absent, empty).
//! - It checks hostPath types as kubelet does: `DirectoryOrCreate` creates a missing dir but
//!   refuses a path that is a file (that is what the migration's fence relies on).
//! - It restarts etcd when the manifest changes, kills it (SIGTERM, then SIGKILL after the
//!   grace period) when the manifest leaves the dir, and ignores dotfiles.
//! - When the stand-in itself is stopped, etcd keeps running (as with the real kubelet);
//!   a new stand-in adopts it from `etcd.pid`.
//! - `start` and `stop` behave like systemd's jobs on kubelet.service: one job at a time per
//!   node (`kubelet.job`, rewritten under a flock on `kubelet.lock`), and a start issued while
//!   a stop runs replaces it: the stop exits 1 with "Job for kubelet.service canceled.", the
//!   start waits for the old stand-in to exit and starts a new one. A stop whose command was
//!   killed still counts (the pid file says `PID stopping`): a later start waits for the
//!   stand-in to exit and starts a new one, as systemd does. `kubelet.stop-gate` (a
//!   file tests create) holds a stopping stand-in before it exits, so the stop stays in
//!   flight for as long as a test needs.
//!
//! It rescans every 200 ms where the real kubelet takes up to 20 s; docs say how that
//! changes downtime on real nodes. It runs the first etcd manifest by file name and logs any
//! other non-dot file that the real kubelet would also start.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::Pid;

use super::Lab;
use super::kubeadm;
use super::probe::{Event, PodRun, Prober};
use crate::error::{Error, Result};
use crate::manifest::StaticPod;

/// How often the stand-in looks at the manifests dir.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(200);
/// kubelet's default termination grace period.
pub const GRACE: Duration = Duration::from_secs(30);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

fn kubelet_pid_file(lab: &Lab, node: usize) -> PathBuf {
    lab.node_dir(node).join("kubelet.pid")
}

fn etcd_pid_file(lab: &Lab, node: usize) -> PathBuf {
    lab.node_dir(node).join("etcd.pid")
}

/// A log file opened for appending, twice: for a child's stdout and stderr.
fn open_log(path: &Path) -> Result<(fs::File, fs::File)> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let err = log.try_clone().map_err(|e| Error::io("dup", path, e))?;
    Ok((log, err))
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

fn read_pid(path: &Path) -> Option<(i32, String)> {
    let text = fs::read_to_string(path).ok()?;
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    Some((pid, words.next().unwrap_or("").to_string()))
}

/// The stand-in's pid, if it runs.
pub fn stand_in_pid(lab: &Lab, node: usize) -> Option<i32> {
    read_pid(&kubelet_pid_file(lab, node))
        .map(|(p, _)| p)
        .filter(|p| alive(*p))
}

/// Whether a stop was issued to the running stand-in (its pid file says `PID stopping`).
fn stopping(lab: &Lab, node: usize) -> bool {
    read_pid(&kubelet_pid_file(lab, node))
        .is_some_and(|(pid, word)| word == "stopping" && alive(pid))
}

/// The pid of the etcd the stand-in started, if it runs.
pub fn etcd_pid(lab: &Lab, node: usize) -> Option<i32> {
    read_pid(&etcd_pid_file(lab, node))
        .map(|(p, _)| p)
        .filter(|p| alive(*p))
}

/// The per-node job file: the one start or stop job in flight, as `start PID` or `stop PID`.
fn job_file(lab: &Lab, node: usize) -> PathBuf {
    lab.node_dir(node).join("kubelet.job")
}

/// Held (flock) only while a job file is read and rewritten, never for a whole job, so that
/// a start can replace a running stop as systemd's job queue does.
fn lock_file(lab: &Lab, node: usize) -> PathBuf {
    lab.node_dir(node).join("kubelet.lock")
}

/// While this file exists, a stand-in that was told to stop waits before exiting: a
/// `kubelet stop` then stays in flight ("deactivating") for as long as a test needs, without
/// a sleep. `etcdops-lab kubelet stop` never creates it; only tests and operators do.
pub fn stop_gate(lab: &Lab, node: usize) -> PathBuf {
    lab.node_dir(node).join("kubelet.stop-gate")
}

/// How long a stop waits for the stand-in after SIGTERM before SIGKILL (systemd's default
/// `TimeoutStopSec`).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Start,
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Job {
    kind: JobKind,
    pid: u32,
}

impl Job {
    fn mine(kind: JobKind) -> Job {
        Job {
            kind,
            pid: std::process::id(),
        }
    }

    fn line(&self) -> String {
        let kind = match self.kind {
            JobKind::Start => "start",
            JobKind::Stop => "stop",
        };
        format!("{kind} {}\n", self.pid)
    }
}

/// The job in flight, if its command still runs (a killed command's job is void, as
/// systemd's jobs do not outlive the manager's queue either).
fn read_job(lab: &Lab, node: usize) -> Option<Job> {
    let text = fs::read_to_string(job_file(lab, node)).ok()?;
    let mut words = text.split_whitespace();
    let kind = match words.next()? {
        "start" => JobKind::Start,
        "stop" => JobKind::Stop,
        _ => return None,
    };
    let pid: u32 = words.next()?.parse().ok()?;
    alive(pid as i32).then_some(Job { kind, pid })
}

/// Run `f` with the node's job lock held.
fn locked<T>(lab: &Lab, node: usize, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let path = lock_file(lab, node);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    let _lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| Error::io("lock", &path, errno.into()))?;
    f()
}

fn write_job(lab: &Lab, node: usize, job: Job) -> Result<()> {
    let path = job_file(lab, node);
    fs::write(&path, job.line()).map_err(|e| Error::io("write", &path, e))
}

/// Remove the job file if it still holds `job` (a replaced job leaves the new one alone).
fn finish_job(lab: &Lab, node: usize, job: Job) -> Result<()> {
    locked(lab, node, || {
        if read_job(lab, node) == Some(job) {
            let path = job_file(lab, node);
            fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
        }
        Ok(())
    })
}

/// What a node's stand-in is doing, in `systemctl is-active` words.
pub fn state(lab: &Lab, node: usize) -> &'static str {
    let running = stand_in_pid(lab, node).is_some();
    match (read_job(lab, node).map(|j| j.kind), running) {
        (Some(JobKind::Stop), true) => "deactivating",
        (_, true) if stopping(lab, node) => "deactivating",
        (Some(JobKind::Start), false) => "activating",
        (_, true) => "active",
        (_, false) => "inactive",
    }
}

/// Install `kind` as the node's job: one job at a time. A start replaces a stop in flight
/// (the stop's command then reports it was canceled); anything else waits for the job in
/// flight to end, within `STOP_TIMEOUT` plus a margin. Returns the job replaced, if any.
fn install(lab: &Lab, node: usize, kind: JobKind) -> Result<Option<Job>> {
    let me = Job::mine(kind);
    let deadline = Instant::now() + STOP_TIMEOUT + Duration::from_secs(30);
    loop {
        let outcome = locked(lab, node, || match read_job(lab, node) {
            None => write_job(lab, node, me).map(|_| Some(None)),
            Some(other) if kind == JobKind::Start && other.kind == JobKind::Stop => {
                write_job(lab, node, me).map(|_| Some(Some(other)))
            }
            Some(_) => Ok(None),
        })?;
        if let Some(replaced) = outcome {
            return Ok(replaced);
        }
        if Instant::now() >= deadline {
            let other = read_job(lab, node).map_or("-".into(), |j| j.line());
            return Err(Error::failed(
                format!("queue a kubelet job on node {node}"),
                format!("the job in flight ({}) did not end", other.trim()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The etcd pid written by the stand-in, unchecked: in systemd mode it is a pid of the
/// node's PID namespace (see `systemd::host_pid`).
pub fn etcd_pid_in_file(lab: &Lab, node: usize) -> Option<i32> {
    read_pid(&etcd_pid_file(lab, node)).map(|(p, _)| p)
}

/// Start the stand-in for a node in the background (no-op if it runs and is not stopping).
/// A start issued while a stop is in flight cancels the stop, waits for the old stand-in to
/// exit and starts a new one, as `systemctl start` does with a running stop job.
pub fn start(lab: &Lab, node: usize) -> Result<()> {
    let replaced = install(lab, node, JobKind::Start)?;
    let me = Job::mine(JobKind::Start);
    let result = start_job(lab, node, replaced.is_some());
    finish_job(lab, node, me)?;
    result
}

fn start_job(lab: &Lab, node: usize, replaced_stop: bool) -> Result<()> {
    if let Some(pid) = stand_in_pid(lab, node) {
        if !replaced_stop && !stopping(lab, node) {
            return Ok(());
        }
        // A stop was issued (its command canceled by us, or killed): the old stand-in is on
        // its way out, as a unit in "deactivating" is even when systemctl stop was killed.
        // SIGTERM again in case the stop died between marking and signalling.
        let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        if !wait_gone(pid, STOP_TIMEOUT) {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            wait_gone(pid, Duration::from_secs(5));
        }
    }
    spawn_stand_in(lab, node)
}

fn spawn_stand_in(lab: &Lab, node: usize) -> Result<()> {
    let log_path = lab.node_dir(node).join("kubelet.log");
    let (log, err_log) = open_log(&log_path)?;
    let mut cmd = Command::new(&lab.config.lab_bin);
    cmd.args(["kubelet", "run", "--dir"])
        .arg(&lab.dir)
        .args(["--node", &node.to_string()])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    // SAFETY: setsid is async-signal-safe; it detaches the stand-in from our session so
    // that it outlives this command and ignores the terminal's signals.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("spawn", &lab.config.lab_bin, e))?;
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if stand_in_pid(lab, node) == Some(pid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::failed(
        format!("start the kubelet stand-in of node {node}"),
        format!(
            "it did not write its pid within 10s; see {}",
            log_path.display()
        ),
    ))
}

/// Stop the stand-in: SIGTERM, wait for it to exit (SIGKILL after `STOP_TIMEOUT`). etcd keeps
/// running, as with kubelet. Fails with systemctl's words when a start cancels this stop.
pub fn stop(lab: &Lab, node: usize) -> Result<()> {
    install(lab, node, JobKind::Stop)?;
    let me = Job::mine(JobKind::Stop);
    let result = stop_job(lab, node, me);
    finish_job(lab, node, me)?;
    result
}

fn stop_job(lab: &Lab, node: usize, me: Job) -> Result<()> {
    let Some(pid) = stand_in_pid(lab, node) else {
        let _ = fs::remove_file(kubelet_pid_file(lab, node));
        return Ok(());
    };
    // Marked before the signal, so that the stand-in counts as stopping even if this
    // command is killed right after: a later start then waits for it and starts anew.
    let file = kubelet_pid_file(lab, node);
    fs::write(&file, format!("{pid} stopping\n")).map_err(|e| Error::io("write", &file, e))?;
    let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if read_job(lab, node) != Some(me) {
            return Err(Error::failed(
                format!("stop kubelet on node {node}"),
                "Job for kubelet.service canceled.",
            ));
        }
        if !alive(pid) {
            let _ = fs::remove_file(kubelet_pid_file(lab, node));
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            if wait_gone(pid, Duration::from_secs(5)) {
                let _ = fs::remove_file(kubelet_pid_file(lab, node));
                return Ok(());
            }
            return Err(Error::failed(
                format!("stop the kubelet stand-in of node {node}"),
                format!("pid {pid} still runs after SIGKILL"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

/// Terminate etcd as kubelet does: SIGTERM, then SIGKILL after `grace`.
pub fn kill_etcd(pid: i32, child: Option<&mut Child>, grace: Duration) {
    let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut child = child;
    loop {
        if let Some(c) = child.as_deref_mut()
            && matches!(c.try_wait(), Ok(Some(_)))
        {
            return;
        }
        if !alive(pid) {
            return;
        }
        if Instant::now() >= deadline {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            if let Some(c) = child {
                let _ = c.wait();
            } else {
                wait_gone(pid, Duration::from_secs(5));
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log(msg: &str) {
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{now} {msg}");
    let _ = out.flush();
}

struct Running {
    pid: i32,
    hash: String,
    /// Present when this stand-in started etcd; absent when it adopted it.
    child: Option<Child>,
    /// The pod's grace period, for a manifest change or removal.
    grace: Duration,
    /// Runs the container's probes; `None` when the manifest could not be read for them.
    prober: Option<Prober>,
}

/// The stand-in's loop: returns when it receives SIGTERM or SIGINT, leaving etcd running.
pub fn run(lab: &Lab, node: usize) -> Result<()> {
    let handler = SigHandler::Handler(on_signal);
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        signal::signal(Signal::SIGTERM, handler)
            .map_err(|e| Error::failed("signal", e.to_string()))?;
        signal::signal(Signal::SIGINT, handler)
            .map_err(|e| Error::failed("signal", e.to_string()))?;
    }
    let pid_file = kubelet_pid_file(lab, node);
    fs::write(&pid_file, format!("{}\n", std::process::id()))
        .map_err(|e| Error::io("write", &pid_file, e))?;
    log(&format!("kubelet stand-in for node {node} started"));

    let mut running: Option<Running> = read_pid(&etcd_pid_file(lab, node))
        .filter(|(pid, _)| alive(*pid))
        .map(|(pid, hash)| {
            log(&format!("adopted running etcd pid {pid}"));
            // Probed from now on, as kubelet probes the containers it finds running.
            let run = desired_manifest(lab, node, &mut String::new())
                .filter(|(_, h)| *h == hash)
                .and_then(|(path, _)| pod_run(lab, node, &path).ok());
            Running {
                pid,
                hash,
                child: None,
                grace: run.as_ref().map_or(GRACE, |r| r.grace),
                prober: run.map(|r| Prober::spawn(&r, Instant::now())),
            }
        });
    let mut backoff = Duration::from_millis(500);
    let mut next_start = Instant::now();
    let mut last_warning = String::new();

    while !STOP.load(Ordering::SeqCst) {
        // What the probes found: kubelet restarts a container whose startup or liveness
        // probe failed failureThreshold times in a row.
        if let Some(r) = &mut running {
            let mut restart = None;
            if let Some(p) = &r.prober {
                while let Ok(ev) = p.events.try_recv() {
                    match ev {
                        Event::Started => {
                            log(&format!("etcd pid {}: startup probe succeeded", r.pid))
                        }
                        Event::Ready(ready) => log(&format!(
                            "etcd pid {}: readiness probe says {}",
                            r.pid,
                            if ready { "ready" } else { "not ready" }
                        )),
                        Event::Restart(why, grace) => restart = Some((why, grace)),
                    }
                }
            }
            if let Some((why, grace)) = restart {
                log(&format!(
                    "etcd pid {}: {why}; killing it (grace period {}s) to restart it",
                    r.pid,
                    grace.as_secs()
                ));
                r.prober = None;
                kill_etcd(r.pid, r.child.as_mut(), grace);
                running = None;
                let _ = fs::remove_file(etcd_pid_file(lab, node));
                next_start = Instant::now() + backoff;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        // Reap an etcd that exited by itself.
        if let Some(r) = &mut running {
            let exited = match &mut r.child {
                Some(c) => matches!(c.try_wait(), Ok(Some(_))),
                None => !alive(r.pid),
            };
            if exited {
                log(&format!(
                    "etcd pid {} exited; will restart after {backoff:?}",
                    r.pid
                ));
                running = None;
                let _ = fs::remove_file(etcd_pid_file(lab, node));
                next_start = Instant::now() + backoff;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }

        let desired = desired_manifest(lab, node, &mut last_warning);
        match (&mut running, &desired) {
            (Some(r), None) => {
                log(&format!("manifest gone: stopping etcd pid {}", r.pid));
                r.prober = None;
                kill_etcd(r.pid, r.child.as_mut(), r.grace);
                running = None;
                let _ = fs::remove_file(etcd_pid_file(lab, node));
            }
            (Some(r), Some((_, hash))) if *hash != r.hash => {
                log(&format!("manifest changed: restarting etcd pid {}", r.pid));
                r.prober = None;
                kill_etcd(r.pid, r.child.as_mut(), r.grace);
                running = None;
                let _ = fs::remove_file(etcd_pid_file(lab, node));
                backoff = Duration::from_millis(500);
                next_start = Instant::now();
            }
            (None, Some((path, hash))) if Instant::now() >= next_start => {
                match start_etcd(lab, node, path) {
                    Ok((child, run, program)) => {
                        let pid = child.id() as i32;
                        log(&format!(
                            "started etcd pid {pid} from {} ({} for image {})",
                            path.display(),
                            program.display(),
                            run.image
                        ));
                        let file = etcd_pid_file(lab, node);
                        fs::write(&file, format!("{pid} {hash}\n"))
                            .map_err(|e| Error::io("write", &file, e))?;
                        running = Some(Running {
                            pid,
                            hash: hash.clone(),
                            child: Some(child),
                            grace: run.grace,
                            prober: Some(Prober::spawn(&run, Instant::now())),
                        });
                    }
                    Err(e) => {
                        log(&format!("cannot start etcd: {}", e.one_line()));
                        next_start = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
            _ => {}
        }
        std::thread::sleep(SCAN_INTERVAL);
    }
    log("kubelet stand-in stopping; etcd keeps running");
    let gate = stop_gate(lab, node);
    if gate.exists() {
        log(&format!(
            "waiting for {} to go before exiting",
            gate.display()
        ));
        while gate.exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = fs::remove_file(&pid_file);
    Ok(())
}

/// The manifest kubelet would run: the first non-dot regular file by name that holds an
/// etcd pod, and the hash of its bytes.
fn desired_manifest(
    lab: &Lab,
    node: usize,
    last_warning: &mut String,
) -> Option<(PathBuf, String)> {
    let dir = lab.manifests_dir(node);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut chosen: Option<(PathBuf, String)> = None;
    for f in files {
        let Ok(bytes) = fs::read(&f) else { continue };
        let is_etcd = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| StaticPod::parse(&f, t).ok())
            .is_some_and(|p| p.etcd_container().is_ok());
        if !is_etcd {
            continue;
        }
        if chosen.is_none() {
            chosen = Some((f, blake3::hash(&bytes).to_hex().to_string()));
        } else {
            let w = format!(
                "{} is another etcd pod: the real kubelet would start it too",
                f.display()
            );
            if *last_warning != w {
                log(&w);
                *last_warning = w;
            }
        }
    }
    chosen
}

/// The probes, image and grace period of the manifest's etcd container.
fn pod_run(lab: &Lab, node: usize, manifest: &Path) -> Result<PodRun> {
    let pod = StaticPod::load(manifest)?;
    let container = pod.etcd_container()?;
    let text = fs::read_to_string(manifest).map_err(|e| Error::io("read", manifest, e))?;
    PodRun::parse(&text, &container.name, &lab.ip(node).to_string())
        .map_err(|e| Error::input(manifest, e.one_line()))
}

/// The etcd binary for a container image, as a node's container runtime would have it: the
/// image tag's release (`registry.k8s.io/etcd:3.6.17-0` -> 3.6.17) is the etcd `up` was
/// given when it is that release, else the one `scripts/build-etcd.sh` built.
pub fn etcd_for_image(lab: &Lab, image: &str) -> Result<PathBuf> {
    let tag = image.rsplit_once(':').map_or("", |(_, t)| t);
    let release = kubeadm::tag_release(tag);
    if lab.config.etcd_version.is_empty() || release == lab.config.etcd_version {
        return Ok(lab.config.etcd.clone());
    }
    let built = kubeadm::built_etcd(release);
    if built.is_file() {
        return Ok(built);
    }
    Err(Error::failed(
        format!("run image {image}"),
        format!(
            "no etcd {release} here: the lab runs {} ({}) and {} is missing (scripts/build-etcd.sh {release})",
            lab.config.etcd_version,
            lab.config.etcd.display(),
            built.display()
        ),
    ))
}

/// Start etcd for a manifest in a private mount namespace with the hostPaths bound: the
/// child, the pod's probes and which binary runs.
fn start_etcd(lab: &Lab, node: usize, manifest: &Path) -> Result<(Child, PodRun, PathBuf)> {
    let pod = StaticPod::load(manifest)?;
    let container = pod.etcd_container()?;
    let run = pod_run(lab, node, manifest)?;
    let mut binds: Vec<(PathBuf, PathBuf)> = Vec::new();
    for m in &container.volume_mounts {
        let (_, volume) = pod.volume(&m.name)?;
        let Some(hp) = &volume.host_path else {
            return Err(Error::input(
                manifest,
                format!(
                    "volume {} is not a hostPath (the stand-in runs only hostPath volumes)",
                    m.name
                ),
            ));
        };
        let host = PathBuf::from(&hp.path);
        check_host_path(&host, hp.kind.as_deref().unwrap_or(""))?;
        let target = PathBuf::from(&m.mount_path);
        if !target.exists() {
            fs::create_dir_all(&target).map_err(|e| Error::io("create mount point", &target, e))?;
        }
        binds.push((host, target));
    }
    let mut words: Vec<String> = container.words().map(str::to_string).collect();
    if words.is_empty() {
        return Err(Error::input(manifest, "the etcd container has no command"));
    }
    let program = if Path::new(&words[0])
        .file_name()
        .is_some_and(|n| n == "etcd")
    {
        etcd_for_image(lab, &run.image)?
    } else {
        PathBuf::from(&words[0])
    };
    words.remove(0);

    let log_path = lab.node_dir(node).join("etcd.log");
    let (log, err_log) = open_log(&log_path)?;
    let mut cmd = Command::new(&program);
    cmd.args(&words)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    // SAFETY: runs in the forked child of a single-threaded process, before exec; it only
    // makes syscalls (setsid, unshare, mount) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            unshare(CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(std::io::Error::from)?;
            for (host, target) in &binds {
                mount(
                    Some(host.as_path()),
                    target.as_path(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("start etcd", &program, e))?;
    Ok((child, run, program))
}

/// kubelet's hostPath type checks, for the types a kubeadm etcd manifest uses.
fn check_host_path(path: &Path, kind: &str) -> Result<()> {
    let meta = fs::metadata(path);
    match kind {
        "DirectoryOrCreate" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(Error::refused(
                path.display().to_string(),
                "hostPath type check failed: exists and is not a directory",
            )),
            Err(_) => fs::create_dir_all(path).map_err(|e| Error::io("create hostPath", path, e)),
        },
        "Directory" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            _ => Err(Error::refused(
                path.display().to_string(),
                "hostPath type check failed: not a directory",
            )),
        },
        _ => {
            if meta.is_err() {
                fs::create_dir_all(path).map_err(|e| Error::io("create hostPath", path, e))?;
            }
            Ok(())
        }
    }
}
