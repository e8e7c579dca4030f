//! `vmpilot kill-all`: the emergency brake. Checks root, asks (unless `--yes`), then either
//! cancels every pilot job through the batch system (`--cluster`) or stops the node's pilots
//! and leases ([`crate::kill_all`]), and prints what really happened to each lease.

use std::time::Duration;

use crate::cli::KillAllArgs;
use crate::config::Overrides;
use crate::exit::{EnvironmentError, ExitStatus, UsageError};
use crate::kill_all::NodeKill;
use crate::lrm::LrmKind;
use crate::lrm::cluster::Cluster;
use crate::recovery;

use super::{Globals, init_logging};

/// Entry point.
pub async fn kill_all(globals: &Globals, args: KillAllArgs) -> anyhow::Result<ExitStatus> {
    if !nix::unistd::geteuid().is_root() {
        return Err(EnvironmentError {
            problem: "kill-all must run as root: it signals other users' pilots and stops guests"
                .into(),
            hint: "run it with sudo".into(),
        }
        .into());
    }
    let config = globals.load(Overrides::default())?;
    init_logging(&config);
    confirm(&args, &config)?;
    if args.cluster {
        return kill_cluster(&config).await;
    }
    let done = crate::kill_all::on_node(&config, args.effective_level(), &args.reason).await?;
    match &done {
        NodeKill::NothingToStop(why) => println!("nothing to stop: {why}"),
        NodeKill::Done { outcomes, .. } => print!("{}", recovery::summary_table(outcomes)),
    }
    Ok(if done.restored() {
        ExitStatus::Success
    } else {
        ExitStatus::HostFailure
    })
}

/// Ask before pulling the brake, unless `--yes`; without a terminal `--yes` is required, so
/// a mistyped pdsh line cannot stop a cluster's worth of guests.
fn confirm(args: &KillAllArgs, config: &crate::config::Config) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if args.yes {
        return Ok(());
    }
    let what = if args.cluster {
        "cancel EVERY pilot job in the cluster".to_string()
    } else {
        format!(
            "stop every pilot and lease guest on node {}",
            config.node_name
        )
    };
    if !std::io::stdin().is_terminal() {
        return Err(UsageError {
            problem: format!("kill-all would {what}, and there is no terminal to confirm it"),
            hint: "add --yes to confirm (as in `vmpilot kill-all --yes --reason \"...\"`)".into(),
        }
        .into());
    }
    eprint!("vmpilot: {what}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        return Ok(());
    }
    Err(UsageError {
        problem: "kill-all not confirmed; nothing was done".into(),
        hint: "answer y, or pass --yes".into(),
    }
    .into())
}

/// `--cluster`: cancel every pilot job through the batch system and report per job.
async fn kill_cluster(config: &crate::config::Config) -> anyhow::Result<ExitStatus> {
    let on_path = |p: &str| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(p).is_file()))
    };
    let cluster = match config.lrm.kind {
        LrmKind::Slurm => Cluster::Slurm,
        LrmKind::Pbs => Cluster::Pbs,
        LrmKind::Auto if on_path("squeue") => Cluster::Slurm,
        LrmKind::Auto if on_path("qselect") => Cluster::Pbs,
        _ => {
            return Err(EnvironmentError {
                problem: "kill-all --cluster needs a batch system, and none was found (no squeue or qselect on PATH, or `[lrm] kind = \"none\"`)".into(),
                hint: "run it where the batch system's client commands are installed, or set `[lrm] kind`".into(),
            }
            .into());
        }
    };
    let timeout = config.lrm.command_timeout.get();
    let results = cluster
        .cancel_all(timeout, Duration::from_secs(120))
        .await
        .map_err(|e| EnvironmentError {
            problem: format!("cannot list the pilot jobs, so nothing was cancelled: {e}"),
            hint: "check that the batch system answers (`scontrol ping` / `qstat -B`) and that `[lrm] command_timeout` is long enough, then run kill-all --cluster again; each node's own `vmpilot kill-all` works without the batch system".into(),
        })?;
    println!("{:<12} {:<12} {:<16} RESULT", "JOB", "STATE", "NODES");
    for r in &results {
        println!(
            "{:<12} {:<12} {:<16} {}",
            r.job.id, r.job.state, r.job.nodes, r.result
        );
    }
    if results.is_empty() {
        println!("no pilot jobs found");
    }
    if results.iter().any(|r| r.result != "gone") {
        return Ok(ExitStatus::HostFailure);
    }
    Ok(ExitStatus::Success)
}
