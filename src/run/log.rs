//! The run log: a run's typed journal records and the state derived from them, in memory.
//!
//! Every record passes through [`RunLog::check`] before it is persisted and applied, so an
//! illegal transition (a `done` for a step that never began, an undo out of order, a
//! `completed` with steps pending) is refused where it would be written, and a journal that
//! contains one is refused where it is read — as steno refuses an illegal saga log. The
//! engine keeps its `RunLog` in memory and never re-reads its own journal to learn where it is.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{RunKind, RunState, StepKind, StepState};

/// One journal record. `S` is the saga's step enum (serialized kebab-case, so journals keep
/// the step names they always had), `P` its plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[serde(bound(
    serialize = "S: Serialize, P: Serialize",
    deserialize = "S: DeserializeOwned, P: DeserializeOwned"
))]
pub enum Record<S, P> {
    /// The run's plan: what changes where, recorded before anything changes.
    Start {
        ts_ms: u64,
        /// Journals written before there were several kinds hold migrations.
        #[serde(default)]
        kind: RunKind,
        plan: P,
    },
    Begin {
        ts_ms: u64,
        step: S,
    },
    Done {
        ts_ms: u64,
        step: S,
        took_ms: u64,
        #[serde(default)]
        data: serde_json::Value,
    },
    Failed {
        ts_ms: u64,
        step: S,
        error: String,
    },
    UndoBegin {
        ts_ms: u64,
        step: S,
    },
    UndoDone {
        ts_ms: u64,
        step: S,
    },
    /// A settled (or operator-relevant) state: completed, rolled-back, failed, finalized.
    State {
        ts_ms: u64,
        state: RunState,
        #[serde(default)]
        reason: Option<String>,
    },
}

impl<S: StepKind, P> Record<S, P> {
    /// `step:event`, the name the crash hooks and error messages use.
    pub fn point(&self) -> String {
        match self {
            Record::Start { .. } => "start".into(),
            Record::Begin { step, .. } => format!("{}:begin", step.name()),
            Record::Done { step, .. } => format!("{}:done", step.name()),
            Record::Failed { step, .. } => format!("{}:failed", step.name()),
            Record::UndoBegin { step, .. } => format!("{}:undo-begin", step.name()),
            Record::UndoDone { step, .. } => format!("{}:undo-done", step.name()),
            Record::State { state, .. } => format!("state:{}", state.name()),
        }
    }
}

/// A run's records and what they add up to.
#[derive(Debug, Clone)]
pub struct RunLog<S: StepKind, P> {
    pub kind: RunKind,
    pub plan: P,
    records: Vec<Record<S, P>>,
    /// Per step of `S::ALL`, in order.
    steps: Vec<StepState>,
    took_ms: Vec<Option<u64>>,
    /// The last `state` record, if any.
    settled: Option<RunState>,
}

impl<S: StepKind, P: Clone> RunLog<S, P> {
    /// A new log from its start record.
    pub fn new(kind: RunKind, plan: P) -> (RunLog<S, P>, Record<S, P>) {
        let start = Record::Start {
            ts_ms: super::now_ms(),
            kind,
            plan: plan.clone(),
        };
        let log = RunLog {
            kind,
            plan,
            records: vec![start.clone()],
            steps: vec![StepState::Pending; S::ALL.len()],
            took_ms: vec![None; S::ALL.len()],
            settled: None,
        };
        (log, start)
    }

    /// Rebuild a log from a journal's records, checking every transition.
    pub fn replay(records: Vec<Record<S, P>>) -> Result<RunLog<S, P>, String> {
        let mut it = records.into_iter();
        let Some(start @ Record::Start { .. }) = it.next() else {
            return Err("the journal does not start with a plan".into());
        };
        let Record::Start { kind, plan, .. } = &start else {
            unreachable!("matched above")
        };
        let (mut log, _) = RunLog::new(*kind, plan.clone());
        log.records = vec![start];
        for (i, r) in it.enumerate() {
            log.check(&r)
                .map_err(|e| format!("record {} ({}): {e}", i + 2, r.point()))?;
            log.apply(r);
        }
        Ok(log)
    }

    pub fn records(&self) -> &[Record<S, P>] {
        &self.records
    }

    pub fn step_state(&self, step: S) -> StepState {
        self.steps[step.index()]
    }

    pub fn took_ms(&self, step: S) -> Option<u64> {
        self.took_ms[step.index()]
    }

    /// The last settled state recorded, if any.
    pub fn settled(&self) -> Option<RunState> {
        self.settled
    }

    /// The run's state: the last recorded one, else running (a process holds the run) or
    /// interrupted (nobody does: it died).
    pub fn state(&self, running_now: bool) -> RunState {
        match self.settled {
            Some(s) => s,
            None if running_now => RunState::Running,
            None => RunState::Interrupted,
        }
    }

    /// The first step not done: where a resume goes on. `None` when every step is done.
    pub fn next_step(&self) -> Option<S> {
        S::ALL
            .iter()
            .copied()
            .find(|s| self.step_state(*s) != StepState::Done)
    }

    /// Steps whose effects may be on the node: begun and not undone, newest first.
    pub fn to_undo(&self) -> Vec<S> {
        S::ALL
            .iter()
            .rev()
            .copied()
            .filter(|s| {
                s.has_undo()
                    && matches!(
                        self.step_state(*s),
                        StepState::Running
                            | StepState::Done
                            | StepState::Failed
                            | StepState::Undoing
                    )
            })
            .collect()
    }

    /// Whether any undo has completed (the run was partly rolled back).
    pub fn partly_undone(&self) -> bool {
        self.steps.contains(&StepState::Undone)
    }

    /// Whether a step at or past the raft rule has begun (etcd may have run on new data).
    pub fn past_raft_rule(&self) -> bool {
        S::ALL
            .iter()
            .any(|s| s.past_raft_rule() && self.step_state(*s) != StepState::Pending)
    }

    /// Is `r` a legal next record? The one place where transitions are judged.
    pub fn check(&self, r: &Record<S, P>) -> Result<(), String> {
        // Once an undo has completed, the run can only go back. An undo that began and did
        // not complete (refused by the raft rule, failed, killed) changed nothing for sure,
        // so its step may be re-run forward (steps are idempotent).
        let undone = self.steps.contains(&StepState::Undone);
        let finished = matches!(
            self.settled,
            Some(RunState::Completed | RunState::RolledBack | RunState::Finalized)
        );
        match r {
            Record::Start { .. } => Err("a second start record".into()),
            Record::Begin { step, .. } => {
                if finished {
                    return Err(format!("the run is already {}", self.settled_name()));
                }
                if undone {
                    return Err("a step begins after the rollback undid one".into());
                }
                // Every earlier step must be done; this one pending or re-run after a crash
                // or failure (steps are idempotent).
                if let Some(prev) = S::ALL[..step.index()]
                    .iter()
                    .find(|p| self.step_state(**p) != StepState::Done)
                {
                    return Err(format!(
                        "{} begins while the earlier step {} is {}",
                        step.name(),
                        prev.name(),
                        self.step_state(*prev).name()
                    ));
                }
                match self.step_state(*step) {
                    StepState::Pending
                    | StepState::Running
                    | StepState::Failed
                    | StepState::Undoing => Ok(()),
                    other => Err(format!("{} is already {}", step.name(), other.name())),
                }
            }
            Record::Done { step, .. } | Record::Failed { step, .. } => {
                match self.step_state(*step) {
                    StepState::Running => Ok(()),
                    other => Err(format!("{} ends while it is {}", step.name(), other.name())),
                }
            }
            Record::UndoBegin { step, .. } => {
                if finished {
                    return Err(format!("the run is already {}", self.settled_name()));
                }
                if !step.has_undo() {
                    return Err(format!("{} has no undo", step.name()));
                }
                // Undo runs newest first: no later step may still have effects.
                if let Some(later) = self
                    .to_undo()
                    .into_iter()
                    .find(|s| s.index() > step.index())
                {
                    return Err(format!(
                        "undo of {} while the later step {} is not undone",
                        step.name(),
                        later.name()
                    ));
                }
                match self.step_state(*step) {
                    StepState::Running
                    | StepState::Done
                    | StepState::Failed
                    | StepState::Undoing => Ok(()),
                    other => Err(format!(
                        "undo of {} while it is {}",
                        step.name(),
                        other.name()
                    )),
                }
            }
            Record::UndoDone { step, .. } => match self.step_state(*step) {
                StepState::Undoing => Ok(()),
                other => Err(format!(
                    "undo of {} ends while it is {}",
                    step.name(),
                    other.name()
                )),
            },
            Record::State { state, .. } => match state {
                RunState::Completed if self.next_step().is_some() => Err(format!(
                    "completed while {} is not done",
                    self.next_step().map_or("", |s| s.name())
                )),
                RunState::RolledBack if !self.to_undo().is_empty() => Err(format!(
                    "rolled back while {} is not undone",
                    self.to_undo()[0].name()
                )),
                RunState::Finalized if self.settled != Some(RunState::Completed) => {
                    Err("finalized before it completed".into())
                }
                RunState::Running | RunState::Interrupted => {
                    Err(format!("{} is derived, never recorded", state.name()))
                }
                _ if finished && *state != RunState::Finalized => {
                    Err(format!("the run is already {}", self.settled_name()))
                }
                _ => Ok(()),
            },
        }
    }

    fn settled_name(&self) -> &'static str {
        self.settled.map_or("unsettled", |s| s.name())
    }

    /// Apply a record that passed `check`.
    pub fn apply(&mut self, r: Record<S, P>) {
        match &r {
            Record::Start { .. } => {}
            Record::Begin { step, .. } => {
                self.steps[step.index()] = StepState::Running;
                // A re-run after a failure or crash: the run is live again.
                self.settled = None;
            }
            Record::Done { step, took_ms, .. } => {
                self.steps[step.index()] = StepState::Done;
                self.took_ms[step.index()] = Some(*took_ms);
            }
            Record::Failed { step, .. } => self.steps[step.index()] = StepState::Failed,
            Record::UndoBegin { step, .. } => {
                self.steps[step.index()] = StepState::Undoing;
                self.settled = None;
            }
            Record::UndoDone { step, .. } => self.steps[step.index()] = StepState::Undone,
            Record::State { state, .. } => self.settled = Some(*state),
        }
        self.records.push(r);
    }
}
