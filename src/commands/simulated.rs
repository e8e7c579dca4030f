//! `vmpilot simulated`: add guests and inject faults on the simulated host, the way a
//! coordinator and a misbehaving hypervisor would on a real one.

use crate::cli::{SimulatedAction, SimulatedArgs};
use crate::config::{HostBackend, Overrides};
use crate::exit::ExitStatus;
use crate::host::GuestOwner;
use crate::host::simulated::{Fault, SimGuest, SimState, SimulatedHost};

use super::Globals;

/// Entry point.
pub fn simulated(globals: &Globals, args: SimulatedArgs) -> anyhow::Result<ExitStatus> {
    let config = globals.load(Overrides {
        backend: Some(HostBackend::Simulated),
        ..Default::default()
    })?;
    let host = SimulatedHost::open(
        &config.state_dir,
        config.host.simulated,
        config.host.host_reserve,
        config.host.guest_overhead,
    )?;
    match args.action {
        SimulatedAction::AddGuest {
            name,
            lease,
            epoch,
            memory,
            vcpus,
            shutdown_delay,
            ignore_shutdown,
        } => {
            let owner = match lease {
                Some(id) => Some(GuestOwner {
                    lease_id: id.parse()?,
                    epoch,
                }),
                None => None,
            };
            let guest = SimGuest {
                name: name.clone(),
                owner,
                memory_mib: memory.mib(),
                vcpus,
                state: SimState::Running,
                shutdown_delay_ms: (!ignore_shutdown)
                    .then(|| shutdown_delay.get().as_millis() as u64),
                shutdown_requested_ms: None,
            };
            host.with_node("add guest", |n| {
                n.guests.retain(|g| g.name != name);
                n.guests.push(guest);
                Ok(())
            })?;
        }
        SimulatedAction::Fault {
            op,
            mode,
            times,
            hang,
        } => {
            host.with_node("arm fault", |n| {
                n.faults.push(Fault {
                    op,
                    mode,
                    times,
                    hang_ms: hang.get().as_millis() as u64,
                });
                Ok(())
            })?;
        }
        SimulatedAction::Show => {
            let node = host.with_node("show", |n| Ok(n.clone()))?;
            println!("{}", serde_json::to_string_pretty(&node)?);
        }
    }
    Ok(ExitStatus::Success)
}
