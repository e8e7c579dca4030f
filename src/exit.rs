//! Exit statuses: an interface, because batch systems show them to admins in job
//! accounting (`sacct`, `qstat -f`). Listed in docs/exit-codes.md and the man page.

use crate::config::ConfigError;
use crate::coordinator::client::CaFileError;
use crate::coordinator::signature::SecretError;
use crate::coordinator::spool::SpoolError;
use crate::host::HostError;
use crate::lease::record::BadLeaseId;
use crate::lease::store::StoreError;
use crate::lrm::LrmError;
use vmpilot_common::units::UnitError;

/// How vmpilot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    /// The lease ended as planned and the node is restored.
    Success = 0,
    /// A bug: an error vmpilot has no category for. Please report it.
    Internal = 1,
    /// Bad arguments or config, or a request the host or job cannot satisfy; nothing changed.
    Usage = 2,
    /// The environment is not usable (state dir, lock, secret, hypervisor unreachable);
    /// nothing changed.
    Environment = 3,
    /// The host failed; the lease record says whether the node was restored.
    HostFailure = 4,
    /// Ended by a signal (cancel, preemption) and the node was restored cleanly.
    SignalRestored = 5,
    /// Ended by a signal but the node could not be restored; it needs `recover` or an admin.
    SignalNotRestored = 6,
    /// `run` refused to start because a kill-all is in progress on the node; nothing changed.
    Fenced = 7,
}

impl ExitStatus {
    /// Every status with its meaning, for docs and the man page.
    pub const TABLE: [(ExitStatus, &'static str); 8] = [
        (
            ExitStatus::Success,
            "the lease ended as planned and the node is restored",
        ),
        (
            ExitStatus::Internal,
            "internal error (a bug; please report it)",
        ),
        (
            ExitStatus::Usage,
            "bad arguments or config, or a request the host or job cannot satisfy; nothing was changed",
        ),
        (
            ExitStatus::Environment,
            "the environment is not usable (state directory, node lock, secret, hypervisor unreachable); nothing was changed",
        ),
        (
            ExitStatus::HostFailure,
            "the host failed; `vmpilot status` shows whether the node was restored",
        ),
        (
            ExitStatus::SignalRestored,
            "ended by a signal (cancel, preemption) and the node was restored cleanly",
        ),
        (
            ExitStatus::SignalNotRestored,
            "ended by a signal and the node was NOT restored; run `vmpilot recover`",
        ),
        (
            ExitStatus::Fenced,
            "`run` refused to start: a kill-all is in progress on this node (the fence lasts while it runs); nothing was changed",
        ),
    ];

    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Classify an error by the first typed error in its chain.
    pub fn from_error(err: &anyhow::Error) -> ExitStatus {
        for cause in err.chain() {
            if cause.is::<crate::kill_request::Fenced>() {
                return ExitStatus::Fenced;
            }
            if cause.is::<ConfigError>() || cause.is::<UnitError>() || cause.is::<BadLeaseId>() {
                return ExitStatus::Usage;
            }
            if cause.is::<StoreError>()
                || cause.is::<SecretError>()
                || cause.is::<CaFileError>()
                || cause.is::<SpoolError>()
                || cause.is::<LrmError>()
            {
                return ExitStatus::Environment;
            }
            if let Some(h) = cause.downcast_ref::<HostError>() {
                return host_status(h);
            }
            if cause.is::<UsageError>() {
                return ExitStatus::Usage;
            }
            if cause.is::<EnvironmentError>() {
                return ExitStatus::Environment;
            }
        }
        // No typed error: an OS error that is the machine's state, not a bug (a full or
        // read-only disk, a denied permission), is still the environment.
        let environment = err.chain().any(|cause| {
            cause.downcast_ref::<std::io::Error>().is_some_and(|e| {
                use std::io::ErrorKind::*;
                matches!(
                    e.kind(),
                    StorageFull | QuotaExceeded | ReadOnlyFilesystem | PermissionDenied
                )
            })
        });
        if environment {
            return ExitStatus::Environment;
        }
        ExitStatus::Internal
    }
}

/// A host error's status. Exhaustive on purpose: a new kind of host failure does not compile
/// until someone decides what an admin reading `sacct` should make of it.
fn host_status(error: &HostError) -> ExitStatus {
    match error {
        HostError::Admission { .. } => ExitStatus::Usage,
        HostError::Unreachable { .. }
        | HostError::Unsupported { .. }
        | HostError::StateWrite { .. } => ExitStatus::Environment,
        HostError::Operation { .. } | HostError::Timeout { .. } | HostError::NoSuchGuest(_) => {
            ExitStatus::HostFailure
        }
    }
}

/// A request that cannot be honoured as given (e.g. grace longer than the walltime).
#[derive(Debug, thiserror::Error)]
#[error("{problem}\n\nhint: {hint}")]
pub struct UsageError {
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub hint: String,
}

/// The environment vmpilot runs in is not usable (not root, lease already active...).
#[derive(Debug, thiserror::Error)]
#[error("{problem}\n\nhint: {hint}")]
pub struct EnvironmentError {
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub hint: String,
}

/// Markdown table of exit statuses, embedded in docs/exit-codes.md.
pub fn table_markdown() -> String {
    let mut out = String::from("| code | meaning |\n|---|---|\n");
    for (status, meaning) in ExitStatus::TABLE {
        out.push_str(&format!("| {} | {meaning} |\n", status.code()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_list_every_exit_status() {
        let doc = include_str!("../docs/exit-codes.md");
        assert!(
            doc.contains(&table_markdown()),
            "docs/exit-codes.md is out of date:\n{}",
            table_markdown()
        );
    }

    #[test]
    fn errors_map_to_their_category_through_context() {
        let e =
            anyhow::Error::new(HostError::Admission { detail: "x".into() }).context("reserving");
        assert_eq!(ExitStatus::from_error(&e), ExitStatus::Usage);
        let e = anyhow::Error::new(HostError::Timeout {
            op: "x".into(),
            after: std::time::Duration::from_secs(1),
        });
        assert_eq!(ExitStatus::from_error(&e), ExitStatus::HostFailure);
        let e = anyhow::Error::new(HostError::StateWrite {
            op: "open".into(),
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        });
        assert_eq!(ExitStatus::from_error(&e), ExitStatus::Environment);
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem))
            .context("writing something");
        assert_eq!(ExitStatus::from_error(&e), ExitStatus::Environment);
        assert_eq!(
            ExitStatus::from_error(&anyhow::anyhow!("??")),
            ExitStatus::Internal
        );
    }
}
