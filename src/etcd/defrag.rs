//! Rolling defragmentation, one member at a time, as ahrtr/etcd-defrag and OpenShift's
//! operator do it, with what they leave out:
//!
//! - a health gate over *every* member from MemberList before anything (NOSPACE tolerated:
//!   defrag is how it is cleared); any other problem refuses and nothing is touched;
//! - one client per member (a balanced client would send "defragment" to whichever member
//!   it likes); quick calls under the command timeout, the defragment under its own, long one;
//! - learners skipped (etcd rejects defrag on them); followers first, the leader last, and
//!   the leader is re-read before every pick, because a defrag can trigger an election;
//! - with `move_leader`, leadership goes to an already defragmented, healthy follower before
//!   the old leader is defragmented, so the cluster never waits on a blocked leader;
//! - after each member, wait until that member and the whole cluster are healthy again
//!   (with a timeout that says what it waited for) before touching the next;
//! - a rule decides per member; a dry run computes the same plan and verdicts and changes
//!   nothing;
//! - stop at the first failure unless told to go on; the report lists every member in
//!   execution order, including those not attempted.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::{Endpoint, RpcErrorKind, Status, within};
use super::compact::{self, CompactOptions, Target};
use super::connect::Connection;
use super::health::{self, AlarmReport, HealthOptions, HealthReport};

use super::rule::{Rule, Vars};
use crate::error::{Error, Result};
use crate::output::hex_id;

/// The alarm defrag and maintain run with: they are how it is cleared.
pub const TOLERATED_ALARMS: [&str; 1] = ["NOSPACE"];

/// How often readiness is polled while waiting after a member.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct DefragOptions {
    /// Every member from MemberList; otherwise only the connection's endpoints.
    pub cluster: bool,
    /// Defragment a member only when this holds; `None`: every member.
    pub rule: Option<Rule>,
    /// With a NOSPACE alarm active, defragment every member whatever the rule says (maintain:
    /// etcd judges the quota on the db file's size, so every file must shrink).
    pub all_when_nospace: bool,
    /// Compact once (physically, to the current revision) before the first defrag.
    pub compact: bool,
    pub move_leader: bool,
    pub wait_between: Option<Duration>,
    pub dry_run: bool,
    /// The limit for one member's defragment (and for the compaction).
    pub defrag_timeout: Duration,
    /// How long to wait for the member and the cluster to be healthy after a defrag, and for a
    /// moved leadership to settle.
    pub healthy_timeout: Duration,
    pub continue_on_error: bool,
    /// The quota rules and reports judge db sizes against.
    pub quota: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Defragmented,
    Skipped,
    Failed,
    WouldDefragment,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Defragmented => "defragmented",
            Action::Skipped => "skipped",
            Action::Failed => "failed",
            Action::WouldDefragment => "would-defragment",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberOutcome {
    pub endpoint: String,
    pub member_id: String,
    pub name: String,
    /// Led the cluster when its turn came (before any leadership move).
    pub is_leader: bool,
    pub is_learner: bool,
    pub action: Action,
    pub reason: Option<String>,
    pub db_size_before: Option<u64>,
    pub db_size_in_use_before: Option<u64>,
    pub db_size_after: Option<u64>,
    /// Time spent in the defragment call itself.
    pub took_ms: u64,
    /// Where leadership went before this member (the old leader) was defragmented.
    pub leadership_moved_to: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DefragReport {
    pub ok: bool,
    pub dry_run: bool,
    pub rule: Option<String>,
    pub quota_backend_bytes: u64,
    /// A NOSPACE alarm was active when we started.
    pub nospace: bool,
    pub compacted_to: Option<i64>,
    /// In a dry run, the revision a real run would compact to.
    pub would_compact_to: Option<i64>,
    pub members: Vec<MemberOutcome>,
    /// Alarms disarmed (maintain only).
    pub disarmed: Vec<AlarmReport>,
    /// Why the run was refused before it touched anything, if it was.
    pub refused: Option<String>,
    /// Health after the run (maintain only): `None` when not checked.
    pub healthy_after: Option<bool>,
    /// What stands in the way: gate problems, failures, problems after.
    pub problems: Vec<String>,
    /// Things the operator should know that are not failures.
    pub notes: Vec<String>,
    pub took_ms: u64,
}

impl DefragReport {
    fn new(opts: &DefragOptions) -> Self {
        DefragReport {
            ok: true,
            dry_run: opts.dry_run,
            rule: opts.rule.as_ref().map(|r| r.text().to_string()),
            quota_backend_bytes: opts.quota,
            nospace: false,
            compacted_to: None,
            would_compact_to: None,
            members: Vec::new(),
            disarmed: Vec::new(),
            refused: None,
            healthy_after: None,
            problems: Vec::new(),
            notes: Vec::new(),
            took_ms: 0,
        }
    }

    /// The error that goes with this report: refused or unhealthy (4), failed (1), or none.
    pub fn verdict(&self, what: &str) -> Result<()> {
        if let Some(r) = &self.refused {
            return Err(Error::refused(what, r.clone()));
        }
        let failed: Vec<&MemberOutcome> = self
            .members
            .iter()
            .filter(|m| m.action == Action::Failed)
            .collect();
        if !failed.is_empty() {
            let detail: Vec<String> = failed
                .iter()
                .map(|m| {
                    format!(
                        "{} ({})",
                        m.endpoint,
                        m.reason.as_deref().unwrap_or("no reason")
                    )
                })
                .collect();
            return Err(Error::failed(
                what,
                format!(
                    "{} of {} member(s) failed: {}",
                    failed.len(),
                    self.members.len(),
                    detail.join("; ")
                ),
            ));
        }
        if self.healthy_after == Some(false) || !self.ok {
            return Err(Error::Unhealthy(format!(
                "after {what}: {}",
                self.problems.join("; ")
            )));
        }
        Ok(())
    }
}

/// A member to consider, with the URL we reach it by.
#[derive(Debug, Clone)]
struct Candidate {
    url: String,
    member_id: u64,
    name: String,
    is_learner: bool,
}

/// What the health gate learned, for the run to use.
pub struct Gate {
    pub health: HealthReport,
    /// Every member's client URL, for the readiness waits.
    pub urls: Vec<String>,
    leader: u64,
}

/// The gate's verdict: go, or the problems that refuse the run.
pub enum GateOutcome {
    Pass(Box<Gate>),
    Refuse(Vec<String>),
}

/// Health gate over every member from MemberList: NOSPACE tolerated, anything else refuses.
/// Nothing reachable is exit 3.
pub async fn gate(conn: &Connection, quota: u64) -> Result<GateOutcome> {
    let health = health::check(
        conn,
        &HealthOptions {
            cluster: true,
            quota,
        },
    )
    .await;
    if health.nothing_reachable() {
        return Err(health.verdict().expect_err("nothing reachable is an error"));
    }
    if let Some(d) = health
        .endpoints
        .iter()
        .find_map(|e| e.status.as_ref().and_then(|s| s.downgrade_enabled()))
    {
        return Err(super::compact::refuse_downgrade(
            "defrag",
            &d.target_version,
        ));
    }
    let blocking = health.problems_except_alarms(&TOLERATED_ALARMS);
    if !blocking.is_empty() {
        return Ok(GateOutcome::Refuse(blocking));
    }
    let urls = health
        .endpoints
        .iter()
        .map(|e| e.endpoint.clone())
        .collect();
    let leader = health
        .endpoints
        .iter()
        .filter_map(|e| e.status.as_ref())
        .map(|s| s.leader)
        .find(|l| *l != 0)
        .unwrap_or(0);
    Ok(GateOutcome::Pass(Box::new(Gate {
        health,
        urls,
        leader,
    })))
}

/// The rolling defrag: gate, optional compaction, then one member at a time.
pub async fn run(
    conn: &Connection,
    opts: &DefragOptions,
) -> Result<(DefragReport, Option<Box<Gate>>)> {
    let start = Instant::now();
    let mut report = DefragReport::new(opts);
    // Never take a member's capacity while another is down for a node-changing run.
    super::guard::refuse_if_held(conn, "defrag").await?;
    let gate = match gate(conn, opts.quota).await? {
        GateOutcome::Pass(g) => g,
        GateOutcome::Refuse(blocking) => {
            report.ok = false;
            report.refused = Some(format!(
                "the cluster is not healthy, nothing was defragmented: {}",
                blocking.join("; ")
            ));
            report.problems = blocking;
            report.took_ms = start.elapsed().as_millis() as u64;
            return Ok((report, None));
        }
    };
    report.nospace = gate.health.has_alarm("NOSPACE");
    if report.nospace {
        report.notes.push(if opts.all_when_nospace {
            "a NOSPACE alarm is active: every member is defragmented, whatever the rule says".into()
        } else {
            "a NOSPACE alarm is active: `etcdops maintain` defragments every member and disarms it"
                .into()
        });
    }

    let targets = targets(conn, opts, &gate).await?;

    if opts.compact {
        if opts.dry_run {
            report.would_compact_to = gate
                .health
                .endpoints
                .iter()
                .filter_map(|e| e.revision)
                .max();
        } else {
            let c = compact::compact(
                conn,
                &CompactOptions {
                    target: Target::Current,
                    physical: true,
                    timeout: opts.defrag_timeout,
                },
            )
            .await?;
            report.compacted_to = c.compacted_to;
            if let Some(n) = c.note {
                report.notes.push(n);
            }
            if opts.rule.is_some() {
                settle(conn, &gate.urls).await;
            }
        }
    }

    roll(conn, opts, &gate, targets, &mut report).await;
    report.ok = !report.members.iter().any(|m| m.action == Action::Failed);
    report.took_ms = start.elapsed().as_millis() as u64;
    Ok((report, Some(gate)))
}

/// Wait until every member's dbSizeInUse has stopped moving (at most 3 s), so that a rule
/// judges the space the compaction freed: etcd commits its backend every 100 ms
/// (`--backend-batch-interval`) and freed pages count as free only after a later commit.
async fn settle(conn: &Connection, urls: &[String]) {
    let read = async || {
        let mut sizes = Vec::new();
        for url in urls {
            let s = async {
                let mut ep = Endpoint::connect(conn, url).await?;
                within(conn.command_timeout, "status", ep.status()).await
            }
            .await;
            sizes.push(s.map(|s| s.db_size_in_use).ok());
        }
        sizes
    };
    let mut last = read().await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = read().await;
        if now == last {
            return;
        }
        last = now;
    }
}

/// Which members to consider: every member, or the ones the given endpoints lead to.
async fn targets(conn: &Connection, opts: &DefragOptions, gate: &Gate) -> Result<Vec<Candidate>> {
    let members = health::member_list(conn).await.map_err(|e| Error::Etcd {
        op: "member list",
        endpoint: conn.endpoints.join(","),
        reason: e,
    })?;
    let name_of = |id: u64| {
        members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.name.clone())
            .unwrap_or_default()
    };
    let learner =
        |id: u64, s: &Status| s.is_learner || members.iter().any(|m| m.id == id && m.is_learner);
    let mut out: Vec<Candidate> = Vec::new();
    if opts.cluster {
        for e in &gate.health.endpoints {
            let s = e
                .status
                .as_ref()
                .expect("the gate passed: every member answered");
            out.push(Candidate {
                url: e.endpoint.clone(),
                member_id: s.member_id,
                name: name_of(s.member_id),
                is_learner: learner(s.member_id, s),
            });
        }
    } else {
        for url in &conn.endpoints {
            let mut ep = Endpoint::connect(conn, url)
                .await
                .map_err(|e| Error::Etcd {
                    op: "connect",
                    endpoint: url.clone(),
                    reason: e.into(),
                })?;
            let s = super::client::within(conn.command_timeout, "status", ep.status())
                .await
                .map_err(|e| Error::Etcd {
                    op: "status",
                    endpoint: url.clone(),
                    reason: e.into(),
                })?;
            // Two URLs of one member: defragment it once.
            if out.iter().any(|t| t.member_id == s.member_id) {
                continue;
            }
            out.push(Candidate {
                url: url.clone(),
                member_id: s.member_id,
                name: name_of(s.member_id),
                is_learner: learner(s.member_id, &s),
            });
        }
    }
    Ok(out)
}

async fn roll(
    conn: &Connection,
    opts: &DefragOptions,
    gate: &Gate,
    targets: Vec<Candidate>,
    report: &mut DefragReport,
) {
    let (learners, mut pending): (Vec<Candidate>, Vec<Candidate>) =
        targets.into_iter().partition(|t| t.is_learner);
    for t in learners {
        report.members.push(outcome(
            &t,
            false,
            Action::Skipped,
            Some("learner: etcd rejects defragment on learners".into()),
        ));
    }
    let mut leader = gate.leader;
    let mut stopped: Option<String> = None;
    while !pending.is_empty() {
        if let Some(why) = &stopped {
            for t in pending.drain(..) {
                let is_leader = t.member_id == leader;
                report
                    .members
                    .push(outcome(&t, is_leader, Action::Skipped, Some(why.clone())));
            }
            break;
        }
        // Followers first; the leader only when nothing else is left.
        let idx = pending
            .iter()
            .position(|t| t.member_id != leader)
            .unwrap_or(0);
        let t = pending.remove(idx);
        let is_leader = t.member_id == leader;
        let done = member(conn, opts, gate, &t, is_leader, report).await;
        let failed = done.action == Action::Failed;
        let defragmented = done.action == Action::Defragmented;
        report.members.push(done);
        if failed && !opts.continue_on_error {
            stopped = Some(format!(
                "not attempted: {} failed first (--continue-on-error goes on after a failure)",
                t.url
            ));
            continue;
        }
        if opts.dry_run {
            continue;
        }
        // Whatever happened, learn who leads now: a defrag can cause an election.
        if let Ok(l) = ready(conn, &gate.urls).await {
            leader = l;
        }
        if defragmented
            && !pending.is_empty()
            && let Some(d) = opts.wait_between
        {
            tokio::time::sleep(d).await;
        }
    }
}

fn outcome(
    t: &Candidate,
    is_leader: bool,
    action: Action,
    reason: Option<String>,
) -> MemberOutcome {
    MemberOutcome {
        endpoint: t.url.clone(),
        member_id: hex_id(t.member_id),
        name: t.name.clone(),
        is_leader,
        is_learner: t.is_learner,
        action,
        reason,
        db_size_before: None,
        db_size_in_use_before: None,
        db_size_after: None,
        took_ms: 0,
        leadership_moved_to: None,
    }
}

/// One member: status, verdict, (move leadership), defragment, status, wait healthy.
async fn member(
    conn: &Connection,
    opts: &DefragOptions,
    gate: &Gate,
    t: &Candidate,
    is_leader: bool,
    report: &DefragReport,
) -> MemberOutcome {
    let mut out = outcome(t, is_leader, Action::Failed, None);
    // One client for this member, made with the longer of the two timeouts; each call is
    // held to its own limit by `within`.
    let client_timeout = opts.defrag_timeout.max(conn.command_timeout);
    let mut ep = match Endpoint::connect_with_timeout(conn, &t.url, client_timeout).await {
        Ok(ep) => ep,
        Err(e) => {
            out.reason = Some(format!("connect: {e}"));
            return out;
        }
    };
    let before = match within(conn.command_timeout, "status", ep.status()).await {
        Ok(s) => s,
        Err(e) => {
            out.reason = Some(format!("status before: {e}"));
            return out;
        }
    };
    out.db_size_before = Some(before.db_size);
    out.db_size_in_use_before = Some(before.db_size_in_use);
    let vars = Vars {
        db_size: before.db_size,
        db_size_in_use: before.db_size_in_use,
        db_quota: opts.quota,
    };

    let why = if report.nospace && opts.all_when_nospace {
        Some("NOSPACE alarm active: every member is defragmented".to_string())
    } else if let Some(rule) = &opts.rule {
        if !rule.matches(&vars) {
            out.action = Action::Skipped;
            out.reason = Some(format!("rule is false: {}", vars.describe()));
            return out;
        }
        Some(format!("rule is true: {}", vars.describe()))
    } else {
        None
    };

    let move_to = if is_leader && opts.move_leader {
        successor(gate, t, report)
    } else {
        None
    };
    // A one-member cluster has nobody to hand leadership to: defragment it in place.
    let why = if is_leader && opts.move_leader && move_to.is_none() {
        Some(format!(
            "{}no voting follower to hand leadership to: defragmented in place",
            why.map(|w| format!("{w}; ")).unwrap_or_default()
        ))
    } else {
        why
    };

    if opts.dry_run {
        out.action = Action::WouldDefragment;
        out.reason = match move_to {
            Some(id) => Some(format!(
                "{}; would move leadership to {} first",
                why.as_deref().unwrap_or("every member"),
                hex_id(id)
            )),
            None => why,
        };
        return out;
    }

    if let Some(target) = move_to {
        let moved = async {
            within(conn.command_timeout, "move-leader", ep.move_leader(target)).await?;
            let what = format!("leadership to settle on {}", hex_id(target));
            wait_ready(conn, &gate.urls, opts.healthy_timeout, &what, Some(target)).await
        }
        .await;
        if let Err(e) = moved {
            out.reason = Some(format!("move leadership to {}: {e}", hex_id(target)));
            return out;
        }
        out.leadership_moved_to = Some(hex_id(target));
    }

    let started = Instant::now();
    let result = within(opts.defrag_timeout, "defragment", ep.defragment()).await;
    out.took_ms = started.elapsed().as_millis() as u64;
    if let Err(e) = result {
        let hint = if e.is(RpcErrorKind::Timeout) {
            " (etcd may still be defragmenting; raise --defrag-timeout for large dbs)"
        } else {
            ""
        };
        out.reason = Some(format!("defragment: {e}{hint}"));
        return out;
    }
    if let Ok(after) = within(conn.command_timeout, "status", ep.status()).await {
        out.db_size_after = Some(after.db_size);
    }
    let what = format!(
        "{} and the cluster to be healthy after its defragment",
        t.url
    );
    if let Err(e) = wait_ready(conn, &gate.urls, opts.healthy_timeout, &what, None).await {
        out.reason = Some(format!("defragmented, but {e}"));
        return out;
    }
    if out.db_size_after.is_none() {
        out.db_size_after = within(conn.command_timeout, "status", ep.status())
            .await
            .ok()
            .map(|s| s.db_size);
    }
    out.action = Action::Defragmented;
    out.reason = why;
    out
}

/// Whom to hand leadership to: the follower defragmented last (fresh and healthy, as the
/// wait after it proved), else any voting follower.
fn successor(gate: &Gate, leader: &Candidate, report: &DefragReport) -> Option<u64> {
    let by_id = |hex: &str| {
        gate.health
            .endpoints
            .iter()
            .filter_map(|e| e.status.as_ref())
            .find(|s| hex_id(s.member_id) == hex && !s.is_learner)
            .map(|s| s.member_id)
    };
    report
        .members
        .iter()
        .rev()
        .filter(|m| m.action == Action::Defragmented && !m.is_learner)
        .find_map(|m| by_id(&m.member_id))
        .or_else(|| {
            gate.health
                .endpoints
                .iter()
                .filter(|e| e.healthy)
                .filter_map(|e| e.status.as_ref())
                .find(|s| s.member_id != leader.member_id && !s.is_learner)
                .map(|s| s.member_id)
        })
        .filter(|id| *id != leader.member_id)
}

/// Every member healthy and agreeing on one leader, now; returns the leader.
async fn ready(conn: &Connection, urls: &[String]) -> Result<u64, String> {
    let checks = health::check_all(conn, urls).await;
    for c in &checks {
        if !c.healthy {
            return Err(format!(
                "{}: {}",
                c.endpoint,
                c.error.as_deref().unwrap_or("unhealthy")
            ));
        }
    }
    let mut leaders: Vec<u64> = checks
        .iter()
        .filter_map(|c| c.status.as_ref().map(|s| s.leader))
        .collect();
    leaders.sort_unstable();
    leaders.dedup();
    match leaders.as_slice() {
        [l] if *l != 0 => Ok(*l),
        _ => Err(format!(
            "members disagree on the leader: {}",
            leaders
                .iter()
                .map(|l| hex_id(*l))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Poll `ready` until it holds (and, if given, `leader` leads) or `timeout` passes; the error
/// says what we waited for and the last thing that was wrong.
pub async fn wait_ready(
    conn: &Connection,
    urls: &[String],
    timeout: Duration,
    what: &str,
    leader: Option<u64>,
) -> Result<u64, String> {
    let start = Instant::now();
    loop {
        let last = match ready(conn, urls).await {
            Ok(l) if leader.is_none_or(|want| want == l) => return Ok(l),
            Ok(l) => format!("the leader is still {}", hex_id(l)),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(format!(
                "waited {} for {what}; last seen: {last}",
                humantime::format_duration(timeout)
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
