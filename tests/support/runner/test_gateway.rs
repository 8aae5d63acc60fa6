//! The gateway in runner tests: ONE base URL in front of the fakes (`/v1` ->
//! the fake Messages API, `/git` -> the git server, `/github` -> the fake
//! GitHub), accepting only the run's capability and swapping it for the real
//! credentials on the way upstream. [`TestGateway::start`] is a recording
//! stand-in (any branch, any number: the wrapper's own tests);
//! [`TestGateway::start_real`] is the real `claude-operator gateway` with one
//! grant and an in-memory meter (the guards and the metering). Loopback only.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;

/// Where the test gateway forwards, and with what.
#[derive(Clone)]
pub struct Upstreams {
    pub anthropic_url: String,
    pub anthropic_key: String,
    pub git_url: String,
    pub github_url: String,
    pub github_token: String,
}

#[derive(Clone, Debug)]
pub struct GatewayRequest {
    /// `model`, `git` or `github`.
    pub kind: &'static str,
    pub method: String,
    pub path: String,
    /// The request carried the capability.
    pub authorized: bool,
}

struct Shared {
    capability: String,
    upstreams: Upstreams,
    client: reqwest::Client,
    requests: Mutex<Vec<GatewayRequest>>,
}

pub struct TestGateway {
    pub base_url: String,
    shared: Arc<Shared>,
    /// The real gateway's meter (`start_real` only).
    pub meter: Option<Arc<claude_operator::gateway::meter::InMemoryMeterStore>>,
    task: tokio::task::JoinHandle<()>,
}

/// The real gateway's flags, parsed like the binary's.
#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    gateway: claude_operator::cli::GatewayArgs,
}

/// Name of the one grant the real test gateway holds.
pub const GRANT: &str = "grant-runner-test";

impl TestGateway {
    pub async fn start(capability: &str, upstreams: Upstreams) -> Self {
        let shared = Arc::new(Shared {
            capability: capability.to_owned(),
            upstreams,
            // Never through a proxy: the upstreams are on loopback.
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            requests: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestGateway {
            base_url,
            shared,
            meter: None,
            task,
        }
    }

    /// The real gateway, holding one open grant for `capability` with these facts.
    pub async fn start_real(capability: &str, upstreams: Upstreams, facts: claude_operator::grant::GrantFacts) -> Self {
        use clap::Parser;
        use claude_operator::gateway::{Grant, meter::InMemoryMeterStore, registry::Registry, server};
        let flags = Flags::parse_from([
            "gateway",
            "--anthropic-api-url",
            &upstreams.anthropic_url,
            "--github-git-url",
            &upstreams.git_url,
            "--gateway-github-api-url",
            &upstreams.github_url,
        ]);
        let registry = Registry::default();
        registry.insert(
            claude_operator::grant::capability_sha256(capability),
            Grant {
                secret_name: GRANT.into(),
                facts,
                github_token: upstreams.github_token.clone().into(),
                anthropic_key: upstreams.anthropic_key.clone().into(),
                expires_at: jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600),
                closed: false,
            },
        );
        registry.set_ready();
        let meter = Arc::new(InMemoryMeterStore::default());
        let state = server::State::with_parts(
            flags.gateway,
            registry,
            meter.clone(),
            claude_operator::telemetry::Metrics::default(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            server::serve(listener, Arc::new(state), std::future::pending())
                .await
                .unwrap();
        });
        let shared = Arc::new(Shared {
            capability: capability.to_owned(),
            upstreams,
            client: reqwest::Client::new(),
            requests: Mutex::new(Vec::new()),
        });
        TestGateway {
            base_url,
            shared,
            meter: Some(meter),
            task,
        }
    }

    pub fn requests(&self) -> Vec<GatewayRequest> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header_value<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn basic_password(headers: &HeaderMap) -> Option<String> {
    let encoded = header_value(headers, &header::AUTHORIZATION)?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    decoded.split_once(':').map(|(_, p)| p.to_owned())
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let cap = shared.capability.as_str();
    let bearer = header_value(&headers, &header::AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("token ")));
    let up = &shared.upstreams;
    let (kind, base, rest, authorized) = if let Some(rest) = path.strip_prefix("/v1/") {
        let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        (
            "model",
            &up.anthropic_url,
            format!("/v1/{rest}"),
            key == Some(cap) || bearer == Some(cap),
        )
    } else if let Some(rest) = path.strip_prefix("/git/") {
        (
            "git",
            &up.git_url,
            format!("/{rest}"),
            basic_password(&headers).as_deref() == Some(cap),
        )
    } else if let Some(rest) = path.strip_prefix("/github/") {
        ("github", &up.github_url, format!("/{rest}"), bearer == Some(cap))
    } else {
        return (StatusCode::NOT_FOUND, "not a gateway route\n").into_response();
    };
    shared.requests.lock().unwrap().push(GatewayRequest {
        kind,
        method: method.to_string(),
        path: uri.to_string(),
        authorized,
    });
    if !authorized {
        let mut response = (StatusCode::UNAUTHORIZED, "capability required\n").into_response();
        if kind == "git" {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Basic realm=\"gateway\"".parse().unwrap());
        }
        return response;
    }
    let url = match uri.query() {
        Some(q) => format!("{base}{rest}?{q}"),
        None => format!("{base}{rest}"),
    };
    let mut request = shared.client.request(method, url).body(body);
    for (name, value) in &headers {
        let skip = [header::HOST, header::AUTHORIZATION, header::CONTENT_LENGTH].contains(name)
            || name.as_str() == "x-api-key"
            || name.as_str().starts_with("proxy-");
        if !skip {
            request = request.header(name, value);
        }
    }
    request = match kind {
        "model" => request.header("x-api-key", &up.anthropic_key),
        "git" => request.basic_auth("x-access-token", Some(&up.github_token)),
        _ => request.bearer_auth(&up.github_token),
    };
    let upstream = match request.send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("upstream: {e}\n")).into_response(),
    };
    let mut builder = Response::builder().status(upstream.status());
    for (name, value) in upstream.headers() {
        if ![header::TRANSFER_ENCODING, header::CONTENT_LENGTH, header::CONNECTION].contains(name) {
            builder = builder.header(name, value);
        }
    }
    let bytes = upstream.bytes().await.unwrap_or_default();
    builder.body(Body::from(bytes)).unwrap()
}
