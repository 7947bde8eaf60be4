//! etcd's certificates (server, peer, healthcheck client, CA), read with `x509-parser`
//! and keys with `rustls-pki-types` + ring: expiry (warn under 30 days, fail expired),
//! SANs covering every advertise URL's host (renewed certs whose SANs no longer match:
//! kubernetes#118216), each key matching its certificate, each certificate signed by a CA
//! of the trusted CA file. A fix re-issues the certificate for its own key with the CA
//! beside the CA file (kubeadm's layout), keeping its subject and SANs and adding the
//! missing hosts — or, on a kubeadm node, `kubeadm certs renew`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use super::{Ctx, Verdict, sh};

/// Fewer days than this before expiry warns.
pub const WARN_DAYS: i64 = 30;

/// One certificate etcd uses, with host paths.
#[derive(Debug, Clone)]
pub struct CertFile {
    /// `server`, `peer`, `healthcheck-client`.
    pub role: &'static str,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA file that must have signed it.
    pub ca: PathBuf,
    /// Hosts its SANs must cover (from the advertise URLs).
    pub hosts: Vec<String>,
    /// Extended key usages a re-issued certificate needs.
    pub eku: &'static str,
}

/// The leaf certificates the manifest names, and the CA files.
fn files(ctx: &Ctx) -> Result<(Vec<CertFile>, Vec<PathBuf>), String> {
    let (pod, _) = ctx.pod()?;
    let host = |flag: &str| -> Option<PathBuf> {
        let v = pod.etcd_flag(flag).ok().flatten()?;
        pod.host_path(&v).ok()
    };
    let urls = |flag: &str| -> Vec<String> {
        pod.etcd_flag(flag)
            .ok()
            .flatten()
            .map(|v| v.split(',').filter_map(url_host).collect())
            .unwrap_or_default()
    };
    let ca = host("trusted-ca-file");
    let peer_ca = host("peer-trusted-ca-file").or_else(|| ca.clone());
    let mut leaves = Vec::new();
    if let (Some(cert), Some(key), Some(ca)) = (host("cert-file"), host("key-file"), &ca) {
        leaves.push(CertFile {
            role: "server",
            cert,
            key,
            ca: ca.clone(),
            hosts: urls("advertise-client-urls"),
            eku: "serverAuth,clientAuth",
        });
    }
    if let (Some(cert), Some(key), Some(ca)) =
        (host("peer-cert-file"), host("peer-key-file"), &peer_ca)
    {
        leaves.push(CertFile {
            role: "peer",
            cert,
            key,
            ca: ca.clone(),
            hosts: urls("initial-advertise-peer-urls"),
            eku: "serverAuth,clientAuth",
        });
    }
    // kubeadm's healthcheck client lives beside the CA; the manifest does not name it.
    if let Some(ca) = &ca
        && let Some(dir) = ca.parent()
        && dir.join("healthcheck-client.crt").is_file()
    {
        leaves.push(CertFile {
            role: "healthcheck-client",
            cert: dir.join("healthcheck-client.crt"),
            key: dir.join("healthcheck-client.key"),
            ca: ca.clone(),
            hosts: Vec::new(),
            eku: "clientAuth",
        });
    }
    if leaves.is_empty() {
        return Err("the manifest names no TLS files (--cert-file, --trusted-ca-file)".into());
    }
    let mut cas: Vec<PathBuf> = ca.into_iter().chain(peer_ca).collect();
    cas.dedup();
    Ok((leaves, cas))
}

/// The host of a URL: `https://10.0.0.1:2379` -> `10.0.0.1`, `https://[::1]:2379` -> `::1`.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.trim().split_once("://").map_or(url.trim(), |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Every PEM certificate of a file.
fn pems(path: &Path) -> Result<Vec<Pem>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for p in Pem::iter_from_buffer(&bytes) {
        let p = p.map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
        if p.label == "CERTIFICATE" {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(out)
}

/// What a re-issue command needs from the current certificate.
struct Parsed {
    cn: String,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    not_after: i64,
    not_before: i64,
    spki: Vec<u8>,
}

fn parse(pem: &Pem) -> Result<Parsed, String> {
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not a certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_string();
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        ips.push(IpAddr::from(a));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        ips.push(IpAddr::from(a));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(Parsed {
        cn,
        dns,
        ips,
        not_after: cert.validity().not_after.timestamp(),
        not_before: cert.validity().not_before.timestamp(),
        spki: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// Whether a SAN list covers a host (IP SAN for an address, DNS SAN with `*.` for a name).
pub fn covers(dns: &[String], ips: &[IpAddr], host: &str) -> bool {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ips.contains(&ip);
    }
    let host = host.to_ascii_lowercase();
    dns.iter().any(|d| {
        let d = d.to_ascii_lowercase();
        d == host
            || d.strip_prefix("*.")
                .is_some_and(|suffix| host.split_once('.').is_some_and(|(_, rest)| rest == suffix))
    })
}

/// The command that re-issues `f` for its own key, signed by the CA key beside its CA
/// file, keeping subject and SANs and adding `extra` hosts.
fn reissue(f: &CertFile, p: Option<&Parsed>, extra: &[String]) -> String {
    let ca_key = f.ca.with_extension("key");
    let cn = p.map_or(String::new(), |p| p.cn.clone());
    let mut sans: Vec<String> = Vec::new();
    if let Some(p) = p {
        sans.extend(p.dns.iter().map(|d| format!("DNS:{d}")));
        sans.extend(p.ips.iter().map(|i| format!("IP:{i}")));
    }
    for h in extra.iter().chain(&f.hosts) {
        let s = if h.parse::<IpAddr>().is_ok() {
            format!("IP:{h}")
        } else {
            format!("DNS:{h}")
        };
        if !sans.contains(&s) {
            sans.push(s);
        }
    }
    let san = if sans.is_empty() {
        String::new()
    } else {
        format!(" -addext 'subjectAltName={}'", sans.join(","))
    };
    format!(
        "openssl req -new -key {key} -subj '/CN={cn}'{san} -addext 'extendedKeyUsage={eku}' -addext 'keyUsage=critical,digitalSignature,keyEncipherment' | openssl x509 -req -CA {ca} -CAkey {cakey} -days 365 -copy_extensions copyall -out {cert}",
        key = sh(&f.key),
        cn = cn.replace('\'', ""),
        eku = f.eku,
        ca = sh(&f.ca),
        cakey = sh(&ca_key),
        cert = sh(&f.cert),
    )
}

fn kubeadm_hint(role: &str) -> String {
    match role {
        "server" => " (kubeadm: kubeadm certs renew etcd-server)".into(),
        "peer" => " (kubeadm: kubeadm certs renew etcd-peer)".into(),
        "healthcheck-client" => " (kubeadm: kubeadm certs renew etcd-healthcheck-client)".into(),
        _ => String::new(),
    }
}

fn now(ctx: &Ctx) -> i64 {
    ctx.now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub fn expiry(ctx: &Ctx) -> Verdict {
    let (leaves, cas) = match files(ctx) {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let now = now(ctx);
    let mut seen = Vec::new();
    let (mut fails, mut warns, mut fixes) = (Vec::new(), Vec::new(), Vec::new());
    let mut judge = |label: String, p: Result<&Parsed, String>, fix: String| {
        let p = match p {
            Ok(p) => p,
            Err(e) => {
                fails.push(format!("{label}: {e}"));
                fixes.push(fix);
                return;
            }
        };
        let days = (p.not_after - now).div_euclid(86_400);
        if p.not_after <= now {
            fails.push(format!("{label} expired {} days ago", -days));
            fixes.push(fix);
        } else if p.not_before > now {
            fails.push(format!("{label} is not valid before {}", p.not_before));
            fixes.push(fix);
        } else if days < WARN_DAYS {
            warns.push(format!("{label} expires in {days} days"));
            fixes.push(fix);
        } else {
            seen.push(format!("{label} {days} days left"));
        }
    };
    for f in &leaves {
        let label = format!("{} {}{}", f.role, f.cert.display(), kubeadm_hint(f.role));
        let parsed = pems(&f.cert).and_then(|p| parse(&p[0]));
        let fix = reissue(f, parsed.as_ref().ok(), &[]);
        judge(label, parsed.as_ref().map_err(Clone::clone), fix);
    }
    for ca in &cas {
        let fix = format!(
            "a new etcd CA at {} (kubeadm: kubeadm init phase certs etcd-ca), then re-issue every etcd certificate with it",
            ca.display()
        );
        match pems(ca) {
            Ok(list) => {
                for (i, pem) in list.iter().enumerate() {
                    let label = format!("CA {}#{i}", ca.display());
                    judge(
                        label,
                        parse(pem).as_ref().map_err(Clone::clone),
                        fix.clone(),
                    );
                }
            }
            Err(e) => judge(format!("CA {}", ca.display()), Err(e), fix),
        }
    }
    let verdict_text = |v: &[String]| v.join("; ");
    if !fails.is_empty() {
        fails.extend(warns);
        return Verdict::fail(verdict_text(&fails), fixes.join(" && "));
    }
    if !warns.is_empty() {
        return Verdict::warn(verdict_text(&warns), fixes.join(" && "));
    }
    Verdict::ok(verdict_text(&seen))
}

pub fn sans(ctx: &Ctx) -> Verdict {
    let (leaves, _) = match files(ctx) {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let (mut ok, mut bad, mut fixes) = (Vec::new(), Vec::new(), Vec::new());
    for f in leaves.iter().filter(|f| !f.hosts.is_empty()) {
        let p = match pems(&f.cert).and_then(|p| parse(&p[0])) {
            Ok(p) => p,
            Err(e) => {
                bad.push(format!("{} {}: {e}", f.role, f.cert.display()));
                continue;
            }
        };
        let missing: Vec<String> = f
            .hosts
            .iter()
            .filter(|h| !covers(&p.dns, &p.ips, h))
            .cloned()
            .collect();
        if missing.is_empty() {
            ok.push(format!(
                "{} {} covers {}",
                f.role,
                f.cert.display(),
                f.hosts.join(", ")
            ));
        } else {
            bad.push(format!(
                "{} {} lacks {} (its SANs: {}){}",
                f.role,
                f.cert.display(),
                missing.join(", "),
                p.dns
                    .iter()
                    .cloned()
                    .chain(p.ips.iter().map(|i| i.to_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
                kubeadm_hint(f.role)
            ));
            fixes.push(reissue(f, Some(&p), &missing));
        }
    }
    if bad.is_empty() {
        if ok.is_empty() {
            return Verdict::skipped("no advertise URL to cover");
        }
        return Verdict::ok(ok.join("; "));
    }
    Verdict::fail(
        format!(
            "clients and peers reject the TLS handshake: {}",
            bad.join("; ")
        ),
        fixes.join(" && "),
    )
}

/// The public key of a private key file as a certificate's subjectPublicKey holds it.
fn public_key(path: &Path) -> Result<Vec<u8>, String> {
    let key = PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let rng = SystemRandom::new();
    match &key {
        PrivateKeyDer::Pkcs8(k) => {
            let der = k.secret_pkcs8_der();
            for alg in [
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            ] {
                if let Ok(kp) = signature::EcdsaKeyPair::from_pkcs8(alg, der, &rng) {
                    return Ok(kp.public_key().as_ref().to_vec());
                }
            }
            if let Ok(kp) = signature::RsaKeyPair::from_pkcs8(der) {
                return Ok(kp.public_key().as_ref().to_vec());
            }
            if let Ok(kp) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                return Ok(kp.public_key().as_ref().to_vec());
            }
            Err(format!("{}: unsupported PKCS#8 key type", path.display()))
        }
        PrivateKeyDer::Pkcs1(k) => signature::RsaKeyPair::from_der(k.secret_pkcs1_der())
            .map(|kp| kp.public_key().as_ref().to_vec())
            .map_err(|e| format!("{}: bad RSA key: {e}", path.display())),
        PrivateKeyDer::Sec1(_) => Err(format!(
            "{}: a SEC1 EC key cannot be compared here (convert: openssl pkcs8 -topk8 -nocrypt)",
            path.display()
        )),
        _ => Err(format!("{}: unsupported key format", path.display())),
    }
}

pub fn keys(ctx: &Ctx) -> Verdict {
    let (leaves, _) = match files(ctx) {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let (mut ok, mut bad, mut unknown, mut fixes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for f in &leaves {
        let parsed = pems(&f.cert).and_then(|p| parse(&p[0]));
        let cert = match &parsed {
            Ok(p) => p,
            Err(e) => {
                unknown.push(format!("{}: {e}", f.role));
                continue;
            }
        };
        match public_key(&f.key) {
            Ok(pk) if pk == cert.spki => ok.push(format!(
                "{} {} matches {}",
                f.role,
                f.key.display(),
                f.cert.display()
            )),
            Ok(_) => {
                bad.push(format!(
                    "{} key {} does not match {}",
                    f.role,
                    f.key.display(),
                    f.cert.display()
                ));
                fixes.push(reissue(f, Some(cert), &[]));
            }
            Err(e) => unknown.push(format!("{}: {e}", f.role)),
        }
    }
    if !bad.is_empty() {
        bad.extend(unknown);
        return Verdict::fail(
            format!(
                "etcd cannot load the pair (tls: private key does not match public key): {}",
                bad.join("; ")
            ),
            fixes.join(" && "),
        );
    }
    if !unknown.is_empty() {
        let mut all = ok;
        all.extend(unknown.iter().cloned());
        return Verdict::warn(
            all.join("; "),
            "openssl pkey -in KEY -pubout | diff - <(openssl x509 -in CERT -pubkey -noout) for each pair named above",
        );
    }
    Verdict::ok(ok.join("; "))
}

pub fn chain(ctx: &Ctx) -> Verdict {
    let (leaves, _) = match files(ctx) {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let (mut ok, mut bad, mut fixes) = (Vec::new(), Vec::new(), Vec::new());
    for f in &leaves {
        let result = (|| -> Result<(), String> {
            let leaf_pems = pems(&f.cert)?;
            let leaf = leaf_pems[0]
                .parse_x509()
                .map_err(|e| format!("{}: {e}", f.cert.display()))?;
            let ca_pems = pems(&f.ca)?;
            for ca_pem in &ca_pems {
                let Ok(ca) = ca_pem.parse_x509() else {
                    continue;
                };
                if ca.subject().as_raw() == leaf.issuer().as_raw()
                    && leaf.verify_signature(Some(ca.public_key())).is_ok()
                {
                    return Ok(());
                }
            }
            Err(format!(
                "{} {} (issuer {}) is not signed by a CA in {}",
                f.role,
                f.cert.display(),
                leaf.issuer(),
                f.ca.display()
            ))
        })();
        match result {
            Ok(()) => ok.push(format!(
                "{} {} signed by {}",
                f.role,
                f.cert.display(),
                f.ca.display()
            )),
            Err(e) => {
                bad.push(e);
                let parsed = pems(&f.cert).ok().and_then(|p| parse(&p[0]).ok());
                fixes.push(reissue(f, parsed.as_ref(), &[]));
            }
        }
    }
    if bad.is_empty() {
        Verdict::ok(ok.join("; "))
    } else {
        Verdict::fail(
            format!(
                "peers and clients reject it (unknown authority): {}",
                bad.join("; ")
            ),
            fixes.join(" && "),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(
            url_host("https://10.0.0.1:2379").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(url_host("https://[::1]:2380").as_deref(), Some("::1"));
        assert_eq!(
            url_host("https://etcd-a.example:2379/").as_deref(),
            Some("etcd-a.example")
        );
        assert_eq!(url_host("http://node1").as_deref(), Some("node1"));
    }

    #[test]
    fn san_coverage() {
        let dns = vec!["node1".to_string(), "*.etcd.example".to_string()];
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        assert!(covers(&dns, &ips, "127.0.0.1"));
        assert!(!covers(&dns, &ips, "10.0.0.1"));
        assert!(covers(&dns, &ips, "NODE1"));
        assert!(covers(&dns, &ips, "a.etcd.example"));
        assert!(!covers(&dns, &ips, "a.b.etcd.example"));
    }
}
