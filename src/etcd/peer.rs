//! etcd's peer port, asked the one thing that a member serving no client request still
//! tells: which cluster it belongs to. A member that bootstrapped a cluster of its own (its
//! data dir wiped, its manifest's `--initial-cluster` read afresh) has no quorum there, so
//! its client port accepts connections and answers nothing; its peer port answers
//! `GET /members` at once, with the `X-Etcd-Cluster-ID` header its real peers reject it
//! by. One HTTP/1.1 request over TLS with the connection's client certificate (kubeadm's
//! peers trust the etcd CA that signs it), bounded by the dial and command timeouts.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

use super::client::{RpcError, within};
use super::connect::Connection;

/// What a peer URL said about its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAnswer {
    pub cluster_id: u64,
    /// The members of that cluster, as the peer lists them (empty if the body was not
    /// understood: the header is what counts).
    pub members: Vec<PeerMember>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl PeerAnswer {
    /// The member answering at `peer_url`, by its peer URL.
    pub fn member_at(&self, peer_url: &str) -> Option<&PeerMember> {
        let url = peer_url.trim_end_matches('/');
        self.members
            .iter()
            .find(|m| m.peer_urls.iter().any(|u| u.trim_end_matches('/') == url))
    }
}

/// Which cluster the member at `peer_url` belongs to, within the command timeout.
pub async fn cluster_of(conn: &Connection, peer_url: &str) -> Result<PeerAnswer, String> {
    let what = format!("GET {peer_url}/members");
    within(conn.command_timeout, &what, async {
        // A member crash-looping under kubelet refuses between two of its lives: ask again
        // until the deadline rather than judge it by one refused connection.
        loop {
            match ask(conn, peer_url).await {
                Err(e) if e.contains("Connection refused") => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                r => return r.map_err(RpcError::other),
            }
        }
    })
    .await
    .map_err(|e| format!("{peer_url}: {e}"))
}

async fn ask(conn: &Connection, peer_url: &str) -> Result<PeerAnswer, String> {
    let (scheme, rest) = peer_url
        .split_once("://")
        .ok_or_else(|| format!("peer URL {peer_url:?} has no scheme"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let tcp = tokio::time::timeout(conn.dial_timeout, TcpStream::connect(authority))
        .await
        .map_err(|_| {
            format!(
                "connect timed out after {}",
                humantime::format_duration(conn.dial_timeout)
            )
        })?
        .map_err(|e| format!("connect: {e}"))?;
    let request =
        format!("GET /members HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    if scheme == "https" {
        let config = Arc::new(client_config(conn)?);
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("server name {host:?}: {e}"))?;
        let mut tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        tls.flush().await.map_err(|e| format!("write: {e}"))?;
        read_all(&mut tls, &mut raw).await?;
    } else {
        let mut tcp = tcp;
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        tcp.flush().await.map_err(|e| format!("write: {e}"))?;
        read_all(&mut tcp, &mut raw).await?;
    }
    parse(&raw)
}

/// Read the response: until the peer closes, or as soon as the headers and a body of the
/// announced `Content-Length` are in (Go keeps a TLS connection open a while after the
/// response; `read_to_end` waited for that). A TLS peer that closes without `close_notify`
/// still gave what it gave.
async fn read_all<R: AsyncReadExt + Unpin>(r: &mut R, out: &mut Vec<u8>) -> Result<(), String> {
    let mut buf = [0u8; 8192];
    loop {
        if complete(out) {
            return Ok(());
        }
        match r.read(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {
                return Ok(());
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Whether `raw` holds the headers and the whole body they announce.
fn complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|len| raw.len() >= end + 4 + len)
}

fn client_config(conn: &Connection) -> Result<rustls::ClientConfig, String> {
    let read =
        |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()));
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &conn.tls.cacert {
        for c in CertificateDer::pem_slice_iter(&read(ca)?) {
            let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS config: {e}"))?
        .with_root_certificates(roots);
    match (&conn.tls.cert, &conn.tls.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The cluster id from the `X-Etcd-Cluster-ID` header; the members from the JSON body
/// when it is plain (not chunked) JSON.
fn parse(raw: &[u8]) -> Result<PeerAnswer, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "no HTTP response".to_string())?;
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    let cluster = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("x-etcd-cluster-id"))
        .map(|(_, v)| v.trim().to_string())
        .ok_or_else(|| format!("no X-Etcd-Cluster-ID header in the answer ({status})"))?;
    let cluster_id = u64::from_str_radix(&cluster, 16)
        .map_err(|e| format!("X-Etcd-Cluster-ID {cluster:?}: {e}"))?;
    let members = serde_json::from_str::<Vec<serde_json::Value>>(body.trim())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            let id = match &m["id"] {
                serde_json::Value::Number(n) => n.as_u64()?,
                serde_json::Value::String(s) => u64::from_str_radix(s, 16).ok()?,
                _ => return None,
            };
            Some(PeerMember {
                id,
                name: m["name"].as_str().unwrap_or_default().to_string(),
                peer_urls: m["peerURLs"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|u| u.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect();
    Ok(PeerAnswer {
        cluster_id,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as etcd 3.4 and 3.5 give it (`GET /members` on the peer port).
    #[test]
    fn the_cluster_id_comes_from_the_header_and_the_members_from_the_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
            X-Etcd-Cluster-Id: 5a2b4f3e1d0c9b8a\r\nDate: x\r\nContent-Length: 99\r\n\r\n\
            [{\"id\":1311406034101735170,\"name\":\"n2\",\"peerURLs\":[\"https://10.0.0.2:2380\"],\
            \"clientURLs\":[]}]\n";
        let a = parse(raw).unwrap();
        assert_eq!(a.cluster_id, 0x5a2b4f3e1d0c9b8a);
        assert_eq!(
            a.member_at("https://10.0.0.2:2380/").unwrap().id,
            1311406034101735170
        );
        assert_eq!(a.member_at("https://10.0.0.2:2380").unwrap().name, "n2");
        let e = parse(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap_err();
        assert!(
            e.contains("no X-Etcd-Cluster-ID") && e.contains("404"),
            "{e}"
        );
        assert!(parse(b"garbage").is_err());
    }
}
