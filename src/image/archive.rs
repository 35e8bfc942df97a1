//! LoadImage: import an image archive from the node — an OCI image layout tar or a `docker save`
//! tar, plain or gzip — with all its images and names, unpacked and ready to run.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::content;
use super::error::ImageError;
use super::manifest::{
    choose_manifest, node_platform, parse_document, sha256_digest, Descriptor, Document,
    ImageConfig, Manifest, DOCKER_CONFIG, DOCKER_LAYER_TAR, DOCKER_MANIFEST,
};
use super::pull::{commit_image, ImageParts};
use super::reference::Reference;
use super::Images;

/// One image found in an archive.
struct Found {
    names: Vec<String>,
    /// Top document (manifest or index): media type, digest, bytes.
    top: (String, String, Vec<u8>),
    /// Position of the chosen manifest in the index, when the top is an index.
    index_pos: Option<usize>,
    manifest: Manifest,
    manifest_digest: String,
    manifest_bytes: Vec<u8>,
    config_bytes: Vec<u8>,
    /// Where each layer blob is on disk.
    layer_files: Vec<PathBuf>,
}

impl Images {
    /// Imports every image in the archive at `path`; answers the names loaded.
    pub async fn load(self: &Arc<Self>, path: &Path) -> Result<Vec<String>, ImageError> {
        let shown = path.display().to_string();
        let err = |reason: String| ImageError::Archive {
            path: shown.clone(),
            reason,
        };
        if !path.is_absolute() {
            return Err(err(
                "the path must be absolute (a file on the node running concord)".into(),
            ));
        }
        if !path.exists() {
            return Err(ImageError::UnknownImage(format!("{shown} (no such file)")));
        }
        let scratch = self
            .settings
            .scratch_dir
            .join(format!("load-{}", fastrand::u64(..)));
        let result = self.load_from(path, &scratch).await;
        let s = scratch.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(s)).await;
        result
    }

    async fn load_from(
        self: &Arc<Self>,
        path: &Path,
        scratch: &Path,
    ) -> Result<Vec<String>, ImageError> {
        let (p, s) = (path.to_owned(), scratch.to_owned());
        let found = tokio::task::spawn_blocking(move || {
            extract(&p, &s)?;
            inspect_layout(&p, &s)
        })
        .await
        .expect("archive task panicked")?;
        let lease_id = format!("concord-load-{}", fastrand::u64(..));
        let shown = path.display().to_string();
        let cerr = |step: &'static str| {
            let shown = shown.clone();
            move |source| ImageError::Containerd {
                reference: shown,
                step,
                source,
            }
        };
        self.ctd
            .create_lease(
                &lease_id,
                std::time::Duration::from_secs(3600),
                &format!("load:{shown}"),
            )
            .await
            .map_err(cerr("creating a lease"))?;
        let result = self.import(&found, &lease_id, &shown).await;
        let _ = self.ctd.delete_lease_sync(&lease_id, result.is_err()).await;
        let names = result?;
        for n in &names {
            self.refresh_name(n).await;
        }
        Ok(names)
    }

    async fn import(
        &self,
        found: &[Found],
        lease: &str,
        shown: &str,
    ) -> Result<Vec<String>, ImageError> {
        let mut loaded = Vec::new();
        for img in found {
            let config: ImageConfig =
                serde_json::from_slice(&img.config_bytes).map_err(|e| ImageError::Archive {
                    path: shown.to_string(),
                    reason: format!("image config does not parse: {e}"),
                })?;
            if config.rootfs.diff_ids.len() != img.manifest.layers.len() {
                return Err(ImageError::Archive {
                    path: shown.to_string(),
                    reason: "image config and manifest disagree on the number of layers".into(),
                });
            }
            for (layer, (file, diff_id)) in img
                .manifest
                .layers
                .iter()
                .zip(img.layer_files.iter().zip(&config.rootfs.diff_ids))
            {
                let open = || async {
                    let f = tokio::fs::File::open(file)
                        .await
                        .map_err(|e| ImageError::Archive {
                            path: shown.to_string(),
                            reason: format!("layer {}: {e}", layer.digest),
                        })?;
                    let stream = tokio_util::io::ReaderStream::new(f);
                    Ok(Box::pin(futures::StreamExt::map(stream, |r| {
                        r.map_err(|e| e.to_string())
                    })))
                };
                let mut labels = HashMap::new();
                labels.insert("containerd.io/uncompressed".to_string(), diff_id.clone());
                let stall = self.settings.progress_timeout;
                content::write(
                    &self.ctd,
                    lease,
                    shown,
                    &layer.digest,
                    layer.size,
                    labels,
                    open,
                    stall,
                )
                .await?;
            }
            let (top_media, top_digest, top_bytes) = img.top.clone();
            let parts = ImageParts {
                manifest: &img.manifest,
                manifest_bytes: img.manifest_bytes.clone(),
                manifest_digest: &img.manifest_digest,
                config_bytes: img.config_bytes.clone(),
                config: &config,
                index: img
                    .index_pos
                    .map(|pos| (pos, top_digest.clone(), top_bytes.clone())),
                target: containerd_client::types::Descriptor {
                    media_type: top_media,
                    digest: top_digest,
                    size: top_bytes.len() as i64,
                    annotations: Default::default(),
                },
            };
            commit_image(
                &self.ctd,
                lease,
                shown,
                &self.settings.snapshotter,
                parts,
                &img.names,
            )
            .await?;
            loaded.extend(img.names.iter().cloned());
        }
        Ok(loaded)
    }
}

fn archive_err(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Archive {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Unpacks the tar (gzip or plain) into `dir`.
fn extract(path: &Path, dir: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| archive_err(path, format!("scratch dir {}: {e}", dir.display())))?;
    let mut f = std::fs::File::open(path).map_err(|e| archive_err(path, e.to_string()))?;
    let mut magic = [0u8; 2];
    let n = f
        .read(&mut magic)
        .map_err(|e| archive_err(path, e.to_string()))?;
    let f = std::fs::File::open(path).map_err(|e| archive_err(path, e.to_string()))?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)))
    } else {
        Box::new(std::io::BufReader::new(f))
    };
    let mut ar = tar::Archive::new(reader);
    let mut count = 0;
    let entries = ar
        .entries()
        .map_err(|e| archive_err(path, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| archive_err(path, format!("corrupt or truncated archive: {e}")))?;
        entry
            .unpack_in(dir)
            .map_err(|e| archive_err(path, format!("corrupt or truncated archive: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(archive_err(path, "not a tar archive (no entries)"));
    }
    Ok(())
}

/// Finds the images of an extracted archive.
fn inspect_layout(path: &Path, dir: &Path) -> Result<Vec<Found>, ImageError> {
    if dir.join("index.json").is_file() {
        oci_layout(path, dir)
    } else if dir.join("manifest.json").is_file() {
        docker_save(path, dir)
    } else {
        Err(archive_err(
            path,
            "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
        ))
    }
}

fn read(path: &Path, file: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(file).map_err(|e| {
        archive_err(
            path,
            format!(
                "{}: {e}",
                file.strip_prefix(file.ancestors().last().unwrap_or(file))
                    .unwrap_or(file)
                    .display()
            ),
        )
    })
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, String> {
    let (algo, hex) = digest
        .split_once(':')
        .ok_or_else(|| format!("bad digest {digest:?}"))?;
    if hex.contains('/') || algo.contains('/') || hex.contains("..") {
        return Err(format!("bad digest {digest:?}"));
    }
    Ok(dir.join("blobs").join(algo).join(hex))
}

fn read_blob(path: &Path, dir: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let p = blob_path(dir, digest).map_err(|r| archive_err(path, r))?;
    let bytes = std::fs::read(&p).map_err(|e| archive_err(path, format!("blob {digest}: {e}")))?;
    let got = sha256_digest(&bytes);
    if digest.starts_with("sha256:") && got != digest {
        return Err(archive_err(path, format!("blob {digest} has digest {got}")));
    }
    Ok(bytes)
}

fn oci_layout(path: &Path, dir: &Path) -> Result<Vec<Found>, ImageError> {
    let index_bytes = read(path, &dir.join("index.json"))?;
    let (doc, _) = parse_document(&index_bytes, "application/vnd.oci.image.index.v1+json")
        .map_err(|r| archive_err(path, format!("index.json: {r}")))?;
    let Document::Index(index) = doc else {
        return Err(archive_err(path, "index.json is not an image index"));
    };
    let mut found = Vec::new();
    for desc in &index.manifests {
        let names = names_of(desc);
        if names.is_empty() {
            return Err(archive_err(
                path,
                format!("image {} has no name (annotation io.containerd.image.name or a full org.opencontainers.image.ref.name)", desc.digest),
            ));
        }
        let top_bytes = read_blob(path, dir, &desc.digest)?;
        let (doc, media) = parse_document(&top_bytes, &desc.media_type)
            .map_err(|r| archive_err(path, format!("{}: {r}", desc.digest)))?;
        let (manifest, manifest_bytes, manifest_digest, index_pos) = match doc {
            Document::Manifest(m) => (m, top_bytes.clone(), desc.digest.clone(), None),
            Document::Index(i) => {
                let want = node_platform();
                let chosen = choose_manifest(&i, &want).ok_or_else(|| {
                    archive_err(
                        path,
                        format!("image {} has no manifest for {want}", desc.digest),
                    )
                })?;
                let pos = i
                    .manifests
                    .iter()
                    .position(|d| d.digest == chosen.digest)
                    .unwrap_or(0);
                let bytes = read_blob(path, dir, &chosen.digest)?;
                match parse_document(&bytes, &chosen.media_type)
                    .map_err(|r| archive_err(path, r))?
                {
                    (Document::Manifest(m), _) => (m, bytes, chosen.digest.clone(), Some(pos)),
                    _ => return Err(archive_err(path, "nested index")),
                }
            }
        };
        let config_bytes = read_blob(path, dir, &manifest.config.digest)?;
        let layer_files = manifest
            .layers
            .iter()
            .map(|l| blob_path(dir, &l.digest).map_err(|r| archive_err(path, r)))
            .collect::<Result<Vec<_>, _>>()?;
        for f in &layer_files {
            if !f.is_file() {
                return Err(archive_err(
                    path,
                    format!("layer blob {} is missing", f.display()),
                ));
            }
        }
        found.push(Found {
            names,
            top: (media, desc.digest.clone(), top_bytes),
            index_pos,
            manifest,
            manifest_digest,
            manifest_bytes,
            config_bytes,
            layer_files,
        });
    }
    Ok(found)
}

/// Full image names an OCI index entry carries.
fn names_of(desc: &Descriptor) -> Vec<String> {
    let Some(ann) = &desc.annotations else {
        return vec![];
    };
    let mut names = Vec::new();
    for key in [
        "io.containerd.image.name",
        "org.opencontainers.image.ref.name",
    ] {
        if let Some(v) = ann.get(key) {
            if v.contains('/') || v.contains(':') && !v.starts_with(':') {
                if let Ok(r) = Reference::parse(v) {
                    let n = r.to_string();
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
        }
    }
    names
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn docker_save(path: &Path, dir: &Path) -> Result<Vec<Found>, ImageError> {
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&read(path, &dir.join("manifest.json"))?)
            .map_err(|e| archive_err(path, format!("manifest.json: {e}")))?;
    let mut found = Vec::new();
    for e in entries {
        let names: Vec<String> = e
            .repo_tags
            .unwrap_or_default()
            .iter()
            .filter_map(|t| Reference::parse(t).ok().map(|r| r.to_string()))
            .collect();
        if names.is_empty() {
            return Err(archive_err(
                path,
                format!("image {} has no RepoTags", e.config),
            ));
        }
        let config_bytes = read(path, &safe_join(path, dir, &e.config)?)?;
        let mut layers = Vec::new();
        let mut layer_files = Vec::new();
        for l in &e.layers {
            let file = safe_join(path, dir, l)?;
            let (digest, size, gzip) =
                digest_file(&file).map_err(|err| archive_err(path, format!("layer {l}: {err}")))?;
            layers.push(Descriptor {
                media_type: if gzip {
                    "application/vnd.docker.image.rootfs.diff.tar.gzip".into()
                } else {
                    DOCKER_LAYER_TAR.into()
                },
                digest,
                size,
                platform: None,
                annotations: None,
            });
            layer_files.push(file);
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(DOCKER_MANIFEST.into()),
            config: Descriptor {
                media_type: DOCKER_CONFIG.into(),
                digest: sha256_digest(&config_bytes),
                size: config_bytes.len() as i64,
                platform: None,
                annotations: None,
            },
            layers,
        };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
        let manifest_digest = sha256_digest(&manifest_bytes);
        found.push(Found {
            names,
            top: (
                DOCKER_MANIFEST.into(),
                manifest_digest.clone(),
                manifest_bytes.clone(),
            ),
            index_pos: None,
            manifest,
            manifest_digest,
            manifest_bytes,
            config_bytes,
            layer_files,
        });
    }
    Ok(found)
}

fn safe_join(path: &Path, dir: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
        return Err(archive_err(
            path,
            format!("unsafe path {rel:?} in manifest.json"),
        ));
    }
    Ok(dir.join(rel))
}

/// sha256, size and whether the file is gzip.
fn digest_file(file: &Path) -> std::io::Result<(String, i64, bool)> {
    let mut f = std::fs::File::open(file)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0i64;
    let mut first = [0u8; 2];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if size == 0 && n >= 2 {
            first.copy_from_slice(&buf[..2]);
        }
        h.update(&buf[..n]);
        size += n as i64;
    }
    Ok((
        format!("sha256:{}", hex::encode(h.finalize())),
        size,
        first == [0x1f, 0x8b],
    ))
}
