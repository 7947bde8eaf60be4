//! A thin wrapper over etcd-client for one endpoint: our own plain types in and out, so that
//! no etcd-client type leaves `src/etcd/`. Errors are an [`RpcError`]: a one-line message
//! and a [`RpcErrorKind`] mapped once, here, where the error enters (from the gRPC status
//! code and etcd's own error messages, as etcd's `rpctypes` does), so that no caller
//! classifies an error by searching its text. Callers decide whether a failure means
//! "unreachable" or "the operation failed".

use std::time::Duration;

use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions, GetOptions, SnapshotStreaming,
};

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
    /// The data dir's storage version (etcd >= 3.6; empty before).
    pub storage_version: String,
    /// The backend quota as the member reports it (etcd >= 3.6; 0 before). Wrong before
    /// 3.6.6 (etcd-io/etcd#20790): use [`Status::db_size_quota_reported`].
    pub db_size_quota: u64,
    /// The cluster's downgrade state (etcd >= 3.6; `None` before).
    pub downgrade: Option<Downgrade>,
}

/// `Status.downgradeInfo` (etcd >= 3.6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Downgrade {
    pub enabled: bool,
    pub target_version: String,
}

impl Status {
    /// `dbSizeQuota` when the member reports it correctly: etcd 3.6.6 and later (3.6.0-3.6.5
    /// report a wrong value, CHANGELOG-3.6 v3.6.6 "Fix endpoint status not returning the
    /// correct storage quota", etcd-io/etcd#20790; 3.5 has no such field).
    pub fn db_size_quota_reported(&self) -> Option<u64> {
        let v = super::version::Version::parse(&self.version)?;
        (v >= super::version::Version::new(3, 6, 6) && self.db_size_quota > 0)
            .then_some(self.db_size_quota)
    }

    /// The downgrade in progress, if the cluster has one enabled.
    pub fn downgrade_enabled(&self) -> Option<&Downgrade> {
        self.downgrade.as_ref().filter(|d| d.enabled)
    }
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

/// What kind of failure an RPC met, for the callers that act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcErrorKind {
    /// `mvcc: required revision has been compacted` (OutOfRange).
    Compacted,
    /// `mvcc: required revision is a future revision` (OutOfRange).
    FutureRevision,
    /// A learner refuses the request (`rpc not supported for learner`).
    NotForLearner,
    /// `permission denied` (auth enabled): the request still went through consensus.
    PermissionDenied,
    /// Our own deadline (`within`) or the server's ran out.
    Timeout,
    /// The endpoint could not be reached or the channel broke.
    Unavailable,
    /// `etcdserver: member not found` (a remove or promote of an id not in the list).
    MemberNotFound,
    /// `etcdserver: Peer URLs already exists` (an add of a URL a member has).
    PeerUrlExists,
    /// `etcdserver: can only promote a learner member which is in sync with leader`.
    LearnerNotReady,
    /// `etcdserver: too many learner members in cluster`.
    TooManyLearners,
    /// `etcdserver: unhealthy cluster`: a reconfiguration refused until every member has been
    /// connected for a while (etcd's strict reconfig check, right after another change).
    UnhealthyCluster,
    Other,
}

/// An RPC's failure: what kind, and the one-line message for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub kind: RpcErrorKind,
    pub message: String,
}

impl RpcError {
    pub fn other(message: impl Into<String>) -> Self {
        RpcError {
            kind: RpcErrorKind::Other,
            message: message.into(),
        }
    }

    pub fn is(&self, kind: RpcErrorKind) -> bool {
        self.kind == kind
    }

    /// The one place an etcd-client error is classified.
    pub fn from_client(e: &etcd_client::Error) -> Self {
        let message = describe(e);
        let kind = match e {
            etcd_client::Error::GRpcStatus(s) => {
                let m = s.message();
                match s.code() {
                    tonic_code::OutOfRange
                        if m.ends_with("required revision has been compacted") =>
                    {
                        RpcErrorKind::Compacted
                    }
                    tonic_code::OutOfRange
                        if m.ends_with("required revision is a future revision") =>
                    {
                        RpcErrorKind::FutureRevision
                    }
                    _ if m.ends_with("rpc not supported for learner") => {
                        RpcErrorKind::NotForLearner
                    }
                    _ if m.ends_with("permission denied") => RpcErrorKind::PermissionDenied,
                    _ if m.ends_with("etcdserver: member not found") => {
                        RpcErrorKind::MemberNotFound
                    }
                    _ if m.ends_with("etcdserver: Peer URLs already exists") => {
                        RpcErrorKind::PeerUrlExists
                    }
                    _ if m.ends_with("learner member which is in sync with leader") => {
                        RpcErrorKind::LearnerNotReady
                    }
                    _ if m.ends_with("too many learner members in cluster") => {
                        RpcErrorKind::TooManyLearners
                    }
                    _ if m.ends_with("etcdserver: unhealthy cluster") => {
                        RpcErrorKind::UnhealthyCluster
                    }
                    tonic_code::DeadlineExceeded => RpcErrorKind::Timeout,
                    tonic_code::Unavailable => RpcErrorKind::Unavailable,
                    _ => RpcErrorKind::Other,
                }
            }
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                RpcErrorKind::Unavailable
            }
            _ => RpcErrorKind::Other,
        };
        RpcError { kind, message }
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<RpcError> for String {
    fn from(e: RpcError) -> String {
        e.message
    }
}

impl From<String> for RpcError {
    fn from(message: String) -> RpcError {
        RpcError::other(message)
    }
}

use tonic::Code as tonic_code;

/// A connected client for exactly one endpoint.
pub struct Endpoint {
    pub url: String,
    client: Client,
}

impl Endpoint {
    /// Connect with the connection's command timeout. Unconfirmed until the first call.
    pub async fn connect(conn: &Connection, url: &str) -> Result<Self, RpcError> {
        Self::connect_with_timeout(conn, url, conn.command_timeout).await
    }

    /// Connect with a specific request timeout (defrag and snapshots need long ones).
    pub async fn connect_with_timeout(
        conn: &Connection,
        url: &str,
        request_timeout: Duration,
    ) -> Result<Self, RpcError> {
        let client = conn.client(url, request_timeout).await?;
        Ok(Endpoint {
            url: url.to_string(),
            client,
        })
    }

    /// The first of the connection's endpoints that answers `Status` within the command
    /// timeout and is a voting member (learners refuse compact, alarms and snapshots),
    /// connected with `request_timeout` for what follows. None answering is exit 3.
    pub async fn first_answering(
        conn: &Connection,
        request_timeout: Duration,
    ) -> crate::error::Result<(Self, Status)> {
        let mut errors = Vec::new();
        for url in &conn.endpoints {
            let attempt = async {
                let mut ep = Self::connect_with_timeout(conn, url, request_timeout).await?;
                let status = within(conn.command_timeout, "status", ep.status()).await?;
                Ok::<_, RpcError>((ep, status))
            };
            match attempt.await {
                Ok((_, s)) if s.is_learner => errors.push(format!("{url}: a learner")),
                Ok(found) => return Ok(found),
                Err(e) => errors.push(format!(
                    "{url}: {}",
                    super::connect::with_tls_hint(url, e.into(), conn.dial_timeout)
                )),
            }
        }
        Err(crate::error::Error::Unreachable {
            endpoints: conn.endpoints.join(","),
            reason: errors.join("; "),
        })
    }

    /// A linearizable read of the key `health`, as `etcdctl endpoint health` does. Permission
    /// denied still proves that the request went through consensus.
    pub async fn linearizable_get(&mut self) -> Result<(), RpcError> {
        match self.client.get("health", None).await {
            Ok(_) => Ok(()),
            Err(e) => match RpcError::from_client(&e) {
                e if e.is(RpcErrorKind::PermissionDenied) => Ok(()),
                e => Err(e),
            },
        }
    }

    pub async fn status(&mut self) -> Result<Status, RpcError> {
        let s = self
            .client
            .status()
            .await
            .map_err(|e| RpcError::from_client(&e))?;
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
            storage_version: s.storage_version().to_string(),
            db_size_quota: s.db_size_quota().max(0) as u64,
            downgrade: s.downgrade_info().map(|d| Downgrade {
                enabled: d.enabled(),
                target_version: d.target_version().to_string(),
            }),
        })
    }

    pub async fn members(&mut self) -> Result<Vec<Member>, RpcError> {
        let resp = self
            .client
            .member_list()
            .await
            .map_err(|e| RpcError::from_client(&e))?;
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

    /// `Cluster.MemberRemove`.
    pub async fn member_remove(&mut self, id: u64) -> Result<(), RpcError> {
        self.client
            .member_remove(id)
            .await
            .map(|_| ())
            .map_err(|e| RpcError::from_client(&e))
    }

    /// `Cluster.MemberAdd` of a learner at `peer_url`: the new member's id.
    pub async fn member_add_learner(&mut self, peer_url: &str) -> Result<u64, RpcError> {
        let resp = self
            .client
            .member_add(
                [peer_url],
                Some(etcd_client::MemberAddOptions::new().with_is_learner()),
            )
            .await
            .map_err(|e| RpcError::from_client(&e))?;
        resp.member()
            .map(|m| m.id())
            .ok_or_else(|| RpcError::other("member add answered without the new member"))
    }

    /// `Cluster.MemberPromote` of a learner.
    pub async fn member_promote(&mut self, id: u64) -> Result<(), RpcError> {
        self.client
            .member_promote(id)
            .await
            .map(|_| ())
            .map_err(|e| RpcError::from_client(&e))
    }

    pub async fn alarms(&mut self) -> Result<Vec<Alarm>, RpcError> {
        let resp = self
            .client
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .map_err(|e| RpcError::from_client(&e))?;
        Ok(alarm_list(resp.alarms()))
    }

    pub async fn hash_kv(&mut self, revision: i64) -> Result<HashKv, RpcError> {
        let resp = self
            .client
            .hash_kv(revision)
            .await
            .map_err(|e| RpcError::from_client(&e))?;
        Ok(HashKv {
            hash: resp.hash(),
            compact_revision: resp.compact_version(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }
}

impl Endpoint {
    /// How many keys the store held at `revision` (a count-only range over every key), as
    /// `etcdctl get "" --prefix --count-only --rev R` reports it.
    pub async fn key_count(&mut self, revision: i64) -> Result<i64, RpcError> {
        let opts = GetOptions::new()
            .with_all_keys()
            .with_count_only()
            .with_revision(revision);
        let resp = self
            .client
            .get(vec![0u8], Some(opts))
            .await
            .map_err(|e| RpcError::from_client(&e))?;
        Ok(resp.count())
    }

    /// Compact the key-value history up to `revision`; with `physical`, return only once the
    /// backend has really dropped the old revisions (so that a defrag after it frees them).
    /// Returns the header revision.
    pub async fn compact(&mut self, revision: i64, physical: bool) -> Result<i64, RpcError> {
        let opts = if physical {
            CompactionOptions::new().with_physical()
        } else {
            CompactionOptions::new()
        };
        let resp = self
            .client
            .compact(revision, Some(opts))
            .await
            .map_err(|e| RpcError::from_client(&e))?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Defragment this member's backend. Blocks the member; the client's timeout must be long.
    pub async fn defragment(&mut self) -> Result<(), RpcError> {
        self.client
            .defragment()
            .await
            .map(|_| ())
            .map_err(|e| RpcError::from_client(&e))
    }

    /// Hand leadership to `target`. Must be sent to the current leader.
    pub async fn move_leader(&mut self, target: u64) -> Result<(), RpcError> {
        self.client
            .move_leader(target)
            .await
            .map(|_| ())
            .map_err(|e| RpcError::from_client(&e))
    }

    /// Deactivate one alarm; returns the alarms etcd says it deactivated.
    pub async fn disarm(&mut self, alarm: &Alarm) -> Result<Vec<Alarm>, RpcError> {
        let kind = match alarm.alarm.as_str() {
            "NOSPACE" => AlarmType::Nospace,
            "CORRUPT" => AlarmType::Corrupt,
            other => return Err(RpcError::other(format!("unknown alarm type {other}"))),
        };
        let mut opts = AlarmOptions::new();
        opts.with_member(alarm.member_id);
        let resp = self
            .client
            .alarm(AlarmAction::Deactivate, kind, Some(opts))
            .await
            .map_err(|e| RpcError::from_client(&e))?;
        Ok(alarm_list(resp.alarms()))
    }

    /// Start streaming a snapshot of this member's backend.
    pub async fn snapshot(&mut self) -> Result<Snapshot, RpcError> {
        let stream = self
            .client
            .snapshot()
            .await
            .map_err(|e| RpcError::from_client(&e))?;
        Ok(Snapshot { stream })
    }
}

/// Run one call under `limit`, whatever timeout its client was made with: a member's one
/// client serves quick calls and the long defragment alike.
pub async fn within<T, E: From<RpcError>>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(RpcError {
            kind: RpcErrorKind::Timeout,
            message: format!(
                "{what} timed out after {}",
                humantime::format_duration(limit)
            ),
        }
        .into()),
    }
}

/// A snapshot being streamed: chunks of the db file followed by etcd's sha256 trailer.
pub struct Snapshot {
    stream: SnapshotStreaming,
}

/// One chunk and how many bytes etcd says remain after it.
pub struct Chunk {
    pub blob: Vec<u8>,
    pub remaining: u64,
}

impl Snapshot {
    /// The next chunk, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<Chunk>, RpcError> {
        match self.stream.message().await {
            Ok(Some(m)) => Ok(Some(Chunk {
                blob: m.blob().to_vec(),
                remaining: m.remaining_bytes(),
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(RpcError::from_client(&e)),
        }
    }
}

fn alarm_list(alarms: &[etcd_client::AlarmMember]) -> Vec<Alarm> {
    alarms
        .iter()
        .map(|a| Alarm {
            member_id: a.member_id(),
            alarm: alarm_name(a.alarm()),
        })
        .collect()
}

pub(crate) fn alarm_name(a: AlarmType) -> String {
    match a {
        AlarmType::Nospace => "NOSPACE".into(),
        AlarmType::Corrupt => "CORRUPT".into(),
        AlarmType::None => "NONE".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, msg: &str) -> RpcError {
        RpcError::from_client(&etcd_client::Error::GRpcStatus(tonic::Status::new(
            code, msg,
        )))
    }

    /// etcd's own messages (server/etcdserver/api/v3rpc/rpctypes) map to kinds once, here.
    #[test]
    fn etcd_errors_are_classified_where_they_enter() {
        use tonic::Code;
        let cases = [
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
                RpcErrorKind::Compacted,
            ),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
                RpcErrorKind::FutureRevision,
            ),
            (
                Code::Unavailable,
                "etcdserver: rpc not supported for learner",
                RpcErrorKind::NotForLearner,
            ),
            (
                Code::PermissionDenied,
                "etcdserver: permission denied",
                RpcErrorKind::PermissionDenied,
            ),
            (
                Code::DeadlineExceeded,
                "context deadline exceeded",
                RpcErrorKind::Timeout,
            ),
            (
                Code::Unavailable,
                "etcdserver: leader changed",
                RpcErrorKind::Unavailable,
            ),
            (
                Code::Unknown,
                "etcdserver: request is too large",
                RpcErrorKind::Other,
            ),
        ];
        for (code, msg, kind) in cases {
            let e = status(code, msg);
            assert_eq!(e.kind, kind, "{msg}");
            assert_eq!(e.to_string(), msg);
        }
        // A message that merely mentions the word is not the error.
        assert_eq!(
            status(Code::Unknown, "key 'compacted' not found").kind,
            RpcErrorKind::Other
        );
    }
}
