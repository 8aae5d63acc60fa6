//! Who may cancel a run: the decision over a recorded cancel request, the
//! run's trigger and what GitHub said about the requester. Pure.
//!
//! A closed issue or pull request, and a superseding push, are GitHub's own
//! signed word: they cancel. A cancel comment cancels when its author is the
//! run's trigger author (as the signed webhook named them; a Manual run's
//! actor is only a name in its spec, so it never counts) or has at least
//! write permission per GitHub's API; a denylisted login never cancels. A
//! failed lookup refuses (the run goes on): fail closed.

use super::authorize::{ActorFacts, Unavailable, listed};
use crate::api::conditions::reasons;
use crate::api::labels::{CancelKind, CancelRequest};
use crate::api::{Authorization, Permission, Trigger, TriggerSource};

/// Whether deciding `request` needs GitHub's word on its author.
pub fn cancel_needs_lookup(trigger: &Trigger, request: &CancelRequest) -> bool {
    request.kind == CancelKind::Comment && !is_trigger_author(trigger, request)
}

fn is_trigger_author(trigger: &Trigger, request: &CancelRequest) -> bool {
    trigger.source == TriggerSource::GitHubWebhook && trigger.actor.id == request.id
}

/// Whether `request` cancels a run of `trigger` under `policy`; `Err` is
/// why not (a reason constant). `facts` is read only when
/// [`cancel_needs_lookup`] says so.
pub fn may_cancel(
    policy: &Authorization,
    trigger: &Trigger,
    request: &CancelRequest,
    facts: &Result<ActorFacts, Unavailable>,
) -> Result<(), &'static str> {
    match request.kind {
        CancelKind::Closed | CancelKind::Superseded => return Ok(()),
        CancelKind::Comment => {}
    }
    if listed(&policy.deny_users, &request.login) {
        return Err(reasons::DENIED_USER);
    }
    if is_trigger_author(trigger, request) {
        return Ok(());
    }
    let facts = facts.as_ref().map_err(|_| reasons::AUTHORIZATION_UNAVAILABLE)?;
    if !facts.login.eq_ignore_ascii_case(&request.login) {
        return Err(reasons::AUTHORIZATION_UNAVAILABLE);
    }
    match facts.permission {
        Some(p) if p >= Permission::Write => Ok(()),
        _ => Err(reasons::INSUFFICIENT_PERMISSION),
    }
}

/// The run's outcome for a cancel of this kind.
pub fn cancel_reason(kind: CancelKind) -> &'static str {
    match kind {
        CancelKind::Comment => reasons::CANCEL_REQUESTED,
        CancelKind::Closed => reasons::THREAD_CLOSED,
        CancelKind::Superseded => reasons::SUPERSEDED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Actor, ActorType, AuthorAssociation};

    fn trigger(source: TriggerSource) -> Trigger {
        Trigger {
            source,
            event: "issue_comment".into(),
            action: "created".into(),
            delivery_id: "d".into(),
            actor: Actor {
                login: "dev".into(),
                id: 7,
                type_: ActorType::User,
            },
            author_association: AuthorAssociation::Member,
            number: 1,
            is_pull_request: false,
            title: String::new(),
            html_url: None,
            comment_id: Some(1),
            comment_url: None,
            head_sha: None,
            head_ref: None,
            fork: false,
        }
    }

    fn facts(login: &str, permission: Option<Permission>) -> Result<ActorFacts, Unavailable> {
        Ok(ActorFacts {
            login: login.into(),
            permission,
            user_type: ActorType::User,
            org_member: Default::default(),
            team_member: Default::default(),
        })
    }

    /// (kind, trigger source, requester login, id, facts, denylisted?, verdict)
    type Row = (
        CancelKind,
        TriggerSource,
        &'static str,
        i64,
        Result<ActorFacts, Unavailable>,
        bool,
        Result<(), &'static str>,
    );

    #[test]
    fn who_may_cancel() {
        use CancelKind::*;
        use Permission::*;
        use TriggerSource::*;
        let unavailable = || Err(Unavailable::new("GitHub is down"));
        let rows: Vec<Row> = vec![
            (Comment, GitHubWebhook, "dev", 7, unavailable(), false, Ok(())),
            (Comment, GitHubWebhook, "DEV-renamed", 7, unavailable(), false, Ok(())),
            (
                Comment,
                Manual,
                "dev",
                7,
                facts("dev", Some(Read)),
                false,
                Err(reasons::INSUFFICIENT_PERMISSION),
            ),
            (
                Comment,
                GitHubWebhook,
                "carol",
                9,
                facts("carol", Some(Write)),
                false,
                Ok(()),
            ),
            (
                Comment,
                GitHubWebhook,
                "carol",
                9,
                facts("carol", Some(Admin)),
                false,
                Ok(()),
            ),
            (
                Comment,
                GitHubWebhook,
                "rob",
                8,
                facts("rob", Some(Triage)),
                false,
                Err(reasons::INSUFFICIENT_PERMISSION),
            ),
            (
                Comment,
                GitHubWebhook,
                "nina",
                3,
                facts("nina", None),
                false,
                Err(reasons::INSUFFICIENT_PERMISSION),
            ),
            (
                Comment,
                GitHubWebhook,
                "carol",
                9,
                unavailable(),
                false,
                Err(reasons::AUTHORIZATION_UNAVAILABLE),
            ),
            (
                Comment,
                GitHubWebhook,
                "carol",
                9,
                facts("mallory", Some(Admin)),
                false,
                Err(reasons::AUTHORIZATION_UNAVAILABLE),
            ),
            (
                Comment,
                GitHubWebhook,
                "carol",
                9,
                facts("carol", Some(Admin)),
                true,
                Err(reasons::DENIED_USER),
            ),
            (
                Comment,
                GitHubWebhook,
                "dev",
                7,
                unavailable(),
                true,
                Err(reasons::DENIED_USER),
            ),
            (Closed, GitHubWebhook, "nina", 3, unavailable(), false, Ok(())),
            (Superseded, Manual, "nina", 3, unavailable(), true, Ok(())),
        ];
        for (kind, source, login, id, facts, denied, want) in rows {
            let policy = Authorization {
                deny_users: if denied { vec![login.to_owned()] } else { vec![] },
                ..Default::default()
            };
            let t = trigger(source);
            let request = CancelRequest {
                kind,
                login: login.into(),
                id,
                comment_id: None,
                delivery_id: "d".into(),
            };
            assert_eq!(
                may_cancel(&policy, &t, &request, &facts),
                want,
                "{kind:?} {source:?} {login}"
            );
            let lookup = cancel_needs_lookup(&t, &request);
            assert_eq!(
                lookup,
                kind == Comment && !(source == GitHubWebhook && id == 7),
                "{kind:?} {login}"
            );
        }
    }
}
