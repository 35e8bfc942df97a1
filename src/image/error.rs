//! Errors of image operations, each naming the reference and the step.

use std::time::Duration;

use super::hosts::HostsError;
use super::reference::ReferenceError;
use crate::containerd::ContainerdError;

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The registry host config is unusable.
    #[error(transparent)]
    Hosts(#[from] HostsError),
    /// The registry refused the credentials (or needs some).
    #[error("pulling {reference}: {step}: registry {host} refused the credentials: {detail}")]
    Unauthenticated {
        reference: String,
        step: &'static str,
        host: String,
        detail: String,
    },
    /// The registry does not have it.
    #[error("pulling {reference}: {step}: not found at {host}")]
    NotFound {
        reference: String,
        step: &'static str,
        host: String,
    },
    /// The registry could not be reached or answered an error.
    #[error("pulling {reference}: {step}: {host}: {detail}")]
    Unavailable {
        reference: String,
        step: &'static str,
        host: String,
        detail: String,
    },
    /// Downloaded bytes do not match their digest.
    #[error("pulling {reference}: {what} has digest {got}, expected {expected}")]
    DigestMismatch {
        reference: String,
        what: String,
        expected: String,
        got: String,
    },
    /// No manifest for the node's platform.
    #[error("pulling {reference}: no manifest for platform {platform}; the image has {available}")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    /// A document is malformed or of a type concord does not handle.
    #[error("{reference}: {what}: {reason}")]
    BadDocument {
        reference: String,
        what: String,
        reason: String,
    },
    /// The pull made no progress for too long.
    #[error("pulling {reference}: no progress for {after:?} while {step}; aborted")]
    Stalled {
        reference: String,
        step: String,
        after: Duration,
    },
    /// An archive for LoadImage is unusable.
    #[error("loading {path}: {reason}")]
    Archive { path: String, reason: String },
    /// A containerd step failed.
    #[error("{reference}: {step}: {source}")]
    Containerd {
        reference: String,
        step: &'static str,
        #[source]
        source: ContainerdError,
    },
    /// The image is not known.
    #[error("image {0:?} not found")]
    UnknownImage(String),
    /// The image is in use and cannot be removed.
    #[error("image {image} is in use by {user}; refusing to remove it")]
    InUse { image: String, user: String },
}

impl ImageError {
    /// The gRPC code.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ImageError::Reference(_) | ImageError::Archive { .. } => Code::InvalidArgument,
            ImageError::Hosts(_) => Code::FailedPrecondition,
            ImageError::Unauthenticated { .. } => Code::Unauthenticated,
            ImageError::NotFound { .. }
            | ImageError::NoPlatform { .. }
            | ImageError::UnknownImage(_) => Code::NotFound,
            ImageError::Unavailable { .. } => Code::Unavailable,
            ImageError::DigestMismatch { .. } => Code::DataLoss,
            ImageError::BadDocument { .. } => Code::FailedPrecondition,
            ImageError::Stalled { .. } => Code::DeadlineExceeded,
            ImageError::InUse { .. } => Code::FailedPrecondition,
            ImageError::Containerd { source, .. } => match source.code() {
                c @ (Code::NotFound
                | Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted) => c,
                _ => Code::Internal,
            },
        }
    }
}
