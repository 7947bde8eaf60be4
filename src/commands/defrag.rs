//! `etcdops defrag [--cluster] [--rule EXPR] [--compact] [--move-leader] [--wait-between D]
//! [--dry-run]`: arguments to options, the rolling defrag, the report, the verdict. The table
//! form of the report is shared with `maintain`.

use crate::cli::{DefragArgs, GlobalArgs, RollingArgs};
use crate::error::Result;
use crate::etcd::defrag::{self, DefragOptions, DefragReport};
use crate::etcd::quota_backend_bytes;
use crate::etcd::rule::Rule;
use crate::output::{self, Render, Table, bytes, millis};

pub fn exec(global: &GlobalArgs, args: DefragArgs) -> Result<()> {
    // A bad rule is refused before anything is contacted.
    let rule = args.rolling.rule.as_deref().map(Rule::parse).transpose()?;
    let given = super::given(global);
    let conn = given.resolve()?;
    let quota = quota_backend_bytes(args.quota.quota_backend_bytes, &given.manifest_path())?;
    let mut opts = options(&args.rolling, rule, quota, args.dry_run.dry_run);
    opts.cluster = args.cluster;
    opts.compact = args.compact;
    let (report, _) = super::block_on(defrag::run(&conn, &opts))?;
    output::print(super::format(global), &report);
    report.verdict("defrag")
}

/// The options both defrag and maintain build from the shared flags.
pub fn options(
    rolling: &RollingArgs,
    rule: Option<Rule>,
    quota: u64,
    dry_run: bool,
) -> DefragOptions {
    DefragOptions {
        cluster: false,
        rule,
        all_when_nospace: false,
        compact: false,
        move_leader: rolling.move_leader,
        wait_between: rolling.wait_between,
        dry_run,
        defrag_timeout: rolling.defrag_timeout,
        healthy_timeout: rolling.healthy_timeout,
        continue_on_error: rolling.continue_on_error,
        quota,
    }
}

impl Render for DefragReport {
    fn table(&self) -> String {
        let mut out = String::new();
        if !self.members.is_empty() {
            let mut t = Table::new([
                "ENDPOINT", "MEMBER", "NAME", "ROLE", "ACTION", "BEFORE", "AFTER", "TOOK", "REASON",
            ]);
            let size = |v: Option<u64>| v.map_or("-".to_string(), bytes);
            for m in &self.members {
                let role = if m.is_learner {
                    "learner"
                } else if m.is_leader {
                    "leader"
                } else {
                    "follower"
                };
                let mut reason = m.reason.clone().unwrap_or_default();
                if let Some(to) = &m.leadership_moved_to {
                    reason = format!("leadership moved to {to} first; {reason}");
                }
                t.row([
                    m.endpoint.clone(),
                    m.member_id.clone(),
                    m.name.clone(),
                    role.to_string(),
                    m.action.as_str().to_string(),
                    size(m.db_size_before),
                    size(m.db_size_after),
                    if m.took_ms > 0 {
                        millis(m.took_ms)
                    } else {
                        "-".into()
                    },
                    reason,
                ]);
            }
            out.push_str(&t.render());
            out.push('\n');
        }
        if let Some(r) = self.compacted_to {
            out.push_str(&format!("compacted to revision {r}\n"));
        }
        if let Some(r) = self.would_compact_to {
            out.push_str(&format!("would compact to revision {r}\n"));
        }
        if let Some(rule) = &self.rule {
            out.push_str(&format!("rule: {rule}\n"));
        }
        out.push_str(&format!("quota: {}\n", bytes(self.quota_backend_bytes)));
        for a in &self.disarmed {
            out.push_str(&format!(
                "disarmed: {} on member {}\n",
                a.alarm, a.member_id
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        for p in &self.problems {
            out.push_str(&format!("problem: {p}\n"));
        }
        if let Some(h) = self.healthy_after {
            out.push_str(if h {
                "health after: healthy\n"
            } else {
                "health after: UNHEALTHY\n"
            });
        }
        let verdict = if self.refused.is_some() {
            "REFUSED: nothing was changed"
        } else if self.dry_run {
            "dry run: nothing was changed"
        } else if self.ok {
            "ok"
        } else {
            "FAILED"
        };
        out.push_str(&format!("verdict: {verdict} ({})\n", millis(self.took_ms)));
        out
    }
}
