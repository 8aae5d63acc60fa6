//! The run's grant Secret (see [`crate::grant`]): in the gateway's namespace,
//! holding the run's GitHub token, the Anthropic key, the SHA-256 of the
//! run's capability and the run's facts. It lives in another namespace than
//! the run, so it cannot be owned by it: it is labelled with the run and
//! deleted explicitly by the controller (and its finalizer).
//!
//! The returned Secret holds secret values: never log it or format it with
//! `Debug`. Only its metadata may be shown.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

use super::{Error, LABEL_MANAGED_BY, LABEL_RUN, MANAGED_BY, Result, label_value, run_owner};
use crate::api::{ClaudeRun, ClaudeRunPolicySpec, PullRequestPush};
use crate::grant::{
    GrantFacts, KEY_ANTHROPIC_API_KEY, KEY_CAPABILITY_SHA256, KEY_FACTS, KEY_GITHUB_TOKEN, LABEL_GRANT,
    LABEL_RUN_NAMESPACE, capability_sha256, grant_name,
};

/// The branch a run pushes to when it has its own.
pub fn push_branch(run_name: &str) -> String {
    format!("claude/{run_name}")
}

/// Where a run may push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushTarget {
    /// Nothing: a fork's pull request is read-only.
    ReadOnly,
    /// Its own new branch, `claude/<run>`.
    RunBranch(String),
    /// The pull request's existing head branch, fast-forward only.
    PullRequestBranch(String),
}

impl PushTarget {
    /// The branch, if the run may push.
    pub fn branch(&self) -> Option<&str> {
        match self {
            PushTarget::ReadOnly => None,
            PushTarget::RunBranch(b) | PushTarget::PullRequestBranch(b) => Some(b),
        }
    }
}

/// Where `run` pushes under `policy`: nowhere for a fork's pull request or
/// an automatic review. The pull request's own branch only
/// under `pullRequestPush: PullRequestBranch`, for a pull request that is not
/// from a fork and whose head branch is known and a plain branch name. The
/// controller fills `head_ref` and `fork` from GitHub's answer (never from
/// the payload) before it builds the grant and the pod under that setting,
/// and clears `head_ref` when the head is the default branch.
pub fn push_target(policy: &ClaudeRunPolicySpec, run: &ClaudeRun, run_name: &str) -> PushTarget {
    let trigger = &run.spec.trigger;
    if trigger.fork || trigger.is_review() {
        return PushTarget::ReadOnly;
    }
    match (&policy.github.pull_request_push, &trigger.head_ref) {
        (PullRequestPush::PullRequestBranch, Some(head)) if trigger.is_pull_request && is_branch_name(head) => {
            PushTarget::PullRequestBranch(head.clone())
        }
        _ => PushTarget::RunBranch(push_branch(run_name)),
    }
}

/// A branch name git accepts and that means only itself: the rules of
/// `git check-ref-format --branch`, without `@{` forms, plus no leading
/// `-` (it would read as an option) and at most 255 bytes.
pub fn is_branch_name(name: &str) -> bool {
    let bad_char = |c: char| c.is_ascii_control() || c.is_whitespace() || "~^:?*[\\".contains(c);
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['-', '/', '.'])
        && !name.ends_with(['/', '.'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && !name.contains("/.")
        && !name.split('/').any(|part| part.ends_with(".lock"))
        && name != "@"
        && !name.chars().any(bad_char)
}

/// What the gateway needs to guard the run: its thread, branch, models,
/// budget (`max_cost_usd`, the run's reservation) and guards, valid until
/// `expires_at` (the token's expiry). A fork's pull request gets no branch:
/// its run is read-only.
pub fn grant_facts(
    policy: &ClaudeRunPolicySpec,
    run: &ClaudeRun,
    max_cost_usd: &str,
    expires_at: Timestamp,
) -> Result<GrantFacts> {
    let (name, namespace, owner) = run_owner(run)?;
    let trigger = &run.spec.trigger;
    let target = push_target(policy, run, &name);
    let mut allowed_models = vec![policy.runner.model.clone()];
    for m in &policy.runner.allowed_models {
        if !allowed_models.contains(m) {
            allowed_models.push(m.clone());
        }
    }
    Ok(GrantFacts {
        namespace,
        run_uid: owner.uid,
        policy: run.spec.policy_name.clone(),
        repository: run.spec.repository.clone(),
        number: u64::try_from(trigger.number).map_err(|_| Error::InvalidNumber(trigger.number))?,
        is_pull_request: trigger.is_pull_request,
        head_sha: trigger.head_sha.clone(),
        push_branch: target.branch().map(str::to_owned),
        push_to_pull_request: matches!(target, PushTarget::PullRequestBranch(_)),
        review: trigger.is_review(),
        run: name,
        allowed_models,
        max_cost_usd: max_cost_usd.to_owned(),
        prices: policy.budget.prices.clone(),
        protected_paths: policy.github.protected_paths.clone(),
        allow_hosts: policy.network.allow_hosts.clone(),
        expires_at: expires_at.to_string(),
        triggered_at: run.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
    })
}

/// The credentials a grant carries. Not `Debug`: nothing prints it.
pub struct GrantCredentials<'a> {
    /// The run's GitHub installation token.
    pub github_token: &'a str,
    /// The policy's Anthropic API key.
    pub anthropic_key: &'a str,
    /// The run's capability (only its hash is stored).
    pub capability: &'a str,
}

/// The grant Secret of `run`, named [`grant_name`], in `gateway_namespace`,
/// labelled [`LABEL_GRANT`] and with the run's name and namespace.
pub fn grant_secret(
    run: &ClaudeRun,
    gateway_namespace: &str,
    facts: &GrantFacts,
    credentials: &GrantCredentials<'_>,
) -> Result<Secret> {
    let (name, namespace, _) = run_owner(run)?;
    let facts_json = serde_json::to_string(facts).expect("facts serialize");
    let data = [
        (KEY_GITHUB_TOKEN, credentials.github_token.to_owned()),
        (KEY_ANTHROPIC_API_KEY, credentials.anthropic_key.to_owned()),
        (KEY_CAPABILITY_SHA256, capability_sha256(credentials.capability)),
        (KEY_FACTS, facts_json),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), ByteString(value.into_bytes())))
    .collect();
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(grant_name(&namespace, &name)),
            namespace: Some(gateway_namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (LABEL_GRANT.to_owned(), "true".to_owned()),
                (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
                (LABEL_RUN.to_owned(), label_value(&name)),
                (LABEL_RUN_NAMESPACE.to_owned(), label_value(&namespace)),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    })
}

/// The facts stored on a grant Secret, when they parse.
pub fn facts_of(grant: &Secret) -> Option<GrantFacts> {
    let bytes = &grant.data.as_ref()?.get(KEY_FACTS)?.0;
    serde_json::from_slice(bytes).ok()
}

/// Whether `grant` is the grant of this very run (same uid) for this
/// capability: anything else (a leftover of a deleted run of the same name,
/// or one whose capability was lost) must not be used.
pub fn grant_matches(grant: &Secret, run_uid: &str, capability: &str) -> bool {
    let hash = grant
        .data
        .as_ref()
        .and_then(|d| d.get(KEY_CAPABILITY_SHA256))
        .map(|v| v.0.as_slice());
    let want = capability_sha256(capability);
    facts_of(grant).is_some_and(|f| f.run_uid == run_uid)
        && hash.is_some_and(|h| subtle::ConstantTimeEq::ct_eq(h, want.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;
    use crate::api::AllowHost;
    use pretty_assertions::assert_eq;

    const TOKEN: &str = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";
    const KEY: &str = "sk-ant-api03-test-key-not-real";
    const CAPABILITY: &str = "cocap_dGVzdC1jYXBhYmlsaXR5LW5vdC1yZWFsLTAxMjM0NTY3ODk";

    fn expires() -> Timestamp {
        "2026-05-01T12:34:56Z".parse().unwrap()
    }

    fn facts() -> GrantFacts {
        grant_facts(&fixtures::policy().spec, &fixtures::run(), "5.00", expires()).unwrap()
    }

    fn build() -> Secret {
        let credentials = GrantCredentials {
            github_token: TOKEN,
            anthropic_key: KEY,
            capability: CAPABILITY,
        };
        grant_secret(&fixtures::run(), "claude-operator", &facts(), &credentials).unwrap()
    }

    #[test]
    fn facts_come_from_the_run_and_policy() {
        let mut policy = fixtures::policy().spec;
        policy.runner.allowed_models = vec!["claude-haiku-*".into(), policy.runner.model.clone()];
        policy.network.allow_hosts = vec![AllowHost {
            host: "registry.npmjs.org".into(),
            ports: vec![],
        }];
        let f = grant_facts(&policy, &fixtures::run(), "5.00", expires()).unwrap();
        assert_eq!(f.namespace, "claude-runs");
        assert_eq!(f.run, "gh-3f1c2a9d0b7e4c61");
        assert_eq!(f.run_uid, fixtures::RUN_UID);
        assert_eq!(f.policy, "acme-backend");
        assert_eq!(
            (f.repository.as_str(), f.number, f.is_pull_request),
            ("acme/api", 42, false)
        );
        assert_eq!(f.push_branch.as_deref(), Some("claude/gh-3f1c2a9d0b7e4c61"));
        assert_eq!(
            f.allowed_models,
            ["claude-sonnet-4-5", "claude-haiku-*"],
            "the policy's model first, once"
        );
        assert_eq!(f.max_cost_usd, "5.00");
        assert_eq!(f.protected_paths, policy.github.protected_paths);
        assert_eq!(f.allow_hosts, policy.network.allow_hosts);
        assert_eq!(f.expires_at, "2026-05-01T12:34:56Z");
    }

    #[test]
    fn a_forks_pull_request_is_read_only_at_its_head() {
        let mut run = fixtures::run();
        run.spec.trigger.is_pull_request = true;
        run.spec.trigger.fork = true;
        run.spec.trigger.head_sha = Some("0123456789abcdef0123456789abcdef01234567".into());
        let f = grant_facts(&fixtures::policy().spec, &run, "5.00", expires()).unwrap();
        assert_eq!(f.push_branch, None);
        assert_eq!(f.head_sha.as_deref(), Some("0123456789abcdef0123456789abcdef01234567"));
        assert!(f.is_pull_request);
    }

    #[test]
    fn a_pull_request_pushes_to_its_own_branch_only_when_the_policy_says_so() {
        let mut run = fixtures::run();
        run.spec.trigger.is_pull_request = true;
        run.spec.trigger.head_ref = Some("feature/retry".into());
        let mut policy = fixtures::policy().spec;
        let own = "claude/gh-3f1c2a9d0b7e4c61";
        let target = |policy: &ClaudeRunPolicySpec, run: &ClaudeRun| push_target(policy, run, "gh-3f1c2a9d0b7e4c61");
        assert_eq!(target(&policy, &run), PushTarget::RunBranch(own.into()), "default");
        policy.github.pull_request_push = PullRequestPush::PullRequestBranch;
        assert_eq!(
            target(&policy, &run),
            PushTarget::PullRequestBranch("feature/retry".into())
        );
        let f = grant_facts(&policy, &run, "5.00", expires()).unwrap();
        assert_eq!(f.push_branch.as_deref(), Some("feature/retry"));
        assert!(f.push_to_pull_request);
        // A fork's pull request is read-only whatever the setting.
        let mut fork = run.clone();
        fork.spec.trigger.fork = true;
        assert_eq!(target(&policy, &fork), PushTarget::ReadOnly);
        let f = grant_facts(&policy, &fork, "5.00", expires()).unwrap();
        assert_eq!((f.push_branch, f.push_to_pull_request), (None, false));
        // Unknown or unusable head branch, or an issue: the run's own branch.
        for head in [
            None,
            Some("-f"),
            Some("a..b"),
            Some("x y"),
            Some("refs/../x"),
            Some("a.lock"),
        ] {
            let mut r = run.clone();
            r.spec.trigger.head_ref = head.map(str::to_owned);
            assert_eq!(target(&policy, &r), PushTarget::RunBranch(own.into()), "{head:?}");
        }
        let mut issue = run.clone();
        issue.spec.trigger.is_pull_request = false;
        assert_eq!(target(&policy, &issue), PushTarget::RunBranch(own.into()));
    }

    #[test]
    fn a_review_is_read_only_and_may_post_its_review() {
        let mut run = fixtures::run();
        run.spec.trigger.event = "pull_request".into();
        run.spec.trigger.action = "synchronize".into();
        run.spec.trigger.is_pull_request = true;
        run.spec.trigger.head_ref = Some("feature/retry".into());
        run.spec.trigger.head_sha = Some("0123456789abcdef0123456789abcdef01234567".into());
        let mut policy = fixtures::policy().spec;
        policy.github.pull_request_push = PullRequestPush::PullRequestBranch;
        let f = grant_facts(&policy, &run, "5.00", expires()).unwrap();
        assert_eq!((f.push_branch, f.push_to_pull_request, f.review), (None, false, true));
    }

    #[test]
    fn branch_names_follow_git_s_rules() {
        for ok in ["main", "feature/retry", "a-b_c.d", "v1.2", "user/x/y"] {
            assert!(is_branch_name(ok), "{ok}");
        }
        for bad in [
            "", "-x", "/x", "x/", ".x", "x/.y", "x.", "a..b", "a//b", "a b", "a~b", "a^b", "a:b", "a?b", "a*b", "a[b",
            "a\\b", "a@{b", "@", "x.lock", "x.lock/y", "a\tb",
        ] {
            assert!(!is_branch_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_grant_holds_credentials_and_only_a_hash_of_the_capability() {
        let secret = build();
        let data = secret.data.as_ref().unwrap();
        let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            ["anthropic-api-key", "capability-sha256", "github-token", "grant.json"]
        );
        assert_eq!(text("github-token"), TOKEN);
        assert_eq!(text("anthropic-api-key"), KEY);
        assert_eq!(text("capability-sha256"), capability_sha256(CAPABILITY));
        let whole = serde_json::to_string(&secret).unwrap();
        assert!(!whole.contains(&CAPABILITY[6..]), "the capability itself is not stored");
        assert_eq!(facts_of(&secret), Some(facts()));
        assert!(grant_matches(&secret, fixtures::RUN_UID, CAPABILITY));
        assert!(!grant_matches(&secret, "another-uid", CAPABILITY));
        assert!(!grant_matches(&secret, fixtures::RUN_UID, "cocap_other"));
    }

    #[test]
    fn metadata_labels_it_as_the_runs_grant_without_secrets() {
        let meta = build().metadata;
        assert_eq!(meta.name, Some(grant_name("claude-runs", "gh-3f1c2a9d0b7e4c61")));
        assert_eq!(meta.namespace.as_deref(), Some("claude-operator"));
        assert_eq!(meta.owner_references, None, "another namespace: deleted explicitly");
        let labels = meta.labels.clone().unwrap();
        assert_eq!(labels["claude-operator.dev/grant"], "true");
        assert_eq!(labels["claude-operator.dev/run"], "gh-3f1c2a9d0b7e4c61");
        assert_eq!(labels["claude-operator.dev/run-namespace"], "claude-runs");
        let text = serde_json::to_string(&meta).unwrap();
        for value in [TOKEN, KEY, CAPABILITY, "ghs_", "sk-ant", "cocap_"] {
            assert!(!text.contains(value), "{value:?} in {text}");
        }
    }
}
