//! RPCs whose capability concord does not have yet: they answer Unimplemented naming it.

use tonic::{Response, Status};

use super::{ApiError, Gate, Server};

/// The capabilities still to come, each a whole issue.
#[derive(Debug, Clone, Copy)]
pub enum Capability {
    Checkpoint,
}

impl Capability {
    fn describe(self) -> &'static str {
        match self {
            Capability::Checkpoint => "container checkpoint/restore is not supported by concord",
        }
    }
}

impl Server {
    /// Answers Unimplemented for `rpc`, through the same instrumentation as every RPC.
    pub async fn not_yet<T>(
        &self,
        rpc: &'static str,
        capability: Capability,
    ) -> Result<Response<T>, Status> {
        self.instrument(rpc, Gate::None, async move {
            Err(ApiError::Unimplemented {
                rpc,
                capability: capability.describe(),
            })
        })
        .await
    }
}
