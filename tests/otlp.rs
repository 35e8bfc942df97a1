//! Traces sent to an OTLP/HTTP collector (`tracing.otlp_endpoint`): one pod start is one trace,
//! from the RunPodSandbox RPC through its reconcile down to the CNI plugin and containerd calls.
//! The collector is a small HTTP/1.1 server here that answers 200 and keeps what it receives.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{self as pods, remove_pod, Daemon};
use concord::cri;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One request the collector received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    content_type: String,
    body: Value,
}

/// A collector on a free port: answers every request 200 and keeps it. Answers its URL.
async fn collector() -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                while let Some(r) = read_request(&mut conn).await {
                    keep.lock().push(r);
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                  content-length: 2\r\n\r\n{}";
                    if conn.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (url, got)
}

/// One HTTP/1.1 request with a content-length body (None: the connection ended).
async fn read_request(conn: &mut BufReader<tokio::net::TcpStream>) -> Option<Received> {
    let mut line = String::new();
    conn.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let (mut length, mut content_type) = (0, String::new());
    loop {
        line.clear();
        conn.read_line(&mut line).await.ok().filter(|n| *n > 0)?;
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "content-type" => content_type = value.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await.ok()?;
    Some(Received {
        path,
        content_type,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

/// Every span received so far.
fn spans(got: &Mutex<Vec<Received>>) -> Vec<Value> {
    got.lock()
        .iter()
        .flat_map(|r| {
            r.body["resourceSpans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// A span's attribute as text (string or integer).
fn attr(span: &Value, key: &str) -> Option<String> {
    let a = span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?;
    let v = &a["value"];
    v["stringValue"]
        .as_str()
        .or(v["intValue"].as_str())
        .map(str::to_string)
}

/// The reconcile span of generation 1 of pod `pod` (namespace/name).
fn pod_reconcile<'a>(spans: &'a [Value], pod: &str) -> Option<&'a Value> {
    spans.iter().find(|s| {
        s["name"] == "reconcile"
            && attr(s, "pod").as_deref() == Some(pod)
            && attr(s, "kind").as_deref() == Some("sandbox")
            && attr(s, "generation").as_deref() == Some("1")
    })
}

/// Whether `span` is below `ancestor` (by parentSpanId, within `by_id`).
fn below(span: &Value, ancestor: &Value, by_id: &HashMap<String, &Value>) -> bool {
    let mut at = span;
    while let Some(parent) = at["parentSpanId"].as_str() {
        if parent == ancestor["spanId"] {
            return true;
        }
        match by_id.get(parent) {
            Some(p) => at = p,
            None => return false,
        }
    }
    false
}

fn is_hex(v: &Value, len: usize) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test]
async fn a_pod_start_is_one_trace_from_the_rpc_to_the_cni_plugin() {
    let (endpoint, got) = collector().await;
    let config = format!("[tracing]\notlp_endpoint = \"{endpoint}\"\n");
    // At log level info: the spans are traced whatever the log's level.
    let mut d = Daemon::new();
    std::fs::write(d.dir.join("config.toml"), config).unwrap();
    d.log_level = Some("info".into());
    pods::pod_flags(&mut d);
    d.start().await;
    let name = common::unique("traced");
    let pod = pods::pod(&d, &name).await;
    let full = format!("default/{name}");
    common::eventually(Duration::from_secs(15), "the pod's reconcile span", || {
        let spans = spans(&got);
        let found = pod_reconcile(&spans, &full).is_some_and(|r| {
            spans
                .iter()
                .any(|s| s["name"] == "rpc" && s["traceId"] == r["traceId"])
        });
        async move { found }
    })
    .await;
    let all = spans(&got);
    let reconcile = pod_reconcile(&all, &full).unwrap();
    let trace: Vec<&Value> = all
        .iter()
        .filter(|s| s["traceId"] == reconcile["traceId"])
        .collect();
    let by_id: HashMap<String, &Value> = trace
        .iter()
        .map(|s| (s["spanId"].as_str().unwrap().to_string(), *s))
        .collect();
    let rpc = trace.iter().find(|s| s["name"] == "rpc").unwrap();
    assert_eq!(attr(rpc, "method").as_deref(), Some("RunPodSandbox"));
    assert_eq!(rpc["kind"], 2, "{rpc}");
    assert!(rpc.get("parentSpanId").is_none(), "{rpc}");
    assert_eq!(reconcile["parentSpanId"], rpc["spanId"]);
    let journal_commit = rpc["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "journal commit");
    assert!(journal_commit.is_some(), "{rpc}");
    let cni_add = trace
        .iter()
        .find(|s| s["name"] == "cni" && attr(s, "command").as_deref() == Some("ADD"))
        .unwrap_or_else(|| panic!("no CNI ADD span in {trace:#?}"));
    assert!(below(cni_add, reconcile, &by_id), "{cni_add}");
    assert!(attr(cni_add, "plugin").is_some(), "{cni_add}");
    let calls: Vec<String> = trace
        .iter()
        .filter(|s| s["name"] == "containerd" && below(s, reconcile, &by_id))
        .filter_map(|s| attr(s, "call"))
        .collect();
    assert!(
        calls.iter().any(|c| c == "Tasks.Create"),
        "containerd calls below the reconcile: {calls:?}"
    );
    for s in &trace {
        assert!(is_hex(&s["traceId"], 32), "{s}");
        assert!(is_hex(&s["spanId"], 16), "{s}");
        assert!(s["startTimeUnixNano"].as_str().is_some(), "{s}");
        assert!(s["endTimeUnixNano"].as_str().is_some(), "{s}");
    }
    let first = got.lock()[0].clone();
    assert_eq!(first.path, "/v1/traces");
    assert_eq!(first.content_type, "application/json");
    assert_eq!(
        first.body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
        "concord"
    );
    remove_pod(&d, &pod.id).await;
}

#[tokio::test]
async fn a_failed_rpc_is_a_span_with_an_error_status_in_its_callers_trace() {
    let (endpoint, got) = collector().await;
    let config = format!("[tracing]\notlp_endpoint = \"{endpoint}/\"\n");
    let d = pods::pod_daemon_with_config(&[], &config).await;
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut request = tonic::Request::new(cri::PodSandboxStatusRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-{parent}-01").parse().unwrap(),
    );
    let err = d
        .runtime()
        .await
        .pod_sandbox_status(request)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    common::eventually(Duration::from_secs(10), "the failed RPC's span", || {
        let found = spans(&got).iter().any(|s| {
            attr(s, "method").as_deref() == Some("PodSandboxStatus")
                && s["traceId"] == trace
                && s["parentSpanId"] == parent
                && s["status"]["code"] == 2
                && s["status"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("pod_sandbox_id"))
        });
        async move { found }
    })
    .await;
    assert!(spans(&got).iter().all(|s| s["name"] != "grpc"));
}

#[tokio::test]
async fn an_unreachable_collector_is_one_warning_and_rpcs_still_answer() {
    // A port nothing listens on.
    let port = common::free_port();
    let config = format!("[tracing]\notlp_endpoint = \"http://127.0.0.1:{port}\"\n");
    let d = pods::pod_daemon_with_config(&[], &config).await;
    for _ in 0..5 {
        d.version().await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let dropped = d
        .metric("concord_trace_spans_dropped_total", &["export_failed"])
        .await;
    assert!(dropped >= 1.0, "dropped spans: {dropped}");
    let log = d.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("cannot send spans to the OTLP collector"))
        .count();
    assert_eq!(warnings, 1, "{log}");
}

#[test]
fn an_endpoint_that_is_no_http_url_stops_the_start_naming_the_setting() {
    let d = Daemon::new();
    std::fs::write(
        d.dir.join("config.toml"),
        "[tracing]\notlp_endpoint = \"127.0.0.1:4317\"\n",
    )
    .unwrap();
    let (status, stderr) = d.run_to_exit(&[]);
    assert!(!status.success());
    assert!(stderr.contains("tracing.otlp_endpoint"), "{stderr}");
}
