//! `etcdops doctor`: every static-pod, hostPath and etcd problem of the runbook's
//! troubleshooting part, found and explained. This module owns the check list (ids, order,
//! selection with `--check`/`--skip`), the facts gathered once for all checks (manifest,
//! etcd's answers), the report and its three renderings. One file per group of checks
//! holds the judging; none of them writes a byte on the node (the disk probe writes only in
//! its own temp dir, removed afterwards).

pub mod backups;
pub mod certs;
pub mod disk;
pub mod flags;
pub mod identity;
pub mod manifest;
pub mod perms;
pub mod release;
pub mod runs;
pub mod runtime;
pub mod space;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::etcd::client::Member;
use crate::etcd::connect::Given;
use crate::etcd::health::{EndpointHealth, HealthReport};
use crate::manifest::{DataVolume, StaticPod};
use crate::node::KubeletCommands;
use crate::output::{Render, Table};
use crate::prometheus::{Gauge, flag};

/// Every check, in the order they run and print: (id, what it looks at).
pub const CHECKS: &[(&str, &str)] = &[
    (
        "manifest.parse",
        "the etcd manifest parses; container, data volume, mounts",
    ),
    (
        "manifest.strays",
        "non-dot files in the manifests dir that kubelet would load",
    ),
    (
        "hostpath.types",
        "each hostPath exists with the type the manifest asks for",
    ),
    (
        "hostpath.data",
        "the data hostPath is a directory holding a member",
    ),
    ("ownership", "data dir owner against the container's user"),
    (
        "mode",
        "data dir mode 0700, nothing inside writable by others",
    ),
    ("selinux", "the data dir's SELinux label"),
    (
        "space.free",
        "free bytes and inodes on the data dir's filesystem",
    ),
    ("space.quota", "db size against the quota"),
    ("alarms", "active alarms (NOSPACE, CORRUPT)"),
    ("certs.expiry", "certificate expiry"),
    ("certs.sans", "certificate SANs cover the advertise URLs"),
    ("certs.keys", "each key matches its certificate"),
    (
        "certs.chain",
        "each certificate chains to the CA in the trusted CA file",
    ),
    (
        "flags.cluster",
        "--name, --initial-advertise-peer-urls, --initial-cluster, member list",
    ),
    ("flags.listen", "listen URLs cover the advertise URLs"),
    (
        "flags.refused",
        "flags the image's etcd release refuses (or deprecates)",
    ),
    (
        "version.storage",
        "the image's etcd is not older than the data's storage version",
    ),
    (
        "version.members",
        "each member's release; >= 3.5.26 when a 3.6 image is planned",
    ),
    ("kubelet", "kubelet active (the configured status command)"),
    (
        "etcd.process",
        "an etcd process serves from this data dir (its locks are held)",
    ),
    (
        "etcd.health",
        "the local member answers; the cluster is healthy",
    ),
    (
        "etcd.identity",
        "this member is in its peers' cluster (no stranger of its own cluster id)",
    ),
    (
        "runs.unfinished",
        "no unfinished migrate/restore/rejoin run",
    ),
    (
        "runs.finalize",
        "completed migrations finalized; old data kept aside",
    ),
    (
        "disk.latency",
        "fdatasync latency of the data dir's disk (etcd's method)",
    ),
    (
        "backups.encrypted",
        "archives in the backup dir are encrypted (age)",
    ),
    (
        "backups.perms",
        "no archive or snapshot readable by group or others",
    ),
];

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Warn,
    Fail,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skipped => "skipped",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }

    /// The gauge value: 0 ok, 1 warn, 2 fail, -1 skipped.
    fn gauge(self) -> f64 {
        match self {
            Status::Ok => 0.0,
            Status::Warn => 1.0,
            Status::Fail => 2.0,
            Status::Skipped => -1.0,
        }
    }
}

/// One check's result: what it saw (paths, values) and, unless ok, the exact fix.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub status: Status,
    pub title: &'static str,
    pub evidence: String,
    pub fix: Option<String>,
}

/// What a check function returns; `run` adds id and title.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub status: Status,
    pub evidence: String,
    pub fix: Option<String>,
}

impl Verdict {
    pub fn ok(evidence: impl Into<String>) -> Self {
        Verdict {
            status: Status::Ok,
            evidence: evidence.into(),
            fix: None,
        }
    }
    pub fn skipped(reason: impl Into<String>) -> Self {
        Verdict {
            status: Status::Skipped,
            evidence: reason.into(),
            fix: None,
        }
    }
    pub fn warn(evidence: impl Into<String>, fix: impl Into<String>) -> Self {
        Verdict {
            status: Status::Warn,
            evidence: evidence.into(),
            fix: Some(fix.into()),
        }
    }
    pub fn fail(evidence: impl Into<String>, fix: impl Into<String>) -> Self {
        Verdict {
            status: Status::Fail,
            evidence: evidence.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Options resolved by the command.
#[derive(Debug, Clone)]
pub struct Options {
    pub manifest: PathBuf,
    pub state_dir: PathBuf,
    pub kubelet: KubeletCommands,
    /// How to reach etcd (flags and env; the manifest fills in the rest).
    pub given: Given,
    pub quota_flag: Option<u64>,
    /// `--check`: ids or group prefixes (`certs`); empty means all.
    pub only: Vec<String>,
    /// `--skip`: ids or group prefixes.
    pub skip: Vec<String>,
    pub disk_probe: bool,
}

/// What etcd said, asked once for every check that needs it.
#[derive(Debug, Clone)]
pub struct EtcdFacts {
    pub endpoints: Vec<String>,
    /// The local member: the first endpoint (from the manifest unless flags say otherwise).
    pub local: EndpointHealth,
    pub health: HealthReport,
    pub members: Result<Vec<Member>, String>,
    /// The peers' view, for `etcd.identity`.
    pub identity: identity::IdentityFacts,
}

/// Facts gathered once and shared by the checks.
pub struct Ctx {
    pub opts: Options,
    pub now: SystemTime,
    pub pod: Result<StaticPod, String>,
    /// The manifest's text, for the parts the typed model does not keep (securityContext).
    pub text: Option<String>,
    pub data: Option<DataVolume>,
    /// `Some` once asked; `Err` says why etcd could not be asked.
    pub etcd: Option<Result<EtcdFacts, String>>,
}

impl Ctx {
    /// The manifest parsed with its data volume, or the reason a dependent check skips.
    pub fn pod(&self) -> std::result::Result<(&StaticPod, &DataVolume), String> {
        match (&self.pod, &self.data) {
            (Ok(p), Some(d)) => Ok((p, d)),
            (Err(e), _) => Err(format!("the manifest did not parse ({e})")),
            (Ok(_), None) => {
                Err("the manifest has no usable data volume (see manifest.parse)".into())
            }
        }
    }

    /// etcd's answers, or the reason a dependent check cannot judge.
    pub fn etcd(&self) -> std::result::Result<&EtcdFacts, String> {
        match &self.etcd {
            Some(Ok(f)) => Ok(f),
            Some(Err(e)) => Err(e.clone()),
            None => Err("etcd was not asked".into()),
        }
    }

    /// The local member's status (the first endpoint), when it answered.
    pub fn local_status(&self) -> Option<&crate::etcd::client::Status> {
        self.etcd().ok()?.local.status.as_ref()
    }

    /// The quota: `--quota-backend-bytes`, the manifest's, else etcd's default.
    pub fn quota(&self) -> u64 {
        crate::etcd::quota_backend_bytes(self.opts.quota_flag, &self.opts.manifest)
            .unwrap_or(crate::etcd::health::DEFAULT_QUOTA)
    }

    /// How to run etcdops for this node in a fix: with `--manifest`/`--state-dir` when they
    /// are not the defaults, so that the command is exact wherever the operator pastes it.
    pub fn etcdops(&self, args: &str) -> String {
        let mut cmd = String::from("etcdops");
        if self.opts.manifest != Path::new(crate::manifest::DEFAULT_MANIFEST) {
            cmd.push_str(&format!(" --manifest {}", sh(&self.opts.manifest)));
        }
        if self.opts.state_dir != Path::new("/var/lib/etcdops") {
            cmd.push_str(&format!(" --state-dir {}", sh(&self.opts.state_dir)));
        }
        format!("{cmd} {args}")
    }
}

/// A path quoted for a POSIX shell, for fixes that are commands.
pub fn sh(p: impl AsRef<Path>) -> String {
    crate::lab::shell_quote(&p.as_ref().to_string_lossy())
}

/// The report: every selected check and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub summary: String,
    pub manifest: PathBuf,
    pub checks: Vec<Check>,
}

impl Report {
    /// Exit 0 when nothing fails, 4 otherwise (the report is printed first).
    pub fn verdict(&self) -> Result<()> {
        if self.ok {
            return Ok(());
        }
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.id)
            .collect();
        Err(Error::Unhealthy(format!(
            "doctor: {} failed ({})",
            failed.join(", "),
            self.summary
        )))
    }
}

/// Which ids `--check` and `--skip` select; an unknown id or group is bad usage (exit 2).
pub fn select(only: &[String], skip: &[String]) -> Result<Vec<(&'static str, bool)>> {
    let matches = |arg: &str, id: &str| id == arg || id.starts_with(&format!("{arg}."));
    for (flag, args) in [("--check", only), ("--skip", skip)] {
        for a in args {
            if !CHECKS.iter().any(|(id, _)| matches(a, id)) {
                let ids: Vec<&str> = CHECKS.iter().map(|(id, _)| *id).collect();
                return Err(Error::Usage(format!(
                    "{flag} {a}: no such check; the checks are {}",
                    ids.join(", ")
                )));
            }
        }
    }
    Ok(CHECKS
        .iter()
        .filter(|(id, _)| only.is_empty() || only.iter().any(|a| matches(a, id)))
        .map(|(id, _)| (*id, skip.iter().any(|a| matches(a, id))))
        .collect())
}

/// Checks that need etcd's answers.
const NEEDS_ETCD: &[&str] = &[
    "space.quota",
    "alarms",
    "flags.cluster",
    "etcd.health",
    "etcd.identity",
    "etcd.process",
    "version.storage",
    "version.members",
];

/// Run the selected checks. Reads only; the disk probe writes in its own temp dir.
pub fn run(opts: Options) -> Result<Report> {
    let selected = select(&opts.only, &opts.skip)?;
    let text = StaticPod::read(&opts.manifest).ok();
    let pod = StaticPod::load(&opts.manifest).map_err(|e| e.one_line());
    let data = pod.as_ref().ok().and_then(|p| p.data_volume().ok());
    let mut ctx = Ctx {
        opts,
        now: SystemTime::now(),
        pod,
        text,
        data,
        etcd: None,
    };
    if selected
        .iter()
        .any(|(id, skipped)| !skipped && NEEDS_ETCD.contains(id))
    {
        ctx.etcd = Some(ask_etcd(&ctx));
    }
    let mut checks = Vec::new();
    for (id, skipped) in selected {
        let title = CHECKS.iter().find(|(i, _)| *i == id).map_or("", |(_, t)| t);
        let v = if skipped {
            Verdict::skipped(format!("--skip {id}"))
        } else {
            judge(&ctx, id)
        };
        checks.push(Check {
            id,
            status: v.status,
            title,
            evidence: v.evidence,
            fix: v.fix,
        });
    }
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let summary = format!(
        "{} checks: {} ok, {} warn, {} fail, {} skipped",
        checks.len(),
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail),
        count(Status::Skipped)
    );
    Ok(Report {
        ok: count(Status::Fail) == 0,
        summary,
        manifest: ctx.opts.manifest.clone(),
        checks,
    })
}

fn judge(ctx: &Ctx, id: &str) -> Verdict {
    match id {
        "manifest.parse" => manifest::parse(ctx),
        "manifest.strays" => manifest::strays(ctx),
        "hostpath.types" => manifest::host_path_types(ctx),
        "hostpath.data" => manifest::data_host_path(ctx),
        "ownership" => perms::ownership(ctx),
        "mode" => perms::mode(ctx),
        "selinux" => perms::selinux(ctx),
        "space.free" => space::free(ctx),
        "space.quota" => space::quota(ctx),
        "alarms" => space::alarms(ctx),
        "certs.expiry" => certs::expiry(ctx),
        "certs.sans" => certs::sans(ctx),
        "certs.keys" => certs::keys(ctx),
        "certs.chain" => certs::chain(ctx),
        "flags.cluster" => flags::cluster(ctx),
        "flags.listen" => flags::listen(ctx),
        "flags.refused" => release::refused_flags(ctx),
        "version.storage" => release::storage(ctx),
        "version.members" => release::members(ctx),
        "kubelet" => runtime::kubelet(ctx),
        "etcd.process" => runtime::process(ctx),
        "etcd.health" => runtime::health(ctx),
        "etcd.identity" => identity::identity(ctx),
        "runs.unfinished" => runs::unfinished(ctx),
        "runs.finalize" => runs::finalize(ctx),
        "disk.latency" => disk::latency(ctx),
        "backups.encrypted" => backups::encrypted(ctx),
        "backups.perms" => backups::perms(ctx),
        other => unreachable!("check {other} is in CHECKS but not judged"),
    }
}

/// Ask etcd once: the local endpoint (from the manifest unless flags say otherwise), the
/// cluster's health, the member list.
fn ask_etcd(ctx: &Ctx) -> Result<EtcdFacts, String> {
    let mut given = ctx.opts.given.clone();
    given.manifest = Some(ctx.opts.manifest.clone());
    let conn = given.resolve().map_err(|e| e.one_line())?;
    let quota = ctx.quota();
    crate::node::block_on(async {
        let health = crate::etcd::health::check(
            &conn,
            &crate::etcd::health::HealthOptions {
                cluster: true,
                quota,
            },
        )
        .await;
        let members = crate::etcd::health::member_list(&conn).await;
        let local = crate::etcd::health::check_endpoint(&conn, &conn.endpoints[0]).await;
        let identity = ask_peers(ctx, &conn, local.status.is_none()).await;
        Ok(EtcdFacts {
            endpoints: conn.endpoints.clone(),
            local,
            health,
            members,
            identity,
        })
    })
}

/// The peers (`--initial-cluster`'s other members, and any other endpoint given): the first
/// that answers, with its cluster id and member list; and, when the local member's client
/// port serves nothing, its own cluster id from its peer port. Every request bounded.
async fn ask_peers(
    ctx: &Ctx,
    conn: &crate::etcd::connect::Connection,
    local_silent: bool,
) -> identity::IdentityFacts {
    use crate::etcd::client::{Endpoint, within};
    let mut facts = identity::IdentityFacts::default();
    let Ok(pod) = &ctx.pod else { return facts };
    facts.initial_cluster = pod
        .etcd_flag("initial-cluster")
        .ok()
        .flatten()
        .map_or(0, |v| v.split(',').filter(|s| s.contains('=')).count());
    let mut peers = crate::etcd::member::peer_candidates(pod).unwrap_or_default();
    for e in ctx.opts.given.endpoints.iter().skip(1) {
        let e = e.trim().trim_end_matches('/').to_string();
        if !e.is_empty() && !peers.contains(&e) && conn.endpoints.first() != Some(&e) {
            peers.push(e);
        }
    }
    let t = conn.command_timeout;
    let mut errors = Vec::new();
    for url in &peers {
        let attempt = async {
            let mut ep = Endpoint::connect(conn, url).await?;
            let s = within(t, "status", ep.status()).await?;
            let m = within(t, "member list", ep.members()).await?;
            Ok::<_, crate::etcd::client::RpcError>((s.cluster_id, m))
        };
        match attempt.await {
            Ok((c, m)) => {
                facts.peer = Some((url.clone(), c, m));
                break;
            }
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    if facts.peer.is_none() && !errors.is_empty() {
        facts.peer_error = Some(errors.join("; "));
    }
    facts.peers = peers;
    if local_silent
        && let Ok(Some(own)) = pod.etcd_flag("initial-advertise-peer-urls")
        && let Some(own) = own.split(',').next()
    {
        let own = own.trim();
        let answer = crate::etcd::peer::cluster_of(conn, own).await;
        facts.own_peer = Some(answer.map(|a| identity::OwnPeer {
            cluster_id: a.cluster_id,
            member_id: a.member_at(own).map(|m| m.id),
            members: a.members.len(),
        }));
    }
    facts
}

impl Render for Report {
    fn table(&self) -> String {
        let mut t = Table::new(["STATUS", "CHECK", "EVIDENCE"]);
        for c in &self.checks {
            t.row([
                c.status.name().to_string(),
                c.id.to_string(),
                c.evidence.clone(),
            ]);
            if let Some(fix) = &c.fix {
                t.row([String::new(), String::new(), format!("fix: {fix}")]);
            }
        }
        let mut out = t.render();
        out.push_str(&format!(
            "{}: {}\n",
            if self.ok { "ok" } else { "FAIL" },
            self.summary
        ));
        out
    }

    fn prometheus(&self) -> Option<String> {
        let mut status = Gauge::new(
            "etcdops_doctor_check_status",
            "etcdops doctor check result: 0 ok, 1 warn, 2 fail, -1 skipped.",
        );
        for c in &self.checks {
            status.sample(&[("check", c.id)], c.status.gauge());
        }
        let mut ok = Gauge::new("etcdops_doctor_ok", "1 when no doctor check failed.");
        ok.value(flag(self.ok));
        let mut ts = Gauge::new(
            "etcdops_doctor_last_run_timestamp_seconds",
            "When etcdops doctor ran (Unix time).",
        );
        ts.value(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs() as f64,
        );
        Some(crate::prometheus::render(&[status, ok, ts]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_by_id_and_group() {
        let all = select(&[], &[]).unwrap();
        assert_eq!(all.len(), CHECKS.len());
        let certs = select(&["certs".into()], &["certs.keys".into()]).unwrap();
        let ids: Vec<_> = certs.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids,
            ["certs.expiry", "certs.sans", "certs.keys", "certs.chain"]
        );
        assert!(certs.iter().any(|(id, s)| *id == "certs.keys" && *s));
        let e = select(&["cert".into()], &[]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.one_line().contains("--check cert: no such check"));
        assert_eq!(select(&[], &["nope".into()]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn ids_are_unique() {
        let mut ids: Vec<_> = CHECKS.iter().map(|(id, _)| *id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), CHECKS.len());
    }
}
