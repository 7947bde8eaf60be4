//! Finding etcd's own restore tool and an etcd binary to run a restored data dir with.
//!
//! The restore tool is `etcdutl` (3.5 and later) or, on 3.4, `etcdctl` (whose `snapshot
//! restore` is the same code). Searched, in order: the flag; `etcdutl` on `PATH`; `etcdutl`
//! next to the manifest's etcd binary; then the same two places for `etcdctl` — only an
//! etcdctl whose `snapshot --help` still lists `restore`: etcd 3.6 removed `etcdctl snapshot
//! restore` (CHANGELOG-3.6, etcd-io/etcd#13809), and etcdctl 3.6.17 answers `snapshot
//! restore FILE` with its help text and exit 0, restoring nothing. When nothing is found
//! the refusal lists every place looked at. The etcd binary for a trial restore: the
//! flag, else next to the tool, else `PATH`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manifest::StaticPod;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    /// `etcdutl snapshot restore`.
    Etcdutl,
    /// `ETCDCTL_API=3 etcdctl snapshot restore` (etcd 3.4).
    Etcdctl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreTool {
    pub path: PathBuf,
    pub kind: ToolKind,
}

/// The restore tool and the etcd binary that runs what it restored.
#[derive(Debug, Clone)]
pub struct EtcdBinaries {
    pub tool: RestoreTool,
    pub etcd: PathBuf,
}

fn executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The tools run in a work dir of their own: a relative path from the command line must not
/// change meaning there.
fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| Error::io("resolve", p, e))
}

fn kind_of(path: &Path) -> ToolKind {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("etcdctl") {
        ToolKind::Etcdctl
    } else {
        ToolKind::Etcdutl
    }
}

/// Whether this etcdctl still restores: `snapshot --help` lists a `restore` command (3.4,
/// 3.5 do; 3.6 and later do not).
pub fn etcdctl_restores(path: &Path) -> bool {
    let Ok(out) = std::process::Command::new(path)
        .args(["snapshot", "--help"])
        .env("ETCDCTL_API", "3")
        .stdin(std::process::Stdio::null())
        .output()
    else {
        return false;
    };
    let help = String::from_utf8_lossy(&out.stdout);
    help.lines()
        .skip_while(|l| l.trim() != "COMMANDS:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .any(|l| l.split_whitespace().next() == Some("restore"))
}

/// The directories of `PATH`, as given.
fn path_dirs(path_var: Option<&std::ffi::OsStr>) -> Vec<PathBuf> {
    path_var
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default()
}

/// The dir of the manifest's etcd binary when the command names it by an absolute path
/// that exists on this host (kubeadm's image runs plain `etcd`; a host-installed etcd does
/// not).
pub fn manifest_etcd_dir(manifest: &Path) -> Option<PathBuf> {
    let pod = StaticPod::load(manifest).ok()?;
    let c = pod.etcd_container().ok()?;
    let bin = c.command.first()?;
    let p = Path::new(bin);
    (p.is_absolute() && p.exists())
        .then(|| p.parent().map(Path::to_path_buf))
        .flatten()
}

/// Find the restore tool: `flag`, then `PATH` and `beside` (the manifest's etcd dir) for
/// etcdutl, then for etcdctl. A flag naming no executable is bad input (exit 2); nothing
/// found is a refusal (exit 4) that lists where it looked.
pub fn find_restore_tool(
    flag: Option<&Path>,
    path_var: Option<&std::ffi::OsStr>,
    beside: Option<&Path>,
) -> Result<RestoreTool> {
    if let Some(f) = flag {
        if !executable(f) {
            return Err(Error::input(f, "--etcdutl is not an executable file"));
        }
        if kind_of(f) == ToolKind::Etcdctl && !etcdctl_restores(f) {
            return Err(Error::input(
                f,
                "--etcdutl: this etcdctl has no `snapshot restore` (etcd 3.6 moved it to etcdutl): pass the etcdutl of the same release",
            ));
        }
        return Ok(RestoreTool {
            path: absolute(f)?,
            kind: kind_of(f),
        });
    }
    let mut dirs = path_dirs(path_var);
    if let Some(b) = beside {
        dirs.push(b.to_path_buf());
    }
    let mut looked = Vec::new();
    for (name, kind) in [
        ("etcdutl", ToolKind::Etcdutl),
        ("etcdctl", ToolKind::Etcdctl),
    ] {
        for d in &dirs {
            let p = d.join(name);
            if executable(&p) {
                if kind == ToolKind::Etcdctl && !etcdctl_restores(&p) {
                    looked.push(format!("{} (etcd 3.6+: no snapshot restore)", p.display()));
                    continue;
                }
                return Ok(RestoreTool { path: p, kind });
            }
            looked.push(p.display().to_string());
        }
    }
    Err(Error::refused(
        "find etcd's restore tool",
        format!(
            "no etcdutl or etcdctl found (looked at {}); pass --etcdutl PATH",
            if looked.is_empty() {
                "nothing: PATH is empty and the manifest's etcd is not a host path".to_string()
            } else {
                looked.join(", ")
            }
        ),
    ))
}

/// The etcd binary for a trial restore: `flag`, else next to the tool, else on `PATH`.
pub fn find_etcd(
    flag: Option<&Path>,
    tool: &RestoreTool,
    path_var: Option<&std::ffi::OsStr>,
) -> Result<PathBuf> {
    if let Some(f) = flag {
        if !executable(f) {
            return Err(Error::input(f, "--etcd is not an executable file"));
        }
        return absolute(f);
    }
    let mut looked = Vec::new();
    let beside = tool.path.parent().map(|d| d.join("etcd"));
    for p in beside
        .into_iter()
        .chain(path_dirs(path_var).into_iter().map(|d| d.join("etcd")))
    {
        if executable(&p) {
            return Ok(p);
        }
        looked.push(p.display().to_string());
    }
    Err(Error::refused(
        "find an etcd binary for the trial restore",
        format!(
            "no etcd found (looked at {}); pass --etcd PATH",
            looked.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn exe(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        // An etcdctl that restores, as 3.4 and 3.5 answer `snapshot --help`.
        std::fs::write(
            &p,
            "#!/bin/sh\nprintf 'COMMANDS:\\n\\trestore\\tRestores\\n\\tsave\\tStores\\n\\nOPTIONS:\\n'\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn etcdutl_wins_over_etcdctl_and_path_over_beside() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let path = OsString::from(a.path());
        exe(a.path(), "etcdctl");
        let beside_utl = exe(b.path(), "etcdutl");
        let t = find_restore_tool(None, Some(&path), Some(b.path())).unwrap();
        assert_eq!(t.path, beside_utl);
        assert_eq!(t.kind, ToolKind::Etcdutl);
        let path_utl = exe(a.path(), "etcdutl");
        let t = find_restore_tool(None, Some(&path), Some(b.path())).unwrap();
        assert_eq!(t.path, path_utl);
        std::fs::remove_file(&path_utl).unwrap();
        std::fs::remove_file(&beside_utl).unwrap();
        let t = find_restore_tool(None, Some(&path), Some(b.path())).unwrap();
        assert_eq!(t.kind, ToolKind::Etcdctl);
        let etcd = exe(a.path(), "etcd");
        assert_eq!(find_etcd(None, &t, None).unwrap(), etcd);
    }

    #[test]
    fn missing_tool_says_where_it_looked() {
        let a = tempfile::tempdir().unwrap();
        let path = OsString::from(a.path());
        let e = find_restore_tool(None, Some(&path), None).unwrap_err();
        assert_eq!(e.exit_code(), 4);
        let line = e.one_line();
        assert!(
            line.contains(&a.path().join("etcdutl").display().to_string()),
            "{line}"
        );
        assert!(line.contains("etcdctl"), "{line}");
        let not_exe = a.path().join("plain");
        std::fs::write(&not_exe, "x").unwrap();
        assert_eq!(
            find_restore_tool(Some(&not_exe), None, None)
                .unwrap_err()
                .exit_code(),
            2
        );
    }
}
