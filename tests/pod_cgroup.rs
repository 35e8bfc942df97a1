//! Pods with a cgroup parent of their own, on the real node: pressure stall information in
//! container and pod stats, and UpdatePodSandboxResources writing the pod's cgroup.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    container_config, eventually, pod_config, pod_daemon, pod_info, pod_stats, pull_ok, remove_pod,
    Daemon, Pod,
};
use concord::cri;

const ROOT: &str = "/sys/fs/cgroup";

fn unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// Where the host keeps cgroup v2 files (pressure): the root, a hybrid host's `unified` mount,
/// or nowhere.
fn v2_root() -> Option<PathBuf> {
    if unified() {
        Some(ROOT.into())
    } else {
        let hybrid = Path::new(ROOT).join("unified");
        hybrid.join("cgroup.controllers").exists().then_some(hybrid)
    }
}

/// Whether the host shows `file` (cpu.pressure ...) for cgroup `path`.
fn has_pressure(path: &str, file: &str) -> bool {
    v2_root().is_some_and(|r| {
        std::fs::read_to_string(r.join(path.trim_start_matches('/')).join(file)).is_ok()
    })
}

/// A running pod whose config names a cgroup parent of its own (`/concord-test/<unique>`, or a
/// slice under the systemd driver); answers the pod, the parent and its cgroupfs directory.
async fn pod_with_parent(d: &Daemon, name: &str) -> (Pod, String, String) {
    pull_ok(d, "busybox").await;
    let (parent, dir) = common::unique_cgroup_parent(name);
    let mut config = pod_config(d, name);
    config.linux = Some(cri::LinuxPodSandboxConfig {
        cgroup_parent: parent.clone(),
        ..Default::default()
    });
    (Pod::run(d, config).await, parent, dir)
}

/// Removes the pod and its (now empty) parent cgroup directory `dir` in every hierarchy
/// (systemd's slices are its own to remove).
async fn remove_with_parent(d: &Daemon, p: &Pod, dir: &str) {
    remove_pod(d, &p.id).await;
    if common::systemd_driver() {
        return;
    }
    let rel = dir.trim_start_matches('/');
    let dirs: Vec<PathBuf> = std::fs::read_dir(ROOT)
        .map(|it| it.flatten().map(|e| e.path().join(rel)).collect())
        .unwrap_or_default();
    for dir in dirs.into_iter().chain([Path::new(ROOT).join(rel)]) {
        let _ = std::fs::remove_dir(dir);
    }
}

fn check_psi(what: &str, psi: &cri::PsiStats) {
    let some = psi
        .some
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no some line"));
    for d in [Some(some), psi.full.as_ref()].into_iter().flatten() {
        for avg in [d.avg10, d.avg60, d.avg300] {
            assert!((0.0..=100.0).contains(&avg), "{what}: {psi:?}");
        }
    }
    if let Some(full) = &psi.full {
        assert!(
            full.total <= some.total,
            "{what}: full beyond some: {psi:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressure_shows_in_container_and_pod_stats_where_the_host_has_it() {
    let d = pod_daemon(&["--stats-interval-seconds=1"]).await;
    let (p, parent, pod_dir) = pod_with_parent(&d, "psi").await;
    let c = p
        .run_container(
            &d,
            container_config("busy", "busybox", &["sh", "-c", "while :; do :; done"]),
        )
        .await;
    let path = common::cgroup_dir_of(&parent, &c);
    let rt = d.runtime().await;
    let stats_of = |id: String| {
        let mut rt = rt.clone();
        async move {
            rt.container_stats(cri::ContainerStatsRequest { container_id: id })
                .await
                .unwrap()
                .into_inner()
                .stats
                .unwrap()
        }
    };
    eventually(Duration::from_secs(20), "container cpu stats", || async {
        stats_of(c.clone())
            .await
            .cpu
            .is_some_and(|c| c.usage_core_nano_seconds.is_some_and(|v| v.value > 0))
    })
    .await;
    let s = stats_of(c.clone()).await;
    let (cpu, memory) = (s.cpu.unwrap(), s.memory.unwrap());
    // Present exactly where the host has the file; never zeros standing in for "unknown".
    assert_eq!(
        cpu.psi.is_some(),
        has_pressure(&path, "cpu.pressure"),
        "{cpu:?}"
    );
    assert_eq!(memory.psi.is_some(), has_pressure(&path, "memory.pressure"));
    assert_eq!(
        s.io.is_some(),
        has_pressure(&path, "io.pressure"),
        "{:?}",
        s.io
    );
    if let Some(psi) = &cpu.psi {
        check_psi("container cpu", psi);
    }
    if let Some(io) = &s.io {
        assert!(io.timestamp > 0);
        check_psi("container io", io.psi.as_ref().unwrap());
    }
    println!(
        "host pressure files: {}; container cpu psi: {:?}",
        v2_root().is_some(),
        cpu.psi
    );

    // The pod: its own cgroup parent's pressure.
    let pod = pod_stats(&d, &p.id).await;
    let pod_cpu = pod.cpu.unwrap();
    assert_eq!(
        pod_cpu.psi.is_some(),
        has_pressure(&pod_dir, "cpu.pressure")
    );
    assert_eq!(pod.io.is_some(), has_pressure(&pod_dir, "io.pressure"));
    if let Some(psi) = &pod_cpu.psi {
        check_psi("pod cpu", psi);
        // The busy loop competes for two cores with everything else on the node: the pod
        // waited at some point, and its cgroup counts it since creation.
    }
    remove_with_parent(&d, &p, &pod_dir).await;
}

/// A cgroup file of the pod's cgroup: `v1` under its controller, else `v2` at the unified root.
fn pod_file(parent: &str, controller: &str, v1: &str, v2: &str) -> String {
    let rel = parent.trim_start_matches('/');
    let path = if unified() {
        Path::new(ROOT).join(rel).join(v2)
    } else {
        Path::new(ROOT).join(controller).join(rel).join(v1)
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

fn resources(shares: i64, quota: i64, memory: i64) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_shares: shares,
        cpu_quota: quota,
        cpu_period: if quota != 0 { 100_000 } else { 0 },
        memory_limit_in_bytes: memory,
        ..Default::default()
    }
}

#[tokio::test]
async fn pod_resources_reach_the_pod_cgroup_and_the_status() {
    let d = pod_daemon(&[]).await;
    let (p, _, parent) = pod_with_parent(&d, "resize").await;
    let mut rt = d.runtime().await;
    let update = |id: &str, overhead, resources| cri::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: id.into(),
        overhead,
        resources,
    };
    rt.update_pod_sandbox_resources(update(
        &p.id,
        Some(resources(12, 0, 1 << 20)),
        Some(resources(300, 50_000, 256 << 20)),
    ))
    .await
    .unwrap();
    // The sum plus the overhead, as the kubelet sizes the pod cgroup.
    if unified() {
        assert_eq!(pod_file(&parent, "cpu", "", "cpu.max"), "50000 100000");
    } else {
        assert_eq!(pod_file(&parent, "cpu", "cpu.shares", ""), "312");
        assert_eq!(pod_file(&parent, "cpu", "cpu.cfs_quota_us", ""), "50000");
    }
    assert_eq!(
        pod_file(&parent, "memory", "memory.limit_in_bytes", "memory.max"),
        ((257u64) << 20).to_string()
    );
    // The status shows the new resources.
    let info = pod_info(&d, &p.id).await;
    let linux = &info["config"]["linux"];
    assert_eq!(linux["resources"]["cpu_shares"], 300, "{info}");
    assert_eq!(
        linux["overhead"]["memory_limit_in_bytes"],
        1 << 20,
        "{info}"
    );
    let desired = &info["reconcile"]["desired"];
    assert_eq!(desired["resources"]["cpu_quota"], 50_000, "{info}");
    assert!(
        info["reconcile"]["observed"]["podCgroup"]["written"].is_array(),
        "{info}"
    );

    // Unknown pod: NotFound. Bad values: InvalidArgument naming the field, nothing recorded.
    let err = rt
        .update_pod_sandbox_resources(update("no-such-pod", None, Some(resources(2, 0, 0))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = rt
        .update_pod_sandbox_resources(update(&p.id, None, Some(resources(2, 5, 0))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("resources"), "{}", err.message());
    let err = rt
        .update_pod_sandbox_resources(update(&p.id, Some(resources(0, 0, -1)), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("overhead"), "{}", err.message());
    assert_eq!(
        pod_file(&parent, "memory", "memory.limit_in_bytes", "memory.max"),
        ((257u64) << 20).to_string()
    );
    remove_with_parent(&d, &p, &parent).await;
}

#[tokio::test]
async fn pod_resources_of_a_pod_without_its_own_cgroup_are_recorded_only() {
    let d = pod_daemon(&[]).await;
    let p = common::pod(&d, "resize-shared").await;
    let mut rt = d.runtime().await;
    rt.update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: p.id.clone(),
        overhead: None,
        resources: Some(resources(100, 0, 0)),
    })
    .await
    .unwrap();
    let info = pod_info(&d, &p.id).await;
    assert_eq!(
        info["config"]["linux"]["resources"]["cpu_shares"], 100,
        "{info}"
    );
    remove_pod(&d, &p.id).await;
}
