//! fio's nbd engine against three NBD servers, each on a Unix socket and
//! backed by memory: pmvisor (an in-process `NbdServer` over a fully
//! resident block region, every request through the gate as in the daemon,
//! pool file on /dev/shm), nbdkit's memory plugin, and qemu-nbd serving a
//! raw file on /dev/shm. Writes `benches/results/nbd.md` and `nbd.svg`.
//!
//! Every device is filled first, so reads hit data rather than holes. Rows:
//! 4 KiB random read and write at queue depth 1 and 32, 1 MiB sequential
//! read and write (queue depth 8). Each row runs every server in turn for
//! `PMVISOR_BENCH_SECONDS` (default 5) seconds, `PMVISOR_BENCH_ROUNDS`
//! (default 5) times over, and reports each server's median round, so that
//! one unlucky scheduling of a 2-CPU machine does not decide a ratio.
//! `PMVISOR_BENCH_ONLY='QD1|sequential'` runs just the rows whose names
//! contain one of the phrases, `PMVISOR_BENCH_SERVERS=pmvisor,nbdkit` just
//! those servers; either prints the table without writing results.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pmvisor::block::{BlockRegions, BlockSpec};
use pmvisor::daemon::gated::GatedRegion;
use pmvisor::gate::Gate;
use pmvisor::pool::{CreateOptions, Pool};
use pmvisor_blk::nbd::NbdServer;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 512 * MIB;

/// One fio workload.
struct Row {
    name: &'static str,
    rw: &'static str,
    bs: &'static str,
    depth: u32,
    /// Report MiB/s rather than IOPS.
    bandwidth: bool,
}

const ROWS: &[Row] = &[
    Row { name: "4 KiB random read, QD1", rw: "randread", bs: "4k", depth: 1, bandwidth: false },
    Row { name: "4 KiB random read, QD32", rw: "randread", bs: "4k", depth: 32, bandwidth: false },
    Row { name: "4 KiB random write, QD1", rw: "randwrite", bs: "4k", depth: 1, bandwidth: false },
    Row {
        name: "4 KiB random write, QD32",
        rw: "randwrite",
        bs: "4k",
        depth: 32,
        bandwidth: false,
    },
    Row { name: "1 MiB sequential read", rw: "read", bs: "1m", depth: 8, bandwidth: true },
    Row { name: "1 MiB sequential write", rw: "write", bs: "1m", depth: 8, bandwidth: true },
];

/// What fio measured.
#[derive(Clone, Copy, Default)]
struct Figure {
    iops: f64,
    mib_s: f64,
    /// Mean completion latency, microseconds.
    lat_us: f64,
    /// fio's own CPU time (user + system), percent of one CPU: near 100
    /// the client, not the server, sets the pace.
    client_cpu: f64,
}

/// A peer server process, killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fio(uri: &str, rw: &str, bs: &str, depth: u32, seconds: Option<u64>) -> Figure {
    let mut args = vec![
        "--name=bench".to_string(),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        format!("--rw={rw}"),
        format!("--bs={bs}"),
        format!("--iodepth={depth}"),
        format!("--size={SIZE}"),
        "--randrepeat=0".into(),
        "--output-format=json".into(),
    ];
    if let Some(seconds) = seconds {
        args.extend([
            "--time_based".into(),
            format!("--runtime={seconds}"),
            "--ramp_time=1".into(),
        ]);
    }
    let output = Command::new("fio").args(&args).output().expect("run fio");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "fio {args:?}: {text} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&text[text.find('{').expect("JSON")..]).expect("JSON");
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    let side = if rw.contains("read") { &job["read"] } else { &job["write"] };
    Figure {
        iops: side["iops"].as_f64().unwrap_or(0.0),
        mib_s: side["bw_bytes"].as_f64().unwrap_or(0.0) / MIB as f64,
        lat_us: side["clat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1000.0,
        client_cpu: job["usr_cpu"].as_f64().unwrap_or(0.0) + job["sys_cpu"].as_f64().unwrap_or(0.0),
    }
}

fn tool_missing(tool: &str, package: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "nbd bench: {tool} is missing; install the Debian package {package} (scripts/setup)"
        );
    }
    !found
}

fn main() {
    if [("fio", "fio"), ("nbdkit", "nbdkit"), ("qemu-nbd", "qemu-utils")]
        .iter()
        .any(|(tool, package)| tool_missing(tool, package))
    {
        std::process::exit(1);
    }
    let seconds: u64 =
        std::env::var("PMVISOR_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir_in("/dev/shm").expect("a directory on /dev/shm");
    let sock = |name: &str| dir.path().join(format!("{name}.sock"));

    // pmvisor, in process.
    let pool = Arc::new(
        Pool::create(
            &dir.path().join("bench.pool"),
            &CreateOptions { size: SIZE + 64 * MIB, ..Default::default() },
        )
        .expect("pool"),
    );
    let regions =
        BlockRegions::open_file_swap(pool, &dir.path().join("bench.swap")).expect("block regions");
    let region = regions
        .create("bench", BlockSpec { size: SIZE, resident: SIZE, swap: false })
        .expect("region");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = NbdServer::new();
    server.add_export("bench", Arc::new(GatedRegion::new(region, Gate::new())), false).unwrap();
    let _listener = runtime.block_on(server.listen_unix(sock("pmvisor"))).expect("listen");

    // nbdkit's memory plugin and qemu-nbd on a raw file in /dev/shm.
    let nbdkit = Peer(
        Command::new("nbdkit")
            .args(["-f", "-U"])
            .arg(sock("nbdkit"))
            .args(["memory", &SIZE.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("nbdkit"),
    );
    let raw = dir.path().join("qemu.raw");
    std::fs::File::create(&raw).unwrap().set_len(SIZE).unwrap();
    let qemu = Peer(
        Command::new("qemu-nbd")
            .args(["-t", "--shared=0", "-f", "raw", "-k"])
            .arg(sock("qemu-nbd"))
            .arg(&raw)
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-nbd"),
    );
    let chosen: Option<Vec<String>> = std::env::var("PMVISOR_BENCH_SERVERS")
        .ok()
        .map(|names| names.split(',').map(str::to_owned).collect());
    let servers: Vec<(&str, String)> = vec![
        ("pmvisor", format!("nbd+unix:///bench?socket={}", sock("pmvisor").display())),
        ("nbdkit", format!("nbd+unix:///?socket={}", sock("nbdkit").display())),
        ("qemu-nbd", format!("nbd+unix:///?socket={}", sock("qemu-nbd").display())),
    ]
    .into_iter()
    .filter(|(name, _)| chosen.as_ref().is_none_or(|names| names.iter().any(|n| n == name)))
    .collect();
    for name in ["pmvisor", "nbdkit", "qemu-nbd"] {
        wait_for_socket(&sock(name));
    }
    for (name, uri) in &servers {
        eprintln!("nbd bench: filling {name}");
        fio(uri, "write", "1m", 8, None);
    }

    let only: Option<Vec<String>> = std::env::var("PMVISOR_BENCH_ONLY")
        .ok()
        .map(|words| words.split('|').map(|w| w.trim().to_lowercase()).collect());
    let rows: Vec<&Row> = ROWS
        .iter()
        .filter(|row| {
            only.as_ref().is_none_or(|words| {
                words.iter().any(|word| row.name.to_lowercase().contains(word.as_str()))
            })
        })
        .collect();
    let rounds: usize =
        std::env::var("PMVISOR_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut results: Vec<Vec<Figure>> = Vec::new();
    for row in &rows {
        let mut runs: Vec<Vec<Figure>> = vec![Vec::new(); servers.len()];
        for _ in 0..rounds.max(1) {
            for ((name, uri), runs) in servers.iter().zip(&mut runs) {
                let figure = fio(uri, row.rw, row.bs, row.depth, Some(seconds));
                eprintln!(
                    "nbd bench: {:<26} {name:<9} {:>10.0} IOPS {:>8.1} MiB/s {:>8.1} µs, fio {:.0}% CPU",
                    row.name, figure.iops, figure.mib_s, figure.lat_us, figure.client_cpu
                );
                runs.push(figure);
            }
        }
        results.push(runs.into_iter().map(|runs| median(row, runs)).collect());
    }
    drop((nbdkit, qemu));

    let names: Vec<&str> = servers.iter().map(|(n, _)| *n).collect();
    let table = markdown(&names, &rows, &results, seconds, rounds);
    println!("{table}");
    if only.is_some() || chosen.is_some() {
        return;
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("nbd.md"), &table).unwrap();
    std::fs::write(out.join("nbd.svg"), svg(&names, &rows, &results)).unwrap();
    eprintln!("nbd bench: wrote benches/results/nbd.md and nbd.svg");
}

/// The round with the median throughput.
fn median(row: &Row, mut runs: Vec<Figure>) -> Figure {
    runs.sort_by(|a, b| value(row, a).total_cmp(&value(row, b)));
    runs[runs.len() / 2]
}

fn value(row: &Row, figure: &Figure) -> f64 {
    if row.bandwidth {
        figure.mib_s
    } else {
        figure.iops
    }
}

fn markdown(
    names: &[&str],
    rows: &[&Row],
    results: &[Vec<Figure>],
    seconds: u64,
    rounds: usize,
) -> String {
    let mut md = String::new();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        md,
        "# NBD: pmvisor vs nbdkit (memory plugin) vs qemu-nbd (raw file on /dev/shm)\n"
    );
    let _ = writeln!(
        md,
        "fio {} with the nbd engine (libnbd) over Unix sockets, {seconds} s per run after 1 s \
         ramp, the servers taking turns, {rounds} rounds, each cell the median round; 512 MiB \
         devices filled before the run, one fio job per run, {cpus} CPUs shared with the \
         servers. pmvisor: a fully resident block region in a pool file on /dev/shm, served by \
         `NbdServer` in process (default settings: idle connections spin up to {} µs), every \
         request through the gate. Ratio: pmvisor / the best peer (above 1 is faster). \
         Latency: mean completion latency at queue depth 1. fio CPU: the client's own \
         CPU time (user + system) in percent of one CPU; near 100 the client, not the \
         server, sets the pace.\n",
        fio_version(),
        pmvisor_blk::nbd::DEFAULT_SPIN.as_micros()
    );
    let _ = writeln!(
        md,
        "| workload | unit | {} | ratio vs best peer | QD1 latency (µs) {} | fio CPU % {} |",
        names.join(" | "),
        names.join(" / "),
        names.join(" / ")
    );
    let _ = writeln!(md, "|---|---|{}---|---|---|", "---:|".repeat(names.len()));
    for (row, figures) in rows.iter().zip(results) {
        let values: Vec<f64> = figures.iter().map(|f| value(row, f)).collect();
        let best_peer = values.iter().skip(1).copied().fold(0.0, f64::max);
        let latency = if row.depth == 1 {
            figures.iter().map(|f| format!("{:.1}", f.lat_us)).collect::<Vec<_>>().join(" / ")
        } else {
            "-".to_string()
        };
        let client_cpu =
            figures.iter().map(|f| format!("{:.0}", f.client_cpu)).collect::<Vec<_>>().join(" / ");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2}× | {} | {} |",
            row.name,
            if row.bandwidth { "MiB/s" } else { "IOPS" },
            values.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" | "),
            values[0] / best_peer.max(f64::MIN_POSITIVE),
            latency,
            client_cpu
        );
    }
    md
}

fn fio_version() -> String {
    Command::new("fio")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Grouped bars, one group per workload, each bar relative to the best
/// server of its row (so IOPS and MiB/s rows share one scale).
fn svg(names: &[&str], rows: &[&Row], results: &[Vec<Figure>]) -> String {
    const COLOURS: [&str; 3] = ["#1f77b4", "#ff7f0e", "#2ca02c"];
    let (width, row_height, left) = (760.0, 64.0, 190.0);
    let height = 50.0 + row_height * rows.len() as f64 + 30.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<text x="10" y="20" font-size="14">NBD throughput relative to the fastest server per workload (fio nbd engine)</text>"#
    );
    for (i, name) in names.iter().enumerate() {
        let x = left + 150.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="30" width="12" height="12" fill="{}"/><text x="{}" y="41">{name}</text>"#,
            COLOURS[i % 3],
            x + 16.0
        );
    }
    let span = width - left - 80.0;
    for (r, (row, figures)) in rows.iter().zip(results).enumerate() {
        let y = 55.0 + row_height * r as f64;
        let _ = writeln!(out, r#"<text x="10" y="{}">{}</text>"#, y + 30.0, row.name);
        let values: Vec<f64> = figures.iter().map(|f| value(row, f)).collect();
        let best = values.iter().copied().fold(f64::MIN_POSITIVE, f64::max);
        for (i, v) in values.iter().enumerate() {
            let bar = span * v / best;
            let by = y + 4.0 + 18.0 * i as f64;
            let unit = if row.bandwidth { "MiB/s" } else { "IOPS" };
            let _ = writeln!(
                out,
                r#"<rect x="{left}" y="{by}" width="{bar:.1}" height="15" fill="{}"/><text x="{:.1}" y="{}">{v:.0} {unit}</text>"#,
                COLOURS[i % 3],
                left + bar + 4.0,
                by + 12.0
            );
        }
    }
    out.push_str("</svg>\n");
    out
}
