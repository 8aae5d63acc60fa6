//! The GitHub REST client of the operator, authenticated as a GitHub App: it
//! looks up what authorization needs (repository permission, organization and
//! team membership, account type), mints and revokes the per-run
//! installation tokens, and writes feedback comments and reactions.
//!
//! Built on octocrab for transport and App (JWT) authentication; retries,
//! timeouts and rate limits are handled here so that they are bounded and
//! observable:
//! - every attempt has a deadline (`request_timeout`, default 10 s);
//! - 5xx answers, transport errors and timeouts are retried `max_retries`
//!   times (default 2) with a short exponential backoff, for idempotent
//!   requests only (minting a run token or posting a comment is left to the
//!   caller to repeat);
//! - a 403/429 that says it is a rate limit (`retry-after`, or
//!   `x-ratelimit-remaining: 0` with `x-ratelimit-reset`) is waited out when
//!   the wait is at most `max_rate_limit_wait` (default 60 s), and each wait
//!   is counted for metrics; longer waits fail at once.
//!
//! Actor answers are cached per (installation, repository, login, asked
//! organizations and teams) for `facts_ttl` (60 s), or `negative_facts_ttl`
//! (15 s) when some access or membership is missing; errors are never cached.
//! Errors never hold a token, the private key or a JWT.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, StatusCode};
use octocrab::Octocrab;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::admission::{ActorFacts, Unavailable};
use crate::api::{ActorType, Permission, TokenAccess};

/// The public GitHub API.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// How many rate-limit waits one request may make before it fails.
const MAX_RATE_LIMIT_WAITS: u32 = 3;
/// An internal installation token is renewed this long before it expires.
const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(300);
/// The facts cache is cleared when it grows beyond this many entries.
const MAX_CACHED_FACTS: usize = 10_000;
/// How long one App JWT is used. octocrab signs a new one (an RSA signature)
/// for every App request, valid for nine minutes; this client signs one and
/// reuses it for five, as GitHub allows, so minting a run's token costs no
/// signature.
const APP_JWT_REUSE: Duration = Duration::from_secs(300);

/// Errors of the GitHub client. None of them holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The App's private key is not an RSA key in PEM format.
    #[error("GitHub App private key is not an RSA private key in PEM format")]
    InvalidKey,
    /// The API base URL does not parse.
    #[error("GitHub API URL {url:?} is not a valid URL")]
    InvalidBaseUrl {
        /// The URL as given.
        url: String,
    },
    /// An argument cannot be part of a request (an empty login, a team that
    /// is not `org/slug`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No answer within the deadline, after the allowed retries.
    #[error("{method} {path}: no answer within {after:?}")]
    Timeout {
        /// HTTP method.
        method: Method,
        /// Request path (no query, no secret).
        path: String,
        /// The per-attempt deadline.
        after: Duration,
    },
    /// The request could not be sent or its answer not read.
    #[error("{method} {path}: transport error: {source}")]
    Transport {
        /// HTTP method.
        method: Method,
        /// Request path.
        path: String,
        /// The underlying error.
        #[source]
        source: Box<octocrab::Error>,
    },
    /// GitHub answered with an unexpected status.
    #[error("{method} {path}: GitHub answered {status}: {message}")]
    Status {
        /// HTTP method.
        method: Method,
        /// Request path.
        path: String,
        /// The status code.
        status: u16,
        /// GitHub's `message`, shortened.
        message: String,
    },
    /// GitHub asked to wait longer than the client is willing to.
    #[error("{method} {path}: rate limited for {wait:?} (the client waits at most {max:?})")]
    RateLimited {
        /// HTTP method.
        method: Method,
        /// Request path.
        path: String,
        /// How long GitHub asked to wait.
        wait: Duration,
        /// The most the client waits.
        max: Duration,
    },
    /// A 2xx answer whose body is not what the API documents.
    #[error("{method} {path}: unexpected answer: {detail}")]
    Unexpected {
        /// HTTP method.
        method: Method,
        /// Request path.
        path: String,
        /// What was wrong (never the body of a token answer).
        detail: String,
    },
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidKey => "invalid_key",
            Error::InvalidBaseUrl { .. } => "invalid_base_url",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Timeout { .. } => "timeout",
            Error::Transport { .. } => "transport",
            Error::Status { status, .. } if *status >= 500 => "server_error",
            Error::Status { .. } => "client_error",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unexpected { .. } => "unexpected_answer",
        }
    }
}

/// Result of the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the client reaches GitHub.
#[derive(Clone)]
pub struct GitHubClientConfig {
    /// The GitHub App's id.
    pub app_id: u64,
    /// The App's RSA private key, PEM.
    pub private_key_pem: SecretString,
    /// API base URL: `https://api.github.com`, a GitHub Enterprise
    /// `https://host/api/v3`, or a test server.
    pub base_url: String,
    /// Deadline of each attempt.
    pub request_timeout: Duration,
    /// Retries after a 5xx answer, a transport error or a timeout.
    pub max_retries: u32,
    /// Backoff before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// The longest rate-limit wait; longer ones fail at once.
    pub max_rate_limit_wait: Duration,
    /// How long positive actor facts are reused.
    pub facts_ttl: Duration,
    /// How long actor facts with a missing access or membership are reused.
    pub negative_facts_ttl: Duration,
}

impl GitHubClientConfig {
    /// A configuration with the defaults (10 s per attempt, 2 retries, at
    /// most 60 s of rate-limit wait, facts cached 60 s and 15 s).
    pub fn new(app_id: u64, private_key_pem: SecretString, base_url: impl Into<String>) -> Self {
        Self {
            app_id,
            private_key_pem,
            base_url: base_url.into(),
            request_timeout: Duration::from_secs(10),
            max_retries: 2,
            retry_backoff: Duration::from_millis(200),
            max_rate_limit_wait: Duration::from_secs(60),
            facts_ttl: Duration::from_secs(60),
            negative_facts_ttl: Duration::from_secs(15),
        }
    }
}

impl fmt::Debug for GitHubClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubClientConfig")
            .field("app_id", &self.app_id)
            .field("base_url", &self.base_url)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("max_rate_limit_wait", &self.max_rate_limit_wait)
            .finish_non_exhaustive()
    }
}

/// A freshly minted installation token for one run.
#[derive(Debug)]
pub struct MintedToken {
    /// The token. Goes into the run's Secret and nowhere else.
    pub token: SecretString,
    /// When GitHub expires it (within the hour).
    pub expires_at: jiff::Timestamp,
}

/// A reaction on a comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaction {
    /// 👀: the trigger was seen.
    Eyes,
    /// 🚀: the run started.
    Rocket,
    /// 😕: the trigger was refused.
    Confused,
}

impl Reaction {
    fn content(self) -> &'static str {
        match self {
            Reaction::Eyes => "eyes",
            Reaction::Rocket => "rocket",
            Reaction::Confused => "confused",
        }
    }
}

/// Most files GitHub lists for a pull request.
pub const MAX_PULL_FILES: usize = 3000;

/// The head of a pull request, as the API states it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullHead {
    /// Head commit.
    pub sha: String,
    /// Head branch.
    pub ref_: String,
    /// `owner/name` of the head repository, if it still exists.
    pub repo_full_name: Option<String>,
    /// Whether the head repository is a fork of another repository than the
    /// base one (or is gone).
    pub fork: bool,
    /// The base repository's default branch, when the answer names it.
    pub default_branch: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FactsKey {
    installation: i64,
    repository: String,
    login: String,
    orgs: Vec<String>,
    teams: Vec<String>,
}

struct CachedToken {
    token: SecretString,
    renew_at: Instant,
}

/// Who a request is made as.
#[derive(Clone, Copy)]
enum As<'a> {
    /// The App itself (JWT).
    App,
    /// An installation, with the client's own installation-wide token.
    Installation(i64),
    /// A given installation token.
    Token(&'a SecretString),
}

/// Whether a failed attempt may be repeated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// The request can be repeated without effect (GET, DELETE, PATCH).
    Idempotent,
    /// The request creates something: only rate limits are waited out.
    Once,
}

struct Answer {
    status: StatusCode,
    body: String,
}

/// The GitHub API client of the operator. Cheap to share behind an `Arc`.
pub struct GitHubClient {
    app: Octocrab,
    app_key: octocrab::EncodingKey,
    /// The App JWT in use and when it was signed.
    app_jwt: Mutex<Option<(SecretString, Instant)>>,
    config: GitHubClientConfig,
    installation_tokens: Mutex<HashMap<i64, CachedToken>>,
    /// Held while minting a lookup token, so that concurrent lookups share one.
    mint_lock: tokio::sync::Mutex<()>,
    facts: Mutex<HashMap<FactsKey, (Instant, ActorFacts)>>,
    rate_limit_waits: Arc<AtomicU64>,
    /// The App's slug, once asked (it does not change while the App exists).
    slug: tokio::sync::OnceCell<String>,
}

impl fmt::Debug for GitHubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes one path segment (logins of bots hold `[` and `]`).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn non_empty<'a>(what: &str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() || value.contains('/') {
        Err(Error::InvalidArgument(format!("{what} {value:?}")))
    } else {
        Ok(value)
    }
}

/// GitHub's `message` from an error body, shortened; never the whole body.
/// `/repos/{owner}/{repo}` followed by `rest`, each name checked and encoded.
fn repo_path(owner: &str, repo: &str, rest: &str) -> Result<String> {
    Ok(format!(
        "/repos/{}/{}{rest}",
        seg(non_empty("owner", owner)?),
        seg(non_empty("repository", repo)?)
    ))
}

fn github_message(body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    message.chars().take(200).collect()
}

/// How long a 403/429 answer asks to wait, if it is a rate limit at all. A
/// 403 without rate-limit headers is a real refusal and is not waited out.
pub(crate) fn rate_limit_wait(status: StatusCode, headers: &HeaderMap, now_epoch_secs: i64) -> Option<Duration> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(secs) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    if header("x-ratelimit-remaining") == Some("0")
        && let Some(reset) = header("x-ratelimit-reset").and_then(|v| v.parse::<i64>().ok())
    {
        return Some(Duration::from_secs(reset.saturating_sub(now_epoch_secs).max(0) as u64));
    }
    (status == StatusCode::TOO_MANY_REQUESTS).then_some(Duration::from_secs(1))
}

/// Parses a repository role or permission name as GitHub spells it.
pub(crate) fn parse_permission(name: &str) -> Option<Permission> {
    match name {
        "admin" => Some(Permission::Admin),
        "maintain" => Some(Permission::Maintain),
        "write" | "push" => Some(Permission::Write),
        "triage" => Some(Permission::Triage),
        "read" | "pull" => Some(Permission::Read),
        _ => None,
    }
}

/// The permission in an answer of `GET /repos/{o}/{r}/collaborators/{u}/permission`:
/// `role_name` tells triage and maintain apart; a custom role falls back to
/// its base `permission`; `none` is no access.
pub(crate) fn permission_from_answer(body: &Value) -> Option<Permission> {
    body.get("role_name")
        .and_then(Value::as_str)
        .and_then(parse_permission)
        .or_else(|| {
            body.get("permission")
                .and_then(Value::as_str)
                .and_then(parse_permission)
        })
}

fn user_type(name: &str) -> Option<ActorType> {
    match name {
        "User" => Some(ActorType::User),
        "Bot" => Some(ActorType::Bot),
        "Organization" => Some(ActorType::Organization),
        _ => None,
    }
}

fn now_epoch_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl GitHubClient {
    /// A client for the App described by `config`.
    pub fn new(config: GitHubClientConfig) -> Result<Self> {
        let base = config.base_url.trim_end_matches('/').to_owned();
        let app_key = octocrab::EncodingKey::from_rsa_pem(config.private_key_pem.expose_secret().as_bytes())
            .map_err(|_| Error::InvalidKey)?;
        let builder = Octocrab::builder()
            .base_uri(base.as_str())
            .map_err(|_| Error::InvalidBaseUrl { url: base.clone() })?
            .app(octocrab::models::AppId(config.app_id), app_key.clone())
            .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None)
            .add_header(http::header::ACCEPT, "application/vnd.github+json".to_owned())
            .add_header(
                http::HeaderName::from_static("x-github-api-version"),
                "2022-11-28".to_owned(),
            );
        let app = builder
            .build()
            .map_err(|_| Error::InvalidBaseUrl { url: base.clone() })?;
        Ok(Self {
            app,
            app_key,
            app_jwt: Mutex::new(None),
            config,
            installation_tokens: Mutex::new(HashMap::new()),
            mint_lock: tokio::sync::Mutex::new(()),
            facts: Mutex::new(HashMap::new()),
            rate_limit_waits: Arc::new(AtomicU64::new(0)),
            slug: tokio::sync::OnceCell::new(),
        })
    }

    /// How many times the client has waited out a rate limit.
    pub fn rate_limit_waits(&self) -> u64 {
        self.rate_limit_waits.load(Ordering::Relaxed)
    }

    /// The counter behind [`Self::rate_limit_waits`], to register with metrics.
    pub fn rate_limit_wait_counter(&self) -> Arc<AtomicU64> {
        self.rate_limit_waits.clone()
    }

    /// Forgets every cached actor answer (for example after a membership
    /// webhook).
    pub fn clear_facts_cache(&self) {
        self.facts.lock().unwrap().clear();
    }

    /// The App's slug (`GET /app`, asked once), whose bot login is `<slug>[bot]`.
    pub async fn app_slug(&self) -> Result<String> {
        let slug = self
            .slug
            .get_or_try_init(|| async {
                let path = "/app".to_owned();
                let answer = self.send(As::App, Method::GET, &path, None, Retry::Idempotent).await?;
                let body = expect_json(&Method::GET, &path, answer, &[StatusCode::OK])?;
                str_field(&Method::GET, &path, &body, "slug")
            })
            .await?;
        Ok(slug.clone())
    }

    /// The installation of the App on a repository
    /// (`GET /repos/{owner}/{repo}/installation`).
    pub async fn installation_for_repo(&self, owner: &str, repo: &str) -> Result<i64> {
        let path = repo_path(owner, repo, "/installation")?;
        let answer = self.send(As::App, Method::GET, &path, None, Retry::Idempotent).await?;
        let body = expect_json(&Method::GET, &path, answer, &[StatusCode::OK])?;
        body.get("id").and_then(Value::as_i64).ok_or_else(|| Error::Unexpected {
            method: Method::GET,
            path,
            detail: "no installation id".into(),
        })
    }

    /// What GitHub says about `login` for authorization on `owner/repo`:
    /// repository permission, account type, membership of each of `orgs`,
    /// active membership of each of `teams` (`org/slug`). Asked as the
    /// installation; cached; any failure is [`Unavailable`].
    pub async fn actor_facts(
        &self,
        installation: i64,
        owner: &str,
        repo: &str,
        login: &str,
        orgs: &[String],
        teams: &[String],
    ) -> Result<ActorFacts, Unavailable> {
        let mut org_keys: Vec<String> = orgs.iter().map(|o| o.to_ascii_lowercase()).collect();
        org_keys.sort();
        org_keys.dedup();
        let mut team_keys: Vec<String> = teams.iter().map(|t| t.to_ascii_lowercase()).collect();
        team_keys.sort();
        team_keys.dedup();
        let key = FactsKey {
            installation,
            repository: format!("{owner}/{repo}").to_ascii_lowercase(),
            login: login.to_ascii_lowercase(),
            orgs: org_keys,
            teams: team_keys,
        };
        if let Some(facts) = self.cached_facts(&key) {
            tracing::debug!(login, repository = %key.repository, "actor facts from cache");
            return Ok(facts);
        }
        let facts = self
            .fetch_facts(installation, owner, repo, login, &key.orgs, &key.teams)
            .await
            .map_err(|e| Unavailable::new(e.to_string()))?;
        self.remember_facts(key, facts.clone());
        Ok(facts)
    }

    fn cached_facts(&self, key: &FactsKey) -> Option<ActorFacts> {
        let cache = self.facts.lock().unwrap();
        let (expires, facts) = cache.get(key)?;
        (Instant::now() < *expires).then(|| facts.clone())
    }

    fn remember_facts(&self, key: FactsKey, facts: ActorFacts) {
        let ttl = if facts.is_positive() {
            self.config.facts_ttl
        } else {
            self.config.negative_facts_ttl
        };
        let now = Instant::now();
        let mut cache = self.facts.lock().unwrap();
        cache.retain(|_, (expires, _)| *expires > now);
        if cache.len() >= MAX_CACHED_FACTS {
            cache.clear();
        }
        cache.insert(key, (now + ttl, facts));
    }

    async fn fetch_facts(
        &self,
        installation: i64,
        owner: &str,
        repo: &str,
        login: &str,
        orgs: &[String],
        teams: &[String],
    ) -> Result<ActorFacts> {
        let (owner, repo, login) = (
            non_empty("owner", owner)?,
            non_empty("repository", repo)?,
            non_empty("login", login)?,
        );
        let org_checks = futures::future::try_join_all(orgs.iter().map(|org| async move {
            let member = self
                .org_member(installation, non_empty("organization", org)?, login)
                .await?;
            Ok::<_, Error>((org.clone(), member))
        }));
        let team_checks = futures::future::try_join_all(teams.iter().map(|team| async move {
            let (org, slug) = team
                .split_once('/')
                .ok_or_else(|| Error::InvalidArgument(format!("team {team:?} is not org/slug")))?;
            let member = self
                .team_member(
                    installation,
                    non_empty("organization", org)?,
                    non_empty("team", slug)?,
                    login,
                )
                .await?;
            Ok::<_, Error>((team.clone(), member))
        }));
        let (permission, user_type, org_member, team_member) = futures::try_join!(
            self.permission(installation, owner, repo, login),
            self.user_type(installation, login),
            org_checks,
            team_checks,
        )?;
        Ok(ActorFacts {
            login: login.to_owned(),
            permission,
            user_type,
            org_member: org_member.into_iter().collect(),
            team_member: team_member.into_iter().collect(),
        })
    }

    async fn permission(&self, installation: i64, owner: &str, repo: &str, login: &str) -> Result<Option<Permission>> {
        let path = format!(
            "/repos/{}/{}/collaborators/{}/permission",
            seg(owner),
            seg(repo),
            seg(login)
        );
        let answer = self
            .send(
                As::Installation(installation),
                Method::GET,
                &path,
                None,
                Retry::Idempotent,
            )
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = expect_json(&Method::GET, &path, answer, &[StatusCode::OK])?;
        Ok(permission_from_answer(&body))
    }

    async fn user_type(&self, installation: i64, login: &str) -> Result<ActorType> {
        let path = format!("/users/{}", seg(login));
        let body = self.get_json(installation, &path).await?;
        let name = str_field(&Method::GET, &path, &body, "type")?;
        user_type(&name).ok_or_else(|| Error::Unexpected {
            method: Method::GET,
            path,
            detail: format!("unknown account type {name:?}"),
        })
    }

    async fn org_member(&self, installation: i64, org: &str, login: &str) -> Result<bool> {
        let path = format!("/orgs/{}/members/{}", seg(org), seg(login));
        let answer = self
            .send(
                As::Installation(installation),
                Method::GET,
                &path,
                None,
                Retry::Idempotent,
            )
            .await?;
        match answer.status {
            StatusCode::NO_CONTENT => Ok(true),
            // 302: the installation cannot see private members, which it
            // should; either way membership is not established.
            StatusCode::NOT_FOUND | StatusCode::FOUND => Ok(false),
            status => Err(status_error(&Method::GET, &path, status, &answer.body)),
        }
    }

    async fn team_member(&self, installation: i64, org: &str, slug: &str, login: &str) -> Result<bool> {
        let path = format!("/orgs/{}/teams/{}/memberships/{}", seg(org), seg(slug), seg(login));
        let answer = self
            .send(
                As::Installation(installation),
                Method::GET,
                &path,
                None,
                Retry::Idempotent,
            )
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        let body = expect_json(&Method::GET, &path, answer, &[StatusCode::OK])?;
        Ok(body.get("state").and_then(Value::as_str) == Some("active"))
    }

    /// The head of pull request `number` (`GET /repos/{o}/{r}/pulls/{n}`).
    pub async fn pull_head(&self, installation: i64, owner: &str, repo: &str, number: i64) -> Result<PullHead> {
        let path = repo_path(owner, repo, &format!("/pulls/{number}"))?;
        let body = self.get_json(installation, &path).await?;
        let head = body.get("head").cloned().unwrap_or(Value::Null);
        let base_repo = body.pointer("/base/repo/full_name").and_then(Value::as_str);
        let repo_full_name = head
            .pointer("/repo/full_name")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let fork = match (&repo_full_name, base_repo) {
            (Some(h), Some(b)) => !h.eq_ignore_ascii_case(b),
            _ => true,
        };
        Ok(PullHead {
            sha: str_field(&Method::GET, &path, &head, "sha")?,
            ref_: str_field(&Method::GET, &path, &head, "ref")?,
            repo_full_name,
            fork,
            default_branch: body
                .pointer("/base/repo/default_branch")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    /// An issue's or pull request's title, body and author
    /// (`GET /repos/{o}/{r}/issues/{n}`, which serves both).
    pub async fn issue_post(
        &self,
        installation: i64,
        owner: &str,
        repo: &str,
        number: i64,
    ) -> Result<(String, crate::github::context::Post)> {
        let path = repo_path(owner, repo, &format!("/issues/{number}"))?;
        let body = self.get_json(installation, &path).await?;
        Ok((str_field(&Method::GET, &path, &body, "title")?, post_of(&body)))
    }

    /// The comments of an issue or pull request, oldest first
    /// (`GET /repos/{o}/{r}/issues/{n}/comments`, 100 a page, at most
    /// `max_pages` pages), with each author's account type.
    pub async fn issue_comments(
        &self,
        installation: i64,
        owner: &str,
        repo: &str,
        number: i64,
        max_pages: u32,
    ) -> Result<Vec<ThreadComment>> {
        let path = repo_path(owner, repo, &format!("/issues/{number}/comments"))?;
        let mut out = Vec::new();
        for page in self.pages(installation, &path, max_pages).await? {
            out.extend(page.iter().map(|c| {
                ThreadComment {
                    id: c.get("id").and_then(Value::as_i64).unwrap_or(0),
                    user_type: c
                        .pointer("/user/type")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    post: post_of(c),
                }
            }));
        }
        Ok(out)
    }

    /// A pull request's changed files with their patches
    /// (`GET /repos/{o}/{r}/pulls/{n}/files`, 100 a page, at most `max_pages`).
    pub async fn pull_changed_files(
        &self,
        installation: i64,
        owner: &str,
        repo: &str,
        number: i64,
        max_pages: u32,
    ) -> Result<Vec<crate::github::context::ChangedFile>> {
        let path = repo_path(owner, repo, &format!("/pulls/{number}/files"))?;
        let mut out = Vec::new();
        for page in self.pages(installation, &path, max_pages).await? {
            out.extend(page.iter().map(|f| {
                let text = |field: &str| f.get(field).and_then(Value::as_str).map(str::to_owned);
                crate::github::context::ChangedFile {
                    filename: text("filename").unwrap_or_default(),
                    previous_filename: text("previous_filename"),
                    status: text("status").unwrap_or_default(),
                    additions: f.get("additions").and_then(Value::as_u64).unwrap_or(0),
                    deletions: f.get("deletions").and_then(Value::as_u64).unwrap_or(0),
                    patch: text("patch"),
                }
            }));
        }
        Ok(out)
    }

    /// The paths pull request `number` changes
    /// (`GET /repos/{o}/{r}/pulls/{n}/files`, 100 a page, at most
    /// [`MAX_PULL_FILES`] as GitHub lists at most that many). A renamed
    /// file counts with its old path too.
    pub async fn pull_files(&self, installation: i64, owner: &str, repo: &str, number: i64) -> Result<Vec<String>> {
        let pages = (MAX_PULL_FILES / 100) as u32;
        let files = self
            .pull_changed_files(installation, owner, repo, number, pages)
            .await?;
        Ok(files
            .into_iter()
            .flat_map(|f| std::iter::once(f.filename).chain(f.previous_filename))
            .collect())
    }

    /// The pages of a list endpoint (`per_page=100`), until one is short or
    /// `max_pages` were read.
    /// `GET path` as the installation, expecting 200 and a JSON body.
    async fn get_json(&self, installation: i64, path: &str) -> Result<Value> {
        let answer = self
            .send(
                As::Installation(installation),
                Method::GET,
                path,
                None,
                Retry::Idempotent,
            )
            .await?;
        expect_json(&Method::GET, path, answer, &[StatusCode::OK])
    }

    async fn pages(&self, installation: i64, path: &str, max_pages: u32) -> Result<Vec<Vec<Value>>> {
        const PER_PAGE: usize = 100;
        let mut pages = Vec::new();
        for page in 1..=max_pages.max(1) {
            let url = format!("{path}?per_page={PER_PAGE}&page={page}");
            let answer = self
                .send(
                    As::Installation(installation),
                    Method::GET,
                    &url,
                    None,
                    Retry::Idempotent,
                )
                .await?;
            let items = match expect_json(&Method::GET, path, answer, &[StatusCode::OK])? {
                Value::Array(items) => items,
                _ => {
                    return Err(Error::Unexpected {
                        method: Method::GET,
                        path: path.to_owned(),
                        detail: "not a list".into(),
                    });
                }
            };
            let last = items.len() < PER_PAGE;
            pages.push(items);
            if last {
                break;
            }
        }
        Ok(pages)
    }

    /// Mints a token of `installation` scoped to the one repository
    /// `repo_name` (the name without the owner) and `permissions`
    /// (`POST /app/installations/{id}/access_tokens`). Not retried on 5xx:
    /// the caller repeats the step.
    pub async fn mint_token(
        &self,
        installation: i64,
        repo_name: &str,
        permissions: &BTreeMap<String, TokenAccess>,
    ) -> Result<MintedToken> {
        let repo_name = non_empty("repository", repo_name)?;
        let body = json!({ "repositories": [repo_name], "permissions": permissions });
        self.create_installation_token(installation, Some(&body), Retry::Once)
            .await
    }

    async fn create_installation_token(
        &self,
        installation: i64,
        body: Option<&Value>,
        retry: Retry,
    ) -> Result<MintedToken> {
        let path = format!("/app/installations/{installation}/access_tokens");
        let answer = Box::pin(self.send(As::App, Method::POST, &path, body, retry)).await?;
        if answer.status != StatusCode::CREATED {
            return Err(status_error(&Method::POST, &path, answer.status, &answer.body));
        }
        // Never let the body reach an error: it holds the token.
        let unexpected = |detail: &str| Error::Unexpected {
            method: Method::POST,
            path: path.clone(),
            detail: detail.to_owned(),
        };
        let mut value: Value =
            serde_json::from_str(&answer.body).map_err(|_| unexpected("access token answer is not JSON"))?;
        let token = match value.get_mut("token").map(Value::take) {
            Some(Value::String(t)) if !t.is_empty() => SecretString::from(t),
            _ => return Err(unexpected("access token answer has no token")),
        };
        let expires_at = value
            .get("expires_at")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            .ok_or_else(|| unexpected("access token answer has no valid expires_at"))?;
        Ok(MintedToken { token, expires_at })
    }

    /// Revokes an installation token (`DELETE /installation/token` as that
    /// token). A token that is already gone (401, 404) counts as revoked.
    pub async fn revoke_token(&self, token: &SecretString) -> Result<()> {
        let path = "/installation/token".to_owned();
        let answer = self
            .send(As::Token(token), Method::DELETE, &path, None, Retry::Idempotent)
            .await?;
        match answer.status {
            StatusCode::NO_CONTENT | StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND => Ok(()),
            status => Err(status_error(&Method::DELETE, &path, status, &answer.body)),
        }
    }

    /// Posts a comment on issue or pull request `number`; returns its id.
    pub async fn create_comment(
        &self,
        installation: i64,
        owner: &str,
        repo: &str,
        number: i64,
        body: &str,
    ) -> Result<i64> {
        let path = repo_path(owner, repo, &format!("/issues/{number}/comments"))?;
        let request = json!({ "body": body });
        let answer = self
            .send(
                As::Installation(installation),
                Method::POST,
                &path,
                Some(&request),
                Retry::Once,
            )
            .await?;
        let answer = expect_json(&Method::POST, &path, answer, &[StatusCode::CREATED])?;
        answer
            .get("id")
            .and_then(Value::as_i64)
            .ok_or_else(|| Error::Unexpected {
                method: Method::POST,
                path,
                detail: "no comment id".into(),
            })
    }

    /// Replaces the body of issue comment `comment_id`.
    pub async fn update_comment(
        &self,
        installation: i64,
        owner: &str,
        repo: &str,
        comment_id: i64,
        body: &str,
    ) -> Result<()> {
        let path = repo_path(owner, repo, &format!("/issues/comments/{comment_id}"))?;
        let request = json!({ "body": body });
        let answer = self
            .send(
                As::Installation(installation),
                Method::PATCH,
                &path,
                Some(&request),
                Retry::Idempotent,
            )
            .await?;
        expect_json(&Method::PATCH, &path, answer, &[StatusCode::OK]).map(|_| ())
    }

    /// Adds a reaction to issue comment `comment_id` (GitHub answers 200 when
    /// it is already there, so this is safe to repeat).
    pub async fn add_reaction(
        &self,
        installation: i64,
        owner: &str,
        repo: &str,
        comment_id: i64,
        reaction: Reaction,
    ) -> Result<()> {
        let path = repo_path(owner, repo, &format!("/issues/comments/{comment_id}/reactions"))?;
        let request = json!({ "content": reaction.content() });
        let answer = self
            .send(
                As::Installation(installation),
                Method::POST,
                &path,
                Some(&request),
                Retry::Idempotent,
            )
            .await?;
        expect_json(&Method::POST, &path, answer, &[StatusCode::OK, StatusCode::CREATED]).map(|_| ())
    }

    /// The client's own installation-wide token, minted on first use and
    /// renewed before it expires.
    async fn installation_token(&self, installation: i64) -> Result<SecretString> {
        if let Some(token) = self.cached_installation_token(installation) {
            return Ok(token);
        }
        let _minting = self.mint_lock.lock().await;
        if let Some(token) = self.cached_installation_token(installation) {
            return Ok(token);
        }
        let minted = self
            .create_installation_token(installation, Some(&json!({})), Retry::Idempotent)
            .await?;
        let life = minted.expires_at.duration_since(jiff::Timestamp::now());
        let life = Duration::try_from(life).unwrap_or_default();
        let renew_at = Instant::now() + life.saturating_sub(TOKEN_RENEW_MARGIN);
        self.installation_tokens.lock().unwrap().insert(
            installation,
            CachedToken {
                token: minted.token.clone(),
                renew_at,
            },
        );
        Ok(minted.token)
    }

    fn cached_installation_token(&self, installation: i64) -> Option<SecretString> {
        let tokens = self.installation_tokens.lock().unwrap();
        let cached = tokens.get(&installation)?;
        (Instant::now() < cached.renew_at).then(|| cached.token.clone())
    }

    fn forget_installation_token(&self, installation: i64) {
        self.installation_tokens.lock().unwrap().remove(&installation);
    }

    /// The App's JWT: the one in use while it is younger than
    /// [`APP_JWT_REUSE`], else a new one.
    fn app_jwt(&self) -> Result<SecretString> {
        let mut cached = self.app_jwt.lock().unwrap();
        if let Some((jwt, signed)) = cached.as_ref()
            && signed.elapsed() < APP_JWT_REUSE
        {
            return Ok(jwt.clone());
        }
        let jwt = octocrab::auth::create_jwt(octocrab::models::AppId(self.config.app_id), &self.app_key)
            .map_err(|_| Error::InvalidKey)?;
        let jwt = SecretString::from(jwt);
        *cached = Some((jwt.clone(), Instant::now()));
        Ok(jwt)
    }

    async fn crab(&self, who: As<'_>) -> Result<Octocrab> {
        let token = match who {
            As::App => self.app_jwt()?,
            As::Installation(id) => self.installation_token(id).await?,
            As::Token(token) => token.clone(),
        };
        // Same transport, token authentication; cannot fail for a token.
        self.app.user_access_token(token).map_err(|_| Error::InvalidKey)
    }

    async fn attempt(&self, crab: &Octocrab, method: &Method, path: &str, body: Option<&Value>) -> AttemptResult {
        let request = http::Request::builder().method(method.clone()).uri(path);
        let request = match crab.build_request(request, body) {
            Ok(r) => r,
            Err(e) => return AttemptResult::Transport(e),
        };
        let response = match crab.execute(request).await {
            Ok(r) => r,
            Err(e) => return AttemptResult::Transport(e),
        };
        let status = response.status();
        let headers = response.headers().clone();
        match crab.body_to_string(response).await {
            Ok(body) => AttemptResult::Answer(Answer { status, body }, headers),
            Err(e) => AttemptResult::Transport(e),
        }
    }

    /// Sends one request with deadline, retries and rate-limit waits.
    /// Returns any answer that is neither a 5xx nor a rate limit.
    async fn send(
        &self,
        who: As<'_>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        retry: Retry,
    ) -> Result<Answer> {
        let mut failures = 0u32;
        let mut waits = 0u32;
        let mut reauthenticated = false;
        loop {
            let crab = self.crab(who).await?;
            let outcome =
                tokio::time::timeout(self.config.request_timeout, self.attempt(&crab, &method, path, body)).await;
            let failure = match outcome {
                Err(_) => Error::Timeout {
                    method: method.clone(),
                    path: path.to_owned(),
                    after: self.config.request_timeout,
                },
                Ok(AttemptResult::Transport(source)) => Error::Transport {
                    method: method.clone(),
                    path: path.to_owned(),
                    source: Box::new(source),
                },
                Ok(AttemptResult::Answer(answer, headers)) => {
                    if let Some(wait) = rate_limit_wait(answer.status, &headers, now_epoch_secs()) {
                        if wait > self.config.max_rate_limit_wait || waits >= MAX_RATE_LIMIT_WAITS {
                            return Err(Error::RateLimited {
                                method,
                                path: path.to_owned(),
                                wait,
                                max: self.config.max_rate_limit_wait,
                            });
                        }
                        waits += 1;
                        self.rate_limit_waits.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%method, path, ?wait, "GitHub rate limit; waiting");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    if answer.status == StatusCode::UNAUTHORIZED && !reauthenticated {
                        // Our own token (or JWT) was revoked or expired early.
                        match who {
                            As::Installation(id) => self.forget_installation_token(id),
                            As::App => *self.app_jwt.lock().unwrap() = None,
                            As::Token(_) => {}
                        }
                        if !matches!(who, As::Token(_)) {
                            reauthenticated = true;
                            continue;
                        }
                    }
                    if !answer.status.is_server_error() {
                        return Ok(answer);
                    }
                    status_error(&method, path, answer.status, &answer.body)
                }
            };
            if retry == Retry::Once || failures >= self.config.max_retries {
                return Err(failure);
            }
            let backoff = self.config.retry_backoff.saturating_mul(1 << failures.min(8));
            failures += 1;
            tracing::debug!(%method, path, error = %failure, ?backoff, "GitHub request failed; retrying");
            tokio::time::sleep(backoff).await;
        }
    }
}

enum AttemptResult {
    Answer(Answer, HeaderMap),
    Transport(octocrab::Error),
}

fn status_error(method: &Method, path: &str, status: StatusCode, body: &str) -> Error {
    Error::Status {
        method: method.clone(),
        path: path.to_owned(),
        status: status.as_u16(),
        message: github_message(body),
    }
}

fn expect_json(method: &Method, path: &str, answer: Answer, ok: &[StatusCode]) -> Result<Value> {
    if !ok.contains(&answer.status) {
        return Err(status_error(method, path, answer.status, &answer.body));
    }
    serde_json::from_str(&answer.body).map_err(|e| Error::Unexpected {
        method: method.clone(),
        path: path.to_owned(),
        detail: format!("body is not JSON ({e})"),
    })
}

/// A comment of a thread, as [`GitHubClient::issue_comments`] reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadComment {
    pub id: i64,
    /// The author's account type (`User`, `Bot`, ...).
    pub user_type: String,
    pub post: crate::github::context::Post,
}

/// The author, association and body of an issue, pull request or comment.
fn post_of(v: &Value) -> crate::github::context::Post {
    let text = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
    crate::github::context::Post {
        author: text("/user/login"),
        association: text("/author_association"),
        earlier_run: false,
        body: text("/body"),
    }
}

fn str_field(method: &Method, path: &str, body: &Value, field: &str) -> Result<String> {
    body.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Error::Unexpected {
            method: method.clone(),
            path: path.to_owned(),
            detail: format!("no string field {field:?}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn rate_limits_are_recognised_and_plain_forbidden_is_not() {
        let now = 1_700_000_000;
        let forbidden = StatusCode::FORBIDDEN;
        let too_many = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(
            rate_limit_wait(forbidden, &headers(&[("retry-after", "1")]), now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            rate_limit_wait(
                forbidden,
                &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1700000030")]),
                now
            ),
            Some(Duration::from_secs(30))
        );
        // A reset in the past means: try again now.
        assert_eq!(
            rate_limit_wait(
                too_many,
                &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1")]),
                now
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(
            rate_limit_wait(too_many, &HeaderMap::new(), now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(rate_limit_wait(forbidden, &HeaderMap::new(), now), None);
        assert_eq!(
            rate_limit_wait(forbidden, &headers(&[("x-ratelimit-remaining", "12")]), now),
            None
        );
        assert_eq!(
            rate_limit_wait(StatusCode::NOT_FOUND, &headers(&[("retry-after", "5")]), now),
            None
        );
    }

    #[test]
    fn role_name_tells_triage_and_maintain_apart() {
        let cases = [
            (
                json!({"permission": "write", "role_name": "maintain"}),
                Some(Permission::Maintain),
            ),
            (
                json!({"permission": "read", "role_name": "triage"}),
                Some(Permission::Triage),
            ),
            (
                json!({"permission": "admin", "role_name": "admin"}),
                Some(Permission::Admin),
            ),
            (
                json!({"permission": "write", "role_name": "write"}),
                Some(Permission::Write),
            ),
            (
                json!({"permission": "read", "role_name": "read"}),
                Some(Permission::Read),
            ),
            // A custom role falls back to its base permission.
            (
                json!({"permission": "write", "role_name": "security-lead"}),
                Some(Permission::Write),
            ),
            (json!({"permission": "none", "role_name": ""}), None),
            (json!({"permission": "none"}), None),
            (json!({}), None),
        ];
        for (body, expected) in cases {
            assert_eq!(permission_from_answer(&body), expected, "{body}");
        }
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(seg("dependabot[bot]"), "dependabot%5Bbot%5D");
        assert_eq!(seg("a-b_c.d"), "a-b_c.d");
        assert_eq!(seg("x/y"), "x%2Fy");
    }

    #[test]
    fn github_messages_are_shortened_and_bodies_never_copied() {
        assert_eq!(github_message(r#"{"message":"Not Found","x":"y"}"#), "Not Found");
        assert_eq!(github_message(r#"{"token":"ghs_secret"}"#), "");
        assert_eq!(github_message("not json ghs_secret"), "");
        assert_eq!(
            github_message(&format!(r#"{{"message":"{}"}}"#, "a".repeat(500))).len(),
            200
        );
    }

    #[test]
    fn invalid_keys_and_urls_are_reported_without_the_key() {
        let secret = "-----BEGIN RSA PRIVATE KEY-----\nnot-a-key-s3cr3t\n-----END RSA PRIVATE KEY-----\n";
        let err = GitHubClient::new(GitHubClientConfig::new(
            1,
            SecretString::from(secret),
            "http://127.0.0.1:1",
        ))
        .unwrap_err();
        assert!(matches!(err, Error::InvalidKey));
        assert!(!format!("{err} {err:?}").contains("s3cr3t"));
        let config = GitHubClientConfig::new(1, SecretString::from(secret), "http://x");
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn error_labels() {
        let e = Error::Status {
            method: Method::GET,
            path: "/x".into(),
            status: 502,
            message: String::new(),
        };
        assert_eq!(e.metric_label(), "server_error");
        assert_eq!(Error::InvalidKey.metric_label(), "invalid_key");
    }
}
