//! concord.v1.Introspection: per object desired state, observed state, pending reconcile and last
//! error; and the journal's counters. Answered from memory.

use std::time::UNIX_EPOCH;

use super::{ApiError, Server};
use crate::journal::SCHEMA_VERSION;
use crate::proto;

impl Server {
    pub async fn list_objects(
        &self,
        req: proto::ListObjectsRequest,
    ) -> Result<proto::ListObjectsResponse, ApiError> {
        let objects = self
            .controller
            .objects()
            .into_iter()
            .filter(|o| req.kind.is_empty() || o.key.kind() == req.kind)
            .filter(|o| o.key.id().starts_with(&req.id_prefix))
            .map(|o| proto::ObjectStatus {
                kind: o.key.kind().into(),
                id: o.key.id().into(),
                desired: o.desired,
                observed: o.status.observed,
                generation: o.generation,
                observed_generation: o.status.observed_generation,
                pending: o.pending,
                retries: o.status.retries,
                last_error: o.status.last_error.map(|(_, e)| e).unwrap_or_default(),
                last_reconciled_unix_nanos: o
                    .status
                    .last_reconciled
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos() as i64)
                    .unwrap_or(0),
            })
            .collect();
        Ok(proto::ListObjectsResponse { objects })
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
