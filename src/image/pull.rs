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
    Index, Manifest,
};
use super::reference::Reference;
use super::registry::{error_chain, Credentials, Fetched, Fetcher};
use super::unpack;
use super::{Images, MANAGED_LABEL};
use crate::containerd::{Containerd, ContainerdError};

/// A layer's uncompressed digest (its diff id), as containerd's own pull labels it.
const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

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
        let result = self.fetch_and_unpack(&reference, creds, &lease_id).await;
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
        // Success: the image records now hold everything, and the lease goes after the answer.
        // Failure: a synchronous GC frees what this pull wrote before it.
        let ctd = self.ctd.clone();
        let release = async move {
            if let Err(e) = ctd.delete_lease_sync(&lease_id, !ok).await {
                tracing::warn!(lease = %lease_id, error = %e, "cannot delete the pull lease; containerd expires it");
            }
        };
        match ok {
            true => drop(tokio::spawn(release)),
            false => release.await,
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

    /// The pull's steps, in order: resolve the top document (and the platform manifest), fetch
    /// the config, fetch the layers, then write the documents, unpack and record the image.
    async fn fetch_and_unpack(
        &self,
        reference: &Reference,
        creds: Credentials,
        lease: &str,
    ) -> Result<(Arc<Resolved>, String, Vec<String>), ImageError> {
        let name = reference.to_string();
        let endpoints = hosts::endpoints(&self.settings.hosts_dirs, &reference.domain)?;
        let fetcher = Fetcher::new(
            reference.clone(),
            endpoints,
            creds,
            self.settings.progress_timeout,
        );
        // The lease is only needed once something is written: made while the tag resolves.
        let leased = async {
            let owner = format!("image:{reference}");
            let life = std::time::Duration::from_secs(3600);
            self.ctd
                .create_lease(lease, life, &owner)
                .await
                .map_err(|source| ImageError::Containerd {
                    reference: name.clone(),
                    step: "creating a lease",
                    source,
                })
        };
        let (chosen, _) = tokio::try_join!(resolve_manifest(&fetcher, &name), leased)?;
        // The config and the layers download together; the layers get their uncompressed
        // digests (from the config) once both are in.
        let (config_bytes, _) = tokio::try_join!(
            self.config_bytes(&fetcher, reference, &chosen.manifest),
            self.fetch_layers(&fetcher, lease, &name, &chosen.manifest)
        )?;
        let config = parse_config(&name, &chosen.manifest, &config_bytes)?;
        self.label_layers(&name, &chosen.manifest, &config).await?;
        self.record_image(reference, lease, chosen, config_bytes, config)
            .await
    }

    /// Reads the image config from the content store when present, else fetches it.
    async fn config_bytes(
        &self,
        fetcher: &Fetcher,
        reference: &Reference,
        manifest: &Manifest,
    ) -> Result<Vec<u8>, ImageError> {
        match content::read(&self.ctd, &manifest.config.digest, 16 << 20).await {
            Ok(bytes) => Ok(bytes),
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
                    .await
            }
            Err(source) => Err(ImageError::Containerd {
                reference: reference.to_string(),
                step: "reading the image config",
                source,
            }),
        }
    }

    /// Fetches the layers concurrently (bounded by the download limit), each verified while it
    /// streams into the content store; counts the bytes transferred.
    async fn fetch_layers(
        &self,
        fetcher: &Fetcher,
        lease: &str,
        name: &str,
        manifest: &Manifest,
    ) -> Result<(), ImageError> {
        let layer_jobs = manifest
            .layers
            .iter()
            .map(|layer| self.fetch_layer(fetcher, lease, name, layer));
        let bytes: Vec<u64> = futures::future::try_join_all(layer_jobs).await?;
        self.metrics.pull_bytes.inc_by(bytes.iter().sum::<u64>());
        Ok(())
    }

    /// Labels each layer with its uncompressed digest (the config's diff id), as containerd's
    /// own pull does.
    async fn label_layers(
        &self,
        name: &str,
        manifest: &Manifest,
        config: &ImageConfig,
    ) -> Result<(), ImageError> {
        let jobs = manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(layer, diff_id)| {
                let labels = HashMap::from([(UNCOMPRESSED_LABEL.to_string(), diff_id.to_string())]);
                async move { content::set_labels(&self.ctd, &layer.digest, &labels).await }
            });
        futures::future::try_join_all(jobs)
            .await
            .map_err(|source| ImageError::Containerd {
                reference: name.to_string(),
                step: "labelling a layer",
                source,
            })?;
        Ok(())
    }

    /// Streams one layer into the content store (nothing when it is there); answers the bytes
    /// transferred.
    async fn fetch_layer(
        &self,
        fetcher: &Fetcher,
        lease: &str,
        name: &str,
        layer: &Descriptor,
    ) -> Result<u64, ImageError> {
        let _permit = self
            .downloads
            .acquire()
            .await
            .expect("semaphore never closed");
        let open = || async {
            let resp = fetcher.blob(&layer.digest, "fetching a layer").await?;
            Ok(Box::pin(resp.bytes_stream().map_err(|e| error_chain(&e))))
        };
        let w = content::write(
            &self.ctd,
            lease,
            name,
            &layer.digest,
            layer.size,
            HashMap::new(),
            open,
            self.settings.progress_timeout,
        )
        .await?;
        Ok(w.bytes)
    }

    /// Writes the documents, unpacks the layers and points the image records (the tag when
    /// given, and repo@digest) at the top document; answers what the index learns.
    async fn record_image(
        &self,
        reference: &Reference,
        lease: &str,
        chosen: Chosen,
        config_bytes: Vec<u8>,
        config: ImageConfig,
    ) -> Result<(Arc<Resolved>, String, Vec<String>), ImageError> {
        let top_digest = chosen.top.digest.clone();
        let names = image_names(reference, &top_digest);
        // Records that already point at this target need no write.
        let current = self.index();
        let stale: Vec<String> = names
            .iter()
            .filter(|n| current.target_of(n) != Some(top_digest.as_str()))
            .cloned()
            .collect();
        let resolved = Arc::new(Resolved {
            id: chosen.manifest.config.digest.clone(),
            size: chosen.size(),
            config_json: String::from_utf8_lossy(&config_bytes).into_owned(),
            config: config.clone(),
            chain_id: chain_ids(&config.rootfs.diff_ids).pop().unwrap_or_default(),
        });
        let (index, target) = (chosen.index_doc(), chosen.target());
        let parts = ImageParts {
            manifest: &chosen.manifest,
            manifest_bytes: chosen.manifest_bytes,
            manifest_digest: &chosen.manifest_desc.digest,
            config_bytes,
            config: &config,
            index,
            target,
        };
        commit_image(
            &self.ctd,
            lease,
            &reference.to_string(),
            &self.settings.snapshotter,
            parts,
            &stale,
        )
        .await?;
        Ok((resolved, top_digest, names))
    }
}

/// What a reference resolved to: the top document (a manifest, or an index) and the manifest
/// for the node's platform.
struct Chosen {
    top: Fetched,
    /// The top document's media type, as parsed.
    top_media: String,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    manifest_desc: Descriptor,
    /// The manifest's position in the top index, when the top is an index.
    index_pos: Option<usize>,
}

impl Chosen {
    /// What the image records point at: the top document.
    fn target(&self) -> containerd_client::types::Descriptor {
        containerd_client::types::Descriptor {
            media_type: self.top_media.clone(),
            digest: self.top.digest.clone(),
            size: self.top.bytes.len() as i64,
            annotations: Default::default(),
        }
    }

    /// The index the manifest was chosen from: (position, digest, bytes).
    fn index_doc(&self) -> Option<(usize, String, Vec<u8>)> {
        self.index_pos
            .map(|pos| (pos, self.top.digest.clone(), self.top.bytes.clone()))
    }

    /// The image's size: its documents and (compressed) layers.
    fn size(&self) -> u64 {
        let manifest = &self.manifest;
        self.top.bytes.len() as u64
            + if self.index_pos.is_some() {
                self.manifest_desc.size.max(0) as u64
            } else {
                0
            }
            + manifest.config.size.max(0) as u64
            + manifest
                .layers
                .iter()
                .map(|l| l.size.max(0) as u64)
                .sum::<u64>()
    }
}

/// Resolves the reference to its top document; from an index, fetches the manifest for the
/// node's platform.
async fn resolve_manifest(fetcher: &Fetcher, name: &str) -> Result<Chosen, ImageError> {
    let top = fetcher.resolve().await?;
    let (doc, top_media) = parse_document(&top.bytes, &top.media_type)
        .map_err(|r| bad_document(name, "manifest", r))?;
    match doc {
        Document::Manifest(manifest) => {
            let manifest_desc = Descriptor {
                media_type: top_media.clone(),
                digest: top.digest.clone(),
                size: top.bytes.len() as i64,
                platform: None,
                annotations: None,
            };
            Ok(Chosen {
                manifest_bytes: top.bytes.clone(),
                top,
                top_media,
                manifest,
                manifest_desc,
                index_pos: None,
            })
        }
        Document::Index(index) => {
            let (manifest, manifest_bytes, manifest_desc, pos) =
                platform_manifest(fetcher, name, &index).await?;
            Ok(Chosen {
                top,
                top_media,
                manifest,
                manifest_bytes,
                manifest_desc,
                index_pos: Some(pos),
            })
        }
    }
}

/// Chooses the node's platform from `index` and fetches that manifest: answers it, its bytes,
/// its descriptor and its position in the index.
async fn platform_manifest(
    fetcher: &Fetcher,
    name: &str,
    index: &Index,
) -> Result<(Manifest, Vec<u8>, Descriptor, usize), ImageError> {
    let want = node_platform();
    let chosen = choose_manifest(index, &want)
        .cloned()
        .ok_or_else(|| ImageError::NoPlatform {
            reference: name.to_string(),
            platform: want.to_string(),
            available: platforms_of(index),
        })?;
    let pos = index.position_of(&chosen.digest);
    let f = fetcher.manifest(&chosen.digest).await?;
    let (doc, media) = parse_document(&f.bytes, &chosen.media_type)
        .map_err(|r| bad_document(name, "platform manifest", r))?;
    let Document::Manifest(m) = doc else {
        return Err(bad_document(
            name,
            "platform manifest",
            "an index inside an index".into(),
        ));
    };
    let desc = Descriptor {
        media_type: media,
        ..chosen
    };
    Ok((m, f.bytes, desc, pos))
}

/// The platforms an index offers, for an error message.
fn platforms_of(index: &Index) -> String {
    let p: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
        .collect();
    if p.is_empty() {
        "no platforms".into()
    } else {
        p.join(", ")
    }
}

/// Verifies the config's digest, parses it and checks it has a diff id for every layer.
fn parse_config(
    name: &str,
    manifest: &Manifest,
    config_bytes: &[u8],
) -> Result<ImageConfig, ImageError> {
    let got = super::manifest::sha256_digest(config_bytes);
    if got != manifest.config.digest {
        return Err(ImageError::DigestMismatch {
            reference: name.to_string(),
            what: "image config".into(),
            expected: manifest.config.digest.clone(),
            got,
        });
    }
    let config: ImageConfig = serde_json::from_slice(config_bytes)
        .map_err(|e| bad_document(name, "image config", e.to_string()))?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(bad_document(
            name,
            "image config",
            format!(
                "{} diff ids for {} layers",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            ),
        ));
    }
    Ok(config)
}

/// The image records of a pull: the tag (when given) and repo@digest.
fn image_names(reference: &Reference, top_digest: &str) -> Vec<String> {
    let mut names = vec![reference.with_digest(top_digest)];
    if let Some(t) = reference.tagged() {
        names.insert(0, t);
    }
    names
}

fn bad_document(name: &str, what: &str, reason: String) -> ImageError {
    ImageError::BadDocument {
        reference: name.to_string(),
        what: what.to_string(),
        reason,
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
    let config = content::write_bytes(
        ctd,
        lease,
        name,
        &parts.manifest.config.digest,
        parts.config_bytes,
        labels,
    );
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
    let manifest = content::write_bytes(
        ctd,
        lease,
        name,
        parts.manifest_digest,
        parts.manifest_bytes,
        labels,
    );
    let index = async {
        let Some((pos, digest, bytes)) = parts.index else {
            return Ok(());
        };
        let mut labels = HashMap::new();
        labels.insert(
            format!("containerd.io/gc.ref.content.m.{pos}"),
            parts.manifest_digest.to_string(),
        );
        content::write_bytes(ctd, lease, name, &digest, bytes, labels)
            .await
            .map(drop)
    };
    let unpacked = unpack::unpack(
        ctd,
        lease,
        name,
        snapshotter,
        &parts.manifest.layers,
        &parts.config.rootfs.diff_ids,
    );
    // All under the lease, so in any order: the documents are written while the layers unpack.
    tokio::try_join!(config, manifest, index, unpacked)?;
    let records = names.iter().map(|n| put_image(ctd, n, &parts.target));
    futures::future::try_join_all(records)
        .await
        .map_err(|source| ImageError::Containerd {
            reference: name.to_string(),
            step: "creating the image record",
            source,
        })?;
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
