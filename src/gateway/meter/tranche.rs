//! Tranches: each gateway replica serves a run's requests from a slice of
//! the run's budget it reserved on the shared meter beforehand, so a
//! request's worst case is reserved in memory and its first byte waits for
//! no apiserver round trip.
//!
//! A replica (one *incarnation*: its name and a random suffix, so a
//! restarted pod never inherits a dead one's batches) takes budget onto its
//! [`Tranche`] on the run's [`Meter`] with one compare-and-swap write, sized
//! for a few of the run's largest requests and never more than half of what
//! is free while the rest is contested. Requests reserve from it locally;
//! settlements are written in batches in the background, each moving its
//! cost from the tranche to `spentMicros` (once: a batch carries a sequence
//! number the tranche remembers). The tranche is renewed in the background
//! before it runs out, given back in part when another replica waits for
//! budget (`wants`), and given back whole when the run ends (the grant is
//! closed and nothing is in flight) or the replica stops.
//!
//! Why the cap still holds: the shared meter counts every tranche in full
//! (`worst_case_micros`), a replica never reserves locally more than its
//! tranche holds, and it shrinks its local view before it gives budget
//! back. A replica that dies keeps its tranche on the meter, so the run is
//! charged that tranche when it ends: a stricter cap, never a looser one,
//! and the batches it wrote are never counted again.
//!
//! Only when a request does not fit the local tranche does it wait on the
//! shared meter (one write, or a bounded wait for another replica to give
//! budget back, looking at its own tranche again between attempts: other
//! requests here may settle meanwhile); when the budget cannot cover it, it
//! is clamped or refused as before.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;

use super::{Ledger, MeterError, MeterStore, Reserved, add_usage};
use crate::gateway::Grant;
use crate::grant::{Meter, Tranche};
use crate::report::ModelUsage;

/// A tranche is sized for this many of the run's largest requests.
pub const TRANCHE_REQUESTS: u64 = 4;
/// Renewed in the background when what is left locally covers fewer than
/// this many of the run's largest requests.
pub const RENEW_REQUESTS: u64 = 2;
/// How long a request that does not fit waits for other replicas to give
/// budget back before it is clamped or refused.
pub const WANT_WAIT: Duration = Duration::from_secs(2);
/// A replica's wait for budget older than this is ignored (it died waiting).
pub const WANT_STALE: Duration = Duration::from_secs(10);

/// Settlements a replica made and has not yet written to the shared meter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// What they cost, micro-dollars.
    pub cost_micros: u64,
    /// How many.
    pub requests: u32,
    /// Usage by model.
    pub usage: BTreeMap<String, ModelUsage>,
    /// The last one's tool use, when any.
    pub last_tool: Option<String>,
}

impl Settled {
    fn add(&mut self, model: &str, usage: &ModelUsage, cost_micros: u64, last_tool: Option<String>) {
        self.cost_micros = self.cost_micros.saturating_add(cost_micros);
        self.requests = self.requests.saturating_add(1);
        if usage != &ModelUsage::default() {
            add_usage(self.usage.entry(model.to_owned()).or_default(), usage);
        }
        if last_tool.is_some() {
            self.last_tool = last_tool;
        }
    }

    fn is_empty(&self) -> bool {
        self == &Settled::default()
    }
}

/// Writes batch `seq` of `holder`'s settlements onto the shared meter: its
/// cost moves from the holder's tranche to spent. A batch not newer than the
/// last one the tranche recorded was written already and changes nothing.
pub fn apply_settled(meter: &mut Meter, holder: &str, seq: u64, batch: &Settled) {
    let tranche = meter.tranches.entry(holder.to_owned()).or_insert_with(|| Tranche {
        since: jiff::Timestamp::now().to_string(),
        ..Tranche::default()
    });
    if seq <= tranche.seq {
        return;
    }
    tranche.seq = seq;
    tranche.reserved_micros = tranche.reserved_micros.saturating_sub(batch.cost_micros);
    meter.spent_micros = meter.spent_micros.saturating_add(batch.cost_micros);
    meter.requests = meter.requests.saturating_add(batch.requests);
    for (model, usage) in &batch.usage {
        add_usage(meter.usage.entry(model.clone()).or_default(), usage);
    }
    if batch.last_tool.is_some() {
        meter.last_tool = batch.last_tool.clone();
    }
}

/// What a take of budget got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    /// Micro-dollars added to the holder's tranche.
    pub micros: u64,
    /// This was the run's first budget taken by anyone: the holder's next
    /// request is the run's first.
    pub first: bool,
}

/// Budget under `cap` that nobody holds or has spent, micro-dollars.
pub fn free_micros(meter: &Meter, cap: u64) -> u64 {
    cap.saturating_sub(meter.worst_case_micros())
}

/// Whether `holder` has waited for budget since at most [`WANT_STALE`].
fn waits(meter: &Meter, holder: &str, now: jiff::Timestamp) -> bool {
    let fresh = |since: &String| {
        since
            .parse::<jiff::Timestamp>()
            .is_ok_and(|t| now.duration_since(t).unsigned_abs() < WANT_STALE)
    };
    meter.wants.get(holder).is_some_and(fresh)
}

/// Whether a replica other than `holder` is waiting for budget now.
pub fn others_want(meter: &Meter, holder: &str, now: jiff::Timestamp) -> bool {
    meter.wants.keys().any(|k| k != holder && waits(meter, k, now))
}

/// Records that `holder` waits for budget (keeping when it began).
fn record_want(meter: &mut Meter, holder: &str, now: jiff::Timestamp) {
    if !waits(meter, holder, now) {
        meter.wants.insert(holder.to_owned(), now.to_string());
    }
}

/// Adds budget to `holder`'s tranche: at least `need`, up to `want`, but
/// beyond `need` never more than half of what is free (the rest stays for
/// other replicas) and nothing beyond `need` while another replica waits.
/// `Insufficient` (with what is free) when not even `need` is free.
pub fn take(
    meter: &mut Meter,
    holder: &str,
    need: u64,
    want: u64,
    cap: u64,
    now: jiff::Timestamp,
) -> Result<Taken, MeterError> {
    let free = free_micros(meter, cap);
    if need > free {
        return Err(MeterError::Insufficient { remaining_micros: free });
    }
    let extra = if others_want(meter, holder, now) {
        0
    } else {
        want.saturating_sub(need).min((free - need) / 2)
    };
    let micros = need + extra;
    let first = meter.requests == 0 && meter.in_flight.is_empty() && meter.tranches.is_empty();
    if micros > 0 || first {
        let tranche = meter.tranches.entry(holder.to_owned()).or_insert_with(|| Tranche {
            since: now.to_string(),
            ..Tranche::default()
        });
        tranche.reserved_micros = tranche.reserved_micros.saturating_add(micros);
    }
    meter.wants.remove(holder);
    Ok(Taken { micros, first })
}

/// Gives back up to `micros` of `holder`'s tranche.
pub fn give_back(meter: &mut Meter, holder: &str, micros: u64) {
    if let Some(t) = meter.tranches.get_mut(holder) {
        t.reserved_micros = t.reserved_micros.saturating_sub(micros);
    }
}

/// A replica's view of one run.
#[derive(Default)]
struct Local {
    /// The run's cap, micro-dollars (as the last request said).
    cap: u64,
    /// What this replica's tranche on the shared meter holds, less the cost
    /// of settlements not yet written there. Never more than the meter holds.
    tranche: u64,
    /// Reserved by requests in flight here.
    reserved: u64,
    in_flight: HashMap<String, u64>,
    /// Settled, not yet sealed into a batch.
    pending: Settled,
    /// Sealed batches not yet known to be written, oldest first.
    unconfirmed: Vec<(u64, Settled)>,
    last_seq: u64,
    /// The largest worst case of the run's requests here.
    largest: u64,
    /// This replica took the run's first budget; its next request is the run's first.
    first: bool,
    /// A sync task is running for this run.
    syncing: bool,
    /// The run has ended: nothing more is reserved; the tranche goes back
    /// once nothing is in flight.
    closed: bool,
    /// Another replica waits for budget: give back what is free here.
    others_want: bool,
    /// A request found the tranche low: try once to renew it (not again
    /// until another does, so an exhausted budget is not polled).
    renew: bool,
}

impl Local {
    fn free(&self) -> u64 {
        self.tranche.saturating_sub(self.reserved)
    }

    fn target(&self) -> u64 {
        self.largest.saturating_mul(TRANCHE_REQUESTS)
    }

    fn low(&self) -> bool {
        self.free() < self.largest.saturating_mul(RENEW_REQUESTS)
    }
}

/// One write a sync makes, planned under the lock.
struct Plan {
    batches: Vec<(u64, Settled)>,
    /// Remove this replica's tranche (everything settled, nothing in flight).
    drop: bool,
    /// Give back this much (already taken off the local view).
    give_back: u64,
    /// Take up to this much more.
    grow: u64,
    cap: u64,
}

/// What one attempt on the shared meter for a request's shortfall got.
enum Shortfall {
    Taken(Taken),
    /// Not even the shortfall is free there (`held`: other replicas hold
    /// budget they may give back).
    Short {
        remaining_micros: u64,
        held: bool,
    },
}

/// What a sync's write did.
struct Synced {
    grown: Taken,
    dropped: bool,
}

/// A [`MeterStore`] serving requests from per-replica tranches of the run's
/// budget on a shared [`Ledger`].
pub struct TrancheMeter<L: Ledger> {
    inner: Arc<Inner<L>>,
}

struct Inner<L> {
    ledger: L,
    holder: String,
    runs: Mutex<HashMap<String, Local>>,
    /// Signalled whenever a sync task ends.
    idle: tokio::sync::Notify,
    /// The replica stops: nothing more is reserved, everything not in
    /// flight goes back.
    stopping: std::sync::atomic::AtomicBool,
}

/// A name for one incarnation of replica `replica`: its name and a random
/// suffix.
pub fn incarnation(replica: &str) -> String {
    let mut bytes = [0u8; 6];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = jiff::Timestamp::now().as_nanosecond().to_le_bytes();
        bytes.copy_from_slice(&nanos[..6]);
    }
    format!("{replica}.{}", hex::encode(bytes))
}

impl<L: Ledger> TrancheMeter<L> {
    /// Tranches on `ledger`, held as `holder` (see [`incarnation`]).
    pub fn new(ledger: L, holder: String) -> Self {
        TrancheMeter {
            inner: Arc::new(Inner {
                ledger,
                holder,
                runs: Mutex::new(HashMap::new()),
                idle: tokio::sync::Notify::new(),
                stopping: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// This replica incarnation's name on the shared meters.
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// The shared record.
    pub fn ledger(&self) -> &L {
        &self.inner.ledger
    }

    /// Takes in a grant Secret as the grant watch saw it (`deleted`: it is
    /// gone): a closed grant's tranche goes back once nothing is in flight;
    /// when another replica waits for budget, what is free here goes back.
    pub fn observe(&self, secret: &Secret, deleted: bool) {
        let Some(name) = secret.metadata.name.as_deref() else {
            return;
        };
        let mut runs = self.inner.lock();
        let Some(local) = runs.get_mut(name) else {
            return;
        };
        if deleted {
            runs.remove(name);
            self.inner.idle.notify_waiters();
            return;
        }
        let mut wake = false;
        if super::is_closed(secret) && !local.closed {
            local.closed = true;
            wake = true;
        }
        if local.free() > 0
            && !local.others_want
            && super::read_meter(secret).is_ok_and(|m| others_want(&m, &self.inner.holder, jiff::Timestamp::now()))
        {
            local.others_want = true;
            wake = true;
        }
        if wake {
            self.inner.schedule(&mut runs, name);
        }
    }

    /// Resolves when no write of this replica is under way or due (tests,
    /// benchmarks: the shared meter then shows every settlement).
    pub async fn flushed(&self) {
        loop {
            let idle = self.inner.idle.notified();
            let busy = self
                .inner
                .lock()
                .values()
                .any(|l| l.syncing || !l.pending.is_empty() || !l.unconfirmed.is_empty());
            if !busy {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), idle).await;
        }
    }

    /// Forgets everything held (a replica killed: nothing is given back).
    #[cfg(test)]
    pub(crate) fn kill(&self) {
        self.inner.lock().clear();
    }
}

impl<L: Ledger> Inner<L> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Local>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a sync task for run `name` unless one runs.
    fn schedule(self: &Arc<Self>, runs: &mut HashMap<String, Local>, name: &str) {
        if let Some(local) = runs.get_mut(name)
            && !local.syncing
        {
            local.syncing = true;
            tokio::spawn(self.clone().sync(name.to_owned()));
        }
    }

    /// Plans the next write for run `name`, or ends the task (`None`).
    fn plan(&self, name: &str) -> Option<Plan> {
        let stopping = self.stopping.load(std::sync::atomic::Ordering::SeqCst);
        let mut runs = self.lock();
        let local = runs.get_mut(name)?;
        if !local.pending.is_empty() {
            local.last_seq += 1;
            let batch = std::mem::take(&mut local.pending);
            local.unconfirmed.push((local.last_seq, batch));
        }
        let drop = (local.closed || stopping) && local.reserved == 0;
        let give_back = if drop {
            0
        } else if local.others_want || stopping {
            local.others_want = false;
            let free = local.free();
            // Off the local view before the write: never spend what may be gone.
            local.tranche -= free;
            free
        } else {
            0
        };
        let grow = if !drop && !local.closed && !stopping && local.renew && local.low() {
            local.target().saturating_sub(local.free())
        } else {
            0
        };
        local.renew = false;
        if local.unconfirmed.is_empty() && !drop && give_back == 0 && grow == 0 {
            local.syncing = false;
            return None;
        }
        Some(Plan {
            batches: local.unconfirmed.clone(),
            drop,
            give_back,
            grow,
            cap: local.cap,
        })
    }

    /// Writes run `name`'s settlements and tranche changes until nothing is
    /// left to write. Failed writes are retried; what they would have given
    /// back stays charged meanwhile.
    async fn sync(self: Arc<Self>, name: String) {
        let mut failures = 0u32;
        while let Some(plan) = self.plan(&name) {
            let wait = Duration::from_millis(100u64.saturating_mul(1 << failures.min(6)));
            let holder = self.holder.as_str();
            let result = self
                .ledger
                .update(&name, |meter, closed| {
                    for (seq, batch) in &plan.batches {
                        apply_settled(meter, holder, *seq, batch);
                    }
                    if plan.drop {
                        // Emptied, not removed: the entry keeps the batch
                        // number, so a retried write still applies nothing twice.
                        if let Some(t) = meter.tranches.get_mut(holder) {
                            t.reserved_micros = 0;
                        }
                        meter.wants.remove(holder);
                        return Ok(Synced {
                            grown: Taken {
                                micros: 0,
                                first: false,
                            },
                            dropped: true,
                        });
                    }
                    give_back(meter, holder, plan.give_back);
                    let mut grown = Taken {
                        micros: 0,
                        first: false,
                    };
                    if plan.grow > 0 && !closed {
                        let want = plan.grow.min(free_micros(meter, plan.cap));
                        grown = take(meter, holder, 0, want, plan.cap, jiff::Timestamp::now())?;
                    }
                    Ok(Synced { grown, dropped: false })
                })
                .await;
            let failed = {
                let mut runs = self.lock();
                let Some(local) = runs.get_mut(&name) else { break };
                match result {
                    Ok(done) => {
                        let written = plan.batches.last().map(|(seq, _)| *seq).unwrap_or(0);
                        local.unconfirmed.retain(|(seq, _)| *seq > written);
                        if done.dropped {
                            local.tranche = 0;
                            // Closed or stopping with nothing in flight: the run is done here.
                            if local.pending.is_empty() && local.reserved == 0 {
                                runs.remove(&name);
                                break;
                            }
                        } else {
                            local.tranche = local.tranche.saturating_add(done.grown.micros);
                            local.first |= done.grown.first;
                        }
                        false
                    }
                    Err(MeterError::NotFound) => {
                        // The grant is gone: nothing left to write to.
                        runs.remove(&name);
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(grant = %name, error = %err, "writing the run's meter failed; retrying");
                        true
                    }
                }
            };
            if failed {
                failures += 1;
                tokio::time::sleep(wait).await;
            } else {
                failures = 0;
            }
        }
        self.idle.notify_waiters();
    }

    /// One attempt for a request that does not fit the local tranche: takes
    /// what it lacks (and a tranche's worth when free) from the shared
    /// meter. When not even the shortfall is free, it records that this
    /// replica waits for budget if others hold some, and says what is free
    /// and whether others hold budget they may give back.
    async fn take_shortfall(
        self: &Arc<Self>,
        name: &str,
        shortfall: u64,
        want: u64,
        cap: u64,
    ) -> Result<Shortfall, MeterError> {
        let holder = self.holder.as_str();
        let now = jiff::Timestamp::now();
        let result = self
            .ledger
            .update(name, |meter, closed| {
                if closed {
                    return Err(MeterError::Closed);
                }
                match take(meter, holder, shortfall, want, cap, now) {
                    Ok(taken) => Ok(Shortfall::Taken(taken)),
                    Err(MeterError::Insufficient { remaining_micros }) => {
                        // Others hold budget they may not need: ask for it.
                        let held = meter.tranches.iter().any(|(k, t)| k != holder && t.reserved_micros > 0);
                        if held {
                            record_want(meter, holder, now);
                        }
                        Ok(Shortfall::Short { remaining_micros, held })
                    }
                    Err(other) => Err(other),
                }
            })
            .await;
        match result {
            Ok(Shortfall::Taken(taken)) => {
                let mut runs = self.lock();
                let local = runs.entry(name.to_owned()).or_default();
                local.tranche = local.tranche.saturating_add(taken.micros);
                local.first |= taken.first;
                Ok(Shortfall::Taken(taken))
            }
            Err(MeterError::Closed) => {
                let mut runs = self.lock();
                if let Some(local) = runs.get_mut(name) {
                    local.closed = true;
                }
                self.schedule(&mut runs, name);
                Err(MeterError::Closed)
            }
            other => other,
        }
    }

    /// No longer waiting for budget.
    async fn withdraw_want(&self, name: &str) {
        let holder = self.holder.as_str();
        let result = self
            .ledger
            .update(name, |meter, _| {
                meter.wants.remove(holder);
                Ok(())
            })
            .await;
        if let Err(err) = result {
            tracing::debug!(grant = %name, error = %err, "withdrawing a wait for budget failed");
        }
    }
}

impl<L: Ledger> MeterStore for TrancheMeter<L> {
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
            let name = grant.secret_name.as_str();
            let started = Instant::now();
            // Budget added to the tranche, rounds: the bound only guards
            // against a livelock with concurrent requests of the same run
            // taking what was added.
            let mut grown = 0;
            // The shared meter could not cover this request (what was free there).
            let mut refused: Option<u64> = None;
            // This request recorded that the replica waits for budget.
            let mut wanted = false;
            loop {
                // The local tranche is looked at before every attempt on the
                // shared meter and once more before refusing: meanwhile other
                // requests here may have settled or added budget to it.
                let (served, shortfall, want) = {
                    let mut runs = self.inner.lock();
                    let local = runs.entry(name.to_owned()).or_default();
                    if local.closed {
                        return Err(MeterError::Closed);
                    }
                    if self.inner.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                        return Err(MeterError::Store("this gateway replica is stopping".into()));
                    }
                    local.cap = cap_micros;
                    local.largest = local.largest.max(worst_case_micros);
                    // An id reserved again replaces its own reservation.
                    if let Some(old) = local.in_flight.remove(request_id) {
                        local.reserved -= old;
                    }
                    let free = local.free();
                    if free >= worst_case_micros {
                        local.in_flight.insert(request_id.to_owned(), worst_case_micros);
                        local.reserved += worst_case_micros;
                        let first = std::mem::take(&mut local.first);
                        if local.low() {
                            local.renew = true;
                            self.inner.schedule(&mut runs, name);
                        }
                        let reserved = Reserved {
                            reserved_micros: worst_case_micros,
                            worst_case_micros: cap_micros,
                            first,
                        };
                        (Some(reserved), 0, 0)
                    } else {
                        if let Some(remaining_micros) = refused {
                            // What this replica could still use: its own free budget too.
                            return Err(MeterError::Insufficient {
                                remaining_micros: remaining_micros.saturating_add(free),
                            });
                        }
                        let shortfall = worst_case_micros - free;
                        (None, shortfall, local.target().saturating_sub(free).max(shortfall))
                    }
                };
                if let Some(reserved) = served {
                    if wanted {
                        // Served here after all: the wait it recorded would keep
                        // others giving budget back. (A request of this replica
                        // still waiting records it again.)
                        self.inner.withdraw_want(name).await;
                    }
                    return Ok(reserved);
                }
                match self.inner.take_shortfall(name, shortfall, want, cap_micros).await? {
                    Shortfall::Taken(_) => {
                        grown += 1;
                        if grown >= 8 {
                            return Err(MeterError::Contended);
                        }
                    }
                    // Another replica may give budget back: wait a bounded time.
                    Shortfall::Short { held: true, .. } if started.elapsed() < WANT_WAIT => {
                        wanted = true;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Shortfall::Short { remaining_micros, .. } => {
                        self.inner.withdraw_want(name).await;
                        refused = Some(remaining_micros);
                    }
                }
            }
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
            let name = grant.secret_name.as_str();
            let mut runs = self.inner.lock();
            let local = runs.entry(name.to_owned()).or_default();
            let reserved = local.in_flight.remove(request_id).unwrap_or(0);
            local.reserved -= reserved;
            local.tranche = local.tranche.saturating_sub(cost_micros);
            local.pending.add(model, usage, cost_micros, last_tool);
            self.inner.schedule(&mut runs, name);
            Ok(())
        })
    }

    fn claim_review<'a>(&'a self, grant: &'a Grant, by: &'a str) -> BoxFuture<'a, Result<bool, MeterError>> {
        super::claim_review_on(self.ledger(), grant, by)
    }

    fn release_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
            {
                let mut runs = self.inner.lock();
                let names: Vec<String> = runs.keys().cloned().collect();
                for name in names {
                    self.inner.schedule(&mut runs, &name);
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), self.flushed()).await;
        })
    }
}

#[cfg(test)]
mod tests;
