//! The rejoin saga on the engine, on a fake node and cluster, in milliseconds: the whole run,
//! a fault at each effect before the removal (rolled back: the node and the member list as
//! they were), a fault after it (rollback refused by the raft rule, `resume` finishes), and
//! a crash inside add-learner that a resume repairs without adding a second learner.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::datadir::copy::CopyReport;
use crate::datadir::precopy::PrecopyReport;
use crate::datadir::verify::VerifyReport;
use crate::etcd::client::Member;
use crate::etcd::health::{ClusterHealth, HealthReport};
use crate::run::fault::FaultHost;
use crate::run::host::MemberStatus;
use crate::run::{Engine, RunState};

const MANIFEST: &str = "/k/manifests/etcd.yaml";
const DATA: &str = "/var/lib/etcd";
const PEER: &str = "https://10.0.0.2:2380";

#[derive(Debug, Clone, PartialEq)]
struct World {
    files: BTreeMap<PathBuf, Vec<u8>>,
    dirs: BTreeSet<PathBuf>,
    kubelet: bool,
    /// (id, name, peer URL, learner)
    members: Vec<(u64, String, String, bool)>,
    next_id: u64,
}

struct Fake {
    w: RefCell<World>,
}

fn nope<T>(what: &str) -> Result<T> {
    Err(Error::failed(what, "not modelled by the fake"))
}

impl Fake {
    fn new() -> Fake {
        let mut files = BTreeMap::new();
        files.insert(
            PathBuf::from(MANIFEST),
            include_bytes!("../../tests/fixtures/manifests/kubeadm-v1.31.yaml").to_vec(),
        );
        files.insert(
            PathBuf::from(DATA).join("member/wal/0.wal"),
            b"broken".to_vec(),
        );
        let dirs = [DATA, "/var/lib/etcd/member", "/var/lib/etcd/member/wal"]
            .iter()
            .map(PathBuf::from)
            .collect();
        Fake {
            w: RefCell::new(World {
                files,
                dirs,
                kubelet: true,
                members: vec![
                    (1, "n1".into(), "https://10.0.0.1:2380".into(), false),
                    (2, "n2".into(), PEER.into(), false),
                    (3, "n3".into(), "https://10.0.0.3:2380".into(), false),
                ],
                next_id: 100,
            }),
        }
    }

    fn running_new(&self) -> bool {
        let w = self.w.borrow();
        w.kubelet && w.files.contains_key(Path::new(MANIFEST))
    }
}

fn under(p: &Path, root: &Path) -> bool {
    p == root || p.starts_with(root)
}

impl Host for Fake {
    fn health(&self, _cluster: bool) -> Result<HealthReport> {
        let w = self.w.borrow();
        let voters = w.members.iter().filter(|m| !m.3).count();
        Ok(HealthReport {
            healthy: voters == 3,
            endpoints: vec![],
            cluster: Some(ClusterHealth {
                cluster_id: Some("c".into()),
                members: voters,
                leader: Some("1".into()),
                leaders_agree: true,
                raft_index_spread: Some(0),
                hash_revision: Some(7),
                hashes_agree: Some(true),
                hash_kv: vec![],
            }),
            alarms: vec![],
            problems: vec![],
            warnings: vec![],
            quota_backend_bytes: 0,
            alarms_listed: true,
            data_dir: None,
        })
    }
    fn identity(&self) -> Result<Identity> {
        nope("identity")
    }
    fn hash_at(&self, _revision: i64) -> Result<crate::run::host::HashAt> {
        nope("hash_at")
    }
    fn snapshot(&self, _dest: &Path) -> Result<()> {
        nope("snapshot")
    }
    fn stop_etcd(&self, manifest: &Path, moved_to: &Path, _data_dir: &Path) -> Result<()> {
        let mut w = self.w.borrow_mut();
        let bytes = w.files.remove(manifest).expect("manifest in place");
        w.files.insert(moved_to.to_path_buf(), bytes);
        Ok(())
    }
    fn stop_kubelet(&self) -> Result<()> {
        self.w.borrow_mut().kubelet = false;
        Ok(())
    }
    fn start_kubelet(&self) -> Result<()> {
        self.w.borrow_mut().kubelet = true;
        Ok(())
    }
    fn kubelet_active(&self) -> Result<bool> {
        Ok(self.w.borrow().kubelet)
    }
    fn put_manifest(&self, from: &Path, manifest: &Path) -> Result<()> {
        let mut w = self.w.borrow_mut();
        let bytes = w.files.get(from).cloned().expect("source manifest");
        w.files.insert(manifest.to_path_buf(), bytes);
        Ok(())
    }
    fn wait_healthy(&self) -> Result<()> {
        if self.running_new() {
            Ok(())
        } else {
            Err(Error::failed("wait healthy", "etcd not running"))
        }
    }
    fn rewrite(&self, _m: &Path, _n: &Path, _b: &Path) -> Result<()> {
        nope("rewrite")
    }
    fn copy(&self, _s: &Path, _d: &Path, _f: &Path, _p: bool) -> Result<CopyReport> {
        nope("copy")
    }
    fn precopy(&self, _s: &Path, _d: &Path) -> Result<PrecopyReport> {
        nope("precopy")
    }
    fn verify(&self, _s: &Path, _d: &Path, _x: Option<&Path>) -> Result<VerifyReport> {
        nope("verify")
    }
    fn quiesced(&self, _d: &Path) -> Result<bool> {
        Ok(!self.running_new())
    }
    fn tree_sums(&self, _d: &Path) -> Result<String> {
        nope("tree_sums")
    }
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        Ok(self.w.borrow().files.get(path).cloned())
    }
    fn write_file(&self, path: &Path, bytes: &[u8], _mode: u32) -> Result<()> {
        self.w
            .borrow_mut()
            .files
            .insert(path.to_path_buf(), bytes.to_vec());
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> Result<()> {
        self.w.borrow_mut().files.remove(path);
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let mut w = self.w.borrow_mut();
        let move_path = |p: &Path| to.join(p.strip_prefix(from).unwrap());
        let files: Vec<_> = w.files.keys().filter(|p| under(p, from)).cloned().collect();
        for f in files {
            let b = w.files.remove(&f).unwrap();
            w.files.insert(move_path(&f), b);
        }
        let dirs: Vec<_> = w.dirs.iter().filter(|p| under(p, from)).cloned().collect();
        for d in dirs {
            w.dirs.remove(&d);
            w.dirs.insert(move_path(&d));
        }
        Ok(())
    }
    fn is_dir(&self, path: &Path) -> Result<bool> {
        Ok(self.w.borrow().dirs.contains(path))
    }
    fn is_mount_point(&self, _path: &Path) -> Result<bool> {
        Ok(false)
    }
    fn has_entries(&self, dir: &Path) -> Result<bool> {
        let w = self.w.borrow();
        Ok(w.files.keys().any(|p| p != dir && under(p, dir))
            || w.dirs.iter().any(|p| p != dir && under(p, dir)))
    }
    fn empty_dir(&self, _dir: &Path) -> Result<()> {
        nope("empty_dir")
    }
    fn remove_tree(&self, path: &Path) -> Result<()> {
        let mut w = self.w.borrow_mut();
        w.files.retain(|p, _| !under(p, path));
        w.dirs.retain(|p| !under(p, path));
        Ok(())
    }
    fn create_dir(&self, path: &Path, _like: Option<&Path>) -> Result<()> {
        self.w.borrow_mut().dirs.insert(path.to_path_buf());
        Ok(())
    }
    fn local_status(&self) -> Result<MemberStatus> {
        let w = self.w.borrow();
        let me = w.members.iter().find(|m| m.2 == PEER && m.0 >= 100);
        match me {
            Some(m) if self.running_new() => Ok(MemberStatus {
                member_id: crate::output::hex_id(m.0),
                cluster_id: "c".into(),
                leader: 1,
                raft_index: 10,
                raft_applied_index: 10,
            }),
            _ => Err(Error::failed("local status", "not serving")),
        }
    }
    fn members(&self) -> Result<Vec<Member>> {
        Ok(self
            .w
            .borrow()
            .members
            .iter()
            .map(|(id, name, peer, learner)| Member {
                id: *id,
                name: name.clone(),
                client_urls: vec![],
                peer_urls: vec![peer.clone()],
                is_learner: *learner,
            })
            .collect())
    }
    fn member_remove(&self, id: u64) -> Result<bool> {
        let mut w = self.w.borrow_mut();
        let before = w.members.len();
        w.members.retain(|m| m.0 != id);
        Ok(w.members.len() < before)
    }
    fn member_add_learner(&self, peer_url: &str) -> Result<u64> {
        let mut w = self.w.borrow_mut();
        if let Some(m) = w.members.iter().find(|m| m.2 == peer_url) {
            assert!(m.3, "a voter at {peer_url}");
            return Ok(m.0);
        }
        let id = w.next_id;
        w.next_id += 1;
        w.members.push((id, String::new(), peer_url.into(), true));
        Ok(id)
    }
    fn wait_caught_up(&self, _entries: u64, _timeout: Duration) -> Result<(u64, u64)> {
        if !self.running_new() {
            return Err(Error::failed("wait caught up", "etcd not running"));
        }
        let mut w = self.w.borrow_mut();
        if let Some(m) = w.members.iter_mut().find(|m| m.2 == PEER) {
            m.1 = "n2".into();
        }
        Ok((10, 10))
    }
    fn promote(&self, id: u64, _timeout: Duration) -> Result<u32> {
        let mut w = self.w.borrow_mut();
        let m = w.members.iter_mut().find(|m| m.0 == id).expect("learner");
        m.3 = false;
        Ok(1)
    }
}

fn plan(id: &str) -> Plan {
    Plan {
        id: id.into(),
        me: Me {
            name: "n2".into(),
            peer_url: PEER.into(),
            data_dir: DATA.into(),
        },
        manifest: MANIFEST.into(),
        old_member_id: "2".into(),
        voters: 3,
        mounted: false,
        moved: DATA.into(),
        aside: format!("{DATA}.etcdops-old-{id}").into(),
        data_existed: true,
        catch_up_entries: CATCH_UP_ENTRIES,
        catch_up_timeout_ms: 1000,
        stranger: None,
        startup_window_ms: None,
    }
}

fn quiet(_: &str) {}

fn run_on(host: &dyn Host, state: &Path, id: &str) -> (Result<()>, PathBuf) {
    let saga = Rejoin { host };
    let dir = crate::run::runs_dir(state).join(id);
    let mut e = Engine::create(&saga, dir.clone(), plan(id), &quiet, None).unwrap();
    (e.run(), dir)
}

#[test]
fn the_whole_rejoin_replaces_the_member_and_keeps_the_old_data() {
    let fake = Fake::new();
    let state = tempfile::tempdir().unwrap();
    let (r, dir) = run_on(&fake, state.path(), "r1");
    r.unwrap();
    let w = fake.w.borrow();
    let ids: Vec<u64> = w.members.iter().map(|m| m.0).collect();
    assert_eq!(ids, [1, 3, 100]);
    assert!(w.members.iter().all(|m| !m.3), "no learner left");
    assert!(
        w.files
            .contains_key(Path::new("/var/lib/etcd.etcdops-old-r1/member/wal/0.wal"))
    );
    let manifest = String::from_utf8(w.files[Path::new(MANIFEST)].clone()).unwrap();
    assert!(manifest.contains("n2=https://10.0.0.2:2380"), "{manifest}");
    drop(w);
    let report = crate::runs::report(&dir, false).unwrap();
    assert_eq!(report.kind, crate::run::RunKind::Rejoin);
    assert_eq!(report.old_member_id.as_deref(), Some("2"));
    assert_eq!(report.new_member_id.as_deref(), Some("64"));
}

#[test]
fn a_fault_before_the_removal_rolls_back_to_exactly_the_node_before() {
    for (method, before) in [
        ("stop_etcd", false),
        ("stop_kubelet", false),
        ("rename", false),
        ("create_dir", false),
        ("member_remove", true),
    ] {
        let fake = Fake::new();
        let initial = fake.w.borrow().clone();
        let fault = FaultHost::new(&fake, method, 1, before);
        let state = tempfile::tempdir().unwrap();
        let (r, dir) = run_on(&fault, state.path(), "r1");
        assert_eq!(r.unwrap_err().exit_code(), 1, "{method}");
        let report = crate::runs::report(&dir, false).unwrap();
        assert_eq!(report.state, RunState::RolledBack, "{method}");
        let mut now = fake.w.borrow().clone();
        // The run dir's own files (the original manifest kept, the moved copy) are its.
        now.files.retain(|p, _| !p.starts_with(state.path()));
        assert_eq!(now, initial, "{method}");
    }
}

#[test]
fn past_the_removal_rollback_is_refused_and_resume_finishes() {
    let fake = Fake::new();
    let fault = FaultHost::new(&fake, "member_add_learner", 1, true);
    let state = tempfile::tempdir().unwrap();
    let (r, dir) = run_on(&fault, state.path(), "r1");
    let e = r.unwrap_err();
    assert_eq!(e.exit_code(), 5, "{e}");
    assert!(e.one_line().contains("was removed from the cluster"), "{e}");
    let saga = Rejoin { host: &fake };
    let mut again = Engine::open(&saga, dir.clone(), &quiet, None).unwrap();
    let rb = again.rollback().unwrap_err();
    assert_eq!(rb.exit_code(), 5);
    assert!(rb.one_line().contains("member rejoin resume"), "{rb}");
    let mut again = Engine::open(&saga, dir.clone(), &quiet, None).unwrap();
    again.resume().unwrap();
    let w = fake.w.borrow();
    assert_eq!(
        w.members.iter().map(|m| m.0).collect::<Vec<_>>(),
        [1, 3, 100]
    );
}

#[test]
fn a_crash_after_the_learner_was_added_does_not_add_a_second_one() {
    let fake = Fake::new();
    // The add took effect, then the process "died" before recording it.
    let fault = FaultHost::new(&fake, "member_add_learner", 1, false);
    let state = tempfile::tempdir().unwrap();
    let (r, dir) = run_on(&fault, state.path(), "r1");
    assert_eq!(r.unwrap_err().exit_code(), 5);
    let saga = Rejoin { host: &fake };
    let mut again = Engine::open(&saga, dir, &quiet, None).unwrap();
    again.resume().unwrap();
    let w = fake.w.borrow();
    assert_eq!(w.members.len(), 3, "{:?}", w.members);
    assert_eq!(w.next_id, 101, "one learner was ever added");
}

/// kubeadm 1.31's startup probe asks /readyz: 10 s + 24 x 10 s. With an image from 3.5.19
/// on (a learner's /readyz fails), that is the learner's deadline; on 3.5.15 it is not.
#[test]
fn the_startup_probe_window_bounds_the_learner_from_3_5_19() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("etcd.yaml");
    let fixture = include_str!("../../tests/fixtures/manifests/kubeadm-v1.31.yaml");
    std::fs::write(&m, fixture).unwrap();
    assert_eq!(
        startup_window(&m),
        None,
        "3.5.15: /readyz passes for a learner"
    );
    std::fs::write(&m, fixture.replace("etcd:3.5.15-0", "etcd:3.6.5-0")).unwrap();
    assert_eq!(startup_window(&m), Some(Duration::from_secs(250)));
    let mut p = plan("r1");
    p.catch_up_timeout_ms = 300_000;
    p.startup_window_ms = Some(250_000);
    assert_eq!(p.learner_deadline(), Duration::from_secs(250));
    p.catch_up_timeout_ms = 60_000;
    assert_eq!(p.learner_deadline(), Duration::from_secs(60));
}

/// A promotion that does not happen in the window says that kubelet restarts the learner
/// and what to do.
#[test]
fn a_failed_promotion_names_the_startup_probe_and_the_fix() {
    let fake = Fake::new();
    let fault = FaultHost::new(&fake, "promote", 1, true);
    let state = tempfile::tempdir().unwrap();
    let saga = Rejoin { host: &fault };
    let dir = crate::run::runs_dir(state.path()).join("r1");
    let mut p = plan("r1");
    p.startup_window_ms = Some(250_000);
    let mut e = Engine::create(&saga, dir, p, &quiet, None).unwrap();
    let err = e.run().unwrap_err().one_line();
    assert!(
        err.contains("kubelet restarts it 250s after it starts until it is promoted"),
        "{err}"
    );
    assert!(err.contains("etcdctl member promote"), "{err}");
}
