//! Placeholder: replaced by the gateway's model handler.

use std::sync::Arc;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use super::Grant;
use super::server::State;

/// Serves one request of this kind for the run of `grant`.
pub async fn handle(_state: Arc<State>, _grant: Arc<Grant>, _req: Request) -> Response {
    axum::http::StatusCode::NOT_IMPLEMENTED.into_response()
}
