//! `vmpilot check-config`: validate the config and the environment, print what was
//! resolved, change nothing on the host.

use anyhow::Context;

use crate::config::Overrides;
use crate::coordinator::signature::Secret;
use crate::exit::ExitStatus;
use crate::lease::store::Store;

use super::Globals;

/// Entry point.
pub fn check_config(globals: &Globals) -> anyhow::Result<ExitStatus> {
    let config = globals.load(Overrides::default())?;
    let store = Store::open(&config.state_dir)?;
    // Prove the state directory takes a durable write, the way lease records are written.
    store
        .safe_dir()
        .write_atomic(".check-config", b"ok")
        .map_err(|source| crate::lease::store::StoreError::NotWritable {
            path: store.dir().to_path_buf(),
            source,
        })?;
    let _ = store.safe_dir().remove(".check-config");
    if let Some(c) = &config.coordinator {
        let secret = Secret::from_file(&c.secret_file)?;
        crate::coordinator::client::CoordinatorClient::from_config(c, secret)?;
    }
    let host = crate::host::open(&config)?;
    let capacity = host.capacity()?;
    println!("# config: {}", config.source.display());
    print!(
        "{}",
        toml::to_string_pretty(&config).context("cannot print the config")?
    );
    println!(
        "\n# host ({}): {} MiB memory ({} MiB free), {} CPUs ({} free)",
        host.backend(),
        capacity.total_memory_mib,
        capacity.free_memory_mib,
        capacity.total_cpus,
        capacity.free_cpus
    );
    println!("# ok");
    Ok(ExitStatus::Success)
}
