//! Alarms: list them, disarm them. Alarms are cluster-wide state, so any member that answers
//! will do. Disarming reports what etcd says it deactivated, not what we asked for.

use serde::Serialize;

use super::client::{Alarm, Endpoint, within};
use super::connect::Connection;
use super::health::AlarmReport;
use crate::error::{Error, Result};
use crate::output::hex_id;

#[derive(Debug, Clone, Serialize)]
pub struct AlarmsReport {
    /// The endpoint that answered.
    pub endpoint: String,
    /// Alarms active after the command (for `list`: the active ones).
    pub alarms: Vec<AlarmReport>,
    /// Alarms disarmed by this command (empty for `list`).
    pub disarmed: Vec<AlarmReport>,
}

fn report(a: &Alarm) -> AlarmReport {
    AlarmReport {
        member_id: hex_id(a.member_id),
        alarm: a.alarm.clone(),
    }
}

/// The active alarms.
pub async fn list(conn: &Connection) -> Result<AlarmsReport> {
    let (mut ep, _) = Endpoint::first_answering(conn, conn.command_timeout).await?;
    let alarms = within(conn.command_timeout, "alarm list", ep.alarms())
        .await
        .map_err(|e| etcd("alarm list", &ep, e))?;
    Ok(AlarmsReport {
        endpoint: ep.url.clone(),
        alarms: alarms.iter().map(report).collect(),
        disarmed: Vec::new(),
    })
}

/// Disarm every active alarm, or only those named `only` (e.g. `NOSPACE`).
pub async fn disarm(conn: &Connection, only: Option<&str>) -> Result<AlarmsReport> {
    let (mut ep, _) = Endpoint::first_answering(conn, conn.command_timeout).await?;
    let active = within(conn.command_timeout, "alarm list", ep.alarms())
        .await
        .map_err(|e| etcd("alarm list", &ep, e))?;
    let mut disarmed = Vec::new();
    for a in active.iter().filter(|a| only.is_none_or(|o| a.alarm == o)) {
        let gone = within(conn.command_timeout, "alarm disarm", ep.disarm(a))
            .await
            .map_err(|e| {
                etcd(
                    "alarm disarm",
                    &ep,
                    format!("{} on member {}: {e}", a.alarm, hex_id(a.member_id)),
                )
            })?;
        disarmed.extend(gone.iter().map(report));
    }
    let left = within(conn.command_timeout, "alarm list", ep.alarms())
        .await
        .map_err(|e| etcd("alarm list", &ep, e))?;
    Ok(AlarmsReport {
        endpoint: ep.url.clone(),
        alarms: left.iter().map(report).collect(),
        disarmed,
    })
}

fn etcd(op: &'static str, ep: &Endpoint, reason: impl Into<String>) -> Error {
    Error::Etcd {
        op,
        endpoint: ep.url.clone(),
        reason: reason.into(),
    }
}
