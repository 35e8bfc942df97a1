//! containerd health: a periodic Version call behind Status' RuntimeReady and the readiness gate.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Containerd;
use crate::metrics::Metrics;

/// What the last health check found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// At least one check has finished.
    pub checked: bool,
    /// containerd answered the last check.
    pub ready: bool,
    /// containerd's version when ready.
    pub version: String,
    /// Why it is not ready ("" when ready).
    pub message: String,
}

/// Checks containerd every `interval` (and at once); every change is published on the returned
/// receiver. `on_ready` runs each time containerd becomes ready (concord then resyncs: whatever
/// happened while it was away was not seen).
pub fn spawn_health_monitor(
    ctd: Containerd,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    on_ready: impl Fn() + Send + 'static,
) -> (watch::Receiver<Health>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Health {
        checked: false,
        ready: false,
        version: String::new(),
        message: format!("containerd at {} not checked yet", ctd.address().display()),
    });
    let task = tokio::spawn(async move {
        loop {
            let check = tokio::time::timeout(interval.max(Duration::from_secs(1)), ctd.version());
            let health = match check.await {
                Ok(Ok((version, _))) => Health {
                    checked: true,
                    ready: true,
                    version,
                    message: String::new(),
                },
                Ok(Err(e)) => Health {
                    checked: true,
                    ready: false,
                    version: String::new(),
                    message: format!(
                        "containerd at {} does not answer: {e}",
                        ctd.address().display()
                    ),
                },
                Err(_) => Health {
                    checked: true,
                    ready: false,
                    version: String::new(),
                    message: format!(
                        "containerd at {} did not answer within {interval:?}",
                        ctd.address().display()
                    ),
                },
            };
            let was_ready = tx.borrow().ready;
            if health.ready != was_ready {
                if health.ready {
                    tracing::info!(version = %health.version, "containerd is ready");
                } else {
                    tracing::warn!(reason = %health.message, "containerd is not ready");
                }
            }
            metrics.containerd_up.set(health.ready as i64);
            let became_ready = health.ready && !was_ready;
            tx.send_if_modified(|h| {
                let changed = *h != health;
                *h = health;
                changed
            });
            if became_ready {
                on_ready();
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    });
    (rx, task)
}
