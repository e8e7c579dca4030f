//! Running external tools (`scontrol`, `squeue`, `qstat`, `xl`...): always with a timeout,
//! always keeping stderr, so a failure can be explained in the error itself.

use std::fmt;
use std::process::Stdio;
use std::time::Duration;

/// Longest stderr kept in an error.
const MAX_STDERR: usize = 2000;

/// A command line, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

impl fmt::Display for Argv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// Why an external command did not give us its output.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program is not installed or not on PATH.
    #[error(
        "`{program}` was not found on PATH\n\nhint: install it or fix PATH for the process running vmpilot"
    )]
    NotFound {
        /// Program name.
        program: String,
    },
    /// It ran and failed.
    #[error("`{argv}` failed ({status}):\n{stderr}")]
    Failed {
        /// The command line.
        argv: Argv,
        /// Exit status as text.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// It did not finish in time and was killed.
    #[error("`{argv}` did not finish within {after:?} and was killed")]
    Timeout {
        /// The command line.
        argv: Argv,
        /// The bound.
        after: Duration,
    },
    /// It could not be started.
    #[error("cannot run `{argv}`: {source}")]
    Spawn {
        /// The command line.
        argv: Argv,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Run `program args...` with `timeout`; return stdout on exit status 0.
pub async fn output(program: &str, args: &[&str], timeout: Duration) -> Result<String, ExecError> {
    let argv = Argv(
        std::iter::once(program)
            .chain(args.iter().copied())
            .map(String::from)
            .collect(),
    );
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ExecError::NotFound {
                program: program.to_string(),
            },
            _ => ExecError::Spawn {
                argv: argv.clone(),
                source,
            },
        })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(source)) => return Err(ExecError::Spawn { argv, source }),
        // Dropping the future drops the child, which kill_on_drop kills.
        Err(_) => {
            return Err(ExecError::Timeout {
                argv,
                after: timeout,
            });
        }
    };
    if !out.status.success() {
        let stderr: String = String::from_utf8_lossy(&out.stderr)
            .trim()
            .chars()
            .take(MAX_STDERR)
            .collect();
        return Err(ExecError::Failed {
            argv,
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_stdout_stderr_and_bounds_time() {
        let out = output("sh", &["-c", "echo hi"], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(out, "hi\n");
        let e = output(
            "sh",
            &["-c", "echo boom >&2; exit 3"],
            Duration::from_secs(5),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("boom") && e.contains("exit status: 3") && e.contains("sh -c"),
            "{e}"
        );
        let e = output("sleep", &["10"], Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(e, ExecError::Timeout { .. }), "{e}");
        let e = output("no-such-program-vmpilot", &[], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, ExecError::NotFound { .. }), "{e}");
    }
}
