//! `pmvisor region ...`: create, list, show, rename, resize and delete the
//! named regions of a pool, and show a block region's counters.
//!
//! For a block region `--size` is the virtual size its clients see and
//! `--resident` its resident quota of pool pages; `resize --resident`
//! changes the quota at runtime (a shrink evicts to the swap tier, asking
//! the region's guest agent which blocks first, when it has one).
//! `attach-agent`, `detach-agent` and `qemu-args` give a VM the region and
//! its agent (see [`crate::agent`]).

use clap::{ArgGroup, Subcommand, ValueEnum};

use super::output::{
    block_stats_table, print_json, region_table, regions_table, render, resize_lines, Spinner,
};
use super::pool::parse_size_arg;
use super::route::Route;
use super::size::format_size;
use super::Settings;
use crate::agent::{qemu_args, region_serial};
use crate::daemon::agents::AgentRecord;
use crate::daemon::api::agents::AttachAgentRequest;
use crate::daemon::api::regions::{CreateRegionRequest, RegionView, ResizeRegionRequest};
use crate::daemon::exports::ExportKind;
use crate::pool::{OpenMode, RegionKind};

/// Work on at least this many bytes shows a spinner.
const SLOW_SIZE: u64 = 1 << 30;

/// `pmvisor region` commands.
#[derive(Debug, Subcommand)]
pub enum RegionCommand {
    /// Create a region
    Create {
        /// A unique name
        name: String,
        /// Its size, e.g. 64M, 1.5G, 2T; for a block region, the virtual size clients see
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size_arg)]
        size: u64,
        /// What it is for
        #[arg(long, value_enum, default_value_t = KindArg::Block)]
        kind: KindArg,
        /// Block regions: the resident quota of pool memory [default: --size]
        #[arg(long, value_name = "SIZE", allow_hyphen_values = true, value_parser = parse_size_arg)]
        resident: Option<u64>,
        /// Block regions: evict blocks beyond the quota to the swap tier (else such writes fail with ENOSPC)
        #[arg(long)]
        swap: bool,
    },
    /// List every region
    List,
    /// Show one region
    Show {
        /// The region's name
        name: String,
    },
    /// Show a block region's occupancy and counters (resident, swapped, MRR, I/O, faults, evictions)
    Stats {
        /// The block region's name
        name: String,
    },
    /// Give a region a new name
    Rename {
        /// The region's name
        name: String,
        /// Its new name
        new_name: String,
    },
    /// Delete a region and free its pages
    Delete {
        /// The region's name
        name: String,
    },
    /// Grow or shrink a region: --size for fs and memory regions, --resident for block regions
    #[command(group(ArgGroup::new("amount").required(true).args(["size", "resident"])))]
    Resize {
        /// The region's name
        name: String,
        /// fs and memory regions: the new size, e.g. 128M, 2G
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size_arg)]
        size: Option<u64>,
        /// Block regions: the new resident quota, e.g. 512M
        #[arg(long, value_name = "SIZE", allow_hyphen_values = true, value_parser = parse_size_arg)]
        resident: Option<u64>,
        /// Block regions with an agent: how long to wait for its answer, e.g. 200ms, 1s [default: the agent's deadline]
        #[arg(long, value_name = "TIME", requires = "resident", value_parser = parse_deadline_arg)]
        deadline: Option<u64>,
    },
    /// Attach a guest agent to a block region: serial:PATH (QEMU chardev socket), unix:PATH or vsock:CID:PORT
    AttachAgent {
        /// The block region's name
        name: String,
        /// Where the agent is reached: serial:PATH (the daemon connects to QEMU's chardev socket), unix:PATH (the daemon listens) or vsock:CID:PORT (the daemon listens on PORT for guest CID)
        address: String,
        /// The disk serial the agent must list [default: pmv-NAME, as `region qemu-args` sets it]
        #[arg(long)]
        serial: Option<String>,
        /// How long a resize waits for the agent, e.g. 200ms, 1s [default: 200ms]
        #[arg(long, value_name = "TIME", value_parser = parse_deadline_arg)]
        deadline: Option<u64>,
    },
    /// Detach a block region's guest agent
    DetachAgent {
        /// The block region's name
        name: String,
    },
    /// Print the QEMU arguments that attach a block region (its NBD export, disk serial and agent port) to a VM
    QemuArgs {
        /// The block region's name
        name: String,
    },
}

/// Parse `200ms`, `1s`, `1.5s` or `200` (milliseconds) into milliseconds.
pub fn parse_deadline_arg(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let fail = || {
        format!("invalid time `{text}`; use milliseconds or seconds, such as 200ms, 200 or 1.5s")
    };
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1.0)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1000.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| fail())?;
    let ms = value * scale;
    if !ms.is_finite() || ms < 1.0 || ms.fract() != 0.0 {
        return Err(fail());
    }
    Ok(ms as u64)
}

/// Region kinds as the command line spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// Served as a block device
    Block,
    /// Holds an RvmFS filesystem
    Fs,
    /// One contiguous extent, e.g. VM RAM
    Memory,
}

impl From<KindArg> for RegionKind {
    fn from(kind: KindArg) -> RegionKind {
        match kind {
            KindArg::Block => RegionKind::Block,
            KindArg::Fs => RegionKind::Fs,
            KindArg::Memory => RegionKind::Memory,
        }
    }
}

/// Run one `region` command.
pub fn run(command: RegionCommand, settings: &Settings) -> anyhow::Result<()> {
    let mode = match command {
        RegionCommand::List
        | RegionCommand::Show { .. }
        | RegionCommand::Stats { .. }
        | RegionCommand::QemuArgs { .. } => OpenMode::ReadOnly,
        _ => OpenMode::ReadWrite,
    };
    let route = Route::choose(settings, mode)?;
    match command {
        RegionCommand::Create { name, size, kind, resident, swap } => {
            let request = CreateRegionRequest { name, kind: kind.into(), size, resident, swap };
            let region = {
                let slow = resident.unwrap_or(size) >= SLOW_SIZE;
                let _spinner = Spinner::start_if(slow, format!("creating region {}", request.name));
                route.create_region(&request)?
            };
            if settings.json {
                return print_json(&region);
            }
            println!("Created {}.", describe(&region));
        }
        RegionCommand::List => {
            let regions = route.regions()?;
            if settings.json {
                return print_json(&regions);
            }
            if regions.is_empty() {
                println!(
                    "No regions yet; create one with `pmvisor region create NAME --size SIZE`."
                );
            } else {
                println!("{}", render(regions_table(&regions)));
            }
        }
        RegionCommand::Show { name } => {
            let region = route.region(&name)?;
            if settings.json {
                return print_json(&region);
            }
            println!("{}", render(region_table(&region)));
        }
        RegionCommand::Stats { name } => {
            let stats = route.region_stats(&name)?;
            if settings.json {
                return print_json(&stats);
            }
            println!("{}", render(block_stats_table(&name, &stats)));
        }
        RegionCommand::Rename { name, new_name } => {
            let region = route.rename_region(&name, &new_name)?;
            if settings.json {
                return print_json(&region);
            }
            println!("Renamed region {name} to {}.", region.name);
        }
        RegionCommand::Delete { name } => {
            route.delete_region(&name)?;
            if settings.json {
                return print_json(&serde_json::json!({ "deleted": name }));
            }
            println!("Deleted region {name}.");
        }
        RegionCommand::Resize { name, size, resident, deadline } => {
            let request = ResizeRegionRequest { size, resident, deadline_ms: deadline };
            let resized = {
                let slow = size.or(resident).unwrap_or(0) >= SLOW_SIZE;
                let _spinner = Spinner::start_if(slow, format!("resizing region {name}"));
                route.resize_region(&name, &request)?
            };
            if settings.json {
                return print_json(&resized);
            }
            let region = &resized.region;
            match region.block {
                Some(block) => println!(
                    "Set the resident quota of block region {} to {}.",
                    region.name,
                    format_size(block.resident_quota)
                ),
                None => println!("Resized region {} to {}.", region.name, format_size(region.size)),
            }
            if let Some(report) = &resized.resize {
                for line in resize_lines(report) {
                    println!("{line}");
                }
            }
        }
        RegionCommand::AttachAgent { name, address, serial, deadline } => {
            let request = AttachAgentRequest { address, serial, deadline_ms: deadline };
            let agent = route.attach_agent(&name, &request)?;
            if settings.json {
                return print_json(&agent);
            }
            if agent.serving {
                println!(
                    "Attached the agent of block region {name} at {} (disk serial {}, deadline {} \
                     ms).",
                    agent.address, agent.serial, agent.deadline_ms
                );
            } else {
                println!(
                    "Recorded the agent of block region {name} at {} (disk serial {}, deadline {} \
                     ms); the daemon reaches it when it starts.",
                    agent.address, agent.serial, agent.deadline_ms
                );
            }
        }
        RegionCommand::DetachAgent { name } => {
            route.detach_agent(&name)?;
            if settings.json {
                return print_json(&serde_json::json!({ "detached": name }));
            }
            println!("Detached the agent of block region {name}.");
        }
        RegionCommand::QemuArgs { name } => {
            let region = route.region(&name)?;
            let args = region_qemu_args(&region)?;
            if settings.json {
                return print_json(&serde_json::json!({ "region": name, "args": args }));
            }
            let lines: Vec<String> =
                args.chunks(2).map(|pair| shell_words(pair).join(" ")).collect();
            println!("{}", lines.join(" \\\n"));
            if AgentRecord::from_attrs(&name, &region.attrs).is_none() {
                eprintln!(
                    "note: block region {name} has no agent; attach one with `pmvisor region \
                     attach-agent {name} serial:PATH` and run this again"
                );
            }
        }
    }
    Ok(())
}

/// The QEMU arguments of a block region exported over NBD.
fn region_qemu_args(region: &RegionView) -> anyhow::Result<Vec<String>> {
    let name = &region.name;
    if region.block.is_none() {
        anyhow::bail!("region {name} is not a block region; only block regions attach to VMs");
    }
    let nbd = match ExportKind::from_attrs(&region.attrs) {
        Some(Ok(ExportKind::Nbd(addr))) => addr,
        Some(Ok(ExportKind::Ublk { .. })) => anyhow::bail!(
            "block region {name} is exported as a ublk device, which QEMU opens as a host disk; \
             export it over NBD (`pmvisor export remove {name}`, then `pmvisor export add \
             {name} --nbd`) for these arguments"
        ),
        Some(Err(problem)) => {
            anyhow::bail!("the export record of region {name} is damaged: {problem}")
        }
        None => anyhow::bail!(
            "block region {name} is not exported; export it over NBD first with `pmvisor export \
             add {name} --nbd`"
        ),
    };
    let agent = AgentRecord::from_attrs(name, &region.attrs).transpose().map_err(|problem| {
        anyhow::anyhow!("the agent record of region {name} is damaged: {problem}")
    })?;
    let serial = agent.as_ref().map_or_else(|| region_serial(name), |a| a.serial.clone());
    Ok(qemu_args(name, &nbd, &serial, agent.as_ref().map(|a| &a.addr)))
}

/// Quote words for a POSIX shell where needed.
fn shell_words(words: &[String]) -> Vec<String> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_.,/=:+@%".contains(c);
    words
        .iter()
        .map(|w| {
            if !w.is_empty() && w.chars().all(safe) {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect()
}

/// `block region d: 64.0 MiB, resident quota 8.0 MiB, swap on`, or
/// `memory region ram: 4.0 MiB`.
fn describe(region: &RegionView) -> String {
    match region.block {
        Some(block) => format!(
            "block region {}: {}, resident quota {}, swap {}",
            region.name,
            format_size(block.size),
            format_size(block.resident_quota),
            if block.swap { "on" } else { "off" }
        ),
        None => {
            format!("{} region {}: {}", region.kind.name(), region.name, format_size(region.size))
        }
    }
}
