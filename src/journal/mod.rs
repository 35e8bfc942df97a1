//! The event-sourced journal: the single writer of concord's desired state.
//!
//! Handlers and the reconcile loop send events to one writer task. It commits whatever is queued
//! in one durable transaction (group commit), folds the events into the state, publishes the new
//! state to readers (who never wait for it) and only then acknowledges: an acknowledged event is
//! on disk. After `compact_after` events the history is replaced by a snapshot.
//!
//! The exception is a fact containerd can show again ([`JournalHandle::record`]): it is committed
//! without waiting for the disk, and made durable by the next durable commit or within
//! [`FLUSH_AFTER`]. A crash before that loses it exactly as a crash before recording it would,
//! and the reconciler, which survives such a crash, finds it again in containerd.

mod codec;
mod event;
pub mod history;
mod names;
mod store;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use event::{
    container_name, sandbox_name, ContainerDesired, ContainerRecord, ContainerUser, Event,
    ObjectKey, RuntimeConfigSpec, SandboxDesired, SandboxRecord, State,
};
pub use names::ObjectNames;
pub use store::{write_foreign_schema, Journal, JournalError, OpenInfo, SCHEMA_VERSION};

use crate::metrics::Metrics;
use writer::{writer, Published};

/// How long a fact recorded with [`JournalHandle::record`] may stay off the disk while nothing
/// else is committed.
pub const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

struct Append {
    events: Vec<Event>,
    /// Whether the append waits for the disk (an intent, or a fact nothing else can show again).
    durable: bool,
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
    /// Facts committed without waiting for the disk, not yet durable ([`FLUSH_AFTER`]).
    pub unflushed: u64,
    /// Every event up to this sequence number is on disk.
    pub durable_seq: u64,
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
    failing: watch::Receiver<Option<String>>,
    history: Arc<history::History>,
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
        self.commit(events, true).await
    }

    /// Records facts that containerd can show again (a container it holds; a removal, which
    /// finds nothing when done again):
    /// published like [`append`](Self::append), but not waiting for the disk. They reach it with
    /// the next durable commit (which cannot overtake them) or within [`FLUSH_AFTER`]; a crash
    /// before that loses them as a crash before this call would, and the reconciler finds them
    /// again in containerd.
    pub async fn record(&self, events: Vec<Event>) -> Result<Arc<State>, AppendError> {
        self.commit(events, false).await
    }

    /// Makes every event up to sequence number `seq` durable: nothing to do when a durable
    /// commit since took it along, else one durable commit (of nothing) does.
    pub async fn make_durable(&self, seq: u64) -> Result<(), AppendError> {
        if self.stats.borrow().durable_seq >= seq {
            return Ok(());
        }
        self.commit(Vec::new(), true).await.map(drop)
    }

    async fn commit(&self, events: Vec<Event>, durable: bool) -> Result<Arc<State>, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Append {
                events,
                durable,
                reply,
            })
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

    /// Why the journal takes no writes now (None: it does). After a failed commit the writer
    /// reopens the store and probes it with backoff until a write succeeds again.
    pub fn failing(&self) -> Option<String> {
        self.failing.borrow().clone()
    }

    /// Journal counters.
    pub fn stats(&self) -> JournalStats {
        self.stats.borrow().clone()
    }

    /// Each live object's recent events and reconcile outcomes.
    pub fn history(&self) -> &history::History {
        &self.history
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
        unflushed: 0,
        durable_seq: journal.last_seq(),
    };
    let (stats_tx, stats_rx) = watch::channel(stats);
    let (failing_tx, failing_rx) = watch::channel(None);
    metrics.journal_writable.set(1);
    let history = Arc::new(history::History::default());
    let out = Published {
        state: state_tx,
        stats: stats_tx,
        changes: changes.clone(),
        failing: failing_tx,
        history: history.clone(),
    };
    let task = tokio::spawn(writer(journal, rx, out, compact_after, metrics, shutdown));
    let handle = JournalHandle {
        tx,
        state: state_rx,
        stats: stats_rx,
        changes,
        failing: failing_rx,
        history,
    };
    (handle, task)
}
