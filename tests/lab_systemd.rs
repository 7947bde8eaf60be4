//! The systemd lab (`etcdops-lab up --systemd`): real systemd-nspawn nodes with
//! kubelet.service. Proves the service-manager semantics the migration relies on (a start
//! issued while a stop runs ends with kubelet active), the migration end to end with its
//! target on a real ext4 and a real xfs loop-device disk, and that `down` leaves no process,
//! mount or loop device behind — also after an `up` killed half-way. No skip: without
//! systemd-nspawn these tests fail with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Version;
use common::lab::{Lab, lab_bin};

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    etcdops::node::wait_until(what, timeout, Duration::from_millis(50), || Ok(f())).unwrap();
}

/// `systemctl is-active kubelet` in the node, through the env's status command.
fn kubelet_state(lab: &Lab, node: usize) -> (i32, String) {
    let out = lab
        .env_command(node, "ETCDOPS_KUBELET_STATUS_CMD")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Everything `up` recorded: (nspawn pids, container init pids, loop devices, image files).
struct Created {
    pids: Vec<i32>,
    loops: Vec<(String, PathBuf)>,
}

fn created(lab: &Lab) -> Created {
    let text = std::fs::read_to_string(lab.path().join("created.json")).unwrap();
    let items: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut c = Created {
        pids: Vec::new(),
        loops: Vec::new(),
    };
    for item in items {
        match item["kind"].as_str().unwrap() {
            "node" => {
                c.pids.push(item["nspawn"].as_i64().unwrap() as i32);
                if let Some(l) = item["leader"].as_i64() {
                    c.pids.push(l as i32);
                }
            }
            "loop" => c.loops.push((
                item["device"].as_str().unwrap().to_string(),
                PathBuf::from(item["file"].as_str().unwrap()),
            )),
            other => panic!("unknown record kind {other}"),
        }
    }
    c
}

/// After `down`: no recorded process alive, no process (in any mount namespace) with a
/// mount under the lab dir, no loop device on the lab's images, nspawn's propagation dirs
/// gone, and the record empty.
fn assert_down_clean(lab: &Lab, before: &Created) {
    for pid in &before.pids {
        assert!(
            !etcdops::lab::kubelet::alive(*pid),
            "pid {pid} still runs after down"
        );
    }
    let lab_path = lab.path().display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        assert!(
            !info.lines().any(|l| l
                .split(' ')
                .nth(4)
                .is_some_and(|m| m.starts_with(&lab_path) && l.contains("/dev/loop"))),
            "pid {pid} still has a lab disk mounted:\n{info}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&lab_path), "{mounts}");
    let losetup = Command::new("losetup").arg("-a").output().unwrap();
    let listed = String::from_utf8_lossy(&losetup.stdout);
    for (dev, file) in &before.loops {
        assert!(
            !listed.contains(&file.display().to_string()),
            "{dev} still attached to {}:\n{listed}",
            file.display()
        );
    }
    let record = std::fs::read_to_string(lab.path().join("created.json")).unwrap();
    assert_eq!(record.trim(), "[]", "down left items in its record");
}

fn node_disk_fs(lab: &Lab, node: usize, path: &Path) -> String {
    let status = lab.lab(&["status"]);
    status.code(0);
    let line = status
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("node{node} ")))
        .unwrap_or_else(|| panic!("{}", status.dump()))
        .to_string();
    let needle = format!("{} (", path.display());
    let at = line
        .find(&needle)
        .unwrap_or_else(|| panic!("{} not in {line}", path.display()));
    line[at + needle.len()..]
        .split(')')
        .next()
        .unwrap()
        .to_string()
}

/// The race under real systemd: a start issued while `systemctl stop kubelet` still runs
/// (held in "deactivating" by the stand-in's stop gate) cancels the stop job and kubelet
/// ends active.
fn start_cancels_running_stop(version: Version) {
    let t0 = Instant::now();
    let lab = Lab::up_systemd(version, 3, "dir");
    eprintln!(
        "3-node systemd lab up in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(kubelet_state(&lab, 1), (0, "active".into()));
    let etcd_pid_file = lab.node_dir(1).join("etcd.pid");
    let etcd_before = std::fs::read_to_string(&etcd_pid_file).unwrap();

    let gate = lab.node_dir(1).join("kubelet.stop-gate");
    std::fs::write(&gate, "").unwrap();
    let stop = lab
        .env_command(1, "ETCDOPS_KUBELET_STOP_CMD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "systemd to report kubelet deactivating (the stop held by the gate)",
        Duration::from_secs(30),
        || kubelet_state(&lab, 1).1 == "deactivating",
    );
    let start = lab
        .env_command(1, "ETCDOPS_KUBELET_START_CMD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The start replaces the stop job at once; the stop command learns it and exits while
    // the old stand-in is still held by the gate.
    let stopped = stop.wait_with_output().unwrap();
    assert_eq!(stopped.status.code(), Some(1), "{stopped:?}");
    let err = String::from_utf8_lossy(&stopped.stderr);
    assert!(err.contains("Job for kubelet.service canceled."), "{err}");
    std::fs::remove_file(&gate).unwrap();
    let started = start.wait_with_output().unwrap();
    assert_eq!(started.status.code(), Some(0), "{started:?}");
    assert_eq!(kubelet_state(&lab, 1), (0, "active".into()));
    // Stopping kubelet.service did not take etcd with it (KillMode=process, as etcd lives
    // outside kubelet's cgroup on a real node): the new stand-in adopted the same etcd.
    wait_for(
        "the new stand-in to log that it adopted etcd",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(lab.node_dir(1).join("kubelet.log"))
                .unwrap_or_default()
                .contains("adopted running etcd")
        },
    );
    assert_eq!(
        std::fs::read_to_string(&etcd_pid_file).unwrap(),
        etcd_before
    );
    // And the stand-in systemd restarted is the real thing: etcd serves.
    wait_for("the cluster healthy", Duration::from_secs(30), || {
        lab.etcdops(1, &["health", "--cluster"], &[]).code == 0
    });
    eprintln!(
        "start_cancels_running_stop({version:?}) took {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn systemd_start_cancels_running_stop_3_6() {
    start_cancels_running_stop(Version::V36);
}

#[test]
fn systemd_start_cancels_running_stop_3_5() {
    start_cancels_running_stop(Version::V35);
}

/// Under real systemd a killed `systemctl stop kubelet` does not stop the stop job: the unit
/// stays "deactivating", and a later start waits for it and ends active — the behaviour the
/// stand-in copies (tests/lab.rs, start_after_killed_stop_ends_running).
#[test]
fn systemd_start_after_killed_stop_ends_active_3_6() {
    let lab = Lab::up_systemd(Version::V36, 1, "dir");
    let gate = lab.node_dir(1).join("kubelet.stop-gate");
    std::fs::write(&gate, "").unwrap();
    let mut stop = lab
        .env_command(1, "ETCDOPS_KUBELET_STOP_CMD")
        .spawn()
        .unwrap();
    wait_for(
        "systemd to report kubelet deactivating",
        Duration::from_secs(30),
        || kubelet_state(&lab, 1).1 == "deactivating",
    );
    stop.kill().unwrap();
    stop.wait().unwrap();
    assert_eq!(kubelet_state(&lab, 1), (3, "deactivating".into()));
    let start = lab
        .env_command(1, "ETCDOPS_KUBELET_START_CMD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // systemctl in the node, as the env's status command reaches it.
    let status_cmd = lab
        .env(1)
        .into_iter()
        .find(|(k, _)| k == "ETCDOPS_KUBELET_STATUS_CMD")
        .unwrap()
        .1;
    let list_jobs = status_cmd.replace("is-active kubelet", "list-jobs --no-legend");
    wait_for(
        "systemd to queue the start job behind the dying unit",
        Duration::from_secs(30),
        || {
            let out = Command::new("sh")
                .args(["-c", &list_jobs])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("kubelet.service start")
        },
    );
    std::fs::remove_file(&gate).unwrap();
    let started = start.wait_with_output().unwrap();
    assert_eq!(started.status.code(), Some(0), "{started:?}");
    assert_eq!(kubelet_state(&lab, 1), (0, "active".into()));
}

fn put_keys(lab: &Lab, n: usize) {
    for i in 0..n {
        let out = lab.etcdctl(&["put", &format!("/sd/{i}"), &format!("value-{i}")]);
        assert!(out.status.success(), "{out:?}");
    }
}

fn count_keys(lab: &Lab) -> u64 {
    let out = lab.etcdctl(&["get", "--prefix", "/sd/", "--keys-only", "-w", "json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["count"].as_u64().unwrap_or(0)
}

/// `migrate apply` of node 1 onto its new disk (a loop device formatted `disk`), run where
/// the node sees its disks, then the whole cluster healthy, every key there, and `down`
/// clean.
fn migrate_onto_disk(version: Version, disk: &str) {
    let t0 = Instant::now();
    let lab = Lab::up_systemd(version, 3, disk);
    let new_disk = lab.node_dir(1).join("mnt/etcd-disk");
    assert_eq!(node_disk_fs(&lab, 1, &lab.data_dir(1)), disk);
    assert_eq!(node_disk_fs(&lab, 1, &new_disk), disk);
    put_keys(&lab, 50);
    let to = new_disk.join("etcd");
    let run = lab.etcdops(
        1,
        &[
            "migrate",
            "apply",
            "--yes",
            "--to",
            to.to_str().unwrap(),
            "-o",
            "json",
        ],
        &[],
    );
    run.code(0);
    assert_eq!(run.json()["state"], "completed", "{}", run.dump());
    let manifest = std::fs::read_to_string(lab.manifest(1)).unwrap();
    assert!(manifest.contains(to.to_str().unwrap()), "{manifest}");
    assert_eq!(kubelet_state(&lab, 1), (0, "active".into()));
    lab.etcdops(1, &["health", "--cluster"], &[]).code(0);
    assert_eq!(count_keys(&lab), 50);

    // The old data dir is a mount point of its own disk: it can be neither renamed nor
    // replaced by a file, so finalize keeps the old member dir aside inside it and fences
    // with a file named `member` (etcd cannot create its member dir there).
    let fin = lab.etcdops(1, &["migrate", "finalize", "-o", "json"], &[]);
    fin.code(0);
    assert_eq!(fin.json()["state"], "finalized", "{}", fin.dump());
    let old = lab.data_dir(1);
    let env: std::collections::HashMap<String, String> = lab.env(1).into_iter().collect();
    // `stat` inside node 1's mount namespace, where its disks are mounted.
    let stat_in_node = |pattern: String| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} sh -c 'stat -c %F:%a {pattern}'",
                env["ETCDOPS_LAB_NODE_EXEC"]
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        stat_in_node(format!("{}/member", old.display())),
        "regular file:444",
        "no fence file at {}/member: {}",
        old.display(),
        fin.dump()
    );
    assert_eq!(
        stat_in_node(format!("{}/member.etcdops-old-*/snap/db", old.display())),
        "regular file:600",
        "old member dir not kept aside: {}",
        fin.dump()
    );

    let before = created(&lab);
    assert_eq!(before.loops.len(), 6, "two disks per node");
    lab.lab(&["down"]).code(0);
    assert_down_clean(&lab, &before);
    eprintln!(
        "migrate_onto_disk({version:?}, {disk}) took {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn systemd_migrate_onto_ext4_3_6() {
    migrate_onto_disk(Version::V36, "ext4");
}

#[test]
fn systemd_migrate_onto_xfs_3_5() {
    migrate_onto_disk(Version::V35, "xfs");
}

/// `up` killed with SIGKILL half-way (all nodes booted, disks attached, the cluster not yet
/// healthy): `down` still powers off what runs and detaches every loop device. Node 3's
/// client port is taken by the test, so `up` cannot finish before the kill.
#[test]
fn systemd_down_after_killed_up() {
    let dir = tempfile::Builder::new()
        .prefix("etcdops-lab-")
        .tempdir()
        .unwrap();
    let record = dir.path().join("created.json");
    let prefix = "127.0.213";
    let _taken = std::net::TcpListener::bind(format!("{prefix}.13:2379")).unwrap();
    let mut up = Command::new(lab_bin())
        .args(["up", "--dir"])
        .arg(dir.path())
        .args(["--nodes", "3", "--ip-prefix", prefix, "--etcd"])
        .arg(Version::V36.etcd())
        .args(["--systemd", "--disk", "ext4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The guard downs whatever happens below.
    let lab = Lab {
        dir,
        nodes: 3,
        version: Version::V36,
        systemd: true,
    };
    wait_for(
        "up to record three booted nodes",
        Duration::from_secs(60),
        || {
            let Ok(text) = std::fs::read_to_string(&record) else {
                return false;
            };
            let items: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
            items
                .iter()
                .filter(|i| i["kind"] == "node" && i["leader"].is_i64())
                .count()
                == 3
        },
    );
    assert_eq!(up.try_wait().unwrap(), None, "up ended before the kill");
    up.kill().unwrap();
    up.wait().unwrap();
    let before = created(&lab);
    assert_eq!(before.pids.len(), 6);
    assert_eq!(before.loops.len(), 6);
    for pid in &before.pids {
        assert!(etcdops::lab::kubelet::alive(*pid), "pid {pid} not running");
    }
    lab.lab(&["down"]).code(0);
    assert_down_clean(&lab, &before);
}

/// As kubeadm's kubelet.service (StartLimitInterval=0), starts are not rate-limited: a run
/// that is killed and resumed or rolled back many times in a row stops and starts kubelet
/// far more often than systemd's default 5 starts in 10 s. Eight stop/start pairs in a row
/// all succeed.
#[test]
fn systemd_kubelet_starts_are_not_rate_limited() {
    let lab = Lab::up_systemd(Version::V36, 1, "dir");
    for i in 0..8 {
        for cmd in ["ETCDOPS_KUBELET_STOP_CMD", "ETCDOPS_KUBELET_START_CMD"] {
            let out = lab.env_command(1, cmd).output().unwrap();
            assert!(
                out.status.success(),
                "round {i}: {cmd} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert_eq!(kubelet_state(&lab, 1).1, "active");
}

/// A node whose nspawn died by SIGKILL (what a killed `up`, or an OOM kill, can leave): its
/// container's systemd may outlive nspawn and keep the node's disks mounted. `down` ends the
/// container through its PID 1 and still detaches every loop device.
#[test]
fn systemd_down_after_nspawn_killed() {
    let lab = Lab::up_systemd(Version::V36, 1, "ext4");
    let before = created(&lab);
    assert_eq!(
        before.pids.len(),
        2,
        "nspawn and the container's PID 1 recorded"
    );
    assert_eq!(before.loops.len(), 2);
    let (nspawn, init) = (before.pids[0], before.pids[1]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(nspawn),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("the killed nspawn to exit", Duration::from_secs(10), || {
        !etcdops::lab::kubelet::alive(nspawn)
    });
    // Whether the container outlives its nspawn is up to nspawn; `down` must be clean
    // either way, and the record must still name the disks.
    eprintln!(
        "container PID 1 {} after nspawn's SIGKILL",
        if etcdops::lab::kubelet::alive(init) {
            "survives"
        } else {
            "died"
        }
    );
    lab.lab(&["down"]).code(0);
    assert_down_clean(&lab, &before);
}

/// Bad `up` flags: exit 2, one line naming the flag, and the lab dir unchanged.
#[test]
fn systemd_up_bad_flags_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep"), "x").unwrap();
    let before = common::tree_bytes(dir.path());
    for (flags, needle) in [
        (vec!["--disk", "ext4"], "--systemd"),
        (vec!["--systemd", "--disk", "btrfs"], "btrfs"),
    ] {
        let out = Command::new(lab_bin())
            .args(["up", "--dir"])
            .arg(dir.path())
            .args(["--etcd"])
            .arg(Version::V36.etcd())
            .args(&flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(needle), "{flags:?}: {err}");
        assert_eq!(common::tree_bytes(dir.path()), before, "{flags:?}");
    }
}

/// An `up` that fails (node 3's client port is taken, so the cluster never gets healthy)
/// exits 1 saying so and undoes its containers and loop devices itself.
#[test]
fn systemd_failed_up_undoes_itself() {
    let dir = tempfile::Builder::new()
        .prefix("etcdops-lab-")
        .tempdir()
        .unwrap();
    let prefix = "127.0.214";
    let _taken = std::net::TcpListener::bind(format!("{prefix}.13:2379")).unwrap();
    let out = Command::new(lab_bin())
        .args(["up", "--dir"])
        .arg(dir.path())
        .args(["--nodes", "3", "--ip-prefix", prefix, "--timeout", "10s"])
        .arg("--etcd")
        .arg(Version::V36.etcd())
        .args(["--systemd", "--disk", "xfs"])
        .output()
        .unwrap();
    let lab = Lab {
        dir,
        nodes: 3,
        version: Version::V36,
        systemd: true,
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("not healthy") && err.contains("powered off"),
        "{err}"
    );
    // Nothing recorded is left: the same checks as after `down`, with the images `up` made.
    let images: Vec<(String, PathBuf)> = (1..=3)
        .flat_map(|n| ["data", "new"].map(|w| (n, w)))
        .map(|(n, w)| {
            (
                format!("node{n}-{w}"),
                lab.path().join(format!("disks/node{n}-{w}.img")),
            )
        })
        .collect();
    assert!(images.iter().all(|(_, f)| f.is_file()));
    assert_down_clean(
        &lab,
        &Created {
            pids: Vec::new(),
            loops: images,
        },
    );
}
