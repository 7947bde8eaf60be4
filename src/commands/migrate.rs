//! `etcdops migrate plan|apply|status|resume|rollback|finalize`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use crate::cli::{GlobalArgs, MigrateArgs, MigrateCommand};
use crate::error::{Error, Result};
use crate::etcd::quota_backend_bytes;
use crate::manifest::DEFAULT_MANIFEST;
use crate::migrate::preflight::{self, PreflightInput, PreflightReport};
use crate::migrate::{self, Outcome, RunOptions};
use crate::output::{self, Format, Render, Table, millis};
use crate::run::host::RealHost;
use crate::run::{Cancel, RunReport};

pub fn exec(global: &GlobalArgs, args: MigrateArgs) -> Result<()> {
    let format = super::format(global);
    let manifest = global
        .manifest
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MANIFEST));
    let state_dir = global.node.state_dir.clone();
    let say = super::say(format);
    // Before anything else (even reading certificates): the rest needs root anyway.
    let changes_node = !matches!(
        args.command,
        MigrateCommand::Plan(_) | MigrateCommand::Status(_)
    );
    if changes_node {
        super::node_host::require_root("migrate")?;
    }
    // Ctrl-C or SIGTERM while the node is changing: finish the step, then roll back (or,
    // once etcd runs on the copy, finish the run). A second signal kills as usual.
    let cancel = if changes_node {
        Some(Cancel::new(super::datadir::cancel_on_signals()?))
    } else {
        None
    };
    let cancel = cancel.as_ref();
    let target = match &args.command {
        MigrateCommand::Plan(a) => Some(a),
        MigrateCommand::Apply(a) => Some(&a.target),
        _ => None,
    };
    let fs_policy = crate::datadir::target::FsPolicy {
        allow_volatile: target.is_some_and(|a| a.allow_volatile_target),
        same_filesystem: target.is_some_and(|a| a.same_filesystem),
    };
    let opts = RunOptions {
        manifest: manifest.clone(),
        state_dir: state_dir.clone(),
        say: &say,
        cancel,
        unfinished: crate::runs::check_none_unfinished,
        fs_policy,
    };
    let quota_flag = match &args.command {
        MigrateCommand::Plan(a) => a.quota.quota_backend_bytes,
        MigrateCommand::Apply(a) => a.target.quota.quota_backend_bytes,
        _ => None,
    };
    // While a run has the manifest moved out, connection discovery reads the run's copy.
    let run_id = match &args.command {
        MigrateCommand::Resume(a) | MigrateCommand::Rollback(a) => Some(a.id.clone()),
        _ => None,
    };
    let discovery_manifest = || -> Result<Option<PathBuf>> {
        match &run_id {
            None => Ok(global.manifest.clone()),
            Some(id) => migrate::discovery_manifest(&state_dir, id.as_deref(), &manifest).map(Some),
        }
    };
    let bar = super::datadir::Bar::new(format);
    // Built lazily: status and finalize need no etcd.
    let host = || -> Result<RealHost<'_>> {
        let read_from = discovery_manifest()?.unwrap_or_else(|| manifest.clone());
        super::node_host::real_host(
            global,
            super::node_host::HostParts {
                manifest: &manifest,
                discovery: read_from,
                say: &say,
                progress: &bar,
                cancel,
                quota: quota_backend_bytes(quota_flag, &manifest)?,
            },
        )
    };
    let root = nix::unistd::geteuid().is_root();
    // An unfinished run may have moved the manifest out: say that, not "manifest missing".
    // Not for a non-root plan: the runs dir is root's (0700), and the plan's own
    // no-unfinished-run row reports it after the root row that decides the exit code (4).
    let plan_as_user = matches!(args.command, MigrateCommand::Plan(_)) && !root;
    if matches!(
        args.command,
        MigrateCommand::Plan(_) | MigrateCommand::Apply(_)
    ) && !plan_as_user
    {
        crate::runs::check_none_unfinished(&state_dir)?;
    }
    match args.command {
        MigrateCommand::Plan(a) => {
            let host = match host() {
                Ok(host) => host,
                // A kubeadm manifest and its keys are root's: as another user the plan
                // still shows the root row (exit 4), and why the rest could not be checked.
                Err(e) if plan_as_user => {
                    let report = not_root_plan(&a.to, &e);
                    output::print(format, &report);
                    return Err(report.refusal.unwrap_or(e));
                }
                Err(e) => return Err(e),
            };
            let report = preflight::run(
                &host,
                &PreflightInput {
                    manifest: &manifest,
                    state_dir: &state_dir,
                    to: &a.to,
                    endpoint: host.conn.endpoints.first().map_or("", String::as_str),
                    snapshot: true,
                    precopy: false,
                    id: "plan".into(),
                    unfinished: crate::runs::check_none_unfinished,
                    fs_policy,
                },
            );
            output::print(format, &report);
            match report.refusal {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        MigrateCommand::Apply(a) => {
            let host = host()?;
            if !a.yes {
                confirm(&format!(
                    "Migrate etcd's data dir (manifest {}) to {}? This stops etcd and kubelet on \
                     this node for the copy.",
                    manifest.display(),
                    a.target.to.display()
                ))?;
            }
            let endpoint = host.conn.endpoints.first().cloned().unwrap_or_default();
            let mut outcome = migrate::apply_with(
                &host,
                &opts,
                &a.target.to,
                !a.no_snapshot,
                a.precopy,
                &endpoint,
            )?;
            if outcome.result.is_ok() {
                outcome.report.notes.push(format!(
                    "make kubeadm keep the new path: {}",
                    preflight::kubeadm_config_hint(&a.target.to)
                ));
            }
            print_outcome(format, outcome)
        }
        MigrateCommand::Status(a) => {
            // A node that never ran anything has nothing unfinished: exit 0, saying so (a
            // script asking "is anything unfinished?" must not see a usage error). A run
            // named by --id that does not exist stays a usage error (exit 2).
            if a.id.is_none() && crate::run::list_runs(&state_dir)?.is_empty() {
                output::print(
                    format,
                    &NoRun {
                        id: None,
                        state: "none",
                        unfinished: false,
                        runs_dir: crate::run::runs_dir(&state_dir),
                    },
                );
                return Ok(());
            }
            super::node_host::print_status(&state_dir, a.id.as_deref(), format)
        }
        MigrateCommand::Resume(a) => {
            let host = host()?;
            print_outcome(format, migrate::resume(&host, &opts, a.id.as_deref())?)
        }
        MigrateCommand::Rollback(a) => {
            let host = host()?;
            print_outcome(format, migrate::rollback(&host, &opts, a.id.as_deref())?)
        }
        MigrateCommand::Finalize(a) => {
            if a.remove_old && !a.yes {
                confirm("Delete the old etcd data dir for good?")?;
            }
            let host = host()?;
            let report = migrate::finalize(&host, &opts, a.run.id.as_deref(), a.remove_old)?;
            output::print(format, &report);
            Ok(())
        }
    }
}

/// The plan a non-root user gets when even the manifest cannot be read: the root row that
/// refuses (exit 4, as DESIGN.md's preflight says), the error that stopped the rest, and the
/// steps and kubeadm-config change a root run would show.
fn not_root_plan(to: &Path, cause: &Error) -> PreflightReport {
    let refusal = Error::refused(
        "migrate",
        "must run as root (it stops kubelet and writes the manifest and data dirs)",
    );
    let user = nix::unistd::geteuid();
    PreflightReport {
        ok: false,
        checks: vec![
            preflight::Check {
                name: "root".into(),
                ok: false,
                detail: refusal.one_line(),
            },
            preflight::Check {
                name: "manifest".into(),
                ok: false,
                detail: format!("not checked as uid {user}: {}", cause.one_line()),
            },
        ],
        warnings: Vec::new(),
        from: None,
        to: to.to_path_buf(),
        steps: <migrate::MigrateStep as crate::run::StepKind>::ALL
            .iter()
            .map(|s| crate::run::StepKind::name(*s).to_string())
            .collect(),
        kubeadm_config: preflight::kubeadm_config_hint(to),
        plan: None,
        refusal: Some(refusal),
    }
}

/// `migrate status` on a node with no run: `id` null, `state` "none", nothing unfinished.
#[derive(serde::Serialize)]
struct NoRun {
    id: Option<String>,
    state: &'static str,
    unfinished: bool,
    runs_dir: PathBuf,
}

impl Render for NoRun {
    fn table(&self) -> String {
        format!(
            "no run in {}: this node never migrated, restored or rejoined with etcdops; nothing is unfinished\n",
            self.runs_dir.display()
        )
    }
}

fn print_outcome(format: Format, outcome: Outcome) -> Result<()> {
    output::print(format, &outcome.report);
    outcome.result
}

/// Ask on a terminal; off a terminal, refuse (the operator must say --yes).
pub(crate) fn confirm(question: &str) -> Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Error::Usage(
            "not on a terminal: pass --yes to confirm".into(),
        ));
    }
    eprint!("{question} Type yes to go on: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::io("read answer", "/dev/stdin", e))?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(Error::Usage("not confirmed; nothing changed".into()))
    }
}

impl Render for PreflightReport {
    fn table(&self) -> String {
        let mut t = Table::new(["CHECK", "RESULT", "DETAIL"]);
        for c in &self.checks {
            t.row([
                c.name.clone(),
                if c.ok { "ok" } else { "FAILED" }.to_string(),
                c.detail.clone(),
            ]);
        }
        let mut out = t.render();
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out.push_str("\nsteps: ");
        out.push_str(&self.steps.join(" -> "));
        out.push_str("\nafterwards: ");
        out.push_str(&self.kubeadm_config);
        out.push('\n');
        out.push_str(if self.ok {
            "verdict: ready to migrate\n"
        } else {
            "verdict: REFUSED\n"
        });
        out
    }
}

impl Render for RunReport {
    fn table(&self) -> String {
        let mut out = format!(
            "run {}: {} -> {}: {}\n",
            self.id,
            self.from.display(),
            self.to.display(),
            self.state.name()
        );
        let mut t = Table::new(["STEP", "STATE", "TOOK"]);
        for s in &self.steps {
            t.row([
                s.name.clone(),
                s.state.name().to_string(),
                s.took_ms.map_or("-".into(), millis),
            ]);
        }
        out.push_str(&t.render());
        if let Some(d) = self.downtime_ms {
            out.push_str(&format!("downtime: {}\n", millis(d)));
        }
        if let Some(id) = &self.identity {
            out.push_str(&format!(
                "identity: member {} of cluster {}, revision {}, HashKV {:08x}\n",
                id.member_id, id.cluster_id, id.revision, id.hash
            ));
        }
        if let Some(old) = &self.old_member_id {
            let new = self.new_member_id.as_deref().unwrap_or("-");
            out.push_str(&format!("member: old id {old}, new id {new}\n"));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("error: {e}\n"));
        }
        out.push_str(&format!("journal: {}\n", self.run_dir.display()));
        out
    }
}
