//! Builders of a run's child objects (Secret, NetworkPolicy, Pod), of its
//! grant in the gateway's namespace, and of a policy's namespace quota: pure
//! functions from (policy, run) to objects, and the checks that an existing
//! object is the one we built (see [`controlled_by`], [`is_our_pod`]).
//!
//! Nothing here talks to the apiserver. Every child gets a deterministic name
//! derived from its owner's name (so a repeated reconcile finds, rather than
//! duplicates, it), the common labels and a controller owner reference.
//!
//! Names and label values are kept valid whatever the owner's name: a name
//! that would be too long, or holds characters a DNS label cannot, is cut and
//! suffixed with a hash of the full name (see [`child_name`], [`label_value`]).

mod cidr;
mod grant;
mod network;
mod pod;
mod quota;
mod secret;

pub use cidr::{Cidr, CidrError};
pub use grant::{
    GrantCredentials, PushTarget, facts_of, grant_facts, grant_matches, grant_secret, is_branch_name, push_branch,
    push_target,
};
pub use network::{GatewayTarget, parse_pod_labels, run_network_policy};
pub use pod::{
    HOME_DIR, RUNNER_CONTAINER, RUNNER_SERVICE_ACCOUNT, RUNNER_UID, RunnerParams, SECRETS_DIR, TERMINATION_LOG,
    TMP_DIR, WORKSPACE_DIR, is_our_pod, runner_pod, runner_service_account,
};
pub use quota::{limit_range, resource_quota};
pub use secret::run_secret;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::api::ClaudeRun;

/// `app.kubernetes.io/managed-by` on every object the operator creates.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "claude-operator";
/// `app.kubernetes.io/name` on a run's children.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// The value of [`LABEL_NAME`] on a run's children.
pub const RUNNER_APP_NAME: &str = "claude-runner";
/// The run a child belongs to (value from [`label_value`] of the run's name).
pub const LABEL_RUN: &str = "claude-operator.dev/run";
/// The policy a child or quota belongs to (value from [`label_value`]).
pub const LABEL_POLICY: &str = "claude-operator.dev/policy";

/// The GitHub delivery id of the trigger, on the runner pod.
pub const ANNOTATION_DELIVERY_ID: &str = "claude-operator.dev/delivery-id";

/// The run Secret's key holding the run's capability.
pub const SECRET_KEY_CAPABILITY: &str = crate::grant::RUN_SECRET_KEY_CAPABILITY;
/// The Secret key holding the prompt.
pub const SECRET_KEY_PROMPT: &str = "prompt";

/// Longest DNS label (RFC 1123), and longest label value.
const MAX_LABEL: usize = 63;
/// Hex digits of the hash appended to shortened names and label values.
const HASH_LEN: usize = 10;

/// Why a child object could not be built. Never carries a secret value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The owner lacks metadata the child needs (name, namespace or uid):
    /// only objects read back from the apiserver can own children.
    #[error("{kind} has no metadata.{field}")]
    MissingMetadata {
        /// The owner's kind.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// The run's issue or pull request number is not a positive number.
    #[error("spec.trigger.number {0} is not a valid issue or pull request number")]
    InvalidNumber(i64),
}

/// Result of the builders.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Name of a run's runner pod.
pub fn pod_name(run_name: &str) -> String {
    child_name(run_name, "runner")
}

/// Name of a run's Secret (capability, prompt).
pub fn secret_name(run_name: &str) -> String {
    child_name(run_name, "secrets")
}

/// Name of a run's NetworkPolicy.
pub fn network_policy_name(run_name: &str) -> String {
    child_name(run_name, "egress")
}

/// Name of a policy's ResourceQuota and LimitRange.
pub fn quota_name(policy_name: &str) -> String {
    let name = format!("claude-operator-{policy_name}");
    if is_dns_label(&name) {
        return name;
    }
    shorten(&sanitize(&name), MAX_LABEL, &hash(policy_name), "")
}

/// The name of a child object: `<owner>-<suffix>` when that is a valid DNS
/// label (RFC 1123: at most 63 of `a-z0-9-`), else the owner's name with
/// invalid characters replaced, cut, and followed by ten hex digits of the
/// SHA-256 of the full owner name: `<cut>-<hash>-<suffix>`. Deterministic,
/// and distinct for distinct owners (but for hash collisions).
pub fn child_name(owner: &str, suffix: &str) -> String {
    let name = format!("{owner}-{suffix}");
    if is_dns_label(&name) {
        return name;
    }
    shorten(&sanitize(owner), MAX_LABEL, &hash(owner), &format!("-{suffix}"))
}

/// A label value standing for `value`: `value` itself when it is a valid
/// label value (at most 63 of `A-Za-z0-9._-`, alphanumeric at both ends),
/// else a cut of it followed by ten hex digits of its SHA-256.
pub fn label_value(value: &str) -> String {
    if is_label_value(value) {
        return value.to_owned();
    }
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    shorten(&cleaned, MAX_LABEL, &hash(value), "")
}

/// The common labels of a run's children.
pub fn run_labels(run: &ClaudeRun) -> BTreeMap<String, String> {
    let mut labels = run_selector(&run.metadata.name.clone().unwrap_or_default());
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    labels.insert(LABEL_NAME.into(), RUNNER_APP_NAME.into());
    labels.insert(LABEL_POLICY.into(), label_value(&run.spec.policy_name));
    labels
}

/// The labels selecting a run's children (and its pod in the NetworkPolicy).
pub fn run_selector(run_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_RUN.to_owned(), label_value(run_name))])
}

/// Whether `meta` names the object with uid `uid` as its controller: only
/// then is an object with a run's child's name that run's child.
pub fn controlled_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    !uid.is_empty()
        && meta
            .owner_references
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|r| r.controller == Some(true) && r.uid == uid && r.kind == "ClaudeRun")
}

/// Name, namespace and controller owner reference of a run, for its children.
fn run_owner(run: &ClaudeRun) -> Result<(String, String, OwnerReference)> {
    owner_parts(run, "ClaudeRun")
}

fn owner_parts<K: Resource<DynamicType = ()>>(
    owner: &K,
    kind: &'static str,
) -> Result<(String, String, OwnerReference)> {
    let missing = |field| Error::MissingMetadata { kind, field };
    let meta = owner.meta();
    let name = meta.name.clone().ok_or(missing("name"))?;
    let namespace = meta.namespace.clone().ok_or(missing("namespace"))?;
    let owner_ref = owner.controller_owner_ref(&()).ok_or(missing("uid"))?;
    Ok((name, namespace, owner_ref))
}

/// `<cut of base>-<hash><tail>`, at most `max` long, the cut starting and
/// ending with an alphanumeric character (or left out when nothing remains).
fn shorten(base: &str, max: usize, hash: &str, tail: &str) -> String {
    let keep = max.saturating_sub(hash.len() + tail.len() + 1);
    let base = base.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let cut: String = base.chars().take(keep).collect();
    let cut = cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if cut.is_empty() {
        format!("{hash}{tail}")
    } else {
        format!("{cut}-{hash}{tail}")
    }
}

/// `s` lowercased, with every character a DNS label cannot hold replaced by `-`
/// and leading dashes removed.
fn sanitize(s: &str) -> String {
    let lowered: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    lowered.trim_start_matches('-').to_owned()
}

fn hash(s: &str) -> String {
    let mut digest = hex::encode(Sha256::digest(s.as_bytes()));
    digest.truncate(HASH_LEN);
    digest
}

/// An RFC 1123 label: 1 to 63 of `a-z0-9-`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    s.len() <= MAX_LABEL
        && ends_ok(s.chars().next())
        && ends_ok(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A label value: empty, or 1 to 63 of `A-Za-z0-9._-`, alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= MAX_LABEL
        && ends_ok(s.chars().next())
        && ends_ok(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! The samples under `config/samples`, completed as the apiserver would
    //! return them.

    use crate::api::{ClaudeRun, ClaudeRunPolicy};

    pub const RUN_UID: &str = "6a1c5f2e-0d7b-4a39-9a57-3c1f0e2b8d44";
    pub const POLICY_UID: &str = "0b8e7c3d-5f21-4e6a-8c90-1d2e3f4a5b6c";

    pub fn policy() -> ClaudeRunPolicy {
        let mut policy: ClaudeRunPolicy =
            serde_yaml::from_str(include_str!("../../config/samples/policy.yaml")).unwrap();
        policy.metadata.uid = Some(POLICY_UID.into());
        policy
    }

    pub fn run() -> ClaudeRun {
        let mut run: ClaudeRun = serde_yaml::from_str(include_str!("../../config/samples/run.yaml")).unwrap();
        run.metadata.uid = Some(RUN_UID.into());
        run
    }

    /// Asserts the controller owner reference of a run's child.
    pub fn assert_owned_by_run(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
        let refs = meta.owner_references.as_deref().unwrap_or_default();
        assert_eq!(refs.len(), 1, "{refs:?}");
        let r = &refs[0];
        assert_eq!(
            (
                r.api_version.as_str(),
                r.kind.as_str(),
                r.name.as_str(),
                r.uid.as_str(),
                r.controller
            ),
            (
                "claude-operator.dev/v1alpha1",
                "ClaudeRun",
                "gh-3f1c2a9d0b7e4c61",
                RUN_UID,
                Some(true)
            )
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept_readable() {
        assert_eq!(pod_name("gh-3f1c2a9d0b7e4c61"), "gh-3f1c2a9d0b7e4c61-runner");
        assert_eq!(secret_name("gh-3f1c2a9d0b7e4c61"), "gh-3f1c2a9d0b7e4c61-secrets");
        assert_eq!(network_policy_name("gh-3f1c2a9d0b7e4c61"), "gh-3f1c2a9d0b7e4c61-egress");
        assert_eq!(quota_name("acme-backend"), "claude-operator-acme-backend");
        assert_eq!(label_value("gh-3f1c2a9d0b7e4c61"), "gh-3f1c2a9d0b7e4c61");
        assert_eq!(label_value("a.b_c"), "a.b_c");
    }

    #[test]
    fn long_or_dotted_names_become_valid_distinct_dns_labels() {
        let long = "r".repeat(253);
        let long2 = format!("{}s", "r".repeat(252));
        let dotted = "my.run.name";
        let dashed = "my-run-name";
        let cases = [
            long.as_str(),
            long2.as_str(),
            dotted,
            dashed,
            "-x",
            "x".repeat(60).as_str(),
        ]
        .map(str::to_owned);
        for build in [pod_name, secret_name, network_policy_name, quota_name] {
            let names: Vec<String> = cases.iter().map(|c| build(c)).collect();
            for (case, name) in cases.iter().zip(&names) {
                assert!(is_dns_label(name), "{case:?} -> {name:?}");
                assert_eq!(&build(case), name, "deterministic");
            }
            let mut unique = names.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), names.len(), "distinct: {names:?}");
        }
        let name = pod_name(&long);
        assert_eq!(name.len(), 63);
        assert!(name.starts_with("rrrr") && name.ends_with("-runner"), "{name}");
        assert_eq!(pod_name(dotted), format!("my-run-name-{}-runner", hash(dotted)));
    }

    #[test]
    fn long_label_values_are_cut_and_hashed() {
        let long = "p".repeat(253);
        let value = label_value(&long);
        assert!(is_label_value(&value) && value.len() == 63, "{value}");
        assert_eq!(value, format!("{}-{}", "p".repeat(52), hash(&long)));
        assert_ne!(label_value(&format!("{long}q")), value);
        for bad in ["-lead", "trail.", "sp ace", "ümlaut"] {
            assert!(is_label_value(&label_value(bad)), "{bad}");
        }
    }

    #[test]
    fn owners_without_server_metadata_are_refused() {
        let mut run = fixtures::run();
        run.metadata.uid = None;
        assert_eq!(
            run_owner(&run).unwrap_err(),
            Error::MissingMetadata {
                kind: "ClaudeRun",
                field: "uid"
            }
        );
        run.metadata.namespace = None;
        assert_eq!(
            run_owner(&run).unwrap_err(),
            Error::MissingMetadata {
                kind: "ClaudeRun",
                field: "namespace"
            }
        );
    }

    #[test]
    fn only_the_runs_controller_reference_makes_a_child_its_own() {
        let run = fixtures::run();
        let (_, _, owner) = run_owner(&run).unwrap();
        let meta = |refs: Vec<OwnerReference>| k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            owner_references: Some(refs),
            ..Default::default()
        };
        assert!(controlled_by(&meta(vec![owner.clone()]), fixtures::RUN_UID));
        assert!(!controlled_by(&meta(vec![]), fixtures::RUN_UID));
        assert!(!controlled_by(&Default::default(), fixtures::RUN_UID));
        assert!(!controlled_by(&meta(vec![owner.clone()]), "another-uid"));
        assert!(!controlled_by(&meta(vec![owner.clone()]), ""));
        let not_controller = OwnerReference {
            controller: None,
            ..owner.clone()
        };
        assert!(!controlled_by(&meta(vec![not_controller]), fixtures::RUN_UID));
        let other_kind = OwnerReference {
            kind: "Job".into(),
            ..owner
        };
        assert!(!controlled_by(&meta(vec![other_kind]), fixtures::RUN_UID));
    }

    #[test]
    fn run_labels_are_the_common_set() {
        let labels = run_labels(&fixtures::run());
        assert_eq!(
            labels,
            BTreeMap::from(
                [
                    ("app.kubernetes.io/managed-by", "claude-operator"),
                    ("app.kubernetes.io/name", "claude-runner"),
                    ("claude-operator.dev/policy", "acme-backend"),
                    ("claude-operator.dev/run", "gh-3f1c2a9d0b7e4c61"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
            )
        );
    }
}
