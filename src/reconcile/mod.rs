//! The reconcile loop: converges what containerd, the kernel and CNI hold to the journal's
//! desired state, one object key at a time.
//!
//! Triggers (API intents, containerd events, resyncs) only add keys to the work queue; a worker
//! takes a key, reads the current desired state and calls [`Reconciler::reconcile`], which never
//! learns why it was called. The outcome is recorded per key (observed generation, last error) so
//! that API handlers can wait for their intent to converge.

mod attempts;
pub mod container;
mod lease;
pub mod orphans;
mod pod_cgroup;
pub mod ports;
mod queue;
mod runtime_config;
mod sandbox;
pub mod steps;

pub use attempts::FirstAttempts;
pub use queue::WorkQueue;
pub use runtime_config::RuntimeConfigReconciler;
pub use sandbox::{SandboxReconciler, SandboxSettings};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::ReconcileConfig;
use crate::containerd::ContainerdError;
use crate::events::ContainerdEvent;
use crate::journal::{JournalHandle, ObjectKey, State};
use crate::metrics::Metrics;

/// Why one reconcile of an object failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A containerd call failed.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// A step of converging a sandbox failed.
    #[error("sandbox {id}: {step}: {message}")]
    Sandbox {
        id: String,
        step: &'static str,
        message: String,
    },
    /// A step of converging a container failed.
    #[error("container {id}: {step}: {message}")]
    Container {
        id: String,
        step: &'static str,
        message: String,
    },
    /// The object cannot become what was asked because of what it was given (an image whose
    /// user database is unusable, a spec the image cannot satisfy): retried like any failure,
    /// but answered as FailedPrecondition, not as concord's own failure.
    #[error("{kind} {id}: {step}: {message}")]
    Refused {
        kind: &'static str,
        id: String,
        step: &'static str,
        message: String,
    },
    /// A fact could not be recorded.
    #[error("recording a fact failed: {0}")]
    Journal(#[from] crate::journal::AppendError),
    /// The reconcile did not finish in time (it is abandoned and retried).
    #[error("reconcile did not finish within {0:?}")]
    Timeout(Duration),
    /// Converging goes on in the next pass (a stop's grace period); not a failure to answer.
    #[error("{0}")]
    Waiting(String),
}

/// Routes each key to the reconciler of its kind.
pub struct Dispatch {
    pub runtime_config: RuntimeConfigReconciler,
    pub sandbox: Arc<SandboxReconciler>,
    pub container: Arc<container::ContainerReconciler>,
}

impl Reconciler for Dispatch {
    fn reconcile<'a>(
        &'a self,
        key: &'a ObjectKey,
        desired: &'a State,
    ) -> BoxFuture<'a, Result<Reconciled, ReconcileError>> {
        match key {
            ObjectKey::RuntimeConfig => Box::pin(self.runtime_config.reconcile(desired)),
            ObjectKey::Sandbox(id) => Box::pin(self.sandbox.reconcile(id, desired)),
            ObjectKey::Container(id) => Box::pin(self.container.reconcile(id, desired)),
        }
    }
}

/// What one successful reconcile saw and did.
#[derive(Debug, Clone, Default)]
pub struct Reconciled {
    /// The actual state after the reconcile, as JSON (shown by introspection).
    pub observed: String,
    /// Actual state differed from desired and was fixed.
    pub drift_corrected: bool,
}

/// Converges one object. Must be idempotent: it re-reads actual state every time.
pub trait Reconciler: Send + Sync + 'static {
    fn reconcile<'a>(
        &'a self,
        key: &'a ObjectKey,
        desired: &'a State,
    ) -> BoxFuture<'a, Result<Reconciled, ReconcileError>>;
}

/// The loop's record of one object.
#[derive(Debug, Clone, Default)]
pub struct ObjectStatus {
    /// Generation the last successful reconcile converged.
    pub observed_generation: u64,
    /// Actual state as JSON after the last success.
    pub observed: String,
    /// Failures since the last success.
    pub retries: u32,
    /// The last failure and the generation it was for.
    pub last_error: Option<(u64, String)>,
    /// That failure was the reconcile running out of `reconcile.timeout_seconds`: abandoned
    /// and retried, not an answer (a stop's grace period longer than the timeout goes on in
    /// the retries), so waiters keep waiting until their own deadline.
    pub last_error_transient: bool,
    /// That failure was a [`ReconcileError::Refused`].
    pub last_error_refused: bool,
    /// A retry is scheduled.
    pub retry_scheduled: bool,
    /// When the last reconcile finished.
    pub last_reconciled: Option<SystemTime>,
    /// How long it took.
    pub last_duration: Duration,
    /// The steps (those the reconciler times) of the last reconcile that took any, in order.
    pub last_steps: Vec<steps::Step>,
    /// When the last failure happened (kept until a success).
    pub last_error_at: Option<SystemTime>,
    /// When the scheduled retry is due.
    pub next_retry: Option<SystemTime>,
}

/// One object as introspection shows it.
#[derive(Debug, Clone)]
pub struct ObjectView {
    pub key: ObjectKey,
    pub desired: String,
    pub generation: u64,
    pub status: ObjectStatus,
    pub pending: bool,
}

impl ObjectView {
    /// The loop's view as verbose status info shows it (`crictl inspectp` / `inspect`): desired
    /// vs observed, generations, pending retry, failures and the last error.
    pub fn info(&self) -> serde_json::Value {
        let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
        serde_json::json!({
            "desired": json(&self.desired),
            "observed": json(&self.status.observed),
            "generation": self.generation,
            "observedGeneration": self.status.observed_generation,
            "converged": self.status.observed_generation >= self.generation && self.status.retries == 0,
            "pending": self.pending,
            "retries": self.status.retries,
            "lastError": self.status.last_error.as_ref().map(|(_, e)| e.as_str()).unwrap_or(""),
            "lastReconciled": unix_secs(self.status.last_reconciled),
            "lastDurationSeconds": self.status.last_duration.as_secs_f64(),
            "lastErrorAt": unix_secs(self.status.last_error_at),
            "nextRetry": unix_secs(self.status.next_retry.filter(|_| self.status.retry_scheduled)),
            "steps": self.status.last_steps.iter().map(|s| serde_json::json!({
                "name": s.name, "seconds": s.duration.as_secs_f64(), "ok": s.ok,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Seconds since the epoch (verbose info's times).
fn unix_secs(t: Option<SystemTime>) -> Option<f64> {
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
}

/// Why waiting for an intent to converge ended without success.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The loop tried and failed; it keeps retrying.
    #[error("{0}")]
    Failed(String),
    /// The loop cannot converge the object as given (its image or spec); it keeps retrying.
    #[error("{0}")]
    Refused(String),
    /// The deadline passed first; the loop keeps converging.
    #[error("not converged within {0:?}")]
    Deadline(Duration),
}

/// The loop: work queue, per-object status, workers.
pub struct Controller {
    queue: WorkQueue<ObjectKey>,
    statuses: Mutex<HashMap<ObjectKey, ObjectStatus>>,
    epoch: watch::Sender<u64>,
    journal: JournalHandle,
    reconciler: Arc<dyn Reconciler>,
    metrics: Arc<Metrics>,
    config: ReconcileConfig,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    resync_hooks: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
    /// Objects whose record a pass of this process removed, having removed everything the
    /// record named (newest last, bounded): the containerd events of that removal, queued
    /// while it ran, need no pass over nothing.
    removed: Mutex<std::collections::VecDeque<ObjectKey>>,
}

/// Most objects [`Controller::removed`] remembers.
const REMEMBER_REMOVED: usize = 256;

impl Controller {
    pub fn new(
        journal: JournalHandle,
        reconciler: Arc<dyn Reconciler>,
        metrics: Arc<Metrics>,
        config: ReconcileConfig,
        shutdown: CancellationToken,
    ) -> Arc<Controller> {
        Arc::new(Controller {
            queue: WorkQueue::default(),
            statuses: Mutex::new(HashMap::new()),
            epoch: watch::channel(0).0,
            journal,
            reconciler,
            metrics,
            config,
            shutdown,
            tracker: TaskTracker::new(),
            resync_hooks: Mutex::new(Vec::new()),
            removed: Default::default(),
        })
    }

    /// Starts the workers and the periodic resync; the handle ends when shutdown fires.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        for n in 0..self.config.workers {
            let this = self.clone();
            self.tracker.spawn(async move { this.worker(n).await });
        }
        let this = self.clone();
        tokio::spawn(async move {
            let interval = this.config.resync_interval_seconds;
            loop {
                tokio::select! {
                    biased;
                    _ = this.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(interval), if !interval.is_zero() => this.resync("periodic"),
                }
            }
            this.queue.close();
            this.tracker.close();
            this.tracker.wait().await;
        })
    }

    /// Queues `key` for a reconcile.
    pub fn wake(&self, key: ObjectKey) {
        self.queue.add(key);
        self.metrics
            .reconcile_queue_depth
            .set(self.queue.depth() as i64);
    }

    /// Runs `hook` on every resync (caches of containerd state rebuild themselves).
    pub fn on_resync(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.resync_hooks.lock().push(Box::new(hook));
    }

    /// Queues every object: events may have been missed (start, reconnect, periodic).
    pub fn resync(&self, reason: &'static str) {
        self.metrics.resyncs.with_label_values(&[reason]).inc();
        for hook in self.resync_hooks.lock().iter() {
            hook();
        }
        let state = self.journal.state();
        for (kind, n) in state.counts() {
            self.metrics
                .objects
                .with_label_values(&[kind])
                .set(n as i64);
        }
        self.count_sandboxes(&state);
        let keys = state.keys();
        // Forget the loop's records of objects that no longer exist.
        {
            let live: std::collections::HashSet<&ObjectKey> = keys.iter().collect();
            self.statuses
                .lock()
                .retain(|k, s| live.contains(k) || s.retry_scheduled);
            // An object recorded since the snapshot above is live too.
            let now = self.journal.state();
            self.journal
                .history()
                .retain(|k| live.contains(k) || now.generation(k) > 0);
        }
        tracing::debug!(reason, objects = keys.len(), "resync");
        for key in keys {
            self.wake(key);
        }
    }

    fn count_sandboxes(&self, state: &State) {
        for (s, n) in state.sandbox_states() {
            self.metrics.sandboxes.with_label_values(&[s]).set(n as i64);
        }
    }

    /// Maps a containerd event to the object it concerns and queues that object.
    pub fn on_containerd_event(&self, event: &ContainerdEvent) {
        let Some(id) = event.container_id() else {
            return;
        };
        match self.journal.state().key_for_containerd_id(id) {
            Some(key) => self.wake(key),
            None => tracing::trace!(container_id = id, ?event, "event for no concord object"),
        }
    }

    /// Waits until `key` converged `generation`, a reconcile of it failed, or `timeout` passed.
    pub async fn wait(
        &self,
        key: &ObjectKey,
        generation: u64,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let mut epoch = self.epoch.subscribe();
        // A caller's deadline beyond what an Instant holds (a StopContainer timeout of
        // i64::MAX seconds) waits as long as anything can.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        loop {
            if let Some(s) = self.statuses.lock().get(key) {
                if s.observed_generation >= generation {
                    return Ok(());
                }
                if let Some((g, e)) = &s.last_error {
                    if *g >= generation && !s.last_error_transient {
                        return Err(if s.last_error_refused {
                            WaitError::Refused(e.clone())
                        } else {
                            WaitError::Failed(e.clone())
                        });
                    }
                }
            }
            match tokio::time::timeout_at(deadline, epoch.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(WaitError::Deadline(timeout)),
            }
        }
    }

    /// Every object with its desired and observed state (introspection).
    pub fn objects(&self) -> Vec<ObjectView> {
        let state = self.journal.state();
        let statuses = self.statuses.lock();
        state
            .objects()
            .into_iter()
            .map(|(key, generation)| {
                let status = statuses.get(&key).cloned().unwrap_or_default();
                let pending = self.queue.is_pending(&key) || status.retry_scheduled;
                ObjectView {
                    desired: state.desired_json(&key).unwrap_or_default(),
                    generation,
                    pending,
                    status,
                    key,
                }
            })
            .collect()
    }

    /// One object's view (None: no such object).
    pub fn object(&self, key: &ObjectKey) -> Option<ObjectView> {
        let state = self.journal.state();
        let desired = state.desired_json(key)?;
        let status = self.statuses.lock().get(key).cloned().unwrap_or_default();
        Some(ObjectView {
            desired,
            generation: state.generation(key),
            pending: self.queue.is_pending(key) || status.retry_scheduled,
            status,
            key: key.clone(),
        })
    }

    /// Objects whose last reconcile failed (retrying), by kind.
    pub fn failing_by_kind(&self) -> Vec<(&'static str, i64)> {
        let mut failing: HashMap<&'static str, i64> = HashMap::new();
        for (key, s) in self.statuses.lock().iter() {
            if s.retries > 0 {
                *failing.entry(key.kind()).or_default() += 1;
            }
        }
        failing.into_iter().collect()
    }

    /// How the loop is doing: objects, objects pending a reconcile, objects whose last
    /// reconcile failed (retrying).
    pub fn health(&self) -> (usize, usize, usize) {
        let views = self.objects();
        let pending = views.iter().filter(|v| v.pending).count();
        let failing = views.iter().filter(|v| v.status.retries > 0).count();
        (views.len(), pending, failing)
    }

    async fn worker(self: Arc<Self>, n: usize) {
        loop {
            let key = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                k = self.queue.next() => match k { Some(k) => k, None => break },
            };
            self.metrics
                .reconcile_queue_depth
                .set(self.queue.depth() as i64);
            self.run_one(&key).await;
            self.queue.done(&key);
        }
        tracing::trace!(worker = n, "reconcile worker stopped");
    }

    async fn run_one(self: &Arc<Self>, key: &ObjectKey) {
        let state = self.journal.state();
        let generation = state.generation(key);
        if generation == 0 && self.removed.lock().contains(key) {
            return;
        }
        let names = state.describe(key);
        let span = tracing::info_span!(
            "reconcile",
            kind = key.kind(),
            id = key.id(),
            generation,
            pod = names.as_ref().map(|n| n.pod.as_str()),
            container = names.as_ref().and_then(|n| n.container.as_deref())
        );
        let start = Instant::now();
        let limit = self.config.timeout_seconds;
        let (result, steps) = steps::collect(tokio::time::timeout(
            limit,
            self.reconciler
                .reconcile(key, &state)
                .instrument(span.clone()),
        ))
        .await;
        let result = result.unwrap_or(Err(ReconcileError::Timeout(limit)));
        if result.is_ok() && generation > 0 && self.journal.state().generation(key) == 0 {
            let mut removed = self.removed.lock();
            if removed.len() >= REMEMBER_REMOVED {
                removed.pop_front();
            }
            removed.push_back(key.clone());
        }
        let kind = key.kind();
        let took = start.elapsed();
        self.metrics
            .reconcile_duration
            .with_label_values(&[kind])
            .observe(took.as_secs_f64());
        self.remember(key, generation, took, &result);
        let retry_in = {
            let mut statuses = self.statuses.lock();
            let s = statuses.entry(key.clone()).or_default();
            let now = SystemTime::now();
            s.last_reconciled = Some(now);
            s.last_duration = took;
            // A pass that did nothing (a resync of a converged object) keeps the steps of the
            // last one that did something.
            if !steps.is_empty() {
                s.last_steps = steps;
            }
            s.next_retry = None;
            match result {
                Ok(r) => {
                    self.metrics
                        .reconciles
                        .with_label_values(&[kind, "ok"])
                        .inc();
                    if r.drift_corrected {
                        self.metrics
                            .drift_corrected
                            .with_label_values(&[kind])
                            .inc();
                    }
                    s.observed_generation = s.observed_generation.max(generation);
                    s.observed = r.observed;
                    s.retries = 0;
                    s.last_error = None;
                    s.last_error_at = None;
                    None
                }
                Err(e) => {
                    self.metrics
                        .reconciles
                        .with_label_values(&[kind, "error"])
                        .inc();
                    self.metrics
                        .reconcile_retries
                        .with_label_values(&[kind])
                        .inc();
                    s.retries += 1;
                    s.retry_scheduled = true;
                    let delay = backoff(&self.config, s.retries);
                    span.in_scope(
                        || tracing::warn!(error = %e, retry_in = ?delay, "reconcile failed"),
                    );
                    s.last_error_transient =
                        matches!(e, ReconcileError::Timeout(_) | ReconcileError::Waiting(_));
                    s.last_error_refused = matches!(e, ReconcileError::Refused { .. });
                    s.last_error = Some((generation, e.to_string()));
                    s.last_error_at = Some(now);
                    s.next_retry = Some(now + delay);
                    Some(delay)
                }
            }
        };
        self.epoch.send_modify(|e| *e += 1);
        if kind == "sandbox" {
            self.count_sandboxes(&self.journal.state());
        }
        if let Some(delay) = retry_in {
            let this = self.clone();
            let key = key.clone();
            self.tracker.spawn(async move {
                tokio::select! {
                    _ = this.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {
                        if let Some(s) = this.statuses.lock().get_mut(&key) {
                            s.retry_scheduled = false;
                        }
                        this.wake(key);
                    }
                }
            });
        }
    }
}

impl Controller {
    /// Adds one reconcile's outcome to the object's history.
    fn remember(
        &self,
        key: &ObjectKey,
        generation: u64,
        took: Duration,
        result: &Result<Reconciled, ReconcileError>,
    ) {
        use crate::journal::history::{Entry, Source};
        let history = self.journal.history();
        let (ok, what, detail) = match result {
            Ok(_) => (true, "converged", String::new()),
            Err(e @ ReconcileError::Waiting(_)) => (false, "waiting", e.to_string()),
            Err(e) => (false, "failed", e.to_string()),
        };
        history.record_outcome(
            key,
            Entry {
                at: crate::clock::now_nanos(),
                source: Source::Reconcile { ok, duration: took },
                generation,
                what: what.into(),
                detail,
            },
        );
    }
}

/// Retry delay after `retries` failures: base × 2^(retries−1), jittered ±50 %, capped.
pub fn backoff(config: &ReconcileConfig, retries: u32) -> Duration {
    let exp = config
        .backoff_base_ms
        .saturating_mul(1u32 << retries.saturating_sub(1).min(31));
    let capped = exp.min(config.backoff_max_ms);
    capped
        .mul_f64(0.5 + fastrand::f64())
        .min(config.backoff_max_ms)
}

#[cfg(test)]
mod container_tests;
#[cfg(test)]
mod fakes;
#[cfg(test)]
mod sandbox_tests;
#[cfg(test)]
mod tests;
