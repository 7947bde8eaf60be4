//! `etcdops manifest show` and `manifest set-data-path`, run as the real binary against
//! manifests in a fresh temp dir laid out like a node (`etc/kubernetes/manifests`, a state
//! dir). No etcd needed. Every refusal is checked for exit 2, a one-line reason, and an
//! unchanged tree: same bytes, same modes, no new file anywhere.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use etcdops::manifest::rewrite::{SetDataPath, set_data_path};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/manifests");

fn fixture(name: &str) -> String {
    fs::read_to_string(Path::new(FIXTURES).join(name)).expect("fixture")
}

/// A node in a temp dir: the manifests dir with one etcd.yaml, and a state dir path that
/// does not exist yet.
struct Node {
    root: tempfile::TempDir,
}

impl Node {
    fn new(manifest: &str) -> Node {
        let node = Node {
            root: tempfile::tempdir().expect("tempdir"),
        };
        fs::create_dir_all(node.manifests_dir()).unwrap();
        fs::write(node.manifest(), manifest).unwrap();
        node
    }

    fn manifests_dir(&self) -> PathBuf {
        self.root.path().join("etc/kubernetes/manifests")
    }

    fn manifest(&self) -> PathBuf {
        self.manifests_dir().join("etcd.yaml")
    }

    fn state_dir(&self) -> PathBuf {
        self.root.path().join("var/lib/etcdops")
    }

    fn backups(&self) -> PathBuf {
        self.state_dir().join("backups")
    }

    fn text(&self) -> String {
        fs::read_to_string(self.manifest()).unwrap()
    }

    /// Run etcdops with this node's manifest and state dir, and nothing from the caller's
    /// environment that could point it elsewhere.
    fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_with_state_dir(&self.state_dir(), args)
    }

    fn run_with_state_dir<I, S>(&self, state_dir: &Path, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdops"));
        cmd.arg("--manifest")
            .arg(self.manifest())
            .arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .current_dir(self.root.path());
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("ETCDOPS_") || k.starts_with("ETCDCTL_") {
                cmd.env_remove(k);
            }
        }
        let output = cmd.output().expect("run etcdops");
        Run {
            command: format!("{cmd:?}"),
            output,
        }
    }

    /// Every path under the root with its type, mode and content.
    fn snapshot(&self) -> BTreeMap<PathBuf, (String, u32, Vec<u8>)> {
        fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, (String, u32, Vec<u8>)>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                let mode = meta.mode();
                if meta.is_dir() {
                    out.insert(rel, ("dir".into(), mode, Vec::new()));
                    walk(&path, root, out);
                } else if meta.is_symlink() {
                    let target = fs::read_link(&path).unwrap();
                    out.insert(
                        rel,
                        (
                            "link".into(),
                            mode,
                            target.into_os_string().into_encoded_bytes(),
                        ),
                    );
                } else {
                    out.insert(rel, ("file".into(), mode, fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.root.path(), self.root.path(), &mut out);
        out
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// One finished run, which explains itself when an expectation fails.
struct Run {
    command: String,
    output: Output,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn explain(&self) -> String {
        format!(
            "command: {}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
            self.command,
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }

    fn code(&self, want: i32) -> &Self {
        assert_eq!(self.output.status.code(), Some(want), "{}", self.explain());
        self
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.output.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.explain()))
    }

    /// Exit 2 with exactly one line on stderr that contains `needle`.
    fn refused(&self, needle: &str) {
        self.code(2);
        let err = self.stderr();
        assert_eq!(err.lines().count(), 1, "{}", self.explain());
        assert!(err.starts_with("etcdops: "), "{}", self.explain());
        assert!(err.contains(needle), "want {needle:?}\n{}", self.explain());
    }
}

// ---------------------------------------------------------------------------------------
// show

#[test]
fn show_kubeadm_v1_28_resolves_data_volume_endpoint_and_tls() {
    let node = Node::new(&fixture("kubeadm-v1.28.yaml"));
    let run = node.run(["-o", "json", "manifest", "show"]);
    run.code(0);
    let j = run.json();
    assert_eq!(j["manifest"], node.manifest().to_str().unwrap());
    assert_eq!(j["pod"], "kube-system/etcd");
    assert_eq!(j["data_dir"], "/var/lib/etcd");
    assert_eq!(j["data_volume"], "etcd-data");
    assert_eq!(j["host_path"], "/var/lib/etcd");
    assert_eq!(j["host_path_type"], "DirectoryOrCreate");
    assert_eq!(j["mount_path"], "/var/lib/etcd");
    assert_eq!(
        j["endpoints"],
        serde_json::json!(["https://127.0.0.1:2379"])
    );
    assert_eq!(j["cacert"], "/etc/kubernetes/pki/etcd/ca.crt");
    assert_eq!(j["cert"], "/etc/kubernetes/pki/etcd/server.crt");
    assert_eq!(j["key"], "/etc/kubernetes/pki/etcd/server.key");
    assert_eq!(j["warnings"], serde_json::json!([]), "{}", run.explain());

    let table = node.run(["manifest", "show"]);
    table.code(0);
    let out = table.stdout();
    for want in [
        "data volume     etcd-data",
        "host path       /var/lib/etcd",
        "host path type  DirectoryOrCreate",
        "endpoints       https://127.0.0.1:2379",
    ] {
        assert!(out.contains(want), "want {want:?}\n{}", table.explain());
    }
}

#[test]
fn show_kubeadm_v1_31() {
    let node = Node::new(&fixture("kubeadm-v1.31.yaml"));
    let run = node.run(["-o", "json", "manifest", "show"]);
    run.code(0);
    let j = run.json();
    assert_eq!(j["data_volume"], "etcd-data");
    assert_eq!(j["host_path"], "/var/lib/etcd");
    assert_eq!(
        j["endpoints"],
        serde_json::json!(["https://127.0.0.1:2379"])
    );
}

#[test]
fn show_hand_edited_maps_certs_through_their_own_volume() {
    let node = Node::new(&fixture("hand-edited.yaml"));
    let run = node.run(["-o", "json", "manifest", "show"]);
    run.code(0);
    let j = run.json();
    assert_eq!(j["data_volume"], "data");
    assert_eq!(j["host_path"], "/mnt/nvme0/etcd");
    assert_eq!(j["mount_path"], "/var/lib/etcd");
    assert_eq!(j["cacert"], "/etc/kubernetes/pki/etcd/ca.crt");
}

#[test]
fn show_split_args_and_plain_http() {
    let node = Node::new(&fixture("split-args.yaml"));
    let run = node.run(["-o", "json", "manifest", "show"]);
    run.code(0);
    let j = run.json();
    assert_eq!(j["pod"], "kube-system/etcd-cp-c");
    assert_eq!(j["data_dir"], "/data/etcd");
    assert_eq!(j["data_volume"], "etcd-store");
    assert_eq!(j["host_path"], "/srv/etcd");
    assert_eq!(j["host_path_type"], "Directory");
    assert_eq!(j["endpoints"], serde_json::json!(["http://10.0.0.13:2379"]));
    assert_eq!(j["cacert"], Value::Null);
}

#[test]
fn show_warns_about_every_file_kubelet_would_also_start() {
    let node = Node::new(&fixture("kubeadm-v1.28.yaml"));
    let dir = node.manifests_dir();
    // Would be started by kubelet: a backup, an editor leftover, a second etcd manifest.
    fs::write(dir.join("etcd.yaml.bak"), fixture("kubeadm-v1.28.yaml")).unwrap();
    fs::write(dir.join("etcd.yaml~"), "x").unwrap();
    fs::write(dir.join("etcd-old.yaml"), fixture("kubeadm-v1.31.yaml")).unwrap();
    // Fine: dotfiles are ignored by kubelet, other control-plane pods belong there.
    fs::write(dir.join(".etcd.yaml.swp"), "x").unwrap();
    fs::write(
        dir.join("kube-scheduler.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-scheduler\nspec:\n  containers:\n  - name: kube-scheduler\n    command: [kube-scheduler]\n",
    )
    .unwrap();
    let run = node.run(["-o", "json", "manifest", "show"]);
    run.code(0);
    let warnings: Vec<String> = run.json()["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    for name in ["etcd.yaml.bak", "etcd.yaml~", "etcd-old.yaml"] {
        assert!(
            warnings.iter().any(|w| w.contains(name)),
            "{name}: {warnings:#?}"
        );
    }
    let table = node.run(["manifest", "show"]);
    assert!(
        table.stdout().contains("warning: ") && table.stdout().contains("etcd.yaml.bak"),
        "{}",
        table.explain()
    );
}

// ---------------------------------------------------------------------------------------
// set-data-path: real-world manifests

/// Set the data path and check that exactly `old_line` became `new_line`, that the backup
/// holds the original (0600 in a 0700 dir) and that nothing new is in the manifests dir.
fn set_and_check(manifest: &str, new: &str, old_line: &str, new_line: &str) -> Node {
    let node = Node::new(manifest);
    fs::set_permissions(node.manifest(), fs::Permissions::from_mode(0o640)).unwrap();
    let before = node.text();
    assert_eq!(before.matches(old_line).count(), 1, "fixture: {old_line:?}");
    let listing = Node::names_in(&node.manifests_dir());

    let run = node.run(["-o", "json", "manifest", "set-data-path", new]);
    run.code(0);
    let j = run.json();
    assert_eq!(j["manifest"], node.manifest().to_str().unwrap());
    assert_eq!(j["new_host_path"], new);
    assert_eq!(j["changed"], true);

    let after = node.text();
    assert_eq!(
        after,
        before.replace(old_line, new_line),
        "{}",
        run.explain()
    );
    assert_eq!(Node::names_in(&node.manifests_dir()), listing);
    let meta = fs::metadata(node.manifest()).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);

    let backup = PathBuf::from(j["backup"].as_str().expect("backup path"));
    assert_eq!(backup.parent().unwrap(), node.backups());
    let name = backup.file_name().unwrap().to_str().unwrap();
    let stamp = name.strip_prefix("etcd.yaml.").expect(name);
    assert!(
        stamp.len() == 16 && stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T',
        "{name}"
    );
    assert_eq!(fs::read_to_string(&backup).unwrap(), before);
    assert_eq!(fs::metadata(&backup).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(node.backups()).unwrap().mode() & 0o777, 0o700);
    assert_eq!(Node::names_in(&node.backups()).len(), 1);

    // What show now reports.
    let shown = node.run(["-o", "json", "manifest", "show"]);
    shown.code(0);
    assert_eq!(shown.json()["host_path"], new);
    node
}

#[test]
fn set_data_path_kubeadm_v1_28() {
    let node = set_and_check(
        &fixture("kubeadm-v1.28.yaml"),
        "/mnt/disk1/etcd",
        "      path: /var/lib/etcd\n",
        "      path: /mnt/disk1/etcd\n",
    );
    let text = node.text();
    // Never the container side.
    assert!(text.contains("    - --data-dir=/var/lib/etcd\n"));
    assert!(text.contains("    - mountPath: /var/lib/etcd\n"));
}

#[test]
fn set_data_path_kubeadm_v1_31() {
    set_and_check(
        &fixture("kubeadm-v1.31.yaml"),
        "/mnt/disk1/etcd",
        "      path: /var/lib/etcd\n",
        "      path: /mnt/disk1/etcd\n",
    );
}

#[test]
fn set_data_path_hand_edited_keeps_comments_quotes_and_look_alikes() {
    let node = set_and_check(
        &fixture("hand-edited.yaml"),
        "/mnt/nvme1/etcd",
        "        path: \"/mnt/nvme0/etcd\"   # keep in sync with kubeadm-config\n",
        "        path: \"/mnt/nvme1/etcd\"   # keep in sync with kubeadm-config\n",
    );
    let text = node.text();
    assert!(text.contains("        path: \"/var/lib/etcd-backup\"\n"));
    assert!(text.contains("- --data-dir=/var/lib/etcd   # the container path"));
}

#[test]
fn set_data_path_split_args_flow_style_single_quotes() {
    set_and_check(
        &fixture("split-args.yaml"),
        "/srv/etcd-new",
        "hostPath: {path: '/srv/etcd', type: Directory}",
        "hostPath: {path: '/srv/etcd-new', type: Directory}",
    );
}

#[test]
fn set_data_path_quotes_a_path_that_needs_it() {
    set_and_check(
        &fixture("kubeadm-v1.28.yaml"),
        "/mnt/disk #2/etcd",
        "      path: /var/lib/etcd\n",
        "      path: '/mnt/disk #2/etcd'\n",
    );
}

#[test]
fn set_data_path_through_a_symlinked_manifest_keeps_the_link() {
    let node = Node::new("placeholder");
    let real = node.root.path().join("srv/manifests/etcd.yaml");
    fs::create_dir_all(real.parent().unwrap()).unwrap();
    fs::write(&real, fixture("kubeadm-v1.28.yaml")).unwrap();
    fs::remove_file(node.manifest()).unwrap();
    std::os::unix::fs::symlink(&real, node.manifest()).unwrap();
    node.run(["manifest", "set-data-path", "/mnt/x"]).code(0);
    assert!(
        fs::symlink_metadata(node.manifest())
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        fs::read_to_string(&real)
            .unwrap()
            .contains("      path: /mnt/x\n")
    );
}

#[test]
fn table_output_names_the_backup_and_the_kubeadm_config_caveat() {
    let node = Node::new(&fixture("kubeadm-v1.28.yaml"));
    let run = node.run(["manifest", "set-data-path", "/mnt/x"]);
    run.code(0);
    let out = run.stdout();
    assert!(
        out.contains("old host path  /var/lib/etcd"),
        "{}",
        run.explain()
    );
    assert!(out.contains("new host path  /mnt/x"), "{}", run.explain());
    assert!(
        out.contains(node.backups().to_str().unwrap()),
        "{}",
        run.explain()
    );
    assert!(out.contains("etcd.local.dataDir"), "{}", run.explain());
    // /mnt/x holds no data: say what kubelet would do with it.
    assert!(out.contains("new, empty member"), "{}", run.explain());
}

#[test]
fn no_empty_member_warning_when_the_target_holds_data() {
    let node = Node::new(&fixture("kubeadm-v1.28.yaml"));
    let target = node.root.path().join("disk/etcd");
    fs::create_dir_all(target.join("member/snap")).unwrap();
    let run = node.run([
        OsStr::new("-o"),
        OsStr::new("json"),
        OsStr::new("manifest"),
        OsStr::new("set-data-path"),
        target.as_os_str(),
    ]);
    run.code(0);
    assert_eq!(
        run.json()["warnings"],
        serde_json::json!([]),
        "{}",
        run.explain()
    );
}

#[test]
fn dry_run_prints_a_unified_diff_and_changes_nothing() {
    let node = Node::new(&fixture("kubeadm-v1.28.yaml"));
    let before = node.snapshot();
    let run = node.run(["manifest", "set-data-path", "/mnt/x", "--dry-run"]);
    run.code(0);
    let out = run.stdout();
    let m = node.manifest();
    assert!(
        out.starts_with(&format!("--- {}\n+++ {}\n@@ -", m.display(), m.display())),
        "{}",
        run.explain()
    );
    assert!(out.contains("\n-      path: /var/lib/etcd\n+      path: /mnt/x\n"));
    let changed: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(['-', '+']) && !l.starts_with("---") && !l.starts_with("+++"))
        .collect();
    assert_eq!(changed.len(), 2, "{}", run.explain());
    assert_eq!(node.snapshot(), before, "{}", run.explain());

    let json = node.run([
        "-o",
        "json",
        "manifest",
        "set-data-path",
        "/mnt/x",
        "--dry-run",
    ]);
    json.code(0);
    let j = json.json();
    assert_eq!(j["dry_run"], true);
    assert_eq!(j["backup"], Value::Null);
    assert_eq!(j["old_host_path"], "/var/lib/etcd");
    assert!(
        j["diff"]
            .as_str()
            .unwrap()
            .contains("+      path: /mnt/x\n")
    );
    assert_eq!(node.snapshot(), before);
}

#[test]
fn the_path_it_already_has_is_a_no_op() {
    let node = Node::new(&fixture("kubeadm-v1.28.yaml"));
    let before = node.snapshot();
    let run = node.run(["-o", "json", "manifest", "set-data-path", "/var/lib/etcd"]);
    run.code(0);
    let j = run.json();
    assert_eq!(j["backup"], Value::Null);
    assert_eq!(j["changed"], false);
    assert_eq!(j["old_host_path"], "/var/lib/etcd");
    assert_eq!(j["new_host_path"], "/var/lib/etcd");
    assert_eq!(node.snapshot(), before, "{}", run.explain());
    node.run(["manifest", "set-data-path", "/var/lib/etcd"])
        .code(0);
    assert_eq!(node.snapshot(), before);
}

#[test]
fn set_data_path_warns_about_a_backup_left_in_the_manifests_dir() {
    let node = Node::new(&fixture("kubeadm-v1.28.yaml"));
    fs::write(node.manifests_dir().join("etcd.yaml.bak"), "x").unwrap();
    let run = node.run([
        "-o",
        "json",
        "manifest",
        "set-data-path",
        "/mnt/x",
        "--dry-run",
    ]);
    run.code(0);
    let warnings = run.json()["warnings"].to_string();
    assert!(warnings.contains("etcd.yaml.bak"), "{}", run.explain());
}

// ---------------------------------------------------------------------------------------
// Bad input: exit 2, one line, nothing changed, nothing created.

/// Run `set-data-path NEW` (and its `--dry-run`) against `manifest` and require a refusal
/// naming `needle` with the whole tree unchanged. `setup` may reshape the node first.
fn refused(manifest: &str, new: &str, needle: &str, setup: impl FnOnce(&Node)) {
    let node = Node::new(manifest);
    setup(&node);
    let before = node.snapshot();
    let listing = (
        Node::names_in(&node.manifests_dir()),
        Node::names_in(&node.backups()),
    );
    for dry in [false, true] {
        let mut args = vec!["manifest", "set-data-path", new];
        if dry {
            args.push("--dry-run");
        }
        node.run(&args).refused(needle);
        let json = node.run(["-o", "json"].into_iter().chain(args.iter().copied()));
        json.code(2);
        assert_eq!(json.json()["exit_code"], 2, "{}", json.explain());
        assert_eq!(node.snapshot(), before, "tree changed\n{}", json.explain());
        assert_eq!(
            (
                Node::names_in(&node.manifests_dir()),
                Node::names_in(&node.backups())
            ),
            listing
        );
    }
    assert!(!node.state_dir().exists(), "state dir created on bad input");
}

fn kubeadm() -> String {
    fixture("kubeadm-v1.28.yaml")
}

/// The kubeadm fixture with `from` replaced by `to` (which must occur once).
fn kubeadm_with(from: &str, to: &str) -> String {
    let text = kubeadm();
    assert_eq!(text.matches(from).count(), 1, "{from:?}");
    text.replace(from, to)
}

const DATA_VOLUME: &str = "  - hostPath:\n      path: /var/lib/etcd\n      type: DirectoryOrCreate\n    name: etcd-data\n";

#[test]
fn bad_malformed_yaml() {
    refused(
        "kind: Pod\nspec: [unclosed\n",
        "/mnt/x",
        "not a valid pod manifest",
        |_| {},
    );
}

#[test]
fn bad_empty_file() {
    refused("", "/mnt/x", "manifest is empty", |_| {});
}

#[test]
fn bad_only_comments() {
    refused("# nothing here\n\n", "/mnt/x", "manifest is empty", |_| {});
}

#[test]
fn bad_not_a_pod() {
    refused(
        &kubeadm_with("kind: Pod\n", "kind: Deployment\n"),
        "/mnt/x",
        "expected Pod",
        |_| {},
    );
}

#[test]
fn bad_top_level_is_a_list() {
    refused(
        "- kind: Pod\n",
        "/mnt/x",
        "not a valid pod manifest",
        |_| {},
    );
}

#[test]
fn bad_two_documents() {
    refused(
        &format!("{}---\n{}", kubeadm(), kubeadm()),
        "/mnt/x",
        "not a valid pod manifest",
        |_| {},
    );
}

#[test]
fn bad_no_etcd_container() {
    refused(
        &kubeadm_with("    - etcd\n", "    - nginx\n")
            .replace("    name: etcd\n", "    name: web\n"),
        "/mnt/x",
        "no etcd container",
        |_| {},
    );
}

#[test]
fn bad_no_data_dir_flag() {
    refused(
        &kubeadm_with("    - --data-dir=/var/lib/etcd\n", ""),
        "/mnt/x",
        "no --data-dir",
        |_| {},
    );
}

#[test]
fn bad_relative_data_dir() {
    refused(
        &kubeadm_with("--data-dir=/var/lib/etcd", "--data-dir=default.etcd"),
        "/mnt/x",
        "relative",
        |_| {},
    );
}

#[test]
fn bad_no_mount_holds_the_data_dir() {
    refused(
        &kubeadm_with(
            "    - mountPath: /var/lib/etcd\n      name: etcd-data\n",
            "",
        ),
        "/mnt/x",
        "no volumeMount of the etcd container holds /var/lib/etcd",
        |_| {},
    );
}

#[test]
fn bad_mount_names_no_volume() {
    refused(
        &kubeadm_with(DATA_VOLUME, ""),
        "/mnt/x",
        "names no volume",
        |_| {},
    );
}

#[test]
fn bad_data_volume_is_empty_dir() {
    refused(
        &kubeadm_with(DATA_VOLUME, "  - emptyDir: {}\n    name: etcd-data\n"),
        "/mnt/x",
        "source emptyDir, not hostPath",
        |_| {},
    );
}

#[test]
fn bad_data_volume_is_a_pvc() {
    refused(
        &kubeadm_with(
            DATA_VOLUME,
            "  - name: etcd-data\n    persistentVolumeClaim:\n      claimName: etcd\n",
        ),
        "/mnt/x",
        "source persistentVolumeClaim, not hostPath",
        |_| {},
    );
}

#[test]
fn bad_two_volumes_with_the_data_name() {
    refused(
        &format!("{}{DATA_VOLUME}", kubeadm().replace("status: {}\n", "")),
        "/mnt/x",
        "two volumes are named",
        |_| {},
    );
}

#[test]
fn bad_empty_host_path() {
    refused(
        &kubeadm_with("      path: /var/lib/etcd\n", "      path: \"\"\n"),
        "/mnt/x",
        "empty hostPath.path",
        |_| {},
    );
}

#[test]
fn bad_data_dir_below_the_mount() {
    // The volume holds more than the data dir: moving it would move the rest too.
    refused(
        &kubeadm_with(
            "--data-dir=/var/lib/etcd",
            "--data-dir=/var/lib/etcd/member0",
        ),
        "/mnt/x",
        "not the whole volume",
        |_| {},
    );
}

#[test]
fn bad_sub_path_mount() {
    refused(
        &kubeadm_with(
            "    - mountPath: /var/lib/etcd\n      name: etcd-data\n",
            "    - mountPath: /var/lib/etcd\n      name: etcd-data\n      subPath: cp1\n",
        ),
        "/mnt/x",
        "subPath cp1",
        |_| {},
    );
}

#[test]
fn bad_block_scalar_path() {
    refused(
        &kubeadm_with(
            "      path: /var/lib/etcd\n",
            "      path: |-\n        /var/lib/etcd\n",
        ),
        "/mnt/x",
        "block scalar",
        |_| {},
    );
}

#[test]
fn bad_aliased_path() {
    refused(
        &kubeadm_with("      path: /var/lib/etcd\n", "      path: *data\n").replace(
            "    tier: control-plane\n",
            "    tier: control-plane\n    data: &data /var/lib/etcd\n",
        ),
        "/mnt/x",
        "alias",
        |_| {},
    );
}

#[test]
fn bad_not_utf8() {
    let node_text = "kind: Pod\n";
    refused(node_text, "/mnt/x", "cannot read manifest", |node| {
        let mut bytes = fixture("kubeadm-v1.28.yaml").into_bytes();
        bytes.extend_from_slice(b"# \xff\xfe\n");
        fs::write(node.manifest(), bytes).unwrap();
    });
}

#[test]
fn bad_missing_manifest() {
    refused("", "/mnt/x", "cannot read manifest", |node| {
        fs::remove_file(node.manifest()).unwrap();
    });
}

#[test]
fn bad_manifest_is_a_directory() {
    refused("", "/mnt/x", "is a directory", |node| {
        fs::remove_file(node.manifest()).unwrap();
        fs::create_dir(node.manifest()).unwrap();
    });
}

#[test]
fn bad_new_is_relative() {
    refused(&kubeadm(), "mnt/etcd", "is relative", |_| {});
}

#[test]
fn bad_new_has_a_newline() {
    refused(&kubeadm(), "/mnt/x\n  extra: 1", "line break", |_| {});
}

#[test]
fn bad_new_has_a_tab() {
    refused(&kubeadm(), "/mnt/a\tb", "control character", |_| {});
}

#[test]
fn bad_new_has_dot_dot() {
    refused(&kubeadm(), "/mnt/../etc", "'..'", |_| {});
}

#[test]
fn bad_new_is_empty() {
    refused(&kubeadm(), "", "empty", |_| {});
}

#[test]
fn bad_new_is_root() {
    refused(&kubeadm(), "/", "root directory", |_| {});
}

#[test]
fn bad_state_dir_inside_the_manifests_dir() {
    // The backup would land where kubelet starts it as a second etcd.
    let node = Node::new(&kubeadm());
    let before = node.snapshot();
    for state_dir in [node.manifests_dir(), node.manifests_dir().join("state")] {
        let run = node.run_with_state_dir(&state_dir, ["manifest", "set-data-path", "/mnt/x"]);
        run.refused("inside the manifests dir");
        assert_eq!(node.snapshot(), before, "{}", run.explain());
    }
}

/// A NUL cannot travel through argv, so the library entry point the migration uses is
/// checked directly, with the same "nothing changed" standard.
#[test]
fn bad_new_with_nul_through_the_library() {
    use std::os::unix::ffi::OsStrExt;
    let node = Node::new(&kubeadm());
    let before = node.snapshot();
    let new = Path::new(OsStr::from_bytes(b"/mnt/a\0b"));
    for dry in [false, true] {
        let err = set_data_path(&SetDataPath {
            manifest: &node.manifest(),
            new,
            backup_dir: &node.backups(),
            kubelet_dir: &node.manifests_dir(),
            dry_run: dry,
        })
        .unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(err.one_line().contains("NUL"), "{err}");
        assert_eq!(node.snapshot(), before);
    }
    assert!(!node.state_dir().exists());
}

#[test]
fn bad_manifests_also_fail_show_with_exit_2() {
    for (text, needle) in [
        ("", "manifest is empty"),
        ("kind: Pod\nspec: [unclosed\n", "not a valid pod manifest"),
        (
            &kubeadm_with(DATA_VOLUME, "  - emptyDir: {}\n    name: etcd-data\n")[..],
            "not hostPath",
        ),
    ] {
        let node = Node::new(text);
        let before = node.snapshot();
        node.run(["manifest", "show"]).refused(needle);
        assert_eq!(node.snapshot(), before);
    }
}

/// The migration's use: the manifest moved out into a run dir, the original kept beside it.
/// The backup may sit in the copy's dir, just not in kubelet's.
#[test]
fn library_rewrites_a_moved_out_copy_with_the_backup_beside_it() {
    let node = Node::new(&kubeadm());
    let run_dir = node.state_dir().join("runs/20261126T213000Z");
    fs::create_dir_all(&run_dir).unwrap();
    let moved = run_dir.join("etcd.yaml");
    fs::rename(node.manifest(), &moved).unwrap();
    let report = set_data_path(&SetDataPath {
        manifest: &moved,
        new: Path::new("/mnt/disk1/etcd"),
        backup_dir: &run_dir,
        kubelet_dir: &node.manifests_dir(),
        dry_run: false,
    })
    .unwrap();
    let backup = report.backup.expect("backup");
    assert_eq!(backup.parent().unwrap(), run_dir);
    assert_eq!(fs::read_to_string(&backup).unwrap(), kubeadm());
    assert_eq!(
        fs::read_to_string(&moved).unwrap(),
        kubeadm().replace(
            "      path: /var/lib/etcd\n",
            "      path: /mnt/disk1/etcd\n"
        )
    );
    assert!(Node::names_in(&node.manifests_dir()).is_empty());

    // Still never into kubelet's dir.
    let err = set_data_path(&SetDataPath {
        manifest: &moved,
        new: Path::new("/mnt/disk2/etcd"),
        backup_dir: &node.manifests_dir(),
        kubelet_dir: &node.manifests_dir(),
        dry_run: false,
    })
    .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(Node::names_in(&node.manifests_dir()).is_empty());
}
