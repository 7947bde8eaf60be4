//! Output into a pipe whose reader is gone (`etcdops completions bash | head -1`): etcdops
//! ends as coreutils do — killed by SIGPIPE (the shell's 141), not a word on stderr, no
//! panic (101). The reader is closed *before* etcdops writes, so the write fails for
//! certain and the test does not race the pipe buffer; one shell pipeline checks the
//! operator's view, where 0 (all output fit in the buffer) is as right as 141.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};

use common::{Cluster, Spec, Version, args};
use nix::fcntl::OFlag;

const SIGPIPE: i32 = 13;

/// Run etcdops with stdout (or stderr) the write end of a pipe whose read end is closed.
fn into_dead_pipe(argv: &[String], stderr_too: bool) -> (Output, String) {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe");
    drop(read);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdops"));
    cmd.args(argv).env_remove("ETCDOPS_MANIFEST");
    let shown = format!("etcdops {}", argv.join(" "));
    if stderr_too {
        let dup = write.try_clone().expect("dup the pipe");
        cmd.stdout(Stdio::null()).stderr(Stdio::from(dup));
    } else {
        cmd.stdout(Stdio::from(write)).stderr(Stdio::piped());
    }
    (cmd.output().expect("run etcdops"), shown)
}

fn assert_quiet_sigpipe(out: &Output, shown: &str) {
    assert_eq!(
        out.status.signal(),
        Some(SIGPIPE),
        "{shown}: {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{shown}: wrote on stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn generated_text_into_a_closed_pipe_ends_quietly() {
    let pages = tempfile::tempdir().unwrap();
    for argv in [
        args(["completions", "bash"]),
        args(["completions", "zsh"]),
        args(["man"]),
        args(["man", "--out-dir"])
            .into_iter()
            .chain([pages.path().display().to_string()])
            .collect(),
    ] {
        let (out, shown) = into_dead_pipe(&argv, false);
        assert_quiet_sigpipe(&out, &shown);
    }
}

/// Reports (table and JSON, success and failure), and main's one-line error when stderr is
/// the closed pipe.
#[test]
fn reports_and_errors_into_a_closed_pipe_end_quietly() {
    let cluster = Cluster::start(Spec::new(Version::V36, 1).tls());
    for format in ["table", "json", "prometheus"] {
        let mut a = cluster.client_args();
        a.extend(args(["health", "--cluster", "-o", format]));
        let (out, shown) = into_dead_pipe(&a, false);
        assert_quiet_sigpipe(&out, &shown);
    }
    // Nothing answers: the report (exit 3) is written first, into the closed pipe.
    let dead = format!("--endpoints=http://127.0.0.1:{}", common::free_port());
    for format in ["table", "json"] {
        let a = args([
            dead.as_str(),
            "--dial-timeout=500ms",
            "health",
            "-o",
            format,
        ]);
        let (out, shown) = into_dead_pipe(&a, false);
        assert_quiet_sigpipe(&out, &shown);
    }
    // A usage error of etcdops' own (exit 2) whose one-line message meets a closed stderr.
    let a = args([
        "--manifest=/nonexistent/etcd.yaml",
        "-o",
        "prometheus",
        "alarm",
        "list",
    ]);
    let (out, shown) = into_dead_pipe(&a, true);
    assert_quiet_sigpipe(&out, &shown);
}

/// What the operator types, with bash's pipefail: 0 or 141, and nothing but the first line.
#[test]
fn head_of_a_pipeline_as_the_operator_sees_it() {
    for cmd in [
        "completions bash | head -1",
        "man | head -c1",
        "completions fish | head -c0",
    ] {
        // etcdops' stderr is bash's: any message of it would show before the rc line.
        let script = format!("set -o pipefail; \"$ETCDOPS\" {cmd} >/dev/null; echo \"rc=$?\" >&2");
        let out = Command::new("bash")
            .args(["-c", &script])
            .env("ETCDOPS", env!("CARGO_BIN_EXE_etcdops"))
            .output()
            .expect("run bash");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr == "rc=0\n" || stderr == "rc=141\n",
            "{cmd}: {stderr:?} (expected only rc=0 or rc=141)"
        );
    }
}
