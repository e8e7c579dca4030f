//! Command-line definitions, and nothing else.
//!
//! These clap structs are the single source of `--help`, the man page and the shell
//! completions (`vmpilot generate ...`), so the three can never drift apart.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::HostBackend;
use vmpilot_common::units::{Duration, MemSize};

/// Where the config lives when neither `--config` nor `VMPILOT_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vmpilot/vmpilot.toml";

/// vmpilot — lend a batch-cluster node to a VM cloud for the length of a batch job.
///
/// Runs as an ordinary batch job (a "pilot"), switches the node it lands on into
/// VM-hosting mode, tells the coordinator, and gives the node back exactly as it found it
/// before the lease ends, when the job is cancelled or preempted, or when an admin says so.
#[derive(Parser, Debug)]
#[command(
    name = "vmpilot",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Config file (TOML; see docs/config.md) [default: /etc/vmpilot/vmpilot.toml].
    #[arg(long, global = true, env = "VMPILOT_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// State directory, overriding `state_dir` from the config.
    #[arg(long, global = true, env = "VMPILOT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands; one file each under `src/commands/`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the pilot: claim this node for a lease, host guests, give the node back.
    Run(RunArgs),
    /// Show what this node is doing: its mode and every lease on it.
    Status(StatusArgs),
    /// Validate the config and the environment without changing anything.
    CheckConfig,
    /// Finish every lease whose pilot is gone and restore the node.
    Recover(RecoverArgs),
    /// Emergency brake: stop every pilot and owned guest on this node and restore it.
    KillAll(KillAllArgs),
    /// Generate the man page or shell completions from these definitions.
    #[command(hide = true)]
    Generate(GenerateArgs),
    /// Drive the simulated host: add guests, inject faults, show its state (demos, tests).
    #[command(hide = true)]
    Simulated(SimulatedArgs),
}

/// Options of `vmpilot run`. Each overrides the matching config key for this lease only.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Memory to hand to guests: `512M`, `4G`, `1T`, or plain MiB. Under a batch system the
    /// default is the job's memory minus the per-guest overhead; otherwise required.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<MemSize>,
    /// CPUs to hand to guests [default: the job's CPUs, or 1].
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// The coordinator's slot id for this lease (letters, digits, `.`, `_`, `-`); generated if absent.
    #[arg(long, value_name = "ID")]
    pub lease_id: Option<String>,
    /// Length of the lease, e.g. `30s`, `2h`, `1h 30m`: required when not under a batch
    /// system, a cap on the job's walltime otherwise.
    #[arg(long, value_name = "DUR")]
    pub walltime: Option<Duration>,
    /// Time reserved for guests to stop before the deadline (overrides `[lease] grace`).
    #[arg(long, value_name = "DUR")]
    pub grace: Option<Duration>,
    /// Coordinator base URL (overrides `[coordinator] url`).
    #[arg(long, value_name = "URL")]
    pub coordinator: Option<String>,
    /// Host backend (overrides `[host] backend`).
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub host: Option<HostBackend>,
}

/// Options of `vmpilot status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print stable JSON (documented in docs/status.md) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `vmpilot recover`.
#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// Only leases of this batch job (what an epilog passes).
    #[arg(long, value_name = "JOB_ID")]
    pub job: Option<String>,
    /// Boot-time mode: every unfinished lease is dead, whatever its pid says.
    #[arg(long)]
    pub boot: bool,
}

/// How hard `kill-all` stops guests, after HTCondor's drain levels.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillLevel {
    /// ACPI shutdown, then destroy what is left after the lease's grace.
    Graceful,
    /// ACPI shutdown with a short timeout, then destroy.
    Quick,
    /// Destroy at once.
    Fast,
}

/// Options of `vmpilot kill-all`.
#[derive(Args, Debug)]
pub struct KillAllArgs {
    /// How hard to stop guests.
    #[arg(long, value_enum, default_value_t = KillLevel::Fast)]
    pub level: KillLevel,
    /// Same as `--level graceful`.
    #[arg(long, conflicts_with_all = ["quick", "fast"])]
    pub graceful: bool,
    /// Same as `--level quick`.
    #[arg(long, conflicts_with_all = ["graceful", "fast"])]
    pub quick: bool,
    /// Same as `--level fast` (the default): destroy guests at once.
    #[arg(long, conflicts_with_all = ["graceful", "quick"])]
    pub fast: bool,
    /// Do not ask for confirmation; required when stdin is not a terminal (pdsh, scripts).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Why the admin pulled the brake; sent to the coordinator with the `killed` events.
    #[arg(long, value_name = "TEXT", default_value = "admin kill-all")]
    pub reason: String,
    /// Cluster-wide: cancel every pilot job through the batch system (scancel / qdel) and
    /// wait for them to leave; each node's epilog then restores it.
    #[arg(long)]
    pub cluster: bool,
}

impl KillAllArgs {
    /// The level, from `--level` or its shorthand flags.
    pub fn effective_level(&self) -> KillLevel {
        if self.graceful {
            KillLevel::Graceful
        } else if self.quick {
            KillLevel::Quick
        } else if self.fast {
            KillLevel::Fast
        } else {
            self.level
        }
    }
}

/// What `vmpilot generate` writes.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// `man`, or a shell name for completions (bash, zsh, fish, elvish, powershell).
    pub what: String,
    /// Directory to write into; stdout when absent.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `vmpilot simulated ...`: the simulated hypervisor's control panel.
#[derive(Args, Debug)]
pub struct SimulatedArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: SimulatedAction,
}

/// Actions on the simulated host.
#[derive(Subcommand, Debug)]
pub enum SimulatedAction {
    /// Define and start a guest, as a coordinator would through libvirt.
    AddGuest {
        /// Guest name.
        #[arg(long)]
        name: String,
        /// Owning lease (the metadata a coordinator writes); none: an unowned guest.
        #[arg(long)]
        lease: Option<String>,
        /// Owning lease epoch.
        #[arg(long, default_value_t = 1)]
        epoch: u64,
        /// Guest memory.
        #[arg(long, default_value = "256M")]
        memory: MemSize,
        /// Guest vCPUs.
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// How long an ACPI shutdown takes.
        #[arg(long, default_value = "0s", conflicts_with = "ignore_shutdown")]
        shutdown_delay: Duration,
        /// The guest ignores ACPI shutdown (only destroy stops it).
        #[arg(long)]
        ignore_shutdown: bool,
    },
    /// Make a host operation fail or hang.
    Fault {
        /// Which operation.
        #[arg(long, value_enum)]
        op: crate::host::simulated::FaultOp,
        /// Fail or hang.
        #[arg(long, value_enum)]
        mode: crate::host::simulated::FaultMode,
        /// How many calls it affects.
        #[arg(long, default_value_t = 1)]
        times: u32,
        /// How long a hang lasts.
        #[arg(long, default_value = "10s")]
        hang: Duration,
    },
    /// Print the simulated host's state as JSON.
    Show,
}
