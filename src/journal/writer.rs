//! The journal's writer task: group commit, fold and publish, acknowledgement, compaction, and
//! the recovery of a journal that failed a write.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Append, ContainerChange, ContainerChangeKind, Event, Journal, JournalError, JournalStats, State,
};
use crate::metrics::Metrics;

/// Most events committed in one transaction.
const MAX_BATCH: usize = 512;

/// What the writer publishes after each commit.
pub(super) struct Published {
    pub(super) state: watch::Sender<Arc<State>>,
    pub(super) stats: watch::Sender<JournalStats>,
    pub(super) changes: broadcast::Sender<ContainerChange>,
    pub(super) failing: watch::Sender<Option<String>>,
    pub(super) history: Arc<super::history::History>,
}

/// Longest pause between recovery attempts of a journal that failed a write.
const RECOVER_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// The pause after `n` failed recovery attempts: 200 ms doubling, at most [`RECOVER_MAX`].
fn backoff(n: u32) -> std::time::Duration {
    (std::time::Duration::from_millis(200) * 2u32.saturating_pow(n.min(5))).min(RECOVER_MAX)
}

/// Reopens the journal at `path` (the failed handle is dropped first: redb holds a lock) and
/// probes it with a write. The reopened store's state must be the published one: a failed
/// commit left nothing behind. The facts committed without waiting for the disk since its last
/// durable commit (`unflushed`, published) went with the failed handle: they are written again.
async fn reopen(
    old: Option<Journal>,
    path: PathBuf,
    published_seq: u64,
    unflushed: Vec<Event>,
) -> (Option<Journal>, Result<(), String>) {
    tokio::task::spawn_blocking(move || {
        drop(old);
        let (mut j, mut state, _) = match Journal::open(&path) {
            Ok(o) => o,
            Err(e) => return (None, Err(format!("reopening: {e}"))),
        };
        if !unflushed.is_empty() && state.seq + unflushed.len() as u64 == published_seq {
            match j.append(&unflushed, true) {
                Ok(seq) => state.seq = seq,
                Err(e) => return (Some(j), Err(format!("writing the unflushed facts again: {e}"))),
            }
        }
        // The store must end exactly where the published state does: ahead (a commit whose
        // failure was reported reached the disk after all) or behind (the file was replaced)
        // would put unacknowledged intents in, or acknowledged ones out. Never written on top
        // of: concord stays not ready until an operator restarts it (the restart replays the
        // disk, which is then the truth).
        if state.seq != published_seq {
            let why = format!(
                "the reopened journal ends at event {} but the published state at {}: not written until concord restarts",
                state.seq, published_seq
            );
            tracing::error!("{why}");
            return (Some(j), Err(why));
        }
        match j.probe() {
            Ok(()) => (Some(j), Ok(())),
            Err(e) => (Some(j), Err(format!("probe write: {e}"))),
        }
    })
    .await
    .unwrap_or_else(|e| (None, Err(format!("reopen task: {e}"))))
}

/// The writer task: commits queued appends in batches until every handle is dropped or
/// `shutdown` fires (what was already queued is still committed), and recovers a journal that
/// failed a write without waiting for an append.
pub(super) async fn writer(
    journal: Journal,
    mut rx: mpsc::Receiver<Append>,
    out: Published,
    compact_after: u64,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut w = Writer {
        path: journal.path().to_owned(),
        journal: Some(journal),
        out,
        compact_after,
        compact_retry_at: 0,
        recovering: None,
        unflushed: Vec::new(),
        flush_at: None,
        metrics,
    };
    loop {
        let due = w.recovering.map(|(_, at)| at);
        let flush = w.flush_at.filter(|_| due.is_none());
        let first = tokio::select! {
            biased;
            msg = rx.recv() => msg,
            _ = shutdown.cancelled() => { rx.close(); rx.recv().await }
            _ = tokio::time::sleep_until(flush.unwrap_or_else(tokio::time::Instant::now)), if flush.is_some() => {
                w.flush().await;
                continue;
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                // Recover without waiting for an append: RuntimeReady comes back by itself.
                if let Err((e, pause)) = w.recover().await {
                    tracing::warn!(error = %e, retry_in = ?pause, "journal still takes no writes");
                }
                continue;
            }
        };
        let Some(first) = first else { break };
        w.write(next_batch(first, &mut rx)).await;
    }
    if w.flush_at.is_some() && w.recovering.is_none() {
        w.flush().await;
    }
    tracing::debug!(
        last_seq = w.journal.as_ref().map(|j| j.last_seq()),
        "journal writer stopped"
    );
}

/// `first` and whatever else is queued already, up to [`MAX_BATCH`] appends.
fn next_batch(first: Append, rx: &mut mpsc::Receiver<Append>) -> Vec<Append> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(a) => batch.push(a),
            Err(_) => break,
        }
    }
    batch
}

/// Answers every append of `batch` with `e`: nothing of it was recorded.
fn refuse(batch: Vec<Append>, e: Arc<JournalError>) {
    for a in batch {
        let _ = a.reply.send(Err(e.clone()));
    }
}

/// The writer task's state between batches.
struct Writer {
    path: PathBuf,
    /// None while a reopen failed (or between taking it for a blocking call and putting it back).
    journal: Option<Journal>,
    out: Published,
    compact_after: u64,
    /// After a failed compaction: the event count the next attempt waits for.
    compact_retry_at: u64,
    /// After a failed write: attempts so far and when the next one is due.
    recovering: Option<(u32, tokio::time::Instant)>,
    /// Facts committed without waiting for the disk since the last durable commit.
    unflushed: Vec<Event>,
    /// When they are made durable if nothing durable is committed before.
    flush_at: Option<tokio::time::Instant>,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// Publishes why the journal takes no writes (None: it does).
    fn set_failing(&self, why: Option<String>) {
        self.metrics.journal_writable.set(why.is_none() as i64);
        self.out.failing.send_replace(why);
    }

    /// Commits one batch: folds and publishes it and acknowledges each append, or answers them
    /// all with the error.
    async fn write(&mut self, batch: Vec<Append>) {
        if let Err(e) = self.writable().await {
            refuse(batch, e);
            return;
        }
        let Some(mut open) = self.journal.take() else {
            return;
        };
        let events: Vec<Event> = batch
            .iter()
            .flat_map(|a| a.events.iter().cloned())
            .collect();
        // One durable append makes the whole batch (and every fact before it) durable.
        let durable = batch.iter().any(|a| a.durable);
        let timer = self.metrics.journal_append_duration.start_timer();
        let (journal, result) = tokio::task::spawn_blocking(move || {
            let r = open.append(&events, durable).map(|seq| (seq, events));
            (open, r)
        })
        .await
        .expect("journal append task panicked");
        timer.observe_duration();
        let journal = match result {
            Ok((last, events)) => {
                if durable {
                    self.flushed(last);
                } else {
                    self.unflushed.extend(events.iter().cloned());
                    self.flush_at
                        .get_or_insert_with(|| tokio::time::Instant::now() + super::FLUSH_AFTER);
                }
                let state = self.publish(last, &events, batch);
                self.compact_if_due(journal, state).await
            }
            Err(e) => {
                self.append_failed(e, batch);
                journal
            }
        };
        self.out.stats.send_modify(|s| {
            s.last_seq = journal.last_seq();
            s.snapshot_seq = journal.snapshot_seq();
            s.events_since_snapshot = journal.events_since_snapshot();
            s.unflushed = self.unflushed.len() as u64;
        });
        self.metrics
            .journal_uncompacted
            .set(journal.events_since_snapshot() as i64);
        self.journal = Some(journal);
    }

    /// Whether the journal may be written now. While it is failing, appends are refused at once
    /// until the next recovery attempt is due (no reopen, with its replay, per request); then a
    /// journal that failed is reopened (and probed) before it is written again.
    async fn writable(&mut self) -> Result<(), Arc<JournalError>> {
        if let Some((_, due)) = self.recovering {
            if due > tokio::time::Instant::now() {
                return Err(Arc::new(JournalError::Unavailable {
                    path: self.path.clone(),
                    reason: self.out.failing.borrow().clone().unwrap_or_default(),
                }));
            }
        }
        if self.recovering.is_some() || self.journal.is_none() {
            if let Err((reason, _)) = self.recover().await {
                return Err(Arc::new(JournalError::Unavailable {
                    path: self.path.clone(),
                    reason,
                }));
            }
        }
        Ok(())
    }

    /// Everything committed, up to sequence number `upto`, is on disk.
    fn flushed(&mut self, upto: u64) {
        self.unflushed.clear();
        self.flush_at = None;
        self.out.stats.send_modify(|s| {
            s.unflushed = 0;
            s.durable_seq = s.durable_seq.max(upto);
        });
    }

    /// Makes the facts committed without waiting for the disk durable (a probe write, durable,
    /// takes them along). A failure starts the recovery, which writes them again.
    async fn flush(&mut self) {
        let Some(mut open) = self.journal.take() else {
            return;
        };
        let (journal, r) = tokio::task::spawn_blocking(move || {
            let r = open.probe();
            (open, r)
        })
        .await
        .expect("journal flush task panicked");
        self.journal = Some(journal);
        match r {
            Ok(()) => {
                let seq = self.out.state.borrow().seq;
                self.flushed(seq)
            }
            Err(e) => self.append_failed(e, Vec::new()),
        }
    }

    /// One recovery attempt: reopens and probes the journal. On success it takes writes again;
    /// on failure the next attempt is scheduled with backoff (answered with the pause).
    async fn recover(&mut self) -> Result<(), (String, std::time::Duration)> {
        let seq = self.out.state.borrow().seq;
        let unflushed = self.unflushed.clone();
        let (j, r) = reopen(self.journal.take(), self.path.clone(), seq, unflushed).await;
        self.journal = j;
        match r {
            Ok(()) => {
                tracing::info!(path = %self.path.display(), "journal takes writes again");
                self.flushed(seq);
                self.recovering = None;
                self.set_failing(None);
                Ok(())
            }
            Err(e) => {
                let (n, _) = self.recovering.unwrap_or((0, tokio::time::Instant::now()));
                let pause = backoff(n);
                self.recovering = Some((n + 1, tokio::time::Instant::now() + pause));
                Err((e, pause))
            }
        }
    }

    /// `events`, committed up to sequence number `last`, folded into the published state; the
    /// container changes they make are announced and each append of `batch` acknowledged with
    /// its last sequence number. Answers the new state.
    fn publish(&self, last: u64, events: &[Event], batch: Vec<Append>) -> Arc<State> {
        self.metrics.journal_events.inc_by(events.len() as u64);
        let mut state = State::clone(&self.out.state.borrow());
        let first_seq = last + 1 - events.len() as u64;
        let mut changed = Vec::new();
        let at = crate::clock::now_nanos();
        for (i, ev) in events.iter().enumerate() {
            if self.out.changes.receiver_count() > 0 {
                changed.extend(ContainerChangeKind::of(ev, &state));
            }
            let seq = first_seq + i as u64;
            state.apply(seq, ev);
            self.out.history.committed(seq, at, ev, &state);
        }
        let state = Arc::new(state);
        self.out.state.send_replace(state.clone());
        for (id, sandbox_id, kind) in changed {
            let _ = self.out.changes.send(ContainerChange {
                id,
                sandbox_id,
                kind,
                at,
                state: state.clone(),
            });
        }
        let mut offset = first_seq;
        for a in batch {
            offset += a.events.len() as u64;
            let _ = a.reply.send(Ok(offset - 1));
        }
        state
    }

    /// Replaces the history by a snapshot of `state` once enough events have accumulated.
    async fn compact_if_due(&mut self, mut journal: Journal, state: Arc<State>) -> Journal {
        if journal.events_since_snapshot() < self.compact_after.max(self.compact_retry_at) {
            return journal;
        }
        let state_seq = state.seq;
        let (journal, r) = tokio::task::spawn_blocking(move || {
            let r = journal.compact(&state);
            (journal, r)
        })
        .await
        .expect("journal compaction task panicked");
        match r {
            Ok(()) => {
                self.metrics.journal_compactions.inc();
                self.compact_retry_at = 0;
                self.flushed(state_seq);
            }
            Err(e) => {
                // Nothing acknowledged is lost (the events stay until a compaction commits).
                // Appends may still work (a nearly full disk): the next attempt waits for as
                // many events again; an append that fails starts the recovery.
                tracing::error!(error = %e, "journal compaction failed");
                self.metrics.journal_write_errors.inc();
                self.compact_retry_at = journal
                    .events_since_snapshot()
                    .saturating_add(self.compact_after);
            }
        }
        journal
    }

    /// A commit failed: not acknowledged, the callers get the error and the published state is
    /// unchanged. redb refuses writes after an I/O error until reopened: report not ready and
    /// reopen with backoff until a probe write succeeds.
    fn append_failed(&mut self, e: JournalError, batch: Vec<Append>) {
        tracing::error!(error = %e, "journal append failed");
        self.metrics.journal_write_errors.inc();
        self.set_failing(Some(format!("journal write failed: {e}")));
        self.recovering = Some((0, tokio::time::Instant::now()));
        refuse(batch, Arc::new(e));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{spawn_writer, Event, Journal, JournalHandle, FLUSH_AFTER};
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    fn cidr(n: u64) -> Event {
        Event::PodCidrRequested {
            cidr: format!("10.{n}.0.0/16"),
        }
    }

    fn writer(dir: &std::path::Path) -> (JournalHandle, tokio::task::JoinHandle<()>) {
        let (journal, state, info) = Journal::open(&dir.join("journal.redb")).unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        spawn_writer(
            journal,
            state,
            &info,
            1000,
            16,
            metrics,
            CancellationToken::new(),
        )
    }

    /// A recorded fact is published at once, and durable after the next durable append, or by
    /// itself within FLUSH_AFTER; a shutdown flushes what is left.
    #[tokio::test]
    async fn recorded_facts_are_published_at_once_and_flushed_soon() {
        let dir = tempfile::tempdir().unwrap();
        let (j, task) = writer(dir.path());
        let s = j.record(vec![cidr(1)]).await.unwrap();
        assert_eq!(s.seq, 1);
        assert_eq!(j.stats().unflushed, 1);
        j.append(vec![cidr(2)]).await.unwrap();
        assert_eq!(
            j.stats().unflushed,
            0,
            "a durable append takes the facts along"
        );

        j.record(vec![cidr(3)]).await.unwrap();
        j.record(vec![cidr(4)]).await.unwrap();
        assert_eq!(j.stats().unflushed, 2);
        tokio::time::sleep(FLUSH_AFTER + std::time::Duration::from_millis(300)).await;
        assert_eq!(j.stats().unflushed, 0, "not flushed within {FLUSH_AFTER:?}");

        j.record(vec![cidr(5)]).await.unwrap();
        drop(j);
        task.await.unwrap();
        let (_, state, _) = Journal::open(&dir.path().join("journal.redb")).unwrap();
        assert_eq!(state.seq, 5);
        assert_eq!(state.runtime_config.pod_cidr, "10.5.0.0/16");
    }

    /// An intent recorded without waiting for the disk (one a durable fact of its reconcile
    /// usually takes along) is made durable on request: at once when that happened, else by
    /// one durable commit of nothing.
    #[tokio::test]
    async fn make_durable_commits_only_when_something_is_off_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _task) = writer(dir.path());
        let s = j.record(vec![cidr(1)]).await.unwrap();
        assert!(j.stats().durable_seq < s.seq);
        j.make_durable(s.seq).await.unwrap();
        assert_eq!(j.stats().unflushed, 0);
        assert_eq!(j.stats().durable_seq, 1);
        assert_eq!(j.state().seq, 1, "no event was added");

        let s = j.record(vec![cidr(2)]).await.unwrap();
        j.append(vec![cidr(3)]).await.unwrap();
        let before = j.stats().last_seq;
        j.make_durable(s.seq).await.unwrap();
        assert_eq!(j.stats().last_seq, before);
        assert_eq!(j.stats().durable_seq, 3, "the durable append took it along");
    }
}
