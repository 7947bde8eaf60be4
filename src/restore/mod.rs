//! Restore of one node from an archive (or a bare snapshot). `plan`: what every node computes
//! alike — this member's name and peer URL from the manifest, `--initial-cluster` from the
//! archive's member list — the cluster token of this attempt (fresh from `restore plan`,
//! given to every node's `restore apply --token`, never reused on a node), the refusals,
//! and running etcd's own restore tool into a new dir. `steps`: the restore run, a saga on
//! `crate::run` (stop etcd and kubelet, restore, swap the restored dir in with the old data
//! kept aside, prove every old peer fenced, start, wait for the local member, then for
//! quorum), with `apply`, `resume` and `rollback` here. The engine journals, executes and
//! rolls back.

pub mod plan;
pub mod steps;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backup::tool::{RestoreTool, ToolKind};
use crate::error::{Error, Result};
use crate::run::host::{Host, MemberStatus};
use crate::run::{Cancel, Engine, Identity, RunLock, RunPlan};
pub use steps::{Restore, RestoreStep};

/// What a restore run does, recorded in its first journal record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    #[serde(flatten)]
    pub restore: plan::RestorePlan,
    /// The manifest in the manifests dir.
    pub manifest: PathBuf,
    /// etcd's restore tool, and whether it is etcdctl (3.4) rather than etcdutl.
    pub tool: PathBuf,
    pub tool_is_etcdctl: bool,
    /// Where the old data is kept, never deleted: `<data dir>.etcdops-old-<run id>`, or,
    /// when the data dir is a mount point, `<data dir>/member.etcdops-old-<run id>`.
    pub aside: PathBuf,
    /// Whether the data existed (a deleted hostPath, or an emptied disk, has nothing to keep
    /// aside).
    pub data_existed: bool,
    /// The data dir is a mount point (its own disk): a mount point cannot be renamed, so the
    /// swap moves its `member` dir instead — the restore is made inside the data dir, its
    /// `member` staged there as `member.etcdops-new-<run id>`, the old `member` moved aside
    /// beside it (as `migrate finalize` does on a mount point). The hostPath never changes.
    /// Absent in journals written before this existed: those swapped whole dirs.
    #[serde(default)]
    pub mounted: bool,
    /// Members restored (`--initial-cluster`); quorum is `members / 2 + 1`.
    pub members: usize,
    /// The bound of the wait for quorum, in milliseconds.
    pub quorum_timeout_ms: u64,
    /// The bound of the wait for every old peer to be fenced, in milliseconds.
    #[serde(default = "default_fence_timeout_ms")]
    pub fence_timeout_ms: u64,
    /// What ran on this node before the run (member and cluster id), when it answered.
    pub before: Option<MemberStatus>,
}

fn default_fence_timeout_ms() -> u64 {
    120_000
}

impl Plan {
    pub fn tool(&self) -> RestoreTool {
        RestoreTool {
            path: self.tool.clone(),
            kind: if self.tool_is_etcdctl {
                ToolKind::Etcdctl
            } else {
                ToolKind::Etcdutl
            },
        }
    }

    pub fn quorum(&self) -> usize {
        self.members / 2 + 1
    }

    /// What the swap renames: the data dir itself, or its `member` dir on a mount point.
    pub fn live(&self) -> PathBuf {
        if self.mounted {
            self.restore.data_dir.join("member")
        } else {
            self.restore.data_dir.clone()
        }
    }

    /// What the swap renames into `live()`: the restore dir, or on a mount point the
    /// restored `member` dir staged inside the data dir.
    pub fn staged(&self) -> PathBuf {
        if self.mounted {
            self.restore
                .data_dir
                .join(format!("member.etcdops-new-{}", self.id))
        } else {
            self.restore.restore_dir.clone()
        }
    }

    /// The `--from` file.
    pub fn source_path(&self) -> &Path {
        match &self.restore.source {
            plan::Source::Archive { path, .. } | plan::Source::Snapshot { path, .. } => path,
        }
    }
}

impl RunPlan for Plan {
    fn id(&self) -> &str {
        &self.id
    }
    /// The old data, kept aside: what a rollback returns to.
    fn from(&self) -> &Path {
        &self.aside
    }
    fn to(&self) -> &Path {
        &self.restore.data_dir
    }
    fn identity(&self) -> Option<&Identity> {
        None
    }
}

/// Options of a run, resolved from flags by the command.
pub struct RunOptions<'a> {
    pub manifest: PathBuf,
    pub state_dir: PathBuf,
    pub say: &'a dyn Fn(&str),
    pub cancel: Option<&'a Cancel>,
    /// Refuses while any run of any kind is unfinished (`runs::check_none_unfinished`).
    pub unfinished: fn(&Path) -> Result<String>,
}

pub use crate::run::Outcome;

fn outcome(engine: &Engine<Restore>, result: Result<()>) -> Outcome {
    Outcome::of(engine, result)
}

/// What `restore apply` was given besides the file: the restore tool's flags, this
/// attempt's token and the bounds of its waits.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// `--identity`: the age identity of an encrypted archive.
    pub identity: Option<PathBuf>,
    pub revision_flags: plan::RevisionFlags,
    /// `--token`; none: a fresh one for a single-member cluster, refused for more.
    pub token: Option<String>,
    pub quorum_timeout: Duration,
    pub fence_timeout: Duration,
}

/// The restore plan of `restore apply`, with this attempt's token: refuses (exit 2) a
/// multi-member restore without `--token`, a malformed token, and a token an earlier
/// restore run on this node used. Changes nothing.
pub fn apply_plan(
    state_dir: &Path,
    manifest: &Path,
    from: &Path,
    identity: Option<&Path>,
    token: Option<&str>,
) -> Result<plan::RestorePlan> {
    let mut restore = plan::plan(manifest, from, identity)?;
    let token = plan::choose_token(token, restore.members(), restore.source_id())?;
    if let Some(run) = token_used_by(state_dir, &token)? {
        return Err(Error::Usage(format!(
            "--token {token} was used by restore run {run} on this node; a token serves one \
             restore attempt only: run `etcdops restore plan --from {}` for a new one and \
             restore every node with it",
            from.display()
        )));
    }
    restore.set_token(token);
    Ok(restore)
}

/// The restore run in this state dir that used `token`, if any (any state: a rolled-back
/// attempt may have started its member, and a member of it may still run elsewhere).
pub fn token_used_by(state_dir: &Path, token: &str) -> Result<Option<String>> {
    for dir in crate::run::list_runs(state_dir)? {
        let path = crate::run::journal::Journal::path_in(&dir);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        let Some(first) = text.lines().next() else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(first) else {
            continue;
        };
        if v["kind"] == "restore" && v["plan"]["token"] == token {
            let id = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            return Ok(id);
        }
    }
    Ok(None)
}

/// Every refusal before the journal exists (nothing changed): an unfinished run, the plan's
/// refusals (a missing, malformed or used token among them), leftovers of the restore dir,
/// the staged dir or the aside path. A data dir that is a mount point is restored inside
/// itself (see `Plan::mounted`).
fn preflight(
    host: &dyn Host,
    opts: &RunOptions,
    from: &Path,
    tool: &RestoreTool,
    apply: &ApplyOptions,
    id: &str,
) -> Result<Plan> {
    (opts.unfinished)(&opts.state_dir)?;
    let revision_flags = apply.revision_flags;
    let mut restore = apply_plan(
        &opts.state_dir,
        &opts.manifest,
        from,
        apply.identity.as_deref(),
        apply.token.as_deref(),
    )?;
    revision_flags.check(tool)?;
    restore.revision_flags = revision_flags;
    let data = restore.data_dir.clone();
    let what = format!("restore into {}", data.display());
    let mounted = host.is_dir(&data)? && host.is_mount_point(&data)?;
    if mounted {
        restore.inside_mount_point();
    }
    let (aside, staged, data_existed) = if mounted {
        (
            data.join(format!("member.etcdops-old-{id}")),
            data.join(format!("member.etcdops-new-{id}")),
            host.is_dir(&data.join("member"))?,
        )
    } else {
        (
            PathBuf::from(format!("{}.etcdops-old-{id}", data.display())),
            restore.restore_dir.clone(),
            host.is_dir(&data)?,
        )
    };
    for leftover in [&restore.restore_dir, &staged] {
        if host.is_dir(leftover)? || host.read_file(leftover)?.is_some() {
            return Err(Error::refused(
                what,
                format!(
                    "{} exists already (left by an earlier attempt?); move it away first",
                    leftover.display()
                ),
            ));
        }
    }
    if host.is_dir(&aside)? {
        return Err(Error::refused(
            what,
            format!("{} exists already", aside.display()),
        ));
    }
    if host.read_file(&opts.manifest)?.is_none() {
        return Err(Error::input(
            &opts.manifest,
            "manifest not found in the manifests dir (leave it in place: the run stops etcd itself)",
        ));
    }
    let members = restore.members();
    // Who runs now, for the report and for a rollback to prove it is back; a broken cluster
    // (the reason to restore) may not answer at all.
    let before = host.local_status().ok();
    Ok(Plan {
        id: id.to_string(),
        manifest: opts.manifest.clone(),
        tool: tool.path.clone(),
        tool_is_etcdctl: tool.kind == ToolKind::Etcdctl,
        aside,
        data_existed,
        mounted,
        members,
        quorum_timeout_ms: apply.quorum_timeout.as_millis() as u64,
        fence_timeout_ms: apply.fence_timeout.as_millis() as u64,
        before,
        restore,
    })
}

/// Whether `data_dir` exists and is a mount point, for `restore plan` (which has no host):
/// then the restore is made inside it (`plan::RestorePlan::inside_mount_point`).
pub fn data_dir_is_mount_point(data_dir: &Path) -> bool {
    data_dir.is_dir()
        && data_dir
            .canonicalize()
            .is_ok_and(|c| crate::mounts::locate(&c).is_ok_and(|at| at.mount_point == c))
}

/// `restore apply`: preflight, then the steps.
pub fn apply(
    host: &dyn Host,
    opts: &RunOptions,
    from: &Path,
    tool: &RestoreTool,
    apply: &ApplyOptions,
) -> Result<Outcome> {
    let _lock = RunLock::acquire(&opts.state_dir)?;
    let id = crate::run::unique_id(&opts.state_dir);
    let plan = preflight(host, opts, from, tool, apply, &id)?;
    let saga = Restore {
        host,
        operator_rollback: false,
    };
    let dir = crate::run::runs_dir(&opts.state_dir).join(&id);
    let mut engine = Engine::create(&saga, dir, plan, opts.say, opts.cancel)?;
    let result = engine.run();
    Ok(outcome(&engine, result))
}

/// `restore resume`: finish an interrupted or failed run (waits for quorum again).
pub fn resume(host: &dyn Host, opts: &RunOptions, id: Option<&str>) -> Result<Outcome> {
    // No run to act on is bad input: refused before the lock file is even created.
    crate::run::find_run(&opts.state_dir, id)?;
    let saga = Restore {
        host,
        operator_rollback: false,
    };
    crate::run::operate(&saga, &opts.state_dir, id, opts.say, opts.cancel, |e| {
        e.resume()
    })
}

/// `restore rollback`: the old data dir and the old manifest back, while the raft rule
/// allows (the restored member has not been part of a quorum).
pub fn rollback(host: &dyn Host, opts: &RunOptions, id: Option<&str>) -> Result<Outcome> {
    // No run to act on is bad input: refused before the lock file is even created.
    crate::run::find_run(&opts.state_dir, id)?;
    let saga = Restore {
        host,
        operator_rollback: true,
    };
    crate::run::operate(&saga, &opts.state_dir, id, opts.say, opts.cancel, |e| {
        e.rollback()
    })
}
