//! The sandbox reconciler against in-memory containerd, CNI and netns directory (`fakes.rs`),
//! under paused time: what a real run cannot pin down (which half of RunPodSandbox failed, what
//! a failure's teardown undid, how often each step ran).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::fakes::{images_with, journal_in, FakeCni, FakeContainerd, FakeNetns};
use super::{ReconcileError, SandboxReconciler, SandboxSettings};
use crate::cri;
use crate::journal::{Event, JournalHandle};
use crate::metrics::Metrics;

const ID: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const PAUSE: &str = "registry.k8s.io/pause:3.10";

/// A sandbox reconciler on fakes, with a usable CNI network config and the pause image indexed.
struct Node {
    r: SandboxReconciler<FakeContainerd, FakeCni, FakeNetns>,
    ctd: FakeContainerd,
    cni: FakeCni,
    netns: FakeNetns,
    journal: JournalHandle,
    dir: tempfile::TempDir,
    _stop: tokio_util::sync::CancellationToken,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let (journal, stop) = journal_in(dir.path(), metrics.clone());
    // A network config whose one plugin exists: the network is ready.
    let (conf, bin) = (dir.path().join("net.d"), dir.path().join("bin"));
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let list = r#"{"cniVersion":"1.0.0","name":"fake","plugins":[{"type":"bridge"}]}"#;
    std::fs::write(conf.join("10-fake.conflist"), list).unwrap();
    std::fs::write(bin.join("bridge"), "").unwrap();
    let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(bin.join("bridge"), exec).unwrap();
    let config = crate::config::CniConfig {
        conf_dir: conf,
        bin_dirs: vec![bin],
        ..Default::default()
    };
    let network = crate::network::Network::new(&config, metrics.clone());
    let settings = SandboxSettings {
        snapshotter: "overlayfs".into(),
        sandbox_image: PAUSE.into(),
        runtime: Default::default(),
        layout: crate::state_layout::StateLayout::new(dir.path().join("state")),
        netns_dir: dir.path().join("netns"),
    };
    let (ctd, cni, netns) = Default::default();
    let ports = (
        FakeContainerd::clone(&ctd),
        FakeCni::clone(&cni),
        FakeNetns::clone(&netns),
    );
    let images = images_with(dir.path(), PAUSE).await;
    let r =
        SandboxReconciler::with_ports(ports, images, network, journal.clone(), settings, metrics);
    Node {
        r,
        ctd,
        cni,
        netns,
        journal,
        dir,
        _stop: stop,
    }
}

impl Node {
    /// Records RunPodSandbox's intent (a pod network namespace, the host's IPC so no /dev/shm
    /// is mounted).
    async fn request(&self) {
        let ns = cri::NamespaceOption {
            ipc: cri::NamespaceMode::Node as i32,
            ..Default::default()
        };
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "p".into(),
                uid: "u".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(ns),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let netns = self.dir.path().join("netns").join(ID);
        self.append(Event::SandboxRequested {
            id: ID.into(),
            config: Box::new(config),
            runtime_handler: String::new(),
            netns_path: Some(netns.display().to_string()),
            created_at: 1,
        })
        .await;
    }

    async fn append(&self, e: Event) {
        self.journal.append(vec![e]).await.unwrap();
    }

    async fn reconcile(&self) -> Result<super::Reconciled, ReconcileError> {
        self.r.reconcile(ID, &self.journal.state()).await
    }

    /// Nothing of the pod is left anywhere: containerd, CNI, the netns directory, the journal
    /// (once the lease deletions spawned off the path ran).
    async fn assert_nothing_left(&self) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let (containers, snapshots, tasks, leases) = self.ctd.objects();
        assert!(containers.is_empty(), "containers left: {containers:?}");
        assert!(snapshots.is_empty(), "snapshots left: {snapshots:?}");
        assert!(tasks.is_empty(), "tasks left: {tasks:?}");
        assert!(leases.is_empty(), "leases left: {leases:?}");
        assert!(self.cni.attached().is_empty(), "still attached");
        assert!(self.netns.pinned().is_empty(), "{:?}", self.netns.pinned());
        assert!(
            !self.journal.state().sandboxes.contains_key(ID),
            "record left"
        );
        assert!(!self.r_dir().exists(), "sandbox state left");
    }

    fn r_dir(&self) -> std::path::PathBuf {
        crate::state_layout::StateLayout::new(self.dir.path().join("state")).sandbox(ID)
    }
}

#[tokio::test(start_paused = true)]
async fn a_cni_add_that_fails_after_the_pause_task_runs_is_torn_down_completely() {
    let n = node().await;
    n.request().await;
    // The ADD fails late: by then the pause half made its container and started its task.
    n.cni.fail_add_after(Duration::from_secs(30));
    let t0 = Instant::now();
    let err = n.reconcile().await.unwrap_err();
    assert!(err.to_string().contains("CNI ADD"), "{err}");
    assert_eq!(t0.elapsed(), Duration::from_secs(30));
    assert_eq!(
        n.ctd.count("start_task"),
        1,
        "the pause task ran before the teardown"
    );
    // The teardown: its task, the network (DEL although the ADD failed), the netns, the
    // container and snapshot; the record goes (SandboxFailed, then SandboxRemoved).
    assert_eq!(n.ctd.count("end_task"), 1);
    assert_eq!(n.cni.count("del"), 1);
    assert_eq!(n.ctd.count("delete_container"), 1);
    assert_eq!(n.ctd.count("remove_snapshot"), 1);
    n.assert_nothing_left().await;
}

#[tokio::test(start_paused = true)]
async fn a_pause_task_start_that_fails_after_cni_add_releases_the_network_and_the_netns() {
    let n = node().await;
    n.request().await;
    n.ctd.fail("start_task", 1);
    let err = n.reconcile().await.unwrap_err();
    assert!(err.to_string().contains("Tasks") || err.to_string().contains("start_task"));
    assert_eq!(n.cni.count("add"), 1, "the network half succeeded");
    assert_eq!(n.cni.count("del"), 1, "and was undone");
    assert_eq!(n.netns.count("create"), 1);
    n.assert_nothing_left().await;
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_stop_converges_in_the_next_pass_and_removal_does_not_repeat_it() {
    let n = node().await;
    n.request().await;
    n.reconcile().await.unwrap();
    let rec = n.journal.state().sandboxes[ID].clone();
    assert_eq!(rec.ips, ["10.88.0.2"]);
    assert!(rec.pid.is_some());
    assert_eq!(n.netns.pinned().len(), 1);

    // StopPodSandbox; the first DEL fails: the pass fails, the record is not stopped.
    n.append(Event::SandboxStopRequested { id: ID.into() })
        .await;
    n.cni.fail("del", 1);
    n.reconcile().await.unwrap_err();
    assert!(!n.journal.state().sandboxes[ID].stopped);
    assert_eq!(n.netns.pinned().len(), 1, "the netns waits for the DEL");
    // The next pass finishes it.
    n.reconcile().await.unwrap();
    assert!(n.journal.state().sandboxes[ID].stopped);
    assert!(n.cni.attached().is_empty());
    assert!(n.netns.pinned().is_empty());
    let dels = n.cni.count("del");
    assert_eq!(dels, 2);

    // RemovePodSandbox: the converged stop is not repeated (no third DEL).
    n.append(Event::SandboxRemoveRequested { id: ID.into() })
        .await;
    n.reconcile().await.unwrap();
    assert_eq!(n.cni.count("del"), dels);
    assert_eq!(n.ctd.count("delete_container"), 1);
    n.assert_nothing_left().await;
}

#[tokio::test(start_paused = true)]
async fn removing_a_sandbox_whose_objects_are_all_gone_succeeds() {
    let n = node().await;
    n.request().await;
    // Never started (a restart before the first pass), then removed: every step finds nothing.
    n.append(Event::SandboxRemoveRequested { id: ID.into() })
        .await;
    n.reconcile().await.unwrap();
    assert_eq!(n.cni.count("del"), 1);
    n.assert_nothing_left().await;
    // A pass for the id once its record is gone (the orphan path) finds nothing either.
    n.reconcile().await.unwrap();
    n.assert_nothing_left().await;
}
