//! A container's `linux.resources`: the CRI resources kubelet asks for, checked and mapped to
//! OCI's (at create, and for UpdateContainerResources on the live task).

use std::path::Path;

use crate::cri;
use oci_spec::runtime::{LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxResources};

use super::SpecError;

/// The OCI `linux.resources` for CRI resources (unset values left out).
pub fn linux_resources(res: &cri::LinuxContainerResources) -> LinuxResources {
    let mut cpu = LinuxCpu::default();
    let positive = |v: i64| (v > 0).then_some(v);
    let text = |s: &String| (!s.is_empty()).then(|| s.clone());
    cpu.set_shares(positive(res.cpu_shares).map(|v| v as u64))
        .set_quota(positive(res.cpu_quota))
        .set_period(positive(res.cpu_period).map(|v| v as u64))
        .set_cpus(text(&res.cpuset_cpus))
        .set_mems(text(&res.cpuset_mems));
    // As containerd: the swap limit kubelet asks for (NodeSwap), else memory plus swap limited
    // to the memory limit (no swap) where the host accounts swap.
    let swap = if res.memory_swap_limit_in_bytes != 0 {
        Some(res.memory_swap_limit_in_bytes)
    } else if res.memory_limit_in_bytes > 0 && swap_accounted() {
        Some(res.memory_limit_in_bytes)
    } else {
        None
    };
    let mut memory = LinuxMemory::default();
    memory
        .set_limit(positive(res.memory_limit_in_bytes))
        .set_swap(swap);
    let hugepages: Vec<LinuxHugepageLimit> = res
        .hugepage_limits
        .iter()
        .map(|h| {
            let mut l = LinuxHugepageLimit::default();
            // oci-spec's limit is signed: past i64::MAX is no limit anyway.
            l.set_page_size(h.page_size.clone())
                .set_limit(i64::try_from(h.limit).unwrap_or(i64::MAX));
            l
        })
        .collect();
    let mut resources = LinuxResources::default();
    resources
        .set_cpu((cpu != LinuxCpu::default()).then_some(cpu))
        .set_memory((memory != LinuxMemory::default()).then_some(memory))
        .set_hugepage_limits((!hugepages.is_empty()).then_some(hugepages))
        .set_unified((!res.unified.is_empty()).then(|| res.unified.clone()));
    resources
}

/// Whether the host's memory cgroup accounts swap (v1 `memory.memsw.*`, v2 `memory.swap.max`
/// files exist), so a swap limit can be set.
pub fn swap_accounted() -> bool {
    static ACCOUNTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ACCOUNTED.get_or_init(|| {
        Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
            || std::fs::read_dir("/sys/fs/cgroup")
                .map(|d| {
                    d.flatten()
                        .any(|e| e.path().join("memory.swap.max").exists())
                })
                .unwrap_or(false)
    })
}

/// Refuses resource values no kernel would take, naming the field.
pub fn check_resources(
    field: &'static str,
    r: &cri::LinuxContainerResources,
) -> Result<(), SpecError> {
    let negative = [
        ("cpu_period", r.cpu_period),
        ("cpu_shares", r.cpu_shares),
        ("memory_limit_in_bytes", r.memory_limit_in_bytes),
        ("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes),
    ];
    if let Some((name, v)) = negative.iter().find(|(_, v)| *v < 0) {
        return Err(SpecError::new(field, format!("{name} {v} is negative")));
    }
    if r.cpu_quota != 0 && r.cpu_quota != -1 && r.cpu_quota < 1000 {
        return Err(SpecError::new(
            field,
            format!("cpu_quota {} is below 1000 microseconds", r.cpu_quota),
        ));
    }
    if r.cpu_period != 0 && !(1000..=1_000_000).contains(&r.cpu_period) {
        return Err(SpecError::new(
            field,
            format!(
                "cpu_period {} is not 1000 to 1000000 microseconds",
                r.cpu_period
            ),
        ));
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(SpecError::new(
            field,
            format!("oom_score_adj {} is not -1000 to 1000", r.oom_score_adj),
        ));
    }
    Ok(())
}
