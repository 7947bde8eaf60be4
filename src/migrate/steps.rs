//! The migration's ten steps as a saga on `crate::run`: each step's `do` and `undo`, reaching
//! the node only through `Host`. The engine decides order, journaling and rollback policy.

use serde::{Deserialize, Serialize};

use super::{Plan, RunDir};
use crate::error::{Error, Result};
use crate::run::host::Host;
use crate::run::{RunCtx, RunKind, Saga, StepKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrateStep {
    Preflight,
    Snapshot,
    /// Copy the data dir while etcd still runs (`--precopy`), so that the copy after the
    /// stop writes only what changed: downtime that does not grow with the data.
    Precopy,
    StopEtcd,
    StopKubelet,
    Copy,
    Verify,
    Rewrite,
    StartKubelet,
    WaitHealthy,
    PostVerify,
}

use MigrateStep::*;

impl StepKind for MigrateStep {
    const ALL: &'static [MigrateStep] = &[
        Preflight,
        Snapshot,
        Precopy,
        StopEtcd,
        StopKubelet,
        Copy,
        Verify,
        Rewrite,
        StartKubelet,
        WaitHealthy,
        PostVerify,
    ];

    fn name(self) -> &'static str {
        match self {
            Preflight => "preflight",
            Snapshot => "snapshot",
            Precopy => "precopy",
            StopEtcd => "stop-etcd",
            StopKubelet => "stop-kubelet",
            Copy => "copy",
            Verify => "verify",
            Rewrite => "rewrite",
            StartKubelet => "start-kubelet",
            WaitHealthy => "wait-healthy",
            PostVerify => "post-verify",
        }
    }

    fn has_undo(self) -> bool {
        matches!(self, Precopy | StopEtcd | StopKubelet | Copy | StartKubelet)
    }

    fn changes_node(self) -> bool {
        self.index() >= StopEtcd.index()
    }

    /// From start-kubelet on, etcd may have run on the copy (the raft rule).
    fn past_raft_rule(self) -> bool {
        self.index() >= StartKubelet.index()
    }

    /// From stop-etcd until wait-healthy is done the member may be down.
    fn member_down(self) -> bool {
        (StopEtcd.index()..=WaitHealthy.index()).contains(&self.index())
    }

    fn downtime_starts(self) -> bool {
        self == StopEtcd
    }

    fn downtime_ends(self) -> bool {
        self == WaitHealthy
    }
}

/// The migration saga: its steps act on `host`.
pub struct Migration<'a> {
    pub host: &'a dyn Host,
}

impl Saga for Migration<'_> {
    type Step = MigrateStep;
    type Plan = Plan;
    const KIND: RunKind = RunKind::Migrate;

    fn run_step(&self, run: &RunCtx<Plan>, step: MigrateStep) -> Result<serde_json::Value> {
        let plan = run.plan;
        let rd = RunDir::of(run);
        let host = self.host;
        match step {
            // The checks ran before the journal existed; the identity is in the plan.
            Preflight => Ok(crate::etcd::hashkv::annotate(
                serde_json::to_value(&plan.identity).expect("serializes"),
                &plan.hash_kv,
            )),
            Snapshot => {
                if !plan.snapshot {
                    return Ok(serde_json::json!({"skipped": "--no-snapshot"}));
                }
                let path = rd.snapshot();
                host.remove_file(&path)?;
                host.snapshot(&path)?;
                Ok(serde_json::json!({"path": path}))
            }
            Precopy => {
                if !plan.precopy {
                    return Ok(serde_json::json!({"skipped": "no --precopy"}));
                }
                // Replaces the staging dir of an attempt killed mid-way.
                let report = host.precopy(&plan.from, &plan.to)?;
                Ok(
                    serde_json::json!({"files": report.files, "bytes": report.bytes,
                    "staging": report.staging}),
                )
            }
            StopEtcd => {
                // The original is kept first, byte for byte, so that it exists whenever the
                // manifest is not in the manifests dir.
                if host.read_file(&rd.original())?.is_none() {
                    let bytes = host.read_file(&plan.manifest)?.ok_or_else(|| {
                        Error::input(&plan.manifest, "manifest not found and no copy kept")
                    })?;
                    host.write_file(&rd.original(), &bytes, 0o600)?;
                }
                host.stop_etcd(&plan.manifest, &rd.manifest(), &plan.from)?;
                Ok(serde_json::Value::Null)
            }
            StopKubelet => host.stop_kubelet().map(|_| serde_json::Value::Null),
            Copy => {
                if host.has_entries(&plan.to)? {
                    // A previous attempt renamed its copy into place before the crash; the
                    // verify step proves it.
                    return Ok(serde_json::json!({"resumed": "target already complete"}));
                }
                // A sums file from an attempt that died before its rename is stale.
                host.remove_file(&rd.sums())?;
                let report = host.copy(&plan.from, &plan.to, &rd.sums(), plan.precopy)?;
                Ok(
                    serde_json::json!({"files": report.files, "bytes": report.bytes,
                    "digest": report.digest, "bytes_after_stop": report.bytes_after_stop,
                    "precopy": report.precopy, "precopy_fallback": report.precopy_fallback}),
                )
            }
            Verify => {
                let report = host.verify(&plan.from, &plan.to, Some(&rd.sums()))?;
                if !report.identical {
                    let first: Vec<String> = report
                        .differences
                        .iter()
                        .take(5)
                        .map(|d| format!("{} ({})", d.path, d.kind.name()))
                        .collect();
                    return Err(Error::failed(
                        "verify the copy",
                        format!(
                            "{} differences between {} and {}: {}",
                            report.differences.len(),
                            plan.from.display(),
                            plan.to.display(),
                            first.join(", ")
                        ),
                    ));
                }
                Ok(serde_json::json!({"files": report.files, "bytes": report.bytes}))
            }
            Rewrite => {
                host.rewrite(&rd.manifest(), &plan.to, &rd.backups())?;
                Ok(serde_json::Value::Null)
            }
            StartKubelet => {
                host.start_kubelet()?;
                host.put_manifest(&rd.manifest(), &plan.manifest)?;
                Ok(serde_json::Value::Null)
            }
            WaitHealthy => host.wait_healthy().map(|_| serde_json::Value::Null),
            PostVerify => super::post_verify(host, plan),
        }
    }

    fn undo_step(&self, run: &RunCtx<Plan>, step: MigrateStep) -> Result<()> {
        let plan = run.plan;
        let rd = RunDir::of(run);
        let host = self.host;
        match step {
            StartKubelet => undo_start(host, plan, &rd),
            // The pre-copy lives only in the staging dir (the copy's undo removes it too).
            Precopy => match crate::datadir::copy::staging_path_for(&plan.to) {
                Some(staging) => host.remove_tree(&staging),
                None => Ok(()),
            },
            Copy => {
                // A copy killed mid-way leaves its staging dir beside the target.
                if let Some(staging) = crate::datadir::copy::staging_path_for(&plan.to) {
                    host.remove_tree(&staging)?;
                }
                if plan.target_existed {
                    host.empty_dir(&plan.to)
                } else {
                    host.remove_tree(&plan.to)
                }
            }
            StopKubelet => host.start_kubelet(),
            StopEtcd => {
                host.start_kubelet()?;
                // No kept original means the manifest was never moved (it is kept first).
                if let Some(original) = host.read_file(&rd.original())?
                    && host.read_file(&plan.manifest)?.as_ref() != Some(&original)
                {
                    host.put_manifest(&rd.original(), &plan.manifest)?;
                }
                host.wait_healthy()?;
                let now = host.identity()?;
                if now.member_id != plan.identity.member_id
                    || now.cluster_id != plan.identity.cluster_id
                {
                    return Err(Error::Attention(format!(
                        "after rollback the member answers as {}/{} instead of {}/{}",
                        now.member_id,
                        now.cluster_id,
                        plan.identity.member_id,
                        plan.identity.cluster_id
                    )));
                }
                Ok(())
            }
            Preflight | Snapshot | Verify | Rewrite | WaitHealthy | PostVerify => Ok(()),
        }
    }

    /// The guard through the host. Not reaching etcd at all (this member down and the
    /// connection knowing only its own URL, on a resume or rollback) does not stop the run:
    /// finishing it is what brings the member back.
    fn hold_guard(&self, run: &RunCtx<Plan>) -> Result<()> {
        match self
            .host
            .hold_guard("migrate", &run.plan.id, &run.plan.cluster_endpoints)
        {
            Err(e @ Error::Unreachable { .. }) => {
                (run.say)(&format!(
                    "warning: the cluster-wide guard could not be taken ({}); going on",
                    e.one_line()
                ));
                Ok(())
            }
            other => other,
        }
    }

    fn release_guard(&self) {
        self.host.release_guard();
    }

    fn rolled_back_state(&self, _run: &RunCtx<Plan>) -> String {
        "original manifest in place, member healthy with its old identity, source untouched".into()
    }

    fn rollback_failed_state(&self, run: &RunCtx<Plan>) -> String {
        format!(
            "the source data at {} is untouched and the original manifest is {}",
            run.plan.from.display(),
            RunDir::of(run).original().display()
        )
    }
}

/// Undo of start-kubelet: take the rewritten manifest out again, but only while etcd has
/// not run on the new data. Once it has, its raft log is ahead of the old data dir: etcd
/// started there panics ("tocommit(N) is out of range [lastIndex(M)]", verified on 3.4
/// and 3.5) and acknowledged writes could be lost. Then the member stays on the new data
/// and the operator resumes instead.
fn undo_start(host: &dyn Host, plan: &Plan, rd: &RunDir) -> Result<()> {
    let current = host.read_file(&plan.manifest)?;
    let original = host.read_file(&rd.original())?;
    if current.is_none() || current == original {
        return Ok(());
    }
    let has_run = || {
        Error::Attention(format!(
            "etcd has run on the new data dir {}: going back to {} would make it panic \
             (its raft log is ahead) and could lose acknowledged writes, so the member \
             stays on the new data dir; fix the cause, then `etcdops migrate resume` \
             (journal {})",
            plan.to.display(),
            plan.from.display(),
            rd.dir.display()
        ))
    };
    if !host.quiesced(&plan.to)? {
        return Err(has_run());
    }
    let aside = rd.dir.join("etcd.yaml.rewritten");
    host.stop_etcd(&plan.manifest, &aside, &plan.to)?;
    let recorded = host.read_file(&rd.sums())?.unwrap_or_default();
    if recorded.is_empty() || host.tree_sums(&plan.to)?.as_bytes() != recorded.as_slice() {
        host.put_manifest(&aside, &plan.manifest)?;
        return Err(has_run());
    }
    Ok(())
}
