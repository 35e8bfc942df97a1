//! The layer against a local subscriber: traces, the join by object generation, errors.

use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// Runs `f` under a subscriber with only the layer; answers the spans it finished.
fn spans_of(ratio: f64, f: impl FnOnce()) -> Vec<FinishedSpan> {
    let config = TracingConfig {
        otlp_endpoint: "http://127.0.0.1:1".into(),
        sample_ratio: ratio,
    };
    let (layer, mut exporter) = OtlpLayer::new(&config).unwrap();
    let subscriber = tracing_subscriber::registry().with(layer.with_filter(OtlpLayer::filter()));
    tracing::subscriber::with_default(subscriber, f);
    let mut out = Vec::new();
    while let Ok(s) = exporter.spans.try_recv() {
        out.push(s);
    }
    out
}

fn named<'a>(spans: &'a [FinishedSpan], name: &str) -> &'a FinishedSpan {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} span in {spans:#?}"))
}

/// An RPC that records generation 1 of sandbox s1, then its reconcile calling containerd.
fn rpc_then_reconcile() {
    tracing::info_span!("rpc", method = "RunPodSandbox").in_scope(|| {
        tracing::debug!(
            seq = 7,
            events = 1,
            object = "sandbox",
            id = "s1",
            generation = 1u64,
            "journal commit"
        );
    });
    tracing::info_span!("reconcile", kind = "sandbox", id = "s1", generation = 1u64).in_scope(
        || {
            tracing::debug_span!("containerd", call = "Tasks.Create").in_scope(|| {
                tracing::debug!(code = "Unavailable", error = "refused", "containerd call")
            });
        },
    );
}

#[test]
fn a_reconcile_joins_the_rpc_that_recorded_its_generation() {
    let spans = spans_of(1.0, rpc_then_reconcile);
    let (rpc, rec, ctd) = (
        named(&spans, "rpc"),
        named(&spans, "reconcile"),
        named(&spans, "containerd"),
    );
    assert_eq!(rpc.parent_id, None);
    assert_eq!(rpc.kind, SpanKind::Server);
    assert_eq!(rec.trace_id, rpc.trace_id);
    assert_eq!(rec.parent_id, Some(rpc.span_id));
    assert_eq!(
        (ctd.trace_id, ctd.parent_id),
        (rpc.trace_id, Some(rec.span_id))
    );
    assert_eq!(ctd.kind, SpanKind::Client);
    assert_eq!(ctd.error.as_deref(), Some("refused"));
    assert_eq!(rpc.error, None);
    assert_eq!(rpc.events[0].name, "journal commit");
    assert!(ctd
        .attributes
        .contains(&("call", Value::Str("Tasks.Create".into()))));
    assert!(rec.attributes.contains(&("generation", Value::Int(1))));
}

#[test]
fn a_reconcile_of_another_generation_starts_its_own_trace() {
    let spans = spans_of(1.0, || {
        rpc_then_reconcile();
        tracing::info_span!("reconcile", kind = "sandbox", id = "s1", generation = 2u64)
            .in_scope(|| {});
    });
    let rpc = named(&spans, "rpc");
    let other = spans
        .iter()
        .find(|s| s.attributes.contains(&("generation", Value::Int(2))))
        .unwrap();
    assert_ne!(other.trace_id, rpc.trace_id);
    assert_eq!(other.parent_id, None);
}

/// A reconcile pass of sandbox s1's generation 1, failing with a warning when `fail`.
fn pass(fail: bool) {
    tracing::info_span!("reconcile", kind = "sandbox", id = "s1", generation = 1u64).in_scope(
        || {
            if fail {
                tracing::warn!("reconcile failed");
            }
        },
    );
}

#[test]
fn retries_of_a_failed_reconcile_join_the_trace_and_passes_after_a_success_do_not() {
    let spans = spans_of(1.0, || {
        tracing::info_span!("rpc", method = "RunPodSandbox").in_scope(|| {
            tracing::debug!(
                object = "sandbox",
                id = "s1",
                generation = 1u64,
                "journal commit"
            );
        });
        pass(true);
        pass(false);
        pass(false);
    });
    let rpc = named(&spans, "rpc");
    let passes: Vec<_> = spans.iter().filter(|s| s.name == "reconcile").collect();
    assert_eq!(passes.len(), 3);
    assert_eq!(passes[0].error.as_deref(), Some("reconcile failed"));
    assert_eq!(passes[0].parent_id, Some(rpc.span_id));
    assert_eq!(passes[1].parent_id, Some(rpc.span_id));
    assert_eq!(passes[2].parent_id, None);
    assert_ne!(passes[2].trace_id, rpc.trace_id);
}

#[test]
fn spans_outside_an_rpc_or_a_reconcile_and_unsampled_traces_are_not_sent() {
    let spans = spans_of(1.0, || {
        tracing::debug_span!("containerd", call = "Version").in_scope(|| {});
    });
    assert!(spans.is_empty(), "{spans:#?}");
    assert!(spans_of(0.0, rpc_then_reconcile).is_empty());
}

#[test]
fn links_forget_the_oldest_past_their_bound() {
    let mut links = Links::default();
    let origin = Origin {
        trace_id: 1,
        parent_id: None,
        sampled: true,
    };
    for n in 0..=LINKS as i64 {
        links.insert(("sandbox".into(), "s".into(), n), origin);
    }
    assert_eq!(links.map.len(), LINKS);
    assert_eq!(links.get(&("sandbox".into(), "s".into(), 0)), None);
    assert_eq!(
        links.get(&("sandbox".into(), "s".into(), LINKS as i64)),
        Some(origin)
    );
}

#[test]
fn traceparents_parse_as_w3c_trace_context() {
    assert_eq!(
        parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        Some((0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, true))
    );
    assert_eq!(
        parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").map(|p| p.2),
        Some(false)
    );
    for bad in [
        "",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
        "00-0af7651916cd43dd8448eb211c8031zz-b7ad6b7169203331-01",
        "00-0af7651916cd43dd-b7ad6b7169203331-01",
    ] {
        assert_eq!(parse_traceparent(bad), None, "{bad}");
    }
}

#[test]
fn an_rpc_joins_its_callers_trace_and_the_callers_span_is_not_sent() {
    let spans = spans_of(1.0, || {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        tracing::debug_span!("grpc", traceparent = tp).in_scope(rpc_then_reconcile);
    });
    assert!(spans.iter().all(|s| s.name != "grpc"), "{spans:#?}");
    let rpc = named(&spans, "rpc");
    assert_eq!(rpc.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
    assert_eq!(rpc.parent_id, Some(0xb7ad6b7169203331));
    assert_eq!(named(&spans, "reconcile").trace_id, rpc.trace_id);
}
