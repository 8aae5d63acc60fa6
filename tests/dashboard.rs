//! The Grafana dashboard shipped with the chart queries only metrics, and
//! labels, that the operator really exports.

#[path = "support/dashboard.rs"]
mod dashboard;

use claude_operator::telemetry::{CostLabels, GatewayRequestLabels, Metrics, PhaseLabels, PolicyLabels, ReasonLabels};

/// A registry with one sample in every family, so each series and its label
/// names appear in the exposition.
fn populated() -> String {
    let m = Metrics::default();
    m.delivery("issue_comment", "created");
    m.signature_failures.inc();
    m.webhook_latency.observe(0.01);
    m.runs_admitted.inc();
    m.token_mint_retries.inc();
    let reason = ReasonLabels {
        reason: "NotAuthorized".into(),
    };
    m.runs_denied.get_or_create(&reason).inc();
    m.run_transitions
        .get_or_create(&PhaseLabels {
            phase: "Succeeded".into(),
        })
        .inc();
    m.active_runs.set(1);
    m.reconcile_errors
        .get_or_create(&claude_operator::telemetry::KindLabels { kind: "Kube".into() })
        .inc();
    let policy = PolicyLabels {
        namespace: "team".into(),
        policy: "default".into(),
    };
    m.cost_usd
        .get_or_create(&CostLabels {
            namespace: "team".into(),
            policy: "default".into(),
            repository: "o/r".into(),
        })
        .inc_by(0.5);
    m.budget_remaining_usd.get_or_create(&policy).set(1.0);
    m.budget_spent_usd.get_or_create(&policy).set(1.0);
    m.budget_limit_usd.get_or_create(&policy).set(2.0);
    m.github_rate_limit_waits.inc();
    m.gateway_requests
        .get_or_create(&GatewayRequestLabels {
            kind: "model".into(),
            decision: "allow".into(),
        })
        .inc();
    m.gateway_refusal("BudgetExhausted");
    m.gateway_open_streams.set(0);
    m.gateway_spend_usd.get_or_create(&policy).inc_by(0.1);
    m.gateway_upstream_first_byte.observe(0.1);
    m.gateway_first_model_request.observe(3.0);
    m.encode()
}

#[test]
fn every_query_names_an_exported_metric_and_its_labels() {
    let queries = dashboard::queries();
    assert!(queries.len() >= 8, "the dashboard lost panels: {queries:?}");
    let missing = dashboard::missing(&populated());
    assert!(
        missing.is_empty(),
        "the dashboard queries what the operator does not export: {missing:?}"
    );
}

#[test]
fn the_check_catches_a_misspelt_metric_or_label() {
    // The checker itself must be able to fail.
    let text = populated();
    let exposed = dashboard::exposed(&text);
    let bad = dashboard::metrics_of(r#"sum by (reason) (rate(claude_operator_runs_denyed_total[5m]))"#);
    assert!(bad.keys().all(|k| !exposed.contains_key(k)));
    let bad_label = dashboard::metrics_of(r#"sum by (policy) (rate(claude_operator_runs_denied_total[5m]))"#);
    let have = &exposed["claude_operator_runs_denied_total"];
    assert!(!bad_label["claude_operator_runs_denied_total"].is_subset(have));
}

#[test]
fn it_covers_what_the_platform_team_asked_for() {
    let all: String = dashboard::queries().into_iter().map(|(_, q)| q + "\n").collect();
    for series in [
        "claude_operator_budget_spent_usd",
        "claude_operator_budget_limit_usd",
        "claude_operator_run_phase_transitions_total",
        "claude_operator_runs_denied_total",
        "claude_operator_gateway_refusals_total",
        "claude_operator_gateway_first_model_request_seconds_bucket",
    ] {
        assert!(all.contains(series), "no panel queries {series}");
    }
}
