//! PodSandboxStatus and ListPodSandbox, answered from the journal's state.

use std::collections::HashMap;

use k8s_cri::v1 as cri;

use super::{ApiError, Runtime};
use crate::journal::{ObjectKey, SandboxRecord};

impl Runtime {
    pub async fn pod_sandbox_status(
        &self,
        req: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse, ApiError> {
        let id = self
            .resolve_sandbox(&req.pod_sandbox_id)?
            .ok_or_else(|| ApiError::NotFound {
                kind: "pod sandbox",
                id: req.pod_sandbox_id.clone(),
            })?;
        let state = self.journal.state();
        let rec = state.sandboxes.get(&id).ok_or_else(|| ApiError::NotFound {
            kind: "pod sandbox",
            id: id.clone(),
        })?;
        let mut info = HashMap::new();
        if req.verbose {
            info.insert(
                "info".to_string(),
                serde_json::json!({
                    "pid": rec.pid, "netnsPath": rec.netns_path, "runtimeHandler": rec.runtime_handler,
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

pub(super) fn status_of(s: &SandboxRecord) -> cri::PodSandboxStatus {
    let options = s
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|c| c.namespace_options.clone());
    cri::PodSandboxStatus {
        id: s.id.clone(),
        metadata: s.config.metadata.clone(),
        state: state_of(s) as i32,
        created_at: s.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: s.ips.first().cloned().unwrap_or_default(),
            additional_ips: s
                .ips
                .iter()
                .skip(1)
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
