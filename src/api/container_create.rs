//! CreateContainer: validate against the pod and the image, record the intent (naming the id,
//! the image and the log path), wait for the loop to make the snapshot and the containerd
//! container. A retry with the same name and config answers the same id.

use std::time::Duration;

use crate::cri;

use super::{ApiError, Server};
use crate::journal::{container_name, ContainerDesired, Event, ObjectKey};
use crate::oci::container::{check_container_path, validate, ContainerContext, Inputs};

impl Server {
    pub async fn create_container(
        &self,
        req: cri::CreateContainerRequest,
        deadline: Duration,
    ) -> Result<cri::CreateContainerResponse, ApiError> {
        let sandbox_id =
            self.resolve_sandbox(&req.pod_sandbox_id)?
                .ok_or_else(|| ApiError::NotFound {
                    kind: "pod sandbox",
                    id: req.pod_sandbox_id.clone(),
                })?;
        let config = req
            .config
            .ok_or_else(|| ApiError::invalid("config", "required"))?;
        let (meta, image_name) = check_request(&config)?;
        let state = self.journal.state();
        let sandbox = state
            .sandboxes
            .get(&sandbox_id)
            .ok_or_else(|| ApiError::NotFound {
                kind: "pod sandbox",
                id: sandbox_id.clone(),
            })?;
        if !sandbox.ready() {
            return Err(ApiError::FailedPrecondition(format!(
                "pod sandbox {sandbox_id} is not ready"
            )));
        }
        let image = self
            .images
            .loaded_index()
            .await
            .find(&image_name)
            .cloned()
            .ok_or_else(|| ApiError::NotFound {
                kind: "image",
                id: image_name.clone(),
            })?;
        let image_volumes = self.resolve_image_volumes(&config).await?;
        let name = container_name(&sandbox_id, meta);
        if let Some(existing) = state
            .container_names
            .get(&name)
            .and_then(|id| state.containers.get(id))
        {
            if existing.desired != ContainerDesired::Removed && *existing.config == config {
                // kubelet's retry of a create that timed out: the same container.
                return Ok(cri::CreateContainerResponse {
                    container_id: existing.id.clone(),
                });
            }
            return Err(ApiError::FailedPrecondition(format!(
                "container name {name:?} is reserved by container {}",
                existing.id
            )));
        }
        // Everything a spec can refuse is refused now, with the field, before anything exists.
        let id = super::new_id();
        let cdi = crate::oci::cdi::resolve(&config, &self.config.runtime.cdi_spec_dirs)?;
        let ctx = ContainerContext {
            id: &id,
            sandbox_id: &sandbox_id,
            sandbox: &sandbox.config,
            sandbox_pid: sandbox.pid.unwrap_or(0),
            sandbox_files: self.config.layout().sandbox(&sandbox_id),
            image_name: &image_name,
            target_pid: target_pid(&config, &state),
            volumes_dir: self.config.layout().container_volumes(&id),
            passthrough: Default::default(),
            image_volumes: Default::default(),
            cgroup_driver: self.config.runtime.cgroup_driver,
            cdi,
        };
        validate(&Inputs::new(&config, &image.resolved.config, &ctx, None))?;
        let log_path = if sandbox.config.log_directory.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            std::path::Path::new(&sandbox.config.log_directory)
                .join(&config.log_path)
                .display()
                .to_string()
        };
        let created_at = super::now_nanos();
        let state = self
            .record(vec![Event::ContainerRequested {
                id: id.clone(),
                sandbox_id,
                config: Box::new(config),
                image_id: image.id().to_string(),
                image_name,
                log_path,
                created_at,
                image_volumes,
            }])
            .await?;
        let key = ObjectKey::Container(id.clone());
        let generation = state.generation(&key);
        self.controller.wake(key.clone());
        self.controller
            .wait(&key, generation, deadline)
            .await
            .map_err(|source| ApiError::Converge {
                what: format!("creating container {name}"),
                source,
            })?;
        Ok(cri::CreateContainerResponse { container_id: id })
    }
}

impl Server {
    /// The image id of each image mount (`config.mounts[i].image`), by mount index ('' for a
    /// host path mount; empty when none is an image): kubelet pulled them first.
    async fn resolve_image_volumes(
        &self,
        config: &cri::ContainerConfig,
    ) -> Result<Vec<String>, ApiError> {
        if config.mounts.iter().all(|m| m.image.is_none()) {
            return Ok(Vec::new());
        }
        let index = self.images.loaded_index().await;
        let mut ids = Vec::with_capacity(config.mounts.len());
        for (i, m) in config.mounts.iter().enumerate() {
            let Some(spec) = &m.image else {
                ids.push(String::new());
                continue;
            };
            if spec.image.is_empty() {
                return Err(ApiError::invalid(
                    "config.mounts.image.image",
                    format!("mount {i}: an image id or reference is required"),
                ));
            }
            let img = index.find(&spec.image).ok_or_else(|| ApiError::NotFound {
                kind: "image of config.mounts.image",
                id: spec.image.clone(),
            })?;
            ids.push(img.id().to_string());
        }
        Ok(ids)
    }
}

/// The request's own fields (name, image, log path, working dir): its metadata and image name.
fn check_request(
    config: &cri::ContainerConfig,
) -> Result<(&cri::ContainerMetadata, String), ApiError> {
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| ApiError::invalid("config.metadata", "required"))?;
    if meta.name.is_empty() || meta.name.contains('/') || meta.name.contains("..") {
        return Err(ApiError::invalid(
            "config.metadata.name",
            format!("{:?} must be non-empty without '/' or '..'", meta.name),
        ));
    }
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| ApiError::invalid("config.image.image", "required"))?;
    if std::path::Path::new(&config.log_path).is_absolute()
        || config.log_path.split('/').any(|p| p == "..")
    {
        return Err(ApiError::invalid(
            "config.log_path",
            format!(
                "{:?} must be relative to the pod's log directory, without '..'",
                config.log_path
            ),
        ));
    }
    if !config.working_dir.is_empty() {
        check_container_path("config.working_dir", &config.working_dir)?;
    }
    Ok((meta, image_name))
}

/// The pid of the container a TARGET pid namespace names, if it runs.
fn target_pid(config: &cri::ContainerConfig, state: &crate::journal::State) -> Option<u32> {
    let target = config
        .linux
        .as_ref()?
        .security_context
        .as_ref()?
        .namespace_options
        .as_ref()?
        .target_id
        .clone();
    state.containers.get(&target).and_then(|c| c.pid)
}
