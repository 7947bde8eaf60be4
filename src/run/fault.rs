//! A `Host` that fails one effect on purpose: the real host underneath does everything,
//! and the named method fails on its nth call, before the real call (nothing happened) or
//! after it (the side effect happened, then the error). Tests use it to fail any effect of
//! any step, or of any undo; it is never used on a node.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use super::Identity;
use super::host::Host;
use crate::datadir::copy::CopyReport;
use crate::datadir::precopy::PrecopyReport;
use crate::datadir::verify::VerifyReport;
use crate::error::{Error, Result};
use crate::etcd::health::HealthReport;

pub struct FaultHost<'a> {
    pub inner: &'a dyn Host,
    /// The `Host` method to fail, by name (`"copy"`, `"put_manifest"`...).
    pub method: &'static str,
    /// Which call of it fails (1 = the first).
    pub nth: usize,
    /// Fail before the real call instead of after it.
    pub before: bool,
    calls: RefCell<HashMap<&'static str, usize>>,
}

impl<'a> FaultHost<'a> {
    pub fn new(inner: &'a dyn Host, method: &'static str, nth: usize, before: bool) -> Self {
        FaultHost {
            inner,
            method,
            nth,
            before,
            calls: RefCell::default(),
        }
    }

    /// How often `method` was called.
    pub fn calls(&self, method: &str) -> usize {
        self.calls.borrow().get(method).copied().unwrap_or(0)
    }

    fn hit(&self, method: &'static str) -> Result<()> {
        let mut calls = self.calls.borrow_mut();
        let n = calls.entry(method).or_default();
        *n += 1;
        if method == self.method && *n == self.nth {
            return Err(Error::failed(method, "injected fault"));
        }
        Ok(())
    }

    fn wrap<T>(&self, method: &'static str, call: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.before {
            self.hit(method)?;
            return call();
        }
        let r = call()?;
        self.hit(method).map(|_| r)
    }
}

impl Host for FaultHost<'_> {
    fn health(&self, cluster: bool) -> Result<HealthReport> {
        self.wrap("health", || self.inner.health(cluster))
    }
    fn identity(&self) -> Result<Identity> {
        self.wrap("identity", || self.inner.identity())
    }
    fn hash_at(&self, revision: i64) -> Result<crate::run::host::HashAt> {
        self.wrap("hash_at", || self.inner.hash_at(revision))
    }
    fn snapshot(&self, dest: &Path) -> Result<()> {
        self.wrap("snapshot", || self.inner.snapshot(dest))
    }
    fn stop_etcd(&self, manifest: &Path, moved_to: &Path, data_dir: &Path) -> Result<()> {
        self.wrap("stop_etcd", || {
            self.inner.stop_etcd(manifest, moved_to, data_dir)
        })
    }
    fn stop_kubelet(&self) -> Result<()> {
        self.wrap("stop_kubelet", || self.inner.stop_kubelet())
    }
    fn start_kubelet(&self) -> Result<()> {
        self.wrap("start_kubelet", || self.inner.start_kubelet())
    }
    fn kubelet_active(&self) -> Result<bool> {
        self.wrap("kubelet_active", || self.inner.kubelet_active())
    }
    fn put_manifest(&self, from: &Path, manifest: &Path) -> Result<()> {
        self.wrap("put_manifest", || self.inner.put_manifest(from, manifest))
    }
    fn wait_healthy(&self) -> Result<()> {
        self.wrap("wait_healthy", || self.inner.wait_healthy())
    }
    fn rewrite(&self, manifest_copy: &Path, new: &Path, backup_dir: &Path) -> Result<()> {
        self.wrap("rewrite", || {
            self.inner.rewrite(manifest_copy, new, backup_dir)
        })
    }
    fn copy(
        &self,
        src: &Path,
        dst: &Path,
        sums_file: &Path,
        use_precopy: bool,
    ) -> Result<CopyReport> {
        self.wrap("copy", || self.inner.copy(src, dst, sums_file, use_precopy))
    }
    fn precopy(&self, src: &Path, dst: &Path) -> Result<PrecopyReport> {
        self.wrap("precopy", || self.inner.precopy(src, dst))
    }
    fn verify(&self, src: &Path, dst: &Path, src_sums: Option<&Path>) -> Result<VerifyReport> {
        self.wrap("verify", || self.inner.verify(src, dst, src_sums))
    }
    fn quiesced(&self, data_dir: &Path) -> Result<bool> {
        self.wrap("quiesced", || self.inner.quiesced(data_dir))
    }
    fn tree_sums(&self, dir: &Path) -> Result<String> {
        self.wrap("tree_sums", || self.inner.tree_sums(dir))
    }
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        self.wrap("read_file", || self.inner.read_file(path))
    }
    fn write_file(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
        self.wrap("write_file", || self.inner.write_file(path, bytes, mode))
    }
    fn remove_file(&self, path: &Path) -> Result<()> {
        self.wrap("remove_file", || self.inner.remove_file(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.wrap("rename", || self.inner.rename(from, to))
    }
    fn is_dir(&self, path: &Path) -> Result<bool> {
        self.wrap("is_dir", || self.inner.is_dir(path))
    }
    fn is_mount_point(&self, path: &Path) -> Result<bool> {
        self.wrap("is_mount_point", || self.inner.is_mount_point(path))
    }
    fn has_entries(&self, dir: &Path) -> Result<bool> {
        self.wrap("has_entries", || self.inner.has_entries(dir))
    }
    fn empty_dir(&self, dir: &Path) -> Result<()> {
        self.wrap("empty_dir", || self.inner.empty_dir(dir))
    }
    fn remove_tree(&self, path: &Path) -> Result<()> {
        self.wrap("remove_tree", || self.inner.remove_tree(path))
    }
    fn hold_guard(&self, kind: &str, run_id: &str, reach: &[String]) -> Result<()> {
        self.wrap("hold_guard", || self.inner.hold_guard(kind, run_id, reach))
    }
    fn release_guard(&self) {
        self.inner.release_guard()
    }
    fn check_member(&self) -> Result<Option<String>> {
        self.wrap("check_member", || self.inner.check_member())
    }
    fn guard_holder(&self) -> Result<Option<String>> {
        self.wrap("guard_holder", || self.inner.guard_holder())
    }
    fn extract_snapshot(&self, archive: &Path, identity: Option<&Path>, dest: &Path) -> Result<()> {
        self.wrap("extract_snapshot", || {
            self.inner.extract_snapshot(archive, identity, dest)
        })
    }
    fn restore_snapshot(
        &self,
        tool: &crate::backup::tool::RestoreTool,
        plan: &crate::restore::plan::RestorePlan,
        snapshot: &Path,
        dest: &Path,
    ) -> Result<()> {
        self.wrap("restore_snapshot", || {
            self.inner.restore_snapshot(tool, plan, snapshot, dest)
        })
    }
    fn peer_cluster_id(
        &self,
        peer_url: &str,
        tls: Option<&crate::restore::plan::PeerTls>,
    ) -> Result<Option<String>> {
        self.wrap("peer_cluster_id", || {
            self.inner.peer_cluster_id(peer_url, tls)
        })
    }
    fn wait_until(
        &self,
        what: &str,
        timeout: std::time::Duration,
        check: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        self.wrap("wait_until", || self.inner.wait_until(what, timeout, check))
    }
    fn local_status(&self) -> Result<super::host::MemberStatus> {
        self.wrap("local_status", || self.inner.local_status())
    }
    fn client_port_listening(&self) -> Result<bool> {
        self.wrap("client_port_listening", || {
            self.inner.client_port_listening()
        })
    }
    fn wait_listening(&self) -> Result<()> {
        self.wrap("wait_listening", || self.inner.wait_listening())
    }
    fn wait_quorum(&self, what: &str, timeout: std::time::Duration) -> Result<()> {
        self.wrap("wait_quorum", || self.inner.wait_quorum(what, timeout))
    }
    fn members(&self) -> Result<Vec<crate::etcd::client::Member>> {
        self.wrap("members", || self.inner.members())
    }
    fn member_remove(&self, id: u64) -> Result<bool> {
        self.wrap("member_remove", || self.inner.member_remove(id))
    }
    fn member_add_learner(&self, peer_url: &str) -> Result<u64> {
        self.wrap("member_add_learner", || {
            self.inner.member_add_learner(peer_url)
        })
    }
    fn wait_caught_up(&self, entries: u64, timeout: std::time::Duration) -> Result<(u64, u64)> {
        self.wrap("wait_caught_up", || {
            self.inner.wait_caught_up(entries, timeout)
        })
    }
    fn promote(&self, id: u64, timeout: std::time::Duration) -> Result<u32> {
        self.wrap("promote", || self.inner.promote(id, timeout))
    }
    fn create_dir(&self, path: &Path, like: Option<&Path>) -> Result<()> {
        self.wrap("create_dir", || self.inner.create_dir(path, like))
    }
}
