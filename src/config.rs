//! concord's configuration: a TOML file (absent is fine) overridden by flags, parsed once into
//! typed values. Each setting is one field below: its doc comment is its `--help` text, its line in
//! `concord config default` and its README row (see [`doc`]); its `#[arg]` is its flag.

pub mod doc;
mod files;
pub mod import;
mod validate;
mod values;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use files::{joined_paths, CONFIG_VERSION, DROP_IN_DIR};
pub use values::OrEmpty;

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

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
    /// journald's native protocol (fields upper-cased, PRIORITY from the level).
    Journald,
}

/// The cgroup driver kubelet must use (RuntimeConfig), and how container cgroups are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

/// Every setting concord has. The sections are TOML tables and `--help` headings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// CRI unix socket kubelet connects to (kubelet --container-runtime-endpoint=unix://...); mode
    /// 0660, parent created; a stale socket is replaced, a live one refused
    #[arg(long, value_name = "PATH")]
    pub listen: PathBuf,
    /// Journal (`journal.redb`) and other state that must survive a restart
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// trace, debug, info, warn, error, or a tracing filter directive; RUST_LOG, when set,
    /// replaces it; SIGHUP applies a changed one
    #[arg(long, value_name = "LEVEL")]
    pub log_level: String,
    /// Log format: text, json or journald (its native protocol, fields as journal fields; stderr
    /// with a warning when /run/systemd/journal/socket is absent)
    #[arg(long, value_name = "FORMAT")]
    pub log_format: LogFormat,
    /// Prometheus /metrics listener (IP:port); "" disables it
    #[serde(with = "values::or_empty")]
    #[arg(long, value_name = "ADDR", value_parser = values::or_empty::parse::<SocketAddr>)]
    pub metrics_address: OrEmpty<SocketAddr>,
    /// Streaming server for exec, attach and port-forward (IP:port); port 0 picks a free port
    #[arg(long, value_name = "ADDR")]
    pub stream_address: SocketAddr,
    /// Seconds a streaming URL stays valid before it is used; a later use is refused (404)
    #[serde(with = "values::secs")]
    #[arg(long, value_name = "SECS", value_parser = values::secs::parse)]
    pub stream_token_ttl_seconds: Duration,
    /// Seconds a streaming session may go without a client message before it is closed
    #[serde(with = "values::secs")]
    #[arg(long, value_name = "SECS", value_parser = values::secs::parse)]
    pub stream_idle_timeout_seconds: Duration,
    /// PEM certificate chain the streaming server presents: with stream_tls_key_file it serves
    /// https; both "": http
    #[serde(with = "values::or_empty")]
    #[arg(long, value_name = "FILE", value_parser = values::or_empty::parse::<PathBuf>)]
    pub stream_tls_cert_file: OrEmpty<PathBuf>,
    /// PEM private key of stream_tls_cert_file
    #[serde(with = "values::or_empty")]
    #[arg(long, value_name = "FILE", value_parser = values::or_empty::parse::<PathBuf>)]
    pub stream_tls_key_file: OrEmpty<PathBuf>,
    /// Image every pod sandbox runs
    #[arg(long, value_name = "REF")]
    pub sandbox_image: String,
    /// Registry host config directories, searched in order per registry (the first holding the
    /// host's directory wins, as containerd's config_path): containerd's hosts.toml layout
    /// (`<dir>/<host>/hosts.toml`, `<dir>/_default/`) or Docker's certs.d (`<dir>/<host>/*.crt`,
    /// `*.cert` + `*.key`); an array, or colon-separated as the flag takes them
    #[serde(with = "values::path_list")]
    #[arg(long, value_name = "DIRS", value_delimiter = ':')]
    pub registry_config_path: Vec<PathBuf>,
    /// Cgroup (path below the cgroup root) concord moves itself into at start; "" stays
    #[arg(long, value_name = "PATH")]
    pub cgroup: String,
    /// oom_score_adj concord sets for itself at start (lowering it needs CAP_SYS_RESOURCE); unset
    /// leaves it
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub oom_score_adj: Option<i32>,
    /// Seconds to finish in-flight RPCs after SIGTERM before exiting anyway
    #[serde(with = "values::secs")]
    #[arg(long, value_name = "SECS", value_parser = values::secs::parse)]
    pub shutdown_grace_seconds: Duration,
    /// Where pod network namespaces are pinned, one file per sandbox
    #[arg(long, value_name = "DIR")]
    pub netns_dir: PathBuf,
    #[command(flatten)]
    pub containerd: ContainerdConfig,
    #[command(flatten)]
    pub cni: CniConfig,
    #[command(flatten)]
    pub runtime: RuntimeConfig,
    #[command(flatten)]
    pub reconcile: ReconcileConfig,
    #[command(flatten)]
    pub journal: JournalConfig,
    #[command(flatten)]
    pub image: ImageConfig,
    #[command(flatten)]
    pub stats: StatsConfig,
    #[command(flatten)]
    pub tracing: TracingConfig,
}

/// How concord reaches containerd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
#[command(next_help_heading = "containerd")]
pub struct ContainerdConfig {
    /// containerd's gRPC socket
    #[arg(long = "containerd-address", value_name = "PATH")]
    pub address: PathBuf,
    /// containerd namespace of every object concord makes
    #[arg(long = "containerd-namespace", value_name = "NS")]
    pub namespace: String,
    /// Snapshotter for image layers and container filesystems
    #[arg(long = "snapshotter", value_name = "NAME")]
    pub snapshotter: String,
    /// Seconds between containerd health checks behind Status' RuntimeReady
    #[serde(with = "values::secs")]
    #[arg(long = "containerd-health-interval-seconds", value_name = "SECS", value_parser = values::secs::parse)]
    pub health_interval_seconds: Duration,
}

/// Where CNI network configs and plugins are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
#[command(next_help_heading = "cni")]
pub struct CniConfig {
    /// Network configs (.conf, .conflist, .json); the first usable one by name is used
    #[arg(long = "cni-conf-dir", value_name = "DIR")]
    pub conf_dir: PathBuf,
    /// Plugin directories, searched in order; the flag takes them colon-separated
    #[arg(long = "cni-bin-dir", value_name = "DIRS", value_delimiter = ':')]
    pub bin_dirs: Vec<PathBuf>,
    /// Seconds between periodic rescans of conf_dir, besides the rescan a change in it starts at
    /// once (inotify): a config that appears later makes NetworkReady true
    #[serde(with = "values::secs")]
    #[arg(long = "cni-rescan-interval-seconds", value_name = "SECS", value_parser = values::secs::parse)]
    pub rescan_interval_seconds: Duration,
    /// Seconds one plugin execution (ADD or DEL) may take before it is killed (the step fails and
    /// is retried)
    #[serde(with = "values::secs")]
    #[arg(long = "cni-plugin-timeout-seconds", value_name = "SECS", value_parser = values::secs::parse)]
    pub plugin_timeout_seconds: Duration,
}

/// How containers are run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
#[command(next_help_heading = "runtime")]
pub struct RuntimeConfig {
    /// Cgroup driver, as kubelet's cgroupDriver: cgroupfs (`<parent>/<id>`) or systemd (runc's
    /// systemd driver: `<pod slice>:cri-containerd:<id>` scopes, SystemdCgroup in the shim options)
    #[arg(long = "cgroup-driver", value_name = "DRIVER")]
    pub cgroup_driver: CgroupDriver,
    /// Handler used when RunPodSandbox names none (one of [runtime.handlers])
    #[arg(long = "default-runtime-handler", value_name = "NAME")]
    pub default_handler: String,
    /// RuntimeClass handler name → containerd runtime (see [`doc::HANDLERS`]).
    #[arg(skip)]
    pub handlers: BTreeMap<String, RuntimeHandler>,
    /// Container events a GetContainerEvents subscriber may fall behind by before it loses the
    /// oldest (counted in concord_container_events_dropped_total)
    #[arg(long = "container-events-buffer", value_name = "N")]
    pub container_events_buffer: usize,
    /// CDI spec directories, in increasing priority (a device in a later one wins), for the
    /// devices containers ask for in `cdi_devices` or `cdi.k8s.io/*` annotations; empty turns
    /// CDI off. The flag takes them colon-separated
    #[arg(long = "cdi-spec-dirs", value_name = "DIRS", value_delimiter = ':')]
    pub cdi_spec_dirs: Vec<PathBuf>,
}

/// One runtime handler (a RuntimeClass' `handler`): which containerd shim runs its pods. Not a
/// flag; its `clap::Args` only carries the field docs to the README and the default config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeHandler {
    /// containerd runtime (shim) of the handler
    #[arg(long)]
    pub runtime_type: String,
    /// runc binary the runc shim runs ("": runc on the shim's PATH)
    #[arg(long)]
    pub binary_name: String,
    /// runc state root ("": runc's default)
    #[arg(long)]
    pub root: String,
    /// Glob patterns (`*`, `?`) of the pod annotations passed into the OCI specs of the handler's
    /// pods and containers; none by default (runtimes read some annotations as instructions:
    /// org.systemd.property.*, run.oci.*, io.katacontainers.*)
    #[arg(long)]
    pub pod_annotations: Vec<String>,
    /// Glob patterns of the container annotations passed into the handler's container OCI specs
    #[arg(long)]
    pub container_annotations: Vec<String>,
}

/// The reconcile loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
#[command(next_help_heading = "reconcile")]
pub struct ReconcileConfig {
    /// Objects reconciled at once (1 to 1024)
    #[arg(long = "reconcile-workers", value_name = "N")]
    pub workers: usize,
    /// Seconds between full resyncs against containerd; 0 disables
    #[serde(with = "values::secs")]
    #[arg(long = "resync-interval-seconds", value_name = "SECS", value_parser = values::secs::parse)]
    pub resync_interval_seconds: Duration,
    /// First retry delay after a failed reconcile, in milliseconds (doubled per failure, ±50 %
    /// jitter)
    #[serde(with = "values::millis")]
    #[arg(long = "backoff-base-ms", value_name = "MS", value_parser = values::millis::parse)]
    pub backoff_base_ms: Duration,
    /// Longest retry delay, in milliseconds
    #[serde(with = "values::millis")]
    #[arg(long = "backoff-max-ms", value_name = "MS", value_parser = values::millis::parse)]
    pub backoff_max_ms: Duration,
    /// Seconds one reconcile may take before it is abandoned and retried
    #[serde(with = "values::secs")]
    #[arg(long = "reconcile-timeout-seconds", value_name = "SECS", value_parser = values::secs::parse)]
    pub timeout_seconds: Duration,
}

/// The journal of intents and facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
#[command(next_help_heading = "journal")]
pub struct JournalConfig {
    /// Events after which the journal is compacted into a snapshot of live objects (at least 10)
    #[arg(long = "journal-compact-after", value_name = "N")]
    pub compact_after: u64,
}

/// Image pulls, loads and the snapshot syncer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
#[command(next_help_heading = "image")]
pub struct ImageConfig {
    /// Seconds a pull may go without progress before it is aborted (DeadlineExceeded)
    #[serde(with = "values::secs")]
    #[arg(long = "image-pull-progress-timeout-seconds", value_name = "SECS", value_parser = values::secs::parse)]
    pub pull_progress_timeout_seconds: Duration,
    /// Layers downloaded at once, across all pulls (1 to 64)
    #[arg(long = "max-concurrent-downloads", value_name = "N")]
    pub max_concurrent_downloads: usize,
    /// Seconds between snapshot usage measurements behind ImageFsInfo
    #[serde(with = "values::secs")]
    #[arg(long = "image-fs-sync-interval-seconds", value_name = "SECS", value_parser = values::secs::parse)]
    pub fs_sync_interval_seconds: Duration,
    /// Bytes one LoadImage archive may unpack to under the state dir, after gzip (at least 1 MiB)
    #[arg(long = "image-load-max-bytes", value_name = "BYTES")]
    pub load_max_bytes: u64,
}

/// The stats collector behind ContainerStats, PodSandboxStats and ListPodSandboxMetrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
#[command(next_help_heading = "stats")]
pub struct StatsConfig {
    /// Seconds between stats collections (cgroups, pod network, writable layers); ContainerStats,
    /// PodSandboxStats and ListPodSandboxMetrics answer from the last one (1 to 3600)
    #[serde(with = "values::secs")]
    #[arg(long = "stats-interval-seconds", value_name = "SECS", value_parser = values::secs::parse)]
    pub interval_seconds: Duration,
}

/// Trace export: the spans of RPCs, reconciles, containerd and CNI calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
#[command(next_help_heading = "tracing")]
pub struct TracingConfig {
    /// OTLP/HTTP collector the spans are sent to (as JSON, POSTed to its /v1/traces), e.g.
    /// "http://127.0.0.1:4318"; "" sends none. A reconcile joins the trace of the RPC that
    /// recorded its object's generation
    #[arg(long = "otlp-endpoint", value_name = "URL")]
    pub otlp_endpoint: String,
    /// Fraction of traces sent (0.0 to 1.0), decided at each RPC or reconcile that starts one
    #[arg(long = "trace-sample-ratio", value_name = "RATIO")]
    pub sample_ratio: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: PathBuf::from("/run/concord/concord.sock"),
            state_dir: PathBuf::from("/var/lib/concord"),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            metrics_address: Some(SocketAddr::from(([127, 0, 0, 1], 9338))),
            stream_address: SocketAddr::from(([127, 0, 0, 1], 0)),
            stream_token_ttl_seconds: Duration::from_secs(60),
            stream_idle_timeout_seconds: Duration::from_secs(4 * 3600),
            stream_tls_cert_file: None,
            stream_tls_key_file: None,
            sandbox_image: "registry.k8s.io/pause:3.10.1".into(),
            registry_config_path: vec![
                PathBuf::from("/etc/containerd/certs.d"),
                PathBuf::from("/etc/docker/certs.d"),
            ],
            cgroup: String::new(),
            oom_score_adj: None,
            shutdown_grace_seconds: Duration::from_secs(30),
            netns_dir: PathBuf::from("/run/concord/netns"),
            containerd: ContainerdConfig::default(),
            cni: CniConfig::default(),
            runtime: RuntimeConfig::default(),
            reconcile: ReconcileConfig::default(),
            journal: JournalConfig::default(),
            image: ImageConfig::default(),
            stats: StatsConfig::default(),
            tracing: TracingConfig::default(),
        }
    }
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: String::new(),
            sample_ratio: 1.0,
        }
    }
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            address: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "k8s.io".into(),
            snapshotter: "overlayfs".into(),
            health_interval_seconds: Duration::from_secs(2),
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            rescan_interval_seconds: Duration::from_secs(2),
            plugin_timeout_seconds: Duration::from_secs(60),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cgroup_driver: CgroupDriver::Cgroupfs,
            default_handler: "runc".into(),
            handlers: BTreeMap::from([("runc".to_string(), RuntimeHandler::default())]),
            container_events_buffer: 1000,
            cdi_spec_dirs: vec!["/etc/cdi".into(), "/var/run/cdi".into()],
        }
    }
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

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            workers: 8,
            resync_interval_seconds: Duration::from_secs(60),
            backoff_base_ms: Duration::from_millis(100),
            backoff_max_ms: Duration::from_millis(30_000),
            timeout_seconds: Duration::from_secs(300),
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

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            pull_progress_timeout_seconds: Duration::from_secs(60),
            max_concurrent_downloads: 3,
            fs_sync_interval_seconds: Duration::from_secs(10),
            load_max_bytes: 32 << 30,
        }
    }
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            interval_seconds: Duration::from_secs(10),
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

    /// Whether container cgroups are systemd slices (`runtime.cgroup_driver = "systemd"`).
    pub fn systemd_cgroup(&self) -> bool {
        self.cgroup_driver == CgroupDriver::Systemd
    }
}

impl Config {
    /// Reads `path` and the drop-ins of `conf.d/` beside it, merged in order; a missing main
    /// file gives the defaults (plus drop-ins) when `required` is false.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        files::load(path, required)
    }

    /// Parses one file's TOML text (unknown keys are errors; `version` is checked).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        files::parse(path, text)
    }

    /// Path of the journal file inside the state dir.
    pub fn journal_path(&self) -> PathBuf {
        self.layout().journal()
    }

    /// What goes where under the state dir.
    pub fn layout(&self) -> crate::state_layout::StateLayout {
        crate::state_layout::StateLayout::new(&self.state_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn values_of_the_wrong_form_are_parse_errors_naming_the_setting() {
        for (text, key) in [
            ("log_format = \"xml\"\n", "log_format"),
            ("metrics_address = \"localhost\"\n", "metrics_address"),
            ("stream_address = \"\"\n", "stream_address"),
            ("[runtime]\ncgroup_driver = \"both\"\n", "cgroup_driver"),
            ("[reconcile]\nworkers = \"many\"\n", "workers"),
            ("[reconcile]\ntimeout_seconds = \"5m\"\n", "timeout_seconds"),
        ] {
            let err = Config::parse(Path::new("c.toml"), text).unwrap_err();
            assert!(err.to_string().contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn typed_values_keep_their_toml_spelling() {
        let text = "metrics_address = \"\"\nstream_tls_cert_file = \"\"\nlog_format = \"json\"\n\
                    [reconcile]\nbackoff_base_ms = 250\ntimeout_seconds = 7\n\
                    [runtime]\ncgroup_driver = \"systemd\"\n";
        let c = Config::parse(Path::new("c.toml"), text).unwrap();
        assert_eq!(c.metrics_address, None);
        assert_eq!(c.stream_tls_cert_file, None);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.reconcile.backoff_base_ms, Duration::from_millis(250));
        assert_eq!(c.reconcile.timeout_seconds, Duration::from_secs(7));
        assert!(c.runtime.systemd_cgroup());
        let back = toml::to_string(&c).unwrap();
        assert!(back.contains("metrics_address = \"\""), "{back}");
        assert!(back.contains("backoff_base_ms = 250"), "{back}");
        assert_eq!(Config::parse(Path::new("back"), &back).unwrap(), c);
    }
}
