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
use common::proc::{Exit, Proc};
use common::{Run, Version, tree_bytes, wait_for};
use nix::sys::signal::Signal;

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
    // The leader may be node 1, kubeadm's first node, whose --initial-cluster names only
    // itself: rejoin then needs the other members' URLs to judge it.
    let others: Vec<String> = (1..=3)
        .filter(|n| *n != lead)
        .map(|n| lab.client_url(n))
        .collect();
    let others = others.join(",");
    let cases = vec![
        Case {
            node: lead,
            words: vec!["--yes", "--cluster-endpoints", others.as_str()],
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

// --- issue 21, holes 3 and 4: a stranger after a whole-cluster restore ---------------------

fn peer_listening(lab: &Lab, node: usize) -> bool {
    let url = lab.client_url(node).replace(":2379", ":2380");
    let hostport = url.trim_start_matches("https://");
    std::net::TcpStream::connect_timeout(&hostport.parse().unwrap(), Duration::from_secs(1)).is_ok()
}

/// An etcdops command on node `node`, spawned and waited for with a generous bound: only a
/// hang detector (the commands under test answer within their own timeouts).
fn bounded(lab: &Lab, node: usize, args: &[&str], what: &str) -> Exit {
    let mut p = Proc::spawn(lab.etcdops_cmd(node, args, &[]), what);
    p.wait_within(Duration::from_secs(240))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()))
}

fn dump(e: &Exit) -> String {
    format!(
        "exit {} after {:?}\nstdout: {}\nstderr: {}",
        e.code, e.took, e.stdout, e.stderr
    )
}

/// `dump` with the lab's logs, for a failure.
fn full(lab: &Lab, e: &Exit) -> String {
    format!("{}\n{}", dump(e), lab.logs())
}

/// Every node restored from one backup (the cluster gets new member ids and a new cluster
/// id), then node 2's member dir removed while its manifest was out and the manifest put
/// back with every member in `--initial-cluster`, state new: its etcd bootstraps from it as
/// a new cluster of its own — a stranger whose peers reject it for its cluster id, and which never serves a
/// client request (no quorum of its own). Returns the restored cluster's id for node 2.
fn stranger_after_restore(lab: &Lab) -> String {
    put(lab, "/k/", 10);
    let b = lab.etcdops(1, &["-o", "json", "backup"], &[]);
    b.code(0);
    let archive = b.json()["archive"].as_str().unwrap().to_string();
    let tool = lab.version.etcdutl().display().to_string();
    let plan = lab.etcdops(
        1,
        &["-o", "json", "restore", "plan", "--from", &archive],
        &[],
    );
    plan.code(0);
    let token = plan.json()["token"].as_str().unwrap().to_string();
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=lab.nodes)
            .map(|n| {
                let (archive, tool, token) = (&archive, &tool, &token);
                s.spawn(move || {
                    lab.etcdops(
                        n,
                        &[
                            "-o",
                            "json",
                            "restore",
                            "apply",
                            "--from",
                            archive,
                            "--yes",
                            "--token",
                            token,
                            "--etcdutl",
                            tool,
                        ],
                        &[],
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &runs {
        r.code(0);
    }
    let old = member_id(lab, 2).expect("node 2 answers after the restore");
    // Seed scenario 1: the runbook's stop (manifest out), the member dir removed, back in.
    // kubeadm's join manifest of node 2 says `--initial-cluster-state=existing` with the
    // members of its join (node 1 and 2): wiped, that etcd only fails to start (member
    // count unequal). The stranger needs what etcd's disaster-recovery guide has every
    // node of a restored cluster carry: every member in `--initial-cluster`, state new.
    let manifest = lab.manifest(2);
    let all: Vec<String> = (1..=lab.nodes)
        .map(|n| format!("node{n}={}", lab.client_url(n).replace(":2379", ":2380")))
        .collect();
    let text = std::fs::read_to_string(&manifest).unwrap();
    let flags: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("- --initial-cluster-state="))
        .map(|l| {
            if l.trim_start().starts_with("- --initial-cluster=") {
                format!("    - --initial-cluster={}\n", all.join(","))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(flags, text, "node 2's manifest has no --initial-cluster");
    std::fs::write(&manifest, flags).unwrap();
    let out = lab.path().join("etcd.yaml.node2.out");
    std::fs::rename(&manifest, &out).unwrap();
    wait_for(
        "node 2's etcd to stop (client port refusing)",
        Duration::from_secs(60),
        || port_refuses(lab, 2),
    );
    let data = lab.in_node(2, &lab.data_dir(2));
    for e in std::fs::read_dir(&data).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    std::fs::rename(&out, &manifest).unwrap();
    wait_for(
        "node 2's new etcd to write a member dir and listen on its peer port",
        Duration::from_secs(60),
        || data.join("member").is_dir() && peer_listening(lab, 2),
    );
    old
}

/// Holes 3 and 4 of issue 21, as found on the lab: `health --cluster` hung for minutes on
/// this cluster and `member rejoin --yes` sat in preflight, deaf to SIGTERM. Now: health
/// answers, unhealthy (exit 4), naming the stranger; doctor on node 2 fails its identity
/// check with the fix; the first SIGTERM stops a rejoin in preflight with nothing changed;
/// and `member rejoin --yes` replaces the stranger.
fn stranger(v: Version) {
    let lab = Lab::up(v, 3);
    let old = stranger_after_restore(&lab);
    let url2 = lab.client_url(2);

    let h = bounded(
        &lab,
        1,
        &["-o", "json", "health", "--cluster"],
        "health --cluster",
    );
    assert_eq!(h.code, 4, "{}", full(&lab, &h));
    let j = h.json().unwrap_or_else(|| panic!("{}", full(&lab, &h)));
    let problems: Vec<String> = j["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&url2) && p.contains("stranger") && p.contains("cluster id")),
        "{}",
        full(&lab, &h)
    );

    eprintln!("health --cluster on node 1: {}", dump(&h));
    let d = bounded(&lab, 2, &["-o", "json", "doctor"], "doctor on node 2");
    assert_eq!(d.code, 4, "{}", full(&lab, &d));
    let j = d.json().unwrap_or_else(|| panic!("{}", full(&lab, &d)));
    let check = j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "etcd.identity")
        .unwrap_or_else(|| panic!("no etcd.identity check: {}", dump(&d)))
        .clone();
    eprintln!("doctor on node 2, etcd.identity: {check}");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["fix"]
            .as_str()
            .unwrap()
            .contains("member rejoin --yes"),
        "{check}"
    );
    assert!(
        check["evidence"].as_str().unwrap().contains("cluster id"),
        "{check}"
    );

    // The first SIGTERM in preflight stops the rejoin before anything changes. A long
    // command timeout keeps preflight on the stranger's endpoint long past the signal.
    let before = node_bytes(&lab, 2);
    let mut p = Proc::spawn(
        lab.etcdops_cmd(
            2,
            &["--command-timeout", "120s", "member", "rejoin", "--yes"],
            &[],
        ),
        "member rejoin --yes (to be signalled)",
    );
    wait_for(
        "rejoin's preflight to say what it waits for",
        Duration::from_secs(60),
        || p.stderr_so_far().contains("waiting for"),
    );
    p.signal(Signal::SIGTERM);
    let e = p
        .wait_within(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("SIGTERM ignored: {e}"));
    assert_eq!(e.code, 1, "{}", full(&lab, &e));
    assert!(
        e.stderr.contains("interrupted") && e.stderr.contains("nothing was changed"),
        "{}",
        full(&lab, &e)
    );
    assert_unchanged(&before, &node_bytes(&lab, 2), "signalled in preflight");

    let r = bounded(
        &lab,
        2,
        &["-o", "json", "member", "rejoin", "--yes"],
        "member rejoin --yes",
    );
    assert_eq!(r.code, 0, "{}", full(&lab, &r));
    let j = r.json().unwrap();
    assert_eq!(j["state"], "completed", "{}", full(&lab, &r));
    assert_eq!(j["old_member_id"], old.as_str(), "{}", full(&lab, &r));
    let new = assert_rejoined(&lab, &old, 10);
    assert_eq!(j["new_member_id"], new.as_str(), "{}", full(&lab, &r));
}

#[test]
fn rejoin_replaces_a_stranger_after_a_whole_cluster_restore() {
    stranger(Version::V36);
}

/// The other half of the stranger case (issue 21, hole 3): a kubeadm first node, whose
/// `--initial-cluster` lists only itself, wiped, comes back as a new, empty and *healthy*
/// single-member cluster with another cluster id (and, with a token of its own, another
/// member id), answering every request. health from another node names it, doctor on it fails
/// `etcd.identity` ("alone in its own member list" / another cluster id), and `member
/// rejoin --yes --cluster-endpoints` (the manifest names no other member) replaces it
/// instead of refusing it as "the leader and healthy".
#[test]
fn rejoin_replaces_a_wiped_first_node_that_came_back_as_a_cluster_of_its_own() {
    let lab = Lab::up(Version::V36, 3);
    put(&lab, "/k/", 10);
    let old = member_id(&lab, 1).unwrap();
    // kubeadm's first node: --initial-cluster names only itself (etcd ignores the flag while
    // its data dir holds a member, so the running member is unchanged).
    let manifest = lab.manifest(1);
    let text = std::fs::read_to_string(&manifest).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("--initial-cluster="))
        .unwrap()
        .to_string();
    let own = format!(
        "    - --initial-cluster=node1={}",
        lab.client_url(1).replace(":2379", ":2380")
    );
    assert!(line.contains(&own.trim_start()[2..]), "{line} vs {own}");
    // A cluster kubeadm bootstrapped from node 1 alone has node 1's own cluster id: wiped
    // with that manifest, node 1 is let back in by its peers and panics in raft
    // (`stepFollower`) on their log, a crash loop, not a cluster of its own. A cluster of its
    // own needs another cluster id, as after a restore (a token of its own, so a member id
    // of its own too: the cluster still knows node 1 as `old`).
    let own = format!("{own}\n    - --initial-cluster-token=wiped-node1");
    std::fs::write(&manifest, text.replace(&line, &own)).unwrap();
    // Wiped the runbook's way: manifest out, data dir emptied, manifest back.
    let out = lab.path().join("etcd.yaml.node1.out");
    std::fs::rename(&manifest, &out).unwrap();
    wait_for(
        "node 1's etcd to stop (client port refusing)",
        Duration::from_secs(60),
        || port_refuses(&lab, 1),
    );
    let data = lab.in_node(1, &lab.data_dir(1));
    for e in std::fs::read_dir(&data).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    std::fs::rename(&out, &manifest).unwrap();
    wait_for(
        "node 1 to answer as a cluster of its own with no key",
        Duration::from_secs(60),
        || lab.count_on(1, "/k/") == Some(0),
    );

    let h = bounded(
        &lab,
        2,
        &["-o", "json", "health", "--cluster"],
        "health --cluster",
    );
    eprintln!("health --cluster on node 2: {}", dump(&h));
    assert_eq!(h.code, 4, "{}", full(&lab, &h));
    let url1 = lab.client_url(1);
    let problems = h.json().unwrap()["problems"].to_string();
    assert!(
        problems.contains(&format!("{url1} is a stranger")),
        "{}",
        full(&lab, &h)
    );

    let d = bounded(&lab, 1, &["-o", "json", "doctor"], "doctor on node 1");
    let j = d.json().unwrap_or_else(|| panic!("{}", full(&lab, &d)));
    let check = j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "etcd.identity")
        .unwrap()
        .clone();
    eprintln!("doctor on node 1, etcd.identity: {check}");
    // The manifest names no peer: doctor compares with the endpoints given.
    let others = format!("{},{},{}", url1, lab.client_url(2), lab.client_url(3));
    let d = bounded(
        &lab,
        1,
        &["-o", "json", "--endpoints", &others, "doctor"],
        "doctor on node 1 with the peers as endpoints",
    );
    assert_eq!(d.code, 4, "{}", full(&lab, &d));
    let j = d.json().unwrap();
    let check = j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "etcd.identity")
        .unwrap()
        .clone();
    eprintln!("doctor on node 1 with --endpoints, etcd.identity: {check}");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["fix"]
            .as_str()
            .unwrap()
            .contains("member rejoin --yes"),
        "{check}"
    );

    let peers = format!("{},{}", lab.client_url(2), lab.client_url(3));
    let r = bounded(
        &lab,
        1,
        &[
            "-o",
            "json",
            "member",
            "rejoin",
            "--yes",
            "--cluster-endpoints",
            &peers,
        ],
        "member rejoin --yes on node 1",
    );
    assert_eq!(r.code, 0, "{}", full(&lab, &r));
    let j = r.json().unwrap();
    assert_eq!(j["state"], "completed", "{}", full(&lab, &r));
    assert_eq!(j["old_member_id"], old.as_str(), "{}", full(&lab, &r));
    wait_for(
        "node 1 to serve every key from its own data (serializable read)",
        Duration::from_secs(60),
        || lab.count_on(1, "/k/") == Some(10),
    );
    let hashes = lab.hashes();
    assert_eq!(hashes.len(), 3);
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    lab.etcdops(2, &["health", "--cluster"], &[]).code(0);
}
