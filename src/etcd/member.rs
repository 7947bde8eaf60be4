//! Which member a node-changing command judges: the one whose manifest (and data dir) it
//! changes, never one that `--endpoints` or `ETCDCTL_ENDPOINTS` happen to name. The endpoint
//! comes from the manifest's client URLs; the member that answers there must carry the
//! manifest's `--name` and `--initial-advertise-peer-urls` in the member list.

use std::path::Path;

use super::client::{Endpoint, Member, RpcError, RpcErrorKind, within};
use super::connect::{Connection, manifest_endpoints};
use crate::error::{Error, Result};
use crate::manifest::StaticPod;
use crate::output::hex_id;

fn split(v: Option<String>) -> Vec<String> {
    v.unwrap_or_default()
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The endpoint to judge this node's member through. `given` is what flags or env said: when
/// it names none of the manifest's client URLs it names another member, and that is refused
/// (exit 2, naming both); when it includes this member's URL (a whole-cluster
/// `ETCDCTL_ENDPOINTS`), only that URL is used.
pub fn local_endpoints(given: &[String], pod: &StaticPod, manifest: &Path) -> Result<Vec<String>> {
    let preferred = manifest_endpoints(pod)?;
    let mut own = split(pod.etcd_flag("listen-client-urls")?);
    own.extend(split(pod.etcd_flag("advertise-client-urls")?));
    own.extend(preferred.iter().cloned());
    let given: Vec<String> = given
        .iter()
        .map(|e| e.trim().trim_end_matches('/').to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if given.is_empty() {
        return Ok(preferred);
    }
    if let Some(mine) = given.iter().find(|g| own.contains(g)) {
        return Ok(vec![mine.clone()]);
    }
    Err(Error::Usage(format!(
        "--endpoints/ETCDCTL_ENDPOINTS name {} but the member this node's manifest {} runs \
         listens at {}: a node-changing command judges the member whose manifest it changes; \
         unset ETCDCTL_ENDPOINTS or pass --endpoints={}",
        given.join(","),
        manifest.display(),
        own.join(","),
        preferred.join(",")
    )))
}

/// Prove that the member answering at the connection's first endpoint is the manifest's:
/// same `--name`, and its peer URLs include `--initial-advertise-peer-urls`. Exit 2 naming
/// both when not.
pub async fn check_local(conn: &Connection, pod: &StaticPod) -> Result<String> {
    let url = conn.endpoints.first().cloned().unwrap_or_default();
    let name = pod.etcd_flag("name")?.unwrap_or_default();
    let peers = split(pod.etcd_flag("initial-advertise-peer-urls")?);
    let err = |e: RpcError| Error::Unreachable {
        endpoints: url.clone(),
        reason: e.into(),
    };
    let mut ep = Endpoint::connect(conn, &url).await.map_err(err)?;
    let status = within(conn.command_timeout, "status", ep.status())
        .await
        .map_err(err)?;
    let members = within(conn.command_timeout, "member list", ep.members())
        .await
        .map_err(err)?;
    let Some(m) = members.iter().find(|m| m.id == status.member_id) else {
        return Err(Error::Usage(format!(
            "the member at {url} ({}) is not in its own member list",
            hex_id(status.member_id)
        )));
    };
    let peer_ok = peers.is_empty()
        || peers
            .iter()
            .any(|p| m.peer_urls.iter().any(|q| q.trim_end_matches('/') == p));
    if m.name != name || !peer_ok {
        return Err(Error::Usage(format!(
            "{url} answers as member {} ({}, peer URLs {}) but the manifest {} is member {} \
             (peer URLs {}): refusing to judge another member than the one this command changes",
            m.name,
            hex_id(m.id),
            m.peer_urls.join(","),
            pod.path.display(),
            name,
            peers.join(",")
        )));
    }
    Ok(format!(
        "{url} is member {} ({}), as the manifest says",
        m.name,
        hex_id(m.id)
    ))
}

// --- membership changes for `member rejoin`, always through the *other* members -----------

/// Client URLs where the other members of this node's cluster probably listen, from the
/// manifest alone (this member may be down): each `--initial-cluster` peer URL's host with
/// the scheme and port of this member's own client URL (kubeadm gives every member the same
/// ports). Only candidates: the member list read through them is the authority.
pub fn peer_candidates(pod: &StaticPod) -> Result<Vec<String>> {
    let own = manifest_endpoints(pod)?;
    let own_peers = split(pod.etcd_flag("initial-advertise-peer-urls")?);
    let Some((scheme, _, port)) = own.first().and_then(|u| url_parts(u)) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in split(pod.etcd_flag("initial-cluster")?) {
        let Some((_, peer)) = item.split_once('=') else {
            continue;
        };
        if own_peers.iter().any(|p| p == peer.trim_end_matches('/')) {
            continue;
        }
        if let Some((_, host, _)) = url_parts(peer) {
            let c = format!("{scheme}://{host}:{port}");
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// `scheme://host:port[/...]` -> (scheme, host, port); an IPv6 host keeps its brackets.
fn url_parts(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    if host.is_empty() || port.is_empty() || host.ends_with(']') && !host.starts_with('[') {
        return None;
    }
    Some((scheme, host, port))
}

fn membership_err(op: &'static str, urls: &[String], reason: impl Into<String>) -> Error {
    Error::Etcd {
        op,
        endpoint: urls.join(","),
        reason: reason.into(),
    }
}

/// The member list from the first of `urls` that answers within the command timeout.
pub async fn list_via(conn: &Connection, urls: &[String]) -> Result<Vec<Member>> {
    let mut errors = Vec::new();
    for url in urls {
        let attempt = async {
            let mut ep = Endpoint::connect(conn, url).await?;
            within(conn.command_timeout, "member list", ep.members()).await
        };
        match attempt.await {
            Ok(m) => return Ok(m),
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    Err(Error::Unreachable {
        endpoints: urls.join(","),
        reason: if errors.is_empty() {
            "no other member's client URL is known".into()
        } else {
            errors.join("; ")
        },
    })
}

/// Run one membership call on the first of `urls` that can take it: an unreachable member
/// is skipped, any answer from etcd (success or a typed refusal) is final.
async fn first_taking<T, F, Fut>(
    conn: &Connection,
    urls: &[String],
    what: &str,
    call: F,
) -> std::result::Result<T, RpcError>
where
    F: Fn(Endpoint) -> Fut,
    Fut: Future<Output = std::result::Result<T, RpcError>>,
{
    let mut last = RpcError::other("no other member's client URL is known");
    for url in urls {
        let ep = match Endpoint::connect(conn, url).await {
            Ok(ep) => ep,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match within(conn.command_timeout, what, call(ep)).await {
            Err(e) if e.is(RpcErrorKind::Unavailable) => last = e,
            other => return other,
        }
    }
    Err(last)
}

/// `MemberRemove` of `id` through `urls`. Idempotent: `Ok(false)` when the member was gone
/// already (a crashed run that removed it before it could record so).
pub async fn remove_via(conn: &Connection, urls: &[String], id: u64) -> Result<bool> {
    match first_taking(conn, urls, "member remove", |mut ep| async move {
        ep.member_remove(id).await
    })
    .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.is(RpcErrorKind::MemberNotFound) => Ok(false),
        Err(e) => Err(membership_err("member remove", urls, e)),
    }
}

/// `MemberAdd` of a learner at `peer_url` through `urls`: its id. Idempotent: when a learner
/// with that peer URL exists already (added by a crashed attempt), its id; a *voting* member
/// at that URL is refused.
pub async fn add_learner_via(
    conn: &Connection,
    urls: &[String],
    peer_url: &str,
) -> Result<Reconfig<u64>> {
    let existing = |members: &[Member]| {
        members
            .iter()
            .find(|m| {
                m.peer_urls
                    .iter()
                    .any(|u| u.trim_end_matches('/') == peer_url)
            })
            .cloned()
    };
    if let Some(m) = existing(&list_via(conn, urls).await?) {
        return if m.is_learner {
            Ok(Reconfig::Done(m.id))
        } else {
            Err(Error::refused(
                format!("add a learner at {peer_url}"),
                format!(
                    "voting member {} ({}) has that peer URL already",
                    m.name,
                    hex_id(m.id)
                ),
            ))
        };
    }
    let url = peer_url.to_string();
    match first_taking(conn, urls, "member add", |mut ep| {
        let url = url.clone();
        async move { ep.member_add_learner(&url).await }
    })
    .await
    {
        Ok(id) => Ok(Reconfig::Done(id)),
        Err(e) if e.is(RpcErrorKind::UnhealthyCluster) => Ok(Reconfig::NotYet(e.message)),
        Err(e) if e.is(RpcErrorKind::PeerUrlExists) => {
            match existing(&list_via(conn, urls).await?) {
                Some(m) if m.is_learner => Ok(Reconfig::Done(m.id)),
                _ => Err(membership_err("member add", urls, e)),
            }
        }
        Err(e) if e.is(RpcErrorKind::TooManyLearners) => Err(Error::refused(
            format!("add a learner at {peer_url}"),
            format!("{e}: the cluster has a learner already; promote or remove it first"),
        )),
        Err(e) => Err(membership_err("member add", urls, e)),
    }
}

/// A membership change etcd may refuse for now: right after another change it wants every
/// member connected for a while first ("unhealthy cluster").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconfig<T> {
    Done(T),
    /// Refused for now, with etcd's reason: try again later.
    NotYet(String),
}

/// What a promote attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promote {
    /// The member votes (promoted now, or earlier by a crashed attempt).
    Voter,
    /// etcd says "learner not ready" (not yet in sync with the leader): try again later.
    NotReady(String),
}

/// `MemberPromote` of learner `id` through `urls`. Idempotent: a member that votes already
/// is `Voter`; one that is gone is an error.
pub async fn promote_via(conn: &Connection, urls: &[String], id: u64) -> Result<Promote> {
    let members = list_via(conn, urls).await?;
    match members.iter().find(|m| m.id == id) {
        None => {
            return Err(membership_err(
                "member promote",
                urls,
                format!("member {} is not in the member list", hex_id(id)),
            ));
        }
        Some(m) if !m.is_learner => return Ok(Promote::Voter),
        Some(_) => {}
    }
    match first_taking(conn, urls, "member promote", |mut ep| async move {
        ep.member_promote(id).await
    })
    .await
    {
        Ok(()) => Ok(Promote::Voter),
        Err(e) if e.is(RpcErrorKind::LearnerNotReady) || e.is(RpcErrorKind::UnhealthyCluster) => {
            Ok(Promote::NotReady(e.message))
        }
        Err(e) => Err(membership_err("member promote", urls, e)),
    }
}

/// The leader's raft index, asked of the first of `urls` whose status names a leader.
pub async fn leader_raft_index(conn: &Connection, urls: &[String]) -> Result<(u64, u64)> {
    let mut errors = Vec::new();
    for url in urls {
        let attempt = async {
            let mut ep = Endpoint::connect(conn, url).await?;
            within(conn.command_timeout, "status", ep.status()).await
        };
        match attempt.await {
            Ok(s) if s.leader != 0 && s.leader == s.member_id => {
                return Ok((s.leader, s.raft_index));
            }
            Ok(_) => {}
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    Err(membership_err(
        "status",
        urls,
        if errors.is_empty() {
            "no member there is the leader".to_string()
        } else {
            errors.join("; ")
        },
    ))
}
