//! The vmpilot protocol: what a pilot and a coordinator must agree on, and nothing of either
//! side's logic. It imports nothing from the pilot, so the pilot, the reference coordinator
//! and any other coordinator can depend on it alone.
//!
//! - [`lease_id`]: lease ids (also file names on the node) and node names (host names);
//! - [`signature`]: HMAC-SHA256 request and reply signatures, secrets and per-node keys.
//!
//! Issue #14 moves the rest of the wire format here next: lease states, end reasons, guest
//! fates, events, directives and the guest `<metadata>` element.

pub mod lease_id;
pub mod signature;
