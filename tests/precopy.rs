//! `etcdops datadir precopy` + `datadir copy --update` on data dirs of real etcd 3.5 and 3.6
//! with writes between the two phases, a source whose shape changed (files truncated,
//! removed, renamed, added), a pre-copy killed mid-way, bad inputs; and `datadir verify`
//! reading the target from its device (ext4 here) or honestly saying it could not (tmpfs).
//!
//! Every final tree is compared with its source by this file's own walk (type, mode, owner,
//! mtime, size, blake3), not only by `datadir verify`.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Spec, Version, args, etcdops, tree_bytes};

fn run(a: &[&str]) -> common::Run {
    etcdops(&args(a), &[], None)
}

fn p(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// (relative path, is dir, mode, uid, gid, mtime, size, blake3 of files) of the root and
/// every entry below it, sorted: what a final copy must equal.
type Line = (String, bool, u32, u32, u32, (i64, i64), u64, Option<String>);

fn snapshot(root: &Path) -> Vec<Line> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), ".".to_string())];
    while let Some((path, rel)) = stack.pop() {
        let m = fs::symlink_metadata(&path).unwrap();
        let is_dir = m.is_dir();
        let hash = (!is_dir).then(|| blake3::hash(&fs::read(&path).unwrap()).to_hex().to_string());
        out.push((
            rel.clone(),
            is_dir,
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
            (m.mtime(), m.mtime_nsec()),
            if is_dir { 0 } else { m.len() },
            hash,
        ));
        if is_dir {
            for e in fs::read_dir(&path).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                stack.push((e.path(), format!("{rel}/{name}")));
            }
        }
    }
    out.sort();
    out
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

fn staging_of(dst: &Path) -> PathBuf {
    dst.parent().unwrap().join(format!(
        ".{}.etcdops-staging",
        dst.file_name().unwrap().to_string_lossy()
    ))
}

/// A 1-member cluster with some data, stopped (SIGKILL): a real, quiesced data dir.
fn stopped_cluster(version: Version) -> Cluster {
    let mut cluster = Cluster::start(Spec::new(version, 1));
    cluster.put_many("key", 500, 2048);
    cluster.stop_all();
    cluster
}

/// `copy --update` then `verify`: the final tree equals the source (by our walk and by
/// verify, read from the device), the source was not touched. Returns the copy's JSON.
fn finish_and_prove(src: &Path, dst: &Path) -> serde_json::Value {
    let before = tree_bytes(src);
    let src_meta = snapshot(src);
    let r = run(&["-o", "json", "datadir", "copy", "--update", p(src), p(dst)]);
    r.code(0);
    let copy = r.json();
    assert_eq!(tree_bytes(src), before, "the final copy changed the source");
    assert_eq!(
        snapshot(src),
        src_meta,
        "the final copy changed the source's metadata"
    );
    assert_eq!(
        snapshot(dst),
        src_meta,
        "final tree differs from the source\n{}",
        r.dump()
    );
    assert!(!staging_of(dst).exists(), "staging dir left behind");
    let v = run(&["-o", "json", "datadir", "verify", p(src), p(dst)]);
    v.code(0);
    let v = v.json();
    assert_eq!(v["identical"], true, "{v}");
    assert_eq!(v["verified_from"], "device", "{v}");
    copy
}

/// etcd keeps running and taking writes during and after the pre-copy; after the stop, only
/// the changed blocks are written (well under 10 % of the data dir), and the final tree is
/// proven equal to the quiesced source.
fn writes_between_phases(version: Version) {
    let mut cluster = Cluster::start(Spec::new(version, 1));
    cluster.put_many("before", 2000, 1024);
    let src = cluster.members[0].data_dir.clone();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let dst = scratch.path().join("etcd");

    // Writes go on while the pre-copy reads the live data dir.
    let r = std::thread::scope(|s| {
        let writer = s.spawn(|| cluster.put_many("during", 300, 1024));
        let r = etcdops(
            &args(["-o", "json", "datadir", "precopy", p(&src), p(&dst)]),
            &[],
            Some(&cluster),
        );
        writer.join().expect("the writer does not panic");
        r
    });
    r.code(0);
    let pre = r.json();
    assert!(pre["bytes"].as_u64().unwrap() > 0, "{}", r.dump());
    assert!(!dst.exists(), "the pre-copy must not create the target");
    assert_eq!(names(scratch.path()), vec![".etcd.etcdops-staging"]);

    cluster.put_many("after", 300, 1024);
    cluster.put_many("before", 50, 2048); // overwrites: the db changes in place
    cluster.stop_all();

    let copy = finish_and_prove(&src, &dst);
    assert_eq!(copy["precopy"], "used", "{copy}");
    let total = copy["bytes"].as_u64().unwrap();
    let after = copy["bytes_after_stop"].as_u64().unwrap();
    assert!(
        after > 0,
        "the writes after the pre-copy must be copied: {copy}"
    );
    assert!(
        after * 10 <= total,
        "{after} bytes written after the stop, more than 10 % of {total}: {copy}"
    );
}

#[test]
fn precopy_writes_between_phases_3_5() {
    writes_between_phases(Version::V35);
}

#[test]
fn precopy_writes_between_phases_3_6() {
    writes_between_phases(Version::V36);
}

/// Between the phases the source changes shape: a file truncated, one removed, the WAL's
/// preallocated file renamed to a new segment and written to (as etcd cuts a segment), a
/// new file and a new directory. All handled without a full copy; the rename is reused.
#[test]
fn precopy_shape_changes_are_handled() {
    let cluster = stopped_cluster(Version::V36);
    let src = cluster.members[0].data_dir.clone();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let dst = scratch.path().join("etcd");
    run(&["datadir", "precopy", p(&src), p(&dst)]).code(0);

    let wal = src.join("member/wal");
    let tmp = fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "tmp"))
        .expect("etcd preallocates a wal/*.tmp file");
    let tmp_size = fs::metadata(&tmp).unwrap().len();
    let segment = wal.join("0000000000000009-00000000000fffff.wal");
    fs::rename(&tmp, &segment).unwrap();
    let mut f = OpenOptions::new().write(true).open(&segment).unwrap();
    f.write_all(b"a new segment's first record").unwrap();
    drop(f);
    let db = src.join("member/snap/db");
    let db_size = fs::metadata(&db).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(db_size / 2)
        .unwrap();
    fs::create_dir(src.join("member/extra")).unwrap();
    fs::write(src.join("member/extra/new"), b"new file").unwrap();

    let copy = finish_and_prove(&src, &dst);
    assert_eq!(copy["precopy"], "used", "{copy}");
    let after = copy["bytes_after_stop"].as_u64().unwrap();
    assert!(
        after <= 2 * 1024 * 1024,
        "only the changed first block of the renamed {tmp_size}-byte segment and the new \
         file should be written, not {after} bytes: {copy}"
    );

    // A removed file, this time without anything to rename it to.
    let dst2 = scratch.path().join("etcd2");
    run(&["datadir", "precopy", p(&src), p(&dst2)]).code(0);
    fs::remove_file(src.join("member/extra/new")).unwrap();
    fs::remove_dir(src.join("member/extra")).unwrap();
    let copy = finish_and_prove(&src, &dst2);
    assert_eq!(copy["precopy"], "used", "{copy}");
    assert_eq!(copy["bytes_after_stop"], 0, "{copy}");
}

/// The pre-copy is never evidence: a staged block changed behind its back (the record still
/// says it is right, so the update does not rewrite it) is found by verify, which compares
/// every byte of the target with the quiesced source.
#[test]
fn precopy_is_never_evidence() {
    let cluster = stopped_cluster(Version::V35);
    let src = cluster.members[0].data_dir.clone();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let dst = scratch.path().join("etcd");
    run(&["datadir", "precopy", p(&src), p(&dst)]).code(0);
    let staged_db = staging_of(&dst).join("member/snap/db");
    let mut db = fs::read(&staged_db).unwrap();
    db[100] ^= 0xff;
    fs::write(&staged_db, &db).unwrap();

    let r = run(&[
        "-o",
        "json",
        "datadir",
        "copy",
        "--update",
        p(&src),
        p(&dst),
    ]);
    let copy = r.code(0).json();
    assert_eq!(copy["precopy"], "used", "{copy}");
    assert_eq!(copy["bytes_after_stop"], 0, "{copy}");
    let v = run(&["-o", "json", "datadir", "verify", p(&src), p(&dst)]);
    let v = v.code(1).json();
    assert_eq!(v["identical"], false, "{v}");
    assert_eq!(
        (&v["differences"][0]["path"], &v["differences"][0]["kind"]),
        (&"member/snap/db".into(), &"content".into()),
        "{v}"
    );
}

/// A pre-copy made from another data dir is not used: everything is copied.
#[test]
fn precopy_of_another_source_falls_back() {
    let a = stopped_cluster(Version::V36);
    let b = stopped_cluster(Version::V36);
    let (src_a, src_b) = (a.members[0].data_dir.clone(), b.members[0].data_dir.clone());
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let dst = scratch.path().join("etcd");
    run(&["datadir", "precopy", p(&src_a), p(&dst)]).code(0);
    let copy = finish_and_prove(&src_b, &dst);
    assert_eq!(copy["precopy"], "fell-back", "{copy}");
    assert!(
        copy["precopy_fallback"]
            .as_str()
            .unwrap()
            .contains(p(&fs::canonicalize(&src_a).unwrap())),
        "{copy}"
    );
    assert_eq!(copy["bytes_after_stop"], copy["bytes"], "{copy}");
}

/// Kills the child when dropped, so a failing test leaves no process behind.
struct Reaper(Option<Child>);

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
            "process {pid} did not stop within 5 s: {stat}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// SIGKILL during `datadir precopy` (frozen with SIGSTOP once its staging dir exists and
/// checked to be unfinished): only the staging dir is left, without a record; `copy
/// --update` then falls back to the full copy; and a new pre-copy replaces a killed one.
#[test]
fn precopy_killed_leaves_only_staging_which_is_replaced() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let cluster = stopped_cluster(Version::V36);
    let src = cluster.members[0].data_dir.clone();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let dst = scratch.path().join("etcd");
    let staging = staging_of(&dst);
    let record = staging.join(".etcdops-precopy.json");

    let mut caught = 0;
    for _ in 0..10 {
        let mut child = Reaper(Some(
            Command::new(env!("CARGO_BIN_EXE_etcdops"))
                .args(["datadir", "precopy", p(&src), p(&dst)])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        let c = child.0.as_mut().unwrap();
        let id = c.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        // Wait for a file being written below the staging dir (the previous attempt's
        // staging dir is replaced first).
        while !staging.join("member/wal").exists() && c.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the pre-copy never started");
            std::thread::sleep(Duration::from_micros(200));
        }
        if c.try_wait().unwrap().is_some() {
            fs::remove_dir_all(&staging).unwrap();
            continue; // finished before we saw it: try again
        }
        kill(Pid::from_raw(id as i32), Signal::SIGSTOP).unwrap();
        wait_stopped(id);
        let unfinished = !record.exists();
        kill(Pid::from_raw(id as i32), Signal::SIGKILL).unwrap();
        child.0.take().unwrap().wait().unwrap();
        if !unfinished {
            fs::remove_dir_all(&staging).unwrap();
            continue;
        }
        assert_eq!(
            names(scratch.path()),
            vec![".etcd.etcdops-staging"],
            "a killed pre-copy leaves only its staging dir"
        );
        assert!(!record.exists(), "a killed pre-copy must not look finished");
        caught += 1;
        if caught == 2 {
            break;
        }
        // The first time: a new pre-copy replaces the killed one and is used.
        let r = run(&["-o", "json", "datadir", "precopy", p(&src), p(&dst)]);
        r.code(0);
        assert!(record.exists(), "{}", r.dump());
        let copy = finish_and_prove(&src, &dst);
        assert_eq!(copy["precopy"], "used", "{copy}");
        assert_eq!(copy["bytes_after_stop"], 0, "{copy}");
        fs::remove_dir_all(&dst).unwrap();
    }
    assert_eq!(
        caught, 2,
        "never caught the pre-copy mid-flight twice in 10 attempts"
    );
    // The second time: the final copy finds no finished pre-copy and copies everything.
    let copy = finish_and_prove(&src, &dst);
    assert_eq!(copy["precopy"], "fell-back", "{copy}");
    assert!(
        copy["precopy_fallback"]
            .as_str()
            .unwrap()
            .contains("no finished pre-copy"),
        "{copy}"
    );
    assert_eq!(copy["bytes_after_stop"], copy["bytes"], "{copy}");
}

/// The pre-copy reads the source without changing a byte or a time (atime included); bad
/// inputs are refused with one line and the right code, changing nothing; `copy --update`
/// refuses a running etcd and leaves the pre-copy as it was.
#[test]
fn precopy_source_untouched_and_bad_inputs_change_nothing() {
    let mut cluster = Cluster::start(Spec::new(Version::V35, 1));
    cluster.put_many("key", 200, 1024);
    let src = cluster.members[0].data_dir.clone();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let dst = scratch.path().join("etcd");

    // Running etcd: pre-copy allowed, final copy refused (4), the pre-copy kept intact.
    run(&["datadir", "precopy", p(&src), p(&dst)]).code(0);
    let staged = tree_bytes(&staging_of(&dst));
    run(&["datadir", "copy", "--update", p(&src), p(&dst)])
        .code(4)
        .one_line_error("etcd");
    assert_eq!(
        tree_bytes(&staging_of(&dst)),
        staged,
        "refused copy changed the pre-copy"
    );
    assert!(!dst.exists());
    cluster.stop_all();

    // Stopped: the source (bytes, modes, times, atimes) is the same after a pre-copy.
    let atimes = |root: &Path| -> Vec<(PathBuf, i64, i64)> {
        let mut v: Vec<_> = tree_bytes(root)
            .into_iter()
            .map(|(p, _)| {
                let m = fs::metadata(&p).unwrap();
                (p, m.atime(), m.atime_nsec())
            })
            .collect();
        v.sort();
        v
    };
    let (bytes, meta, at) = (tree_bytes(&src), snapshot(&src), atimes(&src));
    run(&["datadir", "precopy", p(&src), p(&dst)]).code(0);
    assert_eq!(tree_bytes(&src), bytes);
    assert_eq!(snapshot(&src), meta);
    assert_eq!(atimes(&src), at, "the pre-copy changed the source's atimes");

    // Bad inputs.
    let full = scratch.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("keep"), b"operator data").unwrap();
    let before = tree_bytes(scratch.path());
    let listing = names(scratch.path());
    run(&["datadir", "precopy", p(&src), p(&full)])
        .code(4)
        .one_line_error("not empty");
    run(&["datadir", "precopy", p(&full), p(&scratch.path().join("x"))])
        .code(2)
        .one_line_error("not an etcd data dir");
    run(&["datadir", "precopy", p(&src), p(&src.join("member/inside"))])
        .code(2)
        .one_line_error("inside the source");
    // A missing parent is refused as `migrate` preflight refuses it (one target policy).
    run(&["datadir", "precopy", p(&src), "/nonexistent-parent/etcd"])
        .code(4)
        .one_line_error("/nonexistent-parent");
    assert_eq!(
        tree_bytes(scratch.path()),
        before,
        "a refusal changed files"
    );
    assert_eq!(names(scratch.path()), listing, "a refusal created entries");
    assert_eq!(tree_bytes(&src), bytes, "a refusal changed the source");
}

/// A tmpfs mounted on a fresh temp dir, unmounted when dropped — also when a test panics.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=512m"),
        )
        .expect("mount tmpfs (tests run as root)");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if nix::mount::umount(self.0.path()).is_err() {
            let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// On ext4 the target's pages are dropped and the read-back reaches the device; with
/// `--verify-from-cache`, and on a tmpfs (no device: DONTNEED cannot drop its pages), the
/// report says `page-cache` with the bytes that were cached, never `device`.
#[test]
fn verify_reads_the_device_or_says_page_cache() {
    let cluster = stopped_cluster(Version::V35);
    let src = cluster.members[0].data_dir.clone();

    let disk = tempfile::tempdir_in("/var/tmp").unwrap();
    let dst = disk.path().join("etcd");
    run(&["datadir", "copy", p(&src), p(&dst)]).code(0);
    let v = run(&["-o", "json", "datadir", "verify", p(&src), p(&dst)]);
    let v = v.code(0).json();
    assert_eq!(
        (&v["verified_from"], &v["resident_bytes"]),
        (&"device".into(), &0.into()),
        "{v}"
    );
    // Read the copy into the cache: from-cache must see it there.
    for (path, _) in tree_bytes(&dst) {
        fs::read(path).unwrap();
    }
    let v = run(&[
        "-o",
        "json",
        "datadir",
        "verify",
        "--verify-from-cache",
        p(&src),
        p(&dst),
    ]);
    let v = v.code(0).json();
    assert_eq!(v["verified_from"], "page-cache", "{v}");
    assert!(v["resident_bytes"].as_u64().unwrap() > 0, "{v}");

    let tmpfs = Tmpfs::mount();
    let dst = tmpfs.0.path().join("etcd");
    run(&["datadir", "copy", p(&src), p(&dst)]).code(0);
    let v = run(&["-o", "json", "datadir", "verify", p(&src), p(&dst)]);
    let v = v.code(0).json();
    assert_eq!(v["identical"], true, "{v}");
    assert_eq!(
        v["verified_from"], "page-cache",
        "a tmpfs has no device: {v}"
    );
    assert_eq!(v["resident_bytes"], v["bytes"], "{v}");
    let table = run(&["datadir", "verify", p(&src), p(&dst)]);
    assert!(
        table.code(0).stdout.contains("read from the page cache"),
        "{}",
        table.dump()
    );
}

/// Flip one byte of `path` at `offset` in place, and set its mtime back: same size, same
/// mtime, only the content (and the ctime, which no one can set back) differs.
fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], offset).unwrap();
    f.set_modified(mtime).unwrap();
}

/// The stopped phase hashes every file on two threads, a file over 32 MiB (a 61 MiB WAL
/// segment) split between them, and merges the whole-file blake3 from the 1 MiB blocks'
/// chaining values. A block changed in the second thread's half is rewritten (and only it);
/// the merged sums equal b3sum's; and `verify` still finds a byte flipped in the target, and
/// one flipped in the source after the copy, in either half.
#[test]
fn precopy_split_hashing_finds_flipped_bytes_in_target_and_source() {
    let cluster = stopped_cluster(Version::V36);
    let src = cluster.members[0].data_dir.clone();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let dst = scratch.path().join("etcd");
    let sums = scratch.path().join("sums");
    run(&["datadir", "precopy", p(&src), p(&dst)]).code(0);

    let wal = fs::read_dir(src.join("member/wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .expect("a WAL segment");
    let wal_size = fs::metadata(&wal).unwrap().len();
    assert!(
        wal_size > 48 * 1024 * 1024,
        "etcd preallocates WAL segments to 64 MB, found {wal_size} bytes"
    );
    let rel_wal = wal.strip_prefix(&src).unwrap().to_owned();
    // In the second thread's half, 45 MiB in; as etcd would, after the pre-copy.
    let late = 45 * 1024 * 1024 + 17;
    flip(&wal, late);

    let before = tree_bytes(&src);
    let r = run(&[
        "-o",
        "json",
        "datadir",
        "copy",
        "--update",
        "--sums",
        p(&sums),
        p(&src),
        p(&dst),
    ]);
    let copy = r.code(0).json();
    assert_eq!(tree_bytes(&src), before, "the update changed the source");
    assert_eq!(copy["precopy"], "used", "{copy}");
    assert_eq!(
        copy["bytes_after_stop"],
        1024 * 1024,
        "exactly the changed block: {copy}"
    );
    assert_eq!(snapshot(&dst), snapshot(&src), "final tree differs");
    // The merged hashes are plain blake3, as b3sum prints them.
    let text = fs::read_to_string(&sums).unwrap();
    let line = format!(
        "{}  {}",
        blake3::hash(&fs::read(&wal).unwrap()).to_hex(),
        rel_wal.display()
    );
    assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");

    let verify = |code: i32| {
        let v = run(&[
            "-o",
            "json",
            "datadir",
            "verify",
            "--sums",
            p(&sums),
            p(&src),
            p(&dst),
        ]);
        v.code(code).json()
    };
    let v = verify(0);
    assert_eq!(v["verified_from"], "device", "{v}");
    assert_eq!(v["src_files_read"], 0, "{v}");

    for (tree, offset) in [(&dst, 3), (&dst, late + 1), (&src, 5), (&src, late + 2)] {
        let path = tree.join(&rel_wal);
        flip(&path, offset);
        let v = verify(1);
        assert_eq!(
            (
                &v["differences"][0]["path"],
                &v["differences"][0]["kind"],
                v["differences"].as_array().unwrap().len()
            ),
            (&p(&rel_wal).into(), &"content".into(), 1),
            "flipped byte {offset} in {}: {v}",
            path.display()
        );
        flip(&path, offset);
    }
}

/// A pre-copy record of the first format (each block hashed alone) is not used: the copy
/// falls back to a full copy and says why.
#[test]
fn precopy_record_of_the_old_format_falls_back() {
    let cluster = stopped_cluster(Version::V35);
    let src = cluster.members[0].data_dir.clone();
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let dst = scratch.path().join("etcd");
    run(&["datadir", "precopy", p(&src), p(&dst)]).code(0);
    let record = staging_of(&dst).join(".etcdops-precopy.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!(json["format"], 2, "{json}");
    json.as_object_mut().unwrap().remove("format");
    fs::write(&record, json.to_string()).unwrap();

    let copy = finish_and_prove(&src, &dst);
    assert_eq!(copy["precopy"], "fell-back", "{copy}");
    let why = copy["precopy_fallback"].as_str().unwrap();
    assert!(why.contains("record format 1"), "{copy}");
}
