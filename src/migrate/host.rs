//! What the migration steps may do to the host, as one small trait, so that tests can
//! inject a fault into any step while everything else stays real. `RealHost` is the only
//! production implementation: etcd through `crate::etcd`, files through `crate::datadir`
//! and `crate::manifest`, kubelet and the static pod through `crate::node`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::datadir::copy::{CopyOptions, CopyReport, copy};
use crate::datadir::digest::KnownSums;
use crate::datadir::verify::{VerifyOptions, VerifyReport, verify};
use crate::datadir::{Progress, quiesce};
use crate::error::{Error, Result};
use crate::etcd::client::Endpoint;
use crate::etcd::connect::Connection;
use crate::etcd::health::{self, HealthOptions, HealthReport};
use crate::etcd::snapshot;
use crate::manifest::rewrite::{SetDataPath, set_data_path};
use crate::node::{self, KubeletCommands};
use crate::output::hex_id;

use super::Identity;

pub trait Host {
    /// Health of the local member (`cluster` false) or of every member.
    fn health(&self, cluster: bool) -> Result<HealthReport>;
    /// Member id, cluster id, current revision R and HashKV at R of the local member.
    fn identity(&self) -> Result<Identity>;
    /// HashKV of the local member at `revision`; `None` when it has been compacted away.
    fn hash_at(&self, revision: i64) -> Result<Option<u32>>;
    fn snapshot(&self, dest: &Path) -> Result<()>;
    /// Move the manifest out and wait until etcd has let go of `data_dir` and its client port.
    fn stop_etcd(&self, manifest: &Path, moved_to: &Path, data_dir: &Path) -> Result<()>;
    fn stop_kubelet(&self) -> Result<()>;
    fn start_kubelet(&self) -> Result<()>;
    /// Copy the data dir, writing the source's sums (as read during the copy) to `sums_file`.
    fn copy(&self, src: &Path, dst: &Path, sums_file: &Path) -> Result<CopyReport>;
    /// Compare the trees; source files unchanged since `src_sums` was written are not read.
    fn verify(&self, src: &Path, dst: &Path, src_sums: Option<&Path>) -> Result<VerifyReport>;
    /// Rewrite the data hostPath of the moved-out manifest copy.
    fn rewrite(&self, manifest_copy: &Path, new: &Path, backup_dir: &Path) -> Result<()>;
    /// Put a manifest into the manifests dir atomically.
    fn put_manifest(&self, from: &Path, manifest: &Path) -> Result<()>;
    /// Wait until the local member answers a linearizable read.
    fn wait_healthy(&self) -> Result<()>;
    /// Remove a directory tree this run created.
    fn remove_tree(&self, path: &Path) -> Result<()>;
    /// Take (or, for the same run, take over) the cluster-wide guard before this member goes
    /// down; refused while another run holds it or another member is unhealthy (DESIGN.md,
    /// "Guards"). Held until `release_guard`. Fakes need no guard.
    fn hold_guard(&self, _run_id: &str) -> Result<()> {
        Ok(())
    }
    /// Release the guard once the member is healthy again.
    fn release_guard(&self) {}
    /// Prove that the member judged is the one the manifest runs (issue 11); what was proved.
    fn check_member(&self) -> Result<Option<String>> {
        Ok(None)
    }
    /// Who holds the cluster-wide guard now, described for an error message.
    fn guard_holder(&self) -> Result<Option<String>> {
        Ok(None)
    }
}

pub struct RealHost<'a> {
    pub conn: Connection,
    pub kubelet: KubeletCommands,
    pub manifests_dir: PathBuf,
    pub stop_timeout: Duration,
    pub start_timeout: Duration,
    pub quota: u64,
    pub progress: &'a dyn Progress,
    /// Set by SIGINT/SIGTERM: the copy stops (and removes its staging dir).
    pub cancel: Option<&'a AtomicBool>,
    /// The cluster-wide guard while this member is down (released when dropped).
    pub guard: std::cell::RefCell<Option<crate::etcd::guard::Guard>>,
}

impl RealHost<'_> {
    fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the async runtime starts")
            .block_on(fut)
    }

    fn local(&self) -> &str {
        self.conn.endpoints.first().map_or("", String::as_str)
    }

    fn endpoint_err(&self, op: &'static str, reason: String) -> Error {
        Error::Etcd {
            op,
            endpoint: self.local().to_string(),
            reason,
        }
    }
}

impl Host for RealHost<'_> {
    fn health(&self, cluster: bool) -> Result<HealthReport> {
        let opts = HealthOptions {
            cluster,
            quota: self.quota,
        };
        Ok(self.block_on(health::check(&self.conn, &opts)))
    }

    fn identity(&self) -> Result<Identity> {
        self.block_on(async {
            let mut ep = Endpoint::connect(&self.conn, self.local())
                .await
                .map_err(|e| self.endpoint_err("connect", e))?;
            let s = ep
                .status()
                .await
                .map_err(|e| self.endpoint_err("status", e))?;
            let h = ep
                .hash_kv(s.revision)
                .await
                .map_err(|e| self.endpoint_err("hashkv", e))?;
            Ok(Identity {
                member_id: hex_id(s.member_id),
                cluster_id: hex_id(s.cluster_id),
                revision: s.revision,
                hash: h.hash,
            })
        })
    }

    fn hash_at(&self, revision: i64) -> Result<Option<u32>> {
        self.block_on(async {
            let mut ep = Endpoint::connect(&self.conn, self.local())
                .await
                .map_err(|e| self.endpoint_err("connect", e))?;
            match ep.hash_kv(revision).await {
                Ok(h) => Ok(Some(h.hash)),
                Err(e) if e.contains("compacted") => Ok(None),
                Err(e) => Err(self.endpoint_err("hashkv", e)),
            }
        })
    }

    fn snapshot(&self, dest: &Path) -> Result<()> {
        // Streams from the first endpoint that answers: the local member, as discovered.
        let opts = snapshot::SaveOptions {
            idle_timeout: Duration::from_secs(60),
        };
        let mut progress = |_: u64, _: u64| {};
        self.block_on(snapshot::save(&self.conn, dest, &opts, &mut progress))
            .map(|_| ())
    }

    fn stop_etcd(&self, manifest: &Path, moved_to: &Path, data_dir: &Path) -> Result<()> {
        node::move_manifest_out(manifest, moved_to)?;
        let endpoint = self.local().to_string();
        node::wait_until(
            &format!(
                "etcd to stop (data dir {} quiesced, {endpoint} refusing)",
                data_dir.display()
            ),
            self.stop_timeout,
            Duration::from_millis(200),
            || Ok(quiesce::check(data_dir)?.quiesced && node::port_refuses(&endpoint)),
        )
    }

    fn stop_kubelet(&self) -> Result<()> {
        self.kubelet.stop()?;
        if self.kubelet.is_active()? {
            return Err(Error::failed(
                "stop kubelet",
                format!(
                    "`{}` succeeded but `{}` still says active",
                    self.kubelet.stop, self.kubelet.status
                ),
            ));
        }
        Ok(())
    }

    fn start_kubelet(&self) -> Result<()> {
        self.kubelet.start()
    }

    fn copy(&self, src: &Path, dst: &Path, sums_file: &Path) -> Result<CopyReport> {
        copy(&CopyOptions {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            progress: self.progress,
            cancel: self.cancel,
            sums_file: Some(sums_file.to_path_buf()),
        })
    }

    fn verify(&self, src: &Path, dst: &Path, src_sums: Option<&Path>) -> Result<VerifyReport> {
        let src_sums = match src_sums {
            Some(p) if p.is_file() => Some(KnownSums::load(p)?),
            _ => None,
        };
        verify(&VerifyOptions {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            src_sums,
        })
    }

    fn rewrite(&self, manifest_copy: &Path, new: &Path, backup_dir: &Path) -> Result<()> {
        set_data_path(&SetDataPath {
            manifest: manifest_copy,
            new,
            backup_dir,
            kubelet_dir: &self.manifests_dir,
            dry_run: false,
        })
        .map(|_| ())
    }

    fn put_manifest(&self, from: &Path, manifest: &Path) -> Result<()> {
        node::put_manifest(from, manifest)
    }

    fn wait_healthy(&self) -> Result<()> {
        let endpoint = self.local().to_string();
        node::wait_until(
            &format!("{endpoint} to answer a linearizable read"),
            self.start_timeout,
            Duration::from_millis(300),
            || {
                let r = self.health(false)?;
                Ok(r.endpoints.iter().all(|e| e.healthy))
            },
        )
    }

    fn hold_guard(&self, run_id: &str) -> Result<()> {
        if self.guard.borrow().is_some() {
            return Ok(());
        }
        let manifest = self.conn.manifest.as_deref().ok_or_else(|| {
            Error::Usage("the guard needs the member's name: no manifest was read".into())
        })?;
        let name = crate::manifest::StaticPod::load(manifest)?
            .etcd_flag("name")?
            .unwrap_or_default();
        let holder = crate::etcd::guard::Holder::here(&name, "", "migrate", run_id);
        *self.guard.borrow_mut() = Some(crate::etcd::guard::acquire(&self.conn, &holder)?);
        Ok(())
    }

    fn check_member(&self) -> Result<Option<String>> {
        let Some(manifest) = self.conn.manifest.as_deref() else {
            return Ok(None);
        };
        let pod = crate::manifest::StaticPod::load(manifest)?;
        self.block_on(crate::etcd::member::check_local(&self.conn, &pod))
            .map(Some)
    }

    fn guard_holder(&self) -> Result<Option<String>> {
        let h = self.block_on(crate::etcd::guard::holder(&self.conn))?;
        // This member's own guard (a killed run's, until its lease lapses) is no obstacle.
        let name = match self.conn.manifest.as_deref() {
            Some(m) => crate::manifest::StaticPod::load(m)?
                .etcd_flag("name")?
                .unwrap_or_default(),
            None => String::new(),
        };
        let me = crate::etcd::guard::Holder::here(&name, "", "migrate", "");
        Ok(h.filter(|h| !h.same_member(&me)).map(|h| h.describe()))
    }

    fn release_guard(&self) {
        if let Some(g) = self.guard.borrow_mut().take() {
            // If etcd cannot be told, the lease lapses within its TTL by itself.
            let _ = g.release();
        }
    }

    fn remove_tree(&self, path: &Path) -> Result<()> {
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }
}
