//! Fencing a lease's guests to the lease's CPUs and memory, through libvirt's API.
//!
//! At reserve a lease gets a *cpuset*: the first `lease.cpus` CPUs of the pilot's own CPU
//! affinity (the batch system's allocation: Slurm's task/affinity or cgroup cpuset, PBS's
//! cpuset MOM hook) that no other lease on the node holds ([`choose_cpuset`]). It is kept in
//! the lease's baseline and the libvirt ledger. Whenever a guest of the lease runs, the
//! pilot pins each of its vCPUs and its emulator threads to that cpuset
//! (`virDomainPinVcpuFlags`, `virDomainPinEmulator`) and sets its memory hard limit
//! (`virDomainSetMemoryParameters`, `hard_limit` = the guest's maximum memory + the
//! per-guest overhead), all with `VIR_DOMAIN_AFFECT_LIVE` only: the guest's persistent
//! definition is never changed, so a guest stopped at the end of the lease leaves nothing
//! behind, and a guest restarted outside any lease runs as its owner defined it.
//!
//! Together with the budget check (the sum of the lease's guests' memory and vCPUs against
//! the lease), that confines the lease's guests: each one's threads run only on the lease's
//! CPUs and none can use more memory than it was charged for. Why pinning rather than
//! libvirt resource partitions is in docs/hosts.md ("Fencing").

use nix::sched::{CpuSet, sched_getaffinity};
use nix::unistd::Pid;
use virt::domain::{Domain, MemoryParameters};
use virt::error::{Error as VirtError, ErrorNumber};
use virt::sys;

/// The CPUs this process may run on, ascending: the batch job's allocation when the batch
/// system confines jobs (cgroup cpuset, task affinity), else every online CPU.
pub fn pilot_affinity() -> Result<Vec<u32>, String> {
    // The process's (thread-group leader's) mask, not the calling thread's: reserve runs on
    // a blocking-pool thread, and the allocation is the process's.
    let set = sched_getaffinity(Pid::this())
        .map_err(|e| format!("cannot read the pilot's CPU affinity: {e}"))?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .map(|cpu| cpu as u32)
        .collect())
}

/// The lease's cpuset: the first `want` CPUs of `affinity` that are not `taken` by other
/// leases. An error explains the numbers (for an admission refusal).
pub fn choose_cpuset(affinity: &[u32], taken: &[u32], want: u32) -> Result<Vec<u32>, String> {
    let mut free: Vec<u32> = affinity
        .iter()
        .copied()
        .filter(|cpu| !taken.contains(cpu))
        .collect();
    free.sort_unstable();
    free.dedup();
    if free.len() < want as usize {
        return Err(format!(
            "needs {want} CPUs to pin its guests to, but the pilot may run on CPUs {} \
             ({} CPUs, its batch job's allocation) and other leases hold {} of them",
            cpu_list(affinity),
            affinity.len(),
            affinity.iter().filter(|c| taken.contains(c)).count()
        ));
    }
    free.truncate(want as usize);
    Ok(free)
}

/// `0-3,6`: the cpuset in libvirt's and the kernel's list syntax (as `virsh vcpupin` shows).
pub fn cpu_list(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for cpu in sorted {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == cpu => *end = cpu,
            _ => ranges.push((cpu, cpu)),
        }
    }
    let parts: Vec<String> = ranges
        .into_iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(",")
    }
}

/// libvirt's cpumap: one bit per CPU, CPU 0 in the lowest bit of the first byte. Bytes past
/// the highest CPU are left out; libvirt treats missing CPUs as not set.
pub fn cpumap(cpus: &[u32]) -> Vec<u8> {
    let len = cpus.iter().max().map_or(0, |&max| max as usize / 8 + 1);
    let mut map = vec![0u8; len];
    for &cpu in cpus {
        map[cpu as usize / 8] |= 1 << (cpu % 8);
    }
    map
}

/// How fencing one domain ended, when it did not simply succeed.
#[derive(Debug)]
pub enum FenceError {
    /// The domain stopped (or vanished) while being fenced: nothing is left to confine.
    Gone,
    /// A step failed: what was attempted and libvirt's message.
    Failed(String),
}

/// Pin `dom`'s vCPUs and emulator threads to `cpus` and cap its memory at `hard_limit_kib`,
/// on the running domain only.
pub fn fence_domain(dom: &Domain, cpus: &[u32], hard_limit_kib: u64) -> Result<(), FenceError> {
    let live = sys::VIR_DOMAIN_AFFECT_LIVE;
    let map = cpumap(cpus);
    let vcpus = dom
        .get_info()
        .map_err(|e| step("read domain info", &e))?
        .nr_virt_cpu;
    for vcpu in 0..vcpus {
        dom.pin_vcpu_flags(vcpu, &map, live)
            .map_err(|e| step(&format!("pin vCPU {vcpu} to CPUs {}", cpu_list(cpus)), &e))?;
    }
    dom.pin_emulator(&map, live).map_err(|e| {
        step(
            &format!("pin emulator threads to CPUs {}", cpu_list(cpus)),
            &e,
        )
    })?;
    let limit = MemoryParameters {
        hard_limit: Some(hard_limit_kib),
        ..MemoryParameters::default()
    };
    dom.set_memory_parameters(limit, live).map_err(|e| {
        let mut err = step(
            &format!("set the memory hard limit to {} MiB", hard_limit_kib / 1024),
            &e,
        );
        if let FenceError::Failed(msg) = &mut err
            && msg.contains("Device or resource busy")
        {
            msg.push_str(
                " (the guest's QEMU already uses more; raise host.guest_overhead, or set host.libvirt.fence = false)",
            );
        }
        err
    })?;
    Ok(())
}

/// A failed step, or [`FenceError::Gone`] when the domain stopped meanwhile.
fn step(what: &str, e: &VirtError) -> FenceError {
    match e.code() {
        ErrorNumber::NoDomain | ErrorNumber::OperationInvalid => FenceError::Gone,
        _ => FenceError::Failed(format!("{what}: {}", e.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpuset_is_the_first_free_cpus_of_the_affinity() {
        assert_eq!(choose_cpuset(&[0, 1, 2, 3], &[], 2).unwrap(), [0, 1]);
        // Another lease holds 3 and 4; the allocation need not start at 0 nor be contiguous.
        assert_eq!(choose_cpuset(&[2, 3, 4, 6, 7], &[3, 4], 2).unwrap(), [2, 6]);
        assert_eq!(choose_cpuset(&[5, 1, 3], &[], 3).unwrap(), [1, 3, 5]);
        // CPUs another lease holds outside this pilot's allocation do not count against it.
        assert_eq!(choose_cpuset(&[0, 1], &[7, 8], 2).unwrap(), [0, 1]);
    }

    #[test]
    fn too_few_cpus_for_the_lease_is_explained() {
        let e = choose_cpuset(&[0, 1, 2, 3], &[1, 2], 3).unwrap_err();
        assert!(
            e.contains("needs 3 CPUs")
                && e.contains("CPUs 0-3 (4 CPUs")
                && e.contains("other leases hold 2"),
            "{e}"
        );
        assert!(choose_cpuset(&[0], &[], 2).is_err());
    }

    #[test]
    fn cpu_lists_use_ranges() {
        assert_eq!(cpu_list(&[0]), "0");
        assert_eq!(cpu_list(&[3, 0, 1, 2, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(cpu_list(&[]), "none");
    }

    #[test]
    fn cpumaps_have_one_bit_per_cpu() {
        assert_eq!(cpumap(&[0]), [0b1]);
        assert_eq!(cpumap(&[0, 1]), [0b11]);
        assert_eq!(cpumap(&[1, 9]), [0b10, 0b10]);
        assert!(cpumap(&[]).is_empty());
    }

    #[test]
    fn this_process_has_an_affinity() {
        let cpus = pilot_affinity().unwrap();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]), "{cpus:?}");
    }
}
