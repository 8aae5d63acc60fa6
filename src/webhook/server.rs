//! The HTTP side of the receiver: `POST /webhook`. In order: bounded body,
//! required headers, signature (before anything of the body is read), parse,
//! policy match, trigger rules and pre-filters, then one `ClaudeRun` named after
//! the delivery id. Every delivery ends in exactly one audit line and one
//! metric increment.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;

use super::intake::{self, Outcome};
use super::secrets::SecretsHandle;
use crate::api::{ClaudeRun, ClaudeRunPolicy};
use crate::github::signature::SignatureError;
use crate::telemetry::Metrics;

/// GitHub caps webhook payloads at 25 MiB.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// What the receiver needs.
#[derive(Clone)]
pub struct Receiver {
    pub client: kube::Client,
    pub secrets: SecretsHandle,
    pub policies: Store<ClaudeRunPolicy>,
    pub metrics: Metrics,
    /// The operator's own bot login (`<slug>[bot]`); its comments never trigger.
    pub bot_login: Option<String>,
    pub limiter: Arc<intake::ActorLimiter>,
}

/// The receiver's router: `POST /webhook`.
pub fn router(receiver: Receiver) -> Router {
    Router::new()
        .route("/webhook", post(handle))
        // The handler enforces the limit itself, to answer and audit it.
        .layer(DefaultBodyLimit::disable())
        .with_state(receiver)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

async fn handle(State(rx): State<Receiver>, request: axum::extract::Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    // A body announced as too large is refused before a byte of it is read;
    // one that grows too large while streaming is cut off at the limit.
    let announced = header(&headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    let body = if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        Err(BodyError::TooLarge)
    } else {
        axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|e| {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                BodyError::TooLarge
            } else {
                BodyError::Unreadable
            }
        })
    };
    let event = header(&headers, "x-github-event").unwrap_or("").to_owned();
    let delivery = header(&headers, "x-github-delivery").unwrap_or("").to_owned();
    let outcome = receive(&rx, &headers, body, &event, &delivery).await;
    rx.metrics.webhook_latency.observe(started.elapsed().as_secs_f64());
    rx.metrics
        .delivery(if event.is_empty() { "unknown" } else { &event }, outcome.label());
    outcome.audit(&delivery, &event);
    outcome.into_response()
}

enum BodyError {
    TooLarge,
    Unreadable,
}

async fn receive(
    rx: &Receiver,
    headers: &HeaderMap,
    body: Result<Bytes, BodyError>,
    event: &str,
    delivery: &str,
) -> Outcome {
    let body = match body {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return Outcome::rejected(StatusCode::PAYLOAD_TOO_LARGE, "payload too large"),
        Err(BodyError::Unreadable) => return Outcome::rejected(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    if event.is_empty() || delivery.is_empty() {
        return Outcome::rejected(StatusCode::BAD_REQUEST, "missing X-GitHub-Event or X-GitHub-Delivery");
    }
    if delivery.len() > 128 || !delivery.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Outcome::rejected(StatusCode::BAD_REQUEST, "malformed X-GitHub-Delivery");
    }
    let signature = header(headers, "x-hub-signature-256");
    if signature.is_none() {
        rx.metrics.signature_failures.inc();
        return Outcome::rejected(StatusCode::UNAUTHORIZED, "missing X-Hub-Signature-256");
    }
    if let Err(err) = rx.secrets.current().verify(signature, &body) {
        rx.metrics.signature_failures.inc();
        let reason = match err {
            SignatureError::Missing => "missing signature",
            _ => "bad signature",
        };
        return Outcome::rejected(StatusCode::UNAUTHORIZED, reason);
    }
    // Only now is the body looked at.
    let policies = rx.policies.state();
    let decided = intake::decide(event, delivery, &body, &policies, rx.bot_login.as_deref(), &rx.limiter);
    match decided {
        intake::Decided::Respond(outcome) => outcome,
        intake::Decided::Create(run, rate) => {
            let outcome = create(rx, *run).await;
            if outcome.kind == "created" {
                rx.limiter.try_take(&rate);
            }
            outcome
        }
        intake::Decided::Approve(request) => approve(rx, *request).await,
    }
}

/// Records an approval comment on every run of the same issue or pull request
/// that waits for approval. The controller checks the approver with GitHub;
/// nothing here admits anything.
async fn approve(rx: &Receiver, request: intake::ApprovalRequest) -> Outcome {
    let api: Api<ClaudeRun> = Api::namespaced(rx.client.clone(), &request.namespace);
    let summary = intake::RunSummary {
        repository: request.repository.clone(),
        actor: request.login.clone(),
        run: None,
        namespace: Some(request.namespace.clone()),
    };
    let selector = format!(
        "{}={},{}={}",
        intake::REPOSITORY_LABEL,
        intake::repository_label(&request.repository),
        intake::NUMBER_LABEL,
        request.number
    );
    let runs = match api.list(&kube::api::ListParams::default().labels(&selector)).await {
        Ok(runs) => runs,
        Err(err) => {
            tracing::warn!(error = %err, "listing runs for an approval failed");
            return Outcome::unavailable(summary);
        }
    };
    let value = serde_json::to_string(&request).expect("approval request serializes");
    let mut recorded = 0;
    for run in runs.items.iter().filter(|r| {
        r.status
            .as_ref()
            .is_some_and(|s| s.phase == crate::api::Phase::AwaitingApproval)
    }) {
        let patch = serde_json::json!({"metadata": {"annotations": {intake::APPROVAL_REQUEST_ANNOTATION: value}}});
        let name = run.metadata.name.clone().unwrap_or_default();
        match api
            .patch(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => recorded += 1,
            Err(err) => {
                tracing::warn!(error = %err, run = %name, "recording an approval failed");
                return Outcome::unavailable(summary);
            }
        }
    }
    Outcome::approval(summary, recorded)
}

async fn create(rx: &Receiver, run: ClaudeRun) -> Outcome {
    let ns = run.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ClaudeRun> = Api::namespaced(rx.client.clone(), &ns);
    let summary = intake::RunSummary::of(&run);
    match api.create(&PostParams::default(), &run).await {
        Ok(_) => Outcome::created(summary),
        Err(kube::Error::Api(status)) if status.code == 409 => Outcome::duplicate(summary),
        Err(err) => {
            tracing::warn!(error = %err, namespace = %ns, "creating ClaudeRun failed");
            Outcome::unavailable(summary)
        }
    }
}
