//! The lab: a multi-node etcd "control plane" on loopback, for tests, the demo and operators
//! who want to try etcdops before touching a real node. Real etcd, real files, real TLS, the
//! PKI and manifests kubeadm itself writes; kubelet is the stand-in (see `kubelet`), or the
//! real kubelet and containerd (see `real`).
//!
//! Layout of a lab dir `D`, per node `I` (1-based):
//! `D/nodeI/kubeadm.yaml` (the node's kubeadm config) and `D/nodeI/kubeadm.log`,
//! `D/nodeI/etc/kubernetes/manifests/etcd.yaml` (written by kubeadm, see `kubeadm`),
//! `D/nodeI/etc/kubernetes/pki/{etcd/*,apiserver-etcd-client.*}` (kubeadm's PKI),
//! `D/nodeI/var/lib/etcd` (the data), `D/nodeI/var/lib/etcdops` (etcdops' state dir),
//! `D/nodeI/kubelet.{pid,log}`, `D/nodeI/etcd.{pid,log}`; `D/lab.json` records the lab.
//! In systemd mode (see `systemd`) also `D/nodeI/mnt/etcd-disk` (the node's new disk),
//! `D/nodeI/{systemd,tmpfiles.d,machine-id,console.log}` and `D/created.json`.
//! With the real kubelet: `D/nodeI/cri/` (containerd's config, root, state, socket),
//! `D/nodeI/kubelet/` (its config and root dir) and `D/nodeI/{containerd,kubelet}.log`.

pub mod kubeadm;
pub mod kubelet;
pub mod pki;
pub mod probe;
pub mod real;
pub mod systemd;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What `up` created, so that every later command (and `down`) acts on exactly that.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabConfig {
    pub nodes: usize,
    /// Node I listens on `<ip_prefix>.<10+I>`.
    pub ip_prefix: String,
    /// The etcd binary the stand-in runs for the manifest's `etcd` command.
    pub etcd: PathBuf,
    /// Its release (`etcd --version`): the manifests' image tag is `<release>-0`.
    #[serde(default)]
    pub etcd_version: String,
    /// The kubeadm that laid out the nodes, and its release.
    #[serde(default)]
    pub kubeadm: PathBuf,
    #[serde(default)]
    pub kubeadm_version: String,
    /// The `etcdops-lab` binary, for the kubelet commands `env` prints.
    pub lab_bin: PathBuf,
    /// Each node a systemd-nspawn container with kubelet.service (`up --systemd`).
    #[serde(default)]
    pub systemd: bool,
    /// What backs the data dirs and new disks (systemd mode).
    #[serde(default)]
    pub disk: systemd::Disk,
    /// The real kubelet and containerd instead of the stand-in (`up --kubelet real`).
    #[serde(default)]
    pub real: Option<real::Stack>,
}

/// A lab dir and its configuration.
#[derive(Debug, Clone)]
pub struct Lab {
    pub dir: PathBuf,
    pub config: LabConfig,
}

impl Lab {
    pub fn config_path(dir: &Path) -> PathBuf {
        dir.join("lab.json")
    }

    /// Open an existing lab (made by `up`).
    pub fn open(dir: &Path) -> Result<Lab> {
        let path = Self::config_path(dir);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::input(&path, format!("not a lab (run etcdops-lab up): {e}")))?;
        let config: LabConfig = serde_json::from_str(&text)
            .map_err(|e| Error::input(&path, format!("unreadable lab config: {e}")))?;
        let dir = std::fs::canonicalize(dir).map_err(|e| Error::io("resolve", dir, e))?;
        Ok(Lab { dir, config })
    }

    pub fn check_node(&self, node: usize) -> Result<()> {
        if node == 0 || node > self.config.nodes {
            return Err(Error::Usage(format!(
                "--node {node}: the lab has nodes 1..={}",
                self.config.nodes
            )));
        }
        Ok(())
    }

    pub fn node_name(&self, node: usize) -> String {
        format!("node{node}")
    }

    pub fn node_dir(&self, node: usize) -> PathBuf {
        self.dir.join(self.node_name(node))
    }

    pub fn ip(&self, node: usize) -> Ipv4Addr {
        format!("{}.{}", self.config.ip_prefix, 10 + node)
            .parse()
            .expect("ip_prefix validated by up")
    }

    pub fn manifests_dir(&self, node: usize) -> PathBuf {
        self.node_dir(node).join("etc/kubernetes/manifests")
    }

    pub fn manifest(&self, node: usize) -> PathBuf {
        self.manifests_dir(node).join("etcd.yaml")
    }

    /// kubeadm's `certificatesDir` of the node.
    pub fn cert_dir(&self, node: usize) -> PathBuf {
        self.node_dir(node).join("etc/kubernetes/pki")
    }

    pub fn pki_dir(&self, node: usize) -> PathBuf {
        self.cert_dir(node).join("etcd")
    }

    pub fn data_dir(&self, node: usize) -> PathBuf {
        self.node_dir(node).join("var/lib/etcd")
    }

    pub fn state_dir(&self, node: usize) -> PathBuf {
        self.node_dir(node).join("var/lib/etcdops")
    }

    pub fn client_url(&self, node: usize) -> String {
        format!("https://{}:2379", self.ip(node))
    }

    pub fn peer_url(&self, node: usize) -> String {
        format!("https://{}:2380", self.ip(node))
    }

    /// The shell commands etcdops uses to control this node's kubelet stand-in: in systemd
    /// mode `systemctl stop|start|is-active kubelet` inside the node.
    pub fn kubelet_cmd(&self, verb: &str, node: usize) -> Result<String> {
        if self.config.systemd {
            let verb = if verb == "status" { "is-active" } else { verb };
            return systemd::systemctl_cmd(self, node, verb);
        }
        Ok(format!(
            "{} kubelet {verb} --dir {} --node {node}",
            shell_quote(&self.config.lab_bin.to_string_lossy()),
            shell_quote(&self.dir.to_string_lossy())
        ))
    }

    /// `export` lines that point etcdops at this node (and, in systemd mode, its new disk).
    pub fn env(&self, node: usize) -> Result<Vec<(String, String)>> {
        let mut env = vec![
            (
                "ETCDOPS_MANIFEST".into(),
                self.manifest(node).display().to_string(),
            ),
            (
                "ETCDOPS_STATE_DIR".into(),
                self.state_dir(node).display().to_string(),
            ),
            (
                "ETCDOPS_KUBELET_STOP_CMD".into(),
                self.kubelet_cmd("stop", node)?,
            ),
            (
                "ETCDOPS_KUBELET_START_CMD".into(),
                self.kubelet_cmd("start", node)?,
            ),
            (
                "ETCDOPS_KUBELET_STATUS_CMD".into(),
                self.kubelet_cmd("status", node)?,
            ),
        ];
        if self.config.systemd {
            env.push((
                "ETCDOPS_LAB_NEW_DISK".into(),
                systemd::new_disk_dir(self, node).display().to_string(),
            ));
            env.push((
                "ETCDOPS_LAB_NODE_EXEC".into(),
                systemd::node_exec(self, node)?,
            ));
        }
        Ok(env)
    }
}

/// Single-quote for POSIX sh.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,@+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b"), "/a/b");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
