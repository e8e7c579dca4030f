//! `vmpilot kill-all`: the emergency brake. Signals every pilot on the node (verified by
//! pid, start time and boot id), escalates to SIGKILL after a bound, then finishes every
//! lease still open through the same recovery path, and prints a summary.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::{KillAllArgs, KillLevel};
use crate::config::Overrides;
use crate::coordinator::outbox::Outbox;
use crate::exit::{EnvironmentError, ExitStatus};
use crate::kill_request::{self, KillRequest};
use crate::lease::store::Store;
use crate::process::ProcessIdentity;
use crate::recovery::{self, Scope, Trigger};
use crate::release::Releaser;

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
    let store = Store::open(&config.state_dir)?;
    let outbox = Outbox::open(&config)?;
    let host = crate::host::open(&config)?;
    let request = KillRequest::new(args.level, &args.reason);
    kill_request::publish(&config.state_dir, &request)?;
    let (wait, budget) = match args.level {
        KillLevel::Fast => (Duration::from_secs(5), Duration::from_secs(5)),
        KillLevel::Quick => (Duration::from_secs(15), Duration::from_secs(10)),
        KillLevel::Graceful => {
            let g = config.lease.grace.get();
            (g + Duration::from_secs(5), g)
        }
    };
    let pilots: Vec<ProcessIdentity> = store
        .list()?
        .into_iter()
        .flatten()
        .filter(|r| !r.state.is_terminal() && r.pilot.is_alive())
        .map(|r| r.pilot)
        .collect();
    stop_pilots(&pilots, wait).await;
    let releaser = Releaser {
        config: config.clone(),
        store,
        host,
    };
    let trigger = Trigger::Admin {
        by: request.by.clone(),
        why: request.why.clone(),
        force: request.is_fast(),
    };
    let scope = Scope {
        job: None,
        boot: true,
    };
    let outcomes = recovery::recover_all(&releaser, &outbox, &scope, &trigger, budget).await;
    kill_request::withdraw(&config.state_dir)?;
    outbox.flush(Duration::from_secs(5)).await;
    let outcomes = outcomes?;
    print!("{}", recovery::summary_table(&outcomes));
    if outcomes.iter().any(|o| o.is_failure()) {
        return Ok(ExitStatus::HostFailure);
    }
    Ok(ExitStatus::Success)
}

/// SIGTERM each pilot, wait up to `wait` for all to exit, SIGKILL the rest.
async fn stop_pilots(pilots: &[ProcessIdentity], wait: Duration) {
    let signal_all = |sig: Signal| {
        for p in pilots.iter().filter(|p| p.is_alive()) {
            tracing::info!(pid = p.pid, signal = %sig, "signalling pilot");
            let _ = kill(Pid::from_raw(p.pid as i32), sig);
        }
    };
    signal_all(Signal::SIGTERM);
    let until = Instant::now() + wait;
    while Instant::now() < until && pilots.iter().any(|p| p.is_alive()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal_all(Signal::SIGKILL);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && pilots.iter().any(|p| p.is_alive()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
