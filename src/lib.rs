//! concord: a Kubernetes CRI runtime on containerd, built as an event-sourced reconciliation
//! controller. CRI requests record intents in a durable journal; a reconcile loop driven by
//! containerd's events, a periodic resync and the API converges containerd, network namespaces
//! and CNI to them.

pub mod api;
pub mod attach;
pub mod cgroup;
pub mod clock;
pub mod config;
pub mod containerd;
pub mod crash;
pub mod daemon;
pub mod events;
pub mod exec;
pub mod fsutil;
pub mod image;
pub mod journal;
pub mod logwriter;
pub mod metrics;
pub mod network;
pub mod oci;
pub mod reconcile;
pub mod state_layout;
pub mod stats;
pub mod stream;
pub mod uds;

/// concord's own gRPC API (proto/concord/v1).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("concord.v1");
}
