//! containerd's event stream: subscribe in a spawned task, decode, filter to our namespace, hand
//! each event to the loop; reconnect with jittered exponential backoff and ask for a full resync
//! after every reconnect (events were lost meanwhile).

mod decode;

pub use decode::{decode, ContainerdEvent, DecodeError};

use crate::containerd::rpc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use tokio_util::sync::CancellationToken;

use crate::containerd::Containerd;
use crate::metrics::Metrics;

/// Topic of the event concord publishes to make a fresh subscription answer at once.
pub const HEARTBEAT_TOPIC: &str = "/concord/heartbeat";

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3);

/// What the stream calls back into.
pub trait EventSink: Send + Sync + 'static {
    /// One decoded event in our namespace.
    fn event(&self, event: ContainerdEvent);
    /// The stream was re-established after a loss: resync everything.
    fn reconnected(&self);
}

/// Runs the subscription until `shutdown`.
pub fn spawn(
    ctd: Containerd,
    metrics: Arc<Metrics>,
    sink: Arc<dyn EventSink>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut attempt: u32 = 0;
        let mut connected_before = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                stream = subscribe(&ctd) => match stream {
                    Ok(mut stream) => {
                        metrics.event_stream_connected.set(1);
                        if connected_before {
                            metrics.event_reconnects.inc();
                            tracing::info!("containerd event stream re-established; resyncing");
                            sink.reconnected();
                        } else {
                            tracing::info!(namespace = ctd.namespace(), "containerd event stream established");
                        }
                        connected_before = true;
                        attempt = 0;
                        let reason = tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => None,
                            reason = pump(&mut stream, &ctd, &metrics, sink.as_ref()) => Some(reason),
                        };
                        metrics.event_stream_connected.set(0);
                        match reason {
                            None => break,
                            Some(reason) => tracing::warn!(%reason, "containerd event stream lost"),
                        }
                    }
                    Err(status) => {
                        tracing::debug!(error = %status.message(), attempt, "cannot subscribe to containerd events");
                    }
                }
            }
            let delay = reconnect_delay(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        metrics.event_stream_connected.set(0);
    })
}

/// Subscribes; containerd sends the response headers only with the first event, so a heartbeat is
/// published meanwhile to make the subscription answer at once.
async fn subscribe(
    ctd: &Containerd,
) -> Result<tonic::Streaming<containerd_client::types::Envelope>, tonic::Status> {
    let req = SubscribeRequest {
        filters: vec![format!("namespace=={}", ctd.namespace())],
    };
    let mut client = ctd.events();
    let sub = client.subscribe(ctd.request(req));
    tokio::pin!(sub);
    let mut nudge = tokio::time::interval(Duration::from_millis(250));
    nudge.tick().await;
    loop {
        tokio::select! {
            r = &mut sub => return r.map(tonic::Response::into_inner),
            _ = nudge.tick() => publish_heartbeat(ctd).await,
        }
    }
}

async fn publish_heartbeat(ctd: &Containerd) {
    let req = PublishRequest {
        topic: HEARTBEAT_TOPIC.into(),
        event: Some(prost_types::Any {
            type_url: "concord.v1.Heartbeat".into(),
            value: Vec::new(),
        }),
    };
    let mut client = ctd.events();
    let call = client.publish(ctd.request(req));
    if let Err(e) = ctd.call(rpc::EVENTS_PUBLISH, call).await {
        tracing::trace!(error = %e, "heartbeat publish failed");
    }
}

/// Reads events until the stream ends; answers why it ended.
async fn pump(
    stream: &mut tonic::Streaming<containerd_client::types::Envelope>,
    ctd: &Containerd,
    metrics: &Metrics,
    sink: &dyn EventSink,
) -> String {
    loop {
        match stream.message().await {
            Ok(Some(env)) => {
                if env.namespace != ctd.namespace() {
                    continue;
                }
                metrics
                    .events
                    .with_label_values(&[topic_label(&env.topic)])
                    .inc();
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                metrics.last_event_timestamp.set(now);
                if env.topic == HEARTBEAT_TOPIC {
                    continue;
                }
                match decode(&env) {
                    Ok(ContainerdEvent::Other) => {}
                    Ok(ev) => sink.event(ev),
                    Err(e) => tracing::warn!(error = %e, "undecodable containerd event skipped"),
                }
            }
            Ok(None) => return "containerd closed the stream".into(),
            Err(status) => return status.message().to_string(),
        }
    }
}

/// Bounded label for a topic: known topics as they are, others folded.
fn topic_label(topic: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/oom",
        "/tasks/delete",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/checkpointed",
        "/containers/create",
        "/containers/update",
        "/containers/delete",
        "/images/create",
        "/images/update",
        "/images/delete",
        "/snapshot/prepare",
        "/snapshot/commit",
        "/snapshot/remove",
        "/content/delete",
        "/namespaces/create",
        "/namespaces/update",
        "/namespaces/delete",
        HEARTBEAT_TOPIC,
    ];
    KNOWN
        .iter()
        .find(|k| **k == topic)
        .copied()
        .unwrap_or("other")
}

/// Jittered exponential delay: 100 ms × 2^attempt, capped, ±50 %.
fn reconnect_delay(attempt: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << attempt.min(10));
    base.min(MAX_BACKOFF).mul_f64(0.5 + fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_is_capped_and_jittered() {
        for a in 0..50 {
            assert!(reconnect_delay(a) <= MAX_BACKOFF.mul_f64(1.5));
        }
        assert!(reconnect_delay(0) <= Duration::from_millis(150));
    }

    #[test]
    fn unknown_topics_fold_into_other() {
        assert_eq!(topic_label("/tasks/exit"), "/tasks/exit");
        assert_eq!(topic_label("/something/else"), "other");
    }
}
