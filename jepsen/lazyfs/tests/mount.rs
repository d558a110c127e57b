//! Mounts atoll-lazyfs for real (needs root and /dev/fuse; skipped, with a
//! note, without them): through the library, and as the binary driven by
//! signals.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns, too

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::fcntl::{FallocateFlags, RenameFlags, AT_FDCWD};

fn can_mount() -> bool {
    let ok = nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("skipped: mounting needs root and /dev/fuse");
    }
    ok
}

fn is_mounted(mountpoint: &Path) -> bool {
    let mountpoint = mountpoint.canonicalize().unwrap();
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(mountpoint.to_str().unwrap()))
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap()
}

#[test]
fn unsynced_writes_are_lost_on_a_drop_and_synced_ones_are_not() {
    if !can_mount() {
        return;
    }
    let backing = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mount = atoll_lazyfs::mount(backing.path(), mnt.path()).unwrap();
    assert!(is_mounted(mnt.path()));
    let path = mnt.path().join("wal");

    let mut f = File::create(&path).unwrap();
    f.write_all(b"synced part;").unwrap();
    f.sync_data().unwrap();
    f.write_all(b" unsynced part").unwrap();
    // Visible at once, through another descriptor (which also fills the
    // kernel's page cache with the unsynced bytes).
    assert_eq!(read(&path), b"synced part; unsynced part");
    assert_eq!(read(&backing.path().join("wal")), b"synced part;");
    drop(f); // closing does not sync

    let status = fs::read_to_string(mnt.path().join(".lazyfs-control")).unwrap();
    assert_eq!(
        status,
        "unsynced_bytes 26\nunsynced_files 1\nfsync_eio false\nfull false\n"
    );
    fs::write(mnt.path().join(".lazyfs-control"), "drop\n").unwrap();

    assert_eq!(read(&path), b"synced part;");
    assert_eq!(fs::metadata(&path).unwrap().len(), 12);
    assert_eq!(mount.control().unsynced().files, 0);

    // The control file is hidden from listings.
    let names: Vec<_> = fs::read_dir(mnt.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["wal"]);
    mount.unmount().unwrap();
    assert!(!is_mounted(mnt.path()));
    assert_eq!(read(&backing.path().join("wal")), b"synced part;");
}

#[test]
fn what_rocksdb_does_works() {
    if !can_mount() {
        return;
    }
    let backing = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mount = atoll_lazyfs::mount(backing.path(), mnt.path()).unwrap();
    let dir = mnt.path().join("db");
    fs::create_dir(&dir).unwrap();

    // CURRENT is replaced atomically by a rename, and survives a drop if
    // the new file was synced first.
    fs::write(dir.join("CURRENT"), "MANIFEST-000001\n").unwrap();
    let mut tmp = File::create(dir.join("000002.dbtmp")).unwrap();
    tmp.write_all(b"MANIFEST-000002\n").unwrap();
    tmp.sync_all().unwrap();
    fs::rename(dir.join("000002.dbtmp"), dir.join("CURRENT")).unwrap();
    File::open(&dir).unwrap().sync_all().unwrap(); // fsyncdir
    let err = nix::fcntl::renameat2(
        AT_FDCWD,
        &dir.join("CURRENT"),
        AT_FDCWD,
        &dir.join("CURRENT"),
        RenameFlags::RENAME_NOREPLACE,
    )
    .unwrap_err();
    assert_eq!(err, nix::errno::Errno::EEXIST);

    // A WAL: preallocated with KEEP_SIZE, appended, synced, deleted while
    // still open.
    let wal = dir.join("000003.log");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&wal)
        .unwrap();
    nix::fcntl::fallocate(&f, FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, 1 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
    for i in 0..1000 {
        f.write_all(format!("record {i:04}\n").as_bytes()).unwrap();
        if i % 100 == 99 {
            f.sync_data().unwrap();
        }
    }
    f.write_all(b"unsynced tail\n").unwrap();
    fs::remove_file(&wal).unwrap();
    let mut head = [0; 12];
    f.read_exact_at(&mut head, 12).unwrap();
    assert_eq!(&head, b"record 0001\n");
    assert_eq!(f.metadata().unwrap().len(), 12 * 1000 + 14);
    drop(f);

    // O_TRUNC cuts unsynced data too.
    let mut f = File::create(dir.join("LOG")).unwrap();
    f.write_all(b"old").unwrap();
    drop(f);
    fs::write(dir.join("LOG"), "new").unwrap();
    assert_eq!(read(&dir.join("LOG")), b"new");

    // O_DSYNC writes are synced: the kernel sends an fsync after each.
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(dir.join("dsync"))
        .unwrap();
    f.write_all(b"durable").unwrap();
    drop(f);

    let lost = mount.control().drop_unsynced();
    assert_eq!(lost.files, 1, "only LOG has unsynced data");
    assert_eq!(read(&dir.join("CURRENT")), b"MANIFEST-000002\n");
    assert_eq!(read(&dir.join("LOG")), b"");
    assert!(!wal.exists());
    assert_eq!(read(&dir.join("dsync")), b"durable");
    mount.unmount().unwrap();
}

#[test]
fn the_binary_drops_on_sigusr1_and_unmounts_on_sigterm() {
    if !can_mount() {
        return;
    }
    let backing = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_atoll-lazyfs"))
        .arg(backing.path())
        .arg(mnt.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = || lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(next_line().starts_with("atoll-lazyfs: mounted"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);

    let path = mnt.path().join("f");
    let mut f = File::create(&path).unwrap();
    f.write_all(&[b's'; 10_000]).unwrap();
    f.sync_all().unwrap();
    f.write_all(&[b'u'; 10_000]).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&path).unwrap().len(), 20_000);

    nix::sys::signal::kill(pid, nix::sys::signal::SIGUSR1).unwrap();
    assert_eq!(
        next_line(),
        // Whole pages: 8192..20000 (the page holding byte 10000 on).
        "dropped 11808 bytes of unsynced data in 1 files"
    );
    assert_eq!(read(&path), vec![b's'; 10_000]);

    nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).unwrap();
    assert!(next_line().starts_with("atoll-lazyfs: unmounted"));
    assert!(child.wait().unwrap().success());
    assert!(!is_mounted(mnt.path()));
}

/// Random writes, truncates, fsyncs and drops on one file, checked after
/// every step against a model: the file's content, and its content as of
/// its last fsync (sizes change in both at once: truncates are metadata).
#[test]
fn random_operations_match_a_model() {
    if !can_mount() {
        return;
    }
    let backing = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let mount = atoll_lazyfs::mount(backing.path(), mnt.path()).unwrap();
    let path = mnt.path().join("f");
    let open = || {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap()
    };
    let mut file = open();
    let (mut current, mut synced) = (Vec::<u8>::new(), Vec::<u8>::new());
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for step in 0..3000 {
        match next(100) {
            0..=59 => {
                let offset = next(40_000) as usize;
                let len = 1 + next(9_000) as usize;
                let byte = (step % 250) as u8 + 1;
                file.write_all_at(&vec![byte; len], offset as u64).unwrap();
                if current.len() < offset + len {
                    current.resize(offset + len, 0);
                }
                current[offset..offset + len].fill(byte);
            }
            60..=74 => {
                let size = next(50_000) as usize;
                file.set_len(size as u64).unwrap();
                current.resize(size, 0);
                synced.resize(size, 0);
            }
            75..=89 => {
                file.sync_data().unwrap();
                synced = current.clone();
            }
            _ => {
                drop(file);
                mount.control().drop_unsynced();
                file = open();
                current = synced.clone();
            }
        }
        let mut seen = vec![0; current.len() + 100];
        let n = atoll_lazyfs::overlay::read_full_at(&file, &mut seen, 0).unwrap();
        seen.truncate(n);
        assert!(seen == current, "step {step}: content differs");
    }
    drop(file);
    mount.control().drop_unsynced();
    assert!(read(&backing.path().join("f")) == synced);
    mount.unmount().unwrap();
}
