//! The paths that need time or a third party, end to end with the
//! controller's timers in seconds (`--quota-wait-seconds` and the others,
//! support::Timers::fast): QuotaTimeout, retention deleting the pod then the
//! run, ApprovalExpired through the controller, a pod deleted by someone
//! else, the finalizer revoking the token of a run deleted early, a replica
//! exiting when it loses its Lease, the Overlapping condition, and strangers
//! (NONE, FIRST_TIMER) dropped at intake. Each waits on a positive signal.
//! Run with `make e2e`.

#[path = "support/fake_github.rs"]
mod fake_github;
#[path = "support/run_env.rs"]
mod run_env;
mod support;

use std::time::Duration;

use claude_operator::api::{ClaudeRunPolicy, OutsiderPolicy, Phase};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use run_env::*;
use serde_json::json;
use support::*;

/// The operator flags of these tests: every timer in seconds.
fn fast() -> Vec<String> {
    Timers::fast().args()
}

async fn start(prefix: &str, edit: impl FnOnce(&mut ClaudeRunPolicy), extra: &[&str]) -> Env {
    let timers = fast();
    let mut args: Vec<&str> = timers.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    Env::start_with(prefix, edit, &args).await
}

/// The run's terminal outcome (`status.outcome`) once it is in `phase`.
async fn outcome(env: &Env, run: &str, phase: Phase) -> String {
    let r = env.wait_phase(run, phase).await;
    r.status.unwrap().outcome.unwrap_or_default()
}

#[tokio::test]
async fn quota_that_stays_exhausted_fails_the_run_quota_timeout() {
    let env = start("qtimeout", |p| p.spec.budget.max_concurrent_runs = 10, &[]).await;
    env.one_pod_quota().await;
    let first = env
        .comment("alice", 1001, "User", "MEMBER", "@claude one", "qt-1")
        .await;
    env.wait_phase(&first, Phase::Running).await;
    let second = env
        .comment("alice", 1001, "User", "MEMBER", "@claude two", "qt-2")
        .await;
    // It waits first (the condition), then the 2 s wait runs out.
    env.waiting_for_quota(&second).await;
    assert_eq!(outcome(&env, &second, Phase::Failed).await, "QuotaTimeout");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    assert!(pods.get_opt(&format!("{second}-runner")).await.unwrap().is_none());
    // Its token (minted at admission) is revoked: both mints, one revoke so far.
    eventually("the timed-out run's token revoked", Duration::from_secs(30), || async {
        (env.fake.revoked(&env.repo) >= 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn retention_deletes_the_pod_then_the_run() {
    // Pod kept 1 s; the run 8 s, so the pod's deletion is seen on its own.
    let timers = Timers {
        run_retention_max_seconds: Some(8),
        ..Timers::fast()
    }
    .args();
    let args: Vec<&str> = timers.iter().map(String::as_str).collect();
    let env = Env::start_with("retention", |_| {}, &args).await;
    let run = env
        .comment("alice", 1001, "User", "MEMBER", "@claude one", "ret-1")
        .await;
    env.wait_phase(&run, Phase::Running).await;
    env.set_meter(&run, json!({"spentMicros": 10000, "requests": 1})).await;
    env.finish_pod(&run, "Succeeded", Some(&report("0.01"))).await;
    env.wait_phase(&run, Phase::Succeeded).await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let pod = format!("{run}-runner");
    eventually(
        "the pod deleted, the run still kept",
        Duration::from_secs(30),
        || async {
            let pod_gone = pods.get_opt(&pod).await.ok()?.is_none();
            let run_kept = env.runs().get_opt(&run).await.ok()?.is_some();
            assert!(run_kept || !pod_gone, "the run went before its pod was seen deleted");
            (pod_gone && run_kept).then_some(())
        },
    )
    .await;
    eventually(
        "the run deleted after its retention",
        Duration::from_secs(60),
        || async { env.runs().get_opt(&run).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn an_approval_window_that_closes_denies_the_run_approval_expired() {
    let env = start(
        "apexpire",
        |p| p.spec.authorization.outsiders = OutsiderPolicy::RequireApproval,
        &[],
    )
    .await;
    let waiting = env
        .comment("nina", 1003, "User", "CONTRIBUTOR", "@claude fix typo", "apx-1")
        .await;
    env.wait_phase(&waiting, Phase::AwaitingApproval).await;
    // The policy says 24 hours; the controller's cut (3 s) closes it.
    assert_eq!(env.reason(&waiting, Phase::Denied).await, "ApprovalExpired");
    assert_eq!(env.fake.minted(&env.repo), 0);
}

#[tokio::test]
async fn a_pod_deleted_by_someone_else_fails_the_run_and_no_second_pod_comes() {
    let env = start("poddel", |_| {}, &[]).await;
    let run = env
        .comment("alice", 1001, "User", "MEMBER", "@claude one", "pd-1")
        .await;
    env.wait_phase(&run, Phase::Running).await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let pod = format!("{run}-runner");
    pods.delete(&pod, &DeleteParams::background().grace_period(0))
        .await
        .unwrap();
    assert_eq!(outcome(&env, &run, Phase::Failed).await, "PodDeleted");
    assert!(pods.get_opt(&pod).await.unwrap().is_none(), "never a second pod");
    eventually("its token revoked", Duration::from_secs(30), || async {
        (env.fake.revoked(&env.repo) == 1).then_some(())
    })
    .await;
    assert_eq!(env.fake.minted(&env.repo), 1);
}

#[tokio::test]
async fn deleting_a_running_run_revokes_its_token_through_the_finalizer() {
    let env = start("finalize", |_| {}, &[]).await;
    let run = env
        .comment("alice", 1001, "User", "MEMBER", "@claude one", "fin-1")
        .await;
    env.wait_phase(&run, Phase::Running).await;
    assert_eq!((env.fake.minted(&env.repo), env.fake.revoked(&env.repo)), (1, 0));
    env.runs().delete(&run, &DeleteParams::background()).await.unwrap();
    eventually("the fake GitHub sees the revoke", Duration::from_secs(30), || async {
        (env.fake.revoked(&env.repo) == 1).then_some(())
    })
    .await;
    eventually("the run gone (finalizer removed)", Duration::from_secs(30), || async {
        env.runs().get_opt(&run).await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        env.grants().get_opt(&env.grant_name(&run)).await.unwrap().is_none(),
        "the grant went with it"
    );
}

#[tokio::test]
async fn a_replica_that_loses_its_lease_exits() {
    let client = client().await;
    let lease_ns = TestNamespace::new(&client, "lease").await;
    let mut env = start(
        "leaseloss",
        |_| {},
        &["--leader-election", "--leader-election-namespace", &lease_ns.name],
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease_ns.name);
    let holder = eventually("the replica holds the Lease", Duration::from_secs(60), || async {
        leases.get("claude-operator-leader").await.ok()?.spec?.holder_identity
    })
    .await;
    eventually(
        &format!("the replica logs that it leads ({holder})"),
        Duration::from_secs(30),
        || async { env.op.log().contains("acquired the leader lease").then_some(()) },
    )
    .await;
    // Someone else takes the Lease (as a second leader would after a
    // partition): at its next renewal (2 s before the 4 s lease ends) the
    // replica sees it is no longer the holder and exits.
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now());
    leases
        .patch(
            "claude-operator-leader",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "holderIdentity": "another-replica",
                "leaseDurationSeconds": 3600,
                "acquireTime": now,
                "renewTime": now,
            }})),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = env.op.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica did not exit after losing its Lease:\n{}",
            env.op.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status.code(), Some(1), "{}", env.op.log());
    assert!(env.op.log().contains("lost the leader lease"), "{}", env.op.log());
    let now_holder = leases
        .get("claude-operator-leader")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert_eq!(
        now_holder.as_deref(),
        Some("another-replica"),
        "it did not take it back"
    );
}

#[tokio::test]
async fn overlapping_policies_show_the_overlapping_condition_with_a_reason() {
    let env = start("overlap", |_| {}, &[]).await;
    let policies: Api<ClaudeRunPolicy> = Api::namespaced(env.client.clone(), &env.ns.name);
    let mut second = policies.get("acme-backend").await.unwrap();
    second.metadata = kube::api::ObjectMeta {
        name: Some("acme-backend-copy".into()),
        namespace: Some(env.ns.name.clone()),
        ..Default::default()
    };
    second.status = None;
    policies.create(&PostParams::default(), &second).await.unwrap();
    // Which one loses is another module's rule: at least one shows it, each
    // that does with a reason and a message.
    let shown = eventually("Overlapping=True on a policy", Duration::from_secs(60), || async {
        let mut shown = vec![];
        for name in ["acme-backend", "acme-backend-copy"] {
            let status = policies.get(name).await.ok()?.status?;
            if let Some(c) = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Overlapping" && c.status == "True")
            {
                shown.push((name, c.reason.clone(), c.message.clone()));
            }
        }
        (!shown.is_empty()).then_some(shown)
    })
    .await;
    for (name, reason, message) in shown {
        assert!(
            !reason.is_empty() && !message.is_empty(),
            "{name}: {reason:?} {message:?}"
        );
    }
}

/// A signed `issue_comment` from an author with this association; the
/// receiver's answer (status, body) and the run name it would have made.
async fn deliver(env: &Env, login: &str, id: i64, association: &str, delivery: &str) -> (u16, String, String) {
    env.deliver_comment(
        login,
        id,
        "User",
        association,
        "@claude delete the tests",
        delivery,
        SECRET,
    )
    .await
}

#[tokio::test]
async fn strangers_none_and_first_timers_are_dropped_at_intake() {
    let env = start("strangers", |_| {}, &[]).await;
    env.fake.add_user("gus", 1010, "User");
    env.fake.add_user("fay", 1011, "User");
    let mut dropped = vec![];
    for (login, id, association) in [("gus", 1010, "NONE"), ("fay", 1011, "FIRST_TIMER")] {
        let (status, body, run) = deliver(
            &env,
            login,
            id,
            association,
            &format!("stranger-{}", association.to_lowercase().replace('_', "-")),
        )
        .await;
        assert_eq!(
            (status, body.trim()),
            (202, "author association below policy"),
            "{association}"
        );
        dropped.push(run);
    }
    // A member's trigger after them is created: the receiver is not just down.
    let member = env
        .comment("alice", 1001, "User", "MEMBER", "@claude one", "stranger-member")
        .await;
    env.wait_phase(&member, Phase::Running).await;
    for run in dropped {
        assert!(env.runs().get_opt(&run).await.unwrap().is_none(), "{run} was created");
    }
    // Nothing was asked of GitHub about them.
    for login in ["gus", "fay"] {
        assert_eq!(env.fake.count("GET", &format!("/collaborators/{login}")), 0, "{login}");
    }
}
