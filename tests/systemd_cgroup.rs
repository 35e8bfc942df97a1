//! The systemd cgroup driver on a node whose PID 1 is systemd (hack/systemd-node.sh; the suite
//! runs there with CONCORD_TEST_CGROUP_DRIVER=systemd): containers in `cri-containerd-<id>.scope`
//! units of the pod's slice, their stats, UpdateContainerResources through runc's systemd
//! driver, OOM kills, and RunPodSandbox refusing a parent that is no slice. Elsewhere (cgroupfs
//! daemons) every test says SKIPPED and passes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{container_config, container_info, eventually, pod_config, pod_daemon, pull_ok};
use common::{container_status, pod_stats, remove_pod, run_pod, Daemon, Pod};
use concord::cri;

fn skipped(test: &str) -> bool {
    if common::systemd_driver() {
        return false;
    }
    eprintln!("SKIPPED {test}: needs CONCORD_TEST_CGROUP_DRIVER=systemd on a systemd node (hack/systemd-node.sh)");
    true
}

/// The kubelet's systemd form of a pod cgroup parent (the expanded path of the pod's slice, as
/// its systemd cgroup manager hands it), unique per test; and the slice's name.
fn kubelet_parent(name: &str) -> (String, String) {
    let uid = common::unique(name).replace('-', "_");
    let slice = format!("kubepods-burstable-pod{uid}.slice");
    (
        format!("/kubepods.slice/kubepods-burstable.slice/{slice}"),
        slice,
    )
}

async fn pod_in_slice(d: &Daemon, name: &str, parent: &str) -> Pod {
    pull_ok(d, "busybox").await;
    let mut config = pod_config(d, name);
    config.linux = Some(cri::LinuxPodSandboxConfig {
        cgroup_parent: parent.into(),
        ..Default::default()
    });
    Pod::run(d, config).await
}

/// `pid`'s cgroup in hierarchy `controller` (v1 `memory`..., `name=systemd`; "" for v2).
fn cgroup_of(pid: i64, controller: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .filter_map(|l| l.splitn(3, ':').collect::<Vec<_>>().try_into().ok())
        .find(|[_, c, _]: &[&str; 3]| c.split(',').any(|c| c == controller))
        .map(|[_, _, path]| path.to_string())
        .unwrap_or_else(|| panic!("no {controller:?} cgroup for {pid}: {text}"))
}

/// The memory limit file of cgroup directory `dir` (v1 under `memory/`, else v2).
fn memory_limit(dir: &str) -> String {
    let rel = dir.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    let path = if root.join("memory").is_dir() {
        root.join("memory").join(rel).join("memory.limit_in_bytes")
    } else {
        root.join(rel).join("memory.max")
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .into()
}

fn with_memory(mut c: cri::ContainerConfig, bytes: i64) -> cri::ContainerConfig {
    c.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: bytes,
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_in_scopes_of_the_pod_slice_with_stats_and_updates() {
    if skipped("containers_run_in_scopes_of_the_pod_slice_with_stats_and_updates") {
        return;
    }
    let d = pod_daemon(&["--stats-interval-seconds=1"]).await;
    let (parent, _) = kubelet_parent("sd");
    let p = pod_in_slice(&d, "sd", &parent).await;
    let busy = container_config("busy", "busybox", &["sh", "-c", "while :; do :; done"]);
    let id = p.run_container(&d, with_memory(busy, 64 << 20)).await;
    let pid = container_info(&d, &id).await["pid"].as_i64().unwrap();

    // The scope runc's systemd driver made, in the kubelet's slice, in every hierarchy.
    let scope = format!("{parent}/cri-containerd-{id}.scope");
    for controller in ["name=systemd", "memory", "cpu", "pids"] {
        assert_eq!(cgroup_of(pid, controller), scope, "{controller}");
    }
    println!("container {id} runs in {scope}");
    assert_eq!(memory_limit(&scope), (64u64 << 20).to_string());

    // Stats read the scope's and the slice's counters.
    let mut rt = d.runtime().await;
    eventually(Duration::from_secs(20), "nonzero container stats", || {
        let mut rt = rt.clone();
        let id = id.clone();
        async move {
            let s = rt
                .container_stats(cri::ContainerStatsRequest { container_id: id })
                .await
                .unwrap()
                .into_inner()
                .stats
                .unwrap();
            let cpu = s
                .cpu
                .and_then(|c| c.usage_core_nano_seconds)
                .map(|v| v.value);
            let mem = s.memory.and_then(|m| m.working_set_bytes).map(|v| v.value);
            cpu.unwrap_or(0) > 0 && mem.unwrap_or(0) > 0
        }
    })
    .await;
    let pod = pod_stats(&d, &p.id).await;
    let pod_cpu = pod.cpu.unwrap().usage_core_nano_seconds.unwrap().value;
    assert!(pod_cpu > 0, "pod cpu {pod_cpu}");
    println!("pod {} cpu {pod_cpu} ns", p.id);

    // UpdateContainerResources: runc updates the scope (systemd's property and the cgroup).
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 100 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(memory_limit(&scope), (100u64 << 20).to_string());
    remove_pod(&d, &p.id).await;
    // The scopes are gone with their processes.
    assert!(!Path::new("/sys/fs/cgroup/systemd")
        .join(scope.trim_start_matches('/'))
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_in_a_scope_is_reported_as_oomkilled() {
    if skipped("an_oom_kill_in_a_scope_is_reported_as_oomkilled") {
        return;
    }
    let d = pod_daemon(&[]).await;
    let (parent, _) = kubelet_parent("sdoom");
    let p = pod_in_slice(&d, "sdoom", &parent).await;
    let hog = container_config(
        "hog",
        "busybox",
        &["sh", "-c", "dd if=/dev/zero of=/dev/null bs=200M count=1"],
    );
    let id = p.run_container(&d, with_memory(hog, 32 << 20)).await;
    eventually(Duration::from_secs(30), "the hog exits", || {
        let (d, id) = (&d, id.clone());
        async move {
            container_status(d, &id).await.state == cri::ContainerState::ContainerExited as i32
        }
    })
    .await;
    let status = container_status(&d, &id).await;
    assert_eq!(status.exit_code, 137, "{status:?}");
    assert_eq!(status.reason, "OOMKilled", "{status:?}");
    remove_pod(&d, &p.id).await;
}

#[tokio::test]
async fn a_parent_that_is_no_slice_is_refused_naming_the_field() {
    if skipped("a_parent_that_is_no_slice_is_refused_naming_the_field") {
        return;
    }
    let d = pod_daemon(&[]).await;
    for bad in ["/kubepods/burstable/pod1", "kubepods--pod1.slice"] {
        let mut config = pod_config(&d, "sdbad");
        config.linux = Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: bad.into(),
            ..Default::default()
        });
        let err = run_pod(&d, &config).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("cgroup_parent"), "{}", err.message());
    }
}
