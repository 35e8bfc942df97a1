//! PullImage: pull (or join a pull already running) and answer the image id.

use crate::cri;

use super::{ApiError, Server};
use crate::image::Credentials;

impl Server {
    pub async fn pull_image(
        &self,
        req: cri::PullImageRequest,
    ) -> Result<cri::PullImageResponse, ApiError> {
        let image = req.image.map(|i| i.image).unwrap_or_default();
        if image.is_empty() {
            return Err(ApiError::invalid(
                "image.image",
                "an image reference is required",
            ));
        }
        let creds = match &req.auth {
            Some(a) => Credentials::from_cri(a).map_err(|r| ApiError::invalid("auth", r))?,
            None => Credentials::default(),
        };
        let id = self
            .images
            .pull(&image, creds)
            .await
            .map_err(ApiError::Image)?;
        Ok(cri::PullImageResponse { image_ref: id })
    }
}
