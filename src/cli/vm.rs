//! `pmvisor vm ...`: persistent VMs whose RAM is a `memory` region of the
//! pool (see [`crate::vm`]).
//!
//! `create`, `list`, `show`, `qemu-args` and `delete` work with or without
//! a daemon (they read and write the pool's records); `start`, `stop`,
//! `save`, `resume` and `register` act on QEMU processes, which only the daemon
//! keeps, so they need `pmvisor serve`.

use clap::Subcommand;
use comfy_table::{presets, Table};

use super::client::DaemonClient;
use super::output::{print_json, render};
use super::pool::parse_size_arg;
use super::route::Route;
use super::size::format_size;
use super::Settings;
use crate::daemon::api::vms::{CreateVmRequest, QemuArgsView, RegisterVmRequest, VmView};
use crate::pool::OpenMode;
use crate::vm::{self, LaunchPlan, VmPaths, VmResumeReport};

/// `pmvisor vm` commands.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Register a VM: its RAM becomes a new memory region NAME.ram
    Create {
        /// A unique name
        name: String,
        /// RAM, e.g. 512M, 2G
        #[arg(long, value_parser = parse_size_arg)]
        memory: u64,
        /// vCPUs
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// A disk: a block region's name (served over NBD) or an image file path (raw or qcow2); repeat for more
        #[arg(long = "disk", value_name = "REGION|IMAGE")]
        disks: Vec<String>,
        /// Boot this kernel directly instead of the first disk
        #[arg(long, value_name = "FILE")]
        kernel: Option<std::path::PathBuf>,
        /// The kernel's initramfs
        #[arg(long, value_name = "FILE")]
        initrd: Option<std::path::PathBuf>,
        /// The kernel's command line
        #[arg(long, value_name = "CMDLINE", allow_hyphen_values = true)]
        append: Option<String>,
        /// QEMU accelerator: tcg or kvm (a saved VM resumes only on the same one)
        #[arg(long, default_value = "tcg")]
        accel: String,
        /// QEMU machine type and options (a saved VM resumes only on the same one)
        #[arg(long, default_value = vm::spec::DEFAULT_MACHINE)]
        machine: String,
        /// One more QEMU argument, appended as given; repeat for more
        #[arg(long = "qemu-arg", value_name = "ARG", allow_hyphen_values = true)]
        qemu_args: Vec<String>,
    },
    /// List the VMs and their state
    List,
    /// Show one VM
    Show {
        /// The VM's name
        name: String,
    },
    /// Launch the VM's QEMU (through the daemon, which keeps its QMP socket)
    Start {
        /// The VM's name
        name: String,
    },
    /// Shut the VM's QEMU down; for a saved VM, discard its saved state
    Stop {
        /// The VM's name
        name: String,
    },
    /// Pause the VM and save its device state, as a power outage would (resume goes on)
    Save {
        /// The VM's name
        name: String,
    },
    /// Let a paused VM run, or resume a saved VM in a new QEMU (no reboot)
    Resume {
        /// The VM's name
        name: String,
    },
    /// Adopt a QEMU started by someone else (e.g. libvirt) with `vm qemu-args`
    Register {
        /// The VM's name
        name: String,
        /// Its QMP socket
        #[arg(long, value_name = "PATH")]
        qmp: std::path::PathBuf,
    },
    /// Print the QEMU command line of the VM (RAM on the pool, its disks, QMP)
    QemuArgs {
        /// The VM's name
        name: String,
    },
    /// Forget a stopped VM and free its RAM
    Delete {
        /// The VM's name
        name: String,
    },
}

/// Run one `vm` command.
pub fn run(command: VmCommand, settings: &Settings) -> anyhow::Result<()> {
    let route = Route::choose(settings, OpenMode::ReadWrite)?;
    match command {
        VmCommand::Create {
            name,
            memory,
            cpus,
            disks,
            kernel,
            initrd,
            append,
            accel,
            machine,
            qemu_args,
        } => {
            let disks = disks.iter().map(|d| vm::spec::parse_disk(d)).collect::<Result<_, _>>()?;
            let absolute = |p: Option<std::path::PathBuf>| p.map(std::path::absolute).transpose();
            let request = CreateVmRequest {
                name,
                memory,
                cpus: Some(cpus),
                accel: Some(accel),
                machine: Some(machine),
                disks,
                kernel: absolute(kernel)?,
                initrd: absolute(initrd)?,
                append,
                qemu_args,
            };
            let view = match &route {
                Route::Daemon { client, .. } => client.post("/v1/vms", &request)?,
                Route::Direct(regions) => {
                    let record = vm::spec::create(regions.pool(), &request.name, &request.spec())?;
                    VmView::new(&record, None, None)
                }
            };
            if settings.json {
                return print_json(&view);
            }
            println!(
                "Created VM {}: {} of RAM in memory region {} (pool offset {}), {} vCPU(s), {} \
                 disk(s). Start it with `pmvisor vm start {}`.",
                view.name,
                format_size(view.memory),
                view.ram_region,
                view.ram_offset,
                view.cpus,
                view.disks.len(),
                view.name
            );
        }
        VmCommand::List => {
            let views = list(&route, settings)?;
            if settings.json {
                return print_json(&views);
            }
            println!("{}", render(vms_table(&views)));
        }
        VmCommand::Show { name } => {
            let view = show(&route, settings, &name)?;
            if settings.json {
                return print_json(&view);
            }
            println!("{}", render(vms_table(std::slice::from_ref(&view))));
            if let Some(state) = &view.saved_state {
                println!("saved state: {}", state.display());
            }
        }
        VmCommand::Start { name } => {
            let view: VmView = daemon(&route, "start")?.post(&vm_path(&name, "start"), &())?;
            if settings.json {
                return print_json(&view);
            }
            println!(
                "Started VM {name} (QEMU PID {}, QMP {}); its console goes to {}.",
                view.pid.map_or_else(|| "?".into(), |p| p.to_string()),
                view.qmp.as_ref().map_or_else(String::new, |p| p.display().to_string()),
                paths(settings).console(&name).display()
            );
        }
        VmCommand::Stop { name } => {
            let client = daemon(&route, "stop")?;
            let response = client.send(hyper::Method::POST, &vm_path(&name, "stop"), None)?;
            if !response.status.is_success() {
                let body: crate::daemon::api::ErrorBody = serde_json::from_slice(&response.body)?;
                anyhow::bail!(body.error);
            }
            if settings.json {
                return print_json(&serde_json::json!({ "stopped": name }));
            }
            println!("Stopped VM {name}.");
        }
        VmCommand::Save { name } => {
            let report: crate::vm::VmSaveReport =
                daemon(&route, "save")?.post(&vm_path(&name, "save"), &())?;
            if settings.json {
                return print_json(&report);
            }
            println!(
                "Saved VM {name} to {} in {:.1} ms ({} of device state; its RAM stays in the \
                 pool). Resume it with `pmvisor vm resume {name}`.",
                report.state_file.display(),
                report.total_us as f64 / 1000.0,
                format_size(report.state_bytes)
            );
        }
        VmCommand::Resume { name } => {
            let report: VmResumeReport =
                daemon(&route, "resume")?.post(&vm_path(&name, "resume"), &())?;
            if settings.json {
                return print_json(&report);
            }
            match report.how {
                vm::ResumeKind::Cont => println!("VM {name} runs again."),
                vm::ResumeKind::Restore => println!(
                    "Resumed VM {name} from its saved state in {:.1} ms (state loaded in {:.1} \
                     ms); it goes on where it stopped.",
                    report.total_us as f64 / 1000.0,
                    report.restore_us as f64 / 1000.0
                ),
            }
        }
        VmCommand::Register { name, qmp } => {
            let qmp = std::path::absolute(&qmp)?;
            let request = RegisterVmRequest { qmp };
            let view: VmView =
                daemon(&route, "register")?.post(&vm_path(&name, "register"), &request)?;
            if settings.json {
                return print_json(&view);
            }
            println!("Registered VM {name} ({}); a power outage now saves it.", view.state);
        }
        VmCommand::QemuArgs { name } => {
            let view = match &route {
                Route::Daemon { client, .. } => client.get(&vm_path(&name, "qemu-args"))?,
                Route::Direct(regions) => {
                    let plan = LaunchPlan::load(regions.pool(), &name, &paths(settings))?;
                    QemuArgsView {
                        vm: name,
                        program: "qemu-system-x86_64".into(),
                        args: plan.args(),
                    }
                }
            };
            if settings.json {
                return print_json(&view);
            }
            let mut lines = vec![view.program.clone()];
            let mut words = view.args.iter().peekable();
            while let Some(word) = words.next() {
                let mut line = quote(word);
                if word.starts_with('-') && words.peek().is_some_and(|w| !w.starts_with('-')) {
                    line.push(' ');
                    line.push_str(&quote(words.next().unwrap_or(word)));
                }
                lines.push(format!("  {line}"));
            }
            println!("{}", lines.join(" \\\n"));
        }
        VmCommand::Delete { name } => {
            match &route {
                Route::Daemon { client, .. } => client.delete(&vm_path(&name, ""))?,
                Route::Direct(regions) => {
                    vm::spec::delete(regions.pool(), &name)?;
                    let _ = std::fs::remove_file(paths(settings).state(&name));
                }
            }
            if settings.json {
                return print_json(&serde_json::json!({ "deleted": name }));
            }
            println!("Deleted VM {name} and freed its RAM.");
        }
    }
    Ok(())
}

/// The VMs' files as the daemon of `settings` would place them.
fn paths(settings: &Settings) -> VmPaths {
    VmPaths::for_daemon(&settings.socket, &crate::paths::state_dir())
}

fn list(route: &Route, settings: &Settings) -> anyhow::Result<Vec<VmView>> {
    match route {
        Route::Daemon { client, .. } => client.get("/v1/vms"),
        Route::Direct(regions) => {
            let mut views = Vec::new();
            for record in vm::spec::list(regions.pool()) {
                let record = record?;
                let state = paths(settings).state(&record.name);
                views.push(VmView::new(&record, None, state.exists().then_some(state)));
            }
            Ok(views)
        }
    }
}

fn show(route: &Route, settings: &Settings, name: &str) -> anyhow::Result<VmView> {
    match route {
        Route::Daemon { client, .. } => client.get(&vm_path(name, "")),
        Route::Direct(regions) => {
            let record = vm::spec::load(regions.pool(), name)?;
            let state = paths(settings).state(name);
            Ok(VmView::new(&record, None, state.exists().then_some(state)))
        }
    }
}

/// The daemon's client, or the sentence saying `what` needs one.
fn daemon<'a>(route: &'a Route, what: &str) -> anyhow::Result<&'a DaemonClient> {
    match route {
        Route::Daemon { client, .. } => Ok(client),
        Route::Direct(regions) => Err(anyhow::anyhow!(
            "`pmvisor vm {what}` needs the daemon, which keeps the VMs' QEMU processes, and none \
             is running for pool {}; start it with `pmvisor serve`, then run this command again",
            regions.pool().path().display()
        )),
    }
}

/// `/v1/vms/NAME[/ACTION]`, the name percent-encoded.
fn vm_path(name: &str, action: &str) -> String {
    let region = super::client::region_path(name, None);
    let mut path = region.replacen("/v1/regions/", "/v1/vms/", 1);
    if !action.is_empty() {
        path.push('/');
        path.push_str(action);
    }
    path
}

fn vms_table(views: &[VmView]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(vec!["NAME", "STATE", "MEMORY", "CPUS", "RAM REGION", "DISKS", "PID"]);
    for view in views {
        table.add_row(vec![
            view.name.clone(),
            view.state.clone(),
            format_size(view.memory),
            view.cpus.to_string(),
            view.ram_region.clone(),
            if view.disks.is_empty() { "-".into() } else { view.disks.join(",") },
            view.pid.map_or_else(|| "-".into(), |p| p.to_string()),
        ]);
    }
    table
}

/// Quote a word for a POSIX shell where needed.
fn quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_.,/=:+@%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_paths_escape_the_name() {
        assert_eq!(vm_path("web", "start"), "/v1/vms/web/start");
        assert_eq!(vm_path("a b", ""), "/v1/vms/a%20b");
    }
}
