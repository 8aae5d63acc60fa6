//! The contract between the controller and the gateway: a run's *grant*.
//!
//! When the controller admits and provisions a run it creates one Secret in
//! the gateway's namespace (never in the run's namespace, never mounted into
//! a pod) holding what the gateway needs to act for that run and nothing the
//! pod may see: the run's GitHub token, the policy's Anthropic key, the
//! SHA-256 of the run's capability (the capability itself is only in the
//! run's own Secret, mounted into its pod) and the run's facts (repository,
//! branch, budget, guards). The gateway accepts a capability only while its
//! grant exists, is not closed and has not expired.
//!
//! The gateway meters the run's model usage onto the same Secret (the
//! [`ANNOTATION_METER`] annotation, updated with optimistic concurrency, so
//! several gateway replicas share one meter and one cap; each replica holds
//! a [`Tranche`] of the budget there and serves requests from it). The controller
//! copies the metered figure onto the run's status while it runs, closes the
//! grant when the run ends (no new request is accepted; requests in flight
//! settle), records the final figure and deletes the grant.
//!
//! Plain data and names only; no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::{AllowHost, ModelPrice};
use crate::report::ModelUsage;

/// Label on every grant Secret (value `"true"`): the gateway watches these only.
pub const LABEL_GRANT: &str = "claude-operator.dev/grant";
/// Label with the run's namespace (a label value).
pub const LABEL_RUN_NAMESPACE: &str = "claude-operator.dev/run-namespace";
/// Secret key: the run's GitHub installation token.
pub const KEY_GITHUB_TOKEN: &str = "github-token";
/// Secret key: the Anthropic API key.
pub const KEY_ANTHROPIC_API_KEY: &str = "anthropic-api-key";
/// Secret key: lower-case hex SHA-256 of the run's capability.
pub const KEY_CAPABILITY_SHA256: &str = "capability-sha256";
/// Secret key: [`GrantFacts`] as JSON.
pub const KEY_FACTS: &str = "grant.json";
/// Annotation holding the [`Meter`] as JSON, written by the gateway.
pub const ANNOTATION_METER: &str = "claude-operator.dev/meter";
/// Annotation set (to an RFC 3339 time) by the controller when the run has
/// ended: the gateway accepts no new request for it.
pub const ANNOTATION_CLOSED: &str = "claude-operator.dev/closed";

/// Key of the run's own Secret (in the run's namespace, mounted into the
/// pod) holding the capability.
pub const RUN_SECRET_KEY_CAPABILITY: &str = "capability";

/// Bytes of randomness in a capability (256 bits).
pub const CAPABILITY_BYTES: usize = 32;
/// Prefix of every capability, so a leaked one is recognisable (and the
/// gateway's credential scan finds it).
pub const CAPABILITY_PREFIX: &str = "cocap_";

/// Name of the grant Secret of run `run` in namespace `namespace`:
/// deterministic, a valid DNS label, distinct per run.
pub fn grant_name(namespace: &str, run: &str) -> String {
    crate::sandbox::child_name(&format!("{namespace}.{run}"), "grant")
}

/// Lower-case hex SHA-256 of a capability, as stored on the grant.
pub fn capability_sha256(capability: &str) -> String {
    hex::encode(Sha256::digest(capability.as_bytes()))
}

/// A new random capability: [`CAPABILITY_PREFIX`] and 256 random bits as
/// URL-safe base64.
pub fn new_capability() -> String {
    use base64::Engine;
    let mut bytes = [0u8; CAPABILITY_BYTES];
    getrandom::fill(&mut bytes).expect("the OS random source");
    format!(
        "{CAPABILITY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What the gateway needs to know about a run to guard it. No secret here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrantFacts {
    /// The run's namespace.
    pub namespace: String,
    /// The run's name.
    pub run: String,
    /// The run's uid (a grant left over from a deleted run of the same name is not this run's).
    pub run_uid: String,
    /// The policy's name (in the run's namespace).
    pub policy: String,
    /// `owner/name`: the only repository the run may read or write.
    pub repository: String,
    /// The trigger's issue or pull request number: the only thread the run may comment on.
    pub number: u64,
    /// Whether `number` is a pull request.
    pub is_pull_request: bool,
    /// The head commit that was admitted (pull requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_sha: Option<String>,
    /// The one branch the run may push (`claude/<run>`, or the pull
    /// request's head branch under `pushToPullRequest`); none when the run
    /// is read-only (a fork's pull request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_branch: Option<String>,
    /// `push_branch` is the pull request's own head branch: it must exist
    /// already and may only be fast-forwarded (never created).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub push_to_pull_request: bool,
    /// The run is an automatic review of pull request `number` at
    /// `head_sha`: it may post one pull request review there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review: bool,
    /// Model name globs the run may use (the policy's model first).
    pub allowed_models: Vec<String>,
    /// Most the run may spend, US dollars (decimal string).
    pub max_cost_usd: String,
    /// The policy's price overrides (over the built-in table).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<ModelPrice>,
    /// Path globs a push may never change.
    #[serde(default)]
    pub protected_paths: Vec<String>,
    /// Hosts the CONNECT proxy may open for this run.
    #[serde(default)]
    pub allow_hosts: Vec<AllowHost>,
    /// When the grant stops being honoured (the token's expiry at the latest), RFC 3339.
    pub expires_at: String,
    /// When the run was triggered (its creation), RFC 3339: the gateway
    /// measures the time to the run's first model request from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_at: Option<String>,
}

/// A request the gateway has reserved budget for and not yet settled.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InFlight {
    /// Worst-case cost reserved, micro-dollars.
    pub reserved_micros: u64,
    /// When it was reserved, RFC 3339.
    pub since: String,
}

/// A gateway replica's slice of the run's budget (see
/// `gateway::meter::tranche`): reserved on the shared meter in one write and
/// spent locally, request by request, without a round trip. Whatever a
/// replica has not given back is charged like an open reservation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Tranche {
    /// Budget the replica holds and has not reported spent, micro-dollars.
    pub reserved_micros: u64,
    /// The last batch of settlements the replica wrote (each batch is
    /// applied once, so a retried write never charges twice).
    #[serde(default)]
    pub seq: u64,
    /// When the replica first took budget, RFC 3339.
    pub since: String,
}

/// The run's meter, as the gateways recorded it. Costs in micro-dollars.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Meter {
    /// What settled requests cost, micro-dollars (from the API's own usage figures).
    pub spent_micros: u64,
    /// Usage per model of settled requests.
    #[serde(default)]
    pub usage: BTreeMap<String, ModelUsage>,
    /// Model requests settled (a turn each).
    #[serde(default)]
    pub requests: u32,
    /// Requests reserved and not yet settled, by request id.
    #[serde(default)]
    pub in_flight: BTreeMap<String, InFlight>,
    /// The last model request's tool use, when any (for progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tool: Option<String>,
    /// Budget held by gateway replicas, by replica incarnation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tranches: BTreeMap<String, Tranche>,
    /// Replicas waiting for budget, by replica incarnation, with when they
    /// began to wait (RFC 3339): a replica holding unused budget gives it
    /// back. A wait is bounded, so an old entry (its replica died waiting)
    /// is ignored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wants: BTreeMap<String, String>,
    /// The run's one pull request review (automatic review runs), once a
    /// gateway replica claimed it before forwarding it: no replica forwards
    /// another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewMark>,
}

/// Which gateway replica claimed a run's one review, and when (RFC 3339).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ReviewMark {
    /// The replica's name.
    pub by: String,
    /// When it claimed the review.
    pub at: String,
}

impl Meter {
    /// Micro-dollars reserved by requests in flight and held by replicas.
    pub fn reserved_micros(&self) -> u64 {
        let requests = self.in_flight.values().map(|f| f.reserved_micros);
        let tranches = self.tranches.values().map(|t| t.reserved_micros);
        requests.chain(tranches).fold(0, u64::saturating_add)
    }

    /// Reservations not yet settled: requests in flight and replicas'
    /// tranches. The controller waits (bounded) for these before charging.
    pub fn open(&self) -> usize {
        let holding = self.tranches.values().filter(|t| t.reserved_micros > 0).count();
        self.in_flight.len() + holding
    }

    /// The most this run can have cost: settled plus every reservation still
    /// open (a gateway that died mid-request is charged its worst case).
    pub fn worst_case_micros(&self) -> u64 {
        self.spent_micros.saturating_add(self.reserved_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_random_prefixed_and_long_enough() {
        let a = new_capability();
        let b = new_capability();
        assert_ne!(a, b);
        assert!(a.starts_with(CAPABILITY_PREFIX));
        // 32 bytes in unpadded base64 are 43 characters.
        assert_eq!(a.len(), CAPABILITY_PREFIX.len() + 43);
    }

    #[test]
    fn the_grant_stores_only_a_hash_of_the_capability() {
        let cap = new_capability();
        let h = capability_sha256(&cap);
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&cap[CAPABILITY_PREFIX.len()..]));
    }

    #[test]
    fn grant_names_are_labels_and_distinct_per_run() {
        let a = grant_name("team-a", "gh-0123456789abcdef");
        let b = grant_name("team-b", "gh-0123456789abcdef");
        assert_ne!(a, b);
        assert!(crate::sandbox::is_dns_label(&a), "{a}");
        assert!(crate::sandbox::is_dns_label(&grant_name(
            &"n".repeat(63),
            &"r".repeat(200)
        )));
    }

    #[test]
    fn a_meter_charges_open_reservations() {
        let mut m = Meter {
            spent_micros: 1_000,
            ..Meter::default()
        };
        m.in_flight.insert(
            "r1".into(),
            InFlight {
                reserved_micros: 500,
                since: "2026-01-01T00:00:00Z".into(),
            },
        );
        assert_eq!(m.reserved_micros(), 500);
        assert_eq!(m.worst_case_micros(), 1_500);
        // A replica's tranche is charged like a reservation.
        m.tranches.insert(
            "gw-a.1".into(),
            Tranche {
                reserved_micros: 2_000,
                seq: 3,
                since: "2026-01-01T00:00:00Z".into(),
            },
        );
        assert_eq!(m.worst_case_micros(), 3_500);
        assert_eq!(m.open(), 2);
    }
}
