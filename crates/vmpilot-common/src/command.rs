//! Running external tools (`squeue`, `qstat`, `xl`, a pool's submit script): always with a
//! timeout that kills the tool's whole process group (a shell script's children too), always
//! keeping a capped stderr, so a failure is explained in the error itself. One runner with
//! two front ends: [`output`] for async code, [`output_blocking`] for the blocking host
//! backends (Xen's `xl`).

use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

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
    let argv = argv(program, args);
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills the tool and whatever it started.
        .process_group(0)
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|source| spawn_error(program, &argv, source))?;
    let group = child.id().map(group_of);
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => finish(argv, out.status, &out.stdout, &out.stderr),
        Ok(Err(source)) => Err(ExecError::Spawn { argv, source }),
        // Dropping the future drops the child (kill_on_drop); the group goes too.
        Err(_) => {
            if let Some(group) = group {
                let _ = killpg(group, Signal::SIGKILL);
            }
            Err(ExecError::Timeout {
                argv,
                after: timeout,
            })
        }
    }
}

/// [`output`] for blocking code: the same bound, group kill and error.
pub fn output_blocking(
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<String, ExecError> {
    let argv = argv(program, args);
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| spawn_error(program, &argv, source))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let until = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                let _ = killpg(group_of(child.id()), Signal::SIGKILL);
                let _ = child.wait();
                return Err(ExecError::Timeout {
                    argv,
                    after: timeout,
                });
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    finish(argv, status, &stdout, &stderr)
}

fn argv(program: &str, args: &[&str]) -> Argv {
    Argv(
        std::iter::once(program)
            .chain(args.iter().copied())
            .map(String::from)
            .collect(),
    )
}

/// The child leads its own group (`process_group(0)`), so its pid is the group id.
fn group_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

fn spawn_error(program: &str, argv: &Argv, source: std::io::Error) -> ExecError {
    match source.kind() {
        std::io::ErrorKind::NotFound => ExecError::NotFound {
            program: program.to_string(),
        },
        _ => ExecError::Spawn {
            argv: argv.clone(),
            source,
        },
    }
}

fn finish(
    argv: Argv,
    status: ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<String, ExecError> {
    if !status.success() {
        let stderr: String = String::from_utf8_lossy(stderr)
            .trim()
            .chars()
            .take(MAX_STDERR)
            .collect();
        return Err(ExecError::Failed {
            argv,
            status: status.to_string(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(stdout).into_owned())
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

    #[test]
    fn the_blocking_front_end_behaves_the_same() {
        let out = output_blocking("sh", &["-c", "echo hi"], Duration::from_secs(5)).unwrap();
        assert_eq!(out, "hi\n");
        let e = output_blocking(
            "sh",
            &["-c", "echo boom >&2; exit 3"],
            Duration::from_secs(5),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("boom") && e.contains("exit status: 3"), "{e}");
        let e =
            output_blocking("no-such-program-vmpilot", &[], Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ExecError::NotFound { .. }), "{e}");
    }

    /// A timeout kills the whole group: a script's background child must not outlive it
    /// (it would hold the pipe open, and on a node keep running after vmpilot gave up).
    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group_on_both_front_ends() {
        let dir = tempfile_dir();
        for blocking in [false, true] {
            let marker = format!("{dir}/child-{blocking}.pid");
            let script = format!("sleep 30 & echo $! > {marker}; wait");
            let e = if blocking {
                output_blocking("sh", &["-c", &script], Duration::from_millis(300)).unwrap_err()
            } else {
                output("sh", &["-c", &script], Duration::from_millis(300))
                    .await
                    .unwrap_err()
            };
            assert!(matches!(e, ExecError::Timeout { .. }), "{e}");
            let pid: i32 = std::fs::read_to_string(&marker)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let gone = (0..100).any(|_| {
                std::thread::sleep(Duration::from_millis(20));
                // A zombie is reaped by init; a live `sleep` still has a cmdline.
                std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .map(|c| c.is_empty())
                    .unwrap_or(true)
            });
            assert!(
                gone,
                "the script's child {pid} outlived the timeout (blocking: {blocking})"
            );
        }
    }

    fn tempfile_dir() -> String {
        let dir = std::env::temp_dir().join(format!("vmpilot-command-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.display().to_string()
    }
}
