//! A node's data dir on `atoll-lazyfs` (`jepsen/lazyfs/`), a FUSE
//! filesystem that keeps written data in memory until it is fsynced and
//! drops it on demand: a crash that loses what a power loss would, which a
//! plain kill -9 never does (the page cache survives the process). The
//! same mount can fail fsyncs with EIO or report a full disk.

use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The file through which a mount is told to drop its unsynced data.
const CONTROL: &str = ".lazyfs-control";

/// One running `atoll-lazyfs`. Dropping it unmounts.
#[derive(Debug)]
pub struct Mount {
    child: Child,
    mountpoint: PathBuf,
}

impl Mount {
    /// Mounts `backing` at `mountpoint` (both created if missing) with the
    /// `atoll-lazyfs` binary at `binary`, and waits until the mount serves.
    pub fn start(
        binary: &Path,
        backing: &Path,
        mountpoint: &Path,
        log: &Path,
    ) -> io::Result<Mount> {
        std::fs::create_dir_all(backing)?;
        std::fs::create_dir_all(mountpoint)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(binary)
            .arg(backing)
            .arg(mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", binary.display())))?;
        let mut mount = Mount {
            child,
            mountpoint: mountpoint.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mount.mountpoint.join(CONTROL).exists() {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "atoll-lazyfs did not mount {} within 10 s",
                    mountpoint.display()
                )));
            }
            if let Some(status) = mount.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "atoll-lazyfs exited ({status}) before mounting {}",
                    mountpoint.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(mount)
    }

    /// Bytes written and not yet fsynced (whole 4 KiB pages).
    pub fn unsynced_bytes(&self) -> io::Result<u64> {
        let report = std::fs::File::open(self.mountpoint.join(CONTROL))?;
        for line in BufReader::new(report).lines() {
            if let Some(n) = line?.strip_prefix("unsynced_bytes ") {
                return n
                    .trim()
                    .parse()
                    .map_err(|e| io::Error::other(format!("lazyfs report: {e}")));
            }
        }
        Err(io::Error::other("lazyfs report has no unsynced_bytes line"))
    }

    /// Discards every write not fsynced, as a power loss would. Only call
    /// it with no process using the mount.
    pub fn drop_unsynced(&self) -> io::Result<()> {
        self.command("drop")
    }

    /// Starts or stops disk faults: `fail-fsync` (fsyncs fail with EIO and
    /// lose the file's unsynced data), `full` (writes that grow a file fail
    /// with ENOSPC), `heal` (neither).
    pub fn command(&self, command: &str) -> io::Result<()> {
        std::fs::write(self.mountpoint.join(CONTROL), format!("{command}\n"))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mountpoint)
            .status();
    }
}
