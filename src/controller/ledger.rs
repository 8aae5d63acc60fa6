//! Serializes budget and waiting-room decisions per policy. The watch cache
//! lags behind the apiserver, so a burst of reconciles could each see the
//! same free budget (or free waiting room); here each policy has a lock, and
//! admissions (and waits) decided under it are remembered until the cache
//! shows them, so the next decision counts them. (The durable spend ledger
//! is on the policy's status: see `controller::charge`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An admission the cache may not show yet.
#[derive(Clone, Debug)]
pub struct Recent {
    pub actor_id: i64,
    pub at: Instant,
}

/// What one policy's lock guards.
#[derive(Default, Debug)]
pub struct PolicyLedger {
    /// Runs admitted by this process, by name, until the cache catches up.
    pub recent: HashMap<String, Recent>,
    /// Outsiders' runs this process set waiting for approval, by name, with
    /// their repository, until the cache catches up.
    pub waiting: HashMap<String, (String, Instant)>,
}

impl PolicyLedger {
    /// Forgets admissions the cache has shown for long enough.
    pub fn prune(&mut self, visible: impl Fn(&str) -> bool) {
        let now = Instant::now();
        self.recent
            .retain(|name, r| !visible(name) && now.duration_since(r.at) < Duration::from_secs(600));
    }

    /// Forgets waiting runs the cache shows (in whatever phase).
    pub fn prune_waiting(&mut self, visible: impl Fn(&str) -> bool) {
        let now = Instant::now();
        self.waiting
            .retain(|name, (_, at)| !visible(name) && now.duration_since(*at) < Duration::from_secs(600));
    }
}

/// One lock per policy (`namespace/name`).
#[derive(Default)]
pub struct Ledger {
    policies: Mutex<HashMap<String, Arc<tokio::sync::Mutex<PolicyLedger>>>>,
}

impl Ledger {
    /// The lock of a policy.
    pub fn policy(&self, namespace: &str, name: &str) -> Arc<tokio::sync::Mutex<PolicyLedger>> {
        self.policies
            .lock()
            .expect("ledger lock")
            .entry(format!("{namespace}/{name}"))
            .or_default()
            .clone()
    }
}
