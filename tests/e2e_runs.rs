//! Runs end to end: the real `claude-operator run` (receiver and controllers)
//! against the local control plane and the fake GitHub. Signed webhooks from
//! a member, a read-only collaborator, a stranger, a denylisted member and a
//! bot end in the right phase and reason; an admitted run gets a Secret with
//! its capability only, a grant (token, key, capability hash) in the
//! gateway's namespace, a NetworkPolicy to the gateway only and a restricted
//! Pod that kwok runs; the gateway's meter (played by the test on the grant)
//! becomes its cost, the runner's report only a cross-check; the token is
//! revoked exactly once, the grant and the Secret deleted. Run with `make e2e`.

#[path = "support/fake_github.rs"]
mod fake_github;
#[path = "support/run_env.rs"]
mod run_env;
mod support;

use std::time::Duration;

use claude_operator::api::{ClaudeRun, ClaudeRunPolicy, CostSource, OutsiderPolicy, Phase};
use fake_github::{Fault, FaultKind};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use run_env::*;
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn only_authorized_members_get_a_sandboxed_run_and_its_cost_is_recorded() {
    let env = Env::start("runs", OutsiderPolicy::Deny).await;

    let member = env
        .comment("alice", 1001, "User", "MEMBER", "@claude add a retry", "run-member")
        .await;
    let reader = env
        .comment("rob", 1002, "User", "COLLABORATOR", "@claude add a retry", "run-reader")
        .await;
    let stranger = env
        .comment(
            "nina",
            1003,
            "User",
            "CONTRIBUTOR",
            "@claude add a retry",
            "run-stranger",
        )
        .await;
    let denied = env
        .comment(
            "former-contractor",
            1004,
            "User",
            "MEMBER",
            "@claude x",
            "run-denylisted",
        )
        .await;

    assert_eq!(env.reason(&reader, Phase::Denied).await, "InsufficientPermission");
    assert_eq!(env.reason(&stranger, Phase::Denied).await, "InsufficientPermission");
    assert_eq!(env.reason(&denied, Phase::Denied).await, "DeniedUser");

    // A bot's comment is dropped at the door; a Manual run naming a bot is
    // denied too: it is authorized as its Kubernetes requester (none here,
    // and the policy allows no manual runs), never as the actor it names.
    let bot = env
        .comment("helper-bot[bot]", 1005, "Bot", "NONE", "@claude do it", "run-bot")
        .await;
    let mut manual: ClaudeRun = load_yaml("config/samples/run.yaml");
    manual.metadata.name = Some("manual-bot".into());
    manual.metadata.namespace = Some(env.ns.name.clone());
    manual.spec.repository = env.repo.clone();
    manual.spec.trigger.source = claude_operator::api::TriggerSource::Manual;
    manual.spec.trigger.actor = claude_operator::api::Actor {
        login: "helper-bot[bot]".into(),
        id: 1005,
        type_: claude_operator::api::ActorType::Bot,
    };
    env.runs().create(&PostParams::default(), &manual).await.unwrap();
    assert_eq!(env.reason("manual-bot", Phase::Denied).await, "ManualRunNotAllowed");
    assert!(
        env.runs().get_opt(&bot).await.unwrap().is_none(),
        "no run for a bot's comment"
    );

    // The member's run gets its sandbox.
    let admitted = env.wait_phase(&member, Phase::Running).await;
    let status = admitted.status.clone().unwrap();
    assert_eq!(status.admission.as_ref().unwrap().reason, "Admitted");
    assert_eq!(status.reserved_usd.as_deref(), Some("5.00"));
    assert!(status.token_expires_at.is_some());
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns.name);
    let secret = secrets
        .get(&format!("{member}-secrets"))
        .await
        .expect("the run's Secret");
    let data = secret.data.unwrap();
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["capability", "prompt"],
        "no credential in the run's namespace"
    );
    let capability = String::from_utf8(data["capability"].0.clone()).unwrap();
    assert!(capability.starts_with("cocap_"));
    let grant = env
        .grants()
        .get(&env.grant_name(&member))
        .await
        .expect("the run's grant");
    let labels = grant.metadata.labels.clone().unwrap();
    assert_eq!(labels["claude-operator.dev/grant"], "true");
    let grant_data = grant.data.unwrap();
    assert!(grant_data.contains_key("github-token") && grant_data.contains_key("anthropic-api-key"));
    assert_eq!(
        String::from_utf8(grant_data["capability-sha256"].0.clone()).unwrap(),
        claude_operator::grant::capability_sha256(&capability)
    );
    let facts: claude_operator::grant::GrantFacts = serde_json::from_slice(&grant_data["grant.json"].0).unwrap();
    assert_eq!(
        (facts.repository.as_str(), facts.max_cost_usd.as_str()),
        (env.repo.as_str(), "5.00")
    );
    assert_eq!(facts.push_branch, Some(format!("claude/{member}")));
    let netpol: Api<NetworkPolicy> = Api::namespaced(env.client.clone(), &env.ns.name);
    let fence = netpol
        .get(&format!("{member}-egress"))
        .await
        .expect("the run's NetworkPolicy");
    let egress = serde_json::to_value(fence.spec.unwrap().egress.unwrap()).unwrap();
    assert_eq!(egress.as_array().unwrap().len(), 1, "the gateway only: {egress}");
    assert_eq!(
        egress[0]["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        json!(env.ns.name)
    );
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let pod = pods
        .get(&format!("{member}-runner"))
        .await
        .expect("the run's Pod, accepted under restricted");
    let spec = pod.spec.unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.enable_service_links, Some(false));
    assert!(spec.active_deadline_seconds.unwrap() < 3600);
    let env_vars = serde_json::to_string(&spec.containers[0].env).unwrap();
    assert!(env_vars.contains("CLAUDE_OPERATOR_GATEWAY_URL") && !env_vars.contains("cocap_"));
    assert_eq!(env.fake.minted(&env.repo), 1, "one token for the one admitted run");

    // Nothing was made for the denied runs.
    for run in [&reader, &stranger, &denied] {
        assert!(pods.get_opt(&format!("{run}-runner")).await.unwrap().is_none());
        assert!(secrets.get_opt(&format!("{run}-secrets")).await.unwrap().is_none());
    }

    // The gateway meters the run: the figure shows on the run while it runs.
    let meter = json!({
        "spentMicros": 6000,
        "usage": {"claude-sonnet-4-5": {"input_tokens": 1000, "output_tokens": 200}},
        "requests": 2,
    });
    env.set_meter(&member, meter).await;
    let runs = env.runs();
    eventually("the meter copied while running", Duration::from_secs(40), || async {
        let cost = runs.get(&member).await.ok()?.status?.cost?;
        (cost.usd == "0.006" && cost.source == CostSource::Metered).then_some(())
    })
    .await;

    // The runner ends; the metered cost is final; a lower report is flagged, not believed.
    env.finish_pod(&member, "Succeeded", Some(&report("0.001"))).await;
    let done = env.wait_phase(&member, Phase::Succeeded).await;
    let status = done.status.clone().unwrap();
    let cost = status.cost.clone().unwrap();
    assert_eq!(cost.usd, "0.006");
    assert_eq!(cost.source, CostSource::Metered);
    assert_eq!((cost.input_tokens, cost.output_tokens, cost.turns), (1000, 200, 2));
    let mismatch = status
        .conditions
        .iter()
        .find(|c| c.type_ == "CostReportMismatch")
        .unwrap();
    assert_eq!(mismatch.status, "True");
    assert_eq!(env.events_with_reason("CostReportMismatch").await, 1);
    eventually(
        "token revoked, grant and Secret deleted",
        Duration::from_secs(30),
        || async {
            let gone = secrets.get_opt(&format!("{member}-secrets")).await.ok()?.is_none();
            let grant_gone = env.grants().get_opt(&env.grant_name(&member)).await.ok()?.is_none();
            (gone && grant_gone && env.fake.revoked(&env.repo) == 1).then_some(())
        },
    )
    .await;
    let policies: Api<ClaudeRunPolicy> = Api::namespaced(env.client.clone(), &env.ns.name);
    eventually("policy spend updated", Duration::from_secs(30), || async {
        let budget = policies.get("acme-backend").await.ok()?.status?.budget?;
        (budget.spent_usd == "0.006" && budget.reserved_usd == "0.00").then_some(())
    })
    .await;

    // Feedback on GitHub: one status comment per reported run, edited as it
    // moved; an "eyes" reaction on the member's comment; nothing for the
    // stranger, who cannot read the repository.
    eventually(
        "the member's comment says it finished",
        Duration::from_secs(30),
        || async {
            let state = env.fake.state();
            let mine: Vec<_> = state
                .comments
                .values()
                .filter(|(_, _, body)| body.contains(&member))
                .collect();
            (mine.len() == 1 && mine[0].2.contains("Claude finished") && mine[0].2.contains("$0.006")).then_some(())
        },
    )
    .await;
    {
        let state = env.fake.state();
        let about = |run: &str| state.comments.values().filter(|(_, _, b)| b.contains(run)).count();
        assert_eq!(about(&reader), 1, "the read-only collaborator hears why");
        assert_eq!(about(&stranger), 0, "no reply to a stranger");
        assert!(state.reactions.iter().any(|(_, content)| content == "eyes"));
    }
    assert!(
        env.fake.count("PATCH", "/issues/comments/") >= 2,
        "the status comment is edited, not reposted"
    );

    // GitHub failing: denied AuthorizationUnavailable, no pod, no secret.
    // (carol has not been looked up, so no cached answer hides the failure.)
    env.fake.inject(
        Fault::new(FaultKind::Status(500))
            .on_path("/collaborators/")
            .times(1000),
    );
    let unavailable = env
        .comment("carol", 1006, "User", "MEMBER", "@claude again", "run-unavailable")
        .await;
    assert_eq!(
        env.reason(&unavailable, Phase::Denied).await,
        "AuthorizationUnavailable"
    );
    assert!(pods.get_opt(&format!("{unavailable}-runner")).await.unwrap().is_none());
    assert!(
        secrets
            .get_opt(&format!("{unavailable}-secrets"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(env.fake.minted(&env.repo), 1);

    // No token or key in the operator's log.
    let log = env.op.log();
    assert!(
        !log.contains(TOKEN_PREFIX_NEVER_LOGGED) && !log.contains("sk-ant-e2e"),
        "{log}"
    );

    // Deleting a run garbage-collects its children.
    env.runs().delete(&member, &DeleteParams::background()).await.unwrap();
    eventually("pod collected", Duration::from_secs(60), || async {
        pods.get_opt(&format!("{member}-runner"))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_deadline_charges_open_reservations_and_a_malformed_report_changes_nothing() {
    let mut env = Env::start("deadline", OutsiderPolicy::Deny).await;
    let slow = env
        .comment("alice", 1001, "User", "MEMBER", "@claude slow task", "run-slow")
        .await;
    let broken = env
        .comment("alice", 1001, "User", "MEMBER", "@claude other task", "run-broken")
        .await;
    // A controller restart between admission and the end: each run keeps one
    // status comment, edited by the new process.
    for run in [&slow, &broken] {
        env.wait_phase(run, Phase::Running).await;
    }
    eventually("status comments recorded", Duration::from_secs(60), || async {
        let runs = env.runs();
        for run in [&slow, &broken] {
            runs.get(run).await.ok()?.status?.feedback_comment_id?;
        }
        Some(())
    })
    .await;
    env.restart_operator().await;
    // A request the gateway reserved for and never settled: charged in full
    // once the drain wait is over.
    let meter = json!({
        "spentMicros": 10000,
        "inFlight": {"req-1": {"reservedMicros": 250000, "since": "2026-01-01T00:00:00Z"}},
    });
    env.set_meter(&slow, meter).await;
    env.finish_pod(&slow, "DeadlineExceeded", None).await;
    let timed_out = env
        .wait_phase_within(&slow, Phase::TimedOut, Duration::from_secs(120))
        .await;
    let cost = timed_out.status.unwrap().cost.unwrap();
    assert_eq!((cost.usd.as_str(), cost.source), ("0.26", CostSource::Metered));

    env.finish_pod(
        &broken,
        "Succeeded",
        Some(&json!({"outcome": "success", "total_cost_usd": 0.5})),
    )
    .await;
    let failed = env.wait_phase(&broken, Phase::Failed).await;
    let status = failed.status.unwrap();
    let cost = status.cost.unwrap();
    // A kwok pod made no model request: the meter says nothing was spent.
    assert_eq!((cost.usd.as_str(), cost.source), ("0.00", CostSource::Metered));
    let recorded = status.conditions.iter().find(|c| c.type_ == "CostRecorded").unwrap();
    assert_eq!(recorded.reason, "Metered");
    eventually("one edited comment per run", Duration::from_secs(60), || async {
        let state = env.fake.state();
        let about = |run: &str| {
            state
                .comments
                .values()
                .filter(|(_, _, b)| b.contains(run))
                .collect::<Vec<_>>()
        };
        let (a, b) = (about(&slow), about(&broken));
        (a.len() == 1 && b.len() == 1 && a[0].2.contains("time limit") && b[0].2.contains("failed")).then_some(())
    })
    .await;
    eventually("both tokens revoked", Duration::from_secs(30), || async {
        (env.fake.revoked(&env.repo) == 2).then_some(())
    })
    .await;
    assert_eq!(env.fake.minted(&env.repo), 2);
}

#[tokio::test]
async fn an_outsider_waits_for_an_authorized_approval() {
    let env = Env::start("approval", OutsiderPolicy::RequireApproval).await;
    let waiting = env
        .comment("nina", 1003, "User", "CONTRIBUTOR", "@claude fix typo", "run-outsider")
        .await;
    env.wait_phase(&waiting, Phase::AwaitingApproval).await;

    // A read-only collaborator's approval changes nothing.
    env.comment("rob", 1002, "User", "COLLABORATOR", "/claude approve", "approve-rob")
        .await;
    let checked = eventually("rob's approval checked", Duration::from_secs(30), || async {
        let status = env.runs().get(&waiting).await.ok()?.status?;
        let check = status.approvals.iter().find(|c| c.login == "rob").cloned()?;
        Some((status.phase, check))
    })
    .await;
    assert_eq!(checked.0, Phase::AwaitingApproval);
    assert_eq!(
        (checked.1.accepted, checked.1.reason.as_deref()),
        (false, Some("InsufficientPermission"))
    );
    assert_eq!(env.fake.minted(&env.repo), 0);

    // A member with write access approves: the run is admitted.
    env.comment("alice", 1001, "User", "MEMBER", "/claude approve", "approve-alice")
        .await;
    let admitted = env.wait_phase(&waiting, Phase::Running).await;
    let admission = admitted.status.unwrap().admission.unwrap();
    assert_eq!(admission.reason, "Approved");
    assert_eq!(admission.approved_by.as_deref(), Some("alice"));
}

/// The approval comments recorded on a run, by annotation key.
fn approval_annotations(run: &ClaudeRun) -> Vec<String> {
    run.metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_keys()
        .filter(|k| k.starts_with(claude_operator::api::labels::APPROVAL_ANNOTATION_PREFIX))
        .collect()
}

#[tokio::test]
async fn a_strangers_approval_after_a_maintainers_does_not_displace_it() {
    let mut env = Env::start("displace", OutsiderPolicy::RequireApproval).await;
    env.fake.add_user("eve", 1010, "User");
    let waiting = env
        .comment("nina", 1003, "User", "CONTRIBUTOR", "@claude fix typo", "displace-run")
        .await;
    env.wait_phase(&waiting, Phase::AwaitingApproval).await;

    // Only the receiver runs: both comments are recorded before any check.
    env.op.kill();
    let args: Vec<&str> = env.args.iter().map(String::as_str).collect();
    env.op = support::OperatorProcess::start_component("receiver", &args, &[]).await;
    env.comment("alice", 1001, "User", "MEMBER", "/claude approve", "displace-alice")
        .await;
    env.comment("eve", 1010, "User", "NONE", "/claude approve", "displace-eve")
        .await;
    let run = env.runs().get(&waiting).await.unwrap();
    assert_eq!(
        approval_annotations(&run).len(),
        2,
        "each comment kept: {:?}",
        run.metadata.annotations
    );

    // The controller checks each on its own: the maintainer's admits the run.
    env.restart_operator().await;
    let admitted = env.wait_phase(&waiting, Phase::Running).await;
    let status = admitted.status.clone().unwrap();
    assert_eq!(status.admission.unwrap().approved_by.as_deref(), Some("alice"));
    assert!(status.approvals.iter().any(|c| c.login == "alice" && c.accepted));
    assert!(status.approvals.iter().all(|c| c.login != "eve" || !c.accepted));
    eventually("the approval requests consumed", Duration::from_secs(30), || async {
        approval_annotations(&env.runs().get(&waiting).await.ok()?)
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn waiting_runs_are_bounded_per_repository_and_ask_github_once() {
    let mut env = Env::start_with(
        "waitbound",
        |p| {
            p.spec.authorization.outsiders = OutsiderPolicy::RequireApproval;
            p.spec.authorization.max_waiting_runs = 2;
        },
        &[],
    )
    .await;
    env.fake.add_user("sam", 1011, "User");
    env.fake.add_user("tess", 1012, "User");
    let nina = env
        .comment("nina", 1003, "User", "NONE", "@claude one", "wait-nina")
        .await;
    env.wait_phase(&nina, Phase::AwaitingApproval).await;
    let sam = env
        .comment("sam", 1011, "User", "NONE", "@claude two", "wait-sam")
        .await;
    env.wait_phase(&sam, Phase::AwaitingApproval).await;
    let tess = env
        .comment("tess", 1012, "User", "NONE", "@claude three", "wait-tess")
        .await;
    let denied = env.wait_phase(&tess, Phase::Denied).await;
    let admission = denied.status.unwrap().admission.unwrap();
    assert_eq!(admission.reason, "TooManyWaitingRuns");
    assert!(admission.message.contains("maxWaitingRuns 2"), "{}", admission.message);

    // A member is not held up by the waiting room.
    let member = env
        .comment("alice", 1001, "User", "MEMBER", "@claude four", "wait-alice")
        .await;
    env.wait_phase(&member, Phase::Running).await;

    // A restart reconciles the waiting runs again: no new lookups. A new
    // member's run admitted by the new process is the sign it is at work.
    env.restart_operator().await;
    let again = env
        .comment("carol", 1006, "User", "MEMBER", "@claude five", "wait-carol")
        .await;
    env.wait_phase(&again, Phase::Running).await;
    for run in [&nina, &sam] {
        assert_eq!(
            env.runs().get(run).await.unwrap().status.unwrap().phase,
            Phase::AwaitingApproval
        );
    }
    for login in ["nina", "sam", "tess"] {
        assert_eq!(
            env.fake.count("GET", &format!("/collaborators/{login}/permission")),
            1,
            "{login} was looked up once: {:?}",
            env.fake.requests()
        );
    }
}

#[tokio::test]
async fn approval_for_all_holds_a_members_run_until_a_maintainer_approves_or_the_window_ends() {
    let env = Env::start_with(
        "approveall",
        |p| p.spec.authorization.require_approval = claude_operator::api::ApprovalRequirement::All,
        &["--approval-window-max-seconds", "20"],
    )
    .await;
    let run = env
        .comment("alice", 1001, "User", "MEMBER", "@claude tidy up", "all-alice")
        .await;
    assert_eq!(env.reason(&run, Phase::AwaitingApproval).await, "ApprovalRequired");
    // Her own approval does not count.
    env.comment("alice", 1001, "User", "MEMBER", "/claude approve", "all-self")
        .await;
    let checked = eventually("her approval checked", Duration::from_secs(30), || async {
        let status = env.runs().get(&run).await.ok()?.status?;
        status.approvals.iter().find(|c| c.login == "alice").cloned()
    })
    .await;
    assert!(!checked.accepted);
    assert_eq!(checked.reason.as_deref(), Some("OwnTrigger"));
    assert_eq!(env.fake.minted(&env.repo), 0);

    // A maintainer's approval starts it.
    env.comment("carol", 1006, "User", "MEMBER", "/claude approve", "all-carol")
        .await;
    let admitted = env.wait_phase(&run, Phase::Running).await;
    let admission = admitted.status.unwrap().admission.unwrap();
    assert_eq!(
        (admission.reason.as_str(), admission.approved_by.as_deref()),
        ("Approved", Some("carol"))
    );

    // Without one, the window closes it.
    let unapproved = env
        .comment("carol", 1006, "User", "MEMBER", "@claude another", "all-carol-run")
        .await;
    assert_eq!(
        env.reason(&unapproved, Phase::AwaitingApproval).await,
        "ApprovalRequired"
    );
    let expired = env
        .wait_phase_within(&unapproved, Phase::Denied, Duration::from_secs(90))
        .await;
    assert_eq!(expired.status.unwrap().admission.unwrap().reason, "ApprovalExpired");
    assert_eq!(env.fake.minted(&env.repo), 1);
}

/// Under `github.pullRequestPush: PullRequestBranch`, a run on a pull request
/// may push its pull request's own head branch, as GitHub (not the payload)
/// names it: the grant the gateway enforces and the runner's flag say so. A
/// fork's pull request stays read-only, and a pull request whose head is the
/// default branch gets the run's own branch; both say why in an Event.
#[tokio::test]
async fn a_pull_request_run_pushes_to_its_own_branch_only_when_github_says_it_may() {
    let env = Env::start_with(
        "prbranch",
        |p| p.spec.github.pull_request_push = claude_operator::api::PullRequestPush::PullRequestBranch,
        &[],
    )
    .await;
    for (number, head_ref, head_repo) in [
        (31, "feature/retry", env.repo.clone()),
        (32, "feature/retry", "nina/fork-of-it".to_owned()),
        (33, "main", env.repo.clone()),
    ] {
        env.fake.add_pull(
            &env.repo,
            number,
            fake_github::FakePull {
                head_sha: format!("{number:0>40}"),
                head_ref: head_ref.into(),
                head_repo: Some(head_repo),
                author: "alice".into(),
            },
        );
    }
    let comment = |number: i64| {
        let (env, delivery) = (&env, format!("pr-branch-{number}"));
        async move {
            let who = ("alice", 1001, "MEMBER");
            let (status, body, run) = env
                .comment_on_pull_request(number, who, "@claude address the review", &delivery)
                .await;
            assert_eq!(status, 202, "{delivery}: {body}");
            run
        }
    };
    let (same, fork, default) = (comment(31).await, comment(32).await, comment(33).await);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let mut seen = Vec::new();
    for run in [&same, &fork, &default] {
        env.wait_phase(run, Phase::Running).await;
        let grant = env.grants().get(&env.grant_name(run)).await.unwrap();
        let facts: claude_operator::grant::GrantFacts =
            serde_json::from_slice(&grant.data.unwrap()["grant.json"].0).unwrap();
        let pod = pods.get(&format!("{run}-runner")).await.unwrap();
        let push_env = pod.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.name == "CLAUDE_OPERATOR_PUSH_BRANCH")
            .and_then(|e| e.value);
        assert_eq!(
            facts.push_branch, push_env,
            "{run}: the runner is told the grant's branch"
        );
        seen.push((facts.push_branch, facts.push_to_pull_request, facts.head_sha));
    }
    assert_eq!(
        seen,
        [
            (Some("feature/retry".into()), true, Some(format!("{:0>40}", 31))),
            (None, false, Some(format!("{:0>40}", 32))),
            (Some(format!("claude/{default}")), false, Some(format!("{:0>40}", 33))),
        ]
    );
    // The fork's run got a read-only token.
    let contents: Vec<Value> = env
        .fake
        .state()
        .tokens
        .values()
        .filter(|t| t.repositories.is_some())
        .map(|t| t.permissions["contents"].clone())
        .collect();
    assert_eq!(
        contents.iter().filter(|c| *c == "read").count(),
        1,
        "only the fork's run is read-only: {contents:?}"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), &env.ns.name);
    let notes = eventually("both refusals explained", Duration::from_secs(30), || async {
        let notes: Vec<(String, String)> = events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("PullRequestBranchRefused"))
            .map(|e| {
                (
                    e.regarding.and_then(|r| r.name).unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect();
        let about = |run: &str| notes.iter().any(|(name, _)| name == run);
        (about(&fork) && about(&default)).then_some(notes)
    })
    .await;
    assert!(!notes.iter().any(|(name, _)| name == &same), "{notes:?}");
    for (name, note) in &notes {
        let want = if name == &fork {
            "fork (nina/fork-of-it)"
        } else {
            "default branch"
        };
        assert!(note.contains(want), "{name}: {note}");
    }
}

/// Automatic reviews: opened, synchronize and labelled pull requests are
/// reviewed by a read-only run when the filters (base branch, drafts, label,
/// changed paths from GitHub) want it; a stranger's pull request is not; a
/// push to a pull request supersedes the review still going for it.
#[tokio::test]
async fn pull_requests_get_one_filtered_read_only_review_and_a_push_supersedes_it() {
    use claude_operator::api::TriggerEvent::*;
    let env = Env::start_with(
        "review",
        |p| {
            p.spec.triggers.events = vec![PullRequestOpened, PullRequestSynchronize, PullRequestLabeled];
            p.spec.triggers.review.paths = vec!["src/**".into()];
            p.spec.triggers.review.base_branches = vec!["main".into()];
            p.spec.triggers.review.label = Some("claude-review".into());
        },
        &[],
    )
    .await;
    let sha = |n: u32| format!("{n:0>40}");
    for (number, files) in [
        (41, ["src/lib.rs"]),
        (44, ["docs/guide.md"]),
        (45, ["src/lib.rs"]),
        (46, ["src/x.rs"]),
    ] {
        env.fake.add_pull(
            &env.repo,
            number,
            fake_github::FakePull {
                head_sha: sha(number as u32),
                head_ref: format!("topic-{number}"),
                head_repo: Some(env.repo.clone()),
                author: "alice".into(),
            },
        );
        env.fake.set_pull_files(&env.repo, number, &files);
    }
    let event = |action: &'static str,
                 login: &'static str,
                 id: i64,
                 association: &'static str,
                 number: i64,
                 head: String,
                 edit: fn(&mut Value)| {
        let env = &env;
        async move {
            let delivery = format!("review-{action}-{number}-{}", &head[36..]);
            let (status, body, run) = env
                .pull_request_event(action, login, id, association, number, &head, &delivery, edit)
                .await;
            assert!((200..300).contains(&status), "{delivery}: {status} {body}");
            (body, run)
        }
    };
    let nothing: fn(&mut Value) = |_| {};

    // Reviewed: a member's pull request into main touching src/.
    let (_, first) = event("opened", "alice", 1001, "MEMBER", 41, sha(41), nothing).await;
    let running = env.wait_phase(&first, Phase::Running).await;
    assert!(running.spec.trigger.is_review());
    let grant = env.grants().get(&env.grant_name(&first)).await.unwrap();
    let facts: claude_operator::grant::GrantFacts =
        serde_json::from_slice(&grant.data.unwrap()["grant.json"].0).unwrap();
    assert!(facts.review && facts.is_pull_request);
    assert_eq!(
        (facts.push_branch, facts.head_sha.as_deref()),
        (None, Some(sha(41).as_str()))
    );
    {
        // The run's token (scoped to the repository; the operator's own are not).
        let state = env.fake.state();
        let runs: Vec<_> = state.tokens.values().filter(|t| t.repositories.is_some()).collect();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].permissions["contents"], "read", "{:?}", runs[0].permissions);
        assert_eq!(
            runs[0].permissions["pull_requests"], "write",
            "{:?}",
            runs[0].permissions
        );
    }
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let pod = pods.get(&format!("{first}-runner")).await.unwrap();
    let pod_env = serde_json::to_value(&pod.spec.unwrap().containers[0].env).unwrap();
    assert!(
        pod_env
            .as_array()
            .unwrap()
            .contains(&json!({"name": "CLAUDE_OPERATOR_REVIEW", "value": "true"}))
    );
    let prompt = &running.spec.prompt;
    assert!(
        prompt.contains("Review this pull request") && prompt.contains("\"comments\""),
        "{prompt}"
    );

    // Not wanted at the door: another base branch, a draft, another label.
    for (action, edit) in [
        (
            "opened",
            (|v: &mut Value| v["pull_request"]["base"]["ref"] = json!("develop")) as fn(&mut Value),
        ),
        ("opened", |v: &mut Value| v["pull_request"]["draft"] = json!(true)),
        ("labeled", |v: &mut Value| v["label"]["name"] = json!("bug")),
    ] {
        let (body, run) = event(action, "alice", 1001, "MEMBER", 42, sha(42), edit).await;
        assert_eq!(body.trim(), "review not wanted", "{action}");
        assert!(env.runs().get_opt(&run).await.unwrap().is_none());
    }
    // Not wanted by its files (GitHub's list), and a stranger's pull request.
    let (_, docs_only) = event("opened", "alice", 1001, "MEMBER", 44, sha(44), nothing).await;
    assert_eq!(env.reason(&docs_only, Phase::Denied).await, "ReviewNotWanted");
    let (_, stranger) = event("opened", "nina", 1003, "CONTRIBUTOR", 45, sha(45), nothing).await;
    assert_eq!(env.reason(&stranger, Phase::Denied).await, "InsufficientPermission");
    // The review label asks for one.
    let labeled_edit: fn(&mut Value) = |v| v["label"]["name"] = json!("claude-review");
    let (_, labeled) = event("labeled", "alice", 1001, "MEMBER", 46, sha(46), labeled_edit).await;
    env.wait_phase(&labeled, Phase::Running).await;

    // A push to pull request 41: its new head is reviewed, the old review is cancelled.
    let (_, second) = event("synchronize", "alice", 1001, "MEMBER", 41, sha(4141), nothing).await;
    assert_ne!(second, first);
    env.wait_phase(&second, Phase::Running).await;
    let cancelled = env.wait_phase(&first, Phase::Cancelled).await;
    let status = cancelled.status.unwrap();
    assert_eq!(status.outcome.as_deref(), Some("Superseded"));
    assert!(status.cost.is_some(), "what it spent so far is recorded");
    eventually(
        "the superseded review's pod, grant and token are gone",
        Duration::from_secs(30),
        || async {
            let pod_gone = pods.get_opt(&format!("{first}-runner")).await.ok()?.is_none();
            let grant_gone = env.grants().get_opt(&env.grant_name(&first)).await.ok()?.is_none();
            (pod_gone && grant_gone && env.fake.revoked(&env.repo) >= 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        env.runs().get(&labeled).await.unwrap().status.unwrap().phase,
        Phase::Running,
        "another pull request's review goes on"
    );
}

/// A draft pull request is not reviewed when it opens (`skipDrafts`): the
/// receiver answers and audits "review not wanted" and makes no run; marked
/// ready for review, it gets one read-only review run, and a redelivery of
/// that event makes no second.
#[tokio::test]
async fn a_draft_pull_request_is_reviewed_once_when_it_is_marked_ready() {
    use claude_operator::api::TriggerEvent::*;
    let env = Env::start_with(
        "ready",
        |p| {
            assert!(p.spec.triggers.review.skip_drafts, "the default");
            p.spec.triggers.events = vec![PullRequestOpened, PullRequestReadyForReview];
        },
        &["--log-format", "json"],
    )
    .await;
    let head = format!("{:0>40}", 51);
    env.fake.add_pull(
        &env.repo,
        51,
        fake_github::FakePull {
            head_sha: head.clone(),
            head_ref: "topic-51".into(),
            head_repo: Some(env.repo.clone()),
            author: "alice".into(),
        },
    );
    env.fake.set_pull_files(&env.repo, 51, &["src/lib.rs"]);
    let deliver = |action: &'static str, delivery: &'static str, draft: bool| {
        let (env, head) = (&env, head.clone());
        async move {
            env.pull_request_event(action, "alice", 1001, "MEMBER", 51, &head, delivery, |v| {
                v["pull_request"]["draft"] = json!(draft)
            })
            .await
        }
    };

    let (status, body, skipped) = deliver("opened", "ready-opened-draft", true).await;
    assert_eq!((status, body.trim()), (202, "review not wanted"));
    let line = eventually("the draft's audit line", Duration::from_secs(30), || async {
        audit_lines(&env.op.log())
            .into_iter()
            .find(|f| f.get("delivery") == Some(&json!("ready-opened-draft")))
    })
    .await;
    assert_eq!(
        (line.get("outcome"), line.get("reason")),
        (Some(&json!("ignored")), Some(&json!("review not wanted")))
    );
    assert!(env.runs().get_opt(&skipped).await.unwrap().is_none());

    let (status, body, run) = deliver("ready_for_review", "ready-ready", false).await;
    assert_eq!((status, body.trim()), (202, "run created"));
    let running = env.wait_phase(&run, Phase::Running).await;
    assert!(running.spec.trigger.is_review());
    assert_eq!(running.spec.trigger.action, "ready_for_review");
    let grant = env.grants().get(&env.grant_name(&run)).await.unwrap();
    let facts: claude_operator::grant::GrantFacts =
        serde_json::from_slice(&grant.data.unwrap()["grant.json"].0).unwrap();
    assert!(facts.review && facts.push_branch.is_none());
    assert_eq!(facts.head_sha.as_deref(), Some(head.as_str()));

    // Redelivered: the same run, not a second one.
    let (status, body, again) = deliver("ready_for_review", "ready-redelivered", false).await;
    assert_eq!((status, body.trim(), again.as_str()), (200, "run exists", run.as_str()));
    let runs = env.runs().list(&Default::default()).await.unwrap().items;
    assert_eq!(runs.len(), 1, "one run for the pull request: {runs:#?}");
    assert_eq!(env.fake.minted(&env.repo), 1);
}

/// A stranger's pull request (from a fork, its author without write access)
/// under `outsiders: RequireApproval`: its review run waits for approval with
/// nothing minted; another stranger's approval is recorded, checked with
/// GitHub and refused; a member's admits it, and it runs as a read-only
/// review of the admitted head.
#[tokio::test]
async fn a_strangers_pull_request_is_reviewed_only_after_a_members_approval() {
    use claude_operator::api::TriggerEvent::*;
    let env = Env::start_with(
        "review-approve",
        |p| {
            p.spec.authorization.outsiders = OutsiderPolicy::RequireApproval;
            p.spec.triggers.events = vec![PullRequestOpened];
        },
        &[],
    )
    .await;
    env.fake.add_user("eve", 1010, "User");
    let (head, fork) = (format!("{:0>40}", 61), "nina/review-fork");
    env.fake.add_pull(
        &env.repo,
        61,
        fake_github::FakePull {
            head_sha: head.clone(),
            head_ref: "fix-typo".into(),
            head_repo: Some(fork.into()),
            author: "nina".into(),
        },
    );
    env.fake.set_pull_files(&env.repo, 61, &["src/lib.rs"]);
    let (status, body, run) = env
        .pull_request_event("opened", "nina", 1003, "CONTRIBUTOR", 61, &head, "stranger-pr", |v| {
            v["pull_request"]["head"]["ref"] = json!("fix-typo");
            v["pull_request"]["head"]["repo"]["full_name"] = json!(fork);
            v["pull_request"]["head"]["repo"]["fork"] = json!(true);
        })
        .await;
    assert_eq!((status, body.trim()), (202, "run created"));
    assert_eq!(env.reason(&run, Phase::AwaitingApproval).await, "AwaitingApproval");
    assert_eq!(env.fake.minted(&env.repo), 0);

    // Another stranger approves: recorded, checked, refused, consumed.
    let (status, body, _) = env
        .comment_on_pull_request(61, ("eve", 1010, "NONE"), "/claude approve", "stranger-pr-eve")
        .await;
    assert_eq!((status, body.trim()), (202, "approval recorded"));
    let (phase, check) = eventually(
        "eve's approval checked and consumed",
        Duration::from_secs(30),
        || async {
            let r = env.runs().get(&run).await.ok()?;
            let consumed = approval_annotations(&r).is_empty();
            let status = r.status?;
            let check = status.approvals.iter().find(|c| c.login == "eve").cloned()?;
            consumed.then_some((status.phase, check))
        },
    )
    .await;
    assert_eq!(phase, Phase::AwaitingApproval);
    assert_eq!(
        (check.accepted, check.reason.as_deref()),
        (false, Some("InsufficientPermission"))
    );
    assert_eq!(env.fake.minted(&env.repo), 0);

    // A member approves: the review runs, read-only, at the admitted head.
    let (status, body, _) = env
        .comment_on_pull_request(61, ("alice", 1001, "MEMBER"), "/claude approve", "stranger-pr-alice")
        .await;
    assert_eq!((status, body.trim()), (202, "approval recorded"));
    let running = env.wait_phase(&run, Phase::Running).await;
    let admission = running.status.unwrap().admission.unwrap();
    assert_eq!(
        (admission.reason.as_str(), admission.approved_by.as_deref()),
        ("Approved", Some("alice"))
    );
    let grant = env.grants().get(&env.grant_name(&run)).await.unwrap();
    let facts: claude_operator::grant::GrantFacts =
        serde_json::from_slice(&grant.data.unwrap()["grant.json"].0).unwrap();
    assert!(facts.review && facts.push_branch.is_none() && !facts.push_to_pull_request);
    assert_eq!(facts.head_sha.as_deref(), Some(head.as_str()));
    let state = env.fake.state();
    let tokens: Vec<_> = state.tokens.values().filter(|t| t.repositories.is_some()).collect();
    assert_eq!(tokens.len(), 1, "one token, minted after the approval");
    assert_eq!(
        (
            &tokens[0].permissions["contents"],
            &tokens[0].permissions["pull_requests"]
        ),
        (&json!("read"), &json!("write"))
    );
}
