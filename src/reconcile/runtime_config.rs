//! Reconciles the node-wide runtime configuration: the pod CIDR UpdateRuntimeConfig recorded is
//! the one later CNI calls are given.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::{ReconcileError, Reconciled, Reconciler};
use crate::journal::{ObjectKey, State};
use crate::network::Network;

/// The reconciler for every object kind concord has so far.
pub struct RuntimeConfigReconciler {
    network: Arc<Network>,
}

impl RuntimeConfigReconciler {
    pub fn new(network: Arc<Network>) -> RuntimeConfigReconciler {
        RuntimeConfigReconciler { network }
    }
}

impl Reconciler for RuntimeConfigReconciler {
    fn reconcile<'a>(
        &'a self,
        key: &'a ObjectKey,
        desired: &'a State,
    ) -> BoxFuture<'a, Result<Reconciled, ReconcileError>> {
        async move {
            match key {
                ObjectKey::RuntimeConfig => {
                    let want = &desired.runtime_config.pod_cidr;
                    let drift = self.network.pod_cidr() != *want;
                    if drift {
                        self.network.set_pod_cidr(want);
                        tracing::info!(pod_cidr = %want, "pod CIDR applied to CNI calls");
                    }
                    Ok(Reconciled {
                        observed: serde_json::json!({ "pod_cidr": self.network.pod_cidr() })
                            .to_string(),
                        drift_corrected: drift,
                    })
                }
            }
        }
        .boxed()
    }
}
