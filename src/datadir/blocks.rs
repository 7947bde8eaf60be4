//! Whole-file blake3 computed on both cores from 1 MiB blocks, for the part of a migration
//! that is downtime: the update after a pre-copy (re-hash the quiesced source, rewrite the
//! blocks that changed) and `verify`'s read-back of the target.
//!
//! Each [`BLOCK`] at a 1 MiB-aligned offset is a complete subtree of the file's BLAKE3 tree,
//! so its chaining value (blake3's `hazmat`: `set_input_offset` + `finalize_non_root`) is
//! what both the pre-copy record and the change detection compare, and the file's ordinary
//! blake3 (what `b3sum` prints) is merged from those chaining values — each byte is hashed
//! once, not once for the block and once more for the file. A big file is cut into one
//! contiguous part per thread ([`SPLIT_BLOCKS`]), so a 2 GiB db is hashed by both cores
//! instead of one; each thread reads its part sequentially (pread) through its own
//! 1 MiB buffer, so memory stays at two blocks whatever the data size. No rayon: two scoped
//! threads and an atomic counter are all the scheduling two cores need.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};
use nix::fcntl::PosixFadviseAdvice;

use super::{CHUNK, Progress, open_read};
use crate::error::{Error, Result};

/// The unit of change detection and of parallel hashing: 1 MiB, the read chunk.
pub const BLOCK: usize = CHUNK;

/// Files larger than this many blocks (32 MiB: a 61 MiB WAL segment, the db) are shared by
/// the threads.
/// Measured on this VM reading the target back from its device: interleaved 16 MiB segments
/// were 1.34x slower than one sequential reader per file (readahead restarts at every jump),
/// so a big file is cut in one contiguous part per thread instead.
pub const SPLIT_BLOCKS: u64 = 32;

/// Hashing threads: the machine's two cores (the calling thread is one of them).
const WORKERS: usize = 2;

/// The chaining value of `block`, which starts at byte `offset` (a multiple of [`BLOCK`])
/// of its file: the subtree hash that [`root_hash`] merges.
pub fn block_cv(block: &[u8], offset: u64) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(block);
    h.finalize_non_root()
}

/// The blake3 of a file of `len` bytes from the chaining values of its blocks, in order.
/// A file of at most one block has no parent node: its hash is `blake3::hash` of its bytes,
/// which the caller passes as `single`.
pub fn root_hash(cvs: &[ChainingValue], len: u64, single: Option<blake3::Hash>) -> blake3::Hash {
    if len <= BLOCK as u64 {
        return single.unwrap_or_else(|| blake3::hash(b""));
    }
    let (left, right, split) = split(cvs, len);
    merge_subtrees_root(
        &subtree(left, split),
        &subtree(right, len - split),
        Mode::Hash,
    )
}

/// BLAKE3 puts the largest power of two of chunks that leaves at least one byte on the right
/// into the left subtree; for more than one block that is a whole number of blocks.
fn split(cvs: &[ChainingValue], len: u64) -> (&[ChainingValue], &[ChainingValue], u64) {
    let split = left_subtree_len(len);
    let (left, right) = cvs.split_at((split / BLOCK as u64) as usize);
    (left, right, split)
}

fn subtree(cvs: &[ChainingValue], len: u64) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let (left, right, split) = split(cvs, len);
    merge_subtrees_non_root(
        &subtree(left, split),
        &subtree(right, len - split),
        Mode::Hash,
    )
}

/// A file to hash: its path and the size it must have (from the walk).
pub struct FileJob<'a> {
    pub path: &'a Path,
    pub size: u64,
}

/// One block as it was read, handed to the caller's `on_block`.
pub struct Block<'b> {
    /// Index into the `files` given to [`hash_files`].
    pub file: usize,
    /// Block number in its file.
    pub index: u64,
    pub offset: u64,
    pub data: &'b [u8],
    pub cv: &'b ChainingValue,
}

/// What a thread found for one block: (file, block number, chaining value, and for a
/// one-block file its root hash).
type Found = (usize, u64, ChainingValue, Option<blake3::Hash>);

/// Read and hash every file of `files` on two threads, calling `on_block` for each block
/// (from either thread, with that thread's own `W`, e.g. an open target file) and returning
/// each file's blake3 in order. A file whose size is not the one given (something wrote to
/// it) is an error; so is `cancel` set. The first error stops both threads. `progress`
/// advances from the calling thread only (it need not be `Sync`).
pub fn hash_files<W: Default>(
    files: &[FileJob],
    cancel: Option<&AtomicBool>,
    progress: &dyn Progress,
    on_block: &(dyn Fn(&mut W, &Block) -> Result<()> + Sync),
) -> Result<Vec<blake3::Hash>> {
    // A file of more than SPLIT_BLOCKS blocks is cut into one contiguous part per thread,
    // so that each thread reads one long sequential run (readahead keeps ramping, the device
    // sees two streams); smaller files go whole. Biggest parts first, so the work evens out.
    let mut segments: Vec<(usize, u64, u64)> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let blocks = f.size.div_ceil(BLOCK as u64);
        let parts = if blocks > SPLIT_BLOCKS {
            WORKERS as u64
        } else {
            1
        };
        let per = blocks.div_ceil(parts);
        let mut first = 0;
        while first < blocks {
            let n = (blocks - first).min(per);
            segments.push((i, first, n));
            first += n;
        }
    }
    segments.sort_by_key(|&(i, first, n)| (std::cmp::Reverse(n), i, first));
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    // A thread that stops because the other failed returns `Err(None)`: only real errors
    // are reported.
    let work = |report: Option<&dyn Progress>| -> std::result::Result<Vec<Found>, Option<Error>> {
        let mut buf = vec![0u8; BLOCK];
        let mut state = W::default();
        let mut open: Option<(usize, File)> = None;
        let mut found = Vec::new();
        let mut reported = 0u64;
        let run = (|| {
            while let Some(&(fi, first, n)) = segments.get(next.fetch_add(1, SeqCst)) {
                let job = &files[fi];
                if open.as_ref().is_none_or(|(i, _)| *i != fi) {
                    let file = open_read(job.path).map_err(Some)?;
                    // Readahead hint for a cold cache; harmless if ignored.
                    let _ = nix::fcntl::posix_fadvise(
                        &file,
                        0,
                        0,
                        PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
                    );
                    open = Some((fi, file));
                }
                let file = &open.as_ref().expect("opened above").1;
                for index in first..first + n {
                    if stop.load(SeqCst) {
                        return Err(None);
                    }
                    if cancel.is_some_and(|c| c.load(SeqCst)) {
                        return Err(Some(Error::failed("hash", "interrupted")));
                    }
                    let offset = index * BLOCK as u64;
                    let want = (job.size - offset).min(BLOCK as u64) as usize;
                    let got = read_at_full(file, &mut buf[..want], offset)
                        .map_err(|e| Some(Error::io("read", job.path, e)))?;
                    if got != want {
                        return Err(Some(size_changed(job, offset + got as u64)));
                    }
                    let data = &buf[..want];
                    let cv = block_cv(data, offset);
                    let single = (job.size <= BLOCK as u64).then(|| blake3::hash(data));
                    on_block(
                        &mut state,
                        &Block {
                            file: fi,
                            index,
                            offset,
                            data,
                            cv: &cv,
                        },
                    )
                    .map_err(Some)?;
                    found.push((fi, index, cv, single));
                    let total = done.fetch_add(want as u64, SeqCst) + want as u64;
                    if let Some(p) = report {
                        p.advance(total - reported);
                        reported = total;
                    }
                }
                let last = job.size.div_ceil(BLOCK as u64);
                if first + n == last {
                    // The walk's size must be the whole file: a byte past it means a writer.
                    let more = read_at_full(file, &mut buf[..1], job.size)
                        .map_err(|e| Some(Error::io("read", job.path, e)))?;
                    if more != 0 {
                        return Err(Some(size_changed(job, job.size + more as u64)));
                    }
                }
            }
            Ok(())
        })();
        if let Some(p) = report {
            p.advance(done.load(SeqCst) - reported);
        }
        match run {
            Ok(()) => Ok(found),
            Err(e) => {
                stop.store(true, SeqCst);
                Err(e)
            }
        }
    };
    let results: Vec<std::result::Result<Vec<Found>, Option<Error>>> = std::thread::scope(|s| {
        let others: Vec<_> = (1..WORKERS).map(|_| s.spawn(|| work(None))).collect();
        let mut all = vec![work(Some(progress))];
        for h in others {
            all.push(h.join().expect("a hashing thread does not panic"));
        }
        all
    });
    let mut cvs: Vec<Vec<ChainingValue>> = files
        .iter()
        .map(|f| vec![[0u8; 32]; f.size.div_ceil(BLOCK as u64) as usize])
        .collect();
    let mut singles: Vec<Option<blake3::Hash>> = vec![None; files.len()];
    let mut all_found = Vec::new();
    for r in results {
        match r {
            Ok(found) => all_found.push(found),
            Err(Some(e)) => return Err(e),
            // Stopped by the other thread's error, which is returned instead.
            Err(None) => {}
        }
    }
    for (fi, index, cv, single) in all_found.into_iter().flatten() {
        cvs[fi][index as usize] = cv;
        if single.is_some() {
            singles[fi] = single;
        }
    }
    Ok(files
        .iter()
        .zip(cvs.iter().zip(singles))
        .map(|(f, (cvs, single))| root_hash(cvs, f.size, single))
        .collect())
}

fn size_changed(job: &FileJob, read: u64) -> Error {
    Error::failed(
        format!("read {}", job.path.display()),
        format!(
            "it changed size while being read ({} bytes expected, at least {read} found): \
             is something writing to it?",
            job.size
        ),
    )
}

/// pread until `buf` is full or the file ends; returns the bytes read.
fn read_at_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::Silent;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 % 251) as u8).collect()
    }

    /// Merging block chaining values gives exactly blake3 (what b3sum prints) at every size
    /// class: empty, one short block, exactly one, one and a byte, powers of two and between.
    #[test]
    fn merged_block_hashes_equal_blake3() {
        let b = BLOCK;
        for len in [
            0,
            1,
            1024,
            b - 1,
            b,
            b + 1,
            2 * b,
            2 * b + 1,
            3 * b,
            3 * b + 4097,
            4 * b,
            5 * b + 7,
            8 * b,
            17 * b + 1,
        ] {
            let bytes = data(len);
            let cvs: Vec<ChainingValue> = bytes
                .chunks(b)
                .enumerate()
                .map(|(i, c)| block_cv(c, (i * b) as u64))
                .collect();
            let single = (len <= b).then(|| blake3::hash(&bytes));
            assert_eq!(
                root_hash(&cvs, len as u64, single),
                blake3::hash(&bytes),
                "len {len}"
            );
        }
    }

    /// The two threads hash files of many sizes, across segment boundaries, to their blake3,
    /// and see every block once.
    #[test]
    fn hash_files_equals_blake3_and_visits_every_block_once() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [
            0,
            5,
            BLOCK,
            BLOCK + 1,
            (SPLIT_BLOCKS as usize) * BLOCK,
            (SPLIT_BLOCKS as usize + 3) * BLOCK + 99,
        ];
        let paths: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, data(n)).unwrap();
                p
            })
            .collect();
        let jobs: Vec<FileJob> = paths
            .iter()
            .zip(sizes)
            .map(|(p, s)| FileJob {
                path: p,
                size: s as u64,
            })
            .collect();
        let seen = std::sync::Mutex::new(Vec::new());
        let hashes = hash_files::<()>(&jobs, None, &Silent, &|_, b| {
            assert_eq!(*b.cv, block_cv(b.data, b.offset));
            seen.lock().unwrap().push((b.file, b.index));
            Ok(())
        })
        .unwrap();
        for (h, n) in hashes.iter().zip(sizes) {
            assert_eq!(*h, blake3::hash(&data(n)), "size {n}");
        }
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        let expected: Vec<(usize, u64)> = sizes
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| (0..(n as u64).div_ceil(BLOCK as u64)).map(move |b| (i, b)))
            .collect();
        assert_eq!(seen, expected);
    }

    /// A file shorter or longer than the walk said is an error naming it, not a hash.
    #[test]
    fn a_file_of_another_size_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        std::fs::write(&p, data(3 * BLOCK)).unwrap();
        for size in [
            3 * BLOCK as u64 + 10,
            3 * BLOCK as u64 - 10,
            2 * BLOCK as u64,
        ] {
            let jobs = [FileJob { path: &p, size }];
            let err = hash_files::<()>(&jobs, None, &Silent, &|_, _| Ok(()))
                .expect_err("size mismatch")
                .one_line();
            assert!(
                err.contains(&p.display().to_string()) && err.contains("changed size"),
                "{err}"
            );
        }
    }

    /// An error from `on_block` in either thread is the one returned.
    #[test]
    fn the_first_real_error_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        std::fs::write(&p, data(40 * BLOCK)).unwrap();
        let jobs = [FileJob {
            path: &p,
            size: 40 * BLOCK as u64,
        }];
        let err = hash_files::<()>(&jobs, None, &Silent, &|_, b| {
            if b.index == 33 {
                Err(Error::failed("write block 33", "disk full"))
            } else {
                Ok(())
            }
        })
        .expect_err("on_block failed")
        .one_line();
        assert!(err.contains("block 33"), "{err}");
    }
}
