//! The snapshot syncer's measurement: bytes and inodes the snapshotter's snapshots use, and the
//! filesystem they live on. Committed snapshots never change, so their usage is cached.

use crate::containerd::rpc;
use std::collections::HashMap;
use std::time::SystemTime;

use containerd_client::services::v1::snapshots::{ListSnapshotsRequest, UsageRequest};
use containerd_client::services::v1::PluginsRequest;

use crate::containerd::{Containerd, ContainerdError};

/// What ImageFsInfo answers.
#[derive(Debug, Clone, PartialEq)]
pub struct FsUsage {
    /// When it was measured (Unix nanoseconds).
    pub timestamp_nanos: i64,
    /// The snapshotter's root directory.
    pub mountpoint: String,
    pub used_bytes: u64,
    pub inodes_used: u64,
    /// Bytes and inodes of each active snapshot by key (a container's writable layer is the
    /// active snapshot keyed by its id).
    pub active: HashMap<String, (u64, u64)>,
}

/// Usage of committed snapshots by name.
#[derive(Default)]
pub struct UsageCache {
    committed: HashMap<String, (u64, u64)>,
    root: Option<String>,
}

/// Measures every snapshot of `snapshotter`.
pub async fn collect(
    ctd: &Containerd,
    snapshotter: &str,
    cache: &mut UsageCache,
) -> Result<FsUsage, ContainerdError> {
    if cache.root.is_none() {
        let req = PluginsRequest {
            filters: vec![format!(
                "type==io.containerd.snapshotter.v1,id=={snapshotter}"
            )],
        };
        let plugins = ctd
            .call(
                rpc::INTROSPECTION_PLUGINS,
                ctd.introspection().plugins(ctd.request(req)),
            )
            .await?;
        cache.root = plugins
            .plugins
            .into_iter()
            .find_map(|p| p.exports.get("root").cloned());
    }
    let req = ListSnapshotsRequest {
        snapshotter: snapshotter.into(),
        ..Default::default()
    };
    let mut client = ctd.snapshots();
    let mut stream = ctd
        .call(rpc::SNAPSHOTS_LIST, client.list(ctd.request(req)))
        .await?;
    let mut infos = Vec::new();
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|status| ContainerdError::Call {
            call: "Snapshots.List",
            status,
        })?
    {
        infos.extend(msg.info);
    }
    let mut used = 0u64;
    let mut inodes = 0u64;
    let mut seen = HashMap::new();
    let mut active = HashMap::new();
    for info in infos {
        // Kind 3 is committed (immutable); active and view snapshots change.
        let committed = info.kind == 3;
        let cached = if committed {
            cache.committed.get(&info.name).copied()
        } else {
            None
        };
        let (b, i) = match cached {
            Some(u) => u,
            None => {
                let req = UsageRequest {
                    snapshotter: snapshotter.into(),
                    key: info.name.clone(),
                };
                match ctd
                    .call(
                        rpc::SNAPSHOTS_USAGE,
                        ctd.snapshots().usage(ctd.request(req)),
                    )
                    .await
                {
                    Ok(u) => (u.size.max(0) as u64, u.inodes.max(0) as u64),
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        if committed {
            seen.insert(info.name.clone(), (b, i));
        } else if info.kind == 2 {
            active.insert(info.name.clone(), (b, i));
        }
        used += b;
        inodes += i;
    }
    cache.committed = seen;
    Ok(FsUsage {
        timestamp_nanos: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
        mountpoint: cache.root.clone().unwrap_or_default(),
        used_bytes: used,
        inodes_used: inodes,
        active,
    })
}
