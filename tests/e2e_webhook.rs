//! The webhook receiver end to end: the real `claude-operator run` process
//! (receiver only) against the local control plane, fed GitHub's published
//! example payloads signed as GitHub signs them. Run with `make e2e`.

mod support;

use std::time::Duration;

use claude_operator::api::{ClaudeRun, ClaudeRunPolicy};
use claude_operator::github::signature::sign;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use support::*;

const SECRET: &str = "e2e-webhook-secret-1";
const ROTATED: &str = "e2e-webhook-secret-2";

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/webhooks/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

/// A comment id per comment text, stable across calls.
fn comment_id(text: &str) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(text.as_bytes());
    (i64::from_be_bytes(d[..8].try_into().unwrap()) & 0x0fff_ffff_ffff) + 1
}

/// The published issue_comment example with an "@claude" instruction.
fn comment_payload(repository: &str, body: &str) -> Vec<u8> {
    let mut v = fixture("issue_comment.created.json");
    v["comment"]["body"] = json!(body);
    // Another text is another comment: a run's name derives from its id.
    v["comment"]["id"] = json!(comment_id(body));
    v["comment"]["author_association"] = json!("MEMBER");
    let (owner, name) = repository.split_once('/').unwrap();
    v["repository"]["full_name"] = json!(repository);
    v["repository"]["name"] = json!(name);
    v["repository"]["owner"]["login"] = json!(owner);
    serde_json::to_vec(&v).unwrap()
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    event: &str,
    delivery: &str,
    secret: Option<&str>,
    body: Vec<u8>,
) -> reqwest::StatusCode {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery);
    if let Some(secret) = secret {
        req = req.header("x-hub-signature-256", sign(secret, &body));
    }
    req.body(body).send().await.unwrap().status()
}

/// Sends only the headers of a POST announcing `length` bytes and reads the
/// status line: the receiver must answer without waiting for the body.
async fn headers_only_post(url: &str, length: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://").split('/').next().unwrap().to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nhost: {addr}\r\nx-github-event: issue_comment\r\nx-github-delivery: d-huge\r\n\
         x-hub-signature-256: sha256={}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n",
        "0".repeat(64)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf));
    let n = read.await.expect("answered without the body").unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

async fn setup(prefix: &str, repositories: &[&str]) -> (kube::Client, TestNamespace, Api<ClaudeRun>) {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, prefix).await;
    let mut policy: ClaudeRunPolicy = load_yaml("config/samples/policy.yaml");
    policy.metadata.namespace = Some(ns.name.clone());
    policy.spec.repositories = repositories.iter().map(|s| s.to_string()).collect();
    policy.spec.quota = None;
    Api::<ClaudeRunPolicy>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let runs = Api::namespaced(client.clone(), &ns.name);
    (client, ns, runs)
}

fn secret_file(lines: &[&str]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), lines.join("\n")).unwrap();
    f
}

#[tokio::test]
async fn a_signed_comment_creates_exactly_one_run_even_under_concurrent_replays() {
    let repo = format!("e2e-org/webhook-{}", std::process::id());
    let (_client, ns, runs) = setup("webhook", &[&repo]).await;
    let secrets = secret_file(&[SECRET]);
    let op = OperatorProcess::start(
        &[
            "--no-controller",
            "--no-gateway",
            "--webhook-secret-file",
            secrets.path().to_str().unwrap(),
            "--watch-namespace",
            &ns.name,
        ],
        &[],
    )
    .await;
    let http = reqwest::Client::new();
    let body = comment_payload(
        &repo,
        "Thanks! @claude please add a retry with backoff $(touch /tmp/pwned)",
    );
    let delivery = "11111111-2222-3333-4444-555555555555";

    // 20 concurrent deliveries of the same id: one creates, the rest find it.
    let sends = (0..20).map(|_| {
        post(
            &http,
            &op.webhook_url,
            "issue_comment",
            delivery,
            Some(SECRET),
            body.clone(),
        )
    });
    let codes = futures::future::join_all(sends).await;
    assert!(codes.iter().all(|c| *c == 202 || *c == 200), "{codes:?}\n{}", op.log());
    assert_eq!(
        codes.iter().filter(|c| **c == 202).count(),
        1,
        "exactly one delivery creates: {codes:?}"
    );

    let list = runs.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1, "exactly one run");
    let run = &list.items[0];
    assert_eq!(
        run.metadata.name.as_deref(),
        claude_operator::receiver::intake::run_name("issue_comment", &body).as_deref()
    );
    assert_eq!(run.spec.repository, repo);
    assert_eq!(run.spec.policy_name, "acme-backend");
    assert_eq!(
        run.metadata.finalizers.as_deref(),
        Some(&[claude_operator::api::RUN_FINALIZER.to_owned()][..]),
        "born with the finalizer that guards its token"
    );
    assert_eq!(run.spec.trigger.event, "issue_comment");
    assert_eq!(run.spec.trigger.action, "created");
    assert_eq!(run.spec.trigger.delivery_id, delivery);
    assert!(
        run.spec
            .prompt
            .contains("please add a retry with backoff $(touch /tmp/pwned)"),
        "{}",
        run.spec.prompt
    );
    assert!(
        !run.spec.prompt.contains("Thanks!"),
        "text before the phrase is not the instruction"
    );

    // Replay: the same signed body under fresh delivery ids (the header is
    // not signed) finds the run and creates nothing.
    for replay in ["replayed-delivery-1", "replayed-delivery-2"] {
        let code = post(
            &http,
            &op.webhook_url,
            "issue_comment",
            replay,
            Some(SECRET),
            body.clone(),
        )
        .await;
        assert_eq!(code, 200, "a replay is a duplicate\n{}", op.log());
    }
    let list = runs.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1, "a replay under a new delivery id creates no run");
    assert_eq!(
        list.items[0].spec.trigger.delivery_id, delivery,
        "the run keeps the first delivery id for audit"
    );
    assert!(
        op.log().contains("replayed-delivery-1"),
        "the replay's delivery id is in its audit line"
    );

    // Signature failures are counted, deliveries labelled by outcome.
    let metrics = http
        .get(format!("{}/metrics", op.metrics_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"claude_operator_webhook_deliveries_total{event="issue_comment",outcome="created"} 1"#),
        "{metrics}"
    );
    // 19 concurrent redeliveries and 2 replays under new delivery ids.
    assert!(
        metrics.contains(r#"claude_operator_webhook_deliveries_total{event="issue_comment",outcome="duplicate"} 21"#),
        "{metrics}"
    );

    // The audit trail has one line per delivery and never the body or secret.
    let log = op.log();
    assert_eq!(log.matches("webhook delivery").count(), 22, "{log}");
    assert!(!log.contains(SECRET) && !log.contains("pwned"), "{log}");
}

#[tokio::test]
async fn unmatched_repositories_and_bad_input_create_nothing() {
    let repo = format!("e2e-org/bad-{}", std::process::id());
    let (_client, ns, runs) = setup("badinput", &[&repo]).await;
    let secrets = secret_file(&[SECRET]);
    let mut op = OperatorProcess::start(
        &[
            "--no-controller",
            "--no-gateway",
            "--webhook-secret-file",
            secrets.path().to_str().unwrap(),
            "--watch-namespace",
            &ns.name,
            "--github-app-bot-login",
            "claude-operator[bot]",
        ],
        &[],
    )
    .await;
    let http = reqwest::Client::new();
    let url = &op.webhook_url;
    let good = comment_payload(&repo, "@claude fix it");

    // The App's own comment (it quotes the phrase in its status comments) never triggers.
    let mut own: Value = serde_json::from_slice(&good).unwrap();
    own["sender"] = json!({"login": "claude-operator[bot]", "id": 99, "type": "Bot"});
    let own = serde_json::to_vec(&own).unwrap();
    assert_eq!(post(&http, url, "issue_comment", "d-own", Some(SECRET), own).await, 202);
    assert!(op.log().contains("own comment"));

    // Unmatched repository: accepted and dropped.
    let other = comment_payload("someone-else/repo", "@claude fix it");
    assert_eq!(
        post(&http, url, "issue_comment", "d-unmatched", Some(SECRET), other).await,
        202
    );
    // Wrong secret, truncated signature, SHA-1 only, missing signature: 401.
    assert_eq!(
        post(
            &http,
            url,
            "issue_comment",
            "d-wrong",
            Some("not-the-secret"),
            good.clone()
        )
        .await,
        401
    );
    let truncated = http
        .post(url)
        .header("x-github-event", "issue_comment")
        .header("x-github-delivery", "d-trunc")
        .header("x-hub-signature-256", &sign(SECRET, &good)[..30])
        .body(good.clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(truncated, 401);
    let sha1_only = http
        .post(url)
        .header("x-github-event", "issue_comment")
        .header("x-github-delivery", "d-sha1")
        .header("x-hub-signature", "sha1=0123456789abcdef0123456789abcdef01234567")
        .body(good.clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(sha1_only, 401);
    // Missing headers: 400.
    let no_event = http
        .post(url)
        .header("x-github-delivery", "d-x")
        .body(good.clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(no_event, 400);
    // 26 MiB announced: 413 before the body is sent, so nothing is buffered.
    assert_eq!(headers_only_post(url, 26 * 1024 * 1024).await, 413);
    // Valid signature over garbage: 400; over invalid UTF-8: 400; deeply nested: 400.
    assert_eq!(
        post(
            &http,
            url,
            "issue_comment",
            "d-garbage",
            Some(SECRET),
            b"not json".to_vec()
        )
        .await,
        400
    );
    assert_eq!(
        post(
            &http,
            url,
            "issue_comment",
            "d-utf8",
            Some(SECRET),
            vec![0xff, 0xfe, b'{']
        )
        .await,
        400
    );
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    assert_eq!(
        post(&http, url, "issue_comment", "d-nested", Some(SECRET), nested).await,
        400
    );
    // Ping: 200; an unhandled event: 202.
    let ping = serde_json::to_vec(&fixture("ping.json")).unwrap();
    assert_eq!(post(&http, url, "ping", "d-ping", Some(SECRET), ping).await, 200);
    let star =
        serde_json::to_vec(&json!({"action": "created", "sender": {"login": "x", "id": 1, "type": "User"}})).unwrap();
    assert_eq!(post(&http, url, "star", "d-star", Some(SECRET), star).await, 202);

    assert!(
        runs.list(&ListParams::default()).await.unwrap().items.is_empty(),
        "no run was created"
    );
    assert!(
        op.child.try_wait().unwrap().is_none(),
        "the receiver is still running:\n{}",
        op.log()
    );
    let health = http
        .get(format!("{}/healthz", op.metrics_url))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(health, 200);
}

#[tokio::test]
async fn webhook_secrets_rotate_without_a_restart() {
    let repo = format!("e2e-org/rotate-{}", std::process::id());
    let (_client, ns, runs) = setup("rotate", &[&repo]).await;
    let secrets = secret_file(&[SECRET]);
    let op = OperatorProcess::start(
        &[
            "--no-controller",
            "--no-gateway",
            "--webhook-secret-file",
            secrets.path().to_str().unwrap(),
            "--watch-namespace",
            &ns.name,
        ],
        &[],
    )
    .await;
    let http = reqwest::Client::new();
    let url = &op.webhook_url;
    let body = |n: u32| comment_payload(&repo, &format!("@claude task {n}"));

    // Probes with a comment that is no trigger: 202 once its secret is
    // accepted, 401 before; so probing creates no run.
    let probe = |secret: &'static str| {
        let http = http.clone();
        let url = url.clone();
        let body = comment_payload(&repo, "just a comment");
        async move { post(&http, &url, "issue_comment", "probe", Some(secret), body).await }
    };
    assert_eq!(
        post(&http, url, "issue_comment", "r-1", Some(ROTATED), body(1)).await,
        401
    );
    // Both secrets during the rotation.
    std::fs::write(secrets.path(), format!("{SECRET}\n{ROTATED}\n")).unwrap();
    eventually("the new secret accepted", Duration::from_secs(10), || {
        let p = probe(ROTATED);
        async move { (p.await == 202).then_some(()) }
    })
    .await;
    assert_eq!(
        post(&http, url, "issue_comment", "r-2", Some(ROTATED), body(2)).await,
        202
    );
    assert_eq!(
        post(&http, url, "issue_comment", "r-3", Some(SECRET), body(3)).await,
        202
    );
    // The old one removed.
    std::fs::write(secrets.path(), format!("{ROTATED}\n")).unwrap();
    eventually("the old secret refused", Duration::from_secs(10), || {
        let p = probe(SECRET);
        async move { (p.await == 401).then_some(()) }
    })
    .await;
    assert_eq!(
        post(&http, url, "issue_comment", "r-4", Some(SECRET), body(4)).await,
        401
    );
    assert_eq!(
        post(&http, url, "issue_comment", "r-5", Some(ROTATED), body(5)).await,
        202
    );
    assert_eq!(runs.list(&ListParams::default()).await.unwrap().items.len(), 3);
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

#[tokio::test]
async fn a_flood_of_huge_unsigned_uploads_neither_blocks_signed_deliveries_nor_grows_memory() {
    let repo = format!("e2e-org/flood-{}", std::process::id());
    let (_client, ns, runs) = setup("webhook-flood", &[&repo]).await;
    let secrets = secret_file(&[SECRET]);
    let op = OperatorProcess::start(
        &[
            "--no-controller",
            "--no-gateway",
            "--webhook-secret-file",
            secrets.path().to_str().unwrap(),
            "--watch-namespace",
            &ns.name,
        ],
        &[],
    )
    .await;
    let pid = op.child.id();
    let rss_before = vm_kib(pid, "VmRSS:");
    let http = reqwest::Client::new();
    let huge = bytes::Bytes::from(vec![b'{'; 25 * 1024 * 1024]);

    // 3 waves of 24 parallel 25 MiB uploads, half announced (Content-Length),
    // half chunked; each is refused (413) or cut off, never read whole.
    let flood = (0..72).map(|i| {
        let (http, url, huge) = (http.clone(), op.webhook_url.clone(), huge.clone());
        async move {
            let req = http
                .post(&url)
                .header("x-github-event", "issue_comment")
                .header("x-github-delivery", format!("flood-{i}"));
            let req = if i % 2 == 0 {
                req.body(huge)
            } else {
                let chunks = (0..25).map(move |k| Ok::<_, std::io::Error>(huge.slice(k << 20..(k + 1) << 20)));
                req.body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            };
            match req.send().await {
                Ok(r) => Some(r.status().as_u16()),
                Err(_) => None, // the receiver closed the upload: fine
            }
        }
    });
    let signed = (0..8).map(|i| {
        let mut v: Value = serde_json::from_slice(&comment_payload(&repo, &format!("@claude task {i}"))).unwrap();
        v["comment"]["id"] = json!(7_000_000 + i);
        let body = serde_json::to_vec(&v).unwrap();
        let (http, url) = (http.clone(), op.webhook_url.clone());
        async move {
            post(&http, &url, "issue_comment", &format!("signed-{i}"), Some(SECRET), body)
                .await
                .as_u16()
        }
    });
    let (flood, signed) = tokio::join!(futures::future::join_all(flood), futures::future::join_all(signed));
    assert!(
        flood.iter().all(|s| matches!(s, None | Some(413))),
        "huge uploads are refused: {flood:?}"
    );
    assert!(flood.contains(&Some(413)), "some 413 reached a client: {flood:?}");
    assert!(
        signed.iter().all(|s| *s == 202),
        "signed deliveries still create runs: {signed:?}\n{}",
        op.log()
    );
    assert_eq!(runs.list(&ListParams::default()).await.unwrap().items.len(), 8);

    // 72 × 25 MiB went at it; the receiver never held more than a few MiB more.
    let peak = vm_kib(pid, "VmHWM:");
    assert!(
        peak < rss_before + 64 * 1024,
        "peak RSS {peak} KiB against {rss_before} KiB before the flood"
    );
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_and_a_delivery_still_gets_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let repo = format!("e2e-org/slow-{}", std::process::id());
    let (_client, ns, _runs) = setup("webhook-slow", &[&repo]).await;
    let secrets = secret_file(&[SECRET]);
    let op = OperatorProcess::start(
        &[
            "--no-controller",
            "--no-gateway",
            "--webhook-secret-file",
            secrets.path().to_str().unwrap(),
            "--watch-namespace",
            &ns.name,
            "--webhook-header-timeout-seconds",
            "1",
            "--webhook-max-concurrent",
            "2",
        ],
        &[],
    )
    .await;
    let addr = op
        .webhook_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    // 40 connections that send half a header line and stall.
    let mut slow = vec![];
    for _ in 0..40 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /webhook HTTP/1.1\r\nx-github-ev").await.unwrap();
        slow.push(s);
    }
    // Each is closed by the receiver (read returns 0 or an error), not left open.
    for mut s in slow {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a stalled connection stays open");
    }
    let code = post(
        &reqwest::Client::new(),
        &op.webhook_url,
        "issue_comment",
        "after-slowloris",
        Some(SECRET),
        comment_payload(&repo, "@claude hi"),
    )
    .await;
    assert_eq!(code, 202, "{}", op.log());
}
