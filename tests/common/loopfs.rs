//! A real filesystem for a test: a sparse backing file in a temp dir, attached to a loop
//! device (`losetup -f --show`), formatted (`mkfs.ext4` or `mkfs.xfs`) and mounted on a
//! fresh dir. Dropping it unmounts, detaches and deletes, also when the test panics.
//! Declare it *before* a `Lab` that uses it, so the lab (and etcd) go first.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct LoopFs {
    pub fstype: &'static str,
    pub device: String,
    pub mountpoint: PathBuf,
    mounted: bool,
    dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{cmd:?}: {e} (scripts/install-deps.sh installs it)"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl LoopFs {
    /// A `bytes`-sized filesystem of `fstype` ("ext4" or "xfs"), mounted. ext4 gets no
    /// reserved blocks, so root sees the whole free space, as xfs gives it.
    pub fn new(fstype: &'static str, bytes: u64) -> LoopFs {
        let dir = tempfile::Builder::new()
            .prefix("etcdops-loopfs-")
            .tempdir()
            .expect("temp dir");
        let image = dir.path().join("disk.img");
        fs::File::create(&image)
            .and_then(|f| f.set_len(bytes))
            .expect("sparse backing file");
        let device = run(Command::new("losetup").args(["-f", "--show"]).arg(&image))
            .unwrap_or_else(|e| panic!("attach a loop device: {e}"));
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&mountpoint).unwrap();
        // From here on, Drop detaches what was attached even if a later step fails.
        let mut lfs = LoopFs {
            fstype,
            device,
            mountpoint,
            mounted: false,
            dir,
        };
        let mkfs = match fstype {
            "ext4" => run(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0", &lfs.device])),
            "xfs" => run(Command::new("mkfs.xfs").args(["-q", "-f", &lfs.device])),
            other => panic!("no mkfs for {other}"),
        };
        mkfs.unwrap_or_else(|e| panic!("format {}: {e}", lfs.device));
        run(Command::new("mount")
            .args(["-t", fstype, &lfs.device])
            .arg(&lfs.mountpoint))
        .unwrap_or_else(|e| panic!("mount {}: {e}", lfs.device));
        lfs.mounted = true;
        lfs
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Bytes root may still write on the filesystem.
    pub fn free(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.mountpoint).expect("statvfs");
        st.blocks_free() * st.fragment_size()
    }

    /// The filesystem type the kernel reports for the mountpoint (from /proc/self/mounts).
    pub fn mounted_type(&self) -> Option<String> {
        let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
        let mp = self.mountpoint.to_str()?;
        mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[1] == mp).then(|| f[2].to_string())
        })
    }

    /// Write `name` on this filesystem until it is full (ENOSPC), as another process
    /// growing a file would; returns the bytes written.
    pub fn fill(&self, name: &str) -> u64 {
        use std::io::Write;
        let mut f = fs::File::create(self.mountpoint.join(name)).expect("create filler");
        let mut written = 0u64;
        for chunk in [1 << 20, 64 << 10, 4 << 10, 512] {
            let buf = vec![0xf1u8; chunk];
            loop {
                match f.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                    Err(e) => panic!("fill {}: {e}", self.mountpoint.display()),
                }
            }
        }
        // Flush the delayed allocation, so the space is really taken now.
        let _ = f.sync_all();
        written
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.mountpoint)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Still busy (a process of a failed test): detach it lazily.
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&self.mountpoint)
                    .status();
            }
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}
