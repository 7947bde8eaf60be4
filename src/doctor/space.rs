//! Room to run: free bytes and inodes on the data dir's filesystem against the db size
//! (a defrag writes a new db beside the old one: about the db size free) and against the
//! quota (the db may grow to it); the db size against the quota (etcd raises NOSPACE at
//! it); and the alarms etcd has raised, with the command that clears each.

use std::path::{Path, PathBuf};

use nix::sys::statfs::{TMPFS_MAGIC, statfs};
use nix::sys::statvfs::statvfs;

use super::{Ctx, Verdict, sh};
use crate::output::bytes;

/// Below this many free inodes etcd cannot count on a new WAL segment or snapshot file.
const MIN_FREE_INODES: u64 = 64;
/// Fewer free inodes than this warns.
const WARN_FREE_INODES: u64 = 1000;
/// db size / quota at which space.quota warns and fails.
pub const QUOTA_WARN: f64 = 0.80;
pub const QUOTA_FAIL: f64 = 0.95;

/// The db size: the file on disk (what etcd judges the quota on), else what status says.
fn db_size(ctx: &Ctx, dir: &Path) -> Option<u64> {
    std::fs::metadata(dir.join("member/snap/db"))
        .map(|m| m.len())
        .ok()
        .or_else(|| ctx.local_status().map(|s| s.db_size))
}

/// The data dir, or its nearest existing ancestor (which decides the filesystem).
fn existing(dir: &Path) -> PathBuf {
    let mut p = dir.to_path_buf();
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent.to_path_buf(),
            None => break,
        }
    }
    p
}

pub fn free(ctx: &Ctx) -> Verdict {
    let (_, dv) = match ctx.pod() {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let dir = &dv.data_host_path;
    let at = existing(dir);
    let vfs = match statvfs(&at) {
        Ok(v) => v,
        Err(e) => return Verdict::skipped(format!("statvfs {}: {e}", at.display())),
    };
    let frsize = vfs.fragment_size() as u64;
    let free = vfs.blocks_available() as u64 * frsize;
    let total = vfs.blocks() as u64 * frsize;
    let inodes_total = vfs.files() as u64;
    let inodes_free = vfs.files_available() as u64;
    let mount = crate::mounts::locate(&at)
        .map(|l| l.mount_point)
        .unwrap_or_else(|_| at.clone());
    let tmpfs = statfs(&at).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC);
    let db = db_size(ctx, dir).unwrap_or(0);
    let quota = ctx.quota();
    let evidence = format!(
        "{} on {}{}: {} free of {}, {} inodes free; db {}, quota {}",
        dir.display(),
        mount.display(),
        if tmpfs { " (tmpfs)" } else { "" },
        bytes(free),
        bytes(total),
        if inodes_total == 0 {
            "unlimited".to_string()
        } else {
            inodes_free.to_string()
        },
        bytes(db),
        bytes(quota)
    );
    // Enough to go fully ok again: room for the db to reach the quota.
    let fix_for = |need: u64| -> String {
        if tmpfs {
            let more = need.saturating_sub(free);
            let mib = (total + more).div_ceil(1 << 20) + 1;
            format!("mount -o remount,size={mib}m {}", sh(&mount))
        } else {
            format!(
                "free at least {} on {} (remove other files there, or grow the filesystem: resize2fs / xfs_growfs after growing the device), or move the data to a bigger disk: {}",
                bytes(need.saturating_sub(free)),
                mount.display(),
                ctx.etcdops("migrate plan --to /NEW/DISK/etcd")
            )
        }
    };
    if free < db {
        return Verdict::fail(
            format!("{evidence}: less free than the db size, so a defrag cannot run"),
            fix_for(quota),
        );
    }
    if inodes_total > 0 && inodes_free < MIN_FREE_INODES {
        return Verdict::fail(
            format!("{evidence}: etcd cannot create its next WAL segment or snapshot"),
            format!(
                "free inodes on {}: remove small files there, or move the data: {}",
                mount.display(),
                ctx.etcdops("migrate plan --to /NEW/DISK/etcd")
            ),
        );
    }
    if free < quota {
        return Verdict::warn(
            format!("{evidence}: the disk fills before the db reaches its quota"),
            fix_for(quota),
        );
    }
    if inodes_total > 0 && inodes_free < WARN_FREE_INODES {
        return Verdict::warn(
            format!("{evidence}: few inodes left"),
            format!(
                "free inodes on {}: remove small files there",
                mount.display()
            ),
        );
    }
    Verdict::ok(evidence)
}

pub fn quota(ctx: &Ctx) -> Verdict {
    let (_, dv) = match ctx.pod() {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let Some(db) = db_size(ctx, &dv.data_host_path) else {
        return Verdict::skipped(format!(
            "no db at {} and etcd did not answer",
            dv.data_host_path.join("member/snap/db").display()
        ));
    };
    let quota = ctx.quota();
    let in_use = ctx.local_status().map(|s| s.db_size_in_use);
    let ratio = db as f64 / quota as f64;
    let evidence = format!(
        "db {} ({}){} is {:.1}% of the quota {}",
        bytes(db),
        dv.data_host_path.join("member/snap/db").display(),
        in_use.map_or(String::new(), |u| format!(", {} in use", bytes(u))),
        ratio * 100.0,
        bytes(quota)
    );
    if ratio < QUOTA_WARN {
        return Verdict::ok(evidence);
    }
    // Mostly free pages: compaction and defrag give them back; else the quota is too small.
    let fix = if in_use.is_some_and(|u| (u as f64) < 0.8 * db as f64) {
        ctx.etcdops("defrag --cluster --compact")
    } else {
        format!(
            "edit {}: set --quota-backend-bytes={} in the etcd command (etcd suggests at most 8 GiB), on every member",
            ctx.opts.manifest.display(),
            (quota * 2).min(8 << 30)
        )
    };
    if ratio >= QUOTA_FAIL {
        Verdict::fail(format!("{evidence}: etcd raises NOSPACE at the quota"), fix)
    } else {
        Verdict::warn(evidence, fix)
    }
}

pub fn alarms(ctx: &Ctx) -> Verdict {
    let facts = match ctx.etcd() {
        Ok(f) => f,
        Err(e) => return Verdict::skipped(format!("cannot ask etcd: {e}")),
    };
    if !facts.health.alarms_listed {
        return Verdict::skipped(format!(
            "no member answered the alarm list ({})",
            facts.health.problems.join("; ")
        ));
    }
    let alarms = &facts.health.alarms;
    if alarms.is_empty() {
        return Verdict::ok("no active alarm");
    }
    let list: Vec<String> = alarms
        .iter()
        .map(|a| format!("{} on member {}", a.alarm, a.member_id))
        .collect();
    let fix = if alarms.iter().any(|a| a.alarm == "CORRUPT") {
        let members: Vec<&str> = alarms
            .iter()
            .filter(|a| a.alarm == "CORRUPT")
            .map(|a| a.member_id.as_str())
            .collect();
        format!(
            "replace the corrupt member {} from the healthy ones: on its node run {}",
            members.join(", "),
            ctx.etcdops("member rejoin")
        )
    } else {
        // maintain compacts, defrags every member and disarms NOSPACE once all are below
        // 0.9 x quota (DESIGN.md, "maintain").
        ctx.etcdops("maintain")
    };
    Verdict::fail(
        format!("active alarms: {}: etcd refuses writes", list.join(", ")),
        fix,
    )
}
