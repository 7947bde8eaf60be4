//! `etcdops datadir check | copy | verify | sums` on data dirs written by real etcd 3.5 and
//! 3.5: quiesce detection against a running etcd, owner/mode/mtime preservation, the source
//! left byte-identical, every kind of difference found, b3sum compatibility, refusals that
//! change nothing, a full filesystem (a tiny tmpfs, unmounted even on panic), ENOSPC and
//! interrupts in the middle of a copy leaving nothing behind.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Spec, Version, args, etcdops, tree_bytes};
use etcdops::datadir::{self, CopyOptions, Progress, Silent};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

/// A 1-member cluster of `version` with some keys, stopped (SIGKILL, as a crash or a
/// kubelet kill leaves it): its `members[0].data_dir` is a real, quiesced data dir.
fn stopped_cluster(version: Version) -> Cluster {
    let mut cluster = Cluster::start(Spec::new(version, 1));
    cluster.put_many("key", 300, 1024);
    cluster.stop_all();
    cluster
}

fn run(a: &[&str]) -> common::Run {
    etcdops(&args(a), &[], None)
}

fn p(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// (relative path, kind, mode, uid, gid, mtime s, mtime ns, size of files) of the root and
/// every entry below it: what a copy must keep.
type MetaLine = (String, &'static str, u32, u32, u32, i64, i64, u64);

fn tree_meta(root: &Path) -> Vec<MetaLine> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let m = fs::symlink_metadata(&path).unwrap();
        let kind = if m.is_dir() {
            "dir"
        } else if m.is_file() {
            "file"
        } else {
            "other"
        };
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        out.push((
            rel,
            kind,
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec(),
            if m.is_file() { m.len() } else { 0 },
        ));
        if m.is_dir() {
            for e in fs::read_dir(&path).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

/// Give every entry a distinct past mtime with nanoseconds, so that a copy that does not
/// keep mtimes cannot match by luck. Deepest first: setting a child's time leaves the
/// parent's alone, but be explicit about the order anyway.
fn set_distinct_mtimes(root: &Path) {
    let mut paths: Vec<PathBuf> = tree_meta(root)
        .into_iter()
        .map(|l| root.join(l.0))
        .collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, path) in paths.iter().enumerate() {
        set_mtime(
            path,
            1_600_000_000 + i as i64 * 1000,
            123_456_789 + i as i64,
        );
    }
}

fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    let t = TimeSpec::new(secs, nanos);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

fn mtime_of(path: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.mtime(), m.mtime_nsec())
}

fn chown_tree(root: &Path, uid: u32, gid: u32) {
    for line in tree_meta(root) {
        std::os::unix::fs::lchown(root.join(line.0), Some(uid), Some(gid)).unwrap();
    }
}

/// Entries of `parent` whose name marks them as our staging dirs.
fn staging_dirs(parent: &Path) -> Vec<String> {
    fs::read_dir(parent)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("etcdops-staging"))
                .collect()
        })
        .unwrap_or_default()
}

fn wal_segment(dir: &Path) -> PathBuf {
    let wal = dir.join("member/wal");
    let mut segs: Vec<PathBuf> = fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    segs.remove(0)
}

fn differences(run: &common::Run) -> BTreeSet<(String, String)> {
    run.json()["differences"]
        .as_array()
        .unwrap_or_else(|| panic!("no differences array\n{}", run.dump()))
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_string(),
                d["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(p, k)| (p.to_string(), k.to_string()))
        .collect()
}

/// The whole life of a data dir: running (check 4, copy refused and nothing created),
/// stopped (check 0), copied with owner/mode/mtime kept and the source untouched, verified
/// identical, summed for b3sum, then every kind of difference detected in copies.
fn lifecycle(version: Version) {
    let mut cluster = Cluster::start(Spec::new(version, 1));
    cluster.put_many("key", 300, 1024);
    let src = cluster.members[0].data_dir.clone();
    let scratch = tempfile::tempdir().unwrap();
    let dst = scratch.path().join("etcd");

    // Running: etcd's locks say so.
    let r = run(&["-o", "json", "datadir", "check", p(&src)]);
    r.code(4).one_line_error("etcd is running");
    let doc = r.json();
    assert_eq!(doc["quiesced"], false, "{}", r.dump());
    let in_use: Vec<&str> = doc["in_use"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(in_use.contains(&"member/snap/db"), "{}", r.dump());
    assert!(
        in_use.iter().any(|f| f.ends_with(".wal")),
        "the newest WAL segment is OFD-locked\n{}",
        r.dump()
    );
    let r = run(&["datadir", "copy", p(&src), p(&dst)]);
    r.code(4).one_line_error("etcd is running");
    assert!(!dst.exists(), "no target for a live source");
    assert!(staging_dirs(scratch.path()).is_empty());

    // Stopped: quiesced; owned by 999:999 like a kubeadm etcd user's files.
    cluster.stop_all();
    chown_tree(&src, 999, 999);
    set_distinct_mtimes(&src);
    for (rel, kind, mode, uid, gid, ..) in tree_meta(&src) {
        let expected = if kind == "dir" { 0o700 } else { 0o600 };
        assert_eq!(mode, expected, "etcd made {rel} {mode:o}");
        assert_eq!((uid, gid), (999, 999));
    }
    let r = run(&["-o", "json", "datadir", "check", p(&src)]);
    r.code(0);
    let doc = r.json();
    assert_eq!(doc["quiesced"], true, "{}", r.dump());
    assert!(doc["db_size"].as_u64().unwrap() > 0, "{}", r.dump());
    assert!(doc["wal_files"].as_u64().unwrap() >= 1, "{}", r.dump());

    let bytes_before = tree_bytes(&src);
    let meta_before = tree_meta(&src);
    let sums_file = scratch.path().join("src.b3");
    let r = run(&[
        "-o",
        "json",
        "datadir",
        "copy",
        "--sums",
        p(&sums_file),
        p(&src),
        p(&dst),
    ]);
    r.code(0);
    let doc = r.json();
    assert_eq!(doc["sums_file"], p(&sums_file), "{}", r.dump());
    let total: u64 = bytes_before.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(doc["files"], bytes_before.len(), "{}", r.dump());
    assert_eq!(doc["bytes"], total, "{}", r.dump());
    assert!(doc["took_ms"].is_u64(), "{}", r.dump());
    let digest = doc["digest"].as_str().unwrap().to_string();
    assert_eq!(digest.len(), 64, "{}", r.dump());
    assert!(staging_dirs(scratch.path()).is_empty(), "staging dir left");

    // The source is untouched, and the copy has the same bytes, owners, modes and mtimes.
    assert!(tree_bytes(&src) == bytes_before, "source bytes changed");
    assert_eq!(tree_meta(&src), meta_before, "source metadata changed");
    assert_eq!(tree_meta(&dst), meta_before, "copy metadata differs");
    let copied: Vec<(PathBuf, Vec<u8>)> = tree_bytes(&dst)
        .into_iter()
        .map(|(path, b)| (src.join(path.strip_prefix(&dst).unwrap()), b))
        .collect();
    assert!(copied == bytes_before, "copy bytes differ");

    let r = run(&["-o", "json", "datadir", "verify", p(&src), p(&dst)]);
    r.code(0);
    assert_eq!(r.json()["identical"], true, "{}", r.dump());
    assert_eq!(
        r.json()["src_files_read"],
        bytes_before.len(),
        "{}",
        r.dump()
    );
    assert_eq!(differences(&r), BTreeSet::new());
    // With the copy's sums, the source is not read again.
    let verify_with_sums = || {
        run(&[
            "-o",
            "json",
            "datadir",
            "verify",
            "--sums",
            p(&sums_file),
            p(&src),
            p(&dst),
        ])
    };
    let r = verify_with_sums();
    r.code(0);
    assert_eq!(r.json()["identical"], true, "{}", r.dump());
    assert_eq!(r.json()["src_files_read"], 0, "{}", r.dump());
    assert_eq!(
        fs::metadata(&sums_file).unwrap().mode() & 0o777,
        0o600,
        "the sums file is private"
    );

    // Sums: b3sum accepts them in the copy, and the copy's digest is their blake3.
    let r = run(&["datadir", "sums", p(&dst)]);
    r.code(0);
    assert_eq!(
        blake3::hash(r.stdout.as_bytes()).to_hex().as_str(),
        digest,
        "digest = blake3 of the sums lines\n{}",
        r.dump()
    );
    assert_eq!(run(&["datadir", "sums", p(&src)]).code(0).stdout, r.stdout);
    assert_eq!(fs::read_to_string(&sums_file).unwrap(), r.stdout);
    assert_eq!(r.stdout.lines().count(), bytes_before.len(), "{}", r.dump());
    let sums_file = scratch.path().join("sums.b3");
    fs::write(&sums_file, &r.stdout).unwrap();
    let check = Command::new("b3sum")
        .arg("--check")
        .arg(&sums_file)
        .current_dir(&dst)
        .output()
        .expect("run b3sum (scripts/install-deps.sh installs it)");
    assert!(
        check.status.success(),
        "b3sum --check failed: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Round 1 of damage: content, size, mode, owner, mtime — each restored where the
    // damage itself would also move an mtime, so that exactly the intended kinds show.
    let db = dst.join("member/snap/db");
    let db_mtime = mtime_of(&db);
    let mut bytes = fs::read(&db).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&db, &bytes).unwrap();
    set_mtime(&db, db_mtime.0, db_mtime.1);
    let seg = wal_segment(&dst);
    let seg_rel = seg.strip_prefix(&dst).unwrap().display().to_string();
    let seg_mtime = mtime_of(&seg);
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(1000)
        .unwrap();
    set_mtime(&seg, seg_mtime.0, seg_mtime.1);
    fs::set_permissions(&seg, fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::lchown(dst.join("member/snap"), Some(0), Some(0)).unwrap();
    set_mtime(&dst.join("member/wal"), 1_234_567_890, 0);
    let r = run(&["-o", "json", "datadir", "verify", p(&src), p(&dst)]);
    r.code(1).one_line_error("difference");
    assert_eq!(r.json()["identical"], false, "{}", r.dump());
    assert_eq!(
        differences(&r),
        set(&[
            ("member/snap/db", "content"),
            (&seg_rel, "size"),
            (&seg_rel, "mode"),
            ("member/snap", "owner"),
            ("member/wal", "mtime"),
        ]),
        "{}",
        r.dump()
    );
    // The copy's sums find the same differences: the target is read either way.
    let r2 = verify_with_sums();
    r2.code(1);
    assert_eq!(differences(&r2), differences(&r), "{}", r2.dump());
    // The table names them too.
    let r = run(&["datadir", "verify", p(&src), p(&dst)]);
    r.code(1);
    assert!(
        r.stdout.contains("member/snap/db") && r.stdout.contains("content"),
        "{}",
        r.dump()
    );

    // Round 2 on a fresh copy: missing, extra, type, and the roots' own mode.
    let dst2 = scratch.path().join("etcd2");
    run(&["datadir", "copy", p(&src), p(&dst2)]).code(0);
    let snap_mtime = mtime_of(&dst2.join("member/snap"));
    fs::remove_file(dst2.join("member/snap/db")).unwrap();
    set_mtime(&dst2.join("member/snap"), snap_mtime.0, snap_mtime.1);
    let member_mtime = mtime_of(&dst2.join("member"));
    fs::write(dst2.join("member/stray"), b"x").unwrap();
    set_mtime(&dst2.join("member"), member_mtime.0, member_mtime.1);
    let seg2 = dst2.join(&seg_rel);
    let wal_mtime = mtime_of(&dst2.join("member/wal"));
    fs::remove_file(&seg2).unwrap();
    fs::create_dir(&seg2).unwrap();
    set_mtime(&dst2.join("member/wal"), wal_mtime.0, wal_mtime.1);
    fs::set_permissions(&dst2, fs::Permissions::from_mode(0o755)).unwrap();
    let r = run(&["-o", "json", "datadir", "verify", p(&src), p(&dst2)]);
    r.code(1);
    assert_eq!(
        differences(&r),
        set(&[
            (".", "mode"),
            ("member/snap/db", "missing"),
            ("member/stray", "extra"),
            (&seg_rel, "type"),
        ]),
        "{}",
        r.dump()
    );
    assert!(
        tree_bytes(&src) == bytes_before,
        "verify changed the source"
    );
    assert_eq!(tree_meta(&src), meta_before);
}

#[test]
fn lifecycle_3_5() {
    lifecycle(Version::V35);
}

#[test]
fn lifecycle_3_6() {
    lifecycle(Version::V36);
}

/// Every bad input: one clear line, the right exit code, nothing changed anywhere.
#[test]
fn bad_inputs_change_nothing() {
    let cluster = stopped_cluster(Version::V36);
    let src = cluster.members[0].data_dir.clone();
    let scratch = tempfile::tempdir().unwrap();
    let full = scratch.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("keep"), b"operator data").unwrap();
    let file = scratch.path().join("a-file");
    fs::write(&file, b"not a dir").unwrap();
    let not_data = scratch.path().join("not-data");
    fs::create_dir_all(not_data.join("member/snap")).unwrap();
    fs::write(not_data.join("member/snap/db"), b"").unwrap();
    let missing = scratch.path().join("missing");
    let inside = src.join("member/copy");
    let src_parent = src.parent().unwrap().to_path_buf();
    let new = scratch.path().join("new");
    let empty = scratch.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let in_empty = empty.join("sums.b3");
    let in_src = src.join("sums.b3");
    let garbage = scratch.path().join("garbage.b3");
    fs::write(&garbage, "not a sums line\n").unwrap();
    let below_missing = missing.join("etcd");

    let cases: Vec<(Vec<&str>, i32, String)> = vec![
        (vec!["copy", p(&src), p(&full)], 4, "is not empty".into()),
        (
            vec!["copy", p(&src), p(&file)],
            4,
            "is not a directory".into(),
        ),
        (
            vec!["copy", p(&src), p(&inside)],
            2,
            "is inside the source".into(),
        ),
        (
            vec!["copy", p(&src), p(&src)],
            2,
            "is inside the source".into(),
        ),
        (
            vec!["copy", p(&src), p(&src_parent)],
            2,
            "contains the source".into(),
        ),
        (
            vec!["copy", p(&missing), p(&new)],
            2,
            "does not exist".into(),
        ),
        (
            vec!["copy", p(&not_data), p(&new)],
            2,
            "not an etcd data dir".into(),
        ),
        (
            vec!["copy", p(&file), p(&new)],
            2,
            "is not a directory".into(),
        ),
        (
            vec!["copy", p(&src), p(&below_missing)],
            4,
            format!("parent {} does not exist", missing.display()),
        ),
        (
            vec!["check", p(&not_data)],
            2,
            "member/wal/ is missing".into(),
        ),
        (vec!["check", p(&missing)], 2, "does not exist".into()),
        (
            vec!["copy", "--sums", p(&in_src), p(&src), p(&new)],
            2,
            "outside the source".into(),
        ),
        (
            vec!["copy", "--sums", p(&in_empty), p(&src), p(&empty)],
            2,
            "outside the source".into(),
        ),
        (
            vec!["copy", "--sums", p(&file), p(&src), p(&new)],
            4,
            "must be new".into(),
        ),
        (
            vec!["verify", "--sums", p(&garbage), p(&src), p(&src)],
            2,
            "line 1 is not a b3sum line".into(),
        ),
        (
            vec!["verify", "--sums", p(&missing), p(&src), p(&src)],
            2,
            "does not exist".into(),
        ),
        (
            vec!["verify", p(&src), p(&missing)],
            2,
            "does not exist".into(),
        ),
        (
            vec!["verify", p(&missing), p(&src)],
            2,
            "does not exist".into(),
        ),
        (vec!["sums", p(&missing)], 2, "does not exist".into()),
        (vec!["sums", p(&file)], 2, "is not a directory".into()),
    ];
    let src_bytes = tree_bytes(&src);
    let src_meta = tree_meta(&src);
    let scratch_bytes = tree_bytes(scratch.path());
    let scratch_meta = tree_meta(scratch.path());
    for (a, code, needle) in &cases {
        let mut full_args = vec!["datadir"];
        full_args.extend(a);
        let r = run(&full_args);
        r.code(*code).one_line_error(needle);
        // JSON mode prints one document on failure too.
        let mut json_args = vec!["-o", "json"];
        json_args.extend(&full_args);
        let doc = run(&json_args).code(*code).json();
        assert_eq!(doc["exit_code"], *code);
        assert!(tree_bytes(&src) == src_bytes, "{a:?} changed the source");
        assert_eq!(tree_meta(&src), src_meta, "{a:?} changed the source");
        assert!(
            tree_bytes(scratch.path()) == scratch_bytes,
            "{a:?} changed the scratch dir"
        );
        assert_eq!(
            tree_meta(scratch.path()),
            scratch_meta,
            "{a:?} left something"
        );
        assert!(staging_dirs(&src_parent).is_empty());
    }
    // Usage errors are clap's: exit 2.
    run(&["datadir", "copy", p(&src)]).code(2);
    run(&["datadir", "frobnicate"]).code(2);
}

/// A tmpfs mounted on a fresh temp dir, unmounted when dropped — also when a test panics.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(options),
        )
        .expect("mount tmpfs (tests run as root)");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if nix::mount::umount(self.dir.path()).is_err() {
            let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A target filesystem too small for the data: refused up front, nothing written on it.
#[test]
fn tiny_tmpfs_is_refused_and_left_empty() {
    let cluster = stopped_cluster(Version::V35);
    let src = cluster.members[0].data_dir.clone();
    let fs_ = Tmpfs::mount("size=1m");
    let dst = fs_.path().join("etcd");
    let r = run(&["datadir", "copy", p(&src), p(&dst)]);
    r.code(4).one_line_error("not enough free space");
    assert_eq!(fs_.names(), Vec::<String>::new(), "{}", r.dump());
}

/// A Progress that runs `hook` once, on the first chunk copied: fault injection at a point
/// where the copy has written data and still has more to write.
struct OnFirstChunk<F: Fn()> {
    hook: F,
    fired: AtomicBool,
}

impl<F: Fn()> Progress for OnFirstChunk<F> {
    fn advance(&self, _: u64) {
        if !self.fired.swap(true, Ordering::SeqCst) {
            (self.hook)();
        }
    }
}

/// ENOSPC in the middle of a copy (the space check passed, then the filesystem filled up):
/// a failure (exit 1 class) that names the cause, and the staging dir removed.
#[test]
fn disk_full_mid_copy_leaves_nothing() {
    let cluster = stopped_cluster(Version::V35);
    let src = cluster.members[0].data_dir.clone();
    let data: u64 = tree_bytes(&src).iter().map(|(_, b)| b.len() as u64).sum();
    let mib = data.div_ceil(1 << 20) * 12 / 10 + 2;
    let fs_ = Tmpfs::mount(&format!("size={mib}m"));
    let filler = fs_.path().join("filler");
    let fill = || {
        let mut f = fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                break;
            }
        }
    };
    let progress = OnFirstChunk {
        hook: fill,
        fired: AtomicBool::new(false),
    };
    let dst = fs_.path().join("etcd");
    let err = datadir::copy(&CopyOptions {
        src: src.clone(),
        dst: dst.clone(),
        progress: &progress,
        cancel: None,
        sums_file: None,
    })
    .expect_err("the copy cannot fit");
    assert!(
        progress.fired.load(Ordering::SeqCst),
        "the copy never started"
    );
    assert_eq!(err.exit_code(), 1, "{err}");
    let line = err.one_line();
    assert!(line.contains("No space left on device"), "{line}");
    assert!(line.contains("nothing was left behind"), "{line}");
    assert_eq!(fs_.names(), vec!["filler".to_string()], "{line}");
}

/// A cancel request in the middle of a copy: stopped, staging removed, no target.
#[test]
fn cancel_mid_copy_leaves_nothing() {
    let cluster = stopped_cluster(Version::V36);
    let src = cluster.members[0].data_dir.clone();
    let scratch = tempfile::tempdir().unwrap();
    let dst = scratch.path().join("etcd");
    let cancel = AtomicBool::new(false);
    let progress = OnFirstChunk {
        hook: || cancel.store(true, Ordering::SeqCst),
        fired: AtomicBool::new(false),
    };
    let sums = scratch.path().join("sums.b3");
    let err = datadir::copy(&CopyOptions {
        src: src.clone(),
        dst: dst.clone(),
        progress: &progress,
        cancel: Some(&cancel),
        sums_file: Some(sums.clone()),
    })
    .expect_err("cancelled");
    assert!(err.one_line().contains("interrupted"), "{err}");
    assert!(!dst.exists());
    assert!(
        !sums.exists(),
        "no sums file for a copy that did not happen"
    );
    assert_eq!(staging_dirs(scratch.path()), Vec::<String>::new());
    // And the same source copies fine afterwards.
    let report = datadir::copy(&CopyOptions {
        src,
        dst: dst.clone(),
        progress: &Silent,
        cancel: None,
        sums_file: None,
    })
    .unwrap();
    assert!(report.files >= 2 && dst.join("member/snap/db").is_file());
}

/// Kills the child when dropped, so a failing test leaves no process behind.
struct Reaper(Option<Child>);

impl Reaper {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("not yet reaped")
    }

    fn wait(&mut self) -> std::process::Output {
        self.0
            .take()
            .expect("not yet reaped")
            .wait_with_output()
            .unwrap()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Wait until the kernel shows `pid` stopped (state `T` in /proc/PID/stat).
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        if state == Some("T") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not stop: {stat}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// SIGTERM (what systemd and kubelet send) during `etcdops datadir copy`: exit 1, one line
/// saying it was interrupted, no staging dir and no target. To hit the copy mid-flight
/// deterministically, the process is frozen (SIGSTOP) once its staging dir exists, checked
/// to be still copying, then sent SIGTERM and thawed.
#[test]
fn sigterm_mid_copy_leaves_nothing() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let cluster = stopped_cluster(Version::V36);
    let src = cluster.members[0].data_dir.clone();
    let scratch = tempfile::tempdir().unwrap();
    for attempt in 0..10 {
        let dst = scratch.path().join(format!("etcd{attempt}"));
        let staging = scratch
            .path()
            .join(format!(".etcd{attempt}.etcdops-staging"));
        let mut child = Reaper(Some(
            Command::new(env!("CARGO_BIN_EXE_etcdops"))
                .args(["datadir", "copy", p(&src), p(&dst)])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        ));
        let id = child.child().id();
        let pid = Pid::from_raw(id as i32);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !staging.exists() && child.child().try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the copy never started");
            std::thread::sleep(Duration::from_micros(200));
        }
        if child.child().try_wait().unwrap().is_some() {
            continue; // finished before we saw it: try again
        }
        kill(pid, Signal::SIGSTOP).unwrap();
        wait_stopped(id);
        let caught = staging.exists() && !dst.exists();
        if caught {
            kill(pid, Signal::SIGTERM).unwrap();
        }
        kill(pid, Signal::SIGCONT).unwrap();
        let out = child.wait();
        if !caught {
            continue;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
        assert!(stderr.contains("interrupted"), "stderr: {stderr}");
        assert!(!dst.exists(), "target created despite the interrupt");
        assert!(!staging.exists(), "staging dir left behind");
        return;
    }
    panic!("never caught the copy mid-flight in 10 attempts");
}

/// Sums are trusted only for files unchanged since they were taken: a source file rewritten
/// afterwards (same size, mtime put back, as a careless tool might) is read again, and the
/// difference is found.
#[test]
fn stale_sums_are_not_trusted() {
    let scratch = tempfile::tempdir().unwrap();
    let a = scratch.path().join("a");
    fs::create_dir_all(a.join("sub")).unwrap();
    fs::write(a.join("one"), vec![1u8; 100_000]).unwrap();
    fs::write(a.join("sub/two"), vec![2u8; 3_000_000]).unwrap();
    let b = scratch.path().join("b");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&a)
        .arg(&b)
        .status()
        .unwrap();
    assert!(cp.success());
    // Coarse filesystem clocks tick every few ms: keep the steps in different ticks by
    // waiting until a probe file written now gets a newer mtime than one written before.
    let probe = scratch.path().join("clock-probe");
    let tick = || {
        fs::write(&probe, b"x").unwrap();
        let before = fs::metadata(&probe).unwrap().modified().unwrap();
        common::wait_for(
            "the filesystem clock to tick",
            Duration::from_secs(5),
            || {
                fs::write(&probe, b"x").unwrap();
                fs::metadata(&probe).unwrap().modified().unwrap() > before
            },
        );
    };
    tick();
    let sums = scratch.path().join("a.b3");
    let r = run(&["datadir", "sums", p(&a)]);
    r.code(0);
    fs::write(&sums, &r.stdout).unwrap();
    tick();
    let verify = || {
        run(&[
            "-o",
            "json",
            "datadir",
            "verify",
            "--sums",
            p(&sums),
            p(&a),
            p(&b),
        ])
    };
    let r = verify();
    r.code(0);
    assert_eq!(r.json()["src_files_read"], 0, "{}", r.dump());

    let two = a.join("sub/two");
    let mtime = mtime_of(&two);
    fs::write(&two, vec![3u8; 3_000_000]).unwrap();
    set_mtime(&two, mtime.0, mtime.1);
    let r = verify();
    r.code(1);
    assert_eq!(r.json()["src_files_read"], 1, "{}", r.dump());
    assert_eq!(
        differences(&r),
        set(&[("sub/two", "content")]),
        "{}",
        r.dump()
    );
}

/// etcd 3.8 stops writing the v2 snapshot files `member/snap/*.snap` (3.7 already stops
/// loading them, CHANGELOG-3.7 "Stop loading v2 snapshot files", etcd-io/etcd#21107):
/// a data dir with none is a data dir. etcd 3.7.4 starts on one (so it is real, not a
/// fixture), and check, copy and verify accept it.
#[test]
fn a_data_dir_without_v2_snap_files_is_a_data_dir_3_7() {
    let mut cluster = stopped_cluster(Version::V37);
    let src = cluster.members[0].data_dir.clone();
    let snap_dir = src.join("member/snap");
    let v2: Vec<PathBuf> = fs::read_dir(&snap_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    for f in &v2 {
        fs::remove_file(f).unwrap();
    }
    // etcd 3.7 serves from it: the 300 keys are there.
    cluster.restart(0);
    cluster.wait_healthy(Duration::from_secs(30));
    let out = cluster.etcdctl(&["get", "key", "--prefix", "--keys-only"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        300
    );
    cluster.stop_all();
    // Whatever etcd wrote meanwhile, remove every v2 snap file again.
    for e in fs::read_dir(&snap_dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "snap") {
            fs::remove_file(p).unwrap();
        }
    }
    let r = run(&["-o", "json", "datadir", "check", p(&src)]);
    r.code(0);
    assert_eq!(r.json()["quiesced"], true, "{}", r.dump());
    let scratch = tempfile::tempdir().unwrap();
    let dst = scratch.path().join("etcd");
    run(&["datadir", "copy", p(&src), p(&dst)]).code(0);
    let r = run(&["-o", "json", "datadir", "verify", p(&src), p(&dst)]);
    r.code(0);
    assert_eq!(r.json()["identical"], true, "{}", r.dump());
}
