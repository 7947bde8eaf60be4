//! `etcdops compact [--revision R | --retain N] [--no-physical]`.

use crate::cli::{CompactArgs, GlobalArgs};
use crate::error::Result;
use crate::etcd::compact::{self, CompactOptions, CompactReport, Target};
use crate::output::{self, Render, millis};

pub fn exec(global: &GlobalArgs, args: CompactArgs) -> Result<()> {
    let conn = super::given(global).resolve()?;
    let target = match (args.revision, args.retain) {
        (Some(r), _) => Target::Revision(r),
        (None, Some(n)) => Target::Retain(n),
        (None, None) => Target::Current,
    };
    let opts = CompactOptions {
        target,
        physical: !args.no_physical,
        timeout: args.timeout,
    };
    let report = super::block_on(compact::compact(&conn, &opts))?;
    output::print(super::format(global), &report);
    Ok(())
}

impl Render for CompactReport {
    fn table(&self) -> String {
        let mut out = match (self.compacted_to, self.already_compacted) {
            (Some(r), false) => format!(
                "compacted to revision {r} ({}) through {} in {}\n",
                if self.physical {
                    "physical"
                } else {
                    "not physical"
                },
                self.endpoint,
                millis(self.took_ms)
            ),
            _ => String::new(),
        };
        if let Some(n) = &self.note {
            out.push_str(n);
            out.push('\n');
        }
        out.push_str(&format!("current revision: {}\n", self.revision));
        out
    }
}
