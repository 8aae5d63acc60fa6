//! Charging a finished run to its policy's spend ledger, exactly once: the
//! cost goes into the ledger (`status.ledger` of the policy, written with the
//! policy's `resourceVersion` as a precondition, the run's uid listed in the
//! same write), and only then is the run marked `status.charged`. A crash
//! between the two finds the uid listed and charges nothing twice; a
//! conflicting write is read again and retried. The decisions are
//! `cost::spend`'s; this module reads and writes.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::{Context, Error, Result};
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
/// again. A run whose policy is gone is marked with nothing charged: its
/// ledger went with the policy.
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
    let mut written = false;
    for _ in 0..ATTEMPTS {
        let Some(policy) = policies.get_opt(&run.spec.policy_name).await? else {
            tracing::warn!(run = %run.name_any(), "the run's policy is gone: its cost has no ledger");
            written = true;
            break;
        };
        let budget = &policy.spec.budget;
        let (start, end) = cost::period_bounds(Timestamp::now(), budget.period, budget.time_zone.as_deref())
            .map_err(|e| Error::Invalid(format!("budget period: {e}")))?;
        let ledger = policy.status.as_ref().and_then(|s| s.ledger.clone());
        let next = match spend::charge(ledger, start, end, &uid, cost, done) {
            Ok(spend::Charge::Already) => {
                written = true;
                break;
            }
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
            Ok(_) => {
                tracing::info!(run = %run.name_any(), cost = %cost, "charged to the policy's ledger");
                written = true;
                break;
            }
            // Someone wrote the policy meanwhile: read it again.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
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
