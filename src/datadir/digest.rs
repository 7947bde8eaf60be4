//! Streaming blake3 over files and trees, and b3sum-compatible sums.
//!
//! Files are read in fixed [`CHUNK`]s, never mapped nor read whole, so memory stays flat
//! whatever the data size (b3sum itself mmaps and peaks at hundreds of MiB). A tree's sums are
//! the lines `<hex>  <relative path>` sorted by path, exactly what `b3sum --check` reads; the
//! tree digest is the blake3 of those lines, so `etcdops datadir sums DIR | b3sum` prints it
//! and two trees with equal digests have the same files with the same contents.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::futimens;
use nix::sys::time::TimeSpec;

use serde::Serialize;

use super::{CHUNK, Kind, Tree, existing_dir, open_read};
use crate::error::{Error, Result};

/// Hash everything `reader` yields, through `buf`. Returns the hash and the byte count.
pub fn hash_reader(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<(blake3::Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize(), total))
}

/// The blake3 of a file's contents, streamed through `buf`.
pub fn hash_file_with(path: &Path, buf: &mut [u8]) -> Result<blake3::Hash> {
    let mut file = open_read(path)?;
    hash_reader(&mut file, buf)
        .map(|(h, _)| h)
        .map_err(|e| Error::io("read", path, e))
}

/// The blake3 of a file's contents, through a fresh [`CHUNK`] buffer.
pub fn hash_file(path: &Path) -> Result<blake3::Hash> {
    hash_file_with(path, &mut vec![0u8; CHUNK])
}

/// The sums of a tree: (relative path, blake3) for every regular file, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums {
    entries: Vec<(String, blake3::Hash)>,
}

impl Sums {
    /// Sort the entries by path (byte order) and check each can be written as a b3sum line.
    pub fn new(mut entries: Vec<(String, blake3::Hash)>) -> Result<Sums> {
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (path, _) in &entries {
            if path.contains('\r') {
                // b3sum versions disagree on escaping '\r'; etcd never writes such names.
                return Err(Error::input(
                    path,
                    "file name contains a carriage return: no b3sum line can name it portably",
                ));
            }
        }
        Ok(Sums { entries })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &blake3::Hash)> {
        self.entries.iter().map(|(p, h)| (p.as_str(), h))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The hash of `path`, if listed.
    pub fn get(&self, path: &str) -> Option<&blake3::Hash> {
        self.entries
            .binary_search_by(|(p, _)| p.as_bytes().cmp(path.as_bytes()))
            .ok()
            .map(|i| &self.entries[i].1)
    }

    /// Read b3sum lines (as `text` writes them, or as b3sum prints them).
    pub fn parse(text: &str) -> std::result::Result<Sums, String> {
        let mut entries = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let bad = || format!("line {} is not a b3sum line `<hex>  <path>`", n + 1);
            let (escaped, rest) = match raw.strip_prefix('\\') {
                Some(rest) => (true, rest),
                None => (false, raw),
            };
            let (hex, path) = rest.split_at_checked(64).ok_or_else(bad)?;
            let path = path.strip_prefix("  ").ok_or_else(bad)?;
            let hash = blake3::Hash::from_hex(hex).map_err(|_| bad())?;
            let path = if escaped {
                unescape(path)
            } else {
                path.to_string()
            };
            if path.is_empty() {
                return Err(bad());
            }
            entries.push((path, hash));
        }
        Sums::new(entries).map_err(|e| e.one_line())
    }

    /// The b3sum lines, each ending in a newline.
    pub fn text(&self) -> String {
        self.iter().map(|(p, h)| line(p, h)).collect()
    }

    /// blake3 over [`Sums::text`]: equal digests mean equal paths and contents.
    pub fn digest(&self) -> blake3::Hash {
        blake3::hash(self.text().as_bytes())
    }
}

/// One b3sum line. b3sum escapes a name holding a backslash or a newline and marks the line
/// with a leading backslash; `b3sum --check` undoes it.
fn line(path: &str, hash: &blake3::Hash) -> String {
    if path.contains(['\\', '\n']) {
        let escaped = path.replace('\\', "\\\\").replace('\n', "\\n");
        format!("\\{}  {escaped}\n", hash.to_hex())
    } else {
        format!("{}  {path}\n", hash.to_hex())
    }
}

/// Undo b3sum's escaping of `\\` and `\n`.
fn unescape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A tree's sums together with the moment they were true: `as_of` is a filesystem timestamp
/// (the same coarse clock as ctimes), taken before the files were read. A file whose ctime
/// is not older than `as_of` may have changed since and must be read again; any change to a
/// file — content, size, rename over it — moves its ctime, which no one can set back.
#[derive(Debug, Clone, Default)]
pub struct KnownSums {
    pub sums: Sums,
    pub as_of: (i64, i64),
}

impl KnownSums {
    /// The hash of `path` if it is listed and its file (with this ctime) has not changed
    /// since the sums were taken.
    pub fn fresh(&self, path: &str, ctime: (i64, i64)) -> Option<blake3::Hash> {
        if ctime >= self.as_of {
            return None;
        }
        self.sums.get(path).copied()
    }

    /// Read a sums file; its mtime is taken as `as_of` (`write` sets it so; for sums made
    /// otherwise, e.g. `datadir sums DIR > FILE`, it is when they were written, later than
    /// when they were true, which is only as safe as nothing writing to DIR meanwhile).
    pub fn load(path: &Path) -> Result<KnownSums> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::input(path, "does not exist"));
            }
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let sums = Sums::parse(&text).map_err(|e| Error::input(path, e))?;
        let meta = fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
        Ok(KnownSums {
            sums,
            as_of: (meta.mtime(), meta.mtime_nsec()),
        })
    }

    /// Write the sums to `path` durably (a temp file beside it, fsync, rename, fsync the
    /// directory), mode 0600, with `as_of` as its mtime so that `load` gets it back.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| Error::input(path, "is not a file name"))?;
        let mut part_name = std::ffi::OsString::from(".");
        part_name.push(name);
        part_name.push(".part");
        let part = dir.join(part_name);
        let written = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&part)
                .map_err(|e| Error::io("create", &part, e))?;
            f.write_all(self.sums.text().as_bytes())
                .map_err(|e| Error::io("write", &part, e))?;
            let t = TimeSpec::new(self.as_of.0, self.as_of.1);
            futimens(&f, &t, &t).map_err(|e| Error::io("set times", &part, e.into()))?;
            f.sync_all().map_err(|e| Error::io("fsync", &part, e))?;
            fs::rename(&part, path).map_err(|e| Error::io("rename", path, e))?;
            fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io("fsync", &dir, e))
        })();
        if written.is_err() {
            let _ = fs::remove_file(&part);
        }
        written
    }
}

/// `datadir sums`: the b3sum lines of a tree and its digest.
#[derive(Debug, Clone, Serialize)]
pub struct SumsReport {
    pub path: PathBuf,
    pub digest: String,
    pub bytes: u64,
    pub files: Vec<SumsFile>,
    #[serde(skip)]
    pub sums: Sums,
}

#[derive(Debug, Clone, Serialize)]
pub struct SumsFile {
    pub path: String,
    pub blake3: String,
}

/// Hash every regular file below `dir`. Symlinks and special files are refused: b3sum would
/// follow a link and hash what it points to, which is not part of the tree.
pub fn sums(dir: &Path) -> Result<SumsReport> {
    let root = existing_dir(dir)?;
    let tree = Tree::walk(&root)?;
    let mut buf = vec![0u8; CHUNK];
    let mut entries = Vec::new();
    for e in &tree.entries {
        match e.meta.kind {
            Kind::Dir => {}
            Kind::File => entries.push((e.rel.clone(), hash_file_with(&e.path, &mut buf)?)),
            other => {
                return Err(Error::input(
                    &e.path,
                    format!(
                        "is a {}: only directories and regular files are summed",
                        other.name()
                    ),
                ));
            }
        }
    }
    let sums = Sums::new(entries)?;
    Ok(SumsReport {
        path: root,
        digest: sums.digest().to_hex().to_string(),
        bytes: tree.file_bytes(),
        files: sums
            .iter()
            .map(|(p, h)| SumsFile {
                path: p.to_string(),
                blake3: h.to_hex().to_string(),
            })
            .collect(),
        sums,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_sorted_by_bytes_and_formatted_as_b3sum_writes_them() {
        let h = blake3::hash(b"x");
        let sums = Sums::new(vec![("a/b".into(), h), ("a-b".into(), h), ("a".into(), h)]).unwrap();
        let hex = h.to_hex();
        assert_eq!(
            sums.text(),
            format!("{hex}  a\n{hex}  a-b\n{hex}  a/b\n"),
            "'-' sorts before '/' in byte order"
        );
        assert_eq!(sums.digest(), blake3::hash(sums.text().as_bytes()));
    }

    #[test]
    fn names_with_backslash_or_newline_are_escaped_like_b3sum() {
        let h = blake3::hash(b"");
        assert_eq!(line("c\nd", &h), format!("\\{}  c\\nd\n", h.to_hex()));
        assert_eq!(line("e\\f", &h), format!("\\{}  e\\\\f\n", h.to_hex()));
        assert!(Sums::new(vec![("a\rb".into(), h)]).is_err());
    }

    #[test]
    fn parse_reads_back_what_text_writes_escapes_included() {
        let sums = Sums::new(vec![
            ("member/snap/db".into(), blake3::hash(b"db")),
            ("odd\\name\nx".into(), blake3::hash(b"odd")),
        ])
        .unwrap();
        assert_eq!(Sums::parse(&sums.text()).unwrap(), sums);
        assert_eq!(sums.get("member/snap/db"), Some(&blake3::hash(b"db")));
        assert_eq!(sums.get("member"), None);
        assert!(Sums::parse("xyz  a\n").is_err());
        assert!(Sums::parse(&format!("{} a\n", blake3::hash(b"").to_hex())).is_err());
    }

    #[test]
    fn known_sums_are_stale_for_files_changed_at_or_after_as_of() {
        let known = KnownSums {
            sums: Sums::new(vec![("f".into(), blake3::hash(b"f"))]).unwrap(),
            as_of: (100, 500),
        };
        assert_eq!(known.fresh("f", (100, 499)), Some(blake3::hash(b"f")));
        assert_eq!(
            known.fresh("f", (100, 500)),
            None,
            "same tick: may have changed"
        );
        assert_eq!(known.fresh("f", (101, 0)), None);
        assert_eq!(known.fresh("g", (1, 0)), None);
    }

    #[test]
    fn different_contents_or_names_give_different_digests() {
        let a = Sums::new(vec![("x".into(), blake3::hash(b"1"))]).unwrap();
        let b = Sums::new(vec![("x".into(), blake3::hash(b"2"))]).unwrap();
        let c = Sums::new(vec![("y".into(), blake3::hash(b"1"))]).unwrap();
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn streaming_hash_equals_one_shot_hash_across_chunk_boundaries() {
        let data: Vec<u8> = (0..(3 * 4096 + 17)).map(|i| (i % 251) as u8).collect();
        let mut buf = vec![0u8; 4096];
        let (h, n) = hash_reader(&mut &data[..], &mut buf).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(h, blake3::hash(&data));
    }
}
