//! What the coordinator may ask of a lease in a reply: give the node back now (`release`) or
//! by an earlier time (`shorten`).
//!
//! Directives are fenced by the lease epoch: a directive for another epoch — say a stale
//! "release" meant for an earlier lease that reused the id on this node — is ignored and
//! logged, never applied. Replies the pilot cannot read are ignored too: the pilot keeps its
//! own deadline whatever the coordinator says or fails to say.

pub use vmpilot_protocol::directive::Directive;

use crate::lease::record::LeaseId;

/// The directives in a reply body that are meant for exactly this lease and epoch.
/// Everything else — other leases, stale epochs, unknown types, unreadable bodies — is logged
/// and dropped.
pub fn for_lease(reply: &str, lease: &LeaseId, epoch: u64) -> Vec<Directive> {
    let body: serde_json::Value = match serde_json::from_str(reply) {
        Ok(v) => v,
        Err(_) if reply.trim().is_empty() => return Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, "coordinator reply is not JSON; ignoring it");
            return Vec::new();
        }
    };
    let Some(list) = body.get("directives").and_then(|d| d.as_array()) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|raw| match serde_json::from_value::<Directive>(raw.clone()) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(directive = %raw, error = %e, "ignoring a directive vmpilot does not understand");
                None
            }
        })
        .filter(|d| {
            let (id, e) = d.target();
            let mine = id == lease && e == epoch;
            if !mine {
                tracing::warn!(directive = ?d, lease = %lease, epoch, "ignoring a directive for another lease or a stale epoch");
            }
            mine
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directives_for_this_lease_and_epoch_survive() {
        let lease: LeaseId = "l1".parse().unwrap();
        let reply = r#"{"status":"applied","directives":[
            {"type":"release","lease_id":"l1","epoch":1},
            {"type":"release","lease_id":"l1","epoch":2},
            {"type":"release","lease_id":"other","epoch":2},
            {"type":"reboot","lease_id":"l1","epoch":2},
            {"type":"shorten","lease_id":"l1","epoch":2,"deadline":"2026-11-22T20:00:00Z"}
        ]}"#;
        let got = for_lease(reply, &lease, 2);
        assert_eq!(got.len(), 2);
        assert!(matches!(got[0], Directive::Release { epoch: 2, .. }));
        assert!(matches!(got[1], Directive::Shorten { epoch: 2, .. }));
    }

    #[test]
    fn garbage_replies_are_ignored() {
        let lease: LeaseId = "l1".parse().unwrap();
        for reply in [
            "",
            "not json",
            "[]",
            "{\"directives\": 5}",
            "{\"directives\": [1, \"x\"]}",
        ] {
            assert!(for_lease(reply, &lease, 1).is_empty(), "{reply}");
        }
    }
}
