//! Driving the reference coordinator (`vmpilot-coordinator`) from tests: a real process on
//! 127.0.0.1 with its own config, secrets and SQLite file, and a blocking HTTP client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use vmpilot::coordinator::signature::{SIGNATURE_HEADER, Secret, sign};

pub const SECRET: &str = "refcoord-secret-0123456789abcdef";
pub const OLD_SECRET: &str = "refcoord-old-secret-0123456789ab";
pub const TOKEN: &str = "admin-token-0123456789abcdef";

pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A coordinator process with its own directory (config, secrets, database, log).
pub struct Coord {
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub url: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Coord {
    /// A fresh coordinator; `extra` is appended to its config.
    pub fn start(extra: &str) -> Coord {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        write_private(&dir.join("secret"), SECRET);
        write_private(&dir.join("old-secret"), OLD_SECRET);
        write_private(&dir.join("admin-token"), TOKEN);
        std::fs::write(
            dir.join("coordinator.toml"),
            format!(
                "listen = \"127.0.0.1:0\"\ndatabase = \"coord.db\"\nsecret_files = [\"secret\", \"old-secret\"]\nadmin_token_file = \"admin-token\"\n{extra}"
            ),
        )
        .unwrap();
        let mut c = Coord::spawn(&dir);
        c._tmp = Some(tmp);
        c
    }

    /// Start (again) on an existing directory.
    pub fn spawn(dir: &Path) -> Coord {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("coordinator.log"))
            .unwrap();
        let mut child = Command::new(super::coordinator_bin())
            .arg("--config")
            .arg(dir.join("coordinator.toml"))
            .env("RUST_LOG", "info")
            // The pilot binary under test, for jobs the coordinator submits.
            .env("VMPILOT_BIN", env!("CARGO_BIN_EXE_vmpilot"))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "coordinator did not start: {line:?}\n{}",
                    std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default()
                )
            })
            .to_string();
        Coord {
            dir: dir.to_path_buf(),
            child: Some(child),
            url,
            _tmp: None,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> i32 {
        let mut child = self.child.take().unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < until, "coordinator ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("coordinator.log")).unwrap_or_default()
    }
}

impl Drop for Coord {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `vmpilot-coordinator --config PATH --check-config`: validates and starts nothing.
pub fn check_config(path: &Path) -> std::process::Output {
    Command::new(super::coordinator_bin())
        .arg("--config")
        .arg(path)
        .arg("--check-config")
        .output()
        .unwrap()
}

/// A blocking HTTP client (reqwest on a private runtime).
pub struct Http {
    pub rt: tokio::runtime::Runtime,
    pub client: reqwest::Client,
}

impl Http {
    pub fn new() -> Http {
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    pub fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
        self.rt.block_on(async {
            let r = req.send().await.map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            let text = r.text().await.map_err(|e| e.to_string())?;
            Ok((
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            ))
        })
    }

    /// POST raw bytes to /v1/events with this signature header (None: no header).
    pub fn post_raw(&self, url: &str, body: &[u8], signature: Option<String>) -> (u16, Value) {
        let mut req = self
            .client
            .post(format!("{url}/v1/events"))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(s) = signature {
            req = req.header(SIGNATURE_HEADER, s);
        }
        self.send(req).unwrap()
    }

    /// POST an event signed now with `SECRET`.
    pub fn post_event(&self, url: &str, event: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(event).unwrap();
        self.post_raw(url, &body, Some(sign(&Secret::new(SECRET), now(), &body)))
    }

    pub fn get(&self, url: &str) -> (u16, Value) {
        self.send(self.client.get(url)).unwrap()
    }

    pub fn operator(&self, url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.client.post(url).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).unwrap()
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
