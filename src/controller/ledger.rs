//! Serializes budget and waiting-room decisions per policy. The watch cache
//! lags behind the apiserver, so a burst of reconciles could each see the
//! same free budget (or free waiting room); here each policy has a lock, and
//! admissions (and waits) decided under it are remembered until the cache
//! shows them, so the next decision counts them. (The durable spend ledger
//! is on the policy's status: see `controller::charge`.)
//!
//! It also remembers, per policy, the policy as last read from the apiserver
//! (with the ledger its spend starts from), so an admission need not read it
//! again while the cache shows that very version and this process (the
//! leader, the ledger's only writer) has not written the ledger since.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;

use crate::api::ClaudeRunPolicy;

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
    fresh: Mutex<HashMap<String, Fresh>>,
    /// One lock per policy for charging its ledger, apart from `policies`
    /// (admission does not wait for a charge's writes).
    charges: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A policy as last read from the apiserver, valid while `epoch` stands.
#[derive(Default)]
struct Fresh {
    /// Counts this process's writes of the policy's ledger.
    epoch: u64,
    read: Option<Arc<ClaudeRunPolicy>>,
}

/// What [`Ledger::fresh_policy`] answers: the policy as read, or the epoch to
/// remember a new read at.
pub enum FreshPolicy {
    Known(Arc<ClaudeRunPolicy>),
    Read(u64),
}

impl Ledger {
    /// The lock of a policy.
    pub fn policy(&self, namespace: &str, name: &str) -> Arc<tokio::sync::Mutex<PolicyLedger>> {
        lock_in(&self.policies, namespace, name)
    }

    /// The lock that charges to a policy's ledger take: this process's runs
    /// that end together write one after the other, instead of each losing
    /// the `resourceVersion` race to the others and reading again.
    pub fn charging(&self, namespace: &str, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock_in(&self.charges, namespace, name)
    }

    /// The policy as last read, if the cache (`cached`) shows that very
    /// version (same uid and `resourceVersion`) and no ledger write of this
    /// process came since; else the epoch to [`remember`](Self::remember) a
    /// new read at.
    pub fn fresh_policy(&self, cached: &ClaudeRunPolicy) -> FreshPolicy {
        let mut fresh = self.fresh.lock().expect("ledger lock");
        let entry = fresh.entry(key_of(cached)).or_default();
        match &entry.read {
            Some(read) if read.uid() == cached.uid() && read.resource_version() == cached.resource_version() => {
                FreshPolicy::Known(read.clone())
            }
            _ => FreshPolicy::Read(entry.epoch),
        }
    }

    /// Remembers `policy` as read at `epoch` (from [`fresh_policy`](Self::fresh_policy)),
    /// unless this process wrote the ledger meanwhile.
    pub fn remember(&self, policy: Arc<ClaudeRunPolicy>, epoch: u64) {
        let mut fresh = self.fresh.lock().expect("ledger lock");
        let entry = fresh.entry(key_of(&policy)).or_default();
        if entry.epoch == epoch {
            entry.read = Some(policy);
        }
    }

    /// This process has (perhaps) written the ledger of `namespace/name`:
    /// what it remembers of the policy is stale.
    pub fn ledger_written(&self, namespace: &str, name: &str) {
        let mut fresh = self.fresh.lock().expect("ledger lock");
        let entry = fresh.entry(format!("{namespace}/{name}")).or_default();
        entry.epoch += 1;
        entry.read = None;
    }
}

/// Policy `namespace/name`'s lock in `locks`, made on first use.
fn lock_in<T: Default>(
    locks: &Mutex<HashMap<String, Arc<tokio::sync::Mutex<T>>>>,
    namespace: &str,
    name: &str,
) -> Arc<tokio::sync::Mutex<T>> {
    locks
        .lock()
        .expect("ledger lock")
        .entry(format!("{namespace}/{name}"))
        .or_default()
        .clone()
}

fn key_of(policy: &ClaudeRunPolicy) -> String {
    format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rv: &str) -> ClaudeRunPolicy {
        let mut p: ClaudeRunPolicy = serde_yaml::from_str(include_str!("../../config/samples/policy.yaml")).unwrap();
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some("uid-1".into());
        p.metadata.resource_version = Some(rv.into());
        p
    }

    #[test]
    fn a_policy_read_is_reused_only_for_the_same_version_and_no_ledger_write_since() {
        let ledger = Ledger::default();
        let FreshPolicy::Read(epoch) = ledger.fresh_policy(&policy("1")) else {
            panic!("nothing read yet");
        };
        ledger.remember(Arc::new(policy("1")), epoch);
        assert!(matches!(ledger.fresh_policy(&policy("1")), FreshPolicy::Known(_)));
        assert!(
            matches!(ledger.fresh_policy(&policy("2")), FreshPolicy::Read(_)),
            "the cache moved"
        );

        // A read that started before a ledger write is not remembered.
        let FreshPolicy::Read(before) = ledger.fresh_policy(&policy("2")) else {
            panic!()
        };
        let name = policy("2").name_any();
        ledger.ledger_written("ns", &name);
        ledger.remember(Arc::new(policy("2")), before);
        assert!(matches!(ledger.fresh_policy(&policy("2")), FreshPolicy::Read(_)));
        // The write also drops what was known.
        ledger.remember(Arc::new(policy("2")), before + 1);
        assert!(matches!(ledger.fresh_policy(&policy("2")), FreshPolicy::Known(_)));
        ledger.ledger_written("ns", &name);
        assert!(matches!(ledger.fresh_policy(&policy("2")), FreshPolicy::Read(_)));
    }
}
