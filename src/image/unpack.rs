//! Unpacking layers into snapshots: per layer `Snapshots.Prepare(parent = chain so far)`,
//! `Diff.Apply`, `Snapshots.Commit(name = chain id)`; existing snapshots are reused and every
//! applied diff id is checked against the image config.

use crate::containerd::rpc;
use std::collections::HashMap;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{ApplyRequest, ApplyResponse};
use containerd_client::types::Mount;

use super::error::ImageError;
use super::manifest::{chain_ids, Descriptor};
use crate::containerd::{Containerd, ContainerdError, OWNER_LABEL};

/// Unpacks `layers` (with their diff ids) for `snapshotter`; answers the top chain id.
pub async fn unpack(
    ctd: &Containerd,
    lease: &str,
    reference: &str,
    snapshotter: &str,
    layers: &[Descriptor],
    diff_ids: &[String],
) -> Result<String, ImageError> {
    let u = Unpacker {
        ctd,
        lease,
        reference,
        snapshotter,
    };
    let chains = chain_ids(diff_ids);
    let mut parent = String::new();
    for ((layer, chain), diff_id) in layers.iter().zip(&chains).zip(diff_ids) {
        if !snapshot_exists(ctd, snapshotter, chain)
            .await
            .map_err(u.error("checking snapshots"))?
        {
            u.unpack_layer(layer, diff_id, &parent, chain).await?;
        }
        parent = chain.clone();
    }
    Ok(parent)
}

/// What every step of one image's unpack shares.
struct Unpacker<'a> {
    ctd: &'a Containerd,
    lease: &'a str,
    reference: &'a str,
    snapshotter: &'a str,
}

impl Unpacker<'_> {
    /// Applies `layer` on top of `parent` and commits it as snapshot `chain`; the unfinished
    /// snapshot is removed on failure.
    async fn unpack_layer(
        &self,
        layer: &Descriptor,
        diff_id: &str,
        parent: &str,
        chain: &str,
    ) -> Result<(), ImageError> {
        let key = format!("concord-extract-{}-{}", fastrand::u64(..), chain);
        let mounts = self.prepare(&key, parent).await?;
        let applied = match apply(self.ctd, layer, mounts).await {
            Ok(r) => r.applied.map(|d| d.digest).unwrap_or_default(),
            Err(e) => {
                remove_snapshot(self.ctd, self.snapshotter, &key).await;
                return Err(self.error("applying a layer")(e));
            }
        };
        if applied != diff_id {
            remove_snapshot(self.ctd, self.snapshotter, &key).await;
            return Err(ImageError::DigestMismatch {
                reference: self.reference.to_string(),
                what: format!("layer {} unpacked", layer.digest),
                expected: diff_id.to_string(),
                got: applied,
            });
        }
        self.commit(&key, chain).await
    }

    /// Prepares the active snapshot `key` on `parent`; answers its mounts.
    async fn prepare(&self, key: &str, parent: &str) -> Result<Vec<Mount>, ImageError> {
        let mut labels = HashMap::new();
        labels.insert(OWNER_LABEL.to_string(), format!("image:{}", self.reference));
        let prep = PrepareSnapshotRequest {
            snapshotter: self.snapshotter.into(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels,
        };
        let req = self
            .ctd
            .request_with_lease(prep, self.lease)
            .map_err(lease_header_error)
            .map_err(self.error("preparing a snapshot"))?;
        Ok(self
            .ctd
            .call(rpc::SNAPSHOTS_PREPARE, self.ctd.snapshots().prepare(req))
            .await
            .map_err(self.error("preparing a snapshot"))?
            .mounts)
    }

    /// Commits the active snapshot `key` as `chain`; one another pull committed meanwhile is
    /// fine.
    async fn commit(&self, key: &str, chain: &str) -> Result<(), ImageError> {
        let commit = CommitSnapshotRequest {
            snapshotter: self.snapshotter.into(),
            name: chain.to_string(),
            key: key.to_string(),
            labels: HashMap::new(),
        };
        let req = self
            .ctd
            .request_with_lease(commit, self.lease)
            .map_err(lease_header_error)
            .map_err(self.error("committing a snapshot"))?;
        match self
            .ctd
            .call(rpc::SNAPSHOTS_COMMIT, self.ctd.snapshots().commit(req))
            .await
        {
            Ok(_) => Ok(()),
            // Another pull committed the same layer meanwhile.
            Err(e) if e.code() == tonic::Code::AlreadyExists => {
                remove_snapshot(self.ctd, self.snapshotter, key).await;
                Ok(())
            }
            Err(e) => {
                remove_snapshot(self.ctd, self.snapshotter, key).await;
                Err(self.error("committing a snapshot")(e))
            }
        }
    }

    /// Names the reference and `step` in a containerd failure.
    fn error(&self, step: &'static str) -> impl FnOnce(ContainerdError) -> ImageError {
        let reference = self.reference.to_string();
        move |source| ImageError::Containerd {
            reference,
            step,
            source,
        }
    }
}

/// Applies `layer` onto `mounts`, within [`apply_deadline`].
async fn apply(
    ctd: &Containerd,
    layer: &Descriptor,
    mounts: Vec<Mount>,
) -> Result<ApplyResponse, ContainerdError> {
    let apply = ApplyRequest {
        diff: Some(containerd_client::types::Descriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
            annotations: Default::default(),
        }),
        mounts,
        payloads: Default::default(),
        ..Default::default()
    };
    // Applying takes as long as the layer is big; a containerd that stops answering must not
    // hold the pull (and whoever waits on it) forever.
    let deadline = apply_deadline(layer.size);
    match tokio::time::timeout(
        deadline,
        ctd.call(rpc::DIFF_APPLY, ctd.diff().apply(ctd.request(apply))),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(ContainerdError::Call {
            call: rpc::DIFF_APPLY.name,
            status: tonic::Status::deadline_exceeded(format!(
                "applying layer {} ({} bytes) took longer than {deadline:?}",
                layer.digest, layer.size
            )),
        }),
    }
}

fn lease_header_error(status: tonic::Status) -> ContainerdError {
    ContainerdError::Call {
        call: "lease header",
        status,
    }
}

/// Whether snapshot `key` exists.
pub async fn snapshot_exists(
    ctd: &Containerd,
    snapshotter: &str,
    key: &str,
) -> Result<bool, ContainerdError> {
    match ctd.stat_snapshot(snapshotter, key).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

async fn remove_snapshot(ctd: &Containerd, snapshotter: &str, key: &str) {
    let req = RemoveSnapshotRequest {
        snapshotter: snapshotter.into(),
        key: key.into(),
    };
    if let Err(e) = ctd
        .call(
            rpc::SNAPSHOTS_REMOVE,
            ctd.snapshots().remove(ctd.request(req)),
        )
        .await
    {
        if !e.is_not_found() {
            tracing::warn!(key, error = %e, "cannot remove an unfinished snapshot");
        }
    }
}

/// How long applying a layer of `size` (compressed) bytes may take: 5 minutes, and a second more
/// for every 2 MiB.
pub fn apply_deadline(size: i64) -> std::time::Duration {
    std::time::Duration::from_secs(300 + size.max(0) as u64 / (2 << 20))
}
