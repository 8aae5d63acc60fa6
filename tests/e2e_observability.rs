//! What operators of the operator read, asserted by name: every metric
//! family the code registers is served by the receiver and controller
//! process and by the gateway, those a run exercises with their labels; the
//! receiver's and the gateway's audit lines, parsed as JSON from the process
//! logs, field by field and without a secret; and the App's bot login looked
//! up through `GET /app` (the fake GitHub counts the call), its comments
//! never triggering. Run with `make e2e`.

#[path = "support/dashboard.rs"]
mod dashboard;
#[path = "support/fake_github.rs"]
mod fake_github;
#[path = "support/run_env.rs"]
mod run_env;
mod support;

use claude_operator::api::Phase;
use fake_github::{Fault, FaultKind};
use run_env::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use support::*;

/// One sample of a scrape: family, labels, value.
#[derive(Debug)]
struct Sample {
    /// The sample's own name (a histogram's `_count`, `_sum`, `_bucket`).
    name: String,
    family: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Families (name -> type) and samples of an OpenMetrics text.
fn parse_metrics(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut families = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.to_owned(), kind.to_owned());
        }
    }
    let mut samples = vec![];
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = families
            .keys()
            .filter(|f| {
                name.strip_prefix(f.as_str())
                    .is_some_and(|s| ["", "_total", "_bucket", "_count", "_sum", "_created"].contains(&s))
            })
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample of no family: {line}"))
            .clone();
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        samples.push(Sample {
            name: name.to_owned(),
            family,
            labels,
            value: value.parse().unwrap(),
        });
    }
    (families, samples)
}

async fn scrape(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A sample of `family` whose labels include `want`, with its value (of a
/// histogram: its count).
fn value_of(samples: &[Sample], family: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.family == family && !s.labels.contains_key("le") && !s.name.ends_with("_sum"))
        .find(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// The label names of `family`'s samples (histogram buckets' `le` aside).
fn label_names(samples: &[Sample], family: &str) -> BTreeSet<String> {
    samples
        .iter()
        .filter(|s| s.family == family)
        .flat_map(|s| s.labels.keys().filter(|k| *k != "le").cloned())
        .collect()
}

/// A signed `issue_comment` by `login`; the receiver's (status, body) and the
/// run name it would make.
async fn deliver(env: &Env, login: &str, id: i64, type_: &str, delivery: &str, secret: &str) -> (u16, String, String) {
    env.deliver_comment(login, id, type_, "MEMBER", "@claude add a retry", delivery, secret)
        .await
}

/// Every metric family: (name, type, the process serving it with samples,
/// its label names). `op` is the receiver and controller process.
const FAMILIES: &[(&str, &str, &str, &[&str])] = &[
    ("webhook_deliveries", "counter", "op", &["event", "outcome"]),
    ("webhook_signature_failures", "counter", "op", &[]),
    ("webhook_request_duration_seconds", "histogram", "op", &[]),
    ("runs_admitted", "counter", "op", &[]),
    ("token_mint_retries", "counter", "op", &[]),
    ("runs_denied", "counter", "op", &["reason"]),
    ("run_phase_transitions", "counter", "op", &["phase"]),
    ("active_runs", "gauge", "op", &[]),
    ("reconcile_errors", "counter", "op", &["kind"]),
    ("cost_usd", "counter", "op", &["namespace", "policy", "repository"]),
    ("budget_remaining_usd", "gauge", "op", &["namespace", "policy"]),
    ("budget_spent_usd", "gauge", "op", &["namespace", "policy"]),
    ("budget_limit_usd", "gauge", "op", &["namespace", "policy"]),
    ("github_rate_limit_waits", "counter", "op", &[]),
    ("gateway_requests", "counter", "gw", &["kind", "decision"]),
    ("gateway_refusals", "counter", "gw", &["reason"]),
    ("gateway_open_streams", "gauge", "gw", &[]),
    ("gateway_spend_usd", "counter", "gw", &["namespace", "policy"]),
    ("gateway_upstream_first_byte_seconds", "histogram", "gw", &[]),
    ("gateway_first_model_request_seconds", "histogram", "gw", &[]),
];

/// The names src/telemetry.rs registers, read from the source, so a family
/// added there fails this test until it is asserted here too.
fn registered_in_source() -> BTreeSet<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/telemetry.rs")).unwrap();
    let re = regex::Regex::new(r#"registry\.register\(\s*"([a-z0-9_]+)""#).unwrap();
    re.captures_iter(&src).map(|c| c[1].to_owned()).collect()
}

const GRANT_CAP: &str = "cocap_observability_grant_capability_0123456789";

/// A grant Secret the gateway serves: one model at $1 per million tokens.
async fn create_grant(client: &kube::Client, ns: &str) {
    use claude_operator::grant;
    use k8s_openapi::ByteString;
    let facts: grant::GrantFacts = serde_json::from_value(json!({
        "namespace": ns, "run": "gh-observed", "runUid": "uid", "policy": "observed",
        "repository": "acme/widgets", "number": 1, "isPullRequest": false,
        "allowedModels": ["test-model"], "maxCostUsd": "1.00",
        "prices": [{"model": "test-model", "inputUSD": "1", "outputUSD": "1",
                    "cacheWrite5mUSD": "1", "cacheWrite1hUSD": "1", "cacheReadUSD": "1"}],
        "expiresAt": "2099-01-01T00:00:00Z",
        "triggeredAt": k8s_openapi::jiff::Timestamp::now().to_string(),
    }))
    .unwrap();
    let mut data = BTreeMap::new();
    let mut put = |k: &str, v: &[u8]| data.insert(k.to_owned(), ByteString(v.to_vec()));
    put(
        grant::KEY_CAPABILITY_SHA256,
        grant::capability_sha256(GRANT_CAP).as_bytes(),
    );
    put(grant::KEY_FACTS, &serde_json::to_vec(&facts).unwrap());
    put(grant::KEY_GITHUB_TOKEN, b"ghs_observability");
    put(grant::KEY_ANTHROPIC_API_KEY, b"sk-ant-observability");
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("grant-observed".into()),
            labels: Some([(grant::LABEL_GRANT.to_owned(), "true".to_owned())].into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
}

/// A Messages API answering every request with 1,000 tokens in and 10 out.
async fn fake_anthropic() -> String {
    let app = axum::Router::new().route(
        "/v1/messages",
        axum::routing::post(|body: axum::body::Bytes| async move {
            let body: Value = serde_json::from_slice(&body).unwrap();
            axum::Json(json!({
                "id": "msg", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": "ok"}],
                "usage": {"input_tokens": 1_000, "output_tokens": 10},
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

#[tokio::test]
async fn every_metric_family_is_served_and_the_audit_lines_carry_every_field() {
    let env = Env::start_with("observe", |_| {}, &["--log-format", "json"]).await;
    let ns = env.ns.name.clone();

    // A run admitted, metered and finished; one denied; one forged
    // delivery; a second run whose token mint fails (with the client's two
    // retries: a reconcile error) before it succeeds.
    let member = env
        .comment("alice", 1001, "User", "MEMBER", "@claude add a retry", "obs-member")
        .await;
    let reader = env
        .comment("rob", 1002, "User", "COLLABORATOR", "@claude add a retry", "obs-reader")
        .await;
    env.wait_phase(&member, Phase::Running).await;
    // alice's facts are cached now: the only GitHub call of her next run is its mint.
    env.fake
        .inject(Fault::new(FaultKind::Status(500)).on_path("/access_tokens").times(3));
    let second = env
        .comment("alice", 1001, "User", "MEMBER", "@claude another", "obs-member-2")
        .await;
    env.wait_phase(&second, Phase::Running).await;
    env.set_meter(&member, json!({"spentMicros": 20000, "requests": 1}))
        .await;
    env.finish_pod(&member, "Succeeded", Some(&report("0.02"))).await;
    env.wait_phase(&member, Phase::Succeeded).await;
    assert_eq!(env.reason(&reader, Phase::Denied).await, "InsufficientPermission");
    let (forged, _, _) = deliver(&env, "alice", 1001, "User", "obs-forged", "not-the-secret").await;
    assert_eq!(forged, 401);

    // A gateway of its own, asked with a capability it does not know, and
    // with a grant's: one metered model request.
    let upstream = fake_anthropic().await;
    let gateway = OperatorProcess::start_component(
        "gateway",
        &[
            "--gateway-namespace",
            &ns,
            "--log-format",
            "json",
            "--anthropic-api-url",
            &upstream,
        ],
        &[],
    )
    .await;
    create_grant(&env.client, &ns).await;
    eventually(
        "the gateway serves the grant",
        std::time::Duration::from_secs(30),
        || async {
            let answer = env
                .http
                .post(format!("{}/v1/messages", gateway.gateway_url))
                .header("x-api-key", GRANT_CAP)
                .json(&json!({"model": "test-model", "max_tokens": 10,
                          "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .ok()?;
            (answer.status() == 200).then_some(())
        },
    )
    .await;
    const BOGUS_CAP: &str = "cocap_observability_not_a_real_capability_0123456789";
    let refused = env
        .http
        .post(format!("{}/v1/messages", gateway.gateway_url))
        .header("x-api-key", BOGUS_CAP)
        .header("content-type", "application/json")
        .body(r#"{"model":"m","max_tokens":1,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // Every family the code registers is in the table, and served with
    // samples and exactly its labels by the process that owns it.
    let table: BTreeSet<String> = FAMILIES.iter().map(|f| f.0.to_owned()).collect();
    assert_eq!(
        table,
        registered_in_source(),
        "the table below is every registered family"
    );
    let (op_text, gw_text) = (
        scrape(&env.http, &env.op.metrics_url).await,
        scrape(&env.http, &gateway.metrics_url).await,
    );
    // The chart's dashboard queries only series and labels served now.
    let missing = dashboard::missing(&format!("{op_text}\n{gw_text}"));
    assert!(
        missing.is_empty(),
        "the dashboard queries what is not served: {missing:?}"
    );
    let (op_families, op) = parse_metrics(&op_text);
    let (gw_families, gw) = parse_metrics(&gw_text);
    for (name, kind, process, labels) in FAMILIES {
        let family = format!("claude_operator_{name}");
        let (families, samples) = if *process == "op" {
            (&op_families, &op)
        } else {
            (&gw_families, &gw)
        };
        assert_eq!(
            families.get(&family).map(String::as_str),
            Some(*kind),
            "{process}: {family}"
        );
        let want: BTreeSet<String> = labels.iter().map(|l| l.to_string()).collect();
        assert_eq!(label_names(samples, &family), want, "{process}: {family}'s labels");
    }

    // The receiver's and the controller's, with the labels the run gave them.
    let at_least_one = |samples: &[Sample], family: &str, labels: &[(&str, &str)]| {
        let v = value_of(samples, family, labels);
        assert!(v.is_some_and(|v| v >= 1.0), "{family}{labels:?}: {v:?}");
    };
    let p = "claude_operator_";
    at_least_one(
        &op,
        &format!("{p}webhook_deliveries"),
        &[("event", "issue_comment"), ("outcome", "created")],
    );
    at_least_one(
        &op,
        &format!("{p}webhook_deliveries"),
        &[("event", "issue_comment"), ("outcome", "rejected")],
    );
    at_least_one(&op, &format!("{p}webhook_signature_failures"), &[]);
    assert!(value_of(&op, &format!("{p}webhook_request_duration_seconds"), &[]).is_some_and(|n| n >= 3.0));
    at_least_one(&op, &format!("{p}runs_admitted"), &[]);
    at_least_one(&op, &format!("{p}runs_denied"), &[("reason", "InsufficientPermission")]);
    for phase in ["Running", "Succeeded", "Denied"] {
        at_least_one(&op, &format!("{p}run_phase_transitions"), &[("phase", phase)]);
    }
    // The finished run's metered $0.02.
    let cost = value_of(
        &op,
        &format!("{p}cost_usd"),
        &[
            ("namespace", &ns),
            ("policy", "acme-backend"),
            ("repository", &env.repo),
        ],
    );
    assert!(cost.is_some_and(|c| (c - 0.02).abs() < 1e-9), "{cost:?}");
    assert!(
        value_of(
            &op,
            &format!("{p}budget_remaining_usd"),
            &[("namespace", &ns), ("policy", "acme-backend")]
        )
        .is_some()
    );
    for family in ["active_runs", "token_mint_retries", "github_rate_limit_waits"] {
        assert!(value_of(&op, &format!("{p}{family}"), &[]).is_some(), "{family}");
    }
    // The failed mint, by its own kind.
    at_least_one(&op, &format!("{p}reconcile_errors"), &[("kind", "github")]);
    at_least_one(&op, &format!("{p}token_mint_retries"), &[]);
    // The gateway's, with the refusal's labels.
    at_least_one(
        &gw,
        &format!("{p}gateway_requests"),
        &[("kind", "model"), ("decision", "refuse")],
    );
    at_least_one(&gw, &format!("{p}gateway_refusals"), &[("reason", "Unauthenticated")]);
    at_least_one(
        &gw,
        &format!("{p}gateway_requests"),
        &[("kind", "model"), ("decision", "allow")],
    );
    // 1,000 in and 10 out at $1 per million: $0.00101.
    let spend = value_of(
        &gw,
        &format!("{p}gateway_spend_usd"),
        &[("namespace", &ns), ("policy", "observed")],
    );
    assert!(spend.is_some_and(|v| (v - 0.00101).abs() < 1e-9), "{spend:?}");
    assert_eq!(value_of(&gw, &format!("{p}gateway_open_streams"), &[]), Some(0.0));
    at_least_one(&gw, &format!("{p}gateway_upstream_first_byte_seconds"), &[]);
    // The run's first model request, timed from its trigger: once.
    assert_eq!(
        value_of(&gw, &format!("{p}gateway_first_model_request_seconds"), &[]),
        Some(1.0)
    );

    // The receiver's audit lines: every field, per delivery.
    let log = env.op.log();
    let lines = audit_lines(&log);
    let of = |delivery: &str| {
        lines
            .iter()
            .find(|f| f.get("delivery") == Some(&json!(delivery)))
            .unwrap_or_else(|| panic!("no audit line for {delivery}:\n{log}"))
            .clone()
    };
    let line = of("obs-member");
    for (field, want) in [
        ("message", json!("webhook delivery")),
        ("event", json!("issue_comment")),
        ("repository", json!(env.repo)),
        ("actor", json!("alice")),
        ("run", json!(member)),
        ("namespace", json!(ns)),
        ("outcome", json!("created")),
        ("reason", json!("run created")),
        ("status", json!(202)),
    ] {
        assert_eq!(line.get(field), Some(&want), "{field} in {line:?}");
    }
    let line = of("obs-forged");
    assert_eq!(
        (line.get("outcome"), line.get("status")),
        (Some(&json!("rejected")), Some(&json!(401))),
        "{line:?}"
    );
    assert!(
        line.get("reason")
            .and_then(Value::as_str)
            .is_some_and(|r| !r.is_empty())
    );
    assert!(!log.contains(SECRET) && !log.contains("ghs_") && !log.contains("sk-ant-e2e"));

    // The gateway's audit line for the refused request: every field.
    let glog = gateway.log();
    let glines = audit_lines(&glog);
    let gline = glines
        .iter()
        .find(|f| f.get("message") == Some(&json!("gateway request")) && f.get("status") == Some(&json!(401)))
        .cloned()
        .unwrap_or_else(|| panic!("no gateway audit line for the refusal:\n{glog}"));
    for (field, want) in [
        ("component", json!("gateway")),
        ("run", json!("")),
        ("kind", json!("model")),
        ("target_", json!("/v1/messages")),
        ("method", json!("POST")),
        ("status", json!(401)),
        ("tokens", json!(0)),
        ("cost_micros", json!(0)),
        ("decision", json!("refuse")),
        ("reason", json!("Unauthenticated")),
    ] {
        assert_eq!(gline.get(field), Some(&want), "{field} in {gline:?}");
    }
    for field in ["bytes_in", "bytes_out"] {
        assert!(gline.get(field).is_some_and(Value::is_u64), "{field} in {gline:?}");
    }
    let allowed = glines
        .iter()
        .find(|f| f.get("decision") == Some(&json!("allow")))
        .unwrap_or_else(|| panic!("no gateway audit line for the metered request:\n{glog}"));
    for (field, want) in [
        ("run", json!(format!("{ns}/gh-observed"))),
        ("kind", json!("model")),
        ("target_", json!("test-model")),
        ("status", json!(200)),
        ("tokens", json!(1010)),
        ("cost_micros", json!(1010)),
        ("reason", json!("")),
    ] {
        assert_eq!(allowed.get(field), Some(&want), "{field} in {allowed:?}");
    }
    for secret in [BOGUS_CAP, GRANT_CAP, "ghs_observability", "sk-ant-observability"] {
        assert!(!glog.contains(secret), "a secret in the gateway's log");
    }
}

#[tokio::test]
async fn the_bot_login_is_looked_up_through_get_app_and_its_comments_never_trigger() {
    // No --github-app-bot-login: the receiver asks GitHub at start.
    let env = Env::start_with("botlogin", |_| {}, &["--log-format", "json"]).await;
    let asked = env
        .fake
        .requests()
        .iter()
        .filter(|(m, path)| m == "GET" && path.split('?').next() == Some("/app"))
        .count();
    assert_eq!(asked, 1, "GET /app once at start: {:?}", env.fake.requests());
    let bot = format!("{}[bot]", fake_github::APP_SLUG);
    let (status, body, run) = deliver(&env, &bot, 9_000_001, "Bot", "bot-own", SECRET).await;
    assert_eq!((status, body.trim()), (202, "own comment"));
    // A member's comment after it makes its run: the receiver is working.
    let member = env
        .comment("alice", 1001, "User", "MEMBER", "@claude one", "bot-member")
        .await;
    env.wait_phase(&member, Phase::Running).await;
    assert!(env.runs().get_opt(&run).await.unwrap().is_none());
    let own = audit_lines(&env.op.log())
        .into_iter()
        .find(|f| f.get("delivery") == Some(&json!("bot-own")))
        .expect("an audit line for the bot's comment");
    assert_eq!(own.get("reason"), Some(&json!("own comment")));
    assert_eq!(own.get("actor"), Some(&json!(bot)));
}
