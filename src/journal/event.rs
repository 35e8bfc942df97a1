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
    /// RunPodSandbox: everything the sandbox will create is named here first (persist before
    /// create): the id (containerd container, snapshot key and CNI container id), the netns path.
    SandboxRequested {
        id: String,
        config: Box<k8s_cri::v1::PodSandboxConfig>,
        runtime_handler: String,
        netns_path: Option<String>,
        created_at: i64,
    },
    /// Fact: CNI attached the sandbox with these addresses (first is the primary).
    SandboxNetworkReady { id: String, ips: Vec<String> },
    /// Fact: the pause task runs.
    SandboxStarted { id: String, pid: u32 },
    /// Fact: the pause task is gone (exit, kill or stop); the sandbox is NotReady.
    SandboxExited { id: String },
    /// Fact: RunPodSandbox failed; the sandbox is to be removed (SandboxRemoved follows once
    /// everything it created is torn down).
    SandboxFailed { id: String, error: String },
    /// StopPodSandbox.
    SandboxStopRequested { id: String },
    /// Fact: task, network and netns are gone.
    SandboxStopped { id: String },
    /// RemovePodSandbox.
    SandboxRemoveRequested { id: String },
    /// Fact: container, snapshot and state are gone; the record ends.
    SandboxRemoved { id: String },
}

/// What a sandbox should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxDesired {
    Ready,
    Stopped,
    Removed,
}

/// One pod sandbox: desired state and the facts recorded about it.
///
/// ```text
///  Requested ──▶ Ready (started) ──▶ NotReady (exited / stopped) ──▶ removed
///      └── failed: torn down, record dropped
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: Box<k8s_cri::v1::PodSandboxConfig>,
    pub runtime_handler: String,
    pub netns_path: Option<String>,
    pub created_at: i64,
    pub desired: SandboxDesired,
    pub generation: u64,
    pub ips: Vec<String>,
    pub pid: Option<u32>,
    /// The pause task ran and is gone.
    pub exited: bool,
    /// Stop converged (task, network, netns gone).
    pub stopped: bool,
}

impl SandboxRecord {
    /// Ready: started, not exited, not stopping.
    pub fn ready(&self) -> bool {
        self.pid.is_some() && !self.exited && !self.stopped && self.desired == SandboxDesired::Ready
    }
}

/// The name kubelet reserves a sandbox under: one per metadata.
pub fn sandbox_name(m: &k8s_cri::v1::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// Identifies one object the reconcile loop manages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectKey {
    /// The node-wide runtime configuration (one object).
    RuntimeConfig,
    /// A pod sandbox by id.
    Sandbox(String),
}

impl ObjectKey {
    /// Kind name used in logs, metrics and introspection.
    pub fn kind(&self) -> &'static str {
        match self {
            ObjectKey::RuntimeConfig => "runtime_config",
            ObjectKey::Sandbox(_) => "sandbox",
        }
    }

    /// Object id ("" for singletons).
    pub fn id(&self) -> &str {
        match self {
            ObjectKey::RuntimeConfig => "",
            ObjectKey::Sandbox(id) => id,
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
    /// Sandboxes by id.
    #[serde(default)]
    pub sandboxes: BTreeMap<String, SandboxRecord>,
    /// Sandbox ids by reserved name.
    #[serde(default)]
    pub sandbox_names: BTreeMap<String, String>,
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
            Event::SandboxRequested {
                id,
                config,
                runtime_handler,
                netns_path,
                created_at,
            } => {
                if let Some(m) = &config.metadata {
                    self.sandbox_names.insert(sandbox_name(m), id.clone());
                }
                self.sandboxes.insert(
                    id.clone(),
                    SandboxRecord {
                        id: id.clone(),
                        config: config.clone(),
                        runtime_handler: runtime_handler.clone(),
                        netns_path: netns_path.clone(),
                        created_at: *created_at,
                        desired: SandboxDesired::Ready,
                        generation: 1,
                        ips: vec![],
                        pid: None,
                        exited: false,
                        stopped: false,
                    },
                );
            }
            Event::SandboxNetworkReady { id, ips } => {
                if let Some(s) = self.sandboxes.get_mut(id) {
                    s.ips = ips.clone();
                }
            }
            Event::SandboxStarted { id, pid } => {
                if let Some(s) = self.sandboxes.get_mut(id) {
                    s.pid = Some(*pid);
                }
            }
            Event::SandboxExited { id } => {
                if let Some(s) = self.sandboxes.get_mut(id) {
                    s.exited = true;
                }
            }
            Event::SandboxStopRequested { id } => {
                if let Some(s) = self.sandboxes.get_mut(id) {
                    if s.desired == SandboxDesired::Ready {
                        s.desired = SandboxDesired::Stopped;
                        s.generation += 1;
                    }
                }
            }
            Event::SandboxStopped { id } => {
                if let Some(s) = self.sandboxes.get_mut(id) {
                    s.stopped = true;
                    s.exited = true;
                }
            }
            Event::SandboxRemoveRequested { id } => {
                if let Some(s) = self.sandboxes.get_mut(id) {
                    if s.desired != SandboxDesired::Removed {
                        s.desired = SandboxDesired::Removed;
                        s.generation += 1;
                    }
                }
            }
            Event::SandboxFailed { id, .. } => {
                // Its start failed: it is to be removed (the record goes with SandboxRemoved).
                if let Some(s) = self.sandboxes.get_mut(id) {
                    s.desired = SandboxDesired::Removed;
                    s.generation += 1;
                }
            }
            Event::SandboxRemoved { id } => {
                if let Some(s) = self.sandboxes.remove(id) {
                    if let Some(m) = &s.config.metadata {
                        let name = sandbox_name(m);
                        if self.sandbox_names.get(&name) == Some(id) {
                            self.sandbox_names.remove(&name);
                        }
                    }
                }
            }
        }
    }

    /// Every object key the state holds (what a full resync enqueues).
    pub fn keys(&self) -> Vec<ObjectKey> {
        let mut keys = vec![ObjectKey::RuntimeConfig];
        keys.extend(
            self.sandboxes
                .keys()
                .map(|id| ObjectKey::Sandbox(id.clone())),
        );
        keys
    }

    /// Generation of an object's desired state (0 when the object is unknown).
    pub fn generation(&self, key: &ObjectKey) -> u64 {
        match key {
            ObjectKey::RuntimeConfig => self.runtime_config.generation,
            ObjectKey::Sandbox(id) => self.sandboxes.get(id).map(|s| s.generation).unwrap_or(0),
        }
    }

    /// The object a containerd container or task id belongs to (a sandbox's pause container has
    /// the sandbox's id); events about containers concord does not own map to nothing.
    pub fn key_for_containerd_id(&self, id: &str) -> Option<ObjectKey> {
        self.sandboxes
            .contains_key(id)
            .then(|| ObjectKey::Sandbox(id.to_string()))
    }

    /// An object's desired state as JSON, for introspection.
    pub fn desired_json(&self, key: &ObjectKey) -> Option<String> {
        match key {
            ObjectKey::RuntimeConfig => serde_json::to_string(&self.runtime_config).ok(),
            ObjectKey::Sandbox(id) => self.sandboxes.get(id).and_then(|s| {
                serde_json::to_string(&serde_json::json!({
                    "desired": s.desired, "generation": s.generation, "netns": s.netns_path,
                    "ips": s.ips, "pid": s.pid, "exited": s.exited, "stopped": s.stopped,
                }))
                .ok()
            }),
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

    /// Sandboxes by lifecycle state (creating, ready, notready, removing), every state present.
    pub fn sandbox_states(&self) -> [(&'static str, usize); 4] {
        let mut n = [
            ("creating", 0),
            ("ready", 0),
            ("notready", 0),
            ("removing", 0),
        ];
        for s in self.sandboxes.values() {
            let i = match s.desired {
                SandboxDesired::Removed => 3,
                _ if s.ready() => 1,
                SandboxDesired::Ready if s.pid.is_none() => 0,
                _ => 2,
            };
            n[i].1 += 1;
        }
        n
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
