//! Talking to the coordinator (the VM cloud service): events, their signature, the durable
//! outbox they wait in, and the HTTP client that delivers them.
//!
//! The rule that shapes all of it: the coordinator never delays a lease. Events are written
//! to the spool first and delivered in the background; a coordinator that is down, slow or
//! failing only makes the spool grow, and a later pilot run or `recover` delivers the rest,
//! oldest first. Event ids make re-delivery harmless on the coordinator's side.

pub mod client;
pub mod directive;
pub mod event;
pub mod outbox;
pub mod report;
pub mod spool;

/// Request and reply signatures live in the protocol crate, shared with the coordinator.
pub use vmpilot_protocol::signature;
