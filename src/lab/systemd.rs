//! The lab's systemd mode: each node a `systemd-nspawn` container that boots the host's own
//! systemd as PID 1 (`--directory=/ --volatile=yes`: a tmpfs root with the host's `/usr`
//! read-only), on the host's network, with the lab dir bound in at the same path and the
//! kubelet stand-in installed as `kubelet.service`. `systemctl` run inside a node (through
//! `nsenter` into the container's mount and PID namespaces) is then the real service
//! manager with its job queue.
//!
//! With `--disk ext4|xfs` each node's data dir and its "new disk" are loop devices with that
//! filesystem. They are mounted in a private mount namespace made for the node's nspawn (the
//! node sees them through the recursive bind of the lab dir), never in the host's: a mount
//! in the host's namespace is copied into every mount namespace created meanwhile (any
//! other lab's etcd, for one) and would keep the loop device busy after `down`. So the disks
//! live exactly as long as the node, and a host command that must see them (etcdops moving
//! the data dir) runs in that namespace: `nsenter --target <nspawn pid> --mount --`, which
//! `env` prints as `ETCDOPS_LAB_NODE_EXEC`.
//!
//! This module owns the record of what `up` created outside plain files (loop devices,
//! containers), written right after each is created, so that `down` undoes exactly that, in
//! reverse order, also after an `up` that crashed or was killed half-way.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::Lab;
use super::kubelet::alive;
use crate::error::{Error, Result};

/// Size of each loop-device disk (sparse). mkfs.xfs wants at least 300 MB.
pub const DISK_BYTES: u64 = 512 * 1024 * 1024;
/// The unit systemd boots each node into: basic.target plus kubelet.service, nothing else
/// (no getty, no logind, none of the host's enabled services).
pub const NODE_TARGET: &str = "etcdops-node.target";
/// How long a node may take to power off before its nspawn gets SIGKILL.
pub const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);

/// What backs a node's data dir and its new disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Disk {
    /// Plain directories on the lab dir's filesystem.
    #[default]
    Dir,
    Ext4,
    Xfs,
}

impl std::str::FromStr for Disk {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "dir" => Ok(Disk::Dir),
            "ext4" => Ok(Disk::Ext4),
            "xfs" => Ok(Disk::Xfs),
            _ => Err(format!("{s}: choose ext4, xfs or dir")),
        }
    }
}

impl Disk {
    pub fn name(self) -> &'static str {
        match self {
            Disk::Dir => "dir",
            Disk::Ext4 => "ext4",
            Disk::Xfs => "xfs",
        }
    }
}

/// One thing `up` created that is more than a file in the lab dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Created {
    /// A loop device attached to an image file in the lab dir, mounted at `mount_at` in
    /// the node's namespace.
    Loop {
        device: PathBuf,
        file: PathBuf,
        mount_at: PathBuf,
        fs: Disk,
    },
    /// A node's container: the nspawn process and systemd (PID 1 inside) once known.
    Node {
        node: usize,
        machine: String,
        nspawn: i32,
        leader: Option<i32>,
    },
}

/// `D/created.json`: the record `down` works from.
pub fn record_path(lab: &Lab) -> PathBuf {
    lab.dir.join("created.json")
}

pub fn load_record(lab: &Lab) -> Result<Vec<Created>> {
    let path = record_path(lab);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| Error::input(&path, format!("unreadable record of the lab: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("read", &path, e)),
    }
}

fn save_record(lab: &Lab, items: &[Created]) -> Result<()> {
    let path = record_path(lab);
    let tmp = lab.dir.join(".created.json.tmp");
    let text = serde_json::to_string_pretty(items).expect("record serializes");
    fs::write(&tmp, text).map_err(|e| Error::io("write", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))
}

fn push(lab: &Lab, item: Created) -> Result<()> {
    let mut items = load_record(lab)?;
    items.push(item);
    save_record(lab, &items)
}

/// Where node I's "new disk" is mounted (a plain dir with `--disk dir`).
pub fn new_disk_dir(lab: &Lab, node: usize) -> PathBuf {
    lab.node_dir(node).join("mnt/etcd-disk")
}

/// The container's machine name: unique per lab dir and node, so labs never collide.
pub fn machine_name(lab: &Lab, node: usize) -> String {
    let hash = blake3::hash(lab.dir.as_os_str().as_encoded_bytes()).to_hex();
    format!("etcdopslab-{}-{node}", &hash[..8])
}

fn run_tool(program: &str, args: &[&std::ffi::OsStr]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("run", program, e))?;
    if !out.status.success() {
        let words: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        return Err(Error::failed(
            format!("{program} {}", words.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Lay out node I's data dir and new disk: directories, and with `disk` ext4 or xfs a
/// formatted image and its loop device for each (mounted when the node boots). A dir data
/// dir is made 0700 here, a disk's root when it is mounted, as etcd wants.
pub fn prepare_disks(lab: &Lab, node: usize, disk: Disk) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (which, at) in [
        ("data", lab.data_dir(node)),
        ("new", new_disk_dir(lab, node)),
    ] {
        fs::create_dir_all(&at).map_err(|e| Error::io("create", &at, e))?;
        if disk != Disk::Dir {
            attach_disk(lab, node, which, &at, disk)?;
        }
    }
    let data = lab.data_dir(node);
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("chmod", &data, e))
}

fn attach_disk(lab: &Lab, node: usize, which: &str, at: &Path, disk: Disk) -> Result<()> {
    let images = lab.dir.join("disks");
    fs::create_dir_all(&images).map_err(|e| Error::io("create", &images, e))?;
    let image = images.join(format!("node{node}-{which}.img"));
    let file = fs::File::create(&image).map_err(|e| Error::io("create", &image, e))?;
    file.set_len(DISK_BYTES)
        .map_err(|e| Error::io("size", &image, e))?;
    drop(file);
    let (mkfs, force) = match disk {
        Disk::Ext4 => ("mkfs.ext4", "-F"),
        Disk::Xfs => ("mkfs.xfs", "-f"),
        Disk::Dir => unreachable!("no image for a dir disk"),
    };
    run_tool(mkfs, &["-q".as_ref(), force.as_ref(), image.as_os_str()])?;
    let device = PathBuf::from(run_tool(
        "losetup",
        &["-f".as_ref(), "--show".as_ref(), image.as_os_str()],
    )?);
    push(
        lab,
        Created::Loop {
            device,
            file: image,
            mount_at: at.to_path_buf(),
            fs: disk,
        },
    )
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The filesystem type mounted at `path` in the mount namespace of `pid`, if it is a mount
/// point there.
pub fn fs_type(pid: i32, path: &Path) -> Option<String> {
    let info = fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    info.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (unescape_mount(left.split(' ').nth(4)?) == path.as_os_str().to_string_lossy())
            .then(|| right.split(' ').next().unwrap_or("").to_string())
    })
}

/// The unit files node I boots with, in `D/nodeI/systemd` (bound read-only as the node's
/// `/etc/systemd/system`), plus its machine id and an empty `tmp.conf` override.
pub fn write_node_files(lab: &Lab, node: usize) -> Result<()> {
    let units = lab.node_dir(node).join("systemd");
    fs::create_dir_all(&units).map_err(|e| Error::io("create", &units, e))?;
    let write = |path: PathBuf, text: String| -> Result<()> {
        fs::write(&path, text).map_err(|e| Error::io("write", &path, e))
    };
    let q = |p: &Path| super::shell_quote(&p.to_string_lossy());
    write(
        units.join("kubelet.service"),
        format!(
            "[Unit]\n\
             Description=kubelet stand-in of the etcdops lab (node {node})\n\
             # kubeadm's kubelet.service disables start rate limiting (StartLimitInterval=0);\n\
             # the key belongs in [Unit] (in [Service] this systemd ignores it), else the\n\
             # sixth start within 10 s fails with \"start of the service was attempted too often\".\n\
             StartLimitIntervalSec=0\n\
             \n\
             [Service]\n\
             ExecStart={bin} kubelet run --dir {dir} --node {node}\n\
             StandardOutput=append:{log}\n\
             StandardError=append:{log}\n\
             # As kubeadm's kubelet unit: always restarted.\n\
             Restart=always\n\
             RestartSec=1\n\
             # etcd is the stand-in's child here, but on a real node it lives in the container\n\
             # runtime's cgroup: `systemctl stop kubelet` must not kill it.\n\
             KillMode=process\n",
            bin = q(&lab.config.lab_bin),
            dir = q(&lab.dir),
            log = lab.node_dir(node).join("kubelet.log").display(),
        ),
    )?;
    write(
        units.join(NODE_TARGET),
        "[Unit]\n\
         Description=etcdops lab node: basic system and kubelet only\n\
         Requires=basic.target\n\
         After=basic.target\n\
         Wants=kubelet.service\n\
         AllowIsolate=yes\n"
            .into(),
    )?;
    // The machine id is bound read-only, so the commit service can only fail: mask it.
    let mask = units.join("systemd-machine-id-commit.service");
    if fs::symlink_metadata(&mask).is_err() {
        std::os::unix::fs::symlink("/dev/null", &mask).map_err(|e| Error::io("link", &mask, e))?;
    }
    // A machine id makes this not a "first boot": systemd then does not enable every unit
    // shipped in /usr (the host's etcd.service among them) by preset.
    let id = blake3::hash(machine_name(lab, node).as_bytes()).to_hex();
    write(
        lab.node_dir(node).join("machine-id"),
        format!("{}\n", &id[..32]),
    )?;
    // Debian's tmp.conf has `D /tmp`: systemd-tmpfiles --remove at boot would empty /tmp,
    // where the lab dir usually lives. An empty file of that name in /etc overrides it.
    let tmpfiles = lab.node_dir(node).join("tmpfiles.d");
    fs::create_dir_all(&tmpfiles).map_err(|e| Error::io("create", &tmpfiles, e))?;
    write(tmpfiles.join("tmp.conf"), String::new())
}

/// Boot node I: start its nspawn (in a session of its own, so it outlives `up`), record it,
/// then record systemd's host pid (the container's PID 1) once it exists.
pub fn boot(lab: &Lab, node: usize) -> Result<()> {
    let dir = lab.dir.to_string_lossy().to_string();
    let node_dir = lab.node_dir(node);
    let mut binds = vec![
        format!("--bind={dir}"),
        format!(
            "--bind-ro={}:/etc/systemd/system",
            node_dir.join("systemd").display()
        ),
        format!(
            "--bind-ro={}:/etc/machine-id",
            node_dir.join("machine-id").display()
        ),
        format!(
            "--bind-ro={}:/etc/tmpfiles.d",
            node_dir.join("tmpfiles.d").display()
        ),
    ];
    for bin in [&lab.config.lab_bin, &lab.config.etcd] {
        // /usr is the host's inside the node already.
        if !bin.starts_with("/usr") {
            binds.push(format!("--bind-ro={}", bin.display()));
        }
    }
    let disks: Vec<(PathBuf, PathBuf, Disk)> = load_record(lab)?
        .into_iter()
        .filter_map(|item| match item {
            Created::Loop {
                device,
                mount_at,
                fs,
                ..
            } if mount_at.starts_with(&node_dir) => Some((device, mount_at, fs)),
            _ => None,
        })
        .collect();
    let data_dir = lab.data_dir(node);
    let machine = machine_name(lab, node);
    let console = node_dir.join("console.log");
    let (out, err) = open_append(&console)?;
    let mut cmd = Command::new("systemd-nspawn");
    cmd.args([
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--directory=/",
        "--volatile=yes",
        "--boot",
        "--console=read-only",
    ])
    .arg(format!("--machine={machine}"))
    .args(&binds)
    .arg("--")
    .arg(format!("systemd.unit={NODE_TARGET}"))
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err);
    // SAFETY: runs in the forked child before exec, making only syscalls (setsid, unshare,
    // mount, chmod) on data prepared before the fork. setsid detaches the container from our
    // session; the private mount namespace keeps the node's disks out of the host's.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if disks.is_empty() {
                return Ok(());
            }
            unshare(CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(std::io::Error::from)?;
            for (device, at, fs) in &disks {
                mount(
                    Some(device.as_path()),
                    at.as_path(),
                    Some(fs.name()),
                    MsFlags::empty(),
                    None::<&str>,
                )
                .map_err(std::io::Error::from)?;
                if *at == data_dir {
                    nix::sys::stat::fchmodat(
                        nix::fcntl::AT_FDCWD,
                        at.as_path(),
                        nix::sys::stat::Mode::from_bits_truncate(0o700),
                        nix::sys::stat::FchmodatFlags::FollowSymlink,
                    )
                    .map_err(std::io::Error::from)?;
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("run", "systemd-nspawn", e))?;
    let nspawn = child.id() as i32;
    // The Child is dropped without wait: `down` reaps nothing, the container is re-parented
    // to init when this command exits.
    push(
        lab,
        Created::Node {
            node,
            machine: machine.clone(),
            nspawn,
            leader: None,
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Some(l) = container_init(nspawn) {
            break l;
        }
        if !alive(nspawn) || Instant::now() >= deadline {
            return Err(Error::failed(
                format!("boot node {node} with systemd-nspawn"),
                format!(
                    "no container PID 1 appeared{}; see {}",
                    if alive(nspawn) {
                        " within 20s"
                    } else {
                        ": nspawn exited"
                    },
                    console.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut items = load_record(lab)?;
    for item in &mut items {
        if let Created::Node {
            nspawn: p,
            leader: l,
            ..
        } = item
            && *p == nspawn
        {
            *l = Some(leader);
        }
    }
    save_record(lab, &items)
}

fn open_append(path: &Path) -> Result<(fs::File, fs::File)> {
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let g = f.try_clone().map_err(|e| Error::io("dup", path, e))?;
    Ok((f, g))
}

fn ppid_and_comm(pid: i32) -> Option<(i32, String)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (left, rest) = stat.rsplit_once(") ")?;
    let comm = left.split_once(" (")?.1.to_string();
    let ppid = rest.split(' ').nth(1)?.parse().ok()?;
    Some((ppid, comm))
}

/// The container's PID 1 under `nspawn`: its child that runs systemd in a PID namespace
/// other than ours (nspawn forks helpers first, which are neither).
fn container_init(nspawn: i32) -> Option<i32> {
    let ours = fs::read_link("/proc/self/ns/pid").ok()?;
    fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|p| {
            ppid_and_comm(*p).is_some_and(|(pp, comm)| pp == nspawn && comm == "systemd")
                && fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|ns| ns != ours)
        })
}

/// Whether `pid` is still the nspawn of `machine` (not a reused pid).
fn is_our_nspawn(pid: i32, machine: &str) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    alive(pid)
        && cmdline
            .split(|b| *b == 0)
            .any(|w| w == format!("--machine={machine}").as_bytes())
}

/// Node I's nspawn process, whose mount namespace holds the node's disks, if the node is up.
pub fn nspawn_pid(lab: &Lab, node: usize) -> Option<i32> {
    load_record(lab)
        .ok()?
        .into_iter()
        .find_map(|item| match item {
            Created::Node {
                node: n,
                machine,
                nspawn,
                ..
            } if n == node && is_our_nspawn(nspawn, &machine) => Some(nspawn),
            _ => None,
        })
}

/// The command prefix that runs a host command in node I's view of its disks.
pub fn node_exec(lab: &Lab, node: usize) -> Result<String> {
    let p = nspawn_pid(lab, node).ok_or_else(|| not_running(lab, node))?;
    Ok(format!("nsenter --target {p} --mount --"))
}

/// Node I's systemd (PID 1 inside), as a host pid, if the node is up.
pub fn leader(lab: &Lab, node: usize) -> Option<i32> {
    load_record(lab)
        .ok()?
        .into_iter()
        .find_map(|item| match item {
            Created::Node {
                node: n,
                machine,
                nspawn,
                leader: Some(l),
            } if n == node
                && is_our_nspawn(nspawn, &machine)
                && ppid_and_comm(l).is_some_and(|(pp, _)| pp == nspawn) =>
            {
                Some(l)
            }
            _ => None,
        })
}

/// The shell command that runs `systemctl <verb> kubelet` inside node I.
pub fn systemctl_cmd(lab: &Lab, node: usize, verb: &str) -> Result<String> {
    let l = leader(lab, node).ok_or_else(|| not_running(lab, node))?;
    Ok(format!(
        "nsenter --target {l} --mount --pid -- systemctl {verb} kubelet"
    ))
}

fn not_running(lab: &Lab, node: usize) -> Error {
    Error::refused(
        format!("node {node} of {}", lab.dir.display()),
        "its container does not run (run `etcdops-lab up --systemd`)",
    )
}

/// Run `systemctl ARGS` inside node I.
pub fn systemctl(lab: &Lab, node: usize, args: &[&str]) -> Result<Output> {
    let l = leader(lab, node).ok_or_else(|| not_running(lab, node))?;
    Command::new("nsenter")
        .args([
            "--target",
            &l.to_string(),
            "--mount",
            "--pid",
            "--",
            "systemctl",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("run", "nsenter", e))
}

/// `systemctl is-active kubelet` inside node I: systemd's word for the unit's state.
pub fn kubelet_state(lab: &Lab, node: usize) -> String {
    match systemctl(lab, node, &["is-active", "kubelet"]) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Err(_) => "node down".into(),
    }
}

/// Wait until systemd in every node reports kubelet active.
pub fn wait_kubelets(lab: &Lab, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for node in 1..=lab.config.nodes {
        loop {
            let state = kubelet_state(lab, node);
            if state == "active" {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::failed(
                    format!("boot node {node}"),
                    format!(
                        "kubelet.service is {state:?} after {}; see {}",
                        humantime::format_duration(timeout),
                        lab.node_dir(node).join("console.log").display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// The host pid of the process that node I's PID namespace calls `ns_pid`.
pub fn host_pid(lab: &Lab, node: usize, ns_pid: i32) -> Option<i32> {
    let l = leader(lab, node)?;
    let ns = fs::read_link(format!("/proc/{l}/ns/pid")).ok()?;
    fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|p| {
            fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|n| n == ns)
                && fs::read_to_string(format!("/proc/{p}/status")).is_ok_and(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("NSpid:"))
                        .and_then(|v| v.split_whitespace().last())
                        .is_some_and(|v| v == ns_pid.to_string())
                })
        })
}

/// Undo the record in reverse: power every node off (SIGTERM to nspawn makes systemd shut
/// down cleanly; SIGKILL to the container's PID 1 and to nspawn after `POWEROFF_TIMEOUT`),
/// which ends the mount namespaces that hold the disks, then detach the loop devices. A
/// container whose nspawn is already gone (an nspawn killed before it could forward the
/// shutdown) is still ended through its PID 1. Each item leaves the record once undone, so a
/// failed `down` can be run again. Returns what was undone.
pub fn down(lab: &Lab) -> Result<Vec<String>> {
    let mut items = load_record(lab)?;
    let mut done = Vec::new();
    while let Some(item) = items.last().cloned() {
        match &item {
            Created::Node {
                node,
                machine,
                nspawn,
                leader,
            } => {
                let ours = is_our_nspawn(*nspawn, machine);
                let init = leader
                    .filter(|l| is_container_init(*l))
                    .or_else(|| ours.then(|| container_init(*nspawn)).flatten());
                if ours || init.is_some() {
                    power_off(*node, ours.then_some(*nspawn), init)?;
                    done.push(format!("powered off node {node}"));
                }
            }
            Created::Loop { device, file, .. } => {
                if backing_file(device).is_some_and(|b| b == *file) {
                    detach(device, file)?;
                    done.push(format!("detached {}", device.display()));
                }
            }
        }
        items.pop();
        save_record(lab, &items)?;
    }
    Ok(done)
}

/// Whether `pid` is a container's systemd: PID 1 of a PID namespace other than ours.
fn is_container_init(pid: i32) -> bool {
    let ours = fs::read_link("/proc/self/ns/pid").ok();
    ppid_and_comm(pid).is_some_and(|(_, comm)| comm == "systemd")
        && fs::read_link(format!("/proc/{pid}/ns/pid")).ok() != ours
        && fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last())
                .is_some_and(|v| v == "1")
        })
}

/// Power node I off: SIGTERM to its nspawn (which asks systemd to shut down), or SIGRTMIN+4
/// (systemd's "poweroff") to the container's PID 1 when nspawn is gone; wait until both have
/// exited; after `POWEROFF_TIMEOUT` SIGKILL the PID 1 (which ends every process of the
/// container's PID namespace, and with them its mount namespace) and nspawn.
fn power_off(node: usize, nspawn: Option<i32>, init: Option<i32>) -> Result<()> {
    let poweroff_init = || {
        if let Some(i) = init {
            // SAFETY: a plain kill(2) with a real-time signal number; no memory involved.
            unsafe {
                libc::kill(i, libc::SIGRTMIN() + 4);
            }
        }
    };
    let mut init_asked = false;
    match nspawn {
        Some(p) => {
            let _ = signal::kill(Pid::from_raw(p), Signal::SIGTERM);
        }
        None => {
            poweroff_init();
            init_asked = true;
        }
    }
    let running =
        || nspawn.is_some_and(alive) || init.is_some_and(|i| alive(i) && is_container_init(i));
    let deadline = Instant::now() + POWEROFF_TIMEOUT;
    while running() {
        // nspawn gone with its container still up: ask the container's systemd directly.
        if !init_asked && !nspawn.is_some_and(alive) {
            poweroff_init();
            init_asked = true;
        }
        if Instant::now() >= deadline {
            for pid in init.into_iter().chain(nspawn) {
                let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let end = Instant::now() + Duration::from_secs(10);
            while running() {
                if Instant::now() >= end {
                    return Err(Error::failed(
                        format!("power off node {node}"),
                        format!(
                            "the container (nspawn pid {nspawn:?}, PID 1 {init:?}) survives SIGKILL"
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Detach a loop device and wait until it is really free: `losetup -d` on a device still
/// mounted somewhere only marks it for autoclear, which would leave it listed.
fn detach(device: &Path, file: &Path) -> Result<()> {
    run_tool("losetup", &["-d".as_ref(), device.as_os_str()])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while backing_file(device).is_some_and(|b| b == file) {
        if Instant::now() >= deadline {
            return Err(Error::failed(
                format!("detach {}", device.display()),
                format!(
                    "still attached to {} after 10s: a process outside the lab holds a mount of it",
                    file.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The image file a loop device is attached to, if it is attached.
pub fn backing_file(device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?.to_str()?;
    let text = fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_round_trip() {
        for d in [Disk::Dir, Disk::Ext4, Disk::Xfs] {
            assert_eq!(d.name().parse::<Disk>().unwrap(), d);
        }
        assert!(
            "btrfs"
                .parse::<Disk>()
                .unwrap_err()
                .contains("ext4, xfs or dir")
        );
    }

    #[test]
    fn record_entries_serialize_with_their_kind() {
        let item = Created::Loop {
            device: "/dev/loop7".into(),
            file: "/l/disks/node1-data.img".into(),
            mount_at: "/l/node1/var/lib/etcd".into(),
            fs: Disk::Xfs,
        };
        let text = serde_json::to_string(&item).unwrap();
        assert!(text.contains("\"kind\":\"loop\""), "{text}");
        assert_eq!(serde_json::from_str::<Created>(&text).unwrap(), item);
    }
}
