//! Crash tests: every persist point of scripted workloads, crashed three ways.
//!
//! For each script, a dry run counts the persist points. Then for every point
//! and every crash mode (drop, keep, two torn seeds, reordered) the script runs again on a
//! fresh `CrashStore` that crashes at that point; the durable image must open,
//! pass `check` (no page leaked or doubly owned), and hold exactly the last
//! committed state before the interrupted commit or the one it was making.
//! Each recovered store then commits once more, crashing again at that
//! commit's persist or switch, and must recover to one of those two states.

mod common;

use common::{read_state, run_script, Op, State};
use rvmfs::{CrashMode, CrashStore, FormatOptions, Rvm, RvmError};

const STORE_PAGES: u64 = 640;

fn formatted() -> CrashStore {
    let store = CrashStore::new(STORE_PAGES);
    Rvm::format(&store, FormatOptions::default()).expect("format");
    store
}

fn modes(point: u64) -> [CrashMode; 5] {
    [
        CrashMode::Drop,
        CrashMode::Keep,
        CrashMode::Tear { seed: point },
        CrashMode::Tear { seed: point ^ 0x5EED_0000 },
        CrashMode::Reorder { seed: point },
    ]
}

/// Opens a crashed store's durable image and checks it; returns its state.
fn recover(store: &CrashStore, context: &str) -> (CrashStore, State) {
    let recovered = store.recovered();
    let rvm = Rvm::open(&recovered).unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
    let report = rvm.check().unwrap_or_else(|e| panic!("{context}: check failed: {e}"));
    assert!(report.is_clean(), "{context}: {report}");
    let state = read_state(&rvm);
    drop(rvm);
    (recovered, state)
}

/// Commits one more change on a recovered store, crashing at `point` of that
/// commit, and checks the store recovers to the state before or after it.
fn crash_after_recovery(store: CrashStore, before: &State, point: u64, context: &str) -> usize {
    let rvm = Rvm::open(&store).expect("reopen a recovered store");
    let mut tx = rvm.begin().expect("begin");
    let range = tx.alloc_pages(3).expect("space after recovery");
    tx.write(range.first_byte(), &[0xA5; 5000]).expect("write after recovery");
    tx.set_root(b"after recovery").expect("root");
    store.arm(point, CrashMode::Tear { seed: point + 17 });
    let committed = tx.commit();
    assert!(matches!(committed, Err(RvmError::Persist { .. } | RvmError::SwitchCommit { .. })));
    drop(rvm);
    let (_, state) = recover(&store, &format!("{context}, then crash {point} after recovery"));
    let made_it = state.root[..14] == *b"after recovery";
    if made_it {
        assert_eq!(state.pages.len(), before.pages.len() + 3, "{context}: the new pages exist");
    } else {
        assert_eq!(&state, before, "{context}: the post-recovery commit left no trace");
    }
    1
}

/// Crashes `script` at every persist point in every mode; returns the count.
fn crash_everywhere(name: &str, script: &[Op]) -> usize {
    let dry = formatted();
    let base = dry.persist_points();
    let run = run_script(&dry, script);
    assert!(run.error.is_none(), "{name}: the dry run fails: {:?}", run.error);
    let points = dry.persist_points() - base;
    assert!(points >= 2, "{name}: the script commits");
    let mut checked = 0;
    for point in 0..points {
        for mode in modes(point) {
            let context = format!("{name}: crash at persist point {point} ({mode:?})");
            let store = formatted();
            store.arm(point, mode);
            let run = run_script(&store, script);
            assert!(store.has_crashed(), "{context}: the crash happened");
            assert!(run.error.is_some(), "{context}: the crash was reported");
            let interrupted = run.interrupted.as_ref().expect("crashes happen in commits");
            let before = run.committed.last().unwrap();
            let (recovered, state) = recover(&store, &context);
            assert!(
                state == *before || state == *interrupted,
                "{context}: recovered state is neither the last commit nor the interrupted one"
            );
            checked += 1;
            checked += crash_after_recovery(recovered, &state, point % 2, &context);
        }
    }
    println!("{name}: {points} persist points, {checked} crash states checked");
    checked
}

fn write(slot: usize, page: u64, offset: usize, len: usize, byte: u8) -> Op {
    Op::Write { slot, page, offset, len, byte }
}

#[test]
fn overwrites_survive_a_crash_at_every_persist_point() {
    let script = [
        Op::Alloc { slot: 0, count: 4 },
        write(0, 0, 0, 4 * 4096, 1),
        Op::Root(1),
        Op::Commit,
        write(0, 1, 100, 50, 2),
        write(0, 2, 4000, 200, 3),
        Op::Commit,
        write(0, 0, 0, 4096, 4),
        Op::Abort,
        write(0, 3, 10, 10, 5),
        write(0, 3, 5, 10, 6),
        Op::Root(2),
        Op::Commit,
        write(0, 0, 0, 3 * 4096 + 7, 7),
        Op::Commit,
    ];
    assert!(crash_everywhere("overwrites", &script) >= 32);
}

#[test]
fn allocation_and_freeing_survive_a_crash_at_every_persist_point() {
    let script = [
        Op::Alloc { slot: 0, count: 2 },
        Op::Alloc { slot: 1, count: 5 },
        write(1, 0, 0, 5 * 4096, 9),
        Op::Commit,
        Op::Free { slot: 0 },
        Op::Alloc { slot: 2, count: 1 },
        write(2, 0, 0, 1, 10),
        Op::Commit,
        Op::Alloc { slot: 3, count: 3 },
        write(3, 1, 0, 4096, 11),
        Op::Free { slot: 3 },
        Op::Free { slot: 1 },
        Op::Commit,
        Op::Reopen,
        Op::Alloc { slot: 4, count: 6 },
        write(4, 0, 2048, 4 * 4096, 12),
        Op::Alloc { slot: 5, count: 1 },
        Op::Abort,
        Op::Alloc { slot: 5, count: 2 },
        write(5, 1, 0, 4096, 13),
        Op::Free { slot: 2 },
        Op::Commit,
    ];
    assert!(crash_everywhere("allocation", &script) >= 32);
}

#[test]
fn large_transactions_across_table_leaves_survive_a_crash_at_every_persist_point() {
    let script = [
        Op::Alloc { slot: 0, count: 300 },
        write(0, 0, 0, 300 * 4096, 21),
        Op::Commit,
        write(0, 250, 0, 20 * 4096, 22),
        Op::Alloc { slot: 1, count: 40 },
        write(1, 0, 0, 40 * 4096, 23),
        Op::Commit,
        Op::Free { slot: 0 },
        Op::Root(3),
        Op::Commit,
    ];
    assert!(crash_everywhere("large", &script) >= 24);
}

#[test]
fn a_crash_during_format_leaves_no_commit_record_or_an_empty_store() {
    let dry = CrashStore::new(STORE_PAGES);
    Rvm::format(&dry, FormatOptions::default()).unwrap();
    let points = dry.persist_points();
    let mut checked = 0;
    for point in 0..points {
        for mode in modes(point) {
            let store = CrashStore::new(STORE_PAGES);
            store.arm(point, mode);
            assert!(Rvm::format(&store, FormatOptions::default()).is_err());
            let recovered = store.recovered();
            match Rvm::open(&recovered) {
                Ok(rvm) => {
                    assert!(rvm.check().unwrap().is_clean());
                    assert_eq!(read_state(&rvm), State::default());
                }
                Err(RvmError::NoCommitRecord { .. }) => {}
                Err(other) => panic!("crash at format point {point} ({mode:?}): {other}"),
            }
            checked += 1;
        }
    }
    println!("format: {points} persist points, {checked} crash states checked");
}
