//! `pmvisor region ...`: create, list, show, rename, resize and delete the
//! named regions of a pool.

use clap::{Subcommand, ValueEnum};

use super::output::{print_json, region_table, regions_table, render, Spinner};
use super::pool::parse_size_arg;
use super::route::Route;
use super::size::format_size;
use super::Settings;
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
        /// Its size, e.g. 64M, 1.5G, 2T
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size_arg)]
        size: u64,
        /// What it is for
        #[arg(long, value_enum, default_value_t = KindArg::Block)]
        kind: KindArg,
    },
    /// List every region
    List,
    /// Show one region
    Show {
        /// The region's name
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
    /// Grow or shrink a region
    Resize {
        /// The region's name
        name: String,
        /// The new size, e.g. 128M, 2G
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size_arg)]
        size: u64,
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
        RegionCommand::List | RegionCommand::Show { .. } => OpenMode::ReadOnly,
        _ => OpenMode::ReadWrite,
    };
    let route = Route::choose(settings, mode)?;
    match command {
        RegionCommand::Create { name, size, kind } => {
            let region = {
                let _spinner =
                    Spinner::start_if(size >= SLOW_SIZE, format!("creating region {name}"));
                route.create_region(&name, kind.into(), size)?
            };
            if settings.json {
                return print_json(&region);
            }
            println!(
                "Created {} region {}: {}.",
                kind.to_possible_value().map_or_else(String::new, |v| v.get_name().to_string()),
                region.name,
                format_size(region.size)
            );
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
        RegionCommand::Resize { name, size } => {
            let region = {
                let _spinner =
                    Spinner::start_if(size >= SLOW_SIZE, format!("resizing region {name}"));
                route.resize_region(&name, size)?
            };
            if settings.json {
                return print_json(&region);
            }
            println!("Resized region {} to {}.", region.name, format_size(region.size));
        }
    }
    Ok(())
}
