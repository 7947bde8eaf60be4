//! `etcdops restore plan --from ARCHIVE|SNAPSHOT`: args -> the manifest in force and the
//! restore tool -> `restore::plan` -> printer. Changes nothing. (`restore apply` and the
//! run commands are to come as a saga on `crate::run`.)

use crate::backup::tool;
use crate::cli::{GlobalArgs, RestoreCommand};
use crate::error::Result;
use crate::output::{self, Render, Table};
use crate::restore::plan::{self, PlanReport, Source};

pub fn exec(global: &GlobalArgs, cmd: RestoreCommand) -> Result<()> {
    match cmd {
        RestoreCommand::Plan(args) => {
            let manifest = super::given(global).manifest_path();
            let p = plan::plan(&manifest, &args.from)?;
            let path = std::env::var_os("PATH");
            let beside = tool::manifest_etcd_dir(&manifest);
            let t = tool::find_restore_tool(
                args.etcdutl.as_deref(),
                path.as_deref(),
                beside.as_deref(),
            )?;
            output::print(super::format(global), &PlanReport::new(p, &t));
            Ok(())
        }
    }
}

impl Render for PlanReport {
    fn table(&self) -> String {
        let p = &self.plan;
        let (kind, from, id) = match &p.source {
            Source::Archive { path, id } => ("archive", path, id),
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
        t.row(["cluster token".to_string(), p.token.clone()]);
        t.row(["data dir".to_string(), p.data_dir.display().to_string()]);
        t.row([
            "restore into".to_string(),
            p.restore_dir.display().to_string(),
        ]);
        t.row(["restore tool".to_string(), self.tool.display().to_string()]);
        let mut out = t.render();
        out.push_str("\nwith etcd stopped on every node (manifest moved out), on this node:\n");
        if let Some(x) = &self.extract {
            out.push_str(&format!("  {x}\n"));
        }
        out.push_str(&format!("  {}\n", self.restore));
        out.push_str(
            "then point the manifest's data hostPath at the restore dir (etcdops manifest set-data-path) and put it back; see docs/runbooks/snapshot-backup-restore.md\n",
        );
        out
    }
}
