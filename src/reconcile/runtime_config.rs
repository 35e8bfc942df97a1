//! Reconciles the node-wide runtime configuration: the pod CIDR UpdateRuntimeConfig recorded is
//! the one later CNI calls are given.

use std::sync::Arc;

use super::{ReconcileError, Reconciled};
use crate::journal::State;
use crate::network::Network;

/// The runtime-config reconciler.
pub struct RuntimeConfigReconciler {
    network: Arc<Network>,
}

impl RuntimeConfigReconciler {
    pub fn new(network: Arc<Network>) -> RuntimeConfigReconciler {
        RuntimeConfigReconciler { network }
    }

    /// Applies the desired pod CIDR to the network module when it differs.
    pub async fn reconcile(&self, desired: &State) -> Result<Reconciled, ReconcileError> {
        let want = &desired.runtime_config.pod_cidr;
        let drift = self.network.pod_cidr() != *want;
        if drift {
            self.network.set_pod_cidr(want);
            tracing::info!(pod_cidr = %want, "pod CIDR applied to CNI calls");
        }
        Ok(Reconciled {
            observed: serde_json::json!({ "pod_cidr": self.network.pod_cidr() }).to_string(),
            drift_corrected: drift,
        })
    }
}
