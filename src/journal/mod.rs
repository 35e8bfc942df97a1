//! The event-sourced journal: the single writer of concord's desired state.
//!
//! Handlers and the reconcile loop send events to one writer task. It commits whatever is queued
//! in one durable transaction (group commit), folds the events into the state, publishes the new
//! state to readers (who never wait for it) and only then acknowledges: an acknowledged event is
//! on disk. After `compact_after` events the history is replaced by a snapshot.

mod event;
mod store;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use event::{
    container_name, sandbox_name, ContainerDesired, ContainerRecord, Event, ObjectKey,
    RuntimeConfigSpec, SandboxDesired, SandboxRecord, State,
};
pub use store::{write_foreign_schema, Journal, JournalError, OpenInfo, SCHEMA_VERSION};

use crate::metrics::Metrics;

/// Most events committed in one transaction.
const MAX_BATCH: usize = 512;

struct Append {
    events: Vec<Event>,
    reply: oneshot::Sender<Result<u64, Arc<JournalError>>>,
}

/// Counters the introspection API reports.
#[derive(Debug, Clone, Default)]
pub struct JournalStats {
    pub path: PathBuf,
    pub last_seq: u64,
    pub snapshot_seq: u64,
    pub events_since_snapshot: u64,
    pub replayed_at_start: u64,
}

/// Cheap handle for appending events and reading the folded state.
#[derive(Clone)]
pub struct JournalHandle {
    tx: mpsc::Sender<Append>,
    state: watch::Receiver<Arc<State>>,
    stats: watch::Receiver<JournalStats>,
}

/// Why an append was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The writer task has stopped (shutdown).
    #[error("journal writer has stopped")]
    Closed,
    /// The store failed to commit; nothing was recorded.
    #[error(transparent)]
    Store(Arc<JournalError>),
}

impl JournalHandle {
    /// Records `events` durably; answers the state that includes them.
    pub async fn append(&self, events: Vec<Event>) -> Result<Arc<State>, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Append { events, reply })
            .await
            .map_err(|_| AppendError::Closed)?;
        let seq = rx
            .await
            .map_err(|_| AppendError::Closed)?
            .map_err(AppendError::Store)?;
        let mut state = self.state.clone();
        let s = state
            .wait_for(|s| s.seq >= seq)
            .await
            .map_err(|_| AppendError::Closed)?;
        Ok(s.clone())
    }

    /// The current folded state (never waits).
    pub fn state(&self) -> Arc<State> {
        self.state.borrow().clone()
    }

    /// A receiver that sees every new state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.state.clone()
    }

    /// Journal counters.
    pub fn stats(&self) -> JournalStats {
        self.stats.borrow().clone()
    }
}

/// Starts the writer task over an opened journal. The task ends when every handle is dropped or
/// `shutdown` fires, after committing what was already queued.
pub fn spawn_writer(
    journal: Journal,
    state: State,
    info: &OpenInfo,
    compact_after: u64,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (JournalHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let (state_tx, state_rx) = watch::channel(Arc::new(state));
    let stats = JournalStats {
        path: journal.path().to_owned(),
        last_seq: journal.last_seq(),
        snapshot_seq: journal.snapshot_seq(),
        events_since_snapshot: journal.events_since_snapshot(),
        replayed_at_start: info.replayed,
    };
    let (stats_tx, stats_rx) = watch::channel(stats);
    let task = tokio::spawn(writer(
        journal,
        rx,
        state_tx,
        stats_tx,
        compact_after,
        metrics,
        shutdown,
    ));
    let handle = JournalHandle {
        tx,
        state: state_rx,
        stats: stats_rx,
    };
    (handle, task)
}

async fn writer(
    mut journal: Journal,
    mut rx: mpsc::Receiver<Append>,
    state_tx: watch::Sender<Arc<State>>,
    stats_tx: watch::Sender<JournalStats>,
    compact_after: u64,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            biased;
            msg = rx.recv() => msg,
            _ = shutdown.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        let events: Vec<Event> = batch
            .iter()
            .flat_map(|a| a.events.iter().cloned())
            .collect();
        let timer = metrics.journal_append_duration.start_timer();
        let (j, result) = tokio::task::spawn_blocking(move || {
            let r = journal.append(&events).map(|seq| (seq, events));
            (journal, r)
        })
        .await
        .expect("journal append task panicked");
        timer.observe_duration();
        journal = j;
        match result {
            Ok((last, events)) => {
                metrics.journal_events.inc_by(events.len() as u64);
                let mut state = State::clone(&state_tx.borrow());
                let first_seq = last + 1 - events.len() as u64;
                for (i, ev) in events.iter().enumerate() {
                    state.apply(first_seq + i as u64, ev);
                }
                let mut offset = first_seq;
                let state = Arc::new(state);
                state_tx.send_replace(state.clone());
                for a in batch {
                    offset += a.events.len() as u64;
                    let _ = a.reply.send(Ok(offset - 1));
                }
                if journal.events_since_snapshot() >= compact_after {
                    let s = state.clone();
                    let (j, r) = tokio::task::spawn_blocking(move || {
                        let r = journal.compact(&s);
                        (journal, r)
                    })
                    .await
                    .expect("journal compaction task panicked");
                    journal = j;
                    match r {
                        Ok(()) => metrics.journal_compactions.inc(),
                        Err(e) => {
                            tracing::error!(error = %e, "journal compaction failed; will retry")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "journal append failed");
                let e = Arc::new(e);
                for a in batch {
                    let _ = a.reply.send(Err(e.clone()));
                }
            }
        }
        stats_tx.send_modify(|s| {
            s.last_seq = journal.last_seq();
            s.snapshot_seq = journal.snapshot_seq();
            s.events_since_snapshot = journal.events_since_snapshot();
        });
        metrics
            .journal_uncompacted
            .set(journal.events_since_snapshot() as i64);
    }
    tracing::debug!(last_seq = journal.last_seq(), "journal writer stopped");
}
