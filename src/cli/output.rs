//! What the CLI prints: tables for people, JSON for scripts, and a spinner on
//! stderr for work that takes more than a moment.
//!
//! JSON output is the control API's wire types (`PoolView`, `RegionView`,
//! `CheckView`, `BlockStatsView`, `ExportView`), so a script sees the same document whether the command went
//! through the daemon or opened the pool itself.

use std::io::IsTerminal;
use std::time::Duration;

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::size::format_size;
use crate::daemon::api::balance::BalanceView;
use crate::daemon::api::exports::ExportView;
use crate::daemon::api::pool::{CheckView, FenceView, PoolView};
use crate::daemon::api::regions::{BlockStatsView, RegionView, RejectedView, ResizeReportView};
use crate::daemon::balancer::BalanceRun;

/// Print `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A table as text: columns two spaces apart, no trailing blanks.
pub fn render(mut table: Table) -> String {
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table.lines().map(|line| line.trim_end().to_string()).collect::<Vec<_>>().join("\n")
}

fn plain_table() -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled);
    table
}

fn key_value_table(rows: Vec<(&str, String)>) -> Table {
    let mut table = plain_table();
    for (key, value) in rows {
        table.add_row(vec![format!("{key}:"), value]);
    }
    table
}

/// `pool info` for people.
pub fn pool_table(pool: &PoolView) -> Table {
    let used_pages = pool.data_pages.saturating_sub(pool.free_pages);
    key_value_table(vec![
        ("path", pool.path.display().to_string()),
        ("uuid", pool.uuid.clone()),
        ("media", pool.media.clone()),
        ("size", format_size(pool.size)),
        ("for regions", format_size(pool.data_pages.saturating_mul(pool.page_size))),
        (
            "used",
            format!(
                "{} ({})",
                format_size(used_pages.saturating_mul(pool.page_size)),
                percent(used_pages, pool.data_pages)
            ),
        ),
        ("free", format_size(pool.free_pages.saturating_mul(pool.page_size))),
        ("regions", pool.regions.to_string()),
        ("metadata", format_size(pool.metadata_size)),
        ("page size", format_size(pool.page_size)),
        ("format", format!("version {}", pool.format_version)),
        ("generation", pool.generation.to_string()),
        ("created", format_time(pool.created_unix)),
        ("fence", fence_line(pool.fence.as_ref())),
    ])
}

/// The pool's newest power-outage fence in words.
fn fence_line(fence: Option<&FenceView>) -> String {
    let Some(fence) = fence else { return "never fenced".to_string() };
    let at = format_time(fence.fenced_unix_ns / 1_000_000_000);
    match fence.state.as_str() {
        "fenced" => format!(
            "FENCED by power outage #{} at {at} (start `pmvisor serve` to resume)",
            fence.sequence
        ),
        "cancelled" => format!("none (outage #{} at {at} was cancelled)", fence.sequence),
        _ => format!("none (outage #{} at {at}, lifted at the next start)", fence.sequence),
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0%".to_string();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

/// `region list` for people. SIZE is what clients see (a block region's
/// virtual size); RESIDENT is a block region's resident quota.
pub fn regions_table(regions: &[RegionView]) -> Table {
    let mut table = plain_table();
    table.set_header(vec!["NAME", "KIND", "SIZE", "RESIDENT", "EXTENTS", "CREATED"]);
    for region in regions {
        let (size, resident) = match region.block {
            Some(block) => (block.size, format_size(block.resident_quota)),
            None => (region.size, "-".to_string()),
        };
        table.add_row(vec![
            region.name.clone(),
            kind_name(region),
            format_size(size),
            resident,
            region.extents.len().to_string(),
            format_time(region.created_unix),
        ]);
    }
    for index in [2, 3] {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// `region stats` for people.
pub fn block_stats_table(name: &str, stats: &BlockStatsView) -> Table {
    let blocks = |n: u64| format!("{n} blocks ({})", format_size(n.saturating_mul(4096)));
    let mut table = key_value_table(vec![
        ("region", name.to_string()),
        ("size", format_size(stats.size)),
        ("resident quota", format_size(stats.resident_quota)),
        ("frames taken", format_size(stats.allocated)),
        ("resident", blocks(stats.resident_blocks)),
        ("swapped", blocks(stats.swapped_blocks)),
        ("MRR", format!("{:.3}", stats.mrr)),
        ("reads", stats.reads.to_string()),
        ("writes", stats.writes.to_string()),
        (
            "faults",
            format!("{} ({:.1}/s over the last 10 s)", stats.faults, stats.faults_per_second),
        ),
        ("evictions", stats.evictions.to_string()),
        ("swap", if stats.swap { "on" } else { "off" }.to_string()),
    ]);
    if let Some(by) = &stats.evictions_by_chooser {
        table.add_row(vec![
            "evicted by:".to_string(),
            format!("guest {} kept + {} dropped, host {}", by.guest_keep, by.guest_drop, by.host),
        ]);
    }
    if let Some(rejected) = stats.rejected.as_ref().and_then(rejected_text) {
        table.add_row(vec!["rejected:".to_string(), rejected]);
    }
    if let Some(agent) = &stats.agent {
        let link = &agent.link;
        let state = match (&link.connected, &link.agent) {
            (true, Some(version)) => format!("connected ({version})"),
            (true, None) => "connected".to_string(),
            (false, _) => "not connected".to_string(),
        };
        table.add_row(vec!["agent:".to_string(), format!("{} at {}", state, link.address)]);
        table.add_row(vec!["agent serial:".to_string(), link.serial.clone()]);
        let mut answers = format!(
            "{} of {} requests ({} short, {} late)",
            link.answers, link.requests, link.short_answers, link.late_answers
        );
        if let Some(mean) = agent.mean_answer_micros {
            answers.push_str(&format!(", mean {}", micros(mean)));
        }
        answers.push_str(&format!(", deadline {} ms", agent.deadline_ms));
        table.add_row(vec!["agent answers:".to_string(), answers]);
        let failures: Vec<String> = link
            .failures
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        let failures = if failures.is_empty() { "none".to_string() } else { failures.join(", ") };
        table.add_row(vec!["agent failures:".to_string(), failures]);
        if link.refused > 0 {
            table.add_row(vec!["agents refused:".to_string(), link.refused.to_string()]);
        }
    }
    table
}

/// Blocks of answers rejected, as `3 not resident, 2 surplus`, or `None`.
fn rejected_text(r: &RejectedView) -> Option<String> {
    let parts: Vec<String> = [
        (r.out_of_range, "out of range"),
        (r.duplicate, "duplicate"),
        (r.not_resident, "not resident"),
        (r.surplus, "surplus"),
        (r.no_swap, "keep without swap"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// A time in microseconds for people: `850 us`, `4.2 ms`.
fn micros(us: u64) -> String {
    if us < 1000 {
        format!("{us} us")
    } else {
        format!("{:.1} ms", us as f64 / 1000.0)
    }
}

/// What a resize did, for people: who chose how many blocks, what was
/// rejected, how long the host and the agent took.
pub fn resize_lines(report: &ResizeReportView) -> Vec<String> {
    let mut lines = Vec::new();
    let freed = report.guest_kept + report.guest_dropped + report.host_chosen;
    if report.frames_after < report.frames_before || freed > 0 {
        lines.push(format!(
            "  freed {freed} blocks: guest kept {} (to swap), guest dropped {}, host chose {}",
            report.guest_kept, report.guest_dropped, report.host_chosen
        ));
    }
    if report.frames_after > report.frames_before || report.brought_back > 0 {
        lines.push(format!("  brought back {} hot blocks from swap", report.brought_back));
    }
    if let Some(rejected) = rejected_text(&report.rejected) {
        lines.push(format!("  rejected from the agent's answer: {rejected} blocks"));
    }
    match &report.agent {
        Some(agent) => {
            match (&agent.failure, &agent.detail) {
                (Some(_), Some(detail)) => lines
                    .push(format!("  agent: no usable answer ({detail}); the host chose instead")),
                _ => lines
                    .push(format!("  agent: offered {} of {} blocks", agent.offered, agent.asked)),
            }
            lines.push(format!(
                "  took {} (the agent's answer {} more)",
                micros(report.elapsed_micros),
                micros(agent.answer_micros)
            ));
        }
        None => lines.push(format!("  took {} (no agent asked)", micros(report.elapsed_micros))),
    }
    lines
}

/// `export list` for people.
pub fn exports_table(exports: &[ExportView]) -> Table {
    let mut table = plain_table();
    // ADDRESS is the listen address of NBD and the device of ublk.
    table.set_header(vec!["REGION", "TRANSPORT", "ADDRESS", "URI", "STATE"]);
    for export in exports {
        let transport = serde_json::to_value(export.transport)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        table.add_row(vec![
            export.region.clone(),
            transport,
            export.address.clone().or_else(|| export.device.clone()).unwrap_or_else(|| "-".into()),
            export.uri.clone().unwrap_or_else(|| "-".to_string()),
            if export.serving { "serving" } else { "not serving" }.to_string(),
        ]);
    }
    table
}

/// `region show` for people.
pub fn region_table(region: &RegionView) -> Table {
    let mut rows = vec![("name", region.name.clone()), ("kind", kind_name(region))];
    match region.block {
        Some(block) => {
            rows.push(("size", format!("{} ({} bytes)", format_size(block.size), block.size)));
            rows.push(("resident quota", format_size(block.resident_quota)));
            rows.push(("swap", if block.swap { "on" } else { "off" }.to_string()));
            rows.push(("pool space", format_size(region.size)));
        }
        None => {
            rows.push(("size", format!("{} ({} bytes)", format_size(region.size), region.size)))
        }
    }
    rows.push(("id", region.id.to_string()));
    rows.push(("created", format_time(region.created_unix)));
    if let Some(offset) = region.offset {
        rows.push(("pool offset", offset.to_string()));
    }
    let extents = region
        .extents
        .iter()
        .map(|e| format!("{}+{}", e.start, e.count))
        .collect::<Vec<_>>()
        .join(" ");
    rows.push(("extents", if extents.is_empty() { "none".to_string() } else { extents }));
    let mut table = key_value_table(rows);
    for (key, value) in &region.attrs {
        table.add_row(vec![format!("attr {key}:"), value.clone()]);
    }
    table
}

/// `pool check` for people: what repair did, then one line per problem
/// (after a repair, the problems still there).
pub fn check_lines(check: &CheckView) -> Vec<String> {
    let mut lines = vec![format!(
        "Checked {} region{}: {} pages owned, {} pages free.",
        check.regions,
        if check.regions == 1 { "" } else { "s" },
        check.pages_owned,
        check.pages_free
    )];
    for action in &check.repaired {
        lines.push(format!("repaired: {action}"));
    }
    for problem in &check.problems {
        lines.push(format!("problem: {}", problem.message));
    }
    if check.problems.is_empty() {
        lines.push("No problems found.".to_string());
    }
    lines
}

fn kind_name(region: &RegionView) -> String {
    serde_json::to_value(region.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `YYYY-MM-DD HH:MM:SS UTC` from seconds since the epoch.
pub fn format_time(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Howard Hinnant's `civil_from_days` for days since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A spinner on stderr while slow work runs; silent when stderr is not a
/// terminal. Cleared when dropped.
#[derive(Debug)]
pub struct Spinner(Option<ProgressBar>);

impl Spinner {
    /// Start spinning with `message`.
    pub fn start(message: impl Into<String>) -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(100));
        Spinner(Some(bar))
    }

    /// Spin only when `slow` is true.
    pub fn start_if(slow: bool, message: impl Into<String>) -> Spinner {
        if slow {
            Spinner::start(message)
        } else {
            Spinner(None)
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

/// `pool balance` for people: one row per block region.
pub fn balance_table(view: &BalanceView) -> Table {
    let pages = |n: u64| format_size(n.saturating_mul(4096));
    let mut table = plain_table();
    table.set_header(vec!["REGION", "WEIGHT", "HOLDS", "RESIDENT", "FLOOR", "SWAP"]);
    for region in &view.regions {
        table.add_row(vec![
            region.name.clone(),
            region.weight.to_string(),
            pages(region.frames),
            pages(region.resident),
            pages(region.floor),
            if region.swap { "on" } else { "off" }.to_string(),
        ]);
    }
    table
}

/// The first line of `pool balance`: the pool's free space and the
/// watermarks.
pub fn balance_summary(view: &BalanceView) -> String {
    let pages = |n: u64| format_size(n.saturating_mul(4096));
    format!(
        "Pool: {} free of {}; the balancer shrinks block regions under {:.1}% free, up to {:.1}%{}.",
        pages(view.free_pages),
        pages(view.data_pages),
        view.low * 100.0,
        view.high * 100.0,
        if view.wanted_pages > 0 {
            format!(" (short by {} now)", pages(view.wanted_pages))
        } else {
            String::new()
        }
    )
}

/// The last balancing pass in one line.
pub fn balance_run_line(run: &BalanceRun) -> String {
    let shrinks: Vec<String> = run
        .shrinks
        .iter()
        .map(|s| match &s.error {
            None => format!(
                "{} {} -> {} (guest chose {}, host {})",
                s.region,
                format_size(s.from_frames * 4096),
                format_size(s.to_frames * 4096),
                s.guest_chosen,
                s.host_chosen
            ),
            Some(err) => format!("{} failed: {err}", s.region),
        })
        .collect();
    format!(
        "Last pass: wanted {} free, freed {}: {}.",
        format_size(run.wanted * 4096),
        format_size(run.free_after.saturating_sub(run.free_before) * 4096),
        shrinks.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_printed_in_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
