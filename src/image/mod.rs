//! Images: pull from registries, load archives, the in-memory index, removal, and the periodic
//! snapshot syncer behind ImageFsInfo. containerd is the source of truth; the index is a cache
//! kept fresh by `/images/*` events and rebuilt on resync.

pub mod archive;
pub mod content;
pub mod error;
pub mod hosts;
pub mod index;
pub mod layerfs;
pub mod manifest;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod unpack;
mod usage;
pub mod volume;

pub use error::ImageError;
pub use index::{ImageIndex, ImageRecord};
pub use reference::Reference;
pub use registry::Credentials;
pub use usage::FsUsage;

use crate::containerd::rpc;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::DeleteImageRequest;
use futures::future::{BoxFuture, Shared};
use parking_lot::{Mutex, RwLock};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::containerd::Containerd;
use crate::metrics::Metrics;

/// Label on image records concord creates.
pub const MANAGED_LABEL: &str = "io.concord.image";

/// Settings the image code needs.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    pub hosts_dirs: Vec<PathBuf>,
    pub snapshotter: String,
    pub sandbox_image: String,
    pub progress_timeout: Duration,
    pub max_concurrent_downloads: usize,
    pub fs_sync_interval: Duration,
    pub scratch_dir: PathBuf,
    pub load_max_bytes: u64,
}

impl ImageSettings {
    pub fn from_config(c: &Config) -> ImageSettings {
        ImageSettings {
            hosts_dirs: c.registry_config_path.clone(),
            snapshotter: c.containerd.snapshotter.clone(),
            sandbox_image: c.sandbox_image.clone(),
            progress_timeout: c.image.pull_progress_timeout_seconds,
            max_concurrent_downloads: c.image.max_concurrent_downloads,
            fs_sync_interval: c.image.fs_sync_interval_seconds,
            scratch_dir: c.layout().scratch(),
            load_max_bytes: c.image.load_max_bytes,
        }
    }
}

/// Image names whose `/images/*` events wait to be applied. A name waits once however many
/// events come for it (applying re-reads its current state, so one refresh answers them all),
/// so a flood of events holds at most one entry per image name, not one per event.
#[derive(Clone, Default)]
pub struct ImageEvents(Arc<EventQueue>);

#[derive(Default)]
pub struct EventQueue {
    names: Mutex<(
        std::collections::VecDeque<String>,
        std::collections::HashSet<String>,
    )>,
    changed: tokio::sync::Notify,
}

impl ImageEvents {
    /// Queues a refresh of `name` (if one is not already waiting).
    pub fn send(&self, name: &str) {
        let mut q = self.0.names.lock();
        if !q.1.contains(name) {
            q.1.insert(name.to_string());
            q.0.push_back(name.to_string());
        }
        drop(q);
        self.0.changed.notify_one();
    }

    /// Names waiting.
    pub fn len(&self) -> usize {
        self.0.names.lock().0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type PullFuture = Shared<BoxFuture<'static, Result<String, Arc<ImageError>>>>;

/// The image service.
pub struct Images {
    ctd: Containerd,
    settings: ImageSettings,
    metrics: Arc<Metrics>,
    index: RwLock<Arc<ImageIndex>>,
    inflight: Mutex<HashMap<String, PullFuture>>,
    downloads: Arc<Semaphore>,
    usage: RwLock<Option<Arc<FsUsage>>>,
    /// Serialises index updates: each reads containerd and replaces the index.
    update: tokio::sync::Mutex<()>,
    /// True once the index was loaded from containerd (before that, "not in the index" means
    /// nothing).
    loaded: tokio::sync::watch::Sender<bool>,
}

impl Images {
    pub fn new(ctd: Containerd, settings: ImageSettings, metrics: Arc<Metrics>) -> Arc<Images> {
        archive::remove_leftovers(&settings.scratch_dir);
        Arc::new(Images {
            downloads: Arc::new(Semaphore::new(settings.max_concurrent_downloads.max(1))),
            ctd,
            settings,
            metrics,
            index: RwLock::new(Arc::new(ImageIndex::default())),
            inflight: Mutex::new(HashMap::new()),
            usage: RwLock::new(None),
            update: tokio::sync::Mutex::new(()),
            loaded: tokio::sync::watch::channel(false).0,
        })
    }

    /// Waits (at most `timeout`) until the index was loaded from containerd once.
    pub async fn wait_loaded(&self, timeout: std::time::Duration) {
        let mut rx = self.loaded.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|l| *l)).await;
    }

    /// Whether the index was loaded from containerd once (before, "not in the index" means
    /// nothing).
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// The index once it was loaded from containerd (waits up to 10 s after a start): what a
    /// request reads, so that right after a restart an image is not reported missing.
    pub async fn loaded_index(&self) -> Arc<ImageIndex> {
        self.wait_loaded(std::time::Duration::from_secs(10)).await;
        self.index()
    }

    /// The current index (never waits).
    pub fn index(&self) -> Arc<ImageIndex> {
        self.index.read().clone()
    }

    /// The sandbox image reference, normalised.
    pub fn sandbox_image(&self) -> Option<Reference> {
        Reference::parse(&self.settings.sandbox_image).ok()
    }

    /// Whether `img` is the pinned sandbox image.
    pub fn is_pinned(&self, img: &ImageRecord) -> bool {
        let Some(sandbox) = self.sandbox_image() else {
            return false;
        };
        let name = sandbox.to_string();
        img.names.contains_key(&name)
            || sandbox
                .digest
                .as_ref()
                .is_some_and(|d| img.names.values().any(|t| t == d))
    }

    /// Rebuilds the index from containerd (start, resync).
    pub async fn refresh_all(&self) {
        let _serial = self.update.lock().await;
        match index::load_all(&self.ctd).await {
            Ok(idx) => {
                self.metrics.images.set(idx.len() as i64);
                *self.index.write() = Arc::new(idx);
                self.loaded.send_replace(true);
            }
            Err(e) => tracing::warn!(error = %e, "cannot list images"),
        }
    }

    /// Refreshes one name after an `/images/*` event (another client's change shows up too).
    pub async fn refresh_name(&self, name: &str) {
        let _serial = self.update.lock().await;
        let img = match index::get(&self.ctd, name).await {
            Ok(img) => img,
            Err(e) => {
                tracing::warn!(name, error = %e, "cannot read image after event");
                return;
            }
        };
        let idx = self.index();
        let target = img.as_ref().and_then(|i| i.target.as_ref());
        if target.is_some_and(|t| idx.target_of(name) == Some(t.digest.as_str())) {
            // The target it had (concord's own write coming back, a label change): content is
            // addressed by its digest, so nothing about the image changed.
            return;
        }
        let mut next = ImageIndex::clone(&idx);
        match img {
            Some(img) => {
                let mut resolver = index::Resolver::new(&self.ctd).knowing(&idx);
                index::add(&mut next, &mut resolver, img).await;
            }
            None => next.remove_name(name),
        }
        self.metrics.images.set(next.len() as i64);
        *self.index.write() = Arc::new(next);
    }

    /// Records names concord itself just wrote (no need to read them back from containerd).
    pub async fn record(&self, names: &[String], target: &str, resolved: Arc<index::Resolved>) {
        let _serial = self.update.lock().await;
        let mut next = ImageIndex::clone(&self.index());
        for n in names {
            next.insert(n, target, resolved.clone());
        }
        self.metrics.images.set(next.len() as i64);
        *self.index.write() = Arc::new(next);
    }

    /// Deletes image record `name` (one of `what`'s). With `sync` containerd answers after a
    /// collection that began after the deletion. A missing record is fine.
    async fn delete_record(&self, what: &str, name: &str, sync: bool) -> Result<(), ImageError> {
        let req = DeleteImageRequest {
            name: name.to_string(),
            sync,
            ..Default::default()
        };
        let mut images = self.ctd.images();
        let delete = images.delete(self.ctd.request(req));
        match self.ctd.call(rpc::IMAGES_DELETE, delete).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(source) => Err(ImageError::Containerd {
                reference: what.to_string(),
                step: "deleting the image record",
                source,
            }),
        }
    }

    /// Removes an image: by id every name; by name that name (and the image's digest names
    /// when it was its last tag). Unknown images are fine.
    pub async fn remove(&self, what: &str) -> Result<(), ImageError> {
        let _serial = self.update.lock().await;
        let idx = self.index();
        let Some(img) = idx.find(what) else {
            return Ok(());
        };
        let by_id = img.id() == what || what.len() == 64 && img.id().ends_with(what);
        let names: Vec<String> = if by_id {
            img.names.keys().cloned().collect()
        } else {
            let name = idx
                .find(what)
                .and_then(|_| {
                    let r = Reference::parse(what).ok()?;
                    Some(match &r.digest {
                        Some(d) => r.with_digest(d),
                        None => r.to_string(),
                    })
                })
                .filter(|n| img.names.contains_key(n))
                .unwrap_or_else(|| what.to_string());
            let other_tags = img.repo_tags().into_iter().filter(|t| *t != name).count();
            if other_tags == 0 {
                img.names.keys().cloned().collect()
            } else {
                vec![name]
            }
        };
        // The other names at once, then the last synchronously: its answer waits for a
        // collection that began after every deletion, so containerd's GC has freed the content
        // and snapshots (as containerd's CRI does). One collection, not one a name: containerd
        // runs a collection asked for while one runs as another one after it.
        if let Some((last, others)) = names.split_last() {
            let deletes = others.iter().map(|n| self.delete_record(what, n, false));
            futures::future::try_join_all(deletes).await?;
            self.delete_record(what, last, true).await?;
        }
        let mut next = ImageIndex::clone(&idx);
        for name in &names {
            next.remove_name(name);
        }
        self.metrics.images.set(next.len() as i64);
        *self.index.write() = Arc::new(next);
        Ok(())
    }

    /// Applies `/images/*` events (each re-reads its name) in the order their names first
    /// came; see [`ImageEvents`].
    pub fn spawn_event_applier(self: &Arc<Self>) -> ImageEvents {
        let events = ImageEvents::default();
        let (this, queue) = (self.clone(), events.clone());
        tokio::spawn(async move {
            loop {
                let notified = queue.0.changed.notified();
                let next = {
                    let mut q = queue.0.names.lock();
                    let name = q.0.pop_front();
                    if let Some(n) = &name {
                        q.1.remove(n);
                    }
                    name
                };
                match next {
                    Some(name) => this.refresh_name(&name).await,
                    None => notified.await,
                }
            }
        });
        events
    }

    /// Filesystem usage from the last sync (None before the first).
    pub fn fs_usage(&self) -> Option<Arc<FsUsage>> {
        self.usage.read().clone()
    }

    /// Starts the snapshot syncer: usage of the snapshotter's filesystem every interval.
    pub fn spawn_syncer(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut cache = usage::UsageCache::default();
            loop {
                match usage::collect(&this.ctd, &this.settings.snapshotter, &mut cache).await {
                    Ok(u) => *this.usage.write() = Some(Arc::new(u)),
                    Err(e) => tracing::debug!(error = %e, "snapshot usage not collected"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(this.settings.fs_sync_interval) => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod event_tests {
    use super::ImageEvents;

    #[test]
    fn a_flood_of_events_holds_one_entry_per_name() {
        let q = ImageEvents::default();
        for i in 0..100_000 {
            q.send(&format!("example.test/img:{}", i % 3));
        }
        assert_eq!(q.len(), 3);
    }
}
