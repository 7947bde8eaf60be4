//! The restore run's steps as a saga on `crate::run`: each step's `do` and `undo`, reaching
//! the node only through `Host`. The old data dir is renamed aside (never deleted) and the
//! restored dir renamed into its place, so the manifest stays byte for byte what kubeadm
//! wrote (no hostPath rewrite, no kubeadm-config drift); both dirs are on one filesystem
//! because the restore dir is made beside the data dir — or, when the data dir is a mount
//! point (its own disk, which cannot be renamed), inside it, and the swap moves `member`
//! dirs within the data dir (`Plan::live`, `Plan::staged`).
//!
//! Before the restored member starts, every old peer is proved fenced (`fence-peers`): its
//! peer URL does not answer, or answers as the restored cluster of this very attempt (its
//! id comes from this attempt's token, used by no other attempt). Anything else there —
//! the archive's cluster, or a member left from an earlier attempt — is waited for, then
//! the run fails and rolls back: etcd's only peer check is the cluster-ID header.
//!
//! The raft rule for a restore: going back is safe while the restored member has not been
//! part of a quorum of the new cluster — then nothing was committed on the restored data
//! beyond what the restore tool wrote (raft index = number of members, no leader), and the
//! old member, merely behind, rejoins its old cluster. Once a leader was elected, the other
//! restored members count on this one, and the rollback refuses.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Plan;
use super::plan::RestorePlan;
use crate::error::{Error, Result};
use crate::run::RunDir;
use crate::run::host::{Host, MemberStatus};
use crate::run::{RunCtx, RunKind, Saga, StepKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreStep {
    Preflight,
    StopEtcd,
    StopKubelet,
    Restore,
    Swap,
    FencePeers,
    StartKubelet,
    WaitLocal,
    WaitQuorum,
}

use RestoreStep::*;

impl StepKind for RestoreStep {
    const ALL: &'static [RestoreStep] = &[
        Preflight,
        StopEtcd,
        StopKubelet,
        Restore,
        Swap,
        FencePeers,
        StartKubelet,
        WaitLocal,
        WaitQuorum,
    ];

    fn name(self) -> &'static str {
        match self {
            Preflight => "preflight",
            StopEtcd => "stop-etcd",
            StopKubelet => "stop-kubelet",
            Restore => "restore",
            Swap => "swap",
            FencePeers => "fence-peers",
            StartKubelet => "start-kubelet",
            WaitLocal => "wait-local",
            WaitQuorum => "wait-quorum",
        }
    }

    fn has_undo(self) -> bool {
        !matches!(self, Preflight | FencePeers | WaitLocal)
    }

    fn changes_node(self) -> bool {
        self.index() >= StopEtcd.index()
    }

    /// From start-kubelet on, etcd may run on the restored data.
    fn past_raft_rule(self) -> bool {
        self.index() >= StartKubelet.index()
    }

    fn downtime_starts(self) -> bool {
        self == StopEtcd
    }

    fn downtime_ends(self) -> bool {
        self == WaitQuorum
    }
}

/// The restore saga. `operator_rollback`: the run is being rolled back because the operator
/// asked (`restore rollback`), not because a step failed — only then does the wait for
/// quorum give way; a failed wait leaves the member up, waiting, for `resume`.
pub struct Restore<'a> {
    pub host: &'a dyn Host,
    pub operator_rollback: bool,
}

/// The snapshot an archive's is extracted to (the run dir; removed after the restore).
fn extracted(run: &RunCtx<Plan>) -> std::path::PathBuf {
    run.dir.join("snapshot.db")
}

/// "waiting for N more members to be restored" with what to do.
pub fn waiting_message(plan: &Plan) -> String {
    let more = plan.quorum().saturating_sub(1);
    format!(
        "restored member {} is up; waiting for {more} more member{} to be restored (quorum is {} \
         of {}): run `etcdops restore apply --from {} --token {}` on the other nodes",
        plan.restore.name,
        if more == 1 { "" } else { "s" },
        plan.quorum(),
        plan.members,
        plan.source_path().display(),
        plan.restore.token
    )
}

/// Why the etcd at `peer` is not fenced, from what it answered (`Host::peer_cluster_id`);
/// `None` when it is: nothing answers there, or it answers as this attempt's restored
/// cluster (a sibling restored first: no other attempt has this token, so none has this
/// id). Everything else is a member that could talk to the restored one — or that still
/// serves the old data to its kube-apiserver.
pub fn unfenced(
    r: &RestorePlan,
    before: Option<&MemberStatus>,
    peer: &str,
    answer: &Result<Option<String>>,
) -> Option<String> {
    let id = match answer {
        Ok(None) => return None,
        Ok(Some(id)) if !r.restored_cluster_id.is_empty() && *id == r.restored_cluster_id => {
            return None;
        }
        Ok(Some(id)) => id,
        Err(e) => {
            return Some(format!(
                "{peer} answers but its cluster cannot be read ({})",
                e.one_line()
            ));
        }
    };
    let which = if *id == r.old_cluster_id {
        "the cluster the archive was taken from"
    } else if before.is_some_and(|b| b.cluster_id == *id) {
        "the cluster this node ran before this restore"
    } else {
        "neither the old nor this restore's cluster: a member left from an earlier restore \
         attempt?"
    };
    Some(format!(
        "{peer} still answers as a member of cluster {id} ({which}); stop etcd there \
         (`etcdops restore apply` on that node moves its manifest out first)"
    ))
}

impl Saga for Restore<'_> {
    type Step = RestoreStep;
    type Plan = Plan;
    const KIND: RunKind = RunKind::Restore;

    fn run_step(&self, run: &RunCtx<Plan>, step: RestoreStep) -> Result<serde_json::Value> {
        let plan = run.plan;
        let r = &plan.restore;
        let rd = RunDir::of(run);
        let host = self.host;
        match step {
            // The checks ran before the journal existed; what ran before is in the plan.
            Preflight => Ok(serde_json::json!({"before": plan.before})),
            StopEtcd => {
                // The original is kept first, byte for byte, so that it exists whenever the
                // manifest is not in the manifests dir.
                if host.read_file(&rd.original())?.is_none() {
                    let bytes = host.read_file(&plan.manifest)?.ok_or_else(|| {
                        Error::input(&plan.manifest, "manifest not found and no copy kept")
                    })?;
                    host.write_file(&rd.original(), &bytes, 0o600)?;
                }
                if host.read_file(&plan.manifest)?.is_some() {
                    host.stop_etcd(&plan.manifest, &rd.manifest(), &r.data_dir)?;
                }
                Ok(serde_json::Value::Null)
            }
            StopKubelet => host.stop_kubelet().map(|_| serde_json::Value::Null),
            Restore => {
                // A restore killed mid-way leaves a partial dir: start it again.
                host.remove_tree(&r.restore_dir)?;
                if plan.mounted {
                    host.remove_tree(&plan.staged())?;
                }
                let snapshot = match &r.source {
                    super::plan::Source::Archive { path, identity, .. } => {
                        let dest = extracted(run);
                        host.remove_file(&dest)?;
                        host.extract_snapshot(path, identity.as_deref(), &dest)?;
                        dest
                    }
                    super::plan::Source::Snapshot { path, .. } => path.clone(),
                };
                host.restore_snapshot(&plan.tool(), r, &snapshot, &r.restore_dir)?;
                host.remove_file(&extracted(run))?;
                if plan.mounted {
                    // The restored member, staged beside the live one on the same disk; the
                    // tool's dir, empty then, goes.
                    host.rename(&r.restore_dir.join("member"), &plan.staged())?;
                    host.remove_tree(&r.restore_dir)?;
                }
                Ok(
                    serde_json::json!({"restore_dir": r.restore_dir, "token": r.token,
                    "initial_cluster": r.initial_cluster}),
                )
            }
            // Two renames on one filesystem, each skipped when already done (a resume).
            Swap => {
                let (live, staged) = (plan.live(), plan.staged());
                if plan.data_existed && !host.is_dir(&plan.aside)? {
                    host.rename(&live, &plan.aside)?;
                }
                if !host.is_dir(&live)? {
                    host.rename(&staged, &live)?;
                }
                Ok(
                    serde_json::json!({"old_data": plan.data_existed.then_some(&plan.aside),
                    "swapped": live}),
                )
            }
            FencePeers => {
                let mut seen = Vec::new();
                let what = format!(
                    "every old peer to be fenced (silent, or of this restore's cluster {})",
                    r.restored_cluster_id
                );
                host.wait_until(
                    &what,
                    Duration::from_millis(plan.fence_timeout_ms),
                    &mut || {
                        seen.clear();
                        let mut open = Vec::new();
                        for peer in &r.peers {
                            let answer = host.peer_cluster_id(peer, r.peer_tls.as_ref());
                            seen.push(serde_json::json!({"peer": peer, "cluster_id": answer
                                .as_ref().ok().cloned().flatten()}));
                            open.extend(unfenced(r, plan.before.as_ref(), peer, &answer));
                        }
                        if open.is_empty() {
                            Ok(())
                        } else {
                            // Only its message is kept: the wait says it every 5 s and in
                            // its error at the end.
                            Err(Error::Usage(open.join("; ")))
                        }
                    },
                )?;
                Ok(serde_json::json!({"peers": seen,
                    "restored_cluster_id": r.restored_cluster_id}))
            }
            StartKubelet => {
                host.start_kubelet()?;
                if host.read_file(&plan.manifest)?.is_none() {
                    host.put_manifest(&rd.manifest(), &plan.manifest)?;
                }
                Ok(serde_json::Value::Null)
            }
            // etcd serves requests only after a quorum (it publishes itself through raft
            // first), so "up" without quorum is its client port listening.
            WaitLocal => {
                host.wait_listening()?;
                Ok(serde_json::json!({"client_port": "listening"}))
            }
            WaitQuorum => {
                let waiting = waiting_message(plan);
                (run.say)(&waiting);
                host.wait_quorum(
                    &format!("quorum of the restored cluster ({waiting})"),
                    Duration::from_millis(plan.quorum_timeout_ms),
                )
                .map_err(|e| {
                    Error::failed(
                        "wait for quorum",
                        format!(
                            "{waiting}; no quorum within {}s ({})",
                            plan.quorum_timeout_ms / 1000,
                            e.one_line()
                        ),
                    )
                })?;
                let s = host.local_status()?;
                Ok(serde_json::json!({"member": s, "note": format!(
                    "member {} is part of restored cluster {}; the old data is kept at {}",
                    s.member_id, s.cluster_id, plan.aside.display())}))
            }
        }
    }

    fn undo_step(&self, run: &RunCtx<Plan>, step: RestoreStep) -> Result<()> {
        let plan = run.plan;
        let r = &plan.restore;
        let rd = RunDir::of(run);
        let host = self.host;
        match step {
            WaitQuorum if !self.operator_rollback => Err(Error::Attention(format!(
                "{}; then `etcdops restore resume` waits again (journal {}); or, while no \
                 quorum formed, `etcdops restore rollback` returns this node to its old data",
                waiting_message(plan),
                rd.dir.display()
            ))),
            // The raft rule is judged here already, before this undo is recorded done: a
            // refusal at start-kubelet after this undo completed would leave a run partly
            // rolled back, which `resume` refuses, while rollback refuses too — stuck.
            WaitQuorum => never_served(host, plan, &rd),
            StartKubelet => undo_start(host, plan, &rd),
            Swap => {
                let (live, staged) = (plan.live(), plan.staged());
                if host.is_dir(&plan.aside)? || !plan.data_existed {
                    if host.is_dir(&live)? && !host.is_dir(&staged)? {
                        host.rename(&live, &staged)?;
                    }
                    if plan.data_existed {
                        host.rename(&plan.aside, &live)?;
                    }
                }
                Ok(())
            }
            Restore => {
                host.remove_file(&extracted(run))?;
                host.remove_tree(&r.restore_dir)?;
                if plan.mounted {
                    host.remove_tree(&plan.staged())?;
                }
                Ok(())
            }
            StopKubelet => host.start_kubelet(),
            StopEtcd => {
                host.start_kubelet()?;
                if let Some(original) = host.read_file(&rd.original())?
                    && host.read_file(&plan.manifest)?.as_ref() != Some(&original)
                {
                    host.put_manifest(&rd.original(), &plan.manifest)?;
                }
                // Listening, not healthy: the old cluster may itself lack quorum (a
                // restore of every node rolled back one node at a time). When it answers,
                // it must be the member that ran before.
                host.wait_listening()?;
                if let Some(before) = &plan.before
                    && let Ok(now) = host.local_status()
                    && (now.member_id != before.member_id || now.cluster_id != before.cluster_id)
                {
                    return Err(Error::Attention(format!(
                        "after rollback the member answers as {}/{} instead of {}/{}",
                        now.member_id, now.cluster_id, before.member_id, before.cluster_id
                    )));
                }
                Ok(())
            }
            Preflight | FencePeers | WaitLocal => Ok(()),
        }
    }

    fn rolled_back_state(&self, run: &RunCtx<Plan>) -> String {
        format!(
            "original manifest and old data dir {} in place, member serving with its old identity",
            run.plan.restore.data_dir.display()
        )
    }

    fn rollback_failed_state(&self, run: &RunCtx<Plan>) -> String {
        format!(
            "the old data is at {} (or still at {} if the swap was undone), the original \
             manifest is {}",
            run.plan.aside.display(),
            run.plan.live().display(),
            RunDir::of(run).original().display()
        )
    }
}

/// Undo of start-kubelet: stop etcd again, but only while the restored member has not been
/// part of a quorum. The proof: etcd serves client requests only after it published itself
/// through raft (a quorum commit), so a member whose port listens and that does not answer
/// a status never had a quorum; one that answers had, and one that does not come to listen
/// within the start timeout cannot prove anything — both refuse rather than guess.
fn undo_start(host: &dyn Host, plan: &Plan, rd: &RunDir) -> Result<()> {
    if host.read_file(&plan.manifest)?.is_none() {
        // Already stopped by an earlier attempt of this undo (after the check).
        return Ok(());
    }
    never_served(host, plan, rd)?;
    host.stop_etcd(&plan.manifest, &rd.manifest(), &plan.restore.data_dir)
}

/// The raft rule's proof for going back (see `undo_start`): Ok when etcd does not run on
/// the restored data (manifest out) or runs and never served; a refusal (exit 5, resume
/// finishes) otherwise.
fn never_served(host: &dyn Host, plan: &Plan, rd: &RunDir) -> Result<()> {
    if host.read_file(&plan.manifest)?.is_none() {
        return Ok(());
    }
    let joined = |why: String| {
        Error::Attention(format!(
            "the restored member {} {why}: going back to the old data could break the \
             restored cluster, so the member stays on the restored data; restore the other \
             nodes, then `etcdops restore resume` (journal {})",
            plan.restore.name,
            rd.dir.display()
        ))
    };
    // The manifest is back, so etcd is starting or runs: wait (bounded by the start
    // timeout) until it listens rather than judge a member still starting — a run killed
    // right after start-kubelet is rolled back moments later.
    if let Err(e) = host.wait_listening() {
        return Err(joined(format!(
            "does not run ({}), so it cannot be proved that it never joined a quorum",
            e.one_line()
        )));
    }
    if let Ok(s) = host.local_status() {
        return Err(joined(format!(
            "serves requests (member {} of cluster {}, leader {:x}), so it has been part of a \
             quorum",
            s.member_id, s.cluster_id, s.leader
        )));
    }
    Ok(())
}
