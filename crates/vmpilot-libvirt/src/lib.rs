//! vmpilot's libvirt backend: the only crate that links libvirt (`virt`).
//!
//! libvirt and the ~55 shared libraries it pulls in cost every process that maps them about
//! 8 MiB. So the `vmpilot` binary does not link them: on a node whose config says
//! `[host] backend = "libvirt"` it replaces itself (`exec`, same pid, same arguments) with
//! `vmpilot-libvirt`, the same pilot with this backend provided (docs/hosts.md, "Which
//! binary runs"). A node on another backend maps no libvirt at all.
//!
//! - [`host`]: the backend (admission, ledger, hugepages, fencing, stopping guests);
//! - [`connection`]: opening and closing one connection (also the coordinator's launcher's);
//! - [`events`]: the guest lifecycle watch (libvirt's event loop, the one FFI module);
//! - [`fence`], [`hugepages`]: the lease's CPU/memory fence and the hugepage pool.

use std::sync::Arc;

pub mod connection;
pub mod events;
pub mod fence;
pub mod host;
pub mod hugepages;

pub use connection::{Conn, open_connection};
pub use host::LibvirtHost;
/// The `virt` bindings, for the coordinator's guest launcher: this crate stays the one that
/// depends on them.
pub use virt;

/// Open the libvirt backend for `config`: what the pilot library calls for
/// `backend = "libvirt"` once [`provide`] has run.
pub fn open(
    config: &vmpilot::config::Config,
) -> Result<Arc<dyn vmpilot::host::Host>, vmpilot::host::HostError> {
    Ok(Arc::new(LibvirtHost::open(config)?))
}

/// Make this backend the pilot library's libvirt backend, for this process.
pub fn provide() {
    vmpilot::host::provide_libvirt(open);
}
