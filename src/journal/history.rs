//! Each live object's recent history, for `concord inspect --history`: the journal events that
//! concerned it (intents and facts, as committed) and the reconcile loop's outcomes, newest last.
//!
//! Kept in memory beside the journal, not in it: compaction replaces the journal's events by a
//! snapshot but leaves this ring alone, so a live object keeps its history for as long as the
//! daemon runs. A ring holds at most [`RING`] entries; an object's ring ends with its record.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

use super::{Event, ObjectKey, State};

/// Entries kept per object.
pub const RING: usize = 32;

/// What an entry records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A committed journal event, with its sequence number.
    Journal { seq: u64 },
    /// One reconcile of the object.
    Reconcile {
        /// Whether it converged (else `error` says why).
        ok: bool,
        duration: std::time::Duration,
    },
}

/// One line of an object's history.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When (ns since the epoch).
    pub at: i64,
    pub source: Source,
    /// The object's generation then.
    pub generation: u64,
    /// The event's name, or the reconcile's outcome ("converged", "failed", "waiting").
    pub what: String,
    /// Detail: an event's facts (exit code, addresses), a failure's message.
    pub detail: String,
}

/// Objects whose record ended kept with their history (`concord inspect` of a pod that failed
/// and was removed says why), newest last.
pub const ENDED: usize = 64;

/// The names an object is known by: its pod's and, for a container, its own.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// "namespace/name" ("" for the runtime config).
    pub pod: String,
    pub pod_uid: String,
    /// The pod's sandbox id (a sandbox's own).
    pub pod_id: String,
    /// A container's name.
    pub container: String,
    /// The CRI state's name (SANDBOX_READY, CONTAINER_RUNNING...).
    pub state: String,
}

impl Names {
    pub fn of(state: &State, key: &ObjectKey) -> Names {
        let Some(n) = state.describe(key) else {
            return Names::default();
        };
        let cri_state = match key {
            ObjectKey::Sandbox(id) => match state.sandboxes.get(id).is_some_and(|s| s.ready()) {
                true => "SANDBOX_READY",
                false => "SANDBOX_NOTREADY",
            },
            ObjectKey::Container(id) => state
                .containers
                .get(id)
                .map_or("", |c| c.cri_state().as_str_name()),
            ObjectKey::RuntimeConfig => "",
        };
        Names {
            pod: n.pod,
            pod_uid: n.pod_uid,
            pod_id: n.pod_id,
            container: n.container.unwrap_or_default(),
            state: cri_state.into(),
        }
    }

    /// Whether `query` names the object `id`: the id or a prefix of it, its pod's name or
    /// "namespace/name", its pod's id (6 characters at least), or a container's name.
    pub fn matches(&self, id: &str, query: &str) -> bool {
        if query.is_empty() {
            return true;
        }
        let pod_name = self.pod.split_once('/').map_or("", |(_, n)| n);
        (!id.is_empty() && id.starts_with(query))
            || (query.len() >= 6 && self.pod_id.starts_with(query))
            || self.pod == query
            || pod_name == query
            || (!self.container.is_empty() && self.container == query)
    }
}

/// One object's ring.
#[derive(Default)]
struct Ring {
    names: Names,
    entries: VecDeque<Entry>,
}

/// An object whose record ended, with its history.
#[derive(Debug, Clone)]
pub struct Ended {
    pub key: ObjectKey,
    pub names: Names,
    /// When it ended (ns since the epoch).
    pub at: i64,
    pub entries: Vec<Entry>,
}

/// The rings of every object, and the last objects that ended.
#[derive(Default)]
pub struct History {
    rings: Mutex<HashMap<ObjectKey, Ring>>,
    ended: Mutex<VecDeque<Ended>>,
}

impl History {
    /// Appends `entry` to `key`'s ring (the oldest entry goes once it is full). An object that
    /// ended while the entry was made (a reconcile that tore down a failed sandbox) gets it in
    /// its ended record.
    pub fn record(&self, key: &ObjectKey, entry: Entry) {
        let mut rings = self.rings.lock();
        if !rings.contains_key(key) {
            let mut ended = self.ended.lock();
            if let Some(e) = ended.iter_mut().rev().find(|e| &e.key == key) {
                // Only a failure is news about an object that is gone (a pass over nothing
                // left to remove is not).
                if matches!(entry.source, Source::Reconcile { ok: true, .. }) {
                    return;
                }
                if e.entries.len() >= RING {
                    e.entries.remove(0);
                }
                e.entries.push(entry);
                return;
            }
        }
        let ring = &mut rings.entry(key.clone()).or_default().entries;
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// Records one reconcile's outcome. A success after a success of the same generation is
    /// not news (a resync's pass over a converged object): left out.
    pub fn record_outcome(&self, key: &ObjectKey, entry: Entry) {
        let converged = |e: &Entry| matches!(e.source, Source::Reconcile { ok: true, .. });
        if converged(&entry) {
            let rings = self.rings.lock();
            let last = rings.get(key).and_then(|r| {
                r.entries
                    .iter()
                    .rev()
                    .find(|e| matches!(e.source, Source::Reconcile { .. }))
            });
            if last.is_some_and(|l| converged(l) && l.generation == entry.generation) {
                return;
            }
        }
        self.record(key, entry);
    }

    /// `key`'s entries, oldest first.
    pub fn of(&self, key: &ObjectKey) -> Vec<Entry> {
        self.rings
            .lock()
            .get(key)
            .map(|r| r.entries.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The objects that ended (at most [`ENDED`]), oldest first.
    pub fn ended(&self) -> Vec<Ended> {
        self.ended.lock().iter().cloned().collect()
    }

    /// Records a committed event, `state` being the state it made (a removal ends the
    /// object's ring: it moves to the ended objects).
    pub(super) fn committed(&self, seq: u64, at: i64, event: &Event, state: &State) {
        let Some((key, what, detail)) = describe(event) else {
            return;
        };
        let entry = Entry {
            at,
            source: Source::Journal { seq },
            generation: state.generation(&key),
            what: what.into(),
            detail,
        };
        if matches!(
            event,
            Event::SandboxRemoved { .. } | Event::ContainerRemoved { .. }
        ) {
            let Some(ring) = self.rings.lock().remove(&key) else {
                return;
            };
            let mut entries: Vec<Entry> = ring.entries.into();
            entries.push(entry);
            let mut ended = self.ended.lock();
            if ended.len() == ENDED {
                ended.pop_front();
            }
            let names = Names {
                state: "REMOVED".into(),
                ..ring.names
            };
            ended.push_back(Ended {
                key,
                names,
                at,
                entries,
            });
            return;
        }
        self.record(&key, entry);
        if let Some(ring) = self.rings.lock().get_mut(&key) {
            if ring.names.pod_id.is_empty() {
                ring.names = Names::of(state, &key);
            }
        }
    }

    /// Drops the rings of objects `live` rejects (records that ended while nobody watched).
    pub fn retain(&self, live: impl Fn(&ObjectKey) -> bool) {
        self.rings.lock().retain(|k, _| live(k));
    }
}

/// The object an event concerns, its name in a history, and its facts in a few words.
fn describe(event: &Event) -> Option<(ObjectKey, &'static str, String)> {
    let sandbox = |id: &String| ObjectKey::Sandbox(id.clone());
    let container = |id: &String| ObjectKey::Container(id.clone());
    Some(match event {
        Event::PodCidrRequested { cidr } => {
            (ObjectKey::RuntimeConfig, "pod CIDR requested", cidr.clone())
        }
        Event::SandboxRequested {
            id,
            runtime_handler,
            ..
        } => (
            sandbox(id),
            "run requested",
            handler_detail(runtime_handler),
        ),
        Event::SandboxNetworkReady { id, ips } => (sandbox(id), "network ready", ips.join(", ")),
        Event::SandboxStarted { id, pid } => (sandbox(id), "started", format!("pid {pid}")),
        Event::SandboxExited { id } => (sandbox(id), "exited", String::new()),
        Event::SandboxFailed { id, error } => (sandbox(id), "failed", error.clone()),
        Event::SandboxResourcesUpdated { id, .. } => {
            (sandbox(id), "resources updated", String::new())
        }
        Event::SandboxStopRequested { id } => (sandbox(id), "stop requested", String::new()),
        Event::SandboxStopped { id } => (sandbox(id), "stopped", String::new()),
        Event::SandboxRemoveRequested { id } => (sandbox(id), "remove requested", String::new()),
        Event::SandboxRemoved { id } => (sandbox(id), "removed", String::new()),
        Event::ContainerRequested { id, image_name, .. } => {
            (container(id), "create requested", image_name.clone())
        }
        Event::ContainerCreated { id, .. } => (container(id), "created", String::new()),
        Event::ContainerStartRequested { id } => (container(id), "start requested", String::new()),
        Event::ContainerStarted { id, pid, .. } => (container(id), "started", format!("pid {pid}")),
        Event::ContainerExited {
            id,
            exit_code,
            reason,
            message,
            ..
        } => (
            container(id),
            "exited",
            exit_detail(*exit_code, reason, message),
        ),
        Event::ContainerResourcesUpdated { id, .. } => {
            (container(id), "resources updated", String::new())
        }
        Event::ContainerStopRequested {
            id,
            timeout_seconds,
            ..
        } => (
            container(id),
            "stop requested",
            format!("grace {timeout_seconds}s"),
        ),
        Event::ContainerRemoveRequested { id } => {
            (container(id), "remove requested", String::new())
        }
        Event::ContainerRemoved { id } => (container(id), "removed", String::new()),
    })
}

fn handler_detail(handler: &str) -> String {
    match handler {
        "" => String::new(),
        h => format!("handler {h}"),
    }
}

fn exit_detail(code: i32, reason: &str, message: &str) -> String {
    let mut s = format!("code {code}");
    for part in [reason, message] {
        if !part.is_empty() {
            s.push_str(", ");
            s.push_str(part);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reconcile(n: u64) -> Entry {
        Entry {
            at: n as i64,
            source: Source::Reconcile {
                ok: true,
                duration: std::time::Duration::ZERO,
            },
            generation: n,
            what: "converged".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn a_query_names_an_object_by_id_pod_or_container() {
        let n = Names {
            pod: "default/web-0".into(),
            pod_uid: "u".into(),
            pod_id: "abcdef123456".into(),
            container: "nginx".into(),
            state: String::new(),
        };
        for q in ["", "web-0", "default/web-0", "nginx", "c0ffee", "abcdef"] {
            assert!(n.matches("c0ffee99", q), "{q}");
        }
        for q in ["web", "other/web-0", "ab", "nginx-2"] {
            assert!(!n.matches("c0ffee99", q), "{q}");
        }
    }

    #[test]
    fn a_ring_keeps_the_newest_entries_and_a_removal_ends_it() {
        let h = History::default();
        let key = ObjectKey::Container("c1".into());
        for n in 0..(RING as u64 + 5) {
            h.record(&key, reconcile(n));
        }
        let entries = h.of(&key);
        assert_eq!(entries.len(), RING);
        assert_eq!(entries[0].generation, 5);
        let state = State::default();
        h.committed(
            7,
            1,
            &Event::ContainerExited {
                id: "c1".into(),
                exit_code: 137,
                finished_at: 1,
                reason: "OOMKilled".into(),
                message: String::new(),
            },
            &state,
        );
        let last = h.of(&key).pop().unwrap();
        assert_eq!(last.source, Source::Journal { seq: 7 });
        assert_eq!(
            (last.what.as_str(), last.detail.as_str()),
            ("exited", "code 137, OOMKilled")
        );
        h.committed(8, 2, &Event::ContainerRemoved { id: "c1".into() }, &state);
        assert!(h.of(&key).is_empty());
        let ended = h.ended();
        assert_eq!((ended.len(), &ended[0].key), (1, &key));
        assert_eq!(ended[0].entries.last().unwrap().what, "removed");
        assert_eq!(ended[0].names.state, "REMOVED");
        // A resync's pass over a converged generation is not recorded twice.
        let live = ObjectKey::Sandbox("s1".into());
        h.record_outcome(&live, reconcile(4));
        h.record_outcome(&live, reconcile(4));
        h.record_outcome(&live, reconcile(5));
        assert_eq!(h.of(&live).len(), 2);
        // The failure of the reconcile that removed it joins its ended record; a success
        // (a pass over nothing) does not.
        h.record(&key, reconcile(98));
        let mut failed = reconcile(99);
        failed.source = Source::Reconcile {
            ok: false,
            duration: std::time::Duration::ZERO,
        };
        h.record(&key, failed);
        let entries = &h.ended()[0].entries;
        assert_eq!(entries.last().unwrap().generation, 99);
        assert!(entries.iter().all(|e| e.generation != 98));
        assert!(h.of(&key).is_empty());
    }
}
