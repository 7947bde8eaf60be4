//! `member rejoin` on the lab (real etcd 3.5 and 3.6, real TLS, real files; the kubelet
//! stand-in as kubelet.service under a real systemd for the scenario and the kill test, 3.5
//! with the data dir on its own ext4 disk; the plain lab for the refusals, which stop no
//! kubelet): seed scenario 1 ("hostPath Directory Deleted": node 2's data emptied
//! while etcd was stopped, etcd started and failing) is repaired — every key back on node 2,
//! HashKV agreement, a healthy cluster, a new member id reported beside the old one, the old
//! data aside; `kill -9` after every step, then `rollback` (before the removal: the node as
//! it was; after: refused by the raft rule) and `resume` converge; bad inputs are refused
//! with their exit code, one line, and nothing changed.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::lab::Lab;
use common::{Run, Version, tree_bytes, wait_for};

fn put(lab: &Lab, prefix: &str, n: usize) {
    for i in 0..n {
        let out = lab.etcdctl(&["put", &format!("{prefix}{i}"), "v"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn rejoin(lab: &Lab, node: usize, words: &[&str], extra: &[(&str, &str)]) -> Run {
    let mut args = vec!["-o", "json", "member", "rejoin"];
    args.extend_from_slice(words);
    lab.etcdops(node, &args, extra)
}

/// The member id node `node` answers with, lower-case hex as etcdops prints it.
fn member_id(lab: &Lab, node: usize) -> Option<String> {
    let out = lab.etcdctl_node(node, &["endpoint", "status", "-w", "json"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(format!(
        "{:x}",
        v[0]["Status"]["header"]["member_id"].as_u64()?
    ))
}

/// Every member's id in the member list (read through the other nodes), lower-case hex.
fn member_ids(lab: &Lab) -> Vec<String> {
    let out = lab.etcdctl(&["member", "list", "-w", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{:x}", m["ID"].as_u64().unwrap()))
        .collect()
}

fn port_refuses(lab: &Lab, node: usize) -> bool {
    let url = lab.client_url(node);
    let hostport = url.trim_start_matches("https://");
    std::net::TcpStream::connect_timeout(&hostport.parse().unwrap(), Duration::from_secs(1))
        .is_err()
}

fn restarts(lab: &Lab, node: usize) -> usize {
    std::fs::read_to_string(lab.node_dir(node).join("kubelet.log"))
        .unwrap_or_default()
        .matches("exited; will restart")
        .count()
}

/// Seed scenario 1, as the runbook's operator meets it: etcd stopped the runbook's way
/// (manifest out), the data dir's contents deleted, the manifest put back — and etcd failing.
fn break_node(lab: &Lab, node: usize) {
    let manifest = lab.manifest(node);
    let out = lab.path().join(format!("etcd.yaml.node{node}.out"));
    std::fs::rename(&manifest, &out).unwrap();
    wait_for(
        &format!("node {node}'s etcd to stop (client port refusing)"),
        Duration::from_secs(60),
        || port_refuses(lab, node),
    );
    let data = lab.in_node(node, &lab.data_dir(node));
    for e in std::fs::read_dir(&data).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let before = restarts(lab, node);
    std::fs::rename(&out, &manifest).unwrap();
    // It fails: the others' log is ahead of its empty one (raft panics) or its new cluster
    // is not theirs; either way etcd exits and the kubelet stand-in restarts it.
    wait_for(
        &format!("node {node}'s etcd on the emptied data dir to fail and be restarted"),
        Duration::from_secs(90),
        || restarts(lab, node) > before,
    );
}

/// Where the old data went: beside a plain data dir, or inside one that is its own disk
/// (then its `member` dir moves aside within it), as the node sees it.
fn aside(lab: &Lab, node: usize, id: &str, mounted: bool) -> PathBuf {
    let data = lab.data_dir(node);
    let at = if mounted {
        data.join(format!("member.etcdops-old-{id}"))
    } else {
        PathBuf::from(format!("{}.etcdops-old-{id}", data.display()))
    };
    lab.in_node(node, &at)
}

/// After a rejoin of node 2: every key from node 2 alone, one HashKV, healthy, three
/// members of which node 2's is new.
fn assert_rejoined(lab: &Lab, old: &str, keys: u64) -> String {
    wait_for(
        "node 2 to serve every key from its own data (serializable read)",
        Duration::from_secs(60),
        || lab.count_on(2, "/k/") == Some(keys),
    );
    let h = lab.hashes();
    assert_eq!(h.len(), 3);
    assert!(h.windows(2).all(|w| w[0] == w[1]), "{h:?}");
    lab.etcdops(1, &["health", "--cluster"], &[]).code(0);
    let new = member_id(lab, 2).expect("node 2 answers");
    assert_ne!(new, old);
    let ids = member_ids(lab);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(
        ids.contains(&new) && !ids.contains(&old.to_string()),
        "{ids:?}"
    );
    let text = std::fs::read_to_string(lab.manifest(2)).unwrap();
    assert!(
        text.contains("- --initial-cluster-state=existing\n"),
        "{text}"
    );
    new
}

/// On a systemd lab (kubelet.service under a real systemd); with `disk` "ext4" the data dir is
/// its own disk, a mount point, so the old `member` dir moves aside inside it.
fn seed_scenario_1(v: Version, disk: &str) {
    let lab = Lab::up_systemd(v, 3, disk);
    put(&lab, "/k/", 20);
    let old = member_id(&lab, 2).unwrap();
    break_node(&lab, 2);
    let run = rejoin(&lab, 2, &["--yes"], &[]);
    run.code(0);
    let j = run.json();
    assert_eq!(j["kind"], "rejoin", "{}", run.dump());
    assert_eq!(j["state"], "completed", "{}", run.dump());
    assert_eq!(j["old_member_id"], old.as_str(), "{}", run.dump());
    let new = assert_rejoined(&lab, &old, 20);
    assert_eq!(j["new_member_id"], new.as_str(), "{}", run.dump());
    let id = j["id"].as_str().unwrap();
    assert!(
        aside(&lab, 2, id, disk != "dir").is_dir(),
        "old data kept aside"
    );
    // status of the finished run: exit 0, the same ids.
    let st = rejoin(&lab, 2, &["status"], &[]);
    st.code(0);
    assert_eq!(st.json()["new_member_id"], new.as_str());
}

#[test]
fn rejoin_seed_scenario_1_3_6() {
    seed_scenario_1(Version::V36, "ext4");
}

#[test]
fn rejoin_seed_scenario_1_3_5() {
    seed_scenario_1(Version::V35, "dir");
}

#[test]
fn rejoin_seed_scenario_1_3_7() {
    seed_scenario_1(Version::V37, "xfs");
}

/// kill -9 after each step before the removal, then `rollback`: the manifest byte for byte,
/// the very same data dir (inode) and the old member still in the list. Then kill -9 after
/// each step from the removal on, each `resume` killed at the next one: `rollback` is
/// refused by the raft rule, saying why, and the last `resume` converges. On a systemd lab:
/// the kills land while `systemctl` stops and starts kubelet.service.
#[test]
fn rejoin_kill_9_at_every_step_then_rollback_or_resume() {
    let lab = Lab::up_systemd(Version::V36, 3, "dir");
    put(&lab, "/k/", 10);
    let old = member_id(&lab, 2).unwrap();
    break_node(&lab, 2);
    let manifest = std::fs::read(lab.manifest(2)).unwrap();
    let ino = std::fs::metadata(lab.data_dir(2)).unwrap().ino();
    for point in [
        "preflight:done",
        "stop-etcd:done",
        "stop-kubelet:done",
        "move-aside:done",
        "remove-member:begin",
    ] {
        let r = rejoin(&lab, 2, &["--yes"], &[("ETCDOPS_TEST_KILL_AFTER", point)]);
        assert_eq!(r.code, -1, "killed at {point}: {}", r.dump());
        rejoin(&lab, 2, &["status"], &[]).code(5);
        // A new run is refused while this one is unfinished.
        rejoin(&lab, 2, &["--yes"], &[]).code(4);
        let rb = rejoin(&lab, 2, &["rollback"], &[]);
        rb.code(0);
        assert_eq!(rb.json()["state"], "rolled-back", "{point}: {}", rb.dump());
        assert_eq!(std::fs::read(lab.manifest(2)).unwrap(), manifest, "{point}");
        assert_eq!(
            std::fs::metadata(lab.data_dir(2)).unwrap().ino(),
            ino,
            "{point}: the data dir is the one from before the run"
        );
        let id = rb.json()["id"].as_str().unwrap().to_string();
        assert!(!aside(&lab, 2, &id, false).exists(), "{point}");
        assert!(member_ids(&lab).contains(&old), "{point}");
    }
    let points = [
        "remove-member:done",
        "add-learner:done",
        "rewrite:done",
        "start-kubelet:done",
        "wait-caught-up:done",
        "promote:done",
    ];
    let first = rejoin(
        &lab,
        2,
        &["--yes"],
        &[("ETCDOPS_TEST_KILL_AFTER", points[0])],
    );
    assert_eq!(first.code, -1, "{}", first.dump());
    let rb = rejoin(&lab, 2, &["rollback"], &[]);
    rb.code(5);
    assert!(
        rb.stderr.contains("was removed from the cluster")
            && rb.stderr.contains("member rejoin resume"),
        "{}",
        rb.dump()
    );
    for point in &points[1..] {
        let r = rejoin(&lab, 2, &["resume"], &[("ETCDOPS_TEST_KILL_AFTER", point)]);
        assert_eq!(r.code, -1, "killed at {point}: {}", r.dump());
        rejoin(&lab, 2, &["status"], &[]).code(5);
    }
    let done = rejoin(&lab, 2, &["resume"], &[]);
    done.code(0);
    assert_eq!(done.json()["state"], "completed", "{}", done.dump());
    assert_eq!(done.json()["old_member_id"], old.as_str());
    assert_rejoined(&lab, &old, 10);
}

fn snapshot_of(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    if path.exists() {
        tree_bytes(path)
    } else {
        Vec::new()
    }
}

/// The bytes a refused rejoin must leave alone on a node: the manifests dir, the data dir,
/// the state dir (each file's path and a hash of its bytes, so a failure prints little).
fn node_bytes(lab: &Lab, node: usize) -> [Vec<(PathBuf, u64)>; 3] {
    let hashed = |p: &Path| -> Vec<(PathBuf, u64)> {
        snapshot_of(p)
            .into_iter()
            .map(|(path, bytes)| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut h);
                (path, h.finish())
            })
            .collect()
    };
    [
        hashed(lab.manifest(node).parent().unwrap()),
        hashed(&lab.data_dir(node)),
        hashed(&lab.state_dir(node)),
    ]
}

/// Nothing changed: the manifests dir and the state dir byte for byte; the data dir by its
/// file names, because the running etcd itself writes its WAL and db (cluster version,
/// terms) whenever it likes — not ours to freeze.
fn assert_unchanged(
    before: &[Vec<(PathBuf, u64)>; 3],
    after: &[Vec<(PathBuf, u64)>; 3],
    what: &str,
) {
    assert_eq!(after[0], before[0], "{what}: manifests dir");
    assert_eq!(after[2], before[2], "{what}: state dir");
    let names = |b: &[(PathBuf, u64)]| b.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(names(&after[1]), names(&before[1]), "{what}: data dir");
}

fn leader(lab: &Lab) -> usize {
    (1..=lab.nodes)
        .find(|n| {
            let out = lab.etcdctl_node(*n, &["endpoint", "status", "-w", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let s = &v[0]["Status"];
            s["leader"].as_u64().is_some() && s["leader"] == s["header"]["member_id"]
        })
        .expect("a leader")
}

#[test]
fn rejoin_bad_inputs_are_refused_and_change_nothing() {
    let lab = Lab::up(Version::V36, 3);
    put(&lab, "/k/", 3);
    let lead = leader(&lab);
    let follower = if lead == 2 { 3 } else { 2 };
    let third = (1..=3).find(|n| *n != lead && *n != follower).unwrap();
    // A manifest whose member the cluster does not know (name and peer URL changed), kept
    // outside the manifests dir so no etcd starts from it.
    let ghost_dir = lab.path().join("ghost");
    std::fs::create_dir_all(&ghost_dir).unwrap();
    let ghost = ghost_dir.join("etcd.yaml");
    let text = std::fs::read_to_string(lab.manifest(follower)).unwrap();
    let ip = lab
        .client_url(follower)
        .trim_start_matches("https://")
        .trim_end_matches(":2379")
        .to_string();
    let ghost_text = text
        .replace(
            &format!("--initial-advertise-peer-urls=https://{ip}:2380"),
            "--initial-advertise-peer-urls=https://127.0.0.1:2390",
        )
        .replace("--name=", "--name=ghost-");
    assert_ne!(ghost_text, text);
    std::fs::write(&ghost, &ghost_text).unwrap();
    let g = ghost.display().to_string();
    // Issue 21, hole 2: the follower's own manifest with `--initial-cluster` written as a
    // double-quoted item, which the rewrite step cannot edit surgically. That step used to
    // refuse it after etcd was stopped and the member removed; preflight now makes the same
    // edit in memory first.
    let quoted = ghost_dir.join("quoted.yaml");
    let quoted_text: String = text
        .lines()
        .map(|l| match l.split_once("- --initial-cluster=") {
            Some((indent, value)) => format!("{indent}- \"--initial-cluster={value}\"\n"),
            None => format!("{l}\n"),
        })
        .collect();
    assert_ne!(quoted_text, text);
    std::fs::write(&quoted, &quoted_text).unwrap();
    let q = quoted.display().to_string();

    struct Case<'a> {
        node: usize,
        words: Vec<&'a str>,
        extra: Vec<(&'a str, &'a str)>,
        code: i32,
        needle: &'a str,
    }
    let cases = vec![
        Case {
            node: lead,
            words: vec!["--yes"],
            extra: vec![],
            code: 4,
            needle: "is the leader and healthy",
        },
        Case {
            node: follower,
            words: vec!["--yes"],
            extra: vec![("ETCDOPS_MANIFEST", g.as_str())],
            code: 4,
            needle: "adding a new member is out of scope",
        },
        Case {
            node: follower,
            words: vec!["--yes"],
            extra: vec![("ETCDOPS_MANIFEST", q.as_str())],
            code: 2,
            needle: "edit it by hand",
        },
        Case {
            node: follower,
            words: vec!["resume"],
            extra: vec![],
            code: 2,
            needle: "no run",
        },
        Case {
            node: follower,
            words: vec!["rollback"],
            extra: vec![],
            code: 2,
            needle: "no run",
        },
        Case {
            node: follower,
            words: vec!["--yes", "--cluster-endpoints", "https://127.0.0.1:1"],
            extra: vec![],
            code: 3,
            needle: "127.0.0.1:1",
        },
        Case {
            node: follower,
            words: vec!["--yes", "--catch-up-timeout", "soon"],
            extra: vec![],
            code: 2,
            needle: "soon",
        },
    ];
    for c in &cases {
        let before = node_bytes(&lab, c.node);
        let run = rejoin(&lab, c.node, &c.words, &c.extra);
        run.code(c.code);
        run.one_line_error(c.needle);
        assert_unchanged(
            &before,
            &node_bytes(&lab, c.node),
            &format!("{:?}", c.words),
        );
    }
    assert_eq!(std::fs::read_to_string(&ghost).unwrap(), ghost_text);
    assert_eq!(std::fs::read_to_string(&quoted).unwrap(), quoted_text);

    // Without --yes: the plan, exit 0, nothing changed.
    let before = node_bytes(&lab, follower);
    let plan = rejoin(&lab, follower, &[], &[]);
    plan.code(0);
    assert_eq!(plan.json()["kind"], "rejoin", "{}", plan.dump());
    assert_unchanged(&before, &node_bytes(&lab, follower), "refused");

    // An unstarted learner in the member list.
    let out = lab.etcdctl(&[
        "member",
        "add",
        "extra",
        "--learner",
        "--peer-urls=https://127.0.0.1:2391",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = node_bytes(&lab, follower);
    let run = rejoin(&lab, follower, &["--yes"], &[]);
    run.code(4);
    run.one_line_error("unstarted learner");
    assert_unchanged(&before, &node_bytes(&lab, follower), "refused");
    let list = lab.etcdctl(&["member", "list", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let learner = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["isLearner"] == true)
        .unwrap()["ID"]
        .as_u64()
        .unwrap();
    let out = lab.etcdctl(&["member", "remove", &format!("{learner:x}")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No quorum without this member: a third node down leaves the follower's rejoin one
    // healthy other member of three.
    let manifest = lab.manifest(third);
    let out = lab.path().join("third.yaml");
    std::fs::rename(&manifest, &out).unwrap();
    wait_for(
        "the third node's etcd to stop",
        Duration::from_secs(60),
        || port_refuses(&lab, third),
    );
    let before = node_bytes(&lab, follower);
    let run = rejoin(&lab, follower, &["--yes"], &[]);
    run.code(4);
    run.one_line_error("no quorum without this member");
    assert_unchanged(&before, &node_bytes(&lab, follower), "no quorum");
    std::fs::rename(&out, &manifest).unwrap();
}
