//! The orphan scan: what containerd, the netns dir or the shim list hold under concord's labels
//! but no journal record claims (left by a crash between a create and its fact, or by a record
//! removed while containerd was away). Every resync runs it; each orphan found is queued as its
//! object key, and the reconcilers' unconditional teardown removes it.

use std::sync::{Arc, Weak};

use crate::journal::{JournalHandle, ObjectKey};
use crate::reconcile::container::ContainerReconciler;
use crate::reconcile::{Controller, ReconcileError, SandboxReconciler};

/// Runs the orphan scan after every resync of `controller`.
pub fn scan_on_resync(
    controller: &Arc<Controller>,
    sandboxes: Arc<SandboxReconciler>,
    containers: Arc<ContainerReconciler>,
    journal: JournalHandle,
) {
    let weak = Arc::downgrade(controller);
    controller.on_resync(move || {
        let scan = scan(
            sandboxes.clone(),
            containers.clone(),
            journal.clone(),
            weak.clone(),
        );
        tokio::spawn(scan);
    });
}

/// One scan: kills shims no record claims, then queues every orphaned container and sandbox.
async fn scan(
    sandboxes: Arc<SandboxReconciler>,
    containers: Arc<ContainerReconciler>,
    journal: JournalHandle,
    controller: Weak<Controller>,
) {
    let shims = sandboxes.orphan_shims(&journal).await;
    if shims > 0 {
        tracing::warn!(count = shims, "orphaned shims killed");
    }
    match orphaned_keys(&sandboxes, &containers, &journal).await {
        Ok(keys) => {
            for key in keys {
                let Some(c) = controller.upgrade() else {
                    return;
                };
                tracing::warn!(object = %key, "orphaned resources found; removing them");
                c.wake(key);
            }
        }
        Err(e) => tracing::debug!(error = %e, "orphan scan skipped"),
    }
}

/// Containers first: a sandbox's teardown waits for its containers.
async fn orphaned_keys(
    sandboxes: &SandboxReconciler,
    containers: &ContainerReconciler,
    journal: &JournalHandle,
) -> Result<Vec<ObjectKey>, ReconcileError> {
    let mut keys: Vec<ObjectKey> = containers
        .orphans(journal)
        .await?
        .into_iter()
        .map(ObjectKey::Container)
        .collect();
    keys.extend(
        sandboxes
            .orphans(journal)
            .await?
            .into_iter()
            .map(ObjectKey::Sandbox),
    );
    Ok(keys)
}
