//! Who may start a run: the authorization decision over a policy's
//! `authorization` section, the trigger as GitHub delivered it, and what
//! GitHub's API said about the actor. Pure: the controller fetches the facts
//! (see `crate::github::client`) and applies the decision.
//!
//! Fail closed: a failed lookup denies with `AuthorizationUnavailable`, never
//! admits. The webhook's `author_association` is never proof of anything.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use crate::api::conditions::reasons;
use crate::api::{
    Actor, ActorType, ApprovalRequirement, Authorization, GitHubAccess, OutsiderPolicy, Permission, TokenAccess,
    Trigger,
};

/// What GitHub's API said about an actor, asked as the app's installation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActorFacts {
    /// The login the facts are about.
    pub login: String,
    /// The actor's permission on the repository (`role_name` first, so that
    /// `triage` and `maintain` are told apart); `None` means no access.
    pub permission: Option<Permission>,
    /// The account type per `GET /users/{login}` (not per the payload).
    pub user_type: ActorType,
    /// Membership per organization, keyed by the organization's login in
    /// lower case.
    pub org_member: BTreeMap<String, bool>,
    /// Active membership per team, keyed by `org/team-slug` in lower case.
    /// A pending invitation is `false`.
    pub team_member: BTreeMap<String, bool>,
}

impl ActorFacts {
    /// Whether every membership GitHub was asked about is held and the actor
    /// has some access: such answers may be cached longer than negative ones.
    pub fn is_positive(&self) -> bool {
        self.permission.is_some() && self.org_member.values().all(|m| *m) && self.team_member.values().all(|m| *m)
    }
}

/// A lookup that failed: GitHub was unreachable, answered an error, or the
/// facts do not cover what the policy asks. Never carries a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("authorization lookup failed: {message}")]
pub struct Unavailable {
    /// What went wrong, for people.
    pub message: String,
}

impl Unavailable {
    /// An `Unavailable` with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// The outcome of [`authorize`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthzDecision {
    /// The actor may start the run.
    Admit,
    /// The actor is an outsider under `outsiders: RequireApproval`, or the
    /// policy wants an approval for every run: the run waits for an
    /// authorized person's approval.
    AwaitApproval {
        /// Whether the actor is an outsider (else they passed, and the
        /// policy's `requireApproval: All` makes them wait).
        outsider: bool,
        /// Why approval is needed, for people.
        message: String,
    },
    /// The run is refused.
    Deny {
        /// One of the admission reasons in [`crate::api::conditions::reasons`].
        reason: &'static str,
        /// Why, for people.
        message: String,
    },
}

impl AuthzDecision {
    /// Whether the decision admits the run.
    pub fn is_admit(&self) -> bool {
        matches!(self, AuthzDecision::Admit)
    }

    /// The machine-readable reason of the decision.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthzDecision::Admit => reasons::ADMITTED,
            AuthzDecision::AwaitApproval { outsider: true, .. } => reasons::AWAITING_APPROVAL,
            AuthzDecision::AwaitApproval { outsider: false, .. } => reasons::APPROVAL_REQUIRED,
            AuthzDecision::Deny { reason, .. } => reason,
        }
    }

    fn deny(reason: &'static str, message: impl Into<String>) -> Self {
        AuthzDecision::Deny {
            reason,
            message: message.into(),
        }
    }
}

fn same_login(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

pub(super) fn listed(list: &[String], login: &str) -> bool {
    list.iter().any(|l| same_login(l, login))
}

fn looks_like_bot(actor: &Actor) -> bool {
    actor.type_ == ActorType::Bot || actor.login.to_ascii_lowercase().ends_with("[bot]")
}

fn permission_name(p: Option<Permission>) -> &'static str {
    match p {
        None => "none",
        Some(Permission::Read) => "read",
        Some(Permission::Triage) => "triage",
        Some(Permission::Write) => "write",
        Some(Permission::Maintain) => "maintain",
        Some(Permission::Admin) => "admin",
    }
}

/// Decides whether the trigger's actor may start a run under `policy`.
///
/// Order of the checks:
/// 1. `denyUsers` (case-insensitive) denies `DeniedUser`, before anything else.
/// 2. A bot (per the payload, or per GitHub's facts) not in `allowBots` is
///    denied `BotNotAllowed`.
/// 3. A failed lookup, or facts about another login or missing an asked
///    organization or team, deny `AuthorizationUnavailable`.
/// 4. Allowed bots need `minPermission`; they are never outsiders.
/// 5. `allowUsers` need to be real users (per GitHub) with `minPermission`,
///    but skip the organization and team requirements.
/// 6. Everyone else needs `minPermission`, membership of every listed
///    organization and active membership of at least one listed team.
///
/// A person failing 4-6 is an outsider: denied, or with `outsiders:
/// RequireApproval` left waiting for approval. An outsider on a fork pull
/// request whose runs would get write access (`allowForkWrite`) is denied
/// `ForkNotAllowed` instead: approval is given to a comment, but the fork's
/// owner can push new code after it, and that code would run with a token
/// that can write here.
///
/// Under `requireApproval: All` an actor who passes waits for approval too
/// (`outsider: false`, reason `ApprovalRequired`), so every run has an approver.
pub fn authorize(policy: &Authorization, trigger: &Trigger, facts: &Result<ActorFacts, Unavailable>) -> AuthzDecision {
    match authorize_actor(policy, &trigger.actor, trigger.fork, facts) {
        AuthzDecision::Admit if policy.require_approval == ApprovalRequirement::All => AuthzDecision::AwaitApproval {
            outsider: false,
            message: format!(
                "the policy requires an authorized person's approval for every run ({} passes its checks)",
                trigger.actor.login
            ),
        },
        decision => decision,
    }
}

/// Whether `approver` (with GitHub's `facts` about them) may approve a
/// waiting run of `trigger`: never its own author, and only someone the
/// policy's checks admit on their own (an outsider cannot approve, nor can
/// anyone on the deny list). `requireApproval` does not apply to approvers.
/// `Err` carries the reason a comment did not approve.
pub fn approver_may_approve(
    policy: &Authorization,
    trigger: &Trigger,
    approver: &Actor,
    facts: &Result<ActorFacts, Unavailable>,
) -> Result<(), &'static str> {
    if same_login(&approver.login, &trigger.actor.login) {
        return Err(reasons::OWN_TRIGGER);
    }
    // An approver never "waits": judged as under `outsiders: Deny`, so a
    // refusal names what they lack.
    let strict = Authorization {
        outsiders: OutsiderPolicy::Deny,
        ..policy.clone()
    };
    match authorize_actor(&strict, approver, false, facts) {
        AuthzDecision::Admit => Ok(()),
        decision => Err(decision.reason()),
    }
}

/// Whether one more outsider's run may wait for approval on a repository
/// where `waiting` outsiders' runs wait already (`maxWaitingRuns`, at least 1).
pub fn may_wait(policy: &Authorization, waiting: usize) -> bool {
    waiting < policy.max_waiting_runs.max(1) as usize
}

fn authorize_actor(
    policy: &Authorization,
    actor: &Actor,
    fork: bool,
    facts: &Result<ActorFacts, Unavailable>,
) -> AuthzDecision {
    let login = actor.login.as_str();
    if listed(&policy.deny_users, login) {
        return AuthzDecision::deny(reasons::DENIED_USER, format!("{login} is on the policy's deny list"));
    }
    let bot_allowed = listed(&policy.allow_bots, login);
    if looks_like_bot(actor) && !bot_allowed {
        return AuthzDecision::deny(
            reasons::BOT_NOT_ALLOWED,
            format!("{login} is a bot account and not in allowBots"),
        );
    }
    let facts = match facts {
        Ok(f) => f,
        Err(e) => {
            return AuthzDecision::deny(
                reasons::AUTHORIZATION_UNAVAILABLE,
                format!("could not check {login} with GitHub: {}", e.message),
            );
        }
    };
    if !same_login(&facts.login, login) {
        return AuthzDecision::deny(
            reasons::AUTHORIZATION_UNAVAILABLE,
            format!("GitHub's answer is about {}, not {login}", facts.login),
        );
    }

    let permission_ok = facts.permission.is_some_and(|p| p >= policy.min_permission);
    let permission_failure = || {
        format!(
            "{login} has {} permission on the repository; the policy requires {}",
            permission_name(facts.permission),
            permission_name(Some(policy.min_permission)),
        )
    };

    match facts.user_type {
        ActorType::Bot => {
            if !bot_allowed {
                return AuthzDecision::deny(
                    reasons::BOT_NOT_ALLOWED,
                    format!("GitHub says {login} is a bot account, and it is not in allowBots"),
                );
            }
            // Allowed bots still need the permission, and are never
            // "outsiders" waiting for approval.
            return if permission_ok {
                AuthzDecision::Admit
            } else {
                AuthzDecision::deny(reasons::INSUFFICIENT_PERMISSION, permission_failure())
            };
        }
        ActorType::Organization => {
            return AuthzDecision::deny(
                reasons::INSUFFICIENT_PERMISSION,
                format!("GitHub says {login} is an organization, not a user"),
            );
        }
        ActorType::User => {}
    }
    if actor.type_ == ActorType::Bot {
        // The payload says bot, GitHub says user: the payload's claim was
        // already handled above (an allowed bot name), so this is an allowed
        // bot login that GitHub reports as a user. Treat it as a bot.
        return if permission_ok {
            AuthzDecision::Admit
        } else {
            AuthzDecision::deny(reasons::INSUFFICIENT_PERMISSION, permission_failure())
        };
    }

    let failure = if !permission_ok {
        Some((reasons::INSUFFICIENT_PERMISSION, permission_failure()))
    } else if listed(&policy.allow_users, login) {
        None
    } else {
        membership_failure(policy, login, facts)
    };
    let Some((reason, message)) = failure else {
        return AuthzDecision::Admit;
    };
    if reason == reasons::AUTHORIZATION_UNAVAILABLE {
        return AuthzDecision::deny(reason, message);
    }
    match policy.outsiders {
        OutsiderPolicy::Deny => AuthzDecision::deny(reason, message),
        OutsiderPolicy::RequireApproval if fork && policy.allow_fork_write => AuthzDecision::deny(
            reasons::FORK_NOT_ALLOWED,
            format!(
                "{message}; runs on forks get write access under this policy (allowForkWrite), so an outsider's fork cannot be approved"
            ),
        ),
        OutsiderPolicy::RequireApproval => AuthzDecision::AwaitApproval {
            outsider: true,
            message: format!("{message}; waiting for approval by an authorized user"),
        },
    }
}

/// The first organization or team requirement the actor fails, if any.
fn membership_failure(policy: &Authorization, login: &str, facts: &ActorFacts) -> Option<(&'static str, String)> {
    for org in &policy.organizations {
        match facts.org_member.get(&org.to_ascii_lowercase()) {
            Some(true) => {}
            Some(false) => {
                return Some((
                    reasons::NOT_ORG_MEMBER,
                    format!("{login} is not a member of the organization {org}"),
                ));
            }
            None => {
                return Some((
                    reasons::AUTHORIZATION_UNAVAILABLE,
                    format!("membership of {login} in the organization {org} was not checked"),
                ));
            }
        }
    }
    if policy.teams.is_empty() {
        return None;
    }
    let mut unchecked = None;
    for team in &policy.teams {
        match facts.team_member.get(&team.to_ascii_lowercase()) {
            Some(true) => return None,
            Some(false) => {}
            None => unchecked = Some(team),
        }
    }
    if let Some(team) = unchecked {
        return Some((
            reasons::AUTHORIZATION_UNAVAILABLE,
            format!("membership of {login} in the team {team} was not checked"),
        ));
    }
    Some((
        reasons::NOT_TEAM_MEMBER,
        format!(
            "{login} is not an active member of any of the teams {}",
            policy.teams.join(", ")
        ),
    ))
}

/// The permissions of a run's token: the policy's, read-only for pull
/// requests from forks unless `allow_fork_write`.
pub fn token_permissions(access: &GitHubAccess, fork: bool, allow_fork_write: bool) -> BTreeMap<String, TokenAccess> {
    let read_only = fork && !allow_fork_write;
    access
        .permissions
        .iter()
        .map(|(name, level)| {
            let level = if read_only { TokenAccess::Read } else { *level };
            (name.clone(), level)
        })
        .collect()
}

/// The permissions of an automatic review's token: `contents` read only
/// (it pushes nothing, fork or not), `pull_requests` as the policy says (a
/// review is posted with it; the gateway lets the run post exactly one),
/// the rest read only.
pub fn review_token_permissions(access: &GitHubAccess) -> BTreeMap<String, TokenAccess> {
    access
        .permissions
        .iter()
        .map(|(name, level)| {
            let level = if name == "pull_requests" {
                *level
            } else {
                TokenAccess::Read
            };
            (name.clone(), level)
        })
        .collect()
}

/// An approval comment on a run waiting for approval.
#[derive(Clone, Debug, PartialEq)]
pub struct Approval {
    /// Who wrote the approval comment.
    pub approver: Actor,
    /// The issue or pull request it was written on.
    pub number: i64,
    /// When it was written.
    pub created_at: Timestamp,
}

/// Whether `approval` approves the run of `trigger` that began waiting at
/// `awaiting_since`: it must be on the same issue or pull request, come
/// within `approvalWindowHours` after the wait began, and its author must be
/// admitted by [`authorize`] on their own (`approver_facts` are GitHub's
/// facts about the approver). An outsider cannot approve, nor can anyone on
/// the deny list.
pub fn approval_is_valid(
    policy: &Authorization,
    trigger: &Trigger,
    awaiting_since: Timestamp,
    approval: &Approval,
    approver_facts: &Result<ActorFacts, Unavailable>,
) -> bool {
    if approval.number != trigger.number {
        return false;
    }
    let window = SignedDuration::from_hours(i64::from(policy.approval_window_hours.max(0)));
    let Ok(deadline) = awaiting_since.checked_add(window) else {
        return false;
    };
    if approval.created_at < awaiting_since || approval.created_at > deadline {
        return false;
    }
    authorize_actor(policy, &approval.approver, false, approver_facts).is_admit()
}

/// When a run waiting since `awaiting_since` stops waiting and is denied
/// `ApprovalExpired`.
pub fn approval_deadline(policy: &Authorization, awaiting_since: Timestamp) -> Timestamp {
    let window = SignedDuration::from_hours(i64::from(policy.approval_window_hours.max(0)));
    awaiting_since.checked_add(window).unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
#[path = "authorize_tests.rs"]
mod tests;
