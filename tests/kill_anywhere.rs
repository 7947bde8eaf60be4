//! Kill anywhere: `migrate apply` on the lab (etcd 3.6) interrupted at instants picked by
//! *time* across a whole run, not at journal records — by SIGKILL, by one SIGTERM/SIGINT
//! (graceful) and by two (the second kills) — and `resume`/`rollback` themselves killed
//! mid-way. After each interruption the recovery (alternately `resume` and `rollback`, each
//! under a 120 s bound) must converge: a settled run, every key served by the node, the
//! cluster healthy with HashKV agreement, nothing stray in the manifests dir and no staging
//! dir beside the target. Prints a table of instants and outcomes (`--nocapture`).
//!
//! Sizing (the lead sizes CI time with these): `ETCDOPS_KILL_INSTANTS` (SIGKILL of apply,
//! default 40), `ETCDOPS_KILL_RECOVERY_INSTANTS` (SIGKILL of resume/rollback, default 8),
//! `ETCDOPS_KILL_SIGNAL_INSTANTS` (per SIGTERM/SIGINT once/twice, default 4).
//!
//! Also the "hidden scenario" of issue 10: kill -9 while `stop-kubelet`'s child command runs,
//! then `rollback`, must converge within 60 s with kubelet running and the node healthy.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Version;
use common::lab::Lab;
use common::proc::{Exit, Proc};
use common::{try_wait_for, wait_for};
use nix::sys::signal::Signal;

const PREFIX: &str = "/kill/";
/// Keys every check counts: a db of about 8 MB.
const KEYS: usize = 2000;
const VALUE_BYTES: usize = 4096;
/// Rounds of 1000 x 16 KiB writes that grow the WAL by a segment per four rounds.
const CHURN_ROUNDS: usize = 4;
/// Every recovery command must finish within this (the issue's `timeout 120`).
const RECOVERY_BOUND: Duration = Duration::from_secs(120);
/// After a recovery the cluster must be healthy (HashKV agreeing) within this.
const SETTLE_BOUND: Duration = Duration::from_secs(60);

fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Recovery {
    Resume,
    Rollback,
}

impl Recovery {
    fn word(self) -> &'static str {
        match self {
            Recovery::Resume => "resume",
            Recovery::Rollback => "rollback",
        }
    }
    fn alternate(i: usize) -> Recovery {
        if i.is_multiple_of(2) {
            Recovery::Resume
        } else {
            Recovery::Rollback
        }
    }
}

/// How the running `migrate apply` is interrupted.
#[derive(Clone, Copy)]
enum Blow {
    Kill,
    Once(Signal),
    Twice(Signal),
}

impl Blow {
    fn name(self) -> String {
        match self {
            Blow::Kill => "SIGKILL".into(),
            Blow::Once(s) => format!("{s:?}x1"),
            Blow::Twice(s) => format!("{s:?}x2"),
        }
    }
}

/// One line of the table.
struct Row {
    blow: String,
    instant_ms: u128,
    apply_exit: i32,
    step: String,
    recovery: String,
    code: String,
    took_ms: u128,
    outcome: Result<String, String>,
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<10} {:>7} {:>6}  {:<26} {:<34} {:<7} {:>7}  FINAL",
        "BLOW", "AT ms", "EXIT", "STEP (JOURNAL)", "RECOVERY", "CODE", "TOOK ms"
    );
    for r in rows {
        println!(
            "{:<10} {:>7} {:>6}  {:<26} {:<34} {:<7} {:>7}  {}",
            r.blow,
            r.instant_ms,
            r.apply_exit,
            r.step,
            r.recovery,
            r.code,
            r.took_ms,
            match &r.outcome {
                Ok(s) => s.clone(),
                Err(e) => format!("FAILED: {e}"),
            }
        );
    }
}

/// The lab's node 1 and where its data lives now.
struct Node {
    lab: Lab,
    /// The data dir the manifest points at now.
    current: PathBuf,
    targets: usize,
}

impl Node {
    fn fresh_target(&mut self) -> PathBuf {
        self.targets += 1;
        let to = self.lab.path().join(format!("t{}/etcd", self.targets));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        to
    }

    fn spawn(&self, args: &[&str], extra: &[(&str, &str)]) -> Proc {
        Proc::spawn(
            self.lab.etcdops_cmd(1, args, extra),
            &format!("etcdops {}", args.join(" ")),
        )
    }

    fn apply(&self, to: &Path, extra: &[(&str, &str)]) -> Proc {
        self.spawn(
            &[
                "migrate",
                "apply",
                "--yes",
                "--same-filesystem",
                "--to",
                to.to_str().unwrap(),
                "-o",
                "json",
            ],
            extra,
        )
    }

    /// `migrate status -o json`: (exit code, document or Null).
    fn status(&self) -> (i32, serde_json::Value) {
        let r = self
            .lab
            .etcdops(1, &["migrate", "status", "-o", "json"], &[]);
        let doc = serde_json::from_str(&r.stdout).unwrap_or(serde_json::Value::Null);
        (r.code, doc)
    }

    fn run_id(&self) -> Option<String> {
        self.status().1["id"].as_str().map(str::to_string)
    }

    /// Run `resume`/`rollback` under the bound; a rollback refused by the raft rule (5) is
    /// followed by `resume`, as the operator is told to. Returns (what ran, codes, took).
    fn recover(&self, kind: Recovery) -> Result<(String, String, Duration), String> {
        let start = Instant::now();
        let first = self
            .spawn(&["migrate", kind.word(), "-o", "json"], &[])
            .wait_within(RECOVERY_BOUND)?;
        if kind == Recovery::Rollback && first.code == 5 {
            let then = self
                .spawn(&["migrate", "resume", "-o", "json"], &[])
                .wait_within(RECOVERY_BOUND)?;
            return Ok((
                "rollback (refused) + resume".into(),
                format!("5,{}", then.code),
                start.elapsed(),
            ));
        }
        Ok((kind.word().into(), first.code.to_string(), start.elapsed()))
    }

    /// Every convergence check; on success, the settled state (and `current` follows it).
    fn converged(&mut self, to: &Path, before: &Path) -> Result<String, String> {
        let (code, doc) = self.status();
        let state = doc["state"].as_str().unwrap_or("-").to_string();
        if code != 0 || !(state == "completed" || state == "rolled-back") {
            return Err(format!("status exit {code}, state {state}: not settled"));
        }
        let now = data_host_path(&self.lab.manifest(1));
        let fresh_run = doc["to"].as_str() == Some(to.to_str().unwrap());
        match (state.as_str(), fresh_run) {
            ("completed", true) if now != to => {
                return Err(format!("completed, but the manifest points at {now:?}"));
            }
            ("rolled-back", true) | (_, false) if now != before => {
                return Err(format!(
                    "{state}, but the manifest points at {now:?}, not {before:?}"
                ));
            }
            ("rolled-back", true) if to.exists() => {
                return Err(format!("rolled back, but the target {to:?} is left"));
            }
            _ => {}
        }
        // Beside every target so far, not only this one: a later run must not leave one
        // behind an earlier target either.
        let mut staging = Vec::new();
        for k in 1..=self.targets {
            let parent = self.lab.path().join(format!("t{k}"));
            // Targets checked earlier and done with were removed (below).
            if !parent.exists() {
                continue;
            }
            for e in std::fs::read_dir(&parent)
                .map_err(|e| format!("{}: {e}", parent.display()))?
                .flatten()
            {
                if e.file_name().to_string_lossy().contains("staging") {
                    staging.push(e.path());
                }
            }
        }
        if !staging.is_empty() {
            return Err(format!("staging left beside a target: {staging:?}"));
        }
        let manifests = self.lab.manifest(1);
        let stray: Vec<String> = std::fs::read_dir(manifests.parent().unwrap())
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && n != "etcd.yaml")
            .collect();
        if !stray.is_empty() || !manifests.is_file() {
            return Err(format!(
                "manifests dir: stray {stray:?}, etcd.yaml present: {}",
                manifests.is_file()
            ));
        }
        let mut last = String::new();
        let healthy = try_wait_for(SETTLE_BOUND, || {
            let h = self
                .lab
                .etcdops(1, &["health", "--cluster", "-o", "json"], &[]);
            let agree = serde_json::from_str::<serde_json::Value>(&h.stdout)
                .map(|d| d["cluster"]["hashes_agree"] == true)
                .unwrap_or(false);
            last = format!("exit {}: {}", h.code, h.stderr.trim());
            h.code == 0 && agree
        });
        if !healthy {
            return Err(format!(
                "health --cluster (with HashKV agreement) not reached in {SETTLE_BOUND:?}: {last}"
            ));
        }
        match self.lab.count_on(1, PREFIX) {
            Some(n) if n == KEYS as u64 => {}
            other => return Err(format!("node 1 serves {other:?} of {KEYS} keys")),
        }
        // Data dirs this node no longer runs on are checked and done with: remove them, or
        // 40+ copies of a ~200 MB data dir fill the disk of a CI machine.
        for i in 1..=self.targets {
            let dir = self.lab.path().join(format!("t{i}"));
            if !now.starts_with(&dir) {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        self.current = now;
        Ok(state)
    }
}

fn data_host_path(manifest: &Path) -> PathBuf {
    etcdops::manifest::StaticPod::load(manifest)
        .and_then(|p| p.data_volume())
        .map(|v| v.data_host_path)
        .unwrap_or_default()
}

/// The step the journal shows in progress (or the last one done), for the table.
fn journal_step(doc: &serde_json::Value) -> String {
    let Some(steps) = doc["steps"].as_array() else {
        return "-".into();
    };
    let name = |s: &serde_json::Value| s["name"].as_str().unwrap_or("?").to_string();
    if let Some(s) = steps
        .iter()
        .find(|s| !matches!(s["state"].as_str(), Some("pending" | "done" | "undone")))
    {
        return format!("{} ({})", name(s), s["state"].as_str().unwrap_or("?"));
    }
    steps
        .iter()
        .rev()
        .find(|s| s["state"] == "done")
        .map_or("-".into(), |s| format!("after {}", name(s)))
}

/// Wait until `instant` after the child started, or until it exits first.
fn until(p: &mut Proc, instant: Duration) {
    while p.started.elapsed() < instant && !p.exited() {
        let left = instant.saturating_sub(p.started.elapsed());
        std::thread::sleep(left.min(Duration::from_millis(2)));
    }
}

/// Interrupt `p` as `blow` says and wait for it to exit.
fn strike(p: &mut Proc, blow: Blow) -> Result<Exit, String> {
    match blow {
        Blow::Kill => p.signal(Signal::SIGKILL),
        Blow::Once(sig) => p.signal(sig),
        Blow::Twice(sig) => {
            p.signal(sig);
            // A second signal only counts once the first was handled: the handler is
            // installed with SA_RESETHAND, so its bit leaves SigCgt when it has run (a
            // second signal still pending with the first would merge into one).
            let handled = try_wait_for(Duration::from_secs(10), || p.exited() || !p.catches(sig));
            if !handled {
                return Err(format!("the first {sig:?} was never handled"));
            }
            p.signal(sig);
        }
    }
    p.wait_within(RECOVERY_BOUND)
}

/// One interruption of `migrate apply` at `instant`, then recovery and the checks.
/// `kill_recovery_at`: SIGKILL the first recovery command at that instant, then recover again.
fn iteration(
    node: &mut Node,
    blow: Blow,
    instant: Duration,
    kind: Recovery,
    kill_recovery_at: Option<Duration>,
) -> Row {
    let to = node.fresh_target();
    let before = node.current.clone();
    let previous = node.run_id();
    let mut row = Row {
        blow: blow.name(),
        instant_ms: instant.as_millis(),
        apply_exit: 0,
        step: "-".into(),
        recovery: "none".into(),
        code: "-".into(),
        took_ms: 0,
        outcome: Err("not run".into()),
    };
    let mut p = node.apply(&to, &[]);
    until(&mut p, instant);
    let exit = match strike(&mut p, blow) {
        Ok(e) => e,
        Err(e) => {
            row.outcome = Err(e);
            return row;
        }
    };
    row.apply_exit = exit.code;
    let (_, doc) = node.status();
    let new_run = doc["id"].as_str().map(str::to_string) != previous;
    row.step = if new_run {
        journal_step(&doc)
    } else {
        "(no run yet)".into()
    };
    let state = doc["state"].as_str().unwrap_or("-").to_string();
    if let Blow::Once(sig) = blow {
        // Graceful: the run rolls back (1) or finishes (0) by itself. Only a signal that
        // arrives before the handler is installed (no run begun) may end the process.
        let graceful = matches!(exit.code, 0 | 1) || (!new_run && exit.code == -(sig as i32));
        if !graceful {
            row.outcome = Err(format!(
                "one {sig:?} gave exit {} (state {state}), not a finished or rolled-back run: {}",
                exit.code,
                exit.stderr.trim()
            ));
            return row;
        }
    }
    if new_run && !(state == "completed" || state == "rolled-back") {
        if let Some(at) = kill_recovery_at {
            let mut r = node.spawn(&["migrate", kind.word(), "-o", "json"], &[]);
            until(&mut r, at);
            r.signal(Signal::SIGKILL);
            let killed = r.wait_within(RECOVERY_BOUND);
            let (_, d) = node.status();
            row.step = format!(
                "{} / {} {}",
                row.step,
                kind.word(),
                if killed.is_ok_and(|e| e.code == -9) {
                    journal_step(&d)
                } else {
                    "ended first".into()
                }
            );
            row.blow = format!("{}+{}", row.blow, "K");
        }
        row.recovery = kind.word().into();
        match node.recover(kind) {
            Ok((what, code, took)) => {
                row.recovery = what;
                row.code = code;
                row.took_ms = took.as_millis();
            }
            Err(e) => {
                row.code = "hung".into();
                row.took_ms = RECOVERY_BOUND.as_millis();
                row.outcome = Err(e);
                return row;
            }
        }
    }
    row.outcome = node.converged(&to, &before);
    row
}

/// After a failed row: bring the node back the way an operator would (start kubelet,
/// then rollback, or resume where the raft rule refuses it), so that the remaining instants
/// still run. Err if it cannot be brought back: the test then stops.
fn heal(node: &mut Node) -> Result<String, String> {
    let to = node.lab.path().join(format!("t{}/etcd", node.targets));
    let before = node.current.clone();
    node.lab.lab(&["kubelet", "start", "--node", "1"]);
    let (_, doc) = node.status();
    if !matches!(doc["state"].as_str(), Some("completed" | "rolled-back")) {
        node.recover(Recovery::Rollback)?;
    }
    node.converged(&to, &before)
}

/// Measure one uninterrupted apply: (T from the JSON step timings, process start-up before
/// the first step = wall time - T).
fn baseline(node: &mut Node) -> (Duration, Duration) {
    let to = node.fresh_target();
    let before = node.current.clone();
    let exit = node
        .apply(&to, &[])
        .wait_within(RECOVERY_BOUND)
        .expect("baseline apply");
    assert_eq!(exit.code, 0, "baseline apply: {}", exit.stderr);
    let doc = exit.json().expect("baseline JSON");
    let steps: Vec<(String, u64)> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["took_ms"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let t = Duration::from_millis(steps.iter().map(|(_, ms)| ms).sum());
    println!(
        "baseline apply: wall {:?}, steps {t:?}: {steps:?}",
        exit.took
    );
    node.converged(&to, &before).expect("baseline converges");
    (t, exit.took.saturating_sub(t))
}

/// On the systemd lab: kubelet is a real systemd unit in each node, so the kills land in a
/// real `systemctl stop|start kubelet` with systemd's job queue.
#[test]
fn kill_anywhere_3_6() {
    let started = Instant::now();
    let n = env_count("ETCDOPS_KILL_INSTANTS", 40);
    let m = env_count("ETCDOPS_KILL_RECOVERY_INSTANTS", 8);
    let k = env_count("ETCDOPS_KILL_SIGNAL_INSTANTS", 4);
    let lab = Lab::up_systemd(Version::V36, 3, "dir");
    lab.put_many(PREFIX, KEYS, VALUE_BYTES);
    // WAL beyond its first preallocated segment (64 MB of churn, then deleted and
    // compacted away so the db and the snapshot stay small): the copy and the verify get
    // a share of the run that instants by time really land in.
    for _ in 0..CHURN_ROUNDS {
        lab.put_many("/churn/", 1000, 16 * 1024);
    }
    let out = lab.etcdctl(&["del", "--prefix", "/churn/"]);
    assert!(out.status.success(), "{out:?}");
    lab.etcdops(1, &["compact"], &[]).code(0);
    lab.etcdops(1, &["defrag", "--cluster"], &[]).code(0);
    // One write after the compaction: on a cluster compacted to its current revision,
    // apply fails its identity check today (a bug of its own: see the report), which is
    // not what this test is about.
    let out = lab.etcdctl(&["put", "/after-compaction", "x"]);
    assert!(out.status.success(), "{out:?}");
    let current = lab.data_dir(1);
    let mut node = Node {
        lab,
        current,
        targets: 0,
    };
    // The shorter of two uninterrupted runs: on a loaded machine one run can take twice
    // as long, and instants past the real end would only hit a finished run.
    let (t, startup) = baseline(&mut node).min(baseline(&mut node));
    // Instant num/den of the run: start-up, then that share of the steps' time.
    let at = |(t, startup): (Duration, Duration), num: u128, den: u128| {
        startup + Duration::from_millis((t.as_millis() * num / den) as u64)
    };

    let mut rows = Vec::new();
    let mut broken = false;
    // Record a row; after a failure, heal the node and go on. True if it cannot be healed.
    let push = |rows: &mut Vec<Row>, node: &mut Node, row: Row| {
        let failed = row.outcome.is_err();
        println!(
            "  {} at {} ms: step {}, {} -> {:?}",
            row.blow, row.instant_ms, row.step, row.recovery, row.outcome
        );
        rows.push(row);
        if !failed {
            return false;
        }
        let healed = heal(node);
        println!("  healed by hand (kubelet start, rollback): {healed:?}");
        healed.is_err()
    };

    // SIGKILL of apply at i*T/n, alternately resumed and rolled back.
    for i in 0..n {
        let row = iteration(
            &mut node,
            Blow::Kill,
            at((t, startup), i as u128, n as u128),
            Recovery::alternate(i),
            None,
        );
        if push(&mut rows, &mut node, row) {
            broken = true;
            break;
        }
    }
    // SIGKILL of apply, then of its recovery at instants spread over the recovery's
    // measured time, then the same recovery again.
    let longest = |word: &str| {
        rows.iter()
            .filter(|r| r.recovery == word)
            .map(|r| r.took_ms)
            .max()
            .unwrap_or(2000)
    };
    let (resume_ms, rollback_ms) = (longest("resume"), longest("rollback"));
    // The machine's load changes over a long test: measure T again for each later phase,
    // so its instants stay inside the run instead of after its end.
    let mut phase_t = (t, startup);
    if !broken && m > 0 {
        phase_t = baseline(&mut node);
    }
    for j in 0..m {
        if broken {
            break;
        }
        let kind = Recovery::alternate(j);
        let span = if kind == Recovery::Resume {
            resume_ms
        } else {
            rollback_ms
        };
        let pair = j as u128 / 2;
        let pairs = m.div_ceil(2) as u128;
        let row = iteration(
            &mut node,
            Blow::Kill,
            at(phase_t, 2 * pair + 1, 2 * pairs),
            kind,
            Some(Duration::from_millis((span * pair / pairs) as u64)),
        );
        broken = push(&mut rows, &mut node, row);
    }
    // SIGTERM and SIGINT, once (graceful) and twice (the second kills).
    for blow in [
        Blow::Once(Signal::SIGTERM),
        Blow::Twice(Signal::SIGTERM),
        Blow::Once(Signal::SIGINT),
        Blow::Twice(Signal::SIGINT),
    ] {
        if !broken && k > 0 {
            phase_t = baseline(&mut node);
        }
        for j in 0..k {
            if broken {
                break;
            }
            let row = iteration(
                &mut node,
                blow,
                at(phase_t, 2 * j as u128 + 1, 2 * k as u128),
                Recovery::alternate(j),
                None,
            );
            broken = push(&mut rows, &mut node, row);
        }
    }
    print_table(&rows);
    let mut per_step: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in &rows {
        *per_step.entry(r.step.as_str()).or_default() += 1;
    }
    println!("interruptions per step the journal showed: {per_step:?}");
    let failures = rows.iter().filter(|r| r.outcome.is_err()).count();
    let finished_first = rows
        .iter()
        .filter(|r| r.blow == "SIGKILL" && r.apply_exit == 0)
        .count();
    println!(
        "{finished_first} SIGKILL instant(s) came after the run had finished (exit 0): past its end under this machine's load"
    );
    println!(
        "kill anywhere: T = {t:?} (+{startup:?} start-up), {} interruptions, {failures} failed, whole test {:?}",
        rows.len(),
        started.elapsed()
    );
    assert_eq!(
        failures, 0,
        "{failures} interruption(s) did not converge: see the table"
    );
}

/// Issue 10's hidden scenario: kill -9 while `stop-kubelet`'s child command is in flight,
/// then `migrate rollback`. Within 60 s of the kill the rollback has finished, the orphaned
/// stop has run its course, and still kubelet is active, etcd is back on its old data, the
/// cluster is healthy, and the manifest is byte for byte the original.
///
/// The stop command is wrapped by a script that touches a file (so the test kills while it
/// runs, not before or after) and then runs the real stop a moment later, as a slow
/// `systemctl stop` would; it touches a second file when the real stop is over.
#[test]
fn kill_9_during_stop_kubelet_child_then_rollback_converges_within_60s() {
    kill_9_during_stop_kubelet_child(Lab::up(Version::V36, 3));
}

/// The same under real systemd: the orphan is a real `systemctl stop kubelet`.
#[test]
fn kill_9_during_systemctl_stop_then_rollback_converges_within_60s() {
    kill_9_during_stop_kubelet_child(Lab::up_systemd(Version::V36, 3, "dir"));
}

fn kill_9_during_stop_kubelet_child(lab: Lab) {
    lab.put_many(PREFIX, 200, 256);
    let manifest_before = std::fs::read(lab.manifest(1)).unwrap();
    let env = lab.env(1);
    let real_stop = env
        .iter()
        .find(|(k, _)| k == "ETCDOPS_KUBELET_STOP_CMD")
        .map(|(_, v)| v.clone())
        .unwrap();
    let marks = lab.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let (started, done) = (marks.join("stop-started"), marks.join("stop-done"));
    let script = marks.join("slow-stop.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\nsleep 1\n{real_stop}\nrc=$?\ntouch '{}'\nexit $rc\n",
            started.display(),
            done.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let to = lab.path().join("hidden/etcd");
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let stop_cmd = script.display().to_string();
    let mut apply = Proc::spawn(
        lab.etcdops_cmd(
            1,
            &[
                "migrate",
                "apply",
                "--yes",
                "--same-filesystem",
                "--to",
                to.to_str().unwrap(),
            ],
            &[("ETCDOPS_KUBELET_STOP_CMD", &stop_cmd)],
        ),
        "migrate apply",
    );
    wait_for("the kubelet stop command to start", RECOVERY_BOUND, || {
        started.exists() || apply.exited()
    });
    assert!(!apply.exited(), "apply ended before stop-kubelet");
    apply.signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    let exit = apply.wait_within(Duration::from_secs(10)).unwrap();
    assert_eq!(exit.code, -9);
    assert!(!done.exists(), "the stop finished before the kill");
    let st = lab.etcdops(1, &["migrate", "status", "-o", "json"], &[]);
    st.code(5);
    assert_eq!(
        journal_step(&st.json()),
        "stop-kubelet (running)",
        "{}",
        st.dump()
    );

    let budget = Duration::from_secs(60);
    let rb = Proc::spawn(
        lab.etcdops_cmd(1, &["migrate", "rollback", "-o", "json"], &[]),
        "migrate rollback",
    )
    .wait_within(budget)
    .unwrap_or_else(|e| {
        let st = lab.etcdops(1, &["migrate", "status"], &[]);
        let kubelet = lab.lab(&["kubelet", "status", "--node", "1"]);
        panic!(
            "{e}\nstatus after it:\n{}\nkubelet status exit {}; orphaned stop finished: {}\n{}",
            st.stdout,
            kubelet.code,
            done.exists(),
            lab.logs()
        )
    });
    println!(
        "rollback after kill -9 in stop-kubelet: exit {}, took {:?}, state {}",
        rb.code,
        rb.took,
        rb.state()
    );
    assert_eq!(rb.code, 0, "rollback: {}\n{}", rb.stderr, lab.logs());
    assert_eq!(rb.state(), "rolled-back");
    let left = budget.saturating_sub(killed_at.elapsed());
    wait_for("the orphaned kubelet stop to finish", left, || {
        done.exists()
    });
    let left = budget.saturating_sub(killed_at.elapsed());
    let mut last = String::new();
    let healthy = try_wait_for(left, || {
        let kubelet = lab.lab(&["kubelet", "status", "--node", "1"]);
        let h = lab.etcdops(1, &["health", "--cluster"], &[]);
        last = format!(
            "kubelet status exit {}, health exit {}: {}",
            kubelet.code,
            h.code,
            h.stderr.trim()
        );
        kubelet.code == 0 && h.code == 0
    });
    assert!(
        healthy,
        "60 s after the kill the node is not back: {last}\n{}",
        lab.logs()
    );
    println!("converged {:?} after the kill", killed_at.elapsed());
    assert_eq!(std::fs::read(lab.manifest(1)).unwrap(), manifest_before);
    assert_eq!(lab.count_on(1, PREFIX), Some(200));
    assert!(!to.exists(), "target left behind");
}
