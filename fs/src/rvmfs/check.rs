//! A consistency walk of the filesystem tree (`fsck` for tests and the daemon).
//!
//! From the root, every directory entry must name a live inode of the type
//! the entry says; every inode's link count must equal the names that reach
//! it (directories: 2 + subdirectories); a directory's `..` must be the
//! directory that names it; and the superblock's inode count must equal the
//! reachable inodes plus the orphans. Problems are listed, not fatal.

use std::collections::HashMap;

use crate::PageStore;

use super::directory;
use super::error::FsResult;
use super::inode::{self, ROOT_INO};
use super::namespace::dirent_type;
use super::{load, RvmFs};

/// What the walk found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsCheck {
    /// Inodes reached from the root.
    pub inodes: u64,
    /// Directory entries seen.
    pub entries: u64,
    /// Everything inconsistent, one sentence each.
    pub problems: Vec<String>,
}

impl FsCheck {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl<S: PageStore + 'static> RvmFs<S> {
    /// Commits the running transaction and runs RVM's own check (pages in
    /// use vs. allocation maps), holding off filesystem operations meanwhile.
    /// Use this instead of `rvm().check()`, which would wait for the running
    /// transaction forever.
    pub fn check_rvm(&self) -> FsResult<crate::CheckReport> {
        let mut running = self.lock();
        if let Some(tx) = running.tx.take() {
            let sequence = tx.close()?;
            self.shared.rvm.wait_durable(sequence)?;
        }
        let report = self.shared.rvm.check()?;
        drop(running);
        Ok(report)
    }

    /// Walks the tree as the running transaction sees it.
    pub fn check(&self) -> FsResult<FsCheck> {
        self.with_read(|ctx| {
            let mut report = FsCheck::default();
            let mut links: HashMap<u64, u32> = HashMap::new();
            let mut stack = vec![ROOT_INO];
            let mut seen_dirs = 0u64;
            while let Some(dir_ino) = stack.pop() {
                seen_dirs += 1;
                if seen_dirs > ctx.sb.inode_count + 1 {
                    report.problems.push("the directory graph has a cycle".into());
                    break;
                }
                let dir = load(ctx, dir_ino)?;
                let mut subdirs = 0;
                let mut cookie = directory::FIRST_HASH;
                loop {
                    let batch = directory::list_from(ctx.tx, dir.map.root, cookie, 512)?;
                    let Some(last) = batch.last() else { break };
                    cookie = last.hash + 1;
                    for entry in batch {
                        report.entries += 1;
                        let name = String::from_utf8_lossy(&entry.name).into_owned();
                        let Some(child) = inode::read(ctx.tx, ctx.sb, entry.ino)? else {
                            report.problems.push(format!(
                                "{name:?} in directory {dir_ino} names free inode {}",
                                entry.ino
                            ));
                            continue;
                        };
                        if dirent_type(child.mode) != entry.kind {
                            report.problems.push(format!(
                                "{name:?} in directory {dir_ino} has the wrong type"
                            ));
                        }
                        if child.is_dir() {
                            subdirs += 1;
                            if child.parent != dir_ino {
                                report.problems.push(format!(
                                    "directory {} has parent {} but is named in {dir_ino}",
                                    child.ino, child.parent
                                ));
                            }
                            stack.push(child.ino);
                        }
                        *links.entry(child.ino).or_default() += 1;
                    }
                }
                if dir.nlink != 2 + subdirs {
                    report.problems.push(format!(
                        "directory {dir_ino} has nlink {} but {subdirs} subdirectories",
                        dir.nlink
                    ));
                }
            }
            for (&ino, &count) in &links {
                let inode = load(ctx, ino)?;
                if !inode.is_dir() && inode.nlink != count {
                    report
                        .problems
                        .push(format!("inode {ino} has nlink {} but {count} names", inode.nlink));
                }
            }
            let mut orphans = 0u64;
            let mut at = ctx.sb.orphan_head;
            while at != 0 && orphans <= ctx.sb.inode_count {
                orphans += 1;
                at = load(ctx, at)?.next_orphan;
            }
            report.inodes = links.len() as u64 + 1;
            if report.inodes + orphans != ctx.sb.inode_count {
                report.problems.push(format!(
                    "the superblock counts {} inodes but {} are reachable and {orphans} orphaned",
                    ctx.sb.inode_count, report.inodes
                ));
            }
            Ok(report)
        })
    }
}
