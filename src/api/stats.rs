//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats,
//! ListMetricDescriptors and ListPodSandboxMetrics: answered from the stats collector's last
//! collection and the journal's state, never from a round trip per object.

use crate::cri;

use super::container_status::selected;
use super::{ApiError, Server};
use crate::journal::{ContainerRecord, SandboxRecord, State};
use crate::stats::psi::{Pressure, PsiLine};
use crate::stats::{Collected, Usage};

fn u64v(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

impl Server {
    pub async fn container_stats(
        &self,
        req: cri::ContainerStatsRequest,
    ) -> Result<cri::ContainerStatsResponse, ApiError> {
        let (state, id) = self.known_container(&req.container_id)?;
        let last = self.stats.fresh(state.seq).await;
        Ok(cri::ContainerStatsResponse {
            stats: Some(container_stats(&state.containers[&id], &last)),
        })
    }

    pub async fn list_container_stats(
        &self,
        req: cri::ListContainerStatsRequest,
    ) -> Result<cri::ListContainerStatsResponse, ApiError> {
        let state = self.journal.state();
        let f = req.filter.unwrap_or_default();
        let chosen: Vec<&ContainerRecord> = state
            .containers
            .values()
            .map(|c| &**c)
            .filter(|c| selected(c, &f.id, &f.pod_sandbox_id, &f.label_selector))
            .collect();
        let last = self.stats.fresh(state.seq).await;
        let stats = chosen.iter().map(|c| container_stats(c, &last)).collect();
        Ok(cri::ListContainerStatsResponse { stats })
    }

    pub async fn pod_sandbox_stats(
        &self,
        req: cri::PodSandboxStatsRequest,
    ) -> Result<cri::PodSandboxStatsResponse, ApiError> {
        let state = self.journal.state();
        let id = super::resolve_id(
            &state.sandboxes,
            &req.pod_sandbox_id,
            "pod_sandbox_id",
            "sandbox",
        )?
        .ok_or_else(|| ApiError::NotFound {
            kind: "sandbox",
            id: req.pod_sandbox_id.clone(),
        })?;
        let s = &state.sandboxes[&id];
        if !s.ready() {
            return Err(ApiError::FailedPrecondition(format!(
                "pod sandbox {id} is not ready: a stopped pod has no stats"
            )));
        }
        let last = self.stats.fresh(state.seq).await;
        Ok(cri::PodSandboxStatsResponse {
            stats: Some(sandbox_stats(s, &state, &last)),
        })
    }

    pub async fn list_pod_sandbox_stats(
        &self,
        req: cri::ListPodSandboxStatsRequest,
    ) -> Result<cri::ListPodSandboxStatsResponse, ApiError> {
        let state = self.journal.state();
        let last = self.stats.fresh(state.seq).await;
        let f = req.filter.unwrap_or_default();
        let stats = state
            .sandboxes
            .values()
            .filter(|s| s.ready())
            .filter(|s| f.id.is_empty() || s.id.starts_with(&f.id))
            .filter(|s| {
                f.label_selector
                    .iter()
                    .all(|(k, v)| s.config.labels.get(k) == Some(v))
            })
            .map(|s| sandbox_stats(s, &state, &last))
            .collect();
        Ok(cri::ListPodSandboxStatsResponse { stats })
    }

    pub async fn list_metric_descriptors(
        &self,
        _req: cri::ListMetricDescriptorsRequest,
    ) -> Result<cri::ListMetricDescriptorsResponse, ApiError> {
        let descriptors = METRICS
            .iter()
            .map(|m| cri::MetricDescriptor {
                name: m.name.into(),
                help: m.help.into(),
                label_keys: labels_of(m).iter().map(|l| l.to_string()).collect(),
            })
            .collect();
        Ok(cri::ListMetricDescriptorsResponse { descriptors })
    }

    pub async fn list_pod_sandbox_metrics(
        &self,
        _req: cri::ListPodSandboxMetricsRequest,
    ) -> Result<cri::ListPodSandboxMetricsResponse, ApiError> {
        let state = self.journal.state();
        let last = self.stats.fresh(state.seq).await;
        let pod_metrics = state
            .sandboxes
            .values()
            .filter(|s| s.ready())
            .map(|s| sandbox_metrics(s, &state, &last))
            .collect();
        Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
    }
}

/// A pressure file as CRI wants it: totals in nanoseconds, averages in percent.
fn psi(p: &Pressure) -> cri::PsiStats {
    let data = |l: &PsiLine| cri::PsiData {
        total: l.total_us.saturating_mul(1000),
        avg10: f64::from(l.avg10) / 100.0,
        avg60: f64::from(l.avg60) / 100.0,
        avg300: f64::from(l.avg300) / 100.0,
    };
    cri::PsiStats {
        full: p.full.as_ref().map(data),
        some: Some(data(&p.some)),
    }
}

/// IO usage: only its pressure exists in CRI, so it is absent without one (as containerd).
fn io(u: &Usage) -> Option<cri::IoUsage> {
    u.counters.io_psi.as_ref().map(|p| cri::IoUsage {
        timestamp: u.at,
        psi: Some(psi(p)),
    })
}

fn cpu(u: &Usage) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: u.at,
        usage_core_nano_seconds: u64v(u.counters.cpu_ns),
        // The first sample of a container has no rate yet: 0, as containerd.
        usage_nano_cores: u64v(u.nano_cores.unwrap_or(0)),
        psi: u.counters.cpu_psi.as_ref().map(psi),
    }
}

fn memory(u: &Usage) -> cri::MemoryUsage {
    let c = &u.counters;
    cri::MemoryUsage {
        timestamp: u.at,
        working_set_bytes: u64v(c.working_set),
        // No limit: 0, as containerd.
        available_bytes: u64v(
            c.memory_limit
                .map(|l| l.saturating_sub(c.working_set))
                .unwrap_or(0),
        ),
        usage_bytes: u64v(c.memory_usage),
        rss_bytes: u64v(c.rss),
        page_faults: u64v(c.page_faults),
        major_page_faults: u64v(c.major_page_faults),
        psi: c.memory_psi.as_ref().map(psi),
    }
}

/// A container's stats: attributes always, CPU and memory while it runs, its writable layer
/// once the snapshot syncer measured it.
fn container_stats(c: &ContainerRecord, last: &Collected) -> cri::ContainerStats {
    // A sample taken before the container exited is not its usage any more.
    let usage = last
        .containers
        .get(&c.id)
        .filter(|_| c.cri_state() == cri::ContainerState::ContainerRunning);
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        }),
        cpu: usage.map(cpu),
        memory: usage.map(memory),
        writable_layer: last
            .writable_layer(&c.id)
            .map(|(at, mountpoint, bytes, inodes)| cri::FilesystemUsage {
                timestamp: at,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: mountpoint.to_string(),
                }),
                used_bytes: u64v(bytes),
                inodes_used: u64v(inodes),
            }),
        swap: None,
        io: usage.and_then(io),
    }
}

fn sandbox_stats(s: &SandboxRecord, state: &State, last: &Collected) -> cri::PodSandboxStats {
    let usage = last.sandboxes.get(&s.id);
    let cgroup = usage.and_then(|u| u.cgroup.as_ref());
    let network = usage.and_then(|u| u.network.as_ref()).map(|(at, ifs)| {
        let to_cri = |i: &crate::stats::Interface| cri::NetworkInterfaceUsage {
            name: i.name.clone(),
            rx_bytes: u64v(i.rx_bytes),
            rx_errors: u64v(i.rx_errors),
            tx_bytes: u64v(i.tx_bytes),
            tx_errors: u64v(i.tx_errors),
        };
        cri::NetworkUsage {
            timestamp: *at,
            default_interface: ifs
                .iter()
                .find(|i| i.name == DEFAULT_INTERFACE)
                .or(ifs.first())
                .map(to_cri),
            interfaces: ifs.iter().map(to_cri).collect(),
        }
    });
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: s.id.clone(),
            metadata: s.config.metadata.clone(),
            labels: s.config.labels.clone(),
            annotations: s.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: cgroup.map(cpu),
            memory: cgroup.map(memory),
            network,
            process: cgroup.and_then(|u| {
                u.counters.pids.map(|n| cri::ProcessUsage {
                    timestamp: u.at,
                    process_count: u64v(n),
                })
            }),
            containers: pod_containers(s, state)
                .map(|c| container_stats(c, last))
                .collect(),
            io: cgroup.and_then(io),
        }),
        windows: None,
    }
}

/// The interface CNI names the pod's primary one.
const DEFAULT_INTERFACE: &str = "eth0";

fn pod_containers<'a>(
    s: &'a SandboxRecord,
    state: &'a State,
) -> impl Iterator<Item = &'a ContainerRecord> {
    state
        .containers
        .values()
        .map(|c| &**c)
        .filter(move |c| c.sandbox_id == s.id)
        .filter(|c| c.cri_state() != cri::ContainerState::ContainerUnknown)
}

/// One metric ListPodSandboxMetrics reports (cAdvisor's names, so dashboards keep working).
struct MetricDef {
    name: &'static str,
    help: &'static str,
    counter: bool,
    /// Per network interface (an extra `interface` label), pod level only.
    network: bool,
    value: fn(&Usage) -> Option<u64>,
    net_value: fn(&crate::stats::Interface) -> u64,
}

const LABELS: &[&str] = &["container", "id", "image", "namespace", "pod"];
const NET_LABELS: &[&str] = &["container", "id", "image", "namespace", "pod", "interface"];

fn labels_of(m: &MetricDef) -> &'static [&'static str] {
    if m.network {
        NET_LABELS
    } else {
        LABELS
    }
}

const METRICS: &[MetricDef] = &[
    MetricDef {
        name: "container_cpu_usage_seconds_total",
        help: "Cumulative cpu time consumed in seconds.",
        counter: true,
        network: false,
        value: |u| Some(u.counters.cpu_ns / 1_000_000_000),
        net_value: |_| 0,
    },
    MetricDef {
        name: "container_memory_usage_bytes",
        help: "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        counter: false,
        network: false,
        value: |u| Some(u.counters.memory_usage),
        net_value: |_| 0,
    },
    MetricDef {
        name: "container_memory_working_set_bytes",
        help: "Current working set in bytes.",
        counter: false,
        network: false,
        value: |u| Some(u.counters.working_set),
        net_value: |_| 0,
    },
    MetricDef {
        name: "container_memory_rss",
        help: "Size of RSS in bytes.",
        counter: false,
        network: false,
        value: |u| Some(u.counters.rss),
        net_value: |_| 0,
    },
    MetricDef {
        name: "container_spec_memory_limit_bytes",
        help: "Memory limit for the container.",
        counter: false,
        network: false,
        value: |u| u.counters.memory_limit,
        net_value: |_| 0,
    },
    MetricDef {
        name: "container_network_receive_bytes_total",
        help: "Cumulative count of bytes received.",
        counter: true,
        network: true,
        value: |_| None,
        net_value: |i| i.rx_bytes,
    },
    MetricDef {
        name: "container_network_receive_errors_total",
        help: "Cumulative count of errors encountered while receiving.",
        counter: true,
        network: true,
        value: |_| None,
        net_value: |i| i.rx_errors,
    },
    MetricDef {
        name: "container_network_transmit_bytes_total",
        help: "Cumulative count of bytes transmitted.",
        counter: true,
        network: true,
        value: |_| None,
        net_value: |i| i.tx_bytes,
    },
    MetricDef {
        name: "container_network_transmit_errors_total",
        help: "Cumulative count of errors encountered while transmitting.",
        counter: true,
        network: true,
        value: |_| None,
        net_value: |i| i.tx_errors,
    },
];

fn metric(m: &MetricDef, at: i64, labels: Vec<String>, value: u64) -> cri::Metric {
    cri::Metric {
        name: m.name.into(),
        timestamp: at,
        metric_type: if m.counter {
            cri::MetricType::Counter
        } else {
            cri::MetricType::Gauge
        } as i32,
        label_values: labels,
        value: u64v(value),
    }
}

fn sandbox_metrics(s: &SandboxRecord, state: &State, last: &Collected) -> cri::PodSandboxMetrics {
    let (namespace, pod) = s
        .config
        .metadata
        .as_ref()
        .map(|m| (m.namespace.clone(), m.name.clone()))
        .unwrap_or_default();
    let base = |container: &str, id: &str, image: &str| {
        vec![
            container.to_string(),
            id.to_string(),
            image.to_string(),
            namespace.clone(),
            pod.clone(),
        ]
    };
    let usage = last.sandboxes.get(&s.id);
    let mut metrics = Vec::new();
    for m in METRICS {
        if m.network {
            if let Some((at, ifs)) = usage.and_then(|u| u.network.as_ref()) {
                for i in ifs {
                    let mut labels = base("POD", &s.id, "");
                    labels.push(i.name.clone());
                    metrics.push(metric(m, *at, labels, (m.net_value)(i)));
                }
            }
        } else if let Some(u) = usage.and_then(|u| u.cgroup.as_ref()) {
            if let Some(v) = (m.value)(u) {
                metrics.push(metric(m, u.at, base("POD", &s.id, ""), v));
            }
        }
    }
    let container_metrics = pod_containers(s, state)
        .map(|c| {
            let name = c
                .config
                .metadata
                .as_ref()
                .map(|m| m.name.as_str())
                .unwrap_or("");
            let metrics = last
                .containers
                .get(&c.id)
                .filter(|_| c.cri_state() == cri::ContainerState::ContainerRunning)
                .map(|u| {
                    METRICS
                        .iter()
                        .filter(|m| !m.network)
                        .filter_map(|m| {
                            (m.value)(u)
                                .map(|v| metric(m, u.at, base(name, &c.id, &c.image_name), v))
                        })
                        .collect()
                })
                .unwrap_or_default();
            cri::ContainerMetrics {
                container_id: c.id.clone(),
                metrics,
            }
        })
        .collect();
    cri::PodSandboxMetrics {
        pod_sandbox_id: s.id.clone(),
        metrics,
        container_metrics,
    }
}
