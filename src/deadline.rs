//! Deadline arithmetic: when a lease must be gone, and when to start leaving.
//!
//! One "must be gone by" instant per lease: the earliest of the batch walltime end minus a
//! safety margin (Slurm enforces walltime up to ~30 s late but may also signal early; PBS
//! has no warning at all), `--walltime`, and later a coordinator or admin release.
//! Unreserving starts at deadline − grace. All waiting uses the monotonic clock.

use std::time::{Duration, Instant};

use crate::exit::UsageError;

/// How long the lease may live from now.
///
/// `time_left`: the job's remaining walltime (`None`: not under a batch system, or no
/// limit); `margin`: the safety margin taken off it; `cap`: `--walltime`.
pub fn lease_lifetime(
    time_left: Option<Duration>,
    margin: Duration,
    cap: Option<Duration>,
) -> Result<Duration, UsageError> {
    let from_batch = match time_left {
        Some(left) if left <= margin => {
            return Err(UsageError {
                problem: format!(
                    "the job has {} of walltime left, not more than the safety margin ({})",
                    humantime::format_duration(left),
                    humantime::format_duration(margin)
                ),
                hint: "submit the pilot with a longer time limit, or lower `[lrm] safety_margin`"
                    .into(),
            });
        }
        Some(left) => Some(left - margin),
        None => None,
    };
    match (from_batch, cap) {
        (Some(b), Some(c)) => Ok(b.min(c)),
        (Some(b), None) => Ok(b),
        (None, Some(c)) => Ok(c),
        (None, None) => Err(UsageError {
            problem:
                "no lease length: not under a batch system with a time limit, and no --walltime"
                    .into(),
            hint: "pass e.g. --walltime 2h, or submit the pilot with a time limit".into(),
        }),
    }
}

/// When to start unreserving: `grace` before the deadline (at once if that has passed).
pub fn unreserve_at(deadline: Instant, grace: Duration) -> Instant {
    deadline.checked_sub(grace).unwrap_or(deadline)
}

/// Time for unreserving that starts `now`: what remains of the grace, never past the
/// deadline, and never less than `floor` (stopping must be given a chance even when late).
pub fn unreserve_budget(
    now: Instant,
    deadline: Instant,
    grace: Duration,
    floor: Duration,
) -> Duration {
    deadline
        .saturating_duration_since(now)
        .min(grace)
        .max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn batch_walltime_minus_margin_capped_by_walltime_flag() {
        assert_eq!(lease_lifetime(Some(S(3600)), S(30), None).unwrap(), S(3570));
        assert_eq!(
            lease_lifetime(Some(S(3600)), S(30), Some(S(600))).unwrap(),
            S(600)
        );
        assert_eq!(
            lease_lifetime(Some(S(100)), S(30), Some(S(600))).unwrap(),
            S(70)
        );
        assert_eq!(lease_lifetime(None, S(30), Some(S(600))).unwrap(), S(600));
    }

    #[test]
    fn too_little_time_or_none_at_all_is_refused() {
        let e = lease_lifetime(Some(S(20)), S(30), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("20s") && e.contains("safety_margin"), "{e}");
        let e = lease_lifetime(None, S(30), None).unwrap_err().to_string();
        assert!(e.contains("--walltime"), "{e}");
    }

    #[test]
    fn unreserving_starts_grace_before_the_deadline_and_keeps_within_it() {
        let now = Instant::now();
        let deadline = now + S(100);
        assert_eq!(unreserve_at(deadline, S(30)), now + S(70));
        // A signal early in the lease gets the whole grace.
        assert_eq!(unreserve_budget(now, deadline, S(30), S(1)), S(30));
        // A signal 10 s before the deadline gets 10 s.
        assert_eq!(unreserve_budget(now + S(90), deadline, S(30), S(1)), S(10));
        // Past the deadline: the floor.
        assert_eq!(unreserve_budget(now + S(200), deadline, S(30), S(1)), S(1));
    }
}
