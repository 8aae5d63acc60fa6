//! Reconcilers of `ClaudeRun` (admission, sandbox, outcome, cleanup) and
//! `ClaudeRunPolicy` (quota, readiness, derived budget status), and the
//! context they share. The decisions are made by the pure modules
//! (`admission`, `cost`, `sandbox`); this module fetches, calls and applies.

pub mod feedback;
pub mod ledger;
pub mod policy;
pub mod run;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};

use kube::{Api, Client, ResourceExt};

use crate::api::{ClaudeRun, ClaudeRunPolicy};
use crate::cli::RunArgs;
use crate::github::client::GitHubClient;
use crate::telemetry::Metrics;

/// Selects the children the operator made.
const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=claude-operator";

/// Run events buffered for the slower of the two controllers reading them.
const RUN_EVENT_BUFFER: usize = 1024;

/// The field manager of every object the operator applies.
pub const FIELD_MANAGER: &str = "claude-operator";

/// Errors of a reconcile. Never carry a token or key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("GitHub: {0}")]
    GitHub(String),
    #[error("object without {0}")]
    Missing(&'static str),
    #[error("invalid object: {0}")]
    Invalid(String),
}

impl Error {
    /// Label for the reconcile-errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::GitHub(_) => "github",
            Error::Missing(_) => "missing",
            Error::Invalid(_) => "invalid",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings of the controllers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a run may wait for namespace quota before it fails.
    pub quota_wait: Duration,
    /// The cluster's pod and service ranges, excluded from egress.
    pub cluster_ranges: crate::sandbox::ClusterRanges,
    /// Where runner pods find the cluster's DNS.
    pub dns: crate::sandbox::DnsTarget,
    /// Endpoints the runner is told about.
    pub runner: crate::sandbox::RunnerParams,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            quota_wait: Duration::from_secs(15 * 60),
            cluster_ranges: crate::sandbox::ClusterRanges::default(),
            dns: crate::sandbox::DnsTarget::default(),
            runner: crate::sandbox::RunnerParams::default(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub github: Arc<GitHubClient>,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub policies: Store<ClaudeRunPolicy>,
    pub runs: Store<ClaudeRun>,
    pub ledger: ledger::Ledger,
    pub feedback: feedback::Feedbacks,
    pub settings: Settings,
    /// Namespaces whose runner service account this process has applied.
    pub service_accounts: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Checks the controllers' configuration (the GitHub App credentials) at
/// start-up, so a bad flag fails the process at once rather than after it
/// becomes leader.
pub fn check_config(args: &RunArgs) -> Result<Arc<GitHubClient>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Arc::new(github_client(args)?))
}

/// Starts both controllers (after winning the leader Lease with
/// `--leader-election`); the returned future ends when they stop.
pub async fn start(
    client: Client,
    args: RunArgs,
    github: Arc<GitHubClient>,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<impl std::future::Future<Output = ()>, Box<dyn std::error::Error + Send + Sync>> {
    if args.leader_election {
        wait_for_leadership(client.clone(), &args).await?;
    }
    let (runs_api, policies_api): (Api<ClaudeRun>, Api<ClaudeRunPolicy>) = match &args.watch_namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let children = |c: &Client| -> (Api<Pod>, Api<Secret>, Api<NetworkPolicy>) {
        match &args.watch_namespace {
            Some(ns) => (
                Api::namespaced(c.clone(), ns),
                Api::namespaced(c.clone(), ns),
                Api::namespaced(c.clone(), ns),
            ),
            None => (Api::all(c.clone()), Api::all(c.clone()), Api::all(c.clone())),
        }
    };
    let (pods, secrets, netpols) = children(&client);

    // One cache of runs, without managedFields (they are most of an object's
    // size and nothing reads them), feeds both controllers: the run
    // controller reconciles from it, the policy controller is woken by it.
    // Bounded concurrency: at start-up every cached run is reconciled, and an
    // unbounded burst of thousands of reconciles (each reading its Secret)
    // costs memory the process keeps.
    let (run_store, run_writer) = reflector::store_shared(RUN_EVENT_BUFFER);
    let run_events = run_writer.subscribe().ok_or("the run store is not shared")?;
    let run_events_for_policies = run_writer.subscribe().ok_or("the run store is not shared")?;
    // Streaming lists: the initial state arrives object by object, not in
    // pages held whole in memory at start-up.
    let run_cache = watcher(runs_api.clone(), watcher::Config::default().streaming_lists())
        .default_backoff()
        .modify(|run: &mut ClaudeRun| run.managed_fields_mut().clear())
        .reflect_shared(run_writer)
        .for_each(|_| futures::future::ready(()));
    let run_controller = Controller::for_shared_stream(run_events, run_store.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(16))
        .owns(pods, watcher::Config::default().labels(MANAGED_SELECTOR))
        .owns(secrets, watcher::Config::default().labels(MANAGED_SELECTOR))
        .owns(netpols, watcher::Config::default().labels(MANAGED_SELECTOR));
    let (policy_store, policy_writer) = reflector::store();
    let policy_cache = reflector(
        policy_writer,
        watcher(policies_api.clone(), watcher::Config::default())
            .default_backoff()
            .modify(|policy: &mut ClaudeRunPolicy| policy.managed_fields_mut().clear()),
    )
    .touched_objects()
    .for_each(|_| futures::future::ready(()));
    tokio::spawn(policy_cache);

    let reporter = Reporter {
        controller: "claude-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        github,
        metrics,
        recorder: Recorder::new(client.clone(), reporter),
        policies: policy_store.clone(),
        runs: run_store.clone(),
        ledger: ledger::Ledger::default(),
        feedback: feedback::Feedbacks::default(),
        settings: Settings {
            runner: runner_params(&args.github_api_url),
            ..Settings::default()
        },
        service_accounts: Default::default(),
    });
    let _ = policy_store.wait_until_ready().await;

    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let run_ctl = run_controller
        .graceful_shutdown_on(shutdown.clone())
        .run(run::reconcile, run::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let policy_ctl = Controller::new(policies_api, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(4))
        .watches_shared_stream(run_events_for_policies, |run: Arc<ClaudeRun>| {
            let ns = run.metadata.namespace.clone()?;
            Some(ObjectRef::new(&run.spec.policy_name).within(&ns))
        })
        .graceful_shutdown_on(shutdown)
        .run(policy::reconcile, policy::error_policy, ctx)
        .for_each(|_| futures::future::ready(()));

    Ok(async move {
        // The cache ends with the controllers: it only feeds them.
        tokio::select! {
            _ = futures::future::join(run_ctl, policy_ctl) => {}
            _ = run_cache => {}
        }
    })
}

/// Blocks until this process holds the leader Lease. Losing it later ends
/// the process, so a new leader never overlaps with an old one for longer
/// than the lease's grace.
async fn wait_for_leadership(client: Client, args: &RunArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let namespace = args
        .leader_election_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("claude-operator-{}", std::process::id()));
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, "claude-operator-leader")
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (mut leader, handle) = manager.watch().await;
    tracing::info!("waiting for the leader lease");
    while !*leader.borrow_and_update() {
        leader.changed().await?;
    }
    tracing::info!("acquired the leader lease");
    tokio::spawn(async move {
        loop {
            if leader.changed().await.is_err() || !*leader.borrow() {
                tracing::error!("lost the leader lease; exiting so that only one leader reconciles");
                std::process::exit(1);
            }
        }
    });
    // Keep the manager's task alive for the process's life.
    std::mem::forget(handle);
    Ok(())
}

/// The GitHub App client from the command line.
fn github_client(args: &RunArgs) -> Result<GitHubClient, Box<dyn std::error::Error + Send + Sync>> {
    let app_id = args
        .github_app_id
        .ok_or("--github-app-id is required for the controller")?;
    let key_file = args
        .github_app_private_key_file
        .as_ref()
        .ok_or("--github-app-private-key-file is required for the controller")?;
    let pem = std::fs::read_to_string(key_file).map_err(|e| format!("reading {}: {e}", key_file.display()))?;
    let config = crate::github::client::GitHubClientConfig::new(app_id, pem.into(), args.github_api_url.clone());
    Ok(GitHubClient::new(config)?)
}

/// What the runner is told: the same API as the operator, and the web host
/// repositories are cloned from (`api.github.com` -> `github.com`; a GitHub
/// Enterprise `https://host/api/v3` -> `https://host`).
fn runner_params(api_url: &str) -> crate::sandbox::RunnerParams {
    let api = api_url.trim_end_matches('/');
    let git = if api == "https://api.github.com" {
        "https://github.com".to_owned()
    } else {
        api.trim_end_matches("/api/v3").to_owned()
    };
    crate::sandbox::RunnerParams {
        github_api_url: api.to_owned(),
        git_base_url: git,
        ..Default::default()
    }
}

/// Logs and counts a reconcile error of `kind` object `name`; returns its requeue.
pub(crate) fn on_error(kind: &str, name: &str, err: &Error, ctx: &Context) -> Action {
    tracing::warn!(kind, name, error = %err, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::telemetry::KindLabels {
            kind: err.metric_label().to_owned(),
        })
        .inc();
    backoff(err)
}

/// Requeue for a reconcile error.
pub(crate) fn backoff(err: &Error) -> Action {
    match err {
        Error::GitHub(_) => Action::requeue(Duration::from_secs(10)),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}
