//! kubeadm lays out the lab's nodes: its own etcd PKI (`kubeadm init phase certs etcd-ca`,
//! then per node `etcd-server`, `etcd-peer`, `etcd-healthcheck-client`,
//! `apiserver-etcd-client`) and its own `etcd.yaml` (`kubeadm init phase etcd local`), from a
//! kubeadm config per node (`D/nodeI/kubeadm.yaml`) that gives the node's name and loopback
//! address, the cert dir, the data dir and the image of the etcd under test.
//!
//! kubeadm runs offline: the config names `kubernetesVersion` (no release lookup), the
//! `criSocket` (no socket probing) and the node name (no hostname lookup), and every kubeadm
//! command runs in a network namespace of its own with no interface up, so a kubeadm that
//! tried to reach the network would fail here rather than reach it.
//!
//! Where kubeadm writes the manifest: `init phase etcd local` writes into
//! `/etc/kubernetes/manifests` unless `--dry-run`, whose directory `KUBEADM_INIT_DRYRUN_DIR`
//! names; the manifest written there is the same (`GetEtcdPodSpec` does not look at
//! dry-run), so the lab runs the phase with `--dry-run` into the node's own dir and nothing
//! is written under the host's `/etc/kubernetes`.
//!
//! The node's address: kubeadm takes a loopback `advertiseAddress` as a request for "the
//! global unicast address on the loopback interface" and fails when there is none
//! (`SetAPIEndpointDynamicDefaults`, cmd/kubeadm/app/util/config/initconfiguration.go), so
//! the lab's addresses (127.x.y.1I) cannot be given to it as they are. kubeadm gets a stand-in
//! address of the documentation range instead (192.0.2.1I, RFC 5737, never routed: nothing
//! is sent to it, kubeadm runs without a network), the certificates get the node's address
//! through `serverCertSANs`/`peerCertSANs`, and in the written manifest the lab replaces the
//! stand-in address by the node's (`https://192.0.2.1I:` -> `https://127.x.y.1I:`, checked to
//! leave none behind). The client and metrics URLs are `extraArgs` with the node's address.
//!
//! A joining node: `kubeadm join phase control-plane-join etcd` needs an API server. It adds
//! the member as a learner, then writes the manifest of `init phase etcd local` with two
//! differences (`cmd/kubeadm/app/phases/etcd/local.go`, `getEtcdCommand`): `--initial-cluster`
//! lists every member of the `MemberAdd` answer (`name=peerURL`, the new one under its node
//! name) instead of the node alone, and `--initial-cluster-state=existing` is added; both are
//! default arguments, so they stay in kubeadm's sorted order. `join_manifest` applies exactly
//! that to kubeadm's output.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, unshare};

use super::{Lab, shell_quote};
use crate::error::{Error, Result};

/// The kubeadm the lab uses unless told otherwise: the newest release the module proxy served
/// when this was written.
pub const DEFAULT_VERSION: &str = "1.37.2";
/// The kubeadm for an etcd older than 3.6: 1.37 writes `--feature-gates` and
/// `--watch-progress-notify-interval` whatever the image, and etcd 3.5 refuses
/// `--feature-gates`; 1.35 writes the `--experimental-*` names for an image tag below 3.6.0.
pub const VERSION_FOR_ETCD_3_5: &str = "1.35.4";

/// The kubeadm release the lab uses for an etcd release unless told otherwise.
pub fn default_for_etcd(etcd_version: &str) -> &'static str {
    let mut parts = etcd_version
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    match (parts.next(), parts.next()) {
        (Some(3), Some(minor)) if minor < 6 => VERSION_FOR_ETCD_3_5,
        _ => DEFAULT_VERSION,
    }
}

/// Where the etcd images come from, as kubeadm names them (nothing is pulled).
pub const IMAGE_REPOSITORY: &str = "registry.k8s.io";
/// How long one kubeadm command may take (it only writes files).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Where `scripts/build-etcd.sh` and `scripts/build-k8s.sh` put binaries.
pub fn deps_dir() -> PathBuf {
    std::env::var_os("ETCDOPS_DEPS")
        .map_or_else(|| PathBuf::from("/var/cache/etcdops-deps"), PathBuf::from)
}

/// A release like `1.37.2` (a leading `v` is dropped).
fn release(s: &str) -> Option<String> {
    let s = s.trim().trim_start_matches('v');
    let parts: Vec<&str> = s.split('.').collect();
    (parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.parse::<u32>().is_ok()))
    .then(|| s.to_string())
}

/// The etcd image tag kubeadm writes for an etcd release (`3.6.17` -> `3.6.17-0`).
pub fn image_tag(etcd_version: &str) -> String {
    format!("{etcd_version}-0")
}

/// The etcd release of an image tag (`3.6.17-0` -> `3.6.17`).
pub fn tag_release(tag: &str) -> &str {
    match tag.rsplit_once('-') {
        Some((v, n)) if n.chars().all(|c| c.is_ascii_digit()) => v,
        _ => tag,
    }
}

/// The etcd binary `scripts/build-etcd.sh` built for a release.
pub fn built_etcd(version: &str) -> PathBuf {
    deps_dir().join(format!("etcd-{version}")).join("etcd")
}

/// What an etcd binary says it is (`etcd --version`).
pub fn etcd_version(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("run", bin, e))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .and_then(release)
        .ok_or_else(|| Error::input(bin, "`--version` names no etcd release"))
}

/// A kubeadm binary and its release.
#[derive(Debug, Clone)]
pub struct Kubeadm {
    pub bin: PathBuf,
    pub version: String,
}

impl Kubeadm {
    /// `spec` is a release (`1.37.2`: `scripts/build-k8s.sh kubeadm 1.37.2` builds it) or the
    /// path of a kubeadm binary.
    pub fn resolve(spec: &str) -> Result<Kubeadm> {
        let bin = match release(spec) {
            Some(v) => {
                let bin = deps_dir().join(format!("kubernetes-{v}")).join("kubeadm");
                if !bin.is_file() {
                    return Err(Error::Usage(format!(
                        "--kubeadm {spec}: {} is missing; build it with scripts/build-k8s.sh kubeadm {v}",
                        bin.display()
                    )));
                }
                bin
            }
            None => fs::canonicalize(spec)
                .map_err(|e| Error::input(spec, format!("kubeadm binary: {e}")))?,
        };
        let out = Command::new(&bin)
            .args(["version", "-o", "short"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io("run", &bin, e))?;
        let version = release(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
            Error::input(
                &bin,
                format!(
                    "`kubeadm version -o short` names no release ({}); was it built with the version ldflags (scripts/build-k8s.sh)?",
                    String::from_utf8_lossy(&out.stdout).trim()
                ),
            )
        })?;
        Ok(Kubeadm { bin, version })
    }

    /// Run `kubeadm ARGS` offline (a network namespace of its own), its output appended to
    /// `log`, within `TIMEOUT`.
    pub fn run(&self, args: &[&str], env: &[(&str, &Path)], log: &Path) -> Result<()> {
        let what = format!("kubeadm {}", args.join(" "));
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io("open", log, e))?;
        let start_len = out.metadata().map(|m| m.len()).unwrap_or(0);
        let err = out.try_clone().map_err(|e| Error::io("dup", log, e))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .current_dir("/");
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: unshare is a plain syscall, fine between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                unshare(CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| Error::io("run", &self.bin, e))?;
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(s) = child
                .try_wait()
                .map_err(|e| Error::io("wait", &self.bin, e))?
            {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::failed(
                    what,
                    format!("still running after {}s; killed", TIMEOUT.as_secs()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if status.success() {
            return Ok(());
        }
        let text = fs::read(log).unwrap_or_default();
        let tail = String::from_utf8_lossy(&text[(start_len as usize).min(text.len())..])
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string();
        Err(Error::failed(
            what,
            format!("{status}: {tail} (see {})", log.display()),
        ))
    }
}

/// What one node's kubeadm config says.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// The node's (loopback) address.
    pub address: String,
    /// What kubeadm is told instead (see the module doc).
    pub kubeadm_address: String,
    /// kubeadm's `certificatesDir` (the etcd PKI is its `etcd/`).
    pub cert_dir: PathBuf,
    pub data_dir: PathBuf,
    pub kubernetes_version: String,
    pub image_tag: String,
}

impl NodeConfig {
    pub fn for_node(lab: &Lab, node: usize, kubernetes_version: &str, image_tag: &str) -> Self {
        NodeConfig {
            name: lab.node_name(node),
            address: lab.ip(node).to_string(),
            kubeadm_address: stand_in_address(node),
            cert_dir: lab.cert_dir(node),
            data_dir: lab.data_dir(node),
            kubernetes_version: kubernetes_version.to_string(),
            image_tag: image_tag.to_string(),
        }
    }

    /// The kubeadm config (v1beta4). Every node shares the host's network, so the client and
    /// metrics URLs are the node's address only (kubeadm's defaults add 127.0.0.1:2379 and
    /// put metrics on 127.0.0.1:2381, which every node would claim): `extraArgs`, as a user
    /// with several control planes on one host would write. kubeadm then probes the metrics
    /// address (`GetEtcdProbeEndpoint`).
    pub fn yaml(&self) -> String {
        let q = |p: &Path| yaml_quote(&p.to_string_lossy());
        format!(
            r#"apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: {kaddr}
  bindPort: 6443
nodeRegistration:
  name: {name}
  criSocket: unix:///var/run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v{kv}
clusterName: etcdops-lab
certificatesDir: {certs}
imageRepository: {repo}
etcd:
  local:
    imageRepository: {repo}
    imageTag: {tag}
    dataDir: {data}
    serverCertSANs:
    - {addr}
    peerCertSANs:
    - {addr}
    extraArgs:
    - name: listen-client-urls
      value: https://{addr}:2379
    - name: listen-metrics-urls
      value: http://{addr}:2381
"#,
            addr = self.address,
            kaddr = self.kubeadm_address,
            name = self.name,
            kv = self.kubernetes_version,
            certs = q(&self.cert_dir),
            data = q(&self.data_dir),
            repo = IMAGE_REPOSITORY,
            tag = self.image_tag,
        )
    }
}

/// The address kubeadm is given for node `node` (see the module doc).
pub fn stand_in_address(node: usize) -> String {
    format!("192.0.2.{}", 10 + node)
}

/// Put the node's address where kubeadm wrote the stand-in (URLs and the annotation).
pub fn with_node_address(text: &str, stand_in: &str, address: &str) -> Result<String> {
    let out = text.replace(&format!("//{stand_in}:"), &format!("//{address}:"));
    if let Some(line) = out.lines().find(|l| l.contains("192.0.2.")) {
        return Err(Error::failed(
            "put the node's address into kubeadm's manifest",
            format!("a stand-in address is left: {}", line.trim()),
        ));
    }
    Ok(out)
}

fn yaml_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The node's kubeadm config file.
pub fn config_path(lab: &Lab, node: usize) -> PathBuf {
    lab.node_dir(node).join("kubeadm.yaml")
}

fn log_path(lab: &Lab, node: usize) -> PathBuf {
    lab.node_dir(node).join("kubeadm.log")
}

/// Write each node's kubeadm config and PKI: one etcd CA (made by kubeadm on node 1, copied
/// to the others as `kubeadm join --control-plane` copies the shared certificates), then each
/// node's own certificates.
pub fn write_pki(kubeadm: &Kubeadm, lab: &Lab, configs: &[NodeConfig]) -> Result<()> {
    for (i, c) in configs.iter().enumerate() {
        let node = i + 1;
        let dir = lab.node_dir(node);
        fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let path = config_path(lab, node);
        fs::write(&path, c.yaml()).map_err(|e| Error::io("write", &path, e))?;
    }
    let first = config_path(lab, 1);
    let first_s = first.to_string_lossy().to_string();
    kubeadm.run(
        &["init", "phase", "certs", "etcd-ca", "--config", &first_s],
        &[],
        &log_path(lab, 1),
    )?;
    let ca_dir = lab.pki_dir(1);
    for node in 1..=configs.len() {
        let dir = lab.pki_dir(node);
        if node > 1 {
            fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
            for f in ["ca.crt", "ca.key"] {
                let (from, to) = (ca_dir.join(f), dir.join(f));
                fs::copy(&from, &to).map_err(|e| Error::io("copy", &from, e))?;
            }
        }
        let config = config_path(lab, node).to_string_lossy().to_string();
        for phase in [
            "etcd-server",
            "etcd-peer",
            "etcd-healthcheck-client",
            "apiserver-etcd-client",
        ] {
            kubeadm.run(
                &["init", "phase", "certs", phase, "--config", &config],
                &[],
                &log_path(lab, node),
            )?;
        }
    }
    Ok(())
}

/// kubeadm's `etcd.yaml` for the node as `kubeadm init` writes it (a one-member cluster).
pub fn init_manifest(kubeadm: &Kubeadm, lab: &Lab, node: usize) -> Result<String> {
    let text = etcd_manifest(
        kubeadm,
        &config_path(lab, node),
        &lab.node_dir(node).join("kubeadm-manifests"),
        &log_path(lab, node),
    )?;
    with_node_address(&text, &stand_in_address(node), &lab.ip(node).to_string())
}

/// What `kubeadm init phase etcd local --config CONFIG` writes as `etcd.yaml`: run with
/// `--dry-run` into `out` (created, then removed), so nothing lands in `/etc/kubernetes`.
pub fn etcd_manifest(kubeadm: &Kubeadm, config: &Path, out: &Path, log: &Path) -> Result<String> {
    if out.exists() {
        fs::remove_dir_all(out).map_err(|e| Error::io("remove", out, e))?;
    }
    fs::create_dir_all(out).map_err(|e| Error::io("create", out, e))?;
    let config = config.to_string_lossy().to_string();
    kubeadm.run(
        &[
            "init",
            "phase",
            "etcd",
            "local",
            "--config",
            &config,
            "--dry-run",
        ],
        &[("KUBEADM_INIT_DRYRUN_DIR", out)],
        log,
    )?;
    let written = out.join("etcd.yaml");
    let text = fs::read_to_string(&written).map_err(|e| {
        Error::failed(
            format!(
                "kubeadm init phase etcd local --config {}",
                shell_quote(&config)
            ),
            format!("wrote no {}: {e}", written.display()),
        )
    })?;
    fs::remove_dir_all(out).map_err(|e| Error::io("remove", out, e))?;
    Ok(text)
}

/// The joining node's manifest: kubeadm's init manifest with exactly the difference `kubeadm
/// join` makes (see the module doc). `members` are `(name, peer URL)` in the order of the
/// member list, the joining node among them.
pub fn join_manifest(init: &str, members: &[(String, String)]) -> Result<String> {
    let list: Vec<String> = members.iter().map(|(n, u)| format!("{n}={u}")).collect();
    let mut out = String::with_capacity(init.len() + 64);
    let mut replaced = false;
    for line in init.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with("- --initial-cluster=") {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}- --initial-cluster={}\n", list.join(",")));
            out.push_str(&format!("{indent}- --initial-cluster-state=existing\n"));
            replaced = true;
        } else if trimmed.starts_with("- --initial-cluster-state=") {
            return Err(Error::failed(
                "make the joining node's manifest",
                "kubeadm's init manifest has --initial-cluster-state already",
            ));
        } else {
            out.push_str(line);
        }
    }
    if !replaced {
        return Err(Error::failed(
            "make the joining node's manifest",
            "kubeadm's init manifest has no --initial-cluster line",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_releases() {
        assert_eq!(image_tag("3.6.17"), "3.6.17-0");
        assert_eq!(tag_release("3.6.17-0"), "3.6.17");
        assert_eq!(tag_release("3.5.36"), "3.5.36");
        assert_eq!(release("v1.37.2").as_deref(), Some("1.37.2"));
        assert_eq!(release("/usr/bin/kubeadm"), None);
        assert_eq!(release("1.37"), None);
        assert_eq!(default_for_etcd("3.5.36"), VERSION_FOR_ETCD_3_5);
        assert_eq!(default_for_etcd("3.6.17"), DEFAULT_VERSION);
        assert_eq!(default_for_etcd("3.7.4"), DEFAULT_VERSION);
    }

    #[test]
    fn join_changes_only_the_initial_cluster() {
        let init = "    - --data-dir=/d\n    - --initial-advertise-peer-urls=https://127.0.0.12:2380\n    - --initial-cluster=node2=https://127.0.0.12:2380\n    - --key-file=/k\n";
        let members = vec![
            ("node1".to_string(), "https://127.0.0.11:2380".to_string()),
            ("node2".to_string(), "https://127.0.0.12:2380".to_string()),
        ];
        let out = join_manifest(init, &members).unwrap();
        assert_eq!(
            out,
            "    - --data-dir=/d\n    - --initial-advertise-peer-urls=https://127.0.0.12:2380\n    - --initial-cluster=node1=https://127.0.0.11:2380,node2=https://127.0.0.12:2380\n    - --initial-cluster-state=existing\n    - --key-file=/k\n"
        );
        assert!(join_manifest("    - --name=x\n", &members).is_err());
    }

    #[test]
    fn node_address_replaces_the_stand_in_everywhere() {
        let text = "    kubeadm.kubernetes.io/etcd.advertise-client-urls: https://192.0.2.11:2379\n    - --initial-cluster=node1=https://192.0.2.11:2380\n";
        assert_eq!(
            with_node_address(text, "192.0.2.11", "127.0.0.11").unwrap(),
            "    kubeadm.kubernetes.io/etcd.advertise-client-urls: https://127.0.0.11:2379\n    - --initial-cluster=node1=https://127.0.0.11:2380\n"
        );
        assert!(with_node_address("    host: 192.0.2.11\n", "192.0.2.11", "127.0.0.11").is_err());
    }
}
