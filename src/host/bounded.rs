//! Blocking host calls (libvirt's API, `xl`, the simulated host's files) run off the async
//! runtime and with a bound: the one helper every caller uses, so a hung hypervisor costs a
//! timeout, never the pilot's deadline, and a panic in a call is an error, not an abort.

use std::time::Duration;

use super::HostError;

/// Run `f` on tokio's blocking pool and wait at most `limit`. A call still running at the
/// bound keeps running in its thread (a blocking call cannot be cancelled); the caller is
/// told [`HostError::Timeout`] and goes on.
pub async fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> Result<T, HostError> + Send + 'static,
) -> Result<T, HostError> {
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(HostError::Operation {
            op: what.to_string(),
            detail: format!(
                "the host call panicked ({join}); what it was changing may be half done (guests may still run) and the host is not restored"
            ),
        }),
        Err(_) => Err(HostError::Timeout {
            op: what.to_string(),
            after: limit,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_hangs_and_panics_are_told_apart() {
        let ok = bounded("ok", Duration::from_secs(5), || Ok(7))
            .await
            .unwrap();
        assert_eq!(ok, 7);
        let hung = bounded("hang", Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_millis(500));
            Ok(())
        })
        .await
        .unwrap_err();
        assert!(matches!(hung, HostError::Timeout { .. }), "{hung}");
        let panicked = bounded::<()>("boom", Duration::from_secs(5), || panic!("boom"))
            .await
            .unwrap_err();
        assert!(panicked.to_string().contains("panicked"), "{panicked}");
    }
}
