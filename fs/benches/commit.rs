//! RVM commit latency for 1, 16, 256 and 4096 dirty pages on a MemStore.
//!
//! Each iteration opens a transaction, overwrites `n` whole, already written
//! logical pages (the first write of each page shadows it into a fresh
//! physical page: one page copy each) and commits (persist, table and map
//! updates, commit record switch, release of the old pages). It reports the
//! median of the commit alone and of write + commit, next to the cost of a
//! plain page copy on this machine. MemStore's persist is free, so the figures
//! are RVM's own CPU cost; a pool adds its flush. Writes the table to
//! `benches/results/rvm-commit.md` at the workspace root.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use rvmfs::{FormatOptions, MemStore, PageRef, PageStore, Rvm, PAGE_SIZE};

const SIZES: [usize; 4] = [1, 16, 256, 4096];
const AREA_PAGES: usize = 8192;

fn median(samples: &mut [Duration]) -> f64 {
    samples.sort_unstable();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

fn iterations(pages: usize) -> usize {
    match pages {
        1 => 20_000,
        16 => 5_000,
        256 => 500,
        _ => 60,
    }
}

/// Median time to copy one page within a large buffer, in µs.
fn page_copy_us() -> f64 {
    let mut buf = vec![1u8; AREA_PAGES * PAGE_SIZE];
    let half = AREA_PAGES / 2 * PAGE_SIZE;
    let mut samples: Vec<Duration> = (0..30)
        .map(|_| {
            let start = Instant::now();
            buf.copy_within(..half, half);
            black_box(&buf);
            start.elapsed()
        })
        .collect();
    median(&mut samples) / (AREA_PAGES / 2) as f64
}

fn main() {
    let store = MemStore::new(8 * AREA_PAGES as u64);
    store.set_discard_poison(false);
    // Touch every page first: the vector is zero-allocated, and first-touch
    // page faults are the OS's cost, not RVM's (a pool is resident too).
    let all = store.page_count() as usize * PAGE_SIZE;
    store.write(0, 0, &vec![0; all]).expect("prefault");
    let rvm = Rvm::format(&store, FormatOptions::default()).expect("format");
    let mut tx = rvm.begin().expect("begin");
    let area = tx.alloc_pages(AREA_PAGES as u64).expect("alloc");
    tx.write(area.first_byte(), &vec![1; AREA_PAGES * PAGE_SIZE]).expect("fill");
    tx.commit().expect("commit");
    let data = vec![0xAB; 4096 * PAGE_SIZE];

    let copy = page_copy_us();
    let mut rows = Vec::new();
    let only: Option<usize> = std::env::var("RVM_BENCH_ONLY").ok().and_then(|v| v.parse().ok());
    for pages in SIZES.into_iter().filter(|p| only.is_none_or(|only| only == *p)) {
        let (mut commits, mut totals) = (Vec::new(), Vec::new());
        let mut next = 0;
        for i in 0..iterations(pages) + 10 {
            if next + pages > AREA_PAGES {
                next = 0;
            }
            let at = PageRef::page_start(area.start + next as u64);
            next += pages;
            let start = Instant::now();
            let mut tx = rvm.begin().expect("begin");
            tx.write(at, &data[..pages * PAGE_SIZE]).expect("write");
            let written = Instant::now();
            tx.commit().expect("commit");
            let end = Instant::now();
            if i >= 10 {
                commits.push(end - written);
                totals.push(end - start);
            }
        }
        rows.push((pages, median(&mut commits), median(&mut totals)));
    }
    assert!(rvm.check().expect("check").is_clean());

    let one = rows[0].2;
    if only.is_some() {
        return;
    }
    let mut table = String::new();
    writeln!(table, "# RVM commit latency (MemStore, release build)\n").unwrap();
    writeln!(
        table,
        "Median over many transactions that each overwrite N whole pages and commit. \
         *commit* times `Transaction::commit` alone; *write + commit* adds the writes, \
         whose first touch of a page shadows it (one page copy). MemStore persists for \
         free, so this is RVM's own cost. A page copy costs {copy:.3} µs here.\n"
    )
    .unwrap();
    writeln!(
        table,
        "| dirty pages | commit µs | commit µs/page | write + commit µs | write + commit µs/page | \
         µs per further page |"
    )
    .unwrap();
    writeln!(table, "|---:|---:|---:|---:|---:|---:|").unwrap();
    for &(pages, commit, total) in &rows {
        let further = if pages > 1 {
            format!("{:.3}", (total - one) / (pages - 1) as f64)
        } else {
            "-".to_string()
        };
        writeln!(
            table,
            "| {pages} | {commit:.2} | {:.3} | {total:.2} | {:.3} | {further} |",
            commit / pages as f64,
            total / pages as f64
        )
        .unwrap();
    }
    writeln!(
        table,
        "\nTargets (issue 3): ≤ 5 µs for one page, ≤ 0.5 µs for each further page \
         (write + commit, last column)."
    )
    .unwrap();
    print!("{table}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/results/rvm-commit.md");
    match std::fs::write(path, &table) {
        Ok(()) => println!("\nwritten to {path}"),
        Err(error) => eprintln!("cannot write {path}: {error}"),
    }
}
