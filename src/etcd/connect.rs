//! Where to connect and how: flags, then `ETCDCTL_*` env (both through clap), then the
//! static pod manifest, whose container paths are mapped to host paths. And the connection
//! itself: one client per endpoint, confirmed by a real call, because `Client::connect()`
//! returns Ok for a dead endpoint or a foreign certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::error::{Error, Result};
use crate::manifest::{DEFAULT_MANIFEST, StaticPod};

/// What the operator gave (flags or env), before discovery.
#[derive(Debug, Clone, Default)]
pub struct Given {
    pub endpoints: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `--manifest` / `ETCDOPS_MANIFEST`; `None` means the kubeadm default.
    pub manifest: Option<PathBuf>,
    pub dial_timeout: Duration,
    pub command_timeout: Duration,
}

/// Client TLS material, as host paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A resolved connection configuration.
#[derive(Debug, Clone)]
pub struct Connection {
    pub endpoints: Vec<String>,
    pub tls: TlsFiles,
    pub dial_timeout: Duration,
    pub command_timeout: Duration,
    /// The manifest that filled in what flags and env did not, if any.
    pub manifest: Option<PathBuf>,
}

impl Given {
    /// The manifest path in force: `--manifest`, else the kubeadm default.
    pub fn manifest_path(&self) -> PathBuf {
        self.manifest
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MANIFEST))
    }

    /// Resolve every field: flag/env first, then the manifest. The manifest is read only when
    /// something is missing; a manifest named explicitly must exist, the default may not.
    pub fn resolve(&self) -> Result<Connection> {
        let endpoints: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        let mut conn = Connection {
            endpoints,
            tls: TlsFiles {
                cacert: self.cacert.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
            },
            dial_timeout: self.dial_timeout,
            command_timeout: self.command_timeout,
            manifest: None,
        };
        let tls_missing =
            conn.tls.cacert.is_none() || conn.tls.cert.is_none() || conn.tls.key.is_none();
        let wants_manifest = conn.endpoints.is_empty() || (tls_missing && conn.uses_https());
        if wants_manifest {
            let path = self.manifest_path();
            let explicit = self.manifest.is_some();
            if explicit || path.exists() || conn.endpoints.is_empty() {
                let pod = StaticPod::load(&path).map_err(|e| {
                    if conn.endpoints.is_empty() && !explicit {
                        Error::Usage(format!(
                            "no endpoints: pass --endpoints or ETCDCTL_ENDPOINTS, or --manifest ({e})"
                        ))
                    } else {
                        e
                    }
                })?;
                conn.fill_from_manifest(&pod)?;
                conn.manifest = Some(path);
            }
        }
        conn.validate()?;
        Ok(conn)
    }
}

impl Connection {
    fn uses_https(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    fn fill_from_manifest(&mut self, pod: &StaticPod) -> Result<()> {
        if self.endpoints.is_empty() {
            self.endpoints = manifest_endpoints(pod)?;
        }
        if !self.uses_https() {
            return Ok(());
        }
        let resolve = |flag: &str| -> Result<Option<PathBuf>> {
            match pod.etcd_flag(flag)? {
                Some(p) if !p.is_empty() => Ok(Some(pod.host_path(&p)?)),
                _ => Ok(None),
            }
        };
        if self.tls.cacert.is_none() {
            self.tls.cacert = resolve("trusted-ca-file")?;
        }
        if self.tls.cert.is_none() {
            self.tls.cert = resolve("cert-file")?;
        }
        if self.tls.key.is_none() {
            self.tls.key = resolve("key-file")?;
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(Error::Usage(
                "no endpoints: pass --endpoints or ETCDCTL_ENDPOINTS, or a manifest with --listen-client-urls".into(),
            ));
        }
        for e in &self.endpoints {
            check_endpoint(e)?;
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(Error::Usage(
                "--cert and --key go together: give both or neither".into(),
            ));
        }
        for p in [&self.tls.cacert, &self.tls.cert, &self.tls.key]
            .into_iter()
            .flatten()
        {
            if !p.is_file() {
                return Err(Error::input(p, "TLS file not found"));
            }
        }
        Ok(())
    }

    /// A client for one endpoint with this connection's TLS and the given request timeout.
    /// Not yet confirmed: the first RPC tells whether the endpoint is really there.
    pub async fn client(
        &self,
        endpoint: &str,
        request_timeout: Duration,
    ) -> Result<Client, String> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.dial_timeout)
            .with_timeout(request_timeout);
        if endpoint.starts_with("https://") {
            opts = opts.with_tls(self.tls_options()?);
        }
        Client::connect([endpoint], Some(opts))
            .await
            .map_err(|e| describe(&e))
    }

    pub(crate) fn tls_options(&self) -> Result<TlsOptions, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()));
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.tls.cacert {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(tls)
    }
}

/// Client URLs from the manifest: `--listen-client-urls` preferring a loopback URL, else
/// `--advertise-client-urls`.
pub fn manifest_endpoints(pod: &StaticPod) -> Result<Vec<String>> {
    let split = |v: Option<String>| -> Vec<String> {
        v.unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let listen = split(pod.etcd_flag("listen-client-urls")?);
    if let Some(lo) = listen.iter().find(|u| is_loopback_url(u)) {
        return Ok(vec![lo.clone()]);
    }
    let advertise = split(pod.etcd_flag("advertise-client-urls")?);
    if let Some(first) = advertise.into_iter().next() {
        return Ok(vec![first]);
    }
    // A listen URL on 0.0.0.0 is reachable on loopback.
    if let Some(any) = listen.iter().find(|u| u.contains("://0.0.0.0:")) {
        return Ok(vec![any.replace("://0.0.0.0:", "://127.0.0.1:")]);
    }
    listen.into_iter().next().map(|u| vec![u]).ok_or_else(|| {
        Error::input(
            &pod.path,
            "the etcd container has neither --listen-client-urls nor --advertise-client-urls",
        )
    })
}

/// A client URL must be `http[s]://HOST:PORT` with a port in 1..=65535 and a closed IPv6
/// bracket: a malformed one is the operator's typo (exit 2 naming it), not an unreachable
/// member (exit 3).
pub fn check_endpoint(url: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Usage(format!("endpoint {url:?}: {why}")));
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return bad("must start with http:// or https://");
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.len() != rest.trim_end_matches('/').len() {
        return bad("a client URL has no path: write http[s]://HOST:PORT");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return bad("the IPv6 address has no closing `]`");
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return bad(&format!("`{addr}` is not an IPv6 address"));
        }
        match after.strip_prefix(':') {
            Some(p) => (addr, Some(p)),
            None if after.is_empty() => (addr, None),
            None => return bad("expected `:PORT` after the IPv6 address"),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return bad("no host");
    }
    if host.contains(['[', ']', ' ', '@']) {
        return bad(&format!("`{host}` is not a host name or address"));
    }
    match port {
        None => bad("no port (etcd's client port is usually 2379)"),
        Some(p) => match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(()),
            Ok(n) => bad(&format!("port {n} is out of range (1-65535)")),
            Err(_) => bad(&format!("port `{p}` is not a number")),
        },
    }
}

/// Whether whatever listens at a plain `http://` URL answers in TLS: we send a TLS 1.2
/// ClientHello and look at the first byte of the answer, a TLS handshake (0x16) or alert
/// (0x15) record. A real probe bounded by `timeout`, so that the hint "the member may need
/// https://" is given only when it is true (etcd's TLS listener just closes a plaintext
/// HTTP/2 connection, which looks like any broken pipe).
pub fn speaks_tls(url: &str, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    let Some(authority) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = authority.trim_end_matches('/');
    let Some(addr) = authority.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if stream.write_all(&client_hello()).is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(stream.read(&mut first), Ok(1) if first[0] == 0x15 || first[0] == 0x16)
}

/// A minimal TLS 1.2 ClientHello (ECDHE with AES-GCM, P-256/X25519, ECDSA/RSA signatures).
fn client_hello() -> Vec<u8> {
    fn with_len16(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }
    fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut v = kind.to_be_bytes().to_vec();
        v.extend(with_len16(body));
        v
    }
    let mut hello = vec![0x03, 0x03];
    hello.extend([0x42; 32]); // client random: any value will do for a probe
    hello.push(0); // no session id
    hello.extend(with_len16(&[
        0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x2c, 0xc0, 0x30,
    ]));
    hello.extend([0x01, 0x00]); // compression: null
    let mut exts = Vec::new();
    exts.extend(extension(0x000a, &with_len16(&[0x00, 0x1d, 0x00, 0x17])));
    exts.extend(extension(0x000b, &[0x01, 0x00]));
    exts.extend(extension(
        0x000d,
        &with_len16(&[0x04, 0x03, 0x08, 0x04, 0x04, 0x01]),
    ));
    hello.extend(with_len16(&exts));
    let mut handshake = vec![0x01];
    handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(with_len16(&handshake));
    record
}

/// The one-line reason an endpoint failed, with the hint that a plain `http://` URL may need
/// `https://` when the member answered in TLS.
pub fn with_tls_hint(url: &str, reason: String, timeout: Duration) -> String {
    if speaks_tls(url, timeout) {
        format!(
            "{reason} (the member answers in TLS: it may need {})",
            url.replacen("http://", "https://", 1)
        )
    } else {
        reason
    }
}

fn is_loopback_url(url: &str) -> bool {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .rsplit_once(':')
        .map_or(url, |(h, _)| h);
    host == "localhost" || host == "[::1]" || host.starts_with("127.")
}

/// An etcd-client error as one line: the gRPC message and the root cause that tonic buries
/// under debug formatting (connection refused, unknown certificate issuer, ...).
pub fn describe(e: &etcd_client::Error) -> String {
    let head = match e {
        etcd_client::Error::GRpcStatus(s) => {
            let msg = s.message();
            if msg.is_empty() {
                format!("{:?}", s.code())
            } else {
                msg.to_string()
            }
        }
        other => other.to_string(),
    };
    let mut root: Option<String> = None;
    let mut src = match e {
        etcd_client::Error::GRpcStatus(s) => std::error::Error::source(s),
        other => std::error::Error::source(other),
    };
    while let Some(s) = src {
        root = Some(s.to_string());
        src = s.source();
    }
    let line = match root {
        Some(r) if !head.contains(&r) => format!("{head}: {r}"),
        _ => head,
    };
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls() {
        assert!(is_loopback_url("https://127.0.0.1:2379"));
        assert!(is_loopback_url("https://127.0.0.11:2379"));
        assert!(is_loopback_url("http://localhost:2379"));
        assert!(is_loopback_url("https://[::1]:2379"));
        assert!(!is_loopback_url("https://10.0.0.5:2379"));
    }

    /// Regression (issue 11, bug 7): these counted as unreachable (exit 3).
    #[test]
    fn malformed_endpoints_are_usage_errors_naming_the_url() {
        for (url, why) in [
            ("https://127.0.0.1:65536", "out of range"),
            ("https://127.0.0.1:99999", "out of range"),
            ("https://[::1", "closing `]`"),
            ("https://[::1]", "no port"),
            ("https://127.0.0.1", "no port"),
            ("https://127.0.0.1:23x9", "not a number"),
            ("https://:2379", "no host"),
            ("127.0.0.1:2379", "http:// or https://"),
            ("https://127.0.0.1:2379/v3", "no path"),
        ] {
            let e = check_endpoint(url).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{url}");
            let line = e.one_line();
            assert!(line.contains(url) && line.contains(why), "{url}: {line}");
        }
        for ok in [
            "https://127.0.0.1:2379",
            "http://localhost:2379",
            "https://[::1]:2379",
            "https://etcd-0.example:2379/",
        ] {
            check_endpoint(ok).unwrap_or_else(|e| panic!("{ok}: {}", e.one_line()));
        }
    }

    #[test]
    fn flags_win_and_missing_default_manifest_is_fine() {
        let given = Given {
            endpoints: vec!["http://127.0.0.1:1".into()],
            manifest: None,
            ..Default::default()
        };
        let conn = given.resolve().unwrap();
        assert_eq!(conn.endpoints, vec!["http://127.0.0.1:1"]);
        assert_eq!(conn.tls, TlsFiles::default());
    }

    #[test]
    fn bad_usage_is_exit_2() {
        let cases = [
            Given {
                endpoints: vec!["127.0.0.1:2379".into()],
                ..Default::default()
            },
            Given {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                cert: Some("/nonexistent/c".into()),
                ..Default::default()
            },
            Given {
                manifest: Some("/nonexistent/etcd.yaml".into()),
                ..Default::default()
            },
        ];
        for g in cases {
            assert_eq!(g.resolve().unwrap_err().exit_code(), 2, "{g:?}");
        }
    }
}
