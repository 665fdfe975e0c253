//! `pmvisor export ...`: serve block regions to clients (NBD, or ublk as
//! `/dev/ublkbN`), list and remove exports.
//!
//! Exports are served by the daemon: `export add` needs `pmvisor serve` to
//! run. An export is recorded in the pool and served again when the daemon
//! restarts; without a daemon, `export list` shows the recorded exports and
//! `export remove` drops a record.

use clap::{ArgGroup, Subcommand};

use super::output::{exports_table, print_json, render};
use super::route::Route;
use super::Settings;
use crate::daemon::api::exports::{AddExportRequest, ExportView, Transport};
use crate::pool::OpenMode;

/// `pmvisor export` commands.
#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Serve a block region: over NBD on a Unix socket (the default
    /// `<control socket dir>/nbd/NAME.sock`), `unix:PATH`, `tcp:PORT`
    /// (loopback) or `tcp:IP:PORT`; or as a ublk device
    #[command(group(ArgGroup::new("transport").required(true).args(["nbd", "ublk"])))]
    Add {
        /// The block region; clients use its name as the export name
        name: String,
        /// Serve over NBD, optionally at ADDRESS
        #[arg(long, value_name = "ADDRESS", num_args = 0..=1, default_missing_value = "")]
        nbd: Option<String>,
        /// Serve as a Linux ublk device
        #[arg(long)]
        ublk: bool,
        /// ublk: hardware queues
        #[arg(long, requires = "ublk")]
        queues: Option<u16>,
        /// ublk: requests in flight per queue
        #[arg(long, requires = "ublk")]
        depth: Option<u16>,
    },
    /// List the exports with their addresses (ublk: devices) and client URIs
    List,
    /// Stop serving a region (NBD clients are disconnected, a ublk device is
    /// stopped and deleted) and forget the export
    Remove {
        /// The exported region
        name: String,
    },
}

/// Run one `export` command.
pub fn run(command: ExportCommand, settings: &Settings) -> anyhow::Result<()> {
    let mode = match command {
        ExportCommand::List => OpenMode::ReadOnly,
        _ => OpenMode::ReadWrite,
    };
    let route = Route::choose(settings, mode)?;
    match command {
        ExportCommand::Add { name, nbd, ublk, queues, depth } => {
            let transport = if ublk { Transport::Ublk } else { Transport::Nbd };
            let address = nbd.filter(|a| !a.is_empty());
            let request = AddExportRequest { region: name, transport, address, queues, depth };
            let export = route.add_export(&request)?;
            if reachable_from_other_hosts(&export) {
                eprintln!(
                    "warning: export {} listens on {}, which other hosts can reach; NBD has no \
                     authentication, so firewall it or use a loopback address",
                    export.region,
                    export.address.as_deref().unwrap_or_default()
                );
            }
            if settings.json {
                return print_json(&export);
            }
            match &export.uri {
                Some(uri) => println!(
                    "Exported block region {} over NBD at {}; clients connect to {uri}",
                    export.region,
                    export.address.as_deref().unwrap_or_default()
                ),
                None => match &export.device {
                    Some(device) => {
                        println!("Exported block region {} as {device}.", export.region)
                    }
                    None => println!("Exported block region {}.", export.region),
                },
            }
        }
        ExportCommand::List => {
            let exports = route.exports()?;
            if settings.json {
                return print_json(&exports);
            }
            if exports.is_empty() {
                println!("No exports; add one with `pmvisor export add NAME --nbd`.");
            } else {
                println!("{}", render(exports_table(&exports)));
            }
        }
        ExportCommand::Remove { name } => {
            route.remove_export(&name)?;
            if settings.json {
                return print_json(&serde_json::json!({ "removed": name }));
            }
            println!("Removed the export of region {name}.");
        }
    }
    Ok(())
}

/// Whether an export listens on TCP on an address other hosts can reach.
/// Parse `--nbd-spin`: `200us`, `0.1ms`, or plain microseconds; `0`
/// never spins.
pub fn parse_spin(text: &str) -> anyhow::Result<std::time::Duration> {
    let text = text.trim();
    super::pod::seconds(text, 1e-6)
        .filter(|&v| v <= 0.1)
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| {
            anyhow::anyhow!("NBD spin {text:?} is not a time from 0 to 100ms such as 200us")
        })
}

fn reachable_from_other_hosts(export: &ExportView) -> bool {
    let Some(addr) = export.address.as_deref().and_then(|a| a.strip_prefix("tcp:")) else {
        return false;
    };
    addr.parse::<std::net::SocketAddr>().is_ok_and(|a| !a.ip().is_loopback())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn spins_read_in_microseconds_unless_told_and_zero_turns_spinning_off() {
        assert_eq!(parse_spin("200us").unwrap(), Duration::from_micros(200));
        assert_eq!(parse_spin("50").unwrap(), Duration::from_micros(50));
        assert_eq!(parse_spin("0.5ms").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_spin("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn a_bad_spin_says_what_a_spin_looks_like() {
        for bad in ["fast", "-1us", "2s", "1000ms"] {
            let err = parse_spin(bad).unwrap_err().to_string();
            assert!(err.contains("is not a time from 0 to 100ms such as 200us"), "{bad}: {err}");
        }
    }
}
