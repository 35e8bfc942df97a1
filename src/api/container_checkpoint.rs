//! CheckpointContainer (kubelet's forensic container checkpointing): a running container's
//! processes dumped by CRIU — runc through containerd's shim, as containerd's CRI does — into an
//! archive at the requested location, the container left running. The archive holds what
//! containerd's and CRI-O's hold for checkpointctl: `checkpoint/` (CRIU's images),
//! `rootfs-diff.tar` (the container's writable layer against its image: containerd's differ,
//! an uncompressed layer tar with whiteouts), `spec.dump` (the OCI spec) and `config.dump` (the
//! container's CRI identity). Nothing is written at the location unless the checkpoint
//! succeeded (a temp file renamed into place).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ApiError, Server};
use crate::cri;

/// The archive's tar of the container's filesystem changes (checkpointctl's name).
const ROOTFS_DIFF: &str = "rootfs-diff.tar";

/// How long a checkpoint may take when the request names no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(240);

impl Server {
    pub async fn checkpoint_container(
        &self,
        req: cri::CheckpointContainerRequest,
    ) -> Result<cri::CheckpointContainerResponse, ApiError> {
        let location = archive_location(&req.location)?;
        if req.timeout < 0 {
            return Err(ApiError::invalid("timeout", "must not be negative"));
        }
        if find_in_path("criu").is_none() {
            return Err(ApiError::FailedPrecondition(
                "CheckpointContainer needs CRIU, which is not installed (no `criu` on PATH; \
                 Debian package criu)"
                    .into(),
            ));
        }
        let (state, id) = self.known_container(&req.container_id)?;
        let c = &state.containers[&id];
        if c.cri_state() != cri::ContainerState::ContainerRunning {
            return Err(ApiError::FailedPrecondition(format!(
                "container {id} is not running: only a running container can be checkpointed"
            )));
        }
        let work = self
            .config
            .layout()
            .scratch()
            .join(format!("checkpoint-{id}-{:x}", crate::clock::now_nanos()));
        let limit = match req.timeout {
            0 => DEFAULT_TIMEOUT,
            n => Duration::from_secs(n as u64),
        };
        let result = self.checkpoint_into(&id, &work, &location, limit).await;
        let _ = tokio::fs::remove_dir_all(&work).await;
        result.map(|()| cri::CheckpointContainerResponse {})
    }

    /// Dumps container `id` into `work/checkpoint`, writes its filesystem changes to
    /// `work/rootfs-diff.tar` and archives both at `location`, all within `limit`.
    async fn checkpoint_into(
        &self,
        id: &str,
        work: &Path,
        location: &Path,
        limit: Duration,
    ) -> Result<(), ApiError> {
        let (images, logs) = (work.join("checkpoint"), work.join("criu"));
        for dir in [&images, &logs] {
            crate::fsutil::create_private_dir(dir).map_err(|e| {
                ApiError::FailedPrecondition(format!("checkpoint work dir {}: {e}", dir.display()))
            })?;
        }
        let deadline = tokio::time::Instant::now() + limit;
        let late = |_| {
            ApiError::DeadlineExceeded(format!(
                "checkpointing container {id} took longer than {}s",
                limit.as_secs()
            ))
        };
        let dumped = self.containerd.checkpoint_task(id, &images, &logs);
        if let Err(e) = tokio::time::timeout_at(deadline, dumped)
            .await
            .map_err(late)?
        {
            return Err(ApiError::FailedPrecondition(format!(
                "checkpointing container {id} with CRIU failed: {e}{}",
                criu_log_error(&logs)
            )));
        }
        // The container's writable layer against its image, as containerd's CRI archives it.
        let diff = work.join(ROOTFS_DIFF);
        let snapshotter = &self.config.containerd.snapshotter;
        let owner = format!("container:{id}");
        let written = self
            .containerd
            .write_snapshot_diff(snapshotter, id, &owner, &diff);
        tokio::time::timeout_at(deadline, written)
            .await
            .map_err(late)??;
        let spec = self.containerd.container_spec(id).await?;
        let files = [
            (
                "spec.dump",
                serde_json::to_vec_pretty(&spec).unwrap_or_default(),
            ),
            ("config.dump", self.config_dump(id)?),
        ];
        let (images, location) = (images.clone(), location.to_owned());
        tokio::task::spawn_blocking(move || {
            write_archive(&location, &images, &[(ROOTFS_DIFF, &diff)], &files)
        })
        .await
        .map_err(|e| ApiError::FailedPrecondition(format!("writing the archive: {e}")))?
        .map_err(|e| ApiError::FailedPrecondition(format!("writing the archive: {e}")))
    }

    /// `config.dump`: the container's CRI identity, for checkpointctl.
    fn config_dump(&self, id: &str) -> Result<Vec<u8>, ApiError> {
        let state = self.journal.state();
        let c = state.containers.get(id).ok_or_else(|| ApiError::NotFound {
            kind: "container",
            id: id.to_string(),
        })?;
        let config = serde_json::json!({
            "id": c.id, "sandboxId": c.sandbox_id, "name": c.config.metadata.as_ref().map(|m| &m.name),
            "image": c.image_name, "imageRef": c.image_id, "createdAt": c.created_at,
            "labels": c.config.labels, "annotations": c.config.annotations,
            "runtime": "concord",
        });
        Ok(serde_json::to_vec_pretty(&config).unwrap_or_default())
    }
}

/// The archive path: absolute, no NUL, its directory existing, nothing there yet.
fn archive_location(location: &str) -> Result<PathBuf, ApiError> {
    let field = "location";
    if location.is_empty() {
        return Err(ApiError::invalid(field, "required"));
    }
    let path = Path::new(location);
    if !path.is_absolute() || location.contains('\0') {
        return Err(ApiError::invalid(field, "must be an absolute path"));
    }
    match path.parent() {
        Some(dir) if dir.is_dir() => {}
        _ => return Err(ApiError::invalid(field, "its directory does not exist")),
    }
    if path.symlink_metadata().is_ok() {
        return Err(ApiError::invalid(field, "something already exists there"));
    }
    Ok(path.to_owned())
}

/// `program` in a directory of PATH.
fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// The last error line CRIU logged (its dump.log), for the error message; "" when none.
fn criu_log_error(logs: &Path) -> String {
    let text = std::fs::read_to_string(logs.join("dump.log")).unwrap_or_default();
    text.lines()
        .rfind(|l| l.contains("Error"))
        .map(|l| {
            format!(
                " (CRIU: {})",
                l.trim().chars().take(400).collect::<String>()
            )
        })
        .unwrap_or_default()
}

/// Writes `checkpoint/`, the files at `paths` and `files` as an uncompressed tar at `location`
/// (via a temp file).
fn write_archive(
    location: &Path,
    images: &Path,
    paths: &[(&str, &Path)],
    files: &[(&str, Vec<u8>)],
) -> std::io::Result<()> {
    let tmp = location.with_extension("tmp-concord");
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let mut tar = tar::Builder::new(file);
        tar.follow_symlinks(false);
        tar.append_dir_all("checkpoint", images)?;
        for (name, path) in paths {
            tar.append_path_with_name(path, name)?;
        }
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            tar.append_data(&mut header, name, bytes.as_slice())?;
        }
        tar.into_inner()?.sync_all()?;
        std::fs::rename(&tmp, location)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let code = |l: &str| archive_location(l).err().map(|e| e.to_string());
        assert!(code("").unwrap().contains("location"));
        assert!(code("relative.tar").unwrap().contains("absolute"));
        assert!(code("/no/such/dir/x.tar").unwrap().contains("directory"));
        let taken = dir.path().join("taken.tar");
        std::fs::write(&taken, b"").unwrap();
        assert!(code(taken.to_str().unwrap()).unwrap().contains("exists"));
        assert!(code(dir.path().join("new.tar").to_str().unwrap()).is_none());
    }

    #[test]
    fn the_archive_holds_the_images_and_the_dumps() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        std::fs::write(images.join("inventory.img"), b"criu").unwrap();
        let location = dir.path().join("c.tar");
        let diff = dir.path().join("diff.tar");
        std::fs::write(&diff, b"layer").unwrap();
        let paths = [(ROOTFS_DIFF, diff.as_path())];
        write_archive(&location, &images, &paths, &[("spec.dump", b"{}".to_vec())]).unwrap();
        let mut names: Vec<String> = tar::Archive::new(std::fs::File::open(&location).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "checkpoint/",
                "checkpoint/inventory.img",
                "rootfs-diff.tar",
                "spec.dump"
            ]
        );
    }
}
