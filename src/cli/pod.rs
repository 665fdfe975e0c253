//! `pmvisor pod ...`: the power-outage sequence of a running daemon —
//! trigger it, cancel it (power came back), show its last report.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use comfy_table::Table;

use super::client::DaemonClient;
use super::output::{print_json, render};
use super::Settings;
use crate::pod::{CancelReport, PodReport, PodStatus};

/// The `pod` subcommands.
#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Run the power-outage sequence now: quiesce, save VMs, commit, flush,
    /// fence and make the pool read-only; prints each phase's time
    Trigger,
    /// Power came back: lift the fence and serve again, nothing lost
    Cancel,
    /// Show whether the pool is fenced and the last sequence's phases
    Status,
}

/// Run a `pod` subcommand against the daemon.
pub fn run(command: PodCommand, settings: &Settings) -> anyhow::Result<()> {
    let client = DaemonClient::new(&settings.socket)?;
    if client.probe().is_none() {
        bail!(
            "no pmvisor daemon answers on {}; the power-outage sequence runs inside `pmvisor \
             serve`, so start it (or pass --socket)",
            settings.socket.display()
        );
    }
    match command {
        PodCommand::Trigger => {
            let sent = std::time::SystemTime::now();
            let report: PodReport = client.post("/v1/pod/trigger", &())?;
            if settings.json {
                return print_json(&report);
            }
            // The daemon answers a trigger while fenced with the fence's report.
            if Some(report.triggered_unix_ns) < unix_ns(sent) {
                println!(
                    "The pool is already fenced by POD #{} from {}; this trigger changed \
                     nothing (`pmvisor pod cancel` lifts the fence).",
                    report.sequence, report.source
                );
            }
            println!("{}", report_text(&report));
        }
        PodCommand::Cancel => {
            let report: CancelReport = client.post("/v1/pod/cancel", &())?;
            if settings.json {
                return print_json(&report);
            }
            println!(
                "fence of POD #{} lifted in {}; serving again{}",
                report.sequence,
                micros(report.micros),
                if report.resumed.is_empty() {
                    String::new()
                } else {
                    format!(" (resumed {})", report.resumed.join(", "))
                }
            );
            for problem in &report.problems {
                println!("problem: {problem}");
            }
        }
        PodCommand::Status => {
            let status: PodStatus = client.get("/v1/pod")?;
            if settings.json {
                return print_json(&status);
            }
            println!("{}", status_text(&status));
        }
    }
    Ok(())
}

fn unix_ns(at: std::time::SystemTime) -> Option<u64> {
    let since = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_nanos()).ok()
}

fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{:.3} ms", us as f64 / 1000.0)
    }
}

/// A sequence as a person reads it: one line, then a table of phases.
pub fn report_text(report: &PodReport) -> String {
    let mut lines = vec![format!(
        "POD #{} from {}: {} in {} (budget {}){}",
        report.sequence,
        report.source,
        if report.fenced { "fenced" } else { "NOT fenced" },
        micros(report.total_us),
        micros(report.budget_us),
        if report.protected { ", pool read-only" } else { "" }
    )];
    let mut table = Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(vec!["PHASE", "TIME", "", "DETAIL"]);
    for phase in &report.phases {
        table.add_row(vec![
            phase.phase.name().to_string(),
            micros(phase.micros),
            if phase.overran { "OVER".into() } else { String::new() },
            phase.detail.clone(),
        ]);
    }
    lines.push(render(table));
    for p in &report.participants {
        lines.push(match (&p.saved_to, &p.error) {
            (Some(to), _) => format!("saved {} to {to} in {}", p.name, micros(p.micros)),
            (None, Some(e)) => format!("did not save {}: {e}", p.name),
            (None, None) => format!("did not save {}", p.name),
        });
    }
    if report.participants_left_out > 0 {
        lines.push(format!(
            "{} more participants are not in the fence record (no room; the daemon's log has them)",
            report.participants_left_out
        ));
    }
    for problem in &report.problems {
        lines.push(format!("problem: {problem}"));
    }
    lines.join("\n")
}

fn status_text(status: &PodStatus) -> String {
    let mut lines = vec![format!(
        "state: {}; budget {}; sources: {}; participants: {}",
        status.state,
        micros(status.budget_us),
        status.sources.join(", "),
        if status.participants.is_empty() { "none".into() } else { status.participants.join(", ") }
    )];
    if let Some(start) = &status.start {
        lines.push(match &start.fence {
            Some(f) if start.opened_from == "fence" => format!(
                "started from the fence of POD #{} ({}): no recovery work",
                f.sequence, f.source
            ),
            _ => "started from the pool's last commits".into(),
        });
    }
    match &status.last {
        Some(last) => lines.push(report_text(last)),
        None => lines.push("no power outage since the daemon started".into()),
    }
    if let Some(cancel) = &status.last_cancel {
        lines.push(format!("last cancel: POD #{} in {}", cancel.sequence, micros(cancel.micros)));
    }
    lines.join("\n")
}

/// Parse `--pod-budget`: `50ms`, `0.05s`, `500us`, or plain milliseconds.
pub fn parse_budget(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    seconds(text, 1e-3)
        .filter(|&v| v > 0.0)
        .map(Duration::from_secs_f64)
        .with_context(|| format!("POD budget {text:?} is not a positive time such as 50ms"))
}

/// A time with an optional unit (`s`, `ms`, `us`; `unit` seconds when it
/// has none), in seconds; `None` unless a finite number of at least 0.
pub(crate) fn seconds(text: &str, unit: f64) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        (text, unit)
    };
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_read_in_milliseconds_unless_told() {
        assert_eq!(parse_budget("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_budget("20").unwrap(), Duration::from_millis(20));
        assert_eq!(parse_budget("0.1s").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_budget("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(
            parse_budget("soon").unwrap_err().to_string(),
            "POD budget \"soon\" is not a positive time such as 50ms"
        );
    }
}
