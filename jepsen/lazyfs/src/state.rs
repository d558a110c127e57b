//! [`State`]: the inode table, the open files and each file's unsynced
//! data, and every filesystem operation on them. The FUSE glue in `fs.rs`
//! turns requests into calls here and results into replies.
//!
//! Inodes are our own numbers, never reused while mounted, each mapped to a
//! path relative to the backing directory (`None` once unlinked). Renames
//! move the paths of a whole subtree. An open file keeps its own backing
//! `File`, so an unlinked file stays readable and writable through it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, OpenAccMode, OpenFlags, RenameFlags, TimeOrNow};
use nix::fcntl::AT_FDCWD;
use nix::sys::stat::UtimensatFlags;
use nix::sys::time::TimeSpec;

use crate::overlay::{read_full_at, Overlay};

/// The root directory's inode (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: u64 = 1;
/// The control file's inode.
pub const CONTROL: u64 = 2;
/// The control file's name, in the root directory.
pub const CONTROL_NAME: &str = ".lazyfs-control";

/// Result of an operation: an errno goes back to the kernel.
pub type Res<T> = Result<T, Errno>;

/// What a drop would lose, or lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unsynced {
    /// Bytes held in memory and not yet fsynced (at page granularity).
    pub bytes: u64,
    /// Files with such bytes, or with an unsynced size change.
    pub files: usize,
}

impl std::fmt::Display for Unsynced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes of unsynced data in {} files",
            self.bytes, self.files
        )
    }
}

#[derive(Debug)]
struct Node {
    /// Path relative to the backing directory; `None` once unlinked.
    path: Option<PathBuf>,
    /// The kernel's lookup count (`forget` lowers it).
    lookups: u64,
    /// Open file handles.
    open: u32,
    /// Unsynced writes, if any.
    overlay: Option<Overlay>,
}

#[derive(Debug)]
struct OpenFile {
    ino: u64,
    file: File,
}

#[derive(Debug)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: OsString,
}

#[derive(Debug)]
pub struct State {
    root: PathBuf,
    nodes: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next_ino: u64,
    files: HashMap<u64, OpenFile>,
    dirs: HashMap<u64, Vec<DirEntry>>,
    next_fh: u64,
    /// Owner of the control file: the backing directory's owner.
    owner: (u32, u32),
    started: SystemTime,
    /// Disk faults in force.
    faults: Faults,
}

/// Disk faults a mount can be told to inject (and to stop injecting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Every fsync fails with EIO, and the file's unsynced data is lost
    /// (as Linux does: a failed writeback leaves the pages clean), so a
    /// later fsync that succeeds proves nothing about it.
    pub fsync_eio: bool,
    /// The disk is full: a write or allocation that grows a file fails
    /// with ENOSPC.
    pub full: bool,
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = u32::try_from(nsecs).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::new(secs, nsecs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

fn attr(ino: u64, meta: &Metadata, overlay: Option<&Overlay>) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: overlay.map_or(meta.size(), Overlay::size),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: overlay.map_or_else(|| time(meta.mtime(), meta.mtime_nsec()), Overlay::mtime),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: u32::try_from(meta.rdev()).unwrap_or(0),
        blksize: u32::try_from(meta.blksize()).unwrap_or(4096),
        flags: 0,
    }
}

fn timespec(t: Option<TimeOrNow>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => {
            TimeSpec::from(t.duration_since(UNIX_EPOCH).unwrap_or_default())
        }
    }
}

fn nix_err(e: nix::Error) -> Errno {
    Errno::from_i32(e as i32)
}

/// Opens a backing file read-write whatever the caller asked for, so that
/// an fsync through any handle can write the overlay back; falls back to
/// the asked access mode. Never with O_APPEND, O_TRUNC, O_DIRECT or O_SYNC:
/// writes go to the overlay, and we decide when the backing file changes.
fn open_backing(path: &Path, flags: OpenFlags) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .or_else(|_| {
            let mode = flags.acc_mode();
            OpenOptions::new()
                .read(mode != OpenAccMode::O_WRONLY)
                .write(mode != OpenAccMode::O_RDONLY)
                .open(path)
        })
}

fn any_open_file(files: &HashMap<u64, OpenFile>, ino: u64) -> Option<&File> {
    files.values().find(|f| f.ino == ino).map(|f| &f.file)
}

/// Truncates (or extends) a file: at once in the backing file (sizes are
/// metadata, which we never lose) and in its overlay.
fn truncate(overlay: &mut Option<Overlay>, file: Option<&File>, path: &Path, size: u64) -> Res<()> {
    match file {
        Some(file) => file.set_len(size)?,
        None => nix::unistd::truncate(path, i64::try_from(size).map_err(|_| Errno::EFBIG)?)
            .map_err(nix_err)?,
    }
    if let Some(overlay) = overlay {
        overlay.truncate(size);
    }
    Ok(())
}

impl State {
    /// The state of a mount of `root`, an existing directory.
    pub fn new(root: PathBuf) -> std::io::Result<Self> {
        let meta = fs::metadata(&root)?;
        if !meta.is_dir() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let root_node = Node {
            path: Some(PathBuf::new()),
            lookups: 1,
            open: 0,
            overlay: None,
        };
        Ok(Self {
            root,
            nodes: HashMap::from([(ROOT, root_node)]),
            by_path: HashMap::from([(PathBuf::new(), ROOT)]),
            next_ino: CONTROL + 1,
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            owner: (meta.uid(), meta.gid()),
            started: SystemTime::now(),
            faults: Faults::default(),
        })
    }

    // ----- inode table -----

    fn backing(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn node(&self, ino: u64) -> Res<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    /// The backing path of a linked inode.
    fn path(&self, ino: u64) -> Res<PathBuf> {
        let rel = self.node(ino)?.path.as_ref().ok_or(Errno::ENOENT)?;
        Ok(self.backing(rel))
    }

    /// The relative path of `name` in directory `parent`.
    fn child(&self, parent: u64, name: &OsStr) -> Res<PathBuf> {
        let dir = self.node(parent)?.path.as_ref().ok_or(Errno::ENOENT)?;
        Ok(dir.join(name))
    }

    fn is_control(parent: u64, name: &OsStr) -> bool {
        parent == ROOT && name == CONTROL_NAME
    }

    /// The inode of a relative path, allocated on first sight.
    fn ino_for(&mut self, rel: PathBuf) -> u64 {
        if let Some(&ino) = self.by_path.get(&rel) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.by_path.insert(rel.clone(), ino);
        self.nodes.insert(
            ino,
            Node {
                path: Some(rel),
                lookups: 0,
                open: 0,
                overlay: None,
            },
        );
        ino
    }

    /// Forgets an inode nobody can reach any more: the kernel holds no
    /// lookup, no file is open, and it has no unsynced data that a later
    /// lookup of its path would have to show.
    fn collect(&mut self, ino: u64) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        let unreachable = node.path.is_none();
        if ino != ROOT
            && node.lookups == 0
            && node.open == 0
            && (node.overlay.is_none() || unreachable)
        {
            if let Some(path) = &node.path {
                self.by_path.remove(path);
            }
            self.nodes.remove(&ino);
        }
    }

    /// The name `rel` is gone from the backing directory.
    fn detach(&mut self, rel: &Path) {
        if let Some(ino) = self.by_path.remove(rel) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = None;
            }
            self.collect(ino);
        }
    }

    /// Removes the paths at or below `rel`, returning each one's rest of
    /// path below `rel` and its inode.
    fn take_subtree(&mut self, rel: &Path) -> Vec<(PathBuf, u64)> {
        let paths: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(rel))
            .cloned()
            .collect();
        paths
            .into_iter()
            .filter_map(|p| {
                let ino = self.by_path.remove(&p)?;
                let rest = p.strip_prefix(rel).ok()?.to_owned();
                Some((rest, ino))
            })
            .collect()
    }

    /// Puts paths taken by `take_subtree` below `rel`.
    fn put_subtree(&mut self, rel: &Path, subtree: Vec<(PathBuf, u64)>) {
        for (rest, ino) in subtree {
            let path = if rest.as_os_str().is_empty() {
                rel.to_owned()
            } else {
                rel.join(rest)
            };
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path = Some(path.clone());
            }
            self.by_path.insert(path, ino);
        }
    }

    fn any_open_file(&self, ino: u64) -> Option<&File> {
        any_open_file(&self.files, ino)
    }

    fn metadata(&self, ino: u64, fh: Option<u64>) -> Res<Metadata> {
        if let Some(f) = fh
            .and_then(|fh| self.files.get(&fh))
            .filter(|f| f.ino == ino)
        {
            return Ok(f.file.metadata()?);
        }
        match &self.node(ino)?.path {
            Some(rel) => Ok(fs::symlink_metadata(self.backing(rel))?),
            None => Ok(self.any_open_file(ino).ok_or(Errno::ENOENT)?.metadata()?),
        }
    }

    fn control_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo(CONTROL),
            size: 0,
            blocks: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind: FileType::RegularFile,
            perm: 0o600,
            nlink: 1,
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    // ----- operations -----

    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Res<FileAttr> {
        if ino == CONTROL {
            return Ok(self.control_attr());
        }
        let meta = self.metadata(ino, fh)?;
        Ok(attr(ino, &meta, self.node(ino)?.overlay.as_ref()))
    }

    /// Looks `name` up and counts the kernel's new reference.
    pub fn lookup(&mut self, parent: u64, name: &OsStr) -> Res<FileAttr> {
        if Self::is_control(parent, name) {
            return Ok(self.control_attr());
        }
        let rel = self.child(parent, name)?;
        let meta = fs::symlink_metadata(self.backing(&rel))?;
        let ino = self.ino_for(rel);
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        node.lookups += 1;
        Ok(attr(ino, &meta, node.overlay.as_ref()))
    }

    pub fn forget(&mut self, ino: u64, n: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        self.collect(ino);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &mut self,
        ino: u64,
        fh: Option<u64>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Res<FileAttr> {
        if ino == CONTROL {
            return Ok(self.control_attr()); // `echo drop >` truncates it first
        }
        // A linked file is changed by path, an unlinked one through a handle.
        let file = match fh.and_then(|fh| self.files.get(&fh)) {
            Some(f) if f.ino == ino => Some(&f.file),
            _ => any_open_file(&self.files, ino),
        };
        let path = self.node(ino)?.path.as_ref().map(|rel| self.backing(rel));
        let (file, path) = match (path, file) {
            (Some(path), _) => (None, path),
            (None, Some(file)) => (Some(file), PathBuf::new()),
            (None, None) => return Err(Errno::ENOENT),
        };
        if let Some(mode) = mode {
            let perm = Permissions::from_mode(mode & 0o7777);
            match file {
                Some(f) => f.set_permissions(perm)?,
                None => fs::set_permissions(&path, perm)?,
            }
        }
        if uid.is_some() || gid.is_some() {
            match file {
                Some(f) => std::os::unix::fs::fchown(f, uid, gid)?,
                None => std::os::unix::fs::lchown(&path, uid, gid)?,
            }
        }
        if atime.is_some() || mtime.is_some() {
            let (a, m) = (timespec(atime), timespec(mtime));
            match file {
                Some(f) => nix::sys::stat::futimens(f, &a, &m),
                None => nix::sys::stat::utimensat(
                    AT_FDCWD,
                    &path,
                    &a,
                    &m,
                    UtimensatFlags::NoFollowSymlink,
                ),
            }
            .map_err(nix_err)?;
        }
        if let Some(size) = size {
            let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
            truncate(&mut node.overlay, file, &path, size)?;
        }
        self.getattr(ino, fh)
    }

    pub fn readlink(&self, ino: u64) -> Res<Vec<u8>> {
        use std::os::unix::ffi::OsStringExt;
        Ok(fs::read_link(self.path(ino)?)?.into_os_string().into_vec())
    }

    pub fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> Res<FileAttr> {
        if Self::is_control(parent, name) {
            return Err(Errno::EEXIST);
        }
        let rel = self.child(parent, name)?;
        let path = self.backing(&rel);
        fs::create_dir(&path)?;
        // The kernel applied the caller's umask; ours must not apply again.
        fs::set_permissions(&path, Permissions::from_mode(mode & 0o7777))?;
        self.lookup(parent, name)
    }

    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> Res<()> {
        if Self::is_control(parent, name) {
            return Err(Errno::EPERM);
        }
        let rel = self.child(parent, name)?;
        fs::remove_file(self.backing(&rel))?;
        self.detach(&rel);
        Ok(())
    }

    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> Res<()> {
        let rel = self.child(parent, name)?;
        fs::remove_dir(self.backing(&rel))?;
        self.detach(&rel);
        Ok(())
    }

    /// `rename`, or `renameat2` with RENAME_NOREPLACE or RENAME_EXCHANGE.
    /// Atomic in the backing directory (the rename system call itself).
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Res<()> {
        if Self::is_control(parent, name) || Self::is_control(newparent, newname) {
            return Err(Errno::EPERM);
        }
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        let (src, dst) = (self.backing(&from), self.backing(&to));
        if flags.is_empty() {
            fs::rename(&src, &dst)?;
        } else {
            let flags = nix::fcntl::RenameFlags::from_bits(flags.bits()).ok_or(Errno::EINVAL)?;
            nix::fcntl::renameat2(AT_FDCWD, &src, AT_FDCWD, &dst, flags).map_err(nix_err)?;
        }
        if from == to {
            return Ok(());
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            let (a, b) = (self.take_subtree(&from), self.take_subtree(&to));
            self.put_subtree(&to, a);
            self.put_subtree(&from, b);
        } else {
            self.detach(&to); // replaced, if it existed
            let moved = self.take_subtree(&from);
            self.put_subtree(&to, moved);
        }
        Ok(())
    }

    fn add_open_file(&mut self, ino: u64, file: File) -> Res<u64> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.files.insert(fh, OpenFile { ino, file });
        Ok(fh)
    }

    pub fn open(&mut self, ino: u64, flags: OpenFlags) -> Res<u64> {
        if ino == CONTROL {
            return Ok(0);
        }
        let path = self.path(ino)?;
        let file = open_backing(&path, flags)?;
        if flags.0 & libc::O_TRUNC != 0 {
            let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
            truncate(&mut node.overlay, Some(&file), &path, 0)?;
        }
        self.add_open_file(ino, file)
    }

    /// Creates and opens a file (or opens it, if it exists and O_EXCL is
    /// not set).
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Res<(FileAttr, u64)> {
        if Self::is_control(parent, name) {
            return Err(Errno::EEXIST);
        }
        let rel = self.child(parent, name)?;
        let path = self.backing(&rel);
        let exists = fs::symlink_metadata(&path).is_ok();
        if !exists {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(mode & 0o7777)
                .open(&path)?;
            // The kernel applied the caller's umask; ours must not apply again.
            file.set_permissions(Permissions::from_mode(mode & 0o7777))?;
        } else if flags & libc::O_EXCL != 0 {
            return Err(Errno::EEXIST);
        }
        let attr = self.lookup(parent, name)?;
        let ino = attr.ino.0;
        let fh = self.open(ino, OpenFlags(flags))?;
        Ok((self.getattr(ino, Some(fh))?, fh))
    }

    /// Reads through the overlay, if the file has one.
    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Res<Vec<u8>> {
        if ino == CONTROL {
            let Unsynced { bytes, files } = self.unsynced();
            let Faults { fsync_eio, full } = self.faults;
            let text = format!(
                "unsynced_bytes {bytes}\nunsynced_files {files}\nfsync_eio {fsync_eio}\nfull {full}\n"
            );
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(text.len());
            let end = start.saturating_add(size as usize).min(text.len());
            return Ok(text.as_bytes()[start..end].to_vec());
        }
        let file = &self.files.get(&fh).ok_or(Errno::EBADF)?.file;
        match &self.node(ino)?.overlay {
            Some(overlay) => Ok(overlay.read(file, offset, u64::from(size))?),
            None => {
                let mut buf = vec![0; size as usize];
                let n = read_full_at(file, &mut buf, offset)?;
                buf.truncate(n);
                Ok(buf)
            }
        }
    }

    /// Writes into the file's overlay only: the backing file is not touched
    /// until an fsync.
    pub fn write(&mut self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Res<u32> {
        let len = u32::try_from(data.len()).map_err(|_| Errno::EFBIG)?;
        if ino == CONTROL {
            return self.control_command(data).map(|()| len);
        }
        let file = &self.files.get(&fh).ok_or(Errno::EBADF)?.file;
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let overlay = match &mut node.overlay {
            Some(overlay) => overlay,
            empty => empty.insert(Overlay::new(file.metadata()?.len())),
        };
        if self.faults.full && offset.saturating_add(u64::from(len)) > overlay.size() {
            return Err(Errno::ENOSPC);
        }
        overlay.write(file, offset, data)?;
        Ok(len)
    }

    fn control_command(&mut self, data: &[u8]) -> Res<()> {
        match String::from_utf8_lossy(data).trim() {
            "drop" | "crash" => {
                let lost = self.drop_unsynced();
                eprintln!("dropped {lost}");
                Ok(())
            }
            "fail-fsync" => {
                self.faults.fsync_eio = true;
                eprintln!("fsyncs now fail with EIO");
                Ok(())
            }
            "full" => {
                self.faults.full = true;
                eprintln!("the disk is now full");
                Ok(())
            }
            "heal" => {
                self.faults = Faults::default();
                eprintln!("disk faults healed");
                Ok(())
            }
            "" => Ok(()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Writes the file's overlay back and syncs the backing file.
    pub fn fsync(&mut self, ino: u64, fh: u64, datasync: bool) -> Res<()> {
        if ino == CONTROL {
            return Ok(());
        }
        let file = &self.files.get(&fh).ok_or(Errno::EBADF)?.file;
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if self.faults.fsync_eio {
            node.overlay = None;
            return Err(Errno::EIO);
        }
        if let Some(overlay) = &node.overlay {
            overlay.write_back(file)?;
        }
        if datasync {
            file.sync_data()?;
        } else {
            file.sync_all()?;
        }
        // Only once the sync succeeded is the data no longer ours to lose.
        node.overlay = None;
        Ok(())
    }

    /// Closes a handle. Closing does not sync: the overlay stays.
    pub fn release(&mut self, fh: u64) {
        if let Some(OpenFile { ino, .. }) = self.files.remove(&fh) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.open = node.open.saturating_sub(1);
            }
            self.collect(ino);
        }
    }

    /// Space allocation is not modelled, only its effect on the size:
    /// mode 0 may grow the file (at once, like a truncate), KEEP_SIZE is a
    /// no-op, and so is punching a hole past the end. Anything else is
    /// EOPNOTSUPP.
    pub fn fallocate(&mut self, ino: u64, fh: u64, offset: u64, length: u64, mode: i32) -> Res<()> {
        const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        let file = &self.files.get(&fh).ok_or(Errno::EBADF)?.file;
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let size = match &node.overlay {
            Some(overlay) => overlay.size(),
            None => file.metadata()?.len(),
        };
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        match mode {
            0 if end > size && self.faults.full => Err(Errno::ENOSPC),
            0 if end > size => truncate(&mut node.overlay, Some(file), Path::new(""), end),
            0 | KEEP_SIZE => Ok(()),
            m if m == KEEP_SIZE | PUNCH_HOLE && offset >= size => Ok(()),
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    /// Reads the directory's entries once, at opendir.
    pub fn opendir(&mut self, ino: u64) -> Res<u64> {
        let rel = self.node(ino)?.path.clone().ok_or(Errno::ENOENT)?;
        let parent = match rel.parent() {
            Some(p) => self.by_path.get(p).copied().unwrap_or(ROOT),
            None => ROOT,
        };
        let mut entries = vec![
            DirEntry {
                ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                ino: parent,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for entry in fs::read_dir(self.backing(&rel))? {
            let entry = entry?;
            let name = entry.file_name();
            if ino == ROOT && name == CONTROL_NAME {
                continue; // shadowed by the control file, which is hidden
            }
            let kind = FileType::from_std(entry.file_type()?).unwrap_or(FileType::RegularFile);
            let ino = self.ino_for(rel.join(&name));
            entries.push(DirEntry { ino, kind, name });
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.dirs.insert(fh, entries);
        Ok(fh)
    }

    pub fn readdir(&self, fh: u64) -> Res<&[DirEntry]> {
        Ok(self.dirs.get(&fh).ok_or(Errno::EBADF)?)
    }

    pub fn releasedir(&mut self, fh: u64) {
        self.dirs.remove(&fh);
    }

    pub fn fsyncdir(&self, ino: u64) -> Res<()> {
        File::open(self.path(ino)?)?.sync_all()?;
        Ok(())
    }

    pub fn access(&self, ino: u64) -> Res<()> {
        if ino == CONTROL {
            return Ok(());
        }
        self.node(ino).map(drop)
    }

    pub fn statfs(&self) -> Res<nix::sys::statvfs::Statvfs> {
        nix::sys::statvfs::statvfs(&self.root).map_err(nix_err)
    }

    // ----- crash control -----

    /// What a drop would lose now.
    pub fn unsynced(&self) -> Unsynced {
        let overlays = self.nodes.values().filter_map(|n| n.overlay.as_ref());
        Unsynced {
            bytes: overlays.clone().map(Overlay::unsynced_bytes).sum(),
            files: overlays.count(),
        }
    }

    /// Discards every file's unsynced data, as a power loss would.
    pub fn drop_unsynced(&mut self) -> Unsynced {
        let lost = self.unsynced();
        let mut emptied = Vec::new();
        for (&ino, node) in &mut self.nodes {
            if node.overlay.take().is_some() {
                emptied.push(ino);
            }
        }
        for ino in emptied {
            self.collect(ino);
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, State) {
        let dir = tempfile::tempdir().unwrap();
        let state = State::new(dir.path().to_owned()).unwrap();
        (dir, state)
    }

    fn rw() -> i32 {
        libc::O_RDWR
    }

    #[test]
    fn a_failing_fsync_loses_the_unsynced_data_and_a_full_disk_refuses_growth() {
        let (_dir, mut s) = state();
        let (attr, fh) = s.create(ROOT, "f".as_ref(), 0o644, rw()).unwrap();
        let ino = attr.ino.0;
        s.write(ino, fh, 0, b"durable").unwrap();
        s.fsync(ino, fh, true).unwrap();
        s.write(CONTROL, 0, 0, b"fail-fsync\n").unwrap();
        s.write(ino, fh, 7, b" lost").unwrap();
        assert_eq!(s.fsync(ino, fh, true), Err(Errno::EIO));
        s.write(CONTROL, 0, 0, b"heal").unwrap();
        // The failed fsync took the data with it; this one has nothing to do.
        s.fsync(ino, fh, true).unwrap();
        assert_eq!(s.read(ino, fh, 0, 64).unwrap(), b"durable");
        s.write(CONTROL, 0, 0, b"full").unwrap();
        assert_eq!(s.write(ino, fh, 7, b"!"), Err(Errno::ENOSPC));
        s.write(ino, fh, 0, b"D").unwrap();
        assert_eq!(s.fallocate(ino, fh, 0, 4096, 0), Err(Errno::ENOSPC));
        let status = s.read(CONTROL, 0, 0, 256).unwrap();
        assert!(String::from_utf8_lossy(&status).contains("full true"));
        s.write(CONTROL, 0, 0, b"heal").unwrap();
        s.write(ino, fh, 7, b"!").unwrap();
        assert_eq!(s.read(ino, fh, 0, 64).unwrap(), b"Durable!");
    }

    #[test]
    fn writes_stay_in_memory_until_fsync_and_a_drop_loses_the_rest() {
        let (dir, mut s) = state();
        let (attr, fh) = s.create(ROOT, "f".as_ref(), 0o644, rw()).unwrap();
        let ino = attr.ino.0;
        s.write(ino, fh, 0, b"synced").unwrap();
        s.fsync(ino, fh, true).unwrap();
        s.write(ino, fh, 6, b" lost").unwrap();
        assert_eq!(s.read(ino, fh, 0, 100).unwrap(), b"synced lost");
        assert_eq!(s.getattr(ino, None).unwrap().size, 11);
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"synced");
        assert_eq!(
            s.unsynced(),
            Unsynced {
                bytes: 11,
                files: 1
            }
        );
        s.release(fh); // closing does not sync
        assert_eq!(s.unsynced().files, 1);
        assert_eq!(
            s.drop_unsynced(),
            Unsynced {
                bytes: 11,
                files: 1
            }
        );
        let fh = s.open(ino, OpenFlags(rw())).unwrap();
        assert_eq!(s.read(ino, fh, 0, 100).unwrap(), b"synced");
        assert_eq!(s.getattr(ino, None).unwrap().size, 6);
    }

    #[test]
    fn an_unlinked_open_file_keeps_working_through_its_handle() {
        let (_dir, mut s) = state();
        let (attr, fh) = s.create(ROOT, "f".as_ref(), 0o644, rw()).unwrap();
        let ino = attr.ino.0;
        s.write(ino, fh, 0, b"abc").unwrap();
        s.unlink(ROOT, "f".as_ref()).unwrap();
        assert_eq!(s.lookup(ROOT, "f".as_ref()), Err(Errno::ENOENT));
        s.write(ino, fh, 3, b"def").unwrap();
        s.setattr(ino, Some(fh), None, None, None, Some(5), None, None)
            .unwrap();
        assert_eq!(s.read(ino, fh, 0, 100).unwrap(), b"abcde");
        s.fsync(ino, fh, false).unwrap();
        assert_eq!(s.getattr(ino, Some(fh)).unwrap().size, 5);
        // A new file of the same name is a new inode.
        let (attr2, _) = s.create(ROOT, "f".as_ref(), 0o644, rw()).unwrap();
        assert_ne!(attr2.ino.0, ino);
        assert_eq!(attr2.size, 0);
        s.release(fh);
        s.forget(ino, 1);
        assert!(s.node(ino).is_err());
    }

    #[test]
    fn rename_moves_unsynced_data_and_replaces_the_target() {
        let (dir, mut s) = state();
        let (old, fh_old) = s.create(ROOT, "CURRENT".as_ref(), 0o644, rw()).unwrap();
        s.write(old.ino.0, fh_old, 0, b"MANIFEST-1\n").unwrap();
        s.fsync(old.ino.0, fh_old, true).unwrap();
        let (tmp, fh) = s.create(ROOT, "tmp".as_ref(), 0o644, rw()).unwrap();
        s.write(tmp.ino.0, fh, 0, b"MANIFEST-2\n").unwrap();
        s.rename(
            ROOT,
            "tmp".as_ref(),
            ROOT,
            "CURRENT".as_ref(),
            RenameFlags::empty(),
        )
        .unwrap();
        let now = s.lookup(ROOT, "CURRENT".as_ref()).unwrap();
        assert_eq!(now.ino, tmp.ino);
        assert_eq!(s.read(tmp.ino.0, fh, 0, 100).unwrap(), b"MANIFEST-2\n");
        // The replaced file is still readable through its handle.
        assert_eq!(s.read(old.ino.0, fh_old, 0, 100).unwrap(), b"MANIFEST-1\n");
        // The rename was applied at once; the data was not synced.
        s.drop_unsynced();
        assert_eq!(fs::read(dir.path().join("CURRENT")).unwrap(), b"");
        assert!(s
            .rename(
                ROOT,
                "CURRENT".as_ref(),
                ROOT,
                "CURRENT".as_ref(),
                RenameFlags::RENAME_NOREPLACE
            )
            .is_err());
    }

    #[test]
    fn renaming_a_directory_moves_the_paths_below_it() {
        let (_dir, mut s) = state();
        let d = s.mkdir(ROOT, "a".as_ref(), 0o755).unwrap().ino.0;
        let (f, fh) = s.create(d, "f".as_ref(), 0o644, rw()).unwrap();
        s.write(f.ino.0, fh, 0, b"x").unwrap();
        s.rename(ROOT, "a".as_ref(), ROOT, "b".as_ref(), RenameFlags::empty())
            .unwrap();
        let b = s.lookup(ROOT, "b".as_ref()).unwrap().ino.0;
        assert_eq!(b, d);
        assert_eq!(s.lookup(b, "f".as_ref()).unwrap().ino, f.ino);
        assert_eq!(s.lookup(b, "f".as_ref()).unwrap().size, 1);
        let fh2 = s.open(f.ino.0, OpenFlags(rw())).unwrap();
        assert_eq!(s.read(f.ino.0, fh2, 0, 10).unwrap(), b"x");
    }

    #[test]
    fn exchange_swaps_the_two_names() {
        let (_dir, mut s) = state();
        let (a, _) = s.create(ROOT, "a".as_ref(), 0o644, rw()).unwrap();
        let (b, _) = s.create(ROOT, "b".as_ref(), 0o644, rw()).unwrap();
        s.rename(
            ROOT,
            "a".as_ref(),
            ROOT,
            "b".as_ref(),
            RenameFlags::RENAME_EXCHANGE,
        )
        .unwrap();
        assert_eq!(s.lookup(ROOT, "a".as_ref()).unwrap().ino, b.ino);
        assert_eq!(s.lookup(ROOT, "b".as_ref()).unwrap().ino, a.ino);
    }

    #[test]
    fn a_forgotten_file_keeps_its_unsynced_data() {
        let (_dir, mut s) = state();
        let (attr, fh) = s.create(ROOT, "f".as_ref(), 0o644, rw()).unwrap();
        s.write(attr.ino.0, fh, 0, b"pending").unwrap();
        s.release(fh);
        s.forget(attr.ino.0, 2); // lookup + create
        let again = s.lookup(ROOT, "f".as_ref()).unwrap();
        assert_eq!(again.ino, attr.ino);
        assert_eq!(again.size, 7);
    }

    #[test]
    fn truncate_by_setattr_cuts_the_overlay_and_the_backing_file() {
        let (dir, mut s) = state();
        let (attr, fh) = s.create(ROOT, "f".as_ref(), 0o644, rw()).unwrap();
        let ino = attr.ino.0;
        s.write(ino, fh, 0, b"0123456789").unwrap();
        s.fsync(ino, fh, true).unwrap();
        s.write(ino, fh, 10, b"abcdef").unwrap();
        let attr = s
            .setattr(ino, None, None, None, None, Some(12), None, None)
            .unwrap();
        assert_eq!(attr.size, 12);
        assert_eq!(s.read(ino, fh, 0, 100).unwrap(), b"0123456789ab");
        // The size change is metadata and applied at once; the data is not.
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"0123456789\0\0");
        s.setattr(ino, None, None, None, None, Some(4), None, None)
            .unwrap();
        assert_eq!(s.read(ino, fh, 0, 100).unwrap(), b"0123");
        s.drop_unsynced();
        assert_eq!(s.read(ino, fh, 0, 100).unwrap(), b"0123");
    }

    #[test]
    fn the_control_file_drops_on_command() {
        let (_dir, mut s) = state();
        let (attr, fh) = s.create(ROOT, "f".as_ref(), 0o644, rw()).unwrap();
        s.write(attr.ino.0, fh, 0, b"pending").unwrap();
        assert_eq!(
            s.lookup(ROOT, CONTROL_NAME.as_ref()).unwrap().ino.0,
            CONTROL
        );
        let cfh = s.open(CONTROL, OpenFlags(rw())).unwrap();
        let status = s.read(CONTROL, cfh, 0, 4096).unwrap();
        assert_eq!(
            status,
            b"unsynced_bytes 7\nunsynced_files 1\nfsync_eio false\nfull false\n"
        );
        assert_eq!(s.write(CONTROL, cfh, 0, b"bogus\n"), Err(Errno::EINVAL));
        s.write(CONTROL, cfh, 0, b"drop\n").unwrap();
        assert_eq!(s.read(attr.ino.0, fh, 0, 100).unwrap(), b"");
        let dh = s.opendir(ROOT).unwrap();
        let names: Vec<_> = s
            .readdir(dh)
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        assert_eq!(names, [".", "..", "f"]);
    }
}
