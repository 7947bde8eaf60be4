//! The lab's kubelet stand-in behaves like kubelet where the migration depends on it:
//! etcd survives the stand-in being stopped, a manifest change restarts etcd, a dotfile is
//! ignored, a second etcd manifest is reported, kubeadm's liveness probe restarts a member
//! that stops answering, and `down` stops only what `up` started.

mod common;

use std::time::Duration;

use common::Version;
use common::lab::Lab;

fn etcd_pid(lab: &Lab, node: usize) -> Option<i32> {
    let text = std::fs::read_to_string(lab.node_dir(node).join("etcd.pid")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn alive(pid: i32) -> bool {
    etcdops::lab::kubelet::alive(pid)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    etcdops::node::wait_until(
        what,
        Duration::from_secs(20),
        Duration::from_millis(100),
        || Ok(f()),
    )
    .unwrap();
}

#[test]
fn stand_in_behaves_like_kubelet() {
    let lab = Lab::up(Version::V36, 1);
    let status = lab.lab(&["status"]);
    status.code(0);
    assert!(status.stdout.contains("running"), "{}", status.dump());
    let first = etcd_pid(&lab, 1).expect("etcd pid");

    // Stopping the stand-in leaves etcd running (as `systemctl stop kubelet` does).
    lab.lab(&["kubelet", "stop", "--node", "1"]).code(0);
    lab.lab(&["kubelet", "status", "--node", "1"]).code(3);
    // The stand-in has exited (status 3), so any signal it would pass on has been sent:
    // etcd must be alive, serving, and must not have logged a shutdown signal.
    assert!(alive(first), "etcd died with the stand-in");
    lab.etcdops(1, &["health"], &[]).code(0);
    let etcd_log = std::fs::read_to_string(lab.node_dir(1).join("etcd.log")).unwrap_or_default();
    assert!(
        !etcd_log.contains("received signal"),
        "etcd was signalled when the stand-in stopped:\n{etcd_log}"
    );

    // A manifest removed while the stand-in is down takes effect when it comes back.
    let manifest = lab.manifest(1);
    let aside = lab.path().join("etcd.yaml.aside");
    std::fs::rename(&manifest, &aside).unwrap();
    // Nothing runs that could act on the manifests dir (the stand-in is down, status 3).
    assert!(alive(first), "etcd stopped without a kubelet");
    lab.lab(&["kubelet", "start", "--node", "1"]).code(0);
    lab.lab(&["kubelet", "status", "--node", "1"]).code(0);
    wait_for("etcd to stop once the stand-in sees no manifest", || {
        !alive(first)
    });

    // Back in place: etcd starts again.
    std::fs::rename(&aside, &manifest).unwrap();
    wait_for("etcd to start from the manifest", || {
        etcd_pid(&lab, 1).is_some_and(alive)
    });
    let second = etcd_pid(&lab, 1).unwrap();
    assert_ne!(first, second);
    wait_for("etcd healthy", || {
        lab.etcdops(1, &["health"], &[]).code == 0
    });

    // A dotfile is ignored (no restart, nothing logged about it), and a non-dot copy is
    // another static pod for kubelet: reported in its log. The dotfile goes in first, so
    // the scan that reports the copy has seen the dotfile too: no sleep needed to know
    // the stand-in looked.
    let dot = manifest.parent().unwrap().join(".etcd.yaml.swp");
    std::fs::write(&dot, std::fs::read(&manifest).unwrap()).unwrap();
    let bak = manifest.parent().unwrap().join("etcd.yaml.bak");
    std::fs::write(&bak, std::fs::read(&manifest).unwrap()).unwrap();
    wait_for("the stand-in to report the second etcd pod", || {
        std::fs::read_to_string(lab.node_dir(1).join("kubelet.log"))
            .unwrap_or_default()
            .contains("the real kubelet would start it too")
    });
    assert_eq!(etcd_pid(&lab, 1), Some(second), "a dotfile restarted etcd");
    let log = std::fs::read_to_string(lab.node_dir(1).join("kubelet.log")).unwrap();
    assert!(
        !log.contains(".etcd.yaml.swp"),
        "the dotfile was looked at: {log}"
    );
    std::fs::remove_file(&dot).unwrap();
    std::fs::remove_file(&bak).unwrap();

    // A changed manifest restarts etcd.
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("# edited\n");
    std::fs::write(&manifest, text).unwrap();
    wait_for("etcd to restart on the changed manifest", || {
        etcd_pid(&lab, 1).is_some_and(|p| p != second && alive(p))
    });
    let third = etcd_pid(&lab, 1).unwrap();

    // `up` again on the same dir is refused; `down` stops the stand-in and etcd.
    let again = lab.lab(&["up", "--etcd", Version::V36.etcd().to_str().unwrap()]);
    again.code(4);
    lab.lab(&["down"]).code(0);
    assert!(!alive(third));
    lab.lab(&["kubelet", "status", "--node", "1"]).code(3);
}

/// The plain stand-in behaves like systemd's job queue: a `kubelet start` issued while a
/// `kubelet stop` still runs (held by the stop gate) cancels the stop, which exits 1 with
/// systemctl's words, and the stand-in ends running.
#[test]
fn start_cancels_running_stop() {
    let lab = Lab::up(Version::V36, 1);
    let first = std::fs::read_to_string(lab.node_dir(1).join("kubelet.pid")).unwrap();
    let gate = lab.node_dir(1).join("kubelet.stop-gate");
    std::fs::write(&gate, "").unwrap();
    let stop = std::process::Command::new(common::lab::lab_bin())
        .args(["kubelet", "stop", "--dir"])
        .arg(lab.path())
        .args(["--node", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the stand-in to be deactivating", || {
        lab.lab(&["kubelet", "status", "--node", "1"]).stdout.trim() == "deactivating"
    });
    let start = std::process::Command::new(common::lab::lab_bin())
        .args(["kubelet", "start", "--dir"])
        .arg(lab.path())
        .args(["--node", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stopped = stop.wait_with_output().unwrap();
    assert_eq!(stopped.status.code(), Some(1), "{stopped:?}");
    let err = String::from_utf8_lossy(&stopped.stderr);
    assert!(err.contains("Job for kubelet.service canceled."), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    std::fs::remove_file(&gate).unwrap();
    let started = start.wait_with_output().unwrap();
    assert_eq!(started.status.code(), Some(0), "{started:?}");
    let status = lab.lab(&["kubelet", "status", "--node", "1"]);
    status.code(0);
    assert_eq!(status.stdout.trim(), "active");
    let second = std::fs::read_to_string(lab.node_dir(1).join("kubelet.pid")).unwrap();
    assert_ne!(
        first, second,
        "the old stand-in must have exited, a new one started"
    );
    lab.etcdops(1, &["health"], &[]).code(0);
}

/// The failure of issue 10 on the stand-in: the `kubelet stop` command is killed (SIGKILL)
/// while the stand-in is still stopping; a later start must not take the dying stand-in for
/// a running one: it waits for it and the stand-in ends running.
#[test]
fn start_after_killed_stop_ends_running() {
    let lab = Lab::up(Version::V36, 1);
    let first = std::fs::read_to_string(lab.node_dir(1).join("kubelet.pid")).unwrap();
    let gate = lab.node_dir(1).join("kubelet.stop-gate");
    std::fs::write(&gate, "").unwrap();
    let mut stop = std::process::Command::new(common::lab::lab_bin())
        .args(["kubelet", "stop", "--dir"])
        .arg(lab.path())
        .args(["--node", "1"])
        .spawn()
        .unwrap();
    wait_for("the stand-in to be deactivating", || {
        lab.lab(&["kubelet", "status", "--node", "1"]).stdout.trim() == "deactivating"
    });
    stop.kill().unwrap();
    stop.wait().unwrap();
    // The stop's command is gone, the stand-in is still on its way out.
    let status = lab.lab(&["kubelet", "status", "--node", "1"]);
    status.code(3);
    assert_eq!(status.stdout.trim(), "deactivating");
    let start = std::process::Command::new(common::lab::lab_bin())
        .args(["kubelet", "start", "--dir"])
        .arg(lab.path())
        .args(["--node", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the start to be queued", || {
        std::fs::read_to_string(lab.node_dir(1).join("kubelet.job"))
            .is_ok_and(|j| j.starts_with("start "))
    });
    std::fs::remove_file(&gate).unwrap();
    let started = start.wait_with_output().unwrap();
    assert_eq!(started.status.code(), Some(0), "{started:?}");
    let status = lab.lab(&["kubelet", "status", "--node", "1"]);
    status.code(0);
    assert_eq!(status.stdout.trim(), "active");
    let second = std::fs::read_to_string(lab.node_dir(1).join("kubelet.pid")).unwrap();
    assert_ne!(
        first.split_whitespace().next(),
        second.split_whitespace().next()
    );
}

#[test]
fn env_points_etcdops_at_a_node() {
    let lab = Lab::up(Version::V35, 1);
    let env = lab.env(1);
    let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for k in [
        "ETCDOPS_MANIFEST",
        "ETCDOPS_STATE_DIR",
        "ETCDOPS_KUBELET_STOP_CMD",
        "ETCDOPS_KUBELET_START_CMD",
        "ETCDOPS_KUBELET_STATUS_CMD",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    lab.etcdops(1, &["kubelet", "status"], &[]).code(0);
    lab.etcdops(1, &["kubelet", "stop"], &[]).code(0);
    lab.etcdops(1, &["kubelet", "status"], &[]).code(4);
    lab.etcdops(1, &["kubelet", "start"], &[]).code(0);
    lab.lab(&["env", "--node", "2"]).code(2);
}

/// kubeadm's probes run as kubelet runs them: the startup probe (`/readyz`) passes first,
/// then the liveness probe (`/livez` on the metrics port, from `--listen-metrics-urls`) that
/// keeps failing restarts etcd after `failureThreshold` failures. The fault is real: etcd is
/// SIGSTOPped, so it holds its ports and answers nothing. The manifest is kubeadm's with the
/// probes' numbers made shorter (period and timeout 1 s, failureThreshold 3, a probe grace
/// period of 1 s), which the stand-in reads from the manifest as kubelet does; kubeadm's own
/// (8 failures, 10 s apart, 15 s timeouts, then 30 s of grace) would take minutes.
#[test]
fn failing_liveness_probe_restarts_etcd() {
    let lab = Lab::up(Version::V36, 1);
    let manifest = lab.manifest(1);
    let text = std::fs::read_to_string(&manifest).unwrap();
    for want in [
        "path: /livez",
        "path: /readyz",
        "startupProbe:",
        "port: probe-port",
        "containerPort: 2381",
    ] {
        assert!(text.contains(want), "kubeadm wrote no {want}:\n{text}");
    }
    let mut pod: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let container = &mut pod["spec"]["containers"][0];
    for (probe, fields) in [
        (
            "livenessProbe",
            &[
                ("initialDelaySeconds", 0),
                ("periodSeconds", 1),
                ("timeoutSeconds", 1),
                ("failureThreshold", 3),
                ("terminationGracePeriodSeconds", 1),
            ][..],
        ),
        (
            "startupProbe",
            &[("initialDelaySeconds", 0), ("periodSeconds", 1)][..],
        ),
    ] {
        for (k, v) in fields {
            container[probe][*k] = serde_yaml::Value::from(*v);
        }
    }
    let before = etcd_pid(&lab, 1).expect("etcd pid");
    std::fs::write(&manifest, serde_yaml::to_string(&pod).unwrap()).unwrap();
    wait_for("etcd to restart on the shorter probes", || {
        etcd_pid(&lab, 1).is_some_and(|p| p != before && alive(p))
    });
    let pid = etcd_pid(&lab, 1).unwrap();
    let log = || std::fs::read_to_string(lab.node_dir(1).join("kubelet.log")).unwrap_or_default();
    wait_for("the startup probe to pass", || {
        log().contains(&format!("etcd pid {pid}: startup probe succeeded"))
    });
    lab.etcdops(1, &["health"], &[]).code(0);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    etcdops::node::wait_until(
        "the stand-in to restart the stopped etcd",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || Ok(etcd_pid(&lab, 1).is_some_and(|p| p != pid && alive(p))),
    )
    .unwrap();
    let log = log();
    assert!(
        log.contains(&format!("etcd pid {pid}: liveness probe failed 3 times")),
        "{log}"
    );
    // Killed (SIGKILL after the probe's grace period: a stopped process keeps SIGTERM
    // pending), and the new member serves.
    assert!(!alive(pid), "the stopped etcd still exists");
    etcdops::node::wait_until(
        "the restarted etcd to be healthy",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || Ok(lab.etcdops(1, &["health"], &[]).code == 0),
    )
    .unwrap();
}
