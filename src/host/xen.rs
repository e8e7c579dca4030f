//! The Xen backend, through the `xl` command.
//!
//! Memory for a lease's guests comes out of dom0: `reserve` balloons dom0 down by the lease's
//! memory (`xl mem-set 0 <target>m`), never below `[host.xen] dom0_min_memory`, and waits
//! (bounded by `balloon_timeout`) until `xl list 0` shows the target; `release` balloons it
//! back and waits again. Each lease's share and the dom0 size before the first lease are kept
//! in a ledger (`{state_dir}/xen-ledger.json`, see [`super::ledger`]), so leases can overlap
//! and the last one out restores dom0 exactly.
//!
//! Xen keeps no free-form metadata on a domain that `xl` can read back, so ownership is in
//! the guest's name: `vmpilot:<lease>:<epoch>:<name>` (a lease id never contains `:`).
//!
//! Every `xl` call runs in its own process group with a bound (`command_timeout`); on
//! timeout the whole group is killed, so a hung `xl` (or anything it started) never outlives
//! the call. Errors keep the argv, exit status and stderr.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::baseline::{Baseline, XenBaseline, wrong_backend};
use super::ledger::{Ledger, Share, budget_excess};
use super::{Capacity, Guest, GuestOwner, Host, HostError, LeaseShare};
use crate::config::{Config, HostBackend};
use crate::fsutil;
use crate::lease::record::LeaseId;
use vmpilot_common::command::{self, ExecError};
use vmpilot_common::units::MemSize;

/// The name prefix that marks a guest as a lease's.
pub const NAME_PREFIX: &str = "vmpilot:";

/// How close to the balloon target dom0 must get: Xen reports memory in whole MiB and a
/// balloon driver may stop a page table's worth short.
pub const BALLOON_SLACK_MIB: u64 = 4;

/// How often dom0's size is checked while ballooning.
const BALLOON_POLL: Duration = Duration::from_millis(200);

/// The Xen backend.
#[derive(Debug)]
pub struct XenHost {
    xl: PathBuf,
    dom0_min: MemSize,
    balloon_timeout: Duration,
    command_timeout: Duration,
    save_dir: PathBuf,
    exclusive: bool,
    ledger: Ledger,
}

/// One row of `xl list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XlDomain {
    /// Domain name.
    pub name: String,
    /// Domain id.
    pub id: u32,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// The state flags, e.g. `r-----`, `-b----`, `---s--`.
    pub state: String,
}

fn op_error(op: &str, detail: impl Into<String>) -> HostError {
    HostError::Operation {
        op: op.to_string(),
        detail: detail.into(),
    }
}

/// Parse `xl list` (header line, then `Name ID Mem VCPUs State Time(s)` rows). Names may
/// contain spaces, so columns are taken from the right.
pub fn parse_xl_list(text: &str) -> Result<Vec<XlDomain>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || fields[0] == "Name" {
            continue;
        }
        let n = fields.len();
        if n < 6 {
            return Err(format!("unexpected `xl list` line: `{line}`"));
        }
        let num = |i: usize, what: &str| {
            fields[i]
                .parse::<u64>()
                .map_err(|_| format!("{what} `{}` is not a number in `{line}`", fields[i]))
        };
        out.push(XlDomain {
            name: fields[..n - 5].join(" "),
            id: num(n - 5, "ID")? as u32,
            mem_mib: num(n - 4, "Mem")?,
            vcpus: num(n - 3, "VCPUs")? as u32,
            state: fields[n - 2].to_string(),
        });
    }
    Ok(out)
}

/// Parse `xl info` (`key : value` lines) for one key.
pub fn xl_info_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

/// The owner encoded in a guest name (`vmpilot:<lease>:<epoch>:<rest>`), if any.
pub fn owner_from_name(name: &str) -> Option<GuestOwner> {
    let mut parts = name.strip_prefix(NAME_PREFIX)?.splitn(3, ':');
    let lease_id = parts.next()?.parse().ok()?;
    let epoch = parts.next()?.parse().ok()?;
    Some(GuestOwner { lease_id, epoch })
}

/// Shut down, dying or crashed domains hold nothing more; anything else runs.
fn xl_running(state: &str) -> bool {
    !state.contains(['s', 'd', 'c'])
}

impl XenHost {
    /// Set up the backend from `config` and prove `xl` answers.
    pub fn open(config: &Config) -> Result<Self, HostError> {
        let x = &config.host.xen;
        let host = XenHost {
            xl: x.xl.clone(),
            dom0_min: x.dom0_min_memory,
            balloon_timeout: x.balloon_timeout.get(),
            command_timeout: x.command_timeout.get(),
            save_dir: x
                .save_dir
                .clone()
                .unwrap_or_else(|| config.state_dir.join("xen-save")),
            exclusive: config.host.exclusive,
            ledger: Ledger::open(&config.state_dir, "xen", HostBackend::Xen)?,
        };
        host.dom0_mib("open").map_err(|e| match e {
            // Already says what to do (xl missing).
            HostError::Unreachable { .. } => e,
            e => HostError::Unreachable {
                backend: HostBackend::Xen,
                detail: format!(
                    "{e}\n\nhint: run vmpilot in dom0 of a Xen host as root, or set [host.xen] xl to the xl program"
                ),
            },
        })?;
        Ok(host)
    }

    /// Run `xl args…` bounded by `command_timeout` (the shared runner kills its process
    /// group on timeout); stdout on success.
    fn xl(&self, args: &[&str]) -> Result<String, HostError> {
        let program = self.xl.to_string_lossy();
        command::output_blocking(&program, args, self.command_timeout).map_err(|e| match e {
            ExecError::NotFound { .. } | ExecError::Spawn { .. } => HostError::Unreachable {
                backend: HostBackend::Xen,
                detail: format!("{e}\n\nhint: install the Xen tools or set [host.xen] xl"),
            },
            ExecError::Timeout { argv, after } => HostError::Timeout {
                op: argv.to_string(),
                after,
            },
            ExecError::Failed {
                argv,
                status,
                stderr,
            } => op_error(
                &argv.to_string(),
                format!("{status}\n--- stderr ---\n{stderr}\n---"),
            ),
        })
    }

    fn list(&self) -> Result<Vec<XlDomain>, HostError> {
        let text = self.xl(&["list"])?;
        parse_xl_list(&text).map_err(|e| op_error("xl list", e))
    }

    fn dom0_mib(&self, op: &str) -> Result<u64, HostError> {
        let text = self.xl(&["list", "0"])?;
        parse_xl_list(&text)
            .map_err(|e| op_error(op, e))?
            .into_iter()
            .find(|d| d.id == 0)
            .map(|d| d.mem_mib)
            .ok_or_else(|| op_error(op, "`xl list 0` shows no domain 0"))
    }

    /// `xl mem-set 0 <target>m`, then wait until dom0 is there.
    fn balloon_to(&self, target: u64) -> Result<(), HostError> {
        self.xl(&["mem-set", "0", &format!("{target}m")])?;
        let until = Instant::now() + self.balloon_timeout;
        loop {
            let now = self.dom0_mib("balloon dom0")?;
            if now.abs_diff(target) <= BALLOON_SLACK_MIB {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(HostError::Timeout {
                    op: format!("balloon dom0 to {target} MiB (it is at {now} MiB)"),
                    after: self.balloon_timeout,
                });
            }
            std::thread::sleep(BALLOON_POLL);
        }
    }

    fn find(&self, name: &str) -> Result<XlDomain, HostError> {
        self.list()?
            .into_iter()
            .find(|d| d.name == name && d.id != 0)
            .ok_or_else(|| HostError::NoSuchGuest(name.to_string()))
    }

    fn total_cpus(&self) -> Result<u32, HostError> {
        let info = self.xl(&["info"])?;
        xl_info_value(&info, "nr_cpus")
            .map(|n| n as u32)
            .ok_or_else(|| op_error("xl info", "no nr_cpus line"))
    }
}

impl Host for XenHost {
    fn backend(&self) -> HostBackend {
        HostBackend::Xen
    }

    fn capacity(&self) -> Result<Capacity, HostError> {
        let ledger = self.ledger.lock("capacity")?.state.clone();
        let info = self.xl(&["info"])?;
        let cpus = xl_info_value(&info, "nr_cpus").unwrap_or(0) as u32;
        let dom0 = self.dom0_mib("capacity")?;
        Ok(Capacity {
            total_memory_mib: xl_info_value(&info, "total_memory").unwrap_or(dom0),
            // What can still be ballooned out of dom0 for a lease.
            free_memory_mib: dom0.saturating_sub(self.dom0_min.mib()),
            total_cpus: cpus,
            free_cpus: cpus.saturating_sub(ledger.cpus()),
        })
    }

    fn reserve(&self, share: &LeaseShare) -> Result<Baseline, HostError> {
        let op = format!("reserve lease {}", share.lease_id);
        let mut guard = self.ledger.lock(&op)?;
        if guard.state.leases.contains_key(&share.lease_id) {
            return Err(op_error(
                &op,
                "the lease already holds a share of this host",
            ));
        }
        let before = self.dom0_mib(&op)?;
        let min = self.dom0_min.mib();
        let can_give = before.saturating_sub(min);
        if share.memory_mib > can_give {
            return Err(HostError::Admission {
                detail: format!(
                    "needs {} MiB from dom0, but dom0 has {before} MiB and must keep {min} MiB \
                     (host.xen.dom0_min_memory): only {can_give} MiB can be ballooned out",
                    share.memory_mib
                ),
            });
        }
        let cpus = self.total_cpus()?;
        let free_cpus = cpus.saturating_sub(guard.state.cpus());
        if share.cpus > free_cpus {
            return Err(HostError::Admission {
                detail: format!(
                    "needs {} CPUs but only {free_cpus} of {cpus} are free",
                    share.cpus
                ),
            });
        }
        let entry = Share {
            epoch: share.epoch,
            charged_mib: share.memory_mib,
            cpus: share.cpus,
            delta: -(share.memory_mib as i64),
            // Xen guests are not pinned by vmpilot.
            cpuset: Vec::new(),
        };
        // Intent first: a crash while ballooning leaves an entry release can undo.
        guard.state.add(&share.lease_id, entry, before);
        guard.save(&op)?;
        if let Err(e) = self.balloon_to(before - share.memory_mib) {
            let rollback = self.balloon_to(before);
            guard.state.remove(&share.lease_id);
            let saved = guard.save(&op);
            return Err(match (rollback, saved) {
                (Ok(()), Ok(())) => e,
                (Err(r), _) => op_error(
                    &op,
                    format!("{e}; giving dom0 its {before} MiB back failed too: {r}"),
                ),
                (_, Err(s)) => op_error(&op, format!("{e}; then: {s}")),
            });
        }
        let baseline = XenBaseline {
            dom0_before_mib: before,
            lowered_by_mib: share.memory_mib,
            cpus: share.cpus,
        };
        Ok(Baseline::Xen(baseline))
    }

    fn release(&self, lease: &LeaseId, baseline: Option<&Baseline>) -> Result<(), HostError> {
        let op = format!("release lease {lease}");
        // dom0's memory is restored from the root-written ledger, never from the record;
        // a record of another backend is still refused.
        if let Some(other @ (Baseline::Libvirt(_) | Baseline::Simulated(_))) = baseline {
            return Err(wrong_backend(&op, other, "xen"));
        }
        let mut guard = self.ledger.lock(&op)?;
        let Some(held) = guard.state.leases.get(lease).cloned() else {
            return Ok(());
        };
        if held.delta != 0 {
            guard.check_trusted_for_host_values(&op)?;
            let current = self.dom0_mib(&op)?;
            let target = guard.state.value_after_release(lease, current);
            self.balloon_to(target)?;
            crate::crashpoint::hit(crate::crashpoint::Point::HostValueSet);
        }
        guard.state.remove(lease);
        guard.save(&op)
    }

    fn guests(&self) -> Result<Vec<Guest>, HostError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|d| d.id != 0)
            .map(|d| Guest {
                owner: owner_from_name(&d.name),
                running: xl_running(&d.state),
                memory_mib: d.mem_mib,
                vcpus: d.vcpus,
                // Xen numbers domains in the order they were created.
                started_order: xl_running(&d.state).then_some(u64::from(d.id)),
                name: d.name,
            })
            .collect())
    }

    fn shutdown_guest(&self, name: &str) -> Result<(), HostError> {
        self.find(name)?;
        self.xl(&["shutdown", name]).map(drop)
    }

    fn destroy_guest(&self, name: &str) -> Result<(), HostError> {
        self.find(name)?;
        self.xl(&["destroy", name]).map(drop)
    }

    fn suspend_guest(&self, name: &str) -> Result<String, HostError> {
        self.find(name)?;
        fsutil::ensure_private_dir(&self.save_dir).map_err(|e| {
            op_error(
                &format!("suspend guest {name}"),
                format!("cannot create {}: {e}", self.save_dir.display()),
            )
        })?;
        let file = self
            .save_dir
            .join(format!("{}.save", name.replace(['/', ':'], "_")));
        let path = file.display().to_string();
        self.xl(&["save", name, &path])?;
        Ok(path)
    }

    fn over_budget(&self, share: &LeaseShare) -> Result<Option<String>, HostError> {
        Ok(budget_excess(&self.guests()?, share, self.exclusive))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n\
Domain-0                                     0  4096     2     r-----     123.4\n\
vmpilot:l1:3:web                             3  1024     1     -b----      10.0\n\
my guest                                     7   512     2     ---s--       1.5\n";

    #[test]
    fn xl_list_is_parsed_from_the_right() {
        let doms = parse_xl_list(LIST).unwrap();
        assert_eq!(doms.len(), 3);
        assert_eq!(
            doms[0],
            XlDomain {
                name: "Domain-0".into(),
                id: 0,
                mem_mib: 4096,
                vcpus: 2,
                state: "r-----".into()
            }
        );
        assert_eq!(doms[2].name, "my guest");
        assert!(xl_running(&doms[1].state));
        assert!(!xl_running(&doms[2].state));
        let e = parse_xl_list("Domain-0 0 lots 2 r----- 1.0\n").unwrap_err();
        assert!(e.contains("Mem `lots`"), "{e}");
        assert!(parse_xl_list("garbage\n").is_err());
    }

    #[test]
    fn owner_comes_from_the_name_marker() {
        let o = owner_from_name("vmpilot:l1:3:web").unwrap();
        assert_eq!((o.lease_id.as_str(), o.epoch), ("l1", 3));
        assert_eq!(owner_from_name("vmpilot:job-7.a:12").unwrap().epoch, 12);
        assert_eq!(owner_from_name("web"), None);
        assert_eq!(owner_from_name("vmpilot:bad id:1:x"), None);
        assert_eq!(owner_from_name("vmpilot:l1:x:web"), None);
    }

    #[test]
    fn xl_info_values() {
        let info = "host : x\nnr_cpus                : 8\ntotal_memory           : 65442\n";
        assert_eq!(xl_info_value(info, "nr_cpus"), Some(8));
        assert_eq!(xl_info_value(info, "total_memory"), Some(65442));
        assert_eq!(xl_info_value(info, "free_memory"), None);
    }
}
