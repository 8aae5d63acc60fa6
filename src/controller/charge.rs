//! Charging a finished run to its policy's spend ledger, exactly once: the
//! cost goes into the ledger (`status.ledger` of the policy, written with the
//! policy's `resourceVersion` as a precondition, the run's uid listed in the
//! same write), and only then is the run marked `status.charged`. A crash
//! between the two finds the uid listed and charges nothing twice; a
//! conflicting write is read again and retried. A policy whose status holds
//! no ledger yet starts from its spend record, and a run whose policy is
//! gone is charged to that record (`controller::spend_record`). The
//! decisions are `cost::spend`'s; this module reads and writes.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::{Context, Error, Result, spend_record};
use crate::api::{ClaudeRun, ClaudeRunPolicy, ClaudeRunStatus};
use crate::cost::{self, Usd, spend};

/// Writes to the ledger tried before the reconcile gives up for now.
const ATTEMPTS: usize = 5;

/// What a run is charged, if anything: its recorded cost once it has one
/// and is not charged yet. A run without a cost (denied, never started)
/// has nothing to charge. An unreadable cost is charged as an error, never
/// as zero.
pub fn to_charge(status: &ClaudeRunStatus) -> Result<Option<Usd>, String> {
    if status.charged {
        return Ok(None);
    }
    let Some(cost) = &status.cost else {
        return Ok(None);
    };
    let usd = Usd::parse(&cost.usd).map_err(|_| format!("the run's cost {:?} is unreadable", cost.usd))?;
    Ok((!usd.is_zero()).then_some(usd))
}

/// Whether the run's cost is accounted: charged, or nothing to charge.
/// Retention deletes only such runs.
pub fn accounted(status: &ClaudeRunStatus) -> bool {
    matches!(to_charge(status), Ok(None))
}

/// Charges `cost` for `run` (which ended at `done`) to its policy's ledger,
/// then marks the run charged. Idempotent: a run marked (read fresh from
/// the apiserver, not the cache) or listed in the ledger is not charged
/// again. A policy being deleted is not charged until its ledger is kept;
/// a run whose policy is gone is charged to the policy's spend record
/// (`controller::spend_record`), which a policy of that name created later
/// starts from.
pub async fn charge(ctx: &Context, run: &ClaudeRun, cost: Usd, done: Timestamp) -> Result<()> {
    let ns = run.namespace().ok_or(Error::Missing("namespace"))?;
    let uid = run.uid().ok_or(Error::Missing("uid"))?;
    let runs: Api<ClaudeRun> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(fresh) = runs.get_opt(&run.name_any()).await? else {
        return Ok(());
    };
    if fresh.uid().as_deref() != Some(uid.as_str()) || fresh.status.as_ref().is_some_and(|s| s.charged) {
        return Ok(());
    }
    let policies: Api<ClaudeRunPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let name = &run.spec.policy_name;
    let mut written = false;
    let lock = ctx.ledger.charging(&ns, name);
    let _charging = lock.lock().await;
    for _ in 0..ATTEMPTS {
        let outcome = match policies.get_opt(name).await? {
            Some(policy) if policy.metadata.deletion_timestamp.is_some() => {
                return Err(Error::Invalid(format!(
                    "policy {name} is being deleted: the run is charged once its spend is kept"
                )));
            }
            Some(policy) => charge_policy(ctx, &policies, &policy, &uid, cost, done).await,
            None => charge_record(ctx, &ns, name, &uid, cost, done).await,
        };
        // Whatever the answer, the ledger may have changed: admissions read it again.
        ctx.ledger.ledger_written(&ns, name);
        let outcome = outcome?;
        match outcome {
            Written::Yes => {
                tracing::info!(run = %run.name_any(), cost = %cost, "charged to the policy's ledger");
                written = true;
                break;
            }
            Written::Already => {
                written = true;
                break;
            }
            // Someone wrote the ledger meanwhile: read it again.
            Written::Conflict => continue,
        }
    }
    if !written {
        return Err(Error::Invalid(
            "the policy's ledger kept changing; charging again".into(),
        ));
    }
    runs.patch_status(
        &run.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"charged": true}})),
    )
    .await?;
    Ok(())
}

/// The outcome of one attempt to write a charge.
enum Written {
    Yes,
    Already,
    Conflict,
}

/// Charges the ledger on `policy`'s status (starting from its spend record
/// when it has none yet), at the policy's `resourceVersion`.
async fn charge_policy(
    ctx: &Context,
    policies: &Api<ClaudeRunPolicy>,
    policy: &ClaudeRunPolicy,
    uid: &str,
    cost: Usd,
    done: Timestamp,
) -> Result<Written> {
    let budget = &policy.spec.budget;
    let (start, end) = cost::period_bounds(Timestamp::now(), budget.period, budget.time_zone.as_deref())
        .map_err(|e| Error::Invalid(format!("budget period: {e}")))?;
    let ledger = spend_record::effective(ctx, policy).await?;
    let next = match spend::charge(ledger, start, end, uid, cost, done) {
        Ok(spend::Charge::Already) => return Ok(Written::Already),
        Ok(spend::Charge::Charged(next)) => next,
        Err(e) => return Err(Error::Invalid(e.to_string())),
    };
    let patch = json!({
        "metadata": {"resourceVersion": policy.resource_version()},
        "status": {"ledger": next},
    });
    match policies
        .patch_status(&policy.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(Written::Yes),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Written::Conflict),
        Err(e) => Err(e.into()),
    }
}

/// Charges the spend record of the policy `ns/name`, which is gone, in the
/// record's own period. Without a record (a policy deleted before it kept
/// one) the record starts on the default budget period.
async fn charge_record(ctx: &Context, ns: &str, name: &str, uid: &str, cost: Usd, done: Timestamp) -> Result<Written> {
    let record = spend_record::load(ctx, ns, name).await?;
    let (start, end) = match &record {
        Some(r) => (r.ledger.period_start.0, r.ledger.period_end.0),
        None => cost::period_bounds(Timestamp::now(), Default::default(), None)
            .map_err(|e| Error::Invalid(format!("budget period: {e}")))?,
    };
    let (ledger, version) = match record {
        Some(r) => (Some(r.ledger), r.resource_version),
        None => (None, None),
    };
    let next = match spend::charge(ledger, start, end, uid, cost, done) {
        Ok(spend::Charge::Already) => return Ok(Written::Already),
        Ok(spend::Charge::Charged(next)) => next,
        Err(e) => return Err(Error::Invalid(e.to_string())),
    };
    match spend_record::save(ctx, ns, name, &next, version).await {
        Ok(()) => {
            tracing::warn!(policy = %name, namespace = %ns, "the run's policy is gone: charged to its spend record");
            Ok(Written::Yes)
        }
        Err(Error::Kube(kube::Error::Api(s))) if s.code == 409 => Ok(Written::Conflict),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Cost, CostSource};

    fn status(cost: Option<&str>, charged: bool) -> ClaudeRunStatus {
        ClaudeRunStatus {
            cost: cost.map(|usd| Cost {
                usd: usd.into(),
                input_tokens: 0,
                output_tokens: 0,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 0,
                turns: 0,
                models: vec![],
                source: CostSource::Metered,
            }),
            charged,
            ..Default::default()
        }
    }

    #[test]
    fn what_a_run_is_charged_and_when_it_is_accounted() {
        // Row: (cost, charged, to charge, accounted).
        let table = [
            (None, false, Ok(None), true),
            (Some("0.00"), false, Ok(None), true),
            (Some("0.25"), false, Ok(Some("0.25")), false),
            (Some("0.25"), true, Ok(None), true),
            (Some("garbage"), false, Err(()), false),
            (Some("garbage"), true, Ok(None), true),
        ];
        for (cost, charged, want, is_accounted) in table {
            let s = status(cost, charged);
            let got = to_charge(&s).map(|o| o.map(|u| u.to_string())).map_err(|_| ());
            assert_eq!(
                got,
                want.map(|o: Option<&str>| o.map(String::from)),
                "{cost:?} {charged}"
            );
            assert_eq!(accounted(&s), is_accounted, "{cost:?} {charged}");
        }
    }
}
