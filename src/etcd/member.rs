//! Which member a node-changing command judges: the one whose manifest (and data dir) it
//! changes, never one that `--endpoints` or `ETCDCTL_ENDPOINTS` happen to name. The endpoint
//! comes from the manifest's client URLs; the member that answers there must carry the
//! manifest's `--name` and `--initial-advertise-peer-urls` in the member list.

use std::path::Path;

use super::client::{Endpoint, RpcError, within};
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
