//! `etcdops maintain [--rule EXPR]`: the routine job for a systemd timer (see
//! contrib/systemd/). The report is a defrag report; its table comes from `defrag`.

use crate::cli::{GlobalArgs, MaintainArgs};
use crate::error::Result;
use crate::etcd::maintain::{self, DEFAULT_RULE};
use crate::etcd::quota_backend_bytes;
use crate::etcd::rule::Rule;
use crate::output;

pub fn exec(global: &GlobalArgs, args: MaintainArgs) -> Result<()> {
    let rule = Rule::parse(args.rolling.rule.as_deref().unwrap_or(DEFAULT_RULE))?;
    let given = super::given(global);
    let conn = given.resolve()?;
    let quota = quota_backend_bytes(args.quota.quota_backend_bytes, &given.manifest_path())?;
    let opts = super::defrag::options(&args.rolling, Some(rule), quota, args.dry_run.dry_run);
    let report = super::block_on(maintain::maintain(&conn, &opts))?;
    output::print(super::format(global), &report);
    report.verdict("maintain")
}
