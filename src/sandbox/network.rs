//! The run's NetworkPolicy: the runner pod accepts no connections and may
//! open exactly one kind: TCP to the gateway's pods on the gateway's port.
//! No DNS (the pod is given the gateway as an address), no other pod, no
//! outside address. Everything the run does outside the pod goes through
//! the gateway, which holds the credentials and enforces the policy.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Result, network_policy_name, run_labels, run_owner, run_selector};
use crate::api::ClaudeRun;

/// The label every namespace carries with its own name (set by the apiserver).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where the gateway runs: its pods (labels) in its namespace, and the port
/// they serve runner pods on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayTarget {
    /// The gateway's namespace.
    pub namespace: String,
    /// Labels of the gateway's pods (at least one: an empty selector would
    /// select every pod of the namespace).
    pub pod_labels: BTreeMap<String, String>,
    /// TCP port of the gateway's pods.
    pub port: i32,
}

/// Parses `k=v,k=v` (`--gateway-pod-labels`) into labels. Empty, malformed,
/// or repeated keys are refused: the selector must name the gateway exactly.
pub fn parse_pod_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for part in text.split(',').map(str::trim) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("{part:?} is not key=value"));
        };
        let (k, v) = (k.trim(), v.trim());
        let key_ok = !k.is_empty()
            && k.len() <= 253
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !key_ok || !super::is_label_value(v) {
            return Err(format!("{part:?} is not a valid label"));
        }
        if labels.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(format!("label {k:?} is given twice"));
        }
    }
    if labels.is_empty() {
        return Err("no labels".into());
    }
    Ok(labels)
}

/// The run's NetworkPolicy, named [`network_policy_name`] of the run: selects
/// the run's pod by its run label, denies all ingress, and allows egress only
/// to the gateway's pods (namespace AND pod labels, one peer) on its port.
pub fn run_network_policy(run: &ClaudeRun, gateway: &GatewayTarget) -> Result<NetworkPolicy> {
    let (name, namespace, owner) = run_owner(run)?;
    let to_gateway = NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_owned(),
                    gateway.namespace.clone(),
                )])),
                ..LabelSelector::default()
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(gateway.pod_labels.clone()),
                ..LabelSelector::default()
            }),
            ip_block: None,
        }]),
        ports: Some(vec![NetworkPolicyPort {
            protocol: Some("TCP".into()),
            port: Some(IntOrString::Int(gateway.port)),
            end_port: None,
        }]),
    };
    Ok(NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(network_policy_name(&name)),
            namespace: Some(namespace),
            labels: Some(run_labels(run)),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(run_selector(&name)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: None,
            egress: Some(vec![to_gateway]),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    fn gateway() -> GatewayTarget {
        GatewayTarget {
            namespace: "claude-operator".into(),
            pod_labels: BTreeMap::from([("app.kubernetes.io/component".into(), "gateway".into())]),
            port: 8081,
        }
    }

    #[test]
    fn the_pod_may_reach_the_gateway_and_nothing_else() {
        let np = run_network_policy(&fixtures::run(), &gateway()).unwrap();
        fixtures::assert_owned_by_run(&np.metadata);
        assert_eq!(np.metadata.name.as_deref(), Some("gh-3f1c2a9d0b7e4c61-egress"));
        assert_eq!(np.metadata.namespace.as_deref(), Some("claude-runs"));
        assert_eq!(
            serde_json::to_value(np.spec.unwrap()).unwrap(),
            json!({
                "podSelector": {"matchLabels": {"claude-operator.dev/run": "gh-3f1c2a9d0b7e4c61"}},
                "policyTypes": ["Ingress", "Egress"],
                "egress": [{
                    // One peer: the namespace AND the pod labels.
                    "to": [{
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "claude-operator"}},
                        "podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}},
                    }],
                    "ports": [{"protocol": "TCP", "port": 8081}],
                }],
            })
        );
    }

    #[test]
    fn no_dns_and_no_address_range() {
        let np = serde_json::to_string(&run_network_policy(&fixtures::run(), &gateway()).unwrap()).unwrap();
        for absent in ["ipBlock", "UDP", "kube-dns", "53", "ingress\":["] {
            assert!(!np.contains(absent), "{absent} in {np}");
        }
    }

    #[test]
    fn pod_labels_parse_strictly() {
        assert_eq!(
            parse_pod_labels("app.kubernetes.io/component=gateway, app=x").unwrap(),
            BTreeMap::from([
                ("app".to_owned(), "x".to_owned()),
                ("app.kubernetes.io/component".to_owned(), "gateway".to_owned())
            ])
        );
        for bad in ["", "a", "=b", "a=b,", "a=b,a=c", "a=b c", "a b=c", "a=-x"] {
            assert!(parse_pod_labels(bad).is_err(), "{bad:?}");
        }
    }
}
