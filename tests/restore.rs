//! `restore apply|status|resume|rollback` on the lab (real etcd, real TLS, real files, the
//! lab's kubelet stand-in): a backup restored on every node brings back exactly the keys of
//! the backup, one cluster with agreeing HashKV, the old data kept aside; a restore of one
//! node alone waits for quorum, ends exit 5 saying how many members it waits for, and
//! `rollback` returns that node to its old data and its old, healthy cluster; `kill -9` at a
//! step then `resume` converges; bad inputs are refused with nothing changed.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::lab::Lab;
use common::{Run, Version, tree_bytes, wait_for};

fn tool(v: Version) -> PathBuf {
    match v {
        Version::V34 => v.etcdctl(),
        Version::V35 => v.etcdutl(),
    }
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

/// HashKV of every member at its current revision: one value, one revision.
fn hashes(lab: &Lab) -> Vec<(String, String)> {
    let out = lab.etcdctl(&["endpoint", "hashkv", "-w", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["HashKV"]["hash"].to_string(),
                e["HashKV"]["header"]["revision"].to_string(),
            )
        })
        .collect()
}

fn aside(lab: &Lab, node: usize, id: &str) -> PathBuf {
    PathBuf::from(format!("{}.etcdops-old-{id}", lab.data_dir(node).display()))
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
        let old = aside(lab, n, &id);
        assert!(old.join("member/snap/db").is_file(), "{}", old.display());
        let restore_dirs: Vec<String> = std::fs::read_dir(lab.data_dir(n).parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".restore-"))
            .collect();
        assert!(restore_dirs.is_empty(), "node {n}: {restore_dirs:?}");
        restore(lab, n, &["status"], &[]).code(0);
    }
    let h = hashes(lab);
    assert_eq!(h.len(), lab.nodes);
    assert!(h.windows(2).all(|w| w[0] == w[1]), "{h:?}");
    lab.etcdops(1, &["health", "--cluster"], &[]).code(0);
}

fn restore_every_node(v: Version) {
    let lab = Lab::up(v, 3);
    put(&lab, "/before/", 10);
    let archive = backup(&lab);
    put(&lab, "/after/", 5);
    let runs = on_every_node(&lab, |n| {
        restore(&lab, n, &["apply", "--from", &archive], &[])
    });
    for r in &runs {
        r.code(0);
        assert_eq!(r.json()["state"], "completed", "{}", r.dump());
    }
    assert_restored(&lab, &runs);
}

#[test]
fn restore_every_node_35() {
    restore_every_node(Version::V35);
}

#[test]
fn restore_every_node_34() {
    restore_every_node(Version::V34);
}

#[test]
fn restore_one_node_waits_then_rollback_returns_it_to_the_old_cluster() {
    let lab = Lab::up(Version::V35, 3);
    put(&lab, "/before/", 10);
    let archive = backup(&lab);
    put(&lab, "/after/", 5);
    let old_member = member_id(&lab, 3);
    // Quorum cannot come: the other two nodes are not restored. The bound says how long the
    // run waits for that, not a guess at how long something takes.
    let run = restore(
        &lab,
        3,
        &["apply", "--from", &archive, "--quorum-timeout", "15s"],
        &[],
    );
    run.code(5);
    assert!(
        run.stderr
            .contains("waiting for 1 more member to be restored (quorum is 2 of 3)"),
        "{}",
        run.dump()
    );
    assert_eq!(run.json()["state"], "failed", "{}", run.dump());
    let id = run.json()["id"].as_str().unwrap().to_string();
    assert!(aside(&lab, 3, &id).join("member").is_dir());
    // A new run is refused while this one is unfinished.
    restore(&lab, 3, &["apply", "--from", &archive], &[]).code(4);

    let rb = restore(&lab, 3, &["rollback"], &[]);
    rb.code(0);
    assert_eq!(rb.json()["state"], "rolled-back", "{}", rb.dump());
    assert!(!aside(&lab, 3, &id).exists());
    wait_for(
        "node 3 to serve the keys written after the backup again",
        Duration::from_secs(60),
        || lab.count_on(3, "/after/") == Some(5),
    );
    assert_eq!(member_id(&lab, 3), old_member);
    lab.etcdops(1, &["health", "--cluster"], &[]).code(0);
    // The restore dir is gone: nothing of the run is left but its journal.
    let parent = lab.data_dir(3).parent().unwrap().to_path_buf();
    let left: Vec<String> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("etcd."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn restore_kill_9_at_steps_then_resume_converges() {
    let lab = Lab::up(Version::V35, 3);
    put(&lab, "/before/", 10);
    let archive = backup(&lab);
    put(&lab, "/after/", 5);
    let points = ["restore:done", "swap:done", "start-kubelet:done"];
    let killed = on_every_node(&lab, |n| {
        restore(
            &lab,
            n,
            &["apply", "--from", &archive],
            &[("ETCDOPS_TEST_KILL_AFTER", points[n - 1])],
        )
    });
    for (n, r) in killed.iter().enumerate() {
        assert_eq!(r.code, -1, "node {} should be killed: {}", n + 1, r.dump());
        let st = restore(&lab, n + 1, &["status"], &[]);
        st.code(5);
    }
    let runs = on_every_node(&lab, |n| restore(&lab, n, &["resume"], &[]));
    for r in &runs {
        r.code(0);
        assert_eq!(r.json()["state"], "completed", "{}", r.dump());
    }
    assert_restored(&lab, &runs);
}

fn snapshot_of(path: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    if path.exists() {
        tree_bytes(path)
    } else {
        Vec::new()
    }
}

#[test]
fn restore_bad_inputs_are_refused_and_change_nothing() {
    let lab = Lab::up(Version::V35, 1);
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
    let f = |p: &Path| p.display().to_string();
    let (fl, ga, mi) = (f(&flipped), f(&garbage), f(&missing));
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["apply", "--from", &mi], 2, "missing.tar.zst"),
        (vec!["apply", "--from", &fl], 4, "flipped.tar.zst"),
        (vec!["apply", "--from", &ga], 4, "garbage.db"),
        (vec!["resume"], 2, "no run"),
        (vec!["rollback"], 2, "no run"),
    ];
    let manifest = std::fs::read(lab.manifest(1)).unwrap();
    let state = snapshot_of(&lab.state_dir(1));
    let parent = lab.data_dir(1).parent().unwrap().to_path_buf();
    let names = || {
        let mut v: Vec<String> = std::fs::read_dir(&parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before_names = names();
    let before_member = member_id(&lab, 1);
    for (words, code, needle) in cases {
        let run = restore(&lab, 1, &words, &[]);
        run.code(code);
        run.one_line_error(needle);
        assert_eq!(
            std::fs::read(lab.manifest(1)).unwrap(),
            manifest,
            "{words:?}"
        );
        assert_eq!(snapshot_of(&lab.state_dir(1)), state, "{words:?}");
        assert_eq!(names(), before_names, "{words:?}");
    }
    assert_eq!(member_id(&lab, 1), before_member);
}
