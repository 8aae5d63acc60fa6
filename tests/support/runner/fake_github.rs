//! The few GitHub REST endpoints the runner calls (issue comments, pull
//! requests, pull request reviews), on loopback, recording each call with its Authorization header.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub struct ApiCall {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

pub struct FakeGithub {
    pub base_url: String,
    calls: Arc<Mutex<Vec<ApiCall>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeGithub {
    pub async fn start() -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().fallback(handle).with_state(calls.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeGithub { base_url, calls, task }
    }

    pub fn calls(&self) -> Vec<ApiCall> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(calls): State<Arc<Mutex<Vec<ApiCall>>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    calls.lock().unwrap().push(ApiCall {
        method: method.to_string(),
        path: path.clone(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body,
    });
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (Method::POST, ["repos", owner, repo, "issues", number, "comments"]) => (
            StatusCode::CREATED,
            axum::Json(json!({
                "id": 1,
                "html_url": format!("https://github.test/{owner}/{repo}/issues/{number}#issuecomment-1")
            })),
        )
            .into_response(),
        (Method::POST, ["repos", owner, repo, "pulls"]) => (
            StatusCode::CREATED,
            axum::Json(
                json!({ "id": 2, "number": 99, "html_url": format!("https://github.test/{owner}/{repo}/pull/99") }),
            ),
        )
            .into_response(),
        (Method::POST, ["repos", owner, repo, "pulls", number, "reviews"]) => axum::Json(json!({
            "id": 3,
            "html_url": format!("https://github.test/{owner}/{repo}/pull/{number}#pullrequestreview-3")
        }))
        .into_response(),
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({"message": "Not Found"}))).into_response(),
    }
}
