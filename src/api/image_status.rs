//! ImageStatus and ListImages, answered from the in-memory image index.

use std::collections::HashMap;

use crate::cri;

use super::{ApiError, Server};
use crate::image::ImageRecord;

impl Server {
    pub async fn image_status(
        &self,
        req: cri::ImageStatusRequest,
    ) -> Result<cri::ImageStatusResponse, ApiError> {
        let what = req.image.map(|i| i.image).unwrap_or_default();
        if what.is_empty() {
            return Err(ApiError::invalid(
                "image.image",
                "an image id or reference is required",
            ));
        }
        let index = self.images.loaded_index().await;
        // An unknown image is not an error: the answer has no image (as kubelet expects).
        let Some(img) = index.find(&what) else {
            return Ok(cri::ImageStatusResponse::default());
        };
        let mut info = HashMap::new();
        if req.verbose {
            let config: serde_json::Value =
                serde_json::from_str(&img.resolved.config_json).unwrap_or_default();
            info.insert(
                "info".to_string(),
                serde_json::json!({
                    "imageSpec": config,
                    "chainID": img.resolved.chain_id,
                    "size": img.resolved.size,
                    "names": img.names.keys().collect::<Vec<_>>(),
                })
                .to_string(),
            );
        }
        Ok(cri::ImageStatusResponse {
            image: Some(self.cri_image(img)),
            info,
        })
    }

    pub async fn list_images(
        &self,
        req: cri::ListImagesRequest,
    ) -> Result<cri::ListImagesResponse, ApiError> {
        let index = self.images.loaded_index().await;
        let wanted = req
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = match wanted {
            Some(w) => index
                .find(&w)
                .map(|img| vec![self.cri_image(img)])
                .unwrap_or_default(),
            None => {
                let mut all: Vec<cri::Image> = index.all().map(|img| self.cri_image(img)).collect();
                all.sort_by(|a, b| a.id.cmp(&b.id));
                all
            }
        };
        Ok(cri::ListImagesResponse { images })
    }

    /// An index entry as CRI shows it.
    fn cri_image(&self, img: &ImageRecord) -> cri::Image {
        let user = img.user();
        let (uid, username) = user_of(&user);
        cri::Image {
            id: img.id().to_string(),
            repo_tags: img.repo_tags(),
            repo_digests: img.repo_digests(),
            size: img.resolved.size,
            uid: uid.map(|value| cri::Int64Value { value }),
            username,
            spec: Some(cri::ImageSpec {
                image: img.id().to_string(),
                ..Default::default()
            }),
            pinned: self.images.is_pinned(img),
        }
    }
}

/// The image config's `User` as CRI reports it: a numeric user is a uid, anything else a name
/// (the group part is dropped).
fn user_of(user: &str) -> (Option<i64>, String) {
    let u = user.split(':').next().unwrap_or("");
    if u.is_empty() {
        return (None, String::new());
    }
    match u.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, u.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::user_of;

    #[test]
    fn image_users_map_to_uid_or_name() {
        assert_eq!(user_of(""), (None, String::new()));
        assert_eq!(user_of("1002"), (Some(1002), String::new()));
        assert_eq!(user_of("1003:1004"), (Some(1003), String::new()));
        assert_eq!(user_of("www-data"), (None, "www-data".to_string()));
        assert_eq!(user_of("www-data:1004"), (None, "www-data".to_string()));
    }
}
