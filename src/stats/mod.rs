//! The stats collector: every `stats.interval_seconds` it reads the cgroup counters of each
//! running container and ready pod, each pod's network counters (from its pause process'
//! `/proc/<pid>/net/dev`, which shows the pod's network namespace) and takes the writable-layer
//! usage the snapshot syncer measured. ContainerStats, PodSandboxStats, their List forms and
//! ListPodSandboxMetrics answer from the last collection: no containerd round trip per call.
//!
//! CPU rates (`usage_nano_cores`) are the difference between two collections.
//!
//! A stats call never answers from a collection older than [`MAX_AGE`] or one that read an
//! older journal state than the caller's (which could miss a container that just started): then
//! it collects on demand (one collection at a time, shared by concurrent callers, every object
//! read in one pass, still no containerd round trip).

pub mod cgroup;
pub mod psi;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

pub use cgroup::{CgroupCounters, Cgroups};

use crate::config::CgroupDriver;
use crate::image::{FsUsage, Images};
use crate::journal::{JournalHandle, State};
use crate::metrics::Metrics;

/// One cgroup's counters at one collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// When read (ns since the epoch).
    pub at: i64,
    pub counters: CgroupCounters,
    /// CPU use since the previous collection, in billionths of a core.
    pub nano_cores: Option<u64>,
}

/// One network interface's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// A pod's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxUsage {
    pub cgroup: Option<Usage>,
    /// (when read, interfaces other than `lo`); None for host-network pods.
    pub network: Option<(i64, Vec<Interface>)>,
}

/// The last collection.
#[derive(Debug, Default)]
pub struct Collected {
    /// When it finished (ns since the epoch; 0: none yet).
    pub at: i64,
    /// The journal state it read (its sequence number): it saw every container that state
    /// shows running.
    pub seq: u64,
    /// Running containers by id.
    pub containers: HashMap<String, Usage>,
    /// Ready pods by id.
    pub sandboxes: HashMap<String, SandboxUsage>,
    /// The snapshot syncer's measurement (writable layers are its active snapshots).
    pub fs: Option<Arc<FsUsage>>,
}

impl Collected {
    /// Bytes and inodes of container `id`'s writable layer, with when and where measured.
    pub fn writable_layer(&self, id: &str) -> Option<(i64, &str, u64, u64)> {
        let fs = self.fs.as_ref()?;
        let (bytes, inodes) = fs.active.get(id)?;
        Some((fs.timestamp_nanos, fs.mountpoint.as_str(), *bytes, *inodes))
    }
}

/// Owns the last collection and the task that renews it.
pub struct Collector {
    journal: JournalHandle,
    images: Arc<Images>,
    cgroups: Cgroups,
    /// How the specs name cgroups (where each object's cgroup directory is).
    driver: CgroupDriver,
    proc_root: std::path::PathBuf,
    interval: Duration,
    metrics: Arc<Metrics>,
    last: RwLock<Arc<Collected>>,
    /// Held while a caller's on-demand collection runs, so concurrent callers share one.
    refreshing: tokio::sync::Mutex<()>,
}

/// The oldest collection a stats call answers from: callers such as `crictl stats` sample twice
/// a second apart and need a newer CPU timestamp the second time.
pub const MAX_AGE: Duration = Duration::from_millis(500);

/// Longest one collection may take before stats calls stop waiting for it.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Collector {
    pub fn new(
        journal: JournalHandle,
        images: Arc<Images>,
        interval: Duration,
        metrics: Arc<Metrics>,
        driver: CgroupDriver,
    ) -> Arc<Collector> {
        Arc::new(Collector {
            journal,
            images,
            cgroups: Cgroups::host(),
            driver,
            proc_root: "/proc".into(),
            interval,
            metrics,
            last: RwLock::new(Arc::new(Collected::default())),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// The last collection (never waits).
    pub fn last(&self) -> Arc<Collected> {
        self.last.read().clone()
    }

    /// A collection no older than [`MAX_AGE`] that read a journal state at least as new as
    /// `seq` (so it saw every container the caller's state shows running): the last one when
    /// it is, else one made now. Concurrent callers wait for the same collection.
    pub async fn fresh(&self, seq: u64) -> Arc<Collected> {
        let max_age = MAX_AGE.as_nanos() as i64;
        let good = |c: &Collected| c.seq >= seq && c.at >= crate::clock::now_nanos() - max_age;
        let last = self.last();
        if good(&last) {
            return last;
        }
        let _one = self.refreshing.lock().await;
        let last = self.last();
        if good(&last) {
            return last;
        }
        self.metrics.stats_on_demand.inc();
        self.collect().await;
        self.last()
    }

    /// Collects now and every interval until `stop`.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                // One collection at a time: an on-demand one is never overwritten by an older.
                let _one = this.refreshing.lock().await;
                this.collect().await;
            }
        })
    }

    /// One collection: the filesystem reads run on a blocking thread.
    pub async fn collect(&self) {
        let started = Instant::now();
        let state = self.journal.state();
        let prev = self.last();
        let cgroups = self.cgroups.clone();
        let driver = self.driver;
        let proc_root = self.proc_root.clone();
        let fs = self.images.fs_usage();
        let seq = state.seq;
        // Bounded: a cgroup or /proc read that hangs keeps the last collection, not every
        // stats RPC (the blocking thread finishes on its own).
        let joined = match tokio::time::timeout(
            COLLECT_TIMEOUT,
            tokio::task::spawn_blocking(move || {
                collect_from(&state, &prev, (&cgroups, driver), &proc_root, fs)
            }),
        )
        .await
        {
            Ok(j) => j.map(|(mut c, missing)| {
                c.seq = seq;
                (c, missing)
            }),
            Err(_) => {
                tracing::warn!(after = ?COLLECT_TIMEOUT, "stats collection did not finish");
                self.metrics
                    .stats_collections
                    .with_label_values(&["error"])
                    .inc();
                return;
            }
        };
        let (collected, missing) = match joined {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "stats collection failed");
                self.metrics
                    .stats_collections
                    .with_label_values(&["error"])
                    .inc();
                return;
            }
        };
        let m = &self.metrics;
        m.stats_collect_duration
            .observe(started.elapsed().as_secs_f64());
        m.stats_collections
            .with_label_values(&[if missing == 0 { "ok" } else { "partial" }])
            .inc();
        m.stats_objects
            .with_label_values(&["container"])
            .set(collected.containers.len() as i64);
        m.stats_objects
            .with_label_values(&["sandbox"])
            .set(collected.sandboxes.len() as i64);
        *self.last.write() = Arc::new(collected);
    }
}

/// Reads every running container's and ready pod's counters; answers them with the number of
/// objects whose cgroup could not be read (exited meanwhile).
fn collect_from(
    state: &State,
    prev: &Collected,
    (cgroups, driver): (&Cgroups, CgroupDriver),
    proc_root: &std::path::Path,
    fs: Option<Arc<FsUsage>>,
) -> (Collected, usize) {
    let mut missing = 0;
    let mut out = Collected {
        fs,
        ..Default::default()
    };
    let sample = |dir: Option<String>, before: Option<&Usage>| -> Option<Usage> {
        let counters = cgroups.read(&dir?)?;
        let at = crate::clock::now_nanos();
        Some(Usage {
            at,
            counters,
            nano_cores: before.and_then(|b| rate(b, at, counters.cpu_ns)),
        })
    };
    for c in state.containers.values() {
        if c.pid.is_none() || c.finished_at != 0 || c.started_at == 0 {
            continue;
        }
        let Some(sandbox) = state.sandboxes.get(&c.sandbox_id) else {
            continue;
        };
        match sample(
            sandbox.cgroup_dir_of(driver, &c.id),
            prev.containers.get(&c.id),
        ) {
            Some(u) => {
                out.containers.insert(c.id.clone(), u);
            }
            None => missing += 1,
        }
    }
    for s in state.sandboxes.values().filter(|s| s.ready()) {
        let before = prev.sandboxes.get(&s.id).and_then(|p| p.cgroup.as_ref());
        let pod_dir = s.pod_cgroup_dir(driver);
        let cgroup = if pod_dir.is_none() {
            // Pods share the default parent: the pod is its pause container plus its containers.
            let pause = s
                .cgroup_dir_of(driver, &s.id)
                .and_then(|d| cgroups.read(&d));
            let parts: Vec<CgroupCounters> = pause
                .into_iter()
                .chain(
                    state
                        .containers
                        .values()
                        .filter(|c| c.sandbox_id == s.id)
                        .filter_map(|c| out.containers.get(&c.id).map(|u| u.counters)),
                )
                .collect();
            CgroupCounters::sum(&parts).map(|counters| {
                let at = crate::clock::now_nanos();
                Usage {
                    at,
                    counters,
                    nano_cores: before.and_then(|b| rate(b, at, counters.cpu_ns)),
                }
            })
        } else {
            sample(pod_dir, before)
        };
        if cgroup.is_none() {
            missing += 1;
        }
        let network = match (own_network(s), s.pid) {
            (true, Some(pid)) => std::fs::read_to_string(proc_root.join(format!("{pid}/net/dev")))
                .ok()
                .map(|text| (crate::clock::now_nanos(), parse_net_dev(&text))),
            _ => None,
        };
        out.sandboxes
            .insert(s.id.clone(), SandboxUsage { cgroup, network });
    }
    out.at = crate::clock::now_nanos();
    (out, missing)
}

/// CPU rate between a previous sample and `cpu_ns` at `at`, in billionths of a core. None when
/// the counter went backwards (a new cgroup under the same name) or no time passed.
fn rate(before: &Usage, at: i64, cpu_ns: u64) -> Option<u64> {
    let dt = at.checked_sub(before.at).filter(|&d| d > 0)? as u128;
    let used = cpu_ns.checked_sub(before.counters.cpu_ns)? as u128;
    Some((used * 1_000_000_000 / dt) as u64)
}

/// Whether the pod has a network namespace of its own (not the node's).
fn own_network(s: &crate::journal::SandboxRecord) -> bool {
    s.config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|c| c.namespace_options.as_ref())
        .is_none_or(|o| o.network != crate::cri::NamespaceMode::Node as i32)
}

/// Interfaces (except `lo`) of a `/proc/<pid>/net/dev` table.
pub fn parse_net_dev(text: &str) -> Vec<Interface> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let n: Vec<u64> = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs ...
            (n.len() >= 11).then(|| Interface {
                name: name.to_string(),
                rx_bytes: n[0],
                rx_errors: n[2],
                tx_bytes: n[8],
                tx_errors: n[10],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_table_without_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    5000      40    2    0    0     0          0         0     7000      50    3    0    0     0       0          0\n";
        let ifs = parse_net_dev(text);
        assert_eq!(
            ifs,
            vec![Interface {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_errors: 2,
                tx_bytes: 7000,
                tx_errors: 3,
            }]
        );
    }

    #[test]
    fn cpu_rate_is_per_elapsed_time_and_skips_resets() {
        let before = Usage {
            at: 1_000_000_000,
            counters: CgroupCounters {
                cpu_ns: 500_000_000,
                ..Default::default()
            },
            nano_cores: None,
        };
        // 0.5 s of CPU in 2 s: a quarter of a core.
        assert_eq!(
            rate(&before, 3_000_000_000, 1_000_000_000),
            Some(250_000_000)
        );
        assert_eq!(rate(&before, 3_000_000_000, 1), None);
        assert_eq!(rate(&before, 1_000_000_000, 600_000_000), None);
    }
}
