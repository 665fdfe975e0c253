//! `pmvisor pool ...`: create a pool, show its facts, check its invariants.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use super::output::{check_lines, pool_table, print_json, render, Spinner};
use super::route::{self, Route};
use super::size::{format_size, parse_size};
use super::{PoolChoice, Settings};
use crate::daemon::api::pool::{CheckView, PoolView};
use crate::pool::{CreateOptions, OpenMode, Pool};

/// `pmvisor pool` commands.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a new pool (a sparse file unless PATH is a device)
    Create {
        /// Where to create it [default: --pool, or the default pool]
        path: Option<PathBuf>,
        /// Pool size, e.g. 4G, 512MiB, 1.5T [default: 4G]
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size_arg)]
        size: Option<u64>,
        /// Bytes reserved for metadata [default: chosen from the pool size]
        #[arg(long, value_name = "SIZE", allow_hyphen_values = true, value_parser = parse_size_arg)]
        metadata_size: Option<u64>,
        /// Format a device even if it already holds a pool (its regions are lost)
        #[arg(long)]
        force: bool,
    },
    /// Show the pool's size, usage and identity
    Info,
    /// Verify every invariant of the pool; exits 1 if problems remain
    Check {
        /// Fix what can be fixed (needs the pool closed: stop the daemon first)
        #[arg(long)]
        repair: bool,
    },
}

/// `value_parser` for size arguments.
pub fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|err| err.to_string())
}

/// Run one `pool` command.
pub fn run(command: PoolCommand, settings: &Settings) -> anyhow::Result<()> {
    match command {
        PoolCommand::Create { path, size, metadata_size, force } => {
            let path = path.unwrap_or_else(|| settings.pool.path().to_path_buf());
            let options = CreateOptions {
                size: size.unwrap_or(settings.default_pool_size),
                metadata_size,
                force,
            };
            create(settings, &path, &options)
        }
        PoolCommand::Info => info(settings),
        PoolCommand::Check { repair } => check(settings, repair),
    }
}

fn create(settings: &Settings, path: &Path, options: &CreateOptions) -> anyhow::Result<()> {
    if let PoolChoice::Default(default) = &settings.pool {
        if default == path {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("cannot create the state directory {}", dir.display())
                })?;
            }
        }
    }
    let pool = {
        let _spinner = Spinner::start(format!("creating pool {}", path.display()));
        Pool::create(path, options)?
    };
    let view = PoolView::from(pool.info());
    if settings.json {
        return print_json(&view);
    }
    println!(
        "Created pool {}: {}, {} for regions.",
        view.path.display(),
        format_size(view.size),
        format_size(view.data_pages.saturating_mul(view.page_size))
    );
    Ok(())
}

fn info(settings: &Settings) -> anyhow::Result<()> {
    let view = Route::choose(settings, OpenMode::ReadOnly)?.pool_info()?;
    if settings.json {
        return print_json(&view);
    }
    println!("{}", render(pool_table(&view)));
    Ok(())
}

fn check(settings: &Settings, repair: bool) -> anyhow::Result<()> {
    let (report, pool_path) = match route::daemon_for(settings)? {
        Some((_, health)) if repair => anyhow::bail!(
            "repair needs the pool closed, but the daemon (PID {}) has {} open; stop the daemon, \
             then run `pmvisor pool check --repair` again",
            health.pid,
            health.pool.display()
        ),
        Some((client, health)) => {
            let _spinner = Spinner::start(format!("checking pool {}", health.pool.display()));
            let pool_path = health.pool.clone();
            (Route::Daemon { client, health }.check()?, pool_path)
        }
        None => {
            let _spinner =
                Spinner::start(format!("checking pool {}", settings.pool.path().display()));
            (route::check_path(settings, repair)?, settings.pool.path().to_path_buf())
        }
    };
    if settings.json {
        print_json(&report)?;
    } else {
        println!("Pool {}:", pool_path.display());
        for line in check_lines(&report) {
            println!("{line}");
        }
    }
    verdict(&report, repair, &pool_path)
}

/// Problems left make the command fail (after a repair, the report lists
/// only what is still wrong).
fn verdict(report: &CheckView, repair: bool, pool_path: &Path) -> anyhow::Result<()> {
    let remaining = &report.problems;
    if remaining.is_empty() {
        return Ok(());
    }
    let count = match remaining.len() {
        1 => "1 problem remains".to_string(),
        n => format!("{n} problems remain"),
    };
    let advice = if !repair && remaining.iter().any(|p| p.repairable) {
        "run `pmvisor pool check --repair` (with the daemon stopped) to fix the repairable ones"
    } else {
        "repair cannot fix them; copy the regions' data elsewhere and recreate the pool"
    };
    anyhow::bail!("{count} in pool {}; {advice}", pool_path.display())
}
