//! A container's image volumes (CRI `Mount.image`, KEP-4639): for mount `i`, a read-only
//! snapshot view `<id>-image-volume-<i>` of the image's layer chain, labelled as the container's
//! own (so the orphan scan finds it), mounted at the state layout's `image-volumes/<id>/<i>`; the
//! spec binds `image_sub_path` resolved inside it. The containerd container references the views
//! (containerd's GC keeps them, and their image's layers, while it exists). Removal finds them
//! by their mount points and their owner label, never by anything held in memory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use containerd_client::types::Mount;

use crate::containerd::SnapshotKind::View;

use super::{ContainerReconciler, Made};
use crate::image::volume;
use crate::journal::ContainerRecord;
use crate::reconcile::ports::ContainerdPort;
use crate::reconcile::ReconcileError;

const STEP: &str = "preparing an image volume";

/// The snapshot key of container `id`'s image volume for its mount `index`.
pub fn view_key(id: &str, index: usize) -> String {
    format!("{id}-image-volume-{index}")
}

/// containerd GC references from the container to its image volume views.
pub(super) fn gc_labels(rec: &ContainerRecord, snapshotter: &str) -> Vec<(String, String)> {
    image_mounts(rec)
        .map(|(i, _)| {
            let label = format!("containerd.io/gc.ref.snapshot.{snapshotter}/image-volume-{i}");
            (label, view_key(&rec.id, i))
        })
        .collect()
}

/// Whether `rec`'s config has an image mount.
pub(super) fn any(rec: &ContainerRecord) -> bool {
    image_mounts(rec).next().is_some()
}

/// The config's image mounts: (mount index, the mount).
fn image_mounts(rec: &ContainerRecord) -> impl Iterator<Item = (usize, &crate::cri::Mount)> {
    let mounts = rec.config.mounts.iter().enumerate();
    mounts.filter(|(_, m)| m.image.is_some())
}

impl<C: ContainerdPort> ContainerReconciler<C> {
    /// Views, mounts and resolves each image mount of `rec`: the host directory each one's
    /// bind takes, by mount index.
    pub(super) async fn prepare_image_volumes(
        &self,
        rec: &ContainerRecord,
        made: &Made<C>,
    ) -> Result<BTreeMap<usize, PathBuf>, ReconcileError> {
        let mut dirs = BTreeMap::new();
        for (i, m) in image_mounts(rec) {
            let mounts = self.image_volume_view(rec, i, made).await?;
            let target = self.settings.layout.image_volume(&rec.id, i);
            let sub_path = m.image_sub_path.clone();
            let dir = tokio::task::spawn_blocking(move || {
                volume::mount(&mounts, &target)?;
                volume::resolve_sub_path(&target, &sub_path)
            })
            .await
            .map_err(|e| Self::err(&rec.id, STEP, e))?
            .map_err(|e| match e {
                volume::VolumeError::Io { .. } => {
                    Self::err(&rec.id, STEP, format!("mount {i}: {e}"))
                }
                _ => Self::refused(&rec.id, STEP, format!("mount {i}: {e}")),
            })?;
            dirs.insert(i, dir);
        }
        Ok(dirs)
    }

    /// The view of mount `i`'s image: the one an interrupted create made, else a new one on
    /// the image's chain id under the create's lease.
    async fn image_volume_view(
        &self,
        rec: &ContainerRecord,
        i: usize,
        made: &Made<C>,
    ) -> Result<Vec<Mount>, ReconcileError> {
        let key = view_key(&rec.id, i);
        let snapshotter = &self.settings.snapshotter;
        if !made.first {
            if let Some(mounts) = self.ctd.snapshot_mounts(snapshotter, &key).await? {
                return Ok(mounts);
            }
        }
        // The id CreateContainer resolved; a record from before it did names the image.
        let named = rec.config.mounts[i]
            .image
            .as_ref()
            .map(|s| s.image.as_str());
        let image = match rec.image_volumes.get(i).filter(|id| !id.is_empty()) {
            Some(id) => id.as_str(),
            None => named.unwrap_or_default(),
        };
        let img = self.images.index().find(image).cloned().ok_or_else(|| {
            Self::refused(
                &rec.id,
                STEP,
                format!("mount {i}: image {image} is not present"),
            )
        })?;
        let chain = &img.resolved.chain_id;
        Ok(self
            .ctd
            .new_snapshot(View, snapshotter, &key, chain, &made.owner, made.lease.id())
            .await?)
    }

    /// Mounts again the image volumes whose mount is gone (the node rebooted between create and
    /// start): the spec binds the same directories.
    pub(super) async fn remount_image_volumes(
        &self,
        rec: &ContainerRecord,
    ) -> Result<(), ReconcileError> {
        const REMOUNT: &str = "mounting an image volume";
        for (i, _) in image_mounts(rec) {
            let target = self.settings.layout.image_volume(&rec.id, i);
            let err =
                |e: volume::VolumeError| Self::err(&rec.id, REMOUNT, format!("mount {i}: {e}"));
            if volume::is_mounted(&target).map_err(err)? {
                continue;
            }
            let key = view_key(&rec.id, i);
            let mounts = self
                .ctd
                .snapshot_mounts(&self.settings.snapshotter, &key)
                .await?
                .ok_or_else(|| {
                    Self::err(&rec.id, REMOUNT, format!("mount {i}: its view is gone"))
                })?;
            volume::mount(&mounts, &target).map_err(err)?;
        }
        Ok(())
    }

    /// Unmounts every image volume of container `id` (its mount points, as listed on disk) and
    /// removes every snapshot labelled as its own but its rootfs (`id`, which `remove` takes).
    pub(super) async fn release_image_volumes(&self, id: &str) -> Result<(), ReconcileError> {
        const RELEASE: &str = "releasing image volumes";
        let dir = self.settings.layout.image_volumes(id);
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|e| Self::err(id, RELEASE, e))?;
                    volume::unmount(&entry.path()).map_err(|e| Self::err(id, RELEASE, e))?;
                }
                match std::fs::remove_dir(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Self::err(id, RELEASE, format!("{}: {e}", dir.display())))
                    }
                    _ => {}
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Self::err(id, RELEASE, format!("{}: {e}", dir.display()))),
        }
        let snapshotter = &self.settings.snapshotter;
        let owned = self
            .ctd
            .owned_snapshots(snapshotter, &format!("container:{id}"))
            .await?;
        for key in owned.iter().filter(|k| *k != id) {
            self.ctd.remove_snapshot(snapshotter, key).await?;
        }
        Ok(())
    }
}
