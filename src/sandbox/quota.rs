//! The namespace ResourceQuota and LimitRange a policy asks for
//! (`spec.quota`), both named [`quota_name`] of the policy and owned by it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LimitRange, LimitRangeItem, LimitRangeSpec, ResourceQuota, ResourceQuotaSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{LABEL_MANAGED_BY, LABEL_POLICY, MANAGED_BY, Result, label_value, owner_parts, quota_name};
use crate::api::ClaudeRunPolicy;

/// The policy's ResourceQuota (`spec.quota.hard`); `None` when the policy
/// sets no hard limits.
pub fn resource_quota(policy: &ClaudeRunPolicy) -> Result<Option<ResourceQuota>> {
    let Some(quota) = policy.spec.quota.as_ref().filter(|q| !q.hard.is_empty()) else {
        return Ok(None);
    };
    Ok(Some(ResourceQuota {
        metadata: metadata(policy)?,
        spec: Some(ResourceQuotaSpec {
            hard: Some(quota.hard.clone()),
            ..ResourceQuotaSpec::default()
        }),
        status: None,
    }))
}

/// The policy's LimitRange: container defaults from `spec.quota.defaultLimits`
/// and `defaultRequests`; `None` when the policy sets neither.
pub fn limit_range(policy: &ClaudeRunPolicy) -> Result<Option<LimitRange>> {
    let Some(quota) = policy
        .spec
        .quota
        .as_ref()
        .filter(|q| !q.default_limits.is_empty() || !q.default_requests.is_empty())
    else {
        return Ok(None);
    };
    let non_empty = |m: &BTreeMap<_, _>| (!m.is_empty()).then(|| m.clone());
    Ok(Some(LimitRange {
        metadata: metadata(policy)?,
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default: non_empty(&quota.default_limits),
                default_request: non_empty(&quota.default_requests),
                ..LimitRangeItem::default()
            }],
        }),
    }))
}

fn metadata(policy: &ClaudeRunPolicy) -> Result<ObjectMeta> {
    let (name, namespace, owner) = owner_parts(policy, "ClaudeRunPolicy")?;
    Ok(ObjectMeta {
        name: Some(quota_name(&name)),
        namespace: Some(namespace),
        labels: Some(BTreeMap::from([
            (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
            (LABEL_POLICY.to_owned(), label_value(&name)),
        ])),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Error, fixtures};
    use super::*;
    use crate::api::Quota;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    fn expected_metadata() -> serde_json::Value {
        json!({
            "name": "claude-operator-acme-backend",
            "namespace": "claude-runs",
            "labels": {
                "app.kubernetes.io/managed-by": "claude-operator",
                "claude-operator.dev/policy": "acme-backend",
            },
            "ownerReferences": [{
                "apiVersion": "claude-operator.dev/v1alpha1",
                "kind": "ClaudeRunPolicy",
                "name": "acme-backend",
                "uid": fixtures::POLICY_UID,
                "controller": true,
            }],
        })
    }

    #[test]
    fn quota_from_the_sample() {
        let quota = resource_quota(&fixtures::policy()).unwrap().unwrap();
        assert_eq!(
            serde_json::to_value(quota).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": expected_metadata(),
                "spec": {"hard": {
                    "pods": "10",
                    "requests.cpu": "8",
                    "requests.memory": "16Gi",
                    "limits.cpu": "16",
                    "limits.memory": "32Gi",
                }},
            })
        );
    }

    #[test]
    fn limit_range_from_the_sample() {
        let range = limit_range(&fixtures::policy()).unwrap().unwrap();
        assert_eq!(
            serde_json::to_value(range).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "LimitRange",
                "metadata": expected_metadata(),
                "spec": {"limits": [{
                    "type": "Container",
                    "default": {"cpu": "1", "memory": "1Gi"},
                    "defaultRequest": {"cpu": "250m", "memory": "256Mi"},
                }]},
            })
        );
    }

    #[test]
    fn nothing_when_the_policy_asks_for_nothing() {
        let mut policy = fixtures::policy();
        policy.spec.quota = None;
        assert_eq!(resource_quota(&policy), Ok(None));
        assert_eq!(limit_range(&policy), Ok(None));
        policy.spec.quota = Some(Quota {
            hard: BTreeMap::new(),
            default_limits: BTreeMap::new(),
            default_requests: BTreeMap::new(),
        });
        assert_eq!(resource_quota(&policy), Ok(None));
        assert_eq!(limit_range(&policy), Ok(None));
    }

    #[test]
    fn an_unsaved_policy_cannot_own_a_quota() {
        let mut policy = fixtures::policy();
        policy.metadata.uid = None;
        assert_eq!(
            resource_quota(&policy).unwrap_err(),
            Error::MissingMetadata {
                kind: "ClaudeRunPolicy",
                field: "uid"
            }
        );
    }
}
