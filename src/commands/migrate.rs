//! `etcdops migrate plan|apply|status|resume|rollback|finalize`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use crate::cli::{GlobalArgs, MigrateArgs, MigrateCommand};
use crate::error::{Error, Result};
use crate::etcd::quota_backend_bytes;
use crate::manifest::DEFAULT_MANIFEST;
use crate::migrate::host::RealHost;
use crate::migrate::preflight::{self, PreflightInput, PreflightReport};
use crate::migrate::{self, Outcome, RunOptions, RunReport};
use crate::output::{self, Format, Render, Table, millis};

pub fn exec(global: &GlobalArgs, args: MigrateArgs) -> Result<()> {
    let format = super::format(global);
    let manifest = global
        .manifest
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MANIFEST));
    let state_dir = global.node.state_dir.clone();
    let say = |line: &str| {
        if format == Format::Table {
            eprintln!("{line}");
        }
    };
    // Before anything else (even reading certificates): the rest needs root anyway.
    let changes_node = !matches!(
        args.command,
        MigrateCommand::Plan(_) | MigrateCommand::Status(_)
    );
    if changes_node && !nix::unistd::geteuid().is_root() {
        return Err(Error::refused(
            "migrate",
            "must run as root (it stops kubelet and writes the manifest and data dirs)",
        ));
    }
    // Ctrl-C or SIGTERM while the node is changing: finish the step, then roll back (or,
    // once etcd runs on the copy, finish the run). A second signal kills as usual.
    let cancel = if changes_node {
        Some(super::datadir::cancel_on_signals()?)
    } else {
        None
    };
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
        if global.manifest.is_some() && manifest.exists() || run_id.is_none() {
            return Ok(global.manifest.clone());
        }
        if manifest.exists() {
            return Ok(Some(manifest.clone()));
        }
        let run = migrate::RunDir {
            dir: migrate::find_run(&state_dir, run_id.as_ref().and_then(|i| i.as_deref()))?,
        };
        Ok(Some(if run.original().exists() {
            run.original()
        } else {
            run.manifest()
        }))
    };
    let bar = super::datadir::Bar::new(format);
    // Built lazily: status and finalize need no etcd.
    let host = || -> Result<RealHost<'_>> {
        let mut given = super::given(global);
        given.manifest = discovery_manifest()?;
        // issue 11: judge the member this node's manifest runs, whatever ETCDCTL_* names.
        let read_from = given.manifest.clone().unwrap_or_else(|| manifest.clone());
        if let Ok(pod) = crate::manifest::StaticPod::load(&read_from) {
            given.endpoints =
                crate::etcd::member::local_endpoints(&given.endpoints, &pod, &read_from)?;
            given.manifest = Some(read_from.clone());
        }
        let mut conn = given.resolve()?;
        // The member's name (guard, member check) comes from the manifest even when flags
        // gave every connection detail.
        conn.manifest.get_or_insert(read_from);
        Ok(RealHost {
            conn,
            kubelet: super::kubelet_commands(global),
            manifests_dir: manifest
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            stop_timeout: global.node.stop_timeout,
            start_timeout: global.node.start_timeout,
            quota: quota_backend_bytes(quota_flag, &manifest)?,
            progress: &bar,
            cancel,
            guard: Default::default(),
        })
    };
    // An unfinished run may have moved the manifest out: say that, not "manifest missing".
    if matches!(
        args.command,
        MigrateCommand::Plan(_) | MigrateCommand::Apply(_)
    ) {
        preflight::check_runs(&state_dir)?;
    }
    match args.command {
        MigrateCommand::Plan(a) => {
            let host = host()?;
            let report = preflight::run(
                &host,
                &PreflightInput {
                    manifest: &manifest,
                    state_dir: &state_dir,
                    to: &a.to,
                    endpoint: host.conn.endpoints.first().map_or("", String::as_str),
                    snapshot: true,
                    id: "plan".into(),
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
            let mut outcome =
                migrate::apply(&host, &opts, &a.target.to, !a.no_snapshot, &endpoint)?;
            if outcome.result.is_ok() {
                outcome.report.notes.push(format!(
                    "make kubeadm keep the new path: {}",
                    preflight::kubeadm_config_hint(&a.target.to)
                ));
            }
            print_outcome(format, outcome)
        }
        MigrateCommand::Status(a) => {
            let report = migrate::status(&state_dir, a.id.as_deref())?;
            output::print(format, &report);
            let at = report
                .steps
                .iter()
                .rfind(|s| s.state != "pending")
                .map_or(String::new(), |s| format!(" at step {}", s.name));
            let partly_undone = report.steps.iter().any(|s| s.state == "undone");
            match report.state.as_str() {
                "interrupted" | "failed" if partly_undone => Err(Error::Attention(format!(
                    "run {} is {}{} and partly rolled back; fix the cause, then `etcdops migrate \
                     rollback` finishes returning to {}",
                    report.id,
                    report.state,
                    at,
                    report.from.display()
                ))),
                "interrupted" | "failed" => Err(Error::Attention(format!(
                    "run {} is {}{}; `etcdops migrate resume` finishes it, `etcdops migrate \
                     rollback` returns to {} while etcd has not run on the new data",
                    report.id,
                    report.state,
                    at,
                    report.from.display()
                ))),
                _ => Ok(()),
            }
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
            let report = migrate::finalize(&opts, a.run.id.as_deref(), a.remove_old)?;
            output::print(format, &report);
            Ok(())
        }
    }
}

fn print_outcome(format: Format, outcome: Outcome) -> Result<()> {
    output::print(format, &outcome.report);
    outcome.result
}

/// Ask on a terminal; off a terminal, refuse (the operator must say --yes).
fn confirm(question: &str) -> Result<()> {
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
            self.state
        );
        let mut t = Table::new(["STEP", "STATE", "TOOK"]);
        for s in &self.steps {
            t.row([
                s.name.clone(),
                s.state.clone(),
                s.took_ms.map_or("-".into(), millis),
            ]);
        }
        out.push_str(&t.render());
        if let Some(d) = self.downtime_ms {
            out.push_str(&format!("downtime: {}\n", millis(d)));
        }
        out.push_str(&format!(
            "identity: member {} of cluster {}, revision {}, HashKV {:08x}\n",
            self.identity.member_id,
            self.identity.cluster_id,
            self.identity.revision,
            self.identity.hash
        ));
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
