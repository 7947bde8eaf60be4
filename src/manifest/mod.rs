//! The etcd static pod manifest: a typed model of the parts etcdops reads, the etcd
//! container's flags, and the resolution of a container path to its host path through the
//! container's `volumeMounts` and the pod's `hostPath` volumes. The data volume (the one that
//! holds `--data-dir`) is found here.

pub mod atomic;
pub mod flags;
pub mod rewrite;
pub mod show;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Where kubeadm writes the etcd static pod manifest.
pub const DEFAULT_MANIFEST: &str = "/etc/kubernetes/manifests/etcd.yaml";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    /// etcd reads `ETCD_DATA_DIR` and friends when the flag is absent.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// `registry.k8s.io/etcd:3.6.5-0`: the tag says which etcd will run.
    #[serde(default)]
    pub image: Option<String>,
    /// kubeadm's startup probe (1.31+: `/readyz` on 2381, 24 x 10 s after 10 s).
    #[serde(default)]
    pub startup_probe: Option<ProbeSpec>,
}

/// The parts of a probe that say how long kubelet waits before it restarts the container.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    #[serde(default)]
    pub http_get: Option<HttpGet>,
    pub initial_delay_seconds: Option<u64>,
    pub period_seconds: Option<u64>,
    pub failure_threshold: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct HttpGet {
    #[serde(default)]
    pub path: String,
}

impl ProbeSpec {
    /// How long after the container starts kubelet gives up on it (kubelet's defaults:
    /// no initial delay, period 10 s, failure threshold 3).
    pub fn window(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.initial_delay_seconds.unwrap_or(0)
                + self.period_seconds.unwrap_or(10) * self.failure_threshold.unwrap_or(3),
        )
    }

    /// Whether it asks `/readyz`, which fails for a learner from etcd 3.5.19.
    pub fn asks_readyz(&self) -> bool {
        self.http_get
            .as_ref()
            .is_some_and(|h| h.path.starts_with("/readyz"))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct EnvVar {
    pub name: String,
    /// `None` for `valueFrom`, which only the API server could resolve.
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    /// Mounts a directory below the volume's root instead of the root itself.
    #[serde(default)]
    pub sub_path: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(default)]
    pub host_path: Option<HostPath>,
    /// Every other volume source (emptyDir, persistentVolumeClaim, ...), kept only to name it
    /// when a hostPath was expected.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HostPath {
    pub path: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// A parsed manifest and where it came from.
#[derive(Debug, Clone)]
pub struct StaticPod {
    pub path: PathBuf,
    pub pod: Pod,
}

/// Where a container path lives on the host.
#[derive(Debug, Clone)]
pub struct Resolved<'a> {
    pub mount: &'a VolumeMount,
    /// Index of the volume in `spec.volumes`.
    pub volume_index: usize,
    pub volume: &'a Volume,
    pub host: &'a HostPath,
    /// The path below the mountPath (empty when the path is the mountPath itself).
    pub rest: PathBuf,
    /// The host path of the container path: hostPath, then subPath, then `rest`.
    pub host_path: PathBuf,
}

/// The volume that holds etcd's data dir, as the manifest declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataVolume {
    /// `--data-dir` (or `ETCD_DATA_DIR`) as written: a container path.
    pub data_dir: String,
    /// The volumeMount that holds it (longest prefix).
    pub mount_path: String,
    pub sub_path: Option<String>,
    /// The volume's name and its index in `spec.volumes`.
    pub volume: String,
    pub volume_index: usize,
    /// `hostPath.path` as written: what `set-data-path` changes.
    pub host_path: String,
    pub host_path_type: Option<String>,
    /// Where the data dir itself is on the host (equals `host_path` on a kubeadm node).
    pub data_host_path: PathBuf,
}

impl DataVolume {
    /// Whether the volume's root is the data dir itself, as kubeadm lays it out. Only then is
    /// "the data path" and "the volume's hostPath" the same thing.
    pub fn is_whole_volume(&self) -> bool {
        self.sub_path.as_deref().is_none_or(str::is_empty)
            && normalize(Path::new(&self.data_dir)) == normalize(Path::new(&self.mount_path))
    }
}

impl StaticPod {
    /// Read and parse a manifest. Missing file, directory or bad YAML: `Error::Input` (exit 2).
    pub fn load(path: &Path) -> Result<Self> {
        let text = Self::read(path)?;
        Self::parse(path, &text)
    }

    /// The manifest's text, for callers that need the bytes as well as the model. Missing
    /// file, directory or not UTF-8: `Error::Input` (exit 2).
    pub fn read(path: &Path) -> Result<String> {
        if path.is_dir() {
            return Err(Error::input(path, "is a directory, not a manifest file"));
        }
        std::fs::read_to_string(path)
            .map_err(|e| Error::input(path, format!("cannot read manifest: {e}")))
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        if text.starts_with('\u{feff}') {
            // serde_yaml then says "missing field `spec` at line 1 column 2", which hides it.
            return Err(Error::input(
                path,
                "starts with a UTF-8 byte order mark (BOM, bytes EF BB BF): save the manifest \
                 without a BOM",
            ));
        }
        let blank = text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        });
        if blank {
            return Err(Error::input(path, "manifest is empty"));
        }
        let pod: Pod = serde_yaml::from_str(text)
            .map_err(|e| Error::input(path, format!("not a valid pod manifest: {e}")))?;
        if pod.kind != "Pod" {
            return Err(Error::input(
                path,
                format!("kind is {:?}, expected Pod", pod.kind),
            ));
        }
        Ok(StaticPod {
            path: path.to_path_buf(),
            pod,
        })
    }

    /// The etcd container: named `etcd`, or whose command starts with `etcd`.
    pub fn etcd_container(&self) -> Result<&Container> {
        let containers = &self.pod.spec.containers;
        containers
            .iter()
            .find(|c| c.name == "etcd")
            .or_else(|| {
                containers.iter().find(|c| {
                    c.command
                        .first()
                        .and_then(|p| Path::new(p).file_name())
                        .is_some_and(|n| n == "etcd")
                })
            })
            .ok_or_else(|| Error::input(&self.path, "no etcd container in the pod"))
    }

    /// A flag of the etcd container (`--name=value` or `--name value`, in command or args).
    pub fn etcd_flag(&self, name: &str) -> Result<Option<String>> {
        Ok(self.etcd_container()?.flag(name))
    }

    /// The host path behind a path inside the etcd container.
    pub fn host_path(&self, container_path: &str) -> Result<PathBuf> {
        Ok(self.resolve(container_path)?.host_path)
    }

    /// Map a container path of the etcd container to its mount, volume and host path.
    pub fn resolve(&self, container_path: &str) -> Result<Resolved<'_>> {
        if !container_path.starts_with('/') {
            return Err(Error::input(
                &self.path,
                format!("{container_path:?} is a relative container path: no volume can hold it"),
            ));
        }
        let container = self.etcd_container()?;
        let (mount, rest) = container.mount_for(container_path).ok_or_else(|| {
            Error::input(
                &self.path,
                format!("no volumeMount of the etcd container holds {container_path}"),
            )
        })?;
        let (volume_index, volume) = self.volume(&mount.name)?;
        let host = volume.host_path.as_ref().ok_or_else(|| {
            let kind = volume
                .other
                .keys()
                .find(|k| k.as_str() != "name")
                .map_or("no source".to_string(), |k| format!("source {k}"));
            Error::input(
                &self.path,
                format!(
                    "volume {:?} (mounted at {}) has {kind}, not hostPath",
                    volume.name, mount.mount_path
                ),
            )
        })?;
        if host.path.trim().is_empty() {
            return Err(Error::input(
                &self.path,
                format!("volume {:?} has an empty hostPath.path", volume.name),
            ));
        }
        let mut host_path = PathBuf::from(&host.path);
        if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            host_path.push(sub);
        }
        if !rest.as_os_str().is_empty() {
            host_path.push(&rest);
        }
        Ok(Resolved {
            mount,
            volume_index,
            volume,
            host,
            rest,
            host_path,
        })
    }

    /// The etcd data dir as a container path: `--data-dir`, else `ETCD_DATA_DIR` (etcd lets
    /// the flag win over the environment).
    pub fn data_dir(&self) -> Result<String> {
        let container = self.etcd_container()?;
        let value = container.flag("data-dir").or_else(|| {
            container
                .env
                .iter()
                .rev()
                .find(|e| e.name == "ETCD_DATA_DIR")
                .and_then(|e| e.value.clone())
        });
        match value {
            Some(v) if !v.trim().is_empty() => Ok(v),
            _ => Err(Error::input(
                &self.path,
                "the etcd container has no --data-dir (nor ETCD_DATA_DIR): cannot tell which volume holds the data",
            )),
        }
    }

    /// The data dir, the volumeMount that holds it (longest prefix), that volume and its
    /// hostPath. Any link missing, or a volume that is not a hostPath: `Error::Input`.
    pub fn data_volume(&self) -> Result<DataVolume> {
        let data_dir = self.data_dir()?;
        if !data_dir.starts_with('/') {
            return Err(Error::input(
                &self.path,
                format!("--data-dir {data_dir:?} is relative: no volume can hold it"),
            ));
        }
        let r = self.resolve(&data_dir).map_err(|e| match e {
            Error::Input { path, reason } => Error::Input {
                path,
                reason: format!("data dir {data_dir}: {reason}"),
            },
            other => other,
        })?;
        Ok(DataVolume {
            mount_path: r.mount.mount_path.clone(),
            sub_path: r.mount.sub_path.clone(),
            volume: r.volume.name.clone(),
            volume_index: r.volume_index,
            host_path: r.host.path.clone(),
            host_path_type: r.host.kind.clone(),
            data_host_path: r.host_path.clone(),
            data_dir,
        })
    }

    /// The pod volume with this name, and its index in `spec.volumes`.
    pub fn volume(&self, name: &str) -> Result<(usize, &Volume)> {
        let mut found = self
            .pod
            .spec
            .volumes
            .iter()
            .enumerate()
            .filter(|(_, v)| v.name == name);
        let first = found.next().ok_or_else(|| {
            Error::input(
                &self.path,
                format!("volumeMount {name:?} names no volume of the pod"),
            )
        })?;
        // The API server rejects duplicate names; kubelet's file source does not check, so
        // which one wins would be a guess.
        if found.next().is_some() {
            return Err(Error::input(
                &self.path,
                format!("two volumes are named {name:?}"),
            ));
        }
        Ok(first)
    }
}

impl Container {
    /// Every word of the container's command line: command then args.
    pub fn words(&self) -> impl Iterator<Item = &str> {
        self.command.iter().chain(&self.args).map(String::as_str)
    }

    /// The value of `--name=value` or `--name value`; the last occurrence wins, as in Go's flag.
    pub fn flag(&self, name: &str) -> Option<String> {
        let words: Vec<&str> = self.words().collect();
        let long = format!("--{name}");
        let eq = format!("--{name}=");
        let single_eq = format!("-{name}=");
        let single = format!("-{name}");
        let mut found = None;
        let mut i = 0;
        while i < words.len() {
            let w = words[i].trim();
            if let Some(v) = w.strip_prefix(&eq).or_else(|| w.strip_prefix(&single_eq)) {
                found = Some(v.to_string());
            } else if (w == long || w == single) && i + 1 < words.len() {
                found = Some(words[i + 1].trim().to_string());
                i += 1;
            }
            i += 1;
        }
        found
    }

    /// The mount whose mountPath holds `path` (longest prefix, whole components) and the rest
    /// of the path below it.
    pub fn mount_for(&self, path: &str) -> Option<(&VolumeMount, PathBuf)> {
        let target = normalize(Path::new(path));
        self.volume_mounts
            .iter()
            .filter_map(|m| {
                let mount = normalize(Path::new(&m.mount_path));
                target
                    .strip_prefix(&mount)
                    .ok()
                    .map(|rest| (m, rest.to_path_buf(), mount.components().count()))
            })
            .max_by_key(|(_, _, depth)| *depth)
            .map(|(m, rest, _)| (m, rest))
    }
}

/// Lexical normalisation: drop `.` and trailing slashes (no filesystem access).
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls=https://10.0.0.5:2379
    - --cert-file=/etc/kubernetes/pki/etcd/server.crt
    - --data-dir=/var/lib/etcd
    - --listen-client-urls=https://127.0.0.1:2379,https://10.0.0.5:2379
    - --trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
    name: etcd
    volumeMounts:
    - mountPath: /var/lib/etcd
      name: etcd-data
    - mountPath: /etc/kubernetes/pki/etcd
      name: etcd-certs
  volumes:
  - hostPath:
      path: /etc/kubernetes/pki/etcd
      type: DirectoryOrCreate
    name: etcd-certs
  - hostPath:
      path: /mnt/disk/etcd
      type: DirectoryOrCreate
    name: etcd-data
"#;

    fn pod() -> StaticPod {
        StaticPod::parse(Path::new("/m/etcd.yaml"), KUBEADM).unwrap()
    }

    #[test]
    fn flags_in_both_spellings() {
        let p = pod();
        assert_eq!(
            p.etcd_flag("data-dir").unwrap().as_deref(),
            Some("/var/lib/etcd")
        );
        let c = Container {
            name: "etcd".into(),
            command: vec!["etcd".into()],
            args: vec!["--data-dir".into(), "/x".into()],
            volume_mounts: vec![],
            env: vec![],
            image: None,
            startup_probe: None,
        };
        assert_eq!(c.flag("data-dir").as_deref(), Some("/x"));
        assert_eq!(c.flag("data"), None);
    }

    #[test]
    fn container_paths_resolve_through_host_path_volumes() {
        let p = pod();
        assert_eq!(
            p.host_path("/etc/kubernetes/pki/etcd/ca.crt").unwrap(),
            PathBuf::from("/etc/kubernetes/pki/etcd/ca.crt")
        );
        assert_eq!(
            p.host_path("/var/lib/etcd").unwrap(),
            PathBuf::from("/mnt/disk/etcd")
        );
        // `/var/lib/etcd-backup` is not below `/var/lib/etcd`.
        assert!(p.host_path("/var/lib/etcd-backup/x").is_err());
    }

    #[test]
    fn data_volume_is_the_longest_mount_holding_data_dir() {
        let dv = pod().data_volume().unwrap();
        assert_eq!(dv.data_dir, "/var/lib/etcd");
        assert_eq!(dv.mount_path, "/var/lib/etcd");
        assert_eq!(dv.volume, "etcd-data");
        assert_eq!(dv.volume_index, 1);
        assert_eq!(dv.host_path, "/mnt/disk/etcd");
        assert_eq!(dv.host_path_type.as_deref(), Some("DirectoryOrCreate"));
        assert!(dv.is_whole_volume());

        // A mount of /var/lib does not win over /var/lib/etcd.
        let nested = KUBEADM.replace(
            "    volumeMounts:\n",
            "    volumeMounts:\n    - mountPath: /var/lib\n      name: var-lib\n",
        ) + "  - hostPath:\n      path: /var/lib\n    name: var-lib\n";
        let p = StaticPod::parse(Path::new("/m"), &nested).unwrap();
        assert_eq!(p.data_volume().unwrap().volume, "etcd-data");
    }

    #[test]
    fn data_dir_from_env_sub_path_and_nested_dirs() {
        let env = KUBEADM
            .replace("    - --data-dir=/var/lib/etcd\n", "")
            .replace(
                "    name: etcd\n    volumeMounts:",
                "    name: etcd\n    env:\n    - name: ETCD_DATA_DIR\n      value: /var/lib/etcd/data\n    volumeMounts:",
            );
        let p = StaticPod::parse(Path::new("/m"), &env).unwrap();
        let dv = p.data_volume().unwrap();
        assert_eq!(dv.data_dir, "/var/lib/etcd/data");
        assert_eq!(dv.data_host_path, PathBuf::from("/mnt/disk/etcd/data"));
        assert!(!dv.is_whole_volume());

        let sub = KUBEADM.replace(
            "    - mountPath: /var/lib/etcd\n      name: etcd-data\n",
            "    - mountPath: /var/lib/etcd\n      name: etcd-data\n      subPath: member0\n",
        );
        let dv = StaticPod::parse(Path::new("/m"), &sub)
            .unwrap()
            .data_volume()
            .unwrap();
        assert_eq!(dv.data_host_path, PathBuf::from("/mnt/disk/etcd/member0"));
        assert!(!dv.is_whole_volume());
    }

    #[test]
    fn data_volume_errors_name_the_problem() {
        let cases = [
            (
                KUBEADM.replace("    - --data-dir=/var/lib/etcd\n", ""),
                "no --data-dir",
            ),
            (
                KUBEADM.replace("--data-dir=/var/lib/etcd", "--data-dir=data"),
                "relative",
            ),
            (
                KUBEADM.replace("--data-dir=/var/lib/etcd", "--data-dir=/srv/etcd"),
                "no volumeMount",
            ),
            (
                KUBEADM.replace(
                    "  - hostPath:\n      path: /mnt/disk/etcd\n      type: DirectoryOrCreate\n",
                    "  - emptyDir: {}\n",
                ),
                "source emptyDir, not hostPath",
            ),
        ];
        for (text, want) in cases {
            let err = StaticPod::parse(Path::new("/m"), &text)
                .unwrap()
                .data_volume()
                .unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn bad_manifests_are_input_errors() {
        for text in ["", "kind: Service\nspec: {}\n", ": : :", "kind: Pod\n"] {
            let err = StaticPod::parse(Path::new("/m"), text).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{text:?}: {err}");
        }
        let no_etcd = "kind: Pod\nspec:\n  containers:\n  - name: nginx\n    command: [nginx]\n";
        let p = StaticPod::parse(Path::new("/m"), no_etcd).unwrap();
        assert_eq!(p.etcd_container().unwrap_err().exit_code(), 2);
    }
}
