//! ContainerStatus and ListContainers, answered from the journal's state.

use std::collections::HashMap;

use crate::cri;

use super::{ApiError, Server};
use crate::image::index::{ImageIndex, ImageRecord};
use crate::journal::{ContainerRecord, ObjectKey, State};
use crate::oci::signal;

impl Server {
    pub async fn container_status(
        &self,
        req: cri::ContainerStatusRequest,
    ) -> Result<cri::ContainerStatusResponse, ApiError> {
        let (state, id) = self.known_container(&req.container_id)?;
        let c = &state.containers[&id];
        let mut info = HashMap::new();
        if req.verbose {
            let running = c.cri_state() == cri::ContainerState::ContainerRunning;
            info.insert(
                "info".to_string(),
                serde_json::json!({
                    "pid": if running { c.pid.unwrap_or(0) } else { 0 },
                    "sandboxID": c.sandbox_id, "desired": c.desired, "removing": c.desired == crate::journal::ContainerDesired::Removed,
                    "snapshotKey": c.id, "snapshotter": self.config.containerd.snapshotter,
                    "runtimeType": self.runtime_type_of(&c.sandbox_id),
                    "config": c.config, "logPath": c.log_path,
                    "reconcile": self.controller.object(&ObjectKey::Container(id.clone())).map(|o| o.info()),
                })
                .to_string(),
            );
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(status_of(c, &self.images.index())),
            info,
        })
    }

    pub async fn list_containers(
        &self,
        req: cri::ListContainersRequest,
    ) -> Result<cri::ListContainersResponse, ApiError> {
        let state = self.journal.state();
        let containers = list_of(&state, &req.filter.unwrap_or_default());
        Ok(cri::ListContainersResponse { containers })
    }
}

/// The containers of `state` that `f` selects, as ListContainers answers them.
fn list_of(state: &State, f: &cri::ContainerFilter) -> Vec<cri::Container> {
    state
        .containers
        .values()
        .filter(|c| selected(c, &f.id, &f.pod_sandbox_id, &f.label_selector))
        .filter(|c| {
            f.state
                .as_ref()
                .is_none_or(|s| s.state == c.cri_state() as i32)
        })
        .map(|c| cri::Container {
            id: c.id.clone(),
            pod_sandbox_id: c.sandbox_id.clone(),
            metadata: c.config.metadata.clone(),
            image: Some(config_image(c)),
            image_ref: c.image_id.clone(),
            state: c.cri_state() as i32,
            created_at: c.created_at,
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            image_id: c.image_id.clone(),
        })
        .collect()
}

/// Whether a list call with these filter fields (each empty: any; ids by prefix) shows `c`.
/// A container whose create has not finished is never shown.
pub(super) fn selected(
    c: &ContainerRecord,
    id: &str,
    pod_sandbox_id: &str,
    labels: &HashMap<String, String>,
) -> bool {
    c.id.starts_with(id)
        && c.sandbox_id.starts_with(pod_sandbox_id)
        && labels
            .iter()
            .all(|(k, v)| c.config.labels.get(k) == Some(v))
        && c.cri_state() != cri::ContainerState::ContainerUnknown
}

/// The ImageSpec the container was created with (kubelet's: an image id or reference).
fn config_image(c: &ContainerRecord) -> cri::ImageSpec {
    c.config.image.clone().unwrap_or_else(|| cri::ImageSpec {
        image: c.image_name.clone(),
        ..Default::default()
    })
}

/// The status's image and image_ref, as containerd's ContainerStatus: the image's first repo
/// tag (else the ImageSpec it was created with), and its first repo digest (kubelet's pod
/// `imageID`; else the image id). `ImageSpec.image_ref` carries the same digested reference.
fn status_image(c: &ContainerRecord, image: Option<&ImageRecord>) -> (cri::ImageSpec, String) {
    let mut spec = config_image(c);
    let mut image_ref = c.image_id.clone();
    if let Some(img) = image {
        if let Some(tag) = img.repo_tags().into_iter().next() {
            spec = cri::ImageSpec {
                image: tag,
                ..Default::default()
            };
        }
        if let Some(digest) = img.repo_digests().into_iter().next() {
            image_ref = digest;
        }
    }
    spec.image_ref = image_ref.clone();
    (spec, image_ref)
}

/// The CRI status of `c`; `images` names its image and gives the image's stop signal.
pub(super) fn status_of(c: &ContainerRecord, images: &ImageIndex) -> cri::ContainerStatus {
    let image = images.find(&c.image_id);
    let (image_spec, image_ref) = status_image(c, image);
    let (stop_signal, _) = signal::stop_signal(&c.config, image.map(|i| &i.resolved.config));
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: c.cri_state() as i32,
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: Some(image_spec),
        image_ref,
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: c.log_path.clone(),
        stop_signal: stop_signal as i32,
        resources: Some(cri::ContainerResources {
            linux: Some(
                c.config
                    .linux
                    .as_ref()
                    .and_then(|l| l.resources.clone())
                    .map(|mut r| {
                        // The swap limit concord gives the container (see oci::linux_resources).
                        if r.memory_swap_limit_in_bytes == 0
                            && crate::oci::resources::swap_accounted()
                        {
                            r.memory_swap_limit_in_bytes = r.memory_limit_in_bytes;
                        }
                        r
                    })
                    .unwrap_or_default(),
            ),
            ..Default::default()
        }),
        image_id: c.image_id.clone(),
        user: c.user.as_ref().map(|u| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: u.uid,
                gid: u.gid,
                supplemental_groups: u.groups.clone(),
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Event;
    use prost::Message;
    use std::time::{Duration, Instant};

    /// A kubelet-like container config: its labels and annotations as kubelet 1.3x sets them.
    fn kubelet_config(pod: usize, name: &str) -> cri::ContainerConfig {
        let kv = |pairs: &[(&str, String)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<HashMap<_, _>>()
        };
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                    .into(),
                user_specified_image: "registry.k8s.io/pause:3.10".into(),
                ..Default::default()
            }),
            labels: kv(&[
                ("io.kubernetes.container.name", name.into()),
                ("io.kubernetes.pod.name", format!("web-{pod}")),
                ("io.kubernetes.pod.namespace", "default".into()),
                (
                    "io.kubernetes.pod.uid",
                    format!("6a0c2a2e-0d47-4a6c-9c3f-{pod:012}"),
                ),
            ]),
            annotations: kv(&[
                ("io.kubernetes.container.hash", "5f2c1a9e".into()),
                ("io.kubernetes.container.restartCount", "0".into()),
                (
                    "io.kubernetes.container.terminationMessagePath",
                    "/dev/termination-log".into(),
                ),
                (
                    "io.kubernetes.container.terminationMessagePolicy",
                    "File".into(),
                ),
                ("io.kubernetes.pod.terminationGracePeriod", "30".into()),
            ]),
            ..Default::default()
        }
    }

    /// A state of `pods` pods with `per_pod` running containers each (records only: no sandbox
    /// is needed to list containers).
    fn state_of_containers(pods: usize, per_pod: usize) -> State {
        let mut s = State::default();
        let mut seq = 0;
        let mut apply = |s: &mut State, e: Event| {
            seq += 1;
            s.apply(seq, &e)
        };
        for p in 0..pods {
            for c in 0..per_pod {
                let id = format!("{:064x}", p * 1000 + c);
                apply(
                    &mut s,
                    Event::ContainerRequested {
                        id: id.clone(),
                        sandbox_id: format!("{p:064x}"),
                        config: Box::new(kubelet_config(p, &format!("c-{c}"))),
                        image_id: format!("sha256:{:064x}", c),
                        image_name: "registry.k8s.io/pause:3.10".into(),
                        log_path: format!("/var/log/pods/{p}/c-{c}/0.log"),
                        created_at: 1,
                        image_volumes: vec![],
                    },
                );
                apply(
                    &mut s,
                    Event::ContainerCreated {
                        id: id.clone(),
                        user: None,
                    },
                );
                apply(
                    &mut s,
                    Event::ContainerStarted {
                        id,
                        pid: 42,
                        started_at: 2,
                    },
                );
            }
        }
        s
    }

    fn percentile(times: &mut [Duration], p: usize) -> Duration {
        times.sort();
        times[(times.len() * p / 100).min(times.len() - 1)]
    }

    /// ListContainers at 1,000 containers: building the answer, and building + encoding it.
    /// `cargo test --release --lib list_containers_at_1000 -- --ignored --nocapture`
    #[test]
    #[ignore = "a benchmark"]
    fn list_containers_at_1000_containers_is_fast() {
        let state = state_of_containers(250, 4);
        let f = cri::ContainerFilter::default();
        let (mut build, mut encode, mut clone) = (vec![], vec![], vec![]);
        let built = list_of(&state, &f);
        for _ in 0..500 {
            let t = Instant::now();
            std::hint::black_box(built.clone());
            clone.push(t.elapsed());
            let t = Instant::now();
            let containers = list_of(&state, &f);
            build.push(t.elapsed());
            let bytes = cri::ListContainersResponse { containers }.encode_to_vec();
            encode.push(t.elapsed());
            assert!(bytes.len() > 1000);
        }
        eprintln!(
            "{} bytes; clone of a built list: p50 {:?} p99 {:?}",
            cri::ListContainersResponse { containers: built }.encoded_len(),
            percentile(&mut clone, 50),
            percentile(&mut clone, 99),
        );
        eprintln!(
            "list_of: p50 {:?} p99 {:?}; with encoding: p50 {:?} p99 {:?}",
            percentile(&mut build, 50),
            percentile(&mut build, 99),
            percentile(&mut encode, 50),
            percentile(&mut encode, 99),
        );
    }
}
