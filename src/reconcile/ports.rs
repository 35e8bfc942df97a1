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
use oci_spec::runtime::LinuxResources;

type Answer<T> = Result<T, ContainerdError>;

/// Declares port trait `$port` (each method answers a `Send` future) and implements it for
/// `$real` by calling `$real`'s own method of the same name: one list of signatures.
macro_rules! port {
    (
        $(#[$doc:meta])*
        pub trait $port:ident: $($bound:path),+ ; for $real:ty {
            $( fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $out:ty; )*
        }
    ) => {
        $(#[$doc])*
        pub trait $port: $($bound +)+ 'static {
            $(
                #[allow(clippy::too_many_arguments)]
                fn $name(&self $(, $arg: $ty)*) -> impl Future<Output = $out> + Send;
            )*
        }

        impl $port for $real {
            $(
                fn $name(&self $(, $arg: $ty)*) -> impl Future<Output = $out> + Send {
                    <$real>::$name(self $(, $arg)*)
                }
            )*
        }
    };
}

port! {
    /// What the reconcilers ask of containerd: tasks, containers, snapshots and leases of the
    /// namespace. Each call means what [`Containerd`]'s method of that name does.
    pub trait ContainerdPort: Clone, Send, Sync; for Containerd {
        // Tasks.
        fn task_state(&self, id: &str) -> Answer<Option<(u32, bool)>>;
        fn task_status(&self, id: &str) -> Answer<Option<(u32, TaskStatus)>>;
        fn create_task_io(&self, id: &str, rootfs: Vec<Mount>, io: &TaskIo) -> Answer<u32>;
        fn start_task(&self, id: &str) -> Answer<()>;
        fn kill_task(&self, id: &str, signal: u32) -> Answer<()>;
        fn wait_task(&self, id: &str) -> Answer<u32>;
        fn end_task(&self, id: &str, wait: Duration) -> Answer<()>;
        fn delete_task(&self, id: &str) -> Answer<()>;
        fn delete_task_exit(&self, id: &str) -> Answer<Option<(u32, i64)>>;
        fn update_task(&self, id: &str, resources: &LinuxResources) -> Answer<()>;
        fn kill_shims_of(&self, id: &str) -> usize;
        // Containers.
        fn container_exists(&self, id: &str) -> Answer<bool>;
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
        ) -> Answer<()>;
        fn delete_container(&self, id: &str) -> Answer<bool>;
        fn list_owned(&self, snapshotter: &str, prefix: &str) -> Answer<Vec<(String, String)>>;
        // Snapshots.
        fn snapshot_mounts(&self, snapshotter: &str, key: &str) -> Answer<Option<Vec<Mount>>>;
        fn new_snapshot(
            &self,
            kind: SnapshotKind,
            snapshotter: &str,
            key: &str,
            parent: &str,
            owner: &str,
            lease: &str,
        ) -> Answer<Vec<Mount>>;
        fn remove_snapshot(&self, snapshotter: &str, key: &str) -> Answer<()>;
        fn owned_snapshots(&self, snapshotter: &str, owner: &str) -> Answer<Vec<String>>;
        // Leases.
        fn create_lease(&self, id: &str, expire: Duration, owner: &str) -> Answer<String>;
        fn delete_lease(&self, id: &str) -> Answer<()>;
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
