//! The `pmvisor` binary: the CLI and the daemon (`pmvisor serve`).
//!
//! Everything lives in the library (`pmvisor::cli`); this file parses the
//! command line and prints a failure as one `error: ...` line on stderr
//! with exit status 1 (clap exits 2 for usage errors on its own).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pmvisor::cli::Cli::parse();
    match pmvisor::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
