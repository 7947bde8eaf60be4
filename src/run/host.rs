//! What a node-changing run may do to the node, as one trait, so that the engine can be
//! unit-tested on a fake host and a fault can be injected at any effect while everything
//! else stays real. Every effect of a step goes through here: etcd, kubelet, the static pod,
//! the data dirs and every file a step reads or writes. `RealHost` is the only production
//! implementation: etcd through `crate::etcd`, files through `crate::datadir` and
//! `crate::manifest`, kubelet and the static pod through `crate::node`.
//!
//! No start or stop is assumed to have taken effect: kubelet's state is asked of the status
//! command until it agrees, and every wait re-checks its preconditions (kubelet active, the
//! manifest in place) so that a broken precondition is reported within seconds, not when the
//! timeout runs out. Waits honour the first SIGINT/SIGTERM (see `run::Cancel`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::datadir::copy::{CopyOptions, CopyReport, finish_copy};
use crate::datadir::digest::{KnownSums, sums};
use crate::datadir::precopy::{PrecopyOptions, PrecopyReport, precopy};
use crate::datadir::verify::{VerifyOptions, VerifyReport, verify};
use crate::datadir::{Progress, quiesce};
use crate::error::{Error, Result};
use crate::etcd::client::{Endpoint, HashKv, Member, RpcError, RpcErrorKind, Status, within};
use crate::etcd::connect::Connection;
use crate::etcd::hashkv::{self, Timing};
use crate::etcd::health::{self, HealthOptions, HealthReport};
use crate::etcd::snapshot;
use crate::manifest::rewrite::{SetDataPath, set_data_path};
use crate::node::{self, KubeletCommands};
use crate::output::hex_id;

use super::Cancel;

/// Who the member is and what it holds, recorded before and proved after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub member_id: String,
    pub cluster_id: String,
    pub revision: i64,
    /// HashKV at `revision`.
    pub hash: u32,
    /// How the HashKV went (its time against its deadline); not journaled.
    #[serde(skip)]
    pub hash_kv: Option<Timing>,
}

/// A HashKV of the local member at a revision: the hash (`None` when the revision has been
/// compacted away) and how long it took (`None` on hosts that do not measure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashAt {
    pub hash: Option<u32>,
    pub timing: Option<Timing>,
}

/// What the local member says of itself without consensus (a serializable `Status`): it
/// answers while the member has no quorum, which a linearizable read cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub member_id: String,
    pub cluster_id: String,
    /// 0 while the member knows no leader.
    pub leader: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
}

pub trait Host {
    // --- etcd
    /// Health of the local member (`cluster` false) or of every member.
    fn health(&self, cluster: bool) -> Result<HealthReport>;
    /// Member id, cluster id, the store's revision R and HashKV at R, of the local member.
    /// Works on a cluster compacted to its current revision (HashKV of the latest revision).
    fn identity(&self) -> Result<Identity>;
    /// HashKV of the local member at `revision` (its hash `None` when compacted away).
    fn hash_at(&self, revision: i64) -> Result<HashAt>;
    fn snapshot(&self, dest: &Path) -> Result<()>;
    // --- the static pod and kubelet
    /// Move the manifest out and wait until etcd has let go of `data_dir` and its client port.
    fn stop_etcd(&self, manifest: &Path, moved_to: &Path, data_dir: &Path) -> Result<()>;
    /// Stop kubelet and wait until the status command says it is inactive.
    fn stop_kubelet(&self) -> Result<()>;
    /// Start kubelet and wait until the status command says it is active.
    fn start_kubelet(&self) -> Result<()>;
    fn kubelet_active(&self) -> Result<bool>;
    /// Put a manifest into the manifests dir atomically.
    fn put_manifest(&self, from: &Path, manifest: &Path) -> Result<()>;
    /// Wait until the local member answers a linearizable read.
    fn wait_healthy(&self) -> Result<()>;
    /// Rewrite the data hostPath of a manifest copy outside the manifests dir.
    fn rewrite(&self, manifest_copy: &Path, new: &Path, backup_dir: &Path) -> Result<()>;
    // --- data dirs
    /// Copy the data dir, writing the source's sums (as read during the copy) to `sums_file`;
    /// with `use_precopy`, finish the pre-copy in the staging dir instead of copying it all.
    fn copy(
        &self,
        src: &Path,
        dst: &Path,
        sums_file: &Path,
        use_precopy: bool,
    ) -> Result<CopyReport>;
    /// Copy the live data dir `src` into the staging dir of `dst` (see `datadir::precopy`);
    /// a later `copy` then writes only what changed.
    fn precopy(&self, src: &Path, dst: &Path) -> Result<PrecopyReport>;
    /// Compare the trees; source files unchanged since `src_sums` was written are not read.
    fn verify(&self, src: &Path, dst: &Path, src_sums: Option<&Path>) -> Result<VerifyReport>;
    /// Whether no process holds etcd's locks in the data dir.
    fn quiesced(&self, data_dir: &Path) -> Result<bool>;
    /// The tree's b3sum-format sums text.
    fn tree_sums(&self, dir: &Path) -> Result<String>;
    // --- files
    /// A file's bytes; `None` when it does not exist.
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>>;
    /// Write a file atomically (dotfile temp beside it, fsync, rename, fsync dir).
    fn write_file(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<()>;
    /// Remove a file; a missing one is fine.
    fn remove_file(&self, path: &Path) -> Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> Result<()>;
    /// Whether a path is a directory (not following a last symlink).
    fn is_dir(&self, path: &Path) -> Result<bool>;
    /// Whether a path is the mount point of a filesystem (its own disk).
    fn is_mount_point(&self, path: &Path) -> Result<bool>;
    /// Whether a directory exists and has entries.
    fn has_entries(&self, dir: &Path) -> Result<bool>;
    /// Remove everything inside a directory this run filled (the directory stays).
    fn empty_dir(&self, dir: &Path) -> Result<()>;
    /// Remove a directory tree this run created; a missing one is fine.
    fn remove_tree(&self, path: &Path) -> Result<()>;
    // --- the cluster
    /// Take (or, for this member, take over) the cluster-wide guard before this member goes
    /// down; refused while another run holds it or another member is unhealthy (DESIGN.md,
    /// "Guards"). Held until `release_guard`; `kind` (migrate, rejoin) is what the guard
    /// tells a refused run holds it. `reach`: other members' client URLs the run recorded
    /// while its member was up, to reach the cluster through when a resume or rollback finds
    /// this member down (issue 21). Fakes need no guard.
    fn hold_guard(&self, _kind: &str, _run_id: &str, _reach: &[String]) -> Result<()> {
        Ok(())
    }
    /// Release the guard once the member is healthy again.
    fn release_guard(&self) {}
    /// Prove that the member judged is the one the manifest runs; what was proved.
    fn check_member(&self) -> Result<Option<String>> {
        Ok(None)
    }
    /// Who holds the cluster-wide guard now (another member), described for an error.
    fn guard_holder(&self) -> Result<Option<String>> {
        Ok(None)
    }
    // --- restore (default impls: the real effect, or "not on this host" for fakes)
    /// Write an archive's snapshot to `dest`, verifying every sum on the way; an encrypted
    /// archive is opened with the identity file `identity` (read again here: a resume may
    /// run long after the plan was made).
    fn extract_snapshot(&self, archive: &Path, identity: Option<&Path>, dest: &Path) -> Result<()> {
        let key = crate::backup::verify::identity_for(archive, identity)?;
        crate::backup::verify::extract_snapshot(archive, key.as_ref(), dest)
    }
    /// Run etcd's own restore tool into `dest` (a new dir).
    fn restore_snapshot(
        &self,
        tool: &crate::backup::tool::RestoreTool,
        plan: &crate::restore::plan::RestorePlan,
        snapshot: &Path,
        dest: &Path,
    ) -> Result<()> {
        crate::restore::plan::run_restore(tool, plan, snapshot, dest)
    }
    /// Which cluster the etcd at `peer_url` serves, asked as etcd's peers ask each other:
    /// `GET /members` on the peer port (with the peer TLS files) and its `X-Etcd-Cluster-ID`
    /// header (etcd 3.4 to 3.7). `None` when nothing answers there (refused, or no answer
    /// within the dial timeout); an error when something answers but its cluster cannot be
    /// read.
    fn peer_cluster_id(
        &self,
        _peer_url: &str,
        _tls: Option<&crate::restore::plan::PeerTls>,
    ) -> Result<Option<String>> {
        Err(Error::failed(
            "peer cluster id",
            "not available on this host",
        ))
    }
    /// Wait, at most `timeout`, until `check` passes; its error says what is still
    /// missing, in the progress line every 5 s and in the error at the end. Fakes: one look.
    fn wait_until(
        &self,
        what: &str,
        _timeout: Duration,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        check().map_err(|e| Error::failed(format!("wait for {what}"), e.one_line()))
    }
    /// The local member's serializable status, once.
    fn local_status(&self) -> Result<MemberStatus> {
        Err(Error::failed("local status", "not available on this host"))
    }
    /// Whether the local member's client port accepts connections. etcd listens before it
    /// serves: it answers requests (even a serializable status) only once it has published
    /// itself through raft, which takes a quorum.
    fn client_port_listening(&self) -> Result<bool> {
        Ok(false)
    }
    /// Wait until the local member's client port accepts connections (its process runs on
    /// the data), quorum or not.
    fn wait_listening(&self) -> Result<()> {
        if self.client_port_listening()? {
            Ok(())
        } else {
            Err(Error::failed("wait for the client port", "not listening"))
        }
    }
    /// Wait, at most `timeout`, until the local member answers a linearizable read (it is
    /// part of a quorum); `what` says what is awaited, in progress lines and the error.
    fn wait_quorum(&self, what: &str, _timeout: Duration) -> Result<()> {
        self.wait_healthy()
            .map_err(|e| Error::failed(format!("wait for {what}"), e.one_line()))
    }
    // --- membership (member rejoin): always through the *other* members, since this one is
    // the broken one (default impls: "not on this host" for fakes that do not model it)
    /// The member list, read through the other members.
    fn members(&self) -> Result<Vec<Member>> {
        Err(Error::failed("member list", "not available on this host"))
    }
    /// Remove member `id`; `Ok(false)` when it was gone already.
    fn member_remove(&self, _id: u64) -> Result<bool> {
        Err(Error::failed("member remove", "not available on this host"))
    }
    /// Add a learner at `peer_url` (or find the one a crashed attempt added): its id.
    fn member_add_learner(&self, _peer_url: &str) -> Result<u64> {
        Err(Error::failed("member add", "not available on this host"))
    }
    /// Wait, at most `timeout`, until the local member's raft index is within `entries` of
    /// the leader's: (local index, leader index) when it is.
    fn wait_caught_up(&self, _entries: u64, _timeout: Duration) -> Result<(u64, u64)> {
        Err(Error::failed(
            "wait caught up",
            "not available on this host",
        ))
    }
    /// Promote learner `id`, retrying while etcd says "learner not ready", at most
    /// `timeout`: how many attempts it took.
    fn promote(&self, _id: u64, _timeout: Duration) -> Result<u32> {
        Err(Error::failed(
            "member promote",
            "not available on this host",
        ))
    }
    /// Create an empty directory (mode 0700, owned like `like` when given).
    fn create_dir(&self, path: &Path, like: Option<&Path>) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(Error::io("create", path, e)),
        }
        if let Some(like) = like
            && let Ok(m) = std::fs::symlink_metadata(like)
        {
            std::os::unix::fs::lchown(path, Some(m.uid()), Some(m.gid()))
                .map_err(|e| Error::io("chown", path, e))?;
        }
        node::fsync_dir(path.parent().unwrap_or(Path::new("/")))
    }
}

pub struct RealHost<'a> {
    pub conn: Connection,
    pub kubelet: KubeletCommands,
    /// The manifest in the manifests dir (where kubelet reads it).
    pub manifest: PathBuf,
    pub manifests_dir: PathBuf,
    pub stop_timeout: Duration,
    pub start_timeout: Duration,
    pub quota: u64,
    pub progress: &'a dyn Progress,
    /// Progress lines of waits, for a person (stderr on a terminal); silent for JSON.
    pub say: &'a dyn Fn(&str),
    /// SIGINT/SIGTERM: the copy stops (and removes its staging dir), waits stop or say why
    /// they go on.
    pub cancel: Option<&'a Cancel>,
    /// The cluster-wide guard while this member is down (released when dropped).
    pub guard: std::cell::RefCell<Option<crate::etcd::guard::Guard>>,
}

/// How often a wait re-checks its preconditions (each check runs the status command).
const PRECONDITION_EVERY: Duration = Duration::from_secs(2);
/// How often the wait for the restarted member looks at it.
const HEALTHY_POLL: Duration = Duration::from_millis(50);
/// How often a wait for kubelet's status command to agree asks it (a cheap command; the
/// waits around stop-kubelet and start-kubelet are downtime).
const KUBELET_POLL: Duration = Duration::from_millis(50);
/// How often a wait prints that it is still waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The longest a start or stop of kubelet may take to show in its status.
const KUBELET_SETTLE: Duration = Duration::from_secs(60);

/// What one look at a waited-for condition found.
enum Poll {
    Ready,
    Pending,
    /// A precondition is broken: waiting longer cannot help.
    Broken(String),
}

impl RealHost<'_> {
    /// HashKV of the local member at `revision` under its own deadline (scaled by the db
    /// size from a status first: a post-verify cut at the command timeout would end a
    /// migration `failed` after etcd already ran on the copy), saying what it hashes while
    /// it waits.
    async fn local_hash(
        &self,
        revision: i64,
    ) -> Result<(Status, std::result::Result<HashKv, RpcError>, Timing)> {
        let url = self.local();
        let t = self.conn.command_timeout;
        let mut ep = Endpoint::connect(&self.conn, url)
            .await
            .map_err(|e| self.endpoint_err("connect", e))?;
        let s = within(t, "status", ep.status())
            .await
            .map_err(|e| self.endpoint_err("status", e))?;
        // Only for saying where: a member list that fails costs the name, nothing else.
        let name = within(t, "member list", ep.members())
            .await
            .ok()
            .and_then(|m| m.into_iter().find(|m| m.id == s.member_id))
            .map(|m| m.name);
        let interrupted = || self.cancel.is_some_and(|c| c.requested());
        let target = hashkv::Target {
            url,
            name: name.as_deref(),
            db_size: s.db_size,
        };
        let (h, timing) =
            hashkv::hash_kv(&self.conn, &target, revision, self.watch(&interrupted)).await;
        Ok((s, h, timing))
    }

    /// What a long HashKV tells (this run's progress lines) and listens to (the operator's
    /// signal, unless the run is finishing past the raft rule).
    fn watch<'w>(&'w self, interrupted: &'w dyn Fn() -> bool) -> hashkv::Watch<'w> {
        hashkv::Watch {
            say: self.say,
            interrupted,
        }
    }

    fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the async runtime starts")
            .block_on(fut)
    }

    /// `block_on` for a call that may take a while (every RPC in it has its deadline):
    /// says every few seconds what it waits for, and returns at once, interrupted, on a
    /// signal while the run may still stop (`Cancel::requested`).
    fn block_on_said<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        self.block_on(async {
            tokio::pin!(fut);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut last_say = start;
            loop {
                tokio::select! {
                    r = &mut fut => return r,
                    _ = tick.tick() => {
                        if self.cancel.is_some_and(Cancel::requested) {
                            return Err(Error::failed(
                                format!("wait for {what}"),
                                format!(
                                    "interrupted by the operator (SIGINT/SIGTERM) after {}",
                                    crate::output::millis(start.elapsed().as_millis() as u64)
                                ),
                            ));
                        }
                        if last_say.elapsed() >= PROGRESS_EVERY {
                            last_say = Instant::now();
                            (self.say)(&format!(
                                "  still waiting for {what} ({}s; every request is bounded by \
                                 --command-timeout {})",
                                start.elapsed().as_secs(),
                                humantime::format_duration(self.conn.command_timeout)
                            ));
                        }
                    }
                }
            }
        })
    }

    fn local(&self) -> &str {
        self.conn.endpoints.first().map_or("", String::as_str)
    }

    /// The other members' client URLs: the connection's endpoints after the first (a
    /// `member rejoin` host is built with them; any other host has none).
    fn others(&self) -> Result<Vec<String>> {
        let others: Vec<String> = self.conn.endpoints.iter().skip(1).cloned().collect();
        if others.is_empty() {
            return Err(Error::Usage(
                "no other member's client URL is known to reach the cluster through".into(),
            ));
        }
        Ok(others)
    }

    fn endpoint_err(&self, op: &'static str, reason: impl Into<String>) -> Error {
        Error::Etcd {
            op,
            endpoint: self.local().to_string(),
            reason: reason.into(),
        }
    }

    /// Poll until ready, a broken precondition, a signal, or the timeout; say what it waits
    /// for every few seconds. Every way out names what was waited for.
    fn wait(
        &self,
        what: &str,
        timeout: Duration,
        interval: Duration,
        mut poll: impl FnMut(bool) -> Result<Poll>,
    ) -> Result<()> {
        let start = Instant::now();
        let mut last_check = start;
        let mut last_say = start;
        let mut last_err: Option<Error> = None;
        let mut first = true;
        loop {
            let check_now = first || last_check.elapsed() >= PRECONDITION_EVERY;
            if check_now {
                last_check = Instant::now();
            }
            first = false;
            match poll(check_now) {
                Ok(Poll::Ready) => return Ok(()),
                Ok(Poll::Pending) => {}
                Ok(Poll::Broken(why)) => {
                    return Err(Error::failed(format!("wait for {what}"), why));
                }
                Err(e) => last_err = Some(e),
            }
            if let Some(c) = self.cancel {
                if c.requested() {
                    return Err(Error::failed(
                        format!("wait for {what}"),
                        format!(
                            "interrupted by the operator after {}",
                            crate::output::millis(start.elapsed().as_millis() as u64)
                        ),
                    ));
                }
                c.tell_once(self.say, what);
            }
            if start.elapsed() >= timeout {
                return Err(Error::failed(
                    format!("wait for {what}"),
                    format!(
                        "gave up after {}{}",
                        humantime::format_duration(Duration::from_secs(timeout.as_secs().max(1))),
                        last_err.map_or(String::new(), |e| format!(" (last: {})", e.one_line()))
                    ),
                ));
            }
            if last_say.elapsed() >= PROGRESS_EVERY {
                last_say = Instant::now();
                (self.say)(&format!(
                    "  still waiting for {what} ({}s of {}s){}",
                    start.elapsed().as_secs(),
                    timeout.as_secs(),
                    last_err
                        .as_ref()
                        .map_or(String::new(), |e| format!("; last: {}", e.one_line()))
                ));
            }
            std::thread::sleep(interval);
        }
    }

    /// The preconditions of a wait for etcd to start: kubelet active, manifest in place.
    fn start_preconditions(&self) -> Result<Option<String>> {
        if !self.kubelet.is_active()? {
            return Ok(Some(format!(
                "kubelet is not active (`{}` says so), so nothing will start etcd; start it \
                 (`{}`) and run this again",
                self.kubelet.status, self.kubelet.start
            )));
        }
        if !self.manifest.exists() {
            return Ok(Some(format!(
                "the manifest {} is not in the manifests dir, so kubelet has no etcd to start",
                self.manifest.display()
            )));
        }
        Ok(None)
    }

    /// Wait until the status command agrees that kubelet is (or is not) active.
    fn wait_kubelet(&self, active: bool, after: &str) -> Result<()> {
        let want = if active { "active" } else { "inactive" };
        self.wait(
            &format!("kubelet to be {want} after `{after}`"),
            KUBELET_SETTLE,
            KUBELET_POLL,
            |_| {
                Ok(if self.kubelet.is_active()? == active {
                    Poll::Ready
                } else {
                    Poll::Pending
                })
            },
        )
    }
}

impl Host for RealHost<'_> {
    fn health(&self, cluster: bool) -> Result<HealthReport> {
        let opts = HealthOptions {
            cluster,
            quota: self.quota,
        };
        let what = format!("the health of {}", self.conn.endpoints.join(", "));
        let interrupted = || self.cancel.is_some_and(|c| c.requested());
        self.block_on_said(&what, async {
            Ok(health::check_watched(&self.conn, &opts, self.watch(&interrupted)).await)
        })
    }

    fn identity(&self) -> Result<Identity> {
        let what = format!("the identity of {} (status, hashkv)", self.local());
        self.block_on_said(&what, async {
            // HashKV of the latest revision: a revision asked for by number may have been
            // compacted already (an idle cluster compacted to its current revision).
            let (s, h, timing) = self.local_hash(0).await?;
            let h = h.map_err(|e| self.endpoint_err("hashkv", e))?;
            Ok(Identity {
                member_id: hex_id(s.member_id),
                cluster_id: hex_id(s.cluster_id),
                revision: h.revision,
                hash: h.hash,
                hash_kv: Some(timing),
            })
        })
    }

    fn hash_at(&self, revision: i64) -> Result<HashAt> {
        let what = format!("hashkv at revision {revision} on {}", self.local());
        self.block_on_said(&what, async {
            let (_, h, timing) = self.local_hash(revision).await?;
            let hash = match h {
                Ok(h) => Some(h.hash),
                Err(e) if e.is(RpcErrorKind::Compacted) => None,
                Err(e) => return Err(self.endpoint_err("hashkv", e)),
            };
            Ok(HashAt {
                hash,
                timing: Some(timing),
            })
        })
    }

    fn snapshot(&self, dest: &Path) -> Result<()> {
        // Streams from the first endpoint that answers: the local member, as discovered.
        let opts = snapshot::SaveOptions {
            idle_timeout: Duration::from_secs(60),
        };
        let mut progress = |_: u64, _: u64| {};
        self.block_on(snapshot::save(&self.conn, dest, &opts, &mut progress))
            .map(|_| ())
    }

    fn stop_etcd(&self, manifest: &Path, moved_to: &Path, data_dir: &Path) -> Result<()> {
        node::move_manifest_out(manifest, moved_to)?;
        let endpoint = self.local().to_string();
        self.wait(
            &format!(
                "etcd to stop (data dir {} quiesced, {endpoint} refusing)",
                data_dir.display()
            ),
            self.stop_timeout,
            Duration::from_millis(200),
            |check| {
                if check && manifest.exists() {
                    return Ok(Poll::Broken(format!(
                        "{} is back in the manifests dir (put there by someone else?), so \
                         kubelet keeps etcd running",
                        manifest.display()
                    )));
                }
                // A data dir without a db and a WAL dir (emptied, as in the seed's scenario
                // 1, and left half-made by a crash-looping etcd) has no layout to check:
                // the client port refusing is then the proof that etcd is gone.
                let whole = data_dir.join("member/snap/db").is_file()
                    && data_dir.join("member/wal").is_dir();
                Ok(
                    if (!whole || quiesce::check(data_dir)?.quiesced)
                        && node::port_refuses(&endpoint)
                    {
                        Poll::Ready
                    } else {
                        Poll::Pending
                    },
                )
            },
        )
    }

    fn stop_kubelet(&self) -> Result<()> {
        self.kubelet.stop(self.say)?;
        self.wait_kubelet(false, &self.kubelet.stop)
    }

    fn start_kubelet(&self) -> Result<()> {
        self.kubelet.start(self.say)?;
        self.wait_kubelet(true, &self.kubelet.start)
    }

    fn kubelet_active(&self) -> Result<bool> {
        self.kubelet.is_active()
    }

    fn put_manifest(&self, from: &Path, manifest: &Path) -> Result<()> {
        node::put_manifest(from, manifest)
    }

    fn wait_healthy(&self) -> Result<()> {
        let endpoint = self.local().to_string();
        self.wait(
            &format!("{endpoint} to answer a linearizable read"),
            self.start_timeout,
            // Every 50 ms, as a plain restart is timed (`scripts/bench-migrate.sh`): this wait
            // is downtime, and a coarser poll adds half its interval to it on average.
            HEALTHY_POLL,
            |check| {
                if check && let Some(why) = self.start_preconditions()? {
                    return Ok(Poll::Broken(why));
                }
                // The local endpoint alone (a linearizable read and a clean status), without
                // the member list and alarms a full health report would also ask for.
                let e = self.block_on(health::check_endpoint(&self.conn, &endpoint));
                Ok(if e.healthy {
                    Poll::Ready
                } else {
                    Poll::Pending
                })
            },
        )
    }

    fn rewrite(&self, manifest_copy: &Path, new: &Path, backup_dir: &Path) -> Result<()> {
        set_data_path(&SetDataPath {
            manifest: manifest_copy,
            new,
            backup_dir,
            kubelet_dir: &self.manifests_dir,
            dry_run: false,
        })
        .map(|_| ())
    }

    /// With `use_precopy`, uses the pre-copy in the staging dir when there is a finished one
    /// (only changed blocks are written) and says why when it falls back; otherwise the same
    /// full copy as `datadir copy` (its report: no pre-copy asked for).
    fn copy(
        &self,
        src: &Path,
        dst: &Path,
        sums_file: &Path,
        use_precopy: bool,
    ) -> Result<CopyReport> {
        let opts = CopyOptions {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            progress: self.progress,
            cancel: self.cancel.map(Cancel::flag),
            sums_file: Some(sums_file.to_path_buf()),
        };
        if use_precopy {
            finish_copy(&opts)
        } else {
            crate::datadir::copy::copy(&opts)
        }
    }

    fn precopy(&self, src: &Path, dst: &Path) -> Result<PrecopyReport> {
        precopy(&PrecopyOptions {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            progress: self.progress,
            cancel: self.cancel.map(Cancel::flag),
        })
    }

    fn verify(&self, src: &Path, dst: &Path, src_sums: Option<&Path>) -> Result<VerifyReport> {
        let src_sums = match src_sums {
            Some(p) if p.is_file() => Some(KnownSums::load(p)?),
            _ => None,
        };
        verify(&VerifyOptions {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            src_sums,
        })
    }

    fn quiesced(&self, data_dir: &Path) -> Result<bool> {
        Ok(quiesce::check(data_dir)?.quiesced)
    }

    fn tree_sums(&self, dir: &Path) -> Result<String> {
        Ok(sums(dir)?.sums.text())
    }

    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    fn write_file(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
        node::write_atomic(path, bytes, mode, None)
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        std::fs::rename(from, to).map_err(|e| Error::io("rename", from, e))?;
        node::fsync_dir(to.parent().unwrap_or(Path::new("/")))
    }

    fn is_dir(&self, path: &Path) -> Result<bool> {
        match std::fs::symlink_metadata(path) {
            Ok(m) => Ok(m.is_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("stat", path, e)),
        }
    }

    fn is_mount_point(&self, path: &Path) -> Result<bool> {
        let canonical = path
            .canonicalize()
            .map_err(|e| Error::io("resolve", path, e))?;
        let at = crate::mounts::locate(&canonical).map_err(|e| Error::io("locate", path, e))?;
        Ok(at.mount_point == canonical)
    }

    fn has_entries(&self, dir: &Path) -> Result<bool> {
        match std::fs::read_dir(dir) {
            Ok(mut rd) => Ok(rd.next().is_some()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("read", dir, e)),
        }
    }

    fn empty_dir(&self, dir: &Path) -> Result<()> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("read", dir, e)),
        };
        for entry in rd.flatten() {
            let p = entry.path();
            let r = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(|e| Error::io("remove", &p, e))?;
        }
        Ok(())
    }

    fn remove_tree(&self, path: &Path) -> Result<()> {
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    fn local_status(&self) -> Result<MemberStatus> {
        self.block_on(async {
            // Bounded: a member without quorum accepts the connection and never answers.
            let s = tokio::time::timeout(self.conn.command_timeout, async {
                let mut ep = Endpoint::connect(&self.conn, self.local())
                    .await
                    .map_err(|e| self.endpoint_err("connect", e))?;
                ep.status()
                    .await
                    .map_err(|e| self.endpoint_err("status", e))
            })
            .await
            .map_err(|_| {
                self.endpoint_err(
                    "status",
                    format!(
                        "no answer within {:?} (a member without quorum does not serve)",
                        self.conn.command_timeout
                    ),
                )
            })??;
            Ok(MemberStatus {
                member_id: hex_id(s.member_id),
                cluster_id: hex_id(s.cluster_id),
                leader: s.leader,
                raft_index: s.raft_index,
                raft_applied_index: s.raft_applied_index,
            })
        })
    }

    fn client_port_listening(&self) -> Result<bool> {
        Ok(!node::port_refuses(self.local()))
    }

    fn peer_cluster_id(
        &self,
        peer_url: &str,
        tls: Option<&crate::restore::plan::PeerTls>,
    ) -> Result<Option<String>> {
        crate::etcd::peer_fence::cluster_id(
            peer_url,
            tls,
            self.conn.dial_timeout,
            self.conn.command_timeout,
        )
    }

    fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        self.wait(what, timeout, Duration::from_secs(1), |_| {
            check()?;
            Ok(Poll::Ready)
        })
    }

    fn wait_listening(&self) -> Result<()> {
        let endpoint = self.local().to_string();
        self.wait(
            &format!("etcd to listen on {endpoint}"),
            self.start_timeout,
            Duration::from_millis(300),
            |check| {
                if check && let Some(why) = self.start_preconditions()? {
                    return Ok(Poll::Broken(why));
                }
                Ok(if node::port_refuses(&endpoint) {
                    Poll::Pending
                } else {
                    Poll::Ready
                })
            },
        )
    }

    fn wait_quorum(&self, what: &str, timeout: Duration) -> Result<()> {
        let opts = HealthOptions {
            cluster: false,
            quota: self.quota,
        };
        self.wait(what, timeout, Duration::from_millis(500), |check| {
            if check && let Some(why) = self.start_preconditions()? {
                return Ok(Poll::Broken(why));
            }
            // Bounded: a member without quorum accepts the connection and never answers.
            let limit = self.conn.command_timeout + self.conn.dial_timeout;
            let Ok(r) = self.block_on(async {
                tokio::time::timeout(limit, health::check(&self.conn, &opts)).await
            }) else {
                return Ok(Poll::Pending);
            };
            Ok(if r.endpoints.iter().all(|e| e.healthy) {
                Poll::Ready
            } else {
                Poll::Pending
            })
        })
    }

    fn hold_guard(&self, kind: &str, run_id: &str, reach: &[String]) -> Result<()> {
        if self.guard.borrow().is_some() {
            return Ok(());
        }
        let manifest = self.conn.manifest.as_deref().ok_or_else(|| {
            Error::Usage("the guard needs the member's name: no manifest was read".into())
        })?;
        let pod = crate::manifest::StaticPod::load(manifest)?;
        let name = pod.etcd_flag("name")?.unwrap_or_default();
        let holder = crate::etcd::guard::Holder::here(&name, "", kind, run_id);
        // This member may be down (a resume or rollback after a kill): the guard is read,
        // taken over and kept alive through the other members, known from the run's record
        // and, as candidates, from the manifest's --initial-cluster. The local endpoint stays
        // first; the guard judges members by name, so listing this one too is harmless.
        let mut conn = self.conn.clone();
        let candidates = crate::etcd::member::peer_candidates(&pod).unwrap_or_default();
        for url in reach.iter().chain(&candidates) {
            if !conn.endpoints.contains(url) {
                conn.endpoints.push(url.clone());
            }
        }
        *self.guard.borrow_mut() = Some(crate::etcd::guard::acquire(&conn, &holder)?);
        Ok(())
    }

    fn check_member(&self) -> Result<Option<String>> {
        let Some(manifest) = self.conn.manifest.as_deref() else {
            return Ok(None);
        };
        let pod = crate::manifest::StaticPod::load(manifest)?;
        let what = format!("{} to say which member it is", self.local());
        self.block_on_said(&what, crate::etcd::member::check_local(&self.conn, &pod))
            .map(Some)
    }

    fn guard_holder(&self) -> Result<Option<String>> {
        let h = self.block_on(crate::etcd::guard::holder(&self.conn))?;
        // This member's own guard (a killed run's, until its lease lapses) is no obstacle.
        let name = match self.conn.manifest.as_deref() {
            Some(m) => crate::manifest::StaticPod::load(m)?
                .etcd_flag("name")?
                .unwrap_or_default(),
            None => String::new(),
        };
        let me = crate::etcd::guard::Holder::here(&name, "", "migrate", "");
        Ok(h.filter(|h| !h.same_member(&me)).map(|h| h.describe()))
    }

    fn members(&self) -> Result<Vec<Member>> {
        let others = self.others()?;
        let what = format!("the member list from {}", others.join(", "));
        self.block_on_said(&what, crate::etcd::member::list_via(&self.conn, &others))
    }

    fn member_remove(&self, id: u64) -> Result<bool> {
        let others = self.others()?;
        self.block_on(crate::etcd::member::remove_via(&self.conn, &others, id))
    }

    /// Retries while etcd refuses the change for now (right after the removal, etcd 3.4
    /// wants every member connected for its health interval first), within the start
    /// timeout.
    fn member_add_learner(&self, peer_url: &str) -> Result<u64> {
        use crate::etcd::member::Reconfig;
        let others = self.others()?;
        let mut id = None;
        self.wait(
            &format!("etcd to accept a learner at {peer_url} (member add)"),
            self.start_timeout,
            Duration::from_millis(500),
            |_| match self.block_on(crate::etcd::member::add_learner_via(
                &self.conn, &others, peer_url,
            )) {
                Ok(Reconfig::Done(i)) => {
                    id = Some(i);
                    Ok(Poll::Ready)
                }
                Ok(Reconfig::NotYet(why)) => Err(Error::failed("member add", why)),
                Err(e) => Ok(Poll::Broken(e.one_line())),
            },
        )?;
        id.ok_or_else(|| Error::failed("member add", "no member id"))
    }

    fn wait_caught_up(&self, entries: u64, timeout: Duration) -> Result<(u64, u64)> {
        let others = self.others()?;
        let endpoint = self.local().to_string();
        let mut seen = (0, 0);
        self.wait(
            &format!(
                "the learner at {endpoint} to catch up (raft index within {entries} of the \
                 leader's)"
            ),
            timeout,
            Duration::from_millis(500),
            |check| {
                if check && let Some(why) = self.start_preconditions()? {
                    return Ok(Poll::Broken(why));
                }
                let (_, leader) =
                    self.block_on(crate::etcd::member::leader_raft_index(&self.conn, &others))?;
                let local = self.local_status()?.raft_index;
                seen = (local, leader);
                Ok(if local + entries >= leader {
                    Poll::Ready
                } else {
                    Poll::Pending
                })
            },
        )?;
        Ok(seen)
    }

    fn promote(&self, id: u64, timeout: Duration) -> Result<u32> {
        use crate::etcd::member::Promote;
        let others = self.others()?;
        let mut attempts = 0;
        self.wait(
            &format!(
                "etcd to promote learner {} (it retries while etcd says \"learner not ready\")",
                hex_id(id)
            ),
            timeout,
            Duration::from_millis(500),
            |_| {
                attempts += 1;
                match self.block_on(crate::etcd::member::promote_via(&self.conn, &others, id))? {
                    Promote::Voter => Ok(Poll::Ready),
                    Promote::NotReady(why) => Err(Error::failed("member promote", why)),
                }
            },
        )?;
        Ok(attempts)
    }

    fn release_guard(&self) {
        if let Some(g) = self.guard.borrow_mut().take() {
            // If etcd cannot be told, the lease lapses within its TTL by itself.
            let _ = g.release();
        }
    }
}
