//! containerd event envelopes decoded into a typed enum.
//!
//! containerd's `type_url` lacks the leading `/` that `prost_types::Any::to_msg` expects, so the
//! URL is compared with each message's full name and decoded by hand.

use containerd_client::events::{
    ContainerCreate, ContainerDelete, ContainerUpdate, SnapshotCommit, SnapshotPrepare,
    SnapshotRemove, TaskCreate, TaskDelete, TaskExit, TaskOom, TaskPaused, TaskResumed, TaskStart,
};
use containerd_client::services::v1::{ImageCreate, ImageDelete, ImageUpdate};
use containerd_client::types::Envelope;
use prost::{Message, Name};

/// A containerd event concord acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum ContainerdEvent {
    TaskCreate {
        container_id: String,
        pid: u32,
    },
    TaskStart {
        container_id: String,
        pid: u32,
    },
    /// A process exited: the init process when `exec_id` equals `container_id`.
    TaskExit {
        container_id: String,
        exec_id: String,
        pid: u32,
        exit_status: u32,
        exited_at: Option<prost_types::Timestamp>,
    },
    TaskOom {
        container_id: String,
    },
    TaskDelete {
        container_id: String,
        exit_status: u32,
    },
    TaskPaused {
        container_id: String,
    },
    TaskResumed {
        container_id: String,
    },
    ContainerCreate {
        id: String,
    },
    ContainerUpdate {
        id: String,
    },
    ContainerDelete {
        id: String,
    },
    ImageCreate {
        name: String,
    },
    ImageUpdate {
        name: String,
    },
    ImageDelete {
        name: String,
    },
    SnapshotPrepare {
        key: String,
        parent: String,
    },
    SnapshotCommit {
        key: String,
        name: String,
    },
    SnapshotRemove {
        key: String,
    },
    /// A topic concord does not act on (still counted).
    Other,
}

impl ContainerdEvent {
    /// The containerd container id the event is about, when it is about one.
    pub fn container_id(&self) -> Option<&str> {
        use ContainerdEvent::*;
        match self {
            TaskCreate { container_id, .. }
            | TaskStart { container_id, .. }
            | TaskExit { container_id, .. }
            | TaskOom { container_id }
            | TaskDelete { container_id, .. }
            | TaskPaused { container_id }
            | TaskResumed { container_id } => Some(container_id),
            ContainerCreate { id } | ContainerUpdate { id } | ContainerDelete { id } => Some(id),
            _ => None,
        }
    }
}

/// Why an envelope could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The envelope has no payload.
    #[error("event on {topic} has no payload")]
    Empty { topic: String },
    /// The payload does not decode as the type its URL names.
    #[error("event on {topic}: payload {type_url} does not decode: {source}")]
    Payload {
        topic: String,
        type_url: String,
        #[source]
        source: prost::DecodeError,
    },
}

fn is<T: Name>(type_url: &str) -> bool {
    type_url.trim_start_matches('/') == T::full_name()
        || type_url.rsplit('/').next() == Some(T::full_name().as_str())
}

/// Decodes one envelope.
pub fn decode(env: &Envelope) -> Result<ContainerdEvent, DecodeError> {
    let any = env.event.as_ref().ok_or_else(|| DecodeError::Empty {
        topic: env.topic.clone(),
    })?;
    let url = any.type_url.as_str();
    let bytes = any.value.as_slice();
    let err = |source| DecodeError::Payload {
        topic: env.topic.clone(),
        type_url: url.to_string(),
        source,
    };
    use ContainerdEvent as E;
    let ev = if is::<TaskExit>(url) {
        let m = TaskExit::decode(bytes).map_err(err)?;
        E::TaskExit {
            container_id: m.container_id,
            exec_id: m.id,
            pid: m.pid,
            exit_status: m.exit_status,
            exited_at: m.exited_at,
        }
    } else if is::<TaskCreate>(url) {
        let m = TaskCreate::decode(bytes).map_err(err)?;
        E::TaskCreate {
            container_id: m.container_id,
            pid: m.pid,
        }
    } else if is::<TaskStart>(url) {
        let m = TaskStart::decode(bytes).map_err(err)?;
        E::TaskStart {
            container_id: m.container_id,
            pid: m.pid,
        }
    } else if is::<TaskOom>(url) {
        let m = TaskOom::decode(bytes).map_err(err)?;
        E::TaskOom {
            container_id: m.container_id,
        }
    } else if is::<TaskDelete>(url) {
        let m = TaskDelete::decode(bytes).map_err(err)?;
        E::TaskDelete {
            container_id: m.container_id,
            exit_status: m.exit_status,
        }
    } else if is::<TaskPaused>(url) {
        let m = TaskPaused::decode(bytes).map_err(err)?;
        E::TaskPaused {
            container_id: m.container_id,
        }
    } else if is::<TaskResumed>(url) {
        let m = TaskResumed::decode(bytes).map_err(err)?;
        E::TaskResumed {
            container_id: m.container_id,
        }
    } else if is::<ContainerCreate>(url) {
        E::ContainerCreate {
            id: ContainerCreate::decode(bytes).map_err(err)?.id,
        }
    } else if is::<ContainerUpdate>(url) {
        E::ContainerUpdate {
            id: ContainerUpdate::decode(bytes).map_err(err)?.id,
        }
    } else if is::<ContainerDelete>(url) {
        E::ContainerDelete {
            id: ContainerDelete::decode(bytes).map_err(err)?.id,
        }
    } else if is::<ImageCreate>(url) {
        E::ImageCreate {
            name: ImageCreate::decode(bytes).map_err(err)?.name,
        }
    } else if is::<ImageUpdate>(url) {
        E::ImageUpdate {
            name: ImageUpdate::decode(bytes).map_err(err)?.name,
        }
    } else if is::<ImageDelete>(url) {
        E::ImageDelete {
            name: ImageDelete::decode(bytes).map_err(err)?.name,
        }
    } else if is::<SnapshotPrepare>(url) {
        let m = SnapshotPrepare::decode(bytes).map_err(err)?;
        E::SnapshotPrepare {
            key: m.key,
            parent: m.parent,
        }
    } else if is::<SnapshotCommit>(url) {
        let m = SnapshotCommit::decode(bytes).map_err(err)?;
        E::SnapshotCommit {
            key: m.key,
            name: m.name,
        }
    } else if is::<SnapshotRemove>(url) {
        E::SnapshotRemove {
            key: SnapshotRemove::decode(bytes).map_err(err)?.key,
        }
    } else {
        E::Other
    };
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope<T: Message + Name>(topic: &str, m: &T, leading_slash: bool) -> Envelope {
        let url = if leading_slash {
            format!("/{}", T::full_name())
        } else {
            T::full_name()
        };
        Envelope {
            timestamp: None,
            namespace: "k8s.io".into(),
            topic: topic.into(),
            event: Some(prost_types::Any {
                type_url: url,
                value: m.encode_to_vec(),
            }),
        }
    }

    #[test]
    fn task_exit_decodes_with_and_without_leading_slash() {
        let m = TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 42,
            exit_status: 137,
            exited_at: None,
        };
        for slash in [false, true] {
            let ev = decode(&envelope("/tasks/exit", &m, slash)).unwrap();
            assert_eq!(
                ev,
                ContainerdEvent::TaskExit {
                    container_id: "c1".into(),
                    exec_id: "c1".into(),
                    pid: 42,
                    exit_status: 137,
                    exited_at: None
                }
            );
            assert_eq!(ev.container_id(), Some("c1"));
        }
    }

    #[test]
    fn oom_and_image_events_decode() {
        let oom = TaskOom {
            container_id: "c2".into(),
        };
        assert_eq!(
            decode(&envelope("/tasks/oom", &oom, false)).unwrap(),
            ContainerdEvent::TaskOom {
                container_id: "c2".into()
            }
        );
        let img = ImageDelete {
            name: "docker.io/library/busybox:latest".into(),
        };
        assert_eq!(
            decode(&envelope("/images/delete", &img, false)).unwrap(),
            ContainerdEvent::ImageDelete {
                name: "docker.io/library/busybox:latest".into()
            }
        );
    }

    #[test]
    fn garbage_payload_is_an_error_naming_the_topic() {
        let mut env = envelope("/tasks/exit", &TaskOom::default(), false);
        env.event.as_mut().unwrap().type_url = TaskExit::full_name();
        env.event.as_mut().unwrap().value = vec![0xff, 0xff, 0xff];
        let err = decode(&env).unwrap_err();
        assert!(err.to_string().contains("/tasks/exit"), "{err}");
    }
}
