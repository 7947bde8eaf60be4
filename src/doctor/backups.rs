//! The node's copies of the cluster: archives in the backup dir (`<state-dir>/backups`) and
//! the snapshots runs keep (`<state-dir>/runs/<id>/snapshot.db`). Each holds every Secret
//! and the CA's private keys, so whoever reads one owns the cluster: an archive should be
//! encrypted to recipients whose private keys live off the node, and no copy should be
//! readable by group or others.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{Ctx, Verdict, sh};
use crate::backup::{default_dir, is_archive_name, is_encrypted_name};

/// Regular files in `dir` whose names pass `keep`, sorted; nothing when `dir` is absent.
fn files(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, String> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if keep(&name) && e.file_type().is_ok_and(|t| t.is_file()) {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

fn names(paths: &[PathBuf]) -> String {
    let mut shown: Vec<String> = paths
        .iter()
        .take(3)
        .map(|p| p.display().to_string())
        .collect();
    if paths.len() > 3 {
        shown.push(format!("and {} more", paths.len() - 3));
    }
    shown.join(", ")
}

/// `backups.encrypted`: warn about plain archives in the backup dir.
pub fn encrypted(ctx: &Ctx) -> Verdict {
    let dir = default_dir(&ctx.opts.state_dir);
    let archives = match files(&dir, is_archive_name) {
        Ok(a) => a,
        Err(e) => return Verdict::warn(e, format!("ls -l {}", sh(&dir))),
    };
    if archives.is_empty() {
        return Verdict::ok(format!("no archives in {}", dir.display()));
    }
    let plain: Vec<PathBuf> = archives
        .iter()
        .filter(|p| !is_encrypted_name(&p.file_name().unwrap_or_default().to_string_lossy()))
        .cloned()
        .collect();
    if plain.is_empty() {
        return Verdict::ok(format!(
            "all {} archives in {} are encrypted (age)",
            archives.len(),
            dir.display()
        ));
    }
    Verdict::warn(
        format!(
            "{} of {} archives in {} are not encrypted; each holds every Secret and the CA keys: {}",
            plain.len(),
            archives.len(),
            dir.display(),
            names(&plain)
        ),
        format!(
            "back up with `{}` (key management: docs/runbooks/snapshot-backup-restore.md), then remove the plain archives",
            ctx.etcdops("backup --recipients-file /etc/etcdops/backup-recipients")
        ),
    )
}

/// `backups.perms`: archives and snapshots that group or others may read.
pub fn perms(ctx: &Ctx) -> Verdict {
    let state = &ctx.opts.state_dir;
    let backups = default_dir(state);
    let mut all = match files(&backups, |n| is_archive_name(n) || n.ends_with(".db")) {
        Ok(a) => a,
        Err(e) => return Verdict::warn(e, format!("ls -l {}", sh(&backups))),
    };
    let runs = crate::run::runs_dir(state);
    if let Ok(rd) = fs::read_dir(&runs) {
        let mut dirs: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        for d in dirs {
            match files(&d, |n| n.ends_with(".db")) {
                Ok(f) => all.extend(f),
                Err(e) => return Verdict::warn(e, format!("ls -l {}", sh(&d))),
            }
        }
    }
    let readable: Vec<(PathBuf, u32)> = all
        .iter()
        .filter_map(|p| {
            let mode = fs::metadata(p).ok()?.permissions().mode() & 0o7777;
            (mode & 0o044 != 0).then(|| (p.clone(), mode))
        })
        .collect();
    if readable.is_empty() {
        return Verdict::ok(format!(
            "{} archives and snapshots under {}, none readable by group or others",
            all.len(),
            state.display()
        ));
    }
    let paths: Vec<PathBuf> = readable.iter().map(|(p, _)| p.clone()).collect();
    Verdict::warn(
        format!(
            "{} archives or snapshots are readable by group or others: {}",
            readable.len(),
            readable
                .iter()
                .take(3)
                .map(|(p, m)| format!("{} ({m:04o})", p.display()))
                .collect::<Vec<_>>()
                .join(", ")
                + &if readable.len() > 3 {
                    format!(" and {} more", readable.len() - 3)
                } else {
                    String::new()
                }
        ),
        format!(
            "chmod 0600 {}",
            paths.iter().map(sh).collect::<Vec<_>>().join(" ")
        ),
    )
}
