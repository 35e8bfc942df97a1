//! LoadImage: import an image archive from the node — an OCI image layout tar or a `docker save`
//! tar, plain or gzip — with all its images and names, unpacked and ready to run.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::content;
use super::error::ImageError;
use super::layerfs::Layers;
use super::manifest::{
    choose_manifest, node_platform, parse_document, sha256_digest, Descriptor, Document,
    ImageConfig, Manifest, DOCKER_CONFIG, DOCKER_LAYER_TAR, DOCKER_MANIFEST,
};
use super::pull::{commit_image, ImageParts};
use super::reference::Reference;
use super::registry::{MAX_CONFIG, MAX_MANIFEST};
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
    /// Where each layer blob is in the unpacked archive (resolved by `Layers`).
    layer_files: Vec<String>,
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
        let limits = Limits {
            max_bytes: self.settings.load_max_bytes,
            max_entries: MAX_ENTRIES,
        };
        let found = tokio::task::spawn_blocking(move || {
            extract(&p, &s, limits)?;
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
        let result = self.import(&found, scratch, &lease_id, &shown).await;
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
        scratch: &Path,
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
                    let (root, rel) = (Layers::new(vec![scratch.to_path_buf()]), file.clone());
                    let opened = tokio::task::spawn_blocking(move || root.open(&rel))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                        .and_then(|f| f.ok_or_else(|| "not in the archive".to_string()));
                    let (f, _) = opened.map_err(|e| ImageError::Archive {
                        path: shown.to_string(),
                        reason: format!("layer {}: {e}", layer.digest),
                    })?;
                    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(f));
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

/// Removes what loads cut off by a crash left in the scratch dir (their content in containerd
/// is under a lease that expires).
pub(super) fn remove_leftovers(scratch_dir: &Path) {
    let Ok(dir) = std::fs::read_dir(scratch_dir) else {
        return;
    };
    for e in dir.flatten() {
        if e.file_name().to_string_lossy().starts_with("load-") {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => {
                    tracing::info!(dir = %e.path().display(), "removed an interrupted load's scratch")
                }
                Err(err) => {
                    tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove an interrupted load's scratch")
                }
            }
        }
    }
}

fn archive_err(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Archive {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Entries one archive may hold.
pub const MAX_ENTRIES: u64 = 100_000;
/// Bytes of headers (with pax and GNU long-name data) read between two entries.
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// gzip may expand this many times...
const MAX_GZIP_RATIO: u64 = 256;
/// ...once more than this has come out of it.
const GZIP_RATIO_FLOOR: u64 = 64 << 20;

/// What one archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of file contents, after gzip.
    pub max_bytes: u64,
    pub max_entries: u64,
}

/// Bytes read through a reader, shared with the code that drives it.
#[derive(Default)]
struct Meter {
    compressed: std::cell::Cell<u64>,
    plain: std::cell::Cell<u64>,
    /// `plain` may not pass this (the header budget between entries).
    stop_at: std::cell::Cell<u64>,
    gzip: std::cell::Cell<bool>,
}

struct Counted<'m, R> {
    inner: R,
    count: &'m std::cell::Cell<u64>,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// The decompressed side: enforces the header budget and the gzip ratio while reading, so a
/// bomb stops at the read that crosses the bound, not after it has been written out.
struct Plain<'m, R> {
    inner: R,
    meter: &'m Meter,
}

impl<R: Read> Read for Plain<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let m = self.meter;
        let plain = m.plain.get() + n as u64;
        m.plain.set(plain);
        if plain > m.stop_at.get() {
            return Err(std::io::Error::other(format!(
                "more than {MAX_HEADER_BYTES} bytes of tar headers (pax or GNU long names) for one entry"
            )));
        }
        if m.gzip.get()
            && plain > GZIP_RATIO_FLOOR
            && plain > m.compressed.get().saturating_mul(MAX_GZIP_RATIO)
        {
            return Err(std::io::Error::other(format!(
                "gzip expands more than {MAX_GZIP_RATIO}:1 ({} bytes from {}): a decompression bomb",
                plain,
                m.compressed.get()
            )));
        }
        Ok(n)
    }
}

/// Unpacks a tar, plain or gzip, read from `input` into `dir` (which must exist). Only regular
/// files, directories and links are unpacked (a device node or FIFO is refused); nothing is
/// written outside `dir` (the tar crate refuses paths that leave it, and links are followed
/// later only inside `dir`, by `Layers`); file contents are bounded by `limits.max_bytes`,
/// entries by `limits.max_entries`, headers by 1 MiB an entry and gzip by a 256:1 ratio.
/// Answers the number of entries.
pub fn unpack(input: impl Read, dir: &Path, limits: Limits) -> Result<u64, String> {
    let meter = Meter::default();
    let mut raw = std::io::BufReader::new(Counted {
        inner: input,
        count: &meter.compressed,
    });
    let head = std::io::BufRead::fill_buf(&mut raw).map_err(|e| e.to_string())?;
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    meter.gzip.set(gzip);
    let decoded: Box<dyn Read + '_> = if gzip {
        Box::new(flate2::read::GzDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    let mut ar = tar::Archive::new(Plain {
        inner: decoded,
        meter: &meter,
    });
    ar.set_preserve_permissions(false);
    ar.set_preserve_ownerships(false);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    let corrupt = |e: std::io::Error| format!("corrupt or truncated archive: {e}");
    let mut entries = ar
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    let (mut count, mut bytes) = (0u64, 0u64);
    loop {
        meter.stop_at.set(meter.plain.get() + MAX_HEADER_BYTES);
        let Some(entry) = entries.next() else { break };
        let mut entry = entry.map_err(corrupt)?;
        count += 1;
        if count > limits.max_entries {
            return Err(format!("more than {} entries", limits.max_entries));
        }
        let kind = entry.header().entry_type();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        use tar::EntryType as T;
        if !matches!(
            kind,
            T::Regular | T::Continuous | T::Directory | T::Symlink | T::Link
        ) {
            return Err(format!(
                "{name}: {kind:?} entries are not allowed in an image archive (only files, directories and links)"
            ));
        }
        let size = entry.size();
        bytes = bytes.saturating_add(size);
        if bytes > limits.max_bytes {
            return Err(format!(
                "unpacks to more than {} bytes (image.load_max_bytes)",
                limits.max_bytes
            ));
        }
        meter.stop_at.set(u64::MAX);
        entry
            .unpack_in(dir)
            .map_err(|e| format!("{name}: {}", root_cause(&e)))?;
    }
    if count == 0 {
        return Err("not a tar archive (no entries)".into());
    }
    Ok(count)
}

/// The innermost cause of an error (the tar crate wraps the reason in "failed to unpack").
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut e = e;
    while let Some(c) = e.source() {
        e = c;
    }
    e.to_string()
}

/// Unpacks the archive at `path` into `dir`.
fn extract(path: &Path, dir: &Path, limits: Limits) -> Result<(), ImageError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| archive_err(path, format!("scratch dir {}: {e}", dir.display())))?;
    let f = std::fs::File::open(path).map_err(|e| archive_err(path, e.to_string()))?;
    unpack(f, dir, limits).map_err(|r| archive_err(path, r))?;
    Ok(())
}

/// Finds the images of an extracted archive.
fn inspect_layout(path: &Path, dir: &Path) -> Result<Vec<Found>, ImageError> {
    let root = Layers::new(vec![dir.to_path_buf()]);
    let exists = |p: &str| matches!(root.open(p), Ok(Some(_)));
    if exists("/index.json") {
        oci_layout(path, &root)
    } else if exists("/manifest.json") {
        docker_save(path, &root)
    } else {
        Err(archive_err(
            path,
            "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
        ))
    }
}

/// Reads file `rel` of the unpacked archive: resolved inside it (its links never leave it), a
/// regular file, at most `limit` bytes.
fn read(path: &Path, root: &Layers, rel: &str, limit: usize) -> Result<Vec<u8>, ImageError> {
    match root.read(&format!("/{rel}"), limit as u64) {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(archive_err(path, format!("{rel}: not in the archive"))),
        Err(e) => Err(archive_err(path, e.to_string())),
    }
}

/// Where blob `digest` is in an OCI layout.
fn blob_path(digest: &str) -> Result<String, String> {
    let (algo, hex) = digest
        .split_once(':')
        .ok_or_else(|| format!("bad digest {digest:?}"))?;
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !ok(algo) || !ok(hex) {
        return Err(format!("bad digest {digest:?}"));
    }
    Ok(format!("blobs/{algo}/{hex}"))
}

fn read_blob(
    path: &Path,
    root: &Layers,
    digest: &str,
    limit: usize,
) -> Result<Vec<u8>, ImageError> {
    let rel = blob_path(digest).map_err(|r| archive_err(path, r))?;
    let bytes = read(path, root, &rel, limit)?;
    let got = sha256_digest(&bytes);
    if digest.starts_with("sha256:") && got != digest {
        return Err(archive_err(path, format!("blob {digest} has digest {got}")));
    }
    Ok(bytes)
}

fn oci_layout(path: &Path, root: &Layers) -> Result<Vec<Found>, ImageError> {
    let index_bytes = read(path, root, "index.json", MAX_MANIFEST)?;
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
        let top_bytes = read_blob(path, root, &desc.digest, MAX_MANIFEST)?;
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
                let pos = i.position_of(&chosen.digest);
                let bytes = read_blob(path, root, &chosen.digest, MAX_MANIFEST)?;
                match parse_document(&bytes, &chosen.media_type)
                    .map_err(|r| archive_err(path, r))?
                {
                    (Document::Manifest(m), _) => (m, bytes, chosen.digest.clone(), Some(pos)),
                    _ => return Err(archive_err(path, "nested index")),
                }
            }
        };
        let config_bytes = read_blob(path, root, &manifest.config.digest, MAX_CONFIG)?;
        let layer_files = manifest
            .layers
            .iter()
            .map(|l| blob_path(&l.digest).map_err(|r| archive_err(path, r)))
            .collect::<Result<Vec<_>, _>>()?;
        for f in &layer_files {
            match root.open(&format!("/{f}")) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(archive_err(path, format!("layer blob {f} is missing"))),
                Err(e) => return Err(archive_err(path, format!("layer blob {e}"))),
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

fn docker_save(path: &Path, root: &Layers) -> Result<Vec<Found>, ImageError> {
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&read(path, root, "manifest.json", MAX_MANIFEST)?)
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
        let config_bytes = read(path, root, &e.config, MAX_CONFIG)?;
        let mut layers = Vec::new();
        let mut layer_files = Vec::new();
        for l in &e.layers {
            let (digest, size, gzip) = digest_file(root, l)
                .map_err(|err| archive_err(path, format!("layer {l}: {err}")))?;
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
            layer_files.push(l.clone());
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

/// sha256, size and whether the file is gzip.
fn digest_file(root: &Layers, rel: &str) -> Result<(String, i64, bool), String> {
    let (mut f, _) = root
        .open(&format!("/{rel}"))
        .map_err(|e| e.to_string())?
        .ok_or("not in the archive")?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0i64;
    let mut first = [0u8; 2];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const LIMITS: Limits = Limits {
        max_bytes: 1 << 30,
        max_entries: 1000,
    };

    fn header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        // Written raw: the tar crate's set_path refuses `..`, an attacker's tar does not.
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    fn tar_of(entries: &[(tar::Header, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (h, data) in entries {
            b.append(h, data.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn link(name: &str, kind: tar::EntryType, target: &str) -> (tar::Header, Vec<u8>) {
        let mut h = header(name, kind, 0);
        h.set_link_name(target).unwrap();
        h.set_cksum();
        (h, vec![])
    }

    fn file(name: &str, data: &[u8]) -> (tar::Header, Vec<u8>) {
        (
            header(name, tar::EntryType::Regular, data.len() as u64),
            data.to_vec(),
        )
    }

    #[test]
    fn links_to_host_files_are_never_read_through() {
        let t = tempfile::tempdir().unwrap();
        let tar = tar_of(&[
            file("index.json", b"{}"),
            link("blobs/sha256/aa", tar::EntryType::Symlink, "/etc/hostname"),
            link(
                "blobs/sha256/bb",
                tar::EntryType::Symlink,
                "../../../../../../etc/hostname",
            ),
            link("up", tar::EntryType::Symlink, "/etc"),
            link("inside", tar::EntryType::Symlink, "index.json"),
        ]);
        unpack(tar.as_slice(), t.path(), LIMITS).unwrap();
        let root = Layers::new(vec![t.path().to_path_buf()]);
        for p in ["/blobs/sha256/aa", "/blobs/sha256/bb", "/up/hostname"] {
            assert!(root.open(p).unwrap().is_none(), "{p} resolved on the host");
        }
        assert_eq!(root.read("/inside", 10).unwrap().unwrap(), b"{}");
    }

    #[test]
    fn devices_fifos_and_escaping_paths_are_refused() {
        for kind in [
            tar::EntryType::Char,
            tar::EntryType::Block,
            tar::EntryType::Fifo,
        ] {
            let t = tempfile::tempdir().unwrap();
            let tar = tar_of(&[(header("dev", kind, 0), vec![])]);
            let e = unpack(tar.as_slice(), t.path(), LIMITS).unwrap_err();
            assert!(e.contains("not allowed"), "{e}");
        }
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        let inner = t.path().join("in");
        std::fs::create_dir(&inner).unwrap();
        let tar = tar_of(&[file("../outside", b"x")]);
        let _ = unpack(tar.as_slice(), &inner, LIMITS);
        assert!(!outside.exists());
        // A symlinked directory is not written through either.
        let tar = tar_of(&[
            link("d", tar::EntryType::Symlink, t.path().to_str().unwrap()),
            file("d/outside", b"x"),
        ]);
        let _ = unpack(tar.as_slice(), &inner, LIMITS);
        assert!(!outside.exists());
    }

    #[test]
    fn sizes_entries_headers_and_gzip_ratio_are_bounded() {
        let t = tempfile::tempdir().unwrap();
        let tar = tar_of(&[file("a", &[0; 4096]), file("b", &[0; 4096])]);
        let small = Limits {
            max_bytes: 6000,
            max_entries: 10,
        };
        let e = unpack(tar.as_slice(), t.path(), small).unwrap_err();
        assert!(e.contains("more than 6000 bytes"), "{e}");
        let few = Limits {
            max_bytes: 1 << 20,
            max_entries: 1,
        };
        let e = unpack(tar.as_slice(), t.path(), few).unwrap_err();
        assert!(e.contains("more than 1 entries"), "{e}");

        // A pax header claiming 64 MiB is not read into memory.
        let mut h = header("pax", tar::EntryType::XHeader, 64 << 20);
        h.set_cksum();
        let mut pax = h.as_bytes().to_vec();
        pax.extend(std::iter::repeat_n(b'a', 64 << 20));
        let e = unpack(pax.as_slice(), t.path(), LIMITS).unwrap_err();
        assert!(e.contains("tar headers"), "{e}");

        // 256 MiB of zeros in a ~256 KiB gzip stops at the ratio, long before it is written.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let big = header("zeros", tar::EntryType::Regular, 256 << 20);
        gz.write_all(big.as_bytes()).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            gz.write_all(&zeros).unwrap();
        }
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        let big_limits = Limits {
            max_bytes: 2 << 30,
            max_entries: 10,
        };
        let e = unpack(bomb.as_slice(), t.path(), big_limits).unwrap_err();
        assert!(e.contains("decompression bomb"), "{e}");
        let written = std::fs::metadata(t.path().join("zeros")).map_or(0, |m| m.len());
        assert!(written <= GZIP_RATIO_FLOOR + (8 << 20), "{written}");
    }

    #[test]
    fn a_plain_archive_unpacks() {
        let t = tempfile::tempdir().unwrap();
        let tar = tar_of(&[
            (header("dir/", tar::EntryType::Directory, 0), vec![]),
            file("dir/f", b"hello"),
            link("dir/h", tar::EntryType::Link, "dir/f"),
        ]);
        assert_eq!(unpack(tar.as_slice(), t.path(), LIMITS).unwrap(), 3);
        assert_eq!(std::fs::read(t.path().join("dir/h")).unwrap(), b"hello");
    }
}
