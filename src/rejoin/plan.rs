//! What a rejoin judges before it changes anything: this member (name, peer URL and data dir
//! from the manifest), the cluster as the *other* members list it, and the refusals — the
//! cluster would have no quorum without this member; this member is the healthy leader
//! (nothing to rejoin); the member list has an unstarted learner; this node's name or peer
//! URL is not a member (rejoin replaces a member, it does not add one). And the case rejoin
//! exists for, recognised: this node's member a *stranger* — answering for another cluster
//! id than the others, or as a member id their list does not have, or leading a cluster of
//! its own (a wiped kubeadm first node, whose `--initial-cluster` lists only itself, comes
//! back as a new, empty and healthy single-member cluster with its old member id). Pure:
//! the caller reads the cluster through `Host` and passes what it found.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::etcd::client::Member;
use crate::manifest::StaticPod;
use crate::output::hex_id;

/// This node's member as its manifest says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    pub name: String,
    pub peer_url: String,
    /// The data dir on the host.
    pub data_dir: PathBuf,
}

impl Me {
    pub fn from_manifest(manifest: &Path) -> Result<Me> {
        let pod = StaticPod::load(manifest)?;
        let name = pod
            .etcd_flag("name")?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::input(manifest, "the etcd command has no --name"))?;
        let peer_url = pod
            .etcd_flag("initial-advertise-peer-urls")?
            .map(|u| u.trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty() && !u.contains(','))
            .ok_or_else(|| {
                Error::input(
                    manifest,
                    "the etcd command needs exactly one --initial-advertise-peer-urls",
                )
            })?;
        Ok(Me {
            name,
            peer_url,
            data_dir: pod.data_volume()?.data_host_path,
        })
    }
}

/// What one endpoint answered in the health check of preflight.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    /// The endpoint asked.
    pub endpoint: String,
    pub member_id: Option<u64>,
    pub cluster_id: Option<u64>,
    /// The leader this endpoint knows (0: none).
    pub leader: u64,
    pub healthy: bool,
    pub is_leader: bool,
}

/// The verdict of preflight on the cluster: this member's old id, the voters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub old_member_id: u64,
    pub voters: usize,
    pub healthy_others: usize,
    /// Why this node's member is a stranger, when it answered as one.
    pub stranger: Option<String>,
}

fn has_peer(m: &Member, url: &str) -> bool {
    m.peer_urls.iter().any(|u| u.trim_end_matches('/') == url)
}

/// Judge the cluster for a rejoin of `me`: `members` as the other members list them,
/// `answers` what every endpoint checked (this member's own and the others') answered; the
/// answers are told apart by the member id they answered with, not by their order.
pub fn judge(me: &Me, members: &[Member], answers: &[Answer]) -> Result<Judged> {
    let what = format!("rejoin member {}", me.name);
    if let Some(l) = members
        .iter()
        .find(|m| m.is_learner && (m.name.is_empty() || m.client_urls.is_empty()))
    {
        return Err(Error::refused(
            &what,
            format!(
                "the member list has an unstarted learner {} (peer URLs {}): finish or remove \
                 it first (`etcdctl member remove {}`), one membership change at a time",
                hex_id(l.id),
                l.peer_urls.join(","),
                hex_id(l.id)
            ),
        ));
    }
    let listed: Vec<String> = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_urls.join("|")))
        .collect();
    let by_url = members.iter().find(|m| has_peer(m, &me.peer_url));
    let by_name = members.iter().find(|m| m.name == me.name);
    let mine = match (by_url, by_name) {
        (Some(a), Some(b)) if a.id == b.id => a,
        (Some(a), _) if a.name.is_empty() => a,
        _ => {
            return Err(Error::refused(
                &what,
                format!(
                    "this node's member ({} at {}, from the manifest) is not in the member \
                     list ({}): rejoin replaces an existing member; adding a new member is \
                     out of scope (`etcdctl member add`)",
                    me.name,
                    me.peer_url,
                    listed.join(", ")
                ),
            ));
        }
    };
    let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
    let quorum = voters.len() / 2 + 1;
    let healthy_others = answers
        .iter()
        .filter(|a| a.healthy)
        .filter_map(|a| a.member_id)
        .filter(|id| *id != mine.id && voters.iter().any(|v| v.id == *id))
        .count();
    if healthy_others < quorum {
        return Err(Error::refused(
            &what,
            format!(
                "the cluster has no quorum without this member: {healthy_others} other \
                 healthy voting member(s), quorum of {} is {quorum}; removing this member now \
                 could lose the cluster — restore from a backup instead (`etcdops restore`)",
                voters.len()
            ),
        ));
    }
    // The others: healthy voters other than this member, of the member list's cluster.
    let others: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.healthy)
        .filter(|a| {
            a.member_id
                .is_some_and(|id| id != mine.id && voters.iter().any(|v| v.id == id))
        })
        .collect();
    let cluster = others.iter().find_map(|a| a.cluster_id);
    let stranger = stranger(me, mine.id, members, answers, &others, cluster);
    // The healthy leader, as the others see it: a member leading a cluster of its own is
    // the stranger rejoin exists for, not a leader to leave alone.
    if stranger.is_none()
        && answers
            .iter()
            .any(|a| a.healthy && a.is_leader && a.member_id == Some(mine.id))
        && others.iter().all(|o| o.leader == mine.id)
    {
        return Err(Error::refused(
            &what,
            format!(
                "this member ({}) is the leader and healthy: nothing to rejoin; check it with \
                 `etcdops health --cluster`",
                hex_id(mine.id)
            ),
        ));
    }
    Ok(Judged {
        old_member_id: mine.id,
        voters: voters.len(),
        healthy_others,
        stranger,
    })
}

/// Why the answer of this node's own endpoint (the one not among `others`, at this node's
/// client URL or with this member's id) is a stranger's: another cluster id than the
/// others', a member id their list lacks, or a leader the others do not follow.
fn stranger(
    me: &Me,
    mine: u64,
    members: &[Member],
    answers: &[Answer],
    others: &[&Answer],
    cluster: Option<u64>,
) -> Option<String> {
    let local = answers.iter().find(|a| {
        a.member_id.is_some()
            && !others.iter().any(|o| o.endpoint == a.endpoint)
            && (a.member_id == Some(mine)
                || !a
                    .member_id
                    .is_some_and(|id| members.iter().any(|m| m.id == id)))
    })?;
    let id = local.member_id?;
    let at = if local.endpoint.is_empty() {
        String::new()
    } else {
        format!(" at {}", local.endpoint)
    };
    if let (Some(theirs), Some(its)) = (cluster, local.cluster_id)
        && theirs != its
    {
        return Some(format!(
            "{}{at} answers as member {} of cluster id {}, the other members' cluster id is {}",
            me.name,
            hex_id(id),
            hex_id(its),
            hex_id(theirs)
        ));
    }
    if !members.iter().any(|m| m.id == id) {
        return Some(format!(
            "{}{at} answers as member {}, which is not in the other members' list",
            me.name,
            hex_id(id)
        ));
    }
    if local.is_leader && !others.is_empty() && others.iter().all(|o| o.leader != id) {
        return Some(format!(
            "{}{at} leads a cluster of its own (member {}), the other members follow {}",
            me.name,
            hex_id(id),
            hex_id(others[0].leader)
        ));
    }
    None
}

/// `--initial-cluster` for the rejoined member: every member `name=peer URL`, sorted,
/// with `new_id` (this member's learner, unnamed until it starts) named `me.name`. Refuses
/// another unnamed member: etcd would not start with it.
pub fn initial_cluster(me: &Me, members: &[Member], new_id: u64) -> Result<String> {
    let mut parts = Vec::new();
    for m in members {
        let name = if m.id == new_id {
            me.name.as_str()
        } else {
            m.name.as_str()
        };
        if name.is_empty() {
            return Err(Error::refused(
                format!("rejoin member {}", me.name),
                format!(
                    "member {} has no name (it never started): --initial-cluster cannot name it",
                    hex_id(m.id)
                ),
            ));
        }
        for u in &m.peer_urls {
            parts.push(format!("{name}={}", u.trim_end_matches('/')));
        }
    }
    parts.sort();
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, name: &str, peer: &str, learner: bool) -> Member {
        Member {
            id,
            name: name.into(),
            client_urls: if name.is_empty() {
                vec![]
            } else {
                vec![peer.replace(":2380", ":2379")]
            },
            peer_urls: vec![peer.into()],
            is_learner: learner,
        }
    }

    fn me() -> Me {
        Me {
            name: "n2".into(),
            peer_url: "https://10.0.0.2:2380".into(),
            data_dir: "/var/lib/etcd".into(),
        }
    }

    fn three() -> Vec<Member> {
        vec![
            m(1, "n1", "https://10.0.0.1:2380", false),
            m(2, "n2", "https://10.0.0.2:2380", false),
            m(3, "n3", "https://10.0.0.3:2380", false),
        ]
    }

    /// Member `id` of cluster 7 at its own endpoint; a leader knows itself as leader, a
    /// follower knows member 1 as leader.
    fn ans(id: u64, healthy: bool, leader: bool) -> Answer {
        Answer {
            endpoint: format!("https://10.0.0.{id}:2379"),
            member_id: Some(id),
            cluster_id: Some(7),
            leader: if leader { id } else { 1 },
            healthy,
            is_leader: leader,
        }
    }

    const DOWN: Answer = Answer {
        endpoint: String::new(),
        member_id: None,
        cluster_id: None,
        leader: 0,
        healthy: false,
        is_leader: false,
    };

    #[test]
    fn a_broken_member_of_a_healthy_quorum_is_judged_for_rejoin() {
        let j = judge(
            &me(),
            &three(),
            &[DOWN, ans(1, true, true), ans(3, true, false)],
        )
        .unwrap();
        assert_eq!(j.old_member_id, 2);
        assert_eq!(j.voters, 3);
        // A healthy follower may be rejoined (a corrupt store whose hash differs, say).
        judge(
            &me(),
            &three(),
            &[ans(1, true, true), ans(2, true, false), ans(3, true, false)],
        )
        .unwrap();
    }

    /// Issue 21, hole 3: the case rejoin exists for. A wiped member that bootstrapped a
    /// cluster of its own answers healthy — for another cluster id (after a restore, with
    /// its pre-restore id), or, a kubeadm first node whose `--initial-cluster` lists only
    /// itself, as the leader of a single-member cluster with its very own old id.
    #[test]
    fn a_stranger_is_judged_for_rejoin_not_refused() {
        let others = [ans(1, true, true), ans(3, true, false)];
        // Another cluster id, a member id the others do not list.
        let mut s = ans(2, true, true);
        s.member_id = Some(0x99);
        s.leader = 0x99;
        s.cluster_id = Some(8);
        let mut all = vec![s];
        all.extend(others.iter().cloned());
        let j = judge(&me(), &three(), &all).unwrap();
        assert_eq!(j.old_member_id, 2);
        let why = j.stranger.unwrap();
        assert!(
            why.contains("cluster id 8") && why.contains("cluster id is 7"),
            "{why}"
        );
        // The same member id and cluster id, leading a cluster of its own.
        let s = ans(2, true, true);
        let mut all = vec![s];
        all.extend(others.iter().cloned());
        let j = judge(&me(), &three(), &all).unwrap();
        let why = j.stranger.unwrap();
        assert!(why.contains("leads a cluster of its own"), "{why}");
        // The real leader, followed by the others, is still left alone.
        let all = [ans(1, true, false), ans(3, true, false), ans(2, true, true)].map(|mut a| {
            a.leader = 2;
            a
        });
        let e = judge(&me(), &three(), &all).unwrap_err();
        assert!(e.one_line().contains("is the leader and healthy"), "{e}");
        // A member that answers nothing is no stranger by its answers (health names it).
        let j = judge(
            &me(),
            &three(),
            &[DOWN, ans(1, true, true), ans(3, true, false)],
        )
        .unwrap();
        assert_eq!(j.stranger, None);
    }

    #[test]
    fn refusals_name_their_reason() {
        let others = [DOWN, ans(1, true, true), ans(3, true, false)];
        let e = judge(&me(), &three(), &[DOWN, ans(1, true, true), DOWN]).unwrap_err();
        assert_eq!(e.exit_code(), 4);
        assert!(e.one_line().contains("no quorum without this member"));
        let followers =
            [ans(1, true, false), ans(3, true, false), ans(2, true, true)].map(|mut a| {
                a.leader = 2;
                a
            });
        let e = judge(&me(), &three(), &followers).unwrap_err();
        assert!(e.one_line().contains("is the leader and healthy"), "{e}");
        let mut l = three();
        l.push(m(9, "", "https://10.0.0.9:2380", true));
        let e = judge(&me(), &l, &others).unwrap_err();
        assert!(e.one_line().contains("unstarted learner 9"), "{e}");
        let mut other = me();
        other.peer_url = "https://10.0.0.7:2380".into();
        let e = judge(&other, &three(), &others).unwrap_err();
        assert!(e.one_line().contains("adding a new member is out of scope"));
        let mut other = me();
        other.name = "nX".into();
        let e = judge(&other, &three(), &others).unwrap_err();
        assert!(e.one_line().contains("not in the member list"));
    }

    #[test]
    fn initial_cluster_names_the_new_learner_after_this_node() {
        let mut l = three();
        l.retain(|m| m.id != 2);
        l.push(m(42, "", "https://10.0.0.2:2380", true));
        assert_eq!(
            initial_cluster(&me(), &l, 42).unwrap(),
            "n1=https://10.0.0.1:2380,n2=https://10.0.0.2:2380,n3=https://10.0.0.3:2380"
        );
        l.push(m(43, "", "https://10.0.0.8:2380", true));
        assert!(initial_cluster(&me(), &l, 42).is_err());
    }
}
