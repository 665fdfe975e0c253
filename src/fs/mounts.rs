//! `FsMounts`: the RvmFS filesystems of a pool that this process serves.
//!
//! `fs` regions are formatted as RvmFS and mounted with FUSE; each mount
//! is remembered in its region's attributes (`fs.mountpoint`,
//! `fs.options`), so a restarted daemon mounts them again. A region is
//! mounted at most once, and a mount point holds at most one of them.
//! [`FsMounts::commit_all`] is the power-outage entry point: it makes
//! everything written so far durable, on every mounted filesystem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rvmfs::{mount, FsError, FsOptions, MountHandle, MountOptions, RvmFs};
use serde::Serialize;

use super::RegionStore;
use crate::pool::{Pool, PoolError, RegionKind};

/// Region attribute: where the filesystem is mounted.
pub const ATTR_MOUNTPOINT: &str = "fs.mountpoint";
/// Region attribute: the mount options it was mounted with.
pub const ATTR_OPTIONS: &str = "fs.options";

/// Errors of filesystem regions and their mounts.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("region {name:?} is a {kind} region; only fs regions hold a filesystem")]
    NotFs { name: String, kind: RegionKind },
    #[error("region {name:?} is already mounted at {}; unmount it first", mountpoint.display())]
    AlreadyMounted { name: String, mountpoint: PathBuf },
    #[error("{} already has region {name:?} mounted on it; choose another directory", mountpoint.display())]
    MountpointBusy { name: String, mountpoint: PathBuf },
    #[error("{} is not a directory; create it first (mkdir -p)", path.display())]
    NotADirectory { path: PathBuf },
    #[error("nothing is mounted as {what:?}; `pmvisor fs list` shows the mounts")]
    NotMounted { what: String },
    #[error("the filesystem in region {name:?} failed")]
    Fs {
        name: String,
        #[source]
        source: FsError,
    },
}

/// One served mount, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountInfo {
    pub region: String,
    pub mountpoint: PathBuf,
    pub options: String,
}

struct Mounted {
    handle: MountHandle<RegionStore>,
    info: MountInfo,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.info.fmt(f)
    }
}

/// How full a mounted filesystem is (its statfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Bytes the filesystem can hold.
    pub size: u64,
    /// Bytes in use.
    pub used: u64,
}

/// What `check` found: the RVM check of the last commit and the tree walk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FsCheckReport {
    /// The region checked.
    pub region: String,
    /// Inodes reached from the root.
    pub inodes: u64,
    /// Directory entries seen.
    pub entries: u64,
    /// RVM problems (pages vs. allocation maps), one sentence each.
    pub rvm_problems: Vec<String>,
    /// Filesystem problems (links, types, counts), one sentence each.
    pub fs_problems: Vec<String>,
}

impl FsCheckReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.rvm_problems.is_empty() && self.fs_problems.is_empty()
    }
}

fn check_fs(name: &str, fs: &RvmFs<RegionStore>) -> Result<FsCheckReport, MountError> {
    // RVM first: with no transaction open it checks the last commit as is.
    let rvm = fs.check_rvm().map_err(fs_error(name))?;
    let tree = fs.check().map_err(fs_error(name))?;
    let mut rvm_problems: Vec<String> = rvm.problems.iter().map(ToString::to_string).collect();
    if rvm.omitted > 0 {
        rvm_problems.push(format!("and {} more problems", rvm.omitted));
    }
    Ok(FsCheckReport {
        region: name.to_string(),
        inodes: tree.inodes,
        entries: tree.entries,
        rvm_problems,
        fs_problems: tree.problems,
    })
}

/// Check the filesystem in the unmounted `fs` region `name` of `pool`,
/// read-only (nothing is written, orphans are counted, not freed).
pub fn check_filesystem(pool: &Pool, name: &str) -> Result<FsCheckReport, MountError> {
    let info = pool.region(name)?;
    if info.kind != RegionKind::Fs {
        return Err(MountError::NotFs { name: name.to_string(), kind: info.kind });
    }
    let store = RegionStore::open(pool, name)?;
    let options = FsOptions {
        read_only: true,
        commit_interval: std::time::Duration::ZERO,
        ..FsOptions::default()
    };
    let fs = RvmFs::open(store, options).map_err(fs_error(name))?;
    check_fs(name, &fs)
}

/// The filesystems this process serves.
#[derive(Debug)]
pub struct FsMounts {
    pool: Arc<Pool>,
    mounts: Mutex<BTreeMap<String, Mounted>>,
}

fn fs_error(name: &str) -> impl FnOnce(FsError) -> MountError + '_ {
    move |source| MountError::Fs { name: name.to_string(), source }
}

/// Create an `fs` region of `size` bytes and format it as an empty RvmFS.
pub fn create_filesystem(pool: &Pool, name: &str, size: u64) -> Result<(), MountError> {
    pool.create_region(name, RegionKind::Fs, size)?;
    let formatted = RegionStore::open(pool, name).map_err(MountError::from).and_then(|store| {
        let options =
            FsOptions { commit_interval: std::time::Duration::ZERO, ..FsOptions::default() };
        RvmFs::format(store, options).map_err(fs_error(name))
    });
    match formatted {
        Ok(fs) => {
            drop(fs);
            Ok(())
        }
        Err(e) => {
            // Leave nothing half made behind.
            let _ = pool.delete_region(name);
            Err(e)
        }
    }
}

impl FsMounts {
    /// No mounts yet, over `pool`.
    pub fn new(pool: Arc<Pool>) -> FsMounts {
        FsMounts { pool, mounts: Mutex::new(BTreeMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Mounted>> {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mount region `name` at `mountpoint` with `options` (the `-o` string:
    /// `ro`, `commit=N`, `allow_other`, `default_permissions`, `sync_close`;
    /// `allow_other` is implied when this process is root), and remember it
    /// so it is mounted again after a restart.
    pub fn mount(
        &self,
        name: &str,
        mountpoint: &Path,
        options: &str,
    ) -> Result<MountInfo, MountError> {
        let mut mounts = self.lock();
        let info = self.pool.region(name)?;
        if info.kind != RegionKind::Fs {
            return Err(MountError::NotFs { name: name.to_string(), kind: info.kind });
        }
        if let Some(m) = mounts.get(name) {
            return Err(MountError::AlreadyMounted {
                name: name.to_string(),
                mountpoint: m.info.mountpoint.clone(),
            });
        }
        let mountpoint = std::fs::canonicalize(mountpoint)
            .ok()
            .filter(|p| p.is_dir())
            .ok_or_else(|| MountError::NotADirectory { path: mountpoint.to_path_buf() })?;
        if let Some(m) = mounts.values().find(|m| m.info.mountpoint == mountpoint) {
            return Err(MountError::MountpointBusy { name: m.info.region.clone(), mountpoint });
        }
        let mut parsed = MountOptions::parse(options).map_err(fs_error(name))?;
        parsed.fsname = name.to_string();
        // A mount made by root is a system mount: like a disk filesystem it
        // serves every user, permissions checked from the mode bits (FUSE
        // would otherwise refuse every process of another user with EACCES).
        parsed.allow_other |= rustix::process::geteuid().is_root();
        let store = RegionStore::open(&self.pool, name)?;
        let fs = RvmFs::open(store, parsed.fs_options()).map_err(fs_error(name))?;
        let handle = mount(fs, &mountpoint, &parsed).map_err(fs_error(name))?;
        self.pool.set_region_attr(name, ATTR_MOUNTPOINT, Some(&mountpoint.to_string_lossy()))?;
        self.pool.set_region_attr(name, ATTR_OPTIONS, Some(options))?;
        let info = MountInfo { region: name.to_string(), mountpoint, options: options.to_string() };
        mounts.insert(name.to_string(), Mounted { handle, info: info.clone() });
        Ok(info)
    }

    /// Unmount by region name or mount point; the filesystem commits first.
    pub fn unmount(&self, what: &str) -> Result<MountInfo, MountError> {
        let mut mounts = self.lock();
        let canonical = std::fs::canonicalize(what).ok();
        let name = mounts
            .iter()
            .find(|(n, m)| n.as_str() == what || Some(&m.info.mountpoint) == canonical.as_ref())
            .map(|(n, _)| n.clone())
            .ok_or_else(|| MountError::NotMounted { what: what.to_string() })?;
        let mounted = mounts.remove(&name).expect("found above");
        mounted.handle.unmount().map_err(fs_error(&name))?;
        self.pool.set_region_attr(&name, ATTR_MOUNTPOINT, None)?;
        self.pool.set_region_attr(&name, ATTR_OPTIONS, None)?;
        Ok(mounted.info)
    }

    /// Every mount this process serves.
    pub fn list(&self) -> Vec<MountInfo> {
        self.lock().values().map(|m| m.info.clone()).collect()
    }

    /// The statfs of mounted region `name`.
    pub fn usage(&self, name: &str) -> Option<Usage> {
        let mounts = self.lock();
        let stat = mounts.get(name)?.handle.fs().statfs();
        let block = u64::from(stat.block_size);
        Some(Usage {
            size: stat.blocks * block,
            used: stat.blocks.saturating_sub(stat.free_blocks) * block,
        })
    }

    /// Check region `name`: through its mount when mounted here (the
    /// running transaction is committed first), else read-only.
    pub fn check(&self, name: &str) -> Result<FsCheckReport, MountError> {
        let mounts = self.lock();
        match mounts.get(name) {
            Some(m) => check_fs(name, m.handle.fs()),
            None => {
                drop(mounts);
                check_filesystem(&self.pool, name)
            }
        }
    }

    /// Whether region `name` is mounted here.
    pub fn is_mounted(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Mount again every filesystem that was mounted when the last daemon
    /// stopped; returns what could not be mounted, with why.
    pub fn restore(&self) -> Vec<(String, MountError)> {
        let mut failed = Vec::new();
        for region in self.pool.regions().into_iter().filter(|r| r.kind == RegionKind::Fs) {
            let Some(mountpoint) = region.attrs.get(ATTR_MOUNTPOINT) else { continue };
            let options = region.attrs.get(ATTR_OPTIONS).cloned().unwrap_or_default();
            // A mount left over from a killed server blocks the directory.
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z", mountpoint])
                .stderr(std::process::Stdio::null())
                .status();
            if let Err(e) = self.mount(&region.name, Path::new(mountpoint), &options) {
                failed.push((region.name.clone(), e));
            }
        }
        failed
    }

    /// Make everything written so far durable on every mount (power outage).
    pub fn commit_all(&self) -> Result<(), MountError> {
        for (name, m) in self.lock().iter() {
            m.handle.commit_now().map_err(fs_error(name))?;
        }
        Ok(())
    }

    /// Hold (`true`) or let in again (`false`) every request on every
    /// mount (power outage); requests already running finish.
    pub fn pause_requests(&self, pause: bool) {
        for m in self.lock().values() {
            if pause {
                m.handle.fs().pause_requests();
            } else {
                m.handle.fs().resume_requests();
            }
        }
    }

    /// How many filesystems are mounted.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Unmount everything (shutdown), committing each; mounts stay
    /// remembered so the next daemon mounts them again.
    pub fn shutdown(&self) {
        let mounts = std::mem::take(&mut *self.lock());
        for (name, m) in mounts {
            if let Err(e) = m.handle.unmount() {
                tracing::error!(region = %name, "unmount at shutdown failed: {e}");
            }
        }
    }
}
