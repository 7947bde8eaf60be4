//! The restore saga on a fake node, in milliseconds: an in-memory node (files, dirs,
//! kubelet, an etcd that runs when kubelet is active, the manifest is in place and the data
//! dir holds a member) under `FaultHost`, which fails each effect of a clean run once —
//! before the real effect and after it. Every fault before etcd could run on the restored
//! data rolls back to the node as it was; after that the run ends failed (exit 5), and an
//! operator's `rollback` goes back only while the restored member never served (the raft
//! rule), else stops at start-kubelet and `resume` finishes. Both layouts: the data dir as
//! a plain dir (whole dirs swapped) and as a mount point (`member` dirs swapped inside it).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::plan::{RestorePlan, RevisionFlags, Source};
use super::{Plan, Restore};
use crate::backup::tool::RestoreTool;
use crate::datadir::copy::CopyReport;
use crate::datadir::precopy::PrecopyReport;
use crate::datadir::verify::VerifyReport;
use crate::error::{Error, Result};
use crate::etcd::health::HealthReport;
use crate::run::fault::FaultHost;
use crate::run::host::{Host, Identity, MemberStatus};
use crate::run::{Engine, RunState};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File(Vec<u8>),
}

/// What the node is: its files and whether kubelet runs. Whether etcd runs, and on which
/// member, follows from it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    fs: BTreeMap<PathBuf, Entry>,
    kubelet: bool,
}

const MANIFEST: &str = "/etc/kubernetes/manifests/etcd.yaml";
const DATA: &str = "/var/lib/etcd";
const ARCHIVE: &str = "/backups/a.tar.zst";

struct FakeNode {
    node: RefCell<Node>,
    /// The data dir is a mount point.
    mounted: bool,
    /// The other nodes are restored too: the restored member gets a quorum once it runs.
    others_restored: bool,
    /// What each other peer URL answers (`Host::peer_cluster_id`): a cluster id, or
    /// nothing (absent: nothing answers there).
    peers: BTreeMap<String, String>,
}

fn unused(what: &str) -> Error {
    Error::failed(what, "not used by a restore")
}

impl FakeNode {
    fn new(run_dir: &Path, mounted: bool, others_restored: bool) -> FakeNode {
        let mut fs = BTreeMap::new();
        for dir in [
            run_dir,
            Path::new("/etc/kubernetes/manifests"),
            Path::new("/var/lib/etcd/member"),
            Path::new("/backups"),
        ] {
            for a in dir.ancestors() {
                fs.insert(a.to_path_buf(), Entry::Dir);
            }
        }
        fs.insert(MANIFEST.into(), Entry::File(b"kind: Pod\n".to_vec()));
        fs.insert(
            PathBuf::from(DATA).join("member/id"),
            Entry::File(b"old".to_vec()),
        );
        fs.insert(ARCHIVE.into(), Entry::File(b"archive".to_vec()));
        FakeNode {
            node: RefCell::new(Node { fs, kubelet: true }),
            mounted,
            others_restored,
            peers: BTreeMap::new(),
        }
    }

    /// The member etcd runs on ("old" or "restored"), if it runs.
    fn running(&self) -> Option<String> {
        let n = self.node.borrow();
        if !n.kubelet || !n.fs.contains_key(Path::new(MANIFEST)) {
            return None;
        }
        match n.fs.get(&PathBuf::from(DATA).join("member/id")) {
            Some(Entry::File(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    fn serves(&self) -> bool {
        match self.running().as_deref() {
            Some("old") => true,
            Some(_) => self.others_restored,
            None => false,
        }
    }

    fn parent_is_dir(&self, path: &Path) -> Result<()> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        match self.node.borrow().fs.get(parent) {
            Some(Entry::Dir) => Ok(()),
            _ => Err(Error::failed(
                "fake fs",
                format!("{}: no parent dir", path.display()),
            )),
        }
    }

    /// The node without the run dir (the run's own files: the journal's neighbours).
    fn outside(node: &Node, run_dir: &Path) -> Node {
        Node {
            fs: node
                .fs
                .iter()
                .filter(|(p, _)| !p.starts_with(run_dir) && !run_dir.starts_with(p))
                .map(|(p, e)| (p.clone(), e.clone()))
                .collect(),
            kubelet: node.kubelet,
        }
    }
}

impl Host for FakeNode {
    fn health(&self, _: bool) -> Result<HealthReport> {
        Err(unused("health"))
    }
    fn identity(&self) -> Result<Identity> {
        Err(unused("identity"))
    }
    fn hash_at(&self, _: i64) -> Result<crate::run::host::HashAt> {
        Err(unused("hash_at"))
    }
    fn snapshot(&self, _: &Path) -> Result<()> {
        Err(unused("snapshot"))
    }
    fn stop_etcd(&self, manifest: &Path, moved_to: &Path, _: &Path) -> Result<()> {
        self.rename(manifest, moved_to)
    }
    fn stop_kubelet(&self) -> Result<()> {
        self.node.borrow_mut().kubelet = false;
        Ok(())
    }
    fn start_kubelet(&self) -> Result<()> {
        self.node.borrow_mut().kubelet = true;
        Ok(())
    }
    fn kubelet_active(&self) -> Result<bool> {
        Ok(self.node.borrow().kubelet)
    }
    fn put_manifest(&self, from: &Path, manifest: &Path) -> Result<()> {
        let bytes = self
            .read_file(from)?
            .ok_or_else(|| Error::failed("put manifest", "no such file"))?;
        self.write_file(manifest, &bytes, 0o600)
    }
    fn wait_healthy(&self) -> Result<()> {
        Err(unused("wait_healthy"))
    }
    fn rewrite(&self, _: &Path, _: &Path, _: &Path) -> Result<()> {
        Err(unused("rewrite"))
    }
    fn copy(&self, _: &Path, _: &Path, _: &Path, _: bool) -> Result<CopyReport> {
        Err(unused("copy"))
    }
    fn precopy(&self, _: &Path, _: &Path) -> Result<PrecopyReport> {
        Err(unused("precopy"))
    }
    fn verify(&self, _: &Path, _: &Path, _: Option<&Path>) -> Result<VerifyReport> {
        Err(unused("verify"))
    }
    fn quiesced(&self, _: &Path) -> Result<bool> {
        Err(unused("quiesced"))
    }
    fn tree_sums(&self, _: &Path) -> Result<String> {
        Err(unused("tree_sums"))
    }
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        match self.node.borrow().fs.get(path) {
            None => Ok(None),
            Some(Entry::File(b)) => Ok(Some(b.clone())),
            Some(Entry::Dir) => Err(Error::failed(
                "read",
                format!("{}: is a directory", path.display()),
            )),
        }
    }
    fn write_file(&self, path: &Path, bytes: &[u8], _: u32) -> Result<()> {
        self.parent_is_dir(path)?;
        let mut n = self.node.borrow_mut();
        if n.fs.get(path) == Some(&Entry::Dir) {
            return Err(Error::failed("write", "is a directory"));
        }
        n.fs.insert(path.to_path_buf(), Entry::File(bytes.to_vec()));
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> Result<()> {
        let mut n = self.node.borrow_mut();
        if let Some(Entry::File(_)) = n.fs.get(path) {
            n.fs.remove(path);
        }
        Ok(())
    }
    /// rename(2) as the swap relies on it: the source exists, its target's parent does; a
    /// file replaces a file, a dir goes only where nothing is (stricter than POSIX, which
    /// also replaces an empty dir); a mount point cannot be moved.
    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        if self.mounted && from == Path::new(DATA) {
            return Err(Error::failed("rename", "EBUSY: a mount point"));
        }
        self.parent_is_dir(to)?;
        let mut n = self.node.borrow_mut();
        let replaces_file = matches!(
            (n.fs.get(from), n.fs.get(to)),
            (Some(Entry::File(_)), Some(Entry::File(_)))
        );
        if !n.fs.contains_key(from) || (n.fs.contains_key(to) && !replaces_file) {
            return Err(Error::failed(
                "rename",
                format!("{} -> {}", from.display(), to.display()),
            ));
        }
        let moved: Vec<PathBuf> =
            n.fs.keys()
                .filter(|p| p.starts_with(from))
                .cloned()
                .collect();
        for p in moved {
            let e = n.fs.remove(&p).unwrap();
            n.fs.insert(to.join(p.strip_prefix(from).unwrap()), e);
        }
        Ok(())
    }
    fn is_dir(&self, path: &Path) -> Result<bool> {
        Ok(self.node.borrow().fs.get(path) == Some(&Entry::Dir))
    }
    fn is_mount_point(&self, path: &Path) -> Result<bool> {
        Ok(self.mounted && path == Path::new(DATA))
    }
    fn has_entries(&self, _: &Path) -> Result<bool> {
        Err(unused("has_entries"))
    }
    fn empty_dir(&self, _: &Path) -> Result<()> {
        Err(unused("empty_dir"))
    }
    fn remove_tree(&self, path: &Path) -> Result<()> {
        self.node
            .borrow_mut()
            .fs
            .retain(|p, _| !p.starts_with(path));
        Ok(())
    }
    fn extract_snapshot(&self, archive: &Path, _: Option<&Path>, dest: &Path) -> Result<()> {
        let bytes = self
            .read_file(archive)?
            .ok_or_else(|| Error::failed("extract", "no archive"))?;
        self.write_file(dest, &bytes, 0o600)
    }
    /// etcdutl: a new dir with a restored member.
    fn restore_snapshot(
        &self,
        _: &RestoreTool,
        _: &RestorePlan,
        snapshot: &Path,
        dest: &Path,
    ) -> Result<()> {
        if self.read_file(snapshot)?.is_none() || self.node.borrow().fs.contains_key(dest) {
            return Err(Error::failed("restore", "no snapshot or dest exists"));
        }
        self.parent_is_dir(dest)?;
        let mut n = self.node.borrow_mut();
        n.fs.insert(dest.to_path_buf(), Entry::Dir);
        n.fs.insert(dest.join("member"), Entry::Dir);
        n.fs.insert(dest.join("member/id"), Entry::File(b"restored".to_vec()));
        Ok(())
    }
    fn peer_cluster_id(
        &self,
        peer_url: &str,
        _: Option<&super::plan::PeerTls>,
    ) -> Result<Option<String>> {
        Ok(self.peers.get(peer_url).cloned())
    }
    fn local_status(&self) -> Result<MemberStatus> {
        if !self.serves() {
            return Err(Error::failed("local status", "no answer"));
        }
        let restored = self.running().as_deref() == Some("restored");
        Ok(MemberStatus {
            member_id: if restored { "r1" } else { "o1" }.into(),
            cluster_id: if restored { "rc" } else { "oc" }.into(),
            leader: 1,
            raft_index: 10,
            raft_applied_index: 10,
        })
    }
    fn client_port_listening(&self) -> Result<bool> {
        Ok(self.running().is_some())
    }
    fn wait_listening(&self) -> Result<()> {
        if self.running().is_some() {
            Ok(())
        } else {
            Err(Error::failed("wait for the client port", "not listening"))
        }
    }
    fn wait_quorum(&self, what: &str, _: Duration) -> Result<()> {
        if self.serves() {
            Ok(())
        } else {
            Err(Error::failed(format!("wait for {what}"), "no quorum"))
        }
    }
}

fn plan(run_id: &str, mounted: bool) -> Plan {
    let data = PathBuf::from(DATA);
    let id = "0123456789abcdef";
    let mut restore = RestorePlan {
        source: Source::Archive {
            path: ARCHIVE.into(),
            id: id.into(),
            identity: None,
        },
        name: "node1".into(),
        peer_url: "https://10.0.0.1:2380".into(),
        initial_cluster: "node1=https://10.0.0.1:2380,node2=https://10.0.0.2:2380,\
                          node3=https://10.0.0.3:2380"
            .into(),
        token: String::new(),
        restored_member_id: String::new(),
        restored_cluster_id: String::new(),
        old_cluster_id: "oc".into(),
        peers: vec![
            "https://10.0.0.2:2380".into(),
            "https://10.0.0.3:2380".into(),
        ],
        peer_tls: None,
        data_dir: data.clone(),
        restore_dir: PathBuf::from(format!("{DATA}.restore-{id}")),
        revision_flags: RevisionFlags::default(),
    };
    restore.set_token("etcdops-restore-test-1".into());
    if mounted {
        restore.inside_mount_point();
    }
    Plan {
        id: run_id.into(),
        restore,
        manifest: MANIFEST.into(),
        tool: "/usr/bin/etcdutl".into(),
        tool_is_etcdctl: false,
        aside: if mounted {
            data.join(format!("member.etcdops-old-{run_id}"))
        } else {
            PathBuf::from(format!("{DATA}.etcdops-old-{run_id}"))
        },
        data_existed: true,
        mounted,
        members: 3,
        quorum_timeout_ms: 1000,
        fence_timeout_ms: 1000,
        before: Some(MemberStatus {
            member_id: "o1".into(),
            cluster_id: "oc".into(),
            leader: 1,
            raft_index: 10,
            raft_applied_index: 10,
        }),
    }
}

fn quiet(_: &str) {}

fn state_of(dir: &Path) -> RunState {
    crate::run::load::<Restore>(dir).unwrap().state(false)
}

/// The restored member live, the old one kept aside, nothing else of the run left.
fn assert_final(fake: &FakeNode, run_dir: &Path, plan: &Plan, what: &str) {
    let n = FakeNode::outside(&fake.node.borrow(), run_dir);
    assert_eq!(fake.running().as_deref(), Some("restored"), "{what}");
    assert_eq!(
        n.fs.get(
            &plan
                .aside
                .join(if plan.mounted { "id" } else { "member/id" })
        ),
        Some(&Entry::File(b"old".to_vec())),
        "{what}"
    );
    let left: Vec<&PathBuf> =
        n.fs.keys()
            .filter(|p| {
                let s = p.to_string_lossy();
                s.contains("restore-") || s.contains("etcdops-new-")
            })
            .collect();
    assert!(left.is_empty(), "{what}: {left:?}");
}

/// Every effect of a clean restore, failed once (before the real effect, and after it), on
/// both layouts.
#[test]
fn a_fault_at_every_effect_rolls_back_before_the_raft_rule_and_stops_after_it() {
    for mounted in [false, true] {
        // The effects of a clean run, counted by method.
        let d = tempfile::tempdir().unwrap();
        let run_dir = d.path().join("r");
        let clean = FakeNode::new(&run_dir, mounted, true);
        let initial = FakeNode::outside(&clean.node.borrow(), &run_dir);
        let counter = FaultHost::new(&clean, "none", 1, true);
        let saga = Restore {
            host: &counter,
            operator_rollback: false,
        };
        let p = plan("run1", mounted);
        Engine::create(&saga, run_dir.clone(), p.clone(), &quiet, None)
            .unwrap()
            .run()
            .unwrap();
        assert_final(&clean, &run_dir, &p, "clean run");
        let methods = [
            "read_file",
            "write_file",
            "remove_file",
            "rename",
            "is_dir",
            "remove_tree",
            "stop_etcd",
            "stop_kubelet",
            "start_kubelet",
            "put_manifest",
            "extract_snapshot",
            "restore_snapshot",
            "wait_listening",
            "wait_quorum",
            "local_status",
            "peer_cluster_id",
            "wait_until",
        ];
        let mut faults = 0;
        for method in methods {
            let calls = counter.calls(method);
            assert!(
                calls > 0 || method == "remove_file",
                "{method} never called"
            );
            for nth in 1..=calls {
                for before in [true, false] {
                    faults += 1;
                    let what = format!("mounted={mounted} {method}#{nth} before={before}");
                    check_fault(mounted, method, nth, before, &initial, &what);
                }
            }
        }
        assert!(faults > 40, "{faults} faults only");
    }
}

fn check_fault(
    mounted: bool,
    method: &'static str,
    nth: usize,
    before: bool,
    initial: &Node,
    what: &str,
) {
    let d = tempfile::tempdir().unwrap();
    let run_dir = d.path().join("r");
    let fake = FakeNode::new(&run_dir, mounted, true);
    let p = plan("run1", mounted);
    let faulty = FaultHost::new(&fake, method, nth, before);
    let saga = Restore {
        host: &faulty,
        operator_rollback: false,
    };
    let result = Engine::create(&saga, run_dir.clone(), p.clone(), &quiet, None)
        .unwrap()
        .run();
    // The raft rule's witness in this model: etcd runs on the restored member (and, the
    // other nodes being restored, serves).
    let restored_ran = fake.running().as_deref() == Some("restored");
    match state_of(&run_dir) {
        RunState::RolledBack => {
            let err = result.expect_err(what);
            assert_eq!(err.exit_code(), 1, "{what}: {}", err.one_line());
            assert_eq!(
                &FakeNode::outside(&fake.node.borrow(), &run_dir),
                initial,
                "{what}"
            );
            assert_eq!(fake.running().as_deref(), Some("old"), "{what}");
        }
        RunState::Completed => {
            // A fault after a check's real effect that the step tolerates (none today
            // except a read the run repeats): the run is whole.
            result.unwrap();
            assert_final(&fake, &run_dir, &p, what);
        }
        RunState::Failed => {
            let err = result.expect_err(what);
            assert_eq!(err.exit_code(), 5, "{what}: {}", err.one_line());
            // The operator's rollback, in a new process without the fault.
            let saga = Restore {
                host: &fake,
                operator_rollback: true,
            };
            let mut e = Engine::open(&saga, run_dir.clone(), &quiet, None).unwrap();
            match e.rollback() {
                Ok(()) => {
                    assert!(!restored_ran, "{what}: rolled back after the member served");
                    assert_eq!(state_of(&run_dir), RunState::RolledBack, "{what}");
                    assert_eq!(
                        &FakeNode::outside(&fake.node.borrow(), &run_dir),
                        initial,
                        "{what}"
                    );
                }
                Err(refused) => {
                    // Stopped where the raft rule says: the restored member served.
                    assert!(restored_ran, "{what}: {}", refused.one_line());
                    assert_eq!(refused.exit_code(), 5, "{what}: {}", refused.one_line());
                    assert!(
                        refused.one_line().contains("has been part of a quorum"),
                        "{what}: {}",
                        refused.one_line()
                    );
                    assert_eq!(fake.running().as_deref(), Some("restored"), "{what}");
                    let saga = Restore {
                        host: &fake,
                        operator_rollback: false,
                    };
                    let mut e = Engine::open(&saga, run_dir.clone(), &quiet, None).unwrap();
                    e.resume()
                        .unwrap_or_else(|e| panic!("{what}: {}", e.one_line()));
                    assert_eq!(state_of(&run_dir), RunState::Completed, "{what}");
                    assert_final(&fake, &run_dir, &p, what);
                }
            }
        }
        other => panic!("{what}: ended {other:?}: {result:?}"),
    }
}

/// One node restored alone: no quorum, failed with exit 5 at the wait; the operator's
/// rollback returns the node to its old member on both layouts (the restored member
/// never served).
#[test]
fn a_lone_restore_waits_then_rolls_back_to_the_old_member() {
    for mounted in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let run_dir = d.path().join("r");
        let fake = FakeNode::new(&run_dir, mounted, false);
        let initial = FakeNode::outside(&fake.node.borrow(), &run_dir);
        let saga = Restore {
            host: &fake,
            operator_rollback: false,
        };
        let err = Engine::create(&saga, run_dir.clone(), plan("run1", mounted), &quiet, None)
            .unwrap()
            .run()
            .unwrap_err();
        assert_eq!(err.exit_code(), 5, "{}", err.one_line());
        assert!(err.one_line().contains("waiting for 1 more member"));
        assert_eq!(fake.running().as_deref(), Some("restored"));
        let saga = Restore {
            host: &fake,
            operator_rollback: true,
        };
        Engine::open(&saga, run_dir.clone(), &quiet, None)
            .unwrap()
            .rollback()
            .unwrap();
        assert_eq!(state_of(&run_dir), RunState::RolledBack);
        assert_eq!(FakeNode::outside(&fake.node.borrow(), &run_dir), initial);
        assert_eq!(fake.running().as_deref(), Some("old"));
    }
}

/// A peer that still answers as the archive's cluster, or as a member left from an earlier
/// restore attempt, keeps the restored member from starting: the run fails at fence-peers
/// naming the peer URL and rolls back to the node as it was (exit 1). A peer that answers
/// as this attempt's restored cluster (a sibling restored first) is no obstacle.
#[test]
fn a_peer_that_is_not_fenced_blocks_the_start_and_the_run_rolls_back() {
    let earlier = plan("run0", false).restore;
    let mut earlier = earlier.clone();
    earlier.set_token("etcdops-restore-test-0".into());
    let this = plan("run1", false).restore;
    assert_ne!(earlier.restored_cluster_id, this.restored_cluster_id);
    for (answer, needle) in [
        ("oc".to_string(), "the cluster the archive was taken from"),
        (
            earlier.restored_cluster_id.clone(),
            "a member left from an earlier restore attempt",
        ),
    ] {
        for mounted in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let run_dir = d.path().join("r");
            let mut fake = FakeNode::new(&run_dir, mounted, true);
            fake.peers
                .insert("https://10.0.0.3:2380".into(), answer.clone());
            let initial = FakeNode::outside(&fake.node.borrow(), &run_dir);
            let saga = Restore {
                host: &fake,
                operator_rollback: false,
            };
            let err = Engine::create(&saga, run_dir.clone(), plan("run1", mounted), &quiet, None)
                .unwrap()
                .run()
                .unwrap_err();
            let line = err.one_line();
            assert_eq!(err.exit_code(), 1, "{line}");
            assert!(line.contains("https://10.0.0.3:2380"), "{line}");
            assert!(line.contains(&format!("cluster {answer}")), "{line}");
            assert!(line.contains(needle), "{line}");
            assert!(!line.contains("10.0.0.2"), "{line}");
            assert_eq!(state_of(&run_dir), RunState::RolledBack);
            assert_eq!(FakeNode::outside(&fake.node.borrow(), &run_dir), initial);
            assert_eq!(fake.running().as_deref(), Some("old"));
            // Nothing of the restored member ever ran.
            let journal = std::fs::read_to_string(run_dir.join("journal.jsonl")).unwrap();
            assert!(!journal.contains("\"start-kubelet\""), "{journal}");
            assert!(journal.contains("\"fence-peers\""), "{journal}");
        }
    }
    // A sibling of this very attempt (same token, so same cluster id) is fenced enough.
    let d = tempfile::tempdir().unwrap();
    let run_dir = d.path().join("r");
    let mut fake = FakeNode::new(&run_dir, false, true);
    fake.peers.insert(
        "https://10.0.0.2:2380".into(),
        this.restored_cluster_id.clone(),
    );
    let saga = Restore {
        host: &fake,
        operator_rollback: false,
    };
    let p = plan("run1", false);
    Engine::create(&saga, run_dir.clone(), p.clone(), &quiet, None)
        .unwrap()
        .run()
        .unwrap();
    assert_final(
        &fake,
        &run_dir,
        &p,
        "sibling answering as this restore's cluster",
    );
}
