//! The planned disk migration of a member's data dir, as DESIGN.md's ten steps: the plan
//! (`preflight`), the steps (`steps`, a saga on `crate::run`), and the operations the
//! command offers (`apply`, `resume`, `rollback`, `status`, `finalize`). The engine in
//! `crate::run` journals, executes and rolls back; this module only says what a migration
//! is. The source data dir is never written to. Steps reach the node only through `Host`.

pub mod preflight;
pub mod steps;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::run::Identity;
use crate::run::host::Host;
use crate::run::{Cancel, Engine, RunLock, RunPlan, RunReport, RunState};
pub use steps::{MigrateStep, Migration};

/// Kept for the code that names the host seam through the migration.
pub mod host {
    pub use crate::run::host::{Host, RealHost};
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
    /// Pre-copy while etcd runs (`--precopy`); absent in journals written before it existed.
    #[serde(default)]
    pub precopy: bool,
    /// The target existed as an empty dir: rollback empties it instead of removing it.
    pub target_existed: bool,
    /// The other members' client URLs at preflight: a resume or rollback that finds this
    /// member down takes the guard over through them (absent in older journals: the
    /// manifest's --initial-cluster gives candidates then).
    #[serde(default)]
    pub cluster_endpoints: Vec<String>,
    pub identity: Identity,
    /// The HashKVs preflight made (cluster agreement, identity), with their times.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_kv: Vec<crate::etcd::hashkv::Timing>,
}

impl RunPlan for Plan {
    fn id(&self) -> &str {
        &self.id
    }
    fn from(&self) -> &Path {
        &self.from
    }
    fn to(&self) -> &Path {
        &self.to
    }
    fn identity(&self) -> Option<&Identity> {
        Some(&self.identity)
    }
}

pub use crate::run::RunDir;

/// Options of a run, resolved from flags by the command.
pub struct RunOptions<'a> {
    pub manifest: PathBuf,
    pub state_dir: PathBuf,
    pub say: &'a dyn Fn(&str),
    /// SIGINT/SIGTERM (see `run::Cancel`).
    pub cancel: Option<&'a Cancel>,
    /// Refuses while any run of any kind is unfinished (`runs::check_none_unfinished`).
    pub unfinished: fn(&Path) -> Result<String>,
    /// What the target's filesystem may be (`--allow-volatile-target`, `--same-filesystem`).
    pub fs_policy: crate::datadir::target::FsPolicy,
}

pub use crate::run::Outcome;

fn outcome(engine: &Engine<Migration>, result: Result<()>) -> Outcome {
    Outcome::of(engine, result)
}

/// `migrate apply`: preflight, then the steps; rolls back by itself on failure.
pub fn apply(
    host: &dyn Host,
    opts: &RunOptions,
    to: &Path,
    snapshot: bool,
    endpoint: &str,
) -> Result<Outcome> {
    apply_with(host, opts, to, snapshot, false, endpoint)
}

/// [`apply`], with the pre-copy step on (`precopy`) or skipped.
pub fn apply_with(
    host: &dyn Host,
    opts: &RunOptions,
    to: &Path,
    snapshot: bool,
    precopy: bool,
    endpoint: &str,
) -> Result<Outcome> {
    let _lock = RunLock::acquire(&opts.state_dir)?;
    let id = crate::run::unique_id(&opts.state_dir);
    let pre = preflight::run(
        host,
        &preflight::PreflightInput {
            manifest: &opts.manifest,
            state_dir: &opts.state_dir,
            to,
            endpoint,
            snapshot,
            precopy,
            id: id.clone(),
            unfinished: opts.unfinished,
            fs_policy: opts.fs_policy,
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
    let saga = Migration { host };
    let dir = crate::run::runs_dir(&opts.state_dir).join(&id);
    let mut engine = Engine::create(&saga, dir, plan, opts.say, opts.cancel)?;
    let result = engine.run();
    Ok(outcome(&engine, result))
}

/// The manifest connection discovery should read for a run's resume or rollback: the one in
/// the manifests dir, or, while the run has it moved out, the run's copy (the original
/// first).
pub fn discovery_manifest(state_dir: &Path, id: Option<&str>, manifest: &Path) -> Result<PathBuf> {
    if manifest.exists() {
        return Ok(manifest.to_path_buf());
    }
    let run = RunDir {
        dir: crate::run::find_run(state_dir, id)?,
    };
    Ok(if run.original().exists() {
        run.original()
    } else {
        run.manifest()
    })
}

fn open<'a>(
    saga: &'a Migration<'a>,
    opts: &'a RunOptions,
    id: Option<&str>,
) -> Result<Engine<'a, Migration<'a>>> {
    let dir = crate::run::find_run(&opts.state_dir, id)?;
    Engine::open(saga, dir, opts.say, opts.cancel)
}

/// `migrate resume`: finish an interrupted run (re-running the step it was in).
pub fn resume(host: &dyn Host, opts: &RunOptions, id: Option<&str>) -> Result<Outcome> {
    let saga = Migration { host };
    crate::run::operate(&saga, &opts.state_dir, id, opts.say, opts.cancel, |e| {
        e.resume()
    })
}

/// `migrate rollback`: return to the original state from wherever the run stopped.
pub fn rollback(host: &dyn Host, opts: &RunOptions, id: Option<&str>) -> Result<Outcome> {
    let saga = Migration { host };
    crate::run::operate(&saga, &opts.state_dir, id, opts.say, opts.cancel, |e| {
        e.rollback()
    })
}

pub(crate) fn post_verify(host: &dyn Host, plan: &Plan) -> Result<serde_json::Value> {
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
    let at = host.hash_at(want.revision)?;
    match at.hash {
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
        // Compacted, but nothing was written since: HashKV of the latest revision (what
        // `identity` took) covers exactly the recorded revision, so it proves the data.
        None if now.revision == want.revision => {
            if now.hash != want.hash {
                return Err(Error::failed(
                    "post-verify",
                    format!(
                        "HashKV at revision {} is {:08x}, recorded {:08x}: data differs",
                        want.revision, now.hash, want.hash
                    ),
                ));
            }
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
    // Every HashKV this step made, each under its own deadline; the slow ones are noted.
    let timings: Vec<&crate::etcd::hashkv::Timing> = now
        .hash_kv
        .iter()
        .chain(at.timing.iter())
        .chain(cluster.cluster.iter().flat_map(|c| c.hash_kv.iter()))
        .collect();
    Ok(crate::etcd::hashkv::annotate(
        serde_json::json!({"identity": now, "note": note}),
        timings,
    ))
}

/// `migrate finalize`: after the operator's verification window, fence the old path (and
/// with `remove_old`, delete the old data). Without `remove_old` the old data is moved aside
/// to `<old>.etcdops-old-<id>` so that the fence can take its place.
pub fn finalize(
    host: &dyn Host,
    opts: &RunOptions,
    id: Option<&str>,
    remove_old: bool,
) -> Result<RunReport> {
    let _lock = RunLock::acquire(&opts.state_dir)?;
    let saga = Migration { host };
    let mut engine = open(&saga, opts, id)?;
    let state = engine.log().state(false);
    let plan = engine.plan().clone();
    if state != RunState::Completed {
        return Err(Error::refused(
            format!("run {}", plan.id),
            format!(
                "it is {}; only a completed migration can be finalized",
                state.name()
            ),
        ));
    }
    // The manifest in force must point at the new path, or the fence would break etcd.
    let text = host
        .read_file(&plan.manifest)?
        .ok_or_else(|| Error::input(&plan.manifest, "manifest not found"))?;
    let pod = crate::manifest::StaticPod::parse(&plan.manifest, &String::from_utf8_lossy(&text))?;
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
    // The old data dir may be a mount point of its own (its own disk): a mount point cannot
    // be renamed nor replaced by a file. Then the data moves aside inside it and the fence is
    // a file named `member` in it: etcd started there finds no member directory and cannot
    // create one, so it fails loudly instead of bootstrapping an empty member.
    let old = &plan.from;
    let mounted = host.is_dir(old)? && host.is_mount_point(old)?;
    let (fence_at, aside) = if mounted {
        (
            old.join("member"),
            old.join(format!("member.etcdops-old-{}", plan.id)),
        )
    } else {
        (
            old.clone(),
            PathBuf::from(format!("{}.etcdops-old-{}", old.display(), plan.id)),
        )
    };
    if host.is_dir(&fence_at)? {
        if remove_old {
            if mounted {
                host.empty_dir(old)?;
            } else {
                host.remove_tree(old)?;
            }
        } else {
            host.rename(&fence_at, &aside)?;
        }
    }
    let fence = format!(
        "etcd data moved to {} by etcdops run {} ({}).\n\
         This file stands at the old data path on purpose: a manifest that still points here \
         fails ({}) instead of starting an empty etcd member.\n\
         Fix the manifest (etcdops manifest set-data-path {}) and kubeadm-config \
         (ClusterConfiguration.etcd.local.dataDir).\n",
        plan.to.display(),
        plan.id,
        if remove_old {
            "old data removed".to_string()
        } else {
            format!("old data kept at {}", aside.display())
        },
        if mounted {
            "etcd cannot create its member directory where this file is"
        } else {
            "kubelet's hostPath check: DirectoryOrCreate refuses a file"
        },
        plan.to.display()
    );
    if host.read_file(&fence_at)?.is_none() {
        host.write_file(&fence_at, fence.as_bytes(), 0o444)?;
    }
    engine.finalized(if remove_old {
        format!("old data removed, fence written at {}", fence_at.display())
    } else {
        format!(
            "old data moved to {}, fence written at {}",
            aside.display(),
            fence_at.display()
        )
    })?;
    Ok(engine.report())
}
