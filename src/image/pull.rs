//! PullImage: resolve → platform manifest → config → layers (concurrent, bounded) → content with
//! GC labels → unpack → image records, all under one lease. A failed pull deletes its lease with a
//! synchronous GC, so nothing half-written stays behind. Two pulls of one reference share one
//! download.

use crate::containerd::rpc;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use containerd_client::services::v1::{CreateImageRequest, Image, UpdateImageRequest};
use futures::{FutureExt, TryStreamExt};

use super::content;
use super::error::ImageError;
use super::hosts;
use super::index::Resolved;
use super::manifest::{
    chain_ids, choose_manifest, node_platform, parse_document, Descriptor, Document, ImageConfig,
    Manifest,
};
use super::reference::Reference;
use super::registry::{error_chain, Credentials, Fetcher};
use super::unpack;
use super::{Images, MANAGED_LABEL};
use crate::containerd::{Containerd, ContainerdError};

impl Images {
    /// Pulls `image`; answers the image id. Concurrent pulls of one reference with the same
    /// credentials share the work.
    pub async fn pull(
        self: &Arc<Self>,
        image: &str,
        creds: Credentials,
    ) -> Result<String, Arc<ImageError>> {
        let reference = Reference::parse(image).map_err(|e| Arc::new(e.into()))?;
        // Shared only by pulls with the very same credentials (a digest of them, not the
        // secrets): a wrong password never rides on a right one's download.
        let key = format!("{reference}\u{0}{}", creds.fingerprint());
        let fut = {
            let mut inflight = self.inflight.lock();
            match inflight.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let this = self.clone();
                    let key2 = key.clone();
                    let f = async move {
                        let r = this.pull_once(reference, creds).await.map_err(Arc::new);
                        this.inflight.lock().remove(&key2);
                        r
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, f.clone());
                    f
                }
            }
        };
        fut.await
    }

    /// Pulls `image` unless an image by that name is already present (the sandbox image).
    pub async fn ensure(self: &Arc<Self>, image: &str) -> Result<String, Arc<ImageError>> {
        // Right after a start the index may not be loaded yet: a present image is not pulled
        // again just because the loop got there first.
        self.wait_loaded(std::time::Duration::from_secs(10)).await;
        if let Some(img) = self.index().find(image) {
            return Ok(img.id().to_string());
        }
        self.pull(image, Credentials::default()).await
    }

    async fn pull_once(
        self: &Arc<Self>,
        reference: Reference,
        creds: Credentials,
    ) -> Result<String, ImageError> {
        let start = Instant::now();
        self.metrics.pulls_in_progress.inc();
        let lease_id = format!("concord-pull-{}", fastrand::u64(..));
        let result = async {
            let lease = self
                .ctd
                .create_lease(
                    &lease_id,
                    std::time::Duration::from_secs(3600),
                    &format!("image:{reference}"),
                )
                .await
                .map_err(|source| ImageError::Containerd {
                    reference: reference.to_string(),
                    step: "creating a lease",
                    source,
                })?;
            self.fetch_and_unpack(&reference, creds, &lease).await
        }
        .await;
        let result = match result {
            Ok((resolved, target, names)) => {
                let id = resolved.id.clone();
                self.record(&names, &target, resolved).await;
                Ok(id)
            }
            Err(e) => Err(e),
        };
        self.metrics.pulls_in_progress.dec();
        let ok = result.is_ok();
        // Success: the image records now hold everything. Failure: a synchronous GC frees what
        // this pull wrote.
        if let Err(e) = self.ctd.delete_lease_sync(&lease_id, !ok).await {
            tracing::warn!(lease = %lease_id, error = %e, "cannot delete the pull lease; containerd expires it");
        }
        let elapsed = start.elapsed();
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => crate::containerd::code_name(e.code()),
        };
        self.metrics.pulls.with_label_values(&[label]).inc();
        self.metrics.pull_duration.observe(elapsed.as_secs_f64());
        match &result {
            Ok(id) => tracing::info!(image = %reference, %id, ?elapsed, "pulled"),
            Err(e) => tracing::warn!(image = %reference, error = %e, "pull failed"),
        }
        result
    }

    async fn fetch_and_unpack(
        &self,
        reference: &Reference,
        creds: Credentials,
        lease: &str,
    ) -> Result<(Arc<Resolved>, String, Vec<String>), ImageError> {
        let name = reference.to_string();
        let endpoints = hosts::endpoints(&self.settings.hosts_dir, &reference.domain)?;
        let fetcher = Arc::new(Fetcher::new(
            reference.clone(),
            endpoints,
            creds,
            self.settings.progress_timeout,
        ));
        let bad = |what: &str, reason: String| ImageError::BadDocument {
            reference: name.clone(),
            what: what.to_string(),
            reason,
        };

        // Top document: a manifest, or an index to choose the node's platform from.
        let top = fetcher.resolve().await?;
        let (doc, top_media) =
            parse_document(&top.bytes, &top.media_type).map_err(|r| bad("manifest", r))?;
        let (manifest, manifest_bytes, manifest_desc, index) = match doc {
            Document::Manifest(m) => {
                let desc = Descriptor {
                    media_type: top_media.clone(),
                    digest: top.digest.clone(),
                    size: top.bytes.len() as i64,
                    platform: None,
                    annotations: None,
                };
                (m, top.bytes.clone(), desc, None)
            }
            Document::Index(i) => {
                let want = node_platform();
                let chosen =
                    choose_manifest(&i, &want)
                        .cloned()
                        .ok_or_else(|| ImageError::NoPlatform {
                            reference: name.clone(),
                            platform: want.to_string(),
                            available: {
                                let p: Vec<String> = i
                                    .manifests
                                    .iter()
                                    .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                                    .collect();
                                if p.is_empty() {
                                    "no platforms".into()
                                } else {
                                    p.join(", ")
                                }
                            },
                        })?;
                let pos = i
                    .manifests
                    .iter()
                    .position(|d| d.digest == chosen.digest)
                    .unwrap_or(0);
                let f = fetcher.manifest(&chosen.digest).await?;
                let (doc, media) = parse_document(&f.bytes, &chosen.media_type)
                    .map_err(|r| bad("platform manifest", r))?;
                let Document::Manifest(m) = doc else {
                    return Err(bad("platform manifest", "an index inside an index".into()));
                };
                let desc = Descriptor {
                    media_type: media,
                    ..chosen
                };
                (m, f.bytes, desc, Some(pos))
            }
        };

        // Config: small, read from the content store when present, else fetched; verified.
        let config_bytes = match content::read(&self.ctd, &manifest.config.digest, 16 << 20).await {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => {
                let resp = fetcher
                    .blob(&manifest.config.digest, "fetching the image config")
                    .await?;
                fetcher
                    .read_body(
                        resp,
                        crate::image::registry::MAX_CONFIG,
                        "image config",
                        "fetching the image config",
                        &reference.domain,
                    )
                    .await?
            }
            Err(source) => {
                return Err(ImageError::Containerd {
                    reference: name.clone(),
                    step: "reading the image config",
                    source,
                })
            }
        };
        let got = super::manifest::sha256_digest(&config_bytes);
        if got != manifest.config.digest {
            return Err(ImageError::DigestMismatch {
                reference: name.clone(),
                what: "image config".into(),
                expected: manifest.config.digest.clone(),
                got,
            });
        }
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| bad("image config", e.to_string()))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(bad(
                "image config",
                format!(
                    "{} diff ids for {} layers",
                    config.rootfs.diff_ids.len(),
                    manifest.layers.len()
                ),
            ));
        }

        // Layers: concurrently, bounded, each verified while it streams into the content store.
        let layer_jobs =
            manifest
                .layers
                .iter()
                .zip(&config.rootfs.diff_ids)
                .map(|(layer, diff_id)| {
                    let fetcher = fetcher.clone();
                    let sem = self.downloads.clone();
                    let ctd = self.ctd.clone();
                    let name = name.clone();
                    let stall = self.settings.progress_timeout;
                    let mut labels = HashMap::new();
                    labels.insert("containerd.io/uncompressed".to_string(), diff_id.clone());
                    async move {
                        let _permit = sem.acquire().await.expect("semaphore never closed");
                        let open = || async {
                            let resp = fetcher.blob(&layer.digest, "fetching a layer").await?;
                            Ok(Box::pin(resp.bytes_stream().map_err(|e| error_chain(&e))))
                        };
                        let w = content::write(
                            &ctd,
                            lease,
                            &name,
                            &layer.digest,
                            layer.size,
                            labels,
                            open,
                            stall,
                        )
                        .await?;
                        Ok::<u64, ImageError>(w.bytes)
                    }
                });
        let bytes: Vec<u64> = futures::future::try_join_all(layer_jobs).await?;
        self.metrics.pull_bytes.inc_by(bytes.iter().sum::<u64>());

        let index_doc = index.map(|pos| (pos, top.digest.clone(), top.bytes.clone()));
        let target = containerd_client::types::Descriptor {
            media_type: top_media,
            digest: top.digest.clone(),
            size: top.bytes.len() as i64,
            annotations: Default::default(),
        };
        // Image records: the tag (when given) and repo@digest, both pointing at the top document.
        let mut names = vec![reference.with_digest(&top.digest)];
        if let Some(t) = reference.tagged() {
            names.insert(0, t);
        }
        // Records that already point at this target need no write.
        let current = self.index();
        let stale: Vec<String> = names
            .iter()
            .filter(|n| current.target_of(n) != Some(top.digest.as_str()))
            .cloned()
            .collect();
        let size = top.bytes.len() as u64
            + if index.is_some() {
                manifest_desc.size.max(0) as u64
            } else {
                0
            }
            + manifest.config.size.max(0) as u64
            + manifest
                .layers
                .iter()
                .map(|l| l.size.max(0) as u64)
                .sum::<u64>();
        let resolved = Arc::new(Resolved {
            id: manifest.config.digest.clone(),
            size,
            config_json: String::from_utf8_lossy(&config_bytes).into_owned(),
            config: config.clone(),
            chain_id: chain_ids(&config.rootfs.diff_ids).pop().unwrap_or_default(),
        });
        let parts = ImageParts {
            manifest: &manifest,
            manifest_bytes,
            manifest_digest: &manifest_desc.digest,
            config_bytes,
            config: &config,
            index: index_doc,
            target,
        };
        commit_image(
            &self.ctd,
            lease,
            &name,
            &self.settings.snapshotter,
            parts,
            &stale,
        )
        .await?;
        Ok((resolved, top.digest.clone(), names))
    }
}

/// The documents of one image whose layers are already in the content store.
pub struct ImageParts<'a> {
    pub manifest: &'a Manifest,
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: &'a str,
    pub config_bytes: Vec<u8>,
    pub config: &'a ImageConfig,
    /// The index the manifest was chosen from: (position, digest, bytes).
    pub index: Option<(usize, String, Vec<u8>)>,
    /// What the image records point at (the index when there is one).
    pub target: containerd_client::types::Descriptor,
}

/// Writes config, manifest and index (children before parents, each with its GC references),
/// unpacks the layers and creates the image records `names`.
pub async fn commit_image(
    ctd: &Containerd,
    lease: &str,
    name: &str,
    snapshotter: &str,
    parts: ImageParts<'_>,
    names: &[String],
) -> Result<(), ImageError> {
    let top_chain = chain_ids(&parts.config.rootfs.diff_ids)
        .pop()
        .unwrap_or_default();
    let mut labels = HashMap::new();
    labels.insert(
        format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
        top_chain,
    );
    content::write_bytes(
        ctd,
        lease,
        name,
        &parts.manifest.config.digest,
        parts.config_bytes,
        labels,
    )
    .await?;
    let mut labels = HashMap::new();
    labels.insert(
        "containerd.io/gc.ref.content.config".to_string(),
        parts.manifest.config.digest.clone(),
    );
    for (i, l) in parts.manifest.layers.iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    content::write_bytes(
        ctd,
        lease,
        name,
        parts.manifest_digest,
        parts.manifest_bytes,
        labels,
    )
    .await?;
    if let Some((pos, digest, bytes)) = parts.index {
        let mut labels = HashMap::new();
        labels.insert(
            format!("containerd.io/gc.ref.content.m.{pos}"),
            parts.manifest_digest.to_string(),
        );
        content::write_bytes(ctd, lease, name, &digest, bytes, labels).await?;
    }
    unpack::unpack(
        ctd,
        lease,
        name,
        snapshotter,
        &parts.manifest.layers,
        &parts.config.rootfs.diff_ids,
    )
    .await?;
    for n in names {
        put_image(ctd, n, &parts.target)
            .await
            .map_err(|source| ImageError::Containerd {
                reference: name.to_string(),
                step: "creating the image record",
                source,
            })?;
    }
    Ok(())
}

/// Creates the image record `name`, or points an existing one at `target`.
pub async fn put_image(
    ctd: &Containerd,
    name: &str,
    target: &containerd_client::types::Descriptor,
) -> Result<(), ContainerdError> {
    let mut labels = HashMap::new();
    labels.insert(MANAGED_LABEL.to_string(), "managed".to_string());
    let image = Image {
        name: name.to_string(),
        labels,
        target: Some(target.clone()),
        ..Default::default()
    };
    let req = CreateImageRequest {
        image: Some(image.clone()),
        source_date_epoch: None,
    };
    match ctd
        .call(rpc::IMAGES_CREATE, ctd.images().create(ctd.request(req)))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == tonic::Code::AlreadyExists => {
            let req = UpdateImageRequest {
                image: Some(image),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["target".into(), format!("labels.{MANAGED_LABEL}")],
                }),
                ..Default::default()
            };
            ctd.call(rpc::IMAGES_UPDATE, ctd.images().update(ctd.request(req)))
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}
