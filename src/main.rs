//! `etcdops`: parse, run, map the error to an exit code. Nothing else prints errors.

use clap::Parser;

use etcdops::cli::{Cli, OutputFormat};
use etcdops::error::exit;
use etcdops::output;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; clap exits 2 for usage errors, as we do.
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let json = cli.global.output == OutputFormat::Json;
    let code = match etcdops::commands::run(cli) {
        Ok(()) => exit::OK,
        Err(err) => {
            let line = err.one_line();
            let code = err.exit_code();
            if json && !output::printed() {
                output::print_error_json(&line, code);
            }
            eprintln!("etcdops: {line}");
            code
        }
    };
    std::process::exit(code);
}
