//! The Grafana dashboards only chart metrics concord exports.

use std::collections::BTreeSet;

#[test]
fn dashboards_reference_only_exported_metrics() {
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics/mod.rs"))
            .unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
        assert!(dash["panels"].as_array().is_some_and(|p| !p.is_empty()));
        let names: BTreeSet<String> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("concord_"))
            .map(|w| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .fold(w.to_string(), |n, s| {
                        n.strip_suffix(s).map(str::to_string).unwrap_or(n)
                    })
            })
            .collect();
        for name in names {
            assert!(
                source.contains(&format!("\"{name}\"")),
                "{} charts unknown metric {name}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 10);
}
