//! The gateway against the local control plane: the grant registry follows
//! the grant Secrets, and the meter on the grant Secret holds the run's cap
//! across two gateway replicas under concurrent requests, with the
//! replicas' tranches of the budget (also when one is killed holding one),
//! and an automatic review run posts one review whichever replicas it asks.
//! Run with `make e2e` (needs `CLAUDE_OPERATOR_E2E_KUBECONFIG`).

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::post;
use clap::Parser;
use claude_operator::cli::GatewayArgs;
use claude_operator::gateway::Gateway;
use claude_operator::gateway::meter::tranche::{self, TrancheMeter};
use claude_operator::gateway::meter::{KubeMeterStore, MeterError, MeterStore, read_meter};
use claude_operator::gateway::registry::{Registry, parse_grant};
use claude_operator::grant::{self, GrantFacts};
use claude_operator::report::ModelUsage;
use claude_operator::telemetry::Metrics;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::*;

const CAP: &str = "cocap_e2e_gateway_capability";

fn facts(max_cost: &str) -> GrantFacts {
    serde_json::from_value(json!({
        "namespace": "team-a",
        "run": "gh-e2e",
        "runUid": "uid",
        "policy": "default",
        "repository": "acme/widgets",
        "number": 1,
        "isPullRequest": false,
        "allowedModels": ["test-model"],
        "maxCostUsd": max_cost,
        "prices": [{"model": "test-model", "inputUSD": "1", "outputUSD": "1",
                    "cacheWrite5mUSD": "1", "cacheWrite1hUSD": "1", "cacheReadUSD": "1"}],
        "expiresAt": "2099-01-01T00:00:00Z",
    }))
    .unwrap()
}

async fn create_grant(client: &kube::Client, ns: &str, name: &str, cap: &str, facts: &GrantFacts) -> Secret {
    let mut data = BTreeMap::new();
    let mut put = |k: &str, v: &[u8]| data.insert(k.to_owned(), ByteString(v.to_vec()));
    put(grant::KEY_CAPABILITY_SHA256, grant::capability_sha256(cap).as_bytes());
    put(grant::KEY_FACTS, &serde_json::to_vec(facts).unwrap());
    put(grant::KEY_GITHUB_TOKEN, b"ghs_e2e");
    put(grant::KEY_ANTHROPIC_API_KEY, b"sk-ant-e2e");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(grant::LABEL_GRANT.to_owned(), "true".to_owned())].into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap()
}

#[tokio::test]
async fn two_meter_stores_share_one_cap_on_the_grant_secret() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "gw-meter").await;
    let secret = create_grant(&client, &ns.name, "grant-meter", CAP, &facts("0.01")).await;
    let (_, grant) = parse_grant(&secret).unwrap();
    let grant = Arc::new(grant);
    let a = Arc::new(KubeMeterStore::new(client.clone(), &ns.name));
    let b = Arc::new(KubeMeterStore::new(super_client().await, &ns.name));

    // 16 concurrent reservations of $0.001 against a $0.01 cap, from two replicas.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let grant = grant.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("r{i}");
            (id.clone(), store.reserve(&grant, &id, 1_000, 10_000).await)
        }));
    }
    let mut reserved = Vec::new();
    for t in tasks {
        let (id, result) = t.await.unwrap();
        match result {
            Ok(_) => reserved.push(id),
            Err(MeterError::Insufficient { .. }) => {}
            Err(other) => panic!("{id}: {other}"),
        }
    }
    assert_eq!(reserved.len(), 10, "{reserved:?}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let meter = read_meter(&secrets.get("grant-meter").await.unwrap()).unwrap();
    assert_eq!(meter.worst_case_micros(), 10_000);

    // Settling releases the reservations and keeps what was spent.
    let usage = ModelUsage {
        input_tokens: 500,
        output_tokens: 400,
        ..ModelUsage::default()
    };
    for (i, id) in reserved.iter().enumerate() {
        let store = if i % 2 == 0 { &a } else { &b };
        store.settle(&grant, id, "test-model", &usage, 900, None).await.unwrap();
    }
    let meter = read_meter(&secrets.get("grant-meter").await.unwrap()).unwrap();
    assert_eq!(meter.spent_micros, 9_000);
    assert!(meter.in_flight.is_empty());
    assert_eq!(meter.requests, 10);
    assert_eq!(meter.usage["test-model"].output_tokens, 4_000);

    // Closed by the controller: no new reservation, settling still counts.
    let closed = json!({"metadata": {"annotations": {grant::ANNOTATION_CLOSED: "2026-01-01T00:00:00Z"}}});
    secrets
        .patch("grant-meter", &PatchParams::default(), &Patch::Merge(&closed))
        .await
        .unwrap();
    assert_eq!(a.reserve(&grant, "late", 1, 10_000).await, Err(MeterError::Closed));
    b.settle(&grant, "unknown", "test-model", &usage, 100, None)
        .await
        .unwrap();
    let meter = read_meter(&secrets.get("grant-meter").await.unwrap()).unwrap();
    assert_eq!(meter.spent_micros, 9_100);
}

/// A second, independent client (another replica's connection).
async fn super_client() -> kube::Client {
    client().await
}

#[derive(Parser)]
struct ArgsOnly {
    #[command(flatten)]
    gateway: GatewayArgs,
}

/// A fake Messages API: every answer reports 1000 input tokens and up to
/// 5000 output tokens (at most max_tokens), non-streamed.
async fn fake_messages(State(count): State<Arc<Mutex<u32>>>, body: Bytes) -> axum::response::Response {
    *count.lock().unwrap() += 1;
    let body: Value = serde_json::from_slice(&body).unwrap();
    let output = body["max_tokens"].as_u64().unwrap().min(5_000);
    axum::Json(json!({
        "id": "msg", "type": "message", "role": "assistant", "model": body["model"],
        "content": [{"type": "text", "text": "ok"}],
        "usage": {"input_tokens": 1_000, "output_tokens": output},
    }))
    .into_response()
}

/// Two real gateway replicas ("gw-a", "gw-b") serving the grants of `ns`
/// on loopback, with `upstream` flags: their URLs, and senders that stop
/// them (dropped: stopped).
async fn gateway_replicas(
    client: &kube::Client,
    ns: &str,
    upstream: &[&str],
) -> (Vec<String>, Vec<tokio::sync::oneshot::Sender<()>>) {
    let mut urls = Vec::new();
    let mut stops = Vec::new();
    for replica in ["gw-a", "gw-b"] {
        let mut argv = vec![
            "test",
            "--gateway-listen",
            "127.0.0.1:0",
            "--gateway-namespace",
            ns,
            "--gateway-replica",
            replica,
        ];
        argv.extend_from_slice(upstream);
        let args = ArgsOnly::parse_from(argv).gateway;
        let gw = Gateway::start(client.clone(), args, Metrics::default()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), gw.ready())
            .await
            .expect("the grants were listed");
        urls.push(format!("http://{}", gw.local_addr().unwrap()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        tokio::spawn(gw.serve(async move {
            let _ = rx.await;
        }));
    }
    (urls, stops)
}

/// A local upstream answering POST `path` with `handler`, which counts what
/// it served: its URL and the count.
async fn counting_upstream<H, T>(path: &str, handler: H) -> (String, Arc<Mutex<u32>>)
where
    H: axum::handler::Handler<T, Arc<Mutex<u32>>>,
    T: 'static,
{
    let count = Arc::new(Mutex::new(0u32));
    let app = Router::new().route(path, post(handler)).with_state(count.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (upstream, count)
}

/// Waits until `probe` of every replica (`urls`) answers `status`: each
/// knows the grant.
async fn every_replica_answers<P, F>(urls: &[String], probe: &P, status: u16)
where
    P: Fn(String) -> F,
    F: std::future::Future<Output = u16>,
{
    eventually(
        "every replica knows the grant",
        Duration::from_secs(30),
        || async move {
            for url in urls {
                if probe(url.clone()).await != status {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

#[tokio::test]
async fn two_gateway_replicas_follow_grants_and_hold_the_cap() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "gw-replicas").await;
    let (upstream, count) = counting_upstream("/v1/messages", fake_messages).await;

    let (urls, stops) = gateway_replicas(&client, &ns.name, &["--anthropic-api-url", &upstream]).await;

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let body = json!({
        "model": "test-model", "max_tokens": 5_000,
        "messages": [{"role": "user", "content": "x".repeat(1_000)}],
    });
    let post = |url: String| {
        let (http, body) = (http.clone(), body.clone());
        async move {
            http.post(format!("{url}/v1/messages"))
                .header("x-api-key", CAP)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };

    // A probe that authenticates but is refused before it could cost
    // anything (a model the grant does not allow): 401 until the replica
    // knows the grant, 400 after.
    let probe = |url: String| {
        let http = http.clone();
        async move {
            http.post(format!("{url}/v1/messages"))
                .header("x-api-key", CAP)
                .json(&json!({"model": "other-model", "max_tokens": 1, "messages": []}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // No grant yet: unauthenticated.
    assert_eq!(probe(urls[0].clone()).await, 401);
    create_grant(&client, &ns.name, "grant-gw", CAP, &facts("0.02")).await;
    every_replica_answers(&urls, &probe, 400).await;

    // Concurrent requests over both replicas until the budget is spent.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let fut = post(urls[i % 2].clone());
        tasks.push(tokio::spawn(async move { fut.await.status().as_u16() }));
    }
    for t in tasks {
        let status = t.await.unwrap();
        assert!(status == 200 || status == 400, "{status}");
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    // Settlements are written in the background: wait until all are.
    let served = *count.lock().unwrap();
    let meter = eventually("every request is settled on the meter", Duration::from_secs(30), || {
        let secrets = secrets.clone();
        async move {
            let meter = read_meter(&secrets.get("grant-gw").await.ok()?).ok()?;
            (meter.requests == served).then_some(meter)
        }
    })
    .await;
    assert!(meter.in_flight.is_empty(), "{meter:?}");
    assert!(meter.spent_micros <= 20_000, "{meter:?}");
    assert!(meter.worst_case_micros() <= 20_000, "{meter:?}");
    // At least two full requests ($0.006 each) fit in $0.02.
    assert!(meter.spent_micros >= 12_000, "{meter:?}");

    // The controller deletes the grant: the capability is dead on both.
    secrets.delete("grant-gw", &Default::default()).await.unwrap();
    eventually("both replicas forget the grant", Duration::from_secs(30), || {
        let probe = &probe;
        let urls = urls.clone();
        async move {
            for url in urls {
                if probe(url).await != 401 {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    drop(stops);
}

/// One gateway replica's meter: tranches on the grant Secrets of `ns`,
/// hearing the grant watch as the gateway's does. Dropped, it is killed:
/// it gives nothing back.
struct Replica {
    meter: Arc<TrancheMeter<KubeMeterStore>>,
    watch: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

async fn replica(ns: &str, name: &str) -> Replica {
    let client = client().await;
    let meter = Arc::new(TrancheMeter::new(
        KubeMeterStore::new(client.clone(), ns),
        tranche::incarnation(name),
    ));
    let registry = Registry::default();
    let ear = meter.clone();
    registry.listen(Arc::new(move |secret, deleted| ear.observe(secret, deleted)));
    let watch = tokio::spawn(registry.watch(client, ns));
    tokio::time::timeout(Duration::from_secs(30), registry.wait_ready())
        .await
        .expect("the grants were listed");
    Replica { meter, watch }
}

async fn close_grant(secrets: &Api<Secret>, name: &str) {
    let closed = json!({"metadata": {"annotations": {grant::ANNOTATION_CLOSED: "2026-01-01T00:00:00Z"}}});
    secrets
        .patch(name, &PatchParams::default(), &Patch::Merge(&closed))
        .await
        .unwrap();
}

/// Serves `n` concurrent requests (worst case $0.001, cost $0.0006) over
/// `replicas`; returns how many were served. Refusals for budget only.
async fn serve_concurrently(
    replicas: &[&Replica],
    grant: &Arc<claude_operator::gateway::Grant>,
    n: usize,
    tag: &str,
) -> u32 {
    let usage = ModelUsage {
        input_tokens: 100,
        output_tokens: 500,
        ..ModelUsage::default()
    };
    let mut tasks = Vec::new();
    for i in 0..n {
        let (meter, grant, usage) = (replicas[i % replicas.len()].meter.clone(), grant.clone(), usage.clone());
        let id = format!("{tag}{i}");
        tasks.push(tokio::spawn(async move {
            match meter.reserve(&grant, &id, 1_000, 10_000).await {
                Ok(_) => {
                    meter
                        .settle(&grant, &id, "test-model", &usage, 600, None)
                        .await
                        .unwrap();
                    1
                }
                Err(MeterError::Insufficient { .. }) => 0,
                Err(other) => panic!("{id}: {other}"),
            }
        }));
    }
    let mut served = 0;
    for t in tasks {
        served += t.await.unwrap();
    }
    served
}

#[tokio::test]
async fn two_replicas_tranches_hold_the_cap_and_go_back_when_the_run_ends() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "gw-tranche").await;
    let secret = create_grant(&client, &ns.name, "grant-tranche", CAP, &facts("0.01")).await;
    let grant = Arc::new(parse_grant(&secret).unwrap().1);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let (a, b) = (replica(&ns.name, "gw-a").await, replica(&ns.name, "gw-b").await);

    // 16 concurrent requests of $0.001 worst case against a $0.01 cap.
    let served = serve_concurrently(&[&a, &b], &grant, 16, "r").await;
    a.meter.flushed().await;
    b.meter.flushed().await;
    let meter = read_meter(&secrets.get("grant-tranche").await.unwrap()).unwrap();
    assert!(served >= 10, "at least what fits at once: {served} {meter:?}");
    assert_eq!(meter.requests, served, "{meter:?}");
    assert_eq!(meter.spent_micros, 600 * u64::from(served), "{meter:?}");
    assert_eq!(meter.usage["test-model"].output_tokens, 500 * u64::from(served));
    assert!(meter.worst_case_micros() <= 10_000, "{meter:?}");
    assert!(meter.wants.is_empty(), "{meter:?}");

    // The controller closes the grant: no new request, and both replicas
    // give their tranches back, so the run is charged what it spent.
    close_grant(&secrets, "grant-tranche").await;
    let meter = eventually("both tranches went back", Duration::from_secs(30), || {
        let secrets = secrets.clone();
        async move {
            let meter = read_meter(&secrets.get("grant-tranche").await.ok()?).ok()?;
            (meter.open() == 0).then_some(meter)
        }
    })
    .await;
    assert_eq!(meter.worst_case_micros(), 600 * u64::from(served), "{meter:?}");
    let charged = claude_operator::cost::metered_cost(&meter, true);
    assert_eq!(charged.turns, served as i32);
    let late = a.meter.reserve(&grant, "late", 1, 10_000).await;
    assert_eq!(late, Err(MeterError::Closed));
}

#[tokio::test]
async fn a_replica_killed_holding_a_tranche_makes_the_cap_stricter_and_charges_nothing_twice() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "gw-killed").await;
    let secret = create_grant(&client, &ns.name, "grant-killed", CAP, &facts("0.01")).await;
    let grant = Arc::new(parse_grant(&secret).unwrap().1);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let (a, b) = (replica(&ns.name, "gw-a").await, replica(&ns.name, "gw-b").await);

    // a serves two requests, then is killed with a third in flight.
    let served_a = serve_concurrently(&[&a], &grant, 2, "a").await;
    assert_eq!(served_a, 2);
    a.meter.reserve(&grant, "a-in-flight", 1_000, 10_000).await.unwrap();
    a.meter.flushed().await;
    let before = read_meter(&secrets.get("grant-killed").await.unwrap()).unwrap();
    let a_holder = a.meter.holder().to_owned();
    let held = before.tranches[&a_holder].reserved_micros;
    assert!(held >= 1_000, "a's tranche covers its request in flight: {before:?}");
    assert_eq!((before.spent_micros, before.requests), (1_200, 2));
    drop(a);

    // b serves what is left beside a's tranche, never into it.
    let served_b = serve_concurrently(&[&b], &grant, 12, "b").await;
    b.meter.flushed().await;
    assert!(served_b >= 1, "{served_b}");
    close_grant(&secrets, "grant-killed").await;
    let meter = eventually("b's tranche went back", Duration::from_secs(30), || {
        let (secrets, holder) = (secrets.clone(), b.meter.holder().to_owned());
        async move {
            let meter = read_meter(&secrets.get("grant-killed").await.ok()?).ok()?;
            let held = meter.tranches.get(&holder).map(|t| t.reserved_micros).unwrap_or(0);
            (held == 0).then_some(meter)
        }
    })
    .await;
    let spent = 600 * u64::from(served_a + served_b);
    assert_eq!(meter.spent_micros, spent, "each settlement counted once: {meter:?}");
    assert_eq!(meter.requests, served_a + served_b);
    assert_eq!(meter.tranches[&a_holder].reserved_micros, held, "a's tranche untouched");
    // The run is charged a's unreturned tranche: stricter, never over the cap.
    assert_eq!(meter.open(), 1);
    assert_eq!(meter.worst_case_micros(), spent + held);
    assert!(meter.worst_case_micros() <= 10_000, "{meter:?}");
}

/// A fake GitHub REST API: counts the reviews posted and answers 200.
async fn fake_reviews(State(count): State<Arc<Mutex<u32>>>, body: Bytes) -> axum::response::Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["event"], "COMMENT", "the gateway rewrote it: {body}");
    *count.lock().unwrap() += 1;
    axum::Json(json!({"id": 1, "state": "COMMENTED"})).into_response()
}

/// An automatic review run may post one review: asked through two replicas
/// at once, exactly one forwards it (the claim is a compare-and-swap on the
/// run's grant Secret), the other refuses, and so does either afterwards.
#[tokio::test]
async fn a_review_run_posts_one_review_across_gateway_replicas() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "gw-review").await;
    let (upstream, count) = counting_upstream("/repos/acme/widgets/pulls/1/reviews", fake_reviews).await;
    let (urls, stops) = gateway_replicas(&client, &ns.name, &["--gateway-github-api-url", &upstream]).await;

    let mut review = facts("0.01");
    review.review = true;
    review.is_pull_request = true;
    review.head_sha = Some("a".repeat(40));
    create_grant(&client, &ns.name, "grant-review", CAP, &review).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // A read of another repository: refused before GitHub once the replica
    // knows the grant (403), unauthenticated before (401).
    let probe = |url: String| {
        let http = http.clone();
        async move {
            let response = http
                .get(format!("{url}/github/repos/other/repo"))
                .bearer_auth(CAP)
                .send()
                .await
                .unwrap();
            response.status().as_u16()
        }
    };
    every_replica_answers(&urls, &probe, 403).await;

    let post_review = |url: String| {
        let http = http.clone();
        async move {
            let response = http
                .post(format!("{url}/github/repos/acme/widgets/pulls/1/reviews"))
                .bearer_auth(CAP)
                .json(&json!({"body": "Looks fine.", "event": "COMMENT", "comments": []}))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (a, b) = tokio::join!(post_review(urls[0].clone()), post_review(urls[1].clone()));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 403], "{a:?} {b:?}");
    let refused = if a.0 == 403 { &a.1 } else { &b.1 };
    assert!(refused.contains("posted its review already"), "{refused}");
    assert_eq!(*count.lock().unwrap(), 1, "one review reached GitHub");
    for url in &urls {
        let (status, body) = post_review(url.clone()).await;
        assert_eq!(status, 403, "{body}");
    }
    assert_eq!(*count.lock().unwrap(), 1);

    // The mark is on the grant Secret, naming the replica that forwarded it.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let meter = read_meter(&secrets.get("grant-review").await.unwrap()).unwrap();
    let by = meter.review.expect("the review mark").by;
    let winner = if a.0 == 200 { "gw-a" } else { "gw-b" };
    assert_eq!(by, winner);
    drop(stops);
}
