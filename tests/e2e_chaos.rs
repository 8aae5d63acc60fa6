//! The chaos run: runs stream in through the real receiver, controller and
//! gateway (three processes, as the chart runs them) while they are
//! SIGKILLed at random moments and started again; separately, while runs
//! stream in, kube-apiserver and then etcd are killed and restarted
//! (`e2e/cluster.sh restart`). The test plays GitHub (signed deliveries,
//! redelivered until answered), the kubelet (kwok pods ended once Running)
//! and the runner (one model request through the gateway with the run's
//! capability, against a fake Anthropic API with known usage).
//!
//! Checked at the end, once every run is terminal and no run Secret or grant
//! is left (a positive signal, polled): no run with two pods; the policy's
//! spend is the sum of its runs' costs (no run charged twice) and no run
//! costs less than what the gateway metered for it; every token a grant held
//! is revoked; the tokens GitHub minted and nobody revoked are within the
//! extra mints `status.tokenMints` records. Figures are printed as JSON.
//!
//! Size: `CHAOS_RUNS` (default 60), `CHAOS_KILLS` (default 24), `CHAOS_SEED`.
//! The control-plane restart runs only with `E2E_CONTROL_PLANE_RESTART=1`
//! (it takes the apiserver away from every other test: `e2e/run-tests.sh`
//! runs it alone, after the rest).

#[path = "support/chaos.rs"]
mod chaos;
#[path = "support/runner/fake_anthropic.rs"]
mod fake_anthropic;
#[path = "support/fake_github.rs"]
mod fake_github;
#[path = "support/run_env.rs"]
mod run_env;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos::*;
use claude_operator::api::{ClaudeRun, ClaudeRunPolicy};
use claude_operator::cost::Usd;
use claude_operator::github::signature::sign;
use claude_operator::receiver::intake::run_name;
use fake_anthropic::{FakeAnthropic, Turn, TurnUsage};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use run_env::*;
use serde_json::{Value, json};
use support::*;

/// Tokens each model answer reports: $0.0045 at claude-sonnet-4-5's prices.
const USAGE: TurnUsage = TurnUsage {
    input_tokens: 1000,
    output_tokens: 100,
};

/// One component process, restartable on the same ports.
struct Component {
    name: &'static str,
    subcommand: &'static str,
    args: Vec<String>,
    metrics: u16,
    child: Option<std::process::Child>,
    log_path: std::path::PathBuf,
    starts: usize,
}

impl Component {
    fn new(name: &'static str, subcommand: &'static str, args: Vec<String>, metrics: u16) -> Self {
        let dir = std::env::temp_dir().join("claude-operator-e2e-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join(format!("chaos-{name}-{metrics}.log"));
        let _ = std::fs::remove_file(&log_path);
        Self {
            name,
            subcommand,
            args,
            metrics,
            child: None,
            log_path,
            starts: 0,
        }
    }

    /// Starts the process (its log appended to) and waits for `/readyz`.
    async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_claude-operator"))
            .arg(self.subcommand)
            .args(&self.args)
            .args(["--metrics-listen", &format!("127.0.0.1:{}", self.metrics)])
            .env(
                "KUBECONFIG",
                std::env::var("CLAUDE_OPERATOR_E2E_KUBECONFIG").expect("run with `make e2e`"),
            )
            .env("RUST_LOG", "info,kube=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start claude-operator");
        self.child = Some(child);
        self.starts += 1;
        let http = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{}/readyz", self.metrics);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = http.get(&ready).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{} exited ({status}); log:\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready in 90 s; log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The operator as three processes on fixed ports.
struct Operator {
    receiver: Component,
    controller: Component,
    gateway: Component,
    webhook_url: String,
    gateway_url: String,
}

impl Operator {
    async fn start(env: &Env, anthropic: &str) -> Operator {
        let (webhook, gateway) = (free_port(), free_port());
        // The flags the run tests give `run`, minus the ones that pick components.
        let common: Vec<String> = env.args.iter().filter(|a| *a != "--no-gateway").cloned().collect();
        let with = |extra: &[String]| common.iter().chain(extra).cloned().collect::<Vec<_>>();
        let mut op = Operator {
            receiver: Component::new(
                "receiver",
                "receiver",
                with(&["--webhook-listen".into(), format!("127.0.0.1:{webhook}")]),
                free_port(),
            ),
            controller: Component::new("controller", "controller", with(&[]), free_port()),
            gateway: Component::new(
                "gateway",
                "gateway",
                with(&[
                    "--gateway-listen".into(),
                    format!("127.0.0.1:{gateway}"),
                    "--anthropic-api-url".into(),
                    anthropic.to_owned(),
                ]),
                free_port(),
            ),
            webhook_url: format!("http://127.0.0.1:{webhook}/webhook"),
            gateway_url: format!("http://127.0.0.1:{gateway}"),
        };
        op.receiver.start().await;
        op.controller.start().await;
        op.gateway.start().await;
        op
    }

    fn component(&mut self, i: usize) -> &mut Component {
        match i % 3 {
            0 => &mut self.receiver,
            1 => &mut self.controller,
            _ => &mut self.gateway,
        }
    }

    fn logs(&self) -> String {
        [&self.receiver, &self.controller, &self.gateway]
            .iter()
            .map(|c| format!("--- {} (last lines)\n{}", c.name, tail(&c.log(), 40)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A signed `issue_comment` from alice asking for task `i`, and its run name.
fn trigger(repo: &str, i: usize) -> (Vec<u8>, String) {
    let body = format!("@claude chaos task {i}");
    let v = comment_payload(repo, "alice", 1001, "User", "MEMBER", &body, 3_000_000 + i as i64);
    let body = serde_json::to_vec(&v).unwrap();
    let name = run_name("issue_comment", &body).unwrap();
    (body, name)
}

/// Delivers until the receiver answers 202 or 200, as GitHub redelivers a
/// delivery that failed; returns the number of attempts.
async fn deliver(http: &reqwest::Client, url: &str, body: &[u8], delivery: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(180);
    for attempt in 1.. {
        let answer = http
            .post(url)
            .header("x-github-event", "issue_comment")
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sign(SECRET, body))
            .timeout(Duration::from_secs(10))
            .body(body.to_vec())
            .send()
            .await;
        if let Ok(r) = answer
            && matches!(r.status().as_u16(), 200 | 202)
        {
            return attempt;
        }
        assert!(Instant::now() < deadline, "delivery {delivery} never accepted");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    unreachable!()
}

/// Plays the runner and the kubelet: for each run whose pod is Running, one
/// model request through the gateway with the run's capability (retried
/// while the gateway is down), then the pod ends.
fn spawn_runner(
    client: kube::Client,
    ns: String,
    gateway_url: String,
    metered: Arc<Mutex<BTreeMap<String, usize>>>,
    tokens: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let http = reqwest::Client::new();
        let running = ListParams::default().fields("status.phase=Running");
        let mut done = BTreeSet::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(list) = pods.list(&running).await else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            for pod in list.items {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let Some(run) = name.strip_suffix("-runner").map(str::to_owned) else {
                    continue;
                };
                if done.contains(&run) {
                    continue;
                }
                let Ok(Some(secret)) = secrets.get_opt(&format!("{run}-secrets")).await else {
                    continue;
                };
                // The token the run's grant stores (grants live in this namespace here).
                let grant = claude_operator::grant::grant_name(&ns, &run);
                let Ok(Some(grant)) = secrets.get_opt(&grant).await else {
                    continue;
                };
                if let Some(token) = grant
                    .data
                    .and_then(|mut d| d.remove(claude_operator::grant::KEY_GITHUB_TOKEN))
                {
                    tokens.lock().unwrap().insert(run.clone(), token.0);
                }
                let capability = secret
                    .data
                    .and_then(|mut d| d.remove(claude_operator::grant::RUN_SECRET_KEY_CAPABILITY))
                    .map(|b| String::from_utf8(b.0).unwrap())
                    .unwrap_or_default();
                // One model request that the gateway answers 200 (a refusal
                // or a dead gateway is retried, a bounded number of times).
                let mut ok = false;
                for _ in 0..120 {
                    let answer = http
                        .post(format!("{gateway_url}/v1/messages"))
                        .header("x-api-key", &capability)
                        .header("anthropic-version", "2023-06-01")
                        .header("content-type", "application/json")
                        .timeout(Duration::from_secs(10))
                        .body(
                            json!({"model": "claude-sonnet-4-5", "max_tokens": 256, "stream": true,
                                   "messages": [{"role": "user", "content": "hello"}]})
                            .to_string(),
                        )
                        .send()
                        .await;
                    if let Ok(r) = answer
                        && r.status().is_success()
                        && r.bytes().await.is_ok()
                    {
                        ok = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                if ok {
                    *metered.lock().unwrap().entry(run.clone()).or_default() += 1;
                }
                let annotations = json!({"metadata": {"annotations": {
                    "e2e.claude-operator.dev/outcome": "Succeeded",
                    "e2e.claude-operator.dev/termination-message":
                        json!({"outcome": "success", "num_turns": 1}).to_string(),
                }}});
                if pods
                    .patch(&name, &PatchParams::default(), &Patch::Merge(annotations))
                    .await
                    .is_ok()
                {
                    done.insert(run);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// What the end state says, and the problems found in it.
struct Verdict {
    figures: Value,
    problems: Vec<String>,
}

/// Waits until every run is terminal and no run Secret or grant is left,
/// then checks the invariants.
async fn settle_and_check(
    env: &Env,
    names: &[String],
    metered: &Mutex<BTreeMap<String, usize>>,
    tokens: &Mutex<BTreeMap<String, Vec<u8>>>,
    op: &Operator,
) -> Verdict {
    let runs_api = env.runs();
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns.name);
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=claude-operator");
    let grants = ListParams::default().labels(&format!("{}=true", claude_operator::grant::LABEL_GRANT));
    let mut last = String::new();
    let settled = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            let state = async {
                let runs = runs_api.list(&ListParams::default()).await.ok()?.items;
                let left =
                    secrets.list(&managed).await.ok()?.items.len() + secrets.list(&grants).await.ok()?.items.len();
                Some((runs, left))
            };
            if let Some((runs, left)) = state.await {
                let open: Vec<String> = runs
                    .iter()
                    .filter(|r| !r.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
                    .map(|r| {
                        format!(
                            "{}: {:?}",
                            r.metadata.name.clone().unwrap(),
                            r.status.as_ref().map(|s| s.phase)
                        )
                    })
                    .collect();
                last = format!(
                    "{} runs of {}, not terminal: {open:?}; {left} secrets left",
                    runs.len(),
                    names.len()
                );
                if runs.len() == names.len() && open.is_empty() && left == 0 {
                    return runs;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    let runs: Vec<ClaudeRun> = settled.unwrap_or_else(|_| panic!("not settled in 300 s: {last}\n{}", op.logs()));
    let metered = metered.lock().unwrap().clone();
    let tokens = tokens.lock().unwrap().clone();
    let mut problems = vec![];

    // Pods: never two for one run.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns.name);
    let mut pods_of: BTreeMap<String, usize> = BTreeMap::new();
    for pod in pods.list(&ListParams::default()).await.unwrap().items {
        for owner in pod.metadata.owner_references.iter().flatten() {
            *pods_of.entry(owner.name.clone()).or_default() += 1;
        }
    }
    for (run, n) in &pods_of {
        if *n > 1 {
            problems.push(format!("{run}: {n} pods"));
        }
    }

    // Charges: the policy's spend is the sum of its runs' costs, and a run
    // the gateway metered is charged at least that.
    let per_request = Usd::parse("0.0045").unwrap();
    let mut sum = Usd::ZERO;
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    for r in &runs {
        let status = r.status.as_ref().unwrap();
        *phases.entry(format!("{:?}", status.phase)).or_default() += 1;
        let cost = status
            .cost
            .as_ref()
            .map(|c| Usd::parse(&c.usd).unwrap())
            .unwrap_or(Usd::ZERO);
        sum = sum.checked_add(cost).unwrap();
        let name = r.metadata.name.clone().unwrap();
        if metered.contains_key(&name) && cost < per_request {
            problems.push(format!("{name}: charged {cost}, the gateway metered {per_request}"));
        }
    }
    let policies: Api<ClaudeRunPolicy> = Api::namespaced(env.client.clone(), &env.ns.name);
    let spent = eventually(
        "the policy's spend equals its runs' costs",
        Duration::from_secs(60),
        || async {
            let spent = policies.get("acme-backend").await.ok()?.status?.budget?.spent_usd;
            (Usd::parse(&spent).ok()? == sum).then_some(spent)
        },
    )
    .await;

    // Tokens: every one a grant held is revoked; the live rest is bounded by
    // the recorded extra mints.
    let recorded: u64 = runs
        .iter()
        .map(|r| r.status.as_ref().and_then(|s| s.token_mints).unwrap_or(0) as u64)
        .sum();
    let provisioned = runs
        .iter()
        .filter(|r| r.status.as_ref().is_some_and(|s| s.token_expires_at.is_some()))
        .count() as u64;
    let (minted, revoked) = (env.fake.minted(&env.repo) as u64, env.fake.revoked(&env.repo) as u64);
    let live = env.fake.live_tokens(&env.repo).len() as u64;
    let unrevoked: Vec<&String> = {
        let state = env.fake.state();
        tokens
            .iter()
            .filter(|(_, t)| {
                state
                    .tokens
                    .get(String::from_utf8_lossy(t).as_ref())
                    .is_none_or(|f| !f.revoked)
            })
            .map(|(run, _)| run)
            .collect()
    };
    if !unrevoked.is_empty() {
        problems.push(format!("stored tokens not revoked, of runs {unrevoked:?}"));
    }
    if tokens.len() < runs.len() {
        problems.push(format!(
            "only {} of {} runs' tokens were seen",
            tokens.len(),
            runs.len()
        ));
    }
    // Every run with a pod stored one token: the rest of the recorded mints
    // bound what GitHub issued that no one holds.
    let provisioned = provisioned.max(pods_of.len() as u64);
    if minted > recorded {
        problems.push(format!(
            "GitHub minted {minted} tokens, the runs record {recorded} mints"
        ));
    }
    if live > recorded.saturating_sub(provisioned) {
        problems.push(format!(
            "{live} tokens live, only {} mints beyond the {provisioned} stored tokens recorded",
            recorded.saturating_sub(provisioned)
        ));
    }
    let figures = json!({
        "runs": runs.len(),
        "phases": phases,
        "runs_with_a_pod": pods_of.len(),
        "max_pods_per_run": pods_of.values().max(),
        "metered_runs": metered.len(),
        "runs_charged_over_one_request": runs.iter().filter(|r| r.status.as_ref().and_then(|s| s.cost.as_ref()).is_some_and(|c| Usd::parse(&c.usd).is_ok_and(|u| u > per_request))).count(),
        "policy_spent_usd": spent,
        "sum_of_run_costs_usd": sum.to_string(),
        "tokens": {"minted": minted, "revoked": revoked, "live_at_end": live, "stored_seen": tokens.len(),
                   "mints_recorded": recorded, "runs_provisioned": provisioned},
    });
    Verdict { figures, problems }
}

async fn chaos_env(prefix: &str) -> (Env, FakeAnthropic) {
    let env = Env::start_with(
        prefix,
        |p| {
            p.spec.budget.max_concurrent_runs = 500;
            p.spec.budget.max_runs_per_user_per_hour = 1000;
            p.spec.budget.limit_usd = "100000".into();
            p.spec.budget.max_cost_per_run_usd = "1.00".into();
        },
        &[],
    )
    .await;
    let anthropic = FakeAnthropic::start(vec![Turn::Text("Done.".into())], USAGE).await;
    (env, anthropic)
}

#[tokio::test]
async fn sigkills_of_every_component_while_runs_stream_in_double_nothing_and_leak_nothing() {
    let runs_wanted: usize = env_number("CHAOS_RUNS", 60);
    let kills_wanted: usize = env_number("CHAOS_KILLS", 24);
    let seed = Rng::seed_from_env("CHAOS_SEED");
    eprintln!("chaos: {runs_wanted} runs, {kills_wanted} kills, CHAOS_SEED={seed}");
    let (mut env, anthropic) = chaos_env("chaos").await;
    env.op.kill();
    let op = Arc::new(tokio::sync::Mutex::new(
        Operator::start(&env, &anthropic.base_url).await,
    ));
    let (webhook_url, gateway_url) = {
        let op = op.lock().await;
        (op.webhook_url.clone(), op.gateway_url.clone())
    };
    let metered = Arc::new(Mutex::new(BTreeMap::new()));
    let tokens = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let runner = spawn_runner(
        env.client.clone(),
        env.ns.name.clone(),
        gateway_url,
        metered.clone(),
        tokens.clone(),
        stop.clone(),
    );

    // The stream: runs arrive over the whole chaos, each redelivered until answered.
    let started = Instant::now();
    let delivered = Arc::new(AtomicUsize::new(0));
    let repo = env.repo.clone();
    let sender = {
        let delivered = delivered.clone();
        let mut rng = Rng::new(seed);
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut names = vec![];
            let mut attempts = 0;
            for i in 0..runs_wanted {
                let (body, name) = trigger(&repo, i);
                attempts += deliver(&http, &webhook_url, &body, &format!("chaos-{i}")).await;
                names.push(name);
                delivered.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
            }
            (names, attempts)
        })
    };

    // The killer: a random component at a random moment, started again
    // after a random pause; at least `kills_wanted` kills, and on until the
    // stream has ended.
    let mut rng = Rng::new(seed ^ 0x5555);
    let mut kills: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut n = 0;
    while n < kills_wanted || !sender.is_finished() {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1200))).await;
        let which = rng.below(3) as usize;
        let mut op = op.lock().await;
        let c = op.component(which);
        c.kill();
        *kills.entry(c.name).or_default() += 1;
        n += 1;
        tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
        c.start().await;
    }
    let (names, attempts) = sender.await.unwrap();
    let op = op.lock().await;
    let verdict = settle_and_check(&env, &names, &metered, &tokens, &op).await;
    stop.store(true, Ordering::Relaxed);
    runner.await.unwrap();

    let figures = json!({
        "kills": kills,
        "kills_total": n,
        "seed": seed,
        "deliveries": names.len(),
        "delivery_attempts": attempts,
        "seconds": started.elapsed().as_secs_f64(),
        "model_requests_answered": anthropic.message_requests().len(),
        "end": verdict.figures,
    });
    let text = serde_json::to_string_pretty(&figures).unwrap();
    println!("chaos figures:\n{text}");
    eprintln!("chaos figures:\n{text}");
    assert!(n >= 20, "at least 20 SIGKILLs");
    for c in ["receiver", "controller", "gateway"] {
        assert!(
            kills.get(c).copied().unwrap_or(0) > 0,
            "{c} was never killed: {kills:?}"
        );
    }
    assert!(verdict.problems.is_empty(), "{:#?}\n{}", verdict.problems, op.logs());
    assert!(
        !metered.lock().unwrap().is_empty(),
        "no model request got through the gateway"
    );
}

#[tokio::test]
async fn restarting_the_apiserver_and_etcd_while_runs_stream_in_loses_and_doubles_nothing() {
    if std::env::var("E2E_CONTROL_PLANE_RESTART").as_deref() != Ok("1") {
        let why = "E2E_CONTROL_PLANE_RESTART=1 is not set (the restart takes the apiserver from every \
                   other test; e2e/run-tests.sh runs this test alone with it)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("SKIPPED restarting_the_apiserver_and_etcd...: {why}");
        return;
    }
    let runs_wanted: usize = env_number("CHAOS_RESTART_RUNS", 40);
    let (mut env, anthropic) = chaos_env("cprestart").await;
    env.op.kill();
    let op = Operator::start(&env, &anthropic.base_url).await;
    let metered = Arc::new(Mutex::new(BTreeMap::new()));
    let tokens = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let runner = spawn_runner(
        env.client.clone(),
        env.ns.name.clone(),
        op.gateway_url.clone(),
        metered.clone(),
        tokens.clone(),
        stop.clone(),
    );
    let started = Instant::now();
    let repo = env.repo.clone();
    let webhook_url = op.webhook_url.clone();
    let sender = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut names = vec![];
        let mut attempts = 0;
        for i in 0..runs_wanted {
            let (body, name) = trigger(&repo, i);
            attempts += deliver(&http, &webhook_url, &body, &format!("cp-{i}")).await;
            names.push(name);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        (names, attempts)
    });
    // A third of the way in, the apiserver; two thirds, etcd.
    let script = format!("{}/e2e/cluster.sh", env!("CARGO_MANIFEST_DIR"));
    let mut restarts = BTreeMap::new();
    for (component, after) in [("apiserver", runs_wanted / 3), ("etcd", 2 * runs_wanted / 3)] {
        let runs = env.runs();
        eventually(
            &format!("{after} runs before the {component} restart"),
            Duration::from_secs(120),
            || async { (runs.list(&ListParams::default()).await.ok()?.items.len() >= after).then_some(()) },
        )
        .await;
        let t0 = Instant::now();
        let out = tokio::process::Command::new("bash")
            .args([script.as_str(), "restart", component])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "cluster.sh restart {component}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        restarts.insert(component, t0.elapsed().as_secs_f64());
    }
    let (names, attempts) = sender.await.unwrap();
    let verdict = settle_and_check(&env, &names, &metered, &tokens, &op).await;
    stop.store(true, Ordering::Relaxed);
    runner.await.unwrap();
    let figures = json!({
        "restart_seconds": restarts,
        "deliveries": names.len(),
        "delivery_attempts": attempts,
        "seconds": started.elapsed().as_secs_f64(),
        "end": verdict.figures,
    });
    let text = serde_json::to_string_pretty(&figures).unwrap();
    println!("control-plane restart figures:\n{text}");
    eprintln!("control-plane restart figures:\n{text}");
    assert!(verdict.problems.is_empty(), "{:#?}\n{}", verdict.problems, op.logs());
}
