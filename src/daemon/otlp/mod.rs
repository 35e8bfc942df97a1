//! Spans for an OpenTelemetry collector (`tracing.otlp_endpoint`): a tracing layer that gives
//! each RPC a trace, joins a reconcile to the trace of the RPC that recorded its object's
//! generation, and hands finished spans to the [`Exporter`] through a bounded queue (full: the
//! span is dropped and counted; the daemon never waits for the collector).
//!
//! The link: the `journal commit` event an RPC logs names the object (`object`, `id`) and the
//! `generation` it recorded; the layer remembers that object generation's trace and span, and
//! the `reconcile{kind, id, generation}` span of that generation becomes a child of it.
//! containerd, CNI and step spans nest under the reconcile as its children.
//!
//! A caller that sends a W3C `traceparent` (kubelet with its tracing on) gets the RPC in its
//! trace: [`remote_parent`] opens a `grpc{traceparent}` span around the request, which the layer
//! reads as the remote parent and does not send itself.

mod export;

pub use export::{encode, Exporter};

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::TracingConfig;

/// Finished spans waiting for the exporter; more are dropped (and counted).
const QUEUE: usize = 4096;
/// Object generations whose recording span is remembered for their reconcile to join.
const LINKS: usize = 4096;
/// Events kept per span (the first ones; an error is kept as the status regardless).
const MAX_EVENTS: usize = 32;

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
}

/// Attributes by key, in the order they were first recorded.
pub type Attrs = Vec<(&'static str, Value)>;

/// What a span is to OTLP (its `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    /// An RPC concord serves.
    Server = 2,
    /// A call concord makes (containerd, a CNI plugin).
    Client = 3,
}

/// A log line inside a span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanEvent {
    /// Nanoseconds since the Unix epoch.
    pub time: u64,
    /// The line's message.
    pub name: String,
    pub attributes: Attrs,
}

/// A finished span, as the exporter sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedSpan {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    pub name: &'static str,
    pub kind: SpanKind,
    /// Nanoseconds since the Unix epoch.
    pub start: u64,
    pub end: u64,
    pub attributes: Attrs,
    pub events: Vec<SpanEvent>,
    /// The error a line inside it reported (a warning, an error, or an `error` field).
    pub error: Option<String>,
}

/// What the layer keeps in a traced span until it closes.
struct Traced {
    trace_id: u128,
    span_id: u64,
    parent_id: Option<u64>,
    /// Sent at its close (its trace was sampled).
    sampled: bool,
    start: u64,
    attributes: Attrs,
    events: Vec<SpanEvent>,
    error: Option<String>,
    /// The object generation a reconcile joined the trace of.
    joined: Option<ObjectGeneration>,
    /// The caller's span (from its `traceparent`): a parent, not sent.
    remote: bool,
}

/// Where a span joins: its trace, its parent, whether the trace is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin {
    trace_id: u128,
    parent_id: Option<u64>,
    sampled: bool,
}

/// An object generation: `(kind, id, generation)`, as the reconcile span names it.
type ObjectGeneration = (String, String, i64);

/// The span each recent object generation was recorded in, oldest out past [`LINKS`].
#[derive(Default)]
struct Links {
    map: HashMap<ObjectGeneration, Origin>,
    order: VecDeque<ObjectGeneration>,
}

impl Links {
    fn insert(&mut self, key: ObjectGeneration, origin: Origin) {
        if self.map.insert(key.clone(), origin).is_none() {
            self.order.push_back(key);
            while self.order.len() > LINKS {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }

    fn get(&self, key: &ObjectGeneration) -> Option<Origin> {
        self.map.get(key).copied()
    }

    fn remove(&mut self, key: &ObjectGeneration) {
        if self.map.remove(key).is_some() {
            self.order.retain(|k| k != key);
        }
    }
}

/// The tracing layer: its own filter ([`OtlpLayer::filter`]) keeps it independent of the log's
/// level.
pub struct OtlpLayer {
    queue: mpsc::Sender<FinishedSpan>,
    dropped: Arc<AtomicU64>,
    links: Mutex<Links>,
    sample_ratio: f64,
}

impl OtlpLayer {
    /// The layer and its exporter for `config`; None when no endpoint is set.
    pub fn new(config: &TracingConfig) -> Option<(OtlpLayer, Exporter)> {
        if config.otlp_endpoint.is_empty() {
            return None;
        }
        let (queue, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let layer = OtlpLayer {
            queue,
            dropped: dropped.clone(),
            links: Mutex::default(),
            sample_ratio: config.sample_ratio,
        };
        Some((layer, Exporter::new(&config.otlp_endpoint, rx, dropped)))
    }

    /// What the layer sees: concord's spans and events down to debug, nothing of its libraries.
    pub fn filter() -> Targets {
        Targets::new().with_target("concord", Level::DEBUG)
    }

    /// Where a span without a traced parent starts: an RPC starts a trace; a reconcile joins
    /// the RPC that recorded its generation (answered too), else starts one; any other is not
    /// traced.
    fn root(&self, name: &str, fields: &Fields) -> Option<(Origin, Option<ObjectGeneration>)> {
        let joined = match name {
            "rpc" => None,
            "reconcile" => fields.object_generation("kind").and_then(|k| {
                let origin = self.links.lock().get(&k)?;
                Some((origin, Some(k)))
            }),
            _ => return None,
        };
        Some(joined.unwrap_or_else(|| {
            let origin = Origin {
                trace_id: fastrand::u128(1..),
                parent_id: None,
                sampled: self.sample_ratio >= 1.0 || fastrand::f64() < self.sample_ratio,
            };
            (origin, None)
        }))
    }

    fn send(&self, span: FinishedSpan) {
        if self.queue.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let from_parent = span.parent().and_then(|p| {
            p.extensions().get::<Traced>().map(|t| {
                let origin = Origin {
                    trace_id: t.trace_id,
                    parent_id: Some(t.span_id),
                    sampled: t.sampled,
                };
                (origin, None)
            })
        });
        if let Some((trace_id, span_id, sampled)) = remote(span.name(), &fields) {
            span.extensions_mut().insert(Traced {
                trace_id,
                span_id,
                parent_id: None,
                sampled,
                start: 0,
                attributes: Vec::new(),
                events: Vec::new(),
                error: None,
                joined: None,
                remote: true,
            });
            return;
        }
        let Some((origin, joined)) = from_parent.or_else(|| self.root(span.name(), &fields)) else {
            return;
        };
        span.extensions_mut().insert(Traced {
            trace_id: origin.trace_id,
            span_id: fastrand::u64(1..),
            parent_id: origin.parent_id,
            sampled: origin.sampled,
            start: now(),
            attributes: if origin.sampled {
                fields.values
            } else {
                Vec::new()
            },
            events: Vec::new(),
            error: None,
            joined,
            remote: false,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        let Some(t) = ext.get_mut::<Traced>().filter(|t| t.sampled) else {
            return;
        };
        let mut fields = Fields {
            values: std::mem::take(&mut t.attributes),
            message: None,
        };
        values.record(&mut fields);
        t.attributes = fields.values;
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let mut ext = span.extensions_mut();
        let Some(t) = ext.get_mut::<Traced>() else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(key) = fields.object_generation("object") {
            let origin = Origin {
                trace_id: t.trace_id,
                parent_id: Some(t.span_id),
                sampled: t.sampled,
            };
            self.links.lock().insert(key, origin);
        }
        let message = fields.message.take().unwrap_or_default();
        let error = fields.get("error").map(Value::text);
        if error.is_some() || *event.metadata().level() <= Level::WARN {
            t.error = Some(error.unwrap_or_else(|| message.clone()));
        }
        if t.sampled && t.events.len() < MAX_EVENTS {
            t.events.push(SpanEvent {
                time: now(),
                name: message,
                attributes: fields.values,
            });
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(t) = span.extensions_mut().remove::<Traced>() else {
            return;
        };
        // A generation reconciled: later passes (resyncs, events) are traces of their own. A
        // failed one keeps the link, for its retries.
        if let (Some(key), None) = (&t.joined, &t.error) {
            self.links.lock().remove(key);
        }
        if !t.sampled || t.remote {
            return;
        }
        let name = span.name();
        self.send(FinishedSpan {
            trace_id: t.trace_id,
            span_id: t.span_id,
            parent_id: t.parent_id,
            name,
            kind: match name {
                "rpc" => SpanKind::Server,
                "containerd" | "cni" => SpanKind::Client,
                _ => SpanKind::Internal,
            },
            start: t.start,
            end: now(),
            attributes: t.attributes,
            events: t.events,
            error: t.error,
        });
    }
}

/// The span around one gRPC request: `grpc{traceparent}` when the caller sent a `traceparent`
/// header, else none (for `tonic::transport::Server::trace_fn`).
pub fn remote_parent(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    match request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| parse_traceparent(v).is_some())
    {
        Some(traceparent) => tracing::debug_span!("grpc", traceparent),
        None => tracing::Span::none(),
    }
}

/// The remote parent a `grpc{traceparent}` span names: trace id, span id, sampled.
fn remote(name: &str, fields: &Fields) -> Option<(u128, u64, bool)> {
    match (name, fields.get("traceparent")?) {
        ("grpc", Value::Str(v)) => parse_traceparent(v),
        _ => None,
    }
}

/// A W3C trace context `traceparent` (`00-<trace id>-<parent id>-<flags>`): trace id, parent
/// span id, sampled. None when malformed or an id is zero.
pub fn parse_traceparent(value: &str) -> Option<(u128, u64, bool)> {
    let mut parts = value.trim().split('-');
    let version = parts.next().filter(|v| v.len() == 2 && *v != "ff")?;
    let trace = parts.next().filter(|t| t.len() == 32)?;
    let span = parts.next().filter(|s| s.len() == 16)?;
    let flags = parts.next().filter(|f| f.len() == 2)?;
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let span = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace, span, flags & 1 == 1))
}

/// Nanoseconds since the Unix epoch.
fn now() -> u64 {
    crate::clock::now_nanos().max(0) as u64
}

impl Value {
    /// The value as text (an error's message).
    fn text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Int(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Double(d) => d.to_string(),
        }
    }
}

/// The fields of a span or an event; `message` apart.
#[derive(Default)]
struct Fields {
    values: Attrs,
    message: Option<String>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message" {
            self.message = Some(value.text());
        } else if let Some(slot) = self.values.iter_mut().find(|(k, _)| *k == name) {
            slot.1 = value;
        } else {
            self.values.push((name, value));
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.values.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The object generation these fields name: kind in field `kind_field`, `id`, `generation`.
    fn object_generation(&self, kind_field: &str) -> Option<ObjectGeneration> {
        match (
            self.get(kind_field)?,
            self.get("id")?,
            self.get("generation")?,
        ) {
            (Value::Str(kind), Value::Str(id), Value::Int(g)) => {
                Some((kind.clone(), id.clone(), *g))
            }
            _ => None,
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.put(field, Value::Str(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::Str(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::Int(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(n) => self.put(field, Value::Int(n)),
            Err(_) => self.put(field, Value::Str(value.to_string())),
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::Double(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::Str(value.to_string()));
    }
}

#[cfg(test)]
mod tests;
