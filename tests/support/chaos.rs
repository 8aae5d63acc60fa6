//! What the soak (`tests/e2e_soak.rs`) and the chaos run
//! (`tests/e2e_chaos.rs`) share: a seeded generator, a stand-in kubelet that
//! ends every runner pod that reaches Running (and notes the token its run's
//! grant holds meanwhile), resident-memory sampling of operator processes, and
//! sizes read from the environment.
//!
//! Include it with `#[path = "support/chaos.rs"] mod chaos;` after
//! `run_env` and `support`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

/// A seeded xorshift64* generator: a failing run can be repeated with its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The seed from `var`, else one from the clock.
    pub fn seed_from_env(var: &str) -> u64 {
        std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Picks an index by weight.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut roll = self.below(u64::from(total)) as u32;
        for (i, w) in weights.iter().enumerate() {
            if roll < *w {
                return i;
            }
            roll -= w;
        }
        weights.len() - 1
    }
}

/// A size from the environment, else `default`.
pub fn env_number<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Resident memory (`VmRSS`) of a process in KiB, if it is alive.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples of one process's resident memory.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RssFigures {
    pub samples: usize,
    pub first_kib: u64,
    pub peak_kib: u64,
    pub last_kib: u64,
}

impl RssFigures {
    pub fn add(&mut self, kib: u64) {
        if self.samples == 0 {
            self.first_kib = kib;
        }
        self.samples += 1;
        self.peak_kib = self.peak_kib.max(kib);
        self.last_kib = kib;
    }
}

/// What the stand-in kubelet saw.
#[derive(Default)]
pub struct KubeletLog {
    /// Run -> the tokens its grant held while its pod ran (one, if all is well).
    pub tokens: BTreeMap<String, BTreeSet<Vec<u8>>>,
    /// Pods ended.
    pub ended: usize,
    /// Running pods whose grant was not there (must stay 0).
    pub without_grant: Vec<String>,
}

/// Plays the kubelet for runner pods in `namespace`: every pod that reaches
/// Running is ended (kwok's `e2e.claude-operator.dev/outcome` annotation)
/// with a success report, after the token in its run's grant is noted. Runs
/// until the returned handle is aborted.
pub fn spawn_kubelet(
    client: kube::Client,
    namespace: String,
    grant_namespace: String,
    log: Arc<Mutex<KubeletLog>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let grants: Api<Secret> = Api::namespaced(client.clone(), &grant_namespace);
        let running = ListParams::default().fields("status.phase=Running");
        let mut done: BTreeSet<String> = BTreeSet::new();
        loop {
            if let Ok(list) = pods.list(&running).await {
                for pod in list.items {
                    let Some(name) = pod.metadata.name.clone() else {
                        continue;
                    };
                    if done.contains(&name) {
                        continue;
                    }
                    let Some(run) = name.strip_suffix("-runner").map(str::to_owned) else {
                        continue;
                    };
                    let grant = claude_operator::grant::grant_name(&namespace, &run);
                    match grants.get_opt(&grant).await {
                        Ok(Some(secret)) => {
                            let token = secret
                                .data
                                .and_then(|mut d| d.remove(claude_operator::grant::KEY_GITHUB_TOKEN))
                                .map(|b| b.0)
                                .unwrap_or_default();
                            log.lock().unwrap().tokens.entry(run.clone()).or_default().insert(token);
                        }
                        Ok(None) => log.lock().unwrap().without_grant.push(run.clone()),
                        Err(_) => continue, // the apiserver may be restarting: next round
                    }
                    let report = json!({
                        "outcome": "success", "total_cost_usd": "0.01", "num_turns": 1,
                        "duration_ms": 100, "session_id": "chaos",
                    });
                    let annotations = json!({"metadata": {"annotations": {
                        "e2e.claude-operator.dev/outcome": "Succeeded",
                        "e2e.claude-operator.dev/termination-message": report.to_string(),
                    }}});
                    if pods
                        .patch(&name, &PatchParams::default(), &Patch::Merge(annotations))
                        .await
                        .is_ok()
                    {
                        done.insert(name);
                        log.lock().unwrap().ended += 1;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// Samples the resident memory of `pids` (by name) every 500 ms into `into`
/// until aborted.
pub fn spawn_rss_sampler(
    pids: Arc<Mutex<BTreeMap<String, u32>>>,
    into: Arc<Mutex<BTreeMap<String, RssFigures>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now: Vec<(String, u32)> = pids.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect();
            for (name, pid) in now {
                if let Some(kib) = rss_kib(pid) {
                    into.lock().unwrap().entry(name).or_default().add(kib);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// Counts of a list of keys.
pub fn tally<I: IntoIterator<Item = String>>(items: I) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for k in items {
        *out.entry(k).or_default() += 1;
    }
    out
}
