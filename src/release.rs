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
use crate::host::bounded::bounded;
use crate::host::{Host, HostError, owned_by, unreserve};
use crate::lease::record::{GuestFate, LeaseRecord};
use crate::lease::store::{Store, StoreError};
use crate::lease::{Event, LeaseState};

/// Most time kept back from the budget for restoring the host after guests are stopped
/// (at most a quarter of the budget): ballooning dom0 back can take seconds.
const RESTORE_SHARE: Duration = Duration::from_secs(10);

/// Rounds of stopping a lease's guests: the first stops what was listed, each further one
/// what was started meanwhile. Past them the lease ends `failed`.
const MAX_GUEST_ROUNDS: usize = 3;

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
        // A guest of the lease may be started while the first ones are being stopped (a
        // coordinator's launch in flight): list again after each round and stop the late
        // starters, so no guest of the lease outlives "restored". Bounded: a lease whose
        // guests keep appearing ends `failed`, never `unreserved` with a guest running.
        let exclusive = self.config.host.exclusive;
        for round in 0..=MAX_GUEST_ROUNDS {
            let guests = self.guests_retrying(record, guests_until).await?;
            let mine: Vec<_> = guests
                .into_iter()
                .filter(|g| owned_by(g, &record.lease_id, exclusive))
                .filter(|g| round == 0 || g.running)
                .collect();
            if mine.is_empty() {
                break;
            }
            if round == MAX_GUEST_ROUNDS {
                let names: Vec<&str> = mine.iter().map(|g| g.name.as_str()).collect();
                return Err(HostError::Operation {
                    op: "stop the lease's guests".into(),
                    detail: format!(
                        "{} still run after {MAX_GUEST_ROUNDS} rounds of stopping, started while the lease was ending: {}; \
                         the host is not restored (is something still launching guests for this lease?)",
                        names.len(),
                        names.join(", ")
                    ),
                });
            }
            if round > 0 {
                let names: Vec<&str> = mine.iter().map(|g| g.name.as_str()).collect();
                tracing::warn!(lease = %record.lease_id, round, guests = %names.join(","), "guests of the lease started while it was ending; stopping them too");
            }
            let guest_budget = guests_until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(500));
            let (host, policy) = (self.host.clone(), self.config.host.on_unreserve);
            let force = force.clone();
            // stop_guests keeps to its budget, but a destroy that started in time is waited
            // for: only a hypervisor that hangs runs past the overrun. A panic while stopping
            // guests says nothing about them: they may run.
            let limit = guest_budget + unreserve::DESTROY_OVERRUN;
            let fates = bounded("stop guests", limit, move || {
                Ok(unreserve::stop_guests(
                    host.as_ref(),
                    mine,
                    policy,
                    guest_budget,
                    &force,
                ))
            })
            .await?;
            record.guests = merge_fates(&record.guests, fates);
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
/// The fates of a round of stopping merged into what the record already says: guests of
/// earlier rounds (or an earlier finisher) keep their entries, sorted by name.
fn merge_fates(earlier: &[GuestFate], now: Vec<GuestFate>) -> Vec<GuestFate> {
    let mut merged = keep_earlier_fates(earlier, now);
    for e in earlier {
        if !merged.iter().any(|m| m.name == e.name) {
            merged.push(e.clone());
        }
    }
    merged.sort_by(|a, b| a.name.cmp(&b.name));
    merged
}

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
