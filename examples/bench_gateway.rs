//! Time to first byte of a streamed model response through the gateway
//! against the same request straight to the upstream, measured in one run
//! on loopback (`e2e/bench/gateway.sh` runs it and prints JSON):
//!
//! ```sh
//! cargo run --release --example bench_gateway -- --requests 400
//! ```
//!
//! The upstream is the tests' fake Messages API; the gateway holds one open
//! grant with an in-memory meter, so the figure is the proxy's own cost
//! (authentication, model check, worst-case reservation, forwarding, the SSE
//! tee). With the grant Secret as the meter (a real deployment), each request
//! also waits for one read and one write of that Secret at the apiserver.

#[path = "../tests/support/runner/fake_anthropic.rs"]
mod fake_anthropic;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use claude_operator::gateway::meter::InMemoryMeterStore;
use claude_operator::gateway::registry::Registry;
use claude_operator::gateway::{Grant, server};
use fake_anthropic::{FakeAnthropic, Turn, TurnUsage};

#[derive(Parser, Debug)]
struct Args {
    /// Requests measured on each path (after 20 warm-up requests).
    #[arg(long, default_value_t = 400)]
    requests: usize,
}

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    gateway: claude_operator::cli::GatewayArgs,
}

const CAPABILITY: &str = "cocap_YmVuY2gtY2FwYWJpbGl0eS1ub3QtcmVhbC0wMTIzNDU2Nzg5YWI";
const BODY: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hello"}]}"#;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let fake = FakeAnthropic::start(
        vec![Turn::Text("hi".into())],
        TurnUsage {
            input_tokens: 10,
            output_tokens: 5,
        },
    )
    .await;
    let flags = Flags::parse_from(["gateway", "--anthropic-api-url", &fake.base_url]);
    let registry = Registry::default();
    registry.insert(
        claude_operator::grant::capability_sha256(CAPABILITY),
        Grant {
            secret_name: "grant-bench".into(),
            facts: claude_operator::grant::GrantFacts {
                namespace: "bench".into(),
                run: "bench".into(),
                run_uid: "bench".into(),
                policy: "bench".into(),
                repository: "acme/api".into(),
                number: 1,
                is_pull_request: false,
                head_sha: None,
                push_branch: None,
                allowed_models: vec!["claude-sonnet-4-5".into()],
                // Enough for every request of the run.
                max_cost_usd: "100000".into(),
                prices: vec![],
                protected_paths: vec![],
                allow_hosts: vec![],
                expires_at: "2999-01-01T00:00:00Z".into(),
                triggered_at: None,
            },
            github_token: String::from("ghs_bench").into(),
            anthropic_key: String::from("sk-ant-bench").into(),
            expires_at: jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600),
            closed: false,
        },
    );
    registry.set_ready();
    let state = server::State::with_parts(
        flags.gateway,
        registry,
        Arc::new(InMemoryMeterStore::default()),
        claude_operator::telemetry::Metrics::default(),
    )
    .expect("gateway state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve(listener, Arc::new(state), std::future::pending()));

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let ttfb = |base: String| {
        let http = http.clone();
        async move {
            let start = Instant::now();
            let mut resp = http
                .post(format!("{base}/v1/messages"))
                .header("x-api-key", CAPABILITY)
                .header("anthropic-version", "2023-06-01")
                .header("content-type", "application/json")
                .body(BODY)
                .send()
                .await
                .expect("request");
            assert!(resp.status().is_success(), "{}", resp.status());
            let first = resp.chunk().await.expect("first chunk");
            let elapsed = start.elapsed();
            assert!(first.is_some());
            while resp.chunk().await.expect("rest").is_some() {}
            elapsed
        }
    };
    // Interleaved, so both paths see the same machine load.
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for i in 0..args.requests + 20 {
        let d = ttfb(fake.base_url.clone()).await;
        let g = ttfb(gateway.clone()).await;
        if i >= 20 {
            direct.push(d);
            through.push(g);
        }
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1000.0
    };
    let (d50, d99) = (pct(&mut direct, 0.50), pct(&mut direct, 0.99));
    let (g50, g99) = (pct(&mut through, 0.50), pct(&mut through, 0.99));
    println!(
        "{}",
        serde_json::json!({
            "benchmark": "gateway_time_to_first_byte",
            "requests": args.requests,
            "meter": "in-memory",
            "direct_ms": {"p50": d50, "p99": d99},
            "gateway_ms": {"p50": g50, "p99": g99},
            "added_ms": {"p50": g50 - d50, "p99": g99 - d99},
            "ratio": {"p50": g50 / d50, "p99": g99 / d99},
        })
    );
}
