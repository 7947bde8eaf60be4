//! Restore's fence check, with the manifest's peer certificates, blocking (`peer.rs` asks
//! the same question with the client certificate, async, for health and doctor; the two
//! came from parallel branches and should become one).
//! Which cluster an etcd peer port serves, asked as etcd's peers ask each other: `GET
//! /members` on the peer URL answers with the `X-Etcd-Cluster-ID` header (etcd's
//! `etcdserver/api/etcdhttp/peer.go`, the same from 3.4 to 3.7), over mutual TLS with the
//! peer certificates when the URL is https. Plain TCP and rustls, every call bounded by the
//! dial and command timeouts. A member without quorum answers all the same: its peer
//! handler runs before it has published itself.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `--peer-trusted-ca-file`, `--peer-cert-file`, `--peer-key-file` of a manifest, as host
/// paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTls {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// The most of a response read: the headers come first and are all we need.
const MAX_RESPONSE: usize = 64 * 1024;

/// The cluster id (lower-case hex, as etcd prints it) that `peer_url` answers with; `None`
/// when nothing answers there (refused, unreachable, or no connection within `dial`); an
/// error when something answers but no cluster id can be read from it.
pub fn cluster_id(
    peer_url: &str,
    tls: Option<&PeerTls>,
    dial: Duration,
    timeout: Duration,
) -> Result<Option<String>> {
    let (https, rest) = if let Some(r) = peer_url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = peer_url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(Error::Usage(format!(
            "peer URL {peer_url}: neither http:// nor https://"
        )));
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let fail = |why: String| Error::failed(format!("ask {peer_url} for its cluster id"), why);
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| fail(format!("cannot resolve {authority}: {e}")))?
        .next()
        .ok_or_else(|| fail(format!("{authority} resolves to no address")))?;
    let Ok(mut sock) = TcpStream::connect_timeout(&addr, dial) else {
        return Ok(None);
    };
    sock.set_read_timeout(Some(timeout))
        .and_then(|_| sock.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(e.to_string()))?;
    let request = format!(
        "GET /members HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: etcdops\r\nConnection: close\r\n\r\n"
    );
    let response = if https {
        let tls = tls.ok_or_else(|| {
            fail("the manifest names no --peer-trusted-ca-file, --peer-cert-file and --peer-key-file to ask an https peer with".into())
        })?;
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let config = client_config(tls).map_err(fail)?;
        let name =
            ServerName::try_from(host.to_string()).map_err(|e| fail(format!("{host}: {e}")))?;
        let mut conn =
            rustls::ClientConnection::new(config, name).map_err(|e| fail(format!("TLS: {e}")))?;
        let mut stream = rustls::Stream::new(&mut conn, &mut sock);
        exchange(&mut stream, &request).map_err(|e| fail(format!("TLS: {e}")))?
    } else {
        exchange(&mut sock, &request).map_err(|e| fail(e.to_string()))?
    };
    header_cluster_id(&response).map(Some).ok_or_else(|| {
        let first = response.lines().next().unwrap_or("(nothing)");
        fail(format!(
            "the answer has no X-Etcd-Cluster-ID header ({first})"
        ))
    })
}

fn client_config(tls: &PeerTls) -> std::result::Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(&tls.ca).map_err(|e| format!("{}: {e}", tls.ca.display()))?
    {
        let c = c.map_err(|e| format!("{}: {e}", tls.ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", tls.ca.display()))?;
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect())
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("{}: {e}", tls.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?;
    Ok(Arc::new(config))
}

/// Send the request; read until the headers are complete (or the peer closes).
fn exchange(stream: &mut impl ReadWrite, request: &str) -> std::io::Result<String> {
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_RESPONSE {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A TLS peer that closes without close_notify after the answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The `X-Etcd-Cluster-ID` header of an HTTP response (names are case-insensitive).
pub fn header_cluster_id(response: &str) -> Option<String> {
    let head = response.split("\r\n\r\n").next().unwrap_or(response);
    head.lines().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("x-etcd-cluster-id")
            .then(|| value.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_id_header_is_read_whatever_its_case() {
        let r = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Etcd-Cluster-Id: 1C2d\r\n\r\n[]";
        assert_eq!(header_cluster_id(r).as_deref(), Some("1c2d"));
        assert_eq!(header_cluster_id("HTTP/1.1 404 Not Found\r\n\r\n"), None);
        // Not from the body.
        assert_eq!(
            header_cluster_id("HTTP/1.1 200 OK\r\n\r\nX-Etcd-Cluster-ID: 1"),
            None
        );
    }

    #[test]
    fn a_port_where_nothing_listens_does_not_answer() {
        // Bind, learn the port, close: nothing listens there now.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let url = format!("http://127.0.0.1:{port}");
        let got = cluster_id(&url, None, Duration::from_secs(2), Duration::from_secs(2));
        assert_eq!(got.unwrap(), None);
    }

    #[test]
    fn a_plain_http_peer_answers_with_its_header() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            s.write_all(b"HTTP/1.1 200 OK\r\nX-Etcd-Cluster-ID: cdf818194e3a8c32\r\n\r\n[]")
                .unwrap();
            req
        });
        let got = cluster_id(&url, None, Duration::from_secs(2), Duration::from_secs(2));
        assert_eq!(got.unwrap().as_deref(), Some("cdf818194e3a8c32"));
        assert!(
            server
                .join()
                .unwrap()
                .starts_with("GET /members HTTP/1.1\r\n")
        );
    }
}
