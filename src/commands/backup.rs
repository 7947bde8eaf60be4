//! `etcdops backup [--dir D] [--keep N]`, `backup verify FILE [--restore-test]`,
//! `backup list`. Args -> options (sources from the manifest, dir from the state dir, restore
//! tool from flags/PATH/manifest) -> `crate::backup` -> printer. Ctrl-C and SIGTERM drop
//! the running future, whose guards remove the `.part`, the work dir and every process.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use crate::backup::archive::{self, BackupOptions, BackupReport};
use crate::backup::crypt::Recipients;
use crate::backup::prune::{self, ListReport};
use crate::backup::tool;
use crate::backup::verify::{self, RestoreTestOptions, VerifyReport};
use crate::backup::{Sources, default_dir};
use crate::cli::{BackupArgs, BackupCommand, GlobalArgs};
use crate::error::{Error, Result};
use crate::output::{self, Render, Table, bytes, millis};

pub fn exec(global: &GlobalArgs, args: BackupArgs) -> Result<()> {
    let format = super::format(global);
    let dir_or_default =
        |d: Option<PathBuf>| d.unwrap_or_else(|| default_dir(&global.node.state_dir));
    match args.command {
        None => {
            let c = args.create;
            let given = super::given(global);
            let sources = Sources::from_manifest(&given.manifest_path())?;
            let conn = given.resolve()?;
            let recipients = Recipients::parse(&c.recipient, &c.recipients_file)?;
            let opts = BackupOptions {
                sources,
                dir: dir_or_default(c.dir),
                keep: c.keep.map(|k| k as usize),
                idle_timeout: c.idle_timeout,
                level: c.level,
                recipients: recipients.map(Arc::new),
            };
            let report = interruptible("backup", archive::create(&conn, &opts))?;
            output::print(format, &report);
            if report.ok {
                Ok(())
            } else {
                Err(Error::failed(
                    format!("backup {}", report.archive.display()),
                    format!(
                        "the archive does not verify: {}; older archives were kept",
                        report.problems.join("; ")
                    ),
                ))
            }
        }
        Some(BackupCommand::Verify(v)) => {
            let identity = verify::identity_for(&v.file, v.identity.as_deref())?;
            verify::check_input(&v.file, identity.as_ref())?;
            let restore = if v.restore_test {
                let path = std::env::var_os("PATH");
                let manifest = super::given(global).manifest_path();
                let beside = tool::manifest_etcd_dir(&manifest);
                let t = tool::find_restore_tool(
                    v.etcdutl.as_deref(),
                    path.as_deref(),
                    beside.as_deref(),
                )?;
                let etcd = tool::find_etcd(v.etcd.as_deref(), &t, path.as_deref())?;
                Some(RestoreTestOptions {
                    binaries: tool::EtcdBinaries { tool: t, etcd },
                    start_timeout: v.restore_timeout,
                })
            } else {
                None
            };
            let report = interruptible(
                "backup verify",
                verify::verify(&v.file, identity.map(Arc::new), restore.as_ref()),
            )?;
            output::print(format, &report);
            if report.ok {
                Ok(())
            } else {
                Err(Error::failed(
                    format!("backup verify {}", v.file.display()),
                    report.problems.join("; "),
                ))
            }
        }
        Some(BackupCommand::List(l)) => {
            let report = prune::list(&dir_or_default(l.dir))?;
            output::print(format, &report);
            Ok(())
        }
    }
}

/// Run `fut` to completion unless Ctrl-C or SIGTERM comes first; dropping it cleans up.
fn interruptible<T>(what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    super::block_on(async {
        let interrupted = |sig: &str| {
            Error::failed(
                what,
                format!("interrupted by {sig}; everything it had started was removed"),
            )
        };
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| Error::failed("install a SIGTERM handler", e.to_string()))?;
        tokio::select! {
            r = fut => r,
            _ = tokio::signal::ctrl_c() => Err(interrupted("Ctrl-C")),
            _ = term.recv() => Err(interrupted("SIGTERM")),
        }
    })
}

impl Render for BackupReport {
    fn table(&self) -> String {
        let mut out = format!(
            "{} {} ({}, snapshot {}) in {}, read back in {}\nnode {} member {} ({}) of cluster {}, etcd {}\nrevision {}, {} keys, HashKV {:x}\nid {}, {} entries\n",
            if self.verified {
                "wrote and verified"
            } else {
                "wrote but FAILED to verify"
            },
            self.archive.display(),
            bytes(self.size),
            bytes(self.snapshot_size),
            millis(self.took_ms),
            millis(self.verify_ms),
            self.node,
            self.member_id,
            self.endpoint,
            self.cluster_id,
            self.etcd_version,
            self.revision,
            self.key_count,
            self.hash_kv,
            self.id,
            self.entries,
        );
        for p in &self.problems {
            out.push_str(&format!("problem: {p}\n"));
        }
        if self.encrypted {
            out.push_str(&format!(
                "encrypted (age) to {}\n",
                self.recipients.join(", ")
            ));
        }
        for p in &self.pruned {
            out.push_str(&format!("pruned {}\n", p.display()));
        }
        out
    }
}

impl Render for VerifyReport {
    fn table(&self) -> String {
        let mut out = format!(
            "{} ({}): {}\n",
            self.archive.display(),
            bytes(self.size),
            if self.ok { "ok" } else { "FAILED" }
        );
        if let (Some(node), Some(created), Some(rev)) = (&self.node, &self.created, self.revision) {
            out.push_str(&format!(
                "node {node}, made {created}, revision {rev}, {} keys, HashKV {:x}, {} entries\n",
                self.key_count.unwrap_or_default(),
                self.hash_kv.unwrap_or_default(),
                self.entries
            ));
        }
        if let Some(r) = &self.restore_test {
            out.push_str(&format!(
                "restore test with {} and {} (etcd {}): {} keys, HashKV {} at revision {} in {}: {}\n",
                r.tool.display(),
                r.etcd.display(),
                r.etcd_version.as_deref().unwrap_or("?"),
                r.key_count.map_or("?".into(), |k| k.to_string()),
                r.hash_kv.map_or("?".into(), |h| format!("{h:x}")),
                r.revision,
                millis(r.took_ms),
                if r.ok { "ok" } else { "FAILED" }
            ));
        }
        for p in &self.problems {
            out.push_str(&format!("problem: {p}\n"));
        }
        out
    }
}

impl Render for ListReport {
    fn table(&self) -> String {
        if self.archives.is_empty() {
            return format!("no archives in {}\n", self.dir.display());
        }
        let mut t = Table::new([
            "ARCHIVE",
            "NODE",
            "CREATED",
            "REVISION",
            "SIZE",
            "VERIFIED",
            "ENCRYPTED",
        ]);
        for a in &self.archives {
            t.row([
                a.archive
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                a.node.clone().unwrap_or_else(|| "?".into()),
                a.created.clone().unwrap_or_else(|| "?".into()),
                a.revision.map_or("?".into(), |r| r.to_string()),
                bytes(a.size),
                match a.verified {
                    Some(true) => "yes".into(),
                    Some(false) => "FAILED".into(),
                    None => "no".into(),
                },
                if a.encrypted { "yes" } else { "no" }.into(),
            ]);
        }
        t.render()
    }
}
