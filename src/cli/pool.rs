//! `pmvisor pool ...`: create a pool, show its facts, check its invariants.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use super::output::{
    balance_run_line, balance_summary, balance_table, check_lines, pool_table, print_json, render,
    Spinner,
};
use super::route::{self, Route};
use super::size::{format_size, parse_size};
use super::{PoolChoice, Settings};
use crate::daemon::api::balance::{BalanceView, SetBalanceRequest};
use crate::daemon::api::pool::{CheckView, PoolView};
use crate::daemon::balancer::BalanceRun;
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
    /// Show or set how the daemon's balancer shrinks block regions when the
    /// pool runs short: watermarks and region weights
    Balance {
        /// Shrink regions when free pages fall under this share of the pool, e.g. 5%
        #[arg(long, value_parser = parse_percent)]
        low: Option<f64>,
        /// ... until free pages reach this share, e.g. 10%
        #[arg(long, value_parser = parse_percent)]
        high: Option<f64>,
        /// A block region's weight (1 to 10000, default 100): a region with twice
        /// the weight gives half as much per frame it holds; repeatable
        #[arg(long, value_name = "NAME=WEIGHT", value_parser = parse_weight_arg)]
        weight: Vec<(String, u64)>,
        /// Run a balancing pass now and show what it did
        #[arg(long)]
        now: bool,
    },
}

/// `value_parser` for `5%` or `0.05`.
fn parse_percent(text: &str) -> Result<f64, String> {
    let value = match text.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
        None => text.parse::<f64>(),
    };
    value.map_err(|_| format!("{text:?} is not a share of the pool; write it like 5% or 0.05"))
}

/// `value_parser` for `NAME=WEIGHT`.
fn parse_weight_arg(text: &str) -> Result<(String, u64), String> {
    let (name, weight) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=WEIGHT; write it like vm1=200"))?;
    Ok((name.to_string(), crate::block::balance::parse_weight(weight)?))
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
        PoolCommand::Balance { low, high, weight, now } => {
            balance(settings, low, high, weight, now)
        }
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

fn balance(
    settings: &Settings,
    low: Option<f64>,
    high: Option<f64>,
    weights: Vec<(String, u64)>,
    now: bool,
) -> anyhow::Result<()> {
    let Some((client, _)) = route::daemon_for(settings)? else {
        anyhow::bail!(
            "the balancer runs in the daemon, and none serves this pool; start it with \
             `pmvisor serve`"
        );
    };
    let mut view: BalanceView = if low.is_some() || high.is_some() || !weights.is_empty() {
        let request = SetBalanceRequest { low, high, weights: weights.into_iter().collect() };
        client.put("/v1/pool/balance", &request)?
    } else {
        client.get("/v1/pool/balance")?
    };
    if now {
        let _run: Option<BalanceRun> = client.post("/v1/pool/balance/run", &())?;
        view = client.get("/v1/pool/balance")?;
    }
    if settings.json {
        return print_json(&view);
    }
    println!("{}", balance_summary(&view));
    if view.regions.is_empty() {
        println!("No block regions.");
    } else {
        println!("{}", render(balance_table(&view)));
    }
    if let Some(run) = &view.last_run {
        println!("{}", balance_run_line(run));
    }
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
