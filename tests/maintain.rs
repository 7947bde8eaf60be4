//! Maintenance against real 3-member TLS clusters of etcd 3.5 and 3.6: compaction, the
//! rolling defrag (dry run, rules, leader last, --move-leader, the health gate), snapshots
//! (accepted by etcd's own tools, corruption caught), alarms, and `maintain` clearing a
//! NOSPACE alarm built from history. One cluster serves many checks to keep the suite short.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use common::{Cluster, Run, Spec, Version, args, etcdops};
use serde_json::Value;

fn run(cluster: &Cluster, extra: &[&str]) -> Run {
    let mut a = cluster.client_args();
    a.extend(args(extra));
    etcdops(&a, &[], Some(cluster))
}

/// Write, overwrite and delete: once compacted, the history leaves free pages in every
/// member's db that only a defrag returns to the filesystem.
fn fragment(cluster: &Cluster, tag: &str) {
    let prefix = format!("frag-{tag}-");
    cluster.put_many(&prefix, 120, 32 * 1024);
    cluster.put_many(&prefix, 120, 32 * 1024);
    let p = prefix.clone();
    cluster
        .with_client(|mut c| async move {
            c.delete(p, Some(etcd_client::DeleteOptions::new().with_prefix()))
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        })
        .expect("delete the prefix");
}

/// member id -> db size once every member holds, in its db file, everything the leader has
/// committed (every running member: a test may have killed one). A single read right after writing is no baseline: followers apply a burst a
/// little after the leader, a compaction goes on in the background after its entry is
/// applied, and bbolt grows the file only when its batch commits (every 100 ms). So: wait
/// (bounded) until every member's applied index equals the leader's commit index; then on
/// each member wait for its compactions to finish — a physical Compact at the member's own
/// compacted revision is refused (compacted) only after the member's compaction queue has
/// drained, and it force-commits — and make it commit its batch (the maintenance Hash RPC
/// calls the backend's ForceCommit first, in 3.5 and 3.6); read the sizes after that.
fn db_sizes(cluster: &Cluster) -> BTreeMap<String, u64> {
    let mut last = String::new();
    // The endpoints of the members that answer status (a killed one does not).
    let mut answering: Vec<String> = Vec::new();
    let caught_up = common::try_wait_for(std::time::Duration::from_secs(30), || {
        let doc = run(cluster, &["health", "--cluster", "-o", "json"]).json();
        let eps: Vec<Value> = doc["endpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["raft_applied_index"].is_u64())
            .collect();
        last = serde_json::to_string(&eps).unwrap_or_default();
        answering = eps
            .iter()
            .map(|e| e["endpoint"].as_str().unwrap_or_default().to_string())
            .collect();
        let Some(committed) = eps
            .iter()
            .find(|e| e["is_leader"] == true)
            .and_then(|e| e["raft_index"].as_u64())
        else {
            return false;
        };
        eps.iter()
            .all(|e| e["raft_applied_index"].as_u64() == Some(committed))
    });
    assert!(
        caught_up,
        "gave up after 30 s waiting for every member's applied index to equal the leader's \
         commit index: {last}"
    );
    for (i, m) in cluster.members.iter().enumerate() {
        if !answering.contains(&m.client_url) {
            continue;
        }
        cluster
            .with_member_client(i, |mut c| async move {
                let compacted = c
                    .hash_kv(0)
                    .await
                    .map_err(|e| format!("HashKV: {e}"))?
                    .compact_version();
                if compacted > 0 {
                    let physical = etcd_client::CompactionOptions::new().with_physical();
                    match c.compact(compacted, Some(physical)).await {
                        Ok(_) => {}
                        // ErrCompacted is the answer: it comes after the queue drained.
                        Err(etcd_client::Error::GRpcStatus(st))
                            if st.code() == tonic::Code::OutOfRange => {}
                        Err(e) => return Err(format!("Compact({compacted}, physical): {e}")),
                    }
                }
                c.hash().await.map_err(|e| format!("Hash: {e}"))?;
                Ok(())
            })
            .unwrap_or_else(|e| panic!("settling member {i}'s db before reading sizes: {e}"));
    }
    read_sizes(cluster)
}

fn read_sizes(cluster: &Cluster) -> BTreeMap<String, u64> {
    let run = run(cluster, &["health", "--cluster", "-o", "json"]);
    let doc = run.json();
    doc["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["db_size"].is_u64())
        .map(|e| {
            (
                e["member_id"].as_str().unwrap().to_string(),
                e["db_size"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn leader(cluster: &Cluster) -> String {
    let run = run(cluster, &["health", "--cluster", "-o", "json"]);
    run.json()["cluster"]["leader"]
        .as_str()
        .unwrap_or_else(|| panic!("no leader\n{}", run.dump()))
        .to_string()
}

fn members(doc: &Value) -> &Vec<Value> {
    doc["members"].as_array().expect("members array")
}

fn actions(doc: &Value) -> Vec<String> {
    members(doc)
        .iter()
        .map(|m| m["action"].as_str().unwrap().to_string())
        .collect()
}

/// The leader comes last and is the only one flagged.
fn assert_leader_last(run: &Run) {
    let doc = run.json();
    let ms = members(&doc);
    assert_eq!(ms.len(), 3, "{}", run.dump());
    let flags: Vec<bool> = ms.iter().map(|m| m["is_leader"] == true).collect();
    assert_eq!(flags, [false, false, true], "{}", run.dump());
}

fn defrag_scenarios(version: Version) {
    let mut cluster = Cluster::start(Spec::new(version, 3).tls());
    cluster.put("early", "v1");
    cluster.put("early", "v2");
    fragment(&cluster, "a");
    let sizes0 = db_sizes(&cluster);
    assert_eq!(sizes0.len(), 3);

    // Dry run with --compact: a plan with verdicts, no compaction, no defrag.
    let r = run(
        &cluster,
        &[
            "defrag",
            "--cluster",
            "--compact",
            "--dry-run",
            "-o",
            "json",
        ],
    );
    r.code(0);
    let doc = r.json();
    assert_eq!(doc["dry_run"], true);
    assert_eq!(actions(&doc), ["would-defragment"; 3], "{}", r.dump());
    assert!(doc["compacted_to"].is_null(), "{}", r.dump());
    assert!(
        doc["would_compact_to"].as_i64().unwrap() > 200,
        "{}",
        r.dump()
    );
    assert_leader_last(&r);
    assert_eq!(db_sizes(&cluster), sizes0, "a dry run changed a db size");
    // Nothing was compacted: the first revision of `early` is still readable.
    let out = cluster.etcdctl(&["get", "early", "--rev=2", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v1", "{out:?}");

    // A rule that matches nobody skips everyone, and says why.
    let r = run(
        &cluster,
        &[
            "defrag",
            "--cluster",
            "--rule",
            "dbSizeFree < 0",
            "-o",
            "json",
        ],
    );
    r.code(0);
    let doc = r.json();
    assert_eq!(actions(&doc), ["skipped"; 3], "{}", r.dump());
    for m in members(&doc) {
        assert!(
            m["reason"].as_str().unwrap().contains("rule is false"),
            "{}",
            r.dump()
        );
    }
    assert_eq!(
        db_sizes(&cluster),
        sizes0,
        "a skipped defrag changed a db size"
    );

    // maintain's default rule wants 100 MiB free: nothing here qualifies, but it compacts.
    let r = run(&cluster, &["maintain", "-o", "json"]);
    r.code(0);
    let doc = r.json();
    assert_eq!(actions(&doc), ["skipped"; 3], "{}", r.dump());
    assert!(doc["compacted_to"].as_i64().unwrap() > 200, "{}", r.dump());
    assert_eq!(doc["healthy_after"], true);
    assert_eq!(db_sizes(&cluster), sizes0);

    // The real run: every member shrinks, followers first, the leader last.
    let r = run(
        &cluster,
        &["defrag", "--cluster", "--compact", "-o", "json"],
    );
    r.code(0);
    let doc = r.json();
    assert_eq!(doc["ok"], true);
    assert_eq!(actions(&doc), ["defragmented"; 3], "{}", r.dump());
    assert_leader_last(&r);
    assert!(doc["compacted_to"].is_i64(), "{}", r.dump());
    for m in members(&doc) {
        let (before, after) = (
            m["db_size_before"].as_u64().unwrap(),
            m["db_size_after"].as_u64().unwrap(),
        );
        assert!(
            after < before,
            "{} did not shrink\n{}",
            m["endpoint"],
            r.dump()
        );
    }
    let sizes1 = db_sizes(&cluster);
    for (id, before) in &sizes0 {
        assert!(
            sizes1[id] < *before,
            "member {id}: {} >= {before}",
            sizes1[id]
        );
    }
    // The table names every endpoint and the verdict.
    let r = run(&cluster, &["defrag", "--cluster"]);
    r.code(0);
    for ep in cluster.endpoints() {
        assert!(r.stdout.contains(&ep), "{}", r.dump());
    }
    assert!(r.stdout.contains("verdict: ok"), "{}", r.dump());

    // --move-leader: leadership goes to a defragmented follower before the old leader.
    fragment(&cluster, "b");
    let old = leader(&cluster);
    let r = run(
        &cluster,
        &[
            "defrag",
            "--cluster",
            "--compact",
            "--move-leader",
            "--wait-between=100ms",
            "-o",
            "json",
        ],
    );
    r.code(0);
    assert_leader_last(&r);
    let doc = r.json();
    let ms = members(&doc);
    assert_eq!(ms[2]["member_id"], old.as_str(), "{}", r.dump());
    let moved_to = ms[2]["leadership_moved_to"]
        .as_str()
        .unwrap_or_else(|| panic!("leadership not moved\n{}", r.dump()))
        .to_string();
    assert!(
        ms[..2].iter().any(|m| m["member_id"] == moved_to.as_str()),
        "moved to a member not defragmented before\n{}",
        r.dump()
    );
    assert_ne!(leader(&cluster), old, "the old leader leads again");

    // Only the given endpoints without --cluster, still leader last.
    let r = run(&cluster, &["defrag", "-o", "json"]);
    r.code(0);
    assert_leader_last(&r);

    compaction(&cluster);
    snapshots(&cluster, version);

    // A defrag that fails stops the run: the others are listed as not attempted, exit 1.
    // The fault is real: a stalled Snapshot stream on every member keeps a read transaction
    // open, so each member's defragment hangs until it is released; the 2 s timeout is the
    // bound of a call that would otherwise never return, not a race against a fast one.
    cluster.put_many("hold-", 64, 64 * 1024);
    let held = cluster.hold_snapshots();
    let r = run(
        &cluster,
        &["defrag", "--cluster", "--defrag-timeout=2s", "-o", "json"],
    );
    r.code(1);
    let doc = r.json();
    assert_eq!(doc["ok"], false);
    assert_eq!(
        actions(&doc),
        ["failed", "skipped", "skipped"],
        "{}",
        r.dump()
    );
    let ms = members(&doc);
    assert!(
        ms[0]["reason"]
            .as_str()
            .unwrap()
            .contains("--defrag-timeout"),
        "{}",
        r.dump()
    );
    assert!(ms[1]["reason"].as_str().unwrap().contains("not attempted"));
    // The member whose defragment hung stays blocked until the streams end: release them,
    // let it finish, and hold them again.
    drop(held);
    cluster.wait_healthy(std::time::Duration::from_secs(30));
    let held = cluster.hold_snapshots();
    // --continue-on-error goes on after each failure.
    let r = run(
        &cluster,
        &[
            "defrag",
            "--cluster",
            "--defrag-timeout=2s",
            "--continue-on-error",
        ],
    );
    r.code(1).one_line_error("3 of 3 member(s) failed");
    // Released, the blocked defragments finish and the members serve again.
    drop(held);
    cluster.wait_healthy(std::time::Duration::from_secs(30));
    cluster
        .with_client(|mut c| async move {
            c.delete(
                "hold-",
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok(())
        })
        .expect("delete the held data");

    // One member down: refused (4) before anything, and nothing changes on the others.
    fragment(&cluster, "c");
    run(&cluster, &["compact"]).code(0);
    let before = db_sizes(&cluster);
    cluster.kill(2);
    let live: Vec<String> = cluster.endpoints()[..2].to_vec();
    let r = run(&cluster, &["defrag", "--cluster", "-o", "json"]);
    r.code(4);
    let doc = r.json();
    assert!(members(&doc).is_empty(), "{}", r.dump());
    assert!(doc["refused"].as_str().unwrap().contains("not healthy"));
    // The gate covers every member even when only live endpoints are given.
    let mut a = args([format!("--endpoints={}", live.join(","))]);
    a.extend(cluster.tls_args());
    a.extend(args(["defrag"]));
    let r = etcdops(&a, &[], Some(&cluster));
    r.code(4).one_line_error("refused");
    assert!(
        r.stderr.contains(&cluster.members[2].client_url),
        "{}",
        r.dump()
    );
    let r = run(&cluster, &["maintain"]);
    r.code(4).one_line_error("refused");
    let after = db_sizes(&cluster);
    for (id, size) in &after {
        assert_eq!(before[id], *size, "member {id} changed while refused");
    }
}

fn compaction(cluster: &Cluster) {
    // The future is a clear one-line usage error.
    let r = run(cluster, &["compact", "--revision=999999999"]);
    r.code(2).one_line_error("in the future");
    // --retain N keeps the last N revisions.
    cluster.put_many("retain-", 10, 10);
    let r = run(cluster, &["compact", "--retain=5", "-o", "json"]);
    r.code(0);
    let doc = r.json();
    let current = doc["revision"].as_i64().unwrap();
    assert_eq!(doc["compacted_to"].as_i64().unwrap(), current - 4);
    assert_eq!(doc["physical"], true);
    // Compacting to an already compacted revision is reported, not a failure.
    let r = run(
        cluster,
        &["compact", "--revision=3", "--no-physical", "-o", "json"],
    );
    r.code(0);
    let doc = r.json();
    assert_eq!(doc["already_compacted"], true, "{}", r.dump());
    let r = run(cluster, &["compact", "--revision=3"]);
    r.code(0);
    assert!(r.stdout.contains("already compacted"), "{}", r.dump());
    for bad in [
        vec!["compact", "--revision=0"],
        vec!["compact", "--retain=0"],
        vec!["compact", "--revision=5", "--retain=2"],
    ] {
        run(cluster, &bad).code(2);
    }
}

fn snapshots(cluster: &Cluster, version: Version) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    let f = file.to_str().unwrap();
    let r = run(cluster, &["snapshot", "save", f, "-o", "json"]);
    r.code(0);
    let doc = r.json();
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(doc["size"].as_u64().unwrap(), bytes.len() as u64);
    assert_eq!(doc["blake3"], blake3::hash(&bytes).to_hex().as_str());
    assert_eq!(doc["sha256"].as_str().unwrap().len(), 64);
    assert!(doc["revision"].as_i64().unwrap() > 200, "{}", r.dump());
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!dir.path().join("snap.db.part").exists());

    // etcd's own tools accept it.
    let status = std::process::Command::new(version.etcdutl())
        .args(["snapshot", "status", f, "-w", "json"])
        .output()
        .unwrap();
    assert!(status.status.success(), "snapshot status: {status:?}");
    let st: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(st["totalKey"].as_u64().unwrap() > 0, "{st}");

    run(cluster, &["snapshot", "verify", f]).code(0);

    // Never overwrite: exit 4, the file untouched.
    let r = run(cluster, &["snapshot", "save", f]);
    r.code(4).one_line_error(f);
    assert_eq!(std::fs::read(&file).unwrap(), bytes);

    // A missing directory is bad input, and leaves nothing behind.
    let nested = dir.path().join("nope/snap.db");
    run(cluster, &["snapshot", "save", nested.to_str().unwrap()])
        .code(2)
        .one_line_error("does not exist");
    assert!(!dir.path().join("nope").exists());

    // One flipped byte in the middle fails verify with exit 1.
    let bad = dir.path().join("bad.db");
    let mut corrupt = bytes.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x5a;
    std::fs::write(&bad, corrupt).unwrap();
    let r = run(cluster, &["snapshot", "verify", bad.to_str().unwrap()]);
    r.code(1).one_line_error("sha256 trailer mismatch");
    let r = run(
        cluster,
        &["snapshot", "verify", bad.to_str().unwrap(), "-o", "json"],
    );
    r.code(1);
    assert_eq!(r.json()["ok"], false);
    // A truncated one too.
    std::fs::write(&bad, &bytes[..bytes.len() - 10]).unwrap();
    run(cluster, &["snapshot", "verify", bad.to_str().unwrap()])
        .code(1)
        .one_line_error("trailer");

    // Alarms: none here.
    let r = run(cluster, &["alarm", "list", "-o", "json"]);
    r.code(0);
    assert_eq!(r.json()["alarms"].as_array().unwrap().len(), 0);
}

#[test]
fn defrag_compact_snapshot_3_5() {
    defrag_scenarios(Version::V35);
}

#[test]
fn defrag_compact_snapshot_3_6() {
    defrag_scenarios(Version::V36);
}

/// NOSPACE built from history: `maintain` compacts, defragments every member (whatever the
/// rule), disarms the alarm once every db is below 90 % of the quota, and writes work again.
fn nospace_scenario(version: Version) {
    const QUOTA: u64 = 8 * 1024 * 1024;
    let cluster = Cluster::start(Spec::new(version, 3).tls().quota(QUOTA));
    cluster.raise_nospace();
    let quota = format!("--quota-backend-bytes={QUOTA}");

    let r = run(&cluster, &["alarm", "list", "-o", "json"]);
    r.code(0);
    let alarms = r.json()["alarms"].as_array().unwrap().clone();
    assert!(
        alarms.iter().any(|a| a["alarm"] == "NOSPACE"),
        "{}",
        r.dump()
    );

    // The dry run tolerates NOSPACE, plans every member, and changes nothing.
    let r = run(&cluster, &["maintain", &quota, "--dry-run", "-o", "json"]);
    r.code(0);
    let doc = r.json();
    assert_eq!(doc["nospace"], true);
    assert_eq!(actions(&doc), ["would-defragment"; 3], "{}", r.dump());

    let r = run(&cluster, &["maintain", &quota, "-o", "json"]);
    r.code(0);
    let doc = r.json();
    assert_eq!(actions(&doc), ["defragmented"; 3], "{}", r.dump());
    for m in members(&doc) {
        assert!(
            m["reason"].as_str().unwrap().contains("NOSPACE"),
            "{}",
            r.dump()
        );
        assert!(m["db_size_after"].as_u64().unwrap() < QUOTA * 9 / 10);
    }
    let disarmed = doc["disarmed"].as_array().unwrap();
    assert!(!disarmed.is_empty(), "{}", r.dump());
    assert!(disarmed.iter().all(|a| a["alarm"] == "NOSPACE"));
    assert_eq!(doc["healthy_after"], true, "{}", r.dump());
    cluster.put("after-maintain", "writes work again");
    run(&cluster, &["health", "--cluster"]).code(0);

    // alarm disarm reports what it disarmed.
    cluster.raise_nospace();
    let r = run(&cluster, &["alarm", "disarm", "-o", "json"]);
    r.code(0);
    let doc = r.json();
    assert!(
        doc["disarmed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["alarm"] == "NOSPACE"),
        "{}",
        r.dump()
    );
    assert_eq!(doc["alarms"].as_array().unwrap().len(), 0, "{}", r.dump());
}

#[test]
fn maintain_clears_nospace_3_5() {
    nospace_scenario(Version::V35);
}

#[test]
fn maintain_clears_nospace_3_6() {
    nospace_scenario(Version::V36);
}

/// Ctrl-C in the middle of a save: exit 1, and neither FILE nor FILE.part is left.
#[test]
fn interrupted_snapshot_leaves_nothing() {
    let cluster = Cluster::start(Spec::new(Version::V36, 1));
    // 48 MiB of distinct values: streaming takes long enough to be caught in the act.
    cluster.put_many("big-", 384, 128 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    let part = dir.path().join("snap.db.part");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_etcdops"))
        .args(cluster.client_args())
        .args(["snapshot", "save", file.to_str().unwrap(), "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::fs::metadata(&part).map_or(0, |m| m.len()) == 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "no .part appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("interrupted by Ctrl-C"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!part.exists(), ".part left behind");
    assert!(!file.exists(), "a partial snapshot was renamed into place");
}

/// A learner passes the health gate (it refuses linearizable reads by design) and is
/// skipped: etcd rejects defragment on learners.
#[test]
fn learners_are_skipped() {
    let cluster = Cluster::start(Spec::new(Version::V36, 3));
    let peer = format!("http://127.0.0.1:{}", common::free_port());
    let client = format!("http://127.0.0.1:{}", common::free_port());
    // etcd refuses reconfiguration until every member has been connected for a few seconds.
    let start = std::time::Instant::now();
    loop {
        let out = cluster.etcdctl(&[
            "member",
            "add",
            "learner",
            "--learner",
            &format!("--peer-urls={peer}"),
        ]);
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "member add: {out:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let initial: Vec<String> = cluster
        .members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .chain([format!("learner={peer}")])
        .collect();
    let data = cluster.dir.path().join("learner");
    let log = std::fs::File::create(cluster.dir.path().join("learner.log")).unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _learner = Kill(
        std::process::Command::new(Version::V36.etcd())
            .args([
                "--name=learner".to_string(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=existing".into(),
                "--heartbeat-interval=50".into(),
                "--election-timeout=500".into(),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // Wait until the learner is started and answers health (a clean Status).
    let start = std::time::Instant::now();
    loop {
        let r = run(&cluster, &["health", "--cluster", "-o", "json"]);
        if r.code == 0 {
            let doc = r.json();
            let eps = doc["endpoints"].as_array().unwrap();
            assert_eq!(eps.len(), 4, "{}", r.dump());
            assert!(eps.iter().any(|e| e["is_learner"] == true), "{}", r.dump());
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the learner never became healthy\n{}\n--- learner log ---\n{}",
            r.dump(),
            std::fs::read_to_string(cluster.dir.path().join("learner.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let r = run(&cluster, &["defrag", "--cluster", "-o", "json"]);
    r.code(0);
    let doc = r.json();
    let ms = members(&doc);
    assert_eq!(ms.len(), 4, "{}", r.dump());
    assert_eq!(ms[0]["is_learner"], true, "{}", r.dump());
    assert_eq!(ms[0]["action"], "skipped");
    assert!(ms[0]["reason"].as_str().unwrap().contains("learner"));
    assert_eq!(
        actions(&doc)[1..],
        ["defragmented", "defragmented", "defragmented"],
        "{}",
        r.dump()
    );
    assert_eq!(ms[3]["is_leader"], true, "{}", r.dump());

    // Given the learner's endpoint first, commands that need a voting member skip it.
    let mut a = args([format!("--endpoints={client},{}", cluster.endpoints_csv())]);
    a.extend(args(["alarm", "list"]));
    etcdops(&a, &[], Some(&cluster)).code(0);
}

#[test]
fn bad_rules_are_exit_2_before_contacting_etcd() {
    // Nothing listens on port 1: reaching etcd would be exit 3.
    for (cmd, rule, needle) in [
        ("defrag", "dbSize >", "position 9"),
        (
            "defrag",
            "dbSize > 1 && dbsize < 2",
            "unknown variable `dbsize`",
        ),
        ("maintain", "dbSize = 1", "position 8"),
        ("maintain", "dbSize + 1", "must be a condition"),
    ] {
        let a = args(["--endpoints=http://127.0.0.1:1", cmd, "--rule", rule]);
        etcdops(&a, &[], None).code(2).one_line_error(needle);
    }
    for bad in [
        vec![
            "--endpoints=http://127.0.0.1:1",
            "defrag",
            "--defrag-timeout=5",
        ],
        vec![
            "--endpoints=http://127.0.0.1:1",
            "defrag",
            "--wait-between=0s",
        ],
        vec!["--endpoints=http://127.0.0.1:1", "snapshot", "save"],
    ] {
        let run = etcdops(&args(&bad), &[], None);
        run.code(2);
    }
    // Verifying a file that does not exist is bad input, not a corrupt snapshot.
    etcdops(
        &args(["snapshot", "verify", "/nonexistent/snap.db"]),
        &[],
        None,
    )
    .code(2)
    .one_line_error("/nonexistent/snap.db");
}
