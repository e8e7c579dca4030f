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
    init_logging(&config);
    let store = Store::open(&config.state_dir)?;
    let outbox = Outbox::open(&config)?;
    let host = crate::host::open(&config)?;
    let budget = config.lease.grace.get();
    let releaser = Releaser {
        config,
        store,
        host,
    };
    let scope = Scope {
        job: args.job,
        boot: args.boot,
    };
    let outcomes =
        recovery::recover_all(&releaser, &outbox, &scope, &Trigger::PilotLost, budget).await?;
    // Deliver what this and earlier runs left in the spool; bounded, the rest waits.
    outbox.flush(Duration::from_secs(10)).await;
    print!("{}", recovery::summary_table(&outcomes));
    if outcomes.iter().any(|o| o.is_failure()) {
        return Ok(ExitStatus::HostFailure);
    }
    Ok(ExitStatus::Success)
}
