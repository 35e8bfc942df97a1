//! StartContainer, StopContainer, RemoveContainer, ReopenContainerLog: record the intent, wait
//! for the loop. Stop and Remove are idempotent; Remove of an unknown id is fine.

use std::time::Duration;

use crate::cri;

use super::{ApiError, Server};
use crate::journal::{ContainerDesired, Event, ObjectKey};
use crate::reconcile::WaitError;

impl Server {
    /// The full id of a container from an id or a unique prefix; None when unknown.
    pub fn resolve_container(&self, id: &str) -> Result<Option<String>, ApiError> {
        let state = self.journal.state();
        super::resolve_id(&state.containers, id, "container_id", "container")
    }

    /// A known container: the state it was found in and its full id (the record is in that
    /// state); NotFound otherwise.
    pub(super) fn known_container(
        &self,
        id: &str,
    ) -> Result<(std::sync::Arc<crate::journal::State>, String), ApiError> {
        let state = self.journal.state();
        super::resolve_id(&state.containers, id, "container_id", "container")?
            .map(|full| (state.clone(), full))
            .ok_or_else(|| ApiError::NotFound {
                kind: "container",
                id: id.to_string(),
            })
    }

    /// Appends `intent` for container `id` and waits for the loop to converge it.
    async fn converge_container(
        &self,
        id: &str,
        intent: Event,
        what: &str,
        deadline: Duration,
    ) -> Result<(), ApiError> {
        let state = self.record(vec![intent]).await?;
        self.await_container(id, &state, what, deadline).await
    }

    /// Waits for the loop to converge container `id` to its generation in `state`.
    async fn await_container(
        &self,
        id: &str,
        state: &crate::journal::State,
        what: &str,
        deadline: Duration,
    ) -> Result<(), ApiError> {
        let key = ObjectKey::Container(id.to_string());
        self.await_converged(&key, state.generation(&key), deadline, || {
            format!("{what} container {id}")
        })
        .await
    }

    /// [`converge_container`](Self::converge_container) for an intent whose convergence ends in
    /// a durable fact (a start's, a stop's exit): the intent is recorded without its own wait
    /// for the disk, that fact's commit takes it along, and it is durable before the answer in
    /// any case (also when the convergence failed). A crash before that loses the intent with
    /// the call unanswered; the reconciler finds what it did in containerd (a task that runs or
    /// ran is adopted; see `ContainerReconciler::adopt_lost_start`).
    async fn converge_container_to_fact(
        &self,
        id: &str,
        intent: Event,
        what: &str,
        deadline: Duration,
    ) -> Result<(), ApiError> {
        let state = self.record_with(vec![intent], false).await?;
        let converged = self.await_container(id, &state, what, deadline).await;
        self.journal.make_durable(state.seq).await?;
        converged
    }

    /// [`converge_container`](Self::converge_container) for a removal, whose own fact need not
    /// be durable (a removal done again finds nothing): the intent is published at once and
    /// made durable while the loop removes, so its commit is off the answer's path, and it is
    /// durable before the answer in any case. A crash before that leaves the call unanswered
    /// and the record without the intent (kubelet asks again; what the loop had removed is
    /// found gone).
    async fn converge_container_removal(
        &self,
        id: &str,
        intent: Event,
        deadline: Duration,
    ) -> Result<(), ApiError> {
        let state = self.record_with(vec![intent], false).await?;
        let (converged, durable) = tokio::join!(
            self.await_container(id, &state, "removing", deadline),
            self.journal.make_durable(state.seq),
        );
        durable?;
        converged
    }

    pub async fn start_container(
        &self,
        req: cri::StartContainerRequest,
        deadline: Duration,
    ) -> Result<cri::StartContainerResponse, ApiError> {
        let (state, id) = self.known_container(&req.container_id)?;
        let desired = state.containers[&id].desired;
        if desired != ContainerDesired::Created {
            return Err(ApiError::FailedPrecondition(format!(
                "container {id} is not in the created state ({desired:?})"
            )));
        }
        self.converge_container_to_fact(
            &id,
            Event::ContainerStartRequested { id: id.clone() },
            "starting",
            deadline,
        )
        .await?;
        let state = self.journal.state();
        match state.containers.get(&id) {
            Some(c) if c.reason == "StartError" => Err(ApiError::Converge {
                what: format!("starting container {id}"),
                source: WaitError::Failed(c.message.clone()),
            }),
            _ => Ok(cri::StartContainerResponse {}),
        }
    }

    pub async fn stop_container(
        &self,
        req: cri::StopContainerRequest,
        deadline: Duration,
    ) -> Result<cri::StopContainerResponse, ApiError> {
        let (_, id) = self.known_container(&req.container_id)?;
        if req.timeout < 0 {
            return Err(ApiError::invalid("timeout", "must not be negative"));
        }
        // The grace period is the caller's: the RPC may wait that long plus the kill.
        let deadline = deadline.max(Duration::from_secs(req.timeout as u64 + 15));
        self.converge_container_to_fact(
            &id,
            Event::ContainerStopRequested {
                id: id.clone(),
                timeout_seconds: req.timeout,
                requested_at: crate::api::now_nanos(),
            },
            "stopping",
            deadline,
        )
        .await?;
        Ok(cri::StopContainerResponse {})
    }

    pub async fn remove_container(
        &self,
        req: cri::RemoveContainerRequest,
        deadline: Duration,
    ) -> Result<cri::RemoveContainerResponse, ApiError> {
        if let Some(id) = self.resolve_container(&req.container_id)? {
            self.converge_container_removal(
                &id,
                Event::ContainerRemoveRequested { id: id.clone() },
                deadline,
            )
            .await?;
        }
        Ok(cri::RemoveContainerResponse {})
    }

    pub async fn update_container_resources(
        &self,
        req: cri::UpdateContainerResourcesRequest,
        deadline: Duration,
    ) -> Result<cri::UpdateContainerResourcesResponse, ApiError> {
        let (state, id) = self.known_container(&req.container_id)?;
        let Some(resources) = req.linux else {
            return Ok(cri::UpdateContainerResourcesResponse {});
        };
        crate::oci::resources::check_resources("linux", &resources)?;
        if state.containers[&id].cri_state() == cri::ContainerState::ContainerExited {
            return Err(ApiError::FailedPrecondition(format!(
                "container {id} has exited; its resources cannot change"
            )));
        }
        self.converge_container(
            &id,
            Event::ContainerResourcesUpdated {
                id: id.clone(),
                resources: Box::new(resources),
            },
            "updating the resources of",
            deadline,
        )
        .await?;
        Ok(cri::UpdateContainerResourcesResponse {})
    }

    pub async fn reopen_container_log(
        &self,
        req: cri::ReopenContainerLogRequest,
    ) -> Result<cri::ReopenContainerLogResponse, ApiError> {
        let (state, id) = self.known_container(&req.container_id)?;
        let c = &state.containers[&id];
        if c.cri_state() != cri::ContainerState::ContainerRunning {
            return Err(ApiError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        if c.log_path.is_empty() {
            return Ok(cri::ReopenContainerLogResponse {});
        }
        // The new file exists when this answers; the writer appends to it from its next line.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&c.log_path)
                .map_err(|e| {
                    ApiError::FailedPrecondition(format!("creating {}: {e}", c.log_path))
                })?;
        }
        // concord copies this one's output itself.
        if self.attachments.reopen(&id) {
            return Ok(cri::ReopenContainerLogResponse {});
        }
        let pidfile = self.config.layout().log_writer_pidfile(&id);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::FailedPrecondition(format!("container {id} has no log writer"))
            })?;
        // The pid file outlives its writer (a crash, a reboot): only a process that is this
        // container's log writer (a log-writer command line naming this container's pid file,
        // whose path holds the id) is signalled, never whatever process reuses the pid.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ours = crate::logwriter::is_invocation(args.get(1..).unwrap_or_default())
            && args.iter().any(|a| a.contains(id.as_str()));
        if !ours {
            return Err(ApiError::FailedPrecondition(format!(
                "container {id}'s log writer (pid {pid}) is not running"
            )));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .map_err(|e| ApiError::FailedPrecondition(format!("signalling the log writer: {e}")))?;
        Ok(cri::ReopenContainerLogResponse {})
    }
}
