//! Who may touch the data: the data dir's owner against the user the etcd container runs
//! as (securityContext `runAsUser`, else root — kubeadm sets `runAsUser` only with its
//! RootlessControlPlane feature gate, KEP-2568), the mode etcd asks for (0700), and the
//! SELinux label a confined container needs (kubeadm#107, #279). The seed runbook's
//! `chown -R 999:999` is judged against the manifest actually in use.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde_yaml::Value;

use super::{Ctx, Verdict, sh};
use crate::datadir::Tree;

/// The uid (and gid) the etcd container runs as, and where that was read.
pub fn container_user(ctx: &Ctx) -> (u32, Option<u32>, String) {
    let Some(text) = &ctx.text else {
        return (0, None, "root (manifest unreadable)".into());
    };
    let Ok(doc) = serde_yaml::from_str::<Value>(text) else {
        return (0, None, "root (manifest unreadable)".into());
    };
    let spec = &doc["spec"];
    let container = spec["containers"]
        .as_sequence()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["name"].as_str() == Some("etcd"))
                .or(cs.first())
        })
        .cloned()
        .unwrap_or(Value::Null);
    let pick = |key: &str| {
        container["securityContext"][key]
            .as_u64()
            .map(|v| (v, "container securityContext"))
            .or_else(|| {
                spec["securityContext"][key]
                    .as_u64()
                    .map(|v| (v, "pod securityContext"))
            })
    };
    match pick("runAsUser") {
        Some((uid, from)) => (
            uid as u32,
            pick("runAsGroup").map(|(g, _)| g as u32),
            format!("uid {uid} ({from} runAsUser)"),
        ),
        None => (
            0,
            None,
            "uid 0 (no runAsUser: the container runs as root)".into(),
        ),
    }
}

/// The SELinux type the pod asks for (`seLinuxOptions.type`), if any.
fn selinux_type(ctx: &Ctx) -> Option<String> {
    let doc: Value = serde_yaml::from_str(ctx.text.as_ref()?).ok()?;
    let spec = &doc["spec"];
    let from_container = spec["containers"].as_sequence().and_then(|cs| {
        cs.iter()
            .find_map(|c| c["securityContext"]["seLinuxOptions"]["type"].as_str())
    });
    from_container
        .or(spec["securityContext"]["seLinuxOptions"]["type"].as_str())
        .map(str::to_string)
}

fn data_dir(ctx: &Ctx) -> Result<std::path::PathBuf, Verdict> {
    let (_, dv) = ctx.pod().map_err(Verdict::skipped)?;
    let p = dv.data_host_path.clone();
    if !p.is_dir() {
        return Err(Verdict::skipped(format!(
            "{} is not a directory (see hostpath.data)",
            p.display()
        )));
    }
    Ok(p)
}

pub fn ownership(ctx: &Ctx) -> Verdict {
    let dir = match data_dir(ctx) {
        Ok(d) => d,
        Err(v) => return v,
    };
    let (uid, gid, who) = container_user(ctx);
    let tree = match Tree::walk(&dir) {
        Ok(t) => t,
        Err(e) => {
            return Verdict::skipped(format!("cannot walk {}: {}", dir.display(), e.one_line()));
        }
    };
    let mut wrong: Vec<String> = Vec::new();
    if tree.root_meta.uid != uid {
        wrong.push(format!(
            "{} is owned by uid {}",
            dir.display(),
            tree.root_meta.uid
        ));
    }
    let others: Vec<&crate::datadir::Entry> =
        tree.entries.iter().filter(|e| e.meta.uid != uid).collect();
    if let Some(first) = others.first() {
        wrong.push(format!(
            "{} entries inside are not owned by uid {uid} (first: {} uid {})",
            others.len(),
            first.rel,
            first.meta.uid
        ));
    }
    let seed = if uid == 999 {
        "the runbook's `chown -R 999:999` matches this manifest".to_string()
    } else {
        format!("the runbook's `chown -R 999:999` does not apply: this manifest runs etcd as {who}")
    };
    if wrong.is_empty() {
        return Verdict::ok(format!(
            "{} and its {} entries are owned by uid {uid}, the container's user: {who}; {seed}",
            dir.display(),
            tree.entries.len()
        ));
    }
    let fix = format!("chown -R {uid}:{} {}", gid.unwrap_or(uid), sh(&dir));
    let evidence = format!("{}; etcd runs as {who}; {seed}", wrong.join("; "));
    if uid == 0 {
        // Root passes permission checks, so etcd still runs; but the next copy or a switch
        // to a non-root pod breaks on it (etcd-io/etcd#12420).
        Verdict::warn(evidence, fix)
    } else {
        Verdict::fail(format!("{evidence}: etcd cannot write its data"), fix)
    }
}

pub fn mode(ctx: &Ctx) -> Verdict {
    let dir = match data_dir(ctx) {
        Ok(d) => d,
        Err(v) => return v,
    };
    let tree = match Tree::walk(&dir) {
        Ok(t) => t,
        Err(e) => {
            return Verdict::skipped(format!("cannot walk {}: {}", dir.display(), e.one_line()));
        }
    };
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    let root_mode = tree.root_meta.mode & 0o7777;
    if root_mode != 0o700 {
        problems.push(format!(
            "{} has mode {root_mode:04o}; etcd asks for 0700 and warns at startup",
            dir.display()
        ));
        fixes.push(format!("chmod 0700 {}", sh(&dir)));
    }
    let writable: Vec<&crate::datadir::Entry> = tree
        .entries
        .iter()
        .filter(|e| e.meta.mode & 0o022 != 0)
        .collect();
    if let Some(first) = writable.first() {
        problems.push(format!(
            "{} entries inside are writable by group or others (first: {} mode {:04o})",
            writable.len(),
            first.rel,
            first.meta.mode & 0o7777
        ));
        fixes.push(format!("chmod -R go-w {}", sh(&dir)));
    }
    if problems.is_empty() {
        Verdict::ok(format!(
            "{} mode 0700; none of its {} entries writable by group or others",
            dir.display(),
            tree.entries.len()
        ))
    } else {
        Verdict::warn(problems.join("; "), fixes.join(" && "))
    }
}

const SELINUX_ENFORCE: &str = "/sys/fs/selinux/enforce";

/// Types a confined container may read and write (`svirt_sandbox_file_t` is the older
/// alias of `container_file_t`).
const CONTAINER_TYPES: &[&str] = &["container_file_t", "svirt_sandbox_file_t"];

pub fn selinux(ctx: &Ctx) -> Verdict {
    let enforce = match std::fs::read_to_string(SELINUX_ENFORCE) {
        Ok(s) => s.trim().to_string(),
        Err(_) => {
            return Verdict::skipped(format!("SELinux is off: {SELINUX_ENFORCE} does not exist"));
        }
    };
    let dir = match data_dir(ctx) {
        Ok(d) => d,
        Err(v) => return v,
    };
    if let Some(t) = selinux_type(ctx).filter(|t| t == "spc_t") {
        return Verdict::ok(format!(
            "the pod runs as SELinux type {t} (not confined): the label of {} does not matter",
            dir.display()
        ));
    }
    let label = match get_label(&dir) {
        Ok(l) => l,
        Err(e) => {
            return Verdict::warn(
                format!("cannot read the SELinux label of {}: {e}", dir.display()),
                format!("ls -Zd {}", sh(&dir)),
            );
        }
    };
    let ty = label.split(':').nth(2).unwrap_or("");
    let evidence = format!(
        "{} is labelled {label}; SELinux {}",
        dir.display(),
        if enforce == "1" {
            "enforcing"
        } else {
            "permissive"
        }
    );
    if CONTAINER_TYPES.contains(&ty) {
        return Verdict::ok(evidence);
    }
    let fix = format!(
        "semanage fcontext -a -t container_file_t '{}(/.*)?' && restorecon -R -v {}",
        dir.display(),
        sh(&dir)
    );
    let why = format!("{evidence}: a confined container needs container_file_t (kubeadm#279)");
    if enforce == "1" {
        Verdict::fail(format!("{why}; etcd gets permission denied"), fix)
    } else {
        Verdict::warn(
            format!("{why}; denials are only logged while permissive"),
            fix,
        )
    }
}

/// The `security.selinux` extended attribute of a path.
fn get_label(path: &Path) -> std::io::Result<String> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path contains a NUL byte"))?;
    let name = c"security.selinux";
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated; the buffer length is passed along.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(String::from_utf8_lossy(&buf)
        .trim_end_matches('\0')
        .to_string())
}
