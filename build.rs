//! Build script: bakes the git commit into `etcdops --version`.
//!
//! Order: `ETCDOPS_GIT_COMMIT` from the environment (a packager building from a tarball
//! who knows the commit), else `git rev-parse` in the source tree, else "unknown" (a
//! tarball without .git, or no git installed): the build never fails for want of git.
//! tests/version.rs loads this file as a module to test `commit` on a tree without .git.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The commit of the source tree at `dir` ("unknown" outside git), and the files whose
/// change means HEAD moved: HEAD itself (in a worktree, the worktree's own), the branch it
/// points to, and packed-refs, where git may keep that branch.
pub fn commit(dir: &Path) -> (String, Vec<PathBuf>) {
    let Some(commit) = git(dir, &["rev-parse", "--short=12", "HEAD"]) else {
        return ("unknown".to_string(), Vec::new());
    };
    let mut watch = Vec::new();
    let branch = git(dir, &["symbolic-ref", "-q", "HEAD"]);
    for file in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(p) = git(dir, &["rev-parse", "--git-path", file]) {
            watch.push(dir.join(p));
        }
    }
    (commit, watch)
}

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-env-changed=ETCDOPS_GIT_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let from_env = std::env::var("ETCDOPS_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = match from_env {
        Some(c) => c,
        None => {
            let (commit, watch) = commit(&dir);
            for p in watch {
                println!("cargo:rerun-if-changed={}", p.display());
            }
            commit
        }
    };
    println!("cargo:rustc-env=ETCDOPS_GIT_COMMIT={commit}");
}
