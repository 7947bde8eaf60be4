//! `etcdops completions SHELL`: the completion script clap_complete derives from the CLI
//! definition, so it never lags behind the flags.

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};
use crate::error::{Error, Result};

pub fn exec(args: CompletionsArgs) -> Result<()> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "etcdops", &mut script);
    write_stdout(&script, "the completion script")
}

/// Write generated text on stdout. Unlike reports, a failed write matters here: the output
/// is usually redirected into a file the operator will rely on. A closed pipe
/// (`etcdops completions bash | head -1`) ends the process quietly, as coreutils do.
pub(super) fn write_stdout(bytes: &[u8], what: &str) -> Result<()> {
    crate::output::write_stdout(bytes)
        .map_err(|e| Error::failed(format!("write {what} to stdout"), e.to_string()))
}
