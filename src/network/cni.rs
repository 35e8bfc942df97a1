//! CNI, the runtime side: executes the plugins of a network config list with the `CNI_*`
//! environment (the CNI contract; the only programs concord runs), chains `prevResult`, passes
//! runtime config for the capabilities each plugin declares, bounds every call with a timeout,
//! runs DEL in reverse order, and caches the ADD result on disk so a DEL works after a restart, a
//! reboot or a config change.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

use super::cni_config::{find_plugin, CniNetwork};
use crate::metrics::Metrics;

/// One attachment of a sandbox to a network.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// CNI_CONTAINERID: the sandbox id.
    pub container_id: String,
    /// CNI_NETNS: the namespace path.
    pub netns: PathBuf,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_ARGS pairs (K8S_POD_NAMESPACE, K8S_POD_NAME, ...).
    pub args: Vec<(String, String)>,
    /// Runtime config by capability (`portMappings`, `bandwidth`, `dns`, `ips`, ...).
    pub capabilities: Map<String, Value>,
}

/// Why a CNI call failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The plugin binary is not in any bin dir.
    #[error("CNI {command} on network {network}: plugin {plugin} not found in {dirs}")]
    NoPlugin {
        command: &'static str,
        network: String,
        plugin: String,
        dirs: String,
    },
    /// The plugin failed (its error message and code).
    #[error("CNI {command} on network {network}: plugin {plugin} failed: {message}")]
    Plugin {
        command: &'static str,
        network: String,
        plugin: String,
        message: String,
    },
    /// The plugin did not answer in time (it was killed).
    #[error("CNI {command} on network {network}: plugin {plugin} did not finish within {after:?}; killed")]
    Timeout {
        command: &'static str,
        network: String,
        plugin: String,
        after: Duration,
    },
    /// The result cache could not be written or read.
    #[error("CNI result cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs plugins for one node.
pub struct Cni {
    bin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
    timeout: Duration,
    metrics: Option<Arc<Metrics>>,
}

impl Cni {
    pub fn new(bin_dirs: Vec<PathBuf>, cache_dir: PathBuf, timeout: Duration) -> Cni {
        Cni {
            bin_dirs,
            cache_dir,
            timeout,
            metrics: None,
        }
    }

    /// Counts and times every plugin call in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Cni {
        self.metrics = Some(metrics);
        self
    }

    /// Container ids with a cached ADD result on interface `ifname`.
    pub fn cached_ids(&self, ifname: &str) -> Vec<String> {
        let suffix = format!("-{ifname}.json");
        std::fs::read_dir(&self.cache_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().into_string().ok()?;
                        let stem = name.strip_suffix(&suffix)?;
                        Some(stem.rsplit('-').next()?.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The cached ADD of `a`: under `network`, else under whatever network it was made with
    /// (the config changed or is gone since; the DEL must still undo it).
    fn find_cache(&self, network: &str, a: &Attachment) -> PathBuf {
        let path = self.cache_path(network, a);
        if path.exists() {
            return path;
        }
        let suffix = format!("-{}-{}.json", a.container_id, a.ifname);
        std::fs::read_dir(&self.cache_dir)
            .ok()
            .and_then(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(&suffix))
                })
            })
            .unwrap_or(path)
    }

    fn cache_path(&self, network: &str, a: &Attachment) -> PathBuf {
        self.cache_dir
            .join(format!("{network}-{}-{}.json", a.container_id, a.ifname))
    }

    /// ADD through the chain; answers the final result (also cached).
    pub async fn add(&self, net: &CniNetwork, a: &Attachment) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &net.plugins {
            let conf = self.plugin_config(net, plugin, prev.as_ref(), a);
            let out = self.exec("ADD", net, plugin, &conf, a).await?;
            prev = Some(out);
        }
        let result = prev.unwrap_or(Value::Null);
        let path = self.cache_path(&net.name, a);
        let cached = json!({
            "kind": "cniCacheV1",
            "containerId": a.container_id,
            "ifName": a.ifname,
            "networkName": net.name,
            "config": {"name": net.name, "cniVersion": net.cni_version, "plugins": net.plugins},
            "capabilities": a.capabilities,
            "result": result,
        });
        crate::fsutil::write_atomic(&path, cached.to_string().as_bytes()).map_err(|source| {
            CniError::Cache {
                path: path.clone(),
                source,
            }
        })?;
        Ok(result)
    }

    /// DEL in reverse order, with the cached config and result when there is one (so it works
    /// after a restart or a config change), else with `net`. Missing pieces are not errors.
    pub async fn del(
        &self,
        net: Option<&CniNetwork>,
        network_name: &str,
        a: &Attachment,
    ) -> Result<(), CniError> {
        let path = self.find_cache(network_name, a);
        let cached: Option<Value> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let from_cache = cached.as_ref().and_then(|c| {
            let conf = c.get("config")?;
            Some(CniNetwork {
                file: path.clone(),
                name: conf.get("name")?.as_str()?.to_string(),
                cni_version: conf.get("cniVersion")?.as_str()?.to_string(),
                plugins: conf.get("plugins")?.as_array()?.clone(),
            })
        });
        let Some(net) = from_cache.as_ref().or(net) else {
            return Ok(()); // never attached, nothing known: nothing to undo
        };
        let prev = cached
            .as_ref()
            .and_then(|c| c.get("result").cloned())
            .filter(|r| !r.is_null());
        let mut a = a.clone();
        if let Some(caps) = cached
            .as_ref()
            .and_then(|c| c.get("capabilities"))
            .and_then(Value::as_object)
        {
            a.capabilities = caps.clone();
        }
        for plugin in net.plugins.iter().rev() {
            let conf = self.plugin_config(net, plugin, prev.as_ref(), &a);
            self.exec("DEL", net, plugin, &conf, &a).await?;
        }
        // A cache write a crash interrupted leaves its temporary file.
        let _ = std::fs::remove_file(path.with_extension("tmp"));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Cache { path, source }),
        }
    }

    /// Whether an ADD result is cached for this attachment.
    pub fn cached(&self, network_name: &str, a: &Attachment) -> bool {
        self.cache_path(network_name, a).exists()
    }

    /// The cached ADD result for this attachment.
    pub fn cached_result(&self, network_name: &str, a: &Attachment) -> Option<Value> {
        let bytes = std::fs::read(self.cache_path(network_name, a)).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        v.get("result").cloned().filter(|r| !r.is_null())
    }

    /// One plugin's stdin: its config, the list's name and version, prevResult, runtimeConfig.
    fn plugin_config(
        &self,
        net: &CniNetwork,
        plugin: &Value,
        prev: Option<&Value>,
        a: &Attachment,
    ) -> Value {
        let mut conf = plugin.as_object().cloned().unwrap_or_default();
        conf.insert("name".into(), json!(net.name));
        conf.insert("cniVersion".into(), json!(net.cni_version));
        if let Some(p) = prev {
            conf.insert("prevResult".into(), p.clone());
        }
        let declared = plugin.get("capabilities").and_then(Value::as_object);
        let mut rc = Map::new();
        for (cap, value) in &a.capabilities {
            if declared.is_some_and(|d| d.get(cap).and_then(Value::as_bool) == Some(true)) {
                rc.insert(cap.clone(), value.clone());
            }
        }
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        Value::Object(conf)
    }

    async fn exec(
        &self,
        command: &'static str,
        net: &CniNetwork,
        plugin: &Value,
        conf: &Value,
        a: &Attachment,
    ) -> Result<Value, CniError> {
        let start = std::time::Instant::now();
        let kind = plugin.get("type").and_then(Value::as_str).unwrap_or("");
        let span = tracing::debug_span!("cni", command, network = %net.name, plugin = kind);
        let out = self
            .run_plugin(command, net, plugin, conf, a)
            .instrument(span.clone())
            .await;
        let result = match &out {
            Ok(_) => "ok",
            Err(CniError::Timeout { .. }) => "timeout",
            Err(_) => "error",
        };
        let elapsed = start.elapsed();
        span.in_scope(|| match &out {
            Ok(v) => tracing::debug!(
                result,
                ?elapsed,
                ips = (command == "ADD").then(|| ips_of(v).join(",")),
                "cni plugin call"
            ),
            Err(error) => tracing::debug!(result, ?elapsed, %error, "cni plugin call"),
        });
        if let Some(m) = &self.metrics {
            m.cni_calls
                .with_label_values(&[kind, command, result])
                .inc();
            m.cni_duration
                .with_label_values(&[kind, command])
                .observe(elapsed.as_secs_f64());
        }
        out
    }

    async fn run_plugin(
        &self,
        command: &'static str,
        net: &CniNetwork,
        plugin: &Value,
        conf: &Value,
        a: &Attachment,
    ) -> Result<Value, CniError> {
        let kind = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let dirs = self
            .bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let bin = find_plugin(&kind, &self.bin_dirs).ok_or_else(|| CniError::NoPlugin {
            command,
            network: net.name.clone(),
            plugin: kind.clone(),
            dirs: dirs.clone(),
        })?;
        let args = a
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        // A plugin's words reach logs, history and spans: at most 4 KiB of them.
        let failed = |message: String| CniError::Plugin {
            command,
            network: net.name.clone(),
            plugin: kind.clone(),
            message: crate::fsutil::truncate_utf8(message, 4096),
        };
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &a.container_id)
            .env("CNI_NETNS", &a.netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", &dirs)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: between fork and exec the child only calls prctl(2), which is
        // async-signal-safe; it allocates nothing and touches no lock.
        // A plugin must not outlive a concord that is killed: a restarted concord redoes the call,
        // and two runs of one plugin for one sandbox race on the node's state (iptables chains).
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| failed(format!("cannot run {}: {e}", bin.display())))?;
        let mut stdin = child.stdin.take().expect("stdin piped");
        let input = conf.to_string();
        let run = async move {
            // A plugin may exit without reading its config (a DEL with nothing to do): its
            // exit status and stdout answer, not the broken pipe.
            match stdin.write_all(input.as_bytes()).await {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e),
                _ => drop(stdin),
            }
            child.wait_with_output().await
        };
        let out = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| CniError::Timeout {
                command,
                network: net.name.clone(),
                plugin: kind.clone(),
                after: self.timeout,
            })?
            .map_err(|e| failed(e.to_string()))?;
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let msg = stdout
                .get("msg")
                .and_then(Value::as_str)
                .map(|m| {
                    let details = stdout.get("details").and_then(Value::as_str).unwrap_or("");
                    let code = stdout.get("code").and_then(Value::as_u64).unwrap_or(0);
                    format!(
                        "{m}{}{} (code {code})",
                        if details.is_empty() { "" } else { ": " },
                        details
                    )
                })
                .unwrap_or_else(|| {
                    format!(
                        "{}; {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                });
            return Err(failed(msg));
        }
        Ok(stdout)
    }
}

/// Addresses (without prefix length) from a CNI result, IPv4 first.
pub fn ips_of(result: &Value) -> Vec<String> {
    let mut ips: Vec<String> = result
        .get("ips")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                .map(|a| a.split('/').next().unwrap_or(a).to_string())
                .collect()
        })
        .unwrap_or_default();
    ips.sort_by_key(|ip| ip.contains(':'));
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_goes_only_to_plugins_that_declare_the_capability() {
        let cni = Cni::new(vec![], PathBuf::from("/tmp"), Duration::from_secs(1));
        let net = CniNetwork {
            file: PathBuf::new(),
            name: "n".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![
                json!({"type": "bridge"}),
                json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            ],
        };
        let mut caps = Map::new();
        caps.insert(
            "portMappings".into(),
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
        );
        let a = Attachment {
            container_id: "c".into(),
            netns: "/x".into(),
            ifname: "eth0".into(),
            args: vec![],
            capabilities: caps,
        };
        let bridge = cni.plugin_config(&net, &net.plugins[0], None, &a);
        assert!(bridge.get("runtimeConfig").is_none());
        assert_eq!(bridge["name"], "n");
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let portmap = cni.plugin_config(&net, &net.plugins[1], Some(&prev), &a);
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert_eq!(portmap["prevResult"], prev);
    }
}
