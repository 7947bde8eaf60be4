//! Checks of the static pod as kubelet sees it: the manifest parses, no other file in the
//! manifests dir starts a second etcd (kubernetes#129364, kubeadm#2823), every hostPath has
//! the type the manifest asks for, and the data hostPath holds a member — an empty dir
//! under `DirectoryOrCreate` would make etcd bootstrap a NEW member; a fence left by
//! `migrate finalize` says where the data went.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::{Ctx, Verdict, sh};
use crate::datadir::Layout;
use crate::manifest::StaticPod;

/// The first words of the fence `migrate finalize` writes at the old data path.
const FENCE_PREFIX: &str = "etcd data moved to ";

pub fn parse(ctx: &Ctx) -> Verdict {
    let path = &ctx.opts.manifest;
    let pod = match &ctx.pod {
        Ok(p) => p,
        Err(e) => {
            // A run moves the manifest out while etcd is stopped: putting a backup back by
            // hand would race it; the run itself puts the manifest back.
            if !path.exists()
                && let Some(id) = super::runs::unfinished_run(&ctx.opts.state_dir)
            {
                return Verdict::fail(
                    format!("{e}: run {id} moved it out and did not finish"),
                    ctx.etcdops(&format!("migrate resume --id {id}")),
                );
            }
            return Verdict::fail(e.clone(), restore_fix(ctx));
        }
    };
    let container = match pod.etcd_container() {
        Ok(c) => c,
        Err(e) => return Verdict::fail(e.one_line(), restore_fix(ctx)),
    };
    match pod.data_volume() {
        Ok(dv) => Verdict::ok(format!(
            "{}: pod {}, container {}, --data-dir {} on volume {} = hostPath {} ({}), {} mounts",
            path.display(),
            pod.pod.metadata.name,
            container.name,
            dv.data_dir,
            dv.volume,
            dv.data_host_path.display(),
            dv.host_path_type.as_deref().unwrap_or("no type"),
            container.volume_mounts.len()
        )),
        Err(e) => Verdict::fail(e.one_line(), restore_fix(ctx)),
    }
}

/// The last manifest etcdops saved (`manifest set-data-path` backups), to put back.
fn restore_fix(ctx: &Ctx) -> String {
    let latest = saved_manifests(&ctx.opts.state_dir).into_iter().last();
    match latest {
        Some(b) => format!("cp {} {}", sh(b), sh(&ctx.opts.manifest)),
        None => format!(
            "edit {}: correct what the evidence names (kubelet starts nothing from a manifest that does not parse)",
            ctx.opts.manifest.display()
        ),
    }
}

/// Manifest backups in the state dir, oldest first (names end in a sortable UTC time).
fn saved_manifests(state_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(state_dir.join("backups"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub fn strays(ctx: &Ctx) -> Verdict {
    let manifest = &ctx.opts.manifest;
    let Some(dir) = manifest.parent() else {
        return Verdict::skipped("the manifest path has no parent dir");
    };
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => return Verdict::skipped(format!("cannot list {}: {e}", dir.display())),
    };
    let own_data = ctx.data.as_ref().map(|d| d.data_host_path.clone());
    let mut second_etcd = Vec::new();
    let mut unloadable = Vec::new();
    let mut other_pods = Vec::new();
    let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        // kubelet ignores dotfiles and does not recurse into directories.
        if name.as_deref().is_none_or(|n| n.starts_with('.')) || path == *manifest || path.is_dir()
        {
            continue;
        }
        match StaticPod::load(&path) {
            Ok(pod) => {
                let same_data = pod
                    .data_volume()
                    .ok()
                    .is_some_and(|d| Some(&d.data_host_path) == own_data.as_ref());
                if pod.pod.metadata.name == "etcd" || same_data {
                    second_etcd.push(path);
                } else {
                    other_pods.push(format!(
                        "{} (pod {})",
                        path.display(),
                        pod.pod.metadata.name
                    ));
                }
            }
            Err(e) => unloadable.push((path, e.one_line())),
        }
    }
    let aside = ctx.opts.state_dir.join("stray-manifests");
    let fix = |paths: Vec<&PathBuf>| {
        format!(
            "mkdir -p {} && mv {} {}/",
            sh(&aside),
            paths.iter().map(sh).collect::<Vec<_>>().join(" "),
            sh(&aside)
        )
    };
    let others = if other_pods.is_empty() {
        String::new()
    } else {
        format!("; other static pods: {}", other_pods.join(", "))
    };
    if !second_etcd.is_empty() {
        let mut all: Vec<&PathBuf> = second_etcd.iter().collect();
        all.extend(unloadable.iter().map(|(p, _)| p));
        return Verdict::fail(
            format!(
                "kubelet loads every non-dot file in {}: {} would start a second etcd pod on the same data{}",
                dir.display(),
                second_etcd
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                others
            ),
            fix(all),
        );
    }
    if !unloadable.is_empty() {
        return Verdict::warn(
            format!(
                "kubelet loads every non-dot file in {} and logs an error for each it cannot parse: {}{}",
                dir.display(),
                unloadable
                    .iter()
                    .map(|(p, e)| format!("{} ({e})", p.display()))
                    .collect::<Vec<_>>()
                    .join(", "),
                others
            ),
            fix(unloadable.iter().map(|(p, _)| p).collect()),
        );
    }
    Verdict::ok(format!("no stray file in {}{}", dir.display(), others))
}

/// What a path is, as kubelet's hostPath type check sees it (symlinks followed).
fn kind_of(path: &Path) -> Option<&'static str> {
    let m = fs::metadata(path).ok()?;
    let t = m.file_type();
    Some(if t.is_dir() {
        "Directory"
    } else if t.is_file() {
        "File"
    } else if t.is_socket() {
        "Socket"
    } else if t.is_char_device() {
        "CharDevice"
    } else if t.is_block_device() {
        "BlockDevice"
    } else {
        "other"
    })
}

pub fn host_path_types(ctx: &Ctx) -> Verdict {
    let (pod, data) = match ctx.pod() {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let Ok(container) = pod.etcd_container() else {
        return Verdict::skipped("no etcd container");
    };
    let mut seen = Vec::new();
    let mut bad = Vec::new();
    let mut fixes = Vec::new();
    for m in &container.volume_mounts {
        let Ok((_, vol)) = pod.volume(&m.name) else {
            continue;
        };
        let Some(hp) = &vol.host_path else { continue };
        if vol.name == data.volume {
            continue; // judged by hostpath.data
        }
        let path = PathBuf::from(&hp.path);
        let want = hp.kind.clone().unwrap_or_default();
        let have = kind_of(&path);
        let shown = format!(
            "{} ({}) is {}",
            path.display(),
            if want.is_empty() { "no type" } else { &want },
            have.unwrap_or("absent")
        );
        let ok = match (want.as_str(), have) {
            ("", _) => true,
            ("DirectoryOrCreate", None) | ("FileOrCreate", None) => true,
            ("DirectoryOrCreate" | "Directory", Some("Directory")) => true,
            ("FileOrCreate" | "File", Some("File")) => true,
            (w, Some(h)) if w == h => true,
            _ => false,
        };
        if ok {
            seen.push(shown);
        } else {
            fixes.push(match (want.as_str(), have) {
                ("Directory", None) => format!("mkdir -p {}", sh(&path)),
                ("File", None) => format!("put the file the pod expects at {}", path.display()),
                _ => format!(
                    "mv {p} {p}.moved-by-operator && mkdir -p {p}",
                    p = sh(&path)
                ),
            });
            bad.push(shown);
        }
    }
    if bad.is_empty() {
        Verdict::ok(if seen.is_empty() {
            "no hostPath besides the data volume".to_string()
        } else {
            seen.join("; ")
        })
    } else {
        Verdict::fail(
            format!("kubelet refuses to start the pod: {}", bad.join("; ")),
            fixes.join(" && "),
        )
    }
}

pub fn data_host_path(ctx: &Ctx) -> Verdict {
    let (_, dv) = match ctx.pod() {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let p = &dv.data_host_path;
    let kind = dv.host_path_type.as_deref().unwrap_or("");
    let problem = match kind_of(p) {
        None if kind == "Directory" => {
            format!(
                "{} does not exist: kubelet refuses to start the pod (type Directory)",
                p.display()
            )
        }
        None => format!(
            "{} does not exist: kubelet would create it empty ({}) and etcd would bootstrap a NEW member",
            p.display(),
            if kind.is_empty() { "no type" } else { kind }
        ),
        Some("File") => {
            let text = fs::read(p)
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(4096)]).into_owned())
                .unwrap_or_default();
            if let Some(to) = fence_target(&text) {
                return Verdict::fail(
                    format!(
                        "{} is the fence `etcdops migrate finalize` left: the data moved to {}; this manifest still points at the old path (reverted by kubeadm upgrade?) and kubelet refuses to start etcd",
                        p.display(),
                        to.display()
                    ),
                    ctx.etcdops(&format!("manifest set-data-path {}", sh(&to))),
                );
            }
            format!(
                "{} is a file, not a directory: kubelet refuses to start the pod",
                p.display()
            )
        }
        Some("Directory") => match Layout::open(p) {
            Ok(layout) => {
                let db = fs::metadata(&layout.db).map(|m| m.len()).unwrap_or(0);
                return Verdict::ok(format!(
                    "{} holds a member: member/snap/db {} bytes, {} WAL files",
                    p.display(),
                    db,
                    layout.wal_files.len()
                ));
            }
            Err(e) => {
                let empty = fs::read_dir(p)
                    .map(|mut rd| rd.next().is_none())
                    .unwrap_or(false);
                if empty {
                    format!(
                        "{} is an empty directory: etcd would bootstrap a NEW member there (a mistyped hostPath under {})",
                        p.display(),
                        if kind.is_empty() { "no type" } else { kind }
                    )
                } else {
                    format!("{} holds no etcd member: {}", p.display(), e.one_line())
                }
            }
        },
        Some(other) => format!("{} is a {other}, not a directory", p.display()),
    };
    let candidates = member_dirs_elsewhere(ctx, p);
    match candidates.first() {
        Some(found) => Verdict::fail(
            format!(
                "{problem}; a member's data is at {}",
                candidates
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ctx.etcdops(&format!("manifest set-data-path {}", sh(found))),
        ),
        None => Verdict::fail(
            format!("{problem}; no other data dir of this member is known to etcdops"),
            format!(
                "point the manifest at the directory that holds member/ ({}), or restore this member from a snapshot: etcdutl snapshot restore SNAPSHOT --data-dir {} --name NAME --initial-cluster ... --initial-advertise-peer-urls ...",
                ctx.etcdops("manifest set-data-path DIR"),
                sh(p)
            ),
        ),
    }
}

/// The new data path named by a finalize fence.
fn fence_target(text: &str) -> Option<PathBuf> {
    let rest = text.strip_prefix(FENCE_PREFIX)?;
    let end = rest.find(" by etcdops run")?;
    Some(PathBuf::from(&rest[..end]))
}

/// Data dirs of this member that etcdops knows of, newest db first: the data paths of
/// saved manifests, the from/to of runs, and old data kept aside by finalize.
fn member_dirs_elsewhere(ctx: &Ctx, current: &Path) -> Vec<PathBuf> {
    let mut seen: Vec<PathBuf> = Vec::new();
    for b in saved_manifests(&ctx.opts.state_dir) {
        if let Ok(pod) = StaticPod::load(&b)
            && let Ok(dv) = pod.data_volume()
        {
            seen.push(dv.data_host_path);
        }
    }
    if let Ok(runs) = crate::run::list_runs(&ctx.opts.state_dir) {
        for r in runs {
            let id = r.file_name().map(|n| n.to_string_lossy().into_owned());
            if let Ok(rep) = crate::runs::status(&ctx.opts.state_dir, id.as_deref()) {
                seen.push(rep.to.clone());
                seen.push(rep.from.clone());
                seen.push(PathBuf::from(format!(
                    "{}.etcdops-old-{}",
                    rep.from.display(),
                    rep.id
                )));
            }
        }
    }
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for p in seen {
        if p == current || found.iter().any(|(_, f)| *f == p) {
            continue;
        }
        if let Ok(layout) = Layout::open(&p) {
            let t = fs::metadata(&layout.db)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            found.push((t, p));
        }
    }
    found.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
    found.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fence_finalize_writes() {
        let text = "etcd data moved to /mnt/new/etcd by etcdops run 20260101T000000Z (old data removed).\nThis file...";
        assert_eq!(fence_target(text), Some(PathBuf::from("/mnt/new/etcd")));
        assert_eq!(fence_target("hello"), None);
    }
}
