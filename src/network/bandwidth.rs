//! Pod bandwidth limits: kubelet passes them as the pod annotations
//! `kubernetes.io/ingress-bandwidth` and `kubernetes.io/egress-bandwidth` (resource quantities in
//! bits per second, such as `10M`); CNI's bandwidth plugin takes them as the `bandwidth`
//! capability. As containerd does, the burst is the largest 32-bit value.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

pub const INGRESS: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS: &str = "kubernetes.io/egress-bandwidth";

/// A Kubernetes resource quantity as a whole number (`10M`, `1Gi`, `500k`, `1e6`, `100`).
pub fn quantity(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    let (number, factor) = suffixes
        .iter()
        .find_map(|(suf, f)| s.strip_suffix(suf).map(|n| (n, *f)))
        .unwrap_or((s, 1.0));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a quantity (such as 10M or 1Gi)"))?;
    let v = value * factor;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} is not a non-negative quantity"));
    }
    Ok(v.ceil() as u64)
}

/// The `bandwidth` capability for a pod's annotations; None without the annotations.
pub fn capability(annotations: &HashMap<String, String>) -> Result<Option<Value>, String> {
    let mut cap = Map::new();
    for (key, rate, burst) in [
        (INGRESS, "ingressRate", "ingressBurst"),
        (EGRESS, "egressRate", "egressBurst"),
    ] {
        if let Some(v) = annotations.get(key) {
            let bits = quantity(v).map_err(|e| format!("annotation {key}: {e}"))?;
            if bits == 0 {
                return Err(format!("annotation {key}: must be above zero"));
            }
            cap.insert(rate.into(), json!(bits));
            cap.insert(burst.into(), json!(u32::MAX));
        }
    }
    Ok((!cap.is_empty()).then_some(Value::Object(cap)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_decimal_and_binary_units() {
        assert_eq!(quantity("10M"), Ok(10_000_000));
        assert_eq!(quantity("1Gi"), Ok(1 << 30));
        assert_eq!(quantity("500k"), Ok(500_000));
        assert_eq!(quantity("1.5M"), Ok(1_500_000));
        assert_eq!(quantity("100"), Ok(100));
        assert!(quantity("ten").is_err());
        assert!(quantity("-1M").is_err());
    }

    #[test]
    fn the_annotations_become_the_bandwidth_capability() {
        let a: HashMap<String, String> = [(INGRESS.to_string(), "10M".to_string())].into();
        assert_eq!(
            capability(&a).unwrap().unwrap(),
            json!({"ingressRate": 10_000_000u64, "ingressBurst": u32::MAX})
        );
        assert_eq!(capability(&HashMap::new()).unwrap(), None);
        let bad: HashMap<String, String> = [(EGRESS.to_string(), "fast".to_string())].into();
        assert!(capability(&bad).unwrap_err().contains(EGRESS));
    }
}
