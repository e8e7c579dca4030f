//! The coordinator's TOML config: [`RawConfig`] is what the operator wrote (unknown keys are
//! errors that name the key), [`Config`] is validated and resolved (secrets and the admin
//! token read, paths checked).
//!
//! ```toml
//! listen = "127.0.0.1:8750"
//! database = "/var/lib/vmpilot-coordinator/coordinator.db"
//! secret_files = ["/etc/vmpilot/coordinator.secret"]   # one or two (rotation)
//! admin_token_file = "/etc/vmpilot/coordinator.admin-token"
//! replay_window = "300s"
//! max_body_bytes = 65536
//! lost_after = "120s"
//!
//! [pool]
//! batch_system = "slurm"
//! submit_script = "/usr/share/vmpilot/slurm-scripts/vmpilot-submit"
//! target = 0
//!
//! [guests]                  # started on every reserved libvirt lease
//! templates = ["/etc/vmpilot/guests/small.xml"]
//! uri = "qemu+ssh://root@{node}/system"   # or, with the coordinator on the node:
//! # allowed_uris = ["qemu:///system"]     # reported URIs it may open, exactly
//!
//! [tls]                     # serve HTTPS (rustls) instead of plain HTTP
//! cert_file = "/etc/vmpilot/coordinator.crt"
//! key_file = "/etc/vmpilot/coordinator.key"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::guests::{GuestsConfig, Template, render};
use vmpilot_common::units;
use vmpilot_protocol::signature::{Secret, SecretError};

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8750";
/// Default database path.
pub const DEFAULT_DATABASE: &str = "/var/lib/vmpilot-coordinator/coordinator.db";
/// `max_connections` when not set: far above one connection per node of a large cluster.
/// At start the coordinator raises its descriptor limit to the hard limit and lowers the
/// cap if the descriptors would not cover it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// `heartbeat_retention` when not set.
pub const DEFAULT_HEARTBEAT_RETENTION: Duration = Duration::from_secs(7 * 86400);
/// Where the coordinator's config lives by default.
pub const DEFAULT_CONFIG: &str = "/etc/vmpilot/coordinator.toml";

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}\n\nhint: pass the right file with --config")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a value of the wrong type (toml's message names it).
    #[error("config {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml said, with line and key.
        detail: String,
    },
    /// A value that parses but cannot be used.
    #[error("config {path}: `{key}` {problem}\n\nhint: {hint}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong.
        problem: String,
        /// What to do.
        hint: &'static str,
    },
    /// A signing secret is unusable.
    #[error("config {path}: `secret_files`: {source}")]
    Secret {
        /// The config file.
        path: PathBuf,
        /// Why the secret cannot be used.
        source: SecretError,
    },
    /// The admin token is unusable.
    #[error("config {path}: `admin_token_file` {token}: {problem}\n\nhint: {hint}")]
    AdminToken {
        /// The config file.
        path: PathBuf,
        /// The token file.
        token: PathBuf,
        /// What is wrong.
        problem: String,
        /// What to do.
        hint: &'static str,
    },
}

/// What the operator wrote.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    listen: Option<String>,
    database: Option<PathBuf>,
    secret_files: Vec<PathBuf>,
    node_master_secret_files: Vec<PathBuf>,
    admin_token_file: Option<PathBuf>,
    replay_window: Option<units::Duration>,
    max_body_bytes: Option<usize>,
    lost_after: Option<units::Duration>,
    max_connections: Option<usize>,
    header_timeout: Option<units::Duration>,
    request_timeout: Option<units::Duration>,
    heartbeat_retention: Option<units::Duration>,
    protect_reads: Option<bool>,
    pool: Option<RawPool>,
    guests: Option<RawGuests>,
    tls: Option<RawTls>,
}

/// `[guests]` as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct RawGuests {
    templates: Vec<PathBuf>,
    uri: Option<String>,
    allowed_uris: Vec<String>,
}

/// `[tls]` as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// `[tls]`, validated: both files exist; the key is not readable by every user.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

/// `[pool]` as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct RawPool {
    batch_system: Option<String>,
    submit_script: Option<PathBuf>,
    target: u32,
    interval: Option<units::Duration>,
    max_submit_per_round: Option<u32>,
    submit_timeout: Option<units::Duration>,
    count_command: Option<Vec<String>>,
    memory: Option<String>,
    cpus: Option<u32>,
    time: Option<String>,
    partition: Option<String>,
    grace: Option<String>,
    node_config: Option<String>,
    coordinator_url: Option<String>,
    output: Option<String>,
    preemptible: bool,
}

/// The batch system pilots are submitted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchSystem {
    /// Slurm: `slurm-scripts/vmpilot-submit`, counted with `squeue`.
    Slurm,
    /// PBS/Torque: `pbs-scripts/vmpilot-submit`, counted with `qselect`.
    Pbs,
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for messages).
    pub source: PathBuf,
    /// Address to bind.
    pub listen: SocketAddr,
    /// SQLite database file.
    pub database: PathBuf,
    /// Accepted shared signing secrets (one, or two during a rotation): any node may sign
    /// as any node with them.
    pub secrets: Vec<Secret>,
    /// Node master secrets (one, or two during a rotation): an event claiming node N
    /// verifies only with N's key derived from one of them
    /// ([`vmpilot_protocol::signature::node_secret`]).
    pub node_masters: Vec<Secret>,
    /// Bearer token for the operator endpoints; `None` disables them.
    pub admin_token: Option<Secret>,
    /// Accepted distance between a signature's timestamp and our clock.
    pub replay_window: Duration,
    /// Largest accepted request body, bytes.
    pub max_body_bytes: usize,
    /// Silence after which a reserved lease is marked lost.
    pub lost_after: Duration,
    /// Open connections at most; more are closed at once (descriptors are finite).
    pub max_connections: usize,
    /// Longest wait for a request's headers (also: an idle keep-alive connection, a TLS
    /// handshake, a new connection's first request), so half-sent requests cannot pile up.
    pub header_timeout: Duration,
    /// Longest one request may take once its headers are in (reading the body included).
    pub request_timeout: Duration,
    /// Heartbeats older than this are deleted from the event log (the lease rows keep
    /// their last-seen time); every other event is kept.
    pub heartbeat_retention: Duration,
    /// Whether the read endpoints (status page, `GET /v1/...`) need the admin token too.
    pub protect_reads: bool,
    /// Pilot submission, when configured.
    pub pool: Option<PoolConfig>,
    /// Guest templates started on reserved leases, when configured.
    pub guests: Option<GuestsConfig>,
    /// HTTPS, when configured.
    pub tls: Option<TlsConfig>,
}

/// `[pool]`, validated.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Slurm or PBS.
    pub batch_system: BatchSystem,
    /// The project's `vmpilot-submit` for that batch system.
    pub submit_script: PathBuf,
    /// Pilots to keep queued or running (0: no background submission).
    pub target: u32,
    /// Time between pool checks.
    pub interval: Duration,
    /// At most this many submissions per check (a broken cluster must not get a flood).
    pub max_submit_per_round: u32,
    /// Longest one submit script (or count command) may take.
    pub submit_timeout: Duration,
    /// argv printing one queued/running pilot job id per line.
    pub count_command: Vec<String>,
    /// Defaults for each submission (`POST /v1/pilots` may override them).
    pub defaults: SubmitDefaults,
}

/// Per-pilot options passed to the submit script.
#[derive(Debug, Clone, Default)]
pub struct SubmitDefaults {
    /// `--memory`.
    pub memory: String,
    /// `--cpus`.
    pub cpus: u32,
    /// `--time`.
    pub time: String,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--grace`.
    pub grace: Option<String>,
    /// `--config` (the vmpilot config path on the node).
    pub node_config: Option<String>,
    /// `--coordinator` (how pilots reach this coordinator).
    pub coordinator_url: Option<String>,
    /// `--output` (the job log path on the node; `%j` is the job id).
    pub output: Option<String>,
    /// `--preemptible` (Slurm only).
    pub preemptible: bool,
}

impl RawConfig {
    /// Parse TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string().trim_end().to_string(),
        })
    }

    /// Read and parse the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validate and resolve: read the secrets and the admin token, apply defaults.
    pub fn resolve(self, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key, problem: String, hint| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            problem,
            hint,
        };
        let listen_text = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "listen",
                format!("`{listen_text}` is not an IP address and port"),
                "write e.g. \"127.0.0.1:8750\" (a host name is not accepted)",
            )
        })?;
        let too_many = self.secret_files.len() > 2 || self.node_master_secret_files.len() > 2;
        if too_many || (self.secret_files.is_empty() && self.node_master_secret_files.is_empty()) {
            return Err(invalid(
                "secret_files",
                format!(
                    "lists {} file(s) and node_master_secret_files {}; one or two of either (or both) are needed",
                    self.secret_files.len(),
                    self.node_master_secret_files.len()
                ),
                "list the site's shared secret, or node master secrets for per-node keys; during a rotation, the new and the old one",
            ));
        }
        let read = |files: &[PathBuf]| {
            files
                .iter()
                .map(|f| Secret::from_file(&resolve_path(path, f)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| ConfigError::Secret {
                    path: path.to_path_buf(),
                    source,
                })
        };
        let secrets = read(&self.secret_files)?;
        let node_masters = read(&self.node_master_secret_files)?;
        let admin_token = match &self.admin_token_file {
            Some(f) => Some(read_admin_token(path, &resolve_path(path, f))?),
            None => None,
        };
        let replay_window = self
            .replay_window
            .map_or(Duration::from_secs(300), |d| d.get());
        if replay_window < Duration::from_secs(1) {
            return Err(invalid(
                "replay_window",
                "is shorter than 1 s".into(),
                "keep it at least a few seconds above the clock skew between nodes",
            ));
        }
        let max_body_bytes = self.max_body_bytes.unwrap_or(64 * 1024);
        if max_body_bytes < 1024 {
            return Err(invalid(
                "max_body_bytes",
                format!("is {max_body_bytes}; events need at least 1024"),
                "the default, 65536, fits any event with many guests",
            ));
        }
        let lost_after = self
            .lost_after
            .map_or(Duration::from_secs(120), |d| d.get());
        if lost_after < Duration::from_secs(1) {
            return Err(invalid(
                "lost_after",
                "is shorter than 1 s".into(),
                "make it several heartbeat intervals (default 120s)",
            ));
        }
        let max_connections = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if !(16..=1_000_000).contains(&max_connections) {
            return Err(invalid(
                "max_connections",
                format!("is {max_connections}; it must be between 16 and 1000000"),
                "keep it above the number of nodes and below the process's descriptor limit (`ulimit -n`); the default is 4096",
            ));
        }
        let bounded = |key, value: Option<units::Duration>, default: u64| {
            let d = value.map_or(Duration::from_secs(default), |d| d.get());
            if d < Duration::from_secs(1) {
                Err(invalid(
                    key,
                    "is shorter than 1 s".into(),
                    "a pilot on a slow link needs a few seconds; the defaults are 10s (header_timeout) and 30s (request_timeout)",
                ))
            } else {
                Ok(d)
            }
        };
        let header_timeout = bounded("header_timeout", self.header_timeout, 10)?;
        let request_timeout = bounded("request_timeout", self.request_timeout, 30)?;
        let heartbeat_retention = self
            .heartbeat_retention
            .map_or(DEFAULT_HEARTBEAT_RETENTION, |d| d.get());
        if heartbeat_retention < Duration::from_secs(3600) {
            return Err(invalid(
                "heartbeat_retention",
                "is shorter than 1 h".into(),
                "heartbeats explain recent history; keep at least an hour (default 7d)",
            ));
        }
        let protect_reads = self.protect_reads.unwrap_or(false);
        if protect_reads && admin_token.is_none() {
            return Err(invalid(
                "protect_reads",
                "is true but no admin_token_file is set, so nobody could read".into(),
                "set admin_token_file, or protect_reads = false",
            ));
        }
        let pool = match self.pool {
            Some(p) => Some(resolve_pool(p, path)?),
            None => None,
        };
        let guests = match self.guests {
            Some(g) => Some(resolve_guests(g, path)?),
            None => None,
        };
        let tls = match self.tls {
            Some(t) => Some(resolve_tls(t, path)?),
            None => None,
        };
        Ok(Config {
            source: path.to_path_buf(),
            listen,
            database: self.database.map_or_else(
                || PathBuf::from(DEFAULT_DATABASE),
                |d| resolve_path(path, &d),
            ),
            secrets,
            node_masters,
            admin_token,
            replay_window,
            max_body_bytes,
            lost_after,
            max_connections,
            header_timeout,
            request_timeout,
            heartbeat_retention,
            protect_reads,
            pool,
            guests,
            tls,
        })
    }
}

impl Config {
    /// Load and resolve `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        RawConfig::load(path)?.resolve(path)
    }
}

/// Relative paths in the config are relative to the config file's directory.
fn resolve_path(config: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// The admin token: first line of a private file, at least 16 bytes.
fn read_admin_token(config: &Path, file: &Path) -> Result<Secret, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |problem: String, hint| ConfigError::AdminToken {
        path: config.to_path_buf(),
        token: file.to_path_buf(),
        problem,
        hint,
    };
    let meta = std::fs::metadata(file).map_err(|e| {
        err(
            e.to_string(),
            "create it with `openssl rand -hex 32`, mode 600",
        )
    })?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(err(
            "is readable by every user".into(),
            "chmod 600 the token file",
        ));
    }
    let text = std::fs::read_to_string(file).map_err(|e| {
        err(
            e.to_string(),
            "check that the coordinator's user may read it",
        )
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < 16 {
        return Err(err(
            "is shorter than 16 characters".into(),
            "generate one with `openssl rand -hex 32`",
        ));
    }
    Ok(Secret::new(token))
}

fn resolve_guests(raw: RawGuests, path: &Path) -> Result<GuestsConfig, ConfigError> {
    let invalid = |key, problem: String, hint| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        problem,
        hint,
    };
    if raw.templates.is_empty() {
        return Err(invalid(
            "guests.templates",
            "is empty".into(),
            "list libvirt domain XML files, or remove [guests]",
        ));
    }
    let probe = vmpilot_protocol::guest_metadata::GuestOwner {
        lease_id: "config-check".parse().expect("a valid lease id"),
        epoch: 0,
    };
    let mut templates: Vec<Template> = Vec::new();
    for file in &raw.templates {
        let file = resolve_path(path, file);
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= 32
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            })
            .ok_or_else(|| {
                invalid(
                    "guests.templates",
                    format!("{}: the file name must be 1-32 letters, digits, `_`, `-` or `.` before .xml", file.display()),
                    "the file's stem starts every domain name made from it; rename the file",
                )
            })?
            .to_string();
        if templates.iter().any(|t| t.name == name) {
            return Err(invalid(
                "guests.templates",
                format!("two templates are named `{name}`"),
                "give each template file a different name",
            ));
        }
        let xml = std::fs::read_to_string(&file).map_err(|e| {
            invalid(
                "guests.templates",
                format!("{}: {e}", file.display()),
                "check the path and that the coordinator's user may read it",
            )
        })?;
        if let Err(e) = render(&xml, &name, &probe) {
            return Err(invalid(
                "guests.templates",
                format!("{}: {e}", file.display()),
                "give a libvirt domain XML (`virsh dumpxml` of a working guest is a good start)",
            ));
        }
        templates.push(Template {
            name,
            path: file,
            xml,
        });
    }
    if let Some(uri) = &raw.uri
        && (uri.trim().is_empty() || !uri.contains(':'))
    {
        return Err(invalid(
            "guests.uri",
            format!("`{uri}` is not a libvirt URI"),
            "write e.g. \"qemu+ssh://root@{node}/system\"; {node} is replaced by the node name",
        ));
    }
    if let Some(uri) = &raw.uri
        && let Some(problem) = crate::guests::libvirt_uri_problem(&uri.replace("{node}", "node"))
    {
        return Err(invalid(
            "guests.uri",
            problem,
            "write e.g. \"qemu+ssh://root@{node}/system\", with no ?parameters and not the ext transport",
        ));
    }
    for uri in &raw.allowed_uris {
        if let Some(problem) = crate::guests::libvirt_uri_problem(uri) {
            return Err(invalid(
                "guests.allowed_uris",
                problem,
                "list exact node-local URIs such as \"qemu:///system\"",
            ));
        }
    }
    Ok(GuestsConfig {
        templates,
        uri: raw.uri,
        allowed_uris: raw.allowed_uris,
    })
}

fn resolve_tls(raw: RawTls, path: &Path) -> Result<TlsConfig, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let invalid = |key, problem: String, hint| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        problem,
        hint,
    };
    let (Some(cert), Some(key)) = (raw.cert_file, raw.key_file) else {
        return Err(invalid(
            "tls",
            "needs both `cert_file` and `key_file`".into(),
            "give the PEM certificate chain and its private key, or remove [tls]",
        ));
    };
    let cert_file = resolve_path(path, &cert);
    let key_file = resolve_path(path, &key);
    std::fs::metadata(&cert_file).map_err(|e| {
        invalid(
            "tls.cert_file",
            format!("{}: {e}", cert_file.display()),
            "point it at the PEM certificate chain",
        )
    })?;
    let meta = std::fs::metadata(&key_file).map_err(|e| {
        invalid(
            "tls.key_file",
            format!("{}: {e}", key_file.display()),
            "point it at the PEM private key",
        )
    })?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(invalid(
            "tls.key_file",
            format!("{} is readable by every user", key_file.display()),
            "chmod 600 the key file",
        ));
    }
    Ok(TlsConfig {
        cert_file,
        key_file,
    })
}

fn resolve_pool(raw: RawPool, path: &Path) -> Result<PoolConfig, ConfigError> {
    let invalid = |key, problem: String, hint| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        problem,
        hint,
    };
    let batch_system = match raw.batch_system.as_deref() {
        Some("slurm") => BatchSystem::Slurm,
        Some("pbs") => BatchSystem::Pbs,
        other => {
            return Err(invalid(
                "pool.batch_system",
                format!("is {other:?}"),
                "write \"slurm\" or \"pbs\"",
            ));
        }
    };
    let submit_script = raw.submit_script.map(|p| resolve_path(path, &p)).ok_or_else(|| {
        invalid(
            "pool.submit_script",
            "is missing".into(),
            "point it at the project's slurm-scripts/vmpilot-submit or pbs-scripts/vmpilot-submit",
        )
    })?;
    if raw.preemptible && batch_system == BatchSystem::Pbs {
        return Err(invalid(
            "pool.preemptible",
            "is only supported with Slurm".into(),
            "remove it, or use batch_system = \"slurm\"",
        ));
    }
    if let Some(out) = &raw.output
        && (!out.starts_with('/') || out.contains(char::is_whitespace))
    {
        return Err(invalid(
            "pool.output",
            format!("`{out}` is not an absolute path without spaces"),
            "write e.g. \"/var/log/vmpilot/pilot-%j.log\" (%j is the job id)",
        ));
    }
    // Only this account's jobs: the coordinator submits the pilots as itself, and a batch
    // user's job that is merely named `vmpilot` must not count as a queued pilot.
    let count_command = raw.count_command.unwrap_or_else(|| {
        let argv: Vec<&str> = match batch_system {
            BatchSystem::Slurm => vec!["squeue", "-h", "--me", "-n", "vmpilot", "-o", "%i"],
            BatchSystem::Pbs => vec!["qselect", "-N", "vmpilot", "-s", "QR"],
        };
        let mut argv: Vec<String> = argv.into_iter().map(String::from).collect();
        if batch_system == BatchSystem::Pbs
            && let Ok(Some(me)) = nix::unistd::User::from_uid(nix::unistd::Uid::current())
        {
            argv.extend(["-u".to_string(), me.name]);
        }
        argv
    });
    if count_command.is_empty() {
        return Err(invalid(
            "pool.count_command",
            "is empty".into(),
            "leave it out for the default, or give a program and its arguments",
        ));
    }
    Ok(PoolConfig {
        batch_system,
        submit_script,
        target: raw.target,
        interval: raw.interval.map_or(Duration::from_secs(60), |d| d.get()),
        max_submit_per_round: raw.max_submit_per_round.unwrap_or(10).max(1),
        submit_timeout: raw
            .submit_timeout
            .map_or(Duration::from_secs(90), |d| d.get()),
        count_command,
        defaults: SubmitDefaults {
            memory: raw.memory.unwrap_or_else(|| "2G".into()),
            cpus: raw.cpus.unwrap_or(1),
            time: raw.time.unwrap_or_else(|| "01:00:00".into()),
            partition: raw.partition,
            grace: raw.grace,
            node_config: raw.node_config,
            coordinator_url: raw.coordinator_url,
            output: raw.output,
            preemptible: raw.preemptible,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_secret() -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        (dir, secret)
    }

    fn resolve(dir: &Path, text: &str) -> Result<Config, ConfigError> {
        let path = dir.join("coordinator.toml");
        RawConfig::parse(text, &path)?.resolve(&path)
    }

    #[test]
    fn defaults_bind_loopback() {
        let (dir, _) = dir_with_secret();
        let c = resolve(dir.path(), "secret_files = [\"secret\"]\n").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.replay_window, Duration::from_secs(300));
        assert_eq!(c.max_body_bytes, 65536);
        assert_eq!(c.lost_after, Duration::from_secs(120));
        assert!(c.admin_token.is_none() && c.pool.is_none());
    }

    #[test]
    fn unknown_keys_are_named() {
        let (dir, _) = dir_with_secret();
        let e = resolve(
            dir.path(),
            "secret_files = [\"secret\"]\nlisten_addr = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listen_addr"), "{e}");
        let e = resolve(
            dir.path(),
            "secret_files = [\"secret\"]\n[pool]\nbatch_system = \"slurm\"\nsubmit_script = \"/x\"\ntargt = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("targt"), "{e}");
    }

    #[test]
    fn bad_values_say_what_to_do() {
        let (dir, _) = dir_with_secret();
        let e = resolve(dir.path(), "secret_files = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("secret_files") && e.contains("hint:"), "{e}");
        let e = resolve(
            dir.path(),
            "secret_files = [\"secret\"]\nlisten = \"localhost\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`listen`"), "{e}");
        let e = resolve(
            dir.path(),
            "secret_files = [\"secret\"]\n[pool]\nbatch_system = \"lsf\"\nsubmit_script = \"/x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pool.batch_system"), "{e}");
        let e = resolve(dir.path(), "secret_files = [\"missing\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn guest_templates_and_tls_are_checked_when_loading() {
        let (dir, _) = dir_with_secret();
        let d = dir.path();
        std::fs::write(d.join("small.xml"), "<domain><name>s</name></domain>").unwrap();
        std::fs::write(d.join("net.xml"), "<network><name>n</name></network>").unwrap();
        let c = resolve(
            d,
            "secret_files = [\"secret\"]\n[guests]\ntemplates = [\"small.xml\"]\n",
        )
        .unwrap();
        let g = c.guests.unwrap();
        assert_eq!(g.templates[0].name, "small");
        assert_eq!(g.templates[0].path, d.join("small.xml"));
        let cases = [
            ("templates = []", "is empty"),
            ("templates = [\"net.xml\"]", "not <domain>"),
            ("templates = [\"missing.xml\"]", "missing.xml"),
            (
                "templates = [\"small.xml\", \"small.xml\"]",
                "two templates",
            ),
            (
                "templates = [\"small.xml\"]\nuri = \"nowhere\"",
                "guests.uri",
            ),
        ];
        for (guests, want) in cases {
            let e = resolve(
                d,
                &format!("secret_files = [\"secret\"]\n[guests]\n{guests}\n"),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(want) && e.contains("hint:"), "{guests}: {e}");
        }
        let e = resolve(
            d,
            "secret_files = [\"secret\"]\n[tls]\ncert_file = \"secret\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("key_file"), "{e}");
        let e = resolve(
            d,
            "secret_files = [\"secret\"]\n[pool]\nbatch_system = \"slurm\"\nsubmit_script = \"/x\"\noutput = \"rel/%j.log\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pool.output"), "{e}");
    }

    #[test]
    fn pool_defaults_follow_the_batch_system() {
        let (dir, _) = dir_with_secret();
        let c = resolve(
            dir.path(),
            "secret_files = [\"secret\"]\n[pool]\nbatch_system = \"pbs\"\nsubmit_script = \"submit\"\ntarget = 2\n",
        )
        .unwrap();
        let p = c.pool.unwrap();
        assert_eq!(p.count_command[0], "qselect");
        let me = nix::unistd::User::from_uid(nix::unistd::Uid::current())
            .unwrap()
            .unwrap()
            .name;
        assert_eq!(
            p.count_command[p.count_command.len() - 2..],
            ["-u".to_string(), me],
            "only this account's jobs count as pilots"
        );
        assert_eq!(p.submit_script, dir.path().join("submit"));
        assert_eq!(p.target, 2);
    }
}
