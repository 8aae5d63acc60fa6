//! The HTTP side of the receiver: `POST /webhook`. In order: a slot among
//! the concurrent deliveries, bounded body read within a deadline, required
//! headers, signature (before anything of the body is looked at), parse,
//! policy match, trigger rules and pre-filters, then one `ClaudeRun` named
//! after the signed body. Every delivery ends in exactly one audit line and one
//! metric increment. [`serve`] owns the connections: header-read deadline and
//! a cap on open connections, so slow or idle clients cannot pile up.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;

use super::intake::{self, Outcome};
use super::secrets::SecretsHandle;
use crate::api::{ClaudeRun, ClaudeRunPolicy};
use crate::github::signature::SignatureError;
use crate::telemetry::Metrics;

/// GitHub caps webhook payloads at 25 MiB; the receiver's default is far
/// lower (see [`Limits`]): a trigger comment is kilobytes.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// What the receiver lets one client, and all of them together, hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest body read; larger ones get 413 without being read past this.
    pub max_body_bytes: usize,
    /// How long a client may take to send a request's headers (including
    /// the wait for the next request on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// How long a client may take to send a body once its headers are in.
    pub body_read_timeout: Duration,
    /// Deliveries read, verified and parsed at once; more get 503 at once
    /// (GitHub redelivers on request, and a flood must not grow memory). A
    /// delivery gives its slot (and its body) back before it waits on the
    /// apiserver: what waits there is its run, at most one per open
    /// connection ([`Limits::max_connections`]), each bounded by the
    /// prompt's cap.
    pub max_concurrent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_concurrent: 64,
        }
    }
}

impl Limits {
    /// The limits the command line sets.
    pub fn from_args(args: &crate::cli::RunArgs) -> Self {
        Self {
            max_body_bytes: usize::try_from(args.webhook_max_body_bytes).unwrap_or(MAX_BODY_BYTES),
            header_read_timeout: Duration::from_secs(args.webhook_header_timeout_seconds),
            body_read_timeout: Duration::from_secs(args.webhook_body_timeout_seconds),
            max_concurrent: usize::try_from(args.webhook_max_concurrent).unwrap_or(64),
        }
    }

    /// Open connections allowed: room for idle kept-alive connections
    /// besides the ones with a delivery in flight.
    pub fn max_connections(&self) -> usize {
        self.max_concurrent.saturating_mul(4).max(16)
    }
}

/// What the receiver needs.
#[derive(Clone)]
pub struct Receiver {
    pub client: kube::Client,
    pub secrets: SecretsHandle,
    pub policies: Store<ClaudeRunPolicy>,
    pub metrics: Metrics,
    /// The operator's own bot login (`<slug>[bot]`); its comments never trigger.
    pub bot_login: Option<String>,
    pub limiter: Arc<intake::ActorLimiter>,
    /// The cluster's tenancy configuration: which policies may serve at all.
    pub tenancy: Arc<crate::tenancy::Tenancy>,
}

/// The receiver's router (`POST /webhook`) with the default [`Limits`].
pub fn router(receiver: Receiver) -> Router {
    router_with(receiver, Limits::default())
}

#[derive(Clone)]
struct Shared {
    rx: Receiver,
    limits: Limits,
    inflight: Arc<tokio::sync::Semaphore>,
}

/// The receiver's router (`POST /webhook`) under these limits.
pub fn router_with(receiver: Receiver, limits: Limits) -> Router {
    let shared = Shared {
        rx: receiver,
        limits,
        inflight: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
    };
    Router::new()
        .route("/webhook", post(handle))
        // The handler enforces the limit itself, to answer and audit it.
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

/// Serves the receiver on `listener` until `shutdown`, then lets the
/// requests in flight finish. HTTP/1 only (GitHub's deliveries are HTTP/1.1);
/// each connection must send its headers within `header_read_timeout`, and
/// at most [`Limits::max_connections`] are open at once (further clients wait
/// in the listen backlog).
pub async fn serve(
    listener: tokio::net::TcpListener,
    receiver: Receiver,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router_with(receiver, limits);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut open = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = connections.clone().acquire_owned() => p.expect("never closed"),
        };
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    // Out of file descriptors and the like: pause, do not spin.
                    tracing::warn!(error = %err, "accepting a webhook connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        // Finished connections are reaped so the set does not grow.
        while open.try_join_next().is_some() {}
        open.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(64 * 1024);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => { let _ = res; }
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    while open.join_next().await.is_some() {}
    Ok(())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

async fn handle(State(shared): State<Shared>, request: axum::extract::Request) -> Response {
    let started = Instant::now();
    let rx = &shared.rx;
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let event = header(&headers, "x-github-event").unwrap_or("").to_owned();
    let delivery = header(&headers, "x-github-delivery").unwrap_or("").to_owned();
    // Held while the body is in memory: bodies are at most
    // max_concurrent × max_body_bytes.
    let outcome = match shared.inflight.clone().try_acquire_owned() {
        Err(_) => Outcome::rejected(StatusCode::SERVICE_UNAVAILABLE, "too many deliveries at once"),
        Ok(slot) => {
            let body = read_body(body, announced_length(&headers), &shared.limits).await;
            receive(rx, &headers, body, &event, &delivery, slot).await
        }
    };
    rx.metrics.webhook_latency.observe(started.elapsed().as_secs_f64());
    rx.metrics
        .delivery(if event.is_empty() { "unknown" } else { &event }, outcome.label());
    outcome.audit(&delivery, &event);
    outcome.into_response()
}

#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    TooLarge,
    Unreadable,
    TooSlow,
}

fn announced_length(headers: &HeaderMap) -> Option<u64> {
    header(headers, "content-length").and_then(|v| v.parse::<u64>().ok())
}

/// Reads the body within the limits. A body announced as too large is
/// refused before a byte of it is read; one that grows too large while
/// streaming (chunked) is cut off at the limit; one that trickles is cut off
/// at the deadline.
async fn read_body(body: axum::body::Body, announced: Option<u64>, limits: &Limits) -> Result<Bytes, BodyError> {
    if announced.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(BodyError::TooLarge);
    }
    let read = axum::body::to_bytes(body, limits.max_body_bytes);
    match tokio::time::timeout(limits.body_read_timeout, read).await {
        Err(_) => Err(BodyError::TooSlow),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                BodyError::TooLarge
            } else {
                BodyError::Unreadable
            })
        }
    }
}

async fn receive(
    rx: &Receiver,
    headers: &HeaderMap,
    body: Result<Bytes, BodyError>,
    event: &str,
    delivery: &str,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Outcome {
    let body = match body {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return Outcome::rejected(StatusCode::PAYLOAD_TOO_LARGE, "payload too large"),
        Err(BodyError::Unreadable) => return Outcome::rejected(StatusCode::BAD_REQUEST, "unreadable body"),
        Err(BodyError::TooSlow) => return Outcome::rejected(StatusCode::REQUEST_TIMEOUT, "body not sent in time"),
    };
    if event.is_empty() || delivery.is_empty() {
        return Outcome::rejected(StatusCode::BAD_REQUEST, "missing X-GitHub-Event or X-GitHub-Delivery");
    }
    if delivery.len() > 128 || !delivery.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Outcome::rejected(StatusCode::BAD_REQUEST, "malformed X-GitHub-Delivery");
    }
    let signature = header(headers, "x-hub-signature-256");
    if signature.is_none() {
        rx.metrics.signature_failures.inc();
        return Outcome::rejected(StatusCode::UNAUTHORIZED, "missing X-Hub-Signature-256");
    }
    if let Err(err) = rx.secrets.current().verify(signature, &body) {
        rx.metrics.signature_failures.inc();
        let reason = match err {
            SignatureError::Missing => "missing signature",
            _ => "bad signature",
        };
        return Outcome::rejected(StatusCode::UNAUTHORIZED, reason);
    }
    // Only now is the body looked at.
    let policies = rx.policies.state();
    let decided = intake::decide(
        event,
        delivery,
        &body,
        &policies,
        &rx.tenancy,
        rx.bot_login.as_deref(),
        &rx.limiter,
    );
    // The body is done with: the apiserver's answer is awaited without a
    // slot, so a slow apiserver does not turn deliveries away by the slot
    // bound (the open connections still bound what waits).
    drop(body);
    drop(slot);
    match decided {
        intake::Decided::Respond(outcome) => outcome,
        intake::Decided::Create(run, rate) => {
            let outcome = create(rx, *run).await;
            if outcome.kind == "created" {
                rx.limiter.try_take(&rate);
            }
            outcome
        }
        intake::Decided::Approve(request) => approve(rx, *request).await,
        intake::Decided::Cancel(intake) => cancel(rx, *intake).await,
    }
}

/// The runs of one issue or pull request (by the labels the receiver gave them).
async fn thread_runs(
    api: &Api<ClaudeRun>,
    repository: &str,
    number: i64,
) -> kube::Result<kube::api::ObjectList<ClaudeRun>> {
    let selector = format!(
        "{}={},{}={}",
        intake::REPOSITORY_LABEL,
        intake::repository_label(repository),
        intake::NUMBER_LABEL,
        number
    );
    api.list(&kube::api::ListParams::default().labels(&selector)).await
}

/// One comment's request, recorded as an annotation on the runs of its
/// issue or pull request that it concerns.
struct ThreadNote<'a> {
    /// What is recorded (logs).
    what: &'static str,
    namespace: &'a str,
    repository: &'a str,
    number: i64,
    /// Who asked.
    login: &'a str,
    key: String,
    value: String,
}

impl ThreadNote<'_> {
    /// Annotates every run `concerns` selects that `has_room` for one more
    /// such annotation; `None` when the apiserver failed (nothing to answer
    /// but "try again"), else how many runs were annotated. A run deleted
    /// meanwhile is skipped.
    async fn record(
        &self,
        rx: &Receiver,
        concerns: impl Fn(&ClaudeRun) -> bool,
        has_room: impl Fn(&std::collections::BTreeMap<String, String>) -> bool,
    ) -> Option<usize> {
        let api: Api<ClaudeRun> = Api::namespaced(rx.client.clone(), self.namespace);
        let runs = match thread_runs(&api, self.repository, self.number).await {
            Ok(runs) => runs,
            Err(err) => {
                tracing::warn!(error = %err, what = self.what, "listing the thread's runs failed");
                return None;
            }
        };
        let patch = serde_json::json!({"metadata": {"annotations": {self.key.as_str(): self.value}}});
        let mut recorded = 0;
        for run in runs.items.iter().filter(|r| concerns(r)) {
            let name = run.metadata.name.clone().unwrap_or_default();
            // Each comment under its own key: none displaces another, and the
            // strangers' bound leaves room for the members'.
            let empty = Default::default();
            if !has_room(run.metadata.annotations.as_ref().unwrap_or(&empty)) {
                tracing::info!(run = %name, login = %self.login, what = self.what, "not recorded: too many waiting to be checked");
                continue;
            }
            match api
                .patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => recorded += 1,
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(err) => {
                    tracing::warn!(error = %err, run = %name, what = self.what, "recording on a run failed");
                    return None;
                }
            }
        }
        Some(recorded)
    }

    fn summary(&self) -> intake::RunSummary {
        intake::RunSummary {
            repository: self.repository.to_owned(),
            actor: self.login.to_owned(),
            run: None,
            namespace: Some(self.namespace.to_owned()),
        }
    }
}

/// Records a cancel request on every run of the issue or pull request that
/// is not over and that it concerns ([`intake::CancelIntake::concerns`]).
/// The controller decides whether it may cancel; nothing here stops a run.
async fn cancel(rx: &Receiver, intake: intake::CancelIntake) -> Outcome {
    let request = &intake.request;
    let note = ThreadNote {
        what: "cancel",
        namespace: &intake.namespace,
        repository: &intake.repository,
        number: intake.number,
        login: &request.login,
        key: request.annotation_key(),
        value: serde_json::to_string(request).expect("cancel request serializes"),
    };
    let going = |r: &ClaudeRun| {
        !r.status.as_ref().is_some_and(|s| s.phase.is_terminal())
            && r.metadata.deletion_timestamp.is_none()
            && intake.concerns(&r.spec.trigger)
    };
    let room = |a: &std::collections::BTreeMap<String, String>| crate::api::labels::cancel_has_room(a, request);
    match note.record(rx, going, room).await {
        Some(recorded) => Outcome::cancel(note.summary(), recorded),
        None => Outcome::unavailable(note.summary()),
    }
}

/// Records an approval comment on every run of the same issue or pull request
/// that waits for approval. The controller checks the approver with GitHub;
/// nothing here admits anything.
async fn approve(rx: &Receiver, request: intake::ApprovalRequest) -> Outcome {
    let note = ThreadNote {
        what: "approval",
        namespace: &request.namespace,
        repository: &request.repository,
        number: request.number,
        login: &request.login,
        key: request.annotation_key(),
        value: serde_json::to_string(&request).expect("approval request serializes"),
    };
    let waiting = |r: &ClaudeRun| {
        r.status
            .as_ref()
            .is_some_and(|s| s.phase == crate::api::Phase::AwaitingApproval)
    };
    let room = |a: &std::collections::BTreeMap<String, String>| crate::api::labels::approval_has_room(a, &request);
    match note.record(rx, waiting, room).await {
        Some(recorded) => Outcome::approval(note.summary(), recorded),
        None => Outcome::unavailable(note.summary()),
    }
}

async fn create(rx: &Receiver, run: ClaudeRun) -> Outcome {
    let ns = run.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ClaudeRun> = Api::namespaced(rx.client.clone(), &ns);
    let summary = intake::RunSummary::of(&run);
    match api.create(&PostParams::default(), &run).await {
        Ok(_) => Outcome::created(summary),
        Err(kube::Error::Api(status)) if status.code == 409 => Outcome::duplicate(summary),
        Err(err) => {
            tracing::warn!(error = %err, namespace = %ns, "creating ClaudeRun failed");
            Outcome::unavailable(summary)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::signature::{WebhookSecrets, sign};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const SECRET: &str = "server-test-secret";

    fn receiver() -> Receiver {
        // Never called: every request here is refused before the apiserver.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let (store, _writer) = kube::runtime::reflector::store();
        Receiver {
            client,
            secrets: SecretsHandle::fixed(WebhookSecrets::from_file_contents(SECRET).unwrap()),
            policies: store,
            metrics: Metrics::default(),
            bot_login: None,
            limiter: Arc::new(intake::ActorLimiter::default()),
            tenancy: Arc::default(),
        }
    }

    struct Running {
        addr: std::net::SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn start(limits: Limits) -> Running {
        start_with(receiver(), limits).await
    }

    async fn start_with(receiver: Receiver, limits: Limits) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, receiver, limits, async move {
            let _ = rx.await;
        }));
        Running {
            addr,
            stop: Some(tx),
            task,
        }
    }

    impl Running {
        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("serve ends on shutdown")
                .unwrap()
                .unwrap();
        }
    }

    fn head(extra: &str) -> String {
        format!(
            "POST /webhook HTTP/1.1\r\nhost: x\r\nx-github-event: ping\r\nx-github-delivery: d-1\r\n\
             x-hub-signature-256: sha256={}\r\n{extra}\r\n",
            "0".repeat(64)
        )
    }

    /// Reads until the status line is in, or the connection ends; the status
    /// code, or None when the server closed without answering.
    async fn status_of(stream: &mut TcpStream) -> Option<u16> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
                .await
                .expect("an answer or a close")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(2).any(|w| w == b"\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace().nth(1).and_then(|c| c.parse().ok())
    }

    fn small() -> Limits {
        Limits {
            max_body_bytes: 1024,
            header_read_timeout: Duration::from_millis(500),
            body_read_timeout: Duration::from_millis(500),
            max_concurrent: 1,
        }
    }

    #[tokio::test]
    async fn a_signed_small_delivery_is_answered() {
        let server = start(small()).await;
        let body = br#"{"zen":"hi"}"#;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let req = format!(
            "POST /webhook HTTP/1.1\r\nhost: x\r\nx-github-event: ping\r\nx-github-delivery: d-1\r\n\
             x-hub-signature-256: {}\r\ncontent-length: {}\r\n\r\n",
            sign(SECRET, body),
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        assert_eq!(status_of(&mut s).await, Some(200));
        server.stop().await;
    }

    #[tokio::test]
    async fn an_announced_large_body_gets_413_without_being_sent() {
        let server = start(small()).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(head("content-length: 26214400\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(status_of(&mut s).await, Some(413));
        server.stop().await;
    }

    #[tokio::test]
    async fn a_chunked_body_past_the_limit_gets_413() {
        let server = start(small()).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(head("transfer-encoding: chunked\r\n").as_bytes())
            .await
            .unwrap();
        // 4 chunks of 512 bytes: past 1 KiB; the answer comes without the end.
        for _ in 0..4 {
            let chunk = format!("200\r\n{}\r\n", "a".repeat(512));
            if s.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        assert_eq!(status_of(&mut s).await, Some(413));
        server.stop().await;
    }

    #[tokio::test]
    async fn a_slow_header_is_cut_off() {
        let server = start(small()).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"POST /webhook HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        // Never finishes the headers: the server closes (408 or a plain close).
        let status = status_of(&mut s).await;
        assert!(matches!(status, None | Some(408)), "{status:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn a_trickling_body_gets_408_and_frees_its_slot() {
        let server = start(small()).await;
        let mut slow = TcpStream::connect(server.addr).await.unwrap();
        slow.write_all(head("content-length: 100\r\n").as_bytes())
            .await
            .unwrap();
        slow.write_all(b"{").await.unwrap();
        assert_eq!(status_of(&mut slow).await, Some(408));
        // The slot is free again.
        let mut next = TcpStream::connect(server.addr).await.unwrap();
        next.write_all(head("content-length: 2\r\n").as_bytes()).await.unwrap();
        next.write_all(b"{}").await.unwrap();
        assert_eq!(status_of(&mut next).await, Some(401), "bad signature, but served");
        server.stop().await;
    }

    #[tokio::test]
    async fn past_max_concurrent_deliveries_get_503() {
        let mut limits = small();
        limits.body_read_timeout = Duration::from_secs(30);
        let server = start(limits).await;
        // One delivery holds the only slot while its body is outstanding...
        let mut holder = TcpStream::connect(server.addr).await.unwrap();
        holder
            .write_all(head("content-length: 100\r\n").as_bytes())
            .await
            .unwrap();
        // ...so the next is turned away at once. Retried until the holder is
        // seen to hold the slot (its headers may not have been read yet).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = TcpStream::connect(server.addr).await.unwrap();
            s.write_all(head("content-length: 2\r\n").as_bytes()).await.unwrap();
            let _ = s.write_all(b"{}").await;
            match status_of(&mut s).await {
                Some(503) => break,
                other => assert!(Instant::now() < deadline, "never 503: {other:?}"),
            }
        }
        drop(holder);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_delivery_waiting_on_the_apiserver_holds_no_slot() {
        // An "apiserver" that takes the run's create and never answers.
        let apiserver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", apiserver.local_addr().unwrap());
        let (create_seen, mut seen) = tokio::sync::mpsc::channel::<String>(1);
        let hung = tokio::spawn(async move {
            let (mut conn, _) = apiserver.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap();
            create_seen
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .await
                .unwrap();
            // Held open, unanswered, until the test ends.
            std::future::pending::<()>().await;
        });
        let mut rx = receiver();
        rx.client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let (store, mut writer) = kube::runtime::reflector::store();
        let mut policy: ClaudeRunPolicy =
            serde_yaml::from_str(include_str!("../../config/samples/policy.yaml")).unwrap();
        policy.metadata.namespace = Some("team".into());
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(policy));
        rx.policies = store;
        let server = start_with(rx, small_slots_large_bodies()).await;

        // A member's trigger on a covered repository: a run to create.
        let mut payload: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/webhooks/issue_comment.created.json")).unwrap();
        payload["repository"]["full_name"] = "acme/api".into();
        payload["repository"]["name"] = "api".into();
        payload["repository"]["owner"]["login"] = "acme".into();
        payload["comment"]["body"] = "@claude fix it".into();
        payload["comment"]["author_association"] = "MEMBER".into();
        let body = serde_json::to_vec(&payload).unwrap();
        let mut waiting = TcpStream::connect(server.addr).await.unwrap();
        let req = format!(
            "POST /webhook HTTP/1.1\r\nhost: x\r\nx-github-event: issue_comment\r\nx-github-delivery: d-wait\r\n\
             x-hub-signature-256: {}\r\ncontent-length: {}\r\n\r\n",
            sign(SECRET, &body),
            body.len()
        );
        waiting.write_all(req.as_bytes()).await.unwrap();
        waiting.write_all(&body).await.unwrap();
        let create = tokio::time::timeout(Duration::from_secs(20), seen.recv())
            .await
            .expect("the run's create reaches the apiserver")
            .unwrap();
        assert!(create.starts_with("POST /apis/claude-operator.dev/"), "{create}");

        // With the only slot's delivery still waiting for the apiserver,
        // the next delivery is served (here: refused for its signature), not 503.
        let mut next = TcpStream::connect(server.addr).await.unwrap();
        next.write_all(head("content-length: 2\r\n").as_bytes()).await.unwrap();
        next.write_all(b"{}").await.unwrap();
        assert_eq!(status_of(&mut next).await, Some(401));
        hung.abort();
        drop(waiting);
        server.stop().await;
    }

    /// One slot, and room for a real payload.
    fn small_slots_large_bodies() -> Limits {
        Limits {
            max_body_bytes: 1024 * 1024,
            body_read_timeout: Duration::from_secs(10),
            ..small()
        }
    }

    #[test]
    fn limits_have_room_for_idle_connections() {
        let l = Limits::default();
        assert_eq!(l.max_body_bytes, 1024 * 1024);
        assert!(l.max_connections() >= l.max_concurrent);
        let one = Limits { max_concurrent: 1, ..l };
        assert_eq!(one.max_connections(), 16);
    }
}
