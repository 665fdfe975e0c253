//! POSIX behaviour of RvmFS on real FUSE mounts, through ordinary syscalls.
//!
//! Each test formats a `MemStore`, mounts it in a temporary directory and
//! unmounts it when the guard drops (also on failure). Without `/dev/fuse`
//! the tests fail when `CI=true` and are skipped loudly otherwise.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, Mode, RenameFlags, Timespec, Timestamps, XattrFlags, CWD};
use rustix::io::Errno;
use rvmfs::{mount, MemStore, MountHandle, MountOptions, RvmFs};

struct Mounted {
    handle: Option<MountHandle<Arc<MemStore>>>,
    store: Arc<MemStore>,
    dir: tempfile::TempDir,
}

impl Mounted {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn fs(&self) -> &RvmFs<Arc<MemStore>> {
        self.handle.as_ref().expect("mounted").fs()
    }

    /// Unmounts and mounts the same store again (after the unmount commit).
    fn remount(&mut self) {
        self.handle.take().expect("mounted").unmount().expect("unmount");
        let fs = RvmFs::open(Arc::clone(&self.store), options().fs_options()).expect("reopen");
        self.handle = Some(mount(fs, self.dir.path(), &options()).expect("remount"));
    }
}

fn options() -> MountOptions {
    MountOptions { threads: 2, ..MountOptions::default() }
}

fn mounted(pages: u64) -> Option<Mounted> {
    mounted_with(pages, options())
}

fn mounted_with(pages: u64, options: MountOptions) -> Option<Mounted> {
    if !Path::new("/dev/fuse").exists() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "/dev/fuse is missing in CI");
        eprintln!("SKIPPED: /dev/fuse is missing; RvmFS mount tests did not run");
        return None;
    }
    let store = Arc::new(MemStore::new(pages));
    store.set_discard_poison(false);
    let fs = RvmFs::format(Arc::clone(&store), options.fs_options()).expect("format");
    let dir = tempfile::tempdir().expect("temp dir");
    let handle = mount(fs, dir.path(), &options).expect("mount");
    Some(Mounted { handle: Some(handle), store, dir })
}

fn errno<T: std::fmt::Debug>(result: std::io::Result<T>) -> i32 {
    result.expect_err("the call should fail").raw_os_error().expect("an errno")
}

fn rerr<T: std::fmt::Debug>(result: rustix::io::Result<T>) -> Errno {
    result.expect_err("the call should fail")
}

#[test]
fn files_are_written_read_appended_and_truncated() {
    let Some(m) = mounted(16_384) else { return };
    let path = m.path("file");
    fs::write(&path, b"hello world").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"hello world");
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&vec![7u8; 10_000]).unwrap();
    drop(f);
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 10_011);
    assert_eq!(meta.blocks(), 3 * 8, "three 4 KiB pages");
    let mut f = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(4090)).unwrap();
    f.write_all(b"ACROSS").unwrap();
    f.set_len(5000).unwrap();
    drop(f);
    let data = fs::read(&path).unwrap();
    assert_eq!(data.len(), 5000);
    assert_eq!(&data[4090..4096], b"ACROSS");
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(9000).unwrap();
    let data = fs::read(&path).unwrap();
    assert!(data[5000..].iter().all(|&b| b == 0), "extending reads zeros past the old end");
    fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    assert_eq!(errno(fs::read(m.path("missing"))), libc::ENOENT);
    assert_eq!(
        errno(fs::OpenOptions::new().write(true).create_new(true).open(&path)),
        libc::EEXIST
    );
    assert_eq!(errno(fs::write(m.path(&"n".repeat(256)), b"")), libc::ENAMETOOLONG);
    fs::write(m.path(&"n".repeat(255)), b"ok").unwrap();
}

#[test]
fn directories_report_posix_errors_and_link_counts() {
    let Some(m) = mounted(8192) else { return };
    fs::create_dir(m.path("d")).unwrap();
    fs::create_dir(m.path("d/sub")).unwrap();
    fs::write(m.path("d/f"), b"x").unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 3);
    assert_eq!(errno(fs::create_dir(m.path("d"))), libc::EEXIST);
    assert_eq!(errno(fs::remove_dir(m.path("d"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::remove_file(m.path("d/sub"))), libc::EISDIR);
    assert_eq!(errno(fs::remove_dir(m.path("d/f"))), libc::ENOTDIR);
    assert_eq!(errno(fs::write(m.path("d/f/x"), b"")), libc::ENOTDIR);
    assert_eq!(errno(fs::remove_dir(m.path("d/none"))), libc::ENOENT);
    let mut names: Vec<String> = fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["f", "sub"]);
    fs::remove_dir(m.path("d/sub")).unwrap();
    fs::remove_file(m.path("d/f")).unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 2);
    fs::remove_dir(m.path("d")).unwrap();
    assert!(m.fs().check().unwrap().is_clean());
}

#[test]
fn symlinks_and_hard_links_work() {
    let Some(m) = mounted(8192) else { return };
    fs::write(m.path("target"), b"data").unwrap();
    std::os::unix::fs::symlink("target", m.path("short")).unwrap();
    let long = "x/".repeat(1000) + "end";
    std::os::unix::fs::symlink(&long, m.path("long")).unwrap();
    assert_eq!(fs::read_link(m.path("short")).unwrap(), Path::new("target"));
    assert_eq!(fs::read_link(m.path("long")).unwrap(), Path::new(&long));
    assert_eq!(fs::read(m.path("short")).unwrap(), b"data");
    assert_eq!(fs::symlink_metadata(m.path("long")).unwrap().len(), long.len() as u64);
    fs::hard_link(m.path("target"), m.path("second")).unwrap();
    assert_eq!(fs::metadata(m.path("target")).unwrap().nlink(), 2);
    fs::remove_file(m.path("target")).unwrap();
    assert_eq!(fs::read(m.path("second")).unwrap(), b"data");
    assert_eq!(fs::metadata(m.path("second")).unwrap().nlink(), 1);
    assert_eq!(errno(fs::hard_link(m.path("second"), m.path("short"))), libc::EEXIST);
    fs::create_dir(m.path("dir")).unwrap();
    assert_eq!(errno(fs::hard_link(m.path("dir"), m.path("dir2"))), libc::EPERM);
}

#[test]
fn rename_follows_linux_rules_and_flags() {
    let Some(m) = mounted(8192) else { return };
    let p = |n: &str| m.path(n);
    fs::write(p("a"), b"A").unwrap();
    fs::write(p("b"), b"B").unwrap();
    fs::create_dir_all(p("d1/inner")).unwrap();
    fs::create_dir(p("d2")).unwrap();
    fs::create_dir(p("empty")).unwrap();
    assert_eq!(
        rerr(rfs::renameat_with(CWD, p("a"), CWD, p("b"), RenameFlags::NOREPLACE)),
        Errno::EXIST
    );
    rfs::renameat_with(CWD, p("a"), CWD, p("b"), RenameFlags::EXCHANGE).unwrap();
    assert_eq!(fs::read(p("a")).unwrap(), b"B");
    assert_eq!(fs::read(p("b")).unwrap(), b"A");
    assert_eq!(
        rerr(rfs::renameat_with(CWD, p("a"), CWD, p("zz"), RenameFlags::EXCHANGE)),
        Errno::NOENT
    );
    rfs::renameat_with(CWD, p("a"), CWD, p("d2"), RenameFlags::EXCHANGE).unwrap();
    assert!(fs::metadata(p("a")).unwrap().is_dir());
    rfs::renameat_with(CWD, p("a"), CWD, p("d2"), RenameFlags::EXCHANGE).unwrap();
    fs::rename(p("a"), p("b")).unwrap();
    assert_eq!(fs::read(p("b")).unwrap(), b"B");
    assert_eq!(errno(fs::rename(p("d1"), p("b"))), libc::ENOTDIR);
    assert_eq!(errno(fs::rename(p("b"), p("d1"))), libc::EISDIR);
    assert_eq!(errno(fs::rename(p("d2"), p("d1"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::rename(p("d1"), p("d1/inner/x"))), libc::EINVAL);
    assert_eq!(errno(fs::rename(p("missing"), p("x"))), libc::ENOENT);
    fs::rename(p("d1"), p("empty")).unwrap();
    assert!(fs::metadata(p("empty/inner")).unwrap().is_dir());
    fs::rename(p("empty/inner"), p("d2/inner")).unwrap();
    assert_eq!(fs::metadata(p("d2")).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(p("empty")).unwrap().nlink(), 2);
    let check = m.fs().check().unwrap();
    assert!(check.is_clean(), "{:?}", check.problems);
}

#[test]
fn attributes_change_with_chmod_chown_and_utimensat() {
    let Some(m) = mounted(8192) else { return };
    let path = m.path("f");
    fs::write(&path, b"x").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o4750)).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o4750);
    std::os::unix::fs::chown(&path, Some(1234), Some(567)).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 567));
    assert_eq!(meta.mode() & 0o7777, 0o750, "chown clears set-user-ID");
    let before = fs::metadata(&path).unwrap();
    let times = Timestamps {
        last_access: Timespec { tv_sec: 1_000_000_000, tv_nsec: 123_456_789 },
        last_modification: Timespec { tv_sec: 0, tv_nsec: rfs::UTIME_OMIT },
    };
    rfs::utimensat(CWD, &path, &times, AtFlags::empty()).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!((meta.atime(), meta.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (before.mtime(), before.mtime_nsec()),
        "UTIME_OMIT"
    );
    let times = Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rfs::UTIME_OMIT },
        last_modification: Timespec { tv_sec: 0, tv_nsec: rfs::UTIME_NOW },
    };
    rfs::utimensat(CWD, &path, &times, AtFlags::empty()).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.atime(), 1_000_000_000);
    assert!(meta.mtime() >= before.mtime() && meta.ctime() >= before.ctime());
    let dir_before = fs::metadata(m.dir.path()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(m.path("g"), b"").unwrap();
    let dir_after = fs::metadata(m.dir.path()).unwrap();
    assert!(
        (dir_after.mtime(), dir_after.mtime_nsec()) > (dir_before.mtime(), dir_before.mtime_nsec()),
        "creating a name changes the directory's mtime"
    );
}

#[test]
fn special_files_are_created_with_mknod() {
    let Some(m) = mounted(8192) else { return };
    rfs::mknodat(CWD, m.path("fifo"), rfs::FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
    rfs::mknodat(
        CWD,
        m.path("chr"),
        rfs::FileType::CharacterDevice,
        Mode::from_raw_mode(0o600),
        rfs::makedev(1, 3),
    )
    .unwrap();
    rfs::mknodat(CWD, m.path("sock"), rfs::FileType::Socket, Mode::from_raw_mode(0o600), 0)
        .unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::metadata(m.path("fifo")).unwrap().file_type().is_fifo());
    let chr = fs::metadata(m.path("chr")).unwrap();
    assert!(chr.file_type().is_char_device());
    assert_eq!(chr.rdev(), rfs::makedev(1, 3));
    assert!(fs::symlink_metadata(m.path("sock")).unwrap().file_type().is_socket());
}

#[test]
fn extended_attributes_follow_linux_semantics() {
    let Some(m) = mounted(8192) else { return };
    let path = m.path("f");
    fs::write(&path, b"").unwrap();
    rfs::setxattr(&path, "user.color", b"blue", XattrFlags::CREATE).unwrap();
    assert_eq!(rerr(rfs::setxattr(&path, "user.color", b"red", XattrFlags::CREATE)), Errno::EXIST);
    assert_eq!(rerr(rfs::setxattr(&path, "user.none", b"x", XattrFlags::REPLACE)), Errno::NODATA);
    let mut buf = [0u8; 16];
    let n = rfs::getxattr(&path, "user.color", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"blue");
    assert_eq!(rerr(rfs::getxattr(&path, "user.color", &mut [0u8; 2])), Errno::RANGE);
    assert_eq!(rerr(rfs::getxattr(&path, "user.other", &mut buf)), Errno::NODATA);
    rfs::setxattr(&path, "user.shape", b"round", XattrFlags::empty()).unwrap();
    let mut list = [0u8; 64];
    let n = rfs::listxattr(&path, &mut list).unwrap();
    assert_eq!(&list[..n], b"user.color\0user.shape\0");
    rfs::removexattr(&path, "user.color").unwrap();
    assert_eq!(rerr(rfs::removexattr(&path, "user.color")), Errno::NODATA);
    assert_eq!(
        rerr(rfs::setxattr(&path, "user.big", &[1u8; 8000], XattrFlags::empty())),
        Errno::TOOBIG
    );
}

#[test]
fn fallocate_punches_holes_that_seek_data_and_seek_hole_see() {
    let Some(m) = mounted(8192) else { return };
    let path = m.path("f");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    rfs::fallocate(&f, rfs::FallocateFlags::empty(), 0, 64 * 1024).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 64 * 1024);
    (&f).write_all(&vec![9u8; 64 * 1024]).unwrap();
    let punch = rfs::FallocateFlags::PUNCH_HOLE | rfs::FallocateFlags::KEEP_SIZE;
    rfs::fallocate(&f, punch, 16 * 1024, 16 * 1024).unwrap();
    rfs::fallocate(&f, punch, 100, 10).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 64 * 1024);
    let mut data = Vec::new();
    (&f).seek(SeekFrom::Start(0)).unwrap();
    (&f).read_to_end(&mut data).unwrap();
    assert!(data[16 * 1024..32 * 1024].iter().all(|&b| b == 0));
    assert!(data[100..110].iter().all(|&b| b == 0) && data[99] == 9 && data[110] == 9);
    assert_eq!(rfs::seek(&f, rfs::SeekFrom::Hole(0)).unwrap(), 16 * 1024);
    assert_eq!(rfs::seek(&f, rfs::SeekFrom::Data(16 * 1024)).unwrap(), 32 * 1024);
    assert_eq!(rfs::seek(&f, rfs::SeekFrom::Hole(32 * 1024)).unwrap(), 64 * 1024);
    assert_eq!(rerr(rfs::seek(&f, rfs::SeekFrom::Data(64 * 1024))), Errno::NXIO);
    rfs::fallocate(&f, rfs::FallocateFlags::KEEP_SIZE, 64 * 1024, 8192).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 64 * 1024);
}

#[test]
fn permissions_are_checked_for_a_non_root_caller_by_the_kernel() {
    permissions_are_checked_for_a_non_root_caller(false);
}

#[test]
fn permissions_are_checked_for_a_non_root_caller_by_rvmfs_with_sync_close() {
    permissions_are_checked_for_a_non_root_caller(true);
}

fn permissions_are_checked_for_a_non_root_caller(sync_close: bool) {
    // Other users reach a FUSE mount only with allow_other.
    let options = MountOptions { allow_other: true, sync_close, ..options() };
    assert_eq!(options.fs_options().check_permissions, sync_close);
    let Some(m) = mounted_with(8192, options) else {
        return;
    };
    fs::write(m.path("secret"), b"s").unwrap();
    fs::set_permissions(m.path("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(m.path("tmp")).unwrap();
    fs::set_permissions(m.path("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(m.path("tmp/roots"), b"r").unwrap();
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dir = m.dir.path().to_path_buf();
    std::thread::spawn(move || {
        let _user = FsUser::become_user(1000, 1000);
        assert_eq!(errno(fs::read(dir.join("secret"))), libc::EACCES);
        assert_eq!(
            errno(fs::write(dir.join("new"), b"")),
            libc::EACCES,
            "no write on the root dir"
        );
        assert_eq!(
            errno(fs::set_permissions(dir.join("secret"), fs::Permissions::from_mode(0o777))),
            libc::EPERM
        );
        fs::write(dir.join("tmp/mine"), b"m").unwrap();
        assert_eq!(fs::metadata(dir.join("tmp/mine")).unwrap().uid(), 1000);
        assert_eq!(errno(fs::remove_file(dir.join("tmp/roots"))), libc::EPERM, "sticky directory");
        fs::remove_file(dir.join("tmp/mine")).unwrap();
    })
    .join()
    .unwrap();
    // access(2) checks the real uid (root here): the FUSE access request
    // arrives with uid 0, so a mode-000 file is still readable by root.
    fs::set_permissions(m.path("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    rfs::access(m.path("secret"), rfs::Access::READ_OK | rfs::Access::WRITE_OK).unwrap();
    assert_eq!(rerr(rfs::access(m.path("secret"), rfs::Access::EXEC_OK)), Errno::ACCESS);
}

/// Switches the calling thread's filesystem uid and gid; restores root on drop.
struct FsUser;

impl FsUser {
    fn become_user(uid: u32, gid: u32) -> FsUser {
        // SAFETY: setfsgid/setfsuid only change this thread's filesystem ids; no memory is involved.
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        FsUser
    }
}

impl Drop for FsUser {
    fn drop(&mut self) {
        // SAFETY: as above; restores the ids this test thread started with.
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
        }
    }
}

#[test]
fn a_directory_holds_100_000_entries_with_fast_lookup() {
    let Some(m) = mounted(65_536) else { return };
    let dir = m.path("big");
    fs::create_dir(&dir).unwrap();
    let started = std::time::Instant::now();
    for i in 0..100_000 {
        rfs::mknodat(
            CWD,
            dir.join(format!("entry-{i:06}")),
            rfs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }
    eprintln!("created 100,000 entries in {:?}", started.elapsed());
    for i in (0..100_000).step_by(997) {
        assert!(fs::symlink_metadata(dir.join(format!("entry-{i:06}"))).is_ok());
    }
    assert_eq!(errno(fs::symlink_metadata(dir.join("entry-x"))), libc::ENOENT);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 100_000);
}

#[test]
fn a_sparse_file_reaches_one_tebibyte_with_few_blocks() {
    let Some(m) = mounted(8192) else { return };
    let path = m.path("sparse");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let at = (1u64 << 40) - 4096;
    f.write_all_at(b"the end of a tebibyte", at).unwrap();
    let meta = f.metadata().unwrap();
    assert_eq!(meta.len(), at + 21);
    assert!(meta.blocks() <= 8, "{} blocks", meta.blocks());
    let mut buf = [0u8; 21];
    f.read_exact_at(&mut buf, at).unwrap();
    assert_eq!(&buf, b"the end of a tebibyte");
    let mut hole = [1u8; 4096];
    f.read_exact_at(&mut hole, 1 << 39).unwrap();
    assert!(hole.iter().all(|&b| b == 0));
    assert_eq!(rfs::seek(&f, rfs::SeekFrom::Data(0)).unwrap(), at);
    assert_eq!(errno(f.set_len(1 << 50)), libc::EFBIG);
}

#[test]
fn appending_1024_mebibytes_never_copies_existing_data() {
    let Some(m) = mounted(300_000) else { return };
    let path = m.path("log");
    let mut f = fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let chunk = vec![0x5Au8; 1 << 20];
    let mut worst = 0;
    for _ in 0..1024 {
        let before = m.fs().rvm().stats().persisted_pages;
        f.write_all(&chunk).unwrap();
        f.sync_all().unwrap();
        worst = worst.max(m.fs().rvm().stats().persisted_pages - before);
    }
    eprintln!("at most {worst} pages persisted per 1 MiB append");
    assert!(worst <= 256 + 32, "an append persisted {worst} pages");
    assert_eq!(f.metadata().unwrap().len(), 1 << 30);
}

#[test]
fn statfs_reports_the_stores_real_space() {
    let Some(m) = mounted(8192) else { return };
    let before = rfs::statfs(m.dir.path()).unwrap();
    assert_eq!(before.f_blocks, 8192);
    assert_eq!(before.f_bsize, 4096);
    let mut f = fs::File::create(m.path("fill")).unwrap();
    f.write_all(&vec![1u8; 4 << 20]).unwrap();
    f.sync_all().unwrap();
    let after = rfs::statfs(m.dir.path()).unwrap();
    assert!(before.f_bfree - after.f_bfree >= 1024, "{} -> {}", before.f_bfree, after.f_bfree);
    assert_eq!(after.f_namelen, 255);
}

#[test]
fn data_survives_unmount_and_remount() {
    let Some(mut m) = mounted(8192) else { return };
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"persistent").unwrap();
    rfs::setxattr(m.path("d/f"), "user.k", b"v", XattrFlags::empty()).unwrap();
    m.remount();
    assert_eq!(fs::read(m.path("d/f")).unwrap(), b"persistent");
    let mut buf = [0u8; 4];
    assert_eq!(rfs::getxattr(m.path("d/f"), "user.k", &mut buf).unwrap(), 1);
    assert!(m.fs().check().unwrap().is_clean());
    assert!(m.fs().check_rvm().unwrap().is_clean());
}

#[test]
fn a_filesystem_unmounted_from_outside_commits_when_its_handle_unmounts() {
    let Some(mut m) = mounted(4096) else { return };
    fs::write(m.path("kept"), b"written before umount(8)").unwrap();
    // As umount(8) does; the close event can hold the file for a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match rustix::mount::unmount(m.dir.path(), rustix::mount::UnmountFlags::empty()) {
            Err(Errno::BUSY) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => break result.expect("umount"),
        }
    }
    m.handle.take().expect("mounted").unmount().expect("the handle of an unmounted filesystem");
    let fs = RvmFs::open(Arc::clone(&m.store), options().fs_options()).expect("reopen");
    m.handle = Some(mount(fs, m.dir.path(), &options()).expect("mount again"));
    assert_eq!(fs::read(m.path("kept")).unwrap(), b"written before umount(8)");
    assert!(m.fs().check().unwrap().is_clean());
}

#[test]
fn closing_a_written_file_waits_for_its_commit_with_sync_close() {
    let options = MountOptions { sync_close: true, ..options() };
    let Some(m) = mounted_with(4096, options) else { return };
    let path = m.path("durable");
    let mut f = std::fs::File::create(&path).unwrap();
    m.fs().commit_now().unwrap();
    let before_write = m.fs().rvm().durable_sequence();
    f.write_all(b"made durable by close").unwrap();
    assert_eq!(m.fs().rvm().durable_sequence(), before_write, "a write alone commits nothing");
    drop(f);
    let after_close = m.fs().rvm().durable_sequence();
    assert!(after_close > before_write, "close returned before the commit was durable");
    let mut text = String::new();
    std::fs::File::open(&path).unwrap().read_to_string(&mut text).unwrap();
    assert_eq!(text, "made durable by close");
    assert_eq!(m.fs().rvm().durable_sequence(), after_close, "a read-only close commits nothing");
}

/// Polls until `rvm`'s durable sequence passes `after`, for up to 5 s.
fn commits_after<S: rvmfs::PageStore>(rvm: &rvmfs::Rvm<S>, after: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if rvm.durable_sequence() > after {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

#[test]
fn closing_a_written_file_commits_and_reading_one_does_not() {
    // No periodic commit: only the close can make the write durable.
    let options =
        MountOptions { commit_interval: std::time::Duration::from_secs(3600), ..options() };
    let Some(m) = mounted_with(4096, options) else { return };
    let path = m.path("existing");
    fs::write(&path, b"first").unwrap();
    // The RELEASE of the created file and its close event come after
    // close() returns; let them land before taking the baseline.
    std::thread::sleep(std::time::Duration::from_millis(300));
    m.fs().commit_now().unwrap();
    let before_write = m.fs().rvm().durable_sequence();
    let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all(b"FIRST, made durable by close").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(m.fs().rvm().durable_sequence(), before_write, "a write alone commits nothing");
    drop(f);
    assert!(
        commits_after(m.fs().rvm(), before_write),
        "the close of a written file did not commit"
    );
    let after_close = m.fs().rvm().durable_sequence();
    for _ in 0..100 {
        let mut text = String::new();
        fs::File::open(&path).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "FIRST, made durable by close");
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(m.fs().rvm().durable_sequence(), after_close, "a read-only close commits nothing");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.contains(m.dir.path().to_str().unwrap()))
        .expect("the mount is listed");
    assert!(line.contains(" - fuse.rvmfs "), "mounted as type fuse.rvmfs: {line}");
}
