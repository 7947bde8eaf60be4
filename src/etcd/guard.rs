//! One member of a cluster down for etcdops at a time: the cluster-wide guard.
//!
//! A node-changing run holds the key [`KEY`] in etcd itself, put under a lease of [`TTL_SECS`]
//! that a background thread keeps alive through the *other* (healthy) members, so the guard
//! stays while this member is down and lapses by itself if the process dies. The key is
//! created by a transaction that fails when it exists (`create_revision == 0`), so two
//! acquirers cannot both win; its value names the holder. At acquisition every other member
//! must answer a linearizable read, else the run is refused: taking this member down then
//! would cost quorum. `defrag` and `maintain` read the key and refuse while it is held.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

use super::client::{Endpoint, within};
use super::connect::{Connection, describe};
use super::health::member_list;
use crate::error::{Error, Result};
use crate::output::hex_id;

/// The guard key, one per cluster.
pub const KEY: &str = "/etcdops/guard";

/// Lease TTL: how long the guard outlives a holder that died without releasing it.
pub const TTL_SECS: i64 = 15;

/// Who holds the guard, as stored in the key (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The host name of the node.
    pub node: String,
    /// The etcd member name (`--name` in the manifest).
    pub member: String,
    /// The member id, lower-case hex, when known.
    pub member_id: String,
    /// The kind of run: `migrate`, `restore`, `rejoin`.
    pub kind: String,
    pub run_id: String,
    pub pid: u32,
    /// When the guard was taken, seconds since the epoch.
    pub since: u64,
}

impl Holder {
    /// A holder for this process on this node.
    pub fn here(member: &str, member_id: &str, kind: &str, run_id: &str) -> Holder {
        Holder {
            node: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into()),
            member: member.to_string(),
            member_id: member_id.to_string(),
            kind: kind.to_string(),
            run_id: run_id.to_string(),
            pid: std::process::id(),
            since: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// The same member on the same node: it may take its own guard over (a resume or rollback
    /// after a crash, or the next run after a killed one whose lease has not lapsed yet). The
    /// node's run lock and its journal already keep runs on one node to one at a time; the
    /// guard is for the other nodes.
    pub fn same_member(&self, other: &Holder) -> bool {
        self.member == other.member && self.node == other.node
    }

    /// How an error message names the holder.
    pub fn describe(&self) -> String {
        let age = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(self.since);
        format!(
            "member {} ({}) on node {}, {} run {}, pid {}, for {age}s",
            self.member,
            if self.member_id.is_empty() {
                "id unknown"
            } else {
                &self.member_id
            },
            self.node,
            self.kind,
            self.run_id,
            self.pid
        )
    }
}

/// A held guard. Dropping it releases it (stops the keep-alive, deletes the key if it is
/// still ours, revokes the lease).
pub struct Guard {
    holder: Holder,
    value: String,
    lease: i64,
    conn: Connection,
    urls: Vec<String>,
    stop: Option<mpsc::Sender<()>>,
    keeper: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("holder", &self.holder)
            .field("lease", &self.lease)
            .finish()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts")
}

/// A client over several endpoints (etcd-client balances across them).
async fn client(conn: &Connection, urls: &[String]) -> Result<Client> {
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(conn.dial_timeout)
        .with_timeout(conn.command_timeout);
    if urls.iter().any(|u| u.starts_with("https://")) {
        opts = opts.with_tls(conn.tls_options().map_err(|e| Error::Unreachable {
            endpoints: urls.join(","),
            reason: e,
        })?);
    }
    Client::connect(urls, Some(opts))
        .await
        .map_err(|e| Error::Unreachable {
            endpoints: urls.join(","),
            reason: describe(&e),
        })
}

fn rpc_err(op: &'static str, urls: &[String], e: &etcd_client::Error) -> Error {
    Error::Etcd {
        op,
        endpoint: urls.join(","),
        reason: describe(e),
    }
}

/// Who holds the guard now, if anyone. Read through the connection's endpoints.
pub async fn holder(conn: &Connection) -> Result<Option<Holder>> {
    // One endpoint at a time: a member that is down (or being defragmented) must not make
    // the read fail while another one answers.
    let mut errors = Vec::new();
    for url in &conn.endpoints {
        let attempt = async {
            let mut c = client(conn, std::slice::from_ref(url))
                .await
                .map_err(|e| e.one_line())?;
            within_rpc(conn, "read the guard", c.get(KEY, None)).await
        };
        match attempt.await {
            Ok(resp) => return Ok(resp.kvs().first().map(|kv| parse_holder(kv.value()))),
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    Err(Error::Etcd {
        op: "read the guard",
        endpoint: conn.endpoints.join(","),
        reason: errors.join("; "),
    })
}

async fn within_rpc<T>(
    conn: &Connection,
    what: &str,
    call: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> std::result::Result<T, String> {
    within(conn.command_timeout, what, async {
        call.await.map_err(|e| describe(&e))
    })
    .await
}

/// A value we cannot parse still names something: show it raw.
fn parse_holder(value: &[u8]) -> Holder {
    serde_json::from_slice(value).unwrap_or_else(|_| Holder {
        node: String::from_utf8_lossy(value).into_owned(),
        member: "?".into(),
        member_id: String::new(),
        kind: "unknown".into(),
        run_id: "?".into(),
        pid: 0,
        since: 0,
    })
}

/// Refuse (exit 4) while any run holds the guard: for `defrag` and `maintain`, which must
/// never take another member's capacity while one is down for a migration.
pub async fn refuse_if_held(conn: &Connection, what: &str) -> Result<()> {
    match holder(conn).await? {
        None => Ok(()),
        Some(h) => Err(Error::refused(
            what,
            format!(
                "the etcdops guard {KEY} is held by {}: a member is down for that run; wait \
                 until it is done (the guard lapses {TTL_SECS}s after its process dies)",
                h.describe()
            ),
        )),
    }
}

/// Take the guard for `holder`. `holder.member` is this member's name (from the manifest):
/// every *other* member must be healthy, and the guard is written and kept alive through
/// them. A transport error (a member going down under our feet, as another node's run
/// stops its etcd) is retried twice: the next attempt then sees that run's guard and names it.
pub fn acquire(conn: &Connection, holder: &Holder) -> Result<Guard> {
    let rt = runtime();
    let mut attempt = 0;
    let (urls, lease) = loop {
        attempt += 1;
        match rt.block_on(try_acquire(conn, holder)) {
            Ok(found) => break found,
            Err(Error::Etcd { .. } | Error::Unreachable { .. }) if attempt < 3 => {}
            Err(e) => return Err(e),
        }
    };
    let value = serde_json::to_string(holder).expect("a holder serializes");
    let (stop, stopped) = mpsc::channel();
    let keeper = {
        let conn = conn.clone();
        let urls = urls.clone();
        std::thread::Builder::new()
            .name("etcdops-guard".into())
            .spawn(move || keep_alive(&conn, &urls, lease, &stopped))
            .map_err(|e| Error::failed("start the guard keep-alive", e.to_string()))?
    };
    Ok(Guard {
        holder: holder.clone(),
        value,
        lease,
        conn: conn.clone(),
        urls,
        stop: Some(stop),
        keeper: Some(keeper),
    })
}

async fn try_acquire(conn: &Connection, holder: &Holder) -> Result<(Vec<String>, i64)> {
    held_by_other(conn, holder).await?;
    let urls = match healthy_others(conn, &holder.member).await {
        Ok(urls) => urls,
        Err(e) => {
            // A member down because another run holds the guard: name that run.
            held_by_other(conn, holder).await?;
            return Err(e);
        }
    };
    let mut c = client(conn, &urls).await?;
    let lease = c
        .lease_grant(TTL_SECS, None)
        .await
        .map_err(|e| rpc_err("grant the guard lease", &urls, &e))?
        .id();
    match put_if_absent(&mut c, &urls, holder, lease).await {
        Ok(()) => Ok((urls, lease)),
        Err(e) => {
            let _ = c.lease_revoke(lease).await;
            Err(e)
        }
    }
}

/// Refuse when another run holds the guard (a read that fails proves nothing here: the
/// transaction decides).
async fn held_by_other(conn: &Connection, me: &Holder) -> Result<()> {
    match holder(conn).await {
        Ok(Some(current)) if !current.same_member(me) => Err(held_error(me, &current)),
        _ => Ok(()),
    }
}

fn held_error(me: &Holder, current: &Holder) -> Error {
    Error::refused(
        format!("{} run {}", me.kind, me.run_id),
        format!(
            "only one member may be down for etcdops at a time and the guard {KEY} is held by \
             {}; wait until that run is done (the guard lapses {TTL_SECS}s after its process \
             dies)",
            current.describe()
        ),
    )
}

/// Every member other than `self_name` must answer a linearizable read; their client URLs.
/// A one-member cluster has no other member: the guard then lives on the member itself.
async fn healthy_others(conn: &Connection, self_name: &str) -> Result<Vec<String>> {
    let members = member_list(conn).await.map_err(|e| Error::Unreachable {
        endpoints: conn.endpoints.join(","),
        reason: e,
    })?;
    let mut urls = Vec::new();
    let mut sick = Vec::new();
    // Learners do not vote: their health costs no quorum (and `member rejoin` has this
    // member's own learner, unstarted, in the list while it resumes).
    for m in members
        .iter()
        .filter(|m| m.name != self_name && !m.is_learner)
    {
        let Some(url) = m.client_urls.first() else {
            sick.push(format!(
                "member {} ({}) has not started",
                m.name,
                hex_id(m.id)
            ));
            continue;
        };
        let answer = async {
            let mut ep = Endpoint::connect(conn, url).await?;
            within(
                conn.command_timeout,
                "linearizable read",
                ep.linearizable_get(),
            )
            .await
        }
        .await;
        match answer {
            Ok(()) => urls.push(url.clone()),
            Err(e) => sick.push(format!("member {} at {url}: {e}", m.name)),
        }
    }
    if !sick.is_empty() {
        return Err(Error::refused(
            "take this member down",
            format!(
                "another member is not healthy, so this one going down would cost the \
                 cluster's quorum: {}",
                sick.join("; ")
            ),
        ));
    }
    if urls.is_empty() {
        urls = members
            .iter()
            .filter_map(|m| m.client_urls.first().cloned())
            .collect();
    }
    Ok(urls)
}

/// Create the key if absent; if present and it is our own run's, take it over; else refuse
/// naming the holder.
async fn put_if_absent(c: &mut Client, urls: &[String], holder: &Holder, lease: i64) -> Result<()> {
    let value = serde_json::to_string(holder).expect("a holder serializes");
    let put = || {
        TxnOp::put(
            KEY,
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
    };
    let resp = c
        .txn(
            Txn::new()
                .when([Compare::create_revision(KEY, CompareOp::Equal, 0)])
                .and_then([put()])
                .or_else([TxnOp::get(KEY, None)]),
        )
        .await
        .map_err(|e| rpc_err("take the guard", urls, &e))?;
    if resp.succeeded() {
        return Ok(());
    }
    let Some(kv) = resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    }) else {
        // Deleted between the compare and the get: a retry decides.
        return Box::pin(put_if_absent(c, urls, holder, lease)).await;
    };
    let current = parse_holder(kv.value());
    if !current.same_member(holder) {
        return Err(held_error(holder, &current));
    }
    // Our own member's guard (a resume or rollback after a crash): take the key over, unless
    // it changed in between.
    let resp = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision(
                    KEY,
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([put()]),
        )
        .await
        .map_err(|e| rpc_err("take the guard over", urls, &e))?;
    if resp.succeeded() {
        Ok(())
    } else {
        Box::pin(put_if_absent(c, urls, holder, lease)).await
    }
}

/// The keep-alive loop: one keep-alive every TTL/3 until told to stop. A failed round is
/// retried on the next tick with a fresh client; the lease survives two missed rounds.
fn keep_alive(conn: &Connection, urls: &[String], lease: i64, stop: &mpsc::Receiver<()>) {
    let rt = runtime();
    let period = Duration::from_secs((TTL_SECS as u64 / 3).max(1));
    let mut session = None;
    loop {
        let round = rt.block_on(async {
            if session.is_none() {
                let mut c = client(conn, urls).await.map_err(|e| e.one_line())?;
                session = Some(c.lease_keep_alive(lease).await.map_err(|e| describe(&e))?);
            }
            let (keeper, stream) = session.as_mut().expect("just set");
            keeper.keep_alive().await.map_err(|e| describe(&e))?;
            within(conn.command_timeout, "guard keep-alive", async {
                stream.message().await.map_err(|e| describe(&e))
            })
            .await
        });
        if round.is_err() {
            session = None;
        }
        match stop.recv_timeout(period) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

impl Guard {
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// Stop the keep-alive, delete the key if it is still ours, revoke the lease.
    pub fn release(mut self) -> Result<()> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<()> {
        let Some(stop) = self.stop.take() else {
            return Ok(());
        };
        let _ = stop.send(());
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
        let (conn, urls, value, lease) = (&self.conn, &self.urls, &self.value, self.lease);
        runtime().block_on(async {
            let mut c = client(conn, urls).await?;
            c.txn(
                Txn::new()
                    .when([Compare::value(KEY, CompareOp::Equal, value.as_str())])
                    .and_then([TxnOp::delete(KEY, None)]),
            )
            .await
            .map_err(|e| rpc_err("release the guard", urls, &e))?;
            c.lease_revoke(lease)
                .await
                .map_err(|e| rpc_err("revoke the guard lease", urls, &e))?;
            Ok(())
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Best effort: if etcd cannot be told, the lease lapses within TTL_SECS.
        let _ = self.release_inner();
    }
}
