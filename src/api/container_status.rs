//! ContainerStatus and ListContainers, answered from the journal's state.

use std::collections::HashMap;

use crate::cri;

use super::{ApiError, Server};
use crate::journal::{ContainerRecord, ObjectKey};

impl Server {
    pub async fn container_status(
        &self,
        req: cri::ContainerStatusRequest,
    ) -> Result<cri::ContainerStatusResponse, ApiError> {
        let (state, id) = self.known_container(&req.container_id)?;
        let c = &state.containers[&id];
        let mut info = HashMap::new();
        if req.verbose {
            let running = c.cri_state() == cri::ContainerState::ContainerRunning;
            info.insert(
                "info".to_string(),
                serde_json::json!({
                    "pid": if running { c.pid.unwrap_or(0) } else { 0 },
                    "sandboxID": c.sandbox_id, "desired": c.desired, "removing": c.desired == crate::journal::ContainerDesired::Removed,
                    "snapshotKey": c.id, "snapshotter": self.config.containerd.snapshotter,
                    "runtimeType": self.runtime_type_of(&c.sandbox_id),
                    "config": c.config, "logPath": c.log_path,
                    "reconcile": self.controller.object(&ObjectKey::Container(id.clone())).map(|o| o.info()),
                })
                .to_string(),
            );
        }
        let mut status = status_of(c);
        // As containerd: the image's repo digest when it has one (kubelet's pod imageID).
        if let Some(digest) = self
            .images
            .index()
            .find(&c.image_id)
            .and_then(|img| img.repo_digests().into_iter().next())
        {
            status.image_ref = digest;
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(status),
            info,
        })
    }

    pub async fn list_containers(
        &self,
        req: cri::ListContainersRequest,
    ) -> Result<cri::ListContainersResponse, ApiError> {
        let state = self.journal.state();
        let f = req.filter.unwrap_or_default();
        let containers = state
            .containers
            .values()
            .filter(|c| selected(c, &f.id, &f.pod_sandbox_id, &f.label_selector))
            .filter(|c| {
                f.state
                    .as_ref()
                    .is_none_or(|s| s.state == c.cri_state() as i32)
            })
            .map(|c| cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: c.config.metadata.clone(),
                image: Some(image_spec(c)),
                image_ref: c.image_id.clone(),
                state: c.cri_state() as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.image_id.clone(),
            })
            .collect();
        Ok(cri::ListContainersResponse { containers })
    }
}

/// Whether a list call with these filter fields (each empty: any; ids by prefix) shows `c`.
/// A container whose create has not finished is never shown.
pub(super) fn selected(
    c: &ContainerRecord,
    id: &str,
    pod_sandbox_id: &str,
    labels: &HashMap<String, String>,
) -> bool {
    c.id.starts_with(id)
        && c.sandbox_id.starts_with(pod_sandbox_id)
        && labels
            .iter()
            .all(|(k, v)| c.config.labels.get(k) == Some(v))
        && c.cri_state() != cri::ContainerState::ContainerUnknown
}

fn image_spec(c: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: c.image_name.clone(),
        ..Default::default()
    }
}

pub(super) fn status_of(c: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: c.cri_state() as i32,
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: Some(image_spec(c)),
        image_ref: c.image_id.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: c.log_path.clone(),
        stop_signal: 0,
        resources: Some(cri::ContainerResources {
            linux: Some(
                c.config
                    .linux
                    .as_ref()
                    .and_then(|l| l.resources.clone())
                    .map(|mut r| {
                        // The swap limit concord gives the container (see oci::linux_resources).
                        if r.memory_swap_limit_in_bytes == 0
                            && crate::oci::resources::swap_accounted()
                        {
                            r.memory_swap_limit_in_bytes = r.memory_limit_in_bytes;
                        }
                        r
                    })
                    .unwrap_or_default(),
            ),
            ..Default::default()
        }),
        image_id: c.image_id.clone(),
        user: c.user.as_ref().map(|u| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: u.uid,
                gid: u.gid,
                supplemental_groups: u.groups.clone(),
            }),
        }),
    }
}
