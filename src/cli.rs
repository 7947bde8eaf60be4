//! What the operator typed: clap derive, one Args struct per command, validation of single
//! values only. No I/O and no logic here; `commands/` turns these into options.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "etcdops",
    version,
    about = "Move a kubeadm etcd member's data dir safely, and keep etcd healthy.",
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
    /// Compact the key-value history once for the cluster.
    Compact(CompactArgs),
    /// Rolling defrag: health gate, followers first, the leader last, healthy between members.
    Defrag(DefragArgs),
    /// The routine job for a timer: gate, compact, defrag by rule, clear NOSPACE, health.
    Maintain(MaintainArgs),
    /// List or disarm alarms.
    #[command(subcommand)]
    Alarm(AlarmCommand),
    /// Save or verify a snapshot.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
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
pub struct CompactArgs {
    /// Compact to this revision [default: the current revision].
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..), conflicts_with = "retain")]
    pub revision: Option<i64>,

    /// Keep the last N revisions (1 keeps only the current one).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub retain: Option<u64>,

    /// Return once the compaction is recorded, before the backend has dropped the old revisions.
    #[arg(long)]
    pub no_physical: bool,

    /// Time allowed for the compaction (a physical one on a large db takes a while).
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct DefragArgs {
    /// Every member from the member list, not only the given endpoints.
    #[arg(long)]
    pub cluster: bool,

    /// Compact once (physically, to the current revision) before the first defrag.
    #[arg(long)]
    pub compact: bool,

    #[command(flatten)]
    pub rolling: RollingArgs,

    #[command(flatten)]
    pub dry_run: DryRunArgs,

    #[command(flatten)]
    pub quota: QuotaArgs,
}

#[derive(Debug, Args)]
pub struct MaintainArgs {
    #[command(flatten)]
    pub rolling: RollingArgs,

    #[command(flatten)]
    pub dry_run: DryRunArgs,

    #[command(flatten)]
    pub quota: QuotaArgs,
}

/// How a rolling defrag goes, shared by defrag and maintain.
#[derive(Debug, Clone, Args)]
pub struct RollingArgs {
    /// Defragment a member only when this holds, e.g. 'dbSizeFree > 100*1024*1024 && dbQuotaUsage > 0.5'
    /// (variables dbSize, dbSizeInUse, dbSizeFree, dbQuota, dbQuotaUsage) [defrag default: every
    /// member; maintain default: 'dbSizeFree > 100*1024*1024 && dbSizeFree > 0.45*dbSize'].
    #[arg(long)]
    pub rule: Option<String>,

    /// Hand leadership to a defragmented follower before defragmenting the leader.
    #[arg(long)]
    pub move_leader: bool,

    /// Pause between two members (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    pub wait_between: Option<Duration>,

    /// Time allowed for one member's defragment (5s is too short for large dbs).
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub defrag_timeout: Duration,

    /// Time to wait for the member and the cluster to be healthy after each defragment.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub healthy_timeout: Duration,

    /// Go on with the next member after a failure (default: stop at the first).
    #[arg(long)]
    pub continue_on_error: bool,
}

#[derive(Debug, Subcommand)]
pub enum AlarmCommand {
    /// List the active alarms.
    List,
    /// Disarm every active alarm and report what was disarmed.
    Disarm,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Stream a snapshot from one endpoint to FILE (refuses to overwrite).
    Save(SnapshotSaveArgs),
    /// Check a snapshot file against etcd's sha256 trailer.
    Verify(SnapshotVerifyArgs),
}

#[derive(Debug, Args)]
pub struct SnapshotSaveArgs {
    /// Where to write the snapshot; it must not exist yet.
    pub file: PathBuf,

    /// Longest wait for the stream to start or for its next chunk.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub idle_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct SnapshotVerifyArgs {
    /// The snapshot file.
    pub file: PathBuf,
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
