//! ImageFsInfo: the snapshot syncer's last measurement (never computed during the call).
//!
//! Images and the containers' writable layers live in the same snapshotter, so, like
//! containerd's CRI plugin, concord answers one image filesystem and leaves
//! `container_filesystems` empty: the proto's default, which the kubelet reads as "containers
//! share the image filesystem" (a split image/container store would list the second one there).

use crate::cri;

use super::{ApiError, Server};

impl Server {
    pub async fn image_fs_info(
        &self,
        _req: cri::ImageFsInfoRequest,
    ) -> Result<cri::ImageFsInfoResponse, ApiError> {
        let Some(u) = self.images.fs_usage() else {
            return Err(ApiError::NotReady(
                "image filesystem usage not measured yet".into(),
            ));
        };
        let fs = cri::FilesystemUsage {
            timestamp: u.timestamp_nanos,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: u.mountpoint.clone(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: u.used_bytes,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: u.inodes_used,
            }),
        };
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: Vec::new(),
        })
    }
}
