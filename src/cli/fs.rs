//! `pmvisor fs ...`: RvmFS filesystems in `fs` regions: create, mount,
//! unmount, list and check them; `pmvisor install` puts the
//! `mount.fuse.rvmfs` helper in place.
//!
//! With a daemon, the daemon serves every mount (and mounts them again when
//! it restarts). Without one, `fs mount` starts a detached server process
//! per filesystem (see [`detached`]); `mount -t fuse.rvmfs` and fstab lines
//! go through [`helper`] to the same code.

pub mod detached;
pub mod helper;
pub mod install;

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Subcommand;
use comfy_table::{presets, Table};

use super::client::{region_path, DaemonClient};
use super::output::{print_json, render};
use super::pool::parse_size_arg;
use super::route::daemon_for;
use super::size::format_size;
use super::Settings;
use crate::daemon::api::fs::{CreateFsRequest, FsCheckView, MountRequest, MountView};
use crate::daemon::api::regions::RegionView;
use crate::fs::{check_filesystem, create_filesystem};
use crate::pool::OpenMode;

/// `pmvisor fs` commands.
#[derive(Debug, Subcommand)]
pub enum FsCommand {
    /// Create an fs region holding an empty RvmFS
    Create {
        /// The region's name (the SOURCE in `mount -t fuse.rvmfs`)
        name: String,
        /// Its size, e.g. 256M, 4G
        #[arg(long, allow_hyphen_values = true, value_parser = parse_size_arg)]
        size: u64,
    },
    /// Mount a filesystem (served by the daemon, or by a detached server without one)
    Mount {
        /// The fs region
        name: String,
        /// An existing directory
        dir: PathBuf,
        /// Options: ro, commit=SECONDS (default 5), allow_other, default_permissions, sync_close
        #[arg(short = 'o', value_name = "OPTIONS", default_value = "")]
        options: String,
    },
    /// Unmount a filesystem (it commits first)
    #[command(alias = "unmount")]
    Umount {
        /// The region's name or its mount point
        what: String,
    },
    /// List the mounted filesystems
    List,
    /// Check a filesystem: RVM pages against their maps, and the tree
    Check {
        /// The fs region
        name: String,
    },
    /// Serve one filesystem in the foreground until it is unmounted
    #[command(hide = true)]
    Serve {
        name: String,
        dir: PathBuf,
        #[arg(short = 'o', default_value = "")]
        options: String,
    },
}

fn api_path(prefix: &str, name: &str, action: Option<&str>) -> String {
    region_path(name, action).replacen("/v1/regions/", prefix, 1)
}

/// Run one `fs` command.
pub fn run(command: FsCommand, settings: &Settings) -> anyhow::Result<()> {
    if let FsCommand::Serve { name, dir, options } = &command {
        return detached::serve(settings, name, dir, options);
    }
    let daemon = daemon_for(settings)?.map(|(client, _)| client);
    match command {
        FsCommand::Create { name, size } => {
            let region: RegionView = match &daemon {
                Some(client) => {
                    client.post("/v1/fs", &CreateFsRequest { name: name.clone(), size })?
                }
                None => {
                    let pool = detached::open_pool(settings, OpenMode::ReadWrite, &name)?;
                    create_filesystem(&pool, &name, size)
                        .map_err(|e| anyhow!(crate::daemon::api::fs::mount_sentence(&e)))?;
                    pool.region(&name)?.into()
                }
            };
            if settings.json {
                return print_json(&region);
            }
            println!(
                "Created fs region {name} ({}) with an empty RvmFS; mount it with `pmvisor fs \
                 mount {name} DIR`.",
                format_size(region.size)
            );
        }
        FsCommand::Mount { name, dir, options } => {
            let view = match &daemon {
                Some(client) => {
                    let mountpoint = detached::directory(&dir)?;
                    let request = MountRequest { region: name, mountpoint, options };
                    client.post::<_, MountView>("/v1/mounts", &request)?
                }
                None => detached::mount(settings, &name, &dir, &options)?,
            };
            if settings.json {
                return print_json(&view);
            }
            let by = match (&daemon, view.pid) {
                (Some(_), _) => "the daemon".to_string(),
                (None, Some(pid)) => format!("a server process (PID {pid})"),
                (None, None) => "a server process".to_string(),
            };
            println!(
                "Mounted region {} at {}, served by {by}.",
                view.region,
                view.mountpoint.display()
            );
        }
        FsCommand::Umount { what } => {
            let view = match &daemon {
                Some(client) => umount_through(client, &what)?,
                None => detached::umount(settings, &what)?,
            };
            if settings.json {
                return print_json(&view);
            }
            println!("Unmounted region {} from {}.", view.region, view.mountpoint.display());
        }
        FsCommand::List => {
            let mounts = match &daemon {
                Some(client) => client.get("/v1/mounts")?,
                None => detached::list(settings)?,
            };
            if settings.json {
                return print_json(&mounts);
            }
            if mounts.is_empty() {
                println!("No filesystems are mounted; mount one with `pmvisor fs mount NAME DIR`.");
            } else {
                println!("{}", render(mounts_table(&mounts)));
            }
        }
        FsCommand::Check { name } => {
            let view: FsCheckView = match &daemon {
                Some(client) => client.get(&api_path("/v1/fs/", &name, Some("check")))?,
                None => {
                    let pool = detached::open_pool(settings, OpenMode::ReadOnly, &name)?;
                    check_filesystem(&pool, &name)
                        .map_err(|e| anyhow!(crate::daemon::api::fs::mount_sentence(&e)))?
                        .into()
                }
            };
            if settings.json {
                print_json(&view)?;
            } else {
                for problem in view.rvm_problems.iter().chain(&view.fs_problems) {
                    println!("problem: {problem}");
                }
            }
            let problems = view.rvm_problems.len() + view.fs_problems.len();
            if problems > 0 {
                return Err(anyhow!(
                    "the filesystem in region {name} has {problems} problem(s); copy its files \
                     out and report the problems"
                ));
            }
            if !settings.json {
                println!(
                    "Filesystem {name} is clean: {} inodes, {} directory entries.",
                    view.inodes, view.entries
                );
            }
        }
        FsCommand::Serve { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// Unmount through the daemon, by region name or mount point.
fn umount_through(client: &DaemonClient, what: &str) -> anyhow::Result<MountView> {
    let mounts: Vec<MountView> = client.get("/v1/mounts")?;
    let canonical = std::fs::canonicalize(what).ok();
    let view = mounts
        .into_iter()
        .find(|m| m.region == what || Some(&m.mountpoint) == canonical.as_ref())
        .ok_or_else(|| {
            anyhow!("nothing is mounted as {what:?}; `pmvisor fs list` shows the mounts")
        })?;
    client.delete(&api_path("/v1/mounts/", &view.region, None))?;
    Ok(view)
}

fn mounts_table(mounts: &[MountView]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(vec!["REGION", "MOUNTPOINT", "OPTIONS", "SIZE", "USED", "PID"]);
    let size = |v: Option<u64>| v.map_or_else(|| "-".to_string(), format_size);
    for m in mounts {
        table.add_row(vec![
            m.region.clone(),
            m.mountpoint.display().to_string(),
            if m.options.is_empty() { "defaults".to_string() } else { m.options.clone() },
            size(m.size),
            size(m.used),
            m.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
        ]);
    }
    table
}
