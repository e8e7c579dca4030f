//! `vmpilot`: parse, run, exit. Errors are printed once, here.

use std::process::ExitCode;

use clap::Parser;
use vmpilot::cli::Cli;
use vmpilot::exit::ExitStatus;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let status = match runtime.block_on(vmpilot::commands::dispatch(cli)) {
        Ok(status) => status,
        Err(err) => {
            eprintln!("vmpilot: {}", render(&err));
            ExitStatus::from_error(&err)
        }
    };
    ExitCode::from(status.code())
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
