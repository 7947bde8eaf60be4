//! The migration onto real filesystems, not only directories on the test machine's disk:
//! a target on a loop device formatted ext4, one formatted xfs, and a target filesystem
//! that fills up for real in the middle of the copy (ENOSPC), which must roll back cleanly:
//! manifest bytes identical, member healthy with every key, no staging dir, no target.
//! Loop devices and mounts are released by `LoopFs`'s Drop, also on a panic.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::lab::Lab;
use common::loopfs::LoopFs;
use common::proc::Proc;
use common::{Version, wait_for};
use nix::sys::signal::Signal;

const PREFIX: &str = "/fs/";
const KEYS: usize = 500;

fn data_host_path(manifest: &Path) -> PathBuf {
    etcdops::manifest::StaticPod::load(manifest)
        .unwrap()
        .data_volume()
        .unwrap()
        .data_host_path
}

/// Bytes in the files below `dir` (what preflight weighs against free space).
fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

fn healthy_and_agreeing(lab: &Lab) {
    let h = lab.etcdops(1, &["health", "--cluster", "-o", "json"], &[]);
    h.code(0);
    assert_eq!(h.json()["cluster"]["hashes_agree"], true, "{}", h.dump());
    assert_eq!(lab.count_on(1, PREFIX), Some(KEYS as u64));
}

/// Migrate node 1 onto a fresh `fstype` filesystem: completed, the data really on that
/// device, every key served, HashKV agreeing.
fn migrate_onto(fstype: &'static str) {
    // Declared before the lab: the lab (and etcd, which holds the fs) goes down first.
    let disk = LoopFs::new(fstype, 512 << 20);
    let lab = Lab::up(Version::V36, 3);
    lab.put_many(PREFIX, KEYS, 1024);
    assert_eq!(disk.mounted_type().as_deref(), Some(fstype));
    let to = disk.path().join("etcd");
    let r = lab.etcdops(
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
    r.code(0);
    assert_eq!(r.json()["state"], "completed", "{}", r.dump());
    assert_eq!(data_host_path(&lab.manifest(1)), to);
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(disk.path()).unwrap().dev();
    let db = to.join("member/snap/db");
    assert_eq!(
        std::fs::metadata(&db).unwrap().dev(),
        dev,
        "{} is not on the {fstype} loop device",
        db.display()
    );
    healthy_and_agreeing(&lab);
    // etcd writes on the new filesystem: a put after the migration lands there.
    let out = lab.etcdctl(&["put", "/fs-after", "on-the-new-disk"]);
    assert!(out.status.success(), "{out:?}");
    lab.etcdops(1, &["migrate", "status"], &[]).code(0);
}

#[test]
fn migrate_onto_ext4_loop_device() {
    migrate_onto("ext4");
}

#[test]
fn migrate_onto_xfs_loop_device() {
    migrate_onto("xfs");
}

/// The target's filesystem has room at preflight (source + 10 %), and then another file on
/// it grows until the filesystem is full while the copy runs. To land the fill inside the
/// copy for sure, `migrate apply` is frozen (SIGSTOP) as soon as its staging dir exists,
/// the filler writes until ENOSPC, and the run is thawed: its next write fails for real.
/// The run must roll back by itself: exit 1, `rolled-back`, manifest bytes identical,
/// no staging dir and no target left, member healthy with every key.
#[test]
fn target_filling_up_mid_copy_rolls_back() {
    let source_bytes = {
        // Sized from the lab's data dir, so the disk passes preflight but not a second copy.
        let probe = Lab::up(Version::V36, 1);
        probe.put_many(PREFIX, KEYS, 1024);
        tree_size(&probe.data_dir(1))
    };
    let disk = LoopFs::new("ext4", source_bytes * 3 / 2 + (48 << 20));
    let lab = Lab::up(Version::V36, 3);
    lab.put_many(PREFIX, KEYS, 1024);
    let source = tree_size(&lab.data_dir(1));
    assert!(
        disk.free() >= source + source / 10,
        "the disk ({} free) must pass preflight for {source} bytes",
        disk.free()
    );
    let manifest_before = std::fs::read(lab.manifest(1)).unwrap();
    let to = disk.path().join("etcd");
    let staging = etcdops::datadir::copy::staging_path_for(&to).unwrap();

    let mut apply = Proc::spawn(
        lab.etcdops_cmd(
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
        ),
        "migrate apply",
    );
    wait_for(
        "the copy's staging dir on the loop device",
        Duration::from_secs(120),
        || staging.exists() || apply.exited(),
    );
    assert!(!apply.exited(), "apply ended before its copy began");
    apply.signal(Signal::SIGSTOP);
    wait_for(
        "migrate apply to be stopped",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(format!("/proc/{}/stat", apply.pid()))
                .unwrap_or_default()
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("T")
        },
    );
    assert!(
        staging.exists() && !to.exists(),
        "the copy is not in flight any more"
    );
    let filled = disk.fill("other-tenant.bin");
    println!(
        "filled {filled} bytes beside the copy; {} free",
        disk.free()
    );
    apply.signal(Signal::SIGCONT);
    let exit = apply
        .wait_within(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    println!(
        "apply on a full target: exit {}, {:?}\n{}",
        exit.code,
        exit.took,
        exit.stderr.trim()
    );
    assert_eq!(exit.code, 1, "{}\n{}", exit.stderr, exit.stdout);
    assert_eq!(exit.state(), "rolled-back", "{}", exit.stdout);
    assert!(
        exit.stderr.contains("space"),
        "the error does not say the disk is full: {}",
        exit.stderr
    );
    assert_eq!(exerr_lines(&exit.stderr), 1, "{}", exit.stderr);
    assert_eq!(std::fs::read(lab.manifest(1)).unwrap(), manifest_before);
    assert!(!staging.exists(), "staging dir left: {}", staging.display());
    assert!(!to.exists(), "target left: {}", to.display());
    lab.etcdops(1, &["migrate", "status"], &[]).code(0);
    lab.lab(&["kubelet", "status", "--node", "1"]).code(0);
    healthy_and_agreeing(&lab);
}

fn exerr_lines(stderr: &str) -> usize {
    stderr.lines().filter(|l| !l.trim().is_empty()).count()
}
