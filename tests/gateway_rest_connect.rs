//! The gateway's GitHub REST guard and CONNECT proxy, end to end on
//! loopback: allowed REST calls reach a fake GitHub with the run's token
//! (never the pod's capability), refused ones never reach it; a CONNECT to
//! an allowed loopback echo server tunnels bytes both ways, refused ones
//! open nothing; no secret shows in the audit lines.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use http_body_util::BodyExt;
use jiff::Timestamp;
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use claude_operator::api::AllowHost;
use claude_operator::cli::GatewayArgs;
use claude_operator::gateway::registry::Registry;
use claude_operator::gateway::server::State;
use claude_operator::gateway::{Grant, connect, reasons, rest};
use claude_operator::grant::{GrantFacts, new_capability};
use claude_operator::telemetry::Metrics;

/// One test at a time: tracing caches which call sites are enabled across
/// threads, so a test capturing the audit lines must not race the others.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TOKEN: &str = "ghs_RunTokenRunTokenRunTokenRunToken0123";

/// One request the fake GitHub saw.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    authorization: String,
    body: String,
}

#[derive(Clone, Default)]
struct FakeGithub {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeGithub {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Serves on loopback; returns its base URL.
    async fn start(&self) -> String {
        let seen = self.seen.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let seen = seen.clone();
            async move { fake_github(seen, req).await }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/api/v3")
    }
}

async fn fake_github(seen: Arc<Mutex<Vec<Seen>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let path = parts.uri.path().trim_start_matches("/api/v3").to_owned();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        authorization: parts
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let comment = |issue: u64, user_type: &str| {
        axum::Json(serde_json::json!({
            "id": 1,
            "issue_url": format!("https://api.github.com/repos/acme/widgets/issues/{issue}"),
            "user": {"login": "someone", "type": user_type},
        }))
        .into_response()
    };
    match (parts.method.as_str(), path.as_str()) {
        ("GET", "/repos/acme/widgets/issues/comments/1") => comment(7, "Bot"),
        ("GET", "/repos/acme/widgets/issues/comments/2") => comment(8, "Bot"),
        ("GET", "/repos/acme/widgets/issues/comments/3") => comment(7, "User"),
        ("GET", "/repos/acme/widgets/issues/comments/4") => StatusCode::NOT_FOUND.into_response(),
        ("GET", _) => (
            [("link", "<https://api.github.com/x?page=2>; rel=\"next\"")],
            axum::Json(serde_json::json!({"full_name": "acme/widgets"})),
        )
            .into_response(),
        _ => (StatusCode::CREATED, axum::Json(serde_json::json!({"ok": true}))).into_response(),
    }
}

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    gateway: GatewayArgs,
}

fn state(github_api_url: &str) -> Arc<State> {
    // Parsed like the binary's flags, so fields added later keep their defaults.
    let flags = Flags::parse_from(["gateway", "--gateway-github-api-url", github_api_url]);
    Arc::new(
        State::with_parts(
            flags.gateway,
            Registry::default(),
            Arc::new(claude_operator::gateway::meter::InMemoryMeterStore::default()),
            Metrics::default(),
        )
        .expect("gateway state"),
    )
}

fn grant(allow_hosts: Vec<AllowHost>) -> Arc<Grant> {
    Arc::new(Grant {
        secret_name: "grant-x".into(),
        facts: GrantFacts {
            namespace: "team-a".into(),
            run: "gh-1".into(),
            run_uid: "uid-1".into(),
            policy: "default".into(),
            repository: "acme/widgets".into(),
            number: 7,
            is_pull_request: false,
            head_sha: None,
            push_branch: Some("claude/gh-1".into()),
            push_to_pull_request: false,
            review: false,
            allowed_models: vec!["claude-*".into()],
            max_cost_usd: "1".into(),
            prices: vec![],
            protected_paths: vec![],
            allow_hosts,
            expires_at: "2099-01-01T00:00:00Z".into(),
            triggered_at: None,
        },
        github_token: SecretString::from(TOKEN),
        anthropic_key: SecretString::from("sk-ant-api03-key-key-key-key-key-key"),
        expires_at: "2099-01-01T00:00:00Z".parse::<Timestamp>().unwrap(),
        closed: false,
    })
}

async fn call(
    state: &Arc<State>,
    grant: &Arc<Grant>,
    cap: &str,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(format!("/github{path}"))
        .header("authorization", format!("Bearer {cap}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let resp = rest::handle(state.clone(), grant.clone(), req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn allowed_rest_calls_reach_github_with_the_token_not_the_capability() {
    let _serial = SERIAL.lock().await;
    let github = FakeGithub::default();
    let state = state(&github.start().await);
    let grant = grant(vec![]);
    let cap = new_capability();

    let (status, body) = call(&state, &grant, &cap, Method::GET, "/repos/acme/widgets?per_page=1", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("acme/widgets"), "{body}");

    let pr = r#"{"title":"Fix","head":"claude/gh-1","base":"main","draft":false}"#;
    let (status, body) = call(&state, &grant, &cap, Method::POST, "/repos/acme/widgets/pulls", pr).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let comment = r#"{"body":"Done: see the draft pull request."}"#;
    let (status, body) = call(
        &state,
        &grant,
        &cap,
        Method::POST,
        "/repos/acme/widgets/issues/7/comments",
        comment,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let (status, body) = call(
        &state,
        &grant,
        &cap,
        Method::PATCH,
        "/repos/acme/widgets/issues/comments/1",
        comment,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let seen = github.seen();
    let calls: Vec<String> = seen.iter().map(|s| format!("{} {}", s.method, s.path)).collect();
    assert_eq!(
        calls,
        [
            "GET /repos/acme/widgets",
            "POST /repos/acme/widgets/pulls",
            "POST /repos/acme/widgets/issues/7/comments",
            "GET /repos/acme/widgets/issues/comments/1",
            "PATCH /repos/acme/widgets/issues/comments/1",
        ]
    );
    for s in &seen {
        assert_eq!(s.authorization, format!("token {TOKEN}"), "{} {}", s.method, s.path);
        assert!(!s.body.contains(&cap) && !s.authorization.contains(&cap));
    }
    let pr: serde_json::Value = serde_json::from_str(&seen[1].body).unwrap();
    assert_eq!(pr["draft"], true, "the pull request is forced to a draft");
    assert_eq!(pr["head"], "claude/gh-1");
}

#[tokio::test]
async fn refused_rest_calls_never_reach_github() {
    let _serial = SERIAL.lock().await;
    let github = FakeGithub::default();
    let state = state(&github.start().await);
    let grant = grant(vec![]);
    let cap = new_capability();
    let other_cap = new_capability();
    let comment = r#"{"body":"hello"}"#;
    let cases: Vec<(Method, &str, String, StatusCode, &str)> = vec![
        (
            Method::POST,
            "/repos/acme/other/pulls",
            r#"{"head":"claude/gh-1","base":"main"}"#.into(),
            StatusCode::FORBIDDEN,
            reasons::WRONG_REPOSITORY,
        ),
        (
            Method::POST,
            "/repos/acme/widgets/pulls",
            r#"{"head":"main","base":"release"}"#.into(),
            StatusCode::FORBIDDEN,
            reasons::API_NOT_ALLOWED,
        ),
        (
            Method::POST,
            "/repos/acme/widgets/issues/8/comments",
            comment.into(),
            StatusCode::FORBIDDEN,
            reasons::API_NOT_ALLOWED,
        ),
        (
            Method::DELETE,
            "/repos/acme/widgets",
            String::new(),
            StatusCode::FORBIDDEN,
            reasons::API_NOT_ALLOWED,
        ),
        (
            Method::POST,
            "/graphql",
            r#"{"query":"{ viewer { login } }"}"#.into(),
            StatusCode::FORBIDDEN,
            reasons::API_NOT_ALLOWED,
        ),
        (
            Method::POST,
            "/repos/acme/widgets/issues/7/comments",
            format!(r#"{{"body":"my key is {cap}"}}"#),
            StatusCode::FORBIDDEN,
            reasons::CREDENTIAL_IN_CONTENT,
        ),
        (
            Method::POST,
            "/repos/acme/widgets/issues/7/comments",
            format!(r#"{{"body":"another run's {other_cap}"}}"#),
            StatusCode::FORBIDDEN,
            reasons::CREDENTIAL_IN_CONTENT,
        ),
        (
            Method::POST,
            "/repos/acme/widgets/issues/7/comments",
            r#"{"body":"ghp_0123456789abcdefghijABCDEFGHIJ012345"}"#.into(),
            StatusCode::FORBIDDEN,
            reasons::CREDENTIAL_IN_CONTENT,
        ),
        (
            Method::POST,
            "/repos/acme/widgets/pulls",
            format!(r#"{{"head":"claude/gh-1","base":"main","body":"{TOKEN}"}}"#),
            StatusCode::FORBIDDEN,
            reasons::CREDENTIAL_IN_CONTENT,
        ),
        (
            Method::POST,
            "/repos/acme/widgets/issues/7/comments",
            format!(r#"{{"body":"{}"}}"#, "x".repeat(rest::MAX_BODY_BYTES)),
            StatusCode::PAYLOAD_TOO_LARGE,
            reasons::TOO_LARGE,
        ),
        (
            Method::GET,
            "/repos/acme/widgets/%2e%2e/%2e%2e/acme/other",
            String::new(),
            StatusCode::BAD_REQUEST,
            reasons::MALFORMED,
        ),
    ];
    for (method, path, body, want_status, want_reason) in cases {
        let (status, answer) = call(&state, &grant, &cap, method.clone(), path, &body).await;
        assert_eq!(status, want_status, "{method} {path}: {answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["reason"], want_reason, "{method} {path}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.starts_with("claude-operator gateway: "), "{message}");
        assert!(!message.contains(&cap) && !message.contains(TOKEN), "{message}");
    }
    assert!(
        github.seen().is_empty(),
        "refused calls reached GitHub: {:?}",
        github.seen()
    );

    // Editing a comment on another thread, a person's comment or a missing
    // one: only the check (a GET) reaches GitHub, never the PATCH.
    for id in [2, 3, 4] {
        let path = format!("/repos/acme/widgets/issues/comments/{id}");
        let (status, answer) = call(&state, &grant, &cap, Method::PATCH, &path, comment).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {answer}");
    }
    let seen: Vec<String> = github
        .seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(
        seen,
        [
            "GET /repos/acme/widgets/issues/comments/2",
            "GET /repos/acme/widgets/issues/comments/3",
            "GET /repos/acme/widgets/issues/comments/4",
        ]
    );
}

#[tokio::test]
async fn a_read_only_run_cannot_open_a_pull_request() {
    let _serial = SERIAL.lock().await;
    let github = FakeGithub::default();
    let state = state(&github.start().await);
    let mut g = (*grant(vec![])).clone();
    g.facts.push_branch = None;
    let grant = Arc::new(g);
    let cap = new_capability();
    let pr = r#"{"title":"Fix","head":"claude/gh-1","base":"main"}"#;
    let (status, body) = call(&state, &grant, &cap, Method::POST, "/repos/acme/widgets/pulls", pr).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(github.seen().is_empty());
}

/// A loopback TCP server echoing what it reads.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// The CONNECT handler behind a real HTTP/1 server (upgrades need one).
async fn proxy(state: Arc<State>, grant: Arc<Grant>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (state, grant) = (state.clone(), grant.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (state, grant) = (state.clone(), grant.clone());
                    async move { Ok::<_, std::convert::Infallible>(connect::handle(state, grant, req.map(Body::new)).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Sends a CONNECT and reads the response head.
async fn send_connect(proxy: SocketAddr, target: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "the proxy closed before answering: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (stream, String::from_utf8(head).unwrap())
}

#[tokio::test(flavor = "current_thread")]
async fn connect_tunnels_to_an_exactly_allowed_loopback_host() {
    let _serial = SERIAL.lock().await;
    let (captured, _guard) = capture();
    let echo = echo_server().await;
    let allow = vec![AllowHost {
        host: "127.0.0.1".into(),
        ports: vec![i32::from(echo.port())],
    }];
    let proxy = proxy(state("http://127.0.0.1:9"), grant(allow)).await;
    let (mut stream, head) = send_connect(proxy, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream.write_all(b"ping through the tunnel").await.unwrap();
    let mut buf = [0u8; 23];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping through the tunnel");

    // Closing the tunnel writes its audit line, with the bytes both ways.
    drop(stream);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let line = loop {
        let logs = captured.text();
        if let Some(line) = logs
            .lines()
            .find(|l| l.contains("kind=\"connect\"") && l.contains("status=200"))
        {
            break line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no audit line for the tunnel:\n{logs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(line.contains("bytes_in=23") && line.contains("bytes_out=23"), "{line}");
    assert!(line.contains(&format!("target_=127.0.0.1:{}", echo.port())), "{line}");
}

async fn connect_status(
    state: &Arc<State>,
    grant: &Arc<Grant>,
    method: Method,
    uri: &str,
) -> (StatusCode, serde_json::Value) {
    let req = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
    let resp = connect::handle(state.clone(), grant.clone(), req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[tokio::test]
async fn connect_refuses_before_opening_anything() {
    let _serial = SERIAL.lock().await;
    let echo = echo_server().await;
    let allow = vec![
        AllowHost {
            host: "registry.npmjs.org".into(),
            ports: vec![],
        },
        // Listed exactly, and still never: the metadata address is link-local.
        AllowHost {
            host: "169.254.169.254".into(),
            ports: vec![80],
        },
        AllowHost {
            host: "*.pythonhosted.org".into(),
            ports: vec![],
        },
    ];
    let state = state("http://127.0.0.1:9");
    let grant = grant(allow);
    let cases = [
        (
            Method::CONNECT,
            echo.to_string(),
            StatusCode::FORBIDDEN,
            reasons::HOST_NOT_ALLOWED,
        ),
        (
            Method::CONNECT,
            "github.com:443".into(),
            StatusCode::FORBIDDEN,
            reasons::HOST_NOT_ALLOWED,
        ),
        (
            Method::CONNECT,
            "registry.npmjs.org:22".into(),
            StatusCode::FORBIDDEN,
            reasons::HOST_NOT_ALLOWED,
        ),
        (
            Method::CONNECT,
            "pythonhosted.org:443".into(),
            StatusCode::FORBIDDEN,
            reasons::HOST_NOT_ALLOWED,
        ),
        (
            Method::CONNECT,
            "169.254.169.254:80".into(),
            StatusCode::FORBIDDEN,
            reasons::ADDRESS_NOT_ALLOWED,
        ),
        (
            Method::CONNECT,
            "169.254.169.254:443".into(),
            StatusCode::FORBIDDEN,
            reasons::HOST_NOT_ALLOWED,
        ),
        (
            Method::CONNECT,
            "registry.npmjs.org".into(),
            StatusCode::BAD_REQUEST,
            reasons::MALFORMED,
        ),
        (
            Method::GET,
            "http://registry.npmjs.org/left-pad".into(),
            StatusCode::FORBIDDEN,
            reasons::HOST_NOT_ALLOWED,
        ),
    ];
    for (method, uri, want_status, want_reason) in cases {
        let (status, body) = connect_status(&state, &grant, method.clone(), &uri).await;
        assert_eq!(status, want_status, "{method} {uri}: {body}");
        assert_eq!(body["reason"], want_reason, "{method} {uri}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("claude-operator gateway: "),
            "{body}"
        );
    }
}

#[tokio::test]
async fn connect_refuses_hosts_when_cluster_ranges_are_misconfigured() {
    let _serial = SERIAL.lock().await;
    // A bad --gateway-denied-cidrs fails closed, even for an exact host.
    let echo = echo_server().await;
    let flags = Flags::parse_from(["gateway", "--gateway-denied-cidrs", "10.96.0.0/12,not-a-range"]);
    let state = Arc::new(
        State::with_parts(
            flags.gateway,
            Registry::default(),
            Arc::new(claude_operator::gateway::meter::InMemoryMeterStore::default()),
            Metrics::default(),
        )
        .expect("gateway state"),
    );
    let grant = grant(vec![AllowHost {
        host: "127.0.0.1".into(),
        ports: vec![i32::from(echo.port())],
    }]);
    let (status, body) = connect_status(&state, &grant, Method::CONNECT, &echo.to_string()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["reason"], reasons::ADDRESS_NOT_ALLOWED);
}

/// Captures everything logged while it is the default subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Captures this thread's log lines (tests on a current-thread runtime:
/// the handlers' tasks run on it too) while the guard lives.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test(flavor = "current_thread")]
async fn audit_lines_carry_no_secret() {
    let _serial = SERIAL.lock().await;
    let (captured, _guard) = capture();

    let github = FakeGithub::default();
    let state = state(&github.start().await);
    let grant = grant(vec![]);
    let cap = new_capability();
    let leak = format!(r#"{{"body":"{cap} {TOKEN}"}}"#);
    call(&state, &grant, &cap, Method::GET, "/repos/acme/widgets", "").await;
    call(
        &state,
        &grant,
        &cap,
        Method::POST,
        "/repos/acme/widgets/issues/7/comments",
        &leak,
    )
    .await;
    call(
        &state,
        &grant,
        &cap,
        Method::POST,
        "/repos/acme/widgets/issues/7/comments",
        "{}",
    )
    .await;
    call(&state, &grant, &cap, Method::DELETE, "/repos/acme/widgets", "").await;
    connect_status(&state, &grant, Method::CONNECT, "github.com:443").await;

    let logs = captured.text();
    assert_eq!(logs.matches("gateway request").count(), 5, "{logs}");
    assert!(logs.contains("CredentialInContent"), "{logs}");
    assert!(logs.contains("decision=\"allow\""), "{logs}");
    for secret in [cap.as_str(), TOKEN, &cap[6..], "sk-ant-api03"] {
        assert!(!logs.contains(secret), "a secret was logged:\n{logs}");
    }
}
