//! `etcdops man [--out-dir DIR]`: man pages rendered by clap_mangen from the CLI definition.
//! Generated at run time rather than in build.rs: the page always matches the binary, and
//! packagers get it with `etcdops man --out-dir` from the binary they ship.

use std::path::Path;

use clap::CommandFactory;

use crate::cli::{Cli, ManArgs};
use crate::error::{Error, Result};

pub fn exec(args: ManArgs) -> Result<()> {
    match args.out_dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(|e| Error::failed("render the man page", e.to_string()))?;
            super::completions::write_stdout(&page, "the man page")
        }
        Some(dir) => {
            let written = write_pages(&dir)?;
            let list: String = written
                .iter()
                .map(|p| format!("{}\n", p.display()))
                .collect();
            super::completions::write_stdout(list.as_bytes(), "the list of man pages")
        }
    }
}

/// Write one page per command (etcdops.1, etcdops-health.1, etcdops-manifest-show.1, ...).
fn write_pages(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::input(dir, "not a directory (create it first)"));
    }
    // Built, so that subcommands carry their full names (etcdops-manifest-show); without
    // the implicit `help` subcommand, which has no page of its own.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    let mut stack = vec![cmd];
    while let Some(cmd) = stack.pop() {
        stack.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        let man = clap_mangen::Man::new(cmd);
        let path = dir.join(man.get_filename());
        man.generate_to(dir)
            .map_err(|e| Error::io("write", path.clone(), e))?;
        written.push(path);
    }
    written.sort();
    Ok(written)
}
