//! Keyed work queue: one entry per key, duplicates merged, a key never handed out twice at once.
//!
//! ```text
//!  add ──▶ ready ──next()──▶ running ──done()──▶ (gone)
//!             ▲                 │ add while running
//!             └──── done() ◀── dirty
//! ```

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

use parking_lot::Mutex;
use tokio::sync::Notify;

struct Inner<K> {
    ready: VecDeque<K>,
    queued: HashSet<K>,
    running: HashSet<K>,
    dirty: HashSet<K>,
    closed: bool,
}

/// The queue; share it in an `Arc`.
pub struct WorkQueue<K> {
    inner: Mutex<Inner<K>>,
    notify: Notify,
}

impl<K: Clone + Eq + Hash> Default for WorkQueue<K> {
    fn default() -> Self {
        WorkQueue {
            inner: Mutex::new(Inner {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                running: HashSet::new(),
                dirty: HashSet::new(),
                closed: false,
            }),
            notify: Notify::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    /// Queues `key` unless it is already queued; a running key is queued again when it is done.
    pub fn add(&self, key: K) {
        let mut q = self.inner.lock();
        if q.closed {
            return;
        }
        if q.running.contains(&key) {
            q.dirty.insert(key);
            return;
        }
        if q.queued.insert(key.clone()) {
            q.ready.push_back(key);
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Waits for the next key; None once the queue is closed.
    pub async fn next(&self) -> Option<K> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut q = self.inner.lock();
                if q.closed {
                    return None;
                }
                if let Some(key) = q.ready.pop_front() {
                    q.queued.remove(&key);
                    q.running.insert(key.clone());
                    let more = !q.ready.is_empty();
                    drop(q);
                    if more {
                        self.notify.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// Marks `key` finished; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &K) {
        let mut q = self.inner.lock();
        q.running.remove(key);
        if q.dirty.remove(key) && !q.closed && q.queued.insert(key.clone()) {
            q.ready.push_back(key.clone());
            drop(q);
            self.notify.notify_one();
        }
    }

    /// `key` is queued or running.
    pub fn is_pending(&self, key: &K) -> bool {
        let q = self.inner.lock();
        q.queued.contains(key) || q.running.contains(key)
    }

    /// Keys waiting to run.
    pub fn depth(&self) -> usize {
        self.inner.lock().ready.len()
    }

    /// Stops handing out keys; waiting `next()` calls return None.
    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn duplicates_are_merged() {
        let q = WorkQueue::default();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.depth(), 2);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
    }

    #[tokio::test]
    async fn a_running_key_is_not_handed_out_again_until_done() {
        let q = WorkQueue::default();
        q.add(1);
        assert_eq!(q.next().await, Some(1));
        q.add(1);
        assert_eq!(q.depth(), 0, "a running key waits in dirty, not in ready");
        q.add(2);
        assert_eq!(q.next().await, Some(2));
        q.done(&1);
        assert_eq!(
            q.next().await,
            Some(1),
            "re-queued after done because it was added while running"
        );
        q.done(&1);
        q.done(&2);
        assert!(!q.is_pending(&1));
    }

    #[tokio::test]
    async fn close_wakes_waiters() {
        let q = std::sync::Arc::new(WorkQueue::<u8>::default());
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.next().await });
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(waiter.await.unwrap(), None);
    }
}
