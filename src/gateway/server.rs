//! The gateway's HTTP server: routes, authentication by capability, and the
//! refusals answered before a handler runs.
//!
//! Every request but an unknown path must present its run's capability, in
//! the place its client puts a credential: `x-api-key` or `Authorization:
//! Bearer` (model), the HTTP Basic password (git), `Authorization: Bearer` or
//! `token` (GitHub REST), `Proxy-Authorization: Basic` (CONNECT). The
//! capability is hashed and looked up in the [`Registry`]; no grant is 401
//! (407 for CONNECT), a closed or expired grant is 403. CONNECT requests are
//! dispatched before the router (their URI has no path).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State as Extract};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use base64::Engine;
use tower::ServiceExt as _;

use super::meter::tranche::{self, TrancheMeter};
use super::meter::{KubeMeterStore, MeterStore};
use super::registry::{self, Registry};
use super::{Grant, Kind, Refusal, StartError, audit, connect, git, model, reasons, rest};
use crate::cli::GatewayArgs;
use crate::telemetry::Metrics;

/// What every request handler shares.
pub struct State {
    /// Open grants.
    pub registry: Registry,
    /// Upstream HTTP client.
    pub http: reqwest::Client,
    /// Settings (upstream URLs, limits).
    pub args: GatewayArgs,
    /// Metrics.
    pub metrics: Metrics,
    /// Where model requests reserve and settle their cost.
    pub meter: Arc<dyn MeterStore>,
    /// This replica's name (audit lines).
    pub replica: String,
    /// The gateway's namespace (where the grants are).
    pub namespace: String,
    /// The grant watch, stopped with the state.
    watch: Option<tokio::task::AbortHandle>,
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.abort();
        }
    }
}

/// A random id of one request (the meter's in-flight key), in the request's
/// extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// A fresh random id.
    pub fn new() -> Self {
        let mut bytes = [0u8; 12];
        // Uniqueness, not secrecy: a clock-based fallback is fine.
        if getrandom::fill(&mut bytes).is_err() {
            let nanos = jiff::Timestamp::now().as_nanosecond().to_le_bytes();
            bytes.copy_from_slice(&nanos[..12]);
        }
        RequestId(hex::encode(bytes))
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

/// The upstream client: no proxy from the environment, bounded connects.
pub fn upstream_client() -> Result<reqwest::Client, StartError> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(std::time::Duration::from_secs(600))
        .build()
        .map_err(|e| StartError::Config(format!("building the upstream client: {e}")))
}

/// This replica's name: `--gateway-replica`, else the host name.
fn replica_name(args: &GatewayArgs) -> String {
    args.gateway_replica
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

impl State {
    /// Starts watching grants and builds the upstream client.
    pub async fn new(client: kube::Client, args: &GatewayArgs, metrics: Metrics) -> Result<State, StartError> {
        let namespace = registry::gateway_namespace(args);
        let registry = Registry::default();
        // Requests reserve from this replica's tranches of each run's
        // budget; the grant Secrets hold the shared meter.
        let holder = tranche::incarnation(&replica_name(args));
        let meter = Arc::new(TrancheMeter::new(
            KubeMeterStore::new(client.clone(), &namespace),
            holder,
        ));
        let ear = meter.clone();
        registry.listen(Arc::new(move |secret, deleted| ear.observe(secret, deleted)));
        let watch = tokio::spawn(registry.watch(client, &namespace)).abort_handle();
        let mut state = State::with_parts(args.clone(), registry, meter, metrics)?;
        state.namespace = namespace;
        state.watch = Some(watch);
        Ok(state)
    }

    /// A state over given parts (tests, and other meter stores).
    pub fn with_parts(
        args: GatewayArgs,
        registry: Registry,
        meter: Arc<dyn MeterStore>,
        metrics: Metrics,
    ) -> Result<State, StartError> {
        Ok(State {
            registry,
            http: upstream_client()?,
            namespace: registry::gateway_namespace(&args),
            replica: replica_name(&args),
            args,
            metrics,
            meter,
            watch: None,
        })
    }

    /// Writes an audit line and counts a refusal by its reason.
    pub fn audit(&self, record: &audit::Record<'_>) {
        if !record.allowed && !record.reason.is_empty() {
            self.metrics.gateway_refusal(record.reason);
        }
        audit::log(record);
    }
}

/// `namespace/run` of a grant, as audit lines name it.
pub fn run_label(grant: &Grant) -> String {
    format!("{}/{}", grant.facts.namespace, grant.facts.run)
}

/// The capability a request presents, from where `kind`'s client puts it.
pub fn presented_capability(kind: Kind, headers: &HeaderMap) -> Option<String> {
    let value = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let scheme = |v: &str, scheme: &str| {
        let (s, rest) = v.split_once(' ')?;
        s.eq_ignore_ascii_case(scheme).then(|| rest.trim().to_owned())
    };
    let basic_password = |v: &str| {
        let encoded = scheme(v, "Basic")?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        text.split_once(':').map(|(_, password)| password.to_owned())
    };
    let cap = match kind {
        Kind::Model => value(header::HeaderName::from_static("x-api-key"))
            .map(str::to_owned)
            .or_else(|| value(header::AUTHORIZATION).and_then(|v| scheme(v, "Bearer"))),
        Kind::Git => value(header::AUTHORIZATION).and_then(basic_password),
        Kind::GitHub => value(header::AUTHORIZATION).and_then(|v| scheme(v, "Bearer").or_else(|| scheme(v, "token"))),
        Kind::Connect => value(header::PROXY_AUTHORIZATION).and_then(basic_password),
    }?;
    (!cap.is_empty()).then_some(cap)
}

/// The open grant of the capability a request presents.
pub fn authenticate(state: &State, kind: Kind, headers: &HeaderMap) -> Result<Arc<Grant>, Refusal> {
    if !state.registry.is_ready() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            reasons::NOT_READY,
            "claude-operator: the gateway is starting; try again shortly",
        ));
    }
    let unauthenticated = || {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            reasons::UNAUTHENTICATED,
            "claude-operator: no valid run capability was presented",
        )
    };
    let capability = presented_capability(kind, headers).ok_or_else(unauthenticated)?;
    let grant = state.registry.lookup(&capability).ok_or_else(unauthenticated)?;
    if !grant.is_open(jiff::Timestamp::now()) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            reasons::RUN_ENDED,
            "claude-operator: this run has ended; the gateway serves it no more",
        ));
    }
    Ok(grant)
}

/// An error in the Anthropic API's shape (the CLI shows its message).
pub fn anthropic_error(status: StatusCode, message: &str) -> Response {
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let body = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// A refusal as `kind`'s client understands it.
pub fn refusal_response(kind: Kind, refusal: &Refusal) -> Response {
    let challenge = |value: &'static str| HeaderValue::from_static(value);
    match kind {
        Kind::Model => anthropic_error(refusal.status, &refusal.message),
        Kind::Git => {
            let mut resp = (refusal.status, format!("{}\n", refusal.message)).into_response();
            if refusal.status == StatusCode::UNAUTHORIZED {
                // git asks its credential helper only after a Basic challenge.
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, challenge("Basic realm=\"claude-operator\""));
            }
            resp
        }
        Kind::GitHub => (
            refusal.status,
            axum::Json(serde_json::json!({"message": refusal.message})),
        )
            .into_response(),
        Kind::Connect => {
            if refusal.status == StatusCode::UNAUTHORIZED {
                let mut resp = (StatusCode::PROXY_AUTHENTICATION_REQUIRED, refusal.message.clone()).into_response();
                resp.headers_mut()
                    .insert(header::PROXY_AUTHENTICATE, challenge("Basic realm=\"claude-operator\""));
                resp
            } else {
                (refusal.status, refusal.message.clone()).into_response()
            }
        }
    }
}

/// Audit target of a request refused before its handler: the path (or
/// authority for CONNECT), without the query.
fn target_of(req: &Request) -> String {
    if req.method() == Method::CONNECT {
        req.uri().authority().map(|a| a.to_string()).unwrap_or_default()
    } else {
        req.uri().path().to_owned()
    }
}

/// Authenticates, then runs `handler` for the grant; refusals are answered
/// and audited here.
async fn guarded<F, Fut>(kind: Kind, state: Arc<State>, mut req: Request, handler: F) -> Response
where
    F: FnOnce(Arc<State>, Arc<Grant>, Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    req.extensions_mut().insert(RequestId::new());
    match authenticate(&state, kind, req.headers()) {
        Ok(grant) => {
            let resp = handler(state.clone(), grant, req).await;
            state
                .metrics
                .gateway_request(kind.as_str(), resp.status().as_u16() < 400);
            resp
        }
        Err(refusal) => {
            let target = target_of(&req);
            let resp = refusal_response(kind, &refusal);
            state.metrics.gateway_request(kind.as_str(), false);
            state.audit(&audit::Record {
                kind: Some(kind),
                target,
                method: req.method().as_str(),
                status: resp.status().as_u16(),
                allowed: false,
                reason: refusal.reason,
                ..Default::default()
            });
            resp
        }
    }
}

async fn model_route(Extract(state): Extract<Arc<State>>, req: Request) -> Response {
    guarded(Kind::Model, state, req, model::handle).await
}

async fn git_route(Extract(state): Extract<Arc<State>>, req: Request) -> Response {
    guarded(Kind::Git, state, req, git::handle).await
}

async fn github_route(Extract(state): Extract<Arc<State>>, req: Request) -> Response {
    guarded(Kind::GitHub, state, req, rest::handle).await
}

async fn not_found(Extract(state): Extract<Arc<State>>, req: Request) -> Response {
    state.audit(&audit::Record {
        target: target_of(&req),
        method: req.method().as_str(),
        status: StatusCode::NOT_FOUND.as_u16(),
        allowed: false,
        reason: reasons::MALFORMED,
        ..Default::default()
    });
    (StatusCode::NOT_FOUND, "claude-operator gateway: no such endpoint\n").into_response()
}

/// The routes (CONNECT aside, see [`service`]).
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        // Other methods on known paths are audited like unknown paths.
        .route("/v1/messages", post(model_route).fallback(not_found))
        .route("/v1/messages/count_tokens", post(model_route).fallback(not_found))
        .route("/git/{*rest}", get(git_route).post(git_route).fallback(not_found))
        .route("/github/{*rest}", any(github_route))
        .fallback(not_found)
        .with_state(state)
}

/// The whole gateway as one service: CONNECT to the proxy, the rest to the
/// router.
pub fn service(
    state: Arc<State>,
) -> impl tower::Service<
    Request,
    Response = Response,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    let router = router(state.clone());
    tower::service_fn(move |req: Request<Body>| {
        let (state, router) = (state.clone(), router.clone());
        async move {
            if req.method() == Method::CONNECT {
                Ok(guarded(Kind::Connect, state, req, connect::handle).await)
            } else {
                router.oneshot(req).await
            }
        }
    })
}

/// Serves runner pods until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let make = axum::ServiceExt::<Request>::into_make_service(service(state.clone()));
    // Streamed answers are many small writes: Nagle's algorithm would hold
    // each behind the ACK of the one before.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let served = axum::serve(listener, make).with_graceful_shutdown(shutdown).await;
    // What this replica holds of the runs' budgets goes back to them.
    state.meter.release_all().await;
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn basic(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    #[test]
    fn each_kind_reads_the_capability_where_its_client_puts_it() {
        let git_auth = basic("x-access-token", "cocap_g");
        let proxy_auth = basic("run", "cocap_c");
        type Case<'a> = (Kind, Vec<(&'a str, &'a str)>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (Kind::Model, vec![("x-api-key", "cocap_m")], Some("cocap_m")),
            (Kind::Model, vec![("authorization", "Bearer cocap_m")], Some("cocap_m")),
            (
                Kind::Model,
                vec![("authorization", "bearer  cocap_m ")],
                Some("cocap_m"),
            ),
            (Kind::Model, vec![("x-api-key", "")], None),
            (Kind::Model, vec![], None),
            (Kind::Git, vec![("authorization", git_auth.as_str())], Some("cocap_g")),
            (Kind::Git, vec![("authorization", "Bearer cocap_g")], None),
            (Kind::Git, vec![("authorization", "Basic !!!")], None),
            (Kind::GitHub, vec![("authorization", "token cocap_h")], Some("cocap_h")),
            (Kind::GitHub, vec![("authorization", "Bearer cocap_h")], Some("cocap_h")),
            (Kind::GitHub, vec![("x-api-key", "cocap_h")], None),
            (
                Kind::Connect,
                vec![("proxy-authorization", proxy_auth.as_str())],
                Some("cocap_c"),
            ),
            (Kind::Connect, vec![("authorization", proxy_auth.as_str())], None),
        ];
        for (kind, h, expected) in cases {
            assert_eq!(
                presented_capability(kind, &headers(&h)).as_deref(),
                expected,
                "{kind:?} {h:?}"
            );
        }
    }

    #[test]
    fn refusals_are_shaped_for_each_client() {
        let unauth = Refusal::new(StatusCode::UNAUTHORIZED, reasons::UNAUTHENTICATED, "no");
        let git = refusal_response(Kind::Git, &unauth);
        assert_eq!(git.status(), StatusCode::UNAUTHORIZED);
        assert!(
            git.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Basic")
        );
        let connect = refusal_response(Kind::Connect, &unauth);
        assert_eq!(connect.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        assert!(connect.headers().contains_key(header::PROXY_AUTHENTICATE));
        let model = refusal_response(Kind::Model, &unauth);
        assert_eq!(model.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(model.headers()[header::CONTENT_TYPE], "application/json");
    }
}
