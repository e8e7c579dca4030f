//! Giving the node back for one lease: stop its guests, restore the host, record the end.
//!
//! The pilot, `recover` and `kill-all` all end leases here, so there is one way a node is
//! restored. The caller has already moved the record to `Unreserving` and saved it (the
//! intent); this finishes with `Unreserved` or `Failed`, saved, within `budget` — plus, when
//! guests had to be destroyed late, up to [`unreserve::DESTROY_OVERRUN`] to let destroys that
//! started in time finish and the host be restored after them.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::crashpoint::{self, Point};
use crate::host::{Host, HostError, owned_by, unreserve};
use crate::lease::record::{GuestFate, LeaseRecord};
use crate::lease::store::{Store, StoreError};
use crate::lease::{Event, LeaseState};

/// Most time kept back from the budget for restoring the host after guests are stopped
/// (at most a quarter of the budget): ballooning dom0 back can take seconds.
const RESTORE_SHARE: Duration = Duration::from_secs(10);

/// Everything needed to end a lease.
#[derive(Clone)]
pub struct Releaser {
    /// Validated config.
    pub config: Config,
    /// Lease records.
    pub store: Store,
    /// The hypervisor.
    pub host: Arc<dyn Host>,
}

/// Run a blocking host call off the runtime, bounded by `limit`.
pub async fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> Result<T, HostError> + Send + 'static,
) -> Result<T, HostError> {
    let handle = tokio::task::spawn_blocking(f);
    match tokio::time::timeout(limit, handle).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(HostError::Operation {
            op: what.to_string(),
            detail: format!("host call panicked: {join}"),
        }),
        Err(_) => Err(HostError::Timeout {
            op: what.to_string(),
            after: limit,
        }),
    }
}

impl Releaser {
    /// Stop the lease's guests and restore the host. `record` must be `Unreserving`.
    /// On return it is `Unreserved` or `Failed`, and saved.
    pub async fn finish(
        &self,
        record: &mut LeaseRecord,
        budget: Duration,
        force: Arc<AtomicBool>,
    ) -> Result<(), StoreError> {
        debug_assert_eq!(record.state, LeaseState::Unreserving);
        let until = Instant::now() + budget.max(Duration::from_secs(1));
        let result = self.stop_and_restore(record, until, force).await;
        let event = match &result {
            Ok(()) => Event::Restored,
            Err(e) => {
                record.last_error = Some(e.to_string());
                Event::HostError
            }
        };
        // Unreserving accepts both events, so this cannot fail.
        let to = record
            .apply(&event)
            .expect("unreserving accepts restored and host-error");
        self.store.save(record)?;
        crashpoint::hit(Point::UnreservedSaved);
        crate::metrics::publish(&self.config, &self.store);
        match &result {
            Ok(()) => tracing::info!(lease = %record.lease_id, state = %to, "node restored"),
            Err(e) => {
                tracing::error!(lease = %record.lease_id, state = %to, error = %e, hint = "once the host answers again, run `vmpilot recover` (the batch epilog does); it finishes this lease", "node NOT restored")
            }
        }
        Ok(())
    }

    async fn stop_and_restore(
        &self,
        record: &mut LeaseRecord,
        until: Instant,
        force: Arc<AtomicBool>,
    ) -> Result<(), HostError> {
        let left = || until.saturating_duration_since(Instant::now());
        let keep = RESTORE_SHARE.min(left() / 4);
        let guests_until = until - keep;
        let guests = self.guests_retrying(record, guests_until).await?;
        let guest_budget = guests_until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(500));
        let exclusive = self.config.host.exclusive;
        let mine: Vec<_> = guests
            .into_iter()
            .filter(|g| owned_by(g, &record.lease_id, exclusive))
            .collect();
        if !mine.is_empty() {
            let (host, policy) = (self.host.clone(), self.config.host.on_unreserve);
            let stopping = tokio::task::spawn_blocking(move || {
                unreserve::stop_guests(host.as_ref(), mine, policy, guest_budget, &force)
            });
            // stop_guests keeps to its budget, but a destroy that started in time is waited
            // for: only a hypervisor that hangs runs past the overrun.
            let limit = guest_budget + unreserve::DESTROY_OVERRUN;
            let fates = match tokio::time::timeout(limit, stopping).await {
                Ok(fates) => fates.unwrap_or_default(),
                Err(_) => {
                    return Err(HostError::Timeout {
                        op: "stop guests".into(),
                        after: limit,
                    });
                }
            };
            record.guests = keep_earlier_fates(&record.guests, fates);
            // The fates are evidence; keep them even if the restore below fails.
            let _ = self.store.save(record);
            crashpoint::hit(Point::GuestsStopped);
            if let Some(bad) = record.guests.iter().find(|f| f.fate == "failed") {
                return Err(HostError::Operation {
                    op: format!("stop guest {}", bad.name),
                    detail: bad.detail.clone().unwrap_or_default(),
                });
            }
        }
        // Guests that took long to destroy do not eat the restore's share.
        self.restore(record, until.max(Instant::now() + keep)).await
    }

    /// Every guest on the host, retrying until `until`: a hypervisor that is down or
    /// restarting when the lease ends (libvirtd restarts do not stop guests) may answer
    /// again within the grace. The last failure says how long it was tried.
    async fn guests_retrying(
        &self,
        record: &LeaseRecord,
        until: Instant,
    ) -> Result<Vec<crate::host::Guest>, HostError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let left = until.saturating_duration_since(Instant::now());
            let host = self.host.clone();
            let attempt = bounded(
                "list guests",
                left.max(Duration::from_millis(200)),
                move || host.guests(),
            )
            .await;
            match attempt {
                Ok(guests) => return Ok(guests),
                Err(e) if Instant::now() + pause < until => {
                    tracing::warn!(lease = %record.lease_id, error = %e, attempt = attempts, "cannot list the lease's guests; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    return Err(HostError::Operation {
                        op: "list the lease's guests".into(),
                        detail: format!(
                            "gave up after {attempts} attempt(s) over {:.1}s; the lease's guests may still run and the host is \
                             not restored. Last error: {e}",
                            started.elapsed().as_secs_f64()
                        ),
                    });
                }
            }
        }
    }

    /// Give the lease's share back, retrying within the budget.
    async fn restore(&self, record: &LeaseRecord, until: Instant) -> Result<(), HostError> {
        let mut pause = Duration::from_millis(100);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let (store, holder) = (
                self.store.clone(),
                format!(
                    "pid {} restoring lease {}",
                    std::process::id(),
                    record.lease_id
                ),
            );
            let (host, id, baseline) = (
                self.host.clone(),
                record.lease_id.clone(),
                record.baseline.clone(),
            );
            let attempt = bounded("release", left.max(Duration::from_millis(200)), move || {
                let _lock = store
                    .lock_node(left, &holder)
                    .map_err(|e| HostError::Operation {
                        op: "take node lock".into(),
                        detail: e.to_string(),
                    })?;
                host.release(&id, baseline.as_ref())?;
                crashpoint::hit(Point::HostReleased);
                Ok(())
            })
            .await;
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() + pause < until => {
                    tracing::warn!(lease = %record.lease_id, error = %e, "restoring the host failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Merge the fates of this stop with those an earlier, interrupted one saved (a pilot killed
/// after stopping its guests, a recovery killed part-way): a guest this run found
/// `already-stopped` keeps the fate that stopped it, so the record still says who did what.
fn keep_earlier_fates(earlier: &[GuestFate], now: Vec<GuestFate>) -> Vec<GuestFate> {
    now.into_iter()
        .map(|f| match earlier.iter().find(|e| e.name == f.name) {
            Some(e) if f.fate == "already-stopped" && e.fate != "failed" => e.clone(),
            _ => f,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, fate: &str) -> GuestFate {
        GuestFate {
            name: name.into(),
            fate: fate.into(),
            detail: None,
        }
    }

    #[test]
    fn a_guest_found_stopped_keeps_the_fate_that_stopped_it() {
        let earlier = [f("a", "destroyed"), f("b", "failed")];
        let now = vec![
            f("a", "already-stopped"),
            f("b", "already-stopped"),
            f("c", "already-stopped"),
            f("d", "shut-down"),
        ];
        let merged: Vec<_> = keep_earlier_fates(&earlier, now)
            .into_iter()
            .map(|g| (g.name, g.fate))
            .collect();
        let want = [
            ("a", "destroyed"),
            ("b", "already-stopped"),
            ("c", "already-stopped"),
            ("d", "shut-down"),
        ]
        .map(|(n, x)| (n.to_string(), x.to_string()));
        assert_eq!(merged, want);
    }
}
