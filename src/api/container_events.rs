//! GetContainerEvents: container created/started/stopped/deleted, each with its pod's status and
//! the status of every container of that pod (what kubelet's evented PLEG consumes).
//!
//! The journal publishes each committed change to a bounded broadcast buffer; a subscriber that
//! reads slower than it fills loses the oldest events (counted), never the loop's time.

use std::sync::Arc;

use crate::cri;
use futures::StreamExt;
use tokio::sync::broadcast::error::RecvError;

use super::{container_status, sandbox_status, EventStream, Server};
use crate::image::index::ImageIndex;
use crate::journal::{ContainerChange, ContainerChangeKind};
use crate::metrics::Metrics;

/// Decrements the open-streams gauge when a subscriber goes away.
struct Open(Arc<Metrics>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.container_event_streams.dec();
    }
}

impl Server {
    pub fn container_events(&self) -> EventStream {
        let rx = self.journal.container_changes();
        let metrics = self.metrics.clone();
        metrics.container_event_streams.inc();
        let open = Open(metrics.clone());
        let stopping = self.stopping.clone();
        let images = self.images.clone();
        futures::stream::unfold((rx, open), move |(mut rx, open)| {
            let stopping = stopping.clone();
            let images = images.clone();
            async move {
                loop {
                    let next = tokio::select! {
                        next = rx.recv() => next,
                        // concord stops serving: the stream ends so the server can drain.
                        _ = stopping.cancelled() => return None,
                    };
                    match next {
                        Ok(change) => {
                            open.0
                                .container_events
                                .with_label_values(&[change.kind.name()])
                                .inc();
                            return Some((Ok(event_of(&change, &images.index())), (rx, open)));
                        }
                        Err(RecvError::Lagged(n)) => {
                            tracing::warn!(
                            dropped = n,
                            "a GetContainerEvents subscriber fell behind; oldest events dropped"
                        );
                            open.0.container_events_dropped.inc_by(n);
                        }
                        // The journal writer stopped: concord is shutting down; the stream ends.
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        })
        .boxed()
    }
}

/// The CRI event for one committed change (`images`: to name each container's image).
fn event_of(change: &ContainerChange, images: &ImageIndex) -> cri::ContainerEventResponse {
    let state = &change.state;
    let containers_statuses = state
        .containers
        .values()
        .filter(|c| c.sandbox_id == change.sandbox_id)
        .filter(|c| c.cri_state() != cri::ContainerState::ContainerUnknown)
        .map(|c| container_status::status_of(c, images))
        .collect();
    cri::ContainerEventResponse {
        container_id: change.id.clone(),
        container_event_type: match change.kind {
            ContainerChangeKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
            ContainerChangeKind::Started => cri::ContainerEventType::ContainerStartedEvent,
            ContainerChangeKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
            ContainerChangeKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
        } as i32,
        created_at: change.at,
        pod_sandbox_status: state
            .sandboxes
            .get(&change.sandbox_id)
            .map(|s| sandbox_status::status_of(s)),
        containers_statuses,
    }
}
