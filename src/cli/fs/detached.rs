//! RvmFS without a daemon: `pmvisor fs mount` starts a detached server
//! (`pmvisor fs serve NAME DIR -o OPTS`, in its own process group, its
//! stderr in `<state dir>/log/fs-NAME.log`) and returns once the mount is
//! live; `pmvisor fs umount` runs `fusermount3 -u` and waits for the server
//! to commit and exit. The server holds the pool, so its lock names it;
//! [`open_pool`] turns that into "region X is mounted at DIR, served by PID
//! N" by reading the holder's command line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::route;
use crate::cli::Settings;
use crate::daemon::api::fs::{mount_sentence, MountView};
use crate::fs::mountinfo::{rvmfs_mounts, rvmfs_on, MountEntry, RVMFS_TYPE};
use crate::fs::{FsMounts, ATTR_MOUNTPOINT, ATTR_OPTIONS};
use crate::pool::{OpenMode, Pool, PoolError, RegionKind};

/// How long `fs mount` waits for the server's mount to appear.
const MOUNT_DEADLINE: Duration = Duration::from_secs(30);
/// How long `fs umount` tries again while the mount is busy.
const BUSY_DEADLINE: Duration = Duration::from_secs(1);
/// How long `fs umount` waits for the server to commit and exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

/// The arguments after `fs serve` of a `pmvisor fs serve` process:
/// region, mount point, then `-o OPTIONS`.
fn serve_args(pid: i32) -> Option<Vec<String>> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> =
        cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let at = args.windows(2).position(|w| w[0] == "fs" && w[1] == "serve")?;
    Some(args[at + 2..].to_vec())
}

/// The region and mount point a `pmvisor fs serve` process serves, from
/// its command line.
fn served_by(pid: i32) -> Option<(String, PathBuf)> {
    let args = serve_args(pid)?;
    Some((args.first()?.clone(), PathBuf::from(args.get(1)?)))
}

/// The options a `pmvisor fs serve` process mounted with (`-o`).
fn served_options(pid: i32) -> Option<String> {
    let args = serve_args(pid)?;
    args.windows(2).find(|w| w[0] == "-o").map(|w| w[1].clone())
}

/// The PID of the `pmvisor fs serve` process serving `region` at `dir`.
fn find_server(region: &str, dir: &Path) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let (name, at) = served_by(pid)?;
        (name == region && std::fs::canonicalize(&at).unwrap_or(at) == dir).then_some(pid)
    })
}

/// Whether process `pid` serves a filesystem of the pool at `pool`.
fn serves_pool(pid: u32, pool: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).any(|w| {
        w[0] == b"--pool"
            && std::fs::canonicalize(String::from_utf8_lossy(w[1]).as_ref())
                .is_ok_and(|p| p == pool)
    })
}

fn pool_path(settings: &Settings) -> PathBuf {
    let path = settings.pool.path();
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether process `pid` is gone (or a zombie).
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

/// Open the pool directly; when a `pmvisor fs serve` holds it, say which
/// region it serves where.
pub fn open_pool(settings: &Settings, mode: OpenMode, region: &str) -> anyhow::Result<Pool> {
    if let Err(PoolError::LockedBy { pid, path }) = Pool::open(settings.pool.path(), mode) {
        if let Some((served, dir)) = served_by(pid) {
            if served == region {
                bail!(
                    "region {region:?} is already mounted at {}, served by PID {pid}; unmount \
                     it first with `pmvisor fs umount {region}`",
                    dir.display()
                );
            }
            bail!(
                "pool {} is in use by PID {pid}, which serves region {served:?} at {}; without \
                 a daemon one process serves one filesystem, so unmount it first or start \
                 `pmvisor serve` to serve several",
                path.display(),
                dir.display()
            );
        }
    }
    route::open_pool(settings, mode)
}

/// A directory that exists, canonical.
pub fn directory(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(dir)
        .ok()
        .filter(|d| d.is_dir())
        .ok_or_else(|| anyhow!("{} is not a directory; create it first (mkdir -p)", dir.display()))
}

/// Mount `region` at `dir` with a detached server; returns once it is live.
pub fn mount(
    settings: &Settings,
    region: &str,
    dir: &Path,
    options: &str,
) -> anyhow::Result<MountView> {
    let dir = directory(dir)?;
    if let Some(existing) = rvmfs_on(&dir)? {
        bail!(
            "{} already has a FUSE filesystem ({}) mounted on it; unmount it first with \
             `pmvisor fs umount {}`",
            dir.display(),
            existing.source,
            dir.display()
        );
    }
    rvmfs::MountOptions::parse(options).map_err(|err| {
        anyhow!("{err}; the options are ro, commit=SECONDS, allow_other, default_permissions and sync_close")
    })?;
    let pool_path = {
        let pool = open_pool(settings, OpenMode::ReadWrite, region)?;
        let info = pool.region(region)?;
        if info.kind != RegionKind::Fs {
            bail!(
                "region {region:?} is a {} region; only fs regions hold a filesystem (create one \
                 with `pmvisor fs create NAME --size SIZE`)",
                info.kind
            );
        }
        std::fs::canonicalize(pool.path()).unwrap_or_else(|_| pool.path().to_path_buf())
    };
    let log = log_file(region)?;
    let exe = std::env::current_exe().context("cannot tell where the pmvisor binary is")?;
    let mut command = Command::new(exe);
    command
        .arg("--pool")
        .arg(&pool_path)
        .args(["fs", "serve", region])
        .arg(&dir)
        .args(["-o", options])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(&log)
                .with_context(|| format!("cannot create the server log {}", log.display()))?,
        );
    if let Some(swap) = &settings.swap {
        command.arg("--swap-path").arg(swap);
    }
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut server = command.spawn().context("cannot start the filesystem server")?;
    let deadline = Instant::now() + MOUNT_DEADLINE;
    loop {
        if let Some(entry) = rvmfs_on(&dir)?.filter(|m| m.source == region) {
            let mut view = view_of(&entry);
            view.options = options.to_string();
            view.pid = Some(server.id());
            return Ok(view);
        }
        if let Some(status) = server.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let why = text
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("error: "))
                .map_or_else(|| format!("it exited with {status}"), str::to_string);
            bail!("{why}");
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            bail!(
                "the filesystem server did not mount region {region:?} within {MOUNT_DEADLINE:?}; \
                 see {}",
                log.display()
            );
        }
        std::thread::sleep(POLL);
    }
}

fn log_file(region: &str) -> anyhow::Result<PathBuf> {
    let dir = crate::paths::state_dir().join("log");
    std::fs::create_dir_all(&dir).with_context(|| {
        format!("cannot create {} for the server log (set PMVISOR_STATE_DIR)", dir.display())
    })?;
    let safe: String = region
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect();
    Ok(dir.join(format!("fs-{safe}.log")))
}

/// A mount as seen in `mountinfo`, with the server's PID, the options it
/// was mounted with (as the daemon lists them; `mountinfo`'s own flags
/// when no server is found) and its statfs.
pub fn view_of(entry: &MountEntry) -> MountView {
    let stat = rustix::fs::statvfs(&entry.mountpoint).ok();
    let server = find_server(&entry.source, &entry.mountpoint);
    MountView {
        region: entry.source.clone(),
        mountpoint: entry.mountpoint.clone(),
        options: server.and_then(served_options).unwrap_or_else(|| entry.options.clone()),
        size: stat.as_ref().map(|s| s.f_blocks * s.f_frsize),
        used: stat.map(|s| s.f_blocks.saturating_sub(s.f_bfree) * s.f_frsize),
        pid: server.and_then(|p| u32::try_from(p).ok()),
    }
}

/// The RvmFS mounts of the pool served by `pmvisor fs serve` processes.
pub fn list(settings: &Settings) -> anyhow::Result<Vec<MountView>> {
    let pool = pool_path(settings);
    let views = rvmfs_mounts()?.iter().map(view_of).collect::<Vec<_>>();
    Ok(views.into_iter().filter(|v| v.pid.is_some_and(|pid| serves_pool(pid, &pool))).collect())
}

/// Unmount by region name or directory; waits until the server has
/// committed and exited.
pub fn umount(settings: &Settings, what: &str) -> anyhow::Result<MountView> {
    let canonical = std::fs::canonicalize(what).ok();
    let pool = pool_path(settings);
    let ours = |m: &MountEntry| match find_server(&m.source, &m.mountpoint) {
        Some(pid) => u32::try_from(pid).is_ok_and(|pid| serves_pool(pid, &pool)),
        None => m.fstype == RVMFS_TYPE && Some(&m.mountpoint) == canonical.as_ref(),
    };
    let found: Vec<MountEntry> = rvmfs_mounts()?
        .into_iter()
        .filter(|m| m.source == what || Some(&m.mountpoint) == canonical.as_ref())
        .filter(ours)
        .collect();
    let entry = match found.as_slice() {
        [] => bail!("nothing is mounted as {what:?}; `pmvisor fs list` shows the mounts"),
        [one] => one.clone(),
        _ => bail!("region {what:?} is mounted more than once; unmount it by directory"),
    };
    let view = view_of(&entry);
    let busy_until = Instant::now() + BUSY_DEADLINE;
    let output = loop {
        let output = Command::new("fusermount3")
            .arg("-u")
            .arg(&entry.mountpoint)
            .output()
            .context("cannot run fusermount3; install fuse3")?;
        // A file closed a moment ago is held by its close event until the
        // server reads it (see rvmfs's close watcher); that passes.
        let busy = String::from_utf8_lossy(&output.stderr).contains("busy");
        if output.status.success() || !busy || Instant::now() > busy_until {
            break output;
        }
        std::thread::sleep(POLL);
    };
    if !output.status.success() {
        bail!(
            "cannot unmount {} ({}); close what is open in it (`fuser -m {}` lists the \
             processes) and try again",
            entry.mountpoint.display(),
            String::from_utf8_lossy(&output.stderr).trim(),
            entry.mountpoint.display()
        );
    }
    if let Some(pid) = view.pid.and_then(|p| i32::try_from(p).ok()) {
        let deadline = Instant::now() + EXIT_DEADLINE;
        while !exited(pid) {
            if Instant::now() > deadline {
                bail!(
                    "the server (PID {pid}) of region {:?} did not exit; see its log",
                    entry.source
                );
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(view)
}

/// `pmvisor fs serve`: mount and serve until the mount goes away or
/// SIGTERM/SIGINT, then commit and exit.
pub fn serve(settings: &Settings, region: &str, dir: &Path, options: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    let _entered = runtime.enter();
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let pool = Arc::new(open_pool(settings, OpenMode::ReadWrite, region)?);
    let mounts = FsMounts::new(Arc::clone(&pool));
    let info = mounts.mount(region, dir, options).map_err(|e| anyhow!(mount_sentence(&e)))?;
    tracing::info!(
        region,
        mountpoint = %info.mountpoint.display(),
        pid = std::process::id(),
        "serving the filesystem"
    );
    let why = runtime.block_on(async {
        loop {
            tokio::select! {
                _ = terminate.recv() => return "SIGTERM",
                _ = interrupt.recv() => return "SIGINT",
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    let mounted = rvmfs_on(&info.mountpoint)
                        .map(|m| m.is_some_and(|m| m.source == region))
                        .unwrap_or(true);
                    if !mounted {
                        return "the unmount";
                    }
                }
            }
        }
    });
    tracing::info!(region, "committing and stopping after {why}");
    // The filesystem commits even when the kernel unmount fails (it is
    // already gone after `fusermount3 -u`, or busy after a signal).
    if let Err(err) = mounts.unmount(region) {
        if why != "the unmount" {
            tracing::warn!(region, "{}; detaching the mount", mount_sentence(&err));
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&info.mountpoint).status();
        }
        for key in [ATTR_MOUNTPOINT, ATTR_OPTIONS] {
            pool.set_region_attr(region, key, None)?;
        }
    }
    Ok(())
}
