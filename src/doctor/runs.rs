//! etcdops' own runs on this node: an unfinished migrate/restore/rejoin (exit 5 territory),
//! a completed migration left unfinalized past the verification window, old data kept
//! aside and its size. Run state is read only through `crate::runs::status` and
//! `list_runs` (one place, so that the saga engine can take over) and judged by the
//! report's `state` string.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Ctx, Verdict};
use crate::output::bytes;
use crate::run::{RunState, StepState};

/// A completed migration should be finalized within this (the fence protects against a
/// reverted manifest only once it is there).
pub const FINALIZE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

struct Run {
    id: String,
    dir: PathBuf,
    report: crate::run::RunReport,
}

fn runs(state_dir: &Path) -> Result<Vec<Run>, String> {
    let dirs = crate::run::list_runs(state_dir).map_err(|e| e.one_line())?;
    let mut out = Vec::new();
    for dir in dirs {
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let report = crate::runs::status(state_dir, Some(&id)).map_err(|e| e.one_line())?;
        out.push(Run { id, dir, report });
    }
    Ok(out)
}

/// The id of the latest run that is neither settled nor running, if any.
pub fn unfinished_run(state_dir: &Path) -> Option<String> {
    runs(state_dir)
        .ok()?
        .into_iter()
        .rev()
        .find(|r| !r.report.state.is_settled() && r.report.state != RunState::Running)
        .map(|r| r.id)
}

pub fn unfinished(ctx: &Ctx) -> Verdict {
    let state_dir = &ctx.opts.state_dir;
    let all = match runs(state_dir) {
        Ok(r) => r,
        Err(e) => {
            return Verdict::warn(
                format!("cannot read the runs in {}: {e}", state_dir.display()),
                ctx.etcdops("migrate status"),
            );
        }
    };
    let open: Vec<&Run> = all
        .iter()
        .filter(|r| !r.report.state.is_settled())
        .collect();
    let Some(run) = open.last() else {
        return Verdict::ok(format!(
            "{} runs in {}, none unfinished",
            all.len(),
            crate::run::runs_dir(state_dir).display()
        ));
    };
    let r = &run.report;
    let step = r
        .steps
        .iter()
        .find(|s| s.state != StepState::Done)
        .map_or("end".to_string(), |s| {
            format!("{} ({})", s.name, s.state.name())
        });
    let evidence = format!(
        "run {} ({} -> {}) is {} at step {}{}; journal {}",
        run.id,
        r.from.display(),
        r.to.display(),
        r.state.name(),
        step,
        r.error.as_ref().map_or(String::new(), |e| format!(": {e}")),
        run.dir.join("journal.jsonl").display()
    );
    if r.state == RunState::Running {
        return Verdict::warn(
            format!("{evidence}: another etcdops holds the run lock"),
            ctx.etcdops(&format!("migrate status --id {}", run.id)),
        );
    }
    Verdict::fail(
        format!(
            "{evidence}: `etcdops migrate status` exits 5; resume finishes it forward, rollback returns to {} while etcd has not run on the copy",
            r.from.display()
        ),
        ctx.etcdops(&format!("migrate resume --id {}", run.id)),
    )
}

pub fn finalize(ctx: &Ctx) -> Verdict {
    let state_dir = &ctx.opts.state_dir;
    let all = match runs(state_dir) {
        Ok(r) => r,
        Err(e) => return Verdict::skipped(format!("cannot read the runs: {e}")),
    };
    let mut notes = Vec::new();
    let mut stale = Vec::new();
    for run in &all {
        let r = &run.report;
        match r.state {
            RunState::Completed => {
                let age = std::fs::metadata(run.dir.join("journal.jsonl"))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| ctx.now.duration_since(t).ok())
                    .unwrap_or_default();
                let days = age.as_secs() / 86_400;
                let old = if r.from.is_dir() {
                    format!(
                        ", old data at {} ({})",
                        r.from.display(),
                        bytes(tree_bytes(&r.from))
                    )
                } else {
                    String::new()
                };
                let text = format!(
                    "run {} completed {days} days ago, not finalized{old}",
                    run.id
                );
                if age > FINALIZE_AFTER {
                    stale.push((text, run.id.clone()));
                } else {
                    notes.push(format!("{text}: finalize after your verification window"));
                }
            }
            RunState::Finalized => {
                let aside = PathBuf::from(format!("{}.etcdops-old-{}", r.from.display(), r.id));
                let fence = if r.from.is_file() {
                    format!("fence at {}", r.from.display())
                } else {
                    format!("no fence at {}", r.from.display())
                };
                if aside.is_dir() {
                    notes.push(format!(
                        "run {} finalized, {fence}; old data kept at {} ({}): remove it when no longer needed",
                        run.id,
                        aside.display(),
                        bytes(tree_bytes(&aside))
                    ));
                } else {
                    notes.push(format!("run {} finalized, {fence}", run.id));
                }
            }
            _ => {}
        }
    }
    if !stale.is_empty() {
        let mut all_text: Vec<String> = stale.iter().map(|(t, _)| t.clone()).collect();
        all_text.extend(notes);
        return Verdict::warn(
            format!(
                "{}: until finalized, a manifest reverted by kubeadm upgrade starts etcd on the old data",
                all_text.join("; ")
            ),
            stale
                .iter()
                .map(|(_, id)| ctx.etcdops(&format!("migrate finalize --id {id}")))
                .collect::<Vec<_>>()
                .join(" && "),
        );
    }
    if notes.is_empty() {
        return Verdict::ok("no completed migration waits for finalize");
    }
    Verdict::ok(notes.join("; "))
}

/// Bytes of the files below a dir (0 when unreadable).
fn tree_bytes(dir: &Path) -> u64 {
    crate::datadir::Tree::walk(dir).map_or(0, |t| t.file_bytes())
}
