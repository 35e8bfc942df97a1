//! Version: runtime name, version and CRI API version.

use crate::cri;

use super::{ApiError, Server};

/// Name kubelet shows as the container runtime.
pub const RUNTIME_NAME: &str = "concord";
/// CRI API version served.
pub const RUNTIME_API_VERSION: &str = "v1";

impl Server {
    pub async fn version(
        &self,
        _req: cri::VersionRequest,
    ) -> Result<cri::VersionResponse, ApiError> {
        Ok(cri::VersionResponse {
            // The kubelet API version field; "0.1.0" is what CRI runtimes answer.
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        })
    }
}
