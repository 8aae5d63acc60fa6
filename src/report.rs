//! The runner's termination report: the one compact JSON object the runner
//! writes to `/dev/termination-log` and the controller reads back from the
//! pod's container status. This is the contract between the two sides; both
//! use these types, so they cannot drift.
//!
//! Money is a decimal string, never a float. The whole object must stay under
//! Kubernetes' 4096-byte termination-message limit: free text is truncated
//! first, the numbers never.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Kubernetes keeps at most this many bytes of a termination message.
pub const MAX_REPORT_BYTES: usize = 4096;

/// What the runner reports when it ends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RunReport {
    /// Claude Code's result subtype (`success`, `error_max_turns`,
    /// `error_max_budget_usd`, `error_during_execution`), or the wrapper's own
    /// failure (`error_clone`, `error_push`, `error_setup`).
    pub outcome: String,
    /// Total cost in US dollars as Claude Code computed it, as an exact
    /// decimal string. Absent when Claude Code did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cost_usd: Option<String>,
    /// Token usage per model.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usage: BTreeMap<String, ModelUsage>,
    /// Agent turns.
    #[serde(default)]
    pub num_turns: u32,
    /// Wall-clock duration of the Claude Code session, milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// Claude Code's session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Where the work landed: a pull request or comment URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Claude's answer or the failure's explanation, truncated to fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// Tokens used with one model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ModelUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    /// All cache writes (five-minute and one-hour).
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// The part of `cache_creation_input_tokens` written with a one-hour life,
    /// which is priced higher; the rest had a five-minute life.
    #[serde(default)]
    pub cache_creation_1h_input_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}
