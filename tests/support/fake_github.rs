//! A local fake of the GitHub REST endpoints the operator calls, shaped after
//! GitHub's published OpenAPI description (checked by
//! `tests/fake_github_contract.rs`). An axum server on 127.0.0.1:0 whose
//! state tests configure: users, repository roles, organization and team
//! members, installations, pull requests. It checks authentication the way
//! GitHub does (App endpoints need an RS256 JWT signed by the App's key,
//! verified with the `openssl` CLI; installation endpoints need a live
//! installation token, as `token X` or `Bearer X`), records every request,
//! counts minted and revoked tokens per repository, and injects faults
//! (status codes, delays, rate limits).
//!
//! Include it with `#[path = "support/fake_github.rs"] mod fake_github;`.
#![allow(dead_code)]
// Handlers answer early with a whole `Response`; boxing it buys nothing here.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// The App's id in the fake.
pub const APP_ID: u64 = 4242;
/// The App's slug in the fake.
pub const APP_SLUG: &str = "claude-operator-test";

/// An RSA key pair generated for one test run with `openssl genrsa`.
pub struct TestKey {
    dir: tempfile::TempDir,
    /// The private key, PEM, as the operator reads it.
    pub private_pem: String,
    /// Signed inputs already verified: a client reuses its App JWT for
    /// minutes, and one openssl process per request would make the fake,
    /// not the operator, the slow part of a benchmark.
    verified: std::sync::Mutex<std::collections::HashSet<(String, Vec<u8>)>>,
}

impl TestKey {
    /// Generates a 2048-bit key. Panics with a clear message without openssl.
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("app.pem");
        let public = dir.path().join("app.pub.pem");
        run_openssl(&["genrsa", "-out", private.to_str().unwrap(), "2048"], None);
        run_openssl(
            &[
                "rsa",
                "-in",
                private.to_str().unwrap(),
                "-pubout",
                "-out",
                public.to_str().unwrap(),
            ],
            None,
        );
        let private_pem = std::fs::read_to_string(&private).unwrap();
        Self {
            dir,
            private_pem,
            verified: Default::default(),
        }
    }

    fn private_path(&self) -> PathBuf {
        self.dir.path().join("app.pem")
    }

    fn public_path(&self) -> PathBuf {
        self.dir.path().join("app.pub.pem")
    }

    /// An App JWT (RS256, `iss` = app id, nine minutes of life), signed with
    /// the openssl CLI: for tests that talk to the fake without the client.
    pub fn app_jwt(&self, app_id: u64) -> String {
        let now = jiff::Timestamp::now().as_second();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(json!({"iss": app_id, "iat": now - 60, "exp": now + 540}).to_string());
        let signing_input = format!("{header}.{claims}");
        let signature = run_openssl(
            &["dgst", "-sha256", "-sign", self.private_path().to_str().unwrap()],
            Some(signing_input.as_bytes()),
        );
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// Whether `signature` is a valid RS256 signature of `input` by this key.
    fn verify(&self, input: &str, signature: &[u8]) -> bool {
        let key = (input.to_owned(), signature.to_vec());
        if self.verified.lock().unwrap().contains(&key) {
            return true;
        }
        let sig_file = tempfile::NamedTempFile::new_in(self.dir.path()).unwrap();
        std::fs::write(sig_file.path(), signature).unwrap();
        let mut child = Command::new("openssl")
            .args([
                "dgst",
                "-sha256",
                "-verify",
                self.public_path().to_str().unwrap(),
                "-signature",
                sig_file.path().to_str().unwrap(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl is needed to verify App JWTs");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let valid = child.wait().map(|s| s.success()).unwrap_or(false);
        if valid {
            self.verified.lock().unwrap().insert(key);
        }
        valid
    }
}

fn run_openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("the fake GitHub needs the openssl CLI ({e})"));
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            input.write_all(data).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A user account.
#[derive(Clone, Debug)]
pub struct FakeUser {
    pub login: String,
    pub id: i64,
    /// `User`, `Bot` or `Organization`.
    pub type_: String,
}

/// A pull request's head.
#[derive(Clone, Debug)]
pub struct FakePull {
    pub head_sha: String,
    pub head_ref: String,
    /// `owner/name` of the head repository; `None` when it was deleted.
    pub head_repo: Option<String>,
    pub author: String,
}

/// An issue (or a pull request's issue side): its opening post.
#[derive(Clone, Debug)]
pub struct FakeIssue {
    pub title: String,
    pub body: String,
    pub author: String,
    /// `author_association` (`OWNER`, `MEMBER`, `NONE`, ...).
    pub association: String,
}

/// A changed file of a pull request.
#[derive(Clone, Debug)]
pub struct FakeFile {
    pub filename: String,
    pub status: String,
    pub additions: u64,
    pub deletions: u64,
    pub patch: Option<String>,
}

/// A minted installation token.
#[derive(Clone, Debug)]
pub struct FakeToken {
    pub installation: i64,
    /// `owner/name` of the repositories it is scoped to; `None` = all of the installation's.
    pub repositories: Option<Vec<String>>,
    pub permissions: Value,
    pub expires_at: jiff::Timestamp,
    pub revoked: bool,
}

/// What a fault does to a request.
#[derive(Clone, Debug)]
pub enum FaultKind {
    /// Answer with this status and a JSON error.
    Status(u16),
    /// Wait this long before handling the request normally.
    Delay(Duration),
    /// 403 secondary rate limit with `retry-after: <secs>`.
    SecondaryRateLimit { retry_after_secs: u64 },
    /// 429 with `retry-after: <secs>`.
    TooManyRequests { retry_after_secs: u64 },
    /// 403 primary rate limit: `x-ratelimit-remaining: 0`, reset in `reset_in_secs`.
    PrimaryRateLimit { reset_in_secs: i64 },
}

/// A fault applied to the next `times` requests whose path contains `path_contains`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: FaultKind,
    pub times: u32,
    pub path_contains: Option<String>,
}

impl Fault {
    /// A fault on the next request of any path.
    pub fn new(kind: FaultKind) -> Self {
        Self {
            kind,
            times: 1,
            path_contains: None,
        }
    }
    /// Applies to the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.times = n;
        self
    }
    /// Applies only to paths containing `fragment`.
    pub fn on_path(mut self, fragment: &str) -> Self {
        self.path_contains = Some(fragment.to_owned());
        self
    }
}

/// Everything the fake knows. Logins, orgs and repositories are keyed in
/// lower case, as GitHub treats them.
#[derive(Default)]
pub struct FakeState {
    pub users: HashMap<String, FakeUser>,
    /// (repository, login) -> role name (`admin`, `maintain`, `write`, `triage`, `read`).
    pub roles: HashMap<(String, String), String>,
    /// (org, login)
    pub org_members: Vec<(String, String)>,
    /// (org, team slug, login) -> `active` or `pending`.
    pub team_memberships: HashMap<(String, String, String), String>,
    /// repository -> installation id.
    pub installations: HashMap<String, i64>,
    /// installation id -> account login.
    pub installation_accounts: HashMap<i64, String>,
    /// (repository, number) -> pull request.
    pub pulls: HashMap<(String, i64), FakePull>,
    /// (repository, number) -> the paths the pull request changes.
    /// Reviews posted: (repository, pull request number, the request's body).
    pub reviews: Vec<(String, i64, Value)>,
    pub tokens: HashMap<String, FakeToken>,
    /// repository (or `*` for installation-wide tokens) -> count.
    pub minted: BTreeMap<String, u32>,
    pub revoked: BTreeMap<String, u32>,
    /// (method, path) of every request, in order.
    pub requests: Vec<(String, String)>,
    pub faults: Vec<Fault>,
    /// comment id -> (repository, issue number, body).
    pub comments: BTreeMap<i64, (String, i64, String)>,
    /// (repository, number) -> issue.
    pub issues: HashMap<(String, i64), FakeIssue>,
    /// Authors of comments not written by the App: id -> (login, association).
    pub comment_authors: HashMap<i64, (String, String)>,
    /// (repository, number) -> a pull request's changed files.
    pub pull_files: HashMap<(String, i64), Vec<FakeFile>>,
    /// Every write of a comment (created or edited), in order: (comment id,
    /// when the fake handled it, body).
    pub comment_writes: Vec<(i64, std::time::Instant, String)>,
    /// (comment id, content)
    pub reactions: Vec<(i64, String)>,
    pub next_id: i64,
    /// Faults drawn at random for requests no queued fault matched.
    pub random_faults: Option<RandomFaults>,
    /// How many faults of each kind were injected (queued or random), by
    /// `status-500`, `delay`, `rate-limit-secondary`, ...
    pub injected: BTreeMap<&'static str, u64>,
}

/// Faults at random, as a flaky GitHub answers: each request that no queued
/// fault matched draws one number from a seeded generator (so a run can be
/// repeated) and may be answered 500, rate-limited (one of the three kinds,
/// waits of one second) or held for `delay` (longer than the client's
/// deadline: a timeout) before it is handled.
#[derive(Clone, Debug)]
pub struct RandomFaults {
    /// Generator state (xorshift64*); any non-zero seed.
    pub state: u64,
    /// Requests in 10,000 answered 500.
    pub server_error: u32,
    /// Requests in 10,000 answered with a rate limit.
    pub rate_limit: u32,
    /// Requests in 10,000 held for `delay`.
    pub timeout: u32,
    pub delay: Duration,
}

impl RandomFaults {
    fn next(&mut self) -> u64 {
        // xorshift64*: enough for picking faults, and dependency-free.
        let mut x = self.state.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The fault for the next request, if any.
    fn draw(&mut self) -> Option<FaultKind> {
        let roll = (self.next() % 10_000) as u32;
        if roll < self.server_error {
            return Some(FaultKind::Status(500));
        }
        let roll = roll - self.server_error;
        if roll < self.rate_limit {
            return Some(match self.next() % 3 {
                0 => FaultKind::SecondaryRateLimit { retry_after_secs: 1 },
                1 => FaultKind::TooManyRequests { retry_after_secs: 1 },
                _ => FaultKind::PrimaryRateLimit { reset_in_secs: 1 },
            });
        }
        (roll - self.rate_limit < self.timeout).then_some(FaultKind::Delay(self.delay))
    }
}

impl FaultKind {
    fn label(&self) -> &'static str {
        match self {
            FaultKind::Status(500) => "status-500",
            FaultKind::Status(_) => "status-other",
            FaultKind::Delay(_) => "delay",
            FaultKind::SecondaryRateLimit { .. } => "rate-limit-secondary",
            FaultKind::TooManyRequests { .. } => "rate-limit-429",
            FaultKind::PrimaryRateLimit { .. } => "rate-limit-primary",
        }
    }
}

struct Shared {
    state: Mutex<FakeState>,
    key: TestKey,
    base: Mutex<String>,
}

/// A running fake GitHub. Stops when dropped.
pub struct FakeGitHub {
    /// Base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

impl FakeGitHub {
    /// Starts a fake with a fresh App key and no state.
    pub async fn start() -> Self {
        Self::start_at("").await
    }

    /// Starts a fake that serves the API under a path prefix, as GitHub
    /// Enterprise Server does (`/api/v3`).
    pub async fn start_at(prefix: &str) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(FakeState {
                next_id: 1000,
                ..Default::default()
            }),
            key: TestKey::generate(),
            base: Mutex::new(String::new()),
        });
        let app = if prefix.is_empty() {
            router(shared.clone())
        } else {
            Router::new().nest(prefix, router(shared.clone()))
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{prefix}", listener.local_addr().unwrap());
        *shared.base.lock().unwrap() = url.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, shared, server }
    }

    /// The App's private key, PEM.
    pub fn private_key_pem(&self) -> String {
        self.shared.key.private_pem.clone()
    }

    /// An App JWT signed with the App's key.
    pub fn app_jwt(&self) -> String {
        self.shared.key.app_jwt(APP_ID)
    }

    /// The state, to configure or inspect directly.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.shared.state.lock().unwrap()
    }

    /// Adds an account (`User`, `Bot` or `Organization`).
    pub fn add_user(&self, login: &str, id: i64, type_: &str) -> &Self {
        self.state().users.insert(
            lower(login),
            FakeUser {
                login: login.to_owned(),
                id,
                type_: type_.to_owned(),
            },
        );
        self
    }

    /// Gives `login` a role on `owner/name`.
    pub fn set_role(&self, repository: &str, login: &str, role: &str) -> &Self {
        self.state()
            .roles
            .insert((lower(repository), lower(login)), role.to_owned());
        self
    }

    /// Makes `login` a member of `org`.
    pub fn add_org_member(&self, org: &str, login: &str) -> &Self {
        self.state().org_members.push((lower(org), lower(login)));
        self
    }

    /// Sets `login`'s membership of `org/slug` (`active` or `pending`).
    pub fn set_team_membership(&self, org: &str, slug: &str, login: &str, state: &str) -> &Self {
        self.state()
            .team_memberships
            .insert((lower(org), lower(slug), lower(login)), state.to_owned());
        self
    }

    /// Installs the App on `owner/name` as installation `id`.
    pub fn install(&self, repository: &str, id: i64) -> &Self {
        let mut s = self.state();
        s.installations.insert(lower(repository), id);
        let owner = repository.split('/').next().unwrap().to_owned();
        s.installation_accounts.insert(id, owner);
        self
    }

    /// Adds pull request `number` on `owner/name`.
    /// The paths pull request `number` changes (`GET .../pulls/{n}/files`).
    pub fn set_pull_files(&self, repository: &str, number: i64, files: &[&str]) -> &Self {
        let files = files
            .iter()
            .map(|f| FakeFile {
                filename: f.to_string(),
                status: "modified".into(),
                additions: 1,
                deletions: 0,
                patch: Some("@@ -1 +1,2 @@\n line\n+added".into()),
            })
            .collect();
        self.state().pull_files.insert((lower(repository), number), files);
        self
    }

    pub fn add_pull(&self, repository: &str, number: i64, pull: FakePull) -> &Self {
        self.state().pulls.insert((lower(repository), number), pull);
        self
    }

    /// Adds issue `number` on `owner/name`.
    pub fn add_issue(&self, repository: &str, number: i64, issue: FakeIssue) -> &Self {
        self.state().issues.insert((lower(repository), number), issue);
        self
    }

    /// Adds a comment by `login` to issue or pull request `number`; returns its id.
    pub fn add_thread_comment(&self, repository: &str, number: i64, login: &str, association: &str, body: &str) -> i64 {
        let mut s = self.state();
        s.next_id += 1;
        let id = s.next_id;
        s.comments.insert(id, (lower(repository), number, body.to_owned()));
        s.comment_authors.insert(id, (login.to_owned(), association.to_owned()));
        id
    }

    /// Sets the changed files of pull request `number`, with their patches.
    pub fn set_pull_changes(&self, repository: &str, number: i64, files: Vec<FakeFile>) -> &Self {
        self.state().pull_files.insert((lower(repository), number), files);
        self
    }

    /// Injects a fault.
    pub fn inject(&self, fault: Fault) -> &Self {
        self.state().faults.push(fault);
        self
    }

    /// (method, path) of every request so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state().requests.clone()
    }

    /// How many requests had this method and a path containing `fragment`.
    pub fn count(&self, method: &str, fragment: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|(m, p)| m == method && p.contains(fragment))
            .count()
    }

    /// Tokens minted for `owner/name` (`*` = installation-wide).
    pub fn minted(&self, repository: &str) -> u32 {
        self.state().minted.get(&lower(repository)).copied().unwrap_or(0)
    }

    /// Tokens revoked for `owner/name` (`*` = installation-wide).
    pub fn revoked(&self, repository: &str) -> u32 {
        self.state().revoked.get(&lower(repository)).copied().unwrap_or(0)
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// Starts (`Some`) or stops (`None`) faults at random.
    pub fn set_random_faults(&self, faults: Option<RandomFaults>) -> &Self {
        self.state().random_faults = faults;
        self
    }

    /// How many faults of each kind were injected so far.
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        self.state().injected.clone()
    }

    /// Tokens scoped to `owner/name` minted and not revoked (expired ones
    /// included); installation-wide tokens are not counted.
    pub fn live_tokens(&self, repository: &str) -> Vec<String> {
        let s = self.state();
        let repository = lower(repository);
        s.tokens
            .iter()
            .filter(|(_, t)| !t.revoked && t.repositories.as_ref().is_some_and(|r| r.contains(&repository)))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Every endpoint the fake serves, as (method, path template of GitHub's
/// OpenAPI description). The contract test checks each of them.
pub const ROUTES: [(&str, &str); 16] = [
    ("GET", "/app"),
    ("POST", "/app/installations/{installation_id}/access_tokens"),
    ("DELETE", "/installation/token"),
    ("GET", "/repos/{owner}/{repo}/installation"),
    ("GET", "/repos/{owner}/{repo}/collaborators/{username}/permission"),
    ("GET", "/orgs/{org}/members/{username}"),
    ("GET", "/orgs/{org}/teams/{team_slug}/memberships/{username}"),
    ("GET", "/users/{username}"),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}"),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}/files"),
    ("POST", "/repos/{owner}/{repo}/pulls/{pull_number}/reviews"),
    ("GET", "/repos/{owner}/{repo}/issues/{issue_number}"),
    ("GET", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
    ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments"),
    ("PATCH", "/repos/{owner}/{repo}/issues/comments/{comment_id}"),
    ("POST", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions"),
];

type Shr = State<Arc<Shared>>;

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/app", get(get_app))
        .route("/app/installations/{id}/access_tokens", post(create_token))
        .route("/installation/token", delete(revoke_token))
        .route("/repos/{owner}/{repo}/installation", get(repo_installation))
        .route(
            "/repos/{owner}/{repo}/collaborators/{user}/permission",
            get(collaborator_permission),
        )
        .route("/orgs/{org}/members/{user}", get(org_member))
        .route("/orgs/{org}/teams/{slug}/memberships/{user}", get(team_membership))
        .route("/users/{user}", get(get_user))
        .route("/repos/{owner}/{repo}/pulls/{number}", get(get_pull))
        .route("/repos/{owner}/{repo}/pulls/{number}/files", get(pull_files))
        .route("/repos/{owner}/{repo}/pulls/{number}/reviews", post(create_review))
        .route("/repos/{owner}/{repo}/issues/{number}", get(get_issue))
        .route(
            "/repos/{owner}/{repo}/issues/{number}/comments",
            post(create_comment).get(list_comments),
        )
        .route("/repos/{owner}/{repo}/issues/comments/{id}", patch(update_comment))
        .route(
            "/repos/{owner}/{repo}/issues/comments/{id}/reactions",
            post(add_reaction),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "Not Found") })
        .layer(axum::middleware::from_fn_with_state(shared.clone(), record_and_inject))
        .with_state(shared)
}

async fn record_and_inject(State(shared): Shr, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let fault = {
        let mut s = shared.state.lock().unwrap();
        s.requests.push((method, path.clone()));
        let found = s
            .faults
            .iter_mut()
            .find(|f| f.times > 0 && f.path_contains.as_deref().is_none_or(|p| path.contains(p)));
        let queued = found.map(|f| {
            f.times -= 1;
            f.kind.clone()
        });
        let fault = queued.or_else(|| s.random_faults.as_mut().and_then(RandomFaults::draw));
        if let Some(kind) = &fault {
            *s.injected.entry(kind.label()).or_default() += 1;
        }
        fault
    };
    let with = |status: StatusCode, headers: &[(&'static str, String)], message: &str| {
        let mut response = error(status, message);
        for (k, v) in headers {
            response.headers_mut().insert(*k, HeaderValue::from_str(v).unwrap());
        }
        response
    };
    match fault {
        None => next.run(request).await,
        Some(FaultKind::Delay(d)) => {
            tokio::time::sleep(d).await;
            next.run(request).await
        }
        Some(FaultKind::Status(code)) => error(StatusCode::from_u16(code).unwrap(), "Injected fault"),
        Some(FaultKind::SecondaryRateLimit { retry_after_secs }) => with(
            StatusCode::FORBIDDEN,
            &[("retry-after", retry_after_secs.to_string())],
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
        ),
        Some(FaultKind::TooManyRequests { retry_after_secs }) => with(
            StatusCode::TOO_MANY_REQUESTS,
            &[("retry-after", retry_after_secs.to_string())],
            "Too many requests",
        ),
        Some(FaultKind::PrimaryRateLimit { reset_in_secs }) => {
            let reset = jiff::Timestamp::now().as_second() + reset_in_secs;
            with(
                StatusCode::FORBIDDEN,
                &[
                    ("x-ratelimit-limit", "5000".into()),
                    ("x-ratelimit-remaining", "0".into()),
                    ("x-ratelimit-reset", reset.to_string()),
                ],
                "API rate limit exceeded for installation.",
            )
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "message": message,
            "documentation_url": "https://docs.github.com/rest",
            "status": status.as_u16().to_string(),
        })),
    )
        .into_response()
}

fn credentials(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("token "))
        .map(str::trim)
}

fn is_jwt_shaped(value: &str) -> bool {
    value.split('.').count() == 3
}

/// App endpoints: an RS256 JWT whose `iss` is the App and that is signed by its key.
fn check_app(shared: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let unauthorized = |m: &str| Err(error(StatusCode::UNAUTHORIZED, m));
    let Some(jwt) = credentials(headers) else {
        return unauthorized("Requires authentication");
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return unauthorized("A JSON web token could not be decoded");
    }
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).ok();
    let header: Option<Value> = decode(parts[0]).and_then(|b| serde_json::from_slice(&b).ok());
    let claims: Option<Value> = decode(parts[1]).and_then(|b| serde_json::from_slice(&b).ok());
    let (Some(header), Some(claims), Some(signature)) = (header, claims, decode(parts[2])) else {
        return unauthorized("A JSON web token could not be decoded");
    };
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return unauthorized("'Expiration time' claim ('exp') must be a numeric value");
    }
    let iss = claims
        .get("iss")
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if iss != Some(APP_ID) || exp <= jiff::Timestamp::now().as_second() {
        return unauthorized("'Issuer' claim ('iss') must be an Integer, or the token expired");
    }
    if !shared.key.verify(&format!("{}.{}", parts[0], parts[1]), &signature) {
        return unauthorized("A JSON web token could not be decoded");
    }
    Ok(())
}

/// Installation endpoints: a live installation token, optionally allowed on `repository`.
fn check_token(
    shared: &Shared,
    headers: &HeaderMap,
    repository: Option<&str>,
) -> Result<(String, FakeToken), Response> {
    let Some(token) = credentials(headers) else {
        return Err(error(StatusCode::UNAUTHORIZED, "Requires authentication"));
    };
    if is_jwt_shaped(token) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "Resource not accessible by integration (a JWT cannot be used here)",
        ));
    }
    let s = shared.state.lock().unwrap();
    let Some(info) = s.tokens.get(token) else {
        return Err(error(StatusCode::UNAUTHORIZED, "Bad credentials"));
    };
    if info.revoked || info.expires_at <= jiff::Timestamp::now() {
        return Err(error(StatusCode::UNAUTHORIZED, "Bad credentials"));
    }
    if let Some(repository) = repository {
        let repository = lower(repository);
        let installed = s.installations.get(&repository) == Some(&info.installation);
        let in_scope = info.repositories.as_ref().is_none_or(|r| r.contains(&repository));
        if !installed || !in_scope {
            return Err(error(StatusCode::NOT_FOUND, "Not Found"));
        }
    }
    Ok((token.to_owned(), info.clone()))
}

fn ts(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

const CREATED: &str = "2020-01-01T00:00:00Z";

fn simple_user(base: &str, user: &FakeUser) -> Value {
    let l = &user.login;
    json!({
        "login": l,
        "id": user.id,
        "node_id": format!("U_{}", user.id),
        "avatar_url": format!("https://avatars.example.com/u/{}", user.id),
        "gravatar_id": "",
        "url": format!("{base}/users/{l}"),
        "html_url": format!("https://github.example.com/{l}"),
        "followers_url": format!("{base}/users/{l}/followers"),
        "following_url": format!("{base}/users/{l}/following{{/other_user}}"),
        "gists_url": format!("{base}/users/{l}/gists{{/gist_id}}"),
        "starred_url": format!("{base}/users/{l}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{base}/users/{l}/subscriptions"),
        "organizations_url": format!("{base}/users/{l}/orgs"),
        "repos_url": format!("{base}/users/{l}/repos"),
        "events_url": format!("{base}/users/{l}/events{{/privacy}}"),
        "received_events_url": format!("{base}/users/{l}/received_events"),
        "type": user.type_,
        "site_admin": false,
    })
}

fn public_user(base: &str, user: &FakeUser) -> Value {
    let mut v = simple_user(base, user);
    let extra = json!({
        "name": user.login, "company": null, "blog": "", "location": null, "email": null,
        "hireable": null, "bio": null, "public_repos": 1, "public_gists": 0,
        "followers": 0, "following": 0, "created_at": CREATED, "updated_at": CREATED,
    });
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    v
}

fn app_bot(base: &str) -> Value {
    simple_user(
        base,
        &FakeUser {
            login: format!("{APP_SLUG}[bot]"),
            id: 9_000_001,
            type_: "Bot".into(),
        },
    )
}

fn account(s: &FakeState, login: &str) -> FakeUser {
    s.users.get(&lower(login)).cloned().unwrap_or(FakeUser {
        login: login.to_owned(),
        id: 7_000_000 + login.len() as i64,
        type_: "Organization".into(),
    })
}

fn repository_json(base: &str, s: &FakeState, full_name: &str, id: i64, fork: bool) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap();
    let r = format!("{base}/repos/{full_name}");
    let owner = simple_user(base, &account(s, owner));
    let mut urls = json!({
        "id": id, "node_id": format!("R_{id}"), "name": name, "full_name": full_name,
        "owner": owner, "private": true, "fork": fork, "description": null,
        "html_url": format!("https://github.example.com/{full_name}"), "url": r,
    });
    const URLS: [(&str, &str); 36] = [
        ("archive_url", "/{archive_format}{/ref}"),
        ("assignees_url", "/assignees{/user}"),
        ("blobs_url", "/git/blobs{/sha}"),
        ("branches_url", "/branches{/branch}"),
        ("collaborators_url", "/collaborators{/collaborator}"),
        ("comments_url", "/comments{/number}"),
        ("commits_url", "/commits{/sha}"),
        ("compare_url", "/compare/{base}...{head}"),
        ("contents_url", "/contents/{+path}"),
        ("contributors_url", "/contributors"),
        ("deployments_url", "/deployments"),
        ("downloads_url", "/downloads"),
        ("events_url", "/events"),
        ("forks_url", "/forks"),
        ("git_commits_url", "/git/commits{/sha}"),
        ("git_refs_url", "/git/refs{/sha}"),
        ("git_tags_url", "/git/tags{/sha}"),
        ("hooks_url", "/hooks"),
        ("issue_comment_url", "/issues/comments{/number}"),
        ("issue_events_url", "/issues/events{/number}"),
        ("issues_url", "/issues{/number}"),
        ("keys_url", "/keys{/key_id}"),
        ("labels_url", "/labels{/name}"),
        ("languages_url", "/languages"),
        ("merges_url", "/merges"),
        ("milestones_url", "/milestones{/number}"),
        ("notifications_url", "/notifications{?since,all,participating}"),
        ("pulls_url", "/pulls{/number}"),
        ("releases_url", "/releases{/id}"),
        ("stargazers_url", "/stargazers"),
        ("statuses_url", "/statuses/{sha}"),
        ("subscribers_url", "/subscribers"),
        ("subscription_url", "/subscription"),
        ("tags_url", "/tags"),
        ("teams_url", "/teams"),
        ("trees_url", "/git/trees{/sha}"),
    ];
    for (field, suffix) in URLS {
        urls[field] = json!(format!("{r}{suffix}"));
    }
    let rest = json!({
        "clone_url": format!("https://github.example.com/{full_name}.git"),
        "git_url": format!("git://github.example.com/{full_name}.git"),
        "ssh_url": format!("git@github.example.com:{full_name}.git"),
        "svn_url": format!("https://github.example.com/{full_name}"),
        "mirror_url": null, "homepage": null, "language": null, "license": null,
        "default_branch": "main", "forks": 0, "forks_count": 0, "open_issues": 0,
        "open_issues_count": 0, "stargazers_count": 0, "watchers": 0, "watchers_count": 0,
        "size": 1, "has_downloads": true, "has_issues": true, "has_projects": false,
        "has_wiki": false, "has_pages": false, "archived": false, "disabled": false,
        "pushed_at": CREATED, "created_at": CREATED, "updated_at": CREATED,
    });
    merge(urls, rest)
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn app_permissions() -> Value {
    json!({"contents": "write", "pull_requests": "write", "issues": "write", "members": "read", "metadata": "read"})
}

fn installation(base: &str, s: &FakeState, id: i64) -> Value {
    let owner = s.installation_accounts.get(&id).cloned().unwrap_or_default();
    let account = account(s, &owner);
    json!({
        "id": id, "app_id": APP_ID, "app_slug": APP_SLUG,
        "target_id": account.id, "target_type": account.type_,
        "account": simple_user(base, &account),
        "single_file_name": null, "repository_selection": "selected",
        "access_tokens_url": format!("{base}/app/installations/{id}/access_tokens"),
        "html_url": format!("https://github.example.com/organizations/{owner}/settings/installations/{id}"),
        "repositories_url": format!("{base}/installation/repositories"),
        "events": ["issue_comment", "issues", "pull_request_review", "pull_request_review_comment"],
        "permissions": app_permissions(),
        "created_at": CREATED, "updated_at": CREATED,
        "suspended_by": null, "suspended_at": null,
    })
}

fn base(shared: &Shared) -> String {
    shared.base.lock().unwrap().clone()
}

async fn get_app(State(shared): Shr, headers: HeaderMap) -> Response {
    if let Err(r) = check_app(&shared, &headers) {
        return r;
    }
    let base = base(&shared);
    let owner = app_bot(&base);
    axum::Json(json!({
        "id": APP_ID, "slug": APP_SLUG, "node_id": "A_4242", "owner": owner,
        "name": "Claude Operator (test)", "description": null,
        "external_url": "https://claude-operator.dev",
        "html_url": format!("https://github.example.com/apps/{APP_SLUG}"),
        "created_at": CREATED, "updated_at": CREATED,
        "permissions": app_permissions(),
        "events": ["issue_comment", "issues"],
    }))
    .into_response()
}

async fn repo_installation(
    State(shared): Shr,
    headers: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
) -> Response {
    if let Err(r) = check_app(&shared, &headers) {
        return r;
    }
    let s = shared.state.lock().unwrap();
    match s.installations.get(&lower(&format!("{owner}/{repo}"))) {
        Some(id) => axum::Json(installation(&base(&shared), &s, *id)).into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn create_token(State(shared): Shr, headers: HeaderMap, Path(id): Path<i64>, body: Bytes) -> Response {
    if let Err(r) = check_app(&shared, &headers) {
        return r;
    }
    let request: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return error(StatusCode::BAD_REQUEST, "Problems parsing JSON"),
        }
    };
    let mut s = shared.state.lock().unwrap();
    let Some(owner) = s.installation_accounts.get(&id).cloned() else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let repositories = match request.get("repositories").and_then(Value::as_array) {
        None => None,
        Some(names) => {
            let mut full = vec![];
            for name in names {
                let Some(name) = name.as_str() else {
                    return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request");
                };
                let full_name = lower(&format!("{owner}/{name}"));
                if s.installations.get(&full_name) != Some(&id) {
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "There is at least one repository that does not exist or is not accessible to the parent installation.",
                    );
                }
                full.push(full_name);
            }
            Some(full)
        }
    };
    let permissions = request.get("permissions").cloned().unwrap_or_else(app_permissions);
    if let Some(map) = permissions.as_object() {
        for (name, level) in map {
            let granted = app_permissions().get(name).and_then(Value::as_str).map(str::to_owned);
            let ok = matches!(
                (granted.as_deref(), level.as_str()),
                (Some("write"), Some("read" | "write")) | (Some("read"), Some("read"))
            );
            if !ok {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "The permissions requested are not granted to this installation.",
                );
            }
        }
    }
    s.next_id += 1;
    let token = format!("ghs_fake{:08}{}", s.next_id, "x".repeat(24));
    let expires_at = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    for key in repositories.clone().unwrap_or_else(|| vec!["*".into()]) {
        *s.minted.entry(key).or_default() += 1;
    }
    s.tokens.insert(
        token.clone(),
        FakeToken {
            installation: id,
            repositories: repositories.clone(),
            permissions: permissions.clone(),
            expires_at,
            revoked: false,
        },
    );
    let selection = if repositories.is_some() { "selected" } else { "all" };
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "token": token,
            "expires_at": ts(expires_at),
            "permissions": permissions,
            "repository_selection": selection,
        })),
    )
        .into_response()
}

async fn revoke_token(State(shared): Shr, headers: HeaderMap) -> Response {
    let (token, info) = match check_token(&shared, &headers, None) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut s = shared.state.lock().unwrap();
    s.tokens.get_mut(&token).unwrap().revoked = true;
    for key in info.repositories.unwrap_or_else(|| vec!["*".into()]) {
        *s.revoked.entry(key).or_default() += 1;
    }
    StatusCode::NO_CONTENT.into_response()
}

fn role_permission(role: &str) -> &'static str {
    match role {
        "admin" => "admin",
        "maintain" | "write" => "write",
        "triage" | "read" => "read",
        _ => "none",
    }
}

async fn collaborator_permission(
    State(shared): Shr,
    headers: HeaderMap,
    Path((owner, repo, user)): Path<(String, String, String)>,
) -> Response {
    let repository = format!("{owner}/{repo}");
    if let Err(r) = check_token(&shared, &headers, Some(&repository)) {
        return r;
    }
    let s = shared.state.lock().unwrap();
    let Some(u) = s.users.get(&lower(&user)).cloned() else {
        return error(StatusCode::NOT_FOUND, &format!("{user} is not a user"));
    };
    let role = s
        .roles
        .get(&(lower(&repository), lower(&user)))
        .cloned()
        .unwrap_or_else(|| "none".into());
    let permission = role_permission(&role);
    let mut collaborator = simple_user(&base(&shared), &u);
    let flags = json!({
        "admin": permission == "admin",
        "maintain": role == "maintain" || permission == "admin",
        "push": permission == "admin" || permission == "write",
        "triage": permission != "none" && role != "read",
        "pull": permission != "none",
    });
    collaborator["permissions"] = flags;
    collaborator["role_name"] = json!(role);
    axum::Json(json!({ "permission": permission, "role_name": role, "user": collaborator })).into_response()
}

async fn org_member(State(shared): Shr, headers: HeaderMap, Path((org, user)): Path<(String, String)>) -> Response {
    if let Err(r) = check_token(&shared, &headers, None) {
        return r;
    }
    let s = shared.state.lock().unwrap();
    if s.org_members.contains(&(lower(&org), lower(&user))) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn team_membership(
    State(shared): Shr,
    headers: HeaderMap,
    Path((org, slug, user)): Path<(String, String, String)>,
) -> Response {
    if let Err(r) = check_token(&shared, &headers, None) {
        return r;
    }
    let s = shared.state.lock().unwrap();
    match s.team_memberships.get(&(lower(&org), lower(&slug), lower(&user))) {
        Some(state) => axum::Json(json!({
            "url": format!("{}/organizations/1/team/1/memberships/{user}", base(&shared)),
            "role": "member",
            "state": state,
        }))
        .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn get_user(State(shared): Shr, headers: HeaderMap, Path(user): Path<String>) -> Response {
    if let Err(r) = check_token(&shared, &headers, None) {
        return r;
    }
    let s = shared.state.lock().unwrap();
    match s.users.get(&lower(&user)) {
        Some(u) => axum::Json(public_user(&base(&shared), u)).into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn get_pull(
    State(shared): Shr,
    headers: HeaderMap,
    Path((owner, repo, number)): Path<(String, String, i64)>,
) -> Response {
    let repository = format!("{owner}/{repo}");
    if let Err(r) = check_token(&shared, &headers, Some(&repository)) {
        return r;
    }
    let s = shared.state.lock().unwrap();
    let Some(pull) = s.pulls.get(&(lower(&repository), number)).cloned() else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let base_url = base(&shared);
    let author = simple_user(&base_url, &account(&s, &pull.author));
    let base_repo = repository_json(&base_url, &s, &repository, 1, false);
    let head_repo = match &pull.head_repo {
        Some(full) => repository_json(&base_url, &s, full, 2, !full.eq_ignore_ascii_case(&repository)),
        None => Value::Null,
    };
    let head_owner = pull
        .head_repo
        .as_deref()
        .unwrap_or(&pull.author)
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let r = format!("{base_url}/repos/{repository}");
    let html = format!("https://github.example.com/{repository}/pull/{number}");
    let link = |href: String| json!({ "href": href });
    let first = json!({
        "url": format!("{r}/pulls/{number}"), "id": 500 + number, "node_id": format!("PR_{number}"),
        "html_url": html, "diff_url": format!("{html}.diff"), "patch_url": format!("{html}.patch"),
        "issue_url": format!("{r}/issues/{number}"),
        "commits_url": format!("{r}/pulls/{number}/commits"),
        "review_comments_url": format!("{r}/pulls/{number}/comments"),
        "review_comment_url": format!("{r}/pulls/comments{{/number}}"),
        "comments_url": format!("{r}/issues/{number}/comments"),
        "statuses_url": format!("{r}/statuses/{}", pull.head_sha),
        "number": number, "state": "open", "locked": false, "title": "A change",
        "user": author, "body": null, "labels": [], "milestone": null,
        "active_lock_reason": null, "created_at": CREATED, "updated_at": CREATED,
        "closed_at": null, "merged_at": null, "merge_commit_sha": null,
        "assignee": null, "assignees": [], "requested_reviewers": [], "requested_teams": [],
    });
    let second = json!({
        "head": {
            "label": format!("{head_owner}:{}", pull.head_ref), "ref": pull.head_ref,
            "sha": pull.head_sha, "user": simple_user(&base_url, &account(&s, &head_owner)), "repo": head_repo,
        },
        "base": {
            "label": format!("{owner}:main"), "ref": "main",
            "sha": "0000000000000000000000000000000000000000",
            "user": simple_user(&base_url, &account(&s, &owner)), "repo": base_repo,
        },
        "_links": {
            "self": link(format!("{r}/pulls/{number}")), "html": link(html.clone()),
            "issue": link(format!("{r}/issues/{number}")),
            "comments": link(format!("{r}/issues/{number}/comments")),
            "review_comments": link(format!("{r}/pulls/{number}/comments")),
            "review_comment": link(format!("{r}/pulls/comments{{/number}}")),
            "commits": link(format!("{r}/pulls/{number}/commits")),
            "statuses": link(format!("{r}/statuses/{}", pull.head_sha)),
        },
        "author_association": "CONTRIBUTOR", "auto_merge": null, "draft": false,
        "merged": false, "mergeable": true, "rebaseable": true, "mergeable_state": "clean",
        "merged_by": null, "comments": 0, "review_comments": 0, "maintainer_can_modify": true,
        "commits": 1, "additions": 1, "deletions": 0, "changed_files": 1,
    });
    axum::Json(merge(first, second)).into_response()
}

/// `POST .../pulls/{n}/reviews`: records the review; 422 as GitHub answers
/// a `COMMENT` without a body or a comment without a path.
async fn create_review(
    State(shared): Shr,
    headers: HeaderMap,
    Path((owner, repo, number)): Path<(String, String, i64)>,
    body: Bytes,
) -> Response {
    let repository = lower(&format!("{owner}/{repo}"));
    if let Err(r) = check_token(&shared, &headers, Some(&repository)) {
        return r;
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request: not JSON");
    };
    let event = request["event"].as_str().unwrap_or("PENDING");
    let text = request["body"].as_str().unwrap_or_default();
    if matches!(event, "COMMENT" | "REQUEST_CHANGES") && text.is_empty() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request: body is required");
    }
    let comments_ok = request["comments"]
        .as_array()
        .is_none_or(|c| c.iter().all(|c| c["path"].is_string() && c["body"].is_string()));
    if !comments_ok {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid request: a comment needs a path and a body",
        );
    }
    let mut s = shared.state.lock().unwrap();
    let Some(pull) = s.pulls.get(&(repository.clone(), number)).cloned() else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    s.next_id += 1;
    let id = s.next_id;
    s.reviews.push((repository.clone(), number, request.clone()));
    let base_url = base(&shared);
    let html = format!("https://github.example.com/{repository}/pull/{number}");
    let state = if event == "COMMENT" { "COMMENTED" } else { event };
    axum::Json(json!({
        "id": id, "node_id": format!("PRR_{id}"), "user": app_bot(&base_url),
        "body": text, "state": state,
        "commit_id": request["commit_id"].as_str().unwrap_or(&pull.head_sha),
        "html_url": format!("{html}#pullrequestreview-{id}"),
        "pull_request_url": format!("{base_url}/repos/{repository}/pulls/{number}"),
        "_links": {"html": {"href": format!("{html}#pullrequestreview-{id}")},
                   "pull_request": {"href": format!("{base_url}/repos/{repository}/pulls/{number}")}},
        "submitted_at": ts(jiff::Timestamp::now()), "author_association": "NONE",
    }))
    .into_response()
}

fn comment_json(base: &str, repository: &str, id: i64, number: i64, body: &str) -> Value {
    comment_json_by(base, repository, id, number, body, app_bot(base), "NONE")
}

fn comment_json_by(
    base: &str,
    repository: &str,
    id: i64,
    number: i64,
    body: &str,
    user: Value,
    association: &str,
) -> Value {
    let r = format!("{base}/repos/{repository}");
    json!({
        "id": id, "node_id": format!("IC_{id}"),
        "url": format!("{r}/issues/comments/{id}"),
        "html_url": format!("https://github.example.com/{repository}/issues/{number}#issuecomment-{id}"),
        "issue_url": format!("{r}/issues/{number}"),
        "body": body, "user": user,
        "created_at": CREATED, "updated_at": ts(jiff::Timestamp::now()),
        "author_association": association,
    })
}

fn body_field(body: &Bytes, field: &str) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get(field)?
        .as_str()
        .map(str::to_owned)
}

async fn create_comment(
    State(shared): Shr,
    headers: HeaderMap,
    Path((owner, repo, number)): Path<(String, String, i64)>,
    body: Bytes,
) -> Response {
    let repository = lower(&format!("{owner}/{repo}"));
    if let Err(r) = check_token(&shared, &headers, Some(&repository)) {
        return r;
    }
    let Some(text) = body_field(&body, "body") else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request: body is missing");
    };
    let mut s = shared.state.lock().unwrap();
    s.next_id += 1;
    let id = s.next_id;
    s.comments.insert(id, (repository.clone(), number, text.clone()));
    s.comment_writes.push((id, std::time::Instant::now(), text.clone()));
    (
        StatusCode::CREATED,
        axum::Json(comment_json(&base(&shared), &repository, id, number, &text)),
    )
        .into_response()
}

async fn update_comment(
    State(shared): Shr,
    headers: HeaderMap,
    Path((owner, repo, id)): Path<(String, String, i64)>,
    body: Bytes,
) -> Response {
    let repository = lower(&format!("{owner}/{repo}"));
    if let Err(r) = check_token(&shared, &headers, Some(&repository)) {
        return r;
    }
    let Some(text) = body_field(&body, "body") else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request: body is missing");
    };
    let mut s = shared.state.lock().unwrap();
    let Some(comment) = s.comments.get_mut(&id).filter(|c| c.0 == repository) else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    comment.2 = text.clone();
    let number = comment.1;
    s.comment_writes.push((id, std::time::Instant::now(), text.clone()));
    axum::Json(comment_json(&base(&shared), &repository, id, number, &text)).into_response()
}

async fn add_reaction(
    State(shared): Shr,
    headers: HeaderMap,
    Path((owner, repo, id)): Path<(String, String, i64)>,
    body: Bytes,
) -> Response {
    let repository = lower(&format!("{owner}/{repo}"));
    if let Err(r) = check_token(&shared, &headers, Some(&repository)) {
        return r;
    }
    const CONTENTS: [&str; 8] = ["+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"];
    let Some(content) = body_field(&body, "content").filter(|c| CONTENTS.contains(&c.as_str())) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid reaction content");
    };
    let mut s = shared.state.lock().unwrap();
    let existing = s.reactions.iter().position(|(c, r)| *c == id && *r == content);
    let status = if existing.is_some() {
        StatusCode::OK
    } else {
        s.reactions.push((id, content.clone()));
        StatusCode::CREATED
    };
    let reaction_id = 80_000 + existing.unwrap_or(s.reactions.len() - 1) as i64;
    (
        status,
        axum::Json(json!({
            "id": reaction_id, "node_id": format!("REA_{reaction_id}"),
            "user": app_bot(&base(&shared)), "content": content, "created_at": CREATED,
        })),
    )
        .into_response()
}

/// `page` and `per_page` of a list request (GitHub's defaults: 1 and 30, at most 100).
fn page_of(query: &HashMap<String, String>) -> (usize, usize) {
    let page = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1usize).max(1);
    let per_page = query
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(30usize)
        .clamp(1, 100);
    (page, per_page)
}

fn paged<T: Clone>(items: &[T], query: &HashMap<String, String>) -> Vec<T> {
    let (page, per_page) = page_of(query);
    items
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect()
}

async fn get_issue(
    State(shared): Shr,
    headers: HeaderMap,
    Path((owner, repo, number)): Path<(String, String, i64)>,
) -> Response {
    let repository = lower(&format!("{owner}/{repo}"));
    if let Err(r) = check_token(&shared, &headers, Some(&repository)) {
        return r;
    }
    let s = shared.state.lock().unwrap();
    let base_url = base(&shared);
    // A pull request is an issue too.
    let (issue, is_pull) = match (
        s.issues.get(&(repository.clone(), number)),
        s.pulls.get(&(repository.clone(), number)),
    ) {
        (Some(i), pull) => (i.clone(), pull.is_some()),
        (None, Some(p)) => (
            FakeIssue {
                title: "A change".into(),
                body: String::new(),
                author: p.author.clone(),
                association: "CONTRIBUTOR".into(),
            },
            true,
        ),
        (None, None) => return error(StatusCode::NOT_FOUND, "Not Found"),
    };
    let r = format!("{base_url}/repos/{repository}");
    let kind = if is_pull { "pull" } else { "issues" };
    let html = format!("https://github.example.com/{repository}/{kind}/{number}");
    let count = s
        .comments
        .values()
        .filter(|(repo, n, _)| *repo == repository && *n == number)
        .count();
    let mut v = json!({
        "id": 900 + number, "node_id": format!("I_{number}"),
        "url": format!("{r}/issues/{number}"), "repository_url": r,
        "labels_url": format!("{r}/issues/{number}/labels{{/name}}"),
        "comments_url": format!("{r}/issues/{number}/comments"),
        "events_url": format!("{r}/issues/{number}/events"),
        "html_url": html, "number": number, "state": "open", "state_reason": null,
        "title": issue.title, "body": issue.body,
        "user": simple_user(&base_url, &account(&s, &issue.author)),
        "labels": [], "assignee": null, "assignees": [], "milestone": null,
        "locked": false, "active_lock_reason": null, "comments": count,
        "closed_at": null, "created_at": CREATED, "updated_at": CREATED,
        "author_association": issue.association,
    });
    if is_pull {
        v["pull_request"] = json!({
            "url": format!("{r}/pulls/{number}"), "html_url": html,
            "diff_url": format!("{html}.diff"), "patch_url": format!("{html}.patch"), "merged_at": null,
        });
    }
    axum::Json(v).into_response()
}

async fn list_comments(
    State(shared): Shr,
    headers: HeaderMap,
    Path((owner, repo, number)): Path<(String, String, i64)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let repository = lower(&format!("{owner}/{repo}"));
    if let Err(r) = check_token(&shared, &headers, Some(&repository)) {
        return r;
    }
    let s = shared.state.lock().unwrap();
    let base_url = base(&shared);
    // Oldest first, as GitHub lists them (ids grow with time here).
    let all: Vec<Value> = s
        .comments
        .iter()
        .filter(|(_, (repo, n, _))| *repo == repository && *n == number)
        .map(|(id, (_, _, body))| match s.comment_authors.get(id) {
            Some((login, association)) => {
                let user = simple_user(&base_url, &account(&s, login));
                comment_json_by(&base_url, &repository, *id, number, body, user, association)
            }
            None => comment_json(&base_url, &repository, *id, number, body),
        })
        .collect();
    axum::Json(paged(&all, &query)).into_response()
}

/// `GET .../pulls/{n}/files`: a page (`per_page`, at most 100; `page` from 1)
/// of the files [`FakeGitHub::set_pull_files`] or
/// [`FakeGitHub::set_pull_changes`] set, as diff entries.
async fn pull_files(
    State(shared): Shr,
    headers: HeaderMap,
    Path((owner, repo, number)): Path<(String, String, i64)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let repository = lower(&format!("{owner}/{repo}"));
    if let Err(r) = check_token(&shared, &headers, Some(&repository)) {
        return r;
    }
    let s = shared.state.lock().unwrap();
    if !s.pulls.contains_key(&(repository.clone(), number)) {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    let base_url = base(&shared);
    let files: Vec<Value> = s
        .pull_files
        .get(&(repository.clone(), number))
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let sha = format!("{:040x}", i + 1);
            let mut v = json!({
                "sha": sha, "filename": f.filename, "status": f.status,
                "additions": f.additions, "deletions": f.deletions, "changes": f.additions + f.deletions,
                "blob_url": format!("https://github.example.com/{repository}/blob/{sha}/{}", f.filename),
                "raw_url": format!("https://github.example.com/{repository}/raw/{sha}/{}", f.filename),
                "contents_url": format!("{base_url}/repos/{repository}/contents/{}?ref={sha}", f.filename),
            });
            if let Some(patch) = &f.patch {
                v["patch"] = json!(patch);
            }
            v
        })
        .collect();
    axum::Json(paged(&files, &query)).into_response()
}
