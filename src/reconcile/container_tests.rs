//! The container reconciler's stop and removal against an in-memory containerd (`fakes.rs`),
//! under paused time: when the stop signal and SIGKILL go (to the instant), across passes.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::container::{ContainerReconciler, ContainerSettings};
use super::fakes::{images_with, journal_in, Call, FakeContainerd};
use super::ReconcileError;
use crate::journal::{Event, JournalHandle};
use crate::metrics::Metrics;

const ID: &str = "c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0";
const POD: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// A container reconciler on a fake containerd, over a journal recording container `ID` as
/// running (its task running in the fake).
struct Node {
    r: ContainerReconciler<FakeContainerd>,
    ctd: FakeContainerd,
    journal: JournalHandle,
    dir: tempfile::TempDir,
    _stop: tokio_util::sync::CancellationToken,
}

/// A reconciler over `journal` and `ctd`, as a process starting now makes it (the records the
/// journal holds are a previous process's). `reconcile_timeout`: a stop's pass waits three
/// quarters of it at most.
async fn reconciler(
    dir: &std::path::Path,
    journal: &JournalHandle,
    ctd: &FakeContainerd,
    reconcile_timeout: Duration,
) -> ContainerReconciler<FakeContainerd> {
    let settings = ContainerSettings {
        snapshotter: "overlayfs".into(),
        runtime: Default::default(),
        layout: crate::state_layout::StateLayout::new(dir.join("state")),
        log_writer: "/nonexistent".into(),
        max_log_line: 16 << 10,
        reconcile_timeout,
        metrics: Arc::new(Metrics::new()),
    };
    let images = images_with(dir, "busybox:latest").await;
    let attachments = crate::attach::Attachments::new(16 << 10);
    ContainerReconciler::new(ctd.clone(), images, journal.clone(), settings, attachments)
}

/// Container `ID` requested (its record written), nothing made yet.
async fn requested(reconcile_timeout: Duration) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let (journal, stop) = journal_in(dir.path(), Arc::new(Metrics::new()));
    let ctd = FakeContainerd::default();
    let r = reconciler(dir.path(), &journal, &ctd, reconcile_timeout).await;
    let n = Node {
        r,
        ctd,
        journal,
        dir,
        _stop: stop,
    };
    n.append(Event::ContainerRequested {
        id: ID.into(),
        sandbox_id: POD.into(),
        config: Box::new(crate::cri::ContainerConfig {
            command: vec!["sh".into()],
            ..Default::default()
        }),
        image_id: "sha256:config".into(),
        image_name: "busybox:latest".into(),
        log_path: String::new(),
        created_at: 1,
        image_volumes: Vec::new(),
    })
    .await;
    n
}

/// Container `ID` requested in pod `POD`, whose pause task runs: a create can go all the way.
async fn requested_in_ready_pod(reconcile_timeout: Duration) -> Node {
    let n = requested(reconcile_timeout).await;
    n.append(Event::SandboxRequested {
        id: POD.into(),
        config: Default::default(),
        runtime_handler: String::new(),
        netns_path: None,
        created_at: 1,
    })
    .await;
    n.append(Event::SandboxStarted {
        id: POD.into(),
        pid: 4141,
    })
    .await;
    n
}

/// Container `ID` requested and created (its containerd container made), not started.
async fn created(reconcile_timeout: Duration) -> Node {
    let n = requested(reconcile_timeout).await;
    n.append(Event::ContainerCreated {
        id: ID.into(),
        user: None,
    })
    .await;
    n
}

/// Container `ID` running (its task running in the fake).
async fn running(reconcile_timeout: Duration, exits_on_sigterm: bool) -> Node {
    let n = created(reconcile_timeout).await;
    n.append(Event::ContainerStartRequested { id: ID.into() })
        .await;
    n.append(Event::ContainerStarted {
        id: ID.into(),
        pid: 4242,
        started_at: 2,
    })
    .await;
    n.ctd
        .running(ID, &format!("container:{ID}"), exits_on_sigterm);
    n
}

impl Node {
    async fn append(&self, e: Event) {
        self.journal.append(vec![e]).await.unwrap();
    }

    async fn stop(&self, timeout_seconds: i64) {
        self.append(Event::ContainerStopRequested {
            id: ID.into(),
            timeout_seconds,
            requested_at: crate::clock::now_nanos(),
        })
        .await;
    }

    async fn reconcile(&self) -> Result<super::Reconciled, ReconcileError> {
        self.r.reconcile(ID, &self.journal.state()).await
    }

    /// The signals sent to the task: (SIGKILL?, when).
    fn signals(&self) -> Vec<(bool, Instant)> {
        let sent = |c: &Call| match c.method {
            "signal" if c.object == ID => Some((false, c.at)),
            "sigkill" if c.object == ID => Some((true, c.at)),
            _ => None,
        };
        self.ctd.calls().iter().filter_map(sent).collect()
    }

    /// The record's (exit code, reason); finished_at set.
    fn exit(&self) -> (i32, String) {
        let state = self.journal.state();
        let rec = &state.containers[ID];
        assert!(rec.finished_at != 0, "no exit recorded");
        (rec.exit_code, rec.reason.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn sigkill_goes_exactly_when_the_grace_period_ends_and_not_before() {
    let n = running(Duration::from_secs(120), false).await;
    n.stop(30).await;
    let t0 = Instant::now();
    n.reconcile().await.unwrap();
    assert_eq!(
        n.signals(),
        [(false, t0), (true, t0 + Duration::from_secs(30))],
        "SIGTERM at once, SIGKILL at the end of the 30 s grace"
    );
    assert_eq!(n.exit(), (137, "Error".into()));
    assert!(n.ctd.objects().2.is_empty(), "the exited task is deleted");
}

#[tokio::test(start_paused = true)]
async fn a_task_that_exits_on_the_stop_signal_gets_no_sigkill() {
    let n = running(Duration::from_secs(120), true).await;
    n.stop(30).await;
    let t0 = Instant::now();
    n.reconcile().await.unwrap();
    assert_eq!(n.signals(), [(false, t0)]);
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(n.exit().1, "Error");
}

#[tokio::test(start_paused = true)]
async fn a_retried_stop_waits_only_what_is_left_of_the_grace_and_signals_once() {
    // A 60 s grace, passes of at most 30 s (three quarters of 40).
    let n = running(Duration::from_secs(40), false).await;
    n.stop(60).await;
    let t0 = Instant::now();
    let first = n.reconcile().await.unwrap_err();
    assert!(matches!(first, ReconcileError::Waiting(_)), "{first}");
    assert_eq!(t0.elapsed(), Duration::from_secs(30));
    assert_eq!(n.signals(), [(false, t0)]);
    // The loop's backoff, then the retry: SIGKILL at 60 s from the signal, not 60 s from now.
    tokio::time::advance(Duration::from_secs(5)).await;
    n.reconcile().await.unwrap();
    let grace_end = t0 + Duration::from_secs(60);
    assert_eq!(n.signals(), [(false, t0), (true, grace_end)]);
    assert_eq!(n.exit().0, 137);
}

#[tokio::test(start_paused = true)]
async fn a_second_stop_with_a_shorter_grace_brings_sigkill_forward() {
    let n = running(Duration::from_secs(40), false).await;
    n.stop(60).await;
    let t0 = Instant::now();
    n.reconcile().await.unwrap_err();
    // kubelet asks again with 2 s: the earlier end wins, without a second stop signal.
    n.stop(2).await;
    n.reconcile().await.unwrap();
    let signals = n.signals();
    assert_eq!(signals.len(), 2, "{signals:?}");
    let (kill, at) = signals[1];
    assert!(kill);
    let after = at - t0;
    let window = Duration::from_secs(31)..=Duration::from_secs(32);
    assert!(
        window.contains(&after),
        "SIGKILL {after:?} after the signal"
    );
}

#[tokio::test(start_paused = true)]
async fn a_removal_interrupted_midway_converges_in_the_next_pass() {
    let n = running(Duration::from_secs(120), false).await;
    n.append(Event::ContainerRemoveRequested { id: ID.into() })
        .await;
    std::fs::create_dir_all(n.dir.path().join("state/containers").join(ID)).unwrap();
    n.ctd.fail("delete_container", 1);
    n.reconcile().await.unwrap_err();
    assert!(n.journal.state().containers.contains_key(ID), "record kept");
    let (containers, snapshots, tasks, _) = n.ctd.objects();
    assert!(tasks.is_empty());
    assert_eq!(
        (containers, snapshots),
        (vec![ID.to_string()], vec![ID.to_string()])
    );
    n.reconcile().await.unwrap();
    assert!(!n.journal.state().containers.contains_key(ID));
    tokio::time::sleep(Duration::from_millis(1)).await; // the spawned lease deletion
    let (containers, snapshots, tasks, leases) = n.ctd.objects();
    assert!(containers.is_empty() && snapshots.is_empty() && tasks.is_empty() && leases.is_empty());
    assert!(!n.dir.path().join("state/containers").join(ID).exists());
    assert_eq!(n.ctd.count("delete_container"), 2);
    // The container held its snapshot: containerd's collector takes it, no removal is asked.
    assert_eq!(n.ctd.count("remove_snapshot"), 0);
    // A pass for the id once its record is gone finds nothing, and succeeds.
    n.reconcile().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_create_abandoned_at_its_timeout_ends_the_lease_holding_its_snapshot() {
    let n = requested_in_ready_pod(Duration::from_secs(120)).await;
    n.ctd.hang_creates();
    let abandoned = tokio::time::timeout(Duration::from_secs(60), n.reconcile()).await;
    assert!(abandoned.is_err(), "the create hangs: {abandoned:?}");
    tokio::time::sleep(Duration::from_millis(1)).await; // the spawned lease deletion
    let (_, snapshots, _, leases) = n.ctd.objects();
    assert_eq!(
        snapshots,
        vec![ID.to_string()],
        "the snapshot was prepared: {:?}",
        n.ctd.calls()
    );
    assert!(
        leases.is_empty(),
        "the lease outlived its create: {leases:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_create_removes_the_snapshot_it_prepared() {
    let n = requested_in_ready_pod(Duration::from_secs(120)).await;
    n.ctd.fail("create_container", 1);
    n.reconcile().await.unwrap_err();
    assert!(
        !n.journal.state().containers.contains_key(ID),
        "the record goes"
    );
    tokio::time::sleep(Duration::from_millis(1)).await; // the spawned lease deletion
    let (containers, snapshots, tasks, leases) = n.ctd.objects();
    assert!(containers.is_empty() && snapshots.is_empty() && tasks.is_empty() && leases.is_empty());
    // No container held the snapshot the create prepared: it is removed by name.
    assert_eq!(n.ctd.count("new_snapshot"), 1);
    assert_eq!(n.ctd.count("remove_snapshot"), 1);
}

/// A crash between a start's task and its durable fact loses the start intent (it is made
/// durable with that fact): the next process finds the container created and its task running,
/// and adopts the task as started, once; a task created but never started is deleted.
#[tokio::test(start_paused = true)]
async fn a_start_whose_intent_a_crash_lost_is_adopted_by_the_next_process() {
    let mut n = created(Duration::from_secs(60)).await;
    n.ctd.running(ID, &format!("container:{ID}"), true);
    // The same records, read by a process started now.
    n.r = reconciler(n.dir.path(), &n.journal, &n.ctd, Duration::from_secs(60)).await;
    n.reconcile().await.unwrap();
    let state = n.journal.state();
    let rec = &state.containers[ID];
    assert_eq!(rec.desired, crate::journal::ContainerDesired::Running);
    assert!(
        rec.started_at != 0 && rec.finished_at == 0,
        "adopted as running"
    );
    let looked = |n: &Node| n.ctd.count("task_status");
    assert_eq!(looked(&n), 1);
    n.reconcile().await.unwrap();
    assert_eq!(looked(&n), 1, "a running record is not looked at again");

    // A task created but never started: deleted, the container stays created.
    let mut n = created(Duration::from_secs(60)).await;
    n.ctd.created_task(ID, &format!("container:{ID}"));
    n.r = reconciler(n.dir.path(), &n.journal, &n.ctd, Duration::from_secs(60)).await;
    n.reconcile().await.unwrap();
    let (_, _, tasks, _) = n.ctd.objects();
    assert!(tasks.is_empty(), "the never-started task is deleted");
    let state = n.journal.state();
    assert_eq!(
        state.containers[ID].desired,
        crate::journal::ContainerDesired::Created
    );
    n.reconcile().await.unwrap();
    assert_eq!(looked(&n), 1, "looked at once per process");
}
