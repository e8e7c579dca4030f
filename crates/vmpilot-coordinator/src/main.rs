//! `vmpilot-coordinator`: the reference coordinator. Parse flags, load the config, run until
//! SIGTERM/SIGINT; errors are printed once, here. See docs/coordinator.md.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmpilot_coordinator::config::{Config, DEFAULT_CONFIG};

/// The reference coordinator for vmpilot: receives the pilots' signed lease events, keeps
/// nodes, leases and the event log in SQLite, serves an API and a status page, and submits
/// pilots to the batch system.
#[derive(Parser, Debug)]
#[command(name = "vmpilot-coordinator", version)]
struct Args {
    /// Config file (TOML).
    #[arg(long, env = "VMPILOT_COORDINATOR_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Validate the config (secrets, token, pool) and exit without serving.
    #[arg(long)]
    check_config: bool,
    /// Print the secret of node NODE, derived from the first of `node_master_secret_files`,
    /// for that node's `coordinator.secret_file`, and exit.
    #[arg(long, value_name = "NODE")]
    node_secret: Option<String>,
}

/// Exit statuses: 0 stopped cleanly, 1 failed while running, 2 unusable config.
const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmpilot-coordinator: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(node) = &args.node_secret {
        if let Some(problem) = vmpilot_protocol::lease_id::node_name_problem(node) {
            eprintln!("vmpilot-coordinator: --node-secret: the node name {problem}");
            return ExitCode::from(EXIT_CONFIG);
        }
        let Some(master) = config.node_masters.first() else {
            eprintln!(
                "vmpilot-coordinator: --node-secret needs `node_master_secret_files` in {}\n\nhint: generate a master with `openssl rand -hex 32`, list it there (mode 0600)",
                config.source.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        };
        println!(
            "{}",
            vmpilot_protocol::signature::node_secret_text(master, node)
        );
        return ExitCode::SUCCESS;
    }
    if args.check_config {
        println!(
            "config {} is valid: listen {} ({}), database {}, {} secret(s), operator endpoints {}, pool {}, {} guest template(s)",
            config.source.display(),
            config.listen,
            if config.tls.is_some() {
                "https"
            } else {
                "plain http"
            },
            config.database.display(),
            config.secrets.len(),
            if config.admin_token.is_some() {
                "enabled"
            } else {
                "disabled"
            },
            if config.pool.is_some() {
                "configured"
            } else {
                "not configured"
            },
            config.guests.as_ref().map_or(0, |g| g.templates.len()),
        );
        return ExitCode::SUCCESS;
    }
    // Two workers suit the expected machines; SQLite writes run on their own thread.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmpilot-coordinator: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let result = runtime.block_on(vmpilot_coordinator::run(config, |addr| {
        // One machine-readable line on stdout, so scripts can find a port chosen with :0.
        println!("listening on {scheme}://{addr}");
        let _ = std::io::stdout().flush();
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmpilot-coordinator: {e:#}");
            let code = match e {
                vmpilot_coordinator::CoordError::Config(_) => EXIT_CONFIG,
                _ => EXIT_RUNTIME,
            };
            ExitCode::from(code)
        }
    }
}
