//! The vSSD experiment (issue: guest-directed elasticity; seed 002): who
//! should choose the victims when a block region shrinks?
//!
//! A 1 GiB region, fully resident, on a pool in /dev/shm with its swap file
//! there too. A reader draws 4 KiB block numbers from a Gaussian
//! (mu = 20,000, sigma = 8,192) and reads them, so the hot set is about the
//! first 180 MiB of the device. The region then shrinks by 256 MiB with
//! victims chosen by
//!
//! - (a) the guest: the real agent's victim choice (`pmvisor-agent`'s
//!   `Knowledge`), told by the application which blocks it reads (a hot
//!   hint over mu +- 3 sigma), answering the host's evict request;
//! - (b) the host, uniformly at random among resident blocks;
//! - (c) the host's CLOCK, which has seen the reader's accesses;
//!
//! then the reader does 1,000,000 more reads and the faults are counted.
//! Each case then grows the region back by 256 MiB, asking every swapped
//! block back, so the grow moves as much data as the shrink. Resize times
//! are the host's work only (the agent's answer time is measured apart).
//!
//! Each case resizes several times on one open pool and swap tier, as a
//! running daemon would: the first shrink and grow (the swap file is new);
//! the same again, [`STEADY_CYCLES`] times (the steady state, the median
//! cycle's shrink and grow); and a shrink followed by a grow after the pool
//! has given freed pages back to the host (it keeps them `DISCARD_DELAY`
//! first). Each case runs [`ROUNDS`] times (every time reported is the
//! median of the runs') with a warm reserve of [`WARM`] bytes
//! (`serve --warm-reserve`: the swap file is allocated that far ahead in the
//! background, and that much of the freed pool pages stays allocated), and
//! as often without one, where the first shrink and the grow after the give-back pay
//! for the host kernel allocating, zeroing and mapping 256 MiB.
//!
//! Writes `benches/results/vssd.md` and `vssd.svg` (hits and misses per
//! case).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pmvisor::block::{
    BlockRegion, BlockRegions, BlockSpec, Disposition, GuestVictims, ResizeReport,
};
use pmvisor::pool::{CreateOptions, Pool};
use pmvisor_agent::agent::Knowledge;
use pmvisor_agent::protocol::{BlockRange, Device, EvictRequest, Hint, HintKind, HINT_BLOCK_SIZE};
use pmvisor_blk::BlockDevice;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;
const SIZE: u64 = 1024 * MIB;
const BLOCKS: u64 = SIZE / BLOCK;
const SHRINK: u64 = 256 * MIB;
const MU: f64 = 20_000.0;
const SIGMA: f64 = 8_192.0;
/// Shrink and grow cycles of the steady state; the median is reported.
const STEADY_CYCLES: usize = 5;
/// Runs of each case (a new pool and swap file each); every time reported
/// is the median of theirs.
const ROUNDS: usize = 5;

/// Reads before the shrink (CLOCK learns from them) and after it.
const WARM_READS: u64 = 200_000;
const READS: u64 = 1_000_000;
const SERIAL: &str = "pmv-vssd";

#[derive(Clone, Copy, PartialEq)]
enum Chooser {
    Guest,
    Random,
    Clock,
}

impl Chooser {
    fn label(self) -> &'static str {
        match self {
            Chooser::Guest => "(a) guest-directed",
            Chooser::Random => "(b) host, uniform random",
            Chooser::Clock => "(c) host, CLOCK",
        }
    }
}

struct Outcome {
    chooser: Chooser,
    faults: u64,
    /// The steady state: the swap file and freed pages in use before.
    shrink: Duration,
    grow: Duration,
    /// The first resizes: a new swap file.
    first_shrink: Duration,
    first_grow: Duration,
    /// A grow after the pool gave the freed pages beyond the warm reserve
    /// back to the host.
    grow_given_back: Duration,
    /// The same two without a warm reserve (the host kernel allocates).
    cold_first_shrink: Duration,
    cold_grow_given_back: Duration,
    answer: Duration,
    guest_chosen: u64,
    host_chosen: u64,
    brought_back: u64,
}

/// Block numbers of the reader: Gaussian, clamped to the device.
struct Reader {
    rng: StdRng,
    normal: Normal<f64>,
    buf: Vec<u8>,
}

impl Reader {
    fn new(seed: u64) -> Reader {
        Reader {
            rng: StdRng::seed_from_u64(seed),
            normal: Normal::new(MU, SIGMA).unwrap(),
            buf: vec![0; BLOCK as usize],
        }
    }

    fn read(&mut self, disk: &BlockRegion, n: u64) {
        for _ in 0..n {
            let block = self.normal.sample(&mut self.rng).round().clamp(0.0, (BLOCKS - 1) as f64);
            disk.read_at(block as u64 * BLOCK, &mut self.buf).expect("read");
        }
    }
}

/// The guest's answer: the agent's own victim choice, told the hot set,
/// asked as the host asks (with `disk`'s resident blocks).
fn guest_victims(count: u64, disk: &BlockRegion) -> (Vec<GuestVictims>, Duration) {
    let mut knowledge = Knowledge::new();
    knowledge.add_device(&Device { serial: SERIAL.into(), size_bytes: SIZE });
    let hot_end = ((MU + 3.0 * SIGMA) as u64 * BLOCK).div_ceil(u64::from(HINT_BLOCK_SIZE));
    let hint = Hint {
        serial: SERIAL.into(),
        kind: HintKind::Hot,
        ranges: vec![BlockRange { start: 0, count: hot_end }],
    };
    knowledge.apply_hint(&hint).expect("hint");
    let request = EvictRequest {
        id: 1,
        serial: SERIAL.into(),
        count,
        block_size: BLOCK as u32,
        deadline_ms: 200,
        resident: disk.resident_runs(pmvisor_agent::protocol::MAX_RANGES).map(|runs| {
            runs.into_iter().map(|(start, count)| BlockRange { start, count }).collect()
        }),
    };
    let started = Instant::now();
    let answer = knowledge.answer_evict(&request, started);
    let took = started.elapsed();
    let answer = answer.expect("answer");
    let victims = answer
        .ranges
        .iter()
        .map(|r| GuestVictims {
            start: r.start,
            count: r.count,
            disposition: match r.disposition {
                pmvisor_agent::protocol::Disposition::Keep => Disposition::Keep,
                pmvisor_agent::protocol::Disposition::Drop => Disposition::Drop,
            },
        })
        .collect();
    (victims, took)
}

/// `count` distinct blocks drawn uniformly from the device (all resident).
fn random_victims(count: u64, rng: &mut StdRng) -> Vec<GuestVictims> {
    let mut chosen = std::collections::BTreeSet::new();
    while (chosen.len() as u64) < count {
        chosen.insert(rng.gen_range(0..BLOCKS));
    }
    chosen
        .into_iter()
        .map(|start| GuestVictims { start, count: 1, disposition: Disposition::Keep })
        .collect()
}

/// The victims of one shrink by `count` blocks.
fn victims(
    chooser: Chooser,
    count: u64,
    disk: &BlockRegion,
    rng: &mut StdRng,
) -> (Vec<GuestVictims>, Duration) {
    match chooser {
        Chooser::Guest => guest_victims(count, disk),
        Chooser::Random => (random_victims(count, rng), Duration::ZERO),
        Chooser::Clock => (Vec::new(), Duration::ZERO),
    }
}

/// Shrink `disk` by [`SHRINK`] with `victims`.
fn shrink(disk: &BlockRegion, victims: &[GuestVictims]) -> ResizeReport {
    let report = disk.resize_resident(SIZE - SHRINK, victims, &[]).expect("shrink");
    assert_eq!(report.rejected.total(), 0, "{:?}", report.rejected);
    report
}

/// Grow `disk` back, asking every swapped block back (as a guest hinting
/// its whole device hot would), so the grow moves as much data as the
/// shrink did.
fn grow(disk: &BlockRegion) -> ResizeReport {
    let report = disk.resize_resident(SIZE, &[], &[(0, BLOCKS)]).expect("grow");
    assert_eq!(disk.stats().swapped_blocks, 0, "the grow brought every block back");
    report
}

/// The memory kept allocated for resizes, as `serve --warm-reserve 256M`.
const WARM: u64 = 256 * MIB;

/// Wait until the swap file at `path` has `len` bytes (its warm reserve).
fn wait_for_swap_file(path: &Path, len: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(path).map_or(0, |m| m.len()) < len {
        assert!(Instant::now() < deadline, "the swap tier's warm reserve never came");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The last step is mapped in after the file has grown (about 15 ms).
    if len > 0 {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One case: shrink and grow cycles on one pool and swap tier, `warm`
/// bytes kept allocated for resizes.
fn run(dir: &Path, chooser: Chooser, warm: u64) -> Outcome {
    let pool_path = dir.join("bench-vssd.pool");
    let swap_path = dir.join("bench-vssd.swap");
    let _ = std::fs::remove_file(&pool_path);
    let _ = std::fs::remove_file(&swap_path);
    let pool = Arc::new(
        Pool::create(&pool_path, &CreateOptions { size: SIZE + 256 * MIB, ..Default::default() })
            .expect("pool"),
    );
    let regions = BlockRegions::open_file_swap(Arc::clone(&pool), &swap_path).expect("regions");
    regions.keep_warm(warm);
    let disk = regions
        .create("vssd", BlockSpec { size: SIZE, resident: SIZE, swap: true })
        .expect("region");
    let chunk: Vec<u8> = (0..MIB).map(|i| (i * 7 % 251) as u8).collect();
    for i in 0..SIZE / MIB {
        disk.write_at(i * MIB, &chunk, false).expect("write");
    }
    disk.flush().expect("flush");

    let mut reader = Reader::new(7);
    reader.read(&disk, WARM_READS);
    let count = SHRINK / BLOCK;
    let mut rng = StdRng::seed_from_u64(11);
    let (chosen, answer) = victims(chooser, count, &disk, &mut rng);
    // The reserve is allocated in the background from the region's
    // creation on; a daemon has long had it ready.
    wait_for_swap_file(&swap_path, warm);
    let first_shrink = shrink(&disk, &chosen);
    let before = disk.stats().faults;
    reader.read(&disk, READS);
    let faults = disk.stats().faults - before;
    let first_grow = grow(&disk);

    reader.read(&disk, WARM_READS);
    let mut steady_shrinks = Vec::new();
    let mut steady_grows = Vec::new();
    for cycle in 0..STEADY_CYCLES {
        if cycle > 0 {
            reader.read(&disk, WARM_READS);
        }
        steady_shrinks.push(shrink(&disk, &victims(chooser, count, &disk, &mut rng).0).elapsed);
        steady_grows.push(grow(&disk).elapsed);
    }
    steady_shrinks.sort_unstable();
    steady_grows.sort_unstable();

    reader.read(&disk, WARM_READS);
    shrink(&disk, &victims(chooser, count, &disk, &mut rng).0);
    pool.settle_discards();
    let grow_given_back = grow(&disk);

    drop(disk);
    drop(regions);
    let _ = std::fs::remove_file(&pool_path);
    let _ = std::fs::remove_file(&swap_path);
    Outcome {
        chooser,
        faults,
        shrink: steady_shrinks[STEADY_CYCLES / 2],
        grow: steady_grows[STEADY_CYCLES / 2],
        first_shrink: first_shrink.elapsed,
        first_grow: first_grow.elapsed,
        grow_given_back: grow_given_back.elapsed,
        cold_first_shrink: Duration::ZERO,
        cold_grow_given_back: Duration::ZERO,
        answer,
        guest_chosen: first_shrink.guest_kept + first_shrink.guest_dropped,
        host_chosen: first_shrink.host_chosen,
        brought_back: first_grow.brought_back,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("vssd: bench");
        return;
    }
    let dir = Path::new("/dev/shm");
    let outcomes: Vec<Outcome> = [Chooser::Guest, Chooser::Random, Chooser::Clock]
        .into_iter()
        .map(|c| {
            let cold = median(&(0..ROUNDS).map(|_| run(dir, c, 0)).collect::<Vec<_>>());
            let warm = median(&(0..ROUNDS).map(|_| run(dir, c, WARM)).collect::<Vec<_>>());
            Outcome {
                cold_first_shrink: cold.first_shrink,
                cold_grow_given_back: cold.grow_given_back,
                ..warm
            }
        })
        .collect();
    let table = markdown(&outcomes);
    print!("{table}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("vssd.md"), table).unwrap();
    std::fs::write(out.join("vssd.svg"), svg(&outcomes)).unwrap();
    eprintln!("vssd bench: wrote benches/results/vssd.md and vssd.svg");
}

/// `runs` of one case, each time the median of the runs' (the counts are
/// the same in every run: the reads and victims are seeded).
fn median(runs: &[Outcome]) -> Outcome {
    let mid = |time: fn(&Outcome) -> Duration| {
        let mut times: Vec<Duration> = runs.iter().map(time).collect();
        times.sort_unstable();
        times[times.len() / 2]
    };
    let first = &runs[0];
    Outcome {
        chooser: first.chooser,
        faults: first.faults,
        shrink: mid(|o| o.shrink),
        grow: mid(|o| o.grow),
        first_shrink: mid(|o| o.first_shrink),
        first_grow: mid(|o| o.first_grow),
        grow_given_back: mid(|o| o.grow_given_back),
        cold_first_shrink: mid(|o| o.cold_first_shrink),
        cold_grow_given_back: mid(|o| o.cold_grow_given_back),
        answer: mid(|o| o.answer),
        guest_chosen: first.guest_chosen,
        host_chosen: first.host_chosen,
        brought_back: first.brought_back,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn markdown(outcomes: &[Outcome]) -> String {
    let by = |c: Chooser| outcomes.iter().find(|o| o.chooser == c).unwrap();
    let (a, b, c) = (by(Chooser::Guest), by(Chooser::Random), by(Chooser::Clock));
    let mut s = String::new();
    writeln!(
        s,
        "# vSSD: guest-directed vs host victims\n\n\
         1 GiB block region, fully resident, pool and swap on /dev/shm; Gaussian reader \
         (mu = {MU}, sigma = {SIGMA}, 4 KiB blocks); {WARM_READS} reads, shrink by 256 MiB, \
         then {READS} reads; grow back by 256 MiB bringing every swapped block back. Resize \
         times are the host's work only, each the median of {ROUNDS} runs. Shrink and grow: the \
         median of {STEADY_CYCLES} cycles after \
         the first on the same pool and swap tier (the steady state of a running daemon); \
         first: the first cycle, with a new swap file; grow, pages given back: a grow after the \
         pool gave the freed pages back to the host (it keeps them {} s first). With a warm \
         reserve of {} MiB (`serve --warm-reserve`), the swap file is allocated that far ahead in \
         the background and that much of the freed pool pages is never given back; without \
         one, the host kernel allocates, zeroes and maps every new page during the resize.\n",
        pmvisor::pool::DISCARD_DELAY.as_secs(),
        WARM / MIB
    )
    .unwrap();
    writeln!(
        s,
        "| victims | chosen by guest / host | faults in {READS} reads | hit rate | shrink (ms) | \
         grow (ms) | grow / shrink | first shrink, new swap file (ms) | first grow (ms) | \
         grow, pages given back (ms) | first shrink, no reserve (ms) | grow, pages given back, \
         no reserve (ms) | brought back | agent answer (ms) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    .unwrap();
    for o in outcomes {
        // Random victims go to the region the way an agent's answer does;
        // the host drew them.
        let (guest, host) = match o.chooser {
            Chooser::Random => (0, o.guest_chosen + o.host_chosen),
            _ => (o.guest_chosen, o.host_chosen),
        };
        writeln!(
            s,
            "| {} | {} / {} | {} | {:.2}% | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} \
             | {:.1} | {} | {:.2} |",
            o.chooser.label(),
            guest,
            host,
            o.faults,
            100.0 * (READS - o.faults) as f64 / READS as f64,
            ms(o.shrink),
            ms(o.grow),
            o.grow.as_secs_f64() / o.shrink.as_secs_f64(),
            ms(o.first_shrink),
            ms(o.first_grow),
            ms(o.grow_given_back),
            ms(o.cold_first_shrink),
            ms(o.cold_grow_given_back),
            o.brought_back,
            ms(o.answer),
        )
        .unwrap();
    }
    let ratio = |x: u64, y: u64| if y == 0 { f64::NAN } else { x as f64 / y as f64 };
    writeln!(
        s,
        "\nTargets: (a) faults <= 10% of (b)'s: {:.2}% ({} vs {}); (a) <= (c): {} vs {}; \
         shrink and grow <= 50 ms, grow <= 1.2x shrink.",
        100.0 * ratio(a.faults, b.faults),
        a.faults,
        b.faults,
        a.faults,
        c.faults
    )
    .unwrap();
    s
}

/// Stacked bars: hits and misses of the 1,000,000 reads per case.
fn svg(outcomes: &[Outcome]) -> String {
    let (width, height, left, top, bar, gap) = (640.0, 300.0, 190.0, 40.0, 40.0, 30.0);
    let scale = (width - left - 40.0) / READS as f64;
    let mut out = String::new();
    writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    )
    .unwrap();
    writeln!(
        out,
        r#"<text x="10" y="20" font-size="14">vSSD: hits and misses in {READS} Gaussian reads after a 256 MiB shrink</text>"#
    )
    .unwrap();
    for (i, o) in outcomes.iter().enumerate() {
        let y = top + i as f64 * (bar + gap);
        let hits = (READS - o.faults) as f64 * scale;
        let misses = o.faults as f64 * scale;
        writeln!(
            out,
            r##"<text x="10" y="{}">{}</text><rect x="{left}" y="{y}" width="{hits:.1}" height="{bar}" fill="#4c9a2a"/><rect x="{:.1}" y="{y}" width="{:.1}" height="{bar}" fill="#c0392b"/><text x="{left}" y="{}">{} misses</text>"##,
            y + bar / 2.0 + 4.0,
            o.chooser.label(),
            left + hits,
            misses.max(1.0),
            y + bar + 14.0,
            o.faults
        )
        .unwrap();
    }
    let legend = top + 3.0 * (bar + gap);
    writeln!(
        out,
        r##"<rect x="{left}" y="{legend}" width="12" height="12" fill="#4c9a2a"/><text x="{}" y="{}">hit</text><rect x="{}" y="{legend}" width="12" height="12" fill="#c0392b"/><text x="{}" y="{}">miss (fault from swap)</text>"##,
        left + 16.0,
        legend + 10.0,
        left + 60.0,
        left + 76.0,
        legend + 10.0
    )
    .unwrap();
    out.push_str("</svg>\n");
    out
}
