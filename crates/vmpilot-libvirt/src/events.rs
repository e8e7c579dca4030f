//! Domain events from libvirt: what wakes the pilot's budget check while a lease is
//! reserved, so a guest started over budget is noticed at once and nothing is polled.
//!
//! libvirt delivers events only to a process that runs an event loop. The first watch
//! registers libvirt's default loop implementation (once per process, before opening the
//! watching connection, as libvirt requires) and starts one thread, `libvirt-events`, that
//! runs it for the rest of the process. Each watch then holds one long-lived connection of
//! its own — unlike every other call of this backend, which opens a fresh one — with two
//! domain event callbacks (lifecycle: defined, started, resumed, stopped, ...; metadata
//! changed: a guest may have been given to the lease) and a close callback.
//!
//! The callbacks run on the event loop thread and only send `()` on the pilot's channel;
//! the pilot lists guests itself. When libvirtd goes away (restart, crash, keepalive
//! timeout) the close callback wakes the watch's own thread, which drops the dead
//! connection and reconnects with a capped backoff; after reconnecting it sends one `()`,
//! since guests may have started while no events could arrive. Dropping the watch
//! deregisters everything and waits at most [`STOP_WAIT`] for its thread.
//!
//! `virt` 0.4.3 has no safe wrapper for `virConnectDomainEventRegisterAny`, so this file
//! calls the C API through `virt::sys`; every `unsafe` block says why it is sound.
// The one module with `unsafe` (the workspace denies it elsewhere): libvirt's event API has
// no safe binding.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use virt::connect::Connect;
use virt::error::Error as VirtError;
use virt::sys;

use vmpilot::config::HostBackend;
use vmpilot::host::{GuestWatch, HostError};

/// The first wait before reconnecting; doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long dropping a watch waits for its thread to deregister and close.
pub const STOP_WAIT: Duration = Duration::from_secs(3);

/// What the watch thread is woken for.
enum Wake {
    /// The watch was dropped.
    Stop,
    /// libvirt closed the connection (daemon gone, keepalive timeout).
    Closed,
}

/// Start watching domains on `uri`; `()` on `notify` for every event.
pub fn watch(uri: &str, notify: UnboundedSender<()>) -> Result<GuestWatch, HostError> {
    start_event_loop()?;
    let (wake_tx, wake_rx) = std_mpsc::channel();
    // Connect here first so the common case reports on the caller's thread; a libvirtd that
    // is away right now is retried by the thread instead of failing the lease.
    let first = match Registration::open(uri, &notify, &wake_tx) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(uri, error = %e, "cannot watch guest events yet; retrying in the background");
            None
        }
    };
    let (done_tx, done_rx) = std_mpsc::channel::<()>();
    let uri = uri.to_string();
    let closer = wake_tx.clone();
    let thread = std::thread::Builder::new()
        .name("vmpilot-guest-watch".into())
        .spawn(move || {
            run(&uri, first, &notify, &closer, &wake_rx);
            let _ = done_tx.send(());
        })
        .map_err(|e| HostError::Operation {
            op: "watch guests".into(),
            detail: format!("cannot start a thread: {e}"),
        })?;
    Ok(GuestWatch::new(move || {
        let _ = wake_tx.send(Wake::Stop);
        match done_rx.recv_timeout(STOP_WAIT) {
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
            }
            // A hung libvirtd can hold a deregistration until its keepalive gives up; the
            // thread finishes on its own then, and must not hold up the lease's end.
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(after = ?STOP_WAIT, "the guest event watch did not stop in time; leaving it to finish on its own");
            }
        }
    }))
}

/// The watch thread: wait for a stop or a closed connection; reconnect after the latter.
fn run(
    uri: &str,
    mut current: Option<Registration>,
    notify: &UnboundedSender<()>,
    closer: &std_mpsc::Sender<Wake>,
    wake: &std_mpsc::Receiver<Wake>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        if current.is_some() {
            match wake.recv() {
                Ok(Wake::Closed) => {
                    tracing::warn!(
                        uri,
                        "libvirt closed the guest event connection; reconnecting"
                    );
                    current = None;
                    backoff = MIN_BACKOFF;
                }
                Ok(Wake::Stop) | Err(_) => return,
            }
            continue;
        }
        match wake.recv_timeout(backoff) {
            Ok(Wake::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            // From a connection already dropped.
            Ok(Wake::Closed) => continue,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
        }
        match Registration::open(uri, notify, closer) {
            Ok(r) => {
                tracing::info!(uri, "watching guest events again");
                current = Some(r);
                // Guests may have changed while no events could arrive.
                if notify.send(()).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(uri, error = %e, retry_in = ?backoff, "cannot reconnect for guest events");
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Register libvirt's default event loop and run it in a thread of its own, once per
/// process. libvirt offers no way to stop it; it idles in `poll` when there is nothing to do.
fn start_event_loop() -> Result<(), HostError> {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    let started = STARTED.get_or_init(|| {
        virt::event::event_register_default_impl().map_err(|e| e.message().to_string())?;
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| {
                loop {
                    if let Err(e) = virt::event::event_run_default_impl() {
                        tracing::warn!(error = %e.message(), "libvirt event loop iteration failed");
                        // Never spin on a persistent failure.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .map(drop)
            .map_err(|e| format!("cannot start the libvirt event thread: {e}"))
    });
    started.clone().map_err(|detail| HostError::Operation {
        op: "start the libvirt event loop".into(),
        detail,
    })
}

/// One connection with our callbacks on it; dropping it deregisters them and closes it.
struct Registration {
    conn: Connect,
    /// Domain event callback ids.
    callbacks: Vec<c_int>,
    close_registered: bool,
}

impl Registration {
    fn open(
        uri: &str,
        notify: &UnboundedSender<()>,
        wake: &std_mpsc::Sender<Wake>,
    ) -> Result<Registration, HostError> {
        let failed = |what: &str, e: VirtError| HostError::Unreachable {
            backend: HostBackend::Libvirt,
            detail: format!("{what} on {uri}: {}", e.message()),
        };
        let conn = Connect::open(Some(uri)).map_err(|e| failed("cannot connect", e))?;
        let mut reg = Registration {
            conn,
            callbacks: Vec::new(),
            close_registered: false,
        };
        let opaque = Box::into_raw(Box::new(wake.clone())).cast::<c_void>();
        // SAFETY: the connection is open. `opaque` is a leaked `Box<Sender<Wake>>` that only
        // `on_close` reads and only `free_wake` frees; libvirt calls `free_wake` when the
        // callback is unregistered or the connection is disposed, and not at all when
        // registration fails, in which case we free it below.
        let rc = unsafe {
            sys::virConnectRegisterCloseCallback(
                reg.conn.as_ptr(),
                Some(on_close),
                opaque,
                Some(free_wake),
            )
        };
        if rc < 0 {
            // SAFETY: libvirt did not take `opaque`; it is still ours, from `Box::into_raw`.
            drop(unsafe { Box::from_raw(opaque.cast::<std_mpsc::Sender<Wake>>()) });
            return Err(failed(
                "cannot register a close callback",
                VirtError::last_error(),
            ));
        }
        reg.close_registered = true;
        for (event, callback) in domain_callbacks() {
            let opaque = Box::into_raw(Box::new(notify.clone())).cast::<c_void>();
            // SAFETY: as above, with `free_notify` owning the leaked
            // `Box<UnboundedSender<()>>`. A null domain asks for events of every domain.
            // `callback` has the signature libvirt uses for `event` (see
            // `domain_callbacks`).
            let id = unsafe {
                sys::virConnectDomainEventRegisterAny(
                    reg.conn.as_ptr(),
                    ptr::null_mut(),
                    event as c_int,
                    callback,
                    opaque,
                    Some(free_notify),
                )
            };
            if id < 0 {
                // SAFETY: libvirt did not take `opaque` (see above).
                drop(unsafe { Box::from_raw(opaque.cast::<UnboundedSender<()>>()) });
                // `reg` is dropped here, deregistering what was registered.
                return Err(failed(
                    "cannot register for domain events",
                    VirtError::last_error(),
                ));
            }
            reg.callbacks.push(id);
        }
        Ok(reg)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for id in self.callbacks.drain(..) {
            // SAFETY: `id` was returned by a successful registration on this still-open
            // connection. libvirt removes the callback locally (calling `free_notify`) even
            // when it cannot tell a dead daemon; the result is of no further use.
            unsafe { sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), id) };
        }
        if self.close_registered {
            // SAFETY: `on_close` is registered on this still-open connection; unregistering
            // is local to the client and calls `free_wake`.
            unsafe { sys::virConnectUnregisterCloseCallback(self.conn.as_ptr(), Some(on_close)) };
        }
        // A connection whose daemon is gone may fail to close; nothing is left to free then.
        let _ = self.conn.close();
    }
}

/// The domain events we register for, each with a callback of the signature libvirt calls
/// for it. libvirt's API takes every domain callback as the generic type, and the caller
/// casts (`VIR_DOMAIN_EVENT_CALLBACK` in C); the transmutes below are that cast.
fn domain_callbacks() -> [(
    sys::virDomainEventID,
    sys::virConnectDomainEventGenericCallback,
); 2] {
    type Lifecycle = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        c_int,
        c_int,
        *mut c_void,
    ) -> c_int;
    type Metadata = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        c_int,
        *const c_char,
        *mut c_void,
    );
    type Generic = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
    // SAFETY: function pointers of the same ABI and size. libvirt calls each pointer only
    // with the arguments of the event it was registered for: `virConnectDomainEventCallback`
    // for LIFECYCLE, `virConnectDomainEventMetadataChangeCallback` for METADATA_CHANGE,
    // which are exactly `Lifecycle` and `Metadata`.
    let (lifecycle, metadata) = unsafe {
        (
            std::mem::transmute::<Lifecycle, Generic>(on_lifecycle),
            std::mem::transmute::<Metadata, Generic>(on_metadata_change),
        )
    };
    [
        (sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE, Some(lifecycle)),
        (sys::VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, Some(metadata)),
    ]
}

/// Tell the pilot; `opaque` is the registration's `UnboundedSender<()>`.
///
/// # Safety
///
/// `opaque` must be a live `Box<UnboundedSender<()>>` pointer, which libvirt guarantees
/// until it calls `free_notify` for the registration.
unsafe fn poke(opaque: *mut c_void) {
    // SAFETY: see the function's contract. Only a shared reference is taken, and
    // `UnboundedSender::send` is callable from any thread and never blocks or panics.
    let notify = unsafe { &*opaque.cast::<UnboundedSender<()>>() };
    // The pilot may have stopped listening already; it drops the watch next.
    let _ = notify.send(());
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    _dom: sys::virDomainPtr,
    _event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: libvirt passes back the opaque pointer registered with this callback.
    unsafe { poke(opaque) };
    0
}

unsafe extern "C" fn on_metadata_change(
    _conn: sys::virConnectPtr,
    _dom: sys::virDomainPtr,
    _kind: c_int,
    _nsuri: *const c_char,
    opaque: *mut c_void,
) {
    // SAFETY: as in `on_lifecycle`.
    unsafe { poke(opaque) };
}

unsafe extern "C" fn free_notify(opaque: *mut c_void) {
    // SAFETY: libvirt calls this once per registration, with the pointer from
    // `Box::into_raw` in `Registration::open`, after the last callback for it.
    drop(unsafe { Box::from_raw(opaque.cast::<UnboundedSender<()>>()) });
}

unsafe extern "C" fn on_close(_conn: sys::virConnectPtr, _reason: c_int, opaque: *mut c_void) {
    // SAFETY: the `Box<Sender<Wake>>` registered with this callback, live until
    // `free_wake`. `Sender::send` never blocks; a gone receiver means the watch stopped.
    let wake = unsafe { &*opaque.cast::<std_mpsc::Sender<Wake>>() };
    let _ = wake.send(Wake::Closed);
}

unsafe extern "C" fn free_wake(opaque: *mut c_void) {
    // SAFETY: called once, with the pointer from `Box::into_raw` in `Registration::open`.
    drop(unsafe { Box::from_raw(opaque.cast::<std_mpsc::Sender<Wake>>()) });
}
