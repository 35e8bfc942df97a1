//! ListContainers, answered from the journal's state with each entry encoded once.
//!
//! At a thousand containers the answer is most of a megabyte: building its messages (clones of
//! every label and annotation map) and encoding them cost more than the rest of the call. Each
//! container's encoded entry is kept with the record it was built from, and reused while the
//! state still holds that very record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::Message;

use super::container_status::{config_image, selected};
use super::{ApiError, Server};
use crate::cri;
use crate::journal::{ContainerRecord, State};

impl Server {
    pub async fn list_containers(
        &self,
        req: cri::ListContainersRequest,
    ) -> Result<ListContainersResponse, ApiError> {
        let state = self.journal.state();
        Ok(self
            .list_cache
            .answer(&state, &req.filter.unwrap_or_default()))
    }
}

/// `runtime.v1.ListContainersResponse` (build.rs maps the proto message here). A client decodes
/// the entries into `containers`; concord answers with `encoded` ones.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct ListContainersResponse {
    /// The containers (field 1).
    pub containers: Vec<cri::Container>,
    /// More containers, each an encoded `Container` message, sent after `containers` as
    /// field 1 too.
    pub encoded: Vec<Bytes>,
    /// More containers, already framed as field 1 (key, length, message) one after another,
    /// sent last as they are.
    pub framed: Bytes,
}

impl ListContainersResponse {
    /// All the containers, the encoded ones decoded.
    pub fn into_containers(self) -> Vec<cri::Container> {
        let mut all = self.containers;
        all.extend(
            self.encoded
                .iter()
                .filter_map(|e| cri::Container::decode(&e[..]).ok()),
        );
        if let Ok(framed) = ListContainersResponse::decode(&self.framed[..]) {
            all.extend(framed.containers);
        }
        all
    }
}

impl Message for ListContainersResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for c in &self.containers {
            encoding::message::encode(1, c, buf);
        }
        for e in &self.encoded {
            frame(e, buf);
        }
        buf.put_slice(&self.framed);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag == 1 {
            encoding::message::merge_repeated(wire_type, &mut self.containers, buf, ctx)
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        let encoded: usize = self
            .encoded
            .iter()
            .map(|e| encoding::key_len(1) + encoding::encoded_len_varint(e.len() as u64) + e.len())
            .sum();
        encoding::message::encoded_len_repeated(1, &self.containers) + encoded + self.framed.len()
    }

    fn clear(&mut self) {
        self.containers.clear();
        self.encoded.clear();
        self.framed.clear();
    }
}

/// Writes encoded `Container` `e` as field 1.
fn frame(e: &[u8], buf: &mut impl BufMut) {
    encoding::encode_key(1, WireType::LengthDelimited, buf);
    encoding::encode_varint(e.len() as u64, buf);
    buf.put_slice(e);
}

/// Each listed container's encoded entry, by id, with the record it was built from.
///
/// Holding the record keeps it shared, so the journal's fold (`Arc::make_mut`) copies it
/// before any change: a record still pointer-equal to the one held is unchanged.
#[derive(Default)]
pub struct ListCache(Mutex<Cached>);

#[derive(Default)]
struct Cached {
    /// The state's `seq` when stale entries were last dropped.
    seq: u64,
    entries: HashMap<String, (Arc<ContainerRecord>, Bytes)>,
    /// The unfiltered answer (kubelet's relist, every second), framed, with the state it was
    /// built from: the same state answers the same bytes. (The weak reference keeps the state's
    /// allocation, so no later state can share its address.)
    all: Option<(Weak<State>, Bytes)>,
}

impl ListCache {
    /// The answer for `f` at `state`.
    pub fn answer(&self, state: &Arc<State>, f: &cri::ContainerFilter) -> ListContainersResponse {
        if *f != cri::ContainerFilter::default() {
            return ListContainersResponse {
                encoded: self.entries(state, f),
                ..Default::default()
            };
        }
        let cached = self.lock().all.clone();
        let framed = match cached {
            Some((built_from, framed)) if Weak::ptr_eq(&built_from, &Arc::downgrade(state)) => {
                framed
            }
            _ => {
                let entries = self.entries(state, f);
                let len = entries.iter().map(|e| e.len() + 6).sum();
                let mut framed = bytes::BytesMut::with_capacity(len);
                for e in &entries {
                    frame(e, &mut framed);
                }
                let framed = framed.freeze();
                self.lock().all = Some((Arc::downgrade(state), framed.clone()));
                framed
            }
        };
        ListContainersResponse {
            framed,
            ..Default::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The encoded entries of the containers of `state` that `f` selects (ids by prefix, pod,
    /// state, labels), in id order.
    pub fn entries(&self, state: &State, f: &cri::ContainerFilter) -> Vec<Bytes> {
        let mut cached = self.lock();
        if cached.seq != state.seq {
            cached.seq = state.seq;
            cached
                .entries
                .retain(|id, _| state.containers.contains_key(id));
        }
        state
            .containers
            .values()
            .filter(|c| selected(c, &f.id, &f.pod_sandbox_id, &f.label_selector))
            .filter(|c| {
                f.state
                    .as_ref()
                    .is_none_or(|s| s.state == c.cri_state() as i32)
            })
            .map(|c| match cached.entries.get(&c.id) {
                Some((record, bytes)) if Arc::ptr_eq(record, c) => bytes.clone(),
                _ => {
                    let bytes = Bytes::from(entry_of(c).encode_to_vec());
                    cached
                        .entries
                        .insert(c.id.clone(), (Arc::clone(c), bytes.clone()));
                    bytes
                }
            })
            .collect()
    }
}

/// The ListContainers entry of `c`.
fn entry_of(c: &ContainerRecord) -> cri::Container {
    cri::Container {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Event;
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

    /// The answer as a client decodes it.
    fn decoded(cache: &ListCache, state: &State, f: &cri::ContainerFilter) -> Vec<cri::Container> {
        let answer = cache.answer(&Arc::new(state.clone()), f);
        let bytes = answer.encode_to_vec();
        assert_eq!(bytes.len(), answer.encoded_len());
        ListContainersResponse::decode(&bytes[..])
            .unwrap()
            .containers
    }

    #[test]
    fn cached_entries_decode_to_the_built_ones_for_every_filter_and_follow_changes() {
        let mut state = state_of_containers(3, 2);
        let cache = ListCache::default();
        let all: Vec<_> = state.containers.values().map(|c| entry_of(c)).collect();
        let none = cri::ContainerFilter::default();
        assert_eq!(decoded(&cache, &state, &none), all);
        assert_eq!(decoded(&cache, &state, &none), all, "from the cache");
        let pod = format!("{:064x}", 1);
        let by_pod = cri::ContainerFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        };
        let want: Vec<_> = all
            .iter()
            .filter(|c| c.pod_sandbox_id == pod)
            .cloned()
            .collect();
        assert_eq!(want.len(), 2);
        assert_eq!(decoded(&cache, &state, &by_pod), want);
        let by_label = cri::ContainerFilter {
            label_selector: [("io.kubernetes.pod.name".to_string(), "web-2".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(decoded(&cache, &state, &by_label).len(), 2);
        let id = all[0].id.clone();
        let by_id = cri::ContainerFilter {
            id: id.clone(),
            ..Default::default()
        };
        assert_eq!(decoded(&cache, &state, &by_id), vec![all[0].clone()]);
        // The first container exits: its entry is built again, the others are reused.
        state.apply(
            1000,
            &Event::ContainerExited {
                id: id.clone(),
                exit_code: 1,
                finished_at: 3,
                reason: "Error".into(),
                message: String::new(),
            },
        );
        let exited = cri::ContainerFilter {
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerExited as i32,
            }),
            ..Default::default()
        };
        let got = decoded(&cache, &state, &exited);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, id);
        assert_eq!(got[0].state, cri::ContainerState::ContainerExited as i32);
        state.apply(1001, &Event::ContainerRemoved { id });
        assert_eq!(decoded(&cache, &state, &none), all[1..].to_vec());
        assert_eq!(cache.0.lock().unwrap().entries.len(), all.len() - 1);
    }

    #[test]
    fn the_unfiltered_answer_is_reused_only_for_the_state_it_was_built_from() {
        let mut state = state_of_containers(3, 2);
        let cache = ListCache::default();
        let none = cri::ContainerFilter::default();
        let shared = Arc::new(state.clone());
        let first = cache.answer(&shared, &none);
        let again = cache.answer(&shared, &none);
        assert_eq!(
            first.framed.as_ptr(),
            again.framed.as_ptr(),
            "the same bytes"
        );
        assert_eq!(
            first.clone().into_containers(),
            state
                .containers
                .values()
                .map(|c| entry_of(c))
                .collect::<Vec<_>>()
        );
        // A new state (one container exited): a new answer, with the change.
        let id = state.containers.keys().next().unwrap().clone();
        state.apply(
            1000,
            &Event::ContainerExited {
                id: id.clone(),
                exit_code: 1,
                finished_at: 5,
                reason: "Error".into(),
                message: String::new(),
            },
        );
        let changed = cache.answer(&Arc::new(state.clone()), &none);
        assert_ne!(changed.framed, first.framed);
        let got = changed.into_containers();
        assert_eq!(got.len(), 6);
        assert_eq!(got[0].state, cri::ContainerState::ContainerExited as i32);
        // A filtered answer is built from the entries, not the unfiltered cache.
        let by_id = cri::ContainerFilter {
            id: id.clone(),
            ..Default::default()
        };
        let one = cache.answer(&shared, &by_id);
        assert!(one.framed.is_empty());
        assert_eq!(one.into_containers().len(), 1);
    }

    /// ListContainers at 1,000 containers: the answer as it was (every entry built, then
    /// encoded), and from the cache (after a commit that changed one container).
    /// `cargo test --lib list_containers_at_1000 -- --ignored --nocapture`
    #[test]
    #[ignore = "a benchmark"]
    fn list_containers_at_1000_containers_is_fast() {
        let mut state = state_of_containers(250, 4);
        let f = cri::ContainerFilter::default();
        let (mut built, mut cached) = (vec![], vec![]);
        let cache = ListCache::default();
        let ids: Vec<String> = state.containers.keys().cloned().collect();
        for (i, id) in ids.iter().enumerate().take(500) {
            let t = Instant::now();
            let containers = state.containers.values().map(|c| entry_of(c)).collect();
            let bytes = ListContainersResponse {
                containers,
                ..Default::default()
            }
            .encode_to_vec();
            built.push(t.elapsed());
            state.apply(
                10_000 + i as u64,
                &Event::ContainerStopRequested {
                    id: id.clone(),
                    timeout_seconds: 30,
                    requested_at: 0,
                },
            );
            let t = Instant::now();
            let answer = cache.answer(&Arc::new(state.clone()), &f).encode_to_vec();
            cached.push(t.elapsed());
            assert_eq!(answer.len(), bytes.len());
        }
        eprintln!(
            "1,000 containers: built and encoded p50 {:?} p99 {:?}; cached p50 {:?} p99 {:?}",
            percentile(&mut built, 50),
            percentile(&mut built, 99),
            percentile(&mut cached, 50),
            percentile(&mut cached, 99),
        );
    }
}
