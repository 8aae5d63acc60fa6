//! Budgets, quota, crashes and leader election, end to end: the real operator
//! against the local control plane and the fake GitHub. Run with `make e2e`.

#[path = "support/fake_github.rs"]
mod fake_github;
#[path = "support/run_env.rs"]
mod run_env;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use claude_operator::api::{ClaudeRun, ClaudeRunPolicy, OutsiderPolicy, Phase};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use run_env::*;
use serde_json::json;
use support::*;

fn phases(runs: &[ClaudeRun]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in runs {
        let key = match r.status.as_ref() {
            Some(s) => match &s.admission {
                Some(a) => format!("{:?}/{}", s.phase, a.reason),
                None => format!("{:?}", s.phase),
            },
            None => "none".into(),
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

async fn all_decided(env: &Env, n: usize) -> Vec<ClaudeRun> {
    let runs = env.runs();
    let mut last = vec![];
    for _ in 0..300 {
        let list = runs.list(&ListParams::default()).await.unwrap().items;
        let decided = list
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.phase != Phase::Pending))
            .count();
        if list.len() == n && decided == n {
            return list;
        }
        last = list;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("runs not all decided: {:?}\n{}", phases(&last), env.op.log());
}

#[tokio::test]
async fn a_burst_of_fifty_triggers_admits_exactly_max_concurrent_runs() {
    let env = Env::start_with(
        "burst",
        |p| {
            p.spec.budget.max_concurrent_runs = 3;
            p.spec.budget.max_runs_per_user_per_hour = 100;
            p.spec.budget.limit_usd = "1000".into();
        },
        &[],
    )
    .await;
    let env_ref = &env;
    let sends = (0..50).map(|i| {
        let delivery = format!("burst-{i}");
        let env = env_ref;
        async move {
            env.comment("alice", 1001, "User", "MEMBER", &format!("@claude task {i}"), &delivery)
                .await
        }
    });
    futures::future::join_all(sends).await;
    let runs = all_decided(&env, 50).await;
    let admitted = runs
        .iter()
        .filter(|r| r.status.as_ref().unwrap().phase.is_active())
        .count();
    let limited = runs
        .iter()
        .filter(|r| r.status.as_ref().unwrap().admission.as_ref().unwrap().reason == "ConcurrencyLimit")
        .count();
    assert_eq!((admitted, limited), (3, 47), "{:?}", phases(&runs));
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    eventually("three pods", Duration::from_secs(30), || async {
        (pods.list(&ListParams::default()).await.ok()?.items.len() == 3).then_some(())
    })
    .await;
}

/// A policy with a $1.00 period budget and $0.40 reserved per run: two
/// runs fit at once, a third does not.
async fn dollar_budget_env(prefix: &str) -> Env {
    Env::start_with(
        prefix,
        |p| {
            p.spec.budget.limit_usd = "1.00".into();
            p.spec.budget.max_cost_per_run_usd = "0.40".into();
            p.spec.budget.max_concurrent_runs = 10;
        },
        &[],
    )
    .await
}

#[tokio::test]
async fn the_period_budget_holds_reservations_and_frees_them_on_completion() {
    let env = dollar_budget_env("budget").await;
    let first = env
        .comment("alice", 1001, "User", "MEMBER", "@claude one", "budget-1")
        .await;
    env.wait_phase(&first, Phase::Running).await;
    let second = env
        .comment("alice", 1001, "User", "MEMBER", "@claude two", "budget-2")
        .await;
    env.wait_phase(&second, Phase::Running).await;
    // $0.80 reserved: a third $0.40 run would overshoot $1.00.
    let third = env
        .comment("alice", 1001, "User", "MEMBER", "@claude three", "budget-3")
        .await;
    assert_eq!(env.reason(&third, Phase::Denied).await, "BudgetExhausted");

    // One finishes cheaply (the gateway metered $0.05): $0.05 spent + $0.40
    // reserved leaves room.
    env.set_meter(&first, json!({"spentMicros": 50000, "requests": 1}))
        .await;
    env.finish_pod(&first, "Succeeded", Some(&report("0.05"))).await;
    env.wait_phase(&first, Phase::Succeeded).await;
    let fourth = env
        .comment("alice", 1001, "User", "MEMBER", "@claude four", "budget-4")
        .await;
    let admitted = env.wait_phase(&fourth, Phase::Running).await;
    assert_eq!(admitted.status.unwrap().reserved_usd.as_deref(), Some("0.40"));

    let policies: Api<ClaudeRunPolicy> = Api::namespaced(env.client.clone(), &env.ns.name);
    eventually("policy status", Duration::from_secs(30), || async {
        let status = policies.get("acme-backend").await.ok()?.status?;
        let b = status.budget?;
        (b.spent_usd == "0.05" && b.reserved_usd == "0.80" && b.remaining_usd == "0.15" && status.active_runs == 2)
            .then_some(())
    })
    .await;

    // Killing the operator and starting it again changes no figure.
    let mut env = env;
    env.restart_operator().await;
    // The new process has derived the figures itself once its own gauge shows them.
    let gauge = format!(
        "claude_operator_budget_remaining_usd{{namespace=\"{}\",policy=\"acme-backend\"}}",
        env.ns.name
    );
    let metrics = format!("{}/metrics", env.op.metrics_url);
    let remaining = eventually("the new process's budget gauge", Duration::from_secs(30), || async {
        let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        let line = text.lines().find(|l| l.starts_with(&gauge))?;
        line.rsplit_once(' ')?.1.parse::<f64>().ok()
    })
    .await;
    assert!((remaining - 0.15).abs() < 1e-9, "{remaining}");
    let b = policies
        .get("acme-backend")
        .await
        .unwrap()
        .status
        .unwrap()
        .budget
        .unwrap();
    assert_eq!((b.spent_usd.as_str(), b.reserved_usd.as_str()), ("0.05", "0.80"));
}

#[tokio::test]
async fn a_run_waits_for_namespace_quota_then_runs() {
    let env = Env::start_with("quota", |p| p.spec.budget.max_concurrent_runs = 10, &[]).await;
    env.one_pod_quota().await;

    let first = env
        .comment("alice", 1001, "User", "MEMBER", "@claude one", "quota-1")
        .await;
    env.wait_phase(&first, Phase::Running).await;
    let second = env
        .comment("alice", 1001, "User", "MEMBER", "@claude two", "quota-2")
        .await;
    assert_eq!(env.waiting_for_quota(&second).await, "QuotaExceeded");

    env.finish_pod(&first, "Succeeded", Some(&report("0.01"))).await;
    env.wait_phase(&first, Phase::Succeeded).await;
    env.wait_phase(&second, Phase::Running).await;
}

#[tokio::test]
async fn killing_the_operator_during_provisioning_never_doubles_a_pod_or_a_token() {
    let mut env = Env::start_with(
        "crash",
        |p| {
            p.spec.budget.max_concurrent_runs = 50;
            p.spec.budget.max_runs_per_user_per_hour = 100;
            p.spec.budget.limit_usd = "1000".into();
        },
        &[],
    )
    .await;
    let mut names = vec![];
    let mut kills = 0;
    for i in 0..20 {
        names.push(
            env.comment(
                "alice",
                1001,
                "User",
                "MEMBER",
                &format!("@claude crash {i}"),
                &format!("crash-{i}"),
            )
            .await,
        );
        // SIGKILL at varying points of the provisioning of the runs so far.
        if i % 4 == 3 {
            tokio::time::sleep(Duration::from_millis(50 * (i as u64 % 7))).await;
            env.restart_operator().await;
            kills += 1;
        }
    }
    for name in &names {
        env.wait_phase(name, Phase::Running).await;
    }
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns.name);
    let pod_list = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(pod_list.len(), 20, "exactly one pod per run");
    // Each run's grant holds its own token, and nothing was revoked under a
    // live run.
    let mut stored = std::collections::BTreeSet::new();
    for name in &names {
        let grant = env.grants().get(&env.grant_name(name)).await.unwrap();
        let token = grant.data.unwrap().remove("github-token").unwrap().0;
        assert!(stored.insert(token), "two runs share a token");
    }
    assert_eq!(stored.len(), 20);
    // Every mint is recorded on its run before it is asked for, so the runs
    // account for every token GitHub issued. A token whose mint answer, or
    // whose Secret create, was in flight at a kill never reached a Secret:
    // GitHub offers no way to find or revoke it (it expires within the hour,
    // scoped to one repository, held by no one). Such a token shows as a
    // second mint on its run, with a TokenMintRetried Event.
    let runs: Api<ClaudeRun> = Api::namespaced(env.client.clone(), &env.ns.name);
    let recorded_mints: u32 = runs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|r| r.status.as_ref().and_then(|s| s.token_mints).unwrap_or(0) as u32)
        .sum();
    let (minted, revoked) = (env.fake.minted(&env.repo), env.fake.revoked(&env.repo));
    eprintln!("{kills} kills: GitHub minted {minted}, revoked {revoked}; the runs record {recorded_mints} mints");
    assert!(
        minted <= recorded_mints,
        "GitHub minted {minted} tokens, the runs record {recorded_mints} mints"
    );
    let unaccounted_live = (minted - revoked).saturating_sub(20);
    assert!(
        unaccounted_live <= recorded_mints - 20,
        "{unaccounted_live} live tokens beyond the stored ones, but only {} extra mints recorded ({kills} kills)",
        recorded_mints - 20
    );
    if recorded_mints > 20 {
        let retried = env.events_with_reason("TokenMintRetried").await;
        assert!(retried >= 1, "an extra mint is told as an Event");
    }
    let live_stored = {
        let state = env.fake.state();
        stored
            .iter()
            .filter(|t| {
                state
                    .tokens
                    .get(String::from_utf8_lossy(t).as_ref())
                    .is_some_and(|f| !f.revoked)
            })
            .count()
    };
    assert_eq!(live_stored, 20, "every stored token is live while its run runs");

    // Every run ends; every token is revoked and every Secret is gone.
    for name in &names {
        env.finish_pod(name, "Succeeded", Some(&report("0.01"))).await;
    }
    for name in &names {
        env.wait_phase(name, Phase::Succeeded).await;
    }
    eventually(
        "all tokens revoked, all secrets gone",
        Duration::from_secs(60),
        || async {
            let left = secrets
                .list(&ListParams::default().labels("app.kubernetes.io/managed-by=claude-operator"))
                .await
                .ok()?
                .items
                .len();
            let state = env.fake.state();
            let all_revoked = stored.iter().all(|t| {
                state
                    .tokens
                    .get(String::from_utf8_lossy(t).as_ref())
                    .is_some_and(|f| f.revoked)
            });
            (left == 0 && all_revoked).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn only_the_leader_reconciles_and_the_other_takes_over() {
    let mut env = Env::start_with("leader", |p| p.spec.budget.max_concurrent_runs = 10, &[]).await;
    // Replace the single operator by two replicas with leader election.
    env.op.kill();
    let ns = env.ns.name.clone();
    // A 4 s Lease renewed 2 s early: the takeover takes seconds, not 15.
    let le = [
        "--leader-election",
        "--leader-election-namespace",
        ns.as_str(),
        "--leader-election-lease-seconds",
        "4",
        "--leader-election-renew-grace-seconds",
        "2",
    ];
    let a = env.another_operator(&le).await;
    let b = env.another_operator(&le).await;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &ns);
    let holder = eventually("a leader", Duration::from_secs(30), || async {
        leases.get("claude-operator-leader").await.ok()?.spec?.holder_identity
    })
    .await;
    let (mut leader, follower) = if holder.ends_with(&format!("-{}", a.child.id())) {
        (a, b)
    } else {
        (b, a)
    };
    assert!(!follower.log().contains("acquired the leader lease"), "only one leader");
    // Webhooks go to the follower's receiver, which serves while its controller waits.
    env.op = follower;
    let first = env
        .comment("alice", 1001, "User", "MEMBER", "@claude one", "leader-1")
        .await;
    env.wait_phase(&first, Phase::Running).await;
    assert!(leader.log().contains("acquired the leader lease"));
    assert!(
        !env.op.log().contains("acquired the leader lease"),
        "the follower did not reconcile"
    );

    // The leader dies; the follower (now env.op) takes over within the lease.
    leader.kill();
    let second = env
        .comment("alice", 1001, "User", "MEMBER", "@claude two", "leader-2")
        .await;
    env.wait_phase(&second, Phase::Running).await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &ns);
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        2,
        "one pod per run"
    );
    assert_eq!(env.fake.minted(&env.repo), 2);
}

#[tokio::test]
async fn deleting_every_run_and_restarting_never_lowers_the_periods_spend() {
    let env = dollar_budget_env("spend").await;
    let policies: Api<ClaudeRunPolicy> = Api::namespaced(env.client.clone(), &env.ns.name);
    // Two runs end with metered costs; a third is deleted while it runs,
    // charged its meter so far.
    let first = env
        .comment("alice", 1001, "User", "MEMBER", "@claude one", "spend-1")
        .await;
    let second = env
        .comment("alice", 1001, "User", "MEMBER", "@claude two", "spend-2")
        .await;
    for (run, micros) in [(&first, 300_000), (&second, 250_000)] {
        env.wait_phase(run, Phase::Running).await;
        env.set_meter(run, json!({"spentMicros": micros, "requests": 1})).await;
        env.finish_pod(run, "Succeeded", Some(&report("0.01"))).await;
        let done = env.wait_phase(run, Phase::Succeeded).await;
        assert!(done.status.unwrap().cost.is_some());
    }
    let third = env
        .comment("alice", 1001, "User", "MEMBER", "@claude three", "spend-3")
        .await;
    env.wait_phase(&third, Phase::Running).await;
    env.set_meter(&third, json!({"spentMicros": 100_000, "requests": 1}))
        .await;
    eventually("both ended runs charged", Duration::from_secs(60), || async {
        let runs = env.runs();
        for run in [&first, &second] {
            runs.get(run).await.ok()?.status?.charged.then_some(())?;
        }
        Some(())
    })
    .await;

    for run in env.runs().list(&ListParams::default()).await.unwrap().items {
        env.runs()
            .delete(&run.metadata.name.unwrap(), &Default::default())
            .await
            .unwrap();
    }
    eventually("every run gone", Duration::from_secs(60), || async {
        env.runs()
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    let ledger = policies
        .get("acme-backend")
        .await
        .unwrap()
        .status
        .unwrap()
        .ledger
        .unwrap();
    assert_eq!((ledger.charged_usd.as_str(), ledger.runs_charged), ("0.65", 3));

    // A new process: the ledger is what it was, and it decides admissions:
    // $0.65 spent + $0.40 would pass $1.00.
    let mut env = env;
    env.restart_operator().await;
    let fourth = env
        .comment("alice", 1001, "User", "MEMBER", "@claude four", "spend-4")
        .await;
    assert_eq!(env.reason(&fourth, Phase::Denied).await, "BudgetExhausted");
    let status = eventually("the new process's policy status", Duration::from_secs(60), || async {
        let status = policies.get("acme-backend").await.ok()?.status?;
        (status.runs_this_period == 1 && status.denials_this_period == 1).then_some(status)
    })
    .await;
    let budget = status.budget.unwrap();
    assert_eq!(
        (budget.spent_usd.as_str(), budget.reserved_usd.as_str()),
        ("0.65", "0.00")
    );
    assert_eq!(status.ledger.unwrap().charged_usd, "0.65");
}

#[tokio::test]
async fn deleting_and_recreating_the_policy_never_resets_the_periods_spend() {
    let env = dollar_budget_env("respend").await;
    let policies: Api<ClaudeRunPolicy> = Api::namespaced(env.client.clone(), &env.ns.name);
    let name = "acme-backend";
    let original = eventually(
        "the policy carries the keep-spend finalizer",
        Duration::from_secs(30),
        || async {
            let p = policies.get(name).await.ok()?;
            p.finalizers()
                .iter()
                .any(|f| f == "claude-operator.dev/keep-spend")
                .then_some(p)
        },
    )
    .await;

    // One run ends and is charged $0.30; another is still running when the
    // policy is deleted, and ends after it is gone ($0.35).
    let first = env
        .comment("alice", 1001, "User", "MEMBER", "@claude one", "respend-1")
        .await;
    let second = env
        .comment("alice", 1001, "User", "MEMBER", "@claude two", "respend-2")
        .await;
    env.wait_phase(&first, Phase::Running).await;
    env.wait_phase(&second, Phase::Running).await;
    env.set_meter(&first, json!({"spentMicros": 300_000, "requests": 1}))
        .await;
    env.finish_pod(&first, "Succeeded", Some(&report("0.01"))).await;
    eventually("the first run charged", Duration::from_secs(60), || async {
        env.runs().get(&first).await.ok()?.status?.charged.then_some(())
    })
    .await;

    policies.delete(name, &Default::default()).await.unwrap();
    eventually("the policy gone", Duration::from_secs(60), || async {
        policies.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
    env.set_meter(&second, json!({"spentMicros": 350_000, "requests": 1}))
        .await;
    env.finish_pod(&second, "Succeeded", Some(&report("0.01"))).await;
    eventually("the second run charged", Duration::from_secs(60), || async {
        env.runs().get(&second).await.ok()?.status?.charged.then_some(())
    })
    .await;

    // The same policy again: the period's spend is what it was, and it
    // decides admissions ($0.65 spent + $0.40 would pass $1.00).
    let mut again: ClaudeRunPolicy = ClaudeRunPolicy::new(name, original.spec.clone());
    again.metadata.namespace = Some(env.ns.name.clone());
    policies.create(&PostParams::default(), &again).await.unwrap();
    let budget = eventually("the recreated policy's budget", Duration::from_secs(60), || async {
        policies.get(name).await.ok()?.status?.budget
    })
    .await;
    assert_eq!(budget.spent_usd, "0.65");
    let third = env
        .comment("alice", 1001, "User", "MEMBER", "@claude three", "respend-3")
        .await;
    assert_eq!(env.reason(&third, Phase::Denied).await, "BudgetExhausted");
}

#[tokio::test]
async fn runs_waiting_for_quota_or_approval_are_decided_by_the_next_controller() {
    let mut env = Env::start_with(
        "restartwait",
        |p| {
            p.spec.authorization.outsiders = OutsiderPolicy::RequireApproval;
            p.spec.budget.max_concurrent_runs = 10;
        },
        &[],
    )
    .await;
    // One run holds the namespace's only pod; a member's run waits for
    // quota, an outsider's for approval.
    env.one_pod_quota().await;
    let first = env
        .comment("alice", 1001, "User", "MEMBER", "@claude one", "rw-1")
        .await;
    env.wait_phase(&first, Phase::Running).await;
    let quota_waiting = env
        .comment("alice", 1001, "User", "MEMBER", "@claude two", "rw-2")
        .await;
    assert_eq!(env.waiting_for_quota(&quota_waiting).await, "QuotaExceeded");
    let approval_waiting = env
        .comment("nina", 1003, "User", "CONTRIBUTOR", "@claude fix typo", "rw-3")
        .await;
    env.wait_phase(&approval_waiting, Phase::AwaitingApproval).await;

    // The controller stops. While none runs, the quota goes and a member
    // approves (through a receiver of its own): no controller sees either.
    env.op.kill();
    env.op = env.another_operator(&["--no-controller"]).await;
    Api::<ResourceQuota>::namespaced(env.client.clone(), &env.ns.name)
        .delete("one-pod", &Default::default())
        .await
        .unwrap();
    env.comment("alice", 1001, "User", "MEMBER", "/claude approve", "rw-approve")
        .await;
    eventually(
        "the approval recorded on the waiting run",
        Duration::from_secs(30),
        || async {
            let run = env.runs().get(&approval_waiting).await.ok()?;
            run.annotations()
                .keys()
                .any(|k| k.starts_with(claude_operator::api::labels::APPROVAL_ANNOTATION_PREFIX))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        env.runs().get(&quota_waiting).await.unwrap().status.unwrap().phase,
        Phase::Admitted,
        "nothing decided without a controller"
    );

    // The next controller decides both.
    env.restart_operator().await;
    env.wait_phase(&quota_waiting, Phase::Running).await;
    let approved = env.wait_phase(&approval_waiting, Phase::Running).await;
    let admission = approved.status.unwrap().admission.unwrap();
    assert_eq!(
        (admission.reason.as_str(), admission.approved_by.as_deref()),
        ("Approved", Some("alice"))
    );
}
