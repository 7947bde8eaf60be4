//! `restore apply|status|resume|rollback` on 3-node systemd labs (real systemd-nspawn
//! nodes whose data dir is its own ext4 or xfs disk, a mount point; real etcd 3.5 and 3.6,
//! real TLS): a backup restored on every node brings back exactly the keys of the backup,
//! one cluster with agreeing HashKV, the old `member` kept aside inside the data dir; a
//! restore of one node alone waits for quorum, ends exit 5 saying how many members it waits
//! for, and `rollback` returns that node to its old data and its old, healthy cluster;
//! `kill -9` right at every step, then `resume` converges (every node) and, separately,
//! `rollback` converges (one node); bad inputs are refused with nothing changed (plain lab:
//! no service manager behaviour is involved there).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::lab::Lab;
use common::{Run, Version, tree_bytes, wait_for};
use etcdops::restore::RestoreStep;
use etcdops::run::StepKind;

/// The restore tool: etcdutl (3.6 removed `etcdctl snapshot restore`).
fn tool(v: Version) -> PathBuf {
    v.etcdutl()
}

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

fn backup(lab: &Lab) -> String {
    let run = lab.etcdops(1, &["-o", "json", "backup"], &[]);
    run.code(0);
    run.json()["archive"].as_str().unwrap().to_string()
}

/// `restore plan` on node 1: this attempt's token (fresh on every call) and the plan.
fn plan_attempt(lab: &Lab, archive: &str) -> (String, serde_json::Value) {
    plan_on(lab, 1, archive)
}

fn plan_on(lab: &Lab, node: usize, archive: &str) -> (String, serde_json::Value) {
    let run = restore(lab, node, &["plan", "--from", archive], &[]);
    run.code(0);
    let j = run.json();
    (j["token"].as_str().unwrap().to_string(), j)
}

/// The cluster id node `node`'s member answers with (hex, as etcd prints it).
fn cluster_id(lab: &Lab, node: usize) -> String {
    let out = lab.etcdctl_node(node, &["endpoint", "status", "-w", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    format!(
        "{:x}",
        v[0]["Status"]["header"]["cluster_id"].as_u64().unwrap()
    )
}

fn restore(lab: &Lab, node: usize, words: &[&str], extra: &[(&str, &str)]) -> Run {
    let t = tool(lab.version).display().to_string();
    let mut args = vec!["-o", "json", "restore"];
    args.extend_from_slice(words);
    if words.first() == Some(&"apply") {
        args.extend_from_slice(&["--yes", "--etcdutl", &t]);
    }
    lab.etcdops(node, &args, extra)
}

/// Run `f(node)` for every node at once (each restore waits for the others' quorum).
fn on_every_node(lab: &Lab, f: impl Fn(usize) -> Run + Sync) -> Vec<Run> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (1..=lab.nodes).map(|n| s.spawn(move || f(n))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn member_id(lab: &Lab, node: usize) -> String {
    let out = lab.etcdctl_node(node, &["endpoint", "status", "-w", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["Status"]["header"]["member_id"].to_string()
}

/// A shell script run where node `node`'s disks are mounted (inside the node's mount
/// namespace on a systemd lab with disks; the host otherwise): the host sees only the empty
/// mount point.
fn node_sh(lab: &Lab, node: usize, script: &str) -> std::process::Output {
    let env = lab.env(node);
    let exec = env
        .iter()
        .find(|(k, _)| k == "ETCDOPS_LAB_NODE_EXEC")
        .map(|(_, v)| v.clone());
    let mut words: Vec<String> = exec
        .map(|e| e.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    words.extend(["sh".to_string(), "-c".to_string(), script.to_string()]);
    std::process::Command::new(&words[0])
        .args(&words[1..])
        .output()
        .expect("run a shell in the node")
}

fn node_test(lab: &Lab, node: usize, test: &str, path: &Path) -> bool {
    node_sh(lab, node, &format!("test {test} '{}'", path.display()))
        .status
        .success()
}

/// Whether node `node`'s data dir is a mount point (its own disk).
fn mounted(lab: &Lab, node: usize) -> bool {
    node_sh(
        lab,
        node,
        &format!("mountpoint -q '{}'", lab.data_dir(node).display()),
    )
    .status
    .success()
}

/// The old `member` dir a run kept aside: inside the data dir when it is a mount point,
/// else in the data dir moved aside.
fn old_member(lab: &Lab, node: usize, id: &str) -> PathBuf {
    let data = lab.data_dir(node);
    if mounted(lab, node) {
        data.join(format!("member.etcdops-old-{id}"))
    } else {
        PathBuf::from(format!("{}.etcdops-old-{id}", data.display())).join("member")
    }
}

/// The names in the data dir and beside it that a restore run may have made or left.
fn leftovers(lab: &Lab, node: usize) -> Vec<String> {
    let data = lab.data_dir(node);
    let out = node_sh(
        lab,
        node,
        &format!(
            "ls -A '{}'; ls -A '{}'",
            data.display(),
            data.parent().unwrap().display()
        ),
    );
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|n| n.contains("etcdops-") || n.contains(".restore-"))
        .map(str::to_string)
        .collect()
}

/// Remove what runs kept aside (the operator's cleanup after the verification window), so
/// that the next rounds of a test fit on the lab's small disks.
fn remove_old_data(lab: &Lab, node: usize) {
    let data = lab.data_dir(node);
    let out = node_sh(
        lab,
        node,
        &format!(
            "rm -rf '{d}'/member.etcdops-old-* '{d}'.etcdops-old-*",
            d = data.display()
        ),
    );
    assert!(out.status.success(), "{out:?}");
}

/// After a restore of every node: the backup's keys and only those, one HashKV, healthy,
/// each node's old data kept aside.
fn assert_restored(lab: &Lab, runs: &[Run]) {
    for n in 1..=lab.nodes {
        wait_for(
            &format!("node {n} to serve the backup's 10 keys"),
            Duration::from_secs(60),
            || lab.count_on(n, "/before/") == Some(10),
        );
        assert_eq!(lab.count_on(n, "/after/"), Some(0), "node {n}");
        let id = runs[n - 1].json()["id"].as_str().unwrap().to_string();
        let old = old_member(lab, n, &id);
        assert!(
            node_test(lab, n, "-f", &old.join("snap/db")),
            "node {n}: old data not kept at {}",
            old.display()
        );
        let left: Vec<String> = leftovers(lab, n)
            .into_iter()
            .filter(|name| !name.contains("etcdops-old-"))
            .collect();
        assert!(left.is_empty(), "node {n}: {left:?}");
        restore(lab, n, &["status"], &[]).code(0);
    }
    let h = lab.hashes();
    assert_eq!(h.len(), lab.nodes);
    assert!(h.windows(2).all(|w| w[0] == w[1]), "{h:?}");
    lab.etcdops(1, &["health", "--cluster"], &[]).code(0);
}

fn restore_every_node(v: Version, disk: &str) {
    let lab = Lab::up_systemd(v, 3, disk);
    assert!(
        mounted(&lab, 1),
        "the {disk} data dir should be a mount point"
    );
    put(&lab, "/before/", 10);
    let archive = backup(&lab);
    put(&lab, "/after/", 5);
    let (token, _) = plan_attempt(&lab, &archive);
    let runs = on_every_node(&lab, |n| {
        restore(
            &lab,
            n,
            &["apply", "--from", &archive, "--token", &token],
            &[],
        )
    });
    for r in &runs {
        r.code(0);
        assert_eq!(r.json()["state"], "completed", "{}", r.dump());
    }
    assert_restored(&lab, &runs);
}

#[test]
fn restore_every_node_3_6_systemd_ext4() {
    restore_every_node(Version::V36, "ext4");
}

#[test]
fn restore_every_node_3_5_systemd_xfs() {
    restore_every_node(Version::V35, "xfs");
}

#[test]
fn restore_every_node_3_7_systemd_ext4() {
    restore_every_node(Version::V37, "ext4");
}

/// Node 3 is back on its old data in its old cluster: the keys written after the backup,
/// its old member id, the manifest byte for byte, nothing of the run left in or beside the
/// data dir, the cluster healthy.
fn assert_back_on_old_data(lab: &Lab, old_member_id: &str, manifest: &[u8], what: &str) {
    wait_for(
        &format!("node 3 to serve the keys written after the backup again ({what})"),
        Duration::from_secs(90),
        || lab.count_on(3, "/after/") == Some(5),
    );
    assert_eq!(member_id(lab, 3), old_member_id, "{what}");
    assert_eq!(std::fs::read(lab.manifest(3)).unwrap(), manifest, "{what}");
    assert_eq!(leftovers(lab, 3), Vec::<String>::new(), "{what}");
    assert!(
        node_test(lab, 3, "-f", &lab.data_dir(3).join("member/snap/db")),
        "{what}"
    );
    lab.etcdops(1, &["health", "--cluster"], &[]).code(0);
}

/// Stop etcd on node `node` as an operator fences a peer: its manifest out of the manifests
/// dir (to a dotfile kubelet ignores), until its client port refuses.
fn fence(lab: &Lab, node: usize) {
    let m = lab.manifest(node);
    std::fs::rename(&m, m.with_file_name(".etcd.yaml.fenced")).unwrap();
    wait_for(
        &format!("node {node}'s etcd to stop"),
        Duration::from_secs(60),
        || {
            std::net::TcpStream::connect(lab.client_url(node).trim_start_matches("https://"))
                .is_err()
        },
    );
}

fn unfence(lab: &Lab, node: usize) {
    let m = lab.manifest(node);
    std::fs::rename(m.with_file_name(".etcd.yaml.fenced"), &m).unwrap();
}

/// Node 3 is back on its old data (nodes 1 and 2 fenced, so it cannot serve): its run
/// rolled back, the manifest byte for byte, nothing of the run left in or beside the data
/// dir, its old member's db in place.
fn assert_rolled_back_alone(lab: &Lab, manifest: &[u8], what: &str) {
    assert_eq!(std::fs::read(lab.manifest(3)).unwrap(), manifest, "{what}");
    assert_eq!(leftovers(lab, 3), Vec::<String>::new(), "{what}");
    assert!(
        node_test(lab, 3, "-f", &lab.data_dir(3).join("member/snap/db")),
        "{what}"
    );
}

/// One node restored alone (its data dir its own ext4 disk). While the old cluster runs on
/// the other two, its peers are not fenced: the run waits at fence-peers, fails naming a
/// peer URL that answers as the archive's cluster, and rolls back — the node back in its
/// old, healthy cluster. With the other two fenced (etcd stopped there), it restores, waits
/// for quorum, ends exit 5 with the message, and `rollback` returns it to its old data.
/// Then `kill -9` right after each step's first record and after its last, and `rollback`
/// converges every time: alone, the restored member never gets a quorum, so the raft rule
/// allows going back from every step. Every attempt has a token of its own.
#[test]
fn restore_one_node_waits_then_rollback_and_kill_9_at_every_step_then_rollback_converges() {
    let lab = Lab::up_systemd(Version::V36, 3, "ext4");
    assert!(mounted(&lab, 3));
    put(&lab, "/before/", 10);
    let archive = backup(&lab);
    put(&lab, "/after/", 5);
    let old_member_id = member_id(&lab, 3);
    let old_cluster = cluster_id(&lab, 3);
    let manifest = std::fs::read(lab.manifest(3)).unwrap();

    // The old cluster still runs on nodes 1 and 2: not fenced, so nothing starts.
    let (token, _) = plan_on(&lab, 3, &archive);
    let run = restore(
        &lab,
        3,
        &[
            "apply",
            "--from",
            &archive,
            "--token",
            &token,
            "--fence-timeout",
            "10s",
        ],
        &[],
    );
    run.code(1);
    assert_eq!(run.json()["state"], "rolled-back", "{}", run.dump());
    run.one_line_error(&format!(
        "cluster {old_cluster} (the cluster the archive was taken from)"
    ));
    assert!(run.stderr.contains(":2380 still answers"), "{}", run.dump());
    assert_back_on_old_data(&lab, &old_member_id, &manifest, "after the fence refused");

    fence(&lab, 1);
    fence(&lab, 2);
    // Quorum cannot come: the other two nodes are not restored. The bound says how long the
    // run waits for that, not a guess at how long something takes.
    let (token, _) = plan_on(&lab, 3, &archive);
    let run = restore(
        &lab,
        3,
        &[
            "apply",
            "--from",
            &archive,
            "--token",
            &token,
            "--quorum-timeout",
            "15s",
        ],
        &[],
    );
    run.code(5);
    assert!(
        run.stderr
            .contains("waiting for 1 more member to be restored (quorum is 2 of 3)"),
        "{}",
        run.dump()
    );
    assert!(
        run.stderr.contains(&format!("--token {token}")),
        "{}",
        run.dump()
    );
    assert_eq!(run.json()["state"], "failed", "{}", run.dump());
    let id = run.json()["id"].as_str().unwrap().to_string();
    assert!(node_test(&lab, 3, "-d", &old_member(&lab, 3, &id)));
    // A new run is refused while this one is unfinished.
    let (other, _) = plan_on(&lab, 3, &archive);
    restore(
        &lab,
        3,
        &["apply", "--from", &archive, "--token", &other],
        &[],
    )
    .code(4);
    let rb = restore(&lab, 3, &["rollback"], &[]);
    rb.code(0);
    assert_eq!(rb.json()["state"], "rolled-back", "{}", rb.dump());
    assert_rolled_back_alone(&lab, &manifest, "after the wait");
    // That attempt's token is spent, rolled back or not.
    restore(
        &lab,
        3,
        &["apply", "--from", &archive, "--token", &token],
        &[],
    )
    .code(2);

    // Right after each step's first record (its effect not known to have happened) and
    // after its last (done); alone, wait-quorum never gets to done.
    let points = RestoreStep::ALL.iter().flat_map(|s| {
        let done = (*s != RestoreStep::WaitQuorum).then(|| format!("{}:done", s.name()));
        std::iter::once(format!("{}:begin", s.name())).chain(done)
    });
    for point in points {
        let (token, _) = plan_on(&lab, 3, &archive);
        let killed = restore(
            &lab,
            3,
            &[
                "apply",
                "--from",
                &archive,
                "--token",
                &token,
                "--quorum-timeout",
                "15s",
            ],
            &[("ETCDOPS_TEST_KILL_AFTER", &point)],
        );
        assert_eq!(
            killed.code,
            -1,
            "{point}: expected SIGKILL\n{}",
            killed.dump()
        );
        restore(&lab, 3, &["status"], &[]).code(5);
        let rb = restore(&lab, 3, &["rollback"], &[]);
        rb.code(0);
        assert_eq!(rb.json()["state"], "rolled-back", "{point}: {}", rb.dump());
        assert_rolled_back_alone(&lab, &manifest, &point);
    }
    unfence(&lab, 1);
    unfence(&lab, 2);
    assert_back_on_old_data(&lab, &old_member_id, &manifest, "after every kill point");
}

/// `kill -9` right after each step's first and last record, on every node (three points
/// per round, one per node), then `resume` on every node converges to the restored
/// cluster. Each round restores the cluster again from the same archive.
#[test]
fn restore_kill_9_at_every_step_then_resume_converges() {
    let lab = Lab::up_systemd(Version::V36, 3, "ext4");
    put(&lab, "/before/", 10);
    let archive = backup(&lab);
    put(&lab, "/after/", 5);
    // Every step's first and last record but wait-quorum's last (then the run is over),
    // and stop-etcd's last again to fill the last round. Not a point before stop-etcd's
    // last: a node killed there leaves its old member running, and the other nodes'
    // fence-peers rightly waits for it (then fails) instead of starting theirs.
    let mut points: Vec<String> = RestoreStep::ALL
        .iter()
        .flat_map(|s| {
            let done = (*s != RestoreStep::WaitQuorum).then(|| format!("{}:done", s.name()));
            std::iter::once(format!("{}:begin", s.name())).chain(done)
        })
        .collect();
    assert_eq!(points.len(), 17);
    points.push("stop-etcd:done".to_string());
    for round in points.chunks(3) {
        // Each round is a restore attempt of its own: a fresh token.
        let (token, _) = plan_attempt(&lab, &archive);
        let killed = on_every_node(&lab, |n| {
            restore(
                &lab,
                n,
                &["apply", "--from", &archive, "--token", &token],
                &[("ETCDOPS_TEST_KILL_AFTER", &round[n - 1])],
            )
        });
        for (n, r) in killed.iter().enumerate() {
            assert_eq!(r.code, -1, "{} should be killed: {}", round[n], r.dump());
            restore(&lab, n + 1, &["status"], &[]).code(5);
        }
        let runs = on_every_node(&lab, |n| restore(&lab, n, &["resume"], &[]));
        for r in &runs {
            r.code(0);
            assert_eq!(r.json()["state"], "completed", "{round:?}: {}", r.dump());
        }
        assert_restored(&lab, &runs);
        for n in 1..=lab.nodes {
            remove_old_data(&lab, n);
        }
    }
}

fn snapshot_of(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    if path.exists() {
        tree_bytes(path)
    } else {
        Vec::new()
    }
}

/// Every bad input of `restore plan|apply|resume|rollback`: its exit code, one line naming
/// the thing, and nothing changed — the manifest, the state dir and the data dir's parent
/// byte for byte, the member the same.
#[test]
fn restore_bad_inputs_are_refused_and_change_nothing() {
    let lab = Lab::up(Version::V36, 1);
    put(&lab, "/before/", 3);
    let archive = backup(&lab);
    let bad_dir = lab.path().join("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let flipped = bad_dir.join("flipped.tar.zst");
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&flipped, &bytes).unwrap();
    let garbage = bad_dir.join("garbage.db");
    std::fs::write(&garbage, b"not a snapshot at all").unwrap();
    let missing = bad_dir.join("missing.tar.zst");
    // A real snapshot with one byte flipped: its sha256 trailer fails.
    let snap = bad_dir.join("bad-trailer.db");
    lab.etcdops(1, &["snapshot", "save", snap.to_str().unwrap()], &[])
        .code(0);
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&snap, &bytes).unwrap();
    // This node under another name: the archive's member list lacks it.
    let other_dir = bad_dir.join("manifests");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = other_dir.join("etcd.yaml");
    let text = std::fs::read_to_string(lab.manifest(1)).unwrap();
    std::fs::write(&other, text.replace("--name=node1", "--name=node9")).unwrap();
    // Issue 21, hole 2: a bare snapshot's member list is the manifest's --initial-cluster; one
    // that etcd's restore code refuses (a peer URL with a path) used to pass the plan, and
    // the restore step found out after etcd was stopped. A good snapshot, and this node's
    // manifest (outside the manifests dir) with such a member added.
    let good = bad_dir.join("good.db");
    lab.etcdops(1, &["snapshot", "save", good.to_str().unwrap()], &[])
        .code(0);
    let path_url_dir = bad_dir.join("path-url");
    std::fs::create_dir_all(&path_url_dir).unwrap();
    let path_url = path_url_dir.join("etcd.yaml");
    let with_path: String = text
        .lines()
        .map(|l| {
            if l.contains("- --initial-cluster=") {
                format!("{l},node9=https://127.0.0.1:2390/etcd\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(with_path, text);
    std::fs::write(&path_url, &with_path).unwrap();
    let f = |p: &Path| p.display().to_string();
    let (fl, ga, mi, sn, ot) = (f(&flipped), f(&garbage), f(&missing), f(&snap), f(&other));
    let (go, pu) = (f(&good), f(&path_url));
    let t = f(&tool(Version::V36));
    let not_exec = f(&garbage);
    let no_path: &[(&str, &str)] = &[("PATH", "/nonexistent-bin")];
    let etcdctl36 = f(&Version::V36.etcdctl());
    // A PATH whose only restore tool candidate is etcdctl 3.6.
    let bin36 = bad_dir.join("bin36");
    std::fs::create_dir_all(&bin36).unwrap();
    std::os::unix::fs::symlink(Version::V36.etcdctl(), bin36.join("etcdctl")).unwrap();
    let path36 = f(&bin36);
    let only_etcdctl36: &[(&str, &str)] = &[("PATH", &path36)];
    let apply = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["-o", "json", "restore", "apply", "--yes"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    type Case<'a> = (Vec<String>, &'a [(&'a str, &'a str)], i32, &'a str);
    let cases: Vec<Case> = vec![
        (
            apply(&["--from", &mi, "--etcdutl", &t]),
            &[],
            2,
            "missing.tar.zst",
        ),
        (
            apply(&["--from", &fl, "--etcdutl", &t]),
            &[],
            4,
            "flipped.tar.zst",
        ),
        (
            apply(&["--from", &ga, "--etcdutl", &t]),
            &[],
            4,
            "garbage.db",
        ),
        (
            apply(&["--from", &sn, "--etcdutl", &t]),
            &[],
            4,
            "sha256 trailer",
        ),
        (
            apply(&["--from", &archive, "--etcdutl", &t, "--manifest", &ot]),
            &[],
            4,
            "does not contain this node's --name node9",
        ),
        (
            apply(&["--from", &go, "--etcdutl", &t, "--manifest", &pu]),
            &[],
            2,
            "must not contain a path",
        ),
        (
            apply(&["--from", &archive]),
            no_path,
            4,
            "/nonexistent-bin/etcdutl",
        ),
        (
            apply(&["--from", &archive, "--etcdutl", &not_exec]),
            &[],
            2,
            "not an executable",
        ),
        // etcdctl 3.6 has no `snapshot restore` (it answers with help and exit 0).
        (
            apply(&["--from", &archive, "--etcdutl", &etcdctl36]),
            &[],
            2,
            "this etcdctl has no `snapshot restore`",
        ),
        (
            apply(&["--from", &archive]),
            only_etcdctl36,
            4,
            "etcdctl (etcd 3.6+: no snapshot restore)",
        ),
        (
            apply(&[
                "--from",
                &archive,
                "--etcdutl",
                &t,
                "--bump-revision",
                "1000",
            ]),
            &[],
            2,
            "--bump-revision needs --mark-compacted",
        ),
        (
            apply(&["--from", &archive, "--etcdutl", &t, "--mark-compacted"]),
            &[],
            2,
            "--mark-compacted needs --bump-revision",
        ),
        (
            apply(&[
                "--from",
                &archive,
                "--etcdutl",
                &t,
                "--quorum-timeout",
                "soon",
            ]),
            &[],
            2,
            "soon",
        ),
        (
            apply(&["--from", &archive, "--etcdutl", &t, "--token", "a b"]),
            &[],
            2,
            "--token \"a b\"",
        ),
        (
            ["-o", "json", "restore", "resume"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            &[],
            2,
            "no run",
        ),
        (
            ["-o", "json", "restore", "rollback"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            &[],
            2,
            "no run",
        ),
    ];
    let manifest = std::fs::read(lab.manifest(1)).unwrap();
    let parent = lab.data_dir(1).parent().unwrap().to_path_buf();
    let names = || {
        let mut v: Vec<String> = std::fs::read_dir(&parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before_member = member_id(&lab, 1);
    let check = |args: &[String], env: &[(&str, &str)], code: i32, needle: &str| {
        let state = snapshot_of(&lab.state_dir(1));
        let before_names = names();
        let words: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = lab.etcdops(1, &words, env);
        run.code(code);
        assert!(run.stderr.contains(needle), "{needle:?}\n{}", run.dump());
        // clap's own usage errors carry a hint line; ours are one line.
        if !run.stderr.starts_with("error:") {
            run.one_line_error(needle);
        }
        assert_eq!(
            std::fs::read(lab.manifest(1)).unwrap(),
            manifest,
            "{words:?}"
        );
        assert_eq!(snapshot_of(&lab.state_dir(1)), state, "{words:?}");
        assert_eq!(names(), before_names, "{words:?}");
    };
    for (args, env, code, needle) in &cases {
        check(args, env, *code, needle);
    }
    // A run left unfinished in the state dir (killed before it changed the node) refuses
    // a new one, naming it.
    let killed = lab.etcdops(
        1,
        &[
            "restore",
            "apply",
            "--yes",
            "--etcdutl",
            &t,
            "--from",
            &archive,
        ],
        &[("ETCDOPS_TEST_KILL_AFTER", "preflight:begin")],
    );
    assert_eq!(killed.code, -1, "{}", killed.dump());
    check(
        &apply(&["--from", &archive, "--etcdutl", &t]),
        &[],
        4,
        "unfinished",
    );
    assert_eq!(member_id(&lab, 1), before_member);
    assert_eq!(cases.len() + 1, 17);
}

/// The restore cross-talk of issue 21, on a plain 3-node lab. Before, the token came from the
/// archive id, so a second restore of one archive gave byte-identical member and cluster ids
/// and a member left from the first attempt passed etcd's only peer check (the cluster-ID
/// header) and crashed the restored one. Now: every `restore plan` prints a fresh token
/// whose ids etcd really derives; a token this node used is refused (exit 2, nothing
/// changed); a second attempt while a member of the first still runs is stopped before its
/// restored members start — each node's fence-peers names the stale peer's URL and the run
/// rolls back (exit 1), manifest byte for byte, nothing left over, the first attempt's
/// cluster healthy again; with every node in it, the second attempt completes as a
/// cluster with other ids.
fn restore_twice_from_one_archive(v: Version) {
    let lab = Lab::up(v, 3);
    put(&lab, "/before/", 10);
    let archive = backup(&lab);
    put(&lab, "/after/", 5);
    let old_cluster = cluster_id(&lab, 1);

    // Attempt 1, every node with one token.
    let (t1, p1) = plan_attempt(&lab, &archive);
    let (t1b, p1b) = plan_attempt(&lab, &archive);
    assert_ne!(t1, t1b, "two plans of one archive must not share a token");
    assert_ne!(p1["restored_cluster_id"], p1b["restored_cluster_id"]);
    assert_eq!(p1["old_cluster_id"].as_str(), Some(old_cluster.as_str()));
    assert!(
        p1["apply"]
            .as_str()
            .unwrap()
            .contains(&format!("--token {t1}")),
        "{p1}"
    );
    let runs = on_every_node(&lab, |n| {
        restore(&lab, n, &["apply", "--from", &archive, "--token", &t1], &[])
    });
    for r in &runs {
        r.code(0);
    }
    assert_restored(&lab, &runs);
    let c1 = cluster_id(&lab, 1);
    // The ids the plan announced are the ones etcd derived from the token.
    assert_eq!(p1["restored_cluster_id"].as_str(), Some(c1.as_str()));
    assert_ne!(c1, old_cluster);

    // The same token again on a node that used it: refused, nothing changed.
    let manifests: Vec<Vec<u8>> = (1..=3)
        .map(|n| std::fs::read(lab.manifest(n)).unwrap())
        .collect();
    let state = tree_bytes(&lab.state_dir(1));
    let reused = restore(&lab, 1, &["apply", "--from", &archive, "--token", &t1], &[]);
    reused.code(2);
    reused.one_line_error("was used by restore run");
    assert!(reused.stderr.contains(&t1), "{}", reused.dump());
    assert_eq!(tree_bytes(&lab.state_dir(1)), state);
    assert_eq!(std::fs::read(lab.manifest(1)).unwrap(), manifests[0]);
    // Several members and no token: refused, naming the flag and `restore plan`.
    let none = restore(&lab, 1, &["apply", "--from", &archive], &[]);
    none.code(2);
    none.one_line_error("--token is required");
    assert!(none.stderr.contains("restore plan"), "{}", none.dump());
    assert_eq!(tree_bytes(&lab.state_dir(1)), state);

    // Attempt 2 on nodes 1 and 2 while node 3 still runs attempt 1's member: each fence
    // sees node 3's peer URL answer as cluster c1, waits, fails, and the run rolls back.
    let (t2, p2) = plan_attempt(&lab, &archive);
    let c2 = p2["restored_cluster_id"].as_str().unwrap().to_string();
    assert_ne!(c2, c1);
    let stale_peer = p2["initial_cluster"]
        .as_str()
        .unwrap()
        .split(',')
        .find_map(|m| m.strip_prefix("node3="))
        .unwrap()
        .to_string();
    let ids_before: Vec<String> = (1..=3).map(|n| member_id(&lab, n)).collect();
    let left_before: Vec<Vec<String>> = (1..=3).map(|n| leftovers(&lab, n)).collect();
    let blocked = std::thread::scope(|s| {
        let h: Vec<_> = [1, 2]
            .map(|n| {
                let (lab, archive, t2) = (&lab, &archive, &t2);
                s.spawn(move || {
                    restore(
                        lab,
                        n,
                        &[
                            "apply",
                            "--from",
                            archive,
                            "--token",
                            t2,
                            "--fence-timeout",
                            "15s",
                        ],
                        &[],
                    )
                })
            })
            .into_iter()
            .collect();
        h.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<Run>>()
    });
    for (i, r) in blocked.iter().enumerate() {
        let n = i + 1;
        eprintln!("node {n}: {}", r.stderr.trim());
        r.code(1);
        assert_eq!(r.json()["state"], "rolled-back", "{}", r.dump());
        r.one_line_error(&stale_peer);
        assert!(r.stderr.contains(&format!("cluster {c1}")), "{}", r.dump());
        assert!(r.stderr.contains("fence"), "{}", r.dump());
        let steps = r.json()["steps"].to_string();
        assert!(steps.contains("fence-peers"), "{steps}");
        assert_eq!(
            std::fs::read(lab.manifest(n)).unwrap(),
            manifests[i],
            "node {n}"
        );
        assert_eq!(leftovers(&lab, n), left_before[i], "node {n}");
    }
    for n in 1..=3 {
        wait_for(
            &format!("node {n} to serve attempt 1's keys again"),
            Duration::from_secs(90),
            || lab.count_on(n, "/before/") == Some(10),
        );
        assert_eq!(cluster_id(&lab, n), c1, "node {n}");
        assert_eq!(member_id(&lab, n), ids_before[n - 1], "node {n}");
    }
    lab.etcdops(1, &["health", "--cluster"], &[]).code(0);

    // Attempt 2 again, every node in it this time (the token of a rolled-back attempt is
    // spent too): a cluster with ids of its own.
    let (t3, p3) = plan_attempt(&lab, &archive);
    let runs = on_every_node(&lab, |n| {
        restore(&lab, n, &["apply", "--from", &archive, "--token", &t3], &[])
    });
    for r in &runs {
        r.code(0);
    }
    let c3 = cluster_id(&lab, 1);
    assert_eq!(p3["restored_cluster_id"].as_str(), Some(c3.as_str()));
    assert_ne!(c3, c1);
    for n in 1..=3 {
        assert_ne!(member_id(&lab, n), ids_before[n - 1], "node {n}");
        assert_eq!(lab.count_on(n, "/before/"), Some(10));
        assert_eq!(lab.count_on(n, "/after/"), Some(0));
    }
    lab.etcdops(1, &["health", "--cluster"], &[]).code(0);
}

#[test]
fn restore_twice_from_one_archive_3_5() {
    restore_twice_from_one_archive(Version::V35);
}

#[test]
fn restore_twice_from_one_archive_3_6() {
    restore_twice_from_one_archive(Version::V36);
}

#[test]
fn restore_twice_from_one_archive_3_7() {
    restore_twice_from_one_archive(Version::V37);
}

/// The revision node 1 reports (`health -o json`).
fn revision(lab: &Lab) -> i64 {
    let run = lab.etcdops(1, &["-o", "json", "health"], &[]);
    run.code(0);
    run.json()["endpoints"][0]["revision"].as_i64().unwrap()
}

/// `--bump-revision N --mark-compacted` for real on etcd 3.6 (etcdutl 3.6.17): the restored
/// member's revision is the snapshot's plus N, and a read at a revision a client saw
/// before the restore fails "required revision has been compacted" (so informers re-list
/// instead of missing changes); the backup's keys are all there.
fn restore_bumps_revision_and_marks_compacted(v: Version) {
    let lab = Lab::up(v, 1);
    put(&lab, "/before/", 10);
    let archive = backup(&lab);
    let at_backup = revision(&lab);
    put(&lab, "/after/", 5);
    let seen = revision(&lab);
    assert_eq!(seen, at_backup + 5);
    let run = restore(
        &lab,
        1,
        &[
            "apply",
            "--from",
            &archive,
            "--bump-revision",
            "1000000",
            "--mark-compacted",
        ],
        &[],
    );
    run.code(0);
    assert_eq!(run.json()["state"], "completed", "{}", run.dump());
    wait_for(
        "node 1 to serve the backup's 10 keys",
        Duration::from_secs(60),
        || lab.count_on(1, "/before/") == Some(10),
    );
    assert_eq!(lab.count_on(1, "/after/"), Some(0));
    let now = revision(&lab);
    assert!(
        now >= at_backup + 1_000_000,
        "revision {now} after a restore of revision {at_backup} with --bump-revision 1000000"
    );
    for rev in [seen, at_backup, 2] {
        let out = lab.etcdctl(&["get", "/before/", "--prefix", &format!("--rev={rev}")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("required revision has been compacted"),
            "get at revision {rev} after the restore: {out:?}"
        );
    }
    // The bumped revision itself is readable: compaction is at it, not beyond.
    let out = lab.etcdctl(&["get", "/before/0", &format!("--rev={now}")]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn restore_bumps_revision_and_marks_compacted_3_6() {
    restore_bumps_revision_and_marks_compacted(Version::V36);
}

#[test]
fn restore_bumps_revision_and_marks_compacted_3_7() {
    restore_bumps_revision_and_marks_compacted(Version::V37);
}

/// Never an older etcd on newer data: with the manifest's image set to 3.5 over a 3.6
/// member's data (storage version 3.6.0), `migrate plan` and `restore plan` refuse (exit 4)
/// naming both versions, and change nothing.
#[test]
fn older_image_on_newer_data_is_refused_by_migrate_and_restore_3_6() {
    let lab = Lab::up(Version::V36, 1);
    put(&lab, "/before/", 3);
    // 3.6 moves the storage version from 3.5.0 to 3.6.0 shortly after it starts.
    wait_for(
        "node 1 to report storage version 3.6.0",
        Duration::from_secs(30),
        || {
            let out = lab.etcdctl(&["endpoint", "status", "-w", "json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|d| d[0]["Status"]["storageVersion"] == "3.6.0")
        },
    );
    let archive = backup(&lab);
    let text = std::fs::read_to_string(lab.manifest(1)).unwrap();
    let older = text.replace(&Version::V36.image(), &Version::V35.image());
    assert_ne!(
        older,
        text,
        "the lab's image tag is {}",
        Version::V36.image()
    );
    // A copy outside the manifests dir: kubelet keeps running the real one.
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("etcd.yaml");
    std::fs::write(&copy, &older).unwrap();
    let copy = copy.display().to_string();
    let to = lab.path().join("new-disk").display().to_string();
    let t = tool(Version::V36).display().to_string();
    let before = std::fs::read(lab.manifest(1)).unwrap();
    let member = member_id(&lab, 1);
    for (args, needle) in [
        (
            vec![
                "--manifest",
                &copy,
                "migrate",
                "plan",
                "--same-filesystem",
                "--to",
                &to,
            ],
            "older than the data dir's storage version 3.6.0",
        ),
        (
            vec![
                "--manifest",
                &copy,
                "restore",
                "plan",
                "--from",
                &archive,
                "--etcdutl",
                &t,
            ],
            "the archive was taken from etcd 3.6.17",
        ),
    ] {
        let run = lab.etcdops(1, &args, &[]);
        run.code(4);
        assert!(
            run.stderr.contains(needle) && run.stderr.contains("3.5.36"),
            "{}",
            run.dump()
        );
    }
    assert_eq!(std::fs::read(lab.manifest(1)).unwrap(), before);
    assert!(!Path::new(&to).exists());
    assert_eq!(member_id(&lab, 1), member);
}
