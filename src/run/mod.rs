//! The saga engine that every node-changing run (migrate, restore, rejoin) runs on.
//!
//! A run is a typed list of steps (`Saga::Step`, an enum serialized kebab-case), each with a
//! `do` and an `undo`, executed by one [`Engine`]. The engine keeps an in-memory
//! [`log::RunLog`] (records plus the state derived from them, every transition checked),
//! persists each record (fsync) *before* acting on it, and never re-reads its own journal to
//! learn where it is. Steps touch the node only through the [`host::Host`] seam, so a fake
//! host unit-tests the engine and a fault can be injected at any effect.
//!
//! Policy, once for every kind: a failure before the first node-changing step ends
//! `rolled-back` with nothing changed; a later failure undoes every begun step newest first;
//! the saga's undo of a step past the raft rule refuses (exit 5) once etcd has run on new
//! data, and the run ends `failed` for `resume` to finish. A first SIGINT/SIGTERM stops the
//! run before the raft rule (and rolls back) and lets it finish after; a second kills.

pub mod fault;
pub mod host;
pub mod journal;
pub mod lock;
pub mod log;
pub mod report;

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use host::Identity;
use journal::Journal;
pub use lock::RunLock;
use log::{Record, RunLog};
pub use report::{RunReport, StepReport};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Which saga wrote a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunKind {
    #[default]
    Migrate,
    Restore,
    Rejoin,
}

impl RunKind {
    pub fn name(self) -> &'static str {
        match self {
            RunKind::Migrate => "migrate",
            RunKind::Restore => "restore",
            RunKind::Rejoin => "rejoin",
        }
    }

    /// The noun in messages ("migration step copy failed").
    pub fn noun(self) -> &'static str {
        match self {
            RunKind::Migrate => "migration",
            RunKind::Restore => "restore",
            RunKind::Rejoin => "rejoin",
        }
    }

    /// The command that drives runs of this kind (`etcdops migrate resume`).
    pub fn command(self) -> &'static str {
        match self {
            RunKind::Migrate => "etcdops migrate",
            RunKind::Restore => "etcdops restore",
            RunKind::Rejoin => "etcdops member rejoin",
        }
    }
}

/// A run's state. `running` and `interrupted` are derived (a process holds the run's lock,
/// or none does and no settled state was recorded), never recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Completed,
    RolledBack,
    Failed,
    Interrupted,
    Finalized,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::RolledBack => "rolled-back",
            RunState::Failed => "failed",
            RunState::Interrupted => "interrupted",
            RunState::Finalized => "finalized",
        }
    }

    /// Nothing is left to do but (optionally) finalize.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            RunState::Completed | RunState::RolledBack | RunState::Finalized
        )
    }

    /// `resume` or `rollback` has work to do.
    pub fn needs_attention(self) -> bool {
        matches!(self, RunState::Failed | RunState::Interrupted)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
    Undoing,
    Undone,
}

impl StepState {
    pub fn name(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Done => "done",
            StepState::Failed => "failed",
            StepState::Undoing => "undoing",
            StepState::Undone => "undone",
        }
    }
}

/// A saga's step enum: its order, its names, and the predicates the engine's policy needs.
pub trait StepKind: Copy + Eq + Debug + Serialize + DeserializeOwned + 'static {
    /// Every step, in execution order.
    const ALL: &'static [Self];
    /// The kebab-case name (equal to the serialized form).
    fn name(self) -> &'static str;
    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|s| *s == self)
            .expect("a step is in ALL")
    }
    /// Whether undo does something.
    fn has_undo(self) -> bool;
    /// A failure at or after this step leaves the node changed: the run rolls back.
    fn changes_node(self) -> bool;
    /// From this step on etcd may run on the new data: a signal no longer stops the run, and
    /// the saga's undo must prove etcd has not run there before going back.
    fn past_raft_rule(self) -> bool;
    /// While this step runs, or after it and before the next one, this member may be down:
    /// the cluster-wide guard (one member down for etcdops at a time) is held.
    fn member_down(self) -> bool {
        false
    }
    /// Downtime is measured from this step's begin...
    fn downtime_starts(self) -> bool {
        false
    }
    /// ...to this step's done.
    fn downtime_ends(self) -> bool {
        false
    }
}

/// What a run's plan must tell the report.
pub trait RunPlan: Clone + Debug + Serialize + DeserializeOwned {
    fn id(&self) -> &str;
    /// What the run starts from and what it makes (data dirs, archive).
    fn from(&self) -> &Path;
    fn to(&self) -> &Path;
    fn identity(&self) -> Option<&Identity>;
}

/// What a step sees of its run besides the host: the plan, the run dir, a voice.
pub struct RunCtx<'a, P> {
    pub plan: &'a P,
    pub dir: &'a Path,
    pub say: &'a dyn Fn(&str),
}

/// Where a run keeps its files (the same names for every kind of run).
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    /// The files of the run `run` acts for.
    pub fn of<P>(run: &RunCtx<'_, P>) -> RunDir {
        RunDir {
            dir: run.dir.to_path_buf(),
        }
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

/// One kind of node-changing run.
pub trait Saga {
    type Step: StepKind;
    type Plan: RunPlan;
    const KIND: RunKind;
    /// Do one step (idempotent: it may be re-run after a crash inside it). The value is
    /// recorded with the step's `done` (a `note` string there reaches the report).
    fn run_step(&self, run: &RunCtx<Self::Plan>, step: Self::Step) -> Result<serde_json::Value>;
    /// Undo one step (idempotent). `Error::Attention` means "going back is unsafe" (the raft
    /// rule): the run stops `failed` and the message says what to do.
    fn undo_step(&self, run: &RunCtx<Self::Plan>, step: Self::Step) -> Result<()>;
    /// Take (or, for this run, take over) the cluster-wide guard before this member goes
    /// down; refused (exit 4, naming the holder) while another run holds it.
    fn hold_guard(&self, _run: &RunCtx<Self::Plan>) -> Result<()> {
        Ok(())
    }
    /// Release the guard once the member is back.
    fn release_guard(&self) {}
    /// After a rollback that finished: what the operator can rely on now.
    fn rolled_back_state(&self, run: &RunCtx<Self::Plan>) -> String;
    /// After a rollback that failed: where things are, so the operator can act.
    fn rollback_failed_state(&self, run: &RunCtx<Self::Plan>) -> String;
}

/// SIGINT/SIGTERM as the engine and the host's waits see it. The first signal sets the
/// flag (the handler then resets, so a second one kills). Before the raft rule the run
/// stops and rolls back; while `finishing` (past the raft rule, or rolling back because of
/// that signal) waits go on and say what they wait for.
pub struct Cancel {
    flag: &'static AtomicBool,
    finishing: AtomicBool,
    told: AtomicBool,
}

impl Cancel {
    pub fn new(flag: &'static AtomicBool) -> Cancel {
        Cancel {
            flag,
            finishing: AtomicBool::new(false),
            told: AtomicBool::new(false),
        }
    }

    /// The raw flag, for work that stops on any signal (the copy).
    pub fn flag(&self) -> &'static AtomicBool {
        self.flag
    }

    pub fn signalled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// A signal arrived and the current work should stop.
    pub fn requested(&self) -> bool {
        self.signalled() && !self.finishing.load(Ordering::SeqCst)
    }

    pub fn set_finishing(&self, on: bool) {
        self.finishing.store(on, Ordering::SeqCst);
    }

    /// For a wait that goes on despite a signal: say so once.
    pub fn tell_once(&self, say: &dyn Fn(&str), what: &str) {
        if self.signalled()
            && self.finishing.load(Ordering::SeqCst)
            && !self.told.swap(true, Ordering::SeqCst)
        {
            say(&format!(
                "signal received: finishing safely, still waiting for {what} (a second signal \
                 stops etcdops; `etcdops ... status` then says where the run stands)"
            ));
        }
    }
}

/// Where a run keeps its files: `<state-dir>/runs/<id>/`.
pub fn runs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

/// Every run dir under the state dir, oldest first (ids sort by time).
pub fn list_runs(state_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = runs_dir(state_dir);
    let mut runs: Vec<PathBuf> = match std::fs::read_dir(&dir) {
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

/// A new run id: UTC time to the second, sortable; `-2`, `-3`... when a run of the same
/// second exists (a quick retry after a refusal or a crash).
pub fn unique_id(state_dir: &Path) -> String {
    let base = crate::manifest::atomic::timestamp(SystemTime::now());
    let runs = runs_dir(state_dir);
    let mut id = base.clone();
    let mut n = 1;
    while runs.join(&id).exists() {
        n += 1;
        id = format!("{base}-{n}");
    }
    id
}

/// The run named by `id`, or the latest.
pub fn find_run(state_dir: &Path, id: Option<&str>) -> Result<PathBuf> {
    let runs = list_runs(state_dir)?;
    match id {
        Some(id) => runs
            .into_iter()
            .find(|r| r.file_name().is_some_and(|n| n == id))
            .ok_or_else(|| Error::Usage(format!("no run {id} in {}", state_dir.display()))),
        None => runs
            .into_iter()
            .last()
            .ok_or_else(|| Error::Usage(format!("no run in {}", runs_dir(state_dir).display()))),
    }
}

/// Read a run's journal into its typed log; an illegal journal is refused (exit 2).
pub fn load<G: Saga>(dir: &Path) -> Result<RunLog<G::Step, G::Plan>> {
    let records: Vec<Record<G::Step, G::Plan>> = Journal::read(dir)?;
    RunLog::replay(records).map_err(|e| Error::input(Journal::path_in(dir), e))
}

/// A run that got as far as having a journal: its report, and how it ended.
pub struct Outcome {
    pub report: RunReport,
    pub result: Result<()>,
}

impl Outcome {
    pub fn of<G: Saga>(engine: &Engine<G>, result: Result<()>) -> Outcome {
        Outcome {
            report: engine.report(),
            result,
        }
    }
}

/// `resume` or `rollback` (`act`) of the run named by `id`, or the latest, of saga `G`:
/// under the node's run lock; a refusal (nothing to do) is returned as the error, anything
/// else as the run's report with its result. One body for every kind.
pub fn operate<G: Saga>(
    saga: &G,
    state_dir: &Path,
    id: Option<&str>,
    say: &dyn Fn(&str),
    cancel: Option<&Cancel>,
    act: fn(&mut Engine<'_, G>) -> Result<()>,
) -> Result<Outcome> {
    let _lock = RunLock::acquire(state_dir)?;
    let dir = find_run(state_dir, id)?;
    let mut engine = Engine::open(saga, dir, say, cancel)?;
    let result = act(&mut engine);
    if let Err(e @ Error::Refused { .. }) = result {
        return Err(e);
    }
    Ok(Outcome::of(&engine, result))
}

/// A run being executed: the saga, its in-memory log, its open journal.
pub struct Engine<'a, G: Saga> {
    saga: &'a G,
    log: RunLog<G::Step, G::Plan>,
    journal: Journal,
    dir: PathBuf,
    say: &'a dyn Fn(&str),
    cancel: Option<&'a Cancel>,
}

impl<'a, G: Saga> Engine<'a, G> {
    /// A new run: its dir and journal, with the start record durable.
    pub fn create(
        saga: &'a G,
        dir: PathBuf,
        plan: G::Plan,
        say: &'a dyn Fn(&str),
        cancel: Option<&'a Cancel>,
    ) -> Result<Self> {
        let mut journal = Journal::create(&dir)?;
        let (log, start) = RunLog::new(G::KIND, plan);
        journal.append(&start, &start.point())?;
        Ok(Engine {
            saga,
            log,
            journal,
            dir,
            say,
            cancel,
        })
    }

    /// An existing run, from its journal (the only time a journal is read).
    pub fn open(
        saga: &'a G,
        dir: PathBuf,
        say: &'a dyn Fn(&str),
        cancel: Option<&'a Cancel>,
    ) -> Result<Self> {
        let log = load::<G>(&dir)?;
        if log.kind != G::KIND {
            return Err(Error::Usage(format!(
                "run {} is a {} run, not a {} run: use `{}`",
                dir.display(),
                log.kind.name(),
                G::KIND.name(),
                log.kind.command()
            )));
        }
        let journal = Journal::open_append(&dir)?;
        Ok(Engine {
            saga,
            log,
            journal,
            dir,
            say,
            cancel,
        })
    }

    pub fn log(&self) -> &RunLog<G::Step, G::Plan> {
        &self.log
    }

    pub fn plan(&self) -> &G::Plan {
        &self.log.plan
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn report(&self) -> RunReport {
        report::of(&self.log, &self.dir, false)
    }

    /// Check, persist (fsync), then apply: the record is durable before its effect.
    fn record(&mut self, r: Record<G::Step, G::Plan>) -> Result<()> {
        self.log.check(&r).map_err(|e| {
            Error::failed(
                format!("record {} in {}", r.point(), self.dir.display()),
                format!("illegal transition: {e}"),
            )
        })?;
        self.journal.append(&r, &r.point())?;
        self.log.apply(r);
        Ok(())
    }

    pub fn set_state(&mut self, state: RunState, reason: Option<String>) -> Result<()> {
        self.record(Record::State {
            ts_ms: now_ms(),
            state,
            reason,
        })
    }

    fn what(&self, step: G::Step) -> String {
        format!("{} step {}", G::KIND.noun(), step.name())
    }

    /// Run the steps from the first one not done; the failing step with its error, and
    /// whether it had begun.
    fn forward(&mut self) -> std::result::Result<(), (G::Step, Error, bool)> {
        let all = G::Step::ALL;
        while let Some(step) = self.log.next_step() {
            let i = step.index();
            if let Some(c) = self.cancel {
                if step.past_raft_rule() {
                    // Going back is unsafe from here: finish, and say so if a signal came.
                    c.set_finishing(true);
                    c.tell_once(
                        self.say,
                        &format!("the remaining steps from {}", step.name()),
                    );
                } else if c.requested() {
                    return Err((
                        step,
                        Error::failed(
                            format!("{} before step {}", G::KIND.noun(), step.name()),
                            "interrupted by the operator (SIGINT/SIGTERM)",
                        ),
                        false,
                    ));
                }
            }
            if step.member_down() {
                let ctx = RunCtx {
                    plan: &self.log.plan,
                    dir: &self.dir,
                    say: self.say,
                };
                if let Err(e) = self.saga.hold_guard(&ctx) {
                    return Err((step, e, false));
                }
            }
            (self.say)(&format!("[{}/{}] {} ...", i + 1, all.len(), step.name()));
            self.record(Record::Begin {
                ts_ms: now_ms(),
                step,
            })
            .map_err(|e| (step, e, false))?;
            let start = Instant::now();
            let ctx = RunCtx {
                plan: &self.log.plan,
                dir: &self.dir,
                say: self.say,
            };
            match self.saga.run_step(&ctx, step) {
                Ok(data) => {
                    let took_ms = start.elapsed().as_millis() as u64;
                    (self.say)(&format!(
                        "[{}/{}] {} done ({})",
                        i + 1,
                        all.len(),
                        step.name(),
                        crate::output::millis(took_ms)
                    ));
                    self.record(Record::Done {
                        ts_ms: now_ms(),
                        step,
                        took_ms,
                        data,
                    })
                    .map_err(|e| (step, e, true))?;
                    let next_down = self.log.next_step().is_some_and(|n| n.member_down());
                    if step.member_down() && !next_down {
                        self.saga.release_guard();
                    }
                }
                Err(e) => {
                    let _ = self.record(Record::Failed {
                        ts_ms: now_ms(),
                        step,
                        error: e.one_line(),
                    });
                    return Err((step, e, true));
                }
            }
        }
        Ok(())
    }

    /// Undo every step whose effects may be on the node, newest first. Stops at the first
    /// undo that fails.
    fn undo_all(&mut self) -> Result<()> {
        let steps = self.log.to_undo();
        if steps.iter().any(|s| s.member_down()) {
            let ctx = RunCtx {
                plan: &self.log.plan,
                dir: &self.dir,
                say: self.say,
            };
            self.saga.hold_guard(&ctx)?;
        }
        let undone = self.undo_steps(steps);
        // Released when the undos end, whatever their outcome: a failed undo leaves the
        // member as a later `rollback` or `resume` finds it, and that run takes the guard
        // over again.
        self.saga.release_guard();
        undone
    }

    fn undo_steps(&mut self, steps: Vec<G::Step>) -> Result<()> {
        for step in steps {
            self.record(Record::UndoBegin {
                ts_ms: now_ms(),
                step,
            })?;
            (self.say)(&format!("undo {} ...", step.name()));
            let ctx = RunCtx {
                plan: &self.log.plan,
                dir: &self.dir,
                say: self.say,
            };
            self.saga.undo_step(&ctx, step)?;
            self.record(Record::UndoDone {
                ts_ms: now_ms(),
                step,
            })?;
        }
        Ok(())
    }

    /// Run forward from where the log stands; on failure roll back by the engine's policy.
    pub fn run(&mut self) -> Result<()> {
        let Err((step, err, began)) = self.forward() else {
            self.set_state(RunState::Completed, None)?;
            return Ok(());
        };
        let what = self.what(step);
        // Refused before the step began (the guard is held elsewhere, a signal came): the
        // member was not touched, so once what earlier steps left is undone (a pre-copy's
        // staging dir), the refusal keeps its own exit code.
        let refused_before = !began;
        if refused_before && self.log.to_undo().is_empty() {
            self.set_state(RunState::RolledBack, Some(err.one_line()))?;
            return Err(err);
        }
        if !step.changes_node() && self.log.to_undo().is_empty() {
            self.set_state(RunState::RolledBack, Some(err.one_line()))?;
            return Err(Error::failed(
                what,
                format!("{}; nothing on the node was changed", err.one_line()),
            ));
        }
        (self.say)(&format!(
            "step {} failed: {}; rolling back",
            step.name(),
            err.one_line()
        ));
        // The signal that stopped the run is the reason for this rollback, not a request to
        // stop it: its waits go on (and say so); a second signal kills.
        if let Some(c) = self.cancel {
            c.set_finishing(true);
        }
        match self.undo_all() {
            Ok(()) => {
                self.set_state(RunState::RolledBack, Some(err.one_line()))?;
                if refused_before {
                    return Err(err);
                }
                let ctx = RunCtx {
                    plan: &self.log.plan,
                    dir: &self.dir,
                    say: self.say,
                };
                Err(Error::failed(
                    what,
                    format!(
                        "{}; rolled back: {}; journal in {}",
                        err.one_line(),
                        self.saga.rolled_back_state(&ctx),
                        self.dir.display()
                    ),
                ))
            }
            Err(rb @ Error::Attention(_)) => {
                let _ = self.set_state(RunState::Failed, Some(rb.one_line()));
                Err(Error::Attention(format!(
                    "{what} failed ({}); {}",
                    err.one_line(),
                    rb.one_line()
                )))
            }
            Err(rb) => {
                let _ = self.set_state(RunState::Failed, Some(rb.one_line()));
                let ctx = RunCtx {
                    plan: &self.log.plan,
                    dir: &self.dir,
                    say: self.say,
                };
                Err(Error::Attention(format!(
                    "{what} failed ({}) and the rollback failed too: {}; {}; run `{} status`, \
                     fix the cause, then `{} rollback`",
                    err.one_line(),
                    rb.one_line(),
                    self.saga.rollback_failed_state(&ctx),
                    G::KIND.command(),
                    G::KIND.command()
                )))
            }
        }
    }

    /// `resume`: finish an interrupted or failed run, re-running the step it was in.
    pub fn resume(&mut self) -> Result<()> {
        let state = self.log.state(false);
        let id = self.log.plan.id().to_string();
        if !state.needs_attention() {
            return Err(Error::refused(
                format!("run {id}"),
                format!("it is {}: nothing to resume", state.name()),
            ));
        }
        if self.log.partly_undone() {
            return Err(Error::refused(
                format!("run {id}"),
                format!(
                    "it was partly rolled back; run `{} rollback` to finish that",
                    G::KIND.command()
                ),
            ));
        }
        (self.say)(&format!(
            "resuming run {id} at step {}",
            self.log.next_step().map_or("end", |s| s.name())
        ));
        self.run()
    }

    /// `rollback`: return to the state before the run, from wherever it stopped.
    pub fn rollback(&mut self) -> Result<()> {
        let state = self.log.state(false);
        let id = self.log.plan.id().to_string();
        if matches!(state, RunState::Completed | RunState::Finalized) {
            return Err(Error::refused(
                format!("run {id}"),
                format!(
                    "it {}: etcd runs on {} and going back to {} would break raft (its log is \
                     ahead); to move again, start a new run",
                    state.name(),
                    self.log.plan.to().display(),
                    self.log.plan.from().display()
                ),
            ));
        }
        if !state.needs_attention() {
            return Err(Error::refused(
                format!("run {id}"),
                format!("it is {}: nothing to roll back", state.name()),
            ));
        }
        match self.undo_all() {
            Ok(()) => self.set_state(
                RunState::RolledBack,
                Some("rolled back by the operator".into()),
            ),
            // The raft rule: the message already says to resume instead.
            Err(e @ Error::Attention(_)) => {
                let _ = self.set_state(RunState::Failed, Some(e.one_line()));
                Err(e)
            }
            Err(e) => {
                let _ = self.set_state(RunState::Failed, Some(e.one_line()));
                Err(Error::Attention(format!(
                    "rollback of run {id} failed: {}; fix the cause and run `{} rollback` again",
                    e.one_line(),
                    G::KIND.command()
                )))
            }
        }
    }

    /// Record that a completed run was finalized.
    pub fn finalized(&mut self, reason: String) -> Result<()> {
        self.set_state(RunState::Finalized, Some(reason))
    }
}

#[cfg(test)]
mod tests;
