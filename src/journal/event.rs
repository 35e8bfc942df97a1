//! Journal events (intents and facts) and the in-memory state that is their fold.
//!
//! Events are appended, never edited; [`State::apply`] is the only place that turns them into
//! state, both at replay and live, so a restart folds to exactly what was acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Something concord recorded: an intent from the CRI API or a fact the loop observed that must
/// survive a restart. Serialized as JSON tagged by `type` (the CRI messages in it as protobuf:
/// [`super::codec`]); unknown types stop the replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// UpdateRuntimeConfig asked for this pod CIDR (applied to later CNI calls).
    PodCidrRequested { cidr: String },
    /// RunPodSandbox: everything the sandbox will create is named here first (persist before
    /// create): the id (containerd container, snapshot key and CNI container id), the netns path.
    SandboxRequested {
        id: String,
        #[serde(with = "super::codec::cri_bytes")]
        config: Box<crate::cri::PodSandboxConfig>,
        runtime_handler: String,
        netns_path: Option<String>,
        created_at: i64,
    },
    /// Fact: CNI attached the sandbox with these addresses (first is the primary).
    SandboxNetworkReady { id: String, ips: Vec<String> },
    /// Fact: the pause task runs.
    SandboxStarted { id: String, pid: u32 },
    /// Fact: the pause task is gone (exit, kill or stop); the sandbox is NotReady.
    SandboxExited { id: String },
    /// Fact: RunPodSandbox failed; the sandbox is to be removed (SandboxRemoved follows once
    /// everything it created is torn down).
    SandboxFailed { id: String, error: String },
    /// UpdatePodSandboxResources: the pod-level overhead and resources (each replaces the
    /// config's when given), written to the pod's cgroup by the loop.
    SandboxResourcesUpdated {
        id: String,
        #[serde(default, with = "super::codec::cri_bytes_opt")]
        overhead: Option<Box<crate::cri::LinuxContainerResources>>,
        #[serde(default, with = "super::codec::cri_bytes_opt")]
        resources: Option<Box<crate::cri::LinuxContainerResources>>,
    },
    /// StopPodSandbox.
    SandboxStopRequested { id: String },
    /// Fact: task, network and netns are gone.
    SandboxStopped { id: String },
    /// RemovePodSandbox.
    SandboxRemoveRequested { id: String },
    /// Fact: container, snapshot and state are gone; the record ends.
    SandboxRemoved { id: String },
    /// CreateContainer: the id (containerd container, task and snapshot key), the pod, the
    /// config, the resolved image and the log path are named before anything is created.
    ContainerRequested {
        id: String,
        sandbox_id: String,
        #[serde(with = "super::codec::cri_bytes")]
        config: Box<crate::cri::ContainerConfig>,
        /// Image id (sha256:...) and the name asked for.
        image_id: String,
        image_name: String,
        log_path: String,
        created_at: i64,
        /// The image id each image mount (`config.mounts[i].image`) resolved to, by mount
        /// index ('' for a host path mount; empty when no mount is an image).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        image_volumes: Vec<String>,
    },
    /// Fact: the containerd container (and its snapshot) exist; its process runs as `user`.
    ContainerCreated {
        id: String,
        #[serde(default)]
        user: Option<ContainerUser>,
    },
    /// StartContainer.
    ContainerStartRequested { id: String },
    /// Fact: the task runs.
    ContainerStarted {
        id: String,
        pid: u32,
        started_at: i64,
    },
    /// Fact: the process is gone (exit, kill, stop, or a start that failed).
    ContainerExited {
        id: String,
        exit_code: i32,
        finished_at: i64,
        reason: String,
        message: String,
    },
    /// UpdateContainerResources: the new limits (applied to a running task by the loop).
    ContainerResourcesUpdated {
        id: String,
        #[serde(with = "super::codec::cri_bytes")]
        resources: Box<crate::cri::LinuxContainerResources>,
    },
    /// StopContainer with this grace period, asked at `requested_at` (ns since the epoch; 0 in
    /// journals written before it was recorded).
    ContainerStopRequested {
        id: String,
        timeout_seconds: i64,
        #[serde(default)]
        requested_at: i64,
    },
    /// RemoveContainer (or the pod's removal).
    ContainerRemoveRequested { id: String },
    /// Fact: task, container, snapshot and state are gone; the record ends.
    ContainerRemoved { id: String },
}

/// What a container should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerDesired {
    Created,
    Running,
    Exited,
    Removed,
}

/// One container: desired state and the facts recorded about it.
///
/// ```text
///  Requested ──▶ Created ──▶ Running (started) ──▶ Exited (exit / stop / failed start) ──▶ removed
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    #[serde(with = "super::codec::cri_bytes")]
    pub config: Box<crate::cri::ContainerConfig>,
    pub image_id: String,
    pub image_name: String,
    pub log_path: String,
    pub created_at: i64,
    pub desired: ContainerDesired,
    pub generation: u64,
    /// The containerd container exists.
    pub created: bool,
    pub pid: Option<u32>,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// Grace period of the last StopContainer.
    pub stop_timeout: i64,
    /// When that grace period ends (ns since the epoch; 0: unknown, the whole grace from now).
    /// Retries of the stop wait only what is left of it, then SIGKILL.
    #[serde(default)]
    pub stop_deadline: i64,
    /// UpdateContainerResources changed the limits since the create.
    #[serde(default)]
    pub resources_updated: bool,
    /// The identity the process runs as (resolved at create from the config and the image).
    #[serde(default)]
    pub user: Option<ContainerUser>,
    /// The image id of each image mount, by mount index ('' for a host path mount).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_volumes: Vec<String>,
}

/// A container process' uid, gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerUser {
    pub uid: i64,
    pub gid: i64,
    pub groups: Vec<i64>,
}

impl ContainerRecord {
    /// The record a ContainerRequested starts: to be created, nothing observed yet (None for
    /// any other event).
    fn requested(event: &Event) -> Option<ContainerRecord> {
        let Event::ContainerRequested {
            id,
            sandbox_id,
            config,
            image_id,
            image_name,
            log_path,
            created_at,
            image_volumes,
        } = event
        else {
            return None;
        };
        Some(ContainerRecord {
            id: id.to_owned(),
            sandbox_id: sandbox_id.to_owned(),
            config: config.clone(),
            image_id: image_id.to_owned(),
            image_name: image_name.to_owned(),
            log_path: log_path.to_owned(),
            created_at: *created_at,
            desired: ContainerDesired::Created,
            generation: 1,
            created: false,
            pid: None,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            stop_timeout: 0,
            stop_deadline: 0,
            resources_updated: false,
            user: None,
            image_volumes: image_volumes.clone(),
        })
    }

    /// Records the process' exit; the first one recorded stays.
    fn record_exit(&mut self, exit_code: i32, finished_at: i64, reason: &str, message: &str) {
        if self.finished_at == 0 {
            self.exit_code = exit_code;
            self.finished_at = finished_at;
            self.reason = reason.to_owned();
            self.message = message.to_owned();
        }
    }

    /// A StopContainer with `timeout_seconds` of grace asked at `requested_at` (0: unknown).
    fn stop_requested(&mut self, timeout_seconds: i64, requested_at: i64) {
        let deadline = if requested_at > 0 {
            requested_at.saturating_add(timeout_seconds.saturating_mul(1_000_000_000))
        } else {
            0
        };
        if matches!(
            self.desired,
            ContainerDesired::Created | ContainerDesired::Running
        ) {
            self.desired = ContainerDesired::Exited;
            self.stop_timeout = timeout_seconds;
            self.stop_deadline = deadline;
            self.generation += 1;
        } else if self.desired == ContainerDesired::Exited
            && self.finished_at == 0
            && deadline > 0
            && (self.stop_deadline == 0 || deadline < self.stop_deadline)
        {
            // A second stop with a shorter grace, while the first still waits: the earlier end
            // wins (kubelet shortening a grace period).
            self.stop_timeout = timeout_seconds;
            self.stop_deadline = deadline;
            self.generation += 1;
        }
    }

    /// UpdateContainerResources: the new limits replace the config's.
    fn update_resources(&mut self, resources: &crate::cri::LinuxContainerResources) {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .resources = Some(resources.clone());
        self.resources_updated = true;
        self.generation += 1;
    }

    /// CRI state: created, running or exited.
    pub fn cri_state(&self) -> crate::cri::ContainerState {
        use crate::cri::ContainerState;
        if self.finished_at != 0 {
            ContainerState::ContainerExited
        } else if self.started_at != 0 {
            ContainerState::ContainerRunning
        } else if self.created {
            ContainerState::ContainerCreated
        } else {
            ContainerState::ContainerUnknown
        }
    }
}

/// Records an intent on a record: when `allowed` by the current desired state, it becomes `to`
/// and the generation counts the change.
fn intent<D: Copy>(desired: &mut D, generation: &mut u64, allowed: impl FnOnce(D) -> bool, to: D) {
    if allowed(*desired) {
        *desired = to;
        *generation += 1;
    }
}

/// The name kubelet reserves a container under within its pod.
pub fn container_name(sandbox_id: &str, m: &crate::cri::ContainerMetadata) -> String {
    format!("{}_{}_{}", m.name, sandbox_id, m.attempt)
}

/// What a sandbox should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxDesired {
    Ready,
    Stopped,
    Removed,
}

/// One pod sandbox: desired state and the facts recorded about it.
///
/// ```text
///  Requested ──▶ Ready (started) ──▶ NotReady (exited / stopped) ──▶ removed
///      └── failed: torn down, record dropped
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    #[serde(with = "super::codec::cri_bytes")]
    pub config: Box<crate::cri::PodSandboxConfig>,
    pub runtime_handler: String,
    pub netns_path: Option<String>,
    pub created_at: i64,
    pub desired: SandboxDesired,
    pub generation: u64,
    pub ips: Vec<String>,
    pub pid: Option<u32>,
    /// The pause task ran and is gone.
    pub exited: bool,
    /// Stop converged (task, network, netns gone).
    pub stopped: bool,
    /// UpdatePodSandboxResources changed the config's overhead or resources since the run.
    #[serde(default)]
    pub resources_updated: bool,
}

impl SandboxRecord {
    /// The record a SandboxRequested starts: to be ready, nothing observed yet.
    fn requested(
        id: &str,
        config: &crate::cri::PodSandboxConfig,
        runtime_handler: &str,
        netns_path: &Option<String>,
        created_at: i64,
    ) -> SandboxRecord {
        SandboxRecord {
            id: id.to_owned(),
            config: Box::new(config.clone()),
            runtime_handler: runtime_handler.to_owned(),
            netns_path: netns_path.clone(),
            created_at,
            desired: SandboxDesired::Ready,
            generation: 1,
            ips: vec![],
            pid: None,
            exited: false,
            stopped: false,
            resources_updated: false,
        }
    }

    /// UpdatePodSandboxResources: the given overhead and resources replace the config's.
    fn update_resources(
        &mut self,
        overhead: &Option<Box<crate::cri::LinuxContainerResources>>,
        resources: &Option<Box<crate::cri::LinuxContainerResources>>,
    ) {
        let linux = self.config.linux.get_or_insert_with(Default::default);
        if let Some(o) = overhead {
            linux.overhead = Some((**o).clone());
        }
        if let Some(r) = resources {
            linux.resources = Some((**r).clone());
        }
        self.resources_updated = true;
        self.generation += 1;
    }

    /// Fact: task, network and netns are gone.
    fn stopped(&mut self) {
        self.stopped = true;
        self.exited = true;
    }

    /// The pod's cgroup parent as its config names it ("" when none was given).
    pub fn configured_cgroup_parent(&self) -> &str {
        self.config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.as_str())
            .unwrap_or("")
    }

    /// The cgroup path (`driver`'s form, as the spec names it) of the pod's object `id`: its
    /// pause container's or one of its containers'.
    pub fn cgroups_path_of(&self, driver: crate::config::CgroupDriver, id: &str) -> String {
        crate::cgroup::path(driver, self.configured_cgroup_parent(), id)
    }

    /// The cgroupfs directory (below a hierarchy's root) of the pod's object `id`.
    pub fn cgroup_dir_of(&self, driver: crate::config::CgroupDriver, id: &str) -> Option<String> {
        crate::cgroup::dir(driver, &self.cgroups_path_of(driver, id))
    }

    /// The cgroupfs directory of the pod's own cgroup (None: its config names none).
    pub fn pod_cgroup_dir(&self, driver: crate::config::CgroupDriver) -> Option<String> {
        crate::cgroup::pod_dir(driver, self.configured_cgroup_parent())
    }

    /// Ready: started, not exited, not stopping.
    pub fn ready(&self) -> bool {
        self.pid.is_some() && !self.exited && !self.stopped && self.desired == SandboxDesired::Ready
    }
}

/// The name kubelet reserves a sandbox under: one per metadata.
pub fn sandbox_name(m: &crate::cri::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// Identifies one object the reconcile loop manages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectKey {
    /// The node-wide runtime configuration (one object).
    RuntimeConfig,
    /// A pod sandbox by id.
    Sandbox(String),
    /// A container by id.
    Container(String),
}

impl ObjectKey {
    /// Kind name used in logs, metrics and introspection.
    pub fn kind(&self) -> &'static str {
        match self {
            ObjectKey::RuntimeConfig => "runtime_config",
            ObjectKey::Sandbox(_) => "sandbox",
            ObjectKey::Container(_) => "container",
        }
    }

    /// Object id ("" for singletons).
    pub fn id(&self) -> &str {
        match self {
            ObjectKey::RuntimeConfig => "",
            ObjectKey::Sandbox(id) | ObjectKey::Container(id) => id,
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id() {
            "" => f.write_str(self.kind()),
            id => write!(f, "{}/{}", self.kind(), id),
        }
    }
}

/// Desired node-wide runtime configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeConfigSpec {
    /// Pod CIDR from the last UpdateRuntimeConfig ("" when never set).
    pub pod_cidr: String,
    /// Bumped by every recorded intent for this object.
    pub generation: u64,
}

/// The fold of the journal: concord's desired state plus facts that survive restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Sequence number of the last event folded in.
    pub seq: u64,
    pub runtime_config: RuntimeConfigSpec,
    /// Sandboxes by id.
    #[serde(default)]
    pub sandboxes: BTreeMap<String, Arc<SandboxRecord>>,
    /// Sandbox ids by reserved name.
    #[serde(default)]
    pub sandbox_names: BTreeMap<String, String>,
    /// Containers by id.
    #[serde(default)]
    pub containers: BTreeMap<String, Arc<ContainerRecord>>,
    /// Container ids by reserved name.
    #[serde(default)]
    pub container_names: BTreeMap<String, String>,
}

impl State {
    /// Folds one event (with its sequence number) into the state. A request starts a record and
    /// a removal ends it; the other events update the record they name, nothing when it is
    /// unknown. Container events are folded by [`State::apply_container`].
    pub fn apply(&mut self, seq: u64, event: &Event) {
        self.seq = seq;
        match event {
            Event::PodCidrRequested { cidr } => {
                self.runtime_config.pod_cidr = cidr.clone();
                self.runtime_config.generation += 1;
            }
            Event::SandboxRequested {
                id,
                config,
                runtime_handler,
                netns_path,
                created_at,
            } => self.add_sandbox(SandboxRecord::requested(
                id,
                config,
                runtime_handler,
                netns_path,
                *created_at,
            )),
            Event::SandboxNetworkReady { id, ips } => {
                self.update_sandbox(id, |s| s.ips = ips.clone())
            }
            Event::SandboxStarted { id, pid } => self.update_sandbox(id, |s| s.pid = Some(*pid)),
            Event::SandboxExited { id } => self.update_sandbox(id, |s| s.exited = true),
            // Its start failed: it is to be removed (the record goes with SandboxRemoved).
            Event::SandboxFailed { id, .. } => self.update_sandbox(id, |s| {
                intent(
                    &mut s.desired,
                    &mut s.generation,
                    |_| true,
                    SandboxDesired::Removed,
                )
            }),
            Event::SandboxStopRequested { id } => self.update_sandbox(id, |s| {
                intent(
                    &mut s.desired,
                    &mut s.generation,
                    |d| d == SandboxDesired::Ready,
                    SandboxDesired::Stopped,
                )
            }),
            Event::SandboxResourcesUpdated {
                id,
                overhead,
                resources,
            } => self.update_sandbox(id, |s| s.update_resources(overhead, resources)),
            Event::SandboxStopped { id } => self.update_sandbox(id, SandboxRecord::stopped),
            Event::SandboxRemoveRequested { id } => self.update_sandbox(id, |s| {
                intent(
                    &mut s.desired,
                    &mut s.generation,
                    |d| d != SandboxDesired::Removed,
                    SandboxDesired::Removed,
                )
            }),
            Event::SandboxRemoved { id } => self.remove_sandbox(id),
            Event::ContainerRequested { .. }
            | Event::ContainerCreated { .. }
            | Event::ContainerStartRequested { .. }
            | Event::ContainerStarted { .. }
            | Event::ContainerExited { .. }
            | Event::ContainerResourcesUpdated { .. }
            | Event::ContainerStopRequested { .. }
            | Event::ContainerRemoveRequested { .. }
            | Event::ContainerRemoved { .. } => self.apply_container(event),
        }
    }

    /// Folds one container event (the part of [`State::apply`] for containers).
    fn apply_container(&mut self, event: &Event) {
        match event {
            Event::ContainerRequested { .. } => {
                if let Some(rec) = ContainerRecord::requested(event) {
                    self.add_container(rec);
                }
            }
            Event::ContainerCreated { id, user } => self.update_container(id, |c| {
                c.created = true;
                c.user = user.clone();
            }),
            Event::ContainerStartRequested { id } => self.update_container(id, |c| {
                intent(
                    &mut c.desired,
                    &mut c.generation,
                    |d| d == ContainerDesired::Created,
                    ContainerDesired::Running,
                )
            }),
            Event::ContainerStarted {
                id,
                pid,
                started_at,
            } => self.update_container(id, |c| {
                c.pid = Some(*pid);
                c.started_at = *started_at;
            }),
            Event::ContainerExited {
                id,
                exit_code,
                finished_at,
                reason,
                message,
            } => self.update_container(id, |c| {
                c.record_exit(*exit_code, *finished_at, reason, message)
            }),
            Event::ContainerResourcesUpdated { id, resources } => {
                self.update_container(id, |c| c.update_resources(resources))
            }
            Event::ContainerStopRequested {
                id,
                timeout_seconds,
                requested_at,
            } => self.update_container(id, |c| c.stop_requested(*timeout_seconds, *requested_at)),
            Event::ContainerRemoveRequested { id } => self.update_container(id, |c| {
                intent(
                    &mut c.desired,
                    &mut c.generation,
                    |d| d != ContainerDesired::Removed,
                    ContainerDesired::Removed,
                )
            }),
            Event::ContainerRemoved { id } => self.remove_container(id),
            // `apply` sends only container events here; a fold replayed at start must never
            // panic, so anything else is ignored (and caught by the tests in debug builds).
            other => debug_assert!(false, "apply dispatched a non-container event: {other:?}"),
        }
    }

    /// Applies `change` to sandbox `id`'s record, if there is one.
    fn update_sandbox(&mut self, id: &str, change: impl FnOnce(&mut SandboxRecord)) {
        if let Some(s) = self.sandboxes.get_mut(id).map(Arc::make_mut) {
            change(s);
        }
    }

    /// Applies `change` to container `id`'s record, if there is one.
    fn update_container(&mut self, id: &str, change: impl FnOnce(&mut ContainerRecord)) {
        if let Some(c) = self.containers.get_mut(id).map(Arc::make_mut) {
            change(c);
        }
    }

    /// Starts a sandbox's record and reserves its name.
    fn add_sandbox(&mut self, record: SandboxRecord) {
        if let Some(m) = &record.config.metadata {
            self.sandbox_names
                .insert(sandbox_name(m), record.id.clone());
        }
        self.sandboxes.insert(record.id.clone(), Arc::new(record));
    }

    /// Ends sandbox `id`'s record and frees its name (unless a newer sandbox holds it).
    fn remove_sandbox(&mut self, id: &str) {
        if let Some(s) = self.sandboxes.remove(id) {
            if let Some(m) = &s.config.metadata {
                let name = sandbox_name(m);
                if self
                    .sandbox_names
                    .get(&name)
                    .is_some_and(|holder| holder == id)
                {
                    self.sandbox_names.remove(&name);
                }
            }
        }
    }

    /// Starts a container's record and reserves its name within its pod.
    fn add_container(&mut self, record: ContainerRecord) {
        if let Some(m) = &record.config.metadata {
            self.container_names
                .insert(container_name(&record.sandbox_id, m), record.id.clone());
        }
        self.containers.insert(record.id.clone(), Arc::new(record));
    }

    /// Ends container `id`'s record and frees its name (unless a newer container holds it).
    fn remove_container(&mut self, id: &str) {
        if let Some(c) = self.containers.remove(id) {
            if let Some(m) = &c.config.metadata {
                let name = container_name(&c.sandbox_id, m);
                if self
                    .container_names
                    .get(&name)
                    .is_some_and(|holder| holder == id)
                {
                    self.container_names.remove(&name);
                }
            }
        }
    }

    /// The containers of sandbox `id`.
    pub fn containers_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a ContainerRecord> {
        self.containers
            .values()
            .map(|c| &**c)
            .filter(move |c| c.sandbox_id == id)
    }

    /// Every object key the state holds (what a full resync enqueues).
    pub fn keys(&self) -> Vec<ObjectKey> {
        let mut keys = vec![ObjectKey::RuntimeConfig];
        keys.extend(
            self.sandboxes
                .keys()
                .map(|id| ObjectKey::Sandbox(id.clone())),
        );
        keys.extend(
            self.containers
                .keys()
                .map(|id| ObjectKey::Container(id.clone())),
        );
        keys
    }

    /// Generation of an object's desired state (0 when the object is unknown).
    pub fn generation(&self, key: &ObjectKey) -> u64 {
        match key {
            ObjectKey::RuntimeConfig => self.runtime_config.generation,
            ObjectKey::Sandbox(id) => self.sandboxes.get(id).map(|s| s.generation).unwrap_or(0),
            ObjectKey::Container(id) => self.containers.get(id).map(|c| c.generation).unwrap_or(0),
        }
    }

    /// The object a containerd container or task id belongs to (a sandbox's pause container has
    /// the sandbox's id); events about containers concord does not own map to nothing.
    pub fn key_for_containerd_id(&self, id: &str) -> Option<ObjectKey> {
        if self.sandboxes.contains_key(id) {
            Some(ObjectKey::Sandbox(id.to_string()))
        } else {
            self.containers
                .contains_key(id)
                .then(|| ObjectKey::Container(id.to_string()))
        }
    }

    /// An object's desired state as JSON, for introspection.
    pub fn desired_json(&self, key: &ObjectKey) -> Option<String> {
        match key {
            ObjectKey::RuntimeConfig => serde_json::to_string(&self.runtime_config).ok(),
            ObjectKey::Sandbox(id) => self.sandboxes.get(id).and_then(|s| {
                serde_json::to_string(&serde_json::json!({
                    "desired": s.desired, "generation": s.generation, "netns": s.netns_path,
                    "ips": s.ips, "pid": s.pid, "exited": s.exited, "stopped": s.stopped,
                    "overhead": s.config.linux.as_ref().and_then(|l| l.overhead.as_ref()),
                    "resources": s.config.linux.as_ref().and_then(|l| l.resources.as_ref()),
                }))
                .ok()
            }),
            ObjectKey::Container(id) => self.containers.get(id).and_then(|c| {
                serde_json::to_string(&serde_json::json!({
                    "desired": c.desired, "generation": c.generation, "sandbox": c.sandbox_id,
                    "created": c.created, "pid": c.pid, "started_at": c.started_at,
                    "finished_at": c.finished_at, "exit_code": c.exit_code, "reason": c.reason,
                }))
                .ok()
            }),
        }
    }

    /// Number of objects of each kind (the `concord_objects` gauge).
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for k in self.keys() {
            *counts.entry(k.kind()).or_default() += 1;
        }
        counts.into_iter().collect()
    }

    /// Sandboxes by lifecycle state (creating, ready, notready, removing), every state present.
    pub fn sandbox_states(&self) -> [(&'static str, usize); 4] {
        let mut n = [
            ("creating", 0),
            ("ready", 0),
            ("notready", 0),
            ("removing", 0),
        ];
        for s in self.sandboxes.values() {
            let i = match s.desired {
                SandboxDesired::Removed => 3,
                _ if s.ready() => 1,
                SandboxDesired::Ready if s.pid.is_none() => 0,
                _ => 2,
            };
            n[i].1 += 1;
        }
        n
    }

    /// Objects by key, sorted (for introspection listings).
    pub fn objects(&self) -> BTreeMap<ObjectKey, u64> {
        self.keys()
            .into_iter()
            .map(|k| {
                let g = self.generation(&k);
                (k, g)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidr_intents_fold_to_the_last_one_and_count_generations() {
        let mut s = State::default();
        s.apply(
            1,
            &Event::PodCidrRequested {
                cidr: "10.1.0.0/16".into(),
            },
        );
        s.apply(
            2,
            &Event::PodCidrRequested {
                cidr: "10.2.0.0/16".into(),
            },
        );
        assert_eq!(s.runtime_config.pod_cidr, "10.2.0.0/16");
        assert_eq!(s.generation(&ObjectKey::RuntimeConfig), 2);
        assert_eq!(s.seq, 2);
    }

    #[test]
    fn events_are_tagged_json() {
        let ev = Event::PodCidrRequested {
            cidr: "10.0.0.0/8".into(),
        };
        let text = serde_json::to_string(&ev).unwrap();
        assert_eq!(text, r#"{"type":"PodCidrRequested","cidr":"10.0.0.0/8"}"#);
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), ev);
        assert!(serde_json::from_str::<Event>(r#"{"type":"FromTheFuture"}"#).is_err());
    }

    fn cpu(shares: i64) -> Option<crate::cri::LinuxContainerResources> {
        Some(crate::cri::LinuxContainerResources {
            cpu_shares: shares,
            ..Default::default()
        })
    }

    fn boxed(shares: i64) -> Option<Box<crate::cri::LinuxContainerResources>> {
        cpu(shares).map(Box::new)
    }

    #[test]
    fn pod_resource_updates_replace_the_given_parts_and_count_a_generation() {
        let mut s = State::default();
        s.apply(
            1,
            &Event::SandboxRequested {
                id: "p".into(),
                config: Box::default(),
                runtime_handler: String::new(),
                netns_path: None,
                created_at: 1,
            },
        );
        let update = |overhead, resources| Event::SandboxResourcesUpdated {
            id: "p".into(),
            overhead,
            resources,
        };
        s.apply(2, &update(boxed(10), boxed(512)));
        s.apply(3, &update(None, boxed(1024)));
        let p = &s.sandboxes["p"];
        let linux = p.config.linux.as_ref().unwrap();
        assert_eq!(linux.overhead, cpu(10), "an absent overhead is kept");
        assert_eq!(linux.resources, cpu(1024));
        assert!(p.resources_updated);
        assert_eq!(s.generation(&ObjectKey::Sandbox("p".into())), 3);
        let desired = s.desired_json(&ObjectKey::Sandbox("p".into())).unwrap();
        assert!(desired.contains("\"cpu_shares\":1024"), "{desired}");
        // An unknown pod: nothing.
        let before = s.clone();
        s.apply(
            4,
            &Event::SandboxResourcesUpdated {
                id: "q".into(),
                overhead: None,
                resources: boxed(1),
            },
        );
        assert_eq!(s.sandboxes, before.sandboxes);
    }

    #[test]
    fn pod_resource_events_round_trip_with_and_without_parts() {
        for ev in [
            Event::SandboxResourcesUpdated {
                id: "p".into(),
                overhead: boxed(2),
                resources: boxed(3),
            },
            Event::SandboxResourcesUpdated {
                id: "p".into(),
                overhead: None,
                resources: None,
            },
        ] {
            let text = serde_json::to_string(&ev).unwrap();
            assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), ev, "{text}");
        }
        let bare: Event =
            serde_json::from_str(r#"{"type":"SandboxResourcesUpdated","id":"p"}"#).unwrap();
        assert_eq!(
            bare,
            Event::SandboxResourcesUpdated {
                id: "p".into(),
                overhead: None,
                resources: None
            }
        );
    }
}
