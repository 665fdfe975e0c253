//! Group commit: several threads committing at once share switches.
//!
//! The store's switch is made slow (as a remote or flushed one is), so while
//! one thread's commit is being switched others close theirs; the next
//! switch makes all of them durable at once. Meanwhile a reader checks that
//! a transaction writing two pages is never seen half done.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rvmfs::{
    CommitSlot, FormatOptions, MemStore, PageRef, PageRun, PageStore, Rvm, StoreError,
    COMMIT_SLOT_SIZE,
};

/// A MemStore whose commit switch takes a while.
#[derive(Debug)]
struct SlowSwitch(MemStore);

impl PageStore for SlowSwitch {
    fn page_count(&self) -> u64 {
        self.0.page_count()
    }
    fn read(&self, page: u64, offset: usize, buf: &mut [u8]) -> Result<(), StoreError> {
        self.0.read(page, offset, buf)
    }
    fn write(&self, page: u64, offset: usize, data: &[u8]) -> Result<(), StoreError> {
        self.0.write(page, offset, data)
    }
    fn persist(&self, runs: &[PageRun]) -> Result<(), StoreError> {
        self.0.persist(runs)
    }
    fn read_commit_slot(&self, slot: CommitSlot) -> Result<[u8; COMMIT_SLOT_SIZE], StoreError> {
        self.0.read_commit_slot(slot)
    }
    fn switch_commit(
        &self,
        slot: CommitSlot,
        record: &[u8; COMMIT_SLOT_SIZE],
    ) -> Result<(), StoreError> {
        thread::sleep(Duration::from_millis(2));
        self.0.switch_commit(slot, record)
    }
    fn discard(&self, runs: &[PageRun]) -> Result<(), StoreError> {
        self.0.discard(runs)
    }
}

const WRITERS: u64 = 4;
const COMMITS_EACH: u64 = 25;

#[test]
fn concurrent_committers_share_switches() {
    let store = Arc::new(SlowSwitch(MemStore::new(2048)));
    let rvm = Rvm::format(Arc::clone(&store), FormatOptions::default()).unwrap();
    let mut tx = rvm.begin().unwrap();
    let pages = tx.alloc_pages(WRITERS + 2).unwrap();
    tx.commit().unwrap();
    let before = rvm.stats();
    let pair = PageRef::page_start(pages.start + WRITERS);

    thread::scope(|scope| {
        for writer in 0..WRITERS {
            let rvm = rvm.clone();
            scope.spawn(move || {
                for value in 1..=COMMITS_EACH {
                    let mut tx = rvm.begin().unwrap();
                    let at = PageRef::page_start(pages.start + writer);
                    tx.write(at, &value.to_le_bytes()).unwrap();
                    tx.commit().unwrap();
                    let mut back = [0; 8];
                    rvm.read(at, &mut back).unwrap();
                    assert!(
                        u64::from_le_bytes(back) >= value,
                        "a commit is durable when it returns"
                    );
                }
            });
        }
        let writer = rvm.clone();
        scope.spawn(move || {
            for value in 1..=COMMITS_EACH {
                let mut tx = writer.begin().unwrap();
                tx.write(pair, &value.to_le_bytes()).unwrap();
                tx.write(pair.advance(4096).unwrap(), &value.to_le_bytes()).unwrap();
                tx.close().unwrap();
            }
            writer.sync().unwrap();
        });
        let reader = rvm.clone();
        scope.spawn(move || {
            let mut seen = 0;
            while seen < COMMITS_EACH {
                let mut both = vec![0; 4096 + 8];
                reader.read(pair, &mut both).unwrap();
                let first = u64::from_le_bytes(both[..8].try_into().unwrap());
                let second = u64::from_le_bytes(both[4096..].try_into().unwrap());
                assert_eq!(first, second, "a transaction is seen whole or not at all");
                seen = first;
            }
        });
    });

    let stats = rvm.stats();
    let commits = stats.commits - before.commits;
    let switches = stats.switches - before.switches;
    println!("{commits} commits shared {switches} switches");
    assert_eq!(commits, (WRITERS + 1) * COMMITS_EACH);
    assert!(switches < commits, "{switches} switches for {commits} commits");
    for writer in 0..WRITERS {
        let mut back = [0; 8];
        rvm.read(PageRef::page_start(pages.start + writer), &mut back).unwrap();
        assert_eq!(u64::from_le_bytes(back), COMMITS_EACH);
    }
    assert!(rvm.check().unwrap().is_clean());
    drop(rvm);
    let rvm = Rvm::open(store).unwrap();
    let mut back = [0; 8];
    rvm.read(pair, &mut back).unwrap();
    assert_eq!(u64::from_le_bytes(back), COMMITS_EACH);
    assert!(rvm.check().unwrap().is_clean());
}
