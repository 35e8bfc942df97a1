//! Unpacking layers into snapshots: per layer `Snapshots.Prepare(parent = chain so far)`,
//! `Diff.Apply`, `Snapshots.Commit(name = chain id)`; existing snapshots are reused and every
//! applied diff id is checked against the image config.

use crate::containerd::rpc;
use std::collections::HashMap;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::ApplyRequest;

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
    let cerr = |step: &'static str| {
        let reference = reference.to_string();
        move |source| ImageError::Containerd {
            reference,
            step,
            source,
        }
    };
    let lease_req = |status| ContainerdError::Call {
        call: "lease header",
        status,
    };
    let chains = chain_ids(diff_ids);
    let mut parent = String::new();
    for (i, (layer, chain)) in layers.iter().zip(&chains).enumerate() {
        if snapshot_exists(ctd, snapshotter, chain)
            .await
            .map_err(cerr("checking snapshots"))?
        {
            parent = chain.clone();
            continue;
        }
        let key = format!("concord-extract-{}-{}", fastrand::u64(..), chain);
        let mut labels = HashMap::new();
        labels.insert(OWNER_LABEL.to_string(), format!("image:{reference}"));
        let prep = PrepareSnapshotRequest {
            snapshotter: snapshotter.into(),
            key: key.clone(),
            parent: parent.clone(),
            labels,
        };
        let req = ctd
            .request_with_lease(prep, lease)
            .map_err(lease_req)
            .map_err(cerr("preparing a snapshot"))?;
        let mounts = ctd
            .call(rpc::SNAPSHOTS_PREPARE, ctd.snapshots().prepare(req))
            .await
            .map_err(cerr("preparing a snapshot"))?
            .mounts;
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
        let applied = match tokio::time::timeout(
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
        };
        let applied = match applied {
            Ok(r) => r.applied.map(|d| d.digest).unwrap_or_default(),
            Err(e) => {
                remove_snapshot(ctd, snapshotter, &key).await;
                return Err(cerr("applying a layer")(e));
            }
        };
        if applied != diff_ids[i] {
            remove_snapshot(ctd, snapshotter, &key).await;
            return Err(ImageError::DigestMismatch {
                reference: reference.to_string(),
                what: format!("layer {} unpacked", layer.digest),
                expected: diff_ids[i].clone(),
                got: applied,
            });
        }
        let commit = CommitSnapshotRequest {
            snapshotter: snapshotter.into(),
            name: chain.clone(),
            key: key.clone(),
            labels: HashMap::new(),
        };
        let req = ctd
            .request_with_lease(commit, lease)
            .map_err(lease_req)
            .map_err(cerr("committing a snapshot"))?;
        match ctd
            .call(rpc::SNAPSHOTS_COMMIT, ctd.snapshots().commit(req))
            .await
        {
            Ok(_) => {}
            // Another pull committed the same layer meanwhile.
            Err(e) if e.code() == tonic::Code::AlreadyExists => {
                remove_snapshot(ctd, snapshotter, &key).await
            }
            Err(e) => {
                remove_snapshot(ctd, snapshotter, &key).await;
                return Err(cerr("committing a snapshot")(e));
            }
        }
        parent = chain.clone();
    }
    Ok(parent)
}

/// Whether snapshot `key` exists.
pub async fn snapshot_exists(
    ctd: &Containerd,
    snapshotter: &str,
    key: &str,
) -> Result<bool, ContainerdError> {
    let req = StatSnapshotRequest {
        snapshotter: snapshotter.into(),
        key: key.into(),
    };
    match ctd
        .call(rpc::SNAPSHOTS_STAT, ctd.snapshots().stat(ctd.request(req)))
        .await
    {
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
