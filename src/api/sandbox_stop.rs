//! StopPodSandbox and RemovePodSandbox: record the intent, wait for the loop; unknown ids are fine.

use std::time::Duration;

use crate::cri;

use super::{ApiError, Server};
use crate::journal::{Event, ObjectKey};

impl Server {
    pub async fn stop_pod_sandbox(
        &self,
        req: cri::StopPodSandboxRequest,
        deadline: Duration,
    ) -> Result<cri::StopPodSandboxResponse, ApiError> {
        let id = self.resolve_sandbox(&req.pod_sandbox_id)?;
        if let Some(id) = id {
            // The pod's containers stop with it (kubelet stopped them gracefully already).
            let mut intents: Vec<Event> = self
                .journal
                .state()
                .containers_of(&id)
                .map(|c| Event::ContainerStopRequested {
                    id: c.id.clone(),
                    timeout_seconds: 0,
                    requested_at: crate::api::now_nanos(),
                })
                .collect();
            intents.push(Event::SandboxStopRequested { id: id.clone() });
            self.converge_sandbox(&id, intents, "stopping", deadline)
                .await?;
        }
        Ok(cri::StopPodSandboxResponse {})
    }

    pub async fn remove_pod_sandbox(
        &self,
        req: cri::RemovePodSandboxRequest,
        deadline: Duration,
    ) -> Result<cri::RemovePodSandboxResponse, ApiError> {
        let id = self.resolve_sandbox(&req.pod_sandbox_id)?;
        if let Some(id) = id {
            // The pod's containers go with it.
            let mut intents: Vec<Event> = self
                .journal
                .state()
                .containers_of(&id)
                .map(|c| Event::ContainerRemoveRequested { id: c.id.clone() })
                .collect();
            intents.push(Event::SandboxRemoveRequested { id: id.clone() });
            self.converge_sandbox(&id, intents, "removing", deadline)
                .await?;
        }
        Ok(cri::RemovePodSandboxResponse {})
    }

    /// The full id of a sandbox from an id or a unique prefix; None when unknown.
    pub fn resolve_sandbox(&self, id: &str) -> Result<Option<String>, ApiError> {
        let state = self.journal.state();
        super::resolve_id(&state.sandboxes, id, "pod_sandbox_id", "sandbox")
    }

    /// The full id of a known sandbox from an id or a unique prefix; NotFound when unknown.
    pub fn known_sandbox(&self, id: &str) -> Result<String, ApiError> {
        self.resolve_sandbox(id)?.ok_or_else(|| ApiError::NotFound {
            kind: "pod sandbox",
            id: id.to_string(),
        })
    }

    /// Appends `intents` (the sandbox's last), then waits for the pod's containers and the
    /// sandbox to converge them.
    async fn converge_sandbox(
        &self,
        id: &str,
        intents: Vec<Event>,
        what: &str,
        deadline: Duration,
    ) -> Result<(), ApiError> {
        let key = ObjectKey::Sandbox(id.to_string());
        let state = self.record(intents).await?;
        let started = std::time::Instant::now();
        for c in state.containers_of(id) {
            let ckey = ObjectKey::Container(c.id.clone());
            let left = deadline.saturating_sub(started.elapsed());
            self.await_converged(&ckey, c.generation, left, || {
                format!("{what} container {} of pod sandbox {id}", c.id)
            })
            .await?;
        }
        let left = deadline.saturating_sub(started.elapsed());
        self.await_converged(&key, state.generation(&key), left, || {
            format!("{what} pod sandbox {id}")
        })
        .await
    }
}
