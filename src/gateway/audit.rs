//! The gateway's audit trail: one structured line per request (target
//! `claude_operator::audit`, `component = "gateway"`), with the run, the
//! kind, the target, the method, the status, bytes, tokens, cost, the
//! decision and its reason. Never a body, a token, a key or a capability.

use super::Kind;

/// The tracing target of audit lines (shared with the receiver's).
pub const TARGET: &str = "claude_operator::audit";

/// One request's audit record.
#[derive(Clone, Debug, Default)]
pub struct Record<'a> {
    /// `namespace/run`, or empty when the capability matched no run.
    pub run: String,
    /// What kind of request.
    pub kind: Option<Kind>,
    /// Where it went: a model, `owner/name` and a ref, a REST path, `host:port`.
    pub target: String,
    /// The HTTP method.
    pub method: &'a str,
    /// The HTTP status answered.
    pub status: u16,
    /// Bytes received from the pod.
    pub bytes_in: u64,
    /// Bytes sent to the pod.
    pub bytes_out: u64,
    /// Tokens metered (input, cache and output together).
    pub tokens: u64,
    /// Cost metered, micro-dollars.
    pub cost_micros: u64,
    /// `allow` or `refuse`.
    pub allowed: bool,
    /// The refusal reason (see [`super::reasons`]), or empty.
    pub reason: &'a str,
}

/// Writes the record as one audit line.
pub fn log(r: &Record<'_>) {
    tracing::info!(
        target: TARGET,
        component = "gateway",
        run = %r.run,
        kind = r.kind.map(Kind::as_str).unwrap_or("unknown"),
        target_ = %r.target,
        method = r.method,
        status = r.status,
        bytes_in = r.bytes_in,
        bytes_out = r.bytes_out,
        tokens = r.tokens,
        cost_micros = r.cost_micros,
        decision = if r.allowed { "allow" } else { "refuse" },
        reason = r.reason,
        "gateway request"
    );
}
