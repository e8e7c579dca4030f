//! vmpilot: a batch job that lends its node to a VM cloud and gives it back exactly as it
//! found it.
//!
//! The lease state machine (`lease`) is the heart; `pilot` drives one lease, `recovery`
//! finishes leases whose pilot is gone, and both end leases through `release`. `host`
//! abstracts the hypervisor, `coordinator` the cloud service's callbacks.

pub mod admission;
pub mod cli;
pub mod commands;
pub mod config;
pub mod coordinator;
pub mod crashpoint;
pub mod deadline;
pub mod entry;
pub mod exit;
pub mod fsutil;
pub mod host;
pub mod kill_all;
pub mod kill_request;
pub mod lease;
pub mod lrm;
pub mod metrics;
pub mod pilot;
pub mod process;
pub mod progress;
pub mod recovery;
pub mod release;
pub mod safe_dir;
pub mod signals;
