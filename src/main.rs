//! The concord command: runs the daemon (default), prints the default config, or inspects a
//! running daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use concord::config::{Config, DEFAULT_CONFIG_PATH};
use concord::daemon::{self, process};

#[derive(Parser)]
#[command(
    name = "concord",
    version,
    args_override_self = true,
    about = "A Kubernetes CRI runtime on containerd, built as an event-sourced reconciliation controller",
    long_about = "Serves the CRI v1 API on a unix socket for kubelet (--container-runtime-endpoint). \
Settings come from the config file (default /etc/concord/config.toml; `concord config default` prints \
every setting) and are overridden by these flags."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flags: Flags,
}

#[derive(Subcommand)]
enum Command {
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Ask a running concord for its Version and Status (CRI), as kubelet does.
    Status,
    /// Import an image archive (OCI layout or docker save tar, plain or gzip) into a running
    /// concord; the path is read by the daemon.
    Load {
        /// The archive.
        file: PathBuf,
    },
    /// Pull an image through a running concord (CRI PullImage).
    Pull {
        /// Image reference.
        image: String,
    },
    /// List the images a running concord knows (CRI ListImages).
    Images,
    /// Run a pod sandbox through a running concord (CRI RunPodSandbox); prints its id.
    RunPod {
        /// Pod name (namespace "default", uid "<name>-uid").
        name: String,
        /// Publish a port: HOST:CONTAINER (TCP), repeatable.
        #[arg(long = "publish", value_name = "HOST:CONTAINER")]
        publish: Vec<String>,
        /// RuntimeClass handler ("" is the default).
        #[arg(long, default_value = "")]
        handler: String,
    },
    /// List pod sandboxes (CRI ListPodSandbox) with state and address.
    Pods,
    /// Create and start a container in a pod (CRI CreateContainer + StartContainer); prints its
    /// id. Its log goes to <pod log directory>/<name>.log.
    RunContainer {
        /// Pod sandbox id (or a unique prefix).
        pod: String,
        /// Container name.
        name: String,
        /// Image (present on the node).
        image: String,
        /// Command and arguments (default: the image's).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List containers (CRI ListContainers) with state.
    Containers,
    /// Stop a pod sandbox (CRI StopPodSandbox).
    StopPod { id: String },
    /// Remove a pod sandbox (CRI RemovePodSandbox).
    RemovePod { id: String },
    /// Show what a running concord's reconcile loop manages: desired and observed state,
    /// pending reconciles, last errors, and the journal.
    Inspect {
        /// Only objects of this kind (runtime_config, sandbox, container).
        #[arg(long, default_value = "")]
        kind: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the default config file, every setting with a comment.
    Default,
    /// Print the effective config (file plus flags) as TOML.
    Show,
}

/// Every setting as a flag; a flag wins over the config file.
#[derive(Args)]
struct Flags {
    /// Config file (TOML). A missing file is fine unless this flag names it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// CRI unix socket path.
    #[arg(long, global = true, value_name = "PATH")]
    listen: Option<PathBuf>,
    /// containerd's gRPC socket.
    #[arg(long, global = true, value_name = "PATH")]
    containerd_address: Option<PathBuf>,
    /// containerd namespace for every object concord makes.
    #[arg(long, global = true, value_name = "NS")]
    containerd_namespace: Option<String>,
    /// Seconds between containerd health checks.
    #[arg(long, global = true, value_name = "N")]
    containerd_health_interval_seconds: Option<u64>,
    /// Snapshotter for images and container filesystems.
    #[arg(long, global = true, value_name = "NAME")]
    snapshotter: Option<String>,
    /// Directory for the journal and other durable state.
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Prometheus listener (host:port); empty disables it.
    #[arg(long, global = true, value_name = "ADDR")]
    metrics_address: Option<String>,
    /// CNI network config directory.
    #[arg(long, global = true, value_name = "DIR")]
    cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directories, colon-separated.
    #[arg(long, global = true, value_name = "DIRS")]
    cni_bin_dir: Option<String>,
    /// Seconds between rescans of the CNI conf dir.
    #[arg(long, global = true, value_name = "N")]
    cni_rescan_interval_seconds: Option<u64>,
    /// Seconds one CNI plugin execution may take before it is killed.
    #[arg(long, global = true, value_name = "N")]
    cni_plugin_timeout_seconds: Option<u64>,
    /// Seconds one reconcile may take before it is abandoned and retried.
    #[arg(long, global = true, value_name = "N")]
    reconcile_timeout_seconds: Option<u64>,
    /// Registry host configs directory (containerd's hosts.toml layout).
    #[arg(long, global = true, value_name = "DIR")]
    registry_config_path: Option<PathBuf>,
    /// Image every pod sandbox runs.
    #[arg(long, global = true, value_name = "REF")]
    sandbox_image: Option<String>,
    /// Streaming server address (host:port; port 0 picks one).
    #[arg(long, global = true, value_name = "ADDR")]
    stream_address: Option<String>,
    /// trace, debug, info, warn, error, or a tracing filter directive.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// text or json.
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Cgroup driver reported to kubelet: cgroupfs or systemd.
    #[arg(long, global = true, value_name = "DRIVER")]
    cgroup_driver: Option<String>,
    /// Runtime handler used when RunPodSandbox names none (one of [runtime.handlers]).
    #[arg(long, global = true, value_name = "NAME")]
    default_runtime_handler: Option<String>,
    /// Cgroup concord moves itself into at start.
    #[arg(long, global = true, value_name = "PATH")]
    cgroup: Option<String>,
    /// oom_score_adj concord sets for itself at start.
    #[arg(long, global = true, value_name = "N", allow_hyphen_values = true)]
    oom_score_adj: Option<i32>,
    /// Directory where pod network namespaces are pinned.
    #[arg(long, global = true, value_name = "DIR")]
    netns_dir: Option<PathBuf>,
    /// Seconds to finish in-flight RPCs after SIGTERM.
    #[arg(long, global = true, value_name = "N")]
    shutdown_grace_seconds: Option<u64>,
    /// Objects reconciled at once.
    #[arg(long, global = true, value_name = "N")]
    reconcile_workers: Option<usize>,
    /// Seconds between full resyncs (0 disables).
    #[arg(long, global = true, value_name = "N")]
    resync_interval_seconds: Option<u64>,
    /// First retry delay after a failed reconcile (ms).
    #[arg(long, global = true, value_name = "MS")]
    backoff_base_ms: Option<u64>,
    /// Longest retry delay (ms).
    #[arg(long, global = true, value_name = "MS")]
    backoff_max_ms: Option<u64>,
    /// Seconds a pull may go without progress before it is aborted.
    #[arg(long, global = true, value_name = "N")]
    image_pull_progress_timeout_seconds: Option<u64>,
    /// Layers downloaded at once.
    #[arg(long, global = true, value_name = "N")]
    max_concurrent_downloads: Option<usize>,
    /// Seconds between snapshot usage measurements (ImageFsInfo).
    #[arg(long, global = true, value_name = "N")]
    image_fs_sync_interval_seconds: Option<u64>,
    /// Events after which the journal is compacted.
    #[arg(long, global = true, value_name = "N")]
    journal_compact_after: Option<u64>,
    /// Seconds a streaming URL stays valid before it is used.
    #[arg(long, global = true, value_name = "N")]
    stream_token_ttl_seconds: Option<u64>,
    /// Seconds a streaming session may go without a client message.
    #[arg(long, global = true, value_name = "N")]
    stream_idle_timeout_seconds: Option<u64>,
    /// PEM certificate of the streaming server (with --stream-tls-key-file: https).
    #[arg(long, global = true, value_name = "FILE")]
    stream_tls_cert_file: Option<String>,
    /// PEM private key of the streaming server's certificate.
    #[arg(long, global = true, value_name = "FILE")]
    stream_tls_key_file: Option<String>,
    /// Seconds between stats collections (ContainerStats, PodSandboxStats).
    #[arg(long, global = true, value_name = "N")]
    stats_interval_seconds: Option<u64>,
    /// Container events a GetContainerEvents subscriber may fall behind by.
    #[arg(long, global = true, value_name = "N")]
    container_events_buffer: Option<usize>,
}

impl Flags {
    /// Loads the config file and applies the flags over it.
    fn config(&self) -> anyhow::Result<Config> {
        let (path, required) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut c = Config::load(&path, required)?;
        fn set<T: Clone>(dst: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *dst = v.clone();
            }
        }
        set(&mut c.listen, &self.listen);
        set(&mut c.containerd.address, &self.containerd_address);
        set(&mut c.containerd.namespace, &self.containerd_namespace);
        set(
            &mut c.containerd.health_interval_seconds,
            &self.containerd_health_interval_seconds,
        );
        set(&mut c.containerd.snapshotter, &self.snapshotter);
        set(&mut c.state_dir, &self.state_dir);
        set(&mut c.metrics_address, &self.metrics_address);
        set(&mut c.cni.conf_dir, &self.cni_conf_dir);
        if let Some(dirs) = &self.cni_bin_dir {
            c.cni.bin_dirs = dirs
                .split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        set(
            &mut c.cni.rescan_interval_seconds,
            &self.cni_rescan_interval_seconds,
        );
        set(
            &mut c.cni.plugin_timeout_seconds,
            &self.cni_plugin_timeout_seconds,
        );
        set(
            &mut c.reconcile.timeout_seconds,
            &self.reconcile_timeout_seconds,
        );
        set(&mut c.registry_config_path, &self.registry_config_path);
        set(&mut c.sandbox_image, &self.sandbox_image);
        set(&mut c.stream_address, &self.stream_address);
        set(&mut c.stream_tls_cert_file, &self.stream_tls_cert_file);
        set(&mut c.stream_tls_key_file, &self.stream_tls_key_file);
        set(&mut c.log_level, &self.log_level);
        set(&mut c.log_format, &self.log_format);
        set(&mut c.runtime.cgroup_driver, &self.cgroup_driver);
        set(
            &mut c.runtime.default_handler,
            &self.default_runtime_handler,
        );
        set(&mut c.cgroup, &self.cgroup);
        if self.oom_score_adj.is_some() {
            c.oom_score_adj = self.oom_score_adj;
        }
        set(&mut c.shutdown_grace_seconds, &self.shutdown_grace_seconds);
        set(&mut c.netns_dir, &self.netns_dir);
        set(&mut c.reconcile.workers, &self.reconcile_workers);
        set(
            &mut c.reconcile.resync_interval_seconds,
            &self.resync_interval_seconds,
        );
        set(&mut c.reconcile.backoff_base_ms, &self.backoff_base_ms);
        set(&mut c.reconcile.backoff_max_ms, &self.backoff_max_ms);
        set(&mut c.journal.compact_after, &self.journal_compact_after);
        set(&mut c.stats.interval_seconds, &self.stats_interval_seconds);
        set(
            &mut c.stream_token_ttl_seconds,
            &self.stream_token_ttl_seconds,
        );
        set(
            &mut c.stream_idle_timeout_seconds,
            &self.stream_idle_timeout_seconds,
        );
        set(
            &mut c.runtime.container_events_buffer,
            &self.container_events_buffer,
        );
        set(
            &mut c.image.pull_progress_timeout_seconds,
            &self.image_pull_progress_timeout_seconds,
        );
        set(
            &mut c.image.max_concurrent_downloads,
            &self.max_concurrent_downloads,
        );
        set(
            &mut c.image.fs_sync_interval_seconds,
            &self.image_fs_sync_interval_seconds,
        );
        c.validate()?;
        Ok(c)
    }
}

fn init_logging(config: &Config) {
    // A plain debug/trace level is for concord's own logs; its libraries stay at info.
    let directive = match config.log_level.as_str() {
        l @ ("debug" | "trace") => format!("info,concord={l}"),
        other => other.to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::new(directive);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    // containerd's shim runs concord as a container's log writer with key-value arguments.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if concord::logwriter::is_invocation(&args) {
        return ExitCode::from(concord::logwriter::run(&args) as u8);
    }
    let cli = Cli::parse();
    let config = match cli.flags.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("concord: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Config {
            what: ConfigCommand::Default,
        }) => {
            print!("{}", Config::default_toml());
            ExitCode::SUCCESS
        }
        Some(Command::Config {
            what: ConfigCommand::Show,
        }) => match toml::to_string(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("concord: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Load { file }) => report(
            false,
            runtime().and_then(|rt| rt.block_on(load(&config, file))),
        ),
        Some(Command::Pull { image }) => report(
            false,
            runtime().and_then(|rt| rt.block_on(pull(&config, image))),
        ),
        Some(Command::Images) => report(
            false,
            runtime().and_then(|rt| rt.block_on(list_images(&config))),
        ),
        Some(Command::Status) => {
            report(false, runtime().and_then(|rt| rt.block_on(status(&config))))
        }
        Some(Command::RunPod {
            name,
            publish,
            handler,
        }) => report(
            false,
            runtime().and_then(|rt| rt.block_on(run_pod(&config, name, publish, handler))),
        ),
        Some(Command::Pods) => report(false, runtime().and_then(|rt| rt.block_on(pods(&config)))),
        Some(Command::RunContainer {
            pod,
            name,
            image,
            command,
        }) => report(
            false,
            runtime().and_then(|rt| rt.block_on(run_container(&config, pod, name, image, command))),
        ),
        Some(Command::Containers) => report(
            false,
            runtime().and_then(|rt| rt.block_on(containers(&config))),
        ),
        Some(Command::StopPod { id }) => report(
            false,
            runtime().and_then(|rt| rt.block_on(pod_op(&config, id, false))),
        ),
        Some(Command::RemovePod { id }) => report(
            false,
            runtime().and_then(|rt| rt.block_on(pod_op(&config, id, true))),
        ),
        Some(Command::Inspect { kind }) => report(
            false,
            runtime().and_then(|rt| rt.block_on(inspect(&config, kind))),
        ),
        None => {
            init_logging(&config);
            report(
                true,
                place_process(&config).and_then(|()| {
                    let rt = runtime()?;
                    rt.block_on(daemon::run(config))
                        .map_err(anyhow::Error::from)
                }),
            )
        }
    }
}

/// Exit code for a result; the error goes to the log once logging is up, else to stderr.
fn report(logging: bool, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if logging {
                tracing::error!("{e}");
            } else {
                eprintln!("concord: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// Cgroup and oom_score_adj, before any thread starts.
fn place_process(config: &Config) -> anyhow::Result<()> {
    if !config.cgroup.is_empty() {
        process::join_cgroup(&config.cgroup, std::path::Path::new("/sys/fs/cgroup"))?;
        tracing::info!(cgroup = %config.cgroup, "joined cgroup");
    }
    if let Some(adj) = config.oom_score_adj {
        process::set_oom_score_adj(adj)?;
        tracing::info!(oom_score_adj = adj, "set oom_score_adj");
    }
    Ok(())
}

/// A gRPC channel to a running concord's socket.
async fn connect(config: &Config) -> anyhow::Result<tonic::transport::Channel> {
    concord::uds::connect(&config.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to concord at {}: {e}",
            config.listen.display()
        )
    })
}

async fn load(config: &Config, file: PathBuf) -> anyhow::Result<()> {
    use concord::proto::images_client::ImagesClient;
    let file = std::path::absolute(&file)?;
    let mut client = ImagesClient::new(connect(config).await?);
    let r = client
        .load_image(concord::proto::LoadImageRequest {
            file_path: file.display().to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    for name in r.images {
        println!("{name}");
    }
    Ok(())
}

async fn pull(config: &Config, image: String) -> anyhow::Result<()> {
    use k8s_cri::v1::image_service_client::ImageServiceClient;
    use k8s_cri::v1::{ImageSpec, PullImageRequest};
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
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!("{}", r.image_ref);
    Ok(())
}

async fn list_images(config: &Config) -> anyhow::Result<()> {
    use k8s_cri::v1::image_service_client::ImageServiceClient;
    let mut client = ImageServiceClient::new(connect(config).await?);
    let r = client
        .list_images(k8s_cri::v1::ListImagesRequest::default())
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    for img in r.images {
        let tags = if img.repo_tags.is_empty() {
            "<none>".to_string()
        } else {
            img.repo_tags.join(",")
        };
        println!(
            "{}  {:>10}  {}",
            &img.id[..19.min(img.id.len())],
            img.size,
            tags
        );
    }
    Ok(())
}

async fn run_pod(
    config: &Config,
    name: String,
    publish: Vec<String>,
    handler: String,
) -> anyhow::Result<()> {
    use k8s_cri::v1 as cri;
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
    let mut client = cri::runtime_service_client::RuntimeServiceClient::new(connect(config).await?);
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
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!("{}", r.pod_sandbox_id);
    Ok(())
}

async fn pods(config: &Config) -> anyhow::Result<()> {
    use k8s_cri::v1 as cri;
    let mut client = cri::runtime_service_client::RuntimeServiceClient::new(connect(config).await?);
    let items = client
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .items;
    for p in items {
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
        let state = if p.state == cri::PodSandboxState::SandboxReady as i32 {
            "Ready"
        } else {
            "NotReady"
        };
        let name = p.metadata.map(|m| m.name).unwrap_or_default();
        println!(
            "{}  {:<8}  {:<15}  {}",
            &p.id[..13.min(p.id.len())],
            state,
            if ip.is_empty() { "-" } else { &ip },
            name
        );
    }
    Ok(())
}

async fn run_container(
    config: &Config,
    pod: String,
    name: String,
    image: String,
    command: Vec<String>,
) -> anyhow::Result<()> {
    use k8s_cri::v1 as cri;
    let mut client = cri::runtime_service_client::RuntimeServiceClient::new(connect(config).await?);
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
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .container_id;
    client
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    println!("{id}");
    Ok(())
}

async fn containers(config: &Config) -> anyhow::Result<()> {
    use k8s_cri::v1 as cri;
    let mut client = cri::runtime_service_client::RuntimeServiceClient::new(connect(config).await?);
    let list = client
        .list_containers(cri::ListContainersRequest::default())
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .containers;
    for c in list {
        let state = cri::ContainerState::try_from(c.state)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("CONTAINER_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        println!(
            "{}  {:<8}  pod {}  {}  {}",
            &c.id[..13.min(c.id.len())],
            state,
            &c.pod_sandbox_id[..13.min(c.pod_sandbox_id.len())],
            c.metadata.map(|m| m.name).unwrap_or_default(),
            c.image.map(|i| i.image).unwrap_or_default()
        );
    }
    Ok(())
}

async fn pod_op(config: &Config, id: String, remove: bool) -> anyhow::Result<()> {
    use k8s_cri::v1 as cri;
    let mut client = cri::runtime_service_client::RuntimeServiceClient::new(connect(config).await?);
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
    r.map_err(|s| anyhow::anyhow!("{}", s.message()))
}

async fn status(config: &Config) -> anyhow::Result<()> {
    use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
    use k8s_cri::v1::{StatusRequest, VersionRequest};
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

async fn inspect(config: &Config, kind: String) -> anyhow::Result<()> {
    use concord::proto::introspection_client::IntrospectionClient;
    use concord::proto::{JournalInfoRequest, ListObjectsRequest};
    let channel = connect(config).await?;
    let mut client = IntrospectionClient::new(channel);
    let j = client
        .journal_info(JournalInfoRequest {})
        .await?
        .into_inner();
    println!(
        "{}",
        serde_json::json!({
            "journal": {
                "path": j.path, "schema_version": j.schema_version, "last_seq": j.last_seq,
                "snapshot_seq": j.snapshot_seq, "events_since_snapshot": j.events_since_snapshot,
                "replayed_at_start": j.replayed_at_start,
            }
        })
    );
    let objects = client
        .list_objects(ListObjectsRequest {
            kind,
            id_prefix: String::new(),
        })
        .await?
        .into_inner()
        .objects;
    for o in objects {
        println!(
            "{}",
            serde_json::json!({
                "kind": o.kind, "id": o.id, "generation": o.generation,
                "observed_generation": o.observed_generation, "pending": o.pending,
                "retries": o.retries, "last_error": o.last_error,
                "desired": serde_json::from_str::<serde_json::Value>(&o.desired).unwrap_or_default(),
                "observed": serde_json::from_str::<serde_json::Value>(&o.observed).unwrap_or_default(),
            })
        );
    }
    Ok(())
}
