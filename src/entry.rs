//! The process entry both pilot binaries share: parse, hand libvirt work to the binary that
//! has libvirt, run, exit. Errors are printed once, here.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::config::HostBackend;
use crate::exit::ExitStatus;

/// The binary with the libvirt backend, installed beside `vmpilot`.
pub const LIBVIRT_BINARY: &str = "vmpilot-libvirt";

/// `main` of `vmpilot` and of `vmpilot-libvirt` (which provides its backend first).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !crate::host::has_libvirt()
        && crate::commands::host_backend(&cli) == Some(HostBackend::Libvirt)
    {
        // Nothing has run yet: no log, no lock, no record. The same process goes on as
        // `vmpilot-libvirt` (same pid, so the batch system's signals still reach it).
        let err = exec_libvirt_binary();
        eprintln!("vmpilot: {err}");
        return ExitCode::from(ExitStatus::Environment.code());
    }
    // One thread is enough for a pilot; host calls that block run on tokio's blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmpilot: cannot start the async runtime: {e}");
            return ExitCode::from(ExitStatus::Environment.code());
        }
    };
    let status = match runtime.block_on(crate::commands::dispatch(cli)) {
        Ok(status) => status,
        Err(err) => {
            eprintln!("vmpilot: {}", render(&err));
            ExitStatus::from_error(&err)
        }
    };
    ExitCode::from(status.code())
}

/// Replace this process with [`LIBVIRT_BINARY`] from this binary's own directory, with the
/// same arguments and environment. Returns only on failure.
fn exec_libvirt_binary() -> String {
    let helper = match libvirt_binary() {
        Ok(path) => path,
        Err(why) => return why,
    };
    let mut args = std::env::args_os();
    // The command line stays the one the user (or batch script) wrote: `ps` and clap's
    // messages show `vmpilot run ...`; /proc/PID/exe names the helper.
    let arg0 = args.next().unwrap_or_else(|| OsString::from("vmpilot"));
    let err = std::process::Command::new(&helper)
        .arg0(arg0)
        .args(args)
        .exec();
    format!(
        "this node's backend is libvirt, and `{}` could not be started: {err}",
        helper.display()
    )
}

/// Where [`LIBVIRT_BINARY`] is, proven safe to run: beside this executable (not found on a
/// PATH the job controls), a regular file, and neither it nor its directory writable by
/// anyone but root or this user, because root runs it from the epilog and boot unit.
fn libvirt_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe()
        .map_err(|e| format!("cannot find this executable to locate `{LIBVIRT_BINARY}`: {e}"))?;
    let dir = me
        .parent()
        .ok_or_else(|| format!("{} has no directory", me.display()))?;
    let helper = dir.join(LIBVIRT_BINARY);
    let missing_hint = "\n\nhint: the libvirt backend ships as `vmpilot-libvirt` beside `vmpilot` (the package installs both; from source, `cargo build --workspace`)";
    let euid = nix::unistd::geteuid().as_raw();
    check_trusted(dir, euid, true).map_err(|why| format!("{why}{missing_hint}"))?;
    check_trusted(&helper, euid, false).map_err(|why| format!("{why}{missing_hint}"))?;
    Ok(helper)
}

/// `path` is owned by root or `euid`, is not writable by group or others, and is a regular
/// file (or, with `is_dir`, a directory).
fn check_trusted(path: &Path, euid: u32, is_dir: bool) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let kind_ok = if is_dir {
        meta.is_dir()
    } else {
        meta.is_file()
    };
    if !kind_ok {
        return Err(format!(
            "{} is not a {}",
            path.display(),
            if is_dir { "directory" } else { "regular file" }
        ));
    }
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "{} is owned by uid {}, not by root or this user; refusing to run it",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by group or others (mode {:o}); refusing to run it",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The error and its causes on one line, like `{:#}`, but without repeating a cause that an
/// outer message already quotes (vmpilot's typed errors include their OS error and hint).
fn render(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn only_a_binary_nobody_else_can_write_is_run() {
        let dir = tempfile::tempdir().unwrap();
        let euid = nix::unistd::geteuid().as_raw();
        let bin = dir.path().join(LIBVIRT_BINARY);
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_trusted(&bin, euid, false).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_trusted(&bin, euid, false).unwrap_err();
        assert!(e.contains("writable by group or others"), "{e}");
        // Owned by someone else (here: we pretend to be another uid).
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        if euid != 0 {
            // Owned by us, so only a foreign euid can show the refusal.
            let e = check_trusted(&bin, euid + 1, false).unwrap_err();
            assert!(e.contains("not by root or this user"), "{e}");
        }
        let e = check_trusted(dir.path(), euid, false).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
