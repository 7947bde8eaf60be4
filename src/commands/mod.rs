//! One file per command: each turns its clap Args into library options, calls the library
//! and hands the report to `output`. clap types stop here.

pub mod alarm;
pub mod backup;
pub mod compact;
pub mod completions;
pub mod datadir;
pub mod defrag;
pub mod doctor;
pub mod health;
pub mod kubelet;
pub mod maintain;
pub mod man;
pub mod manifest;
pub mod member;
pub mod migrate;
pub mod node_host;
pub mod restore;
pub mod snapshot;

use crate::cli::{Cli, Command, GlobalArgs, OutputFormat};
use crate::error::{Error, Result};
use crate::etcd::connect::Given;
use crate::output::Format;

/// Run the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let global = &cli.global;
    if global.output == OutputFormat::Prometheus && !exports_metrics(&cli.command) {
        return Err(Error::Usage(
            "-o prometheus is only for `etcdops health` and `etcdops doctor`; use -o table or -o json".into(),
        ));
    }
    match cli.command {
        Command::Health(args) => health::exec(global, args),
        Command::Migrate(args) => migrate::exec(global, args),
        Command::Kubelet(args) => kubelet::exec(global, args),
        Command::Manifest(args) => manifest::exec(global, args),
        Command::Compact(args) => compact::exec(global, args),
        Command::Defrag(args) => defrag::exec(global, args),
        Command::Maintain(args) => maintain::exec(global, args),
        Command::Alarm(cmd) => alarm::exec(global, cmd),
        Command::Snapshot(cmd) => snapshot::exec(global, cmd),
        Command::Datadir(args) => datadir::exec(global, args),
        Command::Backup(args) => backup::exec(global, args),
        Command::Restore(cmd) => restore::exec(global, cmd),
        Command::Member(cmd) => member::exec(global, cmd),
        Command::Completions(args) => completions::exec(args),
        Command::Man(args) => man::exec(args),
        Command::Doctor(args) => doctor::exec(global, args),
    }
}

/// Commands whose report can be printed as Prometheus metrics.
fn exports_metrics(command: &Command) -> bool {
    matches!(command, Command::Health(_) | Command::Doctor(_))
}

/// The output format the operator chose.
pub fn format(global: &GlobalArgs) -> Format {
    match global.output {
        OutputFormat::Table => Format::Table,
        OutputFormat::Json => Format::Json,
        OutputFormat::Prometheus => Format::Prometheus,
    }
}

/// What flags and env said about the connection, for discovery to complete.
pub fn given(global: &GlobalArgs) -> Given {
    Given {
        endpoints: global.endpoints.clone(),
        cacert: global.cacert.clone(),
        cert: global.cert.clone(),
        key: global.key.clone(),
        manifest: global.manifest.clone(),
        dial_timeout: global.dial_timeout,
        command_timeout: global.command_timeout,
    }
}

pub use crate::node::block_on;

/// Where a node-changing command says what it is doing: stderr, in table mode only, so that
/// JSON on stdout stays one document and a script's stderr stays quiet.
pub fn say(format: crate::output::Format) -> impl Fn(&str) {
    move |line: &str| {
        if format == crate::output::Format::Table {
            eprintln!("{line}");
        }
    }
}

/// kubelet control commands from the node flags.
pub fn kubelet_commands(global: &GlobalArgs) -> crate::node::KubeletCommands {
    crate::node::KubeletCommands::new(
        &global.node.kubelet_stop_cmd,
        &global.node.kubelet_start_cmd,
        &global.node.kubelet_status_cmd,
        Some(&global.node.state_dir),
    )
}
