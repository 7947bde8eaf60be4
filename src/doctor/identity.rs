//! `etcd.identity`: whether this node's member belongs to the cluster its peers are in —
//! the *stranger* check (issue 21). A member whose data dir was wiped bootstraps afresh
//! from its manifest's `--initial-cluster`: after a restore (new ids) it comes back with
//! another cluster id, and its peers reject it; a kubeadm first node, whose
//! `--initial-cluster` lists only itself, comes back as a new, empty, healthy
//! single-member cluster that its kube-apiserver would happily use. Either way the member
//! is alone in its member list while the manifest or the peers say otherwise. The fix is
//! `member rejoin`, which exists for exactly this.
//!
//! The peers are the other members named by `--initial-cluster` and any other endpoint
//! given (`--endpoints`, `ETCDCTL_ENDPOINTS`); this member's cluster id comes from its
//! status, or from its peer port when its client port serves nothing (no quorum in a
//! cluster of its own).

use super::{Ctx, Verdict};
use crate::output::hex_id;

/// What the peers and this member said, gathered once with the other etcd facts.
#[derive(Debug, Clone, Default)]
pub struct IdentityFacts {
    /// The peers' client URLs asked.
    pub peers: Vec<String>,
    /// The first peer that answered: its URL, cluster id and member list.
    pub peer: Option<(String, u64, Vec<crate::etcd::client::Member>)>,
    /// Why no peer answered.
    pub peer_error: Option<String>,
    /// This member from its peer port, when its client port did not answer: (cluster id,
    /// member id if the peer port's list names it, members in its list), or why not.
    pub own_peer: Option<Result<OwnPeer, String>>,
    /// How many members the manifest's `--initial-cluster` names.
    pub initial_cluster: usize,
}

/// This member as its peer port answered.
#[derive(Debug, Clone, Copy)]
pub struct OwnPeer {
    pub cluster_id: u64,
    /// Its member id, when the peer port's member list names its peer URL.
    pub member_id: Option<u64>,
    /// How many members its own list has.
    pub members: usize,
}

pub fn identity(ctx: &Ctx) -> Verdict {
    let facts = match ctx.etcd() {
        Ok(f) => f,
        Err(e) => return Verdict::skipped(format!("cannot ask etcd: {e}")),
    };
    let id = &facts.identity;
    let fix = ctx.etcdops("member rejoin --yes");
    let name = ctx
        .pod
        .as_ref()
        .ok()
        .and_then(|p| p.etcd_flag("name").ok().flatten())
        .unwrap_or_default();
    // This member: (member id, cluster id, members in its own list).
    let own_list = facts.members.as_ref().map(Vec::len).ok();
    let (mine, cluster, listed) = match (&facts.local.status, &id.own_peer) {
        (Some(s), _) => (Some(s.member_id), s.cluster_id, own_list),
        (None, Some(Ok(p))) => (p.member_id, p.cluster_id, Some(p.members)),
        (None, other) => {
            return Verdict::skipped(format!(
                "the local member at {} answers neither on its client URL ({}) nor on its \
                 peer URL ({}); see etcd.health",
                facts.local.endpoint,
                facts.local.error.as_deref().unwrap_or("no status"),
                match other {
                    Some(Err(e)) => e.as_str(),
                    _ => "not asked: no --initial-advertise-peer-urls",
                }
            ));
        }
    };
    let me = format!(
        "this member ({name}{}) is in cluster id {}",
        mine.map_or(String::new(), |m| format!(", {}", hex_id(m))),
        hex_id(cluster)
    );
    if let Some((url, theirs, members)) = &id.peer {
        if *theirs != cluster {
            return Verdict::fail(
                format!(
                    "{me}, its peers ({url}) in cluster id {}: this member's cluster id \
                     differs from its peers' — a stranger (a wiped member that bootstrapped \
                     a cluster of its own)",
                    hex_id(*theirs)
                ),
                fix,
            );
        }
        if let Some(m) = mine
            && !members.iter().any(|x| x.id == m)
        {
            return Verdict::fail(
                format!(
                    "{me}, as its peers ({url}), but their member list ({} members) does not \
                     have member {}: a stranger",
                    members.len(),
                    hex_id(m)
                ),
                fix,
            );
        }
        if listed == Some(1) && members.len() > 1 {
            return Verdict::fail(
                format!(
                    "{me}, as its peers ({url}), but it is alone in its own member list while \
                     theirs has {} members: a cluster of its own (a wiped first node)",
                    members.len()
                ),
                fix,
            );
        }
        return Verdict::ok(format!(
            "{me}, as its peers ({url}), whose member list has it ({} members)",
            members.len()
        ));
    }
    if listed == Some(1) && id.initial_cluster > 1 {
        return Verdict::fail(
            format!(
                "{me} and is alone in its member list, while the manifest's --initial-cluster \
                 names {} members (no peer answered: {})",
                id.initial_cluster,
                id.peer_error.as_deref().unwrap_or("none known")
            ),
            fix,
        );
    }
    if id.peers.is_empty() {
        return Verdict::ok(format!(
            "{me}; no peer to compare with (the manifest's --initial-cluster names only this \
             member; pass --endpoints with another member's client URL to compare)"
        ));
    }
    Verdict::warn(
        format!(
            "{me}; no peer answered to compare with ({}): {}",
            id.peers.join(", "),
            id.peer_error.as_deref().unwrap_or("no answer")
        ),
        ctx.etcdops("health --cluster"),
    )
}
