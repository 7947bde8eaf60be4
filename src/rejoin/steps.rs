//! The rejoin run's steps as a saga on `crate::run`: each step's `do` and `undo`, reaching
//! the node and the cluster only through `Host`. The old data is moved aside (never
//! deleted): the data dir itself, or — when the data dir is a mount point, which cannot be
//! renamed — its `member` dir inside it (as `migrate finalize` does).
//!
//! The raft rule for a rejoin: once the old member is removed from the cluster, nothing can
//! bring it back (a removed id never returns; its old data would be refused by the others).
//! So the undo of remove-member asks the cluster: while the old id is still listed, the
//! removal did not happen and going back is safe; once it is gone, rollback stops there
//! and says so, and `resume` finishes forward. Later steps have no undo at all.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Plan;
use crate::error::{Error, Result};
use crate::manifest::flags::{FlagEdit, set_flags_text};
use crate::output::hex_id;
use crate::run::RunDir;
use crate::run::host::Host;
use crate::run::{RunCtx, RunKind, Saga, StepKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejoinStep {
    Preflight,
    StopEtcd,
    StopKubelet,
    MoveAside,
    RemoveMember,
    AddLearner,
    Rewrite,
    StartKubelet,
    WaitCaughtUp,
    Promote,
    VerifyHash,
}

use RejoinStep::*;

impl StepKind for RejoinStep {
    const ALL: &'static [RejoinStep] = &[
        Preflight,
        StopEtcd,
        StopKubelet,
        MoveAside,
        RemoveMember,
        AddLearner,
        Rewrite,
        StartKubelet,
        WaitCaughtUp,
        Promote,
        VerifyHash,
    ];

    fn name(self) -> &'static str {
        match self {
            Preflight => "preflight",
            StopEtcd => "stop-etcd",
            StopKubelet => "stop-kubelet",
            MoveAside => "move-aside",
            RemoveMember => "remove-member",
            AddLearner => "add-learner",
            Rewrite => "rewrite",
            StartKubelet => "start-kubelet",
            WaitCaughtUp => "wait-caught-up",
            Promote => "promote",
            VerifyHash => "verify-hash",
        }
    }

    /// Past the removal there is no going back (the raft rule): remove-member's undo says so.
    fn has_undo(self) -> bool {
        matches!(self, StopEtcd | StopKubelet | MoveAside | RemoveMember)
    }

    fn changes_node(self) -> bool {
        self.index() >= StopEtcd.index()
    }

    fn past_raft_rule(self) -> bool {
        self.index() >= RemoveMember.index()
    }

    /// From stop-etcd until the new member votes, this member is down for etcdops.
    fn member_down(self) -> bool {
        (StopEtcd.index()..=Promote.index()).contains(&self.index())
    }

    fn downtime_starts(self) -> bool {
        self == StopEtcd
    }

    fn downtime_ends(self) -> bool {
        self == Promote
    }
}

pub struct Rejoin<'a> {
    pub host: &'a dyn Host,
}

/// Where add-learner keeps the new member's id: the only output later steps need.
fn new_id_file(run: &RunCtx<Plan>) -> PathBuf {
    run.dir.join("new-member-id")
}

fn new_id(host: &dyn Host, run: &RunCtx<Plan>) -> Result<u64> {
    let path = new_id_file(run);
    let bytes = host
        .read_file(&path)?
        .ok_or_else(|| Error::input(&path, "missing: add-learner did not record the new id"))?;
    let text = String::from_utf8_lossy(&bytes);
    u64::from_str_radix(text.trim(), 16)
        .map_err(|e| Error::input(&path, format!("not a hex member id: {e}")))
}

/// The flags the rewrite step sets (preflight makes the same edit in memory first).
pub fn rewrite_edits(initial_cluster: String) -> [FlagEdit; 2] {
    [
        FlagEdit {
            name: "initial-cluster".into(),
            value: initial_cluster,
        },
        FlagEdit {
            name: "initial-cluster-state".into(),
            value: "existing".into(),
        },
    ]
}

/// The message of the raft rule, for rollback past the removal.
/// A learner that is not promoted within kubeadm's startup probe window is restarted by
/// kubelet (its `/readyz` says not ready while it is a learner, etcd >= 3.5.19): a failed
/// wait says so, and what to do.
fn startup_probe_hint(plan: &Plan, e: Error) -> Error {
    match (plan.startup_window_ms, e) {
        (Some(w), Error::Failed { what, reason }) => Error::Failed {
            what,
            reason: format!(
                "{reason}; the manifest's startup probe asks /readyz, which fails while the member is a learner, so kubelet restarts it {}s after it starts until it is promoted: promote it as soon as it has caught up (`etcdctl member promote ID`) or run `etcdops member rejoin resume`",
                w / 1000
            ),
        },
        (_, e) => e,
    }
}

pub fn removed_message(plan: &Plan, dir: &std::path::Path) -> String {
    format!(
        "member {} ({}) was removed from the cluster: the old member cannot come back (a \
         removed id never returns), so rollback stops here; run `etcdops member rejoin \
         resume` to finish bringing this node back as a new member (journal {}; old data \
         kept at {})",
        plan.me.name,
        plan.old_member_id,
        dir.display(),
        plan.aside.display()
    )
}

impl Saga for Rejoin<'_> {
    type Step = RejoinStep;
    type Plan = Plan;
    const KIND: RunKind = RunKind::Rejoin;

    fn run_step(&self, run: &RunCtx<Plan>, step: RejoinStep) -> Result<serde_json::Value> {
        let plan = run.plan;
        let rd = RunDir::of(run);
        let host = self.host;
        let old_id = plan.old_id()?;
        match step {
            Preflight => Ok(serde_json::json!({"old_member_id": plan.old_member_id})),
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
                    host.stop_etcd(&plan.manifest, &rd.manifest(), &plan.me.data_dir)?;
                }
                Ok(serde_json::Value::Null)
            }
            StopKubelet => host.stop_kubelet().map(|_| serde_json::Value::Null),
            MoveAside => {
                if plan.data_existed && !host.is_dir(&plan.aside)? {
                    host.rename(&plan.moved, &plan.aside)?;
                }
                // The data dir itself stays (a mount point) or is made again, empty: etcd
                // then starts a new member there.
                host.create_dir(&plan.me.data_dir, Some(&plan.aside))?;
                Ok(serde_json::json!({"old_data": plan.data_existed.then_some(&plan.aside)}))
            }
            RemoveMember => {
                let removed = host.member_remove(old_id)?;
                Ok(serde_json::json!({"removed": plan.old_member_id, "now": removed}))
            }
            AddLearner => {
                let id = host.member_add_learner(&plan.me.peer_url)?;
                host.write_file(&new_id_file(run), hex_id(id).as_bytes(), 0o600)?;
                Ok(serde_json::json!({"new_member_id": hex_id(id)}))
            }
            Rewrite => {
                let id = new_id(host, run)?;
                let members = host.members()?;
                let cluster = super::plan::initial_cluster(&plan.me, &members, id)?;
                let path = rd.manifest();
                let bytes = host.read_file(&path)?.ok_or_else(|| {
                    Error::input(&path, "the moved-out manifest is missing from the run dir")
                })?;
                let text = String::from_utf8_lossy(&bytes);
                let new = set_flags_text(&plan.manifest, &text, &rewrite_edits(cluster.clone()))?;
                if new != text {
                    host.write_file(&path, new.as_bytes(), 0o600)?;
                }
                Ok(serde_json::json!({"initial_cluster": cluster}))
            }
            StartKubelet => {
                host.start_kubelet()?;
                if host.read_file(&plan.manifest)?.is_none() {
                    host.put_manifest(&rd.manifest(), &plan.manifest)?;
                }
                Ok(serde_json::Value::Null)
            }
            WaitCaughtUp => {
                let (local, leader) = host
                    .wait_caught_up(plan.catch_up_entries, plan.learner_deadline())
                    .map_err(|e| startup_probe_hint(plan, e))?;
                Ok(serde_json::json!({"raft_index": local, "leader_raft_index": leader}))
            }
            Promote => {
                let id = new_id(host, run)?;
                let attempts = host
                    .promote(id, plan.learner_deadline())
                    .map_err(|e| startup_probe_hint(plan, e))?;
                Ok(serde_json::json!({"new_member_id": hex_id(id), "attempts": attempts}))
            }
            VerifyHash => {
                let id = new_id(host, run)?;
                host.wait_healthy()?;
                let me = host.local_status()?;
                if me.member_id != hex_id(id) {
                    return Err(Error::failed(
                        "verify-hash",
                        format!(
                            "the local member answers as {} instead of the new member {}",
                            me.member_id,
                            hex_id(id)
                        ),
                    ));
                }
                let r = host.health(true)?;
                let cluster = r.cluster.as_ref();
                let agree = cluster.and_then(|c| c.hashes_agree);
                let at = cluster.and_then(|c| c.hash_revision);
                let members = cluster.map_or(0, |c| c.members);
                if !r.healthy || agree != Some(true) || members != plan.voters {
                    return Err(Error::failed(
                        "verify-hash",
                        format!(
                            "cluster not proved whole: healthy {}, {members} of {} members, \
                             HashKV agreement {:?}{}",
                            r.healthy,
                            plan.voters,
                            agree,
                            if r.problems.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", r.problems.join("; "))
                            }
                        ),
                    ));
                }
                let data = serde_json::json!({
                    "old_member_id": plan.old_member_id,
                    "new_member_id": hex_id(id),
                    "hash_revision": at,
                    "note": format!(
                        "member {} rejoined: old id {}, new id {}; HashKV agrees on all {} \
                         members at revision {}; old data kept at {}",
                        plan.me.name, plan.old_member_id, hex_id(id), members,
                        at.unwrap_or(0), plan.aside.display())
                });
                // Each HashKV ran under its own deadline (scaled by the member's db size),
                // not the command timeout; the slow ones are noted.
                Ok(crate::etcd::hashkv::annotate(
                    data,
                    cluster.iter().flat_map(|c| c.hash_kv.iter()),
                ))
            }
        }
    }

    fn undo_step(&self, run: &RunCtx<Plan>, step: RejoinStep) -> Result<()> {
        let plan = run.plan;
        let rd = RunDir::of(run);
        let host = self.host;
        match step {
            RemoveMember => {
                let old = plan.old_id()?;
                if host.members()?.iter().any(|m| m.id == old) {
                    // Not removed (the step failed or was killed before etcd took it).
                    Ok(())
                } else {
                    Err(Error::Attention(removed_message(plan, run.dir)))
                }
            }
            MoveAside => {
                if plan.data_existed && host.is_dir(&plan.aside)? {
                    if plan.mounted {
                        // `moved` is `<data dir>/member`: nothing took its place (etcd has
                        // not run since stop-etcd).
                        if host.is_dir(&plan.moved)? && host.has_entries(&plan.moved)? {
                            return Err(Error::failed(
                                "undo move-aside",
                                format!(
                                    "{} has data again; the old data stays at {}",
                                    plan.moved.display(),
                                    plan.aside.display()
                                ),
                            ));
                        }
                        host.remove_tree(&plan.moved)?;
                    } else {
                        if host.has_entries(&plan.me.data_dir)? {
                            return Err(Error::failed(
                                "undo move-aside",
                                format!(
                                    "{} has data again; the old data stays at {}",
                                    plan.me.data_dir.display(),
                                    plan.aside.display()
                                ),
                            ));
                        }
                        host.remove_tree(&plan.me.data_dir)?;
                    }
                    host.rename(&plan.aside, &plan.moved)?;
                } else if !plan.data_existed
                    && !plan.mounted
                    && host.is_dir(&plan.me.data_dir)?
                    && !host.has_entries(&plan.me.data_dir)?
                {
                    // There was no data dir: remove the empty one move-aside made.
                    host.remove_tree(&plan.me.data_dir)?;
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
                Ok(())
            }
            Preflight | AddLearner | Rewrite | StartKubelet | WaitCaughtUp | Promote
            | VerifyHash => Ok(()),
        }
    }

    fn hold_guard(&self, run: &RunCtx<Plan>) -> Result<()> {
        // The host's connection already lists the other members after this one.
        self.host.hold_guard("rejoin", &run.plan.id, &[])
    }

    fn release_guard(&self) {
        self.host.release_guard();
    }

    fn rolled_back_state(&self, run: &RunCtx<Plan>) -> String {
        format!(
            "original manifest and data dir {} in place, member {} still in the cluster \
             (as broken as before)",
            run.plan.me.data_dir.display(),
            run.plan.old_member_id
        )
    }

    fn rollback_failed_state(&self, run: &RunCtx<Plan>) -> String {
        format!(
            "the old data is at {} (or back at {} if move-aside was undone), the original \
             manifest is {}",
            run.plan.aside.display(),
            run.plan.moved.display(),
            RunDir::of(run).original().display()
        )
    }
}
