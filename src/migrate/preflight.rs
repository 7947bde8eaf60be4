//! Step 1: every check before anything changes. `migrate plan` prints them; `apply` refuses
//! (exit 4, or 2 for bad input) unless all pass. The checks only read.

use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use super::{Identity, Plan};
use crate::datadir::{Layout, Tree};
use crate::error::{Error, Result};
use crate::manifest::StaticPod;
use crate::run::host::Host;

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 11, "also unclear"): the hint was not quoted where YAML must quote.
    #[test]
    fn kubeadm_hint_quotes_paths_yaml_must_quote() {
        assert!(kubeadm_config_hint(Path::new("/mnt/etcd")).contains("dataDir: /mnt/etcd "));
        for (path, quoted) in [
            ("/mnt/a: b", "\"/mnt/a: b\""),
            ("/mnt/x #1", "\"/mnt/x #1\""),
            ("/mnt/'q", "/mnt/'q"),
        ] {
            let hint = kubeadm_config_hint(Path::new(path));
            assert!(hint.contains(&format!("dataDir: {quoted} ")), "{hint}");
        }
    }
}

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
    /// `--allow-volatile-target` / `--same-filesystem`.
    pub fs_policy: crate::datadir::target::FsPolicy,
}

/// The `kubeadm-config` change that makes the next `kubeadm upgrade` keep the new path.
pub fn kubeadm_config_hint(to: &Path) -> String {
    format!(
        "kubectl -n kube-system edit configmap kubeadm-config  # set ClusterConfiguration.etcd.local.dataDir: {} \
         (else `kubeadm upgrade` regenerates etcd.yaml with the old path)",
        yaml_scalar(&to.display().to_string())
    )
}

/// A path as a YAML plain scalar when that reads back as the same string, else
/// double-quoted (a path with `: `, ` #`, a leading `!&*?|>'"%@` or backquote, ...).
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && serde_yaml::from_str::<serde_yaml::Value>(s)
            .ok()
            .and_then(|v| v.as_str().map(|v| v == s))
            .unwrap_or(false);
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("a string serializes")
    }
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
    let mut source_entries = 0u64;
    if let Some(src) = &from {
        check(
            "source",
            (|| {
                let layout = Layout::open(src)?;
                let tree = Tree::walk(&layout.root)?;
                // What the copy step would refuse, refused now.
                if let Some((path, why)) =
                    crate::datadir::copy::uncopyable(&tree).into_iter().next()
                {
                    return Err(Error::input(&path, why));
                }
                source_bytes = tree.file_bytes();
                source_entries = tree.entries.len() as u64 + 1;
                Ok(format!(
                    "{} holds {} files, {}",
                    src.display(),
                    tree.files().count(),
                    crate::output::bytes(source_bytes)
                ))
            })(),
        );
        check(
            "target",
            check_target(src, input.to, input.manifest, input.state_dir),
        );
        check("space", check_space(input.to, source_bytes, source_entries));
        if input.to.is_absolute() {
            check(
                "filesystem",
                crate::datadir::target::check_filesystem(src, input.to, input.fs_policy),
            );
        }
    }

    let mut identity: Option<Identity> = None;
    // Every HashKV made here, with its time: a slow one is a warning, not a refusal.
    let mut hash_kv: Vec<crate::etcd::hashkv::Timing> = Vec::new();
    let mut cluster_endpoints: Vec<String> = Vec::new();
    // Another node's run holds the guard: say whose, rather than "unhealthy" while its
    // member is down (issue 11).
    let held_by = || -> Result<()> {
        match host.guard_holder()? {
            Some(h) => Err(Error::refused(
                "migrate",
                format!(
                    "only one member may be down for etcdops at a time and the guard {} is \
                     held by {h}; wait until that run is done",
                    crate::etcd::guard::KEY
                ),
            )),
            None => Ok(()),
        }
    };
    let mut release: Option<Result<String>> = None;
    check(
        "cluster",
        (|| {
            held_by()?;
            let h = host.health(true)?;
            release = Some(crate::etcd::health::check_image_release(input.manifest, &h));
            hash_kv.extend(h.cluster.iter().flat_map(|c| c.hash_kv.iter().cloned()));
            if !h.healthy {
                held_by()?;
                return Err(Error::refused(
                    "cluster",
                    format!("unhealthy: {}", h.problems.join("; ")),
                ));
            }
            cluster_endpoints = h
                .endpoints
                .iter()
                .map(|e| e.endpoint.clone())
                .filter(|e| e != input.endpoint)
                .collect();
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
    if let Some(r) = release {
        // Never start an older etcd on newer data (3.5 on a data dir that 3.6 wrote).
        check("release", r);
    }
    check(
        "member",
        host.check_member()
            .map(|m| m.unwrap_or_else(|| "not checked".into())),
    );
    check(
        "identity",
        host.identity().map(|id| {
            let d = format!(
                "member {} of cluster {}, revision {}, HashKV {:08x}",
                id.member_id, id.cluster_id, id.revision, id.hash
            );
            hash_kv.extend(id.hash_kv.clone());
            identity = Some(id);
            d
        }),
    );
    check("no-unfinished-run", (input.unfinished)(input.state_dir));

    warnings.extend(hash_kv.iter().filter(|t| t.slow).map(|t| t.note()));
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
            cluster_endpoints,
            identity,
            hash_kv,
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

/// The target through the one policy the copy step applies (`datadir::target::locate`), and
/// the rewrite step's own refusals, run now on the manifest's bytes in memory with the exact
/// path the step will write (issue 21: a `..` passed here, and the rewrite refused it after
/// etcd had been stopped and the data copied).
fn check_target(src: &Path, to: &Path, manifest: &Path, state_dir: &Path) -> Result<String> {
    if !to.is_absolute() {
        return Err(Error::Usage(format!(
            "--to {}: must be an absolute path",
            to.display()
        )));
    }
    crate::manifest::rewrite::validate_new(to)?;
    let located = crate::datadir::target::locate(&resolve(src), to)?;
    let text = StaticPod::read(manifest)?;
    let rewrite = crate::manifest::rewrite::rewrite_text(manifest, &text, to)?;
    // The rewrite step backs the manifest up into the run dir, never into kubelet's dir.
    if let Some(kubelet_dir) = manifest.parent() {
        crate::manifest::atomic::check_outside_manifests_dir(
            &crate::run::runs_dir(state_dir),
            kubelet_dir,
        )?;
    }
    let place = match located.place {
        crate::datadir::target::Place::Absent => "will be created",
        crate::datadir::target::Place::EmptyDir => "exists and is empty",
    };
    Ok(format!(
        "{} {place}; the manifest's hostPath {} can be set to it",
        to.display(),
        rewrite.old_host_path
    ))
}

/// Free space through the one policy of `datadir::target` (also used by `datadir copy`).
fn check_space(to: &Path, bytes: u64, entries: u64) -> Result<String> {
    let at = crate::datadir::target::nearest_existing(&resolve(to));
    crate::datadir::target::check_space(to, &at, bytes, Some(entries))
}
