//! The chart's Grafana dashboard as data: every PromQL query it runs and the
//! metrics and labels those queries name. Shared by the unit check against
//! the registry and the end-to-end check against live `/metrics`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

/// Path of the dashboard in the chart.
pub const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/claude-operator/dashboards/claude-operator.json"
);

/// Every `expr` of every panel, by panel title.
pub fn queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(DASHBOARD).expect("read the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a panel title").to_owned();
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} queries nothing");
        for t in targets {
            out.push((title.clone(), t["expr"].as_str().expect("expr").to_owned()));
        }
    }
    out
}

/// The series names a query selects (`claude_operator_...`), with the label
/// names it groups by or matches on.
pub fn metrics_of(expr: &str) -> BTreeMap<String, BTreeSet<String>> {
    let name = regex::Regex::new(r"\bclaude_operator_[a-z0-9_]+").unwrap();
    let by = regex::Regex::new(r"\bby \(([^)]*)\)").unwrap();
    let matcher = regex::Regex::new(r"([a-z_]+)\s*(=~|!~|!=|=)").unwrap();
    let mut labels: BTreeSet<String> = BTreeSet::new();
    for c in by.captures_iter(expr) {
        labels.extend(
            c[1].split(',')
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty() && l != "le"),
        );
    }
    for selector in regex::Regex::new(r"\{([^}]*)\}").unwrap().captures_iter(expr) {
        labels.extend(matcher.captures_iter(&selector[1]).map(|c| c[1].to_owned()));
    }
    name.find_iter(expr)
        .map(|m| (m.as_str().to_owned(), labels.clone()))
        .collect()
}

/// Series names and their label names in a Prometheus text exposition.
pub fn exposed(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_owned()).or_default();
        if let (Some(open), Some(close)) = (line.find('{'), line.find('}')) {
            for pair in line[open + 1..close].split(',').filter(|p| !p.is_empty()) {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.to_owned());
                }
            }
        }
    }
    out
}

/// What the dashboard queries and `text` does not expose: (panel, series,
/// missing label or empty for a missing series).
pub fn missing(text: &str) -> Vec<(String, String, String)> {
    let exposed = exposed(text);
    let mut out = Vec::new();
    for (panel, expr) in queries() {
        for (series, labels) in metrics_of(&expr) {
            match exposed.get(&series) {
                None => out.push((panel.clone(), series, String::new())),
                Some(have) => {
                    for l in labels.difference(have) {
                        out.push((panel.clone(), series.clone(), l.clone()));
                    }
                }
            }
        }
    }
    out
}
