//! RemoveImage: by id every name, by name that name; an unknown image is fine.

use k8s_cri::v1 as cri;

use super::{ApiError, Runtime};

impl Runtime {
    pub async fn remove_image(
        &self,
        req: cri::RemoveImageRequest,
    ) -> Result<cri::RemoveImageResponse, ApiError> {
        let what = req.image.map(|i| i.image).unwrap_or_default();
        if what.is_empty() {
            return Err(ApiError::invalid(
                "image.image",
                "an image id or reference is required",
            ));
        }
        self.images
            .remove(&what)
            .await
            .map_err(|e| ApiError::Image(e.into()))?;
        Ok(cri::RemoveImageResponse {})
    }
}
