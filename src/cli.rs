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

/// `etcdops --version`: what an operator needs in a bug report — the build's git commit
/// (build.rs; "unknown" from a tarball without .git) and the etcd releases CI tests against
/// (scripts/etcd-versions.sh; scripts/install-deps.sh builds exactly these).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ETCDOPS_GIT_COMMIT"),
    "; tested against etcd 3.5.36, 3.6.17 and 3.7.4; 3.4 and 3.5 before 3.5.26 are not supported)"
);

#[derive(Debug, Parser)]
#[command(
    name = "etcdops",
    version = VERSION,
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
    /// node_exporter textfile format (`health` and `doctor`).
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

    /// Move the data dir to a new disk, resumable and rolled back on failure.
    Migrate(MigrateArgs),

    /// Control kubelet through the configured commands.
    Kubelet(KubeletArgs),
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
    /// Check, copy, verify and checksum an etcd data dir (etcd must be stopped to copy).
    Datadir(DatadirArgs),
    /// Archive this node for disaster recovery (snapshot, pki, manifests, kubeconfigs);
    /// `backup verify` and `backup list` check and show archives.
    Backup(BackupArgs),
    /// Restore this node from a backup archive or snapshot: `plan` shows what a restore
    /// runs, `apply` runs it (`status`, `resume`, `rollback` as for migrate).
    #[command(subcommand)]
    Restore(RestoreCommand),
    /// This node's etcd member: `member rejoin` replaces the broken member of a healthy
    /// cluster with a new one (old data kept aside; `status`, `resume`, `rollback` as for
    /// migrate).
    #[command(subcommand)]
    Member(MemberCommand),
    /// Print a shell completion script, e.g. `etcdops completions bash > /etc/bash_completion.d/etcdops`.
    Completions(CompletionsArgs),

    /// Print the man page (roff) on stdout, or write one page per command to --out-dir.
    Man(ManArgs),

    /// Find what is wrong with this node's etcd (manifest, hostPaths, ownership, space,
    /// certificates, flags, kubelet, runs, disk) and say how to fix it. Changes nothing.
    /// Exit 0 when no check fails, 4 otherwise.
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Run only these checks (ids or groups such as `certs`; repeat or separate with commas).
    #[arg(long = "check", value_name = "ID", value_delimiter = ',')]
    pub check: Vec<String>,

    /// Leave these checks out (ids or groups).
    #[arg(long = "skip", value_name = "ID", value_delimiter = ',')]
    pub skip: Vec<String>,

    /// Measure the disk's fdatasync latency (writes 22 MiB beside the data dir, removed after).
    #[arg(long, overrides_with = "no_disk_probe")]
    pub disk_probe: bool,

    /// Do not measure the disk (the default: the probe adds load on a busy node).
    #[arg(long, overrides_with = "disk_probe")]
    pub no_disk_probe: bool,

    #[command(flatten)]
    pub quota: QuotaArgs,
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

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Compact to this revision [default: the current revision].
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..), conflicts_with = "retain",
          allow_negative_numbers = true)]
    pub revision: Option<i64>,

    /// Keep the last N revisions (1 keeps only the current one).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), allow_negative_numbers = true)]
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

/// `--dry-run`, with one meaning everywhere: show what would change, change nothing.
#[derive(Debug, Clone, Copy, Args)]
pub struct DryRunArgs {
    /// Show what would change and change nothing.
    #[arg(long)]
    pub dry_run: bool,
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
    /// Check snapshot files against etcd's sha256 trailer; exit 1 if any is corrupt.
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
    /// The snapshot files (one or more, e.g. a shell glob); each is verified.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DatadirArgs {
    #[command(subcommand)]
    pub command: DatadirCommand,
}

#[derive(Debug, Subcommand)]
pub enum DatadirCommand {
    /// Validate the layout (member/snap/db, member/wal/*.wal), report sizes, and tell whether
    /// etcd still runs on it. Exit 0 quiesced, 4 in use, 2 not a data dir.
    Check(DatadirCheckArgs),

    /// Copy a stopped data dir to DST (new or empty), keeping owner, mode and mtime; durable,
    /// atomic, and nothing left behind on failure.
    Copy(DatadirCopyArgs),

    /// Copy a data dir while etcd still runs into DST's staging dir, recording a blake3 per
    /// 1 MiB block, so that a later `copy --update` writes only what changed meanwhile.
    Precopy(DatadirPrecopyArgs),

    /// Compare two trees (type, size, mode, owner, mtime, blake3 content) and list every
    /// difference. Exit 0 identical, 1 different.
    Verify(DatadirVerifyArgs),

    /// Print b3sum-compatible lines `<blake3>  <path>`, sorted: `cd DIR && b3sum --check`
    /// accepts them.
    Sums(DatadirSumsArgs),
}

#[derive(Debug, Args)]
pub struct DatadirCheckArgs {
    /// The data dir (etcd's --data-dir on the host).
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct DatadirCopyArgs {
    /// The data dir to copy; etcd must be stopped.
    pub src: PathBuf,
    /// Where the copy goes: must not exist or be an empty directory, outside SRC.
    pub dst: PathBuf,

    /// Also write SRC's sums (b3sum lines, as read during the copy) to this new file, for
    /// `datadir verify --sums`.
    #[arg(long, value_name = "FILE")]
    pub sums: Option<PathBuf>,

    /// Use the pre-copy in DST's staging dir (`datadir precopy`): write only the blocks
    /// and files that changed since; without a usable one, copy everything.
    #[arg(long)]
    pub update: bool,
}

#[derive(Debug, Args)]
pub struct DatadirPrecopyArgs {
    /// The data dir to copy; etcd may still run on it.
    pub src: PathBuf,
    /// The final target of the later `datadir copy --update` (new or empty, outside SRC).
    pub dst: PathBuf,
}

#[derive(Debug, Args)]
pub struct DatadirVerifyArgs {
    /// The original tree.
    pub src: PathBuf,
    /// The copy.
    pub dst: PathBuf,

    /// SRC's sums written by `datadir copy --sums`: SRC files unchanged since (by ctime)
    /// are not read again.
    #[arg(long, value_name = "FILE")]
    pub sums: Option<PathBuf>,

    /// Read DST through the page cache instead of dropping its pages first so that the
    /// bytes come from the disk (faster; proves only what is in memory).
    #[arg(long)]
    pub verify_from_cache: bool,
}

#[derive(Debug, Args)]
pub struct DatadirSumsArgs {
    /// The tree to checksum.
    pub dir: PathBuf,
}

/// `--quota-backend-bytes`, shared by health, defrag and maintain.
#[derive(Debug, Clone, Args)]
pub struct QuotaArgs {
    /// Quota to judge db size against (default: the manifest's, else 2 GiB).
    #[arg(long)]
    pub quota_backend_bytes: Option<u64>,
}

/// Parse the command line of either binary: `--help` and `--version` print and exit 0; a
/// usage error keeps the error contract (DESIGN.md): one line on stderr naming the flag,
/// exit 2, and with `-o json` the JSON error document on stdout.
pub fn parse_or_exit<T: Parser>() -> T {
    T::try_parse().unwrap_or_else(|e| {
        if !e.use_stderr() {
            let _ = e.print();
            std::process::exit(crate::error::exit::OK)
        }
        let line = usage_line(&e);
        if wants_json(std::env::args_os().skip(1)) {
            crate::output::print_error_json(&line, crate::error::exit::USAGE);
        }
        eprintln!("{}: {line}", T::command().get_name());
        std::process::exit(crate::error::exit::USAGE)
    })
}

/// clap's message as one line: its first paragraph (which names the flag and the value, or
/// lists the missing arguments) without the `error: ` prefix, the tips and the usage block.
pub fn usage_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first: Vec<&str> = text
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("tip:"))
        .collect();
    let first = first.join(" ");
    let first = first.strip_prefix("error: ").unwrap_or(&first);
    if first.is_empty() {
        return "invalid usage (see --help)".into();
    }
    format!("{first} (see --help)")
}

/// Whether the raw arguments ask for `-o json`, read without clap because clap has just
/// refused them: `-o json`, `-ojson`, `-o=json`, `--output json`, `--output=json`.
pub fn wants_json(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let args: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
    let mut json = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            break;
        }
        let value = match a {
            "-o" | "--output" => {
                i += 1;
                args.get(i).map(String::as_str)
            }
            _ => a
                .strip_prefix("--output=")
                .or_else(|| a.strip_prefix("-o="))
                .or_else(|| a.strip_prefix("-o")),
        };
        if let Some(v) = value {
            json = v == "json";
        }
        i += 1;
    }
    json
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
    fn json_is_found_in_every_spelling() {
        let has = |a: &[&str]| wants_json(a.iter().map(std::ffi::OsString::from));
        assert!(has(&["-o", "json", "health"]));
        assert!(has(&["-ojson", "health"]));
        assert!(has(&["-o=json", "health"]));
        assert!(has(&["health", "--output=json"]));
        assert!(has(&["--output", "json", "compact"]));
        assert!(!has(&["-o", "table", "health"]));
        assert!(!has(&["-o", "json", "-o", "table"]));
        assert!(!has(&["health", "--", "-o", "json"]));
        assert!(!has(&["health"]));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub command: MigrateCommand,
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Every preflight check and the step list; changes nothing.
    Plan(MigrateToArgs),
    /// Run the migration (asks on a terminal; needs --yes otherwise).
    Apply(MigrateApplyArgs),
    /// Where the latest (or --id) run stands; exit 5 when it needs attention.
    Status(RunIdArgs),
    /// Finish an interrupted run.
    Resume(RunIdArgs),
    /// Return to the original data dir and manifest.
    Rollback(RunIdArgs),
    /// After your verification window: fence the old path (and remove the old data).
    Finalize(FinalizeArgs),
}

#[derive(Debug, Args)]
pub struct MigrateToArgs {
    /// The new data dir on the new disk (absent or empty; its parent must exist).
    #[arg(long)]
    pub to: PathBuf,

    /// Accept a target on tmpfs, ramfs or overlay (empty after a reboot: for labs only).
    #[arg(long)]
    pub allow_volatile_target: bool,

    /// Accept a target on the data dir's own filesystem (refused by default: the usual
    /// cause is a new disk that is not mounted).
    #[arg(long)]
    pub same_filesystem: bool,

    #[command(flatten)]
    pub quota: QuotaArgs,
}

#[derive(Debug, Args)]
pub struct MigrateApplyArgs {
    #[command(flatten)]
    pub target: MigrateToArgs,

    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,

    /// Skip the safety snapshot before etcd is stopped.
    #[arg(long)]
    pub no_snapshot: bool,

    /// Copy the data dir while etcd still runs, so that only what changed is copied while
    /// it is stopped (the final tree is verified against the stopped source as always).
    #[arg(long)]
    pub precopy: bool,
}

#[derive(Debug, Args)]
pub struct RunIdArgs {
    /// The run (a directory name under <state-dir>/runs); default the latest.
    #[arg(long)]
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct FinalizeArgs {
    #[command(flatten)]
    pub run: RunIdArgs,

    /// Delete the old data dir (default: move it aside next to the fence).
    #[arg(long)]
    pub remove_old: bool,

    /// Do not ask for confirmation (needed off a terminal with --remove-old).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct KubeletArgs {
    #[command(subcommand)]
    pub action: KubeletAction,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum KubeletAction {
    Stop,
    Start,
    /// Exit 0 when kubelet is active, 4 when not.
    Status,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: Option<BackupCommand>,

    #[command(flatten)]
    pub create: BackupCreateArgs,
}

#[derive(Debug, Args)]
pub struct BackupCreateArgs {
    /// Where archives go [default: <state-dir>/backups].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Keep this node's N newest archives (the new one included) once the new one verified.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: Option<u64>,

    /// Longest wait for the snapshot stream to start or for its next chunk.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub idle_timeout: Duration,

    /// zstd compression level (1 fastest .. 19 smallest).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,

    /// Encrypt the archive (age format, `….tar.zst.age`) to this public key: an age
    /// recipient (age1…) or an SSH public key (`ssh-ed25519 …`, `ssh-rsa …`). Repeatable;
    /// any one of the matching private keys opens it. The node needs no private key.
    #[arg(long, value_name = "RECIPIENT")]
    pub recipient: Vec<String>,

    /// Encrypt to every recipient in FILE (one per line, `#` comments, as `age -R` reads).
    /// Repeatable, and combines with --recipient.
    #[arg(long, value_name = "FILE")]
    pub recipients_file: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Check every sum, the snapshot's sha256 trailer and contents.json; with
    /// --restore-test, restore the snapshot into a throwaway etcd and compare its data.
    /// Exit 0 good, 1 any mismatch.
    Verify(BackupVerifyArgs),
    /// Archives in the backup dir: time, revision, size, verified or not.
    List(BackupListArgs),
}

#[derive(Debug, Args)]
pub struct BackupVerifyArgs {
    /// The archive (etcd-backup-<node>-<time>.tar.zst, or .tar.zst.age when encrypted).
    pub file: PathBuf,

    /// Also restore the snapshot with etcd's own tool and run it on a free loopback port.
    #[arg(long)]
    pub restore_test: bool,

    /// etcd's restore tool: etcdutl (3.5+) or etcdctl (3.4) [default: PATH, then next to the
    /// manifest's etcd].
    #[arg(long, value_name = "PATH")]
    pub etcdutl: Option<PathBuf>,

    /// The etcd binary for the trial restore [default: next to the restore tool, then PATH].
    #[arg(long, value_name = "PATH")]
    pub etcd: Option<PathBuf>,

    /// Longest wait for the throwaway etcd to answer.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub restore_timeout: Duration,

    /// The private key that opens an encrypted archive (`.tar.zst.age`): an age identity
    /// file (age-keygen) or an unencrypted OpenSSH private key. Read only for encrypted
    /// archives.
    #[arg(long, value_name = "FILE", env = "ETCDOPS_IDENTITY")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BackupListArgs {
    /// The backup dir [default: <state-dir>/backups].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RestoreCommand {
    /// Check the archive or snapshot and this node's manifest; print this member's name and
    /// peer URL, --initial-cluster, the cluster token and the restore tool's command line.
    /// Changes nothing.
    Plan(RestorePlanArgs),
    /// Restore this node as a journaled run: stop etcd and kubelet, restore into a new dir
    /// beside the data dir, keep the old data aside, swap, start, wait for quorum (run it on
    /// every control-plane node with the same file).
    Apply(RestoreApplyArgs),
    /// Show a restore run (default the latest run of any kind).
    Status(RunIdArgs),
    /// Finish an interrupted or failed restore run (waits for quorum again).
    Resume(RunIdArgs),
    /// Return this node to its old data and manifest, while the restored member has not been
    /// part of a quorum.
    Rollback(RunIdArgs),
}

#[derive(Debug, Args)]
pub struct RestoreApplyArgs {
    #[command(flatten)]
    pub plan: RestorePlanArgs,

    /// This restore attempt's cluster token, as `restore plan` printed it: the same on every
    /// node of the attempt, never reused. Required when the archive has several members;
    /// a single-member restore makes a fresh one without it.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,

    /// The longest to wait for the restored cluster's quorum (the other nodes' restores);
    /// after it the run ends failed (exit 5) and `restore resume` waits again.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub quorum_timeout: Duration,

    /// The longest to wait, before the restored member starts, for every old peer to be
    /// fenced (silent, or answering as this restore's cluster); after it the run fails and
    /// rolls back (exit 1).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub fence_timeout: Duration,

    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct RestorePlanArgs {
    /// An etcdops backup archive (.tar.zst, or .tar.zst.age with --identity) or a snapshot
    /// file from `snapshot save`.
    #[arg(long, value_name = "ARCHIVE|SNAPSHOT")]
    pub from: PathBuf,

    /// etcd's restore tool: etcdutl (3.5+) or etcdctl (3.4) [default: PATH, then next to the
    /// manifest's etcd].
    #[arg(long, value_name = "PATH")]
    pub etcdutl: Option<PathBuf>,

    /// Raise the restored revision by N (etcdutl >= 3.5.10), so that clients that saw
    /// revisions after the backup re-list; needs --mark-compacted. Refused (exit 2) when
    /// the restore tool does not list it in its --help.
    #[arg(long, value_name = "N")]
    pub bump_revision: Option<u64>,

    /// Mark the bumped revision compacted (etcdutl >= 3.5.10); needs --bump-revision.
    #[arg(long)]
    pub mark_compacted: bool,

    /// The private key that opens an encrypted archive (`.tar.zst.age`): an age identity
    /// file (age-keygen) or an unencrypted OpenSSH private key. Read only for encrypted
    /// archives.
    #[arg(long, value_name = "FILE", env = "ETCDOPS_IDENTITY")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Bring this node's broken member back while the others keep quorum: stop etcd, keep the
    /// old data aside, remove the member and add it back as a learner with the same peer URL,
    /// set --initial-cluster and --initial-cluster-state=existing, start, wait until caught
    /// up, promote, prove HashKV agreement. Without --yes: the checks and the plan only.
    Rejoin(RejoinArgs),
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RejoinArgs {
    #[command(subcommand)]
    pub command: Option<RejoinCommand>,

    /// Run it (without: check and print the plan, change nothing).
    #[arg(long)]
    pub yes: bool,

    /// The longest to wait for the new learner to catch up, and again for etcd to promote it.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub catch_up_timeout: Duration,

    #[command(flatten)]
    pub cluster: ClusterEndpointsArgs,
}

/// How a rejoin reaches the other members.
#[derive(Debug, Clone, Args)]
pub struct ClusterEndpointsArgs {
    /// Client URLs of the other (healthy) members [default: each --initial-cluster peer's
    /// host with this member's client port].
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub cluster_endpoints: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum RejoinCommand {
    /// Show a rejoin run (default the latest run of any kind).
    Status(RunIdArgs),
    /// Finish an interrupted or failed rejoin run.
    Resume(RejoinRunArgs),
    /// Return this node to its old data and manifest, while the old member has not been
    /// removed from the cluster.
    Rollback(RejoinRunArgs),
}

#[derive(Debug, Args)]
pub struct RejoinRunArgs {
    #[command(flatten)]
    pub run: RunIdArgs,

    #[command(flatten)]
    pub cluster: ClusterEndpointsArgs,
}
