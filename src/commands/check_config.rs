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
    let probe = store.dir().join(".check-config");
    crate::fsutil::write_atomic(&probe, b"ok")
        .with_context(|| format!("state directory {} is not writable", store.dir().display()))?;
    let _ = std::fs::remove_file(&probe);
    if let Some(c) = &config.coordinator {
        let secret = Secret::from_file(&c.secret_file)?;
        if let Some(ca) = &c.ca_file {
            crate::coordinator::client::CoordinatorClient::with_ca_file(
                &c.url,
                secret,
                c.timeout.get(),
                ca,
            )?;
        }
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
