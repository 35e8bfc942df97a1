//! In-memory fakes of the reconcilers' ports (`ports.rs`) for their unit tests: each holds what
//! exists, records every call in order (with the paused clock's time) and fails the next calls
//! of a method on request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::types::Mount;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::ports::{CniPort, ContainerdPort, NetnsPort};
use crate::containerd::{ContainerRuntime, ContainerdError, SnapshotKind, TaskIo, TaskStatus};
use crate::network::cni::{Attachment, CniError};
use crate::network::netns::NetnsError;
use crate::network::CniNetwork;

/// One call a fake saw: the method, its object (id, key or path) and when.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: &'static str,
    pub object: String,
    pub at: Instant,
}

/// The calls and scripted failures every fake keeps.
#[derive(Default)]
struct Log {
    calls: Vec<Call>,
    /// Method → how many of its next calls fail.
    failing: HashMap<&'static str, u32>,
}

impl Log {
    /// Records the call; answers whether it is to fail.
    fn call(&mut self, method: &'static str, object: &str) -> bool {
        self.calls.push(Call {
            method,
            object: object.to_string(),
            at: Instant::now(),
        });
        match self.failing.get_mut(method) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    fn count(&self, method: &str) -> usize {
        self.calls.iter().filter(|c| c.method == method).count()
    }
}

/// A task of the fake containerd.
#[derive(Debug, Clone, Copy)]
struct Task {
    pid: u32,
    status: TaskStatus,
    /// Whether a signal other than SIGKILL ends it.
    exits_on_signal: bool,
}

#[derive(Default)]
struct World {
    log: Log,
    containers: BTreeSet<String>,
    /// Snapshot key → owner.
    snapshots: BTreeMap<String, String>,
    tasks: BTreeMap<String, Task>,
    /// Lease id → owner label.
    leases: BTreeMap<String, String>,
    next_pid: u32,
    /// `Containers.Create` never answers (a hung containerd).
    create_hangs: bool,
}

/// containerd in memory. Clones share one world.
#[derive(Clone, Default)]
pub struct FakeContainerd {
    world: Arc<Mutex<World>>,
    /// Wakes `wait_task` callers when a task stops.
    exited: Arc<tokio::sync::Notify>,
}

impl FakeContainerd {
    /// The next `times` calls of `method` fail (Unavailable).
    pub fn fail(&self, method: &'static str, times: u32) {
        self.world.lock().log.failing.insert(method, times);
    }

    /// Every `Containers.Create` from now on never answers.
    pub fn hang_creates(&self) {
        self.world.lock().create_hangs = true;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.world.lock().log.calls.clone()
    }

    /// How many calls of `method` were made.
    pub fn count(&self, method: &str) -> usize {
        self.world.lock().log.count(method)
    }

    /// A container with its snapshot and a running task (as a start left them).
    pub fn running(&self, id: &str, owner: &str, exits_on_signal: bool) {
        let mut w = self.world.lock();
        w.containers.insert(id.into());
        w.snapshots.insert(id.into(), owner.into());
        let task = Task {
            pid: 4242,
            status: TaskStatus::Running,
            exits_on_signal,
        };
        w.tasks.insert(id.into(), task);
    }

    /// A container with its snapshot and a task created but never started (as a start cut
    /// off between `Tasks.Create` and `Tasks.Start` left them).
    pub fn created_task(&self, id: &str, owner: &str) {
        self.running(id, owner, false);
        if let Some(t) = self.world.lock().tasks.get_mut(id) {
            t.status = TaskStatus::Created;
        }
    }

    /// What exists: (containers, snapshot keys, task ids, leases but the spare ones).
    pub fn objects(&self) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
        let w = self.world.lock();
        (
            w.containers.iter().cloned().collect(),
            w.snapshots.keys().cloned().collect(),
            w.tasks.keys().cloned().collect(),
            w.leases
                .iter()
                .filter(|(_, owner)| !owner.ends_with(":spare"))
                .map(|(id, _)| id.clone())
                .collect(),
        )
    }

    /// Records the call; a scripted failure answers Unavailable.
    fn step(&self, method: &'static str, object: &str) -> Result<(), ContainerdError> {
        match self.world.lock().log.call(method, object) {
            false => Ok(()),
            true => Err(ContainerdError::Call {
                call: method,
                status: tonic::Status::unavailable("scripted failure"),
            }),
        }
    }

    fn stop_task(&self, id: &str) {
        if let Some(t) = self.world.lock().tasks.get_mut(id) {
            t.status = TaskStatus::Stopped;
        }
        self.exited.notify_waiters();
    }
}

type Answer<T> = Result<T, ContainerdError>;

fn mounts_of(key: &str) -> Vec<Mount> {
    vec![Mount {
        r#type: "bind".into(),
        source: format!("/fake/{key}"),
        ..Default::default()
    }]
}

impl ContainerdPort for FakeContainerd {
    async fn task_state(&self, id: &str) -> Answer<Option<(u32, bool)>> {
        self.step("task_state", id)?;
        let task = self.world.lock().tasks.get(id).copied();
        Ok(task.map(|t| (t.pid, t.status == TaskStatus::Running)))
    }
    async fn task_status(&self, id: &str) -> Answer<Option<(u32, TaskStatus)>> {
        self.step("task_status", id)?;
        Ok(self.world.lock().tasks.get(id).map(|t| (t.pid, t.status)))
    }
    async fn create_task_io(&self, id: &str, _rootfs: Vec<Mount>, _io: &TaskIo) -> Answer<u32> {
        self.step("create_task", id)?;
        let mut w = self.world.lock();
        w.next_pid += 1;
        let pid = 100 + w.next_pid;
        let task = Task {
            pid,
            status: TaskStatus::Created,
            exits_on_signal: false,
        };
        w.tasks.insert(id.into(), task);
        Ok(pid)
    }
    async fn start_task(&self, id: &str) -> Answer<()> {
        self.step("start_task", id)?;
        if let Some(t) = self.world.lock().tasks.get_mut(id) {
            t.status = TaskStatus::Running;
        }
        Ok(())
    }
    async fn kill_task(&self, id: &str, signal: u32) -> Answer<()> {
        self.step(if signal == 9 { "sigkill" } else { "signal" }, id)?;
        let exits = self.world.lock().tasks.get(id).map(|t| t.exits_on_signal);
        if signal == 9 || exits == Some(true) {
            self.stop_task(id);
        }
        Ok(())
    }
    async fn wait_task(&self, id: &str) -> Answer<u32> {
        self.step("wait_task", id)?;
        loop {
            let exited = self.exited.notified();
            let status = self.world.lock().tasks.get(id).map(|t| t.status);
            if matches!(status, None | Some(TaskStatus::Stopped)) {
                return Ok(137);
            }
            exited.await;
        }
    }
    async fn end_task(&self, id: &str, _wait: Duration) -> Answer<()> {
        self.step("end_task", id)?;
        self.world.lock().tasks.remove(id);
        self.exited.notify_waiters();
        Ok(())
    }
    async fn delete_task(&self, id: &str) -> Answer<()> {
        self.delete_task_exit(id).await.map(|_| ())
    }
    async fn delete_task_exit(&self, id: &str) -> Answer<Option<(u32, i64)>> {
        self.step("delete_task", id)?;
        let task = self.world.lock().tasks.remove(id);
        Ok(task.map(|_| (137, 0)))
    }
    async fn update_task(
        &self,
        id: &str,
        _resources: &oci_spec::runtime::LinuxResources,
    ) -> Answer<()> {
        self.step("update_task", id)
    }
    async fn kill_shims_of(&self, id: &str) -> usize {
        let _ = self.step("kill_shims_of", id);
        0
    }
    async fn container_exists(&self, id: &str) -> Answer<bool> {
        self.step("container_exists", id)?;
        Ok(self.world.lock().containers.contains(id))
    }
    async fn create_container(
        &self,
        id: &str,
        _image: &str,
        _runtime: &ContainerRuntime,
        _spec: &(impl serde::Serialize + Sync),
        _snapshotter: &str,
        _snapshot_key: &str,
        _owner: &str,
        _labels: HashMap<String, String>,
    ) -> Answer<()> {
        self.step("create_container", id)?;
        if self.world.lock().create_hangs {
            std::future::pending::<()>().await;
        }
        self.world.lock().containers.insert(id.into());
        Ok(())
    }
    /// Also removes the container's snapshot (keyed by its id), as containerd's collector
    /// does once no container holds it.
    async fn delete_container(&self, id: &str) -> Answer<bool> {
        self.step("delete_container", id)?;
        let mut w = self.world.lock();
        let found = w.containers.remove(id);
        if found {
            w.snapshots.remove(id);
        }
        Ok(found)
    }
    async fn list_owned(&self, _snapshotter: &str, prefix: &str) -> Answer<Vec<(String, String)>> {
        self.step("list_owned", prefix)?;
        let w = self.world.lock();
        let owned = w.snapshots.iter().filter(|(_, o)| o.starts_with(prefix));
        Ok(owned.map(|(k, o)| (k.clone(), o.clone())).collect())
    }
    async fn snapshot_mounts(&self, _snapshotter: &str, key: &str) -> Answer<Option<Vec<Mount>>> {
        self.step("snapshot_mounts", key)?;
        let exists = self.world.lock().snapshots.contains_key(key);
        Ok(exists.then(|| mounts_of(key)))
    }
    async fn new_snapshot(
        &self,
        _kind: SnapshotKind,
        _snapshotter: &str,
        key: &str,
        _parent: &str,
        owner: &str,
        _lease: &str,
    ) -> Answer<Vec<Mount>> {
        self.step("new_snapshot", key)?;
        self.world.lock().snapshots.insert(key.into(), owner.into());
        Ok(mounts_of(key))
    }
    async fn remove_snapshot(&self, _snapshotter: &str, key: &str) -> Answer<()> {
        self.step("remove_snapshot", key)?;
        self.world.lock().snapshots.remove(key);
        Ok(())
    }
    async fn owned_snapshots(&self, _snapshotter: &str, owner: &str) -> Answer<Vec<String>> {
        self.step("owned_snapshots", owner)?;
        let w = self.world.lock();
        let owned = w.snapshots.iter().filter(|(_, o)| *o == owner);
        Ok(owned.map(|(k, _)| k.clone()).collect())
    }
    async fn create_lease(&self, id: &str, _expire: Duration, owner: &str) -> Answer<String> {
        self.step("create_lease", id)?;
        self.world.lock().leases.insert(id.into(), owner.into());
        Ok(id.into())
    }
    async fn delete_lease(&self, id: &str) -> Answer<()> {
        self.step("delete_lease", id)?;
        self.world.lock().leases.remove(id);
        Ok(())
    }
}

#[derive(Default)]
struct Attached {
    log: Log,
    /// Container id → ADD result.
    results: BTreeMap<String, Value>,
    /// How long an ADD takes.
    add_takes: Duration,
}

/// CNI in memory: ADD attaches (answers 10.88.0.<n>), DEL detaches; no cache on disk.
#[derive(Clone, Default)]
pub struct FakeCni {
    state: Arc<Mutex<Attached>>,
}

impl FakeCni {
    pub fn fail(&self, method: &'static str, times: u32) {
        self.state.lock().log.failing.insert(method, times);
    }

    pub fn count(&self, method: &str) -> usize {
        self.state.lock().log.count(method)
    }

    /// The next ADD fails after `delay`.
    pub fn fail_add_after(&self, delay: Duration) {
        self.state.lock().add_takes = delay;
        self.fail("add", 1);
    }

    /// The attached container ids.
    pub fn attached(&self) -> Vec<String> {
        self.state.lock().results.keys().cloned().collect()
    }

    fn step(&self, method: &'static str, a: &Attachment) -> Result<(), CniError> {
        match self.state.lock().log.call(method, &a.container_id) {
            false => Ok(()),
            true => Err(CniError::Plugin {
                command: method,
                network: "fake".into(),
                plugin: "bridge".into(),
                message: "scripted failure".into(),
            }),
        }
    }
}

impl CniPort for FakeCni {
    async fn add(&self, _net: &CniNetwork, a: &Attachment) -> Result<Value, CniError> {
        let takes = std::mem::take(&mut self.state.lock().add_takes);
        tokio::time::sleep(takes).await;
        self.step("add", a)?;
        let mut s = self.state.lock();
        let n = s.results.len() + 2;
        let result = json!({"ips": [{"address": format!("10.88.0.{n}/16")}]});
        s.results.insert(a.container_id.clone(), result.clone());
        Ok(result)
    }
    async fn del(
        &self,
        _net: Option<&CniNetwork>,
        _network_name: &str,
        a: &Attachment,
    ) -> Result<(), CniError> {
        self.step("del", a)?;
        self.state.lock().results.remove(&a.container_id);
        Ok(())
    }
    fn cached_result(&self, _network_name: &str, a: &Attachment) -> Option<Value> {
        self.state.lock().results.get(&a.container_id).cloned()
    }
    fn cached_ids(&self, _ifname: &str) -> Vec<String> {
        self.attached()
    }
}

#[derive(Default)]
struct Pinned {
    log: Log,
    paths: BTreeSet<PathBuf>,
}

/// The netns directory in memory: the paths pinned.
#[derive(Clone, Default)]
pub struct FakeNetns {
    state: Arc<Mutex<Pinned>>,
}

impl FakeNetns {
    pub fn count(&self, method: &str) -> usize {
        self.state.lock().log.count(method)
    }

    pub fn pinned(&self) -> Vec<PathBuf> {
        self.state.lock().paths.iter().cloned().collect()
    }

    fn step(&self, method: &'static str, path: &Path) -> Result<(), NetnsError> {
        match self
            .state
            .lock()
            .log
            .call(method, &path.display().to_string())
        {
            false => Ok(()),
            true => Err(NetnsError::Io {
                path: path.into(),
                step: method,
                source: std::io::Error::other("scripted failure"),
            }),
        }
    }
}

impl NetnsPort for FakeNetns {
    fn exists(&self, path: &Path) -> bool {
        self.state.lock().paths.contains(path)
    }
    fn remove(&self, path: &Path) -> Result<(), NetnsError> {
        self.step("remove", path)?;
        self.state.lock().paths.remove(path);
        Ok(())
    }
    fn create(&self, path: &Path) -> Result<(), NetnsError> {
        self.step("create", path)?;
        self.state.lock().paths.insert(path.into());
        Ok(())
    }
    fn create_in_userns(
        &self,
        path: &Path,
        user_path: &Path,
        _uid_map: &str,
        _gid_map: &str,
    ) -> Result<(), NetnsError> {
        self.create(path)?;
        self.state.lock().paths.insert(user_path.into());
        Ok(())
    }
    fn list(&self, dir: &Path) -> Vec<PathBuf> {
        let s = self.state.lock();
        s.paths
            .iter()
            .filter(|p| p.starts_with(dir))
            .cloned()
            .collect()
    }
}

/// A journal in `dir` (its writer stops with the token).
pub fn journal_in(
    dir: &Path,
    metrics: Arc<crate::metrics::Metrics>,
) -> (
    crate::journal::JournalHandle,
    tokio_util::sync::CancellationToken,
) {
    let path = dir.join("journal.redb");
    let (store, state, info) = crate::journal::Journal::open(&path).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (journal, _writer) =
        crate::journal::spawn_writer(store, state, &info, 1_000, 16, metrics, shutdown.clone());
    (journal, shutdown)
}

/// An image service whose containerd is never reached, with `name` in its index (a config
/// with no settings, on chain id `sha256:chain`).
pub async fn images_with(dir: &Path, name: &str) -> Arc<crate::image::Images> {
    use crate::image::{index::Resolved, ImageSettings, Images};
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let ctd = crate::containerd::Containerd::new(&dir.join("no.sock"), "test", metrics.clone());
    let mut settings = ImageSettings::from_config(&crate::config::Config::default());
    settings.scratch_dir = dir.join("scratch");
    let images = Images::new(ctd, settings, metrics);
    let resolved = Resolved {
        id: "sha256:config".into(),
        size: 0,
        config_json: "{}".into(),
        config: Default::default(),
        chain_id: "sha256:chain".into(),
    };
    images
        .record(&[name.to_string()], "sha256:target", Arc::new(resolved))
        .await;
    images
}
