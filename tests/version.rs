//! `etcdops --version`: the git commit of the build and the etcd releases CI tests against;
//! "unknown" for a build from a tarball without .git (build.rs, included here so that the
//! fallback is tested on a real tree without .git rather than assumed).

#[allow(dead_code)]
#[path = "../build.rs"]
mod build;
mod common;

use std::path::Path;
use std::process::Command;

fn head_commit(dir: &Path) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn version_names_the_commit_and_the_tested_etcd_releases() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Built from this tree: its HEAD, or "unknown" when the tree has no .git (a tarball).
    let expected = head_commit(repo).unwrap_or_else(|| "unknown".into());
    for flag in ["--version", "-V"] {
        let out = Command::new(env!("CARGO_BIN_EXE_etcdops"))
            .arg(flag)
            .output()
            .expect("run etcdops");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text,
            format!(
                "etcdops {} (commit {expected}; tested against etcd 3.5.36, 3.6.17 and 3.7.4; 3.4 and 3.5 before 3.5.26 are not supported)\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
}

/// The releases `--version` claims are the ones scripts/etcd-versions.sh names (install-deps
/// builds those), the harness's `Version` runs, and each built binary says it is.
#[test]
fn tested_releases_match_install_deps() {
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/etcd-versions.sh"),
    )
    .unwrap();
    let matrix = script
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_MATRIX=("))
        .and_then(|l| l.strip_suffix(')'))
        .expect("ETCD_MATRIX=(...) in scripts/etcd-versions.sh");
    let releases: Vec<&str> = matrix.split_whitespace().collect();
    let harness: Vec<&str> = common::VERSIONS.iter().map(|v| v.release()).collect();
    assert_eq!(
        releases, harness,
        "scripts/etcd-versions.sh vs tests/common Version"
    );
    let claimed = format!(
        "tested against etcd {}, {} and {};",
        releases[0], releases[1], releases[2]
    );
    assert!(
        etcdops::cli::VERSION.contains(&claimed),
        "{}",
        etcdops::cli::VERSION
    );
    for v in common::VERSIONS {
        let out = Command::new(v.etcd())
            .arg("--version")
            .output()
            .expect("run the built etcd (scripts/install-deps.sh builds it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("etcd Version: {}\n", v.release())),
            "{} is not {}: {text}",
            v.etcd().display(),
            v.release()
        );
    }
}

#[test]
fn build_from_a_tree_without_git_says_unknown() {
    let tarball = tempfile::tempdir().unwrap();
    std::fs::write(tarball.path().join("Cargo.toml"), "[package]\n").unwrap();
    let (commit, watch) = build::commit(tarball.path());
    assert_eq!(commit, "unknown");
    assert!(watch.is_empty(), "{watch:?}");

    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(head) = head_commit(repo) {
        let (commit, watch) = build::commit(repo);
        assert_eq!(commit, head);
        assert!(
            watch.iter().any(|p| p.ends_with("HEAD") && p.exists()),
            "HEAD not watched: {watch:?}"
        );
    }
}
