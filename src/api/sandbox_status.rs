//! PodSandboxStatus and ListPodSandbox, answered from the journal's state.

use std::collections::HashMap;

use crate::cri;

use super::{ApiError, Server};
use crate::journal::{ObjectKey, SandboxRecord};

impl Server {
    pub async fn pod_sandbox_status(
        &self,
        req: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse, ApiError> {
        let id = self.known_sandbox(&req.pod_sandbox_id)?;
        let state = self.journal.state();
        let rec = state.sandboxes.get(&id).ok_or_else(|| ApiError::NotFound {
            kind: "pod sandbox",
            id: id.clone(),
        })?;
        let mut info = HashMap::new();
        if req.verbose {
            let ready = rec.ready();
            info.insert(
                "info".to_string(),
                serde_json::json!({
                    "pid": if ready { rec.pid.unwrap_or(0) } else { 0 },
                    "processStatus": if ready { "running" } else if rec.exited || rec.stopped { "deleted" } else { "created" },
                    "netnsPath": rec.netns_path, "netNamespaceClosed": rec.stopped,
                    "image": self.config.sandbox_image,
                    "runtimeHandler": rec.runtime_handler, "runtimeType": self.runtime_type_of(&rec.id),
                    "snapshotKey": rec.id, "snapshotter": self.config.containerd.snapshotter,
                    "desired": rec.desired, "config": rec.config,
                    "reconcile": self.controller.object(&ObjectKey::Sandbox(id.clone())).map(|o| o.info()),
                })
                .to_string(),
            );
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(status_of(rec)),
            info,
            containers_statuses: vec![],
            timestamp: 0,
        })
    }

    pub async fn list_pod_sandbox(
        &self,
        req: cri::ListPodSandboxRequest,
    ) -> Result<cri::ListPodSandboxResponse, ApiError> {
        let state = self.journal.state();
        let f = req.filter.unwrap_or_default();
        let items = state
            .sandboxes
            .values()
            .filter(|s| f.id.is_empty() || s.id.starts_with(&f.id))
            .filter(|s| {
                f.state
                    .as_ref()
                    .is_none_or(|v| v.state == state_of(s) as i32)
            })
            .filter(|s| {
                f.label_selector
                    .iter()
                    .all(|(k, v)| s.config.labels.get(k) == Some(v))
            })
            .map(|s| cri::PodSandbox {
                id: s.id.clone(),
                metadata: s.config.metadata.clone(),
                state: state_of(s) as i32,
                created_at: s.created_at,
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: s.runtime_handler.clone(),
            })
            .collect();
        Ok(cri::ListPodSandboxResponse { items })
    }
}

fn state_of(s: &SandboxRecord) -> cri::PodSandboxState {
    if s.ready() {
        cri::PodSandboxState::SandboxReady
    } else {
        cri::PodSandboxState::SandboxNotready
    }
}

impl Server {
    /// The containerd runtime (shim) of pod `sandbox_id`'s handler ("" when unknown).
    pub(super) fn runtime_type_of(&self, sandbox_id: &str) -> String {
        let state = self.journal.state();
        state
            .sandboxes
            .get(sandbox_id)
            .and_then(|s| self.config.runtime.handler(&s.runtime_handler))
            .map(|h| h.runtime_type.clone())
            .unwrap_or_default()
    }
}

pub(super) fn status_of(s: &SandboxRecord) -> cri::PodSandboxStatus {
    let options = s
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|c| c.namespace_options.clone())
        // The modes a pod without options gets (all POD), spelled out as containerd does.
        .or_else(|| Some(cri::NamespaceOption::default()));
    cri::PodSandboxStatus {
        id: s.id.clone(),
        metadata: s.config.metadata.clone(),
        state: state_of(s) as i32,
        created_at: s.created_at,
        // A stopped pod's network is torn down: no address (as containerd).
        network: Some(cri::PodSandboxNetworkStatus {
            ip: s
                .ips
                .first()
                .filter(|_| !s.stopped)
                .cloned()
                .unwrap_or_default(),
            additional_ips: s
                .ips
                .iter()
                .skip(1)
                .filter(|_| !s.stopped)
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace { options }),
        }),
        labels: s.config.labels.clone(),
        annotations: s.config.annotations.clone(),
        runtime_handler: s.runtime_handler.clone(),
    }
}
