//! Restore, the parts that do not depend on the saga engine: from an archive (or a bare
//! snapshot) and this node's manifest, the plan every node computes alike — this member's
//! name and peer URL from the manifest, `--initial-cluster` from the archive's member list,
//! a cluster token derived from the archive id — the refusals (snapshot fails its trailer,
//! archive sums fail, the member list lacks this node or disagrees on its peer URL, no
//! restore tool), and running etcd's own restore tool into a new dir.
//!
//! The restore run itself (stop etcd and kubelet, swap the restored dir in, start, wait for
//! the local member, report missing peers; journaled with resume and rollback) is to be a
//! saga on `crate::run`, whose `Host` seam needs a restore effect first.

pub mod plan;
