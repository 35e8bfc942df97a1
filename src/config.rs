//! concord's configuration: a TOML file (absent is fine) overridden by flags, validated once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default path of the config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/concord/config.toml";

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A setting has a value concord cannot use.
    #[error("invalid setting {key} = {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// Every setting concord has. Each is also a flag (see `main.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Path of the CRI unix socket kubelet connects to.
    pub listen: PathBuf,
    /// Directory holding the journal and other state that survives a restart.
    pub state_dir: PathBuf,
    /// Log level: trace, debug, info, warn or error (or a tracing filter directive).
    pub log_level: String,
    /// Log format: text or json.
    pub log_format: String,
    /// Address of the Prometheus /metrics listener; empty disables it.
    pub metrics_address: String,
    /// Address of the streaming server (exec, attach, port-forward); port 0 picks a free port.
    pub stream_address: String,
    /// Seconds a streaming URL stays valid before it is used.
    pub stream_token_ttl_seconds: u64,
    /// Seconds a streaming session may pass without a message from its client before it is
    /// closed.
    pub stream_idle_timeout_seconds: u64,
    /// PEM certificate chain the streaming server presents; with `stream_tls_key_file` it
    /// serves https (both empty: plain http).
    pub stream_tls_cert_file: String,
    /// PEM private key of `stream_tls_cert_file`.
    pub stream_tls_key_file: String,
    /// Image every pod sandbox runs.
    pub sandbox_image: String,
    /// Directory of registry host configs in containerd's hosts.toml layout.
    pub registry_config_path: PathBuf,
    /// Cgroup (path below the cgroup root) concord places itself in at start; empty: stay.
    pub cgroup: String,
    /// oom_score_adj concord sets for itself at start; unset: leave as is.
    pub oom_score_adj: Option<i32>,
    /// Seconds to finish in-flight RPCs after SIGTERM before exiting anyway.
    pub shutdown_grace_seconds: u64,
    /// Directory where pod network namespaces are pinned (one file per sandbox).
    pub netns_dir: PathBuf,
    pub containerd: ContainerdConfig,
    pub cni: CniConfig,
    pub runtime: RuntimeConfig,
    pub reconcile: ReconcileConfig,
    pub journal: JournalConfig,
    pub image: ImageConfig,
    pub stats: StatsConfig,
}

/// The stats collector behind ContainerStats, PodSandboxStats and ListPodSandboxMetrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// Seconds between collections (cgroups, pod network, writable layers).
    pub interval_seconds: u64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            interval_seconds: 10,
        }
    }
}

/// Image pulls and the snapshot syncer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// Seconds a pull may go without progress before it is aborted.
    pub pull_progress_timeout_seconds: u64,
    /// Layers downloaded at once (across all pulls).
    pub max_concurrent_downloads: usize,
    /// Seconds between snapshot usage measurements (ImageFsInfo).
    pub fs_sync_interval_seconds: u64,
    /// Bytes one LoadImage archive may unpack to in the scratch dir (after gzip).
    pub load_max_bytes: u64,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            pull_progress_timeout_seconds: 60,
            max_concurrent_downloads: 3,
            fs_sync_interval_seconds: 10,
            load_max_bytes: 32 << 30,
        }
    }
}

/// How concord reaches containerd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerdConfig {
    /// Path of containerd's gRPC socket.
    pub address: PathBuf,
    /// containerd namespace every object lives in.
    pub namespace: String,
    /// Snapshotter for image layers and container filesystems.
    pub snapshotter: String,
    /// Seconds between containerd health checks (Status' RuntimeReady).
    pub health_interval_seconds: u64,
}

/// Where CNI network configs and plugins are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Directory of network configs (.conf, .conflist, .json); the first one is used.
    pub conf_dir: PathBuf,
    /// Directories searched for plugin binaries, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Seconds between rescans of conf_dir (a config that appears later makes the network ready).
    pub rescan_interval_seconds: u64,
    /// Seconds one plugin execution (ADD or DEL) may take before it is killed.
    pub plugin_timeout_seconds: u64,
}

/// How containers are run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Cgroup driver kubelet must use: cgroupfs or systemd.
    pub cgroup_driver: String,
    /// Handler used when RunPodSandbox names none.
    pub default_handler: String,
    /// RuntimeClass handler name → containerd runtime.
    pub handlers: BTreeMap<String, RuntimeHandler>,
    /// Container events a GetContainerEvents subscriber may fall behind by before it loses the
    /// oldest.
    pub container_events_buffer: usize,
}

/// One runtime handler (a RuntimeClass' `handler`): which containerd shim runs its pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeHandler {
    /// containerd runtime (shim) name.
    pub runtime_type: String,
    /// runc binary the runc shim runs ("": runc on the shim's PATH).
    pub binary_name: String,
    /// runc state root ("": runc's default).
    pub root: String,
    /// Pod annotations (glob patterns, `*` and `?`) passed into the OCI specs of the handler's
    /// pods and containers; none by default (runtimes read some annotations as instructions).
    pub pod_annotations: Vec<String>,
    /// Container annotations (glob patterns) passed into the handler's container OCI specs.
    pub container_annotations: Vec<String>,
}

impl Default for RuntimeHandler {
    fn default() -> Self {
        RuntimeHandler {
            runtime_type: "io.containerd.runc.v2".into(),
            binary_name: String::new(),
            root: String::new(),
            pod_annotations: Vec::new(),
            container_annotations: Vec::new(),
        }
    }
}

impl RuntimeConfig {
    /// The handler a request names ("" is the default one).
    pub fn handler(&self, name: &str) -> Option<&RuntimeHandler> {
        let name = if name.is_empty() {
            self.default_handler.as_str()
        } else {
            name
        };
        self.handlers.get(name)
    }
}

/// The reconcile loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Objects reconciled at once.
    pub workers: usize,
    /// Seconds between full resyncs (0 disables the periodic resync).
    pub resync_interval_seconds: u64,
    /// First retry delay after a failed reconcile, in milliseconds (doubled per failure, jittered).
    pub backoff_base_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub backoff_max_ms: u64,
    /// Seconds one reconcile may take before it is abandoned and retried.
    pub timeout_seconds: u64,
}

/// The journal of intents and facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Events after which the journal is compacted into a snapshot of live objects.
    pub compact_after: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: PathBuf::from("/run/concord/concord.sock"),
            state_dir: PathBuf::from("/var/lib/concord"),
            log_level: "info".into(),
            log_format: "text".into(),
            metrics_address: "127.0.0.1:9338".into(),
            stream_address: "127.0.0.1:0".into(),
            stream_token_ttl_seconds: 60,
            stream_idle_timeout_seconds: 4 * 3600,
            stream_tls_cert_file: String::new(),
            stream_tls_key_file: String::new(),
            sandbox_image: "registry.k8s.io/pause:3.9".into(),
            registry_config_path: PathBuf::from("/etc/containerd/certs.d"),
            cgroup: String::new(),
            oom_score_adj: None,
            shutdown_grace_seconds: 30,
            netns_dir: PathBuf::from("/run/concord/netns"),
            containerd: ContainerdConfig::default(),
            cni: CniConfig::default(),
            runtime: RuntimeConfig::default(),
            reconcile: ReconcileConfig::default(),
            journal: JournalConfig::default(),
            image: ImageConfig::default(),
            stats: StatsConfig::default(),
        }
    }
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            address: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "k8s.io".into(),
            snapshotter: "overlayfs".into(),
            health_interval_seconds: 2,
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            rescan_interval_seconds: 2,
            plugin_timeout_seconds: 60,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cgroup_driver: "cgroupfs".into(),
            default_handler: "runc".into(),
            handlers: BTreeMap::from([("runc".to_string(), RuntimeHandler::default())]),
            container_events_buffer: 1000,
        }
    }
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            workers: 8,
            resync_interval_seconds: 60,
            backoff_base_ms: 100,
            backoff_max_ms: 30_000,
            timeout_seconds: 300,
        }
    }
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            compact_after: 1000,
        }
    }
}

impl Config {
    /// Reads `path`; a missing file gives the defaults when `required` is false.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses TOML text (unknown keys are errors).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// Checks every value once, so the rest of concord can trust them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, value: impl ToString, reason: &str) -> ConfigError {
            ConfigError::Invalid {
                key,
                value: value.to_string(),
                reason: reason.into(),
            }
        }
        if !self.listen.is_absolute() {
            return Err(invalid(
                "listen",
                self.listen.display(),
                "must be an absolute path",
            ));
        }
        if !self.netns_dir.is_absolute() {
            return Err(invalid(
                "netns_dir",
                self.netns_dir.display(),
                "must be an absolute path",
            ));
        }
        if !self.state_dir.is_absolute() {
            return Err(invalid(
                "state_dir",
                self.state_dir.display(),
                "must be an absolute path",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(invalid(
                "log_level",
                &self.log_level,
                "expected trace, debug, info, warn, error or a tracing filter directive",
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(invalid(
                "log_format",
                &self.log_format,
                "expected text or json",
            ));
        }
        if !self.metrics_address.is_empty() && self.metrics_address.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "metrics_address",
                &self.metrics_address,
                "expected host:port (an IP address and a port) or empty to disable",
            ));
        }
        if self.stream_address.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "stream_address",
                &self.stream_address,
                "expected host:port (an IP address and a port)",
            ));
        }
        if self.sandbox_image.trim().is_empty() {
            return Err(invalid(
                "sandbox_image",
                &self.sandbox_image,
                "must not be empty",
            ));
        }
        if self.cgroup.contains("..") {
            return Err(invalid("cgroup", &self.cgroup, "must not contain '..'"));
        }
        if let Some(adj) = self.oom_score_adj {
            if !(-1000..=1000).contains(&adj) {
                return Err(invalid(
                    "oom_score_adj",
                    adj,
                    "must be between -1000 and 1000",
                ));
            }
        }
        if !self.containerd.address.is_absolute() {
            return Err(invalid(
                "containerd.address",
                self.containerd.address.display(),
                "must be an absolute path",
            ));
        }
        let ns = &self.containerd.namespace;
        let ns_ok = !ns.is_empty()
            && ns.len() <= 76
            && ns.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ns_ok {
            return Err(invalid(
                "containerd.namespace",
                ns,
                "expected letters, digits, '.', '_' or '-', starting with a letter or digit",
            ));
        }
        if self.containerd.snapshotter.is_empty() {
            return Err(invalid("containerd.snapshotter", "", "must not be empty"));
        }
        if self.containerd.health_interval_seconds == 0 {
            return Err(invalid(
                "containerd.health_interval_seconds",
                0,
                "must be at least 1",
            ));
        }
        if self.cni.bin_dirs.is_empty() {
            return Err(invalid(
                "cni.bin_dirs",
                "[]",
                "needs at least one directory",
            ));
        }
        if self.cni.plugin_timeout_seconds == 0 {
            return Err(invalid(
                "cni.plugin_timeout_seconds",
                0,
                "must be at least 1",
            ));
        }
        if self.cni.rescan_interval_seconds == 0 {
            return Err(invalid(
                "cni.rescan_interval_seconds",
                0,
                "must be at least 1",
            ));
        }
        if !matches!(self.runtime.cgroup_driver.as_str(), "cgroupfs" | "systemd") {
            return Err(invalid(
                "runtime.cgroup_driver",
                &self.runtime.cgroup_driver,
                "expected cgroupfs or systemd",
            ));
        }
        if !self
            .runtime
            .handlers
            .contains_key(&self.runtime.default_handler)
        {
            return Err(invalid(
                "runtime.default_handler",
                &self.runtime.default_handler,
                "names no handler in [runtime.handlers]",
            ));
        }
        for (name, h) in &self.runtime.handlers {
            if name.is_empty() || name.contains(['/', ' ']) {
                return Err(invalid(
                    "runtime.handlers",
                    name,
                    "a handler name must be non-empty without '/' or spaces",
                ));
            }
            if h.runtime_type.is_empty() {
                return Err(invalid(
                    "runtime.handlers.<name>.runtime_type",
                    name,
                    "the handler needs a runtime_type (e.g. io.containerd.runc.v2)",
                ));
            }
        }
        if self.reconcile.timeout_seconds == 0 {
            return Err(invalid(
                "reconcile.timeout_seconds",
                0,
                "must be at least 1",
            ));
        }
        if self.reconcile.workers == 0 || self.reconcile.workers > 1024 {
            return Err(invalid(
                "reconcile.workers",
                self.reconcile.workers,
                "must be 1 to 1024",
            ));
        }
        if self.reconcile.backoff_base_ms == 0 {
            return Err(invalid(
                "reconcile.backoff_base_ms",
                0,
                "must be at least 1",
            ));
        }
        if self.reconcile.backoff_max_ms < self.reconcile.backoff_base_ms {
            return Err(invalid(
                "reconcile.backoff_max_ms",
                self.reconcile.backoff_max_ms,
                "must not be below reconcile.backoff_base_ms",
            ));
        }
        if self.image.pull_progress_timeout_seconds == 0 {
            return Err(invalid(
                "image.pull_progress_timeout_seconds",
                0,
                "must be at least 1",
            ));
        }
        if self.image.max_concurrent_downloads == 0 || self.image.max_concurrent_downloads > 64 {
            return Err(invalid(
                "image.max_concurrent_downloads",
                self.image.max_concurrent_downloads,
                "must be 1 to 64",
            ));
        }
        if self.image.load_max_bytes < 1 << 20 {
            return Err(invalid(
                "image.load_max_bytes",
                self.image.load_max_bytes,
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if self.image.fs_sync_interval_seconds == 0 {
            return Err(invalid(
                "image.fs_sync_interval_seconds",
                0,
                "must be at least 1",
            ));
        }
        match (
            self.stream_tls_cert_file.is_empty(),
            self.stream_tls_key_file.is_empty(),
        ) {
            (true, true) => {}
            (false, true) | (true, false) => {
                return Err(invalid(
                    "stream_tls_cert_file",
                    &self.stream_tls_cert_file,
                    "stream_tls_cert_file and stream_tls_key_file go together (both set: https)",
                ))
            }
            (false, false) => {
                for (key, path) in [
                    ("stream_tls_cert_file", &self.stream_tls_cert_file),
                    ("stream_tls_key_file", &self.stream_tls_key_file),
                ] {
                    if !Path::new(path).is_file() {
                        return Err(invalid(key, path, "no such file"));
                    }
                }
            }
        }
        if self.stream_token_ttl_seconds == 0 {
            return Err(invalid("stream_token_ttl_seconds", 0, "must be at least 1"));
        }
        if self.stream_idle_timeout_seconds == 0 {
            return Err(invalid(
                "stream_idle_timeout_seconds",
                0,
                "must be at least 1",
            ));
        }
        if !(1..=3600).contains(&self.stats.interval_seconds) {
            return Err(invalid(
                "stats.interval_seconds",
                self.stats.interval_seconds,
                "must be 1 to 3600",
            ));
        }
        if !(1..=1_000_000).contains(&self.runtime.container_events_buffer) {
            return Err(invalid(
                "runtime.container_events_buffer",
                self.runtime.container_events_buffer,
                "must be 1 to 1000000",
            ));
        }
        if self.journal.compact_after < 10 {
            return Err(invalid(
                "journal.compact_after",
                self.journal.compact_after,
                "must be at least 10",
            ));
        }
        Ok(())
    }

    /// Path of the journal file inside the state dir.
    pub fn journal_path(&self) -> PathBuf {
        self.layout().journal()
    }

    /// What goes where under the state dir.
    pub fn layout(&self) -> crate::state_layout::StateLayout {
        crate::state_layout::StateLayout::new(&self.state_dir)
    }

    /// Metrics listener address, or None when disabled.
    pub fn metrics_socket_addr(&self) -> Option<SocketAddr> {
        self.metrics_address.parse().ok()
    }

    /// Grace period for in-flight RPCs at shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    /// The default config file, every setting with a comment (`concord config default`).
    pub fn default_toml() -> String {
        let d = Config::default();
        let bins: Vec<String> = d
            .cni
            .bin_dirs
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        format!(
            r#"# concord configuration (TOML). Every setting is optional; shown with its default.
# Each one is also a flag: concord --help. Flags win over this file.

# CRI unix socket kubelet connects to (--listen; kubelet --container-runtime-endpoint=unix://...).
listen = {listen:?}
# Journal and other state that must survive a restart (--state-dir).
state_dir = {state_dir:?}
# trace, debug, info, warn, error, or a tracing filter directive (--log-level).
log_level = {log_level:?}
# text or json (--log-format).
log_format = {log_format:?}
# Prometheus /metrics listener; "" disables it (--metrics-address).
metrics_address = {metrics_address:?}
# Streaming server for exec, attach and port-forward; port 0 picks a free port (--stream-address).
stream_address = {stream_address:?}
# Seconds a streaming URL stays valid before it is used (--stream-token-ttl-seconds).
stream_token_ttl_seconds = {token_ttl}
# Seconds a streaming session may go without a client message before it is closed (--stream-idle-timeout-seconds).
stream_idle_timeout_seconds = {idle}
# PEM certificate and key: the streaming server serves https; both empty: http
# (--stream-tls-cert-file, --stream-tls-key-file).
stream_tls_cert_file = {tls_cert:?}
stream_tls_key_file = {tls_key:?}
# Image every pod sandbox runs (--sandbox-image).
sandbox_image = {sandbox_image:?}
# Registry host configs in containerd's hosts.toml layout: <dir>/<host>/hosts.toml (--registry-config-path).
registry_config_path = {registry_config_path:?}
# Cgroup (path below the cgroup root) concord moves itself into at start; "" stays (--cgroup).
cgroup = ""
# oom_score_adj concord sets for itself at start; unset leaves it (--oom-score-adj).
# oom_score_adj = -999
# Seconds to finish in-flight RPCs after SIGTERM before exiting anyway (--shutdown-grace-seconds).
shutdown_grace_seconds = {grace}
# Where pod network namespaces are pinned, one file per sandbox (--netns-dir).
netns_dir = {netns_dir:?}

[containerd]
# containerd's gRPC socket (--containerd-address).
address = {ctd_address:?}
# containerd namespace of every object concord makes (--containerd-namespace).
namespace = {ctd_ns:?}
# Snapshotter for image layers and container filesystems (--snapshotter).
snapshotter = {snapshotter:?}
# Seconds between containerd health checks behind Status' RuntimeReady (--containerd-health-interval-seconds).
health_interval_seconds = {health}

[cni]
# Network configs (.conf, .conflist, .json); the first by name is used (--cni-conf-dir).
conf_dir = {conf_dir:?}
# Plugin directories, searched in order (--cni-bin-dir, colon-separated).
bin_dirs = [{bins}]
# Seconds between rescans of conf_dir (--cni-rescan-interval-seconds).
rescan_interval_seconds = {rescan}
# Seconds one plugin execution (ADD or DEL) may take before it is killed (--cni-plugin-timeout-seconds).
plugin_timeout_seconds = {cni_timeout}

[runtime]
# Cgroup driver reported to kubelet: cgroupfs or systemd (--cgroup-driver).
cgroup_driver = {driver:?}
# Handler used when RunPodSandbox names none (--default-runtime-handler).
default_handler = {default_handler:?}
# Container events a GetContainerEvents subscriber may fall behind by before it loses the oldest
# (counted in concord_container_events_dropped_total) (--container-events-buffer).
container_events_buffer = {events_buffer}

# One table per RuntimeClass handler: the containerd runtime (shim) that runs its pods, and for
# runc-based shims the runc binary and root. An unknown handler is refused (InvalidArgument).
# pod_annotations / container_annotations: glob patterns (`*`, `?`) of the pod and container
# annotations passed into the OCI spec; none by default, since runtimes and shims read some
# annotations as instructions (org.systemd.property.*, run.oci.*, io.katacontainers.*).
[runtime.handlers.runc]
runtime_type = {runc_type:?}
binary_name = ""
root = ""
pod_annotations = []
container_annotations = []

[reconcile]
# Objects reconciled at once (--reconcile-workers).
workers = {workers}
# Seconds between full resyncs against containerd; 0 disables (--resync-interval-seconds).
resync_interval_seconds = {resync}
# First retry delay after a failed reconcile, doubled per failure with jitter (--backoff-base-ms).
backoff_base_ms = {bbase}
# Longest retry delay (--backoff-max-ms).
backoff_max_ms = {bmax}
# Seconds one reconcile may take before it is abandoned and retried (--reconcile-timeout-seconds).
timeout_seconds = {rtimeout}

[journal]
# Events after which the journal is compacted to a snapshot of live objects (--journal-compact-after).
compact_after = {compact}

[image]
# Seconds a pull may go without progress before it is aborted (--image-pull-progress-timeout-seconds).
pull_progress_timeout_seconds = {stall}
# Layers downloaded at once, across all pulls (--max-concurrent-downloads).
max_concurrent_downloads = {downloads}
# Seconds between snapshot usage measurements behind ImageFsInfo (--image-fs-sync-interval-seconds).
fs_sync_interval_seconds = {fssync}
# Bytes one LoadImage archive may unpack to under the state dir, after gzip (32 GiB).
load_max_bytes = {load_max}

[stats]
# Seconds between stats collections (cgroups, pod network, writable layers) behind ContainerStats,
# PodSandboxStats and ListPodSandboxMetrics, which answer from the last one (--stats-interval-seconds).
interval_seconds = {stats_interval}
"#,
            listen = d.listen.display().to_string(),
            state_dir = d.state_dir.display().to_string(),
            log_level = d.log_level,
            log_format = d.log_format,
            metrics_address = d.metrics_address,
            stream_address = d.stream_address,
            token_ttl = d.stream_token_ttl_seconds,
            idle = d.stream_idle_timeout_seconds,
            tls_cert = d.stream_tls_cert_file,
            tls_key = d.stream_tls_key_file,
            sandbox_image = d.sandbox_image,
            registry_config_path = d.registry_config_path.display().to_string(),
            grace = d.shutdown_grace_seconds,
            netns_dir = d.netns_dir.display().to_string(),
            ctd_address = d.containerd.address.display().to_string(),
            ctd_ns = d.containerd.namespace,
            snapshotter = d.containerd.snapshotter,
            health = d.containerd.health_interval_seconds,
            conf_dir = d.cni.conf_dir.display().to_string(),
            bins = bins.join(", "),
            rescan = d.cni.rescan_interval_seconds,
            cni_timeout = d.cni.plugin_timeout_seconds,
            driver = d.runtime.cgroup_driver,
            default_handler = d.runtime.default_handler,
            runc_type = d.runtime.handlers["runc"].runtime_type,
            workers = d.reconcile.workers,
            resync = d.reconcile.resync_interval_seconds,
            bbase = d.reconcile.backoff_base_ms,
            bmax = d.reconcile.backoff_max_ms,
            rtimeout = d.reconcile.timeout_seconds,
            compact = d.journal.compact_after,
            stall = d.image.pull_progress_timeout_seconds,
            downloads = d.image.max_concurrent_downloads,
            fssync = d.image.fs_sync_interval_seconds,
            load_max = d.image.load_max_bytes,
            events_buffer = d.runtime.container_events_buffer,
            stats_interval = d.stats.interval_seconds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_parses_back_to_the_defaults() {
        let parsed = Config::parse(Path::new("default"), &Config::default_toml()).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let err = Config::parse(Path::new("c.toml"), "listne = \"/x\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("listne"), "{msg}");
        assert!(msg.contains("c.toml"), "{msg}");
    }

    #[test]
    fn unknown_key_in_a_section_is_named_in_the_error() {
        let err =
            Config::parse(Path::new("c.toml"), "[containerd]\nadress = \"/x\"\n").unwrap_err();
        assert!(err.to_string().contains("adress"), "{err}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        type Mutation = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.log_format = "xml".into()), "log_format"),
            (
                Box::new(|c| c.metrics_address = "localhost".into()),
                "metrics_address",
            ),
            (Box::new(|c| c.listen = "relative.sock".into()), "listen"),
            (
                Box::new(|c| c.containerd.namespace = "bad ns".into()),
                "containerd.namespace",
            ),
            (
                Box::new(|c| c.runtime.cgroup_driver = "both".into()),
                "runtime.cgroup_driver",
            ),
            (Box::new(|c| c.reconcile.workers = 0), "reconcile.workers"),
            (Box::new(|c| c.oom_score_adj = Some(-5000)), "oom_score_adj"),
            (Box::new(|c| c.log_level = "loud=[".into()), "log_level"),
        ];
        for (mutate, key) in cases {
            let mut c = Config::default();
            mutate(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn wrong_type_is_a_parse_error() {
        let err =
            Config::parse(Path::new("c.toml"), "[reconcile]\nworkers = \"many\"\n").unwrap_err();
        assert!(err.to_string().contains("workers"), "{err}");
    }
}
