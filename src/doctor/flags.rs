//! The etcd command line against itself and the live cluster: `--name`,
//! `--initial-advertise-peer-urls` and `--initial-cluster` agree with each other and with
//! the member list (etcd ignores `--initial-cluster` while the data dir holds a member, so a
//! stale one surfaces only when a restore or rejoin starts from this manifest); listen URLs
//! cover the advertise URLs.

use super::{Ctx, Verdict};
use crate::manifest::StaticPod;

fn flag(pod: &StaticPod, name: &str) -> Option<String> {
    pod.etcd_flag(name)
        .ok()
        .flatten()
        .filter(|v| !v.trim().is_empty())
}

fn list(v: Option<String>) -> Vec<String> {
    v.map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

/// `name=url,...` as pairs.
pub fn initial_cluster(v: &str) -> Vec<(String, String)> {
    v.split(',')
        .filter_map(|p| p.split_once('='))
        .map(|(n, u)| (n.trim().to_string(), u.trim().to_string()))
        .collect()
}

pub fn cluster(ctx: &Ctx) -> Verdict {
    let (pod, _) = match ctx.pod() {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let name = flag(pod, "name").unwrap_or_else(|| "default".into());
    let peers = list(flag(pod, "initial-advertise-peer-urls"));
    let ic_raw = flag(pod, "initial-cluster").unwrap_or_default();
    let ic = initial_cluster(&ic_raw);
    let mut fails = Vec::new();
    let mut warns = Vec::new();
    for url in &peers {
        if !ic.iter().any(|(n, u)| *n == name && u == url) {
            fails.push(format!(
                "--initial-cluster lacks {name}={url} (this member's --name and --initial-advertise-peer-urls)"
            ));
        }
    }
    let mut wanted = None;
    match ctx.etcd().map(|f| &f.members) {
        Ok(Ok(members)) => {
            if let Some(me) = members.iter().find(|m| m.name == name) {
                let mut have = me.peer_urls.clone();
                let mut want = peers.clone();
                have.sort();
                want.sort();
                if have != want {
                    fails.push(format!(
                        "member {name} advertises peer URLs {} in the member list, the manifest says {}",
                        have.join(","),
                        want.join(",")
                    ));
                }
            } else if !members.is_empty() {
                fails.push(format!("no member named {name} in the member list"));
            }
            for (n, u) in &ic {
                if !members
                    .iter()
                    .any(|m| m.name == *n && m.peer_urls.contains(u))
                {
                    warns.push(format!(
                        "--initial-cluster names {n}={u}, which is not a member"
                    ));
                }
            }
            for m in members.iter().filter(|m| !m.name.is_empty()) {
                for u in &m.peer_urls {
                    if !ic.iter().any(|(n, x)| *n == m.name && x == u) {
                        warns.push(format!(
                            "member {}={u} is missing from --initial-cluster",
                            m.name
                        ));
                    }
                }
            }
            let mut pairs: Vec<String> = members
                .iter()
                .filter(|m| !m.name.is_empty())
                .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={u}", m.name)))
                .collect();
            pairs.sort();
            wanted = Some(pairs.join(","));
        }
        Ok(Err(e)) => warns.push(format!("member list unavailable: {e}")),
        Err(e) => warns.push(format!("member list unavailable: {e}")),
    }
    let evidence = format!(
        "--name={name} --initial-advertise-peer-urls={} --initial-cluster={ic_raw}",
        peers.join(",")
    );
    let fix = match &wanted {
        Some(w) if *w != ic_raw => format!(
            "edit {}: replace `--initial-cluster={ic_raw}` with `--initial-cluster={w}`",
            ctx.opts.manifest.display()
        ),
        _ => format!(
            "edit {}: make --name, --initial-advertise-peer-urls and --initial-cluster agree with `etcdctl member list`",
            ctx.opts.manifest.display()
        ),
    };
    if !fails.is_empty() {
        fails.extend(warns);
        return Verdict::fail(format!("{evidence}: {}", fails.join("; ")), fix);
    }
    if !warns.is_empty() {
        return Verdict::warn(
            format!(
                "{evidence}: {}; etcd ignores it while the data dir holds a member, a restore or rejoin from this manifest would not",
                warns.join("; ")
            ),
            fix,
        );
    }
    Verdict::ok(format!(
        "{evidence}: consistent with each other and the member list"
    ))
}

/// Whether a listen URL accepts what an advertise URL promises (same scheme and port; same
/// host or a wildcard address).
fn listens(listen: &str, advertise: &str) -> bool {
    let split = |u: &str| -> Option<(String, String, String)> {
        let (scheme, rest) = u.split_once("://")?;
        let authority = rest.split('/').next()?;
        let (host, port) = authority.rsplit_once(':')?;
        Some((
            scheme.to_string(),
            host.trim_matches(['[', ']']).to_string(),
            port.to_string(),
        ))
    };
    match (split(listen), split(advertise)) {
        (Some((ls, lh, lp)), Some((as_, ah, ap))) => {
            ls == as_ && lp == ap && (lh == ah || lh == "0.0.0.0" || lh == "::")
        }
        _ => false,
    }
}

pub fn listen(ctx: &Ctx) -> Verdict {
    let (pod, _) = match ctx.pod() {
        Ok(x) => x,
        Err(e) => return Verdict::skipped(e),
    };
    let mut bad = Vec::new();
    let mut seen = Vec::new();
    let mut fixes = Vec::new();
    for (adv, lis) in [
        ("advertise-client-urls", "listen-client-urls"),
        ("initial-advertise-peer-urls", "listen-peer-urls"),
    ] {
        let advertised = list(flag(pod, adv));
        let listening = list(flag(pod, lis));
        let missing: Vec<&String> = advertised
            .iter()
            .filter(|a| !listening.iter().any(|l| listens(l, a)))
            .collect();
        if missing.is_empty() {
            seen.push(format!(
                "--{lis}={} covers --{adv}={}",
                listening.join(","),
                advertised.join(",")
            ));
        } else {
            bad.push(format!(
                "--{adv} has {} but --{lis}={} does not listen there",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                listening.join(",")
            ));
            let mut all = listening.clone();
            all.extend(missing.iter().map(|s| s.to_string()));
            fixes.push(format!(
                "edit {}: set `--{lis}={}`",
                ctx.opts.manifest.display(),
                all.join(",")
            ));
        }
    }
    if bad.is_empty() {
        Verdict::ok(seen.join("; "))
    } else {
        Verdict::fail(
            format!(
                "clients or peers are sent where etcd does not listen: {}",
                bad.join("; ")
            ),
            fixes.join("; "),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_covers_advertise() {
        assert!(listens("https://10.0.0.1:2379", "https://10.0.0.1:2379"));
        assert!(listens("https://0.0.0.0:2379", "https://10.0.0.1:2379"));
        assert!(!listens("https://127.0.0.1:2379", "https://10.0.0.1:2379"));
        assert!(!listens("http://10.0.0.1:2379", "https://10.0.0.1:2379"));
        assert!(!listens("https://10.0.0.1:2380", "https://10.0.0.1:2379"));
    }

    #[test]
    fn initial_cluster_pairs() {
        assert_eq!(
            initial_cluster("a=https://1:2380, b=https://2:2380"),
            vec![
                ("a".to_string(), "https://1:2380".to_string()),
                ("b".to_string(), "https://2:2380".to_string())
            ]
        );
    }
}
