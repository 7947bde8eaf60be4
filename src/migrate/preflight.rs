//! Step 1: every check before anything changes. `migrate plan` prints them; `apply` refuses
//! (exit 4, or 2 for bad input) unless all pass. The checks only read.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use super::{Identity, Plan};
use crate::datadir::{Layout, Tree};
use crate::error::{Error, Result};
use crate::manifest::StaticPod;
use crate::run::host::Host;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct PreflightReport {
    pub ok: bool,
    pub checks: Vec<Check>,
    pub warnings: Vec<String>,
    pub from: Option<PathBuf>,
    pub to: PathBuf,
    pub steps: Vec<String>,
    /// What the operator should change so that `kubeadm upgrade` keeps the new path.
    pub kubeadm_config: String,
    #[serde(skip)]
    pub plan: Option<Plan>,
    /// The first failed check's error, with its exit code.
    #[serde(skip)]
    pub refusal: Option<Error>,
}

pub struct PreflightInput<'a> {
    pub manifest: &'a Path,
    pub state_dir: &'a Path,
    pub to: &'a Path,
    pub endpoint: &'a str,
    pub snapshot: bool,
    /// Run the pre-copy step (`--precopy`).
    pub precopy: bool,
    pub id: String,
    /// Refuses while any run of this node, of any kind, is unfinished (`runs`, above the
    /// sagas, knows every kind).
    pub unfinished: fn(&Path) -> Result<String>,
}

/// The `kubeadm-config` change that makes the next `kubeadm upgrade` keep the new path.
pub fn kubeadm_config_hint(to: &Path) -> String {
    format!(
        "kubectl -n kube-system edit configmap kubeadm-config  # set ClusterConfiguration.etcd.local.dataDir: {} \
         (else `kubeadm upgrade` regenerates etcd.yaml with the old path)",
        to.display()
    )
}

pub fn run(host: &dyn Host, input: &PreflightInput) -> PreflightReport {
    let mut checks = Vec::new();
    let mut warnings = Vec::new();
    let mut refusal: Option<Error> = None;
    let mut check = |name: &str, r: Result<String>| match r {
        Ok(detail) => checks.push(Check {
            name: name.into(),
            ok: true,
            detail,
        }),
        Err(e) => {
            checks.push(Check {
                name: name.into(),
                ok: false,
                detail: e.one_line(),
            });
            if refusal.is_none() {
                refusal = Some(e);
            }
        }
    };

    check(
        "root",
        if nix::unistd::geteuid().is_root() {
            Ok("running as root".into())
        } else {
            Err(Error::refused(
                "migrate",
                "must run as root (it stops kubelet and writes the manifest and data dirs)",
            ))
        },
    );

    let from = (|| {
        let pod = StaticPod::load(input.manifest)?;
        let dv = pod.data_volume()?;
        if !dv.is_whole_volume() {
            return Err(Error::input(
                input.manifest,
                format!(
                    "the data dir {} is not the whole volume {} (mountPath {}): only kubeadm's \
                     layout is supported",
                    dv.data_dir, dv.volume, dv.mount_path
                ),
            ));
        }
        Ok((dv.data_host_path.clone(), dv))
    })();
    let from = match from {
        Ok((p, dv)) => {
            check(
                "manifest",
                Ok(format!(
                    "{}: --data-dir {} on volume {} (hostPath {}, type {})",
                    input.manifest.display(),
                    dv.data_dir,
                    dv.volume,
                    dv.host_path,
                    dv.host_path_type.as_deref().unwrap_or("unset")
                )),
            );
            Some(p)
        }
        Err(e) => {
            check("manifest", Err(e));
            None
        }
    };

    let mut source_bytes = 0u64;
    if let Some(src) = &from {
        check(
            "source",
            (|| {
                let layout = Layout::open(src)?;
                let tree = Tree::walk(&layout.root)?;
                source_bytes = tree.file_bytes();
                Ok(format!(
                    "{} holds {} files, {}",
                    src.display(),
                    tree.files().count(),
                    crate::output::bytes(source_bytes)
                ))
            })(),
        );
        check("target", check_target(src, input.to));
        check(
            "space",
            check_space(input.to, source_bytes, src, &mut warnings),
        );
    }

    let mut identity: Option<Identity> = None;
    check(
        "cluster",
        (|| {
            let h = host.health(true)?;
            if !h.healthy {
                return Err(Error::refused(
                    "cluster",
                    format!("unhealthy: {}", h.problems.join("; ")),
                ));
            }
            Ok(format!(
                "{} members healthy, leader {}",
                h.endpoints.len(),
                h.cluster
                    .as_ref()
                    .and_then(|c| c.leader.clone())
                    .unwrap_or_default()
            ))
        })(),
    );
    check(
        "identity",
        host.identity().map(|id| {
            let d = format!(
                "member {} of cluster {}, revision {}, HashKV {:08x}",
                id.member_id, id.cluster_id, id.revision, id.hash
            );
            identity = Some(id);
            d
        }),
    );
    check("no-unfinished-run", (input.unfinished)(input.state_dir));

    let ok = refusal.is_none();
    let target_existed = input.to.exists();
    let plan = match (ok, &from, identity) {
        (true, Some(src), Some(identity)) => Some(Plan {
            id: input.id.clone(),
            from: src.clone(),
            to: input.to.to_path_buf(),
            manifest: input.manifest.to_path_buf(),
            endpoint: input.endpoint.to_string(),
            snapshot: input.snapshot,
            precopy: input.precopy,
            target_existed,
            identity,
        }),
        _ => None,
    };
    PreflightReport {
        ok,
        checks,
        warnings,
        from,
        to: input.to.to_path_buf(),
        steps: <super::MigrateStep as crate::run::StepKind>::ALL
            .iter()
            .map(|s| crate::run::StepKind::name(*s).to_string())
            .collect(),
        kubeadm_config: kubeadm_config_hint(input.to),
        plan,
        refusal,
    }
}

/// Lexical normalisation of an absolute path (no symlinks resolved).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Resolve symlinks in the longest existing ancestor, keep the rest lexically.
fn resolve(p: &Path) -> PathBuf {
    let p = normalize(p);
    let mut existing = p.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
    for name in rest.iter().rev() {
        out.push(name);
    }
    out
}

fn check_target(src: &Path, to: &Path) -> Result<String> {
    if !to.is_absolute() {
        return Err(Error::Usage(format!(
            "--to {}: must be an absolute path",
            to.display()
        )));
    }
    let (s, t) = (resolve(src), resolve(to));
    if s == t {
        return Err(Error::Usage(format!(
            "--to {} is the current data dir",
            to.display()
        )));
    }
    if t.starts_with(&s) {
        return Err(Error::Usage(format!(
            "--to {} is inside the data dir {}",
            to.display(),
            src.display()
        )));
    }
    if s.starts_with(&t) {
        return Err(Error::Usage(format!(
            "the data dir {} is inside --to {}",
            src.display(),
            to.display()
        )));
    }
    let parent = t
        .parent()
        .ok_or_else(|| Error::Usage(format!("--to {} has no parent", to.display())))?;
    if !parent.is_dir() {
        return Err(Error::refused(
            to.display().to_string(),
            format!(
                "parent {} does not exist (mount the new disk first)",
                parent.display()
            ),
        ));
    }
    match std::fs::symlink_metadata(to) {
        Err(_) => Ok(format!("{} will be created", to.display())),
        Ok(m) if m.is_dir() => {
            let mut rd = std::fs::read_dir(to).map_err(|e| Error::io("read", to, e))?;
            if rd.next().is_some() {
                Err(Error::refused(
                    to.display().to_string(),
                    "target exists and is not empty",
                ))
            } else {
                Ok(format!("{} exists and is empty", to.display()))
            }
        }
        Ok(_) => Err(Error::refused(
            to.display().to_string(),
            "target exists and is not a directory",
        )),
    }
}

fn check_space(to: &Path, bytes: u64, src: &Path, warnings: &mut Vec<String>) -> Result<String> {
    let t = resolve(to);
    let parent = if t.exists() {
        t.clone()
    } else {
        t.parent().map(Path::to_path_buf).unwrap_or(t.clone())
    };
    let st = nix::sys::statvfs::statvfs(&parent)
        .map_err(|e| Error::io("statvfs", &parent, std::io::Error::from(e)))?;
    let avail = st.blocks_available() as u64 * st.fragment_size() as u64;
    let need = bytes + bytes / 10;
    if let (Ok(a), Ok(b)) = (std::fs::metadata(src), std::fs::metadata(&parent))
        && a.dev() == b.dev()
    {
        warnings.push(format!(
            "{} is on the same filesystem as {}: the migration will not move the data to another disk",
            to.display(),
            src.display()
        ));
    }
    if avail < need {
        return Err(Error::refused(
            to.display().to_string(),
            format!(
                "{} free on its filesystem, the data needs {} (+10 %)",
                crate::output::bytes(avail),
                crate::output::bytes(need)
            ),
        ));
    }
    Ok(format!(
        "{} free, {} needed",
        crate::output::bytes(avail),
        crate::output::bytes(need)
    ))
}
