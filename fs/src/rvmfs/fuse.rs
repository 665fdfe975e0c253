//! The FUSE adapter (fuser) and mounting: [`mount`] gives a [`MountHandle`].
//!
//! Requests are served by several threads (fuser's `n_threads`, one cloned
//! `/dev/fuse` descriptor each); they meet at the core's one running
//! transaction, but waiting for durability (fsync, release of a written
//! file) happens outside it, so a slow commit does not stall other requests.
//!
//! Tuning: `max_write` 1 MiB (an append of 1 MiB is one request), entry and
//! attribute timeouts of 1 s, readdirplus, and no OPEN/FLUSH/RELEASE round
//! trips for files (see `close_watch`: open and close cost no request; the
//! close of a written file is seen through fanotify; `sync_close` brings the
//! round trips back and makes such a close wait for its commit). The kernel's writeback cache is
//! **off**: with it the kernel would hold written pages and send them after
//! `release`, so a close of a written file could no longer be a commit point
//! covering its data, and the kernel would also own mtime and size.
//!
//! Permissions are checked by the kernel from the mode bits
//! (`default_permissions`), which no-open mode needs: no request reaches us
//! when a file is opened. With `sync_close` and without `default_permissions`
//! every permission check is ours: the caller is the request's fsuid/fsgid
//! plus the supplementary groups read from `/proc/<pid>/status`.
//!
//! As root the filesystem is mounted with mount(2) as type `fuse.rvmfs`;
//! otherwise fusermount3 mounts it (with the same type, from `subtype=`).

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Config, Errno as FuseErrno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session,
    SessionACL, TimeOrNow, WriteFlags,
};
use nix::mount::{MntFlags, MsFlags};

use crate::PageStore;

use super::attributes::{SetAttr, TimeSet};
use super::close_watch::{self, CloseWatch};
use super::error::{FsError, FsResult};
use super::inode::{Inode, Timestamp};
use super::permission::Caller;
use super::{FsOptions, RvmFs};

const TTL: Duration = Duration::from_secs(1);
const MAX_WRITE: u32 = 1 << 20;

/// Mount options (`-o ro,commit=5,allow_other,default_permissions`).
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Mount read-only.
    pub read_only: bool,
    /// Periodic commit interval (`commit=N` seconds; default 5).
    pub commit_interval: Duration,
    /// Let other users access the mount.
    pub allow_other: bool,
    /// Let the kernel check permissions from the mode bits.
    pub default_permissions: bool,
    /// Threads serving requests.
    pub threads: usize,
    /// The `fsname` shown in `/proc/mounts`.
    pub fsname: String,
    /// Keep FUSE's OPEN/FLUSH/RELEASE requests and make the close of a
    /// written file wait until its commit is durable (`sync_close`).
    pub sync_close: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            commit_interval: Duration::from_secs(5),
            allow_other: false,
            default_permissions: false,
            threads: 4,
            fsname: "rvmfs".into(),
            sync_close: false,
        }
    }
}

impl MountOptions {
    /// Parses a comma-separated option string; `rw`, `dev`, `suid`, `exec`,
    /// `noatime`, `relatime`, `nodev`, `nosuid`, `noexec`, `auto`, `noauto`,
    /// `user`, `nofail` and `_netdev` (from fstab) are accepted and ignored.
    pub fn parse(options: &str) -> FsResult<MountOptions> {
        let mut parsed = MountOptions::default();
        for option in options.split(',').filter(|o| !o.is_empty()) {
            match option {
                "ro" => parsed.read_only = true,
                "rw" => parsed.read_only = false,
                "allow_other" => parsed.allow_other = true,
                "default_permissions" => parsed.default_permissions = true,
                "sync_close" => parsed.sync_close = true,
                "dev" | "nodev" | "suid" | "nosuid" | "exec" | "noexec" | "noatime"
                | "relatime" | "auto" | "noauto" | "user" | "nouser" | "nofail" | "_netdev"
                | "defaults" => {}
                _ => {
                    if let Some(value) = option.strip_prefix("commit=") {
                        let seconds: u64 = value.parse().map_err(|_| FsError::MountOption {
                            option: option.into(),
                            reason: "commit takes a whole number of seconds",
                        })?;
                        parsed.commit_interval = Duration::from_secs(seconds);
                    } else if let Some(value) = option.strip_prefix("fsname=") {
                        parsed.fsname = value.into();
                    } else {
                        return Err(FsError::MountOption {
                            option: option.into(),
                            reason: "unknown option",
                        });
                    }
                }
            }
        }
        Ok(parsed)
    }

    /// The core's options.
    pub fn fs_options(&self) -> FsOptions {
        FsOptions {
            read_only: self.read_only,
            commit_interval: self.commit_interval,
            check_permissions: !self.kernel_checks_permissions(),
        }
    }

    /// Whether the kernel checks permissions: asked for, or needed because
    /// opens do not reach the filesystem.
    fn kernel_checks_permissions(&self) -> bool {
        self.default_permissions || !self.sync_close
    }
}

/// A mounted filesystem served in the background. Dropping it unmounts,
/// commits and waits until durable.
#[derive(Debug)]
pub struct MountHandle<S: PageStore + 'static> {
    fs: RvmFs<S>,
    session: Option<fuser::BackgroundSession>,
    /// Mounted with mount(2) by us (so unmounted by us), not by fusermount3.
    direct: bool,
    close_watch: Option<CloseWatch>,
    mountpoint: PathBuf,
}

impl<S: PageStore + 'static> MountHandle<S> {
    /// Makes everything done so far durable (the daemon's power-outage hook).
    pub fn commit_now(&self) -> FsResult<()> {
        self.fs.commit_now()
    }

    /// The filesystem core.
    pub fn fs(&self) -> &RvmFs<S> {
        &self.fs
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts, then commits and waits until durable.
    pub fn unmount(mut self) -> FsResult<()> {
        self.finish()
    }

    fn finish(&mut self) -> FsResult<()> {
        if let Some(mut watch) = self.close_watch.take() {
            watch.stop();
        }
        if let Some(session) = self.session.take() {
            let unmounted = if self.direct {
                match nix::mount::umount2(&self.mountpoint, MntFlags::MNT_DETACH) {
                    // EINVAL: unmounted already (umount(8)); the session
                    // ends by itself.
                    Ok(()) | Err(nix::errno::Errno::EINVAL) => session.join(),
                    Err(errno) => Err(errno.into()),
                }
            } else {
                session.umount_and_join()
            };
            self.fs.commit_now()?;
            self.fs.stop_committer();
            unmounted.map_err(|source| FsError::Mount {
                mountpoint: self.mountpoint.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }
}

impl<S: PageStore + 'static> Drop for MountHandle<S> {
    fn drop(&mut self) {
        if let Err(error) = self.finish() {
            tracing::error!(%error, "unmount failed");
        }
    }
}

/// Mounts `fs` at `mountpoint` and serves it from background threads.
pub fn mount<S: PageStore + 'static>(
    fs: RvmFs<S>,
    mountpoint: &Path,
    options: &MountOptions,
) -> FsResult<MountHandle<S>> {
    let mount_error =
        |source| FsError::Mount { mountpoint: mountpoint.display().to_string(), source };
    let kernel_checks = options.kernel_checks_permissions();
    let mut mount_options = vec![
        MountOption::FSName(options.fsname.clone()),
        MountOption::Subtype("rvmfs".into()),
        MountOption::NoAtime,
        MountOption::Dev,
        MountOption::Suid,
    ];
    if options.read_only {
        mount_options.push(MountOption::RO);
    }
    if kernel_checks {
        mount_options.push(MountOption::DefaultPermissions);
    }
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if options.allow_other { SessionACL::All } else { SessionACL::Owner };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    // Closes need watching only where files can be written.
    let group = if options.sync_close || options.read_only {
        None
    } else {
        close_watch::group()
            .map_err(|error| {
                tracing::info!(%error, "no fanotify here; opens and closes of files take FUSE round trips (as with sync_close)");
            })
            .ok()
    };
    let no_open = Arc::new(AtomicBool::new(false));
    let adapter = FuseAdapter {
        fs: fs.clone(),
        supplementary_groups: !kernel_checks,
        no_open: Arc::clone(&no_open),
    };
    let (session, direct) =
        match mount_direct(mountpoint, options, kernel_checks).map_err(mount_error)? {
            Some(device) => {
                let session = Session::from_fd(adapter, device, config.acl, config)
                    .and_then(Session::spawn)
                    .map_err(|error| {
                        let _ = nix::mount::umount2(mountpoint, MntFlags::MNT_DETACH);
                        mount_error(error)
                    })?;
                (session, true)
            }
            None => (fuser::spawn_mount(adapter, mountpoint, &config).map_err(mount_error)?, false),
        };
    let close_watch = match group {
        Some(group) => match CloseWatch::start(group, &fs, mountpoint) {
            Ok(watch) => {
                no_open.store(true, Ordering::Relaxed);
                Some(watch)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch closes; opens and closes of files take FUSE round trips");
                None
            }
        },
        None => {
            no_open.store(options.read_only && !options.sync_close, Ordering::Relaxed);
            None
        }
    };
    Ok(MountHandle {
        fs,
        session: Some(session),
        direct,
        close_watch,
        mountpoint: mountpoint.to_path_buf(),
    })
}

/// Mounts `/dev/fuse` at `mountpoint` with mount(2), as type `fuse.rvmfs`.
/// `None` where that is not permitted (then fusermount3 mounts).
fn mount_direct(
    mountpoint: &Path,
    options: &MountOptions,
    kernel_checks: bool,
) -> std::io::Result<Option<OwnedFd>> {
    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let device = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={},group_id={}",
        device.as_raw_fd(),
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    if options.allow_other {
        data.push_str(",allow_other");
    }
    if kernel_checks {
        data.push_str(",default_permissions");
    }
    let mut flags = MsFlags::MS_NOATIME;
    if options.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    match nix::mount::mount(
        Some(options.fsname.as_str()),
        mountpoint,
        Some("fuse.rvmfs"),
        flags,
        Some(data.as_str()),
    ) {
        Ok(()) => Ok(Some(device.into())),
        Err(nix::errno::Errno::EPERM) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

struct FuseAdapter<S: PageStore + 'static> {
    fs: RvmFs<S>,
    supplementary_groups: bool,
    /// Answer OPEN and FLUSH with ENOSYS so the kernel stops sending OPEN,
    /// FLUSH and RELEASE for files (set once closes are watched).
    no_open: Arc<AtomicBool>,
}

/// Supplementary groups of process `pid`, from `/proc/<pid>/status`.
fn groups_of(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups.split_whitespace().filter_map(|g| g.parse().ok()).take(65_536).collect()
        })
        .unwrap_or_default()
}

/// How the kernel treats an open file: its page cache stays valid across
/// opens (every change goes through this mount, write-through, so the cache
/// cannot go stale), and a read-only open skips the FLUSH round trip on
/// close (only a written handle's close is a commit point).
fn open_flags(flags: i32) -> FopenFlags {
    if flags & libc::O_ACCMODE == libc::O_RDONLY {
        FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH
    } else {
        FopenFlags::FOPEN_KEEP_CACHE
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn attr(inode: &Inode) -> FileAttr {
    FileAttr {
        ino: INodeNo(inode.ino),
        size: inode.size,
        blocks: inode.blocks * (crate::PAGE_SIZE as u64 / 512),
        atime: inode.atime.to_system(),
        mtime: inode.mtime.to_system(),
        ctime: inode.ctime.to_system(),
        crtime: inode.crtime.to_system(),
        kind: file_type(inode.mode),
        perm: (inode.mode & 0o7777) as u16,
        nlink: inode.nlink,
        uid: inode.uid,
        gid: inode.gid,
        rdev: inode.rdev,
        blksize: crate::PAGE_SIZE as u32,
        flags: 0,
    }
}

fn errno(error: &FsError) -> FuseErrno {
    if !matches!(error, FsError::Posix(_)) {
        tracing::error!(%error, "request failed");
    }
    FuseErrno::from_i32(error.errno())
}

fn time_set(time: TimeOrNow) -> TimeSet {
    match time {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(Timestamp::from_system(t)),
    }
}

impl<S: PageStore + 'static> FuseAdapter<S> {
    fn caller(&self, req: &Request) -> Caller {
        let groups = if self.supplementary_groups { groups_of(req.pid()) } else { Vec::new() };
        Caller { uid: req.uid(), gid: req.gid(), groups }
    }

    fn reply_entry(&self, result: FsResult<Inode>, reply: ReplyEntry) {
        match result {
            Ok(inode) => {
                self.fs.remember(inode.ino);
                reply.entry(&TTL, &attr(&inode), Generation(inode.generation));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }
}

fn reply_empty(result: FsResult<()>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

impl<S: PageStore + 'static> Filesystem for FuseAdapter<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(error) = self.fs.commit_now() {
            tracing::error!(%error, "the commit at unmount failed");
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.reply_entry(self.fs.lookup(&self.caller(req), parent.0, name.as_bytes()), reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let Err(error) = self.fs.forget(ino.0, nlookup) {
            tracing::error!(%error, "forget failed");
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(inode) => reply.attr(&TTL, &attr(&inode)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            through_handle: fh.is_some(),
        };
        let result = self.fs.setattr(&self.caller(req), ino.0, &change);
        if size.is_some() {
            self.fs.mark_written(fh.map(|f| f.0));
        }
        match result {
            Ok(inode) => reply.attr(&TTL, &attr(&inode)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let result = self.fs.mknod(&self.caller(req), parent.0, name.as_bytes(), mode, umask, rdev);
        self.reply_entry(result, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.reply_entry(
            self.fs.mkdir(&self.caller(req), parent.0, name.as_bytes(), mode, umask),
            reply,
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.fs.unlink(&self.caller(req), parent.0, name.as_bytes()), reply);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.fs.rmdir(&self.caller(req), parent.0, name.as_bytes()), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = self.fs.symlink(
            &self.caller(req),
            parent.0,
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
        );
        self.reply_entry(result, reply);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.fs.rename(
            &self.caller(req),
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            flags.bits(),
        );
        reply_empty(result, reply);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.reply_entry(
            self.fs.link(&self.caller(req), ino.0, newparent.0, newname.as_bytes()),
            reply,
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.no_open.load(Ordering::Relaxed) {
            reply.error(FuseErrno::from_i32(libc::ENOSYS));
            return;
        }
        match self.fs.open_file(&self.caller(req), ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), open_flags(flags.0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(&self.caller(req), ino.0, Some(fh.0), offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        if self.no_open.load(Ordering::Relaxed) {
            reply.error(FuseErrno::from_i32(libc::ENOSYS));
            return;
        }
        reply_empty(self.fs.flush(fh.0), reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.fs.release(fh.0), reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.fs.fsync(), reply);
    }

    fn opendir(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let caller = self.caller(req);
        let result = self.fs.getattr(ino.0).and_then(|inode| {
            if !inode.is_dir() {
                return Err(super::error::posix(libc::ENOTDIR));
            }
            if self.fs.options().check_permissions {
                let mask = if flags.0 & libc::O_ACCMODE == libc::O_RDONLY {
                    super::MAY_READ
                } else {
                    super::MAY_READ | super::MAY_WRITE
                };
                super::permission::check(&caller, &inode, mask)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(ino.0, offset, 128) {
            Ok(entries) => {
                for e in entries {
                    let kind = file_type(u32::from(e.kind) << 12);
                    if reply.add(INodeNo(e.ino), e.next, kind, OsStr::from_bytes(&e.name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.fs.readdir(ino.0, offset, 64) {
            Ok(entries) => {
                for e in entries {
                    let dot = e.name == b"." || e.name == b"..";
                    let Ok(inode) = self.fs.getattr(e.ino) else { continue };
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(
                        INodeNo(e.ino),
                        e.next,
                        name,
                        &TTL,
                        &attr(&inode),
                        Generation(inode.generation),
                    ) {
                        break;
                    }
                    if !dot {
                        self.fs.remember(e.ino);
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.fs.fsync(), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks,
            s.free_blocks,
            s.free_blocks,
            s.files,
            s.free_files,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            self.fs.setxattr(&self.caller(req), ino.0, name.as_bytes(), value, flags),
            reply,
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(&self.caller(req), ino.0, name.as_bytes()) {
            Ok(value) if size == 0 => reply.size(value.len() as u32),
            Ok(value) if value.len() <= size as usize => reply.data(&value),
            Ok(_) => reply.error(FuseErrno::from_i32(libc::ERANGE)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(&self.caller(req), ino.0) {
            Ok(names) if size == 0 => reply.size(names.len() as u32),
            Ok(names) if names.len() <= size as usize => reply.data(&names),
            Ok(_) => reply.error(FuseErrno::from_i32(libc::ERANGE)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.fs.removexattr(&self.caller(req), ino.0, name.as_bytes()), reply);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        reply_empty(self.fs.access(&self.caller(req), ino.0, mask.bits() as u32), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let caller = self.caller(req);
        let _ = flags;
        match self.fs.create(&caller, parent.0, name.as_bytes(), mode, umask) {
            Ok((inode, fh)) => {
                self.fs.remember(inode.ino);
                reply.created(
                    &TTL,
                    &attr(&inode),
                    Generation(inode.generation),
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE,
                );
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.fs.fallocate(ino.0, Some(fh.0), offset, length, mode), reply);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            reply.error(FuseErrno::from_i32(libc::ENXIO));
            return;
        };
        match self.fs.lseek(ino.0, offset, whence) {
            Ok(at) => reply.offset(at as i64),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_parse_like_fstab_lines() {
        let options =
            MountOptions::parse("ro,commit=12,allow_other,default_permissions,noatime").unwrap();
        assert!(options.read_only && options.allow_other && options.default_permissions);
        assert_eq!(options.commit_interval, Duration::from_secs(12));
        assert!(!options.fs_options().check_permissions);
        let error = MountOptions::parse("commit=soon").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid mount option \"commit=soon\": commit takes a whole number of seconds"
        );
        assert!(MountOptions::parse("bogus").is_err());
    }

    #[test]
    fn the_filesystem_checks_permissions_only_with_sync_close() {
        assert!(!MountOptions::parse("").unwrap().fs_options().check_permissions);
        let sync = MountOptions::parse("sync_close").unwrap();
        assert!(sync.sync_close && sync.fs_options().check_permissions);
        let kernel = MountOptions::parse("sync_close,default_permissions").unwrap();
        assert!(!kernel.fs_options().check_permissions);
    }
}
