//! The containerd RPCs concord makes, each described once: the service and method its metrics
//! are labelled with, the name its errors carry, and whose clock bounds it.

use std::time::Duration;

/// How long concord waits for one containerd call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// A call containerd answers at once: bounded by [`Rpc::CALL_DEADLINE`] (a wedged shim or a
    /// containerd that never answers must not hold a reconcile forever).
    Call,
    /// A call whose length is the work's (waiting for an exit, applying a layer, measuring a
    /// snapshot, reading a blob): the caller bounds it.
    Work,
}

/// One containerd RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rpc {
    /// The `service` label of concord's containerd metrics.
    pub service: &'static str,
    /// The `method` label.
    pub method: &'static str,
    /// How errors name it (`Tasks.Create`).
    pub name: &'static str,
    pub deadline: Deadline,
}

impl Rpc {
    /// The bound of a [`Deadline::Call`].
    pub const CALL_DEADLINE: Duration = Duration::from_secs(30);

    const fn bounded(service: &'static str, method: &'static str, name: &'static str) -> Rpc {
        Rpc {
            service,
            method,
            name,
            deadline: Deadline::Call,
        }
    }

    const fn unbounded(service: &'static str, method: &'static str, name: &'static str) -> Rpc {
        Rpc {
            service,
            method,
            name,
            deadline: Deadline::Work,
        }
    }

    /// The longest concord waits for an answer; None when the caller bounds it.
    pub fn timeout(&self) -> Option<Duration> {
        match self.deadline {
            Deadline::Call => Some(Self::CALL_DEADLINE),
            Deadline::Work => None,
        }
    }
}

pub const CONTAINERS_CREATE: Rpc = Rpc::bounded("containers", "Create", "Containers.Create");
pub const CONTAINERS_DELETE: Rpc = Rpc::bounded("containers", "Delete", "Containers.Delete");
pub const CONTAINERS_GET: Rpc = Rpc::bounded("containers", "Get", "Containers.Get");
pub const CONTAINERS_LIST: Rpc = Rpc::bounded("containers", "List", "Containers.List");
pub const CONTENT_ABORT: Rpc = Rpc::bounded("content", "Abort", "Content.Abort");
pub const CONTENT_INFO: Rpc = Rpc::bounded("content", "Info", "Content.Info");
pub const CONTENT_READ: Rpc = Rpc::unbounded("content", "Read", "Content.Read");
pub const CONTENT_UPDATE: Rpc = Rpc::bounded("content", "Update", "Content.Update");
pub const DIFF_APPLY: Rpc = Rpc::unbounded("diff", "Apply", "Diff.Apply");
pub const DIFF_DIFF: Rpc = Rpc::unbounded("diff", "Diff", "Diff.Diff");
pub const EVENTS_PUBLISH: Rpc = Rpc::bounded("events", "Publish", "Events.Publish");
pub const IMAGES_CREATE: Rpc = Rpc::bounded("images", "Create", "Images.Create");
pub const IMAGES_DELETE: Rpc = Rpc::bounded("images", "Delete", "Images.Delete");
pub const IMAGES_GET: Rpc = Rpc::bounded("images", "Get", "Images.Get");
pub const IMAGES_LIST: Rpc = Rpc::bounded("images", "List", "Images.List");
pub const IMAGES_UPDATE: Rpc = Rpc::bounded("images", "Update", "Images.Update");
pub const INTROSPECTION_PLUGINS: Rpc =
    Rpc::bounded("introspection", "Plugins", "Introspection.Plugins");
pub const LEASES_CREATE: Rpc = Rpc::bounded("leases", "Create", "Leases.Create");
pub const LEASES_DELETE: Rpc = Rpc::bounded("leases", "Delete", "Leases.Delete");
pub const LEASES_LIST: Rpc = Rpc::bounded("leases", "List", "Leases.List");
pub const SANDBOX_STORE_DELETE: Rpc =
    Rpc::bounded("sandbox_store", "Delete", "SandboxStore.Delete");
pub const SNAPSHOTS_COMMIT: Rpc = Rpc::bounded("snapshots", "Commit", "Snapshots.Commit");
pub const SNAPSHOTS_LIST: Rpc = Rpc::bounded("snapshots", "List", "Snapshots.List");
pub const SNAPSHOTS_MOUNTS: Rpc = Rpc::bounded("snapshots", "Mounts", "Snapshots.Mounts");
pub const SNAPSHOTS_PREPARE: Rpc = Rpc::bounded("snapshots", "Prepare", "Snapshots.Prepare");
pub const SNAPSHOTS_REMOVE: Rpc = Rpc::bounded("snapshots", "Remove", "Snapshots.Remove");
pub const SNAPSHOTS_STAT: Rpc = Rpc::bounded("snapshots", "Stat", "Snapshots.Stat");
pub const SNAPSHOTS_VIEW: Rpc = Rpc::bounded("snapshots", "View", "Snapshots.View");
pub const SNAPSHOTS_USAGE: Rpc = Rpc::unbounded("snapshots", "Usage", "Snapshots.Usage");
pub const TASKS_CHECKPOINT: Rpc = Rpc::unbounded("tasks", "Checkpoint", "Tasks.Checkpoint");
pub const TASKS_CLOSE_I_O: Rpc = Rpc::bounded("tasks", "CloseIO", "Tasks.CloseIO");
pub const TASKS_CREATE: Rpc = Rpc::bounded("tasks", "Create", "Tasks.Create");
pub const TASKS_DELETE: Rpc = Rpc::bounded("tasks", "Delete", "Tasks.Delete");
pub const TASKS_DELETE_PROCESS: Rpc = Rpc::bounded("tasks", "DeleteProcess", "Tasks.DeleteProcess");
pub const TASKS_EXEC: Rpc = Rpc::bounded("tasks", "Exec", "Tasks.Exec");
pub const TASKS_GET: Rpc = Rpc::bounded("tasks", "Get", "Tasks.Get");
pub const TASKS_KILL: Rpc = Rpc::bounded("tasks", "Kill", "Tasks.Kill");
pub const TASKS_RESIZE_PTY: Rpc = Rpc::bounded("tasks", "ResizePty", "Tasks.ResizePty");
pub const TASKS_START: Rpc = Rpc::bounded("tasks", "Start", "Tasks.Start");
pub const TASKS_UPDATE: Rpc = Rpc::bounded("tasks", "Update", "Tasks.Update");
pub const TASKS_WAIT: Rpc = Rpc::unbounded("tasks", "Wait", "Tasks.Wait");
pub const VERSION_VERSION: Rpc = Rpc::bounded("version", "Version", "Version.Version");
