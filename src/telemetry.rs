//! Metrics and health: the Prometheus registry of the whole process, and the
//! `/metrics`, `/healthz`, `/readyz` server on `--metrics-listen`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub event: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    pub namespace: String,
    pub policy: String,
    pub repository: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayRequestLabels {
    pub kind: String,
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub namespace: String,
    pub policy: String,
}

/// Every metric of the process. Cheap to clone (all handles are `Arc`s inside).
#[derive(Clone)]
pub struct Metrics {
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub signature_failures: Counter,
    pub webhook_latency: Histogram,
    pub runs_admitted: Counter,
    pub token_mint_retries: Counter,
    pub runs_denied: Family<ReasonLabels, Counter>,
    pub run_transitions: Family<PhaseLabels, Counter>,
    pub active_runs: Gauge,
    pub reconcile_errors: Family<KindLabels, Counter>,
    pub cost_usd: Family<CostLabels, Counter<f64, AtomicU64>>,
    pub budget_remaining_usd: Family<PolicyLabels, Gauge<f64, AtomicU64>>,
    pub budget_spent_usd: Family<PolicyLabels, Gauge<f64, AtomicU64>>,
    pub budget_limit_usd: Family<PolicyLabels, Gauge<f64, AtomicU64>>,
    pub github_rate_limit_waits: Counter,
    pub gateway_requests: Family<GatewayRequestLabels, Counter>,
    pub gateway_refusals: Family<ReasonLabels, Counter>,
    pub gateway_open_streams: Gauge,
    pub gateway_spend_usd: Family<PolicyLabels, Counter<f64, AtomicU64>>,
    pub gateway_upstream_first_byte: Histogram,
    pub gateway_first_model_request: Histogram,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("claude_operator");
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by event and outcome",
            deliveries.clone(),
        );
        let signature_failures = Counter::default();
        registry.register(
            "webhook_signature_failures",
            "Deliveries refused for a missing or wrong signature",
            signature_failures.clone(),
        );
        let webhook_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "webhook_request_duration_seconds",
            "Time to answer a webhook delivery",
            webhook_latency.clone(),
        );
        let runs_admitted = Counter::default();
        registry.register("runs_admitted", "Runs admitted", runs_admitted.clone());
        let token_mint_retries = Counter::default();
        registry.register(
            "token_mint_retries",
            "Token mints for a run after an earlier mint's answer was lost (restart or failed call)",
            token_mint_retries.clone(),
        );
        let runs_denied = Family::<ReasonLabels, Counter>::default();
        registry.register("runs_denied", "Runs denied, by reason", runs_denied.clone());
        let run_transitions = Family::<PhaseLabels, Counter>::default();
        registry.register(
            "run_phase_transitions",
            "Runs entering each phase",
            run_transitions.clone(),
        );
        let active_runs = Gauge::default();
        registry.register("active_runs", "Runs admitted and not finished", active_runs.clone());
        let reconcile_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconcile errors, by kind",
            reconcile_errors.clone(),
        );
        let cost_usd = Family::<CostLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "cost_usd",
            "Recorded cost of finished runs, US dollars",
            cost_usd.clone(),
        );
        let budget_remaining_usd = Family::<PolicyLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "budget_remaining_usd",
            "What is left of a policy's period budget, US dollars (for dashboards; accounting is exact on status)",
            budget_remaining_usd.clone(),
        );
        let budget_spent_usd = Family::<PolicyLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "budget_spent_usd",
            "What a policy's runs spent in the current period, US dollars (for dashboards; exact on status)",
            budget_spent_usd.clone(),
        );
        let budget_limit_usd = Family::<PolicyLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "budget_limit_usd",
            "A policy's limit for the current period, US dollars",
            budget_limit_usd.clone(),
        );
        let github_rate_limit_waits = Counter::default();
        registry.register(
            "github_rate_limit_waits",
            "Times a GitHub API call waited for a rate limit to reset",
            github_rate_limit_waits.clone(),
        );
        let gateway_requests = Family::<GatewayRequestLabels, Counter>::default();
        registry.register(
            "gateway_requests",
            "Gateway requests by kind and decision (allow or refuse)",
            gateway_requests.clone(),
        );
        let gateway_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "gateway_refusals",
            "Gateway refusals by reason",
            gateway_refusals.clone(),
        );
        let gateway_open_streams = Gauge::default();
        registry.register(
            "gateway_open_streams",
            "Model responses the gateway is streaming now",
            gateway_open_streams.clone(),
        );
        let gateway_spend_usd = Family::<PolicyLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "gateway_spend_usd",
            "Model spend metered by the gateway, US dollars (for dashboards; the meter on the grant is exact)",
            gateway_spend_usd.clone(),
        );
        let gateway_upstream_first_byte = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "gateway_upstream_first_byte_seconds",
            "Time from forwarding a model request to the upstream's response headers",
            gateway_upstream_first_byte.clone(),
        );
        let gateway_first_model_request = Histogram::new(exponential_buckets(0.25, 2.0, 12));
        registry.register(
            "gateway_first_model_request_seconds",
            "Time from a run's trigger (its creation) to its first model request at the gateway",
            gateway_first_model_request.clone(),
        );
        Self {
            deliveries,
            signature_failures,
            webhook_latency,
            runs_admitted,
            token_mint_retries,
            runs_denied,
            run_transitions,
            active_runs,
            reconcile_errors,
            cost_usd,
            budget_remaining_usd,
            budget_spent_usd,
            budget_limit_usd,
            github_rate_limit_waits,
            gateway_requests,
            gateway_refusals,
            gateway_open_streams,
            gateway_spend_usd,
            gateway_upstream_first_byte,
            gateway_first_model_request,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    /// The registry in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String never fails");
        out
    }

    /// Counts one webhook delivery.
    pub fn delivery(&self, event: &str, outcome: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                event: event.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts one gateway request by kind and decision.
    pub fn gateway_request(&self, kind: &str, allowed: bool) {
        self.gateway_requests
            .get_or_create(&GatewayRequestLabels {
                kind: kind.to_owned(),
                decision: if allowed { "allow" } else { "refuse" }.to_owned(),
            })
            .inc();
    }

    /// Counts one gateway refusal.
    pub fn gateway_refusal(&self, reason: &str) {
        self.gateway_refusals
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// Readiness of the process: ready once it was set ready and every
/// component that asked to be waited for ([`Readiness::require`]) is.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>, Arc<std::sync::atomic::AtomicUsize>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire) && self.1.load(Ordering::Acquire) == 0
    }
    /// One more component to wait for: the process is not ready until
    /// [`Pending::done`] is called on what this returns.
    pub fn require(&self) -> Pending {
        self.1.fetch_add(1, Ordering::AcqRel);
        Pending(Some(self.1.clone()))
    }
}

/// A component the process's readiness waits for.
pub struct Pending(Option<Arc<std::sync::atomic::AtomicUsize>>);

impl Pending {
    /// The component is ready.
    pub fn done(mut self) {
        if let Some(count) = self.0.take() {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The router of `/metrics`, `/healthz` and `/readyz`.
pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State((_, ready)): State<(Metrics, Readiness)>| async move {
                if ready.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .with_state((metrics, readiness))
}

async fn serve_metrics(State((metrics, _)): State<(Metrics, Readiness)>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

/// Serves [`router`] on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics and health listening");
    axum::serve(listener, router(metrics, readiness))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_named_and_encoded() {
        let m = Metrics::default();
        m.delivery("issue_comment", "created");
        m.signature_failures.inc();
        let text = m.encode();
        assert!(
            text.contains(r#"claude_operator_webhook_deliveries_total{event="issue_comment",outcome="created"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("claude_operator_webhook_signature_failures_total 1"),
            "{text}"
        );
        assert!(
            text.contains("claude_operator_webhook_request_duration_seconds_bucket"),
            "{text}"
        );
        m.gateway_request("model", true);
        m.gateway_refusal("BudgetExhausted");
        let text = m.encode();
        assert!(
            text.contains(r#"claude_operator_gateway_requests_total{kind="model",decision="allow"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"claude_operator_gateway_refusals_total{reason="BudgetExhausted"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn readiness_waits_for_every_required_component() {
        let r = Readiness::default();
        let pending = r.require();
        r.set_ready();
        assert!(!r.is_ready());
        pending.done();
        assert!(r.is_ready());
    }
}
