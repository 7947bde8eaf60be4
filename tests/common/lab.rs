//! A running `etcdops-lab` for a test: up on a loopback prefix of its own, down on drop
//! (even when the test panics). Runs etcdops with a node's environment. `Lab::up` is the
//! plain lab; `Lab::up_systemd` boots systemd-nspawn nodes (and fails, never skips, when
//! nspawn cannot run here).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Run, Version};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The prefix claims of the labs alive in this process, by lab dir (dropped with the lab).
static PREFIX_CLAIMS: std::sync::Mutex<Vec<(PathBuf, std::os::unix::net::UnixListener)>> =
    std::sync::Mutex::new(Vec::new());

/// A loopback prefix no other lab on this machine uses: test binaries of several checkouts
/// run at once on a shared machine, and two labs on one prefix fight over 2379/2380 (one
/// lab's client then meets the other's certificates). Each prefix is claimed by binding an
/// abstract unix socket named after it (one binder per name in the network namespace),
/// held as long as the lab lives; the kernel frees the name when the test process dies,
/// and no file is left behind.
fn claim_prefix(dir: &Path) -> String {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let start = (std::process::id() % 100) * 250 + n % 250;
    for k in 0..100 * 250 {
        let slot = (start + k) % (100 * 250);
        let prefix = format!("127.{}.{}", 100 + slot / 250, slot % 250);
        let name = format!("etcdops-lab-prefix-{prefix}");
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        if let Ok(claim) = UnixListener::bind_addr(&addr) {
            PREFIX_CLAIMS
                .lock()
                .unwrap()
                .push((dir.to_path_buf(), claim));
            return prefix;
        }
    }
    panic!("every lab prefix 127.100-199.0-249 is claimed by another lab");
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub nodes: usize,
    pub version: Version,
    /// Booted with `up --systemd`.
    pub systemd: bool,
}

pub fn lab_bin() -> &'static str {
    env!("CARGO_BIN_EXE_etcdops-lab")
}

impl Lab {
    pub fn up(version: Version, nodes: usize) -> Lab {
        Self::up_with(version, nodes, &[])
    }

    /// A lab whose nodes are systemd-nspawn containers with kubelet.service, their data dir
    /// and new disk (`mnt/etcd-disk`) backed by `disk`: "ext4", "xfs" or "dir".
    pub fn up_systemd(version: Version, nodes: usize, disk: &str) -> Lab {
        Self::up_with(version, nodes, &["--systemd", "--disk", disk])
    }

    /// A lab whose nodes run the real kubelet and containerd (`up --kubelet real`) on
    /// `version`'s etcd, from the image `scripts/build-lab-images.sh <release>` built.
    pub fn up_real(version: Version, nodes: usize) -> Lab {
        Self::up_with(version, nodes, &["--kubelet", "real", "--timeout", "180s"])
    }

    fn up_with(version: Version, nodes: usize, extra: &[&str]) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("etcdops-lab-")
            .tempdir()
            .expect("temp dir");
        // A prefix per lab so that labs of concurrent tests never share an address.
        let prefix = claim_prefix(dir.path());
        let out = Command::new(lab_bin())
            .args(["up", "--dir"])
            .arg(dir.path())
            .args([
                "--nodes",
                &nodes.to_string(),
                "--ip-prefix",
                &prefix,
                "--etcd",
            ])
            .arg(version.etcd())
            .args(extra)
            .output()
            .expect("run etcdops-lab up");
        let lab = Lab {
            dir,
            nodes,
            version,
            systemd: extra.contains(&"--systemd"),
        };
        assert!(
            out.status.success(),
            "etcdops-lab up failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            lab.logs()
        );
        lab
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn node_dir(&self, node: usize) -> PathBuf {
        self.path().join(format!("node{node}"))
    }

    pub fn manifest(&self, node: usize) -> PathBuf {
        self.node_dir(node)
            .join("etc/kubernetes/manifests/etcd.yaml")
    }

    pub fn data_dir(&self, node: usize) -> PathBuf {
        self.node_dir(node).join("var/lib/etcd")
    }

    pub fn state_dir(&self, node: usize) -> PathBuf {
        self.node_dir(node).join("var/lib/etcdops")
    }

    /// Node I's "new disk" on a systemd lab (a loop device with `--disk ext4|xfs`, mounted
    /// only inside the node: reach its files through `in_node`).
    pub fn new_disk(&self, node: usize) -> PathBuf {
        assert!(self.systemd, "only a systemd lab has a new disk per node");
        self.node_dir(node).join("mnt/etcd-disk")
    }

    /// `path` as node `node` sees it, for the test to read or write. A systemd lab's loop
    /// disks are mounted only in the mount namespace of the node's nspawn, never in the
    /// host's, so the test goes through `/proc/<nspawn pid>/root`, that namespace's view of
    /// the whole tree (a `setns` of this multi-threaded test process is refused). On a plain
    /// lab, `path` itself.
    pub fn in_node(&self, node: usize, path: &Path) -> PathBuf {
        if !self.systemd {
            return path.to_path_buf();
        }
        let text = std::fs::read_to_string(self.path().join("created.json"))
            .expect("a systemd lab records its nodes in created.json");
        let items: Vec<serde_json::Value> = serde_json::from_str(&text).expect("created.json");
        let nspawn = items
            .iter()
            .find(|i| i["kind"] == "node" && i["node"].as_u64() == Some(node as u64))
            .and_then(|i| i["nspawn"].as_i64())
            .unwrap_or_else(|| panic!("node {node} not in {text}"));
        let rel = path.strip_prefix("/").expect("an absolute path");
        PathBuf::from(format!("/proc/{nspawn}/root")).join(rel)
    }

    pub fn pki(&self, node: usize) -> PathBuf {
        self.node_dir(node).join("etc/kubernetes/pki/etcd")
    }

    /// The environment `etcdops-lab env` gives for a node.
    pub fn env(&self, node: usize) -> Vec<(String, String)> {
        let out = self.lab(&["env", "--node", &node.to_string()]);
        assert_eq!(out.code, 0, "{}", out.dump());
        out.stdout
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                let v = v
                    .strip_prefix('\'')
                    .and_then(|v| v.strip_suffix('\''))
                    .unwrap_or(v)
                    .replace(r"'\''", "'");
                (k.to_string(), v)
            })
            .collect()
    }

    /// Run etcdops-lab with `--dir` filled in after the subcommand words.
    pub fn lab(&self, words: &[&str]) -> Run {
        let mut args: Vec<String> = Vec::new();
        let mut it = words.iter();
        // The subcommand (and for `kubelet`, its action) come before --dir.
        if let Some(first) = it.next() {
            args.push(first.to_string());
            if *first == "kubelet"
                && let Some(action) = it.next()
            {
                args.push(action.to_string());
            }
        }
        args.push("--dir".into());
        args.push(self.path().display().to_string());
        args.extend(it.map(|s| s.to_string()));
        let out = Command::new(lab_bin())
            .args(&args)
            .output()
            .expect("run etcdops-lab");
        Run {
            cmd: format!("etcdops-lab {}", args.join(" ")),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            context: self.logs(),
        }
    }

    /// etcdops with node `node`'s environment plus `extra` env; on a systemd lab run where
    /// the node's disks are mounted (`ETCDOPS_LAB_NODE_EXEC`).
    pub fn etcdops(&self, node: usize, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let env = self.env(node);
        if let Some((_, exec)) = env.iter().find(|(k, _)| k == "ETCDOPS_LAB_NODE_EXEC") {
            return self.etcdops_in_node(exec, &env, args, extra);
        }
        let mut all: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(extra);
        let mut run = super::etcdops(&super::args(args), &all, None);
        run.context = self.logs();
        run
    }

    fn etcdops_in_node(
        &self,
        exec: &str,
        env: &[(String, String)],
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> Run {
        let bin = env!("CARGO_BIN_EXE_etcdops");
        let mut words = exec.split_whitespace();
        let mut cmd = Command::new(words.next().expect("a node exec prefix"));
        cmd.args(words).arg(bin).args(args);
        cmd.stdin(std::process::Stdio::null());
        for var in [
            "ETCDCTL_ENDPOINTS",
            "ETCDCTL_CACERT",
            "ETCDCTL_CERT",
            "ETCDCTL_KEY",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run etcdops in the node");
        Run {
            cmd: format!("{exec} {bin} {}", args.join(" ")),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            context: self.logs(),
        }
    }

    /// A shell command from a node's environment (`ETCDOPS_KUBELET_STOP_CMD`...), not yet run.
    pub fn env_command(&self, node: usize, key: &str) -> Command {
        let env = self.env(node);
        let (_, v) = env
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("{key} missing from the env of node {node}"));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", v]);
        cmd
    }

    /// The tail of every node's kubelet and etcd log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in 1..=self.nodes {
            for f in ["kubelet.log", "etcd.log", "containerd.log"] {
                let p = self.node_dir(n).join(f);
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                out.push_str(&format!("--- node{n} {f} ---\n"));
                for l in &lines[lines.len().saturating_sub(8)..] {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// HashKV of every member at its current revision, as (hash, revision): one value and
    /// one revision when the members agree.
    pub fn hashes(&self) -> Vec<(String, String)> {
        let out = self.etcdctl(&["endpoint", "hashkv", "-w", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["HashKV"]["hash"].to_string(),
                    e["HashKV"]["header"]["revision"].to_string(),
                )
            })
            .collect()
    }

    /// etcdctl against every node with node 1's client certificate.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        let pki = self.pki(1);
        let eps: Vec<String> = (1..=self.nodes).map(|n| self.client_url(n)).collect();
        Command::new(self.version.etcdctl())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", eps.join(",")))
            .arg(format!("--cacert={}", pki.join("ca.crt").display()))
            .arg(format!(
                "--cert={}",
                pki.join("healthcheck-client.crt").display()
            ))
            .arg(format!(
                "--key={}",
                pki.join("healthcheck-client.key").display()
            ))
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    /// An `etcdops` command with node `node`'s environment plus `extra`, for a test that
    /// spawns it (to signal it) instead of running it to the end.
    pub fn etcdops_cmd(&self, node: usize, args: &[&str], extra: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdops"));
        cmd.args(args);
        for var in [
            "ETCDCTL_ENDPOINTS",
            "ETCDCTL_CACERT",
            "ETCDCTL_CERT",
            "ETCDCTL_KEY",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in self.env(node) {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    }

    /// etcdctl against node `node` alone, with node 1's client certificate.
    pub fn etcdctl_node(&self, node: usize, args: &[&str]) -> std::process::Output {
        let pki = self.pki(1);
        Command::new(self.version.etcdctl())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url(node)))
            .arg(format!("--cacert={}", pki.join("ca.crt").display()))
            .arg(format!(
                "--cert={}",
                pki.join("healthcheck-client.crt").display()
            ))
            .arg(format!(
                "--key={}",
                pki.join("healthcheck-client.key").display()
            ))
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    /// How many keys under `prefix` node `node` serves from its own data (a serializable
    /// read: answered by that member, not forwarded to the leader). None if it cannot answer.
    pub fn count_on(&self, node: usize, prefix: &str) -> Option<u64> {
        let out = self.etcdctl_node(
            node,
            &[
                "get",
                "--prefix",
                prefix,
                "--keys-only",
                "--consistency=s",
                "-w",
                "json",
            ],
        );
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(v["count"].as_u64().unwrap_or(0))
    }

    /// Put `n` keys `prefix<i>` with `size`-byte values through every endpoint, with one
    /// client (thousands of etcdctl processes would take minutes).
    pub fn put_many(&self, prefix: &str, n: usize, size: usize) {
        let endpoints: Vec<String> = (1..=self.nodes).map(|i| self.client_url(i)).collect();
        let pki = self.pki(1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let value = "k".repeat(size);
        rt.block_on(async move {
            let read = |f: &str| std::fs::read(pki.join(f)).expect("read lab pki");
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(std::time::Duration::from_secs(2))
                .with_timeout(std::time::Duration::from_secs(10))
                .with_tls(
                    etcd_client::TlsOptions::new()
                        .ca_certificate(etcd_client::Certificate::from_pem(read("ca.crt")))
                        .identity(etcd_client::Identity::from_pem(
                            read("healthcheck-client.crt"),
                            read("healthcheck-client.key"),
                        )),
                );
            let mut c = etcd_client::Client::connect(endpoints, Some(opts))
                .await
                .expect("connect to the lab");
            for i in 0..n {
                c.put(format!("{prefix}{i}"), value.clone(), None)
                    .await
                    .unwrap_or_else(|e| panic!("put {prefix}{i}: {e}"));
            }
        });
    }

    /// The client URL of a node, read from its manifest's advertise URL.
    pub fn client_url(&self, node: usize) -> String {
        let text = std::fs::read_to_string(self.node_dir(node).join("../lab.json")).unwrap();
        let cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
        format!(
            "https://{}.{}:2379",
            cfg["ip_prefix"].as_str().unwrap(),
            10 + node
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(lab_bin())
            .args(["down", "--dir"])
            .arg(self.path())
            .output();
        // Only now, with its etcd gone, may another lab take this prefix.
        if let Ok(mut held) = PREFIX_CLAIMS.lock() {
            held.retain(|(dir, _)| dir != self.path());
        }
    }
}
