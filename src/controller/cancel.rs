//! Cancelling a run: the one path every way of stopping a run takes (a
//! cancel comment, the issue or pull request closed, a newer trigger
//! superseding it, the run deleted).
//!
//! [`cancel_run`] is the primitive: it closes the run's grant (the gateway
//! takes no new request on its capability), deletes its pod, records what
//! the gateway metered so far (open reservations charged in full, as for
//! any run that ends with requests unsettled) and ends the run `Cancelled`
//! with the reason as its outcome; the terminal step then charges the
//! policy's ledger, revokes the token and deletes the grant and Secret,
//! like for every finished run. [`on_requests`] decides the cancel requests
//! the receiver recorded (`api::labels::CancelRequest`) with
//! `admission::may_cancel`; [`on_delete`] is the finalizer's path for a run
//! deleted while it goes.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;

use super::run::{
    actor_facts, close_grant, delete_own_pod, fail, final_meter, grant_name_of, policy_of, publish, reservation_cost,
    reservation_of, revoke_and_delete, write_status,
};
use super::{Context, Error, Result};
use crate::admission::{self, Unavailable};
use crate::api::conditions::reasons;
use crate::api::labels::{CancelKind, CancelRequest, cancel_requests};
use crate::api::{ClaudeRun, ClaudeRunStatus, Phase};
use crate::cost::{self, Usd};
use crate::sandbox;

/// Stops `run` and ends it `Cancelled` with `reason` (a reason constant,
/// also its outcome and Event reason) and `message`. Idempotent: each step
/// may be repeated after a crash.
pub async fn cancel_run(
    run: &ClaudeRun,
    ctx: &Context,
    mut status: ClaudeRunStatus,
    reason: &'static str,
    message: String,
) -> Result<Action> {
    tracing::info!(run = %run.name_any(), reason, "cancelling the run");
    if status.pod_name.is_none() && has_own_pod(run, ctx).await? {
        // Created, and its record lost with a failed status write: the run
        // had a pod, so it is charged its meter, not nothing.
        status.pod_name = Some(sandbox::pod_name(&run.name_any()));
    }
    stop_sandbox(run, ctx, &status).await?;
    fail(run, ctx, status, reason, message, Phase::Cancelled).await
}

/// Whether a pod the run controls exists under its pod's name.
async fn has_own_pod(run: &ClaudeRun, ctx: &Context) -> Result<bool> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let pod = pods.get_opt(&sandbox::pod_name(&run.name_any())).await?;
    Ok(pod.is_some_and(|p| sandbox::controlled_by(&p.metadata, &run.uid().unwrap_or_default())))
}

/// Closes the grant and deletes the pod (only the run's own).
async fn stop_sandbox(run: &ClaudeRun, ctx: &Context, status: &ClaudeRunStatus) -> Result<()> {
    close_grant(ctx, &grant_name_of(run)).await?;
    delete_own_pod(run, ctx, status, &run.namespace().unwrap_or_default()).await
}

/// The message of a cancel that was accepted.
fn message_of(request: &CancelRequest) -> String {
    match request.kind {
        CancelKind::Comment => format!("cancelled by a comment of {}", request.login),
        CancelKind::Closed => format!("the issue or pull request was closed by {}", request.login),
        CancelKind::Superseded => format!("superseded by a newer trigger of {}", request.login),
    }
}

/// Decides the cancel requests recorded on a run still going: the first
/// that may cancel it does (`Some` action); each refused one is an Event
/// (`CancelRefused`). All of them are removed once decided.
pub(super) async fn on_requests(run: &ClaudeRun, ctx: &Context, status: &ClaudeRunStatus) -> Result<Option<Action>> {
    let requests = cancel_requests(run.annotations());
    if requests.is_empty() {
        return Ok(None);
    }
    let policy = policy_of(run, ctx);
    let mut accepted = None;
    for request in requests.iter().filter_map(|(_, r)| r.as_ref()) {
        let verdict = if admission::cancel_needs_lookup(&run.spec.trigger, request) {
            match &policy {
                Some(p) => {
                    let facts = actor_facts(run, p, ctx, &request.login).await;
                    admission::may_cancel(&p.spec.authorization, &run.spec.trigger, request, &facts)
                }
                None => Err(reasons::NO_MATCHING_POLICY),
            }
        } else {
            let authorization = policy
                .as_ref()
                .map(|p| p.spec.authorization.clone())
                .unwrap_or_default();
            let not_asked = Err(Unavailable::new("not asked"));
            admission::may_cancel(&authorization, &run.spec.trigger, request, &not_asked)
        };
        match verdict {
            Ok(()) => {
                accepted = Some(request.clone());
                break;
            }
            Err(why) => {
                tracing::info!(run = %run.name_any(), requester = %request.login, reason = why, "cancel refused");
                publish(
                    ctx,
                    run,
                    EventType::Normal,
                    reasons::CANCEL_REFUSED,
                    format!("{} may not cancel this run ({why})", request.login),
                    "Cancel",
                );
            }
        }
    }
    let action = match accepted {
        Some(request) => {
            let reason = admission::cancel_reason(request.kind);
            Some(cancel_run(run, ctx, status.clone(), reason, message_of(&request)).await?)
        }
        None => None,
    };
    // Decided (and, when accepted, recorded on the status): the requests go.
    let removed: serde_json::Map<String, serde_json::Value> = requests
        .iter()
        .map(|(key, _)| (key.clone(), serde_json::Value::Null))
        .collect();
    let api: Api<ClaudeRun> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": removed}});
    match api
        .patch(&run.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(action)
}

/// A run deleted while it goes is cancelled: its pod deleted, its grant
/// closed, its cost so far (meter with open reservations, else its whole
/// reservation when it had a pod) charged to the ledger before the token is
/// revoked and the grant deleted; then its status says `Cancelled`
/// (`RunDeleted`), which also reports on GitHub, as the object goes.
pub(super) async fn on_delete(run: &ClaudeRun, ctx: &Context, mut status: ClaudeRunStatus) -> Result<Action> {
    let cost = if status.pod_name.is_some() {
        stop_sandbox(run, ctx, &status).await?;
        match final_meter(run, ctx).await? {
            Some(meter) => cost::metered_cost(&meter, true),
            None => reservation_cost(reservation_of(&status, policy_of(run, ctx).as_deref())),
        }
    } else {
        reservation_cost(Usd::ZERO)
    };
    let usd = Usd::parse(&cost.usd).map_err(|_| Error::Invalid(format!("cost {:?}", cost.usd)))?;
    if !status.charged && !usd.is_zero() {
        super::charge::charge(ctx, run, usd, Timestamp::now()).await?;
    }
    revoke_and_delete(run, ctx).await?;
    status.phase = Phase::Cancelled;
    status.outcome = Some(reasons::RUN_DELETED.into());
    status.cost = Some(cost);
    status.charged = status.charged || !usd.is_zero();
    status.reserved_usd = None;
    status.completion_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
    let note = (reasons::RUN_DELETED, "the run was deleted before it ended".to_owned());
    // A record for people; the object is going either way.
    if let Err(e) = write_status(run, ctx, status, Some(note)).await {
        tracing::debug!(error = %e, "recording the deleted run's end failed");
    }
    Ok(Action::await_change())
}
