//! The gateway: the runner pods' only door (`claude-operator gateway`).
//!
//! A runner pod holds no credential, only its run's *capability*. Everything
//! it does outside the pod goes through here, authenticated by that
//! capability, and only while the run's grant (see [`crate::grant`]) is open:
//!
//! - `POST /v1/messages`, `POST /v1/messages/count_tokens` ([`model`]): the
//!   Anthropic API with the policy's key injected, the model checked, every
//!   request's worst case reserved against the run's budget before it is
//!   forwarded ([`meter`]), and the usage the API reports metered.
//! - `/git/<owner>/<name>.git/...` ([`git`]): git smart HTTP for the run's one
//!   repository with its token; pushes only to the run's branch, checked
//!   for protected paths, size and credentials in what they really change.
//! - `/github/...` ([`rest`]): the few GitHub REST calls a run needs (a draft
//!   pull request from its branch, comments on its trigger's thread).
//! - `CONNECT host:port` ([`connect`]): the policy's allowed hosts only,
//!   resolved here, never to a private, loopback, link-local or cluster
//!   address unless that exact host is allowed.
//!
//! Every request gets one audit line ([`audit`]) and the metrics; no body, no
//! token, no key and no capability is ever logged.
//!
//! The gateway keeps no state a restart could lose: grants and meters live
//! on the grant Secrets in `--gateway-namespace`, so replicas can be added
//! freely. What a replica holds in memory, its tranches of runs' budgets
//! ([`meter::tranche`]), the meters count in full until it gives them back.

pub mod audit;
pub mod connect;
pub mod git;
pub mod meter;
pub mod model;
pub mod registry;
pub mod rest;
pub mod scan;
pub mod server;

use std::sync::Arc;

use axum::http::StatusCode;
use jiff::Timestamp;
use secrecy::SecretString;

use crate::cli::GatewayArgs;
use crate::grant::GrantFacts;
use crate::telemetry::Metrics;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Listening on `--gateway-listen` failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A setting is unusable.
    #[error("{0}")]
    Config(String),
}

/// One run as the gateway knows it: its grant, read from the grant Secret.
#[derive(Clone)]
pub struct Grant {
    /// Name of the grant Secret (in the gateway's namespace).
    pub secret_name: String,
    /// The run's facts.
    pub facts: GrantFacts,
    /// The run's GitHub token. Never logged, never returned to the pod.
    pub github_token: SecretString,
    /// The Anthropic key. Never logged, never returned to the pod.
    pub anthropic_key: SecretString,
    /// When the grant stops being honoured.
    pub expires_at: Timestamp,
    /// The controller closed the grant: the run has ended.
    pub closed: bool,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token and key are SecretStrings, which print redacted anyway;
        // keep them out of Debug output entirely.
        f.debug_struct("Grant")
            .field("secret_name", &self.secret_name)
            .field("facts", &self.facts)
            .field("expires_at", &self.expires_at)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Grant {
    /// Whether requests under this grant may be served now.
    pub fn is_open(&self, now: Timestamp) -> bool {
        !self.closed && now < self.expires_at
    }
}

/// What kind of request an audit line is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The Anthropic Messages API.
    Model,
    /// git smart HTTP.
    Git,
    /// GitHub's REST API.
    GitHub,
    /// A CONNECT tunnel.
    Connect,
}

impl Kind {
    /// The lower-case name used in audit lines and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Git => "git",
            Kind::GitHub => "github",
            Kind::Connect => "connect",
        }
    }
}

/// A request the gateway will not serve: the HTTP status, a machine-readable
/// reason (audit lines, metrics) and a message for the agent. Never carries
/// a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The status answered.
    pub status: StatusCode,
    /// The reason, `UpperCamelCase` (see [`reasons`]).
    pub reason: &'static str,
    /// What a person (or the agent) reads.
    pub message: String,
}

impl Refusal {
    /// A refusal.
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Refusal reasons, as audit lines and the refusals metric carry them.
pub mod reasons {
    /// No capability, or one no open grant has.
    pub const UNAUTHENTICATED: &str = "Unauthenticated";
    /// The run's grant is closed or expired.
    pub const RUN_ENDED: &str = "RunEnded";
    /// A model the policy does not allow.
    pub const MODEL_NOT_ALLOWED: &str = "ModelNotAllowed";
    /// The run's budget cannot cover the request.
    pub const BUDGET_EXHAUSTED: &str = "BudgetExhausted";
    /// Another repository than the run's.
    pub const WRONG_REPOSITORY: &str = "WrongRepository";
    /// A push to a ref other than the run's branch, a tag, a delete or a
    /// non-fast-forward.
    pub const REF_NOT_ALLOWED: &str = "RefNotAllowed";
    /// A push changing a protected path.
    pub const PROTECTED_PATH: &str = "ProtectedPath";
    /// A push or body over the size limit.
    pub const TOO_LARGE: &str = "TooLarge";
    /// A body or push carrying a credential.
    pub const CREDENTIAL_IN_CONTENT: &str = "CredentialInContent";
    /// A GitHub REST call a run may not make.
    pub const API_NOT_ALLOWED: &str = "ApiNotAllowed";
    /// A CONNECT to a host the policy does not allow.
    pub const HOST_NOT_ALLOWED: &str = "HostNotAllowed";
    /// A CONNECT whose host resolves to a forbidden address.
    pub const ADDRESS_NOT_ALLOWED: &str = "AddressNotAllowed";
    /// The request is malformed.
    pub const MALFORMED: &str = "Malformed";
    /// The upstream failed.
    pub const UPSTREAM_ERROR: &str = "UpstreamError";
    /// The gateway has not read its grants yet (or its meter is unreachable).
    pub const NOT_READY: &str = "NotReady";
}

/// A started gateway: its listener and shared state.
pub struct Gateway {
    listener: tokio::net::TcpListener,
    state: Arc<server::State>,
}

impl Gateway {
    /// Binds `--gateway-listen`, starts watching the grants and prepares the
    /// upstream clients.
    pub async fn start(client: kube::Client, args: GatewayArgs, metrics: Metrics) -> Result<Gateway, StartError> {
        // Pushes are checked with git: without it every push would be
        // refused, so say so at start rather than at the first push.
        tokio::task::spawn_blocking(git::inspect::preflight)
            .await
            .map_err(|e| StartError::Config(e.to_string()))?
            .map_err(|e| StartError::Config(format!("the push checks cannot run: {e}")))?;
        let state = server::State::new(client, &args, metrics).await?;
        let listener = tokio::net::TcpListener::bind(args.gateway_listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: args.gateway_listen,
                source,
            })?;
        tracing::info!(addr = %args.gateway_listen, "gateway listening");
        Ok(Gateway {
            listener,
            state: Arc::new(state),
        })
    }

    /// The address it listens on (for tests that bind port 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Resolves once the gateway has read its grants (the first complete
    /// list of grant Secrets).
    pub fn ready(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.state.registry.wait_ready()
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        server::serve(self.listener, self.state, shutdown).await
    }
}
