//! concord: a Kubernetes CRI runtime on containerd, built as an event-sourced reconciliation
//! controller. CRI requests record intents in a durable journal; a reconcile loop driven by
//! containerd's events, a periodic resync and the API converges containerd, network namespaces
//! and CNI to them.

pub mod adopt;
pub mod api;
pub mod attach;
pub mod cgroup;
pub mod clock;
pub mod config;
pub mod containerd;
pub mod crash;
/// The CRI v1 API of Kubernetes 1.36 (proto/runtime/v1/api.proto, cri-api v0.36.3): messages,
/// the RuntimeService and ImageService servers and clients.
pub mod cri {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("runtime.v1");
    pub use crate::api::ListContainersResponse;

    /// api.proto marks the credentials `debug_redact` (build.rs): shown as set or empty only.
    impl std::fmt::Debug for AuthConfig {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let redact = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
            f.debug_struct("AuthConfig")
                .field("username", &self.username)
                .field("password", &redact(&self.password))
                .field("auth", &redact(&self.auth))
                .field("server_address", &self.server_address)
                .field("identity_token", &redact(&self.identity_token))
                .field("registry_token", &redact(&self.registry_token))
                .finish()
        }
    }
}
pub mod daemon;
pub mod events;
pub mod exec;
pub mod fsutil;
pub mod image;
pub mod journal;
pub mod logwriter;
pub mod metrics;
pub mod mountinfo;
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
