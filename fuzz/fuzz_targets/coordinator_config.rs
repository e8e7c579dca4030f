//! The reference coordinator's config: `refcoord::config::RawConfig::parse` and `resolve`.
//! `resolve` reads the secret files, so a valid secret and token exist next to the
//! (pretend) config path; everything else comes from the input.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmpilot_coordinator::config::RawConfig;

/// A private directory with `secret` and `token` (0600) for `resolve` to read.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("vmpilot-fuzz-coord-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for f in ["secret", "token"] {
            let p = d.join(f);
            std::fs::write(&p, "fuzz-secret-0123456789abcdef\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = dir().join("coordinator.toml");
    let Ok(raw) = RawConfig::parse(text, &path) else {
        return;
    };
    let _ = raw.resolve(&path);
});
