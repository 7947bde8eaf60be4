//! What packagers and shells need from the binary: `--version`, completion scripts that a
//! real bash sources and completes with, and man pages that `man` renders.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{args, etcdops};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Source `script` in bash, complete the words (the last one being completed), and return
/// what bash would offer.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let snippet = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={cword}; \
         _etcdops etcdops '{}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words[cword],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &snippet])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn version_prints() {
    // The version, the commit and the tested etcd releases (tests/version.rs checks those).
    let expected = format!("etcdops {} (commit ", env!("CARGO_PKG_VERSION"));
    let run = etcdops(&args(["--version"]), &[], None);
    run.code(0);
    assert!(run.stdout.starts_with(&expected), "{}", run.dump());
    // propagate_version: every command answers it too.
    let run = etcdops(&args(["health", "--version"]), &[], None);
    run.code(0);
    assert!(run.stdout.starts_with("etcdops-health "), "{}", run.dump());
}

#[test]
fn bash_completion_completes_commands_and_values() {
    let run = etcdops(&args(["completions", "bash"]), &[], None);
    run.code(0);
    assert!(run.stdout.contains("health"), "{}", run.dump());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("etcdops.bash");
    std::fs::write(&script, &run.stdout).unwrap();

    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );

    let offered = bash_complete(&script, &["etcdops", "he"]);
    assert!(offered.iter().any(|w| w == "health"), "{offered:?}");
    assert!(!offered.iter().any(|w| w == "manifest"), "{offered:?}");
    let offered = bash_complete(&script, &["etcdops", "manifest", "s"]);
    assert!(offered.iter().any(|w| w == "set-data-path"), "{offered:?}");
    assert!(offered.iter().any(|w| w == "show"), "{offered:?}");
    let offered = bash_complete(&script, &["etcdops", "-o", ""]);
    for v in ["table", "json", "prometheus"] {
        assert!(offered.iter().any(|w| w == v), "{v} not in {offered:?}");
    }
}

#[test]
fn zsh_and_fish_scripts_name_every_command() {
    // fish spells a long flag `-l endpoints`.
    for (shell, checker, flag) in [
        ("zsh", "zsh", "--endpoints"),
        ("fish", "fish", "-l endpoints"),
    ] {
        let run = etcdops(&args(["completions", shell]), &[], None);
        run.code(0);
        for word in ["health", "manifest", "set-data-path", flag, "prometheus"] {
            assert!(
                run.stdout.contains(word),
                "{shell}: no {word}\n{}",
                run.dump()
            );
        }
        // Parse-check with the shell itself where it is installed (not on our CI machines).
        if have(checker) {
            let dir = tempfile::tempdir().unwrap();
            let script = dir.path().join("etcdops.completion");
            std::fs::write(&script, &run.stdout).unwrap();
            let out = Command::new(checker)
                .arg("-n")
                .arg(&script)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{checker} -n: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let run = etcdops(&args(["completions", "tcsh"]), &[], None);
    run.code(2);
}

#[test]
fn man_page_renders() {
    let run = etcdops(&args(["man"]), &[], None);
    run.code(0);
    assert!(run.stdout.contains("\n.TH etcdops 1"), "{}", run.dump());
    if !have("man") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("etcdops.1");
    std::fs::write(&page, &run.stdout).unwrap();
    let out = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .expect("run man");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "man -l failed: {err}");
    // groff warnings (bad requests, unbalanced fonts) land on stderr.
    assert!(err.trim().is_empty(), "man -l warned: {err}");
    for want in [
        "NAME",
        "SYNOPSIS",
        "--endpoints",
        "ETCDCTL_ENDPOINTS",
        "health",
        "Exit codes",
    ] {
        assert!(text.contains(want), "rendered page lacks {want:?}:\n{text}");
    }
}

#[test]
fn man_out_dir_writes_a_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let run = etcdops(
        &args(["man", "--out-dir", dir.path().to_str().unwrap()]),
        &[],
        None,
    );
    run.code(0);
    for name in [
        "etcdops.1",
        "etcdops-health.1",
        "etcdops-manifest.1",
        "etcdops-manifest-show.1",
        "etcdops-manifest-set-data-path.1",
        "etcdops-completions.1",
    ] {
        let path = dir.path().join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), run.dump()));
        assert!(text.contains("\n.TH "), "{name} has no .TH");
        assert!(
            run.stdout.lines().any(|l| l == path.to_str().unwrap()),
            "{name} not listed\n{}",
            run.dump()
        );
    }
    assert!(!dir.path().join("etcdops-help.1").exists());
    let page =
        std::fs::read_to_string(dir.path().join("etcdops-manifest-set-data-path.1")).unwrap();
    assert!(page.contains("dry\\-run"), "{page}");

    let missing = dir.path().join("nope");
    let run = etcdops(
        &args(["man", "--out-dir", missing.to_str().unwrap()]),
        &[],
        None,
    );
    run.code(2).one_line_error("nope");
}
