//! A stand-in for the gateway in runner tests: ONE base URL in front of the
//! fakes (`/v1` -> the fake Messages API, `/git` -> the git server,
//! `/github` -> the fake GitHub), accepting only the run's capability and
//! swapping it for the real credentials on the way upstream, as the real
//! gateway does. Loopback only; records every request.
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
    task: tokio::task::JoinHandle<()>,
}

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
        TestGateway { base_url, shared, task }
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
