//! The health model: what "healthy" means for an endpoint and for the cluster, written down
//! in one place (as etcdctl's `ep_command.go` does).
//!
//! An endpoint is healthy when it answers a linearizable `Get("health")` (which needs a
//! leader and a quorum) and `Status` within the command timeout, and reports no errors. A
//! learner, which refuses linearizable reads by design, is healthy on a clean `Status`.
//! The verdict is healthy when every endpoint is healthy, no alarm is active, and, with
//! `--cluster`, every member has a client URL and answers, all agree on one leader, and
//! HashKV agrees across members at a common revision (HashKV under its own deadline, scaled
//! by each member's db size (`hashkv`): one that answers after the command timeout is
//! reported slow, `cluster.hash_kv`, a warning, not unhealthy), and no member is a *stranger*: an
//! endpoint of the member list that answers for another cluster id, or as a member the
//! list does not have (a wiped member that bootstrapped a cluster of its own). Such a
//! member serves no client request when its own cluster has no quorum: then its peer port
//! says which cluster it is in (`peer::cluster_of`).
//!
//! Every RPC runs under the command timeout (`client::within`): a member that accepts
//! connections and answers nothing costs that long, never more.

use std::time::Instant;

use serde::Serialize;

use super::client::{Alarm, Endpoint, HashKv, Member, RpcErrorKind, Status, within};
use super::connect::Connection;
use super::hashkv::{self, Timing, Watch};
use super::probe::Probe;
use super::version::{self, Version};
use crate::error::{Error, Result};
use crate::mounts::Location;
use crate::output::hex_id;

/// etcd's default `--quota-backend-bytes`.
pub const DEFAULT_QUOTA: u64 = 2 * 1024 * 1024 * 1024;

/// Above this share of the quota, health warns (maintain disarms NOSPACE only below it).
pub const QUOTA_WARN_RATIO: f64 = 0.9;

/// etcd refuses proposals when applied lags committed by more than this many entries.
pub const MAX_RAFT_INDEX_SPREAD: u64 = 5000;

#[derive(Debug, Clone)]
pub struct HealthOptions {
    /// Expand the endpoints to every member's client URL and check the cluster as a whole.
    pub cluster: bool,
    /// The quota to judge db size against.
    pub quota: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointHealth {
    pub endpoint: String,
    pub healthy: bool,
    pub took_ms: u64,
    pub error: Option<String>,
    pub member_id: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
    pub is_leader: bool,
    pub is_learner: bool,
    pub db_size: Option<u64>,
    pub db_size_in_use: Option<u64>,
    pub quota_usage: Option<f64>,
    pub revision: Option<i64>,
    pub raft_term: Option<u64>,
    pub raft_index: Option<u64>,
    pub raft_applied_index: Option<u64>,
    /// Why this endpoint is a stranger (`--cluster`): it answers for another cluster id,
    /// or as a member that the member list does not have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stranger: Option<String>,
    /// The data dir's storage version (etcd >= 3.6).
    pub storage_version: Option<String>,
    /// The quota the member reports, only from etcd 3.6.6 (earlier 3.6 reports a wrong one).
    pub db_size_quota: Option<u64>,
    /// The cluster's downgrade state as this member reports it (etcd >= 3.6).
    pub downgrade: Option<DowngradeReport>,
    /// `/livez` and `/readyz` on the metrics URL of the manifest's member (etcd >= 3.5.11);
    /// `None` for other members, or when no manifest names a metrics URL.
    pub livez: Option<Probe>,
    pub readyz: Option<Probe>,
    #[serde(skip)]
    pub status: Option<Status>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DowngradeReport {
    pub enabled: bool,
    pub target_version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterHealth {
    pub cluster_id: Option<String>,
    pub members: usize,
    pub leader: Option<String>,
    pub leaders_agree: bool,
    pub raft_index_spread: Option<u64>,
    pub hash_revision: Option<i64>,
    pub hashes_agree: Option<bool>,
    /// Every HashKV made for the agreement, with its time and deadline (`slow` when it took
    /// longer than the command timeout).
    pub hash_kv: Vec<Timing>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlarmReport {
    pub member_id: String,
    pub alarm: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub healthy: bool,
    pub endpoints: Vec<EndpointHealth>,
    pub cluster: Option<ClusterHealth>,
    pub alarms: Vec<AlarmReport>,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub quota_backend_bytes: u64,
    /// Whether the alarm list was read: an empty `alarms` then means "none active" rather
    /// than "unknown" (metrics export zeros only in the first case).
    #[serde(skip)]
    pub alarms_listed: bool,
    /// Where the data dir is on this node and which filesystem holds it, when the manifest
    /// says (filled in by the command for metrics; health itself does not read the manifest).
    #[serde(skip)]
    pub data_dir: Option<Location>,
}

impl HealthReport {
    /// Whether no endpoint answered at all (exit 3 rather than 4).
    pub fn nothing_reachable(&self) -> bool {
        self.endpoints.iter().all(|e| e.status.is_none())
    }

    /// The error that goes with this report: unreachable, unhealthy, or none.
    pub fn verdict(&self) -> Result<()> {
        if self.nothing_reachable() {
            let reason = self
                .endpoints
                .first()
                .and_then(|e| e.error.clone())
                .unwrap_or_else(|| "no endpoint".into());
            return Err(Error::Unreachable {
                endpoints: self
                    .endpoints
                    .iter()
                    .map(|e| e.endpoint.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                reason,
            });
        }
        if !self.healthy {
            return Err(Error::Unhealthy(self.problems.join("; ")));
        }
        Ok(())
    }

    /// Active alarms other than NOSPACE (defrag and maintain tolerate NOSPACE).
    pub fn has_alarm(&self, name: &str) -> bool {
        self.alarms.iter().any(|a| a.alarm == name)
    }

    /// The problems that remain once the `tolerated` alarms are forgiven: defrag and maintain
    /// run with NOSPACE active (they are how it is cleared), but with nothing else wrong.
    pub fn problems_except_alarms(&self, tolerated: &[&str]) -> Vec<String> {
        let forgiven: Vec<String> = self
            .alarms
            .iter()
            .filter(|a| tolerated.contains(&a.alarm.as_str()))
            .map(|a| alarm_problem(&a.alarm, &a.member_id))
            .collect();
        self.problems
            .iter()
            .filter(|p| !forgiven.contains(p))
            .cloned()
            .collect()
    }
}

/// How an active alarm reads among the problems (one wording, so it can be forgiven).
fn alarm_problem(alarm: &str, member_id: &str) -> String {
    format!("alarm {alarm} active on member {member_id}")
}

impl EndpointHealth {
    fn fill(&mut self, s: Status) {
        self.member_id = Some(hex_id(s.member_id));
        self.version = Some(s.version.clone());
        self.is_learner = s.is_learner;
        self.db_size = Some(s.db_size);
        self.db_size_in_use = Some(s.db_size_in_use);
        self.revision = Some(s.revision);
        self.raft_term = Some(s.raft_term);
        self.raft_index = Some(s.raft_index);
        self.raft_applied_index = Some(s.raft_applied_index);
        self.storage_version = Some(s.storage_version.clone()).filter(|v| !v.is_empty());
        self.db_size_quota = s.db_size_quota_reported();
        self.downgrade = s.downgrade.as_ref().map(|d| DowngradeReport {
            enabled: d.enabled,
            target_version: d.target_version.clone(),
        });
        self.status = Some(s);
    }
}

/// Check one endpoint: connect, linearizable get, status.
pub async fn check_endpoint(conn: &Connection, url: &str) -> EndpointHealth {
    let start = Instant::now();
    let t = conn.command_timeout;
    let result = async {
        let mut ep = Endpoint::connect(conn, url).await?;
        match within(t, "linearizable read", ep.linearizable_get()).await {
            Ok(()) => within(t, "status", ep.status()).await,
            // A learner refuses linearizable reads by design: it is healthy when it answers
            // status cleanly (otherwise no cluster with a learner could ever be defragmented).
            Err(e) if e.is(RpcErrorKind::NotForLearner) => {
                let s = within(t, "status", ep.status()).await?;
                if s.is_learner { Ok(s) } else { Err(e) }
            }
            Err(e) => Err(e),
        }
    }
    .await;
    let took_ms = start.elapsed().as_millis() as u64;
    let mut h = EndpointHealth {
        endpoint: url.to_string(),
        healthy: false,
        took_ms,
        error: None,
        member_id: None,
        name: None,
        version: None,
        is_leader: false,
        is_learner: false,
        db_size: None,
        db_size_in_use: None,
        quota_usage: None,
        revision: None,
        raft_term: None,
        raft_index: None,
        raft_applied_index: None,
        stranger: None,
        storage_version: None,
        db_size_quota: None,
        downgrade: None,
        livez: None,
        readyz: None,
        status: None,
    };
    match result {
        Ok(s) => {
            // Active alarms show up in status errors too; they are reported (and judged)
            // once, as alarms, not as a fault of this endpoint.
            let errors: Vec<&String> = s.errors.iter().filter(|e| !e.contains("alarm:")).collect();
            h.healthy = errors.is_empty();
            if !errors.is_empty() {
                h.error = Some(
                    errors
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                );
            }
            h.is_leader = s.leader != 0 && s.leader == s.member_id;
            h.fill(s);
        }
        Err(e) => {
            // A member without a leader still answers Status; show what it says. Asked
            // within the dial timeout: a member that answered nothing in a whole command
            // timeout must not cost another.
            if let Ok(mut ep) = Endpoint::connect(conn, url).await
                && let Ok(s) = within(conn.dial_timeout, "status", ep.status()).await
            {
                h.fill(s);
            }
            h.error = Some(if h.status.is_none() && url.starts_with("http://") {
                super::connect::with_tls_hint(url, e.into(), conn.dial_timeout)
            } else {
                e.into()
            });
        }
    }
    h
}

/// Check the given endpoints (or, with `cluster`, every member) and judge.
pub async fn check(conn: &Connection, opts: &HealthOptions) -> HealthReport {
    check_watched(conn, opts, Watch::QUIET).await
}

/// [`check`], telling the watch what a long HashKV is doing while it waits (and stopping
/// it when the watch is interrupted).
pub async fn check_watched(
    conn: &Connection,
    opts: &HealthOptions,
    watch: Watch<'_>,
) -> HealthReport {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut members: Option<Vec<Member>> = None;
    let mut urls = conn.endpoints.clone();

    if opts.cluster {
        match member_list(conn).await {
            Ok(list) => {
                urls = Vec::new();
                for m in &list {
                    match m.client_urls.first() {
                        Some(u) => urls.push(u.clone()),
                        None => problems.push(format!(
                            "member {} ({}) has no client URL: not started yet?",
                            hex_id(m.id),
                            if m.name.is_empty() {
                                "unnamed"
                            } else {
                                &m.name
                            }
                        )),
                    }
                }
                members = Some(list);
            }
            Err(e) => problems.push(format!("member list: {e}")),
        }
    } else {
        // Only for member names; a failure shows up in the endpoint checks.
        members = member_list(conn).await.ok();
    }

    let mut endpoints = check_all(conn, &urls).await;
    if let Some(list) = &members {
        for e in &mut endpoints {
            if let Some(s) = &e.status {
                e.name = list
                    .iter()
                    .find(|m| m.id == s.member_id)
                    .map(|m| m.name.clone());
            }
        }
    }

    for e in &mut endpoints {
        if let Some(size) = e.db_size {
            let usage = size as f64 / opts.quota as f64;
            e.quota_usage = Some((usage * 10_000.0).round() / 10_000.0);
            if usage >= QUOTA_WARN_RATIO {
                warnings.push(format!(
                    "{}: db size {} is {:.0}% of the quota {}",
                    e.endpoint,
                    size,
                    usage * 100.0,
                    opts.quota
                ));
            }
        }
        if !e.healthy {
            problems.push(format!(
                "{} is unhealthy: {}",
                e.endpoint,
                e.error.as_deref().unwrap_or("unknown error")
            ));
        }
    }

    if let Some(local) = LocalMember::of(conn) {
        probe_local(conn, &local, &mut endpoints, &mut problems, &mut warnings).await;
    }
    if let Some(d) = endpoints
        .iter()
        .find_map(|e| e.status.as_ref().and_then(|s| s.downgrade_enabled()))
    {
        warnings.push(downgrade_warning(&d.target_version));
    }

    let mut alarms = Vec::new();
    let mut alarms_listed = false;
    // Any voting member that answered can list alarms (they are cluster-wide state); a
    // learner refuses the call.
    let voter = endpoints
        .iter()
        .find(|e| e.status.as_ref().is_some_and(|s| !s.is_learner))
        .or_else(|| endpoints.iter().find(|e| e.status.is_some()));
    if let Some(first) = voter {
        match alarm_list(conn, &first.endpoint).await {
            Ok(list) => {
                alarms_listed = true;
                for a in list {
                    problems.push(alarm_problem(&a.alarm, &hex_id(a.member_id)));
                    alarms.push(AlarmReport {
                        member_id: hex_id(a.member_id),
                        alarm: a.alarm,
                    });
                }
            }
            Err(e) => problems.push(format!("alarm list on {}: {e}", first.endpoint)),
        }
    }

    let cluster = match members {
        Some(list) if opts.cluster => Some(
            cluster_checks(
                conn,
                &list,
                &mut endpoints,
                &mut problems,
                &mut warnings,
                watch,
            )
            .await,
        ),
        _ => None,
    };

    HealthReport {
        healthy: problems.is_empty(),
        endpoints,
        cluster,
        alarms,
        problems,
        warnings,
        quota_backend_bytes: opts.quota,
        alarms_listed,
        data_dir: None,
    }
}

/// The preflight of every run that starts etcd on data (migrate, rejoin): the manifest's
/// image must not be an older minor than the storage version the members report (Status
/// `storageVersion`, etcd >= 3.6). Ok with what was compared; refused (exit 4) otherwise.
/// An untagged image, or members that report no storage version (3.5), pass with a note.
pub fn check_image_release(manifest: &std::path::Path, report: &HealthReport) -> Result<String> {
    let image = crate::manifest::StaticPod::load(manifest)
        .ok()
        .and_then(|p| p.etcd_container().ok().and_then(|c| c.image.clone()));
    let Some(image) = image else {
        return Ok("the manifest names no image: release not compared".into());
    };
    let newest = report
        .endpoints
        .iter()
        .filter_map(|e| e.storage_version.as_deref())
        .max_by_key(|v| Version::parse(v));
    let Some(storage) = newest else {
        return Ok(format!(
            "image {image}; the members report no storage version (etcd 3.5 data)"
        ));
    };
    match version::image_too_old(&image, storage) {
        Some(reason) => Err(Error::refused("release", reason)),
        None => Ok(format!("image {image} reads storage version {storage}")),
    }
}

/// How a downgrade in progress reads (health warns; maintenance refuses with it).
pub fn downgrade_warning(target: &str) -> String {
    format!(
        "a cluster downgrade to {target} is in progress (Status downgradeInfo): maintenance (defrag, maintain, compact) refuses until it completes or `etcdctl downgrade cancel` ends it"
    )
}

/// The member the manifest describes: its metrics URL (for `/livez`, `/readyz`) and the
/// client URLs it listens on and advertises (to tell which endpoint it is).
struct LocalMember {
    metrics_url: String,
    client_urls: Vec<String>,
}

impl LocalMember {
    /// Only when the manifest filled in the connection: flags alone name no metrics URL.
    fn of(conn: &Connection) -> Option<LocalMember> {
        let pod = crate::manifest::StaticPod::load(conn.manifest.as_ref()?).ok()?;
        let list = |name: &str| -> Vec<String> {
            pod.etcd_flag(name)
                .ok()
                .flatten()
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let metrics = list("listen-metrics-urls");
        // kubelet probes the plain-HTTP listener (kubeadm: http://127.0.0.1:2381).
        let url = metrics
            .iter()
            .find(|u| u.starts_with("http://"))
            .or(metrics.first())?;
        let mut client_urls = list("listen-client-urls");
        client_urls.extend(list("advertise-client-urls"));
        Some(LocalMember {
            metrics_url: wildcard_to_loopback(url),
            client_urls,
        })
    }
}

/// `http://0.0.0.0:2381` listens everywhere; ask it on loopback.
fn wildcard_to_loopback(url: &str) -> String {
    url.replacen("://0.0.0.0:", "://127.0.0.1:", 1)
        .replacen("://[::]:", "://[::1]:", 1)
}

/// Probe `/livez` and `/readyz` of the manifest's member (when it runs etcd >= 3.5.11) and
/// judge: a failing `/livez` is a problem (kubelet restarts the member after the liveness
/// probe's failureThreshold); a failing `/readyz` is a problem, except on a learner, which
/// etcd >= 3.5.19 reports not ready by design until it is promoted.
async fn probe_local(
    conn: &Connection,
    local: &LocalMember,
    endpoints: &mut [EndpointHealth],
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let Some(e) = endpoints.iter_mut().find(|e| {
        local
            .client_urls
            .iter()
            .any(|u| wildcard_to_loopback(u) == e.endpoint || *u == e.endpoint)
    }) else {
        return;
    };
    let Some(v) = e.version.as_deref().and_then(Version::parse) else {
        return;
    };
    if v < version::LIVEZ {
        return;
    }
    let url = local.metrics_url.clone();
    let timeout = conn.command_timeout;
    let Ok((livez, readyz)) =
        tokio::task::spawn_blocking(move || super::probe::livez_readyz(&url, timeout)).await
    else {
        return;
    };
    if !livez.ok {
        problems.push(format!(
            "{}: {} is {}: kubelet restarts the member once its liveness probe has failed failureThreshold times",
            e.endpoint,
            livez.url,
            livez.summary()
        ));
    }
    if !readyz.ok {
        if e.is_learner && v >= version::READYZ_LEARNER {
            warnings.push(format!(
                "{}: {} is {}: a learner is not ready until it is promoted (etcd >= 3.5.19); kubeadm's startup probe (24 x 10 s) restarts it if it is not promoted in time: `etcdctl member promote {}`",
                e.endpoint,
                readyz.url,
                readyz.summary(),
                e.member_id.as_deref().unwrap_or("ID")
            ));
        } else {
            problems.push(format!(
                "{}: {} is {}",
                e.endpoint,
                readyz.url,
                readyz.summary()
            ));
        }
    }
    e.livez = Some(livez);
    e.readyz = Some(readyz);
}

/// Check several endpoints at once.
pub async fn check_all(conn: &Connection, urls: &[String]) -> Vec<EndpointHealth> {
    let tasks: Vec<_> = urls
        .iter()
        .map(|u| {
            let conn = conn.clone();
            let u = u.clone();
            tokio::spawn(async move { check_endpoint(&conn, &u).await })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("health task does not panic"));
    }
    out
}

/// The member list from the first endpoint that answers it.
pub async fn member_list(conn: &Connection) -> Result<Vec<Member>, String> {
    let mut last = String::from("no endpoint");
    for url in &conn.endpoints {
        match async {
            let mut ep = Endpoint::connect(conn, url).await?;
            within(conn.command_timeout, "member list", ep.members()).await
        }
        .await
        {
            Ok(m) => return Ok(m),
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    Err(last)
}

async fn alarm_list(conn: &Connection, url: &str) -> Result<Vec<Alarm>, String> {
    let mut ep = Endpoint::connect(conn, url).await?;
    Ok(within(conn.command_timeout, "alarm list", ep.alarms()).await?)
}

async fn cluster_checks(
    conn: &Connection,
    members: &[Member],
    endpoints: &mut [EndpointHealth],
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
    watch: Watch<'_>,
) -> ClusterHealth {
    let reference = strangers(conn, members, endpoints, problems, warnings).await;
    let cluster_id = reference.map(hex_id);
    let endpoints: &[EndpointHealth] = endpoints;
    // The leader, raft and hash checks judge this cluster's members, not strangers.
    let answered: Vec<&Status> = endpoints
        .iter()
        .filter(|e| e.stranger.is_none())
        .filter_map(|e| e.status.as_ref())
        .collect();

    let mut leaders: Vec<u64> = answered.iter().map(|s| s.leader).collect();
    leaders.sort_unstable();
    leaders.dedup();
    let leaders_agree = leaders.len() == 1 && leaders[0] != 0;
    let leader = if leaders_agree {
        Some(hex_id(leaders[0]))
    } else {
        None
    };
    if leaders.contains(&0) {
        problems.push("a member has no leader".into());
    } else if leaders.len() > 1 {
        let ids: Vec<String> = leaders.iter().map(|l| hex_id(*l)).collect();
        problems.push(format!(
            "members disagree on the leader: {}",
            ids.join(", ")
        ));
    }
    if leaders_agree && !members.iter().any(|m| m.id == leaders[0]) {
        problems.push(format!(
            "leader {} is not in the member list",
            hex_id(leaders[0])
        ));
    }

    let indexes: Vec<u64> = answered.iter().map(|s| s.raft_index).collect();
    let raft_index_spread = match (indexes.iter().min(), indexes.iter().max()) {
        (Some(lo), Some(hi)) => Some(hi - lo),
        _ => None,
    };
    if let Some(spread) = raft_index_spread
        && spread > MAX_RAFT_INDEX_SPREAD
    {
        warnings.push(format!(
            "raft index spread {spread} exceeds {MAX_RAFT_INDEX_SPREAD}: a member is lagging"
        ));
    }

    let mut hash_kv = Vec::new();
    let (hash_revision, hashes_agree) =
        hash_agreement(conn, endpoints, problems, &mut hash_kv, watch).await;
    warnings.extend(hash_kv.iter().filter(|t| t.slow).map(Timing::note));

    ClusterHealth {
        cluster_id,
        members: members.len(),
        leader,
        leaders_agree,
        raft_index_spread,
        hash_revision,
        hashes_agree,
        hash_kv,
    }
}

/// HashKV on every healthy member at the lowest current revision among them. Members that
/// compacted at different revisions hash different ranges; retry at a fresher revision.
///
/// etcd refuses HashKV at the compaction revision itself, so right after `compact` to the
/// current revision (no write since) no explicit revision can be hashed: then hash the
/// current state (revision 0) and compare only when every member reports the same revision.
///
/// Each HashKV gets its own deadline from the member's db size; `timings` gets every one.
async fn hash_agreement(
    conn: &Connection,
    endpoints: &[EndpointHealth],
    problems: &mut Vec<String>,
    timings: &mut Vec<Timing>,
    watch: Watch<'_>,
) -> (Option<i64>, Option<bool>) {
    // Learners refuse HashKV ("rpc not supported for learner"): compare voting members.
    let healthy: Vec<&EndpointHealth> = endpoints
        .iter()
        .filter(|e| e.healthy && !e.is_learner && e.stranger.is_none())
        .collect();
    let Some(revision) = healthy.iter().filter_map(|e| e.revision).min() else {
        return (None, None);
    };
    let mut at = revision;
    for _attempt in 0..3 {
        let mut hashes: Vec<(String, HashKv)> = Vec::new();
        let mut compacted = false;
        for e in &healthy {
            let target = hashkv::Target {
                url: &e.endpoint,
                name: e.name.as_deref(),
                db_size: e.db_size.unwrap_or(0),
            };
            let (result, timing) = hashkv::hash_kv(conn, &target, at, watch).await;
            timings.push(timing);
            match result {
                Ok(h) => hashes.push((e.endpoint.clone(), h)),
                Err(err) if at != 0 && err.is(RpcErrorKind::Compacted) => {
                    compacted = true;
                    break;
                }
                Err(err) => {
                    problems.push(format!("hashkv at {at} on {}: {err}", e.endpoint));
                    return (Some(revision), None);
                }
            }
        }
        if compacted {
            at = 0;
            continue;
        }
        let compacts: Vec<i64> = hashes.iter().map(|(_, h)| h.compact_revision).collect();
        if compacts.windows(2).any(|w| w[0] != w[1]) {
            // A compaction was being applied while we hashed: try once more.
            continue;
        }
        if at == 0
            && hashes
                .windows(2)
                .any(|w| w[0].1.revision != w[1].1.revision)
        {
            // A write landed between two current-state hashes: try once more.
            continue;
        }
        let hashed_at = if at == 0 {
            hashes.first().map_or(revision, |(_, h)| h.revision)
        } else {
            at
        };
        let agree = hashes.windows(2).all(|w| w[0].1.hash == w[1].1.hash);
        if !agree {
            let detail: Vec<String> = hashes
                .iter()
                .map(|(u, h)| format!("{u}={:08x}", h.hash))
                .collect();
            problems.push(format!(
                "members' data differs at revision {hashed_at}: {}",
                detail.join(" ")
            ));
        }
        return (Some(hashed_at), Some(agree));
    }
    problems.push(format!(
        "hashkv at {revision}: members report different compact revisions"
    ));
    (Some(revision), None)
}

/// The fix for a stranger, on its own node.
const STRANGER_FIX: &str = "on that node run `etcdops member rejoin --yes`";

/// Find the strangers among the endpoints of the member list, mark them (not healthy,
/// `stranger` says why) and name each in `problems`; returns the cluster id of the member
/// list: the one most of its members that answered report. An endpoint that answered is a
/// stranger when its cluster id differs or its member id is not in the list; one that did
/// not answer, when its peer URL answers for another cluster id.
async fn strangers(
    conn: &Connection,
    members: &[Member],
    endpoints: &mut [EndpointHealth],
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<u64> {
    let listed = |id: u64| members.iter().any(|m| m.id == id);
    let insiders: Vec<u64> = endpoints
        .iter()
        .filter_map(|e| e.status.as_ref())
        .filter(|s| listed(s.member_id))
        .map(|s| s.cluster_id)
        .collect();
    let all: Vec<u64> = endpoints
        .iter()
        .filter_map(|e| e.status.as_ref())
        .map(|s| s.cluster_id)
        .collect();
    let reference = most_common(&insiders).or_else(|| most_common(&all))?;
    // The silent ones: ask their peer URLs, all at once.
    let probes: Vec<_> = endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| e.status.is_none())
        .filter_map(|(i, e)| {
            let m = members
                .iter()
                .find(|m| m.client_urls.first() == Some(&e.endpoint))?;
            let peer = m.peer_urls.first()?.clone();
            let conn = conn.clone();
            let (id, name) = (m.id, m.name.clone());
            Some((
                i,
                id,
                name,
                peer.clone(),
                tokio::spawn(async move { super::peer::cluster_of(&conn, &peer).await }),
            ))
        })
        .collect();
    for (i, id, name, peer, task) in probes {
        let answer = match task.await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                warnings.push(format!(
                    "{}: its peer URL did not say which cluster it is in: {e}",
                    endpoints[i].endpoint
                ));
                continue;
            }
            Err(_) => continue,
        };
        if answer.cluster_id == reference {
            continue;
        }
        let own = answer.member_at(&peer).map(|m| m.id);
        let why = format!(
            "it serves no client request, and its peer URL {peer} answers for cluster id {}, \
             not this cluster's {}{}",
            hex_id(answer.cluster_id),
            hex_id(reference),
            match own {
                Some(o) if !listed(o) => format!(
                    ", as member {} which is not in this member list (where {} {} stands)",
                    hex_id(o),
                    name_or_unnamed(&name),
                    hex_id(id)
                ),
                _ => String::new(),
            }
        );
        mark(&mut endpoints[i], why, problems);
    }
    // The leader most members of this cluster follow, to tell a member that leads a
    // cluster of its own (a wiped kubeadm first node: same member id, same cluster id).
    let followed: Vec<u64> = endpoints
        .iter()
        .filter_map(|e| e.status.as_ref())
        .filter(|s| s.cluster_id == reference && listed(s.member_id) && s.leader != 0)
        .map(|s| s.leader)
        .collect();
    let their_leader = most_common(&followed);
    for e in endpoints.iter_mut() {
        let Some(s) = &e.status else { continue };
        let other_cluster = s.cluster_id != reference;
        let unlisted = !listed(s.member_id);
        let own_leader = s.leader == s.member_id
            && their_leader.is_some_and(|l| l != s.member_id)
            && followed.iter().filter(|l| **l == s.member_id).count() == 1;
        if !other_cluster && !unlisted && !own_leader {
            continue;
        }
        if !other_cluster && !unlisted {
            let why = format!(
                "it answers as member {} leading a cluster of its own, while the other \
                 members follow {}",
                hex_id(s.member_id),
                hex_id(their_leader.unwrap_or_default())
            );
            mark(e, why, problems);
            continue;
        }
        let why = match (other_cluster, unlisted) {
            (true, true) => format!(
                "it answers as member {} of cluster id {}, not this cluster's {}, and that \
                 member is not in this member list",
                hex_id(s.member_id),
                hex_id(s.cluster_id),
                hex_id(reference)
            ),
            (true, false) => format!(
                "it answers for cluster id {}, not this cluster's {}",
                hex_id(s.cluster_id),
                hex_id(reference)
            ),
            _ => format!(
                "it answers as member {} (cluster id {}), which is not in this member list",
                hex_id(s.member_id),
                hex_id(s.cluster_id)
            ),
        };
        mark(e, why, problems);
    }
    Some(reference)
}

fn mark(e: &mut EndpointHealth, why: String, problems: &mut Vec<String>) {
    problems.push(format!(
        "{} is a stranger: {why}; {STRANGER_FIX}",
        e.endpoint
    ));
    e.healthy = false;
    e.stranger = Some(why);
}

fn name_or_unnamed(name: &str) -> &str {
    if name.is_empty() {
        "unnamed member"
    } else {
        name
    }
}

/// The most common value (the first seen among equals).
fn most_common(values: &[u64]) -> Option<u64> {
    values
        .iter()
        .max_by_key(|v| {
            (
                values.iter().filter(|w| w == v).count(),
                std::cmp::Reverse(values.iter().position(|w| w == *v)),
            )
        })
        .copied()
}

#[cfg(test)]
mod tests {
    use super::most_common;

    /// The member list's cluster id is the one most of its members report: one stranger
    /// among three never outvotes the others, whatever the order they answered in.
    #[test]
    fn the_cluster_id_is_the_one_most_members_report() {
        assert_eq!(most_common(&[7, 8, 7]), Some(7));
        assert_eq!(most_common(&[8, 7, 7]), Some(7));
        assert_eq!(most_common(&[8, 7]), Some(8));
        assert_eq!(most_common(&[]), None);
    }
}
