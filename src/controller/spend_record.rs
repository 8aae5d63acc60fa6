//! The spend of deleted policies. A policy's ledger lives on its status and
//! would go with it, so deleting a policy and creating it again (same
//! namespace and name) would start its period from nothing. Instead every
//! policy carries the finalizer [`FINALIZER`]: before a policy goes, its
//! ledger is kept in a record, a ConfigMap in the operator's own namespace
//! (the gateway's, where tenants write nothing), and a policy of that
//! namespace and name whose status holds no ledger yet starts from the
//! record. Runs that finish while no such policy exists are charged to the
//! record. The record is written with its `resourceVersion` as a
//! precondition, like the ledger on a policy.

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use sha2::Digest;

use super::{Context, Error, Result};
use crate::api::{ClaudeRunPolicy, SpendLedger};
use crate::cost;

/// The policy finalizer: the ledger is kept before the policy goes.
pub const FINALIZER: &str = "claude-operator.dev/keep-spend";
/// Label of every record.
pub const LABEL: &str = "claude-operator.dev/spend-record";
/// Annotation naming the policy (`namespace/name`) a record keeps.
pub const ANNOTATION_POLICY: &str = "claude-operator.dev/policy";
/// The data key holding the ledger (JSON).
const KEY: &str = "ledger";

/// The record's name: a hash, since a namespace and a policy name together
/// can be longer than an object name may be.
pub fn record_name(namespace: &str, name: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{namespace}/{name}").as_bytes());
    format!("claude-operator-spend-{}", &hex::encode(digest)[..20])
}

fn records(ctx: &Context) -> Api<ConfigMap> {
    Api::namespaced(ctx.client.clone(), &ctx.settings.gateway.namespace)
}

/// A record as read: its ledger and the `resourceVersion` to write it back at.
pub struct Record {
    pub ledger: SpendLedger,
    pub resource_version: Option<String>,
}

/// The record of `namespace/name`, if one was kept. A record that names
/// another policy, or whose ledger cannot be read, is an error, never an
/// empty ledger.
pub async fn load(ctx: &Context, namespace: &str, name: &str) -> Result<Option<Record>> {
    let Some(cm) = records(ctx).get_opt(&record_name(namespace, name)).await? else {
        return Ok(None);
    };
    let key = format!("{namespace}/{name}");
    if cm.annotations().get(ANNOTATION_POLICY) != Some(&key) {
        return Err(Error::Invalid(format!(
            "spend record {} does not belong to policy {key}",
            cm.name_any()
        )));
    }
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .ok_or_else(|| Error::Invalid(format!("spend record {} holds no ledger", cm.name_any())))?;
    let ledger = serde_json::from_str(text)
        .map_err(|e| Error::Invalid(format!("spend record {} is unreadable: {e}", cm.name_any())))?;
    Ok(Some(Record {
        ledger,
        resource_version: cm.resource_version(),
    }))
}

/// The ledger `policy`'s spend starts from: its own, else the record kept
/// from an earlier policy of its namespace and name.
pub async fn effective(ctx: &Context, policy: &ClaudeRunPolicy) -> Result<Option<SpendLedger>> {
    if let Some(ledger) = policy.status.as_ref().and_then(|s| s.ledger.clone()) {
        return Ok(Some(ledger));
    }
    let ns = policy.namespace().unwrap_or_default();
    Ok(load(ctx, &ns, &policy.name_any()).await?.map(|r| r.ledger))
}

/// `policy` with the ledger its spend starts from on its status.
pub async fn with_effective_ledger(ctx: &Context, policy: &ClaudeRunPolicy) -> Result<ClaudeRunPolicy> {
    let mut policy = policy.clone();
    if policy.status.as_ref().is_none_or(|s| s.ledger.is_none()) {
        let ledger = effective(ctx, &policy).await?;
        policy.status.get_or_insert_with(Default::default).ledger = ledger;
    }
    Ok(policy)
}

/// Keeps `ledger` as the record of `namespace/name`: created, or replaced at
/// `resource_version` (a conflict is an error: read again and retry).
pub async fn save(
    ctx: &Context,
    namespace: &str,
    name: &str,
    ledger: &SpendLedger,
    resource_version: Option<String>,
) -> Result<()> {
    let text = serde_json::to_string(ledger).map_err(|e| Error::Invalid(e.to_string()))?;
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(record_name(namespace, name)),
            labels: Some([(LABEL.to_owned(), "true".to_owned())].into()),
            annotations: Some([(ANNOTATION_POLICY.to_owned(), format!("{namespace}/{name}"))].into()),
            resource_version: resource_version.clone(),
            ..Default::default()
        },
        data: Some([(KEY.to_owned(), text)].into()),
        ..Default::default()
    };
    let api = records(ctx);
    let pp = PostParams::default();
    match resource_version {
        Some(_) => api.replace(&record_name(namespace, name), &pp, &cm).await?,
        None => api.create(&pp, &cm).await?,
    };
    Ok(())
}

/// Before a policy goes: its ledger (read fresh, so no charge is missed)
/// becomes its record. A policy that was never charged leaves an existing
/// record as it is, else an empty one on its budget period (where runs
/// that finish later are charged). Charges wait while a policy is being
/// deleted (see `controller::charge`), so the ledger read here is the last.
pub async fn keep(ctx: &Context, policy: &ClaudeRunPolicy) -> Result<()> {
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let policies: Api<ClaudeRunPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(fresh) = policies.get_opt(&name).await? else {
        return Ok(());
    };
    let existing = load(ctx, &ns, &name).await?;
    let ledger = match (fresh.status.and_then(|s| s.ledger), &existing) {
        (Some(ledger), _) => ledger,
        (None, Some(_)) => return Ok(()),
        (None, None) => {
            let budget = &fresh.spec.budget;
            let (start, end) = cost::period_bounds(Timestamp::now(), budget.period, budget.time_zone.as_deref())
                .map_err(|e| Error::Invalid(format!("budget period: {e}")))?;
            cost::spend::empty(start, end)
        }
    };
    save(ctx, &ns, &name, &ledger, existing.and_then(|r| r.resource_version)).await?;
    tracing::info!(policy = %name, namespace = %ns, charged = %ledger.charged_usd, "the deleted policy's spend is kept");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_name_is_a_valid_object_name_and_tells_policies_apart() {
        let long_ns = "n".repeat(63);
        let long_name = "p".repeat(253);
        for (ns, name) in [("team-a", "backend"), (long_ns.as_str(), long_name.as_str())] {
            let n = record_name(ns, name);
            assert!(n.len() <= 63, "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
        }
        // `a/b-c` and `a-b/c` are different policies.
        assert_ne!(record_name("a", "b-c"), record_name("a-b", "c"));
        assert_eq!(record_name("a", "b"), record_name("a", "b"));
    }
}
