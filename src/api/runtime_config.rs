//! RuntimeConfig (the cgroup driver kubelet must use) and UpdateRuntimeConfig (the pod CIDR,
//! recorded in the journal and applied to later CNI calls by the loop).

use std::net::IpAddr;
use std::time::Duration;

use crate::cri;

use super::{ApiError, Server};
use crate::config::CgroupDriver;
use crate::journal::{Event, ObjectKey};

impl Server {
    pub async fn runtime_config(
        &self,
        _req: cri::RuntimeConfigRequest,
    ) -> Result<cri::RuntimeConfigResponse, ApiError> {
        let driver = match self.config.runtime.cgroup_driver {
            CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
            CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
        };
        Ok(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        })
    }

    pub async fn update_runtime_config(
        &self,
        req: cri::UpdateRuntimeConfigRequest,
        deadline: Duration,
    ) -> Result<cri::UpdateRuntimeConfigResponse, ApiError> {
        let cidr = req
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        // An empty pod CIDR changes nothing (as containerd's CRI).
        if cidr.is_empty() {
            return Ok(cri::UpdateRuntimeConfigResponse {});
        }
        validate_pod_cidr(&cidr)?;
        let key = ObjectKey::RuntimeConfig;
        let current = self.journal.state();
        let generation = if current.runtime_config.pod_cidr == cidr {
            current.generation(&key)
        } else {
            let state = self
                .journal
                .append(vec![Event::PodCidrRequested { cidr: cidr.clone() }])
                .await?;
            state.generation(&key)
        };
        self.controller.wake(key.clone());
        self.controller
            .wait(&key, generation, deadline)
            .await
            .map_err(|source| ApiError::Converge {
                what: format!("applying pod CIDR {cidr}"),
                source,
            })?;
        Ok(cri::UpdateRuntimeConfigResponse {})
    }
}

/// Checks a pod CIDR: one CIDR, or a comma-separated IPv4/IPv6 pair for dual-stack.
fn validate_pod_cidr(cidr: &str) -> Result<(), ApiError> {
    let field = "runtime_config.network_config.pod_cidr";
    let parts: Vec<&str> = cidr.split(',').map(str::trim).collect();
    if parts.len() > 2 {
        return Err(ApiError::invalid(
            field,
            format!("{cidr:?}: at most two CIDRs (dual-stack)"),
        ));
    }
    for part in parts {
        let (addr, len) = part.split_once('/').ok_or_else(|| {
            ApiError::invalid(field, format!("{part:?} is not a CIDR (address/prefix)"))
        })?;
        let addr: IpAddr = addr.parse().map_err(|_| {
            ApiError::invalid(field, format!("{part:?}: {addr:?} is not an IP address"))
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(l) if l <= max => {}
            _ => {
                return Err(ApiError::invalid(
                    field,
                    format!("{part:?}: prefix length must be 0 to {max}"),
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_are_checked() {
        assert!(validate_pod_cidr("10.88.0.0/16").is_ok());
        assert!(validate_pod_cidr("10.88.0.0/16,fd00::/64").is_ok());
        for bad in [
            "10.88.0.0",
            "10.88.0.0/33",
            "nonsense/8",
            "fd00::/129",
            "a/1,b/2,c/3",
        ] {
            let err = validate_pod_cidr(bad).unwrap_err();
            assert!(err.to_string().contains("pod_cidr"), "{err}");
        }
    }
}
