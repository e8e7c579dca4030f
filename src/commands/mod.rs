//! One thin file per subcommand: load the config, call into the library, map the result
//! to an exit status. Anything longer belongs in a library module.

pub mod check_config;
pub mod generate;
pub mod kill_all;
pub mod recover;
pub mod run;
pub mod simulated;
pub mod status;

use std::io::IsTerminal;
use std::path::PathBuf;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use crate::cli::{Cli, Command, DEFAULT_CONFIG_PATH};
use crate::config::{Config, HostBackend, Overrides};
use crate::exit::ExitStatus;

/// Run the parsed command line.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitStatus> {
    let globals = Globals {
        config: cli.config,
        state_dir: cli.state_dir,
    };
    match cli.command {
        Command::Run(args) => run::run(&globals, args).await,
        Command::Status(args) => status::status(&globals, args),
        Command::CheckConfig => check_config::check_config(&globals),
        Command::Recover(args) => recover::recover(&globals, args).await,
        Command::KillAll(args) => kill_all::kill_all(&globals, args).await,
        Command::Generate(args) => generate::generate(args),
        Command::Simulated(args) => simulated::simulated(&globals, args),
    }
}

/// The host backend this invocation will open, if it opens one: `vmpilot` has no libvirt
/// and hands a libvirt invocation to `vmpilot-libvirt` before anything runs
/// ([`crate::entry`]). `None` when the command opens no host or the config does not load
/// (the command itself then reports why).
pub fn host_backend(cli: &Cli) -> Option<HostBackend> {
    let globals = Globals {
        config: cli.config.clone(),
        state_dir: cli.state_dir.clone(),
    };
    let overrides = match &cli.command {
        Command::Run(args) => Overrides {
            backend: args.host,
            ..Default::default()
        },
        Command::Recover(_) | Command::KillAll(_) | Command::CheckConfig => Overrides::default(),
        Command::Status(_) | Command::Generate(_) | Command::Simulated(_) => return None,
    };
    globals.load(overrides).ok().map(|c| c.host.backend)
}

/// Options every command shares.
#[derive(Debug)]
pub struct Globals {
    config: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

impl Globals {
    /// Load and validate the config with these overrides (state dir comes from globals).
    pub fn load(&self, mut overrides: Overrides) -> Result<Config, crate::config::ConfigError> {
        overrides.state_dir = self.state_dir.clone();
        let (path, explicit) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        Config::load(&path, explicit, &overrides)
    }
}

/// Send logs to stderr (above the live status line) and, if configured and possible, to
/// `{state_dir}/vmpilot.log`. `RUST_LOG` overrides the configured level.
///
/// `RUST_LOG` comes from the environment, which for a pilot is the job's (`--export=ALL`
/// brings the submitter's): it is held to the same plain syntax as `[log] level`, because
/// tracing's span/field filters can take seconds to compile on a crafted value.
pub fn init_logging(config: &Config) {
    // The HTTP stack's debug output (connection pooling) drowns vmpilot's own lines.
    let quiet = "hyper=warn,hyper_util=warn,reqwest=warn,rustls=warn";
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let env_ok = from_env
        .as_deref()
        .is_some_and(crate::config::is_simple_log_filter);
    if from_env.is_some() && !env_ok {
        eprintln!(
            "vmpilot: warning: RUST_LOG ignored: only levels and target=level pairs are taken (using [log] level = {:?})",
            config.log.level
        );
    }
    let filter = || {
        from_env
            .as_deref()
            .filter(|_| env_ok)
            .and_then(|v| EnvFilter::try_new(v).ok())
            .unwrap_or_else(|| EnvFilter::new(format!("{},{quiet}", config.log.level)))
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(|| crate::progress::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_filter(filter());
    // Opened through the state directory's descriptor, never through a symlink: root
    // appends to this file, and the pilot account may own the directory.
    let file = config.log.file.then(|| {
        crate::safe_dir::SafeDir::open(&config.state_dir)
            .and_then(|dir| dir.open_append("vmpilot.log", u64::MAX))
            .map_err(|e| {
                eprintln!(
                    "vmpilot: warning: not logging to {}: {e}",
                    config.state_dir.join("vmpilot.log").display()
                )
            })
            .ok()
    });
    let file_layer = file.flatten().map(|f| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
            .with_target(false)
            .with_filter(filter())
    });
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file_layer)
        .try_init();
}
