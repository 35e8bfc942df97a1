//! Pod sandboxes with the real containerd, runc and CNI plugins (the dev environment's bridge
//! network): run, status, list, retry, stop, remove, host network, bad input, pause exit.

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
    d.extra
        .push("--sandbox-image=registry.k8s.io/pause:3.9".into());
    d.start().await;
    d
}

fn config(name: &str, host_network: bool) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: [("app".to_string(), name.to_string())].into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: if host_network {
                        cri::NamespaceMode::Node as i32
                    } else {
                        cri::NamespaceMode::Pod as i32
                    },
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run(d: &Daemon, c: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    d.runtime()
        .await
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(c),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(d: &Daemon, id: &str) -> Result<cri::PodSandboxStatus, tonic::Status> {
    d.runtime()
        .await
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .map(|r| r.into_inner().status.unwrap())
}

async fn list(d: &Daemon) -> Vec<cri::PodSandbox> {
    d.runtime()
        .await
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
}

fn netns_files(d: &Daemon) -> usize {
    std::fs::read_dir(d.dir.join("netns"))
        .map(|r| r.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_pod_runs_with_an_ip_is_listed_retried_stopped_and_removed_leaving_nothing() {
    let d = daemon().await;
    let id = run(&d, config("web", false)).await.unwrap();
    let s = status(&d, &id).await.unwrap();
    assert_eq!(s.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = s.network.unwrap().ip;
    assert!(ip.starts_with("10.88."), "bridge network address: {ip}");
    assert_eq!(list(&d).await.len(), 1);
    assert_eq!(netns_files(&d), 1);

    // kubelet's retry with the same metadata: the same sandbox.
    assert_eq!(run(&d, config("web", false)).await.unwrap(), id);
    assert_eq!(list(&d).await.len(), 1);

    // The sandbox image was pulled on demand and is pinned while the pod uses it.
    let pause = cri::ImageSpec {
        image: "registry.k8s.io/pause:3.9".into(),
        ..Default::default()
    };
    let err = d
        .images()
        .await
        .remove_image(cri::RemoveImageRequest {
            image: Some(pause.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    assert!(err.message().contains(&id), "{}", err.message());

    let mut rt = d.runtime().await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        status(&d, &id).await.unwrap().state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(netns_files(&d), 0, "netns gone after stop");
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    let err = status(&d, &id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(list(&d).await.is_empty());
    // Unknown ids are fine for stop and remove.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .unwrap();

    // Nothing left: no container, no sandbox snapshot, no IP allocation for the id.
    let (_, snaps, _) = common::namespace_counts(&d).await;
    assert_eq!(snaps, 1, "only the pause image's layer snapshot remains");
    let allocated = std::fs::read_dir("/var/lib/cni/networks/rig-bridge")
        .map(|rd| {
            rd.filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
                .any(|c| c.contains(&id))
        })
        .unwrap_or(false);
    assert!(!allocated, "host-local released the address");
    // With no sandbox left the pinned image can go.
    d.images()
        .await
        .remove_image(cri::RemoveImageRequest { image: Some(pause) })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_host_network_pod_has_no_netns_and_the_pause_exit_turns_it_not_ready() {
    let d = daemon().await;
    let id = run(&d, config("hostnet", true)).await.unwrap();
    let s = status(&d, &id).await.unwrap();
    assert_eq!(s.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(s.network.unwrap().ip, "");
    assert_eq!(netns_files(&d), 0);

    // Kill the pause process behind concord's back: the exit event turns the sandbox NotReady.
    let pid = {
        let mut rt = d.runtime().await;
        let r = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&r.info["info"]).unwrap();
        info["pid"].as_i64().unwrap() as i32
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "NotReady after the pause exit",
        || async {
            status(&d, &id).await.unwrap().state == cri::PodSandboxState::SandboxNotready as i32
        },
    )
    .await;
    let mut rt = d.runtime().await;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(list(&d).await.is_empty());
}

#[tokio::test]
async fn a_sandbox_survives_a_concord_restart() {
    let mut d = daemon().await;
    let id = run(&d, config("survivor", false)).await.unwrap();
    assert!(d.terminate().await.success());
    d.start().await;
    let s = status(&d, &id).await.unwrap();
    assert_eq!(s.state, cri::PodSandboxState::SandboxReady as i32);
    d.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    assert_eq!(netns_files(&d), 0);
}

#[tokio::test]
async fn bad_sandbox_requests_name_the_field_and_create_nothing() {
    let d = daemon().await;
    let mut cases: Vec<(cri::PodSandboxConfig, &str)> = Vec::new();
    let mut c = config("x", false);
    c.metadata = None;
    cases.push((c, "config.metadata"));
    let mut c = config("x", false);
    c.metadata.as_mut().unwrap().name = "a/b".into();
    cases.push((c, "config.metadata.name"));
    let mut c = config("x", false);
    c.metadata.as_mut().unwrap().namespace = "..".into();
    cases.push((c, "config.metadata.namespace"));
    let mut c = config("x", false);
    c.port_mappings = vec![cri::PortMapping {
        protocol: 0,
        container_port: 0,
        host_port: 80,
        host_ip: String::new(),
    }];
    cases.push((c, "container_port"));
    let mut c = config("x", false);
    c.port_mappings = vec![cri::PortMapping {
        protocol: 9,
        container_port: 80,
        host_port: 80,
        host_ip: String::new(),
    }];
    cases.push((c, "protocol"));
    let mut c = config("x", false);
    c.dns_config = Some(cri::DnsConfig {
        servers: vec!["1.1.1.1".into(); 4],
        ..Default::default()
    });
    cases.push((c, "dns_config.servers"));
    for (c, field) in cases {
        let err = run(&d, c).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{field}: {}",
            err.message()
        );
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let err = d
        .runtime()
        .await
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config("x", false)),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("runtime_handler"));
    assert!(list(&d).await.is_empty());
    assert_eq!(netns_files(&d), 0);
}
