//! The model proxy: `POST /v1/messages` and `/v1/messages/count_tokens` to
//! the Anthropic API with the policy's key, for allowed models only, within
//! the run's budget.
//!
//! Before a message request is forwarded its worst case is reserved on the
//! run's meter: every byte of the body may be an input token at the model's
//! dearest input-side price, and `max_tokens` may all be output. When that
//! does not fit, `max_tokens` is clamped to what does (down to
//! [`MIN_MAX_TOKENS`]); below that the request is refused. The response is
//! passed through unchanged (SSE chunk by chunk), teed to an SSE parser that
//! meters the usage the API reports; the request settles when it ends. A
//! stream that ended early is charged at least its reservation.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::meter::MeterError;
use super::server::{RequestId, State, anthropic_error, run_label};
use super::{Grant, Kind, Refusal, audit, reasons};
use crate::cost::{ModelPrices, PriceTable, Usd, usd_for_usage};
use crate::report::ModelUsage;

/// Largest request body accepted from the pod.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Largest non-streamed response body read from the API.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// The smallest `max_tokens` a request is clamped to; below it, refused.
pub const MIN_MAX_TOKENS: u64 = 64;
/// Input tokens the API may add to a request beyond its body (the tool-use
/// system prompt is a few hundred tokens): part of every worst case.
pub const INPUT_OVERHEAD_TOKENS: u64 = 512;
/// Request headers passed to the API (never the pod's credentials).
const FORWARDED_REQUEST_HEADERS: &[&str] = &["anthropic-version", "anthropic-beta", "content-type", "accept"];
/// Prices are per million tokens.
const TOKENS_PER_PRICE_UNIT: u128 = 1_000_000;

/// What the gateway reads of a model request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRequest {
    /// The model asked for.
    pub model: String,
    /// `max_tokens` (required for messages, absent for count_tokens).
    pub max_tokens: Option<u64>,
    /// Whether a stream was asked for.
    pub stream: bool,
}

/// Reads `model`, `max_tokens` and `stream` of a request body.
pub fn parse_request(body: &[u8]) -> Result<(serde_json::Map<String, Value>, ModelRequest), Refusal> {
    let malformed = |m: &str| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            reasons::MALFORMED,
            format!("claude-operator: {m}"),
        )
    };
    let Ok(Value::Object(json)) = serde_json::from_slice::<Value>(body) else {
        return Err(malformed("the request body is not a JSON object"));
    };
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| malformed("the request names no model"))?
        .to_owned();
    let max_tokens = match json.get("max_tokens") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| malformed("max_tokens is not a non-negative integer"))?,
        ),
    };
    let stream = json.get("stream").and_then(Value::as_bool).unwrap_or(false);
    Ok((
        json,
        ModelRequest {
            model,
            max_tokens,
            stream,
        },
    ))
}

/// Whether `model` matches one of the grant's model globs. An invalid glob
/// matches nothing.
pub fn model_allowed(model: &str, globs: &[String]) -> bool {
    globs.iter().any(|g| glob_matches(g, model))
}

/// Compiled model globs by their text. Compiling one (a regex) took ~0.2 ms
/// of every model request before its first byte; policies name few globs,
/// and the bound keeps a flood of distinct ones from growing it forever.
static MODEL_GLOBS: std::sync::LazyLock<std::sync::RwLock<HashMap<String, Option<globset::GlobMatcher>>>> =
    std::sync::LazyLock::new(Default::default);
const MODEL_GLOBS_MAX: usize = 1024;

fn glob_matches(glob: &str, model: &str) -> bool {
    let cache = &*MODEL_GLOBS;
    if let Some(compiled) = cache.read().unwrap_or_else(|e| e.into_inner()).get(glob) {
        return compiled.as_ref().is_some_and(|m| m.is_match(model));
    }
    let compiled = globset::GlobBuilder::new(glob)
        .literal_separator(false)
        .build()
        .ok()
        .map(|g| g.compile_matcher());
    let matches = compiled.as_ref().is_some_and(|m| m.is_match(model));
    let mut cache = cache.write().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= MODEL_GLOBS_MAX {
        cache.clear();
    }
    cache.insert(glob.to_owned(), compiled);
    matches
}

/// The dearest price of an input-side token (input, cache writes, cache reads).
fn input_price(prices: &ModelPrices) -> u128 {
    [
        prices.input,
        prices.cache_write_5m,
        prices.cache_write_1h,
        prices.cache_read,
    ]
    .iter()
    .map(|p| p.micros())
    .max()
    .unwrap_or(0)
}

/// Input tokens a body of `body_len` bytes can be at most.
fn input_bound(body_len: u64) -> u128 {
    u128::from(body_len) + u128::from(INPUT_OVERHEAD_TOKENS)
}

/// The most a request with a body of `body_len` bytes and `max_tokens` can
/// cost, micro-dollars (rounded up). `None` on overflow.
pub fn worst_case_micros(body_len: u64, max_tokens: u64, prices: &ModelPrices) -> Option<u64> {
    let units = input_bound(body_len)
        .checked_mul(input_price(prices))?
        .checked_add(u128::from(max_tokens).checked_mul(prices.output.micros())?)?;
    u64::try_from(units.div_ceil(TOKENS_PER_PRICE_UNIT)).ok()
}

/// What to do with a request that may cost more than `remaining_micros`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// It fits as it is.
    Fits,
    /// It fits with `max_tokens` lowered to this.
    Clamp(u64),
    /// It does not fit, not even with [`MIN_MAX_TOKENS`].
    Exhausted,
}

/// Fits a request into what is left of the budget.
pub fn fit(body_len: u64, max_tokens: u64, prices: &ModelPrices, remaining_micros: u64) -> Fit {
    if worst_case_micros(body_len, max_tokens, prices).is_some_and(|w| w <= remaining_micros) {
        return Fit::Fits;
    }
    let remaining_units = u128::from(remaining_micros) * TOKENS_PER_PRICE_UNIT;
    let Some(input_units) = input_bound(body_len).checked_mul(input_price(prices)) else {
        return Fit::Exhausted;
    };
    let Some(left) = remaining_units.checked_sub(input_units) else {
        return Fit::Exhausted;
    };
    let output = prices.output.micros();
    // A free output token never limits.
    let most = left.checked_div(output).unwrap_or(u128::from(max_tokens));
    let most = u64::try_from(most).unwrap_or(u64::MAX).min(max_tokens);
    if most >= MIN_MAX_TOKENS.min(max_tokens) && most > 0 {
        Fit::Clamp(most)
    } else {
        Fit::Exhausted
    }
}

/// The usage, model and tool use the API reported for one response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metered {
    /// The model the API answered with.
    pub model: Option<String>,
    /// Tokens reported.
    pub usage: ModelUsage,
    /// Whether any usage was reported.
    pub saw_usage: bool,
    /// The response completed (`message_stop`, or a whole JSON message).
    pub complete: bool,
    /// The last tool the response used.
    pub last_tool: Option<String>,
}

impl Metered {
    /// Takes in one SSE event's data.
    pub fn event(&mut self, event: &str, data: &str) {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return;
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or(event);
        match kind {
            "message_start" => {
                if let Some(message) = v.get("message") {
                    self.message(message);
                }
            }
            "content_block_start" => {
                if let Some(block) = v.get("content_block") {
                    self.block(block);
                }
            }
            "message_delta" => {
                if let Some(usage) = v.get("usage") {
                    self.usage(usage);
                }
            }
            "message_stop" => self.complete = true,
            _ => {}
        }
    }

    /// Takes in a whole (non-streamed) message.
    pub fn message(&mut self, message: &Value) {
        if let Some(model) = message.get("model").and_then(Value::as_str) {
            self.model = Some(model.to_owned());
        }
        if let Some(usage) = message.get("usage") {
            self.usage(usage);
        }
        if let Some(blocks) = message.get("content").and_then(Value::as_array) {
            for block in blocks {
                self.block(block);
            }
        }
    }

    fn block(&mut self, block: &Value) {
        if block.get("type").and_then(Value::as_str) == Some("tool_use")
            && let Some(name) = block.get("name").and_then(Value::as_str)
        {
            self.last_tool = Some(name.to_owned());
        }
    }

    /// Usage figures; the API's are cumulative, so the largest seen wins.
    fn usage(&mut self, usage: &Value) {
        let mut take = |field: &mut u64, value: Option<&Value>| {
            if let Some(n) = value.and_then(Value::as_u64) {
                *field = (*field).max(n);
                self.saw_usage = true;
            }
        };
        let u = &mut self.usage;
        take(&mut u.input_tokens, usage.get("input_tokens"));
        take(&mut u.output_tokens, usage.get("output_tokens"));
        take(
            &mut u.cache_creation_input_tokens,
            usage.get("cache_creation_input_tokens"),
        );
        take(&mut u.cache_read_input_tokens, usage.get("cache_read_input_tokens"));
        take(
            &mut u.cache_creation_1h_input_tokens,
            usage.pointer("/cache_creation/ephemeral_1h_input_tokens"),
        );
    }

    /// Tokens of every kind together (audit lines).
    pub fn tokens(&self) -> u64 {
        let u = &self.usage;
        u.input_tokens
            .saturating_add(u.output_tokens)
            .saturating_add(u.cache_creation_input_tokens)
            .saturating_add(u.cache_read_input_tokens)
    }
}

/// What a finished request is charged, micro-dollars: what the API reported,
/// priced with the model it answered with; at least the reservation when the
/// response did not complete or its model has no price.
pub fn charge(metered: &Metered, request_model: &str, table: &PriceTable, reserved_micros: u64) -> u64 {
    let model = metered.model.as_deref().unwrap_or(request_model);
    let priced = usd_for_usage(model, &metered.usage, table).and_then(|usd| u64::try_from(usd.micros()).ok());
    match priced {
        None => reserved_micros,
        Some(cost) if metered.complete => cost,
        Some(cost) => cost.max(reserved_micros),
    }
}

/// What an upstream error response is charged: nothing unless it reported usage.
fn charge_error(metered: &Metered, request_model: &str, table: &PriceTable, reserved_micros: u64) -> u64 {
    if metered.saw_usage {
        charge(
            &Metered {
                complete: true,
                ..metered.clone()
            },
            request_model,
            table,
            reserved_micros,
        )
    } else {
        0
    }
}

/// One request's audit facts, filled in as it goes.
struct Trail {
    run: String,
    target: String,
    bytes_in: u64,
}

impl Trail {
    fn log(
        &self,
        state: &State,
        status: StatusCode,
        bytes_out: u64,
        metered: Option<(&Metered, u64)>,
        reason: &'static str,
    ) {
        state.audit(&audit::Record {
            run: self.run.clone(),
            kind: Some(Kind::Model),
            target: self.target.clone(),
            method: "POST",
            status: status.as_u16(),
            bytes_in: self.bytes_in,
            bytes_out,
            tokens: metered.map(|(m, _)| m.tokens()).unwrap_or(0),
            cost_micros: metered.map(|(_, c)| c).unwrap_or(0),
            allowed: reason.is_empty(),
            reason,
        });
    }

    fn refuse(&self, state: &State, refusal: &Refusal) -> Response {
        self.log(state, refusal.status, 0, None, refusal.reason);
        anthropic_error(refusal.status, &refusal.message)
    }
}

fn too_large() -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        reasons::TOO_LARGE,
        format!("claude-operator: request bodies are limited to {MAX_BODY_BYTES} bytes"),
    )
}

async fn read_body(body: Body) -> Result<Bytes, Refusal> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            reasons::MALFORMED,
            "claude-operator: the request body could not be read",
        )),
    }
}

/// Serves one model request for the run of `grant`.
pub async fn handle(state: Arc<State>, grant: Arc<Grant>, req: Request) -> Response {
    let request_id = req.extensions().get::<RequestId>().cloned().unwrap_or_default();
    let count_tokens = req.uri().path().ends_with("/count_tokens");
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let (parts, body) = req.into_parts();
    let mut trail = Trail {
        run: run_label(&grant),
        target: String::new(),
        bytes_in: 0,
    };
    // A declared length over the limit is refused before reading a byte.
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return trail.refuse(&state, &too_large());
    }
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(refusal) => return trail.refuse(&state, &refusal),
    };
    trail.bytes_in = body.len() as u64;
    let (mut json, request) = match parse_request(&body) {
        Ok(parsed) => parsed,
        Err(refusal) => return trail.refuse(&state, &refusal),
    };
    trail.target = request.model.clone();
    if !model_allowed(&request.model, &grant.facts.allowed_models) {
        let refusal = Refusal::new(
            StatusCode::BAD_REQUEST,
            reasons::MODEL_NOT_ALLOWED,
            format!(
                "claude-operator: model {:?} is not allowed for this run (allowed: {})",
                request.model,
                grant.facts.allowed_models.join(", ")
            ),
        );
        return trail.refuse(&state, &refusal);
    }
    if count_tokens {
        return forward_unmetered(&state, &grant, &parts.headers, &path_and_query, body, &trail).await;
    }
    let Some(mut max_tokens) = request.max_tokens else {
        let refusal = Refusal::new(
            StatusCode::BAD_REQUEST,
            reasons::MALFORMED,
            "claude-operator: max_tokens is required",
        );
        return trail.refuse(&state, &refusal);
    };
    let table = match PriceTable::with_overrides(&grant.facts.prices) {
        Ok(t) => t,
        Err(err) => {
            let refusal = Refusal::new(
                StatusCode::BAD_REQUEST,
                reasons::MODEL_NOT_ALLOWED,
                format!("claude-operator: the policy's prices are invalid: {err}"),
            );
            return trail.refuse(&state, &refusal);
        }
    };
    let Some(prices) = table.lookup(&request.model).copied() else {
        let refusal = Refusal::new(
            StatusCode::BAD_REQUEST,
            reasons::MODEL_NOT_ALLOWED,
            format!(
                "claude-operator: model {:?} has no price, so its cost cannot be capped; add it to the policy's budget.prices",
                request.model
            ),
        );
        return trail.refuse(&state, &refusal);
    };
    let cap = match Usd::parse(&grant.facts.max_cost_usd).map(|u| u64::try_from(u.micros())) {
        Ok(Ok(cap)) => cap,
        _ => {
            let refusal = Refusal::new(
                StatusCode::BAD_REQUEST,
                reasons::BUDGET_EXHAUSTED,
                "claude-operator: the run's budget is not a valid amount",
            );
            return trail.refuse(&state, &refusal);
        }
    };
    let exhausted = || {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            reasons::BUDGET_EXHAUSTED,
            format!(
                "claude-operator: the run's budget of ${} is spent",
                grant.facts.max_cost_usd
            ),
        )
    };

    // Reserve the worst case, clamping max_tokens when it does not fit. A
    // few rounds: another request may take what was left in between.
    let mut body = body;
    let mut reserved = None;
    for _ in 0..4 {
        let Some(worst) = worst_case_micros(body.len() as u64, max_tokens, &prices) else {
            return trail.refuse(&state, &exhausted());
        };
        match state.meter.reserve(&grant, &request_id.0, worst, cap).await {
            Ok(r) => {
                reserved = Some(r);
                break;
            }
            Err(MeterError::Insufficient { remaining_micros }) => {
                match fit(body.len() as u64, max_tokens, &prices, remaining_micros) {
                    Fit::Fits => {}
                    Fit::Clamp(n) => {
                        max_tokens = n;
                        json.insert("max_tokens".into(), Value::from(n));
                        match serde_json::to_vec(&json) {
                            Ok(b) => body = Bytes::from(b),
                            Err(_) => return trail.refuse(&state, &exhausted()),
                        }
                    }
                    Fit::Exhausted => return trail.refuse(&state, &exhausted()),
                }
            }
            Err(MeterError::Closed) => {
                let refusal = Refusal::new(
                    StatusCode::FORBIDDEN,
                    reasons::RUN_ENDED,
                    "claude-operator: this run has ended; the gateway serves it no more",
                );
                return trail.refuse(&state, &refusal);
            }
            Err(err) => {
                tracing::warn!(run = %trail.run, error = %err, "reserving a model request failed");
                let refusal = Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    reasons::NOT_READY,
                    "claude-operator: the run's meter is unavailable; try again",
                );
                return trail.refuse(&state, &refusal);
            }
        }
    }
    let Some(reserved) = reserved else {
        return trail.refuse(&state, &exhausted());
    };
    let reserved_micros = reserved.reserved_micros;
    if reserved.first {
        observe_first_request(&state.metrics, &grant);
    }
    let settle = Settlement {
        state: state.clone(),
        grant: grant.clone(),
        request_id: request_id.0.clone(),
        request_model: request.model.clone(),
        table,
        reserved_micros,
    };

    let started = Instant::now();
    let sent = upstream_request(&state, &grant, &parts.headers, &path_and_query, body)
        .send()
        .await;
    let resp = match sent {
        Ok(resp) => resp,
        Err(err) => {
            // Never reached the API: nothing was spent. Otherwise it may
            // have been: charge the reservation.
            let cost = if err.is_connect() { 0 } else { reserved_micros };
            let metered = Metered::default();
            settle.finish(&metered, cost).await;
            tracing::warn!(run = %trail.run, error = %err.without_url(), "the model API could not be reached");
            let refusal = Refusal::new(
                StatusCode::BAD_GATEWAY,
                reasons::UPSTREAM_ERROR,
                "claude-operator: the model API could not be reached",
            );
            trail.log(&state, refusal.status, 0, Some((&metered, cost)), refusal.reason);
            return anthropic_error(refusal.status, &refusal.message);
        }
    };
    state
        .metrics
        .gateway_upstream_first_byte
        .observe(started.elapsed().as_secs_f64());
    let status = resp.status();
    let headers = response_headers(resp.headers());
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));

    if status.is_success() && is_sse {
        return stream_response(settle, trail, status, headers, resp);
    }

    // A whole JSON body (a message or an error).
    let bytes = match read_upstream(resp).await {
        Ok(b) => b,
        Err(()) => {
            let metered = Metered::default();
            settle.finish(&metered, reserved_micros).await;
            let refusal = Refusal::new(
                StatusCode::BAD_GATEWAY,
                reasons::UPSTREAM_ERROR,
                "claude-operator: the model API's answer broke off",
            );
            trail.log(
                &state,
                refusal.status,
                0,
                Some((&metered, reserved_micros)),
                refusal.reason,
            );
            return anthropic_error(refusal.status, &refusal.message);
        }
    };
    let mut metered = Metered::default();
    if let Ok(message) = serde_json::from_slice::<Value>(&bytes) {
        metered.message(&message);
    }
    let cost = if status.is_success() {
        metered.complete = metered.saw_usage;
        charge(&metered, &settle.request_model, &settle.table, reserved_micros)
    } else {
        charge_error(&metered, &settle.request_model, &settle.table, reserved_micros)
    };
    settle.finish(&metered, cost).await;
    let reason = if status.is_success() {
        ""
    } else {
        reasons::UPSTREAM_ERROR
    };
    trail.log(&state, status, bytes.len() as u64, Some((&metered, cost)), reason);
    build_response(status, &headers, Body::from(bytes))
}

/// Reads a whole upstream body, bounded.
/// Time from the run's trigger to its first model request: how long a
/// developer waits before the agent starts thinking.
fn observe_first_request(metrics: &crate::telemetry::Metrics, grant: &Grant) {
    let Some(at) = grant.facts.triggered_at.as_deref() else {
        return;
    };
    let Ok(at) = at.parse::<jiff::Timestamp>() else { return };
    let waited = jiff::Timestamp::now().duration_since(at);
    if !waited.is_negative() {
        metrics.gateway_first_model_request.observe(waited.as_secs_f64());
    }
}

async fn read_upstream(resp: reqwest::Response) -> Result<Bytes, ()> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ())?;
        if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// The upstream request: the body, the forwarded headers and the grant's key.
fn upstream_request(
    state: &State,
    grant: &Grant,
    headers: &HeaderMap,
    path_and_query: &str,
    body: Bytes,
) -> reqwest::RequestBuilder {
    let url = format!(
        "{}{}",
        state.args.anthropic_api_url.trim_end_matches('/'),
        path_and_query
    );
    let mut builder = state.http.post(url);
    for name in FORWARDED_REQUEST_HEADERS {
        for value in headers.get_all(*name) {
            builder = builder.header(*name, value);
        }
    }
    builder
        .header("x-api-key", grant.anthropic_key.expose_secret())
        .body(body)
}

/// Response headers passed back to the pod: content type, request ids,
/// retry hints and the API's own `anthropic-*` headers.
fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in upstream {
        let n = name.as_str();
        if matches!(
            n,
            "content-type" | "request-id" | "retry-after" | "x-should-retry" | "cache-control"
        ) || n.starts_with("anthropic-")
        {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

fn build_response(status: StatusCode, headers: &HeaderMap, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers.clone();
    resp
}

/// count_tokens: checked and forwarded, never metered.
async fn forward_unmetered(
    state: &State,
    grant: &Grant,
    headers: &HeaderMap,
    path_and_query: &str,
    body: Bytes,
    trail: &Trail,
) -> Response {
    let resp = match upstream_request(state, grant, headers, path_and_query, body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => {
            let refusal = Refusal::new(
                StatusCode::BAD_GATEWAY,
                reasons::UPSTREAM_ERROR,
                "claude-operator: the model API could not be reached",
            );
            return trail.refuse(state, &refusal);
        }
    };
    let status = resp.status();
    let headers = response_headers(resp.headers());
    match read_upstream(resp).await {
        Ok(bytes) => {
            let reason = if status.is_success() {
                ""
            } else {
                reasons::UPSTREAM_ERROR
            };
            trail.log(state, status, bytes.len() as u64, None, reason);
            build_response(status, &headers, Body::from(bytes))
        }
        Err(()) => {
            let refusal = Refusal::new(
                StatusCode::BAD_GATEWAY,
                reasons::UPSTREAM_ERROR,
                "claude-operator: the model API's answer broke off",
            );
            trail.refuse(state, &refusal)
        }
    }
}

/// What settling one request needs.
struct Settlement {
    state: Arc<State>,
    grant: Arc<Grant>,
    request_id: String,
    request_model: String,
    table: PriceTable,
    reserved_micros: u64,
}

impl Settlement {
    /// Settles the request at `cost` micro-dollars. A failed settle leaves
    /// the reservation on the meter: the run is charged its worst case.
    async fn finish(&self, metered: &Metered, cost: u64) {
        let model = metered.model.as_deref().unwrap_or(&self.request_model);
        let result = self
            .state
            .meter
            .settle(
                &self.grant,
                &self.request_id,
                model,
                &metered.usage,
                cost,
                metered.last_tool.clone(),
            )
            .await;
        if let Err(err) = result {
            tracing::warn!(
                run = %run_label(&self.grant),
                error = %err,
                "settling a model request failed; its reservation stays charged"
            );
        }
        if cost > 0 {
            self.state
                .metrics
                .gateway_spend_usd
                .get_or_create(&crate::telemetry::PolicyLabels {
                    namespace: self.grant.facts.namespace.clone(),
                    policy: self.grant.facts.policy.clone(),
                })
                .inc_by(cost as f64 / 1e6);
        }
    }
}

/// Counts an open stream while alive.
struct OpenStream(crate::telemetry::Metrics);

impl OpenStream {
    fn new(metrics: &crate::telemetry::Metrics) -> Self {
        metrics.gateway_open_streams.inc();
        OpenStream(metrics.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.gateway_open_streams.dec();
    }
}

/// Passes an SSE response through chunk by chunk, teeing each chunk to the
/// meter; settles when the stream ends or the pod goes away.
fn stream_response(
    settle: Settlement,
    trail: Trail,
    status: StatusCode,
    headers: HeaderMap,
    resp: reqwest::Response,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let open = OpenStream::new(&settle.state.metrics);
    // The sender lives in the body stream: dropping the body (done, or the
    // pod went away) ends the meter's input.
    let body = resp.bytes_stream().map(move |chunk| {
        if let Ok(bytes) = &chunk {
            let _ = tx.send(bytes.clone());
        }
        chunk
    });
    tokio::spawn(async move {
        let _open = open;
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = counter.clone();
        let counted = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(move |b: Bytes| {
            count.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, Infallible>(b)
        });
        let mut events = std::pin::pin!(counted.eventsource());
        let mut metered = Metered::default();
        while let Some(event) = events.next().await {
            if let Ok(event) = event {
                metered.event(&event.event, &event.data);
            }
        }
        let bytes_out = counter.load(std::sync::atomic::Ordering::Relaxed);
        let cost = charge(&metered, &settle.request_model, &settle.table, settle.reserved_micros);
        settle.finish(&metered, cost).await;
        let reason = if metered.complete { "" } else { reasons::UPSTREAM_ERROR };
        trail.log(&settle.state, status, bytes_out, Some((&metered, cost)), reason);
    });
    build_response(status, &headers, Body::from_stream(body))
}

#[cfg(test)]
pub(crate) mod tests;
