//! `etcdops member rejoin [--yes] | status | resume | rollback`: args -> the manifest in
//! force, the node host reaching the cluster through the other members -> `rejoin` ->
//! printer. Without `--yes` only the checks and the plan (nothing changed).

use std::path::PathBuf;

use crate::cli::{GlobalArgs, MemberCommand, RejoinCommand};
use crate::error::Result;
use crate::manifest::DEFAULT_MANIFEST;
use crate::output::{self, Format, Render, Table};
use crate::rejoin::{self, Outcome, PlanReport, RunOptions};
use crate::run::Cancel;
use crate::run::host::RealHost;

pub fn exec(global: &GlobalArgs, cmd: MemberCommand) -> Result<()> {
    let MemberCommand::Rejoin(args) = cmd;
    let format = super::format(global);
    let manifest = global
        .manifest
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MANIFEST));
    let state_dir = global.node.state_dir.clone();
    if let Some(RejoinCommand::Status(a)) = &args.command {
        return super::node_host::print_status(&state_dir, a.id.as_deref(), format);
    }
    let say = super::say(format);
    super::node_host::require_root("member rejoin")?;
    let cancel = Cancel::new(super::datadir::cancel_on_signals()?);
    let opts = RunOptions {
        manifest: manifest.clone(),
        state_dir: state_dir.clone(),
        say: &say,
        cancel: Some(&cancel),
        unfinished: crate::runs::check_none_unfinished,
        catch_up_timeout: args.catch_up_timeout,
    };
    let (run_id, cluster) = match &args.command {
        Some(RejoinCommand::Resume(a) | RejoinCommand::Rollback(a)) => {
            (Some(a.run.id.clone()), a.cluster.cluster_endpoints.clone())
        }
        _ => (None, args.cluster.cluster_endpoints.clone()),
    };
    // Refusals that need no etcd come first, so a broken cluster does not hide them.
    match &run_id {
        None => {
            crate::runs::check_none_unfinished(&state_dir)?;
            rejoin::Me::from_manifest(&manifest)?;
        }
        Some(id) => {
            crate::run::find_run(&state_dir, id.as_deref())?;
        }
    }
    // While a run has the manifest moved out, connection discovery reads the run's copy.
    let discovery = match &run_id {
        None => manifest.clone(),
        Some(id) => crate::migrate::discovery_manifest(&state_dir, id.as_deref(), &manifest)?,
    };
    let bar = super::datadir::Bar::new(format);
    let host = || -> Result<RealHost<'_>> {
        let mut host = super::node_host::real_host(
            global,
            super::node_host::HostParts {
                manifest: &manifest,
                discovery: discovery.clone(),
                say: &say,
                progress: &bar,
                cancel: Some(&cancel),
                quota: 0,
            },
        )?;
        // This member first (it is the one judged and restarted), then the others: every
        // membership change and the guard go through them.
        let others = rejoin::other_members(&host.conn, &discovery, &cluster)?;
        host.conn.endpoints.extend(others);
        Ok(host)
    };
    match args.command {
        None if !args.yes => {
            let host = host()?;
            let report = rejoin::plan_only(&host, &opts)?;
            output::print(format, &report);
            Ok(())
        }
        None => {
            let host = host()?;
            print_outcome(format, rejoin::apply(&host, &opts)?)
        }
        Some(RejoinCommand::Resume(a)) => {
            let host = host()?;
            print_outcome(format, rejoin::resume(&host, &opts, a.run.id.as_deref())?)
        }
        Some(RejoinCommand::Rollback(a)) => {
            let host = host()?;
            print_outcome(format, rejoin::rollback(&host, &opts, a.run.id.as_deref())?)
        }
        Some(RejoinCommand::Status(_)) => unreachable!("handled above"),
    }
}

fn print_outcome(format: Format, outcome: Outcome) -> Result<()> {
    output::print(format, &outcome.report);
    outcome.result
}

impl Render for PlanReport {
    fn table(&self) -> String {
        let p = &self.plan;
        let mut t = Table::new(["FIELD", "VALUE"]);
        t.row([
            "member".to_string(),
            format!("{} ({}) at {}", p.me.name, p.old_member_id, p.me.peer_url),
        ]);
        t.row(["voting members".to_string(), p.voters.to_string()]);
        if let Some(why) = &p.stranger {
            t.row(["stranger".to_string(), why.clone()]);
        }
        t.row(["data dir".to_string(), p.me.data_dir.display().to_string()]);
        t.row([
            "old data to".to_string(),
            if p.data_existed {
                format!("{} -> {}", p.moved.display(), p.aside.display())
            } else {
                format!("{} (absent: nothing to keep)", p.moved.display())
            },
        ]);
        let mut out = t.render();
        out.push_str("\nsteps: ");
        out.push_str(&self.steps.join(" -> "));
        out.push_str(
            "\nnothing was changed; run `etcdops member rejoin --yes` to replace this member \
             (its id changes)\n",
        );
        out
    }
}
