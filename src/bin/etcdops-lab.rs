//! `etcdops-lab`: a local multi-node etcd "control plane" on loopback, each node laid out as
//! a kubeadm node (manifest, pki, data dir) with a kubelet stand-in. See `etcdops::lab`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use etcdops::error::{Error, Result};
use etcdops::etcd::connect::Given;
use etcdops::etcd::health::{self, HealthOptions};
use etcdops::lab::kubeadm::{self, Kubeadm, NodeConfig};
use etcdops::lab::systemd::{self, Disk};
use etcdops::lab::{Lab, LabConfig, kubelet, real, shell_quote};

#[derive(Debug, Parser)]
#[command(
    name = "etcdops-lab",
    version,
    about = "A local etcd lab laid out like kubeadm nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Args)]
struct DirArg {
    /// The lab directory.
    #[arg(long)]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct NodeArg {
    #[command(flatten)]
    dir: DirArg,
    /// Node number, from 1.
    #[arg(long)]
    node: usize,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Lay out the nodes, start a kubelet stand-in per node, wait until the cluster is healthy.
    Up {
        #[command(flatten)]
        dir: DirArg,
        /// How many nodes (control-plane members).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The etcd under test: a binary, or a release that scripts/build-etcd.sh built
        /// (e.g. 3.6.17) [default: etcd on PATH]. The manifests name its image tag.
        #[arg(long, value_name = "PATH|VERSION")]
        etcd: Option<String>,
        /// The kubeadm that writes each node's PKI and etcd.yaml: a release that
        /// scripts/build-k8s.sh built, or a kubeadm binary [default: 1.37.2; 1.35.4 for an
        /// etcd older than 3.6, whose flags 1.37 no longer writes].
        #[arg(long, value_name = "VERSION|PATH")]
        kubeadm: Option<String>,
        /// Node I listens on <prefix>.<10+I>, e.g. 127.0.0.11.
        #[arg(long, default_value = "127.0.0")]
        ip_prefix: String,
        /// How long to wait for a healthy cluster.
        #[arg(long, value_parser = etcdops::cli::parse_duration, default_value = "60s")]
        timeout: Duration,
        /// Boot each node as a systemd-nspawn container with a real systemd and the stand-in
        /// as kubelet.service.
        #[arg(long)]
        systemd: bool,
        /// What backs each node's data dir and new disk (mnt/etcd-disk): loop devices with
        /// ext4 or xfs, or plain dirs.
        #[arg(
            long,
            value_name = "ext4|xfs|dir",
            requires = "systemd",
            default_value = "dir"
        )]
        disk: Disk,
        /// Which kubelet runs the static pods: the stand-in, or the real kubelet and
        /// containerd with locally built images (see docs/lab.md for what they need).
        #[arg(long, value_name = "stand-in|real", default_value = "stand-in", value_parser = ["stand-in", "real"], conflicts_with = "systemd")]
        kubelet: String,
    },
    /// Stop what `up` started: every stand-in and the etcd it runs (systemd mode: power the
    /// nodes off, unmount and detach the disks). Files stay.
    Down {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Shell exports that point etcdops at a node.
    Env {
        #[command(flatten)]
        node: NodeArg,
    },
    /// Each node: stand-in (systemd's unit state in systemd mode), etcd, manifest, disks.
    Status {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Control a node's kubelet stand-in.
    Kubelet {
        #[command(subcommand)]
        action: KubeletCmd,
    },
    /// Take etcdops' cluster-wide guard as member MEMBER and hold it until killed or stdin
    /// closes: a stand-in for a node-changing run, for tests and demos of the guard.
    GuardHold(GuardHoldArgs),
}

#[derive(Debug, Args)]
struct GuardHoldArgs {
    /// Client URLs of the cluster (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    #[arg(long)]
    cacert: Option<PathBuf>,
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    /// The member this holder stands for (its health is not required).
    #[arg(long)]
    member: String,
    /// The run id written into the guard.
    #[arg(long, default_value = "lab")]
    run_id: String,
}

#[derive(Debug, Subcommand)]
enum KubeletCmd {
    /// Start the stand-in; cancels a stop in flight (systemd mode: `systemctl start kubelet`).
    Start(NodeArg),
    /// Stop the stand-in, leaving etcd running; exits 1 "Job for kubelet.service canceled."
    /// when a start replaces it (systemd mode: `systemctl stop kubelet`).
    Stop(NodeArg),
    /// Print the state; exit 0 when active, 3 otherwise (as `systemctl is-active`).
    Status(NodeArg),
    /// The stand-in itself (what `start` runs in the background).
    #[command(hide = true)]
    Run(NodeArg),
}

fn main() {
    let cli: Cli = etcdops::cli::parse_or_exit();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("etcdops-lab: {}", e.one_line());
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Cmd::Up {
            dir,
            nodes,
            etcd,
            kubeadm,
            ip_prefix,
            timeout,
            systemd,
            disk,
            kubelet,
        } => up(
            dir.dir,
            nodes,
            etcd,
            kubeadm.as_deref(),
            ip_prefix,
            timeout,
            systemd.then_some(disk),
            kubelet == "real",
        )
        .map(|_| 0),
        Cmd::Down { dir } => down(&Lab::open(&dir.dir)?).map(|_| 0),
        Cmd::Env { node } => {
            let lab = Lab::open(&node.dir.dir)?;
            lab.check_node(node.node)?;
            for (k, v) in lab.env(node.node)? {
                println!("export {k}={}", shell_quote(&v));
            }
            Ok(0)
        }
        Cmd::Status { dir } => status(&Lab::open(&dir.dir)?).map(|_| 0),
        Cmd::Kubelet { action } => kubelet_cmd(action),
        Cmd::GuardHold(args) => guard_hold(args),
    }
}

fn guard_hold(args: GuardHoldArgs) -> Result<i32> {
    use etcdops::etcd::guard::{self, Holder};
    let conn = Given {
        endpoints: args.endpoints,
        cacert: args.cacert,
        cert: args.cert,
        key: args.key,
        manifest: None,
        dial_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(5),
    }
    .resolve()?;
    let holder = Holder::here(&args.member, "", "lab", &args.run_id);
    let g = guard::acquire(&conn, &holder)?;
    println!(
        "{}",
        serde_json::to_string(g.holder()).expect("a holder serializes")
    );
    // Hold until stdin closes (the test's handle dropped) or a signal kills us.
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    g.release()?;
    Ok(0)
}

fn kubelet_cmd(action: KubeletCmd) -> Result<i32> {
    let node = match &action {
        KubeletCmd::Start(n) | KubeletCmd::Stop(n) | KubeletCmd::Status(n) | KubeletCmd::Run(n) => {
            n
        }
    };
    let lab = Lab::open(&node.dir.dir)?;
    lab.check_node(node.node)?;
    let n = node.node;
    if lab.config.systemd && !matches!(action, KubeletCmd::Run(_)) {
        let verb = match action {
            KubeletCmd::Start(_) => "start",
            KubeletCmd::Stop(_) => "stop",
            _ => "is-active",
        };
        let out = systemd::systemctl(&lab, n, &[verb, "kubelet"])?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        return Ok(out.status.code().unwrap_or(1));
    }
    if lab.config.real.is_some() {
        return match action {
            KubeletCmd::Start(_) => real::start_kubelet(&lab, n).map(|_| 0),
            KubeletCmd::Stop(_) => real::stop_kubelet(&lab, n).map(|_| 0),
            KubeletCmd::Status(_) => {
                let state = real::kubelet_state(&lab, n);
                println!("{state}");
                Ok(if state == "active" { 0 } else { 3 })
            }
            KubeletCmd::Run(_) => Err(Error::Usage(
                "kubelet run: this lab runs the real kubelet".into(),
            )),
        };
    }
    match action {
        KubeletCmd::Start(_) => kubelet::start(&lab, n).map(|_| 0),
        KubeletCmd::Stop(_) => kubelet::stop(&lab, n).map(|_| 0),
        KubeletCmd::Status(_) => {
            let state = kubelet::state(&lab, n);
            println!("{state}");
            Ok(if state == "active" { 0 } else { 3 })
        }
        KubeletCmd::Run(_) => kubelet::run(&lab, n).map(|_| 0),
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

// One parameter per `up` flag, as clap parsed them.
#[allow(clippy::too_many_arguments)]
fn up(
    dir: PathBuf,
    nodes: usize,
    etcd: Option<String>,
    kubeadm_spec: Option<&str>,
    ip_prefix: String,
    timeout: Duration,
    systemd_disk: Option<Disk>,
    real_kubelet: bool,
) -> Result<()> {
    let started = Instant::now();
    if !(1..=9).contains(&nodes) {
        return Err(Error::Usage(format!("--nodes {nodes}: choose 1 to 9")));
    }
    let octets: Vec<&str> = ip_prefix.split('.').collect();
    if octets.len() != 3 || octets[0] != "127" || octets.iter().any(|o| o.parse::<u8>().is_err()) {
        return Err(Error::Usage(format!(
            "--ip-prefix {ip_prefix}: give three octets in 127.0.0.0/8, e.g. 127.0.0"
        )));
    }
    let etcd = match etcd {
        Some(spec)
            if spec.split('.').count() == 3
                && spec.split('.').all(|p| p.parse::<u32>().is_ok()) =>
        {
            let bin = kubeadm::built_etcd(&spec);
            if !bin.is_file() {
                return Err(Error::Usage(format!(
                    "--etcd {spec}: {} is missing; build it with scripts/build-etcd.sh {spec}",
                    bin.display()
                )));
            }
            bin
        }
        Some(p) => PathBuf::from(p),
        None => find_on_path("etcd")
            .ok_or_else(|| Error::Usage("no etcd on PATH: pass --etcd BIN|VERSION".into()))?,
    };
    let etcd = std::fs::canonicalize(&etcd)
        .map_err(|e| Error::input(&etcd, format!("etcd binary: {e}")))?;
    let etcd_version = kubeadm::etcd_version(&etcd)?;
    let kubeadm =
        Kubeadm::resolve(kubeadm_spec.unwrap_or_else(|| kubeadm::default_for_etcd(&etcd_version)))?;
    if Lab::config_path(&dir).exists() {
        let lab = Lab::open(&dir)?;
        let busy = (1..=lab.config.nodes).any(|n| {
            kubelet::stand_in_pid(&lab, n).is_some()
                || kubelet::etcd_pid(&lab, n).is_some()
                || real::kubelet_pid(&lab, n).is_some()
                || real::containerd_pid(&lab, n).is_some()
        });
        if busy {
            return Err(Error::refused(
                dir.display().to_string(),
                "a lab runs there; run `etcdops-lab down` first",
            ));
        }
        return Err(Error::refused(
            dir.display().to_string(),
            "a lab was laid out there before; use an empty dir",
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let dir = std::fs::canonicalize(&dir).map_err(|e| Error::io("resolve", &dir, e))?;
    let lab_bin = std::env::current_exe().map_err(|e| Error::io("resolve", "/proc/self/exe", e))?;
    let real = if real_kubelet {
        let deps = std::env::var_os("ETCDOPS_DEPS")
            .map_or_else(|| PathBuf::from("/var/cache/etcdops-deps"), PathBuf::from);
        Some(real::Stack::find(&deps, &etcd_version)?)
    } else {
        None
    };
    let lab = Lab {
        dir: dir.clone(),
        config: LabConfig {
            nodes,
            ip_prefix,
            etcd,
            etcd_version,
            kubeadm: kubeadm.bin.clone(),
            kubeadm_version: kubeadm.version.clone(),
            lab_bin,
            systemd: systemd_disk.is_some(),
            disk: systemd_disk.unwrap_or_default(),
            real,
        },
    };
    if lab.config.systemd {
        // nspawn's --bind takes `path[:path]`.
        for p in [&lab.dir, &lab.config.lab_bin, &lab.config.etcd] {
            if p.to_string_lossy().contains(':') {
                return Err(Error::Usage(format!(
                    "{}: systemd mode cannot bind a path with ':' into a node",
                    p.display()
                )));
            }
        }
        for tool in ["systemd-nspawn", "nsenter", "losetup"] {
            if find_on_path(tool).is_none() {
                return Err(Error::Usage(format!(
                    "--systemd needs {tool} on PATH (scripts/install-deps.sh installs it)"
                )));
            }
        }
    }
    // kubeadm lays out every node: its config, its PKI; node 1 gets the manifest of
    // `kubeadm init`, the others theirs when they join (`start_nodes`).
    let tag = kubeadm::image_tag(&lab.config.etcd_version);
    let configs: Vec<NodeConfig> = (1..=nodes)
        .map(|n| NodeConfig::for_node(&lab, n, &kubeadm.version, &tag))
        .collect();
    kubeadm::write_pki(&kubeadm, &lab, &configs)?;
    for n in 1..=nodes {
        for d in [lab.manifests_dir(n), lab.state_dir(n)] {
            std::fs::create_dir_all(&d).map_err(|e| Error::io("create", &d, e))?;
        }
    }
    let manifest = lab.manifest(1);
    std::fs::write(&manifest, kubeadm::init_manifest(&kubeadm, &lab, 1)?)
        .map_err(|e| Error::io("write", &manifest, e))?;
    // Written before any disk or container exists, so that `down` finds the lab and its
    // record whatever happens next.
    let cfg = Lab::config_path(&dir);
    std::fs::write(
        &cfg,
        serde_json::to_string_pretty(&lab.config).expect("config serializes"),
    )
    .map_err(|e| Error::io("write", &cfg, e))?;
    let disk = lab.config.disk;
    if let Err(e) = start_nodes(&lab, &kubeadm, timeout) {
        if lab.config.real.is_some() {
            let undo = down_real(&lab).err().map_or(String::new(), |d| {
                format!(
                    "; undoing it failed too ({}): run `etcdops-lab down`",
                    d.one_line()
                )
            });
            return Err(Error::failed(
                "etcdops-lab up --kubelet real",
                format!(
                    "{}; every node's kubelet, containerd and pods were stopped{undo}; logs: {}/node*/{{containerd,kubelet}}.log",
                    e.one_line(),
                    lab.dir.display()
                ),
            ));
        }
        if lab.config.systemd {
            // Loop devices and containers are not files an operator would clean up by
            // hand: undo them now (`down` would do the same), keep the logs.
            let undo = systemd::down(&lab).err().map_or(String::new(), |d| {
                format!(
                    "; undoing it failed too ({}): run `etcdops-lab down`",
                    d.one_line()
                )
            });
            return Err(Error::failed(
                "etcdops-lab up --systemd",
                format!(
                    "{}; the nodes were powered off and their disks detached{undo}; logs: {}/node*/{{console,kubelet,etcd}}.log",
                    e.one_line(),
                    lab.dir.display()
                ),
            ));
        }
        return Err(e);
    }
    let mode = if lab.config.systemd {
        format!(" (systemd-nspawn nodes, disks: {})", disk.name())
    } else if lab.config.real.is_some() {
        format!(
            " (kubelet {}, containerd {})",
            real::K8S_VERSION,
            real::CONTAINERD_VERSION
        )
    } else {
        String::new()
    };
    println!(
        "lab up: {nodes} node(s){mode}, etcd {} laid out by kubeadm {}, in {} after {:.1}s; `etcdops-lab env --dir {} --node 1` points etcdops at node 1",
        lab.config.etcd_version,
        lab.config.kubeadm_version,
        dir.display(),
        started.elapsed().as_secs_f64(),
        shell_quote(&dir.to_string_lossy())
    );
    Ok(())
}

/// Disks, containers or stand-ins; node 1 alone, then each other node joins as `kubeadm
/// join --control-plane` makes it: added as a learner, its manifest written, promoted.
fn start_nodes(lab: &Lab, kubeadm: &Kubeadm, timeout: Duration) -> Result<()> {
    for n in 1..=lab.config.nodes {
        if lab.config.systemd {
            systemd::prepare_disks(lab, n, lab.config.disk)?;
        } else {
            let data = lab.data_dir(n);
            std::fs::create_dir_all(&data).map_err(|e| Error::io("create", &data, e))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io("chmod", &data, e))?;
        }
    }
    if lab.config.systemd {
        for n in 1..=lab.config.nodes {
            systemd::write_node_files(lab, n)?;
            systemd::boot(lab, n)?;
        }
        systemd::wait_kubelets(lab, timeout)?;
    } else if lab.config.real.is_some() {
        for n in 1..=lab.config.nodes {
            real::start_node(lab, n)?;
        }
    } else {
        for n in 1..=lab.config.nodes {
            kubelet::start(lab, n)?;
        }
    }
    wait_healthy(lab, timeout, 1)?;
    for n in 2..=lab.config.nodes {
        join(lab, kubeadm, n, timeout)?;
        wait_healthy(lab, timeout, n)?;
    }
    Ok(())
}

/// What `kubeadm join --control-plane` does for etcd on node `n`: add the member as a learner
/// (`MemberAddAsLearner`), write its manifest (`kubeadm::join_manifest`), promote it once it
/// has caught up.
fn join(lab: &Lab, kubeadm: &Kubeadm, n: usize, timeout: Duration) -> Result<()> {
    use etcdops::etcd::member::{self, Promote, Reconfig};
    let conn = Given {
        manifest: Some(lab.manifest(1)),
        dial_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(5),
        ..Default::default()
    }
    .resolve()?;
    let urls: Vec<String> = (1..n).map(|i| lab.client_url(i)).collect();
    let peer = lab.peer_url(n);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::failed("start the async runtime", e.to_string()))?;
    let start = Instant::now();
    let waited = |what: &str, why: &str| {
        Error::failed(
            format!("join node{n} to the lab cluster"),
            format!(
                "node{n} not healthy: {what} not done after {}: {why}; see {}/node*/etcd.log",
                humantime::format_duration(timeout),
                lab.dir.display()
            ),
        )
    };
    let id = loop {
        match rt.block_on(member::add_learner_via(&conn, &urls, &peer))? {
            Reconfig::Done(id) => break id,
            Reconfig::NotYet(why) if start.elapsed() > timeout => {
                return Err(waited("member add --learner", &why));
            }
            Reconfig::NotYet(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    let members: Vec<(String, String)> = rt
        .block_on(member::list_via(&conn, &urls))?
        .into_iter()
        .map(|m| {
            let url = m.peer_urls.first().cloned().unwrap_or_default();
            let name = if m.id == id {
                lab.node_name(n)
            } else if m.name.is_empty() {
                format!("{:x}", m.id)
            } else {
                m.name
            };
            (name, url)
        })
        .collect();
    let text = kubeadm::join_manifest(&kubeadm::init_manifest(kubeadm, lab, n)?, &members)?;
    // Written beside and renamed: the stand-in ignores dotfiles and never reads half a file.
    let tmp = lab.manifests_dir(n).join(".etcd.yaml.join");
    std::fs::write(&tmp, text).map_err(|e| Error::io("write", &tmp, e))?;
    let manifest = lab.manifest(n);
    std::fs::rename(&tmp, &manifest).map_err(|e| Error::io("rename", &manifest, e))?;
    loop {
        match rt.block_on(member::promote_via(&conn, &urls, id))? {
            Promote::Voter => return Ok(()),
            Promote::NotReady(why) if start.elapsed() > timeout => {
                return Err(waited("member promote", &why));
            }
            Promote::NotReady(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// Wait until the cluster has `members` members, all healthy.
fn wait_healthy(lab: &Lab, timeout: Duration, members: usize) -> Result<()> {
    let given = Given {
        manifest: Some(lab.manifest(1)),
        dial_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let conn = given.resolve()?;
    let opts = HealthOptions {
        cluster: true,
        quota: health::DEFAULT_QUOTA,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::failed("start the async runtime", e.to_string()))?;
    let start = Instant::now();
    loop {
        let report = rt.block_on(health::check(&conn, &opts));
        if report.healthy && report.endpoints.len() == members {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Error::failed(
                "wait for the lab cluster to be healthy",
                format!(
                    "not healthy after {}: {}; see {}/node*/etcd.log",
                    humantime::format_duration(timeout),
                    report.problems.join("; "),
                    lab.dir.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Real-kubelet mode: every node's kubelet, containers, containerd, mounts and cgroups.
fn down_real(lab: &Lab) -> Result<Vec<String>> {
    let mut said = Vec::new();
    let mut first_err = None;
    for n in 1..=lab.config.nodes {
        match real::down_node(lab, n) {
            Ok(lines) => said.extend(lines),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(said),
    }
}

fn down(lab: &Lab) -> Result<()> {
    if lab.config.real.is_some() {
        for line in down_real(lab)? {
            println!("{line}");
        }
        println!("lab down: {} is off", lab.dir.display());
        return Ok(());
    }
    // A held stop gate would keep a stopping stand-in (and so `down`) waiting.
    for n in 1..=lab.config.nodes {
        let gate = kubelet::stop_gate(lab, n);
        if gate.exists() {
            std::fs::remove_file(&gate).map_err(|e| Error::io("remove", &gate, e))?;
        }
    }
    if lab.config.systemd || systemd::record_path(lab).exists() {
        // Powering a node off ends every process in it, etcd included.
        for line in systemd::down(lab)? {
            println!("{line}");
        }
        println!("lab down: {} is off", lab.dir.display());
        return Ok(());
    }
    for n in 1..=lab.config.nodes {
        kubelet::stop(lab, n)?;
        if let Some(pid) = kubelet::etcd_pid(lab, n) {
            kubelet::kill_etcd(pid, None, Duration::from_secs(10));
        }
        let _ = std::fs::remove_file(lab.node_dir(n).join("etcd.pid"));
    }
    println!(
        "lab down: stopped the stand-ins and etcd of {}",
        lab.dir.display()
    );
    Ok(())
}

fn status(lab: &Lab) -> Result<()> {
    if lab.config.systemd {
        return status_systemd(lab);
    }
    if lab.config.real.is_some() {
        let mut t = etcdops::output::Table::new([
            "NODE",
            "ADDRESS",
            "CONTAINERD",
            "KUBELET",
            "ETCD",
            "MANIFEST",
        ]);
        let pid = |p: Option<i32>| p.map_or("stopped".into(), |p| format!("running (pid {p})"));
        for n in 1..=lab.config.nodes {
            let etcd = real::etcd_pids(lab, n);
            t.row([
                lab.node_name(n),
                lab.ip(n).to_string(),
                pid(real::containerd_pid(lab, n)),
                pid(real::kubelet_pid(lab, n)),
                if etcd.is_empty() {
                    "-".into()
                } else {
                    format!(
                        "running (pid {})",
                        etcd.iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                if lab.manifest(n).exists() {
                    "present"
                } else {
                    "absent"
                }
                .to_string(),
            ]);
        }
        print!("{}", t.render());
        return Ok(());
    }
    let mut t = etcdops::output::Table::new(["NODE", "ADDRESS", "KUBELET", "ETCD", "MANIFEST"]);
    for n in 1..=lab.config.nodes {
        t.row([
            lab.node_name(n),
            lab.ip(n).to_string(),
            kubelet::stand_in_pid(lab, n)
                .map_or("stopped".into(), |p| format!("running (pid {p})")),
            kubelet::etcd_pid(lab, n).map_or("-".into(), |p| format!("running (pid {p})")),
            if lab.manifest(n).exists() {
                "present"
            } else {
                "absent"
            }
            .to_string(),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

/// Systemd mode: the unit state as systemd reports it, etcd by host pid, and the disks.
fn status_systemd(lab: &Lab) -> Result<()> {
    let mut t = etcdops::output::Table::new([
        "NODE", "ADDRESS", "SYSTEMD", "KUBELET", "ETCD", "MANIFEST", "DATA", "NEW DISK",
    ]);
    let disk = |n: usize, p: std::path::PathBuf| match systemd::nspawn_pid(lab, n)
        .and_then(|pid| systemd::fs_type(pid, &p))
    {
        Some(fs) => format!("{} ({fs})", p.display()),
        None => format!("{} (dir)", p.display()),
    };
    for n in 1..=lab.config.nodes {
        let leader = systemd::leader(lab, n);
        let etcd = kubelet::etcd_pid_in_file(lab, n)
            .and_then(|p| systemd::host_pid(lab, n, p))
            .map_or("-".into(), |p| format!("running (pid {p})"));
        t.row([
            lab.node_name(n),
            lab.ip(n).to_string(),
            leader.map_or("off".into(), |l| format!("up (pid 1 = {l})")),
            if leader.is_some() {
                systemd::kubelet_state(lab, n)
            } else {
                "-".into()
            },
            etcd,
            if lab.manifest(n).exists() {
                "present"
            } else {
                "absent"
            }
            .to_string(),
            disk(n, lab.data_dir(n)),
            disk(n, systemd::new_disk_dir(lab, n)),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}
