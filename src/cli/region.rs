//! `pmvisor region ...`: create, list, show, rename, resize and delete the
//! named regions of a pool, and show a block region's counters.
//!
//! For a block region `--size` is the virtual size its clients see and
//! `--resident` its resident quota of pool pages; `resize --resident`
//! changes the quota at runtime (a shrink evicts to the swap tier).

use clap::{ArgGroup, Subcommand, ValueEnum};

use super::output::{block_stats_table, print_json, region_table, regions_table, render, Spinner};
use super::pool::parse_size_arg;
use super::route::Route;
use super::size::format_size;
use super::Settings;
use crate::daemon::api::regions::{CreateRegionRequest, RegionView, ResizeRegionRequest};
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
    },
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
        RegionCommand::List | RegionCommand::Show { .. } | RegionCommand::Stats { .. } => {
            OpenMode::ReadOnly
        }
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
        RegionCommand::Resize { name, size, resident } => {
            let request = ResizeRegionRequest { size, resident };
            let region = {
                let slow = size.or(resident).unwrap_or(0) >= SLOW_SIZE;
                let _spinner = Spinner::start_if(slow, format!("resizing region {name}"));
                route.resize_region(&name, &request)?
            };
            if settings.json {
                return print_json(&region);
            }
            match region.block {
                Some(block) => println!(
                    "Set the resident quota of block region {} to {}.",
                    region.name,
                    format_size(block.resident_quota)
                ),
                None => println!("Resized region {} to {}.", region.name, format_size(region.size)),
            }
        }
    }
    Ok(())
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
