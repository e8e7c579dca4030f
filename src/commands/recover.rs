//! `vmpilot recover`: finish every lease whose pilot is gone and restore the node. What
//! the batch epilog (`--job`) and the boot-time unit (`--boot`) run.

use std::time::Duration;

use crate::cli::RecoverArgs;
use crate::config::Overrides;
use crate::coordinator::outbox::Outbox;
use crate::exit::ExitStatus;
use crate::lease::store::Store;
use crate::recovery::{self, Scope, Trigger};
use crate::release::Releaser;

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
    let store = Store::open(&config.state_dir)?;
    let scope = Scope {
        job: args.job,
        boot: args.boot,
    };
    let trigger = Trigger::PilotLost;
    let planned = recovery::plan(&store, &scope)?;
    let outbox = Outbox::open(&config)?;
    let planned = recovery::finish_reports(&outbox, &store, planned, &scope, &trigger).await;
    let outcomes = if recovery::needs_host(&planned) {
        let host = crate::host::open(&config)?;
        let budget = config.lease.grace.get();
        let releaser = Releaser {
            config,
            store,
            host,
        };
        recovery::execute(&releaser, &outbox, planned, &scope, &trigger, budget).await?
    } else {
        recovery::known_outcomes(planned)
    };
    // Deliver what this and earlier runs left in the spool; bounded, the rest waits.
    outbox.flush(Duration::from_secs(10)).await;
    print!("{}", recovery::summary_table(&outcomes));
    if outcomes.iter().any(|o| o.is_failure()) {
        return Ok(ExitStatus::HostFailure);
    }
    Ok(ExitStatus::Success)
}
