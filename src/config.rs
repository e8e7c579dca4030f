//! The config file: `RawConfig` is what the user wrote, `Config` is what vmpilot runs with.
//!
//! The raw layer only checks what the user typed (unknown keys, wrong types, bad units);
//! `Config::resolve` checks values against each other and against the environment that
//! can be known without touching the host. Both fail before anything on the node changes,
//! and every error names the file, the key and what to do.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lrm::LrmKind;
use vmpilot_common::units::{Duration, MemSize};

/// Default state directory: lease records, spool, simulated host, logs.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vmpilot";

/// A config problem the user has to fix. Exit status: usage/config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error(
        "cannot read config {path}: {source}\n\nhint: check the path and its permissions, or pass --config"
    )]
    Read {
        /// The config path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("config {path}: {detail}\nhint: every key and its default is listed in docs/config.md")]
    Parse {
        /// The config path.
        path: PathBuf,
        /// toml's message, which names the key and line.
        detail: String,
    },
    /// A value is well-formed but impossible.
    #[error("config {path}: key `{key}`: {problem}\n\nhint: {hint}")]
    Invalid {
        /// The config path (or `<command line>` for flags).
        path: PathBuf,
        /// The dotted key, e.g. `lease.grace`.
        key: String,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        hint: String,
    },
}

pub use vmpilot_protocol::event::HostBackend;

/// What happens to a lease's guests when the lease ends.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UnreservePolicy {
    /// ACPI shutdown, destroy what still runs when the grace is used up.
    Shutdown,
    /// Save the guest's memory to disk so it can be resumed elsewhere.
    Suspend,
    /// Stop at once.
    Destroy,
}

/// What happens when a reserved lease's running guests use more than it was given.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OverBudgetPolicy {
    /// Log it and tell the coordinator (an `over-budget` event); touch no guest.
    Report,
    /// Report it, and destroy the lease's most recently started guests until it is back
    /// within budget.
    StopNewest,
}

impl fmt::Display for OverBudgetPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OverBudgetPolicy::Report => "report",
            OverBudgetPolicy::StopNewest => "stop-newest",
        })
    }
}

/// The file as written. Unknown keys are errors (a typo must not silently fall back to a
/// default on a production node).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    state_dir: Option<PathBuf>,
    node_name: Option<String>,
    lease: RawLease,
    host: RawHost,
    coordinator: RawCoordinator,
    lrm: RawLrm,
    log: RawLog,
    metrics: RawMetrics,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    textfile: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLrm {
    kind: Option<LrmKind>,
    safety_margin: Option<Duration>,
    command_timeout: Option<Duration>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLease {
    grace: Option<Duration>,
    lock_timeout: Option<Duration>,
    max_guests: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct RawHost {
    backend: Option<HostBackend>,
    on_unreserve: Option<UnreservePolicy>,
    over_budget: Option<OverBudgetPolicy>,
    exclusive: Option<bool>,
    host_reserve: Option<MemSize>,
    guest_overhead: Option<MemSize>,
    simulated: RawSimulated,
    libvirt: RawLibvirt,
    xen: RawXen,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLibvirt {
    uri: Option<String>,
    hugepages: Option<bool>,
    hugepages_path: Option<PathBuf>,
    fence: Option<bool>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct RawXen {
    xl: Option<PathBuf>,
    dom0_min_memory: Option<MemSize>,
    balloon_timeout: Option<Duration>,
    command_timeout: Option<Duration>,
    save_dir: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSimulated {
    memory: Option<MemSize>,
    cpus: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct RawCoordinator {
    url: Option<String>,
    secret_file: Option<PathBuf>,
    timeout: Option<Duration>,
    allow_plain_http: Option<bool>,
    heartbeat_interval: Option<Duration>,
    ca_file: Option<PathBuf>,
    proxy: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    file: Option<bool>,
    level: Option<String>,
}

/// The validated config every command runs with.
#[derive(Serialize, Debug, Clone)]
pub struct Config {
    /// Where the config came from (`<defaults>` when no file was read).
    #[serde(skip)]
    pub source: PathBuf,
    /// Lease records, spool, simulated host state and logs live here.
    pub state_dir: PathBuf,
    /// This node's name in events and status; the short hostname by default.
    pub node_name: String,
    /// Lease settings.
    pub lease: LeaseConfig,
    /// Host backend settings.
    pub host: HostConfig,
    /// Coordinator settings; `None` when no coordinator is configured (events are logged only).
    pub coordinator: Option<CoordinatorConfig>,
    /// Batch system settings.
    pub lrm: LrmConfig,
    /// Logging settings.
    pub log: LogConfig,
    /// Prometheus textfile-collector file rewritten on every transition (`[metrics]
    /// textfile`); `None`: no metrics.
    pub metrics_textfile: Option<PathBuf>,
}

/// `[lrm]`.
#[derive(Serialize, Debug, Clone)]
pub struct LrmConfig {
    /// Which batch system; `auto` detects it from the environment.
    pub kind: LrmKind,
    /// Taken off the job's walltime end: the lease must be gone this long before the batch
    /// system would kill the job.
    pub safety_margin: Duration,
    /// Bound on every batch-system command.
    pub command_timeout: Duration,
}

/// `[lease]`.
#[derive(Serialize, Debug, Clone)]
pub struct LeaseConfig {
    /// Time before the deadline at which unreserving starts, so guests stop in time.
    pub grace: Duration,
    /// How long to wait for the node lock before giving up with the holder's name.
    pub lock_timeout: Duration,
    /// Guests one lease may run; each costs `host.guest_overhead` in admission.
    pub max_guests: u32,
}

/// `[host]`.
#[derive(Serialize, Debug, Clone)]
pub struct HostConfig {
    /// Which backend.
    pub backend: HostBackend,
    /// What happens to guests at lease end.
    pub on_unreserve: UnreservePolicy,
    /// What happens when the lease's guests use more than it was given.
    pub over_budget: OverBudgetPolicy,
    /// Every guest on the host belongs to the (single) lease.
    pub exclusive: bool,
    /// Memory never handed to guests (host OS, batch daemons).
    pub host_reserve: MemSize,
    /// Hypervisor overhead counted per guest (QEMU's own memory, page tables).
    pub guest_overhead: MemSize,
    /// The simulated host's size.
    pub simulated: SimulatedConfig,
    /// libvirt settings (`backend = "libvirt"`).
    pub libvirt: LibvirtConfig,
    /// Xen settings (`backend = "xen"`).
    pub xen: XenConfig,
}

/// `[host.libvirt]`.
#[derive(Serialize, Debug, Clone)]
pub struct LibvirtConfig {
    /// Connection URI, e.g. `qemu:///system`.
    pub uri: String,
    /// Grow the kernel's hugepage pool by each lease's memory while it is reserved.
    pub hugepages: bool,
    /// The sysctl file holding the 2 MiB hugepage pool size (injectable for tests).
    pub hugepages_path: PathBuf,
    /// Pin each lease's running guests to the lease's CPUs and cap each one's memory at its
    /// size + `host.guest_overhead`, so the lease's guests cannot reach beyond what it holds.
    pub fence: bool,
}

/// `[host.xen]`.
#[derive(Serialize, Debug, Clone)]
pub struct XenConfig {
    /// The `xl` program (a name looked up in `PATH`, or a path).
    pub xl: PathBuf,
    /// dom0 is never ballooned below this.
    pub dom0_min_memory: MemSize,
    /// How long dom0 may take to reach a new balloon target.
    pub balloon_timeout: Duration,
    /// Bound on every single `xl` call; the child is killed when it is exceeded.
    pub command_timeout: Duration,
    /// Where `xl save` writes suspended guests; `{state_dir}/xen-save` when unset.
    pub save_dir: Option<PathBuf>,
}

/// `[host.simulated]`.
#[derive(Serialize, Debug, Clone, Copy)]
pub struct SimulatedConfig {
    /// Total memory of the pretend host.
    pub memory: MemSize,
    /// CPUs of the pretend host.
    pub cpus: u32,
}

/// `[coordinator]`, present only when a URL is set.
#[derive(Serialize, Debug, Clone)]
pub struct CoordinatorConfig {
    /// Base URL; events go to `{url}/v1/events`.
    pub url: String,
    /// File holding the shared HMAC secret (first line).
    pub secret_file: PathBuf,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Mean time between heartbeats while reserved (each is jittered by ±10 %).
    pub heartbeat_interval: Duration,
    /// PEM file of CA certificates trusted for the coordinator's HTTPS, in addition to the
    /// built-in web roots (a site's private CA); `None`: the web roots only.
    pub ca_file: Option<PathBuf>,
    /// The HTTP(S) proxy to the coordinator, if the site needs one. Only this names a
    /// proxy: `HTTP(S)_PROXY`/`ALL_PROXY` in the job's environment are the submitter's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
}

/// `[log]`.
#[derive(Serialize, Debug, Clone)]
pub struct LogConfig {
    /// Also append logs to `{state_dir}/vmpilot.log` (batch systems often cut job output).
    pub file: bool,
    /// Default level filter (`RUST_LOG` overrides).
    pub level: String,
}

impl RawConfig {
    /// Parse TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }

    /// Read the file. A missing file is fine only at the default path (built-in defaults).
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(RawConfig::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Overrides from global flags that apply to every command.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--host`.
    pub backend: Option<HostBackend>,
    /// `--coordinator`.
    pub coordinator_url: Option<String>,
    /// `--grace`.
    pub grace: Option<Duration>,
}

/// Is `filter` levels and `target=level` pairs only? The config is read by root commands,
/// and `tracing`'s full filter syntax (span and field filters with regexes) can take seconds
/// to compile on a crafted value (found by the `config` fuzz target). `RUST_LOG` is held
/// to the same syntax (`commands::init_logging`).
pub fn is_simple_log_filter(filter: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let level_ok = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    filter.len() <= 256
        && filter.split(',').all(|d| match d.trim().split_once('=') {
            None => level_ok(d.trim()),
            Some((target, level)) => {
                !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
                    && level_ok(level)
            }
        })
}

impl Config {
    /// Validate `raw`, apply flag overrides, and fill in defaults.
    pub fn resolve(raw: RawConfig, source: &Path, o: &Overrides) -> Result<Config, ConfigError> {
        let invalid = |key: &str, problem: String, hint: &str| ConfigError::Invalid {
            path: source.to_path_buf(),
            key: key.to_string(),
            problem,
            hint: hint.to_string(),
        };
        let state_dir = o
            .state_dir
            .clone()
            .or(raw.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() {
            return Err(invalid(
                "state_dir",
                format!("`{}` is not an absolute path", state_dir.display()),
                "use an absolute path such as /var/lib/vmpilot",
            ));
        }
        let node_name = match raw.node_name {
            Some(n) if n.trim().is_empty() => {
                return Err(invalid(
                    "node_name",
                    "is empty".into(),
                    "remove the key to use the hostname",
                ));
            }
            Some(n) => n,
            None => short_hostname(),
        };
        if let Some(problem) = crate::lease::record::node_name_problem(&node_name) {
            return Err(invalid(
                "node_name",
                problem,
                "set node_name to the node's host name as the batch system knows it",
            ));
        }
        let lease = resolve_lease(raw.lease, o, &invalid)?;
        let host = resolve_host(raw.host, o, &invalid)?;
        let url = o.coordinator_url.clone().or(raw.coordinator.url.clone());
        let coordinator = match url.filter(|u| !u.trim().is_empty()) {
            None => None,
            Some(url) => Some(resolve_coordinator(url, raw.coordinator, &invalid)?),
        };
        let lrm = LrmConfig {
            kind: raw.lrm.kind.unwrap_or(LrmKind::Auto),
            safety_margin: raw.lrm.safety_margin.unwrap_or(Duration::from_secs(30)),
            command_timeout: raw.lrm.command_timeout.unwrap_or(Duration::from_secs(10)),
        };
        if lrm.command_timeout.get().is_zero() {
            return Err(invalid(
                "lrm.command_timeout",
                "is zero".into(),
                "batch-system commands need time to answer; the default is 10s",
            ));
        }
        let log = LogConfig {
            file: raw.log.file.unwrap_or(true),
            level: raw.log.level.unwrap_or_else(|| "info".into()),
        };
        if !is_simple_log_filter(&log.level)
            || tracing_subscriber::EnvFilter::try_new(&log.level).is_err()
        {
            return Err(invalid(
                "log.level",
                format!("`{}` is not a log filter", log.level.escape_debug()),
                "use error, warn, info, debug or trace, or `target=level` pairs separated by commas (span filters belong in RUST_LOG)",
            ));
        }
        let metrics_textfile = raw.metrics.textfile;
        if let Some(p) = &metrics_textfile
            && (!p.is_absolute() || p.extension().is_none_or(|e| e != "prom"))
        {
            return Err(invalid(
                "metrics.textfile",
                format!("`{}` is not an absolute path ending in .prom", p.display()),
                "node_exporter's textfile collector reads *.prom files, e.g. /var/lib/node_exporter/textfile/vmpilot.prom",
            ));
        }
        Ok(Config {
            source: source.to_path_buf(),
            state_dir,
            node_name,
            lease,
            host,
            coordinator,
            lrm,
            log,
            metrics_textfile,
        })
    }

    /// Read, parse and resolve in one step (what every command does first).
    pub fn load(path: &Path, explicit: bool, o: &Overrides) -> Result<Config, ConfigError> {
        let raw = RawConfig::load(path, explicit)?;
        Config::resolve(raw, path, o)
    }
}

type Invalid<'a> = dyn Fn(&str, String, &str) -> ConfigError + 'a;

fn resolve_lease(
    raw: RawLease,
    o: &Overrides,
    invalid: &Invalid,
) -> Result<LeaseConfig, ConfigError> {
    let grace = o.grace.or(raw.grace).unwrap_or(Duration::from_secs(60));
    if grace.get().is_zero() {
        return Err(invalid(
            "lease.grace",
            "is zero: guests would get no time to stop".into(),
            "set a grace of a few seconds at least, e.g. grace = \"30s\"",
        ));
    }
    let max_guests = raw.max_guests.unwrap_or(4);
    if max_guests == 0 {
        return Err(invalid(
            "lease.max_guests",
            "is zero".into(),
            "a lease must be allowed at least one guest",
        ));
    }
    Ok(LeaseConfig {
        grace,
        lock_timeout: raw.lock_timeout.unwrap_or(Duration::from_secs(30)),
        max_guests,
    })
}

/// The least per-guest overhead a fenced libvirt guest may be given: QEMU's own memory
/// beyond the guest's (measured ~50 MiB for a 128 MiB TCG guest) must fit under the cap.
const MIN_FENCED_OVERHEAD: MemSize = MemSize(64);

fn resolve_host(raw: RawHost, o: &Overrides, invalid: &Invalid) -> Result<HostConfig, ConfigError> {
    let simulated = SimulatedConfig {
        memory: raw.simulated.memory.unwrap_or(MemSize(16 * 1024)),
        cpus: raw.simulated.cpus.unwrap_or(8),
    };
    let host_reserve = raw.host_reserve.unwrap_or(MemSize(1024));
    let backend = o.backend.or(raw.backend).unwrap_or(HostBackend::Libvirt);
    if backend == HostBackend::Simulated {
        if simulated.memory <= host_reserve {
            return Err(invalid(
                "host.simulated.memory",
                format!(
                    "{} is not more than host.host_reserve ({host_reserve}): nothing is left for guests",
                    simulated.memory
                ),
                "raise host.simulated.memory or lower host.host_reserve",
            ));
        }
        if simulated.cpus == 0 {
            return Err(invalid(
                "host.simulated.cpus",
                "is zero".into(),
                "give the simulated host at least one CPU",
            ));
        }
    }
    let guest_overhead = raw.guest_overhead.unwrap_or(MemSize(128));
    let libvirt = resolve_libvirt(raw.libvirt, invalid)?;
    if backend == HostBackend::Libvirt && libvirt.fence && guest_overhead < MIN_FENCED_OVERHEAD {
        return Err(invalid(
            "host.guest_overhead",
            format!(
                "{guest_overhead} is below {MIN_FENCED_OVERHEAD}: with host.libvirt.fence = true each guest's memory is capped \
                 at its size + this overhead, and QEMU alone needs more (~50 MiB measured), so every guest would fail to be \
                 fenced or be killed by the kernel"
            ),
            "raise host.guest_overhead (128M is the default), or set host.libvirt.fence = false",
        ));
    }
    Ok(HostConfig {
        backend,
        on_unreserve: raw.on_unreserve.unwrap_or(UnreservePolicy::Shutdown),
        over_budget: raw.over_budget.unwrap_or(OverBudgetPolicy::Report),
        exclusive: raw.exclusive.unwrap_or(false),
        host_reserve,
        guest_overhead,
        simulated,
        libvirt,
        xen: resolve_xen(raw.xen, invalid)?,
    })
}

fn resolve_libvirt(raw: RawLibvirt, invalid: &Invalid) -> Result<LibvirtConfig, ConfigError> {
    let uri = raw.uri.unwrap_or_else(|| "qemu:///system".into());
    if uri.trim().is_empty() {
        return Err(invalid(
            "host.libvirt.uri",
            "is empty".into(),
            "remove the key to use qemu:///system, or write a libvirt URI",
        ));
    }
    let hugepages_path = raw
        .hugepages_path
        .unwrap_or_else(|| PathBuf::from("/proc/sys/vm/nr_hugepages"));
    if !hugepages_path.is_absolute() {
        return Err(invalid(
            "host.libvirt.hugepages_path",
            format!("`{}` is not an absolute path", hugepages_path.display()),
            "remove the key to use /proc/sys/vm/nr_hugepages",
        ));
    }
    Ok(LibvirtConfig {
        uri,
        hugepages: raw.hugepages.unwrap_or(false),
        hugepages_path,
        fence: raw.fence.unwrap_or(true),
    })
}

fn resolve_xen(raw: RawXen, invalid: &Invalid) -> Result<XenConfig, ConfigError> {
    let xl = raw.xl.unwrap_or_else(|| PathBuf::from("xl"));
    if xl.as_os_str().is_empty() {
        return Err(invalid(
            "host.xen.xl",
            "is empty".into(),
            "remove the key to run `xl` from PATH, or give the path to xl",
        ));
    }
    let balloon_timeout = raw.balloon_timeout.unwrap_or(Duration::from_secs(30));
    let command_timeout = raw.command_timeout.unwrap_or(Duration::from_secs(30));
    for (key, value) in [
        ("host.xen.balloon_timeout", balloon_timeout),
        ("host.xen.command_timeout", command_timeout),
    ] {
        if value.get().is_zero() {
            return Err(invalid(
                key,
                "is zero".into(),
                "give xl a few seconds at least, e.g. \"30s\"",
            ));
        }
    }
    if let Some(dir) = raw.save_dir.as_ref().filter(|d| !d.is_absolute()) {
        return Err(invalid(
            "host.xen.save_dir",
            format!("`{}` is not an absolute path", dir.display()),
            "use an absolute path such as /var/lib/vmpilot/xen-save",
        ));
    }
    Ok(XenConfig {
        xl,
        dom0_min_memory: raw.dom0_min_memory.unwrap_or(MemSize(1024)),
        balloon_timeout,
        command_timeout,
        save_dir: raw.save_dir,
    })
}

fn resolve_coordinator(
    url: String,
    raw: RawCoordinator,
    invalid: &Invalid,
) -> Result<CoordinatorConfig, ConfigError> {
    let parsed = reqwest::Url::parse(&url).map_err(|e| {
        invalid(
            "coordinator.url",
            format!("`{url}` is not a URL: {e}"),
            "write it like https://cloud.example.org:8443",
        )
    })?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback || raw.allow_plain_http.unwrap_or(false) => {}
        "http" => {
            return Err(invalid(
                "coordinator.url",
                format!(
                    "`{url}` is plain HTTP to a remote host: signed events would travel in clear"
                ),
                "use https://, or set coordinator.allow_plain_http = true on a trusted network",
            ));
        }
        other => {
            return Err(invalid(
                "coordinator.url",
                format!("scheme `{other}` is not supported"),
                "use https:// (or http:// on loopback)",
            ));
        }
    }
    let heartbeat_interval = raw.heartbeat_interval.unwrap_or(Duration::from_secs(30));
    if heartbeat_interval.get() < std::time::Duration::from_secs(1) {
        return Err(invalid(
            "coordinator.heartbeat_interval",
            format!("{heartbeat_interval} is shorter than a second"),
            "heartbeats every few tens of seconds are plenty; the default is 30s",
        ));
    }
    if let Some(ca) = &raw.ca_file {
        if !ca.is_absolute() {
            return Err(invalid(
                "coordinator.ca_file",
                format!("`{}` is not an absolute path", ca.display()),
                "use an absolute path such as /etc/vmpilot/coordinator-ca.pem",
            ));
        }
        if parsed.scheme() != "https" {
            return Err(invalid(
                "coordinator.ca_file",
                format!("is set but `{url}` is not https://: it would never be used"),
                "use an https:// coordinator URL, or remove ca_file",
            ));
        }
    }
    if let Some(proxy) = &raw.proxy {
        let ok = url::Url::parse(proxy)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if !ok {
            return Err(invalid(
                "coordinator.proxy",
                format!("`{proxy}` is not an http:// or https:// URL"),
                "use the proxy's URL, e.g. http://proxy.example:3128, or remove proxy",
            ));
        }
    }
    let Some(secret_file) = raw.secret_file else {
        return Err(invalid(
            "coordinator.secret_file",
            "is missing: events must be signed".into(),
            "point it at a file (mode 0600) holding the site's shared secret",
        ));
    };
    Ok(CoordinatorConfig {
        url: url.trim_end_matches('/').to_string(),
        secret_file,
        timeout: raw.timeout.unwrap_or(Duration::from_secs(5)),
        heartbeat_interval,
        ca_file: raw.ca_file,
        proxy: raw.proxy,
    })
}

/// The node's short host name, as Slurm's `SlurmdNodeName` defaults to.
pub fn short_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.split('.').next().unwrap_or_default().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<Config, ConfigError> {
        let path = Path::new("/etc/vmpilot/vmpilot.toml");
        Config::resolve(RawConfig::parse(text, path)?, path, &Overrides::default())
    }

    fn err(text: &str) -> String {
        resolve(text).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = resolve("").unwrap();
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(c.host.backend, HostBackend::Libvirt);
        assert_eq!(c.host.on_unreserve, UnreservePolicy::Shutdown);
        assert_eq!(c.host.over_budget, OverBudgetPolicy::Report);
        assert_eq!(c.lease.grace, Duration::from_secs(60));
        assert!(c.coordinator.is_none());
    }

    /// Found by the `config` fuzz target: a span filter with a crafted field pattern made
    /// `EnvFilter` compile a regex for over 10 s. The config takes levels and
    /// `target=level` pairs only, and refuses the rest at once.
    #[test]
    fn log_levels_are_plain_directives_only() {
        for ok in [
            "info",
            "DEBUG",
            "warn,vmpilot=debug",
            "vmpilot::pilot=trace,hyper=off",
        ] {
            let c = resolve(&format!("[log]\nlevel = \"{ok}\"\n")).unwrap();
            assert_eq!(c.log.level, ok);
        }
        let crafted = format!(
            "din[te{}{{G=GG{}GGGGG1mmmmm}}mmmmmm",
            "G".repeat(33),
            ".".repeat(50)
        );
        for bad in [
            crafted.as_str(),
            "loud",
            "x[span]=info",
            "=info",
            "vmpilot=loud",
            &"a".repeat(300),
        ] {
            let e = err(&format!("[log]\nlevel = \"{bad}\"\n"));
            assert!(e.contains("log.level") && e.contains("hint:"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err("[lease]\ngrase = \"10s\"\n");
        assert!(e.contains("grase"), "{e}");
        assert!(e.contains("/etc/vmpilot/vmpilot.toml"), "{e}");
        assert!(e.contains("docs/config.md"), "{e}");
    }

    #[test]
    fn wrong_types_are_named() {
        let e = err("[host]\nexclusive = \"yes\"\n");
        assert!(e.contains("exclusive"), "{e}");
        let e = err("[host]\nbackend = \"vmware\"\n");
        assert!(e.contains("vmware"), "{e}");
        let e = err("[lease]\ngrace = \"soon\"\n");
        assert!(e.contains("soon") && e.contains("grace"), "{e}");
    }

    #[test]
    fn impossible_values_are_rejected_with_key_and_hint() {
        let e = err("state_dir = \"relative/dir\"\n");
        assert!(e.contains("`state_dir`") && e.contains("hint:"), "{e}");
        let e = err("[lease]\ngrace = 0\n");
        assert!(e.contains("`lease.grace`"), "{e}");
        let e = err(
            "[host]\nbackend = \"simulated\"\nhost_reserve = \"2G\"\n[host.simulated]\nmemory = \"1G\"\n",
        );
        assert!(e.contains("`host.simulated.memory`"), "{e}");
    }

    #[test]
    fn over_budget_policy_is_read_and_checked() {
        let c = resolve("[host]\nover_budget = \"stop-newest\"\n").unwrap();
        assert_eq!(c.host.over_budget, OverBudgetPolicy::StopNewest);
        assert_eq!(c.host.over_budget.to_string(), "stop-newest");
        let c = resolve("[host]\nover_budget = \"report\"\n").unwrap();
        assert_eq!(c.host.over_budget, OverBudgetPolicy::Report);
        let e = err("[host]\nover_budget = \"stop-oldest\"\n");
        assert!(
            e.contains("stop-oldest") && e.contains("over_budget"),
            "{e}"
        );
    }

    #[test]
    fn coordinator_needs_a_secret_and_safe_transport() {
        let e = err("[coordinator]\nurl = \"https://c.example\"\n");
        assert!(e.contains("secret_file"), "{e}");
        let e = err("[coordinator]\nurl = \"http://c.example\"\nsecret_file = \"/s\"\n");
        assert!(e.contains("plain HTTP"), "{e}");
        let ok = resolve("[coordinator]\nurl = \"http://127.0.0.1:9/\"\nsecret_file = \"/s\"\n")
            .unwrap();
        assert_eq!(ok.coordinator.unwrap().url, "http://127.0.0.1:9");
        let e = err("[coordinator]\nurl = \"ftp://x\"\nsecret_file = \"/s\"\n");
        assert!(e.contains("ftp"), "{e}");
    }

    #[test]
    fn coordinator_ca_file_must_be_absolute_and_for_https() {
        let ok = resolve(
            "[coordinator]\nurl = \"https://c.example\"\nsecret_file = \"/s\"\nca_file = \"/etc/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(
            ok.coordinator.unwrap().ca_file.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );
        let e = err(
            "[coordinator]\nurl = \"https://c.example\"\nsecret_file = \"/s\"\nca_file = \"ca.pem\"\n",
        );
        assert!(
            e.contains("`coordinator.ca_file`") && e.contains("absolute"),
            "{e}"
        );
        let e = err(
            "[coordinator]\nurl = \"http://127.0.0.1:9\"\nsecret_file = \"/s\"\nca_file = \"/etc/ca.pem\"\n",
        );
        assert!(
            e.contains("`coordinator.ca_file`") && e.contains("https"),
            "{e}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let path = Path::new("/x.toml");
        let raw = RawConfig::parse("[host]\nbackend = \"xen\"\n", path).unwrap();
        let o = Overrides {
            backend: Some(HostBackend::Simulated),
            grace: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let c = Config::resolve(raw, path, &o).unwrap();
        assert_eq!(c.host.backend, HostBackend::Simulated);
        assert_eq!(c.lease.grace, Duration::from_secs(5));
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../docs/vmpilot.example.toml");
        resolve(text).unwrap();
    }

    #[test]
    fn libvirt_fencing_is_on_by_default_and_needs_room_for_qemu() {
        let c = resolve("").unwrap();
        assert!(c.host.libvirt.fence);
        let c = resolve("[host.libvirt]\nfence = false\n").unwrap();
        assert!(!c.host.libvirt.fence);
        let e = err("[host]\nguest_overhead = \"32M\"\n");
        assert!(
            e.contains("`host.guest_overhead`") && e.contains("host.libvirt.fence = false"),
            "{e}"
        );
        // A small overhead is fine when nothing is capped, or on another backend.
        resolve("[host]\nguest_overhead = \"32M\"\n[host.libvirt]\nfence = false\n").unwrap();
        resolve("[host]\nbackend = \"xen\"\nguest_overhead = \"32M\"\n").unwrap();
        let e = err("[host.libvirt]\nfence = \"yes\"\n");
        assert!(e.contains("fence"), "{e}");
    }

    #[test]
    fn libvirt_and_xen_sections_have_defaults_and_are_checked() {
        let c = resolve("").unwrap();
        assert_eq!(c.host.libvirt.uri, "qemu:///system");
        assert!(!c.host.libvirt.hugepages);
        assert_eq!(
            c.host.libvirt.hugepages_path,
            Path::new("/proc/sys/vm/nr_hugepages")
        );
        assert_eq!(c.host.xen.xl, Path::new("xl"));
        assert_eq!(c.host.xen.dom0_min_memory, MemSize(1024));
        assert_eq!(c.host.xen.balloon_timeout, Duration::from_secs(30));
        let c = resolve(
            "[host.libvirt]\nuri = \"test:///default\"\nhugepages = true\n[host.xen]\nxl = \"/opt/xl\"\ndom0_min_memory = \"2G\"\nballoon_timeout = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(c.host.libvirt.uri, "test:///default");
        assert!(c.host.libvirt.hugepages);
        assert_eq!(c.host.xen.dom0_min_memory, MemSize(2048));
        let e = err("[host.libvirt]\nurl = \"qemu:///system\"\n");
        assert!(e.contains("url"), "{e}");
        let e = err("[host.libvirt]\nuri = \" \"\n");
        assert!(e.contains("`host.libvirt.uri`"), "{e}");
        let e = err("[host.libvirt]\nhugepages_path = \"nr\"\n");
        assert!(e.contains("`host.libvirt.hugepages_path`"), "{e}");
        let e = err("[host.xen]\nballoon_timeout = 0\n");
        assert!(e.contains("`host.xen.balloon_timeout`"), "{e}");
        let e = err("[host.xen]\nsave_dir = \"rel\"\n");
        assert!(e.contains("`host.xen.save_dir`"), "{e}");
        let e = err("[host.xen]\ndom0_min = \"1G\"\n");
        assert!(e.contains("dom0_min"), "{e}");
    }

    #[test]
    fn missing_file_is_an_error_only_when_explicit() {
        let p = Path::new("/nonexistent/vmpilot.toml");
        assert!(RawConfig::load(p, false).is_ok());
        let e = RawConfig::load(p, true).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/vmpilot.toml"), "{e}");
    }
}
