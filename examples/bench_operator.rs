//! Load generator and measurements of `e2e/bench/` (see `e2e/bench/README.md`).
//!
//! Drives the real `claude-operator run` process (built with `--release`)
//! against a local control plane (`KUBECONFIG`) and the fake GitHub of the
//! tests, on loopback only, and prints one JSON object per benchmark on
//! stdout (progress goes to stderr):
//!
//! - `latency`: trigger-to-pod latency at a steady rate and in a burst, with a
//!   baseline of the raw apiserver creates a run needs (Secret, NetworkPolicy,
//!   Pod, built by `claude_operator::sandbox`), measured in the same run.
//! - `intake`: the receiver alone (`--no-controller`) at a fixed arrival rate.
//! - `memory`: the operator's resident memory with 0 and with N terminal
//!   `ClaudeRun`s in its caches.
//!
//! Every loop is bounded, every wait has a deadline, and every process this
//! program starts is killed by its pid when it is done.

#[path = "../tests/support/fake_github.rs"]
mod fake_github;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use claude_operator::api::conditions::{self, reasons};
use claude_operator::api::{
    Admission, ClaudeRun, ClaudeRunPolicy, ClaudeRunStatus, Cost, CostSource, Decision, OutsiderPolicy, Phase,
};
use claude_operator::github::signature::sign;
use claude_operator::receiver::intake::{self, run_name};
use claude_operator::sandbox;
use fake_github::{APP_ID, FakeGitHub};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

const WEBHOOK_SECRET: &str = "bench-webhook-secret";
const INSTALLATION: i64 = 77;
const MANAGER: &str = "claude-operator-bench";
const FIXTURE: &str = include_str!("../tests/fixtures/webhooks/issue_comment.created.json");
const SAMPLE_POLICY: &str = include_str!("../config/samples/policy.yaml");
const SAMPLE_RUN: &str = include_str!("../config/samples/run.yaml");

#[derive(Parser)]
#[command(about = "Benchmarks of claude-operator against a local control plane (see e2e/bench/README.md)")]
struct Cli {
    /// The `claude-operator` binary; default: `../claude-operator` next to this example's directory.
    #[arg(long, env = "BENCH_OPERATOR_BIN")]
    operator_bin: Option<PathBuf>,
    /// Where operator logs and scratch files go.
    #[arg(long, env = "BENCH_WORK_DIR", default_value = "/tmp/claude-operator-bench")]
    work_dir: PathBuf,
    /// Delete the benchmark's namespaces at the end (leave off when the control plane goes down anyway).
    #[arg(long)]
    cleanup: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trigger-to-pod latency and throughput against the raw creates of the same objects.
    Latency {
        /// Rounds; each interleaves raw creates in sequence, a trickle, raw
        /// creates at `--concurrency` and a burst at `--concurrency`.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Runs of each kind per round (samples per figure: rounds x this).
        #[arg(long, default_value_t = 100)]
        per_round: usize,
        /// Arrival rate of the trickle, per second.
        #[arg(long, default_value_t = 4.0)]
        trickle_rate: f64,
        /// Deliveries of the steady phase (after the rounds).
        #[arg(long, default_value_t = 200)]
        steady_deliveries: usize,
        /// Arrival rate of the steady phase, per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Requests (and raw runs) in flight at most in the burst.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Distinct actors the deliveries are spread over.
        #[arg(long, default_value_t = 20)]
        actors: usize,
        /// How long to wait for the runs of a phase to reach Running, seconds.
        #[arg(long, default_value_t = 180)]
        settle_timeout: u64,
        /// Simulated (kwok) nodes the benchmark adds for its pods.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Pods each of those nodes takes.
        #[arg(long, default_value_t = 500)]
        pods_per_node: usize,
        /// Policies (one repository each) the deliveries are spread over.
        #[arg(long, default_value_t = 1)]
        policies: usize,
        /// The operator's `--reconcile-concurrency`, and the concurrency of a
        /// second raw rate measured in each round.
        #[arg(long, default_value_t = 16)]
        reconcile_concurrency: usize,
    },
    /// Receiver throughput alone (`--no-controller`) at a fixed arrival rate.
    Intake {
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 100)]
        actors: usize,
        /// Requests in flight at most (the generator's own bound).
        #[arg(long, default_value_t = 1000)]
        max_in_flight: usize,
        /// The receiver's `--webhook-max-concurrent` (default: the operator's own).
        #[arg(long)]
        receiver_max_concurrent: Option<u64>,
    },
    /// Resident memory with 0 and with N terminal runs in the operator's caches.
    Memory {
        #[arg(long, default_value_t = 5000)]
        runs: usize,
        /// Bytes of each run's prompt.
        #[arg(long, default_value_t = 1024)]
        prompt_bytes: usize,
        /// Concurrent creates while setting up.
        #[arg(long, default_value_t = 32)]
        create_concurrency: usize,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.work_dir).expect("work dir");
    let bin = cli.operator_bin.clone().unwrap_or_else(default_operator_bin);
    assert!(bin.exists(), "{}: build it with `cargo build --release`", bin.display());
    let client = Client::try_default()
        .await
        .expect("a kubeconfig for the local control plane (KUBECONFIG)");
    install_crds(&client).await;
    let bench = Bench {
        client,
        bin,
        work_dir: cli.work_dir.clone(),
        cleanup: cli.cleanup,
        namespaces: Mutex::new(vec![]),
        nodes: Mutex::new(vec![]),
    };
    let out = match cli.command {
        Command::Latency {
            rounds,
            per_round,
            trickle_rate,
            steady_deliveries,
            rate,
            concurrency,
            actors,
            settle_timeout,
            nodes,
            pods_per_node,
            policies,
            reconcile_concurrency,
        } => {
            latency(
                &bench,
                rounds,
                per_round,
                trickle_rate,
                steady_deliveries,
                rate,
                concurrency,
                actors,
                Duration::from_secs(settle_timeout),
                nodes,
                pods_per_node,
                policies,
                reconcile_concurrency,
            )
            .await
        }
        Command::Intake {
            rate,
            seconds,
            actors,
            max_in_flight,
            receiver_max_concurrent,
        } => intake_throughput(&bench, rate, seconds, actors, max_in_flight, receiver_max_concurrent).await,
        Command::Memory {
            runs,
            prompt_bytes,
            create_concurrency,
        } => memory(&bench, runs, prompt_bytes, create_concurrency).await,
    };
    println!("{}", serde_json::to_string(&out).unwrap());
    bench.finish().await;
}

fn default_operator_bin() -> PathBuf {
    // target/release/examples/bench_operator -> target/release/claude-operator
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("claude-operator"))
        .expect("target directory")
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

// ---------------------------------------------------------------------------
// Shared set-up.

struct Bench {
    client: Client,
    bin: PathBuf,
    work_dir: PathBuf,
    cleanup: bool,
    namespaces: Mutex<Vec<String>>,
    /// Bench nodes made by this run (deleted with `--cleanup`).
    nodes: Mutex<Vec<String>>,
}

impl Bench {
    /// A namespace labelled for Pod Security "restricted", as the operator's sandbox needs.
    async fn namespace(&self, prefix: &str) -> String {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            Timestamp::now().as_second() % 100_000
        );
        self.create_namespace(&name).await;
        name
    }

    async fn create_namespace(&self, name: &str) {
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                    "e2e.claude-operator.dev/bench": "true",
                },
            },
        }))
        .unwrap();
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        self.namespaces.lock().unwrap().push(name.to_owned());
    }

    /// The Anthropic key Secret and a policy for `repository` with limits large
    /// enough that nothing but the operator's own work stands between a
    /// trigger and its pod: no quota, 1000 concurrent runs, 1000 runs per
    /// actor and hour, a budget far above what the benchmark reserves.
    ///
    /// The key lives in the run namespace's gateway namespace
    /// ([`gateway_namespace`]), where the controller writes the run grants;
    /// the runner pods go to the benchmark's own simulated nodes
    /// ([`ensure_nodes`]) by node selector and toleration.
    async fn policy(&self, ns: &str, repository: &str) -> ClaudeRunPolicy {
        self.policy_named(ns, repository, None).await
    }

    /// [`Bench::policy`] under another name (more policies in one namespace).
    async fn policy_named(&self, ns: &str, repository: &str, name: Option<&str>) -> ClaudeRunPolicy {
        let gw = gateway_namespace(ns);
        let first = !self.namespaces.lock().unwrap().contains(&gw);
        if first {
            self.create_namespace(&gw).await;
        }
        let key: Secret = serde_json::from_value(json!({
            "metadata": {"name": "anthropic"},
            "stringData": {"api-key": "sk-ant-bench-not-a-real-key"},
        }))
        .unwrap();
        if first {
            Api::<Secret>::namespaced(self.client.clone(), &gw)
                .create(&PostParams::default(), &key)
                .await
                .expect("create the key Secret");
        }
        let mut policy: ClaudeRunPolicy = serde_yaml::from_str(SAMPLE_POLICY).unwrap();
        policy.metadata.namespace = Some(ns.to_owned());
        if let Some(name) = name {
            policy.metadata.name = Some(name.to_owned());
        }
        policy.spec.repositories = vec![repository.to_owned()];
        policy.spec.authorization.teams = vec!["acme/platform".into()];
        policy.spec.authorization.outsiders = OutsiderPolicy::Deny;
        // A configured installation saves the lookup of the repository's
        // installation per run (an App-JWT call the fake verifies with the
        // openssl CLI, a cost real GitHub does not have).
        policy.spec.github.installation_id = Some(INSTALLATION);
        policy.spec.budget.max_cost_per_run_usd = "1.00".into();
        policy.spec.budget.limit_usd = "1000000.00".into();
        policy.spec.budget.max_concurrent_runs = 1000;
        policy.spec.budget.max_runs_per_user_per_hour = 1000;
        policy.spec.quota = None;
        policy.spec.runner.node_selector = BTreeMap::from([(BENCH_NODE_LABEL.to_owned(), "true".to_owned())]);
        policy.spec.runner.tolerations = vec![
            serde_json::from_value(json!({"key": BENCH_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}))
                .unwrap(),
        ];
        Api::<ClaudeRunPolicy>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &policy)
            .await
            .expect("create the policy")
    }

    /// The fake GitHub with `actors` members (write access, org `acme`, team `acme/platform`).
    ///
    /// The fake runs on a runtime of its own: it verifies each App JWT by
    /// running the openssl CLI synchronously inside its handler, which would
    /// otherwise stall the load generator's two worker threads, and with them
    /// the watches whose receive times are the measurement.
    fn fake_github(&self, repository: &str, actors: usize) -> FakeGitHub {
        self.fake_github_for(&[repository.to_owned()], actors)
    }

    /// [`Bench::fake_github`] with the actors on every one of `repositories`.
    fn fake_github_for(&self, repositories: &[String], actors: usize) -> FakeGitHub {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(8)
            .thread_name("fake-github")
            .enable_all()
            .build()
            .expect("fake GitHub runtime");
        let fake = std::thread::scope(|s| s.spawn(|| rt.block_on(FakeGitHub::start())).join().unwrap());
        // Lives as long as the process (a runtime cannot be dropped inside another).
        Box::leak(Box::new(rt));
        for repository in repositories {
            fake.install(repository, INSTALLATION);
        }
        for i in 0..actors {
            let (login, id) = actor(i);
            fake.add_user(&login, id, "User");
            for repository in repositories {
                fake.set_role(repository, &login, "write");
            }
            fake.add_org_member("acme", &login);
            fake.set_team_membership("acme", "platform", &login, "active");
        }
        fake
    }

    fn operator(&self, name: &str, ns: &str, fake: Option<&FakeGitHub>, extra: &[&str]) -> OperatorSpec {
        let secrets = self.work_dir.join("webhook-secrets");
        std::fs::write(&secrets, WEBHOOK_SECRET).unwrap();
        let mut args: Vec<String> = vec![
            "--webhook-secret-file".into(),
            secrets.display().to_string(),
            "--watch-namespace".into(),
            ns.into(),
            "--gateway-namespace".into(),
            gateway_namespace(ns),
        ];
        if let Some(fake) = fake {
            let key = self.work_dir.join("app-key.pem");
            std::fs::write(&key, fake.private_key_pem()).unwrap();
            args.extend([
                "--github-app-id".into(),
                APP_ID.to_string(),
                "--github-app-private-key-file".into(),
                key.display().to_string(),
                "--github-api-url".into(),
                fake.url.clone(),
                "--github-app-bot-login".into(),
                format!("{}[bot]", fake_github::APP_SLUG),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        OperatorSpec {
            bin: self.bin.clone(),
            args,
            log: self.work_dir.join(format!("operator-{name}.log")),
        }
    }

    async fn finish(&self) {
        let names = self.namespaces.lock().unwrap().clone();
        if !self.cleanup {
            progress(format!("leaving namespaces {names:?} (no --cleanup)"));
            return;
        }
        for ns in names {
            // The runs carry the operator's finalizer and the operator is
            // gone: without this the namespace stays Terminating for good.
            let runs: Api<ClaudeRun> = Api::namespaced(self.client.clone(), &ns);
            let names: Vec<String> = runs
                .list(&ListParams::default())
                .await
                .map(|l| l.items.iter().map(|r| r.name_any()).collect())
                .unwrap_or_default();
            futures::stream::iter(names)
                .map(|name| {
                    let runs = runs.clone();
                    async move {
                        let patch = json!({"metadata": {"finalizers": null}});
                        let _ = runs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await;
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<()>>()
                .await;
            // Policies carry the operator's keep-spend finalizer the same way.
            let policies: Api<ClaudeRunPolicy> = Api::namespaced(self.client.clone(), &ns);
            for policy in policies
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
            {
                let patch = json!({"metadata": {"finalizers": null}});
                let _ = policies
                    .patch(&policy.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
            let _ = Api::<Namespace>::all(self.client.clone())
                .delete(&ns, &DeleteParams::background())
                .await;
        }
        // Only the benchmark's pods can be on them (tainted, see `nodes`).
        let nodes = self.nodes.lock().unwrap().clone();
        for node in nodes {
            let _ = Api::<Node>::all(self.client.clone())
                .delete(&node, &DeleteParams::background())
                .await;
        }
    }
}

fn actor(i: usize) -> (String, i64) {
    (format!("bench-user-{i}"), 50_000 + i as i64)
}

async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in claude_operator::api::crds() {
        let name = crd.name_any();
        api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&crd))
            .await
            .expect("apply CRD");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let established = api.get(&name).await.ok().and_then(|c| c.status).is_some_and(|s| {
                s.conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            assert!(Instant::now() < deadline, "CRD {name} not established");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A signed-ready `issue_comment` `created` payload from GitHub's example,
/// on `repository`, by `login`, on issue `number`.
fn comment_payload(repository: &str, login: &str, id: i64, number: i64, body: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(FIXTURE).unwrap();
    let (owner, name) = repository.split_once('/').unwrap();
    v["repository"]["full_name"] = json!(repository);
    v["repository"]["name"] = json!(name);
    v["repository"]["owner"]["login"] = json!(owner);
    v["issue"]["number"] = json!(number);
    v["comment"]["id"] = json!(9_000_000 + number);
    v["comment"]["body"] = json!(body);
    v["comment"]["author_association"] = json!("MEMBER");
    v["comment"]["user"]["login"] = json!(login);
    v["comment"]["user"]["id"] = json!(id);
    v["sender"] = json!({"login": login, "id": id, "type": "User"});
    serde_json::to_vec(&v).unwrap()
}

/// One delivery to send.
#[derive(Clone)]
struct Delivery {
    id: String,
    body: Arc<Vec<u8>>,
    signature: String,
    /// The run it creates (named after the signed body).
    run: String,
}

impl Delivery {
    fn new(id: String, body: Vec<u8>) -> Self {
        let signature = sign(WEBHOOK_SECRET, &body);
        let run = run_name("issue_comment", &body).unwrap_or_default();
        Self {
            id,
            body: Arc::new(body),
            signature,
            run,
        }
    }
}

/// What the receiver answered.
#[derive(Clone, Debug)]
struct Answer {
    /// When the POST was started.
    sent: Instant,
    /// When the answer arrived.
    answered: Instant,
    /// HTTP status, or 0 for a transport error.
    status: u16,
    body: String,
}

async fn post(http: &reqwest::Client, url: &str, d: &Delivery) -> Answer {
    let sent = Instant::now();
    let result = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "issue_comment")
        .header("x-github-delivery", &d.id)
        .header("x-hub-signature-256", &d.signature)
        .body(d.body.as_ref().clone())
        .send()
        .await;
    let (status, body) = match result {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    };
    Answer {
        sent,
        answered: Instant::now(),
        status,
        body: body.trim().to_owned(),
    }
}

// ---------------------------------------------------------------------------
// The operator process.

struct OperatorSpec {
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

/// A running `claude-operator run`, killed (by its pid) when dropped.
struct Operator {
    child: std::process::Child,
    webhook_url: String,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Operator {
    async fn start(spec: &OperatorSpec) -> Operator {
        let (webhook, metrics, gateway) = (free_port(), free_port(), free_port());
        let log = std::fs::File::create(&spec.log).unwrap();
        let child = std::process::Command::new(&spec.bin)
            .arg("run")
            .args(["--webhook-listen", &format!("127.0.0.1:{webhook}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .args(["--gateway-listen", &format!("127.0.0.1:{gateway}")])
            .args(&spec.args)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start claude-operator");
        let op = Operator {
            child,
            webhook_url: format!("http://127.0.0.1:{webhook}/webhook"),
            log: spec.log.clone(),
        };
        let http = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{metrics}/readyz");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(&ready).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "operator not ready; see {}",
                op.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        op
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) in clock ticks, from /proc.
    fn cpu_ticks(&self) -> u64 {
        process_cpu_ticks(self.pid())
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Waits until the process used at most `max_ticks` of CPU in each of two
    /// consecutive `window`s, or `timeout`. Returns the seconds waited.
    async fn wait_idle(&self, window: Duration, max_ticks: u64, timeout: Duration) -> f64 {
        let start = Instant::now();
        let mut quiet = 0;
        let mut last = self.cpu_ticks();
        while start.elapsed() < timeout {
            tokio::time::sleep(window).await;
            let now = self.cpu_ticks();
            if now.saturating_sub(last) <= max_ticks {
                quiet += 1;
                if quiet >= 2 {
                    break;
                }
            } else {
                quiet = 0;
            }
            last = now;
        }
        start.elapsed().as_secs_f64()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------
// Figures.

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Nearest-rank percentile of `values` (any order), in the values' unit.
fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

fn summary(values: &[f64]) -> Value {
    let mean = if values.is_empty() {
        None
    } else {
        Some((values.iter().sum::<f64>() / values.len() as f64 * 100.0).round() / 100.0)
    };
    json!({
        "n": values.len(),
        "p50_ms": percentile(values, 50.0),
        "p99_ms": percentile(values, 99.0),
        "max_ms": percentile(values, 100.0),
        "mean_ms": mean,
    })
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some((a / b * 100.0).round() / 100.0),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Simulated nodes for the runner pods.

/// Label of the benchmark's own kwok nodes (the bench policies select it).
const BENCH_NODE_LABEL: &str = "e2e.claude-operator.dev/bench-node";
/// Taint of the benchmark's nodes (the bench policies tolerate it), so that
/// no other pod of a shared control plane lands there and deleting them
/// evicts nothing but the benchmark's own pods.
const BENCH_NODE_TAINT: &str = "e2e.claude-operator.dev/bench";

/// The namespace of the grants and the key of the runs in `ns`.
fn gateway_namespace(ns: &str) -> String {
    format!("{ns}-gw")
}

impl Bench {
    /// `count` kwok nodes of `pods_each` pods each, with the CPU and memory
    /// for as many runner pods at their default requests (500m, 1Gi), so the
    /// scheduler places every pod of the benchmark and kwok runs it. Applied
    /// (a second run reuses them), then waited for until Ready.
    async fn nodes(&self, count: usize, pods_each: usize) -> Vec<String> {
        let api: Api<Node> = Api::all(self.client.clone());
        let names: Vec<String> = (0..count).map(|i| format!("claude-operator-bench-{i}")).collect();
        let capacity = json!({
            "cpu": pods_each.to_string(),
            "memory": format!("{}Gi", 2 * pods_each),
            "pods": pods_each.to_string(),
        });
        for name in &names {
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                        BENCH_NODE_LABEL: "true",
                    },
                },
                "spec": {"taints": [{"key": BENCH_NODE_TAINT, "value": "true", "effect": "NoSchedule"}]},
            }))
            .unwrap();
            api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&node))
                .await
                .expect("apply a bench node");
            api.patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"capacity": capacity, "allocatable": capacity}})),
            )
            .await
            .expect("bench node capacity");
        }
        self.nodes.lock().unwrap().extend(names.iter().cloned());
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let mut ready = 0;
            for name in &names {
                let Ok(node) = api.get(name).await else { continue };
                let status = node.status.unwrap_or_default();
                let is_ready = status
                    .conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                let pods = status.allocatable.unwrap_or_default().get("pods").map(|q| q.0.clone());
                if pods.as_deref() != Some(pods_each.to_string().as_str()) {
                    // kwok's first status (its defaults) can land after ours: again.
                    let _ = api
                        .patch_status(
                            name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"status": {"capacity": capacity, "allocatable": capacity}})),
                        )
                        .await;
                } else if is_ready {
                    ready += 1;
                }
            }
            if ready == names.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "bench nodes not Ready with {pods_each} pods each (is kwok running?)"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        names
    }
}

// ---------------------------------------------------------------------------
// Watching: the local receive time of the first event of each object, and
// of the first event in which a marker holds (pod Running, run Running...).

type Marker<K> = (&'static str, fn(&K) -> bool);

#[derive(Default)]
struct Seen {
    /// name -> (first seen, uid at first sight)
    first: HashMap<String, (Instant, String)>,
    /// marker -> name -> first seen with the marker holding
    marked: HashMap<&'static str, HashMap<String, Instant>>,
    /// names seen with a second uid (deleted and made again)
    recreated: HashMap<String, usize>,
    synced: bool,
}

impl Seen {
    fn marked(&self, marker: &str, name: &str) -> Option<Instant> {
        self.marked.get(marker).and_then(|m| m.get(name)).copied()
    }
}

type SeenMap = Arc<Mutex<Seen>>;

fn watch<K>(api: Api<K>, markers: Vec<Marker<K>>) -> (SeenMap, tokio::task::JoinHandle<()>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    let seen: SeenMap = Arc::default();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default());
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            let at = Instant::now();
            let obj = match event {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => o,
                Ok(watcher::Event::InitDone) => {
                    s.lock().unwrap().synced = true;
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    progress(format!("watch error (retried): {e}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let name = obj.meta().name.clone().unwrap_or_default();
            let uid = obj.meta().uid.clone().unwrap_or_default();
            let mut s = s.lock().unwrap();
            match s.first.get(&name) {
                None => {
                    s.first.insert(name.clone(), (at, uid));
                }
                Some((_, first_uid)) if *first_uid != uid => {
                    *s.recreated.entry(name.clone()).or_default() += 1;
                }
                Some(_) => {}
            }
            for (label, holds) in &markers {
                if holds(&obj) {
                    s.marked.entry(label).or_default().entry(name.clone()).or_insert(at);
                }
            }
        }
    });
    (seen, task)
}

async fn wait_synced(seen: &SeenMap) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.lock().unwrap().synced {
        assert!(Instant::now() < deadline, "watch never synced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const RUNNING: &str = "running";
const TERMINAL: &str = "terminal";

fn pod_markers() -> Vec<Marker<Pod>> {
    vec![(RUNNING, |p: &Pod| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })]
}

fn run_markers() -> Vec<Marker<ClaudeRun>> {
    fn phase(r: &ClaudeRun) -> Phase {
        r.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }
    vec![
        (RUNNING, |r: &ClaudeRun| phase(r) == Phase::Running),
        (TERMINAL, |r: &ClaudeRun| phase(r).is_terminal()),
    ]
}

/// Waits (bounded) until `done` holds for every name; returns how many it holds for.
async fn wait_all(names: &[String], seen: &SeenMap, timeout: Duration, done: impl Fn(&Seen, &str) -> bool) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let count = {
            let s = seen.lock().unwrap();
            names.iter().filter(|n| done(&s, n)).count()
        };
        if count == names.len() || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// 1. Trigger-to-pod latency and throughput, against the raw creates.

/// Figures of one pipeline phase, gathered over its rounds.
#[derive(Default)]
struct Phase1 {
    deliveries: Vec<Delivery>,
    answers: Vec<Answer>,
    /// Per round: (first POST -> last pod seen, pods seen), and the same to Running.
    windows: Vec<(f64, usize)>,
    running_windows: Vec<(f64, usize)>,
    burst_starts: Vec<(usize, Instant)>,
}

/// The raw creates of the runs' objects, in a namespace no operator watches.
struct Raw {
    client: Client,
    ns: String,
    gw: String,
    policy: ClaudeRunPolicy,
    repository: String,
    next: std::sync::atomic::AtomicUsize,
}

/// The times of one raw iteration's creates, in milliseconds.
struct RawTimes {
    total: f64,
    per_object: [f64; 5],
}

const RAW_OBJECTS: [&str; 5] = [
    "claude_run_create",
    "secret_create",
    "grant_secret_create",
    "network_policy_create",
    "pod_create",
];

impl Raw {
    async fn new(client: &Client, ns: &str, policy: &ClaudeRunPolicy, repository: &str) -> Raw {
        let sa = sandbox::runner_service_account(ns);
        Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &sa)
            .await
            .expect("service account");
        Raw {
            client: client.clone(),
            ns: ns.to_owned(),
            gw: gateway_namespace(ns),
            policy: policy.clone(),
            repository: repository.to_owned(),
            next: Default::default(),
        }
    }

    /// The creates of one run, in the order the pipeline makes them: the
    /// `ClaudeRun` (the receiver), its Secret, its grant in the gateway's
    /// namespace, its NetworkPolicy, its Pod, built with the operator's own
    /// builders so the objects have exactly the operator's shapes.
    async fn one(&self) -> RawTimes {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pp = PostParams::default();
        let mut run: ClaudeRun = serde_yaml::from_str(SAMPLE_RUN).unwrap();
        run.metadata.name = Some(format!("raw-{}-{i}", std::process::id()));
        run.metadata.namespace = Some(self.ns.clone());
        run.spec.repository = self.repository.clone();
        run.spec.policy_name = self.policy.name_any();
        run.spec.trigger.delivery_id = format!("raw-{i}");
        let gateway = claude_operator::controller::Settings::default().gateway;
        let params = sandbox::RunnerParams {
            gateway_url: "http://127.0.0.1:1".into(),
        };
        let t0 = Instant::now();
        let run = Api::<ClaudeRun>::namespaced(self.client.clone(), &self.ns)
            .create(&pp, &run)
            .await
            .expect("create run");
        let t1 = Instant::now();
        // Built after the run exists (owner references need its uid); building is microseconds.
        let secret = sandbox::run_secret(&run, "cocap_bench_not_a_capability", &run.spec.prompt).unwrap();
        let facts = sandbox::grant_facts(
            &self.policy.spec,
            &run,
            "1.00",
            Timestamp::now() + SignedDuration::from_secs(3600),
        )
        .unwrap();
        let grant = sandbox::grant_secret(
            &run,
            &self.gw,
            &facts,
            &sandbox::GrantCredentials {
                github_token: "ghs_bench_not_a_token",
                anthropic_key: "sk-ant-bench-not-a-key",
                capability: "cocap_bench_not_a_capability",
            },
        )
        .unwrap();
        let netpol = sandbox::run_network_policy(&run, &gateway).unwrap();
        let pod =
            sandbox::runner_pod(&self.policy.spec, &run, &sandbox::secret_name(&run.name_any()), &params).unwrap();
        let t2 = Instant::now();
        Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .create(&pp, &secret)
            .await
            .expect("create secret");
        let t3 = Instant::now();
        Api::<Secret>::namespaced(self.client.clone(), &self.gw)
            .create(&pp, &grant)
            .await
            .expect("create grant");
        let t4 = Instant::now();
        Api::<NetworkPolicy>::namespaced(self.client.clone(), &self.ns)
            .create(&pp, &netpol)
            .await
            .expect("create network policy");
        let t5 = Instant::now();
        Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .create(&pp, &pod)
            .await
            .expect("create pod");
        let t6 = Instant::now();
        RawTimes {
            total: ms((t1 - t0) + (t6 - t2)),
            per_object: [ms(t1 - t0), ms(t3 - t2), ms(t4 - t3), ms(t5 - t4), ms(t6 - t5)],
        }
    }

    /// `n` runs' creates at `concurrency`; returns the wall time and each run's times.
    async fn concurrent(self: &Arc<Self>, n: usize, concurrency: usize) -> (Duration, Vec<RawTimes>) {
        let start = Instant::now();
        let times = futures::stream::iter(0..n)
            .map(|_| {
                let raw = self.clone();
                async move { raw.one().await }
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<_>>()
            .await;
        (start.elapsed(), times)
    }
}

fn raw_summary(times: &[RawTimes]) -> Value {
    let mut v = json!({
        "iterations": times.len(),
        "per_iteration": summary(&times.iter().map(|t| t.total).collect::<Vec<_>>()),
    });
    for (k, name) in RAW_OBJECTS.iter().enumerate() {
        v[*name] = summary(&times.iter().map(|t| t.per_object[k]).collect::<Vec<_>>());
    }
    v
}

/// Objects per second over the rounds' windows: (seconds, objects) each.
fn per_s(windows: &[(f64, usize)]) -> Option<f64> {
    let secs: f64 = windows.iter().map(|w| w.0).sum();
    let n: usize = windows.iter().map(|w| w.1).sum();
    (secs > 0.0).then(|| (n as f64 / secs * 10.0).round() / 10.0)
}

/// What a window of the benchmark cost: the apiserver's requests by verb
/// and resource (its own `apiserver_request_total`, so every client's
/// requests count, the controllers' and kwok's included) and the CPU time of
/// each process of the control plane, the operator and this program (which
/// plays GitHub). Read before and after a window; the difference per run
/// says where a run's cost goes.
struct CostMeter {
    client: Client,
    /// (component, pid): the control plane's from its state directory's
    /// pid files (`CLAUDE_OPERATOR_E2E_STATE`), when they are there.
    pids: Vec<(String, u32)>,
}

#[derive(Default)]
struct CostReading {
    requests: BTreeMap<String, f64>,
    cpu_ticks: BTreeMap<String, u64>,
}

/// CPU time (user + system) of a process in clock ticks, from /proc.
fn process_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// `apiserver_request_total` summed over codes, keyed `VERB resource[/subresource]`.
fn apiserver_requests(metrics: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split("\",")
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
        if resource.is_empty() {
            continue;
        }
        let key = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        *out.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

impl CostMeter {
    fn new(client: &Client, operator_pid: u32) -> CostMeter {
        let mut pids = vec![
            ("operator".to_owned(), operator_pid),
            ("bench_and_fake_github".to_owned(), std::process::id()),
        ];
        if let Ok(state) = std::env::var("CLAUDE_OPERATOR_E2E_STATE") {
            for c in [
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kwok",
            ] {
                let pid = std::fs::read_to_string(Path::new(&state).join("pids").join(c))
                    .ok()
                    .and_then(|p| p.trim().parse::<u32>().ok());
                if let Some(pid) = pid.filter(|p| Path::new(&format!("/proc/{p}")).exists()) {
                    pids.push((c.to_owned(), pid));
                }
            }
        }
        CostMeter {
            client: client.clone(),
            pids,
        }
    }

    async fn read(&self) -> CostReading {
        let request = http::Request::get("/metrics").body(vec![]).unwrap();
        let metrics = self.client.request_text(request).await.unwrap_or_default();
        CostReading {
            requests: apiserver_requests(&metrics),
            cpu_ticks: self
                .pids
                .iter()
                .map(|(c, p)| (c.clone(), process_cpu_ticks(*p)))
                .collect(),
        }
    }
}

/// The costs between two readings, per run: requests by kind (most first)
/// and in all, CPU milliseconds by process and in all.
fn cost_per_run(before: &CostReading, after: &CostReading, runs: usize) -> Value {
    let n = runs.max(1) as f64;
    let round = |v: f64| (v * 100.0).round() / 100.0;
    let mut requests: Vec<(String, f64)> = after
        .requests
        .iter()
        .map(|(k, v)| (k.clone(), v - before.requests.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect();
    requests.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    let total: f64 = requests.iter().map(|r| r.1).sum();
    let tick_ms = 1000.0 / clock_ticks_per_second();
    let cpu: BTreeMap<String, f64> = after
        .cpu_ticks
        .iter()
        .map(|(c, t)| {
            let d = t.saturating_sub(before.cpu_ticks.get(c).copied().unwrap_or(*t));
            (c.clone(), round(d as f64 * tick_ms / n))
        })
        .collect();
    json!({
        "runs": runs,
        "apiserver_requests_per_run": round(total / n),
        "apiserver_requests_per_run_by_kind": requests
            .iter()
            .map(|(k, v)| (k.clone(), json!(round(v / n))))
            .collect::<serde_json::Map<_, _>>(),
        "cpu_ms_per_run": round(cpu.values().sum::<f64>()),
        "cpu_ms_per_run_by_process": cpu,
    })
}

#[allow(clippy::too_many_arguments)]
async fn latency(
    bench: &Bench,
    rounds: usize,
    per_round: usize,
    trickle_rate: f64,
    steady: usize,
    rate: f64,
    concurrency: usize,
    actors: usize,
    settle_timeout: Duration,
    nodes: usize,
    pods_per_node: usize,
    policies: usize,
    reconcile_concurrency: usize,
) -> Value {
    let client = &bench.client;
    let repository = "acme/bench-latency".to_owned();
    let node_names = bench.nodes(nodes, pods_per_node).await;
    progress(format!("latency: {nodes} bench nodes of {pods_per_node} pods Ready"));

    // The raw creates go to a namespace the operator does not watch.
    let base_ns = bench.namespace("bench-baseline").await;
    let base_policy = bench.policy(&base_ns, &repository).await;
    let raw = Arc::new(Raw::new(client, &base_ns, &base_policy, &repository).await);
    let (raw_pods, raw_pod_watch) = watch(Api::<Pod>::namespaced(client.clone(), &base_ns), pod_markers());

    // The operator, receiver and controllers in one process.
    let ns = bench.namespace("bench-latency").await;
    // One policy per repository: admissions of one policy are serialized
    // (its budget lock), those of different policies are not.
    let repositories: Vec<String> = if policies <= 1 {
        vec![repository.clone()]
    } else {
        (0..policies).map(|k| format!("{repository}-{k}")).collect()
    };
    for (k, r) in repositories.iter().enumerate() {
        let name = (policies > 1).then(|| format!("bench-{k}"));
        bench.policy_named(&ns, r, name.as_deref()).await;
    }
    let fake = bench.fake_github_for(&repositories, actors);
    let spec = bench.operator(
        "latency",
        &ns,
        Some(&fake),
        &["--reconcile-concurrency", &reconcile_concurrency.to_string()],
    );
    let op = Operator::start(&spec).await;
    progress(format!("latency: operator pid {} ready", op.pid()));
    let (pods, pod_watch) = watch(Api::<Pod>::namespaced(client.clone(), &ns), pod_markers());
    let (runs, run_watch) = watch(Api::<ClaudeRun>::namespaced(client.clone(), &ns), run_markers());
    let meter = CostMeter::new(client, op.pid());
    let (mut raw_cost, mut burst_cost) = (vec![], vec![]);
    for s in [&pods, &runs, &raw_pods] {
        wait_synced(s).await;
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(64))
        .build()
        .unwrap();

    let make = |phase: &str, offset: i64, n: usize| -> Vec<Delivery> {
        (0..n)
            .map(|i| {
                let (login, id) = actor(i % actors);
                let body = comment_payload(
                    &repositories[i % repositories.len()],
                    &login,
                    id,
                    offset + i as i64,
                    &format!("@claude please fix the flaky test in module {i} and add a regression test."),
                );
                Delivery::new(format!("bench-{phase}-{}-{offset}-{i}", std::process::id()), body)
            })
            .collect()
    };
    let accepted_runs = |d: &[Delivery], a: &[Answer]| -> Vec<String> {
        d.iter()
            .zip(a)
            .filter(|(_, a)| a.status == 202 && a.body == "run created")
            .map(|(d, _)| d.run.clone())
            .collect()
    };

    let mut sequential: Vec<RawTimes> = vec![];
    let mut concurrent: Vec<RawTimes> = vec![];
    let mut raw_windows: Vec<(f64, usize)> = vec![];
    let mut raw_running_windows: Vec<(f64, usize)> = vec![];
    let mut raw_windows_reconcile: Vec<(f64, usize)> = vec![];
    let (mut trickle, mut burst) = (Phase1::default(), Phase1::default());
    let mut finished = 0;
    let mut to_finish = 0;
    for round in 0..rounds {
        let offset = 1 + (round * 10 * per_round) as i64;
        // (a) The floor of one run's latency: its creates, one run at a time.
        progress(format!(
            "latency: round {}/{rounds}: {per_round} raw runs in sequence",
            round + 1
        ));
        for _ in 0..per_round {
            sequential.push(raw.one().await);
        }

        // (b) Trickle: a rate the whole system keeps up with, so the latency
        // is the pipeline's own and not a queue's.
        progress(format!(
            "latency: round {}: trickle, {per_round} at {trickle_rate}/s",
            round + 1
        ));
        let d = make("trickle", offset, per_round);
        let a = send_at_rate(&http, &op.webhook_url, &d, trickle_rate).await;
        let names = accepted_runs(&d, &a);
        let running = wait_all(&names, &runs, settle_timeout, |s, n| s.marked(RUNNING, n).is_some()).await;
        progress(format!(
            "latency: round {}: trickle {running}/{} runs Running",
            round + 1,
            names.len()
        ));
        trickle.deliveries.extend(d);
        trickle.answers.extend(a);
        op.wait_idle(Duration::from_millis(500), 5, Duration::from_secs(60))
            .await;

        // (c) The apiserver's own rate: the same creates at the burst's concurrency.
        progress(format!(
            "latency: round {}: {per_round} raw runs, {concurrency} at a time",
            round + 1
        ));
        let first_raw = raw.next.load(std::sync::atomic::Ordering::Relaxed);
        let before = meter.read().await;
        let raw_start = Instant::now();
        let (elapsed, times) = raw.concurrent(per_round, concurrency).await;
        raw_windows.push((elapsed.as_secs_f64(), times.len()));
        concurrent.extend(times);
        let raw_names: Vec<String> = (first_raw..first_raw + per_round)
            .map(|i| sandbox::pod_name(&format!("raw-{}-{i}", std::process::id())))
            .collect();
        let raw_running = wait_all(&raw_names, &raw_pods, settle_timeout, |s, n| {
            s.marked(RUNNING, n).is_some()
        })
        .await;
        let last_running = {
            let s = raw_pods.lock().unwrap();
            raw_names.iter().filter_map(|n| s.marked(RUNNING, n)).max()
        };
        if let Some(last) = last_running {
            raw_running_windows.push((last.saturating_duration_since(raw_start).as_secs_f64(), raw_running));
        }
        raw_cost.push(cost_per_run(&before, &meter.read().await, raw_running));
        // And at the operator's own reconcile concurrency: the apiserver's
        // rate for as many runs in progress at once as the controller allows.
        if reconcile_concurrency != concurrency {
            let (elapsed, times) = raw.concurrent(per_round, reconcile_concurrency).await;
            raw_windows_reconcile.push((elapsed.as_secs_f64(), times.len()));
        }

        // (d) The pipeline at the same concurrency: every delivery at once,
        // at most `concurrency` in flight.
        progress(format!(
            "latency: round {}: burst, {per_round} with {concurrency} in flight",
            round + 1
        ));
        let d = make("burst", offset + 5 * per_round as i64, per_round);
        let gate = Arc::new(Semaphore::new(concurrency));
        let before = meter.read().await;
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(d.len());
        for delivery in d.clone() {
            let (http, url, gate) = (http.clone(), op.webhook_url.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.unwrap();
                post(&http, &url, &delivery).await
            }));
        }
        let a = join_all(tasks).await;
        let names = accepted_runs(&d, &a);
        let running = wait_all(&names, &runs, settle_timeout, |s, n| s.marked(RUNNING, n).is_some()).await;
        burst_cost.push(cost_per_run(&before, &meter.read().await, running));
        progress(format!(
            "latency: round {}: burst {running}/{} runs Running",
            round + 1,
            names.len()
        ));
        {
            let (p, r) = (pods.lock().unwrap(), runs.lock().unwrap());
            let last_pod = names
                .iter()
                .filter_map(|n| p.first.get(&sandbox::pod_name(n)).map(|f| f.0))
                .max();
            let pods_seen = names
                .iter()
                .filter(|n| p.first.contains_key(&sandbox::pod_name(n)))
                .count();
            if let Some(last) = last_pod {
                burst
                    .windows
                    .push((last.saturating_duration_since(start).as_secs_f64(), pods_seen));
            }
            let last_running = names.iter().filter_map(|n| r.marked(RUNNING, n)).max();
            if let Some(last) = last_running {
                burst
                    .running_windows
                    .push((last.saturating_duration_since(start).as_secs_f64(), running));
            }
        }
        burst.burst_starts.push((burst.deliveries.len(), start));
        burst.deliveries.extend(d);
        burst.answers.extend(a);

        // (e) The round's runs end (their pods report success), so the next
        // round starts with no run in flight, as the first one did.
        let ended = finish_runs(
            client,
            &ns,
            &accepted_runs(
                &trickle.deliveries[trickle.deliveries.len() - per_round..],
                &trickle.answers[trickle.answers.len() - per_round..],
            )
            .into_iter()
            .chain(names)
            .collect::<Vec<_>>(),
            &runs,
            settle_timeout,
        )
        .await;
        finished += ended.0;
        to_finish += ended.1;
        let idle = op
            .wait_idle(Duration::from_millis(500), 5, Duration::from_secs(90))
            .await;
        progress(format!(
            "latency: round {}: {}/{} runs ended; operator idle after {idle:.1}s",
            round + 1,
            ended.0,
            ended.1
        ));
    }

    // Steady: deliveries at their scheduled times, whatever the answers take.
    let steady_d = make("steady", 1_000_001, steady);
    progress(format!("latency: steady, {steady} at {rate}/s"));
    let steady_a = send_at_rate(&http, &op.webhook_url, &steady_d, rate).await;
    let names = accepted_runs(&steady_d, &steady_a);
    wait_all(&names, &runs, settle_timeout, |s, n| s.marked(RUNNING, n).is_some()).await;

    // What it took: GitHub calls and tokens, run phases.
    let all_runs = Api::<ClaudeRun>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    for r in &all_runs.items {
        let phase = r
            .status
            .as_ref()
            .map(|s| format!("{:?}", s.phase))
            .unwrap_or_else(|| "None".into());
        *phases.entry(phase).or_default() += 1;
    }
    let github_requests = fake.requests().len();
    let minted: u32 = repositories.iter().map(|r| fake.minted(r)).sum();
    let revoked: u32 = repositories.iter().map(|r| fake.revoked(r)).sum();
    pod_watch.abort();
    run_watch.abort();
    raw_pod_watch.abort();
    drop(op);

    let trickle_result = phase_result(&trickle, &pods, &runs);
    let burst_result = phase_result(&burst, &pods, &runs);
    let steady_result = phase_result(
        &Phase1 {
            deliveries: steady_d,
            answers: steady_a,
            ..Phase1::default()
        },
        &pods,
        &runs,
    );
    let sequential_v = raw_summary(&sequential);
    let concurrent_v = raw_summary(&concurrent);
    let b99 = sequential_v["per_iteration"]["p99_ms"].as_f64();
    let c99 = concurrent_v["per_iteration"]["p99_ms"].as_f64();
    let raw_rate = per_s(&raw_windows);
    let raw_running_rate = per_s(&raw_running_windows);
    let pipeline_rate = per_s(&burst.windows);
    let pipeline_running_rate = per_s(&burst.running_windows);
    let total = rounds * per_round * 2 + steady;
    let t99 = trickle_result["trigger_to_pod"]["p99_ms"].as_f64();
    let burst99 = burst_result["trigger_to_pod"]["p99_ms"].as_f64();
    let throughput_ratio = ratio(pipeline_rate, raw_rate);
    let latency_ratio = ratio(t99, b99);
    json!({
        "benchmark": "trigger_to_pod_latency",
        "operator_build": "release",
        "rounds": rounds,
        "per_round": per_round,
        "policies": repositories.len(),
        "trickle_rate_per_s": trickle_rate,
        "steady_rate_per_s": rate,
        "concurrency": concurrency,
        "actors": actors,
        "bench_nodes": {"count": node_names.len(), "pods_each": pods_per_node},
        "raw_sequential": sequential_v,
        "raw_concurrent": concurrent_v,
        "trickle": trickle_result,
        "burst": burst_result,
        "steady": steady_result,
        "runs_ended_after_each_round": finished,
        "runs_to_end": to_finish,
        "throughput": {
            "pipeline_pods_per_s": pipeline_rate,
            "raw_runs_per_s": raw_rate,
            "ratio_pipeline_vs_raw": throughput_ratio,
            "target_ratio_at_least": 0.5,
            "within_target": throughput_ratio.is_some_and(|r| r >= 0.5),
            "pipeline_running_per_s": pipeline_running_rate,
            "raw_pods_running_per_s": raw_running_rate,
            "ratio_running_pipeline_vs_raw": ratio(pipeline_running_rate, raw_running_rate),
            "operator_reconcile_concurrency": reconcile_concurrency,
            "raw_runs_per_s_at_reconcile_concurrency": per_s(&raw_windows_reconcile),
            "ratio_pipeline_vs_raw_at_reconcile_concurrency": ratio(pipeline_rate, per_s(&raw_windows_reconcile)),
        },
        "latency": {
            "trickle_trigger_to_pod_p99_ms": t99,
            "raw_sequential_p99_ms": b99,
            "ratio_p99_vs_raw_p99": latency_ratio,
            "target_ratio_at_most": 2.0,
            "within_target": latency_ratio.is_some_and(|r| r <= 2.0),
            "burst_trigger_to_pod_p99_ms": burst99,
            "raw_concurrent_p99_ms": c99,
            "burst_ratio_p99_vs_raw_concurrent_p99": ratio(burst99, c99),
        },
        "cost_per_run": {
            "raw_concurrent": raw_cost,
            "burst": burst_cost,
            "note": "from the start of the raw creates (burst) until every one of its pods (runs) is Running: apiserver requests of every client (apiserver_request_total, all verbs, watches counted when opened) and CPU time per process, divided by the runs; the trickle's runs are Running meanwhile and the operator keeps following them",
        },
        "runs_listed": all_runs.items.len(),
        "run_phases": phases,
        "tokens_minted": minted,
        "tokens_revoked": revoked,
        "github_requests": github_requests,
        "github_requests_per_run": (github_requests as f64 / total as f64 * 100.0).round() / 100.0,
        "note": "rounds interleave, in this order: raw creates in sequence, trickle, raw creates at the burst's concurrency, the pipeline's burst, the round's runs ended; raw creates are ClaudeRun, Secret, grant Secret, NetworkPolicy and Pod of one run in sequence (the operator's builders), in a namespace no operator watches, pods on the same bench nodes. Pipeline times are local receive times of watch events, from the start of each POST.",
    })
}

/// Marks the pods of `names` as exited with success (kwok then reports them
/// Succeeded) and waits (bounded) until the runs are terminal. Returns (ended, asked).
async fn finish_runs(client: &Client, ns: &str, names: &[String], runs: &SeenMap, timeout: Duration) -> (usize, usize) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(names.to_vec())
        .map(|name| {
            let pods = pods.clone();
            async move {
                let patch = json!({"metadata": {"annotations": {"e2e.claude-operator.dev/outcome": "Succeeded"}}});
                let _ = pods
                    .patch(
                        &sandbox::pod_name(&name),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await;
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let ended = wait_all(names, runs, timeout, |s, n| s.marked(TERMINAL, n).is_some()).await;
    (ended, names.len())
}

/// Sends each delivery at its scheduled time (open loop) and collects the answers.
async fn send_at_rate(http: &reqwest::Client, url: &str, deliveries: &[Delivery], rate: f64) -> Vec<Answer> {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(deliveries.len());
    for (i, d) in deliveries.iter().cloned().enumerate() {
        tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        let (http, url) = (http.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move { post(&http, &url, &d).await }));
    }
    join_all(tasks).await
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<Answer>>) -> Vec<Answer> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("sender task"));
    }
    out
}

/// A phase's figures from what the watches saw.
fn phase_result(phase: &Phase1, pods: &SeenMap, runs: &SeenMap) -> Value {
    let (deliveries, answers) = (&phase.deliveries, &phase.answers);
    let accepted = answers
        .iter()
        .filter(|a| a.status == 202 && a.body == "run created")
        .count();
    let http: Vec<f64> = answers.iter().map(|a| ms(a.answered - a.sent)).collect();
    let (pods_seen, runs_seen) = (pods.lock().unwrap(), runs.lock().unwrap());
    let (mut to_pod, mut to_run, mut to_pod_running, mut to_running) = (vec![], vec![], vec![], vec![]);
    let mut from_burst_start = vec![];
    let (mut lost, mut not_running) = (0, 0);
    for (i, d) in deliveries.iter().enumerate() {
        let sent = answers[i].sent;
        let pod = sandbox::pod_name(&d.run);
        match pods_seen.first.get(&pod) {
            Some((at, _)) if answers[i].status / 100 == 2 => {
                to_pod.push(ms(at.saturating_duration_since(sent)));
                if let Some((_, start)) = phase.burst_starts.iter().rev().find(|(from, _)| *from <= i) {
                    from_burst_start.push(ms(at.saturating_duration_since(*start)));
                }
            }
            _ => lost += 1,
        }
        if let Some((at, _)) = runs_seen.first.get(&d.run) {
            to_run.push(ms(at.saturating_duration_since(sent)));
        }
        if let Some(at) = pods_seen.marked(RUNNING, &pod) {
            to_pod_running.push(ms(at.saturating_duration_since(sent)));
        }
        match runs_seen.marked(RUNNING, &d.run) {
            Some(at) => to_running.push(ms(at.saturating_duration_since(sent))),
            None => not_running += 1,
        }
    }
    let names: Vec<String> = deliveries.iter().map(|d| d.run.clone()).collect();
    let doubled_runs: usize = names.iter().filter_map(|n| runs_seen.recreated.get(n)).sum();
    let doubled_pods: usize = names
        .iter()
        .filter_map(|n| pods_seen.recreated.get(&sandbox::pod_name(n)))
        .sum();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for a in answers {
        *statuses.entry(format!("{} {}", a.status, a.body)).or_default() += 1;
    }
    let mut v = json!({
        "sent": deliveries.len(),
        "accepted": accepted,
        "answers": statuses,
        "lost": lost,
        "never_running": not_running,
        "doubled_runs": doubled_runs,
        "doubled_pods": doubled_pods,
        "http_answer": summary(&http),
        "trigger_to_run": summary(&to_run),
        "trigger_to_pod": summary(&to_pod),
        "trigger_to_pod_running": summary(&to_pod_running),
        "trigger_to_run_running": summary(&to_running),
    });
    if !phase.burst_starts.is_empty() {
        v["burst_start_to_pod"] = summary(&from_burst_start);
    }
    if !phase.windows.is_empty() {
        v["pods_per_s"] = json!(per_s(&phase.windows));
        v["running_per_s"] = json!(per_s(&phase.running_windows));
    }
    v
}

// ---------------------------------------------------------------------------
// 2. Intake throughput.

async fn intake_throughput(
    bench: &Bench,
    rate: f64,
    seconds: f64,
    actors: usize,
    max_in_flight: usize,
    receiver_max_concurrent: Option<u64>,
) -> Value {
    let client = &bench.client;
    let repository = "acme/bench-intake".to_owned();
    let ns = bench.namespace("bench-intake").await;
    bench.policy(&ns, &repository).await;
    let limit = receiver_max_concurrent.map(|n| n.to_string());
    let mut extra = vec!["--no-controller"];
    if let Some(n) = &limit {
        extra.extend(["--webhook-max-concurrent", n.as_str()]);
    }
    let spec = bench.operator("intake", &ns, None, &extra);
    let op = Operator::start(&spec).await;
    progress(format!("intake: receiver pid {} ready", op.pid()));
    let total = (rate * seconds).round() as usize;
    let deliveries: Vec<Delivery> = (0..total)
        .map(|i| {
            let (login, id) = actor(i % actors);
            let body = comment_payload(
                &repository,
                &login,
                id,
                1 + i as i64,
                &format!("@claude please look at issue {i}"),
            );
            Delivery::new(format!("bench-intake-{}-{i}", std::process::id()), body)
        })
        .collect();
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
    let gate = Arc::new(Semaphore::new(max_in_flight));
    let ticks = clock_ticks_per_second();
    let cpu_before = op.cpu_ticks();
    progress(format!("intake: {total} deliveries at {rate}/s"));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    let mut scheduled = Vec::with_capacity(total);
    for (i, d) in deliveries.iter().cloned().enumerate() {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        scheduled.push(at);
        let (http, url, gate) = (http.clone(), op.webhook_url.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            post(&http, &url, &d).await
        }));
    }
    let send_window = start.elapsed();
    let answers = join_all(tasks).await;
    let cpu_secs = op.cpu_ticks().saturating_sub(cpu_before) as f64 / ticks;
    let last = answers.iter().map(|a| a.answered).max().unwrap_or(start);
    let window = last.saturating_duration_since(start);
    let (rss, hwm) = op.memory_kib();
    drop(op);

    // From the scheduled time, so a slow answer cannot hide the wait of those behind it.
    let latencies: Vec<f64> = answers
        .iter()
        .zip(&scheduled)
        .map(|(a, s)| ms(a.answered.saturating_duration_since(*s)))
        .collect();
    let created = answers
        .iter()
        .filter(|a| a.status == 202 && a.body == "run created")
        .count();
    let duplicates = answers.iter().filter(|a| a.body == "run exists").count();
    let lost = answers.iter().filter(|a| a.status / 100 != 2).count();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for a in &answers {
        *statuses.entry(format!("{} {}", a.status, a.body)).or_default() += 1;
    }
    let runs: Vec<ClaudeRun> = Api::<ClaudeRun>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let by_name: HashMap<String, usize> = runs.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r.name_any()).or_default() += 1;
        m
    });
    let missing_runs = deliveries
        .iter()
        .zip(&answers)
        .filter(|(d, a)| a.status == 202 && !by_name.contains_key(&d.run))
        .count();
    json!({
        "benchmark": "intake_throughput",
        "operator_build": "release",
        "mode": "--no-controller",
        "receiver_max_concurrent": receiver_max_concurrent.map_or(json!("default (64)"), |n| json!(n)),
        "target_rate_per_s": rate,
        "seconds": seconds,
        "sent": total,
        "send_window_s": (send_window.as_secs_f64() * 100.0).round() / 100.0,
        "accepted": created,
        "lost": lost,
        "doubled": duplicates,
        "answers": statuses,
        "runs_listed": runs.len(),
        "accepted_without_run": missing_runs,
        "accepted_per_s": (created as f64 / window.as_secs_f64() * 10.0).round() / 10.0,
        "first_post_to_last_answer_s": (window.as_secs_f64() * 100.0).round() / 100.0,
        "http_answer_from_schedule": summary(&latencies),
        "receiver_cpu_s": (cpu_secs * 100.0).round() / 100.0,
        "deliveries_per_receiver_cpu_s": if cpu_secs > 0.0 { Some((total as f64 / cpu_secs).round()) } else { None },
        "receiver_rss_mib_after": (rss as f64 / 1024.0 * 10.0).round() / 10.0,
        "receiver_hwm_mib": (hwm as f64 / 1024.0 * 10.0).round() / 10.0,
        // Every delivery accepted, none lost or doubled, and the answers kept
        // up with the arrival rate (the window is first POST to last answer).
        "within_target": created == total && lost == 0 && duplicates == 0 && missing_runs == 0
            && created as f64 / window.as_secs_f64() >= 0.95 * rate,
        "note": "each accepted delivery is one ClaudeRun create on the apiserver; doubled counts 'run exists' answers to fresh deliveries (run names derive from the signed body, so a second run cannot exist)",
    })
}

// ---------------------------------------------------------------------------
// 3. Memory.

/// A terminal run as the operator leaves one: Succeeded, cost recorded, token
/// revoked, with the operator's finalizer and labels.
fn terminal_run(
    ns: &str,
    policy: &str,
    repository: &str,
    i: usize,
    prompt_bytes: usize,
) -> (ClaudeRun, ClaudeRunStatus) {
    let mut run: ClaudeRun = serde_yaml::from_str(SAMPLE_RUN).unwrap();
    let delivery = format!("{:08x}-cc78-11e3-81ab-{:012x}", i, std::process::id());
    run.metadata = ObjectMeta {
        name: Some(format!("gh-{:016x}", i)),
        namespace: Some(ns.to_owned()),
        labels: Some(BTreeMap::from([
            (intake::POLICY_LABEL.to_owned(), policy.to_owned()),
            (
                intake::REPOSITORY_LABEL.to_owned(),
                intake::repository_label(repository),
            ),
            (intake::NUMBER_LABEL.to_owned(), (1 + i % 500).to_string()),
            ("app.kubernetes.io/managed-by".to_owned(), "claude-operator".to_owned()),
        ])),
        finalizers: Some(vec![claude_operator::api::RUN_FINALIZER.to_owned()]),
        ..Default::default()
    };
    run.spec.policy_name = policy.to_owned();
    run.spec.repository = repository.to_owned();
    run.spec.trigger.delivery_id = delivery;
    run.spec.trigger.number = 1 + (i % 500) as i64;
    let mut prompt = format!("Please fix the flaky retry test (#{i}).\n\nContext: ");
    let filler = "the delivery loop drops a webhook when the apiserver answers 503; add backoff. ";
    while prompt.len() + filler.len() <= prompt_bytes {
        prompt.push_str(filler);
    }
    while prompt.len() < prompt_bytes {
        prompt.push('.');
    }
    run.spec.prompt = prompt;

    let t = |secs_ago: i64| Time(Timestamp::now() - SignedDuration::from_secs(secs_ago));
    let name = run.name_any();
    let mut status = ClaudeRunStatus {
        phase: Phase::Succeeded,
        admission: Some(Admission {
            decision: Decision::Admit,
            reason: reasons::ADMITTED.into(),
            message: "authorized; 1.00 reserved".into(),
            checked_at: t(600),
            approved_by: None,
        }),
        pod_name: Some(sandbox::pod_name(&name)),
        pod_uid: None,
        secret_name: Some(sandbox::secret_name(&name)),
        network_policy_name: Some(sandbox::network_policy_name(&name)),
        token_expires_at: Some(t(-3000)),
        token_mints: Some(1),
        reserved_usd: None,
        start_time: Some(t(590)),
        completion_time: Some(t(60)),
        cost: Some(Cost {
            usd: format!("0.{:04}", 100 + i % 9000),
            input_tokens: 12_000 + i as i64,
            output_tokens: 2_400,
            cache_creation_input_tokens: 3_000,
            cache_read_input_tokens: 9_000,
            turns: 7,
            models: vec!["claude-sonnet-4-5".into()],
            source: CostSource::Reported,
        }),
        last_tool: Some("Bash".into()),
        outcome: Some("Completed".into()),
        charged: false,
        approvals: vec![],
        feedback_comment_id: None,
        conditions: vec![],
        observed_generation: Some(1),
    };
    for (type_, reason, message) in [
        (conditions::ADMITTED, reasons::ADMITTED, "authorized; 1.00 reserved"),
        (
            conditions::SANDBOX_READY,
            "Created",
            "secret, network policy and pod created",
        ),
        (
            conditions::COST_RECORDED,
            reasons::REPORTED,
            "cost reported by the runner",
        ),
        (conditions::TOKEN_REVOKED, "Revoked", "token revoked and secret deleted"),
    ] {
        conditions::set_condition(
            &mut status.conditions,
            conditions::condition(type_, true, reason, message, Some(1), t(60)),
        );
    }
    (run, status)
}

async fn memory(bench: &Bench, runs: usize, prompt_bytes: usize, concurrency: usize) -> Value {
    let client = &bench.client;
    let repository = "acme/bench-memory".to_owned();
    let ns = bench.namespace("bench-memory").await;
    let policy = bench.policy(&ns, &repository).await;
    let fake = bench.fake_github(&repository, 1);
    let spec = bench.operator("memory", &ns, Some(&fake), &[]);
    let kib_to_mib = |k: u64| (k as f64 / 1024.0 * 10.0).round() / 10.0;

    // With no runs.
    let op = Operator::start(&spec).await;
    let idle0 = op.wait_idle(Duration::from_secs(1), 2, Duration::from_secs(60)).await;
    let (rss0, hwm0) = op.memory_kib();
    progress(format!(
        "memory: 0 runs: VmRSS {} MiB, VmHWM {} MiB (idle after {idle0:.1}s)",
        kib_to_mib(rss0),
        kib_to_mib(hwm0)
    ));
    drop(op);

    // N terminal runs, created while the operator is stopped.
    progress(format!("memory: creating {runs} terminal runs"));
    let api: Api<ClaudeRun> = Api::namespaced(client.clone(), &ns);
    let created_at = Instant::now();
    let policy_name = policy.name_any();
    futures::stream::iter(0..runs)
        .map(|i| {
            let api = api.clone();
            let (run, status) = terminal_run(&ns, &policy_name, &repository, i, prompt_bytes);
            async move {
                let name = run.name_any();
                api.create(&PostParams::default(), &run).await?;
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": status })),
                )
                .await?;
                Ok::<(), kube::Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await
        .expect("create terminal runs");
    let setup_s = created_at.elapsed().as_secs_f64();
    let listed = api.list(&ListParams::default()).await.unwrap().items;
    let json_bytes: usize = listed.iter().map(|r| serde_json::to_vec(r).unwrap().len()).sum();
    let succeeded = listed
        .iter()
        .filter(|r| r.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded))
        .count();
    progress(format!(
        "memory: {} runs ({succeeded} Succeeded) in {setup_s:.1}s",
        listed.len()
    ));
    drop(listed);

    // The operator with them in its caches.
    let start = Instant::now();
    let op = Operator::start(&spec).await;
    let ready_s = start.elapsed().as_secs_f64();
    let idle = op.wait_idle(Duration::from_secs(1), 2, Duration::from_secs(180)).await;
    let (rss, hwm) = op.memory_kib();
    progress(format!(
        "memory: {runs} runs: VmRSS {} MiB, VmHWM {} MiB (ready after {ready_s:.1}s, idle after {idle:.1}s more)",
        kib_to_mib(rss),
        kib_to_mib(hwm)
    ));
    // Did the controller act on them? (It should only read each run's Secret.)
    let after = api.list(&ListParams::default()).await.unwrap().items;
    let still = after.len();
    let still_succeeded = after
        .iter()
        .filter(|r| r.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded))
        .count();
    drop(after);
    let github_requests = fake.requests().len();
    drop(op);

    if bench.cleanup {
        progress("memory: removing finalizers for cleanup");
        let names: Vec<String> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|r| r.name_any())
            .collect();
        futures::stream::iter(names)
            .map(|name| {
                let api = api.clone();
                async move {
                    let _ = api
                        .patch(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                        )
                        .await;
                }
            })
            .buffer_unordered(concurrency)
            .collect::<Vec<()>>()
            .await;
    }

    let per_run_kib = if runs > 0 {
        Some(((rss as f64 - rss0 as f64) / runs as f64 * 100.0).round() / 100.0)
    } else {
        None
    };
    json!({
        "benchmark": "operator_memory",
        "operator_build": "release",
        "runs": runs,
        "prompt_bytes": prompt_bytes,
        "avg_run_json_bytes": json_bytes.checked_div(runs).unwrap_or(0),
        "setup_create_s": (setup_s * 10.0).round() / 10.0,
        "rss_0_runs_mib": kib_to_mib(rss0),
        "hwm_0_runs_mib": kib_to_mib(hwm0),
        "rss_mib": kib_to_mib(rss),
        "hwm_mib": kib_to_mib(hwm),
        "rss_per_run_kib": per_run_kib,
        "target_mib": 48,
        "within_target": kib_to_mib(rss) < 48.0 && kib_to_mib(hwm) < 48.0,
        "ready_s": (ready_s * 10.0).round() / 10.0,
        "idle_after_ready_s": (idle * 10.0).round() / 10.0,
        "runs_after": still,
        "runs_still_succeeded": still_succeeded,
        "github_requests": github_requests,
        "note": "runs are Succeeded with cost, completion time and the operator's finalizer, created while the operator was stopped; the figures are read from /proc/<pid>/status once the process used at most 2 clock ticks of CPU in two consecutive seconds",
    })
}
