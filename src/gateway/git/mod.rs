//! git smart HTTP for the run's one repository (`/git/<owner>/<name>.git/...`).
//!
//! Fetches (`upload-pack`) are forwarded to `--github-git-url` with the run's
//! token and streamed back. Pushes (`receive-pack`) are guarded: the ref
//! advertisement is rewritten to show only the run's branch and the commits
//! the push may build on ([`pkt::rewrite_receive_advertisement`]); the push
//! body is size-limited, its command list decided ([`policy::decide_push`])
//! and its content checked with git itself ([`inspect`]) before the very
//! same bytes are forwarded. Refused pushes get a `report-status` answer so
//! `git push` prints the reason.
//!
//! The token only ever goes upstream, in a header or in a child git's
//! environment; one audit line per request.

pub mod inspect;
pub mod pkt;
pub mod policy;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use secrecy::ExposeSecret;

use self::policy::{Endpoint, PushPlan, Service};
use super::audit::{self, Record};
use super::server::State;
use super::{Grant, Kind, Refusal, reasons};

/// Largest ref advertisement read from upstream (pushes only; fetches stream).
const MAX_ADVERTISEMENT: usize = 64 << 20;
/// How many times its packed size a push may unpack to.
const UNPACK_FACTOR: u64 = 8;

const GIT_PROTOCOL: HeaderName = HeaderName::from_static("git-protocol");

/// One request's audit line, written when it is dropped: at the end of the
/// handler, or when a streamed answer ends.
struct Audit {
    run: String,
    target: String,
    method: String,
    status: u16,
    allowed: bool,
    reason: &'static str,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
}

impl Drop for Audit {
    fn drop(&mut self) {
        audit::log(&Record {
            run: self.run.clone(),
            kind: Some(Kind::Git),
            target: self.target.clone(),
            method: &self.method,
            status: self.status,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out,
            allowed: self.allowed,
            reason: self.reason,
            ..Record::default()
        });
    }
}

impl Audit {
    fn refuse(&mut self, r: &Refusal) -> Response {
        let body = format!("{}\n", r.message);
        self.status = r.status.as_u16();
        self.allowed = false;
        self.reason = r.reason;
        self.bytes_out = body.len() as u64;
        (r.status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
    }

    /// A push refused with a `report-status` answer git prints.
    fn refuse_push(&mut self, r: &Refusal, refnames: &[&str], side_band: bool) -> Response {
        let body = pkt::report_refusal(refnames, &r.message, side_band);
        self.status = 200;
        self.allowed = false;
        self.reason = r.reason;
        self.bytes_out = body.len() as u64;
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/x-git-receive-pack-result"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response()
    }
}

/// Serves one git smart HTTP request for the run of `grant`.
pub async fn handle(state: Arc<State>, grant: Arc<Grant>, req: Request) -> Response {
    let method = req.method().clone();
    let mut audit = Audit {
        run: format!("{}/{}", grant.facts.namespace, grant.facts.run),
        target: String::new(),
        method: method.to_string(),
        status: 0,
        allowed: true,
        reason: "",
        bytes_in: Arc::default(),
        bytes_out: 0,
    };
    let Some(route) = policy::parse_route(&method, req.uri().path(), req.uri().query()) else {
        return audit.refuse(&Refusal::new(
            StatusCode::NOT_FOUND,
            reasons::MALFORMED,
            "not a git smart HTTP endpoint of the gateway (use /git/<owner>/<name>.git)",
        ));
    };
    audit.target = route.repository.clone();
    if let Err(r) = policy::check_repository(&route.repository, &grant.facts.repository) {
        return audit.refuse(&r);
    }
    let upstream = format!(
        "{}/{}.git",
        state.args.github_git_url.trim_end_matches('/'),
        grant.facts.repository
    );
    match route.endpoint {
        Endpoint::InfoRefs(Service::UploadPack) | Endpoint::Rpc(Service::UploadPack) => {
            forward_fetch(&state, &grant, route.endpoint, &upstream, req, audit).await
        }
        Endpoint::InfoRefs(Service::ReceivePack) => receive_advertisement(&state, &grant, &upstream, audit).await,
        Endpoint::Rpc(Service::ReceivePack) => push(&state, &grant, &upstream, req, audit).await,
    }
}

/// `Basic base64(x-access-token:<token>)`, marked sensitive.
fn authorization(grant: &Grant) -> HeaderValue {
    let raw = format!("x-access-token:{}", grant.github_token.expose_secret());
    let mut v = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

fn upstream_error(message: &str) -> Refusal {
    Refusal::new(StatusCode::BAD_GATEWAY, reasons::UPSTREAM_ERROR, message)
}

/// Copies the request headers git's protocol needs.
fn forward_headers(from: &HeaderMap, names: &[HeaderName]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in names {
        if let Some(v) = from.get(name) {
            out.insert(name.clone(), v.clone());
        }
    }
    match from.get(header::USER_AGENT) {
        Some(ua) if ua.as_bytes().starts_with(b"git/") => {
            out.insert(header::USER_AGENT, ua.clone());
        }
        _ => {
            out.insert(
                header::USER_AGENT,
                HeaderValue::from_static("git/claude-operator-gateway"),
            );
        }
    }
    out
}

/// Turns an upstream answer into ours, streaming its body; the audit line
/// is written when the body ends.
fn stream_back(resp: reqwest::Response, mut audit: Audit) -> Response {
    let status = match resp.status() {
        // Our token was refused: not something the pod's credentials can fix.
        s if s == StatusCode::UNAUTHORIZED || s == StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
            return audit.refuse(&upstream_error("the upstream git server refused the run's credentials"));
        }
        s => s,
    };
    audit.status = status.as_u16();
    let mut builder = Response::builder().status(status);
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::CACHE_CONTROL,
        header::EXPIRES,
        header::PRAGMA,
    ] {
        if let Some(v) = resp.headers().get(&name) {
            builder = builder.header(name, v.clone());
        }
    }
    let body = resp.bytes_stream().map(move |chunk| {
        // The whole record moves into the stream (not just the counter), so
        // the line is written when the body ends.
        let audit: &mut Audit = &mut audit;
        if let Ok(b) = &chunk {
            audit.bytes_out += b.len() as u64;
        }
        chunk
    });
    builder
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn forward_fetch(
    state: &State,
    grant: &Grant,
    endpoint: Endpoint,
    upstream: &str,
    req: Request,
    mut audit: Audit,
) -> Response {
    let (parts, body) = req.into_parts();
    let (method, url) = match endpoint {
        Endpoint::InfoRefs(_) => (Method::GET, format!("{upstream}/info/refs?service=git-upload-pack")),
        Endpoint::Rpc(_) => (Method::POST, format!("{upstream}/git-upload-pack")),
    };
    let headers = forward_headers(
        &parts.headers,
        &[
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::CONTENT_ENCODING,
            header::ACCEPT_ENCODING,
            GIT_PROTOCOL,
        ],
    );
    let mut rb = state
        .http
        .request(method.clone(), &url)
        .headers(headers)
        .header(header::AUTHORIZATION, authorization(grant));
    if method == Method::POST {
        let counter = audit.bytes_in.clone();
        let stream = body.into_data_stream().map(move |chunk| {
            if let Ok(b) = &chunk {
                counter.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            chunk
        });
        rb = rb.body(reqwest::Body::wrap_stream(stream));
    }
    match rb.send().await {
        Ok(resp) => stream_back(resp, audit),
        Err(_) => audit.refuse(&upstream_error("the upstream git server could not be reached")),
    }
}

/// GETs an upstream advertisement and parses it.
async fn fetch_advertisement(
    state: &State,
    grant: &Grant,
    upstream: &str,
    service: Service,
) -> Result<pkt::Advertisement, Refusal> {
    let resp = state
        .http
        .get(format!("{upstream}/info/refs?service={}", service.as_str()))
        .header(header::AUTHORIZATION, authorization(grant))
        .header(header::USER_AGENT, "git/claude-operator-gateway")
        .send()
        .await
        .map_err(|_| upstream_error("the upstream git server could not be reached"))?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                reasons::UPSTREAM_ERROR,
                "the repository was not found upstream",
            ));
        }
        s => {
            return Err(upstream_error(&format!(
                "the upstream git server answered {} to the ref advertisement",
                s.as_u16()
            )));
        }
    }
    let body = read_limited(Body::from_stream(resp.bytes_stream()), MAX_ADVERTISEMENT)
        .await
        .map_err(|_| upstream_error("the upstream ref advertisement is too large or was cut off"))?;
    let advert = pkt::parse_advertisement(&body)
        .map_err(|e| upstream_error(&format!("the upstream ref advertisement is malformed ({e})")))?;
    if advert.service != service.as_str() {
        return Err(upstream_error("the upstream ref advertisement is for another service"));
    }
    Ok(advert)
}

async fn read_limited(body: Body, limit: usize) -> Result<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Limited::new(body, limit).collect().await?.to_bytes())
}

/// `info/refs?service=git-receive-pack`: only the run's branch, and the
/// bases its pushes build on as `.have`.
async fn receive_advertisement(state: &State, grant: &Grant, upstream: &str, mut audit: Audit) -> Response {
    let Some(branch) = grant.facts.push_branch.as_deref() else {
        return audit.refuse(&policy::read_only());
    };
    let branch_ref = policy::branch_ref(branch);
    audit.target = format!("{} {branch_ref}", audit.target);
    let advert = match fetch_advertisement(state, grant, upstream, Service::ReceivePack).await {
        Ok(a) => a,
        Err(r) => return audit.refuse(&r),
    };
    let haves = match grant.facts.head_sha.as_deref() {
        Some(h) if pkt::is_oid(h) => vec![h.to_owned()],
        Some(_) => return audit.refuse(&upstream_error("the run's admitted head is not an object id")),
        None => match fetch_advertisement(state, grant, upstream, Service::UploadPack).await {
            Ok(up) => up
                .refs
                .iter()
                .filter(|r| r.name == "HEAD" && !pkt::is_zero(&r.oid))
                .map(|r| r.oid.clone())
                .collect(),
            Err(r) => return audit.refuse(&r),
        },
    };
    let body = pkt::rewrite_receive_advertisement(&advert, &branch_ref, &haves);
    audit.status = 200;
    audit.bytes_out = body.len() as u64;
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-git-receive-pack-advertisement"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `POST git-receive-pack`: decided, checked, then forwarded byte for byte.
async fn push(state: &State, grant: &Grant, upstream: &str, req: Request, mut audit: Audit) -> Response {
    let Some(branch) = grant.facts.push_branch.as_deref() else {
        return audit.refuse(&policy::read_only());
    };
    audit.target = format!("{} {}", audit.target, policy::branch_ref(branch));
    let (parts, body) = req.into_parts();
    // git does not compress push bodies; a compressed one is not what the
    // gateway can inspect.
    if parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return audit.refuse(&Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            reasons::MALFORMED,
            "compressed push bodies are not supported",
        ));
    }
    let max = state.args.max_push_bytes;
    let too_large = Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        reasons::TOO_LARGE,
        format!("the push is larger than the gateway's limit of {max} bytes"),
    );
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return audit.refuse(&too_large);
    }
    let body = match read_limited(body, usize::try_from(max).unwrap_or(usize::MAX)).await {
        Ok(b) => b,
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return audit.refuse(&too_large),
        Err(_) => {
            return audit.refuse(&Refusal::new(
                StatusCode::BAD_REQUEST,
                reasons::MALFORMED,
                "the push body could not be read",
            ));
        }
    };
    audit.bytes_in.store(body.len() as u64, Ordering::Relaxed);
    // git probes with a bare flush before a large push: no command, nothing
    // to forward.
    if &body[..] == pkt::FLUSH {
        audit.status = 200;
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-git-receive-pack-result")],
            Body::empty(),
        )
            .into_response();
    }
    let request = match pkt::parse_push(&body) {
        Ok(r) => r,
        Err(e) => {
            return audit.refuse(&Refusal::new(
                StatusCode::BAD_REQUEST,
                reasons::MALFORMED,
                format!("malformed push: {e}"),
            ));
        }
    };
    let refnames: Vec<&str> = request.commands.iter().map(|c| c.refname.as_str()).collect();
    let side_band = request.capabilities.iter().any(|c| c == "side-band-64k");
    let reportable = request.capabilities.iter().any(|c| c == "report-status") && !refnames.is_empty();
    let refuse = |audit: &mut Audit, r: &Refusal| {
        if reportable {
            audit.refuse_push(r, &refnames, side_band)
        } else {
            audit.refuse(r)
        }
    };
    let plan = match policy::decide_push(
        &request.commands,
        &request.capabilities,
        Some(branch),
        grant.facts.push_to_pull_request,
    ) {
        Ok(p) => p,
        Err(r) => return refuse(&mut audit, &r),
    };
    let protected = match policy::protected_set(&grant.facts.protected_paths) {
        Ok(s) => s,
        Err(r) => return refuse(&mut audit, &r),
    };
    if let Err(r) = check_content(
        state,
        grant,
        upstream,
        &plan,
        &protected,
        body.slice(request.pack_offset..),
    )
    .await
    {
        return refuse(&mut audit, &r);
    }
    let sent = state
        .http
        .post(format!("{upstream}/git-receive-pack"))
        .header(header::AUTHORIZATION, authorization(grant))
        .header(header::CONTENT_TYPE, "application/x-git-receive-pack-request")
        .header(header::ACCEPT, "application/x-git-receive-pack-result")
        .header(header::USER_AGENT, "git/claude-operator-gateway")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) => stream_back(resp, audit),
        Err(_) => refuse(
            &mut audit,
            &upstream_error("the upstream git server could not be reached"),
        ),
    }
}

async fn check_content(
    state: &State,
    grant: &Grant,
    upstream: &str,
    plan: &PushPlan,
    protected: &globset::GlobSet,
    pack: bytes::Bytes,
) -> Result<(), Refusal> {
    let upstream = upstream.to_owned();
    let authorization = authorization(grant)
        .to_str()
        .map(str::to_owned)
        .map_err(|_| upstream_error("the run's token is unusable"))?;
    let token = grant.github_token.expose_secret().to_owned();
    let plan = plan.clone();
    let head = grant.facts.head_sha.clone();
    let protected = protected.clone();
    let max_unpacked = state.args.max_push_bytes.saturating_mul(UNPACK_FACTOR);
    tokio::task::spawn_blocking(move || {
        inspect::check(&inspect::Push {
            upstream_url: &upstream,
            authorization: &authorization,
            token: &token,
            plan: &plan,
            head_sha: head.as_deref(),
            pack: &pack,
            protected: &protected,
            max_unpacked_bytes: max_unpacked,
        })
    })
    .await
    .unwrap_or_else(|_| {
        Err(Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            reasons::UPSTREAM_ERROR,
            "the gateway could not check the push; nothing was pushed",
        ))
    })
}
