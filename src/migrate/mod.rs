//! The planned disk migration of a member's data dir, as DESIGN.md's ten steps. Each step is
//! journaled before and after, is idempotent, and has an undo; `resume` re-runs the step the
//! journal shows unfinished and goes on, `rollback` undoes every step that began, in reverse.
//! The source data dir is never written to. Steps reach the host only through `Host`.

pub mod host;
pub mod journal;
pub mod preflight;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::datadir::digest::sums;
use crate::datadir::quiesce;
use crate::error::{Error, Result};
use host::Host;
use journal::{Journal, Record, now_ms};

/// The steps, in order (names are the journal's and the JSON's).
pub const STEPS: [&str; 10] = [
    "preflight",
    "snapshot",
    "stop-etcd",
    "stop-kubelet",
    "copy",
    "verify",
    "rewrite",
    "start-kubelet",
    "wait-healthy",
    "post-verify",
];

/// Index of the first step after which a failure must roll back (it changes the node).
const FIRST_CHANGING_STEP: usize = 2;

/// start-kubelet: from here on etcd may run on the copy, and going back is unsafe.
const START_STEP: usize = 7;

/// The steps whose undo does something.
const HAS_UNDO: [&str; 4] = ["start-kubelet", "copy", "stop-kubelet", "stop-etcd"];

/// Who the member is and what it holds, recorded before and proved after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub member_id: String,
    pub cluster_id: String,
    pub revision: i64,
    /// HashKV at `revision`.
    pub hash: u32,
}

/// What a run does, recorded in its first journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    /// The data dir on the host now (the data volume's hostPath).
    pub from: PathBuf,
    pub to: PathBuf,
    pub manifest: PathBuf,
    /// The local client URL the checks use.
    pub endpoint: String,
    pub snapshot: bool,
    /// The target existed as an empty dir: rollback empties it instead of removing it.
    pub target_existed: bool,
    pub identity: Identity,
}

/// Where a run keeps its files.
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    pub fn journal(&self) -> PathBuf {
        Journal::path_in(&self.dir)
    }
    /// The manifest moved out of the manifests dir (rewritten in step 7).
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("etcd.yaml")
    }
    /// The original manifest, byte for byte, for rollback.
    pub fn original(&self) -> PathBuf {
        self.dir.join("etcd.yaml.orig")
    }
    pub fn snapshot(&self) -> PathBuf {
        self.dir.join("snapshot.db")
    }
    pub fn sums(&self) -> PathBuf {
        self.dir.join("sums.b3")
    }
    pub fn backups(&self) -> PathBuf {
        self.dir.join("backups")
    }
}

pub fn runs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

/// The exclusive lock that stops two runs at once, held while the value lives.
pub struct RunLock {
    _lock: Flock<fs::File>,
}

impl RunLock {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("migrate.lock")
    }

    pub fn acquire(state_dir: &Path) -> Result<RunLock> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
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
                "another etcdops migration is running on this node",
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

/// Per step, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    /// pending, running, done, failed, undone
    pub state: String,
    pub took_ms: Option<u64>,
}

/// `migrate apply|resume|rollback|status` report (DESIGN.md's fields plus a few).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub id: String,
    pub from: PathBuf,
    pub to: PathBuf,
    pub state: String,
    pub steps: Vec<StepReport>,
    pub downtime_ms: Option<u64>,
    pub identity: Identity,
    pub run_dir: PathBuf,
    pub error: Option<String>,
    pub notes: Vec<String>,
}

/// Everything a run needs besides the host.
pub struct Ctx<'a> {
    pub host: &'a dyn Host,
    pub plan: Plan,
    pub run: RunDir,
    pub journal: Journal,
    /// Step progress lines for a person (stderr); silent for JSON.
    pub say: &'a dyn Fn(&str),
    /// Set by SIGINT/SIGTERM: no new step starts before etcd runs on the copy; the run
    /// rolls back instead. From start-kubelet on the run finishes (going back is unsafe).
    pub cancel: Option<&'a std::sync::atomic::AtomicBool>,
}

impl Ctx<'_> {
    fn record(&mut self, r: Record) -> Result<()> {
        self.journal.append(&r)
    }

    /// Run the steps from `from` on; returns the failing step's index with its error.
    fn forward(&mut self, from: usize) -> std::result::Result<(), (usize, Error)> {
        for (i, step) in STEPS.iter().enumerate().skip(from) {
            let interrupted = self
                .cancel
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst));
            if interrupted && i < START_STEP {
                return Err((
                    i,
                    Error::failed(
                        format!("migration before step {step}"),
                        "interrupted by the operator (SIGINT/SIGTERM)",
                    ),
                ));
            }
            // issue 11: one member down at a time; a refusal here changes nothing.
            if *step == "stop-etcd" {
                self.host.hold_guard(&self.plan.id).map_err(|e| (i, e))?;
            }
            (self.say)(&format!("[{}/{}] {step} ...", i + 1, STEPS.len()));
            self.record(Record::Begin {
                ts_ms: now_ms(),
                step: step.to_string(),
            })
            .map_err(|e| (i, e))?;
            let start = Instant::now();
            match self.do_step(step) {
                Ok(data) => {
                    let took_ms = start.elapsed().as_millis() as u64;
                    (self.say)(&format!(
                        "[{}/{}] {step} done ({})",
                        i + 1,
                        STEPS.len(),
                        crate::output::millis(took_ms)
                    ));
                    self.record(Record::Done {
                        ts_ms: now_ms(),
                        step: step.to_string(),
                        took_ms,
                        data,
                    })
                    .map_err(|e| (i, e))?;
                }
                Err(e) => {
                    let _ = self.record(Record::Failed {
                        ts_ms: now_ms(),
                        step: step.to_string(),
                        error: e.one_line(),
                    });
                    return Err((i, e));
                }
            }
        }
        Ok(())
    }

    fn do_step(&mut self, step: &str) -> Result<serde_json::Value> {
        let plan = self.plan.clone();
        let host = self.host;
        match step {
            // The checks ran before the journal existed; the identity is in the plan.
            "preflight" => Ok(serde_json::to_value(&plan.identity).expect("serializes")),
            "snapshot" => {
                if !plan.snapshot {
                    return Ok(serde_json::json!({"skipped": "--no-snapshot"}));
                }
                let path = self.run.snapshot();
                let _ = fs::remove_file(&path);
                host.snapshot(&path)?;
                Ok(serde_json::json!({"path": path}))
            }
            "stop-etcd" => {
                if !self.run.original().exists() {
                    fs::copy(&plan.manifest, self.run.original())
                        .map_err(|e| Error::io("keep a copy of", &plan.manifest, e))?;
                }
                host.stop_etcd(&plan.manifest, &self.run.manifest(), &plan.from)?;
                Ok(serde_json::Value::Null)
            }
            "stop-kubelet" => host.stop_kubelet().map(|_| serde_json::Value::Null),
            "copy" => {
                if has_entries(&plan.to)? {
                    // A previous attempt renamed its copy into place before the crash; the
                    // verify step proves it.
                    return Ok(serde_json::json!({"resumed": "target already complete"}));
                }
                // A sums file from an attempt that died before its rename is stale.
                let _ = fs::remove_file(self.run.sums());
                let report = host.copy(&plan.from, &plan.to, &self.run.sums())?;
                Ok(
                    serde_json::json!({"files": report.files, "bytes": report.bytes,
                    "digest": report.digest}),
                )
            }
            "verify" => {
                let report = host.verify(&plan.from, &plan.to, Some(&self.run.sums()))?;
                if !report.identical {
                    let first: Vec<String> = report
                        .differences
                        .iter()
                        .take(5)
                        .map(|d| format!("{} ({})", d.path, d.kind.name()))
                        .collect();
                    return Err(Error::failed(
                        "verify the copy",
                        format!(
                            "{} differences between {} and {}: {}",
                            report.differences.len(),
                            plan.from.display(),
                            plan.to.display(),
                            first.join(", ")
                        ),
                    ));
                }
                Ok(serde_json::json!({"files": report.files, "bytes": report.bytes}))
            }
            "rewrite" => {
                host.rewrite(&self.run.manifest(), &plan.to, &self.run.backups())?;
                Ok(serde_json::Value::Null)
            }
            "start-kubelet" => {
                host.start_kubelet()?;
                host.put_manifest(&self.run.manifest(), &plan.manifest)?;
                Ok(serde_json::Value::Null)
            }
            "wait-healthy" => {
                host.wait_healthy()?;
                host.release_guard(); // issue 11: the member is back
                Ok(serde_json::Value::Null)
            }
            "post-verify" => post_verify(host, &plan),
            other => unreachable!("unknown step {other}"),
        }
    }

    /// Undo every step that began, newest first. Stops at the first undo that fails.
    pub fn rollback(&mut self, began: &[String]) -> Result<()> {
        let plan = self.plan.clone();
        let host = self.host;
        for step in STEPS.iter().rev() {
            if !began.iter().any(|b| b == step) || !HAS_UNDO.contains(step) {
                continue;
            }
            self.record(Record::UndoBegin {
                ts_ms: now_ms(),
                step: step.to_string(),
            })?;
            (self.say)(&format!("undo {step} ..."));
            match *step {
                "start-kubelet" => self.undo_start(host, &plan)?,
                "copy" => {
                    // A copy killed mid-way leaves its staging dir beside the target.
                    if let Some(staging) = crate::datadir::copy::staging_path_for(&plan.to) {
                        host.remove_tree(&staging)?;
                    }
                    if plan.target_existed {
                        empty_dir(&plan.to)?;
                    } else {
                        host.remove_tree(&plan.to)?;
                    }
                }
                "stop-kubelet" => host.start_kubelet()?,
                "stop-etcd" => {
                    host.start_kubelet()?;
                    if fs::read(&plan.manifest).ok() != fs::read(self.run.original()).ok() {
                        host.put_manifest(&self.run.original(), &plan.manifest)?;
                    }
                    host.wait_healthy()?;
                    let now = host.identity()?;
                    if now.member_id != plan.identity.member_id
                        || now.cluster_id != plan.identity.cluster_id
                    {
                        return Err(Error::Attention(format!(
                            "after rollback the member answers as {}/{} instead of {}/{}",
                            now.member_id,
                            now.cluster_id,
                            plan.identity.member_id,
                            plan.identity.cluster_id
                        )));
                    }
                }
                _ => {}
            }
            self.record(Record::UndoDone {
                ts_ms: now_ms(),
                step: step.to_string(),
            })?;
        }
        Ok(())
    }

    /// Undo of start-kubelet: take the rewritten manifest out again, but only while etcd has
    /// not run on the new data. Once it has, its raft log is ahead of the old data dir: etcd
    /// started there panics ("tocommit(N) is out of range [lastIndex(M)]", verified on 3.4
    /// and 3.5) and acknowledged writes could be lost. Then the member stays on the new data
    /// and the operator resumes instead.
    fn undo_start(&mut self, host: &dyn Host, plan: &Plan) -> Result<()> {
        let current = fs::read(&plan.manifest).ok();
        let original = fs::read(self.run.original()).ok();
        if current.is_none() || current == original {
            return Ok(());
        }
        let has_run = || {
            Error::Attention(format!(
                "etcd has run on the new data dir {}: going back to {} would make it panic \
                 (its raft log is ahead) and could lose acknowledged writes, so the member \
                 stays on the new data dir; fix the cause, then `etcdops migrate resume` \
                 (journal {})",
                plan.to.display(),
                plan.from.display(),
                self.run.dir.display()
            ))
        };
        if !quiesce::check(&plan.to)?.quiesced {
            return Err(has_run());
        }
        let aside = self.run.dir.join("etcd.yaml.rewritten");
        host.stop_etcd(&plan.manifest, &aside, &plan.to)?;
        let recorded = fs::read_to_string(self.run.sums()).unwrap_or_default();
        if recorded.is_empty() || sums(&plan.to)?.sums.text() != recorded {
            host.put_manifest(&aside, &plan.manifest)?;
            return Err(has_run());
        }
        Ok(())
    }

    pub fn set_state(&mut self, state: &str, reason: Option<String>) -> Result<()> {
        self.record(Record::State {
            ts_ms: now_ms(),
            state: state.to_string(),
            reason,
        })
    }

    /// Run forward from `from`; on failure roll back when the node was touched.
    pub fn run_from(&mut self, from: usize) -> Result<()> {
        let Err((failed_at, err)) = self.forward(from) else {
            self.set_state("completed", None)?;
            return Ok(());
        };
        let step = STEPS[failed_at];
        let records = Journal::read(&self.run.dir)?;
        let began = began_steps(&records);
        let refused_before =
            matches!(err, Error::Refused { .. }) && !began.iter().any(|b| b == step);
        if failed_at < FIRST_CHANGING_STEP || refused_before {
            self.set_state("rolled-back", Some(err.one_line()))?;
            if refused_before {
                return Err(err); // issue 11: the guard is held elsewhere; exit 4, nothing changed
            }
            return Err(Error::failed(
                format!("migration step {step}"),
                format!("{}; nothing on the node was changed", err.one_line()),
            ));
        }
        (self.say)(&format!(
            "step {step} failed: {}; rolling back",
            err.one_line()
        ));
        match self.rollback(&began) {
            Ok(()) => {
                self.set_state("rolled-back", Some(err.one_line()))?;
                Err(Error::failed(
                    format!("migration step {step}"),
                    format!(
                        "{}; rolled back: original manifest in place, member healthy with its \
                         old identity, source untouched; journal in {}",
                        err.one_line(),
                        self.run.dir.display()
                    ),
                ))
            }
            Err(rb @ Error::Attention(_)) => {
                let _ = self.set_state("failed", Some(rb.one_line()));
                Err(Error::Attention(format!(
                    "migration step {step} failed ({}); {}",
                    err.one_line(),
                    rb.one_line()
                )))
            }
            Err(rb) => {
                let _ = self.set_state("failed", Some(rb.one_line()));
                Err(Error::Attention(format!(
                    "migration step {step} failed ({}) and the rollback failed too: {}; the \
                     source data at {} is untouched and the original manifest is {}; run \
                     `etcdops migrate status`, fix the cause, then `etcdops migrate rollback`",
                    err.one_line(),
                    rb.one_line(),
                    self.plan.from.display(),
                    self.run.original().display()
                )))
            }
        }
    }
}

fn post_verify(host: &dyn Host, plan: &Plan) -> Result<serde_json::Value> {
    let now = host.identity()?;
    let want = &plan.identity;
    if now.member_id != want.member_id || now.cluster_id != want.cluster_id {
        return Err(Error::failed(
            "post-verify",
            format!(
                "the member came back as member {} of cluster {}, expected member {} of cluster {}: \
                 etcd did not start on the copied data",
                now.member_id, now.cluster_id, want.member_id, want.cluster_id
            ),
        ));
    }
    if now.revision < want.revision {
        return Err(Error::failed(
            "post-verify",
            format!(
                "revision {} is behind the recorded {}: data is missing",
                now.revision, want.revision
            ),
        ));
    }
    let mut note = None;
    match host.hash_at(want.revision)? {
        Some(h) if h == want.hash => {}
        Some(h) => {
            return Err(Error::failed(
                "post-verify",
                format!(
                    "HashKV at revision {} is {h:08x}, recorded {:08x}: data differs",
                    want.revision, want.hash
                ),
            ));
        }
        None => {
            note = Some(format!(
                "revision {} was compacted meanwhile (kube-apiserver compacts every 5 minutes); \
                 proved data by HashKV agreement across members instead",
                want.revision
            ));
        }
    }
    let cluster = host.health(true)?;
    if !cluster.healthy {
        return Err(Error::failed(
            "post-verify",
            format!("cluster unhealthy: {}", cluster.problems.join("; ")),
        ));
    }
    if note.is_some() && cluster.cluster.as_ref().and_then(|c| c.hashes_agree) != Some(true) {
        return Err(Error::failed(
            "post-verify",
            "revision compacted and members' HashKV could not be compared",
        ));
    }
    Ok(serde_json::json!({"identity": now, "note": note}))
}

fn has_entries(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut rd) => Ok(rd.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("read", dir, e)),
    }
}

fn empty_dir(dir: &Path) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read", dir, e)),
    };
    for entry in rd.flatten() {
        let p = entry.path();
        let r = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.map_err(|e| Error::io("remove", &p, e))?;
    }
    Ok(())
}

/// Steps that have a `begin` record and no `undo-done`.
pub fn began_steps(records: &[Record]) -> Vec<String> {
    let mut began: Vec<String> = Vec::new();
    for r in records {
        match r {
            Record::Begin { step, .. } if !began.contains(step) => began.push(step.clone()),
            Record::UndoDone { step, .. } => began.retain(|s| s != step),
            _ => {}
        }
    }
    began
}

/// Derive a run's report from its journal alone.
pub fn report(run_dir: &Path, records: &[Record], running_now: bool) -> Result<RunReport> {
    let Some(Record::Start { plan, .. }) = records.first() else {
        return Err(Error::input(
            Journal::path_in(run_dir),
            "journal does not start with a plan",
        ));
    };
    let mut steps: Vec<StepReport> = STEPS
        .iter()
        .map(|s| StepReport {
            name: s.to_string(),
            state: "pending".into(),
            took_ms: None,
        })
        .collect();
    let mut state: Option<String> = None;
    let mut error = None;
    let mut notes = Vec::new();
    let (mut down_start, mut down_end) = (None, None);
    for r in records {
        match r {
            Record::Begin { step, ts_ms } => {
                set_step(&mut steps, step, "running", None);
                if step == "stop-etcd" {
                    down_start = Some(*ts_ms);
                }
            }
            Record::Done {
                step,
                took_ms,
                ts_ms,
                data,
            } => {
                set_step(&mut steps, step, "done", Some(*took_ms));
                if step == "wait-healthy" {
                    down_end = Some(*ts_ms);
                }
                if let Some(n) = data.get("note").and_then(|n| n.as_str()) {
                    notes.push(n.to_string());
                }
            }
            Record::Failed { step, error: e, .. } => {
                set_step(&mut steps, step, "failed", None);
                error = Some(format!("{step}: {e}"));
            }
            Record::UndoDone { step, .. } => set_step(&mut steps, step, "undone", None),
            Record::State {
                state: s, reason, ..
            } => {
                state = Some(s.clone());
                match s.as_str() {
                    "failed" => error = reason.clone().or(error),
                    // A resumed run that completed has no error left to show.
                    "completed" => error = None,
                    "finalized" => notes.extend(reason.clone()),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let state = state.unwrap_or_else(|| {
        if running_now {
            "running".into()
        } else {
            "interrupted".into()
        }
    });
    Ok(RunReport {
        id: plan.id.clone(),
        from: plan.from.clone(),
        to: plan.to.clone(),
        state,
        steps,
        downtime_ms: match (down_start, down_end) {
            (Some(a), Some(b)) if b >= a => Some(b - a),
            _ => None,
        },
        identity: plan.identity.clone(),
        run_dir: run_dir.to_path_buf(),
        error,
        notes,
    })
}

fn set_step(steps: &mut [StepReport], name: &str, state: &str, took: Option<u64>) {
    if let Some(s) = steps.iter_mut().find(|s| s.name == name) {
        s.state = state.to_string();
        if took.is_some() {
            s.took_ms = took;
        }
    }
}

/// Every run dir under the state dir, oldest first (ids sort by time).
pub fn list_runs(state_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = runs_dir(state_dir);
    let mut runs: Vec<PathBuf> = match fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| Journal::path_in(p).is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("read", &dir, e)),
    };
    runs.sort();
    Ok(runs)
}

/// The states after which nothing is left to do but (optionally) finalize.
pub fn is_settled(state: &str) -> bool {
    matches!(state, "completed" | "rolled-back" | "finalized")
}

/// A new run id: UTC time to the second, sortable; `-2`, `-3`... when a run of the same
/// second exists (a quick retry after a refusal or a crash).
pub fn unique_id(state_dir: &Path) -> String {
    let base = crate::manifest::atomic::timestamp(std::time::SystemTime::now());
    let runs = runs_dir(state_dir);
    let mut id = base.clone();
    let mut n = 1;
    while runs.join(&id).exists() {
        n += 1;
        id = format!("{base}-{n}");
    }
    id
}

/// Options of a run, resolved from flags by the command.
pub struct RunOptions<'a> {
    pub manifest: PathBuf,
    pub state_dir: PathBuf,
    pub say: &'a dyn Fn(&str),
    /// Set by SIGINT/SIGTERM (see `Ctx::cancel`).
    pub cancel: Option<&'a std::sync::atomic::AtomicBool>,
    /// What the target's filesystem may be (issue 11).
    pub fs_policy: crate::datadir::target::FsPolicy,
}

/// `migrate apply`: preflight, then the steps; rolls back by itself on failure.
pub fn apply(
    host: &dyn Host,
    opts: &RunOptions,
    to: &Path,
    snapshot: bool,
    endpoint: &str,
) -> Result<Outcome> {
    let _lock = RunLock::acquire(&opts.state_dir)?;
    let id = unique_id(&opts.state_dir);
    let pre = preflight::run(
        host,
        &preflight::PreflightInput {
            manifest: &opts.manifest,
            state_dir: &opts.state_dir,
            to,
            endpoint,
            snapshot,
            id: id.clone(),
            fs_policy: opts.fs_policy, // issue 11
        },
    );
    // A refusal is one line on stderr; warnings matter only for a run that goes ahead.
    if pre.refusal.is_none() {
        for w in &pre.warnings {
            (opts.say)(&format!("warning: {w}"));
        }
    }
    let plan = match (pre.plan, pre.refusal) {
        (Some(plan), None) => plan,
        (_, Some(e)) => return Err(e),
        (None, None) => unreachable!("a preflight without plan has a refusal"),
    };
    let run = RunDir {
        dir: runs_dir(&opts.state_dir).join(&id),
    };
    let mut journal = Journal::create(&run.dir)?;
    journal.append(&Record::Start {
        ts_ms: now_ms(),
        plan: plan.clone(),
    })?;
    let mut ctx = Ctx {
        host,
        plan,
        run,
        journal,
        say: opts.say,
        cancel: opts.cancel,
    };
    let result = ctx.run_from(0);
    finish(&ctx.run.dir, result)
}

/// A run that got as far as having a journal: its report, and how it ended.
pub struct Outcome {
    pub report: RunReport,
    pub result: Result<()>,
}

fn finish(run_dir: &Path, result: Result<()>) -> Result<Outcome> {
    let records = Journal::read(run_dir)?;
    let report = report(run_dir, &records, false)?;
    Ok(Outcome { report, result })
}

/// The latest run, or the one named.
pub fn find_run(state_dir: &Path, id: Option<&str>) -> Result<PathBuf> {
    let runs = list_runs(state_dir)?;
    match id {
        Some(id) => runs
            .into_iter()
            .find(|r| r.file_name().is_some_and(|n| n == id))
            .ok_or_else(|| {
                Error::Usage(format!("no migration run {id} in {}", state_dir.display()))
            }),
        None => runs.into_iter().last().ok_or_else(|| {
            Error::Usage(format!(
                "no migration run in {}",
                runs_dir(state_dir).display()
            ))
        }),
    }
}

/// `migrate status`: the run's report; exit 5 when it needs attention.
pub fn status(state_dir: &Path, id: Option<&str>) -> Result<RunReport> {
    let run = find_run(state_dir, id)?;
    let records = Journal::read(&run)?;
    report(&run, &records, RunLock::held(state_dir))
}

fn open_ctx<'a>(
    host: &'a dyn Host,
    opts: &'a RunOptions,
    run_dir: PathBuf,
) -> Result<(Ctx<'a>, Vec<Record>)> {
    let records = Journal::read(&run_dir)?;
    let Some(Record::Start { plan, .. }) = records.first().cloned() else {
        return Err(Error::input(
            Journal::path_in(&run_dir),
            "journal does not start with a plan",
        ));
    };
    let journal = Journal::open_append(&run_dir)?;
    Ok((
        Ctx {
            host,
            plan,
            run: RunDir { dir: run_dir },
            journal,
            say: opts.say,
            cancel: opts.cancel,
        },
        records,
    ))
}

/// `migrate resume`: finish an interrupted run (re-running the step it was in).
pub fn resume(host: &dyn Host, opts: &RunOptions, id: Option<&str>) -> Result<Outcome> {
    let _lock = RunLock::acquire(&opts.state_dir)?;
    let run_dir = find_run(&opts.state_dir, id)?;
    let (mut ctx, records) = open_ctx(host, opts, run_dir)?;
    let current = report(&ctx.run.dir, &records, false)?;
    if !matches!(current.state.as_str(), "interrupted" | "failed") {
        return Err(Error::refused(
            format!("run {}", current.id),
            format!("it is {}: nothing to resume", current.state),
        ));
    }
    if records.iter().any(|r| matches!(r, Record::UndoDone { .. })) {
        return Err(Error::refused(
            format!("run {}", current.id),
            "it was partly rolled back; run `etcdops migrate rollback` to finish that",
        ));
    }
    let next = current
        .steps
        .iter()
        .position(|s| s.state != "done")
        .unwrap_or(STEPS.len());
    (ctx.say)(&format!(
        "resuming run {} at step {}",
        current.id,
        STEPS.get(next).unwrap_or(&"end")
    ));
    // issue 11: the member may be down from stop-etcd until wait-healthy: hold the guard.
    if (3..=8).contains(&next) {
        rehold_guard(host, &ctx)?;
    }
    let result = ctx.run_from(next);
    finish(&ctx.run.dir, result)
}

/// issue 11: re-take the guard for a run whose member may be down. Another run holding it
/// refuses; not reaching etcd at all (this member down, discovery knowing only its URL) does
/// not: finishing the run is what brings the member back.
fn rehold_guard(host: &dyn Host, ctx: &Ctx) -> Result<()> {
    match host.hold_guard(&ctx.plan.id) {
        Err(e @ Error::Unreachable { .. }) => {
            (ctx.say)(&format!(
                "warning: the cluster-wide guard could not be taken ({}); going on",
                e.one_line()
            ));
            Ok(())
        }
        other => other,
    }
}

/// `migrate rollback`: return to the original state from wherever the run stopped.
pub fn rollback(host: &dyn Host, opts: &RunOptions, id: Option<&str>) -> Result<Outcome> {
    let _lock = RunLock::acquire(&opts.state_dir)?;
    let run_dir = find_run(&opts.state_dir, id)?;
    let (mut ctx, records) = open_ctx(host, opts, run_dir)?;
    let current = report(&ctx.run.dir, &records, false)?;
    if current.state == "completed" {
        return Err(Error::refused(
            format!("run {}", current.id),
            format!(
                "it completed: etcd runs on {} and going back to {} would break raft (its log is \
                 ahead); to move again, migrate to a new empty dir",
                current.to.display(),
                current.from.display()
            ),
        ));
    }
    if !matches!(current.state.as_str(), "interrupted" | "failed") {
        return Err(Error::refused(
            format!("run {}", current.id),
            format!("it is {}: nothing to roll back", current.state),
        ));
    }
    let began = began_steps(&records);
    if began.iter().any(|s| s == "stop-etcd") {
        rehold_guard(host, &ctx)?; // issue 11: the member is down until the undo
    }
    let result = match ctx.rollback(&began) {
        Ok(()) => ctx.set_state("rolled-back", Some("rolled back by the operator".into())),
        // The raft rule: the message already says to resume instead.
        Err(e @ Error::Attention(_)) => {
            let _ = ctx.set_state("failed", Some(e.one_line()));
            Err(e)
        }
        Err(e) => {
            let _ = ctx.set_state("failed", Some(e.one_line()));
            Err(Error::Attention(format!(
                "rollback of run {} failed: {}; fix the cause and run `etcdops migrate rollback` again",
                current.id,
                e.one_line()
            )))
        }
    };
    finish(&ctx.run.dir, result)
}

/// `migrate finalize`: after the operator's verification window, fence the old path (and
/// with `remove_old`, delete the old data). Without `remove_old` the old data is moved aside
/// to `<old>.etcdops-old-<id>` so that the fence can take its place.
pub fn finalize(opts: &RunOptions, id: Option<&str>, remove_old: bool) -> Result<RunReport> {
    let _lock = RunLock::acquire(&opts.state_dir)?;
    let run_dir = find_run(&opts.state_dir, id)?;
    let records = Journal::read(&run_dir)?;
    let current = report(&run_dir, &records, false)?;
    if current.state != "completed" {
        return Err(Error::refused(
            format!("run {}", current.id),
            format!(
                "it is {}; only a completed migration can be finalized",
                current.state
            ),
        ));
    }
    let Some(Record::Start { plan, .. }) = records.first() else {
        unreachable!("report() checked the first record");
    };
    // The manifest in force must point at the new path, or the fence would break etcd.
    let pod = crate::manifest::StaticPod::load(&plan.manifest)?;
    let dv = pod.data_volume()?;
    if dv.data_host_path != plan.to {
        return Err(Error::refused(
            plan.manifest.display().to_string(),
            format!(
                "the manifest's data path is {}, not {}: was it reverted (kubeadm upgrade)? \
                 Not fencing",
                dv.data_host_path.display(),
                plan.to.display()
            ),
        ));
    }
    let old = &plan.from;
    let mut journal = Journal::open_append(&run_dir)?;
    let aside = PathBuf::from(format!("{}.etcdops-old-{}", old.display(), plan.id));
    if old.is_dir() {
        if remove_old {
            fs::remove_dir_all(old).map_err(|e| Error::io("remove old data", old, e))?;
        } else {
            fs::rename(old, &aside).map_err(|e| Error::io("move old data aside", old, e))?;
        }
    }
    let fence = format!(
        "etcd data moved to {} by etcdops run {} ({}).\n\
         This file stands at the old data path on purpose: a manifest that still points here \
         fails kubelet's hostPath check (DirectoryOrCreate refuses a file) instead of starting \
         an empty etcd member.\n\
         Fix the manifest (etcdops manifest set-data-path {}) and kubeadm-config \
         (ClusterConfiguration.etcd.local.dataDir).\n",
        plan.to.display(),
        plan.id,
        if remove_old {
            "old data removed".to_string()
        } else {
            format!("old data kept at {}", aside.display())
        },
        plan.to.display()
    );
    if !old.exists() {
        crate::node::write_atomic(old, fence.as_bytes(), 0o444, None)?;
    }
    journal.append(&Record::State {
        ts_ms: now_ms(),
        state: "finalized".into(),
        reason: Some(if remove_old {
            "old data removed, fence written".into()
        } else {
            format!("old data moved to {}, fence written", aside.display())
        }),
    })?;
    let records = Journal::read(&run_dir)?;
    report(&run_dir, &records, false)
}
