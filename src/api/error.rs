//! The API's errors and the one table that turns them into gRPC statuses.

use std::sync::Arc;

use tonic::{Code, Status};

use crate::containerd::ContainerdError;
use crate::image::ImageError;
use crate::journal::AppendError;
use crate::reconcile::WaitError;

/// Everything an RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is missing or malformed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The object asked for does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// The call conflicts with the object's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The call's own time limit passed (ExecSync's timeout).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// concord cannot serve this call now (containerd down, shutting down).
    #[error("{0}")]
    NotReady(String),
    /// The intent could not be recorded.
    #[error("recording the intent failed: {0}")]
    Journal(#[from] AppendError),
    /// The intent was recorded but converging it failed or took too long.
    #[error("{what}: {source}")]
    Converge {
        what: String,
        #[source]
        source: WaitError,
    },
    /// A containerd call failed.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// An image operation failed (shared by concurrent pulls, hence the Arc).
    #[error("{0}")]
    Image(#[source] Arc<ImageError>),
}

impl ApiError {
    /// The gRPC code of this error: the single mapping table.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument { .. } => Code::InvalidArgument,
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::NotReady(_) => Code::Unavailable,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ApiError::Journal(AppendError::Closed) => Code::Unavailable,
            ApiError::Journal(AppendError::Store(_)) => Code::Internal,
            ApiError::Converge {
                source: WaitError::Deadline(_),
                ..
            } => Code::DeadlineExceeded,
            ApiError::Converge {
                source: WaitError::Failed(_),
                ..
            } => Code::Internal,
            ApiError::Converge {
                source: WaitError::Refused(_),
                ..
            } => Code::FailedPrecondition,
            ApiError::Image(e) => e.code(),
            ApiError::Containerd(e) => match e.code() {
                c @ (Code::NotFound
                | Code::AlreadyExists
                | Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::DeadlineExceeded
                | Code::Unavailable
                | Code::ResourceExhausted) => c,
                _ => Code::Internal,
            },
        }
    }

    /// Shorthand for a field error.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> ApiError {
        ApiError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

/// A spec field that cannot be honoured is the request's fault.
impl From<crate::oci::SpecError> for ApiError {
    fn from(e: crate::oci::SpecError) -> ApiError {
        ApiError::invalid(e.field, e.reason)
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn table_maps_each_kind_to_its_code() {
        assert_eq!(
            ApiError::invalid("pod_cidr", "bad").code(),
            Code::InvalidArgument
        );
        assert_eq!(
            ApiError::Converge {
                what: "x".into(),
                source: WaitError::Deadline(Duration::from_secs(1))
            }
            .code(),
            Code::DeadlineExceeded
        );
        assert_eq!(ApiError::NotReady("down".into()).code(), Code::Unavailable);
        let s: Status =
            ApiError::invalid("runtime_config.network_config.pod_cidr", "not a CIDR").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s
            .message()
            .contains("runtime_config.network_config.pod_cidr"));
    }
}
