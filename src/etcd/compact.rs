//! Compaction: once for the cluster (it is a raft proposal, so any member will do), to the
//! current revision, to a given one, or keeping the last N. Physical by default, so that the
//! space is really free in the backend when a defrag follows.
//!
//! Compacting to a revision that is already compacted is not a failure: the history the
//! operator wanted gone is gone. It is reported as such (`already_compacted`), exit 0.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::{Endpoint, RpcErrorKind};
use super::connect::Connection;
use crate::error::{Error, Result};

/// Which revision to compact to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The current revision: drop every superseded version.
    Current,
    /// Exactly this revision.
    Revision(i64),
    /// Keep the last N revisions (N >= 1; 1 is `Current`).
    Retain(u64),
}

#[derive(Debug, Clone)]
pub struct CompactOptions {
    pub target: Target,
    /// Wait until the backend has dropped the old revisions.
    pub physical: bool,
    /// The limit for the compaction call (physical compaction of a large db takes a while).
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompactReport {
    pub ok: bool,
    /// The endpoint the request went through.
    pub endpoint: String,
    /// The store's revision when we started.
    pub revision: i64,
    /// The revision compacted to (`null` when there was nothing to compact).
    pub compacted_to: Option<i64>,
    pub physical: bool,
    /// The target was already compacted: nothing changed, nothing failed.
    pub already_compacted: bool,
    pub note: Option<String>,
    pub took_ms: u64,
}

impl Target {
    /// The revision to compact to, given the current one; `None` when there is nothing to do.
    pub fn resolve(self, current: i64) -> Result<Option<i64>> {
        match self {
            Target::Current => Ok((current > 1).then_some(current)),
            Target::Revision(r) if r > current => Err(future(r, current)),
            Target::Revision(r) => Ok(Some(r)),
            Target::Retain(0) => Err(Error::Usage(
                "--retain must be at least 1 (1 keeps only the current revision)".into(),
            )),
            Target::Retain(n) => {
                let keep_from = current - i64::try_from(n).unwrap_or(i64::MAX).min(current) + 1;
                Ok((keep_from > 1).then_some(keep_from))
            }
        }
    }
}

fn future(r: i64, current: i64) -> Error {
    Error::Usage(format!(
        "cannot compact to revision {r}: it is in the future (the current revision is {current}); nothing was changed"
    ))
}

/// Maintenance during a downgrade (etcd >= 3.6, `etcdctl downgrade enable`): refused, exit
/// 4. A downgrade rewrites the cluster and storage versions member by member; defrag and
/// compaction add load and restarts of their own to a cluster whose members are being
/// replaced by older binaries, and the operator who started the downgrade should finish it
/// (or cancel it) first.
pub fn refuse_downgrade(what: &str, target: &str) -> Error {
    Error::refused(
        what,
        format!(
            "a cluster downgrade to {target} is in progress (Status downgradeInfo.enabled): nothing was changed; finish the downgrade or end it with `etcdctl downgrade cancel`, then run again"
        ),
    )
}

/// Compact once for the cluster, through the first endpoint that answers.
pub async fn compact(conn: &Connection, opts: &CompactOptions) -> Result<CompactReport> {
    let start = Instant::now();
    let (mut ep, status) = Endpoint::first_answering(conn, opts.timeout).await?;
    if let Some(d) = status.downgrade_enabled() {
        return Err(refuse_downgrade("compact", &d.target_version));
    }
    let current = status.revision;
    let mut report = CompactReport {
        ok: true,
        endpoint: ep.url.clone(),
        revision: current,
        compacted_to: None,
        physical: opts.physical,
        already_compacted: false,
        note: None,
        took_ms: 0,
    };
    let Some(target) = opts.target.resolve(current)? else {
        report.note = Some(format!(
            "nothing to compact: the current revision is {current}"
        ));
        report.took_ms = start.elapsed().as_millis() as u64;
        return Ok(report);
    };
    match ep.compact(target, opts.physical).await {
        Ok(_) => report.compacted_to = Some(target),
        Err(e) if e.is(RpcErrorKind::Compacted) => {
            report.compacted_to = Some(target);
            report.already_compacted = true;
            report.note = Some(format!(
                "revision {target} was already compacted: nothing to do"
            ));
        }
        Err(e) if e.is(RpcErrorKind::FutureRevision) => {
            return Err(future(target, current));
        }
        Err(e) => {
            return Err(Error::Etcd {
                op: "compact",
                endpoint: ep.url.clone(),
                reason: format!("to revision {target}: {e}"),
            });
        }
    }
    report.took_ms = start.elapsed().as_millis() as u64;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(Target::Current.resolve(100).unwrap(), Some(100));
        assert_eq!(Target::Current.resolve(1).unwrap(), None);
        assert_eq!(Target::Revision(40).resolve(100).unwrap(), Some(40));
        assert_eq!(Target::Revision(100).resolve(100).unwrap(), Some(100));
        let e = Target::Revision(101).resolve(100).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("future"), "{e}");
        // Keep the last 10 of 100: revisions 91..=100 stay readable.
        assert_eq!(Target::Retain(10).resolve(100).unwrap(), Some(91));
        assert_eq!(Target::Retain(1).resolve(100).unwrap(), Some(100));
        assert_eq!(Target::Retain(99).resolve(100).unwrap(), Some(2));
        assert_eq!(Target::Retain(100).resolve(100).unwrap(), None);
        assert_eq!(Target::Retain(u64::MAX).resolve(100).unwrap(), None);
        assert_eq!(Target::Retain(0).resolve(100).unwrap_err().exit_code(), 2);
    }
}
