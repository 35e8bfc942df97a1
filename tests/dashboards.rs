//! The Grafana dashboards and the Prometheus rules only use metrics concord exports; the rules
//! pass `promtool check rules` and their unit tests (`promtool test rules`). Every dashboard
//! panel has a description, one unit and the `$datasource` variable; every query filters on the
//! `$job` and `$instance` variables. (hack/prom-proof.sh runs every query against a Prometheus
//! scraping a live concord; hack/dashboard-schema.sh type-checks the JSON against
//! @grafana/schema.)

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

/// The panels of a dashboard, those nested in collapsed rows included.
fn panels(dash: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// The filter every query's selectors start with.
const FILTER: &str = r#"{job=~"$job", instance=~"$instance""#;

/// The selectors of `expr` that lack [`FILTER`] (metric names: `concord_*`, `process_*`, `up`).
fn unfiltered(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let word_len = rest[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len() - start);
        let word = &rest[start..start + word_len];
        let after = &rest[start + word_len..];
        let metric = word.starts_with("concord_") || word.starts_with("process_") || word == "up";
        // A metric, not a label inside a selector or a `by (...)` clause.
        if metric && !after.starts_with(FILTER) && !after.trim_start().starts_with(['=', '!']) {
            out.push(word.to_string());
        }
        rest = after;
    }
    out
}

#[test]
fn unfiltered_finds_selectors_without_job_and_instance() {
    assert!(unfiltered(
        r#"sum by (kind) (rate(concord_x{job=~"$job", instance=~"$instance"}[5m]))"#
    )
    .is_empty());
    assert_eq!(
        unfiltered("up + concord_y{instance=~\"$instance\"}"),
        ["up", "concord_y"]
    );
}

#[test]
fn every_panel_has_a_description_one_unit_the_datasource_variable_and_filtered_queries() {
    let ds = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    for path in files("json") {
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let vars = dash["templating"]["list"].as_array().unwrap();
        let var = |name: &str| {
            vars.iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("no ${name} variable"))
        };
        assert_eq!(var("datasource")["type"], "datasource");
        assert_eq!(var("datasource")["query"], "prometheus");
        assert_eq!(
            var("job")["query"]["query"],
            "label_values(concord_build_info, job)"
        );
        assert_eq!(
            var("instance")["query"]["query"],
            r#"label_values(concord_build_info{job=~"$job"}, instance)"#
        );
        assert_eq!(var("instance")["multi"], true);
        assert_eq!(var("instance")["includeAll"], true);
        let mut queries = 0;
        for p in panels(&dash).into_iter().filter(|p| p["type"] != "row") {
            let title = p["title"].as_str().unwrap();
            assert!(
                p["description"].as_str().is_some_and(|d| d.len() > 20),
                "{title}: no description"
            );
            assert_eq!(
                p["datasource"], ds,
                "{title}: datasource is not $datasource"
            );
            let unit = p["fieldConfig"]["defaults"]["unit"].as_str();
            assert!(unit.is_some_and(|u| !u.is_empty()), "{title}: no unit");
            for o in p["fieldConfig"]["overrides"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for prop in o["properties"].as_array().into_iter().flatten() {
                    assert_ne!(prop["id"], "unit", "{title}: a second unit in an override");
                }
            }
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{title}: no query");
            for t in targets {
                assert_eq!(
                    t["datasource"], ds,
                    "{title}: a query's datasource is not $datasource"
                );
                let expr = t["expr"].as_str().unwrap();
                let bad = unfiltered(expr);
                assert!(bad.is_empty(), "{title}: {bad:?} lack {FILTER}}}: {expr}");
                queries += 1;
            }
        }
        assert!(queries > 40, "{}: {queries} queries", path.display());
    }
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
        let (ok, text) = run(std::process::Command::new(&promtool)
            .args(&args)
            .current_dir(DIR));
        eprintln!("promtool {}:\n{text}", args.join(" "));
        assert!(ok, "promtool {} failed:\n{text}", args.join(" "));
    }
}

/// hack/prom-proof.sh: a Prometheus scraping a live concord (this build) and containerd under a
/// crictl workload has data for every panel query. Opt-in (root, the dev rig, about 40 s):
/// `cargo test --test dashboards -- --ignored`.
#[test]
#[ignore]
fn every_panel_query_has_data_from_a_live_concord() {
    let (ok, text) = run(std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/prom-proof.sh"))
        .env("CONCORD", env!("CARGO_BIN_EXE_concord")));
    eprintln!("{text}");
    assert!(ok, "hack/prom-proof.sh failed:\n{text}");
}

/// Runs `cmd`: whether it succeeded, and its stdout then stderr.
fn run(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
