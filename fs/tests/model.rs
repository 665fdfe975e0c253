//! Model test: random transactions against a `BTreeMap` of logical pages.
//!
//! proptest generates scripts of allocations, writes (any offset, any length,
//! across pages), frees, root changes, commits, aborts and reopens. The
//! runner (`common`) keeps the model in step: every read of the open
//! transaction must match it, every commit must make it what readers see,
//! and every reopen must find the last commit. At the end the store must
//! check clean.

mod common;

use common::{read_state, run_script, Op};
use proptest::prelude::*;
use rvmfs::{FormatOptions, MemStore, Rvm};

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..5usize, 1..40u64).prop_map(|(slot, count)| Op::Alloc { slot, count }),
        6 => (0..5usize, 0..40u64, 0..4096usize, 1..9000usize, any::<u8>())
            .prop_map(|(slot, page, offset, len, byte)| Op::Write { slot, page, offset, len, byte }),
        2 => (0..5usize).prop_map(|slot| Op::Free { slot }),
        1 => any::<u8>().prop_map(Op::Root),
        3 => Just(Op::Commit),
        1 => Just(Op::Abort),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_transactions_match_the_model(script in prop::collection::vec(op(), 1..80)) {
        let store = MemStore::new(768);
        Rvm::format(&store, FormatOptions::default()).unwrap();
        let mut script = script;
        script.push(Op::Commit);
        let run = run_script(&store, &script);
        prop_assert!(run.error.is_none(), "the script fails: {:?}", run.error);
        let rvm = Rvm::open(&store).unwrap();
        prop_assert_eq!(&read_state(&rvm), run.committed.last().unwrap());
        let report = rvm.check().unwrap();
        prop_assert!(report.is_clean(), "{}", report);
    }
}
