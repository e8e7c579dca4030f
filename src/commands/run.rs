//! `vmpilot run`: build the lease request from flags, config and the batch system, check it
//! against what the job was given, then hand it to the pilot. Nothing on the node changes
//! before these checks pass.

use crate::cli::RunArgs;
use crate::config::{Config, Overrides};
use crate::deadline;
use crate::exit::{ExitStatus, UsageError};
use crate::lease::record::LeaseId;
use crate::lrm::{self, JobFacts};
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
    let (memory_mib, cpus) = fit_to_job(&config, &args, facts.as_ref())?;
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

/// Memory and CPUs for guests: what was asked (or, under a batch system, what the job was
/// given), refused when it exceeds the job's allocation. Guests live outside the job's
/// cgroup, so this check is the only thing keeping them within what the batch system granted.
fn fit_to_job(
    config: &Config,
    args: &RunArgs,
    job: Option<&JobFacts>,
) -> Result<(u64, u32), UsageError> {
    // Checked: a wrapped sum would admit a lease of nearly 2^64 MiB in a 300 MiB job.
    let too_big = |what: String| UsageError {
        problem: format!("{what} is more than any host can have"),
        hint: "give sizes in MiB/GiB that fit the node, e.g. --memory 4G".into(),
    };
    let overhead = config
        .host
        .guest_overhead
        .mib()
        .checked_mul(u64::from(config.lease.max_guests))
        .ok_or_else(|| {
            too_big(format!(
                "host.guest_overhead ({}) x lease.max_guests ({})",
                config.host.guest_overhead, config.lease.max_guests
            ))
        })?;
    let job_memory = job.and_then(|j| j.memory_mib);
    let memory = match (args.memory, job_memory) {
        (Some(m), _) => m.mib(),
        (None, Some(jm)) if jm > overhead => jm - overhead,
        (None, Some(jm)) => {
            return Err(UsageError {
                problem: format!(
                    "the job has {jm} MiB, not more than the guest overhead ({overhead} MiB = host.guest_overhead x lease.max_guests)"
                ),
                hint: "submit the pilot with more memory (--mem / -l mem)".into(),
            });
        }
        (None, None) => {
            return Err(UsageError {
                problem: "no guest memory: --memory is required when the batch system does not say how much the job has".into(),
                hint: "pass e.g. --memory 4G".into(),
            });
        }
    };
    let charged = memory.checked_add(overhead).ok_or_else(|| {
        too_big(format!(
            "--memory {memory} MiB plus {overhead} MiB guest overhead"
        ))
    })?;
    if let Some(jm) = job_memory
        && charged > jm
    {
        return Err(UsageError {
            problem: format!(
                "--memory {memory} MiB + {overhead} MiB guest overhead ({} guests x {}) is more than the job's {jm} MiB",
                config.lease.max_guests, config.host.guest_overhead
            ),
            hint: "ask for less --memory, or submit the pilot with more memory (--mem / -l mem)"
                .into(),
        });
    }
    let job_cpus = job.and_then(|j| j.cpus);
    let cpus = args.cpus.or(job_cpus).unwrap_or(1);
    if let Some(jc) = job_cpus
        && cpus > jc
    {
        return Err(UsageError {
            problem: format!("--cpus {cpus} is more than the job's {jc} CPUs"),
            hint: "ask for fewer --cpus, or submit the pilot with more (--cpus-per-task / ppn)"
                .into(),
        });
    }
    if memory == 0 || cpus == 0 {
        return Err(UsageError {
            problem: "--memory and --cpus must be more than zero".into(),
            hint: "e.g. --memory 4G --cpus 2".into(),
        });
    }
    Ok((memory, cpus))
}
