//! Who may start a run by hand: a `ClaudeRun` with `trigger.source: Manual`
//! is authorized as the Kubernetes identity the apiserver authenticated
//! (`spec.requester`, which the chart's admission policy pins to
//! `request.userInfo` at create), under the policy's
//! `authorization.manualRuns`. Never as the GitHub login typed into
//! `spec.trigger.actor`, and never through the GitHub-actor checks. Pure.

use crate::api::conditions::reasons;
use crate::api::{ClaudeRunSpec, ManualRuns, TriggerSource};

use super::AuthzDecision;

/// Identities the apiserver gives requests it did not authenticate; they
/// never start a run, whatever a policy lists.
const ANONYMOUS_USER: &str = "system:anonymous";
const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";

/// The decision for a Manual run, or `None` when the run is not Manual (it
/// then goes through the GitHub-actor authorization).
///
/// Admit when the requester's username is listed in `rules.users` (exact:
/// Kubernetes user names are case-sensitive) or one of its groups is listed
/// in `rules.groups`; otherwise deny `ManualRunNotAllowed`, as for a run
/// that names no requester or an anonymous one.
pub fn authorize_manual(spec: &ClaudeRunSpec, rules: &ManualRuns) -> Option<AuthzDecision> {
    if spec.trigger.source != TriggerSource::Manual {
        return None;
    }
    let deny = |message: String| AuthzDecision::Deny {
        reason: reasons::MANUAL_RUN_NOT_ALLOWED,
        message,
    };
    let Some(requester) = &spec.requester else {
        return Some(deny(
            "a manual run must carry spec.requester, the Kubernetes identity that creates it".into(),
        ));
    };
    let username = requester.username.as_str();
    if username.is_empty() || username == ANONYMOUS_USER || requester.groups.iter().any(|g| g == UNAUTHENTICATED_GROUP)
    {
        return Some(deny("an unauthenticated requester cannot start manual runs".into()));
    }
    if rules.is_empty() {
        return Some(deny(
            "the policy allows no manual runs (authorization.manualRuns is empty)".into(),
        ));
    }
    let by_user = rules.users.iter().any(|u| u == username);
    let by_group = rules.groups.iter().any(|g| requester.groups.contains(g));
    Some(if by_user || by_group {
        AuthzDecision::Admit
    } else {
        deny(format!(
            "Kubernetes user {username} is not allowed to start manual runs under this policy (authorization.manualRuns)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Actor, ActorType, AuthorAssociation, Requester, Trigger};

    fn spec(source: TriggerSource, requester: Option<(&str, &[&str])>) -> ClaudeRunSpec {
        ClaudeRunSpec {
            policy_name: "p".into(),
            repository: "acme/api".into(),
            trigger: Trigger {
                source,
                event: "issue_comment".into(),
                action: "created".into(),
                delivery_id: "manual-1".into(),
                // A login typed by hand: it must not matter for Manual runs.
                actor: Actor {
                    login: "octocat-the-admin".into(),
                    id: 1,
                    type_: ActorType::User,
                },
                author_association: AuthorAssociation::Owner,
                number: 1,
                is_pull_request: false,
                title: String::new(),
                html_url: None,
                comment_id: None,
                comment_url: None,
                head_sha: None,
                head_ref: None,
                fork: false,
            },
            prompt: "do it".into(),
            requester: requester.map(|(u, g)| Requester {
                username: u.into(),
                groups: g.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    fn rules(users: &[&str], groups: &[&str]) -> ManualRuns {
        ManualRuns {
            users: users.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn manual_run_table() {
        use TriggerSource::*;
        let authed: &[&str] = &["system:authenticated"];
        let sre: &[&str] = &["sre", "system:authenticated"];
        let allow = rules(&["alice@example.com"], &["sre"]);
        // (case, source, requester, rules, admitted?) ; None = not decided here.
        type Case<'a> = (
            &'a str,
            TriggerSource,
            Option<(&'a str, &'a [&'a str])>,
            ManualRuns,
            Option<bool>,
        );
        let cases: Vec<Case> = vec![
            (
                "webhook runs are not decided here",
                GitHubWebhook,
                None,
                allow.clone(),
                None,
            ),
            (
                "webhook runs ignore a requester too",
                GitHubWebhook,
                Some(("alice@example.com", authed)),
                allow.clone(),
                None,
            ),
            (
                "listed user",
                Manual,
                Some(("alice@example.com", authed)),
                allow.clone(),
                Some(true),
            ),
            (
                "member of a listed group",
                Manual,
                Some(("bob", sre)),
                allow.clone(),
                Some(true),
            ),
            ("not listed", Manual, Some(("bob", authed)), allow.clone(), Some(false)),
            ("no requester", Manual, None, allow.clone(), Some(false)),
            (
                "user names are case-sensitive",
                Manual,
                Some(("Alice@example.com", authed)),
                allow.clone(),
                Some(false),
            ),
            (
                "group names are exact",
                Manual,
                Some(("bob", &["SRE"])),
                allow.clone(),
                Some(false),
            ),
            (
                "empty rules allow nobody",
                Manual,
                Some(("alice@example.com", sre)),
                ManualRuns::default(),
                Some(false),
            ),
            ("empty username", Manual, Some(("", sre)), allow.clone(), Some(false)),
            (
                "anonymous, even if listed",
                Manual,
                Some(("system:anonymous", &["system:unauthenticated"])),
                rules(&["system:anonymous"], &["system:unauthenticated"]),
                Some(false),
            ),
            (
                "unauthenticated group, even with a listed name",
                Manual,
                Some(("alice@example.com", &["system:unauthenticated"])),
                allow.clone(),
                Some(false),
            ),
            (
                "a service account by its full name",
                Manual,
                Some(("system:serviceaccount:ci:deployer", &["system:serviceaccounts"])),
                rules(&["system:serviceaccount:ci:deployer"], &[]),
                Some(true),
            ),
        ];
        for (name, source, requester, rules, want) in cases {
            let got = authorize_manual(&spec(source, requester), &rules);
            match (want, &got) {
                (None, None) => {}
                (Some(true), Some(AuthzDecision::Admit)) => {}
                (Some(false), Some(AuthzDecision::Deny { reason, message })) => {
                    assert_eq!(*reason, reasons::MANUAL_RUN_NOT_ALLOWED, "{name}");
                    assert!(!message.is_empty(), "{name}");
                }
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_typed_github_login_never_authorizes_a_manual_run() {
        // The actor login is listed as a user: it is not a Kubernetes identity.
        let s = spec(TriggerSource::Manual, Some(("mallory", &["system:authenticated"])));
        let got = authorize_manual(&s, &rules(&["octocat-the-admin"], &[]));
        assert!(matches!(got, Some(AuthzDecision::Deny { .. })), "{got:?}");
    }
}
