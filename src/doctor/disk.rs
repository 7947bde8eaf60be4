//! The disk's fdatasync latency, measured as etcd's docs measure it (fio
//! `--rw=write --ioengine=sync --fdatasync=1 --size=22m --bs=2300`): sequential 2300-byte
//! writes, fdatasync after each, 22 MiB in all, in a temp dir on the data dir's filesystem,
//! removed afterwards. p99 under 10 ms is good; over 100 ms fails (the etcd mixin alerts at
//! 500 ms WAL fsync). Off by default: on a busy node it adds load.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Ctx, Verdict, sh};
use crate::output::bytes;

pub const BLOCK: usize = 2300;
pub const TOTAL: u64 = 22 * 1024 * 1024;
pub const WARN_P99: Duration = Duration::from_millis(10);
pub const FAIL_P99: Duration = Duration::from_millis(100);

/// The probe's temp dir, removed on drop (also when the probe fails half-way).
struct ProbeDir(PathBuf);

impl Drop for ProbeDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Latencies of each fdatasync, in write order.
pub fn probe(dir: &Path, total: u64) -> std::io::Result<Vec<Duration>> {
    let tmp = ProbeDir(dir.join(format!(".etcdops-disk-probe-{}", std::process::id())));
    fs::DirBuilder::new().mode(0o700).create(&tmp.0)?;
    let mut f = File::create(tmp.0.join("probe"))?;
    let block = [0xa5u8; BLOCK];
    let mut written = 0u64;
    let mut lat = Vec::with_capacity((total / BLOCK as u64 + 1) as usize);
    while written < total {
        f.write_all(&block)?;
        let t = Instant::now();
        f.sync_data()?;
        lat.push(t.elapsed());
        written += BLOCK as u64;
    }
    Ok(lat)
}

/// The p-th percentile (nearest rank) of latencies.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The verdict for measured percentiles.
pub fn judge(where_: &str, n: usize, p50: Duration, p99: Duration, fix: String) -> Verdict {
    let ms = |d: Duration| format!("{:.2}ms", d.as_secs_f64() * 1000.0);
    let evidence = format!(
        "{n} fdatasyncs of 2300-byte writes in {where_}: p50 {}, p99 {}",
        ms(p50),
        ms(p99)
    );
    if p99 > FAIL_P99 {
        Verdict::fail(
            format!("{evidence} (over 100 ms: leader elections and timeouts)"),
            fix,
        )
    } else if p99 > WARN_P99 {
        Verdict::warn(format!("{evidence} (etcd wants p99 under 10 ms)"), fix)
    } else {
        Verdict::ok(evidence)
    }
}

/// Where the probe writes: beside the data dir when that is on the same filesystem, else
/// inside it (a data dir that is its own mount point).
fn probe_parent(data: &Path) -> Option<PathBuf> {
    let dev = fs::metadata(data).ok()?.dev();
    match data.parent() {
        Some(parent) if fs::metadata(parent).is_ok_and(|m| m.dev() == dev) => {
            Some(parent.to_path_buf())
        }
        _ => Some(data.to_path_buf()),
    }
}

pub fn latency(ctx: &Ctx) -> Verdict {
    if !ctx.opts.disk_probe {
        return Verdict::skipped(
            "off by default (it writes 22 MiB with an fdatasync every 2300 bytes); run with --disk-probe",
        );
    }
    let (_, dv) = match ctx.pod() {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let data = &dv.data_host_path;
    let Some(parent) = probe_parent(data).filter(|_| data.is_dir()) else {
        return Verdict::skipped(format!(
            "{} is not a directory (see hostpath.data)",
            data.display()
        ));
    };
    let free = nix::sys::statvfs::statvfs(&parent)
        .map(|v| v.blocks_available() * v.fragment_size())
        .unwrap_or(0);
    // Never take the last free bytes from etcd.
    if free < 2 * TOTAL {
        return Verdict::skipped(format!(
            "only {} free on the filesystem of {}: the probe needs {}",
            bytes(free),
            data.display(),
            bytes(2 * TOTAL)
        ));
    }
    let mut lat = match probe(&parent, TOTAL) {
        Ok(l) => l,
        Err(e) => {
            return Verdict::skipped(format!("the probe in {} failed: {e}", parent.display()));
        }
    };
    lat.sort();
    judge(
        &parent.display().to_string(),
        lat.len(),
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        format!(
            "move the data dir to a faster disk (SSD/NVMe, without other busy I/O): {}",
            ctx.etcdops(&format!("migrate plan --to {}", sh("/FAST/DISK/etcd")))
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let ms = Duration::from_millis;
        assert_eq!(
            judge("d", 1, ms(1), ms(9), "f".into()).status,
            super::super::Status::Ok
        );
        assert_eq!(
            judge("d", 1, ms(1), ms(11), "f".into()).status,
            super::super::Status::Warn
        );
        assert_eq!(
            judge("d", 1, ms(5), ms(101), "f".into()).status,
            super::super::Status::Fail
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_millis(1));
    }

    #[test]
    fn probe_writes_blocks_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // 100 blocks: the method, not the 22 MiB (the lab tests run the real size).
        let lat = probe(dir.path(), 100 * BLOCK as u64).unwrap();
        assert_eq!(lat.len(), 100);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
