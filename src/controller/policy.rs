//! The `ClaudeRunPolicy` reconciler: keeps the namespace's ResourceQuota and
//! LimitRange in place, reports readiness (within the namespace's tenancy
//! grant, referenced Secrets exist) and overlaps (which policy serves the
//! repositories several claim), and shows the budget status: spend is what the
//! policy's durable ledger (`status.ledger`, see `controller::charge`) says
//! the period's runs were charged, plus finished runs not charged yet, so
//! deleting runs or restarting never lowers it. This reconciler never writes
//! the ledger's totals; it only drops uids of runs whose mark shows.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{LimitRange, ResourceQuota};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::json;

use super::ledger::PolicyLedger;
use super::{Context, Error, FIELD_MANAGER, Result, spend_record};
use crate::api::conditions::{self, reasons};
use crate::api::{BudgetStatus, ClaudeRun, ClaudeRunPolicy, ClaudeRunStatus, Phase};
use crate::cost::{self, Usd};
use crate::tenancy::Tenancy;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};

/// The figures of a policy's current budget period.
#[derive(Debug, Clone)]
pub struct BudgetView {
    pub start: Timestamp,
    pub end: Timestamp,
    pub limit: Usd,
    pub spent: Usd,
    pub reserved: Usd,
    pub active: usize,
    pub runs: usize,
    pub denials: usize,
    /// (actor id, admitted at) of runs admitted in the last hour.
    pub recent_admissions: Vec<(i64, Timestamp)>,
}

impl BudgetView {
    /// Runs of this actor admitted in the hour before now.
    pub fn actor_runs_last_hour(&self, actor_id: i64) -> usize {
        let hour_ago = Timestamp::now() - jiff_hour();
        self.recent_admissions
            .iter()
            .filter(|(a, at)| *a == actor_id && *at >= hour_ago)
            .count()
    }
}

fn jiff_hour() -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_hours(1)
}

fn admitted_at(run: &ClaudeRun) -> Option<Timestamp> {
    let status = run.status.as_ref()?;
    let admission = status.admission.as_ref()?;
    (admission.decision == crate::api::Decision::Admit).then_some(admission.checked_at.0)
}

/// The budget figures of `policy`: spend from its ledger (the policy as
/// given: the admission reads it fresh) plus the finished runs in the cache
/// that the ledger does not hold yet; reservations and counts from the runs
/// in the cache and the admissions this process made that the cache may not
/// show yet. `exclude` leaves out the run being decided. An unreadable
/// ledger is an error, never zero.
pub fn budget_view(
    policy: &ClaudeRunPolicy,
    runs: &Store<ClaudeRun>,
    ledger: &PolicyLedger,
    now: Timestamp,
    exclude: Option<&str>,
) -> Result<BudgetView, String> {
    let budget = &policy.spec.budget;
    let (start, end) = cost::period_bounds(now, budget.period, budget.time_zone.as_deref())
        .map_err(|e| format!("budget period: {e}"))?;
    let limit = Usd::parse(&budget.limit_usd).map_err(|_| "the policy's limitUSD is invalid".to_owned())?;
    let per_run =
        Usd::parse(&budget.max_cost_per_run_usd).map_err(|_| "the policy's maxCostPerRunUSD is invalid".to_owned())?;
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let mine: Vec<Arc<ClaudeRun>> = runs
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(ns.as_str()) && r.spec.policy_name == name)
        .filter(|r| exclude != Some(r.name_any().as_str()))
        .collect();

    let ledger_of_policy = policy.status.as_ref().and_then(|s| s.ledger.as_ref());
    let charged = cost::spend::charged_in(ledger_of_policy, start, end).map_err(|e| e.to_string())?;
    let mut view = BudgetView {
        start,
        end,
        limit,
        spent: charged,
        reserved: Usd::ZERO,
        active: 0,
        runs: 0,
        denials: 0,
        recent_admissions: vec![],
    };
    let in_period = |t: Timestamp| t >= start && t < end;
    let none = ClaudeRunStatus::default();
    for run in &mine {
        let status = run.status.as_ref().unwrap_or(&none);
        let created = run.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now);
        if in_period(created) {
            view.runs += 1;
            if status.phase == Phase::Denied {
                view.denials += 1;
            }
        }
        if status.phase.is_active() {
            view.active += 1;
            let reserved = status
                .reserved_usd
                .as_deref()
                .and_then(|r| Usd::parse(r).ok())
                .unwrap_or(per_run);
            view.reserved = view.reserved.checked_add(reserved).ok_or("reserved overflows")?;
        } else if let (Some(cost), Some(done)) = (&status.cost, &status.completion_time) {
            // Spend counts in the period the run finished in; a charged run
            // is in the ledger's figure already.
            let in_ledger = status.charged || cost::spend::lists(ledger_of_policy, &run.uid().unwrap_or_default());
            if !in_ledger && in_period(done.0) {
                let usd = Usd::parse(&cost.usd).unwrap_or(per_run);
                view.spent = view.spent.checked_add(usd).ok_or("spent overflows")?;
            }
        }
        if let Some(at) = admitted_at(run) {
            view.recent_admissions.push((run.spec.trigger.actor.id, at));
        }
    }
    // Admissions not visible yet: the cache still shows them Pending (or not at all).
    let visible: HashSet<String> = mine
        .iter()
        .filter(|r| admitted_at(r).is_some())
        .map(|r| r.name_any())
        .collect();
    for (name, recent) in &ledger.recent {
        if exclude == Some(name.as_str()) {
            continue;
        }
        if !visible.contains(name) {
            view.active += 1;
            view.reserved = view.reserved.checked_add(per_run).ok_or("reserved overflows")?;
            let ago = std::time::Instant::now().duration_since(recent.at);
            let at = now - k8s_openapi::jiff::SignedDuration::from_secs(ago.as_secs() as i64);
            view.recent_admissions.push((recent.actor_id, at));
        }
    }
    Ok(view)
}

/// Least time between two refreshes of one policy's status.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// When each policy's status was last written, by `namespace/name`.
#[derive(Default)]
pub struct Refreshes(Mutex<HashMap<String, Instant>>);

impl Refreshes {
    /// How long until `key` may be refreshed again, if it was refreshed less than `interval` ago.
    fn wait(&self, key: &str, interval: Duration) -> Option<Duration> {
        let last = *self.0.lock().expect("refreshes lock").get(key)?;
        interval.checked_sub(last.elapsed()).filter(|d| !d.is_zero())
    }

    fn refreshed(&self, key: &str) {
        self.0
            .lock()
            .expect("refreshes lock")
            .insert(key.to_owned(), Instant::now());
    }
}

pub async fn reconcile(policy: Arc<ClaudeRunPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let ns = policy.namespace().ok_or(Error::Missing("namespace"))?;
    // Several watched namespaces share one cluster-wide watch: not ours.
    if !ctx.settings.scope.contains(Some(&ns)) {
        return Ok(Action::await_change());
    }
    // The budget is derived from the cached runs. The policy controller's
    // runner waits for the policy cache only: before the runs' first list is
    // in, a new process would count none of them and publish a budget with
    // nothing reserved (status and gauge).
    ctx.runs_listed
        .clone()
        .wait_for(|listed| *listed)
        .await
        .map_err(|_| Error::Cache("runs"))?;
    let api: Api<ClaudeRunPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    // Before a policy goes, its spend ledger is kept (see `spend_record`).
    finalizer(&api, spend_record::FINALIZER, policy, |event| async {
        match event {
            Finalizer::Apply(policy) => apply(policy, &ctx).await,
            Finalizer::Cleanup(policy) => {
                spend_record::keep(&ctx, &policy).await?;
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(super::unwrap_finalizer_error)
}

async fn apply(policy: Arc<ClaudeRunPolicy>, ctx: &Context) -> Result<Action> {
    let ns = policy.namespace().ok_or(Error::Missing("namespace"))?;
    let name = policy.name_any();
    // Every event of one of its runs wakes a policy; its status is a view,
    // refreshed at most once a second (a changed spec at once), so a burst of
    // runs does not turn into back-to-back status writes that compete with
    // the admissions for the apiserver and with the charges for the policy's
    // resourceVersion.
    let key = format!("{ns}/{name}");
    let spec_seen = policy.status.as_ref().and_then(|s| s.observed_generation) == policy.metadata.generation;
    if spec_seen && let Some(wait) = ctx.policy_refreshes.wait(&key, MIN_REFRESH_INTERVAL) {
        return Ok(Action::requeue(wait));
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();

    // Quota objects, owned by the policy.
    let invalid = |e: crate::sandbox::Error| Error::Invalid(e.to_string());
    if let Some(quota) = crate::sandbox::resource_quota(&policy).map_err(invalid)? {
        let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch(
            quota.metadata.name.as_deref().unwrap_or_default(),
            &pp,
            &Patch::Apply(&quota),
        )
        .await?;
    }
    if let Some(lr) = crate::sandbox::limit_range(&policy).map_err(invalid)? {
        let api: Api<LimitRange> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch(lr.metadata.name.as_deref().unwrap_or_default(), &pp, &Patch::Apply(&lr))
            .await?;
    }

    let now = Timestamp::now();
    let t = Time(now);
    let mut status = policy.status.clone().unwrap_or_default();

    // Readiness: the referenced Secret exists in the gateway's namespace (the
    // run's namespace never holds the key), is no run's grant, and holds the
    // key, as admission reads it (and from the same cache: read again only
    // when the Secret changed).
    let key_ref = &policy.spec.runner.anthropic_api_key_secret_ref;
    let gateway_ns = &ctx.settings.gateway.namespace;
    let has_key = ctx
        .gateway_secrets
        .anthropic_key(&key_ref.name, &key_ref.key)
        .await?
        .is_some();
    // Tenancy first: a policy outside its namespace's grant serves nothing,
    // whatever else holds.
    let tenancy = &ctx.settings.tenancy;
    let allowed = tenancy.check_policy(&ns, &policy.spec);
    let overlap = match allowed {
        Ok(()) => overlaps(&policy, &ctx.policies.state(), tenancy),
        Err(_) => Overlaps::default(),
    };
    let (ready, reason, message) = match (&allowed, has_key) {
        (Err(v), _) => (false, v.reason, v.message.clone()),
        (Ok(()), false) => (
            false,
            reasons::SECRET_MISSING,
            format!(
                "secret {} with key {} not found in the gateway's namespace {gateway_ns}",
                key_ref.name, key_ref.key
            ),
        ),
        (Ok(()), true) => (true, reasons::VALID, "policy is valid".to_owned()),
    };
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::READY,
            ready,
            reason,
            message,
            policy.metadata.generation,
            t.clone(),
        ),
    );
    let (overlapping, reason, message) = overlap.condition();
    conditions::set_condition(
        &mut status.conditions,
        conditions::condition(
            conditions::OVERLAPPING,
            overlapping,
            reason,
            message,
            policy.metadata.generation,
            t.clone(),
        ),
    );

    // Budget, derived from the runs and the ledger (or the spend record of
    // a deleted policy of this name, until this one is charged).
    let with_ledger = spend_record::with_effective_ledger(ctx, &policy).await?;
    let lock = ctx.ledger.policy(&ns, &name);
    let view = {
        let mut ledger = lock.lock().await;
        let admitted: HashSet<String> = ctx
            .runs
            .state()
            .iter()
            .filter(|r| r.namespace().as_deref() == Some(ns.as_str()) && admitted_at(r).is_some())
            .map(|r| r.name_any())
            .collect();
        ledger.prune(|run| admitted.contains(run));
        budget_view(&with_ledger, &ctx.runs, &ledger, now, None)
    };
    let requeue = match view {
        Ok(view) => {
            let remaining = view
                .limit
                .saturating_sub(view.spent.checked_add(view.reserved).unwrap_or(view.limit));
            status.budget = Some(BudgetStatus {
                period_start: Time(view.start),
                period_end: Time(view.end),
                spent_usd: view.spent.to_string(),
                reserved_usd: view.reserved.to_string(),
                remaining_usd: remaining.to_string(),
            });
            status.active_runs = view.active as i32;
            status.runs_this_period = view.runs as i32;
            status.denials_this_period = view.denials as i32;
            let labels = crate::telemetry::PolicyLabels {
                namespace: ns.clone(),
                policy: name.clone(),
            };
            for (gauge, amount) in [
                (&ctx.metrics.budget_remaining_usd, remaining),
                (&ctx.metrics.budget_spent_usd, view.spent),
                (&ctx.metrics.budget_limit_usd, view.limit),
            ] {
                if let Ok(v) = amount.to_string().parse::<f64>() {
                    gauge.get_or_create(&labels).set(v);
                }
            }
            let to_end = view.end.duration_since(now).as_secs().max(1) as u64;
            Duration::from_secs(to_end.min(300))
        }
        Err(message) => {
            conditions::set_condition(
                &mut status.conditions,
                conditions::condition(
                    conditions::READY,
                    false,
                    "InvalidBudget",
                    message,
                    policy.metadata.generation,
                    t.clone(),
                ),
            );
            Duration::from_secs(300)
        }
    };
    status.observed_generation = policy.metadata.generation;
    status.last_updated = Some(t);
    let api: Api<ClaudeRunPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    // The ledger is the charge step's alone: a cached copy written back here
    // could undo a charge. Only marked runs' uids go, under a precondition.
    let ledger = status.ledger.take();
    let mut body = serde_json::to_value(&status).map_err(|e| Error::Invalid(e.to_string()))?;
    if let Some(mut ledger) = ledger {
        let charged: HashSet<String> = ctx
            .runs
            .state()
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.charged))
            .filter_map(|r| r.uid())
            .collect();
        if cost::spend::prune(&mut ledger, |uid| charged.contains(uid)) {
            body["ledger"] = json!({"unmarked": ledger.unmarked});
        }
    }
    let mut patch = json!({ "status": body });
    if patch["status"].get("ledger").is_some() {
        patch["metadata"] = json!({"resourceVersion": policy.resource_version()});
    }
    let written = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    if patch["status"].get("ledger").is_some() {
        ctx.ledger.ledger_written(&ns, &name);
    }
    match written {
        Ok(_) => {}
        // The ledger moved meanwhile: next time.
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Action::requeue(Duration::from_secs(1))),
        Err(e) => return Err(e.into()),
    }
    ctx.policy_refreshes.refreshed(&key);
    Ok(Action::requeue(requeue))
}

/// How a policy fares against the policies that share repositories with it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Overlaps {
    /// `namespace/name` of the policies that serve the shared repositories instead.
    pub lost_to: Vec<String>,
    /// `namespace/name` of the policies this one serves shared repositories instead of.
    pub won_over: Vec<String>,
}

impl Overlaps {
    /// The `Overlapping` condition: true when another policy serves some of
    /// this one's repositories, naming it.
    pub fn condition(&self) -> (bool, &'static str, String) {
        if !self.lost_to.is_empty() {
            (
                true,
                reasons::OVERLAP_LOST,
                format!(
                    "the repositories this policy shares with {} are served by that policy (a tenancy grant by \
                     name wins, else the oldest policy); this policy is not used for them",
                    self.lost_to.join(", ")
                ),
            )
        } else if !self.won_over.is_empty() {
            (
                false,
                reasons::OVERLAP_WON,
                format!(
                    "this policy serves the repositories it shares with {}",
                    self.won_over.join(", ")
                ),
            )
        } else {
            (false, reasons::VALID, String::new())
        }
    }
}

/// What of each policy decides overlaps, as the policy watch last showed
/// it: its generation (its repositories are spec) and whether it is being
/// deleted, by `namespace/name`.
#[derive(Default, Debug)]
pub struct OverlapInputs {
    seen: HashMap<String, (Option<i64>, bool)>,
    listed: bool,
}

impl OverlapInputs {
    /// Whether `event` of the policy watch changes what overlaps are decided
    /// from: a policy appears, goes, is being deleted, or has a new spec.
    /// A status write (the same generation) does not, so the reconciles it
    /// triggers never feed each other. Nothing counts before the first full
    /// list: every policy is reconciled at start anyway.
    pub fn changed(&mut self, event: &watcher::Event<ClaudeRunPolicy>) -> bool {
        let key = |p: &ClaudeRunPolicy| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
        let inputs = |p: &ClaudeRunPolicy| (p.metadata.generation, p.metadata.deletion_timestamp.is_some());
        let changed = match event {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                self.seen.insert(key(p), inputs(p)) != Some(inputs(p))
            }
            watcher::Event::Delete(p) => {
                self.seen.remove(&key(p));
                true
            }
            watcher::Event::Init => false,
            watcher::Event::InitDone => {
                let first = !self.listed;
                self.listed = true;
                return !first;
            }
        };
        changed && self.listed
    }
}

/// The policies within their tenancy grant that share a repository pattern
/// with `policy`, and which side serves the shared repositories, by the
/// same ranking the receiver and the admission use (`matching::resolve`).
/// Two pattern sets overlap when a pattern of one, read as a repository name,
/// is matched by the other (exact for literal names, a good approximation
/// for globs); that pattern stands for the shared repositories.
pub fn overlaps(policy: &ClaudeRunPolicy, policies: &[Arc<ClaudeRunPolicy>], tenancy: &Tenancy) -> Overlaps {
    use crate::admission::matching::{PolicyMatcher, resolve};
    let me = (policy.namespace().unwrap_or_default(), policy.name_any());
    let mine = PolicyMatcher::of_patterns(&policy.spec.repositories);
    let mut out = Overlaps::default();
    for other in policies {
        let key = (other.namespace().unwrap_or_default(), other.name_any());
        // A policy being deleted serves nothing.
        let going = other.metadata.deletion_timestamp.is_some();
        if key == me || going || tenancy.check_policy(&key.0, &other.spec).is_err() {
            continue;
        }
        let theirs = PolicyMatcher::of_patterns(&other.spec.repositories);
        let shared = other
            .spec
            .repositories
            .iter()
            .find(|p| mine.covers(p))
            .or_else(|| policy.spec.repositories.iter().find(|p| theirs.covers(p)));
        let Some(shared) = shared else { continue };
        let claims = [
            crate::tenancy::claim(policy, shared, tenancy),
            crate::tenancy::claim(other, shared, tenancy),
        ];
        let name = format!("{}/{}", key.0, key.1);
        match resolve(&claims) {
            Some(r) if r.winner.namespace == me.0 && r.winner.name == me.1 => out.won_over.push(name),
            _ => out.lost_to.push(name),
        }
    }
    out.lost_to.sort();
    out.won_over.sort();
    out
}

pub fn error_policy(policy: Arc<ClaudeRunPolicy>, err: &Error, ctx: Arc<Context>) -> Action {
    super::on_error("policy", &policy.name_any(), err, &ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn a_policy_status_is_refreshed_at_most_once_an_interval() {
        let r = Refreshes::default();
        let second = Duration::from_secs(1);
        assert_eq!(r.wait("ns/p", second), None, "never refreshed: at once");
        r.refreshed("ns/p");
        let wait = r.wait("ns/p", second).expect("just refreshed: later");
        assert!(wait <= second, "{wait:?}");
        assert_eq!(r.wait("ns/other", second), None, "per policy");
        assert_eq!(
            r.wait("ns/p", Duration::ZERO),
            None,
            "once the interval is over: at once"
        );
    }

    fn policy(ns: &str, name: &str, repos: &[&str], created: i64) -> Arc<ClaudeRunPolicy> {
        let mut p = crate::sandbox::fixtures::policy();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        p.spec.repositories = repos.iter().map(|r| r.to_string()).collect();
        Arc::new(p)
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlaps_table() {
        let builtin = Tenancy::default();
        let first = policy("team-a", "first", &["acme/api", "acme/web"], 100);
        let later = policy("team-b", "later", &["acme/*"], 200);
        let apart = policy("team-c", "apart", &["other/x"], 50);
        let mut dangerous = (*policy("team-d", "wf", &["acme/api"], 10)).clone();
        dangerous
            .spec
            .github
            .permissions
            .insert("workflows".into(), crate::api::TokenAccess::Write);
        let dangerous = Arc::new(dangerous);
        let all = [first.clone(), later.clone(), apart.clone(), dangerous.clone()];

        // The later policy in another namespace loses, naming the winner; the
        // first one wins; a policy outside its grant does not count.
        let got = overlaps(&later, &all, &builtin);
        assert_eq!(got.lost_to, names(&["team-a/first"]));
        assert!(got.won_over.is_empty());
        let (on, reason, message) = got.condition();
        assert!(
            on && reason == reasons::OVERLAP_LOST && message.contains("team-a/first"),
            "{message}"
        );
        let got = overlaps(&first, &all, &builtin);
        assert_eq!(
            got,
            Overlaps {
                lost_to: vec![],
                won_over: names(&["team-b/later"])
            }
        );
        assert!(!got.condition().0);
        assert_eq!(overlaps(&apart, &all, &builtin), Overlaps::default());
        assert_eq!(
            overlaps(&apart, &all, &builtin).condition(),
            (false, reasons::VALID, String::new())
        );

        // A tenancy grant by name wins over age.
        let named = Tenancy::from_yaml(
            "namespaces: [{names: [team-b], repositories: ['acme/*']}]\ndefault: {repositories: ['*/*']}",
        )
        .unwrap();
        assert_eq!(overlaps(&first, &all, &named).lost_to, names(&["team-b/later"]));
        assert_eq!(overlaps(&later, &all, &named).won_over, names(&["team-a/first"]));

        // A policy being deleted serves nothing: the later one no longer loses.
        let mut going = (*first).clone();
        going.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(300).unwrap()));
        let all = [Arc::new(going), later.clone(), apart.clone()];
        assert_eq!(overlaps(&later, &all, &builtin), Overlaps::default());
    }

    #[test]
    fn overlaps_are_decided_again_on_a_policy_change_never_on_a_status_write() {
        use watcher::Event::*;
        let with = |generation: i64, deleting: bool| {
            let mut p = (*policy("team-a", "first", &["acme/api"], 100)).clone();
            p.metadata.generation = Some(generation);
            if deleting {
                p.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(300).unwrap()));
            }
            p
        };
        let other = (*policy("team-b", "later", &["acme/*"], 200)).clone();
        let mut inputs = OverlapInputs::default();
        // Row: (event, whether overlaps must be decided again).
        let table = [
            (Init, false),
            (InitApply(with(1, false)), false),
            (InitDone, false),
            (Apply(with(1, false)), false),
            (Apply(with(2, false)), true),
            (Apply(with(2, false)), false),
            (Apply(other.clone()), true),
            (Apply(with(3, true)), true),
            (Delete(with(3, true)), true),
            (Delete(other.clone()), true),
            // A re-list after a lost watch: what changed meanwhile counts.
            (Init, false),
            (InitApply(other.clone()), true),
            (InitApply(other.clone()), false),
            (InitDone, true),
        ];
        for (i, (event, want)) in table.into_iter().enumerate() {
            assert_eq!(inputs.changed(&event), want, "row {i}");
        }
    }
}
