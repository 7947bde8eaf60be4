//! Encrypted backups on the lab (real etcd 3.6, real TLS, real files) against the reference
//! `age` tool (Debian's `age`, `age-keygen`) and real OpenSSH keys (`ssh-keygen`): the
//! reference tool decrypts our archives to a valid tar.zst, we decrypt what it encrypted,
//! an ssh-ed25519 recipient works both ways; `backup verify [--restore-test]` and `restore`
//! open an archive with `--identity` or `ETCDOPS_IDENTITY`; `backup list` works without any
//! key; a missing or wrong identity is a one-line exit 2 that changes nothing; a tampered
//! ciphertext fails verification (exit 1); doctor warns about plain archives and about
//! archives or snapshots that group or others can read.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::lab::Lab;
use common::{Run, Version, tree_bytes};

const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

fn put_keys(lab: &Lab, prefix: &str, n: usize) {
    for i in 0..n {
        let out = lab.etcdctl(&["put", &format!("{prefix}{i}"), &format!("value-{i}")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn sh(script: &str) -> std::process::Output {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Keys made with the reference tools in `dir`: an age identity and its recipient, an
/// ed25519 OpenSSH key pair, and a recipients file naming the SSH public key.
struct Keys {
    age_key: PathBuf,
    age_recipient: String,
    ssh_key: PathBuf,
    recipients_file: PathBuf,
    /// A second age identity that opens nothing of ours.
    stranger: PathBuf,
}

fn keys(dir: &Path) -> Keys {
    let age_key = dir.join("age-key.txt");
    let stranger = dir.join("stranger.txt");
    for k in [&age_key, &stranger] {
        sh(&format!("age-keygen -o '{}' 2>/dev/null", k.display()));
    }
    let age_recipient =
        String::from_utf8(sh(&format!("age-keygen -y '{}'", age_key.display())).stdout)
            .unwrap()
            .trim()
            .to_string();
    assert!(age_recipient.starts_with("age1"), "{age_recipient}");
    let ssh_key = dir.join("id_ed25519");
    sh(&format!(
        "ssh-keygen -q -t ed25519 -N '' -C backup@test -f '{}'",
        ssh_key.display()
    ));
    let recipients_file = dir.join("recipients");
    let ssh_pub = fs::read_to_string(ssh_key.with_extension("pub")).unwrap();
    fs::write(
        &recipients_file,
        format!("# the recovery team's SSH key\n\n{ssh_pub}"),
    )
    .unwrap();
    Keys {
        age_key,
        age_recipient,
        ssh_key,
        recipients_file,
        stranger,
    }
}

/// One bad input: args, extra env, what the one-line error must name.
type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

fn backup(lab: &Lab, extra: &[&str]) -> Run {
    let mut args = vec!["-o", "json", "backup"];
    args.extend_from_slice(extra);
    lab.etcdops(1, &args, &[])
}

/// A 1-node lab with keys and one archive encrypted to an age and an SSH recipient.
fn lab_with_encrypted_archive() -> (Lab, Keys, PathBuf, serde_json::Value) {
    let lab = Lab::up(Version::V36, 1);
    put_keys(&lab, "/dr/key", 11);
    let keys = keys(lab.path());
    let rf = keys.recipients_file.display().to_string();
    let run = backup(
        &lab,
        &["--recipient", &keys.age_recipient, "--recipients-file", &rf],
    );
    run.code(0);
    let report = run.json();
    let archive = PathBuf::from(report["archive"].as_str().unwrap());
    (lab, keys, archive, report)
}

fn is_tar_zst_with_contents(plain: &Path) -> bool {
    let out = sh(&format!("zstd -dc '{}' | tar tf -", plain.display()));
    let list = String::from_utf8_lossy(&out.stdout);
    list.contains("snapshot.db")
        && list.contains("kubernetes/pki/etcd/ca.key")
        && list.lines().last() == Some("contents.json")
}

#[test]
fn age_encrypted_backup_interoperates_with_the_reference_tool() {
    let (lab, keys, archive, report) = lab_with_encrypted_archive();
    let dir = lab.state_dir(1).join("backups");
    assert_eq!(report["encrypted"], true);
    assert_eq!(report["verified"], true, "read back with this run's key");
    assert_eq!(report["key_count"], 11);
    assert_eq!(report["recipients"].as_array().unwrap().len(), 2);
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.ends_with("Z.tar.zst.age"), "{name}");
    assert_eq!(
        fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Nothing of the cluster is readable in the file: an age header, then ciphertext.
    let bytes = fs::read(&archive).unwrap();
    assert!(bytes.starts_with(AGE_MAGIC));
    let ca_key = fs::read(lab.node_dir(1).join("etc/kubernetes/pki/etcd/ca.key")).unwrap();
    assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"));
    assert!(!bytes.windows(32).any(|w| w == &ca_key[40..72]));

    // The sidecar: what `backup list` needs, nothing secret, 0600.
    let meta_path = dir.join(format!(".{name}.meta.json"));
    assert_eq!(
        fs::metadata(&meta_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&meta_path).unwrap()).unwrap();
    assert_eq!(meta["revision"], report["revision"]);
    assert_eq!(meta["encrypted"], true);
    let meta_text = fs::read_to_string(&meta_path).unwrap();
    assert!(!meta_text.contains("AGE-SECRET-KEY") && !meta_text.contains("PRIVATE"));

    // The reference tool decrypts ours with either key, to a valid tar.zst that our own
    // verify accepts as a plain archive.
    for (i, key) in [&keys.age_key, &keys.ssh_key].iter().enumerate() {
        let plain = lab.path().join(format!("decrypted-{i}.tar.zst"));
        sh(&format!(
            "age -d -i '{}' -o '{}' '{}'",
            key.display(),
            plain.display(),
            archive.display()
        ));
        assert!(is_tar_zst_with_contents(&plain));
        // A plain archive needs no key: ETCDOPS_IDENTITY, even a bad one, is not read.
        let p = plain.display().to_string();
        lab.etcdops(
            1,
            &["-o", "json", "backup", "verify", &p],
            &[("ETCDOPS_IDENTITY", "/nonexistent/key")],
        )
        .code(0);
    }

    // We decrypt what the reference tool encrypted (to the age and the SSH recipient).
    let plain = lab.path().join("decrypted-0.tar.zst");
    let theirs = lab.path().join("theirs.tar.zst.age");
    sh(&format!(
        "age -r '{}' -R '{}' -o '{}' '{}'",
        keys.age_recipient,
        keys.recipients_file.display(),
        theirs.display(),
        plain.display()
    ));
    let t = theirs.display().to_string();
    for key in [&keys.age_key, &keys.ssh_key] {
        let k = key.display().to_string();
        let run = lab.etcdops(
            1,
            &["-o", "json", "backup", "verify", &t, "--identity", &k],
            &[],
        );
        run.code(0);
        assert_eq!(run.json()["key_count"], 11);
    }

    // verify with --identity, and --restore-test with ETCDOPS_IDENTITY (the SSH key).
    let a = archive.display().to_string();
    let k = keys.age_key.display().to_string();
    let run = lab.etcdops(
        1,
        &["-o", "json", "backup", "verify", &a, "--identity", &k],
        &[],
    );
    run.code(0);
    assert_eq!(run.json()["ok"], true);
    let etcdutl = Version::V36.etcdutl().display().to_string();
    let ssh = keys.ssh_key.display().to_string();
    let run = lab.etcdops(
        1,
        &[
            "-o",
            "json",
            "backup",
            "verify",
            &a,
            "--restore-test",
            "--etcdutl",
            &etcdutl,
        ],
        &[("ETCDOPS_IDENTITY", &ssh)],
    );
    run.code(0);
    let j = run.json();
    assert_eq!(j["restore_test"]["ok"], true, "{}", run.dump());
    assert_eq!(j["restore_test"]["key_count"], 11);
    assert_eq!(j["restore_test"]["hash_kv"], report["hash_kv"]);

    // `backup list` needs no key: time, revision, size, verified, encrypted.
    let list = lab.etcdops(1, &["-o", "json", "backup", "list"], &[]);
    list.code(0);
    let l = list.json();
    let row = &l["archives"][0];
    assert_eq!(row["encrypted"], true, "{}", list.dump());
    assert_eq!(row["verified"], true);
    assert_eq!(row["revision"], report["revision"]);
    assert_eq!(row["node"], "node1");
    assert!(row["created"].as_str().is_some_and(|c| c.ends_with('Z')));
    let table = lab.etcdops(1, &["backup", "list"], &[]);
    table.code(0);
    assert!(table.stdout.contains(&name), "{}", table.dump());

    // `restore plan` opens it and prints an extract command that works with the
    // reference tool.
    let run = lab.etcdops(
        1,
        &[
            "-o",
            "json",
            "restore",
            "plan",
            "--from",
            &a,
            "--identity",
            &k,
            "--etcdutl",
            &etcdutl,
        ],
        &[],
    );
    run.code(0);
    let plan = run.json();
    let extract = plan["extract"].as_str().unwrap();
    assert!(extract.starts_with("age -d -i "), "{extract}");
    sh(extract);
    let snap = PathBuf::from(plan["snapshot"].as_str().unwrap());
    let status = Command::new(Version::V36.etcdutl())
        .args(["snapshot", "status", "-w", "json"])
        .arg(&snap)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    fs::remove_file(&snap).unwrap();
}

#[test]
fn age_wrong_or_missing_identity_is_exit_2_and_changes_nothing() {
    let (lab, keys, archive, _) = lab_with_encrypted_archive();
    let kube = lab.node_dir(1).join("etc");
    let state = lab.state_dir(1);
    let before = (
        tree_bytes(&kube),
        tree_bytes(&state),
        tree_bytes(&lab.data_dir(1)),
    );
    let a = archive.display().to_string();
    let stranger = keys.stranger.display().to_string();
    let garbage = lab.path().join("garbage-key");
    fs::write(&garbage, "hello\n").unwrap();
    let g = garbage.display().to_string();
    let missing = lab.path().join("no-such-key").display().to_string();
    let private = fs::read_to_string(&keys.age_key).unwrap();
    let secret = private
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let ssh_pub = fs::read_to_string(keys.ssh_key.with_extension("pub")).unwrap();
    let bad_recipients = lab.path().join("bad-recipients");
    fs::write(&bad_recipients, format!("{ssh_pub}not-a-key\n")).unwrap();
    let br = bad_recipients.display().to_string();
    let etcdutl = Version::V36.etcdutl().display().to_string();
    let cases: Vec<Case> = vec![
        (vec!["backup", "verify", &a], vec![], "--identity"),
        (
            vec![
                "backup",
                "verify",
                &a,
                "--restore-test",
                "--etcdutl",
                &etcdutl,
            ],
            vec![],
            "--identity",
        ),
        (
            vec!["backup", "verify", &a, "--identity", &stranger],
            vec![],
            "stranger.txt",
        ),
        (
            vec!["backup", "verify", &a],
            vec![("ETCDOPS_IDENTITY", stranger.as_str())],
            "stranger.txt",
        ),
        (
            vec![
                "backup",
                "verify",
                &a,
                "--restore-test",
                "--etcdutl",
                &etcdutl,
                "--identity",
                &stranger,
            ],
            vec![],
            "stranger.txt",
        ),
        (
            vec!["backup", "verify", &a, "--identity", &g],
            vec![],
            "not an identity file",
        ),
        (
            vec!["backup", "verify", &a, "--identity", &missing],
            vec![],
            "no-such-key",
        ),
        (vec!["restore", "plan", "--from", &a], vec![], "--identity"),
        (
            vec!["restore", "plan", "--from", &a, "--identity", &stranger],
            vec![],
            "stranger.txt",
        ),
        (
            vec![
                "restore",
                "apply",
                "--from",
                &a,
                "--identity",
                &stranger,
                "--yes",
                "--etcdutl",
                &etcdutl,
            ],
            vec![],
            "stranger.txt",
        ),
        (
            vec!["backup", "--recipient", "age1notakey"],
            vec![],
            "--recipient",
        ),
        (
            vec!["backup", "--recipient", &secret],
            vec![],
            "private key",
        ),
        (
            vec!["backup", "--recipients-file", &missing],
            vec![],
            "no-such-key",
        ),
        (vec!["backup", "--recipients-file", &br], vec![], "line 2"),
    ];
    for (args, env, needle) in &cases {
        let run = lab.etcdops(1, args, env);
        run.code(2).one_line_error(needle);
        let after = (
            tree_bytes(&kube),
            tree_bytes(&state),
            tree_bytes(&lab.data_dir(1)),
        );
        assert!(
            before == after,
            "{args:?} changed something\n{}",
            run.dump()
        );
    }

    // A flipped ciphertext byte is a verification failure (exit 1), not a key problem.
    let mut bytes = fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let tampered = lab.path().join("tampered.tar.zst.age");
    fs::write(&tampered, &bytes).unwrap();
    let t = tampered.display().to_string();
    let k = keys.age_key.display().to_string();
    let run = lab.etcdops(
        1,
        &["-o", "json", "backup", "verify", &t, "--identity", &k],
        &[],
    );
    run.code(1);
    let j = run.json();
    assert_eq!(j["ok"], false);
    assert!(
        j["problems"][0]
            .as_str()
            .unwrap()
            .contains("truncated or corrupt"),
        "{}",
        run.dump()
    );
}

/// `restore apply --identity` on a 1-node lab: the keys written after the backup are gone,
/// the ones before it are back.
#[test]
fn age_restore_apply_with_identity_brings_back_the_backup() {
    let (lab, keys, archive, report) = lab_with_encrypted_archive();
    put_keys(&lab, "/after/", 4);
    let a = archive.display().to_string();
    let k = keys.ssh_key.display().to_string();
    let etcdutl = Version::V36.etcdutl().display().to_string();
    let run = lab.etcdops(
        1,
        &[
            "-o",
            "json",
            "restore",
            "apply",
            "--from",
            &a,
            "--yes",
            "--etcdutl",
            &etcdutl,
        ],
        &[("ETCDOPS_IDENTITY", &k)],
    );
    run.code(0);
    assert_eq!(run.json()["state"], "completed", "{}", run.dump());
    let out = lab.etcdctl(&["get", "/", "--prefix", "--keys-only"]);
    let keys_now = String::from_utf8_lossy(&out.stdout);
    assert!(keys_now.contains("/dr/key10"), "{keys_now}");
    assert!(!keys_now.contains("/after/"), "{keys_now}");
    let count = keys_now.lines().filter(|l| !l.is_empty()).count() as u64;
    assert_eq!(count, report["key_count"].as_u64().unwrap());
}

/// doctor: an encrypted archive is fine, a plain one warns, and so does an archive or a
/// snapshot that group or others can read; the fix (chmod) clears it.
#[test]
fn age_doctor_warns_about_plain_and_readable_copies() {
    let (lab, _keys, archive, _) = lab_with_encrypted_archive();
    let doctor = |lab: &Lab| {
        let run = lab.etcdops(1, &["-o", "json", "doctor", "--check", "backups"], &[]);
        run.code(0);
        let doc = run.json();
        let get = |id: &str| {
            doc["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["id"] == id)
                .cloned()
                .unwrap_or_else(|| panic!("no {id}\n{}", run.dump()))
        };
        (get("backups.encrypted"), get("backups.perms"))
    };
    let (enc, perms) = doctor(&lab);
    assert_eq!(enc["status"], "ok", "{enc}");
    assert_eq!(perms["status"], "ok", "{perms}");

    backup(&lab, &[]).code(0);
    let (enc, _) = doctor(&lab);
    assert_eq!(enc["status"], "warn", "{enc}");
    assert!(
        enc["evidence"].as_str().unwrap().contains("1 of 2"),
        "{enc}"
    );
    assert!(enc["fix"].as_str().unwrap().contains("--recipients-file"));

    // An archive and a run's snapshot readable by others.
    fs::set_permissions(&archive, fs::Permissions::from_mode(0o644)).unwrap();
    let run_dir = lab.state_dir(1).join("runs/20261201T000000Z-test");
    fs::create_dir_all(&run_dir).unwrap();
    let snap = run_dir.join("snapshot.db");
    fs::write(&snap, b"not really a snapshot").unwrap();
    fs::set_permissions(&snap, fs::Permissions::from_mode(0o640)).unwrap();
    let (_, perms) = doctor(&lab);
    assert_eq!(perms["status"], "warn", "{perms}");
    let evidence = perms["evidence"].as_str().unwrap();
    assert!(
        evidence.contains("0644") && evidence.contains("snapshot.db"),
        "{evidence}"
    );
    let fix = perms["fix"].as_str().unwrap();
    sh(fix);
    let (_, perms) = doctor(&lab);
    assert_eq!(perms["status"], "ok", "{perms}");
    fs::remove_dir_all(&run_dir).unwrap();
}
