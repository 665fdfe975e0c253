//! Shared by the integration tests: a reference model of RVM's committed
//! state and a runner that drives a script of operations against both.

#![allow(dead_code)]

use std::collections::BTreeMap;

use rvmfs::{PageRange, PageRef, PageStore, RootSlot, Rvm, RvmError, PAGE_SIZE, ROOT_SLOT_SIZE};

/// What a reader can observe: every allocated user page and the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub pages: BTreeMap<u64, Vec<u8>>,
    pub root: RootSlot,
}

impl Default for State {
    fn default() -> Self {
        State { pages: BTreeMap::new(), root: [0; ROOT_SLOT_SIZE] }
    }
}

/// Reads the last durable state of `rvm` in full.
pub fn read_state<S: PageStore>(rvm: &Rvm<S>) -> State {
    let mut pages = BTreeMap::new();
    for range in rvm.allocated_ranges() {
        for page in range.pages() {
            let mut buf = vec![0; PAGE_SIZE];
            rvm.read(PageRef::page_start(page), &mut buf).expect("allocated pages read");
            pages.insert(page, buf);
        }
    }
    State { pages, root: rvm.root() }
}

/// One step of a script. Slots name ranges allocated earlier in the script.
#[derive(Debug, Clone)]
pub enum Op {
    Alloc { slot: usize, count: u64 },
    Write { slot: usize, page: u64, offset: usize, len: usize, byte: u8 },
    Free { slot: usize },
    Root(u8),
    Commit,
    Abort,
    Reopen,
}

/// The model: a state plus the script's slots.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub state: State,
    pub slots: BTreeMap<usize, PageRange>,
}

/// How a script run ended.
#[derive(Debug)]
pub struct Run {
    /// States after format and after each commit that returned.
    pub committed: Vec<State>,
    /// The state the failed commit would have produced, if a commit failed.
    pub interrupted: Option<State>,
    /// The error that stopped the run, if any.
    pub error: Option<RvmError>,
}

/// Runs `script` on an already formatted `store`, checking reads of the
/// open transaction against the model as it goes.
pub fn run_script<S: PageStore>(store: &S, script: &[Op]) -> Run {
    let mut committed = Model::default();
    let mut run = Run { committed: vec![committed.state.clone()], interrupted: None, error: None };
    let mut rvm = match Rvm::open(store) {
        Ok(rvm) => rvm,
        Err(error) => {
            run.error = Some(error);
            return run;
        }
    };
    let mut work = committed.clone();
    let mut tx = Some(rvm.begin().expect("begin"));
    for op in script {
        let t = tx.as_mut().expect("a transaction is open");
        let result = match op {
            Op::Alloc { slot, count } => {
                if work.slots.contains_key(slot) {
                    continue;
                }
                t.alloc_pages(*count).map(|range| {
                    work.slots.insert(*slot, range);
                    for page in range.pages() {
                        work.state.pages.insert(page, vec![0; PAGE_SIZE]);
                    }
                })
            }
            Op::Write { slot, page, offset, len, byte } => {
                let Some(range) = work.slots.get(slot).copied() else { continue };
                let start = (page % range.count) * PAGE_SIZE as u64 + *offset as u64;
                let end = (start + *len as u64).min(range.count * PAGE_SIZE as u64);
                let data = vec![*byte; (end - start) as usize];
                for (i, b) in data.iter().enumerate() {
                    let at = start + i as u64;
                    let page = range.start + at / PAGE_SIZE as u64;
                    work.state.pages.get_mut(&page).unwrap()[(at % PAGE_SIZE as u64) as usize] = *b;
                }
                t.write(PageRef::new(range.start, start as usize), &data).map(|()| {
                    let mut back = vec![0; data.len()];
                    t.read(PageRef::new(range.start, start as usize), &mut back).unwrap();
                    assert_eq!(back, data, "a transaction reads its own writes");
                })
            }
            Op::Free { slot } => {
                let Some(range) = work.slots.remove(slot) else { continue };
                for page in range.pages() {
                    work.state.pages.remove(&page);
                }
                t.free_pages(range)
            }
            Op::Root(byte) => {
                work.state.root = [*byte; ROOT_SLOT_SIZE];
                t.set_root(&[*byte; ROOT_SLOT_SIZE])
            }
            Op::Commit => {
                for (&page, contents) in &work.state.pages {
                    let mut buf = vec![0; PAGE_SIZE];
                    t.read(PageRef::page_start(page), &mut buf).unwrap();
                    assert!(buf == *contents, "transaction view of page {page} matches the model");
                }
                match tx.take().unwrap().commit() {
                    Ok(_) => {
                        committed = work.clone();
                        run.committed.push(committed.state.clone());
                        Ok(())
                    }
                    Err(error) => {
                        run.interrupted = Some(work.state.clone());
                        Err(error)
                    }
                }
            }
            Op::Abort => {
                tx.take().unwrap().abort();
                work = committed.clone();
                Ok(())
            }
            Op::Reopen => {
                drop(tx.take());
                work = committed.clone();
                drop(rvm);
                match Rvm::open(store) {
                    Ok(reopened) => {
                        rvm = reopened;
                        assert_eq!(
                            read_state(&rvm),
                            committed.state,
                            "reopen finds the last commit"
                        );
                        Ok(())
                    }
                    Err(error) => {
                        run.error = Some(error);
                        return run;
                    }
                }
            }
        };
        if let Err(error) = result {
            run.error = Some(error);
            return run;
        }
        if tx.is_none() {
            match rvm.begin() {
                Ok(t) => tx = Some(t),
                Err(error) => {
                    run.error = Some(error);
                    return run;
                }
            }
        }
    }
    run
}
