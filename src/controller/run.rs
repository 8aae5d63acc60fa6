//! The `ClaudeRun` reconciler: a pipeline per phase.
//!
//! - `Pending`: re-derive everything from the spec and GitHub (policy,
//!   authorization, then budget under the policy's lock) and record the
//!   decision: `Denied`, `AwaitingApproval` or `Admitted`.
//! - `AwaitingApproval`: check a recorded approval comment with GitHub, or
//!   expire the run.
//! - `Admitted`/`Running`: create the Secret (minted token), NetworkPolicy and
//!   Pod, in that order, each idempotently; follow the pod.
//! - terminal: revoke the token, delete the Secret, record cost and times,
//!   delete the pod and then the run after their retention.
//!
//! A finalizer guarantees the token is revoked even when the run is deleted
//! early. Every step can be repeated after a crash: children have fixed names,
//! a token is minted only when the run's Secret does not exist, and a token
//! minted in a race that lost to an existing Secret is revoked at once.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use secrecy::ExposeSecret;
use serde_json::json;
use tracing::Instrument;

use super::{Context, Error, FIELD_MANAGER, Result};
use crate::admission::{self, AuthzDecision};
use crate::api::conditions::{self, reasons};
use crate::api::{Admission, ClaudeRun, ClaudeRunPolicy, ClaudeRunStatus, CostSource, Decision, Phase, Trigger};
use crate::cost::{self, Usd};
use crate::sandbox;
use crate::webhook::intake::APPROVAL_REQUEST_ANNOTATION;

use crate::api::RUN_FINALIZER as FINALIZER;

pub async fn reconcile(run: Arc<ClaudeRun>, ctx: Arc<Context>) -> Result<Action> {
    let ns = run.namespace().ok_or(Error::Missing("namespace"))?;
    let api: Api<ClaudeRun> = Api::namespaced(ctx.client.clone(), &ns);
    // Every log line of the reconcile carries the run, its repository and delivery.
    let span = tracing::info_span!("reconcile", run = %run.name_any(), namespace = %ns,
        repository = %run.spec.repository, delivery = %run.spec.trigger.delivery_id);
    finalizer(&api, FINALIZER, run, |event| async {
        match event {
            Finalizer::Apply(run) => apply(&run, &ctx).await,
            Finalizer::Cleanup(run) => cleanup(&run, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(e.to_string()))
}

pub fn error_policy(run: Arc<ClaudeRun>, err: &Error, ctx: Arc<Context>) -> Action {
    super::on_error("run", &run.name_any(), err, &ctx)
}

fn now() -> Time {
    Time(Timestamp::now())
}

async fn apply(run: &ClaudeRun, ctx: &Context) -> Result<Action> {
    let status = run.status.clone().unwrap_or_default();
    match status.phase {
        Phase::Pending => admit(run, ctx, status).await,
        Phase::AwaitingApproval => await_approval(run, ctx, status).await,
        Phase::Admitted | Phase::Running => provision_and_follow(run, ctx, status).await,
        _ => finish(run, ctx, status).await,
    }
}

fn policy_of(run: &ClaudeRun, ctx: &Context) -> Option<Arc<ClaudeRunPolicy>> {
    let ns = run.namespace()?;
    ctx.policies
        .get(&kube::runtime::reflector::ObjectRef::new(&run.spec.policy_name).within(&ns))
}

/// Denies a run whose policy does not exist (any more).
async fn deny_missing_policy(run: &ClaudeRun, ctx: &Context, status: ClaudeRunStatus) -> Result<Action> {
    let message = format!("policy {} does not exist", run.spec.policy_name);
    deny(run, ctx, status, reasons::NO_MATCHING_POLICY, message).await
}

/// Writes the status, and an Event for a phase change.
async fn write_status(
    run: &ClaudeRun,
    ctx: &Context,
    mut status: ClaudeRunStatus,
    note: Option<(&str, String)>,
) -> Result<()> {
    let ns = run.namespace().ok_or(Error::Missing("namespace"))?;
    let api: Api<ClaudeRun> = Api::namespaced(ctx.client.clone(), &ns);
    status.observed_generation = run.metadata.generation;
    let old_phase = run.status.as_ref().map(|s| s.phase);
    let new_phase = status.phase;
    api.patch_status(
        &run.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    if old_phase != Some(new_phase) {
        ctx.feedback.spawn(
            ctx.client.clone(),
            ctx.github.clone(),
            run.clone(),
            policy_of(run, ctx),
            status.clone(),
        );
        ctx.metrics
            .run_transitions
            .get_or_create(&crate::telemetry::PhaseLabels {
                phase: format!("{new_phase:?}"),
            })
            .inc();
    }
    if let Some((reason, message)) = note {
        let type_ = if matches!(new_phase, Phase::Denied | Phase::Failed | Phase::TimedOut) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(message),
            action: format!("{new_phase:?}"),
            secondary: None,
        };
        // Off the reconcile's path: an Event is a record, not a step.
        let (recorder, reference) = (ctx.recorder.clone(), run.object_ref(&()));
        tokio::spawn(async move {
            if let Err(err) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %err, "publishing an event failed");
            }
        });
    }
    Ok(())
}

async fn deny(
    run: &ClaudeRun,
    ctx: &Context,
    mut status: ClaudeRunStatus,
    reason: &str,
    message: String,
) -> Result<Action> {
    tracing::info!(run = %run.name_any(), reason, "run denied");
    ctx.metrics
        .runs_denied
        .get_or_create(&crate::telemetry::ReasonLabels {
            reason: reason.to_owned(),
        })
        .inc();
    let t = now();
    status.phase = Phase::Denied;
    status.admission = Some(Admission {
        decision: Decision::Deny,
        reason: reason.to_owned(),
        message: message.clone(),
        checked_at: t.clone(),
        approved_by: status.admission.as_ref().and_then(|a| a.approved_by.clone()),
    });
    status.completion_time = Some(t.clone());
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::ADMITTED,
            false,
            reason,
            message.clone(),
            run.metadata.generation,
            t,
        ),
    );
    write_status(run, ctx, status, Some((reason, message))).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// The admission step: authorization against GitHub, then the budget.
async fn admit(run: &ClaudeRun, ctx: &Context, status: ClaudeRunStatus) -> Result<Action> {
    let policy = match policy_of(run, ctx) {
        Some(policy) => policy,
        None => return deny_missing_policy(run, ctx, status).await,
    };
    if !crate::webhook::matching::PolicyMatcher::of_patterns(&policy.spec.repositories).covers(&run.spec.repository) {
        return deny(
            run,
            ctx,
            status,
            reasons::NO_MATCHING_POLICY,
            format!("policy {} does not cover {}", run.spec.policy_name, run.spec.repository),
        )
        .await;
    }
    // A Manual run is authorized as its apiserver-vouched requester only,
    // never as the GitHub login in its spec (see admission::authorize_manual).
    let manual = admission::authorize_manual(&run.spec, &policy.spec.authorization.manual_runs);
    if let Some(AuthzDecision::Deny { reason, message }) = manual {
        return deny(run, ctx, status, reason, message).await;
    }
    let trigger = match resolve_trigger(run, &policy, ctx).await {
        Ok(t) => t,
        Err(e) => return deny(run, ctx, status, reasons::AUTHORIZATION_UNAVAILABLE, e.message).await,
    };
    let decision = match manual {
        Some(decision) => decision,
        None => authorize(run, &policy, ctx, &trigger).await,
    };
    match decision {
        AuthzDecision::Deny { reason, message } => deny(run, ctx, status, reason, message).await,
        AuthzDecision::AwaitApproval { message } => {
            let mut status = status;
            let t = now();
            status.phase = Phase::AwaitingApproval;
            status.admission = Some(Admission {
                decision: Decision::AwaitApproval,
                reason: reasons::AWAITING_APPROVAL.into(),
                message: message.clone(),
                checked_at: t.clone(),
                approved_by: None,
            });
            conditions::set_condition(
                &mut status.conditions,
                conditions::condition(
                    conditions::ADMITTED,
                    false,
                    reasons::AWAITING_APPROVAL,
                    message.clone(),
                    run.metadata.generation,
                    t,
                ),
            );
            write_status(run, ctx, status, Some((reasons::AWAITING_APPROVAL, message))).await?;
            Ok(Action::requeue(Duration::from_secs(300)))
        }
        AuthzDecision::Admit => admit_within_budget(run, ctx, &policy, status, None, Some(trigger)).await,
    }
}

/// Facts from GitHub and the pure authorization decision. Any failure on the
/// way is `AuthorizationUnavailable`.
async fn authorize(run: &ClaudeRun, policy: &ClaudeRunPolicy, ctx: &Context, trigger: &Trigger) -> AuthzDecision {
    let facts = actor_facts(run, policy, ctx, &trigger.actor.login).await;
    admission::authorize(&policy.spec.authorization, trigger, &facts)
}

/// The trigger with what the payload could not say filled in from GitHub: an
/// `issue_comment` on a pull request carries no head, so whether the code
/// comes from a fork is asked of the API. Failing that, nothing is assumed.
async fn resolve_trigger(
    run: &ClaudeRun,
    policy: &ClaudeRunPolicy,
    ctx: &Context,
) -> Result<Trigger, admission::Unavailable> {
    let mut trigger = run.spec.trigger.clone();
    if trigger.is_pull_request && trigger.head_sha.is_none() {
        let (owner, repo) = run
            .spec
            .repository
            .split_once('/')
            .ok_or_else(|| admission::Unavailable::new("malformed repository"))?;
        let installation = installation(ctx, policy, owner, repo)
            .await
            .map_err(|e| admission::Unavailable::new(e.to_string()))?;
        let head = ctx
            .github
            .pull_head(installation, owner, repo, trigger.number)
            .await
            .map_err(|e| admission::Unavailable::new(format!("looking up the pull request: {e}")))?;
        trigger.head_sha = Some(head.sha);
        trigger.head_ref = Some(head.ref_);
        trigger.fork = head.fork;
    }
    Ok(trigger)
}

async fn actor_facts(
    run: &ClaudeRun,
    policy: &ClaudeRunPolicy,
    ctx: &Context,
    login: &str,
) -> Result<admission::ActorFacts, admission::Unavailable> {
    let (owner, repo) = run
        .spec
        .repository
        .split_once('/')
        .ok_or_else(|| admission::Unavailable::new("malformed repository"))?;
    let installation = installation(ctx, policy, owner, repo)
        .await
        .map_err(|e| admission::Unavailable::new(e.to_string()))?;
    let auth = &policy.spec.authorization;
    ctx.github
        .actor_facts(installation, owner, repo, login, &auth.organizations, &auth.teams)
        .await
}

async fn installation(ctx: &Context, policy: &ClaudeRunPolicy, owner: &str, repo: &str) -> Result<i64> {
    match policy.spec.github.installation_id {
        Some(id) => Ok(id),
        None => ctx
            .github
            .installation_for_repo(owner, repo)
            .await
            .map_err(|e| Error::GitHub(e.to_string())),
    }
}

/// Whether the author of an approval comment passes the policy's authorization
/// on this run's repository (asked of GitHub; the payload is not trusted).
async fn approver_is_authorized(
    run: &ClaudeRun,
    policy: &ClaudeRunPolicy,
    ctx: &Context,
    req: &crate::webhook::intake::ApprovalRequest,
) -> bool {
    let Ok(mut trigger) = resolve_trigger(run, policy, ctx).await else {
        return false;
    };
    trigger.actor = crate::api::Actor {
        login: req.login.clone(),
        id: req.id,
        type_: crate::api::ActorType::User,
    };
    authorize(run, policy, ctx, &trigger).await.is_admit()
}

/// Budget check under the policy's lock, then `Admitted` with a reservation,
/// and straight on to the sandbox (the trigger, when given, is already
/// resolved against GitHub).
async fn admit_within_budget(
    run: &ClaudeRun,
    ctx: &Context,
    policy: &ClaudeRunPolicy,
    mut status: ClaudeRunStatus,
    approved_by: Option<String>,
    resolved: Option<Trigger>,
) -> Result<Action> {
    let ns = run.namespace().unwrap_or_default();
    let lock = ctx.ledger.policy(&ns, &run.spec.policy_name);
    let mut ledger = lock.lock().await;
    let per_run = match Usd::parse(&policy.spec.budget.max_cost_per_run_usd) {
        Ok(v) => v,
        Err(_) => {
            drop(ledger);
            return deny(
                run,
                ctx,
                status,
                reasons::BUDGET_EXHAUSTED,
                "the policy's maxCostPerRunUSD is invalid".into(),
            )
            .await;
        }
    };
    let view = super::policy::budget_view(policy, &ctx.runs, &ledger, Timestamp::now(), Some(&run.name_any()));
    let view = match view {
        Ok(v) => v,
        Err(message) => {
            drop(ledger);
            return deny(run, ctx, status, reasons::BUDGET_EXHAUSTED, message).await;
        }
    };
    let actor_recent = view.actor_runs_last_hour(run.spec.trigger.actor.id);
    let check = cost::BudgetInput {
        limit: view.limit,
        max_cost_per_run: per_run,
        spent: view.spent,
        reserved: view.reserved,
        active_runs: view.active as u32,
        max_concurrent_runs: policy.spec.budget.max_concurrent_runs.max(1) as u32,
        actor_runs_last_hour: actor_recent as u32,
        max_runs_per_user_per_hour: policy.spec.budget.max_runs_per_user_per_hour.max(1) as u32,
    };
    if let Err(denial) = cost::budget::check(&check) {
        drop(ledger);
        return deny(run, ctx, status, denial.reason, denial.message).await;
    }
    let t = now();
    status.phase = Phase::Admitted;
    status.reserved_usd = Some(per_run.to_string());
    let message = match &approved_by {
        Some(who) => format!("approved by {who}; {} reserved", per_run),
        None => format!("authorized; {} reserved", per_run),
    };
    status.admission = Some(Admission {
        decision: Decision::Admit,
        reason: if approved_by.is_some() {
            reasons::APPROVED.into()
        } else {
            reasons::ADMITTED.into()
        },
        message: message.clone(),
        checked_at: t.clone(),
        approved_by,
    });
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::ADMITTED,
            true,
            reasons::ADMITTED,
            message.clone(),
            run.metadata.generation,
            t,
        ),
    );
    // The admission and the first mint are recorded together, before the
    // mint; the reads and applies the sandbox needs go meanwhile.
    status.token_mints = Some(status.token_mints.unwrap_or(0) + 1);
    let (written, prepared) = futures::join!(
        write_status(run, ctx, status.clone(), Some((reasons::ADMITTED, message))),
        prepare(run, ctx, policy),
    );
    written?;
    ledger.recent.insert(
        run.name_any(),
        super::ledger::Recent {
            actor_id: run.spec.trigger.actor.id,
            at: std::time::Instant::now(),
        },
    );
    drop(ledger);
    ctx.metrics.runs_admitted.inc();

    // The run as now recorded, so later writes compare against `Admitted`.
    let mut run = run.clone();
    run.status = Some(status.clone());
    if let Some(trigger) = resolved {
        run.spec.trigger = trigger;
    }
    provision(&run, ctx, policy, status, prepared, true).await
}

/// A waiting run: an approval comment recorded by the receiver is checked
/// with GitHub; the approval window closes the run.
async fn await_approval(run: &ClaudeRun, ctx: &Context, status: ClaudeRunStatus) -> Result<Action> {
    let policy = match policy_of(run, ctx) {
        Some(policy) => policy,
        None => return deny_missing_policy(run, ctx, status).await,
    };
    let window = Duration::from_secs(policy.spec.authorization.approval_window_hours.max(1) as u64 * 3600);
    let created = run
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    let elapsed = Timestamp::now().duration_since(created);
    let expired = elapsed.as_secs() as u64 >= window.as_secs();

    if let Some(request) = run.annotations().get(APPROVAL_REQUEST_ANNOTATION).cloned() {
        // Whatever the outcome, the request is consumed.
        let ns = run.namespace().unwrap_or_default();
        let api: Api<ClaudeRun> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"metadata": {"annotations": {APPROVAL_REQUEST_ANNOTATION: null}}});
        api.patch(&run.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let parsed: Option<crate::webhook::intake::ApprovalRequest> = serde_json::from_str(&request).ok();
        if let Some(req) = parsed.filter(|_| !expired) {
            // The trigger's own author cannot approve it.
            if !req.login.eq_ignore_ascii_case(&run.spec.trigger.actor.login)
                && approver_is_authorized(run, &policy, ctx, &req).await
            {
                return admit_within_budget(run, ctx, &policy, status, Some(req.login), None).await;
            }
            tracing::info!(run = %run.name_any(), approver = %req.login, "approval not accepted");
        }
    }
    if expired {
        return deny(
            run,
            ctx,
            status,
            reasons::APPROVAL_EXPIRED,
            "no authorized approval within the window".into(),
        )
        .await;
    }
    let left = window.saturating_sub(Duration::from_secs(elapsed.as_secs().max(0) as u64));
    Ok(Action::requeue(left.min(Duration::from_secs(300))))
}

/// Follows the pod, or creates the sandbox when there is none yet.
async fn provision_and_follow(run: &ClaudeRun, ctx: &Context, status: ClaudeRunStatus) -> Result<Action> {
    let ns = run.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(pod) = pods.get_opt(&sandbox::pod_name(&run.name_any())).await? {
        return follow(run, ctx, status, &pod).await;
    }
    if status.pod_name.is_some() {
        // We created it and it is gone: never a second pod.
        return fail(
            run,
            ctx,
            status,
            reasons::POD_DELETED,
            "the runner pod was deleted before it finished".into(),
            Phase::Failed,
        )
        .await;
    }
    let Some(policy) = policy_of(run, ctx) else {
        return fail(
            run,
            ctx,
            status,
            reasons::NO_MATCHING_POLICY,
            "the policy was deleted".into(),
            Phase::Failed,
        )
        .await;
    };
    // The run as it will be provisioned: with its pull request's head and fork
    // status known, so a fork's code never gets a write token.
    let run = &{
        let mut resolved = run.clone();
        resolved.spec.trigger = match resolve_trigger(run, &policy, ctx).await {
            Ok(t) => t,
            Err(e) => return Err(Error::GitHub(e.message)),
        };
        resolved
    };
    let prepared = prepare(run, ctx, &policy).await;
    provision(run, ctx, &policy, status, prepared, false).await
}

/// An outcome of a provisioning step other than success.
enum Step {
    /// The run cannot be provisioned: it fails with this reason.
    Fail(&'static str, String),
    /// Try again later.
    Retry(Error),
}

impl Step {
    /// Ends the reconcile with this outcome.
    async fn settle(self, run: &ClaudeRun, ctx: &Context, status: ClaudeRunStatus) -> Result<Action> {
        match self {
            Step::Fail(reason, message) => fail(run, ctx, status, reason, message, Phase::Failed).await,
            Step::Retry(err) => Err(err),
        }
    }
}

/// What provisioning needs before the token: whether the run's Secret exists
/// already, the Anthropic key (if its Secret has it), and the NetworkPolicy
/// (and the namespace's runner service account) in place.
struct Prepared {
    secret_exists: bool,
    anthropic_key: Option<secrecy::SecretString>,
    network_policy: String,
}

/// The steps that do not depend on each other or on the token, at once.
async fn prepare(run: &ClaudeRun, ctx: &Context, policy: &ClaudeRunPolicy) -> Result<Prepared, Step> {
    let ns = run.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret_name = sandbox::secret_name(&run.name_any());
    let key_ref = &policy.spec.runner.anthropic_api_key_secret_ref;
    let fence = async {
        let netpol = sandbox::run_network_policy(&policy.spec, run, &ctx.settings.dns, &ctx.settings.cluster_ranges)
            .map_err(|e| Step::Fail("InvalidPolicy", e.to_string()))?;
        let name = netpol.metadata.name.clone().unwrap_or_default();
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let netpols: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = Patch::Apply(&netpol);
        let (_, applied) = futures::join!(ensure_service_account(ctx, &ns), netpols.patch(&name, &pp, &patch));
        applied.map_err(|e| Step::Retry(e.into()))?;
        Ok(name)
    };
    let (existing, key, fence) = futures::join!(secrets.get_opt(&secret_name), secrets.get_opt(&key_ref.name), fence);
    let secret_exists = existing.map_err(|e| Step::Retry(e.into()))?.is_some();
    let anthropic_key = key
        .map_err(|e| Step::Retry(e.into()))?
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove(&key_ref.key))
        .and_then(|v| String::from_utf8(v.0).ok())
        .filter(|k| !k.is_empty())
        .map(secrecy::SecretString::from);
    Ok(Prepared {
        secret_exists,
        anthropic_key,
        network_policy: fence?,
    })
}

/// Applies the namespace's runner service account (no token, no bindings)
/// once per namespace and process; the pod create says when it is missing.
async fn ensure_service_account(ctx: &Context, ns: &str) {
    if ctx.service_accounts.lock().expect("lock").contains(ns) {
        return;
    }
    let sa = sandbox::runner_service_account(ns);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    match Api::<ServiceAccount>::namespaced(ctx.client.clone(), ns)
        .patch(sa.metadata.name.as_deref().unwrap_or_default(), &pp, &Patch::Apply(&sa))
        .await
    {
        Ok(_) => {
            ctx.service_accounts.lock().expect("lock").insert(ns.to_owned());
        }
        Err(e) => tracing::warn!(error = %e, "applying the runner service account failed"),
    }
}

/// Mints the token into the run's Secret (unless it exists), then creates
/// the pod. `admitted_now`: the admission write just recorded this mint.
async fn provision(
    run: &ClaudeRun,
    ctx: &Context,
    policy: &ClaudeRunPolicy,
    mut status: ClaudeRunStatus,
    prepared: Result<Prepared, Step>,
    admitted_now: bool,
) -> Result<Action> {
    let prepared = match prepared {
        Ok(p) => p,
        Err(step) => return step.settle(run, ctx, status).await,
    };
    let ns = run.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret_name = sandbox::secret_name(&run.name_any());

    // 1. Secret: the only place the token ever lives. Every mint is recorded
    // on the run before it happens.
    if !prepared.secret_exists {
        // Only needed to mint: a run whose Secret exists goes on without it.
        let Some(key) = &prepared.anthropic_key else {
            let key_ref = &policy.spec.runner.anthropic_api_key_secret_ref;
            let message = format!("secret {} has no key {}", key_ref.name, key_ref.key);
            return fail(run, ctx, status, reasons::SECRET_MISSING, message, Phase::Failed).await;
        };
        if !admitted_now {
            let previous = status.token_mints.unwrap_or(0);
            status.token_mints = Some(previous + 1);
            let note = (previous > 0).then(|| {
                ctx.metrics.token_mint_retries.inc();
                (
                    reasons::TOKEN_MINT_RETRIED,
                    format!(
                        "mint {} for this run: an earlier mint's answer never reached the run's Secret \
                         (restart or failed call); if GitHub issued that token, no one holds it and it \
                         expires within the hour",
                        previous + 1
                    ),
                )
            });
            // The phase stays as it is, so `run` needs no update.
            write_status(run, ctx, status.clone(), note).await?;
        }
        match create_secret(run, ctx, policy, &secrets, key).await {
            Ok(expires) => status.token_expires_at = Some(expires),
            Err(step) => return step.settle(run, ctx, status).await,
        }
    }
    status.secret_name = Some(secret_name.clone());
    status.network_policy_name = Some(prepared.network_policy);

    // 2. The pod, only now that its Secret and fence exist.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod = match sandbox::runner_pod(&policy.spec, run, &secret_name, &ctx.settings.runner) {
        Ok(p) => p,
        Err(e) => return fail(run, ctx, status, "InvalidPolicy", e.to_string(), Phase::Failed).await,
    };
    match pods.create(&PostParams::default(), &pod).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("exceeded quota") => {
            return wait_for_quota(run, ctx, status, s.message).await;
        }
        Err(e) => {
            // Perhaps the service account went away: apply it again next time.
            ctx.service_accounts.lock().expect("lock").remove(&ns);
            return Err(e.into());
        }
    }
    let t = now();
    status.pod_name = Some(sandbox::pod_name(&run.name_any()));
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::WAITING_FOR_QUOTA,
            false,
            reasons::ADMITTED,
            "",
            run.metadata.generation,
            t.clone(),
        ),
    );
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::SANDBOX_READY,
            true,
            "Created",
            "secret, network policy and pod created",
            run.metadata.generation,
            t,
        ),
    );
    write_status(
        run,
        ctx,
        status,
        Some(("SandboxCreated", "secret, network policy and pod created".into())),
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Mints the run's token and stores it, with the API key and prompt, in the
/// run's Secret. Returns the token's expiry.
async fn create_secret(
    run: &ClaudeRun,
    ctx: &Context,
    policy: &ClaudeRunPolicy,
    secrets: &Api<Secret>,
    key: &secrecy::SecretString,
) -> Result<Time, Step> {
    let (owner, repo) = run.spec.repository.split_once('/').unwrap_or_default();
    let installation = installation(ctx, policy, owner, repo).await.map_err(Step::Retry)?;
    let permissions = admission::token_permissions(
        &policy.spec.github,
        run.spec.trigger.fork,
        policy.spec.authorization.allow_fork_write,
    );
    let minted = ctx
        .github
        .mint_token(installation, repo, &permissions)
        .await
        .map_err(|e| Step::Retry(Error::GitHub(e.to_string())))?;
    let expires = Time(minted.expires_at);
    let secret = match sandbox::run_secret(
        run,
        minted.token.expose_secret(),
        minted.expires_at,
        key.expose_secret(),
        &run.spec.prompt,
    ) {
        Ok(s) => s,
        Err(e) => {
            let _ = ctx.github.revoke_token(&minted.token).await;
            return Err(Step::Fail("InvalidRun", e.to_string()));
        }
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(expires),
        Err(err) => {
            // The token is in no Secret: revoke it now so it cannot outlive this attempt.
            if let Err(e) = ctx.github.revoke_token(&minted.token).await {
                tracing::warn!(error = %e, "revoking an unused token failed");
            }
            match err {
                kube::Error::Api(s) if s.code == 409 => {
                    Err(Step::Retry(Error::Missing("secret (created concurrently)")))
                }
                e => Err(Step::Retry(e.into())),
            }
        }
    }
}

async fn wait_for_quota(
    run: &ClaudeRun,
    ctx: &Context,
    mut status: ClaudeRunStatus,
    message: String,
) -> Result<Action> {
    let t = now();
    let since = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::WAITING_FOR_QUOTA && c.status == "True")
        .map(|c| c.last_transition_time.0)
        .unwrap_or(t.0);
    if Timestamp::now().duration_since(since).as_secs() as u64 > ctx.settings.quota_wait.as_secs() {
        return fail(
            run,
            ctx,
            status,
            reasons::QUOTA_TIMEOUT,
            "namespace quota stayed exhausted".into(),
            Phase::Failed,
        )
        .await;
    }
    let first = !status
        .conditions
        .iter()
        .any(|c| c.type_ == conditions::WAITING_FOR_QUOTA && c.status == "True");
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::WAITING_FOR_QUOTA,
            true,
            reasons::QUOTA_EXCEEDED,
            message.clone(),
            run.metadata.generation,
            t,
        ),
    );
    write_status(run, ctx, status, first.then_some((reasons::QUOTA_EXCEEDED, message))).await?;
    Ok(Action::requeue(Duration::from_secs(5)))
}

/// Follows the pod to its end.
async fn follow(run: &ClaudeRun, ctx: &Context, mut status: ClaudeRunStatus, pod: &Pod) -> Result<Action> {
    let pod_status = pod.status.clone().unwrap_or_default();
    match pod_status.phase.as_deref() {
        Some("Running") if status.phase != Phase::Running => {
            status.phase = Phase::Running;
            status.pod_name = pod.metadata.name.clone();
            status.start_time = pod_status.start_time.clone().or_else(|| Some(now()));
            write_status(run, ctx, status, Some(("Running", "the runner pod is running".into()))).await?;
            Ok(Action::requeue(Duration::from_secs(60)))
        }
        Some("Succeeded") | Some("Failed") => complete(run, ctx, status, pod).await,
        _ => {
            if status.pod_name.is_none() {
                status.pod_name = pod.metadata.name.clone();
                write_status(run, ctx, status, None).await?;
            }
            Ok(Action::requeue(Duration::from_secs(60)))
        }
    }
}

/// Records the outcome and cost of a finished pod.
async fn complete(run: &ClaudeRun, ctx: &Context, mut status: ClaudeRunStatus, pod: &Pod) -> Result<Action> {
    let pod_status = pod.status.clone().unwrap_or_default();
    let terminated = pod_status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.name == sandbox::RUNNER_CONTAINER))
        .and_then(|c| c.state.as_ref()?.terminated.clone());
    let message = terminated.as_ref().and_then(|t| t.message.clone());
    let report = cost::parse_report(message.as_deref());
    let policy = policy_of(run, ctx);
    // Without a recorded reservation, the policy's per-run maximum: never less.
    let per_run = policy
        .as_ref()
        .and_then(|p| Usd::parse(&p.spec.budget.max_cost_per_run_usd).ok());
    let reservation = status
        .reserved_usd
        .as_deref()
        .and_then(|r| Usd::parse(r).ok())
        .or(per_run)
        .unwrap_or(Usd::ZERO);
    let overrides = policy
        .as_ref()
        .map(|p| p.spec.budget.prices.clone())
        .unwrap_or_default();
    let (cost, cost_reason) = cost::run_cost(report.as_ref(), reservation, &overrides);

    let deadline = pod_status.reason.as_deref() == Some("DeadlineExceeded");
    let outcome = report.as_ref().ok().map(|r| r.outcome.clone());
    let (phase, reason) = if deadline {
        (Phase::TimedOut, reasons::DEADLINE_EXCEEDED.to_owned())
    } else if pod_status.phase.as_deref() == Some("Succeeded") && outcome.as_deref() == Some("success") {
        (Phase::Succeeded, "Completed".to_owned())
    } else {
        let why = outcome
            .clone()
            .or_else(|| terminated.as_ref().and_then(|t| t.reason.clone()))
            .unwrap_or_else(|| "Error".into());
        (Phase::Failed, why)
    };
    let t = now();
    if let Some(p) = &policy {
        let labels = crate::telemetry::CostLabels {
            namespace: run.namespace().unwrap_or_default(),
            policy: p.name_any(),
            repository: run.spec.repository.clone(),
        };
        if let Ok(v) = cost.usd.parse::<f64>() {
            ctx.metrics.cost_usd.get_or_create(&labels).inc_by(v);
        }
    }
    let estimated = cost.source == CostSource::Estimated;
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::COST_RECORDED,
            true,
            cost_reason.reason,
            cost_reason.message.clone(),
            run.metadata.generation,
            t.clone(),
        ),
    );
    status.cost = Some(cost);
    status.phase = phase;
    status.outcome = Some(reason.clone());
    status.completion_time = Some(t);
    status.reserved_usd = None;
    let note = if estimated {
        format!("run ended ({reason}); no usable cost report, charged its reservation")
    } else {
        format!("run ended ({reason})")
    };
    write_status(
        run,
        ctx,
        status,
        Some((
            if phase == Phase::Succeeded {
                "Succeeded"
            } else {
                "Failed"
            },
            note,
        )),
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(1)))
}

async fn fail(
    run: &ClaudeRun,
    ctx: &Context,
    mut status: ClaudeRunStatus,
    reason: &str,
    message: String,
    phase: Phase,
) -> Result<Action> {
    let t = now();
    status.phase = phase;
    status.outcome = Some(reason.to_owned());
    status.completion_time = Some(t.clone());
    // A run that never got a pod spent nothing; one that did is charged its reservation.
    if status.cost.is_none() {
        let charged = if status.pod_name.is_some() {
            status.reserved_usd.clone()
        } else {
            None
        };
        status.cost = Some(crate::api::Cost {
            usd: charged.clone().unwrap_or_else(|| "0".into()),
            input_tokens: 0,
            output_tokens: 0,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
            turns: 0,
            models: vec![],
            source: CostSource::Estimated,
        });
    }
    status.reserved_usd = None;
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::SANDBOX_READY,
            false,
            reason,
            message.clone(),
            run.metadata.generation,
            t,
        ),
    );
    write_status(run, ctx, status, Some((reason, message))).await?;
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Terminal runs: revoke, delete the Secret, then honour retention.
async fn finish(run: &ClaudeRun, ctx: &Context, mut status: ClaudeRunStatus) -> Result<Action> {
    if revoke_and_delete_secret(run, ctx).await? {
        let t = now();
        conditions::set_condition(
            &mut status.conditions,
            conditions::condition(
                conditions::TOKEN_REVOKED,
                true,
                "Revoked",
                "token revoked and secret deleted",
                run.metadata.generation,
                t,
            ),
        );
        write_status(run, ctx, status.clone(), None).await?;
    }
    let Some(done) = status.completion_time.as_ref().map(|t| t.0) else {
        return Ok(Action::await_change());
    };
    let policy = policy_of(run, ctx);
    let retention = policy.as_ref().map(|p| p.spec.retention.clone()).unwrap_or_default();
    let age = Timestamp::now().duration_since(done);
    let age = Duration::from_secs(age.as_secs().max(0) as u64);

    // The pod, for its logs.
    let ns = run.namespace().unwrap_or_default();
    let pod_keep = Duration::from_secs(retention.pod_minutes.max(0) as u64 * 60);
    if age >= pod_keep {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        match pods
            .delete(&sandbox::pod_name(&run.name_any()), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The run itself: after its retention, and never before its budget period ends.
    let hours = match status.phase {
        Phase::Succeeded => retention.succeeded_hours,
        Phase::Denied => retention.denied_hours,
        _ => retention.failed_hours,
    };
    let mut keep = Duration::from_secs(hours.max(0) as u64 * 3600);
    if let Some(p) = &policy
        && let Ok((_, end)) = cost::period_bounds(done, p.spec.budget.period, p.spec.budget.time_zone.as_deref())
    {
        let until_end = end.duration_since(done);
        keep = keep.max(Duration::from_secs(until_end.as_secs().max(0) as u64));
    }
    if age >= keep {
        let api: Api<ClaudeRun> = Api::namespaced(ctx.client.clone(), &ns);
        api.delete(&run.name_any(), &DeleteParams::background()).await?;
        return Ok(Action::await_change());
    }
    let next = if age < pod_keep { pod_keep - age } else { keep - age };
    Ok(Action::requeue(
        next.min(Duration::from_secs(3600)).max(Duration::from_secs(1)),
    ))
}

/// Revokes the run's token (read from its Secret) and deletes the Secret.
/// True when it did something. A missing Secret means both are done.
async fn revoke_and_delete_secret(run: &ClaudeRun, ctx: &Context) -> Result<bool> {
    let ns = run.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = sandbox::secret_name(&run.name_any());
    let Some(secret) = secrets.get_opt(&name).await? else {
        return Ok(false);
    };
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get(sandbox::SECRET_KEY_GITHUB_TOKEN))
        .map(|v| v.0.clone());
    if let Some(token) = token.and_then(|t| String::from_utf8(t).ok()) {
        let token = secrecy::SecretString::from(token);
        ctx.github
            .revoke_token(&token)
            .await
            .map_err(|e| Error::GitHub(e.to_string()))?;
    }
    match secrets.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// The finalizer: whatever phase the run is in, its token must not outlive it.
async fn cleanup(run: &ClaudeRun, ctx: &Context) -> Result<Action> {
    revoke_and_delete_secret(run, ctx).await?;
    Ok(Action::await_change())
}
