//! containerd health: a periodic Version call behind Status' RuntimeReady and the readiness gate.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
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
    /// How many checks have finished: a waiter for a fresh answer waits for this to move.
    pub checks: u64,
}

/// The monitor's published answer, and a way to ask it to check again now.
#[derive(Debug, Clone)]
pub struct HealthWatch {
    rx: watch::Receiver<Health>,
    recheck: Arc<Notify>,
}

/// Shortest gap between two checks asked for out of turn: a burst of refused calls during an outage
/// costs one check, not one each.
const MIN_RECHECK_GAP: Duration = Duration::from_millis(100);

impl HealthWatch {
    /// The last check's answer.
    pub fn current(&self) -> Health {
        self.rx.borrow().clone()
    }

    /// Asks for a check now (the event stream is back, or a call found containerd down).
    pub fn recheck(&self) {
        self.recheck.notify_one();
    }

    /// Whether containerd is ready, waiting at most `wait` for an answer: for the first check
    /// after start, and, when the last check found containerd down, for a fresh check asked for
    /// now. containerd may have come back since the last periodic check, and a call should not be
    /// refused for a gap of up to the check interval.
    pub async fn ready_within(&self, wait: Duration) -> Health {
        let last = self.current();
        if last.ready {
            return last;
        }
        let mut rx = self.rx.clone();
        let seen = last.checks;
        if last.checked {
            self.recheck();
        }
        let _ = tokio::time::timeout(wait, rx.wait_for(|h| h.checks > seen)).await;
        self.current()
    }
}

/// Checks containerd every `interval` (and at once); every check's answer is published on the
/// returned [`HealthWatch`], which can also ask for a check out of turn. `on_ready` runs each time
/// containerd becomes ready (concord then resyncs: whatever happened while it was away was not
/// seen).
pub fn spawn_health_monitor(
    ctd: Containerd,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    on_ready: impl Fn() + Send + 'static,
) -> (HealthWatch, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Health {
        checked: false,
        ready: false,
        version: String::new(),
        message: format!("containerd at {} not checked yet", ctd.address().display()),
        checks: 0,
    });
    let recheck = Arc::new(Notify::new());
    let asked = recheck.clone();
    let task = tokio::spawn(async move {
        let mut checks = 0u64;
        loop {
            checks += 1;
            let started = tokio::time::Instant::now();
            let check = tokio::time::timeout(interval.max(Duration::from_secs(1)), ctd.version());
            let health = match check.await {
                Ok(Ok((version, _))) => Health {
                    checked: true,
                    ready: true,
                    version,
                    message: String::new(),
                    checks,
                },
                Ok(Err(e)) => Health {
                    checked: true,
                    ready: false,
                    version: String::new(),
                    message: format!(
                        "containerd at {} does not answer: {e}",
                        ctd.address().display()
                    ),
                    checks,
                },
                Err(_) => Health {
                    checked: true,
                    ready: false,
                    version: String::new(),
                    message: format!(
                        "containerd at {} did not answer within {interval:?}",
                        ctd.address().display()
                    ),
                    checks,
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
            tx.send_replace(health);
            if became_ready {
                on_ready();
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
                _ = asked.notified() => tokio::time::sleep_until(started + MIN_RECHECK_GAP).await,
            }
        }
    });
    (HealthWatch { rx, recheck }, task)
}
