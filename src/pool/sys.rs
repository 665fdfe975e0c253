//! Raw system calls and pointer code for the pool, in one place.
//!
//! Everything here is small and `unsafe` inside; the rest of the pool is
//! safe Rust. What it covers and why it is hand-written:
//! - file locks that report the holder's PID: an open-file-description lock
//!   (works between threads and processes alike) for exclusion, plus a
//!   classic POSIX lock whose `F_GETLK` answer names the holder's PID
//!   (rustix exposes neither `F_OFD_SETLK` nor `F_GETLK`);
//! - the size of a block device (`BLKGETSIZE64`);
//! - a `MAP_SHARED_VALIDATE | MAP_SYNC` mapping, which memmap2 cannot ask for;
//! - cache-line write-back and a store fence for DAX mappings;
//! - copies in and out of a mapping at a bounds-checked offset, inside it
//!   (whole blocks with non-temporal stores), and between it and a file
//!   with `pwritev`/`preadv`, and its bytes in
//!   place for a caller that keeps writers away (the pool's mapping, and
//!   the swap tier's: `block::swap_file`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// Byte of the pool file whose OFD lock gives exclusion.
const EXCLUSION_BYTE: i64 = 0;
/// Byte of the pool file whose POSIX lock advertises the holder's PID.
const PID_BYTE: i64 = 1;

fn flock_for(write: bool, start: i64) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zeroes is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if write { libc::F_WRLCK } else { libc::F_RDLCK } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = 1;
    fl
}

fn set_lock(fd: BorrowedFd<'_>, cmd: libc::c_int, fl: &libc::flock) -> io::Result<bool> {
    // SAFETY: `fd` is a valid open descriptor for the call's duration and
    // `fl` points to a live, initialised `flock`.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, fl as *const libc::flock) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(err),
    }
}

/// Take the pool lock: `Ok(true)` when taken, `Ok(false)` when another
/// holder (another process, or another open of the same file in this one)
/// has it. Write locks need a descriptor open for writing.
pub(crate) fn lock_pool(fd: BorrowedFd<'_>, write: bool) -> io::Result<bool> {
    if !set_lock(fd, libc::F_OFD_SETLK, &flock_for(write, EXCLUSION_BYTE))? {
        return Ok(false);
    }
    // The POSIX lock only advertises our PID; failing to take it (another
    // reader in this process) does not weaken the exclusion above.
    set_lock(fd, libc::F_SETLK, &flock_for(write, PID_BYTE))?;
    Ok(true)
}

/// The PID of a process holding a conflicting lock on the pool, if any.
pub(crate) fn lock_holder(fd: BorrowedFd<'_>, write: bool) -> io::Result<Option<i32>> {
    let mut fl = flock_for(write, PID_BYTE);
    // SAFETY: valid descriptor; `fl` is live and writable for F_GETLK.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETLK, &mut fl as *mut libc::flock) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if fl.l_type == libc::F_UNLCK as libc::c_short || fl.l_pid <= 0 {
        // Unlocked for POSIX purposes: the holder is this very process
        // (POSIX locks never conflict with their own process).
        return Ok(None);
    }
    Ok(Some(fl.l_pid))
}

/// Size in bytes of the block device open at `fd`.
pub(crate) fn block_device_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: the ioctl writes one u64 into `size`, which is live and aligned.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// A mapping made with `mmap(2)` directly (the `MAP_SYNC` case).
#[derive(Debug)]
pub(crate) struct SyncMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; it is not tied to a thread.
unsafe impl Send for SyncMapping {}
// SAFETY: shared access goes through `copy_in`/`copy_out`, whose callers
// promise not to race on a range (see `Media`).
unsafe impl Sync for SyncMapping {}

impl SyncMapping {
    /// Map `len` bytes of `fd` with `MAP_SHARED_VALIDATE | MAP_SYNC`.
    /// `Ok(None)` when the file system does not support it (not DAX).
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Option<Self>> {
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        let flags = libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC;
        // SAFETY: a fresh mapping chosen by the kernel; no existing memory
        // is affected. The result is checked before use.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Ok(None),
                _ => Err(err),
            };
        }
        Ok(NonNull::new(ptr.cast()).map(|ptr| SyncMapping { ptr, len }))
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SyncMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the range `map` created; no references
        // into it outlive `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Copy `buf.len()` bytes from `base + offset`.
///
/// # Safety
/// `base..base+map_len` must be a live mapping, and `offset + buf.len()`
/// must not exceed `map_len` (callers check with `check_bounds`).
pub(crate) unsafe fn copy_out(base: *const u8, offset: u64, buf: &mut [u8]) {
    // SAFETY: in bounds of a live mapping by the caller's contract; `buf`
    // is a distinct Rust allocation so the ranges cannot overlap.
    unsafe { std::ptr::copy_nonoverlapping(base.add(offset as usize), buf.as_mut_ptr(), buf.len()) }
}

/// The bytes at `base + offset .. + len`, in place.
///
/// # Safety
/// The range must lie inside the live mapping at `base`, which must outlive
/// `'a`, and nothing may write the range while the slice lives.
pub(crate) unsafe fn bytes_at<'a>(base: *const u8, offset: u64, len: u64) -> &'a [u8] {
    // SAFETY: in bounds of a live mapping that outlives 'a and unchanged
    // while borrowed, by the caller's contract.
    unsafe { std::slice::from_raw_parts(base.add(offset as usize), len as usize) }
}

/// Copy `data` to `base + offset`.
///
/// # Safety
/// As for [`copy_out`], and the mapping must be writable.
pub(crate) unsafe fn copy_in(base: *mut u8, offset: u64, data: &[u8]) {
    // SAFETY: in bounds of a live writable mapping by the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(offset as usize), data.len()) }
}

/// Copy `data` to `base + offset`, streaming ([`copy_streaming`]).
///
/// # Safety
/// As for [`copy_in`].
pub(crate) unsafe fn copy_in_streaming(base: *mut u8, offset: u64, data: &[u8]) {
    // SAFETY: in bounds of a live writable mapping by the caller's contract.
    unsafe { copy_streaming(base.add(offset as usize), data.as_ptr(), data.len()) }
}

/// [`copy_in_streaming`] without the closing store fence, for one copy of
/// many: the caller calls [`store_fence`] once after the last (a fence per
/// 4 KiB block waits for every write-combining buffer each time).
///
/// # Safety
/// As for [`copy_in`].
pub(crate) unsafe fn copy_in_streaming_unfenced(base: *mut u8, offset: u64, data: &[u8]) {
    // SAFETY: in bounds of a live writable mapping by the caller's contract.
    unsafe { copy_streaming_unfenced(base.add(offset as usize), data.as_ptr(), data.len()) }
}

/// Copy `len` bytes at `base + from` to `base + to` for each pair of
/// `moves`, in order, streaming ([`copy_streaming`]), then fence once.
///
/// # Safety
/// Every range must lie inside a live writable mapping, and the two ranges
/// of each pair must not overlap.
pub(crate) unsafe fn copy_within(base: *mut u8, moves: &[(u64, u64)], len: u64) {
    for &(from, to) in moves {
        // SAFETY: by the caller's contract.
        unsafe {
            copy_streaming_unfenced(base.add(to as usize), base.add(from as usize), len as usize)
        }
    }
    store_fence();
}

/// Copy whole blocks into a mapping with non-temporal stores, for data
/// nobody reads soon: a block going to swap, a block a shrink moves, a
/// block a grow brings back unasked. A plain copy first reads every
/// destination line into the cache to overwrite it, a third of the memory
/// traffic of a copy bound by it, and evicts what the cache held;
/// streaming stores do neither (a 256 MiB shrink took 20 ms instead of 30
/// to 37). A block a reader waits for is copied plainly: the reader finds
/// it in the cache. The store fence at the end orders the stores before
/// whatever the caller does next (a persist, a map entry). Other lengths
/// and alignments, and other machines, copy as usual. (No well-kept crate
/// offers a non-temporal memcpy; this is the SSE2 loop every x86-64 has.)
///
/// # Safety
/// `src..src + len` readable, `dst..dst + len` writable, not overlapping.
unsafe fn copy_streaming(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: by the caller's contract.
    unsafe { copy_streaming_unfenced(dst, src, len) };
    store_fence();
}

/// [`copy_streaming`] but for the fence, which the caller owes.
///
/// # Safety
/// As for [`copy_streaming`].
unsafe fn copy_streaming_unfenced(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if len >= 4096 && len % 64 == 0 && dst as usize % 16 == 0 {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let (mut s, mut d) = (src.cast::<__m128i>(), dst.cast::<__m128i>());
        // SAFETY: SSE2 is part of x86-64; `d` is 16-byte aligned and every
        // access is inside the ranges, by the caller's contract.
        unsafe {
            for _ in 0..len / 64 {
                let (a, b) = (_mm_loadu_si128(s), _mm_loadu_si128(s.add(1)));
                let (c, e) = (_mm_loadu_si128(s.add(2)), _mm_loadu_si128(s.add(3)));
                _mm_stream_si128(d, a);
                _mm_stream_si128(d.add(1), b);
                _mm_stream_si128(d.add(2), c);
                _mm_stream_si128(d.add(3), e);
                (s, d) = (s.add(4), d.add(4));
            }
        }
        return;
    }
    // SAFETY: by the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

/// Fault in the pages of `base + offset .. + len` writable, in one call
/// (`MADV_POPULATE_WRITE`, Linux 5.14); a hint, so failures (an older
/// kernel) are ignored: the pages then fault in on first touch.
///
/// # Safety
/// The range must lie inside a live writable mapping.
pub(crate) unsafe fn populate_write(base: *mut u8, offset: u64, len: u64) {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    let page = 4096usize;
    let start = (base as usize + offset as usize) & !(page - 1);
    let end = base as usize + offset as usize + len as usize;
    // SAFETY: the page-aligned range covers only pages of the mapping (the
    // mapping itself is page aligned); the advice never changes contents.
    let _ = unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_WRITE) };
}

/// Most iovecs in one `pwritev`/`preadv` (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Write the ranges `(offset, len)` of the mapping at `base`, one after the
/// other, to `fd` at byte `at` with `pwritev`: the kernel copies straight
/// from the mapping. (rustix's `pwritev` takes `IoSlice`s, which would mean
/// Rust references into memory other threads may write; raw iovecs do not.)
///
/// # Safety
/// Every range must lie inside the live mapping at `base`.
pub(crate) unsafe fn write_ranges(
    fd: BorrowedFd<'_>,
    base: *const u8,
    ranges: &[(u64, u64)],
    at: u64,
) -> io::Result<()> {
    // SAFETY: by the caller's contract.
    unsafe { transfer_ranges(fd, base.cast_mut(), ranges, at, Direction::ToFile) }
}

/// Fill the ranges `(offset, len)` of the mapping at `base`, one after the
/// other, from `fd` at byte `at` with `preadv`; bytes past the end of the
/// file read as zeros.
///
/// # Safety
/// Every range must lie inside the live, writable mapping at `base`.
pub(crate) unsafe fn read_ranges(
    fd: BorrowedFd<'_>,
    base: *mut u8,
    ranges: &[(u64, u64)],
    at: u64,
) -> io::Result<()> {
    // SAFETY: by the caller's contract.
    unsafe { transfer_ranges(fd, base, ranges, at, Direction::FromFile) }
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    ToFile,
    FromFile,
}

/// `pwritev`/`preadv` of mapping ranges, 1,024 iovecs per call, resuming
/// after short transfers.
///
/// # Safety
/// Every range must lie inside the live mapping at `base` (writable when
/// reading from the file).
unsafe fn transfer_ranges(
    fd: BorrowedFd<'_>,
    base: *mut u8,
    ranges: &[(u64, u64)],
    mut at: u64,
    direction: Direction,
) -> io::Result<()> {
    let (mut i, mut skip) = (0, 0u64);
    let mut iov = Vec::with_capacity(ranges.len().min(IOV_MAX));
    loop {
        while i < ranges.len() && ranges[i].1 == skip {
            (i, skip) = (i + 1, 0);
        }
        if i == ranges.len() {
            return Ok(());
        }
        iov.clear();
        for (k, &(offset, len)) in ranges[i..].iter().take(IOV_MAX).enumerate() {
            let done = if k == 0 { skip } else { 0 };
            iov.push(libc::iovec {
                // SAFETY: inside the mapping by the caller's contract.
                iov_base: unsafe { base.add((offset + done) as usize) }.cast(),
                iov_len: (len - done) as usize,
            });
        }
        let (fd, count, offset) = (fd.as_raw_fd(), iov.len() as libc::c_int, at as libc::off_t);
        // SAFETY: the iovecs point into the live mapping, which is writable
        // when the kernel writes to it (by the caller's contract).
        let n = unsafe {
            match direction {
                Direction::ToFile => libc::pwritev(fd, iov.as_ptr(), count, offset),
                Direction::FromFile => libc::preadv(fd, iov.as_ptr(), count, offset),
            }
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            if direction == Direction::ToFile {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing"));
            }
            // End of file: the rest reads as zeros.
            for (k, &(offset, len)) in ranges[i..].iter().enumerate() {
                let done = if k == 0 { skip } else { 0 };
                // SAFETY: inside the writable mapping by the caller's
                // contract.
                unsafe {
                    std::ptr::write_bytes(
                        base.add((offset + done) as usize),
                        0,
                        (len - done) as usize,
                    )
                };
            }
            return Ok(());
        }
        let mut n = n as u64;
        at += n;
        while n > 0 {
            let left = ranges[i].1 - skip;
            if n >= left {
                (n, i, skip) = (n - left, i + 1, 0);
            } else {
                (n, skip) = (0, skip + n);
            }
        }
    }
}

/// Bytes per cache line on x86-64.
const CACHE_LINE: usize = 64;

/// Write back every cache line of `base+offset .. +len` (no fence).
///
/// # Safety
/// The range must lie inside a live mapping.
pub(crate) unsafe fn write_back_lines(base: *const u8, offset: u64, len: u64) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = (base as usize + offset as usize) & !(CACHE_LINE - 1);
        let end = base as usize + offset as usize + len as usize;
        let mut line = start;
        while line < end {
            // SAFETY: `line` is inside the mapping (rounded down to its
            // cache line, which shares the page); clflush only writes back.
            unsafe { std::arch::x86_64::_mm_clflush(line as *const u8) };
            line += CACHE_LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (base, offset, len, CACHE_LINE);
    }
}

/// Order all earlier cache write-backs before later stores.
pub(crate) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence has no memory-safety preconditions.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// Make the whole mapping `base..base+len` read-only (`writable == false`)
/// or writable again.
///
/// # Safety
/// `base..base+len` must be exactly a live shared mapping of this process,
/// and no thread may be storing into it while it turns read-only (a store
/// after that faults).
pub(crate) unsafe fn protect_mapping(base: *mut u8, len: usize, writable: bool) -> io::Result<()> {
    let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
    // SAFETY: the caller guarantees the range is a live mapping of ours;
    // mprotect changes no memory contents.
    let rc = unsafe { libc::mprotect(base.cast(), len, prot) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_copies_equal_plain_ones_whatever_the_length_and_alignment() {
        let src: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        // Whole aligned blocks stream; the rest copies plainly.
        for (from, to, len) in
            [(0, 0, 4096), (3, 4096, 8192), (0, 16, 4160), (5, 8, 4096), (0, 0, 100), (1, 0, 4095)]
        {
            let mut dst = vec![0u8; 80 * 1024];
            let base = dst.as_mut_ptr();
            let aligned = (16 - base as usize % 16) % 16;
            let at = (aligned + to) as u64;
            // SAFETY: `at + len` is inside `dst`, which does not overlap `src`.
            unsafe { copy_in_streaming(base, at, &src[from..from + len]) };
            let at = at as usize;
            assert_eq!(&dst[at..at + len], &src[from..from + len], "{from} -> {to}, {len} bytes");
            assert!(dst[..at].iter().chain(&dst[at + len..]).all(|&b| b == 0), "{len} bytes");
        }
    }
}
