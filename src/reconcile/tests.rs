//! The loop's own logic, with paused time and a scripted reconciler: what a real run cannot pin
//! down (which delay a retry took, whether two runs of one key overlapped, what a waiter saw).
//! The reconcilers themselves are proven against the real node (tests/*.rs).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::journal::{Event, JournalHandle, ObjectKey, State};
use crate::metrics::Metrics;

#[test]
fn backoff_grows_and_is_capped() {
    let c = ReconcileConfig {
        backoff_base_ms: Duration::from_millis(100),
        backoff_max_ms: Duration::from_millis(5_000),
        ..ReconcileConfig::default()
    };
    for _ in 0..100 {
        let d1 = backoff(&c, 1).as_millis();
        assert!((50..=150).contains(&d1), "{d1}");
        let d4 = backoff(&c, 4).as_millis();
        assert!((400..=1200).contains(&d4), "{d4}");
        assert!(backoff(&c, 40).as_millis() <= 5_000);
    }
}

/// What the fake does on one call for one key.
#[derive(Clone)]
enum Step {
    /// Succeed at once.
    Ok,
    /// Fail (retried; answers a waiter of this generation with `Failed`).
    Fail,
    /// Refuse the object as given (answers a waiter with `Refused`).
    Refuse,
    /// Report that converging goes on (transient: waiters keep waiting).
    Wait,
    /// Take this long, then succeed.
    Take(Duration),
    /// Succeed once the gate gives a permit.
    Hold(Arc<Semaphore>),
}

/// One call the fake saw.
#[derive(Debug, Clone)]
struct Call {
    key: ObjectKey,
    start: Instant,
    end: Option<Instant>,
}

/// A scripted [`Reconciler`]: per key a list of steps (then `Ok` forever); it records every call
/// and how many ran at once, per key and in all.
#[derive(Default)]
struct Fake {
    steps: Mutex<HashMap<ObjectKey, VecDeque<Step>>>,
    calls: Mutex<Vec<Call>>,
    running: Mutex<HashMap<ObjectKey, usize>>,
    most_per_key: Mutex<usize>,
    most_in_all: Mutex<usize>,
}

impl Fake {
    fn script(&self, key: &ObjectKey, steps: impl IntoIterator<Item = Step>) {
        self.steps
            .lock()
            .entry(key.clone())
            .or_default()
            .extend(steps);
    }

    fn calls(&self, key: &ObjectKey) -> Vec<Call> {
        let calls = self.calls.lock();
        calls.iter().filter(|c| &c.key == key).cloned().collect()
    }

    fn most_per_key(&self) -> usize {
        *self.most_per_key.lock()
    }

    fn most_in_all(&self) -> usize {
        *self.most_in_all.lock()
    }

    /// Records the start of a call; the guard records its end (or its abandonment).
    fn enter<'a>(&'a self, key: &ObjectKey) -> Running<'a> {
        let index = {
            let mut calls = self.calls.lock();
            calls.push(Call {
                key: key.clone(),
                start: Instant::now(),
                end: None,
            });
            calls.len() - 1
        };
        let mut running = self.running.lock();
        *running.entry(key.clone()).or_default() += 1;
        let per_key = running[key];
        let in_all: usize = running.values().sum();
        let mut most = self.most_per_key.lock();
        *most = (*most).max(per_key);
        let mut most = self.most_in_all.lock();
        *most = (*most).max(in_all);
        Running {
            fake: self,
            key: key.clone(),
            index,
        }
    }
}

struct Running<'a> {
    fake: &'a Fake,
    key: ObjectKey,
    index: usize,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.fake.calls.lock()[self.index].end = Some(Instant::now());
        *self.fake.running.lock().get_mut(&self.key).unwrap() -= 1;
    }
}

impl Reconciler for Fake {
    fn reconcile<'a>(
        &'a self,
        key: &'a ObjectKey,
        _desired: &'a State,
    ) -> BoxFuture<'a, Result<Reconciled, ReconcileError>> {
        Box::pin(async move {
            let step = self
                .steps
                .lock()
                .get_mut(key)
                .and_then(VecDeque::pop_front)
                .unwrap_or(Step::Ok);
            let _running = self.enter(key);
            match step {
                Step::Ok => {}
                Step::Fail => {
                    return Err(ReconcileError::Sandbox {
                        id: key.to_string(),
                        step: "fake",
                        message: "scripted failure".into(),
                    })
                }
                Step::Refuse => {
                    return Err(ReconcileError::Refused {
                        kind: key.kind(),
                        id: key.id().into(),
                        step: "fake",
                        message: "scripted refusal".into(),
                    })
                }
                Step::Wait => return Err(ReconcileError::Waiting("scripted wait".into())),
                Step::Take(d) => tokio::time::sleep(d).await,
                Step::Hold(gate) => gate.acquire().await.unwrap().forget(),
            }
            Ok(Reconciled {
                observed: format!("{{\"key\":\"{key}\"}}"),
                drift_corrected: false,
            })
        })
    }
}

/// A running controller over a real journal in a tempdir and the fake.
struct Loop {
    controller: Arc<Controller>,
    journal: JournalHandle,
    fake: Arc<Fake>,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// Backoff 100 ms doubling to 1 s, no periodic resync, a reconcile may take 30 s.
fn config(workers: usize) -> ReconcileConfig {
    ReconcileConfig {
        workers,
        resync_interval_seconds: Duration::from_secs(0),
        backoff_base_ms: Duration::from_millis(100),
        backoff_max_ms: Duration::from_millis(1_000),
        timeout_seconds: Duration::from_secs(30),
    }
}

fn start(config: ReconcileConfig) -> Loop {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let (journal, shutdown) = super::fakes::journal_in(dir.path(), metrics.clone());
    let fake = Arc::new(Fake::default());
    let controller = Controller::new(
        journal.clone(),
        fake.clone(),
        metrics,
        config,
        shutdown.clone(),
    );
    let handle = controller.spawn();
    Loop {
        controller,
        journal,
        fake,
        shutdown,
        handle,
        _dir: dir,
    }
}

impl Loop {
    /// What an API handler does first: records an intent for the runtime config and wakes it;
    /// answers the generation to wait for.
    async fn intend(&self, cidr: &str) -> u64 {
        let state = self
            .journal
            .append(vec![Event::PodCidrRequested { cidr: cidr.into() }])
            .await
            .unwrap();
        self.controller.wake(ObjectKey::RuntimeConfig);
        state.generation(&ObjectKey::RuntimeConfig)
    }

    /// Waits for the runtime config's `generation` as a handler does, with a minute's deadline.
    async fn wait(&self, generation: u64) -> Result<(), WaitError> {
        self.controller.wait(&RC, generation, MINUTE).await
    }

    /// The same wait in a task of its own, to see whether it is still waiting.
    fn spawn_wait(
        &self,
        generation: u64,
        timeout: Duration,
    ) -> tokio::task::JoinHandle<Result<(), WaitError>> {
        let c = self.controller.clone();
        tokio::spawn(async move { c.wait(&RC, generation, timeout).await })
    }

    /// Wakes `key` and lets its reconcile start; it holds until the returned gate opens.
    async fn start_held(&self, key: &ObjectKey) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        self.fake.script(key, [Step::Hold(gate.clone())]);
        self.controller.wake(key.clone());
        settle().await;
        gate
    }

    fn retries(&self, key: &ObjectKey) -> u32 {
        self.controller.object(key).unwrap().status.retries
    }
}

/// Lets every task that can run, run, without letting paused time move.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

fn sandbox(id: &str) -> ObjectKey {
    ObjectKey::Sandbox(id.into())
}

const RC: ObjectKey = ObjectKey::RuntimeConfig;
const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn a_wait_returns_once_its_generation_converges() {
    let l = start(config(2));
    let gate = Arc::new(Semaphore::new(0));
    l.fake.script(&RC, [Step::Hold(gate.clone())]);
    let generation = l.intend("10.1.0.0/16").await;
    assert_eq!(generation, 1);
    let waiter = l.spawn_wait(generation, MINUTE);
    settle().await;
    assert!(!waiter.is_finished(), "answered before the reconcile ended");
    let t0 = Instant::now();
    gate.add_permits(1);
    waiter.await.unwrap().unwrap();
    assert_eq!(
        Instant::now(),
        t0,
        "answered as soon as the reconcile ended"
    );
    let view = l.controller.object(&RC).unwrap();
    assert_eq!(view.status.observed_generation, 1);
    assert_eq!(view.status.observed, "{\"key\":\"runtime_config\"}");
    // A generation already converged is answered at once, without another reconcile.
    l.controller
        .wait(&RC, 1, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(Instant::now(), t0);
    assert_eq!(l.fake.calls(&RC).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_wait_reports_a_failed_reconcile_and_the_loop_keeps_retrying() {
    let l = start(config(2));
    l.fake.script(&RC, [Step::Fail]);
    let generation = l.intend("10.1.0.0/16").await;
    let e = l.wait(generation).await.unwrap_err();
    assert!(
        matches!(&e, WaitError::Failed(m) if m.contains("scripted failure")),
        "{e:?}"
    );
    assert_eq!(l.retries(&RC), 1);
    // Until a retry succeeds, a wait is answered with the standing failure.
    let again = l.wait(generation);
    assert!(matches!(again.await, Err(WaitError::Failed(_))));
    // The retry (within 150 ms) converges it: a wait then succeeds.
    tokio::time::sleep(Duration::from_millis(151)).await;
    l.wait(generation).await.unwrap();
    assert_eq!(l.fake.calls(&RC).len(), 2);
    assert_eq!(l.retries(&RC), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failure_of_an_older_generation_does_not_answer_a_wait_for_a_newer_one() {
    let l = start(config(2));
    let gate = Arc::new(Semaphore::new(0));
    l.fake.script(&RC, [Step::Fail, Step::Hold(gate.clone())]);
    let first = l.intend("10.1.0.0/16").await;
    let e = l.wait(first).await;
    assert!(matches!(e, Err(WaitError::Failed(_))), "{e:?}");
    let second = l.intend("10.2.0.0/16").await;
    assert_eq!(second, first + 1);
    let waiter = l.spawn_wait(second, MINUTE);
    settle().await;
    assert!(
        !waiter.is_finished(),
        "answered with generation 1's failure"
    );
    gate.add_permits(1);
    waiter.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_wait_reports_a_refusal_as_refused() {
    let l = start(config(2));
    l.fake.script(&RC, [Step::Refuse]);
    let generation = l.intend("10.1.0.0/16").await;
    let e = l.wait(generation).await;
    assert!(
        matches!(&e, Err(WaitError::Refused(m)) if m.contains("scripted refusal")),
        "{e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_does_not_answer_a_wait() {
    let l = start(config(2));
    l.fake.script(&RC, [Step::Wait, Step::Wait]);
    let generation = l.intend("10.1.0.0/16").await;
    l.wait(generation).await.unwrap();
    assert_eq!(l.fake.calls(&RC).len(), 3, "two waits, then the success");
}

#[tokio::test(start_paused = true)]
async fn a_reconcile_past_its_timeout_is_abandoned_and_retried_while_the_wait_goes_on() {
    let l = start(ReconcileConfig {
        timeout_seconds: Duration::from_secs(5),
        ..config(2)
    });
    l.fake.script(&RC, [Step::Take(Duration::from_secs(3600))]);
    let t0 = Instant::now();
    let generation = l.intend("10.1.0.0/16").await;
    l.wait(generation).await.unwrap();
    let calls = l.fake.calls(&RC);
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].end.unwrap() - calls[0].start,
        Duration::from_secs(5),
        "abandoned at the timeout"
    );
    let waited = Instant::now() - t0;
    assert!(waited < Duration::from_secs(7), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_wait_ends_with_its_deadline_when_the_loop_does_not_converge() {
    let l = start(config(2));
    let never = Arc::new(Semaphore::new(0));
    l.fake.script(&RC, [Step::Hold(never)]);
    let generation = l.intend("10.1.0.0/16").await;
    let t0 = Instant::now();
    let e = l
        .controller
        .wait(&RC, generation, Duration::from_secs(10))
        .await;
    assert!(
        matches!(e, Err(WaitError::Deadline(d)) if d == Duration::from_secs(10)),
        "{e:?}"
    );
    assert_eq!(Instant::now() - t0, Duration::from_secs(10));
    assert!(
        l.controller.object(&RC).unwrap().pending,
        "still converging"
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_with_a_deadline_past_what_an_instant_holds_still_waits() {
    let l = start(config(2));
    let gate = Arc::new(Semaphore::new(0));
    l.fake.script(&RC, [Step::Hold(gate.clone())]);
    let generation = l.intend("10.1.0.0/16").await;
    let waiter = l.spawn_wait(generation, Duration::MAX);
    settle().await;
    assert!(!waiter.is_finished());
    gate.add_permits(1);
    waiter.await.unwrap().unwrap();
}

/// Bounds of the `retries`-th delay with base 100 ms and cap 1 s: 100 × 2^(n−1), ±50 %, capped.
fn delay_bounds(retries: u32) -> (u64, u64) {
    let exp = (100u64 << (retries - 1)).min(1_000);
    (exp / 2, (exp * 3 / 2).min(1_000))
}

#[tokio::test(start_paused = true)]
async fn failed_reconciles_retry_after_growing_delays_up_to_the_cap() {
    let l = start(config(2));
    let key = RC;
    let failures = 7;
    l.fake.script(&key, (0..failures).map(|_| Step::Fail));
    l.controller.wake(key.clone());
    settle().await;
    for retries in 1..=failures {
        assert_eq!(l.fake.calls(&key).len(), retries as usize);
        assert_eq!(l.retries(&key), retries);
        assert!(
            l.controller.object(&key).unwrap().pending,
            "retry scheduled"
        );
        let (earliest, latest) = delay_bounds(retries);
        // Not before the shortest delay this many failures allow...
        tokio::time::advance(Duration::from_millis(earliest - 1)).await;
        settle().await;
        assert_eq!(
            l.fake.calls(&key).len(),
            retries as usize,
            "retry {retries} came before {earliest} ms"
        );
        // ...and by the longest (one more millisecond: the timer's resolution).
        tokio::time::advance(Duration::from_millis(latest - earliest + 2)).await;
        settle().await;
        assert_eq!(
            l.fake.calls(&key).len(),
            retries as usize + 1,
            "retry {retries} not made within {latest} ms"
        );
    }
    // The last retry succeeded: no more retries, the count is reset.
    assert_eq!(l.retries(&key), 0);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(l.fake.calls(&key).len(), failures as usize + 1);
    assert!(!l.controller.object(&key).unwrap().pending);
}

#[tokio::test(start_paused = true)]
async fn retry_delays_measured_on_the_clock_grow_and_stay_under_the_cap() {
    let l = start(config(2));
    let key = RC;
    let failures = 8;
    l.fake.script(&key, (0..failures).map(|_| Step::Fail));
    l.controller.wake(key.clone());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let calls = l.fake.calls(&key);
    assert_eq!(calls.len(), failures as usize + 1);
    for (n, pair) in calls.windows(2).enumerate() {
        let delay = (pair[1].start - pair[0].end.unwrap()).as_millis() as u64;
        let (earliest, latest) = delay_bounds(n as u32 + 1);
        assert!(
            (earliest..=latest + 1).contains(&delay),
            "delay {} was {delay} ms, not in {earliest}..={latest}",
            n + 1
        );
    }
}

#[tokio::test(start_paused = true)]
async fn wakes_of_one_key_never_run_its_reconciles_at_once() {
    let l = start(config(4));
    let a = sandbox("a");
    let second = Duration::from_secs(1);
    l.fake.script(&a, [Step::Take(second), Step::Take(second)]);
    l.controller.wake(a.clone());
    // Wakes from several triggers while it runs, with idle workers that could take it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    l.controller.wake(a.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    l.controller.wake(a.clone());
    tokio::time::sleep(Duration::from_millis(600)).await;
    l.controller.wake(a.clone());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(l.fake.most_per_key(), 1);
    let calls = l.fake.calls(&a);
    assert_eq!(calls.len(), 3, "{calls:?}");
    for pair in calls.windows(2) {
        assert!(pair[1].start >= pair[0].end.unwrap(), "{calls:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn different_keys_run_at_once_up_to_the_worker_count() {
    let l = start(config(2));
    let second = Duration::from_secs(1);
    let keys = [sandbox("a"), sandbox("b"), sandbox("c")];
    let t0 = Instant::now();
    for key in &keys {
        l.fake.script(key, [Step::Take(second)]);
        l.controller.wake(key.clone());
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(l.fake.most_in_all(), 2);
    let starts: Vec<Duration> = keys.iter().map(|k| l.fake.calls(k)[0].start - t0).collect();
    assert_eq!(starts, [Duration::ZERO, Duration::ZERO, second]);
}

#[tokio::test(start_paused = true)]
async fn a_wake_during_a_run_runs_the_key_once_more_after_it() {
    let l = start(config(4));
    let a = sandbox("a");
    let gate = l.start_held(&a).await;
    for _ in 0..3 {
        l.controller.wake(a.clone());
    }
    settle().await;
    assert_eq!(l.fake.calls(&a).len(), 1, "ran again while running");
    gate.add_permits(1);
    settle().await;
    let calls = l.fake.calls(&a);
    assert_eq!(calls.len(), 2, "the wakes were lost or not merged");
    assert!(calls[1].start >= calls[0].end.unwrap());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(l.fake.calls(&a).len(), 2, "ran more than once more");
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_workers_and_pending_retries_and_ends_the_handle() {
    let l = start(config(2));
    let a = sandbox("a");
    l.fake.script(&a, [Step::Fail]);
    l.controller.wake(a.clone());
    settle().await;
    assert_eq!(l.fake.calls(&a).len(), 1);
    let t0 = Instant::now();
    l.shutdown.cancel();
    l.handle.await.unwrap();
    assert_eq!(
        Instant::now(),
        t0,
        "the handle waited for the scheduled retry"
    );
    l.controller.wake(a.clone());
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(l.fake.calls(&a).len(), 1, "reconciled after shutdown");
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_a_running_reconcile_finish_before_the_handle_ends() {
    let l = start(config(2));
    let a = sandbox("a");
    let gate = l.start_held(&a).await;
    l.shutdown.cancel();
    settle().await;
    assert!(!l.handle.is_finished(), "ended under a running reconcile");
    gate.add_permits(1);
    l.handle.await.unwrap();
    assert!(l.fake.calls(&a)[0].end.is_some());
}
