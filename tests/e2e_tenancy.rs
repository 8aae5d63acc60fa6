//! Tenancy end to end: the real `claude-operator run` (receiver and
//! controllers) against the local control plane and the fake GitHub, each
//! test as the attack it stops. A policy created later in another namespace
//! that overlaps a working one cannot switch it off (triggers still run under
//! the first; the second shows `Overlapping` naming the winner); a policy
//! asking for `workflows` without the cluster admin's leave is not Ready and
//! a trigger or a manual run for it gets nothing; a namespace claiming a
//! repository outside its tenancy grant is not Ready and gets nothing. Run
//! with `make e2e`.

#[path = "support/fake_github.rs"]
mod fake_github;
#[path = "support/run_env.rs"]
mod run_env;
mod support;

use std::time::Duration;

use claude_operator::api::{ClaudeRun, ClaudeRunPolicy, Phase, TokenAccess};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use run_env::*;
use support::*;

/// Waits until the policy's condition `type_` has this status and reason.
async fn wait_condition(
    client: &kube::Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> Condition {
    let api: Api<ClaudeRunPolicy> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("{ns}/{name} {type_}={status} ({reason})"),
        Duration::from_secs(60),
        || async {
            let p = api.get(name).await.ok()?;
            p.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == type_ && c.status == status && c.reason == reason)
        },
    )
    .await
}

/// The sample policy's name (every Env creates it).
fn policy_name() -> String {
    load_yaml::<ClaudeRunPolicy>("config/samples/policy.yaml")
        .metadata
        .name
        .unwrap()
}

#[tokio::test]
async fn a_later_overlapping_policy_in_another_namespace_cannot_disable_the_first() {
    let client = client().await;
    // The intruder's namespace, watched by the same operator as the team's.
    let other = TestNamespace::new(&client, "tenancy-intruder").await;
    let env = Env::start_with("tenancy-first", |_| {}, &["--watch-namespace", &other.name]).await;
    let first = policy_name();
    wait_condition(&client, &env.ns.name, &first, "Ready", "True", "Valid").await;

    // Later, another tenant claims every repository of the owner.
    let mut intruder: ClaudeRunPolicy = load_yaml("config/samples/policy.yaml");
    intruder.metadata.namespace = Some(other.name.clone());
    intruder.metadata.name = Some("grab-all".into());
    intruder.spec.repositories = vec!["acme/*".into()];
    intruder.spec.quota = None;
    Api::<ClaudeRunPolicy>::namespaced(client.clone(), &other.name)
        .create(&PostParams::default(), &intruder)
        .await
        .unwrap();
    let lost = wait_condition(&client, &other.name, "grab-all", "Overlapping", "True", "OverlapLost").await;
    let winner = format!("{}/{first}", env.ns.name);
    assert!(lost.message.contains(&winner), "names the winner: {}", lost.message);
    // Overlap is per repository: the loser is still a valid policy.
    wait_condition(&client, &other.name, "grab-all", "Ready", "True", "Valid").await;

    // A signed trigger still runs under the first policy, in its namespace.
    let run = env
        .comment(
            "alice",
            1001,
            "User",
            "MEMBER",
            "@claude add a retry",
            "tenancy-overlap",
        )
        .await;
    let admitted = env.wait_phase(&run, Phase::Running).await;
    assert_eq!(admitted.spec.policy_name, first);
    let theirs: Api<ClaudeRun> = Api::namespaced(client.clone(), &other.name);
    assert!(
        theirs.list(&Default::default()).await.unwrap().items.is_empty(),
        "the intruder's namespace got no run"
    );

    // A run created by hand under the intruder's policy is denied at
    // admission, naming the policy that serves the repository.
    let minted = env.fake.minted(&env.repo);
    assert!(minted >= 1, "the first policy's run got its token");
    let mut manual: ClaudeRun = load_yaml("config/samples/run.yaml");
    manual.metadata.name = Some("intruder-manual".into());
    manual.metadata.namespace = Some(other.name.clone());
    manual.spec.policy_name = "grab-all".into();
    manual.spec.repository = env.repo.clone();
    manual.spec.trigger.source = claude_operator::api::TriggerSource::Manual;
    theirs.create(&PostParams::default(), &manual).await.unwrap();
    let denied = eventually("the intruder's manual run denied", Duration::from_secs(60), || async {
        let r = theirs.get("intruder-manual").await.ok()?;
        let s = r.status?;
        (s.phase == Phase::Denied).then_some(s.admission?)
    })
    .await;
    assert_eq!(denied.reason, "OverlapLost");
    assert!(denied.message.contains(&winner), "{}", denied.message);
    assert_eq!(env.fake.minted(&env.repo), minted, "no token for the intruder's run");
}

#[tokio::test]
async fn a_policy_asking_for_workflows_without_leave_is_not_ready_and_gets_nothing() {
    let env = Env::start_with(
        "tenancy-wf",
        |p| {
            p.spec.github.permissions.insert("workflows".into(), TokenAccess::Write);
        },
        &[],
    )
    .await;
    let name = policy_name();
    let ready = wait_condition(
        &env.client,
        &env.ns.name,
        &name,
        "Ready",
        "False",
        "PermissionNotAllowed",
    )
    .await;
    assert!(ready.message.contains("workflows"), "{}", ready.message);

    // A signed trigger: the receiver answers, and no run exists.
    let run = env
        .comment("alice", 1001, "User", "MEMBER", "@claude edit the CI", "tenancy-wf")
        .await;
    assert!(
        env.runs().get_opt(&run).await.unwrap().is_none(),
        "no run for the trigger"
    );

    // A run created by hand is denied before anything is minted.
    let mut manual: ClaudeRun = load_yaml("config/samples/run.yaml");
    manual.metadata.name = Some("wf-manual".into());
    manual.metadata.namespace = Some(env.ns.name.clone());
    manual.spec.repository = env.repo.clone();
    manual.spec.trigger.source = claude_operator::api::TriggerSource::Manual;
    env.runs().create(&PostParams::default(), &manual).await.unwrap();
    assert_eq!(env.reason("wf-manual", Phase::Denied).await, "PermissionNotAllowed");
    assert_eq!(env.fake.minted(&env.repo), 0, "no token minted");
}

#[tokio::test]
async fn a_namespace_claiming_a_repository_outside_its_grant_is_not_ready_and_gets_nothing() {
    // The admin grants namespaces `tenancy-grant-*` one other repository only.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "namespaces:\n  - names: [\"tenancy-grant-*\"]\n    repositories: [acme/elsewhere]\n",
    )
    .unwrap();
    let env = Env::start_with(
        "tenancy-grant",
        |_| {},
        &["--tenancy-file", file.path().to_str().unwrap()],
    )
    .await;
    let name = policy_name();
    let ready = wait_condition(
        &env.client,
        &env.ns.name,
        &name,
        "Ready",
        "False",
        "RepositoryNotAllowed",
    )
    .await;
    assert!(ready.message.contains(&env.repo), "{}", ready.message);

    let run = env
        .comment("alice", 1001, "User", "MEMBER", "@claude add a retry", "tenancy-grant")
        .await;
    assert!(
        env.runs().get_opt(&run).await.unwrap().is_none(),
        "no run for the trigger"
    );
    assert_eq!(env.fake.minted(&env.repo), 0, "no token minted");
    assert!(
        env.op.log().contains("tenancy configuration read"),
        "the file was read at start"
    );
}

#[tokio::test]
async fn an_invalid_tenancy_file_stops_the_process_with_the_reason() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "namespaces:\n  - names: [a]\n    permissions: {wrokflows: write}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_claude-operator"))
        .args(["run", "--no-gateway", "--tenancy-file", file.path().to_str().unwrap()])
        .env(
            "KUBECONFIG",
            std::env::var("CLAUDE_OPERATOR_E2E_KUBECONFIG").expect("run with `make e2e`"),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("wrokflows"), "{err}");
}

#[tokio::test]
async fn a_runner_image_changed_while_a_run_waits_for_quota_never_reaches_a_pod() {
    // The admin lets namespaces `tenancy-image-*` use the project's runner only.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "namespaces:\n  - names: [\"tenancy-image-*\"]\n    repositories: [\"*/*\"]\n    runnerImages: [\"ghcr.io/claude-operator/runner:*\"]\n",
    )
    .unwrap();
    let env = Env::start_with(
        "tenancy-image",
        |p| p.spec.budget.max_concurrent_runs = 10,
        &["--tenancy-file", file.path().to_str().unwrap()],
    )
    .await;
    let name = policy_name();
    wait_condition(&env.client, &env.ns.name, &name, "Ready", "True", "Valid").await;

    // The second run is admitted (its token minted) and waits for the one pod
    // the namespace's quota allows.
    env.one_pod_quota().await;
    let first = env
        .comment("alice", 1001, "User", "MEMBER", "@claude one", "image-1")
        .await;
    env.wait_phase(&first, Phase::Running).await;
    let second = env
        .comment("alice", 1001, "User", "MEMBER", "@claude two", "image-2")
        .await;
    assert_eq!(env.waiting_for_quota(&second).await, "QuotaExceeded");
    let minted = env.fake.minted(&env.repo);
    assert_eq!(minted, 2, "both runs were minted at admission");

    // Meanwhile the policy's runner image is switched to one the grant does
    // not allow; the controller sees it (the policy is no longer Ready).
    let evil = "registry.example/not-allowed:latest";
    Api::<ClaudeRunPolicy>::namespaced(env.client.clone(), &env.ns.name)
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"runner": {"image": evil}}})),
        )
        .await
        .unwrap();
    wait_condition(
        &env.client,
        &env.ns.name,
        &name,
        "Ready",
        "False",
        "RunnerImageNotAllowed",
    )
    .await;

    // The quota frees: the waiting run fails with the reason instead of
    // starting a pod with that image, and its token is revoked.
    env.finish_pod(&first, "Succeeded", Some(&report("0.01"))).await;
    env.wait_phase(&first, Phase::Succeeded).await;
    let failed = env.wait_phase(&second, Phase::Failed).await;
    let status = failed.status.unwrap();
    assert_eq!(status.outcome.as_deref(), Some("RunnerImageNotAllowed"));
    assert!(status.pod_name.is_none(), "no pod recorded: {status:?}");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    assert!(
        pods.get_opt(&format!("{second}-runner")).await.unwrap().is_none(),
        "no pod for the run"
    );
    assert!(
        pods.list(&Default::default()).await.unwrap().items.iter().all(|p| p
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .all(|c| c.image.as_deref() != Some(evil))),
        "no pod runs the image the grant refuses"
    );
    assert_eq!(env.fake.minted(&env.repo), minted, "nothing minted after the change");
    eventually("both tokens revoked", Duration::from_secs(30), || async {
        (env.fake.revoked(&env.repo) >= 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_overlapping_condition_follows_another_policy_appearing_and_going() {
    // No run happens here: only the policy watch can tell the first policy
    // that another one claims its repositories, or stopped claiming them.
    let client = client().await;
    let other = TestNamespace::new(&client, "tenancy-watch").await;
    let env = Env::start_with("tenancy-follow", |_| {}, &["--watch-namespace", &other.name]).await;
    let first = policy_name();
    wait_condition(&client, &env.ns.name, &first, "Ready", "True", "Valid").await;
    wait_condition(&client, &env.ns.name, &first, "Overlapping", "False", "Valid").await;

    let mut later: ClaudeRunPolicy = load_yaml("config/samples/policy.yaml");
    later.metadata.namespace = Some(other.name.clone());
    later.metadata.name = Some("later".into());
    later.spec.repositories = vec!["acme/*".into()];
    later.spec.quota = None;
    let theirs: Api<ClaudeRunPolicy> = Api::namespaced(client.clone(), &other.name);
    theirs.create(&PostParams::default(), &later).await.unwrap();
    let won = wait_condition(&client, &env.ns.name, &first, "Overlapping", "False", "OverlapWon").await;
    assert!(
        won.message.contains(&format!("{}/later", other.name)),
        "{}",
        won.message
    );

    theirs.delete("later", &Default::default()).await.unwrap();
    wait_condition(&client, &env.ns.name, &first, "Overlapping", "False", "Valid").await;
}
