//! The `pmvisor` command line: argument parsing, settings resolution
//! (flags > environment > config file > defaults) and dispatch to one module
//! per command group.
//!
//! Every command other than `serve` and `pool create` is routed (see
//! [`route`]): through the daemon's control API when a daemon answers for the
//! pool in question, otherwise by opening the pool directly, never both.
//! Errors come back as `anyhow` errors whose text is one sentence saying what
//! to do next; `main` prints it after `error: ` and exits with status 1.

pub mod client;
pub mod export;
pub mod fs;
pub mod output;
pub mod pod;
pub mod pool;
pub mod region;
pub mod route;
pub mod size;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgAction, Parser, Subcommand};

use crate::config::Config;
use crate::paths;

/// Elastic persistent memory: one pool, named regions, a control daemon.
#[derive(Debug, Parser)]
#[command(name = "pmvisor", version, about, propagate_version = true)]
pub struct Cli {
    /// The pool file or device [default: the embedded default pool in the
    /// state directory, created on demand]
    #[arg(long, global = true, env = "PMVISOR_POOL", value_name = "PATH")]
    pub pool: Option<PathBuf>,

    /// The daemon's control socket [default: /run/pmvisor/pmvisor.sock]
    #[arg(long, global = true, env = "PMVISOR_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// The swap tier file of block regions [default: beside the pool,
    /// `<pool>.swap`]
    #[arg(long, global = true, env = "PMVISOR_SWAP", value_name = "PATH")]
    pub swap_path: Option<PathBuf>,

    /// Print machine-readable JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,

    /// Config file [default: /etc/pmvisor/pmvisor.toml if it exists]
    #[arg(long, global = true, env = "PMVISOR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Say more (repeat for debug output)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// The command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: own the pool and serve the control API
    Serve {
        /// Also watch this power-outage source: sysfs:PATH (fires when the
        /// attribute reads 0, e.g. sysfs:/sys/class/power_supply/AC/online)
        /// or file:PATH (a file or FIFO); SIGPWR is always watched
        #[arg(long = "pod-source", value_name = "SOURCE")]
        pod_source: Vec<crate::pod::PodSource>,
        /// Time from a power-outage trigger to the fence (e.g. 50ms)
        #[arg(long = "pod-budget", value_name = "TIME", default_value = "50ms",
              value_parser = pod::parse_budget)]
        pod_budget: std::time::Duration,
        /// Longest spin of an idle NBD connection waiting for its next
        /// request before it sleeps (e.g. 200us; 0 never spins): lower
        /// latency at queue depth 1 for a little CPU
        #[arg(long = "nbd-spin", value_name = "TIME", default_value = "200us",
              value_parser = export::parse_spin)]
        nbd_spin: std::time::Duration,
        /// When the pool was fenced by a power outage, resume every VM that
        /// outage saved (in parallel, once exports and mounts are back), as
        /// `pmvisor vm resume NAME` does for one; without it saved VMs wait
        /// for `vm resume`
        #[arg(long = "resume-vms")]
        resume_vms: bool,
        /// Memory kept allocated for resizing block regions (e.g. 256M; 0
        /// gives every freed page back): freed pool pages up to it stay
        /// allocated, and the swap tier keeps that much free space
        /// allocated ahead of use, so that a shrink or grow of up to this
        /// size never waits for the host kernel [default: 1/16 of the
        /// pool, at most 256M]
        #[arg(long = "warm-reserve", value_name = "SIZE", value_parser = pool::parse_size_arg)]
        warm_reserve: Option<u64>,
    },
    /// The power-outage sequence (POD): trigger, cancel, status
    #[command(subcommand)]
    Pod(pod::PodCommand),
    /// Create, inspect and check pools
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// Create, list, show, rename, resize and delete regions; block region stats
    #[command(subcommand)]
    Region(region::RegionCommand),
    /// Serve block regions to clients over NBD (or ublk): add, list, remove
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// RvmFS filesystems in fs regions: create, mount, umount, list, check
    #[command(subcommand)]
    Fs(fs::FsCommand),
    /// Persistent VMs whose RAM lives in the pool: create, start, save, resume, stop, register, list
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Install the mount helper (/sbin/mount.fuse.rvmfs) so `mount -t fuse.rvmfs` and fstab work
    Install {
        /// Install under this directory instead of / (the link goes to PREFIX/sbin)
        #[arg(long, value_name = "DIR", default_value = "/")]
        prefix: PathBuf,
    },
}

/// Which pool a command is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolChoice {
    /// Named by a flag, the environment or the config: never created
    /// implicitly.
    Named(PathBuf),
    /// The embedded default pool: created on demand.
    Default(PathBuf),
}

impl PoolChoice {
    /// The pool's path.
    pub fn path(&self) -> &std::path::Path {
        match self {
            PoolChoice::Named(path) | PoolChoice::Default(path) => path,
        }
    }
}

/// Settings after flags, environment and config file are combined.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The pool this invocation is about.
    pub pool: PoolChoice,
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// Size of the embedded default pool when it is created.
    pub default_pool_size: u64,
    /// The swap tier file, when named by a flag, the environment or the
    /// config (else it lies beside the pool).
    pub swap: Option<PathBuf>,
    /// The log filter from the config file.
    pub log: Option<String>,
    /// Print JSON.
    pub json: bool,
    /// `-v` count.
    pub verbose: u8,
}

impl Settings {
    /// Combine flags (and their environment variables) with the config file.
    pub fn resolve(cli: &Cli) -> anyhow::Result<Settings> {
        let config = Config::load(non_empty(&cli.config).as_deref())?;
        let pool = match non_empty(&cli.pool).or(config.pool.clone()) {
            Some(path) => PoolChoice::Named(path),
            None => PoolChoice::Default(paths::default_pool()),
        };
        let socket =
            non_empty(&cli.socket).or(config.socket.clone()).unwrap_or_else(paths::default_socket);
        Ok(Settings {
            pool,
            socket,
            default_pool_size: config.default_pool_size.unwrap_or(paths::DEFAULT_POOL_SIZE),
            swap: non_empty(&cli.swap_path).or(config.swap),
            log: config.log,
            json: cli.json,
            verbose: cli.verbose,
        })
    }
}

impl Settings {
    /// The swap tier of the pool at `pool`: as named, else beside the pool.
    pub fn swap_path(&self, pool: &Path) -> PathBuf {
        self.swap.clone().unwrap_or_else(|| crate::block::default_swap_path(pool))
    }
}

/// Most of the pool `serve` keeps allocated for resizes by default.
const DEFAULT_WARM_RESERVE: u64 = 256 << 20;

/// An empty `--pool ""` or `PMVISOR_POOL=` means "not given".
fn non_empty(path: &Option<PathBuf>) -> Option<PathBuf> {
    path.clone().filter(|p| !p.as_os_str().is_empty())
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(&cli)?;
    match cli.command {
        Command::Serve { pod_source, pod_budget, nbd_spin, resume_vms, warm_reserve } => {
            init_logging(&settings, "info")?;
            let options = ServeFlags { pod_source, pod_budget, nbd_spin, resume_vms, warm_reserve };
            serve(&settings, options)?;
        }
        Command::Pod(command) => {
            init_logging(&settings, "warn")?;
            pod::run(command, &settings)?;
        }
        Command::Pool(command) => {
            init_logging(&settings, "warn")?;
            pool::run(command, &settings)?;
        }
        Command::Region(command) => {
            init_logging(&settings, "warn")?;
            region::run(command, &settings)?;
        }
        Command::Export(command) => {
            init_logging(&settings, "warn")?;
            export::run(command, &settings)?;
        }
        Command::Fs(command) => {
            let level =
                if matches!(command, fs::FsCommand::Serve { .. }) { "info" } else { "warn" };
            init_logging(&settings, level)?;
            fs::run(command, &settings)?;
        }
        Command::Vm(command) => {
            init_logging(&settings, "warn")?;
            vm::run(command, &settings)?;
        }
        Command::Install { prefix } => println!("{}", fs::install::install(&prefix)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// The flags of `serve`.
struct ServeFlags {
    pod_source: Vec<crate::pod::PodSource>,
    pod_budget: std::time::Duration,
    nbd_spin: std::time::Duration,
    resume_vms: bool,
    warm_reserve: Option<u64>,
}

fn serve(settings: &Settings, flags: ServeFlags) -> anyhow::Result<()> {
    let ServeFlags { pod_source: pod_sources, pod_budget, nbd_spin, resume_vms, warm_reserve } =
        flags;
    let pool = route::open_pool_to_serve(settings)?;
    let warm_reserve = warm_reserve.unwrap_or_else(|| {
        let data = pool.info().data_pages * crate::pool::PAGE_SIZE;
        (data / 16).min(DEFAULT_WARM_RESERVE)
    });
    let pool_path = std::fs::canonicalize(settings.pool.path()).with_context(|| {
        format!("cannot resolve the pool path {}", settings.pool.path().display())
    })?;
    let options = crate::daemon::ServeOptions {
        swap: settings.swap_path(&pool_path),
        pool_path,
        socket: settings.socket.clone(),
        pod_sources,
        pod_budget,
        nbd_spin,
        resume_vms,
        warm_reserve,
    };
    crate::daemon::serve(pool, options)
}

/// Logs go to stderr. The filter is `PMVISOR_LOG`, else `RUST_LOG`, else the
/// config's `log`, else `default`; each `-v` raises the default one step.
fn init_logging(settings: &Settings, default: &str) -> anyhow::Result<()> {
    let default = match (default, settings.verbose) {
        (level, 0) => level,
        ("warn", 1) => "info",
        _ => "debug",
    };
    let filter = ["PMVISOR_LOG", "RUST_LOG"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .or_else(|| settings.log.clone())
        .unwrap_or_else(|| default.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).map_err(|err| {
        anyhow::anyhow!(
            "the log filter `{filter}` is invalid ({err}); use a level such as info or debug"
        )
    })?;
    // A second initialisation (tests calling `run` twice) keeps the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    Ok(())
}
