//! A run's report (`migrate|restore|rejoin apply|resume|rollback|status`), derived from its
//! in-memory log. JSON field names are DESIGN.md's and stable.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::log::{Record, RunLog};
use super::{Identity, RunKind, RunPlan, RunState, StepKind, StepState};

/// Per step, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    pub state: StepState,
    pub took_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub id: String,
    pub kind: RunKind,
    pub from: PathBuf,
    pub to: PathBuf,
    pub state: RunState,
    pub steps: Vec<StepReport>,
    pub downtime_ms: Option<u64>,
    /// Bytes the copy wrote while etcd was stopped (the whole data dir without a pre-copy):
    /// the part of the downtime that grows with the data, independent of this machine.
    pub bytes_after_stop: Option<u64>,
    pub identity: Option<Identity>,
    pub run_dir: PathBuf,
    pub error: Option<String>,
    pub notes: Vec<String>,
    /// Every HashKV the run's checks made (preflight, post-verify, verify-hash), each with its
    /// time and its own deadline; `slow` when it took longer than the command timeout.
    pub hash_kv: Vec<crate::etcd::hashkv::Timing>,
    /// `member rejoin`: the member replaced and the one that replaced it (hex ids).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_member_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_member_id: Option<String>,
}

impl RunReport {
    /// The last step that left `pending`, for "run X is failed at step Y".
    pub fn at_step(&self) -> Option<&str> {
        self.steps
            .iter()
            .rfind(|s| s.state != StepState::Pending)
            .map(|s| s.name.as_str())
    }

    pub fn partly_undone(&self) -> bool {
        self.steps.iter().any(|s| s.state == StepState::Undone)
    }
}

pub fn of<S: StepKind, P: RunPlan>(log: &RunLog<S, P>, dir: &Path, running_now: bool) -> RunReport {
    let steps = S::ALL
        .iter()
        .map(|s| StepReport {
            name: s.name().to_string(),
            state: log.step_state(*s),
            took_ms: log.took_ms(*s),
        })
        .collect();
    let mut error = None;
    let mut notes = Vec::new();
    let mut hash_kv = Vec::new();
    let (mut down_start, mut down_end) = (None, None);
    let mut bytes_after_stop = None;
    let (mut old_member_id, mut new_member_id) = (None, None);
    for r in log.records() {
        match r {
            Record::Begin { step, ts_ms } if step.downtime_starts() => {
                down_start = Some(*ts_ms);
            }
            Record::Done {
                step, ts_ms, data, ..
            } => {
                if step.downtime_ends() {
                    down_end = Some(*ts_ms);
                }
                if let Some(b) = data.get("bytes_after_stop").and_then(|b| b.as_u64()) {
                    bytes_after_stop = Some(b);
                }
                let id = |k: &str| data.get(k).and_then(|v| v.as_str()).map(str::to_string);
                old_member_id = id("old_member_id").or(old_member_id);
                new_member_id = id("new_member_id").or(new_member_id);
                if let Some(n) = data.get("note").and_then(|n| n.as_str()) {
                    notes.push(n.to_string());
                }
                if let Some(ns) = data.get("notes").and_then(|n| n.as_array()) {
                    notes.extend(ns.iter().filter_map(|n| n.as_str()).map(str::to_string));
                }
                if let Some(ts) = data.get("hash_kv") {
                    hash_kv.extend(
                        serde_json::from_value::<Vec<crate::etcd::hashkv::Timing>>(ts.clone())
                            .unwrap_or_default(),
                    );
                }
            }
            Record::Failed { step, error: e, .. } => error = Some(format!("{}: {e}", step.name())),
            Record::State { state, reason, .. } => match state {
                RunState::Failed => error = reason.clone().or(error),
                // A resumed run that completed has no error left to show.
                RunState::Completed => error = None,
                RunState::Finalized => notes.extend(reason.clone()),
                _ => {}
            },
            _ => {}
        }
    }
    let plan = &log.plan;
    RunReport {
        id: plan.id().to_string(),
        kind: log.kind,
        from: plan.from().to_path_buf(),
        to: plan.to().to_path_buf(),
        state: log.state(running_now),
        steps,
        downtime_ms: match (down_start, down_end) {
            (Some(a), Some(b)) if b >= a => Some(b - a),
            _ => None,
        },
        bytes_after_stop,
        identity: plan.identity().cloned(),
        run_dir: dir.to_path_buf(),
        error,
        notes,
        hash_kv,
        old_member_id,
        new_member_id,
    }
}

impl RunReport {
    /// The report's verdict as the exit-code table wants it: `Err(Attention)` (exit 5) with
    /// what to run next while the run needs attention, `Ok` otherwise.
    pub fn verdict(&self) -> crate::error::Result<()> {
        if !self.state.needs_attention() {
            return Ok(());
        }
        let at = self
            .at_step()
            .map_or(String::new(), |s| format!(" at step {s}"));
        let cmd = self.kind.command();
        Err(crate::error::Error::Attention(if self.partly_undone() {
            format!(
                "run {} is {}{} and partly rolled back; fix the cause, then `{cmd} rollback` \
                 finishes returning to {}",
                self.id,
                self.state.name(),
                at,
                self.from.display()
            )
        } else {
            format!(
                "run {} is {}{}; `{cmd} resume` finishes it, `{cmd} rollback` returns to {} \
                 while etcd has not run on the new data",
                self.id,
                self.state.name(),
                at,
                self.from.display()
            )
        }))
    }
}
