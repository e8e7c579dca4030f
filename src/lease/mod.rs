//! The lease: its states, the events that move it, and the one function that says which
//! moves are legal.
//!
//! A lease crosses processes (the pilot, `status`, `recover`, `kill-all`, the boot unit), so
//! its state is a plain serde enum persisted in a record (`record.rs`) by the store
//! (`store.rs`). Every state change anywhere in vmpilot goes through [`transition`]; the
//! table in docs/state-machine.md is generated from it and a test keeps the two equal.
//!
//! Invariants:
//! - `Reserving` and `Unreserving` are *intents*: they are persisted before the host is
//!   touched, so a pilot killed part-way leaves a record `recover` can finish.
//! - `Unreserved` means the node is back at its baseline; `Failed` means it may not be,
//!   and only an admin kill or a recovery may move it on (back to `Unreserving`).

pub mod record;
pub mod store;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use vmpilot_protocol::state::{EndReason, LeaseState};

/// Something that happened to a lease.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum Event {
    /// The pilot begins reserving.
    Start,
    /// The host accepted the reservation.
    ReservedOk,
    /// Deadline minus grace reached: time to give the node back.
    Deadline,
    /// SIGTERM, SIGINT or SIGHUP (the batch system cancelled or preempted the job).
    Terminate {
        /// Signal name, e.g. `SIGTERM`.
        signal: String,
        /// The batch system says it is preempting the job (not a plain cancel).
        #[serde(default)]
        preempted: bool,
    },
    /// SIGUSR1: the batch system's early warning before walltime.
    EarlyWarning,
    /// An admin ran `vmpilot kill-all`.
    AdminKill,
    /// The coordinator asked for the node back.
    CoordinatorRelease,
    /// The host backend failed.
    HostError,
    /// The host is back at its baseline for this lease.
    Restored,
    /// The lease's pilot process is gone (found by `recover`).
    PilotLost,
}

impl Event {
    /// One representative of each event kind, in table order.
    pub fn all() -> [Event; 10] {
        [
            Event::Start,
            Event::ReservedOk,
            Event::Deadline,
            Event::Terminate {
                signal: "SIGTERM".into(),
                preempted: false,
            },
            Event::EarlyWarning,
            Event::AdminKill,
            Event::CoordinatorRelease,
            Event::HostError,
            Event::Restored,
            Event::PilotLost,
        ]
    }

    /// The kebab-case name used in the table and in logs.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::ReservedOk => "reserved-ok",
            Event::Deadline => "deadline",
            Event::Terminate { .. } => "terminate",
            Event::EarlyWarning => "early-warning",
            Event::AdminKill => "admin-kill",
            Event::CoordinatorRelease => "coordinator-release",
            Event::HostError => "host-error",
            Event::Restored => "restored",
            Event::PilotLost => "pilot-lost",
        }
    }

    /// Why the lease ends, if this event ends it.
    pub fn end_reason(&self) -> Option<EndReason> {
        Some(match self {
            Event::Deadline => EndReason::Deadline,
            Event::Terminate {
                preempted: true, ..
            } => EndReason::Preempted,
            Event::Terminate { .. } => EndReason::Cancelled,
            Event::EarlyWarning => EndReason::EarlyWarning,
            Event::AdminKill => EndReason::Admin,
            Event::CoordinatorRelease => EndReason::CoordinatorRelease,
            Event::HostError => EndReason::HostError,
            Event::PilotLost => EndReason::PilotLost,
            Event::Start | Event::ReservedOk | Event::Restored => return None,
        })
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Terminate { signal, .. } => write!(f, "terminate({signal})"),
            other => f.write_str(other.name()),
        }
    }
}

/// An event that is not legal in a state. Names both, so a log line alone explains it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("lease event `{event}` is not allowed in state `{from}`")]
pub struct TransitionError {
    /// The state the lease was in.
    pub from: LeaseState,
    /// The event that could not apply (its kind name).
    pub event: &'static str,
}

/// Every legal move of a lease. Pure: no I/O, no clock.
pub fn transition(from: LeaseState, event: &Event) -> Result<LeaseState, TransitionError> {
    use Event as E;
    use LeaseState as S;
    let to = match (from, event) {
        (S::Begin, E::Start) => S::Reserving,
        // Nothing was reserved yet, so ending is immediate and clean.
        (
            S::Begin,
            E::Deadline
            | E::Terminate { .. }
            | E::EarlyWarning
            | E::AdminKill
            | E::HostError
            | E::PilotLost,
        ) => S::Unreserved,
        (S::Reserving, E::ReservedOk) => S::Reserved,
        // Anything that ends a lease while reserving rolls the partial reservation back.
        (
            S::Reserving | S::Reserved,
            E::Deadline
            | E::Terminate { .. }
            | E::EarlyWarning
            | E::AdminKill
            | E::HostError
            | E::PilotLost,
        ) => S::Unreserving,
        (S::Reserved, E::CoordinatorRelease) => S::Unreserving,
        // Already on the way out; a second signal only makes the pilot stop guests harder.
        (
            S::Unreserving,
            E::Deadline
            | E::Terminate { .. }
            | E::EarlyWarning
            | E::AdminKill
            | E::CoordinatorRelease
            | E::PilotLost,
        ) => S::Unreserving,
        (S::Unreserving, E::Restored) => S::Unreserved,
        (S::Unreserving, E::HostError) => S::Failed,
        // A failed restore may be retried by an admin or by recovery, never by the pilot.
        (S::Failed, E::AdminKill | E::PilotLost) => S::Unreserving,
        _ => {
            return Err(TransitionError {
                from,
                event: event.name(),
            });
        }
    };
    Ok(to)
}

/// The full transition table as Markdown; docs/state-machine.md embeds exactly this.
pub fn table_markdown() -> String {
    let events = Event::all();
    let mut out = String::from("| state \\ event |");
    for e in &events {
        out.push_str(&format!(" {} |", e.name()));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(events.len()));
    out.push('\n');
    for s in LeaseState::ALL {
        out.push_str(&format!("| **{s}** |"));
        for e in &events {
            match transition(s, e) {
                Ok(to) => out.push_str(&format!(" {to} |")),
                Err(_) => out.push_str(" — |"),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use LeaseState as S;

    /// The whole table, written out by hand: a change to `transition` must change this too.
    const EXPECTED: [(S, [Option<S>; 10]); 6] = {
        use LeaseState::*;
        [
            (
                Begin,
                [
                    Some(Reserving),
                    None,
                    Some(Unreserved),
                    Some(Unreserved),
                    Some(Unreserved),
                    Some(Unreserved),
                    None,
                    Some(Unreserved),
                    None,
                    Some(Unreserved),
                ],
            ),
            (
                Reserving,
                [
                    None,
                    Some(Reserved),
                    Some(Unreserving),
                    Some(Unreserving),
                    Some(Unreserving),
                    Some(Unreserving),
                    None,
                    Some(Unreserving),
                    None,
                    Some(Unreserving),
                ],
            ),
            (
                Reserved,
                [
                    None,
                    None,
                    Some(Unreserving),
                    Some(Unreserving),
                    Some(Unreserving),
                    Some(Unreserving),
                    Some(Unreserving),
                    Some(Unreserving),
                    None,
                    Some(Unreserving),
                ],
            ),
            (
                Unreserving,
                [
                    None,
                    None,
                    Some(Unreserving),
                    Some(Unreserving),
                    Some(Unreserving),
                    Some(Unreserving),
                    Some(Unreserving),
                    Some(Failed),
                    Some(Unreserved),
                    Some(Unreserving),
                ],
            ),
            (
                Unreserved,
                [None, None, None, None, None, None, None, None, None, None],
            ),
            (
                Failed,
                [
                    None,
                    None,
                    None,
                    None,
                    None,
                    Some(Unreserving),
                    None,
                    None,
                    None,
                    Some(Unreserving),
                ],
            ),
        ]
    };

    #[test]
    fn every_state_event_pair_matches_the_table() {
        for (state, row) in EXPECTED {
            for (event, want) in Event::all().iter().zip(row) {
                let got = transition(state, event).ok();
                assert_eq!(got, want, "{state} x {event}");
            }
        }
    }

    #[test]
    fn errors_name_state_and_event() {
        let e = transition(S::Unreserved, &Event::Start).unwrap_err();
        assert_eq!(
            e.to_string(),
            "lease event `start` is not allowed in state `unreserved`"
        );
    }

    #[test]
    fn terminal_states_accept_nothing_but_retries_of_failed() {
        for e in Event::all() {
            assert!(transition(S::Unreserved, &e).is_err());
        }
        assert!(S::Unreserved.is_terminal() && S::Failed.is_terminal());
    }

    #[test]
    fn every_path_from_begin_ends_in_a_terminal_state() {
        // Breadth-first over the graph: any reachable state can reach a terminal state.
        for start in S::ALL {
            let mut seen = vec![start];
            let mut i = 0;
            while i < seen.len() {
                for e in Event::all() {
                    if let Ok(to) = transition(seen[i], &e)
                        && !seen.contains(&to)
                    {
                        seen.push(to);
                    }
                }
                i += 1;
            }
            assert!(seen.iter().any(|s| s.is_terminal()), "{start} cannot end");
        }
    }

    #[test]
    fn docs_show_the_same_table() {
        let doc = include_str!("../../docs/state-machine.md");
        assert!(
            doc.contains(&table_markdown()),
            "docs/state-machine.md is out of date; regenerate with `vmpilot generate state-table`:\n{}",
            table_markdown()
        );
    }
}
