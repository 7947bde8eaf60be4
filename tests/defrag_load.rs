//! A measurement, not a check that runs by default: while a rolling defrag runs, does a
//! client writing through all endpoints keep succeeding? Prints, for `etcdops defrag
//! --cluster` and for `etcdctl defrag --cluster` as a baseline, how many writes failed and
//! the worst latency. Run it with
//! `cargo test --release --test defrag_load -- --ignored --nocapture` (docs/maintenance.md
//! has the figures).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Cluster, Spec, Version, etcdops};

/// A write slower than this counts as failed: kube-apiserver's own etcd calls are tighter.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

struct Figures {
    writes: usize,
    failures: usize,
    worst: Duration,
    p99: Duration,
    errors: Vec<String>,
}

/// Write small keys through a client balanced over all endpoints until `stop`; `acked`
/// counts the writes etcd acknowledged, so the caller can wait for progress.
fn writer(
    cluster: &Cluster,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> thread::JoinHandle<Figures> {
    let endpoints = cluster.endpoints();
    let pki = cluster.pki.clone().expect("a TLS cluster");
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let read = |p: std::path::PathBuf| std::fs::read(p).unwrap();
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(WRITE_TIMEOUT)
                .with_tls(
                    etcd_client::TlsOptions::new()
                        .ca_certificate(etcd_client::Certificate::from_pem(read(pki.ca_cert())))
                        .identity(etcd_client::Identity::from_pem(
                            read(pki.client_cert()),
                            read(pki.client_key()),
                        )),
                );
            let mut client = etcd_client::Client::connect(endpoints, Some(opts))
                .await
                .unwrap();
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let start = Instant::now();
                let r = tokio::time::timeout(
                    WRITE_TIMEOUT,
                    client.put(format!("load/w{}", i % 1000), format!("{i}"), None),
                )
                .await;
                let took = start.elapsed();
                match r {
                    Ok(Ok(_)) => {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Err(e)) => errors.push(format!("after {took:?}: {e}")),
                    Err(_) => errors.push(format!("timed out after {took:?}")),
                }
                latencies.push(took);
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let writes = latencies.len();
            latencies.sort();
            Figures {
                writes,
                failures: errors.len(),
                worst: latencies.last().copied().unwrap_or_default(),
                p99: latencies
                    .get(writes.saturating_sub(1) * 99 / 100)
                    .copied()
                    .unwrap_or_default(),
                errors,
            }
        })
    })
}

/// Run `defrag` under write load and return the writer's figures and the defrag's time.
fn under_load(cluster: &Cluster, defrag: impl FnOnce()) -> (Figures, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let w = writer(cluster, stop.clone(), acked.clone());
    // Let the writer settle, so the figures are about the defrag, not the connection.
    common::wait_for(
        "the writer's first 50 acknowledged writes",
        Duration::from_secs(60),
        || acked.load(Ordering::SeqCst) >= 50,
    );
    let start = Instant::now();
    defrag();
    let took = start.elapsed();
    // And some writes after it, so the figures include the recovery.
    let after = acked.load(Ordering::SeqCst);
    common::wait_for(
        "20 acknowledged writes after the defrag",
        Duration::from_secs(60),
        || acked.load(Ordering::SeqCst) >= after + 20,
    );
    stop.store(true, Ordering::SeqCst);
    (w.join().unwrap(), took)
}

fn report(what: &str, f: &Figures, took: Duration) {
    println!(
        "{what}: defrag took {took:.1?}; {} writes, {} failed, worst latency {:.0?}, p99 {:.0?}",
        f.writes, f.failures, f.worst, f.p99
    );
    for e in f.errors.iter().take(5) {
        println!("  {e}");
    }
}

/// Fill every member's db with ~`mib` MiB live and as much garbage, then compact.
fn fill(cluster: &Cluster, mib: usize) {
    let n = mib * 8; // 128 KiB values
    cluster.put_many("fill/", n, 128 * 1024);
    cluster.put_many("fill/", n, 128 * 1024);
    let mut a = cluster.client_args();
    a.extend(common::args(["compact"]));
    etcdops(&a, &[], Some(cluster)).code(0);
}

/// After a defrag: the cluster is healthy and a write goes through.
fn recovered(cluster: &Cluster) {
    let mut a = cluster.client_args();
    a.extend(common::args(["health", "--cluster"]));
    etcdops(&a, &[], Some(cluster)).code(0);
    cluster.put("load/after", "ok");
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture and read the figures"]
fn writes_during_a_rolling_defrag() {
    let mib: usize = std::env::var("ETCDOPS_LOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let cluster = Cluster::start(Spec::new(Version::V36, 3).tls());
    println!("~{mib} MiB live per member, as much garbage; writer timeout {WRITE_TIMEOUT:?}");

    for extra in [&[][..], &["--move-leader"][..]] {
        fill(&cluster, mib);
        let mut doc = None;
        let (f, took) = under_load(&cluster, || {
            let mut a = cluster.client_args();
            a.extend(common::args(["defrag", "--cluster", "-o", "json"]));
            a.extend(common::args(extra));
            let run = etcdops(&a, &[], Some(&cluster));
            run.code(0);
            doc = Some(run.json());
        });
        report(
            &format!("etcdops defrag --cluster {}", extra.join(" ")),
            &f,
            took,
        );
        for m in doc.unwrap()["members"].as_array().unwrap() {
            println!(
                "  {} leader={} moved_to={} {} -> {} bytes, defragment {} ms",
                m["endpoint"],
                m["is_leader"],
                m["leadership_moved_to"],
                m["db_size_before"],
                m["db_size_after"],
                m["took_ms"]
            );
            assert!(m["db_size_after"].as_u64() < m["db_size_before"].as_u64());
        }
        assert!(f.writes > 0, "the writer made no write");
        recovered(&cluster);
    }

    // The baseline: etcdctl, member-list order, no leader handling, no waits.
    fill(&cluster, mib);
    let (g, took) = under_load(&cluster, || {
        let out = cluster.etcdctl(&["defrag", "--cluster", "--command-timeout=5m"]);
        assert!(out.status.success(), "{out:?}");
    });
    report("etcdctl defrag --cluster", &g, took);
    assert!(g.writes > 0, "the writer made no write");
    recovered(&cluster);
}
