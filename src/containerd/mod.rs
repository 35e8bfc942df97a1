//! containerd over its gRPC socket: one shared channel, the namespace header on every call,
//! per-call metrics, and leases for work built in several steps.
//!
//! The channel connects lazily and reconnects by itself after transport errors, so concord starts
//! and answers while containerd is still down; the health monitor tells the rest when it is up.

mod diff;
mod health;
mod objects;
pub mod rpc;
pub mod shims;

pub use diff::BlobReader;
pub use health::{spawn_health_monitor, Health, HealthWatch};
pub use objects::{
    cri_labels, ContainerRuntime, SnapshotKind, TaskIo, TaskStatus, KIND_CONTAINER, KIND_LABEL,
    KIND_SANDBOX,
};

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    events_client::EventsClient, images_client::ImagesClient,
    introspection_client::IntrospectionClient, leases_client::LeasesClient,
    namespaces_client::NamespacesClient, snapshots::snapshots_client::SnapshotsClient,
    tasks_client::TasksClient, version_client::VersionClient,
};
use containerd_client::services::v1::{
    CreateRequest as LeaseCreateRequest, DeleteRequest as LeaseDeleteRequest,
};
use tonic::transport::Channel;

use crate::metrics::Metrics;

/// Label on every containerd object concord creates, naming the concord object that owns it.
pub const OWNER_LABEL: &str = "io.concord.owner";

/// containerd's GC removes a lease after this label's time (RFC 3339).
const LEASE_EXPIRE_LABEL: &str = "containerd.io/gc.expire";

/// Errors talking to containerd.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// A call failed; `call` names the service and method.
    #[error("containerd {call}: {status}", status = .status.message())]
    Call {
        call: &'static str,
        #[source]
        status: tonic::Status,
    },
}

impl ContainerdError {
    /// The gRPC code containerd answered.
    pub fn code(&self) -> tonic::Code {
        match self {
            ContainerdError::Call { status, .. } => status.code(),
        }
    }

    /// containerd said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == tonic::Code::NotFound
    }
}

/// A connection to containerd in one namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: Arc<str>,
    address: Arc<Path>,
    metrics: Arc<Metrics>,
}

impl Containerd {
    /// Builds a lazily connecting channel to the socket at `address`.
    pub fn new(address: &Path, namespace: &str, metrics: Arc<Metrics>) -> Containerd {
        Containerd {
            channel: crate::uds::lazy_channel(address),
            namespace: namespace.into(),
            address: address.into(),
            metrics,
        }
    }

    /// containerd's socket path.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// The namespace every call is made in.
    /// Kills the shims still serving `id` in this namespace (the id is gone from containerd);
    /// answers how many there were. Reads `/proc` on a blocking thread.
    pub async fn kill_shims_of(&self, id: &str) -> usize {
        let (ns, addr, id) = (
            self.namespace().to_string(),
            self.address().to_owned(),
            id.to_string(),
        );
        tokio::task::spawn_blocking(move || shims::kill_for(&ns, &addr, &id))
            .await
            .unwrap_or(0)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Wraps a message with the namespace header.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert(
            "containerd-namespace",
            self.namespace
                .parse()
                .expect("validated namespace is ASCII"),
        );
        req
    }

    /// Wraps a message with the namespace and lease headers.
    pub fn request_with_lease<T>(&self, msg: T, lease: &str) -> tonic::Result<tonic::Request<T>> {
        let mut req = self.request(msg);
        let value = lease
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("lease id is not ASCII"))?;
        req.metadata_mut().insert("containerd-lease", value);
        Ok(req)
    }

    /// Runs one unary containerd call within its [`rpc::Deadline`], recording its latency and
    /// code under its service and method; errors name it.
    pub async fn call<T, F>(&self, rpc: rpc::Rpc, fut: F) -> Result<T, ContainerdError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = rpc.timeout();
        let span = tracing::debug_span!("containerd", call = rpc.name);
        let start = Instant::now();
        let result = tracing::Instrument::instrument(
            async {
                match deadline {
                    None => fut.await,
                    Some(d) => match tokio::time::timeout(d, fut).await {
                        Ok(r) => r,
                        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                            "containerd did not answer within {d:?}"
                        ))),
                    },
                }
            },
            span.clone(),
        )
        .await;
        let elapsed = start.elapsed();
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        // NotFound answers a probe (an absent blob, snapshot or task): no error of the call.
        span.in_scope(|| match &result {
            Ok(_) => tracing::debug!(code = code_name(code), ?elapsed, "containerd call"),
            Err(s) if code == tonic::Code::NotFound => tracing::debug!(
                code = code_name(code),
                ?elapsed,
                detail = s.message(),
                "containerd call"
            ),
            Err(s) => tracing::debug!(
                code = code_name(code),
                ?elapsed,
                error = s.message(),
                "containerd call"
            ),
        });
        self.metrics
            .containerd_duration
            .with_label_values(&[rpc.service, rpc.method])
            .observe(elapsed.as_secs_f64());
        self.metrics
            .containerd_requests
            .with_label_values(&[rpc.service, rpc.method, code_name(code)])
            .inc();
        result
            .map(tonic::Response::into_inner)
            .map_err(|status| ContainerdError::Call {
                call: rpc.name,
                status,
            })
    }

    pub fn version_client(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel.clone())
    }
    /// The connection, for a service without a client method here.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    pub fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub fn introspection(&self) -> IntrospectionClient<Channel> {
        IntrospectionClient::new(self.channel.clone())
    }
    pub fn namespaces(&self) -> NamespacesClient<Channel> {
        NamespacesClient::new(self.channel.clone())
    }
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }

    /// containerd's version (also the health check).
    pub async fn version(&self) -> Result<(String, String), ContainerdError> {
        let r = self
            .call(
                rpc::VERSION_VERSION,
                self.version_client().version(self.request(())),
            )
            .await?;
        Ok((r.version, r.revision))
    }

    /// Creates a lease that containerd's GC drops by itself after `expire` (so a crash in the
    /// middle of a multi-step build leaves nothing behind for long). Delete it when done.
    pub async fn create_lease(
        &self,
        id: &str,
        expire: Duration,
        owner: &str,
    ) -> Result<String, ContainerdError> {
        let expire_at = std::time::SystemTime::now() + expire;
        let mut labels = HashMap::new();
        labels.insert(LEASE_EXPIRE_LABEL.to_string(), rfc3339(expire_at));
        labels.insert(OWNER_LABEL.to_string(), owner.to_string());
        let req = LeaseCreateRequest {
            id: id.to_string(),
            labels,
        };
        let r = self
            .call(rpc::LEASES_CREATE, self.leases().create(self.request(req)))
            .await?;
        Ok(r.lease.map(|l| l.id).unwrap_or_else(|| id.to_string()))
    }

    /// Deletes a lease (a missing one is fine), releasing what it protected to the GC.
    pub async fn delete_lease(&self, id: &str) -> Result<(), ContainerdError> {
        self.delete_lease_sync(id, false).await
    }

    /// Deletes a lease; with `sync` containerd collects what it protected before answering.
    pub async fn delete_lease_sync(&self, id: &str, sync: bool) -> Result<(), ContainerdError> {
        let req = LeaseDeleteRequest {
            id: id.to_string(),
            sync,
        };
        match self
            .call(rpc::LEASES_DELETE, self.leases().delete(self.request(req)))
            .await
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Ids of the leases in our namespace owned by concord and created before `before`.
    pub async fn list_owned_leases(
        &self,
        before: std::time::SystemTime,
    ) -> Result<Vec<String>, ContainerdError> {
        let req = containerd_client::services::v1::ListRequest {
            filters: vec![format!("labels.\"{OWNER_LABEL}\"")],
        };
        let r = self
            .call(rpc::LEASES_LIST, self.leases().list(self.request(req)))
            .await?;
        let before = before
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| (d.as_secs() as i64, d.subsec_nanos() as i32))
            .unwrap_or((0, 0));
        Ok(r.leases
            .into_iter()
            .filter(|l| {
                l.created_at
                    .as_ref()
                    .is_none_or(|t| (t.seconds, t.nanos) < before)
            })
            .map(|l| l.id)
            .collect())
    }
}

/// Prometheus label value for a gRPC code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// RFC 3339 UTC time with second precision (no date crate needed).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    format!("{}Z", rfc3339_seconds(t))
}

/// `t` as RFC 3339 in UTC with nanoseconds (Go's RFC3339Nano with all nine digits, as the CRI
/// log format writes it).
pub fn rfc3339_nano(t: std::time::SystemTime) -> String {
    let nanos = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}.{nanos:09}Z", rfc3339_seconds(t))
}

/// `YYYY-MM-DDTHH:MM:SS` of `t` in UTC.
fn rfc3339_seconds(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let t = |s| std::time::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rfc3339(t(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(t(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(t(1_795_000_000)), "2026-11-18T11:06:40Z");
    }
}
