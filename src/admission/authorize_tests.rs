//! Tables over the authorization rules, read as the policy documentation.

use super::*;
use crate::api::{AuthorAssociation, TriggerSource};
use proptest::prelude::*;

const ASSOCIATIONS: [AuthorAssociation; 6] = [
    AuthorAssociation::Owner,
    AuthorAssociation::Member,
    AuthorAssociation::Collaborator,
    AuthorAssociation::Contributor,
    AuthorAssociation::FirstTimeContributor,
    AuthorAssociation::None,
];

const PERMISSIONS: [Option<Permission>; 6] = [
    Some(Permission::Admin),
    Some(Permission::Maintain),
    Some(Permission::Write),
    Some(Permission::Triage),
    Some(Permission::Read),
    None,
];

const MINIMUMS: [Permission; 5] = [
    Permission::Read,
    Permission::Triage,
    Permission::Write,
    Permission::Maintain,
    Permission::Admin,
];

fn trigger(login: &str, type_: ActorType, association: AuthorAssociation, fork: bool) -> Trigger {
    Trigger {
        source: TriggerSource::GitHubWebhook,
        event: "issue_comment".into(),
        action: "created".into(),
        delivery_id: "d-1".into(),
        actor: Actor {
            login: login.into(),
            id: 42,
            type_,
        },
        author_association: association,
        number: 7,
        is_pull_request: fork,
        title: "t".into(),
        html_url: None,
        comment_id: Some(1),
        comment_url: None,
        head_sha: None,
        head_ref: None,
        fork,
    }
}

fn user(login: &str) -> Trigger {
    trigger(login, ActorType::User, AuthorAssociation::Member, false)
}

fn facts(login: &str, permission: Option<Permission>) -> Result<ActorFacts, Unavailable> {
    Ok(ActorFacts {
        login: login.into(),
        permission,
        user_type: if login.ends_with("[bot]") {
            ActorType::Bot
        } else {
            ActorType::User
        },
        org_member: BTreeMap::new(),
        team_member: BTreeMap::new(),
    })
}

fn with_orgs(
    mut f: Result<ActorFacts, Unavailable>,
    orgs: &[(&str, bool)],
    teams: &[(&str, bool)],
) -> Result<ActorFacts, Unavailable> {
    let facts = f.as_mut().unwrap();
    facts.org_member = orgs.iter().map(|(o, m)| (o.to_string(), *m)).collect();
    facts.team_member = teams.iter().map(|(t, m)| (t.to_string(), *m)).collect();
    f
}

fn policy(min: Permission) -> Authorization {
    Authorization {
        min_permission: min,
        ..Default::default()
    }
}

fn reason(d: &AuthzDecision) -> &'static str {
    d.reason()
}

#[test]
fn association_times_permission_times_minimum() {
    // The payload's association never matters: only GitHub's permission does.
    for association in ASSOCIATIONS {
        for permission in PERMISSIONS {
            for min in MINIMUMS {
                let t = trigger("alice", ActorType::User, association, false);
                let d = authorize(&policy(min), &t, &facts("alice", permission));
                let expected = if permission.is_some_and(|p| p >= min) {
                    reasons::ADMITTED
                } else {
                    reasons::INSUFFICIENT_PERMISSION
                };
                assert_eq!(
                    reason(&d),
                    expected,
                    "{association:?} with {permission:?} under min {min:?}"
                );
            }
        }
    }
}

#[test]
fn read_only_collaborator_under_write_policy_is_denied() {
    let t = trigger("reader", ActorType::User, AuthorAssociation::Collaborator, false);
    let d = authorize(&policy(Permission::Write), &t, &facts("reader", Some(Permission::Read)));
    assert_eq!(reason(&d), reasons::INSUFFICIENT_PERMISSION);
    let AuthzDecision::Deny { message, .. } = d else {
        panic!("expected a denial")
    };
    assert!(message.contains("read") && message.contains("write"), "{message}");
}

#[test]
fn triage_and_maintain_sit_between_the_classic_levels() {
    let cases = [
        (
            Permission::Triage,
            Some(Permission::Read),
            reasons::INSUFFICIENT_PERMISSION,
        ),
        (Permission::Triage, Some(Permission::Triage), reasons::ADMITTED),
        (
            Permission::Write,
            Some(Permission::Triage),
            reasons::INSUFFICIENT_PERMISSION,
        ),
        (
            Permission::Maintain,
            Some(Permission::Write),
            reasons::INSUFFICIENT_PERMISSION,
        ),
        (Permission::Maintain, Some(Permission::Maintain), reasons::ADMITTED),
        (
            Permission::Admin,
            Some(Permission::Maintain),
            reasons::INSUFFICIENT_PERMISSION,
        ),
    ];
    for (min, have, expected) in cases {
        let d = authorize(&policy(min), &user("a"), &facts("a", have));
        assert_eq!(reason(&d), expected, "{have:?} under {min:?}");
    }
}

#[test]
fn organizations_are_all_required_and_teams_any_one() {
    let mut p = policy(Permission::Write);
    p.organizations = vec!["Acme".into(), "acme-labs".into()];
    p.teams = vec!["acme/Platform".into(), "acme/sre".into()];
    let w = Some(Permission::Write);
    type Memberships<'a> = &'a [(&'a str, bool)];
    let cases: [(Memberships, Memberships, &str); 7] = [
        (
            &[("acme", true), ("acme-labs", true)],
            &[("acme/platform", true), ("acme/sre", false)],
            reasons::ADMITTED,
        ),
        (
            &[("acme", true), ("acme-labs", true)],
            &[("acme/platform", false), ("acme/sre", true)],
            reasons::ADMITTED,
        ),
        (
            &[("acme", true), ("acme-labs", false)],
            &[("acme/platform", true), ("acme/sre", true)],
            reasons::NOT_ORG_MEMBER,
        ),
        (
            &[("acme", false), ("acme-labs", true)],
            &[("acme/platform", true), ("acme/sre", true)],
            reasons::NOT_ORG_MEMBER,
        ),
        (
            &[("acme", true), ("acme-labs", true)],
            &[("acme/platform", false), ("acme/sre", false)],
            reasons::NOT_TEAM_MEMBER,
        ),
        // Not asked: fail closed.
        (
            &[("acme", true)],
            &[("acme/platform", true)],
            reasons::AUTHORIZATION_UNAVAILABLE,
        ),
        (
            &[("acme", true), ("acme-labs", true)],
            &[],
            reasons::AUTHORIZATION_UNAVAILABLE,
        ),
    ];
    for (orgs, teams, expected) in cases {
        let d = authorize(&p, &user("bob"), &with_orgs(facts("bob", w), orgs, teams));
        assert_eq!(reason(&d), expected, "orgs {orgs:?} teams {teams:?}");
    }
    // Permission is checked before memberships.
    let d = authorize(
        &p,
        &user("bob"),
        &with_orgs(facts("bob", Some(Permission::Read)), &[("acme", false)], &[]),
    );
    assert_eq!(reason(&d), reasons::INSUFFICIENT_PERMISSION);
}

#[test]
fn deny_list_beats_everything_and_is_case_insensitive() {
    let mut p = policy(Permission::Read);
    p.deny_users = vec!["Mallory".into()];
    p.allow_users = vec!["mallory".into()];
    p.outsiders = OutsiderPolicy::RequireApproval;
    for f in [
        facts("mallory", Some(Permission::Admin)),
        Err(Unavailable::new("GitHub is down")),
    ] {
        let d = authorize(&p, &user("MALLORY"), &f);
        assert_eq!(reason(&d), reasons::DENIED_USER);
    }
}

#[test]
fn allow_list_skips_org_and_team_but_not_permission_nor_user_type() {
    let mut p = policy(Permission::Write);
    p.organizations = vec!["acme".into()];
    p.teams = vec!["acme/platform".into()];
    p.allow_users = vec!["Carol".into()];
    let d = authorize(&p, &user("carol"), &facts("carol", Some(Permission::Write)));
    assert_eq!(reason(&d), reasons::ADMITTED);
    let d = authorize(&p, &user("carol"), &facts("carol", Some(Permission::Read)));
    assert_eq!(reason(&d), reasons::INSUFFICIENT_PERMISSION);
    // The payload says User, GitHub says Bot: GitHub wins.
    let mut f = facts("carol", Some(Permission::Admin));
    f.as_mut().unwrap().user_type = ActorType::Bot;
    let d = authorize(&p, &user("carol"), &f);
    assert_eq!(reason(&d), reasons::BOT_NOT_ALLOWED);
    // Someone not on the list still needs the memberships.
    let d = authorize(
        &p,
        &user("dave"),
        &with_orgs(facts("dave", Some(Permission::Admin)), &[("acme", false)], &[]),
    );
    assert_eq!(reason(&d), reasons::NOT_ORG_MEMBER);
}

#[test]
fn bots_need_allow_bots_and_permission() {
    let bot = trigger("renovate[bot]", ActorType::Bot, AuthorAssociation::None, false);
    let d = authorize(
        &policy(Permission::Write),
        &bot,
        &facts("renovate[bot]", Some(Permission::Admin)),
    );
    assert_eq!(reason(&d), reasons::BOT_NOT_ALLOWED);
    // Denied before any lookup.
    let d = authorize(&policy(Permission::Write), &bot, &Err(Unavailable::new("x")));
    assert_eq!(reason(&d), reasons::BOT_NOT_ALLOWED);

    let mut p = policy(Permission::Write);
    p.allow_bots = vec!["Renovate[bot]".into()];
    p.outsiders = OutsiderPolicy::RequireApproval;
    let d = authorize(&p, &bot, &facts("renovate[bot]", Some(Permission::Write)));
    assert_eq!(reason(&d), reasons::ADMITTED);
    // An allowed bot without permission is denied, never left waiting.
    let d = authorize(&p, &bot, &facts("renovate[bot]", Some(Permission::Read)));
    assert_eq!(reason(&d), reasons::INSUFFICIENT_PERMISSION);
    // A login with a bot suffix is a bot whatever the payload's type says.
    let sneaky = trigger("evil[bot]", ActorType::User, AuthorAssociation::Owner, false);
    let d = authorize(&p, &sneaky, &facts("evil[bot]", Some(Permission::Admin)));
    assert_eq!(reason(&d), reasons::BOT_NOT_ALLOWED);
}

#[test]
fn organizations_cannot_trigger() {
    let mut f = facts("acme", Some(Permission::Admin));
    f.as_mut().unwrap().user_type = ActorType::Organization;
    let d = authorize(&policy(Permission::Read), &user("acme"), &f);
    assert_eq!(reason(&d), reasons::INSUFFICIENT_PERMISSION);
}

#[test]
fn lookup_failure_and_mismatched_facts_deny_unavailable() {
    let p = policy(Permission::Read);
    let d = authorize(&p, &user("erin"), &Err(Unavailable::new("timeout")));
    assert_eq!(reason(&d), reasons::AUTHORIZATION_UNAVAILABLE);
    let d = authorize(&p, &user("erin"), &facts("frank", Some(Permission::Admin)));
    assert_eq!(reason(&d), reasons::AUTHORIZATION_UNAVAILABLE);
    // Logins compare case-insensitively.
    let d = authorize(&p, &user("Erin"), &facts("erin", Some(Permission::Read)));
    assert_eq!(reason(&d), reasons::ADMITTED);
}

#[test]
fn outsiders_wait_for_approval_when_the_policy_says_so() {
    let mut p = policy(Permission::Write);
    p.organizations = vec!["acme".into()];
    p.outsiders = OutsiderPolicy::RequireApproval;
    let outsider = trigger("gus", ActorType::User, AuthorAssociation::FirstTimeContributor, false);
    for f in [
        facts("gus", None),
        facts("gus", Some(Permission::Read)),
        with_orgs(facts("gus", Some(Permission::Write)), &[("acme", false)], &[]),
    ] {
        let d = authorize(&p, &outsider, &f);
        assert!(matches!(d, AuthzDecision::AwaitApproval { .. }), "{d:?}");
    }
    // Lookup failures still deny.
    let d = authorize(&p, &outsider, &Err(Unavailable::new("x")));
    assert_eq!(reason(&d), reasons::AUTHORIZATION_UNAVAILABLE);
}

#[test]
fn approval_for_all_makes_every_admitted_actor_wait_and_changes_no_denial() {
    // Row: (requireApproval, outsiders, GitHub's permission, expected reason).
    use ApprovalRequirement::{All, Outsiders};
    let table = [
        (
            Outsiders,
            OutsiderPolicy::Deny,
            Some(Permission::Write),
            reasons::ADMITTED,
        ),
        (
            All,
            OutsiderPolicy::Deny,
            Some(Permission::Write),
            reasons::APPROVAL_REQUIRED,
        ),
        (
            All,
            OutsiderPolicy::Deny,
            Some(Permission::Admin),
            reasons::APPROVAL_REQUIRED,
        ),
        (
            All,
            OutsiderPolicy::Deny,
            Some(Permission::Read),
            reasons::INSUFFICIENT_PERMISSION,
        ),
        (
            All,
            OutsiderPolicy::RequireApproval,
            Some(Permission::Read),
            reasons::AWAITING_APPROVAL,
        ),
        (All, OutsiderPolicy::RequireApproval, None, reasons::AWAITING_APPROVAL),
        (
            Outsiders,
            OutsiderPolicy::RequireApproval,
            Some(Permission::Write),
            reasons::ADMITTED,
        ),
        (
            Outsiders,
            OutsiderPolicy::RequireApproval,
            Some(Permission::Read),
            reasons::AWAITING_APPROVAL,
        ),
    ];
    for (require, outsiders, permission, want) in table {
        let mut p = policy(Permission::Write);
        p.require_approval = require;
        p.outsiders = outsiders;
        let d = authorize(&p, &user("ivy"), &facts("ivy", permission));
        assert_eq!(reason(&d), want, "{require:?} {outsiders:?} {permission:?}: {d:?}");
    }
    // The deny list and failed lookups still deny first.
    let mut p = policy(Permission::Write);
    p.require_approval = All;
    p.deny_users = vec!["ivy".into()];
    let d = authorize(&p, &user("ivy"), &facts("ivy", Some(Permission::Admin)));
    assert_eq!(reason(&d), reasons::DENIED_USER);
    p.deny_users.clear();
    let d = authorize(&p, &user("ivy"), &Err(Unavailable::new("down")));
    assert_eq!(reason(&d), reasons::AUTHORIZATION_UNAVAILABLE);
}

/// (requireApproval, approver, GitHub's permission of the approver, outcome).
type ApproverRow = (
    ApprovalRequirement,
    &'static str,
    Option<Permission>,
    Result<(), &'static str>,
);

#[test]
fn who_may_approve_a_waiting_run() {
    let table: [ApproverRow; 7] = [
        (ApprovalRequirement::Outsiders, "alice", Some(Permission::Write), Ok(())),
        // Approval for all does not make approvers wait for an approval.
        (ApprovalRequirement::All, "alice", Some(Permission::Write), Ok(())),
        (
            ApprovalRequirement::All,
            "rob",
            Some(Permission::Read),
            Err(reasons::INSUFFICIENT_PERMISSION),
        ),
        (
            ApprovalRequirement::Outsiders,
            "nina",
            None,
            Err(reasons::INSUFFICIENT_PERMISSION),
        ),
        // The trigger's own author never approves it, whatever they may.
        (
            ApprovalRequirement::All,
            "gus",
            Some(Permission::Admin),
            Err(reasons::OWN_TRIGGER),
        ),
        (
            ApprovalRequirement::All,
            "GUS",
            Some(Permission::Admin),
            Err(reasons::OWN_TRIGGER),
        ),
        (
            ApprovalRequirement::All,
            "mallory",
            Some(Permission::Admin),
            Err(reasons::DENIED_USER),
        ),
    ];
    for (require, login, permission, want) in table {
        let mut p = policy(Permission::Write);
        p.require_approval = require;
        p.outsiders = OutsiderPolicy::RequireApproval;
        p.deny_users = vec!["mallory".into()];
        let approver = Actor {
            login: login.into(),
            id: 9,
            type_: ActorType::User,
        };
        let got = approver_may_approve(&p, &user("gus"), &approver, &facts(&login.to_lowercase(), permission));
        assert_eq!(got, want, "{require:?} {login} {permission:?}");
    }
    // A failed lookup never approves.
    let alice = Actor {
        login: "alice".into(),
        id: 1,
        type_: ActorType::User,
    };
    let got = approver_may_approve(
        &policy(Permission::Write),
        &user("gus"),
        &alice,
        &Err(Unavailable::new("x")),
    );
    assert_eq!(got, Err(reasons::AUTHORIZATION_UNAVAILABLE));
}

#[test]
fn waiting_runs_are_bounded_per_repository() {
    let mut p = policy(Permission::Write);
    for (max, waiting, may) in [
        (10, 0, true),
        (10, 9, true),
        (10, 10, false),
        (2, 2, false),
        (1, 0, true),
        (0, 0, true),
        (0, 1, false),
    ] {
        p.max_waiting_runs = max;
        assert_eq!(may_wait(&p, waiting), may, "max {max}, {waiting} waiting");
    }
}

#[test]
fn forks() {
    let mut p = policy(Permission::Write);
    p.outsiders = OutsiderPolicy::RequireApproval;
    let from_fork = trigger("hana", ActorType::User, AuthorAssociation::Contributor, true);
    let no_access = facts("hana", None);
    // Read-only fork runs may be approved.
    assert!(matches!(
        authorize(&p, &from_fork, &no_access),
        AuthzDecision::AwaitApproval { .. }
    ));
    // Fork runs with write tokens cannot be approved for outsiders.
    p.allow_fork_write = true;
    assert_eq!(
        reason(&authorize(&p, &from_fork, &no_access)),
        reasons::FORK_NOT_ALLOWED
    );
    // Authorized people are admitted on forks either way.
    assert_eq!(
        reason(&authorize(&p, &from_fork, &facts("hana", Some(Permission::Write)))),
        reasons::ADMITTED
    );
    // Under `Deny`, the outsider gets the plain reason.
    p.outsiders = OutsiderPolicy::Deny;
    assert_eq!(
        reason(&authorize(&p, &from_fork, &no_access)),
        reasons::INSUFFICIENT_PERMISSION
    );
}

#[test]
fn fork_tokens_are_read_only_unless_allowed() {
    let access = GitHubAccess::default();
    let all = |m: &BTreeMap<String, TokenAccess>, level| m.values().all(|v| *v == level);
    assert!(all(&token_permissions(&access, false, false), TokenAccess::Write));
    assert!(all(&token_permissions(&access, true, false), TokenAccess::Read));
    assert!(all(&token_permissions(&access, true, true), TokenAccess::Write));
    assert_eq!(
        token_permissions(&access, true, false).keys().collect::<Vec<_>>(),
        access.permissions.keys().collect::<Vec<_>>()
    );
}

#[test]
fn a_review_token_reads_code_and_writes_only_pull_requests() {
    let access = GitHubAccess::default();
    let got = review_token_permissions(&access);
    let levels: Vec<(&str, TokenAccess)> = got.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        levels,
        [
            ("contents", TokenAccess::Read),
            ("issues", TokenAccess::Read),
            ("pull_requests", TokenAccess::Write)
        ]
    );
}

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}

#[test]
fn approvals_count_only_from_authorized_people_within_the_window() {
    let mut p = policy(Permission::Write);
    p.outsiders = OutsiderPolicy::RequireApproval;
    p.approval_window_hours = 2;
    p.deny_users = vec!["mallory".into()];
    let run = trigger("gus", ActorType::User, AuthorAssociation::None, true);
    let since = ts(1_000_000);
    let approval = |login: &str, at: i64| Approval {
        approver: Actor {
            login: login.into(),
            id: 1,
            type_: ActorType::User,
        },
        number: 7,
        created_at: ts(at),
    };
    let maintainer = facts("maria", Some(Permission::Maintain));
    assert!(approval_is_valid(
        &p,
        &run,
        since,
        &approval("maria", 1_000_060),
        &maintainer
    ));
    // Too late, or before the run asked.
    assert!(!approval_is_valid(
        &p,
        &run,
        since,
        &approval("maria", 1_000_000 + 7201),
        &maintainer
    ));
    assert!(!approval_is_valid(
        &p,
        &run,
        since,
        &approval("maria", 999_999),
        &maintainer
    ));
    // On another issue.
    let mut elsewhere = approval("maria", 1_000_060);
    elsewhere.number = 8;
    assert!(!approval_is_valid(&p, &run, since, &elsewhere, &maintainer));
    // Outsiders (who would themselves wait), denied users and failed lookups cannot approve.
    assert!(!approval_is_valid(
        &p,
        &run,
        since,
        &approval("gus", 1_000_060),
        &facts("gus", Some(Permission::Read))
    ));
    assert!(!approval_is_valid(
        &p,
        &run,
        since,
        &approval("mallory", 1_000_060),
        &facts("mallory", Some(Permission::Admin))
    ));
    assert!(!approval_is_valid(
        &p,
        &run,
        since,
        &approval("maria", 1_000_060),
        &Err(Unavailable::new("x"))
    ));
    assert_eq!(approval_deadline(&p, since), ts(1_000_000 + 7200));
}

fn arb_permission() -> impl Strategy<Value = Option<Permission>> {
    prop::sample::select(PERMISSIONS.to_vec())
}

fn arb_login() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["alice", "Alice", "bob", "ci[bot]", "Ci[Bot]", "mallory"]).prop_map(String::from)
}

fn arb_policy() -> impl Strategy<Value = Authorization> {
    (
        prop::sample::select(MINIMUMS.to_vec()),
        prop::collection::vec(prop::sample::select(vec!["acme", "Acme", "labs"]), 0..3),
        prop::collection::vec(prop::sample::select(vec!["acme/a", "acme/b"]), 0..3),
        prop::collection::vec(arb_login(), 0..3),
        prop::collection::vec(arb_login(), 0..3),
        prop::collection::vec(arb_login(), 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(min, orgs, teams, allow_users, deny_users, allow_bots, approval, fork_write)| Authorization {
                min_permission: min,
                organizations: orgs.into_iter().map(String::from).collect(),
                teams: teams.into_iter().map(String::from).collect(),
                allow_users,
                deny_users,
                allow_bots,
                outsiders: if approval {
                    OutsiderPolicy::RequireApproval
                } else {
                    OutsiderPolicy::Deny
                },
                approval_window_hours: 24,
                allow_fork_write: fork_write,
                manual_runs: Default::default(),
                ..Default::default()
            },
        )
}

fn arb_trigger() -> impl Strategy<Value = Trigger> {
    (
        arb_login(),
        prop::sample::select(vec![ActorType::User, ActorType::Bot, ActorType::Organization]),
        prop::sample::select(ASSOCIATIONS.to_vec()),
        any::<bool>(),
    )
        .prop_map(|(login, type_, association, fork)| trigger(&login, type_, association, fork))
}

fn arb_facts() -> impl Strategy<Value = ActorFacts> {
    (
        arb_login(),
        arb_permission(),
        prop::sample::select(vec![ActorType::User, ActorType::Bot, ActorType::Organization]),
        prop::collection::btree_map(prop::sample::select(vec!["acme", "labs"]), any::<bool>(), 0..3),
        prop::collection::btree_map(prop::sample::select(vec!["acme/a", "acme/b"]), any::<bool>(), 0..3),
    )
        .prop_map(|(login, permission, user_type, orgs, teams)| ActorFacts {
            login,
            permission,
            user_type,
            org_member: orgs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            team_member: teams.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        })
}

proptest! {
    #[test]
    fn a_failed_lookup_never_admits(p in arb_policy(), t in arb_trigger(), message in ".{0,20}") {
        let d = authorize(&p, &t, &Err(Unavailable::new(message)));
        prop_assert!(!d.is_admit());
        let waits = matches!(d, AuthzDecision::AwaitApproval { .. });
        prop_assert!(!waits);
    }

    #[test]
    fn admission_implies_every_rule_holds(p in arb_policy(), t in arb_trigger(), f in arb_facts()) {
        let d = authorize(&p, &t, &Ok(f.clone()));
        if d.is_admit() {
            let login = t.actor.login.to_ascii_lowercase();
            prop_assert!(!p.deny_users.iter().any(|u| u.eq_ignore_ascii_case(&login)));
            prop_assert!(f.login.eq_ignore_ascii_case(&login));
            prop_assert!(f.permission.is_some_and(|x| x >= p.min_permission));
            prop_assert!(f.user_type != ActorType::Organization);
            let is_bot = f.user_type == ActorType::Bot || t.actor.type_ == ActorType::Bot || login.ends_with("[bot]");
            if is_bot {
                prop_assert!(p.allow_bots.iter().any(|b| b.eq_ignore_ascii_case(&login)));
            } else if !p.allow_users.iter().any(|u| u.eq_ignore_ascii_case(&login)) {
                for org in &p.organizations {
                    prop_assert_eq!(f.org_member.get(&org.to_ascii_lowercase()), Some(&true));
                }
                if !p.teams.is_empty() {
                    prop_assert!(p.teams.iter().any(|team| f.team_member.get(team.as_str()) == Some(&true)));
                }
            }
        }
        // The association in the payload never changes the outcome.
        for association in ASSOCIATIONS {
            let mut other = t.clone();
            other.author_association = association;
            prop_assert_eq!(authorize(&p, &other, &Ok(f.clone())), d.clone());
        }
    }
}
