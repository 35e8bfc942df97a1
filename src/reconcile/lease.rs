//! The leases that hold a new snapshot until the containerd container naming it exists: one is
//! made ahead, so a create finds it ready and `Leases.Create` is not on its path; a used lease
//! (a [`Held`]) is deleted when dropped, off the answer's path.
//!
//! A spare lease carries concord's owner label like any other (a concord that dies leaves it to
//! the next one's stale-lease release, or to its expiry), and is used only while it has most of
//! its life left.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::ports::ContainerdPort;
use crate::containerd::ContainerdError;

/// A lease's life in containerd (its expiry label): a create holds it far shorter.
const LIFE: Duration = Duration::from_secs(600);
/// A spare older than this is not used (a create may hold its lease for the rest).
const FRESH: Duration = Duration::from_secs(300);

type Spare = Arc<parking_lot::Mutex<Option<(String, Instant)>>>;

/// The spare lease of one kind of object (`kind`: `container`, `sandbox`).
pub struct Leases<C> {
    ctd: C,
    kind: &'static str,
    spare: Spare,
}

impl<C: ContainerdPort> Clone for Leases<C> {
    fn clone(&self) -> Self {
        Leases {
            ctd: self.ctd.clone(),
            kind: self.kind,
            spare: self.spare.clone(),
        }
    }
}

impl<C: ContainerdPort> Leases<C> {
    pub fn new(ctd: C, kind: &'static str) -> Self {
        Leases {
            ctd,
            kind,
            spare: Default::default(),
        }
    }

    /// A lease for a create by `owner` (its owner label): the spare when it is fresh, else one
    /// made now. Dropping the answer ends the lease: after the create (answered or failed), or
    /// when the reconcile holding it is abandoned (its timeout), which would otherwise leave the
    /// snapshot held until the lease's expiry.
    pub async fn take(&self, owner: &str) -> Result<Held<C>, ContainerdError> {
        let spare = self.spare.lock().take();
        let id = match spare {
            Some((id, made)) if made.elapsed() < FRESH => id,
            stale => {
                if let Some((stale, _)) = stale {
                    self.delete(stale);
                }
                let id = self.new_id();
                self.ctd.create_lease(&id, LIFE, owner).await?
            }
        };
        Ok(Held {
            id,
            leases: self.clone(),
        })
    }

    /// Deletes `used` (its create is answered, or failed) and makes the next spare, both off
    /// the caller's path. Outside a runtime (its shutdown) nothing is done: the lease expires.
    fn done(&self, used: String) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let (ctd, spare) = (self.ctd.clone(), self.spare.clone());
        let (next, owner) = (self.new_id(), format!("{}:spare", self.kind));
        tokio::spawn(async move {
            delete(&ctd, &used).await;
            if spare.lock().is_some() {
                return;
            }
            let made = match ctd.create_lease(&next, LIFE, &owner).await {
                Ok(id) => id,
                Err(e) => {
                    tracing::debug!(lease = next, error = %e, "cannot make a spare lease");
                    return;
                }
            };
            // Another create's refill may have filled the slot meanwhile: one spare is kept.
            let extra = {
                let mut slot = spare.lock();
                match *slot {
                    Some(_) => Some(made),
                    None => {
                        *slot = Some((made, Instant::now()));
                        None
                    }
                }
            };
            if let Some(extra) = extra {
                delete(&ctd, &extra).await;
            }
        });
    }

    fn delete(&self, lease: String) {
        let ctd = self.ctd.clone();
        tokio::spawn(async move { delete(&ctd, &lease).await });
    }

    fn new_id(&self) -> String {
        format!("concord-{}-{}", self.kind, fastrand::u64(..))
    }
}

/// A lease taken for one create; dropping it ends the lease (see [`Leases::take`]).
pub struct Held<C: ContainerdPort> {
    id: String,
    leases: Leases<C>,
}

impl<C: ContainerdPort> Held<C> {
    /// The lease's id, for the calls it is to hold the results of.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl<C: ContainerdPort> Drop for Held<C> {
    fn drop(&mut self) {
        self.leases.done(std::mem::take(&mut self.id));
    }
}

async fn delete<C: ContainerdPort>(ctd: &C, lease: &str) {
    if let Err(e) = ctd.delete_lease(lease).await {
        tracing::warn!(lease, error = %e, "cannot delete a lease; it expires");
    }
}
