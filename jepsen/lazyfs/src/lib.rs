//! `atoll-lazyfs`: a FUSE pass-through filesystem that loses unsynced
//! writes on demand, in the spirit of Jepsen's LazyFS.
//!
//! A SIGKILLed process loses nothing that it wrote: the data is in the page
//! cache, and the kernel writes it out later. So killing a node proves
//! nothing about its fsyncs. Atoll's fault-injection harness instead puts a
//! node's data dir on this filesystem and "crashes" the node by killing it
//! and then telling the filesystem to drop everything not fsynced, as a
//! power loss would.
//!
//! # What it does
//!
//! Every name under the mountpoint is the same name in the backing
//! directory. File data written through the mount does not reach the
//! backing file: it goes to the file's in-memory [`overlay`], which
//! reads see at once. An `fsync` or `fdatasync` of the file writes its
//! overlay to the backing file and syncs that (so do writes to a file
//! opened with `O_SYNC` or `O_DSYNC`: the kernel follows each with an
//! fsync). Closing a file does not.
//!
//! A *drop* discards every overlay: each file is left with the content and
//! size it had at its last fsync (or at a later truncate, below). Trigger
//! one with
//!
//! - the control file: `echo drop > <mountpoint>/.lazyfs-control` (or
//!   `crash`). The write returns once the drop is done, so this is the one
//!   to use from a harness. Reading the file tells what a drop would lose
//!   (`unsynced_bytes N`, `unsynced_files M`). It does not appear in
//!   directory listings, and shadows a backing file of that name;
//! - the `atoll-lazyfs` binary's SIGUSR1, which is asynchronous: the drop is
//!   done when `dropped N bytes of unsynced data in M files` is printed.
//!
//! Only crash with no process using the mount (kill them first): the kernel
//! forgets cached pages of a file when it is next opened, not while it is
//! open. A drop covers the whole mount, so give each node its own mount
//! (own process, backing dir and mountpoint): then crashing one node loses
//! only its data, and the nodes' fsyncs do not wait for each other (one
//! process serves its requests one at a time).
//!
//! If the process dies, the mountpoint is left "not connected": unmount it
//! with `fusermount3 -u` (or `umount -l`) before mounting again. A node run
//! in its own mount namespace (`ip netns exec`) sees the mount if it was
//! made before the node started; that copy then keeps the mount alive past
//! our unmount, until the binary exits (it waits 5 s for the session to end).
//!
//! # Disk faults
//!
//! The control file also takes `fail-fsync` (every fsync fails with EIO,
//! and the file's unsynced data is lost with it, as Linux loses the dirty
//! pages of a failed writeback), `full` (a write or allocation that grows a
//! file fails with ENOSPC) and `heal` (both stop). Reading it tells which
//! are in force (`fsync_eio true|false`, `full true|false`).
//!
//! # What a drop loses, and what it does not
//!
//! Lost: file data written since the file's last fsync, including a size
//! grown by those writes. Kept: all metadata. Creating, unlinking and
//! renaming files and directories, mkdir, rmdir, chmod, chown, utimes and
//! truncates (`ftruncate`, `O_TRUNC`, a growing `fallocate`) are applied to
//! the backing directory at once, as if every metadata change were
//! journaled before it returned. So a file created and never fsynced
//! survives a drop, empty; a rename survives even if the renamed file's data
//! does not. (LazyFS by default also models data loss only.)
//!
//! # Not modelled
//!
//! - Metadata loss: an un-fsynced directory (a new file's entry, a rename)
//!   always survives. `fsyncdir` just syncs the backing directory.
//! - Torn or reordered writes: a drop loses whole overlays; there is no
//!   partial write-back of a file, and no "some pages made it" outcome.
//! - fsync errors and full disks: an fsync fails only if the backing
//!   file's does.
//! - Hard links (`link` answers EOPNOTSUPP; hard links already in the
//!   backing directory are seen as separate files), mknod, symlink (symlinks
//!   already there can be read), extended attributes and file locks.
//!   A file mapped or open across a drop may still show discarded pages.
//! - Space: `fallocate` reserves nothing (KEEP_SIZE is a no-op; mode 0 only
//!   grows the size; punching a hole inside the data is EOPNOTSUPP).
//! - Changes made to the backing directory behind the mount's back.
//! - Other users: the mount is for the user who mounted it (root, for the
//!   harness), with the kernel checking permissions (`default_permissions`);
//!   new files belong to that user.
//!
//! Unsynced data still pending at unmount is discarded: the harness always
//! crashes a node (kill, drop) before it unmounts, and an orderly shutdown
//! of a node fsyncs whatever it needs.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use fuser::{BackgroundSession, Config, MountOption};

mod fs;
pub mod overlay;
mod state;

pub use fs::LazyFs;
pub use state::{Unsynced, CONTROL_NAME};

use state::State;

/// Errors of mounting and unmounting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing directory cannot be used.
    #[error("backing directory {}: {source}", path.display())]
    Backing {
        /// The backing directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The mount failed.
    #[error("mounting at {}: {source}", path.display())]
    Mount {
        /// The mountpoint.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The unmount failed.
    #[error("unmounting {}: {source}", path.display())]
    Unmount {
        /// The mountpoint.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Drops unsynced data of a mounted filesystem; cheap to clone, usable
/// from any thread.
#[derive(Clone, Debug)]
pub struct Control {
    state: Arc<Mutex<State>>,
}

impl Control {
    /// Discards every file's unsynced data, as a power loss would, and
    /// tells what was lost.
    pub fn drop_unsynced(&self) -> Unsynced {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drop_unsynced()
    }

    /// What a drop would lose now.
    pub fn unsynced(&self) -> Unsynced {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unsynced()
    }
}

/// A mounted atoll-lazyfs, served by a background thread. Dropping it
/// unmounts (without waiting); prefer [`Mount::unmount`].
#[derive(Debug)]
pub struct Mount {
    session: BackgroundSession,
    control: Control,
    mountpoint: PathBuf,
}

/// Mounts a lazy view of the directory `backing` at `mountpoint`.
pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Mount, Error> {
    let backing_err = |source| Error::Backing {
        path: backing.to_owned(),
        source,
    };
    let mount_err = |source| Error::Mount {
        path: mountpoint.to_owned(),
        source,
    };
    let root = backing.canonicalize().map_err(backing_err)?;
    let state = Arc::new(Mutex::new(State::new(root).map_err(backing_err)?));
    let mountpoint = mountpoint.canonicalize().map_err(mount_err)?;

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("atoll-lazyfs".into()),
        MountOption::Subtype("atoll-lazyfs".into()),
        MountOption::DefaultPermissions,
    ];
    let session =
        fuser::spawn_mount(LazyFs::new(state.clone()), &mountpoint, &config).map_err(mount_err)?;
    Ok(Mount {
        session,
        control: Control { state },
        mountpoint,
    })
}

impl Mount {
    /// A handle to drop unsynced data.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The (canonical) mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// False once the kernel ended the session (e.g. `fusermount3 -u`).
    pub fn is_serving(&self) -> bool {
        !self.session.guard.is_finished()
    }

    /// Unmounts and waits for the session to end. Unsynced data is
    /// discarded. If a process still uses the mount, it is detached at once
    /// (`umount -l`) and the kernel ends the mount when the last user is
    /// gone (or this process exits).
    pub fn unmount(self) -> Result<(), Error> {
        let Mount {
            session,
            mountpoint,
            ..
        } = self;
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                eprintln!(
                    "atoll-lazyfs: {} is busy; detaching it lazily",
                    mountpoint.display()
                );
                nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH).map_err(
                    |errno| Error::Unmount {
                        path: mountpoint.clone(),
                        source: errno.into(),
                    },
                )
            }
            Err(source) => Err(Error::Unmount {
                path: mountpoint,
                source,
            }),
        }
    }
}
