//! Tests of the model proxy: the pure decisions, and the whole gateway
//! (server, registry, meter, model) against a fake Messages API on loopback.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Parser;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::*;
use crate::api::ModelPrice;
use crate::cli::GatewayArgs;
use crate::gateway::meter::tranche::{self, TrancheMeter};
use crate::gateway::meter::{InMemoryMeterStore, MeterStore};
use crate::gateway::registry::Registry;
use crate::gateway::registry::tests::facts;
use crate::grant::GrantFacts;
use crate::telemetry::Metrics;

pub(crate) fn grant_with(facts: GrantFacts) -> Grant {
    Grant {
        secret_name: format!("grant-{}", facts.run),
        expires_at: facts.expires_at.parse().unwrap(),
        facts,
        github_token: SecretString::from("ghs_secrettoken"),
        anthropic_key: SecretString::from("sk-ant-REALKEY"),
        closed: false,
    }
}

/// A price of $1 per million tokens of every kind: one micro-dollar a token.
fn unit_price(model: &str) -> ModelPrice {
    ModelPrice {
        model: model.into(),
        input_usd: "1".into(),
        output_usd: "1".into(),
        cache_write_5m_usd: "1".into(),
        cache_write_1h_usd: "1".into(),
        cache_read_usd: "1".into(),
    }
}

fn prices(input: &str, output: &str, w5m: &str, w1h: &str, read: &str) -> ModelPrices {
    ModelPrices::from_override(&ModelPrice {
        model: "m".into(),
        input_usd: input.into(),
        output_usd: output.into(),
        cache_write_5m_usd: w5m.into(),
        cache_write_1h_usd: w1h.into(),
        cache_read_usd: read.into(),
    })
    .unwrap()
}

#[test]
fn requests_are_read_or_refused_as_malformed() {
    let ok = |b: &str| parse_request(b.as_bytes()).map(|(_, r)| r);
    assert_eq!(
        ok(r#"{"model":"m","max_tokens":5,"stream":true}"#).unwrap(),
        ModelRequest {
            model: "m".into(),
            max_tokens: Some(5),
            stream: true
        }
    );
    assert_eq!(ok(r#"{"model":"m"}"#).unwrap().max_tokens, None);
    for bad in [
        "",
        "[]",
        "{",
        r#"{"max_tokens":5}"#,
        r#"{"model":""}"#,
        r#"{"model":"m","max_tokens":-1}"#,
        r#"{"model":"m","max_tokens":"5"}"#,
    ] {
        let err = ok(bad).expect_err(bad);
        assert_eq!(err.reason, reasons::MALFORMED, "{bad}");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }
}

#[test]
fn models_are_matched_against_the_grant_globs() {
    let globs = vec!["claude-sonnet-4-5*".to_owned(), "claude-haiku-4-5".to_owned()];
    for (model, allowed) in [
        ("claude-sonnet-4-5", true),
        ("claude-sonnet-4-5-20250929", true),
        ("claude-haiku-4-5", true),
        ("claude-haiku-4-5-20251001", false),
        ("claude-opus-4-5", false),
        ("", false),
    ] {
        assert_eq!(model_allowed(model, &globs), allowed, "{model}");
    }
    assert!(
        !model_allowed("x", &["[".to_owned()]),
        "an invalid glob matches nothing"
    );
    assert!(!model_allowed("x", &[]));
}

#[test]
fn the_worst_case_prices_every_byte_at_the_dearest_input_price() {
    // input 3, output 15, 1h write 6 (the dearest input-side price).
    let p = prices("3", "15", "3.75", "6", "0.30");
    // (1000 + 512) tokens at $6/M + 100 at $15/M = 9072 + 1500 micro-dollars.
    assert_eq!(worst_case_micros(1000, 100, &p), Some(10_572));
    assert_eq!(worst_case_micros(0, 0, &p), Some(3_072));
    assert_eq!(worst_case_micros(u64::MAX, u64::MAX, &p), None);
}

#[test]
fn requests_are_fitted_into_what_is_left() {
    let p = prices("1", "1", "1", "1", "1");
    // body bytes, max_tokens, remaining => fit (the overhead is 512 tokens)
    for (body, max_tokens, remaining, expected) in [
        (488, 1000, 2000, Fit::Fits),
        (488, 1000, 1999, Fit::Clamp(999)),
        (488, 1000, 1064, Fit::Clamp(64)),
        (488, 1000, 1063, Fit::Exhausted),
        (488, 1000, 0, Fit::Exhausted),
        (5000, 1000, 1000, Fit::Exhausted),
        // A small max_tokens is kept if it fits at all.
        (488, 10, 1010, Fit::Fits),
        (488, 10, 1009, Fit::Exhausted),
    ] {
        assert_eq!(
            fit(body, max_tokens, &p, remaining),
            expected,
            "{body} {max_tokens} {remaining}"
        );
        if let Fit::Clamp(n) = expected {
            assert!(worst_case_micros(body, n, &p).unwrap() <= remaining);
        }
    }
}

#[test]
fn sse_usage_is_metered_cumulatively() {
    let mut m = Metered::default();
    m.event(
        "message_start",
        r#"{"type":"message_start","message":{"model":"claude-sonnet-4-5-20250929","usage":{"input_tokens":100,"cache_creation_input_tokens":50,"cache_creation":{"ephemeral_1h_input_tokens":20},"cache_read_input_tokens":30,"output_tokens":1}}}"#,
    );
    m.event(
        "content_block_start",
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"Bash","input":{}}}"#,
    );
    m.event(
        "message_delta",
        r#"{"type":"message_delta","usage":{"output_tokens":40}}"#,
    );
    m.event(
        "message_delta",
        r#"{"type":"message_delta","usage":{"output_tokens":75}}"#,
    );
    m.event("ping", "not json");
    assert!(!m.complete);
    m.event("message_stop", r#"{"type":"message_stop"}"#);
    assert!(m.complete);
    assert_eq!(m.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(m.last_tool.as_deref(), Some("Bash"));
    assert_eq!(
        m.usage,
        ModelUsage {
            input_tokens: 100,
            output_tokens: 75,
            cache_creation_input_tokens: 50,
            cache_creation_1h_input_tokens: 20,
            cache_read_input_tokens: 30,
        }
    );
    // $3 in, $15 out, $3.75 5m write, $6 1h write, $0.30 read, per million:
    // 300 + 1125 + 112.5 + 120 + 9 = 1666.5 -> 1667 micro-dollars.
    let table = PriceTable::builtin();
    assert_eq!(charge(&m, "claude-sonnet-4-5", &table, 10_000), 1_667);
    // Broken off before message_stop: at least the reservation.
    let cut = Metered {
        complete: false,
        ..m.clone()
    };
    assert_eq!(charge(&cut, "claude-sonnet-4-5", &table, 10_000), 10_000);
    assert_eq!(charge(&cut, "claude-sonnet-4-5", &table, 1_000), 1_667);
    // A model without a price: the reservation.
    let unknown = Metered {
        model: Some("claude-future-9".into()),
        ..m
    };
    assert_eq!(charge(&unknown, "claude-sonnet-4-5", &table, 10_000), 10_000);
}

// ---------------------------------------------------------------------------
// The whole gateway against a fake Messages API.

#[derive(Clone, Debug)]
struct Seen {
    headers: HeaderMap,
    body: Value,
    path: String,
}

#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Input tokens every answer reports.
    input_tokens: u64,
    /// Output tokens answered (at most max_tokens).
    output_tokens: u64,
    /// Answer with this status and an error body instead.
    fail: Option<u16>,
    /// Stop the stream before message_stop.
    truncate: bool,
}

/// The SSE bytes the fake answers for `model` with these usage figures.
fn sse_bytes(model: &str, input: u64, output: u64, truncate: bool) -> Vec<Bytes> {
    let mut chunks = vec![
        format!(
            "event: message_start\ndata: {}\n\n",
            json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":model,"content":[],"usage":{"input_tokens":input,"output_tokens":1}}})
        ),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_owned(),
        // One event split across two chunks.
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,".to_owned(),
        "\"delta\":{\"type\":\"text_delta\",\"text\":\"h\u{e9}llo\"}}\n\n".to_owned(),
        "event: ping\ndata: {\"type\": \"ping\"}\n\n".to_owned(),
        format!(
            "event: message_delta\ndata: {}\n\n",
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":output}})
        ),
    ];
    if !truncate {
        chunks.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned());
    }
    chunks.into_iter().map(Bytes::from).collect()
}

async fn fake_messages(
    Extract(fake): Extract<Fake>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.seen.lock().unwrap().push(Seen {
        headers: headers.clone(),
        body: body.clone(),
        path: uri.to_string(),
    });
    if uri.path().ends_with("count_tokens") {
        return axum::Json(json!({"input_tokens": 42})).into_response();
    }
    if let Some(code) = fake.fail {
        let status = StatusCode::from_u16(code).unwrap();
        return (
            status,
            axum::Json(json!({"type":"error","error":{"type":"overloaded_error","message":"busy"}})),
        )
            .into_response();
    }
    let model = body["model"].as_str().unwrap_or("?").to_owned();
    let output = fake.output_tokens.min(body["max_tokens"].as_u64().unwrap_or(0));
    if body["stream"].as_bool() == Some(true) {
        let chunks = sse_bytes(&model, fake.input_tokens, output, fake.truncate);
        let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>));
        return Response::builder()
            .header("content-type", "text/event-stream")
            .header("request-id", "req_fake")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    axum::Json(json!({
        "id":"msg_1","type":"message","role":"assistant","model":model,
        "content":[{"type":"tool_use","id":"t1","name":"Read","input":{}}],
        "usage":{"input_tokens":fake.input_tokens,"output_tokens":output}
    }))
    .into_response()
}

async fn start_fake(fake: Fake) -> String {
    let app = Router::new()
        .route("/v1/messages", post(fake_messages))
        .route("/v1/messages/count_tokens", post(fake_messages))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn fake(input_tokens: u64, output_tokens: u64) -> Fake {
    Fake {
        seen: Arc::default(),
        input_tokens,
        output_tokens,
        fail: None,
        truncate: false,
    }
}

#[derive(Parser)]
struct ArgsOnly {
    #[command(flatten)]
    gateway: GatewayArgs,
}

fn args(upstream: &str) -> GatewayArgs {
    ArgsOnly::parse_from([
        "test",
        "--anthropic-api-url",
        upstream,
        "--gateway-namespace",
        "gw",
        "--gateway-replica",
        "r1",
    ])
    .gateway
}

/// A gateway replica on loopback; stops when dropped.
struct Gateway {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_gateway(upstream: &str, registry: Registry, meter: Arc<dyn MeterStore>) -> Gateway {
    let state = crate::gateway::server::State::with_parts(args(upstream), registry, meter, Metrics::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(crate::gateway::server::serve(listener, Arc::new(state), async move {
        let _ = rx.await;
    }));
    Gateway {
        url: format!("http://{addr}"),
        _stop: tx,
    }
}

const CAP: &str = "cocap_testcapability";

/// A registry with one open grant for [`CAP`] (model `test-model*` at a
/// micro-dollar a token, cap `max_cost`).
fn registry(max_cost: &str) -> (Registry, Grant) {
    let mut f = facts();
    f.allowed_models = vec!["test-model*".into(), "claude-sonnet-4-5*".into()];
    f.prices = vec![unit_price("test-model")];
    f.max_cost_usd = max_cost.into();
    let grant = grant_with(f);
    let reg = Registry::default();
    reg.insert(crate::grant::capability_sha256(CAP), grant.clone());
    reg.set_ready();
    (reg, grant)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A message request body of about `pad` bytes.
fn message(model: &str, max_tokens: u64, stream: bool, pad: usize) -> Value {
    json!({
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role":"user","content": "x".repeat(pad)}],
    })
}

async fn post_message(gw: &Gateway, cap: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/messages?beta=true", gw.url))
        .header("x-api-key", cap)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "tools-2024")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Waits until the meter of `grant` has settled `requests` requests (the
/// streaming settle runs after the body ends).
async fn settled(store: &InMemoryMeterStore, grant: &Grant, requests: u32) -> crate::grant::Meter {
    for _ in 0..500 {
        let m = store.meter(&grant.secret_name);
        if m.requests >= requests && m.in_flight.is_empty() {
            return m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!(
        "the meter never settled {requests} requests: {:?}",
        store.meter(&grant.secret_name)
    );
}

#[tokio::test]
async fn streams_pass_through_byte_identical_and_are_metered_exactly() {
    let f = fake(1_000, 300);
    let upstream = start_fake(f.clone()).await;
    let (reg, grant) = registry("5");
    let store = Arc::new(InMemoryMeterStore::default());
    let gw = start_gateway(&upstream, reg, store.clone()).await;

    let resp = post_message(&gw, CAP, &message("test-model", 1_000, true, 100)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["request-id"], "req_fake");
    let got = resp.bytes().await.unwrap();
    let expected: Vec<u8> = sse_bytes("test-model", 1_000, 300, false).concat();
    assert_eq!(got.as_ref(), expected.as_slice());

    let m = settled(&store, &grant, 1).await;
    // 1000 input + 300 output at a micro-dollar each.
    assert_eq!(m.spent_micros, 1_300);
    assert_eq!(m.usage["test-model"].output_tokens, 300);

    // The key went upstream, the capability never did; the query and
    // anthropic headers were forwarded.
    let seen = f.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-api-key"], "sk-ant-REALKEY");
    assert_eq!(seen[0].headers["anthropic-version"], "2023-06-01");
    assert_eq!(seen[0].headers["anthropic-beta"], "tools-2024");
    assert_eq!(seen[0].path, "/v1/messages?beta=true");
    for (name, value) in &seen[0].headers {
        assert!(!value.to_str().unwrap_or("").contains(CAP), "capability in {name}");
    }
    assert!(!seen[0].body.to_string().contains(CAP));
}

#[tokio::test]
async fn non_streamed_answers_are_metered_from_their_usage() {
    let f = fake(2_000, 500);
    let upstream = start_fake(f.clone()).await;
    let (reg, grant) = registry("5");
    let store = Arc::new(InMemoryMeterStore::default());
    let gw = start_gateway(&upstream, reg, store.clone()).await;
    // The Authorization: Bearer form works too.
    let resp = client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(CAP)
        .json(&message("test-model", 1_000, false, 10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["usage"]["output_tokens"], 500);
    let m = settled(&store, &grant, 1).await;
    assert_eq!(m.spent_micros, 2_500);
    assert_eq!(m.last_tool.as_deref(), Some("Read"));
    let seen = f.seen.lock().unwrap().clone();
    assert!(!seen[0].headers.contains_key("authorization"));
}

#[tokio::test]
async fn a_small_cap_clamps_then_refuses_and_is_never_exceeded() {
    let store = Arc::new(InMemoryMeterStore::default());
    small_cap_clamps_then_refuses(store.clone(), store).await;
}

#[tokio::test]
async fn a_small_cap_clamps_then_refuses_with_a_replicas_tranche_too() {
    let store = Arc::new(InMemoryMeterStore::default());
    let meter = Arc::new(TrancheMeter::new(store.clone(), tranche::incarnation("gw-a")));
    small_cap_clamps_then_refuses(meter, store).await;
}

/// `meter` serves the gateway; `store` is where its meter is recorded.
async fn small_cap_clamps_then_refuses(meter: Arc<dyn MeterStore>, store: Arc<InMemoryMeterStore>) {
    // Every answer: 1000 input tokens and up to 5000 output tokens: $0.006.
    let upstream = start_fake(fake(1_000, 5_000)).await;
    let (reg, grant) = registry("0.01");
    let gw = start_gateway(&upstream, reg, meter).await;
    // ~1100 bytes of body: 1000 input tokens are honest for it.
    let body = message("test-model", 5_000, true, 1_000);

    let first = post_message(&gw, CAP, &body).await;
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    assert_eq!(settled(&store, &grant, 1).await.spent_micros, 6_000);

    // $0.004 left: the second is clamped to what fits.
    let second = post_message(&gw, CAP, &body).await;
    assert_eq!(second.status(), 200);
    second.bytes().await.unwrap();
    let m = settled(&store, &grant, 2).await;
    assert!(m.spent_micros <= 10_000, "{m:?}");
    assert!(m.spent_micros > 6_000 + 1_000, "the second ran clamped: {m:?}");

    // What is left cannot carry the body: refused before forwarding.
    let third = post_message(&gw, CAP, &body).await;
    assert_eq!(third.status(), 400);
    let err: Value = third.json().await.unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert_eq!(
        err["error"]["message"],
        "claude-operator: the run's budget of $0.01 is spent"
    );
    let m = store.meter(&grant.secret_name);
    assert_eq!(m.requests, 2);
    assert!(m.spent_micros <= 10_000);
}

#[tokio::test]
async fn concurrent_requests_on_two_replicas_share_one_cap() {
    let store: Arc<InMemoryMeterStore> = Arc::new(InMemoryMeterStore::default());
    let m = two_replicas_share_one_cap([store.clone(), store.clone()], store).await;
    assert!(m.in_flight.is_empty(), "{m:?}");
}

#[tokio::test]
async fn concurrent_requests_on_two_replicas_tranches_share_one_cap() {
    let store: Arc<InMemoryMeterStore> = Arc::new(InMemoryMeterStore::default());
    let tranches =
        |name| -> Arc<dyn MeterStore> { Arc::new(TrancheMeter::new(store.clone(), tranche::incarnation(name))) };
    let m = two_replicas_share_one_cap([tranches("gw-a"), tranches("gw-b")], store.clone()).await;
    assert!(m.worst_case_micros() <= 20_000, "{m:?}");
}

/// Eight concurrent requests over two gateways with `meters` against a
/// $0.02 cap recorded in `store`.
async fn two_replicas_share_one_cap(
    meters: [Arc<dyn MeterStore>; 2],
    store: Arc<InMemoryMeterStore>,
) -> crate::grant::Meter {
    let f = fake(1_000, 5_000);
    let upstream = start_fake(f.clone()).await;
    let (reg, grant) = registry("0.02");
    let [meter_a, meter_b] = meters;
    let a = start_gateway(&upstream, reg.clone(), meter_a).await;
    let b = start_gateway(&upstream, reg, meter_b).await;
    let body = message("test-model", 5_000, true, 1_000);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let url = if i % 2 == 0 { a.url.clone() } else { b.url.clone() };
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let gw = Gateway {
                url,
                _stop: tokio::sync::oneshot::channel().0,
            };
            let resp = post_message(&gw, CAP, &body).await;
            let status = resp.status().as_u16();
            let _ = resp.bytes().await;
            status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let served = statuses.iter().filter(|s| **s == 200).count() as u32;
    assert!(served >= 2, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 400), "{statuses:?}");
    let m = settled(&store, &grant, served).await;
    assert!(m.spent_micros <= 20_000, "{m:?}");
    assert_eq!(f.seen.lock().unwrap().len() as u32, served);
    m
}

#[tokio::test]
async fn a_broken_stream_is_charged_its_reservation() {
    let mut f = fake(1_000, 300);
    f.truncate = true;
    let upstream = start_fake(f).await;
    let (reg, grant) = registry("5");
    let store = Arc::new(InMemoryMeterStore::default());
    let gw = start_gateway(&upstream, reg, store.clone()).await;
    let body = message("test-model", 1_000, true, 100);
    let resp = post_message(&gw, CAP, &body).await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let m = settled(&store, &grant, 1).await;
    let len = serde_json::to_vec(&body).unwrap().len() as u64;
    // Worst case: (body + overhead) input + max_tokens output.
    assert_eq!(m.spent_micros, len + INPUT_OVERHEAD_TOKENS + 1_000);
}

#[tokio::test]
async fn upstream_errors_pass_through_and_cost_nothing() {
    let mut f = fake(1_000, 300);
    f.fail = Some(529);
    let upstream = start_fake(f).await;
    let (reg, grant) = registry("5");
    let store = Arc::new(InMemoryMeterStore::default());
    let gw = start_gateway(&upstream, reg, store.clone()).await;
    let resp = post_message(&gw, CAP, &message("test-model", 1_000, true, 10)).await;
    assert_eq!(resp.status(), 529);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "overloaded_error");
    let m = settled(&store, &grant, 1).await;
    assert_eq!(m.spent_micros, 0);
    assert_eq!(m.worst_case_micros(), 0);
}

#[tokio::test]
async fn refusals_before_forwarding() {
    let f = fake(1_000, 300);
    let upstream = start_fake(f.clone()).await;
    let (reg, grant) = registry("5");
    // A closed run's grant.
    let mut closed = grant_with(facts());
    closed.secret_name = "grant-closed".into();
    closed.closed = true;
    reg.insert(crate::grant::capability_sha256("cocap_closed"), closed);
    let mut expired = grant_with(facts());
    expired.secret_name = "grant-expired".into();
    expired.expires_at = "2020-01-01T00:00:00Z".parse().unwrap();
    reg.insert(crate::grant::capability_sha256("cocap_expired"), expired);
    let store = Arc::new(InMemoryMeterStore::default());
    let gw = start_gateway(&upstream, reg, store.clone()).await;
    let ok = message("test-model", 100, false, 10);

    for (cap, body, status, kind, reason_text) in [
        ("cocap_unknown", ok.clone(), 401, "authentication_error", "capability"),
        ("", ok.clone(), 401, "authentication_error", "capability"),
        ("cocap_closed", ok.clone(), 403, "permission_error", "ended"),
        ("cocap_expired", ok.clone(), 403, "permission_error", "ended"),
        (
            CAP,
            message("claude-opus-4-5", 100, false, 10),
            400,
            "invalid_request_error",
            "not allowed",
        ),
        // Allowed by glob but priced nowhere: refused, fail closed.
        (
            CAP,
            message("test-model-x", 100, false, 10),
            400,
            "invalid_request_error",
            "has no price",
        ),
        (
            CAP,
            json!({"model":"test-model"}),
            400,
            "invalid_request_error",
            "max_tokens",
        ),
    ] {
        let resp = post_message(&gw, cap, &body).await;
        assert_eq!(resp.status().as_u16(), status, "{cap} {body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["type"], kind, "{cap} {body}");
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains(reason_text), "{msg}");
        assert!(!msg.contains("cocap_"), "{msg}");
    }
    // Allowed by glob but priced: test-model-x has no price (prefix override
    // is `test-model` exactly), so nothing went upstream at all.
    assert!(f.seen.lock().unwrap().is_empty());
    assert_eq!(store.meter(&grant.secret_name).requests, 0);

    // Too large: 413, Anthropic-shaped.
    let big = vec![b' '; MAX_BODY_BYTES + 1];
    let resp = client()
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", CAP)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["type"], "error");

    // Too large, streamed without a declared length: 413 all the same.
    let chunks = futures::stream::iter((0..33).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 1024 * 1024]))));
    let resp = client()
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", CAP)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    // Unknown paths and methods: 404.
    let resp = client().get(format!("{}/v2/other", gw.url)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = client().get(format!("{}/v1/messages", gw.url)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn count_tokens_is_checked_and_forwarded_unmetered() {
    let f = fake(1_000, 300);
    let upstream = start_fake(f.clone()).await;
    let (reg, grant) = registry("5");
    let store = Arc::new(InMemoryMeterStore::default());
    let gw = start_gateway(&upstream, reg, store.clone()).await;
    let resp = client()
        .post(format!("{}/v1/messages/count_tokens", gw.url))
        .header("x-api-key", CAP)
        .json(&json!({"model":"test-model","messages":[]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["input_tokens"], 42);
    let resp = client()
        .post(format!("{}/v1/messages/count_tokens", gw.url))
        .header("x-api-key", CAP)
        .json(&json!({"model":"claude-opus-4-5","messages":[]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(f.seen.lock().unwrap().len(), 1);
    assert_eq!(f.seen.lock().unwrap()[0].headers["x-api-key"], "sk-ant-REALKEY");
    assert_eq!(store.meter(&grant.secret_name), crate::grant::Meter::default());
}

#[tokio::test]
async fn the_git_and_connect_doors_challenge_for_credentials() {
    let (reg, _) = registry("5");
    let gw = start_gateway("http://127.0.0.1:9", reg, Arc::new(InMemoryMeterStore::default())).await;
    let resp = client()
        .get(format!(
            "{}/git/acme/widgets.git/info/refs?service=git-upload-pack",
            gw.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let resp = client()
        .get(format!("{}/github/repos/acme/widgets", gw.url))
        .header("authorization", "token cocap_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // CONNECT without Proxy-Authorization: 407 (raw, as a proxy client sends it).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"CONNECT registry.npmjs.org:443 HTTP/1.1\r\nHost: registry.npmjs.org:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 407"), "{head}");
    assert!(head.contains("proxy-authenticate: basic"), "{head}");
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_capability_or_key_reaches_the_logs() {
    let logs = Capture::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let upstream = start_fake(fake(1_000, 300)).await;
    let (reg, grant) = registry("5");
    let store = Arc::new(InMemoryMeterStore::default());
    let gw = start_gateway(&upstream, reg, store.clone()).await;
    let captured = |logs: &Capture| {
        let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
        text.contains("cost_micros=1300") && text.contains("ModelNotAllowed") && text.contains("Unauthenticated")
    };
    // Tests on other threads may cache "no interest" in the audit callsites
    // while no subscriber exists (tracing's global interest cache): rebuild
    // it and repeat the requests until this subscriber has seen them.
    for round in 1..=20u32 {
        tracing::callsite::rebuild_interest_cache();
        let resp = post_message(&gw, CAP, &message("test-model", 1_000, true, 10)).await;
        resp.bytes().await.unwrap();
        settled(&store, &grant, round).await;
        post_message(&gw, "cocap_someoneelse", &message("test-model", 1_000, true, 10)).await;
        post_message(&gw, CAP, &message("claude-opus-4-5", 1_000, true, 10)).await;
        // The streaming audit line follows the settle.
        for _ in 0..50 {
            if captured(&logs) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if captured(&logs) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(text.matches("gateway request").count() >= 3, "{text}");
    assert!(text.contains("cost_micros=1300"), "{text}");
    assert!(
        text.contains("ModelNotAllowed") && text.contains("Unauthenticated"),
        "{text}"
    );
    for secret in [CAP, "cocap_someoneelse", "sk-ant-REALKEY", "ghs_secrettoken"] {
        assert!(!text.contains(secret), "{secret} in logs:\n{text}");
    }
}
