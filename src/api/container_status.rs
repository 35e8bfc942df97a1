//! ContainerStatus and ListContainers, answered from the journal's state.

use std::collections::HashMap;

use crate::cri;

use super::{ApiError, Server};
use crate::image::index::{ImageIndex, ImageRecord};
use crate::journal::{ContainerRecord, ObjectKey};
use crate::oci::signal;

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
        Ok(cri::ContainerStatusResponse {
            status: Some(status_of(c, &self.images.index())),
            info,
        })
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

/// The ImageSpec the container was created with (kubelet's: an image id or reference).
pub(super) fn config_image(c: &ContainerRecord) -> cri::ImageSpec {
    c.config.image.clone().unwrap_or_else(|| cri::ImageSpec {
        image: c.image_name.clone(),
        ..Default::default()
    })
}

/// The status's image and image_ref, as containerd's ContainerStatus: the image's first repo
/// tag (else the ImageSpec it was created with), and its first repo digest (kubelet's pod
/// `imageID`; else the image id). `ImageSpec.image_ref` carries the same digested reference.
fn status_image(c: &ContainerRecord, image: Option<&ImageRecord>) -> (cri::ImageSpec, String) {
    let mut spec = config_image(c);
    let mut image_ref = c.image_id.clone();
    if let Some(img) = image {
        if let Some(tag) = img.repo_tags().into_iter().next() {
            spec = cri::ImageSpec {
                image: tag,
                ..Default::default()
            };
        }
        if let Some(digest) = img.repo_digests().into_iter().next() {
            image_ref = digest;
        }
    }
    spec.image_ref = image_ref.clone();
    (spec, image_ref)
}

/// The CRI status of `c`; `images` names its image and gives the image's stop signal.
pub(super) fn status_of(c: &ContainerRecord, images: &ImageIndex) -> cri::ContainerStatus {
    let image = images.find(&c.image_id);
    let (image_spec, image_ref) = status_image(c, image);
    let (stop_signal, _) = signal::stop_signal(&c.config, image.map(|i| &i.resolved.config));
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: c.cri_state() as i32,
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: Some(image_spec),
        image_ref,
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: c.log_path.clone(),
        stop_signal: stop_signal as i32,
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
