//! The migration on the lab: real etcd, real files, real TLS. End to end with finalize and
//! the fence; a fault injected at every step (through the `Host` trait) rolls back to the
//! original state; kill -9 after every step's journal record is recovered by `resume` and by
//! `rollback`; preflight refusals change nothing; a rolling migration of every node under
//! continuous writes loses no acknowledged write.
//!
//! Where kubelet matters — apply, resume, rollback, kills and signals, whose stop-kubelet and
//! start-kubelet steps race or are cut short — the tests run on the systemd lab
//! (`Lab::up_systemd`): `systemctl stop|start|is-active kubelet` inside systemd-nspawn nodes,
//! systemd's own job queue, and with `ext4`/`xfs` the data dir and the target on real loop
//! devices, the old data dir a mount point. Versions and disks are mixed across the tests.
//! The plain lab (the stand-in alone) stays only where the service manager plays no part:
//! `preflight_refusals_change_nothing` (every refusal comes before any kubelet command) and
//! `a_fully_compacted_idle_cluster_migrates` (what it proves is the identity check at a
//! compacted revision; its kubelet steps are the happy path `end_to_end` runs on systemd).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::lab::Lab;
use common::{Version, tree_bytes};
use etcdops::datadir::Silent;
use etcdops::etcd::connect::Given;
use etcdops::migrate::{self, MigrateStep, RunOptions};
use etcdops::node::KubeletCommands;
use etcdops::run::fault::FaultHost;
use etcdops::run::host::{Host, RealHost};
use etcdops::run::{RunState, StepKind};

fn put_keys(lab: &Lab, prefix: &str, n: usize) {
    for i in 0..n {
        let out = lab.etcdctl(&["put", &format!("{prefix}{i}"), &format!("value-{i}")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn count_keys(lab: &Lab, prefix: &str) -> usize {
    let out = lab.etcdctl(&["get", "--prefix", prefix, "--keys-only", "-w", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["count"].as_u64().unwrap_or(0) as usize
}

fn data_host_path(manifest: &Path) -> PathBuf {
    let pod = etcdops::manifest::StaticPod::load(manifest).unwrap();
    pod.data_volume().unwrap().data_host_path
}

/// `etcdops migrate apply --yes --to TO [-o json]` on node 1, with extra env.
fn apply(lab: &Lab, to: &str, json: bool, env: &[(&str, &str)]) -> common::Run {
    apply_with(lab, to, json, false, env)
}

/// `apply`, with `--precopy` when `precopy`.
fn apply_with(lab: &Lab, to: &str, json: bool, precopy: bool, env: &[(&str, &str)]) -> common::Run {
    // The lab's targets share the source's filesystem (issue 11 refuses that by default).
    let mut args = vec!["migrate", "apply", "--yes", "--same-filesystem", "--to", to];
    if json {
        args.extend(["-o", "json"]);
    }
    if precopy {
        args.push("--precopy");
    }
    lab.etcdops(1, &args, env)
}

/// A fresh target `<disk>/<name>/etcd` for node `node`, its parent created: on a systemd lab
/// on the node's new disk (a loop device with `--disk ext4|xfs`), on the plain lab in the lab
/// dir. The path is the one etcdops is given; the test reaches it through `lab.in_node`.
fn target(lab: &Lab, node: usize, name: &str) -> PathBuf {
    let to = if lab.systemd {
        lab.new_disk(node).join(name).join("etcd")
    } else {
        lab.path().join(name).join("etcd")
    };
    std::fs::create_dir_all(lab.in_node(node, to.parent().unwrap())).unwrap();
    to
}

/// Whether `path` exists as node 1 sees it (on its disks).
fn exists_in_node(lab: &Lab, path: &Path) -> bool {
    lab.in_node(1, path).exists()
}

/// The copy's staging dir beside `to` (where a pre-copy lives).
fn staging_of(to: &Path) -> PathBuf {
    to.parent().unwrap().join(format!(
        ".{}.etcdops-staging",
        to.file_name().unwrap().to_string_lossy()
    ))
}

/// The whole job on a 3-node systemd lab whose data dir and new disk are `disk` loop
/// devices: plan, apply, health, finalize, fence. With `precopy`, the data dir is copied
/// while etcd runs and only what changed after the stop. The old data dir is a mount point,
/// so the fence is a file named `member` inside it; a manifest reverted to it must make etcd
/// fail there instead of starting an empty member.
fn end_to_end(version: Version, disk: &str, precopy: bool) {
    let lab = Lab::up_systemd(version, 3, disk);
    put_keys(&lab, "/e2e/", 50);
    let old = lab.data_dir(1);
    let new = target(&lab, 1, "disk2");
    let to = new.display().to_string();

    let plan = lab.etcdops(
        1,
        &["migrate", "plan", "--same-filesystem", "--to", &to],
        &[],
    );
    plan.code(0);
    assert!(
        plan.stdout.contains("etcd.local.dataDir"),
        "{}",
        plan.dump()
    );
    assert!(!exists_in_node(&lab, &new), "plan must change nothing");

    let run = apply_with(&lab, &to, true, precopy, &[]);
    run.code(0);
    let doc = run.json();
    let after = doc["bytes_after_stop"].as_u64().unwrap();
    // The source is not changed by the run: its size is what the copy had to move.
    let copied: u64 = tree_bytes(&lab.in_node(1, &old))
        .iter()
        .map(|(_, b)| b.len() as u64)
        .sum();
    if precopy {
        // Little changes on an idle member between the pre-copy and the stop.
        assert!(
            after * 10 <= copied,
            "{after} of {copied} bytes after the stop\n{}",
            run.dump()
        );
    } else {
        assert_eq!(after, copied, "{}", run.dump());
    }
    assert!(
        !exists_in_node(&lab, &staging_of(&new)),
        "staging dir left behind"
    );
    assert_eq!(doc["state"], "completed", "{}", run.dump());
    let steps: Vec<&str> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    // The journal's and the JSON's step names are a contract: today's names, in order.
    assert_eq!(
        steps,
        [
            "preflight",
            "snapshot",
            "precopy",
            "stop-etcd",
            "stop-kubelet",
            "copy",
            "verify",
            "rewrite",
            "start-kubelet",
            "wait-healthy",
            "post-verify"
        ]
    );
    assert!(
        doc["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "done")
    );
    assert!(doc["downtime_ms"].as_u64().unwrap() > 0);
    for f in ["member_id", "cluster_id", "revision", "hash"] {
        assert!(doc["identity"].get(f).is_some(), "identity lacks {f}");
    }
    assert_eq!(data_host_path(&lab.manifest(1)), new);
    // The source is exactly what was copied: the sums kept in the run dir still hold.
    let run_dir = PathBuf::from(doc["run_dir"].as_str().unwrap());
    // The copy step's journal record says whether a pre-copy was used: "used" with
    // `--precopy`, "not-asked" without (never "fell-back" when none was asked for).
    let journal = std::fs::read_to_string(lab.in_node(1, &run_dir.join("journal.jsonl"))).unwrap();
    let copy_done = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["step"] == "copy" && r.get("took_ms").is_some())
        .unwrap_or_else(|| panic!("no done record of copy in {journal}"));
    assert_eq!(
        copy_done["data"]["precopy"],
        if precopy { "used" } else { "not-asked" },
        "{copy_done}"
    );
    let sums = run_dir.join("sums.b3");
    let check = Command::new("b3sum")
        .arg("--check")
        .arg(&sums)
        .current_dir(lab.in_node(1, &old))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert!(run_dir.join("snapshot.db").is_file());
    assert_eq!(count_keys(&lab, "/e2e/"), 50);
    lab.etcdops(1, &["health", "--cluster"], &[]).code(0);

    // status after completion: exit 0.
    lab.etcdops(1, &["migrate", "status"], &[]).code(0);

    // finalize: the old data moves aside and a fence takes its place. The old data dir is
    // a mount point (its own disk), which can be neither renamed nor replaced by a file: the
    // fence is `member` inside it, where etcd would need its member dir.
    let fin = lab.etcdops(1, &["migrate", "finalize", "-o", "json"], &[]);
    fin.code(0);
    assert_eq!(fin.json()["state"], "finalized");
    let fence_at = lab.in_node(1, &old.join("member"));
    assert!(
        fence_at.is_file(),
        "fence missing at {}",
        fence_at.display()
    );
    let fence = std::fs::read_to_string(&fence_at).unwrap();
    assert!(fence.contains(&to), "{fence}");
    assert_eq!(count_keys(&lab, "/e2e/"), 50);

    // A manifest reverted to the old path (as `kubeadm upgrade` would) fails loudly
    // instead of starting an empty member: etcd finds the fence where its member dir
    // should be, and node 1 never serves again from the old path.
    let etcd_log = lab.node_dir(1).join("etcd.log");
    let logged_before = std::fs::metadata(&etcd_log).map_or(0, |m| m.len());
    let text = std::fs::read_to_string(lab.manifest(1)).unwrap();
    std::fs::write(
        lab.manifest(1),
        text.replace(&to, &old.display().to_string()),
    )
    .unwrap();
    common::wait_for(
        "etcd started on the reverted manifest to fail on the fence (`member` not a directory)",
        Duration::from_secs(60),
        || {
            let log = std::fs::read(&etcd_log).unwrap_or_default();
            let new_lines =
                String::from_utf8_lossy(&log[(logged_before as usize).min(log.len())..])
                    .into_owned();
            new_lines.contains("not a directory")
        },
    );
    assert!(fence_at.is_file(), "the fence was replaced");
    let h = lab.etcdops(1, &["health", "--cluster"], &[]);
    assert_ne!(h.code, 0, "{}", h.dump());
}

#[test]
fn end_to_end_3_6_xfs() {
    end_to_end(Version::V36, "xfs", true);
}

#[test]
fn end_to_end_3_5_ext4() {
    end_to_end(Version::V35, "ext4", false);
}

#[test]
fn end_to_end_3_7_ext4() {
    end_to_end(Version::V37, "ext4", true);
}

fn quiet(_: &str) {}

fn real_host(lab: &Lab, node: usize) -> RealHost<'static> {
    let env: HashMap<String, String> = lab.env(node).into_iter().collect();
    let manifest = lab.manifest(node);
    let conn = Given {
        manifest: Some(manifest.clone()),
        dial_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(5),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    RealHost {
        conn,
        kubelet: KubeletCommands::new(
            &env["ETCDOPS_KUBELET_STOP_CMD"],
            &env["ETCDOPS_KUBELET_START_CMD"],
            &env["ETCDOPS_KUBELET_STATUS_CMD"],
            Some(&lab.state_dir(node)),
        ),
        manifest: manifest.clone(),
        say: &quiet,
        manifests_dir: manifest.parent().unwrap().to_path_buf(),
        stop_timeout: Duration::from_secs(30),
        start_timeout: Duration::from_secs(60),
        quota: etcdops::etcd::health::DEFAULT_QUOTA,
        progress: &Silent,
        cancel: None,
        guard: Default::default(),
    }
}

/// A fault at every step after preflight. Until etcd has run on the copy, the run rolls
/// back (exit 1) and the node is as it was: manifest bytes, kubelet running, member healthy
/// with its old identity, no target. Once etcd has run on the copy (faults in wait-healthy
/// and post-verify), going back would break raft (see `undo_start`): the run stops with
/// exit 5, the member stays healthy on the new data, and `resume` completes it.
///
/// On the systemd lab (kubelet stopped, started and judged by systemd), with `dir` disks:
/// the engine runs in this test process, which sees only the host's mount namespace (a
/// multi-threaded process may not `setns` into the node's), so the data must be there.
#[test]
fn a_fault_at_every_step_rolls_back_or_stops_safely() {
    let lab = Lab::up_systemd(Version::V36, 3, "dir");
    put_keys(&lab, "/fault/", 20);
    let manifest = lab.manifest(1);
    let identity = real_host(&lab, 1).identity().unwrap();
    // (step, host method, nth call, fail before the real call, etcd ran on the copy)
    let faults: [(&str, &'static str, usize, bool, bool); 10] = [
        ("snapshot", "snapshot", 1, false, false),
        ("precopy", "precopy", 1, false, false),
        ("stop-etcd", "stop_etcd", 1, false, false),
        ("stop-kubelet", "stop_kubelet", 1, false, false),
        ("copy", "copy", 1, false, false),
        ("verify", "verify", 1, false, false),
        ("rewrite", "rewrite", 1, false, false),
        ("start-kubelet", "put_manifest", 1, true, false),
        ("wait-healthy", "wait_healthy", 1, false, true),
        // post-verify's first call to hash_at.
        ("post-verify", "hash_at", 1, false, true),
    ];
    let say = |_: &str| {};
    for (i, (step, method, nth, before, ran)) in faults.into_iter().enumerate() {
        let original = std::fs::read(&manifest).unwrap();
        let from = data_host_path(&manifest);
        let to = lab.path().join(format!("disk-{i}/etcd"));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let inner = real_host(&lab, 1);
        let host = FaultHost::new(&inner, method, nth, before);
        let opts = RunOptions {
            manifest: manifest.clone(),
            state_dir: lab.state_dir(1),
            say: &say,
            cancel: None,
            unfinished: etcdops::runs::check_none_unfinished,
            fs_policy: etcdops::datadir::target::FsPolicy {
                allow_volatile: false,
                same_filesystem: true,
            },
        };
        let endpoint = inner.conn.endpoints[0].clone();
        let outcome = migrate::apply_with(&host, &opts, &to, true, true, &endpoint).unwrap();
        let err = outcome.result.expect_err(step);
        assert!(err.one_line().contains(step), "{step}: {}", err.one_line());
        let rh = real_host(&lab, 1);
        if ran {
            assert_eq!(err.exit_code(), 5, "{step}: {}", err.one_line());
            assert!(
                err.one_line().contains("resume"),
                "{step}: {}",
                err.one_line()
            );
            assert_eq!(outcome.report.state, RunState::Failed, "{step}");
            assert_eq!(
                data_host_path(&manifest),
                to,
                "{step}: member left its new data"
            );
            rh.wait_healthy().unwrap();
            let resumed = migrate::resume(&rh, &opts, None).unwrap();
            resumed.result.unwrap();
            assert_eq!(resumed.report.state, RunState::Completed, "{step}");
        } else {
            assert_eq!(err.exit_code(), 1, "{step}: {}", err.one_line());
            assert_eq!(outcome.report.state, RunState::RolledBack, "{step}");
            assert_eq!(
                std::fs::read(&manifest).unwrap(),
                original,
                "{step}: manifest bytes"
            );
            assert_eq!(data_host_path(&manifest), from, "{step}");
            assert!(!to.exists(), "{step}: target {} left behind", to.display());
        }
        assert!(
            rh.kubelet.is_active().unwrap(),
            "{step}: kubelet not running"
        );
        rh.wait_healthy().unwrap();
        let now = rh.identity().unwrap();
        assert_eq!(now.member_id, identity.member_id, "{step}");
        assert_eq!(now.cluster_id, identity.cluster_id, "{step}");
        assert_eq!(count_keys(&lab, "/fault/"), 20, "{step}");
        // The manifests dir holds the manifest and nothing else (no temp, no backup).
        let names: Vec<_> = std::fs::read_dir(manifest.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{step}: {names:?}");
    }
    lab.etcdops(1, &["health", "--cluster"], &[]).code(0);
}

/// kill -9 right after each step's `done` record: `status` says 5; `rollback` returns to
/// the original in one run, and a second attempt killed at the same point is finished by
/// `resume` in one run. Every key and the cluster's HashKV agreement survive. The runs use
/// `--precopy`, so a kill after the pre-copy is covered: rollback removes its staging dir.
///
/// On the systemd lab (a kill can leave `systemctl stop kubelet` running, and recovery then
/// races systemd's job queue), on etcd 3.5, with `dir` disks: each resumed run keeps its
/// copy (the old data stays until finalize), a dozen copies that a 512 MiB loop disk cannot
/// hold.
#[test]
fn kill_9_after_every_step_then_resume_or_rollback() {
    let lab = Lab::up_systemd(Version::V35, 3, "dir");
    put_keys(&lab, "/crash/", 30);
    let mut current = lab.data_dir(1);
    let steps: Vec<&str> = MigrateStep::ALL.iter().map(|s| s.name()).collect();
    for (i, step) in steps.iter().enumerate() {
        let point = format!("{step}:done");
        // 1. killed, then rolled back.
        let to = lab.path().join(format!("crash-{i}-a/etcd"));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let manifest_before = std::fs::read(lab.manifest(1)).unwrap();
        let killed = apply_with(
            &lab,
            to.to_str().unwrap(),
            false,
            true,
            &[("ETCDOPS_TEST_KILL_AFTER", &point)],
        );
        assert_eq!(
            killed.code,
            -1,
            "{point}: expected SIGKILL\n{}",
            killed.dump()
        );
        let st = lab.etcdops(1, &["migrate", "status", "-o", "json"], &[]);
        st.code(5);
        assert_eq!(st.json()["state"], "interrupted", "{point}");
        // A new apply is refused while the run is unfinished.
        let again = apply(&lab, "/nonexistent-x/etcd", false, &[]);
        again.code(4);
        let rb = lab.etcdops(1, &["migrate", "rollback", "-o", "json"], &[]);
        // Before start-kubelet etcd cannot have run on the copy: rollback must succeed.
        // From start-kubelet on it has (or, right after the manifest went back, may have):
        // then rollback refuses with 5 and leaves the member on the new data.
        let may_refuse = i >= steps.iter().position(|s| *s == "start-kubelet").unwrap();
        // After wait-healthy etcd has certainly served on the copy: going back is a bug.
        let must_refuse = i >= steps.iter().position(|s| *s == "wait-healthy").unwrap();
        if must_refuse {
            assert_eq!(
                rb.code,
                5,
                "{point}: rollback after etcd ran\n{}",
                rb.dump()
            );
        }
        if rb.code == 5 && may_refuse {
            assert_eq!(rb.json()["state"], "failed", "{point}");
            assert_eq!(data_host_path(&lab.manifest(1)), to, "{point}");
            let res = lab.etcdops(1, &["migrate", "resume", "-o", "json"], &[]);
            res.code(0);
            assert_eq!(res.json()["state"], "completed", "{point}\n{}", res.dump());
        } else {
            rb.code(0);
            assert_eq!(rb.json()["state"], "rolled-back", "{point}");
            assert_eq!(
                std::fs::read(lab.manifest(1)).unwrap(),
                manifest_before,
                "{point}"
            );
            assert!(!to.exists(), "{point}: {} left behind", to.display());
            assert!(
                !staging_of(&to).exists(),
                "{point}: staging dir left behind"
            );
            assert_eq!(data_host_path(&lab.manifest(1)), current);
        }
        assert_eq!(count_keys(&lab, "/crash/"), 30, "{point}");

        // 2. killed at the same point, then resumed.
        let to = lab.path().join(format!("crash-{i}-b/etcd"));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let killed = apply_with(
            &lab,
            to.to_str().unwrap(),
            false,
            true,
            &[("ETCDOPS_TEST_KILL_AFTER", &point)],
        );
        assert_eq!(
            killed.code,
            -1,
            "{point}: expected SIGKILL\n{}",
            killed.dump()
        );
        lab.etcdops(1, &["migrate", "status"], &[]).code(5);
        let res = lab.etcdops(1, &["migrate", "resume", "-o", "json"], &[]);
        res.code(0);
        assert_eq!(res.json()["state"], "completed", "{point}\n{}", res.dump());
        assert_eq!(data_host_path(&lab.manifest(1)), to);
        current = to;
        assert_eq!(count_keys(&lab, "/crash/"), 30, "{point}");
        let h = lab.etcdops(1, &["health", "--cluster", "-o", "json"], &[]);
        h.code(0);
        assert_eq!(h.json()["cluster"]["hashes_agree"], true, "{point}");
    }
}

/// The pid of the etcd that runs node `node`'s member (its `--name=node<N>` and this lab's
/// own client URL in the command line), found through /proc.
fn etcd_pid(lab: &Lab, node: usize) -> u32 {
    let name = format!("--name=node{node}");
    let url = lab.client_url(node);
    let found: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let words: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            words.first().is_some_and(|w| w.ends_with("etcd"))
                && words.contains(&name)
                && words
                    .iter()
                    .any(|w| w.starts_with("--advertise-client-urls=") && w.contains(&url))
        })
        .collect();
    assert_eq!(found.len(), 1, "etcd processes of node {node}: {found:?}");
    found[0]
}

/// Preflight refusals: exit code, one line, nothing changed.
#[test]
fn preflight_refusals_change_nothing() {
    let lab = Lab::up(Version::V36, 3);
    let manifest = lab.manifest(1);
    let before_manifest = std::fs::read(&manifest).unwrap();
    let before_data = tree_bytes(&lab.data_dir(1));
    let state = lab.state_dir(1);
    let assert_unchanged = |what: &str| {
        assert_eq!(std::fs::read(&manifest).unwrap(), before_manifest, "{what}");
        assert!(
            !state.join("runs").exists()
                || std::fs::read_dir(state.join("runs")).unwrap().count() == 0,
            "{what}: a run dir was created"
        );
        assert_eq!(
            std::fs::read_dir(manifest.parent().unwrap())
                .unwrap()
                .count(),
            1,
            "{what}"
        );
    };

    // Target not empty.
    let full = lab.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("keep"), b"operator data").unwrap();
    let r = apply(&lab, full.to_str().unwrap(), false, &[]);
    r.code(4).one_line_error("not empty");
    assert_eq!(std::fs::read(full.join("keep")).unwrap(), b"operator data");
    assert_unchanged("target not empty");

    // Target inside the source.
    let inside = lab.data_dir(1).join("member/new");
    let r = apply(&lab, inside.to_str().unwrap(), false, &[]);
    r.code(2).one_line_error("inside");
    assert!(!inside.exists());
    assert_unchanged("target inside source");

    // Relative target.
    let r = apply(&lab, "relative/etcd", false, &[]);
    r.code(2).one_line_error("absolute");
    assert_unchanged("relative target");

    // A filesystem too small (1 MiB tmpfs).
    let small = lab.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap()
        .success();
    assert!(mounted, "mount tmpfs");
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _umount = Umount(small.clone());
    put_keys(&lab, "/big/", 1);
    // More than the 1 MiB tmpfs can hold (one argument may not exceed 128 KiB).
    let big = "x".repeat(100 * 1024);
    for i in 0..12 {
        let out = lab.etcdctl(&["put", &format!("/big/blob{i}"), &big]);
        assert!(out.status.success());
    }
    let target = small.join("etcd");
    let r = apply(&lab, target.to_str().unwrap(), false, &[]);
    r.code(4).one_line_error("free");
    assert_eq!(
        std::fs::read_dir(&small).unwrap().count(),
        0,
        "tmpfs not empty"
    );
    assert_unchanged("tmpfs too small");

    // Without --yes off a terminal.
    let to = lab.path().join("ok/etcd");
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let r = lab.etcdops(1, &["migrate", "apply", "--to", to.to_str().unwrap()], &[]);
    r.code(2).one_line_error("--yes");
    assert_unchanged("no --yes");

    // Not root.
    let r = {
        let env = lab.env(1);
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_etcdops"))
            .args(["migrate", "apply", "--yes", "--to", to.to_str().unwrap()]);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    assert_eq!(
        r.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("root"));
    assert_unchanged("not root");

    // Issue 21, hole 2: a target the rewrite step would refuse passed preflight, etcd and
    // kubelet were stopped, the data copied, and only then did the rewrite refuse it (a
    // rollback, two restarts, for a typo). Now preflight runs the rewrite on the manifest's
    // bytes in memory with the exact path: exit 2 before anything stops, one line, nothing
    // changed (manifests dir and state dir byte for byte), etcd never restarted.
    let node1 = lab.node_dir(1);
    std::fs::create_dir_all(node1.join("mnt/disk")).unwrap();
    let dotdot = format!(
        "{}/../../../mnt/disk/etcd",
        manifest.parent().unwrap().display()
    );
    let trailing_space = format!("{}/mnt/disk/etcd ", node1.display());
    for (to, needle) in [
        (dotdot.as_str(), "contains '..'"),
        (trailing_space.as_str(), "ends with whitespace"),
    ] {
        let pid = etcd_pid(&lab, 1);
        let manifests_before = tree_bytes(manifest.parent().unwrap());
        let state_before = tree_bytes(&state);
        for cmd in ["plan", "apply"] {
            let mut a = vec!["migrate", cmd, "--same-filesystem", "--to", to];
            if cmd == "apply" {
                a.push("--yes");
            }
            lab.etcdops(1, &a, &[]).code(2).one_line_error(needle);
        }
        assert_eq!(
            tree_bytes(manifest.parent().unwrap()),
            manifests_before,
            "{to}"
        );
        assert_eq!(tree_bytes(&state), state_before, "{to}");
        assert_eq!(
            std::fs::read_dir(node1.join("mnt/disk")).unwrap().count(),
            0,
            "{to}: something was created on the target disk"
        );
        assert_eq!(etcd_pid(&lab, 1), pid, "{to}: etcd was restarted");
        assert_unchanged(to);
    }

    // Cluster unhealthy: node 3's etcd stopped (manifest moved out of its manifests dir).
    let m3 = lab.manifest(3);
    let aside = lab.path().join("node3-etcd.yaml");
    std::fs::rename(&m3, &aside).unwrap();
    common::wait_for(
        "health --cluster to see node 3's etcd gone",
        Duration::from_secs(60),
        || lab.etcdops(1, &["health", "--cluster"], &[]).code == 4,
    );
    let r = apply(&lab, to.to_str().unwrap(), false, &[]);
    r.code(4).one_line_error("unhealthy");
    assert!(!to.exists());
    assert_unchanged("cluster unhealthy");
    std::fs::rename(&aside, &m3).unwrap();
    assert_eq!(tree_bytes(&lab.data_dir(1)).len(), before_data.len());
}

/// Every node migrated in turn, each gated by `health --cluster`, while a client writes
/// through all endpoints: no acknowledged write is lost. Prints the downtime per node and
/// the client-visible failures. On the systemd lab, etcd 3.5, each node's data moving
/// from its xfs data disk onto its xfs new disk.
#[test]
fn rolling_migration_under_writes_loses_nothing() {
    let lab = Lab::up_systemd(Version::V35, 3, "xfs");
    let endpoints: Vec<String> = (1..=3).map(|n| lab.client_url(n)).collect();
    let pki = lab.pki(1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let read = |f: &str| std::fs::read(pki.join(f)).unwrap();
                let opts = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(1))
                    .with_timeout(Duration::from_secs(2))
                    .with_tls(
                        etcd_client::TlsOptions::new()
                            .ca_certificate(etcd_client::Certificate::from_pem(read("ca.crt")))
                            .identity(etcd_client::Identity::from_pem(
                                read("healthcheck-client.crt"),
                                read("healthcheck-client.key"),
                            )),
                    );
                let mut client = etcd_client::Client::connect(endpoints, Some(opts))
                    .await
                    .unwrap();
                let (mut acked, mut failed, mut worst) = (Vec::new(), 0usize, Duration::ZERO);
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 200_000 {
                    let t = std::time::Instant::now();
                    match client.put(format!("/roll/{i:08}"), "v", None).await {
                        Ok(_) => acked.push(i),
                        Err(_) => failed += 1,
                    }
                    worst = worst.max(t.elapsed());
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (acked, failed, worst)
            })
        })
    };
    let mut downtimes = Vec::new();
    for node in 1..=3 {
        lab.etcdops(node, &["health", "--cluster"], &[]).code(0);
        let to = target(&lab, node, "rolled");
        let r = lab.etcdops(
            node,
            &[
                "migrate",
                "apply",
                "--yes",
                "--same-filesystem",
                "--to",
                to.to_str().unwrap(),
                "-o",
                "json",
            ],
            &[],
        );
        r.code(0);
        downtimes.push(r.json()["downtime_ms"].as_u64().unwrap());
        // Let the member catch up before the next node goes down.
        etcdops::node::wait_until(
            "cluster healthy",
            Duration::from_secs(30),
            Duration::from_millis(300),
            || Ok(lab.etcdops(node, &["health", "--cluster"], &[]).code == 0),
        )
        .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acked, failed, worst) = writer.join().unwrap();
    assert!(
        acked.len() > 100,
        "the writer made too little progress: {}",
        acked.len()
    );
    let out = lab.etcdctl(&["get", "--prefix", "/roll/", "--keys-only"]);
    let keys: std::collections::HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|i| !keys.contains(&format!("/roll/{i:08}")))
        .collect();
    println!(
        "rolling migration: downtime per node {downtimes:?} ms; writes acked {}, failed {failed}, worst latency {worst:?}, lost {}",
        acked.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// kill -9 right after a step's `begin` record (the step itself never ran or was cut short):
/// `resume` re-runs that step and finishes; after a copy killed mid-way, `rollback` also
/// removes the staging dir it left beside the target. On the systemd lab, etcd 3.6, the
/// targets on node 1's ext4 new disk.
#[test]
fn kill_9_inside_a_step_then_resume_or_rollback() {
    let lab = Lab::up_systemd(Version::V36, 3, "ext4");
    put_keys(&lab, "/inside/", 10);
    for (i, point) in ["stop-etcd:begin", "copy:begin", "start-kubelet:begin"]
        .into_iter()
        .enumerate()
    {
        let to = target(&lab, 1, &format!("inside-{i}"));
        let killed = apply(
            &lab,
            to.to_str().unwrap(),
            false,
            &[("ETCDOPS_TEST_KILL_AFTER", point)],
        );
        assert_eq!(
            killed.code,
            -1,
            "{point}: expected SIGKILL\n{}",
            killed.dump()
        );
        lab.etcdops(1, &["migrate", "status"], &[]).code(5);
        let res = lab.etcdops(1, &["migrate", "resume", "-o", "json"], &[]);
        res.code(0);
        assert_eq!(res.json()["state"], "completed", "{point}\n{}", res.dump());
        assert_eq!(data_host_path(&lab.manifest(1)), to, "{point}");
        assert_eq!(count_keys(&lab, "/inside/"), 10, "{point}");
    }

    // A copy cut short leaves `.etcd.etcdops-staging` beside the target: rollback removes it.
    let to = target(&lab, 1, "inside-staging");
    let manifest_before = std::fs::read(lab.manifest(1)).unwrap();
    let killed = apply(
        &lab,
        to.to_str().unwrap(),
        false,
        &[("ETCDOPS_TEST_KILL_AFTER", "copy:begin")],
    );
    assert_eq!(killed.code, -1, "{}", killed.dump());
    let staging = lab.in_node(1, &etcdops::datadir::copy::staging_path_for(&to).unwrap());
    std::fs::create_dir_all(staging.join("member/snap")).unwrap();
    std::fs::write(staging.join("member/snap/db"), b"partial").unwrap();
    lab.etcdops(1, &["migrate", "rollback"], &[]).code(0);
    assert!(
        !staging.exists(),
        "staging dir left at {}",
        staging.display()
    );
    assert!(!exists_in_node(&lab, &to));
    assert_eq!(std::fs::read(lab.manifest(1)).unwrap(), manifest_before);
    lab.etcdops(1, &["health", "--cluster"], &[]).code(0);
}

/// SIGTERM (an operator's Ctrl-C or `kill`) during the run: before etcd runs on the copy, the
/// step in progress stops (a copy removes its staging dir) and the run rolls back, exit 1;
/// from start-kubelet on it finishes, since going back would be unsafe. On the systemd lab,
/// etcd 3.6, the targets on node 1's xfs new disk.
#[test]
fn sigterm_rolls_back_before_start_and_finishes_after() {
    let lab = Lab::up_systemd(Version::V36, 3, "xfs");
    put_keys(&lab, "/term/", 10);
    let manifest_before = std::fs::read(lab.manifest(1)).unwrap();
    for point in ["stop-kubelet:done", "copy:begin"] {
        let to = target(&lab, 1, &format!("term-{}", point.replace(':', "-")));
        let r = apply(
            &lab,
            to.to_str().unwrap(),
            true,
            &[("ETCDOPS_TEST_TERM_AFTER", point)],
        );
        r.code(1);
        assert_eq!(r.json()["state"], "rolled-back", "{point}\n{}", r.dump());
        assert!(r.stderr.contains("interrupted"), "{point}\n{}", r.dump());
        assert_eq!(
            std::fs::read(lab.manifest(1)).unwrap(),
            manifest_before,
            "{point}"
        );
        assert!(!exists_in_node(&lab, &to), "{point}: target left behind");
        let staging = etcdops::datadir::copy::staging_path_for(&to).unwrap();
        assert!(
            !exists_in_node(&lab, &staging),
            "{point}: staging left behind"
        );
        lab.etcdops(1, &["health", "--cluster"], &[]).code(0);
    }
    let to = target(&lab, 1, "term-late");
    let r = apply(
        &lab,
        to.to_str().unwrap(),
        true,
        &[("ETCDOPS_TEST_TERM_AFTER", "start-kubelet:begin")],
    );
    r.code(0);
    assert_eq!(r.json()["state"], "completed", "{}", r.dump());
    assert_eq!(data_host_path(&lab.manifest(1)), to);
    assert_eq!(count_keys(&lab, "/term/"), 10);
}

/// Issue: `compact` to the current revision, then `migrate plan` failed ("hashkv ...
/// required revision has been compacted") while `health --cluster` said the hashes agree,
/// and a compaction through another node during the run made apply end `failed`. Identity
/// now takes HashKV of the latest revision, and post-verify proves the data directly when
/// nothing was written since, else by agreement across members.
#[test]
fn a_fully_compacted_idle_cluster_migrates() {
    let lab = Lab::up(Version::V36, 3);
    put_keys(&lab, "/compacted/", 20);
    // Compacted to the current revision, through node 2: nothing older is left.
    lab.etcdops(2, &["compact"], &[]).code(0);
    let to = lab.path().join("compacted-disk/etcd");
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let to = to.display().to_string();
    lab.etcdops(
        1,
        &["migrate", "plan", "--same-filesystem", "--to", &to],
        &[],
    )
    .code(0);
    let run = apply(&lab, &to, true, &[]);
    run.code(0);
    let doc = run.json();
    assert_eq!(doc["state"], "completed", "{}", run.dump());
    assert_eq!(count_keys(&lab, "/compacted/"), 20);
    lab.etcdops(1, &["health", "--cluster"], &[]).code(0);

    // While node 1 is down (its kubelet being stopped), a client writes and the cluster is
    // compacted to its new current revision through node 2: the recorded revision is gone
    // and the data moved on. Post-verify falls back to HashKV agreement and says so.
    let pki = lab.pki(1);
    let etcdctl = format!(
        "{} --endpoints={} --cacert={} --cert={} --key={}",
        lab.version.etcdctl().display(),
        lab.client_url(2),
        pki.join("ca.crt").display(),
        pki.join("healthcheck-client.crt").display(),
        pki.join("healthcheck-client.key").display()
    );
    let env: std::collections::HashMap<String, String> = lab.env(1).into_iter().collect();
    let stop = format!(
        "ETCDCTL_API=3 {etcdctl} put /compacted-more/x y >/dev/null && \
         rev=$(ETCDCTL_API=3 {etcdctl} endpoint status -w json | \
               sed -n 's/.*\"revision\":\\([0-9]*\\).*/\\1/p') && \
         ETCDCTL_API=3 {etcdctl} compact \"$rev\" >/dev/null && {}",
        env["ETCDOPS_KUBELET_STOP_CMD"]
    );
    let to2 = lab
        .path()
        .join("compacted-disk/etcd2")
        .display()
        .to_string();
    let run = apply(&lab, &to2, true, &[("ETCDOPS_KUBELET_STOP_CMD", &stop)]);
    run.code(0);
    let doc = run.json();
    assert_eq!(doc["state"], "completed", "{}", run.dump());
    let notes = doc["notes"].to_string();
    assert!(notes.contains("compacted"), "{}", run.dump());
    assert_eq!(count_keys(&lab, "/compacted-more/"), 1);
}

/// Write `puts` 100-byte values over 10,000 keys, in transactions of 100 puts (under etcd's
/// default `--max-txn-ops` 128) from 4 clients at once: HashKV reads every version of every
/// key since the last compaction, so its time grows with this history.
fn write_history(lab: &Lab, round: usize, puts: usize) {
    let endpoints: Vec<String> = (1..=lab.nodes).map(|i| lab.client_url(i)).collect();
    let pki = lab.pki(1);
    let read = |f: &str| std::fs::read(pki.join(f)).expect("read lab pki");
    let (ca, cert, key) = (
        read("ca.crt"),
        read("healthcheck-client.crt"),
        read("healthcheck-client.key"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(30))
            .with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(ca))
                    .identity(etcd_client::Identity::from_pem(cert, key)),
            );
        let txns = puts / 100;
        let mut tasks = Vec::new();
        for w in 0..4usize {
            let (endpoints, opts) = (endpoints.clone(), opts.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = etcd_client::Client::connect(endpoints, Some(opts))
                    .await
                    .expect("connect to the lab");
                let value = format!("{round:02}").repeat(50);
                for t in (w..txns).step_by(4) {
                    let ops: Vec<etcd_client::TxnOp> = (0..100)
                        .map(|i| {
                            let k = (t * 100 + i) % 10_000;
                            etcd_client::TxnOp::put(format!("/history/{k:05}"), value.clone(), None)
                        })
                        .collect();
                    c.txn(etcd_client::Txn::new().and_then(ops))
                        .await
                        .unwrap_or_else(|e| panic!("txn {t}: {e}"));
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
    });
}

/// The HashKVs `health --cluster -o json` reports: (endpoint, took_ms, command_timeout_ms,
/// slow) of each.
fn hash_timings(doc: &serde_json::Value) -> Vec<(String, u64, u64, bool)> {
    doc["hash_kv"]
        .as_array()
        .unwrap_or_else(|| panic!("no hash_kv in {doc}"))
        .iter()
        .map(|t| {
            (
                t["endpoint"].as_str().unwrap().to_string(),
                t["took_ms"].as_u64().unwrap(),
                t["command_timeout_ms"].as_u64().unwrap(),
                t["slow"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Regression (issue 26): HashKV over a 2 GB member takes longer than the 5 s command
/// timeout, so preflight called a healthy cluster unhealthy (exit 4). The same trap on a
/// smaller scale: enough history that the fastest of three `health --cluster` runs still
/// takes at least 600 ms for each member's HashKV (written in rounds, with a bound; HashKV's
/// time varies severalfold on a busy machine, so one look is not enough), and a command
/// timeout of a third of that (ample for every other call, which does not grow with the
/// data). `health --cluster` and `migrate apply` must succeed, report each HashKV with its
/// time, and call the ones over the command timeout slow; the test checks from the tool's own
/// times that they really were.
///
/// Not in the default run yet: it needs 6-13 minutes of writes here and did not reach its
/// data bound on one run of three on etcd 3.6 (its HashKV stayed under 600 ms); issue 26
/// stays open until it is reliable. `cargo test --test migrate -- --ignored a_hashkv_slower`.
#[test]
#[ignore = "slow (6-13 min) and not yet reliable on etcd 3.6: issue 26"]
fn a_hashkv_slower_than_the_command_timeout_is_slow_not_unhealthy() {
    let lab = Lab::up(Version::V36, 3);
    let mut fastest = 0;
    for round in 0..6 {
        write_history(&lab, round, 600_000);
        fastest = (0..3)
            .map(|_| {
                let run = lab.etcdops(1, &["health", "--cluster", "-o", "json"], &[]);
                run.code(0);
                let times = hash_timings(&run.json()["cluster"]);
                assert_eq!(times.len(), 3, "{}", run.dump());
                times.iter().map(|t| t.1).min().unwrap()
            })
            .min()
            .unwrap();
        if fastest >= 600 {
            break;
        }
    }
    assert!(
        fastest >= 600,
        "HashKV still took only {fastest} ms after 3,600,000 puts"
    );
    let timeout_ms = fastest / 3;
    let timeout = format!("{timeout_ms}ms");

    // health --cluster: healthy, every HashKV slow, with its time.
    let run = lab.etcdops(
        1,
        &[
            "--command-timeout",
            &timeout,
            "health",
            "--cluster",
            "-o",
            "json",
        ],
        &[],
    );
    run.code(0);
    let doc = run.json();
    assert_eq!(doc["healthy"], true, "{}", run.dump());
    assert_eq!(doc["cluster"]["hashes_agree"], true, "{}", run.dump());
    let times = hash_timings(&doc["cluster"]);
    assert_eq!(times.len(), 3, "{}", run.dump());
    for (ep, took, cmd, slow) in &times {
        assert_eq!(*cmd, timeout_ms, "{}", run.dump());
        assert!(
            *took > timeout_ms && *slow,
            "{ep}: {took} ms: {}",
            run.dump()
        );
    }
    let warnings = doc["warnings"].to_string();
    assert!(warnings.contains("slow, not unhealthy"), "{}", run.dump());
    // The table says what it hashes and where while it waits (every 5 s) and warns.
    let run = lab.etcdops(
        1,
        &["--command-timeout", &timeout, "health", "--cluster"],
        &[],
    );
    run.code(0);
    assert!(run.stdout.contains("slow, not unhealthy"), "{}", run.dump());

    // The migration, with the same command timeout: completed, and its report lists the
    // slow HashKVs of preflight and post-verify.
    let to = target(&lab, 1, "slow-hash-disk");
    let run = lab.etcdops(
        1,
        &[
            "--command-timeout",
            &timeout,
            "migrate",
            "apply",
            "--yes",
            "--no-snapshot",
            "--same-filesystem",
            "--to",
            &to.display().to_string(),
            "-o",
            "json",
        ],
        &[],
    );
    run.code(0);
    let doc = run.json();
    assert_eq!(doc["state"], "completed", "{}", run.dump());
    let times = hash_timings(&doc);
    // Preflight: 3 for agreement and 1 for identity; post-verify: identity, the recorded
    // revision and 3 for agreement.
    assert!(times.len() >= 9, "{}", run.dump());
    let slow: Vec<_> = times.iter().filter(|t| t.3).collect();
    assert!(!slow.is_empty(), "{}", run.dump());
    for (ep, took, cmd, _) in &slow {
        assert_eq!(*cmd, timeout_ms, "{}", run.dump());
        assert!(took > cmd, "{ep}: {took} ms: {}", run.dump());
    }
    let notes = doc["notes"].to_string();
    assert!(notes.contains("slow, not unhealthy"), "{}", run.dump());
    assert_eq!(data_host_path(&lab.manifest(1)), to);
    lab.etcdops(1, &["health", "--cluster"], &[]).code(0);
}

/// The guard key's holder, read through node `node` (None when the key is absent).
fn guard_on(lab: &Lab, node: usize) -> Option<etcdops::etcd::guard::Holder> {
    let out = lab.etcdctl_node(
        node,
        &["get", etcdops::etcd::guard::KEY, "--print-value-only"],
    );
    assert!(
        out.status.success(),
        "read the guard: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let text = text.trim();
    (!text.is_empty()).then(|| serde_json::from_str(text).expect("the guard holds JSON"))
}

/// A recovery run whose kubelet start waits for `gate`: if the test fails first, the gate
/// opens and the run is killed, so that nothing of it outlives the test.
struct Gated {
    gate: PathBuf,
    child: Option<std::process::Child>,
}

impl Drop for Gated {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.gate, b"go");
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Issue 21, hole 1: a `migrate apply` killed (-9) while stop-kubelet runs left the
/// cluster-wide guard to the dead process, and the `rollback` (or `resume`) that brought the
/// member back never took it over: with this member down, the guard could not be reached
/// through the member's own endpoint. Now the recovery holds the guard, under its own pid,
/// for as long as the member may be down (reached through the other members the run
/// recorded), and gives it back when it ends: right after it exits 0, another node's
/// `migrate plan` is not refused by a stale guard. The recovery's kubelet start waits for a
/// gate file, so the test looks at the guard while the member is certainly still down.
#[test]
fn a_recovery_after_a_kill_holds_the_guard_and_releases_it() {
    let lab = Lab::up(Version::V36, 3);
    put_keys(&lab, "/guard/", 10);
    let manifest_before = std::fs::read(lab.manifest(1)).unwrap();
    let start_cmd = lab
        .env(1)
        .into_iter()
        .find(|(k, _)| k == "ETCDOPS_KUBELET_START_CMD")
        .expect("the lab sets a kubelet start command")
        .1;
    let node2_to = lab.path().join("node2-disk/etcd");
    std::fs::create_dir_all(node2_to.parent().unwrap()).unwrap();
    for (i, recovery) in ["rollback", "resume"].into_iter().enumerate() {
        let to = lab.path().join(format!("guard-{recovery}/etcd"));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let killed = apply(
            &lab,
            to.to_str().unwrap(),
            false,
            &[("ETCDOPS_TEST_KILL_AFTER", "stop-kubelet:begin")],
        );
        assert_eq!(killed.code, -1, "expected SIGKILL\n{}", killed.dump());
        let dead = guard_on(&lab, 2).expect("the killed apply held the guard");
        let run_id = dead.run_id.clone();
        let gate = lab.path().join(format!("gate-{i}"));
        let gated = format!(
            "while [ ! -e '{}' ]; do sleep 0.1; done; {start_cmd}",
            gate.display()
        );
        let mut run = Gated {
            gate: gate.clone(),
            child: None,
        };
        let child = lab
            .etcdops_cmd(
                1,
                &["migrate", recovery, "-o", "json"],
                &[("ETCDOPS_KUBELET_START_CMD", &gated)],
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the recovery");
        let pid = child.id();
        run.child = Some(child);
        // While the recovery waits for kubelet, the member is down: the guard must name
        // the recovery (same member and run, its own pid), not the dead apply.
        let held = common::wait_for_some(
            &format!("the guard to name the {recovery} (pid {pid})"),
            Duration::from_secs(60),
            || guard_on(&lab, 2).filter(|h| h.pid == pid),
        );
        assert_eq!(held.member, "node1", "{held:?}");
        assert_eq!(held.run_id, run_id, "{held:?}");
        assert!(
            etcdops::etcd::guard::Holder::same_member(&held, &dead),
            "{held:?} vs {dead:?}"
        );
        std::fs::write(&gate, b"go").unwrap();
        let out = run
            .child
            .take()
            .unwrap()
            .wait_with_output()
            .expect("wait for the recovery");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{recovery}: {stderr}\n{stdout}\n{}",
            lab.logs()
        );
        assert!(
            !stderr.contains("could not be taken"),
            "{recovery} went on without the guard: {stderr}"
        );
        // Right after the recovery: no stale guard, and another node may plan its own run.
        assert_eq!(guard_on(&lab, 2), None, "{recovery} left the guard behind");
        let plan = lab.etcdops(
            2,
            &[
                "migrate",
                "plan",
                "--same-filesystem",
                "--to",
                node2_to.to_str().unwrap(),
            ],
            &[],
        );
        plan.code(0);
        if recovery == "rollback" {
            assert_eq!(std::fs::read(lab.manifest(1)).unwrap(), manifest_before);
            assert!(!to.exists(), "rollback left {}", to.display());
        } else {
            assert_eq!(data_host_path(&lab.manifest(1)), to);
        }
        assert_eq!(count_keys(&lab, "/guard/"), 10, "{recovery}");
        lab.etcdops(1, &["health", "--cluster"], &[]).code(0);
    }
}

/// The image of node `node`'s manifest becomes etcd `to` (tag and binary), as `kubeadm upgrade`
/// rewrites it: the new manifest written outside the manifests dir, then renamed into place.
/// Waits, bounded, until the member answers with the new version.
fn upgrade_node(lab: &Lab, node: usize, to: Version) {
    let manifest = lab.manifest(node);
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut out = String::new();
    let mut image = false;
    let mut command = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("image: ") && trimmed.contains("etcd:") {
            out.push_str(&format!(
                "{indent}image: registry.k8s.io/etcd:{}-0\n",
                to.release()
            ));
            image = true;
        } else if trimmed == "- etcd" && !command {
            // The stand-in runs the lab's etcd for a command named `etcd`, and any other
            // program as named: the new release's binary under a name of its own.
            let bin = lab.path().join(format!("etcd-{}", to.release()));
            if !bin.exists() {
                std::os::unix::fs::symlink(to.etcd(), &bin).unwrap();
            }
            out.push_str(&format!("{indent}- {}\n", bin.display()));
            command = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(image && command, "no etcd image or command in {text}");
    let staged = lab.path().join(format!("etcd.yaml.upgrade-{node}"));
    std::fs::write(&staged, out).unwrap();
    std::fs::rename(&staged, &manifest).unwrap();
    common::wait_for(
        &format!("node {node} to answer as etcd {}", to.release()),
        Duration::from_secs(90),
        || {
            let h = lab.etcdops(node, &["health", "-o", "json"], &[]);
            h.code == 0 && h.json()["endpoints"][0]["version"] == to.release()
        },
    );
}

/// A migration in the middle of a real 3.5 -> 3.6 rolling upgrade: node 1 already runs
/// 3.6.17, nodes 2 and 3 still 3.5.36 (the floor for that upgrade is 3.5.26). The member on
/// 3.6 moves to its new disk and comes back with the same identity and data; the cluster
/// stays mixed and healthy, and health names each member's version.
#[test]
fn migration_during_a_rolling_upgrade_3_5_to_3_6() {
    let lab = Lab::up(Version::V35, 3);
    put_keys(&lab, "/upgrade/", 40);
    upgrade_node(&lab, 1, Version::V36);

    let versions = |lab: &Lab| -> HashMap<String, String> {
        let h = lab.etcdops(1, &["health", "--cluster", "-o", "json"], &[]);
        h.code(0);
        h.json()["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["version"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let mixed: HashMap<String, String> = [
        ("node1", Version::V36.release()),
        ("node2", Version::V35.release()),
        ("node3", Version::V35.release()),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(versions(&lab), mixed);

    let to = target(&lab, 1, "disk2");
    let run = apply(&lab, to.to_str().unwrap(), true, &[]);
    run.code(0);
    let doc = run.json();
    assert_eq!(doc["state"], "completed", "{}", run.dump());
    assert_eq!(data_host_path(&lab.manifest(1)), to);
    // Still the 3.6 image on the new disk, the others untouched, every key there.
    assert_eq!(versions(&lab), mixed);
    assert_eq!(count_keys(&lab, "/upgrade/"), 40);
    let h = lab.etcdops(1, &["health", "--cluster", "-o", "json"], &[]);
    h.code(0);
    assert_eq!(h.json()["cluster"]["hashes_agree"], true, "{}", h.dump());
}
