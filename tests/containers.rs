//! Containers with the real containerd, runc and the locally built busybox image: create,
//! start, logs in the CRI format (kept flowing across a concord kill), exit codes, stop with a
//! grace period, a failed start, log reopen, remove, bad input.

mod common;

use std::time::Duration;

use common::{eventually, Daemon};
use k8s_cri::v1 as cri;

async fn daemon() -> Daemon {
    let mut d = Daemon::new();
    d.extra.push(format!(
        "--registry-config-path={}",
        std::env::var("CONCORD_TEST_HOSTS_DIR")
            .unwrap_or_else(|_| "/tmp/rig/containerd/certs.d".into())
    ));
    d.extra
        .push(format!("--netns-dir={}", d.dir.join("netns").display()));
    d.start().await;
    d
}

fn pod_config(d: &Daemon, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: d.dir.join("logs").join(name).display().to_string(),
        ..Default::default()
    }
}

fn container_config(name: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        labels: [("app".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

struct Pod {
    id: String,
    config: cri::PodSandboxConfig,
}

async fn pod(d: &Daemon, name: &str) -> Pod {
    pull(d, "busybox").await;
    let config = pod_config(d, name);
    let id = d
        .runtime()
        .await
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    Pod { id, config }
}

async fn create(d: &Daemon, p: &Pod, c: cri::ContainerConfig) -> Result<String, tonic::Status> {
    d.runtime()
        .await
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: p.id.clone(),
            config: Some(c),
            sandbox_config: Some(p.config.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

async fn start(d: &Daemon, id: &str) -> Result<(), tonic::Status> {
    d.runtime()
        .await
        .start_container(cri::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .map(|_| ())
}

async fn status(d: &Daemon, id: &str) -> cri::ContainerStatus {
    d.runtime()
        .await
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
}

/// A cgroup file of process `pid`: `v1_file` under the v1 `controller` hierarchy, or `v2_file`
/// under the unified one.
fn cgroup_value(pid: i64, controller: &str, v1_file: &str, v2_file: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let path = path.trim_start_matches('/');
        let file = if ctrls.split(',').any(|c| c == controller) {
            std::path::Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(path)
                .join(v1_file)
        } else if ctrls.is_empty()
            && std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        {
            std::path::Path::new("/sys/fs/cgroup")
                .join(path)
                .join(v2_file)
        } else {
            continue;
        };
        return std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .to_string();
    }
    panic!("no {controller} cgroup for {pid}: {cgroups}");
}

/// The container's process id, from the verbose status.
async fn container_pid(d: &Daemon, id: &str) -> i64 {
    let r = d
        .runtime()
        .await
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&r.info["info"]).unwrap();
    info["pid"].as_i64().unwrap()
}

/// The (stream, tag, content) of every entry in a CRI log file.
fn entries(path: &std::path::Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let p: Vec<&str> = l.splitn(4, ' ').collect();
            assert!(p[0].ends_with('Z'), "timestamp: {l}");
            (
                p[1].to_string(),
                p[2].to_string(),
                p.get(3).unwrap_or(&"").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_logs_survives_a_concord_kill_stops_and_is_removed() {
    let mut d = daemon().await;
    let p = pod(&d, "web").await;
    let id = create(
        &d,
        &p,
        container_config(
            "counter",
            "trap '' TERM; echo started; echo to-stderr >&2; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done",
        ),
    )
    .await
    .unwrap();
    let s = status(&d, &id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerCreated as i32);
    assert_eq!(s.image.unwrap().image, "busybox");
    assert!(s.image_ref.starts_with("sha256:"));
    start(&d, &id).await.unwrap();
    let s = status(&d, &id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    assert!(s.started_at > 0);
    let log = std::path::PathBuf::from(&s.log_path);
    assert_eq!(log, d.dir.join("logs/web/counter.log"));
    eventually(
        Duration::from_secs(10),
        "the first lines logged",
        || async { entries(&log).len() >= 5 },
    )
    .await;
    let e = entries(&log);
    assert!(
        e.contains(&("stdout".into(), "F".into(), "started".into())),
        "{e:?}"
    );
    assert!(
        e.contains(&("stderr".into(), "F".into(), "to-stderr".into())),
        "{e:?}"
    );

    // ExecSync: output, exit code; a command past its timeout is killed: DeadlineExceeded.
    let r = d
        .runtime()
        .await
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 7".into(),
            ],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 7)
    );
    let started = std::time::Instant::now();
    let err = d
        .runtime()
        .await
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::DeadlineExceeded,
        "{}",
        err.message()
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // UpdateContainerResources reaches the running task's cgroup and the status.
    let pid = container_pid(&d, &id).await;
    let limits = cri::LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        ..Default::default()
    };
    d.runtime()
        .await
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(limits.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        cgroup_value(pid, "memory", "memory.limit_in_bytes", "memory.max"),
        (64u64 << 20).to_string()
    );
    let quota = cgroup_value(pid, "cpu", "cpu.cfs_quota_us", "cpu.max");
    assert!(quota == "50000" || quota == "50000 100000", "{quota}");
    let s = status(&d, &id).await;
    assert_eq!(s.resources.unwrap().linux.unwrap(), limits);
    let err = d
        .runtime()
        .await
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: -5,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );

    // concord killed for a while: the container keeps running and nothing it logs is lost.
    d.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.start().await;
    assert_eq!(
        status(&d, &id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let numbers: Vec<u64> = entries(&log)
        .iter()
        .filter_map(|(_, _, c)| c.strip_prefix("line ").and_then(|n| n.parse().ok()))
        .collect();
    assert!(numbers.len() > 20, "{} lines", numbers.len());
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "no line lost or repeated across the kill"
    );

    // kubelet rotates the log: rename, ReopenContainerLog, new lines go to the new file.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    d.runtime()
        .await
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "lines in the reopened file",
        || async { entries(&log).len() >= 2 },
    )
    .await;

    // Stop: the script ignores SIGTERM, so the grace period ends in SIGKILL.
    d.runtime()
        .await
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    let s = status(&d, &id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 137);
    assert_eq!(s.reason, "Error");
    assert!(s.finished_at >= s.started_at);
    // Idempotent.
    d.runtime()
        .await
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 1,
        })
        .await
        .unwrap();

    let list = d
        .runtime()
        .await
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: [("app".to_string(), "counter".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].pod_sandbox_id, p.id);
    for _ in 0..2 {
        d.runtime()
            .await
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
    }
    let err = d
        .runtime()
        .await
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let (containers, snaps, _) = common::namespace_counts(&d).await;
    let _ = containers;
    assert!(snaps >= 1);
    d.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: p.id,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_are_recorded_and_a_failed_start_says_why() {
    let d = daemon().await;
    let p = pod(&d, "jobs").await;
    let id = create(&d, &p, container_config("exit3", "echo bye; exit 3"))
        .await
        .unwrap();
    start(&d, &id).await.unwrap();
    eventually(Duration::from_secs(10), "exited", || async {
        status(&d, &id).await.state == cri::ContainerState::ContainerExited as i32
    })
    .await;
    let s = status(&d, &id).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
    let err = d
        .runtime()
        .await
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            timeout: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );

    // Over its memory limit: the kernel kills it, the reason says so.
    let mut hog = container_config("hog", "dd if=/dev/zero of=/dev/null bs=256M count=1");
    hog.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = create(&d, &p, hog).await.unwrap();
    start(&d, &hog).await.unwrap();
    eventually(Duration::from_secs(10), "OOM-killed", || async {
        status(&d, &hog).await.state == cri::ContainerState::ContainerExited as i32
    })
    .await;
    let s = status(&d, &hog).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"));

    let ok = create(&d, &p, container_config("ok", "true"))
        .await
        .unwrap();
    start(&d, &ok).await.unwrap();
    eventually(Duration::from_secs(10), "completed", || async {
        status(&d, &ok).await.state == cri::ContainerState::ContainerExited as i32
    })
    .await;
    let s = status(&d, &ok).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));

    let mut missing = container_config("missing", "");
    missing.command = vec!["/no/such/binary".into()];
    let bad = create(&d, &p, missing).await.unwrap();
    let err = start(&d, &bad).await.unwrap_err();
    assert!(
        err.message().contains("no/such/binary"),
        "{}",
        err.message()
    );
    let s = status(&d, &bad).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!((s.exit_code, s.reason.as_str()), (128, "StartError"));
    assert!(s.message.contains("no/such/binary"), "{}", s.message);

    // An exit while concord is down is found when it is back.
    let mut d = d;
    let lost = create(&d, &p, container_config("lost", "sleep 1000"))
        .await
        .unwrap();
    start(&d, &lost).await.unwrap();
    let pid = container_pid(&d, &lost).await as i32;
    d.kill9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.start().await;
    eventually(
        Duration::from_secs(10),
        "the exit found after the restart",
        || async { status(&d, &lost).await.state == cri::ContainerState::ContainerExited as i32 },
    )
    .await;
    assert_eq!(status(&d, &lost).await.exit_code, 137);

    // Removing the pod removes its containers.
    d.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: p.id,
        })
        .await
        .unwrap();
    let left = d
        .runtime()
        .await
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty());
    let shims = std::process::Command::new("pgrep")
        .args(["-f", &format!("-namespace {} ", d.namespace)])
        .output()
        .unwrap();
    assert!(shims.stdout.is_empty(), "no shim left");
}

#[tokio::test]
async fn bad_container_requests_name_the_field_and_create_nothing() {
    let d = daemon().await;
    let p = pod(&d, "bad").await;
    let mut rt = d.runtime().await;
    let err = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: "f".repeat(64),
            config: Some(container_config("x", "true")),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let mut absent = container_config("x", "true");
    absent.image = Some(cri::ImageSpec {
        image: "example.test/not/pulled:1".into(),
        ..Default::default()
    });
    let err = create(&d, &p, absent).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{}", err.message());
    let mut cases: Vec<(cri::ContainerConfig, &str)> = Vec::new();
    let mut c = container_config("x", "true");
    c.metadata = None;
    cases.push((c, "config.metadata"));
    let mut c = container_config("x", "true");
    c.mounts = vec![cri::Mount {
        container_path: "relative".into(),
        host_path: "/tmp".into(),
        ..Default::default()
    }];
    cases.push((c, "config.mounts.container_path"));
    let mut c = container_config("x", "true");
    c.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: "/tmp/../etc".into(),
        propagation: 9,
        ..Default::default()
    }];
    cases.push((c, "config.mounts.propagation"));
    let mut c = container_config("x", "true");
    c.log_path = "../../escape.log".into();
    cases.push((c, "config.log_path"));
    for (c, field) in cases {
        let err = create(&d, &p, c).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{field}: {}",
            err.message()
        );
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let left = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty());
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: p.id,
    })
    .await
    .unwrap();
}

async fn pull(d: &Daemon, image: &str) {
    d.images()
        .await
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn exec_out(d: &Daemon, id: &str, cmd: &[&str]) -> String {
    let r = d
        .runtime()
        .await
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

#[tokio::test]
async fn users_and_groups_resolve_against_the_images_etc_files() {
    let d = daemon().await;
    let p = pod(&d, "users").await;
    let named = "gcr.io/k8s-staging-cri-tools/test-image-user-username:latest";
    let grouped = "gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest";
    pull(&d, named).await;
    pull(&d, grouped).await;
    let sleeper = |name: &str, image: &str| {
        let mut c = container_config(name, "");
        c.command = vec!["sleep".into(), "1000".into()];
        c.image = Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        });
        c
    };
    // The image's USER www-data: uid and gid 33 from its /etc/passwd.
    let id = create(&d, &p, sleeper("named", named)).await.unwrap();
    start(&d, &id).await.unwrap();
    assert_eq!(exec_out(&d, &id, &["id", "-u"]).await, "33");
    assert_eq!(exec_out(&d, &id, &["id", "-g"]).await, "33");
    // USER 1000: its primary group, and the image's group that lists it.
    let id = create(&d, &p, sleeper("grouped", grouped)).await.unwrap();
    start(&d, &id).await.unwrap();
    assert_eq!(exec_out(&d, &id, &["id", "-g"]).await, "1000");
    let groups = exec_out(&d, &id, &["id", "-G"]).await;
    assert!(groups.split(' ').any(|g| g == "50000"), "{groups}");
    // run_as_username from the security context.
    let mut c = sleeper("byname", "busybox");
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_username: "www-data".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(&d, &p, c).await.unwrap();
    start(&d, &id).await.unwrap();
    assert_eq!(exec_out(&d, &id, &["id", "-u"]).await, "33");
    // A name the image does not know: the create fails saying so, and leaves nothing.
    let mut c = sleeper("nobody-here", "busybox");
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_username: "no-such-user".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = create(&d, &p, c).await.unwrap_err();
    assert!(err.message().contains("no-such-user"), "{}", err.message());
    let names: Vec<String> = d
        .runtime()
        .await
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .filter_map(|c| c.metadata.map(|m| m.name))
        .collect();
    assert!(!names.contains(&"nobody-here".to_string()), "{names:?}");
    d.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: p.id,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn devices_and_bind_mounts_reach_the_container() {
    let d = daemon().await;
    let p = pod(&d, "devs").await;
    let host_dir = d.dir.join("not-yet").join("data");
    let mut c = container_config("devs", "");
    c.command = vec!["sleep".into(), "1000".into()];
    c.devices = vec![cri::Device {
        container_path: "/dev/mynull".into(),
        host_path: "/dev/null".into(),
        permissions: "rwm".into(),
    }];
    c.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: host_dir.display().to_string(),
        ..Default::default()
    }];
    let id = create(&d, &p, c).await.unwrap();
    start(&d, &id).await.unwrap();
    assert!(host_dir.is_dir(), "a missing host path becomes a directory");
    assert_eq!(
        exec_out(&d, &id, &["sh", "-c", "echo hi > /dev/mynull && echo ok"]).await,
        "ok"
    );
    exec_out(&d, &id, &["sh", "-c", "echo from-the-pod > /data/f"]).await;
    assert_eq!(
        std::fs::read_to_string(host_dir.join("f")).unwrap(),
        "from-the-pod\n"
    );
    let mut bad = container_config("baddev", "true");
    bad.devices = vec![cri::Device {
        container_path: "/dev/x".into(),
        host_path: "/etc/hostname".into(),
        permissions: String::new(),
    }];
    let err = create(&d, &p, bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("config.devices.host_path"),
        "{}",
        err.message()
    );
    d.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: p.id,
        })
        .await
        .unwrap();
}
