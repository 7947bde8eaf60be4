//! Disaster recovery on the lab (real etcd 3.5 and 3.6, real TLS, real files): `backup`
//! writes a verified archive, `backup verify --restore-test` restores it with etcd's own tool
//! into a throwaway etcd and finds the recorded data; tampered archives (flipped byte,
//! truncated snapshot, missing pki file, contents that lie about the data, a cut archive)
//! fail with exit 1 naming the problem; nothing is left behind (work dir, processes), also
//! after Ctrl-C; `--keep` prunes only this node's older archives; bad inputs are refused
//! with their exit code and nothing changed.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::lab::Lab;
use common::{Run, Version, tree_bytes};

/// The restore tool: etcdutl (3.6 removed `etcdctl snapshot restore`).
fn tool(v: Version) -> PathBuf {
    v.etcdutl()
}

fn put_keys(lab: &Lab, n: usize) {
    for i in 0..n {
        let out = lab.etcdctl(&["put", &format!("/dr/key{i}"), &format!("value-{i}")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A deleted key and an overwritten one: the history is more than one put per key.
    assert!(lab.etcdctl(&["del", "/dr/key0"]).status.success());
    assert!(lab.etcdctl(&["put", "/dr/key1", "again"]).status.success());
}

fn backup(lab: &Lab, extra: &[&str]) -> Run {
    let mut args = vec!["-o", "json", "backup"];
    args.extend_from_slice(extra);
    lab.etcdops(1, &args, &[])
}

fn verify(lab: &Lab, archive: &Path, restore: bool) -> Run {
    let a = archive.display().to_string();
    let t = tool(lab.version).display().to_string();
    let mut args = vec!["-o", "json", "backup", "verify", &a];
    if restore {
        args.extend_from_slice(&["--restore-test", "--etcdutl", &t]);
    }
    lab.etcdops(1, &args, &[])
}

/// Names in a dir, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Processes whose command line mentions `needle` (our work dirs live under the lab's dir).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && !cmd.contains("cargo") {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// Nothing of a trial restore remains: the dir holds archives and stamps only, and no
/// process runs from a work dir below it.
fn assert_clean(dir: &Path) {
    for n in names(dir) {
        assert!(
            n.ends_with(".tar.zst")
                || n.ends_with(".verify.json")
                || n.ends_with(".meta.json")
                || n.ends_with(".tar.zst.orig"),
            "left behind in {}: {n}",
            dir.display()
        );
    }
    let procs = processes_mentioning(&format!("{}/.etcdops-restore-test", dir.display()));
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
}

type Entries = Vec<(String, u32, Vec<u8>)>;

/// One bad input: args, extra env, exit code, what stderr must name.
type Case<'a> = (Vec<&'a str>, &'a [(&'a str, &'a str)], i32, &'a str);

fn read_entries(archive: &Path) -> Entries {
    let dec = zstd::stream::read::Decoder::new(fs::File::open(archive).unwrap()).unwrap();
    let mut tar = tar::Archive::new(dec);
    let mut out = Vec::new();
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mode = e.header().mode().unwrap();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        out.push((path, mode, bytes));
    }
    out
}

fn write_entries(archive: &Path, entries: &Entries) {
    let enc = zstd::stream::write::Encoder::new(fs::File::create(archive).unwrap(), 3).unwrap();
    let mut b = tar::Builder::new(enc);
    for (path, mode, bytes) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, bytes.as_slice()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
}

fn entry<'a>(entries: &'a mut Entries, path: &str) -> &'a mut Vec<u8> {
    &mut entries
        .iter_mut()
        .find(|e| e.0 == path)
        .unwrap_or_else(|| panic!("no entry {path}"))
        .2
}

/// A 1-node lab with keys and one verified archive in its default backup dir.
fn lab_with_archive(v: Version) -> (Lab, PathBuf, serde_json::Value) {
    let lab = Lab::up(v, 1);
    put_keys(&lab, 12);
    let run = backup(&lab, &[]);
    run.code(0);
    let report = run.json();
    let archive = PathBuf::from(report["archive"].as_str().unwrap());
    (lab, archive, report)
}

fn backup_verify_and_restore_test(v: Version) {
    let (lab, archive, report) = lab_with_archive(v);
    assert_eq!(report["verified"], true);
    // 12 puts, one deleted.
    assert_eq!(report["key_count"], 11);
    assert!(
        report["etcd_version"]
            .as_str()
            .unwrap()
            .starts_with(v.prefix())
    );
    let dir = lab.state_dir(1).join("backups");
    assert_eq!(archive.parent().unwrap(), dir);
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("etcd-backup-node1-") && name.ends_with("Z.tar.zst"),
        "{name}"
    );
    assert_eq!(
        fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // Everything the node's pki dir and manifests dir hold, byte for byte, and contents.json
    // last, naming the member and the cluster.
    let entries = read_entries(&archive);
    assert_eq!(entries[0].0, "snapshot.db");
    assert_eq!(entries.last().unwrap().0, "contents.json");
    let kube = lab.node_dir(1).join("etc/kubernetes");
    for (path, bytes) in tree_bytes(&kube.join("pki"))
        .into_iter()
        .chain(tree_bytes(&kube.join("manifests")))
    {
        let rel = format!("kubernetes/{}", path.strip_prefix(&kube).unwrap().display());
        let found = entries.iter().find(|e| e.0 == rel);
        assert_eq!(found.map(|e| &e.2), Some(&bytes), "{rel} in the archive");
    }
    let contents: serde_json::Value = serde_json::from_slice(&entries.last().unwrap().2).unwrap();
    assert_eq!(contents["node"], "node1");
    assert_eq!(contents["members"][0]["name"], "node1");
    assert_eq!(contents["cluster_id"], report["cluster_id"]);
    assert_eq!(
        contents["entries"].as_array().unwrap().len(),
        entries.len() - 1
    );

    // The archive is an ordinary tar.zst.
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | tar tf -", archive.display()))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("kubernetes/pki/etcd/ca.crt"));

    let run = verify(&lab, &archive, false);
    run.code(0);
    assert_eq!(run.json()["ok"], true);
    let run = verify(&lab, &archive, true);
    run.code(0);
    let j = run.json();
    assert_eq!(j["restore_test"]["ok"], true, "{}", run.dump());
    assert_eq!(j["restore_test"]["key_count"], 11);
    assert_eq!(j["restore_test"]["hash_kv"], report["hash_kv"]);
    assert_clean(&dir);

    let list = lab.etcdops(1, &["-o", "json", "backup", "list"], &[]);
    list.code(0);
    let l = list.json();
    assert_eq!(l["archives"][0]["verified"], true, "{}", list.dump());
    assert_eq!(l["archives"][0]["revision"], report["revision"]);
}

#[test]
fn dr_backup_verify_restore_test_3_6() {
    backup_verify_and_restore_test(Version::V36);
}

#[test]
fn dr_backup_verify_restore_test_3_7() {
    backup_verify_and_restore_test(Version::V37);
}

#[test]
fn dr_backup_verify_restore_test_3_5() {
    backup_verify_and_restore_test(Version::V35);
}

#[test]
fn dr_tampered_archives_fail_with_exit_1_naming_the_problem() {
    let (lab, good, _) = lab_with_archive(Version::V36);
    let dir = good.parent().unwrap().to_path_buf();
    let original = read_entries(&good);
    let case = |name: &str, f: &dyn Fn(&mut Entries)| -> PathBuf {
        let mut e = original.clone();
        f(&mut e);
        let p = dir.join(format!("etcd-backup-bad-{name}.tar.zst"));
        write_entries(&p, &e);
        p
    };

    let flipped = case("flipped", &|e| entry(e, "snapshot.db")[5000] ^= 1);
    let truncated = case("truncated", &|e| {
        let s = entry(e, "snapshot.db");
        s.truncate(s.len() - 1000);
    });
    let no_key = case("nokey", &|e| {
        e.retain(|x| x.0 != "kubernetes/pki/etcd/ca.key")
    });
    for (archive, needle) in [
        (&flipped, "entry snapshot.db: blake3"),
        (&flipped, "sha256 trailer mismatch"),
        (&truncated, "snapshot.db"),
        (&no_key, "entry kubernetes/pki/etcd/ca.key is missing"),
    ] {
        for restore in [false, true] {
            let run = verify(&lab, archive, restore);
            run.code(1).one_line_error(needle);
            let j = run.json();
            assert_eq!(j["ok"], false);
            assert!(
                j["problems"].to_string().contains(needle),
                "{needle}\n{}",
                run.dump()
            );
        }
    }

    // Sums that hold but contents that lie about the data: only the trial restore sees it.
    let lying = case("lying", &|e| {
        let c = entry(e, "contents.json");
        let mut j: serde_json::Value = serde_json::from_slice(c).unwrap();
        let h = j["hash_kv"].as_u64().unwrap() ^ 1;
        j["hash_kv"] = h.into();
        j["key_count"] = 1000.into();
        *c = serde_json::to_vec(&j).unwrap();
    });
    verify(&lab, &lying, false).code(0);
    let run = verify(&lab, &lying, true);
    run.code(1)
        .one_line_error("restore test: 11 keys at revision");
    assert!(run.stderr.contains("HashKV"), "{}", run.dump());

    // An archive cut in half.
    let bytes = fs::read(&good).unwrap();
    let cut = dir.join("etcd-backup-bad-cut.tar.zst");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    verify(&lab, &cut, true)
        .code(1)
        .one_line_error("truncated or corrupt");

    // And the good one still passes: the failures were the archives', not the test's.
    verify(&lab, &good, true).code(0);
    assert_clean(&dir);
    // `list` reports the failed verifications.
    let l = lab
        .etcdops(1, &["-o", "json", "backup", "list"], &[])
        .json();
    let bad = l["archives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| {
            a["archive"]
                .as_str()
                .unwrap()
                .ends_with("bad-flipped.tar.zst")
        })
        .unwrap()
        .clone();
    assert_eq!(bad["verified"], false);
}

#[test]
fn dr_ctrl_c_during_restore_test_removes_work_dir_and_processes() {
    let (lab, archive, _) = lab_with_archive(Version::V36);
    let dir = archive.parent().unwrap().to_path_buf();
    // Fault: an "etcd" that never answers, so the trial restore is surely running when the
    // signal comes.
    let hung = lab.path().join("hung-etcd");
    fs::write(&hung, "#!/bin/sh\nwhile :; do sleep 1; done\n").unwrap();
    fs::set_permissions(&hung, fs::Permissions::from_mode(0o755)).unwrap();
    let env = lab.env(1);
    let child = Command::new(env!("CARGO_BIN_EXE_etcdops"))
        .args([
            "backup",
            "verify",
            "--restore-test",
            "--restore-timeout",
            "10m",
        ])
        .arg(&archive)
        .arg("--etcdutl")
        .arg(tool(Version::V36))
        .arg("--etcd")
        .arg(&hung)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let work = format!("{}/.etcdops-restore-test", dir.display());
    etcdops::node::wait_until(
        "the hung etcd of the trial restore to run",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            Ok(processes_mentioning(&work)
                .iter()
                .any(|p| p.contains("hung-etcd")))
        },
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted by Ctrl-C"), "{stderr}");
    assert_clean(&dir);
}

#[test]
fn dr_keep_prunes_only_this_nodes_older_archives() {
    let (lab, first, _) = lab_with_archive(Version::V36);
    let dir = lab.path().join("kept");
    fs::create_dir(&dir).unwrap();
    // Real archives under older names, and another node's, which is never touched.
    let old = |name: &str| {
        let p = dir.join(name);
        fs::copy(&first, &p).unwrap();
        p
    };
    let oldest = old("etcd-backup-node1-20200101T000000Z.tar.zst");
    let older = old("etcd-backup-node1-20210101T000000Z.tar.zst");
    let other = old("etcd-backup-node2-20190101T000000Z.tar.zst");
    let d = dir.display().to_string();
    let run = backup(&lab, &["--dir", &d, "--keep", "2"]);
    run.code(0);
    let j = run.json();
    let new = PathBuf::from(j["archive"].as_str().unwrap());
    assert_eq!(
        j["pruned"],
        serde_json::json!([oldest.display().to_string()])
    );
    assert!(new.exists() && older.exists() && other.exists() && !oldest.exists());
    let run = backup(&lab, &["--dir", &d, "--keep", "1"]);
    // A second backup within the same second is refused (names are per second); that is
    // not what this test is about, so only a success is checked further.
    if run.code == 0 {
        let j = run.json();
        let newest = PathBuf::from(j["archive"].as_str().unwrap());
        assert!(newest.exists() && !new.exists() && !older.exists() && other.exists());
    } else {
        run.code(4).one_line_error("run again in a second");
    }
}

#[test]
fn dr_bad_inputs_are_refused_and_change_nothing() {
    let (lab, archive, _) = lab_with_archive(Version::V36);
    let kube = lab.node_dir(1).join("etc");
    let state = lab.state_dir(1);
    let before = (tree_bytes(&kube), tree_bytes(&state));
    let a = archive.display().to_string();
    let file = lab.path().join("plain-file");
    fs::write(&file, "not a dir, not an archive").unwrap();
    let f = file.display().to_string();
    let empty = lab.path().join("empty-dir");
    fs::create_dir(&empty).unwrap();
    let e = empty.display().to_string();
    let missing = lab.path().join("missing").display().to_string();
    let manifest = lab.manifest(1).display().to_string();
    let bad_manifest = lab.path().join("bad.yaml");
    fs::write(&bad_manifest, "kind: Deployment\nspec: {}\n").unwrap();
    let bm = bad_manifest.display().to_string();
    // A manifest whose pki dir does not exist beside its manifests dir.
    let elsewhere = lab.path().join("elsewhere/manifests");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::copy(lab.manifest(1), elsewhere.join("etcd.yaml")).unwrap();
    let em = elsewhere.join("etcd.yaml").display().to_string();
    let no_path: &[(&str, &str)] = &[("PATH", "/nonexistent-bin")];

    let cases: Vec<Case> = vec![
        (vec!["backup", "--dir", &f], &[], 2, "not a directory"),
        (vec!["backup", "--keep", "0"], &[], 2, "--keep"),
        (vec!["backup", "--level", "0"], &[], 2, "--level"),
        (
            vec!["backup", "--idle-timeout", "soon"],
            &[],
            2,
            "invalid duration",
        ),
        (vec!["backup", "--manifest", &missing], &[], 2, "missing"),
        (vec!["backup", "--manifest", &bm], &[], 2, "expected Pod"),
        (vec!["backup", "--manifest", &em], &[], 2, "pki"),
        (
            // Into the empty dir: nothing may be left there (no .part), and no name clash
            // with the archive made in this same second.
            vec!["backup", "--endpoints", "https://127.0.0.1:1", "--dir", &e],
            &[],
            3,
            "127.0.0.1:1",
        ),
        (vec!["backup", "verify", &missing], &[], 2, "no such file"),
        (vec!["backup", "verify", &e], &[], 2, "is a directory"),
        (vec!["backup", "verify", &f], &[], 2, "not a backup archive"),
        (vec!["backup", "verify"], &[], 2, "FILE"),
        (
            vec!["backup", "verify", &a, "--restore-test", "--etcdutl", &f],
            &[],
            2,
            "not an executable",
        ),
        (
            vec![
                "backup",
                "verify",
                &a,
                "--restore-test",
                "--manifest",
                &manifest,
            ],
            no_path,
            4,
            "/nonexistent-bin/etcdutl",
        ),
        (
            vec![
                "backup",
                "verify",
                &a,
                "--restore-test",
                "--restore-timeout",
                "0s",
            ],
            &[],
            2,
            "greater than zero",
        ),
        (
            vec!["backup", "list", "--dir", &missing],
            &[],
            2,
            "no such backup dir",
        ),
        (
            vec!["backup", "--dir", &e, "list"],
            &[],
            2,
            "cannot be used",
        ),
    ];
    for (args, env, code, needle) in cases {
        let run = lab.etcdops(1, &args, env);
        run.code(code);
        assert!(run.stderr.contains(needle), "{needle:?}\n{}", run.dump());
        // clap's own usage errors carry a hint line; ours are one line.
        if !run.stderr.starts_with("error:") {
            run.one_line_error(needle);
        }
        assert_eq!(
            (tree_bytes(&kube), tree_bytes(&state)),
            before,
            "changed by {args:?}"
        );
        assert!(names(&empty).is_empty(), "{args:?} wrote into {e}");
    }
}

/// The engine-independent restore pieces on a real archive: the plan from the lab node's
/// manifest and the archive's member list, etcd's own restore tool run with it (3.4's etcdctl
/// and 3.5's etcdutl), and the refusals.
fn restore_plan_and_tool(v: Version) {
    use etcdops::backup::tool::find_restore_tool;
    use etcdops::restore::plan::{plan_from_contents, read_archive, run_restore};
    let (lab, archive, report) = lab_with_archive(v);
    let (contents, source) = read_archive(&archive, None).unwrap();
    let plan = plan_from_contents(&lab.manifest(1), source, &contents).unwrap();
    assert_eq!(plan.name, "node1");
    // A fresh token per plan, naming the archive it restores.
    let short: String = report["id"].as_str().unwrap().chars().take(8).collect();
    assert!(
        plan.token.starts_with(&format!("etcdops-restore-{short}-")),
        "{}",
        plan.token
    );
    assert_eq!(plan.data_dir, lab.data_dir(1));
    assert_eq!(plan.initial_cluster, format!("node1={}", plan.peer_url));
    let snap = lab.path().join("snapshot.db");
    let entries = read_entries(&archive);
    fs::write(&snap, &entries[0].2).unwrap();
    let tool = find_restore_tool(Some(&tool(v)), None, None).unwrap();
    let dest = lab.path().join("restored");
    run_restore(&tool, &plan, &snap, &dest).unwrap();
    assert!(dest.join("member/snap/db").is_file());
    assert!(fs::read_dir(dest.join("member/wal")).unwrap().count() > 0);
    // Never into an existing dir.
    assert_eq!(
        run_restore(&tool, &plan, &snap, &dest)
            .unwrap_err()
            .exit_code(),
        4
    );

    // An archive whose snapshot fails its sums is refused, as is a manifest whose member is
    // not in the archive.
    let mut bad = entries.clone();
    entry(&mut bad, "snapshot.db")[5000] ^= 1;
    let bad_path = lab.path().join("bad.tar.zst");
    write_entries(&bad_path, &bad);
    let e = read_archive(&bad_path, None).unwrap_err();
    assert_eq!(e.exit_code(), 4, "{}", e.one_line());
    let other = lab.path().join("other.yaml");
    let text = fs::read_to_string(lab.manifest(1)).unwrap();
    fs::write(&other, text.replace("--name=node1", "--name=node9")).unwrap();
    let (contents, source) = read_archive(&archive, None).unwrap();
    let e = plan_from_contents(&other, source, &contents).unwrap_err();
    assert_eq!(e.exit_code(), 4);
    assert!(e.one_line().contains("node9"), "{}", e.one_line());
}

#[test]
fn dr_restore_plan_and_tool_3_6() {
    restore_plan_and_tool(Version::V36);
}

#[test]
fn dr_restore_plan_and_tool_3_5() {
    restore_plan_and_tool(Version::V35);
}

/// `restore plan` on a 3-node lab: the plan names this member and every member of the
/// archive, the commands it prints restore for real, and every refusal changes nothing
/// (no stamp, no file).
#[test]
fn dr_restore_plan_prints_commands_that_work_and_refuses_bad_sources() {
    let lab = Lab::up(Version::V36, 3);
    put_keys(&lab, 5);
    let run = lab.etcdops(2, &["-o", "json", "backup"], &[]);
    run.code(0);
    let archive = run.json()["archive"].as_str().unwrap().to_string();
    let t = tool(Version::V36).display().to_string();
    let run = lab.etcdops(
        3,
        &[
            "-o",
            "json",
            "restore",
            "plan",
            "--from",
            &archive,
            "--etcdutl",
            &t,
        ],
        &[],
    );
    run.code(0);
    let j = run.json();
    assert_eq!(j["name"], "node3");
    let ic = j["initial_cluster"].as_str().unwrap();
    for n in 1..=3 {
        assert!(ic.contains(&format!("node{n}=https://")), "{ic}");
    }
    assert!(j["token"].as_str().unwrap().starts_with("etcdops-restore-"));
    // What it prints is what works.
    let script = format!(
        "set -e; {}; {}",
        j["extract"].as_str().unwrap(),
        j["restore"].as_str().unwrap()
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = PathBuf::from(j["restore_dir"].as_str().unwrap());
    assert!(restored.join("member/snap/db").is_file());

    // A bare snapshot: members from the manifest's --initial-cluster. Node 3 joined last,
    // so kubeadm wrote every member there; node 1, kubeadm's first node, lists only itself.
    let snap = lab.path().join("bare.db");
    let s = snap.display().to_string();
    lab.etcdops(1, &["snapshot", "save", &s], &[]).code(0);
    let run = lab.etcdops(
        3,
        &[
            "-o",
            "json",
            "restore",
            "plan",
            "--from",
            &s,
            "--etcdutl",
            &t,
        ],
        &[],
    );
    run.code(0);
    assert_eq!(run.json()["source"]["kind"], "snapshot");
    assert_eq!(run.json()["initial_cluster"].as_str().unwrap(), ic);

    // Refusals, nothing changed.
    let mut bytes = fs::read(&snap).unwrap();
    bytes[5000] ^= 1;
    let bad_snap = lab.path().join("bad.db");
    fs::write(&bad_snap, &bytes).unwrap();
    let mut entries = read_entries(Path::new(&archive));
    entry(&mut entries, "kubernetes/manifests/etcd.yaml").push(b'#');
    let bad_archive = lab.path().join("bad.tar.zst");
    write_entries(&bad_archive, &entries);
    let other = lab.path().join("other.yaml");
    let text = fs::read_to_string(lab.manifest(3)).unwrap();
    fs::write(&other, text.replace("--name=node3", "--name=node9")).unwrap();
    let (bs, ba, o) = (
        bad_snap.display().to_string(),
        bad_archive.display().to_string(),
        other.display().to_string(),
    );
    let missing = lab.path().join("missing.tar.zst").display().to_string();
    let before = (tree_bytes(lab.path()), names(lab.path()));
    for (args, env, code, needle) in [
        (
            vec!["--from", bs.as_str(), "--etcdutl", &t],
            vec![],
            4,
            "sha256 trailer mismatch",
        ),
        (
            vec!["--from", &ba, "--etcdutl", &t],
            vec![],
            4,
            "kubernetes/manifests/etcd.yaml",
        ),
        (
            vec!["--from", &archive, "--etcdutl", &t, "--manifest", &o],
            vec![],
            4,
            "node9",
        ),
        (vec!["--from", &missing], vec![], 2, "no such archive"),
        (
            vec!["--from", &archive],
            vec![("PATH", "/nonexistent-bin")],
            4,
            "/nonexistent-bin/etcdutl",
        ),
        (vec![], vec![], 2, "--from"),
    ] {
        let mut a = vec!["restore", "plan"];
        a.extend(args.iter().copied());
        let run = lab.etcdops(3, &a, &env);
        run.code(code);
        assert!(run.stderr.contains(needle), "{needle}\n{}", run.dump());
        if !run.stderr.starts_with("error:") {
            run.one_line_error(needle);
        }
        // The etcd logs under the lab dir grow on their own; compare everything else.
        let strip = |v: Vec<(PathBuf, Vec<u8>)>| -> Vec<(PathBuf, Vec<u8>)> {
            v.into_iter()
                .filter(|(p, _)| {
                    !p.to_string_lossy().ends_with(".log")
                        && !p.starts_with(lab.path().join("node1/var/lib/etcd"))
                        && !p.starts_with(lab.path().join("node2/var/lib/etcd"))
                        && !p.starts_with(lab.path().join("node3/var/lib/etcd"))
                })
                .collect()
        };
        assert_eq!(
            strip(tree_bytes(lab.path())),
            strip(before.0.clone()),
            "{a:?} changed a file"
        );
        assert_eq!(names(lab.path()), before.1, "{a:?} added or removed a file");
    }
}
