//! `etcdops health [--cluster]`.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cli::{GlobalArgs, HealthArgs};
use crate::error::Result;
use crate::etcd::health::{self, HealthOptions, HealthReport};
use crate::etcd::quota_backend_bytes;
use crate::manifest::StaticPod;
use crate::mounts::{self, Location};
use crate::output::{self, Format, Render, Table, bytes, millis};
use crate::prometheus::{Gauge, flag, render};

/// Alarms etcd 3.4/3.5 can raise; exported as 0 when inactive so that alert rules see a series.
const KNOWN_ALARMS: [&str; 2] = ["NOSPACE", "CORRUPT"];

pub fn exec(global: &GlobalArgs, args: HealthArgs) -> Result<()> {
    let given = super::given(global);
    let conn = given.resolve()?;
    let opts = HealthOptions {
        cluster: args.cluster,
        quota: quota_backend_bytes(args.quota.quota_backend_bytes, &given.manifest_path())?,
    };
    let mut report = super::block_on(health::check(&conn, &opts));
    let format = super::format(global);
    if format == Format::Prometheus {
        report.data_dir = data_dir_location(&given.manifest_path());
    }
    output::print(format, &report);
    report.verdict()
}

/// The data dir's host path and its filesystem's mount point, from the manifest. None when
/// there is no readable manifest (flags alone name the endpoints): the metric is then left
/// out, and an alert that joins on it stays silent rather than wrong.
fn data_dir_location(manifest: &Path) -> Option<Location> {
    if !manifest.is_file() {
        return None;
    }
    let pod = StaticPod::load(manifest).ok()?;
    let path = pod.data_volume().ok()?.data_host_path;
    mounts::locate(&path).ok()
}

impl Render for HealthReport {
    fn prometheus(&self) -> Option<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Some(metrics(self, now))
    }

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
        for e in &self.endpoints {
            let mut extra = Vec::new();
            if let Some(p) = &e.livez {
                extra.push(format!("livez {}", p.summary()));
            }
            if let Some(p) = &e.readyz {
                extra.push(format!("readyz {}", p.summary()));
            }
            if let Some(v) = &e.storage_version {
                extra.push(format!("storage version {v}"));
            }
            if let Some(q) = e.db_size_quota {
                extra.push(format!("quota (reported) {}", bytes(q)));
            }
            if let Some(d) = e.downgrade.as_ref().filter(|d| d.enabled) {
                extra.push(format!("DOWNGRADING to {}", d.target_version));
            }
            if !extra.is_empty() {
                out.push_str(&format!("{}: {}\n", e.endpoint, extra.join(", ")));
            }
        }
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

/// The report as node_exporter textfile metrics, taken at `now` (Unix seconds).
/// Per-endpoint series carry `endpoint`, `member_id` and `name` (empty when the endpoint did
/// not answer); sizes and leadership only for endpoints that answered.
fn metrics(r: &HealthReport, now: f64) -> String {
    let mut checked = Gauge::new(
        "etcdops_health_last_check_timestamp_seconds",
        "When etcdops health ran (Unix time); stale means the exporter job stopped.",
    );
    checked.value(now);
    let mut healthy = Gauge::new(
        "etcdops_health_healthy",
        "1 when the etcdops health verdict is healthy, 0 when it is not.",
    );
    healthy.value(flag(r.healthy));
    let mut quota = Gauge::new(
        "etcdops_quota_backend_bytes",
        "The quota db sizes are judged against (--quota-backend-bytes, else the manifest's, else 2 GiB).",
    );
    quota.value(r.quota_backend_bytes as f64);

    let mut ep_healthy = Gauge::new(
        "etcdops_endpoint_healthy",
        "1 when the endpoint answered a linearizable read and status without errors.",
    );
    let mut leader = Gauge::new(
        "etcdops_endpoint_is_leader",
        "1 when the member behind the endpoint is the raft leader.",
    );
    let mut db_size = Gauge::new(
        "etcdops_endpoint_db_size_bytes",
        "Size of the member's backend db file; etcd judges the quota on it.",
    );
    let mut in_use = Gauge::new(
        "etcdops_endpoint_db_size_in_use_bytes",
        "Bytes of the backend db in use; the rest is freed by a defrag.",
    );
    let mut usage = Gauge::new(
        "etcdops_endpoint_quota_usage_ratio",
        "db size divided by the quota; at 1 etcd raises NOSPACE and refuses writes.",
    );
    for e in &r.endpoints {
        let labels = [
            ("endpoint", e.endpoint.as_str()),
            ("member_id", e.member_id.as_deref().unwrap_or("")),
            ("name", e.name.as_deref().unwrap_or("")),
        ];
        ep_healthy.sample(&labels, flag(e.healthy));
        if e.member_id.is_some() {
            leader.sample(&labels, flag(e.is_leader));
        }
        if let Some(v) = e.db_size {
            db_size.sample(&labels, v as f64);
        }
        if let Some(v) = e.db_size_in_use {
            in_use.sample(&labels, v as f64);
        }
        if let Some(v) = e.quota_usage {
            usage.sample(&labels, v);
        }
    }

    let mut alarms = Gauge::new(
        "etcdops_alarm_active",
        "Number of members with this alarm active (NOSPACE: quota exceeded, writes refused).",
    );
    if r.alarms_listed {
        let mut names: Vec<&str> = KNOWN_ALARMS.to_vec();
        for a in &r.alarms {
            if !names.contains(&a.alarm.as_str()) {
                names.push(&a.alarm);
            }
        }
        for name in names {
            let n = r.alarms.iter().filter(|a| a.alarm == name).count();
            alarms.sample(&[("alarm", name)], n as f64);
        }
    }

    let mut data_dir = Gauge::new(
        "etcdops_data_dir_info",
        "The etcd data dir on this host and the mount point of its filesystem; join node_filesystem_* on mountpoint.",
    );
    if let Some(loc) = &r.data_dir {
        data_dir.sample(
            &[
                ("path", &loc.path.to_string_lossy()),
                ("mountpoint", &loc.mount_point.to_string_lossy()),
            ],
            1.0,
        );
    }

    let mut members = Gauge::new(
        "etcdops_cluster_members",
        "Members in the member list (health --cluster).",
    );
    let mut leaders_agree = Gauge::new(
        "etcdops_cluster_leaders_agree",
        "1 when every member that answered names the same leader (health --cluster).",
    );
    let mut hashes_agree = Gauge::new(
        "etcdops_cluster_hashes_agree",
        "1 when HashKV agrees across members at a common revision, 0 when data differs (health --cluster).",
    );
    if let Some(c) = &r.cluster {
        members.value(c.members as f64);
        leaders_agree.value(flag(c.leaders_agree));
        if let Some(agree) = c.hashes_agree {
            hashes_agree.value(flag(agree));
        }
    }

    render(&[
        checked,
        healthy,
        quota,
        ep_healthy,
        leader,
        db_size,
        in_use,
        usage,
        alarms,
        data_dir,
        members,
        leaders_agree,
        hashes_agree,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::health::{AlarmReport, ClusterHealth, EndpointHealth};

    fn endpoint(url: &str, answered: bool) -> EndpointHealth {
        EndpointHealth {
            endpoint: url.into(),
            healthy: answered,
            took_ms: 3,
            error: (!answered).then(|| "connection refused".into()),
            member_id: answered.then(|| "8e9e05c52164694d".into()),
            name: answered.then(|| "cp1".into()),
            version: answered.then(|| "3.5.12".into()),
            is_leader: answered,
            is_learner: false,
            db_size: answered.then_some(2_000_000),
            db_size_in_use: answered.then_some(1_000_000),
            quota_usage: answered.then_some(0.0009),
            revision: answered.then_some(42),
            raft_term: answered.then_some(2),
            raft_index: answered.then_some(50),
            raft_applied_index: answered.then_some(50),
            stranger: None,
            storage_version: None,
            db_size_quota: None,
            downgrade: None,
            livez: None,
            readyz: None,
            status: None,
        }
    }

    fn report() -> HealthReport {
        HealthReport {
            healthy: false,
            endpoints: vec![
                endpoint("https://10.0.0.1:2379", true),
                endpoint("https://10.0.0.2:2379", false),
            ],
            cluster: Some(ClusterHealth {
                cluster_id: Some("cdf818194e3a8c32".into()),
                members: 3,
                leader: Some("8e9e05c52164694d".into()),
                leaders_agree: true,
                raft_index_spread: Some(0),
                hash_revision: Some(42),
                hashes_agree: Some(false),
                hash_kv: vec![],
            }),
            alarms: vec![AlarmReport {
                member_id: "8e9e05c52164694d".into(),
                alarm: "NOSPACE".into(),
            }],
            problems: vec!["x".into()],
            warnings: vec![],
            quota_backend_bytes: 2147483648,
            alarms_listed: true,
            data_dir: Some(Location {
                path: "/mnt/etcd disk/etcd".into(),
                mount_point: "/mnt/etcd disk".into(),
            }),
        }
    }

    #[test]
    fn every_reported_fact_becomes_a_sample() {
        let text = metrics(&report(), 1_700_000_000.5);
        let up = r#"endpoint="https://10.0.0.1:2379",member_id="8e9e05c52164694d",name="cp1""#;
        let down = r#"endpoint="https://10.0.0.2:2379",member_id="",name="""#;
        for line in [
            "etcdops_health_last_check_timestamp_seconds 1700000000.5".to_string(),
            "etcdops_health_healthy 0".into(),
            "etcdops_quota_backend_bytes 2147483648".into(),
            format!("etcdops_endpoint_healthy{{{up}}} 1"),
            format!("etcdops_endpoint_healthy{{{down}}} 0"),
            format!("etcdops_endpoint_is_leader{{{up}}} 1"),
            format!("etcdops_endpoint_db_size_bytes{{{up}}} 2000000"),
            format!("etcdops_endpoint_db_size_in_use_bytes{{{up}}} 1000000"),
            format!("etcdops_endpoint_quota_usage_ratio{{{up}}} 0.0009"),
            r#"etcdops_alarm_active{alarm="NOSPACE"} 1"#.into(),
            r#"etcdops_alarm_active{alarm="CORRUPT"} 0"#.into(),
            "etcdops_cluster_members 3".into(),
            "etcdops_cluster_leaders_agree 1".into(),
            "etcdops_cluster_hashes_agree 0".into(),
            r#"etcdops_data_dir_info{path="/mnt/etcd disk/etcd",mountpoint="/mnt/etcd disk"} 1"#
                .into(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // An endpoint that did not answer has no size or leadership to report.
        assert!(
            !text
                .lines()
                .any(|l| l.contains("10.0.0.2") && !l.starts_with("etcdops_endpoint_healthy")),
            "{text}"
        );
    }

    #[test]
    fn unknown_is_left_out_rather_than_reported_as_zero() {
        let mut r = report();
        r.alarms.clear();
        r.alarms_listed = false;
        r.cluster = None;
        r.data_dir = None;
        let text = metrics(&r, 0.0);
        for family in [
            "etcdops_alarm_active",
            "etcdops_cluster_members",
            "etcdops_cluster_leaders_agree",
            "etcdops_cluster_hashes_agree",
            "etcdops_data_dir_info",
        ] {
            assert!(!text.contains(family), "{family} in\n{text}");
        }
        let mut r = report();
        r.cluster.as_mut().unwrap().hashes_agree = None;
        let text = metrics(&r, 0.0);
        assert!(!text.contains("etcdops_cluster_hashes_agree"), "{text}");
        assert!(text.contains("etcdops_cluster_leaders_agree 1"), "{text}");
    }
}
