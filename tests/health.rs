//! `etcdops health` against real etcd 3.5 and 3.6 clusters: TLS with client-cert auth, a
//! foreign CA, a killed member, nothing reachable, NOSPACE, and discovery from a
//! kubeadm-format manifest whose paths are container paths.

mod common;

use common::{Cluster, Spec, Version, args, etcdops};
use serde_json::Value;

const ENDPOINT_FIELDS: [&str; 16] = [
    "endpoint",
    "healthy",
    "took_ms",
    "error",
    "member_id",
    "name",
    "version",
    "is_leader",
    "is_learner",
    "db_size",
    "db_size_in_use",
    "revision",
    "raft_term",
    "raft_index",
    "raft_applied_index",
    "quota_usage",
];

fn health(cluster: &Cluster, extra: &[&str]) -> common::Run {
    let mut a = cluster.client_args();
    a.extend(args(extra));
    etcdops(&a, &[], Some(cluster))
}

fn is_hex_id(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        !s.is_empty()
            && !s.starts_with('0')
            && s.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    })
}

fn tls_cluster_scenarios(version: Version) {
    let mut cluster = Cluster::start(Spec::new(version, 3).tls());
    cluster.put_many("k", 20, 100);

    // Healthy, with every documented JSON field.
    let run = health(&cluster, &["health", "--cluster", "-o", "json"]);
    run.code(0);
    let doc = run.json();
    assert_eq!(doc["healthy"], true, "{}", run.dump());
    for key in ["healthy", "endpoints", "cluster", "alarms", "problems"] {
        assert!(doc.get(key).is_some(), "missing {key}\n{}", run.dump());
    }
    let eps = doc["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 3);
    for e in eps {
        for f in ENDPOINT_FIELDS {
            assert!(e.get(f).is_some(), "endpoint lacks {f}\n{}", run.dump());
        }
        assert_eq!(e["healthy"], true);
        assert!(is_hex_id(&e["member_id"]), "{}", e["member_id"]);
        assert!(e["version"].as_str().unwrap().starts_with(version.prefix()));
        assert!(e["name"].as_str().unwrap().starts_with('m'));
        assert!(e["db_size"].as_u64().unwrap() > 0);
        assert!(e["revision"].as_i64().unwrap() >= 21);
    }
    assert_eq!(eps.iter().filter(|e| e["is_leader"] == true).count(), 1);
    let c = &doc["cluster"];
    for key in [
        "cluster_id",
        "members",
        "leader",
        "leaders_agree",
        "raft_index_spread",
        "hash_revision",
        "hashes_agree",
    ] {
        assert!(c.get(key).is_some(), "cluster lacks {key}\n{}", run.dump());
    }
    assert!(is_hex_id(&c["cluster_id"]));
    assert!(is_hex_id(&c["leader"]));
    assert_eq!(c["members"], 3);
    assert_eq!(c["leaders_agree"], true);
    assert_eq!(c["hashes_agree"], true);

    // The table names every endpoint and the verdict.
    let run = health(&cluster, &["health", "--cluster"]);
    run.code(0);
    for ep in cluster.endpoints() {
        assert!(run.stdout.contains(&ep), "{}", run.dump());
    }
    assert!(run.stdout.contains("verdict: healthy"), "{}", run.dump());

    // A client certificate from another CA: the handshake fails everywhere -> exit 3.
    let other = tempfile::tempdir().unwrap();
    let foreign = etcdops::lab::pki::Authority::new("other-ca")
        .and_then(|ca| ca.write_node(other.path(), "x", &[]))
        .unwrap();
    let pki = cluster.pki.clone().unwrap();
    let a = args([
        format!("--endpoints={}", cluster.endpoints_csv()),
        format!("--cacert={}", pki.ca_cert().display()),
        format!("--cert={}", foreign.client_cert().display()),
        format!("--key={}", foreign.client_key().display()),
        "health".into(),
    ]);
    let run = etcdops(&a, &[], Some(&cluster));
    run.code(3).one_line_error("cannot reach etcd");

    // Trusting another CA for the server: also exit 3.
    let a = args([
        format!("--endpoints={}", cluster.endpoints_csv()),
        format!("--cacert={}", foreign.ca_cert().display()),
        format!("--cert={}", pki.client_cert().display()),
        format!("--key={}", pki.client_key().display()),
        "health".into(),
    ]);
    etcdops(&a, &[], Some(&cluster))
        .code(3)
        .one_line_error("cannot reach etcd");

    // One member of three killed -> exit 4, the dead endpoint named with its error.
    let dead = cluster.members[2].client_url.clone();
    cluster.kill(2);
    let run = health(&cluster, &["health", "--cluster", "-o", "json"]);
    run.code(4);
    let doc = run.json();
    assert_eq!(doc["healthy"], false);
    let ep = doc["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == dead.as_str())
        .unwrap_or_else(|| panic!("dead endpoint not reported\n{}", run.dump()));
    assert_eq!(ep["healthy"], false);
    assert!(ep["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(
        doc["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains(&dead)),
        "{}",
        run.dump()
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.dump());
    assert!(run.stderr.contains(&dead), "{}", run.dump());
}

#[test]
fn tls_cluster_3_5() {
    tls_cluster_scenarios(Version::V35);
}

#[test]
fn tls_cluster_3_6() {
    tls_cluster_scenarios(Version::V36);
}

fn nospace_scenario(version: Version) {
    let cluster = Cluster::start(Spec::new(version, 1).quota(4 * 1024 * 1024));
    let writes = cluster.raise_nospace();
    assert!(writes > 0);
    let run = health(&cluster, &["health", "-o", "json"]);
    run.code(4);
    let doc = run.json();
    let alarms = doc["alarms"].as_array().unwrap();
    assert!(
        alarms
            .iter()
            .any(|a| a["alarm"] == "NOSPACE" && is_hex_id(&a["member_id"])),
        "{}",
        run.dump()
    );
    let run = health(&cluster, &["health"]);
    run.code(4).one_line_error("NOSPACE");
    assert!(run.stdout.contains("alarm: NOSPACE"), "{}", run.dump());
}

#[test]
fn nospace_alarm_3_5() {
    nospace_scenario(Version::V35);
}

#[test]
fn nospace_alarm_3_6() {
    nospace_scenario(Version::V36);
}

#[test]
fn nothing_reachable_is_exit_3_with_one_line() {
    let port = common::free_port();
    let a = args([
        format!("--endpoints=http://127.0.0.1:{port}"),
        "--dial-timeout=500ms".into(),
        "health".into(),
    ]);
    let run = etcdops(&a, &[], None);
    run.code(3).one_line_error(&format!("127.0.0.1:{port}"));

    let mut a = a.clone();
    a.extend(args(["-o", "json"]));
    let run = etcdops(&a, &[], None);
    run.code(3);
    assert_eq!(run.json()["healthy"], false);
}

#[test]
fn bad_usage_is_exit_2() {
    for bad in [
        vec!["--endpoints=127.0.0.1:2379", "health"],
        vec![
            "--endpoints=http://127.0.0.1:1",
            "--dial-timeout=5",
            "health",
        ],
        vec![
            "--endpoints=http://127.0.0.1:1",
            "--cert=/nonexistent",
            "health",
        ],
        vec!["--manifest=/nonexistent/etcd.yaml", "health"],
        vec![
            "--endpoints=http://127.0.0.1:1",
            "health",
            "--quota-backend-bytes=0",
        ],
        vec!["health", "--no-such-flag"],
    ] {
        let run = etcdops(&args(&bad), &[], None);
        run.code(2);
        assert!(!run.stderr.trim().is_empty(), "{}", run.dump());
    }
    // The documented env var is honoured like the flag.
    let run = etcdops(
        &args(["health"]),
        &[("ETCDCTL_ENDPOINTS", "not-a-url")],
        None,
    );
    run.code(2).one_line_error("not-a-url");
}

/// A kubeadm-format manifest: cert paths are container paths (`/etc/kubernetes/pki/etcd`)
/// that a hostPath volume maps to the test's PKI dir; the data volume is listed after the
/// certs; `health` needs no flag but `--manifest`.
fn manifest_discovery(version: Version) {
    let cluster = Cluster::start(Spec::new(version, 1).tls());
    let url = &cluster.members[0].client_url;
    let dir = tempfile::tempdir().unwrap();
    let manifest = cluster.kubeadm_manifest(dir.path(), Some(8589934592));
    let run = etcdops(
        &args(["health", "-o", "json"]),
        &[("ETCDOPS_MANIFEST", manifest.to_str().unwrap())],
        Some(&cluster),
    );
    run.code(0);
    let doc = run.json();
    assert_eq!(
        doc["endpoints"][0]["endpoint"],
        url.as_str(),
        "{}",
        run.dump()
    );
    // The quota comes from the manifest's --quota-backend-bytes.
    assert_eq!(doc["quota_backend_bytes"], 8589934592u64);
    // Flags still win over the manifest.
    let run = etcdops(
        &args([
            format!("--manifest={}", manifest.display()),
            "health".into(),
            "--quota-backend-bytes=1073741824".into(),
            "-o".into(),
            "json".into(),
        ]),
        &[],
        Some(&cluster),
    );
    run.code(0);
    assert_eq!(run.json()["quota_backend_bytes"], 1073741824u64);
}

#[test]
fn manifest_discovery_3_5() {
    manifest_discovery(Version::V35);
}

#[test]
fn manifest_discovery_3_6() {
    manifest_discovery(Version::V36);
}

/// etcd 3.6+ from a kubeadm-format manifest: `/livez` and `/readyz` on the manifest's
/// metrics URL, the storage version, the quota the member reports (correct from 3.6.6),
/// the downgrade state. Then a real downgrade (`etcdctl downgrade enable 3.5`): health
/// shows it, and defrag, maintain and compact refuse (exit 4, one line) and change nothing
/// (old revisions still readable, db sizes equal).
fn health_36_fields_and_maintenance_refused_during_downgrade(version: Version) {
    let cluster = Cluster::start(Spec::new(version, 3).tls());
    cluster.put_many("k", 20, 100);
    let minor = version.prefix().trim_end_matches('.');
    cluster.wait_storage_version(&format!("{minor}.0"));
    let dir = tempfile::tempdir().unwrap();
    let manifest = cluster.kubeadm_manifest(dir.path(), None);
    let env = [("ETCDOPS_MANIFEST", manifest.to_str().unwrap())];
    let run = etcdops(&args(["health", "-o", "json"]), &env, Some(&cluster));
    run.code(0);
    let doc = run.json();
    let e = &doc["endpoints"][0];
    let metrics = &cluster.members[0].metrics_url;
    assert_eq!(e["livez"]["ok"], true, "{}", run.dump());
    assert_eq!(e["livez"]["url"], format!("{metrics}/livez"));
    assert_eq!(e["readyz"]["ok"], true, "{}", run.dump());
    assert_eq!(e["readyz"]["status"], 200);
    assert_eq!(e["storage_version"], format!("{minor}.0"), "{}", run.dump());
    // 3.6.17 >= 3.6.6: the reported quota is etcd's default 2 GiB.
    assert_eq!(e["db_size_quota"], 2147483648u64, "{}", run.dump());
    assert_eq!(e["downgrade"]["enabled"], false, "{}", run.dump());
    let table = etcdops(&args(["health"]), &env, Some(&cluster));
    table.code(0);
    assert!(
        table.stdout.contains("livez ok, readyz ok"),
        "{}",
        table.dump()
    );

    let out = cluster.etcdctl(&["downgrade", "enable", "3.5"]);
    assert!(out.status.success(), "downgrade enable: {out:?}");
    let run = etcdops(&args(["health", "-o", "json"]), &env, Some(&cluster));
    let doc = run.json();
    assert_eq!(
        doc["endpoints"][0]["downgrade"]["enabled"],
        true,
        "{}",
        run.dump()
    );
    assert_eq!(doc["endpoints"][0]["downgrade"]["target_version"], "3.5.0");
    assert!(
        doc["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("downgrade to 3.5.0 is in progress")),
        "{}",
        run.dump()
    );

    let sizes = || -> Vec<u64> {
        let run = etcdops(&args(["health", "--cluster", "-o", "json"]), &env, None);
        let mut v: Vec<u64> = run.json()["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["db_size"].as_u64().unwrap())
            .collect();
        v.sort();
        v
    };
    let before = sizes();
    for cmd in [
        &["defrag", "--cluster"][..],
        &["maintain", "--rule", "dbSize > 0"][..],
        &["compact"][..],
    ] {
        let run = etcdops(&args(cmd), &env, Some(&cluster));
        run.code(4)
            .one_line_error("downgrade to 3.5.0 is in progress");
        assert!(
            run.stderr.contains("etcdctl downgrade cancel"),
            "{}",
            run.dump()
        );
    }
    // Nothing was compacted: revision 2 is still readable; nothing was defragmented.
    let out = cluster.etcdctl(&["get", "k", "--prefix", "--rev=2", "--keys-only"]);
    assert!(out.status.success(), "get at revision 2: {out:?}");
    assert_eq!(sizes(), before);
}

#[test]
fn health_36_fields_and_maintenance_refused_during_downgrade_3_6() {
    health_36_fields_and_maintenance_refused_during_downgrade(Version::V36);
}
