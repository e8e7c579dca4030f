//! The libvirt backend (KVM/QEMU, or any libvirt driver), through libvirt's C API.
//!
//! What it owns on the host: admission against the memory and CPUs libvirt reports, each
//! lease's share in a ledger (`{state_dir}/libvirt-ledger.json`, see [`vmpilot::host::ledger`]),
//! optionally the kernel's hugepage pool, fencing the lease's guests to its CPUs and memory
//! ([`fence`]), and stopping guests. Guests belong to a lease by
//! their `<metadata>` element (see [`vmpilot_protocol::guest_metadata`]); vmpilot never defines or starts guests,
//! the coordinator does.
//!
//! Every call opens a fresh connection and closes it when done, so a libvirtd restarted
//! during a lease is simply reached again by the next call: no connection state survives a
//! call, and qemu guests keep running while libvirtd is away. Opening costs ~30 ms against a
//! warm libvirtd, small next to what each call does. The one long-lived connection is the
//! guest event watch ([`events`]), which reconnects by itself.
//!
//! Calls block (libvirt's API is synchronous); the pilot runs them off its runtime and
//! bounds each one.

use std::path::PathBuf;

use virt::domain::Domain;
use virt::error::{Error as VirtError, ErrorNumber};
use virt::sys;

use vmpilot::config::{Config, HostBackend};
use vmpilot::host::baseline::{Baseline, HugepageBaseline, LibvirtBaseline, wrong_backend};
use vmpilot::host::ledger::{self, Ledger, LedgerState, Share, budget_excess};
use vmpilot::host::{Capacity, Guest, GuestWatch, Host, HostError, LeaseShare, owned_by};
use vmpilot::lease::record::LeaseId;

use crate::connection::{Conn, open_connection};
use crate::{events, fence, hugepages};
use vmpilot_common::units::MemSize;
use vmpilot_protocol::guest_metadata as metadata;

/// The libvirt backend.
#[derive(Debug)]
pub struct LibvirtHost {
    uri: String,
    /// The hugepage pool file, when `[host.libvirt] hugepages = true`.
    hugepages: Option<PathBuf>,
    host_reserve: MemSize,
    guest_overhead: MemSize,
    exclusive: bool,
    /// Pin the lease's guests to its cpuset and cap their memory (`[host.libvirt] fence`).
    fence: bool,
    ledger: Ledger,
}

fn op_error(op: &str, detail: impl Into<String>) -> HostError {
    HostError::Operation {
        op: op.to_string(),
        detail: detail.into(),
    }
}

/// libvirt's message, its error code and a hint where one helps.
fn virt_error(op: &str, e: &VirtError) -> HostError {
    let hint = match e.code() {
        ErrorNumber::AuthFailed | ErrorNumber::OperationDenied | ErrorNumber::AccessDenied => {
            "\n\nhint: the pilot's user may not manage domains on this URI; see docs/hosts.md (polkit, unix_sock_group)"
        }
        _ => "",
    };
    op_error(op, format!("{}{hint}", e.message()))
}

impl LibvirtHost {
    /// Set up the backend from `config` and prove libvirt answers.
    pub fn open(config: &Config) -> Result<Self, HostError> {
        let lv = &config.host.libvirt;
        let host = LibvirtHost {
            uri: lv.uri.clone(),
            hugepages: lv.hugepages.then(|| lv.hugepages_path.clone()),
            host_reserve: config.host.host_reserve,
            guest_overhead: config.host.guest_overhead,
            exclusive: config.host.exclusive,
            fence: lv.fence,
            ledger: Ledger::open(&config.state_dir, "libvirt", HostBackend::Libvirt)?,
        };
        drop(host.connect()?);
        Ok(host)
    }

    /// A fresh connection (see the module docs for why not a long-lived one).
    fn connect(&self) -> Result<Conn, HostError> {
        open_connection(&self.uri).map_err(|e| HostError::Unreachable {
                backend: HostBackend::Libvirt,
                detail: format!(
                    "cannot connect to {}: {}\n\nhint: is libvirtd (or virtqemud) running, and may this user \
                     manage {}? check `virsh -c {} list`, or set [host.libvirt] uri",
                    self.uri,
                    e.message(),
                    self.uri,
                    self.uri
                ),
            })
    }

    fn lookup(&self, conn: &Conn, name: &str, op: &str) -> Result<Domain, HostError> {
        Domain::lookup_by_name(&conn.0, name).map_err(|e| match e.code() {
            ErrorNumber::NoDomain => HostError::NoSuchGuest(name.to_string()),
            _ => virt_error(op, &e),
        })
    }

    /// Every domain, or `None` for one that vanished while being read.
    fn describe(&self, dom: &Domain) -> Result<Option<Guest>, VirtError> {
        let gone = |e: &VirtError| e.code() == ErrorNumber::NoDomain;
        let name = match dom.get_name() {
            Ok(n) => n,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let info = match dom.get_info() {
            Ok(i) => i,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let owner = match dom.get_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(metadata::LEASE_NS),
            sys::VIR_DOMAIN_AFFECT_CURRENT,
        ) {
            Ok(xml) => match metadata::parse_lease_metadata(&xml) {
                Ok(owner) => Some(owner),
                Err(why) => {
                    tracing::warn!(guest = %name, %why, "ignoring malformed vmpilot lease metadata: the guest belongs to no lease");
                    None
                }
            },
            Err(e) if e.code() == ErrorNumber::NoDomainMetadata => None,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(Guest {
            name,
            owner,
            running: is_running(info.state),
            // The configured maximum, not the current balloon size: the guest may grow back
            // to it at any time, so that is what it can take from the lease.
            memory_mib: info.max_mem / 1024,
            vcpus: info.nr_virt_cpu,
            started_order: started_order(dom),
        }))
    }

    fn list(&self, conn: &Conn) -> Result<Vec<Guest>, HostError> {
        let domains = conn
            .0
            .list_all_domains(0)
            .map_err(|e| virt_error("list guests", &e))?;
        let mut guests = Vec::with_capacity(domains.len());
        for dom in &domains {
            if let Some(g) = self
                .describe(dom)
                .map_err(|e| virt_error("list guests", &e))?
            {
                guests.push(g);
            }
        }
        guests.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(guests)
    }

    /// Node totals and free memory from libvirt, then what leases still hold.
    fn capacity_with(&self, conn: &Conn, ledger: &LedgerState) -> Result<Capacity, HostError> {
        let info = conn
            .0
            .get_node_info()
            .map_err(|e| virt_error("node info", &e))?;
        let free_bytes = conn
            .0
            .get_free_memory()
            .map_err(|e| virt_error("node free memory", &e))?;
        let guests = self.list(conn)?;
        Ok(capacity_from(
            info.memory / 1024,
            free_bytes / (1024 * 1024),
            info.cpus,
            ledger,
            &guests,
            self.exclusive,
        ))
    }

    /// Fence every running guest of `share` to `cpuset`; returns `NAME: what failed` for each
    /// guest that could not be.
    fn fence_with(
        &self,
        conn: &Conn,
        share: &LeaseShare,
        cpuset: &[u32],
    ) -> Result<Vec<String>, HostError> {
        let op = format!("fence the guests of lease {}", share.lease_id);
        let domains = conn
            .0
            .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            .map_err(|e| virt_error(&op, &e))?;
        let overhead_kib = self.guest_overhead.mib().saturating_mul(1024);
        let mut failed = Vec::new();
        for dom in &domains {
            let guest = match self.describe(dom) {
                Ok(Some(g)) if g.running && owned_by(&g, &share.lease_id, self.exclusive) => g,
                Ok(_) => continue,
                Err(e) => return Err(virt_error(&op, &e)),
            };
            let hard_limit_kib = guest
                .memory_mib
                .saturating_mul(1024)
                .saturating_add(overhead_kib);
            match fence::fence_domain(dom, cpuset, hard_limit_kib) {
                Ok(()) => {
                    tracing::debug!(lease = %share.lease_id, guest = %guest.name, cpus = %fence::cpu_list(cpuset), hard_limit_mib = hard_limit_kib / 1024, "guest fenced")
                }
                Err(fence::FenceError::Gone) => {}
                Err(fence::FenceError::Failed(why)) => {
                    tracing::error!(lease = %share.lease_id, guest = %guest.name, %why, "cannot fence the lease's guest");
                    failed.push(format!("{}: {why}", guest.name));
                }
            }
        }
        Ok(failed)
    }

    /// Grow the hugepage pool for `lease` with the ledger entry written first.
    fn grow_hugepages(
        &self,
        guard: &mut ledger::LedgerGuard<'_>,
        lease: &LeaseId,
        mut entry: Share,
        memory_mib: u64,
        op: &str,
    ) -> Result<Option<HugepageBaseline>, HostError> {
        let Some(path) = &self.hugepages else {
            guard.state.add(lease, entry, 0);
            guard.save(op)?;
            return Ok(None);
        };
        let before = hugepages::read(path).map_err(|e| op_error(op, e))?;
        let added = hugepages::pages_for(memory_mib);
        entry.delta = added as i64;
        // Intent first: a crash after the write below leaves an entry release can undo.
        guard.state.add(lease, entry, before);
        guard.save(op)?;
        if let Err(e) = hugepages::grow(path, before, added) {
            guard.state.remove(lease);
            return Err(match guard.save(op) {
                Ok(()) => op_error(op, e),
                Err(save) => op_error(op, format!("{e}; then: {save}")),
            });
        }
        Ok(Some(HugepageBaseline {
            path: path.clone(),
            before,
            added,
        }))
    }
}

/// A running domain's id, which libvirt hands out in increasing order as domains start
/// (and keeps across a libvirtd restart); inactive domains have none.
fn started_order(dom: &Domain) -> Option<u64> {
    dom.get_id().map(u64::from)
}

/// Running, paused or shutting down: anything but off or crashed still holds resources.
fn is_running(state: sys::virDomainState) -> bool {
    !matches!(state, sys::VIR_DOMAIN_SHUTOFF | sys::VIR_DOMAIN_CRASHED)
}

/// What is free for new leases: libvirt's free memory less what leases were promised but
/// their running guests have not taken yet (nor hugepages already set aside for them).
fn capacity_from(
    total_mib: u64,
    free_mib: u64,
    cpus: u32,
    ledger: &LedgerState,
    guests: &[Guest],
    exclusive: bool,
) -> Capacity {
    let outstanding: u64 = ledger
        .leases
        .iter()
        .map(|(id, share)| {
            let used: u64 = guests
                .iter()
                .filter(|g| g.running && owned_by(g, id, exclusive))
                .map(|g| g.memory_mib)
                .fold(0, u64::saturating_add);
            let pool = share
                .delta
                .max(0)
                .unsigned_abs()
                .saturating_mul(hugepages::PAGE_MIB);
            share.charged_mib.saturating_sub(used.saturating_add(pool))
        })
        .fold(0, u64::saturating_add);
    Capacity {
        total_memory_mib: total_mib,
        free_memory_mib: free_mib.saturating_sub(outstanding),
        total_cpus: cpus,
        free_cpus: cpus.saturating_sub(ledger.cpus()),
    }
}

/// Where libvirt keeps a domain's managed-save image.
fn managed_save_location(uri: &str, name: &str) -> String {
    match uri {
        "qemu:///system" => format!("/var/lib/libvirt/qemu/save/{name}.save"),
        _ => format!("managed save image of {name} (kept by libvirt at {uri})"),
    }
}

impl Host for LibvirtHost {
    fn backend(&self) -> HostBackend {
        HostBackend::Libvirt
    }

    fn capacity(&self) -> Result<Capacity, HostError> {
        let ledger = self.ledger.lock("capacity")?.state.clone();
        let conn = self.connect()?;
        self.capacity_with(&conn, &ledger)
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
        let conn = self.connect()?;
        let cap = self.capacity_with(&conn, &guard.state)?;
        drop(conn);
        let (overhead, charged) = share.charged_mib(self.guest_overhead)?;
        let reserve = self.host_reserve.mib();
        let avail = cap.free_memory_mib.saturating_sub(reserve);
        if charged > avail {
            return Err(HostError::Admission {
                detail: format!(
                    "needs {charged} MiB ({} MiB for guests + {overhead} MiB overhead for {} guests), \
                     but only {avail} MiB can be given ({} MiB free on {} after what {} other lease(s) still hold, \
                     {reserve} MiB host reserve; {} MiB total)",
                    share.memory_mib,
                    share.max_guests,
                    cap.free_memory_mib,
                    self.uri,
                    guard.state.leases.len(),
                    cap.total_memory_mib
                ),
            });
        }
        if share.cpus > cap.free_cpus {
            return Err(HostError::Admission {
                detail: format!(
                    "needs {} CPUs but only {} of {} are free ({} held by other leases)",
                    share.cpus,
                    cap.free_cpus,
                    cap.total_cpus,
                    guard.state.cpus()
                ),
            });
        }
        let cpuset = if self.fence {
            let affinity = fence::pilot_affinity().map_err(|e| op_error(&op, e))?;
            let taken = guard.state.pinned_cpus(&share.lease_id);
            Some(
                fence::choose_cpuset(&affinity, &taken, share.cpus)
                    .map_err(|detail| HostError::Admission { detail })?,
            )
        } else {
            None
        };
        let entry = Share {
            epoch: share.epoch,
            charged_mib: charged,
            cpus: share.cpus,
            delta: 0,
            cpuset: cpuset.clone().unwrap_or_default(),
        };
        let hugepages =
            self.grow_hugepages(&mut guard, &share.lease_id, entry, share.memory_mib, &op)?;
        let baseline = LibvirtBaseline {
            uri: self.uri.clone(),
            charged_mib: charged,
            cpus: share.cpus,
            hugepages,
            cpuset,
        };
        // Plain fields only: serializing cannot fail.
        Ok(Baseline::Libvirt(baseline))
    }

    fn release(&self, lease: &LeaseId, baseline: Option<&Baseline>) -> Result<(), HostError> {
        let op = format!("release lease {lease}");
        let recorded = match baseline {
            None => None,
            Some(Baseline::Libvirt(b)) => Some(b),
            Some(other) => return Err(wrong_backend(&op, other, "libvirt")),
        };
        let mut guard = self.ledger.lock(&op)?;
        let Some(held) = guard.state.leases.get(lease).cloned() else {
            return Ok(());
        };
        if let Some(rec) = &recorded
            && (rec.charged_mib != held.charged_mib || rec.cpus != held.cpus)
        {
            return Err(op_error(
                &op,
                format!(
                    "the ledger {} holds {} MiB/{} CPUs for this lease, its record says {} MiB/{} CPUs\n\n\
                     hint: the ledger or the record was edited or belongs to another node; fix the ledger by hand",
                    self.ledger.path().display(),
                    held.charged_mib,
                    held.cpus,
                    rec.charged_mib,
                    rec.cpus
                ),
            ));
        }
        if held.delta != 0 {
            guard.check_trusted_for_host_values(&op)?;
            // The pool file from the root-owned config only: never a path from a record,
            // which the pilot account can write.
            let path = self.hugepages.clone().ok_or_else(|| {
                op_error(
                    &op,
                    "the lease grew the hugepage pool but the config has hugepages off\n\n\
                     hint: set [host.libvirt] hugepages = true (and the hugepages_path it grew) and run `vmpilot recover`",
                )
            })?;
            let current = hugepages::read(&path).map_err(|e| op_error(&op, e))?;
            let target = guard.state.value_after_release(lease, current);
            hugepages::restore(&path, target).map_err(|e| op_error(&op, e))?;
            vmpilot::crashpoint::hit(vmpilot::crashpoint::Point::HostValueSet);
        }
        guard.state.remove(lease);
        guard.save(&op)
    }

    fn guests(&self) -> Result<Vec<Guest>, HostError> {
        let conn = self.connect()?;
        self.list(&conn)
    }

    fn shutdown_guest(&self, name: &str) -> Result<(), HostError> {
        let op = format!("shutdown guest {name}");
        let conn = self.connect()?;
        let dom = self.lookup(&conn, name, &op)?;
        match dom.shutdown() {
            Ok(_) => Ok(()),
            // Already off: what was asked for.
            Err(e) if e.code() == ErrorNumber::OperationInvalid => Ok(()),
            Err(e) => Err(virt_error(&op, &e)),
        }
    }

    fn destroy_guest(&self, name: &str) -> Result<(), HostError> {
        let op = format!("destroy guest {name}");
        let conn = self.connect()?;
        let dom = self.lookup(&conn, name, &op)?;
        match dom.destroy() {
            Ok(()) => Ok(()),
            Err(e) if e.code() == ErrorNumber::OperationInvalid => Ok(()),
            Err(e) => Err(virt_error(&op, &e)),
        }
    }

    fn suspend_guest(&self, name: &str) -> Result<String, HostError> {
        let op = format!("suspend guest {name}");
        let conn = self.connect()?;
        let dom = self.lookup(&conn, name, &op)?;
        dom.managed_save(0).map_err(|e| {
            let mut err = virt_error(&op, &e);
            if let HostError::Operation { detail, .. } = &mut err
                && dom.is_persistent().ok() == Some(false)
            {
                detail.push_str(
                    "\n\nhint: a transient domain cannot be managed-saved; define guests persistently to suspend them",
                );
            }
            err
        })?;
        Ok(managed_save_location(&self.uri, name))
    }

    fn over_budget(&self, share: &LeaseShare) -> Result<Option<String>, HostError> {
        Ok(budget_excess(&self.guests()?, share, self.exclusive))
    }

    fn fence(
        &self,
        share: &LeaseShare,
        baseline: Option<&Baseline>,
    ) -> Result<Option<String>, HostError> {
        if !self.fence {
            return Ok(None);
        }
        let cpuset = match baseline {
            None => None,
            Some(Baseline::Libvirt(b)) => b.cpuset.clone(),
            Some(other) => return Err(wrong_backend("fence guests", other, "libvirt")),
        };
        let Some(cpuset) = cpuset else {
            // Reserved while fencing was off (the config changed under a running lease):
            // there is no cpuset to pin to.
            tracing::debug!(lease = %share.lease_id, "the lease has no cpuset; its guests are not fenced");
            return Ok(None);
        };
        let conn = self.connect()?;
        let failed = self.fence_with(&conn, share, &cpuset)?;
        Ok((!failed.is_empty()).then(|| {
            format!(
                "cannot fence guests to the lease's CPUs {} and memory: {}",
                fence::cpu_list(&cpuset),
                failed.join("; ")
            )
        }))
    }

    fn watch_guests(
        &self,
        notify: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Result<Option<GuestWatch>, HostError> {
        events::watch(&self.uri, notify).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpilot::host::GuestOwner;

    fn guest(name: &str, lease: Option<&str>, running: bool, mib: u64) -> Guest {
        Guest {
            name: name.into(),
            owner: lease.map(|l| GuestOwner {
                lease_id: l.parse().unwrap(),
                epoch: 1,
            }),
            running,
            memory_mib: mib,
            vcpus: 1,
            started_order: None,
        }
    }

    fn share(charged: u64, cpus: u32, delta: i64) -> Share {
        Share {
            epoch: 1,
            charged_mib: charged,
            cpus,
            delta,
            cpuset: Vec::new(),
        }
    }

    #[test]
    fn capacity_subtracts_only_what_leases_have_not_taken_yet() {
        let mut ledger = LedgerState::default();
        ledger.add(&"a".parse().unwrap(), share(1000, 1, 0), 0);
        ledger.add(&"b".parse().unwrap(), share(600, 2, 100), 0);
        let guests = [
            guest("a1", Some("a"), true, 300),
            guest("a2", Some("a"), false, 300),
            guest("x", None, true, 5000),
        ];
        let cap = capacity_from(16000, 10000, 8, &ledger, &guests, false);
        // a: 1000 - 300 running = 700; b: 600 - 200 MiB of hugepages = 400.
        assert_eq!(cap.free_memory_mib, 10000 - 700 - 400);
        assert_eq!(cap.free_cpus, 5);
        assert_eq!(cap.total_memory_mib, 16000);
    }

    #[test]
    fn running_means_holding_resources() {
        assert!(is_running(sys::VIR_DOMAIN_RUNNING));
        assert!(is_running(sys::VIR_DOMAIN_PAUSED));
        assert!(is_running(sys::VIR_DOMAIN_SHUTDOWN));
        assert!(!is_running(sys::VIR_DOMAIN_SHUTOFF));
        assert!(!is_running(sys::VIR_DOMAIN_CRASHED));
    }

    #[test]
    fn managed_save_location_is_named_for_the_system_daemon() {
        assert_eq!(
            managed_save_location("qemu:///system", "vm1"),
            "/var/lib/libvirt/qemu/save/vm1.save"
        );
        assert!(managed_save_location("test:///default", "vm1").contains("vm1"));
    }
}
