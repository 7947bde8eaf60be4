//! contrib/ansible/migrate-etcd.yml run by `ansible-playbook` (Debian's ansible-core) on a
//! real 3-node lab: one inventory host per lab node with `ansible_connection: local` and
//! every operator setting in host_vars (etcdops_env from `etcdops-lab env`, the binary, the
//! target, the gates). Before the fix in the playbook, its play `vars:` outranked host_vars
//! and etcdops ran without the node's environment: this test then fails at the first node.
//!
//! First run: node 2's target is a 32 MiB ext4 loop device, too small for its data, so
//! node 1 is migrated, node 2 refused (nothing changed there) and the play stops before
//! node 3. Then node 2's target is its own filesystem again and a rerun skips node 1 and
//! migrates nodes 2 and 3: cluster healthy, every key intact. A third run skips all three.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Version;
use common::lab::Lab;

/// A small ext4 filesystem on a loop device, mounted at `mnt`; unmounted and detached on
/// drop, also when the test panics.
struct LoopDisk {
    image: PathBuf,
    dev: String,
    mnt: PathBuf,
    mounted: bool,
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl LoopDisk {
    fn mount(image: PathBuf, bytes: u64, mnt: &Path) -> LoopDisk {
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(bytes))
            .expect("create the disk image");
        run_ok(Command::new("mkfs.ext4").arg("-q").arg(&image));
        let dev = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(&image));
        let mut disk = LoopDisk {
            image,
            dev,
            mnt: mnt.to_path_buf(),
            mounted: false,
        };
        std::fs::create_dir_all(mnt).unwrap();
        run_ok(Command::new("mount").arg(&disk.dev).arg(mnt));
        disk.mounted = true;
        disk
    }

    fn unmount(&mut self) {
        if self.mounted {
            run_ok(Command::new("umount").arg(&self.mnt));
            self.mounted = false;
        }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The inventory: group control_plane, host_vars per node.
fn write_inventory(lab: &Lab, dir: &Path, targets: &[PathBuf]) -> PathBuf {
    let inv = dir.join("inventory");
    std::fs::create_dir_all(inv.join("host_vars")).unwrap();
    let mut hosts = String::from("control_plane:\n  hosts:\n");
    for n in 1..=lab.nodes {
        hosts.push_str(&format!("    node{n}:\n"));
        let env: serde_json::Map<String, serde_json::Value> = lab
            .env(n)
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        let vars = serde_json::json!({
            "ansible_connection": "local",
            "ansible_python_interpreter": "/usr/bin/python3",
            // root already, and no sudo here: the play's `become: true` must not need it.
            "ansible_become": false,
            "etcdops_env": env,
            "etcdops_bin": env!("CARGO_BIN_EXE_etcdops"),
            "etcd_new_data_dir": targets[n - 1],
            "etcd_require_mountpoint": false,
            "etcdops_health_retries": 60,
            "etcdops_health_delay": 1,
            "etcdops_apply_extra_args": ["--stop-timeout", "60s", "--start-timeout", "120s"],
            // The lab's targets are on its own filesystem (node 2's too, once its small disk
            // is unmounted), which migrate refuses unless told.
            "etcdops_target_args": ["--same-filesystem"],
            "etcdops_apply_timeout": 600,
        });
        std::fs::write(
            inv.join(format!("host_vars/node{n}.yml")),
            serde_json::to_string_pretty(&vars).unwrap(),
        )
        .unwrap();
    }
    std::fs::write(inv.join("hosts.yml"), hosts).unwrap();
    inv
}

struct Play {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Play {
    fn dump(&self, lab: &Lab) -> String {
        format!(
            "ansible-playbook exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
            self.code,
            self.stdout,
            self.stderr,
            lab.logs()
        )
    }

    /// The PLAY RECAP line of a host, if the play reached it.
    fn recap(&self, host: &str) -> Option<&str> {
        let recap = self.stdout.split("PLAY RECAP").nth(1)?;
        recap
            .lines()
            .find(|l| l.split_whitespace().next() == Some(host))
    }
}

fn play(inv: &Path, home: &Path) -> Play {
    play_book(inv, home, "contrib/ansible/migrate-etcd.yml", &[])
}

fn play_book(inv: &Path, home: &Path, book: &str, extra: &[&str]) -> Play {
    let cfg = home.join("ansible.cfg");
    std::fs::write(&cfg, "[defaults]\n").unwrap();
    let out = Command::new("ansible-playbook")
        .arg("-i")
        .arg(inv)
        .arg(repo_file(book))
        .args(extra)
        // Only ours: no ansible.cfg of the working dir or the user, no colour, no retry files.
        .env("ANSIBLE_CONFIG", &cfg)
        .env("ANSIBLE_HOME", home)
        .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
        .env("ANSIBLE_REMOTE_TEMP", home.join("remote-tmp"))
        .env("ANSIBLE_ASYNC_DIR", home.join("async"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .env("LC_ALL", "C.UTF-8")
        .env_remove("ETCDOPS_MANIFEST")
        .env_remove("ETCDOPS_STATE_DIR")
        .output()
        .expect("run ansible-playbook (scripts/install-deps.sh installs ansible-core)");
    Play {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn data_host_path(lab: &Lab, node: usize) -> String {
    let run = lab.etcdops(node, &["manifest", "show", "-o", "json"], &[]);
    run.code(0);
    run.json()["data_host_path"]
        .as_str()
        .unwrap_or_else(|| panic!("no data_host_path\n{}", run.dump()))
        .to_string()
}

fn keys(lab: &Lab) -> String {
    let out = lab.etcdctl(&["get", "--prefix", "ansible/"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rolling_migration_playbook_on_a_lab_stops_at_a_failing_node_then_finishes() {
    let lab = Lab::up(Version::V36, 3);
    for i in 0..40 {
        let out = lab.etcdctl(&["put", &format!("ansible/{i:03}"), &format!("value {i}")]);
        assert!(out.status.success(), "{out:?}");
    }
    let before_keys = keys(&lab);
    assert_eq!(before_keys.lines().count(), 80, "{before_keys}");
    let old: Vec<String> = (1..=3).map(|n| data_host_path(&lab, n)).collect();

    // Each node's new disk is a dir on the node's own filesystem (not tmpfs: migrate refuses
    // volatile targets); node 2's is a loop device too small for its data.
    let disks: Vec<PathBuf> = (1..=3)
        .map(|n| lab.node_dir(n).join("mnt/etcd-disk"))
        .collect();
    for d in &disks {
        std::fs::create_dir_all(d).unwrap();
    }
    let targets: Vec<PathBuf> = disks.iter().map(|d| d.join("etcd")).collect();
    let mut small = LoopDisk::mount(lab.path().join("node2-disk.img"), 32 << 20, &disks[1]);

    let work = tempfile::tempdir().unwrap();
    let inv = write_inventory(&lab, work.path(), &targets);
    let manifest = |n: usize| std::fs::read(lab.manifest(n)).unwrap();
    let (m2, m3) = (manifest(2), manifest(3));

    let first = play(&inv, work.path());
    assert_ne!(first.code, 0, "{}", first.dump(&lab));
    assert_eq!(
        data_host_path(&lab, 1),
        targets[0].display().to_string(),
        "node 1 not migrated\n{}",
        first.dump(&lab)
    );
    // Node 2 refused before changing anything, and said why; node 3 was never reached.
    assert_eq!(manifest(2), m2, "{}", first.dump(&lab));
    // Refused by `migrate plan`'s preflight (free space), which changes nothing.
    let why = "not enough free space on the filesystem of";
    assert!(
        first
            .stdout
            .contains("Plan the migration (etcdops migrate plan, changes nothing)")
            && first.stdout.contains("failed (exit 4)")
            && first.stdout.contains(why),
        "{}",
        first.dump(&lab)
    );
    assert!(
        std::fs::read_dir(&disks[1])
            .unwrap()
            .all(|e| e.unwrap().file_name() == "lost+found"),
        "node 2's small disk was written to\n{}",
        first.dump(&lab)
    );
    assert_eq!(manifest(3), m3);
    assert_eq!(first.recap("node3"), None, "{}", first.dump(&lab));
    assert!(
        !lab.state_dir(3).join("runs").exists(),
        "{}",
        first.dump(&lab)
    );
    assert!(!targets[2].exists());

    // Node 2 gets room: its target is back on the node's own filesystem.
    small.unmount();
    let second = play(&inv, work.path());
    assert_eq!(second.code, 0, "{}", second.dump(&lab));
    assert!(
        second.stdout.contains(&format!(
            "node1: etcd's data is already at {}",
            targets[0].display()
        )),
        "{}",
        second.dump(&lab)
    );
    for n in 1..=3 {
        assert_eq!(
            data_host_path(&lab, n),
            targets[n - 1].display().to_string()
        );
        assert_ne!(old[n - 1], targets[n - 1].display().to_string());
    }
    let run = lab.etcdops(1, &["health", "--cluster"], &[]);
    run.code(0);
    assert_eq!(keys(&lab), before_keys);

    // Everything migrated: a rerun changes nothing.
    let third = play(&inv, work.path());
    assert_eq!(third.code, 0, "{}", third.dump(&lab));
    for n in 1..=3 {
        let recap = third.recap(&format!("node{n}")).unwrap_or("");
        assert!(recap.contains("changed=0"), "{}", third.dump(&lab));
    }
}

/// contrib/ansible/restore-etcd.yml on a real 3-node lab (3.6): first with an archive that
/// does not exist, then with the real (age-encrypted) archive but no identity — each time
/// `restore plan` refuses on every node and the play stops before any node is touched
/// (manifests and state dirs byte for byte); then with the archive and
/// `etcd_restore_identity`: every node restored at once, `health --cluster` healthy, the
/// keys of the backup back and the keys written after it gone.
#[test]
fn whole_cluster_restore_playbook_on_a_lab() {
    let lab = Lab::up(Version::V36, 3);
    for i in 0..20 {
        let out = lab.etcdctl(&["put", &format!("ansible/{i:03}"), "before"]);
        assert!(out.status.success(), "{out:?}");
    }
    // Encrypted to a key made by the reference tool; the private key is given to the play.
    let key = lab.path().join("recovery.key");
    let made = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let recipient = std::process::Command::new("age-keygen")
        .arg("-y")
        .arg(&key)
        .output()
        .unwrap();
    let recipient = String::from_utf8(recipient.stdout)
        .unwrap()
        .trim()
        .to_string();
    let backup = lab.etcdops(1, &["-o", "json", "backup", "--recipient", &recipient], &[]);
    backup.code(0);
    let archive = backup.json()["archive"].as_str().unwrap().to_string();
    assert!(archive.ends_with(".tar.zst.age"), "{archive}");
    for i in 0..5 {
        let out = lab.etcdctl(&["put", &format!("ansible/after/{i}"), "after"]);
        assert!(out.status.success(), "{out:?}");
    }
    let work = tempfile::tempdir().unwrap();
    let targets: Vec<PathBuf> = (1..=3).map(|n| lab.data_dir(n)).collect();
    let inv = write_inventory(&lab, work.path(), &targets);
    // The restore tool of the lab's etcd, for every node.
    let etcdutl = Version::V36.etcdutl().display().to_string();
    for n in 1..=3 {
        let path = inv.join(format!("host_vars/node{n}.yml"));
        let mut vars: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        vars["etcdops_restore_args"] = serde_json::json!(["--etcdutl", etcdutl]);
        vars["etcdops_apply_extra_args"] = serde_json::json!(["--quorum-timeout", "120s"]);
        std::fs::write(&path, serde_json::to_string_pretty(&vars).unwrap()).unwrap();
    }
    let book = "contrib/ansible/restore-etcd.yml";
    let state = |n: usize| {
        (
            std::fs::read(lab.manifest(n)).unwrap(),
            if lab.state_dir(n).exists() {
                common::tree_bytes(&lab.state_dir(n))
            } else {
                Vec::new()
            },
        )
    };
    let before: Vec<_> = (1..=3).map(state).collect();
    let missing = lab.path().join("missing.tar.zst").display().to_string();
    for (from, says) in [
        (missing.as_str(), "no such archive or snapshot file"),
        (archive.as_str(), "--identity"),
    ] {
        let refused = play_book(
            &inv,
            work.path(),
            book,
            &["-e", &format!("etcd_restore_from={from}")],
        );
        assert_ne!(refused.code, 0, "{}", refused.dump(&lab));
        assert!(refused.stdout.contains(says), "{}", refused.dump(&lab));
        assert!(
            !refused.stdout.contains("etcdops restore apply"),
            "{}",
            refused.dump(&lab)
        );
        for n in 1..=3 {
            assert_eq!(
                state(n),
                before[n - 1],
                "node {n} changed by a refused play"
            );
        }
    }

    let done = play_book(
        &inv,
        work.path(),
        book,
        &[
            "-e",
            &format!("etcd_restore_from={archive}"),
            "-e",
            &format!("etcd_restore_identity={}", key.display()),
        ],
    );
    assert_eq!(done.code, 0, "{}", done.dump(&lab));
    for n in 1..=3 {
        let recap = done.recap(&format!("node{n}")).unwrap_or("");
        assert!(recap.contains("changed=1"), "{}", done.dump(&lab));
        assert_eq!(lab.count_on(n, "ansible/after/"), Some(0), "node {n}");
        assert_eq!(lab.count_on(n, "ansible/0"), Some(20), "node {n}");
    }
    // One token for every node of the attempt: one restored cluster id, the one the play
    // showed.
    let shown = done
        .stdout
        .split("restored cluster id ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_hexdigit()).next())
        .unwrap_or_else(|| panic!("the play shows no restored cluster id\n{}", done.dump(&lab)))
        .to_string();
    for n in 1..=3 {
        let out = lab.etcdctl_node(n, &["endpoint", "status", "-w", "json"]);
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let id = format!(
            "{:x}",
            v[0]["Status"]["header"]["cluster_id"].as_u64().unwrap()
        );
        assert_eq!(id, shown, "node {n}");
    }
    lab.etcdops(1, &["health", "--cluster"], &[]).code(0);
}
