//! The kubelet stand-in's probes: the container's `startupProbe`, `livenessProbe` and
//! `readinessProbe` as kubelet runs them (`httpGet` only, which is what kubeadm writes).
//!
//! - Defaults are kubelet's: `periodSeconds` 10, `timeoutSeconds` 1, `failureThreshold` 3,
//!   `successThreshold` 1, `initialDelaySeconds` 0; the host defaults to the pod's IP (with
//!   `hostNetwork`, the node's address); a named port is looked up in the container's
//!   `ports`. A status in 200..400 is a success; no answer within `timeoutSeconds` is a
//!   failure.
//! - The startup probe runs first; liveness and readiness start only once it succeeded.
//! - `failureThreshold` consecutive startup or liveness failures ask for a restart of the
//!   container, with the grace period of the probe (`terminationGracePeriodSeconds`) or of
//!   the pod (default 30 s). Readiness only reports.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{Error, Result};

/// kubelet's default pod termination grace period.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodDoc {
    spec: SpecDoc,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecDoc {
    #[serde(default)]
    termination_grace_period_seconds: Option<u64>,
    #[serde(default)]
    containers: Vec<ContainerDoc>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerDoc {
    #[serde(default)]
    name: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    ports: Vec<PortDoc>,
    #[serde(default)]
    startup_probe: Option<ProbeDoc>,
    #[serde(default)]
    liveness_probe: Option<ProbeDoc>,
    #[serde(default)]
    readiness_probe: Option<ProbeDoc>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortDoc {
    #[serde(default)]
    name: String,
    container_port: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProbeDoc {
    #[serde(default)]
    http_get: Option<HttpGetDoc>,
    #[serde(default)]
    exec: Option<serde_yaml::Value>,
    #[serde(default)]
    tcp_socket: Option<serde_yaml::Value>,
    #[serde(default)]
    grpc: Option<serde_yaml::Value>,
    #[serde(default)]
    initial_delay_seconds: Option<u64>,
    #[serde(default)]
    period_seconds: Option<u64>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    failure_threshold: Option<u32>,
    #[serde(default)]
    success_threshold: Option<u32>,
    #[serde(default)]
    termination_grace_period_seconds: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpGetDoc {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    path: Option<String>,
    port: serde_yaml::Value,
    #[serde(default)]
    scheme: Option<String>,
}

/// One probe, resolved to an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub kind: &'static str,
    pub host: String,
    pub port: u16,
    pub path: String,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    /// Grace period of a restart this probe asks for.
    pub grace: Duration,
}

/// What the stand-in runs for one container, besides its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRun {
    pub image: String,
    /// The pod's termination grace period (manifest change or removal).
    pub grace: Duration,
    pub startup: Option<Probe>,
    pub liveness: Option<Probe>,
    pub readiness: Option<Probe>,
}

impl PodRun {
    /// Read container `name` of the manifest text; `pod_ip` is the default probe host.
    pub fn parse(text: &str, name: &str, pod_ip: &str) -> Result<PodRun> {
        let bad = |m: String| Error::failed("read the pod's probes", m);
        let doc: PodDoc = serde_yaml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let c = doc
            .spec
            .containers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| bad(format!("no container {name}")))?;
        let grace = doc
            .spec
            .termination_grace_period_seconds
            .map_or(DEFAULT_GRACE, Duration::from_secs);
        let resolve = |kind: &'static str, p: &Option<ProbeDoc>| -> Result<Option<Probe>> {
            let Some(p) = p else { return Ok(None) };
            let Some(h) = &p.http_get else {
                let other = if p.exec.is_some() {
                    "exec"
                } else if p.tcp_socket.is_some() {
                    "tcpSocket"
                } else if p.grpc.is_some() {
                    "grpc"
                } else {
                    "no"
                };
                return Err(bad(format!(
                    "{kind} probe has an {other} handler; the stand-in runs httpGet probes only"
                )));
            };
            if let Some(s) = &h.scheme
                && !s.eq_ignore_ascii_case("http")
            {
                return Err(bad(format!(
                    "{kind} probe scheme {s}: the stand-in runs HTTP probes only"
                )));
            }
            let port = match &h.port {
                serde_yaml::Value::Number(n) => n
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| bad(format!("{kind} probe port {n}")))?,
                serde_yaml::Value::String(s) => match s.parse::<u16>() {
                    Ok(n) => n,
                    Err(_) => c
                        .ports
                        .iter()
                        .find(|p| p.name == *s)
                        .map(|p| p.container_port)
                        .ok_or_else(|| {
                            bad(format!(
                                "{kind} probe port {s} names no port of container {name}"
                            ))
                        })?,
                },
                other => return Err(bad(format!("{kind} probe port {other:?}"))),
            };
            let secs = |v: Option<u64>, d: u64| Duration::from_secs(v.unwrap_or(d));
            Ok(Some(Probe {
                kind,
                host: h
                    .host
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| pod_ip.to_string()),
                port,
                path: h.path.clone().unwrap_or_else(|| "/".into()),
                initial_delay: secs(p.initial_delay_seconds, 0),
                period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
                timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
                failure_threshold: p.failure_threshold.unwrap_or(3).max(1),
                success_threshold: p.success_threshold.unwrap_or(1).max(1),
                grace: p
                    .termination_grace_period_seconds
                    .map_or(grace, Duration::from_secs),
            }))
        };
        Ok(PodRun {
            image: c.image.clone(),
            grace,
            startup: resolve("startup", &c.startup_probe)?,
            liveness: resolve("liveness", &c.liveness_probe)?,
            readiness: resolve("readiness", &c.readiness_probe)?,
        })
    }
}

/// One HTTP GET as kubelet's prober makes it: `Ok(status)` or why there was none.
pub fn http_get(
    host: &str,
    port: u16,
    path: &str,
    timeout: Duration,
) -> std::result::Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {host}: no address"))?;
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    s.set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/etcdops-lab\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        s.set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(2).any(|w| w == b"\r\n") || buf.len() > 4096 {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "GET http://{host}:{port}{path}: no answer within {}s",
                    timeout.as_secs()
                ));
            }
            Err(e) => return Err(format!("read from {addr}: {e}")),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "GET http://{host}:{port}{path}: no answer within {}s",
                timeout.as_secs()
            ));
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let status = line
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("GET http://{host}:{port}{path}: no HTTP status line"))?;
    Ok(status)
}

/// Run a probe once: `Ok(())` on kubelet's success (200..400).
pub fn check(p: &Probe) -> std::result::Result<(), String> {
    match http_get(&p.host, p.port, &p.path, p.timeout)? {
        200..=399 => Ok(()),
        code => Err(format!(
            "GET http://{}:{}{}: HTTP {code}",
            p.host, p.port, p.path
        )),
    }
}

/// What a prober tells the stand-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The startup probe succeeded.
    Started,
    Ready(bool),
    /// Restart the container: why, and with which grace period.
    Restart(String, Duration),
}

/// A prober thread for one container run; cancelled on drop.
pub struct Prober {
    cancel: Arc<AtomicBool>,
    pub events: Receiver<Event>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

impl Prober {
    /// Start probing a container that started at `started`.
    pub fn spawn(run: &PodRun, started: Instant) -> Prober {
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = channel();
        let run = run.clone();
        let c = cancel.clone();
        std::thread::spawn(move || probe_loop(&run, started, &c, &tx));
        Prober { cancel, events: rx }
    }
}

/// Sleep until `t`; false when cancelled meanwhile.
fn sleep_until(t: Instant, cancel: &AtomicBool) -> bool {
    loop {
        if cancel.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= t {
            return true;
        }
        std::thread::sleep((t - now).min(Duration::from_millis(100)));
    }
}

fn probe_loop(run: &PodRun, started: Instant, cancel: &Arc<AtomicBool>, tx: &Sender<Event>) {
    if let Some(p) = &run.startup {
        let mut next = started + p.initial_delay;
        let mut failures = 0;
        loop {
            if !sleep_until(next, cancel) {
                return;
            }
            let at = Instant::now();
            match check(p) {
                Ok(()) => break,
                Err(why) => {
                    failures += 1;
                    if failures >= p.failure_threshold {
                        let _ = tx.send(Event::Restart(
                            format!("startup probe failed {failures} times: {why}"),
                            p.grace,
                        ));
                        return;
                    }
                }
            }
            next = at + p.period;
        }
        if cancel.load(Ordering::SeqCst) {
            return;
        }
        let _ = tx.send(Event::Started);
    }
    // kubelet runs one worker per probe: readiness must not wait behind a liveness probe
    // that hangs for its timeout, nor the other way round.
    if let Some(p) = run.readiness.clone() {
        let cancel = cancel.clone();
        let tx = tx.clone();
        std::thread::spawn(move || readiness_loop(&p, started, &cancel, &tx));
    }
    let Some(p) = &run.liveness else { return };
    let mut next = (started + p.initial_delay).max(Instant::now());
    let mut failures = 0u32;
    loop {
        if !sleep_until(next, cancel) {
            return;
        }
        let at = Instant::now();
        match check(p) {
            Ok(()) => failures = 0,
            Err(why) => {
                failures += 1;
                if failures >= p.failure_threshold {
                    if !cancel.load(Ordering::SeqCst) {
                        let _ = tx.send(Event::Restart(
                            format!("liveness probe failed {failures} times: {why}"),
                            p.grace,
                        ));
                    }
                    return;
                }
            }
        }
        next = at + p.period;
    }
}

fn readiness_loop(p: &Probe, started: Instant, cancel: &AtomicBool, tx: &Sender<Event>) {
    let mut next = (started + p.initial_delay).max(Instant::now());
    let (mut ok, mut failed) = (0u32, 0u32);
    let mut ready: Option<bool> = None;
    loop {
        if !sleep_until(next, cancel) {
            return;
        }
        let at = Instant::now();
        let now_ready = match check(p) {
            Ok(()) => {
                failed = 0;
                ok += 1;
                (ok >= p.success_threshold).then_some(true)
            }
            Err(_) => {
                ok = 0;
                failed += 1;
                (failed >= p.failure_threshold).then_some(false)
            }
        };
        if let Some(r) = now_ready
            && ready != Some(r)
        {
            ready = Some(r);
            if tx.send(Event::Ready(r)).is_err() {
                return;
            }
        }
        next = at + p.period;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"
spec:
  containers:
  - name: etcd
    image: registry.k8s.io/etcd:3.6.17-0
    ports:
    - containerPort: 2381
      name: probe-port
      protocol: TCP
    livenessProbe:
      failureThreshold: 8
      httpGet:
        host: 127.0.0.11
        path: /livez
        port: probe-port
        scheme: HTTP
      initialDelaySeconds: 10
      periodSeconds: 10
      timeoutSeconds: 15
    readinessProbe:
      httpGet:
        path: /readyz
        port: 2381
    startupProbe:
      failureThreshold: 24
      httpGet:
        host: 127.0.0.11
        path: /readyz
        port: probe-port
        scheme: HTTP
      initialDelaySeconds: 10
      periodSeconds: 10
      timeoutSeconds: 15
      terminationGracePeriodSeconds: 5
"#;

    #[test]
    fn kubeadm_probes_resolve_like_kubelet() {
        let run = PodRun::parse(POD, "etcd", "127.0.0.99").unwrap();
        assert_eq!(run.image, "registry.k8s.io/etcd:3.6.17-0");
        assert_eq!(run.grace, DEFAULT_GRACE);
        let live = run.liveness.unwrap();
        assert_eq!(
            (live.host.as_str(), live.port, live.path.as_str()),
            ("127.0.0.11", 2381, "/livez")
        );
        assert_eq!(live.failure_threshold, 8);
        assert_eq!(live.timeout, Duration::from_secs(15));
        let ready = run.readiness.unwrap();
        // kubelet's defaults where the manifest says nothing; the pod IP as host.
        assert_eq!(ready.host, "127.0.0.99");
        assert_eq!(
            (ready.period, ready.timeout, ready.failure_threshold),
            (Duration::from_secs(10), Duration::from_secs(1), 3)
        );
        let startup = run.startup.unwrap();
        assert_eq!(startup.failure_threshold, 24);
        assert_eq!(startup.grace, Duration::from_secs(5));
    }

    #[test]
    fn unknown_named_port_is_refused() {
        let pod = POD.replace("port: probe-port", "port: nope");
        assert!(PodRun::parse(&pod, "etcd", "127.0.0.1").is_err());
    }
}
