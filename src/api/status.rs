//! Status: RuntimeReady while containerd answers, NetworkReady while a usable CNI config is
//! loaded; verbose info carries the effective config. Answered from memory.

use std::collections::HashMap;

use crate::cri;

use super::{ApiError, Server};
use crate::containerd::Health;
use crate::network::NetworkStatus;

/// Condition types kubelet reads.
pub const RUNTIME_READY: &str = "RuntimeReady";
pub const NETWORK_READY: &str = "NetworkReady";

impl Server {
    /// The effective config as verbose Status shows it: concord's settings, plus the keys
    /// kubeadm and operators read from containerd's (`sandboxImage`, `registry.configPath`, ...).
    fn config_info(&self) -> serde_json::Value {
        let c = &self.config;
        let mut v = serde_json::to_value(c).unwrap_or_default();
        let systemd = c.runtime.systemd_cgroup();
        let runtimes: serde_json::Map<String, serde_json::Value> = c
            .runtime
            .handlers
            .iter()
            .map(|(name, h)| {
                let options = serde_json::json!({
                    "BinaryName": h.binary_name, "Root": h.root, "SystemdCgroup": systemd,
                });
                (
                    name.clone(),
                    serde_json::json!({"runtimeType": h.runtime_type, "options": options}),
                )
            })
            .collect();
        // The address the streaming server really listens on (the setting may say port 0).
        let bound = self.stream.base_url().split("://").nth(1).unwrap_or("");
        let (stream_host, stream_port) = bound
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.to_string()))
            .unwrap_or_else(|| (c.stream_address.to_string(), String::new()));
        if let Some(m) = v.as_object_mut() {
            let compat = serde_json::json!({
                "sandboxImage": c.sandbox_image,
                // containerd 2.x's spelling of the same (`[plugins.'io.containerd.cri.v1.images'.pinned_images]`).
                "pinned_images": {"sandbox": c.sandbox_image},
                "registry": {"configPath": crate::config::joined_paths(&c.registry_config_path)},
                "cni": {
                    "binDir": c.cni.bin_dirs.first(),
                    "binDirs": c.cni.bin_dirs,
                    "confDir": c.cni.conf_dir,
                    "maxConfNum": 1,
                },
                "containerd": {
                    "snapshotter": c.containerd.snapshotter,
                    "defaultRuntimeName": c.runtime.default_handler,
                    "address": c.containerd.address,
                    "namespace": c.containerd.namespace,
                    "runtimes": runtimes,
                },
                "systemdCgroup": systemd,
                "enableSelinux": false,
                "streamServerAddress": stream_host,
                "streamServerPort": stream_port,
                "streamIdleTimeout": format!("{}s", c.stream_idle_timeout_seconds.as_secs()),
                "statsCollectPeriod": c.stats.interval_seconds.as_secs(),
                "enableTLSStreaming": c.stream_tls_cert_file.is_some(),
                "x509KeyPairStreaming": {
                    "tlsCertFile": c.stream_tls_cert_file,
                    "tlsKeyFile": c.stream_tls_key_file,
                },
                "maxContainerLogSize": crate::logwriter::MAX_LINE,
                "maxConcurrentDownloads": c.image.max_concurrent_downloads,
                "imagePullProgressTimeout": format!("{}s", c.image.pull_progress_timeout_seconds.as_secs()),
                "disableCgroup": false,
                "rootDir": c.state_dir,
                "stateDir": c.state_dir,
                "containerdEndpoint": c.containerd.address,
            });
            for (k, val) in compat.as_object().into_iter().flatten() {
                match (m.get_mut(k), val) {
                    // concord's own table of the same name keeps its keys; containerd's are added.
                    (Some(serde_json::Value::Object(own)), serde_json::Value::Object(extra)) => {
                        for (ek, ev) in extra {
                            own.entry(ek.clone()).or_insert(ev.clone());
                        }
                    }
                    _ => {
                        m.insert(k.clone(), val.clone());
                    }
                }
            }
        }
        v
    }

    pub async fn status(&self, req: cri::StatusRequest) -> Result<cri::StatusResponse, ApiError> {
        let health = self.health.current();
        let net = self.network.status();
        let conditions = vec![self.runtime_condition(&health), network_condition(&net)];
        let info = match req.verbose {
            true => self.verbose_info(&health, &net),
            false => HashMap::new(),
        };
        Ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers: runtime_handlers(self.config.runtime.handlers.keys()),
            features: Some(cri::RuntimeFeatures {
                // ContainerUser is reported and Strict leaves the image's groups out.
                supplemental_groups_policy: true,
                user_namespaces_host_network: false,
            }),
        })
    }

    /// Not ready while containerd is not, or while the journal takes no writes (no intent
    /// could be recorded: kubelet must not send pods here).
    fn runtime_condition(&self, health: &Health) -> cri::RuntimeCondition {
        let (status, reason, message) = match (health.ready, self.journal.failing()) {
            (false, _) => (false, "ContainerdNotReady", health.message.clone()),
            (true, Some(why)) => (false, "JournalWriteFailed", why),
            (true, None) => (true, "", health.message.clone()),
        };
        cri::RuntimeCondition {
            r#type: RUNTIME_READY.into(),
            status,
            reason: reason.into(),
            message,
        }
    }

    /// Status(verbose).info: containerd's keys kubeadm and operators read, and concord's own.
    fn verbose_info(&self, health: &Health, net: &NetworkStatus) -> HashMap<String, String> {
        let mut info = HashMap::new();
        info.insert("config".into(), self.config_info().to_string());
        let containerd = serde_json::json!({
            "address": self.containerd.address(),
            "namespace": self.containerd.namespace(),
            "ready": health.ready,
            "version": health.version,
        });
        info.insert("containerd".into(), containerd.to_string());
        let (cni, load_status) = self.cni_info(net);
        info.insert("cniconfig".into(), cni.to_string());
        info.insert("lastCNILoadStatus".into(), load_status.clone());
        info.insert("lastCNILoadStatus.default".into(), load_status);
        let (objects, pending, failing) = self.controller.health();
        let reconcile = serde_json::json!({
            "objects": objects,
            "pending": pending,
            "failing": failing,
            "workers": self.config.reconcile.workers,
        });
        info.insert("reconcile".into(), reconcile.to_string());
        let j = self.journal.stats();
        let journal = serde_json::json!({
            "path": j.path,
            "lastSeq": j.last_seq,
            "snapshotSeq": j.snapshot_seq,
            "eventsSinceSnapshot": j.events_since_snapshot,
            "unflushedFacts": j.unflushed,
        });
        info.insert("journal".into(), journal.to_string());
        info
    }

    /// `cniconfig` in containerd's shape (PluginDirs, PluginConfDir, Networks, ...) with
    /// concord's keys, and `lastCNILoadStatus`.
    fn cni_info(&self, net: &NetworkStatus) -> (serde_json::Value, String) {
        let mut cni = serde_json::json!({
            "PluginDirs": self.config.cni.bin_dirs,
            "PluginConfDir": self.config.cni.conf_dir,
            "PluginMaxConfNum": 1,
            "Prefix": "eth",
            "Networks": [],
        });
        let n = match net {
            NetworkStatus::Ready(n) => n,
            NetworkStatus::NotReady(why) => {
                cni["error"] = serde_json::json!(why);
                return (cni, format!("cni config load failed: {why}"));
            }
        };
        let plugins: Vec<_> = n
            .plugins
            .iter()
            .map(|p| serde_json::json!({"Network": p, "Source": p.to_string()}))
            .collect();
        let source = serde_json::json!({
            "cniVersion": n.cni_version, "name": n.name, "plugins": n.plugins,
        })
        .to_string();
        // The pod's loopback comes first, as containerd lists it (concord brings `lo` up
        // itself when it makes the netns).
        let lo = serde_json::json!({"type": "loopback"});
        cni["Networks"] = serde_json::json!([
            {
                "Config": {"Name": "cni-loopback", "CNIVersion": n.cni_version,
                    "Plugins": [{"Network": lo, "Source": lo.to_string()}],
                    "Source": serde_json::json!({"cniVersion": n.cni_version, "name": "cni-loopback", "plugins": [lo]}).to_string()},
                "IFName": "lo",
            },
            {
                "Config": {"Name": n.name, "CNIVersion": n.cni_version, "Plugins": plugins, "Source": source},
                "IFName": "eth0",
            },
        ]);
        cni["file"] = serde_json::json!(n.file);
        cni["name"] = serde_json::json!(n.name);
        cni["cniVersion"] = serde_json::json!(n.cni_version);
        cni["plugins"] = serde_json::json!(n.plugins);
        cni["podCIDR"] = serde_json::json!(self.network.pod_cidr());
        (cni, "OK".to_string())
    }
}

/// The default handler ("") and each configured one, with what each supports: no recursive
/// read-only mounts (runc 1.1 has no `rro` option), pod user namespaces (`oci::userns`: runc
/// makes them, concord shifts the root file systems' owners).
fn runtime_handlers<'a>(names: impl Iterator<Item = &'a String>) -> Vec<cri::RuntimeHandler> {
    std::iter::once("")
        .chain(names.map(String::as_str))
        .map(|name| cri::RuntimeHandler {
            name: name.into(),
            features: Some(cri::RuntimeHandlerFeatures {
                recursive_read_only_mounts: false,
                user_namespaces: true,
            }),
        })
        .collect()
}

/// NetworkReady as kubelet reads it (containerd's reason and message wording).
fn network_condition(net: &NetworkStatus) -> cri::RuntimeCondition {
    let (status, reason, message) = match net {
        NetworkStatus::Ready(_) => (true, "", String::new()),
        NetworkStatus::NotReady(why) => (
            false,
            "NetworkPluginNotReady",
            format!("Network plugin returns error: {why}"),
        ),
    };
    cri::RuntimeCondition {
        r#type: NETWORK_READY.into(),
        status,
        reason: reason.into(),
        message,
    }
}
