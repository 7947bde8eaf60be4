//! `etcdops health [--cluster]`.

use crate::cli::{GlobalArgs, HealthArgs};
use crate::error::Result;
use crate::etcd::health::{self, HealthOptions, HealthReport};
use crate::etcd::quota_backend_bytes;
use crate::output::{self, Render, Table, bytes, millis};

pub fn exec(global: &GlobalArgs, args: HealthArgs) -> Result<()> {
    let given = super::given(global);
    let conn = given.resolve()?;
    let opts = HealthOptions {
        cluster: args.cluster,
        quota: quota_backend_bytes(args.quota.quota_backend_bytes, &given.manifest_path())?,
    };
    let report = super::block_on(health::check(&conn, &opts));
    output::print(super::format(global), &report);
    report.verdict()
}

impl Render for HealthReport {
    fn table(&self) -> String {
        let mut t = Table::new([
            "ENDPOINT",
            "HEALTH",
            "TOOK",
            "MEMBER",
            "NAME",
            "VERSION",
            "LEADER",
            "DB SIZE",
            "IN USE",
            "QUOTA",
            "REVISION",
            "RAFT TERM",
            "RAFT INDEX",
            "ERROR",
        ]);
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        for e in &self.endpoints {
            t.row([
                e.endpoint.clone(),
                if e.healthy { "healthy" } else { "UNHEALTHY" }.to_string(),
                millis(e.took_ms),
                opt(e.member_id.clone()),
                opt(e.name.clone()),
                opt(e.version.clone()),
                if e.is_leader {
                    "leader".to_string()
                } else if e.is_learner {
                    "learner".to_string()
                } else {
                    "-".to_string()
                },
                opt(e.db_size.map(bytes)),
                opt(e.db_size_in_use.map(bytes)),
                opt(e.quota_usage.map(|u| format!("{:.1}%", u * 100.0))),
                opt(e.revision.map(|r| r.to_string())),
                opt(e.raft_term.map(|r| r.to_string())),
                opt(e.raft_index.map(|r| r.to_string())),
                e.error.clone().unwrap_or_default(),
            ]);
        }
        let mut out = t.render();
        if let Some(c) = &self.cluster {
            out.push('\n');
            out.push_str(&format!(
                "cluster {}: {} member(s), leader {}{}, raft index spread {}, hashkv at revision {}: {}\n",
                c.cluster_id.as_deref().unwrap_or("-"),
                c.members,
                c.leader.as_deref().unwrap_or("none"),
                if c.leaders_agree { " (agreed)" } else { " (NOT agreed)" },
                c.raft_index_spread.map_or("-".into(), |s| s.to_string()),
                c.hash_revision.map_or("-".into(), |r| r.to_string()),
                match c.hashes_agree {
                    Some(true) => "agree",
                    Some(false) => "DIFFER",
                    None => "not compared",
                }
            ));
        }
        out.push_str(&format!("quota: {}\n", bytes(self.quota_backend_bytes)));
        for a in &self.alarms {
            out.push_str(&format!("alarm: {} on member {}\n", a.alarm, a.member_id));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        for p in &self.problems {
            out.push_str(&format!("problem: {p}\n"));
        }
        out.push_str(if self.healthy {
            "verdict: healthy\n"
        } else {
            "verdict: UNHEALTHY\n"
        });
        out
    }
}
