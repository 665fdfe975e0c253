//! Giving freed pages back to the medium off the caller's path, and not
//! at once.
//!
//! A freed range is free in the catalog at once (the free space is the
//! complement of the regions, so nothing here is ever persisted), but
//! punching it out of a file medium (`Media::discard`) costs time in
//! proportion to its size: on tmpfs, 256 MiB is tens of milliseconds of
//! page freeing, and taking the pages again costs as much once more
//! (allocating, zeroing and mapping them). Shrinks and deletes queue their
//! ranges here instead, and one thread discards each range once it has
//! been free for [`DISCARD_DELAY`], the way memory allocators let freed
//! memory decay before they return it: a region that shrinks and grows
//! again within the delay takes back pages that are still allocated and
//! mapped, at no cost.
//!
//! The one rule: a range must not be discarded after a new owner has
//! started to use it. Every allocation passes its pages through
//! [`Discards::claim`] before it uses them, which drops them from the
//! queue, says which of them were still queued (so still allocated and
//! mapped), and waits while the thread is discarding any of them. A crash
//! loses the queue, which only leaves pages allocated in the file.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Extent, Media, PAGE_SIZE};

/// How long a freed range stays allocated before it is given back.
pub const DISCARD_DELAY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Queue {
    /// Freed ranges and when they were freed, oldest first.
    pending: Vec<(Extent, Instant)>,
    /// Being discarded by the thread right now.
    busy: Vec<Extent>,
    /// Discard everything now ([`Discards::settle`]).
    hurry: bool,
    stop: bool,
    /// Pages of the queue never discarded while the pool is open, the
    /// youngest kept ([`Discards::keep`]).
    keep: u64,
}

impl Queue {
    /// Queued pages beyond the ones kept (all of them once stopping).
    fn excess(&self) -> u64 {
        let queued: u64 = self.pending.iter().map(|(e, _)| e.count).sum();
        queued.saturating_sub(if self.stop { 0 } else { self.keep })
    }
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The queue of ranges to discard and the thread that does it.
#[derive(Debug)]
pub(super) struct Discards {
    media: Arc<dyn Media>,
    /// How long a range stays queued ([`DISCARD_DELAY`] but in tests).
    delay: Duration,
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Discards {
    pub(super) fn new(media: Arc<dyn Media>) -> Discards {
        Self::with_delay(media, DISCARD_DELAY)
    }

    fn with_delay(media: Arc<dyn Media>, delay: Duration) -> Discards {
        Discards { media, delay, shared: Arc::default(), worker: Mutex::new(None) }
    }

    /// Queue `extents` (already free in the catalog) for discarding.
    pub(super) fn push(&self, extents: &[Extent]) {
        if extents.is_empty() {
            return;
        }
        let now = Instant::now();
        self.shared.lock().pending.extend(extents.iter().map(|&e| (e, now)));
        self.shared.changed.notify_all();
        let mut worker = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        if worker.is_none() {
            let (media, shared) = (Arc::clone(&self.media), Arc::clone(&self.shared));
            let delay = self.delay;
            let spawned = std::thread::Builder::new()
                .name("pool-discard".into())
                .spawn(move || run(media.as_ref(), &shared, delay));
            match spawned {
                Ok(handle) => *worker = Some(handle),
                // No thread: discard now, on the caller's path.
                Err(err) => {
                    tracing::debug!("no discard thread ({err}); discarding inline");
                    let taken = std::mem::take(&mut self.shared.lock().pending);
                    discard(
                        self.media.as_ref(),
                        &taken.into_iter().map(|(e, _)| e).collect::<Vec<_>>(),
                    );
                }
            }
        }
    }

    /// Keep up to `pages` freed pages allocated however long they stay
    /// free (the youngest ones; older ones beyond it are discarded after
    /// the delay as before): a grow then takes pages the medium still has
    /// allocated and mapped. They are all given back when the pool closes.
    pub(super) fn keep(&self, pages: u64) {
        self.shared.lock().keep = pages;
        self.shared.changed.notify_all();
    }

    /// `extents` are being given to a new owner: take them out of the
    /// queue, and wait while any of them is being discarded. Returns the
    /// parts that were still queued: never discarded, so still allocated.
    pub(super) fn claim(&self, extents: &[Extent]) -> Vec<Extent> {
        let mut queue = self.shared.lock();
        if queue.pending.is_empty() && queue.busy.is_empty() {
            return Vec::new();
        }
        let mut kept = Vec::with_capacity(queue.pending.len());
        let mut reclaimed = Vec::new();
        for &(p, freed) in &queue.pending {
            let mut pieces = vec![p];
            for &t in extents {
                reclaimed.extend(pieces.iter().filter_map(|&piece| intersection(piece, t)));
                pieces = pieces.into_iter().flat_map(|piece| subtract(piece, t)).collect();
            }
            kept.extend(pieces.into_iter().map(|piece| (piece, freed)));
        }
        queue.pending = kept;
        while queue.busy.iter().any(|&b| extents.iter().any(|&t| overlap(b, t))) {
            queue = self.shared.changed.wait(queue).unwrap_or_else(|p| p.into_inner());
        }
        reclaimed
    }

    /// Discard every queued range now (but the pages kept), without
    /// waiting out the delay, and return once they are discarded.
    pub(super) fn settle(&self) {
        let mut queue = self.shared.lock();
        queue.hurry = true;
        self.shared.changed.notify_all();
        while queue.excess() > 0 || !queue.busy.is_empty() {
            if self.worker.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
                break;
            }
            queue = self.shared.changed.wait(queue).unwrap_or_else(|p| p.into_inner());
        }
        queue.hurry = false;
    }
}

impl Drop for Discards {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(worker) = self.worker.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = worker.join();
        }
    }
}

/// The thread: discard each range once it has been queued for `delay`
/// (everything at once when hurried or told to stop), oldest first, but
/// never the youngest `keep` pages, until told to stop and the queue is
/// empty.
fn run(media: &dyn Media, shared: &Shared, delay: Duration) {
    loop {
        let batch = {
            let mut queue = shared.lock();
            loop {
                let now = Instant::now();
                let due = |freed: Instant| queue.hurry || queue.stop || now >= freed + delay;
                let excess = queue.excess();
                if excess > 0 && queue.pending.iter().any(|&(_, freed)| due(freed)) {
                    break;
                }
                if queue.stop && queue.pending.is_empty() {
                    return;
                }
                // Wait for the oldest range still to come due, or for a
                // change when the rest is kept.
                let next = queue
                    .pending
                    .iter()
                    .map(|&(_, freed)| freed)
                    .filter(|&freed| excess > 0 && !due(freed))
                    .min();
                queue = match next {
                    Some(oldest) => {
                        let wait = (oldest + delay).saturating_duration_since(now);
                        shared
                            .changed
                            .wait_timeout(queue, wait)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    None => shared.changed.wait(queue).unwrap_or_else(|p| p.into_inner()),
                };
            }
            let now = Instant::now();
            let (hurry, stop) = (queue.hurry, queue.stop);
            let mut excess = queue.excess();
            let mut batch = Vec::new();
            let mut left = Vec::with_capacity(queue.pending.len());
            // Oldest first: the pages freed longest ago go back first.
            for (e, freed) in std::mem::take(&mut queue.pending) {
                let due = hurry || stop || now >= freed + delay;
                if !due || excess == 0 {
                    left.push((e, freed));
                    continue;
                }
                // The whole range, or its top part (the lower pages stay,
                // where an allocation looks first).
                let n = e.count.min(excess);
                excess -= n;
                batch.push(Extent { start: e.start + e.count - n, count: n });
                if n < e.count {
                    left.push((Extent { start: e.start, count: e.count - n }, freed));
                }
            }
            queue.pending = left;
            queue.busy.clone_from(&batch);
            batch
        };
        discard(media, &batch);
        shared.lock().busy.clear();
        shared.changed.notify_all();
    }
}

fn discard(media: &dyn Media, extents: &[Extent]) {
    for e in extents {
        if let Err(err) = media.discard(e.start * PAGE_SIZE, e.count * PAGE_SIZE) {
            tracing::debug!("could not give freed pages back to the medium: {err}");
        }
    }
}

/// The pages `a` and `b` share, if any.
fn intersection(a: Extent, b: Extent) -> Option<Extent> {
    let start = a.start.max(b.start);
    let end = (a.start + a.count).min(b.start + b.count);
    (start < end).then(|| Extent { start, count: end - start })
}

fn overlap(a: Extent, b: Extent) -> bool {
    a.start < b.start + b.count && b.start < a.start + a.count
}

/// `a` without the pages of `b`: none, one or two pieces.
pub(super) fn subtract(a: Extent, b: Extent) -> Vec<Extent> {
    if !overlap(a, b) {
        return vec![a];
    }
    let mut out = Vec::new();
    if a.start < b.start {
        out.push(Extent { start: a.start, count: b.start - a.start });
    }
    let (a_end, b_end) = (a.start + a.count, b.start + b.count);
    if b_end < a_end {
        out.push(Extent { start: b_end, count: a_end - b_end });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::crash::{CrashMedia, TearGranularity};

    fn e(start: u64, count: u64) -> Extent {
        Extent { start, count }
    }

    #[test]
    fn subtracting_leaves_the_pages_outside() {
        assert_eq!(subtract(e(10, 10), e(0, 5)), vec![e(10, 10)]);
        assert_eq!(subtract(e(10, 10), e(12, 3)), vec![e(10, 2), e(15, 5)]);
        assert_eq!(subtract(e(10, 10), e(5, 10)), vec![e(15, 5)]);
        assert_eq!(subtract(e(10, 10), e(0, 100)), vec![]);
    }

    #[test]
    fn a_deleted_region_is_punched_out_of_a_pool_file_and_reused_pages_are_not() {
        use std::os::unix::fs::MetadataExt;

        use crate::pool::{CreateOptions, Pool, RegionKind};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pool");
        let pool =
            Pool::create(&path, &CreateOptions { size: 64 << 20, ..Default::default() }).unwrap();
        let allocated = || std::fs::metadata(&path).unwrap().blocks() * 512;
        let a = pool.create_region("a", RegionKind::Fs, 16 << 20).unwrap();
        pool.media().write(a.extents[0].start * PAGE_SIZE, &vec![7u8; 16 << 20]).unwrap();
        let full = allocated();
        pool.delete_region("a").unwrap();
        // Free at once; punched out soon after.
        assert_eq!(pool.info().free_pages, pool.info().data_pages);
        pool.settle_discards();
        assert!(allocated() + (15 << 20) <= full, "{} then {}", full, allocated());
        // Pages freed and taken again at once are never punched under the
        // new owner.
        for round in 0..20u8 {
            let b = pool.create_region("b", RegionKind::Fs, 8 << 20).unwrap();
            let at = b.extents[0].start * PAGE_SIZE;
            pool.media().write(at, &vec![round; 8 << 20]).unwrap();
            pool.delete_region("b").unwrap();
            let c = pool.create_region("c", RegionKind::Fs, 8 << 20).unwrap();
            let at = c.extents[0].start * PAGE_SIZE;
            pool.media().write(at, &vec![round + 100; 8 << 20]).unwrap();
            pool.settle_discards();
            let mut back = vec![0u8; 8 << 20];
            pool.media().read(at, &mut back).unwrap();
            assert!(back.iter().all(|&x| x == round + 100), "round {round}: data punched");
            pool.delete_region("c").unwrap();
        }
    }

    #[test]
    fn a_pool_keeps_freed_pages_allocated_up_to_its_keep() {
        use std::os::unix::fs::MetadataExt;

        use crate::pool::{CreateOptions, Pool, RegionKind};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pool");
        let pool =
            Pool::create(&path, &CreateOptions { size: 64 << 20, ..Default::default() }).unwrap();
        let allocated = || std::fs::metadata(&path).unwrap().blocks() * 512;
        pool.keep_freed(6 << 20);
        let a = pool.create_region("a", RegionKind::Fs, 16 << 20).unwrap();
        pool.media().write(a.extents[0].start * PAGE_SIZE, &vec![7u8; 16 << 20]).unwrap();
        let full = allocated();
        pool.delete_region("a").unwrap();
        pool.settle_discards();
        let kept = allocated();
        assert!(kept + (11 << 20) >= full && kept + (9 << 20) <= full, "{full} then {kept}");
        pool.keep_freed(0);
        pool.settle_discards();
        assert!(allocated() + (15 << 20) <= full, "{} then {}", full, allocated());
    }

    #[test]
    fn a_freed_range_is_discarded_only_once_it_has_been_free_for_the_delay() {
        let media: Arc<dyn Media> = Arc::new(CrashMedia::new(1 << 20, TearGranularity::Nvram));
        let discards = Discards::with_delay(media, Duration::from_millis(1000));
        discards.push(&[e(0, 8)]);
        std::thread::sleep(Duration::from_millis(500));
        discards.push(&[e(16, 8)]);
        let pending =
            |d: &Discards| d.shared.lock().pending.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(pending(&discards), vec![e(0, 8), e(16, 8)], "kept while young");
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(pending(&discards), vec![e(16, 8)], "the older one went first");
        // Taken again before its time: never discarded, and said so.
        assert_eq!(discards.claim(&[e(16, 4)]), vec![e(16, 4)]);
        discards.settle();
        assert!(pending(&discards).is_empty());
    }

    #[test]
    fn the_youngest_kept_pages_are_never_discarded_until_the_keep_falls() {
        let media: Arc<dyn Media> = Arc::new(CrashMedia::new(1 << 20, TearGranularity::Nvram));
        let discards = Discards::with_delay(media, Duration::from_millis(50));
        let pending =
            |d: &Discards| d.shared.lock().pending.iter().map(|p| p.0).collect::<Vec<_>>();
        discards.keep(12);
        discards.push(&[e(0, 8)]);
        std::thread::sleep(Duration::from_millis(5));
        discards.push(&[e(16, 8)]);
        std::thread::sleep(Duration::from_millis(200));
        // 16 queued, 12 kept: the oldest range gives its top 4 pages.
        assert_eq!(pending(&discards), vec![e(0, 4), e(16, 8)]);
        discards.settle();
        assert_eq!(pending(&discards), vec![e(0, 4), e(16, 8)], "settling keeps them too");
        // Kept pages are still claimed like any queued ones.
        assert_eq!(discards.claim(&[e(0, 2)]), vec![e(0, 2)]);
        discards.keep(0);
        discards.settle();
        assert!(pending(&discards).is_empty());
    }

    #[test]
    fn claimed_pages_leave_the_queue_and_the_rest_is_discarded() {
        let media: Arc<dyn Media> = Arc::new(CrashMedia::new(1 << 20, TearGranularity::Nvram));
        let discards = Discards::new(media);
        discards.push(&[e(0, 64), e(100, 20)]);
        let reclaimed = discards.claim(&[e(10, 10), e(100, 30)]);
        assert_eq!(reclaimed, vec![e(10, 10), e(100, 20)], "what was still queued");
        discards.settle();
        let queue = discards.shared.lock();
        assert!(queue.pending.is_empty() && queue.busy.is_empty());
    }
}
