//! The client commands: each talks to a running concord over its socket ([`Target`]), CRI or
//! concord's own introspection API, and prints what it answers.

use std::path::PathBuf;
use std::time::Duration;

use super::output::{ago, human_size, short, structured, Format, Table};

/// How a listing prints: `-o` and `-q`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Listing {
    pub format: Format,
    /// Ids only, one per line.
    pub quiet: bool,
}

impl Listing {
    /// Prints `items`: their ids (`-q`), the items as JSON/YAML (`-o`), else `table`.
    fn print<T: serde::Serialize>(
        self,
        items: &[T],
        id: impl Fn(&T) -> String,
        table: Table,
    ) -> anyhow::Result<()> {
        if self.quiet {
            for item in items {
                println!("{}", id(item));
            }
            return Ok(());
        }
        match self.format {
            Format::Table => print!("{}", table.render()),
            f => print!("{}", structured(f, &serde_json::to_value(items)?)?),
        }
        Ok(())
    }
}

/// The running concord a client command talks to.
pub struct Target {
    /// Its CRI socket.
    pub socket: PathBuf,
    /// How long the whole command may take (`--timeout`).
    pub timeout: Option<Duration>,
}

/// A gRPC channel to a running concord's socket.
pub(super) async fn connect(config: &Target) -> anyhow::Result<tonic::transport::Channel> {
    concord::uds::connect(&config.socket).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to concord at {}: {e}",
            config.socket.display()
        )
    })
}

/// A CRI RuntimeService client of a running concord.
pub(super) async fn runtime_client(
    config: &Target,
) -> anyhow::Result<
    concord::cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
> {
    Ok(concord::cri::runtime_service_client::RuntimeServiceClient::new(connect(config).await?))
}

/// A failed RPC, as the daemon explains it.
fn rpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

pub async fn load(config: &Target, file: PathBuf) -> anyhow::Result<()> {
    use concord::proto::images_client::ImagesClient;
    let file = std::path::absolute(&file)?;
    let mut client = ImagesClient::new(connect(config).await?);
    let r = client
        .load_image(concord::proto::LoadImageRequest {
            file_path: file.display().to_string(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    for name in r.images {
        println!("{name}");
    }
    Ok(())
}

pub async fn pull(config: &Target, image: String) -> anyhow::Result<()> {
    use concord::cri::image_service_client::ImageServiceClient;
    use concord::cri::{ImageSpec, PullImageRequest};
    let mut client = ImageServiceClient::new(connect(config).await?);
    let r = client
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!("{}", r.image_ref);
    Ok(())
}

pub async fn list_images(config: &Target, list: Listing) -> anyhow::Result<()> {
    use concord::cri::image_service_client::ImageServiceClient;
    let mut client = ImageServiceClient::new(connect(config).await?);
    let images = client
        .list_images(concord::cri::ListImagesRequest::default())
        .await
        .map_err(rpc_error)?
        .into_inner()
        .images;
    let mut t = Table::new(&["IMAGE", "IMAGE ID", "SIZE"]);
    for img in &images {
        let id = img.id.trim_start_matches("sha256:");
        let tags = match img.repo_tags.is_empty() {
            true => vec!["<none>".to_string()],
            false => img.repo_tags.clone(),
        };
        for tag in tags {
            t.row(vec![tag, short(id).into(), human_size(img.size)]);
        }
    }
    list.print(&images, |i| i.id.clone(), t)
}

pub async fn run_pod(
    config: &Target,
    name: String,
    publish: Vec<String>,
    handler: String,
) -> anyhow::Result<()> {
    use concord::cri;
    let mut port_mappings = Vec::new();
    for p in &publish {
        let (host, container) = p
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--publish {p:?}: expected HOST:CONTAINER"))?;
        port_mappings.push(cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            host_port: host.parse()?,
            container_port: container.parse()?,
            host_ip: String::new(),
        });
    }
    let mut client = runtime_client(config).await?;
    let r = client
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: name.clone(),
                    uid: format!("{name}-uid"),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                log_directory: format!("/var/log/pods/default_{name}_{name}-uid"),
                hostname: name,
                port_mappings,
                ..Default::default()
            }),
            runtime_handler: handler,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!("{}", r.pod_sandbox_id);
    Ok(())
}

pub async fn pods(config: &Target, list: Listing) -> anyhow::Result<()> {
    use concord::cri;
    let mut client = runtime_client(config).await?;
    let items = client
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .map_err(rpc_error)?
        .into_inner()
        .items;
    let mut t = Table::new(&[
        "POD ID",
        "CREATED",
        "STATE",
        "NAME",
        "NAMESPACE",
        "IP",
        "RUNTIME",
    ]);
    if list.format == Format::Table && !list.quiet {
        for p in &items {
            let ip = client
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: p.id.clone(),
                    verbose: false,
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().status)
                .and_then(|s| s.network)
                .map(|n| n.ip)
                .unwrap_or_default();
            let state = match p.state == cri::PodSandboxState::SandboxReady as i32 {
                true => "Ready",
                false => "NotReady",
            };
            let meta = p.metadata.clone().unwrap_or_default();
            t.row(vec![
                short(&p.id).into(),
                ago(p.created_at),
                state.into(),
                meta.name,
                meta.namespace,
                if ip.is_empty() { "-".into() } else { ip },
                if p.runtime_handler.is_empty() {
                    "(default)".into()
                } else {
                    p.runtime_handler.clone()
                },
            ]);
        }
    }
    list.print(&items, |p| p.id.clone(), t)
}

pub async fn run_container(
    config: &Target,
    pod: String,
    name: String,
    image: String,
    command: Vec<String>,
) -> anyhow::Result<()> {
    use concord::cri;
    let mut client = runtime_client(config).await?;
    let id = client
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod,
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: name.clone(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image,
                    ..Default::default()
                }),
                command,
                log_path: format!("{name}.log"),
                ..Default::default()
            }),
            sandbox_config: None,
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .container_id;
    client
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(rpc_error)?;
    println!("{id}");
    Ok(())
}

pub async fn containers(config: &Target, list: Listing) -> anyhow::Result<()> {
    use concord::cri;
    let mut client = runtime_client(config).await?;
    let items = client
        .list_containers(cri::ListContainersRequest::default())
        .await
        .map_err(rpc_error)?
        .into_inner()
        .containers;
    let mut t = Table::new(&[
        "CONTAINER",
        "IMAGE",
        "CREATED",
        "STATE",
        "NAME",
        "ATTEMPT",
        "POD ID",
    ]);
    for c in &items {
        let state = cri::ContainerState::try_from(c.state)
            .map(|s| s.as_str_name().trim_start_matches("CONTAINER_").to_string())
            .unwrap_or_default();
        let meta = c.metadata.clone().unwrap_or_default();
        t.row(vec![
            short(&c.id).into(),
            c.image.clone().map(|i| i.image).unwrap_or_default(),
            ago(c.created_at),
            state,
            meta.name,
            meta.attempt.to_string(),
            short(&c.pod_sandbox_id).into(),
        ]);
    }
    list.print(&items, |c| c.id.clone(), t)
}

pub async fn pod_op(config: &Target, id: String, remove: bool) -> anyhow::Result<()> {
    use concord::cri;
    let mut client = runtime_client(config).await?;
    let r = if remove {
        client
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .map(|_| ())
    } else {
        client
            .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id })
            .await
            .map(|_| ())
    };
    r.map_err(rpc_error)
}

pub async fn status(config: &Target) -> anyhow::Result<()> {
    use concord::cri::runtime_service_client::RuntimeServiceClient;
    use concord::cri::{StatusRequest, VersionRequest};
    let mut client = RuntimeServiceClient::new(connect(config).await?);
    let v = client
        .version(VersionRequest::default())
        .await?
        .into_inner();
    let s = client
        .status(StatusRequest { verbose: false })
        .await?
        .into_inner();
    let conditions: Vec<serde_json::Value> = s
        .status
        .map(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .map(|c| serde_json::json!({"type": c.r#type, "status": c.status, "reason": c.reason, "message": c.message}))
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "runtime_name": v.runtime_name,
            "runtime_version": v.runtime_version,
            "runtime_api_version": v.runtime_api_version,
            "conditions": conditions,
        }))?
    );
    Ok(())
}
