//! Prometheus metrics: one registry, every concord metric, and the /metrics HTTP listener.
//!
//! Names carry the `concord_` prefix and base units; labels are bounded (method, code, kind,
//! step, topic, handler), never an object id. The process's own metrics (`process_*`: memory,
//! CPU, file descriptors, threads, start time) come from /proc/self ([`process`]).
//! docs/metrics.md lists every metric ([`docs::markdown`]).

pub mod docs;
mod process;
mod server;

pub use server::serve;

use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// RPC latency buckets: kubelet's runtime-operation buckets (`ExponentialBuckets(.005, 2.5, 14)`:
/// 5 ms × 2.5^n up to 12.4 minutes), reaching past kubelet's 4-minute RunPodSandbox deadline.
pub fn rpc_buckets() -> Vec<f64> {
    (0..14).map(|n| 0.005 * 2.5f64.powi(n)).collect()
}

/// containerd call buckets: 0.5 ms × 2.5^n up to about 2 minutes.
fn containerd_buckets() -> Vec<f64> {
    (0..14).map(|n| 0.0005 * 2.5f64.powi(n)).collect()
}

/// Image pull buckets: 0.5 s to 10 minutes (a pull of a large image over a slow link).
fn pull_buckets() -> Vec<f64> {
    vec![0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]
}

/// The `handler` label of a pod's runtime handler: the default handler's name for "".
pub fn handler_label<'a>(runtime: &'a crate::config::RuntimeConfig, handler: &'a str) -> &'a str {
    if handler.is_empty() {
        &runtime.default_handler
    } else {
        handler
    }
}

/// The Prometheus type of a metric field (docs/metrics.md).
pub trait MetricType {
    const TYPE: &'static str;
}

macro_rules! metric_types {
    ($($t:ty => $name:literal),*) => {
        $(impl MetricType for $t { const TYPE: &'static str = $name; })*
    };
}

metric_types!(
    IntCounter => "counter", IntCounterVec => "counter", IntGauge => "gauge",
    IntGaugeVec => "gauge", prometheus::Gauge => "gauge", Histogram => "histogram",
    HistogramVec => "histogram"
);

/// One exported metric, as docs/metrics.md lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MetricDoc {
    pub name: String,
    pub kind: &'static str,
    pub labels: Vec<String>,
    pub help: String,
}

impl MetricDoc {
    fn of(collector: &dyn Collector, kind: impl Fn(&str) -> &'static str) -> Vec<MetricDoc> {
        collector
            .desc()
            .into_iter()
            .map(|d| MetricDoc {
                name: d.fq_name.clone(),
                kind: kind(&d.fq_name),
                labels: d.variable_labels.clone(),
                help: d.help.clone(),
            })
            .collect()
    }
}

/// The kinds of objects the reconcile loop manages (`ObjectKey::kind`).
const OBJECT_KINDS: [&str; 3] = ["runtime_config", "sandbox", "container"];

/// Code run before each scrape renders the metrics (gauges computed from state on demand).
type ScrapeHook = Box<dyn Fn(&Metrics) + Send + Sync>;

/// Declares [`Metrics`], one field per metric, and its constructor, which creates and registers
/// each; a metric is written once.
macro_rules! metrics {
    ($($field:ident: $ty:ty = $make:expr;)*) => {
        /// Every metric concord exports.
        pub struct Metrics {
            pub registry: Registry,
            scrape_hooks: Mutex<Vec<ScrapeHook>>,
            $(pub $field: $ty,)*
        }

        impl Metrics {
            /// Creates and registers every metric.
            pub fn new() -> Metrics {
                let registry = Registry::new();
                registry
                    .register(Box::new(build_info()))
                    .expect("metric registered twice");
                register_process(&registry);
                $(
                    let $field: $ty = $make;
                    registry
                        .register(Box::new($field.clone()))
                        .expect("metric registered twice");
                )*
                let m = Metrics { registry, scrape_hooks: Mutex::new(Vec::new()), $($field,)* };
                m.init_known_labels();
                m
            }

            /// Every metric this process exports, sorted by name.
            pub fn catalog(&self) -> Vec<MetricDoc> {
                let mut out = MetricDoc::of(&build_info(), |_| "gauge");
                out.extend(process_docs());
                $(out.extend(MetricDoc::of(&self.$field, |_| <$ty as MetricType>::TYPE));)*
                out.sort();
                out
            }
        }
    };
}

/// `concord_build_info`: always 1, labelled with the version, the git revision and the rustc
/// the binary was built from (build.rs).
fn build_info() -> IntGaugeVec {
    let build_info = IntGaugeVec::new(
        Opts::new(
            "concord_build_info",
            "concord build: version, git revision and rustc version it was built from, CRI API version; the value is always 1",
        ),
        &["version", "revision", "rustc", "runtime_api_version"],
    )
    .unwrap();
    build_info
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            env!("CONCORD_GIT_REVISION"),
            env!("CONCORD_RUSTC_VERSION"),
            "v1",
        ])
        .set(1);
    build_info
}

/// The process metrics (`process_*`, read from /proc/self at each scrape).
fn register_process(registry: &Registry) {
    registry
        .register(Box::new(process::ProcessCollector::new()))
        .expect("metric registered twice");
}

/// The process collector's metrics (its counter ends in `_total`).
fn process_docs() -> Vec<MetricDoc> {
    MetricDoc::of(&process::ProcessCollector::new(), |name| {
        if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        }
    })
}

metrics! {
    grpc_requests: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_grpc_requests_total", "CRI and concord RPCs answered, by method and gRPC code"),
        &["method", "code"],
    )
    .unwrap();
    grpc_duration: HistogramVec = HistogramVec::new(
        HistogramOpts::new("concord_grpc_request_duration_seconds", "Time to answer an RPC, by method")
            .buckets(rpc_buckets()),
        &["method"],
    )
    .unwrap();
    containerd_requests: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_containerd_requests_total", "Calls to containerd, by service, method and gRPC code"),
        &["service", "method", "code"],
    )
    .unwrap();
    containerd_duration: HistogramVec = HistogramVec::new(
        HistogramOpts::new("concord_containerd_request_duration_seconds", "Latency of calls to containerd, by service and method")
            .buckets(containerd_buckets()),
        &["service", "method"],
    )
    .unwrap();
    containerd_up: IntGauge = IntGauge::new("concord_containerd_up", "1 when containerd answers its health check (Status RuntimeReady)").unwrap();
    network_ready: IntGauge = IntGauge::new("concord_network_ready", "1 when a usable CNI network config is loaded (Status NetworkReady)").unwrap();
    events: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_containerd_events_total", "containerd events received in concord's namespace, by topic"),
        &["topic"],
    )
    .unwrap();
    event_reconnects: IntCounter = IntCounter::new("concord_containerd_event_stream_reconnects_total", "Times the containerd event stream was re-established after a loss").unwrap();
    event_stream_connected: IntGauge = IntGauge::new("concord_containerd_event_stream_connected", "1 while the containerd event stream is established").unwrap();
    last_event_timestamp: prometheus::Gauge = prometheus::Gauge::new(
        "concord_containerd_last_event_timestamp_seconds",
        "Unix time of the last containerd event received (age: time() minus this)",
    )
    .unwrap();
    reconciles: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_reconciles_total", "Reconciles run, by object kind and result (ok, error)"),
        &["kind", "result"],
    )
    .unwrap();
    reconcile_duration: HistogramVec = HistogramVec::new(
        HistogramOpts::new("concord_reconcile_duration_seconds", "Time one reconcile of an object took, by kind")
            .buckets(rpc_buckets()),
        &["kind"],
    )
    .unwrap();
    reconcile_queue_depth: IntGauge = IntGauge::new("concord_reconcile_queue_depth", "Objects waiting to be reconciled").unwrap();
    reconcile_retries: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_reconcile_retries_total", "Reconciles scheduled again after a failure, by kind"),
        &["kind"],
    )
    .unwrap();
    reconcile_failing: IntGaugeVec = IntGaugeVec::new(
        Opts::new("concord_reconcile_failing_objects", "Objects whose last reconcile failed (retrying with backoff), by kind; computed at each scrape"),
        &["kind"],
    )
    .unwrap();
    drift_corrected: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_reconcile_drift_corrected_total", "Times actual state was found different from desired and fixed, by kind"),
        &["kind"],
    )
    .unwrap();
    resyncs: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_resyncs_total", "Full resyncs, by reason (start, periodic, event_stream_reconnect, containerd_ready)"),
        &["reason"],
    )
    .unwrap();
    journal_write_errors: IntCounter = IntCounter::new("concord_journal_write_errors_total", "Journal commits that failed (disk full, I/O error): their intents were not acknowledged").unwrap();
    journal_writable: IntGauge = IntGauge::new("concord_journal_writable", "1 while the journal takes writes; 0 after a write failed, until a reopened journal takes a probe write (RuntimeReady is false meanwhile)").unwrap();
    journal_events: IntCounter = IntCounter::new("concord_journal_events_total", "Events durably appended to the journal").unwrap();
    journal_append_duration: Histogram = Histogram::with_opts(
        HistogramOpts::new("concord_journal_append_duration_seconds", "Time to commit one batch of journal events (with its fsync for intents and facts that cannot be observed again; without it for facts containerd can show again)")
            .buckets(containerd_buckets()),
    )
    .unwrap();
    journal_compactions: IntCounter = IntCounter::new("concord_journal_compactions_total", "Journal compactions (history replaced by a snapshot)").unwrap();
    journal_uncompacted: IntGauge = IntGauge::new("concord_journal_uncompacted_events", "Events in the journal after its last snapshot").unwrap();
    objects: IntGaugeVec = IntGaugeVec::new(
        Opts::new("concord_objects", "Objects the reconcile loop manages, by kind"),
        &["kind"],
    )
    .unwrap();
    pulls: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_image_pulls_total", "Image pulls, by result (ok or the gRPC code of the failure)"),
        &["result"],
    )
    .unwrap();
    pull_duration: Histogram = Histogram::with_opts(
        HistogramOpts::new("concord_image_pull_duration_seconds", "Time one image pull took, from the request to the image recorded (buckets up to 10 minutes)")
            .buckets(pull_buckets()),
    )
    .unwrap();
    pull_bytes: IntCounter = IntCounter::new("concord_image_pull_bytes_total", "Bytes of layers downloaded from registries").unwrap();
    pulls_in_progress: IntGauge = IntGauge::new("concord_image_pulls_in_progress", "Image pulls running now").unwrap();
    images: IntGauge = IntGauge::new("concord_images", "Images known in concord's containerd namespace").unwrap();
    cni_calls: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_cni_plugin_calls_total", "CNI plugin executions, by plugin type, command (ADD, DEL) and result (ok, error, timeout)"),
        &["plugin", "command", "result"],
    )
    .unwrap();
    cni_duration: HistogramVec = HistogramVec::new(
        HistogramOpts::new("concord_cni_plugin_duration_seconds", "Time a CNI plugin execution took, by plugin type and command")
            .buckets(containerd_buckets()),
        &["plugin", "command"],
    )
    .unwrap();
    sandbox_step_duration: HistogramVec = HistogramVec::new(
        HistogramOpts::new("concord_sandbox_step_duration_seconds", "Time of one step of running, stopping or removing a pod sandbox (netns, cni_add, cni_del, snapshot, container_create, task_start, task_stop, netns_remove, container_remove)")
            .buckets(containerd_buckets()),
        &["step"],
    )
    .unwrap();
    pod_start_duration: HistogramVec = HistogramVec::new(
        HistogramOpts::new("concord_pod_start_duration_seconds", "Time from a RunPodSandbox request that created a sandbox to the sandbox Ready (network attached, pause task running), by runtime handler")
            .buckets(rpc_buckets()),
        &["handler"],
    )
    .unwrap();
    oom_kills: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_container_oom_kills_total", "Containers whose exit was recorded as OOMKilled (the kernel killed a process of the container's cgroup for memory), by runtime handler"),
        &["handler"],
    )
    .unwrap();
    sandboxes: IntGaugeVec = IntGaugeVec::new(
        Opts::new("concord_sandboxes", "Pod sandboxes by state: creating, ready, notready (exited or stopped), removing"),
        &["state"],
    )
    .unwrap();
    container_events: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_container_events_total", "Container lifecycle events sent to GetContainerEvents subscribers, by type (created, started, stopped, deleted)"),
        &["type"],
    )
    .unwrap();
    container_events_dropped: IntCounter = IntCounter::new("concord_container_events_dropped_total", "Container events a GetContainerEvents subscriber lost because it read slower than its buffer filled").unwrap();
    container_event_streams: IntGauge = IntGauge::new("concord_container_event_streams", "Open GetContainerEvents streams").unwrap();
    trace_spans_dropped: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_trace_spans_dropped_total", "Spans not sent to the OTLP collector (tracing.otlp_endpoint), by reason (queue_full, export_failed)"),
        &["reason"],
    )
    .unwrap();
    stats_collections: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_stats_collections_total", "Runs of the stats collector, by result (ok, partial: some objects could not be read)"),
        &["result"],
    )
    .unwrap();
    stats_on_demand: IntCounter = IntCounter::new("concord_stats_on_demand_collections_total", "Stats collections a stats call started because the last one was older than 500 ms or predated a container it asked about").unwrap();
    stats_collect_duration: Histogram = Histogram::with_opts(
        HistogramOpts::new("concord_stats_collect_duration_seconds", "Time one stats collection (cgroups, network, writable layers of every container and sandbox) took")
            .buckets(containerd_buckets()),
    )
    .unwrap();
    stats_objects: IntGaugeVec = IntGaugeVec::new(
        Opts::new("concord_stats_objects", "Objects in the last stats collection, by kind (container, sandbox)"),
        &["kind"],
    )
    .unwrap();
    stream_sessions: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_stream_sessions_total", "Streaming sessions started (a token redeemed and the connection upgraded), by kind: exec, attach, portforward"),
        &["kind"],
    )
    .unwrap();
    streams_open: IntGaugeVec = IntGaugeVec::new(
        Opts::new("concord_streams_open", "Streaming sessions open now, by kind"),
        &["kind"],
    )
    .unwrap();
    stream_connections: IntGauge = IntGauge::new("concord_stream_connections", "Connections the streaming server holds now (each upgraded session holds its connection's slot)").unwrap();
    stream_connections_limit: IntGauge = IntGauge::new("concord_stream_connections_limit", "Connections the streaming server holds at most; one more is refused").unwrap();
    stream_connections_refused: IntCounter = IntCounter::new("concord_stream_connections_refused_total", "Streaming connections refused because the server held its limit").unwrap();
    stream_bytes: IntCounterVec = IntCounterVec::new(
        Opts::new("concord_stream_bytes_total", "Payload bytes through streaming sessions, by kind and direction (in: from the client, out: to it)"),
        &["kind", "direction"],
    )
    .unwrap();
}

impl Metrics {
    /// Runs `hook` before each scrape renders the metrics (gauges computed from state).
    pub fn on_scrape(&self, hook: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.scrape_hooks.lock().push(Box::new(hook));
    }

    /// Creates the series of every known label value at 0, so that a rate or an alert sees a
    /// series before the first increment (kinds, results, event types, stream kinds).
    fn init_known_labels(&self) {
        for kind in OBJECT_KINDS {
            self.reconcile_failing.with_label_values(&[kind]).set(0);
            self.reconcile_retries.with_label_values(&[kind]);
            self.drift_corrected.with_label_values(&[kind]);
            for result in ["ok", "error"] {
                self.reconciles.with_label_values(&[kind, result]);
            }
        }
        for t in ["created", "started", "stopped", "deleted"] {
            self.container_events.with_label_values(&[t]);
        }
        for kind in ["exec", "attach", "portforward"] {
            self.stream_sessions.with_label_values(&[kind]);
            self.streams_open.with_label_values(&[kind]);
            for direction in ["in", "out"] {
                self.stream_bytes.with_label_values(&[kind, direction]);
            }
        }
        self.pulls.with_label_values(&["ok"]);
    }

    /// Creates the per-handler series (pod start latency, OOM kills) of every configured
    /// runtime handler at 0.
    pub fn init_handlers(&self, runtime: &crate::config::RuntimeConfig) {
        for handler in runtime.handlers.keys() {
            self.pod_start_duration.with_label_values(&[handler]);
            self.oom_kills.with_label_values(&[handler]);
        }
    }

    /// Sets `concord_reconcile_failing_objects`: per kind, the objects whose last reconcile
    /// failed (every kind present, 0 included).
    pub fn count_failing(&self, by_kind: &[(&'static str, i64)]) {
        let mut failing: std::collections::BTreeMap<&str, i64> =
            OBJECT_KINDS.map(|k| (k, 0)).into();
        failing.extend(by_kind.iter().copied());
        for (kind, n) in failing {
            self.reconcile_failing.with_label_values(&[kind]).set(n);
        }
    }

    /// Records one sandbox a RunPodSandbox created and saw Ready, `since` its request.
    pub fn pod_started(
        &self,
        runtime: &crate::config::RuntimeConfig,
        handler: &str,
        since: std::time::Instant,
    ) {
        self.pod_start_duration
            .with_label_values(&[handler_label(runtime, handler)])
            .observe(since.elapsed().as_secs_f64());
    }

    /// The text exposition of every metric (the scrape hooks run first).
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        for hook in self.scrape_hooks.lock().iter() {
            hook(self);
        }
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of metrics cannot fail");
        String::from_utf8(buf).expect("metrics text is UTF-8")
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_buckets_follow_kubelet_spacing_and_pass_four_minutes() {
        let b = rpc_buckets();
        assert!((b[0] - 0.005).abs() < 1e-12);
        assert!((b[1] - 0.0125).abs() < 1e-12);
        assert!(*b.last().unwrap() > 240.0);
        assert_eq!(b.len(), 14, "kubelet's ExponentialBuckets(.005, 2.5, 14)");
    }

    #[test]
    fn catalog_lists_every_rendered_family_with_help_and_type() {
        let m = Metrics::new();
        let catalog = m.catalog();
        let text = m.render();
        for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let (name, kind) = line.split_once(' ').unwrap();
            assert!(
                catalog.iter().any(|d| d.name == name && d.kind == kind),
                "{name} ({kind}) missing from the catalog"
            );
        }
        for d in &catalog {
            assert!(d.help.len() > 15, "{} needs a meaningful help", d.name);
        }
        assert!(catalog
            .iter()
            .any(|d| d.name == "process_resident_memory_bytes"));
    }

    #[test]
    fn build_info_names_revision_and_rustc() {
        let text = Metrics::new().render();
        let line = text
            .lines()
            .find(|l| l.starts_with("concord_build_info{"))
            .unwrap();
        assert!(line.contains("revision=\""), "{line}");
        assert!(line.contains("rustc=\"rustc "), "{line}");
        assert!(line.ends_with(" 1"), "{line}");
    }

    #[test]
    fn scrape_hooks_run_before_rendering() {
        let m = Metrics::new();
        m.on_scrape(|m| m.reconcile_failing.with_label_values(&["sandbox"]).set(2));
        assert!(m
            .render()
            .contains("concord_reconcile_failing_objects{kind=\"sandbox\"} 2"));
    }

    #[test]
    fn every_metric_is_prefixed_and_rendered() {
        let m = Metrics::new();
        m.grpc_requests.with_label_values(&["Version", "OK"]).inc();
        let text = m.render();
        assert!(text.contains("concord_build_info{"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("concord_") || line.starts_with("process_"),
                "{line}"
            );
        }
    }
}
