//! Journal events (intents and facts) and the in-memory state that is their fold.
//!
//! Events are appended, never edited; [`State::apply`] is the only place that turns them into
//! state, both at replay and live, so a restart folds to exactly what was acknowledged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Something concord recorded: an intent from the CRI API or a fact the loop observed that must
/// survive a restart. Serialized as JSON tagged by `type`; unknown types stop the replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// UpdateRuntimeConfig asked for this pod CIDR (applied to later CNI calls).
    PodCidrRequested { cidr: String },
}

/// Identifies one object the reconcile loop manages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectKey {
    /// The node-wide runtime configuration (one object).
    RuntimeConfig,
}

impl ObjectKey {
    /// Kind name used in logs, metrics and introspection.
    pub fn kind(&self) -> &'static str {
        match self {
            ObjectKey::RuntimeConfig => "runtime_config",
        }
    }

    /// Object id ("" for singletons).
    pub fn id(&self) -> &str {
        match self {
            ObjectKey::RuntimeConfig => "",
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id() {
            "" => f.write_str(self.kind()),
            id => write!(f, "{}/{}", self.kind(), id),
        }
    }
}

/// Desired node-wide runtime configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeConfigSpec {
    /// Pod CIDR from the last UpdateRuntimeConfig ("" when never set).
    pub pod_cidr: String,
    /// Bumped by every recorded intent for this object.
    pub generation: u64,
}

/// The fold of the journal: concord's desired state plus facts that survive restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Sequence number of the last event folded in.
    pub seq: u64,
    pub runtime_config: RuntimeConfigSpec,
}

impl State {
    /// Folds one event (with its sequence number) into the state.
    pub fn apply(&mut self, seq: u64, event: &Event) {
        self.seq = seq;
        match event {
            Event::PodCidrRequested { cidr } => {
                self.runtime_config.pod_cidr = cidr.clone();
                self.runtime_config.generation += 1;
            }
        }
    }

    /// Every object key the state holds (what a full resync enqueues).
    pub fn keys(&self) -> Vec<ObjectKey> {
        vec![ObjectKey::RuntimeConfig]
    }

    /// Generation of an object's desired state (0 when the object is unknown).
    pub fn generation(&self, key: &ObjectKey) -> u64 {
        match key {
            ObjectKey::RuntimeConfig => self.runtime_config.generation,
        }
    }

    /// The object a containerd container or task id belongs to. No object kind is backed by a
    /// containerd container yet (sandboxes and containers bring theirs), so events about
    /// containers concord does not own map to nothing.
    pub fn key_for_containerd_id(&self, _id: &str) -> Option<ObjectKey> {
        None
    }

    /// An object's desired state as JSON, for introspection.
    pub fn desired_json(&self, key: &ObjectKey) -> Option<String> {
        match key {
            ObjectKey::RuntimeConfig => serde_json::to_string(&self.runtime_config).ok(),
        }
    }

    /// Number of objects of each kind (the `concord_objects` gauge).
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for k in self.keys() {
            *counts.entry(k.kind()).or_default() += 1;
        }
        counts.into_iter().collect()
    }

    /// Objects by key, sorted (for introspection listings).
    pub fn objects(&self) -> BTreeMap<ObjectKey, u64> {
        self.keys()
            .into_iter()
            .map(|k| {
                let g = self.generation(&k);
                (k, g)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidr_intents_fold_to_the_last_one_and_count_generations() {
        let mut s = State::default();
        s.apply(
            1,
            &Event::PodCidrRequested {
                cidr: "10.1.0.0/16".into(),
            },
        );
        s.apply(
            2,
            &Event::PodCidrRequested {
                cidr: "10.2.0.0/16".into(),
            },
        );
        assert_eq!(s.runtime_config.pod_cidr, "10.2.0.0/16");
        assert_eq!(s.generation(&ObjectKey::RuntimeConfig), 2);
        assert_eq!(s.seq, 2);
    }

    #[test]
    fn events_are_tagged_json() {
        let ev = Event::PodCidrRequested {
            cidr: "10.0.0.0/8".into(),
        };
        let text = serde_json::to_string(&ev).unwrap();
        assert_eq!(text, r#"{"type":"PodCidrRequested","cidr":"10.0.0.0/8"}"#);
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), ev);
        assert!(serde_json::from_str::<Event>(r#"{"type":"FromTheFuture"}"#).is_err());
    }
}
