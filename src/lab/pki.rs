//! A kubeadm-style etcd PKI (`pki/etcd/{ca,server,peer,healthcheck-client}.{crt,key}`),
//! generated with rcgen: ECDSA P-256 keys, a CA, server and peer certificates for the given
//! addresses, and a client certificate for client-cert auth.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// Paths of one generated PKI directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn peer_cert(&self) -> PathBuf {
        self.dir.join("peer.crt")
    }
    pub fn peer_key(&self) -> PathBuf {
        self.dir.join("peer.key")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("healthcheck-client.crt")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("healthcheck-client.key")
    }
}

/// A certificate authority kept in memory to sign more certificates.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

fn pki_err(e: rcgen::Error) -> Error {
    Error::failed("generate certificates", e.to_string())
}

impl Authority {
    /// A new self-signed CA with the given common name.
    pub fn new(common_name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(pki_err)?;
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(pki_err)?;
        Ok(Authority { issuer, key_pem })
    }

    fn sign(
        &self,
        common_name: &str,
        sans: &[String],
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<(String, String)> {
        let mut params = CertificateParams::new(sans.to_vec()).map_err(pki_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages;
        let key = KeyPair::generate().map_err(pki_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(pki_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Write `ca.crt`/`ca.key`, `server`, `peer` (for `node_name` at `addresses`, plus
    /// localhost and 127.0.0.1) and `healthcheck-client` into `dir`, kubeadm's file names.
    pub fn write_node(&self, dir: &Path, node_name: &str, addresses: &[IpAddr]) -> Result<Pki> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let mut sans: Vec<String> = vec!["localhost".into(), node_name.into(), "127.0.0.1".into()];
        for a in addresses {
            let s = a.to_string();
            if !sans.contains(&s) {
                sans.push(s);
            }
        }
        let both = || {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        let server = self.sign(node_name, &sans, both())?;
        let peer = self.sign(node_name, &sans, both())?;
        let client = self.sign(
            "kube-etcd-healthcheck-client",
            &[],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )?;
        write(dir, "ca.crt", &self.issuer.pem(), 0o644)?;
        write(dir, "ca.key", &self.key_pem, 0o600)?;
        for (name, (cert, key)) in [
            ("server", server),
            ("peer", peer),
            ("healthcheck-client", client),
        ] {
            write(dir, &format!("{name}.crt"), &cert, 0o644)?;
            write(dir, &format!("{name}.key"), &key, 0o600)?;
        }
        Ok(Pki {
            dir: dir.to_path_buf(),
        })
    }
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("chmod", &path, e))
}
