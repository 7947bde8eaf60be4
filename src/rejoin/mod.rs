//! `member rejoin`: the broken member of a healthy quorum comes back as a new member. `plan`:
//! this member from the manifest, the cluster as the other members list it, and the
//! refusals (pure). `steps`: the run, a saga on `crate::run` — stop etcd and kubelet, old
//! data aside (kept), remove the old member and add a learner with the same peer URL through
//! the other members, `--initial-cluster`/`--initial-cluster-state=existing` set by the
//! surgical rewrite, start, wait caught up, promote, prove HashKV agreement — with `apply`,
//! `resume` and `rollback` here. The engine journals, executes and rolls back.

pub mod plan;
pub mod steps;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::etcd::connect::Connection;
use crate::output::hex_id;
use crate::run::host::Host;
use crate::run::{Cancel, Engine, Identity, RunLock, RunPlan};
pub use plan::Me;
pub use steps::{Rejoin, RejoinStep};

/// What a rejoin run does, recorded in its first journal record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    #[serde(flatten)]
    pub me: Me,
    /// The manifest in the manifests dir.
    pub manifest: PathBuf,
    /// The member replaced, lower-case hex.
    pub old_member_id: String,
    /// Voting members, this one included (what verify-hash expects back).
    pub voters: usize,
    /// Whether the data dir is a mount point: then its `member` dir is moved aside inside it.
    pub mounted: bool,
    /// What is moved aside (the data dir, or its `member` dir) and where to.
    pub moved: PathBuf,
    pub aside: PathBuf,
    /// Whether `moved` existed (a deleted hostPath has nothing to keep aside).
    pub data_existed: bool,
    /// The learner counts as caught up within this many raft entries of the leader.
    pub catch_up_entries: u64,
    /// The bound of the catch-up wait and of the promote retries, in milliseconds.
    pub catch_up_timeout_ms: u64,
    /// Why this node's member is a stranger (another cluster id, a member the others do
    /// not list, a cluster of its own), when preflight found it answering as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stranger: Option<String>,
    /// kubeadm's startup probe asks `/readyz`, which says "not ready" while the member is a
    /// learner (etcd >= 3.5.19): kubelet restarts the new member this long after it starts
    /// unless it is promoted. Catch-up and promotion must both end within it.
    #[serde(default)]
    pub startup_window_ms: Option<u64>,
}

impl Plan {
    /// The bound of the catch-up wait and of the promote retries: `--catch-up-timeout`, cut
    /// to the startup probe's window when one applies.
    pub fn learner_deadline(&self) -> std::time::Duration {
        let t = self
            .startup_window_ms
            .map_or(self.catch_up_timeout_ms, |w| {
                w.min(self.catch_up_timeout_ms)
            });
        std::time::Duration::from_millis(t)
    }
}

/// The startup probe's window when it restarts an unpromoted learner: the probe asks
/// `/readyz` and the image is etcd >= 3.5.19 (or untagged: assume it is).
pub fn startup_window(manifest: &Path) -> Option<std::time::Duration> {
    let pod = crate::manifest::StaticPod::load(manifest).ok()?;
    let c = pod.etcd_container().ok()?;
    let probe = c.startup_probe.as_ref().filter(|p| p.asks_readyz())?;
    let learner_not_ready = c
        .image
        .as_deref()
        .and_then(crate::etcd::version::Version::of_image)
        .is_none_or(|v| v >= crate::etcd::version::READYZ_LEARNER);
    learner_not_ready.then(|| probe.window())
}

impl Plan {
    pub fn old_id(&self) -> Result<u64> {
        u64::from_str_radix(&self.old_member_id, 16).map_err(|e| {
            Error::Usage(format!(
                "run {}: old member id {:?} is not hex: {e}",
                self.id, self.old_member_id
            ))
        })
    }
}

impl RunPlan for Plan {
    fn id(&self) -> &str {
        &self.id
    }
    /// The old data, kept aside.
    fn from(&self) -> &Path {
        &self.aside
    }
    fn to(&self) -> &Path {
        &self.me.data_dir
    }
    fn identity(&self) -> Option<&Identity> {
        None
    }
}

/// Raft entries within which the learner counts as caught up. etcd itself promotes a
/// learner only once it has 90 % of the leader's log (`isLearnerReady`); promote retries
/// until then, so this bound only says when trying starts.
pub const CATCH_UP_ENTRIES: u64 = 100;

/// Options of a run, resolved from flags by the command.
pub struct RunOptions<'a> {
    pub manifest: PathBuf,
    pub state_dir: PathBuf,
    pub say: &'a dyn Fn(&str),
    pub cancel: Option<&'a Cancel>,
    /// Refuses while any run of any kind is unfinished (`runs::check_none_unfinished`).
    pub unfinished: fn(&Path) -> Result<String>,
    pub catch_up_timeout: Duration,
}

pub use crate::run::Outcome;

/// The other members' client URLs, to reach the cluster through: `given` (the operator's
/// `--cluster-endpoints`) or guessed from the manifest's `--initial-cluster`, then the member
/// list read through them (the authority), without this member's own.
pub fn other_members(conn: &Connection, manifest: &Path, given: &[String]) -> Result<Vec<String>> {
    let pod = crate::manifest::StaticPod::load(manifest)?;
    let me = Me::from_manifest(manifest)?;
    let candidates = if given.is_empty() {
        crate::etcd::member::peer_candidates(&pod)?
    } else {
        given.to_vec()
    };
    if candidates.is_empty() {
        return Err(Error::Usage(format!(
            "the manifest {} names no other member in --initial-cluster: pass \
             --cluster-endpoints with the client URLs of the healthy members",
            manifest.display()
        )));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts");
    let members = rt.block_on(crate::etcd::member::list_via(conn, &candidates))?;
    let mut urls: Vec<String> = members
        .iter()
        .filter(|m| {
            !m.peer_urls
                .iter()
                .any(|u| u.trim_end_matches('/') == me.peer_url)
        })
        .filter_map(|m| m.client_urls.first().cloned())
        .collect();
    urls.dedup();
    if urls.is_empty() {
        return Err(Error::refused(
            format!("rejoin member {}", me.name),
            "the member list names no other started member to reach the cluster through",
        ));
    }
    Ok(urls)
}

/// Every refusal before the journal exists (nothing changed).
pub fn preflight(host: &dyn Host, opts: &RunOptions, id: &str) -> Result<Plan> {
    (opts.unfinished)(&opts.state_dir)?;
    let me = Me::from_manifest(&opts.manifest)?;
    let members = host.members()?;
    // This member's own endpoint and the others': who answers, who leads.
    let health = host.health(false)?;
    let answer = |e: &crate::etcd::health::EndpointHealth| plan::Answer {
        endpoint: e.endpoint.clone(),
        member_id: e
            .member_id
            .as_deref()
            .and_then(|m| u64::from_str_radix(m, 16).ok()),
        cluster_id: e.status.as_ref().map(|s| s.cluster_id),
        leader: e.status.as_ref().map_or(0, |s| s.leader),
        healthy: e.healthy,
        is_leader: e.is_leader,
    };
    let answers: Vec<plan::Answer> = health.endpoints.iter().map(answer).collect();
    let judged = plan::judge(&me, &members, &answers)?;
    if let Some(why) = &judged.stranger {
        (opts.say)(&format!(
            "this member is a stranger: {why}; replacing it is what rejoin is for"
        ));
    }
    // The new member receives the cluster's data: never under an older etcd than wrote it.
    crate::etcd::health::check_image_release(&opts.manifest, &health)
        .map_err(|e| Error::refused(format!("rejoin member {}", me.name), e.one_line()))?;
    let Some(manifest_bytes) = host.read_file(&opts.manifest)? else {
        return Err(Error::input(
            &opts.manifest,
            "manifest not found in the manifests dir (leave it in place: the run stops etcd itself)",
        ));
    };
    rewrite_in_memory(
        &opts.manifest,
        &manifest_bytes,
        &me,
        &members,
        judged.old_member_id,
    )?;
    let data = &me.data_dir;
    let mounted = host.is_dir(data)? && host.is_mount_point(data)?;
    let (moved, aside) = if mounted {
        (
            data.join("member"),
            data.join(format!("member.etcdops-old-{id}")),
        )
    } else {
        (
            data.clone(),
            PathBuf::from(format!("{}.etcdops-old-{id}", data.display())),
        )
    };
    if host.is_dir(&aside)? || host.read_file(&aside)?.is_some() {
        return Err(Error::refused(
            format!("rejoin member {}", me.name),
            format!("{} exists already", aside.display()),
        ));
    }
    let data_existed = host.is_dir(&moved)?;
    Ok(Plan {
        id: id.to_string(),
        manifest: opts.manifest.clone(),
        old_member_id: hex_id(judged.old_member_id),
        voters: judged.voters,
        mounted,
        moved,
        aside,
        data_existed,
        catch_up_entries: CATCH_UP_ENTRIES,
        catch_up_timeout_ms: opts.catch_up_timeout.as_millis() as u64,
        stranger: judged.stranger,
        startup_window_ms: startup_window(&opts.manifest).map(|w| w.as_millis() as u64),
        me,
    })
}

/// The rewrite step's edits, made now on the manifest's bytes in memory (issue 21): the
/// member list as it will be once this member is removed and its learner added (same peer
/// URL, unnamed until it starts), its `--initial-cluster`, and the surgical flag edit. Any
/// refusal there comes now, before etcd is stopped and the member removed, not after.
fn rewrite_in_memory(
    manifest: &Path,
    bytes: &[u8],
    me: &Me,
    members: &[crate::etcd::client::Member],
    old_id: u64,
) -> Result<()> {
    // No member id is 0 (etcd refuses it): it stands for the learner to come.
    let learner = 0;
    let mut after: Vec<crate::etcd::client::Member> =
        members.iter().filter(|m| m.id != old_id).cloned().collect();
    after.push(crate::etcd::client::Member {
        id: learner,
        name: String::new(),
        client_urls: Vec::new(),
        peer_urls: vec![me.peer_url.clone()],
        is_learner: true,
    });
    let cluster = plan::initial_cluster(me, &after, learner)?;
    let text = String::from_utf8_lossy(bytes);
    crate::manifest::flags::set_flags_text(manifest, &text, &steps::rewrite_edits(cluster))?;
    Ok(())
}

/// `member rejoin` without `--yes`: the preflight and the step list, nothing changed.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub kind: &'static str,
    #[serde(flatten)]
    pub plan: Plan,
    pub steps: Vec<&'static str>,
}

/// Preflight, and what a signal during it means: the command stops, nothing changed.
fn preflight_or_stop(host: &dyn Host, opts: &RunOptions, id: &str) -> Result<Plan> {
    let stop = |e: Error| {
        Error::failed(
            "member rejoin preflight",
            format!("{}; nothing was changed", e.one_line()),
        )
    };
    if opts.cancel.is_some_and(Cancel::requested) {
        return Err(stop(Error::failed(
            "preflight",
            "interrupted by the operator (SIGINT/SIGTERM)",
        )));
    }
    preflight(host, opts, id).map_err(|e| {
        if opts.cancel.is_some_and(Cancel::requested) {
            stop(e)
        } else {
            e
        }
    })
}

pub fn plan_only(host: &dyn Host, opts: &RunOptions) -> Result<PlanReport> {
    let id = crate::run::unique_id(&opts.state_dir);
    let plan = preflight_or_stop(host, opts, &id)?;
    Ok(PlanReport {
        kind: "rejoin",
        plan,
        steps: <RejoinStep as crate::run::StepKind>::ALL
            .iter()
            .map(|s| crate::run::StepKind::name(*s))
            .collect(),
    })
}

/// `member rejoin --yes`: preflight, then the steps.
pub fn apply(host: &dyn Host, opts: &RunOptions) -> Result<Outcome> {
    // Every refusal before the lock file exists (nothing changed); then, under the lock,
    // the one check another process could have made stale meanwhile.
    let id = crate::run::unique_id(&opts.state_dir);
    let plan = preflight_or_stop(host, opts, &id)?;
    let _lock = RunLock::acquire(&opts.state_dir)?;
    (opts.unfinished)(&opts.state_dir)?;
    let saga = Rejoin { host };
    let dir = crate::run::runs_dir(&opts.state_dir).join(&id);
    let mut engine = Engine::create(&saga, dir, plan, opts.say, opts.cancel)?;
    let result = engine.run();
    Ok(Outcome::of(&engine, result))
}

/// `member rejoin resume`: finish an interrupted or failed run.
pub fn resume(host: &dyn Host, opts: &RunOptions, id: Option<&str>) -> Result<Outcome> {
    // No run to act on is bad input: refused before the lock file is even created.
    crate::run::find_run(&opts.state_dir, id)?;
    crate::run::operate(
        &Rejoin { host },
        &opts.state_dir,
        id,
        opts.say,
        opts.cancel,
        |e| e.resume(),
    )
}

/// `member rejoin rollback`: the old manifest and data back, while the old member has not
/// been removed from the cluster (the raft rule).
pub fn rollback(host: &dyn Host, opts: &RunOptions, id: Option<&str>) -> Result<Outcome> {
    crate::run::find_run(&opts.state_dir, id)?;
    crate::run::operate(
        &Rejoin { host },
        &opts.state_dir,
        id,
        opts.say,
        opts.cancel,
        |e| e.rollback(),
    )
}

#[cfg(test)]
mod tests;
