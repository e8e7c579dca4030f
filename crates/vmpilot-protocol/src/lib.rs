//! The vmpilot protocol: what a pilot and a coordinator must agree on, and nothing of either
//! side's logic. It imports nothing from the pilot, so the pilot, the reference coordinator
//! and any other coordinator can depend on it alone.
//!
//! - [`lease_id`]: lease ids (also file names on the node) and node names (host names);
//! - [`state`]: lease states and end reasons;
//! - [`event`]: the events a pilot sends, guest fates, the node's hypervisor;
//! - [`directive`]: what a coordinator may ask of a lease in its reply;
//! - [`signature`]: HMAC-SHA256 request and reply signatures, secrets and per-node keys;
//! - [`guest_metadata`]: the `<metadata>` element that marks a libvirt guest as a lease's.
//!
//! Still to move here (issue #14): the coordinator's own reading of events (today mirror
//! types in its `message` module).

pub mod directive;
pub mod event;
pub mod guest_metadata;
pub mod lease_id;
pub mod signature;
pub mod state;
