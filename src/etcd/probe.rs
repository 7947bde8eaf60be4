//! `/livez` and `/readyz` (etcd >= 3.5.11), asked as kubelet asks them: a plain HTTP GET on
//! the metrics listener (`--listen-metrics-urls`; kubeadm: `http://127.0.0.1:2381`), which
//! needs no client certificate. One request per path, each with a deadline on connect, write
//! and read. `?verbose` makes etcd name the failing check (`[-]non_learner failed: ...`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// `http://127.0.0.1:2381/readyz`.
    pub url: String,
    /// HTTP 200.
    pub ok: bool,
    /// The HTTP status; `None` when no answer came (the reason is in `error`).
    pub status: Option<u16>,
    /// The checks etcd says failed (`non_learner`, `linearizable_read`, ...).
    pub failed: Vec<String>,
    pub error: Option<String>,
}

impl Probe {
    /// One line for tables and problems: `ok`, or why not.
    pub fn summary(&self) -> String {
        match (self.ok, self.status, &self.error) {
            (true, _, _) => "ok".into(),
            (false, Some(code), _) if !self.failed.is_empty() => {
                format!("HTTP {code}: {} failed", self.failed.join(", "))
            }
            (false, Some(code), _) => format!("HTTP {code}"),
            (false, None, Some(e)) => e.clone(),
            (false, None, None) => "no answer".into(),
        }
    }
}

/// GET `base` + `path` + `?verbose` within `timeout`. Only `http://` (kubeadm's metrics
/// listener); anything else is answered with an error, not guessed at.
pub fn get(base: &str, path: &str, timeout: Duration) -> Probe {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut p = Probe {
        url: url.clone(),
        ok: false,
        status: None,
        failed: Vec::new(),
        error: None,
    };
    match request(base, path, timeout) {
        Ok((status, body)) => {
            p.status = Some(status);
            p.ok = status == 200;
            // etcd's verbose body: one `[+]name ok` or `[-]name failed: reason` per check.
            p.failed = body
                .lines()
                .filter_map(|l| l.strip_prefix("[-]"))
                .map(|l| l.split_whitespace().next().unwrap_or(l).to_string())
                .collect();
        }
        Err(e) => p.error = Some(format!("{url}: {e}")),
    }
    p
}

fn request(base: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| "only an http:// metrics URL is probed (kubeadm's is)".to_string())?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let deadline = Instant::now() + timeout;
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {authority}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {}", humantime::format_duration(timeout)))
    };
    s.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    // One write: a request split over several segments is harder on small servers.
    let req = format!(
        "GET {path}?verbose HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: etcdops\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        s.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 64 * 1024 {
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
                    "no answer within {}",
                    humantime::format_duration(timeout)
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "not an HTTP answer".to_string())?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// `/livez` and `/readyz` of one member's metrics listener.
pub fn livez_readyz(metrics_url: &str, timeout: Duration) -> (Probe, Probe) {
    (
        get(metrics_url, "/livez", timeout),
        get(metrics_url, "/readyz", timeout),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn reads_etcd_verbose_failures_and_refuses_https() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            // Read the whole request: closing with unread bytes would reset the connection.
            let mut req = Vec::new();
            let mut b = [0u8; 256];
            while !req.ends_with(b"\r\n\r\n") {
                let n = c.read(&mut b).unwrap();
                assert!(n > 0, "request ended early");
                req.extend_from_slice(&b[..n]);
            }
            c.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\n[+]serializable_read ok\n[-]non_learner failed: not supported for learner\n").unwrap();
        });
        let p = get(
            &format!("http://127.0.0.1:{port}"),
            "/readyz",
            Duration::from_secs(5),
        );
        t.join().unwrap();
        assert_eq!(p.status, Some(503));
        assert!(!p.ok);
        assert_eq!(p.failed, vec!["non_learner".to_string()]);
        assert_eq!(p.summary(), "HTTP 503: non_learner failed");
        let p = get("https://127.0.0.1:1", "/livez", Duration::from_secs(1));
        assert!(p.error.unwrap().contains("only an http://"));
    }
}
