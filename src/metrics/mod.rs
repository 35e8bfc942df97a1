//! Prometheus metrics: one registry, every concord metric, and the /metrics HTTP listener.
//!
//! Names carry the `concord_` prefix and base units; labels are bounded (method, code, kind,
//! step, topic), never an object id.

mod server;

pub use server::serve;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// RPC latency buckets: 5 ms × 2.5^n, the spacing of kubelet's runtime-operation buckets, reaching
/// past kubelet's 4-minute RunPodSandbox deadline.
pub fn rpc_buckets() -> Vec<f64> {
    (0..13).map(|n| 0.005 * 2.5f64.powi(n)).collect()
}

/// containerd call buckets: 0.5 ms × 2.5^n up to about 2 minutes.
fn containerd_buckets() -> Vec<f64> {
    (0..14).map(|n| 0.0005 * 2.5f64.powi(n)).collect()
}

/// Declares [`Metrics`], one field per metric, and its constructor, which creates and registers
/// each; a metric is written once.
macro_rules! metrics {
    ($($field:ident: $ty:ty = $make:expr;)*) => {
        /// Every metric concord exports.
        pub struct Metrics {
            pub registry: Registry,
            $(pub $field: $ty,)*
        }

        impl Metrics {
            /// Creates and registers every metric.
            pub fn new() -> Metrics {
                let registry = Registry::new();
                register_build_info(&registry);
                $(
                    let $field: $ty = $make;
                    registry
                        .register(Box::new($field.clone()))
                        .expect("metric registered twice");
                )*
                Metrics { registry, $($field,)* }
            }
        }
    };
}

/// `concord_build_info`: always 1, labelled with the version.
fn register_build_info(registry: &Registry) {
    let build_info = IntGaugeVec::new(
        Opts::new("concord_build_info", "concord build; the value is always 1"),
        &["version", "runtime_api_version"],
    )
    .unwrap();
    registry
        .register(Box::new(build_info.clone()))
        .expect("metric registered twice");
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), "v1"])
        .set(1);
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
        HistogramOpts::new("concord_journal_append_duration_seconds", "Time to durably commit one batch of journal events")
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
        HistogramOpts::new("concord_image_pull_duration_seconds", "Time one image pull took")
            .buckets(rpc_buckets()),
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
    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of metrics cannot fail");
        String::from_utf8(buf).expect("metrics text is UTF-8")
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
    }

    #[test]
    fn every_metric_is_prefixed_and_rendered() {
        let m = Metrics::new();
        m.grpc_requests.with_label_values(&["Version", "OK"]).inc();
        let text = m.render();
        assert!(text.contains("concord_build_info{"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("concord_"), "{line}");
        }
    }
}
