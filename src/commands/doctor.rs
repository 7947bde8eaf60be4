//! `etcdops doctor`: flags -> `doctor::Options` -> `doctor::run` -> printer; the report
//! knows its verdict (exit 0 when nothing fails, 4 otherwise).

use crate::cli::{DoctorArgs, GlobalArgs};
use crate::error::Result;

pub fn exec(global: &GlobalArgs, args: DoctorArgs) -> Result<()> {
    let given = super::given(global);
    let opts = crate::doctor::Options {
        manifest: given.manifest_path(),
        state_dir: global.node.state_dir.clone(),
        kubelet: super::kubelet_commands(global),
        given,
        quota_flag: args.quota.quota_backend_bytes,
        only: args.check,
        skip: args.skip,
        disk_probe: args.disk_probe && !args.no_disk_probe,
    };
    let report = crate::doctor::run(opts)?;
    crate::output::print(super::format(global), &report);
    report.verdict()
}
