//! Crash points: every place where the pilot persists state or acts on the host, named so a
//! test can SIGKILL the pilot exactly there and prove that `vmpilot recover` restores the
//! node from what was persisted.
//!
//! Only builds with the `fault-injection` cargo feature honour `VMPILOT_CRASH_AT`; in other
//! builds [`hit`] compiles to nothing, so a production binary cannot be made to crash by its
//! environment.

/// A point where the pilot persists or acts, in the order a lease passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// The `begin` record is on disk; the host is untouched.
    BeginSaved,
    /// The `reserving` intent is on disk; the host is about to change.
    ReservingSaved,
    /// The host holds the lease's share; the baseline is not on disk yet.
    HostReserved,
    /// The baseline is on disk.
    BaselineSaved,
    /// The `reserved` state is on disk; the event is not spooled yet.
    ReservedSaved,
    /// The `reserved` event is spooled.
    ReservedSpooled,
    /// The `unreserving` intent is on disk; guests still run.
    UnreservingSaved,
    /// The `unreserving` event is spooled.
    UnreservingSpooled,
    /// The lease's guests are stopped and their fates on disk; the host still holds the share.
    GuestsStopped,
    /// The host gave the share back; the record does not say so yet.
    HostReleased,
    /// The `unreserved` state is on disk with its end report due; no end event exists yet.
    UnreservedSaved,
    /// The end events are in the record and spooled; the record does not say so yet.
    UnreservedSpooled,
    /// Inside a backend that moves a host-wide value (the hugepage pool, dom0's memory):
    /// the value for a release is written, the ledger still holds the lease's entry. Not in
    /// [`Point::ALL`]: the simulated host never reaches it.
    HostValueSet,
}

impl Point {
    /// Every point, in lease order.
    pub const ALL: [Point; 12] = [
        Point::BeginSaved,
        Point::ReservingSaved,
        Point::HostReserved,
        Point::BaselineSaved,
        Point::ReservedSaved,
        Point::ReservedSpooled,
        Point::UnreservingSaved,
        Point::UnreservingSpooled,
        Point::GuestsStopped,
        Point::HostReleased,
        Point::UnreservedSaved,
        Point::UnreservedSpooled,
    ];

    /// The name `VMPILOT_CRASH_AT` takes.
    pub fn name(self) -> &'static str {
        match self {
            Point::BeginSaved => "begin-saved",
            Point::ReservingSaved => "reserving-saved",
            Point::HostReserved => "host-reserved",
            Point::BaselineSaved => "baseline-saved",
            Point::ReservedSaved => "reserved-saved",
            Point::ReservedSpooled => "reserved-spooled",
            Point::UnreservingSaved => "unreserving-saved",
            Point::UnreservingSpooled => "unreserving-spooled",
            Point::GuestsStopped => "guests-stopped",
            Point::HostReleased => "host-released",
            Point::UnreservedSaved => "unreserved-saved",
            Point::UnreservedSpooled => "unreserved-spooled",
            Point::HostValueSet => "host-value-set",
        }
    }
}

/// SIGKILL this process if `VMPILOT_CRASH_AT` names `point` (fault-injection builds only).
#[inline]
pub fn hit(point: Point) {
    #[cfg(feature = "fault-injection")]
    if std::env::var("VMPILOT_CRASH_AT").as_deref() == Ok(point.name()) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = point;
}
