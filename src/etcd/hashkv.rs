//! HashKV with a deadline of its own. HashKV reads every revision in the member's key bucket
//! and hashes it: its time grows with the db, and on a member at etcd's default 2 GiB quota
//! it takes longer than a command timeout meant for small calls (5 s by default), which made
//! preflight call a healthy cluster unhealthy (issue 26). So a HashKV gets
//! `deadline(db_size)`: a floor plus the db size at a rate below the slowest measured,
//! never less than the command timeout. A HashKV that answers after the command timeout but
//! within its own deadline is *slow*, reported with its time ([`Timing`]), not a failure.
//! While it waits longer than a few seconds, the caller's `say` hears what is hashed and
//! where ("HashKV of 2.0 GiB on node3 (https://…) at revision 1251: 10s so far, deadline
//! 173s").
//!
//! The other calls whose work grows with the data have long limits of their own: defragment
//! (`--defrag-timeout`, 5 min), physical compaction (`compact --timeout`, 5 min), snapshots
//! (an idle timeout per chunk, so a big db streams as long as it keeps moving), and the key
//! count that backups record beside the HashKV (it walks the whole index: it gets this
//! deadline too). Status and the linearizable health read do not grow with the data.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::client::{Endpoint, HashKv, RpcError, within};
use super::connect::Connection;

/// The least time a HashKV gets, whatever the db size.
pub const FLOOR: Duration = Duration::from_secs(30);

/// Bytes of db file per second a HashKV is assumed to cover at worst: the deadline is
/// `FLOOR + db_size / RATE`.
///
/// Measured with `scripts/bench-hashkv.sh` (a real etcd on this project's 2-core test machine,
/// load average 7 to 33 from other jobs), etcd 3.6.17: a 504 MB db of 8 kB values hashed in
/// 0.26-0.39 s (1277-1950 MB/s); 1,000,000 values of 100 bytes, a 179 MB db, in 8.1-10.9 s
/// (17-22 MB/s). HashKV costs per revision more than per byte, so small values are the slow
/// case; the lab (etcd 3.5.1, 2020 MB of 8 kB values) took more than 5 s. 15 MB/s is
/// below every measurement: 2 GiB gets 2m53s, etcd's suggested maximum of 8 GiB 10 min. A
/// member that answers at all answers within that; one that does not is reported, and the
/// wait says every 5 s what it waits for and stops on the operator's signal.
pub const RATE: u64 = 15_000_000;

/// How often a waiting HashKV says that it still waits.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The deadline of a HashKV on a member whose db file holds `db_size` bytes.
pub fn deadline(db_size: u64, command_timeout: Duration) -> Duration {
    let scaled = FLOOR + Duration::from_secs_f64(db_size as f64 / RATE as f64);
    scaled.max(command_timeout)
}

/// How one HashKV went: where, on how much, how long, against which limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub endpoint: String,
    /// The member's name, when known.
    pub name: Option<String>,
    pub revision: i64,
    /// The member's db file size when the HashKV started (what the deadline scaled with).
    pub db_size: u64,
    pub took_ms: u64,
    pub deadline_ms: u64,
    pub command_timeout_ms: u64,
    /// It answered, after the command timeout: slow, not unhealthy.
    pub slow: bool,
}

impl Timing {
    /// "node3 (https://…)" or the URL alone.
    pub fn who(&self) -> String {
        who(self.name.as_deref(), &self.endpoint)
    }

    /// One line for a slow HashKV, for warnings and run notes.
    pub fn note(&self) -> String {
        format!(
            "HashKV of {} on {} took {}, longer than the command timeout {} (its own deadline \
             is {}): slow, not unhealthy",
            crate::output::bytes(self.db_size),
            self.who(),
            crate::output::millis(self.took_ms),
            crate::output::millis(self.command_timeout_ms),
            crate::output::millis(self.deadline_ms),
        )
    }
}

fn who(name: Option<&str>, url: &str) -> String {
    match name {
        Some(n) if !n.is_empty() => format!("{n} ({url})"),
        _ => url.to_string(),
    }
}

/// What a long HashKV tells and listens to while it waits: progress lines go to `say`, and
/// it gives up early when `interrupted` (the operator's first signal in a command that has
/// changed nothing yet).
#[derive(Clone, Copy)]
pub struct Watch<'a> {
    pub say: &'a dyn Fn(&str),
    pub interrupted: &'a dyn Fn() -> bool,
}

fn quiet(_: &str) {}
fn never() -> bool {
    false
}

impl Watch<'static> {
    /// Says nothing, never interrupted.
    pub const QUIET: Watch<'static> = Watch {
        say: &quiet,
        interrupted: &never,
    };
}

/// How often a waiting HashKV looks at `Watch::interrupted`.
const INTERRUPT_EVERY: Duration = Duration::from_millis(200);

/// What to hash: the member at `url` (named `name`), whose db holds `db_size` bytes.
pub struct Target<'a> {
    pub url: &'a str,
    pub name: Option<&'a str>,
    pub db_size: u64,
}

/// HashKV of `target` at `revision` (0: the latest) under its own deadline, on a client made
/// for it (a client's request timeout would otherwise cut it at the command timeout). Says
/// every [`PROGRESS_EVERY`] what it waits for, and stops when the watch is interrupted. The
/// timing is returned whether or not it answered.
pub async fn hash_kv(
    conn: &Connection,
    target: &Target<'_>,
    revision: i64,
    watch: Watch<'_>,
) -> (Result<HashKv, RpcError>, Timing) {
    let limit = deadline(target.db_size, conn.command_timeout);
    let what = format!(
        "HashKV of {} on {}{}",
        crate::output::bytes(target.db_size),
        who(target.name, target.url),
        if revision == 0 {
            String::new()
        } else {
            format!(" at revision {revision}")
        }
    );
    let start = Instant::now();
    let call = async {
        let mut ep = Endpoint::connect_with_timeout(conn, target.url, limit).await?;
        ep.hash_kv(revision).await
    };
    let call = within(limit, &what, call);
    tokio::pin!(call);
    let mut last_say = start;
    let result = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = tokio::time::sleep(INTERRUPT_EVERY) => {
                if (watch.interrupted)() {
                    break Err(RpcError::other(format!(
                        "{what}: interrupted by the operator after {}",
                        crate::output::millis(start.elapsed().as_millis() as u64)
                    )));
                }
                if last_say.elapsed() >= PROGRESS_EVERY {
                    last_say = Instant::now();
                    (watch.say)(&format!(
                        "  {what}: {}s so far, deadline {}s",
                        start.elapsed().as_secs(),
                        limit.as_secs()
                    ));
                }
            }
        }
    };
    let took = start.elapsed();
    let timing = Timing {
        endpoint: target.url.to_string(),
        name: target.name.map(str::to_string),
        revision,
        db_size: target.db_size,
        took_ms: took.as_millis() as u64,
        deadline_ms: limit.as_millis() as u64,
        command_timeout_ms: conn.command_timeout.as_millis() as u64,
        slow: result.is_ok() && took > conn.command_timeout,
    };
    (result, timing)
}

/// A step's data with the HashKVs it made (`hash_kv`) and a note for each slow one
/// (`notes`): the run report shows both.
pub fn annotate<'t>(
    mut data: serde_json::Value,
    timings: impl IntoIterator<Item = &'t Timing>,
) -> serde_json::Value {
    let timings: Vec<&Timing> = timings.into_iter().collect();
    if timings.is_empty() {
        return data;
    }
    let notes: Vec<String> = timings
        .iter()
        .filter(|t| t.slow)
        .map(|t| t.note())
        .collect();
    if let Some(o) = data.as_object_mut() {
        o.insert("hash_kv".into(), serde_json::json!(timings));
        if !notes.is_empty() {
            o.insert("notes".into(), serde_json::json!(notes));
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_grows_with_the_db_and_never_falls_below_the_floor_or_the_command_timeout() {
        let five = Duration::from_secs(5);
        assert_eq!(deadline(0, five), FLOOR);
        let gib2 = deadline(2 * 1024 * 1024 * 1024, five);
        assert!(gib2 > FLOOR + Duration::from_secs(140), "{gib2:?}");
        assert!(deadline(8 << 30, five) > gib2 * 2);
        assert_eq!(
            deadline(0, Duration::from_secs(600)),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn a_slow_hash_says_what_where_and_how_long() {
        let t = Timing {
            endpoint: "https://127.0.0.13:2379".into(),
            name: Some("node3".into()),
            revision: 1251,
            db_size: 2 * 1024 * 1024 * 1024,
            took_ms: 7200,
            deadline_ms: 173_000,
            command_timeout_ms: 5000,
            slow: true,
        };
        let n = t.note();
        assert!(
            n.starts_with("HashKV of 2.0 GiB on node3 (https://127.0.0.13:2379) took 7.2"),
            "{n}"
        );
        assert!(n.contains("slow, not unhealthy"), "{n}");
    }
}
