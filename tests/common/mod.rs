//! The real-etcd test harness: start etcd 3.5, 3.6 or 3.7 members (one or three, plain or TLS
//! with client-cert auth) on free loopback ports in temp dirs, stopped when the test ends,
//! even if it panics. Helpers write keys, kill members and raise NOSPACE. Running the
//! `etcdops` binary goes through `Run`, which dumps the command, its status, stdout, stderr
//! and the etcd logs when an expectation fails.
#![allow(dead_code)]

pub mod lab;
pub mod loopfs;
pub mod proc;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcdops::lab::pki::{Authority, Pki};

/// The etcd releases the suite runs against: the newest 3.5 (>= 3.5.26, the floor before a
/// 3.6 upgrade), 3.6 and 3.7 that the Go module proxy serves, built by
/// `scripts/build-etcd.sh` (called by `scripts/install-deps.sh`). 3.6 is the default: every
/// supported kubeadm ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V35,
    V36,
    V37,
}

pub const VERSIONS: [Version; 3] = [Version::V35, Version::V36, Version::V37];

/// Where `scripts/build-etcd.sh` caches its builds: `ETCDOPS_DEPS`, else /var/cache/etcdops-deps.
pub fn deps_dir() -> PathBuf {
    std::env::var_os("ETCDOPS_DEPS")
        .map_or_else(|| PathBuf::from("/var/cache/etcdops-deps"), PathBuf::from)
}

impl Version {
    /// The etcd binary: `ETCD35_DIR`/`ETCD36_DIR`/`ETCD37_DIR`, else where install-deps puts it.
    pub fn etcd(self) -> PathBuf {
        self.bin("etcd")
    }

    pub fn etcdctl(self) -> PathBuf {
        self.bin("etcdctl")
    }

    /// etcdutl: the offline tool (snapshot restore, defrag --data-dir) of every release here.
    pub fn etcdutl(self) -> PathBuf {
        self.bin("etcdutl")
    }

    /// The exact release built for this line.
    pub fn release(self) -> &'static str {
        match self {
            Version::V35 => "3.5.36",
            Version::V36 => "3.6.17",
            Version::V37 => "3.7.4",
        }
    }

    fn bin(self, name: &str) -> PathBuf {
        let var = match self {
            Version::V35 => "ETCD35_DIR",
            Version::V36 => "ETCD36_DIR",
            Version::V37 => "ETCD37_DIR",
        };
        let dir = std::env::var_os(var).map_or_else(
            || deps_dir().join(format!("etcd-{}", self.release())),
            PathBuf::from,
        );
        let path = dir.join(name);
        assert!(
            path.exists(),
            "{} not found: run scripts/install-deps.sh",
            path.display()
        );
        path
    }

    /// kubeadm's image reference for this release: `registry.k8s.io/etcd:3.6.17-0`.
    pub fn image(self) -> String {
        format!("registry.k8s.io/etcd:{}-0", self.release())
    }

    pub fn prefix(self) -> &'static str {
        match self {
            Version::V35 => "3.5.",
            Version::V36 => "3.6.",
            Version::V37 => "3.7.",
        }
    }
}

/// A free TCP port on 127.0.0.1 (released before etcd binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub version: Version,
    pub members: usize,
    pub tls: bool,
    pub quota: Option<u64>,
}

impl Spec {
    pub fn new(version: Version, members: usize) -> Self {
        Spec {
            version,
            members,
            tls: false,
            quota: None,
        }
    }
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
    pub fn quota(mut self, bytes: u64) -> Self {
        self.quota = Some(bytes);
        self
    }
}

pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    /// `--listen-metrics-urls` (plain HTTP, as kubeadm's): `/livez`, `/readyz`, `/metrics`.
    pub metrics_url: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

pub struct Cluster {
    pub spec: Spec,
    pub members: Vec<Member>,
    pub pki: Option<Pki>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Start the members and wait until every one is healthy (30 s).
    pub fn start(spec: Spec) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("etcdops-test-")
            .tempdir()
            .expect("temp dir");
        let pki = spec.tls.then(|| {
            Authority::new("etcd-ca")
                .and_then(|ca| {
                    ca.write_node(
                        &dir.path().join("pki"),
                        "test",
                        &["127.0.0.1".parse().unwrap()],
                    )
                })
                .expect("generate test PKI")
        });
        let scheme = if spec.tls { "https" } else { "http" };
        let mut members: Vec<Member> = (0..spec.members)
            .map(|i| {
                let name = format!("m{i}");
                Member {
                    client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                    peer_url: format!("http://127.0.0.1:{}", free_port()),
                    metrics_url: format!("http://127.0.0.1:{}", free_port()),
                    data_dir: dir.path().join(&name).join("data"),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    args: Vec::new(),
                    child: None,
                }
            })
            .collect();
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect();
        let initial = initial.join(",");
        for m in &mut members {
            let mut args = vec![
                format!("--name={}", m.name),
                format!("--data-dir={}", m.data_dir.display()),
                format!("--listen-client-urls={}", m.client_url),
                format!("--advertise-client-urls={}", m.client_url),
                format!("--listen-peer-urls={}", m.peer_url),
                format!("--listen-metrics-urls={}", m.metrics_url),
                format!("--initial-advertise-peer-urls={}", m.peer_url),
                format!("--initial-cluster={initial}"),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=etcdops-test".into(),
                "--logger=zap".into(),
                // Fast elections keep tests short; loopback latency is tiny.
                "--heartbeat-interval=50".into(),
                "--election-timeout=500".into(),
            ];
            if let Some(q) = spec.quota {
                args.push(format!("--quota-backend-bytes={q}"));
            }
            if let Some(p) = &pki {
                args.push(format!("--cert-file={}", p.server_cert().display()));
                args.push(format!("--key-file={}", p.server_key().display()));
                args.push(format!("--trusted-ca-file={}", p.ca_cert().display()));
                args.push("--client-cert-auth".into());
            }
            m.args = args;
        }
        let mut cluster = Cluster {
            spec,
            members,
            pki,
            dir,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i);
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let version = self.spec.version;
        let m = &mut self.members[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("open member log");
        let child = Command::new(version.etcd())
            .args(&m.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        m.child = Some(child);
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    pub fn endpoints_csv(&self) -> String {
        self.endpoints().join(",")
    }

    /// `--cacert/--cert/--key` for clients (empty without TLS).
    pub fn tls_args(&self) -> Vec<String> {
        match &self.pki {
            Some(p) => vec![
                format!("--cacert={}", p.ca_cert().display()),
                format!("--cert={}", p.client_cert().display()),
                format!("--key={}", p.client_key().display()),
            ],
            None => Vec::new(),
        }
    }

    /// Global etcdops flags to reach every member.
    pub fn client_args(&self) -> Vec<String> {
        let mut a = vec![format!("--endpoints={}", self.endpoints_csv())];
        a.extend(self.tls_args());
        a
    }

    /// Run etcdctl of the cluster's version against all endpoints.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.spec.version.etcdctl())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints_csv()))
            .args(self.tls_args())
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    /// Wait until every running member answers `endpoint health`.
    /// Wait (30 s) until every member reports `storageVersion` `v` (etcd >= 3.6 moves it
    /// from 3.5.0 to the cluster version shortly after the cluster version is decided).
    pub fn wait_storage_version(&self, v: &str) {
        wait_for(
            &format!("every member to report storage version {v}"),
            Duration::from_secs(30),
            || {
                let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
                let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                    return false;
                };
                doc.as_array().is_some_and(|eps| {
                    eps.len() == self.members.len()
                        && eps.iter().all(|e| e["Status"]["storageVersion"] == v)
                })
            },
        );
    }

    pub fn wait_healthy(&self, timeout: Duration) {
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.clone())
            .collect();
        let mut last = String::new();
        let healthy = try_wait_for(timeout, || {
            let out = Command::new(self.spec.version.etcdctl())
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", running.join(",")))
                .args(self.tls_args())
                .args(["endpoint", "health", "--command-timeout=2s"])
                .output()
                .expect("run etcdctl");
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success()
        });
        assert!(
            healthy,
            "etcd cluster not healthy after {timeout:?}: {last}\n{}",
            self.logs()
        );
    }

    /// SIGKILL a member.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop every member (SIGKILL; etcd's WAL makes that safe) and keep the data dirs.
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Start a killed member again on its data dir.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// Put `n` keys `prefix<i>` with `size`-byte values through the first endpoint.
    pub fn put_many(&self, prefix: &str, n: usize, size: usize) {
        let value = "x".repeat(size);
        self.with_client(|mut c| async move {
            for i in 0..n {
                c.put(format!("{prefix}{i}"), value.clone(), None)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .expect("put keys");
    }

    pub fn put(&self, key: &str, value: &str) {
        let (k, v) = (key.to_string(), value.to_string());
        self.with_client(|mut c| async move {
            c.put(k, v, None).await.map_err(|e| e.to_string())?;
            Ok(())
        })
        .expect("put key");
    }

    /// Overwrite the same keys until etcd refuses with "database space exceeded".
    /// Needs a cluster started with a small `quota`. Returns the number of writes made.
    pub fn raise_nospace(&self) -> usize {
        let value = "n".repeat(64 * 1024);
        self.with_client(|mut c| async move {
            for i in 0..100_000usize {
                if let Err(e) = c.put(format!("fill{}", i % 8), value.clone(), None).await {
                    let text = e.to_string();
                    if text.contains("database space exceeded") {
                        return Ok(i);
                    }
                    return Err(text);
                }
            }
            Err("quota never reached".into())
        })
        .expect("raise NOSPACE")
    }

    /// Run an async closure with a client connected to all endpoints.
    pub fn with_client<F, Fut, T>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.clone())
            .collect();
        let pki = self.pki.clone();
        rt.block_on(async move {
            let mut opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(10));
            if let Some(p) = pki {
                let read = |p: PathBuf| fs::read(p).expect("read pki");
                opts = opts.with_tls(
                    etcd_client::TlsOptions::new()
                        .ca_certificate(etcd_client::Certificate::from_pem(read(p.ca_cert())))
                        .identity(etcd_client::Identity::from_pem(
                            read(p.client_cert()),
                            read(p.client_key()),
                        )),
                );
            }
            let client = etcd_client::Client::connect(endpoints, Some(opts))
                .await
                .map_err(|e| e.to_string())?;
            f(client).await
        })
    }

    /// Run an async closure with a client connected to member `i` alone (maintenance calls
    /// such as Hash answer for the member they reach).
    pub fn with_member_client<F, Fut, T>(&self, i: usize, f: F) -> Result<T, String>
    where
        F: FnOnce(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let endpoint = self.members[i].client_url.clone();
        let pki = self.pki.clone();
        rt.block_on(async move {
            let mut opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(10));
            if let Some(p) = pki {
                let read = |p: PathBuf| fs::read(p).expect("read pki");
                opts = opts.with_tls(
                    etcd_client::TlsOptions::new()
                        .ca_certificate(etcd_client::Certificate::from_pem(read(p.ca_cert())))
                        .identity(etcd_client::Identity::from_pem(
                            read(p.client_cert()),
                            read(p.client_key()),
                        )),
                );
            }
            let client = etcd_client::Client::connect([endpoint.clone()], Some(opts))
                .await
                .map_err(|e| format!("{endpoint}: {e}"))?;
            f(client).await
        })
    }

    /// kubeadm's manifest for member 0 (TLS cluster) in `dir`: written by `kubeadm init phase
    /// etcd local` (1.37.2, or 1.35.4 for etcd older than 3.6: see `etcdops::lab::kubeadm`)
    /// from a config with kubeadm's default container paths (`/etc/kubernetes/pki`,
    /// `/var/lib/etcd`), a node address of 10.0.0.5, the member's client URL added to
    /// `listen-client-urls` and `quota` as `quota-backend-bytes` (`extraArgs`). Then the one
    /// change a real node does not have: the two hostPath volumes point at the test's PKI and
    /// member 0's data dir, so the flags' container paths must be mapped through them.
    pub fn kubeadm_manifest(&self, dir: &Path, quota: Option<u64>) -> PathBuf {
        use etcdops::lab::kubeadm::{self, Kubeadm};
        let pki = self.pki.clone().expect("a TLS cluster");
        let m = &self.members[0];
        let etcd_version =
            kubeadm::etcd_version(&self.spec.version.etcd()).expect("etcd --version");
        let kubeadm = Kubeadm::resolve(kubeadm::default_for_etcd(&etcd_version))
            .expect("kubeadm built by scripts/install-deps.sh");
        let quota = quota.map_or(String::new(), |q| {
            format!("    - name: quota-backend-bytes\n      value: \"{q}\"\n")
        });
        let config = dir.join("kubeadm.yaml");
        fs::write(
            &config,
            format!(
                r#"apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: 10.0.0.5
nodeRegistration:
  name: node
  criSocket: unix:///var/run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v{kv}
etcd:
  local:
    imageTag: {etcd_version}-0
    extraArgs:
    - name: listen-client-urls
      value: {url},https://10.0.0.5:2379
    - name: listen-metrics-urls
      value: {metrics}
{quota}"#,
                kv = kubeadm.version,
                url = m.client_url,
                metrics = m.metrics_url,
            ),
        )
        .expect("write kubeadm config");
        let text = kubeadm::etcd_manifest(
            &kubeadm,
            &config,
            &dir.join("kubeadm-out"),
            &dir.join("kubeadm.log"),
        )
        .expect("kubeadm init phase etcd local");
        let mut out = String::new();
        for line in text.split_inclusive('\n') {
            let indent = &line[..line.len() - line.trim_start().len()];
            match line.trim() {
                "path: /etc/kubernetes/pki/etcd" => {
                    out.push_str(&format!("{indent}path: {}\n", pki.dir.display()))
                }
                "path: /var/lib/etcd" => {
                    out.push_str(&format!("{indent}path: {}\n", m.data_dir.display()))
                }
                _ => out.push_str(line),
            }
        }
        let manifest = dir.join("etcd.yaml");
        fs::write(&manifest, out).expect("write manifest");
        manifest
    }

    /// The last lines of every member's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!("--- {} log ({}) ---\n", m.name, m.log.display()));
            for l in tail {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// A Snapshot stream opened on every member and then left unread: etcd keeps the bbolt read
/// transaction of each stream open until the stream ends, and a defragment on that member
/// must close the db, which waits for every read transaction. So while this is held, a
/// defragment really hangs (a real fault, not a tiny timeout). Dropping it ends the streams
/// and the blocked defragments complete.
pub struct HeldSnapshots {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Cluster {
    /// Open and stall a Snapshot stream on every running member (see `HeldSnapshots`).
    /// The db must be larger than what gRPC buffers (a few hundred KB) for the stream to
    /// stall with its transaction open: callers write some MB first.
    pub fn hold_snapshots(&self) -> HeldSnapshots {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.clone())
            .collect();
        let pki = self.pki.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let held = rt.block_on(async move {
                let mut streams = Vec::new();
                for ep in endpoints {
                    let mut opts = etcd_client::ConnectOptions::new()
                        .with_connect_timeout(Duration::from_secs(2));
                    if let Some(p) = &pki {
                        let read = |p: PathBuf| fs::read(p).expect("read pki");
                        opts = opts.with_tls(
                            etcd_client::TlsOptions::new()
                                .ca_certificate(etcd_client::Certificate::from_pem(read(
                                    p.ca_cert(),
                                )))
                                .identity(etcd_client::Identity::from_pem(
                                    read(p.client_cert()),
                                    read(p.client_key()),
                                )),
                        );
                    }
                    let mut c = etcd_client::Client::connect([ep.clone()], Some(opts))
                        .await
                        .map_err(|e| format!("{ep}: {e}"))?;
                    let mut stream = c.snapshot().await.map_err(|e| format!("{ep}: {e}"))?;
                    // The first chunk proves the server began the stream (its read
                    // transaction is open); nothing more is read.
                    stream
                        .message()
                        .await
                        .map_err(|e| format!("{ep}: {e}"))?
                        .ok_or_else(|| format!("{ep}: empty snapshot stream"))?;
                    streams.push((c, stream));
                }
                Ok::<_, String>(streams)
            });
            match held {
                Ok(streams) => {
                    let _ = ready_tx.send(Ok(()));
                    // Blocking here stops this runtime: nobody reads the streams, so
                    // the servers' sends stall on flow control with their transactions open.
                    let _ = release_rx.recv();
                    drop(streams);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("snapshot streams opened within 30 s")
            .expect("open a snapshot stream on every member");
        HeldSnapshots {
            release: Some(release_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for HeldSnapshots {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The result of running the etcdops binary.
pub struct Run {
    pub cmd: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub context: String,
}

impl Run {
    /// A dump of everything a failing test should show.
    pub fn dump(&self) -> String {
        format!(
            "command: {}\nexit code: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
            self.cmd, self.code, self.stdout, self.stderr, self.context
        )
    }

    /// Assert the exit code; on mismatch print the whole dump.
    pub fn code(&self, expected: i32) -> &Self {
        assert_eq!(self.code, expected, "unexpected exit code\n{}", self.dump());
        self
    }

    /// Parse stdout as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document: {e}\n{}", self.dump()))
    }

    /// The error on stderr is exactly one line and contains `needle`. Indented lines are
    /// progress that a wait printed before the error ("  still waiting for ...", every 5 s
    /// of a wait, as the tool must): they are not the error and are not counted.
    pub fn one_line_error(&self, needle: &str) -> &Self {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.starts_with("  "))
            .collect();
        assert_eq!(lines.len(), 1, "expected one stderr line\n{}", self.dump());
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n{}",
            self.dump()
        );
        self
    }
}

/// Run `etcdops` with args and extra env; `cluster` logs are added to the dump.
pub fn etcdops(args: &[String], env: &[(&str, &str)], cluster: Option<&Cluster>) -> Run {
    let bin = env!("CARGO_BIN_EXE_etcdops");
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null());
    // Tests must not pick up the machine's real connection settings.
    for var in [
        "ETCDCTL_ENDPOINTS",
        "ETCDCTL_CACERT",
        "ETCDCTL_CERT",
        "ETCDCTL_KEY",
        "ETCDOPS_MANIFEST",
        "ETCDOPS_STATE_DIR",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run etcdops");
    Run {
        cmd: format!("{bin} {}", args.join(" ")),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        context: cluster.map(Cluster::logs).unwrap_or_default(),
    }
}

/// Strings from anything string-like, for building argument lists.
pub fn args<I: IntoIterator<Item = S>, S: AsRef<str>>(items: I) -> Vec<String> {
    items.into_iter().map(|s| s.as_ref().to_string()).collect()
}

/// Byte-exact snapshot of every file below `dir` (path -> contents), for "nothing changed".
pub fn tree_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

/// How often the waits below look again. Only the poll rate: no assertion depends on it.
const POLL: Duration = Duration::from_millis(50);

/// Poll `cond` until it holds or `timeout` passes; false if it never held. For a caller
/// that wants to say more than `wait_for` does when the wait gives up.
pub fn try_wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Wait until `cond` holds, at most `timeout`; panics naming `what` it waited for. The
/// replacement for sleep-then-assert: the test goes on as soon as the condition is true,
/// and a slow machine only makes it wait longer, never fail.
#[track_caller]
pub fn wait_for(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    let start = Instant::now();
    if !try_wait_for(timeout, cond) {
        panic!("gave up after {:?} waiting for {what}", start.elapsed());
    }
}

/// Like `wait_for`, returning the first `Some` that `probe` gives.
#[track_caller]
pub fn wait_for_some<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let mut found = None;
    wait_for(what, timeout, || {
        found = probe();
        found.is_some()
    });
    found.expect("wait_for returned: the probe gave Some")
}
