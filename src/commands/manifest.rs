//! `etcdops manifest show` and `etcdops manifest set-data-path NEW [--dry-run]`.

use std::path::PathBuf;

use crate::cli::{GlobalArgs, ManifestArgs, ManifestCommand};
use crate::error::Result;
use crate::manifest::DEFAULT_MANIFEST;
use crate::manifest::rewrite::{self, SetDataPath, SetDataPathReport};
use crate::manifest::show::{self, ShowReport};
use crate::output::{self, Render, Table};

pub fn exec(global: &GlobalArgs, args: ManifestArgs) -> Result<()> {
    let manifest = global
        .manifest
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MANIFEST));
    let format = super::format(global);
    match args.command {
        ManifestCommand::Show => {
            let report = show::show(&manifest)?;
            output::print(format, &report);
        }
        ManifestCommand::SetDataPath(a) => {
            let backup_dir = global.node.state_dir.join("backups");
            let kubelet_dir = match manifest.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let mut report = rewrite::set_data_path(&SetDataPath {
                manifest: &manifest,
                new: &a.new,
                backup_dir: &backup_dir,
                kubelet_dir: &kubelet_dir,
                dry_run: a.dry_run.dry_run,
            })?;
            // Here, not in the library: the migration rewrites a moved-out copy whose dir is
            // not a manifests dir.
            report.warnings.extend(show::stray_files(&manifest));
            output::print(format, &report);
        }
    }
    Ok(())
}

fn warning_lines(out: &mut String, warnings: &[String]) {
    for w in warnings {
        out.push_str("warning: ");
        out.push_str(w);
        out.push('\n');
    }
}

impl Render for ShowReport {
    fn table(&self) -> String {
        let opt = |p: &Option<PathBuf>| p.as_ref().map_or("-".into(), |p| p.display().to_string());
        let mut t = Table::new(["FIELD", "VALUE"]);
        t.row(["manifest".into(), self.manifest.display().to_string()]);
        t.row(["pod", &self.pod]);
        t.row(["data dir", &self.data_dir]);
        t.row(["data volume", &self.data_volume]);
        t.row(["host path", &self.host_path]);
        t.row([
            "host path type",
            self.host_path_type.as_deref().unwrap_or("-"),
        ]);
        t.row(["mount path", &self.mount_path]);
        if self.data_host_path.as_os_str() != self.host_path.as_str() {
            t.row([
                "data host path".into(),
                self.data_host_path.display().to_string(),
            ]);
        }
        t.row(["endpoints".into(), self.endpoints.join(",")]);
        t.row(["cacert".into(), opt(&self.cacert)]);
        t.row(["cert".into(), opt(&self.cert)]);
        t.row(["key".into(), opt(&self.key)]);
        let mut out = t.render();
        warning_lines(&mut out, &self.warnings);
        out
    }
}

impl Render for SetDataPathReport {
    fn table(&self) -> String {
        let mut out = String::new();
        if self.dry_run {
            match self.diff.as_deref() {
                Some(diff) if !diff.is_empty() => out.push_str(diff),
                _ => out.push_str(&format!(
                    "{}: volume {:?} already has hostPath {}; nothing to change\n",
                    self.manifest.display(),
                    self.volume,
                    self.new_host_path
                )),
            }
        } else if !self.changed {
            out.push_str(&format!(
                "{}: volume {:?} already has hostPath {}; nothing changed\n",
                self.manifest.display(),
                self.volume,
                self.new_host_path
            ));
        } else {
            let mut t = Table::new(["FIELD", "VALUE"]);
            t.row(["manifest".into(), self.manifest.display().to_string()]);
            t.row(["volume", &self.volume]);
            t.row(["old host path", &self.old_host_path]);
            t.row(["new host path", &self.new_host_path]);
            t.row([
                "backup".into(),
                self.backup
                    .as_ref()
                    .map_or("-".into(), |b| b.display().to_string()),
            ]);
            out.push_str(&t.render());
        }
        warning_lines(&mut out, &self.warnings);
        if self.changed || (self.dry_run && self.old_host_path != self.new_host_path) {
            out.push_str(&format!(
                "note: `kubeadm upgrade` regenerates this manifest from the kubeadm-config ConfigMap; set etcd.local.dataDir to {} there too\n",
                self.new_host_path
            ));
        }
        out
    }
}
