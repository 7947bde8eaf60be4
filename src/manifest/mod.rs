//! The etcd static pod manifest: a typed model of the parts etcdops reads, the etcd
//! container's flags, and the resolution of a container path to its host path through the
//! container's `volumeMounts` and the pod's `hostPath` volumes.

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(default)]
    pub host_path: Option<HostPath>,
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

impl StaticPod {
    /// Read and parse a manifest. Missing file, directory or bad YAML: `Error::Input` (exit 2).
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Err(Error::input(path, "is a directory, not a manifest file"));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::input(path, format!("cannot read manifest: {e}")))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        if text.trim().is_empty() {
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
        let container = self.etcd_container()?;
        let (mount, rest) = container.mount_for(container_path).ok_or_else(|| {
            Error::input(
                &self.path,
                format!("no volumeMount of the etcd container holds {container_path}"),
            )
        })?;
        let volume = self.volume(&mount.name)?;
        let host = volume.host_path.as_ref().ok_or_else(|| {
            Error::input(
                &self.path,
                format!(
                    "volume {:?} (mounted at {}) is not a hostPath volume",
                    volume.name, mount.mount_path
                ),
            )
        })?;
        let mut path = PathBuf::from(&host.path);
        if !rest.as_os_str().is_empty() {
            path.push(rest);
        }
        Ok(path)
    }

    /// The pod volume with this name.
    pub fn volume(&self, name: &str) -> Result<&Volume> {
        self.pod
            .spec
            .volumes
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| {
                Error::input(
                    &self.path,
                    format!("volumeMount {name:?} names no volume of the pod"),
                )
            })
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
