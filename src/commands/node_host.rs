//! The one builder of the `RealHost` that node-changing commands (migrate, restore, member
//! rejoin) drive their runs through: connection discovery from the manifest in force (the
//! run's moved-out copy while a run has the manifest out), judged against this node's own
//! member whatever `ETCDCTL_*` names (issue 11), kubelet commands and the node's timeouts;
//! and what those commands share before a run: the root check and the status printer.

use std::path::{Path, PathBuf};

use crate::cli::GlobalArgs;
use crate::datadir::Progress;
use crate::error::Result;
use crate::run::Cancel;
use crate::run::host::RealHost;

/// What differs between the commands that build a host.
pub struct HostParts<'a> {
    /// The manifest in the manifests dir (where kubelet reads it).
    pub manifest: &'a Path,
    /// The manifest to discover the connection from (the run's copy while it is out).
    pub discovery: PathBuf,
    pub say: &'a dyn Fn(&str),
    pub progress: &'a dyn Progress,
    pub cancel: Option<&'a Cancel>,
    /// The quota to judge db size against (0: not judged).
    pub quota: u64,
}

/// The node host for `parts`.
pub fn real_host<'a>(global: &GlobalArgs, parts: HostParts<'a>) -> Result<RealHost<'a>> {
    let discovery = parts.discovery;
    let mut given = super::given(global);
    // issue 11: judge the member this node's manifest runs, whatever ETCDCTL_* names.
    if let Ok(pod) = crate::manifest::StaticPod::load(&discovery) {
        given.endpoints = crate::etcd::member::local_endpoints(&given.endpoints, &pod, &discovery)?;
    }
    given.manifest = Some(discovery.clone());
    let mut conn = given.resolve()?;
    // The member's name (guard, member check) comes from the manifest even when flags gave
    // every connection detail.
    conn.manifest.get_or_insert(discovery);
    Ok(RealHost {
        conn,
        kubelet: super::kubelet_commands(global),
        manifest: parts.manifest.to_path_buf(),
        say: parts.say,
        manifests_dir: parts
            .manifest
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        stop_timeout: global.node.stop_timeout,
        start_timeout: global.node.start_timeout,
        quota: parts.quota,
        progress: parts.progress,
        cancel: parts.cancel,
        guard: Default::default(),
    })
}

/// A node-changing command (migrate, restore, member rejoin) runs as root: it stops kubelet
/// and writes the manifest and data dirs. Refused before anything is read or locked.
pub fn require_root(what: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    Err(crate::error::Error::refused(
        what,
        "must run as root (it stops kubelet and writes the manifest and data dirs)",
    ))
}

/// `<command> status [--id]`: the report of the newest (or the named) run of any kind in the
/// state dir, printed; the exit code follows its verdict.
pub fn print_status(
    state_dir: &Path,
    id: Option<&str>,
    format: crate::output::Format,
) -> Result<()> {
    let report = crate::runs::status(state_dir, id)?;
    crate::output::print(format, &report);
    report.verdict()
}
