//! `etcdops`: parse, run, map the error to an exit code. Nothing else prints errors.

use etcdops::cli::{Cli, OutputFormat};
use etcdops::error::exit;
use etcdops::output;

fn main() {
    let cli: Cli = etcdops::cli::parse_or_exit();
    let json = cli.global.output == OutputFormat::Json;
    let code = match etcdops::commands::run(cli) {
        Ok(()) => exit::OK,
        Err(err) => {
            let line = err.one_line();
            let code = err.exit_code();
            if json && !output::printed() {
                output::print_error_json(&line, code);
            }
            output::print_error_line(&line);
            code
        }
    };
    std::process::exit(code);
}
