//! `vmpilot run`: build the lease request from flags, config and environment, then hand
//! it to the pilot.

use std::time::Duration;

use crate::cli::RunArgs;
use crate::config::Overrides;
use crate::exit::{ExitStatus, UsageError};
use crate::lease::record::LeaseId;
use crate::pilot::{self, LeaseRequest};

use super::{Globals, init_logging};

/// Entry point.
pub async fn run(globals: &Globals, args: RunArgs) -> anyhow::Result<ExitStatus> {
    let config = globals.load(Overrides {
        backend: args.host,
        coordinator_url: args.coordinator.clone(),
        grace: args.grace,
        ..Default::default()
    })?;
    init_logging(&config);
    let lease_id = match &args.lease_id {
        Some(id) => id.parse::<LeaseId>()?,
        None => LeaseId::generate(),
    };
    let lifetime = lifetime(&args)?;
    let grace = config.lease.grace.get();
    if grace >= lifetime {
        return Err(UsageError {
            problem: format!(
                "the grace ({}) is not shorter than the lease ({}): guests would have to stop before they start",
                humantime::format_duration(grace),
                humantime::format_duration(lifetime)
            ),
            hint: "ask for a longer --walltime or a shorter --grace / `lease.grace`".into(),
        }
        .into());
    }
    if args.memory.mib() == 0 || args.cpus == 0 {
        return Err(UsageError {
            problem: "--memory and --cpus must be more than zero".into(),
            hint: "e.g. --memory 4G --cpus 2".into(),
        }
        .into());
    }
    let request = LeaseRequest {
        lease_id,
        memory_mib: args.memory.mib(),
        cpus: args.cpus,
        lifetime,
        grace,
        job_id: std::env::var("SLURM_JOB_ID")
            .or_else(|_| std::env::var("PBS_JOBID"))
            .ok(),
    };
    pilot::run(config, request).await
}

fn lifetime(args: &RunArgs) -> Result<Duration, UsageError> {
    match args.walltime {
        Some(w) if !w.get().is_zero() => Ok(w.get()),
        Some(_) => Err(UsageError {
            problem: "--walltime is zero".into(),
            hint: "give the lease a length, e.g. --walltime 2h".into(),
        }),
        None => Err(UsageError {
            problem:
                "no lease length: --walltime is required when not running under a batch system"
                    .into(),
            hint: "pass e.g. --walltime 2h".into(),
        }),
    }
}
