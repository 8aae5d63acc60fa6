//! The `ClaudeRun` reconciler: a pipeline per phase.
//!
//! - `Pending`: re-derive everything from the spec and GitHub (policy,
//!   authorization, then budget under the policy's lock) and record the
//!   decision: `Denied`, `AwaitingApproval` or `Admitted`.
//! - `AwaitingApproval`: check each recorded approval comment with GitHub
//!   once, or expire the run.
//! - `Admitted`/`Running`: create the NetworkPolicy (egress to the gateway
//!   only), the run's Secret (a new capability and the prompt), the grant in
//!   the gateway's namespace (minted token, Anthropic key, the capability's
//!   hash, the run's facts) and the Pod, in that order, each idempotently;
//!   follow the pod, copying the grant's meter onto `status.cost`.
//! - pod ended: close the grant, let requests in flight settle (bounded),
//!   charge the meter (open reservations included).
//! - terminal: charge the cost to the policy's ledger (`controller::charge`,
//!   exactly once), revoke the token, delete the grant and the Secret,
//!   delete the pod and then, once charged, the run after their retention.
//!
//! A finalizer guarantees the token is revoked and the grant deleted even
//! when the run is deleted early, and that its cost is charged first. Every step can be repeated after a crash:
//! children have fixed names, a token is minted only when the run's grant
//! does not exist, and a token minted in a race that lost to an existing
//! grant is revoked at once. An object with a child's name that is not the
//! run's (owner reference with the run's uid; for the pod, also what we
//! built) is never used: the run fails with `SandboxConflict`.

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

use super::{Context, Error, FIELD_MANAGER, Result, gateway_secrets};
use crate::admission::{self, AuthzDecision};
use crate::api::conditions::{self, reasons};
use crate::api::labels::{CancelKind, CancelRequest, cancel_has_room};
use crate::api::{
    Admission, ClaudeRun, ClaudeRunPolicy, ClaudeRunStatus, CostSource, Decision, Phase, PullRequestPush, Trigger,
};
use crate::cost::{self, Usd};
use crate::grant::{self, Meter};
use crate::sandbox;

use crate::api::RUN_FINALIZER as FINALIZER;

pub async fn reconcile(run: Arc<ClaudeRun>, ctx: Arc<Context>) -> Result<Action> {
    let ns = run.namespace().ok_or(Error::Missing("namespace"))?;
    let api: Api<ClaudeRun> = Api::namespaced(ctx.client.clone(), &ns);
    // Every log line of the reconcile carries the run, its repository and delivery.
    let span = tracing::info_span!("reconcile", run = %run.name_any(), namespace = %ns,
        repository = %run.spec.repository, delivery = %run.spec.trigger.delivery_id);
    // The cache has not shown this process's last status write yet: deciding
    // on the older state would repeat a step (and write its stale status
    // back). The write's watch event brings the run back; the requeue is a
    // backstop.
    if ctx
        .seen
        .is_behind(&run.uid().unwrap_or_default(), run.resource_version().as_deref())
    {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    finalizer(&api, FINALIZER, run, |event| async {
        match event {
            Finalizer::Apply(run) => apply(&run, &ctx).await,
            Finalizer::Cleanup(run) => {
                ctx.seen.forget(&run.uid().unwrap_or_default());
                cleanup(&run, &ctx).await
            }
        }
    })
    .instrument(span)
    .await
    .map_err(super::unwrap_finalizer_error)
}

pub fn error_policy(run: Arc<ClaudeRun>, err: &Error, ctx: Arc<Context>) -> Action {
    super::on_error("run", &run.name_any(), err, &ctx)
}

fn now() -> Time {
    Time(Timestamp::now())
}

async fn apply(run: &ClaudeRun, ctx: &Context) -> Result<Action> {
    let status = run.status.clone().unwrap_or_default();
    // A run still going that someone asked to stop stops first.
    if !status.phase.is_terminal()
        && let Some(action) = super::cancel::on_requests(run, ctx, &status).await?
    {
        return Ok(action);
    }
    match status.phase {
        Phase::Pending => admit(run, ctx, status).await,
        Phase::AwaitingApproval => await_approval(run, ctx, status).await,
        Phase::Admitted | Phase::Running => provision_and_follow(run, ctx, status).await,
        _ => finish(run, ctx, status).await,
    }
}

pub(super) fn policy_of(run: &ClaudeRun, ctx: &Context) -> Option<Arc<ClaudeRunPolicy>> {
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
pub(super) async fn write_status(
    run: &ClaudeRun,
    ctx: &Context,
    mut status: ClaudeRunStatus,
    note: Option<(&str, String)>,
) -> Result<()> {
    let ns = run.namespace().ok_or(Error::Missing("namespace"))?;
    let api: Api<ClaudeRun> = Api::namespaced(ctx.client.clone(), &ns);
    status.observed_generation = run.metadata.generation;
    // The status comment's id rides on this write when it is not recorded yet.
    let comment = match status.feedback_comment_id {
        None => ctx.feedback.unrecorded(run),
        Some(_) => None,
    };
    if let Some(id) = comment {
        status.feedback_comment_id = Some(id);
    }
    let old_phase = run.status.as_ref().map(|s| s.phase);
    let new_phase = status.phase;
    let mut patch = json!({ "status": status });
    // A mint is recorded before it is made, counted up from the run as read.
    // Read from a cache that lags (the apiserver restarted, the watch not yet
    // back), the count would be written again unchanged and a second token
    // minted unrecorded: so this write holds only if nobody wrote since.
    if status.token_mints != run.status.as_ref().and_then(|s| s.token_mints) {
        let version = run.resource_version().ok_or(Error::Missing("resourceVersion"))?;
        patch["metadata"] = json!({ "resourceVersion": version });
    }
    // A merge patch leaves out what is `None`: an ended run's reservation is
    // removed explicitly (it held budget only while the run was active).
    if new_phase.is_terminal() && status.reserved_usd.is_none() {
        patch["status"]["reservedUSD"] = serde_json::Value::Null;
    }
    let written = api
        .patch_status(&run.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    if let Some(uid) = run.uid() {
        ctx.seen.wrote(&uid, written.metadata.resource_version.as_deref());
    }
    if let Some(id) = comment {
        ctx.feedback.recorded(run, id);
    }
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

/// For an automatic review: whether the pull request changes a path the
/// policy's `triggers.review.paths` asks for (GitHub's file list), and the
/// older reviews of the same pull request still going, which this one
/// supersedes: each gets a `Superseded` cancel request, which its own
/// reconcile carries out (`cancel::cancel_run`). `Err` is the denial (a
/// failed lookup denies: fail closed).
async fn review_admission(
    run: &ClaudeRun,
    policy: &ClaudeRunPolicy,
    ctx: &Context,
) -> Result<(), (&'static str, String)> {
    let paths = &policy.spec.triggers.review.paths;
    if !paths.is_empty() {
        let (owner, repo) = run.spec.repository.split_once('/').unwrap_or_default();
        let files = async {
            let installation = installation(ctx, policy, owner, repo).await?;
            ctx.github
                .pull_files(installation, owner, repo, run.spec.trigger.number)
                .await
                .map_err(|e| Error::GitHub(e.to_string()))
        };
        let files = files.await.map_err(|e| {
            (
                reasons::AUTHORIZATION_UNAVAILABLE,
                format!("listing the pull request's files: {e}"),
            )
        })?;
        admission::matching::review_paths(paths, &files).map_err(|s| (s.reason, s.message))?;
    }
    let ns = run.namespace().unwrap_or_default();
    let created = run.creation_timestamp().map(|t| t.0);
    let trigger = &run.spec.trigger;
    let request = CancelRequest {
        kind: CancelKind::Superseded,
        login: trigger.actor.login.clone(),
        id: trigger.actor.id,
        comment_id: None,
        delivery_id: trigger.delivery_id.clone(),
    };
    let key = request.annotation_key();
    let value = serde_json::to_string(&request).map_err(|e| (reasons::AUTHORIZATION_UNAVAILABLE, e.to_string()))?;
    for older in ctx.runs.state() {
        let t = &older.spec.trigger;
        let same_pull = older.namespace().as_deref() == Some(ns.as_str())
            && older.spec.repository.eq_ignore_ascii_case(&run.spec.repository)
            && t.number == run.spec.trigger.number
            && t.is_review();
        let going = !older.status.as_ref().is_some_and(|s| s.phase.is_terminal());
        let is_older = older.creation_timestamp().map(|t| t.0) < created && older.name_any() != run.name_any();
        let recorded = older.annotations().contains_key(&key);
        if same_pull && going && is_older && !recorded && cancel_has_room(older.annotations(), &request) {
            let patch = json!({"metadata": {"annotations": {&key: &value}}});
            let api: Api<ClaudeRun> = Api::namespaced(ctx.client.clone(), &ns);
            if let Err(e) = api
                .patch(&older.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::warn!(run = %older.name_any(), error = %e, "marking a superseded review failed");
            }
        }
    }
    Ok(())
}

/// The admission step: authorization against GitHub, then the budget.
async fn admit(run: &ClaudeRun, ctx: &Context, status: ClaudeRunStatus) -> Result<Action> {
    let policy = match policy_of(run, ctx) {
        Some(policy) => policy,
        None => return deny_missing_policy(run, ctx, status).await,
    };
    if !crate::admission::matching::PolicyMatcher::of_patterns(&policy.spec.repositories).covers(&run.spec.repository) {
        return deny(
            run,
            ctx,
            status,
            reasons::NO_MATCHING_POLICY,
            format!("policy {} does not cover {}", run.spec.policy_name, run.spec.repository),
        )
        .await;
    }
    // Tenancy, and the same routing as the receiver's: a policy outside its
    // namespace's grant, or one that another policy outranks on this
    // repository, admits nothing (Manual runs included).
    if let Err(v) = ctx
        .settings
        .tenancy
        .check_policy(&policy_namespace(&policy), &policy.spec)
    {
        return deny(run, ctx, status, v.reason, v.message).await;
    }
    match crate::tenancy::route(&run.spec.repository, &ctx.policies.state(), &ctx.settings.tenancy) {
        crate::tenancy::Route::To { policy: winner, .. } if same_policy(&winner, &policy) => {}
        crate::tenancy::Route::To { policy: winner, .. } => {
            let message = format!(
                "{} is served by policy {}/{}",
                run.spec.repository,
                policy_namespace(&winner),
                winner.name_any()
            );
            return deny(run, ctx, status, reasons::OVERLAP_LOST, message).await;
        }
        crate::tenancy::Route::None => {
            let message = format!("no policy may serve {}", run.spec.repository);
            return deny(run, ctx, status, reasons::NO_MATCHING_POLICY, message).await;
        }
    }
    // A Manual run is authorized as its apiserver-vouched requester only,
    // never as the GitHub login in its spec (see admission::authorize_manual).
    let manual = admission::authorize_manual(&run.spec, &policy.spec.authorization.manual_runs);
    if let Some(AuthzDecision::Deny { reason, message }) = manual {
        return deny(run, ctx, status, reason, message).await;
    }
    if run.spec.trigger.is_review()
        && let Err((reason, message)) = review_admission(run, &policy, ctx).await
    {
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
        AuthzDecision::AwaitApproval { outsider, message } => {
            wait_for_approval(run, ctx, &policy, status, outsider, message).await
        }
        AuthzDecision::Admit => admit_within_budget(run, ctx, &policy, status, None, Some(trigger)).await,
    }
}

fn policy_namespace(policy: &ClaudeRunPolicy) -> String {
    policy.namespace().unwrap_or_default()
}

fn same_policy(a: &ClaudeRunPolicy, b: &ClaudeRunPolicy) -> bool {
    a.namespace() == b.namespace() && a.name_any() == b.name_any()
}

/// Sets the run waiting for approval, within the policy's bound of
/// outsiders' runs waiting on one repository (`maxWaitingRuns`), decided
/// under the policy's lock: past it the run is denied `TooManyWaitingRuns`.
/// A waiting run asks GitHub nothing until an approval comment comes.
async fn wait_for_approval(
    run: &ClaudeRun,
    ctx: &Context,
    policy: &ClaudeRunPolicy,
    mut status: ClaudeRunStatus,
    outsider: bool,
    message: String,
) -> Result<Action> {
    let ns = run.namespace().unwrap_or_default();
    let lock = ctx.ledger.policy(&ns, &run.spec.policy_name);
    let mut ledger = lock.lock().await;
    if outsider {
        let name = run.name_any();
        let cached = ctx.runs.state();
        let decided: std::collections::HashSet<String> = cached
            .iter()
            .filter(|r| r.namespace().as_deref() == Some(&ns))
            .filter(|r| r.status.as_ref().is_some_and(|s| s.phase != Phase::Pending))
            .map(|r| r.name_any())
            .collect();
        ledger.prune_waiting(|n| decided.contains(n));
        let waiting = waiting_outsiders(&cached, &ns, &run.spec.repository, &name)
            + ledger
                .waiting
                .iter()
                .filter(|(n, (repo, _))| **n != name && repo.eq_ignore_ascii_case(&run.spec.repository))
                .count();
        if !admission::may_wait(&policy.spec.authorization, waiting) {
            drop(ledger);
            let message = format!(
                "{waiting} runs of people outside the policy already wait for approval on {} (maxWaitingRuns {})",
                run.spec.repository, policy.spec.authorization.max_waiting_runs
            );
            return deny(run, ctx, status, reasons::TOO_MANY_WAITING_RUNS, message).await;
        }
    }
    let reason = if outsider {
        reasons::AWAITING_APPROVAL
    } else {
        reasons::APPROVAL_REQUIRED
    };
    let t = now();
    status.phase = Phase::AwaitingApproval;
    status.admission = Some(Admission {
        decision: Decision::AwaitApproval,
        reason: reason.into(),
        message: message.clone(),
        checked_at: t.clone(),
        approved_by: None,
    });
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
    if outsider {
        ledger
            .waiting
            .insert(run.name_any(), (run.spec.repository.clone(), std::time::Instant::now()));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Outsiders' runs the cache shows waiting for approval on `repository` in
/// namespace `ns`, other than `except`.
fn waiting_outsiders(runs: &[Arc<ClaudeRun>], ns: &str, repository: &str, except: &str) -> usize {
    runs.iter()
        .filter(|r| r.namespace().as_deref() == Some(ns) && r.name_any() != except)
        .filter(|r| r.spec.repository.eq_ignore_ascii_case(repository))
        .filter(|r| {
            r.status.as_ref().is_some_and(|s| {
                s.phase == Phase::AwaitingApproval
                    && s.admission
                        .as_ref()
                        .is_some_and(|a| a.reason == reasons::AWAITING_APPROVAL)
            })
        })
        .count()
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
/// Under `github.pullRequestPush: PullRequestBranch` the pull request is
/// always looked up: the branch a run may push and whether it is a fork's
/// come from GitHub's answer, never from the payload (a fork by either
/// account is a fork), and a head that is the default branch is not used.
async fn resolve_trigger(
    run: &ClaudeRun,
    policy: &ClaudeRunPolicy,
    ctx: &Context,
) -> Result<Trigger, admission::Unavailable> {
    let mut trigger = run.spec.trigger.clone();
    let to_pull_request_branch = policy.spec.github.pull_request_push == PullRequestPush::PullRequestBranch;
    if trigger.is_pull_request && to_pull_request_branch {
        let head = pull_head(run, policy, ctx, trigger.number).await?;
        trigger.head_sha = trigger.head_sha.or(Some(head.sha.clone()));
        trigger.fork = trigger.fork || head.fork;
        trigger.head_ref = Some(head.ref_.clone());
        let refused = if trigger.fork {
            Some(format!(
                "the pull request's head is in a fork ({}): the run is read-only and pushes nothing",
                head.repo_full_name.as_deref().unwrap_or("deleted repository")
            ))
        } else if head.default_branch.as_deref() == Some(head.ref_.as_str()) {
            trigger.head_ref = None;
            Some(format!(
                "the pull request's head branch {} is the repository's default branch: the run pushes to {} instead",
                head.ref_,
                sandbox::push_branch(&run.name_any())
            ))
        } else if !sandbox::is_branch_name(&head.ref_) {
            trigger.head_ref = None;
            Some(format!(
                "the pull request's head branch is not a plain branch name: the run pushes to {} instead",
                sandbox::push_branch(&run.name_any())
            ))
        } else {
            None
        };
        if let Some(message) = refused {
            tracing::info!(run = %run.name_any(), reason = reasons::PULL_REQUEST_BRANCH_REFUSED, %message, "push target");
            publish(
                ctx,
                run,
                EventType::Normal,
                reasons::PULL_REQUEST_BRANCH_REFUSED,
                message,
                "Provision",
            );
        }
        return Ok(trigger);
    }
    if trigger.is_pull_request && trigger.head_sha.is_none() {
        let head = pull_head(run, policy, ctx, trigger.number).await?;
        trigger.head_sha = Some(head.sha);
        trigger.head_ref = Some(head.ref_);
        trigger.fork = head.fork;
    }
    Ok(trigger)
}

/// The run's repository as owner and name, and the App installation that serves it.
async fn repository_installation<'r>(
    run: &'r ClaudeRun,
    policy: &ClaudeRunPolicy,
    ctx: &Context,
) -> Result<(&'r str, &'r str, i64), admission::Unavailable> {
    let (owner, repo) = run
        .spec
        .repository
        .split_once('/')
        .ok_or_else(|| admission::Unavailable::new("malformed repository"))?;
    let installation = installation(ctx, policy, owner, repo)
        .await
        .map_err(|e| admission::Unavailable::new(e.to_string()))?;
    Ok((owner, repo, installation))
}

/// The run's pull request `number` as GitHub describes it now.
async fn pull_head(
    run: &ClaudeRun,
    policy: &ClaudeRunPolicy,
    ctx: &Context,
    number: i64,
) -> Result<crate::github::client::PullHead, admission::Unavailable> {
    let (owner, repo, installation) = repository_installation(run, policy, ctx).await?;
    ctx.github
        .pull_head(installation, owner, repo, number)
        .await
        .map_err(|e| admission::Unavailable::new(format!("looking up the pull request: {e}")))
}

pub(super) async fn actor_facts(
    run: &ClaudeRun,
    policy: &ClaudeRunPolicy,
    ctx: &Context,
    login: &str,
) -> Result<admission::ActorFacts, admission::Unavailable> {
    let (owner, repo, installation) = repository_installation(run, policy, ctx).await?;
    let auth = &policy.spec.authorization;
    ctx.github
        .actor_facts(installation, owner, repo, login, &auth.organizations, &auth.teams)
        .await
}

pub(super) async fn installation(ctx: &Context, policy: &ClaudeRunPolicy, owner: &str, repo: &str) -> Result<i64> {
    match policy.spec.github.installation_id {
        Some(id) => Ok(id),
        None => ctx
            .github
            .installation_for_repo(owner, repo)
            .await
            .map_err(|e| Error::GitHub(e.to_string())),
    }
}

/// Checks one approval comment with GitHub: its author must pass the
/// policy's checks on their own, and must not be the trigger's author (no
/// lookup for that). `Err` is why it did not approve.
async fn check_approval(
    run: &ClaudeRun,
    policy: &ClaudeRunPolicy,
    ctx: &Context,
    req: &crate::api::labels::ApprovalRequest,
) -> Result<(), &'static str> {
    if req.login.eq_ignore_ascii_case(&run.spec.trigger.actor.login) {
        return Err(reasons::OWN_TRIGGER);
    }
    let approver = crate::api::Actor {
        login: req.login.clone(),
        id: req.id,
        type_: crate::api::ActorType::User,
    };
    let facts = actor_facts(run, policy, ctx, &req.login).await;
    admission::approver_may_approve(&policy.spec.authorization, &run.spec.trigger, &approver, &facts)
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
    let fresh = match fresh_policy(ctx, policy).await {
        Ok(p) => p,
        Err(e) => {
            drop(ledger);
            return Err(e);
        }
    };
    let view = super::policy::budget_view(&fresh, &ctx.runs, &ledger, Timestamp::now(), Some(&run.name_any()));
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
    // The decision is the ledger's from here on: the next one counts this
    // run's reservation whether or not its status is written yet (if the
    // write fails, the run is decided again and meanwhile counted: never
    // under). So the lock is not held across the apiserver's writes.
    ledger.recent.insert(
        run.name_any(),
        super::ledger::Recent {
            actor_id: run.spec.trigger.actor.id,
            at: std::time::Instant::now(),
        },
    );
    drop(ledger);
    // The admission and the first mint are recorded together, before the
    // mint; the reads and applies the sandbox needs go meanwhile.
    status.token_mints = Some(status.token_mints.unwrap_or(0) + 1);
    let (written, prepared) = futures::join!(
        write_status(run, ctx, status.clone(), Some((reasons::ADMITTED, message))),
        prepare(run, ctx, policy, true),
    );
    written?;
    ctx.metrics.runs_admitted.inc();

    // The run as now recorded, so later writes compare against `Admitted`.
    let mut run = run.clone();
    run.status = Some(status.clone());
    if let Some(trigger) = resolved {
        run.spec.trigger = trigger;
    }
    provision(&run, ctx, policy, status, prepared, true).await
}

/// The policy's ledger as the apiserver has it now: the cache may not show
/// the latest charge yet (and a charged run may be deleted already). A
/// policy not charged yet starts from the spend record of a deleted policy
/// of its name. The read is reused while the cache shows the version read
/// and this process wrote no ledger since (`ledger::Ledger::fresh_policy`).
async fn fresh_policy(ctx: &Context, cached: &ClaudeRunPolicy) -> Result<Arc<ClaudeRunPolicy>> {
    let epoch = match ctx.ledger.fresh_policy(cached) {
        super::ledger::FreshPolicy::Known(policy) => return Ok(policy),
        super::ledger::FreshPolicy::Read(epoch) => epoch,
    };
    let policies: Api<ClaudeRunPolicy> = Api::namespaced(ctx.client.clone(), &policy_namespace(cached));
    let read = policies.get(&cached.name_any()).await?;
    let read = Arc::new(super::spend_record::with_effective_ledger(ctx, &read).await?);
    ctx.ledger.remember(read.clone(), epoch);
    Ok(read)
}

/// Most checked approval comments a run's status keeps (the latest).
const MAX_APPROVAL_CHECKS: usize = 20;

/// A waiting run: each approval comment the receiver recorded (one
/// annotation each) is checked with GitHub once, its verdict kept on the
/// status, then removed; the first accepted one admits the run (within the
/// budget). The approval window closes the run.
async fn await_approval(run: &ClaudeRun, ctx: &Context, mut status: ClaudeRunStatus) -> Result<Action> {
    let policy = match policy_of(run, ctx) {
        Some(policy) => policy,
        None => return deny_missing_policy(run, ctx, status).await,
    };
    let window = ctx
        .settings
        .approval_window(policy.spec.authorization.approval_window_hours);
    let created = run
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    let elapsed = Timestamp::now().duration_since(created);
    let expired = elapsed.as_secs() as u64 >= window.as_secs();

    let requests = crate::api::labels::approval_requests(run.annotations());
    let mut fresh: Option<ClaudeRun> = None;
    let mut approved_by = status.approvals.iter().find(|c| c.accepted).map(|c| c.login.clone());
    if !requests.is_empty() {
        let mut checked = false;
        for (_, req) in &requests {
            let Some(req) = req else { continue };
            let seen = status
                .approvals
                .iter()
                .any(|c| c.comment_id.is_some() && c.comment_id == req.comment_id && c.login == req.login);
            // Once one approves, the rest need no lookup.
            if seen || approved_by.is_some() {
                continue;
            }
            let verdict = if expired {
                Err(reasons::APPROVAL_EXPIRED)
            } else {
                check_approval(run, &policy, ctx, req).await
            };
            if verdict.is_err() {
                tracing::info!(run = %run.name_any(), approver = %req.login, reason = ?verdict.err(), "approval not accepted");
            }
            status.approvals.push(crate::api::ApprovalCheck {
                login: req.login.clone(),
                comment_id: req.comment_id,
                accepted: verdict.is_ok(),
                reason: verdict.err().map(str::to_owned),
                checked_at: now(),
            });
            if verdict.is_ok() {
                approved_by = Some(req.login.clone());
            }
            checked = true;
        }
        if status.approvals.len() > MAX_APPROVAL_CHECKS {
            let over = status.approvals.len() - MAX_APPROVAL_CHECKS;
            // Drop the oldest rejected ones; an accepted one stays.
            let mut dropped = 0;
            status.approvals.retain(|c| {
                let drop = dropped < over && !c.accepted;
                dropped += usize::from(drop);
                !drop
            });
        }
        // The verdicts first, so none is asked again; then the requests go.
        if checked {
            write_status(run, ctx, status.clone(), None).await?;
        }
        let ns = run.namespace().unwrap_or_default();
        let api: Api<ClaudeRun> = Api::namespaced(ctx.client.clone(), &ns);
        let removed: serde_json::Map<String, serde_json::Value> = requests
            .iter()
            .map(|(key, _)| (key.clone(), serde_json::Value::Null))
            .collect();
        let patch = json!({"metadata": {"annotations": removed}});
        let written = api
            .patch(&run.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        // The admission's write is conditional on the run as last written.
        fresh = Some(written);
    }
    if let Some(who) = approved_by {
        let run = fresh.as_ref().unwrap_or(run);
        return admit_within_budget(run, ctx, &policy, status, Some(who), None).await;
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
    let name = sandbox::pod_name(&run.name_any());
    // The cache first; a miss (a pod it has not seen yet, or none) is asked.
    let cached = ctx
        .pods
        .get(&kube::runtime::reflector::ObjectRef::new(&name).within(&ns));
    let pod = match cached {
        Some(pod) => Some(pod),
        None => Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&name)
            .await?
            .map(Arc::new),
    };
    if let Some(pod) = pod {
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
    let prepared = prepare(run, ctx, &policy, false).await;
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

/// What provisioning finds before it mints: the run's Secret and grant if
/// they exist already, the Anthropic key (if its Secret in the gateway's
/// namespace has it), and the NetworkPolicy (and the namespace's runner
/// service account) in place.
struct Prepared {
    run_secret: Option<Secret>,
    grant: Option<Secret>,
    anthropic_key: Option<secrecy::SecretString>,
    network_policy: String,
}

/// The run's grant Secrets' API: the gateway's namespace.
pub(super) fn grants(ctx: &Context) -> Api<Secret> {
    Api::namespaced(ctx.client.clone(), &ctx.settings.gateway.namespace)
}

/// The name of the run's grant.
pub(super) fn grant_name_of(run: &ClaudeRun) -> String {
    grant::grant_name(&run.namespace().unwrap_or_default(), &run.name_any())
}

/// The steps that do not depend on each other or on the token, at once.
/// `just_admitted`: neither the run's Secret nor its grant is looked up
/// first, as a run admitted in this very reconcile has neither: the Secret
/// is created and only a conflict is read; a grant left by an earlier run
/// of the name makes the grant's create conflict, which revokes the token
/// just minted and provisions again (then the grant is read).
async fn prepare(
    run: &ClaudeRun,
    ctx: &Context,
    policy: &ClaudeRunPolicy,
    just_admitted: bool,
) -> Result<Prepared, Step> {
    let ns = run.namespace().unwrap_or_default();
    let uid = run.uid().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret_name = sandbox::secret_name(&run.name_any());
    let key_ref = &policy.spec.runner.anthropic_api_key_secret_ref;
    let gateway_secrets = grants(ctx);
    let fence = async {
        let netpol = sandbox::run_network_policy(run, &ctx.settings.gateway)
            .map_err(|e| Step::Fail("InvalidRun", e.to_string()))?;
        let name = netpol.metadata.name.clone().unwrap_or_default();
        let netpols: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        // Created; only when the name is taken is it read: applying over a
        // NetworkPolicy someone else made would take it over (and perhaps
        // leave their rules in it), so only ours is applied.
        let ensure = async {
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match netpols.create(&pp, &netpol).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(Step::Retry(e.into())),
            }
            let existing = netpols.get_opt(&name).await.map_err(|e| Step::Retry(e.into()))?;
            if existing.is_some_and(|e| !sandbox::controlled_by(&e.metadata, &uid)) {
                return Err(Step::Fail(
                    reasons::SANDBOX_CONFLICT,
                    format!("networkpolicy {name} exists and is not this run's"),
                ));
            }
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            netpols
                .patch(&name, &pp, &Patch::Apply(&netpol))
                .await
                .map_err(|e| Step::Retry(e.into()))?;
            Ok(())
        };
        let (_, ensured) = futures::join!(ensure_service_account(ctx, &ns), ensure);
        ensured?;
        Ok(name)
    };
    let grant_name = grant_name_of(run);
    let unless_just_admitted = |api: &Api<Secret>, name: String| {
        let api = api.clone();
        async move {
            match just_admitted {
                true => Ok(None),
                false => api.get_opt(&name).await,
            }
        }
    };
    let (existing, grant, key, fence) = futures::join!(
        unless_just_admitted(&secrets, secret_name),
        unless_just_admitted(&gateway_secrets, grant_name),
        ctx.gateway_secrets.anthropic_key(&key_ref.name, &key_ref.key),
        fence
    );
    let run_secret = existing.map_err(|e| Step::Retry(e.into()))?;
    let grant = grant.map_err(|e| Step::Retry(e.into()))?;
    let anthropic_key = key.map_err(|e| Step::Retry(e.into()))?;
    Ok(Prepared {
        run_secret,
        grant,
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

/// Creates the run's Secret (a new capability, the prompt) unless it exists,
/// then the grant (mints the token) unless it exists, then the pod.
/// `admitted_now`: the admission write just recorded this mint.
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
    let uid = run.uid().unwrap_or_default();
    let secret_name = sandbox::secret_name(&run.name_any());

    // 1. The run's Secret: the capability, no credential. Nothing is minted
    // for a run whose Secret name is taken by someone else.
    let capability = match ensure_run_secret(run, ctx, policy, prepared.run_secret).await {
        Ok(c) => c,
        Err(step) => return step.settle(run, ctx, status).await,
    };

    // 2. The grant: the only place the token and key ever live. Every mint
    // is recorded on the run before it happens.
    match prepared.grant {
        Some(grant) if sandbox::grant_matches(&grant, &uid, capability.expose_secret()) => {
            if status.token_expires_at.is_none() {
                status.token_expires_at = sandbox::facts_of(&grant)
                    .and_then(|f| f.expires_at.parse::<Timestamp>().ok())
                    .map(Time);
            }
        }
        Some(_) => {
            // Left by an earlier run of this name, or made for a capability
            // that is gone: it must not serve this run.
            revoke_and_delete_grant(ctx, &grant_name_of(run)).await?;
            return Err(Error::Invalid("a stale grant was removed; provisioning again".into()));
        }
        None => {
            // Only needed to mint: a run whose grant exists goes on without it.
            let Some(key) = &prepared.anthropic_key else {
                let key_ref = &policy.spec.runner.anthropic_api_key_secret_ref;
                let message = format!(
                    "secret {} in the gateway's namespace {} has no key {}",
                    key_ref.name, ctx.settings.gateway.namespace, key_ref.key
                );
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
                            "mint {} for this run: an earlier mint's answer never reached the run's grant \
                             (restart or failed call); if GitHub issued that token, no one holds it and it \
                             expires within the hour",
                            previous + 1
                        ),
                    )
                });
                // The phase stays as it is, so `run` needs no update.
                write_status(run, ctx, status.clone(), note).await?;
            }
            match create_grant(run, ctx, policy, &status, key, &capability).await {
                Ok(expires) => status.token_expires_at = Some(expires),
                Err(step) => return step.settle(run, ctx, status).await,
            }
        }
    }
    status.secret_name = Some(secret_name.clone());
    status.network_policy_name = Some(prepared.network_policy);

    // 3. The pod, only now that its Secret, grant and fence exist. The grant
    // may be older than the policy as it is now (a run that waited for quota
    // was minted at admission): the pod is built from the policy now, so its
    // image is checked against the tenancy grant again.
    if let Err(v) = ctx
        .settings
        .tenancy
        .check_policy(&policy_namespace(policy), &policy.spec)
    {
        return fail(run, ctx, status, v.reason, v.message, Phase::Failed).await;
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod = match sandbox::runner_pod(&policy.spec, run, &secret_name, &ctx.settings.runner) {
        Ok(p) => p,
        Err(e) => return fail(run, ctx, status, "InvalidPolicy", e.to_string(), Phase::Failed).await,
    };
    let pod_name = sandbox::pod_name(&run.name_any());
    match pods.create(&PostParams::default(), &pod).await {
        Ok(created) => status.pod_uid = created.metadata.uid,
        Err(kube::Error::Api(s)) if s.code == 409 => match pods.get_opt(&pod_name).await? {
            // Ours, from an earlier attempt whose answer was lost.
            Some(existing) if pod_is_the_runs(run, ctx, &status, &existing) => {
                status.pod_uid = existing.metadata.uid.clone();
            }
            Some(_) => {
                let message = format!("pod {pod_name} exists and is not this run's");
                return conflict(run, ctx, status, message).await;
            }
            None => return Err(Error::Missing("pod (deleted concurrently)")),
        },
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
    status.pod_name = Some(pod_name);
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
            "secret, grant, network policy and pod created",
            run.metadata.generation,
            t,
        ),
    );
    // No Event: the SandboxReady condition says it, and the pod's own Events
    // (scheduled, started) follow.
    write_status(run, ctx, status, None).await?;
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// The run's capability: from its Secret when that exists and is the run's,
/// else from a new Secret holding a new one and the prompt (the instruction
/// and the thread's context, read now). A Secret of that name that is not
/// the run's fails the run.
async fn ensure_run_secret(
    run: &ClaudeRun,
    ctx: &Context,
    policy: &ClaudeRunPolicy,
    existing: Option<Secret>,
) -> Result<secrecy::SecretString, Step> {
    let ns = run.namespace().unwrap_or_default();
    let uid = run.uid().unwrap_or_default();
    let name = sandbox::secret_name(&run.name_any());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = match existing {
        Some(s) => s,
        None => {
            let capability = grant::new_capability();
            let prompt = super::context::prompt(run, ctx, policy).await;
            let secret =
                sandbox::run_secret(run, &capability, &prompt).map_err(|e| Step::Fail("InvalidRun", e.to_string()))?;
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => return Ok(secrecy::SecretString::from(capability)),
                Err(kube::Error::Api(s)) if s.code == 409 => secrets
                    .get_opt(&name)
                    .await
                    .map_err(|e| Step::Retry(e.into()))?
                    .ok_or(Step::Retry(Error::Missing("run secret (deleted concurrently)")))?,
                Err(e) => return Err(Step::Retry(e.into())),
            }
        }
    };
    if !sandbox::controlled_by(&existing.metadata, &uid) {
        return Err(Step::Fail(
            reasons::SANDBOX_CONFLICT,
            format!("secret {name} exists and is not this run's"),
        ));
    }
    existing
        .data
        .and_then(|mut d| d.remove(sandbox::SECRET_KEY_CAPABILITY))
        .and_then(|v| String::from_utf8(v.0).ok())
        .filter(|c| c.starts_with(grant::CAPABILITY_PREFIX))
        .map(secrecy::SecretString::from)
        .ok_or_else(|| Step::Fail(reasons::SANDBOX_CONFLICT, format!("secret {name} holds no capability")))
}

/// Mints the run's token and stores it, with the API key, the capability's
/// hash and the run's facts, in the run's grant. Returns the token's expiry.
/// A token that reaches no grant is revoked at once.
async fn create_grant(
    run: &ClaudeRun,
    ctx: &Context,
    policy: &ClaudeRunPolicy,
    status: &ClaudeRunStatus,
    key: &secrecy::SecretString,
    capability: &secrecy::SecretString,
) -> Result<Time, Step> {
    let (owner, repo) = run.spec.repository.split_once('/').unwrap_or_default();
    // The policy may have changed since admission: never mint past its tenancy grant.
    if let Err(v) = ctx
        .settings
        .tenancy
        .check_policy(&policy_namespace(policy), &policy.spec)
    {
        return Err(Step::Fail(v.reason, v.message));
    }
    let installation = installation(ctx, policy, owner, repo).await.map_err(Step::Retry)?;
    let permissions = if run.spec.trigger.is_review() {
        admission::review_token_permissions(&policy.spec.github)
    } else {
        admission::token_permissions(
            &policy.spec.github,
            run.spec.trigger.fork,
            policy.spec.authorization.allow_fork_write,
        )
    };
    let minted = ctx
        .github
        .mint_token(installation, repo, &permissions)
        .await
        .map_err(|e| Step::Retry(Error::GitHub(e.to_string())))?;
    let expires = Time(minted.expires_at);
    let max_cost = status
        .reserved_usd
        .clone()
        .unwrap_or_else(|| policy.spec.budget.max_cost_per_run_usd.clone());
    let built = sandbox::grant_facts(&policy.spec, run, &max_cost, minted.expires_at).and_then(|facts| {
        let credentials = sandbox::GrantCredentials {
            github_token: minted.token.expose_secret(),
            anthropic_key: key.expose_secret(),
            capability: capability.expose_secret(),
        };
        sandbox::grant_secret(run, &ctx.settings.gateway.namespace, &facts, &credentials)
    });
    let grant = match built {
        Ok(g) => g,
        Err(e) => {
            revoke_unused(ctx, &minted.token).await;
            return Err(Step::Fail("InvalidRun", e.to_string()));
        }
    };
    match grants(ctx).create(&PostParams::default(), &grant).await {
        Ok(_) => Ok(expires),
        Err(err) => {
            // The token is in no grant: revoke it now so it cannot outlive this attempt.
            revoke_unused(ctx, &minted.token).await;
            match err {
                kube::Error::Api(s) if s.code == 409 => {
                    Err(Step::Retry(Error::Missing("grant (created concurrently)")))
                }
                e => Err(Step::Retry(e.into())),
            }
        }
    }
}

/// Revokes a token that reached no grant.
async fn revoke_unused(ctx: &Context, token: &secrecy::SecretString) {
    if let Err(e) = ctx.github.revoke_token(token).await {
        tracing::warn!(error = %e, "revoking an unused token failed");
    }
}

/// Whether `pod` is the run's own runner pod: the one whose uid the run
/// recorded; before that is recorded, one controlled by the run, running the
/// policy's image and mounting only the run's Secret.
fn pod_is_the_runs(run: &ClaudeRun, ctx: &Context, status: &ClaudeRunStatus, pod: &Pod) -> bool {
    let uid = run.uid().unwrap_or_default();
    match (&status.pod_uid, &pod.metadata.uid) {
        (Some(recorded), Some(actual)) => recorded == actual && sandbox::controlled_by(&pod.metadata, &uid),
        (Some(_), None) => false,
        (None, _) => policy_of(run, ctx).is_some_and(|policy| {
            sandbox::is_our_pod(
                pod,
                &uid,
                &policy.spec.runner.image,
                &sandbox::secret_name(&run.name_any()),
            )
        }),
    }
}

/// Something else holds one of the run's children's names: the run's
/// credentials go at once (token revoked, grant deleted) and it fails.
async fn conflict(run: &ClaudeRun, ctx: &Context, status: ClaudeRunStatus, message: String) -> Result<Action> {
    tracing::warn!(run = %run.name_any(), %message, "sandbox conflict");
    revoke_and_delete(run, ctx).await?;
    fail(run, ctx, status, reasons::SANDBOX_CONFLICT, message, Phase::Failed).await
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

/// Follows the pod to its end, copying the run's meter onto its status while
/// it runs. A pod that is not the run's is never followed.
async fn follow(run: &ClaudeRun, ctx: &Context, mut status: ClaudeRunStatus, pod: &Pod) -> Result<Action> {
    if !pod_is_the_runs(run, ctx, &status, pod) {
        let message = format!("pod {} is not this run's", pod.name_any());
        return conflict(run, ctx, status, message).await;
    }
    let first_sight = status.pod_uid.is_none() || status.pod_name.is_none();
    if first_sight {
        status.pod_uid = pod.metadata.uid.clone();
        status.pod_name = pod.metadata.name.clone();
    }
    let pod_status = pod.status.clone().unwrap_or_default();
    match pod_status.phase.as_deref() {
        Some("Running") if status.phase != Phase::Running => {
            status.phase = Phase::Running;
            status.start_time = pod_status.start_time.clone().or_else(|| Some(now()));
            // The meter so far rides on this write, from the watch's copy of
            // the grant (no read): the first meter copy then changes nothing.
            if let Some(Ok(meter)) = ctx.gateway_secrets.cached_meter(&grant_name_of(run)) {
                let (cost, tool) = progress_of(&meter);
                (status.cost, status.last_tool) = (Some(cost), tool);
            }
            // No Event: the phase is on the status, and the pod's own Events
            // say it started.
            write_status(run, ctx, status, None).await?;
            Ok(Action::requeue(ctx.settings.meter_interval))
        }
        Some("Running") => copy_meter(run, ctx, status, first_sight).await,
        Some("Succeeded") | Some("Failed") => complete(run, ctx, status, pod).await,
        _ => {
            if first_sight {
                write_status(run, ctx, status, None).await?;
            }
            Ok(Action::requeue(Duration::from_secs(60)))
        }
    }
}

/// The meter on a grant (see [`gateway_secrets::meter_of`]).
fn meter_of(grant: &Secret) -> Result<Meter, serde_json::Error> {
    gateway_secrets::meter_of(grant.annotations())
}

/// A running run's cost so far and the last tool shown, from its meter.
fn progress_of(meter: &Meter) -> (crate::api::Cost, Option<String>) {
    let tool = meter.last_tool.as_deref().and_then(super::feedback::tool_name);
    (cost::metered_cost(meter, false), tool)
}

/// While the run runs: its cost so far and last tool, as metered, onto its
/// status when they changed (so `kubectl get` shows them grow), and on its
/// GitHub comment (at a bounded rate: see `feedback::Feedbacks::progress`).
async fn copy_meter(run: &ClaudeRun, ctx: &Context, mut status: ClaudeRunStatus, dirty: bool) -> Result<Action> {
    let next = Action::requeue(ctx.settings.meter_interval);
    // Pod and status events bring a running run back more often than its
    // meter needs reading.
    let uid = run.uid().unwrap_or_default();
    if !dirty && let Some(left) = ctx.seen.meter_wait(&uid, ctx.settings.meter_interval) {
        return Ok(Action::requeue(left));
    }
    // The watch's copy of the grant, else (not seen yet) the apiserver's.
    let grant_name = grant_name_of(run);
    let meter = match ctx.gateway_secrets.cached_meter(&grant_name) {
        Some(meter) => Some(meter),
        None => grants(ctx).get_opt(&grant_name).await?.map(|g| meter_of(&g)),
    };
    let meter = match meter {
        Some(Ok(meter)) => Some(meter),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "the run's meter does not parse");
            None
        }
        None => None,
    };
    let (cost, tool) = match meter.as_ref().map(progress_of) {
        Some((cost, tool)) => (Some(cost), tool),
        None => (None, None),
    };
    let changed = cost.is_some() && (status.cost != cost || status.last_tool != tool);
    // A merge patch leaves out what is `None`: a tool no longer shown is
    // removed explicitly.
    let cleared = changed && status.last_tool.is_some() && tool.is_none();
    if changed {
        status.cost = cost;
        status.last_tool = tool;
    }
    if changed || dirty {
        write_status(run, ctx, status.clone(), None).await?;
    }
    if cleared {
        let api: Api<ClaudeRun> = Api::namespaced(ctx.client.clone(), &run.namespace().unwrap_or_default());
        let patch = json!({"status": {"lastTool": null}});
        api.patch_status(&run.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    if let Some(policy) = policy_of(run, ctx) {
        ctx.feedback.progress(ctx.github.clone(), run.clone(), policy, status);
    }
    Ok(next)
}

/// What a run that had a pod is charged, from its grant's meter (settled
/// plus open reservations); `None` when there is no usable meter.
///
/// On a closed grant, waits (a few seconds at most) for what is still open:
/// the gateway replicas give their tranches of the budget back as soon as
/// they see the grant closed, and a tranche still held is charged in full.
pub(super) async fn final_meter(run: &ClaudeRun, ctx: &Context) -> Result<Option<Meter>> {
    let deadline = tokio::time::Instant::now() + ctx.settings.drain_wait.min(FINAL_METER_WAIT);
    loop {
        let Some(grant) = grants(ctx).get_opt(&grant_name_of(run)).await? else {
            return Ok(None);
        };
        let meter = meter_of(&grant).ok();
        let closed = grant.annotations().contains_key(grant::ANNOTATION_CLOSED);
        let open = meter.as_ref().is_some_and(|m| m.open() > 0);
        if !closed || !open || tokio::time::Instant::now() >= deadline {
            return Ok(meter);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The longest [`final_meter`] waits for a closed grant's meter to settle.
const FINAL_METER_WAIT: Duration = Duration::from_secs(5);

/// Closes the grant `name`: the gateway accepts no new request for its run
/// (requests in flight settle). A missing grant is closed already.
pub(super) async fn close_grant(ctx: &Context, name: &str) -> Result<()> {
    let patch = json!({"metadata": {"annotations": {grant::ANNOTATION_CLOSED: Timestamp::now().to_string()}}});
    match grants(ctx)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The cost of a run charged its whole reservation (no usable meter).
pub(super) fn reservation_cost(usd: Usd) -> crate::api::Cost {
    crate::api::Cost {
        usd: usd.to_string(),
        input_tokens: 0,
        output_tokens: 0,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: 0,
        turns: 0,
        models: vec![],
        source: CostSource::Estimated,
    }
}

/// The run's reservation: as recorded, else the policy's per-run maximum
/// (never less).
pub(super) fn reservation_of(status: &ClaudeRunStatus, policy: Option<&ClaudeRunPolicy>) -> Usd {
    let per_run = policy.and_then(|p| Usd::parse(&p.spec.budget.max_cost_per_run_usd).ok());
    status
        .reserved_usd
        .as_deref()
        .and_then(|r| Usd::parse(r).ok())
        .or(per_run)
        .unwrap_or(Usd::ZERO)
}

/// Records the outcome and cost of a finished pod: closes the run's grant,
/// waits (bounded) for the requests in flight to settle, then charges the
/// meter, open reservations included. The runner's report says how the run
/// ended; its cost is a cross-check only.
async fn complete(run: &ClaudeRun, ctx: &Context, mut status: ClaudeRunStatus, pod: &Pod) -> Result<Action> {
    ctx.seen.unmeter(&run.uid().unwrap_or_default());
    let grants = grants(ctx);
    let grant_name = grant_name_of(run);
    let grant = grants.get_opt(&grant_name).await?;
    if let Some(g) = &grant {
        let closed_at = g
            .annotations()
            .get(grant::ANNOTATION_CLOSED)
            .and_then(|t| t.parse::<Timestamp>().ok());
        let Some(closed_at) = closed_at else {
            close_grant(ctx, &grant_name).await?;
            // Read the meter again once closed: a request may have been reserved meanwhile.
            return Ok(Action::requeue(Duration::from_secs(1)));
        };
        let draining = meter_of(g).is_ok_and(|m| m.open() > 0);
        let waited = Timestamp::now().duration_since(closed_at).as_secs().max(0) as u64;
        if draining && waited < ctx.settings.drain_wait.as_secs() {
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
    }

    let pod_status = pod.status.clone().unwrap_or_default();
    let terminated = pod_status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.name == sandbox::RUNNER_CONTAINER))
        .and_then(|c| c.state.as_ref()?.terminated.clone());
    let message = terminated.as_ref().and_then(|t| t.message.clone());
    let report = cost::parse_report(message.as_deref());
    let policy = policy_of(run, ctx);
    let meter = grant.as_ref().and_then(|g| meter_of(g).ok());
    let (cost, cost_reason, cost_message) = match &meter {
        Some(m) => {
            let cost = cost::metered_cost(m, true);
            let message = format!(
                "the gateway metered ${} over {} model requests{}",
                cost.usd,
                m.requests,
                if m.open() == 0 {
                    String::new()
                } else {
                    format!(", {} unsettled and charged in full", m.open())
                }
            );
            (cost, reasons::METERED, message)
        }
        None => {
            let reservation = reservation_of(&status, policy.as_deref());
            let message =
                format!("the run's meter is gone or unreadable; charged the full reservation of ${reservation}");
            (reservation_cost(reservation), reasons::METER_MISSING, message)
        }
    };
    // The runner's own figure can only raise a flag.
    let mismatch = match (&meter, &report) {
        (Some(_), Ok(r)) => Usd::parse(&cost.usd)
            .ok()
            .and_then(|metered| cost::report_below_meter(r, metered)),
        _ => None,
    };

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
            cost_reason,
            cost_message,
            run.metadata.generation,
            t.clone(),
        ),
    );
    if let Some(message) = &mismatch {
        conditions::set_condition(
            &mut status.conditions,
            conditions::condition(
                conditions::COST_REPORT_MISMATCH,
                true,
                reasons::COST_REPORT_MISMATCH,
                message.clone(),
                run.metadata.generation,
                t.clone(),
            ),
        );
        publish(
            ctx,
            run,
            EventType::Warning,
            reasons::COST_REPORT_MISMATCH,
            message.clone(),
            "Completed",
        );
    }
    status.cost = Some(cost);
    status.phase = phase;
    status.outcome = Some(reason.clone());
    status.completion_time = Some(t);
    status.reserved_usd = None;
    let note = if estimated {
        format!("run ended ({reason}); no usable meter, charged its reservation")
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

/// Publishes an Event about the run, off the reconcile's path.
pub(super) fn publish(ctx: &Context, run: &ClaudeRun, type_: EventType, reason: &str, note: String, action: &str) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    let (recorder, reference) = (ctx.recorder.clone(), run.object_ref(&()));
    tokio::spawn(async move {
        if let Err(err) = recorder.publish(&event, &reference).await {
            tracing::debug!(error = %err, "publishing an event failed");
        }
    });
}

pub(super) async fn fail(
    run: &ClaudeRun,
    ctx: &Context,
    mut status: ClaudeRunStatus,
    reason: &str,
    message: String,
    phase: Phase,
) -> Result<Action> {
    let t = now();
    // A run that never got a pod spent nothing; one that did is charged its
    // meter (open reservations included), or its reservation without one. A
    // cost already on the status is the running meter's: replaced.
    let charged = if status.pod_name.is_some() {
        match final_meter(run, ctx).await? {
            Some(meter) => cost::metered_cost(&meter, true),
            None => reservation_cost(reservation_of(&status, policy_of(run, ctx).as_deref())),
        }
    } else {
        reservation_cost(Usd::ZERO)
    };
    status.cost = Some(charged);
    status.phase = phase;
    status.outcome = Some(reason.to_owned());
    status.completion_time = Some(t.clone());
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

/// Terminal runs: charge the cost to the policy's ledger, revoke, delete the
/// grant and Secret, then honour retention.
async fn finish(run: &ClaudeRun, ctx: &Context, mut status: ClaudeRunStatus) -> Result<Action> {
    if let Some(cost) = super::charge::to_charge(&status).map_err(Error::Invalid)? {
        let done = status
            .completion_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        super::charge::charge(ctx, run, cost, done).await?;
        status.charged = true;
    }
    // Nothing to look up for a run whose token, grant and Secret are
    // recorded gone, nor for a denied one (denied before any sandbox): every
    // later reconcile of a finished run would otherwise read both again.
    let revoked = status
        .conditions
        .iter()
        .any(|c| c.type_ == conditions::TOKEN_REVOKED && c.status == "True");
    if !revoked && status.phase != Phase::Denied && revoke_and_delete(run, ctx).await? {
        let t = now();
        conditions::set_condition(
            &mut status.conditions,
            conditions::condition(
                conditions::TOKEN_REVOKED,
                true,
                "Revoked",
                "token revoked, grant and secret deleted",
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

    // The pod, for its logs; only ours.
    let ns = run.namespace().unwrap_or_default();
    let pod_keep = ctx.settings.pod_retention(retention.pod_minutes);
    if age >= pod_keep {
        delete_own_pod(run, ctx, &status, &ns).await?;
    }
    // The run itself: after its retention, and only once its cost is in the
    // policy's ledger: spend never depends on runs being kept.
    let hours = match status.phase {
        Phase::Succeeded => retention.succeeded_hours,
        Phase::Denied => retention.denied_hours,
        _ => retention.failed_hours,
    };
    let keep = ctx
        .settings
        .run_retention(Duration::from_secs(hours.max(0) as u64 * 3600));
    if age >= keep && super::charge::accounted(&status) {
        let api: Api<ClaudeRun> = Api::namespaced(ctx.client.clone(), &ns);
        api.delete(&run.name_any(), &DeleteParams::background()).await?;
        return Ok(Action::await_change());
    }
    let next = if age < pod_keep { pod_keep - age } else { keep - age };
    Ok(Action::requeue(
        next.min(Duration::from_secs(3600)).max(Duration::from_secs(1)),
    ))
}

/// Deletes the run's pod if it is the run's (never someone else's pod of the
/// same name), with its uid as a precondition.
pub(super) async fn delete_own_pod(run: &ClaudeRun, ctx: &Context, status: &ClaudeRunStatus, ns: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let Some(pod) = pods.get_opt(&sandbox::pod_name(&run.name_any())).await? else {
        return Ok(());
    };
    let uid = run.uid().unwrap_or_default();
    let recorded_ok = status.pod_uid.is_none() || status.pod_uid == pod.metadata.uid;
    if !sandbox::controlled_by(&pod.metadata, &uid) || !recorded_ok {
        return Ok(());
    }
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match pods.delete(&pod.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Revokes the token of the grant `name` (read from it) and deletes it.
/// True when it did something. A missing grant means both are done.
async fn revoke_and_delete_grant(ctx: &Context, name: &str) -> Result<bool> {
    let grants = grants(ctx);
    let Some(grant) = grants.get_opt(name).await? else {
        return Ok(false);
    };
    let token = grant
        .data
        .as_ref()
        .and_then(|d| d.get(grant::KEY_GITHUB_TOKEN))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .filter(|t| !t.is_empty());
    if let Some(token) = token {
        ctx.github
            .revoke_token(&secrecy::SecretString::from(token))
            .await
            .map_err(|e| Error::GitHub(e.to_string()))?;
    }
    match grants.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Revokes the run's token, deletes its grant and its Secret (only when the
/// Secret is the run's). True when it did something.
pub(super) async fn revoke_and_delete(run: &ClaudeRun, ctx: &Context) -> Result<bool> {
    let mut did = revoke_and_delete_grant(ctx, &grant_name_of(run)).await?;
    let ns = run.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = sandbox::secret_name(&run.name_any());
    if let Some(secret) = secrets.get_opt(&name).await?
        && sandbox::controlled_by(&secret.metadata, &run.uid().unwrap_or_default())
    {
        match secrets.delete(&name, &DeleteParams::default()).await {
            Ok(_) => did = true,
            Err(kube::Error::Api(s)) if s.code == 404 => did = true,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(did)
}

/// The finalizer: whatever phase the run is in, its token must not outlive
/// it, and its cost goes into the policy's ledger first (a deleted run's
/// spend stays spent): its recorded cost once it ended, else, if it had a
/// pod, its meter so far (settled plus open reservations), or its whole
/// reservation when there is no meter. Deleting a run still going cancels
/// it: see `cancel::on_delete`.
async fn cleanup(run: &ClaudeRun, ctx: &Context) -> Result<Action> {
    let status = run.status.clone().unwrap_or_default();
    if !status.phase.is_terminal() {
        return super::cancel::on_delete(run, ctx, status).await;
    }
    if let Some(cost) = super::charge::to_charge(&status).map_err(Error::Invalid)? {
        let done = status
            .completion_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        super::charge::charge(ctx, run, cost, done).await?;
    }
    revoke_and_delete(run, ctx).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_error_keeps_its_kind_through_the_finalizer() {
        use kube::runtime::finalizer::Error as F;
        let kind = |e: F<Error>| super::super::unwrap_finalizer_error(e).metric_label();
        assert_eq!(kind(F::ApplyFailed(Error::GitHub("500".into()))), "github");
        assert_eq!(kind(F::CleanupFailed(Error::Missing("namespace"))), "missing");
        assert_eq!(kind(F::UnnamedObject), "finalizer");
    }

    #[test]
    fn the_reservation_is_recorded_else_the_policys_maximum() {
        let policy = crate::sandbox::fixtures::policy();
        let mut status = ClaudeRunStatus::default();
        assert_eq!(reservation_of(&status, Some(&policy)).to_string(), "5.00");
        assert_eq!(reservation_of(&status, None), Usd::ZERO);
        status.reserved_usd = Some("1.25".into());
        assert_eq!(reservation_of(&status, Some(&policy)).to_string(), "1.25");
        let charged = reservation_cost(Usd::parse("1.25").unwrap());
        assert_eq!((charged.usd.as_str(), charged.source), ("1.25", CostSource::Estimated));
    }
}
