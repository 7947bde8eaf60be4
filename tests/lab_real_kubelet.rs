//! The real-kubelet lab (`etcdops-lab up --kubelet real`): kubelet 1.37 and containerd 2.3
//! run kubeadm's etcd.yaml (etcd 3.6.17) as a static pod from a locally built image. Proves what the
//! stand-in can only imitate: the containers outlive kubelet (and containerd), a manifest
//! edit restarts the pod in a new container on the new hostPath, a stray copy of the
//! manifest takes the pod over, and that etcdops works on such a node with no lab-specific
//! flag. `down` must leave no process, mount or cgroup behind, also after kills.
//!
//! No skip: without the stack (kubelet, containerd, runc, images) `up` fails naming the
//! script that builds the missing piece. Timings (kubelet's reaction to a manifest change,
//! the migration's downtime) are printed, never asserted.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Version;
use common::lab::Lab;

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    etcdops::node::wait_until(what, timeout, Duration::from_millis(100), || Ok(f())).unwrap();
}

fn lab_json(lab: &Lab) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(lab.path().join("lab.json")).unwrap()).unwrap()
}

/// The node's cgroup name (as `etcdops::lab::real::cgroup_name`).
fn cgroup_name(lab: &Lab, node: usize) -> String {
    let dir = std::fs::canonicalize(lab.path()).unwrap();
    let id = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex();
    format!("etcdops-lab-{}-node{node}", &id[..8])
}

/// Every pid in the node's cgroup tree (pids hierarchy).
fn node_pids(lab: &Lab, node: usize) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup/pids").join(cgroup_name(lab, node))];
    while let Some(dir) = stack.pop() {
        if let Ok(t) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(t.lines().filter_map(|l| l.parse::<i32>().ok()));
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The etcd processes of node I's pods.
fn etcds(lab: &Lab, node: usize) -> Vec<i32> {
    node_pids(lab, node)
        .into_iter()
        .filter(|p| comm(*p) == "etcd")
        .collect()
}

/// The CRI container id of a pod process: the last component of its cgroup path
/// (`.../kubepods/<qos>/pod<uid>/<container id>`).
fn container_of(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let line = text.lines().find(|l| l.contains(":pids:"))?;
    let path = line.rsplit(':').next()?;
    if !path.contains("/kubepods") {
        return None;
    }
    path.rsplit('/').next().map(str::to_string)
}

/// The one etcd of node I and its container, once exactly one runs.
fn one_etcd(lab: &Lab, node: usize, timeout: Duration) -> (i32, String) {
    let mut found = None;
    wait_for("exactly one etcd container on the node", timeout, || {
        let e = etcds(lab, node);
        found = match e.as_slice() {
            [p] => container_of(*p).map(|c| (*p, c)),
            _ => None,
        };
        found.is_some()
    });
    found.unwrap()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(&dir))
        .collect()
}

fn cgroup_dirs(lab: &Lab, node: usize) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(cgroup_name(lab, node)))
        .filter(|p| p.exists())
        .collect()
}

fn alive(pid: i32) -> bool {
    etcdops::lab::kubelet::alive(pid)
}

fn pid_in(path: PathBuf) -> i32 {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Down, then prove nothing is left: no process of the node, no mount under the lab dir,
/// no cgroup of the node in any hierarchy.
fn down_and_check_clean(lab: &Lab, pids: &[i32]) {
    let out = lab.lab(&["down"]);
    assert_eq!(out.code, 0, "{}", out.dump());
    for n in 1..=lab.nodes {
        assert_eq!(
            node_pids(lab, n),
            Vec::<i32>::new(),
            "node{n}: processes left"
        );
        assert_eq!(
            cgroup_dirs(lab, n),
            Vec::<PathBuf>::new(),
            "node{n}: cgroups left"
        );
    }
    assert_eq!(
        mounts_under(lab.path()),
        Vec::<String>::new(),
        "mounts left"
    );
    for p in pids {
        assert!(!alive(*p), "pid {p} ({}) survived down", comm(*p));
    }
}

#[test]
fn etcd_runs_as_a_static_pod_outlives_kubelet_and_down_leaves_nothing() {
    let lab = Lab::up_real(Version::V36, 1);
    let cfg = lab_json(&lab);
    assert_eq!(
        cfg["real"]["etcd_image"], "registry.k8s.io/etcd:3.6.17-0",
        "{cfg}"
    );
    // kubeadm's manifest as the lab wrote it names the image kubelet ran.
    let manifest = std::fs::read_to_string(lab.manifest(1)).unwrap();
    assert!(
        manifest.contains("image: registry.k8s.io/etcd:3.6.17-0"),
        "{manifest}"
    );
    let (etcd, container) = one_etcd(&lab, 1, Duration::from_secs(60));

    // etcdops finds everything from the manifest: no flag.
    lab.etcdops(1, &["health"], &[]).code(0);

    // The real unit's behaviour the runbook relies on: stopping kubelet leaves the
    // container running, in the runtime's hands.
    let kubelet = pid_in(lab.node_dir(1).join("kubelet/kubelet.pid"));
    let stop = lab
        .env_command(1, "ETCDOPS_KUBELET_STOP_CMD")
        .output()
        .unwrap();
    assert!(stop.status.success(), "{stop:?}");
    assert!(!alive(kubelet), "kubelet still runs after its stop command");
    let status = lab
        .env_command(1, "ETCDOPS_KUBELET_STATUS_CMD")
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(3), "{status:?}");
    assert!(alive(etcd), "etcd died with kubelet");
    lab.etcdops(1, &["health"], &[]).code(0);

    // A new kubelet adopts the running pod: same container.
    let start = lab
        .env_command(1, "ETCDOPS_KUBELET_START_CMD")
        .output()
        .unwrap();
    assert!(start.status.success(), "{start:?}");
    let kubelet = pid_in(lab.node_dir(1).join("kubelet/kubelet.pid"));
    wait_for("kubelet healthz answers", Duration::from_secs(60), || {
        std::net::TcpStream::connect_timeout(
            &format!(
                "{}:10248",
                cfg["ip_prefix"].as_str().unwrap().to_owned() + ".11"
            )
            .parse()
            .unwrap(),
            Duration::from_secs(1),
        )
        .is_ok()
    });
    assert_eq!(
        one_etcd(&lab, 1, Duration::from_secs(30)),
        (etcd, container)
    );

    let containerd = pid_in(lab.node_dir(1).join("cri/containerd.pid"));
    let mut pids = node_pids(&lab, 1);
    pids.extend([kubelet, containerd, etcd]);
    down_and_check_clean(&lab, &pids);
}

#[test]
fn down_after_kubelet_and_containerd_were_killed_leaves_nothing() {
    let lab = Lab::up_real(Version::V36, 1);
    let (etcd, _) = one_etcd(&lab, 1, Duration::from_secs(60));
    let kubelet = pid_in(lab.node_dir(1).join("kubelet/kubelet.pid"));
    let containerd = pid_in(lab.node_dir(1).join("cri/containerd.pid"));
    for p in [kubelet, containerd] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::SIGKILL).unwrap();
    }
    wait_for(
        "kubelet and containerd gone",
        Duration::from_secs(10),
        || !alive(kubelet) && !alive(containerd),
    );
    // The shim keeps the container: etcd still serves with neither daemon running.
    assert!(alive(etcd), "etcd died with containerd");
    lab.etcdops(1, &["health"], &[]).code(0);
    let pids = node_pids(&lab, 1);
    assert!(pids.contains(&etcd), "{pids:?}");
    // The orphaned shims' sockets in containerd's fixed /run/containerd/s.
    let sockets = listening_sockets(&pids);
    assert!(!sockets.is_empty(), "no shim socket found for {pids:?}");
    down_and_check_clean(&lab, &pids);
    for s in sockets {
        assert!(!s.exists(), "{} left behind", s.display());
    }
}

/// Paths under /run/containerd/s of the unix sockets these processes hold.
fn listening_sockets(pids: &[i32]) -> Vec<PathBuf> {
    let mut inodes = Vec::new();
    for p in pids {
        for fd in std::fs::read_dir(format!("/proc/{p}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(t) = std::fs::read_link(fd.path()) {
                let t = t.to_string_lossy().into_owned();
                if let Some(i) = t.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                    inodes.push(i.to_string());
                }
            }
        }
    }
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 7
                && inodes.iter().any(|i| i == f[6])
                && f[7].starts_with("/run/containerd/s/"))
            .then(|| PathBuf::from(f[7]))
        })
        .collect()
}

#[test]
fn a_manifest_edit_restarts_the_pod_on_the_new_host_path() {
    let lab = Lab::up_real(Version::V36, 1);
    let (etcd, container) = one_etcd(&lab, 1, Duration::from_secs(60));
    let new = lab.node_dir(1).join("mnt/edited/etcd");
    std::fs::create_dir_all(new.parent().unwrap()).unwrap();
    let edited = Instant::now();
    lab.etcdops(
        1,
        &["manifest", "set-data-path", new.to_str().unwrap()],
        &[],
    )
    .code(0);
    // kubelet sees the change, kills the old container and starts a new one on the new
    // hostPath, which DirectoryOrCreate creates empty: a new member bootstraps there.
    wait_for("the old etcd to exit", Duration::from_secs(120), || {
        !alive(etcd)
    });
    let killed = edited.elapsed();
    let (_, new_container) = one_etcd(&lab, 1, Duration::from_secs(120));
    wait_for(
        "a member in the new hostPath",
        Duration::from_secs(60),
        || new.join("member/snap").is_dir(),
    );
    let restarted = edited.elapsed();
    assert_ne!(new_container, container, "the pod was not restarted");
    println!(
        "timing: kubelet killed the old etcd {:.1}s after the manifest edit; the new one ran on the new hostPath after {:.1}s",
        killed.as_secs_f64(),
        restarted.as_secs_f64()
    );
}

/// The pod uid of a pod process (`.../pod<uid>/<container id>` in its cgroup path).
fn pod_of(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let line = text.lines().find(|l| l.contains(":pids:"))?;
    line.split('/')
        .find_map(|c| c.strip_prefix("pod"))
        .map(str::to_string)
}

#[test]
fn a_stray_copy_of_the_manifest_takes_over_the_pod_and_doctor_names_it() {
    let lab = Lab::up_real(Version::V36, 1);
    let (etcd, container) = one_etcd(&lab, 1, Duration::from_secs(60));
    let pod = pod_of(etcd).unwrap();
    let dir = lab.manifest(1).parent().unwrap().to_path_buf();
    std::fs::copy(lab.manifest(1), dir.join("etcd.yaml.bak")).unwrap();
    let copied = Instant::now();
    // kubelet 1.37 keys the manifests dir's pods by namespace/name, and the copy's pod has
    // the same name: the file last in name order wins. The pod of etcd.yaml is removed
    // and the copy's pod (another uid: it hashes the file name) started in its place. Not
    // a second etcd, but etcd now runs from a file nobody edits.
    let mut now = None;
    wait_for(
        "etcd to run in the stray copy's pod",
        Duration::from_secs(120),
        || {
            now = match etcds(&lab, 1).as_slice() {
                [p] => pod_of(*p)
                    .filter(|u| *u != pod)
                    .and_then(|u| container_of(*p).map(|c| (*p, u, c))),
                _ => None,
            };
            now.is_some()
        },
    );
    let (new_etcd, _, new_container) = now.unwrap();
    assert!(!alive(etcd), "the first etcd still runs beside the new one");
    assert_ne!(new_container, container);
    let log = std::fs::read_to_string(lab.node_dir(1).join("kubelet.log")).unwrap();
    assert!(
        log.contains("\"SyncLoop REMOVE\" source=\"file\""),
        "kubelet did not remove the first pod"
    );
    println!(
        "timing: etcd.yaml.bak copied; etcd ran in the copy's pod (pid {new_etcd}) after {:.1}s",
        copied.elapsed().as_secs_f64()
    );
    let doc = lab.etcdops(1, &["doctor", "-o", "json"], &[]);
    assert_eq!(doc.code, 4, "{}", doc.dump());
    let v = doc.json();
    let check = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "manifest.strays")
        .unwrap_or_else(|| panic!("no manifest.strays in {v}"));
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["evidence"]
            .as_str()
            .unwrap()
            .contains("etcd.yaml.bak"),
        "{check}"
    );
}

#[test]
fn migrate_with_no_lab_flag() {
    let lab = Lab::up_real(Version::V36, 1);
    let (_, container) = one_etcd(&lab, 1, Duration::from_secs(60));
    lab.put_many("/migrate/", 200, 100);
    let target = lab.node_dir(1).join("mnt/new-disk/etcd");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let run = lab.etcdops(
        1,
        &[
            "migrate",
            "apply",
            "--to",
            target.to_str().unwrap(),
            // The lab's "new disk" is a dir on the same filesystem.
            "--same-filesystem",
            "--yes",
            "-o",
            "json",
        ],
        &[],
    );
    run.code(0);
    let v = run.json();
    assert_eq!(v["state"], "completed", "{v}");
    let steps: Vec<String> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}={}ms", s["name"].as_str().unwrap(), s["took_ms"]))
        .collect();
    println!(
        "timing: migrate downtime {}ms; steps {}",
        v["downtime_ms"],
        steps.join(" ")
    );
    let (etcd, new_container) = one_etcd(&lab, 1, Duration::from_secs(60));
    assert_ne!(new_container, container, "etcd runs in the old container");
    // The new container mounts the target (mountinfo's root field: the path within the
    // host filesystem, here the target itself).
    let mountinfo = std::fs::read_to_string(format!("/proc/{etcd}/mountinfo")).unwrap();
    let target_rel = target.canonicalize().unwrap();
    assert!(
        mountinfo
            .lines()
            .any(|l| l.split_whitespace().nth(3) == target_rel.to_str()),
        "{} not mounted in the new container:\n{mountinfo}",
        target_rel.display()
    );
    assert!(target_rel.join("member/snap/db").is_file());
    assert_eq!(lab.count_on(1, "/migrate/"), Some(200));
    lab.etcdops(1, &["health"], &[]).code(0);
}
