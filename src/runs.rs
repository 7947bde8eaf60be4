//! Runs of every kind, seen together: one report for any run dir, and the check that no
//! run of any kind is unfinished on this node. Each kind's saga lives in its own module
//! (`migrate`, `restore`, `rejoin`); the engine is `run`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::run::journal::read_kind;
use crate::run::{self, RunKind, RunLock, RunReport};

/// The report of the run in `dir`, whatever its kind.
pub fn report(dir: &Path, running_now: bool) -> Result<RunReport> {
    match read_kind(dir)? {
        RunKind::Migrate => {
            let log = run::load::<crate::migrate::Migration>(dir)?;
            Ok(run::report::of(&log, dir, running_now))
        }
        RunKind::Restore => {
            let log = run::load::<crate::restore::Restore>(dir)?;
            Ok(run::report::of(&log, dir, running_now))
        }
        RunKind::Rejoin => {
            let log = run::load::<crate::rejoin::Rejoin>(dir)?;
            Ok(run::report::of(&log, dir, running_now))
        }
    }
}

/// `status`: the report of the run named, or the latest, of any kind (running when another
/// process holds the lock).
pub fn status(state_dir: &Path, id: Option<&str>) -> Result<RunReport> {
    let dir = run::find_run(state_dir, id)?;
    report(&dir, RunLock::held(state_dir))
}

/// Refuse (exit 4) while any run of this node, of any kind, is not settled.
pub fn check_none_unfinished(state_dir: &Path) -> Result<String> {
    let running = RunLock::held(state_dir);
    for dir in run::list_runs(state_dir)? {
        let r = report(&dir, running)?;
        if !r.state.is_settled() {
            let cmd = r.kind.command();
            return Err(Error::refused(
                format!("run {}", r.id),
                format!(
                    "an unfinished {} ({}) exists; run `{cmd} status`, then `{cmd} resume` or \
                     `{cmd} rollback`",
                    r.kind.noun(),
                    r.state.name()
                ),
            ));
        }
    }
    Ok("no unfinished run".into())
}
