//! `vmpilot recover`: finish every lease whose pilot is gone and restore the node. What
//! the batch epilog (`--job`) and the boot-time unit (`--boot`) run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::RecoverArgs;
use crate::config::Overrides;
use crate::coordinator::outbox::Outbox;
use crate::exit::ExitStatus;
use crate::lease::store::Store;
use crate::recovery::{self, Scope, Trigger};

use super::{Globals, init_logging};

/// Entry point.
pub async fn recover(globals: &Globals, args: RecoverArgs) -> anyhow::Result<ExitStatus> {
    let config = globals.load(Overrides::default())?;
    // An epilog runs this after every job: on a node that never hosted a lease there is
    // nothing to do, and nothing (not even the state directory) is created.
    if !config.state_dir.join("leases").is_dir() {
        println!(
            "nothing to recover: no lease records in {}",
            config.state_dir.display()
        );
        return Ok(ExitStatus::Success);
    }
    init_logging(&config);
    let interrupted = interrupt_flag()?;
    let store = Store::open(&config.state_dir)?;
    let scope = Scope {
        job: args.job,
        boot: args.boot,
    };
    let trigger = Trigger::PilotLost;
    let outbox = Outbox::open(&config)?;
    let budget = config.lease.grace.get();
    let outcomes = recovery::finish_all(
        &config,
        &store,
        &outbox,
        &scope,
        &trigger,
        budget,
        &interrupted,
    )
    .await?;
    // Deliver what this and earlier runs left in the spool; bounded, the rest waits.
    outbox.flush(Duration::from_secs(10)).await;
    print!("{}", recovery::summary_table(&outcomes));
    if outcomes.iter().any(|o| o.is_failure()) {
        return Ok(if interrupted.load(Ordering::SeqCst) {
            ExitStatus::SignalNotRestored
        } else {
            ExitStatus::HostFailure
        });
    }
    Ok(ExitStatus::Success)
}

/// SIGTERM, SIGINT or SIGHUP (systemd stopping the boot unit, an admin's Ctrl-C) lets
/// `recover` finish the lease it is on and start no other; a second one ends it at once
/// (exit 1). Every lease step is persisted before it acts, so either way the next `recover`
/// takes over where this one stopped.
fn interrupt_flag() -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT, SIGHUP] {
        // In this order: the second signal finds the flag set and exits.
        signal_hook::flag::register_conditional_shutdown(signal, 1, flag.clone())
            .and_then(|_| signal_hook::flag::register(signal, flag.clone()))
            .context("cannot install recover's signal handlers")?;
    }
    Ok(flag)
}
