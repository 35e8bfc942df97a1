//! The Grafana dashboards and the Prometheus rules only use metrics concord exports; the rules
//! pass `promtool check rules` and their unit tests (`promtool test rules`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards");

fn metrics_source() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics/mod.rs")).unwrap()
}

/// The concord metric names `text` mentions (histogram series folded into their metric;
/// recording rules' `instance:concord_...` names are not metrics).
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("concord_"))
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .fold(w.to_string(), |n, s| {
                    n.strip_suffix(s).map(str::to_string).unwrap_or(n)
                })
        })
        .collect()
}

fn files(ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

fn assert_exported(path: &Path, text: &str) -> usize {
    let source = metrics_source();
    let names = metric_names(text);
    for name in &names {
        assert!(
            source.contains(&format!("\"{name}\"")),
            "{} uses unknown metric {name}",
            path.display()
        );
    }
    names.len()
}

#[test]
fn dashboards_reference_only_exported_metrics() {
    let mut checked = 0;
    for path in files("json") {
        let text = std::fs::read_to_string(&path).unwrap();
        let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
        assert!(dash["panels"].as_array().is_some_and(|p| !p.is_empty()));
        checked += assert_exported(&path, &text);
    }
    assert!(checked > 10);
}

#[test]
fn rules_reference_only_exported_metrics_and_pass_promtool() {
    let rules = Path::new(DIR).join("concord-rules.yaml");
    let text = std::fs::read_to_string(&rules).unwrap();
    assert!(assert_exported(&rules, &text) >= 10);
    // Every alert has a runbook section (its name, lowercased, is the anchor).
    let runbook =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/runbook.md")).unwrap();
    let alerts: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for alert in alerts {
        assert!(
            runbook.contains(&format!("\n## {alert}\n")),
            "no runbook section for {alert}"
        );
        assert!(
            text.contains(&format!("docs/runbook.md#{}", alert.to_lowercase())),
            "{alert} does not link its runbook section"
        );
    }
    let Ok(promtool) = which("promtool") else {
        eprintln!(
            "SKIPPED: promtool is not installed (Debian package prometheus): rules not checked"
        );
        return;
    };
    for args in [
        vec!["check", "rules", "concord-rules.yaml"],
        vec!["test", "rules", "concord-rules.test.yaml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(&args)
            .current_dir(DIR)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("promtool {}:\n{text}", args.join(" "));
        assert!(
            out.status.success(),
            "promtool {} failed:\n{text}",
            args.join(" ")
        );
    }
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
