//! File data: read, write, truncate, fallocate and SEEK_DATA/SEEK_HOLE.
//!
//! A regular file's block `i` lives in the logical page its page map names;
//! holes have no page and read as zeros. A write allocates logical pages only
//! for the blocks it fills (consecutive ones as one run, so RVM writes them
//! as one shadow run) and writes existing blocks in place, where RVM shadows
//! just those pages: appending never copies existing data. Bytes past the
//! end of file inside the last block are kept zero (truncate zeroes them).

use crate::{PageRef, PageStore, RvmError, PAGE_SIZE};

use super::error::{posix, FsResult};
use super::inode::{Inode, Timestamp};
use super::namespace::{free_blocks, free_page_list};
use super::page_map;
use super::permission::Caller;
use super::{load, save, Ctx, RvmFs};

/// Largest file size (16 TiB), as ext4's with 4 KiB blocks.
pub const MAX_FILE_SIZE: u64 = 1 << 44;

const BLOCK: u64 = PAGE_SIZE as u64;

/// Allocates logical pages for `count` blocks, in as few runs as the free
/// space allows; returns one page per block.
fn alloc_blocks<S: PageStore>(ctx: &mut Ctx<'_, S>, count: u64) -> FsResult<Vec<u64>> {
    let mut pages = Vec::with_capacity(count as usize);
    let mut want = count;
    while (pages.len() as u64) < count {
        let left = count - pages.len() as u64;
        match ctx.tx.alloc_pages(want.min(left)) {
            Ok(range) => pages.extend(range.pages()),
            Err(RvmError::NoLogicalSpace { .. }) if want > 1 => want = want.div_ceil(2),
            Err(error) => {
                // Give back what this call took: the operation fails whole.
                free_page_list(ctx, pages)?;
                return Err(error.into());
            }
        }
    }
    Ok(pages)
}

/// Maps every hole among blocks `first..=last` to a fresh page; returns the
/// pages of all the blocks and how many were new.
fn fill_holes<S: PageStore>(
    ctx: &mut Ctx<'_, S>,
    inode: &mut Inode,
    first: u64,
    last: u64,
) -> FsResult<(Vec<u64>, u64)> {
    let mut pages = page_map::get_run(ctx.tx, inode.map, first, last - first + 1)?;
    let holes = pages.iter().filter(|&&p| p == 0).count() as u64;
    if holes == 0 {
        return Ok((pages, 0));
    }
    let fresh = alloc_blocks(ctx, holes)?;
    let mut fresh = fresh.into_iter();
    let mut i = 0;
    while i < pages.len() {
        if pages[i] != 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < pages.len() && pages[i] == 0 {
            pages[i] = fresh.next().expect("one fresh page per hole");
            i += 1;
        }
        page_map::set_run(ctx.tx, &mut inode.map, first + start as u64, &pages[start..i])?;
    }
    inode.blocks += holes;
    Ok((pages, holes))
}

/// Applies `op` to runs of blocks whose pages are consecutive: `(first page,
/// byte offset in the data, length)`.
fn for_each_run(
    pages: &[u64],
    offset: u64,
    len: usize,
    mut op: impl FnMut(PageRef, usize, usize) -> FsResult<()>,
) -> FsResult<()> {
    let mut done = 0usize;
    let mut i = 0usize;
    while done < len {
        let in_block = ((offset + done as u64) % BLOCK) as usize;
        let mut run_len = (PAGE_SIZE - in_block).min(len - done);
        let mut j = i + 1;
        while done + run_len < len
            && j < pages.len()
            && (pages[i] == 0) == (pages[j] == 0)
            && (pages[i] == 0 || pages[j] == pages[j - 1] + 1)
        {
            run_len = (run_len + PAGE_SIZE).min(len - done);
            j += 1;
        }
        op(PageRef::new(pages[i], in_block), done, run_len)?;
        done += run_len;
        i = j;
    }
    Ok(())
}

/// Changes a file's size, freeing blocks past the new end and zeroing the
/// tail of the last block.
pub(crate) fn resize<S: PageStore>(
    ctx: &mut Ctx<'_, S>,
    inode: &mut Inode,
    size: u64,
) -> FsResult<()> {
    if size < inode.size {
        free_blocks(ctx, inode, size.div_ceil(BLOCK))?;
        zero_range(ctx, inode, size, (size.div_ceil(BLOCK) * BLOCK).min(inode.size))?;
    }
    inode.size = size;
    Ok(())
}

/// Writes zeros over `from..end` inside blocks that have pages.
fn zero_range<S: PageStore>(
    ctx: &mut Ctx<'_, S>,
    inode: &Inode,
    from: u64,
    end: u64,
) -> FsResult<()> {
    if from >= end {
        return Ok(());
    }
    let (first, last) = (from / BLOCK, (end - 1) / BLOCK);
    let pages = page_map::get_run(ctx.tx, inode.map, first, last - first + 1)?;
    let zeros = vec![0u8; (end - from) as usize];
    for_each_run(&pages, from, zeros.len(), |at, done, len| {
        if at.page() != 0 {
            ctx.tx.write(at, &zeros[done..done + len])?;
        }
        Ok(())
    })
}

fn clear_privileges_on_write(caller: &Caller, inode: &mut Inode) {
    if !caller.is_root() && inode.mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
        inode.mode &= !libc::S_ISUID;
        if inode.mode & libc::S_IXGRP != 0 {
            inode.mode &= !libc::S_ISGID;
        }
    }
}

impl<S: PageStore + 'static> RvmFs<S> {
    /// Reads up to `size` bytes at `offset` (fewer at the end of file).
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.with_read(|ctx| {
            let inode = load(ctx, ino)?;
            if inode.is_dir() {
                return Err(posix(libc::EISDIR));
            }
            if offset >= inode.size || size == 0 {
                return Ok(Vec::new());
            }
            let end = inode.size.min(offset + u64::from(size));
            let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
            let pages = page_map::get_run(ctx.tx, inode.map, first, last - first + 1)?;
            let mut buf = vec![0u8; (end - offset) as usize];
            for_each_run(&pages, offset, buf.len(), |at, done, len| {
                if at.page() != 0 {
                    ctx.tx.read(at, &mut buf[done..done + len])?;
                }
                Ok(())
            })?;
            Ok(buf)
        })
    }

    /// Writes `data` at `offset`; returns the bytes written (short at the
    /// maximum file size). `fh` marks the handle for the commit at release.
    pub fn write(
        &self,
        caller: &Caller,
        ino: u64,
        fh: Option<u64>,
        offset: u64,
        data: &[u8],
    ) -> FsResult<usize> {
        self.refuse_if_read_only()?;
        if offset >= MAX_FILE_SIZE {
            return Err(posix(libc::EFBIG));
        }
        let len = (data.len() as u64).min(MAX_FILE_SIZE - offset) as usize;
        if len == 0 {
            return Ok(0);
        }
        let data = &data[..len];
        let end = offset + len as u64;
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        let blocks = last - first + 1;
        self.ensure_space(blocks + blocks / 256 + 16)?;
        // Noted before the data lands, so no outside commit can slip in
        // between a first piece and its note (see `commit.rs`).
        self.write_piece_starts(ino, offset, end);
        let written = self.with_ctx(|ctx| {
            let mut inode = load(ctx, ino)?;
            if !inode.is_file() {
                return Err(posix(if inode.is_dir() { libc::EISDIR } else { libc::EINVAL }));
            }
            let (pages, _) = fill_holes(ctx, &mut inode, first, last)?;
            for_each_run(&pages, offset, len, |at, done, n| {
                ctx.tx.write(at, &data[done..done + n])?;
                Ok(())
            })?;
            let now = Timestamp::now();
            inode.size = inode.size.max(end);
            inode.mtime = now;
            inode.ctime = now;
            clear_privileges_on_write(caller, &mut inode);
            save(ctx, &inode)?;
            Ok(len)
        });
        self.write_piece_done(ino, offset);
        written?;
        self.mark_written(fh);
        Ok(len)
    }

    /// `fallocate`: mode 0, `FALLOC_FL_KEEP_SIZE`, and
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`; others `EOPNOTSUPP`.
    /// Allocated blocks read as zeros; RVM gives them physical pages when
    /// they are first written.
    pub fn fallocate(
        &self,
        ino: u64,
        fh: Option<u64>,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> FsResult<()> {
        self.refuse_if_read_only()?;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE) != 0 || (punch && !keep)
        {
            return Err(posix(libc::EOPNOTSUPP));
        }
        if length == 0 {
            return Err(posix(libc::EINVAL));
        }
        let end = offset.checked_add(length).ok_or(posix(libc::EFBIG))?;
        if end > MAX_FILE_SIZE {
            return Err(posix(libc::EFBIG));
        }
        self.with_ctx(|ctx| {
            let mut inode = load(ctx, ino)?;
            if !inode.is_file() {
                return Err(posix(if inode.is_dir() { libc::EISDIR } else { libc::ENODEV }));
            }
            let now = Timestamp::now();
            if punch {
                let (full_from, full_end) = (offset.div_ceil(BLOCK), end / BLOCK);
                if full_from < full_end {
                    let mut pages = Vec::new();
                    page_map::clear_range(ctx.tx, &mut inode.map, full_from, full_end, &mut |p| {
                        pages.push(p)
                    })?;
                    inode.blocks -= pages.len() as u64;
                    free_page_list(ctx, pages)?;
                }
                let end_in_file = end.min(inode.size);
                zero_range(ctx, &inode, offset, (full_from * BLOCK).min(end_in_file))?;
                zero_range(ctx, &inode, (full_end * BLOCK).max(offset), end_in_file)?;
                inode.mtime = now;
            } else {
                fill_holes(ctx, &mut inode, offset / BLOCK, (end - 1) / BLOCK)?;
                if !keep && end > inode.size {
                    inode.size = end;
                    inode.mtime = now;
                }
            }
            inode.ctime = now;
            save(ctx, &inode)
        })?;
        self.mark_written(fh);
        Ok(())
    }

    /// `lseek` with `SEEK_DATA` / `SEEK_HOLE` (others: `EINVAL`; the kernel
    /// handles SEEK_SET/CUR/END itself).
    pub fn lseek(&self, ino: u64, offset: u64, whence: i32) -> FsResult<u64> {
        self.with_read(|ctx| {
            let inode = load(ctx, ino)?;
            if offset >= inode.size {
                return Err(posix(libc::ENXIO));
            }
            match whence {
                libc::SEEK_DATA => {
                    let block = page_map::next_present(ctx.tx, inode.map, offset / BLOCK)?;
                    match block.map(|b| (b * BLOCK).max(offset)) {
                        Some(at) if at < inode.size => Ok(at),
                        _ => Err(posix(libc::ENXIO)),
                    }
                }
                libc::SEEK_HOLE => {
                    let block = page_map::next_absent(ctx.tx, inode.map, offset / BLOCK)?;
                    Ok(block.saturating_mul(BLOCK).max(offset).min(inode.size))
                }
                _ => Err(posix(libc::EINVAL)),
            }
        })
    }
}
