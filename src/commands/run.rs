//! `vmpilot run`: build the lease request from flags, config and the batch system, check it
//! against what the job was given, then hand it to the pilot. Nothing on the node changes
//! before these checks pass.

use crate::admission;
use crate::cli::RunArgs;
use crate::config::Overrides;
use crate::deadline;
use crate::exit::{ExitStatus, UsageError};
use crate::lease::record::LeaseId;
use crate::lrm;
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
    let env: lrm::Env = std::env::vars().collect();
    let lrm = lrm::detect(config.lrm.kind, &env, config.lrm.command_timeout.get())?;
    let facts = match &lrm {
        Some(l) => Some(l.facts().await?),
        None => None,
    };
    if let Some(f) = &facts {
        tracing::info!(lrm = f.lrm, job = %f.job_id, memory_mib = ?f.memory_mib, cpus = ?f.cpus, time_left = ?f.time_left, "batch job");
    }
    let (memory_mib, cpus) =
        admission::fit_to_job(&config, args.memory, args.cpus, facts.as_ref())?;
    let lifetime = deadline::lease_lifetime(
        facts.as_ref().and_then(|f| f.time_left),
        config.lrm.safety_margin.get(),
        args.walltime.map(|w| w.get()).filter(|w| !w.is_zero()),
    )?;
    let too_long = time::Duration::try_from(lifetime)
        .ok()
        .and_then(|d| time::OffsetDateTime::now_utc().checked_add(d))
        .is_none_or(|end| end.year() > 9999);
    if too_long {
        return Err(UsageError {
            problem: format!(
                "a lease of {} ends after the year 9999",
                humantime::format_duration(lifetime)
            ),
            hint: "give a realistic --walltime, e.g. 2h".into(),
        }
        .into());
    }
    let grace = config.lease.grace.get();
    if grace >= lifetime {
        return Err(UsageError {
            problem: format!(
                "the grace ({}) is not shorter than the lease ({}): guests would have to stop before they start",
                humantime::format_duration(grace),
                humantime::format_duration(lifetime)
            ),
            hint: "ask for a longer --walltime / job time limit, or a shorter --grace / `lease.grace`".into(),
        }
        .into());
    }
    let request = LeaseRequest {
        lease_id,
        memory_mib,
        cpus,
        lifetime,
        grace,
        job_id: lrm.as_ref().map(|l| l.job_id().to_string()),
    };
    pilot::run(config, request, lrm).await
}
