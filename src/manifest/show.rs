//! `manifest show`: what the etcd static pod says about the data dir and the connection, as
//! host paths, and what else in the manifests dir kubelet would start.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::StaticPod;
use crate::error::Result;
use crate::etcd::connect::manifest_endpoints;

/// DESIGN.md's `manifest show` document (extra fields: `pod`, `data_host_path`, `warnings`).
#[derive(Debug, Clone, Serialize)]
pub struct ShowReport {
    pub manifest: PathBuf,
    /// `namespace/name` of the pod.
    pub pod: String,
    /// `--data-dir` as a container path.
    pub data_dir: String,
    pub data_volume: String,
    /// The data volume's `hostPath.path`.
    pub host_path: String,
    pub host_path_type: Option<String>,
    pub mount_path: String,
    /// Where the data dir is on the host (equals `host_path` unless the data dir is below
    /// the mount or the mount has a subPath).
    pub data_host_path: PathBuf,
    pub endpoints: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub warnings: Vec<String>,
}

/// Read the manifest and resolve its data volume, endpoints and TLS files. A manifest whose
/// data volume cannot be resolved is an error (exit 2); a TLS file that cannot be resolved
/// is only a warning, since show is what an operator runs to find out what is wrong.
pub fn show(manifest: &Path) -> Result<ShowReport> {
    let pod = StaticPod::load(manifest)?;
    let dv = pod.data_volume()?;
    let mut warnings = Vec::new();

    let endpoints = manifest_endpoints(&pod).unwrap_or_else(|e| {
        warnings.push(e.one_line());
        Vec::new()
    });
    let mut tls = |flag: &str| -> Option<PathBuf> {
        let value = pod
            .etcd_flag(flag)
            .ok()
            .flatten()
            .filter(|v| !v.is_empty())?;
        pod.host_path(&value)
            .map_err(|e| warnings.push(format!("--{flag}: {}", e.one_line())))
            .ok()
    };
    let cacert = tls("trusted-ca-file");
    let cert = tls("cert-file");
    let key = tls("key-file");

    if !dv.is_whole_volume() {
        warnings.push(format!(
            "the data dir {} is below the mount {} of volume {:?}: set-data-path will refuse this manifest",
            dv.data_dir, dv.mount_path, dv.volume
        ));
    }
    warnings.extend(stray_files(manifest));

    let meta = &pod.pod.metadata;
    Ok(ShowReport {
        manifest: manifest.to_path_buf(),
        pod: if meta.namespace.is_empty() {
            meta.name.clone()
        } else {
            format!("{}/{}", meta.namespace, meta.name)
        },
        data_dir: dv.data_dir,
        data_volume: dv.volume,
        host_path: dv.host_path,
        host_path_type: dv.host_path_type,
        mount_path: dv.mount_path,
        data_host_path: dv.data_host_path,
        endpoints,
        cacert,
        cert,
        key,
        warnings,
    })
}

/// One warning per non-dot file beside the manifest that kubelet would load but should not:
/// anything not named like a manifest (`etcd.yaml.bak`, `etcd.yaml~`), and any other manifest
/// that also runs etcd. kubelet does not descend into subdirectories; neither do we.
pub fn stray_files(manifest: &Path) -> Vec<String> {
    let dir = match manifest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![format!(
            "cannot list {} to look for stray manifests",
            dir.display()
        )];
    };
    let own = std::fs::canonicalize(manifest).ok();
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| own.is_none() || std::fs::canonicalize(p).ok() != own)
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let named_like_manifest = file
            .extension()
            .is_some_and(|x| x == "yaml" || x == "yml" || x == "json");
        if !named_like_manifest {
            out.push(format!(
                "{}: kubelet loads every non-dot file in {} and would try to start it as a static pod; move it out of that dir",
                file.display(),
                dir.display()
            ));
        } else if StaticPod::load(&file).is_ok_and(|p| p.etcd_container().is_ok()) {
            out.push(format!(
                "{}: also defines an etcd pod, so kubelet runs a second etcd; move it out of {}",
                file.display(),
                dir.display()
            ));
        }
    }
    out
}
