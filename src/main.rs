//! The `pmvisor` binary: the CLI and the daemon (`pmvisor serve`).
//!
//! Everything lives in the library (`pmvisor::cli`); this file parses the
//! command line and prints a failure as one `error: ...` line on stderr
//! with exit status 1 (clap exits 2 for usage errors on its own).
//!
//! Started as `mount.fuse.rvmfs` (the link `pmvisor install` makes), the
//! binary is mount(8)'s helper for `mount -t fuse.rvmfs` and fstab lines.

use std::process::ExitCode;

use clap::Parser;
use pmvisor::cli::fs::helper::HelperCall;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let helper = pmvisor::cli::fs::helper::HELPER_NAME;
    let cli = match args.first() {
        Some(argv0) if pmvisor::cli::fs::helper::is_helper(argv0) => {
            match pmvisor::cli::fs::helper::translate(&args) {
                Ok(HelperCall::Mount(args)) => pmvisor::cli::Cli::parse_from(args),
                Ok(HelperCall::Remount(remount)) => {
                    return match remount.run() {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(err) => {
                            eprintln!("{helper}: {err:#}");
                            ExitCode::FAILURE
                        }
                    };
                }
                Err(message) => {
                    eprintln!("{helper}: {message}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => pmvisor::cli::Cli::parse(),
    };
    match pmvisor::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
