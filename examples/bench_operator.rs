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
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
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
    /// Trigger-to-pod latency (steady and burst) against a baseline of raw creates.
    Latency {
        /// Deliveries of the trickle phase.
        #[arg(long, default_value_t = 40)]
        trickle_deliveries: usize,
        /// Arrival rate of the trickle phase, per second.
        #[arg(long, default_value_t = 2.0)]
        trickle_rate: f64,
        /// Deliveries of the steady and of the burst phase.
        #[arg(long, default_value_t = 200)]
        deliveries: usize,
        /// Arrival rate of the steady phase, per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Requests in flight at most during the burst.
        #[arg(long, default_value_t = 50)]
        burst_concurrency: usize,
        /// Distinct actors the deliveries are spread over.
        #[arg(long, default_value_t = 20)]
        actors: usize,
        /// Iterations of the baseline.
        #[arg(long, default_value_t = 200)]
        baseline_iterations: usize,
        /// How long to wait for the pods of a phase, seconds.
        #[arg(long, default_value_t = 180)]
        settle_timeout: u64,
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
    };
    let out = match cli.command {
        Command::Latency {
            trickle_deliveries,
            trickle_rate,
            deliveries,
            rate,
            burst_concurrency,
            actors,
            baseline_iterations,
            settle_timeout,
        } => {
            latency(
                &bench,
                trickle_deliveries,
                trickle_rate,
                deliveries,
                rate,
                burst_concurrency,
                actors,
                baseline_iterations,
                Duration::from_secs(settle_timeout),
            )
            .await
        }
        Command::Intake {
            rate,
            seconds,
            actors,
            max_in_flight,
        } => intake_throughput(&bench, rate, seconds, actors, max_in_flight).await,
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
}

impl Bench {
    /// A namespace labelled for Pod Security "restricted", as the operator's sandbox needs.
    async fn namespace(&self, prefix: &str) -> String {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            Timestamp::now().as_second() % 100_000
        );
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
        self.namespaces.lock().unwrap().push(name.clone());
        name
    }

    /// The Anthropic key Secret and a policy for `repository` with limits large
    /// enough that nothing but the operator's own work stands between a
    /// trigger and its pod: no quota, 1000 concurrent runs, 1000 runs per
    /// actor and hour, a budget far above what the benchmark reserves.
    async fn policy(&self, ns: &str, repository: &str) -> ClaudeRunPolicy {
        let key: Secret = serde_json::from_value(json!({
            "metadata": {"name": "anthropic"},
            "stringData": {"api-key": "sk-ant-bench-not-a-real-key"},
        }))
        .unwrap();
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &key)
            .await
            .expect("create the key Secret");
        let mut policy: ClaudeRunPolicy = serde_yaml::from_str(SAMPLE_POLICY).unwrap();
        policy.metadata.namespace = Some(ns.to_owned());
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
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(8)
            .thread_name("fake-github")
            .enable_all()
            .build()
            .expect("fake GitHub runtime");
        let fake = std::thread::scope(|s| s.spawn(|| rt.block_on(FakeGitHub::start())).join().unwrap());
        // Lives as long as the process (a runtime cannot be dropped inside another).
        Box::leak(Box::new(rt));
        fake.install(repository, INSTALLATION);
        for i in 0..actors {
            let (login, id) = actor(i);
            fake.add_user(&login, id, "User");
            fake.set_role(repository, &login, "write");
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
            let _ = Api::<Namespace>::all(self.client.clone())
                .delete(&ns, &DeleteParams::background())
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
        let (webhook, metrics) = (free_port(), free_port());
        let log = std::fs::File::create(&spec.log).unwrap();
        let child = std::process::Command::new(&spec.bin)
            .arg("run")
            .args(["--webhook-listen", &format!("127.0.0.1:{webhook}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
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
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let get = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        get(11) + get(12)
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
// Watching: the local receive time of the first event of each object.

#[derive(Default)]
struct Seen {
    /// name -> (first seen, uid at first sight)
    first: HashMap<String, (Instant, String)>,
    /// names seen with a second uid (deleted and made again)
    recreated: HashMap<String, usize>,
    synced: bool,
}

type SeenMap = Arc<Mutex<Seen>>;

fn watch<K>(api: Api<K>) -> (SeenMap, tokio::task::JoinHandle<()>)
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
                    s.first.insert(name, (at, uid));
                }
                Some((_, first_uid)) if *first_uid != uid => {
                    *s.recreated.entry(name).or_default() += 1;
                }
                Some(_) => {}
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

// ---------------------------------------------------------------------------
// 1. Trigger-to-pod latency.

#[allow(clippy::too_many_arguments)]
async fn latency(
    bench: &Bench,
    trickle_deliveries: usize,
    trickle_rate: f64,
    deliveries: usize,
    rate: f64,
    burst_concurrency: usize,
    actors: usize,
    baseline_iterations: usize,
    settle_timeout: Duration,
) -> Value {
    let client = &bench.client;
    let repository = "acme/bench-latency".to_owned();

    // Baseline: the same client creates the children of a run, in sequence.
    progress(format!("latency: baseline, {baseline_iterations} iterations"));
    let base_ns = bench.namespace("bench-baseline").await;
    let policy = bench.policy(&base_ns, &repository).await;
    let baseline = baseline(client, &base_ns, &policy, &repository, baseline_iterations).await;

    // The operator, receiver and controllers in one process.
    let ns = bench.namespace("bench-latency").await;
    bench.policy(&ns, &repository).await;
    let fake = bench.fake_github(&repository, actors);
    let spec = bench.operator("latency", &ns, Some(&fake), &[]);
    let op = Operator::start(&spec).await;
    progress(format!("latency: operator pid {} ready", op.pid()));
    let (pods, pod_watch) = watch(Api::<Pod>::namespaced(client.clone(), &ns));
    let (runs, run_watch) = watch(Api::<ClaudeRun>::namespaced(client.clone(), &ns));
    wait_synced(&pods).await;
    wait_synced(&runs).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(burst_concurrency.max(64))
        .build()
        .unwrap();

    let make = |phase: &str, offset: i64, n: usize| -> Vec<Delivery> {
        (0..n)
            .map(|i| {
                let (login, id) = actor(i % actors);
                let body = comment_payload(
                    &repository,
                    &login,
                    id,
                    offset + i as i64,
                    &format!("@claude please fix the flaky test in module {i} and add a regression test."),
                );
                Delivery::new(format!("bench-{phase}-{}-{i}", std::process::id()), body)
            })
            .collect()
    };

    // Trickle: a rate the whole system keeps up with, so the latency is the
    // pipeline's own and not a queue's.
    let trickle = make("trickle", 20_001, trickle_deliveries);
    progress(format!("latency: trickle, {trickle_deliveries} at {trickle_rate}/s"));
    let answers = send_at_rate(&http, &op.webhook_url, &trickle, trickle_rate).await;
    let mut trickle_result = phase_result(&trickle, &answers, &pods, &runs, settle_timeout, None).await;
    let idle = op
        .wait_idle(Duration::from_millis(500), 5, Duration::from_secs(60))
        .await;
    progress(format!("latency: operator idle after {idle:.1}s"));

    // Steady: deliveries at their scheduled times, whatever the answers take.
    let steady = make("steady", 1, deliveries);
    progress(format!("latency: steady, {deliveries} at {rate}/s"));
    let answers = send_at_rate(&http, &op.webhook_url, &steady, rate).await;
    let steady_result = phase_result(&steady, &answers, &pods, &runs, settle_timeout, None).await;
    let idle = op
        .wait_idle(Duration::from_millis(500), 5, Duration::from_secs(60))
        .await;
    progress(format!("latency: operator idle after {idle:.1}s"));

    // Burst: every delivery at once, at most `burst_concurrency` in flight.
    let burst = make("burst", 10_001, deliveries);
    progress(format!(
        "latency: burst, {deliveries} with {burst_concurrency} in flight"
    ));
    let gate = Arc::new(Semaphore::new(burst_concurrency));
    let burst_start = Instant::now();
    let mut tasks = Vec::with_capacity(burst.len());
    for d in burst.clone() {
        let (http, url, gate) = (http.clone(), op.webhook_url.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            post(&http, &url, &d).await
        }));
    }
    let answers = join_all(tasks).await;
    let burst_result = phase_result(&burst, &answers, &pods, &runs, settle_timeout, Some(burst_start)).await;

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
    let pods_listed = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    let github_requests = fake.requests().len();
    let minted = fake.minted(&repository);
    let revoked = fake.revoked(&repository);
    pod_watch.abort();
    run_watch.abort();
    drop(op);

    let b99 = baseline["per_iteration"]["p99_ms"].as_f64();
    trickle_result["rate_per_s"] = json!(trickle_rate);
    trickle_result["ratio_p99_vs_baseline_p99"] =
        json!(ratio(trickle_result["trigger_to_pod"]["p99_ms"].as_f64(), b99));
    let mut steady_result = steady_result;
    let mut burst_result = burst_result;
    steady_result["rate_per_s"] = json!(rate);
    steady_result["ratio_p99_vs_baseline_p99"] = json!(ratio(steady_result["trigger_to_pod"]["p99_ms"].as_f64(), b99));
    burst_result["concurrency"] = json!(burst_concurrency);
    burst_result["ratio_p99_vs_baseline_p99"] = json!(ratio(burst_result["trigger_to_pod"]["p99_ms"].as_f64(), b99));
    let total = 2 * deliveries + trickle_deliveries;
    json!({
        "benchmark": "trigger_to_pod_latency",
        "operator_build": "release",
        "deliveries_per_phase": deliveries,
        "actors": actors,
        "baseline": baseline,
        "trickle": trickle_result,
        "steady": steady_result,
        "burst": burst_result,
        "target": "trigger_to_pod p99 within 2x of baseline p99",
        "runs_listed": all_runs.items.len(),
        "run_phases": phases,
        "pods_listed": pods_listed,
        "tokens_minted": minted,
        "tokens_revoked": revoked,
        "github_requests": github_requests,
        "github_requests_per_run": (github_requests as f64 / total as f64 * 100.0).round() / 100.0,
        "note": "the operator path also includes the ClaudeRun create, GitHub lookups and token minting (fake GitHub on loopback; it verifies each new App JWT with the openssl CLI) and the admission status write; the baseline is only Secret + NetworkPolicy + Pod creates in sequence by one client. Times are local receive times of watch events, measured from the start of each POST.",
    })
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

/// Waits for the pods of these deliveries (bounded) and computes a phase's figures.
async fn phase_result(
    deliveries: &[Delivery],
    answers: &[Answer],
    pods: &SeenMap,
    runs: &SeenMap,
    settle_timeout: Duration,
    burst_start: Option<Instant>,
) -> Value {
    let accepted: Vec<usize> = (0..deliveries.len())
        .filter(|&i| answers[i].status == 202 && answers[i].body == "run created")
        .collect();
    let pod_of = |i: usize| sandbox::pod_name(&deliveries[i].run);
    let deadline = Instant::now() + settle_timeout;
    loop {
        let missing = {
            let seen = pods.lock().unwrap();
            accepted
                .iter()
                .filter(|&&i| !seen.first.contains_key(&pod_of(i)))
                .count()
        };
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http: Vec<f64> = answers.iter().map(|a| ms(a.answered - a.sent)).collect();
    let (pods_seen, runs_seen) = (pods.lock().unwrap(), runs.lock().unwrap());
    let mut to_pod = vec![];
    let mut to_run = vec![];
    let mut from_burst_start = vec![];
    let mut lost = 0;
    let mut last_pod: Option<Instant> = None;
    for (i, d) in deliveries.iter().enumerate() {
        let run = d.run.clone();
        match pods_seen.first.get(&sandbox::pod_name(&run)) {
            Some((at, _)) if answers[i].status / 100 == 2 => {
                to_pod.push(ms(at.saturating_duration_since(answers[i].sent)));
                if let Some(b) = burst_start {
                    from_burst_start.push(ms(at.saturating_duration_since(b)));
                }
                last_pod = Some(last_pod.map_or(*at, |l| l.max(*at)));
            }
            _ => lost += 1,
        }
        if let Some((at, _)) = runs_seen.first.get(&run) {
            to_run.push(ms(at.saturating_duration_since(answers[i].sent)));
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
    let first_sent = answers.iter().map(|a| a.sent).min();
    let mut v = json!({
        "sent": deliveries.len(),
        "accepted": accepted.len(),
        "answers": statuses,
        "lost": lost,
        "doubled_runs": doubled_runs,
        "doubled_pods": doubled_pods,
        "http_answer": summary(&http),
        "trigger_to_run": summary(&to_run),
        "trigger_to_pod": summary(&to_pod),
        "first_post_to_last_pod_ms": match (first_sent, last_pod) {
            (Some(f), Some(l)) => Some(ms(l.saturating_duration_since(f))),
            _ => None,
        },
        "pods_per_s": match (first_sent, last_pod) {
            (Some(f), Some(l)) if l > f => Some(((deliveries.len() - lost) as f64 / (l - f).as_secs_f64() * 10.0).round() / 10.0),
            _ => None,
        },
    });
    if burst_start.is_some() {
        v["burst_start_to_pod"] = summary(&from_burst_start);
    }
    v
}

/// Creates, for `iterations` fresh runs, the Secret, NetworkPolicy and Pod the
/// operator would create, with the operator's own builders, in sequence, and
/// times each iteration (the run itself is created untimed, for valid owner
/// references).
async fn baseline(client: &Client, ns: &str, policy: &ClaudeRunPolicy, repository: &str, iterations: usize) -> Value {
    let sa = sandbox::runner_service_account(ns);
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .expect("service account");
    let runs: Api<ClaudeRun> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let netpols: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let params = sandbox::RunnerParams {
        gateway_url: "http://127.0.0.1:1".into(),
    };
    let gateway = claude_operator::controller::Settings::default().gateway;
    let pp = PostParams::default();
    let (mut total, mut s_ms, mut n_ms, mut p_ms) = (vec![], vec![], vec![], vec![]);
    for i in 0..iterations {
        let mut run: ClaudeRun = serde_yaml::from_str(SAMPLE_RUN).unwrap();
        run.metadata.name = Some(format!("baseline-{}-{i}", std::process::id()));
        run.metadata.namespace = Some(ns.to_owned());
        run.spec.repository = repository.to_owned();
        run.spec.policy_name = policy.name_any();
        run.spec.trigger.delivery_id = format!("baseline-{i}");
        let run = runs.create(&pp, &run).await.expect("create run");
        let secret = sandbox::run_secret(&run, "cocap_bench_not_a_capability", &run.spec.prompt).unwrap();
        let netpol = sandbox::run_network_policy(&run, &gateway).unwrap();
        let pod = sandbox::runner_pod(&policy.spec, &run, &sandbox::secret_name(&run.name_any()), &params).unwrap();

        let t0 = Instant::now();
        secrets.create(&pp, &secret).await.expect("create secret");
        let t1 = Instant::now();
        netpols.create(&pp, &netpol).await.expect("create network policy");
        let t2 = Instant::now();
        pods.create(&pp, &pod).await.expect("create pod");
        let t3 = Instant::now();
        total.push(ms(t3 - t0));
        s_ms.push(ms(t1 - t0));
        n_ms.push(ms(t2 - t1));
        p_ms.push(ms(t3 - t2));
    }
    json!({
        "iterations": iterations,
        "per_iteration": summary(&total),
        "secret_create": summary(&s_ms),
        "network_policy_create": summary(&n_ms),
        "pod_create": summary(&p_ms),
    })
}

// ---------------------------------------------------------------------------
// 2. Intake throughput.

async fn intake_throughput(bench: &Bench, rate: f64, seconds: f64, actors: usize, max_in_flight: usize) -> Value {
    let client = &bench.client;
    let repository = "acme/bench-intake".to_owned();
    let ns = bench.namespace("bench-intake").await;
    bench.policy(&ns, &repository).await;
    let spec = bench.operator("intake", &ns, None, &["--no-controller"]);
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
        "target_mib": 64,
        "within_target": kib_to_mib(rss) < 64.0 && kib_to_mib(hwm) < 64.0,
        "ready_s": (ready_s * 10.0).round() / 10.0,
        "idle_after_ready_s": (idle * 10.0).round() / 10.0,
        "runs_after": still,
        "runs_still_succeeded": still_succeeded,
        "github_requests": github_requests,
        "note": "runs are Succeeded with cost, completion time and the operator's finalizer, created while the operator was stopped; the figures are read from /proc/<pid>/status once the process used at most 2 clock ticks of CPU in two consecutive seconds",
    })
}
