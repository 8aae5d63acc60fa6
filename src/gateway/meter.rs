//! The run's model meter: every model request reserves its worst case
//! against the run's cap before it is forwarded, and settles to what the API
//! reported when it ends.
//!
//! The meter lives on the grant Secret ([`grant::ANNOTATION_METER`]) so
//! several gateway replicas share one meter and one cap: [`KubeMeterStore`]
//! writes it read-modify-write with the Secret's resourceVersion, so of two
//! concurrent writers one gets 409 and retries on the fresh value.
//! [`InMemoryMeterStore`] has the same semantics for tests. Both are a
//! [`Ledger`]: the shared record. Reserving on it for every request puts an
//! apiserver round trip before every first byte, so the gateway serves
//! requests from a per-replica slice of the budget instead
//! ([`tranche::TrancheMeter`]) and writes the record in the background.
//!
//! The same record carries an automatic review run's one-review mark
//! ([`claim_review`]), taken by the replica that forwards the review.
//!
//! The rules ([`reserve`], [`settle`]) are pure functions over [`Meter`]:
//! a reservation fits only while settled spend plus every open reservation
//! stays within the cap; settling never lowers spend, and settling an id that
//! is not in flight still adds its cost.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

use super::Grant;
use crate::grant::{self, InFlight, Meter, ReviewMark};
use crate::report::ModelUsage;

pub mod tranche;

/// Tries of one read-modify-write before giving up on a contended meter.
pub const MAX_TRIES: u32 = 20;

/// A reservation that was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserved {
    /// Micro-dollars reserved.
    pub reserved_micros: u64,
    /// The most the run can have cost with this reservation, as far as
    /// this store knows (micro-dollars; never above the cap).
    pub worst_case_micros: u64,
    /// Whether this is the run's first model request: nothing settled and
    /// nothing in flight before it. The store's compare-and-swap makes this
    /// true for exactly one request of a run, across replicas.
    pub first: bool,
}

/// Why a reservation or a settlement failed. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeterError {
    /// The reservation does not fit under the cap.
    #[error("the run's budget has {remaining_micros} micro-dollars left")]
    Insufficient {
        /// What still fits, micro-dollars.
        remaining_micros: u64,
    },
    /// The grant is closed: the run has ended.
    #[error("the run has ended")]
    Closed,
    /// The grant Secret is gone.
    #[error("the run's grant is gone")]
    NotFound,
    /// The meter on the grant is unreadable.
    #[error("the run's meter is unreadable: {0}")]
    Corrupt(String),
    /// Too many concurrent writers.
    #[error("the run's meter stayed contended after {MAX_TRIES} tries")]
    Contended,
    /// The apiserver failed.
    #[error("the run's meter could not be written: {0}")]
    Store(String),
}

/// Reserves `worst_case_micros` for `request_id` if it fits under `cap_micros`.
pub fn reserve(
    meter: &mut Meter,
    request_id: &str,
    worst_case_micros: u64,
    cap_micros: u64,
    now: jiff::Timestamp,
) -> Result<Reserved, MeterError> {
    // An id reserved twice replaces its own reservation.
    let others = meter
        .worst_case_micros()
        .saturating_sub(meter.in_flight.get(request_id).map(|f| f.reserved_micros).unwrap_or(0));
    let remaining = cap_micros.saturating_sub(others);
    let first = meter.requests == 0 && meter.in_flight.is_empty();
    if worst_case_micros > remaining {
        return Err(MeterError::Insufficient {
            remaining_micros: remaining,
        });
    }
    meter.in_flight.insert(
        request_id.to_owned(),
        InFlight {
            reserved_micros: worst_case_micros,
            since: now.to_string(),
        },
    );
    Ok(Reserved {
        reserved_micros: worst_case_micros,
        worst_case_micros: others + worst_case_micros,
        first,
    })
}

/// Settles `request_id`: drops its reservation, adds its cost, usage and a
/// request. Spend only ever grows.
pub fn settle(
    meter: &mut Meter,
    request_id: &str,
    model: &str,
    usage: &ModelUsage,
    cost_micros: u64,
    last_tool: Option<String>,
) {
    meter.in_flight.remove(request_id);
    meter.spent_micros = meter.spent_micros.saturating_add(cost_micros);
    meter.requests = meter.requests.saturating_add(1);
    if usage != &ModelUsage::default() {
        add_usage(meter.usage.entry(model.to_owned()).or_default(), usage);
    }
    if last_tool.is_some() {
        meter.last_tool = last_tool;
    }
}

/// Claims the run's one pull request review for replica `by`: `Ok(true)`
/// the first time, `Ok(false)` once any replica has claimed it. A closed
/// grant claims nothing.
pub fn claim_review(meter: &mut Meter, closed: bool, by: &str, now: jiff::Timestamp) -> Result<bool, MeterError> {
    if meter.review.is_some() {
        return Ok(false);
    }
    if closed {
        return Err(MeterError::Closed);
    }
    meter.review = Some(ReviewMark {
        by: by.to_owned(),
        at: now.to_string(),
    });
    Ok(true)
}

/// [`MeterStore::claim_review`] on a shared record: one compare-and-swap
/// write, so of replicas claiming at once exactly one gets `true`.
pub fn claim_review_on<'a, L: Ledger>(
    ledger: &'a L,
    grant: &'a Grant,
    by: &'a str,
) -> BoxFuture<'a, Result<bool, MeterError>> {
    Box::pin(async move {
        if grant.closed {
            return Err(MeterError::Closed);
        }
        ledger
            .update(&grant.secret_name, |meter, closed| {
                claim_review(meter, closed, by, jiff::Timestamp::now())
            })
            .await
    })
}

pub(crate) fn add_usage(total: &mut ModelUsage, more: &ModelUsage) {
    total.input_tokens = total.input_tokens.saturating_add(more.input_tokens);
    total.output_tokens = total.output_tokens.saturating_add(more.output_tokens);
    total.cache_creation_input_tokens = total
        .cache_creation_input_tokens
        .saturating_add(more.cache_creation_input_tokens);
    total.cache_creation_1h_input_tokens = total
        .cache_creation_1h_input_tokens
        .saturating_add(more.cache_creation_1h_input_tokens);
    total.cache_read_input_tokens = total
        .cache_read_input_tokens
        .saturating_add(more.cache_read_input_tokens);
}

/// Where meters are kept.
pub trait MeterStore: Send + Sync {
    /// Reserves `worst_case_micros` for `request_id` on `grant`'s meter if it
    /// fits under `cap_micros`; fails on a closed grant.
    fn reserve<'a>(
        &'a self,
        grant: &'a Grant,
        request_id: &'a str,
        worst_case_micros: u64,
        cap_micros: u64,
    ) -> BoxFuture<'a, Result<Reserved, MeterError>>;

    /// Settles `request_id` (see [`settle`]).
    fn settle<'a>(
        &'a self,
        grant: &'a Grant,
        request_id: &'a str,
        model: &'a str,
        usage: &'a ModelUsage,
        cost_micros: u64,
        last_tool: Option<String>,
    ) -> BoxFuture<'a, Result<(), MeterError>>;

    /// Claims the run's one pull request review for replica `by` before it
    /// is forwarded ([`claim_review`] on the run's shared meter): true for
    /// exactly one claim of a run, whichever replicas ask.
    fn claim_review<'a>(&'a self, grant: &'a Grant, by: &'a str) -> BoxFuture<'a, Result<bool, MeterError>>;

    /// Gives back what this replica holds of every run's budget (a
    /// replica stopping); the default holds nothing.
    fn release_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The shared record of every run's meter, on the grant Secrets (or in
/// memory for tests).
pub trait Ledger: Send + Sync + 'static {
    /// Reads the meter of grant Secret `secret_name`, lets `change` decide
    /// on it (told whether the grant is closed) and writes it back when it
    /// changed, conditioned on nobody having written in between (retried on
    /// the fresh value). An error from `change` writes nothing.
    fn update<'a, T: Send + 'a>(
        &'a self,
        secret_name: &'a str,
        change: impl FnMut(&mut Meter, bool) -> Result<T, MeterError> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, MeterError>>;
}

/// Meters in memory, by grant Secret name (tests; one process).
#[derive(Default)]
pub struct InMemoryMeterStore {
    meters: Mutex<HashMap<String, Meter>>,
    closed: Mutex<std::collections::HashSet<String>>,
}

impl InMemoryMeterStore {
    /// The meter of grant Secret `secret_name`.
    pub fn meter(&self, secret_name: &str) -> Meter {
        self.meters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(secret_name)
            .cloned()
            .unwrap_or_default()
    }

    /// Closes a grant here (as the controller's annotation would).
    pub fn close(&self, secret_name: &str) {
        self.closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(secret_name.to_owned());
    }
}

impl MeterStore for InMemoryMeterStore {
    fn reserve<'a>(
        &'a self,
        grant: &'a Grant,
        request_id: &'a str,
        worst_case_micros: u64,
        cap_micros: u64,
    ) -> BoxFuture<'a, Result<Reserved, MeterError>> {
        Box::pin(async move {
            let closed = self
                .closed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&grant.secret_name);
            if closed || grant.closed {
                return Err(MeterError::Closed);
            }
            let mut meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
            let meter = meters.entry(grant.secret_name.clone()).or_default();
            reserve(meter, request_id, worst_case_micros, cap_micros, jiff::Timestamp::now())
        })
    }

    fn settle<'a>(
        &'a self,
        grant: &'a Grant,
        request_id: &'a str,
        model: &'a str,
        usage: &'a ModelUsage,
        cost_micros: u64,
        last_tool: Option<String>,
    ) -> BoxFuture<'a, Result<(), MeterError>> {
        Box::pin(async move {
            let mut meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
            let meter = meters.entry(grant.secret_name.clone()).or_default();
            settle(meter, request_id, model, usage, cost_micros, last_tool);
            Ok(())
        })
    }

    fn claim_review<'a>(&'a self, grant: &'a Grant, by: &'a str) -> BoxFuture<'a, Result<bool, MeterError>> {
        claim_review_on(self, grant, by)
    }
}

impl<L: Ledger> Ledger for std::sync::Arc<L> {
    fn update<'a, T: Send + 'a>(
        &'a self,
        secret_name: &'a str,
        change: impl FnMut(&mut Meter, bool) -> Result<T, MeterError> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, MeterError>> {
        (**self).update(secret_name, change)
    }
}

impl Ledger for InMemoryMeterStore {
    fn update<'a, T: Send + 'a>(
        &'a self,
        secret_name: &'a str,
        mut change: impl FnMut(&mut Meter, bool) -> Result<T, MeterError> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, MeterError>> {
        Box::pin(async move {
            let closed = self
                .closed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(secret_name);
            let mut meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
            let mut meter = meters.get(secret_name).cloned().unwrap_or_default();
            let out = change(&mut meter, closed)?;
            meters.insert(secret_name.to_owned(), meter);
            Ok(out)
        })
    }
}

/// Meters on the grant Secrets in the gateway's namespace.
#[derive(Clone)]
pub struct KubeMeterStore {
    secrets: Api<Secret>,
}

impl KubeMeterStore {
    /// Meters on the grant Secrets of `namespace`.
    pub fn new(client: Client, namespace: &str) -> Self {
        KubeMeterStore {
            secrets: Api::namespaced(client, namespace),
        }
    }
}

impl Ledger for KubeMeterStore {
    fn update<'a, T: Send + 'a>(
        &'a self,
        secret_name: &'a str,
        mut change: impl FnMut(&mut Meter, bool) -> Result<T, MeterError> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, MeterError>> {
        Box::pin(async move {
            for attempt in 0..MAX_TRIES {
                let secret = match self.secrets.get_opt(secret_name).await {
                    Ok(Some(s)) => s,
                    Ok(None) => return Err(MeterError::NotFound),
                    Err(err) => return Err(MeterError::Store(err.to_string())),
                };
                let read = read_meter(&secret)?;
                let mut meter = read.clone();
                // The Secret read now is the authority on closing, not a cached grant.
                let out = change(&mut meter, is_closed(&secret))?;
                if meter == read {
                    return Ok(out);
                }
                let Some(version) = secret.metadata.resource_version.clone() else {
                    return Err(MeterError::Store("the grant Secret has no resourceVersion".into()));
                };
                let json = serde_json::to_string(&meter).map_err(|e| MeterError::Store(e.to_string()))?;
                // A merge patch carrying the resourceVersion read: the apiserver
                // refuses it with 409 if anyone wrote in between.
                let patch = serde_json::json!({
                    "metadata": {
                        "resourceVersion": version,
                        "annotations": { grant::ANNOTATION_METER: json },
                    }
                });
                match self
                    .secrets
                    .patch(secret_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => return Ok(out),
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => return Err(MeterError::NotFound),
                    Err(err) => return Err(MeterError::Store(err.to_string())),
                }
            }
            Err(MeterError::Contended)
        })
    }
}

/// A short, jittered, growing wait before retrying a conflicting write.
fn backoff(attempt: u32) -> Duration {
    let mut byte = [0u8; 1];
    let jitter = if getrandom::fill(&mut byte).is_ok() {
        u64::from(byte[0]) % 10
    } else {
        5
    };
    Duration::from_millis(2 * u64::from(attempt.min(10)) + jitter)
}

/// The meter on a grant Secret (none yet: an empty meter).
pub fn read_meter(secret: &Secret) -> Result<Meter, MeterError> {
    match secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(grant::ANNOTATION_METER))
    {
        None => Ok(Meter::default()),
        Some(json) => serde_json::from_str(json).map_err(|e| MeterError::Corrupt(e.to_string())),
    }
}

/// Whether the controller has closed the grant on `secret`.
pub fn is_closed(secret: &Secret) -> bool {
    secret
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(grant::ANNOTATION_CLOSED))
}

impl MeterStore for KubeMeterStore {
    fn reserve<'a>(
        &'a self,
        grant: &'a Grant,
        request_id: &'a str,
        worst_case_micros: u64,
        cap_micros: u64,
    ) -> BoxFuture<'a, Result<Reserved, MeterError>> {
        Box::pin(async move {
            if grant.closed {
                return Err(MeterError::Closed);
            }
            self.update(&grant.secret_name, |meter, closed| {
                if closed {
                    return Err(MeterError::Closed);
                }
                reserve(meter, request_id, worst_case_micros, cap_micros, jiff::Timestamp::now())
            })
            .await
        })
    }

    fn settle<'a>(
        &'a self,
        grant: &'a Grant,
        request_id: &'a str,
        model: &'a str,
        usage: &'a ModelUsage,
        cost_micros: u64,
        last_tool: Option<String>,
    ) -> BoxFuture<'a, Result<(), MeterError>> {
        Box::pin(async move {
            self.update(&grant.secret_name, |meter, _| {
                settle(meter, request_id, model, usage, cost_micros, last_tool.clone());
                Ok(())
            })
            .await
        })
    }

    fn claim_review<'a>(&'a self, grant: &'a Grant, by: &'a str) -> BoxFuture<'a, Result<bool, MeterError>> {
        claim_review_on(self, grant, by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> jiff::Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn usage(input: u64, output: u64) -> ModelUsage {
        ModelUsage {
            input_tokens: input,
            output_tokens: output,
            ..ModelUsage::default()
        }
    }

    /// spent, open reservations, worst case asked, cap, expected.
    type ReserveCase = (u64, &'static [u64], u64, u64, Result<u64, u64>);

    #[test]
    fn reservations_fit_under_the_cap_or_say_what_is_left() {
        // spent, open reservations, worst case asked, cap => Ok(worst after) or Err(remaining)
        let cases: &[ReserveCase] = &[
            (0, &[], 100, 100, Ok(100)),
            (0, &[], 101, 100, Err(100)),
            (40, &[], 60, 100, Ok(100)),
            (40, &[30], 31, 100, Err(30)),
            (40, &[30], 30, 100, Ok(100)),
            (120, &[], 1, 100, Err(0)),
            (0, &[u64::MAX], 1, 100, Err(0)),
            (0, &[], 0, 0, Ok(0)),
        ];
        for (i, &(spent, open, ask, cap, expected)) in cases.iter().enumerate() {
            let mut m = Meter {
                spent_micros: spent,
                ..Meter::default()
            };
            for (j, r) in open.iter().enumerate() {
                reserve(&mut m, &format!("open{j}"), *r, u64::MAX, now()).unwrap();
            }
            let got = reserve(&mut m, "new", ask, cap, now());
            match expected {
                Ok(worst) => {
                    assert_eq!(got.unwrap().worst_case_micros, worst, "case {i}");
                    assert_eq!(m.in_flight["new"].reserved_micros, ask, "case {i}");
                }
                Err(left) => {
                    assert_eq!(
                        got,
                        Err(MeterError::Insufficient { remaining_micros: left }),
                        "case {i}"
                    );
                    assert!(!m.in_flight.contains_key("new"), "case {i}");
                }
            }
        }
    }

    #[test]
    fn reserving_an_id_again_replaces_its_reservation() {
        let mut m = Meter::default();
        reserve(&mut m, "r", 80, 100, now()).unwrap();
        reserve(&mut m, "r", 90, 100, now()).unwrap();
        assert_eq!(m.worst_case_micros(), 90);
    }

    #[test]
    fn only_the_runs_first_reservation_is_first() {
        let mut m = Meter::default();
        assert!(reserve(&mut m, "r1", 10, 1_000, now()).unwrap().first);
        // Another while the first is in flight, the first again (a retry),
        // and any after a settlement: none is first.
        assert!(!reserve(&mut m, "r2", 10, 1_000, now()).unwrap().first);
        assert!(!reserve(&mut m, "r1", 10, 1_000, now()).unwrap().first);
        settle(&mut m, "r1", "m", &ModelUsage::default(), 5, None);
        settle(&mut m, "r2", "m", &ModelUsage::default(), 5, None);
        assert!(!reserve(&mut m, "r3", 10, 1_000, now()).unwrap().first);
    }

    #[test]
    fn settling_adds_cost_and_usage_and_never_lowers_spend() {
        let mut m = Meter::default();
        reserve(&mut m, "r1", 500, 1_000, now()).unwrap();
        settle(
            &mut m,
            "r1",
            "claude-sonnet-4-5",
            &usage(10, 5),
            120,
            Some("Bash".into()),
        );
        assert_eq!(m.spent_micros, 120);
        assert!(m.in_flight.is_empty());
        assert_eq!(m.requests, 1);
        assert_eq!(m.usage["claude-sonnet-4-5"], usage(10, 5));
        assert_eq!(m.last_tool.as_deref(), Some("Bash"));

        // An id never reserved (a restarted replica) still charges.
        settle(&mut m, "unknown", "claude-sonnet-4-5", &usage(1, 1), 30, None);
        assert_eq!(m.spent_micros, 150);
        assert_eq!(m.usage["claude-sonnet-4-5"], usage(11, 6));
        assert_eq!(m.last_tool.as_deref(), Some("Bash"));
        assert_eq!(m.requests, 2);

        // A zero-cost settle (upstream refused) only releases the reservation.
        reserve(&mut m, "r2", 500, 1_000, now()).unwrap();
        settle(&mut m, "r2", "claude-sonnet-4-5", &ModelUsage::default(), 0, None);
        assert_eq!(m.spent_micros, 150);
        assert_eq!(m.worst_case_micros(), 150);
    }

    use std::sync::Arc;

    /// An in-memory store and a grant, and how many of `n` calls of `op` (the
    /// `i`th with `i`), all at once, answered true.
    async fn at_once<F, Fut>(n: usize, op: F) -> (Arc<InMemoryMeterStore>, Arc<Grant>, usize)
    where
        F: Fn(Arc<InMemoryMeterStore>, Arc<Grant>, usize) -> Fut,
        Fut: std::future::Future<Output = bool> + Send + 'static,
    {
        let store = Arc::new(InMemoryMeterStore::default());
        let grant = Arc::new(crate::gateway::model::tests::grant_with(
            crate::gateway::registry::tests::facts(),
        ));
        let tasks: Vec<_> = (0..n)
            .map(|i| tokio::spawn(op(store.clone(), grant.clone(), i)))
            .collect();
        let mut yes = 0;
        for t in tasks {
            yes += usize::from(t.await.unwrap());
        }
        (store, grant, yes)
    }

    #[tokio::test]
    async fn the_in_memory_store_holds_the_cap_under_concurrency() {
        let (store, grant, ok) = at_once(50, |store, grant, i| async move {
            store.reserve(&grant, &format!("r{i}"), 30, 1_000).await.is_ok()
        })
        .await;
        assert_eq!(ok, 33);
        assert!(store.meter(&grant.secret_name).worst_case_micros() <= 1_000);
        store.close(&grant.secret_name);
        assert_eq!(store.reserve(&grant, "late", 1, 1_000).await, Err(MeterError::Closed));
    }

    #[test]
    fn a_runs_review_is_claimed_once_and_never_on_a_closed_grant() {
        let mut m = Meter::default();
        assert_eq!(claim_review(&mut m, true, "gw-a", now()), Err(MeterError::Closed));
        assert_eq!(m.review, None);
        assert_eq!(claim_review(&mut m, false, "gw-a", now()), Ok(true));
        let mark = m.review.clone().unwrap();
        assert_eq!((mark.by.as_str(), mark.at.as_str()), ("gw-a", "2026-01-01T00:00:00Z"));
        for (closed, by) in [(false, "gw-b"), (false, "gw-a"), (true, "gw-b")] {
            assert_eq!(claim_review(&mut m, closed, by, now()), Ok(false), "{by} {closed}");
        }
        assert_eq!(m.review, Some(mark), "the first claim stays");
        // It travels on the grant with the meter, and an older meter without it reads as unclaimed.
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""review":{"by":"gw-a""#), "{json}");
        let old: Meter = serde_json::from_str(r#"{"spentMicros":1}"#).unwrap();
        assert_eq!(old.review, None);
    }

    #[tokio::test]
    async fn of_concurrent_review_claims_exactly_one_wins() {
        let (store, grant, won) = at_once(20, |store, grant, i| async move {
            store.claim_review(&grant, &format!("gw-{}", i % 2)).await.unwrap()
        })
        .await;
        assert_eq!(won, 1);
        assert!(store.meter(&grant.secret_name).review.is_some());
    }

    #[test]
    fn an_unreadable_meter_is_an_error_not_an_empty_meter() {
        let mut s = Secret::default();
        assert_eq!(read_meter(&s), Ok(Meter::default()));
        s.metadata.annotations = Some([(grant::ANNOTATION_METER.to_owned(), "{oops".to_owned())].into());
        assert!(matches!(read_meter(&s), Err(MeterError::Corrupt(_))));
    }
}
