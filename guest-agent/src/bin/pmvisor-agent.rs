//! `pmvisor-agent`: the pmvisor guest agent (SPEC §6).
//!
//! - `pmvisor-agent run`: serve the host and the local hint socket;
//! - `pmvisor-agent hint --device SERIAL --cold|--hot|--disposable|--forget RANGES`;
//! - `pmvisor-agent stats`: what the running agent knows;
//! - `pmvisor-agent devices`: the devices this guest has, by serial.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, Parser, Subcommand};

use pmvisor_agent::agent::hint_socket::{request_stats, send_hint};
use pmvisor_agent::agent::range_syntax::parse_ranges;
use pmvisor_agent::agent::{self, Backoff, Discovery, Endpoint, RunConfig, DEFAULT_HINT_SOCKET};
use pmvisor_agent::protocol::{Device, Hint, HintKind, HINT_BLOCK_SIZE};

/// The pmvisor guest agent: tells the host which blocks of its elastic
/// devices to evict, from hints given by applications in this guest.
#[derive(Debug, Parser)]
#[command(name = "pmvisor-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the host and the local hint socket until stopped.
    Run(RunArgs),
    /// Give the running agent a hint about ranges of a device.
    Hint(HintArgs),
    /// Show what the running agent knows, per device.
    Stats {
        /// The agent's hint socket.
        #[arg(long, default_value = DEFAULT_HINT_SOCKET)]
        socket: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the block devices of this guest that have a serial.
    Devices {
        #[command(flatten)]
        discovery: DiscoveryArgs,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Where the host is: serial:PATH, vsock:CID:PORT, unix:PATH or
    /// tcp:HOST:PORT. Default: the virtio-serial port
    /// /dev/virtio-ports/org.pmvisor.agent.0 if present, else vsock:2:20557.
    #[arg(long, value_name = "ENDPOINT")]
    connect: Option<Endpoint>,
    /// The local socket applications send hints to.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_HINT_SOCKET)]
    hint_socket: PathBuf,
    /// Do not listen for hints.
    #[arg(long, conflicts_with = "hint_socket")]
    no_hint_socket: bool,
    /// Serve a device that discovery does not find, as SERIAL=SIZE (bytes,
    /// or with a K, M, G or T suffix). Repeatable.
    #[arg(long = "device", value_name = "SERIAL=SIZE", value_parser = parse_device)]
    devices: Vec<Device>,
    #[command(flatten)]
    discovery: DiscoveryArgs,
    /// Longest wait between two attempts to reach the host, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    max_retry_delay_ms: u64,
}

#[derive(Debug, Args)]
struct DiscoveryArgs {
    /// Where block devices are listed (each with `serial` and `size`).
    #[arg(long, value_name = "DIR", default_value = "/sys/block")]
    sys_block: PathBuf,
    /// Where udev links devices by id (`virtio-SERIAL`).
    #[arg(long, value_name = "DIR", default_value = "/dev/disk/by-id")]
    by_id: PathBuf,
}

impl DiscoveryArgs {
    fn discovery(&self) -> Discovery {
        Discovery { sys_block: self.sys_block.clone(), by_id: self.by_id.clone() }
    }
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("kind").required(true).args(["hot", "cold", "disposable", "forget"])))]
struct HintArgs {
    /// The device's serial.
    #[arg(long, value_name = "SERIAL")]
    device: String,
    /// Ranges in use and read often: evicted last, brought back on grow.
    #[arg(long, value_name = "RANGES")]
    hot: Option<String>,
    /// Ranges in use but rarely read: evicted (to swap) early.
    #[arg(long, value_name = "RANGES")]
    cold: Option<String>,
    /// Ranges whose data is no longer needed: evicted first and dropped
    /// (later reads return zeros).
    #[arg(long, value_name = "RANGES")]
    disposable: Option<String>,
    /// Forget earlier hints for these ranges.
    #[arg(long, value_name = "RANGES")]
    forget: Option<String>,
    /// The agent's hint socket.
    #[arg(long, default_value = DEFAULT_HINT_SOCKET)]
    socket: PathBuf,
}

impl HintArgs {
    fn kind_and_ranges(&self) -> (HintKind, &str) {
        let pairs = [
            (HintKind::Hot, &self.hot),
            (HintKind::Cold, &self.cold),
            (HintKind::Disposable, &self.disposable),
            (HintKind::Forget, &self.forget),
        ];
        pairs
            .into_iter()
            .find_map(|(kind, ranges)| ranges.as_deref().map(|r| (kind, r)))
            .unwrap_or((HintKind::Forget, ""))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pmvisor-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run(args),
        Command::Hint(args) => hint(&args),
        Command::Stats { socket, json } => stats(&socket, json),
        Command::Devices { discovery } => {
            for device in discovery.discovery().discover() {
                println!("{}\t{}", device.serial, device.size_bytes);
            }
            Ok(())
        }
    }
}

/// The agent's nice value. Evict requests come with deadlines, and they
/// come when the host is short of memory, often while the guest's own
/// work keeps its CPUs busy: a late answer is thrown away and the host
/// chooses instead.
const AGENT_NICE: i32 = -10;

fn run(args: RunArgs) -> Result<()> {
    init_logging();
    // Before the runtime starts, so that its threads inherit it.
    if let Err(err) = rustix::process::setpriority_process(None, AGENT_NICE) {
        tracing::info!("running at normal priority ({err}); answers may miss their deadlines when the guest is busy");
    }
    let config = RunConfig {
        endpoint: args.connect.unwrap_or(Endpoint::Auto),
        hint_socket: (!args.no_hint_socket).then_some(args.hint_socket),
        discovery: args.discovery.discovery(),
        declared: args.devices,
        backoff: Backoff {
            max: std::time::Duration::from_millis(args.max_retry_delay_ms.max(1)),
            ..Backoff::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot watch SIGTERM")?;
        tokio::select! {
            result = agent::run(config) => result.context("cannot start the agent")?,
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, stopping"),
            _ = terminate.recv() => tracing::info!("terminated, stopping"),
        }
        Ok(())
    })
}

fn hint(args: &HintArgs) -> Result<()> {
    let (kind, text) = args.kind_and_ranges();
    let ranges = parse_ranges(text).context("bad RANGES")?;
    let hint = Hint { serial: args.device.clone(), kind, ranges };
    let blocks = send_hint(&args.socket, &hint)
        .context("the hint was not applied (is `pmvisor-agent run` running?)")?;
    let what = match kind {
        HintKind::Hot => "hot",
        HintKind::Cold => "cold",
        HintKind::Disposable => "disposable",
        HintKind::Forget => "unhinted",
    };
    println!(
        "{} blocks of {} KiB on {} are now {what}",
        blocks,
        HINT_BLOCK_SIZE / 1024,
        args.device
    );
    Ok(())
}

fn stats(socket: &std::path::Path, json: bool) -> Result<()> {
    let stats = request_stats(socket)
        .context("cannot read the agent's stats (is `pmvisor-agent run` running?)")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats).context("cannot print JSON")?);
        return Ok(());
    }
    println!(
        "{:<20} {:>14} {:>10} {:>10} {:>10} {:>10} {:>7} {:>6} {:>10}",
        "SERIAL", "SIZE", "HOT", "COLD", "DISPOSABLE", "GIVEN", "EVICTS", "GROWS", "LAST(us)"
    );
    for d in &stats.devices {
        println!(
            "{:<20} {:>14} {:>10} {:>10} {:>10} {:>10} {:>7} {:>6} {:>10}",
            d.serial,
            d.size_bytes,
            d.hot_blocks,
            d.cold_blocks,
            d.disposable_blocks,
            d.given_away_blocks,
            d.evict_requests_answered,
            d.grow_notices_answered,
            d.last_answer_micros.map_or("-".to_owned(), |m| m.to_string()),
        );
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PMVISOR_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// `SERIAL=SIZE`, SIZE in bytes or with a K, M, G or T suffix (powers of 1024).
fn parse_device(text: &str) -> Result<Device> {
    let Some((serial, size)) = text.split_once('=') else {
        bail!("{text:?} is not SERIAL=SIZE");
    };
    if serial.is_empty() {
        bail!("{text:?} has an empty serial");
    }
    let size = size.trim();
    let (digits, shift) = match size.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => bail!("{size:?} has an unknown size suffix (use K, M, G or T)"),
            };
            (&size[..i], shift)
        }
        _ => (size, 0),
    };
    let size_bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n > 0)
        .with_context(|| format!("{size:?} is not a size (write e.g. 1073741824 or 1G)"))?;
    Ok(Device { serial: serial.to_owned(), size_bytes })
}
