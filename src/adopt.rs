//! Migration from containerd's CRI plugin (`concord adopt`): on a node drained of workloads,
//! removes what containerd's CRI left in concord's containerd namespace, as its own
//! StopPodSandbox + RemovePodSandbox would have: app containers (task killed, container deleted,
//! snapshot removed), then each sandbox (pause task killed, CNI DEL with the network config,
//! container id, netns, `eth0` and `K8S_POD_*` args containerd used, its netns unmounted and
//! removed, container, snapshot and sandbox-store record deleted). containerd's objects are told
//! apart by their `io.cri-containerd.kind` label; anything carrying concord's owner label is never
//! touched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::Container;
use serde::Deserialize;

use crate::config::Config;
use crate::containerd::{
    Containerd, ContainerdError, KIND_CONTAINER, KIND_LABEL, KIND_SANDBOX, OWNER_LABEL,
};
use crate::cri;
use crate::network::cni::{Attachment, Cni, CniError};
use crate::network::netns::NetnsError;

/// The container extension where containerd's CRI keeps a sandbox's metadata (typeurl JSON).
pub const SANDBOX_METADATA_EXTENSION: &str = "io.cri-containerd.sandbox.metadata";

/// How long a killed task may take to exit before its delete is tried anyway.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Why the migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// A containerd call failed.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// CNI DEL of a sandbox failed (its IP and ports may still be held).
    #[error("sandbox {id}: {source}")]
    Cni {
        id: String,
        #[source]
        source: CniError,
    },
    /// The network namespace could not be removed.
    #[error("sandbox {id}: {source}")]
    Netns {
        id: String,
        #[source]
        source: NetnsError,
    },
    /// The sandbox's metadata cannot be read, so its network cannot be torn down as it was set up.
    #[error("sandbox {id}: containerd's sandbox metadata: {message}")]
    Metadata { id: String, message: String },
    /// There are sandboxes with a network but no CNI network config to tear them down with.
    #[error("no CNI network config to release the pods' addresses with: {0}")]
    NoNetwork(String),
}

/// What was removed (ids) and what was left alone.
#[derive(Debug, Default)]
pub struct Report {
    /// App containers removed.
    pub containers: Vec<String>,
    /// Sandboxes removed: id, namespace/name, the netns removed.
    pub sandboxes: Vec<(String, String, String)>,
    /// Containers of neither concord nor containerd's CRI (no kind label): left alone.
    pub foreign: Vec<String>,
    /// concord's own containers (never touched).
    pub concords: usize,
}

/// containerd's `sandbox.Metadata`, as the CRI plugin stores it (`{"Version":"v1","Metadata":…}`).
#[derive(Debug, Deserialize)]
struct Versioned {
    #[serde(rename = "Metadata")]
    metadata: SandboxMetadata,
}

#[derive(Debug, Deserialize)]
struct SandboxMetadata {
    #[serde(rename = "Config", default)]
    config: Option<PodConfig>,
    #[serde(rename = "NetNSPath", default)]
    netns_path: String,
}

/// The parts of the CRI PodSandboxConfig (Go's JSON of the protobuf struct) the CNI DEL needs.
#[derive(Debug, Default, Deserialize)]
struct PodConfig {
    #[serde(default)]
    metadata: Option<PodMetadata>,
    #[serde(default)]
    port_mappings: Option<Vec<PortMapping>>,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
struct PodMetadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    namespace: String,
}

#[derive(Debug, Default, Deserialize)]
struct PortMapping {
    #[serde(default)]
    protocol: i32,
    #[serde(default)]
    container_port: i32,
    #[serde(default)]
    host_port: i32,
    #[serde(default)]
    host_ip: String,
}

impl PodConfig {
    /// As a CRI config, for the capability args (`portMappings`, bandwidth) concord builds.
    fn to_cri(&self) -> cri::PodSandboxConfig {
        let m = self.metadata.as_ref();
        cri::PodSandboxConfig {
            metadata: m.map(|m| cri::PodSandboxMetadata {
                name: m.name.clone(),
                uid: m.uid.clone(),
                namespace: m.namespace.clone(),
                attempt: 0,
            }),
            port_mappings: self
                .port_mappings
                .iter()
                .flatten()
                .map(|p| cri::PortMapping {
                    protocol: p.protocol,
                    container_port: p.container_port,
                    host_port: p.host_port,
                    host_ip: p.host_ip.clone(),
                })
                .collect(),
            annotations: self.annotations.clone().unwrap_or_default(),
            ..Default::default()
        }
    }
}

/// The metadata of sandbox container `c`.
fn sandbox_metadata(c: &Container) -> Result<SandboxMetadata, AdoptError> {
    let err = |message: String| AdoptError::Metadata {
        id: c.id.clone(),
        message,
    };
    let any = c
        .extensions
        .get(SANDBOX_METADATA_EXTENSION)
        .ok_or_else(|| err(format!("no {SANDBOX_METADATA_EXTENSION} extension")))?;
    let v: Versioned = serde_json::from_slice(&any.value).map_err(|e| err(e.to_string()))?;
    Ok(v.metadata)
}

/// The CNI attachment containerd's CRI made for a sandbox (the args of its `getPodCNILabels`).
fn attachment(id: &str, meta: &SandboxMetadata) -> Attachment {
    let config = meta
        .config
        .as_ref()
        .map(PodConfig::to_cri)
        .unwrap_or_default();
    let m = config.metadata.clone().unwrap_or_default();
    Attachment {
        container_id: id.to_string(),
        netns: PathBuf::from(&meta.netns_path),
        ifname: "eth0".into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), m.namespace),
            ("K8S_POD_NAME".into(), m.name),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), id.to_string()),
            ("K8S_POD_UID".into(), m.uid),
        ],
        capabilities: crate::network::capabilities::for_pod(&config, ""),
    }
}

/// Whether `path` is where containerd pins a pod netns (`…/netns/<name>`): the only files adopt
/// unmounts and removes.
fn is_netns_path(path: &Path) -> bool {
    path.is_absolute()
        && path.parent().and_then(Path::file_name) == Some("netns".as_ref())
        && !path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
}

/// Kills the task and deletes the container and its snapshot.
async fn remove_container(ctd: &Containerd, c: &Container) -> Result<(), ContainerdError> {
    ctd.end_task(&c.id, KILL_WAIT).await?;
    ctd.delete_container(&c.id).await?;
    if !c.snapshot_key.is_empty() {
        ctd.remove_snapshot(&c.snapshotter, &c.snapshot_key).await?;
    }
    Ok(())
}

/// Tears one sandbox down as containerd's StopPodSandbox + RemovePodSandbox would.
async fn remove_sandbox(
    ctd: &Containerd,
    cni: &Cni,
    network: Option<&crate::network::CniNetwork>,
    c: &Container,
    meta: &SandboxMetadata,
) -> Result<(), AdoptError> {
    let id = c.id.clone();
    ctd.end_task(&id, KILL_WAIT).await?;
    if !meta.netns_path.is_empty() {
        let a = attachment(&id, meta);
        let name = network.map(|n| n.name.clone()).unwrap_or_default();
        cni.del(network, &name, &a)
            .await
            .map_err(|source| AdoptError::Cni {
                id: id.clone(),
                source,
            })?;
        let path = Path::new(&meta.netns_path);
        if is_netns_path(path) {
            crate::network::netns::remove(path).map_err(|source| AdoptError::Netns {
                id: id.clone(),
                source,
            })?;
        }
    }
    remove_container(ctd, c).await?;
    ctd.delete_sandbox_record(&id).await?;
    Ok(())
}

/// Removes what containerd's CRI left in `config`'s containerd namespace.
pub async fn adopt(config: &Config) -> Result<Report, AdoptError> {
    let ctd = Containerd::new(
        &config.containerd.address,
        &config.containerd.namespace,
        Arc::default(),
    );
    let mut report = Report::default();
    let mut sandboxes = Vec::new();
    let mut containers = Vec::new();
    for c in ctd.list_containers(Vec::new()).await? {
        if c.labels.contains_key(OWNER_LABEL) {
            report.concords += 1;
            continue;
        }
        match c.labels.get(KIND_LABEL).map(String::as_str) {
            Some(KIND_SANDBOX) => sandboxes.push(c),
            Some(KIND_CONTAINER) => containers.push(c),
            _ => report.foreign.push(c.id),
        }
    }
    // Every sandbox's metadata first: nothing is removed when one cannot be torn down right.
    let metas = sandboxes
        .iter()
        .map(sandbox_metadata)
        .collect::<Result<Vec<_>, _>>()?;
    let network = crate::network::load_network(&config.cni.conf_dir, &config.cni.bin_dirs);
    let network = match network {
        Ok(n) => Some(n),
        Err(e) if metas.iter().any(|m| !m.netns_path.is_empty()) => {
            return Err(AdoptError::NoNetwork(e.to_string()))
        }
        Err(_) => None,
    };
    let cni = Cni::new(
        config.cni.bin_dirs.clone(),
        config.layout().cni_cache(),
        config.cni.plugin_timeout_seconds,
    );
    for c in &containers {
        remove_container(&ctd, c).await?;
        report.containers.push(c.id.clone());
    }
    for (c, meta) in sandboxes.iter().zip(&metas) {
        remove_sandbox(&ctd, &cni, network.as_ref(), c, meta).await?;
        let m = meta.config.as_ref().and_then(|p| p.metadata.as_ref());
        let pod = m.map_or(String::new(), |m| format!("{}/{}", m.namespace, m.name));
        report
            .sandboxes
            .push((c.id.clone(), pod, meta.netns_path.clone()));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON containerd 1.6's CRI stores (taken from a sandbox it ran on the dev node).
    const METADATA: &str = r#"{"Version":"v1","Metadata":{"ID":"abc","Name":"web_shop_uid-1_0",
        "Config":{"metadata":{"name":"web","uid":"uid-1","namespace":"shop"},
        "port_mappings":[{"container_port":80,"host_port":8080}],"annotations":{"a":"b"}},
        "NetNSPath":"/var/run/netns/cni-1234","IP":"10.88.0.9","AdditionalIPs":null,
        "RuntimeHandler":"","CNIResult":null,"ProcessLabel":""}}"#;

    #[test]
    fn containerds_sandbox_metadata_gives_the_cni_del_it_made_the_add_with() {
        let v: Versioned = serde_json::from_str(METADATA).unwrap();
        let a = attachment("abc", &v.metadata);
        assert_eq!(a.netns, Path::new("/var/run/netns/cni-1234"));
        assert_eq!(a.ifname, "eth0");
        assert!(a.args.contains(&("K8S_POD_NAME".into(), "web".into())));
        assert!(a
            .args
            .contains(&("K8S_POD_NAMESPACE".into(), "shop".into())));
        assert!(a
            .args
            .contains(&("K8S_POD_INFRA_CONTAINER_ID".into(), "abc".into())));
        let ports = &a.capabilities["portMappings"][0];
        assert_eq!(ports["hostPort"], 8080);
        assert_eq!(ports["containerPort"], 80);
        assert_eq!(ports["protocol"], "tcp");
    }

    #[test]
    fn only_netns_mount_points_are_removed() {
        assert!(is_netns_path(Path::new("/var/run/netns/cni-1")));
        assert!(is_netns_path(Path::new(
            "/var/lib/containerd/state/netns/x"
        )));
        for bad in [
            "/etc/passwd",
            "netns/x",
            "/var/run/netns/../../etc/x",
            "/netns",
        ] {
            assert!(!is_netns_path(Path::new(bad)), "{bad}");
        }
    }
}
