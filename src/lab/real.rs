//! The real-kubelet lab mode (`etcdops-lab up --kubelet real`): each node runs containerd
//! with its own root, state and socket, and a standalone kubelet (no API server) whose static
//! pod is the node's kubeadm-format `etcd.yaml`, on locally built images imported into
//! containerd (`scripts/build-lab-images.sh`); nothing is pulled.
//!
//! Everything a node starts lives under the node dir (`cri/`, `kubelet/`) and in one cgroup
//! of its own, `/etcdops-lab-<lab>-nodeI`, in every cgroup v1 hierarchy: containerd and
//! kubelet in its `daemons` child (in the `pids` hierarchy), the pods in kubelet's
//! `kubepods` tree beneath it (`cgroupRoot`). So `down` can find and end every process a node
//! ever started, even after `up`, kubelet or containerd was killed: it asks containerd to
//! remove the containers, kills whatever is left in the node's cgroup, unmounts whatever is
//! still mounted under the node dir, and removes the cgroups.
//!
//! Versions: kubelet 1.37.2 (`scripts/build-k8s.sh kubelet 1.37.2`), containerd 2.3.7
//! (`scripts/build-containerd.sh 2.3.7`; Debian's 1.6 is too old for kubelet 1.37), runc from
//! Debian. See docs/lab.md for what runs where and what does not.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::Lab;
use super::kubelet::alive;
use crate::error::{Error, Result};

/// The Kubernetes release whose kubelet (and pause image) the lab runs.
pub const K8S_VERSION: &str = "1.37.2";
/// The containerd release the lab runs (kubelet 1.36+ dropped containerd 1.x).
pub const CONTAINERD_VERSION: &str = "2.3.7";
/// The sandbox image: kubeadm 1.37's `PauseVersion`, and containerd 2.3's default.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.2";
/// The containerd namespace of CRI (what kubelet's containers live in).
const CRI_NAMESPACE: &str = "k8s.io";

/// The binaries and images of the real stack, resolved once by `up` and recorded in the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stack {
    pub kubelet: PathBuf,
    /// Dir holding `containerd`, `containerd-shim-runc-v2` and `ctr`.
    pub containerd_dir: PathBuf,
    pub runc: PathBuf,
    /// The etcd image as kubeadm names it: `registry.k8s.io/etcd:<version>-0`.
    pub etcd_image: String,
    /// OCI archives imported into every node's containerd.
    pub images: Vec<PathBuf>,
}

impl Stack {
    /// Finds the stack in the deps cache (`$ETCDOPS_DEPS`, default /var/cache/etcdops-deps)
    /// for the etcd release `etcd_version`; each missing piece names the script that makes it.
    pub fn find(deps: &Path, etcd_version: &str) -> Result<Stack> {
        let need = |path: PathBuf, how: &str| -> Result<PathBuf> {
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::Usage(format!(
                    "--kubelet real needs {} (run {how})",
                    path.display()
                )))
            }
        };
        let containerd_dir = deps.join(format!("containerd-{CONTAINERD_VERSION}"));
        for b in ["containerd", "containerd-shim-runc-v2", "ctr"] {
            need(
                containerd_dir.join(b),
                &format!("scripts/build-containerd.sh {CONTAINERD_VERSION}"),
            )?;
        }
        let images = deps.join("images");
        let how_images = format!("scripts/build-lab-images.sh {etcd_version} {K8S_VERSION}");
        Ok(Stack {
            kubelet: need(
                deps.join(format!("kubernetes-{K8S_VERSION}/kubelet")),
                &format!("scripts/build-k8s.sh kubelet {K8S_VERSION}"),
            )?,
            containerd_dir,
            runc: need(PathBuf::from("/usr/sbin/runc"), "apt-get install runc")?,
            etcd_image: format!(
                "{}/etcd:{}",
                super::kubeadm::IMAGE_REPOSITORY,
                super::kubeadm::image_tag(etcd_version)
            ),
            images: vec![
                need(
                    images.join(format!("pause-{K8S_VERSION}.oci.tar")),
                    &how_images,
                )?,
                need(
                    images.join(format!("etcd-{etcd_version}.oci.tar")),
                    &how_images,
                )?,
            ],
        })
    }
}

fn stack(lab: &Lab) -> Result<&Stack> {
    lab.config.real.as_ref().ok_or_else(|| {
        Error::input(
            Lab::config_path(&lab.dir),
            "not a real-kubelet lab (up --kubelet real)",
        )
    })
}

pub fn cri_dir(lab: &Lab, node: usize) -> PathBuf {
    lab.node_dir(node).join("cri")
}

pub fn socket(lab: &Lab, node: usize) -> PathBuf {
    cri_dir(lab, node).join("containerd.sock")
}

pub fn kubelet_dir(lab: &Lab, node: usize) -> PathBuf {
    lab.node_dir(node).join("kubelet")
}

fn containerd_pid_file(lab: &Lab, node: usize) -> PathBuf {
    cri_dir(lab, node).join("containerd.pid")
}

fn kubelet_pid_file(lab: &Lab, node: usize) -> PathBuf {
    kubelet_dir(lab, node).join("kubelet.pid")
}

/// The node's cgroup name, the same in every hierarchy: short, and unique per lab dir.
pub fn cgroup_name(lab: &Lab, node: usize) -> String {
    let id = blake3::hash(lab.dir.as_os_str().as_encoded_bytes()).to_hex();
    format!("etcdops-lab-{}-node{node}", &id[..8])
}

/// Mount points of the cgroup v1 hierarchies, with their options (controllers).
fn cgroup_hierarchies() -> Vec<(PathBuf, String)> {
    cgroup_mounts(false)
}

/// Mount points of every cgroup hierarchy; with `v2`, the hybrid layout's cgroup2 one too
/// (kubelet's cgroupfs manager creates the node's dirs there as well).
fn cgroup_mounts(v2: bool) -> Vec<(PathBuf, String)> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut post = post.split_whitespace();
            match post.next()? {
                "cgroup" => {}
                "cgroup2" if v2 => {}
                _ => return None,
            }
            let opts = post.nth(1)?.to_string();
            let at = pre.split_whitespace().nth(4)?;
            Some((PathBuf::from(unescape(at)), opts))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The `pids` hierarchy, where every process of a node is found.
fn pids_hierarchy() -> Result<PathBuf> {
    cgroup_hierarchies()
        .into_iter()
        .find(|(_, opts)| opts.split(',').any(|o| o == "pids"))
        .map(|(p, _)| p)
        .ok_or_else(|| {
            Error::failed(
                "find the cgroup v1 pids hierarchy",
                "none is mounted (the real-kubelet lab needs cgroup v1 controllers)",
            )
        })
}

/// Creates the node's cgroup in every v1 hierarchy (kubelet checks that its `cgroupRoot`
/// exists in each) and `daemons` beneath it in `pids`. A new cpuset cgroup starts with no
/// cpus and mems: they are copied from the root, as the kernel's clone_children would.
fn create_cgroups(lab: &Lab, node: usize) -> Result<PathBuf> {
    let name = cgroup_name(lab, node);
    for (at, opts) in cgroup_hierarchies() {
        let dir = at.join(&name);
        fs::create_dir_all(&dir).map_err(|e| Error::io("create cgroup", &dir, e))?;
        if opts.split(',').any(|o| o == "cpuset") {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v =
                    fs::read_to_string(at.join(f)).map_err(|e| Error::io("read", at.join(f), e))?;
                fs::write(dir.join(f), v.trim()).map_err(|e| Error::io("write", dir.join(f), e))?;
            }
        }
    }
    let daemons = pids_hierarchy()?.join(&name).join("daemons");
    fs::create_dir_all(&daemons).map_err(|e| Error::io("create cgroup", &daemons, e))?;
    Ok(daemons)
}

/// Every process in the node's cgroup tree (pids hierarchy).
pub fn node_processes(lab: &Lab, node: usize) -> Vec<i32> {
    let Ok(root) = pids_hierarchy() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut stack = vec![root.join(cgroup_name(lab, node))];
    while let Some(dir) = stack.pop() {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    out
}

/// The etcd processes of a node's pods (host pids), found by name in its cgroup.
pub fn etcd_pids(lab: &Lab, node: usize) -> Vec<i32> {
    node_processes(lab, node)
        .into_iter()
        .filter(|p| fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "etcd"))
        .collect()
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
        .filter(|p| alive(*p))
}

pub fn containerd_pid(lab: &Lab, node: usize) -> Option<i32> {
    read_pid(&containerd_pid_file(lab, node))
}

pub fn kubelet_pid(lab: &Lab, node: usize) -> Option<i32> {
    read_pid(&kubelet_pid_file(lab, node))
}

/// containerd's config: everything under the node's `cri/`, runc's state too, CRI with
/// cgroupfs (there is no systemd as PID 1 to delegate to), our pause image as the sandbox.
fn containerd_config(lab: &Lab, node: usize, stack: &Stack) -> String {
    let cri = cri_dir(lab, node);
    let d = cri.display();
    format!(
        r#"version = 3
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt"]

[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
[metrics]
  address = ""

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{PAUSE_IMAGE}"
  [plugins.'io.containerd.cri.v1.runtime']
    # kubelet asks for oom_score_adj -998 (sandbox) and -997 (critical pod); lowering it
    # needs CAP_SYS_RESOURCE, which these machines' root does not have (CapBnd lacks bit
    # 24): runc then fails "failed to update /proc/self/oom_score_adj: Permission denied".
    # Clamp to containerd's own score, as containerd does for rootless setups.
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "{runc}"
          Root = "{d}/runc"
          SystemdCgroup = false
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "{ip}"
    stream_server_port = "0"
"#,
        runc = stack.runc.display(),
        ip = lab.ip(node),
    )
}

/// The standalone kubelet's config: static pods only, no API server, webhook authn off,
/// AlwaysAllow, cgroupfs like containerd, cgroup v1 allowed, its own address and ports.
fn kubelet_config(lab: &Lab, node: usize) -> String {
    let ip = lab.ip(node);
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {manifests}
containerRuntimeEndpoint: unix://{sock}
imageServiceEndpoint: unix://{sock}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup}
failCgroupV1: false
failSwapOn: false
address: {ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: {ip}
healthzPort: 10248
podLogsDir: {pods}
# The shared disk of these machines runs above kubelet's default thresholds (imagefs
# available < 15 %): kubelet would garbage-collect the unused etcd image, which it cannot
# pull back here, and report disk pressure. The lab does not test eviction.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
"#,
        manifests = lab.manifests_dir(node).display(),
        sock = socket(lab, node).display(),
        cgroup = cgroup_name(lab, node),
        pods = kubelet_dir(lab, node).join("pods-logs").display(),
    )
}

/// Starts `program` detached (own session), logging to `log`, in the node's daemons cgroup,
/// and records its pid in `pid_file`.
fn spawn_daemon(mut cmd: Command, daemons: &Path, log: &Path, pid_file: &Path) -> Result<i32> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io("open", log, e))?;
    let err = out.try_clone().map_err(|e| Error::io("dup", log, e))?;
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(daemons.join("cgroup.procs"))
        .map_err(|e| Error::io("open", daemons.join("cgroup.procs"), e))?;
    use std::os::fd::AsRawFd;
    let procs_fd = procs.as_raw_fd();
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: runs in the forked child before exec and makes only syscalls (setsid, write)
    // on a descriptor opened before the fork: joins the node's cgroup before the daemon can
    // fork anything, so that `down` finds every process it will ever start.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            let me = b"0\n";
            if nix::libc::write(procs_fd, me.as_ptr().cast(), me.len()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let program = cmd.get_program().to_owned();
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("run", PathBuf::from(&program), e))?;
    drop(procs);
    let pid = child.id() as i32;
    fs::write(pid_file, format!("{pid}\n")).map_err(|e| Error::io("write", pid_file, e))?;
    Ok(pid)
}

/// `ctr` against the node's containerd, in CRI's namespace.
pub fn ctr(lab: &Lab, node: usize, args: &[&str]) -> Result<Output> {
    let stack = stack(lab)?;
    let bin = stack.containerd_dir.join("ctr");
    Command::new(&bin)
        .arg("--address")
        .arg(socket(lab, node))
        .args(["--namespace", CRI_NAMESPACE])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("run", &bin, e))
}

fn ctr_ok(lab: &Lab, node: usize, args: &[&str]) -> Result<String> {
    let out = ctr(lab, node, args)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::failed(
            format!("ctr {} (node {node})", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Lays out and starts node I's containerd, imports the images, starts its kubelet.
pub fn start_node(lab: &Lab, node: usize) -> Result<()> {
    let stack = stack(lab)?;
    let cri = cri_dir(lab, node);
    let kdir = kubelet_dir(lab, node);
    for d in [&cri, &kdir] {
        fs::create_dir_all(d).map_err(|e| Error::io("create", d, e))?;
    }
    let config = cri.join("config.toml");
    fs::write(&config, containerd_config(lab, node, stack))
        .map_err(|e| Error::io("write", &config, e))?;
    let kconfig = kdir.join("config.yaml");
    fs::write(&kconfig, kubelet_config(lab, node)).map_err(|e| Error::io("write", &kconfig, e))?;
    let daemons = create_cgroups(lab, node)?;

    let mut cmd = Command::new(stack.containerd_dir.join("containerd"));
    cmd.arg("--config").arg(&config);
    // The shim is found on PATH.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![stack.containerd_dir.clone()];
    paths.extend(std::env::split_paths(&path));
    cmd.env(
        "PATH",
        std::env::join_paths(paths).map_err(|e| Error::failed("build PATH", e.to_string()))?,
    );
    spawn_daemon(
        cmd,
        &daemons,
        &lab.node_dir(node).join("containerd.log"),
        &containerd_pid_file(lab, node),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ctr(lab, node, &["version"]) {
            Ok(out) if out.status.success() => break,
            _ if Instant::now() < deadline && containerd_pid(lab, node).is_some() => {
                std::thread::sleep(Duration::from_millis(100))
            }
            _ => {
                return Err(Error::failed(
                    format!("start containerd of node {node}"),
                    format!(
                        "its socket {} did not answer within 30s; see {}",
                        socket(lab, node).display(),
                        lab.node_dir(node).join("containerd.log").display()
                    ),
                ));
            }
        }
    }
    for image in &stack.images {
        ctr_ok(lab, node, &["images", "import", &image.to_string_lossy()])?;
    }
    // Pinned, as containerd pins the sandbox image: kubelet's image GC never removes it
    // (a real node pulls it back; this one cannot).
    ctr_ok(
        lab,
        node,
        &[
            "images",
            "label",
            &stack.etcd_image,
            "io.cri-containerd.pinned=pinned",
        ],
    )?;
    start_kubelet(lab, node)
}

/// Starts node I's kubelet (a no-op when it runs).
pub fn start_kubelet(lab: &Lab, node: usize) -> Result<()> {
    if kubelet_pid(lab, node).is_some() {
        return Ok(());
    }
    let stack = stack(lab)?;
    let kdir = kubelet_dir(lab, node);
    let daemons = create_cgroups(lab, node)?;
    let mut cmd = Command::new(&stack.kubelet);
    cmd.arg(format!("--config={}", kdir.join("config.yaml").display()))
        .arg(format!("--root-dir={}", kdir.join("root").display()))
        .arg(format!("--hostname-override={}", lab.node_name(node)))
        .arg("--v=2");
    spawn_daemon(
        cmd,
        &daemons,
        &lab.node_dir(node).join("kubelet.log"),
        &kubelet_pid_file(lab, node),
    )?;
    Ok(())
}

/// Stops node I's kubelet as systemd would (SIGTERM, then SIGKILL after 90 s); its pods
/// keep running in containerd.
pub fn stop_kubelet(lab: &Lab, node: usize) -> Result<()> {
    let Some(pid) = kubelet_pid(lab, node) else {
        return Ok(());
    };
    terminate(pid, Duration::from_secs(90));
    let _ = fs::remove_file(kubelet_pid_file(lab, node));
    Ok(())
}

fn terminate(pid: i32, grace: Duration) {
    let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn kubelet_state(lab: &Lab, node: usize) -> &'static str {
    if kubelet_pid(lab, node).is_some() {
        "active"
    } else {
        "inactive"
    }
}

/// Ends everything node I started and says what it did: kubelet; every container through
/// containerd (so its shims, mounts and sockets go too); containerd; then whatever is still
/// in the node's cgroup (SIGKILL); mounts left under the node dir; the cgroups.
pub fn down_node(lab: &Lab, node: usize) -> Result<Vec<String>> {
    let mut said = Vec::new();
    if let Some(pid) = kubelet_pid(lab, node) {
        terminate(pid, Duration::from_secs(30));
        said.push(format!("node{node}: stopped kubelet (pid {pid})"));
    }
    let _ = fs::remove_file(kubelet_pid_file(lab, node));
    if containerd_pid(lab, node).is_some() {
        let ids = ctr(lab, node, &["containers", "list", "--quiet"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ids: Vec<&str> = ids
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        for id in &ids {
            let _ = ctr(
                lab,
                node,
                &["tasks", "kill", "--all", "--signal", "SIGKILL", id],
            );
        }
        for id in &ids {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ctr(lab, node, &["tasks", "delete", "--force", id])
                .map(|o| {
                    o.status.success() || String::from_utf8_lossy(&o.stderr).contains("not found")
                })
                .unwrap_or(true)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = ctr(lab, node, &["containers", "delete", id]);
        }
        if !ids.is_empty() {
            said.push(format!("node{node}: removed {} container(s)", ids.len()));
        }
    }
    if let Some(pid) = containerd_pid(lab, node) {
        terminate(pid, Duration::from_secs(10));
        said.push(format!("node{node}: stopped containerd (pid {pid})"));
    }
    let _ = fs::remove_file(containerd_pid_file(lab, node));
    // Whatever survived (a shim or pod of a containerd that was killed): SIGKILL, until the
    // cgroup is empty.
    // A shim that is killed leaves its socket in containerd's fixed /run/containerd/s:
    // note the ones the survivors listen on, to remove them once they are dead.
    let sockets = shim_sockets(&node_processes(lab, node));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut killed = 0;
    loop {
        let left = node_processes(lab, node);
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::failed(
                format!("stop node {node}"),
                format!(
                    "processes {left:?} survive SIGKILL in cgroup {}",
                    cgroup_name(lab, node)
                ),
            ));
        }
        for p in left {
            if signal::kill(Pid::from_raw(p), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if killed > 0 {
        said.push(format!("node{node}: killed {killed} leftover process(es)"));
    }
    for sock in sockets {
        let _ = fs::remove_file(&sock);
    }
    let mounts = unmount_under(&lab.node_dir(node))?;
    if mounts > 0 {
        said.push(format!("node{node}: unmounted {mounts} mount(s)"));
    }
    remove_cgroups(lab, node)?;
    // kubelet links every container log into /var/log/containers (a fixed path): remove
    // the links into this node's pod logs.
    let logs = kubelet_dir(lab, node).join("pods-logs");
    for e in fs::read_dir("/var/log/containers")
        .into_iter()
        .flatten()
        .flatten()
    {
        if fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&logs)) {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(said)
}

/// The paths under /run/containerd/s of the unix sockets that `pids` hold open (a shim's
/// listening socket), from /proc/net/unix and each process's fds.
fn shim_sockets(pids: &[i32]) -> Vec<PathBuf> {
    let mut inodes = std::collections::HashSet::new();
    for p in pids {
        for fd in fs::read_dir(format!("/proc/{p}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(target) = fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    let table = fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (inode, path) = (f.get(6)?, f.get(7)?);
            (inodes.contains(*inode) && path.starts_with("/run/containerd/s/"))
                .then(|| PathBuf::from(path))
        })
        .collect()
}

/// Mount points under `dir` in this mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(4)
                .map(|p| PathBuf::from(unescape(p)))
        })
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

fn unmount_under(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for _ in 0..3 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return Ok(n);
        }
        for m in mounts {
            if nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).is_ok() {
                n += 1;
            }
        }
    }
    let left = mounts_under(dir);
    if left.is_empty() {
        Ok(n)
    } else {
        Err(Error::failed(
            format!("unmount under {}", dir.display()),
            format!("still mounted: {left:?}"),
        ))
    }
}

/// Every cgroup dir of node I, deepest first, in every hierarchy.
pub fn cgroup_dirs(lab: &Lab, node: usize) -> Vec<PathBuf> {
    let name = cgroup_name(lab, node);
    let mut out = Vec::new();
    for (at, _) in cgroup_mounts(true) {
        let mut stack = vec![at.join(&name)];
        while let Some(dir) = stack.pop() {
            if !dir.is_dir() {
                continue;
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
            out.push(dir);
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

fn remove_cgroups(lab: &Lab, node: usize) -> Result<()> {
    for dir in cgroup_dirs(lab, node) {
        // A cgroup whose last task just exited can be busy for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::io("remove cgroup", &dir, e));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_names_are_short_and_per_lab() {
        let lab = |dir: &str| Lab {
            dir: PathBuf::from(dir),
            config: serde_json::from_str(
                r#"{"nodes":1,"ip_prefix":"127.0.0","etcd":"/e","lab_bin":"/l"}"#,
            )
            .unwrap(),
        };
        let a = cgroup_name(&lab("/tmp/a"), 1);
        assert!(
            a.starts_with("etcdops-lab-") && a.ends_with("-node1"),
            "{a}"
        );
        assert_ne!(a, cgroup_name(&lab("/tmp/b"), 1));
        assert_ne!(a, cgroup_name(&lab("/tmp/a"), 2));
    }
}
