//! `atoll-lazyfs <backing-dir> <mountpoint>`: mounts a view of
//! `backing-dir` that loses unsynced writes on demand (see the library
//! docs), and serves it until SIGTERM or SIGINT, then unmounts.
//!
//! - SIGUSR1, or writing `drop` to `<mountpoint>/.lazyfs-control`: discard
//!   every file's unsynced data; prints
//!   `dropped N bytes of unsynced data in M files` to stderr.
//! - SIGTERM / SIGINT: unmount (discarding unsynced data) and exit 0.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

/// How long an unmount may wait for the kernel to end the session.
const UNMOUNT_WAIT: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [backing, mountpoint] = args.as_slice() else {
        bail!("usage: atoll-lazyfs <backing-dir> <mountpoint>");
    };
    // Before mounting, so that a SIGTERM never kills us while mounted.
    let mut signals =
        Signals::new([SIGUSR1, SIGTERM, SIGINT]).context("installing signal handlers")?;
    let mount = atoll_lazyfs::mount(backing, mountpoint)?;
    let control = mount.control();
    eprintln!(
        "atoll-lazyfs: mounted {} at {} (pid {})",
        backing.display(),
        mount.mountpoint().display(),
        std::process::id()
    );

    'serve: while mount.is_serving() {
        for signal in signals.pending() {
            if signal == SIGUSR1 {
                eprintln!("dropped {}", control.drop_unsynced());
            } else {
                break 'serve;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let pending = control.unsynced();
    if mount.is_serving() {
        // The session ends when the kernel drops the mount everywhere. A
        // copy of it in another mount namespace (e.g. of a process started
        // with `ip netns exec` after we mounted) keeps it alive; then our
        // exit closes the connection, and that copy fails with ENOTCONN.
        let (done, unmounted) = mpsc::channel();
        std::thread::spawn(move || done.send(mount.unmount()));
        match unmounted.recv_timeout(UNMOUNT_WAIT) {
            Ok(result) => result?,
            Err(_) => eprintln!(
                "atoll-lazyfs: {} is still mounted in another mount namespace; \
                 exiting closes the connection",
                mountpoint.display()
            ),
        }
        eprintln!(
            "atoll-lazyfs: unmounted {}; discarded {pending}",
            mountpoint.display()
        );
    } else {
        eprintln!(
            "atoll-lazyfs: {} was unmounted; discarded {pending}",
            mountpoint.display()
        );
    }
    Ok(())
}
