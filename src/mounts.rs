//! Which filesystem a host path lives on: its mount point, as `/proc/self/mountinfo` names
//! it — the `mountpoint` label node_exporter puts on `node_filesystem_*`, so that an alert
//! on the etcd data dir's free space can follow the data dir wherever a migration moved it.

use std::io;
use std::path::{Path, PathBuf};

/// A path and the mount point of the filesystem holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub mount_point: PathBuf,
}

/// The mount point of the filesystem that holds `path` (which need not exist yet: its
/// nearest existing ancestor decides). Symlinks are resolved first, as the kernel would.
pub fn locate(path: &Path) -> io::Result<Location> {
    let resolved = resolve_existing(path)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mount_point = longest_mount(&mountinfo, &resolved)
        .ok_or_else(|| io::Error::other(format!("no mount holds {}", resolved.display())))?;
    Ok(Location {
        path: path.to_path_buf(),
        mount_point,
    })
}

/// `path` with its longest existing prefix canonicalized and the rest appended.
fn resolve_existing(path: &Path) -> io::Result<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(c) => {
                return Ok(rest.iter().rev().fold(c, |p: PathBuf, r| p.join(r)));
            }
            Err(e) => match (existing.file_name(), existing.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name.to_os_string());
                    existing = parent.to_path_buf();
                }
                _ => return Err(e),
            },
        }
    }
}

/// The deepest mount point that is a prefix of `path` (component-wise). Of mounts on the
/// same point the last one listed is on top, and that is what `max_by_key` keeps.
fn longest_mount(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.components().count())
}

/// mountinfo writes space, tab, newline and backslash as `\040`, `\011`, `\012`, `\134`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let code =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid shared:2 - proc proc rw
30 22 8:17 / /mnt/etcd-disk rw,noatime shared:9 - ext4 /dev/sdb rw
31 22 8:33 / /mnt/etcd rw shared:10 - ext4 /dev/sdc rw
32 22 8:49 / /srv/my\\040disk rw shared:11 - xfs /dev/sdd rw
33 30 8:65 / /mnt/etcd-disk rw shared:12 - xfs /dev/sde rw
";

    #[test]
    fn deepest_prefix_by_component_topmost_mount_wins() {
        let at = |p: &str| longest_mount(MOUNTINFO, Path::new(p)).unwrap();
        assert_eq!(at("/var/lib/etcd"), PathBuf::from("/"));
        assert_eq!(at("/mnt/etcd-disk/etcd"), PathBuf::from("/mnt/etcd-disk"));
        // /mnt/etcd is not a prefix of /mnt/etcd-disk: components, not strings.
        assert_eq!(at("/mnt/etcd-disk"), PathBuf::from("/mnt/etcd-disk"));
        assert_eq!(at("/mnt/etcd/member"), PathBuf::from("/mnt/etcd"));
        assert_eq!(at("/srv/my disk/etcd"), PathBuf::from("/srv/my disk"));
        assert_eq!(longest_mount("", Path::new("/x")), None);
    }

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
    }

    #[test]
    fn a_path_that_does_not_exist_yet_is_judged_by_its_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not/yet");
        let resolved = resolve_existing(&missing).unwrap();
        assert_eq!(resolved, dir.path().canonicalize().unwrap().join("not/yet"));
        let loc = locate(&missing).unwrap();
        assert_eq!(loc.path, missing);
        assert!(resolved.starts_with(&loc.mount_point), "{loc:?}");
        assert_eq!(locate(Path::new("/")).unwrap().mount_point, Path::new("/"));
        // A real mount other than /, read from this machine's mountinfo.
        let proc = locate(Path::new("/proc/self/status")).unwrap();
        assert_eq!(proc.mount_point, Path::new("/proc"));
    }
}
