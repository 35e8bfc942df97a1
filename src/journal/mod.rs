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

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use event::{
    container_name, sandbox_name, ContainerDesired, ContainerRecord, ContainerUser, Event,
    ObjectKey, RuntimeConfigSpec, SandboxDesired, SandboxRecord, State, DEFAULT_CGROUP_PARENT,
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

/// A container lifecycle step, published once it is committed (GetContainerEvents' source).
#[derive(Debug, Clone)]
pub struct ContainerChange {
    pub id: String,
    pub sandbox_id: String,
    pub kind: ContainerChangeKind,
    /// When it was committed (ns since the epoch).
    pub at: i64,
    /// The state right after the commit that held it.
    pub state: Arc<State>,
}

/// The CRI's four container event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerChangeKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

impl ContainerChangeKind {
    /// The change `event` makes to a container of `state` (read before it is applied).
    fn of(event: &Event, state: &State) -> Option<(String, String, ContainerChangeKind)> {
        let (id, kind) = match event {
            Event::ContainerCreated { id, .. } => (id, ContainerChangeKind::Created),
            Event::ContainerStarted { id, .. } => (id, ContainerChangeKind::Started),
            Event::ContainerExited { id, .. } => (id, ContainerChangeKind::Stopped),
            Event::ContainerRemoved { id } => (id, ContainerChangeKind::Deleted),
            _ => return None,
        };
        // A failed create drops a record the CRI never showed: no deleted event for it.
        let rec = state
            .containers
            .get(id)
            .filter(|c| c.created || kind == ContainerChangeKind::Created)?;
        Some((id.clone(), rec.sandbox_id.clone(), kind))
    }

    /// Its name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            ContainerChangeKind::Created => "created",
            ContainerChangeKind::Started => "started",
            ContainerChangeKind::Stopped => "stopped",
            ContainerChangeKind::Deleted => "deleted",
        }
    }
}

/// Cheap handle for appending events and reading the folded state.
#[derive(Clone)]
pub struct JournalHandle {
    tx: mpsc::Sender<Append>,
    state: watch::Receiver<Arc<State>>,
    stats: watch::Receiver<JournalStats>,
    changes: broadcast::Sender<ContainerChange>,
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

    /// Container changes committed from now on. The buffer is bounded: a receiver that falls
    /// behind loses the oldest (`RecvError::Lagged`); the writer never waits for it.
    pub fn container_changes(&self) -> broadcast::Receiver<ContainerChange> {
        self.changes.subscribe()
    }

    /// Journal counters.
    pub fn stats(&self) -> JournalStats {
        self.stats.borrow().clone()
    }
}

/// Starts the writer task over an opened journal. The task ends when every handle is dropped or
/// `shutdown` fires, after committing what was already queued. `change_buffer` bounds each
/// container-change subscriber's backlog.
pub fn spawn_writer(
    journal: Journal,
    state: State,
    info: &OpenInfo,
    compact_after: u64,
    change_buffer: usize,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (JournalHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let (changes, _) = broadcast::channel(change_buffer.max(1));
    let (state_tx, state_rx) = watch::channel(Arc::new(state));
    let stats = JournalStats {
        path: journal.path().to_owned(),
        last_seq: journal.last_seq(),
        snapshot_seq: journal.snapshot_seq(),
        events_since_snapshot: journal.events_since_snapshot(),
        replayed_at_start: info.replayed,
    };
    let (stats_tx, stats_rx) = watch::channel(stats);
    let out = Published {
        state: state_tx,
        stats: stats_tx,
        changes: changes.clone(),
    };
    let task = tokio::spawn(writer(journal, rx, out, compact_after, metrics, shutdown));
    let handle = JournalHandle {
        tx,
        state: state_rx,
        stats: stats_rx,
        changes,
    };
    (handle, task)
}

/// What the writer publishes after each commit.
struct Published {
    state: watch::Sender<Arc<State>>,
    stats: watch::Sender<JournalStats>,
    changes: broadcast::Sender<ContainerChange>,
}

async fn writer(
    mut journal: Journal,
    mut rx: mpsc::Receiver<Append>,
    out: Published,
    compact_after: u64,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let Published {
        state: state_tx,
        stats: stats_tx,
        changes,
    } = out;
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
                let mut changed = Vec::new();
                for (i, ev) in events.iter().enumerate() {
                    if changes.receiver_count() > 0 {
                        changed.extend(ContainerChangeKind::of(ev, &state));
                    }
                    state.apply(first_seq + i as u64, ev);
                }
                let mut offset = first_seq;
                let state = Arc::new(state);
                state_tx.send_replace(state.clone());
                let at = crate::api::now_nanos();
                for (id, sandbox_id, kind) in changed {
                    let _ = changes.send(ContainerChange {
                        id,
                        sandbox_id,
                        kind,
                        at,
                        state: state.clone(),
                    });
                }
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
