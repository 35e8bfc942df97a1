//! The wrapper every RPC goes through: a span, the latency timer and code counter, the readiness
//! gate, and the error table. Handlers never repeat any of it.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::{Response, Status};
use tracing::Instrument;

use super::error::ApiError;
use super::Server;
use crate::containerd::code_name;

/// What an RPC needs before it can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Answers from concord alone (Version, Status, introspection).
    None,
    /// Needs containerd to answer: refused with Unavailable while it does not.
    Containerd,
}

/// Longest wait for a health check (the first, or a fresh one while containerd was last seen down)
/// before a gated RPC is refused.
const FRESH_CHECK_WAIT: Duration = Duration::from_secs(3);

/// Longest wait for convergence when the caller sent no deadline: just under kubelet's 4 minutes.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(230);

impl Server {
    /// Runs one RPC handler with the cross-cutting concerns around it.
    pub async fn instrument<T, F>(
        &self,
        method: &'static str,
        gate: Gate,
        handler: F,
    ) -> Result<Response<T>, Status>
    where
        F: Future<Output = Result<T, ApiError>>,
    {
        let span = tracing::info_span!("rpc", method);
        let start = Instant::now();
        let result = async {
            if gate == Gate::Containerd {
                // Right after start the first health check may still be running, and after an
                // outage containerd may be back before the next periodic check: wait (briefly)
                // for a fresh check instead of refusing a call that would have worked.
                let health = self.health.ready_within(FRESH_CHECK_WAIT).await;
                if !health.ready {
                    return Err(ApiError::NotReady(format!(
                        "{method} needs containerd, which is not ready: {}",
                        health.message
                    )));
                }
            }
            handler.await
        }
        .instrument(span.clone())
        .await;
        let elapsed = start.elapsed();
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(e) => e.code(),
        };
        self.metrics
            .grpc_duration
            .with_label_values(&[method])
            .observe(elapsed.as_secs_f64());
        self.metrics
            .grpc_requests
            .with_label_values(&[method, code_name(code)])
            .inc();
        span.in_scope(|| match &result {
            Ok(_) => tracing::debug!(?elapsed, "ok"),
            Err(e) if matches!(code, tonic::Code::Unimplemented | tonic::Code::NotFound) => {
                tracing::debug!(?elapsed, code = code_name(code), error = %e, "failed")
            }
            Err(e) => tracing::warn!(?elapsed, code = code_name(code), error = %e, "failed"),
        });
        result.map(Response::new).map_err(Status::from)
    }
}

/// The caller's deadline from its `grpc-timeout` header, else [`DEFAULT_DEADLINE`].
pub fn deadline_of(meta: &tonic::metadata::MetadataMap) -> Duration {
    meta.get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(DEFAULT_DEADLINE)
}

/// Parses a gRPC timeout ("100m", "5S", "2H", ...).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(
            parse_grpc_timeout("119999m"),
            Some(Duration::from_millis(119_999))
        );
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("4M"), Some(Duration::from_secs(240)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("10q"), None);
    }
}
