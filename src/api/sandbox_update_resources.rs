//! UpdatePodSandboxResources: the kubelet resized the pod cgroup and tells the runtime the new
//! pod-level overhead and resources. Recorded in the pod's config (PodSandboxStatus verbose info,
//! `concord inspect`), then the loop writes them to the pod's cgroup when it exists.

use std::time::Duration;

use crate::cri;

use super::{ApiError, Server};
use crate::journal::{Event, ObjectKey, SandboxDesired};

impl Server {
    pub async fn update_pod_sandbox_resources(
        &self,
        req: cri::UpdatePodSandboxResourcesRequest,
        deadline: Duration,
    ) -> Result<cri::UpdatePodSandboxResourcesResponse, ApiError> {
        let id = self.known_sandbox(&req.pod_sandbox_id)?;
        if let Some(o) = &req.overhead {
            crate::oci::resources::check_resources("overhead", o)?;
        }
        if let Some(r) = &req.resources {
            crate::oci::resources::check_resources("resources", r)?;
        }
        if req.overhead.is_none() && req.resources.is_none() {
            return Ok(cri::UpdatePodSandboxResourcesResponse {});
        }
        // (Looked up again: a removal may have ended the record since.)
        let desired = self.journal.state().sandboxes.get(&id).map(|s| s.desired);
        if desired.is_none_or(|d| d == SandboxDesired::Removed) {
            return Err(ApiError::FailedPrecondition(format!(
                "pod sandbox {id} is being removed; its resources cannot change"
            )));
        }
        let key = ObjectKey::Sandbox(id.clone());
        let state = self
            .record(vec![Event::SandboxResourcesUpdated {
                id: id.clone(),
                overhead: req.overhead.map(Box::new),
                resources: req.resources.map(Box::new),
            }])
            .await?;
        self.await_converged(&key, state.generation(&key), deadline, || {
            format!("updating the resources of pod sandbox {id}")
        })
        .await?;
        Ok(cri::UpdatePodSandboxResourcesResponse {})
    }
}
