//! Daemons that run pods, and the CRI calls the suites share (pull, run a pod, create and start
//! a container, status, remove): each written once here, not per test file.

use concord::cri;

use super::Daemon;

/// The rig's hosts.toml mirrors (docker.io, registry.k8s.io, ... to the local registry).
pub fn hosts_dir() -> String {
    std::env::var("CONCORD_TEST_HOSTS_DIR").unwrap_or_else(|_| "/tmp/rig/containerd/certs.d".into())
}

/// The rig's local registry (host:port).
pub fn registry() -> String {
    std::env::var("CONCORD_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

/// Adds what a daemon that runs pods needs: the rig's registry hosts and a netns dir of its own.
pub fn pod_flags(d: &mut Daemon) {
    d.extra
        .push(format!("--registry-config-path={}", hosts_dir()));
    d.extra
        .push(format!("--netns-dir={}", d.dir.join("netns").display()));
}

/// A daemon started with the rig's registry hosts, a netns dir of its own and `extra` flags
/// (the container and streaming suites).
pub async fn pod_daemon(extra: &[&str]) -> Daemon {
    pod_daemon_with_config(extra, "").await
}

/// [`pod_daemon`] with `config` as its config file's text.
pub async fn pod_daemon_with_config(extra: &[&str], config: &str) -> Daemon {
    let mut d = Daemon::new();
    std::fs::write(d.dir.join("config.toml"), config).unwrap();
    d.extra.extend(extra.iter().map(|s| s.to_string()));
    pod_flags(&mut d);
    d.start().await;
    d
}

/// PullImage of `image` with `auth`; answers the image ref.
pub async fn pull_with_auth(
    d: &Daemon,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    d.images()
        .await
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

/// PullImage of `image`; answers the image ref.
pub async fn pull(d: &Daemon, image: &str) -> Result<String, tonic::Status> {
    pull_with_auth(d, image, None).await
}

/// Pulls `image` through the daemon's CRI (it must succeed).
pub async fn pull_ok(d: &Daemon, image: &str) {
    pull(d, image).await.unwrap();
}

/// ExecSync of `cmd` in container `id` with a 10 s timeout (the call must succeed; the command
/// may fail).
pub async fn exec_sync(d: &Daemon, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
    d.runtime()
        .await
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner()
}

/// The trimmed stdout of `cmd` run with ExecSync in container `id` (it must succeed).
pub async fn exec_out(d: &Daemon, id: &str, cmd: &[&str]) -> String {
    let r = exec_sync(d, id, cmd).await;
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

/// A pod config named `name`: uid `uid-<name>`, namespace default, hostname `name`.
pub fn pod_base(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        ..Default::default()
    }
}

/// [`pod_base`] logging under the daemon's dir.
pub fn pod_config(d: &Daemon, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        log_directory: d.dir.join("logs").join(name).display().to_string(),
        ..pod_base(name)
    }
}

/// RunPodSandbox of `config` (default runtime handler); answers the sandbox id.
pub async fn run_pod(d: &Daemon, config: &cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    d.runtime()
        .await
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

/// RemovePodSandbox of `id` (it must succeed).
pub async fn remove_pod(d: &Daemon, id: &str) {
    d.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .unwrap();
}

/// RemoveContainer of `id` (it must succeed).
pub async fn remove_container(d: &Daemon, id: &str) {
    d.runtime()
        .await
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .unwrap();
}

/// A container named `name` of `image` running `cmd` (empty: the image's entrypoint).
pub fn container_config(name: &str, image: &str, cmd: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// CreateContainer of `c` in pod `pod` (run with `sandbox`); answers the container id.
pub async fn create_container(
    d: &Daemon,
    pod: &str,
    sandbox: &cri::PodSandboxConfig,
    c: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    d.runtime()
        .await
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(c),
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

/// StartContainer of `id`.
pub async fn start_container(d: &Daemon, id: &str) -> Result<(), tonic::Status> {
    d.runtime()
        .await
        .start_container(cri::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .map(|_| ())
}

/// Creates and starts `c` in pod `pod` (both must succeed); answers the container id.
pub async fn run_container(
    d: &Daemon,
    pod: &str,
    sandbox: &cri::PodSandboxConfig,
    c: cri::ContainerConfig,
) -> String {
    let id = create_container(d, pod, sandbox, c).await.unwrap();
    start_container(d, &id).await.unwrap();
    id
}

/// ContainerStatus of `id` (not verbose; it must exist).
pub async fn container_status(d: &Daemon, id: &str) -> cri::ContainerStatus {
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

/// A running pod: its id and the config it was run with (CreateContainer wants both).
pub struct Pod {
    pub id: String,
    pub config: cri::PodSandboxConfig,
}

impl Pod {
    /// Runs a pod of `config` (it must succeed).
    pub async fn run(d: &Daemon, config: cri::PodSandboxConfig) -> Pod {
        let id = run_pod(d, &config).await.unwrap();
        Pod { id, config }
    }

    /// CreateContainer of `c` in this pod; answers the container id.
    pub async fn create(
        &self,
        d: &Daemon,
        c: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        create_container(d, &self.id, &self.config, c).await
    }

    /// Creates and starts `c` in this pod (both must succeed); answers the container id.
    pub async fn run_container(&self, d: &Daemon, c: cri::ContainerConfig) -> String {
        run_container(d, &self.id, &self.config, c).await
    }
}

/// Pulls busybox and runs a pod named `name` ([`pod_config`]).
pub async fn pod(d: &Daemon, name: &str) -> Pod {
    pull_ok(d, "busybox").await;
    Pod::run(d, pod_config(d, name)).await
}

/// PodSandboxStats of pod `id`, its Linux part (it must be ready).
pub async fn pod_stats(d: &Daemon, id: &str) -> cri::LinuxPodSandboxStats {
    d.runtime()
        .await
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .linux
        .unwrap()
}

/// The verbose PodSandboxStatus `info` of pod `id`, parsed.
pub async fn pod_info(d: &Daemon, id: &str) -> serde_json::Value {
    let status = d
        .runtime()
        .await
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    serde_json::from_str(&status.info["info"]).unwrap()
}

/// The verbose ContainerStatus `info` of container `id`, parsed.
pub async fn container_info(d: &Daemon, id: &str) -> serde_json::Value {
    let status = d
        .runtime()
        .await
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    serde_json::from_str(&status.info["info"]).unwrap()
}

/// containerd's record of container `id` (a pod's pause container or an app container) in the
/// daemon's namespace, read through containerd's Containers API.
pub async fn containerd_container(
    d: &Daemon,
    id: &str,
) -> containerd_client::services::v1::Container {
    use containerd_client::services::v1::GetContainerRequest;
    let ctd = concord::containerd::Containerd::new(&d.containerd, &d.namespace, Default::default());
    ctd.containers()
        .get(ctd.request(GetContainerRequest { id: id.into() }))
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap()
}

/// ListContainers with no filter.
pub async fn list_containers(d: &Daemon) -> Vec<cri::Container> {
    d.runtime()
        .await
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
}
