//! A fake Anthropic Messages API on loopback for the real Claude Code CLI:
//! `POST /v1/messages` answers scripted turns as a server-sent event stream
//! (`message_start` with usage, content blocks, `message_delta` with usage and
//! stop reason, `message_stop`), so the CLI's cost figures are known exactly.
//! Every request is recorded; unknown paths are logged and answered 404.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One scripted assistant turn.
#[derive(Clone, Debug)]
pub enum Turn {
    /// A final text answer.
    Text(String),
    /// A `Bash` tool call with this command.
    Bash(String),
    /// A `Read` tool call of this file.
    Read(String),
}

/// Tokens each turn reports.
#[derive(Clone, Copy, Debug)]
pub struct TurnUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A recorded request.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub body: String,
}

#[derive(Clone)]
struct Shared {
    script: Arc<Mutex<Vec<Turn>>>,
    usage: TurnUsage,
    requests: Arc<Mutex<Vec<Recorded>>>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

pub struct FakeAnthropic {
    pub base_url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<Vec<Turn>>>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAnthropic {
    /// Serves `script`: the n-th request of the conversation (counted by the
    /// assistant messages it carries) gets the n-th turn; later ones the last.
    pub async fn start(script: Vec<Turn>, usage: TurnUsage) -> Self {
        Self::serve(script, usage, None).await
    }

    /// Like [`FakeAnthropic::start`], but each `/v1/messages` request is
    /// answered only once the test [`FakeAnthropic::release`]s it, so the
    /// test can look at the run between turns.
    pub async fn start_gated(script: Vec<Turn>, usage: TurnUsage) -> Self {
        Self::serve(script, usage, Some(Arc::new(tokio::sync::Semaphore::new(0)))).await
    }

    /// Lets one held (or the next) `/v1/messages` request be answered.
    pub fn release(&self) {
        self.gate.as_ref().expect("a gated fake").add_permits(1);
    }

    async fn serve(script: Vec<Turn>, usage: TurnUsage, gate: Option<Arc<tokio::sync::Semaphore>>) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script));
        let shared = Shared {
            script: script.clone(),
            usage,
            requests: requests.clone(),
            gate: gate.clone(),
        };
        let app = Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeAnthropic {
            base_url,
            requests,
            script,
            gate,
            task,
        }
    }

    /// Replaces the script (for turns that name paths known only later).
    pub fn set_script(&self, script: Vec<Turn>) {
        *self.script.lock().unwrap() = script;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// The `/v1/messages` request bodies, parsed.
    pub fn message_requests(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.path.starts_with("/v1/messages") && !r.path.contains("count_tokens"))
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect()
    }
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(shared): State<Shared>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let body = String::from_utf8_lossy(&body).into_owned();
    shared.requests.lock().unwrap().push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        body: body.clone(),
    });
    match (method, path.as_str()) {
        (Method::POST, "/v1/messages/count_tokens") => axum::Json(json!({ "input_tokens": 100 })).into_response(),
        (Method::POST, "/v1/messages") => {
            if let Some(gate) = &shared.gate {
                gate.acquire().await.expect("gate open").forget();
            }
            messages(&shared, &body)
        }
        (method, path) => {
            eprintln!("fake Anthropic API: unexpected {method} {path}");
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"type": "error", "error": {"type": "not_found_error", "message": path}})),
            )
                .into_response()
        }
    }
}

fn messages(shared: &Shared, body: &str) -> Response {
    let request: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or("claude-sonnet-4-5").to_owned();
    let done = request["messages"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["role"] == "assistant").count());
    let script = shared.script.lock().unwrap().clone();
    let turn = script
        .get(done)
        .or(script.last())
        .cloned()
        .unwrap_or(Turn::Text("ok".into()));
    let usage = shared.usage;
    let id = format!("msg_fake_{done}");
    let (block, delta, stop_reason) = match &turn {
        Turn::Text(text) => (
            json!({"type": "text", "text": ""}),
            json!({"type": "text_delta", "text": text}),
            "end_turn",
        ),
        Turn::Bash(command) => (
            json!({"type": "tool_use", "id": format!("toolu_fake_{done}"), "name": "Bash", "input": {}}),
            json!({"type": "input_json_delta", "partial_json": json!({"command": command, "description": "Run the scripted command"}).to_string()}),
            "tool_use",
        ),
        Turn::Read(path) => (
            json!({"type": "tool_use", "id": format!("toolu_fake_{done}"), "name": "Read", "input": {}}),
            json!({"type": "input_json_delta", "partial_json": json!({"file_path": path}).to_string()}),
            "tool_use",
        ),
    };
    if request["stream"] != true {
        let content = match &turn {
            Turn::Text(text) => json!([{"type": "text", "text": text}]),
            Turn::Bash(command) => {
                json!([{"type": "tool_use", "id": format!("toolu_fake_{done}"), "name": "Bash", "input": {"command": command}}])
            }
            Turn::Read(path) => {
                json!([{"type": "tool_use", "id": format!("toolu_fake_{done}"), "name": "Read", "input": {"file_path": path}}])
            }
        };
        return axum::Json(json!({
            "id": id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
        }))
        .into_response();
    }
    let events = [
        (
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": usage.input_tokens, "output_tokens": 1,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ),
        ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                   "usage": {"output_tokens": usage.output_tokens}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ];
    let body: String = events
        .iter()
        .map(|(event, data)| format!("event: {event}\ndata: {data}\n\n"))
        .collect();
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}
