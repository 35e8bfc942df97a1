//! concord.v1.Introspection: per object desired state, observed state, pending reconcile, last
//! error, its pod's names, its steps and history; and the journal's counters. Answered from
//! memory.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{ApiError, Server};
use crate::journal::history::{Ended, Entry, Names, Source};
use crate::journal::{ObjectKey, State, SCHEMA_VERSION};
use crate::proto;
use crate::reconcile::ObjectView;

/// What the value of an env var reads as unless the request shows the config.
pub const REDACTED: &str = "<redacted>";

/// The CRI config an object was created with, as JSON; env values redacted unless `show`.
fn config_json(state: &State, key: &ObjectKey, show: bool) -> String {
    let value = match key {
        ObjectKey::RuntimeConfig => return String::new(),
        ObjectKey::Sandbox(id) => state
            .sandboxes
            .get(id)
            .and_then(|s| serde_json::to_value(&*s.config).ok()),
        ObjectKey::Container(id) => state.containers.get(id).and_then(|c| {
            let mut v = serde_json::to_value(&*c.config).ok()?;
            envs_as_text(&mut v, &c.config.envs, show);
            Some(v)
        }),
    };
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// Writes each `envs[].value` of a container config's JSON as text (the CRI carries the
/// values as bytes), or as [`REDACTED`] unless `show` (values may come from Secrets).
fn envs_as_text(config: &mut serde_json::Value, envs: &[crate::cri::KeyValue], show: bool) {
    let Some(out) = config.get_mut("envs").and_then(|e| e.as_array_mut()) else {
        return;
    };
    for (json, env) in out.iter_mut().zip(envs) {
        json["value"] = serde_json::Value::String(match show {
            true => String::from_utf8_lossy(&env.value).into_owned(),
            false => REDACTED.into(),
        });
    }
}

fn unix_nanos(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn history_entry(e: Entry) -> proto::HistoryEntry {
    let (source, seq, duration) = match e.source {
        Source::Journal { seq } => ("journal", seq, 0),
        Source::Reconcile { duration, .. } => ("reconcile", 0, duration.as_nanos() as u64),
    };
    proto::HistoryEntry {
        unix_nanos: e.at,
        source: source.into(),
        seq,
        generation: e.generation,
        what: e.what,
        detail: e.detail,
        duration_nanos: duration,
    }
}

/// An object that ended, as the listing shows it: its names, its last failure, its history.
fn ended_status(e: Ended) -> proto::ObjectStatus {
    let last_failure = e
        .entries
        .iter()
        .rev()
        .find(|h| h.what == "failed")
        .map(|h| (h.detail.clone(), h.at));
    let (last_error, last_error_unix_nanos) = last_failure.unwrap_or_default();
    proto::ObjectStatus {
        kind: e.key.kind().into(),
        id: e.key.id().into(),
        generation: e.entries.iter().map(|h| h.generation).max().unwrap_or(0),
        pod: e.names.pod,
        pod_uid: e.names.pod_uid,
        pod_id: e.names.pod_id,
        container: e.names.container,
        state: e.names.state,
        last_error,
        last_error_unix_nanos,
        removed_unix_nanos: e.at,
        history: e.entries.into_iter().map(history_entry).collect(),
        ..Default::default()
    }
}

impl Server {
    pub async fn list_objects(
        &self,
        req: proto::ListObjectsRequest,
    ) -> Result<proto::ListObjectsResponse, ApiError> {
        let state = self.journal.state();
        let objects = self
            .controller
            .objects()
            .into_iter()
            .filter(|o| req.kind.is_empty() || o.key.kind() == req.kind)
            .filter(|o| o.key.id().starts_with(&req.id_prefix))
            .filter(|o| !req.failing || o.status.retries > 0)
            .filter_map(|o| {
                let names = Names::of(&state, &o.key);
                names
                    .matches(o.key.id(), &req.query)
                    .then(|| self.object_status(&state, o, names, &req))
            })
            .collect::<Vec<_>>();
        let mut objects = objects;
        if !req.query.is_empty() && !req.failing {
            objects.extend(
                self.journal
                    .history()
                    .ended()
                    .into_iter()
                    .rev()
                    .filter(|e| req.kind.is_empty() || e.key.kind() == req.kind)
                    .filter(|e| e.names.matches(e.key.id(), &req.query))
                    .map(ended_status),
            );
        }
        Ok(proto::ListObjectsResponse { objects })
    }

    fn object_status(
        &self,
        state: &State,
        o: ObjectView,
        names: Names,
        req: &proto::ListObjectsRequest,
    ) -> proto::ObjectStatus {
        let history = match req.history {
            true => self.journal.history().of(&o.key),
            false => Vec::new(),
        };
        proto::ObjectStatus {
            kind: o.key.kind().into(),
            id: o.key.id().into(),
            // Only for a query (a listing of every object would carry every config).
            config: match req.query.is_empty() {
                true => String::new(),
                false => config_json(state, &o.key, req.show_config),
            },
            desired: o.desired,
            observed: o.status.observed,
            generation: o.generation,
            observed_generation: o.status.observed_generation,
            pending: o.pending,
            retries: o.status.retries,
            last_error: o.status.last_error.map(|(_, e)| e).unwrap_or_default(),
            last_reconciled_unix_nanos: unix_nanos(o.status.last_reconciled),
            pod: names.pod,
            pod_uid: names.pod_uid,
            pod_id: names.pod_id,
            container: names.container,
            state: names.state,
            last_error_unix_nanos: unix_nanos(o.status.last_error_at),
            next_retry_unix_nanos: match o.status.retry_scheduled {
                true => unix_nanos(o.status.next_retry),
                false => 0,
            },
            last_duration_nanos: o.status.last_duration.as_nanos() as u64,
            steps: o
                .status
                .last_steps
                .into_iter()
                .map(|s| proto::ReconcileStep {
                    name: s.name.into(),
                    duration_nanos: s.duration.as_nanos() as u64,
                    ok: s.ok,
                })
                .collect(),
            history: history.into_iter().map(history_entry).collect(),
            removed_unix_nanos: 0,
        }
    }

    pub async fn journal_info(&self) -> Result<proto::JournalInfoResponse, ApiError> {
        let s = self.journal.stats();
        Ok(proto::JournalInfoResponse {
            path: s.path.display().to_string(),
            schema_version: SCHEMA_VERSION as u32,
            last_seq: s.last_seq,
            events_since_snapshot: s.events_since_snapshot,
            snapshot_seq: s.snapshot_seq,
            replayed_at_start: s.replayed_at_start,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_redacted_and_names_kept() {
        let config = crate::cri::ContainerConfig {
            envs: vec![crate::cri::KeyValue {
                key: "PASSWORD".into(),
                value: "hunter2".into(),
            }],
            ..Default::default()
        };
        let mut v = serde_json::to_value(&config).unwrap();
        envs_as_text(&mut v, &config.envs, false);
        let text = v.to_string();
        assert!(
            text.contains("PASSWORD") && text.contains(REDACTED),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        envs_as_text(&mut v, &config.envs, true);
        assert_eq!(v["envs"][0]["value"], "hunter2");
    }
}
