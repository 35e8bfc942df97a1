//! Status: RuntimeReady while containerd answers, NetworkReady while a usable CNI config is
//! loaded; verbose info carries the effective config. Answered from memory.

use std::collections::HashMap;

use k8s_cri::v1 as cri;

use super::{ApiError, Runtime};
use crate::network::NetworkStatus;

/// Condition types kubelet reads.
pub const RUNTIME_READY: &str = "RuntimeReady";
pub const NETWORK_READY: &str = "NetworkReady";

impl Runtime {
    pub async fn status(&self, req: cri::StatusRequest) -> Result<cri::StatusResponse, ApiError> {
        let health = self.health.borrow().clone();
        let runtime = cri::RuntimeCondition {
            r#type: RUNTIME_READY.into(),
            status: health.ready,
            reason: if health.ready {
                String::new()
            } else {
                "ContainerdNotReady".into()
            },
            message: health.message.clone(),
        };
        let net = self.network.status();
        let network = match &net {
            NetworkStatus::Ready(_) => cri::RuntimeCondition {
                r#type: NETWORK_READY.into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            NetworkStatus::NotReady(why) => cri::RuntimeCondition {
                r#type: NETWORK_READY.into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("Network plugin returns error: {why}"),
            },
        };
        let mut info = HashMap::new();
        if req.verbose {
            let config = serde_json::to_string(&self.config).unwrap_or_default();
            info.insert("config".into(), config);
            info.insert(
                "containerd".into(),
                serde_json::json!({
                    "address": self.containerd.address(),
                    "namespace": self.containerd.namespace(),
                    "ready": health.ready,
                    "version": health.version,
                })
                .to_string(),
            );
            let cni = match &net {
                NetworkStatus::Ready(n) => serde_json::json!({
                    "file": n.file,
                    "name": n.name,
                    "cniVersion": n.cni_version,
                    "plugins": n.plugins,
                    "podCIDR": self.network.pod_cidr(),
                }),
                NetworkStatus::NotReady(why) => serde_json::json!({ "error": why }),
            };
            info.insert("cniconfig".into(), cni.to_string());
            let j = self.journal.stats();
            info.insert(
                "journal".into(),
                serde_json::json!({
                    "path": j.path,
                    "lastSeq": j.last_seq,
                    "snapshotSeq": j.snapshot_seq,
                    "eventsSinceSnapshot": j.events_since_snapshot,
                })
                .to_string(),
            );
        }
        let handler = |name: &str| cri::RuntimeHandler {
            name: name.into(),
            features: Some(cri::RuntimeHandlerFeatures {
                recursive_read_only_mounts: false,
                user_namespaces: false,
            }),
        };
        Ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![runtime, network],
            }),
            info,
            runtime_handlers: vec![handler(""), handler("runc")],
            features: None,
        })
    }
}
