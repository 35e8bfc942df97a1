//! concord.v1.Images/LoadImage: import an archive from a path on the node.

use std::path::Path;

use super::{ApiError, Server};
use crate::proto;

impl Server {
    pub async fn load_image(
        &self,
        req: proto::LoadImageRequest,
    ) -> Result<proto::LoadImageResponse, ApiError> {
        if req.file_path.is_empty() {
            return Err(ApiError::invalid(
                "file_path",
                "a path to an image archive on the node is required",
            ));
        }
        let images = self
            .images
            .load(Path::new(&req.file_path))
            .await
            .map_err(|e| ApiError::Image(e.into()))?;
        Ok(proto::LoadImageResponse { images })
    }
}
