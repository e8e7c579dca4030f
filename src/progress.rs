//! A live one-line status (state, time left) for `vmpilot run` on a terminal.
//!
//! Batch jobs have no terminal, so this is only drawn when stderr is one; log lines are
//! printed above it through [`LogWriter`], which suspends the line while they are written.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use time::OffsetDateTime;

use crate::lease::record::LeaseRecord;

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Start showing the reserved lease's countdown (no-op off a terminal).
pub fn start(record: &LeaseRecord) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("static template"));
    let (id, deadline, grace) = (record.lease_id.clone(), record.deadline, record.grace_secs);
    bar.set_message(format!("lease {id}: reserved"));
    bar.enable_steady_tick(Duration::from_secs(1));
    let ticker = bar.clone();
    // The message is refreshed by the steady tick's redraws through this thread.
    std::thread::spawn(move || {
        while !ticker.is_finished() {
            let left = (deadline - OffsetDateTime::now_utc())
                .whole_seconds()
                .max(0);
            ticker.set_message(format!(
                "lease {id}: reserved, {left}s to deadline (unreserving {grace}s before)"
            ));
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    if let Ok(mut slot) = BAR.lock() {
        *slot = Some(bar);
    }
}

/// Remove the status line.
pub fn finish() {
    if let Some(bar) = BAR.lock().ok().and_then(|mut b| b.take()) {
        bar.finish_and_clear();
    }
}

/// stderr for the log, printing above the status line when there is one.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
