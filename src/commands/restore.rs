//! `etcdops restore plan|apply|status|resume|rollback --from ARCHIVE|SNAPSHOT`: args -> the
//! manifest in force, the restore tool and the node host -> `restore` -> printer. `plan`
//! changes nothing; `apply` and the run commands drive the restore saga.

use std::path::{Path, PathBuf};

use crate::backup::tool;
use crate::cli::{GlobalArgs, RestoreCommand, RestorePlanArgs};
use crate::error::Result;
use crate::manifest::DEFAULT_MANIFEST;
use crate::output::{self, Format, Render, Table};
use crate::restore::plan::{self, PlanReport, Source};
use crate::restore::{self, Outcome, RunOptions};
use crate::run::Cancel;
use crate::run::host::RealHost;

fn find_tool(manifest: &Path, flag: Option<&Path>) -> Result<tool::RestoreTool> {
    let path = std::env::var_os("PATH");
    let beside = tool::manifest_etcd_dir(manifest);
    tool::find_restore_tool(flag, path.as_deref(), beside.as_deref())
}

pub fn exec(global: &GlobalArgs, cmd: RestoreCommand) -> Result<()> {
    if let RestoreCommand::Plan(args) = &cmd {
        let manifest = super::given(global).manifest_path();
        let mut p = plan::plan(&manifest, &args.from, args.identity.as_deref())?;
        if restore::data_dir_is_mount_point(&p.data_dir) {
            p.inside_mount_point();
        }
        let t = find_tool(&manifest, args.etcdutl.as_deref())?;
        p.revision_flags = revision_flags(args);
        p.revision_flags.check(&t)?;
        output::print(super::format(global), &PlanReport::new(p, &t));
        return Ok(());
    }
    let format = super::format(global);
    let manifest = global
        .manifest
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MANIFEST));
    let state_dir = global.node.state_dir.clone();
    if let RestoreCommand::Status(a) = &cmd {
        return super::node_host::print_status(&state_dir, a.id.as_deref(), format);
    }
    let say = super::say(format);
    super::node_host::require_root("restore")?;
    let cancel = Cancel::new(super::datadir::cancel_on_signals()?);
    let opts = RunOptions {
        manifest: manifest.clone(),
        state_dir: state_dir.clone(),
        say: &say,
        cancel: Some(&cancel),
        unfinished: crate::runs::check_none_unfinished,
    };
    let run_id = match &cmd {
        RestoreCommand::Resume(a) | RestoreCommand::Rollback(a) => Some(a.id.clone()),
        _ => None,
    };
    // While a run has the manifest moved out, connection discovery reads the run's copy.
    let discovery = match &run_id {
        None => manifest.clone(),
        Some(id) => crate::migrate::discovery_manifest(&state_dir, id.as_deref(), &manifest)?,
    };
    let bar = super::datadir::Bar::new(format);
    let host = || -> Result<RealHost<'_>> {
        super::node_host::real_host(
            global,
            super::node_host::HostParts {
                manifest: &manifest,
                discovery: discovery.clone(),
                say: &say,
                progress: &bar,
                cancel: Some(&cancel),
                quota: 0,
            },
        )
    };
    match cmd {
        RestoreCommand::Apply(a) => {
            // Refusals that need no etcd come first, so a broken cluster does not hide them.
            crate::runs::check_none_unfinished(&state_dir)?;
            restore::apply_plan(
                &state_dir,
                &manifest,
                &a.plan.from,
                a.plan.identity.as_deref(),
                a.token.as_deref(),
            )?;
            let t = find_tool(&manifest, a.plan.etcdutl.as_deref())?;
            let flags = revision_flags(&a.plan);
            flags.check(&t)?;
            let apply = restore::ApplyOptions {
                identity: a.plan.identity.clone(),
                revision_flags: flags,
                token: a.token.clone(),
                quorum_timeout: a.quorum_timeout,
                fence_timeout: a.fence_timeout,
            };
            if !a.yes {
                super::migrate::confirm(&format!(
                    "Restore this node's etcd from {}? This stops etcd and kubelet here and \
                     starts a new cluster from the snapshot (the old data is kept aside).",
                    a.plan.from.display()
                ))?;
            }
            let host = host()?;
            print_outcome(
                format,
                restore::apply(&host, &opts, &a.plan.from, &t, &apply)?,
            )
        }
        RestoreCommand::Resume(a) => {
            let host = host()?;
            print_outcome(format, restore::resume(&host, &opts, a.id.as_deref())?)
        }
        RestoreCommand::Rollback(a) => {
            let host = host()?;
            print_outcome(format, restore::rollback(&host, &opts, a.id.as_deref())?)
        }
        RestoreCommand::Plan(_) | RestoreCommand::Status(_) => unreachable!("handled above"),
    }
}

fn revision_flags(args: &RestorePlanArgs) -> plan::RevisionFlags {
    plan::RevisionFlags {
        bump_revision: args.bump_revision,
        mark_compacted: args.mark_compacted,
    }
}

fn print_outcome(format: Format, outcome: Outcome) -> Result<()> {
    output::print(format, &outcome.report);
    outcome.result
}
impl Render for PlanReport {
    fn table(&self) -> String {
        let p = &self.plan;
        let (kind, from, id) = match &p.source {
            Source::Archive { path, id, .. } => ("archive", path, id),
            Source::Snapshot { path, id } => ("snapshot", path, id),
        };
        let mut t = Table::new(["FIELD", "VALUE"]);
        t.row([
            "from".to_string(),
            format!("{} ({kind}, id {id})", from.display()),
        ]);
        t.row([
            "member".to_string(),
            format!("{} at {}", p.name, p.peer_url),
        ]);
        t.row(["initial cluster".to_string(), p.initial_cluster.clone()]);
        t.row([
            "cluster token".to_string(),
            format!(
                "{} (this attempt's: the same on every node, never again)",
                p.token
            ),
        ]);
        t.row([
            "restored ids".to_string(),
            format!(
                "member {} of cluster {}",
                p.restored_member_id, p.restored_cluster_id
            ),
        ]);
        t.row(["data dir".to_string(), p.data_dir.display().to_string()]);
        t.row([
            "restore into".to_string(),
            p.restore_dir.display().to_string(),
        ]);
        t.row(["restore tool".to_string(), self.tool.display().to_string()]);
        let mut out = t.render();
        out.push_str(&format!(
            "\nrestore every node of this attempt with the same token, all at once:\n  {}\n",
            self.apply
        ));
        out.push_str(
            "\nor by hand, with etcd stopped on every node (manifest moved out), on this node:\n",
        );
        if let Some(x) = &self.extract {
            out.push_str(&format!("  {x}\n"));
        }
        out.push_str(&format!("  {}\n", self.restore));
        if p.restore_dir.starts_with(&p.data_dir) {
            out.push_str(&format!(
                "then (the data dir is a mount point) move {data}/member aside inside it and {}/member to {data}/member, and put the manifest back; see docs/runbooks/snapshot-backup-restore.md\n",
                p.restore_dir.display(),
                data = p.data_dir.display()
            ));
        } else {
            out.push_str(
                "then point the manifest's data hostPath at the restore dir (etcdops manifest set-data-path) and put it back; see docs/runbooks/snapshot-backup-restore.md\n",
            );
        }
        out
    }
}
