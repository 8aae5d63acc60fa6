//! Cancelling runs end to end: the real `claude-operator run` (receiver and
//! controllers) against the local control plane and the fake GitHub, kwok
//! playing the kubelet and the test playing the gateway's meter. A cancel
//! comment stops a run only when its author started it or has write access
//! (GitHub asked, the payload's association only a pre-filter); closing the
//! issue and deleting the run stop it too. Every way ends with no pod, the
//! grant gone (the capability dead), the token revoked exactly once and the
//! cost so far on the run and in the policy's ledger. While a run goes, its
//! status and its one GitHub comment show the turns, the cost so far and the
//! last tool the gateway metered, the comment written no more often than
//! `--progress-interval-seconds`. Runs that never got a pod (waiting for
//! quota or for approval) are cancelled the same ways and charged nothing.
//! The real Claude Code CLI, run as the runner runs it against a real
//! gateway, shows each turn and tool on the run as the gateway meters it.
//! Run with `make e2e`.

#[path = "support/runner/claude_cli.rs"]
mod claude_cli;
#[path = "support/runner/fake_anthropic.rs"]
mod fake_anthropic;
#[path = "support/fake_github.rs"]
mod fake_github;
#[path = "support/run_env.rs"]
mod run_env;
mod support;

use std::time::Duration;

use claude_operator::api::labels::CANCEL_ANNOTATION_PREFIX;
use claude_operator::api::{ClaudeRunPolicy, CostSource, OutsiderPolicy, Phase};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams};
use run_env::*;
use serde_json::json;
use support::*;

/// A meter with `spent` settled micro-dollars over two requests and
/// `in_flight` reserved by one request still open.
fn meter(spent: u64, in_flight: u64) -> serde_json::Value {
    json!({
        "spentMicros": spent,
        "usage": {"claude-sonnet-4-5": {"input_tokens": 1000, "output_tokens": 200}},
        "requests": 2,
        "lastTool": "Bash",
        "inFlight": {"req-open": {"reservedMicros": in_flight, "since": "2026-01-01T00:00:00Z"}},
    })
}

impl Env {
    /// Asserts the run's sandbox is gone: no pod, no grant (so no
    /// capability the gateway accepts), no Secret.
    async fn sandbox_gone(&self, run: &str) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns.name);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns.name);
        eventually(
            &format!("{run}: pod, grant and Secret gone"),
            Duration::from_secs(60),
            || async {
                let pod = pods.get_opt(&format!("{run}-runner")).await.ok()?.is_none();
                let grant = self.grants().get_opt(&self.grant_name(run)).await.ok()?.is_none();
                let secret = secrets.get_opt(&format!("{run}-secrets")).await.ok()?.is_none();
                (pod && grant && secret).then_some(())
            },
        )
        .await;
    }

    /// Waits for the policy's spend to read `usd`.
    async fn spent(&self, usd: &str) {
        let policies: Api<ClaudeRunPolicy> = Api::namespaced(self.client.clone(), &self.ns.name);
        eventually(&format!("policy spend {usd}"), Duration::from_secs(30), || async {
            let budget = policies.get("acme-backend").await.ok()?.status?.budget?;
            (budget.spent_usd == usd).then_some(())
        })
        .await;
    }

    /// The cancel requests recorded on `run`.
    async fn cancel_annotations(&self, run: &str) -> usize {
        let r = self.runs().get(run).await.unwrap();
        r.metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .filter(|k| k.starts_with(CANCEL_ANNOTATION_PREFIX))
            .count()
    }
}

#[tokio::test]
async fn a_cancel_comment_stops_a_run_only_when_its_author_started_it_or_may_write() {
    let env = Env::start("cancel", OutsiderPolicy::Deny).await;
    let mine = env
        .comment("alice", 1001, "User", "MEMBER", "@claude add a retry", "cancel-alice")
        .await;
    let carols = env
        .comment("carol", 1006, "User", "MEMBER", "@claude add a test", "cancel-carol")
        .await;
    for run in [&mine, &carols] {
        env.wait_phase(run, Phase::Running).await;
    }
    env.set_meter(&mine, meter(6000, 1000)).await;

    // A stranger's cancel is not even recorded.
    let (status, body, _) = env
        .deliver_comment("nina", 1003, "User", "NONE", "/claude cancel", "cancel-nina", SECRET)
        .await;
    assert_eq!((status, body.trim()), (202, "no run to cancel"));
    // A read-only collaborator's is recorded (the payload cannot tell), and
    // refused once GitHub says they cannot write: both runs go on.
    let (status, body, _) = env
        .deliver_comment(
            "rob",
            1002,
            "User",
            "COLLABORATOR",
            "/claude cancel",
            "cancel-rob",
            SECRET,
        )
        .await;
    assert_eq!((status, body.trim()), (202, "cancel recorded"));
    eventually("both runs' refusals", Duration::from_secs(30), || async {
        (env.events_with_reason("CancelRefused").await == 2).then_some(())
    })
    .await;
    eventually("refused requests removed", Duration::from_secs(30), || async {
        (env.cancel_annotations(&mine).await + env.cancel_annotations(&carols).await == 0).then_some(())
    })
    .await;
    for run in [&mine, &carols] {
        let phase = env.runs().get(run).await.unwrap().status.unwrap().phase;
        assert_eq!(phase, Phase::Running, "{run} goes on after a refused cancel");
    }

    // The trigger's author cancels their own run (no lookup needed: the
    // signed webhook named them); a low association keeps it off carol's.
    let (status, body, _) = env
        .deliver_comment(
            "alice",
            1001,
            "User",
            "CONTRIBUTOR",
            "/claude cancel",
            "cancel-own",
            SECRET,
        )
        .await;
    assert_eq!((status, body.trim()), (202, "cancel recorded"));
    assert_eq!(
        env.cancel_annotations(&carols).await,
        0,
        "not recorded on someone else's run"
    );
    let cancelled = env.wait_phase(&mine, Phase::Cancelled).await;
    let status = cancelled.status.unwrap();
    assert_eq!(status.outcome.as_deref(), Some("CancelRequested"));
    let cost = status.cost.unwrap();
    assert_eq!(
        (cost.usd.as_str(), cost.source, cost.turns),
        ("0.007", CostSource::Metered, 2),
        "settled plus the open reservation"
    );
    env.sandbox_gone(&mine).await;
    eventually("one token revoked", Duration::from_secs(30), || async {
        (env.fake.revoked(&env.repo) == 1).then_some(())
    })
    .await;
    env.spent("0.007").await;
    assert_eq!(
        env.runs().get(&carols).await.unwrap().status.unwrap().phase,
        Phase::Running
    );

    // Someone with write access cancels another's run.
    env.comment("alice", 1001, "User", "MEMBER", "/claude cancel", "cancel-write")
        .await;
    let cancelled = env.wait_phase(&carols, Phase::Cancelled).await;
    assert_eq!(cancelled.status.unwrap().outcome.as_deref(), Some("CancelRequested"));
    env.sandbox_gone(&carols).await;
    eventually("both tokens revoked", Duration::from_secs(30), || async {
        (env.fake.revoked(&env.repo) == 2).then_some(())
    })
    .await;
    assert!(env.fake.live_tokens(&env.repo).is_empty(), "no token left");
    eventually("the status comment says cancelled", Duration::from_secs(30), || async {
        let state = env.fake.state();
        let body = state.comments.values().find(|(_, _, b)| b.contains(&mine))?.2.clone();
        (body.contains("cancelled") && body.contains("$0.007") && body.contains("CancelRequested")).then_some(())
    })
    .await;
    let log = env.op.log();
    assert!(!log.contains(TOKEN_PREFIX_NEVER_LOGGED), "{log}");
}

#[tokio::test]
async fn closing_the_issue_or_deleting_the_run_cancels_it_with_its_cost_so_far() {
    let env = Env::start("cancel-close", OutsiderPolicy::Deny).await;
    let closed = env
        .comment("alice", 1001, "User", "MEMBER", "@claude fix the parser", "close-1")
        .await;
    env.wait_phase(&closed, Phase::Running).await;
    env.set_meter(&closed, meter(3000, 0)).await;
    // GitHub's examples hold no `issues` `closed`: made from `opened`.
    let (status, body) = env
        .deliver_fixture("issues", "issues.opened", "close-issue", |v| {
            v["action"] = json!("closed");
            v["issue"]["state"] = json!("closed");
            v["sender"] = json!({"login": "carol", "id": 1006, "type": "User"});
        })
        .await;
    assert_eq!((status, body.trim()), (202, "cancel recorded"));
    let done = env.wait_phase(&closed, Phase::Cancelled).await;
    let status = done.status.unwrap();
    assert_eq!(status.outcome.as_deref(), Some("ThreadClosed"));
    assert_eq!(status.cost.unwrap().usd, "0.003");
    env.sandbox_gone(&closed).await;
    env.spent("0.003").await;

    // Deleting a run that goes: charged before its token goes, then gone.
    let deleted = env
        .comment("alice", 1001, "User", "MEMBER", "@claude try again", "close-2")
        .await;
    env.wait_phase(&deleted, Phase::Running).await;
    env.set_meter(&deleted, meter(2000, 500)).await;
    env.runs().delete(&deleted, &DeleteParams::background()).await.unwrap();
    eventually("the run is gone", Duration::from_secs(60), || async {
        env.runs().get_opt(&deleted).await.ok()?.is_none().then_some(())
    })
    .await;
    env.sandbox_gone(&deleted).await;
    env.spent("0.0055").await;
    eventually("both tokens revoked", Duration::from_secs(30), || async {
        (env.fake.revoked(&env.repo) == 2).then_some(())
    })
    .await;
    assert!(env.fake.live_tokens(&env.repo).is_empty(), "no token left");
    assert_eq!(env.events_with_reason("RunDeleted").await, 1);
}

/// Runs that never got a pod: one admitted and waiting for the namespace's
/// quota (its token minted at admission), two waiting for approval (nothing
/// minted). Cancelled by their author's comment or by closing the issue,
/// each ends `Cancelled` without ever having a pod, the minted token is
/// revoked and nothing is charged; a run started after them takes the freed
/// quota, the cancelled one never does.
#[tokio::test]
async fn runs_waiting_for_quota_or_approval_are_cancelled_without_a_pod_or_a_charge() {
    const ALICE: (&str, i64, &str) = ("alice", 1001, "MEMBER");
    const NINA: (&str, i64, &str) = ("nina", 1003, "NONE");
    let env = Env::start_with(
        "cancel-wait",
        |p| {
            p.spec.authorization.outsiders = OutsiderPolicy::RequireApproval;
            p.spec.budget.max_concurrent_runs = 10;
        },
        &[],
    )
    .await;
    env.one_pod_quota().await;
    let on = |number: i64, who: (&'static str, i64, &'static str), body: &'static str, delivery: &'static str| {
        let env = &env;
        async move {
            let (status, text, run) = env.comment_on_issue(number, who, body, delivery).await;
            assert!((200..300).contains(&status), "{delivery}: {status} {text}");
            (text.trim().to_owned(), run)
        }
    };

    // Issue 1's run takes the namespace's one pod; issue 2's is admitted and
    // waits for quota; issues 3 and 4 wait for approval.
    let holder = on(1, ALICE, "@claude one", "wait-holder").await.1;
    env.wait_phase(&holder, Phase::Running).await;
    let queued = on(2, ALICE, "@claude two", "wait-quota").await.1;
    assert_eq!(env.waiting_for_quota(&queued).await, "QuotaExceeded");
    let asked = on(3, NINA, "@claude three", "wait-approval").await.1;
    let closed = on(4, NINA, "@claude four", "wait-close").await.1;
    for run in [&asked, &closed] {
        env.wait_phase(run, Phase::AwaitingApproval).await;
    }
    assert_eq!(
        env.fake.minted(&env.repo),
        2,
        "nothing minted for a run awaiting approval"
    );

    // Each author cancels their own run; closing issue 4 cancels its run.
    assert_eq!(
        on(2, ALICE, "/claude cancel", "cancel-quota").await.0,
        "cancel recorded"
    );
    assert_eq!(
        on(3, NINA, "/claude cancel", "cancel-approval").await.0,
        "cancel recorded"
    );
    let (status, body) = env
        .deliver_fixture("issues", "issues.opened", "close-4", |v| {
            v["action"] = json!("closed");
            v["issue"]["number"] = json!(4);
            v["issue"]["state"] = json!("closed");
            v["sender"] = json!({"login": "carol", "id": 1006, "type": "User"});
        })
        .await;
    assert_eq!((status, body.trim()), (202, "cancel recorded"));
    for (run, reason) in [
        (&queued, "CancelRequested"),
        (&asked, "CancelRequested"),
        (&closed, "ThreadClosed"),
    ] {
        let status = env.wait_phase(run, Phase::Cancelled).await.status.unwrap();
        assert_eq!(status.outcome.as_deref(), Some(reason), "{run}");
        assert_eq!((status.pod_name, status.pod_uid), (None, None), "{run} never had a pod");
        let cost = status.cost.expect("a cost");
        assert!(
            claude_operator::cost::Usd::parse(&cost.usd).unwrap().is_zero() && cost.turns == 0,
            "{run}: {cost:?}"
        );
        assert!(!status.charged, "{run}");
        assert_eq!(status.reserved_usd, None, "{run}: its reservation released");
        env.sandbox_gone(run).await;
    }
    // The queued run's token (minted at admission) is revoked; the running
    // run's is not.
    eventually("the queued run's token revoked", Duration::from_secs(30), || async {
        (env.fake.revoked(&env.repo) == 1).then_some(())
    })
    .await;
    assert_eq!(env.fake.live_tokens(&env.repo).len(), 1, "only the running run's token");
    assert_eq!(env.fake.minted(&env.repo), 2);
    assert_eq!(
        env.runs().get(&holder).await.unwrap().status.unwrap().phase,
        Phase::Running,
        "a cancel on other issues leaves it alone"
    );

    // The quota frees: a new run takes it, the cancelled one never does, and
    // the policy was charged only what the finished run metered.
    env.set_meter(&holder, meter(3000, 0)).await;
    env.finish_pod(&holder, "Succeeded", Some(&report("0.003"))).await;
    env.wait_phase(&holder, Phase::Succeeded).await;
    env.spent("0.003").await;
    let next = on(5, ALICE, "@claude five", "wait-next").await.1;
    env.wait_phase(&next, Phase::Running).await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    assert!(pods.get_opt(&format!("{queued}-runner")).await.unwrap().is_none());
    let status = env.runs().get(&queued).await.unwrap().status.unwrap();
    assert_eq!((status.phase, status.pod_name), (Phase::Cancelled, None));
    env.spent("0.003").await;
}

/// Waits until run `run`'s status shows `turns` turns and `tool` as its last tool.
async fn turn_on_the_status(env: &Env, run: &str, turns: i32, tool: &str, within: Duration) {
    eventually(&format!("turn {turns} ({tool}) on the status"), within, || async {
        let status = env.runs().get(run).await.ok()?.status?;
        (status.cost?.turns == turns && status.last_tool.as_deref() == Some(tool)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_running_run_shows_turns_cost_and_last_tool_and_its_comment_is_edited_at_a_bounded_rate() {
    const INTERVAL: Duration = Duration::from_secs(3);
    let env = Env::start_with(
        "progress",
        |_| {},
        &["--meter-interval-seconds", "1", "--progress-interval-seconds", "3"],
    )
    .await;
    let run = env
        .comment(
            "alice",
            1001,
            "User",
            "MEMBER",
            "@claude fix the flaky test",
            "progress-1",
        )
        .await;
    env.wait_phase(&run, Phase::Running).await;
    let comment = eventually("the status comment", Duration::from_secs(30), || async {
        env.runs().get(&run).await.ok()?.status?.feedback_comment_id
    })
    .await;

    // The gateway meters a multi-turn run: each turn shows on the status,
    // then on the comment (the next turn comes once it did).
    for (turns, tool) in [(1, "Read"), (2, "Bash"), (3, "mcp__git__commit")] {
        let meter = json!({
            "spentMicros": turns * 3000,
            "usage": {"claude-sonnet-4-5": {"input_tokens": turns * 1000, "output_tokens": turns * 200}},
            "requests": turns,
            "lastTool": tool,
        });
        env.set_meter(&run, meter).await;
        turn_on_the_status(&env, &run, turns, tool, Duration::from_secs(30)).await;
        let line = format!(
            "Progress: {turns} turns · $0.00{} so far · last tool `{tool}`",
            turns * 3
        );
        eventually(
            &format!("turn {turns} on the comment"),
            Duration::from_secs(30),
            || async {
                let state = env.fake.state();
                state.comments.get(&comment)?.2.contains(&line).then_some(())
            },
        )
        .await;
    }
    // A tool name that is not a plain identifier (the pod chose it) is not shown.
    env.set_meter(
        &run,
        json!({"spentMicros": 12000, "requests": 4, "lastTool": "Bash` @everyone <img src=x>"}),
    )
    .await;
    eventually("turn 4 without its tool", Duration::from_secs(30), || async {
        let status = env.runs().get(&run).await.ok()?.status?;
        (status.cost?.turns == 4 && status.last_tool.is_none()).then_some(())
    })
    .await;
    env.finish_pod(&run, "Succeeded", Some(&report("0.012"))).await;
    env.wait_phase(&run, Phase::Succeeded).await;
    eventually("the comment says finished", Duration::from_secs(30), || async {
        let state = env.fake.state();
        state
            .comments
            .get(&comment)?
            .2
            .contains("Claude finished")
            .then_some(())
    })
    .await;

    let writes: Vec<_> = env
        .fake
        .state()
        .comment_writes
        .iter()
        .filter(|(id, _, _)| *id == comment)
        .cloned()
        .collect();
    let progress: Vec<_> = writes.iter().filter(|(_, _, b)| b.contains("Progress: ")).collect();
    assert!(progress.len() >= 3, "edited during the run: {writes:#?}");
    for (_, _, body) in &progress {
        assert!(body.contains(" turns · $0.0") && body.contains("so far"), "{body}");
    }
    for pair in writes.windows(2) {
        let gap = pair[1].1.duration_since(pair[0].1);
        assert!(
            gap >= INTERVAL,
            "two writes {gap:?} apart: {:?} then {:?}",
            pair[0].2,
            pair[1].2
        );
    }
    assert!(writes.iter().all(|(_, _, b)| !b.contains("@everyone")));
}

/// The runner's flags, parsed like the binary's.
#[derive(clap::Parser)]
struct RunnerFlags {
    #[command(flatten)]
    args: claude_operator::cli::RunnerArgs,
}

/// The real Claude Code CLI, invoked as the runner invokes it in the pod
/// (flags from the run's pod, the capability from its Secret), talks to a
/// real gateway process; the fake Messages API answers three scripted turns
/// (a `Bash` and a `Read` tool call, then text) one at a time. After each
/// turn the run's status shows the turns and the last tool the gateway
/// metered; in the end the cost Claude Code computed, and the comment says so.
#[tokio::test]
async fn the_real_cli_s_turns_and_tools_show_on_the_run_as_the_gateway_meters_them() {
    use clap::Parser;
    use fake_anthropic::{FakeAnthropic, Turn, TurnUsage};
    use tokio::io::AsyncWriteExt;
    let claude = claude_cli::claude_bin();
    let env = Env::start_with(
        "cli-progress",
        |_| {},
        &["--meter-interval-seconds", "1", "--progress-interval-seconds", "1"],
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let readme = work.path().join("README.md");
    std::fs::write(&readme, "# widgets\n").unwrap();
    let usage = TurnUsage {
        input_tokens: 1000,
        output_tokens: 200,
    };
    let script = vec![
        Turn::Bash("git diff".into()),
        Turn::Read(readme.to_string_lossy().into_owned()),
        Turn::Text("Nothing to change.".into()),
    ];
    let api = FakeAnthropic::start_gated(script, usage).await;

    let run = env
        .comment("alice", 1001, "User", "MEMBER", "@claude look around", "cli-progress-1")
        .await;
    env.wait_phase(&run, Phase::Running).await;
    let gateway = OperatorProcess::start_component(
        "gateway",
        &[
            "--gateway-namespace",
            &env.ns.name,
            "--anthropic-api-url",
            &api.base_url,
        ],
        &[],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns.name);
    let pod = pods.get(&format!("{run}-runner")).await.unwrap();
    let vars: std::collections::BTreeMap<String, String> = pod.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect();
    let var = |name: &str| vars[&format!("CLAUDE_OPERATOR_{name}")].clone();
    let secret = secrets.get(&format!("{run}-secrets")).await.unwrap();
    let capability = String::from_utf8(
        secret.data.unwrap()[claude_operator::sandbox::SECRET_KEY_CAPABILITY]
            .0
            .clone(),
    )
    .unwrap();
    // The gateway knows the run's grant: a read of another repository is
    // refused for what it asks (403), not for who asks (401).
    eventually("the gateway serves the run", Duration::from_secs(30), || async {
        let answer = env
            .http
            .get(format!("{}/github/repos/other/repo", gateway.gateway_url))
            .bearer_auth(&capability)
            .send()
            .await
            .ok()?;
        (answer.status() == 403).then_some(())
    })
    .await;

    let dir = |name: &str| work.path().join(name).to_string_lossy().into_owned();
    let model = var("MODEL");
    let runner = RunnerFlags::parse_from([
        "runner".to_owned(),
        format!("--run-name={run}"),
        format!("--repository={}", env.repo),
        "--number=1".to_owned(),
        format!("--model={model}"),
        format!("--max-turns={}", var("MAX_TURNS")),
        format!("--max-budget-usd={}", var("MAX_BUDGET_USD")),
        format!("--allowed-tools={}", var("ALLOWED_TOOLS")),
        format!("--capability-file={}", dir("secrets/capability")),
        format!("--workspace={}", dir("")),
        format!("--gateway-url={}", gateway.gateway_url),
        format!("--claude-bin={}", claude.display()),
    ])
    .args;
    let access = claude_operator::runner::claude::GatewayAccess::new(
        &gateway.gateway_url,
        secrecy::SecretString::from(capability.clone()),
    )
    .unwrap();
    let mut cli = claude_operator::runner::claude::command(&runner, work.path(), &access)
        .spawn()
        .unwrap();
    let mut stdin = cli.stdin.take().unwrap();
    stdin.write_all(b"Look around the repository.").await.unwrap();
    drop(stdin);
    let cli = tokio::spawn(cli.wait_with_output());

    // One turn at a time: each shows on the run before the next is answered.
    for (turns, tool) in [(1, "Bash"), (2, "Read"), (3, "Read")] {
        api.release();
        turn_on_the_status(&env, &run, turns, tool, Duration::from_secs(60)).await;
    }
    let output = tokio::time::timeout(Duration::from_secs(60), cli)
        .await
        .expect("Claude Code ends after its last turn")
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let result = claude_operator::runner::claude::parse_output(&String::from_utf8_lossy(&output.stdout), &model)
        .expect("Claude Code's result");
    assert_eq!(
        (result.subtype.as_str(), result.num_turns),
        ("success", 3),
        "{result:?}"
    );
    assert_eq!(api.message_requests().len(), 3, "one model request per turn");

    // The metered cost is what Claude Code computed, on the status and the comment.
    let status = eventually("the settled meter on the status", Duration::from_secs(30), || async {
        let status = env.runs().get(&run).await.ok()?.status?;
        let cost = status.cost.clone()?;
        (cost.turns == 3 && cost.output_tokens == 600).then_some(status)
    })
    .await;
    let cost = status.cost.unwrap();
    // Claude Code adds its costs in floating point (0.018000000000000002).
    let computed: f64 = result.total_cost_usd.as_deref().unwrap().parse().unwrap();
    let metered: f64 = cost.usd.parse().unwrap();
    assert!((computed - metered).abs() < 1e-9, "{cost:?} {result:?}");
    let comment = status.feedback_comment_id.expect("the status comment");
    let line = format!("Progress: 3 turns · ${} so far · last tool `Read`", cost.usd);
    eventually("the progress on the comment", Duration::from_secs(30), || async {
        let state = env.fake.state();
        state.comments.get(&comment)?.2.contains(&line).then_some(())
    })
    .await;
}
