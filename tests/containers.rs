//! Containers with the real containerd, runc and the locally built busybox image: create,
//! start, logs in the CRI format (kept flowing across a concord kill), exit codes, stop with a
//! grace period, a failed start, log reopen, remove, bad input.

mod common;

use std::time::Duration;

use common::{
    container_config, container_status, containerd_container, eventually, exec_out, pod,
    pod_daemon, pull_ok, remove_pod, start_container, Daemon, Pod, Unmount,
};
use concord::cri;
use nix::mount::MsFlags;

/// A busybox container running `script` with sh, logging to `<name>.log`, labelled app=name.
fn sh_container(name: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        log_path: format!("{name}.log"),
        labels: [("app".to_string(), name.to_string())].into(),
        ..container_config(name, "busybox", &["sh", "-c", script])
    }
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
    common::container_info(d, id).await["pid"].as_i64().unwrap()
}

/// The (stream, tag, content) of every entry in a CRI log file.
/// A line still being written (no newline yet) is not read, as kubelet's reader waits for it.
fn entries(path: &std::path::Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
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
    let mut d = pod_daemon(&[]).await;
    let p = pod(&d, "web").await;
    let id = p.create(&d, sh_container(
            "counter",
            "trap '' TERM; echo started; echo to-stderr >&2; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done",
        ),
    )
    .await
    .unwrap();
    let s = container_status(&d, &id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerCreated as i32);
    // As containerd: the image's repo tag names it.
    assert_eq!(s.image.unwrap().image, "docker.io/library/busybox:latest");
    // As containerd: the image's repo digest (kubelet's imageID), the id in image_id.
    assert!(
        s.image_ref.starts_with("docker.io/library/busybox@sha256:"),
        "{}",
        s.image_ref
    );
    assert!(s.image_id.starts_with("sha256:"));
    start_container(&d, &id).await.unwrap();
    let s = container_status(&d, &id).await;
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
    let s = container_status(&d, &id).await;
    // The swap limit is the memory limit where the host accounts swap (as containerd).
    let mut shown = limits.clone();
    if concord::oci::resources::swap_accounted() {
        shown.memory_swap_limit_in_bytes = shown.memory_limit_in_bytes;
        assert_eq!(
            cgroup_value(
                pid,
                "memory",
                "memory.memsw.limit_in_bytes",
                "memory.swap.max"
            ),
            if std::path::Path::new("/sys/fs/cgroup/memory").exists() {
                (64u64 << 20).to_string()
            } else {
                "0".to_string()
            }
        );
    }
    assert_eq!(s.resources.unwrap().linux.unwrap(), shown);
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
        container_status(&d, &id).await.state,
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
    // A pid file that names another process (the writer died, the pid was reused): that
    // process is never signalled; the call says the writer is not running.
    let pidfile = d
        .state_dir
        .join("containers")
        .join(&id)
        .join("log-writer.pid");
    let writer_pid = std::fs::read_to_string(&pidfile).unwrap();
    let mut bystander = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::write(&pidfile, bystander.id().to_string()).unwrap();
    let err = d
        .runtime()
        .await
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "an unrelated process was signalled"
    );
    let _ = bystander.kill();
    std::fs::write(&pidfile, writer_pid).unwrap();

    // Stop: the script ignores SIGTERM, so the grace period ends in SIGKILL.
    d.runtime()
        .await
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    let s = container_status(&d, &id).await;
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
    remove_pod(&d, &p.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_are_recorded_and_a_failed_start_says_why() {
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "jobs").await;
    let id = p
        .create(&d, sh_container("exit3", "echo bye; exit 3"))
        .await
        .unwrap();
    start_container(&d, &id).await.unwrap();
    eventually(Duration::from_secs(10), "exited", || async {
        container_status(&d, &id).await.state == cri::ContainerState::ContainerExited as i32
    })
    .await;
    let s = container_status(&d, &id).await;
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
    let mut hog = sh_container("hog", "dd if=/dev/zero of=/dev/null bs=256M count=1");
    hog.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = p.run_container(&d, hog).await;
    eventually(Duration::from_secs(10), "OOM-killed", || async {
        container_status(&d, &hog).await.state == cri::ContainerState::ContainerExited as i32
    })
    .await;
    let s = container_status(&d, &hog).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"));
    // The operator's log says so too, once, naming the container.
    let oom_lines = d
        .log()
        .lines()
        .filter(|l| {
            l.contains("container exited")
                && l.contains("container=\"hog\"")
                && l.contains("exit_code=137")
                && l.contains("reason=\"OOMKilled\"")
        })
        .count();
    assert_eq!(oom_lines, 1, "{}", d.log());
    // Counted once, by the pod's runtime handler (the default handler's name for ""); the pod's
    // start was timed under the same label.
    let runc = ["handler=\"runc\""];
    eventually(Duration::from_secs(5), "OOM kill counted", || async {
        d.metric("concord_container_oom_kills_total", &runc).await == 1.0
    })
    .await;
    assert_eq!(
        d.metric("concord_pod_start_duration_seconds_count", &runc)
            .await,
        1.0
    );

    let ok = p.run_container(&d, sh_container("ok", "true")).await;
    eventually(Duration::from_secs(10), "completed", || async {
        container_status(&d, &ok).await.state == cri::ContainerState::ContainerExited as i32
    })
    .await;
    let s = container_status(&d, &ok).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));

    let mut missing = sh_container("missing", "");
    missing.command = vec!["/no/such/binary".into()];
    let bad = p.create(&d, missing).await.unwrap();
    let err = start_container(&d, &bad).await.unwrap_err();
    assert!(
        err.message().contains("no/such/binary"),
        "{}",
        err.message()
    );
    let s = container_status(&d, &bad).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!((s.exit_code, s.reason.as_str()), (128, "StartError"));
    assert!(s.message.contains("no/such/binary"), "{}", s.message);

    // An exit while concord is down is found when it is back.
    let mut d = d;
    let lost = p
        .run_container(&d, sh_container("lost", "sleep 1000"))
        .await;
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
        || async {
            container_status(&d, &lost).await.state == cri::ContainerState::ContainerExited as i32
        },
    )
    .await;
    assert_eq!(container_status(&d, &lost).await.exit_code, 137);

    // Removing the pod removes its containers.
    remove_pod(&d, &p.id).await;
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
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "bad").await;
    let mut rt = d.runtime().await;
    let err = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: "f".repeat(64),
            config: Some(sh_container("x", "true")),
            sandbox_config: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let mut absent = sh_container("x", "true");
    absent.image = Some(cri::ImageSpec {
        image: "example.test/not/pulled:1".into(),
        ..Default::default()
    });
    let err = p.create(&d, absent).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{}", err.message());
    let mut cases: Vec<(cri::ContainerConfig, &str)> = Vec::new();
    let mut c = sh_container("x", "true");
    c.metadata = None;
    cases.push((c, "config.metadata"));
    let mut c = sh_container("x", "true");
    c.mounts = vec![cri::Mount {
        container_path: "relative".into(),
        host_path: "/tmp".into(),
        ..Default::default()
    }];
    cases.push((c, "config.mounts.container_path"));
    let mut c = sh_container("x", "true");
    c.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: "/tmp/../etc".into(),
        propagation: 9,
        ..Default::default()
    }];
    cases.push((c, "config.mounts.propagation"));
    let mut c = sh_container("x", "true");
    c.log_path = "../../escape.log".into();
    cases.push((c, "config.log_path"));
    // A group without a user (critest: "should return error if RunAsGroup is set without
    // RunAsUser"; containerd: "user group is specified without user or username").
    let mut c = sh_container("x", "true");
    security(&mut c).run_as_group = Some(cri::Int64Value { value: 1003 });
    cases.push((c, "config.linux.security_context.run_as_group"));
    // Bidirectional propagation from a host path whose mount is not shared.
    let private = d.dir.join("private-mount");
    std::fs::create_dir_all(&private).unwrap();
    make_mount(&private, MsFlags::MS_PRIVATE);
    let _unmount = Unmount(vec![private.clone()]);
    let mut c = sh_container("x", "true");
    c.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: private.display().to_string(),
        propagation: cri::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    cases.push((c, "config.mounts.propagation"));
    // An AppArmor profile on a host without AppArmor (this one) cannot be honoured.
    if !std::path::Path::new("/sys/module/apparmor/parameters/enabled").exists() {
        let mut c = sh_container("x", "true");
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                apparmor: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: "my-profile".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        cases.push((c, "config.linux.security_context.apparmor"));
    }
    for (c, field) in cases {
        let err = p.create(&d, c).await.unwrap_err();
        if field == "config.linux.security_context.run_as_group" {
            assert!(
                err.message()
                    .contains("user group is specified without user or username"),
                "{}",
                err.message()
            );
        }
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
    remove_pod(&d, &p.id).await;
}

/// Bind-mounts `dir` on itself with propagation `flag` (recursive), as critest prepares the host
/// path of a propagation test.
fn make_mount(dir: &std::path::Path, flag: MsFlags) {
    use nix::mount::mount;
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap();
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        flag | MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap();
}

/// critest's "mount with 'rshared' should support propagation from host to container and vice
/// versa" and its rslave sibling: a mount made on the host under the volume appears inside; a
/// mount made inside a Bidirectional volume appears on the host, not from a HostToContainer one.
#[tokio::test]
async fn mount_propagation_crosses_as_the_volume_asks() {
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "propagation").await;
    // Dropped before the daemon's temp dir is removed, also when an assertion fails.
    let mut unmount = Unmount(Vec::new());
    for (name, propagation, back) in [
        (
            "rshared",
            cri::MountPropagation::PropagationBidirectional,
            true,
        ),
        (
            "rslave",
            cri::MountPropagation::PropagationHostToContainer,
            false,
        ),
    ] {
        let source = d.dir.join(format!("{name}-source"));
        let flags = d.dir.join(format!("{name}-flags"));
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(flags.join("dir")).unwrap();
        std::fs::write(flags.join("dir/flag"), name).unwrap();
        make_mount(&source, MsFlags::MS_SHARED);
        unmount.0.push(source.clone());
        let path = source.display().to_string();
        let mut c = sh_container(name, "sleep 1000");
        security(&mut c).privileged = true;
        c.mounts = vec![cri::Mount {
            container_path: path.clone(),
            host_path: path.clone(),
            propagation: propagation as i32,
            ..Default::default()
        }];
        let id = p.run_container(&d, c).await;
        // Host to container: a bind mount made on the host after the start.
        let on_host = source.join("from-host");
        std::fs::create_dir_all(&on_host).unwrap();
        nix::mount::mount(
            Some(&flags),
            &on_host,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        unmount.0.insert(0, on_host.clone());
        let listed = exec_out(&d, &id, &["ls", "-A", &format!("{path}/from-host/dir")]).await;
        assert_eq!(
            listed, "flag",
            "{name}: the host's mount inside the container"
        );
        // Container to host: only Bidirectional.
        let inner = format!("{path}/from-container");
        if back {
            unmount.0.insert(0, source.join("from-container"));
        }
        let script = format!(
            "mkdir -p {inner} && mount -t tmpfs tmpfs {inner} && touch {inner}/made-inside"
        );
        exec_out(&d, &id, &["sh", "-c", &script]).await;
        let seen = source.join("from-container/made-inside").exists();
        assert_eq!(seen, back, "{name}: the container's mount seen on the host");
    }
    remove_pod(&d, &p.id).await;
}

/// critest's "runtime should support listing container stats" and `crictl stats`: a container
/// listed right after its start has CPU and memory, and a second sample a second later carries
/// a newer CPU timestamp, while the collector's own period is 10 s.
#[tokio::test]
async fn stats_are_never_older_than_a_caller_can_tell_apart() {
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "fresh").await;
    let mut rt = d.runtime().await;
    // Let the periodic collection run before the container starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = p
        .run_container(&d, sh_container("fresh", "sleep 1000"))
        .await;
    let list = |rt: &mut cri::runtime_service_client::RuntimeServiceClient<_>| {
        let mut rt = rt.clone();
        async move {
            rt.list_container_stats(cri::ListContainerStatsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .stats
        }
    };
    let first = list(&mut rt).await;
    assert_eq!(first.len(), 1);
    let cpu = first[0]
        .cpu
        .expect("cpu of a container started a moment ago");
    let mem = first[0]
        .memory
        .expect("memory of a container started a moment ago");
    assert!(cpu.timestamp > 0 && mem.timestamp > 0);
    assert!(used(&mem.working_set_bytes) > 0, "{mem:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = list(&mut rt).await;
    let cpu2 = second[0].cpu.unwrap();
    assert!(cpu2.timestamp > cpu.timestamp, "{cpu:?} then {cpu2:?}");
    let one = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(one.cpu.is_some() && one.memory.is_some());
    // Pod stats too, and concurrent callers share one collection.
    let before = d
        .metric("concord_stats_on_demand_collections_total", &[])
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut rt = rt.clone();
            let pod_id = p.id.clone();
            tokio::spawn(async move {
                rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
                    pod_sandbox_id: pod_id,
                })
                .await
                .unwrap()
                .into_inner()
                .stats
                .unwrap()
            })
        })
        .collect();
    for c in calls {
        let s = c.await.unwrap();
        assert!(s.linux.unwrap().cpu.is_some());
    }
    let after = d
        .metric("concord_stats_on_demand_collections_total", &[])
        .await;
    assert!(
        after - before <= 2.0,
        "8 concurrent calls made {} collections",
        after - before
    );
    remove_pod(&d, &p.id).await;
}

/// The CRI labels kubelet sets, copied onto the containerd containers as containerd's CRI does
/// (cAdvisor's containerd factory names pods and containers from them), beside
/// `io.cri-containerd.kind`; a CRI label cannot override concord's own.
#[tokio::test]
async fn cri_labels_reach_the_containerd_containers_and_never_override_concords() {
    let d = pod_daemon(&[]).await;
    pull_ok(&d, "busybox").await;
    let kube = |name: &str| -> std::collections::HashMap<String, String> {
        [
            ("io.kubernetes.pod.name", "web-0"),
            ("io.kubernetes.pod.namespace", "shop"),
            ("io.kubernetes.pod.uid", "uid-web-0"),
            ("io.kubernetes.container.name", name),
            ("app", "web"),
            ("io.cri-containerd.kind", "forged"),
            ("io.concord.owner", "forged"),
            ("io.kubernetes.pod-sandbox-id", "forged"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    let mut config = common::pod_config(&d, "labels");
    config.labels = kube("POD");
    let p = Pod::run(&d, config).await;
    let mut c = sh_container("app", "sleep 1000");
    c.labels = kube("app");
    let id = p.run_container(&d, c).await;

    let pause = containerd_container(&d, &p.id).await.labels;
    let app = containerd_container(&d, &id).await.labels;
    for (labels, name) in [(&pause, "POD"), (&app, "app")] {
        assert_eq!(labels["io.kubernetes.pod.name"], "web-0", "{labels:?}");
        assert_eq!(labels["io.kubernetes.pod.namespace"], "shop");
        assert_eq!(labels["io.kubernetes.pod.uid"], "uid-web-0");
        assert_eq!(labels["io.kubernetes.container.name"], name);
        assert_eq!(labels["app"], "web");
    }
    assert_eq!(pause["io.cri-containerd.kind"], "sandbox");
    assert_eq!(pause["io.concord.owner"], format!("sandbox:{}", p.id));
    assert_eq!(app["io.cri-containerd.kind"], "container");
    assert_eq!(app["io.kubernetes.pod-sandbox-id"], p.id);
    assert_ne!(app["io.concord.owner"], "forged");
    remove_pod(&d, &p.id).await;
}

#[tokio::test]
async fn users_and_groups_resolve_against_the_images_etc_files() {
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "users").await;
    let named = "gcr.io/k8s-staging-cri-tools/test-image-user-username:latest";
    let grouped = "gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest";
    pull_ok(&d, named).await;
    pull_ok(&d, grouped).await;
    let sleeper = |name: &str, image: &str| {
        let mut c = sh_container(name, "");
        c.command = vec!["sleep".into(), "1000".into()];
        c.image = Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        });
        c
    };
    // The image's USER www-data: uid and gid 33 from its /etc/passwd.
    let id = p.run_container(&d, sleeper("named", named)).await;
    assert_eq!(exec_out(&d, &id, &["id", "-u"]).await, "33");
    assert_eq!(exec_out(&d, &id, &["id", "-g"]).await, "33");
    // ContainerStatus names the identity it runs as.
    let user = container_status(&d, &id)
        .await
        .user
        .and_then(|u| u.linux)
        .unwrap();
    assert_eq!((user.uid, user.gid), (33, 33));
    // USER 1000: its primary group, and the image's group that lists it.
    let id = p.run_container(&d, sleeper("grouped", grouped)).await;
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
    let id = p.run_container(&d, c).await;
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
    let err = p.create(&d, c).await.unwrap_err();
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
    remove_pod(&d, &p.id).await;
}

#[tokio::test]
async fn devices_and_bind_mounts_reach_the_container() {
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "devs").await;
    let host_dir = d.dir.join("not-yet").join("data");
    let mut c = sh_container("devs", "");
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
    let id = p.run_container(&d, c).await;
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
    let mut bad = sh_container("baddev", "true");
    bad.devices = vec![cri::Device {
        container_path: "/dev/x".into(),
        host_path: "/etc/hostname".into(),
        permissions: String::new(),
    }];
    let err = p.create(&d, bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("config.devices.host_path"),
        "{}",
        err.message()
    );
    remove_pod(&d, &p.id).await;
}

fn used(v: &Option<cri::UInt64Value>) -> u64 {
    v.as_ref().map(|v| v.value).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_come_from_the_collector_for_containers_and_pods() {
    let d = pod_daemon(&[
        "--stats-interval-seconds=1",
        "--image-fs-sync-interval-seconds=1",
    ])
    .await;
    let p = pod(&d, "stats").await;
    // Writes 6 MiB to its writable layer, then burns CPU.
    let busy = p
        .create(
            &d,
            sh_container(
                "busy",
                "dd if=/dev/zero of=/ballast bs=1M count=6 2>/dev/null; while :; do :; done",
            ),
        )
        .await
        .unwrap();
    start_container(&d, &busy).await.unwrap();
    let idle = p
        .create(&d, sh_container("idle", "sleep 1000"))
        .await
        .unwrap();
    let client = d.runtime().await;
    let mut rt = client.clone();
    let stats_of = |id: String| {
        let mut rt = client.clone();
        async move {
            rt.container_stats(cri::ContainerStatsRequest { container_id: id })
                .await
                .unwrap()
                .into_inner()
                .stats
                .unwrap()
        }
    };
    eventually(
        Duration::from_secs(20),
        "cpu rate, memory and the writable layer of the busy container",
        || async {
            let s = stats_of(busy.clone()).await;
            let cpu = s.cpu.unwrap_or_default();
            let mem = s.memory.unwrap_or_default();
            let fs = s.writable_layer.unwrap_or_default();
            used(&cpu.usage_nano_cores) > 300_000_000
                && used(&cpu.usage_core_nano_seconds) > 0
                && used(&mem.working_set_bytes) > 0
                && used(&fs.used_bytes) >= 6 << 20
        },
    )
    .await;
    let s = stats_of(busy.clone()).await;
    let attrs = s.attributes.unwrap();
    assert_eq!(attrs.metadata.unwrap().name, "busy");
    assert_eq!(attrs.labels["app"], "busy");
    assert!(!s
        .writable_layer
        .unwrap()
        .fs_id
        .unwrap()
        .mountpoint
        .is_empty());
    // A created (not running) container: attributes, no CPU or memory.
    let s = stats_of(idle.clone()).await;
    assert!(s.cpu.is_none() && s.memory.is_none(), "{s:?}");
    // Unknown id: NotFound.
    let err = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: "no-such-container".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // The list with each filter.
    let list = |f: cri::ContainerStatsFilter| {
        let mut rt = client.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_container_stats(cri::ListContainerStatsRequest { filter: Some(f) })
                .await
                .unwrap()
                .into_inner()
                .stats
                .into_iter()
                .map(|s| s.attributes.unwrap().id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![busy.clone(), idle.clone()];
    both.sort();
    assert_eq!(
        list(cri::ContainerStatsFilter {
            pod_sandbox_id: p.id.clone(),
            ..Default::default()
        })
        .await,
        both
    );
    assert_eq!(
        list(cri::ContainerStatsFilter {
            label_selector: [("app".to_string(), "idle".to_string())].into(),
            ..Default::default()
        })
        .await,
        vec![idle.clone()]
    );
    assert_eq!(
        list(cri::ContainerStatsFilter {
            id: busy[..12].to_string(),
            ..Default::default()
        })
        .await,
        vec![busy.clone()]
    );

    // The pod: its cgroups summed, its network namespace's interfaces, its processes.
    eventually(
        Duration::from_secs(20),
        "pod cpu, memory, network and processes",
        || async {
            let s = client
                .clone()
                .pod_sandbox_stats(cri::PodSandboxStatsRequest {
                    pod_sandbox_id: p.id.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .stats
                .unwrap()
                .linux
                .unwrap();
            let net = s.network.clone().unwrap_or_default();
            used(&s.cpu.unwrap_or_default().usage_nano_cores) > 300_000_000
                && used(&s.memory.unwrap_or_default().working_set_bytes) > 0
                && net.default_interface.map(|i| i.name) == Some("eth0".into())
                && used(&s.process.unwrap_or_default().process_count) >= 2
                && s.containers.len() == 2
        },
    )
    .await;
    let pods = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                label_selector: p.config.labels.clone(),
                id: p.id.clone(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(pods.len(), 1);

    // Metrics in cAdvisor's names, labelled as their descriptors say.
    let descriptors = rt
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    let cpu_desc = descriptors
        .iter()
        .find(|m| m.name == "container_cpu_usage_seconds_total")
        .unwrap();
    let metrics = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let pm = metrics.iter().find(|m| m.pod_sandbox_id == p.id).unwrap();
    assert!(pm
        .metrics
        .iter()
        .any(|m| m.name == "container_network_receive_bytes_total"));
    let cm = pm
        .container_metrics
        .iter()
        .find(|c| c.container_id == busy)
        .unwrap();
    let cpu = cm
        .metrics
        .iter()
        .find(|m| m.name == "container_cpu_usage_seconds_total")
        .unwrap();
    assert_eq!(cpu.label_values.len(), cpu_desc.label_keys.len());
    assert_eq!(cpu.label_values[0], "busy");

    // A stopped pod has no stats.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: p.id.clone(),
    })
    .await
    .unwrap();
    let err = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let s = stats_of(busy.clone()).await;
    assert!(s.cpu.is_none(), "an exited container has no cpu stats");
    remove_pod(&d, &p.id).await;
    assert!(d.metric("concord_stats_collections_total", &["ok"]).await > 0.0);
}

/// Reads `stream` until `n` events for `ids` arrived (others are skipped), within 30 s.
async fn next_events(
    stream: &mut tonic::Streaming<cri::ContainerEventResponse>,
    ids: &[String],
    n: usize,
) -> Vec<cri::ContainerEventResponse> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("no container event within 30 s")
            .unwrap()
            .expect("the event stream ended");
        if ids.contains(&e.container_id) {
            out.push(e);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_events_stream_each_step_and_a_slow_reader_only_loses_its_own() {
    let d = pod_daemon(&["--container-events-buffer=64"]).await;
    let p = pod(&d, "events").await;
    let mut rt = d.runtime().await;
    let mut events = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    // A subscriber that never reads (until the end), on a connection whose flow-control window
    // lets little more than one event through.
    let mut slow = concord::cri::runtime_service_client::RuntimeServiceClient::new(
        concord::uds::connect_windowed(&d.socket, 16 * 1024)
            .await
            .unwrap(),
    )
    .get_container_events(cri::GetEventsRequest {})
    .await
    .unwrap()
    .into_inner();

    let id = p.run_container(&d, sh_container("ev", "sleep 1000")).await;
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let got = next_events(&mut events, std::slice::from_ref(&id), 4).await;
    let types: Vec<i32> = got.iter().map(|e| e.container_event_type).collect();
    assert_eq!(
        types,
        vec![
            cri::ContainerEventType::ContainerCreatedEvent as i32,
            cri::ContainerEventType::ContainerStartedEvent as i32,
            cri::ContainerEventType::ContainerStoppedEvent as i32,
            cri::ContainerEventType::ContainerDeletedEvent as i32,
        ]
    );
    for e in &got {
        let pod = e.pod_sandbox_status.as_ref().unwrap();
        assert_eq!(pod.id, p.id);
        assert_eq!(pod.state, cri::PodSandboxState::SandboxReady as i32);
        assert!(e.created_at > 0);
    }
    // The statuses are the pod's containers at that step: running after start, exited after
    // stop, gone after delete.
    let state_in = |e: &cri::ContainerEventResponse| {
        e.containers_statuses
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.state)
    };
    assert_eq!(
        state_in(&got[1]),
        Some(cri::ContainerState::ContainerRunning as i32)
    );
    let exited = got[2]
        .containers_statuses
        .iter()
        .find(|s| s.id == id)
        .unwrap();
    assert_eq!(exited.state, cri::ContainerState::ContainerExited as i32);
    assert!(exited.finished_at > 0);
    assert_eq!(state_in(&got[3]), None);

    // Many containers come and go (each event carries the whole pod, so the slow reader's
    // transport window fills after a few): the fast reader sees every event, the slow one
    // loses the oldest, counted; nothing waits for it.
    let mut ids = Vec::new();
    for i in 0..60 {
        let c = p
            .create(&d, sh_container(&format!("many-{i}"), "sleep 1000"))
            .await
            .unwrap();
        ids.push(c);
    }
    for c in &ids {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();
    }
    let all = next_events(&mut events, &ids, 120).await;
    let deleted = all
        .iter()
        .filter(|e| e.container_event_type == cri::ContainerEventType::ContainerDeletedEvent as i32)
        .count();
    assert_eq!(deleted, 60);
    // The slow reader now reads: it gets to the last event, having lost some on the way.
    let last = ids.last().unwrap().clone();
    let mut seen = 0;
    loop {
        let e = tokio::time::timeout(Duration::from_secs(30), slow.message())
            .await
            .expect("the slow reader's stream stalled")
            .unwrap()
            .unwrap();
        seen += 1;
        if e.container_id == last
            && e.container_event_type == cri::ContainerEventType::ContainerDeletedEvent as i32
        {
            break;
        }
    }
    assert!(
        seen < 124,
        "the slow reader saw {seen} events: none dropped"
    );
    assert!(
        d.metric("concord_container_events_dropped_total", &[])
            .await
            > 0.0
    );
    assert!(
        d.metric("concord_container_events_total", &["type=\"deleted\""])
            .await
            >= 61.0
    );
    drop(slow);
    drop(events);
    remove_pod(&d, &p.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_stays_open_with_and_without_a_tty_and_output_survives_a_concord_kill() {
    let mut d = pod_daemon(&[]).await;
    let p = pod(&d, "stdin").await;
    let with_stdin = |name: &str, script: &str, tty: bool| {
        let mut c = sh_container(name, script);
        c.stdin = true;
        c.tty = tty;
        c
    };
    // Without stdin, cat reads EOF at once and the container completes.
    let closed = p
        .create(&d, sh_container("closed", "cat; echo cat-ended"))
        .await
        .unwrap();
    start_container(&d, &closed).await.unwrap();
    // With stdin (no TTY): cat waits; the output goes through concord's own copy.
    let open = p
        .create(
            &d,
            with_stdin("open", "echo hello; cat; echo cat-ended", false),
        )
        .await
        .unwrap();
    start_container(&d, &open).await.unwrap();
    // With a TTY and stdin: a terminal on fd 0, and cat waits too.
    let tty = p
        .create(
            &d,
            with_stdin("tty", "tty; test -t 0 && echo is-a-tty; cat", true),
        )
        .await
        .unwrap();
    start_container(&d, &tty).await.unwrap();
    // A counter with stdin: its output must survive a concord kill, line for line.
    let counter = p
        .create(
            &d,
            with_stdin(
                "counter",
                "i=0; while :; do echo n $i; i=$((i+1)); sleep 0.02; done",
                false,
            ),
        )
        .await
        .unwrap();
    start_container(&d, &counter).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the closed-stdin container exits",
        || async {
            container_status(&d, &closed).await.state == cri::ContainerState::ContainerExited as i32
        },
    )
    .await;
    let s = container_status(&d, &closed).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in [&open, &tty, &counter] {
        assert_eq!(
            container_status(&d, id).await.state,
            cri::ContainerState::ContainerRunning as i32,
            "a container with stdin still runs"
        );
    }
    let logs = d.dir.join("logs/stdin");
    let e = entries(&logs.join("open.log"));
    assert_eq!(e, vec![("stdout".into(), "F".into(), "hello".into())]);
    let e = entries(&logs.join("tty.log"));
    assert!(
        e.iter().any(|(_, _, c)| c.starts_with("/dev/pts/"))
            && e.iter().any(|(_, _, c)| c.starts_with("is-a-tty")),
        "{e:?}"
    );

    // kill -9, a pause, a restart: the counter's lines waited in the pipe.
    d.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    d.start().await;
    let log = logs.join("counter.log");
    let numbers = |path: &std::path::Path| -> Vec<u64> {
        entries(path)
            .iter()
            .filter_map(|(_, _, c)| c.strip_prefix("n ").and_then(|n| n.parse().ok()))
            .collect()
    };
    let before = numbers(&log).len();
    eventually(
        Duration::from_secs(10),
        "the counter logs again",
        || async { numbers(&log).len() > before + 20 },
    )
    .await;
    // ReopenContainerLog after a rotation: the new file gets what follows.
    std::fs::rename(&log, logs.join("counter.log.1")).unwrap();
    d.runtime()
        .await
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: counter.clone(),
        })
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "lines in the reopened log",
        || async { numbers(&log).len() > 10 },
    )
    .await;
    let all: Vec<u64> = numbers(&logs.join("counter.log.1"))
        .into_iter()
        .chain(numbers(&log))
        .collect();
    let gaps: Vec<(u64, u64)> = all
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        all[0] == 0 && gaps.is_empty(),
        "lines lost or repeated: first {}, gaps {gaps:?}",
        all[0]
    );
    assert_eq!(
        container_status(&d, &tty).await.state,
        cri::ContainerState::ContainerRunning as i32,
        "the TTY container's stdin is held by its log writer, not by concord"
    );
    remove_pod(&d, &p.id).await;
}

/// Runs a container of `config` to completion; answers its log's contents.
async fn run_to_exit(d: &Daemon, p: &Pod, config: cri::ContainerConfig) -> String {
    let name = config.metadata.as_ref().unwrap().name.clone();
    let id = p.run_container(d, config).await;
    eventually(Duration::from_secs(20), "the container exits", || async {
        container_status(d, &id).await.state == cri::ContainerState::ContainerExited as i32
    })
    .await;
    let dir = d
        .dir
        .join("logs")
        .join(&p.config.metadata.as_ref().unwrap().name);
    let out: String = entries(&dir.join(format!("{name}.log")))
        .into_iter()
        .map(|(_, _, c)| c + "\n")
        .collect();
    let s = container_status(d, &id).await;
    assert!(
        !out.is_empty() || s.exit_code == 0,
        "{name}: exit {} {} {}",
        s.exit_code,
        s.reason,
        s.message
    );
    out
}

fn security(c: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_namespaces_and_resources_reach_the_process() {
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "secure").await;
    pull_ok(&d, "registry.k8s.io/e2e-test-images/nonewprivs:1.3").await;

    // no_new_privs: a setuid-root binary run as uid 1000 gains root only without it.
    let nnp = |name: &str, no_new_privs: bool| {
        let mut c = sh_container(name, "");
        c.command = vec![];
        c.image = Some(cri::ImageSpec {
            image: "registry.k8s.io/e2e-test-images/nonewprivs:1.3".into(),
            ..Default::default()
        });
        let sc = security(&mut c);
        sc.run_as_user = Some(cri::Int64Value { value: 1000 });
        sc.no_new_privs = no_new_privs;
        c
    };
    assert_eq!(
        run_to_exit(&d, &p, nnp("setuid", false)).await,
        "Effective uid: 0\n"
    );
    assert_eq!(
        run_to_exit(&d, &p, nnp("nnp", true)).await,
        "Effective uid: 1000\n"
    );

    // Capabilities, seccomp, masked paths, readonly rootfs: read by the process itself.
    let probe = "grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/self/status; \
                 echo timer_list=$(cat /proc/timer_list 2>/dev/null | wc -c); \
                 touch /written 2>/dev/null && echo rootfs=rw || echo rootfs=ro";
    let mut c = sh_container("default", probe);
    let out = run_to_exit(&d, &p, c.clone()).await;
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(
        out.contains("Seccomp:\t0"),
        "no profile unless asked: {out}"
    );
    assert!(out.contains("timer_list=0"), "masked by default: {out}");
    assert!(out.contains("rootfs=rw"), "{out}");

    c.metadata.as_mut().unwrap().name = "hardened".into();
    c.log_path = "hardened.log".into();
    let sc = security(&mut c);
    sc.capabilities = Some(cri::Capability {
        drop_capabilities: vec!["ALL".into()],
        add_capabilities: vec!["NET_ADMIN".into()],
        ..Default::default()
    });
    sc.seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    sc.readonly_rootfs = true;
    let out = run_to_exit(&d, &p, c.clone()).await;
    assert!(
        out.contains("CapEff:\t0000000000001000"),
        "only NET_ADMIN: {out}"
    );
    assert!(out.contains("Seccomp:\t2"), "filtered: {out}");
    assert!(out.contains("rootfs=ro"), "{out}");

    let mut c = sh_container("privileged", probe);
    security(&mut c).privileged = true;
    let out = run_to_exit(&d, &p, c).await;
    // All that concord has (this machine withholds some from it, CAP_SYS_RESOURCE here).
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = ours
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap();
    assert!(
        out.contains(&format!("CapEff:{bounding}")),
        "all capabilities ({bounding}): {out}"
    );
    assert!(!out.contains("timer_list=0"), "nothing masked: {out}");

    // PID namespace: the pod's (pause is pid 1) or the container's own.
    let mut c = sh_container("pid-pod", "cat /proc/1/cmdline | tr '\\0' ' '; echo");
    security(&mut c).namespace_options = Some(cri::NamespaceOption {
        pid: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    });
    assert_eq!(run_to_exit(&d, &p, c).await, "/pause \n");
    let mut c = sh_container("pid-own", "cat /proc/1/cmdline | tr '\\0' ' '; echo");
    security(&mut c).namespace_options = Some(cri::NamespaceOption {
        pid: cri::NamespaceMode::Container as i32,
        ..Default::default()
    });
    assert!(run_to_exit(&d, &p, c).await.starts_with("sh -c"));

    // Resources: CPU shares and quota, cpuset, memory limit, in the container's cgroups.
    let mut c = sh_container("limited", "sleep 1000");
    c.linux.get_or_insert_with(Default::default).resources = Some(cri::LinuxContainerResources {
        cpu_shares: 512,
        cpu_period: 100_000,
        cpu_quota: 25_000,
        cpuset_cpus: "0".into(),
        memory_limit_in_bytes: 48 << 20,
        ..Default::default()
    });
    let id = p.run_container(&d, c).await;
    let pid = container_pid(&d, &id).await;
    let shares = cgroup_value(pid, "cpu", "cpu.shares", "cpu.weight");
    let v1 = !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    assert!(
        if v1 {
            shares == "512"
        } else {
            shares.parse::<u64>().is_ok()
        },
        "{shares}"
    );
    assert_eq!(
        cgroup_value(pid, "cpu", "cpu.cfs_quota_us", "cpu.max")
            .split_whitespace()
            .next(),
        Some("25000")
    );
    assert_eq!(
        cgroup_value(pid, "cpuset", "cpuset.cpus", "cpuset.cpus").trim(),
        "0"
    );
    assert_eq!(
        cgroup_value(pid, "memory", "memory.limit_in_bytes", "memory.max").trim(),
        (48u64 << 20).to_string()
    );

    // A web server in the pod answers on the pod's address.
    pull_ok(&d, "registry.k8s.io/e2e-test-images/httpd:2.4.39-4").await;
    let mut c = sh_container("web", "");
    c.command = vec![];
    c.image = Some(cri::ImageSpec {
        image: "registry.k8s.io/e2e-test-images/httpd:2.4.39-4".into(),
        ..Default::default()
    });
    p.run_container(&d, c).await;
    let ip = d
        .runtime()
        .await
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: p.id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap()
        .ip;
    eventually(
        Duration::from_secs(20),
        "the web server answers",
        || async {
            let Ok(mut s) = tokio::net::TcpStream::connect((ip.as_str(), 80)).await else {
                return false;
            };
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf).await;
            buf.starts_with("HTTP/1.") && buf.contains(" 200 ")
        },
    )
    .await;
    remove_pod(&d, &p.id).await;
}
