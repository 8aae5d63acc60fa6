//! Reconcilers of `ClaudeRun` (admission, sandbox, outcome, cleanup) and
//! `ClaudeRunPolicy` (quota, readiness, derived budget status), and the
//! context they share. The decisions are made by the pure modules
//! (`admission`, `cost`, `sandbox`); this module fetches, calls and applies.

pub mod cancel;
pub mod charge;
pub mod context;
pub mod feedback;
pub mod gateway_secrets;
pub mod ledger;
pub mod policy;
pub mod run;
pub mod seen;
pub mod spend_record;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::PartialObjectMeta;
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
/// Policy events buffered for the policy controller.
const POLICY_EVENT_BUFFER: usize = 256;

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
    #[error("the cache of {0} ended")]
    Cache(&'static str),
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
            Error::Cache(_) => "cache",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The reconcile's own error keeps its kind (for the metric's label and the
/// backoff); only the finalizer's own patches are `Finalizer` errors.
fn unwrap_finalizer_error(e: kube::runtime::finalizer::Error<Error>) -> Error {
    use kube::runtime::finalizer::Error as F;
    match e {
        F::ApplyFailed(inner) | F::CleanupFailed(inner) => inner,
        other => Error::Finalizer(other.to_string()),
    }
}

/// Settings of the controllers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a run may wait for namespace quota before it fails.
    pub quota_wait: Duration,
    /// What the runner is told (the gateway's URL).
    pub runner: crate::sandbox::RunnerParams,
    /// Where the gateway runs: the grants' namespace, and what the runner
    /// pods' NetworkPolicy lets them reach.
    pub gateway: crate::sandbox::GatewayTarget,
    /// How often a running run's meter is copied onto its status.
    pub meter_interval: Duration,
    /// How long a closed grant's requests in flight may take to settle
    /// before their reservations are charged as they stand.
    pub drain_wait: Duration,
    /// Cuts every policy's approval window (`--approval-window-max-seconds`).
    pub approval_window_max: Option<Duration>,
    /// Cuts every policy's pod retention (`--pod-retention-max-seconds`).
    pub pod_retention_max: Option<Duration>,
    /// Cuts every run's retention (`--run-retention-max-seconds`).
    pub run_retention_max: Option<Duration>,
    /// The cluster's tenancy configuration (`--tenancy-file`).
    pub tenancy: Arc<crate::tenancy::Tenancy>,
    /// The namespaces watched (`--watch-namespace`).
    pub scope: crate::scope::Scope,
}

impl Settings {
    /// The timers of the command line over the defaults.
    pub fn with_timers(self, t: &crate::cli::TimerArgs) -> Self {
        Self {
            quota_wait: Duration::from_secs(t.quota_wait_seconds),
            meter_interval: Duration::from_secs(t.meter_interval_seconds),
            drain_wait: Duration::from_secs(t.drain_wait_seconds),
            approval_window_max: t.approval_window_max_seconds.map(Duration::from_secs),
            pod_retention_max: t.pod_retention_max_seconds.map(Duration::from_secs),
            run_retention_max: t.run_retention_max_seconds.map(Duration::from_secs),
            ..self
        }
    }

    /// A policy's approval window (`approvalWindowHours`, at least one hour),
    /// cut to the configured maximum.
    pub fn approval_window(&self, policy_hours: i32) -> Duration {
        let window = Duration::from_secs(policy_hours.max(1) as u64 * 3600);
        cap(window, self.approval_window_max)
    }

    /// How long a finished run's pod is kept (`retention.podMinutes`), cut to
    /// the configured maximum.
    pub fn pod_retention(&self, policy_minutes: i32) -> Duration {
        cap(
            Duration::from_secs(policy_minutes.max(0) as u64 * 60),
            self.pod_retention_max,
        )
    }

    /// How long a finished run is kept (its policy retention, and the rest of
    /// its budget period), cut to the configured maximum.
    pub fn run_retention(&self, keep: Duration) -> Duration {
        cap(keep, self.run_retention_max)
    }
}

fn cap(value: Duration, max: Option<Duration>) -> Duration {
    max.map_or(value, |max| value.min(max))
}

/// The default gateway port (`--gateway-listen`'s).
pub const DEFAULT_GATEWAY_PORT: u16 = 8081;
/// The gateway's namespace when neither `--gateway-namespace` nor `POD_NAMESPACE` says.
pub const DEFAULT_GATEWAY_NAMESPACE: &str = "claude-operator";

impl Default for Settings {
    fn default() -> Self {
        Self {
            quota_wait: Duration::from_secs(15 * 60),
            runner: crate::sandbox::RunnerParams::default(),
            gateway: crate::sandbox::GatewayTarget {
                namespace: DEFAULT_GATEWAY_NAMESPACE.into(),
                pod_labels: std::collections::BTreeMap::from([(
                    "app.kubernetes.io/component".into(),
                    "gateway".into(),
                )]),
                port: i32::from(DEFAULT_GATEWAY_PORT),
            },
            meter_interval: Duration::from_secs(10),
            drain_wait: Duration::from_secs(30),
            approval_window_max: None,
            pod_retention_max: None,
            run_retention_max: None,
            tenancy: Arc::default(),
            scope: crate::scope::Scope::All,
        }
    }
}

/// The gateway's namespace: `--gateway-namespace`, else the pod's namespace
/// (`pod_namespace`, from `POD_NAMESPACE`), else [`DEFAULT_GATEWAY_NAMESPACE`].
pub fn gateway_namespace(args: &crate::cli::GatewayArgs, pod_namespace: Option<String>) -> String {
    args.gateway_namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or(pod_namespace.filter(|n| !n.is_empty()))
        .unwrap_or_else(|| DEFAULT_GATEWAY_NAMESPACE.into())
}

/// The controller's gateway settings from the command line: the URL runner
/// pods get (`--gateway-url`; with the gateway in this process, by default
/// `http://127.0.0.1:<--gateway-listen port>`), and the NetworkPolicy's
/// target (the namespace, `--gateway-pod-labels`, and the URL's port, else
/// the listen port). Refuses what would leave runs without a usable door.
pub fn gateway_settings(
    args: &RunArgs,
    pod_namespace: Option<String>,
) -> Result<(crate::sandbox::RunnerParams, crate::sandbox::GatewayTarget), String> {
    let gw = &args.gateway;
    let listen_port = gw.gateway_listen.port();
    let url = match &gw.gateway_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None if !args.no_gateway => format!("http://127.0.0.1:{listen_port}"),
        None => return Err("--gateway-url is required when the gateway runs elsewhere".into()),
    };
    let parsed = reqwest::Url::parse(&url).map_err(|e| format!("--gateway-url {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("--gateway-url {url:?}: must be http or https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.query().is_some() {
        return Err(format!("--gateway-url {url:?}: no credentials or query"));
    }
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        return Err(format!("--gateway-url {url:?}: no host"));
    };
    if host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_err() {
        // Runner pods have no DNS: a name will not resolve there.
        tracing::warn!(%url, "--gateway-url names a host; runner pods have no DNS and need an address");
    }
    if parsed.path() != "/" && !parsed.path().is_empty() {
        return Err(format!("--gateway-url {url:?}: no path"));
    }
    let port = parsed.port().unwrap_or(listen_port);
    let pod_labels =
        crate::sandbox::parse_pod_labels(&gw.gateway_pod_labels).map_err(|e| format!("--gateway-pod-labels: {e}"))?;
    Ok((
        crate::sandbox::RunnerParams { gateway_url: url },
        crate::sandbox::GatewayTarget {
            namespace: gateway_namespace(gw, pod_namespace),
            pod_labels,
            port: i32::from(port),
        },
    ))
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub github: Arc<GitHubClient>,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub policies: Store<ClaudeRunPolicy>,
    pub runs: Store<ClaudeRun>,
    /// Turns true once `runs` holds the first list. (Not the store's own
    /// `wait_until_ready`: its future wakes only the last of several
    /// concurrent waiters, and the run controller already waits on it.)
    pub runs_listed: tokio::sync::watch::Receiver<bool>,
    /// The operator's pods (`MANAGED_SELECTOR`) in the watched namespaces.
    pub pods: Store<Pod>,
    pub ledger: ledger::Ledger,
    pub feedback: feedback::Feedbacks,
    pub settings: Settings,
    /// Namespaces whose runner service account this process has applied.
    pub service_accounts: std::sync::Mutex<std::collections::HashSet<String>>,
    /// When each policy's status was last refreshed.
    pub policy_refreshes: policy::Refreshes,
    /// Runs' status writes the cache may not show yet, and meter reads.
    pub seen: seen::Seen,
    /// The gateway namespace's Secrets as a watch sees them: grants' meters,
    /// key Secrets' versions.
    pub gateway_secrets: gateway_secrets::GatewaySecrets,
}

/// Checks the controllers' configuration (the GitHub App credentials) at
/// start-up, so a bad flag fails the process at once rather than after it
/// becomes leader.
/// `http://<cluster IP>:<port>` of the gateway's Service: runner pods have
/// no DNS, so they are given the address (the port named `gateway`, else the
/// first).
async fn gateway_service_url(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let service = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| format!("looking up the gateway Service {namespace}/{name}: {e}"))?;
    let spec = service.spec.unwrap_or_default();
    let ip = spec
        .cluster_ip
        .filter(|ip| !ip.is_empty() && ip != "None")
        .ok_or_else(|| format!("the gateway Service {namespace}/{name} has no cluster IP"))?;
    let ports = spec.ports.unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("gateway"))
        .or(ports.first())
        .map(|p| p.port)
        .ok_or_else(|| format!("the gateway Service {namespace}/{name} has no port"))?;
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
    Ok(format!("http://{host}:{port}"))
}

pub fn check_config(args: &RunArgs) -> Result<Arc<GitHubClient>, Box<dyn std::error::Error + Send + Sync>> {
    args.timers.check()?;
    // With --gateway-service the URL is looked up at start.
    if !(args.gateway.gateway_url.is_none() && args.gateway.gateway_service.is_some()) {
        gateway_settings(args, std::env::var("POD_NAMESPACE").ok())?;
    }
    Ok(Arc::new(github_client(args)?))
}

/// Starts both controllers (after winning the leader Lease with
/// `--leader-election`); the returned future ends when they stop.
pub async fn start(
    client: Client,
    args: RunArgs,
    github: Arc<GitHubClient>,
    tenancy: Arc<crate::tenancy::Tenancy>,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<impl std::future::Future<Output = ()>, Box<dyn std::error::Error + Send + Sync>> {
    if args.leader_election {
        wait_for_leadership(client.clone(), &args).await?;
    }
    let scope = crate::scope::Scope::new(&args.watch_namespace);
    // The children the run controller owns, by label: the pods cached (see
    // below), the others their metadata only.
    let owned = || watcher::Config::default().labels(MANAGED_SELECTOR);
    let secrets = scope
        .watch(
            &client,
            |api: Api<PartialObjectMeta<Secret>>| watcher(api, owned()).default_backoff(),
            None,
        )
        .touched_objects();
    let netpols = scope
        .watch(
            &client,
            |api: Api<PartialObjectMeta<NetworkPolicy>>| watcher(api, owned()).default_backoff(),
            None,
        )
        .touched_objects();
    let mut args = args;
    if args.gateway.gateway_url.is_none()
        && let Some(service) = args.gateway.gateway_service.clone()
    {
        let ns = gateway_namespace(&args.gateway, std::env::var("POD_NAMESPACE").ok());
        args.gateway.gateway_url = Some(gateway_service_url(&client, &ns, &service).await?);
    }
    let (runner, gateway) = gateway_settings(&args, std::env::var("POD_NAMESPACE").ok())?;
    let (gateway_secrets, gateway_secrets_watch) =
        gateway_secrets::GatewaySecrets::watch(client.clone(), &gateway.namespace);

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
    let run_watch = |api: Api<ClaudeRun>| {
        watcher(api, watcher::Config::default().streaming_lists())
            .default_backoff()
            .modify(|run: &mut ClaudeRun| run.managed_fields_mut().clear())
    };
    let (runs_listed_tx, runs_listed) = tokio::sync::watch::channel(false);
    let run_cache = scope
        .watch(&client, run_watch, Some(run_store.clone()))
        .reflect_shared(run_writer)
        .for_each(move |event| {
            // The store applied the event before passing it on.
            if matches!(event, Ok(watcher::Event::InitDone)) {
                runs_listed_tx.send_replace(true);
            }
            futures::future::ready(())
        });
    // The runner pods, cached as well: following a run reads its pod from
    // here instead of asking the apiserver on every reconcile (a miss is
    // still asked). The controller drives this watch, deletions included.
    let (pod_store, pod_writer) = reflector::store();
    let pod_watch = |api: Api<Pod>| {
        watcher(api, owned())
            .default_backoff()
            .modify(|pod: &mut Pod| pod.managed_fields_mut().clear())
    };
    let pod_events = reflector(pod_writer, scope.watch(&client, pod_watch, Some(pod_store.clone()))).touched_objects();
    let run_controller = Controller::for_shared_stream(run_events, run_store.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(args.reconcile_concurrency))
        .owns_stream(pod_events)
        .owns_stream(secrets)
        .owns_stream(netpols);
    let (overlap_tx, overlap_rx) = futures::channel::mpsc::unbounded::<()>();
    // One cache of policies feeds the policy controller and every decision
    // that reads policies (overlaps, admission).
    let (policy_store, policy_writer) = reflector::store_shared(POLICY_EVENT_BUFFER);
    let policy_events = policy_writer.subscribe().ok_or("the policy store is not shared")?;
    let policy_watch = |api: Api<ClaudeRunPolicy>| {
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|policy: &mut ClaudeRunPolicy| policy.managed_fields_mut().clear())
    };
    let policy_cache = scope
        .watch(&client, policy_watch, Some(policy_store.clone()))
        .reflect_shared(policy_writer)
        .inspect({
            // A policy's Overlapping condition depends on the other policies:
            // when one appears, goes or changes its spec, all are reconciled.
            let mut inputs = policy::OverlapInputs::default();
            move |event| {
                if let Ok(event) = event
                    && inputs.changed(event)
                {
                    let _ = overlap_tx.unbounded_send(());
                }
            }
        })
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
        runs_listed,
        pods: pod_store,
        ledger: ledger::Ledger::default(),
        feedback: feedback::Feedbacks::new(Duration::from_secs(args.timers.progress_interval_seconds)),
        settings: Settings {
            runner,
            gateway,
            tenancy,
            scope: scope.clone(),
            ..Settings::default()
        }
        .with_timers(&args.timers),
        service_accounts: Default::default(),
        policy_refreshes: Default::default(),
        seen: Default::default(),
        gateway_secrets,
    });
    let _ = policy_store.wait_until_ready().await;

    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let run_ctl = run_controller
        .graceful_shutdown_on(shutdown.clone())
        .run(run::reconcile, run::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let policy_ctl = Controller::for_shared_stream(policy_events, policy_store.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(4))
        .watches_shared_stream(run_events_for_policies, |run: Arc<ClaudeRun>| {
            let ns = run.metadata.namespace.clone()?;
            Some(ObjectRef::new(&run.spec.policy_name).within(&ns))
        })
        .reconcile_all_on(overlap_rx)
        .graceful_shutdown_on(shutdown)
        .run(policy::reconcile, policy::error_policy, ctx)
        .for_each(|_| futures::future::ready(()));

    Ok(async move {
        // The cache ends with the controllers: it only feeds them.
        tokio::select! {
            _ = futures::future::join(run_ctl, policy_ctl) => {}
            _ = run_cache => {}
            _ = gateway_secrets_watch => {}
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
        .with_duration(args.timers.leader_election_lease_seconds)
        .with_grace(args.timers.leader_election_renew_grace_seconds)
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
        // A conditional write lost to a newer one: the cache is about to
        // catch up, so look again soon.
        Error::Kube(kube::Error::Api(s)) if s.code == 409 => Action::requeue(Duration::from_millis(500)),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["claude-operator", "run"];
        argv.extend_from_slice(extra);
        let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not run")
        };
        args
    }

    #[test]
    fn the_gateway_defaults_to_this_process_when_it_runs_here() {
        let (runner, target) = gateway_settings(&args(&[]), None).unwrap();
        assert_eq!(runner.gateway_url, "http://127.0.0.1:8081");
        assert_eq!(target, Settings::default().gateway);
        let (runner, target) = gateway_settings(&args(&["--gateway-listen", "0.0.0.0:9443"]), None).unwrap();
        assert_eq!(runner.gateway_url, "http://127.0.0.1:9443");
        assert_eq!(target.port, 9443);
    }

    #[test]
    fn a_gateway_elsewhere_is_named_by_address_and_its_port_fences_the_pod() {
        let a = args(&[
            "--no-gateway",
            "--gateway-url",
            "http://10.96.0.20:8081/",
            "--gateway-namespace",
            "gw",
            "--gateway-pod-labels",
            "app=gw,tier=edge",
        ]);
        let (runner, target) = gateway_settings(&a, Some("ignored".into())).unwrap();
        assert_eq!(runner.gateway_url, "http://10.96.0.20:8081");
        assert_eq!(target.namespace, "gw");
        assert_eq!(target.port, 8081);
        assert_eq!(target.pod_labels.len(), 2);
        // No port in the URL: the listen port (the pods' port).
        let a = args(&["--no-gateway", "--gateway-url", "http://10.96.0.20"]);
        assert_eq!(gateway_settings(&a, None).unwrap().1.port, 8081);
    }

    #[test]
    fn unusable_gateway_settings_are_refused_clearly() {
        let err = gateway_settings(&args(&["--no-gateway"]), None).unwrap_err();
        assert!(err.contains("--gateway-url is required"), "{err}");
        for (url, want) in [
            ("10.0.0.1:8081", "--gateway-url"),
            ("ftp://10.0.0.1", "http or https"),
            ("http://u:p@10.0.0.1", "no credentials"),
            ("http://10.0.0.1/x", "no path"),
        ] {
            let err = gateway_settings(&args(&["--gateway-url", url]), None).unwrap_err();
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains("u:p") || url.contains("u:p"));
        }
        let err = gateway_settings(&args(&["--gateway-pod-labels", ""]), None).unwrap_err();
        assert!(err.contains("--gateway-pod-labels"), "{err}");
    }

    #[test]
    fn the_gateway_namespace_is_the_flag_then_the_pods_then_the_default() {
        let gw = gateway_args_with;
        assert_eq!(gateway_namespace(&gw(Some("a")), Some("b".into())), "a");
        assert_eq!(gateway_namespace(&gw(None), Some("b".into())), "b");
        assert_eq!(gateway_namespace(&gw(None), None), "claude-operator");
        assert_eq!(gateway_namespace(&gw(Some("")), Some(String::new())), "claude-operator");
    }

    #[test]
    fn timers_cut_the_policies_windows_and_never_lengthen_them() {
        let hour = Duration::from_secs(3600);
        let plain = Settings::default();
        // (policy hours or minutes, cap seconds, approval window, pod retention)
        for (value, max, window, pod) in [
            (24, None, 24 * hour, Duration::from_secs(24 * 60)),
            (0, None, hour, Duration::ZERO),
            (-3, None, hour, Duration::ZERO),
            (24, Some(5), Duration::from_secs(5), Duration::from_secs(5)),
            (1, Some(7200), hour, Duration::from_secs(60)),
        ] {
            let s = Settings {
                approval_window_max: max.map(Duration::from_secs),
                pod_retention_max: max.map(Duration::from_secs),
                run_retention_max: max.map(Duration::from_secs),
                ..plain.clone()
            };
            assert_eq!(s.approval_window(value), window, "{value} {max:?}");
            assert_eq!(s.pod_retention(value), pod, "{value} {max:?}");
            let keep = Duration::from_secs(value.max(0) as u64 * 3600);
            assert_eq!(
                s.run_retention(keep),
                max.map_or(keep, |m| keep.min(Duration::from_secs(m)))
            );
        }
        let t = args(&[
            "--quota-wait-seconds",
            "3",
            "--meter-interval-seconds",
            "1",
            "--drain-wait-seconds",
            "2",
            "--run-retention-max-seconds",
            "0",
        ])
        .timers;
        let s = plain.with_timers(&t);
        assert_eq!(
            (s.quota_wait, s.meter_interval, s.drain_wait, s.run_retention_max),
            (
                Duration::from_secs(3),
                Duration::from_secs(1),
                Duration::from_secs(2),
                Some(Duration::ZERO)
            )
        );
        assert_eq!(s.approval_window_max, None);
    }

    fn gateway_args_with(ns: Option<&str>) -> crate::cli::GatewayArgs {
        let mut gw = args(&[]).gateway;
        gw.gateway_namespace = ns.map(String::from);
        gw
    }
}
