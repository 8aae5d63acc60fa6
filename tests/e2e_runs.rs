//! Runs end to end: the real `claude-operator run` (receiver and controllers)
//! against the local control plane and the fake GitHub. Signed webhooks from
//! a member, a read-only collaborator, a stranger, a denylisted member and a
//! bot end in the right phase and reason; an admitted run gets a token Secret,
//! a NetworkPolicy and a restricted Pod that kwok runs; its termination report
//! becomes its cost; the token is revoked exactly once and the Secret deleted.
//! Run with `make e2e`.

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
use serde_json::json;
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
    assert!(data.contains_key("github-token") && data.contains_key("anthropic-api-key") && data.contains_key("prompt"));
    let netpol: Api<NetworkPolicy> = Api::namespaced(env.client.clone(), &env.ns.name);
    netpol
        .get(&format!("{member}-egress"))
        .await
        .expect("the run's NetworkPolicy");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let pod = pods
        .get(&format!("{member}-runner"))
        .await
        .expect("the run's Pod, accepted under restricted");
    let spec = pod.spec.unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.enable_service_links, Some(false));
    assert!(spec.active_deadline_seconds.unwrap() < 3600);
    assert_eq!(env.fake.minted(&env.repo), 1, "one token for the one admitted run");

    // Nothing was made for the denied runs.
    for run in [&reader, &stranger, &denied] {
        assert!(pods.get_opt(&format!("{run}-runner")).await.unwrap().is_none());
        assert!(secrets.get_opt(&format!("{run}-secrets")).await.unwrap().is_none());
    }

    // The runner ends with its report: the exact cost lands on the run and the policy.
    env.finish_pod(&member, "Succeeded", Some(&report("0.006"))).await;
    let done = env.wait_phase(&member, Phase::Succeeded).await;
    let cost = done.status.as_ref().unwrap().cost.clone().unwrap();
    assert_eq!(cost.usd, "0.006");
    assert_eq!(cost.source, CostSource::Reported);
    assert_eq!((cost.input_tokens, cost.output_tokens, cost.turns), (1000, 200, 2));
    eventually("token revoked and Secret deleted", Duration::from_secs(30), || async {
        let gone = secrets.get_opt(&format!("{member}-secrets")).await.ok()?.is_none();
        (gone && env.fake.revoked(&env.repo) == 1).then_some(())
    })
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
async fn a_deadline_times_out_and_a_malformed_report_is_charged_its_reservation() {
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
    env.finish_pod(&slow, "DeadlineExceeded", None).await;
    let timed_out = env.wait_phase(&slow, Phase::TimedOut).await;
    let cost = timed_out.status.unwrap().cost.unwrap();
    assert_eq!((cost.usd.as_str(), cost.source), ("5.00", CostSource::Estimated));

    env.finish_pod(
        &broken,
        "Succeeded",
        Some(&json!({"outcome": "success", "total_cost_usd": 0.5})),
    )
    .await;
    let failed = env.wait_phase(&broken, Phase::Failed).await;
    let status = failed.status.unwrap();
    let cost = status.cost.unwrap();
    assert_eq!((cost.usd.as_str(), cost.source), ("5.00", CostSource::Estimated));
    let recorded = status.conditions.iter().find(|c| c.type_ == "CostRecorded").unwrap();
    assert_eq!(recorded.reason, "ReportMalformed");
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
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = env.runs().get(&waiting).await.unwrap();
    assert_eq!(still.status.unwrap().phase, Phase::AwaitingApproval);
    assert_eq!(env.fake.minted(&env.repo), 0);

    // A member with write access approves: the run is admitted.
    env.comment("alice", 1001, "User", "MEMBER", "/claude approve", "approve-alice")
        .await;
    let admitted = env.wait_phase(&waiting, Phase::Running).await;
    let admission = admitted.status.unwrap().admission.unwrap();
    assert_eq!(admission.reason, "Approved");
    assert_eq!(admission.approved_by.as_deref(), Some("alice"));
}
