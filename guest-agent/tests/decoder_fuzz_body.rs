//! The `decode` fuzz target's body (`check_decoder`) on stable Rust: over
//! a fixed corpus (every message kind, hostile frames, and the seed files
//! in `fuzz/corpus/decode/`), over random bytes and over mutated frames,
//! with the heap watched: decoding `n` bytes never holds more than a small
//! multiple of `n` (plus a constant), whatever the bytes claim.
//!
//! `PMVISOR_WRITE_CORPUS=DIR cargo test -p pmvisor-agent --test
//! decoder_fuzz_body` writes the fixed corpus to DIR as fuzz seeds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pmvisor_agent::protocol::{
    check_decoder, encode, BlockRange, Device, DeviceStats, Disposition, EvictAnswer, EvictRange,
    EvictRequest, GrowNotice, Hello, Hint, HintKind, HotRanges, Message, Stats, MAX_FRAME,
    MAX_RANGES,
};

/// Counts the bytes this thread holds on the heap, and their peak.
struct CountingAllocator;

thread_local! {
    static HELD: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn account(grow: usize, shrink: usize) {
    // `try_with`: the thread-locals may be gone while a thread exits.
    let _ = HELD.try_with(|held| {
        let now = held.get().saturating_add(grow).saturating_sub(shrink);
        held.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged and only adds bookkeeping in thread-locals that never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size(), 0);
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        account(layout.size(), 0);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(0, layout.size());
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with
        // `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Old and new blocks may both be live during the copy.
        account(new_size, 0);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        account(0, layout.size());
        new
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs the fuzz body on `input` and returns the peak of extra heap bytes
/// it held.
fn peak_heap_of_check(input: &[u8]) -> usize {
    let base = HELD.with(Cell::get);
    PEAK.with(|p| p.set(base));
    check_decoder(input);
    PEAK.with(Cell::get) - base
}

/// The bound: a decoded list element costs at most 48 bytes of heap per
/// byte of input (a `Device` of 32 bytes from 2 input bytes, while a
/// growing vector holds old and new buffers), and the round trip of the
/// check holds the message twice, plus the reserved prefix of a list and
/// of a stream body.
fn allowed_heap(input_len: usize) -> usize {
    3 * 48 * input_len + 256 * 1024
}

fn assert_bounded(input: &[u8]) {
    let peak = peak_heap_of_check(input);
    assert!(
        peak <= allowed_heap(input.len()),
        "decoding {} bytes held {peak} heap bytes: {:02x?}",
        input.len(),
        &input[..input.len().min(64)]
    );
}

fn frame_of(payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend(payload);
    frame
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// One frame of every message kind, and hostile frames.
fn fixed_corpus() -> Vec<(String, Vec<u8>)> {
    let range = |start, count| BlockRange { start, count };
    let messages = vec![
        Message::Hello(Hello {
            version: 1,
            agent: "0.1.0".into(),
            devices: vec![Device { serial: "region-a".into(), size_bytes: 1 << 30 }],
        }),
        Message::Welcome { version: 1 },
        Message::Refused { reason: "version".into() },
        Message::EvictRequest(EvictRequest {
            id: 7,
            serial: "region-a".into(),
            count: 65536,
            block_size: 4096,
            deadline_ms: 200,
            resident: Some(vec![range(0, 1000), range(5000, 3)]),
        }),
        Message::EvictAnswer(EvictAnswer {
            id: 7,
            serial: "region-a".into(),
            ranges: vec![
                EvictRange { start: 0, count: 10, disposition: Disposition::Drop },
                EvictRange { start: 100, count: 5, disposition: Disposition::Keep },
            ],
        }),
        Message::GrowNotice(GrowNotice {
            id: 8,
            serial: "region-a".into(),
            count: 4096,
            block_size: 4096,
        }),
        Message::HotRanges(HotRanges {
            id: 8,
            serial: "region-a".into(),
            ranges: vec![range(5, 5)],
        }),
        Message::StatsRequest,
        Message::Stats(Stats {
            devices: vec![DeviceStats {
                serial: "region-a".into(),
                size_bytes: 1 << 30,
                hot_blocks: 1,
                cold_blocks: 2,
                disposable_blocks: 3,
                given_away_blocks: 4,
                evict_requests_answered: 5,
                grow_notices_answered: 6,
                last_answer_micros: Some(7),
            }],
        }),
        Message::Ping { nonce: u64::MAX },
        Message::Pong { nonce: 0 },
        Message::Error { id: Some(3), message: "no such device".into() },
        Message::Hint(Hint {
            serial: "region-a".into(),
            kind: HintKind::Disposable,
            ranges: vec![range(0, 1024), range(4096, 16)],
        }),
        Message::HintAccepted { serial: "region-a".into(), blocks: 1040 },
    ];
    let mut corpus: Vec<(String, Vec<u8>)> = messages
        .iter()
        .map(|m| (format!("kind-{}", m.kind().to_lowercase()), encode(m).unwrap()))
        .collect();
    corpus.push(("empty".into(), vec![]));
    corpus.push(("oversized-length".into(), (MAX_FRAME + 1).to_le_bytes().to_vec()));
    corpus.push(("max-length-no-body".into(), MAX_FRAME.to_le_bytes().to_vec()));
    corpus.push(("unknown-kind".into(), frame_of(&[60])));
    corpus.push(("huge-tag".into(), frame_of(&[0xff, 0xff, 0xff, 0xff, 0x0f])));
    // An EvictAnswer (4) declaring MAX_RANGES ranges and carrying one.
    let mut lying = vec![4, 1, 0];
    varint(MAX_RANGES as u64, &mut lying);
    lying.extend([0, 1, 0]);
    corpus.push(("list-length-lie".into(), frame_of(&lying)));
    // A Hello (0) with a string declaring a gigabyte.
    let mut string_lie = vec![0, 1];
    varint(1 << 30, &mut string_lie);
    corpus.push(("string-length-lie".into(), frame_of(&string_lie)));
    // A Hello with MAX_DEVICES + 1 devices declared.
    let mut devices = vec![0, 1, 0];
    varint(1025, &mut devices);
    corpus.push(("device-count-over-bound".into(), frame_of(&devices)));
    corpus.push((
        "varint-overlong".into(),
        frame_of(&[9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
    ));
    corpus.push(("trailing".into(), frame_of(&[9, 5, 0, 0])));
    corpus
}

/// The seed files of the fuzz target, if the directory is there.
fn seed_files() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect()
}

/// xorshift64*: reproducible inputs without another dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn the_fuzz_body_holds_on_the_fixed_corpus_and_the_seed_files() {
    let corpus = fixed_corpus();
    if let Some(dir) = std::env::var_os("PMVISOR_WRITE_CORPUS") {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &corpus {
            std::fs::write(std::path::Path::new(&dir).join(name), bytes).unwrap();
        }
    }
    let seeds = seed_files();
    for (name, input) in corpus.iter().chain(&seeds) {
        let peak = peak_heap_of_check(input);
        assert!(peak <= allowed_heap(input.len()), "{name}: {peak} heap bytes for {}", input.len());
    }
}

#[test]
fn the_fuzz_body_holds_on_random_bytes() {
    let mut random = Random(0x5eed_1234_abcd_ef01);
    for _ in 0..20_000 {
        let len = random.below(300);
        let mut input: Vec<u8> = (0..len).map(|_| random.next() as u8).collect();
        // Half the inputs get a length prefix that matches, so the payload
        // decoder (not just the length check) sees them.
        if random.next() & 1 == 0 {
            input = frame_of(&input);
        }
        assert_bounded(&input);
    }
}

#[test]
fn the_fuzz_body_holds_on_mutated_frames() {
    let corpus = fixed_corpus();
    let mut random = Random(0x0dd_ba11_cafe_f00d);
    for _ in 0..20_000 {
        let (_, seed) = &corpus[random.below(corpus.len())];
        let mut input = seed.clone();
        match random.below(4) {
            // Flip bytes.
            0 | 1 if !input.is_empty() => {
                for _ in 0..=random.below(3) {
                    let i = random.below(input.len());
                    input[i] ^= random.next() as u8 | 1;
                }
            }
            // Cut.
            2 if !input.is_empty() => input.truncate(random.below(input.len())),
            // Splice in bytes and fix the length prefix.
            _ if input.len() >= 4 => {
                let at = 4 + random.below(input.len() - 3);
                let extra: Vec<u8> = (0..random.below(16)).map(|_| random.next() as u8).collect();
                input.splice(at..at, extra);
                let len = (input.len() - 4) as u32;
                input[..4].copy_from_slice(&len.to_le_bytes());
            }
            _ => {}
        }
        assert_bounded(&input);
    }
}

#[test]
fn the_heap_counter_sees_what_decoding_holds() {
    let (_, hello) = &fixed_corpus()[0];
    assert!(peak_heap_of_check(hello) > 0);
    // A declared list length is not trusted: the lie costs little.
    let (_, lie) = fixed_corpus().into_iter().find(|(n, _)| n == "list-length-lie").unwrap();
    let peak = peak_heap_of_check(&lie);
    assert!(peak < 64 * 1024, "{peak}");
}
