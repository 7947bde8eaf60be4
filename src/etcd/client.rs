//! A thin wrapper over etcd-client for one endpoint: our own plain types in and out, so that
//! no etcd-client type leaves `src/etcd/`. Errors are one-line strings; callers decide
//! whether a failure means "unreachable" or "the operation failed".

use std::time::Duration;

use etcd_client::{AlarmAction, AlarmType, Client};

use super::connect::{Connection, describe};

/// One member's status (`Maintenance.Status`).
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub member_id: u64,
    pub cluster_id: u64,
    pub version: String,
    pub leader: u64,
    pub is_learner: bool,
    pub db_size: u64,
    pub db_size_in_use: u64,
    pub revision: i64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub errors: Vec<String>,
}

/// A member from `Cluster.MemberList`.
#[derive(Debug, Clone, Default)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
}

/// An active alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    pub member_id: u64,
    /// `NOSPACE`, `CORRUPT`, ...
    pub alarm: String,
}

/// `Maintenance.HashKV` at a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    pub hash: u32,
    pub compact_revision: i64,
    /// The revision of the store when the hash was computed (header revision).
    pub revision: i64,
}

/// A connected client for exactly one endpoint.
pub struct Endpoint {
    pub url: String,
    client: Client,
}

impl Endpoint {
    /// Connect with the connection's command timeout. Unconfirmed until the first call.
    pub async fn connect(conn: &Connection, url: &str) -> Result<Self, String> {
        Self::connect_with_timeout(conn, url, conn.command_timeout).await
    }

    /// Connect with a specific request timeout (defrag and snapshots need long ones).
    pub async fn connect_with_timeout(
        conn: &Connection,
        url: &str,
        request_timeout: Duration,
    ) -> Result<Self, String> {
        let client = conn.client(url, request_timeout).await?;
        Ok(Endpoint {
            url: url.to_string(),
            client,
        })
    }

    /// A linearizable read of the key `health`, as `etcdctl endpoint health` does. Permission
    /// denied still proves that the request went through consensus.
    pub async fn linearizable_get(&mut self) -> Result<(), String> {
        match self.client.get("health", None).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = describe(&e);
                if text.contains("permission denied") {
                    Ok(())
                } else {
                    Err(text)
                }
            }
        }
    }

    pub async fn status(&mut self) -> Result<Status, String> {
        let s = self.client.status().await.map_err(|e| describe(&e))?;
        let header = s.header();
        Ok(Status {
            member_id: header.map_or(0, |h| h.member_id()),
            cluster_id: header.map_or(0, |h| h.cluster_id()),
            revision: header.map_or(0, |h| h.revision()),
            version: s.version().to_string(),
            leader: s.leader(),
            is_learner: s.is_learner(),
            db_size: s.db_size().max(0) as u64,
            db_size_in_use: s.raft_used_db_size().max(0) as u64,
            raft_term: s.raft_term(),
            raft_index: s.raft_index(),
            raft_applied_index: s.raft_applied_index(),
            errors: s.errors().to_vec(),
        })
    }

    pub async fn members(&mut self) -> Result<Vec<Member>, String> {
        let resp = self.client.member_list().await.map_err(|e| describe(&e))?;
        Ok(resp
            .members()
            .iter()
            .map(|m| Member {
                id: m.id(),
                name: m.name().to_string(),
                client_urls: m.client_urls().to_vec(),
                peer_urls: m.peer_urls().to_vec(),
                is_learner: m.is_learner(),
            })
            .collect())
    }

    pub async fn alarms(&mut self) -> Result<Vec<Alarm>, String> {
        let resp = self
            .client
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .map_err(|e| describe(&e))?;
        Ok(resp
            .alarms()
            .iter()
            .map(|a| Alarm {
                member_id: a.member_id(),
                alarm: alarm_name(a.alarm()),
            })
            .collect())
    }

    pub async fn hash_kv(&mut self, revision: i64) -> Result<HashKv, String> {
        let resp = self
            .client
            .hash_kv(revision)
            .await
            .map_err(|e| describe(&e))?;
        Ok(HashKv {
            hash: resp.hash(),
            compact_revision: resp.compact_version(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }
}

pub(crate) fn alarm_name(a: AlarmType) -> String {
    match a {
        AlarmType::Nospace => "NOSPACE".into(),
        AlarmType::Corrupt => "CORRUPT".into(),
        AlarmType::None => "NONE".into(),
    }
}
