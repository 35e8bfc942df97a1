//! The exporter: batches finished spans (every second, or 512 at once) and POSTs them to the
//! collector as OTLP/HTTP JSON (`{endpoint}/v1/traces`); a collector that does not answer costs
//! the batch and one warning a minute, never a wait in the daemon.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Attrs, FinishedSpan, SpanEvent, Value};
use crate::metrics::Metrics;

/// Longest a batch waits before it is sent.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Most spans in one request.
const BATCH: usize = 512;
/// Longest one request may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the last flush may take at shutdown.
const FINAL_FLUSH: Duration = Duration::from_secs(2);
/// At most one warning about the collector per this period.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Sends the layer's finished spans; run it with [`Exporter::run`].
pub struct Exporter {
    url: String,
    pub(super) spans: mpsc::Receiver<FinishedSpan>,
    /// Spans the layer dropped on a full queue.
    queue_dropped: Arc<AtomicU64>,
    /// The part of `queue_dropped` counted in the metric.
    queue_counted: u64,
    /// Spans lost to failed requests.
    post_dropped: u64,
    /// The dropped count the last warning reported.
    reported: u64,
    last_warning: Option<Instant>,
    client: reqwest::Client,
    resource: Attrs,
}

impl Exporter {
    pub(super) fn new(
        endpoint: &str,
        spans: mpsc::Receiver<FinishedSpan>,
        queue_dropped: Arc<AtomicU64>,
    ) -> Exporter {
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        Exporter {
            url: traces_url(endpoint),
            spans,
            queue_dropped,
            queue_counted: 0,
            post_dropped: 0,
            reported: 0,
            last_warning: None,
            client: reqwest::Client::builder()
                .timeout(POST_TIMEOUT)
                .build()
                .unwrap_or_default(),
            resource: vec![
                ("service.name", Value::Str("concord".into())),
                (
                    "service.version",
                    Value::Str(env!("CARGO_PKG_VERSION").into()),
                ),
                ("host.name", Value::Str(host)),
            ],
        }
    }

    /// Sends batches until `stop`, then what is queued; counts what it drops in `metrics`.
    pub async fn run(mut self, metrics: Arc<Metrics>, stop: CancellationToken) {
        let mut batch = Vec::new();
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                got = self.spans.recv() => match got {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= BATCH {
                            self.post(&mut batch, &metrics).await;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => if !batch.is_empty() {
                    self.post(&mut batch, &metrics).await;
                },
            }
        }
        // What is queued, within a bound: a collector that does not answer must not hold up
        // the daemon's exit.
        let flush = async {
            while let Ok(span) = self.spans.try_recv() {
                batch.push(span);
                if batch.len() >= BATCH {
                    self.post(&mut batch, &metrics).await;
                }
            }
            if !batch.is_empty() {
                self.post(&mut batch, &metrics).await;
            }
        };
        let _ = tokio::time::timeout(FINAL_FLUSH, flush).await;
    }

    /// Sends `batch` (emptied either way).
    async fn post(&mut self, batch: &mut Vec<FinishedSpan>, metrics: &Metrics) {
        let body = encode(batch, &self.resource);
        let n = batch.len() as u64;
        batch.clear();
        let sent = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let error = match sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the collector answered {}", r.status())),
            Err(e) => Some(error_chain(&e)),
        };
        let dropped = &metrics.trace_spans_dropped;
        if error.is_some() {
            self.post_dropped += n;
            dropped.with_label_values(&["export_failed"]).inc_by(n);
        }
        let queue = self.queue_dropped.load(Ordering::Relaxed);
        if queue > self.queue_counted {
            dropped
                .with_label_values(&["queue_full"])
                .inc_by(queue - self.queue_counted);
            self.queue_counted = queue;
        }
        self.warn(error);
    }

    /// One warning a minute at most, about a failed request or spans dropped since the last.
    fn warn(&mut self, error: Option<String>) {
        let dropped = self.post_dropped + self.queue_dropped.load(Ordering::Relaxed);
        if dropped == self.reported
            || self
                .last_warning
                .is_some_and(|at| at.elapsed() < WARN_EVERY)
        {
            return;
        }
        self.reported = dropped;
        self.last_warning = Some(Instant::now());
        match error {
            Some(error) => tracing::warn!(
                url = %self.url,
                %error,
                dropped_spans = dropped,
                "cannot send spans to the OTLP collector: dropping them"
            ),
            None => tracing::warn!(
                url = %self.url,
                dropped_spans = dropped,
                "span queue full: dropping spans"
            ),
        }
    }
}

/// The error and its causes, `: `-joined.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The traces URL of an OTLP/HTTP endpoint: `/v1/traces` below it, unless it names that path.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The OTLP/HTTP JSON body (an ExportTraceServiceRequest) of `spans` from resource `resource`.
pub fn encode(spans: &[FinishedSpan], resource: &Attrs) -> Vec<u8> {
    let request = Request {
        resource_spans: [ResourceSpans {
            resource: Resource {
                attributes: key_values(resource),
            },
            scope_spans: [ScopeSpans {
                scope: Scope {
                    name: "concord",
                    version: env!("CARGO_PKG_VERSION"),
                },
                spans: spans.iter().map(Span::of).collect(),
            }],
        }],
    };
    serde_json::to_vec(&request).expect("the OTLP request serializes")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    resource_spans: [ResourceSpans<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    resource: Resource<'a>,
    scope_spans: [ScopeSpans<'a>; 1],
}

#[derive(Serialize)]
struct Resource<'a> {
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Serialize)]
struct ScopeSpans<'a> {
    scope: Scope,
    spans: Vec<Span<'a>>,
}

#[derive(Serialize)]
struct Scope {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Span<'a> {
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    parent_span_id: String,
    name: &'static str,
    kind: u8,
    start_time_unix_nano: String,
    end_time_unix_nano: String,
    attributes: Vec<KeyValue<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    events: Vec<Event<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status<'a>>,
}

impl<'a> Span<'a> {
    fn of(s: &'a FinishedSpan) -> Span<'a> {
        Span {
            trace_id: format!("{:032x}", s.trace_id),
            span_id: format!("{:016x}", s.span_id),
            parent_span_id: s.parent_id.map(|p| format!("{p:016x}")).unwrap_or_default(),
            name: s.name,
            kind: s.kind as u8,
            start_time_unix_nano: s.start.to_string(),
            end_time_unix_nano: s.end.max(s.start).to_string(),
            attributes: key_values(&s.attributes),
            events: s.events.iter().map(Event::of).collect(),
            status: s.error.as_deref().map(|message| Status {
                code: STATUS_ERROR,
                message,
            }),
        }
    }
}

/// OTLP's STATUS_CODE_ERROR.
const STATUS_ERROR: u8 = 2;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    time_unix_nano: String,
    name: &'a str,
    attributes: Vec<KeyValue<'a>>,
}

impl<'a> Event<'a> {
    fn of(e: &'a SpanEvent) -> Event<'a> {
        Event {
            time_unix_nano: e.time.to_string(),
            name: &e.name,
            attributes: key_values(&e.attributes),
        }
    }
}

#[derive(Serialize)]
struct Status<'a> {
    code: u8,
    message: &'a str,
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'static str,
    value: AnyValue<'a>,
}

/// OTLP's AnyValue in its JSON form: one key naming the type (64-bit integers as strings).
#[derive(Serialize)]
enum AnyValue<'a> {
    #[serde(rename = "stringValue")]
    String(&'a str),
    #[serde(rename = "intValue")]
    Int(String),
    #[serde(rename = "boolValue")]
    Bool(bool),
    #[serde(rename = "doubleValue")]
    Double(f64),
}

fn key_values(attrs: &Attrs) -> Vec<KeyValue<'_>> {
    attrs
        .iter()
        .map(|(key, v)| KeyValue {
            key,
            value: match v {
                Value::Str(s) => AnyValue::String(s),
                Value::Int(n) => AnyValue::Int(n.to_string()),
                Value::Bool(b) => AnyValue::Bool(*b),
                Value::Double(d) => AnyValue::Double(*d),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::otlp::SpanKind;

    fn span() -> FinishedSpan {
        FinishedSpan {
            trace_id: 0xab,
            span_id: 0x12,
            parent_id: Some(0x34),
            name: "containerd",
            kind: SpanKind::Client,
            start: 1_700_000_000_000_000_000,
            end: 1_700_000_000_500_000_000,
            attributes: vec![
                ("call", Value::Str("Tasks.Create".into())),
                ("generation", Value::Int(2)),
            ],
            events: vec![SpanEvent {
                time: 1_700_000_000_400_000_000,
                name: "containerd call".into(),
                attributes: vec![("code", Value::Str("Unavailable".into()))],
            }],
            error: Some("connection refused".into()),
        }
    }

    #[test]
    fn spans_encode_as_the_otlp_json_mapping() {
        let resource = vec![("service.name", Value::Str("concord".into()))];
        let body: serde_json::Value =
            serde_json::from_slice(&encode(&[span()], &resource)).unwrap();
        let rs = &body["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0],
            serde_json::json!({"key": "service.name", "value": {"stringValue": "concord"}})
        );
        assert_eq!(rs["scopeSpans"][0]["scope"]["name"], "concord");
        let s = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], format!("{:032x}", 0xab));
        assert_eq!(s["spanId"], "0000000000000012");
        assert_eq!(s["parentSpanId"], "0000000000000034");
        assert_eq!(s["name"], "containerd");
        assert_eq!(s["kind"], 3);
        assert_eq!(s["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(s["endTimeUnixNano"], "1700000000500000000");
        assert_eq!(
            s["attributes"],
            serde_json::json!([
                {"key": "call", "value": {"stringValue": "Tasks.Create"}},
                {"key": "generation", "value": {"intValue": "2"}},
            ])
        );
        assert_eq!(s["events"][0]["name"], "containerd call");
        assert_eq!(s["events"][0]["timeUnixNano"], "1700000000400000000");
        assert_eq!(
            s["status"],
            serde_json::json!({"code": 2, "message": "connection refused"})
        );
    }

    #[test]
    fn a_root_span_without_error_has_no_parent_nor_status() {
        let mut s = span();
        s.parent_id = None;
        s.error = None;
        s.events.clear();
        let body: serde_json::Value = serde_json::from_slice(&encode(&[s], &vec![])).unwrap();
        let s = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        let keys: Vec<_> = s.as_object().unwrap().keys().cloned().collect();
        assert!(!keys.contains(&"parentSpanId".to_string()), "{keys:?}");
        assert!(!keys.contains(&"status".to_string()), "{keys:?}");
        assert!(!keys.contains(&"events".to_string()), "{keys:?}");
    }

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
