//! containerd containers, tasks and snapshots: the calls the sandbox and container reconcilers
//! make. Every delete treats NotFound as success (teardown is unconditional and idempotent), and
//! everything created carries concord's owner label.

use crate::containerd::rpc;
pub use containerd_client::types::v1::Status as TaskStatus;
use std::collections::{BTreeMap, HashMap};

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{
    PrepareSnapshotRequest, RemoveSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::types::Mount;

use super::{Containerd, ContainerdError, OWNER_LABEL};

/// The label containerd's CRI puts on each of its containers: [`KIND_SANDBOX`] or
/// [`KIND_CONTAINER`] (cAdvisor and node tools tell pause containers from app ones by it).
pub const KIND_LABEL: &str = "io.cri-containerd.kind";
/// [`KIND_LABEL`] of a pod's pause container.
pub const KIND_SANDBOX: &str = "sandbox";
/// [`KIND_LABEL`] of an app container.
pub const KIND_CONTAINER: &str = "container";

/// Longest key plus value containerd accepts in one label (its `labels.Validate`).
const MAX_LABEL_BYTES: usize = 4096;

/// Key prefixes a CRI or image label may not set: concord's own labels and containerd's GC
/// references (a pod label must not keep arbitrary content or snapshots alive).
const RESERVED_LABEL_PREFIXES: [&str; 2] = ["io.concord.", "containerd.io/gc."];

/// The labels of a containerd container made for a CRI object, built as containerd's CRI does
/// (`buildLabels`): the image config's labels, then the CRI config's (they win), then concord's
/// own `own` (kind, pod-sandbox-id, GC references), which nothing overrides. cAdvisor's containerd
/// factory names pods and containers from the CRI labels (`io.kubernetes.pod.name`, ...). A label
/// containerd would refuse (key and value over 4 KiB) or one under a reserved prefix is left out.
pub fn cri_labels(
    image: Option<&BTreeMap<String, String>>,
    config: &HashMap<String, String>,
    own: HashMap<String, String>,
) -> HashMap<String, String> {
    let usable = |(k, v): (&String, &String)| {
        let ok = !k.is_empty()
            && k.len() + v.len() <= MAX_LABEL_BYTES
            && !RESERVED_LABEL_PREFIXES.iter().any(|p| k.starts_with(p));
        ok.then(|| (k.clone(), v.clone()))
    };
    let mut labels: HashMap<String, String> =
        image.into_iter().flatten().filter_map(usable).collect();
    labels.extend(config.iter().filter_map(usable));
    labels.extend(own);
    labels
}

/// Where a task's stdio goes: URIs the shim understands (`binary://`, `file://`, FIFO paths);
/// empty is /dev/null.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskIo {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The containerd runtime (shim) a container runs with, and its options.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRuntime {
    pub name: String,
    pub options: Option<prost_types::Any>,
}

/// The runc shim's options (`containerd.runc.v1.Options`; only the fields concord sets).
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    #[prost(string, tag = "6")]
    binary_name: String,
    #[prost(string, tag = "7")]
    root: String,
    #[prost(bool, tag = "9")]
    systemd_cgroup: bool,
}

impl ContainerRuntime {
    /// The runtime of a configured handler; runc shims get their options (binary, root, systemd
    /// cgroups), other shims none.
    pub fn of(handler: &crate::config::RuntimeHandler, systemd_cgroup: bool) -> ContainerRuntime {
        let runc = handler.runtime_type.starts_with("io.containerd.runc.");
        let options = RuncOptions {
            binary_name: handler.binary_name.clone(),
            root: handler.root.clone(),
            systemd_cgroup,
        };
        ContainerRuntime {
            name: handler.runtime_type.clone(),
            options: (runc && options != RuncOptions::default()).then(|| prost_types::Any {
                type_url: "containerd.runc.v1.Options".into(),
                value: prost::Message::encode_to_vec(&options),
            }),
        }
    }
}

/// The runc shim's checkpoint options (`containerd.runc.v1.CheckpointOptions`; the fields
/// concord sets).
#[derive(Clone, PartialEq, prost::Message)]
struct CheckpointOptions {
    /// Stop the container after the checkpoint (false: it keeps running).
    #[prost(bool, tag = "1")]
    exit: bool,
    /// Checkpoint the locks a process holds on files.
    #[prost(bool, tag = "5")]
    file_locks: bool,
    /// Where CRIU writes the images.
    #[prost(string, tag = "8")]
    image_path: String,
    /// Where CRIU writes its logs.
    #[prost(string, tag = "9")]
    work_path: String,
}

/// Type URL containerd expects for a JSON runtime spec.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const RESOURCES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// What [`Containerd::new_snapshot`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Writable: a container's rootfs.
    Active,
    /// Read-only: an image volume.
    View,
}

/// The same snapshot, asked for as a read-only view.
fn view_request(p: PrepareSnapshotRequest) -> ViewSnapshotRequest {
    ViewSnapshotRequest {
        snapshotter: p.snapshotter,
        key: p.key,
        parent: p.parent,
        labels: p.labels,
    }
}

/// Ok for NotFound: the object is already gone.
fn gone_ok<T>(r: Result<T, ContainerdError>) -> Result<(), ContainerdError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

impl Containerd {
    /// Prepares the writable snapshot `key` on `parent` (an image's chain id) under `lease` (an
    /// unreferenced active snapshot is fair game for containerd's GC until a container holds it);
    /// answers its mounts.
    pub async fn prepare_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        owner: &str,
        lease: &str,
    ) -> Result<Vec<Mount>, ContainerdError> {
        let kind = SnapshotKind::Active;
        self.new_snapshot(kind, snapshotter, key, parent, owner, lease)
            .await
    }

    /// Makes snapshot `key` of `kind` on `parent` (an image's chain id), labelled as `owner`'s,
    /// under `lease` (held by it until a container references it); answers its mounts.
    pub async fn new_snapshot(
        &self,
        kind: SnapshotKind,
        snapshotter: &str,
        key: &str,
        parent: &str,
        owner: &str,
        lease: &str,
    ) -> Result<Vec<Mount>, ContainerdError> {
        let req = PrepareSnapshotRequest {
            snapshotter: snapshotter.into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::from([(OWNER_LABEL.to_string(), owner.to_string())]),
        };
        let mounts = match kind {
            SnapshotKind::Active => {
                let req = self.leased(req, lease, "Snapshots.Prepare")?;
                let mut client = self.snapshots();
                self.call(rpc::SNAPSHOTS_PREPARE, client.prepare(req))
                    .await?
                    .mounts
            }
            SnapshotKind::View => {
                let req = self.leased(view_request(req), lease, "Snapshots.View")?;
                let mut client = self.snapshots();
                self.call(rpc::SNAPSHOTS_VIEW, client.view(req))
                    .await?
                    .mounts
            }
        };
        Ok(mounts)
    }

    /// `msg` with the namespace and `lease` headers; a lease id that is not ASCII fails `call`.
    pub(super) fn leased<T>(
        &self,
        msg: T,
        lease: &str,
        call: &'static str,
    ) -> Result<tonic::Request<T>, ContainerdError> {
        self.request_with_lease(msg, lease)
            .map_err(|status| ContainerdError::Call { call, status })
    }

    /// Mounts of snapshot `key`, or None when it does not exist.
    pub async fn snapshot_mounts(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> Result<Option<Vec<Mount>>, ContainerdError> {
        let req = containerd_client::services::v1::snapshots::MountsRequest {
            snapshotter: snapshotter.into(),
            key: key.into(),
        };
        match self
            .call(
                rpc::SNAPSHOTS_MOUNTS,
                self.snapshots().mounts(self.request(req)),
            )
            .await
        {
            Ok(r) => Ok(Some(r.mounts)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The containers of the namespace matching every one of containerd's `filters` (none: all).
    pub async fn list_containers(
        &self,
        filters: Vec<String>,
    ) -> Result<Vec<Container>, ContainerdError> {
        let req = containerd_client::services::v1::ListContainersRequest { filters };
        let r = self
            .call(
                rpc::CONTAINERS_LIST,
                self.containers().list(self.request(req)),
            )
            .await?;
        Ok(r.containers)
    }

    /// Deletes sandbox `id` from containerd's sandbox store (where containerd 2.x's CRI also
    /// records its pods); a missing one, or a containerd without the store (1.6), is fine.
    pub async fn delete_sandbox_record(&self, id: &str) -> Result<(), ContainerdError> {
        use containerd_client::services::v1::sandbox::{
            store_client::StoreClient, StoreDeleteRequest,
        };
        let req = StoreDeleteRequest {
            sandbox_id: id.into(),
        };
        let mut store = StoreClient::new(self.channel());
        match self
            .call(rpc::SANDBOX_STORE_DELETE, store.delete(self.request(req)))
            .await
        {
            Err(e) if e.code() == tonic::Code::Unimplemented => Ok(()),
            r => gone_ok(r.map(|_| ())),
        }
    }

    /// Containers and snapshots (of `snapshotter`) whose owner label starts with `prefix`:
    /// (object id or snapshot key, owner). For the resync's orphan scan.
    pub async fn list_owned(
        &self,
        snapshotter: &str,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, ContainerdError> {
        let filter = format!("labels.\"{OWNER_LABEL}\"");
        let mut owned: Vec<(String, String)> = self
            .list_containers(vec![filter.clone()])
            .await?
            .into_iter()
            .filter_map(|c| Some((c.id, c.labels.get(OWNER_LABEL)?.clone())))
            .collect();
        owned.extend(self.labelled_snapshots(snapshotter, filter).await?);
        owned.retain(|(_, owner)| owner.starts_with(prefix));
        Ok(owned)
    }

    /// Keys of the snapshots (of `snapshotter`) whose owner label is exactly `owner`: a
    /// container's rootfs and image volume views, found without any record of them.
    pub async fn owned_snapshots(
        &self,
        snapshotter: &str,
        owner: &str,
    ) -> Result<Vec<String>, ContainerdError> {
        let quoted = owner.replace('\\', "\\\\").replace('"', "\\\"");
        let filter = format!("labels.\"{OWNER_LABEL}\"==\"{quoted}\"");
        let found = self.labelled_snapshots(snapshotter, filter).await?;
        Ok(found
            .into_iter()
            .filter(|(_, o)| o == owner)
            .map(|(key, _)| key)
            .collect())
    }

    /// Snapshots (of `snapshotter`) matching containerd `filter`: (key, owner label).
    async fn labelled_snapshots(
        &self,
        snapshotter: &str,
        filter: String,
    ) -> Result<Vec<(String, String)>, ContainerdError> {
        let req = containerd_client::services::v1::snapshots::ListSnapshotsRequest {
            snapshotter: snapshotter.into(),
            filters: vec![filter],
        };
        let mut stream = self
            .call(
                rpc::SNAPSHOTS_LIST,
                self.snapshots().list(self.request(req)),
            )
            .await?;
        let mut found = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(m)) => found.extend(
                    m.info
                        .into_iter()
                        .filter_map(|i| Some((i.name, i.labels.get(OWNER_LABEL)?.clone()))),
                ),
                Ok(None) => return Ok(found),
                Err(status) => {
                    return Err(ContainerdError::Call {
                        call: "Snapshots.List",
                        status,
                    })
                }
            }
        }
    }

    /// Whether container `id` exists.
    pub async fn container_exists(&self, id: &str) -> Result<bool, ContainerdError> {
        let req = containerd_client::services::v1::GetContainerRequest { id: id.into() };
        match self
            .call(
                rpc::CONTAINERS_GET,
                self.containers().get(self.request(req)),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The task of container `id`: (pid, running), or None when there is no task.
    pub async fn task_state(&self, id: &str) -> Result<Option<(u32, bool)>, ContainerdError> {
        Ok(self
            .task_status(id)
            .await?
            .map(|(pid, s)| (pid, s == TaskStatus::Running)))
    }

    /// The task's pid and status, None when there is no task.
    pub async fn task_status(
        &self,
        id: &str,
    ) -> Result<Option<(u32, TaskStatus)>, ContainerdError> {
        let req = containerd_client::services::v1::GetRequest {
            container_id: id.into(),
            exec_id: String::new(),
        };
        match self
            .call(rpc::TASKS_GET, self.tasks().get(self.request(req)))
            .await
        {
            Ok(r) => Ok(r.process.map(|p| {
                let status = TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown);
                (p.pid, status)
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes snapshot `key`; a missing one is fine.
    pub async fn remove_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> Result<(), ContainerdError> {
        let req = RemoveSnapshotRequest {
            snapshotter: snapshotter.into(),
            key: key.into(),
        };
        gone_ok(
            self.call(
                rpc::SNAPSHOTS_REMOVE,
                self.snapshots().remove(self.request(req)),
            )
            .await,
        )
    }

    /// Creates container `id` running `spec` (an OCI runtime spec, sent as its JSON) with
    /// `runtime` on snapshot `snapshot_key`.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_container(
        &self,
        id: &str,
        image: &str,
        runtime: &ContainerRuntime,
        spec: &impl serde::Serialize,
        snapshotter: &str,
        snapshot_key: &str,
        owner: &str,
        mut labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        labels.insert(OWNER_LABEL.to_string(), owner.to_string());
        let container = Container {
            id: id.into(),
            labels,
            image: image.into(),
            runtime: Some(Runtime {
                name: runtime.name.clone(),
                options: runtime.options.clone(),
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: serde_json::to_vec(spec).expect("a spec of UTF-8 strings serializes"),
            }),
            snapshotter: snapshotter.into(),
            snapshot_key: snapshot_key.into(),
            ..Default::default()
        };
        let req = CreateContainerRequest {
            container: Some(container),
        };
        self.call(
            rpc::CONTAINERS_CREATE,
            self.containers().create(self.request(req)),
        )
        .await?;
        Ok(())
    }

    /// Deletes container `id`; a missing one is fine. Answers whether it was there.
    pub async fn delete_container(&self, id: &str) -> Result<bool, ContainerdError> {
        let req = DeleteContainerRequest { id: id.into() };
        let mut containers = self.containers();
        let deleted = containers.delete(self.request(req));
        match self.call(rpc::CONTAINERS_DELETE, deleted).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates the task of container `id` on `rootfs` with no stdio; answers its pid.
    pub async fn create_task(&self, id: &str, rootfs: Vec<Mount>) -> Result<u32, ContainerdError> {
        self.create_task_io(id, rootfs, &TaskIo::default()).await
    }

    /// Creates the task of container `id` with its stdio going where `io` says.
    pub async fn create_task_io(
        &self,
        id: &str,
        rootfs: Vec<Mount>,
        io: &TaskIo,
    ) -> Result<u32, ContainerdError> {
        let req = CreateTaskRequest {
            container_id: id.into(),
            rootfs,
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            terminal: io.terminal,
            ..Default::default()
        };
        let r = self
            .call(rpc::TASKS_CREATE, self.tasks().create(self.request(req)))
            .await?;
        Ok(r.pid)
    }

    /// Starts the task of container `id`.
    pub async fn start_task(&self, id: &str) -> Result<(), ContainerdError> {
        self.start_process(id, "").await
    }

    /// Starts process `exec_id` of container `id` ("" is the task's init process).
    async fn start_process(&self, id: &str, exec_id: &str) -> Result<(), ContainerdError> {
        let req = StartRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        };
        self.call(rpc::TASKS_START, self.tasks().start(self.request(req)))
            .await?;
        Ok(())
    }

    /// Sends `signal` to the task of container `id` (all its processes); a missing task is fine.
    /// SIGKILL also goes to the task's init itself: runc's `kill --all` signals the processes it
    /// lists from the task's cgroup, and under the systemd driver on cgroup v1 systemd prunes a
    /// scope's `devices` cgroup (the one runc lists from) when a sibling scope stops, moving
    /// its processes to the slice: runc then signals nobody and answers success. One after the
    /// other, not at once: under that driver the init's death lets systemd remove the scope,
    /// and a `kill --all` still running then fails on its missing cgroup.
    pub async fn kill_task(&self, id: &str, signal: u32) -> Result<(), ContainerdError> {
        self.kill(id, signal, true).await?;
        if signal == 9 {
            self.kill(id, signal, false).await?;
        }
        Ok(())
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), ContainerdError> {
        let req = KillRequest {
            container_id: id.into(),
            exec_id: String::new(),
            signal,
            all,
        };
        gone_ok(
            self.call(rpc::TASKS_KILL, self.tasks().kill(self.request(req)))
                .await,
        )
    }

    /// Waits for the task of container `id` to exit; answers its exit status.
    pub async fn wait_task(&self, id: &str) -> Result<u32, ContainerdError> {
        self.wait_process(id, "").await
    }

    /// The OCI spec container `id` was created with (None: it has none concord can read).
    pub async fn container_spec(
        &self,
        id: &str,
    ) -> Result<Option<oci_spec::runtime::Spec>, ContainerdError> {
        let req = containerd_client::services::v1::GetContainerRequest { id: id.into() };
        let r = self
            .call(
                rpc::CONTAINERS_GET,
                self.containers().get(self.request(req)),
            )
            .await?;
        let spec = r
            .container
            .and_then(|c| c.spec)
            .map(|s| s.value)
            .unwrap_or_default();
        Ok(serde_json::from_slice(&spec).ok())
    }

    /// Adds process `exec_id` (an OCI `process`) to the task of container `id` and starts it.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
        io: &TaskIo,
    ) -> Result<(), ContainerdError> {
        let req = containerd_client::services::v1::ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            terminal: io.terminal,
            spec: Some(prost_types::Any {
                type_url: PROCESS_TYPE_URL.into(),
                value: serde_json::to_vec(process).expect("a process of UTF-8 strings serializes"),
            }),
        };
        self.call(rpc::TASKS_EXEC, self.tasks().exec(self.request(req)))
            .await?;
        self.start_process(id, exec_id).await
    }

    /// Checkpoints task `id` with CRIU (through the runc shim) into `image_path`, leaving it
    /// running; CRIU's log goes to `work_path`. The caller bounds the call.
    pub async fn checkpoint_task(
        &self,
        id: &str,
        image_path: &std::path::Path,
        work_path: &std::path::Path,
    ) -> Result<(), ContainerdError> {
        let options = CheckpointOptions {
            exit: false,
            file_locks: true,
            image_path: image_path.display().to_string(),
            work_path: work_path.display().to_string(),
        };
        let req = containerd_client::services::v1::CheckpointTaskRequest {
            container_id: id.into(),
            parent_checkpoint: String::new(),
            options: Some(prost_types::Any {
                type_url: "containerd.runc.v1.CheckpointOptions".into(),
                value: prost::Message::encode_to_vec(&options),
            }),
        };
        self.call(
            rpc::TASKS_CHECKPOINT,
            self.tasks().checkpoint(self.request(req)),
        )
        .await?;
        Ok(())
    }

    /// Waits for process `exec_id` of container `id`; answers its exit status.
    pub async fn wait_process(&self, id: &str, exec_id: &str) -> Result<u32, ContainerdError> {
        let req = WaitRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        };
        let r = self
            .call(rpc::TASKS_WAIT, self.tasks().wait(self.request(req)))
            .await?;
        Ok(r.exit_status)
    }

    /// Applies OCI `linux.resources` to the running task of container `id`.
    pub async fn update_task(
        &self,
        id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<(), ContainerdError> {
        let req = containerd_client::services::v1::UpdateTaskRequest {
            container_id: id.into(),
            resources: Some(prost_types::Any {
                type_url: RESOURCES_TYPE_URL.into(),
                value: serde_json::to_vec(resources).expect("resources serialize"),
            }),
            annotations: Default::default(),
        };
        self.call(rpc::TASKS_UPDATE, self.tasks().update(self.request(req)))
            .await?;
        Ok(())
    }

    /// SIGKILLs process `exec_id` of container `id`; a missing one is fine.
    pub async fn kill_process(&self, id: &str, exec_id: &str) -> Result<(), ContainerdError> {
        let req = KillRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            signal: 9,
            all: false,
        };
        gone_ok(
            self.call(rpc::TASKS_KILL, self.tasks().kill(self.request(req)))
                .await,
        )
    }

    /// Closes the stdin of process `exec_id` ("" for the task's own) of container `id`: the
    /// shim holds the stdin FIFO open itself until told.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ContainerdError> {
        let req = containerd_client::services::v1::CloseIoRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            stdin: true,
        };
        gone_ok(
            self.call(
                rpc::TASKS_CLOSE_I_O,
                self.tasks().close_io(self.request(req)),
            )
            .await,
        )
    }

    /// Resizes the terminal of process `exec_id` ("" for the task's own) of container `id`.
    pub async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), ContainerdError> {
        let req = containerd_client::services::v1::ResizePtyRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            width,
            height,
        };
        gone_ok(
            self.call(
                rpc::TASKS_RESIZE_PTY,
                self.tasks().resize_pty(self.request(req)),
            )
            .await,
        )
    }

    /// Deletes process `exec_id` of container `id`; a missing one is fine.
    pub async fn delete_process(&self, id: &str, exec_id: &str) -> Result<(), ContainerdError> {
        let req = containerd_client::services::v1::DeleteProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        };
        gone_ok(
            self.call(
                rpc::TASKS_DELETE_PROCESS,
                self.tasks().delete_process(self.request(req)),
            )
            .await
            .map(|_| ()),
        )
    }

    /// Ends the task of container `id` if there is one: SIGKILL, wait for the exit (at most
    /// `wait`), delete (which ends the shim). No task is fine.
    pub async fn end_task(
        &self,
        id: &str,
        wait: std::time::Duration,
    ) -> Result<(), ContainerdError> {
        if self.task_state(id).await?.is_none() {
            return Ok(());
        }
        self.kill_task(id, 9).await?;
        let _ = tokio::time::timeout(wait, self.wait_task(id)).await;
        self.delete_task(id).await
    }

    /// Deletes the (exited) task of container `id`, which ends its shim; a missing one is fine.
    pub async fn delete_task(&self, id: &str) -> Result<(), ContainerdError> {
        self.delete_task_exit(id).await.map(|_| ())
    }

    /// Deletes the (exited) task of container `id`; answers its exit status and the exit time
    /// (Unix nanoseconds), or None when there was no task.
    pub async fn delete_task_exit(&self, id: &str) -> Result<Option<(u32, i64)>, ContainerdError> {
        let req = DeleteTaskRequest {
            container_id: id.into(),
        };
        match self
            .call(rpc::TASKS_DELETE, self.tasks().delete(self.request(req)))
            .await
        {
            Ok(r) => {
                let at = r
                    .exited_at
                    .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
                    .unwrap_or(0);
                Ok(Some((r.exit_status, at)))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of containerd's `containerd.runc.v1.Options` (runtime/v2/runc/options/oci.proto)
    /// the shim reads, with their tags there: declared again on purpose, from containerd's proto
    /// rather than from [`RuncOptions`], so a wrong tag there fails this test.
    #[derive(Clone, PartialEq, prost::Message)]
    struct ShimOptions {
        #[prost(string, tag = "6")]
        binary_name: String,
        #[prost(string, tag = "7")]
        root: String,
        #[prost(bool, tag = "9")]
        systemd_cgroup: bool,
    }

    #[test]
    fn systemd_cgroup_reaches_the_runc_shim_options_as_containerd_sets_them() {
        let runc = crate::config::RuntimeHandler::default();
        let rt = ContainerRuntime::of(&runc, true);
        assert_eq!(rt.name, "io.containerd.runc.v2");
        let any = rt.options.unwrap();
        // containerd's CRI marshals the options with typeurl: the message's full name.
        assert_eq!(any.type_url, "containerd.runc.v1.Options");
        let o: ShimOptions = prost::Message::decode(any.value.as_slice()).unwrap();
        assert!(o.systemd_cgroup);
        // cgroupfs and no other option: no options at all (the shim's defaults).
        assert_eq!(ContainerRuntime::of(&runc, false).options, None);
        let other = crate::config::RuntimeHandler {
            runtime_type: "io.containerd.kata.v2".into(),
            ..Default::default()
        };
        assert_eq!(ContainerRuntime::of(&other, true).options, None);
    }

    fn map<C: FromIterator<(String, String)>>(pairs: &[(&str, &str)]) -> C {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cri_labels_override_image_labels_and_concords_own_override_both() {
        let image: BTreeMap<_, _> = map(&[("a", "image"), ("b", "image"), (KIND_LABEL, "x")]);
        let config: HashMap<_, _> = map(&[("b", "cri"), (KIND_LABEL, "forged")]);
        let own = map(&[(KIND_LABEL, KIND_CONTAINER)]);
        let labels = cri_labels(Some(&image), &config, own);
        assert_eq!(labels["a"], "image");
        assert_eq!(labels["b"], "cri");
        assert_eq!(labels[KIND_LABEL], KIND_CONTAINER);
    }

    #[test]
    fn labels_containerd_would_refuse_or_under_reserved_prefixes_are_left_out() {
        let long = "v".repeat(MAX_LABEL_BYTES);
        let config: HashMap<_, _> = map(&[
            ("long", &long),
            ("io.concord.owner", "forged"),
            ("containerd.io/gc.ref.content.x", "sha256:00"),
            ("", "empty key"),
            ("ok", "yes"),
        ]);
        let labels = cri_labels(None, &config, HashMap::new());
        assert_eq!(labels, map(&[("ok", "yes")]));
    }
}
