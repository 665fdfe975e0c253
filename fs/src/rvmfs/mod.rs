//! RvmFS: a POSIX filesystem whose every structure lives in RVM pages.
//!
//! [`RvmFs`] is the filesystem core, independent of FUSE: every operation
//! takes the [`Caller`] and returns an [`FsResult`] whose error carries the
//! errno ext4 would return. All operations join one running RVM transaction
//! (held behind a mutex: RVM allows one open transaction); commit points
//! close it (see `commit`). The `fuse` module serves the core with fuser.
//!
//! ```text
//! RVM root slot ─> RootPointer ─> Superblock ─> inode table (page map: ino/16 -> page)
//!                                                   │
//!                     inode ─┬─ regular file / long symlink: page map (block -> data page)
//!                            ├─ directory: B+tree of (name hash, name) -> ino
//!                            └─ xattr page
//! ```
//!
//! Module map: `superblock`, `inode`, `page_map`, `directory`, `xattr` (one
//! on-RVM format each); `permission`; `namespace`, `attributes`, `data` (the
//! operations); `commit` (commit points and the periodic committer);
//! `check` (a consistency walk); `fuse` (the kernel adapter and mounting).

mod admission;
mod attributes;
mod check;
mod close_watch;
mod commit;
mod data;
mod directory;
mod error;
mod fuse;
mod inode;
mod namespace;
mod page_map;
mod permission;
mod rename;
mod superblock;
mod xattr;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::{PageRef, PageStore};
use crate::{Rvm, Transaction};

pub use attributes::{SetAttr, StatFs, TimeSet};
pub use check::FsCheck;
pub use data::MAX_FILE_SIZE;
pub use directory::NAME_MAX;
pub use error::{Errno, FsError, FsResult};
pub use fuse::{mount, MountHandle, MountOptions};
pub use inode::{Inode, Timestamp, ROOT_INO};
pub use namespace::DirEntryOut;
pub use permission::{Caller, MAY_EXEC, MAY_READ, MAY_WRITE};
pub use rename::{RENAME_EXCHANGE, RENAME_NOREPLACE};

use inode::INODE_SIZE;
use superblock::{RootPointer, Superblock, SUPERBLOCK_SIZE};
use zerocopy::IntoBytes;

/// Options of the filesystem core.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// Refuse every change (`EROFS`).
    pub read_only: bool,
    /// Seconds between periodic commits (`commit=N`; 0 disables them).
    pub commit_interval: Duration,
    /// Check permissions in the filesystem (false when the kernel does it:
    /// `default_permissions`).
    pub check_permissions: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            read_only: false,
            commit_interval: Duration::from_secs(5),
            check_permissions: true,
        }
    }
}

/// What keeps an unlinked inode alive: kernel lookups and open handles.
#[derive(Debug, Default, Clone, Copy)]
struct Pins {
    lookups: u64,
    opens: u64,
}

/// An open file or directory handle.
#[derive(Debug, Clone, Copy)]
struct Handle {
    ino: u64,
    written: bool,
}

/// The running transaction and what is cached beside it.
#[derive(Debug)]
struct Running<S: PageStore> {
    tx: Option<Transaction<S>>,
    sb: Superblock,
    sb_page: u64,
    pins: HashMap<u64, Pins>,
    handles: HashMap<u64, Handle>,
    next_handle: u64,
    /// The first piece of a write the kernel may have split in two: inode,
    /// where the rest would start, and when the piece came (see
    /// [`RvmFs::settle_split_write`]).
    split_write: Option<(u64, u64, Instant)>,
}

/// State of the periodic committer.
#[derive(Debug, Default)]
struct CommitSignal {
    /// A commit point closed a transaction nobody waits for.
    kicked: bool,
    shutdown: bool,
}

#[derive(Debug)]
struct FsShared<S: PageStore> {
    rvm: Rvm<S>,
    options: FsOptions,
    running: Mutex<Running<S>>,
    signal: Mutex<CommitSignal>,
    signal_changed: Condvar,
    /// Where requests wait while a power outage pauses them.
    admission: admission::Admission,
}

/// The filesystem core over an RVM instance. Cheap to clone; shared between
/// the FUSE threads and the periodic committer.
#[derive(Debug)]
pub struct RvmFs<S: PageStore + 'static> {
    shared: Arc<FsShared<S>>,
}

impl<S: PageStore + 'static> Clone for RvmFs<S> {
    fn clone(&self) -> Self {
        RvmFs { shared: Arc::clone(&self.shared) }
    }
}

/// The running transaction with the superblock, for one operation.
pub(crate) struct Ctx<'a, S: PageStore> {
    pub tx: &'a mut Transaction<S>,
    pub sb: &'a mut Superblock,
    pins: &'a mut HashMap<u64, Pins>,
}

impl<S: PageStore> Ctx<'_, S> {
    /// Whether the kernel or an open handle still uses `ino`.
    pub fn is_pinned(&self, ino: u64) -> bool {
        self.pins.get(&ino).is_some_and(|p| p.lookups > 0 || p.opens > 0)
    }
}

impl<S: PageStore + 'static> RvmFs<S> {
    /// Formats `store` as an empty RvmFS (RVM and filesystem) and opens it.
    /// The root directory is owned by root with mode 0755.
    pub fn format(store: S, options: FsOptions) -> FsResult<RvmFs<S>> {
        let rvm = Rvm::format(store, crate::FormatOptions::default())?;
        let mut tx = rvm.begin()?;
        let sb_page = page_map::alloc_page(&mut tx)?;
        let now = Timestamp::now();
        let mut sb = Superblock {
            inode_table_root: 0,
            inode_table_levels: 0,
            next_ino: inode::ROOT_INO,
            next_generation: 1,
            orphan_head: 0,
            inode_count: 0,
            created: now.sec,
        };
        let mut root = Inode::new(0, 0, libc::S_IFDIR | 0o755, 0, 0, now);
        root.nlink = 2;
        root.size = crate::PAGE_SIZE as u64;
        root.map = page_map::MapRoot { root: directory::create(&mut tx)?, levels: 1 };
        inode::allocate(&mut tx, &mut sb, &mut root)?;
        root.parent = root.ino;
        inode::write(&mut tx, &sb, &root)?;
        tx.write(PageRef::page_start(sb_page), &sb.encode())?;
        tx.set_root(RootPointer::new(sb_page).as_bytes())?;
        tx.commit()?;
        Ok(Self::assemble(rvm, sb, sb_page, options))
    }

    /// Opens the RvmFS on `store` at its last committed state, and frees
    /// the inodes a crash left on the orphan list.
    pub fn open(store: S, options: FsOptions) -> FsResult<RvmFs<S>> {
        let rvm = Rvm::open(store)?;
        let pointer = RootPointer::decode(&rvm.root())?;
        let sb_page = pointer.superblock_page();
        let mut bytes = [0u8; SUPERBLOCK_SIZE];
        rvm.read(PageRef::page_start(sb_page), &mut bytes)?;
        let sb = Superblock::decode(&bytes, sb_page)?;
        let fs = Self::assemble(rvm, sb, sb_page, options);
        if sb.orphan_head != 0 && !fs.shared.options.read_only {
            fs.with_ctx(|ctx| namespace::free_orphans(ctx))?;
            fs.commit_now()?;
        }
        Ok(fs)
    }

    fn assemble(rvm: Rvm<S>, sb: Superblock, sb_page: u64, options: FsOptions) -> RvmFs<S> {
        let fs = RvmFs {
            shared: Arc::new(FsShared {
                rvm,
                options,
                running: Mutex::new(Running {
                    tx: None,
                    sb,
                    sb_page,
                    pins: HashMap::new(),
                    handles: HashMap::new(),
                    next_handle: 1,
                    split_write: None,
                }),
                signal: Mutex::new(CommitSignal::default()),
                signal_changed: Condvar::new(),
                admission: admission::Admission::default(),
            }),
        };
        commit::start_committer(&fs);
        fs
    }

    /// The RVM instance underneath (for statistics and checks).
    pub fn rvm(&self) -> &Rvm<S> {
        &self.shared.rvm
    }

    /// The options the filesystem was opened with.
    pub fn options(&self) -> &FsOptions {
        &self.shared.options
    }

    fn lock(&self) -> MutexGuard<'_, Running<S>> {
        self.shared.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op` in the running transaction (beginning one if needed). The
    /// superblock is written back if `op` changed it. If `op` fails after
    /// changing something it could not undo (an RVM failure), the running
    /// transaction is rolled back to the last closed state.
    pub(crate) fn with_ctx<T>(
        &self,
        op: impl FnOnce(&mut Ctx<'_, S>) -> FsResult<T>,
    ) -> FsResult<T> {
        self.shared.admission.wait();
        let mut guard = self.lock();
        let running = &mut *guard;
        if running.tx.is_none() {
            running.tx = Some(self.shared.rvm.begin()?);
        }
        let before = running.sb;
        let tx = running.tx.as_mut().expect("begun above");
        let mut ctx = Ctx { tx, sb: &mut running.sb, pins: &mut running.pins };
        let mut result = op(&mut ctx);
        if result.is_ok() && running.sb != before {
            let bytes = running.sb.encode();
            let page = running.sb_page;
            if let Err(e) =
                running.tx.as_mut().expect("open").write(PageRef::page_start(page), &bytes)
            {
                result = Err(e.into());
            }
        }
        if let Err(error) = &result {
            if !matches!(error, FsError::Posix(_)) {
                tracing::error!(%error, "rolling the running transaction back");
                self.rollback(running);
            }
        }
        result
    }

    /// Read-only access to the running state.
    pub(crate) fn with_read<T>(
        &self,
        op: impl FnOnce(&mut Ctx<'_, S>) -> FsResult<T>,
    ) -> FsResult<T> {
        self.with_ctx(op)
    }

    fn rollback(&self, running: &mut Running<S>) {
        if let Some(tx) = running.tx.take() {
            tx.abort();
        }
        match self.reload_superblock(running) {
            Ok(()) => {}
            Err(error) => tracing::error!(%error, "cannot reload the superblock after a rollback"),
        }
    }

    fn reload_superblock(&self, running: &mut Running<S>) -> FsResult<()> {
        let tx = self.shared.rvm.begin()?;
        let pointer = RootPointer::decode(&tx.root())?;
        let mut bytes = [0u8; SUPERBLOCK_SIZE];
        tx.read(PageRef::page_start(pointer.superblock_page()), &mut bytes)?;
        running.sb = Superblock::decode(&bytes, pointer.superblock_page())?;
        running.sb_page = pointer.superblock_page();
        running.tx = Some(tx);
        Ok(())
    }

    fn refuse_if_read_only(&self) -> FsResult<()> {
        if self.shared.options.read_only {
            Err(error::posix(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// The superblock as the running transaction sees it.
    pub fn superblock_inodes(&self) -> u64 {
        self.lock().sb.inode_count
    }
}

/// Reads an inode or fails with `ENOENT`.
pub(crate) fn load<S: PageStore>(ctx: &Ctx<'_, S>, ino: u64) -> FsResult<Inode> {
    inode::read(ctx.tx, ctx.sb, ino)?.ok_or(error::posix(libc::ENOENT))
}

/// Writes an inode back.
pub(crate) fn save<S: PageStore>(ctx: &mut Ctx<'_, S>, inode: &Inode) -> FsResult<()> {
    inode::write(ctx.tx, ctx.sb, inode)
}

const _: () = assert!(INODE_SIZE * 16 == crate::PAGE_SIZE);
