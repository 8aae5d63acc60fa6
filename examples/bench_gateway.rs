//! Benchmarks of the gateway (issue 13), each measured against its baseline
//! in the same run, on loopback; one JSON object per benchmark on stdout
//! (`e2e/bench/gateway.sh` runs them all; see `e2e/bench/README.md`):
//!
//! ```sh
//! cargo run --release --example bench_gateway -- ttfb --requests 400   # + the kube meter with KUBECONFIG
//! cargo run --release --example bench_gateway -- streams --streams 1000
//! cargo run --release --example bench_gateway -- clone --rounds 6
//! ```
//!
//! - `ttfb`: time to first byte of a streamed model response straight from
//!   the tests' fake Messages API, through the gateway with the in-memory
//!   meter, and (with `KUBECONFIG`) through two gateways whose meter is a
//!   grant Secret on that apiserver: the production one (`TrancheMeter` over
//!   `KubeMeterStore`: requests reserve from the replica's tranche, the
//!   Secret is written in the background) and, as the reference it replaced,
//!   `KubeMeterStore` alone (a GET and a PATCH before every request is
//!   forwarded); interleaved request by request.
//! - `streams`: the gateway as a process of its own (this program, `serve`),
//!   N concurrent streams held open by a slow upstream; its RSS idle and with
//!   every stream open, and the CPU it used for them.
//! - `clone`: `git clone` of one repository straight from `git http-backend`
//!   and through the gateway, interleaved, as throughput.

#[path = "../tests/support/runner/fake_anthropic.rs"]
mod fake_anthropic;
#[path = "../tests/support/runner/git_server.rs"]
mod git_server;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::response::Response;
use base64::Engine;
use clap::{Parser, Subcommand};
use claude_operator::gateway::meter::tranche::{self, TrancheMeter};
use claude_operator::gateway::meter::{InMemoryMeterStore, KubeMeterStore, MeterStore};
use claude_operator::gateway::registry::Registry;
use claude_operator::gateway::{Grant, server};
use fake_anthropic::{FakeAnthropic, Turn, TurnUsage};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(about = "Benchmarks of the claude-operator gateway (see e2e/bench/README.md)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time to first byte: direct, through the gateway (in-memory meter), and
    /// through the gateway with the grant Secret as the meter (KUBECONFIG).
    Ttfb {
        /// Requests measured on each path (after 20 warm-up requests).
        #[arg(long, default_value_t = 400)]
        requests: usize,
        /// Skip the kube meter even when a kubeconfig is available.
        #[arg(long)]
        no_kube: bool,
    },
    /// N concurrent streams through a gateway process: its RSS and CPU.
    Streams {
        #[arg(long, default_value_t = 1000)]
        streams: usize,
    },
    /// Clone throughput through the gateway vs straight from git http-backend.
    Clone {
        /// Clones on each path, interleaved (after one warm-up clone each).
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Size of the repository's content, MiB (incompressible).
        #[arg(long, default_value_t = 32)]
        size_mib: usize,
    },
    /// (Internal) the gateway alone with N grants, for `streams`: prints its
    /// address on stdout and serves until killed.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        upstream: String,
        #[arg(long)]
        grants: usize,
    },
}

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    gateway: claude_operator::cli::GatewayArgs,
}

const REPO: &str = "acme/api";
const MODEL_BODY: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
/// The upstream's (fake GitHub's) token: not a real one.
const TOKEN: &str = "ghs_benchNotARealToken0123456789";

/// The capability of grant `i` (the benchmark's own, not secret).
fn capability(i: usize) -> String {
    format!("cocap_bench-capability-not-real-{i:012}")
}

/// Grant `i`: the repository, the model, a budget no request reaches, open for an hour.
fn grant(i: usize, secret_name: &str) -> Grant {
    Grant {
        secret_name: secret_name.to_owned(),
        facts: claude_operator::grant::GrantFacts {
            namespace: "bench".into(),
            run: format!("bench-{i}"),
            run_uid: format!("bench-uid-{i}"),
            policy: "bench".into(),
            repository: REPO.into(),
            number: 1,
            is_pull_request: false,
            head_sha: None,
            push_branch: None,
            push_to_pull_request: false,
            review: false,
            allowed_models: vec!["claude-sonnet-4-5".into()],
            max_cost_usd: "100000".into(),
            prices: vec![],
            protected_paths: vec![],
            allow_hosts: vec![],
            expires_at: "2999-01-01T00:00:00Z".into(),
            triggered_at: None,
        },
        github_token: String::from(TOKEN).into(),
        anthropic_key: String::from("sk-ant-bench-not-a-key").into(),
        expires_at: jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600),
        closed: false,
    }
}

/// A gateway on loopback over `registry` and `meter`, upstreams as given.
async fn gateway(flags: &[&str], registry: Registry, meter: Arc<dyn MeterStore>) -> String {
    let mut argv = vec!["gateway"];
    argv.extend_from_slice(flags);
    let flags = Flags::parse_from(argv);
    registry.set_ready();
    let state = server::State::with_parts(
        flags.gateway,
        registry,
        meter,
        claude_operator::telemetry::Metrics::default(),
    )
    .expect("gateway state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve(listener, Arc::new(state), std::future::pending()));
    url
}

fn registry_of(grants: impl IntoIterator<Item = (String, Grant)>) -> Registry {
    let registry = Registry::default();
    for (cap, g) in grants {
        registry.insert(claude_operator::grant::capability_sha256(&cap), g);
    }
    registry
}

/// Nearest-rank percentile, milliseconds.
fn pct(v: &[Duration], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    (v[i].as_secs_f64() * 1e6).round() / 1e3
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let out = match cli.command {
        Command::Ttfb { requests, no_kube } => ttfb(requests, no_kube).await,
        Command::Streams { streams: n } => streams(n).await,
        Command::Clone { rounds, size_mib } => clone(rounds, size_mib).await,
        Command::Serve { upstream, grants } => return serve(&upstream, grants).await,
    };
    println!("{}", serde_json::to_string(&out).unwrap());
}

// ---------------------------------------------------------------------------
// Time to first byte.

async fn ttfb(requests: usize, no_kube: bool) -> Value {
    let fake = FakeAnthropic::start(
        vec![Turn::Text("hi".into())],
        TurnUsage {
            input_tokens: 10,
            output_tokens: 5,
        },
    )
    .await;
    let upstream = ["--anthropic-api-url", fake.base_url.as_str()];
    let cap = capability(0);
    let in_memory = gateway(
        &upstream,
        registry_of([(cap.clone(), grant(0, "grant-bench"))]),
        Arc::new(InMemoryMeterStore::default()),
    )
    .await;

    // The kube meter: a grant Secret in a namespace of its own on the
    // apiserver of KUBECONFIG (the registry stays in memory: it only maps the
    // capability to the grant; the meter is what costs a round trip).
    let kube = if no_kube || std::env::var_os("KUBECONFIG").is_none() {
        None
    } else {
        match kube::Client::try_default().await {
            Ok(client) => Some(KubeMeter::new(client).await),
            Err(e) => {
                eprintln!("bench: no kube meter ({e})");
                None
            }
        }
    };
    let (through_kube, through_tranches, tranches) = match &kube {
        Some(k) => {
            let per_request = gateway(
                &upstream,
                registry_of([(cap.clone(), grant(0, &k.secret))]),
                Arc::new(KubeMeterStore::new(k.client.clone(), &k.namespace)),
            )
            .await;
            let meter = Arc::new(TrancheMeter::new(
                KubeMeterStore::new(k.client.clone(), &k.namespace),
                tranche::incarnation("bench"),
            ));
            let url = gateway(
                &upstream,
                registry_of([(cap.clone(), grant(0, &k.tranche_secret))]),
                meter.clone(),
            )
            .await;
            (Some(per_request), Some(url), Some(meter))
        }
        None => (None, None, None),
    };

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let first_byte = |base: String| {
        let (http, cap) = (http.clone(), cap.clone());
        async move {
            let start = Instant::now();
            let mut resp = http
                .post(format!("{base}/v1/messages"))
                .header("x-api-key", cap)
                .header("anthropic-version", "2023-06-01")
                .header("content-type", "application/json")
                .body(MODEL_BODY)
                .send()
                .await
                .expect("request");
            assert!(resp.status().is_success(), "{base}: {}", resp.status());
            let first = resp.chunk().await.expect("first chunk");
            let elapsed = start.elapsed();
            assert!(first.is_some());
            while resp.chunk().await.expect("rest").is_some() {}
            elapsed
        }
    };
    // Interleaved request by request, so every path sees the same machine load.
    let (mut direct, mut memory, mut kubed, mut tranched, mut roundtrip) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..requests + 20 {
        let d = first_byte(fake.base_url.clone()).await;
        let m = first_byte(in_memory.clone()).await;
        let t = match &through_tranches {
            Some(url) => Some(first_byte(url.clone()).await),
            None => None,
        };
        let (k, r) = match (&through_kube, &kube) {
            (Some(url), Some(meter)) => (Some(first_byte(url.clone()).await), Some(meter.roundtrip(i).await)),
            _ => (None, None),
        };
        if i >= 20 {
            direct.push(d);
            memory.push(m);
            tranched.extend(t);
            kubed.extend(k);
            roundtrip.extend(r);
        }
    }
    if let Some(t) = &tranches {
        t.flushed().await;
    }
    let (meter_written, tranche_meter_written) = match &kube {
        Some(k) => (
            Some(k.requests_metered(&k.secret).await),
            Some(k.requests_metered(&k.tranche_secret).await),
        ),
        None => (None, None),
    };
    if let Some(k) = kube {
        k.cleanup().await;
    }
    let (d50, d99) = (pct(&direct, 0.50), pct(&direct, 0.99));
    let path = |v: &[Duration]| {
        let (p50, p99) = (pct(v, 0.50), pct(v, 0.99));
        json!({
            "p50_ms": p50, "p99_ms": p99,
            "added_p50_ms": round3(p50 - d50), "added_p99_ms": round3(p99 - d99),
            "ratio_p50": round3(p50 / d50), "ratio_p99": round3(p99 / d99),
            "target_added_p99_ms_at_most": 2.0,
            "within_target": p99 - d99 <= 2.0,
        })
    };
    json!({
        "benchmark": "gateway_time_to_first_byte",
        "requests_each": requests,
        "direct": {"p50_ms": d50, "p99_ms": d99},
        "gateway_in_memory_meter": path(&memory),
        // The production configuration: tranches of the grant Secret's budget.
        "gateway_kube_meter": if tranched.is_empty() { Value::Null } else { path(&tranched) },
        "kube_meter_requests_settled": tranche_meter_written,
        // The reference it replaced: a reservation on the Secret per request.
        "gateway_kube_meter_per_request": if kubed.is_empty() { Value::Null } else { path(&kubed) },
        "kube_meter_per_request_requests_settled": meter_written,
        // What the kube meter waits for before forwarding, measured alone:
        // one GET and one conditional merge PATCH of a Secret, by this client.
        "apiserver_get_patch": if roundtrip.is_empty() { Value::Null } else {
            json!({"p50_ms": pct(&roundtrip, 0.50), "p99_ms": pct(&roundtrip, 0.99)})
        },
        "note": "interleaved per request: direct, in-memory meter, kube meter (tranches: the request reserves from the replica's tranche in memory; settlements and renewals are written to the grant Secret in the background), kube meter per request (reserves with GET + PATCH of the grant Secret before forwarding, settles with GET + PATCH after the stream); KUBECONFIG's apiserver is shared with the rest of the machine",
    })
}

/// A grant Secret on a real apiserver, for the kube meter.
struct KubeMeter {
    client: kube::Client,
    namespace: String,
    /// The per-request meter's grant Secret.
    secret: String,
    /// The tranche meter's grant Secret.
    tranche_secret: String,
}

impl KubeMeter {
    async fn new(client: kube::Client) -> KubeMeter {
        let namespace = format!(
            "bench-gw-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_second() % 100_000
        );
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create the meter's namespace");
        let (secret, tranche_secret) = ("grant-bench".to_owned(), "grant-bench-tranches".to_owned());
        for name in [&secret, &tranche_secret] {
            let s: Secret = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
            Api::<Secret>::namespaced(client.clone(), &namespace)
                .create(&PostParams::default(), &s)
                .await
                .expect("create the grant Secret");
        }
        KubeMeter {
            client,
            namespace,
            secret,
            tranche_secret,
        }
    }

    /// One GET and one merge PATCH (carrying the resourceVersion read, as
    /// the meter's) of a second Secret: the round trips a reservation makes.
    async fn roundtrip(&self, i: usize) -> Duration {
        let api = Api::<Secret>::namespaced(self.client.clone(), &self.namespace);
        let name = "roundtrip-bench";
        if i == 0 {
            let s: Secret = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
            let _ = api.create(&PostParams::default(), &s).await;
        }
        let start = Instant::now();
        let s = api.get(name).await.expect("get");
        let patch = json!({"metadata": {
            "resourceVersion": s.metadata.resource_version,
            "annotations": {"bench": i.to_string()},
        }});
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("patch");
        start.elapsed()
    }

    /// Requests the meter on the Secret has settled (a check that the kube
    /// meter was really used).
    async fn requests_metered(&self, secret: &str) -> u64 {
        let s = Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .get(secret)
            .await
            .expect("the grant Secret");
        let meter = claude_operator::gateway::meter::read_meter(&s).expect("a meter");
        u64::from(meter.requests)
    }

    async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client)
            .delete(&self.namespace, &DeleteParams::background())
            .await;
    }
}

// ---------------------------------------------------------------------------
// Concurrent streams.

const SSE_START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":10,\"output_tokens\":1,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0}}}\n\n";
const SSE_REST: &str = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

/// An upstream whose streams send `message_start` at once and the rest only
/// when `release` turns true: N streams stay open as long as the benchmark wants.
async fn slow_upstream(release: tokio::sync::watch::Receiver<bool>) -> String {
    let app = axum::Router::new().fallback(move || {
        let mut release = release.clone();
        async move {
            let head = futures::stream::once(async { Ok::<_, Infallible>(Bytes::from_static(SSE_START.as_bytes())) });
            let tail = futures::stream::once(async move {
                let _ = release.wait_for(|r| *r).await;
                Ok::<_, Infallible>(Bytes::from_static(SSE_REST.as_bytes()))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(head.chain(tail)))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid`, seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let ticks = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    (get(11) + get(12)) as f64 / ticks
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

async fn streams(n: usize) -> Value {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let upstream = slow_upstream(release_rx).await;
    let exe = std::env::current_exe().expect("this program");
    // Killed (by its handle) when dropped.
    let mut child = tokio::process::Command::new(exe)
        .args(["serve", "--upstream", &upstream, "--grants", &n.to_string()])
        .env(
            "RUST_LOG",
            std::env::var("BENCH_GATEWAY_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the gateway process");
    let stdout = child.stdout.take().unwrap();
    let pid = child.id().expect("a pid");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let gateway = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the gateway process said where it listens")
        .unwrap()
        .expect("an address");
    let gateway = gateway.trim().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = proc_status_kib(pid, "VmRSS:");
    let cpu_before = cpu_s(pid);

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let opened = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (http, gateway, opened) = (http.clone(), gateway.clone(), opened.clone());
        tasks.push(tokio::spawn(async move {
            let mut resp = http
                .post(format!("{gateway}/v1/messages"))
                .header("x-api-key", capability(i))
                .header("anthropic-version", "2023-06-01")
                .header("content-type", "application/json")
                .body(MODEL_BODY)
                .send()
                .await
                .map_err(|e| format!("request: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("status {}", resp.status()));
            }
            let mut bytes = 0;
            if let Some(first) = resp.chunk().await.map_err(|e| e.to_string())? {
                bytes += first.len();
            }
            opened.fetch_add(1, Ordering::SeqCst);
            while let Some(c) = resp.chunk().await.map_err(|e| e.to_string())? {
                bytes += c.len();
            }
            Ok::<usize, String>(bytes)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while opened.load(Ordering::SeqCst) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_s = start.elapsed().as_secs_f64();
    let all_open = opened.load(Ordering::SeqCst);
    // Let the gateway settle with every stream open, then read it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_open = proc_status_kib(pid, "VmRSS:");
    let cpu_open = cpu_s(pid);
    release_tx.send(true).unwrap();
    let mut ok = 0;
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    let mut expected_bytes = true;
    for t in tasks {
        match t.await.expect("stream task") {
            Ok(bytes) => {
                ok += 1;
                expected_bytes &= bytes == SSE_START.len() + SSE_REST.len();
            }
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    let total_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_after = cpu_s(pid);
    let hwm = proc_status_kib(pid, "VmHWM:");
    let rss_after = proc_status_kib(pid, "VmRSS:");
    let _ = child.kill().await;
    json!({
        "benchmark": "gateway_concurrent_streams",
        "streams": n,
        "all_open_at_once": all_open,
        "completed": ok,
        "bodies_passed_through_whole": expected_bytes,
        "errors": errors,
        "seconds_to_open_all": round3(open_s),
        "seconds_total": round3(total_s),
        "gateway_rss_idle_mib": mib(rss_idle),
        "gateway_rss_all_open_mib": mib(rss_open),
        "gateway_hwm_mib": mib(hwm),
        "gateway_rss_after_mib": mib(rss_after),
        "rss_per_open_stream_kib": round3((rss_open as f64 - rss_idle as f64) / n.max(1) as f64),
        "gateway_cpu_s_opening": round3(cpu_open - cpu_before),
        "gateway_cpu_s_total": round3(cpu_after - cpu_before),
        "gateway_cpu_ms_per_stream": round3((cpu_after - cpu_before) * 1000.0 / n.max(1) as f64),
        "target_mib_at_most": 100,
        "within_target": mib(hwm) <= 100.0,
        "note": "the gateway is its own process (this program's `serve`: the gateway's server over an in-memory registry of one grant per stream and the in-memory meter, audit lines at info to /dev/null); each stream gets message_start at once and the rest when every stream is open",
    })
}

/// The gateway alone, as `claude-operator gateway` runs it, over an
/// in-memory registry of `grants` grants (capabilities 0..grants) and the
/// in-memory meter, audit lines as JSON on stderr.
async fn serve(upstream: &str, grants: usize) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .json()
        .init();
    let registry = registry_of((0..grants).map(|i| (capability(i), grant(i, &format!("grant-bench-{i}")))));
    let url = gateway(
        &["--anthropic-api-url", upstream],
        registry,
        Arc::new(InMemoryMeterStore::default()),
    )
    .await;
    println!("{url}");
    std::future::pending::<()>().await;
}

// ---------------------------------------------------------------------------
// Clone throughput.

/// Runs git with no global or system configuration and `extra_header` as an
/// HTTP header from the environment (never argv); returns success and output.
async fn git_clone(url: &str, dest: &Path, user: &str, password: &str) -> (bool, String) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let out = tokio::process::Command::new("git")
        .args(["clone", "--bare", "--quiet", url])
        .arg(dest)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "http.extraHeader")
        .env("GIT_CONFIG_VALUE_0", format!("Authorization: Basic {basic}"))
        .output()
        .await
        .expect("git");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn pack_bytes(repo: &Path) -> u64 {
    std::fs::read_dir(repo.join("objects/pack"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

async fn clone(rounds: usize, size_mib: usize) -> Value {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("upstream");
    let bare = root.join(format!("{REPO}.git"));
    std::fs::create_dir_all(&bare).unwrap();
    git_server::git(tmp.path(), &["init", "--quiet", "--bare", bare.to_str().unwrap()]);
    let seed = tmp.path().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git_server::git(&seed, &["init", "--quiet"]);
    // Incompressible content in 64 files over 4 commits: the pack is about
    // the content's size, so the clone moves `size_mib` MiB.
    let files = 64;
    let per_file = size_mib * 1024 * 1024 / files;
    let mut random = std::fs::File::open("/dev/urandom").unwrap();
    for commit in 0..4 {
        for f in (commit * files / 4)..((commit + 1) * files / 4) {
            let mut buf = vec![0u8; per_file];
            std::io::Read::read_exact(&mut random, &mut buf).unwrap();
            std::fs::write(seed.join(format!("blob-{f:03}.bin")), buf).unwrap();
        }
        git_server::git(&seed, &["add", "."]);
        git_server::git(&seed, &["commit", "--quiet", "-m", &format!("part {commit}")]);
    }
    git_server::git(&seed, &["push", "--quiet", bare.to_str().unwrap(), "main"]);
    // One pack, as a hosted repository has: upload-pack then sends its
    // objects as they are instead of compressing loose ones per clone, so the
    // clone's time is transfer, not the server's zlib.
    git_server::git(&bare, &["repack", "--quiet", "-a", "-d"]);
    let upstream = git_server::GitServer::start(&root, TOKEN).await;
    let cap = capability(0);
    let through = gateway(
        &["--github-git-url", &upstream.base_url],
        registry_of([(cap.clone(), grant(0, "grant-bench"))]),
        Arc::new(InMemoryMeterStore::default()),
    )
    .await;
    let direct_url = format!("{}/{REPO}.git", upstream.base_url);
    let gateway_url = format!("{through}/git/{REPO}.git");

    let (mut direct, mut gated) = (vec![], vec![]);
    let mut pack = 0;
    for i in 0..=rounds {
        for (which, url, user, password) in [
            ("direct", &direct_url, "x-access-token", TOKEN),
            ("gateway", &gateway_url, "x-access-token", cap.as_str()),
        ] {
            let dest = tmp.path().join(format!("clone-{which}-{i}"));
            let start = Instant::now();
            let (ok, out) = git_clone(url, &dest, user, password).await;
            let took = start.elapsed();
            assert!(ok, "clone {which}: {out}");
            assert!(!out.contains(TOKEN), "the token in git's output");
            pack = pack_bytes(&dest);
            let _ = std::fs::remove_dir_all(&dest);
            if i > 0 {
                if which == "direct" {
                    direct.push(took);
                } else {
                    gated.push(took);
                }
            }
        }
    }
    let mibps = |d: f64| round3(pack as f64 / 1048576.0 / (d / 1000.0));
    let (d50, g50) = (pct(&direct, 0.5), pct(&gated, 0.5));
    let sum = |v: &[Duration]| v.iter().map(Duration::as_secs_f64).sum::<f64>();
    let ratio = sum(&direct) / sum(&gated);
    json!({
        "benchmark": "gateway_clone_throughput",
        "rounds": rounds,
        "pack_mib": round3(pack as f64 / 1048576.0),
        "direct": {"median_ms": d50, "max_ms": pct(&direct, 1.0), "median_mib_per_s": mibps(d50)},
        "gateway": {"median_ms": g50, "max_ms": pct(&gated, 1.0), "median_mib_per_s": mibps(g50)},
        "throughput_ratio_gateway_vs_direct": round3(ratio),
        "median_ratio": round3(d50 / g50),
        "target_ratio_at_least": 0.8,
        "within_target": ratio >= 0.8,
        "note": "git clone --bare, interleaved direct/gateway after one warm-up each; upstream is git http-backend behind the tests' server (tests/support/runner/git_server.rs), the gateway injects the token; ratio = total direct time / total gateway time",
    })
}
