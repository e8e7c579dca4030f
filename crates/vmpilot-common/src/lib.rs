//! What the pilot and the reference coordinator both need that is not the protocol:
//!
//! - [`command`]: running an external tool (`squeue`, `qstat`, `xl`, a submit script) with a
//!   time bound that kills its whole process group, keeping a capped stderr for the error;
//! - [`units`]: the sizes (`4G`) and durations (`15m`) operators write in both config files.

pub mod command;
pub mod units;
