//! Placeholder: the gateway's HTTP server (authentication, dispatch).

use std::sync::Arc;

use super::StartError;
use super::registry::Registry;
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
}

impl State {
    /// Starts watching grants and builds the upstream client.
    pub async fn new(_client: kube::Client, args: &GatewayArgs, metrics: Metrics) -> Result<State, StartError> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| StartError::Config(e.to_string()))?;
        Ok(State {
            registry: Registry::default(),
            http,
            args: args.clone(),
            metrics,
        })
    }
}

/// Serves runner pods until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _ = state;
    axum::serve(listener, axum::Router::new())
        .with_graceful_shutdown(shutdown)
        .await
}
