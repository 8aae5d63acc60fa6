//! `claude-operator run` (and `receiver`, `controller`, `gateway`, which run
//! one component each): wires the process together. Metrics and health
//! always; the webhook receiver unless `--no-webhook`; the controllers unless
//! `--no-controller` (behind a leader-election Lease with `--leader-election`);
//! the gateway unless `--no-gateway`.
//! Ends on SIGTERM/SIGINT, letting in-flight requests finish.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};

use crate::api::ClaudeRunPolicy;
use crate::cli::RunArgs;
use crate::receiver::intake::ActorLimiter;
use crate::receiver::secrets::SecretsHandle;
use crate::receiver::server::{self, Receiver};
use crate::telemetry::{self, Metrics, Readiness};

/// Errors that stop the process at start-up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Secrets(#[from] crate::receiver::secrets::SecretsError),
    #[error("--webhook-secret-file is required for the webhook receiver")]
    NoWebhookSecret,
    #[error("listening: {0}")]
    Listen(#[from] std::io::Error),
    #[error("controller: {0}")]
    Controller(String),
    #[error("gateway: {0}")]
    Gateway(String),
    #[error(transparent)]
    Tenancy(#[from] crate::tenancy::TenancyError),
}

/// Runs until a termination signal.
pub async fn run(mut args: RunArgs) -> Result<(), StartError> {
    // The gateway's GitHub REST upstream is the operator's unless set apart.
    if args.gateway.gateway_github_api_url.is_none() {
        args.gateway.gateway_github_api_url = Some(args.github_api_url.clone());
    }
    // Read before anything serves: the receiver and the controller apply the
    // same configuration, and a bad file stops the process.
    let tenancy = crate::tenancy::Tenancy::load(args.tenancy_file.as_deref())?;
    if !args.no_webhook || !args.no_controller {
        tracing::info!(configured = tenancy.configured, "tenancy configuration read");
    }
    let client = Client::try_default().await?;
    let metrics = Metrics::default();
    let readiness = Readiness::default();
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let shutdown = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(telemetry::serve(
        args.metrics_listen,
        metrics.clone(),
        readiness.clone(),
        shutdown(),
    ));

    if !args.no_webhook {
        let path = args.webhook_secret_file.clone().ok_or(StartError::NoWebhookSecret)?;
        let secrets = SecretsHandle::watch(path, Duration::from_secs(1))?;
        let scope = crate::scope::Scope::new(&args.watch_namespace);
        let (store, writer) = reflector::store();
        let open = |api: Api<ClaudeRunPolicy>| watcher(api, watcher::Config::default()).default_backoff();
        let stream = reflector(writer, scope.watch(&client, open, Some(store.clone())))
            .touched_objects()
            .for_each(|_| futures::future::ready(()));
        tokio::spawn(stream);
        let receiver = Receiver {
            client: client.clone(),
            secrets,
            policies: store.clone(),
            metrics: metrics.clone(),
            bot_login: bot_login(&args).await,
            limiter: Arc::new(ActorLimiter::default()),
            tenancy: tenancy.clone(),
        };
        let listener = tokio::net::TcpListener::bind(args.webhook_listen).await?;
        tracing::info!(addr = %args.webhook_listen, "webhook receiver listening on /webhook");
        let ready = readiness.clone();
        let stop = shutdown();
        let limits = server::Limits::from_args(&args);
        tasks.spawn(async move {
            // Serve only once the policy cache is complete: an empty cache would
            // drop every delivery as unmatched.
            let _ = store.wait_until_ready().await;
            ready.set_ready();
            server::serve(listener, receiver, limits, stop).await
        });
    } else {
        readiness.set_ready();
    }

    if !args.no_gateway {
        let (client, gw, metrics, stop) = (client.clone(), args.gateway.clone(), metrics.clone(), shutdown());
        // Not ready until the gateway has read its grants: before that it
        // would refuse every run.
        let pending = readiness.require();
        let gateway = crate::gateway::Gateway::start(client, gw, metrics)
            .await
            .map_err(|e| StartError::Gateway(e.to_string()))?;
        let grants_read = gateway.ready();
        tokio::spawn(async move {
            grants_read.await;
            pending.done();
        });
        tasks.spawn(gateway.serve(stop));
    }

    if !args.no_controller {
        let github = crate::controller::check_config(&args).map_err(|e| StartError::Controller(e.to_string()))?;
        let (client, args, metrics, stop) = (client.clone(), args.clone(), metrics.clone(), shutdown());
        let tenancy = tenancy.clone();
        // In a task: a replica waiting for the Lease still answers signals
        // and serves webhooks.
        tasks.spawn(async move {
            match crate::controller::start(client, args, github, tenancy, metrics, stop).await {
                Ok(ctl) => ctl.await,
                Err(err) => {
                    tracing::error!(error = %err, "the controllers could not start");
                    std::process::exit(1);
                }
            }
            Ok(())
        });
    }

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let drain = async {
        while let Some(res) = tasks.join_next().await {
            if let Ok(Err(err)) = res {
                tracing::warn!(error = %err, "task ended with an error");
            }
        }
    };
    // In-flight work gets a grace period; a replica still waiting for the
    // Lease has nothing in flight and is stopped.
    if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
        tasks.abort_all();
    }
    Ok(())
}

/// The App's bot login (`<slug>[bot]`), whose comments never trigger: from
/// the flag, else asked of GitHub when the App's credentials are configured.
async fn bot_login(args: &RunArgs) -> Option<String> {
    if let Some(login) = &args.github_app_bot_login {
        return Some(login.clone());
    }
    let (Some(id), Some(key)) = (args.github_app_id, &args.github_app_private_key_file) else {
        tracing::warn!("no --github-app-bot-login and no App credentials: the App's own comments cannot be recognized");
        return None;
    };
    let pem = std::fs::read_to_string(key).ok()?;
    let config = crate::github::client::GitHubClientConfig::new(id, pem.into(), args.github_api_url.clone());
    let client = crate::github::client::GitHubClient::new(config).ok()?;
    match client.app_slug().await {
        Ok(slug) => Some(format!("{slug}[bot]")),
        Err(err) => {
            tracing::warn!(error = %err, "looking up the App's slug failed; its own comments cannot be recognized");
            None
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
