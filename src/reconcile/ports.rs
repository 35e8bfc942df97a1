//! The seam between the reconcilers and the systems they converge: one narrow trait per outside
//! system (containerd, CNI, the netns directory), holding only the calls the reconcilers make.
//! The real types implement them by delegating (the daemon wires those in, as the reconcilers'
//! default type parameters); the reconcilers' unit tests (`sandbox_tests.rs`,
//! `container_tests.rs`) use in-memory fakes that record calls and fail on request, under paused
//! time. Futures are `Send`: the loop spawns reconciles.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::types::Mount;
use serde_json::Value;

use crate::containerd::{
    ContainerRuntime, Containerd, ContainerdError, SnapshotKind, TaskIo, TaskStatus,
};
use crate::network::cni::{Attachment, Cni, CniError};
use crate::network::netns::{self, NetnsError};
use crate::network::CniNetwork;

type Answer<T> = Result<T, ContainerdError>;

/// What the reconcilers ask of containerd: tasks, containers, snapshots and leases of the
/// namespace. Each call means what [`Containerd`]'s method of that name does.
pub trait ContainerdPort: Clone + Send + Sync + 'static {
    // Tasks.
    fn task_state(&self, id: &str) -> impl Future<Output = Answer<Option<(u32, bool)>>> + Send;
    fn task_status(
        &self,
        id: &str,
    ) -> impl Future<Output = Answer<Option<(u32, TaskStatus)>>> + Send;
    fn create_task(&self, id: &str, rootfs: Vec<Mount>)
        -> impl Future<Output = Answer<u32>> + Send;
    fn create_task_io(
        &self,
        id: &str,
        rootfs: Vec<Mount>,
        io: &TaskIo,
    ) -> impl Future<Output = Answer<u32>> + Send;
    fn start_task(&self, id: &str) -> impl Future<Output = Answer<()>> + Send;
    fn kill_task(&self, id: &str, signal: u32) -> impl Future<Output = Answer<()>> + Send;
    fn wait_task(&self, id: &str) -> impl Future<Output = Answer<u32>> + Send;
    fn end_task(&self, id: &str, wait: Duration) -> impl Future<Output = Answer<()>> + Send;
    fn delete_task(&self, id: &str) -> impl Future<Output = Answer<()>> + Send;
    fn delete_task_exit(&self, id: &str)
        -> impl Future<Output = Answer<Option<(u32, i64)>>> + Send;
    fn update_task(
        &self,
        id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> impl Future<Output = Answer<()>> + Send;
    fn kill_shims_of(&self, id: &str) -> impl Future<Output = usize> + Send;
    // Containers.
    fn container_exists(&self, id: &str) -> impl Future<Output = Answer<bool>> + Send;
    #[allow(clippy::too_many_arguments)]
    fn create_container(
        &self,
        id: &str,
        image: &str,
        runtime: &ContainerRuntime,
        spec: &(impl serde::Serialize + Sync),
        snapshotter: &str,
        snapshot_key: &str,
        owner: &str,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = Answer<()>> + Send;
    fn delete_container(&self, id: &str) -> impl Future<Output = Answer<()>> + Send;
    fn list_owned(
        &self,
        snapshotter: &str,
        prefix: &str,
    ) -> impl Future<Output = Answer<Vec<(String, String)>>> + Send;
    // Snapshots.
    fn snapshot_mounts(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> impl Future<Output = Answer<Option<Vec<Mount>>>> + Send;
    fn prepare_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        owner: &str,
        lease: &str,
    ) -> impl Future<Output = Answer<Vec<Mount>>> + Send;
    fn new_snapshot(
        &self,
        kind: SnapshotKind,
        snapshotter: &str,
        key: &str,
        parent: &str,
        owner: &str,
        lease: &str,
    ) -> impl Future<Output = Answer<Vec<Mount>>> + Send;
    fn remove_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> impl Future<Output = Answer<()>> + Send;
    fn owned_snapshots(
        &self,
        snapshotter: &str,
        owner: &str,
    ) -> impl Future<Output = Answer<Vec<String>>> + Send;
    // Leases.
    fn create_lease(
        &self,
        id: &str,
        expire: Duration,
        owner: &str,
    ) -> impl Future<Output = Answer<String>> + Send;
    fn delete_lease(&self, id: &str) -> impl Future<Output = Answer<()>> + Send;
}

impl ContainerdPort for Containerd {
    fn task_state(&self, id: &str) -> impl Future<Output = Answer<Option<(u32, bool)>>> + Send {
        Containerd::task_state(self, id)
    }
    fn task_status(
        &self,
        id: &str,
    ) -> impl Future<Output = Answer<Option<(u32, TaskStatus)>>> + Send {
        Containerd::task_status(self, id)
    }
    fn create_task(
        &self,
        id: &str,
        rootfs: Vec<Mount>,
    ) -> impl Future<Output = Answer<u32>> + Send {
        Containerd::create_task(self, id, rootfs)
    }
    fn create_task_io(
        &self,
        id: &str,
        rootfs: Vec<Mount>,
        io: &TaskIo,
    ) -> impl Future<Output = Answer<u32>> + Send {
        Containerd::create_task_io(self, id, rootfs, io)
    }
    fn start_task(&self, id: &str) -> impl Future<Output = Answer<()>> + Send {
        Containerd::start_task(self, id)
    }
    fn kill_task(&self, id: &str, signal: u32) -> impl Future<Output = Answer<()>> + Send {
        Containerd::kill_task(self, id, signal)
    }
    fn wait_task(&self, id: &str) -> impl Future<Output = Answer<u32>> + Send {
        Containerd::wait_task(self, id)
    }
    fn end_task(&self, id: &str, wait: Duration) -> impl Future<Output = Answer<()>> + Send {
        Containerd::end_task(self, id, wait)
    }
    fn delete_task(&self, id: &str) -> impl Future<Output = Answer<()>> + Send {
        Containerd::delete_task(self, id)
    }
    fn delete_task_exit(
        &self,
        id: &str,
    ) -> impl Future<Output = Answer<Option<(u32, i64)>>> + Send {
        Containerd::delete_task_exit(self, id)
    }
    fn update_task(
        &self,
        id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> impl Future<Output = Answer<()>> + Send {
        Containerd::update_task(self, id, resources)
    }
    fn kill_shims_of(&self, id: &str) -> impl Future<Output = usize> + Send {
        Containerd::kill_shims_of(self, id)
    }
    fn container_exists(&self, id: &str) -> impl Future<Output = Answer<bool>> + Send {
        Containerd::container_exists(self, id)
    }
    fn create_container(
        &self,
        id: &str,
        image: &str,
        runtime: &ContainerRuntime,
        spec: &(impl serde::Serialize + Sync),
        snapshotter: &str,
        snapshot_key: &str,
        owner: &str,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = Answer<()>> + Send {
        Containerd::create_container(
            self,
            id,
            image,
            runtime,
            spec,
            snapshotter,
            snapshot_key,
            owner,
            labels,
        )
    }
    fn delete_container(&self, id: &str) -> impl Future<Output = Answer<()>> + Send {
        Containerd::delete_container(self, id)
    }
    fn list_owned(
        &self,
        snapshotter: &str,
        prefix: &str,
    ) -> impl Future<Output = Answer<Vec<(String, String)>>> + Send {
        Containerd::list_owned(self, snapshotter, prefix)
    }
    fn snapshot_mounts(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> impl Future<Output = Answer<Option<Vec<Mount>>>> + Send {
        Containerd::snapshot_mounts(self, snapshotter, key)
    }
    fn prepare_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        owner: &str,
        lease: &str,
    ) -> impl Future<Output = Answer<Vec<Mount>>> + Send {
        Containerd::prepare_snapshot(self, snapshotter, key, parent, owner, lease)
    }
    fn new_snapshot(
        &self,
        kind: SnapshotKind,
        snapshotter: &str,
        key: &str,
        parent: &str,
        owner: &str,
        lease: &str,
    ) -> impl Future<Output = Answer<Vec<Mount>>> + Send {
        Containerd::new_snapshot(self, kind, snapshotter, key, parent, owner, lease)
    }
    fn remove_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> impl Future<Output = Answer<()>> + Send {
        Containerd::remove_snapshot(self, snapshotter, key)
    }
    fn owned_snapshots(
        &self,
        snapshotter: &str,
        owner: &str,
    ) -> impl Future<Output = Answer<Vec<String>>> + Send {
        Containerd::owned_snapshots(self, snapshotter, owner)
    }
    fn create_lease(
        &self,
        id: &str,
        expire: Duration,
        owner: &str,
    ) -> impl Future<Output = Answer<String>> + Send {
        Containerd::create_lease(self, id, expire, owner)
    }
    fn delete_lease(&self, id: &str) -> impl Future<Output = Answer<()>> + Send {
        Containerd::delete_lease(self, id)
    }
}

/// What the sandbox reconciler asks of CNI: ADD, DEL and the result cache. Each call means what
/// [`Cni`]'s method of that name does.
pub trait CniPort: Send + Sync + 'static {
    fn add(
        &self,
        net: &CniNetwork,
        a: &Attachment,
    ) -> impl Future<Output = Result<Value, CniError>> + Send;
    fn del(
        &self,
        net: Option<&CniNetwork>,
        network_name: &str,
        a: &Attachment,
    ) -> impl Future<Output = Result<(), CniError>> + Send;
    fn cached_result(&self, network_name: &str, a: &Attachment) -> Option<Value>;
    fn cached_ids(&self, ifname: &str) -> Vec<String>;
}

impl CniPort for Cni {
    fn add(
        &self,
        net: &CniNetwork,
        a: &Attachment,
    ) -> impl Future<Output = Result<Value, CniError>> + Send {
        Cni::add(self, net, a)
    }
    fn del(
        &self,
        net: Option<&CniNetwork>,
        network_name: &str,
        a: &Attachment,
    ) -> impl Future<Output = Result<(), CniError>> + Send {
        Cni::del(self, net, network_name, a)
    }
    fn cached_result(&self, network_name: &str, a: &Attachment) -> Option<Value> {
        Cni::cached_result(self, network_name, a)
    }
    fn cached_ids(&self, ifname: &str) -> Vec<String> {
        Cni::cached_ids(self, ifname)
    }
}

/// What the sandbox reconciler asks of the directory pods' namespaces are pinned in. Blocking
/// calls (the reconciler runs `create*` on a blocking thread, hence `Clone + 'static`); each
/// means what the [`netns`] function of that name does.
pub trait NetnsPort: Clone + Send + Sync + 'static {
    fn exists(&self, path: &Path) -> bool;
    fn remove(&self, path: &Path) -> Result<(), NetnsError>;
    fn create(&self, path: &Path) -> Result<(), NetnsError>;
    fn create_in_userns(
        &self,
        path: &Path,
        user_path: &Path,
        uid_map: &str,
        gid_map: &str,
    ) -> Result<(), NetnsError>;
    fn list(&self, dir: &Path) -> Vec<PathBuf>;
}

/// The host's namespaces, pinned by bind mounts ([`netns`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostNetns;

impl NetnsPort for HostNetns {
    fn exists(&self, path: &Path) -> bool {
        netns::exists(path)
    }
    fn remove(&self, path: &Path) -> Result<(), NetnsError> {
        netns::remove(path)
    }
    fn create(&self, path: &Path) -> Result<(), NetnsError> {
        netns::create(path)
    }
    fn create_in_userns(
        &self,
        path: &Path,
        user_path: &Path,
        uid_map: &str,
        gid_map: &str,
    ) -> Result<(), NetnsError> {
        netns::create_in_userns(path, user_path, uid_map, gid_map)
    }
    fn list(&self, dir: &Path) -> Vec<PathBuf> {
        netns::list(dir)
    }
}
