//! The gRPC surface: CRI v1 RuntimeService and ImageService, and concord's own Images and
//! Introspection services. Each trait method is a one-line delegation to the handler in its own
//! file, wrapped by [`Server::instrument`].

mod container_checkpoint;
mod container_create;
mod container_events;
mod container_exec;
mod container_lifecycle;
mod container_list;
mod container_status;
mod error;
mod image_fs_info;
mod image_load;
mod image_pull;
mod image_remove;
mod image_status;
mod instrument;
mod introspect;
mod list_stream;
mod runtime_config;
mod sandbox_run;
mod sandbox_status;
mod sandbox_stop;
mod sandbox_update_resources;
mod stats;
mod status;
mod streaming;
mod version;

pub use container_list::ListContainersResponse;
pub use error::ApiError;
pub use instrument::{deadline_of, Gate, DEFAULT_DEADLINE};

use std::pin::Pin;
use std::sync::Arc;

use crate::cri;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::containerd::{Containerd, HealthWatch};
use crate::image::Images;
use crate::journal::{Event, JournalHandle, ObjectKey, State};
use crate::metrics::Metrics;
use crate::network::Network;
use crate::proto;
use crate::reconcile::Controller;

/// The full id from an id or a unique prefix of a key of `map`; None when none matches.
/// `field` and `kind` name the request field and the object in errors.
fn resolve_id<V>(
    map: &std::collections::BTreeMap<String, V>,
    id: &str,
    field: &'static str,
    kind: &str,
) -> Result<Option<String>, ApiError> {
    if id.is_empty() {
        return Err(ApiError::invalid(field, "required"));
    }
    if map.contains_key(id) {
        return Ok(Some(id.to_string()));
    }
    // Keys with this prefix are adjacent in the map's order.
    let mut matches = map
        .range(id.to_string()..)
        .map(|(k, _)| k)
        .take_while(|k| k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some(one), None) => Ok(Some(one.clone())),
        (Some(_), Some(_)) => Err(ApiError::invalid(
            field,
            format!("{id:?} matches more than one {kind}"),
        )),
        _ => Ok(None),
    }
}

impl Server {
    /// Records `intents` in the journal, then logs each (one info line naming its pod, and a
    /// debug `journal commit` naming the object generation, which the OTLP layer links the
    /// object's reconcile to this RPC's trace by): answers the state that holds them.
    async fn record(&self, intents: Vec<Event>) -> Result<Arc<State>, ApiError> {
        self.record_with(intents, true).await
    }

    /// [`record`](Self::record), durable or not: an intent recorded without waiting for the
    /// disk must be made durable ([`JournalHandle::make_durable`]) before its answer.
    async fn record_with(
        &self,
        intents: Vec<Event>,
        durable: bool,
    ) -> Result<Arc<State>, ApiError> {
        let logged: Vec<_> = intents.iter().filter_map(Event::intent).collect();
        let events = intents.len();
        let state = match durable {
            true => self.journal.append(intents).await?,
            false => self.journal.record(intents).await?,
        };
        let seq = state.seq;
        for (key, what) in &logged {
            let (object, id) = (key.kind(), key.id());
            crate::lifecycle_event!(
                tracing::Level::DEBUG,
                state,
                key,
                seq,
                events,
                object,
                id,
                "journal commit"
            );
            crate::lifecycle_info!(state, key, "{what}");
        }
        if logged.is_empty() {
            tracing::debug!(seq, events, "journal commit");
        }
        Ok(state)
    }

    /// Wakes `key` and waits until the loop converged `generation` of it. Generation 0 (no
    /// record) and a record dropped meanwhile (removed) count as converged — right for stop,
    /// start and remove intents, wrong for creations (a failed one drops its record), which
    /// wait themselves.
    async fn await_converged(
        &self,
        key: &ObjectKey,
        generation: u64,
        deadline: std::time::Duration,
        what: impl FnOnce() -> String,
    ) -> Result<(), ApiError> {
        if generation == 0 {
            return Ok(());
        }
        self.controller.wake(key.clone());
        match self.controller.wait(key, generation, deadline).await {
            Ok(()) => Ok(()),
            Err(_) if self.journal.state().generation(key) == 0 => Ok(()),
            Err(source) => Err(ApiError::Converge {
                what: what(),
                source,
            }),
        }
    }
}

/// Nanoseconds since the Unix epoch (the CRI's timestamps).
pub use crate::clock::now_nanos;

/// 64 hex characters, like containerd's ids (sandboxes and containers).
fn new_id() -> String {
    (0..4)
        .map(|_| format!("{:016x}", fastrand::u64(..)))
        .collect()
}

/// The CRI server's state: what every handler works with. (Not to be confused with the runtime
/// handlers of the config, [`crate::config::RuntimeHandler`], or the containerd runtime a
/// container runs with, [`crate::containerd::ContainerRuntime`].)
pub struct Server {
    pub config: Config,
    pub journal: JournalHandle,
    pub controller: Arc<Controller>,
    pub containerd: Containerd,
    pub health: HealthWatch,
    pub network: Arc<Network>,
    pub images: Arc<Images>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<crate::stats::Collector>,
    /// The streaming server Exec and PortForward hand out URLs of.
    pub stream: Arc<crate::stream::StreamServer>,
    /// Containers whose stdio concord holds (stdin without a TTY).
    pub attachments: Arc<crate::attach::Attachments>,
    /// Fires when concord stops serving: long-lived streams end.
    pub stopping: tokio_util::sync::CancellationToken,
    /// ListContainers' entries, encoded once per record.
    pub list_cache: container_list::ListCache,
}

/// The service object tonic serves (cheap to clone).
#[derive(Clone)]
pub struct Cri(pub Arc<Server>);

type Res<T> = Result<Response<T>, Status>;
type EventStream =
    Pin<Box<dyn futures::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for Cri {
    async fn version(&self, r: Request<cri::VersionRequest>) -> Res<cri::VersionResponse> {
        self.0
            .instrument("Version", Gate::None, self.0.version(r.into_inner()))
            .await
    }
    async fn status(&self, r: Request<cri::StatusRequest>) -> Res<cri::StatusResponse> {
        self.0
            .instrument("Status", Gate::None, self.0.status(r.into_inner()))
            .await
    }
    async fn runtime_config(
        &self,
        r: Request<cri::RuntimeConfigRequest>,
    ) -> Res<cri::RuntimeConfigResponse> {
        self.0
            .instrument(
                "RuntimeConfig",
                Gate::None,
                self.0.runtime_config(r.into_inner()),
            )
            .await
    }
    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Res<cri::UpdateRuntimeConfigResponse> {
        let deadline = deadline_of(r.metadata());
        self.0
            .instrument(
                "UpdateRuntimeConfig",
                Gate::None,
                self.0.update_runtime_config(r.into_inner(), deadline),
            )
            .await
    }
    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> Res<cri::RunPodSandboxResponse> {
        let deadline = deadline_of(r.metadata());
        self.0
            .instrument(
                "RunPodSandbox",
                Gate::Containerd,
                self.0.run_pod_sandbox(r.into_inner(), deadline),
            )
            .await
    }
    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> Res<cri::StopPodSandboxResponse> {
        let deadline = deadline_of(r.metadata());
        self.0
            .instrument(
                "StopPodSandbox",
                Gate::Containerd,
                self.0.stop_pod_sandbox(r.into_inner(), deadline),
            )
            .await
    }
    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Res<cri::RemovePodSandboxResponse> {
        let deadline = deadline_of(r.metadata());
        self.0
            .instrument(
                "RemovePodSandbox",
                Gate::Containerd,
                self.0.remove_pod_sandbox(r.into_inner(), deadline),
            )
            .await
    }
    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Res<cri::PodSandboxStatusResponse> {
        self.0
            .instrument(
                "PodSandboxStatus",
                Gate::None,
                self.0.pod_sandbox_status(r.into_inner()),
            )
            .await
    }
    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> Res<cri::ListPodSandboxResponse> {
        self.0
            .instrument(
                "ListPodSandbox",
                Gate::None,
                self.0.list_pod_sandbox(r.into_inner()),
            )
            .await
    }
    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> Res<cri::PodSandboxStatsResponse> {
        self.0
            .instrument(
                "PodSandboxStats",
                Gate::None,
                self.0.pod_sandbox_stats(r.into_inner()),
            )
            .await
    }
    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Res<cri::ListPodSandboxStatsResponse> {
        self.0
            .instrument(
                "ListPodSandboxStats",
                Gate::None,
                self.0.list_pod_sandbox_stats(r.into_inner()),
            )
            .await
    }
    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> Res<cri::CreateContainerResponse> {
        let deadline = deadline_of(r.metadata());
        self.0
            .instrument(
                "CreateContainer",
                Gate::Containerd,
                self.0.create_container(r.into_inner(), deadline),
            )
            .await
    }
    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> Res<cri::StartContainerResponse> {
        let deadline = deadline_of(r.metadata());
        self.0
            .instrument(
                "StartContainer",
                Gate::Containerd,
                self.0.start_container(r.into_inner(), deadline),
            )
            .await
    }
    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> Res<cri::StopContainerResponse> {
        let deadline = deadline_of(r.metadata());
        self.0
            .instrument(
                "StopContainer",
                Gate::Containerd,
                self.0.stop_container(r.into_inner(), deadline),
            )
            .await
    }
    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> Res<cri::RemoveContainerResponse> {
        let deadline = deadline_of(r.metadata());
        self.0
            .instrument(
                "RemoveContainer",
                Gate::Containerd,
                self.0.remove_container(r.into_inner(), deadline),
            )
            .await
    }
    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> Res<cri::ListContainersResponse> {
        self.0
            .instrument(
                "ListContainers",
                Gate::None,
                self.0.list_containers(r.into_inner()),
            )
            .await
    }
    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> Res<cri::ContainerStatusResponse> {
        self.0
            .instrument(
                "ContainerStatus",
                Gate::None,
                self.0.container_status(r.into_inner()),
            )
            .await
    }
    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Res<cri::UpdateContainerResourcesResponse> {
        let deadline = deadline_of(r.metadata());
        self.0
            .instrument(
                "UpdateContainerResources",
                Gate::Containerd,
                self.0.update_container_resources(r.into_inner(), deadline),
            )
            .await
    }
    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Res<cri::ReopenContainerLogResponse> {
        self.0
            .instrument(
                "ReopenContainerLog",
                Gate::None,
                self.0.reopen_container_log(r.into_inner()),
            )
            .await
    }
    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> Res<cri::ExecSyncResponse> {
        self.0
            .instrument(
                "ExecSync",
                Gate::Containerd,
                self.0.exec_sync(r.into_inner()),
            )
            .await
    }
    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> Res<cri::ContainerStatsResponse> {
        self.0
            .instrument(
                "ContainerStats",
                Gate::None,
                self.0.container_stats(r.into_inner()),
            )
            .await
    }
    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Res<cri::ListContainerStatsResponse> {
        self.0
            .instrument(
                "ListContainerStats",
                Gate::None,
                self.0.list_container_stats(r.into_inner()),
            )
            .await
    }
    type GetContainerEventsStream = EventStream;
    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Res<Self::GetContainerEventsStream> {
        self.0
            .instrument("GetContainerEvents", Gate::None, async {
                Ok(self.0.container_events())
            })
            .await
    }
    async fn list_metric_descriptors(
        &self,
        r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Res<cri::ListMetricDescriptorsResponse> {
        self.0
            .instrument(
                "ListMetricDescriptors",
                Gate::None,
                self.0.list_metric_descriptors(r.into_inner()),
            )
            .await
    }
    async fn list_pod_sandbox_metrics(
        &self,
        r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Res<cri::ListPodSandboxMetricsResponse> {
        self.0
            .instrument(
                "ListPodSandboxMetrics",
                Gate::None,
                self.0.list_pod_sandbox_metrics(r.into_inner()),
            )
            .await
    }
    async fn checkpoint_container(
        &self,
        r: Request<cri::CheckpointContainerRequest>,
    ) -> Res<cri::CheckpointContainerResponse> {
        self.0
            .instrument(
                "CheckpointContainer",
                Gate::Containerd,
                self.0.checkpoint_container(r.into_inner()),
            )
            .await
    }
    type StreamPodSandboxesStream = list_stream::ListStream<cri::StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        r: Request<cri::StreamPodSandboxesRequest>,
    ) -> Res<Self::StreamPodSandboxesStream> {
        self.0
            .instrument(
                "StreamPodSandboxes",
                Gate::None,
                self.0.stream_pod_sandboxes(r.into_inner()),
            )
            .await
    }
    type StreamContainersStream = list_stream::ListStream<cri::StreamContainersResponse>;
    async fn stream_containers(
        &self,
        r: Request<cri::StreamContainersRequest>,
    ) -> Res<Self::StreamContainersStream> {
        self.0
            .instrument(
                "StreamContainers",
                Gate::None,
                self.0.stream_containers(r.into_inner()),
            )
            .await
    }
    type StreamContainerStatsStream = list_stream::ListStream<cri::StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        r: Request<cri::StreamContainerStatsRequest>,
    ) -> Res<Self::StreamContainerStatsStream> {
        self.0
            .instrument(
                "StreamContainerStats",
                Gate::None,
                self.0.stream_container_stats(r.into_inner()),
            )
            .await
    }
    type StreamPodSandboxStatsStream = list_stream::ListStream<cri::StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        r: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Res<Self::StreamPodSandboxStatsStream> {
        self.0
            .instrument(
                "StreamPodSandboxStats",
                Gate::None,
                self.0.stream_pod_sandbox_stats(r.into_inner()),
            )
            .await
    }
    type StreamPodSandboxMetricsStream =
        list_stream::ListStream<cri::StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        r: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Res<Self::StreamPodSandboxMetricsStream> {
        self.0
            .instrument(
                "StreamPodSandboxMetrics",
                Gate::None,
                self.0.stream_pod_sandbox_metrics(r.into_inner()),
            )
            .await
    }
    async fn update_pod_sandbox_resources(
        &self,
        r: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Res<cri::UpdatePodSandboxResourcesResponse> {
        let deadline = deadline_of(r.metadata());
        self.0
            .instrument(
                "UpdatePodSandboxResources",
                Gate::None,
                self.0
                    .update_pod_sandbox_resources(r.into_inner(), deadline),
            )
            .await
    }
    async fn exec(&self, r: Request<cri::ExecRequest>) -> Res<cri::ExecResponse> {
        self.0
            .instrument("Exec", Gate::None, self.0.exec(r.into_inner()))
            .await
    }
    async fn attach(&self, r: Request<cri::AttachRequest>) -> Res<cri::AttachResponse> {
        self.0
            .instrument("Attach", Gate::None, self.0.attach(r.into_inner()))
            .await
    }
    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> Res<cri::PortForwardResponse> {
        self.0
            .instrument(
                "PortForward",
                Gate::None,
                self.0.port_forward(r.into_inner()),
            )
            .await
    }
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for Cri {
    type StreamImagesStream = list_stream::ListStream<cri::StreamImagesResponse>;
    async fn stream_images(
        &self,
        r: Request<cri::StreamImagesRequest>,
    ) -> Res<Self::StreamImagesStream> {
        self.0
            .instrument(
                "StreamImages",
                Gate::None,
                self.0.stream_images(r.into_inner()),
            )
            .await
    }
    async fn list_images(
        &self,
        r: Request<cri::ListImagesRequest>,
    ) -> Res<cri::ListImagesResponse> {
        self.0
            .instrument("ListImages", Gate::None, self.0.list_images(r.into_inner()))
            .await
    }
    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> Res<cri::ImageStatusResponse> {
        self.0
            .instrument(
                "ImageStatus",
                Gate::None,
                self.0.image_status(r.into_inner()),
            )
            .await
    }
    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> Res<cri::PullImageResponse> {
        self.0
            .instrument(
                "PullImage",
                Gate::Containerd,
                self.0.pull_image(r.into_inner()),
            )
            .await
    }
    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> Res<cri::RemoveImageResponse> {
        self.0
            .instrument(
                "RemoveImage",
                Gate::Containerd,
                self.0.remove_image(r.into_inner()),
            )
            .await
    }
    async fn image_fs_info(
        &self,
        r: Request<cri::ImageFsInfoRequest>,
    ) -> Res<cri::ImageFsInfoResponse> {
        self.0
            .instrument(
                "ImageFsInfo",
                Gate::None,
                self.0.image_fs_info(r.into_inner()),
            )
            .await
    }
}

#[tonic::async_trait]
impl proto::images_server::Images for Cri {
    async fn load_image(
        &self,
        r: Request<proto::LoadImageRequest>,
    ) -> Res<proto::LoadImageResponse> {
        self.0
            .instrument(
                "LoadImage",
                Gate::Containerd,
                self.0.load_image(r.into_inner()),
            )
            .await
    }
}

#[tonic::async_trait]
impl proto::introspection_server::Introspection for Cri {
    async fn list_objects(
        &self,
        r: Request<proto::ListObjectsRequest>,
    ) -> Res<proto::ListObjectsResponse> {
        self.0
            .instrument(
                "ListObjects",
                Gate::None,
                self.0.list_objects(r.into_inner()),
            )
            .await
    }
    async fn journal_info(
        &self,
        _: Request<proto::JournalInfoRequest>,
    ) -> Res<proto::JournalInfoResponse> {
        self.0
            .instrument("JournalInfo", Gate::None, self.0.journal_info())
            .await
    }
}
