//! The CNI capabilities (runtime config) of a pod, in one place: what RunPodSandbox accepts
//! ([`validate`], called by the API before the intent is recorded) and what each CNI call is
//! given ([`for_pod`], called by the reconciler): `portMappings` from the port mappings,
//! `bandwidth` from kubelet's bandwidth annotations, `dns` from the DNS config and `ipRanges`
//! from the node's pod CIDR. A plugin gets only the capabilities its config declares
//! (`network::cni`).

use crate::cri;
use serde_json::{json, Map, Value};

use crate::network::bandwidth;

/// A pod config field that cannot become a capability.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct CapabilityError {
    /// The PodSandboxConfig field, as the API names it.
    pub field: &'static str,
    pub reason: String,
}

fn refuse(field: &'static str, reason: impl Into<String>) -> CapabilityError {
    CapabilityError {
        field,
        reason: reason.into(),
    }
}

/// Checks everything [`for_pod`] turns into capabilities.
pub fn validate(c: &cri::PodSandboxConfig) -> Result<(), CapabilityError> {
    for p in &c.port_mappings {
        if cri::Protocol::try_from(p.protocol).is_err() {
            let why = format!("unknown protocol {}", p.protocol);
            return Err(refuse("config.port_mappings.protocol", why));
        }
        if !(1..=65535).contains(&p.container_port) {
            let why = format!("{} is not a port (1 to 65535)", p.container_port);
            return Err(refuse("config.port_mappings.container_port", why));
        }
        if !(0..=65535).contains(&p.host_port) {
            let why = format!("{} is not a port (0 to 65535)", p.host_port);
            return Err(refuse("config.port_mappings.host_port", why));
        }
    }
    if let Some(d) = &c.dns_config {
        validate_dns(d)?;
    }
    bandwidth::capability(&c.annotations).map_err(|e| refuse("config.annotations", e))?;
    Ok(())
}

fn validate_dns(d: &cri::DnsConfig) -> Result<(), CapabilityError> {
    const SERVERS: &str = "config.dns_config.servers";
    if d.servers.len() > 3 {
        return Err(refuse(
            SERVERS,
            format!("{} servers; at most 3", d.servers.len()),
        ));
    }
    if let Some(bad) = d
        .servers
        .iter()
        .find(|s| s.parse::<std::net::IpAddr>().is_err())
    {
        return Err(refuse(SERVERS, format!("{bad:?} is not an IP address")));
    }
    if d.searches.len() > 32 {
        let why = format!("{} search domains; at most 32", d.searches.len());
        return Err(refuse("config.dns_config.searches", why));
    }
    if let Some(bad) = d
        .searches
        .iter()
        .chain(&d.options)
        .find(|s| s.is_empty() || s.contains(char::is_whitespace))
    {
        let why = format!("{bad:?}: search domains and options are single words");
        return Err(refuse("config.dns_config", why));
    }
    Ok(())
}

/// The capabilities every CNI call for this pod carries (`pod_cidr`: the node's, comma-separated,
/// empty when the node has none). A config [`validate`] refused yields what it can.
pub fn for_pod(c: &cri::PodSandboxConfig, pod_cidr: &str) -> Map<String, Value> {
    let mut caps = Map::new();
    let ports: Vec<Value> = c
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let proto = match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": proto, "hostIP": p.host_ip})
        })
        .collect();
    if !ports.is_empty() {
        caps.insert("portMappings".into(), Value::Array(ports));
    }
    if let Ok(Some(bw)) = bandwidth::capability(&c.annotations) {
        caps.insert("bandwidth".into(), bw);
    }
    if let Some(dns) = &c.dns_config {
        caps.insert(
            "dns".into(),
            json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
        );
    }
    if !pod_cidr.is_empty() {
        let ranges: Vec<Value> = pod_cidr
            .split(',')
            .map(|c| json!([{"subnet": c.trim()}]))
            .collect();
        caps.insert("ipRanges".into(), Value::Array(ranges));
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            port_mappings: vec![
                cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: "127.0.0.1".into(),
                },
                cri::PortMapping {
                    container_port: 80,
                    ..Default::default()
                },
            ],
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            annotations: [(bandwidth::INGRESS.to_string(), "10M".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_becomes_its_capabilities() {
        let c = pod();
        assert_eq!(validate(&c), Ok(()));
        let caps = for_pod(&c, "10.88.0.0/16, fd00::/64");
        assert_eq!(
            caps["portMappings"],
            json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}])
        );
        assert_eq!(caps["bandwidth"]["ingressRate"], json!(10_000_000));
        assert_eq!(caps["dns"]["servers"], json!(["10.96.0.10"]));
        assert_eq!(
            caps["ipRanges"],
            json!([[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd00::/64"}]])
        );
        assert!(!for_pod(&cri::PodSandboxConfig::default(), "").contains_key("ipRanges"));
    }

    #[test]
    fn each_refusal_names_its_field() {
        let mut c = pod();
        c.port_mappings[0].protocol = 9;
        assert_eq!(
            validate(&c).unwrap_err().field,
            "config.port_mappings.protocol"
        );
        let mut c = pod();
        c.port_mappings[1].container_port = 0;
        assert_eq!(
            validate(&c).unwrap_err().field,
            "config.port_mappings.container_port"
        );
        let mut c = pod();
        c.port_mappings[0].host_port = 70000;
        assert_eq!(
            validate(&c).unwrap_err().field,
            "config.port_mappings.host_port"
        );
        let mut c = pod();
        c.dns_config.as_mut().unwrap().servers = vec!["dns.example".into()];
        assert_eq!(validate(&c).unwrap_err().field, "config.dns_config.servers");
        let mut c = pod();
        c.dns_config.as_mut().unwrap().searches = vec!["a b".into()];
        assert_eq!(validate(&c).unwrap_err().field, "config.dns_config");
        let mut c = pod();
        c.annotations.insert(bandwidth::EGRESS.into(), "0".into());
        assert_eq!(validate(&c).unwrap_err().field, "config.annotations");
    }
}
