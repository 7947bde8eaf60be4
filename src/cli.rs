//! What the operator typed: clap derive, one Args struct per command, validation of single
//! values only. No I/O and no logic here; `commands/` turns these into options.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// The exit-code table (DESIGN.md), for `--help` and the man page.
const EXIT_CODES: &str = "Exit codes: 0 success, healthy; 1 an operation ran and failed \
(rolled back); 2 invalid usage or input; 3 cannot reach etcd; 4 refused or unhealthy \
(nothing changed); 5 needs attention: a migration was interrupted or its rollback failed \
(`etcdops migrate status` says where it stands).";

#[derive(Debug, Parser)]
#[command(
    name = "etcdops",
    version,
    about = "Move a kubeadm etcd member's data dir safely, and keep etcd healthy.",
    after_long_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    /// node_exporter textfile format (`health` only).
    Prometheus,
}

/// Flags every command accepts.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Comma-separated client URLs (default: from the manifest).
    #[arg(long, global = true, env = "ETCDCTL_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<String>,

    /// CA bundle that signed etcd's server certificate.
    #[arg(long, global = true, env = "ETCDCTL_CACERT")]
    pub cacert: Option<PathBuf>,

    /// Client certificate.
    #[arg(long, global = true, env = "ETCDCTL_CERT")]
    pub cert: Option<PathBuf>,

    /// Client key.
    #[arg(long, global = true, env = "ETCDCTL_KEY")]
    pub key: Option<PathBuf>,

    /// The etcd static pod manifest [default: /etc/kubernetes/manifests/etcd.yaml].
    #[arg(long, global = true, env = "ETCDOPS_MANIFEST")]
    pub manifest: Option<PathBuf>,

    /// Time to establish a connection (e.g. 2s, 500ms).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "2s")]
    pub dial_timeout: Duration,

    /// Time for one request, defrag excepted (it has its own).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "5s")]
    pub command_timeout: Duration,

    #[command(flatten)]
    pub node: NodeArgs,
}

/// Flags for commands that act on this node (kubelet, state dir).
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Where journals, backups and snapshots live.
    #[arg(
        long,
        global = true,
        env = "ETCDOPS_STATE_DIR",
        default_value = "/var/lib/etcdops"
    )]
    pub state_dir: PathBuf,

    /// Shell command that stops kubelet.
    #[arg(
        long,
        global = true,
        env = "ETCDOPS_KUBELET_STOP_CMD",
        default_value = "systemctl stop kubelet"
    )]
    pub kubelet_stop_cmd: String,

    /// Shell command that starts kubelet.
    #[arg(
        long,
        global = true,
        env = "ETCDOPS_KUBELET_START_CMD",
        default_value = "systemctl start kubelet"
    )]
    pub kubelet_start_cmd: String,

    /// Shell command that exits 0 when kubelet runs.
    #[arg(
        long,
        global = true,
        env = "ETCDOPS_KUBELET_STATUS_CMD",
        default_value = "systemctl is-active kubelet"
    )]
    pub kubelet_status_cmd: String,

    /// How long to wait for etcd to stop once its manifest is moved out.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "120s")]
    pub stop_timeout: Duration,

    /// How long to wait for etcd to come back healthy.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "300s")]
    pub start_timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every endpoint and, with --cluster, the cluster as a whole.
    Health(HealthArgs),

    /// Read or change the etcd static pod manifest.
    Manifest(ManifestArgs),

    /// Print a shell completion script, e.g. `etcdops completions bash > /etc/bash_completion.d/etcdops`.
    Completions(CompletionsArgs),

    /// Print the man page (roff) on stdout, or write one page per command to --out-dir.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write etcdops.1 and etcdops-<command>.1 for every command into this directory.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Check every member from the member list, and the cluster's agreement.
    #[arg(long)]
    pub cluster: bool,

    #[command(flatten)]
    pub quota: QuotaArgs,
}

#[derive(Debug, Args)]
pub struct ManifestArgs {
    #[command(subcommand)]
    pub command: ManifestCommand,
}

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Show the data dir, its volume and host path, and the endpoints and TLS files.
    Show,

    /// Point the data volume's hostPath at NEW (mountPath and --data-dir stay).
    SetDataPath(SetDataPathArgs),
}

#[derive(Debug, Args)]
pub struct SetDataPathArgs {
    /// The new host directory of etcd's data (absolute).
    // OsString, not PathBuf's parser: that one rejects "" with a multi-line clap error
    // before the library can give its one-line reason.
    #[arg(value_name = "NEW", value_parser = OsStringValueParser::new().map(PathBuf::from))]
    pub new: PathBuf,

    #[command(flatten)]
    pub dry_run: DryRunArgs,
}

/// `--dry-run`, with one meaning everywhere: show what would change, change nothing.
#[derive(Debug, Clone, Copy, Args)]
pub struct DryRunArgs {
    /// Show what would change and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `--quota-backend-bytes`, shared by health, defrag and maintain.
#[derive(Debug, Clone, Args)]
pub struct QuotaArgs {
    /// Quota to judge db size against (default: the manifest's, else 2 GiB).
    #[arg(long)]
    pub quota_backend_bytes: Option<u64>,
}

/// Durations as etcdctl writes them: `2s`, `500ms`, `5m`, `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?}: {e} (write it as 2s, 500ms or 5m)"))?;
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be greater than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_etcdctl_writes_them() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
