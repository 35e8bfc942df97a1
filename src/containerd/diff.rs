//! A writable snapshot's changes as a layer tar: containerd's differ (`Diff.Diff`) compares the
//! snapshot with a read-only view of its parent, as containerd's client does for a checkpoint's
//! `rootfs-diff.tar` (`rootfs.CreateDiff`): added and changed files as they are, deletions as
//! whiteouts, whatever the snapshotter. Also the pieces it reads with: a snapshot's info and a
//! blob's stream.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::snapshots::{Info as SnapshotInfo, StatSnapshotRequest};
use containerd_client::services::v1::{DiffRequest, ReadContentRequest, ReadContentResponse};
use tokio::io::AsyncWriteExt;

use super::{rpc, Containerd, ContainerdError, SnapshotKind};

/// An uncompressed OCI layer: what the archive holds, as CRI-O's does.
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// How long the lease holding the view and the blob outlives a concord that died meanwhile.
const LEASE_EXPIRY: Duration = Duration::from_secs(600);

impl Containerd {
    /// Writes the changes of snapshot `key` (of `snapshotter`) against its parent to `dest` as
    /// an uncompressed layer tar; answers its size. The parent's view (labelled as `owner`'s)
    /// and the blob live under a lease of their own, released before this answers.
    pub async fn write_snapshot_diff(
        &self,
        snapshotter: &str,
        key: &str,
        owner: &str,
        dest: &Path,
    ) -> Result<u64, ContainerdError> {
        let lease = format!("concord-diff-{:016x}", fastrand::u64(..));
        self.create_lease(&lease, LEASE_EXPIRY, owner).await?;
        let view = format!("{lease}-parent-view");
        let written = self
            .diff_leased(snapshotter, key, &view, owner, &lease, dest)
            .await;
        if let Err(e) = self.remove_snapshot(snapshotter, &view).await {
            tracing::warn!(key = view, error = %e, "cannot remove a diff's parent view; its lease expires");
        }
        // Synchronously: the blob is gone from the content store when the archive is written.
        if let Err(e) = self.delete_lease_sync(&lease, true).await {
            tracing::warn!(lease, error = %e, "cannot delete a diff's lease; it expires");
        }
        written
    }

    async fn diff_leased(
        &self,
        snapshotter: &str,
        key: &str,
        view: &str,
        owner: &str,
        lease: &str,
        dest: &Path,
    ) -> Result<u64, ContainerdError> {
        let info = self.stat_snapshot(snapshotter, key).await?;
        let kind = SnapshotKind::View;
        let lower = self
            .new_snapshot(kind, snapshotter, view, &info.parent, owner, lease)
            .await?;
        let upper = self
            .snapshot_mounts(snapshotter, key)
            .await?
            .ok_or_else(|| ContainerdError::Call {
                call: rpc::SNAPSHOTS_MOUNTS.name,
                status: tonic::Status::not_found(format!("snapshot {key} is gone")),
            })?;
        let req = DiffRequest {
            left: lower,
            right: upper,
            media_type: LAYER_TAR.into(),
            r#ref: format!("{lease}-diff"),
            labels: HashMap::new(),
            ..Default::default()
        };
        let req = self.leased(req, lease, rpc::DIFF_DIFF.name)?;
        let blob = self
            .call(rpc::DIFF_DIFF, self.diff().diff(req))
            .await?
            .diff
            .ok_or_else(|| ContainerdError::Call {
                call: rpc::DIFF_DIFF.name,
                status: tonic::Status::internal("containerd answered no descriptor"),
            })?;
        self.copy_blob(&blob.digest, dest).await
    }

    /// Streams blob `digest` from the content store into a new file `dest`; answers its size.
    async fn copy_blob(&self, digest: &str, dest: &Path) -> Result<u64, ContainerdError> {
        let io = |e: std::io::Error| ContainerdError::Call {
            call: rpc::CONTENT_READ.name,
            status: tonic::Status::internal(format!("writing {}: {e}", dest.display())),
        };
        let mut blob = self.read_blob(digest).await?;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .await
            .map_err(io)?;
        let mut size = 0;
        while let Some(piece) = blob.next().await? {
            file.write_all(&piece).await.map_err(io)?;
            size += piece.len() as u64;
        }
        file.flush().await.map_err(io)?;
        Ok(size)
    }

    /// Snapshot `key`'s info (its parent, kind, labels).
    pub async fn stat_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> Result<SnapshotInfo, ContainerdError> {
        let req = StatSnapshotRequest {
            snapshotter: snapshotter.into(),
            key: key.into(),
        };
        let r = self
            .call(
                rpc::SNAPSHOTS_STAT,
                self.snapshots().stat(self.request(req)),
            )
            .await?;
        Ok(r.info.unwrap_or_default())
    }

    /// Opens blob `digest` of the content store for reading, piece by piece.
    pub async fn read_blob(&self, digest: &str) -> Result<BlobReader, ContainerdError> {
        let req = ReadContentRequest {
            digest: digest.into(),
            offset: 0,
            size: 0,
        };
        let stream = self
            .call(rpc::CONTENT_READ, self.content().read(self.request(req)))
            .await?;
        Ok(BlobReader(stream))
    }
}

/// A blob being read from containerd's content store (`Content.Read`).
pub struct BlobReader(tonic::Streaming<ReadContentResponse>);

impl BlobReader {
    /// The next piece; None at the end.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, ContainerdError> {
        match self.0.message().await {
            Ok(piece) => Ok(piece.map(|p| p.data)),
            Err(status) => Err(ContainerdError::Call {
                call: rpc::CONTENT_READ.name,
                status,
            }),
        }
    }
}
