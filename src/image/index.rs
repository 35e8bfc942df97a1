//! The in-memory image index: every image in concord's containerd namespace by id (config
//! digest) and by name, answered without a containerd round trip. Rebuilt on resync, kept fresh
//! by `/images/*` events.

use crate::containerd::rpc;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use containerd_client::services::v1::{GetImageRequest, Image, ListImagesRequest};

use super::content;
use super::manifest::{
    chain_ids, choose_manifest, node_platform, parse_document, Document, ImageConfig,
};
use super::reference::Reference;
use crate::containerd::{Containerd, ContainerdError};

/// What one image target (manifest or index digest) resolves to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Image id: the config digest.
    pub id: String,
    /// Bytes of the manifest(s), config and compressed layers.
    pub size: u64,
    /// The config as stored.
    pub config_json: String,
    /// The parsed config.
    pub config: ImageConfig,
    /// Chain id of the top layer (the snapshot containers start from).
    pub chain_id: String,
}

/// One image as CRI shows it.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    pub resolved: Arc<Resolved>,
    /// containerd image names pointing at it, with the target digest of each.
    pub names: HashMap<String, String>,
}

impl ImageRecord {
    pub fn id(&self) -> &str {
        &self.resolved.id
    }

    /// `repo:tag` names.
    pub fn repo_tags(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .names
            .keys()
            .filter(|n| !n.contains('@') && !n.starts_with("sha256:"))
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// `repo@digest` names, including the digest every tag points at.
    pub fn repo_digests(&self) -> Vec<String> {
        let mut set = BTreeSet::new();
        for (name, target) in &self.names {
            if name.contains('@') {
                set.insert(name.clone());
            } else if let Ok(r) = Reference::parse(name) {
                set.insert(r.with_digest(target));
            }
        }
        set.into_iter().collect()
    }

    /// The image config's `User`.
    pub fn user(&self) -> String {
        self.resolved
            .config
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default()
    }
}

/// Images by id and by name.
#[derive(Debug, Default, Clone)]
pub struct ImageIndex {
    images: HashMap<String, ImageRecord>,
    names: HashMap<String, String>,
}

impl ImageIndex {
    /// Every image.
    pub fn all(&self) -> impl Iterator<Item = &ImageRecord> {
        self.images.values()
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Finds an image by id (`sha256:<hex>` or bare hex), by name, or by a reference that
    /// normalises to a name (`busybox` → `docker.io/library/busybox:latest`).
    pub fn find(&self, what: &str) -> Option<&ImageRecord> {
        if let Some(img) = self.images.get(what) {
            return Some(img);
        }
        if what.len() == 64 && what.chars().all(|c| c.is_ascii_hexdigit()) {
            if let Some(img) = self.images.get(&format!("sha256:{what}")) {
                return Some(img);
            }
        }
        if let Some(id) = self.names.get(what) {
            return self.images.get(id);
        }
        let r = Reference::parse(what).ok()?;
        let name = match (&r.tag, &r.digest) {
            (_, Some(d)) => r.with_digest(d),
            _ => r.to_string(),
        };
        self.names.get(&name).and_then(|id| self.images.get(id))
    }

    /// The target digest `name` points at.
    pub fn target_of(&self, name: &str) -> Option<&str> {
        let id = self.names.get(name)?;
        self.images.get(id)?.names.get(name).map(String::as_str)
    }

    /// Records `name` → image.
    pub fn insert(&mut self, name: &str, target: &str, resolved: Arc<Resolved>) {
        self.remove_name(name);
        let id = resolved.id.clone();
        self.names.insert(name.to_string(), id.clone());
        self.images
            .entry(id)
            .or_insert_with(|| ImageRecord {
                resolved,
                names: HashMap::new(),
            })
            .names
            .insert(name.to_string(), target.to_string());
    }

    /// Forgets `name`; the image goes when its last name does.
    pub fn remove_name(&mut self, name: &str) {
        if let Some(id) = self.names.remove(name) {
            if let Some(img) = self.images.get_mut(&id) {
                img.names.remove(name);
                if img.names.is_empty() {
                    self.images.remove(&id);
                }
            }
        }
    }
}

/// Resolves containerd image records into index entries, reading content once per target.
pub struct Resolver<'a> {
    ctd: &'a Containerd,
    cache: HashMap<String, Arc<Resolved>>,
}

impl<'a> Resolver<'a> {
    pub fn new(ctd: &'a Containerd) -> Resolver<'a> {
        Resolver {
            ctd,
            cache: HashMap::new(),
        }
    }

    /// Takes the resolutions `index` holds: a target another name points at resolves as it
    /// did (content is addressed by its digest), with nothing read.
    pub fn knowing(mut self, index: &ImageIndex) -> Self {
        for img in index.images.values() {
            for target in img.names.values() {
                self.cache.insert(target.clone(), img.resolved.clone());
            }
        }
        self
    }

    /// Reads target → (platform manifest) → config.
    pub async fn resolve(
        &mut self,
        target: &containerd_client::types::Descriptor,
    ) -> Result<Arc<Resolved>, String> {
        if let Some(r) = self.cache.get(&target.digest) {
            return Ok(r.clone());
        }
        let limit = 16 << 20;
        let ctd = self.ctd;
        let read = move |d: String| async move {
            content::read(ctd, &d, limit)
                .await
                .map_err(|e| e.to_string())
        };
        let top = read(target.digest.clone()).await?;
        let mut size = target.size.max(0) as u64;
        let manifest = match parse_document(&top, &target.media_type)? {
            (Document::Manifest(m), _) => m,
            (Document::Index(i), _) => {
                let want = node_platform();
                let d =
                    choose_manifest(&i, &want).ok_or_else(|| format!("no manifest for {want}"))?;
                size += d.size.max(0) as u64;
                match parse_document(&read(d.digest.clone()).await?, &d.media_type)? {
                    (Document::Manifest(m), _) => m,
                    _ => return Err("nested index".into()),
                }
            }
        };
        let config_bytes = read(manifest.config.digest.clone()).await?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| format!("bad image config: {e}"))?;
        size += manifest.config.size.max(0) as u64;
        size += manifest
            .layers
            .iter()
            .map(|l| l.size.max(0) as u64)
            .sum::<u64>();
        let chain_id = chain_ids(&config.rootfs.diff_ids).pop().unwrap_or_default();
        let r = Arc::new(Resolved {
            id: manifest.config.digest.clone(),
            size,
            config_json: String::from_utf8_lossy(&config_bytes).into_owned(),
            config,
            chain_id,
        });
        self.cache.insert(target.digest.clone(), r.clone());
        Ok(r)
    }
}

/// Builds the whole index from containerd.
pub async fn load_all(ctd: &Containerd) -> Result<ImageIndex, ContainerdError> {
    let list = ctd
        .call(
            rpc::IMAGES_LIST,
            ctd.images()
                .list(ctd.request(ListImagesRequest { filters: vec![] })),
        )
        .await?;
    let mut index = ImageIndex::default();
    let mut resolver = Resolver::new(ctd);
    for img in list.images {
        add(&mut index, &mut resolver, img).await;
    }
    Ok(index)
}

/// Fetches one image record by name; None when containerd has no such name.
pub async fn get(ctd: &Containerd, name: &str) -> Result<Option<Image>, ContainerdError> {
    let req = GetImageRequest { name: name.into() };
    match ctd
        .call(rpc::IMAGES_GET, ctd.images().get(ctd.request(req)))
        .await
    {
        Ok(r) => Ok(r.image),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Adds one containerd image record (skipped with a log line when its content is incomplete).
pub async fn add(index: &mut ImageIndex, resolver: &mut Resolver<'_>, img: Image) {
    let Some(target) = img.target else { return };
    match resolver.resolve(&target).await {
        Ok(r) => index.insert(&img.name, &target.digest, r),
        Err(e) => {
            tracing::debug!(name = %img.name, error = %e, "image skipped: content incomplete")
        }
    }
}
