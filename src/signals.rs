//! OS signals, turned into lease events.
//!
//! Handlers are installed before the pilot touches anything, so a signal that arrives
//! while reserving is queued, not lost, and is acted on (by rolling the reservation back)
//! as soon as the host call returns. What each signal means:
//! - SIGTERM, SIGINT, SIGHUP: the job is being cancelled or preempted — unreserve now;
//!   a second one skips graceful guest shutdown;
//! - SIGUSR1: the batch system's early warning (Slurm `--signal=B:USR1@N`) — unreserve.

use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::lease::Event;

/// A signal the pilot acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PilotSignal {
    /// SIGTERM, SIGINT or SIGHUP, by name.
    Terminate(&'static str),
    /// SIGUSR1.
    EarlyWarning,
}

impl PilotSignal {
    /// The lease event this signal is.
    pub fn event(&self) -> Event {
        match self {
            PilotSignal::Terminate(name) => Event::Terminate {
                signal: name.to_string(),
                preempted: false,
            },
            PilotSignal::EarlyWarning => Event::EarlyWarning,
        }
    }
}

/// Installed handlers; signals arrive in order on one channel.
#[derive(Debug)]
pub struct Signals {
    rx: mpsc::UnboundedReceiver<PilotSignal>,
}

impl Signals {
    /// Install handlers for every signal the pilot acts on. Needs a tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        let (tx, rx) = mpsc::unbounded_channel();
        let kinds = [
            (SignalKind::terminate(), PilotSignal::Terminate("SIGTERM")),
            (SignalKind::interrupt(), PilotSignal::Terminate("SIGINT")),
            (SignalKind::hangup(), PilotSignal::Terminate("SIGHUP")),
            (SignalKind::user_defined1(), PilotSignal::EarlyWarning),
        ];
        for (kind, what) in kinds {
            let mut stream = signal(kind)?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(what.clone()).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Signals { rx })
    }

    /// Wait for the next signal.
    pub async fn recv(&mut self) -> Option<PilotSignal> {
        self.rx.recv().await
    }

    /// A signal that already arrived, if any.
    pub fn try_recv(&mut self) -> Option<PilotSignal> {
        self.rx.try_recv().ok()
    }

    /// Retry `attempt` (which must not block) every 20 ms until it yields something,
    /// `timeout` passes, or a signal arrives: a wait before the host is touched must never
    /// spend the batch system's kill delay. An error from `attempt` ends the wait.
    pub async fn poll_until<T, E>(
        &mut self,
        timeout: Duration,
        mut attempt: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<Waited<T>, E> {
        let started = Instant::now();
        loop {
            if let Some(sig) = self.try_recv() {
                return Ok(Waited::Signalled(sig));
            }
            if let Some(done) = attempt()? {
                return Ok(Waited::Done(done));
            }
            if started.elapsed() >= timeout {
                return Ok(Waited::TimedOut(started.elapsed()));
            }
            tokio::select! {
                Some(sig) = self.rx.recv() => return Ok(Waited::Signalled(sig)),
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// How often [`Signals::poll_until`] retries.
const POLL: Duration = Duration::from_millis(20);

/// How a wait that signals may cut short ended.
#[derive(Debug)]
pub enum Waited<T> {
    /// It got what it waited for.
    Done(T),
    /// A signal came first.
    Signalled(PilotSignal),
    /// Nothing came within the timeout (how long it waited).
    TimedOut(Duration),
}
