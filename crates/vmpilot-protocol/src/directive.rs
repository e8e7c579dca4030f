//! What a coordinator may ask of a lease in its reply to an event: give the node back now
//! (`release`) or by an earlier time (`shorten`). A directive names the lease and epoch it is
//! for; a pilot applies only its own (fencing by epoch).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::lease_id::LeaseId;

/// One directive.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Directive {
    /// End the lease now.
    Release {
        /// The lease.
        lease_id: LeaseId,
        /// The epoch it is meant for.
        epoch: u64,
    },
    /// A new, earlier deadline.
    Shorten {
        /// The lease.
        lease_id: LeaseId,
        /// The epoch it is meant for.
        epoch: u64,
        /// The new deadline (ignored if later than the current one).
        #[serde(with = "time::serde::rfc3339")]
        deadline: OffsetDateTime,
    },
}

impl Directive {
    /// The lease and epoch it is meant for: a pilot applies it only if both are its own.
    pub fn target(&self) -> (&LeaseId, u64) {
        match self {
            Directive::Release { lease_id, epoch }
            | Directive::Shorten {
                lease_id, epoch, ..
            } => (lease_id, *epoch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The coordinator writes and the pilot reads the same type, so what one sends the
    /// other parses back unchanged, in the documented shape.
    #[test]
    fn a_directive_reads_back_as_it_was_written() {
        let lease: LeaseId = "slot-7".parse().unwrap();
        let deadline = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        for d in [
            Directive::Release {
                lease_id: lease.clone(),
                epoch: 3,
            },
            Directive::Shorten {
                lease_id: lease.clone(),
                epoch: 3,
                deadline,
            },
        ] {
            let text = serde_json::to_string(&d).unwrap();
            assert_eq!(
                serde_json::from_str::<Directive>(&text).unwrap(),
                d,
                "{text}"
            );
            assert_eq!(d.target(), (&lease, 3));
        }
        assert_eq!(
            serde_json::to_string(&Directive::Release {
                lease_id: lease,
                epoch: 3
            })
            .unwrap(),
            r#"{"type":"release","lease_id":"slot-7","epoch":3}"#
        );
    }
}
