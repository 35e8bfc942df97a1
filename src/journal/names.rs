//! Who an object is in kubelet's words (pod `namespace/name`, container name): what log lines
//! name it by, so an operator can grep a pod's lifecycle.

use super::{Event, ObjectKey, State};

/// The names of a sandbox or a container, read from the journal state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectNames {
    /// The pod, `namespace/name`.
    pub pod: String,
    /// The pod's uid.
    pub pod_uid: String,
    /// The sandbox id.
    pub pod_id: String,
    /// The container's name (containers only).
    pub container: Option<String>,
}

impl State {
    /// The names of the object `key` (None: no record, or the runtime config).
    pub fn describe(&self, key: &ObjectKey) -> Option<ObjectNames> {
        let (sandbox_id, container) = match key {
            ObjectKey::RuntimeConfig => return None,
            ObjectKey::Sandbox(id) => (id.as_str(), None),
            ObjectKey::Container(id) => {
                let c = self.containers.get(id)?;
                let name = c.config.metadata.as_ref().map(|m| m.name.clone());
                (c.sandbox_id.as_str(), Some(name.unwrap_or_default()))
            }
        };
        let m = self
            .sandboxes
            .get(sandbox_id)?
            .config
            .metadata
            .clone()
            .unwrap_or_default();
        Some(ObjectNames {
            pod: format!("{}/{}", m.namespace, m.name),
            pod_uid: m.uid,
            pod_id: sandbox_id.to_string(),
            container,
        })
    }
}

impl Event {
    /// An intent's object and what it asks, as its log line says it (None: a fact, or an
    /// intent about no pod).
    pub fn intent(&self) -> Option<(ObjectKey, &'static str)> {
        let sandbox = |id: &String| ObjectKey::Sandbox(id.clone());
        let container = |id: &String| ObjectKey::Container(id.clone());
        Some(match self {
            Event::SandboxRequested { id, .. } => (sandbox(id), "pod sandbox requested"),
            Event::SandboxStopRequested { id } => (sandbox(id), "pod sandbox stop requested"),
            Event::SandboxRemoveRequested { id } => (sandbox(id), "pod sandbox remove requested"),
            Event::SandboxResourcesUpdated { id, .. } => {
                (sandbox(id), "pod resources update requested")
            }
            Event::ContainerRequested { id, .. } => (container(id), "container requested"),
            Event::ContainerStartRequested { id } => (container(id), "container start requested"),
            Event::ContainerStopRequested { id, .. } => (container(id), "container stop requested"),
            Event::ContainerRemoveRequested { id } => (container(id), "container remove requested"),
            Event::ContainerResourcesUpdated { id, .. } => {
                (container(id), "container resources update requested")
            }
            _ => return None,
        })
    }
}

/// One info line about object `$key` (`&ObjectKey`) as `$state` (`State`) knows it: its pod
/// (`pod`, `pod_uid`, `pod_id`), its container (`container`, `container_id`) and `generation`
/// as fields, then the fields and message `tracing::info!` takes. A lifecycle line that greps
/// by pod name.
#[macro_export]
macro_rules! lifecycle_info {
    ($state:expr, $key:expr, $($rest:tt)+) => {
        $crate::lifecycle_event!(::tracing::Level::INFO, $state, $key, $($rest)+)
    };
}

/// [`lifecycle_info!`] at level `$level` (a `tracing::Level` constant).
#[macro_export]
macro_rules! lifecycle_event {
    ($level:expr, $state:expr, $key:expr, $($rest:tt)+) => {{
        if ::tracing::enabled!($level) {
        let state: &$crate::journal::State = &$state;
        let key: &$crate::journal::ObjectKey = $key;
        let names = state.describe(key);
        let n = names.as_ref();
        ::tracing::event!(
            $level,
            pod = n.map(|n| n.pod.as_str()),
            pod_uid = n.map(|n| n.pod_uid.as_str()),
            pod_id = n.map(|n| n.pod_id.as_str()),
            container = n.and_then(|n| n.container.as_deref()),
            container_id = match key {
                $crate::journal::ObjectKey::Container(id) => Some(id.as_str()),
                _ => None,
            },
            generation = state.generation(key),
            $($rest)+
        )
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri;
    use crate::journal::Event;

    fn state() -> State {
        let mut s = State::default();
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web-0".into(),
                namespace: "shop".into(),
                uid: "u1".into(),
                attempt: 0,
            }),
            ..Default::default()
        };
        s.apply(
            1,
            &Event::SandboxRequested {
                id: "s1".into(),
                config: Box::new(config),
                runtime_handler: String::new(),
                netns_path: None,
                created_at: 1,
            },
        );
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            ..Default::default()
        };
        s.apply(
            2,
            &Event::ContainerRequested {
                id: "c1".into(),
                sandbox_id: "s1".into(),
                config: Box::new(config),
                image_id: "sha256:x".into(),
                image_name: "x".into(),
                log_path: String::new(),
                created_at: 2,
                image_volumes: vec![],
            },
        );
        s
    }

    #[test]
    fn describe_names_a_sandbox_by_its_pod() {
        let names = state().describe(&ObjectKey::Sandbox("s1".into())).unwrap();
        assert_eq!(names.pod, "shop/web-0");
        assert_eq!(names.pod_uid, "u1");
        assert_eq!(names.pod_id, "s1");
        assert_eq!(names.container, None);
    }

    #[test]
    fn describe_names_a_container_by_its_pod_and_name() {
        let names = state()
            .describe(&ObjectKey::Container("c1".into()))
            .unwrap();
        assert_eq!(names.pod, "shop/web-0");
        assert_eq!(names.container.as_deref(), Some("app"));
    }

    #[test]
    fn describe_knows_nothing_of_unknown_objects() {
        let s = state();
        assert_eq!(s.describe(&ObjectKey::Sandbox("nope".into())), None);
        assert_eq!(s.describe(&ObjectKey::Container("nope".into())), None);
        assert_eq!(s.describe(&ObjectKey::RuntimeConfig), None);
    }
}
