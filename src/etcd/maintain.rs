//! `maintain`: the routine job for a timer. Health gate (NOSPACE tolerated), compact, defrag
//! by rule (every member while NOSPACE is active: etcd judges the quota on the db *file's*
//! size, so every file must shrink), disarm NOSPACE only when every member's db file is below
//! 90 % of the quota (else the alarm would fire again on the next write), then health again.

use super::alarm;
use super::client::{Endpoint, within};
use super::connect::Connection;
use super::defrag::{self, DefragOptions, DefragReport};
use super::health::{self, HealthOptions, QUOTA_WARN_RATIO};
use crate::error::Result;
use crate::output::hex_id;

/// The default rule: worth it when at least 100 MiB and 45 % of the file would come back.
pub const DEFAULT_RULE: &str = "dbSizeFree > 100*1024*1024 && dbSizeFree > 0.45*dbSize";

/// Run the routine. `opts` is a rolling defrag's options; maintain forces the cluster-wide,
/// compacting, every-member-under-NOSPACE parts.
pub async fn maintain(conn: &Connection, opts: &DefragOptions) -> Result<DefragReport> {
    let opts = DefragOptions {
        cluster: true,
        compact: true,
        all_when_nospace: true,
        ..opts.clone()
    };
    let (mut report, gate) = defrag::run(conn, &opts).await?;
    let Some(gate) = gate else {
        return Ok(report);
    };
    if !report.ok {
        return Ok(report);
    }

    if report.nospace && opts.dry_run {
        report.notes.push(
            "would disarm NOSPACE once every member's db size is below 90% of the quota".into(),
        );
    } else if report.nospace {
        let limit = (opts.quota as f64 * QUOTA_WARN_RATIO) as u64;
        let mut too_big = Vec::new();
        for url in &gate.urls {
            let size = async {
                let mut ep = Endpoint::connect(conn, url).await?;
                within(conn.command_timeout, "status", ep.status()).await
            }
            .await;
            match size {
                Ok(s) if s.db_size < limit => {}
                Ok(s) => too_big.push(format!(
                    "{url} (member {}) db size {} >= {limit}",
                    hex_id(s.member_id),
                    s.db_size
                )),
                Err(e) => too_big.push(format!("{url}: status: {e}")),
            }
        }
        if !too_big.is_empty() {
            report.problems.push(format!(
                "NOSPACE kept: a member's db is not below 90% of the quota {} after defragmenting: {}; delete data (then run maintain again) or raise --quota-backend-bytes on every member",
                opts.quota,
                too_big.join(", ")
            ));
        } else {
            let disarmed = alarm::disarm(conn, Some("NOSPACE")).await?;
            report.disarmed = disarmed.disarmed;
        }
    }

    if opts.dry_run {
        return Ok(report);
    }
    let after = health::check(
        conn,
        &HealthOptions {
            cluster: true,
            quota: opts.quota,
        },
    )
    .await;
    report.healthy_after = Some(after.healthy);
    for p in after.problems {
        if !report.problems.contains(&p) {
            report.problems.push(p);
        }
    }
    report.ok = after.healthy && report.problems.is_empty();
    Ok(report)
}
