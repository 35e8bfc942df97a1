//! Pod networking: the CNI network config concord uses and the runtime values (pod CIDR) given to
//! every CNI call. The conf dir is rescanned when it changes (inotify) and periodically, so a
//! config that appears later makes the network ready (Status' NetworkReady) and a changed one is
//! used by the next pod.

pub mod bandwidth;
pub mod capabilities;
pub mod cni;
mod cni_config;
mod conf_watch;
pub mod netns;

pub use cni_config::{find_plugin, load_network, CniNetwork, LoadError};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::CniConfig;
use crate::metrics::Metrics;

/// The network readiness Status reports.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkStatus {
    /// A usable network config is loaded.
    Ready(CniNetwork),
    /// None is; the message says why.
    NotReady(String),
}

/// CNI state shared by the API and the loop.
pub struct Network {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    status: watch::Sender<NetworkStatus>,
    pod_cidr: RwLock<String>,
    metrics: Arc<Metrics>,
}

impl Network {
    /// Loads the conf dir once.
    pub fn new(config: &CniConfig, metrics: Arc<Metrics>) -> Arc<Network> {
        let network = Arc::new(Network {
            conf_dir: config.conf_dir.clone(),
            bin_dirs: config.bin_dirs.clone(),
            status: watch::channel(NetworkStatus::NotReady("not loaded yet".into())).0,
            pod_cidr: RwLock::new(String::new()),
            metrics,
        });
        network.rescan();
        network
    }

    /// Reads the conf dir again; logs and publishes a change.
    pub fn rescan(&self) {
        let next = match load_network(&self.conf_dir, &self.bin_dirs) {
            Ok(net) => NetworkStatus::Ready(net),
            Err(e) => NetworkStatus::NotReady(e.to_string()),
        };
        self.metrics
            .network_ready
            .set(matches!(next, NetworkStatus::Ready(_)) as i64);
        self.status.send_if_modified(|cur| {
            if *cur == next {
                return false;
            }
            match &next {
                NetworkStatus::Ready(n) => tracing::info!(
                    network = %n.name, file = %n.file.display(), plugins = ?n.plugin_types(),
                    "CNI network config loaded"
                ),
                NetworkStatus::NotReady(m) => tracing::warn!(reason = %m, "CNI network not ready"),
            }
            *cur = next;
            true
        });
    }

    /// Rescans when the conf dir changes (inotify) and every `interval`, until shutdown.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut changes = conf_watch::ConfDirChanges::new(&this.conf_dir);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(interval) => changes.rewatch(&this.conf_dir),
                }
                let n = this.clone();
                let _ = tokio::task::spawn_blocking(move || n.rescan()).await;
            }
        })
    }

    /// Current readiness.
    pub fn status(&self) -> NetworkStatus {
        self.status.borrow().clone()
    }

    /// The pod CIDR CNI calls are given ("" when none).
    pub fn pod_cidr(&self) -> String {
        self.pod_cidr.read().clone()
    }

    /// Sets the pod CIDR for later CNI calls (the runtime-config reconciler's job).
    pub fn set_pod_cidr(&self, cidr: &str) {
        *self.pod_cidr.write() = cidr.to_string();
    }
}
