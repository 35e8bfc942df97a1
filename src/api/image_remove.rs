//! RemoveImage: by id every name, by name that name; an unknown image is fine. The pinned sandbox
//! image is refused while a pod sandbox uses it, an image volume's image while a container that
//! mounts it exists.

use std::sync::Arc;

use crate::cri;

use super::{ApiError, Server};
use crate::image::ImageError;

impl Server {
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
        if let Some(img) = self.images.loaded_index().await.find(&what) {
            let state = self.journal.state();
            if self.images.is_pinned(img) {
                if let Some(user) = state.sandboxes.values().find(|s| {
                    s.pid.is_some() || s.desired != crate::journal::SandboxDesired::Removed
                }) {
                    return Err(ApiError::Image(Arc::new(ImageError::InUse {
                        image: what.clone(),
                        user: format!("pod sandbox {} (the pinned sandbox image)", user.id),
                    })));
                }
            }
            // An image volume's view keeps the image's layers; its record would go.
            if let Some(user) = state.containers.values().find(|c| {
                c.desired != crate::journal::ContainerDesired::Removed
                    && c.image_volumes.iter().any(|id| id == img.id())
            }) {
                return Err(ApiError::Image(Arc::new(ImageError::InUse {
                    image: what.clone(),
                    user: format!("container {} as an image volume", user.id),
                })));
            }
        }
        self.images
            .remove(&what)
            .await
            .map_err(|e| ApiError::Image(e.into()))?;
        Ok(cri::RemoveImageResponse {})
    }
}
