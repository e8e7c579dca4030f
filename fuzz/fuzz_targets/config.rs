//! The pilot's config file: `RawConfig::parse` (TOML, unknown keys, units) and then
//! `Config::resolve` (values checked against each other). Any text must give a config or
//! a `ConfigError`, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmpilot::config::{Config, Overrides, RawConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/vmpilot/vmpilot.toml");
    let Ok(raw) = RawConfig::parse(text, path) else {
        return;
    };
    if let Ok(config) = Config::resolve(raw, path, &Overrides::default()) {
        // What `check-config` prints must be printable for every accepted config.
        let _ = format!("{config:?}");
    }
});
